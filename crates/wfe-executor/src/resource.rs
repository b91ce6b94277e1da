//! The execution-resource protocol, written once, for backends whose execution resource is a
//! Kubernetes object (a Job, a PipelineRun, a ConfigMap, any custom resource).
//!
//! A backend implements [`ExecutionResource`]: it says how to build its object from a
//! WorkflowExecution, how to read an [`Observation`] from it, and when it has finished. Every type
//! that implements [`ExecutionResource`] is an [`Executor`] (a blanket implementation), and
//! this module does the rest, identically for every backend:
//!
//! * **Identity.** The object is named [`execution_name_for`] and created in the execution
//!   namespace of its [`ResourceClient`], with [`execution_labels`], [`execution_annotations`]
//!   (merged over whatever the backend set) and, when the WorkflowExecution lives in the execution
//!   namespace, a controller [`owner_reference`] ([`stamp`]).
//! * **Create.** The backend's [`preflight`](ExecutionResource::preflight) runs first; if it
//!   fails, an object this WorkflowExecution already owns is still adopted (after a crash between
//!   create and the status write, a dependency deleted since must not fail a running execution).
//!   Then up to [`CREATE_ROUNDS`] rounds of: POST; on AlreadyExists, read the object from the API
//!   server and [`classify_existing`] it: adopt our own ([`CreateOutcome::Adopted`]), report the
//!   holder of another WorkflowExecution's live object or of an object without our labels (held
//!   by [`UNKNOWN_OWNER`], never touched) ([`CreateOutcome::HeldBy`]), or replace a stale one:
//!   another WorkflowExecution's object that has finished
//!   ([`is_finished`](ExecutionResource::is_finished)) or is being deleted, and whose owner has
//!   recorded the outcome ([`owner_settled`]; until then it is held, since its owner will adopt
//!   it). Replacing means: delete with a UID precondition (never its replacement), wait up to
//!   [`STALE_DELETE_WAIT`] until it is gone, create again. Still there after the wait: a
//!   [`ExecutorError::Transient`] error, retried by the controller.
//! * **Status.** The object is read from the watch cache ([`ResourceCache`], filled by the watch
//!   that [`Executor::changes`] starts) and from the API server only when the cache holds no
//!   object of this owner (not seen yet, or still the replaced object of another owner). Missing,
//!   or owned by someone else: [`Observation::DeletedExternally`]. Otherwise the backend's
//!   [`observe`](ExecutionResource::observe) maps it.
//! * **Delete.** Only an object this WorkflowExecution owns ([`DeleteOutcome::NotOwned`]
//!   otherwise), read like `status`. The backend's
//!   [`before_delete`](ExecutionResource::before_delete) hook (Tekton cancels a running
//!   PipelineRun) is best effort: NotFound ends the delete with [`DeleteOutcome::NotFound`], any
//!   other error is logged and the deletion goes on. An object already being deleted is reported
//!   [`DeleteOutcome::Deleted`] without a second DELETE; otherwise DELETE with background
//!   propagation and a UID precondition (a failed precondition, 409, means the name holds another
//!   object: ours is gone, [`DeleteOutcome::NotFound`]).
//! * **Errors** from the API server are classified with [`ExecutorError::from_kube`], naming the
//!   action, kind, namespace and name.
//!
//! The pure decisions ([`classify_existing`], [`delete_plan`], [`stamp`]) are unit-tested here;
//! the protocol itself runs against the local control plane in `tests/protocol.rs` (hooks that
//! fail, objects being deleted) and `tests/dryrun/` (the guide's minimum backend).
//!
//! Requests per execution (what the benchmark counts): a create is one POST on the happy path (plus
//! whatever the backend's preflight reads); status and delete read from the watch cache; the GETs
//! happen only on a conflict (409 on create) or a cache miss.
//!
//! ## Where the Job and Tekton backends used to differ, and what this module keeps
//!
//! Before this module, the Job and Tekton backends each had their own copy of this protocol. The
//! copies differed; the safer behaviour was kept in each case:
//!
//! * **Waiting for a stale object to go.** The Job copy deleted a stale Job and POSTed again at
//!   once (the POST could hit the object still terminating and use up the rounds); the Tekton copy
//!   waited up to 5 s for the stale PipelineRun to disappear. Kept: waiting, but only when the
//!   DELETE answer says the object is still there (finalizers), so an object removed at once costs
//!   no extra GET.
//! * **Rounds.** Job: 2, Tekton: 3. Kept: 3 ([`CREATE_ROUNDS`]).
//! * **An object of another owner that is being deleted.** Job: held while not finished; Tekton:
//!   stale (it goes away whatever we do). Kept: stale, still only once its owner has settled; its
//!   deletion is not repeated, create only waits for it to go.
//! * **Delete of an object already being deleted.** Job: `Deleted` without a request; Tekton:
//!   cancelled it if running and sent DELETE again. Kept: the backend's hook still runs (a running
//!   PipelineRun is cancelled, which stops its TaskRuns), the DELETE is not repeated (it could
//!   only change the propagation policy of whoever started the deletion).
//! * **Pre-flight failures adopt an owned object.** Job only (Tekton had no pre-flight). Kept for
//!   every backend that has a [`preflight`](ExecutionResource::preflight).

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PostParams, Preconditions, PropagationPolicy},
};
use serde::Serialize;
use wfe_api::{
    ExecutionEngine, ExecutionRef, ExecutionStatusSummary, FieldError, WorkflowExecution,
};

