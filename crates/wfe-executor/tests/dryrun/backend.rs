//! # wfe-dryrun: a dry-run execution backend
//!
//! For `spec.executionEngine: dryrun`, records what would run in a ConfigMap named
//! `wfe-<hash>` in the execution namespace. Nothing runs. The execution stays `Running` until a
//! reviewer (or a test) sets `data.result` to `succeeded` or `failed`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use wfe_api::{
    ExecutionEngine, ExecutionStatusSummary, FailureReason, FieldError, WorkflowExecution,
};
use wfe_executor::{ExecutionResource, ExecutorError, Failure, Observation, ResourceClient};

/// Data key a reviewer sets to `succeeded` or `failed`.
pub const RESULT_KEY: &str = "result";
/// Optional data key with the reviewer's message.
pub const MESSAGE_KEY: &str = "message";

/// The dry-run backend.
#[derive(Clone, Debug)]
pub struct DryRunExecutor {
    resources: ResourceClient<ConfigMap>,
}

impl DryRunExecutor {
    /// An executor that records executions in `namespace` (the operator's execution namespace).
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        DryRunExecutor {
            resources: ResourceClient::new(client, namespace),
        }
    }
}

/// The record of `wfe` (pure). The protocol adds the name, namespace, labels, annotations and
/// ownerReference.
pub fn record(wfe: &WorkflowExecution) -> ConfigMap {
    let spec = &wfe.spec;
    let parameters = serde_json::to_string(&spec.effective_parameters()).unwrap_or_default();
    let data = [
        ("targetResource", spec.target_resource.clone()),
        ("workflowId", spec.workflow_ref.workflow_id.clone()),
        ("containerImage", spec.workflow_ref.container_image.clone()),
        ("parameters", parameters),
    ];
    ConfigMap {
        data: Some(BTreeMap::from(data.map(|(k, v)| (k.to_string(), v)))),
        ..Default::default()
    }
}

fn result_of(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get(RESULT_KEY).map(String::as_str)
}

fn summary(status: &str, reason: &str, message: String, done: i32) -> ExecutionStatusSummary {
    ExecutionStatusSummary {
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        completed_tasks: done,
        total_tasks: 1,
        retry_count: 0,
    }
}

/// What a record says (pure).
pub fn observation(cm: &ConfigMap) -> Observation {
    let message = cm.data.as_ref().and_then(|d| d.get(MESSAGE_KEY));
    let message = message.cloned().unwrap_or_default();
    match result_of(cm) {
        Some("succeeded") => Observation::Succeeded {
            summary: summary("True", "Approved", message, 1),
            finished_at: None, // the controller uses the time it noticed
        },
        Some("failed") => {
            let text = format!("the dry run was rejected: {message}");
            Observation::Failed {
                summary: summary("False", "Rejected", text.clone(), 0),
                // Nothing ran, so nothing changed: not an execution failure.
                failure: Failure::new(FailureReason::TaskFailed, text, false),
                finished_at: None,
            }
        }
        _ => Observation::Running {
            summary: summary(
                "Unknown",
                "AwaitingReview",
                "waiting for data.result".into(),
                0,
            ),
        },
    }
}

#[async_trait]
impl ExecutionResource for DryRunExecutor {
    type Object = ConfigMap;

    fn resources(&self) -> &ResourceClient<ConfigMap> {
        &self.resources
    }

    fn engine(&self) -> ExecutionEngine {
        // `ExecutionEngine::DryRun` once wfe-api has the variant (see below), which this parse
        // then returns as well.
        ExecutionEngine::parse_lenient("dryrun")
    }

    fn build(&self, wfe: &WorkflowExecution) -> Result<ConfigMap, FieldError> {
        Ok(record(wfe))
    }

    fn is_finished(&self, cm: &ConfigMap) -> bool {
        matches!(result_of(cm), Some("succeeded" | "failed"))
    }

    async fn observe(
        &self,
        cm: &ConfigMap,
        _wfe: &WorkflowExecution,
    ) -> Result<Observation, ExecutorError> {
        Ok(observation(cm))
    }
}
