//! The local control plane really runs Jobs, fails pods on demand, serves the real Tekton CRDs
//! and runs the real Tekton controller on published bundles. These tests need no operator; they start the cluster if needed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Namespace, Pod};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use wfe_testing::{client, ensure_namespace, kubeconfig_path, kwok, namespace, wait_for};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A namespace that enforces the `restricted` Pod Security Standard, as production does.
async fn restricted_namespace(client: &Client, prefix: &str) -> String {
    let ns = namespace(client, prefix).await;
    let patch = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("labelling the namespace restricted");
    ns
}

/// A Job with backoffLimit 0 and a `restricted`-compatible pod with one `workflow` container.
fn job(
    name: &str,
    env: &[(&str, &str)],
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Job {
    let env: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}
                    },
                    "containers": [{
                        "name": kwok::WORKFLOW_CONTAINER,
                        "image": "registry.invalid/workflow:1",
                        "env": env,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}
                        }
                    }]
                }
            }
        }
    }))
    .expect("a valid Job")
}

fn job_condition(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

async fn wait_job_condition(jobs: &Api<Job>, name: &str, ty: &str) -> Job {
    wait_for(&format!("Job {name} to be {ty}"), TIMEOUT, || async {
        let job = jobs.get(name).await.ok()?;
        job_condition(&job, ty).then_some(job)
    })
    .await
}

async fn job_pod(client: &Client, ns: &str, job: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .expect("listing pods");
    assert_eq!(
        list.items.len(),
        1,
        "exactly one pod for Job {job} (backoffLimit 0)"
    );
    list.items.into_iter().next().unwrap()
}

fn terminated(pod: &Pod) -> ContainerStateTerminated {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == kwok::WORKFLOW_CONTAINER))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .unwrap_or_else(|| panic!("container not terminated: {:?}", pod.status))
}

#[tokio::test]
async fn job_completes() {
    let client = client().await;
    assert!(kubeconfig_path().is_file());
    let ns = restricted_namespace(&client, "job-ok").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(&PostParams::default(), &job("ok", &[], &[], &[]))
        .await
        .expect("creating the Job");
    let done = wait_job_condition(&jobs, "ok", "Complete").await;
    assert_eq!(done.status.unwrap().succeeded, Some(1));
    let pod = job_pod(&client, &ns, "ok").await;
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("kwok-node-0")
    );
    let t = terminated(&pod);
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
}

#[tokio::test]
async fn job_fails_by_env() {
    let client = client().await;
    let ns = restricted_namespace(&client, "job-env-fail").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let env = [
        (kwok::RESULT_ENV, "fail"),
        (kwok::EXIT_CODE_ENV, "3"),
        (kwok::REASON_ENV, "Error"),
        (kwok::MESSAGE_ENV, "step 2 of the workflow failed"),
    ];
    jobs.create(&PostParams::default(), &job("envfail", &env, &[], &[]))
        .await
        .expect("creating the Job");
    wait_job_condition(&jobs, "envfail", "Failed").await;
    let pod = job_pod(&client, &ns, "envfail").await;
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Failed")
    );
    let t = terminated(&pod);
    assert_eq!(t.exit_code, 3);
    assert_eq!(t.reason.as_deref(), Some("Error"));
    assert_eq!(t.message.as_deref(), Some("step 2 of the workflow failed"));
}

#[tokio::test]
async fn job_fails_by_label() {
    let client = client().await;
    let ns = restricted_namespace(&client, "job-label-fail").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let labels = [(kwok::RESULT_LABEL, "fail")];
    let annotations = [
        (kwok::EXIT_CODE_ANNOTATION, "3"),
        (kwok::MESSAGE_ANNOTATION, "disk full"),
    ];
    jobs.create(
        &PostParams::default(),
        &job("labelfail", &[], &labels, &annotations),
    )
    .await
    .expect("creating the Job");
    wait_job_condition(&jobs, "labelfail", "Failed").await;
    let t = terminated(&job_pod(&client, &ns, "labelfail").await);
    assert_eq!(t.exit_code, 3);
    assert_eq!(t.reason.as_deref(), Some("Error"), "the default reason");
    assert_eq!(t.message.as_deref(), Some("disk full"));
}

