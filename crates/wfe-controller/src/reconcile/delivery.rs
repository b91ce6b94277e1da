//! Audit delivery: the events a WorkflowExecution's status makes due ([`audit::pending`]) are
//! sent, their acknowledgements kept in [`Memory`](super::memory::Memory) until a status write
//! persists them, and failed deliveries retried with a growing delay.

use std::time::Duration;

use kube::ResourceExt;
use wfe_api::{WorkflowExecution, conditions as cond};

use super::{Context, id_of};
use crate::{audit, metrics};

impl Context {
    /// Sends the audit events of `wfe` that are due and not acknowledged yet, and keeps the
    /// acknowledgements in memory (the next status write persists them). `Ok(false)`: nothing
    /// was due.
    pub(super) async fn send_due(
        &self,
        wfe: &WorkflowExecution,
    ) -> Result<bool, audit::AuditError> {
        let uid = wfe.uid().unwrap_or_default();
        let acked = self.memory.acked(&uid).unwrap_or_default();
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
                self.memory
                    .acknowledged(&uid, events.iter().map(|e| e.event_type.clone()));
                Ok(true)
            }
            Err(e) => {
                metrics::audit("failed", events.len());
                let n = self.memory.audit_failed(&uid);
                tracing::warn!(error = %e, wfe = %id_of(wfe), attempt = n, "audit delivery failed; will retry");
                Err(e)
            }
        }
    }

    /// Sends the audit events due; persists the acknowledgements at once for a terminal object
    /// (nothing else may be written for a while), else with the next status write.
    pub(super) async fn deliver_audit(&self, wfe: &WorkflowExecution) {
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
    pub(super) fn audit_retry(&self, wfe: &WorkflowExecution) -> Option<Duration> {
        let failures = self.memory.audit_failures(&wfe.uid().unwrap_or_default());
        retry_after(failures)
    }

    /// Delivers what is still due before the object disappears (its finalizer).
    pub(super) async fn deliver_before_deletion(
        &self,
        wfe: &WorkflowExecution,
    ) -> Result<(), audit::AuditError> {
        let pending = audit::pending(wfe);
        if !pending.is_empty() {
            self.audit.send(&pending).await?;
            metrics::audit("delivered", pending.len());
        }
        Ok(())
    }
}

/// The delay after `failures` consecutive failed deliveries: 2, 4, … 60 s; `None` without one.
fn retry_after(failures: u32) -> Option<Duration> {
    (failures > 0)
        .then(|| Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_minute() {
        assert_eq!(retry_after(0), None);
        assert_eq!(retry_after(1), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(5), Some(Duration::from_secs(32)));
        assert_eq!(retry_after(6), Some(Duration::from_secs(60)));
        assert_eq!(retry_after(40), Some(Duration::from_secs(60)));
    }
}
