//! Table-driven tests of the Job builder and of the status / failure mapping (no cluster).

use std::time::Duration;

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Event, Pod},
    },
    jiff::Timestamp,
};
use serde_json::{Value, json};
use wfe_api::{ExecutionEngine, FailureReason, WorkflowExecution, testing};
use wfe_executor::{Executor, Observation};
use wfe_job::{JobConfig, JobFacts, build_job, needs, observe, trim};

use wfe_api::testing::DIGEST;

/// The OOM remediation in `namespace`; each top-level field of `spec_patch` replaces the spec's.
fn wfe(namespace: &str, spec_patch: Value) -> WorkflowExecution {
    let fixture = testing::wfe("restart-my-app")
        .namespace(namespace)
        .uid(Some("11111111-2222-3333-4444-555555555555"))
        .workflow("restart-with-increased-memory")
        .workflow_ref("version", json!("1.2.0"))
        .image(&format!(
            "registry.example.com/remediation/restart:v1.2@{DIGEST}"
        ))
        .target("production/Deployment/my-app")
        .param("podName", "my-app")
        .param("namespace", "production")
        .param("memoryLimit", "1Gi")
        .spec("remediationRequestRef", json!({"name": "rr-1"}));
    patch_obj(spec_patch)
        .into_iter()
        .fold(fixture, |f, (k, v)| f.spec(&k, v))
        .build()
}

fn patch_obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn cfg() -> JobConfig {
    JobConfig::default()
}

fn to_json(job: &Job) -> Value {
    serde_json::to_value(job).unwrap()
}

#[test]
fn job_shape() {
    let job = to_json(&build_job(&wfe("kubernaut-system", json!({})), &cfg()).unwrap());
    let expected =
        wfe_executor::execution_name(&wfe_api::TargetKey::of("production/deployment/my-app"));
    assert_eq!(job["metadata"]["name"], expected);
    assert_eq!(job["metadata"]["namespace"], "kubernaut-workflows");
    let labels = &job["metadata"]["labels"];
    assert_eq!(labels["kubernaut.ai/workflow-execution"], "restart-my-app");
    assert_eq!(labels["kubernaut.ai/source-namespace"], "kubernaut-system");
    assert_eq!(
        labels["kubernaut.ai/workflow-id"],
        "restart-with-increased-memory"
    );
    assert_eq!(labels["kubernaut.ai/execution-engine"], "job");
    assert_eq!(
        labels["kubernaut.ai/target-hash"].as_str().unwrap().len(),
        16
    );
    assert_eq!(
        job["metadata"]["annotations"]["kubernaut.ai/target-resource"],
        "production/Deployment/my-app"
    );
    assert_eq!(
        job["metadata"]["annotations"]["kubernaut.ai/workflow-execution-uid"],
        "11111111-2222-3333-4444-555555555555"
    );
    assert!(
        job["metadata"].get("ownerReferences").is_none(),
        "no cross-namespace owner reference"
    );

    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["ttlSecondsAfterFinished"], 600);
    assert_eq!(spec["activeDeadlineSeconds"], 1800);
    assert_eq!(spec["podFailurePolicy"]["rules"][0]["action"], "Ignore");
    assert_eq!(
        spec["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"],
        "DisruptionTarget"
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "kubernaut-workflow-runner");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        spec["template"]["metadata"]["labels"]["kubernaut.ai/workflow-execution"],
        "restart-my-app"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["name"], "workflow");
    assert_eq!(
        c["image"],
        format!("registry.example.com/remediation/restart:v1.2@{DIGEST}")
    );
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "TARGET_RESOURCE",
            "WFE_NAME",
            "WFE_NAMESPACE",
            "memoryLimit",
            "namespace",
            "podName",
            "HOME",
            "TMPDIR"
        ]
    );
    assert_eq!(env[0].1, "production/Deployment/my-app");
    assert_eq!(env[1].1, "restart-my-app");
    assert_eq!(env[2].1, "kubernaut-system");
    assert_eq!(env[3].1, "1Gi");
    assert_eq!(env[6].1, "/tmp");
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "tmp", "mountPath": "/tmp"}])
    );
    assert_eq!(pod["volumes"], json!([{"name": "tmp", "emptyDir": {}}]));
}

