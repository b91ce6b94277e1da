//! # wfe-job: the `batch/v1` Job execution backend
//!
//! [`JobExecutor`] implements the [`wfe_executor::Executor`] contract for
//! `spec.executionEngine: job`: it creates one Job per WorkflowExecution (built by the pure
//! [`build_job`]), maps the Job's state to an observation ([`observe`]) with failures classified
//! from the Job conditions, the `workflow` container's status and the pod's events, and deletes
//! only Jobs that belong to the WorkflowExecution.
//!
//! Reads are scoped: the Job by name, its pods by the Job's controller-uid label, events by field
//! selector on the one object; never a list of a whole namespace. Once the controller started
//! the executor's watch ([`Executor::changes`]), Jobs are read from the watch's cache and the API
//! server is asked only when the cache cannot answer (a Job not seen yet, or one that the cache
//! shows with another owner); pods and events are read only for a Job that needs a diagnosis.

mod build;
mod status;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ConfigMap, Event, Pod, Secret, ServiceAccount},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{
        DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
    },
};
use wfe_api::{
    ExecutionEngine, ExecutionRef, ExecutionStatusSummary, FieldError, WorkflowExecution,
    is_digest_pinned,
};
use wfe_executor::{
    CreateOutcome, DeleteOutcome, Executor, ExecutorError, Observation, Owner, execution_name_for,
    is_already_exists, is_not_found, is_owned_by, owner_of, owner_settled,
    watch::{Changes, ResourceCache},
};

pub use build::{
    BuildError, CONFIGMAPS_DIR, CONTAINER_NAME, SECRETS_DIR, build_job, environment,
    owner_reference,
};
pub use status::{
    JobFacts, MAX_MESSAGE, Needs, container_started, initial_summary, is_finished, is_suspended,
    needs, observe, tail,
};

/// How long a service account seen by the pre-flight check is trusted without reading it again.
/// A service account deleted within this window is still reported, later, from the pod creation
/// failure (`ConfigurationError`).
pub const SERVICE_ACCOUNT_TTL: Duration = Duration::from_secs(30);

/// Configuration of the Job backend.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Namespace where Jobs run.
    pub namespace: String,
    /// `ttlSecondsAfterFinished` of every Job (a fallback: the operator deletes Jobs after the cooldown).
    pub ttl_seconds_after_finished: i32,
    /// Service account when the spec names none.
    pub default_service_account: String,
    /// Accept images that are not pinned by digest.
    pub allow_unpinned_images: bool,
    /// Check that the service account and dependencies exist before creating the Job.
    pub preflight_checks: bool,
    /// How long a pod may sit in a permanent "cannot start" state before the execution fails.
    pub stuck_grace: Duration,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            namespace: "kubernaut-workflows".into(),
            ttl_seconds_after_finished: 600,
            default_service_account: "kubernaut-workflow-runner".into(),
            allow_unpinned_images: false,
            preflight_checks: true,
            stuck_grace: Duration::from_secs(60),
        }
    }
}

/// The Job backend.
#[derive(Clone)]
pub struct JobExecutor {
    client: Client,
    cfg: Arc<JobConfig>,
    /// Jobs of the execution namespace, fed by the watch started with `changes`.
    cache: ResourceCache<Job>,
    /// Service accounts that existed, and when that was checked.
    accounts_seen: Arc<Mutex<HashMap<String, Instant>>>,
}

