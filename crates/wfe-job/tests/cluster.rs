//! The Job executor against the real local control plane with nodes (the Job controller runs,
//! kwok plays the kubelet).

use std::time::Duration;

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ResourceQuota, ResourceQuotaSpec, ServiceAccount},
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use serde_json::json;
use wfe_api::{
    FailureReason, WorkflowExecution,
    testing::{self, DIGEST},
};
use wfe_executor::{CreateOutcome, DeleteOutcome, Executor, Observation, conformance as suite};
use wfe_job::{JobConfig, JobExecutor};

struct Env {
    client: Client,
    ns: String,
    exec: JobExecutor,
}

async fn env(prefix: &str) -> Env {
    let client = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&client, prefix).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("kubernaut-workflow-runner".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let exec = JobExecutor::new(
        client.clone(),
        JobConfig {
            namespace: ns.clone(),
            stuck_grace: Duration::from_secs(5),
            ..JobConfig::default()
        },
    );
    Env { client, ns, exec }
}

impl Env {
    /// Creates a WorkflowExecution (so it has a UID) in the execution namespace.
    async fn wfe(
        &self,
        name: &str,
        target: &str,
        params: &[(&str, &str)],
        timeout: Option<&str>,
    ) -> WorkflowExecution {
        let mut fixture = testing::wfe(name)
            .namespace(&self.ns)
            .uid(None)
            .target(target)
            .spec("parameters", json!({}));
        for (k, v) in params {
            fixture = fixture.param(k, v);
        }
        if let Some(t) = timeout {
            fixture = fixture.spec("executionConfig", json!({"timeout": t}));
        }
        let w = fixture.build();
        Api::<WorkflowExecution>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &w)
            .await
            .unwrap()
    }

    /// Records a success in a WorkflowExecution's status, as its controller would.
    async fn record_success(&self, name: &str) {
        let done =
            json!({"status": {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z"}});
        Api::<WorkflowExecution>::namespaced(self.client.clone(), &self.ns)
            .patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&done),
            )
            .await
            .unwrap();
    }

    async fn finished(&self, w: &WorkflowExecution) -> Observation {
        let what = format!("execution of {} to finish", w.name_any());
        wfe_testing::wait_for(&what, Duration::from_secs(90), || async {
            match self.exec.status(w).await.unwrap() {
                Observation::Running { .. } => None,
                other => Some(other),
            }
        })
        .await
    }
}