use crate::{
    Availability, CreateOutcome, DeleteOutcome, Executor, ExecutorError, Observation, Owner,
    execution_annotations, execution_labels, execution_name_for, is_already_exists, is_not_found,
    is_owned_by, owner_of, owner_reference, owner_settled,
    watch::{Changes, ResourceCache, Watched},
};

/// Owner reported for an existing object that carries none of our labels (the contract has no
/// "unknown owner" case; such an object is never deleted).
pub const UNKNOWN_OWNER: &str = "<unknown>";
/// How many create rounds (POST, inspect the existing object, replace a stale one) are tried
/// before giving up with a transient error.
pub const CREATE_ROUNDS: usize = 3;
/// How long create waits for a stale object to disappear after deleting it.
pub const STALE_DELETE_WAIT: Duration = Duration::from_secs(5);
const STALE_DELETE_POLL: Duration = Duration::from_millis(100);

/// What the protocol needs of an execution resource's type: a namespaced, typed Kubernetes
/// resource (every k8s-openapi type and every `#[derive(CustomResource)]` type with `namespaced`).
pub trait ExecutionObject:
    Watched + Serialize + Resource<Scope = k8s_openapi::NamespaceResourceScope>
{
}

impl<K> ExecutionObject for K where
    K: Watched + Serialize + Resource<Scope = k8s_openapi::NamespaceResourceScope>
{
}

