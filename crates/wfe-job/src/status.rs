//! Mapping a Job (and its pod and events) to an [`Observation`], and classifying failures
//! (DESIGN.md §4). Pure functions: the executor gathers the inputs.

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition},
        core::v1::{ContainerStatus, Event, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use wfe_api::{ExecutionStatusSummary, FailureReason};
use wfe_executor::{Failure, Observation};

use crate::build::CONTAINER_NAME;

/// Longest failure message kept (the tail is what matters).
pub const MAX_MESSAGE: usize = 2048;

/// Everything known about one Job.
#[derive(Debug, Clone, Copy)]
pub struct JobFacts<'a> {
    /// The Job.
    pub job: &'a Job,
    /// Its newest pod, if it was read.
    pub pod: Option<&'a Pod>,
    /// How many pods the Job created (when read).
    pub pods_seen: usize,
    /// Events about the pod, any order.
    pub pod_events: &'a [Event],
    /// Events about the Job, any order.
    pub job_events: &'a [Event],
    /// The current time.
    pub now: Timestamp,
    /// How long a pod may sit in a permanent "cannot start" state before the execution is failed
    /// without waiting for the deadline.
    pub stuck_grace: std::time::Duration,
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// True when the Job has a `Complete` or `Failed` condition.
pub fn is_finished(job: &Job) -> bool {
    condition(job, "Complete").is_some() || condition(job, "Failed").is_some()
}

/// True when the Job was suspended (the executor suspends a Job whose execution it failed early).
pub fn is_suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// What the executor must read besides the Job to classify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The Job's pods.
    pub pods: bool,
    /// Events of the Job (pod creation failures).
    pub job_events: bool,
}

/// Decides which extra reads are worth their cost: none for a healthy Job, the pod (and its
/// events) for a failed Job or a pod that is not ready, the Job's events when no pod exists.
pub fn needs(job: &Job) -> Needs {
    let status = job.status.clone().unwrap_or_default();
    if condition(job, "Complete").is_some() {
        return Needs {
            pods: false,
            job_events: false,
        };
    }
    if condition(job, "Failed").is_some() {
        let no_pods =
            status.active.unwrap_or(0) + status.failed.unwrap_or(0) + status.succeeded.unwrap_or(0)
                == 0;
        return Needs {
            pods: true,
            job_events: no_pods,
        };
    }
    let active = status.active.unwrap_or(0);
    let ready = status.ready.unwrap_or(0);
    Needs {
        pods: active > 0 && ready == 0,
        job_events: active == 0 && status.failed.unwrap_or(0) == 0,
    }
}

fn workflow_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER_NAME)
}

/// True when the workflow container started at some point.
pub fn container_started(pod: Option<&Pod>) -> bool {
    let Some(cs) = pod.and_then(workflow_status) else {
        return false;
    };
    let state = cs.state.as_ref();
    cs.started == Some(true)
        || state.is_some_and(|s| {
            s.running.is_some()
                || s.terminated
                    .as_ref()
                    .is_some_and(|t| t.started_at.is_some())
        })
        || cs
            .last_state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some())
}

/// Keeps at most `max` bytes, preferring the end of the text (where errors usually are).
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

fn newest(events: &[Event], pred: impl Fn(&Event) -> bool) -> Option<&Event> {
    events.iter().filter(|e| pred(e)).max_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .unwrap_or(Timestamp::UNIX_EPOCH)
    })
}

/// What the Job watch cache keeps of a Job: its pod template is dropped on arrival (the mapping
/// reads the Job's metadata, status, `suspend` and `activeDeadlineSeconds`, and the pod itself
/// for the container's state); a template with the workflow's environment and security context
/// is most of a Job.
pub fn trim(job: &mut Job) {
    if let Some(spec) = job.spec.as_mut() {
        spec.template = Default::default();
    }
}

fn is_image_pull(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("pull image")
        || t.contains("errimagepull")
        || t.contains("imagepullbackoff")
        || t.contains("image pull")
}

fn is_missing_dependency(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("not found")
        && (t.contains("secret") || t.contains("configmap") || t.contains("config map"))
}

