//! Unit tests of the PipelineRun builder.

use std::collections::BTreeMap;

use wfe_api::{
    WorkflowExecution,
    testing::{self, DIGEST},
};
use wfe_executor::{
    ANNOTATION_TARGET_RESOURCE, ANNOTATION_WORKFLOW_EXECUTION_UID, LABEL_EXECUTION_ENGINE,
    LABEL_SOURCE_NAMESPACE, LABEL_TARGET_HASH, LABEL_WORKFLOW_EXECUTION, LABEL_WORKFLOW_ID,
    execution_annotations, execution_labels, execution_name_for,
};

use crate::{
    BuildError, TektonConfig, build_pipeline_run, check_bundle_pinned,
    types::{Param, ParamValue},
};

/// The restart workflow as a Tekton bundle; each field of `extra_spec` replaces the spec's,
/// except `workflowRef`, whose fields replace the workflow reference's.
fn wfe(extra_spec: serde_json::Value) -> WorkflowExecution {
    let fixture = testing::wfe("restart-my-app")
        .namespace("team-a")
        .uid(Some("6f1c2a9e-0000-4000-8000-000000000001"))
        .engine("tekton")
        .workflow("restart-pod")
        .workflow_ref("version", serde_json::json!("1.2.0"))
        .image(&format!(
            "oci://registry.example.com/workflows/restart@{DIGEST}"
        ))
        .target("production/Deployment/my-app")
        .spec(
            "remediationRequestRef",
            serde_json::json!({"name": "rr-1", "namespace": "team-a"}),
        );
    let extra = extra_spec.as_object().cloned().unwrap_or_default();
    extra
        .into_iter()
        .fold(fixture, |f, (k, v)| match (k.as_str(), v.as_object()) {
            ("workflowRef", Some(fields)) => fields
                .iter()
                .fold(f, |f, (wk, wv)| f.workflow_ref(wk, wv.clone())),
            _ => f.spec(&k, v),
        })
        .build()
}

fn cfg() -> TektonConfig {
    TektonConfig::default()
}

fn strings(params: &[Param]) -> Vec<(&str, &str)> {
    params
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str().expect("string parameter")))
        .collect()
}

#[test]
fn defaults() {
    let c = TektonConfig::default();
    assert_eq!(c.namespace, "kubernaut-workflows");
    assert_eq!(c.default_service_account, "kubernaut-workflow-runner");
}

#[test]
fn metadata() {
    let w = wfe(serde_json::json!({}));
    let pr = build_pipeline_run(&w, &cfg()).expect("builds");
    assert_eq!(
        pr.metadata.name.as_deref(),
        Some(execution_name_for(&w).as_str())
    );
    assert!(
        pr.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("wfe-") && n.len() == 20)
    );
    assert_eq!(
        pr.metadata.namespace.as_deref(),
        Some("kubernaut-workflows")
    );
    let labels = pr.metadata.labels.clone().expect("labels");
    assert_eq!(labels, execution_labels(&w));
    assert_eq!(
        labels.get(LABEL_EXECUTION_ENGINE).map(String::as_str),
        Some("tekton")
    );
    assert_eq!(
        labels.get(LABEL_WORKFLOW_EXECUTION).map(String::as_str),
        Some("restart-my-app")
    );
    assert_eq!(
        labels.get(LABEL_SOURCE_NAMESPACE).map(String::as_str),
        Some("team-a")
    );
    assert_eq!(
        labels.get(LABEL_WORKFLOW_ID).map(String::as_str),
        Some("restart-pod")
    );
    assert!(labels.contains_key(LABEL_TARGET_HASH));
    let annotations = pr.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations, execution_annotations(&w));
    assert_eq!(
        annotations
            .get(ANNOTATION_TARGET_RESOURCE)
            .map(String::as_str),
        Some("production/Deployment/my-app")
    );
    assert_eq!(
        annotations
            .get(ANNOTATION_WORKFLOW_EXECUTION_UID)
            .map(String::as_str),
        Some("6f1c2a9e-0000-4000-8000-000000000001")
    );
    // Another namespace than the execution namespace: no ownerReference.
    assert_eq!(pr.metadata.owner_references, None);
    // TypeMeta is set.
    let json = serde_json::to_value(&pr).expect("serializes");
    assert_eq!(json["apiVersion"], "tekton.dev/v1");
    assert_eq!(json["kind"], "PipelineRun");
    assert!(json.get("status").is_none_or(|s| s.is_null()));
}

