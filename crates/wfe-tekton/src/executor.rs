//! [`TektonExecutor`]: the [`Executor`] that runs WorkflowExecutions as PipelineRuns.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy},
};
use wfe_api::{ExecutionEngine, ExecutionRef, FieldError, WorkflowExecution};
use wfe_executor::{
    Availability, CreateOutcome, DeleteOutcome, Executor, ExecutorError, Observation, Owner,
    execution_name_for, is_already_exists, is_not_found, is_owned_by, owner_of,
    watch::{Changes, ResourceCache},
};

use crate::{
    build::{BuildError, TektonConfig, build_pipeline_run},
    classify::observe,
    types::{Outcome, PipelineRun, TEKTON_API_VERSION, TaskRun},
};

/// The resource kind of the execution resource.
pub const RESOURCE_KIND: &str = "PipelineRun";
/// Owner reported for an existing PipelineRun that carries none of our labels.
pub const UNKNOWN_OWNER: &str = "<unknown>";
/// How long a negative availability answer is trusted before the API is asked again.
pub const AVAILABILITY_RECHECK: Duration = Duration::from_secs(10);
/// What an operator is told when Tekton is missing.
pub const UNAVAILABLE_HINT: &str = "install Tekton Pipelines (the tekton.dev CRDs, serving \
     pipelineruns.tekton.dev/v1) or use `executionEngine: job`";

/// How many create rounds (POST, inspect the existing resource, remove a stale one) are tried
/// before giving up with a transient error.
const CREATE_ROUNDS: usize = 3;
/// How long create waits for a stale PipelineRun to disappear after deleting it.
const STALE_DELETE_WAIT: Duration = Duration::from_secs(5);
const STALE_DELETE_POLL: Duration = Duration::from_millis(100);

/// The cached answer of [`TektonExecutor::availability`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum AvailabilityCache {
    /// Never asked (or the last answer could not be trusted).
    #[default]
    Unknown,
    /// Tekton was served: trusted for the life of the process.
    Available,
    /// Tekton was not served at `checked_at`.
    Unavailable {
        /// When the API said so.
        checked_at: Instant,
        /// Why.
        message: String,
    },
}

impl AvailabilityCache {
    /// The cached answer if it is still good at `now`.
    pub(crate) fn cached(&self, now: Instant, recheck: Duration) -> Option<Availability> {
        match self {
            AvailabilityCache::Unknown => None,
            AvailabilityCache::Available => Some(Availability::Available),
            AvailabilityCache::Unavailable {
                checked_at,
                message,
            } => (now.saturating_duration_since(*checked_at) < recheck)
                .then(|| Availability::Unavailable(message.clone())),
        }
    }
}

/// Runs WorkflowExecutions as `tekton.dev/v1` PipelineRuns in the execution namespace.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use wfe_executor::Registry;
/// use wfe_tekton::{TektonConfig, TektonExecutor};
///
/// let client = kube::Client::try_default().await?;
/// let tekton = TektonExecutor::new(client, TektonConfig::default());
/// let registry = Registry::new().with(Arc::new(tekton));
/// # let _ = registry;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TektonExecutor {
    client: Client,
    config: TektonConfig,
    availability: Arc<Mutex<AvailabilityCache>>,
    recheck: Duration,
    /// PipelineRuns of the execution namespace, fed by the watch started with `changes`.
    cache: ResourceCache<PipelineRun>,
}

impl std::fmt::Debug for TektonExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TektonExecutor")
            .field("config", &self.config)
            .field("availability", &self.availability)
            .field("recheck", &self.recheck)
            .finish_non_exhaustive()
    }
}

impl TektonExecutor {
    /// An executor that creates PipelineRuns in `config.namespace`.
    pub fn new(client: Client, config: TektonConfig) -> Self {
        TektonExecutor {
            client,
            config,
            availability: Arc::default(),
            recheck: AVAILABILITY_RECHECK,
            cache: ResourceCache::default(),
        }
    }

    /// Changes how long a negative availability answer is trusted (default
    /// [`AVAILABILITY_RECHECK`]).
    pub fn with_availability_recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &TektonConfig {
        &self.config
    }

    fn pipeline_runs(&self) -> Api<PipelineRun> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn task_runs(&self) -> Api<TaskRun> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn reference(&self, name: &str) -> ExecutionRef {
        ExecutionRef {
            kind: RESOURCE_KIND.to_string(),
            name: name.to_string(),
            namespace: self.config.namespace.clone(),
        }
    }

    fn set_availability(&self, value: AvailabilityCache) {
        // A poisoned lock only means another thread panicked while writing a plain value.
        let mut guard = self.availability.lock().unwrap_or_else(|p| p.into_inner());
        *guard = value;
    }

