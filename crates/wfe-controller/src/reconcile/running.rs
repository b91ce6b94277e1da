//! The `Running` phase: observe the execution through its executor and record progress or the
//! outcome.

use std::sync::Arc;

use kube::runtime::controller::Action;
use wfe_api::{FailureReason, WorkflowExecution};
use wfe_executor::{Failure, Observation};

use super::{Context, Error, effects};
use crate::transitions;

impl Context {
    pub(super) async fn running(&self, wfe: Arc<WorkflowExecution>) -> Result<Action, Error> {
        let Some(executor) = self.executor(&wfe).cloned() else {
            let f = Failure::new(
                FailureReason::UnsupportedEngine,
                format!(
                    "execution engine {:?} is no longer registered; its execution cannot be observed",
                    wfe.engine().as_str()
                ),
                true,
            );
            let now = self.now();
            return self
                .conclude(
                    &wfe,
                    effects::execution_failed(&wfe, None, &f, now, false, now),
                )
                .await;
        };
        let observation = executor.status(&wfe).await?;
        let now = self.now();
        let effects = match observation {
            Observation::Running { summary } => {
                if let Some(status) = transitions::progress(&wfe, &summary, now) {
                    self.write_status(&wfe, status).await?;
                }
                // Deliver what may have failed at dispatch time.
                self.deliver_audit(&wfe).await;
                return Ok(Action::requeue(
                    self.audit_retry(&wfe).unwrap_or(self.cfg.running_resync),
                ));
            }
            Observation::Succeeded {
                summary,
                finished_at,
            } => {
                let finished = finished_at.map(|t| t.0).unwrap_or(now).min(now);
                effects::succeeded(&wfe, summary, finished, now)
            }
            Observation::Failed {
                summary,
                failure,
                finished_at,
            } => {
                let finished = finished_at.map(|t| t.0).unwrap_or(now).min(now);
                effects::execution_failed(&wfe, Some(summary), &failure, finished, true, now)
            }
            Observation::DeletedExternally { kind, name } => {
                // The namespace the executor created it in (its own configuration).
                let namespace = wfe
                    .status
                    .as_ref()
                    .and_then(|s| s.execution_ref.as_ref())
                    .map(|r| r.namespace.clone())
                    .unwrap_or_default();
                let message = format!(
                    "{kind} {namespace}/{name} was deleted externally while the workflow was running"
                );
                let f = Failure::new(FailureReason::Unknown, message, true);
                effects::execution_failed(&wfe, None, &f, now, false, now)
            }
        };
        self.conclude(&wfe, effects).await
    }
}
