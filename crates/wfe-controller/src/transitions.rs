//! Pure status transitions: each function returns the new status of a WorkflowExecution.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use wfe_api::{
    ExecutionRef, ExecutionStatusSummary, FailureDetails, FailureReason, Phase, WorkflowExecution,
    WorkflowExecutionStatus, conditions as cond, format_duration,
};
use wfe_executor::Failure;

/// Sets a condition; `lastTransitionTime` changes only when the status changes. Returns whether
/// anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status_str = if status { "True" } else { "False" };
    let message = truncate(message, 1024);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status_str
                || c.reason != reason
                || c.message != message
                || c.observed_generation != generation;
            if c.status != status_str {
                c.last_transition_time = Time(now);
            }
            c.status = status_str.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.into(),
                status: status_str.into(),
                reason: reason.into(),
                message,
                observed_generation: generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// Removes a condition; returns whether it was there.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn base(wfe: &WorkflowExecution) -> WorkflowExecutionStatus {
    let mut s = wfe.status.clone().unwrap_or_default();
    s.observed_generation = wfe.metadata.generation;
    s
}

fn elapsed(from: Option<&Time>, to: Timestamp) -> Option<Duration> {
    let from = from?.0;
    Duration::try_from(to.duration_since(from)).ok()
}

/// A human-readable summary of a failure.
pub fn natural_language_summary(wfe: &WorkflowExecution, details: &FailureDetails) -> String {
    let mut s = format!(
        "Workflow '{}' failed on target '{}'.\nReason: {}\n",
        wfe.spec.workflow_ref.workflow_id, wfe.spec.target_resource, details.reason
    );
    if !details.message.is_empty() {
        s.push_str(&format!("Error: {}\n", details.message));
    }
    if let Some(code) = details.exit_code {
        s.push_str(&format!("Exit code: {code}\n"));
    }
    if let Some(t) = &details.execution_time_before_failure {
        s.push_str(&format!("Failed after: {t}\n"));
    }
    let advice = match details.reason {
        FailureReason::OomKilled => {
            "The workflow ran out of memory. Consider increasing its memory limit."
        }
        FailureReason::Forbidden => {
            "The service account lacks required RBAC permissions. Grant them or use another workflow."
        }
        FailureReason::DeadlineExceeded => {
            "The workflow exceeded its timeout. Consider a longer timeout or a faster workflow."
        }
        FailureReason::ImagePullBackOff => {
            "The workflow image could not be pulled. Verify that it exists and that credentials are configured."
        }
        FailureReason::ConfigurationError => {
            "The request or its dependencies are invalid. Fix the named field or object and retry."
        }
        FailureReason::ResourceExhausted => {
            "A quota or limit refused the execution. Free capacity or raise the quota."
        }
        FailureReason::UnsupportedEngine => {
            "The execution engine is not available. Install it or use another engine."
        }
        FailureReason::PreviousExecutionFailed | FailureReason::ExhaustedRetries => {
            "The target is blocked. Review the previous failures, then clear the block with the kubernaut.ai/clear-block annotation."
        }
        FailureReason::Deduplicated => {
            "Another execution on the same target was active; this request did not run."
        }
        FailureReason::TaskFailed | FailureReason::Unknown => "",
    };
    if !advice.is_empty() {
        s.push_str(&format!("Recommendation: {advice}\n"));
    }
    s
}

