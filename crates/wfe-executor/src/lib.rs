//! # wfe-executor: the execution-engine contract
//!
//! A WorkflowExecution names an engine (`spec.executionEngine`); the controller looks the engine up
//! in a [`Registry`] and talks to the [`Executor`] it finds. The controller never matches on engine
//! names, so adding a backend means writing one crate that implements [`Executor`] and registering
//! it in the binary.
//!
//! ## What every backend honours
//!
//! * **One resource per target.** The execution resource is named [`execution_name`] of the
//!   target key (`wfe-` + 16 hex digits of sha256, the kind lower-cased) in the execution namespace.
//!   The API server's name uniqueness is the lock.
//! * **Create is idempotent.** If the resource exists and belongs to this WorkflowExecution (see
//!   [`is_owned_by`]), [`Executor::create`] adopts it ([`CreateOutcome::Adopted`]). If it belongs
//!   to another one and is still running, the result is [`CreateOutcome::HeldBy`], never an error
//!   string. A finished resource of another WorkflowExecution is stale once its owner has
//!   recorded the outcome ([`owner_settled`]): the backend removes it and creates its own.
//! * **Labels and annotations** from [`execution_labels`] and [`execution_annotations`] on every
//!   resource; label values are always valid. When the WorkflowExecution lives in the execution
//!   namespace the resource also gets a controller ownerReference ([`owner_reference`]).
//! * **Status** maps the backend's state to an [`Observation`]: running, succeeded, failed with a
//!   classified [`Failure`], or deleted externally (NotFound is not an error).
//! * **Delete** is idempotent and removes only a resource owned by this WorkflowExecution.
//! * **Errors** are classified ([`ExecutorError`]) so that RBAC denials and quota errors become
//!   `Forbidden` and `ResourceExhausted` failures, and transient errors are retried.
//!
//! ## Backends whose execution resource is a Kubernetes object
//!
//! For them these rules are implemented once, in [`resource`]: a backend implements
//! [`ExecutionResource`] (its object type, how to build the object, how to read an
//! [`Observation`] from it, when it has finished, and optional hooks) and is an [`Executor`]
//! through a blanket implementation. Create, adoption, "held by another", stale replacement,
//! owner-only delete, the identity metadata ([`resource::execution_metadata`]), the watch and the
//! reads from its cache are the module's. Both built-in backends (`wfe-job`, `wfe-tekton`) are
//! built this way.
//!
//! ## Backends whose engine lives outside Kubernetes
//!
//! An engine behind a REST API (AWX, a CI system) has no object to hold the lock with. It
//! implements [`external::ExternalEngine`] (launch, observe, cancel) and [`external::External`]
//! makes it an [`Executor`]: the framework holds the per-target lock with a Lease named from the
//! target and runs the same protocol on it.
//!
//! [`conformance`] holds a test suite that checks these rules against a real API server; every
//! backend crate runs it in its integration tests.

pub mod conformance;
mod error;
pub mod external;
mod naming;
mod registry;
pub mod resource;
pub mod watch;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wfe_api::{
    ExecutionEngine, ExecutionRef, ExecutionStatusSummary, FailureReason, FieldError,
    WorkflowExecution,
};

pub use error::{Cause, ExecutorError, is_already_exists, is_not_found};
pub use naming::*;
pub use registry::{EngineUnavailable, Registry};
pub use resource::{ExecutionResource, ResourceClient};

/// Whether the owner of a finished execution resource has recorded its outcome, so that the
/// resource is stale and may be replaced by another WorkflowExecution's execution: the owner is
/// gone, was recreated (another UID), or is terminal. A finished resource whose owner is still
/// Pending or Running (for example after a crash between create and the status write) is not
/// stale: its owner will adopt it and record the outcome, so it must not be deleted.
pub async fn owner_settled(client: &kube::Client, owner: &Owner) -> Result<bool, ExecutorError> {
    let api: kube::Api<WorkflowExecution> = kube::Api::namespaced(client.clone(), &owner.namespace);
    match api.get_opt(&owner.name).await {
        Ok(None) => Ok(true),
        Ok(Some(wfe)) => {
            let recreated = matches!((owner.uid.as_deref(), wfe.metadata.uid.as_deref()), (Some(a), Some(b)) if a != b);
            Ok(recreated || wfe.phase().is_terminal())
        }
        Err(e) => Err(ExecutorError::from_kube(
            &format!("read WorkflowExecution {owner}"),
            e,
        )),
    }
}

