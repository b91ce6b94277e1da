//! Integration tests of the Tekton backend against a real API server with the real Tekton CRDs
//! (the local control plane of `wfe-testing`; Tekton's controller does not run, so the tests
//! play it by patching the `status` subresource).
//!
//! Every test uses its own execution namespace, so tests never see each other's PipelineRuns.

use std::time::Duration;

use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use wfe_api::{ExecutionEngine, ExecutionRef, FailureReason, WorkflowExecution, testing};
use wfe_executor::{
    Availability, CreateOutcome, DeleteOutcome, Executor, Observation, conformance as suite,
    execution_name_for, is_owned_by, owner_of,
};
use wfe_tekton::{
    PipelineRun, RESOURCE_KIND, TaskRun, TektonConfig, TektonExecutor, UNKNOWN_OWNER,
    build_pipeline_run,
    types::{PipelineRunSpec, TaskRef, TaskRunSpec},
};

const BUNDLE: &str = "oci://registry.example.com/workflows/restart@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn spec_json(target: &str) -> serde_json::Value {
    serde_json::json!({
        "executionEngine": "tekton",
        "workflowRef": {
            "workflowId": "restart-pod",
            "version": "1.2.0",
            "containerImage": BUNDLE,
            "dependencies": {"secrets": [{"name": "db-creds"}], "configMaps": [{"name": "settings"}]},
            "declaredParameterNames": ["REPLICAS", "ZONE"]
        },
        "targetResource": target,
        "parameters": {"ZONE": "eu-1", "REPLICAS": "3", "UNDECLARED": "dropped"},
        "executionConfig": {"timeout": "45m"},
        "remediationRequestRef": {"name": "rr-1", "namespace": "default"}
    })
}

/// Creates a WorkflowExecution in the cluster (so that it has a UID) and returns it as stored.
async fn create_wfe(
    client: &Client,
    namespace: &str,
    name: &str,
    target: &str,
) -> WorkflowExecution {
    let fixture = testing::wfe(name).namespace(namespace).uid(None);
    let spec = spec_json(target).as_object().cloned().unwrap_or_default();
    let wfe = spec
        .into_iter()
        .fold(fixture, |f, (field, value)| f.spec(&field, value))
        .build();
    Api::<WorkflowExecution>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &wfe)
        .await
        .unwrap_or_else(|e| panic!("create WorkflowExecution {namespace}/{name}: {e}"))
}

struct Env {
    client: Client,
    executor: TektonExecutor,
    /// Execution namespace.
    exec_ns: String,
    /// Namespace of the WorkflowExecutions.
    wfe_ns: String,
}

async fn env() -> Env {
    let client = wfe_testing::client().await;
    let exec_ns = wfe_testing::namespace(&client, "tekton-exec").await;
    let wfe_ns = wfe_testing::namespace(&client, "tekton-wfe").await;
    let executor = TektonExecutor::new(
        client.clone(),
        TektonConfig {
            namespace: exec_ns.clone(),
            default_service_account: "kubernaut-workflow-runner".into(),
            ..TektonConfig::default()
        },
    );
    Env {
        client,
        executor,
        exec_ns,
        wfe_ns,
    }
}

impl Env {
    fn pipeline_runs(&self) -> Api<PipelineRun> {
        Api::namespaced(self.client.clone(), &self.exec_ns)
    }

    fn task_runs(&self) -> Api<TaskRun> {
        Api::namespaced(self.client.clone(), &self.exec_ns)
    }

    async fn patch_pr_status(&self, name: &str, status: serde_json::Value) {
        self.pipeline_runs()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .unwrap_or_else(|e| panic!("patch status of PipelineRun {name}: {e}"));
    }

    async fn create_expecting_created(&self, wfe: &WorkflowExecution) -> String {
        match self.executor.create(wfe).await {
            Ok(CreateOutcome::Created(r)) => {
                assert_eq!(r.kind, "PipelineRun");
                assert_eq!(r.namespace, self.exec_ns);
                assert_eq!(r.name, execution_name_for(wfe));
                r.name
            }
            other => panic!("create must create, got {other:?}"),
        }
    }
}

