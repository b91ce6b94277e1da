//! Decisions as values: every transition the reconcilers make is an [`Effects`] (the status to
//! write, when the audit events go, the Event, the metrics, what happens next), built here by
//! pure functions and carried out by one function, [`Context::conclude`](super::Context). All
//! terminal paths (pre-execution failure, success, execution failure) and every lock release go
//! through it, so they cannot differ in what they record.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::runtime::events::EventType;
use wfe_api::{ExecutionRef, ExecutionStatusSummary, WorkflowExecution, WorkflowExecutionStatus};
use wfe_executor::{DeleteOutcome, Failure};

use crate::{metrics, transitions};

/// A Kubernetes Event to publish about the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// `WorkflowCompleted`, `LockReleased`, …
    pub reason: String,
    /// What the controller was doing.
    pub action: &'static str,
    /// The message.
    pub note: String,
}

impl Note {
    fn new(type_: EventType, reason: &str, action: &'static str, note: String) -> Self {
        Note {
            type_,
            reason: reason.to_string(),
            action,
            note,
        }
    }

    /// Whether the same Event may be published again about an unchanged object (a Warning, or
    /// a wait that is looked at again on each requeue); Kubernetes then counts the repeats in one
    /// Event (a series) instead of creating another. Transition Events happen once per object.
    pub fn may_repeat(&self) -> bool {
        self.type_ == EventType::Warning || self.action == "Wait"
    }
}

/// A metric to record (labelled with the object's engine where the metric has that label).
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// A terminal phase after `duration` of execution.
    Terminal {
        /// `Succeeded` or `Failed`.
        outcome: &'static str,
        /// Start to completion.
        duration: Duration,
    },
    /// The execution resource was created this long after the WorkflowExecution.
    Dispatched(Duration),
    /// The outcome was recorded this long after the engine finished.
    CompletionPropagated(Duration),
    /// A guard held or refused the request.
    Blocked(String),
    /// The lock on the target was released; how the execution resource went.
    LockReleased(&'static str),
}

impl Metric {
    /// Records the metric for `engine`.
    pub fn record(&self, engine: &str) {
        match self {
            Metric::Terminal { outcome, duration } => metrics::terminal(engine, outcome, *duration),
            Metric::Dispatched(latency) => metrics::dispatched(engine, *latency),
            Metric::CompletionPropagated(latency) => {
                metrics::completion_propagated(engine, *latency)
            }
            Metric::Blocked(reason) => metrics::blocked(reason),
            Metric::LockReleased(how) => metrics::lock_released(engine, how),
        }
    }
}

/// When the audit events a status makes due are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audit {
    /// The status records the outcome of an execution: deliver first and acknowledge in the same
    /// write (should the write fail, the retry finds the same outcome and the receiver recognises
    /// the redelivered events by their `event_id`); the time is remembered for the lock release.
    Outcome,
    /// After the write (acknowledged with the next one).
    After,
    /// Not now.
    Later,
}

/// What the reconcile does after the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// The object is terminal: audit, block clearing, lock release ([`super::Context`]'s
    /// `after_terminal`).
    AfterTerminal,
    /// Look again after this long.
    Requeue(Duration),
}

/// One transition's effects.
#[derive(Clone, Debug)]
pub struct Effects {
    /// The status to write (with the object's resourceVersion as a precondition); `None`: no
    /// write (the object is being deleted).
    pub status: Option<WorkflowExecutionStatus>,
    /// When the audit events go.
    pub audit: Audit,
    /// The Event, published after a successful write.
    pub event: Option<Note>,
    /// The metrics, recorded after a successful write.
    pub metrics: Vec<Metric>,
    /// What follows.
    pub then: Then,
}

impl Effects {
    /// Also counts the request as held or refused by a guard.
    pub fn blocked_by(mut self, reason: &str) -> Self {
        self.metrics.insert(0, Metric::Blocked(reason.to_string()));
        self
    }
}

