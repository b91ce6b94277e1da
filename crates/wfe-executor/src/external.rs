//! Backends whose execution is not a Kubernetes object: an engine behind a REST API (Ansible
//! through AWX, a CI system, a runbook service).
//!
//! Such an engine cannot hold the per-target lock by creating its execution under the
//! deterministic name, so the framework holds it for the engine: a `coordination.k8s.io/v1`
//! Lease named [`execution_name_for`](crate::execution_name_for) of the target, in the execution
//! namespace, with the labels, annotations and ownerReference of any execution resource. The
//! Lease goes through the protocol of [`resource`](crate::resource) unchanged (create, adopt,
//! held, stale replacement, owner-only delete, the watch and its cache), and a backend
//! implements [`ExternalEngine`]: launch an execution, read its state, cancel it.
//!
//! * **Launch.** Once the Lease is created (or adopted after a crash), the engine's
//!   [`launch`](ExternalEngine::launch) runs with the Lease's UID as the request key (the engine
//!   should use it to make a repeated launch return the same execution); the engine's id is
//!   recorded on the Lease ([`ANNOTATION_EXTERNAL_ID`]). An adoption finds the id and does not
//!   launch again. A failed launch deletes the Lease again.
//! * **Status.** The engine's [`observe`](ExternalEngine::observe) of that id. The first time it
//!   reports an outcome, the Lease is marked finished ([`ANNOTATION_FINISHED`]): that is what
//!   makes it stale for the next request on the target once its owner has recorded the outcome.
//! * **Delete** (lock release, finalizer) cancels an unfinished execution
//!   ([`cancel`](ExternalEngine::cancel), best effort), then deletes the Lease.
//! * **Wake-ups.** The Lease watch wakes the owner when the lock changes; the engine's progress
//!   does not show on the Lease, so the owners of unfinished Leases are also woken every
//!   [`poll_every`](ExternalEngine::poll_every).
//!
//! Requests per execution on top of the engine's own: the Lease's POST, one PATCH for the id,
//! one for the finished mark, and its DELETE.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::{
    Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use wfe_api::{ExecutionEngine, ExecutionStatusSummary, FieldError, WorkflowExecution};

use crate::{
    Availability, CreateOutcome, DeleteOutcome, ExecutionResource, Executor, ExecutorError,
    Observation, ResourceClient, owner_of, watch::Changes,
};

/// Annotation on the Lease: the engine's id of the execution.
pub const ANNOTATION_EXTERNAL_ID: &str = "kubernaut.ai/external-id";
/// Annotation on the Lease: `true` once the engine reported an outcome.
pub const ANNOTATION_FINISHED: &str = "kubernaut.ai/external-finished";

/// What a backend whose engine lives outside Kubernetes supplies. Wrap it in [`External`] to get
/// an [`Executor`].
#[async_trait]
pub trait ExternalEngine: Send + Sync + std::fmt::Debug + 'static {
    /// The engine this backend serves.
    fn engine(&self) -> ExecutionEngine;

    /// Launches the execution of `wfe`. `request` is unique per lock (the Lease's UID): a launch
    /// repeated with the same `request` (after a crash before the id was recorded) should return
    /// the same execution. Returns the engine's id of it.
    async fn launch(&self, wfe: &WorkflowExecution, request: &str)
    -> Result<String, ExecutorError>;

    /// The state of the engine's execution `id`, which `wfe` launched.
    async fn observe(
        &self,
        id: &str,
        wfe: &WorkflowExecution,
    ) -> Result<Observation, ExecutorError>;

    /// Stops the engine's execution `id`; one that has finished already is not an error.
    async fn cancel(&self, id: &str) -> Result<(), ExecutorError>;

    /// How often the owners of unfinished executions are woken to look. Default: 10 s.
    fn poll_every(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// [`Executor::availability`]. Default: available.
    async fn availability(&self) -> Availability {
        Availability::Available
    }

    /// [`Executor::validate`]. Default: no engine-specific rules.
    fn validate(&self, _wfe: &WorkflowExecution) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    /// [`Executor::initial_summary`]. Default: none.
    fn initial_summary(&self) -> Option<ExecutionStatusSummary> {
        None
    }
}

/// An [`ExternalEngine`] as an [`Executor`]: the framework holds the lock with a Lease.
#[derive(Debug)]
pub struct External<E: ExternalEngine> {
    locks: Arc<Locks<E>>,
}

/// The Lease protocol around the engine (an [`ExecutionResource`] of Leases).
#[derive(Debug)]
struct Locks<E> {
    engine: E,
    leases: ResourceClient<Lease>,
}