/// The status Tekton writes on a PipelineRun whose tasks all succeeded.
fn succeeded_status() -> serde_json::Value {
    serde_json::json!({
        "completionTime": "2026-01-01T00:03:00Z",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded",
                        "message": "Tasks Completed: 1 (Failed: 0, Cancelled 0), Skipped: 0"}]
    })
}

fn failed(observation: Observation) -> (wfe_api::ExecutionStatusSummary, wfe_executor::Failure) {
    match observation {
        Observation::Failed {
            summary, failure, ..
        } => (summary, failure),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn availability_with_the_tekton_crds() {
    let env = env().await;
    assert_eq!(env.executor.engine(), ExecutionEngine::Tekton);
    assert_eq!(env.executor.resource_kind(), RESOURCE_KIND);
    assert_eq!(env.executor.availability().await, Availability::Available);
    // Cached: still available.
    assert_eq!(env.executor.availability().await, Availability::Available);
}

#[tokio::test]
async fn the_api_server_accepts_the_pipeline_run_as_built() {
    let env = env().await;
    let wfe = create_wfe(
        &env.client,
        &env.wfe_ns,
        "accepted",
        "prod/Deployment/accepted",
    )
    .await;
    assert!(env.executor.validate(&wfe).is_ok());
    let name = env.create_expecting_created(&wfe).await;

    let stored = env
        .pipeline_runs()
        .get(&name)
        .await
        .expect("the PipelineRun exists");
    let built = build_pipeline_run(&wfe, env.executor.config()).expect("builds");
    // Nothing was pruned or defaulted away by the CRD schema.
    assert_eq!(stored.spec, built.spec);
    assert_eq!(stored.labels(), built.labels());
    assert_eq!(
        stored.annotations(),
        built.annotations(),
        "annotations are exactly ours"
    );
    assert!(is_owned_by(&stored.metadata, &wfe));
    assert_eq!(
        stored.metadata.owner_references, None,
        "cross-namespace: no ownerReference"
    );
    let params: Vec<(String, Option<String>)> = stored
        .spec
        .params
        .iter()
        .map(|p| (p.name.clone(), p.value.as_str().map(str::to_string)))
        .collect();
    assert_eq!(
        params,
        vec![
            ("REPLICAS".to_string(), Some("3".to_string())),
            ("ZONE".to_string(), Some("eu-1".to_string())),
            (
                "TARGET_RESOURCE".to_string(),
                Some("prod/Deployment/accepted".to_string())
            ),
        ]
    );
    assert_eq!(
        stored.spec.timeouts.and_then(|t| t.pipeline).as_deref(),
        Some("45m0s")
    );

    // A fresh PipelineRun: running, waiting for Tekton.
    match env.executor.status(&wfe).await.expect("status") {
        Observation::Running { summary } => {
            assert_eq!(summary.status, "Unknown");
            assert_eq!(summary.reason.as_deref(), Some("Pending"));
            assert_eq!((summary.completed_tasks, summary.total_tasks), (0, 0));
        }
        other => panic!("expected Running, got {other:?}"),
    }
}

#[tokio::test]
async fn owner_reference_in_the_execution_namespace() {
    let env = env().await;
    // The WorkflowExecution lives in the execution namespace itself.
    let wfe = create_wfe(&env.client, &env.exec_ns, "local", "prod/Deployment/local").await;
    let name = env.create_expecting_created(&wfe).await;
    let stored = env.pipeline_runs().get(&name).await.expect("exists");
    let refs = stored.metadata.owner_references.expect("ownerReference");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].kind, "WorkflowExecution");
    assert_eq!(refs[0].name, "local");
    assert_eq!(Some(refs[0].uid.clone()), wfe.uid());
    assert_eq!(refs[0].controller, Some(true));
}