#[test]
fn owner_reference_only_in_the_execution_namespace() {
    let w = wfe(serde_json::json!({}));
    let local = TektonConfig {
        namespace: "team-a".into(),
        ..cfg()
    };
    let pr = build_pipeline_run(&w, &local).expect("builds");
    let refs = pr.metadata.owner_references.expect("owner reference");
    assert_eq!(refs.len(), 1);
    let r = &refs[0];
    assert_eq!(r.api_version, "kubernaut.ai/v1alpha1");
    assert_eq!(r.kind, "WorkflowExecution");
    assert_eq!(r.name, "restart-my-app");
    assert_eq!(r.uid, "6f1c2a9e-0000-4000-8000-000000000001");
    assert_eq!(r.controller, Some(true));
    assert_eq!(r.block_owner_deletion, Some(false));
    assert_eq!(pr.metadata.namespace.as_deref(), Some("team-a"));

    // Without a UID (never stored) there is nothing to point at.
    let mut unsaved = w.clone();
    unsaved.metadata.uid = None;
    let pr = build_pipeline_run(&unsaved, &local).expect("builds");
    assert_eq!(pr.metadata.owner_references, None);
}

#[test]
fn pipeline_ref_uses_the_bundles_resolver() {
    for (image, bundle) in [
        (
            "oci://registry.example.com/wf/restart:v1",
            "registry.example.com/wf/restart:v1",
        ),
        (
            "registry.example.com/wf/restart:v1",
            "registry.example.com/wf/restart:v1",
        ),
        (
            "oci://registry.example.com/wf/restart@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "registry.example.com/wf/restart@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
    ] {
        let w = wfe(serde_json::json!({"workflowRef": {"containerImage": image}}));
        let pr = build_pipeline_run(&w, &cfg()).expect("builds");
        let r = pr.spec.pipeline_ref.expect("pipelineRef");
        assert_eq!(r.resolver.as_deref(), Some("bundles"));
        assert_eq!(r.name, None);
        assert_eq!(
            strings(&r.params),
            vec![
                ("bundle", bundle),
                ("name", "workflow"),
                ("kind", "pipeline")
            ],
            "{image}"
        );
    }
    let w = wfe(serde_json::json!({"workflowRef": {"containerImage": "oci://"}}));
    let err = build_pipeline_run(&w, &cfg()).expect_err("empty bundle");
    assert_eq!(err.field(), "spec.workflowRef.containerImage");
}

#[test]
fn params_are_sorted_then_target_resource() {
    let w = wfe(
        serde_json::json!({"parameters": {"ZONE": "eu", "APP": "web", "MEMORY_LIMIT": "1Gi", "B_2": "x y"}}),
    );
    let pr = build_pipeline_run(&w, &cfg()).expect("builds");
    assert_eq!(
        strings(&pr.spec.params),
        vec![
            ("APP", "web"),
            ("B_2", "x y"),
            ("MEMORY_LIMIT", "1Gi"),
            ("ZONE", "eu"),
            ("TARGET_RESOURCE", "production/Deployment/my-app"),
        ]
    );
    // No parameters: only the target.
    let w = wfe(serde_json::json!({}));
    let pr = build_pipeline_run(&w, &cfg()).expect("builds");
    assert_eq!(
        strings(&pr.spec.params),
        vec![("TARGET_RESOURCE", "production/Deployment/my-app")]
    );
}

#[test]
fn params_are_allow_listed() {
    let w = wfe(serde_json::json!({
        "parameters": {"ZONE": "eu", "APP": "web", "SECRET_TOKEN": "x"},
        "workflowRef": {"declaredParameterNames": ["ZONE", "APP", "NOT_GIVEN"]}
    }));
    let pr = build_pipeline_run(&w, &cfg()).expect("builds");
    assert_eq!(
        strings(&pr.spec.params),
        vec![
            ("APP", "web"),
            ("ZONE", "eu"),
            ("TARGET_RESOURCE", "production/Deployment/my-app")
        ]
    );
    // An empty allow-list lets nothing through.
    let w = wfe(
        serde_json::json!({"parameters": {"ZONE": "eu"}, "workflowRef": {"declaredParameterNames": []}}),
    );
    let pr = build_pipeline_run(&w, &cfg()).expect("builds");
    assert_eq!(
        strings(&pr.spec.params),
        vec![("TARGET_RESOURCE", "production/Deployment/my-app")]
    );
}

#[test]
fn target_resource_cannot_be_overridden() {
    // Refused by the CRD and validation; the builder still never emits it twice.
    let mut w = wfe(serde_json::json!({}));
    w.spec.parameters = BTreeMap::from([(
        "TARGET_RESOURCE".to_string(),
        "evil/Deployment/x".to_string(),
    )]);
    let pr = build_pipeline_run(&w, &cfg()).expect("builds");
    assert_eq!(
        strings(&pr.spec.params),
        vec![("TARGET_RESOURCE", "production/Deployment/my-app")]
    );
}

#[test]
fn workspaces_for_dependencies() {
    let w = wfe(serde_json::json!({"workflowRef": {"dependencies": {
        "secrets": [{"name": "db-creds"}, {"name": "api-token"}],
        "configMaps": [{"name": "settings"}]
    }}}));
    let pr = build_pipeline_run(&w, &cfg()).expect("builds");
    let ws = &pr.spec.workspaces;
    assert_eq!(ws.len(), 3);
    assert_eq!(ws[0].name, "secret-db-creds");
    assert_eq!(
        ws[0].secret.as_ref().and_then(|s| s.secret_name.as_deref()),
        Some("db-creds")
    );
    assert!(ws[0].config_map.is_none());
    assert_eq!(ws[1].name, "secret-api-token");
    assert_eq!(
        ws[1].secret.as_ref().and_then(|s| s.secret_name.as_deref()),
        Some("api-token")
    );
    assert_eq!(ws[2].name, "configmap-settings");
    assert_eq!(
        ws[2].config_map.as_ref().map(|c| c.name.as_str()),
        Some("settings")
    );
    assert!(ws[2].secret.is_none());
    let json = serde_json::to_value(&pr).expect("serializes");
    assert_eq!(
        json["spec"]["workspaces"][2],
        serde_json::json!({"name": "configmap-settings", "configMap": {"name": "settings"}})
    );
    assert_eq!(
        json["spec"]["workspaces"][0],
        serde_json::json!({"name": "secret-db-creds", "secret": {"secretName": "db-creds"}})
    );
    // No dependencies: no workspaces key at all.
    let pr = build_pipeline_run(&wfe(serde_json::json!({})), &cfg()).expect("builds");
    assert!(pr.spec.workspaces.is_empty());
    let json = serde_json::to_value(&pr).expect("serializes");
    assert!(json["spec"].get("workspaces").is_none());
}

#[test]
fn service_account_and_security_context() {
    let pr = build_pipeline_run(&wfe(serde_json::json!({})), &cfg()).expect("builds");
    let t = pr.spec.task_run_template.expect("taskRunTemplate");
    assert_eq!(
        t.service_account_name.as_deref(),
        Some("kubernaut-workflow-runner")
    );
    let sc = t
        .pod_template
        .and_then(|p| p.security_context)
        .expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_string())
    );

    let custom = TektonConfig {
        default_service_account: "runner".into(),
        ..cfg()
    };
    let pr = build_pipeline_run(&wfe(serde_json::json!({})), &custom).expect("builds");
    assert_eq!(
        pr.spec
            .task_run_template
            .and_then(|t| t.service_account_name)
            .as_deref(),
        Some("runner")
    );

    let w = wfe(serde_json::json!({"executionConfig": {"serviceAccountName": "restart-sa"}}));
    let pr = build_pipeline_run(&w, &custom).expect("builds");
    assert_eq!(
        pr.spec
            .task_run_template
            .and_then(|t| t.service_account_name)
            .as_deref(),
        Some("restart-sa")
    );

    // Empty means "not set".
    let w = wfe(serde_json::json!({"executionConfig": {"serviceAccountName": ""}}));
    let pr = build_pipeline_run(&w, &custom).expect("builds");
    assert_eq!(
        pr.spec
            .task_run_template
            .and_then(|t| t.service_account_name)
            .as_deref(),
        Some("runner")
    );
}

