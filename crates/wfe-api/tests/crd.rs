//! The generated CRD: drift against the committed copy, descriptions, and its CEL rules evaluated
//! client-side (kube's CEL support) on raw JSON objects.

use kube::CustomResourceExt;
use serde_json::{Value, json};
use wfe_api::{WorkflowExecution, crd_yaml};

fn schema() -> Value {
    let crd = WorkflowExecution::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn object(spec_patch: Value) -> Value {
    let mut spec = json!({
        "executionEngine": "job",
        "workflowRef": {
            "workflowId": "restart-with-increased-memory",
            "version": "1.2.0",
            "containerImage": format!("registry.example.com/remediation/restart:v1.2@{DIGEST}")
        },
        "targetResource": "production/Deployment/my-app",
        "parameters": {"podName": "my-app", "namespace": "production", "memoryLimit": "1Gi"},
        "remediationRequestRef": {"name": "rr-1", "namespace": "kubernaut-system"},
        "confidence": 0.9,
        "executionConfig": {"timeout": "10m"}
    });
    merge(&mut spec, spec_patch);
    json!({"apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
           "metadata": {"name": "wfe-1", "namespace": "default"}, "spec": spec})
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// Evaluates the CRD's CEL rules. A refusal must be a rule that evaluated to false (never a rule
/// that failed to compile or could not be evaluated, which would make the tests pass vacuously).
fn cel(obj: &Value, old: Option<&Value>) -> Result<(), String> {
    match kube::core::cel::Validator::new().validate(&schema(), obj, old) {
        Ok(()) => Ok(()),
        Err(errors) => {
            for e in errors.iter() {
                assert!(
                    matches!(e.kind, kube::core::cel::ErrorKind::ValidationFailure),
                    "rule {:?} did not evaluate: {:?}: {}",
                    e.rule,
                    e.kind,
                    e.message
                );
            }
            Err(errors
                .iter()
                .map(|e| format!("{}: {}", e.field_path, e.message))
                .collect::<Vec<_>>()
                .join("; "))
        }
    }
}

#[test]
fn committed_crd_matches_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crds/workflowexecutions.kubernaut.ai.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == crd_yaml(),
        "{path} is out of date with crates/wfe-api: run `cargo xtask crdgen` and commit the result"
    );
}

#[test]
fn committed_crd_reference_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/crd-reference.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == wfe_api::crd_reference_markdown(),
        "{path} is out of date with crates/wfe-api: run `cargo xtask crdgen` and commit the result"
    );
}

#[test]
fn crd_identity() {
    let crd = WorkflowExecution::crd();
    assert_eq!(crd.spec.group, "kubernaut.ai");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["wfe".to_string()][..])
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<&str> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        [
            "Phase", "Engine", "Workflow", "Target", "Reason", "Duration", "Age"
        ]
    );
}

/// Every property of spec and status carries a description (shown by `kubectl explain`).
#[test]
fn every_field_is_described() {
    fn walk(path: &str, s: &Value, missing: &mut Vec<String>) {
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (name, p) in props {
                let here = format!("{path}.{name}");
                if p.get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(&here, p, missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(inner) = s.get(key).filter(|v| v.is_object()) {
                walk(&format!("{path}[]"), inner, missing);
            }
        }
    }
    let s = schema();
    let mut missing = Vec::new();
    for top in ["spec", "status"] {
        walk(top, &s["properties"][top], &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without description: {missing:?}"
    );
}

#[test]
fn engine_schema_admits_empty_and_defaults_to_tekton() {
    let e = &schema()["properties"]["spec"]["properties"]["executionEngine"];
    assert_eq!(e["default"], "tekton");
    assert_eq!(e["enum"], json!(["tekton", "job", ""]));
    let phase = &schema()["properties"]["status"]["properties"]["phase"];
    assert!(
        phase["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("Completed"))
    );
}

#[test]
fn cel_accepts_a_valid_object() {
    assert_eq!(cel(&object(json!({})), None), Ok(()));
    assert_eq!(
        cel(
            &object(json!({"targetResource": "Node/worker-1", "parameters": null})),
            None
        ),
        Ok(())
    );
}

#[test]
fn cel_target_format() {
    for bad in ["a", "a/b/c/d", "a//b", "/a/b", "a/b/", "ns/ /x"] {
        let r = cel(&object(json!({"targetResource": bad})), None);
        assert!(
            r.as_ref().is_err_and(|e| e.contains("targetResource")),
            "{bad:?}: {r:?}"
        );
    }
}

#[test]
fn cel_parameter_names() {
    for bad in [
        "bad-key",
        "1abc",
        "with space",
        "TARGET_RESOURCE",
        "HOME",
        "TMPDIR",
        "WFE_NAME",
    ] {
        let r = cel(&object(json!({"parameters": {bad: "x"}})), None);
        assert!(r.is_err(), "{bad:?} should be refused");
    }
    assert_eq!(
        cel(
            &object(json!({"parameters": {"_ok": "x", "WFEX": "y"}})),
            None
        ),
        Ok(())
    );
}

#[test]
fn cel_confidence_range() {
    for bad in [-0.1, 1.5] {
        assert!(
            cel(&object(json!({"confidence": bad})), None).is_err(),
            "{bad}"
        );
    }
    for ok in [0.0, 1.0, 0.5] {
        assert_eq!(
            cel(&object(json!({"confidence": ok})), None),
            Ok(()),
            "{ok}"
        );
    }
}

#[test]
fn cel_timeout_is_a_positive_duration() {
    assert!(cel(&object(json!({"executionConfig": {"timeout": "0s"}})), None).is_err());
    assert_eq!(
        cel(
            &object(json!({"executionConfig": {"timeout": "1h30m"}})),
            None
        ),
        Ok(())
    );
}

#[test]
fn cel_spec_is_immutable() {
    let old = object(json!({}));
    assert_eq!(
        cel(&old, Some(&old)),
        Ok(()),
        "an identical re-submit is accepted"
    );
    for change in [
        json!({"executionEngine": "tekton"}),
        json!({"parameters": {"podName": "other"}}),
        json!({"workflowRef": {"declaredParameterNames": ["podName"]}}),
    ] {
        let new = object(change.clone());
        assert!(cel(&new, Some(&old)).is_err(), "{change} should be refused");
    }
}

/// spec (immutable) and status (written by the operator only) are each one atomic field for
/// field management: the API server tracks one managedFields entry of a few bytes for each
/// instead of one per leaf, so every status write costs it less.
#[test]
fn spec_and_status_are_atomic_for_field_management() {
    let s = schema();
    for part in ["spec", "status"] {
        assert_eq!(
            s["properties"][part]["x-kubernetes-map-type"], "atomic",
            "{part}"
        );
    }
}