/// The Tekton backend as the conformance suite sees it: no Tekton controller serves the test's
/// execution namespace, so the subject writes what Tekton would into the PipelineRun's status.
struct TektonSubject {
    env: Env,
    suite: suite::Env,
}

#[async_trait::async_trait]
impl suite::Subject for TektonSubject {
    type Executor = TektonExecutor;

    async fn setup(_rule: suite::Rule) -> Self {
        let env = env().await;
        let suite = suite::Env::of::<PipelineRun>(
            env.client.clone(),
            env.exec_ns.clone(),
            env.wfe_ns.clone(),
        );
        TektonSubject { env, suite }
    }

    fn executor(&self) -> &TektonExecutor {
        &self.env.executor
    }

    fn env(&self) -> &suite::Env {
        &self.suite
    }

    fn spec(&self, target: &str, _plan: suite::Plan) -> serde_json::Value {
        spec_json(target)
    }

    async fn drive(&self, _wfe: &WorkflowExecution, reference: &ExecutionRef, plan: suite::Plan) {
        let status = match plan {
            suite::Plan::Hold => return,
            suite::Plan::Succeed => succeeded_status(),
            suite::Plan::Fail => serde_json::json!({
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Succeeded", "status": "False", "reason": "TaskRunFailed",
                                "message": "task failed with exit code 1"}]
            }),
        };
        self.env.patch_pr_status(&reference.name, status).await;
    }
}

wfe_executor::conformance_tests!(TektonSubject);

#[tokio::test]
async fn status_subresource_mapping() {
    let env = env().await;
    let wfe = create_wfe(
        &env.client,
        &env.wfe_ns,
        "mapping",
        "prod/Deployment/mapping",
    )
    .await;
    let name = env.create_expecting_created(&wfe).await;

    // Unknown: running.
    env.patch_pr_status(
        &name,
        serde_json::json!({
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running",
                            "message": "Tasks Completed: 0 (Failed: 0, Cancelled 0), Incomplete: 1, Skipped: 0"}]
        }),
    )
    .await;
    match env.executor.status(&wfe).await.expect("status") {
        Observation::Running { summary } => {
            assert_eq!(summary.status, "Unknown");
            assert_eq!(summary.reason.as_deref(), Some("Running"));
        }
        other => panic!("expected Running, got {other:?}"),
    }

    // True: succeeded, with the completion time.
    env.patch_pr_status(&name, succeeded_status()).await;
    match env.executor.status(&wfe).await.expect("status") {
        Observation::Succeeded {
            summary,
            finished_at,
        } => {
            assert_eq!(summary.status, "True");
            assert_eq!(summary.reason.as_deref(), Some("Succeeded"));
            let finished = finished_at.expect("completionTime");
            assert_eq!(
                serde_json::to_value(&finished).expect("time"),
                serde_json::json!("2026-01-01T00:03:00Z")
            );
        }
        other => panic!("expected Succeeded, got {other:?}"),
    }

    // False: failed with reason and message, then every row of the reference's integration
    // table (reference-behaviour.md §5.3), started or not.
    let table: [(&str, &str, bool, FailureReason, bool); 8] = [
        (
            "TaskRunFailed",
            "task failed with exit code 1",
            true,
            FailureReason::TaskFailed,
            true,
        ),
        (
            "TaskRunFailed",
            "task failed: OOMKilled",
            true,
            FailureReason::OomKilled,
            true,
        ),
        (
            "PipelineRunTimeout",
            "PipelineRun exceeded timeout of 10 minutes",
            true,
            FailureReason::DeadlineExceeded,
            true,
        ),
        (
            "TaskRunFailed",
            "task failed: pods is forbidden: User cannot create resource",
            true,
            FailureReason::Forbidden,
            true,
        ),
        (
            "TaskRunCreationFailed",
            "exceeded quota: compute resources",
            false,
            FailureReason::ResourceExhausted,
            false,
        ),
        (
            "TaskRunValidationFailed",
            "invalid configuration: missing required parameter",
            false,
            FailureReason::ConfigurationError,
            false,
        ),
        (
            "TaskRunImagePullFailed",
            "Failed to pull image: image pull backoff",
            false,
            FailureReason::ImagePullBackOff,
            false,
        ),
        (
            "PipelineRunFailed",
            "unexpected error occurred",
            false,
            FailureReason::Unknown,
            false,
        ),
    ];
    for (reason, message, started, expected, execution) in table {
        env.patch_pr_status(
            &name,
            serde_json::json!({
                "startTime": if started { serde_json::json!("2026-01-01T00:00:00Z") } else { serde_json::Value::Null },
                "conditions": [{"type": "Succeeded", "status": "False", "reason": reason, "message": message}]
            }),
        )
        .await;
        let (summary, failure) = failed(env.executor.status(&wfe).await.expect("status"));
        assert_eq!(failure.reason, expected, "({reason:?}, {message:?})");
        assert_eq!(
            failure.was_execution_failure, execution,
            "({reason:?}, {message:?})"
        );
        assert_eq!(failure.message, message);
        assert_eq!(summary.status, "False");
        assert_eq!(summary.reason.as_deref(), Some(reason));
        assert_eq!(summary.message.as_deref(), Some(message));
    }
}