    fn cached_availability(&self) -> Option<Availability> {
        let guard = self.availability.lock().unwrap_or_else(|p| p.into_inner());
        guard.cached(Instant::now(), self.recheck)
    }

    /// Asks the API server (discovery of `tekton.dev/v1`) whether PipelineRuns are served.
    /// An error means the API server could not be asked.
    async fn probe(&self) -> Result<Availability, kube::Error> {
        match self
            .client
            .list_api_group_resources(TEKTON_API_VERSION)
            .await
        {
            Ok(list) => {
                if list.resources.iter().any(|r| r.name == "pipelineruns") {
                    Ok(Availability::Available)
                } else {
                    Ok(Availability::Unavailable(format!(
                        "the API server serves {TEKTON_API_VERSION} but not pipelineruns: {UNAVAILABLE_HINT}"
                    )))
                }
            }
            Err(e) if is_not_found(&e) => Ok(Availability::Unavailable(format!(
                "the API server does not serve {TEKTON_API_VERSION} (pipelineruns.tekton.dev): {UNAVAILABLE_HINT}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Reads the PipelineRun; `None` when it does not exist.
    async fn get(&self, name: &str) -> Result<Option<PipelineRun>, ExecutorError> {
        match self.pipeline_runs().get(name).await {
            Ok(pr) => Ok(Some(pr)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ExecutorError::from_kube(
                &format!("read PipelineRun {}/{name}", self.config.namespace),
                e,
            )),
        }
    }

    /// The PipelineRun of `wfe`: from the watch cache when it holds one owned by `wfe`, else from
    /// the API server (the cache may not have seen a new run yet, or still show a replaced one).
    async fn run_of(&self, wfe: &WorkflowExecution) -> Result<Option<PipelineRun>, ExecutorError> {
        let name = execution_name_for(wfe);
        if let Some(pr) = self.cache.owned(&self.config.namespace, &name, wfe) {
            return Ok(Some(PipelineRun::clone(&pr)));
        }
        self.get(&name).await
    }

    /// Reads the TaskRuns among the children of `pr`, by name. Missing TaskRuns (already garbage
    /// collected or not yet cached) and TaskRuns the operator may not read are skipped.
    async fn child_task_runs(
        &self,
        pr: &PipelineRun,
    ) -> Result<BTreeMap<String, TaskRun>, ExecutorError> {
        let mut out = BTreeMap::new();
        let Some(status) = &pr.status else {
            return Ok(out);
        };
        let api = self.task_runs();
        for child in status.child_references.iter().filter(|c| c.is_task_run()) {
            if child.name.is_empty() || out.contains_key(&child.name) {
                continue;
            }
            match api.get(&child.name).await {
                Ok(tr) => {
                    out.insert(child.name.clone(), tr);
                }
                Err(e) if is_not_found(&e) => {
                    tracing::debug!(taskrun = %child.name, "child TaskRun not found; skipped");
                }
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    tracing::warn!(
                        taskrun = %child.name,
                        "not allowed to read TaskRuns; task progress and failure details are incomplete: {}",
                        s.message
                    );
                }
                Err(e) => {
                    return Err(ExecutorError::from_kube(
                        &format!(
                            "read TaskRun {}/{} of PipelineRun {}",
                            self.config.namespace,
                            child.name,
                            pr.name_any()
                        ),
                        e,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Deletes a finished PipelineRun of another WorkflowExecution (guarded by its UID) and waits
    /// briefly until it is gone. `Ok(true)` when the name is free (or holds something else now,
    /// which the next create round inspects), `Ok(false)` when it is still being deleted.
    async fn remove_stale(&self, stale: &PipelineRun) -> Result<bool, ExecutorError> {
        let name = stale.name_any();
        let uid = stale.uid();
        if stale.metadata.deletion_timestamp.is_none() {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                preconditions: Some(Preconditions {
                    uid: uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match self.pipeline_runs().delete(&name, &dp).await {
                Ok(_) => {}
                // Gone already, or replaced (UID precondition failed): inspect again.
                Err(e) if is_not_found(&e) || is_already_exists(&e) => return Ok(true),
                Err(e) => {
                    return Err(ExecutorError::from_kube(
                        &format!("delete stale PipelineRun {}/{name}", self.config.namespace),
                        e,
                    ));
                }
            }
        }
        let deadline = Instant::now() + STALE_DELETE_WAIT;
        loop {
            match self.get(&name).await? {
                None => return Ok(true),
                Some(current) if current.uid() != uid => return Ok(true),
                Some(_) if Instant::now() >= deadline => return Ok(false),
                Some(_) => tokio::time::sleep(STALE_DELETE_POLL).await,
            }
        }
    }
}

/// The owner of an existing PipelineRun, with a placeholder for one without our labels.
fn holder_of(pr: &PipelineRun) -> Owner {
    owner_of(&pr.metadata).unwrap_or_else(|| Owner {
        name: UNKNOWN_OWNER.to_string(),
        namespace: UNKNOWN_OWNER.to_string(),
        uid: None,
    })
}

/// What to do with a PipelineRun found where ours should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// It is ours: adopt it.
    Adopt,
    /// Another WorkflowExecution's live run, or a resource we did not label: report the holder.
    Held(Owner),
    /// Another WorkflowExecution's finished (or terminating) run: delete it and create ours.
    Stale(Owner),
}

/// Decides about an existing PipelineRun with our deterministic name (pure).
///
/// A resource without our owner labels was not created by this operator; it is never deleted and
/// is reported as held by an owner named [`UNKNOWN_OWNER`] (the contract has no "unknown owner"
/// case).
pub(crate) fn classify_existing(existing: &PipelineRun, wfe: &WorkflowExecution) -> Existing {
    if is_owned_by(&existing.metadata, wfe) {
        return Existing::Adopt;
    }
    match owner_of(&existing.metadata) {
        None => Existing::Held(holder_of(existing)),
        Some(owner) => {
            if existing.is_finished() || existing.metadata.deletion_timestamp.is_some() {
                Existing::Stale(owner)
            } else {
                Existing::Held(owner)
            }
        }
    }
}

fn build_error(e: BuildError) -> ExecutorError {
    ExecutorError::Invalid(format!("build PipelineRun: {e}"))
}

#[async_trait]
impl Executor for TektonExecutor {
    fn engine(&self) -> ExecutionEngine {
        ExecutionEngine::Tekton
    }

    fn resource_kind(&self) -> &'static str {
        RESOURCE_KIND
    }

    fn watched_resource(&self) -> Option<kube::core::ApiResource> {
        Some(kube::core::ApiResource::erase::<PipelineRun>(&()))
    }

    /// Watches whole PipelineRuns (label-filtered, `managedFields` dropped) and keeps them for
    /// `status` and `delete`; until Tekton is installed the watch retries with backoff.
    fn changes(&self, client: Client, namespace: &str) -> Option<Changes> {
        Some(self.cache.changes(Api::namespaced(client, namespace)))
    }

    /// Available when the API server serves `pipelineruns` in `tekton.dev/v1` (API discovery,
    /// which every authenticated client may read). A positive answer is kept; a negative one is
    /// re-checked after [`AVAILABILITY_RECHECK`], so Tekton installed later is noticed without a
    /// restart. When the API server cannot be asked at all, the engine is reported available
    /// (not cached): creating the PipelineRun then fails with a transient error that is retried,
    /// instead of failing the request for good because of a network blip.
    async fn availability(&self) -> Availability {
        if let Some(cached) = self.cached_availability() {
            return cached;
        }
        match self.probe().await {
            Ok(Availability::Available) => {
                self.set_availability(AvailabilityCache::Available);
                Availability::Available
            }
            Ok(Availability::Unavailable(message)) => {
                tracing::info!("Tekton engine unavailable: {message}");
                self.set_availability(AvailabilityCache::Unavailable {
                    checked_at: Instant::now(),
                    message: message.clone(),
                });
                Availability::Unavailable(message)
            }
            Err(e) => {
                tracing::warn!(
                    "could not discover {TEKTON_API_VERSION}, assuming Tekton is available: {e}"
                );
                Availability::Available
            }
        }
    }

    /// Checks what [`build_pipeline_run`] needs: a bundle reference and a valid timeout.
    fn validate(&self, wfe: &WorkflowExecution) -> Result<(), Vec<FieldError>> {
        build_pipeline_run(wfe, &self.config)
            .map(|_| ())
            .map_err(|e| {
                vec![FieldError {
                    field: e.field().to_string(),
                    message: e.message().to_string(),
                }]
            })
    }

    async fn create(&self, wfe: &WorkflowExecution) -> Result<CreateOutcome, ExecutorError> {
        let desired = build_pipeline_run(wfe, &self.config).map_err(build_error)?;
        let name = execution_name_for(wfe);
        let reference = self.reference(&name);
        let api = self.pipeline_runs();
        for round in 0..CREATE_ROUNDS {
            match api.create(&PostParams::default(), &desired).await {
                Ok(_) => {
                    tracing::info!(pipelinerun = %name, namespace = %self.config.namespace, wfe = %wfe.name_any(), "created PipelineRun");
                    return Ok(CreateOutcome::Created(reference));
                }
                Err(e) if is_already_exists(&e) => {}
                Err(e) => {
                    if is_not_found(&e) {
                        // The PipelineRun API vanished (CRDs removed): ask again next time.
                        self.set_availability(AvailabilityCache::Unknown);
                    }
                    return Err(ExecutorError::from_kube(
                        &format!("create PipelineRun {}/{name}", self.config.namespace),
                        e,
                    ));
                }
            }
            let Some(existing) = self.get(&name).await? else {
                // Deleted between our POST and GET: try again.
                continue;
            };
            match classify_existing(&existing, wfe) {
                Existing::Adopt => {
                    tracing::info!(pipelinerun = %name, wfe = %wfe.name_any(), "adopted existing PipelineRun");
                    return Ok(CreateOutcome::Adopted(reference));
                }
                Existing::Held(holder) => {
                    return Ok(CreateOutcome::HeldBy { reference, holder });
                }
                Existing::Stale(owner) => {
                    // Stale only once its owner recorded the outcome (a crash between create
                    // and the owner's status write leaves a finished run its owner will adopt).
                    if !wfe_executor::owner_settled(&self.client, &owner).await? {
                        return Ok(CreateOutcome::HeldBy {
                            reference,
                            holder: owner,
                        });
                    }
                    tracing::info!(pipelinerun = %name, previous_owner = %owner, round, "removing finished PipelineRun of another WorkflowExecution");
                    if !self.remove_stale(&existing).await? {
                        return Err(ExecutorError::Transient(format!(
                            "PipelineRun {}/{name} of finished WorkflowExecution {owner} is still being deleted; retry later",
                            self.config.namespace
                        )));
                    }
                }
            }
        }
        Err(ExecutorError::Transient(format!(
            "PipelineRun {}/{name} kept changing while it was being created ({CREATE_ROUNDS} attempts); retry later",
            self.config.namespace
        )))
    }

    async fn status(&self, wfe: &WorkflowExecution) -> Result<Observation, ExecutorError> {
        let name = execution_name_for(wfe);
        let deleted = || Observation::DeletedExternally {
            kind: RESOURCE_KIND.to_string(),
            name: name.clone(),
        };
        let Some(pr) = self.run_of(wfe).await? else {
            return Ok(deleted());
        };
        if !is_owned_by(&pr.metadata, wfe) {
            // Replaced by another WorkflowExecution's run: ours is gone.
            return Ok(deleted());
        }
        let task_runs = self.child_task_runs(&pr).await?;
        Ok(observe(&pr, &task_runs))
    }

    async fn delete(&self, wfe: &WorkflowExecution) -> Result<DeleteOutcome, ExecutorError> {
        let name = execution_name_for(wfe);
        let Some(pr) = self.run_of(wfe).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        if !is_owned_by(&pr.metadata, wfe) {
            return Ok(DeleteOutcome::NotOwned);
        }
        let running = pr
            .succeeded()
            .is_none_or(|c| c.outcome() == Outcome::Running);
        if running {
            // Cancel first, so that Tekton stops the TaskRuns and their pods itself and records
            // why; the deletion below then removes the run and, through the garbage collector,
            // its TaskRuns. A refused cancel (an older Role without `patch`) does not stop the
            // deletion.
            let cancel = Patch::Merge(serde_json::json!({"spec": {"status": "Cancelled"}}));
            match self
                .pipeline_runs()
                .patch(&name, &PatchParams::default(), &cancel)
                .await
            {
                Ok(_) => {
                    tracing::info!(pipelinerun = %name, wfe = %wfe.name_any(), "cancelled PipelineRun")
                }
                Err(e) if is_not_found(&e) => return Ok(DeleteOutcome::NotFound),
                Err(e) => {
                    tracing::warn!(pipelinerun = %name, error = %e, "cannot cancel PipelineRun; deleting it")
                }
            }
        }
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: pr.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.pipeline_runs().delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(pipelinerun = %name, wfe = %wfe.name_any(), "deleted PipelineRun");
                Ok(DeleteOutcome::Deleted)
            }
            Err(e) if is_not_found(&e) => Ok(DeleteOutcome::NotFound),
            // The UID precondition failed: the name now holds another resource, ours is gone.
            Err(e) if is_already_exists(&e) => Ok(DeleteOutcome::NotFound),
            Err(e) => Err(ExecutorError::from_kube(
                &format!("delete PipelineRun {}/{name}", self.config.namespace),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PipelineRunSpec, PipelineRunStatus, TektonCondition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use wfe_executor::{execution_annotations, execution_labels};

    fn wfe(name: &str, uid: &str) -> WorkflowExecution {
        let mut w: WorkflowExecution = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubernaut.ai/v1alpha1",
            "kind": "WorkflowExecution",
            "metadata": {"name": name, "namespace": "team-a", "uid": uid},
            "spec": {
                "workflowRef": {"workflowId": "restart", "version": "1", "containerImage": "registry.example/wf:v1"},
                "targetResource": "prod/Deployment/app",
                "remediationRequestRef": {"name": "rr"}
            }
        }))
        .expect("valid WorkflowExecution");
        w.metadata.uid = Some(uid.to_string()).filter(|u| !u.is_empty());
        w
    }

    fn existing_of(owner: Option<&WorkflowExecution>, status: Option<&str>) -> PipelineRun {
        let mut pr = PipelineRun::new("wfe-x", PipelineRunSpec::default());
        if let Some(o) = owner {
            pr.metadata.labels = Some(execution_labels(o));
            pr.metadata.annotations = Some(execution_annotations(o));
        }
        if let Some(s) = status {
            pr.status = Some(PipelineRunStatus {
                conditions: vec![TektonCondition {
                    type_: "Succeeded".into(),
                    status: s.into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        pr
    }

    #[test]
    fn ownership_of_an_existing_pipeline_run() {
        let me = wfe("mine", "uid-1");
        let other = wfe("other", "uid-2");
        // Ours, in any state: adopt.
        for s in [None, Some("Unknown"), Some("True"), Some("False")] {
            assert_eq!(
                classify_existing(&existing_of(Some(&me), s), &me),
                Existing::Adopt,
                "{s:?}"
            );
        }
        // Same name recreated (new UID) is not ours.
        let recreated = wfe("mine", "uid-3");
        assert_ne!(
            classify_existing(&existing_of(Some(&me), None), &recreated),
            Existing::Adopt
        );
        // Another WorkflowExecution's live run: held.
        let holder = owner_of(&existing_of(Some(&other), None).metadata).expect("owner");
        assert_eq!(holder.name, "other");
        assert_eq!(holder.namespace, "team-a");
        assert_eq!(holder.uid.as_deref(), Some("uid-2"));
        for s in [None, Some("Unknown")] {
            assert_eq!(
                classify_existing(&existing_of(Some(&other), s), &me),
                Existing::Held(holder.clone()),
                "{s:?}"
            );
        }
        // Another WorkflowExecution's finished run: stale.
        for s in [Some("True"), Some("False")] {
            assert_eq!(
                classify_existing(&existing_of(Some(&other), s), &me),
                Existing::Stale(holder.clone()),
                "{s:?}"
            );
        }
        // Terminating: stale as well (it will be gone shortly).
        let mut terminating = existing_of(Some(&other), Some("Unknown"));
        terminating.metadata.deletion_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            classify_existing(&terminating, &me),
            Existing::Stale(holder)
        );
        // No labels: never touched, reported as held by an unknown owner.
        for s in [None, Some("True"), Some("False")] {
            match classify_existing(&existing_of(None, s), &me) {
                Existing::Held(o) => {
                    assert_eq!(o.name, UNKNOWN_OWNER);
                    assert_eq!(o.uid, None);
                }
                other => panic!("unlabelled {s:?} must be held, got {other:?}"),
            }
        }
    }

    #[test]
    fn ownership_without_uid_falls_back_to_name() {
        let me = wfe("mine", "");
        let pr = existing_of(Some(&me), None);
        assert_eq!(classify_existing(&pr, &me), Existing::Adopt);
        let other = wfe("other", "");
        assert!(matches!(classify_existing(&pr, &other), Existing::Held(_)));
    }

    #[test]
    fn availability_cache() {
        let recheck = Duration::from_secs(10);
        let now = Instant::now();
        assert_eq!(AvailabilityCache::Unknown.cached(now, recheck), None);
        assert_eq!(
            AvailabilityCache::Available.cached(now + Duration::from_secs(3600), recheck),
            Some(Availability::Available)
        );
        let negative = AvailabilityCache::Unavailable {
            checked_at: now,
            message: "missing".into(),
        };
        assert_eq!(
            negative.cached(now + Duration::from_secs(9), recheck),
            Some(Availability::Unavailable("missing".into()))
        );
        assert_eq!(
            negative.cached(now + Duration::from_secs(10), recheck),
            None
        );
        assert!(
            UNAVAILABLE_HINT.contains("Tekton Pipelines")
                && UNAVAILABLE_HINT.contains("executionEngine: job")
        );
    }
}
