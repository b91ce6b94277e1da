//! Metrics through the `metrics` facade (DESIGN.md §5 and §7). Two families:
//!
//! * execution metrics (`workflowexecution_reconciler_*`, dispatch, completion, guards, audit):
//!   what happened to the executions; each carries an `execution_engine` label. The names of
//!   DESIGN.md §5 are kept although `reconciler_*` counts executions, not reconciles
//!   (docs/decisions.md, "Metrics").
//! * reconcile metrics (`workflowexecution_reconcile_*`), in controller-runtime's style: one
//!   observation per call of the reconcile function by kube-runtime's Controller
//!   ([`Reconciling`], [`reconciled`]).
//!
//! No label ever holds a per-object value.

use std::time::Duration;

use kube::runtime::controller::Action;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Executions that reached a terminal phase, by engine and outcome. The name (DESIGN.md §5) says
/// "reconciler", but it counts executions; reconciles are [`RECONCILE_TOTAL`].
pub const RECONCILER_TOTAL: &str = "workflowexecution_reconciler_total";
/// Execution duration (start to completion), by engine and outcome. The name (DESIGN.md §5) says
/// "reconciler", but it measures executions; reconciles are [`RECONCILE_DURATION`].
pub const RECONCILER_DURATION: &str = "workflowexecution_reconciler_duration_seconds";
/// Reconciles (calls of the reconcile function), by result: `success`, `requeue`, `error`.
pub const RECONCILE_TOTAL: &str = "workflowexecution_reconcile_total";
/// Duration of one reconcile, by result.
pub const RECONCILE_DURATION: &str = "workflowexecution_reconcile_duration_seconds";
/// Reconciles running now (at most [`RECONCILE_MAX_CONCURRENCY`]).
pub const RECONCILE_ACTIVE: &str = "workflowexecution_reconcile_active_workers";
/// The configured bound on reconciles in flight (`--concurrency`).
pub const RECONCILE_MAX_CONCURRENCY: &str = "workflowexecution_reconcile_max_concurrency";
/// WorkflowExecution created → execution resource created.
pub const DISPATCH_LATENCY: &str = "workflowexecution_dispatch_latency_seconds";
/// Execution resource finished → WorkflowExecution terminal.
pub const COMPLETION_LATENCY: &str = "workflowexecution_completion_propagation_seconds";
/// Guard outcomes, by reason.
pub const BLOCKED_TOTAL: &str = "workflowexecution_blocked_total";
/// Running executions, by engine.
pub const ACTIVE: &str = "workflowexecution_active_executions";
/// Reconcile errors, by category.
pub const RECONCILE_ERRORS: &str = "workflowexecution_reconcile_errors_total";
/// Audit deliveries, by result.
pub const AUDIT_EVENTS: &str = "workflowexecution_audit_events_total";
/// Lock releases, by engine and how the execution resource went.
pub const LOCK_RELEASED: &str = "workflowexecution_lock_released_total";

/// Changes of the workflow policy file seen by the reloader, by result: `loaded`, `invalid`.
pub const POLICY_RELOADS: &str = "workflowexecution_workflow_policy_reloads_total";
/// 1 when the policy in force is what the policy file says now, 0 while the file holds an
/// invalid policy and the last good one stays in force.
pub const POLICY_RELOAD_OK: &str = "workflowexecution_workflow_policy_last_reload_successful";

