//! The reconcile loop. [`reconcile`] adds the finalizer and hands each WorkflowExecution to the
//! handler of its phase; the handlers decide with pure functions ([`crate::guards`],
//! [`crate::transitions`], [`effects`]) and act through [`Context`]:
//!
//! | file | concern |
//! |---|---|
//! | `config.rs` | [`ControllerConfig`] |
//! | `error.rs` | [`Error`] and its metric category |
//! | `index.rs` | [`TargetIndex`]: WorkflowExecutions by target, for the guards |
//! | `memory.rs` | what the process remembers of each object beyond the cache, one map, one `forget` |
//! | `effects.rs` | transitions as values: status, Event, metrics, audit timing, what follows |
//! | `status.rs` | the one status writer, and `conclude`, which carries out an [`effects::Effects`] |
//! | `events.rs` | Kubernetes Events, queued and published after dispatch work |
//! | `pending.rs` | validation, guards and dispatch |
//! | `running.rs` | observation and the outcome |
//! | `terminal.rs` | after the outcome: block clearing, audit, lock release |
//! | `clearing.rs` | block clearing by annotation |
//! | `delivery.rs` | audit delivery and its retries |
//! | `cleanup.rs` | the finalizer |

mod cleanup;
mod clearing;
mod config;
mod delivery;
pub mod effects;
mod error;
mod events;
mod index;
pub mod memory;
mod pending;
mod running;
mod status;
pub mod sweep;
mod terminal;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        controller::Action,
        events::Reporter,
        finalizer::{Event as FinalizerEvent, finalizer},
        reflector::Store,
    },
};
use wfe_api::{FINALIZER, Phase, TargetKey, WorkflowExecution};
use wfe_executor::{Executor, Registry};

pub use config::ControllerConfig;
pub use error::Error;
pub use index::TargetIndex;

use crate::{audit::AuditSink, metrics};

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Executors by engine.
    pub registry: Registry,
    /// Settings.
    pub cfg: ControllerConfig,
    /// The WorkflowExecution cache.
    pub store: Store<WorkflowExecution>,
    /// WorkflowExecutions by target.
    pub index: Arc<TargetIndex>,
    /// Audit delivery.
    pub audit: Arc<dyn AuditSink>,
    /// Kubernetes Events, published in the background ([`events`]).
    events: events::Events,
    /// What this process remembers of each object beyond the cache.
    memory: memory::Memory,
    /// Serializes guard evaluation and dispatch per target within this process.
    target_locks: Mutex<HashMap<TargetKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("cfg", &self.cfg)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        registry: Registry,
        cfg: ControllerConfig,
        store: Store<WorkflowExecution>,
        index: Arc<TargetIndex>,
        audit: Arc<dyn AuditSink>,
        reporter: Reporter,
    ) -> Self {
        let events = events::Events::start(client.clone(), reporter, index.clone());
        Context {
            client,
            registry,
            cfg,
            store,
            events,
            index,
            audit,
            memory: memory::Memory::default(),
            target_locks: Mutex::default(),
        }
    }

    /// The newest known copy of `wfe`: the cached copy, unless this process has written a newer
    /// one that the watch has not delivered yet. Deciding on the newest copy avoids refused
    /// writes (resourceVersion conflicts), repeated dispatches and repeated audit deliveries.
    pub fn freshest(&self, wfe: Arc<WorkflowExecution>) -> Arc<WorkflowExecution> {
        self.memory.freshest(wfe)
    }

    /// Publishes the Events still queued (at shutdown), within `within`.
    pub async fn flush_events(&self, within: Duration) {
        self.events.flush(within).await;
    }

    /// Drops what this process remembers of an object that is gone or settled.
    pub fn forget(&self, uid: &str) {
        self.memory.forget(uid);
    }

    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn api(&self, wfe: &WorkflowExecution) -> Api<WorkflowExecution> {
        Api::namespaced(self.client.clone(), &wfe.namespace().unwrap_or_default())
    }

    fn executor(&self, wfe: &WorkflowExecution) -> Option<&Arc<dyn Executor>> {
        self.registry.get(wfe.engine())
    }

    fn target_lock(&self, key: &TargetKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.target_locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.len() > 4096 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(key.clone()).or_default().clone()
    }
}

/// `namespace/name`, for logs and claims.
fn id_of(wfe: &WorkflowExecution) -> String {
    format!("{}/{}", wfe.namespace().unwrap_or_default(), wfe.name_any())
}

/// [`reconcile`] as kube-runtime's Controller calls it: measured by the reconcile metrics
/// (result, duration, errors by category, reconciles in flight; [`metrics::Reconciling`]).
pub async fn measured_reconcile(
    wfe: Arc<WorkflowExecution>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let reconciling = metrics::Reconciling::start();
    let result = reconcile(wfe, ctx).await;
    reconciling.finish(&result, Error::category);
    result
}

/// Reconciles one WorkflowExecution.
pub async fn reconcile(wfe: Arc<WorkflowExecution>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut wfe = ctx.freshest(wfe);
    if wfe.metadata.deletion_timestamp.is_none() && !wfe.finalizers().iter().any(|f| f == FINALIZER)
    {
        // Added here rather than by the finalizer helper, which would return after the patch and
        // leave the work to the reconcile that the patch triggers: dispatch goes on with the
        // patched object instead of waiting for the watch to deliver it.
        wfe = Arc::new(ctx.add_finalizer(&wfe).await?);
    }
    let api = ctx.api(&wfe);
    finalizer(&api, FINALIZER, wfe, |event| async {
        match event {
            FinalizerEvent::Apply(wfe) => match wfe.phase() {
                Phase::Pending => ctx.pending(wfe).await,
                Phase::Running => ctx.running(wfe).await,
                Phase::Succeeded | Phase::Failed => ctx.after_terminal(wfe).await,
            },
            FinalizerEvent::Cleanup(wfe) => ctx.cleanup(wfe).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// What to do after a failed reconcile: a stale-copy conflict (expected with a lagging cache) is
/// retried after 200 ms with the newest copy, anything else after 5 s. Fixed delays, not a
/// growing backoff: every error here is either transient or retried by design (a status read
/// that keeps failing shows as reconcile errors in the metrics and logs; [`measured_reconcile`]
/// counts them).
pub fn error_policy(wfe: Arc<WorkflowExecution>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        e if e.is_conflict() => {
            tracing::debug!(wfe = %id_of(&wfe), "stale copy; retrying with the latest");
            Action::requeue(Duration::from_millis(200))
        }
        _ => {
            tracing::warn!(wfe = %id_of(&wfe), error = %error, "reconcile failed; retrying");
            Action::requeue(Duration::from_secs(5))
        }
    }
}
