//! What the WorkflowExecution cache keeps of each object.
//!
//! The controller caches every WorkflowExecution it watches, and most of them are finished for
//! good: terminal, lock released, every audit event acknowledged. Of those it only ever reads what
//! the guards and the target index need, so the watch trims them on arrival ([`trim`]) to a
//! summary a few hundred bytes large; `metadata.managedFields`, which nothing reads, is dropped
//! from every object. A trimmed object is marked ([`is_summary`]); a settled object needs no write,
//! and the reconciler refuses to write a status derived from a trimmed copy.
//!
//! An object leaves the summary form by itself: any change that gives the controller work (a
//! clearance annotation, a deletion) arrives as a new version from the watch, which no longer
//! qualifies as settled and is kept whole.

use std::collections::BTreeMap;

use kube::ResourceExt;
use wfe_api::{CLEAR_BLOCK_ANNOTATION, Phase, WorkflowExecution};

use crate::{audit, clearance::ATTESTATION_ANNOTATION};

/// Marks an in-memory summary (never sent to the API server: status writes carry only the status
/// and the resourceVersion).
pub const SUMMARY_MARKER: &str = "we-operator.kubernaut.ai/cached-summary";

/// True when nothing is left to do for `wfe` unless it changes: terminal, its execution resource
/// released (or never created), every audit event acknowledged, no clearance to record, not
/// being deleted.
pub fn settled(wfe: &WorkflowExecution) -> bool {
    let Some(status) = wfe.status.as_ref() else {
        return false;
    };
    let phase = wfe.phase();
    let clearance_requested = phase == Phase::Failed
        && status.block_clearance.is_none()
        && wfe.annotations().contains_key(CLEAR_BLOCK_ANNOTATION);
    phase.is_terminal()
        && (status.execution_ref.is_none() || status.lock_released_time.is_some())
        && wfe.metadata.deletion_timestamp.is_none()
        && !clearance_requested
        && audit::pending(wfe).is_empty()
}

/// True for an object trimmed by [`trim`].
pub fn is_summary(wfe: &WorkflowExecution) -> bool {
    wfe.annotations().contains_key(SUMMARY_MARKER)
}

/// Prepares an object for the cache: drops `managedFields`, and trims a [`settled`] object to
/// what the controller reads of it (identity, finalizers, the clearance annotations, engine,
/// target, workflow id, and the status fields that guards, audit and lock release look at).
pub fn trim(wfe: &mut WorkflowExecution) {
    wfe.metadata.managed_fields = None;
    if !settled(wfe) {
        return;
    }
    let meta = &mut wfe.metadata;
    meta.labels = None;
    let mut kept: BTreeMap<String, String> = meta
        .annotations
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == CLEAR_BLOCK_ANNOTATION || k == ATTESTATION_ANNOTATION)
        .collect();
    kept.insert(SUMMARY_MARKER.into(), String::new());
    meta.annotations = Some(kept);

    let spec = &mut wfe.spec;
    spec.parameters = BTreeMap::new();
    spec.execution_config = None;
    spec.rationale = None;
    spec.confidence = None;
    spec.remediation_request_ref = Default::default();
    let r = &mut spec.workflow_ref;
    r.version = String::new();
    r.name = None;
    r.container_image = String::new();
    r.container_digest = None;
    r.dependencies = None;
    r.resources = None;
    r.declared_parameter_names = None;

    if let Some(s) = wfe.status.as_mut() {
        s.conditions = Vec::new();
        s.execution_status = None;
        s.duration = None;
        s.deduplicated_by = None;
        if let Some(d) = s.failure_details.as_mut() {
            d.message = String::new();
            d.natural_language_summary = None;
            d.failed_task_name = None;
            d.failed_step_name = None;
            d.execution_time_before_failure = None;
        }
        if let Some(c) = s.block_clearance.as_mut() {
            c.clear_reason = String::new();
        }
    }
    shrink(wfe);
}

