//! The reconcile loop: validation, guards, dispatch through the registry, observation, terminal
//! transitions (once), audit outbox delivery, block clearing, lock release and cleanup.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event as KubeEvent, EventType, Recorder},
        finalizer::{Event as FinalizerEvent, finalizer},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;
use wfe_api::{
    BlockClearance, CLEAR_BLOCK_ANNOTATION, ClearMethod, FINALIZER, FailureReason,
    MIN_CLEAR_REASON_WORDS, Phase, TargetKey, WorkflowExecution, WorkflowExecutionStatus,
    conditions as cond, word_count,
};
use wfe_executor::{
    CreateOutcome, DeleteOutcome, Executor, ExecutorError, Failure, Observation, Registry,
};

use crate::{
    audit::{self, AuditSink},
    guards::{GuardConfig, Prior, Verdict, evaluate},
    metrics, transitions,
};

/// Controller settings.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Guard settings (cooldown, backoff, max consecutive failures).
    pub guards: GuardConfig,
    /// How often a running execution is re-read even without a watch event (a safety net; the
    /// watch on execution resources is what normally wakes it).
    pub running_resync: Duration,
    /// Parallel reconciles.
    pub concurrency: u16,
    /// Namespace to watch for WorkflowExecutions (`None`: all).
    pub watch_namespace: Option<String>,
    /// Namespace where execution resources live.
    pub execution_namespace: String,
    /// Fill the WorkflowExecution cache with a streaming list (a watch that sends the existing
    /// objects first, Kubernetes WatchList) rather than paged lists: objects arrive one at a time,
    /// so the start-up peak of memory does not grow with page size. Needs an API server that
    /// serves WatchList (on by default in recent Kubernetes releases).
    pub streaming_lists: bool,
    /// #18: what a WorkflowExecution may ask for (crate::policy); the default restricts nothing.
    pub policy: crate::policy::WorkflowPolicy,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            guards: GuardConfig::default(),
            running_resync: Duration::from_secs(300),
            concurrency: 16,
            watch_namespace: None,
            execution_namespace: "kubernaut-workflows".into(),
            streaming_lists: true,
            policy: crate::policy::WorkflowPolicy::default(),
        }
    }
}

/// Errors of one reconcile; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An executor failed transiently.
    #[error("executor: {0}")]
    Executor(#[from] ExecutorError),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    /// Audit delivery failed; retried later.
    #[error("{0}")]
    Audit(#[from] audit::AuditError),
}

impl Error {
    /// The error inside the finalizer wrapper, if any.
    fn inner(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            other => other,
        }
    }

    /// A stale-cache conflict (expected; retried quickly).
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self.inner() {
            Error::Kube(kube::Error::Api(s)) => s.code == 409,
            Error::Finalizer(f) => {
                matches!(f.as_ref(), F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)) if s.code == 409)
            }
            _ => false,
        }
    }

    /// A metric category.
    pub fn category(&self) -> &'static str {
        if self.is_conflict() {
            return "conflict";
        }
        match self.inner() {
            Error::Kube(_) => "kubernetes",
            Error::Executor(_) => "executor",
            Error::Finalizer(_) => "finalizer",
            Error::Audit(_) => "audit",
        }
    }
}

/// A source of time (a fake one in tests).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Index of WorkflowExecutions by target key, maintained from the watch.
///
/// Objects with work left are indexed by reference and read from the cache. Settled ones
/// ([`crate::cache::settled`]) are not cached at all: the index keeps the guard summary of each
/// ([`Prior`]), which is all that is ever read of them.
#[derive(Debug, Default)]
pub struct TargetIndex {
    inner: Mutex<IndexInner>,
}

#[derive(Debug, Default)]
struct IndexInner {
    map: HashMap<TargetKey, OnTarget>,
    /// Incremented when the watch lists again; entries not seen again are dropped at its end.
    epoch: u64,
}

#[derive(Debug, Default)]
struct OnTarget {
    live: Vec<(ObjectRef<WorkflowExecution>, u64)>,
    settled: Vec<(Prior, u64)>,
}

impl TargetIndex {
    fn inner(&self) -> std::sync::MutexGuard<'_, IndexInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an object (replacing what was recorded for it); true when it is settled (kept as
    /// its guard summary only).
    pub fn insert(&self, wfe: &WorkflowExecution) -> bool {
        let (r, id) = (key_of(wfe), id_of(wfe));
        let mut inner = self.inner();
        let epoch = inner.epoch;
        let on = inner.map.entry(wfe.target_key()).or_default();
        on.live.retain(|(x, _)| *x != r);
        on.settled.retain(|(p, _)| p.id != id);
        let settled = crate::cache::settled(wfe);
        if settled {
            on.settled.push((Prior::of(wfe), epoch));
            on.settled.shrink_to_fit();
        } else {
            on.live.push((r, epoch));
            on.live.shrink_to_fit();
        }
        settled
    }