/// What a backend whose execution resource is a Kubernetes object supplies: only what is
/// specific to its engine. The protocol (create, adopt, held, stale replacement, owner-only
/// delete, identity, reads from the watch cache) is this module's; see the module documentation.
///
/// Every implementor is an [`Executor`].
#[async_trait]
pub trait ExecutionResource: Send + Sync + std::fmt::Debug + 'static {
    /// The execution resource's API type.
    type Object: ExecutionObject;

    /// The client, execution namespace and watch cache the protocol uses (keep one in the
    /// backend, made with [`ResourceClient::new`]).
    fn resources(&self) -> &ResourceClient<Self::Object>;

    /// The engine this backend serves ([`Executor::engine`]).
    fn engine(&self) -> ExecutionEngine;

    /// The object for `wfe` (pure). Its name, namespace, our labels and annotations and the
    /// ownerReference are set by the protocol ([`stamp`]); labels and annotations of the backend's
    /// own are kept. A spec the engine cannot run is a field error (the create fails with
    /// [`ExecutorError::Invalid`]).
    fn build(&self, wfe: &WorkflowExecution) -> Result<Self::Object, FieldError>;

    /// Whether the object has finished (successfully or not): a finished object of another
    /// WorkflowExecution is stale once its owner has settled.
    fn is_finished(&self, object: &Self::Object) -> bool;

    /// The state of an object owned by `wfe`, with whatever other reads the engine needs.
    async fn observe(
        &self,
        object: &Self::Object,
        wfe: &WorkflowExecution,
    ) -> Result<Observation, ExecutorError>;

    /// [`Executor::availability`]. Default: available.
    async fn availability(&self) -> Availability {
        Availability::Available
    }

    /// [`Executor::validate`]. Default: no engine-specific rules.
    fn validate(&self, _wfe: &WorkflowExecution) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    /// [`Executor::initial_summary`]. Default: none.
    fn initial_summary(&self) -> Option<ExecutionStatusSummary> {
        None
    }

    /// Checks before the first POST (for example: do the service account and dependencies
    /// exist). An error fails the create, unless an object owned by `wfe` exists already (then
    /// it is adopted). Default: none.
    async fn preflight(&self, _wfe: &WorkflowExecution) -> Result<(), ExecutorError> {
        Ok(())
    }

    /// Runs after the object was created or adopted: start what the object stands for (a backend
    /// whose engine lives outside Kubernetes launches its execution here, see
    /// [`external`](crate::external)). It runs again on every adoption, so it must be idempotent.
    /// An error deletes the object just created or adopted (it must not hold the target for a
    /// request that ends here, or is retried) and fails the create. Default: nothing.
    async fn started(
        &self,
        _object: &Self::Object,
        _wfe: &WorkflowExecution,
    ) -> Result<(), ExecutorError> {
        Ok(())
    }

    /// Runs before an owned object is deleted, and for an owned object already being deleted
    /// (for example: cancel a running execution so the engine stops it and records why). Best
    /// effort: NotFound ends the delete, any other error is logged and the deletion goes on.
    /// Default: nothing.
    async fn before_delete(&self, _object: &Self::Object) -> Result<(), kube::Error> {
        Ok(())
    }

    /// Told about a POST the API server refused with anything but AlreadyExists (for example:
    /// a 404 means the resource type is gone, so forget a cached availability). Default: nothing.
    fn create_refused(&self, _error: &kube::Error) {}
}

/// The part of a backend the protocol owns: the client, the execution namespace, the resource
/// kind and the watch cache of the backend's objects.
pub struct ResourceClient<K: ExecutionObject> {
    client: Client,
    namespace: String,
    kind: &'static str,
    cache: ResourceCache<K>,
}

impl<K: ExecutionObject> Clone for ResourceClient<K> {
    fn clone(&self) -> Self {
        ResourceClient {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind,
            cache: self.cache.clone(),
        }
    }
}

