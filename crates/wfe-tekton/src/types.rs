//! Typed subsets of Tekton's `tekton.dev/v1` `PipelineRun` and `TaskRun`.
//!
//! Only the fields this crate writes or reads are modelled. Every field is optional or defaulted
//! and unknown fields are ignored, so objects written by any Tekton version deserialize. The
//! types are never used to update an existing object (the operator only creates, reads and
//! deletes), so fields that are not modelled are never lost.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ConfigMapVolumeSource, PodSecurityContext, SecretVolumeSource},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The API group of Tekton Pipelines.
pub const TEKTON_GROUP: &str = "tekton.dev";
/// The only Tekton API version this crate uses.
pub const TEKTON_VERSION: &str = "v1";
/// `tekton.dev/v1`.
pub const TEKTON_API_VERSION: &str = "tekton.dev/v1";
/// The condition type Tekton uses for the outcome of a run.
pub const CONDITION_SUCCEEDED: &str = "Succeeded";

/// Spec of a `tekton.dev/v1` PipelineRun (subset).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    kind = "PipelineRun",
    plural = "pipelineruns",
    namespaced,
    status = "PipelineRunStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunSpec {
    /// The Pipeline to run, here always resolved by a remote resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_ref: Option<PipelineRef>,
    /// Parameters of the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Workspace bindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceBinding>,
    /// Settings applied to every TaskRun of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_run_template: Option<PipelineTaskRunTemplate>,
    /// Timeouts of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutFields>,
}

/// A reference to a Pipeline, possibly through a remote resolver.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRef {
    /// Name of a Pipeline in the namespace (not used with a resolver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Remote resolver (`bundles`, `git`, `cluster`, `hub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// Parameters of the resolver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

/// A named parameter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Parameter name.
    pub name: String,
    /// Parameter value.
    pub value: ParamValue,
}

impl Param {
    /// A string parameter.
    pub fn string(name: impl Into<String>, value: impl Into<String>) -> Self {
        Param {
            name: name.into(),
            value: ParamValue::String(value.into()),
        }
    }
}

/// A Tekton parameter value: a string, an array of strings or an object of strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamValue {
    /// A string (the only kind this crate writes).
    String(String),
    /// An array of strings.
    Array(Vec<String>),
    /// An object with string values.
    Object(BTreeMap<String, String>),
}

impl ParamValue {
    /// The value when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ParamValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Binds a workspace declared by the Pipeline to a volume source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceBinding {
    /// Workspace name, as declared by the Pipeline.
    pub name: String,
    /// A Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    /// A ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// Sub-path inside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// Settings applied to every TaskRun of a PipelineRun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineTaskRunTemplate {
    /// Service account of the TaskRun pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Pod template of the TaskRun pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,
}

/// Tekton's pod template (subset).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Pod-level security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

/// Timeouts of a PipelineRun, as Go duration strings (`30m0s`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutFields {
    /// Timeout of the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Timeout of the tasks (excluding `finally`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<String>,
    /// Timeout of the `finally` tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finally: Option<String>,
}

/// A Knative-style condition, as Tekton writes them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TektonCondition {
    /// Condition type (`Succeeded`).
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Severity (`Error`, `Warning`, `Info` or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// When the status last changed (kept as text: it is only informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The state of a `Succeeded` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `True`: finished successfully.
    Succeeded,
    /// `False`: finished with a failure (or was cancelled).
    Failed,
    /// `Unknown` or any other value: still running.
    Running,
}

/// Finds the `Succeeded` condition in a condition list.
pub fn succeeded_condition(conditions: &[TektonCondition]) -> Option<&TektonCondition> {
    conditions.iter().find(|c| c.type_ == CONDITION_SUCCEEDED)
}

impl TektonCondition {
    /// The outcome this condition stands for.
    pub fn outcome(&self) -> Outcome {
        if self.status.eq_ignore_ascii_case("True") {
            Outcome::Succeeded
        } else if self.status.eq_ignore_ascii_case("False") {
            Outcome::Failed
        } else {
            Outcome::Running
        }
    }
}

/// Status of a PipelineRun (subset).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunStatus {
    /// Conditions; `Succeeded` holds the outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<TektonCondition>,
    /// When Tekton started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The TaskRuns (and CustomRuns) created for the run, in creation order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub child_references: Vec<ChildStatusReference>,
}

/// A child of a PipelineRun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChildStatusReference {
    /// `tekton.dev/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `TaskRun` or `CustomRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the child object (in the PipelineRun's namespace).
    #[serde(default)]
    pub name: String,
    /// Name of the task in the Pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_task_name: Option<String>,
    /// Display name of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl ChildStatusReference {
    /// True for a TaskRun child.
    pub fn is_task_run(&self) -> bool {
        self.kind.as_deref() == Some("TaskRun")
    }
}

impl PipelineRun {
    /// The `Succeeded` condition, if Tekton wrote one.
    pub fn succeeded(&self) -> Option<&TektonCondition> {
        self.status
            .as_ref()
            .and_then(|s| succeeded_condition(&s.conditions))
    }

    /// True when the run finished (the `Succeeded` condition is `True` or `False`).
    pub fn is_finished(&self) -> bool {
        self.succeeded()
            .is_some_and(|c| c.outcome() != Outcome::Running)
    }
}

/// Spec of a `tekton.dev/v1` TaskRun (subset; the operator only reads TaskRuns).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    kind = "TaskRun",
    plural = "taskruns",
    namespaced,
    status = "TaskRunStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunSpec {
    /// The Task to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ref: Option<TaskRef>,
    /// Parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Service account of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Timeout as a Go duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A reference to a Task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRef {
    /// Task name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Task` (default) or another kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Remote resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// Parameters of the resolver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

