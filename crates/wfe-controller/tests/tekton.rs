//! The default engine against the real Tekton: the local cluster's Tekton Pipelines controller
//! resolves the workflow bundles from the loopback OCI registry, creates TaskRuns and pods, kwok
//! plays the kubelet, and the operator maps what Tekton really wrote.
//!
//! Every run goes to [`wfe_testing::tekton::NAMESPACE`] (Pod Security `restricted`), the one
//! namespace Tekton serves here. The test bundles live in xtask/controlplane/tekton/bundles/:
//! `kwok-steps` (params choose the outcome of its step `apply`), `needs-param` (a required param
//! nobody passes) and `no-workflow` (no Pipeline `workflow`).

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;
use wfe_api::{FailureReason, Phase, WorkflowExecution};

/// A request (no `executionEngine`: Tekton is the default) for `bundle` with `params`.
fn request(
    h: &Harness,
    name: &str,
    bundle: &str,
    params: &[(&str, &str)],
    timeout: Option<&str>,
) -> WorkflowExecution {
    let mut w = h.wfe(
        name,
        None,
        &format!("production/Deployment/{name}-{}", &h.ns[h.ns.len() - 8..]),
        params,
    );
    w.spec.workflow_ref.container_image = format!("oci://{bundle}");
    if let Some(t) = timeout {
        w.spec.execution_config = Some(serde_json::from_value(json!({"timeout": t})).unwrap());
    }
    w
}

fn pipeline_run_of(w: &WorkflowExecution) -> String {
    status(w).execution_ref.as_ref().unwrap().name.clone()
}

async fn get_pr(h: &Harness, name: &str) -> Option<DynamicObject> {
    h.pipelineruns().get_opt(name).await.unwrap()
}

/// The pods of the TaskRuns of PipelineRun `pr`.
async fn pods_of(client: &Client, pr: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), wfe_testing::tekton::NAMESPACE)
        .list(&ListParams::default().labels(&format!("tekton.dev/pipelineRun={pr}")))
        .await
        .unwrap()
        .items
}

