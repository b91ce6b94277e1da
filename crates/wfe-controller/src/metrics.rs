//! Metrics through the `metrics` facade (DESIGN.md §5). Every execution metric carries an
//! `execution_engine` label; no label ever holds a per-object value.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Executions that reached a terminal phase, by engine and outcome.
pub const RECONCILER_TOTAL: &str = "workflowexecution_reconciler_total";
/// Execution duration (start to completion), by engine and outcome.
pub const RECONCILER_DURATION: &str = "workflowexecution_reconciler_duration_seconds";
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

/// Buckets of the execution duration histogram (seconds).
pub const DURATION_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0,
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
    describe_counter!(RECONCILE_ERRORS, "Reconcile errors, by category");
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