/// Status of a TaskRun (subset).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunStatus {
    /// Conditions; `Succeeded` holds the outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<TektonCondition>,
    /// The pod that runs the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When the TaskRun started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the TaskRun finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// State of each step, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepState>,
}

/// State of one step of a TaskRun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepState {
    /// Step name.
    #[serde(default)]
    pub name: String,
    /// Container name (`step-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Set once the step's container terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<StepTerminated>,
    /// Why the step terminated (`Completed`, `Error`, `TimeoutExceeded`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<String>,
}

/// The terminated state of a step container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepTerminated {
    /// Exit code of the container.
    #[serde(default)]
    pub exit_code: i32,
    /// Container runtime reason (`Completed`, `Error`, `OOMKilled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Signal that ended the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// When the container started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the container finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

impl TaskRun {
    /// The `Succeeded` condition, if Tekton wrote one.
    pub fn succeeded(&self) -> Option<&TektonCondition> {
        self.status
            .as_ref()
            .and_then(|s| succeeded_condition(&s.conditions))
    }

    /// The first step that terminated with a non-zero exit code.
    pub fn failed_step(&self) -> Option<&StepState> {
        self.status
            .as_ref()?
            .steps
            .iter()
            .find(|s| s.terminated.as_ref().is_some_and(|t| t.exit_code != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn resource_identity() {
        assert_eq!(PipelineRun::api_version(&()), "tekton.dev/v1");
        assert_eq!(PipelineRun::kind(&()), "PipelineRun");
        assert_eq!(PipelineRun::plural(&()), "pipelineruns");
        assert_eq!(TaskRun::api_version(&()), "tekton.dev/v1");
        assert_eq!(TaskRun::kind(&()), "TaskRun");
        assert_eq!(TaskRun::plural(&()), "taskruns");
    }

    #[test]
    fn reads_a_real_pipeline_run_with_unknown_fields() {
        let json = serde_json::json!({
            "apiVersion": "tekton.dev/v1",
            "kind": "PipelineRun",
            "metadata": {"name": "wfe-0123456789abcdef", "namespace": "kubernaut-workflows"},
            "spec": {
                "pipelineRef": {"resolver": "bundles", "params": [
                    {"name": "bundle", "value": "registry.example/wf:v1"},
                    {"name": "name", "value": "workflow"},
                    {"name": "kind", "value": "pipeline"}
                ]},
                "params": [
                    {"name": "LIST", "value": ["a", "b"]},
                    {"name": "OBJ", "value": {"k": "v"}},
                    {"name": "TARGET_RESOURCE", "value": "ns/deployment/x"}
                ],
                "taskRunTemplate": {"serviceAccountName": "sa", "podTemplate": {"nodeSelector": {"a": "b"}}},
                "timeouts": {"pipeline": "1h0m0s"},
                "workspaces": [{"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}}],
                "someFutureField": true
            },
            "status": {
                "conditions": [{"type": "Succeeded", "status": "False", "reason": "Failed",
                                "message": "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "startTime": "2026-01-01T00:00:00Z",
                "completionTime": "2026-01-01T00:01:00Z",
                "childReferences": [
                    {"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": "wfe-x-run", "pipelineTaskName": "run"},
                    {"apiVersion": "tekton.dev/v1beta1", "kind": "CustomRun", "name": "wfe-x-wait", "pipelineTaskName": "wait"}
                ],
                "pipelineSpec": {"tasks": []},
                "provenance": {"featureFlags": {}}
            }
        });
        let pr: PipelineRun = serde_json::from_value(json).expect("deserializes");
        assert_eq!(
            pr.spec.params[0].value,
            ParamValue::Array(vec!["a".into(), "b".into()])
        );
        assert!(matches!(pr.spec.params[1].value, ParamValue::Object(_)));
        assert_eq!(pr.spec.params[2].value.as_str(), Some("ns/deployment/x"));
        assert_eq!(
            pr.succeeded().map(TektonCondition::outcome),
            Some(Outcome::Failed)
        );
        assert!(pr.is_finished());
        let status = pr.status.as_ref().expect("status");
        assert_eq!(status.child_references.len(), 2);
        assert!(status.child_references[0].is_task_run());
        assert!(!status.child_references[1].is_task_run());
    }

    #[test]
    fn condition_outcomes() {
        let c = |s: &str| TektonCondition {
            type_: CONDITION_SUCCEEDED.into(),
            status: s.into(),
            ..Default::default()
        };
        assert_eq!(c("True").outcome(), Outcome::Succeeded);
        assert_eq!(c("False").outcome(), Outcome::Failed);
        assert_eq!(c("Unknown").outcome(), Outcome::Running);
        assert_eq!(c("").outcome(), Outcome::Running);
        let pr = PipelineRun::new("x", PipelineRunSpec::default());
        assert!(pr.succeeded().is_none() && !pr.is_finished());
    }

    #[test]
    fn failed_step_is_the_first_non_zero_exit() {
        let tr: TaskRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {"name": "t"},
            "spec": {"taskRef": {"name": "x"}},
            "status": {"steps": [
                {"name": "prepare", "terminated": {"exitCode": 0, "reason": "Completed"}},
                {"name": "run", "container": "step-run", "terminated": {"exitCode": 2, "reason": "Error"}},
                {"name": "after", "terminated": {"exitCode": 1}},
                {"name": "never", "waiting": {"reason": "PodInitializing"}}
            ]}
        }))
        .expect("deserializes");
        let step = tr.failed_step().expect("a failed step");
        assert_eq!(step.name, "run");
        assert_eq!(step.terminated.as_ref().map(|t| t.exit_code), Some(2));
    }
}
