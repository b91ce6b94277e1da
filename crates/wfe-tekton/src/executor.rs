//! [`TektonExecutor`]: the [`ExecutionResource`] (hence the [`wfe_executor::Executor`]) that
//! runs WorkflowExecutions as PipelineRuns. The protocol around the PipelineRun is
//! [`wfe_executor::resource`]'s; this module supplies the PipelineRun, its observation (with its
//! child TaskRuns), when it is finished, the cancel before a running PipelineRun is deleted, and
//! availability through API discovery.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use wfe_api::{ExecutionEngine, FieldError, WorkflowExecution};
pub use wfe_executor::resource::UNKNOWN_OWNER;
use wfe_executor::{
    Availability, ExecutionResource, ExecutorError, Observation, ResourceClient, is_not_found,
};

use crate::{
    build::{TektonConfig, build_pipeline_run, check_bundle_pinned},
    classify::observe,
    types::{Outcome, PipelineRun, TEKTON_API_VERSION, TaskRun},
};

/// The resource kind of the execution resource.
pub const RESOURCE_KIND: &str = "PipelineRun";
/// How long a negative availability answer is trusted before the API is asked again.
pub const AVAILABILITY_RECHECK: Duration = Duration::from_secs(10);
/// What an operator is told when Tekton is missing.
pub const UNAVAILABLE_HINT: &str = "install Tekton Pipelines (the tekton.dev CRDs, serving \
     pipelineruns.tekton.dev/v1) or use `executionEngine: job`";

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
    /// The client, the execution namespace and the PipelineRuns of the watch.
    resources: ResourceClient<PipelineRun>,
    config: TektonConfig,
    availability: Arc<Mutex<AvailabilityCache>>,
    recheck: Duration,
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
            resources: ResourceClient::new(client, config.namespace.clone()),
            config,
            availability: Arc::default(),
            recheck: AVAILABILITY_RECHECK,
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
            .resources
            .client()
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
        let api: Api<TaskRun> = self.resources.api_of();
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
}

#[async_trait]
impl ExecutionResource for TektonExecutor {
    type Object = PipelineRun;

    fn resources(&self) -> &ResourceClient<PipelineRun> {
        &self.resources
    }

    fn engine(&self) -> ExecutionEngine {
        ExecutionEngine::Tekton
    }

    fn build(&self, wfe: &WorkflowExecution) -> Result<PipelineRun, FieldError> {
        build_pipeline_run(wfe, &self.config).map_err(FieldError::from)
    }

    /// Finished once the `Succeeded` condition is `True` or `False`.
    fn is_finished(&self, pr: &PipelineRun) -> bool {
        pr.is_finished()
    }

    /// Maps the run and its child TaskRuns ([`observe`]).
    async fn observe(
        &self,
        pr: &PipelineRun,
        _wfe: &WorkflowExecution,
    ) -> Result<Observation, ExecutorError> {
        let task_runs = self.child_task_runs(pr).await?;
        Ok(observe(pr, &task_runs))
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
            .and_then(|_| check_bundle_pinned(wfe, &self.config))
            .map_err(|e| vec![FieldError::from(e)])
    }

    /// A 404 on create: the PipelineRun API vanished (CRDs removed), ask again next time.
    fn create_refused(&self, error: &kube::Error) {
        if is_not_found(error) {
            self.set_availability(AvailabilityCache::Unknown);
        }
    }

    /// Cancels a running PipelineRun first, so that Tekton stops the TaskRuns and their pods
    /// itself and records why; the deletion then removes the run and, through the garbage
    /// collector, its TaskRuns. A refused cancel (an older Role without `patch`) does not stop
    /// the deletion (the protocol logs it and deletes).
    async fn before_delete(&self, pr: &PipelineRun) -> Result<(), kube::Error> {
        let running = pr
            .succeeded()
            .is_none_or(|c| c.outcome() == Outcome::Running);
        if running {
            let name = pr.name_any();
            let cancel = Patch::Merge(serde_json::json!({"spec": {"status": "Cancelled"}}));
            self.resources
                .api()
                .patch(&name, &PatchParams::default(), &cancel)
                .await?;
            tracing::info!(pipelinerun = %name, "cancelled PipelineRun");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
