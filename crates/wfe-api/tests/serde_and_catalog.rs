//! Serde round trips (with the backward-compatible defaults), `validate()` and catalog mapping.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use serde_json::json;
use wfe_api::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn wfe(spec: serde_json::Value) -> WorkflowExecution {
    serde_json::from_value(json!({
        "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
        "metadata": {"name": "w", "namespace": "default"},
        "spec": spec
    }))
    .unwrap()
}

fn base_spec() -> serde_json::Value {
    json!({
        "workflowRef": {"workflowId": "wf", "version": "1", "containerImage": format!("r.example/x@{DIGEST}")},
        "targetResource": "ns/Deployment/app",
        "remediationRequestRef": {"name": "rr"}
    })
}

#[test]
fn missing_engine_is_tekton_and_round_trips() {
    let w = wfe(base_spec());
    assert_eq!(w.spec.execution_engine, ExecutionEngine::Tekton);
    assert_eq!(w.phase(), Phase::Pending);
    let back: WorkflowExecution =
        serde_json::from_value(serde_json::to_value(&w).unwrap()).unwrap();
    assert_eq!(back.spec, w.spec);
}

#[test]
fn empty_engine_is_tekton() {
    let mut s = base_spec();
    s["executionEngine"] = json!("");
    assert_eq!(wfe(s).spec.execution_engine, ExecutionEngine::Tekton);
}

#[test]
fn job_engine_round_trips() {
    let mut s = base_spec();
    s["executionEngine"] = json!("job");
    let w = wfe(s);
    assert_eq!(w.spec.execution_engine, ExecutionEngine::Job);
    assert_eq!(
        serde_json::to_value(&w.spec).unwrap()["executionEngine"],
        "job"
    );
}

#[test]
fn legacy_completed_phase_reads_as_succeeded() {
    let status: WorkflowExecutionStatus =
        serde_json::from_value(json!({"phase": "Completed"})).unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(serde_json::to_value(&status).unwrap()["phase"], "Succeeded");
    let status: WorkflowExecutionStatus = serde_json::from_value(json!({"phase": ""})).unwrap();
    assert_eq!(status.phase, Some(Phase::Pending));
}

#[test]
fn full_status_round_trips() {
    let status: WorkflowExecutionStatus = serde_json::from_value(json!({
        "observedGeneration": 1, "phase": "Failed",
        "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:00:45Z", "duration": "45s",
        "executionRef": {"kind": "Job", "name": "wfe-0123456789abcdef", "namespace": "kubernaut-workflows"},
        "executionStatus": {"status": "False", "reason": "BackoffLimitExceeded", "completedTasks": 0, "totalTasks": 1, "retryCount": 0},
        "failureReason": "OOMKilled",
        "failureDetails": {"reason": "OOMKilled", "message": "container workflow was OOMKilled", "exitCode": 137,
                           "wasExecutionFailure": true},
        "auditDelivered": ["workflowexecution.selection.completed"],
        "conditions": [{"type": "Ready", "status": "False", "reason": "NotReady", "message": "m",
                        "lastTransitionTime": "2026-01-01T00:00:45Z"}]
    }))
    .unwrap();
    assert_eq!(status.failure_reason, Some(FailureReason::OomKilled));
    let again: WorkflowExecutionStatus =
        serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
    assert_eq!(again, status);
}

#[test]
fn effective_parameters_apply_the_allow_list_sorted() {
    let mut s = base_spec();
    s["parameters"] = json!({"b": "2", "a": "1", "c": "3"});
    let w = wfe(s.clone());
    assert_eq!(
        w.spec
            .effective_parameters()
            .into_iter()
            .collect::<Vec<_>>(),
        [("a", "1"), ("b", "2"), ("c", "3")]
    );
    s["workflowRef"]["declaredParameterNames"] = json!(["c", "a"]);
    assert_eq!(
        wfe(s.clone())
            .spec
            .effective_parameters()
            .into_iter()
            .collect::<Vec<_>>(),
        [("a", "1"), ("c", "3")]
    );
    s["workflowRef"]["declaredParameterNames"] = json!([]);
    assert!(wfe(s).spec.effective_parameters().is_empty());
}

