//! Checks before any guard or dispatch that need more than the spec (issue #18): the target's kind
//! resolved through API discovery ([`crate::targets`]) and the workflow policy
//! ([`crate::policy`]). A refusal ends the request in `Failed` before execution
//! (`ConfigurationError`, `wasExecutionFailure=false`) with an Event and the `workflow.failed`
//! audit event, so it is never retried in a loop.

use kube::Client;
use wfe_api::{FailureReason, WorkflowExecution};
use wfe_executor::Failure;

use crate::reconcile::ControllerConfig;

/// Event reason of a target that cannot be resolved or is not a valid target.
pub const INVALID_TARGET: &str = "InvalidTarget";
/// Event reason of a request outside the workflow policy.
pub const POLICY_VIOLATION: &str = "PolicyViolation";

/// A refused request: the failure to record and the Event's reason.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The failure (`ConfigurationError`, did not execute).
    pub failure: Failure,
    /// The Warning Event's reason.
    pub event_reason: &'static str,
}

/// The refusal of `wfe`, if any. `Err` only when API discovery failed and nothing was ever
/// discovered (the reconcile is retried with backoff).
pub async fn check(
    client: &Client,
    cfg: &ControllerConfig,
    wfe: &WorkflowExecution,
) -> Result<Option<Refusal>, kube::Error> {
    if let Err(e) = crate::targets::canonical(client, &wfe.spec.target_resource).await? {
        return Ok(Some(Refusal {
            failure: Failure::new(FailureReason::ConfigurationError, e.to_string(), false),
            event_reason: INVALID_TARGET,
        }));
    }
    Ok(refusal_by_policy(cfg, wfe))
}

/// The refusal of `wfe` by the workflow policy alone (pure).
pub fn refusal_by_policy(cfg: &ControllerConfig, wfe: &WorkflowExecution) -> Option<Refusal> {
    let violations = cfg.policy.current().violations(&wfe.spec);
    (!violations.is_empty()).then(|| Refusal {
        failure: Failure::new(
            FailureReason::ConfigurationError,
            format!("refused by the workflow policy: {}", violations.join("; ")),
            false,
        ),
        event_reason: POLICY_VIOLATION,
    })
}