    /// Forgets an object.
    pub fn remove(&self, wfe: &WorkflowExecution) {
        let (r, id, key) = (key_of(wfe), id_of(wfe), wfe.target_key());
        let mut inner = self.inner();
        if let Some(on) = inner.map.get_mut(&key) {
            on.live.retain(|(x, _)| *x != r);
            on.settled.retain(|(p, _)| p.id != id);
            if on.live.is_empty() && on.settled.is_empty() {
                inner.map.remove(&key);
            }
        }
    }

    /// The watch starts listing again: what it does not list before [`Self::end_relist`] is gone.
    pub fn begin_relist(&self) {
        self.inner().epoch += 1;
    }

    /// The watch listed everything: drops what the list did not contain.
    pub fn end_relist(&self) {
        let mut inner = self.inner();
        let epoch = inner.epoch;
        inner.map.retain(|_, on| {
            on.live.retain(|(_, e)| *e == epoch);
            on.settled.retain(|(_, e)| *e == epoch);
            !(on.live.is_empty() && on.settled.is_empty())
        });
    }

    /// Guard summaries of every WorkflowExecution on a target; `fresh` maps a cached object to
    /// the newest copy known ([`Context::freshest`]).
    pub fn priors(
        &self,
        key: &TargetKey,
        store: &Store<WorkflowExecution>,
        fresh: impl Fn(Arc<WorkflowExecution>) -> Arc<WorkflowExecution>,
    ) -> Vec<Prior> {
        let (live, mut priors) = {
            let inner = self.inner();
            let Some(on) = inner.map.get(key) else {
                return Vec::new();
            };
            let live: Vec<_> = on.live.iter().filter_map(|(r, _)| store.get(r)).collect();
            let settled: Vec<Prior> = on.settled.iter().map(|(p, _)| p.clone()).collect();
            (live, settled)
        };
        priors.extend(live.into_iter().map(|o| Prior::of(&fresh(o))));
        priors
    }

    /// The cached (not settled) WorkflowExecutions on a target.
    pub fn live(
        &self,
        key: &TargetKey,
        store: &Store<WorkflowExecution>,
    ) -> Vec<Arc<WorkflowExecution>> {
        let inner = self.inner();
        inner
            .map
            .get(key)
            .map(|on| on.live.iter().filter_map(|(r, _)| store.get(r)).collect())
            .unwrap_or_default()
    }

    /// Number of WorkflowExecutions indexed (cached and settled).
    pub fn len(&self) -> usize {
        self.inner()
            .map
            .values()
            .map(|on| on.live.len() + on.settled.len())
            .sum()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A reference without the version and UID that `ObjectRef::from_obj` carries (lookups ignore them).
fn key_of(wfe: &WorkflowExecution) -> ObjectRef<WorkflowExecution> {
    ObjectRef::new(&wfe.name_any()).within(&wfe.namespace().unwrap_or_default())
}

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
    /// Kubernetes Events.
    pub recorder: Recorder,
    /// Time.
    pub clock: Clock,
    /// Serializes guard evaluation and dispatch per target within this process.
    target_locks: Mutex<HashMap<TargetKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Dispatches this process made that the cache may not show yet: target → (uid, namespace/name).
    claims: Mutex<HashMap<TargetKey, (String, String)>>,
    /// Audit events acknowledged but not yet persisted in the status, by UID.
    acked: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Consecutive audit delivery failures by UID (for the retry delay).
    audit_failures: Mutex<HashMap<String, u32>>,
    /// Refused clearance reasons already reported, by UID.
    refused_clearances: Mutex<HashMap<String, String>>,
    /// This process's status writes that the cache may not show yet, by UID.
    recent: Mutex<HashMap<String, Recent>>,
    /// When this process recorded an execution's outcome (sub-second, unlike `completionTime`),
    /// by UID: the lock release is scheduled from it.
    outcome_recorded: Mutex<HashMap<String, Timestamp>>,
}

/// The newest copy of an object this process wrote, and the versions that copy supersedes.
/// Resource versions are opaque: a cached copy is known to be stale only when its version is
/// one this process replaced, never by comparing versions.
#[derive(Debug)]
struct Recent {
    superseded: HashSet<String>,
    latest: Arc<WorkflowExecution>,
}

/// Bound of the per-object maps that are normally emptied as the cache catches up: past it they
/// are cleared (only an optimisation is lost).
const MAX_TRACKED: usize = 50_000;

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("cfg", &self.cfg)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Context {
    /// A context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        registry: Registry,
        cfg: ControllerConfig,
        store: Store<WorkflowExecution>,
        index: Arc<TargetIndex>,
        audit: Arc<dyn AuditSink>,
        recorder: Recorder,
        clock: Clock,
    ) -> Self {
        Context {
            client,
            registry,
            cfg,
            store,
            index,
            audit,
            recorder,
            clock,
            target_locks: Mutex::default(),
            claims: Mutex::default(),
            acked: Mutex::default(),
            audit_failures: Mutex::default(),
            refused_clearances: Mutex::default(),
            recent: Mutex::default(),
            outcome_recorded: Mutex::default(),
        }
    }

