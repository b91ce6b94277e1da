//! A backend whose execution is not a Kubernetes object (an AWX-like REST engine, `engine.rs`,
//! talking to the small server of `server.rs` on 127.0.0.1) runs the conformance suite: the
//! framework holds the per-target lock with a Lease (`wfe_executor::external`).

mod engine;
mod server;

use async_trait::async_trait;
use engine::AwxEngine;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use wfe_api::{ExecutionRef, WorkflowExecution};
use wfe_executor::{
    CreateOutcome, DeleteOutcome, Executor, Observation,
    conformance::{Env, Plan, Rule, Subject},
    external::{ANNOTATION_EXTERNAL_ID, External},
};

struct Awx {
    executor: External<AwxEngine>,
    server: server::Server,
    env: Env,
}

impl Awx {
    async fn job_of(&self, reference: &ExecutionRef) -> String {
        let lease = Api::<Lease>::namespaced(self.env.client.clone(), &reference.namespace)
            .get(&reference.name)
            .await
            .unwrap();
        lease.metadata.annotations.unwrap()[ANNOTATION_EXTERNAL_ID].clone()
    }
}

#[async_trait]
impl Subject for Awx {
    type Executor = External<AwxEngine>;

    async fn setup(rule: Rule) -> Self {
        let client = wfe_testing::client().await;
        let ns = wfe_testing::namespace(&client, &format!("awx-{}", rule.name())).await;
        let requests = wfe_testing::namespace(&client, "awx-requests").await;
        let server = server::Server::start().await;
        let engine = AwxEngine {
            base: server.base.clone(),
        };
        Awx {
            executor: External::new(engine, client.clone(), ns.clone()),
            server,
            env: Env::of::<Lease>(client, ns, requests),
        }
    }

    fn executor(&self) -> &External<AwxEngine> {
        &self.executor
    }

    fn env(&self) -> &Env {
        &self.env
    }

    fn spec(&self, target: &str, _plan: Plan) -> serde_json::Value {
        json!({
            "workflowRef": {"workflowId": "restart-pods", "version": "1",
                            "containerImage": "registry.example.com/unused:v1"},
            "targetResource": target,
            "parameters": {"REPLICAS": "2"},
            "remediationRequestRef": {"name": "rr"}
        })
    }

    async fn drive(&self, _wfe: &WorkflowExecution, reference: &ExecutionRef, plan: Plan) {
        let status = match plan {
            Plan::Hold => return,
            Plan::Succeed => "successful",
            Plan::Fail => "failed",
        };
        let id = self.job_of(reference).await;
        let code = post(
            &self.server.base,
            &format!("/test/jobs/{id}/finish"),
            json!({"status": status, "result_traceback": "task restart failed"}),
        )
        .await;
        assert_eq!(code, 200, "finish job {id}");
    }
}

/// POST with a JSON body to the test server; the status code.
async fn post(base: &str, path: &str, body: serde_json::Value) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer[9..12].parse().unwrap()
}

wfe_executor::conformance_tests!(Awx);

/// Beyond the suite: one launch per lock (an adoption does not launch again), and releasing the
/// lock of a running execution cancels it on the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_launch_per_lock_and_cancel_on_release() {
    let awx = Awx::setup(Rule::Cancellation).await;
    let wfe: WorkflowExecution =
        Api::namespaced(awx.env.client.clone(), &awx.env.request_namespace)
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
                    "metadata": {"name": "launch-once"},
                    "spec": awx.spec("production/Deployment/awx", Plan::Hold),
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    let CreateOutcome::Created(r) = awx.executor.create(&wfe).await.unwrap() else {
        panic!("created")
    };
    assert_eq!(
        awx.executor.create(&wfe).await.unwrap(),
        CreateOutcome::Adopted(r.clone())
    );
    assert_eq!(
        awx.server.launches(),
        1,
        "an adoption does not launch again"
    );
    let id: u64 = awx.job_of(&r).await.parse().unwrap();
    assert!(matches!(
        awx.executor.status(&wfe).await.unwrap(),
        Observation::Running { .. }
    ));
    assert_eq!(
        awx.executor.delete(&wfe).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(awx.server.status(id).as_deref(), Some("canceled"));
}

#[test]
fn job_states() {
    use wfe_api::FailureReason;
    for (state, running) in [("pending", true), ("waiting", true), ("running", true)] {
        let o = engine::observation(&json!({"id": 1, "status": state}));
        assert_eq!(matches!(o, Observation::Running { .. }), running, "{state}");
    }
    assert!(matches!(
        engine::observation(&json!({"id": 1, "status": "successful"})),
        Observation::Succeeded { .. }
    ));
    match engine::observation(&json!({"id": 7, "status": "failed", "result_traceback": "boom"})) {
        Observation::Failed { failure, .. } => {
            assert_eq!(failure.reason, FailureReason::TaskFailed);
            assert!(failure.was_execution_failure);
            assert_eq!(failure.message, "AWX job 7 failed: boom");
        }
        other => panic!("{other:?}"),
    }
}
