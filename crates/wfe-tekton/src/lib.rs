//! # wfe-tekton: the Tekton backend
//!
//! Runs a `WorkflowExecution` as a Tekton `tekton.dev/v1` `PipelineRun` in the execution
//! namespace, implementing the [`wfe_executor::Executor`] contract (engine
//! [`ExecutionEngine::Tekton`](wfe_api::ExecutionEngine::Tekton), resource kind `PipelineRun`).
//!
//! * [`types`]: typed subsets of `PipelineRun` and `TaskRun` (serde, `kube::Resource`). Unknown
//!   fields are ignored, so objects written by any Tekton version can be read.
//! * [`build_pipeline_run`]: the PipelineRun of a WorkflowExecution, a pure function (DESIGN.md
//!   §2 "PipelineRun shape"): deterministic name, owner labels and annotations, the OCI bundle
//!   through the `bundles` resolver (Pipeline `workflow`), the allow-listed parameters in sorted
//!   order followed by `TARGET_RESOURCE`, one workspace per Secret/ConfigMap dependency, the
//!   service account, a restricted pod security context and `timeouts.pipeline` from
//!   `executionConfig.timeout` (the reference controller set no timeout at all).
//! * [`classify`]: the mapping of a PipelineRun and its TaskRuns to an
//!   [`Observation`](wfe_executor::Observation): the `Succeeded` condition decides the state; a
//!   failure is classified with the reference controller's ordered rules, enriched with the
//!   failed TaskRun, its index, failed step and exit code, and `wasExecutionFailure` tells
//!   whether the workflow actually ran.
//! * [`TektonExecutor`]: a [`wfe_executor::ExecutionResource`] of PipelineRuns, so the
//!   protocol around them (idempotent create that adopts its own PipelineRun, reports the holder
//!   of a live one and replaces a finished one of another WorkflowExecution; reads from the watch
//!   cache; a missing or replaced PipelineRun reported as deleted externally; owner-only delete)
//!   is [`wfe_executor::resource`]'s. What is Tekton's: the PipelineRun, its observation with the
//!   child TaskRuns, the cancel (`spec.status: Cancelled`) of a running PipelineRun before it is
//!   deleted, and `availability`, which asks API discovery whether `pipelineruns.tekton.dev/v1`
//!   is served, caching a positive answer and re-checking a negative one every 10 s, so Tekton
//!   installed after the operator started is noticed.
//!
//! ```
//! use wfe_tekton::{TektonConfig, build_pipeline_run};
//!
//! let wfe: wfe_api::WorkflowExecution = serde_json::from_value(serde_json::json!({
//!     "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
//!     "metadata": {"name": "restart-app", "namespace": "team-a", "uid": "1234"},
//!     "spec": {
//!         "workflowRef": {"workflowId": "restart", "version": "1.0.0",
//!                         "containerImage": "oci://registry.example.com/workflows/restart:v1"},
//!         "targetResource": "production/Deployment/my-app",
//!         "parameters": {"REPLICAS": "3"},
//!         "remediationRequestRef": {"name": "rr-1"}
//!     }
//! })).unwrap();
//! let pr = build_pipeline_run(&wfe, &TektonConfig::default()).unwrap();
//! assert_eq!(pr.metadata.namespace.as_deref(), Some("kubernaut-workflows"));
//! let bundle = &pr.spec.pipeline_ref.as_ref().unwrap().params[0];
//! assert_eq!(bundle.value.as_str(), Some("registry.example.com/workflows/restart:v1"));
//! assert_eq!(pr.spec.timeouts.unwrap().pipeline.as_deref(), Some("30m0s"));
//! ```

mod build;
pub mod classify;
mod executor;
pub mod types;

pub use build::{
    BUNDLES_RESOLVER, BuildError, CONFIGMAP_WORKSPACE_PREFIX, DEFAULT_EXECUTION_NAMESPACE,
    DEFAULT_SERVICE_ACCOUNT, PIPELINE_NAME, SECRET_WORKSPACE_PREFIX, TARGET_RESOURCE_PARAM,
    TektonConfig, build_pipeline_run, bundle_reference, check_bundle_pinned, owner_reference,
    pipeline_params, restricted_pod_security_context, workspaces,
};
pub use executor::{
    AVAILABILITY_RECHECK, RESOURCE_KIND, TektonExecutor, UNAVAILABLE_HINT, UNKNOWN_OWNER,
};
pub use types::{PipelineRun, TaskRun};

#[cfg(test)]
mod build_tests;
