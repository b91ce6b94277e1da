//! The conformance suite: the contract of the crate documentation, one named test per rule,
//! against a real API server.
//!
//! A backend's integration test describes how to set the backend up ([`Subject`]) and generates
//! the tests with one line:
//!
//! ```ignore
//! wfe_executor::conformance_tests!(MySubject);
//! ```
//!
//! which expands to a module `conformance` with one `#[test]` per [`Rule`]
//! (`conformance::owner_only_delete`, …). Each test sets the backend up afresh
//! ([`Subject::setup`], so the rules do not see each other's objects), runs its rule on a
//! runtime of its own and panics with a [`Violation`] that names the rule and what was wrong.
//!
//! The suite drives the backend only through [`Executor`] and inspects the Kubernetes object that
//! holds the per-target lock ([`Env::lock`]: the execution resource itself, or the
//! Lease the framework holds for a backend whose execution lives outside Kubernetes) as a
//! [`DynamicObject`], so it knows nothing of any engine. The WorkflowExecutions it uses are
//! created in the cluster (they have UIDs, and their recorded phase decides whether a finished
//! execution is stale); no controller runs, the suite records outcomes itself.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    core::ApiResource,
};
use serde_json::json;
use wfe_api::{ExecutionRef, FailureReason, WorkflowExecution};

use crate::{
    CreateOutcome, DeleteOutcome, Executor, ExecutorError, Observation, Owner,
    execution_annotations, execution_labels, execution_name_for, owner_of, resource::UNKNOWN_OWNER,
};

/// How long a rule waits for the engine (a Job's pod to finish, a watch to deliver).
pub const ENGINE_WAIT: Duration = Duration::from_secs(90);
/// How long a rule waits for a deletion to complete.
pub const DELETE_WAIT: Duration = Duration::from_secs(30);

/// What the execution of a WorkflowExecution made by the suite is to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Keep running until it is deleted.
    Hold,
    /// Succeed.
    Succeed,
    /// Fail: the workflow ran and failed.
    Fail,
}

/// Where a backend under test runs.
#[derive(Clone)]
pub struct Env {
    /// An administrator's client of the test cluster.
    pub client: Client,
    /// The execution namespace the backend was made with (fresh for each test).
    pub execution_namespace: String,
    /// Another namespace, for WorkflowExecutions that live outside the execution namespace.
    pub request_namespace: String,
    /// The type of the Kubernetes object that holds the per-target lock: the execution resource
    /// ([`Env::of`]) or the framework's Lease.
    pub lock: ApiResource,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("execution_namespace", &self.execution_namespace)
            .field("request_namespace", &self.request_namespace)
            .field("lock", &self.lock.kind)
            .finish_non_exhaustive()
    }
}

impl Env {
    /// An environment whose lock is the execution resource of type `K`.
    pub fn of<K: Resource<DynamicType = ()>>(
        client: Client,
        execution_namespace: impl Into<String>,
        request_namespace: impl Into<String>,
    ) -> Self {
        Env {
            client,
            execution_namespace: execution_namespace.into(),
            request_namespace: request_namespace.into(),
            lock: ApiResource::erase::<K>(&()),
        }
    }
}

/// A backend set up for the suite: what a backend crate writes once in its integration tests.
#[async_trait]
pub trait Subject: Send + Sync + Sized + 'static {
    /// The backend.
    type Executor: Executor;

    /// The backend in fresh namespaces of the test cluster, set up for `rule` (for example: keep
    /// the engine from starting anything, so that [`Rule::InitialSummary`] observes an execution
    /// as it was created).
    async fn setup(rule: Rule) -> Self;

    /// The backend.
    fn executor(&self) -> &Self::Executor;

    /// Where it runs.
    fn env(&self) -> &Env;

    /// The `spec` of a WorkflowExecution on `target` that this engine runs as `plan` says. The
    /// WorkflowExecution is created in the cluster, so `executionEngine` must be a value the CRD
    /// accepts (leave it out until your engine's value is in the schema).
    fn spec(&self, target: &str, plan: Plan) -> serde_json::Value;

    /// Plays the engine where the test cluster does not run it: makes the execution behind
    /// `reference` do what `plan` says. Called after every create. Default: nothing (the engine
    /// runs and the spec decides).
    async fn drive(&self, _wfe: &WorkflowExecution, _reference: &ExecutionRef, _plan: Plan) {}
}