fn failure(o: Observation) -> wfe_executor::Failure {
    match o {
        Observation::Failed { failure, .. } => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The Job backend as the conformance suite sees it: the real Job controller runs, kwok plays
/// the kubelet and the pod's `KWOK_RESULT` decides the outcome.
#[derive(Debug)]
struct JobSubject {
    executor: JobExecutor,
    env: suite::Env,
}

#[async_trait::async_trait]
impl suite::Subject for JobSubject {
    type Executor = JobExecutor;

    async fn setup(rule: suite::Rule) -> Self {
        let e = env(&format!("job-{}", rule.name())).await;
        if rule == suite::Rule::InitialSummary {
            // No pods: the Job stays as it was created while the suite observes it.
            let quota = ResourceQuota {
                metadata: ObjectMeta {
                    name: Some("no-pods".into()),
                    ..Default::default()
                },
                spec: Some(ResourceQuotaSpec {
                    hard: Some([("pods".to_string(), Quantity("0".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            Api::<ResourceQuota>::namespaced(e.client.clone(), &e.ns)
                .create(&PostParams::default(), &quota)
                .await
                .unwrap();
        }
        let requests = wfe_testing::namespace(&e.client, "job-requests").await;
        JobSubject {
            env: suite::Env::of::<Job>(e.client, e.ns, requests),
            executor: e.exec,
        }
    }

    fn executor(&self) -> &JobExecutor {
        &self.executor
    }

    fn env(&self) -> &suite::Env {
        &self.env
    }

    fn spec(&self, target: &str, plan: suite::Plan) -> serde_json::Value {
        // Pods of Jobs succeed unless KWOK_RESULT says otherwise.
        let parameters = match plan {
            suite::Plan::Hold => json!({"KWOK_RESULT": "hold"}),
            suite::Plan::Succeed => json!({}),
            suite::Plan::Fail => json!({"KWOK_RESULT": "fail"}),
        };
        json!({
            "executionEngine": "job",
            "workflowRef": {"workflowId": "wf", "version": "1", "containerImage": format!("registry.example.com/wf@{DIGEST}")},
            "targetResource": target,
            "parameters": parameters,
            "remediationRequestRef": {"name": "rr"}
        })
    }
}

wfe_executor::conformance_tests!(JobSubject);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_and_succeeds() {
    let e = env("job-ok").await;
    let w = e
        .wfe(
            "ok",
            "production/Deployment/my-app",
            &[("podName", "my-app")],
            None,
        )
        .await;
    let CreateOutcome::Created(r) = e.exec.create(&w).await.unwrap() else {
        panic!("created")
    };
    assert_eq!(r.namespace, e.ns);
    match e.finished(&w).await {
        Observation::Succeeded {
            summary,
            finished_at,
        } => {
            assert_eq!(summary.completed_tasks, 1);
            assert!(finished_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    // The owner reference (same namespace) and the labels are on the Job.
    let job = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(e.client.clone(), &e.ns)
        .get(&r.name)
        .await
        .unwrap();
    assert_eq!(job.owner_references()[0].uid, w.uid().unwrap());
    assert_eq!(job.labels()["kubernaut.ai/execution-engine"], "job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_three() {
    let e = env("job-exit").await;
    let w = e
        .wfe(
            "exit3",
            "production/Deployment/e",
            &[
                ("KWOK_RESULT", "fail"),
                ("KWOK_EXIT_CODE", "3"),
                ("KWOK_MESSAGE", "rollout failed"),
            ],
            None,
        )
        .await;
    e.exec.create(&w).await.unwrap();
    let f = failure(e.finished(&w).await);
    assert_eq!(f.reason, FailureReason::TaskFailed);
    assert_eq!(f.exit_code, Some(3));
    assert!(f.was_execution_failure);
    assert!(f.message.contains("rollout failed"), "{}", f.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed() {
    let e = env("job-oom").await;
    let w = e
        .wfe(
            "oom",
            "production/Deployment/o",
            &[
                ("KWOK_RESULT", "fail"),
                ("KWOK_EXIT_CODE", "137"),
                ("KWOK_REASON", "OOMKilled"),
            ],
            None,
        )
        .await;
    e.exec.create(&w).await.unwrap();
    let f = failure(e.finished(&w).await);
    assert_eq!(f.reason, FailureReason::OomKilled);
    assert_eq!(f.exit_code, Some(137));
    assert!(f.was_execution_failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_deadline() {
    let e = env("job-deadline").await;
    let w = e
        .wfe(
            "slow",
            "production/Deployment/d",
            &[("KWOK_RESULT", "hold")],
            Some("3s"),
        )
        .await;
    e.exec.create(&w).await.unwrap();
    let f = failure(e.finished(&w).await);
    assert_eq!(f.reason, FailureReason::DeadlineExceeded, "{}", f.message);
    assert!(f.message.contains("timeout of 3s"), "{}", f.message);
}

/// Records the path and `Accept` header of every request of a client.
#[derive(Clone, Default)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl<S> tower::Layer<S> for Recorder {
    type Service = Recording<S>;
    fn layer(&self, inner: S) -> Recording<S> {
        Recording {
            inner,
            seen: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Recording<S> {
    inner: S,
    seen: Recorder,
}

impl<S, B> tower::Service<http::Request<B>> for Recording<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.seen
            .0
            .lock()
            .unwrap()
            .push((req.uri().path().to_string(), accept));
        self.inner.call(req)
    }
}

/// Secrets are checked by metadata only (issue #18): every request the executor makes for a
/// Secret asks the API server for `PartialObjectMetadata`, so the Secret's data never reaches
/// the operator; the pre-flight check still finds the Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_read_as_metadata_only() {
    let e = env("job-secret-meta").await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(e.client.clone(), &e.ns);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db-credentials"},
        "stringData": {"password": "do-not-send-me"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let recorder = Recorder::default();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(wfe_testing::kubeconfig_path()).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::client::ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&recorder)
        .build();
    let exec = JobExecutor::new(
        client,
        JobConfig {
            namespace: e.ns.clone(),
            ..JobConfig::default()
        },
    );
    let mut w = e
        .wfe("needs-secret-meta", "production/Deployment/m", &[], None)
        .await;
    w.spec.workflow_ref.dependencies = Some(wfe_api::WorkflowDependencies {
        secrets: vec![wfe_api::NamedDependency {
            name: "db-credentials".into(),
        }],
        config_maps: vec![],
    });
    exec.create(&w).await.unwrap();
    let seen = recorder.0.lock().unwrap().clone();
    let secret_reads: Vec<_> = seen
        .iter()
        .filter(|(p, _)| p.contains("/secrets"))
        .collect();
    assert!(!secret_reads.is_empty(), "the Secret was checked: {seen:?}");
    for (path, accept) in secret_reads {
        assert!(
            accept.contains("as=PartialObjectMetadata"),
            "{path} asked for {accept:?}, not metadata only"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_a_configuration_error() {
    let e = env("job-secret").await;
    let mut w = e
        .wfe("needs-secret", "production/Deployment/s", &[], None)
        .await;
    w.spec.workflow_ref.dependencies = Some(wfe_api::WorkflowDependencies {
        secrets: vec![wfe_api::NamedDependency {
            name: "db-credentials".into(),
        }],
        config_maps: vec![],
    });
    let err = e.exec.create(&w).await.unwrap_err();
    assert_eq!(
        err.failure_reason(),
        Some(FailureReason::ConfigurationError)
    );
    assert!(err.message().contains("Secret \"db-credentials\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_foreign_job_is_refused_and_stale_jobs_are_replaced() {
    let e = env("job-owner").await;
    let a = e
        .wfe("owner-a", "production/Deployment/shared", &[], None)
        .await;
    let b = e
        .wfe("owner-b", "production/Deployment/shared", &[], None)
        .await;
    e.exec.create(&a).await.unwrap();
    assert_eq!(e.exec.delete(&b).await.unwrap(), DeleteOutcome::NotOwned);
    assert!(matches!(
        e.finished(&a).await,
        Observation::Succeeded { .. }
    ));
    // Finished, but its owner has not recorded the outcome yet (as after a crash): still held.
    assert!(matches!(
        e.exec.create(&b).await.unwrap(),
        CreateOutcome::HeldBy { .. }
    ));
    // Once the owner is terminal, the finished Job is stale for b: b replaces it.
    e.record_success("owner-a").await;
    match e.exec.create(&b).await.unwrap() {
        CreateOutcome::Created(_) => {}
        other => panic!("a finished Job of another execution must be replaced, got {other:?}"),
    }
    assert!(matches!(
        e.exec.status(&a).await.unwrap(),
        Observation::DeletedExternally { .. }
    ));
    assert!(matches!(
        e.finished(&b).await,
        Observation::Succeeded { .. }
    ));
}

/// With the executor's watch running (the cache `status` reads first), a change of a Job wakes
/// its owner, and a cache that may still show the replaced Job of another owner does not make the
/// new owner's Job look deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_while_the_watch_runs() {
    use futures::StreamExt;
    let e = env("job-cache").await;
    let mut changes = e.exec.changes().expect("the Job backend watches Jobs");
    assert!(e.exec.changes().is_none(), "one watch per backend");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        while let Some(owner) = changes.next().await {
            if tx.send(owner.name).is_err() {
                break;
            }
        }
    });
    let a = e
        .wfe("cache-a", "production/Deployment/cached", &[], None)
        .await;
    let b = e
        .wfe("cache-b", "production/Deployment/cached", &[], None)
        .await;
    e.exec.create(&a).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a change of the Job wakes its owner")
        .unwrap();
    assert_eq!(woken, "cache-a");
    assert!(matches!(
        e.finished(&a).await,
        Observation::Succeeded { .. }
    ));
    // The owner records the outcome; b replaces the finished Job.
    e.record_success("cache-a").await;
    assert!(matches!(
        e.exec.create(&b).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    // At once, before the watch may have delivered the replacement.
    let first = e.exec.status(&b).await.unwrap();
    assert!(
        !matches!(first, Observation::DeletedExternally { .. }),
        "{first:?}"
    );
    assert!(matches!(
        e.finished(&b).await,
        Observation::Succeeded { .. }
    ));
    pump.abort();
}
