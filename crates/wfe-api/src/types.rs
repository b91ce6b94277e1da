//! The `WorkflowExecution` custom resource (`kubernaut.ai/v1alpha1`).

use std::{borrow::Cow, collections::BTreeMap, fmt};

use k8s_openapi::{
    api::core::v1::{ObjectReference, ResourceRequirements},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::ExecutionEngine;

/// Requests one run of one catalogued workflow against one target resource.
///
/// The spec is immutable after creation. The operator validates it, applies the engine-agnostic
/// guards (resource lock, cooldown, backoff, block after an execution failure), creates the
/// execution resource (a Tekton PipelineRun or a batch/v1 Job) and reports the outcome in `status`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubernaut.ai",
    version = "v1alpha1",
    kind = "WorkflowExecution",
    plural = "workflowexecutions",
    singular = "workflowexecution",
    shortname = "wfe",
    namespaced,
    status = "WorkflowExecutionStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Lifecycle phase"}"#,
    printcolumn = r#"{"name":"Engine","type":"string","jsonPath":".spec.executionEngine","description":"Execution engine"}"#,
    printcolumn = r#"{"name":"Workflow","type":"string","jsonPath":".spec.workflowRef.name","description":"Workflow name"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetResource","description":"Target resource"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.failureReason","description":"Failure reason"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration","description":"Execution duration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.targetResource"
)]
#[serde(rename_all = "camelCase")]
// Atomic for field management: immutable, so per-field ownership would track nothing while the
// API server carried a field set per leaf in every object (docs/decisions.md).
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "spec is immutable after creation"}
], "x-kubernetes-map-type" = "atomic"))]
pub struct WorkflowExecutionSpec {
    /// Backend that runs the workflow: `tekton` (default) or `job`. Empty or missing means `tekton`.
    #[serde(default)]
    pub execution_engine: ExecutionEngine,

    /// The catalogued workflow to run.
    pub workflow_ref: WorkflowRef,

    /// The object the workflow remediates: `namespace/kind/name`, or `kind/name` for a
    /// cluster-scoped object. At most one execution runs per target at a time.
    #[schemars(length(min = 3, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[^/]*[^/ ][^/]*/[^/]*[^/ ][^/]*(/[^/]*[^/ ][^/]*)?$')",
         "message": "targetResource must be \"namespace/kind/name\" or \"kind/name\" with non-empty parts",
         "messageExpression": "'targetResource ' + strings.quote(self) + ' must be \"namespace/kind/name\" or \"kind/name\" with non-empty parts'"}
    ]))]
    pub target_resource: String,

    /// Parameters passed to the workflow: environment variables of a Job, params of a
    /// PipelineRun. Keys must be valid environment variable names and must not be reserved
    /// (`TARGET_RESOURCE`, `HOME`, `TMPDIR`, `WFE_*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 256))]
    // The messages quote the first refused key (at most 64 characters of it): quoting all of
    // them exceeds the API server's CEL cost budget, since map keys have no length bound.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))",
         "message": "parameter names must be valid environment variable names ([A-Za-z_][A-Za-z0-9_]*)",
         "messageExpression": "'parameter names must be valid environment variable names ([A-Za-z_][A-Za-z0-9_]*); refused: ' + strings.quote(size(self.filter(k, !k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))[0]) > 64 ? self.filter(k, !k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))[0].substring(0, 64) + '...' : self.filter(k, !k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))[0])"},
        {"rule": "self.all(k, !(k in ['TARGET_RESOURCE', 'HOME', 'TMPDIR']) && !k.startsWith('WFE_'))",
         "message": "parameter names TARGET_RESOURCE, HOME, TMPDIR and WFE_* are reserved",
         "messageExpression": "'parameter names TARGET_RESOURCE, HOME, TMPDIR and WFE_* are reserved; refused: ' + strings.quote(size(self.filter(k, k in ['TARGET_RESOURCE', 'HOME', 'TMPDIR'] || k.startsWith('WFE_'))[0]) > 64 ? self.filter(k, k in ['TARGET_RESOURCE', 'HOME', 'TMPDIR'] || k.startsWith('WFE_'))[0].substring(0, 64) + '...' : self.filter(k, k in ['TARGET_RESOURCE', 'HOME', 'TMPDIR'] || k.startsWith('WFE_'))[0])"}
    ]))]
    pub parameters: BTreeMap<String, String>,

    /// Execution settings (timeout, service account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_config: Option<ExecutionConfig>,

    /// The RemediationRequest this execution belongs to; its name is the audit correlation id.
    pub remediation_request_ref: ObjectReference,

    /// Confidence of the workflow selection, between 0 and 1 (audit only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self >= 0.0 && self <= 1.0", "message": "confidence must be between 0 and 1",
         "messageExpression": "'confidence must be between 0 and 1, got ' + (self > 1.0 ? 'more than 1' : 'less than 0')"}
    ]))]
    pub confidence: Option<f64>,

    /// Why the workflow was selected (audit only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