/// Pending, blocked by an expiring guard until `until`.
pub fn blocked(
    wfe: &WorkflowExecution,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> WorkflowExecutionStatus {
    let mut s = base(wfe);
    s.phase = Some(Phase::Pending);
    set_condition(
        &mut s.conditions,
        cond::BLOCKED,
        true,
        reason,
        message,
        s.observed_generation,
        now,
    );
    s
}

/// Pending (first sight, nothing decided yet).
pub fn pending(wfe: &WorkflowExecution) -> WorkflowExecutionStatus {
    let mut s = base(wfe);
    s.phase = Some(Phase::Pending);
    s
}

/// The `ExecutionRunning` condition message for a progress summary.
fn running_message(wfe: &WorkflowExecution, summary: Option<&ExecutionStatusSummary>) -> String {
    let engine = wfe.spec.execution_engine.as_str();
    match summary {
        Some(summary) => format!(
            "Execution running ({engine}: {})",
            summary.message.as_deref().unwrap_or("running")
        ),
        None => format!("Execution running ({engine})"),
    }
}

/// Running: the execution resource exists. `initial` is the executor's summary of a resource
/// that was just created ([`wfe_executor::Executor::initial_summary`]); carrying it here saves
/// the progress write that the first observation would otherwise make.
pub fn running(
    wfe: &WorkflowExecution,
    reference: &ExecutionRef,
    adopted: bool,
    initial: Option<ExecutionStatusSummary>,
    now: Timestamp,
) -> WorkflowExecutionStatus {
    let mut s = base(wfe);
    let generation = s.observed_generation;
    s.phase = Some(Phase::Running);
    s.start_time = Some(Time(now));
    s.execution_ref = Some(reference.clone());
    remove_condition(&mut s.conditions, cond::BLOCKED);
    let verb = if adopted { "adopted" } else { "created" };
    let engine = wfe.spec.execution_engine.as_str();
    let message = format!(
        "{engine} execution resource {} {}/{} {verb}",
        reference.kind, reference.namespace, reference.name
    );
    set_condition(
        &mut s.conditions,
        cond::EXECUTION_CREATED,
        true,
        "ExecutionCreated",
        &message,
        generation,
        now,
    );
    // An adopted resource may have progressed already: its first observation writes that.
    let initial = initial.filter(|_| !adopted);
    set_condition(
        &mut s.conditions,
        cond::EXECUTION_RUNNING,
        true,
        "ExecutionStarted",
        &running_message(wfe, initial.as_ref()),
        generation,
        now,
    );
    s.execution_status = initial;
    s
}

/// Running, with fresh progress. Returns `None` when nothing changed (no write needed).
pub fn progress(
    wfe: &WorkflowExecution,
    summary: &ExecutionStatusSummary,
    now: Timestamp,
) -> Option<WorkflowExecutionStatus> {
    let mut s = base(wfe);
    let generation = s.observed_generation;
    let message = running_message(wfe, Some(summary));
    let changed_condition = set_condition(
        &mut s.conditions,
        cond::EXECUTION_RUNNING,
        true,
        "ExecutionStarted",
        &message,
        generation,
        now,
    );
    let changed_summary = s.execution_status.as_ref() != Some(summary);
    s.execution_status = Some(summary.clone());
    (changed_condition || changed_summary).then_some(s)
}

fn finish(s: &mut WorkflowExecutionStatus, finished: Timestamp) {
    let end = match s.start_time.as_ref() {
        Some(start) if start.0 > finished => start.0,
        _ => finished,
    };
    s.completion_time = Some(Time(end));
    s.duration = elapsed(s.start_time.as_ref(), end).map(format_duration);
}

/// Succeeded.
pub fn succeeded(
    wfe: &WorkflowExecution,
    summary: ExecutionStatusSummary,
    finished: Timestamp,
    now: Timestamp,
) -> WorkflowExecutionStatus {
    let mut s = base(wfe);
    let generation = s.observed_generation;
    s.phase = Some(Phase::Succeeded);
    finish(&mut s, finished);
    s.execution_status = Some(summary);
    let d = s.duration.clone().unwrap_or_else(|| "0s".into());
    set_condition(
        &mut s.conditions,
        cond::EXECUTION_RUNNING,
        false,
        "ExecutionFinished",
        "Execution finished",
        generation,
        now,
    );
    set_condition(
        &mut s.conditions,
        cond::EXECUTION_COMPLETE,
        true,
        "ExecutionSucceeded",
        &format!("All tasks completed successfully in {d}"),
        generation,
        now,
    );
    set_condition(
        &mut s.conditions,
        cond::READY,
        true,
        "Ready",
        "Workflow execution completed",
        generation,
        now,
    );
    s
}

fn details(
    wfe: &WorkflowExecution,
    s: &WorkflowExecutionStatus,
    failure: &Failure,
    now: Timestamp,
) -> FailureDetails {
    let mut d = FailureDetails {
        reason: failure.reason,
        message: failure.message.clone(),
        exit_code: failure.exit_code,
        failed_task_name: failure.failed_task_name.clone(),
        failed_task_index: failure.failed_task_index,
        failed_step_name: failure.failed_step_name.clone(),
        failed_at: Some(Time(now)),
        execution_time_before_failure: elapsed(s.start_time.as_ref(), now).map(format_duration),
        natural_language_summary: None,
        was_execution_failure: failure.was_execution_failure,
    };
    d.natural_language_summary = Some(natural_language_summary(wfe, &d));
    d
}

/// Failed after the execution resource existed (the execution ran or tried to).
pub fn execution_failed(
    wfe: &WorkflowExecution,
    summary: Option<ExecutionStatusSummary>,
    failure: &Failure,
    finished: Timestamp,
    now: Timestamp,
) -> WorkflowExecutionStatus {
    let mut s = base(wfe);
    let generation = s.observed_generation;
    s.phase = Some(Phase::Failed);
    finish(&mut s, finished);
    if summary.is_some() {
        s.execution_status = summary;
    }
    let d = details(wfe, &s, failure, finished);
    let (reason, message) = match failure.reason {
        FailureReason::TaskFailed => ("TaskFailed", d.message.clone()),
        FailureReason::DeadlineExceeded => (
            "DeadlineExceeded",
            format!("Execution exceeded its timeout: {}", d.message),
        ),
        FailureReason::OomKilled => (
            "OOMKilled",
            format!(
                "Execution killed for exceeding its memory limit: {}",
                d.message
            ),
        ),
        _ => ("ExecutionFailed", d.message.clone()),
    };
    s.failure_reason = Some(d.reason);
    s.failure_details = Some(d);
    set_condition(
        &mut s.conditions,
        cond::EXECUTION_RUNNING,
        false,
        "ExecutionFinished",
        "Execution finished",
        generation,
        now,
    );
    set_condition(
        &mut s.conditions,
        cond::EXECUTION_COMPLETE,
        false,
        reason,
        &message,
        generation,
        now,
    );
    set_condition(
        &mut s.conditions,
        cond::READY,
        false,
        "NotReady",
        "Workflow execution failed",
        generation,
        now,
    );
    s
}

/// Failed before any execution resource existed: validation, guards, refused create.
/// `kind` names the engine's resource (`Job`, `PipelineRun`) for the condition message;
/// `attempted` marks a dispatch attempt (counts for backoff).
pub fn pre_execution_failed(
    wfe: &WorkflowExecution,
    kind: &str,
    failure: &Failure,
    deduplicated_by: Option<String>,
    attempted: bool,
    now: Timestamp,
) -> WorkflowExecutionStatus {
    let mut s = base(wfe);
    let generation = s.observed_generation;
    s.phase = Some(Phase::Failed);
    if attempted && s.start_time.is_none() {
        s.start_time = Some(Time(now));
    }
    finish(&mut s, now);
    let d = details(wfe, &s, failure, now);
    s.failure_reason = Some(d.reason);
    s.deduplicated_by = deduplicated_by;
    remove_condition(&mut s.conditions, cond::BLOCKED);
    let reason = match failure.reason {
        FailureReason::Deduplicated => "Deduplicated",
        FailureReason::Forbidden => "RBACDenied",
        FailureReason::ResourceExhausted => "QuotaExceeded",
        FailureReason::ConfigurationError => "ConfigurationError",
        FailureReason::UnsupportedEngine => "UnsupportedEngine",
        FailureReason::PreviousExecutionFailed | FailureReason::ExhaustedRetries => "TargetBlocked",
        _ => "ExecutionCreationFailed",
    };
    set_condition(
        &mut s.conditions,
        cond::EXECUTION_CREATED,
        false,
        reason,
        &format!("{kind} not created: {}", d.message),
        generation,
        now,
    );
    set_condition(
        &mut s.conditions,
        cond::READY,
        false,
        "NotReady",
        "Workflow execution failed",
        generation,
        now,
    );
    s.failure_details = Some(d);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        format!("2026-01-01T{s}Z").parse().unwrap()
    }

    fn wfe(status: serde_json::Value) -> WorkflowExecution {
        wfe_api::testing::wfe("w")
            .namespace("ns")
            .uid(None)
            .meta("generation", json!(1))
            .image("x")
            .target("ns/Deployment/app")
            .status(status)
            .build()
    }

    fn reference() -> ExecutionRef {
        ExecutionRef {
            kind: "Job".into(),
            name: "wfe-1".into(),
            namespace: "kw".into(),
        }
    }

    fn types(s: &WorkflowExecutionStatus) -> Vec<&str> {
        s.conditions.iter().map(|c| c.type_.as_str()).collect()
    }

    #[test]
    fn condition_transition_time_changes_only_with_status() {
        let mut c = Vec::new();
        assert!(set_condition(
            &mut c,
            "Ready",
            false,
            "A",
            "m",
            Some(1),
            t("00:00:00")
        ));
        assert!(!set_condition(
            &mut c,
            "Ready",
            false,
            "A",
            "m",
            Some(1),
            t("00:01:00")
        ));
        assert_eq!(c[0].last_transition_time.0, t("00:00:00"));
        assert!(set_condition(
            &mut c,
            "Ready",
            false,
            "B",
            "m",
            Some(1),
            t("00:02:00")
        ));
        assert_eq!(c[0].last_transition_time.0, t("00:00:00"));
        assert!(set_condition(
            &mut c,
            "Ready",
            true,
            "B",
            "m",
            Some(1),
            t("00:03:00")
        ));
        assert_eq!(c[0].last_transition_time.0, t("00:03:00"));
        assert!(remove_condition(&mut c, "Ready") && c.is_empty());
    }

    #[test]
    fn happy_path_ends_with_the_expected_conditions() {
        let w = wfe(
            json!({"phase": "Pending", "conditions": [{"type": "Blocked", "status": "True", "reason": "CooldownActive",
            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        let r = running(&w, &reference(), false, None, t("00:00:01"));
        assert_eq!(r.phase, Some(Phase::Running));
        assert_eq!(
            types(&r),
            ["ExecutionCreated", "ExecutionRunning"],
            "Blocked removed"
        );
        let w = wfe(serde_json::to_value(&r).unwrap());
        let summary = ExecutionStatusSummary {
            status: "True".into(),
            completed_tasks: 1,
            total_tasks: 1,
            ..Default::default()
        };
        let done = succeeded(&w, summary, t("00:00:46"), t("00:00:47"));
        assert_eq!(done.phase, Some(Phase::Succeeded));
        assert_eq!(done.duration.as_deref(), Some("45s"));
        assert_eq!(done.completion_time.as_ref().unwrap().0, t("00:00:46"));
        assert_eq!(
            types(&done),
            [
                "ExecutionCreated",
                "ExecutionRunning",
                "ExecutionComplete",
                "Ready"
            ]
        );
        assert_eq!(done.observed_generation, Some(1));
        let complete = done
            .conditions
            .iter()
            .find(|c| c.type_ == "ExecutionComplete")
            .unwrap();
        assert_eq!(
            (complete.status.as_str(), complete.reason.as_str()),
            ("True", "ExecutionSucceeded")
        );
    }

    #[test]
    fn execution_failure_details_and_conditions() {
        let w = wfe(
            json!({"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
            "executionRef": {"kind": "Job", "name": "wfe-1", "namespace": "kw"}}),
        );
        let mut f = Failure::new(FailureReason::TaskFailed, "exited with code 2: boom", true);
        f.exit_code = Some(2);
        let s = execution_failed(&w, None, &f, t("00:00:10"), t("00:00:11"));
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(s.failure_reason, Some(FailureReason::TaskFailed));
        let d = s.failure_details.as_ref().unwrap();
        assert!(d.was_execution_failure);
        assert_eq!(d.exit_code, Some(2));
        assert_eq!(d.execution_time_before_failure.as_deref(), Some("10s"));
        assert!(
            d.natural_language_summary
                .as_ref()
                .unwrap()
                .contains("Exit code: 2")
        );
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "ExecutionComplete")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "TaskFailed")
        );
        let oom = execution_failed(
            &w,
            None,
            &Failure::new(FailureReason::OomKilled, "oom", true),
            t("00:00:10"),
            t("00:00:11"),
        );
        assert_eq!(
            oom.conditions
                .iter()
                .find(|c| c.type_ == "ExecutionComplete")
                .unwrap()
                .reason,
            "OOMKilled"
        );
    }

    #[test]
    fn pre_execution_failure() {
        let w = wfe(json!(null));
        let f = Failure::new(FailureReason::Deduplicated, "held by ns/first", false);
        let s = pre_execution_failed(&w, "Job", &f, Some("ns/first".into()), false, t("00:00:05"));
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(s.deduplicated_by.as_deref(), Some("ns/first"));
        assert!(s.start_time.is_none(), "a guard outcome is not an attempt");
        assert!(!s.failure_details.as_ref().unwrap().was_execution_failure);
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "ExecutionCreated")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Deduplicated")
        );
        assert!(
            c.message.starts_with("Job not created"),
            "engine-correct wording: {}",
            c.message
        );
        let forbidden = pre_execution_failed(
            &w,
            "Job",
            &Failure::new(FailureReason::Forbidden, "denied", false),
            None,
            true,
            t("00:00:05"),
        );
        assert!(
            forbidden.start_time.is_some(),
            "a refused create is an attempt"
        );
        assert_eq!(forbidden.duration.as_deref(), Some("0s"));
    }

    #[test]
    fn progress_writes_only_on_change() {
        let w = wfe(json!({"phase": "Running"}));
        let summary = ExecutionStatusSummary {
            status: "Unknown".into(),
            message: Some("1/1 active".into()),
            total_tasks: 1,
            ..Default::default()
        };
        let s = progress(&w, &summary, t("00:00:01")).expect("first progress writes");
        let w2 = wfe(serde_json::to_value(&s).unwrap());
        assert!(
            progress(&w2, &summary, t("00:00:02")).is_none(),
            "unchanged progress needs no write"
        );
    }

    #[test]
    fn an_initial_summary_at_dispatch_spares_the_first_progress_write() {
        let summary = ExecutionStatusSummary {
            status: "Unknown".into(),
            reason: Some("Running".into()),
            message: Some("Job running (0/1 pods active)".into()),
            total_tasks: 1,
            ..Default::default()
        };
        let w = wfe(json!({"phase": "Pending"}));
        let r = running(
            &w,
            &reference(),
            false,
            Some(summary.clone()),
            t("00:00:01"),
        );
        let w2 = wfe(serde_json::to_value(&r).unwrap());
        assert!(progress(&w2, &summary, t("00:00:02")).is_none());
        // Without it (or when adopting) the first observation is written.
        let r = running(&w, &reference(), true, Some(summary.clone()), t("00:00:01"));
        assert_eq!(r.execution_status, None);
        let w3 = wfe(serde_json::to_value(&r).unwrap());
        assert!(progress(&w3, &summary, t("00:00:02")).is_some());
    }

    #[test]
    fn long_messages_are_truncated_in_conditions() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            "X",
            true,
            "R",
            &"é".repeat(2000),
            None,
            t("00:00:00"),
        );
        assert!(c[0].message.len() <= 1024 + 3);
    }
}
