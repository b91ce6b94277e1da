//! Watches of execution resources: the changes that wake their WorkflowExecution.
//!
//! Every watch is scoped to the execution namespace and filtered by the
//! [`LABEL_WORKFLOW_EXECUTION`](crate::LABEL_WORKFLOW_EXECUTION) label, so the operator never
//! sees (or needs permission for) anything else; watch errors are retried with kube-runtime's
//! default backoff and never end the stream.

use futures::{StreamExt, stream::BoxStream};
use kube::{
    Api, Client, Resource,
    api::ObjectMeta,
    core::{ApiResource, DynamicObject, PartialObjectMeta},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use wfe_api::WorkflowExecution;

use crate::{LABEL_WORKFLOW_EXECUTION, Owner, is_owned_by, owner_of};

/// The WorkflowExecutions whose execution resource changed, one item per change.
pub type Changes = BoxStream<'static, Owner>;

fn owners<E: std::fmt::Display>(
    kind: String,
    s: impl futures::Stream<Item = Result<ObjectMeta, E>> + Send + 'static,
) -> Changes {
    s.filter_map(move |r| {
        let owner = match r {
            Ok(meta) => owner_of(&meta),
            Err(e) => {
                tracing::debug!(error = %e, kind, "execution resource watch error (retrying)");
                None
            }
        };
        futures::future::ready(owner)
    })
    .boxed()
}

/// A metadata-only watch of `resource` (cheap: no spec or status travels), for backends that
/// read the state itself when asked ([`Executor::status`](crate::Executor::status)).
pub fn metadata_changes(client: Client, namespace: &str, resource: &ApiResource) -> Changes {
    let api: Api<PartialObjectMeta<DynamicObject>> =
        Api::namespaced_with(client, namespace, resource);
    let stream = watcher(
        api,
        watcher::Config::default().labels(LABEL_WORKFLOW_EXECUTION),
    )
    .default_backoff()
    .touched_objects()
    .map(|r| r.map(|o| o.metadata));
    owners(resource.kind.clone(), stream)
}

/// What a watch of whole objects needs of their type (every typed Kubernetes resource has it).
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A watch of whole objects that also fills `writer`, so that a backend reads the current state
/// of its resources from memory instead of asking the API server on every reconcile.
/// `managedFields` are dropped on arrival: nothing reads them and they are a large share of
/// every object.
/// `trim` removes, on arrival, whatever else of an object its backend never reads.
pub fn cached_changes<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
) -> Changes
where
    K: Watched,
{
    cached_changes_seeing(api, writer, trim, Arc::default())
}

/// [`cached_changes`], also taking every object the watch delivers (or deletes) out of `unseen`.
fn cached_changes_seeing<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    unseen: Arc<Mutex<Unseen<K>>>,
) -> Changes
where
    K: Watched,
{
    let kind = K::kind(&()).to_string();
    let stream = reflector::reflector(
        writer,
        watcher(
            api,
            watcher::Config::default().labels(LABEL_WORKFLOW_EXECUTION),
        )
        .default_backoff()
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            trim(o);
        }),
    )
    .touched_objects()
    .map(move |r| {
        r.map(|o: K| {
            if let Some(name) = o.meta().name.as_deref() {
                seen(&unseen, name);
            }
            o.meta().clone()
        })
    });
    owners(kind, stream)
}

/// How long an object this process just created stands in for the cache's copy while the watch
/// has not delivered it yet (under load it lags): reading it back from the API server would only
/// tell what the create already answered.
pub const UNSEEN_GRACE: Duration = Duration::from_secs(10);

/// Objects created by this process and not yet delivered by the watch, by name, trimmed, with
/// when they were created.
type Unseen<K> = HashMap<String, (Instant, Arc<K>)>;

/// Ends the stand-in for `name`: the watch delivered or deleted it, or this process deletes it.
fn seen<K>(unseen: &Mutex<Unseen<K>>, name: &str) {
    let mut unseen = unseen.lock().unwrap_or_else(|e| e.into_inner());
    if !unseen.is_empty() {
        unseen.remove(name);
    }
}

