//! # wfe-job: the `batch/v1` Job execution backend
//!
//! [`JobExecutor`] implements the [`wfe_executor::Executor`] contract for
//! `spec.executionEngine: job`: it creates one Job per WorkflowExecution (built by the pure
//! [`build_job`]), maps the Job's state to an observation ([`observe`]) with failures classified
//! from the Job conditions, the `workflow` container's status and the pod's events, and deletes
//! only Jobs that belong to the WorkflowExecution.
//!
//! The protocol around the Job (create, adopt, held by another owner, stale replacement,
//! owner-only delete, identity metadata, reads from the watch cache) is
//! [`wfe_executor::resource`]'s; this crate supplies what is specific to Jobs through
//! [`ExecutionResource`]: the Job ([`build_job`]), its observation, when it is finished (a Job
//! suspended after an early failure counts as finished), the pre-flight checks and the digest
//! validation.
//!
//! Reads are scoped: the Job by name, its pods by the Job's controller-uid label, events by field
//! selector on the one object; never a list of a whole namespace. Once the controller started
//! the executor's watch ([`Executor::changes`](wfe_executor::Executor::changes)), Jobs are read
//! from the watch's cache and the API server is asked only when the cache cannot answer (a Job
//! not seen yet, or one that the cache shows with another owner); pods and events are read only
//! for a Job that needs a diagnosis.

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
    api::{ListParams, Patch, PatchParams},
};
use wfe_api::{
    ExecutionEngine, ExecutionStatusSummary, FieldError, WorkflowExecution, is_digest_pinned,
};
use wfe_executor::{ExecutionResource, ExecutorError, Observation, ResourceClient};

pub use build::{
    BuildError, CONFIGMAPS_DIR, CONTAINER_NAME, SECRETS_DIR, build_job, environment,
    owner_reference,
};
pub use status::{
    JobFacts, MAX_MESSAGE, Needs, container_started, initial_summary, is_finished, is_suspended,
    needs, observe, tail, trim,
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

/// The Job backend: an [`ExecutionResource`] of Jobs, hence a [`wfe_executor::Executor`].
#[derive(Clone)]
pub struct JobExecutor {
    /// The client, the execution namespace and the Jobs of the watch.
    resources: ResourceClient<Job>,
    cfg: Arc<JobConfig>,
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
            resources: ResourceClient::trimmed(client, cfg.namespace.clone(), status::trim),
            cfg: Arc::new(cfg),
            accounts_seen: Arc::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &JobConfig {
        &self.cfg
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

    async fn events_for(&self, kind: &str, name: &str) -> Vec<Event> {
        let events: Api<Event> = self.resources.api_of();
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
        let pods: Api<Pod> = self.resources.api_of();
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
            .resources
            .api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(error = %e, job = name, "cannot suspend a failed Job");
        }
    }
}

#[async_trait]
impl ExecutionResource for JobExecutor {
    type Object = Job;

    fn resources(&self) -> &ResourceClient<Job> {
        &self.resources
    }

    fn engine(&self) -> ExecutionEngine {
        ExecutionEngine::Job
    }

    fn build(&self, wfe: &WorkflowExecution) -> Result<Job, FieldError> {
        build_job(wfe, &self.cfg).map_err(FieldError::from)
    }

    /// Finished, or suspended after an early failure (it will not run again).
    fn is_finished(&self, job: &Job) -> bool {
        is_finished(job) || is_suspended(job)
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

    /// Checks that the service account and every dependency exist (metadata reads only), so that a
    /// missing object fails the request at once with a message that names it.
    async fn preflight(&self, wfe: &WorkflowExecution) -> Result<(), ExecutorError> {
        if !self.cfg.preflight_checks {
            return Ok(());
        }
        let ns = &self.cfg.namespace;
        let missing = |kind: &str, name: &str, what: &str| {
            ExecutorError::invalid(format!(
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
            let sas: Api<ServiceAccount> = self.resources.api_of();
            check(
                sas.get_metadata_opt(&sa).await.map(|o| o.map(drop)),
                "ServiceAccount",
                &sa,
                "the workflow's service account",
            )?;
            self.account_seen(&sa);
        }
        if let Some(deps) = &wfe.spec.workflow_ref.dependencies {
            let secrets: Api<Secret> = self.resources.api_of();
            for s in &deps.secrets {
                check(
                    secrets.get_metadata_opt(&s.name).await.map(|o| o.map(drop)),
                    "Secret",
                    &s.name,
                    "a workflow dependency",
                )?;
            }
            let cms: Api<ConfigMap> = self.resources.api_of();
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

    /// Maps the Job with [`observe`], reading pods and events only when the diagnosis needs them;
    /// an active Job whose execution is declared failed is suspended.
    async fn observe(
        &self,
        job: &Job,
        _wfe: &WorkflowExecution,
    ) -> Result<Observation, ExecutorError> {
        let name = job.name_any();
        let now = Timestamp::now();
        let mut needs = needs(job);
        // Pod creation failures only matter once the Job is stuck (see `observe`): a young Job
        // without pods is simply starting.
        let age = job
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
            .unwrap_or_default();
        if !is_finished(job) && age < self.cfg.stuck_grace {
            needs.job_events = false;
        }
        let mut pods = if needs.pods {
            self.pods_of(job).await
        } else {
            Vec::new()
        };
        pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let pod = pods.last();
        let pod_events = match pod {
            Some(p)
                if needs.pods && !container_started(Some(p))
                    || is_finished(job) && pod.is_some() =>
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
            job,
            pod,
            pods_seen: pods.len(),
            pod_events: &pod_events,
            job_events: &job_events,
            now,
            stuck_grace: self.cfg.stuck_grace,
        };
        let observation = observe(&facts);
        if matches!(observation, Observation::Failed { .. }) && !is_finished(job) {
            self.suspend(&name).await;
        }
        Ok(observation)
    }
}