#[test]
fn validate_names_each_bad_field() {
    let ok = wfe(base_spec());
    assert_eq!(ok.spec.validate(), Ok(()));
    let cases: &[(serde_json::Value, &str)] = &[
        (
            json!({"targetResource": "just-a-name"}),
            "spec.targetResource",
        ),
        (json!({"targetResource": "a/b/c/d"}), "spec.targetResource"),
        (
            json!({"parameters": {"bad-key": "x"}}),
            "spec.parameters[bad-key]",
        ),
        (
            json!({"parameters": {"HOME": "x"}}),
            "spec.parameters[HOME]",
        ),
        (
            json!({"parameters": {"WFE_NAME": "x"}}),
            "spec.parameters[WFE_NAME]",
        ),
        (
            json!({"parameters": {"BIG": "x".repeat(300 * 1024)}}),
            "spec.parameters",
        ),
        (
            json!({"workflowRef": {"workflowId": "", "version": "1", "containerImage": "x"}}),
            "spec.workflowRef.workflowId",
        ),
        (
            json!({"workflowRef": {"workflowId": "w", "version": "1", "containerImage": "Bad Image"}}),
            "spec.workflowRef.containerImage",
        ),
        (
            json!({"executionEngine": "ansible"}),
            "spec.executionEngine",
        ),
        (
            json!({"executionConfig": {"timeout": "forever"}}),
            "spec.executionConfig.timeout",
        ),
        (
            json!({"executionConfig": {"timeout": "1000h"}}),
            "spec.executionConfig.timeout",
        ),
        (
            json!({"executionConfig": {"serviceAccountName": "Bad_SA"}}),
            "spec.executionConfig.serviceAccountName",
        ),
        (json!({"confidence": 2.0}), "spec.confidence"),
        (
            json!({"remediationRequestRef": {}}),
            "spec.remediationRequestRef.name",
        ),
        (
            json!({"workflowRef": {"workflowId": "w", "version": "1", "containerImage": "x",
                   "dependencies": {"secrets": [{"name": "Bad Name"}]}}}),
            "spec.workflowRef.dependencies.secrets[0].name",
        ),
    ];
    for (patch, field) in cases {
        let mut s = base_spec();
        for (k, v) in patch.as_object().unwrap() {
            s[k] = v.clone();
        }
        let err = wfe(s).spec.validate().expect_err(field);
        assert!(
            err.0.iter().any(|e| e.field == *field),
            "{patch}: expected {field}, got {err}"
        );
    }
}

#[test]
fn timeout_default_and_parse() {
    assert_eq!(wfe(base_spec()).spec.timeout(), Ok(DEFAULT_TIMEOUT));
    let mut s = base_spec();
    s["executionConfig"] = json!({"timeout": "90s"});
    assert_eq!(
        wfe(s).spec.timeout(),
        Ok(std::time::Duration::from_secs(90))
    );
}

fn rr() -> ObjectReference {
    ObjectReference {
        name: Some("rr-oom-1".into()),
        namespace: Some("kubernaut-system".into()),
        ..Default::default()
    }
}

fn request() -> ExecutionRequest {
    ExecutionRequest {
        target_resource: "production/Deployment/my-app".into(),
        parameters: BTreeMap::from([
            ("podName".into(), "my-app".into()),
            ("namespace".into(), "production".into()),
            ("memoryLimit".into(), "1Gi".into()),
        ]),
        remediation_request_ref: rr(),
        confidence: Some(0.92),
        rationale: Some("OOMKilled three times".into()),
        timeout: None,
    }
}