impl<K: ExecutionObject> std::fmt::Debug for ResourceClient<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceClient")
            .field("kind", &self.kind)
            .field("namespace", &self.namespace)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<K: ExecutionObject> ResourceClient<K> {
    /// Objects of type `K` in the execution `namespace`, with the watch cache of them (the watch
    /// starts when the controller polls [`Executor::changes`]).
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self::trimmed(client, namespace, |_| {})
    }

    /// Like [`ResourceClient::new`], with a watch cache that keeps of each object only what
    /// `trim` leaves ([`ResourceCache::trimmed`]): the protocol reads metadata and the backend's
    /// [`ExecutionResource::observe`] what it needs; objects returned by the API server (create,
    /// adopt) are whole.
    pub fn trimmed(client: Client, namespace: impl Into<String>, trim: fn(&mut K)) -> Self {
        let kind = match K::kind(&()) {
            Cow::Borrowed(kind) => kind,
            // Typed resources (k8s-openapi, kube's derive) borrow a constant; anything else is
            // leaked once per executor.
            Cow::Owned(kind) => Box::leak(kind.into_boxed_str()),
        };
        let namespace = namespace.into();
        ResourceClient {
            cache: ResourceCache::trimmed(Api::namespaced(client.clone(), &namespace), trim),
            client,
            namespace,
            kind,
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The execution namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The resource kind (`Job`, `PipelineRun`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The API of the objects in the execution namespace.
    pub fn api(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Any other namespaced type in the execution namespace (for the backend's extra reads).
    pub fn api_of<T: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
        &self,
    ) -> Api<T> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The reference to the object `name`.
    pub fn reference(&self, name: &str) -> ExecutionRef {
        ExecutionRef {
            kind: self.kind.to_string(),
            name: name.to_string(),
            namespace: self.namespace.clone(),
        }
    }

    fn describe(&self, name: &str) -> String {
        format!("{} {}/{name}", self.kind, self.namespace)
    }

    /// Reads the object `name` from the API server; `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<K>, ExecutorError> {
        match self.api().get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ExecutorError::from_kube(
                &format!("read {}", self.describe(name)),
                e,
            )),
        }
    }

    /// The object of `wfe`: from the watch cache when it holds one owned by `wfe`, else from the
    /// API server (the cache may not have seen a new object yet, or still show a replaced one).
    /// The answer of the API server may belong to someone else.
    pub async fn current(&self, wfe: &WorkflowExecution) -> Result<Option<K>, ExecutorError> {
        let name = execution_name_for(wfe);
        if let Some(o) = self.cache.owned(&self.namespace, &name, wfe) {
            return Ok(Some(K::clone(&o)));
        }
        // Created by this process a moment ago and not delivered by the watch yet: that answer
        // is as current as a read would be (the watch wakes the owner again when it arrives).
        if let Some(o) = self
            .cache
            .just_created(&name)
            .filter(|o| is_owned_by(o.meta(), wfe))
        {
            return Ok(Some(K::clone(&o)));
        }
        self.get(&name).await
    }

    /// The objects the watch cache holds (empty until the watch runs).
    pub fn cached(&self) -> Vec<std::sync::Arc<K>> {
        self.cache.objects()
    }

    /// Deletes exactly `object` (UID precondition, background propagation) and says what became
    /// of it.
    async fn delete_exact(&self, object: &K) -> Result<Removal, ExecutorError> {
        let name = object.name_any();
        self.cache.forget_created(&name);
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: object.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api().delete(&name, &dp).await {
            // The API server answers with the object while it is still there, else a Status
            // (or, for some types, the object as it was, without a deletion timestamp).
            Ok(answer) => Ok(
                if answer
                    .left()
                    .is_none_or(|o| o.meta().deletion_timestamp.is_none())
                {
                    Removal::Gone
                } else {
                    Removal::Finalizing
                },
            ),
            // Gone already, or the UID precondition failed (409): the name holds another object.
            Err(e) if is_not_found(&e) || is_already_exists(&e) => Ok(Removal::WasNotThere),
            Err(e) => Err(ExecutorError::from_kube(
                &format!("delete {}", self.describe(&name)),
                e,
            )),
        }
    }

    /// Deletes a stale object (unless it is being deleted already) and waits up to
    /// [`STALE_DELETE_WAIT`] until it is gone. `Ok(true)` when the name is free (or holds
    /// something else now, which the next create round inspects).
    async fn remove_stale(&self, stale: &K) -> Result<bool, ExecutorError> {
        if stale.meta().deletion_timestamp.is_none()
            && self.delete_exact(stale).await? != Removal::Finalizing
        {
            return Ok(true);
        }
        let (name, uid) = (stale.name_any(), stale.uid());
        let deadline = Instant::now() + STALE_DELETE_WAIT;
        loop {
            match self.get(&name).await? {
                None => return Ok(true),
                Some(current) if current.uid() != uid => return Ok(true),
                Some(_) if Instant::now() >= deadline => return Ok(false),
                Some(_) => tokio::time::sleep(STALE_DELETE_POLL).await,
            }
        }
    }
}