#[test]
fn timeout_is_a_go_duration() {
    for (timeout, expected) in [
        (None, "30m0s"),
        (Some("30m"), "30m0s"),
        (Some("45s"), "45s"),
        (Some("1h30m"), "1h30m0s"),
        (Some("90m"), "1h30m0s"),
        (Some("2h"), "2h0m0s"),
        (Some("1.5h"), "1h30m0s"),
        (Some("125s"), "2m5s"),
    ] {
        let extra = match timeout {
            Some(t) => serde_json::json!({"executionConfig": {"timeout": t}}),
            None => serde_json::json!({}),
        };
        let pr = build_pipeline_run(&wfe(extra), &cfg()).expect("builds");
        let t = pr.spec.timeouts.expect("timeouts");
        assert_eq!(t.pipeline.as_deref(), Some(expected), "{timeout:?}");
        assert_eq!(t.tasks, None);
        assert_eq!(t.finally, None);
    }
    for bad in ["soon", "0s", "500ms", "200h"] {
        let w = wfe(serde_json::json!({"executionConfig": {"timeout": bad}}));
        match build_pipeline_run(&w, &cfg()) {
            Err(e @ BuildError::Timeout(_)) => {
                assert_eq!(e.field(), "spec.executionConfig.timeout", "{bad}");
                assert!(std::error::Error::source(&e).is_some(), "{bad}");
            }
            other => panic!("{bad} must be refused as a timeout: {other:?}"),
        }
    }
}

