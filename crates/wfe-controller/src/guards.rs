//! The engine-agnostic guards that run before any dispatch (DESIGN.md §3), as pure functions of
//! the WorkflowExecutions that exist on the same target.
//!
//! Order: the resource lock; then the guards that never expire (a previous execution failure,
//! exhausted retries), so that a request that cannot run ends at once instead of waiting out a
//! cooldown first; then the guards that expire (cooldown, backoff).

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use wfe_api::{FailureReason, Phase, WorkflowExecution};

/// Guard settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// Wait after an execution on a target ends before the next one starts.
    pub cooldown: Duration,
    /// First backoff delay after a pre-execution failure.
    pub backoff_base: Duration,
    /// Largest backoff delay.
    pub backoff_max: Duration,
    /// Consecutive pre-execution failures after which requests fail with `ExhaustedRetries`.
    pub max_consecutive_failures: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            cooldown: Duration::from_secs(300),
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(600),
            max_consecutive_failures: 5,
        }
    }
}

/// `min(base * 2^(n-1), max)` for the n-th consecutive failure (n ≥ 1); zero for n = 0.
pub fn backoff_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.checked_pow(failures - 1).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// What one other WorkflowExecution on the target tells the guards.
#[derive(Clone, Debug, PartialEq)]
pub struct Prior {
    /// `namespace/name`.
    pub id: String,
    /// Phase.
    pub phase: Phase,
    /// True when it attempted an execution (guard outcomes and validation failures never do).
    pub attempted: bool,
    /// When it was created (orders requests).
    pub created: Option<Timestamp>,
    /// When its execution ended.
    pub completed: Option<Timestamp>,
    /// The failure reason when failed.
    pub failure_reason: Option<FailureReason>,
    /// The workflow ran before failing.
    pub was_execution_failure: bool,
    /// A person cleared the block it caused.
    pub cleared: bool,
}

impl Prior {
    /// Summarizes a WorkflowExecution.
    pub fn of(wfe: &WorkflowExecution) -> Prior {
        let status = wfe.status.as_ref();
        let details = status.and_then(|s| s.failure_details.as_ref());
        Prior {
            id: format!("{}/{}", wfe.namespace().unwrap_or_default(), wfe.name_any()),
            phase: wfe.phase(),
            attempted: status.is_some_and(|s| s.start_time.is_some()),
            created: wfe.metadata.creation_timestamp.as_ref().map(|t| t.0),
            completed: status.and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
            failure_reason: details.map(|d| d.reason),
            was_execution_failure: details.is_some_and(|d| d.was_execution_failure),
            cleared: status.is_some_and(|s| s.block_clearance.is_some()),
        }
    }

    fn active(&self) -> bool {
        self.phase == Phase::Running || (self.attempted && !self.phase.is_terminal())
    }
}

/// The guards' verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Dispatch now.
    Proceed,
    /// Another execution holds the target: fail with `Deduplicated`.
    Deduplicated {
        /// `namespace/name` of the holder.
        holder: String,
    },
    /// Wait (stay Pending with `Blocked=True`) until the given time.
    Wait {
        /// `CooldownActive` or `BackoffActive`.
        reason: &'static str,
        /// When the guard expires.
        until: Timestamp,
        /// What to tell people.
        message: String,
    },
    /// Fail at once with a guard reason that does not expire.
    Fail {
        /// `ExhaustedRetries` or `PreviousExecutionFailed`.
        reason: FailureReason,
        /// What happened and how to clear it.
        message: String,
    },
}