impl<E: ExternalEngine> External<E> {
    /// `engine`, with its locks held by Leases in the execution `namespace`.
    pub fn new(engine: E, client: kube::Client, namespace: impl Into<String>) -> Self {
        External {
            locks: Arc::new(Locks {
                engine,
                leases: ResourceClient::new(client, namespace),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.locks.engine
    }
}

fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease
        .meta()
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Whether the engine reported an outcome for the execution behind `lease`.
pub fn is_finished(lease: &Lease) -> bool {
    annotation(lease, ANNOTATION_FINISHED) == Some("true")
}

impl<E: ExternalEngine> Locks<E> {
    /// Sets one annotation on exactly `lease` (its UID is a precondition: never on a Lease that
    /// replaced it; a cached copy may be older than the Lease, which is fine for a merge).
    async fn annotate(&self, lease: &Lease, key: &str, value: &str) -> Result<(), ExecutorError> {
        let name = lease.name_any();
        let patch = json!({"metadata": {
            "uid": lease.uid(),
            "annotations": BTreeMap::from([(key, value)]),
        }});
        self.leases
            .api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| ExecutorError::from_kube(&format!("annotate Lease {name} with {key}"), e))
    }
}

#[async_trait]
impl<E: ExternalEngine> ExecutionResource for Locks<E> {
    type Object = Lease;

    fn resources(&self) -> &ResourceClient<Lease> {
        &self.leases
    }

    fn engine(&self) -> ExecutionEngine {
        self.engine.engine()
    }

    fn build(&self, wfe: &WorkflowExecution) -> Result<Lease, FieldError> {
        let holder = format!("{}/{}", wfe.namespace().unwrap_or_default(), wfe.name_any());
        Ok(Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn is_finished(&self, lease: &Lease) -> bool {
        is_finished(lease)
    }

    async fn started(&self, lease: &Lease, wfe: &WorkflowExecution) -> Result<(), ExecutorError> {
        if annotation(lease, ANNOTATION_EXTERNAL_ID).is_some() {
            return Ok(()); // adopted: launched already
        }
        let id = self
            .engine
            .launch(wfe, &lease.uid().unwrap_or_default())
            .await?;
        self.annotate(lease, ANNOTATION_EXTERNAL_ID, &id).await
    }

    async fn observe(
        &self,
        lease: &Lease,
        wfe: &WorkflowExecution,
    ) -> Result<Observation, ExecutorError> {
        let Some(id) = annotation(lease, ANNOTATION_EXTERNAL_ID) else {
            // The create that took the lock did not record a launch yet (it is retried).
            return Ok(Observation::Running {
                summary: self.engine.initial_summary().unwrap_or_default(),
            });
        };
        let observation = self.engine.observe(id, wfe).await?;
        let done = matches!(
            observation,
            Observation::Succeeded { .. } | Observation::Failed { .. }
        );
        if done && !is_finished(lease) {
            self.annotate(lease, ANNOTATION_FINISHED, "true").await?;
        }
        Ok(observation)
    }

    async fn before_delete(&self, lease: &Lease) -> Result<(), kube::Error> {
        if let Some(id) = annotation(lease, ANNOTATION_EXTERNAL_ID)
            && !is_finished(lease)
            && let Err(e) = self.engine.cancel(id).await
        {
            tracing::warn!(lease = %lease.name_any(), id, error = %e, "cannot cancel the external execution; releasing the lock anyway");
        }
        Ok(())
    }

    async fn availability(&self) -> Availability {
        self.engine.availability().await
    }

    fn validate(&self, wfe: &WorkflowExecution) -> Result<(), Vec<FieldError>> {
        self.engine.validate(wfe)
    }

    fn initial_summary(&self) -> Option<ExecutionStatusSummary> {
        self.engine.initial_summary()
    }
}

#[async_trait]
impl<E: ExternalEngine> Executor for External<E> {
    fn engine(&self) -> ExecutionEngine {
        self.locks.engine.engine()
    }

    fn resource_kind(&self) -> &'static str {
        self.locks.leases.kind()
    }

    async fn availability(&self) -> Availability {
        Executor::availability(&*self.locks).await
    }

    /// The Lease watch, and every [`poll_every`](ExternalEngine::poll_every) the owners of the
    /// unfinished Leases in its cache.
    fn changes(&self) -> Option<Changes> {
        let watch = Executor::changes(&*self.locks)?;
        let every = self.locks.engine.poll_every();
        let locks = self.locks.clone();
        let polls = futures::stream::unfold((), move |()| {
            let locks = locks.clone();
            async move {
                tokio::time::sleep(every).await;
                let owners: Vec<_> = locks
                    .leases
                    .cached()
                    .iter()
                    .filter(|l| !is_finished(l))
                    .filter_map(|l| owner_of(l.meta()))
                    .collect();
                Some((futures::stream::iter(owners), ()))
            }
        })
        .flatten();
        Some(futures::stream::select(watch, polls).boxed())
    }

    fn initial_summary(&self) -> Option<ExecutionStatusSummary> {
        self.locks.engine.initial_summary()
    }

    fn validate(&self, wfe: &WorkflowExecution) -> Result<(), Vec<FieldError>> {
        self.locks.engine.validate(wfe)
    }

    async fn create(&self, wfe: &WorkflowExecution) -> Result<CreateOutcome, ExecutorError> {
        Executor::create(&*self.locks, wfe).await
    }

    async fn status(&self, wfe: &WorkflowExecution) -> Result<Observation, ExecutorError> {
        Executor::status(&*self.locks, wfe).await
    }

    async fn delete(&self, wfe: &WorkflowExecution) -> Result<DeleteOutcome, ExecutorError> {
        Executor::delete(&*self.locks, wfe).await
    }
}