impl std::fmt::Debug for JobExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobExecutor")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl JobExecutor {
    /// A Job executor using `client`.
    pub fn new(client: Client, cfg: JobConfig) -> Self {
        JobExecutor {
            client,
            cfg: Arc::new(cfg),
            cache: ResourceCache::default(),
            accounts_seen: Arc::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &JobConfig {
        &self.cfg
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.cfg.namespace)
    }

    fn reference(&self, name: &str) -> ExecutionRef {
        ExecutionRef {
            kind: "Job".into(),
            name: name.to_string(),
            namespace: self.cfg.namespace.clone(),
        }
    }

    async fn get_job(&self, name: &str) -> Result<Option<Job>, ExecutorError> {
        match self.jobs().get(name).await {
            Ok(job) => Ok(Some(job)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ExecutorError::from_kube(&format!("get Job {name}"), e)),
        }
    }

    /// The Job of `wfe`: from the watch cache when it holds one owned by `wfe`, else from the API
    /// server (the cache may not have seen a new Job yet, or still show a replaced one).
    async fn job_of(&self, wfe: &WorkflowExecution) -> Result<Option<Job>, ExecutorError> {
        let name = execution_name_for(wfe);
        if let Some(job) = self.cache.owned(&self.cfg.namespace, &name, wfe) {
            return Ok(Some(Job::clone(&job)));
        }
        self.get_job(&name).await
    }

    fn account_recently_seen(&self, name: &str) -> bool {
        let seen = self.accounts_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(name)
            .is_some_and(|at| at.elapsed() < SERVICE_ACCOUNT_TTL)
    }

    fn account_seen(&self, name: &str) {
        let mut seen = self.accounts_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 1024 {
            seen.retain(|_, at| at.elapsed() < SERVICE_ACCOUNT_TTL);
        }
        seen.insert(name.to_string(), Instant::now());
    }

    /// Checks that the service account and every dependency exist (metadata reads only), so that a
    /// missing object fails the request at once with a message that names it.
    async fn preflight(&self, wfe: &WorkflowExecution) -> Result<(), ExecutorError> {
        let ns = &self.cfg.namespace;
        let missing = |kind: &str, name: &str, what: &str| {
            ExecutorError::Invalid(format!(
                "{kind} {name:?} ({what}) not found in namespace {ns}"
            ))
        };
        let sa = wfe
            .spec
            .service_account(&self.cfg.default_service_account)
            .to_string();
        let check = |r: Result<Option<_>, kube::Error>, kind: &str, name: &str, what: &str| match r
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(missing(kind, name, what)),
            Err(e) => Err(ExecutorError::from_kube(&format!("read {kind} {name}"), e)),
        };
        if !self.account_recently_seen(&sa) {
            let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
            check(
                sas.get_metadata_opt(&sa).await.map(|o| o.map(drop)),
                "ServiceAccount",
                &sa,
                "the workflow's service account",
            )?;
            self.account_seen(&sa);
        }
        if let Some(deps) = &wfe.spec.workflow_ref.dependencies {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            for s in &deps.secrets {
                check(
                    secrets.get_metadata_opt(&s.name).await.map(|o| o.map(drop)),
                    "Secret",
                    &s.name,
                    "a workflow dependency",
                )?;
            }
            let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
            for c in &deps.config_maps {
                check(
                    cms.get_metadata_opt(&c.name).await.map(|o| o.map(drop)),
                    "ConfigMap",
                    &c.name,
                    "a workflow dependency",
                )?;
            }
        }
        Ok(())
    }

    async fn events_for(&self, kind: &str, name: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.cfg.namespace);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        ));
        match events.list(&lp).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::debug!(error = %e, kind, name, "cannot read events for diagnosis");
                Vec::new()
            }
        }
    }

    async fn pods_of(&self, job: &Job) -> Vec<Pod> {
        let Some(uid) = job.uid() else {
            return Vec::new();
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.cfg.namespace);
        match pods
            .list(
                &ListParams::default().labels(&format!("batch.kubernetes.io/controller-uid={uid}")),
            )
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::debug!(error = %e, job = %job.name_any(), "cannot read pods for diagnosis");
                Vec::new()
            }
        }
    }

    /// Stops an active Job whose execution was declared failed (suspending it deletes its pods and
    /// keeps the Job for diagnosis until the cooldown cleanup).
    async fn suspend(&self, name: &str) {
        let patch = serde_json::json!({"spec": {"suspend": true}});
        if let Err(e) = self
            .jobs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(error = %e, job = name, "cannot suspend a failed Job");
        }
    }

    async fn delete_job(&self, job: &Job) -> Result<DeleteOutcome, ExecutorError> {
        let name = job.name_any();
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: job.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.jobs().delete(&name, &dp).await {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(e) if is_not_found(&e) => Ok(DeleteOutcome::NotFound),
            // The UID precondition failed: the name now belongs to another Job.
            Err(e) if is_already_exists(&e) => Ok(DeleteOutcome::NotFound),
            Err(e) => Err(ExecutorError::from_kube(&format!("delete Job {name}"), e)),
        }
    }
}

#[async_trait]
impl Executor for JobExecutor {
    fn engine(&self) -> ExecutionEngine {
        ExecutionEngine::Job
    }