/// Buckets of the execution duration histogram (seconds).
pub const DURATION_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0,
];
/// Buckets of the reconcile duration histogram (seconds): most reconciles take a few
/// milliseconds; an audit delivery or a slow API server makes seconds.
pub const RECONCILE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of the latency histograms (seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers descriptions (call once after installing a recorder).
pub fn describe() {
    describe_counter!(
        RETENTION_DELETED,
        "Finished WorkflowExecutions deleted after the retention time"
    );
    describe_counter!(
        RECONCILER_TOTAL,
        "WorkflowExecutions that reached a terminal phase, by execution engine and outcome"
    );
    describe_histogram!(
        RECONCILER_DURATION,
        metrics::Unit::Seconds,
        "Execution duration, by execution engine and outcome"
    );
    describe_histogram!(
        DISPATCH_LATENCY,
        metrics::Unit::Seconds,
        "Time from WorkflowExecution creation to execution resource creation"
    );
    describe_histogram!(
        COMPLETION_LATENCY,
        metrics::Unit::Seconds,
        "Time from the execution resource finishing to the WorkflowExecution reaching a terminal phase"
    );
    describe_counter!(
        BLOCKED_TOTAL,
        "Requests held or refused by a guard, by reason"
    );
    describe_gauge!(ACTIVE, "Executions currently running, by execution engine");
    describe_counter!(
        RECONCILE_ERRORS,
        "Reconciles that returned an error, by category (then retried)"
    );
    describe_counter!(
        RECONCILE_TOTAL,
        "Reconciles of WorkflowExecutions, by result (success, requeue, error)"
    );
    describe_histogram!(
        RECONCILE_DURATION,
        metrics::Unit::Seconds,
        "Duration of one reconcile of a WorkflowExecution, by result"
    );
    describe_gauge!(RECONCILE_ACTIVE, "Reconciles running now");
    describe_gauge!(
        RECONCILE_MAX_CONCURRENCY,
        "The configured bound on reconciles running at once"
    );
    describe_counter!(
        POLICY_RELOADS,
        "Changes of the workflow policy file, by result (loaded, invalid)"
    );
    describe_gauge!(
        POLICY_RELOAD_OK,
        "1 when the workflow policy in force is the policy file's current content, 0 while the file is invalid and the last good policy stays in force"
    );
    // Present from the start, so that rates and ratios have a series before the first reconcile.
    for result in ReconcileResult::ALL {
        counter!(RECONCILE_TOTAL, "result" => result.label()).absolute(0);
    }
    gauge!(RECONCILE_ACTIVE).set(0.0);
    describe_counter!(AUDIT_EVENTS, "Audit events delivered or failed, by result");
    describe_counter!(
        LOCK_RELEASED,
        "Per-target locks released, by execution engine and how the execution resource went (deleted, gone, replaced)"
    );
}

/// A terminal transition.
pub fn terminal(engine: &str, outcome: &str, duration: Duration) {
    counter!(RECONCILER_TOTAL, "execution_engine" => engine.to_string(), "outcome" => outcome.to_string()).increment(1);
    histogram!(RECONCILER_DURATION, "execution_engine" => engine.to_string(), "outcome" => outcome.to_string())
        .record(duration.as_secs_f64());
}

/// A dispatch.
pub fn dispatched(engine: &str, latency: Duration) {
    histogram!(DISPATCH_LATENCY, "execution_engine" => engine.to_string())
        .record(latency.as_secs_f64());
}

/// A completion noticed `latency` after the execution resource finished.
pub fn completion_propagated(engine: &str, latency: Duration) {
    histogram!(COMPLETION_LATENCY, "execution_engine" => engine.to_string())
        .record(latency.as_secs_f64());
}

/// A guard outcome.
pub fn blocked(reason: &str) {
    counter!(BLOCKED_TOTAL, "reason" => reason.to_string()).increment(1);
}

/// Running executions of an engine.
pub fn active(engine: &str, count: usize) {
    gauge!(ACTIVE, "execution_engine" => engine.to_string()).set(count as f64);
}

/// How a reconcile ended, the `result` label of the reconcile metrics (controller-runtime's
/// values, with `requeue` for both of its `requeue` and `requeue_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Done; nothing to do until the object or its execution resource changes.
    Success,
    /// Done for now; the reconcile asked to run again after a delay (a wait, a retry of audit
    /// delivery, the lock release after the cooldown).
    Requeue,
    /// The reconcile returned an error; kube-runtime's Controller retries it (`error_policy`).
    Error,
}

impl ReconcileResult {
    /// Every result, for the series that exist from the start.
    pub const ALL: [ReconcileResult; 3] = [
        ReconcileResult::Success,
        ReconcileResult::Requeue,
        ReconcileResult::Error,
    ];

    /// The result of what a reconcile function returned.
    pub fn of<E>(result: &Result<Action, E>) -> Self {
        match result {
            Ok(action) if *action == Action::await_change() => ReconcileResult::Success,
            Ok(_) => ReconcileResult::Requeue,
            Err(_) => ReconcileResult::Error,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Requeue => "requeue",
            ReconcileResult::Error => "error",
        }
    }
}

/// One reconcile in flight: counted in [`RECONCILE_ACTIVE`] from [`Reconciling::start`] until it
/// is dropped (also when the reconcile future is dropped by a shutdown).
#[derive(Debug)]
pub struct Reconciling {
    started: std::time::Instant,
}

impl Reconciling {
    /// A reconcile begins.
    pub fn start() -> Self {
        gauge!(RECONCILE_ACTIVE).increment(1.0);
        Reconciling {
            started: std::time::Instant::now(),
        }
    }

