//! Mapping a PipelineRun (and its TaskRuns) to an [`Observation`]: pure functions.
//!
//! The failure classification follows the reference controller (reference-behaviour.md §5.2,
//! §5.3, §6.6):
//!
//! * [`classify_failure_reason`]: ordered, case-insensitive substring rules on the `Succeeded`
//!   condition's reason and message, first match wins.
//! * [`find_failed_task_run`]: the first child TaskRun with `Succeeded=False`, its index among
//!   all child references, and its first step with a non-zero exit code.
//! * [`was_execution_failure`]: whether the workflow actually ran.
//!
//! Three deliberate refinements, each from what the real Tekton controller writes:
//!
//! * A PipelineRun that Tekton refused before running any task (its bundle or Pipeline could
//!   not be resolved, its params do not fit the Pipeline, its graph or workspaces are invalid:
//!   the reasons of [`PRE_EXECUTION_REASONS`]) is a `ConfigurationError` that did not execute,
//!   whatever words the resolver's message happens to contain ("timeout", "failed"...).
//! * A failed TaskRun whose step terminated with reason `OOMKilled` gives `OOMKilled` although
//!   the PipelineRun's own message ("Tasks Completed: 1 (Failed: 1, ...)") reads as a task
//!   failure: Tekton never writes the container's reason into the PipelineRun condition.
//!
//! * `oom` must be a word of the message (or part of `oomkilled`), so that "no room left" or
//!   "boom" are not read as out-of-memory kills; every row of the reference tables still maps
//!   the same.
//! * When the condition text matches no rule (reason `Unknown`) but the failed TaskRun says
//!   more, the TaskRun decides: a step terminated with reason `OOMKilled` gives `OOMKilled`, any
//!   other non-zero step exit code gives `TaskFailed`. The reference stops at `Unknown` there
//!   although it has the exit code in hand.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wfe_api::{ExecutionStatusSummary, FailureReason};
use wfe_executor::{Failure, Observation};

use crate::types::{ChildStatusReference, Outcome, PipelineRun, TaskRun};

/// Summary reason while Tekton has not written a `Succeeded` condition yet.
pub const REASON_PENDING: &str = "Pending";
/// Summary message while Tekton has not written a `Succeeded` condition yet.
pub const MESSAGE_PENDING: &str = "Pipeline created, waiting for Tekton to start execution";

/// The `Succeeded=False` reasons with which Tekton refuses a PipelineRun before it creates any
/// TaskRun: the Pipeline (or a Task) could not be resolved or failed validation against the run.
pub const PRE_EXECUTION_REASONS: [&str; 19] = [
    "CouldntGetPipeline",
    "CouldntGetTask",
    "PipelineValidationFailed",
    "InvalidPipelineResourceBindings",
    "InvalidWorkspaceBindings",
    "InvalidTaskRunSpecs",
    "ParameterTypeMismatch",
    "ObjectParameterMissKeys",
    "ParamArrayIndexingInvalid",
    "ParameterMissing",
    "PipelineInvalidGraph",
    "InvalidMatrixParameterTypes",
    "InvalidTaskResultReference",
    "InvalidPipelineResultReference",
    "RequiredWorkspaceMarkedOptional",
    "ResourceVerificationFailed",
    "CELEvaluationFailed",
    "InvalidParamValue",
    "CouldntGetPipelineResult",
];

/// Whether `reason` is one of [`PRE_EXECUTION_REASONS`].
pub fn is_pre_execution_reason(reason: &str) -> bool {
    PRE_EXECUTION_REASONS.contains(&reason)
}

