//! What the controller keeps of each WorkflowExecution it watches.
//!
//! Most WorkflowExecutions in a cluster are finished for good: terminal, lock released, every
//! audit event acknowledged ([`settled`]). Nothing is left to do for them unless they change, and
//! all that is ever read of them is the guard summary of their target. So the watch does not
//! cache them: [`crate::TargetIndex`] keeps that summary instead (about a tenth of the memory of
//! the object), and the object is taken out of the cache when it settles. A change that gives
//! the controller work (a clearance annotation, a deletion) arrives as a new version, which is no
//! longer settled and is cached and reconciled as usual. `metadata.managedFields`, which nothing
//! reads, is dropped from every object on arrival ([`strip`]).

use kube::{ResourceExt, runtime::watcher};
use wfe_api::{CLEAR_BLOCK_ANNOTATION, Phase, WorkflowExecution};

use crate::{TargetIndex, audit};

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
        && audit::all_delivered(status)
}

/// Routes one event of the WorkflowExecution watch: records it in the index and returns the
/// event the cache should see (a settled object leaves the cache: its `Apply` becomes a `Delete`,
/// and it is not listed into it), plus the UID whose per-object memory can be dropped (settled or
/// gone).
pub fn route(
    event: watcher::Event<WorkflowExecution>,
    index: &TargetIndex,
) -> (Option<watcher::Event<WorkflowExecution>>, Option<String>) {
    use watcher::Event;
    match event {
        Event::Init => {
            index.begin_relist();
            (Some(Event::Init), None)
        }
        Event::InitDone => {
            index.end_relist();
            (Some(Event::InitDone), None)
        }
        Event::InitApply(o) => {
            if index.insert(&o) {
                (None, None)
            } else {
                (Some(Event::InitApply(o)), None)
            }
        }
        Event::Apply(o) => {
            if index.insert(&o) {
                let uid = o.uid();
                (Some(Event::Delete(o)), uid)
            } else {
                (Some(Event::Apply(o)), None)
            }
        }
        Event::Delete(o) => {
            index.remove(&o);
            let uid = o.uid();
            (Some(Event::Delete(o)), uid)
        }
    }
}

/// Drops what nothing reads (`metadata.managedFields`, often half of an object).
pub fn strip(wfe: &mut WorkflowExecution) {
    wfe.metadata.managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wfe(status: serde_json::Value, annotations: serde_json::Value) -> WorkflowExecution {
        wfe_api::testing::wfe("w")
            .namespace("ns")
            .uid(Some("u-1"))
            .resource_version("7")
            .created("2026-01-01T00:00:00Z")
            .meta("finalizers", json!([wfe_api::FINALIZER]))
            .meta("annotations", annotations)
            .meta("labels", json!({"a": "b"}))
            .meta(
                "managedFields",
                json!([{"manager": "kubectl", "operation": "Apply"}]),
            )
            .workflow("restart")
            .spec(
                "workflowRef",
                json!({"workflowId": "restart", "version": "1.0.0",
                       "containerImage": format!("r/i@{}", wfe_api::testing::DIGEST)}),
            )
            .target("prod/Deployment/app")
            .param("A", "1")
            .status(status)
            .build()
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
    fn settled_objects_leave_the_cache_and_stay_in_the_index() {
        use kube::runtime::{reflector, watcher::Event};
        let index = TargetIndex::default();
        let (store, mut writer) = reflector::store::<WorkflowExecution>();
        let mut apply = |e| {
            let (routed, forget) = route(e, &index);
            if let Some(ev) = &routed {
                writer.apply_watcher_event(ev);
            }
            (routed.is_some(), forget)
        };
        let mut running = finished("Running");
        running["lockReleasedTime"] = serde_json::Value::Null;
        let live = wfe(running, json!({}));
        let mut done = wfe(finished("Failed"), json!({}));
        done.metadata.name = Some("old".into());
        // Initial list: the settled one is only indexed.
        apply(Event::Init);
        assert_eq!(apply(Event::InitApply(live.clone())), (true, None));
        assert_eq!(apply(Event::InitApply(done.clone())), (false, None));
        apply(Event::InitDone);
        let key = live.target_key();
        assert_eq!(store.state().len(), 1);
        let priors = index.priors(&key, &store, |o| o);
        assert_eq!(priors.len(), 2);
        assert!(priors.contains(&crate::guards::Prior::of(&done)));
        // The running one settles: it leaves the cache, its summary stays.
        let settled_now = wfe(finished("Succeeded"), json!({}));
        assert_eq!(
            apply(Event::Apply(settled_now.clone())),
            (true, Some("u-1".into()))
        );
        assert!(store.state().is_empty());
        assert_eq!(index.priors(&key, &store, |o| o).len(), 2);
        assert!(index.live(&key, &store).is_empty());
        // A clearance request makes the old one live again.
        let mut cleared = done.clone();
        cleared
            .annotations_mut()
            .insert(CLEAR_BLOCK_ANNOTATION.into(), "a reason".into());
        assert_eq!(apply(Event::Apply(cleared)), (true, None));
        assert_eq!(index.live(&key, &store).len(), 1);
        // Deleted: gone from both.
        apply(Event::Delete(settled_now));
        assert_eq!(index.len(), 1);
        // A relist that no longer contains `old` drops it.
        apply(Event::Init);
        apply(Event::InitDone);
        assert!(index.is_empty());
    }

    #[test]
    fn finished_released_and_audited_is_settled() {
        let mut full = wfe(finished("Failed"), json!({"x": "y"}));
        assert!(settled(&full));
        strip(&mut full);
        assert_eq!(full.metadata.managed_fields, None);
        assert!(settled(&full));
    }

    #[test]
    fn objects_with_work_left_are_not_settled() {
        let mut running = finished("Running");
        running["lockReleasedTime"] = serde_json::Value::Null;
        let mut unreleased = finished("Succeeded");
        unreleased["lockReleasedTime"] = serde_json::Value::Null;
        let mut unaudited = finished("Failed");
        unaudited["auditDelivered"] = json!([]);
        let mut deleting = wfe(finished("Failed"), json!({}));
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        let cases = [
            wfe(running, json!({})),
            wfe(unreleased, json!({})),
            wfe(unaudited, json!({})),
            wfe(
                finished("Failed"),
                json!({CLEAR_BLOCK_ANNOTATION: "the memory limit was raised by hand after review"}),
            ),
            wfe(json!({"phase": "Pending"}), json!({})),
            deleting,
        ];
        for c in cases {
            assert!(!settled(&c), "{:?}", c.status);
        }
    }

    #[test]
    fn a_recorded_clearance_settles_once_its_event_is_delivered() {
        let mut s = finished("Failed");
        s["blockClearance"] = json!({"clearedBy": "alice", "clearReason": "long reason", "clearMethod": "Annotation"});
        let pending = wfe(s.clone(), json!({CLEAR_BLOCK_ANNOTATION: "reason"}));
        assert!(!settled(&pending), "block.cleared not delivered yet");
        s["auditDelivered"]
            .as_array_mut()
            .unwrap()
            .push(json!("workflowexecution.block.cleared"));
        assert!(settled(&wfe(s, json!({CLEAR_BLOCK_ANNOTATION: "reason"}))));
    }
}