fn since(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

fn elapsed(s: &WorkflowExecutionStatus) -> Duration {
    match (&s.start_time, &s.completion_time) {
        (Some(a), Some(b)) => since(a.0, b.0),
        _ => Duration::ZERO,
    }
}

/// Failed before anything ran (validation, a guard, a refused create): `kind` names the
/// execution resource in the condition, `event_reason` is the Event's reason.
pub fn pre_execution_failed(
    wfe: &WorkflowExecution,
    kind: &str,
    failure: &Failure,
    deduplicated_by: Option<String>,
    attempted: bool,
    event_reason: &str,
    now: Timestamp,
) -> Effects {
    let status =
        transitions::pre_execution_failed(wfe, kind, failure, deduplicated_by, attempted, now);
    Effects {
        status: Some(status),
        audit: Audit::Later,
        event: Some(Note::new(
            EventType::Warning,
            event_reason,
            "Validate",
            format!(
                "Pre-execution failure: {} - {}",
                failure.reason, failure.message
            ),
        )),
        metrics: vec![Metric::Terminal {
            outcome: "Failed",
            duration: Duration::ZERO,
        }],
        then: Then::AfterTerminal,
    }
}

/// The execution succeeded at `finished`.
pub fn succeeded(
    wfe: &WorkflowExecution,
    summary: ExecutionStatusSummary,
    finished: Timestamp,
    now: Timestamp,
) -> Effects {
    let status = transitions::succeeded(wfe, summary, finished, now);
    let note = format!(
        "Workflow {} completed successfully in {}",
        wfe.spec.workflow_ref.workflow_id,
        status.duration.clone().unwrap_or_default()
    );
    Effects {
        metrics: vec![
            Metric::Terminal {
                outcome: "Succeeded",
                duration: elapsed(&status),
            },
            Metric::CompletionPropagated(since(finished, now)),
        ],
        status: Some(status),
        audit: Audit::Outcome,
        event: Some(Note::new(
            EventType::Normal,
            "WorkflowCompleted",
            "Complete",
            note,
        )),
        then: Then::AfterTerminal,
    }
}

/// The execution failed at `finished`. `reported_by_engine`: the engine said so (its latency
/// is measured), rather than the controller concluding it (resource gone, engine unregistered).
pub fn execution_failed(
    wfe: &WorkflowExecution,
    summary: Option<ExecutionStatusSummary>,
    failure: &Failure,
    finished: Timestamp,
    reported_by_engine: bool,
    now: Timestamp,
) -> Effects {
    let status = transitions::execution_failed(wfe, summary, failure, finished, now);
    let mut metrics = Vec::new();
    if reported_by_engine {
        metrics.push(Metric::CompletionPropagated(since(finished, now)));
    }
    metrics.push(Metric::Terminal {
        outcome: "Failed",
        duration: elapsed(&status),
    });
    Effects {
        status: Some(status),
        audit: Audit::Outcome,
        event: Some(Note::new(
            EventType::Warning,
            "WorkflowFailed",
            "Fail",
            format!(
                "Workflow {} failed: {} - {}",
                wfe.spec.workflow_ref.workflow_id, failure.reason, failure.message
            ),
        )),
        metrics,
        then: Then::AfterTerminal,
    }
}

/// The execution resource was created (or adopted): running, looked at again after `resync`.
pub fn dispatched(
    wfe: &WorkflowExecution,
    reference: &ExecutionRef,
    adopted: bool,
    initial: Option<ExecutionStatusSummary>,
    resync: Duration,
    now: Timestamp,
) -> Effects {
    let engine = wfe.engine().as_str().to_string();
    let latency = wfe
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|created| Metric::Dispatched(since(created.0, now)));
    Effects {
        status: Some(transitions::running(wfe, reference, adopted, initial, now)),
        audit: Audit::After,
        event: Some(Note::new(
            EventType::Normal,
            "ExecutionCreated",
            "Dispatch",
            format!(
                "Created {} {}/{} ({engine} engine)",
                reference.kind, reference.namespace, reference.name
            ),
        )),
        metrics: latency.into_iter().collect(),
        then: Then::Requeue(resync),
    }
}

