//! The minimum backend of docs/backend-authors.md ("Worked example: a dry-run backend"),
//! compiled and run here: `backend.rs` is the guide's `crates/wfe-dryrun/src/lib.rs`, byte for
//! byte (checked below), and this file is the guide's `crates/wfe-dryrun/tests/cluster.rs` plus
//! unit tests of the pure parts. The cluster tests run against the local control plane
//! (`wfe-testing`).

mod backend;

use std::time::Duration;

use async_trait::async_trait;
use backend::{DryRunExecutor, observation, record};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use wfe_api::{ExecutionRef, FailureReason, WorkflowExecution};
use wfe_executor::{
    CreateOutcome, DeleteOutcome, Executor, Observation,
    conformance::{Env, Plan, Rule, Subject},
};

/// The backend as the conformance suite sees it: fresh namespaces for every rule, and a
/// reviewer who decides as the rule's plan says.
#[derive(Debug)]
struct DryRun {
    executor: DryRunExecutor,
    env: Env,
}

#[async_trait]
impl Subject for DryRun {
    type Executor = DryRunExecutor;

    async fn setup(rule: Rule) -> Self {
        let client = wfe_testing::client().await;
        let ns = wfe_testing::namespace(&client, &format!("dryrun-{}", rule.name())).await;
        let requests = wfe_testing::namespace(&client, "dryrun-requests").await;
        DryRun {
            executor: DryRunExecutor::new(client.clone(), ns.clone()),
            env: Env::of::<ConfigMap>(client, ns, requests),
        }
    }

    fn executor(&self) -> &DryRunExecutor {
        &self.executor
    }

    fn env(&self) -> &Env {
        &self.env
    }

    fn spec(&self, target: &str, _plan: Plan) -> serde_json::Value {
        // No `executionEngine` until `dryrun` is in the CRD's enum: the backend does not read it.
        json!({
            "workflowRef": {"workflowId": "wf", "version": "1",
                            "containerImage": "registry.example.com/wf:v1"},
            "targetResource": target,
            "remediationRequestRef": {"name": "rr"}
        })
    }

    async fn drive(&self, _wfe: &WorkflowExecution, reference: &ExecutionRef, plan: Plan) {
        let result = match plan {
            Plan::Hold => return,
            Plan::Succeed => "succeeded",
            Plan::Fail => "failed",
        };
        let patch = json!({"data": {"result": result, "message": "decided by the test"}});
        Api::<ConfigMap>::namespaced(self.env.client.clone(), &reference.namespace)
            .patch(
                &reference.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }
}

wfe_executor::conformance_tests!(DryRun);

/// A WorkflowExecution that exists only in memory, for the tests below: the dry-run backend
/// does not need it in the cluster. It lives outside the execution namespace, so the record gets
/// no ownerReference (an ownerReference to an object that does not exist would let the garbage
/// collector delete it).
fn wfe(name: &str, target: &str) -> WorkflowExecution {
    wfe_api::testing::wfe(name)
        .namespace("requests")
        .unset_spec("executionEngine")
        .image("registry.example.com/wf:v1")
        .target(target)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_decides() {
    let client = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&client, "dryrun-review").await;
    let exec = DryRunExecutor::new(client.clone(), ns.clone());
    let w = wfe("review", "production/Deployment/my-app");
    let CreateOutcome::Created(r) = exec.create(&w).await.unwrap() else {
        panic!("created")
    };
    let patch = json!({"data": {"result": "succeeded"}});
    Api::<ConfigMap>::namespaced(client, &ns)
        .patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wfe_testing::wait_for("the approval", Duration::from_secs(10), || async {
        matches!(
            exec.status(&w).await.unwrap(),
            Observation::Succeeded { .. }
        )
        .then_some(())
    })
    .await;
}

/// The protocol around the example: identity metadata, and a finished record of another request
/// replaced once that request is settled (here: it does not exist in the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_record_of_another_request_is_replaced() {
    let client = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&client, "dryrun-stale").await;
    let exec = DryRunExecutor::new(client.clone(), ns.clone());
    let cms = Api::<ConfigMap>::namespaced(client, &ns);
    let (first, second) = (
        wfe("first", "production/Deployment/shared"),
        wfe("second", "production/Deployment/shared"),
    );
    let CreateOutcome::Created(r) = exec.create(&first).await.unwrap() else {
        panic!("created")
    };
    let stored = cms.get(&r.name).await.unwrap();
    assert_eq!(
        stored.metadata.labels,
        Some(wfe_executor::execution_labels(&first))
    );
    assert_eq!(
        stored.metadata.annotations,
        Some(wfe_executor::execution_annotations(&first))
    );
    assert_eq!(stored.metadata.owner_references, None);
    assert_eq!(stored.data, record(&first).data);
    // Live: held by the first.
    assert!(matches!(
        exec.create(&second).await.unwrap(),
        CreateOutcome::HeldBy { holder, .. } if holder.name == "first"
    ));
    // Finished (rejected): stale, replaced by the second's record.
    let patch = json!({"data": {"result": "failed", "message": "no"}});
    cms.patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        exec.create(&second).await.unwrap(),
        CreateOutcome::Created(r.clone())
    );
    assert!(matches!(
        exec.status(&first).await.unwrap(),
        Observation::DeletedExternally { .. }
    ));
    assert_eq!(exec.delete(&first).await.unwrap(), DeleteOutcome::NotOwned);
    assert!(matches!(
        exec.status(&second).await.unwrap(),
        Observation::Running { .. }
    ));
    assert_eq!(exec.delete(&second).await.unwrap(), DeleteOutcome::Deleted);
}

#[test]
fn records_and_observations() {
    let w = wfe("unit", "production/Deployment/my-app");
    let mut cm = record(&w);
    let data = cm.data.clone().unwrap();
    assert_eq!(data["targetResource"], "production/Deployment/my-app");
    assert_eq!(data["workflowId"], "wf");
    assert_eq!(data["parameters"], "{}");
    assert!(matches!(observation(&cm), Observation::Running { .. }));
    let mut decide = |result: &str| {
        let data = cm.data.get_or_insert_default();
        data.insert(backend::RESULT_KEY.into(), result.into());
        data.insert(backend::MESSAGE_KEY.into(), "why".into());
        observation(&cm)
    };
    assert!(matches!(decide("succeeded"), Observation::Succeeded { .. }));
    match decide("failed") {
        Observation::Failed { failure, .. } => {
            assert_eq!(failure.reason, FailureReason::TaskFailed);
            assert!(!failure.was_execution_failure, "nothing ran");
            assert_eq!(failure.message, "the dry run was rejected: why");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(decide("maybe"), Observation::Running { .. }));
}

/// The guide shows `backend.rs` and this file's conformance subject exactly.
#[test]
fn the_guide_shows_this_code() {
    let guide = include_str!("../../../../docs/backend-authors.md");
    let backend = include_str!("backend.rs");
    assert!(
        guide.contains(&format!("```rust\n{backend}```")),
        "docs/backend-authors.md must show crates/wfe-executor/tests/dryrun/backend.rs exactly"
    );
    let tests = include_str!("main.rs");
    let start = tests
        .find("/// The backend as the conformance suite")
        .unwrap();
    let end = tests
        .find("/// A WorkflowExecution that exists only")
        .unwrap();
    assert!(
        guide.contains(tests[start..end].trim_end()),
        "docs/backend-authors.md must show the conformance subject of crates/wfe-executor/tests/dryrun/main.rs exactly"
    );
}
