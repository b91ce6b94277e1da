//! The `Pending` phase: validation, the guards (one target at a time in this process) and
//! dispatch through the executor.

use std::sync::Arc;

use kube::{
    ResourceExt,
    runtime::{controller::Action, reflector::ObjectRef},
};
use wfe_api::{FailureReason, Phase, TargetKey, WorkflowExecution, conditions as cond};
use wfe_executor::{CreateOutcome, Executor, Failure};

use super::{Context, Error, effects, effects::Release, id_of};
use crate::{
    guards::{Prior, Verdict, evaluate},
    transitions,
};

impl Context {
    pub(super) async fn pending(&self, wfe: Arc<WorkflowExecution>) -> Result<Action, Error> {
        // Validation that the API server cannot do.
        if let Err(e) = wfe.spec.validate() {
            let reason = if e.0.iter().any(|f| f.field == "spec.executionEngine") {
                FailureReason::UnsupportedEngine
            } else {
                FailureReason::ConfigurationError
            };
            let f = Failure::new(reason, e.to_string(), false);
            return self
                .fail_before(&wfe, f, None, false, "WorkflowValidationFailed", None)
                .await;
        }
        let executor = match self.registry.resolve(wfe.engine()).await {
            Ok(executor) => executor.clone(),
            Err(unavailable) => {
                let f = Failure::new(
                    FailureReason::UnsupportedEngine,
                    unavailable.to_string(),
                    false,
                );
                return self
                    .fail_before(&wfe, f, None, false, "WorkflowValidationFailed", None)
                    .await;
            }
        };
        if let Err(errors) = executor.validate(&wfe) {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let f = Failure::new(FailureReason::ConfigurationError, message, false);
            return self
                .fail_before(&wfe, f, None, false, "WorkflowValidationFailed", None)
                .await;
        }

        // The canonical target and the workflow policy (crate::preflight).
        if let Some(r) = crate::preflight::check(&self.client, &self.cfg, &wfe).await? {
            return self
                .fail_before(&wfe, r.failure, None, false, r.event_reason, None)
                .await;
        }

        // Guards and dispatch, one target at a time.
        let key = wfe.target_key();
        let target_lock = self.target_lock(&key);
        let _held = target_lock.lock().await;
        // Re-read from the cache: another reconcile may have written this object meanwhile.
        let wfe = self.freshest(self.store.get(&ObjectRef::from_obj(&*wfe)).unwrap_or(wfe));
        if wfe.phase() != Phase::Pending || wfe.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let now = self.now();
        let mut others: Vec<Prior> = self.index.priors(&key, &self.store, |o| self.freshest(o));
        if let Some(claim) = self.claim_on(&key, &wfe) {
            others.push(claim);
        }
        match evaluate(
            &Prior::of(&wfe),
            &others,
            &self.cfg.guards,
            now,
            &wfe.spec.target_resource,
        ) {
            Verdict::Proceed => self.dispatch(&wfe, &executor, &key).await,
            Verdict::Deduplicated { holder } => {
                let message = format!(
                    "execution resource for {} is held by WorkflowExecution {holder}",
                    wfe.spec.target_resource
                );
                let f = Failure::new(FailureReason::Deduplicated, message, false);
                self.fail_before(
                    &wfe,
                    f,
                    Some(holder),
                    false,
                    "WorkflowFailed",
                    Some("Deduplicated"),
                )
                .await
            }
            Verdict::Fail { reason, message } => {
                let f = Failure::new(reason, message, false);
                self.fail_before(
                    &wfe,
                    f,
                    None,
                    false,
                    "WorkflowFailed",
                    Some(reason.as_str()),
                )
                .await
            }
            Verdict::Wait {
                reason,
                until,
                message,
            } => {
                let deferred = effects::deferred(&wfe, reason, &message, until, now);
                let already = wfe.condition(cond::BLOCKED).is_some_and(|c| {
                    c.status == "True" && c.reason == reason && c.message == message
                });
                if already && wfe.status.as_ref().and_then(|s| s.phase).is_some() {
                    // Said and counted already: only look again when the guard expires.
                    return Ok(Action::requeue(match deferred.then {
                        effects::Then::Requeue(after) => after,
                        effects::Then::AfterTerminal => self.cfg.running_resync,
                    }));
                }
                self.conclude(&wfe, deferred).await
            }
        }
    }