macro_rules! rules {
    ($($rule:ident => $name:literal, $what:literal;)*) => {
        /// The rules of the contract, one test each.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Rule {
            $(#[doc = $what] $rule,)*
        }

        impl Rule {
            /// Every rule, in the order of the generated tests.
            pub const ALL: &[Rule] = &[$(Rule::$rule,)*];

            /// The name of the rule's test.
            pub fn name(self) -> &'static str {
                match self { $(Rule::$rule => $name,)* }
            }

            /// What the rule requires.
            pub fn requirement(self) -> &'static str {
                match self { $(Rule::$rule => $what,)* }
            }
        }
    };
}

rules! {
    NameAndLabels => "name_and_labels",
        "the execution is named after the target, in the execution namespace, with our labels and annotations and no ownerReference across namespaces";
    OwnerReference => "owner_reference",
        "a WorkflowExecution in the execution namespace is the controller owner of its lock object";
    IdempotentCreate => "idempotent_create",
        "a second create by the owner adopts the execution and returns the same reference";
    HeldByAnotherOwner => "held_by_another_owner",
        "a create by another WorkflowExecution on the same target reports the live holder and changes nothing";
    StaleReplacement => "stale_replacement",
        "another owner's finished execution is held until its owner recorded the outcome, then replaced";
    RefusesUnlabelled => "refuses_unlabelled",
        "an object without our labels under the execution name is held by an unknown owner and never touched";
    OwnerOnlyDelete => "owner_only_delete",
        "delete removes only the owner's execution, is idempotent, and a deleted execution is reported deleted externally";
    WatchWakesTheOwner => "watch_wakes_the_owner",
        "the backend's watch names the owner when its execution is created and when it finishes";
    InitialSummary => "initial_summary",
        "initial_summary equals the first observation of a new execution";
    Cancellation => "cancellation",
        "deleting a running execution stops it and frees the target";
    Success => "status_success",
        "a successful execution is observed as Succeeded with status True";
    Failure => "status_failure",
        "a failed execution is observed as Failed with status False and a classified engine failure";
}

/// A rule the backend broke.
#[derive(Debug, thiserror::Error)]
#[error("conformance rule `{}` ({}) violated: {message}", rule.name(), rule.requirement())]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// What was wrong.
    pub message: String,
}

/// Generates the suite for a [`Subject`]: a module `conformance` with one test per [`Rule`].
#[macro_export]
macro_rules! conformance_tests {
    ($subject:ty) => {
        $crate::__conformance_tests! { $subject;
            name_and_labels => NameAndLabels,
            owner_reference => OwnerReference,
            idempotent_create => IdempotentCreate,
            held_by_another_owner => HeldByAnotherOwner,
            stale_replacement => StaleReplacement,
            refuses_unlabelled => RefusesUnlabelled,
            owner_only_delete => OwnerOnlyDelete,
            watch_wakes_the_owner => WatchWakesTheOwner,
            initial_summary => InitialSummary,
            cancellation => Cancellation,
            status_success => Success,
            status_failure => Failure,
        }
    };
}

/// One `#[test]` per `test => Rule` pair (what [`conformance_tests!`] expands to).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($subject:ty; $($test:ident => $rule:ident,)*) => {
        #[allow(unused_imports)]
        mod conformance {
            use super::*;
            $(
                #[test]
                fn $test() {
                    $crate::conformance::check::<$subject>($crate::conformance::Rule::$rule)
                }
            )*
        }
    };
}

/// Runs one rule on a runtime of its own and panics with the [`Violation`] (what the generated
/// tests call).
pub fn check<S: Subject>(rule: Rule) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    if let Err(v) = runtime.block_on(verify::<S>(rule)) {
        panic!("{v}");
    }
}