/// Classifies the `Succeeded=False` condition of a PipelineRun (reference-behaviour.md §5.2).
///
/// | # | test (case-insensitive) | result |
/// |---|---|---|
/// | 1 | message contains `oomkilled`, or the word `oom` | `OOMKilled` |
/// | 2 | reason contains `timeout`, or message contains `timeout` or `deadline` | `DeadlineExceeded` |
/// | 3 | message contains `forbidden`, `rbac` or `permission denied` | `Forbidden` |
/// | 4 | message contains `quota` or `resource exhausted` | `ResourceExhausted` |
/// | 5 | message contains `imagepullbackoff` or `image pull` | `ImagePullBackOff` |
/// | 6 | message contains `invalid` or `configuration` | `ConfigurationError` |
/// | 7 | reason contains `taskfailed`, or message contains `task` and `failed` | `TaskFailed` |
/// | — | otherwise | `Unknown` |
pub fn classify_failure_reason(reason: &str, message: &str) -> FailureReason {
    let reason = reason.to_lowercase();
    let message = message.to_lowercase();
    let msg_any = |needles: &[&str]| needles.iter().any(|n| message.contains(n));
    let oom_word = message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == "oom");
    if message.contains("oomkilled") || oom_word {
        FailureReason::OomKilled
    } else if reason.contains("timeout") || msg_any(&["timeout", "deadline"]) {
        FailureReason::DeadlineExceeded
    } else if msg_any(&["forbidden", "rbac", "permission denied"]) {
        FailureReason::Forbidden
    } else if msg_any(&["quota", "resource exhausted"]) {
        FailureReason::ResourceExhausted
    } else if msg_any(&["imagepullbackoff", "image pull"]) {
        FailureReason::ImagePullBackOff
    } else if msg_any(&["invalid", "configuration"]) {
        FailureReason::ConfigurationError
    } else if reason.contains("taskfailed")
        || (message.contains("task") && message.contains("failed"))
    {
        FailureReason::TaskFailed
    } else {
        FailureReason::Unknown
    }
}

/// Whether a failed PipelineRun counts as an execution failure, i.e. the workflow ran and may have
/// changed the cluster (reference-behaviour.md §5.3):
///
/// 1. the PipelineRun started (`status.startTime` set): `false` for `ImagePullBackOff`,
///    `ConfigurationError` and `ResourceExhausted`, else `true`;
/// 2. it has child references: `true`;
/// 3. `OOMKilled`, `DeadlineExceeded`, `Forbidden` and `TaskFailed`: `true`;
/// 4. otherwise `false`.
pub fn was_execution_failure(started: bool, has_children: bool, reason: FailureReason) -> bool {
    if started {
        !matches!(
            reason,
            FailureReason::ImagePullBackOff
                | FailureReason::ConfigurationError
                | FailureReason::ResourceExhausted
        )
    } else if has_children {
        true
    } else {
        matches!(
            reason,
            FailureReason::OomKilled
                | FailureReason::DeadlineExceeded
                | FailureReason::Forbidden
                | FailureReason::TaskFailed
        )
    }
}

/// The failed TaskRun of a PipelineRun.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedTaskRun {
    /// TaskRun name.
    pub name: String,
    /// Index among all child references of the PipelineRun.
    pub index: i32,
    /// Exit code of the first step that terminated non-zero.
    pub exit_code: Option<i32>,
    /// Name of that step.
    pub step_name: Option<String>,
    /// Container runtime reason of that step (`Error`, `OOMKilled`).
    pub step_reason: Option<String>,
    /// Message of the TaskRun's `Succeeded` condition.
    pub message: Option<String>,
}

/// The first child TaskRun with `Succeeded=False`, in child-reference order. `task_runs` holds the
/// TaskRuns that could be read, by name; children that are not TaskRuns or could not be read are
/// skipped, but still count for the index.
pub fn find_failed_task_run(
    children: &[ChildStatusReference],
    task_runs: &BTreeMap<String, TaskRun>,
) -> Option<FailedTaskRun> {
    children.iter().enumerate().find_map(|(i, child)| {
        if !child.is_task_run() {
            return None;
        }
        let tr = task_runs.get(&child.name)?;
        let cond = tr.succeeded()?;
        if cond.outcome() != Outcome::Failed {
            return None;
        }
        let step = tr.failed_step();
        Some(FailedTaskRun {
            name: child.name.clone(),
            index: i32::try_from(i).unwrap_or(i32::MAX),
            exit_code: step
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            step_name: step.map(|s| s.name.clone()).filter(|n| !n.is_empty()),
            step_reason: step
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.reason.clone())
                .filter(|r| !r.is_empty()),
            message: cond.message.clone().filter(|m| !m.trim().is_empty()),
        })
    })
}