/// The identity of the execution resource of `wfe` in the execution `namespace`: the name
/// [`execution_name_for`], [`execution_labels`], [`execution_annotations`] and, when `wfe` lives
/// in `namespace`, a controller [`owner_reference`].
pub fn execution_metadata(wfe: &WorkflowExecution, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(execution_name_for(wfe)),
        namespace: Some(namespace.to_string()),
        labels: Some(execution_labels(wfe)),
        annotations: Some(execution_annotations(wfe)),
        owner_references: owner_reference(wfe, namespace).map(|r| vec![r]),
        ..Default::default()
    }
}

/// Sets the identity of [`execution_metadata`] on `meta`: name, namespace and ownerReferences
/// are replaced, our labels and annotations are merged over the backend's own.
pub fn stamp(meta: &mut ObjectMeta, wfe: &WorkflowExecution, namespace: &str) {
    let identity = execution_metadata(wfe, namespace);
    meta.name = identity.name;
    meta.namespace = identity.namespace;
    meta.owner_references = identity.owner_references;
    meta.labels
        .get_or_insert_default()
        .extend(identity.labels.unwrap_or_default());
    meta.annotations
        .get_or_insert_default()
        .extend(identity.annotations.unwrap_or_default());
}

/// The owner reported for an object without our labels.
pub fn unknown_owner() -> Owner {
    Owner {
        name: UNKNOWN_OWNER.to_string(),
        namespace: UNKNOWN_OWNER.to_string(),
        uid: None,
    }
}

/// What to do with an object found under our name at create time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Existing {
    /// It is ours: adopt it.
    Adopt,
    /// Another WorkflowExecution's live object, or one we did not label: report the holder.
    Held(Owner),
    /// Another WorkflowExecution's finished (or terminating) object: replace it once its owner
    /// has settled.
    Stale(Owner),
}

/// Decides about an existing object with our deterministic name (pure). `finished` is the
/// backend's [`is_finished`](ExecutionResource::is_finished); an object being deleted counts as
/// finished. An object without our owner labels was not created by this operator: it is held by
/// [`UNKNOWN_OWNER`] and never deleted.
pub fn classify_existing(meta: &ObjectMeta, finished: bool, wfe: &WorkflowExecution) -> Existing {
    if is_owned_by(meta, wfe) {
        return Existing::Adopt;
    }
    match owner_of(meta) {
        None => Existing::Held(unknown_owner()),
        Some(owner) if finished || meta.deletion_timestamp.is_some() => Existing::Stale(owner),
        Some(owner) => Existing::Held(owner),
    }
}

/// What delete does with the object read for `wfe` (pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeletePlan {
    /// Nothing there: [`DeleteOutcome::NotFound`].
    NothingThere,
    /// Someone else's: [`DeleteOutcome::NotOwned`].
    NotOwned,
    /// Ours and being deleted: run the hook, then [`DeleteOutcome::Deleted`] without a DELETE.
    AlreadyDeleting,
    /// Ours: run the hook, then DELETE.
    Delete,
}

/// Decides what delete does with `current` (pure).
pub fn delete_plan(current: Option<&ObjectMeta>, wfe: &WorkflowExecution) -> DeletePlan {
    match current {
        None => DeletePlan::NothingThere,
        Some(meta) if !is_owned_by(meta, wfe) => DeletePlan::NotOwned,
        Some(meta) if meta.deletion_timestamp.is_some() => DeletePlan::AlreadyDeleting,
        Some(_) => DeletePlan::Delete,
    }
}