    /// The newest known copy of `wfe`: the cached copy, unless this process has written a newer
    /// one that the watch has not delivered yet. Deciding on the newest copy avoids refused
    /// writes (resourceVersion conflicts), repeated dispatches and repeated audit deliveries.
    pub fn freshest(&self, wfe: Arc<WorkflowExecution>) -> Arc<WorkflowExecution> {
        let Some(uid) = wfe.uid() else {
            return wfe;
        };
        let mut recent = lock(&self.recent);
        let Some(entry) = recent.get(&uid) else {
            return wfe;
        };
        match wfe.resource_version() {
            Some(rv) if entry.superseded.contains(&rv) => entry.latest.clone(),
            // The cache caught up (or somebody else wrote since): it speaks for itself.
            _ => {
                recent.remove(&uid);
                wfe
            }
        }
    }

    fn remember_write(&self, before: &WorkflowExecution, after: &WorkflowExecution) {
        let (Some(uid), Some(rv)) = (after.uid(), before.resource_version()) else {
            return;
        };
        let latest = Arc::new(after.clone());
        let mut recent = lock(&self.recent);
        if recent.len() >= MAX_TRACKED {
            recent.clear();
        }
        let entry = recent.entry(uid).or_insert_with(|| Recent {
            superseded: HashSet::new(),
            latest: latest.clone(),
        });
        entry.superseded.insert(rv);
        entry.latest = latest;
    }