/// Held by an expiring guard until `until`.
pub fn deferred(
    wfe: &WorkflowExecution,
    reason: &str,
    message: &str,
    until: Timestamp,
    now: Timestamp,
) -> Effects {
    Effects {
        status: Some(transitions::blocked(wfe, reason, message, now)),
        audit: Audit::Later,
        event: Some(Note::new(
            EventType::Normal,
            reason,
            "Wait",
            format!("Execution deferred: {message}"),
        )),
        metrics: vec![Metric::Blocked(reason.to_string())],
        then: Then::Requeue(since(now, until) + Duration::from_millis(50)),
    }
}

/// How a lock was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The cooldown after the outcome is over.
    AfterCooldown,
    /// The WorkflowExecution is being deleted (its finalizer).
    Deleted,
}

/// The lock on the target is released: the execution resource was deleted, was gone already, or
/// had been replaced by the next execution on the target. Every way records the same on the
/// owner: `lockReleasedTime` (unless the owner is being deleted), a `LockReleased` Event and
/// the metric.
pub fn lock_released(
    wfe: &WorkflowExecution,
    outcome: DeleteOutcome,
    how: Release,
    now: Timestamp,
) -> Effects {
    let (label, what) = match outcome {
        DeleteOutcome::Deleted => ("deleted", "execution resource deleted"),
        DeleteOutcome::NotFound => ("gone", "execution resource already gone"),
        DeleteOutcome::NotOwned => (
            "replaced",
            "execution resource already replaced by the next execution on the target",
        ),
    };
    let (status, when) = match how {
        Release::AfterCooldown => {
            let mut s = wfe.status.clone().unwrap_or_default();
            s.lock_released_time = Some(Time(now));
            (Some(s), "after cooldown")
        }
        Release::Deleted => (None, "as the WorkflowExecution is deleted"),
    };
    Effects {
        status,
        audit: Audit::Later,
        event: Some(Note::new(
            EventType::Normal,
            "LockReleased",
            "Release",
            format!(
                "Lock released for {} {when} ({what})",
                wfe.spec.target_resource
            ),
        )),
        metrics: vec![Metric::LockReleased(label)],
        then: Then::AfterTerminal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wfe_api::{FailureReason, Phase};

    #[test]
    fn only_warnings_and_waits_may_repeat() {
        let n = |t, action| Note::new(t, "R", action, "n".into());
        assert!(n(EventType::Warning, "Release").may_repeat());
        assert!(n(EventType::Normal, "Wait").may_repeat());
        assert!(!n(EventType::Normal, "Release").may_repeat());
    }

    fn wfe(status: serde_json::Value) -> WorkflowExecution {
        wfe_api::testing::wfe("w")
            .workflow("restart")
            .created("2026-01-01T00:00:00Z")
            .status(status)
            .build()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn running() -> WorkflowExecution {
        wfe(serde_json::json!({"phase": "Running", "startTime": "2026-01-01T00:00:01Z"}))
    }

    #[test]
    fn every_terminal_transition_writes_an_event_and_the_terminal_metric_then_goes_on_as_terminal()
    {
        let now = at("2026-01-01T00:00:11Z");
        let failure = Failure::new(FailureReason::TaskFailed, "exit 1", true);
        let all = [
            pre_execution_failed(
                &running(),
                "Job",
                &failure,
                None,
                false,
                "WorkflowFailed",
                now,
            ),
            succeeded(
                &running(),
                ExecutionStatusSummary::default(),
                at("2026-01-01T00:00:10Z"),
                now,
            ),
            execution_failed(
                &running(),
                None,
                &failure,
                at("2026-01-01T00:00:10Z"),
                true,
                now,
            ),
            execution_failed(&running(), None, &failure, now, false, now),
        ];
        for e in all {
            let phase = e.status.as_ref().and_then(|s| s.phase);
            assert!(phase.is_some_and(Phase::is_terminal), "{e:?}");
            assert_eq!(e.then, Then::AfterTerminal);
            assert!(e.event.is_some());
            assert_eq!(
                e.metrics
                    .iter()
                    .filter(|m| matches!(m, Metric::Terminal { .. }))
                    .count(),
                1
            );
        }
    }

    #[test]
    fn outcomes_deliver_their_audit_events_before_the_write() {
        let now = at("2026-01-01T00:00:11Z");
        let e = succeeded(
            &running(),
            ExecutionStatusSummary::default(),
            at("2026-01-01T00:00:10Z"),
            now,
        );
        assert_eq!(e.audit, Audit::Outcome);
        assert_eq!(
            e.metrics,
            vec![
                Metric::Terminal {
                    outcome: "Succeeded",
                    duration: Duration::from_secs(9)
                },
                Metric::CompletionPropagated(Duration::from_secs(1)),
            ]
        );
        assert_eq!(
            e.event.unwrap().note,
            "Workflow restart completed successfully in 9s"
        );
        let failure = Failure::new(FailureReason::Unknown, "gone", true);
        let e = execution_failed(&running(), None, &failure, now, false, now);
        assert_eq!(e.audit, Audit::Outcome);
        assert!(
            !e.metrics
                .iter()
                .any(|m| matches!(m, Metric::CompletionPropagated(_)))
        );
    }

    #[test]
    fn guards_count_as_blocked() {
        let now = at("2026-01-01T00:00:00Z");
        let pending = wfe(serde_json::json!({"phase": "Pending"}));
        let e = deferred(
            &pending,
            "CooldownActive",
            "wait",
            at("2026-01-01T00:00:02Z"),
            now,
        );
        assert_eq!(e.metrics, vec![Metric::Blocked("CooldownActive".into())]);
        assert_eq!(e.then, Then::Requeue(Duration::from_millis(2050)));
        let failure = Failure::new(FailureReason::Deduplicated, "held", false);
        let e = pre_execution_failed(
            &pending,
            "Job",
            &failure,
            Some("ns/x".into()),
            false,
            "WorkflowFailed",
            now,
        )
        .blocked_by("Deduplicated");
        assert_eq!(e.metrics[0], Metric::Blocked("Deduplicated".into()));
    }

    #[test]
    fn a_dispatch_measures_its_latency_and_looks_again_after_the_resync() {
        let pending = wfe(serde_json::json!({"phase": "Pending"}));
        let reference = ExecutionRef {
            kind: "Job".into(),
            name: "wfe-0".into(),
            namespace: "kubernaut-workflows".into(),
        };
        let e = dispatched(
            &pending,
            &reference,
            false,
            None,
            Duration::from_secs(300),
            at("2026-01-01T00:00:00.25Z"),
        );
        assert_eq!(
            e.metrics,
            vec![Metric::Dispatched(Duration::from_millis(250))]
        );
        assert_eq!(e.then, Then::Requeue(Duration::from_secs(300)));
        assert_eq!(e.audit, Audit::After);
    }

    #[test]
    fn every_lock_release_records_the_same() {
        let now = at("2026-01-01T00:10:00Z");
        let done = wfe(
            serde_json::json!({"phase": "Succeeded", "executionRef": {"kind": "Job", "name": "wfe-0", "namespace": "x"}}),
        );
        for outcome in [
            DeleteOutcome::Deleted,
            DeleteOutcome::NotFound,
            DeleteOutcome::NotOwned,
        ] {
            let e = lock_released(&done, outcome, Release::AfterCooldown, now);
            assert_eq!(
                e.status.and_then(|s| s.lock_released_time),
                Some(Time(now)),
                "{outcome:?}"
            );
            assert_eq!(e.event.map(|n| n.reason), Some("LockReleased".to_string()));
            assert!(matches!(e.metrics[..], [Metric::LockReleased(_)]));
            let e = lock_released(&done, outcome, Release::Deleted, now);
            assert!(e.status.is_none(), "no write on an object being deleted");
            assert!(e.event.is_some());
        }
    }
}