/// The progress summary of a PipelineRun: the `Succeeded` condition's status, reason and
/// message; `totalTasks` = TaskRun children, `completedTasks` = those that succeeded.
pub fn summarize(
    pr: &PipelineRun,
    task_runs: &BTreeMap<String, TaskRun>,
) -> ExecutionStatusSummary {
    let children = pr
        .status
        .as_ref()
        .map(|s| s.child_references.as_slice())
        .unwrap_or_default();
    let task_children = children.iter().filter(|c| c.is_task_run());
    let total = task_children.clone().count();
    let completed = task_children
        .filter(|c| {
            task_runs
                .get(&c.name)
                .and_then(TaskRun::succeeded)
                .is_some_and(|cond| cond.outcome() == Outcome::Succeeded)
        })
        .count();
    let non_empty = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let (status, reason, message) = match pr.succeeded() {
        None => (
            "Unknown".to_string(),
            Some(REASON_PENDING.to_string()),
            Some(MESSAGE_PENDING.to_string()),
        ),
        Some(c) => {
            let status = match c.outcome() {
                Outcome::Succeeded => "True",
                Outcome::Failed => "False",
                Outcome::Running => "Unknown",
            };
            let reason = non_empty(&c.reason);
            let message = non_empty(&c.message).or_else(|| match c.outcome() {
                Outcome::Running => Some(format!(
                    "Pipeline executing ({})",
                    reason.as_deref().unwrap_or("Running")
                )),
                _ => None,
            });
            (status.to_string(), reason, message)
        }
    };
    ExecutionStatusSummary {
        status,
        reason,
        message,
        completed_tasks: i32::try_from(completed).unwrap_or(i32::MAX),
        total_tasks: i32::try_from(total).unwrap_or(i32::MAX),
        retry_count: 0,
    }
}

/// The classified failure of a PipelineRun whose `Succeeded` condition is `False`.
pub fn failure(pr: &PipelineRun, task_runs: &BTreeMap<String, TaskRun>) -> Failure {
    let status = pr.status.as_ref();
    let cond = pr.succeeded();
    let reason_text = cond.and_then(|c| c.reason.as_deref()).unwrap_or_default();
    let message_text = cond
        .and_then(|c| c.message.as_deref())
        .map(str::trim)
        .unwrap_or_default();
    let children = status
        .map(|s| s.child_references.as_slice())
        .unwrap_or_default();
    let failed = find_failed_task_run(children, task_runs);

    let mut reason = classify_failure_reason(reason_text, message_text);
    let oom_step = failed.as_ref().is_some_and(|f| {
        f.step_reason
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case("OOMKilled"))
    });
    if children.is_empty() && is_pre_execution_reason(reason_text) {
        reason = FailureReason::ConfigurationError;
    } else if oom_step && matches!(reason, FailureReason::Unknown | FailureReason::TaskFailed) {
        reason = FailureReason::OomKilled;
    } else if reason == FailureReason::Unknown
        && failed
            .as_ref()
            .is_some_and(|f| f.exit_code.is_some_and(|c| c != 0))
    {
        reason = FailureReason::TaskFailed;
    }

    let mut message = if !message_text.is_empty() {
        message_text.to_string()
    } else if !reason_text.is_empty() {
        format!("PipelineRun failed with reason {reason_text}")
    } else {
        "PipelineRun failed without a message".to_string()
    };
    if let Some(f) = &failed {
        let mut detail = format!("failed TaskRun {:?}", f.name);
        match (&f.step_name, f.exit_code) {
            (Some(step), Some(code)) => {
                detail.push_str(&format!(" (step {step:?}, exit code {code})"))
            }
            (None, Some(code)) => detail.push_str(&format!(" (exit code {code})")),
            _ => {}
        }
        if let Some(m) = f.message.as_deref().map(str::trim)
            && !message.contains(m)
        {
            detail.push_str(": ");
            detail.push_str(m);
        }
        message.push_str("; ");
        message.push_str(&detail);
    }

    let started = status.is_some_and(|s| s.start_time.is_some());
    Failure {
        reason,
        message,
        exit_code: failed.as_ref().and_then(|f| f.exit_code),
        failed_task_name: failed.as_ref().map(|f| f.name.clone()),
        failed_task_index: failed.as_ref().map(|f| f.index),
        failed_step_name: failed.as_ref().and_then(|f| f.step_name.clone()),
        was_execution_failure: was_execution_failure(started, !children.is_empty(), reason),
    }
}