    /// A dispatch of this process on `key` by another WorkflowExecution that the cache does not
    /// show as active yet.
    fn claim_on(&self, key: &TargetKey, me: &WorkflowExecution) -> Option<Prior> {
        let (uid, id) = self.memory.claim_on(key)?;
        if Some(&uid) == me.uid().as_ref() {
            return None;
        }
        let cached = self
            .index
            .live(key, &self.store)
            .into_iter()
            .find(|o| o.uid().as_deref() == Some(uid.as_str()));
        match cached {
            // The cache caught up (it speaks for itself), or the claimant was deleted.
            Some(o) if o.phase() != Phase::Pending || o.metadata.deletion_timestamp.is_some() => {
                self.memory.drop_claim(key, None);
                None
            }
            None => {
                self.memory.drop_claim(key, None);
                None
            }
            Some(_) => Some(Prior {
                id,
                phase: Phase::Running,
                attempted: true,
                created: None,
                completed: None,
                failure_reason: None,
                was_execution_failure: false,
                cleared: false,
            }),
        }
    }

    async fn dispatch(
        &self,
        wfe: &WorkflowExecution,
        executor: &Arc<dyn Executor>,
        key: &TargetKey,
    ) -> Result<Action, Error> {
        match executor.create(wfe).await {
            Ok(CreateOutcome::Created(reference)) => {
                self.dispatched(wfe, executor, key, reference, false).await
            }
            Ok(CreateOutcome::Adopted(reference)) => {
                self.dispatched(wfe, executor, key, reference, true).await
            }
            Ok(CreateOutcome::HeldBy { holder, reference }) => {
                let message = format!(
                    "{} {}/{} is held by WorkflowExecution {holder}",
                    reference.kind, reference.namespace, reference.name
                );
                let f = Failure::new(FailureReason::Deduplicated, message, false);
                let holder = Some(holder.to_string());
                self.fail_before(
                    wfe,
                    f,
                    holder,
                    false,
                    "WorkflowFailed",
                    Some("Deduplicated"),
                )
                .await
            }
            Err(e) => match e.failure_reason() {
                Some(reason) => {
                    let f = Failure::new(reason, e.message().to_string(), false);
                    self.fail_before(wfe, f, None, true, "WorkflowFailed", None)
                        .await
                }
                None => {
                    if wfe.status.as_ref().and_then(|s| s.phase).is_none() {
                        // Never leave the phase empty while retrying.
                        let _ = self.write_status(wfe, transitions::pending(wfe)).await;
                    }
                    Err(e.into())
                }
            },
        }
    }

    /// The execution resource exists: claim the target (the cache may not show this dispatch
    /// yet) and record `Running`.
    async fn dispatched(
        &self,
        wfe: &WorkflowExecution,
        executor: &Arc<dyn Executor>,
        key: &TargetKey,
        reference: wfe_api::ExecutionRef,
        adopted: bool,
    ) -> Result<Action, Error> {
        let e = effects::dispatched(
            wfe,
            &reference,
            adopted,
            executor.initial_summary(),
            self.cfg.running_resync,
            self.now(),
        );
        self.memory.claim(key, wfe, id_of(wfe));
        match self.conclude(wfe, e).await {
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => {
                // The request is gone although its finalizer was added before the create: the
                // API server can complete a delete that raced with the finalizer's patch. Nothing
                // would ever remove what was just created, and it would hold the target: remove it
                // now (owner-checked, as any release).
                tracing::warn!(
                    wfe = %id_of(wfe),
                    "the WorkflowExecution was deleted while its execution resource was created; removing it"
                );
                self.release_lock(wfe, Release::Deleted).await?;
                self.memory.drop_claim(key, wfe.uid().as_deref());
                Ok(Action::await_change())
            }
            other => other,
        }
    }

    /// Ends the request before anything ran; `blocked`: the guard reason to count.
    async fn fail_before(
        &self,
        wfe: &WorkflowExecution,
        failure: Failure,
        deduplicated_by: Option<String>,
        attempted: bool,
        event_reason: &str,
        blocked: Option<&str>,
    ) -> Result<Action, Error> {
        let kind = self
            .executor(wfe)
            .map_or("execution resource", |e| e.resource_kind());
        let mut e = effects::pre_execution_failed(
            wfe,
            kind,
            &failure,
            deduplicated_by,
            attempted,
            event_reason,
            self.now(),
        );
        if let Some(reason) = blocked {
            e = e.blocked_by(reason);
        }
        self.conclude(wfe, e).await
    }
}
