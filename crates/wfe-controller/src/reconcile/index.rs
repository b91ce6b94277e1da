//! WorkflowExecutions by target, maintained from the watch: what the guards read about the other
//! requests on a target.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use wfe_api::{Phase, TargetKey, WorkflowExecution, conditions as cond};

use super::id_of;
use crate::guards::Prior;

/// Index of WorkflowExecutions by target key, maintained from the watch.
///
/// Objects with work left are indexed by reference and read from the cache. Settled ones
/// ([`crate::cache::settled`]) are not cached at all: the index keeps the guard summary of each
/// ([`Prior`]), which is all that is ever read of them.
#[derive(Debug, Default)]
pub struct TargetIndex {
    inner: Mutex<IndexInner>,
}

#[derive(Debug, Default)]
struct IndexInner {
    map: HashMap<TargetKey, OnTarget>,
    /// Incremented when the watch lists again; entries not seen again are dropped at its end.
    epoch: u64,
    /// Executions ready to be dispatched ([`ready_to_dispatch`]): the backlog that goes first
    /// under saturation.
    ready: HashSet<ObjectRef<WorkflowExecution>>,
}

/// Bookkeeping (a lock release, an Event) waits at most this long for the dispatch backlog.
pub const YIELD_AT_MOST: Duration = Duration::from_secs(15);

/// What goes first under saturation: bookkeeping that is due yields to dispatch while `ready`
/// executions wait for it ([`ready_to_dispatch`]), so that their dispatch gets the API server
/// first; once it has waited [`YIELD_AT_MOST`] it goes anyway.
pub fn yields_to_dispatch(ready: usize, waited: Duration) -> bool {
    ready > 0 && waited < YIELD_AT_MOST
}

/// Whether an execution waits for its dispatch and nothing but a free worker holds it back:
/// `Pending` (or not looked at yet), not being deleted, not held by a guard (`Blocked`).
pub fn ready_to_dispatch(wfe: &WorkflowExecution) -> bool {
    wfe.phase() == Phase::Pending
        && wfe.metadata.deletion_timestamp.is_none()
        && wfe
            .status
            .as_ref()
            .is_none_or(|s| s.execution_ref.is_none())
        && wfe
            .condition(cond::BLOCKED)
            .is_none_or(|c| c.status != "True")
}

#[derive(Debug, Default)]
struct OnTarget {
    live: Vec<(ObjectRef<WorkflowExecution>, u64)>,
    /// Guard summary, UID (for retention's delete precondition), epoch.
    settled: Vec<(Prior, String, u64)>,
}

impl TargetIndex {
    fn inner(&self) -> std::sync::MutexGuard<'_, IndexInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an object (replacing what was recorded for it); true when it is settled (kept as
    /// its guard summary only).
    pub fn insert(&self, wfe: &WorkflowExecution) -> bool {
        let (r, id) = (key_of(wfe), id_of(wfe));
        let mut inner = self.inner();
        if ready_to_dispatch(wfe) {
            inner.ready.insert(r.clone());
        } else {
            inner.ready.remove(&r);
        }
        let epoch = inner.epoch;
        let on = inner.map.entry(wfe.target_key()).or_default();
        on.live.retain(|(x, _)| *x != r);
        on.settled.retain(|(p, _, _)| p.id != id);
        let settled = crate::cache::settled(wfe);
        if settled {
            on.settled
                .push((Prior::of(wfe), wfe.uid().unwrap_or_default(), epoch));
            on.settled.shrink_to_fit();
        } else {
            on.live.push((r, epoch));
            on.live.shrink_to_fit();
        }
        settled
    }

    /// Forgets an object.
    pub fn remove(&self, wfe: &WorkflowExecution) {
        let (r, id, key) = (key_of(wfe), id_of(wfe), wfe.target_key());
        let mut inner = self.inner();
        inner.ready.remove(&r);
        if let Some(on) = inner.map.get_mut(&key) {
            on.live.retain(|(x, _)| *x != r);
            on.settled.retain(|(p, _, _)| p.id != id);
            if on.live.is_empty() && on.settled.is_empty() {
                inner.map.remove(&key);
            }
        }
    }

    /// The watch starts listing again: what it does not list before [`Self::end_relist`] is gone.
    pub fn begin_relist(&self) {
        self.inner().epoch += 1;
    }

    /// The watch listed everything: drops what the list did not contain.
    pub fn end_relist(&self) {
        let mut inner = self.inner();
        let epoch = inner.epoch;
        inner.map.retain(|_, on| {
            on.live.retain(|(_, e)| *e == epoch);
            on.settled.retain(|(_, _, e)| *e == epoch);
            !(on.live.is_empty() && on.settled.is_empty())
        });
        let listed: HashSet<&ObjectRef<WorkflowExecution>> = inner
            .map
            .values()
            .flat_map(|on| on.live.iter().map(|(r, _)| r))
            .collect();
        let ready = inner
            .ready
            .iter()
            .filter(|r| listed.contains(r))
            .cloned()
            .collect();
        inner.ready = ready;
    }

    /// How many executions are ready to be dispatched ([`ready_to_dispatch`]).
    pub fn ready(&self) -> usize {
        self.inner().ready.len()
    }

    /// Whether a WorkflowExecution other than `me` is cached on `key` (it may wait for the
    /// target's lock).
    pub fn others_live(&self, key: &TargetKey, me: &WorkflowExecution) -> bool {
        let r = key_of(me);
        self.inner()
            .map
            .get(key)
            .is_some_and(|on| on.live.iter().any(|(x, _)| *x != r))
    }

