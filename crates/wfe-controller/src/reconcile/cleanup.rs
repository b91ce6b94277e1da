//! Deletion of a WorkflowExecution (its finalizer): release the lock it holds, deliver the audit
//! events still due, forget the object.

use std::sync::Arc;

use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use wfe_api::WorkflowExecution;

use super::{Context, Error, effects::Note, effects::Release};

impl Context {
    pub(super) async fn cleanup(&self, wfe: Arc<WorkflowExecution>) -> Result<Action, Error> {
        self.release_lock(&wfe, Release::Deleted).await?;
        self.deliver_before_deletion(&wfe).await?;
        self.memory.forget(&wfe.uid().unwrap_or_default());
        self.event(
            &wfe,
            &Note {
                type_: EventType::Normal,
                reason: "WorkflowExecutionDeleted".into(),
                action: "Delete",
                note: format!(
                    "WorkflowExecution cleanup completed (phase: {})",
                    wfe.phase()
                ),
            },
        );
        Ok(Action::await_change())
    }
}
