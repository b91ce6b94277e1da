//! Work on a terminal WorkflowExecution: audit delivery, block clearing, and the release of the
//! per-target lock once the cooldown is over.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{ResourceExt, runtime::controller::Action};
use wfe_api::WorkflowExecution;

use super::{
    Context, Error,
    effects::{self, Release},
    index::yields_to_dispatch,
};

impl Context {
    /// Work on a terminal WorkflowExecution: audit delivery, block clearing, lock release.
    pub(super) async fn after_terminal(
        &self,
        wfe: Arc<WorkflowExecution>,
    ) -> Result<Action, Error> {
        self.memory
            .drop_claim(&wfe.target_key(), wfe.uid().as_deref());
        let mut wfe = wfe;
        if let Some(updated) = self.clear_block(&wfe).await? {
            wfe = Arc::new(updated);
        }
        self.deliver_audit(&wfe).await;
        let mut next: Option<Duration> = self.audit_retry(&wfe);

        // Release the lock (delete the execution resource) once the cooldown is over.
        let status = wfe.status.clone().unwrap_or_default();
        if status.execution_ref.is_some() && status.lock_released_time.is_none() {
            let uid = wfe.uid().unwrap_or_default();
            let completed = status.completion_time.as_ref().map(|t| t.0);
            let release_at = release_time(
                self.memory.outcome_at(&uid),
                completed.unwrap_or_else(|| self.now()),
                self.cfg.guards.cooldown,
                &uid,
            );
            let now = self.now();
            let overdue = Duration::try_from(now.duration_since(release_at)).unwrap_or_default();
            let ready = self.index.ready();
            if now >= release_at
                && dispatch_first(
                    ready,
                    self.index.others_live(&wfe.target_key(), &wfe),
                    overdue,
                )
            {
                // Dispatching waiting work goes first; the release follows when the backlog is
                // gone (or YIELD_AT_MOST after it was due).
                tracing::debug!(
                    name = %wfe.name_any(),
                    ready,
                    "lock release deferred: executions wait for their dispatch"
                );
                next = Some(next.map_or(DEFER_STEP, |n| n.min(DEFER_STEP)));
            } else if now >= release_at {
                self.release_lock(&wfe, Release::AfterCooldown).await?;
            } else {
                let wait = Duration::try_from(release_at.duration_since(now)).unwrap_or_default()
                    + Duration::from_millis(5);
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        Ok(next.map_or_else(Action::await_change, Action::requeue))
    }

    /// Releases the lock `wfe` holds on its target: deletes its execution resource and records
    /// the release ([`effects::lock_released`]) whatever became of the resource (deleted now,
    /// gone already, or replaced by the next execution on the target). A failed deletion is a
    /// `CleanupFailed` Event and an error (retried).
    pub(super) async fn release_lock(
        &self,
        wfe: &WorkflowExecution,
        how: Release,
    ) -> Result<(), Error> {
        let Some(executor) = self.executor(wfe) else {
            return Ok(());
        };
        match executor.delete(wfe).await {
            Ok(outcome) => {
                let held = wfe
                    .status
                    .as_ref()
                    .is_some_and(|s| s.execution_ref.is_some() && s.lock_released_time.is_none());
                if held {
                    let e = effects::lock_released(wfe, outcome, how, self.now());
                    self.perform(wfe, &e).await?;
                }
                self.memory.released(&wfe.uid().unwrap_or_default());
                Ok(())
            }
            Err(e) => {
                let (action, when) = match how {
                    Release::AfterCooldown => ("Release", "after cooldown"),
                    Release::Deleted => ("Delete", "during finalization"),
                };
                self.warn(
                    wfe,
                    "CleanupFailed",
                    action,
                    format!("Cleanup failed {when}: {e}"),
                );
                Err(e.into())
            }
        }
    }
}

/// How often a deferred lock release looks again.
const DEFER_STEP: Duration = Duration::from_secs(1);

/// A due lock release (a Job delete, a status write and an Event) yields to dispatch
/// ([`yields_to_dispatch`]), except when another execution is on the same target: it may wait
/// for this very lock.
fn dispatch_first(ready: usize, others_on_target: bool, overdue: Duration) -> bool {
    !others_on_target && yields_to_dispatch(ready, overdue)
}

/// When the lock of an execution is released: `cooldown` after this process recorded the outcome
/// (`recorded`), else (recorded by an earlier process) after `completed`, the status's
/// `completionTime`. That has whole seconds, so those releases are spread over the following
/// second ([`release_spread`]) instead of being issued all at once.
fn release_time(
    recorded: Option<Timestamp>,
    completed: Timestamp,
    cooldown: Duration,
    uid: &str,
) -> Timestamp {
    let cooldown = SignedDuration::try_from(cooldown).unwrap_or_default();
    match recorded {
        Some(at) => at + cooldown,
        None => completed + cooldown + release_spread(uid),
    }
}

/// A delay in [0, 1 s) that is stable for one object and spread evenly across objects.
fn release_spread(uid: &str) -> SignedDuration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    let millis = i64::try_from(h.finish() % 1000).unwrap_or_default();
    SignedDuration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::index::YIELD_AT_MOST;

    #[test]
    fn dispatch_goes_first_but_not_forever_nor_on_a_contended_target() {
        let s = Duration::from_secs;
        assert!(dispatch_first(3, false, s(0)));
        assert!(dispatch_first(1, false, s(14)));
        assert!(
            !dispatch_first(0, false, s(0)),
            "nothing waits: release now"
        );
        assert!(
            !dispatch_first(3, true, s(0)),
            "another execution on the target may wait for this lock"
        );
        assert!(
            !dispatch_first(3, false, YIELD_AT_MOST),
            "deferred long enough"
        );
    }

    #[test]
    fn releases_follow_the_recorded_outcome_or_spread_after_the_completion_second() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let recorded: Timestamp = "2026-01-01T00:00:00.4Z".parse().unwrap();
        let cooldown = Duration::from_secs(300);
        assert_eq!(
            release_time(Some(recorded), t0, cooldown, "u"),
            recorded + SignedDuration::from_secs(300)
        );
        let at = release_time(None, t0, cooldown, "u");
        let offset = at.duration_since(t0) - SignedDuration::from_secs(300);
        assert!(offset >= SignedDuration::ZERO && offset < SignedDuration::from_secs(1));
        assert_eq!(
            at,
            release_time(None, t0, cooldown, "u"),
            "stable per object"
        );
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|i| release_spread(&format!("uid-{i}")))
            .collect();
        assert!(spread.len() > 50, "spread across objects");
    }
}
