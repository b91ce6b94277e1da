//! What this process remembers of each WorkflowExecution between reconciles, beyond the cache:
//! one map by UID, dropped at once by [`Memory::forget`] when the object settles or goes.
//!
//! Everything here is an optimisation or a bridge over the cache's lag: a dispatch the cache does
//! not show yet (the claim on its target), audit acknowledgements not yet written to the status,
//! the newest copy of an object this process wrote, when it recorded an outcome, how often audit
//! delivery failed, and the refused clearance reason already reported.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use wfe_api::{TargetKey, WorkflowExecution};

/// Past this many objects, the entries that only save requests (newest copies, outcome times)
/// are dropped: only an optimisation is lost.
pub const MAX_TRACKED: usize = 50_000;

/// The per-object memory of the reconcilers.
#[derive(Debug, Default)]
pub struct Memory {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: HashMap<String, Remembered>,
    /// Target → UID of the object whose `claim` is on it.
    claims: HashMap<TargetKey, String>,
}

#[derive(Debug, Default)]
struct Remembered {
    /// A dispatch of this process that the cache may not show yet: the target and
    /// `namespace/name`.
    claim: Option<(TargetKey, String)>,
    /// Audit events acknowledged but not yet persisted in the status.
    acked: BTreeSet<String>,
    /// Consecutive audit delivery failures.
    audit_failures: u32,
    /// The refused clearance reason already reported.
    refused_clearance: Option<String>,
    /// This process's newest write that the cache may not show yet.
    recent: Option<Recent>,
    /// When this process recorded the outcome (sub-second, unlike `completionTime`).
    outcome_recorded: Option<Timestamp>,
}

impl Remembered {
    fn is_empty(&self) -> bool {
        self.claim.is_none()
            && self.acked.is_empty()
            && self.audit_failures == 0
            && self.refused_clearance.is_none()
            && self.recent.is_none()
            && self.outcome_recorded.is_none()
    }
}

/// The newest copy of an object this process wrote, and the versions that copy supersedes.
/// Resource versions are opaque: a cached copy is known to be stale only when its version is
/// one this process replaced, never by comparing versions.
#[derive(Debug)]
struct Recent {
    superseded: HashSet<String>,
    latest: Arc<WorkflowExecution>,
}

impl Inner {
    fn entry(&mut self, uid: &str) -> &mut Remembered {
        self.objects.entry(uid.to_string()).or_default()
    }

    /// Applies `f` to the entry of `uid` if there is one, and drops the entry if it became empty.
    fn update(&mut self, uid: &str, f: impl FnOnce(&mut Remembered)) {
        if let Some(r) = self.objects.get_mut(uid) {
            f(r);
            if r.is_empty() {
                self.objects.remove(uid);
            }
        }
    }

    /// Keeps the map bounded: drops what only saves requests.
    fn bound(&mut self) {
        if self.objects.len() < MAX_TRACKED {
            return;
        }
        self.objects.retain(|_, r| {
            r.recent = None;
            r.outcome_recorded = None;
            !r.is_empty()
        });
    }
}

fn uid_of(wfe: &WorkflowExecution) -> String {
    wfe.uid().unwrap_or_default()
}

impl Memory {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops everything remembered of `uid` (settled or gone).
    pub fn forget(&self, uid: &str) {
        let mut inner = self.inner();
        if let Some(r) = inner.objects.remove(uid)
            && let Some((key, _)) = r.claim
            && inner.claims.get(&key).is_some_and(|u| u == uid)
        {
            inner.claims.remove(&key);
        }
    }