/// Evaluates the guards for `me` against the other WorkflowExecutions on its target.
pub fn evaluate(
    me: &Prior,
    others: &[Prior],
    cfg: &GuardConfig,
    now: Timestamp,
    target: &str,
) -> Verdict {
    let others: Vec<&Prior> = others.iter().filter(|p| p.id != me.id).collect();

    // 1. Resource lock: one active execution per target.
    if let Some(holder) = others
        .iter()
        .filter(|p| p.active())
        .min_by_key(|p| p.created)
    {
        return Verdict::Deduplicated {
            holder: holder.id.clone(),
        };
    }

    // History of attempted, finished executions, newest first.
    let mut history: Vec<&&Prior> = others
        .iter()
        .filter(|p| p.attempted && p.phase.is_terminal())
        .collect();
    history.sort_by_key(|p| std::cmp::Reverse(p.completed.or(p.created)));
    // Only what happened after the most recent success or clearance counts for blocking.
    let since_reset: Vec<&&Prior> = history
        .iter()
        .copied()
        .take_while(|p| p.phase != Phase::Succeeded && !p.cleared)
        .collect();

    // 2. A failure after the workflow started blocks until cleared.
    if let Some(failed) = since_reset.iter().find(|p| p.was_execution_failure) {
        return Verdict::Fail {
            reason: FailureReason::PreviousExecutionFailed,
            message: format!(
                "a previous execution on {target} ({}) failed after the workflow started and may have changed the target; \
                 review it, then clear the block with: kubectl annotate workflowexecution -n {} {} {}=\"<reason of at least 10 words>\"",
                failed.id,
                failed.id.split('/').next().unwrap_or_default(),
                failed.id.split('/').nth(1).unwrap_or_default(),
                wfe_api::CLEAR_BLOCK_ANNOTATION,
            ),
        };
    }

    // 3. Consecutive pre-execution failures.
    let failures = u32::try_from(since_reset.len()).unwrap_or(u32::MAX);
    if cfg.max_consecutive_failures > 0 && failures >= cfg.max_consecutive_failures {
        let last = &since_reset[0];
        return Verdict::Fail {
            reason: FailureReason::ExhaustedRetries,
            message: format!(
                "{failures} consecutive executions on {target} failed before the workflow started (latest: {}); \
                 fix the cause, then clear the block by annotating the latest one with {}",
                last.id,
                wfe_api::CLEAR_BLOCK_ANNOTATION
            ),
        };
    }

    // 4. Cooldown after the most recent execution.
    if let Some(latest) = history.first()
        && let Some(done) = latest.completed
    {
        let until = done + to_signed(cfg.cooldown);
        if until > now {
            return Verdict::Wait {
                reason: "CooldownActive",
                until,
                message: format!("cooldown after {} on {target} until {until}", latest.id),
            };
        }
    }

    // 5. Backoff after pre-execution failures.
    if failures > 0
        && let Some(done) = since_reset[0].completed
    {
        let delay = backoff_delay(failures, cfg.backoff_base, cfg.backoff_max);
        let until = done + to_signed(delay);
        if until > now {
            return Verdict::Wait {
                reason: "BackoffActive",
                until,
                message: format!(
                    "backoff after {failures} consecutive pre-execution failure(s) on {target} until {until} ({}s)",
                    delay.as_secs()
                ),
            };
        }
    }
    Verdict::Proceed
}