#[tokio::test]
async fn pod_oom_killed() {
    let client = client().await;
    let ns = restricted_namespace(&client, "job-oom").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let env = [
        (kwok::RESULT_ENV, "fail"),
        (kwok::EXIT_CODE_ENV, "137"),
        (kwok::REASON_ENV, "OOMKilled"),
        (kwok::RUN_FOR_ENV, "1s"),
    ];
    jobs.create(&PostParams::default(), &job("oom", &env, &[], &[]))
        .await
        .expect("creating the Job");
    wait_job_condition(&jobs, "oom", "Failed").await;
    let t = terminated(&job_pod(&client, &ns, "oom").await);
    assert_eq!(t.exit_code, 137);
    assert_eq!(t.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(
        t.message.as_deref(),
        Some("simulated failure"),
        "the default message"
    );
    // KWOK_RUN_FOR: the container ran for about a second.
    let ran_ms =
        t.finished_at.unwrap().0.as_millisecond() - t.started_at.unwrap().0.as_millisecond();
    assert!(ran_ms >= 900, "ran for {ran_ms} ms");
}

#[tokio::test]
async fn held_pod_keeps_running_until_released() {
    let client = client().await;
    let ns = restricted_namespace(&client, "job-hold").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &job("held", &[(kwok::RESULT_ENV, "hold")], &[], &[]),
    )
    .await
    .expect("creating the Job");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let name = wait_for("the held pod to run", TIMEOUT, || async {
        let list = pods
            .list(&ListParams::default().labels("job-name=held"))
            .await
            .ok()?;
        let pod = list.items.into_iter().next()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running"))
            .then(|| pod.metadata.name.unwrap())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pod = pods.get(&name).await.unwrap();
    assert_eq!(
        pod.status.unwrap().phase.as_deref(),
        Some("Running"),
        "still running"
    );
    assert!(!job_condition(&jobs.get("held").await.unwrap(), "Complete"));
    // The label wins over the env: release the pod into a failure.
    let patch = json!({"metadata": {"labels": {kwok::RESULT_LABEL: "fail"}}});
    pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_job_condition(&jobs, "held", "Failed").await;
    assert_eq!(
        terminated(&pods.get(&name).await.unwrap()).exit_code,
        1,
        "the default exit code"
    );
}

#[tokio::test]
async fn tekton_pipelinerun_status_can_be_scripted() {
    let client = client().await;
    let ns = namespace(&client, "tekton").await;
    let gvk = GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "pipelineruns");
    let runs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let run: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": "restart-pod"},
        "spec": {
            "pipelineRef": {"name": "restart-pod"},
            "params": [{"name": "TARGET", "value": "default/web"}]
        }
    }))
    .unwrap();
    runs.create(&PostParams::default(), &run)
        .await
        .expect("creating a tekton.dev/v1 PipelineRun");
    let status = json!({"status": {"conditions": [{
        "type": "Succeeded",
        "status": "False",
        "reason": "Failed",
        "message": "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0",
        "lastTransitionTime": "2026-01-01T00:00:00Z"
    }]}});
    runs.patch_status(
        "restart-pod",
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("patching pipelineruns/status");
    let got = runs.get("restart-pod").await.unwrap();
    let cond = &got.data["status"]["conditions"][0];
    assert_eq!(cond["type"], "Succeeded");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "Failed");
    assert_eq!(got.data["spec"]["params"][0]["value"], "default/web");
}

#[tokio::test]
async fn workflowexecution_crd_is_served() {
    let client = client().await;
    ensure_namespace(&client, "kubernaut-workflows").await;
    ensure_namespace(&client, "kubernaut-workflows").await; // idempotent
    let gvk = GroupVersionKind::gvk("kubernaut.ai", "v1alpha1", "WorkflowExecution");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "workflowexecutions");
    let wfes: Api<DynamicObject> = Api::namespaced_with(client, "kubernaut-workflows", &ar);
    wfes.list(&ListParams::default())
        .await
        .expect("listing workflowexecutions.kubernaut.ai/v1alpha1");
}