#[test]
fn job_options() {
    let w = wfe(
        "kubernaut-workflows",
        json!({
            "workflowRef": {"workflowId": "w", "version": "1", "containerImage": format!("r.example/x@{DIGEST}"),
                            "dependencies": {"secrets": [{"name": "my-creds"}], "configMaps": [{"name": "settings.v1"}]},
                            "resources": {"limits": {"memory": "128Mi"}},
                            "declaredParameterNames": ["podName"]},
            "executionConfig": {"timeout": "90s", "serviceAccountName": "scoped-sa"},
            "parameters": {"podName": "p", "secret": "must not pass the allow-list", "VALUE": "a b; $(rm -rf /)\nline2"}
        }),
    );
    let mut cfg = cfg();
    cfg.ttl_seconds_after_finished = 60;
    let job = to_json(&build_job(&w, &cfg).unwrap());
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 90);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 60);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "scoped-sa");
    let c = &pod["containers"][0];
    assert_eq!(c["resources"]["limits"]["memory"], "128Mi");
    let env_names: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        env_names.contains(&"podName")
            && !env_names.contains(&"secret")
            && !env_names.contains(&"VALUE")
    );
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "secret-0", "mountPath": "/run/kubernaut/secrets/my-creds", "readOnly": true},
            {"name": "configmap-0", "mountPath": "/run/kubernaut/configmaps/settings.v1", "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"}
        ])
    );
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "my-creds");
    assert_eq!(pod["volumes"][1]["configMap"]["name"], "settings.v1");
    // In the execution namespace the WorkflowExecution owns its Job.
    let owner = &job["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "WorkflowExecution");
    assert_eq!(owner["apiVersion"], "kubernaut.ai/v1alpha1");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["uid"], "11111111-2222-3333-4444-555555555555");
}

#[test]
fn values_reach_the_environment_verbatim() {
    let hostile = "a b; $(rm -rf /) `id` \"q\" 'x'\nline2\u{0}? ünï";
    let w = wfe("ns", json!({"parameters": {"VALUE": hostile}}));
    let job = build_job(&w, &cfg()).unwrap();
    let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert!(
        c.command.is_none() && c.args.is_none(),
        "no shell, no command override"
    );
    let v = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "VALUE")
        .unwrap();
    assert_eq!(v.value.as_deref(), Some(hostile));
}

#[tokio::test]
async fn executor_validate_refuses_tags() {
    // A client that is never used: validate() is pure.
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let strict = wfe_job::JobExecutor::new(client.clone(), cfg());
    let relaxed = wfe_job::JobExecutor::new(
        client,
        JobConfig {
            allow_unpinned_images: true,
            ..cfg()
        },
    );
    let tagged = wfe(
        "ns",
        json!({"workflowRef": {"workflowId": "w", "version": "1", "containerImage": "r.example/x:v1"}}),
    );
    let errs = strict.validate(&tagged).unwrap_err();
    assert_eq!(errs[0].field, "spec.workflowRef.containerImage");
    assert!(errs[0].message.contains("pinned by digest"));
    assert!(relaxed.validate(&tagged).is_ok());
    assert!(strict.validate(&wfe("ns", json!({}))).is_ok());
    assert_eq!(strict.engine(), ExecutionEngine::Job);
}

// ---------- status mapping ----------

fn job_with(status: Value) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": "wfe-x", "namespace": "kubernaut-workflows", "uid": "u"},
        "spec": {"activeDeadlineSeconds": 1800, "template": {"spec": {"containers": []}}},
        "status": status
    }))
    .unwrap()
}

fn pod_with(container_status: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "wfe-x-abcde", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"containerStatuses": [container_status]}
    }))
    .unwrap()
}

fn event(reason: &str, message: &str) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "wfe-x-abcde"},
        "reason": reason, "message": message, "lastTimestamp": "2026-01-01T00:00:10Z"
    }))
    .unwrap()
}

fn now() -> Timestamp {
    "2026-01-01T00:10:00Z".parse().unwrap()
}

