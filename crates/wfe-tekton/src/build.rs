//! Building the PipelineRun of a WorkflowExecution (a pure function, DESIGN.md §2 "PipelineRun
//! shape").

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, PodSecurityContext, SeccompProfile, SecretVolumeSource,
};
use wfe_api::{FieldError, TimeoutError, WorkflowExecution, format_duration};
pub use wfe_executor::owner_reference;
use wfe_executor::resource::execution_metadata;

use crate::types::{
    Param, PipelineRef, PipelineRun, PipelineRunSpec, PipelineTaskRunTemplate, PodTemplate,
    TimeoutFields, WorkspaceBinding,
};

/// Default execution namespace (`--execution-namespace`).
pub const DEFAULT_EXECUTION_NAMESPACE: &str = "kubernaut-workflows";
/// Default service account of the workflow pods.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "kubernaut-workflow-runner";
/// Resolver used for every PipelineRun.
pub const BUNDLES_RESOLVER: &str = "bundles";
/// Name of the Pipeline every workflow bundle must contain.
pub const PIPELINE_NAME: &str = "workflow";
/// Parameter carrying `spec.targetResource`, always the last parameter.
pub const TARGET_RESOURCE_PARAM: &str = "TARGET_RESOURCE";
/// Prefix of the workspace bound to a Secret dependency.
pub const SECRET_WORKSPACE_PREFIX: &str = "secret-";
/// Prefix of the workspace bound to a ConfigMap dependency.
pub const CONFIGMAP_WORKSPACE_PREFIX: &str = "configmap-";

/// Configuration of the Tekton backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TektonConfig {
    /// Namespace the PipelineRuns are created in (the execution namespace).
    pub namespace: String,
    /// Service account used when `spec.executionConfig.serviceAccountName` is not set.
    pub default_service_account: String,
    /// Accept bundles that are not pinned by digest (`--allow-unpinned-images`, shared with the
    /// Job backend's images). Off by default: a tag can be moved under a workflow.
    pub allow_unpinned_bundles: bool,
}

impl Default for TektonConfig {
    fn default() -> Self {
        TektonConfig {
            namespace: DEFAULT_EXECUTION_NAMESPACE.to_string(),
            default_service_account: DEFAULT_SERVICE_ACCOUNT.to_string(),
            allow_unpinned_bundles: false,
        }
    }
}

/// Why a PipelineRun cannot be built from a WorkflowExecution.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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

impl BuildError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        BuildError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> &str {
        match self {
            BuildError::Invalid { field, .. } => field,
            BuildError::Timeout(_) => TIMEOUT_FIELD,
        }
    }

    /// The message without the field.
    pub fn message(&self) -> String {
        match self {
            BuildError::Invalid { message, .. } => message.clone(),
            BuildError::Timeout(e) => e.to_string(),
        }
    }
}

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

/// The OCI bundle reference for the bundles resolver: `spec.workflowRef.containerImage` without
/// an `oci://` prefix and surrounding whitespace.
pub fn bundle_reference(wfe: &WorkflowExecution) -> Result<String, BuildError> {
    let image = wfe.spec.workflow_ref.container_image.trim();
    let bundle = image.strip_prefix("oci://").unwrap_or(image);
    if bundle.is_empty() {
        return Err(BuildError::invalid(
            "spec.workflowRef.containerImage",
            "must name the OCI bundle that holds the Pipeline \"workflow\"",
        ));
    }
    Ok(bundle.to_string())
}

/// Refuses a bundle that is not pinned by digest (`registry/repo@sha256:<64 hex>`), unless the
/// configuration allows it (DESIGN.md §7: bundles are pinned like Job images).
pub fn check_bundle_pinned(wfe: &WorkflowExecution, cfg: &TektonConfig) -> Result<(), BuildError> {
    let bundle = bundle_reference(wfe)?;
    if cfg.allow_unpinned_bundles || wfe_api::is_digest_pinned(&bundle) {
        return Ok(());
    }
    Err(BuildError::invalid(
        "spec.workflowRef.containerImage",
        format!(
            "bundle {bundle:?} must be pinned by digest (bundle@sha256:<64 hex>); the operator accepts tags only with --allow-unpinned-images"
        ),
    ))
}