/// The catalogued workflow: identity, image and what it may use.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRef {
    /// Catalog identifier of the workflow.
    #[schemars(length(min = 1))]
    pub workflow_id: String,

    /// Catalog version of the workflow.
    pub version: String,

    /// Human-readable workflow name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// OCI reference of what runs. Job engine: the container image, pinned by digest
    /// (`...@sha256:<64 hex>`) unless the operator allows tags. Tekton engine: the OCI bundle that
    /// holds a Pipeline named `workflow` (an `oci://` prefix is accepted).
    #[schemars(length(min = 1, max = 1024))]
    pub container_image: String,

    /// Digest of the image or bundle, recorded in the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_digest: Option<String>,

    /// Secrets and ConfigMaps in the execution namespace that the workflow reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<WorkflowDependencies>,

    /// Compute resources of the Job container (Job engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Allow-list of parameter names. When present, only these parameters reach the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_parameter_names: Option<Vec<String>>,
}

/// Secrets and ConfigMaps a workflow depends on.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDependencies {
    /// Secrets mounted read-only at `/run/kubernaut/secrets/<name>` (Job) or bound as workspace
    /// `secret-<name>` (Tekton).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<NamedDependency>,
    /// ConfigMaps mounted read-only at `/run/kubernaut/configmaps/<name>` (Job) or bound as
    /// workspace `configmap-<name>` (Tekton).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_maps: Vec<NamedDependency>,
}

/// A reference by name to an object in the execution namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NamedDependency {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Execution settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionConfig {
    /// Maximum run time, as a duration such as `30m` or `1h30m` (default 30m). Job
    /// `activeDeadlineSeconds`; PipelineRun `timeouts.pipeline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) > duration('0s')", "message": "timeout must be a positive duration such as 30m",
         "messageExpression": "'timeout ' + strings.quote(self) + ' must be a positive duration such as 30m'"}
    ]))]
    pub timeout: Option<String>,

    /// Service account the workflow runs as, in the execution namespace (default from the
    /// operator configuration, `kubernaut-workflow-runner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// Observed state, written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Atomic for field management: one writer, so one managedFields entry (`f:status: {}`) instead of
// one per leaf, which the API server rebuilt on every status write (docs/benchmarks.md §6).
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct WorkflowExecutionStatus {
    /// Generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Lifecycle phase: Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// When the execution resource was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the execution reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Time from start to completion, e.g. `45s` or `2m5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,

    /// The Job or PipelineRun that runs (or ran) the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_ref: Option<ExecutionRef>,

    /// Summary of the execution resource's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_status: Option<ExecutionStatusSummary>,

    /// Mirror of `failureDetails.reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,

    /// Why the execution failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<FailureDetails>,

    /// The WorkflowExecution holding the target's lock when this one was deduplicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplicated_by: Option<String>,

    /// Record of a cleared block (BR-WE-013).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_clearance: Option<BlockClearance>,

    /// Audit event types that the audit sink acknowledged (the audit outbox).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub audit_delivered: Vec<String>,

    /// When the execution resource was deleted after the cooldown (the target's lock released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_released_time: Option<Time>,

    /// Standard conditions: ExecutionCreated, ExecutionRunning, ExecutionComplete, Ready,
    /// AuditRecorded, Blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A reference to the execution resource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRef {
    /// `Job` or `PipelineRun`.
    pub kind: String,
    /// Name of the resource (`wfe-<16 hex>`).
    pub name: String,
    /// Namespace of the resource (the execution namespace).
    pub namespace: String,
}

/// A summary of the execution resource's state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatusSummary {
    /// `True` (succeeded), `False` (failed) or `Unknown` (running).
    pub status: String,
    /// Machine-readable reason from the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message from the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Tasks (Tekton) or pods (Job) that completed.
    #[serde(default)]
    pub completed_tasks: i32,
    /// Tasks (Tekton) or pods (Job) in total.
    #[serde(default)]
    pub total_tasks: i32,
    /// Pod attempts beyond the first (Job engine; disruptions ignored by the pod failure policy).
    #[serde(default)]
    pub retry_count: i32,
}

/// Why an execution failed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureDetails {
    /// Classified reason.
    pub reason: FailureReason,
    /// What happened, with enough detail to diagnose after the execution resource is gone.
    pub message: String,
    /// Exit code of the failed container or step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Failed TaskRun (Tekton) or container (Job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_task_name: Option<String>,
    /// Index of the failed task among the execution's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_task_index: Option<i32>,
    /// Failed step (Tekton).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step_name: Option<String>,
    /// When the failure was classified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Time>,
    /// How long the execution ran before it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time_before_failure: Option<String>,
    /// A summary for people and for the remediation pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub natural_language_summary: Option<String>,
    /// True when the workflow actually started and may have changed the cluster; such a failure
    /// blocks the target until a person clears it. False for failures before the workflow ran.
    #[serde(default)]
    pub was_execution_failure: bool,
}