fn shrink(wfe: &mut WorkflowExecution) {
    let m = &mut wfe.metadata;
    for s in [
        &mut m.name,
        &mut m.namespace,
        &mut m.uid,
        &mut m.resource_version,
    ]
    .into_iter()
    .flatten()
    {
        s.shrink_to_fit();
    }
    wfe.spec.target_resource.shrink_to_fit();
    wfe.spec.workflow_ref.workflow_id.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guards::Prior;
    use serde_json::json;

    fn wfe(status: serde_json::Value, annotations: serde_json::Value) -> WorkflowExecution {
        serde_json::from_value(json!({
            "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
            "metadata": {"name": "w", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "finalizers": [wfe_api::FINALIZER], "annotations": annotations,
                         "labels": {"a": "b"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"executionEngine": "job",
                     "workflowRef": {"workflowId": "restart", "version": "1.0.0",
                                     "containerImage": "r/i@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
                     "targetResource": "prod/Deployment/app",
                     "parameters": {"A": "1"},
                     "remediationRequestRef": {"name": "rr"}},
            "status": status
        }))
        .unwrap()
    }

    fn finished(phase: &str) -> serde_json::Value {
        json!({
            "phase": phase, "startTime": "2026-01-01T00:00:01Z", "completionTime": "2026-01-01T00:00:09Z",
            "executionRef": {"kind": "Job", "name": "wfe-1", "namespace": "x"},
            "lockReleasedTime": "2026-01-01T00:05:09Z",
            "failureDetails": {"reason": "TaskFailed", "message": "exit 3", "wasExecutionFailure": true},
            "auditDelivered": ["workflowexecution.selection.completed", "workflowexecution.execution.started",
                               "workflowexecution.workflow.completed", "workflowexecution.workflow.failed"],
            "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:09Z"}]
        })
    }

    #[test]
    fn settled_objects_are_trimmed_to_what_guards_audit_and_release_read() {
        let full = wfe(
            finished("Failed"),
            json!({"kubectl.kubernetes.io/last-applied-configuration": "{...}"}),
        );
        assert!(settled(&full));
        let mut t = full.clone();
        trim(&mut t);
        assert!(is_summary(&t));
        assert_eq!(t.metadata.managed_fields, None);
        assert_eq!(Prior::of(&t), Prior::of(&full), "the guards see the same");
        assert_eq!(t.target_key(), full.target_key());
        assert_eq!(t.engine(), full.engine());
        assert_eq!(audit::due_types(&t), audit::due_types(&full));
        assert!(audit::pending(&t).is_empty());
        assert_eq!(t.finalizers(), full.finalizers());
        assert_eq!(t.resource_version(), full.resource_version());
        assert!(t.spec.parameters.is_empty() && t.status.as_ref().unwrap().conditions.is_empty());
        assert!(settled(&t), "trimming is stable");
    }

    #[test]
    fn objects_with_work_left_are_kept_whole() {
        let mut running = finished("Running");
        running["lockReleasedTime"] = serde_json::Value::Null;
        let mut unreleased = finished("Succeeded");
        unreleased["lockReleasedTime"] = serde_json::Value::Null;
        let mut unaudited = finished("Failed");
        unaudited["auditDelivered"] = json!([]);
        let cases = [
            wfe(running, json!({})),
            wfe(unreleased, json!({})),
            wfe(unaudited, json!({})),
            wfe(
                finished("Failed"),
                json!({CLEAR_BLOCK_ANNOTATION: "the memory limit was raised by hand after review"}),
            ),
            wfe(json!({"phase": "Pending"}), json!({})),
        ];
        for c in cases {
            let mut t = c.clone();
            trim(&mut t);
            assert!(!is_summary(&t), "{:?}", c.status);
            assert_eq!(t.metadata.managed_fields, None, "managedFields always go");
            let mut c = c;
            c.metadata.managed_fields = None;
            assert_eq!(
                serde_json::to_value(&t).unwrap(),
                serde_json::to_value(&c).unwrap(),
                "nothing else changes"
            );
        }
    }

    #[test]
    fn a_recorded_clearance_keeps_the_annotations_the_controller_reads() {
        let mut s = finished("Failed");
        s["blockClearance"] = json!({"clearedBy": "alice", "clearReason": "long reason", "clearMethod": "Annotation"});
        s["auditDelivered"]
            .as_array_mut()
            .unwrap()
            .push(json!("workflowexecution.block.cleared"));
        let full = wfe(
            s,
            json!({CLEAR_BLOCK_ANNOTATION: "reason", ATTESTATION_ANNOTATION: "token", "other": "x"}),
        );
        let mut t = full.clone();
        trim(&mut t);
        assert!(is_summary(&t));
        let a = t.annotations();
        assert_eq!(
            a.get(CLEAR_BLOCK_ANNOTATION).map(String::as_str),
            Some("reason")
        );
        assert_eq!(
            a.get(ATTESTATION_ANNOTATION).map(String::as_str),
            Some("token")
        );
        assert!(!a.contains_key("other"));
        assert_eq!(Prior::of(&t), Prior::of(&full));
    }
}