fn map(job: &Job, pod: Option<&Pod>, pod_events: &[Event], job_events: &[Event]) -> Observation {
    observe(&JobFacts {
        job,
        pod,
        pods_seen: usize::from(pod.is_some()),
        pod_events,
        job_events,
        now: now(),
        stuck_grace: Duration::from_secs(60),
    })
}

fn failed(status: Value) -> Job {
    let mut s = status;
    s["conditions"] = json!([{"type": "Failed", "status": "True", "reason": s["reason"].clone(), "message": s["message"].clone(),
                              "lastTransitionTime": "2026-01-01T00:05:00Z"}]);
    job_with(s)
}

fn failure(o: Observation) -> wfe_executor::Failure {
    match o {
        Observation::Failed { failure, .. } => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn complete_maps_to_succeeded() {
    let job = job_with(
        json!({"succeeded": 1, "completionTime": "2026-01-01T00:01:00Z",
        "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}),
    );
    match map(&job, None, &[], &[]) {
        Observation::Succeeded {
            summary,
            finished_at,
        } => {
            assert_eq!(summary.status, "True");
            assert_eq!((summary.completed_tasks, summary.total_tasks), (1, 1));
            assert_eq!(finished_at.unwrap().0.to_string(), "2026-01-01T00:01:00Z");
        }
        other => panic!("{other:?}"),
    }
    assert!(!needs(&job).pods, "a succeeded Job needs no extra reads");
}

#[test]
fn neither_condition_is_running() {
    let job = job_with(json!({"active": 1, "ready": 1}));
    match map(&job, None, &[], &[]) {
        Observation::Running { summary } => {
            assert_eq!(summary.status, "Unknown");
            assert!(summary.message.unwrap().contains("1/1 pods active"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !needs(&job).pods,
        "a ready running Job needs no extra reads"
    );
    assert!(needs(&job_with(json!({"active": 1, "ready": 0}))).pods);
    // Suspended / FailureTarget alone are not terminal.
    let job = job_with(json!({"conditions": [{"type": "FailureTarget", "status": "True"}]}));
    assert!(matches!(
        map(&job, None, &[], &[]),
        Observation::Running { .. }
    ));
}

#[test]
fn failure_classification_table() {
    struct Case {
        name: &'static str,
        job: Value,
        pod: Option<Value>,
        pod_events: Vec<(&'static str, &'static str)>,
        job_events: Vec<(&'static str, &'static str)>,
        reason: FailureReason,
        exit: Option<i32>,
        started: bool,
        contains: &'static str,
    }
    let bl = json!({"failed": 1, "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"});
    let dl = json!({"failed": 1, "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"});
    let cases = vec![
        Case {
            name: "exit code with termination message",
            job: bl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "kubectl: deployment not found", "startedAt": "2026-01-01T00:00:01Z"}}}),
            ),
            pod_events: vec![],
            job_events: vec![],
            reason: FailureReason::TaskFailed,
            exit: Some(3),
            started: true,
            contains: "kubectl: deployment not found",
        },
        Case {
            name: "exit code without message",
            job: bl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 2, "reason": "Error", "startedAt": "2026-01-01T00:00:01Z"}}}),
            ),
            pod_events: vec![],
            job_events: vec![],
            reason: FailureReason::TaskFailed,
            exit: Some(2),
            started: true,
            contains: "exited with code 2",
        },
        Case {
            name: "OOM killed",
            job: bl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-01-01T00:00:01Z"}}}),
            ),
            pod_events: vec![],
            job_events: vec![],
            reason: FailureReason::OomKilled,
            exit: Some(137),
            started: true,
            contains: "OOMKilled",
        },
        Case {
            name: "deadline while running",
            job: dl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 143, "reason": "Error", "startedAt": "2026-01-01T00:00:01Z"}}}),
            ),
            pod_events: vec![],
            job_events: vec![],
            reason: FailureReason::DeadlineExceeded,
            exit: None,
            started: true,
            contains: "timeout of 1800s",
        },
        Case {
            name: "deadline after a missing secret (the root cause wins, never started)",
            job: dl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}),
            ),
            pod_events: vec![(
                "FailedMount",
                "MountVolume.SetUp failed for volume \"secret-0\" : secret \"my-creds\" not found",
            )],
            job_events: vec![],
            reason: FailureReason::ConfigurationError,
            exit: None,
            started: false,
            contains: "secret \"my-creds\" not found",
        },
        Case {
            name: "CreateContainerConfigError",
            job: dl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"db-pass\" not found"}}}),
            ),
            pod_events: vec![],
            job_events: vec![],
            reason: FailureReason::ConfigurationError,
            exit: None,
            started: false,
            contains: "db-pass",
        },
        Case {
            name: "image pull (detailed event)",
            job: dl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}),
            ),
            pod_events: vec![(
                "Failed",
                "Failed to pull image \"r/x@sha256:..\": manifest unknown",
            )],
            job_events: vec![],
            reason: FailureReason::ImagePullBackOff,
            exit: None,
            started: false,
            contains: "manifest unknown",
        },
        Case {
            name: "image pull (terse waiting state)",
            job: dl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "r/x", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}),
            ),
            pod_events: vec![],
            job_events: vec![],
            reason: FailureReason::ImagePullBackOff,
            exit: None,
            started: false,
            contains: "ImagePullBackOff",
        },
        Case {
            name: "a liveness Failed event is not an image pull",
            job: bl.clone(),
            pod: Some(
                json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": "2026-01-01T00:00:01Z"}}}),
            ),
            pod_events: vec![("Failed", "Liveness probe failed: connection refused")],
            job_events: vec![],
            reason: FailureReason::TaskFailed,
            exit: Some(1),
            started: true,
            contains: "exited with code 1",
        },
        Case {
            name: "quota refused the pod",
            job: dl.clone(),
            pod: None,
            pod_events: vec![],
            job_events: vec![(
                "FailedCreate",
                "Error creating: pods \"wfe-x-1\" is forbidden: exceeded quota: compute, requested: pods=1",
            )],
            reason: FailureReason::ResourceExhausted,
            exit: None,
            started: false,
            contains: "exceeded quota",
        },
        Case {
            name: "missing service account",
            job: dl.clone(),
            pod: None,
            pod_events: vec![],
            job_events: vec![(
                "FailedCreate",
                "Error creating: pods \"wfe-x-1\" is forbidden: error looking up service account ns/nope: serviceaccount \"nope\" not found",
            )],
            reason: FailureReason::ConfigurationError,
            exit: None,
            started: false,
            contains: "serviceaccount \"nope\" not found",
        },
        Case {
            name: "pod security refused the pod",
            job: dl.clone(),
            pod: None,
            pod_events: vec![],
            job_events: vec![(
                "FailedCreate",
                "Error creating: pods \"wfe-x-1\" is forbidden: violates PodSecurity \"restricted:latest\"",
            )],
            reason: FailureReason::Forbidden,
            exit: None,
            started: false,
            contains: "PodSecurity",
        },
        Case {
            name: "nothing known falls back to the Job condition",
            job: bl.clone(),
            pod: None,
            pod_events: vec![],
            job_events: vec![],
            reason: FailureReason::Unknown,
            exit: None,
            started: false,
            contains: "backoff limit",
        },
    ];
    for c in cases {
        let job = failed(c.job);
        let pod = c.pod.map(pod_with);
        let pe: Vec<Event> = c.pod_events.iter().map(|(r, m)| event(r, m)).collect();
        let je: Vec<Event> = c.job_events.iter().map(|(r, m)| event(r, m)).collect();
        let f = failure(map(&job, pod.as_ref(), &pe, &je));
        assert_eq!(f.reason, c.reason, "{}", c.name);
        assert_eq!(f.exit_code, c.exit, "{}", c.name);
        assert_eq!(f.was_execution_failure, c.started, "{}", c.name);
        assert!(
            f.message.contains(c.contains),
            "{}: {:?} lacks {:?}",
            c.name,
            f.message,
            c.contains
        );
    }
}

