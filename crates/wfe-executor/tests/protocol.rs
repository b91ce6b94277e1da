//! The protocol of `wfe_executor::resource` against the local control plane, through a test
//! backend of ConfigMaps whose hooks can be made to fail: what the built-in backends rely on
//! beyond the conformance suite (the before-delete hook is best effort, a failed pre-flight still
//! adopts, objects being deleted).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
};
use serde_json::json;
use wfe_api::{ExecutionEngine, ExecutionStatusSummary, FieldError, WorkflowExecution};
use wfe_executor::{
    CreateOutcome, DeleteOutcome, ExecutionResource, Executor, ExecutorError, Observation,
    ResourceClient,
};

const HOLD: &str = "wfe-test.kubernaut.ai/hold";

#[derive(Clone, Debug)]
struct Probe {
    resources: ResourceClient<ConfigMap>,
    /// The API error code `before_delete` answers with (0: success).
    hook_error: Arc<AtomicU16>,
    hook_calls: Arc<AtomicUsize>,
    preflight_fails: Arc<AtomicBool>,
    /// Objects carry a finalizer, so that a deletion leaves them terminating.
    finalizer: bool,
}

impl Probe {
    fn new(client: Client, namespace: &str, finalizer: bool) -> Self {
        Probe {
            resources: ResourceClient::new(client, namespace),
            hook_error: Arc::default(),
            hook_calls: Arc::default(),
            preflight_fails: Arc::default(),
            finalizer,
        }
    }
}

fn api_error(code: u16) -> kube::Error {
    let mut s = kube::core::Status::failure("refused by the test", "Test");
    s.code = code;
    kube::Error::Api(Box::new(s))
}

#[async_trait]
impl ExecutionResource for Probe {
    type Object = ConfigMap;

    fn resources(&self) -> &ResourceClient<ConfigMap> {
        &self.resources
    }

    fn engine(&self) -> ExecutionEngine {
        ExecutionEngine::parse_lenient("probe")
    }

    fn build(&self, _wfe: &WorkflowExecution) -> Result<ConfigMap, FieldError> {
        Ok(ConfigMap {
            metadata: ObjectMeta {
                finalizers: self.finalizer.then(|| vec![HOLD.to_string()]),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn is_finished(&self, _cm: &ConfigMap) -> bool {
        false
    }

    async fn observe(
        &self,
        _cm: &ConfigMap,
        _wfe: &WorkflowExecution,
    ) -> Result<Observation, ExecutorError> {
        Ok(Observation::Running {
            summary: ExecutionStatusSummary::default(),
        })
    }

    async fn preflight(&self, _wfe: &WorkflowExecution) -> Result<(), ExecutorError> {
        if self.preflight_fails.load(Ordering::SeqCst) {
            return Err(ExecutorError::invalid("a dependency is missing"));
        }
        Ok(())
    }

    async fn before_delete(&self, _cm: &ConfigMap) -> Result<(), kube::Error> {
        self.hook_calls.fetch_add(1, Ordering::SeqCst);
        match self.hook_error.load(Ordering::SeqCst) {
            0 => Ok(()),
            code => Err(api_error(code)),
        }
    }
}

/// In memory, outside the execution namespace (no ownerReference; its owner counts as settled,
/// since it does not exist in the cluster).
fn wfe(name: &str) -> WorkflowExecution {
    wfe_api::testing::wfe(name)
        .namespace("requests")
        .target("production/Deployment/protocol")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_before_delete_hook_does_not_stop_the_deletion() {
    let client = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&client, "protocol-hook").await;
    let probe = Probe::new(client.clone(), &ns, false);
    let cms = Api::<ConfigMap>::namespaced(client, &ns);
    let w = wfe("hooked");
    let CreateOutcome::Created(r) = probe.create(&w).await.unwrap() else {
        panic!("created")
    };
    // NotFound from the hook: the object is gone as far as delete is concerned.
    probe.hook_error.store(404, Ordering::SeqCst);
    assert_eq!(probe.delete(&w).await.unwrap(), DeleteOutcome::NotFound);
    assert!(cms.get_opt(&r.name).await.unwrap().is_some());
    // Any other refusal (403: an older Role without `patch`) is logged; the deletion goes on.
    probe.hook_error.store(403, Ordering::SeqCst);
    assert_eq!(probe.delete(&w).await.unwrap(), DeleteOutcome::Deleted);
    assert!(cms.get_opt(&r.name).await.unwrap().is_none());
    assert_eq!(probe.hook_calls.load(Ordering::SeqCst), 2);
    assert_eq!(probe.delete(&w).await.unwrap(), DeleteOutcome::NotFound);
    assert_eq!(
        probe.hook_calls.load(Ordering::SeqCst),
        2,
        "no hook without an object"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_preflight_still_adopts_an_owned_object() {
    let client = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&client, "protocol-preflight").await;
    let probe = Probe::new(client, &ns, false);
    let (first, second) = (wfe("first"), wfe("second"));
    let CreateOutcome::Created(r) = probe.create(&first).await.unwrap() else {
        panic!("created")
    };
    probe.preflight_fails.store(true, Ordering::SeqCst);
    assert_eq!(
        probe.create(&first).await.unwrap(),
        CreateOutcome::Adopted(r)
    );
    let err = probe.create(&second).await.unwrap_err();
    assert!(matches!(err, ExecutorError::Invalid { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_being_deleted() {
    let client = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&client, "protocol-terminating").await;
    let probe = Probe::new(client.clone(), &ns, true);
    let cms = Api::<ConfigMap>::namespaced(client, &ns);
    let (first, second) = (wfe("first"), wfe("second"));
    let CreateOutcome::Created(r) = probe.create(&first).await.unwrap() else {
        panic!("created")
    };
    // The finalizer keeps it: terminating.
    assert_eq!(probe.delete(&first).await.unwrap(), DeleteOutcome::Deleted);
    let terminating = cms.get(&r.name).await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    // Deleting again runs the hook (a running execution is stopped) and reports Deleted.
    assert_eq!(probe.delete(&first).await.unwrap(), DeleteOutcome::Deleted);
    assert_eq!(probe.hook_calls.load(Ordering::SeqCst), 2);
    // The owner still sees its object.
    assert!(matches!(
        probe.status(&first).await.unwrap(),
        Observation::Running { .. }
    ));
    // For another request it is stale (its owner is settled): create waits for it to go, then
    // gives up with a transient error while the finalizer holds it.
    let err = probe.create(&second).await.unwrap_err();
    assert!(
        matches!(&err, ExecutorError::Transient { message, .. } if message.contains("still being deleted")),
        "{err}"
    );
    // Released: gone, and the next create creates.
    let release = json!({"metadata": {"finalizers": null}});
    cms.patch(&r.name, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    wfe_testing::wait_for("the release", Duration::from_secs(10), || async {
        cms.get_opt(&r.name).await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(
        probe.create(&second).await.unwrap(),
        CreateOutcome::Created(r.clone())
    );
    // Not its own: the first cannot delete it; the second can, and releases it for the test.
    assert_eq!(probe.delete(&first).await.unwrap(), DeleteOutcome::NotOwned);
    assert_eq!(probe.delete(&second).await.unwrap(), DeleteOutcome::Deleted);
    cms.patch(&r.name, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
}