async fn create<B: ExecutionResource>(
    backend: &B,
    wfe: &WorkflowExecution,
) -> Result<CreateOutcome, ExecutorError> {
    let resources = backend.resources();
    let name = execution_name_for(wfe);
    let reference = resources.reference(&name);
    let mut desired = backend.build(wfe).map_err(|e| {
        ExecutorError::invalid(format!("build {}: {e}", resources.describe(&name))).caused_by(e)
    })?;
    stamp(desired.meta_mut(), wfe, resources.namespace());
    if let Err(e) = backend.preflight(wfe).await {
        // After a crash between create and the status write the object may exist already:
        // adopt it rather than failing on a dependency deleted since.
        if let Some(existing) = resources.get(&name).await?
            && is_owned_by(existing.meta(), wfe)
        {
            return start(backend, &existing, wfe, CreateOutcome::Adopted(reference)).await;
        }
        return Err(e);
    }
    let api = resources.api();
    for round in 0..CREATE_ROUNDS {
        match api.create(&PostParams::default(), &desired).await {
            Ok(created) => {
                tracing::debug!(resource = %resources.describe(&name), wfe = %wfe.name_any(), "created");
                resources.cache.created(&created);
                return start(backend, &created, wfe, CreateOutcome::Created(reference)).await;
            }
            Err(e) if is_already_exists(&e) => {}
            Err(e) => {
                backend.create_refused(&e);
                return Err(ExecutorError::from_kube(
                    &format!("create {}", resources.describe(&name)),
                    e,
                ));
            }
        }
        let Some(existing) = resources.get(&name).await? else {
            continue; // deleted between our POST and GET: try again
        };
        let finished = backend.is_finished(&existing);
        match classify_existing(existing.meta(), finished, wfe) {
            Existing::Adopt => {
                tracing::info!(resource = %resources.describe(&name), wfe = %wfe.name_any(), "adopted");
                return start(backend, &existing, wfe, CreateOutcome::Adopted(reference)).await;
            }
            Existing::Held(holder) => return Ok(CreateOutcome::HeldBy { reference, holder }),
            Existing::Stale(owner) => {
                // Stale only once its owner recorded the outcome (a crash between create and
                // the owner's status write leaves a finished object its owner will adopt).
                if !owner_settled(resources.client(), &owner).await? {
                    return Ok(CreateOutcome::HeldBy {
                        reference,
                        holder: owner,
                    });
                }
                tracing::info!(resource = %resources.describe(&name), previous_owner = %owner, round, "replacing the finished execution resource of another WorkflowExecution");
                if !resources.remove_stale(&existing).await? {
                    return Err(ExecutorError::transient(format!(
                        "{} of finished WorkflowExecution {owner} is still being deleted; retry later",
                        resources.describe(&name)
                    )));
                }
            }
        }
    }
    Err(ExecutorError::transient(format!(
        "{} kept changing while it was being created ({CREATE_ROUNDS} attempts); retry later",
        resources.describe(&name)
    )))
}

/// Runs the backend's [`started`](ExecutionResource::started) hook on the object just created or
/// adopted; if it fails, the object is deleted again (best effort) and the create fails.
async fn start<B: ExecutionResource>(
    backend: &B,
    object: &B::Object,
    wfe: &WorkflowExecution,
    outcome: CreateOutcome,
) -> Result<CreateOutcome, ExecutorError> {
    let Err(e) = backend.started(object, wfe).await else {
        return Ok(outcome);
    };
    let resources = backend.resources();
    if let Err(d) = resources.delete_exact(object).await {
        tracing::warn!(resource = %resources.describe(&object.name_any()), error = %d, "cannot delete the execution resource of a failed start");
    }
    Err(e)
}

async fn status<B: ExecutionResource>(
    backend: &B,
    wfe: &WorkflowExecution,
) -> Result<Observation, ExecutorError> {
    let resources = backend.resources();
    match resources.current(wfe).await? {
        Some(object) if is_owned_by(object.meta(), wfe) => backend.observe(&object, wfe).await,
        // Missing, or replaced by another WorkflowExecution's object: ours is gone.
        _ => Ok(Observation::DeletedExternally {
            kind: resources.kind().to_string(),
            name: execution_name_for(wfe),
        }),
    }
}

/// What a deletion with a UID precondition did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    /// The object is gone.
    Gone,
    /// The object is still there, being deleted (finalizers).
    Finalizing,
    /// It was already gone, or the name holds another object now.
    WasNotThere,
}