/// The execution resources of a backend kept in memory by its watch, built with its store at
/// construction: [`ResourceCache::new`] makes the store and the (lazy) watch that fills it;
/// the controller takes the watch once with [`ResourceCache::changes`] (from
/// [`Executor::changes`](crate::Executor::changes)) and polls it, and [`ResourceCache::owned`]
/// reads the store without a lock. Until the watch runs, the store is empty and every read is a
/// miss (the caller asks the API server).
///
/// kube-runtime's shared reflectors (`store_shared`, `subscribe`) are for several consumers of
/// one watch; here the watch has one consumer (the controller's trigger) and one reader (the
/// backend), so a plain reflector store fits.
pub struct ResourceCache<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    watch: Arc<Mutex<Option<Changes>>>,
    unseen: Arc<Mutex<Unseen<K>>>,
    trim: fn(&mut K),
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for ResourceCache<K> {
    fn clone(&self) -> Self {
        ResourceCache {
            store: self.store.clone(),
            watch: self.watch.clone(),
            unseen: self.unseen.clone(),
            trim: self.trim,
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> std::fmt::Debug for ResourceCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let taken = self
            .watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        f.debug_struct("ResourceCache")
            .field("kind", &K::kind(&()))
            .field("objects", &self.store.len())
            .field("watch_taken", &taken)
            .finish()
    }
}

impl<K> ResourceCache<K>
where
    K: Watched,
{
    /// The store of the objects of `api` and the watch that fills it ([`cached_changes`]);
    /// nothing is requested until the watch is polled.
    pub fn new(api: Api<K>) -> Self {
        Self::trimmed(api, |_| {})
    }

    /// Like [`ResourceCache::new`], keeping of each object only what `trim` leaves (for
    /// example a Job without its pod template: what a backend never reads costs memory for
    /// every execution in flight).
    pub fn trimmed(api: Api<K>, trim: fn(&mut K)) -> Self {
        let (store, writer) = reflector::store::<K>();
        let unseen: Arc<Mutex<Unseen<K>>> = Arc::default();
        ResourceCache {
            store,
            watch: Arc::new(Mutex::new(Some(cached_changes_seeing(
                api,
                writer,
                trim,
                unseen.clone(),
            )))),
            unseen,
            trim,
        }
    }

    /// Remembers `object`, just created by this process, until the watch delivers it (at most
    /// [`UNSEEN_GRACE`]), so that [`ResourceCache::just_created`] can stand in for the store.
    pub fn created(&self, object: &K) {
        let Some(name) = object.meta().name.clone() else {
            return;
        };
        let mut kept = object.clone();
        kept.meta_mut().managed_fields = None;
        (self.trim)(&mut kept);
        let mut unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
        unseen.retain(|_, (at, _)| at.elapsed() < UNSEEN_GRACE);
        unseen.insert(name, (Instant::now(), Arc::new(kept)));
    }

    /// Forgets the object named `name` created by this process (it is being deleted).
    pub fn forget_created(&self, name: &str) {
        seen(&self.unseen, name);
    }

    /// The object named `name`, created by this process less than [`UNSEEN_GRACE`] ago, that the
    /// watch (running) has not delivered (nor deleted) yet.
    pub fn just_created(&self, name: &str) -> Option<Arc<K>> {
        // Only while the watch runs: it is what delivers the object and ends the stand-in.
        if self
            .watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return None;
        }
        let unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
        let (at, object) = unseen.get(name)?;
        (at.elapsed() < UNSEEN_GRACE).then(|| object.clone())
    }

    /// The watch that fills this cache; `None` once taken (there is one watch per cache).
    pub fn changes(&self) -> Option<Changes> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Every cached resource.
    pub fn objects(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// The cached resource `namespace/name` if it belongs to `wfe`. `None` says nothing for
    /// sure: the watch may not have delivered a new resource yet, or may still show the replaced
    /// resource of another owner, so a caller confirms with a read from the API server before it
    /// reports the resource gone.
    pub fn owned(&self, namespace: &str, name: &str, wfe: &WorkflowExecution) -> Option<Arc<K>> {
        self.store
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .filter(|o| is_owned_by(o.meta(), wfe))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::Job;

    fn cache() -> ResourceCache<Job> {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        ResourceCache::trimmed(Api::namespaced(client, "ns"), |j| j.spec = None)
    }

    #[tokio::test]
    async fn a_just_created_object_stands_in_until_the_watch_delivers_it() {
        let cache = cache();
        let mut job = Job::default();
        job.metadata.name = Some("wfe-0".into());
        cache.created(&job);
        assert!(
            cache.just_created("wfe-0").is_none(),
            "no stand-in while no watch runs to end it"
        );
        let _watch = cache.changes().expect("the watch");
        job.metadata.name = Some("wfe-1".into());
        job.spec = Some(Default::default());
        cache.created(&job);
        let kept = cache.just_created("wfe-1").expect("remembered");
        assert!(kept.spec.is_none(), "trimmed like the cache's copies");
        assert!(cache.just_created("wfe-2").is_none());
        // What the watch does when it delivers (or deletes) the object.
        seen(&cache.unseen, "wfe-1");
        assert!(cache.just_created("wfe-1").is_none());
    }
}