#[test]
fn catalog_propagates_job_engine_and_pins_the_image() {
    let entry: CatalogEntry = serde_json::from_value(json!({
        "workflow_id": "restart-with-increased-memory", "version": "1.2.0",
        "workflow_name": "Restart with increased memory",
        "execution_engine": "job",
        "container_image": "registry.example.com/remediation/restart:v1.2",
        "container_digest": DIGEST,
        "service_account_name": "kubernaut-workflow-runner",
        "parameters": [{"name": "podName", "type": "string", "required": true},
                       {"name": "namespace", "required": true}, {"name": "memoryLimit"}],
        "dependencies": {"secrets": ["registry-creds"], "config_maps": []},
        "timeout": "5m"
    }))
    .unwrap();
    let spec = entry.to_spec(request()).unwrap();
    assert_eq!(spec.execution_engine, ExecutionEngine::Job);
    assert_eq!(
        spec.workflow_ref.container_image,
        format!("registry.example.com/remediation/restart:v1.2@{DIGEST}")
    );
    assert_eq!(spec.workflow_ref.container_digest.as_deref(), Some(DIGEST));
    assert_eq!(
        spec.workflow_ref.name.as_deref(),
        Some("Restart with increased memory")
    );
    assert_eq!(
        spec.workflow_ref
            .declared_parameter_names
            .as_ref()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        spec.workflow_ref.dependencies.as_ref().unwrap().secrets[0].name,
        "registry-creds"
    );
    assert_eq!(spec.service_account("default"), "kubernaut-workflow-runner");
    assert_eq!(spec.timeout(), Ok(std::time::Duration::from_secs(300)));
    assert_eq!(
        spec.remediation_request_ref.name.as_deref(),
        Some("rr-oom-1")
    );
    assert_eq!(spec.parameters.len(), 3);
}

#[test]
fn catalog_without_engine_means_tekton() {
    for engine in [json!(null), json!("")] {
        let mut v = json!({"workflow_id": "canary", "version": "2.0", "container_image": "oci://registry.example.com/pipelines/canary:v2.0"});
        if !engine.is_null() {
            v["execution_engine"] = engine;
        }
        let entry: CatalogEntry = serde_json::from_value(v).unwrap();
        assert_eq!(
            entry.to_spec(request()).unwrap().execution_engine,
            ExecutionEngine::Tekton
        );
    }
}

#[test]
fn catalog_errors_are_explicit() {
    let entry = CatalogEntry {
        workflow_id: "w".into(),
        version: "1".into(),
        execution_engine: Some("ansible".into()),
        container_image: "x".into(),
        ..Default::default()
    };
    assert!(matches!(
        entry.to_spec(request()),
        Err(CatalogError::UnsupportedEngine { .. })
    ));

    let other = "sha256:".to_string() + &"f".repeat(64);
    let entry = CatalogEntry {
        workflow_id: "w".into(),
        version: "1".into(),
        container_image: format!("x@{DIGEST}"),
        container_digest: Some(other),
        ..Default::default()
    };
    assert!(matches!(
        entry.to_spec(request()),
        Err(CatalogError::DigestMismatch { .. })
    ));

    let entry = CatalogEntry {
        workflow_id: "w".into(),
        version: "1".into(),
        container_image: "x".into(),
        parameters: Some(vec![CatalogParameter {
            name: "replicas".into(),
            required: true,
            ..Default::default()
        }]),
        ..Default::default()
    };
    assert!(matches!(
        entry.to_spec(request()),
        Err(CatalogError::MissingParameter { .. })
    ));

    let entry = CatalogEntry {
        workflow_id: "w".into(),
        version: "1".into(),
        container_image: "x".into(),
        ..Default::default()
    };
    let mut req = request();
    req.target_resource = "bad".into();
    assert!(matches!(entry.to_spec(req), Err(CatalogError::Invalid(_))));
}

#[test]
fn target_keys_and_words() {
    assert_eq!(wfe(base_spec()).target_key().as_str(), "ns/deployment/app");
    assert_eq!(word_count("  one two\tthree\nfour "), 4);
}