async fn delete<B: ExecutionResource>(
    backend: &B,
    wfe: &WorkflowExecution,
) -> Result<DeleteOutcome, ExecutorError> {
    let resources = backend.resources();
    let current = resources.current(wfe).await?;
    let plan = delete_plan(current.as_ref().map(|o| o.meta()), wfe);
    let object = match (plan, current) {
        (DeletePlan::NothingThere, _) | (_, None) => return Ok(DeleteOutcome::NotFound),
        (DeletePlan::NotOwned, _) => return Ok(DeleteOutcome::NotOwned),
        (_, Some(object)) => object,
    };
    let name = object.name_any();
    match backend.before_delete(&object).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => return Ok(DeleteOutcome::NotFound),
        Err(e) => {
            tracing::warn!(resource = %resources.describe(&name), error = %e, "preparing the deletion failed; deleting anyway")
        }
    }
    if plan == DeletePlan::AlreadyDeleting {
        return Ok(DeleteOutcome::Deleted);
    }
    match resources.delete_exact(&object).await? {
        Removal::Gone | Removal::Finalizing => {
            tracing::debug!(resource = %resources.describe(&name), wfe = %wfe.name_any(), "deleted");
            Ok(DeleteOutcome::Deleted)
        }
        // Gone already, or the UID precondition failed: the name holds another object.
        Removal::WasNotThere => Ok(DeleteOutcome::NotFound),
    }
}

#[async_trait]
impl<B: ExecutionResource> Executor for B {
    fn engine(&self) -> ExecutionEngine {
        ExecutionResource::engine(self)
    }

