//! Retention of finished WorkflowExecutions ([`crate::retention`]): a periodic sweep of the
//! settled ones. Settled objects are not in the cache (so never reconciled again unless they
//! change); the target index keeps their guard summary and UID, which is all retention reads.

use std::time::Duration;

use kube::api::{Api, DeleteParams, Preconditions};
use wfe_api::WorkflowExecution;

use super::Context;
use crate::{
    metrics,
    retention::{self, Retention},
};

impl Context {
    /// Deletes the settled WorkflowExecutions whose retention time has passed and that nothing
    /// needs any more; returns how many it deleted.
    pub async fn sweep_retention(&self) -> usize {
        let Some(ttl) = self.cfg.retention else {
            return 0;
        };
        let now = self.now();
        let mut deleted = 0;
        for (key, settled) in self.index.settled() {
            let all = self.index.priors(&key, &self.store, |o| self.freshest(o));
            for (prior, uid) in settled {
                // Settled means every audit event was acknowledged.
                let verdict = retention::decide(
                    &prior,
                    &all,
                    false,
                    Some(ttl),
                    self.cfg.guards.cooldown,
                    now,
                );
                if verdict != Retention::Delete {
                    continue;
                }
                let Some((ns, name)) = prior.id.split_once('/') else {
                    continue;
                };
                let api: Api<WorkflowExecution> = Api::namespaced(self.client.clone(), ns);
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(name, &dp).await {
                    Ok(_) => {
                        deleted += 1;
                        metrics::retention_deleted();
                        tracing::info!(wfe = %prior.id, "retention time passed; deleted");
                    }
                    // Gone already, or a new object of the same name: nothing to do.
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => {
                        tracing::warn!(wfe = %prior.id, error = %e, "retention: delete failed; retried at the next sweep");
                    }
                }
            }
        }
        deleted
    }
}

/// How often retention sweeps: a tenth of the retention time, between 1 s and 5 minutes.
pub fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_often_enough_but_not_too_often() {
        assert_eq!(
            sweep_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(86_400)),
            Duration::from_secs(300)
        );
    }
}