/// Sets the backend up for `rule` and checks it.
pub async fn verify<S: Subject>(rule: Rule) -> Result<(), Violation> {
    let subject = S::setup(rule).await;
    let run = Run {
        subject: &subject,
        target: format!("conformance/Deployment/{}", rule.name().replace('_', "-")),
    };
    let result = match rule {
        Rule::NameAndLabels => run.name_and_labels().await,
        Rule::OwnerReference => run.owner_reference().await,
        Rule::IdempotentCreate => run.idempotent_create().await,
        Rule::HeldByAnotherOwner => run.held_by_another_owner().await,
        Rule::StaleReplacement => run.stale_replacement().await,
        Rule::RefusesUnlabelled => run.refuses_unlabelled().await,
        Rule::OwnerOnlyDelete => run.owner_only_delete().await,
        Rule::WatchWakesTheOwner => run.watch_wakes_the_owner().await,
        Rule::InitialSummary => run.initial_summary().await,
        Rule::Cancellation => run.cancellation().await,
        Rule::Success => run.outcome(Plan::Succeed).await,
        Rule::Failure => run.outcome(Plan::Fail).await,
    };
    result.map_err(|message| Violation { rule, message })
}

type Checked = Result<(), String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Checked {
    if ok { Ok(()) } else { Err(what()) }
}

fn call<T>(what: &str, r: Result<T, ExecutorError>) -> Result<T, String> {
    r.map_err(|e| format!("{what} failed: {e}"))
}

/// Polls `f` every 100 ms until it answers, for at most `timeout`.
async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Run<'a, S: Subject> {
    subject: &'a S,
    target: String,
}