fn to_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        format!("2026-01-01T{s}Z").parse().unwrap()
    }

    fn prior(id: &str, phase: Phase) -> Prior {
        Prior {
            id: id.into(),
            phase,
            attempted: true,
            created: Some(t("00:00:00")),
            completed: None,
            failure_reason: None,
            was_execution_failure: false,
            cleared: false,
        }
    }

    fn done(id: &str, phase: Phase, at: &str) -> Prior {
        Prior {
            completed: Some(t(at)),
            created: Some(t(at)),
            ..prior(id, phase)
        }
    }

    fn failed(id: &str, at: &str, started: bool) -> Prior {
        Prior {
            failure_reason: Some(if started {
                FailureReason::TaskFailed
            } else {
                FailureReason::ImagePullBackOff
            }),
            was_execution_failure: started,
            ..done(id, Phase::Failed, at)
        }
    }

    fn me() -> Prior {
        Prior {
            attempted: false,
            created: Some(t("01:00:00")),
            ..prior("ns/me", Phase::Pending)
        }
    }

    fn cfg() -> GuardConfig {
        GuardConfig::default()
    }

    #[test]
    fn backoff_arithmetic() {
        let (b, m) = (Duration::from_secs(60), Duration::from_secs(600));
        let secs: Vec<u64> = (0..8).map(|n| backoff_delay(n, b, m).as_secs()).collect();
        assert_eq!(secs, [0, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(backoff_delay(40, b, m), m, "no overflow");
        assert_eq!(
            backoff_delay(u32::MAX, Duration::from_secs(u64::MAX / 2), m),
            m
        );
    }

    #[test]
    fn no_history_proceeds() {
        assert_eq!(
            evaluate(&me(), &[], &cfg(), t("01:00:00"), "x"),
            Verdict::Proceed
        );
        // Itself is ignored.
        assert_eq!(
            evaluate(&me(), &[me()], &cfg(), t("01:00:00"), "x"),
            Verdict::Proceed
        );
    }

    #[test]
    fn lock_deduplicates_against_the_active_one() {
        let running = prior("ns/first", Phase::Running);
        assert_eq!(
            evaluate(&me(), &[running], &cfg(), t("01:00:00"), "x"),
            Verdict::Deduplicated {
                holder: "ns/first".into()
            }
        );
        // A pending request that never attempted does not hold the lock.
        let waiting = Prior {
            attempted: false,
            ..prior("ns/other", Phase::Pending)
        };
        assert_eq!(
            evaluate(&me(), &[waiting], &cfg(), t("01:00:00"), "x"),
            Verdict::Proceed
        );
    }

    #[test]
    fn cooldown_after_any_execution() {
        let prev = done("ns/prev", Phase::Succeeded, "00:58:00");
        match evaluate(
            &me(),
            std::slice::from_ref(&prev),
            &cfg(),
            t("01:00:00"),
            "x",
        ) {
            Verdict::Wait { reason, until, .. } => {
                assert_eq!(reason, "CooldownActive");
                assert_eq!(until, t("01:03:00"));
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            evaluate(&me(), &[prev], &cfg(), t("01:03:00"), "x"),
            Verdict::Proceed
        );
    }

    #[test]
    fn guard_outcomes_do_not_count() {
        let mut dedup = done("ns/dup", Phase::Failed, "00:59:00");
        dedup.attempted = false;
        dedup.failure_reason = Some(FailureReason::Deduplicated);
        assert_eq!(
            evaluate(&me(), &[dedup], &cfg(), t("01:00:00"), "x"),
            Verdict::Proceed
        );
    }

    #[test]
    fn execution_failure_blocks_until_cleared() {
        let f = failed("ns/broke", "00:10:00", true);
        match evaluate(&me(), std::slice::from_ref(&f), &cfg(), t("01:00:00"), "x") {
            Verdict::Fail { reason, message } => {
                assert_eq!(reason, FailureReason::PreviousExecutionFailed);
                assert!(
                    message.contains("ns/broke") && message.contains("kubernaut.ai/clear-block")
                );
            }
            v => panic!("{v:?}"),
        }
        // Even within the cooldown it fails at once rather than waiting.
        let recent = failed("ns/broke", "00:59:00", true);
        assert!(matches!(
            evaluate(&me(), &[recent], &cfg(), t("01:00:00"), "x"),
            Verdict::Fail { .. }
        ));
        // Cleared: proceeds (after the cooldown).
        let cleared = Prior {
            cleared: true,
            ..f.clone()
        };
        assert_eq!(
            evaluate(&me(), &[cleared], &cfg(), t("01:00:00"), "x"),
            Verdict::Proceed
        );
        // A later success resets it too.
        let ok = done("ns/ok", Phase::Succeeded, "00:20:00");
        assert_eq!(
            evaluate(&me(), &[f, ok], &cfg(), t("01:00:00"), "x"),
            Verdict::Proceed
        );
    }

    #[test]
    fn backoff_after_pre_execution_failures() {
        let one = [failed("ns/a", "00:55:00", false)];
        // Cooldown (5m) expires at 01:00:00; backoff for 1 failure is 1m: until 00:56, already over.
        assert_eq!(
            evaluate(&me(), &one, &cfg(), t("01:00:00"), "x"),
            Verdict::Proceed
        );
        let c = GuardConfig {
            cooldown: Duration::from_secs(10),
            ..cfg()
        };
        let three = [
            failed("ns/a", "00:50:00", false),
            failed("ns/b", "00:55:00", false),
            failed("ns/c", "00:58:00", false),
        ];
        match evaluate(&me(), &three, &c, t("01:00:00"), "x") {
            Verdict::Wait { reason, until, .. } => {
                assert_eq!(reason, "BackoffActive");
                assert_eq!(until, t("01:02:00"), "3 failures: 4m after the latest");
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            evaluate(&me(), &three, &c, t("01:02:00"), "x"),
            Verdict::Proceed
        );
    }

    #[test]
    fn exhausted_retries_after_max_failures() {
        let c = GuardConfig {
            max_consecutive_failures: 3,
            ..cfg()
        };
        let three = [
            failed("ns/a", "00:10:00", false),
            failed("ns/b", "00:20:00", false),
            failed("ns/c", "00:30:00", false),
        ];
        match evaluate(&me(), &three, &c, t("01:00:00"), "x") {
            Verdict::Fail { reason, message } => {
                assert_eq!(reason, FailureReason::ExhaustedRetries);
                assert!(message.contains("ns/c"), "names the latest: {message}");
            }
            v => panic!("{v:?}"),
        }
        // Clearing the latest resets the count.
        let mut cleared = three.clone();
        cleared[2].cleared = true;
        assert_eq!(
            evaluate(&me(), &cleared, &c, t("01:00:00"), "x"),
            Verdict::Proceed
        );
        // A success in between resets it too.
        let mixed = [
            three[0].clone(),
            done("ns/ok", Phase::Succeeded, "00:15:00"),
            three[1].clone(),
        ];
        assert_eq!(
            evaluate(&me(), &mixed, &c, t("01:00:00"), "x"),
            Verdict::Proceed
        );
    }
}