    /// Number of objects remembered.
    pub fn len(&self) -> usize {
        self.inner().objects.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---------------------------------------------------------------- newest copies

    /// The newest known copy of `wfe`: the cached copy, unless this process has written a newer
    /// one that the watch has not delivered yet.
    pub fn freshest(&self, wfe: Arc<WorkflowExecution>) -> Arc<WorkflowExecution> {
        let Some(uid) = wfe.uid() else {
            return wfe;
        };
        let mut inner = self.inner();
        let Some(recent) = inner.objects.get(&uid).and_then(|r| r.recent.as_ref()) else {
            return wfe;
        };
        match wfe.resource_version() {
            Some(rv) if recent.superseded.contains(&rv) => recent.latest.clone(),
            // The cache caught up (or somebody else wrote since): it speaks for itself.
            _ => {
                inner.update(&uid, |r| r.recent = None);
                wfe
            }
        }
    }

    /// Remembers that this process replaced `before` with `after`.
    pub fn wrote(&self, before: &WorkflowExecution, after: &WorkflowExecution) {
        let (Some(uid), Some(rv)) = (after.uid(), before.resource_version()) else {
            return;
        };
        let latest = Arc::new(after.clone());
        let mut inner = self.inner();
        inner.bound();
        let recent = inner.entry(&uid).recent.get_or_insert_with(|| Recent {
            superseded: HashSet::new(),
            latest: latest.clone(),
        });
        recent.superseded.insert(rv);
        recent.latest = latest;
    }

    // ---------------------------------------------------------------- claims

    /// Records that `wfe` dispatched on `key` (replacing another object's claim there).
    pub fn claim(&self, key: &TargetKey, wfe: &WorkflowExecution, id: String) {
        let uid = uid_of(wfe);
        let mut inner = self.inner();
        if let Some(previous) = inner.claims.insert(key.clone(), uid.clone())
            && previous != uid
        {
            inner.update(&previous, |r| r.claim = None);
        }
        inner.entry(&uid).claim = Some((key.clone(), id));
    }

    /// The claim on `key`: the claimant's UID and `namespace/name`.
    pub fn claim_on(&self, key: &TargetKey) -> Option<(String, String)> {
        let inner = self.inner();
        let uid = inner.claims.get(key)?;
        let (_, id) = inner.objects.get(uid)?.claim.as_ref()?;
        Some((uid.clone(), id.clone()))
    }

    /// Drops the claim on `key`, or only the one of `uid` when given.
    pub fn drop_claim(&self, key: &TargetKey, uid: Option<&str>) {
        let mut inner = self.inner();
        let Some(holder) = inner.claims.get(key).cloned() else {
            return;
        };
        if uid.is_some_and(|u| u != holder) {
            return;
        }
        inner.claims.remove(key);
        inner.update(&holder, |r| r.claim = None);
    }

    // ---------------------------------------------------------------- audit

    /// Audit events of `uid` acknowledged but not yet persisted.
    pub fn acked(&self, uid: &str) -> Option<BTreeSet<String>> {
        self.inner()
            .objects
            .get(uid)
            .map(|r| r.acked.clone())
            .filter(|a| !a.is_empty())
    }

    /// Records acknowledged events (and a successful delivery).
    pub fn acknowledged(&self, uid: &str, events: impl IntoIterator<Item = String>) {
        let mut inner = self.inner();
        let r = inner.entry(uid);
        r.acked.extend(events);
        r.audit_failures = 0;
    }

    /// The acknowledgements were written to the status.
    pub fn persisted(&self, uid: &str) {
        self.inner().update(uid, |r| r.acked.clear());
    }

    /// Counts a failed delivery; returns the number of consecutive failures.
    pub fn audit_failed(&self, uid: &str) -> u32 {
        let mut inner = self.inner();
        let r = inner.entry(uid);
        r.audit_failures += 1;
        r.audit_failures
    }

    /// Consecutive failed deliveries of `uid` (0: none pending).
    pub fn audit_failures(&self, uid: &str) -> u32 {
        self.inner()
            .objects
            .get(uid)
            .map_or(0, |r| r.audit_failures)
    }

    // ---------------------------------------------------------------- outcomes, clearances

    /// This process recorded the outcome of `uid` at `at`.
    pub fn outcome_recorded(&self, uid: &str, at: Timestamp) {
        let mut inner = self.inner();
        inner.bound();
        inner.entry(uid).outcome_recorded = Some(at);
    }

    /// When this process recorded the outcome of `uid`, if it did.
    pub fn outcome_at(&self, uid: &str) -> Option<Timestamp> {
        self.inner()
            .objects
            .get(uid)
            .and_then(|r| r.outcome_recorded)
    }

    /// The lock of `uid` was released: its outcome time is no longer needed.
    pub fn released(&self, uid: &str) {
        self.inner().update(uid, |r| r.outcome_recorded = None);
    }

    /// Records a refused clearance reason; false when it was reported already.
    pub fn refusal_is_new(&self, uid: &str, reason: &str) -> bool {
        let mut inner = self.inner();
        let r = inner.entry(uid);
        if r.refused_clearance.as_deref() == Some(reason) {
            return false;
        }
        r.refused_clearance = Some(reason.to_string());
        true
    }

    /// The clearance was recorded.
    pub fn cleared(&self, uid: &str) {
        self.inner().update(uid, |r| r.refused_clearance = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wfe(name: &str, rv: &str) -> WorkflowExecution {
        wfe_api::testing::wfe(name)
            .namespace("ns")
            .resource_version(rv)
            .build()
    }

    #[test]
    fn forget_drops_everything_at_once() {
        let m = Memory::default();
        let (before, after) = (wfe("a", "1"), wfe("a", "2"));
        let key = before.target_key();
        m.wrote(&before, &after);
        m.claim(&key, &before, "ns/a".into());
        m.acknowledged("uid-a", ["execution.started".to_string()]);
        m.audit_failed("uid-a");
        m.outcome_recorded("uid-a", Timestamp::UNIX_EPOCH);
        assert!(m.refusal_is_new("uid-a", "short"));
        assert_eq!(m.len(), 1);
        m.forget("uid-a");
        assert!(m.is_empty());
        assert_eq!(m.claim_on(&key), None);
        assert_eq!(m.acked("uid-a"), None);
        assert_eq!(m.audit_failures("uid-a"), 0);
        assert_eq!(m.outcome_at("uid-a"), None);
        assert!(m.refusal_is_new("uid-a", "short"));
    }

    #[test]
    fn the_newest_copy_wins_until_the_cache_catches_up() {
        let m = Memory::default();
        let (v1, v2) = (Arc::new(wfe("a", "1")), wfe("a", "2"));
        m.wrote(&v1, &v2);
        assert_eq!(
            m.freshest(v1.clone()).resource_version().as_deref(),
            Some("2")
        );
        let cached = Arc::new(wfe("a", "3"));
        assert_eq!(m.freshest(cached).resource_version().as_deref(), Some("3"));
        assert!(m.is_empty(), "caught up: nothing left to remember");
        assert_eq!(m.freshest(v1).resource_version().as_deref(), Some("1"));
    }

    #[test]
    fn one_claim_per_target() {
        let m = Memory::default();
        let (a, b) = (wfe("a", "1"), wfe("b", "1"));
        let key = a.target_key();
        m.claim(&key, &a, "ns/a".into());
        m.claim(&key, &b, "ns/b".into());
        assert_eq!(m.claim_on(&key), Some(("uid-b".into(), "ns/b".into())));
        m.drop_claim(&key, Some("uid-a"));
        assert!(
            m.claim_on(&key).is_some(),
            "only the holder's claim is dropped"
        );
        m.forget("uid-a");
        assert!(m.claim_on(&key).is_some());
        m.drop_claim(&key, None);
        assert_eq!(m.claim_on(&key), None);
        assert!(m.is_empty());
    }

    #[test]
    fn acknowledgements_until_persisted() {
        let m = Memory::default();
        assert_eq!(m.audit_failed("u"), 1);
        assert_eq!(m.audit_failed("u"), 2);
        m.acknowledged("u", ["a".to_string()]);
        assert_eq!(m.audit_failures("u"), 0);
        assert_eq!(m.acked("u").map(|a| a.len()), Some(1));
        m.persisted("u");
        assert_eq!(m.acked("u"), None);
        assert!(m.is_empty());
    }
}