/// A cause that shows the workflow never started (image, configuration, pod creation).
fn not_started_cause(facts: &JobFacts<'_>) -> Option<Failure> {
    if let Some(cs) = facts.pod.and_then(workflow_status)
        && let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref())
    {
        let reason = w.reason.as_deref().unwrap_or_default();
        let message = w.message.as_deref().unwrap_or_default();
        match reason {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                let text = format!(
                    "image {:?} could not be pulled: {reason}: {message}",
                    cs.image
                );
                return Some(Failure::new(
                    FailureReason::ImagePullBackOff,
                    tail(&text, MAX_MESSAGE),
                    false,
                ));
            }
            "CreateContainerConfigError" | "CreateContainerError" => {
                let text =
                    format!("the workflow container could not be created: {reason}: {message}");
                return Some(Failure::new(
                    FailureReason::ConfigurationError,
                    tail(&text, MAX_MESSAGE),
                    false,
                ));
            }
            _ => {}
        }
    }
    if !container_started(facts.pod) {
        if let Some(e) = newest(facts.pod_events, |e| {
            let m = e.message.as_deref().unwrap_or_default();
            matches!(
                e.reason.as_deref(),
                Some("FailedMount" | "CreateContainerConfigError")
            ) || (e.reason.as_deref() == Some("Failed") && is_missing_dependency(m))
        }) {
            let text = format!(
                "the workflow pod could not start: {}",
                e.message.as_deref().unwrap_or_default()
            );
            return Some(Failure::new(
                FailureReason::ConfigurationError,
                tail(&text, MAX_MESSAGE),
                false,
            ));
        }
        if let Some(e) = newest(facts.pod_events, |e| {
            matches!(e.reason.as_deref(), Some("Failed" | "BackOff"))
                && is_image_pull(e.message.as_deref().unwrap_or_default())
        }) {
            let text = format!(
                "the workflow image could not be pulled: {}",
                e.message.as_deref().unwrap_or_default()
            );
            return Some(Failure::new(
                FailureReason::ImagePullBackOff,
                tail(&text, MAX_MESSAGE),
                false,
            ));
        }
    }
    if facts.pod.is_none()
        && let Some(e) = newest(facts.job_events, |e| {
            e.reason.as_deref() == Some("FailedCreate")
        })
    {
        let message = e.message.as_deref().unwrap_or_default();
        let lower = message.to_ascii_lowercase();
        let reason = if lower.contains("exceeded quota") {
            FailureReason::ResourceExhausted
        } else if lower.contains("serviceaccount")
            || lower.contains("service account")
            || is_missing_dependency(message)
        {
            FailureReason::ConfigurationError
        } else if lower.contains("forbidden") {
            FailureReason::Forbidden
        } else {
            FailureReason::ConfigurationError
        };
        let text = format!("the workflow pod could not be created: {message}");
        return Some(Failure::new(reason, tail(&text, MAX_MESSAGE), false));
    }
    None
}

/// A cause that shows the workflow ran and failed (OOM, non-zero exit).
fn execution_cause(pod: Option<&Pod>) -> Option<Failure> {
    let cs = pod.and_then(workflow_status)?;
    let t = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or(cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
    let reason = t.reason.as_deref().unwrap_or_default();
    let termination = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    let mut failure = if reason == "OOMKilled" {
        let mut text = format!(
            "the workflow container was OOMKilled (exit code {})",
            t.exit_code
        );
        if let Some(m) = termination {
            text.push_str(": ");
            text.push_str(m);
        }
        Failure::new(FailureReason::OomKilled, tail(&text, MAX_MESSAGE), true)
    } else if t.exit_code != 0 {
        let detail = termination.map(str::to_string).unwrap_or_else(|| {
            if reason.is_empty() {
                "no termination message".into()
            } else {
                reason.to_string()
            }
        });
        let text = format!(
            "the workflow container exited with code {}: {detail}",
            t.exit_code
        );
        Failure::new(FailureReason::TaskFailed, tail(&text, MAX_MESSAGE), true)
    } else {
        return None;
    };
    failure.exit_code = Some(t.exit_code);
    failure.failed_task_name = Some(CONTAINER_NAME.to_string());
    failure.failed_task_index = Some(0);
    Some(failure)
}

/// The summary of a Job that was just created (no pod yet): what [`observe`] reports for it.
pub fn initial_summary() -> ExecutionStatusSummary {
    ExecutionStatusSummary {
        status: "Unknown".into(),
        reason: Some("Running".into()),
        message: Some(running_message(0)),
        completed_tasks: 0,
        total_tasks: 1,
        retry_count: 0,
    }
}

fn running_message(active: i32) -> String {
    format!("Job running ({active}/1 pods active)")
}

fn summary(
    facts: &JobFacts<'_>,
    status: &str,
    reason: &str,
    message: String,
) -> ExecutionStatusSummary {
    let s = facts.job.status.clone().unwrap_or_default();
    ExecutionStatusSummary {
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        completed_tasks: s.succeeded.unwrap_or(0),
        total_tasks: 1,
        retry_count: i32::try_from(facts.pods_seen.saturating_sub(1)).unwrap_or(i32::MAX),
    }
}

fn pod_age(pod: &Pod, now: Timestamp) -> std::time::Duration {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| now.duration_since(t.0).try_into().ok())
        .unwrap_or_default()
}