    fn resource_kind(&self) -> &'static str {
        self.resources().kind()
    }

    async fn availability(&self) -> Availability {
        ExecutionResource::availability(self).await
    }

    /// Watches whole objects in the execution namespace (label-filtered, `managedFields`
    /// dropped) and keeps them for `status` and `delete`.
    fn changes(&self) -> Option<Changes> {
        self.resources().cache.changes()
    }

    fn initial_summary(&self) -> Option<ExecutionStatusSummary> {
        ExecutionResource::initial_summary(self)
    }

    fn validate(&self, wfe: &WorkflowExecution) -> Result<(), Vec<FieldError>> {
        ExecutionResource::validate(self, wfe)
    }

    async fn create(&self, wfe: &WorkflowExecution) -> Result<CreateOutcome, ExecutorError> {
        create(self, wfe).await
    }

    async fn status(&self, wfe: &WorkflowExecution) -> Result<Observation, ExecutorError> {
        status(self, wfe).await
    }

    async fn delete(&self, wfe: &WorkflowExecution) -> Result<DeleteOutcome, ExecutorError> {
        delete(self, wfe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    fn wfe(name: &str, namespace: &str, uid: &str) -> WorkflowExecution {
        wfe_api::testing::wfe(name)
            .namespace(namespace)
            .uid(Some(uid).filter(|u| !u.is_empty()))
            .build()
    }

    fn meta_of(owner: Option<&WorkflowExecution>) -> ObjectMeta {
        match owner {
            Some(o) => execution_metadata(o, "kubernaut-workflows"),
            None => ObjectMeta {
                name: Some("wfe-x".into()),
                ..Default::default()
            },
        }
    }

    fn terminating(mut meta: ObjectMeta) -> ObjectMeta {
        meta.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        meta
    }

    #[test]
    fn an_existing_object_is_adopted_held_or_stale() {
        let me = wfe("mine", "team-a", "uid-1");
        let other = wfe("other", "team-a", "uid-2");
        let holder = owner_of(&meta_of(Some(&other))).expect("owner");
        assert_eq!(
            (holder.name.as_str(), holder.namespace.as_str()),
            ("other", "team-a")
        );
        assert_eq!(holder.uid.as_deref(), Some("uid-2"));
        for finished in [false, true] {
            // Ours, in any state: adopt (also while it is being deleted).
            let ours = meta_of(Some(&me));
            assert_eq!(classify_existing(&ours, finished, &me), Existing::Adopt);
            assert_eq!(
                classify_existing(&terminating(ours), finished, &me),
                Existing::Adopt
            );
            // The same name recreated (another UID) is not ours.
            let recreated = wfe("mine", "team-a", "uid-3");
            assert_ne!(
                classify_existing(&meta_of(Some(&me)), finished, &recreated),
                Existing::Adopt
            );
            // Not labelled by us: held by an unknown owner, never stale.
            for meta in [meta_of(None), terminating(meta_of(None))] {
                assert_eq!(
                    classify_existing(&meta, finished, &me),
                    Existing::Held(unknown_owner())
                );
            }
            // Another WorkflowExecution's object being deleted: stale (it goes away anyway).
            assert_eq!(
                classify_existing(&terminating(meta_of(Some(&other))), finished, &me),
                Existing::Stale(holder.clone())
            );
        }
        // Another WorkflowExecution's: held while live, stale once finished.
        let theirs = meta_of(Some(&other));
        assert_eq!(
            classify_existing(&theirs, false, &me),
            Existing::Held(holder.clone())
        );
        assert_eq!(
            classify_existing(&theirs, true, &me),
            Existing::Stale(holder)
        );
        assert_eq!(unknown_owner().name, UNKNOWN_OWNER);
        assert_eq!(unknown_owner().uid, None);
    }

    #[test]
    fn without_uids_ownership_falls_back_to_the_name() {
        let me = wfe("mine", "team-a", "");
        let meta = meta_of(Some(&me));
        assert_eq!(classify_existing(&meta, false, &me), Existing::Adopt);
        let other = wfe("other", "team-a", "");
        assert!(matches!(
            classify_existing(&meta, false, &other),
            Existing::Held(_)
        ));
    }

    #[test]
    fn delete_plans() {
        let me = wfe("mine", "team-a", "uid-1");
        let other = wfe("other", "team-a", "uid-2");
        assert_eq!(delete_plan(None, &me), DeletePlan::NothingThere);
        assert_eq!(
            delete_plan(Some(&meta_of(Some(&other))), &me),
            DeletePlan::NotOwned
        );
        assert_eq!(delete_plan(Some(&meta_of(None)), &me), DeletePlan::NotOwned);
        assert_eq!(
            delete_plan(Some(&meta_of(Some(&me))), &me),
            DeletePlan::Delete
        );
        assert_eq!(
            delete_plan(Some(&terminating(meta_of(Some(&me)))), &me),
            DeletePlan::AlreadyDeleting
        );
    }

    #[test]
    fn identity_metadata() {
        let outside = wfe("outside", "team-a", "uid-1");
        let meta = execution_metadata(&outside, "kubernaut-workflows");
        assert_eq!(meta.name, Some(execution_name_for(&outside)));
        assert_eq!(meta.namespace.as_deref(), Some("kubernaut-workflows"));
        assert_eq!(meta.labels, Some(execution_labels(&outside)));
        assert_eq!(meta.annotations, Some(execution_annotations(&outside)));
        assert_eq!(meta.owner_references, None, "never across namespaces");
        let inside = wfe("inside", "kubernaut-workflows", "uid-2");
        let refs = execution_metadata(&inside, "kubernaut-workflows")
            .owner_references
            .expect("an ownerReference in the same namespace");
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (
                refs[0].kind.as_str(),
                refs[0].name.as_str(),
                refs[0].uid.as_str()
            ),
            ("WorkflowExecution", "inside", "uid-2")
        );
        assert_eq!(
            (refs[0].controller, refs[0].block_owner_deletion),
            (Some(true), Some(false))
        );

        // Stamping keeps the backend's own labels and annotations and replaces the identity.
        let mut built = ObjectMeta {
            name: Some("whatever".into()),
            labels: Some([("app".to_string(), "x".to_string())].into()),
            annotations: Some(
                [(
                    crate::ANNOTATION_WORKFLOW_EXECUTION.to_string(),
                    "forged".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        };
        stamp(&mut built, &inside, "kubernaut-workflows");
        let mut expected = execution_metadata(&inside, "kubernaut-workflows");
        expected
            .labels
            .get_or_insert_default()
            .insert("app".into(), "x".into());
        assert_eq!(built, expected);
        assert!(is_owned_by(&built, &inside));
    }
}