/// Maps a PipelineRun and the child TaskRuns that could be read to an [`Observation`]:
/// `Succeeded` True → Succeeded, False → Failed (classified), Unknown or absent → Running.
pub fn observe(pr: &PipelineRun, task_runs: &BTreeMap<String, TaskRun>) -> Observation {
    let summary = summarize(pr, task_runs);
    let finished_at: Option<Time> = pr.status.as_ref().and_then(|s| s.completion_time.clone());
    match pr.succeeded().map(|c| c.outcome()) {
        Some(Outcome::Succeeded) => Observation::Succeeded {
            summary,
            finished_at,
        },
        Some(Outcome::Failed) => Observation::Failed {
            summary,
            failure: failure(pr, task_runs),
            finished_at,
        },
        Some(Outcome::Running) | None => Observation::Running { summary },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{
        PipelineRunSpec, PipelineRunStatus, StepState, StepTerminated, TaskRunSpec, TaskRunStatus,
        TektonCondition,
    };
    use FailureReason::*;

    /// reference-behaviour.md §5.2, unit table "failure reason mapping from Tekton condition": all
    /// 18 rows, exactly.
    #[test]
    fn reason_mapping_unit_table() {
        let table: [(&str, &str, FailureReason); 18] = [
            ("Failed", "Container killed: OOMKilled", OomKilled),
            ("Failed", "task failed due to oom", OomKilled),
            ("Failed", "Exit code 137 - OOMkilled by kernel", OomKilled),
            ("PipelineRunTimeout", "Pipeline timed out", DeadlineExceeded),
            ("Failed", "Task timeout exceeded", DeadlineExceeded),
            ("Failed", "deadline exceeded for task", DeadlineExceeded),
            ("Failed", "RBAC: forbidden to create pods", Forbidden),
            ("Failed", "rbac error occurred", Forbidden),
            ("Failed", "permission denied for resource", Forbidden),
            ("Failed", "exceeded quota for namespace", ResourceExhausted),
            ("Failed", "resource exhausted in cluster", ResourceExhausted),
            (
                "Failed",
                "ImagePullBackOff: image not found",
                ImagePullBackOff,
            ),
            (
                "Failed",
                "failed to image pull from registry",
                ImagePullBackOff,
            ),
            ("Failed", "invalid parameter value", ConfigurationError),
            (
                "Failed",
                "configuration error in pipeline",
                ConfigurationError,
            ),
            ("Failed", "Some unknown error occurred", Unknown),
            ("Failed", "", Unknown),
            ("TaskRunFailed", "Task exited with code 1", Unknown),
        ];
        for (reason, message, expected) in table {
            assert_eq!(
                classify_failure_reason(reason, message),
                expected,
                "({reason:?}, {message:?})"
            );
        }
    }

    #[test]
    fn reason_rules_are_ordered_and_case_insensitive() {
        // Rule 1 wins over rule 2, 2 over 3, ...
        assert_eq!(
            classify_failure_reason("PipelineRunTimeout", "OOM after timeout"),
            OomKilled
        );
        assert_eq!(
            classify_failure_reason("Failed", "DEADLINE: forbidden"),
            DeadlineExceeded
        );
        assert_eq!(
            classify_failure_reason("Failed", "Forbidden: exceeded quota"),
            Forbidden
        );
        assert_eq!(
            classify_failure_reason("Failed", "quota: image pull"),
            ResourceExhausted
        );
        assert_eq!(
            classify_failure_reason("Failed", "Image Pull: invalid"),
            ImagePullBackOff
        );
        assert_eq!(
            classify_failure_reason("Failed", "INVALID task failed"),
            ConfigurationError
        );
        assert_eq!(classify_failure_reason("TASKFAILED", "crash"), TaskFailed);
        assert_eq!(
            classify_failure_reason(
                "Failed",
                "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0"
            ),
            TaskFailed
        );
        assert_eq!(classify_failure_reason("", ""), Unknown);
        // The reason only matters for rules 2 and 7.
        assert_eq!(classify_failure_reason("OOMKilled", "crash"), Unknown);
        // `oom` is a word, not any substring.
        assert_eq!(classify_failure_reason("Failed", "killed: OOM"), OomKilled);
        assert_eq!(
            classify_failure_reason("Failed", "pod OOMKilled (exit 137)"),
            OomKilled
        );
        assert_eq!(
            classify_failure_reason("Failed", "boom: no room left on device"),
            Unknown
        );
    }

    /// reference-behaviour.md §5.3 decision rules.
    #[test]
    fn was_execution_failure_rules() {
        let all = [
            OomKilled,
            DeadlineExceeded,
            Forbidden,
            ResourceExhausted,
            ConfigurationError,
            ImagePullBackOff,
            TaskFailed,
            Unknown,
        ];
        for r in all {
            let pre_execution =
                matches!(r, ImagePullBackOff | ConfigurationError | ResourceExhausted);
            assert_eq!(
                was_execution_failure(true, false, r),
                !pre_execution,
                "started {r}"
            );
            assert_eq!(
                was_execution_failure(true, true, r),
                !pre_execution,
                "started+children {r}"
            );
            assert!(was_execution_failure(false, true, r), "children {r}");
            let ran = matches!(r, OomKilled | DeadlineExceeded | Forbidden | TaskFailed);
            assert_eq!(was_execution_failure(false, false, r), ran, "neither {r}");
        }
    }

    fn condition(status: &str, reason: &str, message: &str) -> TektonCondition {
        TektonCondition {
            type_: "Succeeded".into(),
            status: status.into(),
            reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
            message: Some(message.into()).filter(|m: &String| !m.is_empty()),
            ..Default::default()
        }
    }

    fn time(s: &str) -> Time {
        serde_json::from_value(serde_json::json!(s)).expect("valid time")
    }

    fn pipeline_run(
        cond: Option<TektonCondition>,
        started: bool,
        children: &[(&str, &str)],
    ) -> PipelineRun {
        let mut pr = PipelineRun::new("wfe-0123456789abcdef", PipelineRunSpec::default());
        pr.status = Some(PipelineRunStatus {
            conditions: cond.into_iter().collect(),
            start_time: started.then(|| time("2026-01-01T00:00:00Z")),
            completion_time: None,
            child_references: children
                .iter()
                .map(|(kind, name)| ChildStatusReference {
                    api_version: Some("tekton.dev/v1".into()),
                    kind: Some((*kind).into()),
                    name: (*name).into(),
                    pipeline_task_name: Some(format!("{name}-task")),
                    display_name: None,
                })
                .collect(),
        });
        pr
    }

    fn task_run(
        name: &str,
        status: &str,
        message: &str,
        steps: &[(&str, Option<i32>, &str)],
    ) -> TaskRun {
        let mut tr = TaskRun::new(name, TaskRunSpec::default());
        tr.status = Some(TaskRunStatus {
            conditions: vec![condition(
                status,
                if status == "False" {
                    "Failed"
                } else {
                    "Succeeded"
                },
                message,
            )],
            steps: steps
                .iter()
                .map(|(step, code, reason)| StepState {
                    name: (*step).into(),
                    container: Some(format!("step-{step}")),
                    terminated: code.map(|exit_code| StepTerminated {
                        exit_code,
                        reason: Some((*reason).into()),
                        ..Default::default()
                    }),
                    termination_reason: None,
                })
                .collect(),
            ..Default::default()
        });
        tr
    }

    fn runs(trs: Vec<TaskRun>) -> BTreeMap<String, TaskRun> {
        trs.into_iter()
            .map(|t| (t.metadata.name.clone().unwrap_or_default(), t))
            .collect()
    }

    /// reference-behaviour.md §5.3 integration table (PipelineRun status patched; "started" means
    /// `status.startTime` set; no child TaskRuns): all 8 rows.
    #[test]
    fn failure_classification_integration_table() {
        let table: [(&str, &str, bool, FailureReason, bool); 8] = [
            (
                "TaskRunFailed",
                "task failed with exit code 1",
                true,
                TaskFailed,
                true,
            ),
            (
                "TaskRunFailed",
                "task failed: OOMKilled",
                true,
                OomKilled,
                true,
            ),
            (
                "PipelineRunTimeout",
                "PipelineRun exceeded timeout of 10 minutes",
                true,
                DeadlineExceeded,
                true,
            ),
            (
                "TaskRunFailed",
                "task failed: pods is forbidden: User cannot create resource",
                true,
                Forbidden,
                true,
            ),
            (
                "TaskRunCreationFailed",
                "exceeded quota: compute resources",
                false,
                ResourceExhausted,
                false,
            ),
            (
                "TaskRunValidationFailed",
                "invalid configuration: missing required parameter",
                false,
                ConfigurationError,
                false,
            ),
            (
                "TaskRunImagePullFailed",
                "Failed to pull image: image pull backoff",
                false,
                ImagePullBackOff,
                false,
            ),
            (
                "PipelineRunFailed",
                "unexpected error occurred",
                false,
                Unknown,
                false,
            ),
        ];
        for (reason, message, started, expected, execution) in table {
            let pr = pipeline_run(Some(condition("False", reason, message)), started, &[]);
            let Observation::Failed {
                failure, summary, ..
            } = observe(&pr, &BTreeMap::new())
            else {
                panic!("({reason:?}, {message:?}) must be Failed");
            };
            assert_eq!(failure.reason, expected, "({reason:?}, {message:?})");
            assert_eq!(
                failure.was_execution_failure, execution,
                "({reason:?}, {message:?})"
            );
            assert_eq!(failure.message, message);
            assert_eq!(failure.failed_task_name, None);
            assert_eq!(summary.status, "False");
            assert_eq!(summary.reason.as_deref(), Some(reason));
        }
    }

    #[test]
    fn succeeded_running_and_pending() {
        let mut pr = pipeline_run(
            Some(condition(
                "True",
                "Succeeded",
                "Tasks Completed: 2 (Failed: 0, Cancelled 0), Skipped: 0",
            )),
            true,
            &[("TaskRun", "a"), ("TaskRun", "b")],
        );
        if let Some(s) = pr.status.as_mut() {
            s.completion_time = Some(time("2026-01-01T00:05:00Z"));
        }
        let trs = runs(vec![
            task_run("a", "True", "All Steps have completed executing", &[]),
            task_run("b", "True", "", &[]),
        ]);
        match observe(&pr, &trs) {
            Observation::Succeeded {
                summary,
                finished_at,
            } => {
                assert_eq!(summary.status, "True");
                assert_eq!(summary.reason.as_deref(), Some("Succeeded"));
                assert_eq!((summary.completed_tasks, summary.total_tasks), (2, 2));
                assert_eq!(finished_at, Some(time("2026-01-01T00:05:00Z")));
            }
            other => panic!("expected Succeeded, got {other:?}"),
        }

        let pr = pipeline_run(
            Some(condition(
                "Unknown",
                "Running",
                "Tasks Completed: 1 (Failed: 0, Cancelled 0), Incomplete: 1, Skipped: 0",
            )),
            true,
            &[("TaskRun", "a"), ("TaskRun", "b")],
        );
        let trs = runs(vec![
            task_run("a", "True", "", &[]),
            task_run("b", "Unknown", "", &[]),
        ]);
        match observe(&pr, &trs) {
            Observation::Running { summary } => {
                assert_eq!(summary.status, "Unknown");
                assert_eq!(summary.reason.as_deref(), Some("Running"));
                assert_eq!((summary.completed_tasks, summary.total_tasks), (1, 2));
            }
            other => panic!("expected Running, got {other:?}"),
        }

        // Unknown without a message.
        let pr = pipeline_run(Some(condition("Unknown", "Started", "")), false, &[]);
        let Observation::Running { summary } = observe(&pr, &BTreeMap::new()) else {
            panic!("running")
        };
        assert_eq!(
            summary.message.as_deref(),
            Some("Pipeline executing (Started)")
        );

        // No condition at all, and no status at all.
        let pr = pipeline_run(None, false, &[]);
        let Observation::Running { summary } = observe(&pr, &BTreeMap::new()) else {
            panic!("running")
        };
        assert_eq!(summary.status, "Unknown");
        assert_eq!(summary.reason.as_deref(), Some(REASON_PENDING));
        assert_eq!(summary.message.as_deref(), Some(MESSAGE_PENDING));
        assert_eq!((summary.completed_tasks, summary.total_tasks), (0, 0));
        let pr = PipelineRun::new("x", PipelineRunSpec::default());
        assert!(matches!(
            observe(&pr, &BTreeMap::new()),
            Observation::Running { .. }
        ));
    }

    #[test]
    fn failed_task_run_details() {
        let pr = pipeline_run(
            Some(condition(
                "False",
                "Failed",
                "Tasks Completed: 3 (Failed: 1, Cancelled 0), Skipped: 0",
            )),
            true,
            &[
                ("TaskRun", "ok"),
                ("CustomRun", "approval"),
                ("TaskRun", "missing"),
                ("TaskRun", "bad"),
                ("TaskRun", "bad-too"),
            ],
        );
        let trs = runs(vec![
            task_run("ok", "True", "", &[("a", Some(0), "Completed")]),
            task_run(
                "bad",
                "False",
                "\"step-apply\" exited with code 2",
                &[
                    ("prepare", Some(0), "Completed"),
                    ("apply", Some(2), "Error"),
                    ("cleanup", Some(1), "Error"),
                ],
            ),
            task_run("bad-too", "False", "", &[("x", Some(3), "Error")]),
        ]);
        let Observation::Failed {
            failure, summary, ..
        } = observe(&pr, &trs)
        else {
            panic!("failed")
        };
        assert_eq!(failure.reason, TaskFailed);
        assert_eq!(failure.failed_task_name.as_deref(), Some("bad"));
        // Index among all child references, including the CustomRun and the unreadable TaskRun.
        assert_eq!(failure.failed_task_index, Some(3));
        assert_eq!(failure.exit_code, Some(2));
        assert_eq!(failure.failed_step_name.as_deref(), Some("apply"));
        assert!(failure.was_execution_failure);
        assert!(
            failure.message.starts_with("Tasks Completed: 3 (Failed: 1"),
            "{}",
            failure.message
        );
        assert!(failure.message.contains("failed TaskRun \"bad\" (step \"apply\", exit code 2): \"step-apply\" exited with code 2"), "{}", failure.message);
        // CustomRuns are not tasks; the unreadable TaskRun counts as not completed.
        assert_eq!((summary.completed_tasks, summary.total_tasks), (1, 4));
    }

    #[test]
    fn failed_task_run_refines_an_unknown_reason() {
        let children = [("TaskRun", "t")];
        // A non-zero exit code turns Unknown into TaskFailed.
        let pr = pipeline_run(
            Some(condition(
                "False",
                "PipelineRunFailed",
                "unexpected error occurred",
            )),
            false,
            &children,
        );
        let trs = runs(vec![task_run("t", "False", "", &[("s", Some(1), "Error")])]);
        let Observation::Failed { failure, .. } = observe(&pr, &trs) else {
            panic!("failed")
        };
        assert_eq!(failure.reason, TaskFailed);
        assert!(failure.was_execution_failure, "children exist");
        // A step killed for memory turns it into OOMKilled.
        let trs = runs(vec![task_run(
            "t",
            "False",
            "",
            &[("s", Some(137), "OOMKilled")],
        )]);
        let Observation::Failed { failure, .. } = observe(&pr, &trs) else {
            panic!("failed")
        };
        assert_eq!(failure.reason, OomKilled);
        assert_eq!(failure.exit_code, Some(137));
        // A classified reason is never overridden.
        let pr = pipeline_run(
            Some(condition("False", "Failed", "exceeded quota")),
            false,
            &children,
        );
        let Observation::Failed { failure, .. } = observe(&pr, &trs) else {
            panic!("failed")
        };
        assert_eq!(failure.reason, ResourceExhausted);
        // Without a failed TaskRun, Unknown stays Unknown and the message is never empty.
        let pr = pipeline_run(Some(condition("False", "", "")), false, &[]);
        let Observation::Failed { failure, .. } = observe(&pr, &BTreeMap::new()) else {
            panic!("failed")
        };
        assert_eq!(failure.reason, Unknown);
        assert!(!failure.was_execution_failure);
        assert_eq!(failure.message, "PipelineRun failed without a message");
        let pr = pipeline_run(Some(condition("False", "Cancelled", "")), false, &[]);
        let Observation::Failed { failure, .. } = observe(&pr, &BTreeMap::new()) else {
            panic!("failed")
        };
        assert_eq!(failure.message, "PipelineRun failed with reason Cancelled");
    }

    /// What the real Tekton controller writes when a step is OOMKilled: the PipelineRun's message
    /// reads as a task failure, only the TaskRun's step says why.
    #[test]
    fn oom_killed_step_beats_the_generic_task_failure_message() {
        let pr = pipeline_run(
            Some(condition(
                "False",
                "Failed",
                "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0",
            )),
            true,
            &[("TaskRun", "t")],
        );
        let trs = runs(vec![task_run(
            "t",
            "False",
            "\"step-apply\" exited with code 137: OOMKilled",
            &[
                ("inspect", Some(0), "Completed"),
                ("apply", Some(137), "OOMKilled"),
            ],
        )]);
        let Observation::Failed { failure, .. } = observe(&pr, &trs) else {
            panic!("failed")
        };
        assert_eq!(failure.reason, OomKilled);
        assert_eq!(failure.failed_step_name.as_deref(), Some("apply"));
        assert!(failure.was_execution_failure);
        // A timed-out run stays a timeout even if a step was killed for memory on the way.
        let pr = pipeline_run(
            Some(condition(
                "False",
                "PipelineRunTimeout",
                "PipelineRun \"x\" failed to finish within \"5s\"",
            )),
            true,
            &[("TaskRun", "t")],
        );
        let Observation::Failed { failure, .. } = observe(&pr, &trs) else {
            panic!("failed")
        };
        assert_eq!(failure.reason, DeadlineExceeded);
    }

    /// What the real Tekton controller writes when the bundle cannot be resolved or the run does
    /// not fit the Pipeline: no child, `startTime` set, a reason of its own.
    #[test]
    fn refused_before_any_task_is_a_configuration_error_that_did_not_execute() {
        for (reason, message) in [
            (
                "CouldntGetPipeline",
                "Error retrieving pipeline for pipelinerun ns/x: resolution failed: cannot retrieve the oci image: Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: i/o timeout",
            ),
            (
                "CouldntGetPipeline",
                "Error retrieving pipeline: could not find object in image with kind: pipeline and name: workflow",
            ),
            (
                "ParameterMissing",
                "PipelineRun ns/x is missing some parameters required by Pipeline x: [REQUIRED_SETTING]",
            ),
            ("PipelineValidationFailed", "task failed validation"),
        ] {
            let pr = pipeline_run(Some(condition("False", reason, message)), true, &[]);
            let Observation::Failed { failure, .. } = observe(&pr, &BTreeMap::new()) else {
                panic!("failed")
            };
            assert_eq!(failure.reason, ConfigurationError, "{reason}: {message}");
            assert!(!failure.was_execution_failure, "{reason}");
            assert_eq!(failure.message, message);
        }
        // With children, tasks ran: the reason is read from the text as before.
        let pr = pipeline_run(
            Some(condition(
                "False",
                "CouldntGetPipelineResult",
                "task failed",
            )),
            true,
            &[("TaskRun", "t")],
        );
        let Observation::Failed { failure, .. } = observe(&pr, &BTreeMap::new()) else {
            panic!("failed")
        };
        assert_eq!(failure.reason, TaskFailed);
    }

    #[test]
    fn failed_task_without_failed_step() {
        let pr = pipeline_run(
            Some(condition(
                "False",
                "Failed",
                "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0",
            )),
            true,
            &[("TaskRun", "t")],
        );
        let trs = runs(vec![task_run(
            "t",
            "False",
            "TaskRun \"t\" failed to finish within \"1m0s\"",
            &[("s", None, "")],
        )]);
        let Observation::Failed { failure, .. } = observe(&pr, &trs) else {
            panic!("failed")
        };
        assert_eq!(failure.failed_task_name.as_deref(), Some("t"));
        assert_eq!(failure.failed_task_index, Some(0));
        assert_eq!(failure.exit_code, None);
        assert_eq!(failure.failed_step_name, None);
        assert!(
            failure.message.ends_with(
                "; failed TaskRun \"t\": TaskRun \"t\" failed to finish within \"1m0s\""
            ),
            "{}",
            failure.message
        );
    }
}