#[test]
fn full_wire_shape() {
    let w = wfe(serde_json::json!({
        "parameters": {"REPLICAS": "3"},
        "workflowRef": {"dependencies": {"secrets": [{"name": "s"}]}},
        "executionConfig": {"timeout": "10m"}
    }));
    let pr = build_pipeline_run(&w, &cfg()).expect("builds");
    let json = serde_json::to_value(&pr).expect("serializes");
    assert_eq!(
        json["spec"],
        serde_json::json!({
            "pipelineRef": {"resolver": "bundles", "params": [
                {"name": "bundle", "value": "registry.example.com/workflows/restart@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
                {"name": "name", "value": "workflow"},
                {"name": "kind", "value": "pipeline"}
            ]},
            "params": [
                {"name": "REPLICAS", "value": "3"},
                {"name": "TARGET_RESOURCE", "value": "production/Deployment/my-app"}
            ],
            "workspaces": [{"name": "secret-s", "secret": {"secretName": "s"}}],
            "taskRunTemplate": {
                "serviceAccountName": "kubernaut-workflow-runner",
                "podTemplate": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}}
            },
            "timeouts": {"pipeline": "10m0s"}
        })
    );
    // And it reads back to the same value.
    let back: crate::PipelineRun = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, pr);
    assert!(matches!(back.spec.params[0].value, ParamValue::String(_)));
}

#[test]
fn deterministic() {
    let w = wfe(serde_json::json!({"parameters": {"B": "2", "A": "1"}}));
    let a = serde_json::to_string(&build_pipeline_run(&w, &cfg()).expect("builds")).expect("json");
    let b = serde_json::to_string(&build_pipeline_run(&w, &cfg()).expect("builds")).expect("json");
    assert_eq!(a, b);
}

#[test]
fn bundles_must_be_pinned_by_digest_unless_allowed() {
    let pinned = format!("oci://registry.example.com/w@sha256:{}", "a".repeat(64));
    let w = wfe(serde_json::json!({"workflowRef": {"containerImage": pinned}}));
    assert_eq!(check_bundle_pinned(&w, &cfg()), Ok(()));
    let tagged = wfe(
        serde_json::json!({"workflowRef": {"containerImage": "oci://registry.example.com/w:v1"}}),
    );
    let err = check_bundle_pinned(&tagged, &cfg()).expect_err("a tag is refused");
    assert_eq!(err.field(), "spec.workflowRef.containerImage");
    assert!(err.message().contains("pinned by digest"), "{err}");
    let relaxed = TektonConfig {
        allow_unpinned_bundles: true,
        ..cfg()
    };
    assert_eq!(check_bundle_pinned(&tagged, &relaxed), Ok(()));
}