/// The run's parameters: the allow-listed `spec.parameters` in sorted order, then
/// `TARGET_RESOURCE`. A parameter that uses the reserved name `TARGET_RESOURCE` (refused by the
/// CRD and by validation) is dropped so that the target cannot be overridden.
pub fn pipeline_params(wfe: &WorkflowExecution) -> Vec<Param> {
    let mut params: Vec<Param> = wfe
        .spec
        .effective_parameters()
        .into_iter()
        .filter(|(k, _)| *k != TARGET_RESOURCE_PARAM)
        .map(|(k, v)| Param::string(k, v))
        .collect();
    params.push(Param::string(
        TARGET_RESOURCE_PARAM,
        wfe.spec.target_resource.as_str(),
    ));
    params
}

/// Workspace bindings for the declared dependencies: `secret-<name>` bound to the Secret and
/// `configmap-<name>` bound to the ConfigMap, Secrets first, each in declaration order.
pub fn workspaces(wfe: &WorkflowExecution) -> Vec<WorkspaceBinding> {
    let Some(deps) = &wfe.spec.workflow_ref.dependencies else {
        return Vec::new();
    };
    let secrets = deps.secrets.iter().map(|s| WorkspaceBinding {
        name: format!("{SECRET_WORKSPACE_PREFIX}{}", s.name),
        secret: Some(SecretVolumeSource {
            secret_name: Some(s.name.clone()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let config_maps = deps.config_maps.iter().map(|c| WorkspaceBinding {
        name: format!("{CONFIGMAP_WORKSPACE_PREFIX}{}", c.name),
        config_map: Some(ConfigMapVolumeSource {
            name: c.name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    secrets.chain(config_maps).collect()
}

/// The restricted pod security context of every TaskRun pod.
pub fn restricted_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// Builds the PipelineRun for `wfe` (DESIGN.md §2 "PipelineRun shape"):
///
/// * the identity of [`execution_metadata`]: name `wfe_executor::execution_name_for`, namespace
///   `cfg.namespace`, our labels and annotations, a controller ownerReference when the
///   WorkflowExecution lives in the execution namespace;
/// * `pipelineRef` through the `bundles` resolver: `bundle` = [`bundle_reference`], `name` =
///   `workflow`, `kind` = `pipeline`;
/// * `params` = [`pipeline_params`], `workspaces` = [`workspaces`];
/// * `taskRunTemplate.serviceAccountName` = the spec's service account or
///   `cfg.default_service_account`, `taskRunTemplate.podTemplate.securityContext` =
///   [`restricted_pod_security_context`];
/// * `timeouts.pipeline` = `spec.timeout()` as a Go duration (`30m0s`).
pub fn build_pipeline_run(
    wfe: &WorkflowExecution,
    cfg: &TektonConfig,
) -> Result<PipelineRun, BuildError> {
    let spec = &wfe.spec;
    let timeout = spec.timeout().map_err(BuildError::Timeout)?;
    let bundle = bundle_reference(wfe)?;

    let metadata = execution_metadata(wfe, &cfg.namespace);
    let spec = PipelineRunSpec {
        pipeline_ref: Some(PipelineRef {
            name: None,
            resolver: Some(BUNDLES_RESOLVER.to_string()),
            params: vec![
                Param::string("bundle", bundle),
                Param::string("name", PIPELINE_NAME),
                Param::string("kind", "pipeline"),
            ],
        }),
        params: pipeline_params(wfe),
        workspaces: workspaces(wfe),
        task_run_template: Some(PipelineTaskRunTemplate {
            service_account_name: Some(
                spec.service_account(&cfg.default_service_account)
                    .to_string(),
            ),
            pod_template: Some(PodTemplate {
                security_context: Some(restricted_pod_security_context()),
            }),
        }),
        timeouts: Some(TimeoutFields {
            pipeline: Some(format_duration(timeout)),
            tasks: None,
            finally: None,
        }),
    };
    Ok(PipelineRun {
        metadata,
        spec,
        status: None,
    })
}