    /// Adds the cleanup finalizer; the object's resourceVersion is a precondition, so a stale copy
    /// gets a conflict instead of overwriting a finalizer list that changed.
    async fn add_finalizer(&self, wfe: &WorkflowExecution) -> Result<WorkflowExecution, Error> {
        let mut finalizers = wfe.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        let patch = json!({
            "metadata": {"resourceVersion": wfe.resource_version(), "finalizers": finalizers},
        });
        let updated = self
            .api(wfe)
            .patch(
                &wfe.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.remember_write(wfe, &updated);
        Ok(updated)
    }

    /// Drops what this process remembers of an object that is gone or settled.
    pub fn forget(&self, uid: &str) {
        lock(&self.claims).retain(|_, (claimant, _)| claimant != uid);
        lock(&self.acked).remove(uid);
        lock(&self.audit_failures).remove(uid);
        lock(&self.refused_clearances).remove(uid);
        lock(&self.recent).remove(uid);
        lock(&self.outcome_recorded).remove(uid);
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    fn api(&self, wfe: &WorkflowExecution) -> Api<WorkflowExecution> {
        Api::namespaced(self.client.clone(), &wfe.namespace().unwrap_or_default())
    }

    fn target_lock(&self, key: &TargetKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.target_locks);
        if locks.len() > 4096 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(key.clone()).or_default().clone()
    }

    /// Publishes a Kubernetes Event without delaying the reconcile.
    fn event(
        &self,
        wfe: &WorkflowExecution,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let recorder = self.recorder.clone();
        let reference = wfe.object_ref(&());
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "cannot publish event");
            }
        });
    }

    /// Writes a status with the object's resourceVersion as a precondition, so a decision taken on
    /// a stale copy fails with a conflict instead of overwriting a newer state.
    async fn write_status(
        &self,
        wfe: &WorkflowExecution,
        mut status: WorkflowExecutionStatus,
    ) -> Result<WorkflowExecution, Error> {
        let uid = wfe.uid().unwrap_or_default();
        let acked = lock(&self.acked).get(&uid).cloned();
        if let Some(acked) = &acked {
            merge_delivered(&mut status, acked);
        }
        self.mark_audit_recorded(&mut status);
        let patch = json!({
            "metadata": {"resourceVersion": wfe.resource_version()},
            "status": status,
        });
        let updated = self
            .api(wfe)
            .patch_status(
                &wfe.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        if acked.is_some() {
            lock(&self.acked).remove(&uid);
        }
        self.remember_write(wfe, &updated);
        Ok(updated)
    }

    /// Sets `AuditRecorded=True` in a terminal status once every event due is acknowledged, so
    /// that the acknowledgement travels with the write that is made anyway.
    fn mark_audit_recorded(&self, status: &mut WorkflowExecutionStatus) {
        if !status.phase.is_some_and(|p| p.is_terminal()) {
            return;
        }
        if !audit::all_delivered(status) {
            return;
        }
        let g = status.observed_generation;
        let message = format!(
            "{} audit event(s) acknowledged by the audit sink",
            status.audit_delivered.len()
        );
        let now = self.now();
        transitions::set_condition(
            &mut status.conditions,
            cond::AUDIT_RECORDED,
            true,
            "AuditSucceeded",
            &message,
            g,
            now,
        );
    }

    /// Sets `AuditRecorded=False` with the delivery error.
    fn mark_audit_failed(&self, status: &mut WorkflowExecutionStatus, e: &audit::AuditError) {
        let g = status.observed_generation;
        transitions::set_condition(
            &mut status.conditions,
            cond::AUDIT_RECORDED,
            false,
            "AuditFailed",
            &e.to_string(),
            g,
            self.now(),
        );
    }

    /// Writes the outcome of an execution. The outcome follows from the execution resource's
    /// final state, so the audit events it makes due are delivered first and acknowledged in the
    /// same write; should the write fail, the retry finds the same outcome and the receiver
    /// recognises the redelivered events by their `event_id`.
    async fn write_outcome(
        &self,
        wfe: &WorkflowExecution,
        mut status: WorkflowExecutionStatus,
    ) -> Result<WorkflowExecution, Error> {
        let mut candidate = wfe.clone();
        candidate.status = Some(status.clone());
        if let Err(e) = self.send_due(&candidate).await {
            self.mark_audit_failed(&mut status, &e);
        }
        let updated = self.write_status(wfe, status).await?;
        let mut recorded = lock(&self.outcome_recorded);
        if recorded.len() >= MAX_TRACKED {
            recorded.clear();
        }
        recorded.insert(wfe.uid().unwrap_or_default(), self.now());
        Ok(updated)
    }

    fn executor(&self, wfe: &WorkflowExecution) -> Option<&Arc<dyn Executor>> {
        self.registry.get(wfe.engine())
    }

    // ---------------------------------------------------------------- Pending

    async fn pending(&self, wfe: Arc<WorkflowExecution>) -> Result<Action, Error> {
        // Validation that the API server cannot do.
        if let Err(e) = wfe.spec.validate() {
            let reason = if e.0.iter().any(|f| f.field == "spec.executionEngine") {
                FailureReason::UnsupportedEngine
            } else {
                FailureReason::ConfigurationError
            };
            return self
                .fail_before(
                    &wfe,
                    Failure::new(reason, e.to_string(), false),
                    None,
                    false,
                    "WorkflowValidationFailed",
                )
                .await;
        }
        let executor = match self.registry.resolve(wfe.engine()).await {
            Ok(executor) => executor.clone(),
            Err(message) => {
                let f = Failure::new(FailureReason::UnsupportedEngine, message, false);
                return self
                    .fail_before(&wfe, f, None, false, "WorkflowValidationFailed")
                    .await;
            }
        };
        if let Err(errors) = executor.validate(&wfe) {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let f = Failure::new(FailureReason::ConfigurationError, message, false);
            return self
                .fail_before(&wfe, f, None, false, "WorkflowValidationFailed")
                .await;
        }

        // #18: canonical target and workflow policy (crate::preflight).
        if let Some(r) = crate::preflight::check(&self.client, &self.cfg, &wfe).await? {
            return self
                .fail_before(&wfe, r.failure, None, false, r.event_reason)
                .await;
        }

        // Guards and dispatch, one target at a time.
        let key = wfe.target_key();
        let target_lock = self.target_lock(&key);
        let _held = target_lock.lock().await;
        // Re-read from the cache: another reconcile may have written this object meanwhile.
        let wfe = self.freshest(self.store.get(&ObjectRef::from_obj(&*wfe)).unwrap_or(wfe));
        if wfe.phase() != Phase::Pending || wfe.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let now = self.now();
        let mut others: Vec<Prior> = self.index.priors(&key, &self.store, |o| self.freshest(o));
        if let Some(claim) = self.claim_on(&key, &wfe) {
            others.push(claim);
        }
        match evaluate(
            &Prior::of(&wfe),
            &others,
            &self.cfg.guards,
            now,
            &wfe.spec.target_resource,
        ) {
            Verdict::Proceed => self.dispatch(&wfe, &executor, &key).await,
            Verdict::Deduplicated { holder } => {
                metrics::blocked("Deduplicated");
                let message = format!(
                    "execution resource for {} is held by WorkflowExecution {holder}",
                    wfe.spec.target_resource
                );
                let f = Failure::new(FailureReason::Deduplicated, message, false);
                self.fail_before(&wfe, f, Some(holder), false, "WorkflowFailed")
                    .await
            }
            Verdict::Fail { reason, message } => {
                metrics::blocked(reason.as_str());
                self.fail_before(
                    &wfe,
                    Failure::new(reason, message, false),
                    None,
                    false,
                    "WorkflowFailed",
                )
                .await
            }
            Verdict::Wait {
                reason,
                until,
                message,
            } => {
                let already = wfe.condition(cond::BLOCKED).is_some_and(|c| {
                    c.status == "True" && c.reason == reason && c.message == message
                });
                if !already || wfe.status.as_ref().and_then(|s| s.phase).is_none() {
                    metrics::blocked(reason);
                    self.write_status(&wfe, transitions::blocked(&wfe, reason, &message, now))
                        .await?;
                    self.event(
                        &wfe,
                        EventType::Normal,
                        reason,
                        "Wait",
                        format!("Execution deferred: {message}"),
                    );
                }
                let wait = Duration::try_from(until.duration_since(now)).unwrap_or_default();
                Ok(Action::requeue(wait + Duration::from_millis(50)))
            }
        }
    }

    /// A dispatch of this process on `key` by another WorkflowExecution that the cache does not
    /// show as active yet.
    fn claim_on(&self, key: &TargetKey, me: &WorkflowExecution) -> Option<Prior> {
        let mut claims = lock(&self.claims);
        let (uid, id) = claims.get(key)?.clone();
        if Some(&uid) == me.uid().as_ref() {
            return None;
        }
        let cached = self
            .index
            .live(key, &self.store)
            .into_iter()
            .find(|o| o.uid().as_deref() == Some(uid.as_str()));
        match cached {
            // The cache caught up (it speaks for itself), or the claimant was deleted.
            Some(o) if o.phase() != Phase::Pending || o.metadata.deletion_timestamp.is_some() => {
                claims.remove(key);
                None
            }
            None => {
                claims.remove(key);
                None
            }
            Some(_) => Some(Prior {
                id,
                phase: Phase::Running,
                attempted: true,
                created: None,
                completed: None,
                failure_reason: None,
                was_execution_failure: false,
                cleared: false,
            }),
        }
    }

    async fn dispatch(
        &self,
        wfe: &WorkflowExecution,
        executor: &Arc<dyn Executor>,
        key: &TargetKey,
    ) -> Result<Action, Error> {
        let engine = wfe.engine().as_str().to_string();
        let outcome = executor.create(wfe).await;
        let (outcome, adopted) = match outcome {
            Ok(CreateOutcome::Adopted(reference)) => (Ok(CreateOutcome::Created(reference)), true),
            other => (other, false),
        };
        match outcome {
            Ok(CreateOutcome::Created(reference) | CreateOutcome::Adopted(reference)) => {
                let now = self.now();
                let status =
                    transitions::running(wfe, &reference, adopted, executor.initial_summary(), now);
                lock(&self.claims).insert(key.clone(), (wfe.uid().unwrap_or_default(), id_of(wfe)));
                let updated = self.write_status(wfe, status).await?;
                if let Some(created) = wfe.metadata.creation_timestamp.as_ref() {
                    metrics::dispatched(
                        &engine,
                        Duration::try_from(now.duration_since(created.0)).unwrap_or_default(),
                    );
                }
                self.event(
                    &updated,
                    EventType::Normal,
                    "ExecutionCreated",
                    "Dispatch",
                    format!(
                        "Created {} {}/{} ({engine} engine)",
                        reference.kind, reference.namespace, reference.name
                    ),
                );
                self.deliver_audit(&updated).await;
                Ok(Action::requeue(self.cfg.running_resync))
            }
            Ok(CreateOutcome::HeldBy { holder, reference }) => {
                metrics::blocked("Deduplicated");
                let message = format!(
                    "{} {}/{} is held by WorkflowExecution {holder}",
                    reference.kind, reference.namespace, reference.name
                );
                let f = Failure::new(FailureReason::Deduplicated, message, false);
                self.fail_before(wfe, f, Some(holder.to_string()), false, "WorkflowFailed")
                    .await
            }
            Err(e) => match e.failure_reason() {
                Some(reason) => {
                    let f = Failure::new(reason, e.message().to_string(), false);
                    self.fail_before(wfe, f, None, true, "WorkflowFailed").await
                }
                None => {
                    if wfe.status.as_ref().and_then(|s| s.phase).is_none() {
                        // Never leave the phase empty while retrying.
                        let _ = self.write_status(wfe, transitions::pending(wfe)).await;
                    }
                    Err(e.into())
                }
            },
        }
    }

    async fn fail_before(
        &self,
        wfe: &WorkflowExecution,
        failure: Failure,
        deduplicated_by: Option<String>,
        attempted: bool,
        event_reason: &str,
    ) -> Result<Action, Error> {
        let now = self.now();
        let kind = self
            .executor(wfe)
            .map_or("execution resource", |e| e.resource_kind());
        let status =
            transitions::pre_execution_failed(wfe, kind, &failure, deduplicated_by, attempted, now);
        let updated = self.write_status(wfe, status).await?;
        metrics::terminal(wfe.engine().as_str(), "Failed", Duration::ZERO);
        self.event(
            &updated,
            EventType::Warning,
            event_reason,
            "Validate",
            format!(
                "Pre-execution failure: {} - {}",
                failure.reason, failure.message
            ),
        );
        self.after_terminal(Arc::new(updated)).await
    }

    // ---------------------------------------------------------------- Running

    async fn running(&self, wfe: Arc<WorkflowExecution>) -> Result<Action, Error> {
        let Some(executor) = self.executor(&wfe).cloned() else {
            let f = Failure::new(
                FailureReason::UnsupportedEngine,
                format!(
                    "execution engine {:?} is no longer registered; its execution cannot be observed",
                    wfe.engine().as_str()
                ),
                true,
            );
            return self.finish_failed(&wfe, None, f, self.now()).await;
        };
        let observation = executor.status(&wfe).await?;
        let now = self.now();
        match observation {
            Observation::Running { summary } => {
                if let Some(status) = transitions::progress(&wfe, &summary, now) {
                    self.write_status(&wfe, status).await?;
                }
                // Deliver what may have failed at dispatch time.
                self.deliver_audit(&wfe).await;
                Ok(Action::requeue(
                    self.audit_retry(&wfe).unwrap_or(self.cfg.running_resync),
                ))
            }
            Observation::Succeeded {
                summary,
                finished_at,
            } => {
                let finished = finished_at.map(|t| t.0).unwrap_or(now).min(now);
                let updated = self
                    .write_outcome(&wfe, transitions::succeeded(&wfe, summary, finished, now))
                    .await?;
                let status = updated.status.clone().unwrap_or_default();
                let duration = elapsed(&status.start_time, &status.completion_time);
                metrics::terminal(wfe.engine().as_str(), "Succeeded", duration);
                metrics::completion_propagated(
                    wfe.engine().as_str(),
                    Duration::try_from(now.duration_since(finished)).unwrap_or_default(),
                );
                self.event(
                    &updated,
                    EventType::Normal,
                    "WorkflowCompleted",
                    "Complete",
                    format!(
                        "Workflow {} completed successfully in {}",
                        wfe.spec.workflow_ref.workflow_id,
                        status.duration.clone().unwrap_or_default()
                    ),
                );
                self.after_terminal(Arc::new(updated)).await
            }
            Observation::Failed {
                summary,
                failure,
                finished_at,
            } => {
                let finished = finished_at.map(|t| t.0).unwrap_or(now).min(now);
                metrics::completion_propagated(
                    wfe.engine().as_str(),
                    Duration::try_from(now.duration_since(finished)).unwrap_or_default(),
                );
                self.finish_failed(&wfe, Some(summary), failure, finished)
                    .await
            }
            Observation::DeletedExternally { kind, name } => {
                let message = format!(
                    "{kind} {}/{name} was deleted externally while the workflow was running",
                    self.cfg.execution_namespace
                );
                self.finish_failed(
                    &wfe,
                    None,
                    Failure::new(FailureReason::Unknown, message, true),
                    now,
                )
                .await
            }
        }
    }

    async fn finish_failed(
        &self,
        wfe: &WorkflowExecution,
        summary: Option<wfe_api::ExecutionStatusSummary>,
        failure: Failure,
        finished: Timestamp,
    ) -> Result<Action, Error> {
        let now = self.now();
        let updated = self
            .write_outcome(
                wfe,
                transitions::execution_failed(wfe, summary, &failure, finished, now),
            )
            .await?;
        let status = updated.status.clone().unwrap_or_default();
        metrics::terminal(
            wfe.engine().as_str(),
            "Failed",
            elapsed(&status.start_time, &status.completion_time),
        );
        self.event(
            &updated,
            EventType::Warning,
            "WorkflowFailed",
            "Fail",
            format!(
                "Workflow {} failed: {} - {}",
                wfe.spec.workflow_ref.workflow_id, failure.reason, failure.message
            ),
        );
        self.after_terminal(Arc::new(updated)).await
    }

    // ---------------------------------------------------------------- Terminal

    /// Work on a terminal WorkflowExecution: audit delivery, block clearing, lock release.
    async fn after_terminal(&self, wfe: Arc<WorkflowExecution>) -> Result<Action, Error> {
        let key = wfe.target_key();
        {
            let mut claims = lock(&self.claims);
            if claims
                .get(&key)
                .is_some_and(|(uid, _)| Some(uid) == wfe.uid().as_ref())
            {
                claims.remove(&key);
            }
        }
        let mut wfe = wfe;
        if let Some(updated) = self.clear_block(&wfe).await? {
            wfe = Arc::new(updated);
        }
        self.deliver_audit(&wfe).await;
        let mut next: Option<Duration> = self.audit_retry(&wfe);

        // Release the lock (delete the execution resource) once the cooldown is over.
        let status = wfe.status.clone().unwrap_or_default();
        if status.execution_ref.is_some() && status.lock_released_time.is_none() {
            let cooldown = k8s_openapi::jiff::SignedDuration::try_from(self.cfg.guards.cooldown)
                .unwrap_or_default();
            let uid = wfe.uid().unwrap_or_default();
            let recorded = lock(&self.outcome_recorded).get(&uid).copied();
            let release_at = match recorded {
                Some(at) => at + cooldown,
                // Recorded by an earlier process: `completionTime` has whole seconds, so spread
                // the releases over the following second instead of issuing them all at once.
                None => {
                    let done = status
                        .completion_time
                        .as_ref()
                        .map(|t| t.0)
                        .unwrap_or_else(|| self.now());
                    done + cooldown + release_spread(&uid)
                }
            };
            let now = self.now();
            if now >= release_at {
                if let Some(executor) = self.executor(&wfe) {
                    match executor.delete(&wfe).await {
                        Ok(outcome) => {
                            let mut s = wfe.status.clone().unwrap_or_default();
                            s.lock_released_time = Some(Time(now));
                            let updated = self.write_status(&wfe, s).await?;
                            lock(&self.outcome_recorded).remove(&uid);
                            if outcome == DeleteOutcome::Deleted {
                                self.event(
                                    &updated,
                                    EventType::Normal,
                                    "LockReleased",
                                    "Release",
                                    format!(
                                        "Lock released for {} after cooldown",
                                        wfe.spec.target_resource
                                    ),
                                );
                            }
                        }
                        Err(e) => {
                            self.event(
                                &wfe,
                                EventType::Warning,
                                "CleanupFailed",
                                "Release",
                                format!("Cleanup failed after cooldown: {e}"),
                            );
                            return Err(e.into());
                        }
                    }
                }
            } else {
                let wait = Duration::try_from(release_at.duration_since(now)).unwrap_or_default()
                    + Duration::from_millis(5);
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        Ok(next.map_or_else(Action::await_change, Action::requeue))
    }

    /// Records a block clearance requested with the annotation (BR-WE-013).
    async fn clear_block(
        &self,
        wfe: &WorkflowExecution,
    ) -> Result<Option<WorkflowExecution>, Error> {
        if wfe.phase() != Phase::Failed
            || wfe
                .status
                .as_ref()
                .is_some_and(|s| s.block_clearance.is_some())
        {
            return Ok(None);
        }
        let Some(reason) = wfe
            .annotations()
            .get(CLEAR_BLOCK_ANNOTATION)
            .map(|r| r.trim().to_string())
        else {
            return Ok(None);
        };
        let uid = wfe.uid().unwrap_or_default();
        if word_count(&reason) < MIN_CLEAR_REASON_WORDS {
            let mut refused = lock(&self.refused_clearances);
            if refused.get(&uid) != Some(&reason) {
                refused.insert(uid, reason.clone());
                self.event(
                    wfe,
                    EventType::Warning,
                    "BlockClearRefused",
                    "ClearBlock",
                    format!(
                        "The {CLEAR_BLOCK_ANNOTATION} reason has {} word(s); at least {MIN_CLEAR_REASON_WORDS} are required. Nothing was cleared.",
                        word_count(&reason)
                    ),
                );
            }
            return Ok(None);
        }
        let now = self.now();
        // #18: the identity the API server stamped (admission policies), see crate::clearance.
        let clearer = crate::clearance::clearer(wfe.annotations());
        let mut status = wfe.status.clone().unwrap_or_default();
        status.block_clearance = Some(BlockClearance {
            cleared_at: Some(Time(now)),
            cleared_by: clearer.user.clone(),
            clear_reason: reason,
            clear_method: ClearMethod::Annotation,
        });
        let updated = self.write_status(wfe, status).await?;
        lock(&self.refused_clearances).remove(&uid);
        let type_ = if clearer.stamped {
            EventType::Normal
        } else {
            EventType::Warning
        };
        self.event(
            &updated,
            type_,
            "BlockCleared",
            "ClearBlock",
            format!(
                "Block on {} cleared by annotation; {}",
                wfe.spec.target_resource, clearer.how
            ),
        );
        Ok(Some(updated))
    }

    // ---------------------------------------------------------------- Audit

    /// Sends the audit events of `wfe` that are due and not acknowledged yet, and keeps the
    /// acknowledgements in memory (the next status write persists them). `Ok(false)`: nothing
    /// was due.
    async fn send_due(&self, wfe: &WorkflowExecution) -> Result<bool, audit::AuditError> {
        let uid = wfe.uid().unwrap_or_default();
        let acked = lock(&self.acked).get(&uid).cloned().unwrap_or_default();
        let events: Vec<audit::AuditEvent> = audit::pending(wfe)
            .into_iter()
            .filter(|e| !acked.contains(&e.event_type))
            .collect();
        if events.is_empty() {
            return Ok(false);
        }
        match self.audit.send(&events).await {
            Ok(()) => {
                metrics::audit("delivered", events.len());
                lock(&self.audit_failures).remove(&uid);
                let mut all = acked;
                all.extend(events.iter().map(|e| e.event_type.clone()));
                lock(&self.acked).insert(uid, all);
                Ok(true)
            }
            Err(e) => {
                metrics::audit("failed", events.len());
                let n = {
                    let mut f = lock(&self.audit_failures);
                    let n = f.entry(uid).or_default();
                    *n += 1;
                    *n
                };
                tracing::warn!(error = %e, wfe = %id_of(wfe), attempt = n, "audit delivery failed; will retry");
                Err(e)
            }
        }
    }

    /// Sends the audit events due; persists the acknowledgements at once for a terminal object
    /// (nothing else may be written for a while), else with the next status write.
    async fn deliver_audit(&self, wfe: &WorkflowExecution) {
        match self.send_due(wfe).await {
            Ok(false) => {}
            Ok(true) => {
                if wfe.phase().is_terminal() {
                    let status = wfe.status.clone().unwrap_or_default();
                    if let Err(e) = self.write_status(wfe, status).await {
                        tracing::debug!(error = %e, "audit acknowledgement will be persisted later");
                    }
                }
            }
            Err(e) => {
                if wfe
                    .condition(cond::AUDIT_RECORDED)
                    .is_none_or(|c| c.status != "False")
                {
                    let mut status = wfe.status.clone().unwrap_or_default();
                    self.mark_audit_failed(&mut status, &e);
                    let _ = self.write_status(wfe, status).await;
                }
            }
        }
    }

    /// When to retry audit delivery for this object, if it has pending events.
    fn audit_retry(&self, wfe: &WorkflowExecution) -> Option<Duration> {
        let failures = *lock(&self.audit_failures).get(&wfe.uid().unwrap_or_default())?;
        Some(Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60)))
    }

    // ---------------------------------------------------------------- Deletion

    async fn cleanup(&self, wfe: Arc<WorkflowExecution>) -> Result<Action, Error> {
        if let Some(executor) = self.executor(&wfe) {
            match executor.delete(&wfe).await {
                Ok(_) => {}
                Err(e) => {
                    self.event(
                        &wfe,
                        EventType::Warning,
                        "CleanupFailed",
                        "Delete",
                        format!("Cleanup failed during finalization: {e}"),
                    );
                    return Err(e.into());
                }
            }
        }
        // Deliver what is still due before the object disappears.
        let pending = audit::pending(&wfe);
        if !pending.is_empty() {
            self.audit.send(&pending).await?;
            metrics::audit("delivered", pending.len());
        }
        self.forget(&wfe.uid().unwrap_or_default());
        self.event(
            &wfe,
            EventType::Normal,
            "WorkflowExecutionDeleted",
            "Delete",
            format!(
                "WorkflowExecution cleanup completed (phase: {})",
                wfe.phase()
            ),
        );
        Ok(Action::await_change())
    }
}