impl<S: Subject> Run<'_, S> {
    fn executor(&self) -> &S::Executor {
        self.subject.executor()
    }

    fn env(&self) -> &Env {
        self.subject.env()
    }

    fn locks(&self) -> Api<DynamicObject> {
        let env = self.env();
        Api::namespaced_with(env.client.clone(), &env.execution_namespace, &env.lock)
    }

    /// A WorkflowExecution `name` in `namespace` (the request namespace unless given), created in
    /// the cluster.
    async fn wfe(
        &self,
        name: &str,
        namespace: Option<&str>,
        plan: Plan,
    ) -> Result<WorkflowExecution, String> {
        let env = self.env();
        let namespace = namespace.unwrap_or(&env.request_namespace);
        let wfe: WorkflowExecution = serde_json::from_value(json!({
            "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
            "metadata": {"name": name, "namespace": namespace},
            "spec": self.subject.spec(&self.target, plan),
        }))
        .map_err(|e| format!("the subject's spec is not a WorkflowExecution spec: {e}"))?;
        Api::<WorkflowExecution>::namespaced(env.client.clone(), namespace)
            .create(&PostParams::default(), &wfe)
            .await
            .map_err(|e| format!("create WorkflowExecution {namespace}/{name}: {e}"))
    }

    /// Records a terminal phase on `wfe`, as the controller would.
    async fn settle(&self, wfe: &WorkflowExecution) -> Checked {
        let done =
            json!({"status": {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z"}});
        let ns = wfe.namespace().unwrap_or_default();
        Api::<WorkflowExecution>::namespaced(self.env().client.clone(), &ns)
            .patch_status(
                &wfe.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&done),
            )
            .await
            .map(drop)
            .map_err(|e| format!("record the outcome of {ns}/{}: {e}", wfe.name_any()))
    }

    /// Creates the execution of `wfe`, which must be new, and lets the engine go.
    async fn start(&self, wfe: &WorkflowExecution, plan: Plan) -> Result<ExecutionRef, String> {
        let outcome = call("create", self.executor().create(wfe).await)?;
        let CreateOutcome::Created(reference) = outcome else {
            return Err(format!(
                "the first create of {} must create, got {outcome:?}",
                wfe.name_any()
            ));
        };
        self.subject.drive(wfe, &reference, plan).await;
        Ok(reference)
    }

    async fn lock_object(&self, name: &str) -> Result<Option<DynamicObject>, String> {
        self.locks()
            .get_opt(name)
            .await
            .map_err(|e| format!("read the lock object {name}: {e}"))
    }

    async fn observe(&self, wfe: &WorkflowExecution) -> Result<Observation, String> {
        call("status", self.executor().status(wfe).await)
    }

    async fn finished(&self, wfe: &WorkflowExecution) -> Result<Observation, String> {
        wait("the execution to finish", ENGINE_WAIT, || async {
            Ok(match self.observe(wfe).await? {
                Observation::Running { .. } => None,
                other => Some(other),
            })
        })
        .await
    }

    async fn deleted_externally(&self, wfe: &WorkflowExecution) -> Checked {
        match self.observe(wfe).await? {
            Observation::DeletedExternally { kind, name } => {
                ensure(name == execution_name_for(wfe), || {
                    format!(
                        "deleted externally must name the execution {}, got {name}",
                        execution_name_for(wfe)
                    )
                })?;
                ensure(kind == self.executor().resource_kind(), || {
                    format!(
                        "deleted externally must name the kind {}, got {kind}",
                        self.executor().resource_kind()
                    )
                })
            }
            other => Err(format!("expected DeletedExternally, got {other:?}")),
        }
    }

    async fn name_and_labels(&self) -> Checked {
        let wfe = self.wfe("first", None, Plan::Hold).await?;
        let reference = self.start(&wfe, Plan::Hold).await?;
        let name = execution_name_for(&wfe);
        let env = self.env();
        ensure(reference.name == name, || {
            format!("the reference must name {name}, got {}", reference.name)
        })?;
        ensure(reference.namespace == env.execution_namespace, || {
            format!(
                "the reference must be in the execution namespace {}, got {}",
                env.execution_namespace, reference.namespace
            )
        })?;
        ensure(reference.kind == self.executor().resource_kind(), || {
            format!(
                "the reference kind must be the executor's resource kind {}, got {}",
                self.executor().resource_kind(),
                reference.kind
            )
        })?;
        let object = self
            .lock_object(&name)
            .await?
            .ok_or_else(|| format!("no {} {name} holds the target", env.lock.kind))?;
        let labels = object.labels();
        for (k, v) in execution_labels(&wfe) {
            ensure(labels.get(&k) == Some(&v), || {
                format!("label {k} must be {v:?}, got {:?}", labels.get(&k))
            })?;
        }
        let annotations = object.annotations();
        for (k, v) in execution_annotations(&wfe) {
            ensure(annotations.get(&k) == Some(&v), || {
                format!(
                    "annotation {k} must be {v:?}, got {:?}",
                    annotations.get(&k)
                )
            })?;
        }
        ensure(object.owner_references().is_empty(), || {
            "no ownerReference across namespaces".to_string()
        })
    }

    async fn owner_reference(&self) -> Checked {
        let local = self.env().execution_namespace.clone();
        let wfe = self.wfe("local", Some(&local), Plan::Hold).await?;
        let reference = self.start(&wfe, Plan::Hold).await?;
        let object = self
            .lock_object(&reference.name)
            .await?
            .ok_or("the lock object is missing")?;
        let refs = object.owner_references();
        ensure(refs.len() == 1, || {
            format!("one ownerReference, got {refs:?}")
        })?;
        let r = &refs[0];
        ensure(
            r.kind == "WorkflowExecution"
                && r.api_version == WorkflowExecution::api_version(&())
                && r.name == wfe.name_any()
                && Some(&r.uid) == wfe.uid().as_ref()
                && r.controller == Some(true)
                && r.block_owner_deletion == Some(false),
            || {
                format!(
                    "a controller reference to the WorkflowExecution without blockOwnerDeletion, got {r:?}"
                )
            },
        )
    }

    async fn idempotent_create(&self) -> Checked {
        let wfe = self.wfe("first", None, Plan::Hold).await?;
        let reference = self.start(&wfe, Plan::Hold).await?;
        let uid = self
            .lock_object(&reference.name)
            .await?
            .and_then(|o| o.uid());
        for attempt in 2..=3 {
            let again = call("create again", self.executor().create(&wfe).await)?;
            ensure(again == CreateOutcome::Adopted(reference.clone()), || {
                format!("create #{attempt} by the owner must adopt {reference:?}, got {again:?}")
            })?;
        }
        let now = self
            .lock_object(&reference.name)
            .await?
            .and_then(|o| o.uid());
        ensure(uid == now, || {
            "adoption must not replace the object".to_string()
        })?;
        match self.observe(&wfe).await? {
            Observation::Running { .. } => Ok(()),
            other => Err(format!(
                "the adopted execution must still run, got {other:?}"
            )),
        }
    }

    async fn held_by_another_owner(&self) -> Checked {
        let first = self.wfe("first", None, Plan::Hold).await?;
        let second = self.wfe("second", None, Plan::Hold).await?;
        let reference = self.start(&first, Plan::Hold).await?;
        let uid = self
            .lock_object(&reference.name)
            .await?
            .and_then(|o| o.uid());
        let outcome = call("competing create", self.executor().create(&second).await)?;
        let CreateOutcome::HeldBy {
            reference: held,
            holder,
        } = outcome
        else {
            return Err(format!(
                "a competing create must report the holder, got {outcome:?}"
            ));
        };
        ensure(held == reference, || {
            format!("the held reference must be {reference:?}, got {held:?}")
        })?;
        ensure(holder == owner(&first), || {
            format!("the holder must be {}, got {holder:?}", owner(&first))
        })?;
        let now = self
            .lock_object(&reference.name)
            .await?
            .and_then(|o| o.uid());
        ensure(uid == now, || {
            "a competing create must not touch the holder's object".to_string()
        })?;
        match self.observe(&first).await? {
            Observation::Running { .. } => Ok(()),
            other => Err(format!(
                "the holder's execution must still run, got {other:?}"
            )),
        }
    }

    async fn stale_replacement(&self) -> Checked {
        let first = self.wfe("first", None, Plan::Succeed).await?;
        let second = self.wfe("second", None, Plan::Hold).await?;
        let reference = self.start(&first, Plan::Succeed).await?;
        match self.finished(&first).await? {
            Observation::Succeeded { .. } => {}
            other => return Err(format!("the first execution must succeed, got {other:?}")),
        }
        // Its owner has not recorded the outcome (it would adopt the execution after a crash).
        let outcome = call(
            "create before the owner settled",
            self.executor().create(&second).await,
        )?;
        ensure(
            matches!(&outcome, CreateOutcome::HeldBy { holder, .. } if *holder == owner(&first)),
            || {
                format!(
                    "a finished execution whose owner has not recorded the outcome is held, got {outcome:?}"
                )
            },
        )?;
        self.settle(&first).await?;
        let outcome = call(
            "create after the owner settled",
            self.executor().create(&second).await,
        )?;
        ensure(outcome == CreateOutcome::Created(reference.clone()), || {
            format!("a stale execution must be replaced by a new one, got {outcome:?}")
        })?;
        let object = self
            .lock_object(&reference.name)
            .await?
            .ok_or("the replacement is missing")?;
        ensure(owner_of(&object.metadata) == Some(owner(&second)), || {
            format!(
                "the replacement must belong to the second request, got {:?}",
                owner_of(&object.metadata)
            )
        })?;
        self.subject.drive(&second, &reference, Plan::Hold).await;
        self.deleted_externally(&first).await?;
        let d = call(
            "delete by the previous owner",
            self.executor().delete(&first).await,
        )?;
        ensure(d == DeleteOutcome::NotOwned, || {
            format!("the previous owner must not delete the replacement, got {d:?}")
        })
    }

    async fn refuses_unlabelled(&self) -> Checked {
        let first = self.wfe("first", None, Plan::Hold).await?;
        let second = self.wfe("second", None, Plan::Hold).await?;
        let reference = self.start(&first, Plan::Hold).await?;
        // Someone else's object under our name: strip our labels, annotations and owner. A label
        // of its own stays (with none, the API server defaults a Job's labels from its pods').
        let nulls = |keys: Vec<String>| -> serde_json::Map<String, serde_json::Value> {
            keys.into_iter()
                .map(|k| (k, serde_json::Value::Null))
                .collect()
        };
        let mut labels = nulls(execution_labels(&first).into_keys().collect());
        labels.insert("conformance.kubernaut.ai/foreign".into(), json!("true"));
        let strip = json!({"metadata": {
            "labels": labels,
            "annotations": nulls(execution_annotations(&first).into_keys().collect()),
            "ownerReferences": null,
        }});
        let stripped = self
            .locks()
            .patch(
                &reference.name,
                &PatchParams::default(),
                &Patch::Merge(&strip),
            )
            .await
            .map_err(|e| format!("strip the labels of {}: {e}", reference.name))?;
        let outcome = call(
            "create over an unlabelled object",
            self.executor().create(&second).await,
        )?;
        ensure(
            matches!(&outcome, CreateOutcome::HeldBy { holder, .. } if holder.name == UNKNOWN_OWNER && holder.uid.is_none()),
            || format!("an unlabelled object is held by {UNKNOWN_OWNER}, got {outcome:?}"),
        )?;
        let d = call(
            "delete of an unlabelled object",
            self.executor().delete(&first).await,
        )?;
        ensure(d == DeleteOutcome::NotOwned, || {
            format!("an unlabelled object is nobody's to delete, got {d:?}")
        })?;
        self.deleted_externally(&first).await?;
        let now = self.lock_object(&reference.name).await?;
        ensure(
            now.as_ref().and_then(|o| o.uid()) == stripped.uid()
                && now.is_some_and(|o| o.metadata.deletion_timestamp.is_none()),
            || "the unlabelled object must be left alone".to_string(),
        )
    }

    async fn owner_only_delete(&self) -> Checked {
        let first = self.wfe("first", None, Plan::Hold).await?;
        let second = self.wfe("second", None, Plan::Hold).await?;
        let reference = self.start(&first, Plan::Hold).await?;
        let d = call(
            "delete by another request",
            self.executor().delete(&second).await,
        )?;
        ensure(d == DeleteOutcome::NotOwned, || {
            format!("delete by another WorkflowExecution must be refused, got {d:?}")
        })?;
        ensure(self.lock_object(&reference.name).await?.is_some(), || {
            "a refused delete must leave the object".to_string()
        })?;
        let d = call("delete by the owner", self.executor().delete(&first).await)?;
        ensure(d == DeleteOutcome::Deleted, || {
            format!("delete by the owner must delete, got {d:?}")
        })?;
        // Deletion may take a while (finalizers): repeated deletes say Deleted, then NotFound.
        wait(
            "a repeated delete to report NotFound",
            DELETE_WAIT,
            || async {
                Ok(
                    match call("repeated delete", self.executor().delete(&first).await)? {
                        DeleteOutcome::NotFound => Some(()),
                        DeleteOutcome::Deleted => None,
                        DeleteOutcome::NotOwned => {
                            return Err("a repeated delete by the owner said NotOwned".into());
                        }
                    },
                )
            },
        )
        .await?;
        self.deleted_externally(&first).await
    }

    async fn watch_wakes_the_owner(&self) -> Checked {
        let Some(changes) = self.executor().changes() else {
            // The contract allows a backend without a watch: it is polled instead.
            eprintln!("no watch: the controller polls this backend every --running-resync");
            return Ok(());
        };
        let seen: Arc<Mutex<Vec<Owner>>> = Arc::default();
        let collector = tokio::spawn({
            let seen = seen.clone();
            changes.for_each(move |o| {
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(o);
                futures::future::ready(())
            })
        });
        let woken = |wfe: &WorkflowExecution| {
            let me = owner(wfe);
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|o| **o == me)
                .count()
        };
        let result = async {
            // A first execution on another target shows that the watch is established, so that
            // the next one's creation and end arrive as two events (not one initial listing).
            let canary = Run {
                subject: self.subject,
                target: format!("{}-canary", self.target),
            };
            let early = canary.wfe("canary", None, Plan::Hold).await?;
            canary.start(&early, Plan::Hold).await?;
            wait("a wake-up for the first execution", ENGINE_WAIT, || async {
                Ok((woken(&early) > 0).then_some(()))
            })
            .await?;
            let first = self.wfe("first", None, Plan::Succeed).await?;
            self.start(&first, Plan::Succeed).await?;
            wait("a wake-up for the new execution", ENGINE_WAIT, || async {
                Ok((woken(&first) > 0).then_some(()))
            })
            .await?;
            match self.finished(&first).await? {
                Observation::Succeeded { .. } => {}
                other => return Err(format!("the execution must succeed, got {other:?}")),
            }
            // Finishing changed the object after its creation: the owner was woken again.
            wait(
                "a wake-up for the finished execution",
                ENGINE_WAIT,
                || async { Ok((woken(&first) >= 2).then_some(())) },
            )
            .await
        }
        .await;
        collector.abort();
        result
    }

    async fn initial_summary(&self) -> Checked {
        let wfe = self.wfe("first", None, Plan::Hold).await?;
        self.start(&wfe, Plan::Hold).await?;
        let observed = self.observe(&wfe).await?;
        match (self.executor().initial_summary(), observed) {
            (Some(initial), Observation::Running { summary }) => ensure(initial == summary, || {
                format!(
                    "initial_summary {initial:?} differs from the first observation {summary:?}"
                )
            }),
            (None, Observation::Running { .. }) => Ok(()),
            (_, other) => Err(format!("a new execution must be running, got {other:?}")),
        }
    }

    async fn cancellation(&self) -> Checked {
        let first = self.wfe("first", None, Plan::Hold).await?;
        let second = self.wfe("second", None, Plan::Hold).await?;
        let reference = self.start(&first, Plan::Hold).await?;
        match self.observe(&first).await? {
            Observation::Running { .. } => {}
            other => return Err(format!("the execution must run, got {other:?}")),
        }
        let d = call(
            "delete of a running execution",
            self.executor().delete(&first).await,
        )?;
        ensure(d == DeleteOutcome::Deleted, || {
            format!("delete must delete, got {d:?}")
        })?;
        wait("the running execution to be gone", DELETE_WAIT, || async {
            Ok(self
                .lock_object(&reference.name)
                .await?
                .is_none()
                .then_some(()))
        })
        .await?;
        self.deleted_externally(&first).await?;
        let outcome = call(
            "create after the cancellation",
            self.executor().create(&second).await,
        )?;
        ensure(outcome == CreateOutcome::Created(reference), || {
            format!("the target must be free after a cancellation, got {outcome:?}")
        })
    }

    async fn outcome(&self, plan: Plan) -> Checked {
        let wfe = self.wfe("first", None, plan).await?;
        self.start(&wfe, plan).await?;
        match (plan, self.finished(&wfe).await?) {
            (Plan::Succeed, Observation::Succeeded { summary, .. }) => {
                ensure(summary.status == "True", || {
                    format!("a success's summary status is True, got {summary:?}")
                })
            }
            (
                Plan::Fail,
                Observation::Failed {
                    summary, failure, ..
                },
            ) => {
                ensure(summary.status == "False", || {
                    format!("a failure's summary status is False, got {summary:?}")
                })?;
                ensure(!failure.message.is_empty(), || {
                    "a failure says what happened".to_string()
                })?;
                let controllers = [
                    FailureReason::UnsupportedEngine,
                    FailureReason::Deduplicated,
                    FailureReason::ExhaustedRetries,
                    FailureReason::PreviousExecutionFailed,
                ];
                ensure(!controllers.contains(&failure.reason), || {
                    format!(
                        "{:?} is the controller's reason, not an engine's",
                        failure.reason
                    )
                })
            }
            (_, other) => Err(format!("expected the execution to {plan:?}, got {other:?}")),
        }
    }
}

fn owner(wfe: &WorkflowExecution) -> Owner {
    Owner {
        name: wfe.name_any(),
        namespace: wfe.namespace().unwrap_or_default(),
        uid: wfe.uid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_have_distinct_test_names() {
        let mut names: Vec<_> = Rule::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Rule::ALL.len());
        let v = Violation {
            rule: Rule::OwnerOnlyDelete,
            message: "kept".into(),
        };
        assert!(
            v.to_string()
                .starts_with("conformance rule `owner_only_delete`")
        );
    }

    /// The generated module has one test per rule: the macro lists every rule.
    #[test]
    fn the_macro_lists_every_rule() {
        let source = include_str!("conformance.rs");
        let start = source
            .find("macro_rules! conformance_tests")
            .expect("the macro");
        let body = &source[start..];
        for rule in Rule::ALL {
            assert!(
                body.contains(&format!("            {} => {rule:?},\n", rule.name())),
                "conformance_tests! must generate {}",
                rule.name()
            );
        }
    }
}