/// Maps a Job to an observation.
pub fn observe(facts: &JobFacts<'_>) -> Observation {
    let job = facts.job;
    if let Some(c) = condition(job, "Complete") {
        let finished_at = job
            .status
            .as_ref()
            .and_then(|s| s.completion_time.clone())
            .or(c.last_transition_time.clone());
        let message = c
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "Job completed".into());
        return Observation::Succeeded {
            summary: summary(facts, "True", "Complete", message),
            finished_at,
        };
    }
    if let Some(c) = condition(job, "Failed") {
        let job_reason = c.reason.clone().unwrap_or_default();
        let job_message = c.message.clone().unwrap_or_default();
        // When the deadline removed the pod before we could look, assume the workflow ran: the
        // safe assumption (it blocks the target until a person clears it).
        let deadline = job_reason == "DeadlineExceeded";
        let started = container_started(facts.pod)
            || (deadline && facts.pod.is_none() && facts.job_events.is_empty());
        let mut failure = not_started_cause(facts)
            .or_else(|| {
                deadline.then(|| {
                    let secs = job
                        .spec
                        .as_ref()
                        .and_then(|s| s.active_deadline_seconds)
                        .unwrap_or_default();
                    let text =
                        format!("the workflow exceeded its timeout of {secs}s and was stopped");
                    Failure::new(FailureReason::DeadlineExceeded, text, started)
                })
            })
            .or_else(|| execution_cause(facts.pod))
            .unwrap_or_else(|| {
                let text = if job_message.is_empty() {
                    format!("the Job failed: {job_reason}")
                } else {
                    format!("the Job failed: {job_reason}: {job_message}")
                };
                Failure::new(FailureReason::Unknown, tail(&text, MAX_MESSAGE), started)
            });
        if !job_message.is_empty() && !failure.message.contains(&job_message) {
            failure.message = tail(
                &format!(
                    "{} (Job condition {job_reason}: {job_message})",
                    failure.message
                ),
                MAX_MESSAGE,
            );
        }
        let finished_at = c.last_transition_time.clone().or(Some(Time(facts.now)));
        return Observation::Failed {
            summary: summary(facts, "False", &job_reason, failure.message.clone()),
            failure,
            finished_at,
        };
    }
    // Still running: fail early only on states that cannot resolve by themselves.
    let active = job.status.as_ref().and_then(|s| s.active).unwrap_or(0);
    let job_age: std::time::Duration = job
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| facts.now.duration_since(t.0).try_into().ok())
        .unwrap_or_default();
    let stuck = match facts.pod {
        // A pod that cannot start its container (missing object).
        Some(pod) => pod_age(pod, facts.now) >= facts.stuck_grace,
        // No pod at all: pod creation is refused (quota, service account, Pod Security).
        None => job_age >= facts.stuck_grace,
    };
    let permanent = |f: &Failure| {
        matches!(
            f.reason,
            FailureReason::ConfigurationError
                | FailureReason::ResourceExhausted
                | FailureReason::Forbidden
        )
    };
    if stuck && let Some(failure) = not_started_cause(facts).filter(permanent) {
        return Observation::Failed {
            summary: summary(facts, "False", "NotStarted", failure.message.clone()),
            failure,
            finished_at: Some(Time(facts.now)),
        };
    }
    Observation::Running {
        summary: summary(facts, "Unknown", "Running", running_message(active)),
    }
}
