//! The one writer of WorkflowExecution status and finalizers, and the one function that carries
//! out a transition's [`Effects`]: write, then Event and metrics, then what follows.

use std::sync::Arc;

use kube::{
    Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event as KubeEvent, EventType},
    },
};
use serde_json::json;
use wfe_api::{FINALIZER, WorkflowExecution, WorkflowExecutionStatus, conditions as cond};

use super::{
    Context, Error,
    effects::{Audit, Effects, Note, Then},
};
use crate::{audit, transitions};

impl Context {
    /// Carries out `effects` on `wfe` and returns the object as written: the status write (with
    /// the audit events at the time [`Audit`] says), then the Event and the metrics, which
    /// follow only a successful write.
    pub(super) async fn perform(
        &self,
        wfe: &WorkflowExecution,
        effects: &Effects,
    ) -> Result<WorkflowExecution, Error> {
        let updated = match (&effects.status, effects.audit) {
            (None, _) => wfe.clone(),
            (Some(status), Audit::Outcome) => self.write_outcome(wfe, status.clone()).await?,
            (Some(status), _) => self.write_status(wfe, status.clone()).await?,
        };
        let engine = wfe.engine();
        for metric in &effects.metrics {
            metric.record(engine.as_str());
        }
        if let Some(note) = &effects.event {
            self.event(&updated, note);
        }
        if effects.audit == Audit::After {
            self.deliver_audit(&updated).await;
        }
        Ok(updated)
    }

    /// [`perform`](Self::perform), then what the transition says comes next.
    pub(super) async fn conclude(
        &self,
        wfe: &WorkflowExecution,
        effects: Effects,
    ) -> Result<Action, Error> {
        let updated = self.perform(wfe, &effects).await?;
        match effects.then {
            Then::AfterTerminal => self.after_terminal(Arc::new(updated)).await,
            Then::Requeue(after) => Ok(Action::requeue(after)),
        }
    }

    /// Queues a Kubernetes Event; it never delays the reconcile ([`super::events`]).
    pub(super) fn event(&self, wfe: &WorkflowExecution, note: &Note) {
        let ev = KubeEvent {
            type_: note.type_,
            reason: note.reason.clone(),
            note: Some(note.note.clone()),
            action: note.action.into(),
            secondary: None,
        };
        self.events
            .publish(ev, wfe.object_ref(&()), note.may_repeat());
    }

    /// An Event that is not part of a transition (refusals, clean-up failures).
    pub(super) fn warn(
        &self,
        wfe: &WorkflowExecution,
        reason: &str,
        action: &'static str,
        note: String,
    ) {
        self.event(
            wfe,
            &Note {
                type_: EventType::Warning,
                reason: reason.into(),
                action,
                note,
            },
        );
    }

    /// Adds the cleanup finalizer; the object's resourceVersion is a precondition, so a stale copy
    /// gets a conflict instead of overwriting a finalizer list that changed.
    pub(super) async fn add_finalizer(
        &self,
        wfe: &WorkflowExecution,
    ) -> Result<WorkflowExecution, Error> {
        let mut finalizers = wfe.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        let patch = json!({
            "metadata": {"resourceVersion": wfe.resource_version(), "finalizers": finalizers},
        });
        let updated = self
            .api(wfe)
            .patch(
                &wfe.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.memory.wrote(wfe, &updated);
        Ok(updated)
    }

    /// Writes a status with the object's resourceVersion as a precondition, so a decision taken on
    /// a stale copy fails with a conflict instead of overwriting a newer state. Audit
    /// acknowledgements not yet persisted travel with it.
    pub(super) async fn write_status(
        &self,
        wfe: &WorkflowExecution,
        mut status: WorkflowExecutionStatus,
    ) -> Result<WorkflowExecution, Error> {
        let uid = wfe.uid().unwrap_or_default();
        let acked = self.memory.acked(&uid);
        if let Some(acked) = &acked {
            for t in acked {
                if !status.audit_delivered.contains(t) {
                    status.audit_delivered.push(t.clone());
                }
            }
        }
        self.mark_audit_recorded(&mut status);
        let patch = json!({
            "metadata": {"resourceVersion": wfe.resource_version()},
            "status": status,
        });
        let updated = self
            .api(wfe)
            .patch_status(
                &wfe.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        if acked.is_some() {
            self.memory.persisted(&uid);
        }
        self.memory.wrote(wfe, &updated);
        Ok(updated)
    }

    /// Writes the outcome of an execution. The outcome follows from the execution resource's
    /// final state, so the audit events it makes due are delivered first and acknowledged in the
    /// same write; should the write fail, the retry finds the same outcome and the receiver
    /// recognises the redelivered events by their `event_id`.
    async fn write_outcome(
        &self,
        wfe: &WorkflowExecution,
        mut status: WorkflowExecutionStatus,
    ) -> Result<WorkflowExecution, Error> {
        let mut candidate = wfe.clone();
        candidate.status = Some(status.clone());
        if let Err(e) = self.send_due(&candidate).await {
            self.mark_audit_failed(&mut status, &e);
        }
        let updated = self.write_status(wfe, status).await?;
        self.memory
            .outcome_recorded(&wfe.uid().unwrap_or_default(), self.now());
        Ok(updated)
    }

    /// Sets `AuditRecorded=True` in a terminal status once every event due is acknowledged, so
    /// that the acknowledgement travels with the write that is made anyway.
    fn mark_audit_recorded(&self, status: &mut WorkflowExecutionStatus) {
        if !status.phase.is_some_and(|p| p.is_terminal()) || !audit::all_delivered(status) {
            return;
        }
        let g = status.observed_generation;
        let message = format!(
            "{} audit event(s) acknowledged by the audit sink",
            status.audit_delivered.len()
        );
        transitions::set_condition(
            &mut status.conditions,
            cond::AUDIT_RECORDED,
            true,
            "AuditSucceeded",
            &message,
            g,
            self.now(),
        );
    }

    /// Sets `AuditRecorded=False` with the delivery error.
    pub(super) fn mark_audit_failed(
        &self,
        status: &mut WorkflowExecutionStatus,
        e: &audit::AuditError,
    ) {
        let g = status.observed_generation;
        transitions::set_condition(
            &mut status.conditions,
            cond::AUDIT_RECORDED,
            false,
            "AuditFailed",
            &e.to_string(),
            g,
            self.now(),
        );
    }
}
