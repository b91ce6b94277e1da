//! Retention: when a finished WorkflowExecution may be deleted, as a pure function of it and of
//! the others on its target (DESIGN §3's guards read that history, so retention must not erase
//! what a guard still needs).
//!
//! A finished WorkflowExecution is kept while any of these holds:
//! * it still owes audit events (they are sent from its status);
//! * it still counts for a guard of its target: a failure (of the workflow or before it) with no
//!   later success and no clearance on the target, i.e. a block, the failure count of
//!   `ExhaustedRetries` or a backoff;
//! * the target's cooldown after it has not passed (it may be the latest execution there);
//! * its retention time since it finished has not passed.
//!
//! Otherwise it is deleted; the finalizer then releases what it still held, like any deletion.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use wfe_api::Phase;

use crate::guards::Prior;

/// What to do with a WorkflowExecution now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Not finished, or retention is off: nothing to do.
    NotApplicable,
    /// Keep it, and look again at this time.
    KeepUntil(Timestamp),
    /// Keep it until something else changes (a later success, a clearance, an audit delivery).
    Keep(&'static str),
    /// Delete it.
    Delete,
}

/// Decides for `me` given the other WorkflowExecutions on its target. `ttl: None` turns
/// retention off.
pub fn decide(
    me: &Prior,
    others: &[Prior],
    owes_audit: bool,
    ttl: Option<Duration>,
    cooldown: Duration,
    now: Timestamp,
) -> Retention {
    let Some(ttl) = ttl else {
        return Retention::NotApplicable;
    };
    if !me.phase.is_terminal() {
        return Retention::NotApplicable;
    }
    if owes_audit {
        return Retention::Keep("it still owes audit events");
    }
    if me.phase == Phase::Failed && me.attempted && !me.cleared && !superseded(me, others) {
        return Retention::Keep(if me.was_execution_failure {
            "it blocks its target until the block is cleared"
        } else {
            "it counts for the backoff of its target"
        });
    }
    let finished = me.completed.or(me.created);
    let Some(finished) = finished else {
        return Retention::Delete;
    };
    let until = finished + to_signed(ttl.max(cooldown));
    if until > now {
        Retention::KeepUntil(until)
    } else {
        Retention::Delete
    }
}

/// True when a later execution on the target succeeded or was cleared: the guards no longer
/// read `me` (they stop at the most recent success or clearance).
fn superseded(me: &Prior, others: &[Prior]) -> bool {
    let mine = me.completed.or(me.created);
    others.iter().filter(|p| p.id != me.id).any(|p| {
        p.attempted
            && p.phase.is_terminal()
            && (p.phase == Phase::Succeeded || p.cleared)
            && p.completed.or(p.created) > mine
    })
}

fn to_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wfe_api::FailureReason;

    const DAY: Duration = Duration::from_secs(86_400);
    const COOLDOWN: Duration = Duration::from_secs(300);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn prior(id: &str, phase: Phase, completed: i64) -> Prior {
        Prior {
            id: id.into(),
            phase,
            attempted: true,
            created: Some(at(completed - 10)),
            completed: Some(at(completed)),
            failure_reason: None,
            was_execution_failure: false,
            cleared: false,
        }
    }

    fn failed(id: &str, completed: i64, ran: bool) -> Prior {
        Prior {
            failure_reason: Some(if ran {
                FailureReason::TaskFailed
            } else {
                FailureReason::ImagePullBackOff
            }),
            was_execution_failure: ran,
            ..prior(id, Phase::Failed, completed)
        }
    }

    #[test]
    fn a_success_is_kept_for_its_time_then_deleted() {
        let me = prior("ns/a", Phase::Succeeded, 0);
        assert_eq!(
            decide(&me, &[], false, Some(DAY), COOLDOWN, at(60)),
            Retention::KeepUntil(at(86_400))
        );
        assert_eq!(
            decide(&me, &[], false, Some(DAY), COOLDOWN, at(86_400)),
            Retention::Delete
        );
    }

    #[test]
    fn retention_off_or_unfinished_does_nothing() {
        let me = prior("ns/a", Phase::Succeeded, 0);
        assert_eq!(
            decide(&me, &[], false, None, COOLDOWN, at(1_000_000)),
            Retention::NotApplicable
        );
        let running = prior("ns/b", Phase::Running, 0);
        assert_eq!(
            decide(&running, &[], false, Some(DAY), COOLDOWN, at(1_000_000)),
            Retention::NotApplicable
        );
    }

    #[test]
    fn owed_audit_events_keep_it() {
        let me = prior("ns/a", Phase::Succeeded, 0);
        assert!(matches!(
            decide(&me, &[], true, Some(DAY), COOLDOWN, at(10 * 86_400)),
            Retention::Keep(_)
        ));
    }

    #[test]
    fn a_block_is_kept_until_cleared_or_superseded() {
        let me = failed("ns/a", 0, true);
        let late = at(10 * 86_400);
        assert_eq!(
            decide(&me, &[], false, Some(DAY), COOLDOWN, late),
            Retention::Keep("it blocks its target until the block is cleared")
        );
        // Cleared: an ordinary finished execution again.
        let cleared = Prior {
            cleared: true,
            ..me.clone()
        };
        assert_eq!(
            decide(&cleared, &[], false, Some(DAY), COOLDOWN, late),
            Retention::Delete
        );
        // A later success on the target (after a clearance of another one) supersedes it.
        let later = prior("ns/b", Phase::Succeeded, 100);
        assert_eq!(
            decide(&me, &[later], false, Some(DAY), COOLDOWN, late),
            Retention::Delete
        );
        // An earlier success does not.
        let earlier = prior("ns/c", Phase::Succeeded, -100);
        assert!(matches!(
            decide(&me, &[earlier], false, Some(DAY), COOLDOWN, late),
            Retention::Keep(_)
        ));
    }

    #[test]
    fn pre_execution_failures_count_for_backoff_until_superseded() {
        let me = failed("ns/a", 0, false);
        let late = at(10 * 86_400);
        assert_eq!(
            decide(&me, &[], false, Some(DAY), COOLDOWN, late),
            Retention::Keep("it counts for the backoff of its target")
        );
        // A guard outcome that never attempted (Deduplicated) counts for nothing.
        let dedup = Prior {
            attempted: false,
            ..failed("ns/d", 0, false)
        };
        assert_eq!(
            decide(&dedup, &[], false, Some(DAY), COOLDOWN, late),
            Retention::Delete
        );
    }

    #[test]
    fn a_short_retention_never_ends_the_cooldown_early() {
        let me = prior("ns/a", Phase::Succeeded, 0);
        assert_eq!(
            decide(
                &me,
                &[],
                false,
                Some(Duration::from_secs(60)),
                COOLDOWN,
                at(120)
            ),
            Retention::KeepUntil(at(300))
        );
    }
}