fn merge_delivered(status: &mut WorkflowExecutionStatus, acked: &BTreeSet<String>) {
    for t in acked {
        if !status.audit_delivered.contains(t) {
            status.audit_delivered.push(t.clone());
        }
    }
}

/// A delay in [0, 1 s) that is stable for one object and spread evenly across objects.
fn release_spread(uid: &str) -> k8s_openapi::jiff::SignedDuration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    let millis = i64::try_from(h.finish() % 1000).unwrap_or_default();
    k8s_openapi::jiff::SignedDuration::from_millis(millis)
}

fn id_of(wfe: &WorkflowExecution) -> String {
    format!("{}/{}", wfe.namespace().unwrap_or_default(), wfe.name_any())
}

fn elapsed(start: &Option<Time>, end: &Option<Time>) -> Duration {
    match (start, end) {
        (Some(s), Some(e)) => Duration::try_from(e.0.duration_since(s.0)).unwrap_or_default(),
        _ => Duration::ZERO,
    }
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

/// Retries failed reconciles with a delay that grows with repeated conflicts/errors but stays
/// bounded, so bad input can never make the operator hot-loop.
pub fn error_policy(wfe: Arc<WorkflowExecution>, error: &Error, _ctx: Arc<Context>) -> Action {
    metrics::reconcile_error(error.category());
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