#[test]
fn stuck_pod_fails_early_after_the_grace_period() {
    let job = job_with(json!({"active": 1, "ready": 0}));
    let pod = pod_with(
        json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "configmap \"settings\" not found"}}}),
    );
    let f = failure(map(&job, Some(&pod), &[], &[]));
    assert_eq!(f.reason, FailureReason::ConfigurationError);
    assert!(!f.was_execution_failure);
    // Within the grace period it is still running.
    let mut young = pod.clone();
    young.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:09:30Z".parse().unwrap(),
    ));
    assert!(matches!(
        map(&job, Some(&young), &[], &[]),
        Observation::Running { .. }
    ));
}

#[test]
fn long_messages_keep_their_tail() {
    let long = format!("{}THE END", "x".repeat(10_000));
    let job = failed(json!({"failed": 1, "reason": "BackoffLimitExceeded", "message": ""}));
    let pod = pod_with(
        json!({"name": "workflow", "image": "i", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": long, "startedAt": "2026-01-01T00:00:01Z"}}}),
    );
    let f = failure(map(&job, Some(&pod), &[], &[]));
    assert!(f.message.len() <= wfe_job::MAX_MESSAGE + 8 && f.message.ends_with("THE END"));
}

#[test]
fn refused_pod_creation_fails_early_after_the_grace_period() {
    let mut job = job_with(json!({"active": 0}));
    job.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    let quota = [event(
        "FailedCreate",
        "Error creating: pods \"wfe-x-1\" is forbidden: exceeded quota: compute, requested: pods=1",
    )];
    let f = failure(map(&job, None, &[], &quota));
    assert_eq!(f.reason, FailureReason::ResourceExhausted);
    assert!(!f.was_execution_failure);
    // A young Job is given time (the refusal may be transient).
    job.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:09:50Z".parse().unwrap(),
    ));
    assert!(matches!(
        map(&job, None, &[], &quota),
        Observation::Running { .. }
    ));
}

