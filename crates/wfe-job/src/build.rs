//! Building the Job of a WorkflowExecution (a pure function).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{
            Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern,
            PodFailurePolicyRule,
        },
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
            PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecretVolumeSource,
            SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;
use wfe_api::{FieldError, TimeoutError, WorkflowExecution};
pub use wfe_executor::owner_reference;
use wfe_executor::{execution_labels, resource::execution_metadata};

use crate::JobConfig;

/// Name of the one container of every workflow Job.
pub const CONTAINER_NAME: &str = "workflow";
/// Where Secret dependencies are mounted.
pub const SECRETS_DIR: &str = "/run/kubernaut/secrets";
/// Where ConfigMap dependencies are mounted.
pub const CONFIGMAPS_DIR: &str = "/run/kubernaut/configmaps";

/// Why a Job cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A spec field is invalid; `field` is its JSON path.
    #[error("{field}: {message}")]
    Invalid {
        /// JSON path of the field (`spec.executionConfig.timeout`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// `spec.executionConfig.timeout` is not a usable timeout.
    #[error("{TIMEOUT_FIELD}: {0}")]
    Timeout(#[source] TimeoutError),
}

const TIMEOUT_FIELD: &str = "spec.executionConfig.timeout";

impl From<BuildError> for FieldError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Invalid { field, message } => FieldError { field, message },
            BuildError::Timeout(e) => FieldError {
                field: TIMEOUT_FIELD.into(),
                message: e.to_string(),
            },
        }
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

/// The environment of the workflow container: `TARGET_RESOURCE`, `WFE_NAME`, `WFE_NAMESPACE`, the
/// allow-listed parameters in sorted order, `HOME` and `TMPDIR`. Values are passed verbatim (no
/// shell is involved anywhere).
pub fn environment(wfe: &WorkflowExecution) -> Vec<EnvVar> {
    let mut vars = vec![
        env("TARGET_RESOURCE", &wfe.spec.target_resource),
        env("WFE_NAME", &wfe.name_any()),
        env("WFE_NAMESPACE", &wfe.namespace().unwrap_or_default()),
    ];
    vars.extend(
        wfe.spec
            .effective_parameters()
            .into_iter()
            .map(|(k, v)| env(k, v)),
    );
    vars.push(env("HOME", "/tmp"));
    vars.push(env("TMPDIR", "/tmp"));
    vars
}

/// Builds the Job for `wfe` (DESIGN.md §2 "Job shape").
pub fn build_job(wfe: &WorkflowExecution, cfg: &JobConfig) -> Result<Job, BuildError> {
    let spec = &wfe.spec;
    let timeout = spec.timeout().map_err(BuildError::Timeout)?;
    let labels = execution_labels(wfe);

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(deps) = &spec.workflow_ref.dependencies {
        for (i, s) in deps.secrets.iter().enumerate() {
            let volume = format!("secret-{i}");
            volumes.push(Volume {
                name: volume.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(s.name.clone()),
                    optional: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: volume,
                mount_path: format!("{SECRETS_DIR}/{}", s.name),
                read_only: Some(true),
                ..Default::default()
            });
        }
        for (i, c) in deps.config_maps.iter().enumerate() {
            let volume = format!("configmap-{i}");
            volumes.push(Volume {
                name: volume.clone(),
                config_map: Some(ConfigMapVolumeSource {
                    name: c.name.clone(),
                    optional: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: volume,
                mount_path: format!("{CONFIGMAPS_DIR}/{}", c.name),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    });

    let seccomp = || {
        Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        })
    };
    let container = Container {
        name: CONTAINER_NAME.into(),
        // An `oci://` prefix (accepted for bundles) is not part of a container image reference.
        image: Some(
            spec.workflow_ref
                .container_image
                .trim_start_matches("oci://")
                .to_string(),
        ),
        env: Some(environment(wfe)),
        volume_mounts: Some(mounts),
        resources: spec.workflow_ref.resources.clone(),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: seccomp(),
            ..Default::default()
        }),
        ..Default::default()
    };

    Ok(Job {
        metadata: execution_metadata(wfe, &cfg.namespace),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(cfg.ttl_seconds_after_finished),
            active_deadline_seconds: Some(
                i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX),
            ),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".into(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".into(),
                        status: Some("True".into()),
                    }]),
                    on_exit_codes: None,
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        wfe_executor::ANNOTATION_TARGET_RESOURCE.to_string(),
                        spec.target_resource.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(
                        spec.service_account(&cfg.default_service_account)
                            .to_string(),
                    ),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: seccomp(),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}