    fn resource_kind(&self) -> &'static str {
        "Job"
    }

    fn watched_resource(&self) -> Option<kube::core::ApiResource> {
        Some(kube::core::ApiResource::erase::<Job>(&()))
    }

    fn changes(&self, client: Client, namespace: &str) -> Option<Changes> {
        Some(self.cache.changes(Api::namespaced(client, namespace)))
    }

    fn initial_summary(&self) -> Option<ExecutionStatusSummary> {
        Some(initial_summary())
    }

    fn validate(&self, wfe: &WorkflowExecution) -> Result<(), Vec<FieldError>> {
        let image = &wfe.spec.workflow_ref.container_image;
        if !self.cfg.allow_unpinned_images && !is_digest_pinned(image) {
            return Err(vec![FieldError {
                field: "spec.workflowRef.containerImage".into(),
                message: format!(
                    "{image:?} must be pinned by digest (image@sha256:<64 hex>); the operator accepts tags only with --allow-unpinned-images"
                ),
            }]);
        }
        Ok(())
    }

    async fn create(&self, wfe: &WorkflowExecution) -> Result<CreateOutcome, ExecutorError> {
        let job = build_job(wfe, &self.cfg).map_err(|e| ExecutorError::Invalid(e.to_string()))?;
        let name = job.name_any();
        if self.cfg.preflight_checks
            && let Err(e) = self.preflight(wfe).await
        {
            // After a crash between create and the status write the Job may exist already:
            // adopt it rather than failing on a dependency deleted since.
            if let Some(existing) = self.get_job(&name).await?
                && is_owned_by(&existing.metadata, wfe)
            {
                return Ok(CreateOutcome::Adopted(self.reference(&name)));
            }
            return Err(e);
        }
        for _attempt in 0..2 {
            match self.jobs().create(&PostParams::default(), &job).await {
                Ok(_) => return Ok(CreateOutcome::Created(self.reference(&name))),
                Err(e) if is_already_exists(&e) => {}
                Err(e) => return Err(ExecutorError::from_kube(&format!("create Job {name}"), e)),
            }
            let Some(existing) = self.get_job(&name).await? else {
                continue; // deleted in between: try again
            };
            if is_owned_by(&existing.metadata, wfe) {
                return Ok(CreateOutcome::Adopted(self.reference(&name)));
            }
            // A Job we did not label is never touched.
            let Some(holder) = owner_of(&existing.metadata) else {
                let holder = Owner {
                    name: "<unknown>".into(),
                    namespace: "<unknown>".into(),
                    uid: None,
                };
                return Ok(CreateOutcome::HeldBy {
                    reference: self.reference(&name),
                    holder,
                });
            };
            // A running (or suspended-after-failure) Job of another WorkflowExecution holds the
            // target; a finished one is stale only once its owner recorded the outcome.
            let finished = is_finished(&existing) || is_suspended(&existing);
            if !finished || !owner_settled(&self.client, &holder).await? {
                return Ok(CreateOutcome::HeldBy {
                    reference: self.reference(&name),
                    holder,
                });
            }
            tracing::info!(job = %name, previous_owner = %holder, "deleting a stale finished Job to start a new execution");
            self.delete_job(&existing).await?;
        }
        Err(ExecutorError::Transient(format!(
            "Job {name}: a stale Job of another execution is still being deleted"
        )))
    }

    async fn status(&self, wfe: &WorkflowExecution) -> Result<Observation, ExecutorError> {
        let name = execution_name_for(wfe);
        let Some(job) = self
            .job_of(wfe)
            .await?
            .filter(|j| is_owned_by(&j.metadata, wfe))
        else {
            return Ok(Observation::DeletedExternally {
                kind: "Job".into(),
                name,
            });
        };
        let now = Timestamp::now();
        let mut needs = needs(&job);
        // Pod creation failures only matter once the Job is stuck (see `observe`): a young Job
        // without pods is simply starting.
        let age = job
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
            .unwrap_or_default();
        if !is_finished(&job) && age < self.cfg.stuck_grace {
            needs.job_events = false;
        }
        let mut pods = if needs.pods {
            self.pods_of(&job).await
        } else {
            Vec::new()
        };
        pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let pod = pods.last();
        let pod_events = match pod {
            Some(p)
                if needs.pods && !container_started(Some(p))
                    || is_finished(&job) && pod.is_some() =>
            {
                self.events_for("Pod", &p.name_any()).await
            }
            _ => Vec::new(),
        };
        let job_events = if needs.job_events && pod.is_none() {
            self.events_for("Job", &name).await
        } else {
            Vec::new()
        };
        let facts = JobFacts {
            job: &job,
            pod,
            pods_seen: pods.len(),
            pod_events: &pod_events,
            job_events: &job_events,
            now,
            stuck_grace: self.cfg.stuck_grace,
        };
        let observation = observe(&facts);
        if matches!(observation, Observation::Failed { .. }) && !is_finished(&job) {
            self.suspend(&name).await;
        }
        Ok(observation)
    }

    async fn delete(&self, wfe: &WorkflowExecution) -> Result<DeleteOutcome, ExecutorError> {
        match self.job_of(wfe).await? {
            None => Ok(DeleteOutcome::NotFound),
            Some(job) if !is_owned_by(&job.metadata, wfe) => Ok(DeleteOutcome::NotOwned),
            Some(job) if job.metadata.deletion_timestamp.is_some() => Ok(DeleteOutcome::Deleted),
            Some(job) => self.delete_job(&job).await,
        }
    }
}
