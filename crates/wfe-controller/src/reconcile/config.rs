//! The controller's settings.

use std::time::Duration;

use crate::guards::GuardConfig;

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
    /// Fill the WorkflowExecution cache with a streaming list (a watch that sends the existing
    /// objects first, Kubernetes WatchList) rather than paged lists: objects arrive one at a time,
    /// so the start-up peak of memory does not grow with page size. Needs an API server that
    /// serves WatchList (on by default in recent Kubernetes releases).
    pub streaming_lists: bool,
    /// What a WorkflowExecution may ask for (crate::policy), shared with the policy file's
    /// reloader; the default restricts nothing.
    pub policy: crate::policy::PolicyHandle,
    /// Delete finished WorkflowExecutions this long after they finished, unless something still
    /// needs them (crate::retention); `None` keeps them.
    pub retention: Option<Duration>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            guards: GuardConfig::default(),
            running_resync: Duration::from_secs(300),
            concurrency: 16,
            watch_namespace: None,
            streaming_lists: true,
            policy: crate::policy::PolicyHandle::default(),
            retention: None,
        }
    }
}