/// Who cleared a block, when and why.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockClearance {
    /// When the block was cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<Time>,
    /// Authenticated user who cleared it, as the API server stamped it in the `kubernaut.ai/cleared-by`
    /// annotation (deploy/admission-policies.yaml), or `unknown` when there is no stamp.
    pub cleared_by: String,
    /// Why it was cleared (at least 10 words).
    pub clear_reason: String,
    /// How it was cleared.
    pub clear_method: ClearMethod,
}

/// How a block was cleared.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClearMethod {
    /// The `kubernaut.ai/clear-block` annotation.
    Annotation,
    /// An API endpoint.
    #[serde(rename = "APIEndpoint")]
    ApiEndpoint,
    /// A status field.
    StatusField,
}

/// Lifecycle phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Seen but not started (validating, or waiting for a guard to expire).
    Pending,
    /// The execution resource exists and runs.
    Running,
    /// The workflow completed successfully. `Completed`, written by older controllers, reads as this.
    Succeeded,
    /// The request failed, before or during execution.
    Failed,
}

impl Phase {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Succeeded or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Phase {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Phase {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "Running" => Phase::Running,
            "Succeeded" | "Completed" => Phase::Succeeded,
            "Failed" => Phase::Failed,
            // Empty (never written by us) and anything unknown is treated as not started.
            _ => Phase::Pending,
        })
    }
}

impl JsonSchema for Phase {
    fn schema_name() -> Cow<'static, str> {
        "Phase".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Lifecycle phase. `Completed` is accepted for resources written by older controllers and means `Succeeded`.",
            "enum": ["Pending", "Running", "Succeeded", "Failed", "Completed"]
        })
    }
}

/// Classified failure reasons.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum FailureReason {
    /// The workflow container was killed for exceeding its memory limit.
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// The execution exceeded its timeout.
    DeadlineExceeded,
    /// The operator or the workflow was denied by RBAC.
    Forbidden,
    /// A quota or limit prevented the execution.
    ResourceExhausted,
    /// The request or its dependencies are invalid (missing Secret, bad parameter, ...).
    ConfigurationError,
    /// The workflow image could not be pulled.
    ImagePullBackOff,
    /// The workflow ran and exited with an error.
    TaskFailed,
    /// The requested engine is not available.
    UnsupportedEngine,
    /// Anything else.
    Unknown,
    /// Another execution held the target's lock.
    Deduplicated,
    /// Too many consecutive pre-execution failures on the target.
    ExhaustedRetries,
    /// A previous execution on the target failed after it started; the block must be cleared.
    PreviousExecutionFailed,
}

impl FailureReason {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::OomKilled => "OOMKilled",
            FailureReason::DeadlineExceeded => "DeadlineExceeded",
            FailureReason::Forbidden => "Forbidden",
            FailureReason::ResourceExhausted => "ResourceExhausted",
            FailureReason::ConfigurationError => "ConfigurationError",
            FailureReason::ImagePullBackOff => "ImagePullBackOff",
            FailureReason::TaskFailed => "TaskFailed",
            FailureReason::UnsupportedEngine => "UnsupportedEngine",
            FailureReason::Unknown => "Unknown",
            FailureReason::Deduplicated => "Deduplicated",
            FailureReason::ExhaustedRetries => "ExhaustedRetries",
            FailureReason::PreviousExecutionFailed => "PreviousExecutionFailed",
        }
    }

    /// Outcomes of the guards, which never count as executions.
    pub fn is_guard_outcome(self) -> bool {
        matches!(
            self,
            FailureReason::Deduplicated
                | FailureReason::ExhaustedRetries
                | FailureReason::PreviousExecutionFailed
        )
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WorkflowExecution {
    /// The phase, `Pending` when no status was written yet.
    pub fn phase(&self) -> Phase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(Phase::Pending)
    }

    /// The engine to use (never empty: missing means `tekton`).
    pub fn engine(&self) -> &ExecutionEngine {
        &self.spec.execution_engine
    }

    /// The lock key of the target.
    pub fn target_key(&self) -> crate::TargetKey {
        crate::TargetKey::of(&self.spec.target_resource)
    }

    /// A condition by type.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

impl WorkflowExecutionSpec {
    /// Parameters after the `declaredParameterNames` allow-list, in sorted order.
    pub fn effective_parameters(&self) -> BTreeMap<&str, &str> {
        let allowed = self.workflow_ref.declared_parameter_names.as_ref();
        self.parameters
            .iter()
            .filter(|(k, _)| allowed.is_none_or(|names| names.iter().any(|n| n == *k)))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The service account, or `default` when neither the spec nor the caller gives one.
    pub fn service_account<'a>(&'a self, default: &'a str) -> &'a str {
        self.execution_config
            .as_ref()
            .and_then(|c| c.service_account_name.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or(default)
    }
}