#[test]
fn deadline_with_the_pod_already_gone_assumes_the_workflow_ran() {
    let job = failed(
        json!({"failed": 1, "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}),
    );
    let f = failure(map(&job, None, &[], &[]));
    assert_eq!(f.reason, FailureReason::DeadlineExceeded);
    assert!(
        f.was_execution_failure,
        "no evidence it did not run: block the target"
    );
}

#[test]
fn oci_prefix_is_not_part_of_the_container_image() {
    let w = wfe(
        "ns",
        json!({"workflowRef": {"workflowId": "w", "version": "1", "containerImage": format!("oci://r.example/x@{DIGEST}")}}),
    );
    let job = build_job(&w, &cfg()).unwrap();
    assert_eq!(
        job.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some(format!("r.example/x@{DIGEST}").as_str())
    );
}

#[tokio::test]
async fn the_initial_summary_is_what_a_fresh_job_maps_to() {
    let job = build_job(&wfe("kubernaut-system", json!({})), &cfg()).unwrap();
    match map(&job, None, &[], &[]) {
        Observation::Running { summary } => assert_eq!(summary, wfe_job::initial_summary()),
        other => panic!("{other:?}"),
    }
    let executor = wfe_job::JobExecutor::new(
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap(),
        cfg(),
    );
    assert_eq!(executor.initial_summary(), Some(wfe_job::initial_summary()));
}

#[test]
fn the_cache_keeps_what_the_mapping_reads() {
    // A built Job, finished by its deadline: trimmed as the watch cache keeps it, it maps to the
    // same observation (timeout message included) without its pod template.
    let w = wfe("production", json!({}));
    let mut job = build_job(&w, &cfg()).unwrap();
    job.status = failed(json!({"failed": 1, "reason": "DeadlineExceeded",
        "message": "Job was active longer than specified deadline"}))
    .status;
    let mut kept = job.clone();
    trim(&mut kept);
    assert_eq!(map(&kept, None, &[], &[]), map(&job, None, &[], &[]));
    let spec = kept.spec.as_ref().unwrap();
    assert!(spec.template.spec.is_none(), "the pod template is dropped");
    assert_eq!(
        spec.active_deadline_seconds,
        job.spec.as_ref().unwrap().active_deadline_seconds
    );
    assert!(
        serde_json::to_vec(&kept).unwrap().len() * 2 < serde_json::to_vec(&job).unwrap().len(),
        "less than half of the Job is kept"
    );
}