fn env_of(pod: &Pod, container: &str, var: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == var)?
        .value
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_runs_to_success_with_params_and_target() {
    let h = Harness::start_with_tekton("tk-ok", guards(60_000)).await;
    let bundle = wfe_testing::tekton::bundle("kwok-steps");
    let w = h
        .create(&request(&h, "ok", &bundle, &[("SETTING", "on")], None))
        .await;
    let done = h.wait_phase("ok", Phase::Succeeded).await;
    let s = status(&done);
    let summary = s.execution_status.as_ref().unwrap();
    assert_eq!(
        (summary.completed_tasks, summary.total_tasks),
        (1, 1),
        "{summary:?}"
    );
    assert_eq!(summary.status, "True");
    h.wait_event("ok", "WorkflowCompleted").await;

    // What Tekton really did: the bundle was resolved by digest, the pod ran in the restricted
    // namespace, the request's params and target arrived as Tekton params.
    let pr = get_pr(&h, &pipeline_run_of(&done)).await.unwrap();
    let provenance = &pr.data["status"]["provenance"]["refSource"];
    assert_eq!(
        provenance["digest"]["sha256"].as_str(),
        bundle.rsplit_once("sha256:").map(|(_, d)| d),
        "{provenance}"
    );
    let pods = pods_of(&h.client, &pr.name_any()).await;
    assert_eq!(pods.len(), 1, "one TaskRun pod");
    let target = &w.spec.target_resource;
    assert_eq!(
        env_of(&pods[0], "step-inspect", "TARGET_RESOURCE").as_deref(),
        Some(target.as_str())
    );
    assert_eq!(
        env_of(&pods[0], "step-inspect", "SETTING").as_deref(),
        Some("on")
    );
    let params = pr.data["spec"]["params"].as_array().unwrap();
    assert_eq!(
        params.last().unwrap(),
        &json!({"name": "TARGET_RESOURCE", "value": target})
    );
    h.wait_audit(
        "ok",
        &[
            "workflowexecution.execution.started",
            "workflowexecution.workflow.completed",
        ],
    )
    .await;
    assert!(
        h.audit
            .for_resource("ok")
            .iter()
            .all(|e| e["event_data"]["execution_engine"] == "tekton")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_failures_are_classified_from_what_tekton_wrote() {
    let h = Harness::start_with_tekton("tk-fail", guards(60_000)).await;
    let bundle = wfe_testing::tekton::bundle("kwok-steps");
    h.create(&request(
        &h,
        "exit3",
        &bundle,
        &[("KWOK_RESULT", "fail"), ("KWOK_EXIT_CODE", "3")],
        None,
    ))
    .await;
    h.create(&request(
        &h,
        "oom",
        &bundle,
        &[
            ("KWOK_RESULT", "fail"),
            ("KWOK_EXIT_CODE", "137"),
            ("KWOK_REASON", "OOMKilled"),
        ],
        None,
    ))
    .await;

    let failed = h.wait_phase("exit3", Phase::Failed).await;
    let d = status(&failed).failure_details.as_ref().unwrap();
    assert_eq!(d.reason, FailureReason::TaskFailed, "{}", d.message);
    assert_eq!(d.exit_code, Some(3));
    assert_eq!(d.failed_step_name.as_deref(), Some("apply"));
    assert!(
        d.failed_task_name
            .as_deref()
            .is_some_and(|n| n.ends_with("-remediate")),
        "{d:?}"
    );
    assert_eq!(d.failed_task_index, Some(0));
    assert!(d.was_execution_failure);
    assert!(
        d.message.contains("\"step-apply\" exited with code 3"),
        "{}",
        d.message
    );
    h.wait_event("exit3", "WorkflowFailed").await;

    let oom = h.wait_phase("oom", Phase::Failed).await;
    let d = status(&oom).failure_details.as_ref().unwrap();
    assert_eq!(d.reason, FailureReason::OomKilled, "{}", d.message);
    assert_eq!(d.exit_code, Some(137));
    assert_eq!(d.failed_step_name.as_deref(), Some("apply"));
    assert!(d.was_execution_failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_never_finishes_times_out() {
    let h = Harness::start_with_tekton("tk-timeout", guards(60_000)).await;
    let bundle = wfe_testing::tekton::bundle("kwok-steps");
    h.create(&request(
        &h,
        "stuck",
        &bundle,
        &[("KWOK_RESULT", "hold")],
        Some("5s"),
    ))
    .await;
    let failed = h.wait_phase("stuck", Phase::Failed).await;
    let d = status(&failed).failure_details.as_ref().unwrap();
    assert_eq!(d.reason, FailureReason::DeadlineExceeded, "{}", d.message);
    assert!(d.was_execution_failure);
    let pr = get_pr(&h, &pipeline_run_of(&failed)).await.unwrap();
    assert_eq!(
        pr.data["status"]["conditions"][0]["reason"], "PipelineRunTimeout",
        "{}",
        pr.data["status"]
    );
}

/// Bundles that cannot be run fail before execution with the resolver's or Tekton's own words,
/// once: no retry loop, no second PipelineRun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_tekton_cannot_run_are_configuration_errors_before_execution() {
    let h = Harness::start_with_tekton("tk-bad", guards(60_000)).await;
    let good = wfe_testing::tekton::bundle("kwok-steps");
    let (repo, _) = good.split_once('@').unwrap();
    let host = repo.split('/').next().unwrap();
    // A port nothing listens on: the registry is down.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let zeros = "0".repeat(64);
    let cases = [
        (
            "wrong-digest",
            format!("{repo}@sha256:{zeros}"),
            vec![
                "manifest unknown",
                "MANIFEST_UNKNOWN",
                "not found",
                "NOT_FOUND",
            ],
        ),
        (
            "absent",
            format!("{host}/workflows/absent@sha256:{zeros}"),
            vec!["NAME_UNKNOWN", "unknown", "not found", "NOT_FOUND"],
        ),
        (
            "no-workflow",
            wfe_testing::tekton::bundle("no-workflow"),
            vec!["could not find object in image with kind: pipeline and name: workflow"],
        ),
        (
            "needs-param",
            wfe_testing::tekton::bundle("needs-param"),
            vec!["REQUIRED_SETTING"],
        ),
        (
            "registry-down",
            format!("127.0.0.1:{down}/workflows/kwok-steps@sha256:{zeros}"),
            vec!["connection refused"],
        ),
    ];
    for (name, bundle, _) in &cases {
        h.create(&request(&h, name, bundle, &[], None)).await;
    }
    for (name, _, words) in &cases {
        let failed = h.wait_phase(name, Phase::Failed).await;
        let d = status(&failed).failure_details.as_ref().unwrap();
        assert_eq!(
            d.reason,
            FailureReason::ConfigurationError,
            "{name}: {}",
            d.message
        );
        assert!(!d.was_execution_failure, "{name}: nothing ran");
        assert!(
            words.iter().any(|w| d.message.contains(w)),
            "{name}: {:?} in {}",
            words,
            d.message
        );
        h.wait_event(name, "WorkflowFailed").await;
    }
    // Settled: one PipelineRun each, and the status does not move any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, _, _) in &cases {
        let before = h.wfes().get(name).await.unwrap();
        let pr = pipeline_run_of(&before);
        assert!(get_pr(&h, &pr).await.is_some(), "{name}: its PipelineRun");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = h.wfes().get(name).await.unwrap();
        assert_eq!(
            before.resource_version(),
            after.resource_version(),
            "{name} keeps changing"
        );
    }
}

/// Deleting a running request cancels its PipelineRun in Tekton and removes it, its TaskRuns and
/// their pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_request_cancels_and_removes_its_pipeline_run() {
    let h = Harness::start_with_tekton("tk-cancel", guards(60_000)).await;
    let bundle = wfe_testing::tekton::bundle("kwok-steps");
    h.create(&request(
        &h,
        "cancel",
        &bundle,
        &[("KWOK_RESULT", "hold")],
        None,
    ))
    .await;
    let running = h.wait_phase("cancel", Phase::Running).await;
    let pr = pipeline_run_of(&running);
    wfe_testing::wait_for("the TaskRun pod to run", TIMEOUT, || async {
        pods_of(&h.client, &pr)
            .await
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .then_some(())
    })
    .await;

    // Every spec.status the PipelineRun has from now on.
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let record = seen.clone();
    let watch = tokio::spawn(
        watcher(
            h.pipelineruns(),
            watcher::Config::default().fields(&format!("metadata.name={pr}")),
        )
        .default_backoff()
        .applied_objects()
        .for_each(move |o| {
            if let Ok(o) = o
                && let Some(s) = o.data["spec"]["status"].as_str()
            {
                record.lock().unwrap().insert(s.to_string());
            }
            futures::future::ready(())
        }),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.wfes()
        .delete("cancel", &DeleteParams::default())
        .await
        .unwrap();
    wfe_testing::wait_for("the request to be gone", TIMEOUT, || async {
        h.wfes()
            .get_opt("cancel")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    wfe_testing::wait_for(
        "the PipelineRun, its TaskRuns and pods to be gone",
        TIMEOUT,
        || async {
            let pods = pods_of(&h.client, &pr).await;
            (get_pr(&h, &pr).await.is_none() && pods.is_empty()).then_some(())
        },
    )
    .await;
    watch.abort();
    assert!(
        seen.lock().unwrap().contains("Cancelled"),
        "the PipelineRun was cancelled before it was deleted: {:?}",
        seen.lock().unwrap()
    );
}