    /// Guard summaries of every WorkflowExecution on a target; `fresh` maps a cached object to
    /// the newest copy known ([`super::Context::freshest`]).
    pub fn priors(
        &self,
        key: &TargetKey,
        store: &Store<WorkflowExecution>,
        fresh: impl Fn(Arc<WorkflowExecution>) -> Arc<WorkflowExecution>,
    ) -> Vec<Prior> {
        let (live, mut priors) = {
            let inner = self.inner();
            let Some(on) = inner.map.get(key) else {
                return Vec::new();
            };
            let live: Vec<_> = on.live.iter().filter_map(|(r, _)| store.get(r)).collect();
            let settled: Vec<Prior> = on.settled.iter().map(|(p, _, _)| p.clone()).collect();
            (live, settled)
        };
        priors.extend(live.into_iter().map(|o| Prior::of(&fresh(o))));
        priors
    }

    /// The cached (not settled) WorkflowExecutions on a target.
    pub fn live(
        &self,
        key: &TargetKey,
        store: &Store<WorkflowExecution>,
    ) -> Vec<Arc<WorkflowExecution>> {
        let inner = self.inner();
        inner
            .map
            .get(key)
            .map(|on| on.live.iter().filter_map(|(r, _)| store.get(r)).collect())
            .unwrap_or_default()
    }

    /// The settled WorkflowExecutions, with their UIDs, by target (for retention).
    pub fn settled(&self) -> Vec<(TargetKey, Vec<(Prior, String)>)> {
        self.inner()
            .map
            .iter()
            .filter(|(_, on)| !on.settled.is_empty())
            .map(|(key, on)| {
                let settled = on
                    .settled
                    .iter()
                    .map(|(p, uid, _)| (p.clone(), uid.clone()))
                    .collect();
                (key.clone(), settled)
            })
            .collect()
    }

    /// Number of WorkflowExecutions indexed (cached and settled).
    pub fn len(&self) -> usize {
        self.inner()
            .map
            .values()
            .map(|on| on.live.len() + on.settled.len())
            .sum()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A reference without the version and UID that `ObjectRef::from_obj` carries (lookups ignore them).
fn key_of(wfe: &WorkflowExecution) -> ObjectRef<WorkflowExecution> {
    ObjectRef::new(&wfe.name_any()).within(&wfe.namespace().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    fn wfe(name: &str, target: &str, status: serde_json::Value) -> WorkflowExecution {
        wfe_api::testing::wfe(name)
            .namespace("ns")
            .target(target)
            .status(status)
            .build()
    }

    fn settled_status() -> serde_json::Value {
        serde_json::json!({"phase": "Failed", "failureReason": "Deduplicated"})
    }

    #[test]
    fn live_objects_are_read_from_the_cache_settled_ones_are_summaries() {
        let index = TargetIndex::default();
        let (store, mut writer) = reflector::store();
        let live = wfe(
            "live",
            "ns/Deployment/app",
            serde_json::json!({"phase": "Running"}),
        );
        let mut settled = wfe("done", "ns/Deployment/app", settled_status());
        let due: Vec<String> = crate::audit::pending(&settled)
            .into_iter()
            .map(|e| e.event_type)
            .collect();
        settled.status.as_mut().unwrap().audit_delivered = due;
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(live.clone()));
        assert!(!index.insert(&live));
        assert!(crate::cache::settled(&settled));
        assert!(index.insert(&settled), "kept as its guard summary only");
        let key = live.target_key();
        assert_eq!(index.live(&key, &store).len(), 1);
        let priors = index.priors(&key, &store, |o| o);
        assert_eq!(priors.len(), 2);
        assert_eq!(index.len(), 2);
        // Re-inserting replaces; removing forgets; an empty target disappears.
        assert!(!index.insert(&live));
        assert_eq!(index.len(), 2);
        index.remove(&live);
        index.remove(&settled);
        assert!(index.is_empty());
    }

    #[test]
    fn counts_what_is_ready_to_be_dispatched() {
        let index = TargetIndex::default();
        let new = wfe("a", "ns/Deployment/a", serde_json::json!(null));
        let blocked = wfe(
            "b",
            "ns/Deployment/b",
            serde_json::json!({"phase": "Pending", "conditions": [{"type": "Blocked", "status": "True",
                "reason": "CooldownActive", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        let running = wfe(
            "c",
            "ns/Deployment/a",
            serde_json::json!({"phase": "Running", "executionRef": {"kind": "Job", "name": "j", "namespace": "x"}}),
        );
        index.insert(&new);
        index.insert(&blocked);
        index.insert(&running);
        assert_eq!(index.ready(), 1, "only the new one");
        assert!(index.others_live(&new.target_key(), &new));
        assert!(!index.others_live(&blocked.target_key(), &blocked));
        let mut dispatched = new.clone();
        dispatched.status = running.status.clone();
        index.insert(&dispatched);
        assert_eq!(index.ready(), 0);
        index.insert(&new);
        index.begin_relist();
        index.insert(&blocked);
        index.end_relist();
        assert_eq!(index.ready(), 0, "a relist drops what it did not list");
        index.insert(&new);
        index.remove(&new);
        assert_eq!(index.ready(), 0);
    }

    #[test]
    fn a_relist_drops_what_it_did_not_list() {
        let index = TargetIndex::default();
        let (a, b) = (
            wfe(
                "a",
                "ns/Deployment/a",
                serde_json::json!({"phase": "Running"}),
            ),
            wfe(
                "b",
                "ns/Deployment/b",
                serde_json::json!({"phase": "Running"}),
            ),
        );
        index.insert(&a);
        index.insert(&b);
        index.begin_relist();
        index.insert(&a);
        index.end_relist();
        assert_eq!(index.len(), 1);
        let (store, _writer) = reflector::store::<WorkflowExecution>();
        assert!(index.priors(&b.target_key(), &store, |o| o).is_empty());
    }
}