    /// The reconcile returned `result`; `category` is the error's metric category, if any.
    pub fn finish<E>(self, result: &Result<Action, E>, category: impl FnOnce(&E) -> &'static str) {
        // The error first: a scrape never sees more `error` results than errors.
        if let Err(e) = result {
            reconcile_error(category(e));
        }
        reconciled(ReconcileResult::of(result), self.started.elapsed());
    }
}

impl Drop for Reconciling {
    fn drop(&mut self) {
        gauge!(RECONCILE_ACTIVE).decrement(1.0);
    }
}

/// A reconcile that ended with `result` after `took`.
pub fn reconciled(result: ReconcileResult, took: Duration) {
    counter!(RECONCILE_TOTAL, "result" => result.label()).increment(1);
    histogram!(RECONCILE_DURATION, "result" => result.label()).record(took.as_secs_f64());
}

/// The configured bound on reconciles in flight.
pub fn max_concurrency(n: u16) {
    gauge!(RECONCILE_MAX_CONCURRENCY).set(f64::from(n));
}

/// A change of the workflow policy file: put in force (`true`) or refused as invalid.
pub fn policy_reload(loaded: bool) {
    counter!(POLICY_RELOADS, "result" => if loaded { "loaded" } else { "invalid" }).increment(1);
    policy_valid(loaded);
}

/// Whether the policy in force is the policy file's current content.
pub fn policy_valid(valid: bool) {
    gauge!(POLICY_RELOAD_OK).set(if valid { 1.0 } else { 0.0 });
}

/// A reconcile error.
pub fn reconcile_error(category: &'static str) {
    counter!(RECONCILE_ERRORS, "category" => category).increment(1);
}

/// Audit deliveries.
pub fn audit(result: &'static str, count: usize) {
    counter!(AUDIT_EVENTS, "result" => result).increment(count as u64);
}

/// A lock release; `how`: `deleted`, `gone` (already) or `replaced` (by the next execution).
pub fn lock_released(engine: &str, how: &'static str) {
    counter!(LOCK_RELEASED, "execution_engine" => engine.to_string(), "how" => how).increment(1);
}

/// Finished WorkflowExecutions deleted by retention.
pub const RETENTION_DELETED: &str = "workflowexecution_retention_deleted_total";

/// Counts one WorkflowExecution deleted by retention.
pub fn retention_deleted() {
    counter!(RETENTION_DELETED).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_follow_controller_runtime() {
        let ok: Result<Action, ()> = Ok(Action::await_change());
        assert_eq!(ReconcileResult::of(&ok), ReconcileResult::Success);
        let later: Result<Action, ()> = Ok(Action::requeue(Duration::from_secs(3)));
        assert_eq!(ReconcileResult::of(&later), ReconcileResult::Requeue);
        let now: Result<Action, ()> = Ok(Action::requeue(Duration::ZERO));
        assert_eq!(ReconcileResult::of(&now), ReconcileResult::Requeue);
        let failed: Result<Action, &str> = Err("x");
        assert_eq!(ReconcileResult::of(&failed), ReconcileResult::Error);
        assert_eq!(
            ReconcileResult::ALL.map(ReconcileResult::label),
            ["success", "requeue", "error"]
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for (name, kind) in [
            (RECONCILER_TOTAL, "counter"),
            (RECONCILE_TOTAL, "counter"),
            (RECONCILE_ERRORS, "counter"),
            (BLOCKED_TOTAL, "counter"),
            (AUDIT_EVENTS, "counter"),
            (LOCK_RELEASED, "counter"),
            (RETENTION_DELETED, "counter"),
            (POLICY_RELOADS, "counter"),
            (POLICY_RELOAD_OK, "gauge"),
            (RECONCILER_DURATION, "seconds"),
            (RECONCILE_DURATION, "seconds"),
            (DISPATCH_LATENCY, "seconds"),
            (COMPLETION_LATENCY, "seconds"),
            (ACTIVE, "gauge"),
            (RECONCILE_ACTIVE, "gauge"),
            (RECONCILE_MAX_CONCURRENCY, "gauge"),
        ] {
            assert!(name.starts_with("workflowexecution_"), "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "seconds" => assert!(name.ends_with("_seconds"), "{name}"),
                _ => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
        let buckets = RECONCILE_BUCKETS;
        assert!(buckets.windows(2).all(|w| w[0] < w[1]));
    }
}