/// What [`Executor::create`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new resource was created.
    Created(ExecutionRef),
    /// The resource already existed and belongs to this WorkflowExecution (for example after a
    /// crash between create and the status write).
    Adopted(ExecutionRef),
    /// The resource exists, is still active and belongs to another WorkflowExecution.
    HeldBy {
        /// The existing resource.
        reference: ExecutionRef,
        /// Its owner.
        holder: Owner,
    },
}

/// A classified failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The reason.
    pub reason: FailureReason,
    /// What happened, including the useful tail (termination message, last event).
    pub message: String,
    /// Exit code of the failed container or step.
    pub exit_code: Option<i32>,
    /// Failed task (TaskRun name) or container.
    pub failed_task_name: Option<String>,
    /// Index of the failed task.
    pub failed_task_index: Option<i32>,
    /// Failed step.
    pub failed_step_name: Option<String>,
    /// True only when the workflow actually started.
    pub was_execution_failure: bool,
}

impl Failure {
    /// A failure with only a reason and message.
    pub fn new(
        reason: FailureReason,
        message: impl Into<String>,
        was_execution_failure: bool,
    ) -> Self {
        Failure {
            reason,
            message: message.into(),
            exit_code: None,
            failed_task_name: None,
            failed_task_index: None,
            failed_step_name: None,
            was_execution_failure,
        }
    }
}

/// The state of an execution resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// Still running (or waiting to run).
    Running {
        /// Progress summary.
        summary: ExecutionStatusSummary,
    },
    /// Finished successfully.
    Succeeded {
        /// Final summary.
        summary: ExecutionStatusSummary,
        /// When the engine says it finished.
        finished_at: Option<Time>,
    },
    /// Finished with a failure.
    Failed {
        /// Final summary.
        summary: ExecutionStatusSummary,
        /// The classified failure.
        failure: Failure,
        /// When the engine says it finished.
        finished_at: Option<Time>,
    },
    /// The resource is gone, or was replaced by one that belongs to someone else.
    DeletedExternally {
        /// The resource kind, for messages (`Job`, `PipelineRun`).
        kind: String,
        /// The resource name.
        name: String,
    },
}

/// What [`Executor::delete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The resource was deleted (or its deletion started).
    Deleted,
    /// There was nothing to delete.
    NotFound,
    /// The resource belongs to another WorkflowExecution and was left alone.
    NotOwned,
}

/// Whether an engine can take work now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Ready.
    Available,
    /// Not usable; the text tells an operator what to do.
    Unavailable(String),
}

/// One execution backend.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    /// The engine this executor serves.
    fn engine(&self) -> ExecutionEngine;

    /// Kind of the execution resource (`Job`, `PipelineRun`), used in messages.
    fn resource_kind(&self) -> &'static str;

    /// Whether the backend can run executions now (for example: are its CRDs installed).
    async fn availability(&self) -> Availability {
        Availability::Available
    }

    /// The watch of the backend's execution resources (in its own execution namespace, the one
    /// it was built with); the controller takes it once at start and wakes the owner of every
    /// object the stream yields (the WorkflowExecution that [`owner_of`] names). `None` (the
    /// default, and once taken): no watch, status is polled every `--running-resync`. Backends
    /// built on [`ExecutionResource`] watch whole objects and read them from memory
    /// ([`watch::ResourceCache`]); others may use [`watch::metadata_changes`].
    fn changes(&self) -> Option<watch::Changes> {
        None
    }

    /// The progress summary of an execution resource just created, before the engine did
    /// anything with it: it is written with the `Running` transition, which spares the write
    /// that the first observation would otherwise make. It must equal what
    /// [`status`](Self::status) reports for such a resource. `None`: no initial summary.
    fn initial_summary(&self) -> Option<ExecutionStatusSummary> {
        None
    }

    /// Engine-specific checks of a spec (for example digest pinning). Failures end the request in
    /// `Failed` with reason `ConfigurationError`.
    fn validate(&self, _wfe: &WorkflowExecution) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    /// Creates the execution resource, or adopts it, or reports who holds it.
    async fn create(&self, wfe: &WorkflowExecution) -> Result<CreateOutcome, ExecutorError>;

    /// Reads the execution resource and maps its state.
    async fn status(&self, wfe: &WorkflowExecution) -> Result<Observation, ExecutorError>;

    /// Deletes the execution resource if this WorkflowExecution owns it.
    async fn delete(&self, wfe: &WorkflowExecution) -> Result<DeleteOutcome, ExecutorError>;
}