/// A PipelineRun from a published bundle, run by the real Tekton controller in the namespace it
/// serves, through the bundles resolver and the OCI registry.
async fn run_bundle(
    client: &Client,
    name: &str,
    params: &[(&str, &str)],
) -> (DynamicObject, Vec<Pod>) {
    wfe_testing::tekton::namespace(client).await;
    let ns = wfe_testing::tekton::NAMESPACE;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"),
        "pipelineruns",
    );
    let runs: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let suffix = &uuid_like();
    let name = format!("{name}-{suffix}");
    let mut params: Vec<Value> = params
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    params.push(json!({"name": "TARGET_RESOURCE", "value": "production/Deployment/web"}));
    let run: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "pipelineRef": {"resolver": "bundles", "params": [
                {"name": "bundle", "value": wfe_testing::tekton::bundle("kwok-steps")},
                {"name": "name", "value": "workflow"},
                {"name": "kind", "value": "pipeline"}]},
            "params": params,
            "taskRunTemplate": {
                "serviceAccountName": wfe_testing::tekton::RUNNER,
                "podTemplate": {"securityContext": {"runAsNonRoot": true,
                                                    "seccompProfile": {"type": "RuntimeDefault"}}}}
        }
    }))
    .unwrap();
    runs.create(&PostParams::default(), &run).await.unwrap();
    let done = wait_for(
        "the PipelineRun to finish",
        Duration::from_secs(60),
        || async {
            let r = runs.get(&name).await.ok()?;
            let status = r.data["status"]["conditions"][0]["status"].as_str()?;
            (status != "Unknown").then_some(r)
        },
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("tekton.dev/pipelineRun={name}")))
        .await
        .unwrap()
        .items;
    (done, pods)
}

fn uuid_like() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{n:08x}")
}

fn step<'a>(pod: &'a Pod, name: &str) -> &'a ContainerStateTerminated {
    pod.status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.state.as_ref()?.terminated.as_ref())
        .unwrap_or_else(|| panic!("{name} terminated"))
}

#[tokio::test]
async fn the_real_tekton_runs_a_bundle_on_the_fake_node() {
    let client = client().await;
    let (run, pods) = run_bundle(&client, "tekton-ok", &[]).await;
    assert_eq!(
        run.data["status"]["conditions"][0]["status"], "True",
        "{}",
        run.data["status"]
    );
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(wfe_testing::NODE_NAME)
    );
    // Every step ends with the JSON termination message Tekton's entrypoint writes.
    for s in ["step-inspect", "step-apply"] {
        let t = step(pod, s);
        assert_eq!(t.exit_code, 0);
        let msg: Value = serde_json::from_str(t.message.as_deref().unwrap()).unwrap();
        assert_eq!(msg[0]["key"], "StartedAt", "{msg}");
    }
}

#[tokio::test]
async fn the_real_tekton_reports_the_failing_step_from_the_pod() {
    let client = client().await;
    let (run, pods) = run_bundle(
        &client,
        "tekton-fail",
        &[("KWOK_RESULT", "fail"), ("KWOK_EXIT_CODE", "4")],
    )
    .await;
    assert_eq!(run.data["status"]["conditions"][0]["status"], "False");
    let pod = &pods[0];
    assert_eq!(
        step(pod, "step-inspect").exit_code,
        0,
        "before the failing step"
    );
    assert_eq!(step(pod, "step-apply").exit_code, 4, "the failing step");
    // The TaskRun Tekton wrote from it.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tekton.dev", "v1", "TaskRun"),
        "taskruns",
    );
    let trs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), wfe_testing::tekton::NAMESPACE, &ar);
    let tr = trs
        .list(&ListParams::default().labels(&format!(
            "tekton.dev/pipelineRun={}",
            run.metadata.name.as_deref().unwrap()
        )))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(
        tr.data["status"]["conditions"][0]["message"],
        "\"step-apply\" exited with code 4: Error"
    );
    assert_eq!(tr.data["status"]["steps"][1]["terminated"]["exitCode"], 4);
}