#[tokio::test]
async fn failed_task_run_child() {
    let env = env().await;
    let wfe = create_wfe(
        &env.client,
        &env.wfe_ns,
        "taskfail",
        "prod/Deployment/taskfail",
    )
    .await;
    let name = env.create_expecting_created(&wfe).await;

    // Two TaskRuns, as Tekton would create them: one succeeded, one failed in its second step.
    let mut task_runs = Vec::new();
    for (suffix, ok) in [("prepare", true), ("apply", false)] {
        let tr_name = format!("{name}-{suffix}");
        let tr = TaskRun::new(
            &tr_name,
            TaskRunSpec {
                task_ref: Some(TaskRef {
                    name: Some(suffix.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        env.task_runs()
            .create(&PostParams::default(), &tr)
            .await
            .unwrap_or_else(|e| panic!("create TaskRun {tr_name}: {e}"));
        let status = if ok {
            serde_json::json!({
                "podName": format!("{tr_name}-pod"),
                "startTime": "2026-01-01T00:00:01Z",
                "completionTime": "2026-01-01T00:00:30Z",
                "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded",
                                "message": "All Steps have completed executing"}],
                "steps": [{"name": "prepare", "container": "step-prepare",
                           "terminated": {"exitCode": 0, "reason": "Completed"}}]
            })
        } else {
            serde_json::json!({
                "podName": format!("{tr_name}-pod"),
                "startTime": "2026-01-01T00:00:31Z",
                "completionTime": "2026-01-01T00:01:00Z",
                "conditions": [{"type": "Succeeded", "status": "False", "reason": "Failed",
                                "message": "\"step-patch\" exited with code 2"}],
                "steps": [
                    {"name": "check", "container": "step-check",
                     "terminated": {"exitCode": 0, "reason": "Completed"}},
                    {"name": "patch", "container": "step-patch",
                     "terminated": {"exitCode": 2, "reason": "Error"}}
                ]
            })
        };
        env.task_runs()
            .patch_status(
                &tr_name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .unwrap_or_else(|e| panic!("patch status of TaskRun {tr_name}: {e}"));
        task_runs.push(tr_name);
    }
    let children: Vec<serde_json::Value> = task_runs
        .iter()
        .zip(["prepare", "apply"])
        .map(|(n, t)| {
            serde_json::json!({"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": n, "pipelineTaskName": t})
        })
        .collect();

    // While the second task runs: 1 of 2 completed.
    env.patch_pr_status(
        &name,
        serde_json::json!({
            "startTime": "2026-01-01T00:00:00Z",
            "childReferences": children,
            "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running",
                            "message": "Tasks Completed: 1 (Failed: 0, Cancelled 0), Incomplete: 1, Skipped: 0"}]
        }),
    )
    .await;
    match env.executor.status(&wfe).await.expect("status") {
        Observation::Running { summary } => {
            assert_eq!((summary.completed_tasks, summary.total_tasks), (1, 2));
        }
        other => panic!("expected Running, got {other:?}"),
    }

    // Tekton's failure message for a failed task.
    env.patch_pr_status(
        &name,
        serde_json::json!({
            "completionTime": "2026-01-01T00:01:01Z",
            "conditions": [{"type": "Succeeded", "status": "False", "reason": "Failed",
                            "message": "Tasks Completed: 2 (Failed: 1, Cancelled 0), Skipped: 0"}]
        }),
    )
    .await;
    let observation = env.executor.status(&wfe).await.expect("status");
    let Observation::Failed {
        summary,
        failure,
        finished_at,
    } = observation
    else {
        panic!("expected Failed, got {observation:?}");
    };
    assert_eq!(failure.reason, FailureReason::TaskFailed);
    assert_eq!(
        failure.failed_task_name.as_deref(),
        Some(task_runs[1].as_str())
    );
    assert_eq!(failure.failed_task_index, Some(1));
    assert_eq!(failure.exit_code, Some(2));
    assert_eq!(failure.failed_step_name.as_deref(), Some("patch"));
    assert!(failure.was_execution_failure);
    assert!(
        failure.message.contains("Tasks Completed: 2 (Failed: 1")
            && failure
                .message
                .contains("\"step-patch\" exited with code 2"),
        "{}",
        failure.message
    );
    assert_eq!((summary.completed_tasks, summary.total_tasks), (1, 2));
    assert!(finished_at.is_some());

    // A child TaskRun that disappeared (garbage collected) is tolerated.
    env.task_runs()
        .delete(&task_runs[1], &Default::default())
        .await
        .expect("delete TaskRun");
    wfe_testing::wait_for(
        "the TaskRun to be gone",
        Duration::from_secs(30),
        || async {
            match env.task_runs().get_opt(&task_runs[1]).await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    let (summary, failure) = failed(env.executor.status(&wfe).await.expect("status"));
    assert_eq!(failure.reason, FailureReason::TaskFailed);
    assert_eq!(failure.failed_task_name, None);
    assert_eq!((summary.completed_tasks, summary.total_tasks), (1, 2));
}

#[tokio::test]
async fn a_finished_run_of_another_workflow_execution_is_replaced() {
    let env = env().await;
    let target = "prod/Deployment/replaced";
    let first = create_wfe(&env.client, &env.wfe_ns, "first", target).await;
    let second = create_wfe(&env.client, &env.wfe_ns, "second", target).await;
    let name = env.create_expecting_created(&first).await;
    let old_uid = env.pipeline_runs().get(&name).await.expect("exists").uid();

    // Running: the second is held by the first.
    match env.executor.create(&second).await.expect("create") {
        CreateOutcome::HeldBy { reference, holder } => {
            assert_eq!(reference.name, name);
            assert_eq!(holder.name, "first");
            assert_eq!(holder.namespace, env.wfe_ns);
            assert_eq!(holder.uid, first.uid());
        }
        other => panic!("expected HeldBy, got {other:?}"),
    }

    // Finished: stale, replaced by the second's run.
    env.patch_pr_status(
        &name,
        serde_json::json!({
            "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "done"}]
        }),
    )
    .await;
    // Finished, but its owner has not recorded the outcome (as after a crash): still held.
    assert!(matches!(
        env.executor.create(&second).await.expect("create"),
        CreateOutcome::HeldBy { .. }
    ));
    // Once the owner is terminal, the finished run is stale.
    let wfes = kube::Api::<wfe_api::WorkflowExecution>::namespaced(env.client.clone(), &env.wfe_ns);
    let done = serde_json::json!({"status": {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z"}});
    wfes.patch_status(
        "first",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&done),
    )
    .await
    .expect("owner terminal");
    assert_eq!(
        env.executor.create(&second).await.expect("create"),
        CreateOutcome::Created(wfe_api::ExecutionRef {
            kind: "PipelineRun".into(),
            name: name.clone(),
            namespace: env.exec_ns.clone(),
        })
    );
    let current = env.pipeline_runs().get(&name).await.expect("exists");
    assert_ne!(current.uid(), old_uid);
    assert!(is_owned_by(&current.metadata, &second));

    // The first sees its run as deleted externally, may not delete the second's, and the
    // second's create is idempotent.
    match env.executor.status(&first).await.expect("status") {
        Observation::DeletedExternally { kind, name: n } => {
            assert_eq!(kind, "PipelineRun");
            assert_eq!(n, name);
        }
        other => panic!("expected DeletedExternally, got {other:?}"),
    }
    assert_eq!(
        env.executor.delete(&first).await.expect("delete"),
        DeleteOutcome::NotOwned
    );
    assert!(matches!(
        env.executor.create(&second).await.expect("create"),
        CreateOutcome::Adopted(_)
    ));
    assert_eq!(
        env.executor.delete(&second).await.expect("delete"),
        DeleteOutcome::Deleted
    );
}

#[tokio::test]
async fn a_pipeline_run_we_did_not_create_is_never_touched() {
    let env = env().await;
    let wfe = create_wfe(
        &env.client,
        &env.wfe_ns,
        "foreign",
        "prod/Deployment/foreign",
    )
    .await;
    let name = execution_name_for(&wfe);
    // Someone else's PipelineRun with our deterministic name and none of our labels, finished.
    let foreign = PipelineRun::new(&name, PipelineRunSpec::default());
    env.pipeline_runs()
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create foreign PipelineRun");
    env.patch_pr_status(
        &name,
        serde_json::json!({"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]}),
    )
    .await;
    match env.executor.create(&wfe).await.expect("create") {
        CreateOutcome::HeldBy { holder, .. } => assert_eq!(holder.name, UNKNOWN_OWNER),
        other => panic!("expected HeldBy an unknown owner, got {other:?}"),
    }
    assert_eq!(
        env.executor.delete(&wfe).await.expect("delete"),
        DeleteOutcome::NotOwned
    );
    assert!(matches!(
        env.executor.status(&wfe).await.expect("status"),
        Observation::DeletedExternally { .. }
    ));
    let still = env.pipeline_runs().get(&name).await.expect("still there");
    assert_eq!(owner_of(&still.metadata), None);
}

/// With the executor's watch running (the cache `status` reads first), a change of a PipelineRun
/// wakes its owner and `status` reports the state that change carried.
#[tokio::test]
async fn observations_while_the_watch_runs() {
    use futures::StreamExt;
    let env = env().await;
    let mut changes = env
        .executor
        .changes()
        .expect("the Tekton backend watches PipelineRuns");
    let wfe = create_wfe(&env.client, &env.wfe_ns, "cached", "prod/Deployment/cached").await;
    let name = env.create_expecting_created(&wfe).await;
    let woken = tokio::time::timeout(Duration::from_secs(30), changes.next())
        .await
        .expect("the new PipelineRun wakes its owner")
        .expect("the watch goes on");
    assert_eq!(woken.name, "cached");
    env.patch_pr_status(&name, succeeded_status()).await;
    // The change arrives through the watch; once it did, the cache holds the finished run.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(owner) = changes.next().await {
            assert_eq!(owner.name, "cached");
            if matches!(
                env.executor.status(&wfe).await.expect("status"),
                Observation::Succeeded { .. }
            ) {
                return;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the completion is observed");
    assert_eq!(
        env.executor.delete(&wfe).await.expect("delete"),
        DeleteOutcome::Deleted
    );
}
