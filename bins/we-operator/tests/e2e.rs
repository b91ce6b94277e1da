//! End to end (BR-WE-014 success criteria 7 and 8, Use Case 1 and 3): the real `we-operator`
//! binary as a separate process, authenticated as its own ServiceAccount with the RBAC from
//! `deploy/`, against the local control plane with nodes; an HTTP audit receiver stands in for
//! the audit service. Run by `cargo xtask e2e` (ignored in plain `cargo test`).

mod common;

use std::{collections::BTreeMap, path::Path, time::Instant};

use common::*;
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    core::{ApiResource, DynamicObject, GroupVersionKind},
    discovery::Discovery,
};
use serde_json::{Value, json};
use wfe_api::{
    CatalogEntry, ExecutionEngine, ExecutionRequest, FailureReason, Phase, WorkflowExecution,
};

fn catalog_spec(
    entry: Value,
    target: &str,
    params: &[(&str, &str)],
    rr: &str,
) -> wfe_api::WorkflowExecutionSpec {
    let entry: CatalogEntry = serde_json::from_value(entry).unwrap();
    entry
        .to_spec(ExecutionRequest {
            target_resource: target.into(),
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            remediation_request_ref: k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("kubernaut.ai/v1alpha1".into()),
                kind: Some("RemediationRequest".into()),
                name: Some(rr.into()),
                namespace: Some(SYSTEM_NS.into()),
                ..Default::default()
            },
            confidence: Some(0.92),
            rationale: Some("my-app was OOMKilled".into()),
            timeout: None,
        })
        .unwrap()
}

const DIGEST: &str = "sha256:3c1f9a0e7b5d4c2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a";

fn restart_entry() -> Value {
    json!({
        "workflow_id": "restart-with-increased-memory", "version": "1.2.0",
        "workflow_name": "restart-with-increased-memory",
        "execution_engine": "job",
        "container_image": "registry.example.com/remediation/restart:v1.2",
        "container_digest": DIGEST,
        "service_account_name": "kubernaut-workflow-runner",
        "parameters": [{"name": "podName", "required": true}, {"name": "namespace", "required": true},
                       {"name": "memoryLimit", "required": true},
                       {"name": "KWOK_RESULT"}, {"name": "KWOK_EXIT_CODE"}, {"name": "KWOK_MESSAGE"}]
    })
}

fn new_wfe(name: &str, spec: wfe_api::WorkflowExecutionSpec) -> WorkflowExecution {
    let mut w = WorkflowExecution::new(name, spec);
    w.metadata.namespace = Some(SYSTEM_NS.into());
    w
}

/// With the operator's own credentials: what it needs is allowed, what it does not is denied.
async fn least_privilege(kubeconfig: &Path) {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client);
    let can_named = |verb: &str, group: &str, resource: &str, ns: Option<&str>, name: &str| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: ns.map(Into::into),
                    name: (!name.is_empty()).then(|| name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews = reviews.clone();
        async move {
            reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .unwrap()
                .allowed
        }
    };
    let can = |verb: &str, group: &str, resource: &str, ns: Option<&str>| {
        can_named(verb, group, resource, ns, "")
    };
    let needed = [
        ("create", "batch", "jobs", Some(EXEC_NS)),
        ("delete", "batch", "jobs", Some(EXEC_NS)),
        ("create", "tekton.dev", "pipelineruns", Some(EXEC_NS)),
        (
            "patch",
            "kubernaut.ai",
            "workflowexecutions/status",
            Some("production"),
        ),
        ("watch", "kubernaut.ai", "workflowexecutions", None),
        // Retention deletes finished WorkflowExecutions (docs/operations.md, "Retention").
        (
            "delete",
            "kubernaut.ai",
            "workflowexecutions",
            Some(SYSTEM_NS),
        ),
        ("create", "events.k8s.io", "events", Some(SYSTEM_NS)),
        ("create", "coordination.k8s.io", "leases", Some(SYSTEM_NS)),
    ];
    for (verb, group, resource, ns) in needed {
        assert!(
            can(verb, group, resource, ns).await,
            "the operator must be allowed to {verb} {resource} in {ns:?}"
        );
    }
    let denied = [
        ("get", "", "secrets", Some("kube-system")),
        ("list", "", "secrets", Some(EXEC_NS)),
        ("get", "", "secrets", Some(SYSTEM_NS)),
        ("create", "", "pods", Some(EXEC_NS)),
        ("create", "batch", "jobs", Some("production")),
        ("create", "tekton.dev", "pipelineruns", Some("default")),
        (
            "create",
            "kubernaut.ai",
            "workflowexecutions",
            Some(SYSTEM_NS),
        ),
        ("patch", "apps", "deployments", Some("production")),
        (
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            Some(EXEC_NS),
        ),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            Some("kube-system"),
        ),
    ];
    for (verb, group, resource, ns) in denied {
        assert!(
            !can(verb, group, resource, ns).await,
            "the operator must NOT be allowed to {verb} {resource} in {ns:?}"
        );
    }
    // Leases by name: its own one read and renewed, no other touched, none listed or deleted.
    let lease =
        |verb, name| can_named(verb, "coordination.k8s.io", "leases", Some(SYSTEM_NS), name);
    for verb in ["get", "patch"] {
        assert!(lease(verb, "we-operator-leader").await, "{verb} its Lease");
        assert!(!lease(verb, "someone-elses").await, "{verb} another Lease");
    }
    for verb in ["update", "delete"] {
        assert!(!lease(verb, "we-operator-leader").await, "{verb} its Lease");
    }
    for verb in ["list", "watch", "get"] {
        assert!(!lease(verb, "").await, "{verb} Leases without a name");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: run by `cargo xtask e2e`"]
async fn oomkill_remediation_through_the_job_backend_and_tekton_regression() {
    let started = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = wfe_testing::client().await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let deploy = repo().join("deploy");
    for f in [
        "namespaces.yaml",
        "rbac.yaml",
        "admission-policies.yaml",
        "workflow-runner.yaml",
        "samples/production-app.yaml",
        "samples/workflow-runner-rbac.yaml",
    ] {
        apply_file(&client, &discovery, &deploy.join(f)).await;
    }
    let wfes: Api<WorkflowExecution> = Api::namespaced(client.clone(), SYSTEM_NS);
    let jobs: Api<Job> = Api::namespaced(client.clone(), EXEC_NS);
    let prs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        EXEC_NS,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun")),
    );
    // A clean slate from earlier runs on the same cluster.
    for w in wfes.list(&ListParams::default()).await.unwrap() {
        wfes.delete(&w.name_any(), &DeleteParams::default())
            .await
            .ok();
        let mut m = w.clone();
        m.metadata.finalizers = None;
        wfes.patch(
            &w.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .ok();
        let _ = m;
    }
    jobs.delete_collection(&DeleteParams::background(), &ListParams::default())
        .await
        .ok();
    prs.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .ok();

    // Use Case 1: my-app in production is OOMKilled (kwok terminates its container so).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "production");
    pods.delete("my-app-oom", &DeleteParams::default().grace_period(0))
        .await
        .ok();
    wfe_testing::wait_for("old pod gone", TIMEOUT, || async {
        pods.get_opt("my-app-oom")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "my-app-oom", "labels": {"app": "my-app", "kwok.wfe.test/result": "fail"},
                     "annotations": {"kwok.wfe.test/reason": "OOMKilled", "kwok.wfe.test/exit-code": "137"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "registry.example.com/my-app:1.0",
                 "resources": {"limits": {"memory": "256Mi"}}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wfe_testing::wait_for("my-app to be OOMKilled", TIMEOUT, || async {
        let p = pods.get("my-app-oom").await.ok()?;
        let t = p
            .status?
            .container_statuses?
            .first()?
            .state
            .clone()?
            .terminated?;
        (t.reason.as_deref() == Some("OOMKilled")).then_some(())
    })
    .await;

    let dir = std::env::temp_dir().join(format!("we-operator-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = operator_kubeconfig(&client, &dir).await;
    let audit = AuditReceiver::start().await.unwrap();
    let audit_url = audit.url.clone();
    let log = repo().join("target/we-operator-e2e.log");
    let operator = Operator::start(&kubeconfig, &audit_url, &log).await;
    least_privilege(&kubeconfig).await;
    println!(
        "operator ready after {:?} (log: {})",
        started.elapsed(),
        log.display()
    );

    // The orchestrator's part: the catalog entry says `job`; wfe-api maps it.
    let spec = catalog_spec(
        restart_entry(),
        "production/Deployment/my-app",
        &[
            ("podName", "my-app-oom"),
            ("namespace", "production"),
            ("memoryLimit", "1Gi"),
        ],
        "rr-oomkill-my-app",
    );
    assert_eq!(spec.execution_engine, ExecutionEngine::Job);
    wfes.create(&PostParams::default(), &new_wfe("restart-my-app-oom", spec))
        .await
        .unwrap();
    let done = wait_phase(&wfes, "restart-my-app-oom", Phase::Succeeded).await;
    let status = done.status.clone().unwrap();
    let job_name = status.execution_ref.as_ref().unwrap().name.clone();
    let job = jobs.get(&job_name).await.unwrap();
    // The operator's writes are managed by `we-operator` (its User-Agent), and status is one
    // atomic field: one short managedFields entry however many status writes there were.
    let managers = |m: &ObjectMeta| -> Vec<(String, Option<String>, Value)> {
        m.managed_fields
            .iter()
            .flatten()
            .map(|e| {
                (
                    e.manager.clone().unwrap_or_default(),
                    e.subresource.clone(),
                    e.fields_v1
                        .as_ref()
                        .map(|f| f.0.clone())
                        .unwrap_or_default(),
                )
            })
            .collect()
    };
    assert!(
        managers(&done.metadata).contains(&(
            "we-operator".into(),
            Some("status".into()),
            json!({"f:status": {}})
        )),
        "{:?}",
        managers(&done.metadata)
    );
    assert!(
        managers(&job.metadata)
            .iter()
            .any(|(m, sub, _)| m == "we-operator" && sub.is_none()),
        "{:?}",
        managers(&job.metadata)
    );
    let pod_spec = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod_spec.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(format!("registry.example.com/remediation/restart:v1.2@{DIGEST}").as_str())
    );
    let env: BTreeMap<String, String> = c
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    assert_eq!(env["podName"], "my-app-oom");
    assert_eq!(env["namespace"], "production");
    assert_eq!(env["memoryLimit"], "1Gi");
    assert_eq!(env["TARGET_RESOURCE"], "production/Deployment/my-app");
    assert_eq!(
        pod_spec.service_account_name.as_deref(),
        Some("kubernaut-workflow-runner")
    );
    assert!(
        prs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no PipelineRun for a job request"
    );
    let job_pods: Api<Pod> = Api::namespaced(client.clone(), EXEC_NS);
    let jp = job_pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job_name}")))
        .await
        .unwrap();
    assert_eq!(
        jp.items[0].spec.as_ref().unwrap().node_name.as_deref(),
        Some("kwok-node-0")
    );
    assert_eq!(
        jp.items[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    let done = wfe_testing::wait_for("AuditRecorded", TIMEOUT, || async {
        wfes.get("restart-my-app-oom").await.ok().filter(|w| {
            w.condition("AuditRecorded")
                .is_some_and(|c| c.status == "True")
        })
    })
    .await;
    let mut conds: Vec<&str> = done
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    conds.sort();
    assert_eq!(
        conds,
        [
            "AuditRecorded",
            "ExecutionComplete",
            "ExecutionCreated",
            "ExecutionRunning",
            "Ready"
        ]
    );
    let events: Api<Event> = Api::namespaced(client.clone(), SYSTEM_NS);
    wfe_testing::wait_for("Event WorkflowCompleted", TIMEOUT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("WorkflowCompleted")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some("restart-my-app-oom")
            })
    })
    .await;
    let trail = types_and_engines(&audit, "restart-my-app-oom");
    for t in [
        "workflowexecution.selection.completed",
        "workflowexecution.execution.started",
        "workflowexecution.workflow.completed",
    ] {
        assert!(
            trail.iter().any(|(ty, engine)| ty == t && engine == "job"),
            "{t} missing from {trail:?}"
        );
    }
    let (_, metrics) = http_get(&format!("{}/metrics", operator.metrics))
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("workflowexecution_reconciler_total")
                && l.contains("execution_engine=\"job\"")
                && l.contains("Succeeded")
        })
        .unwrap_or_else(|| panic!("no job success counted in /metrics:\n{metrics}"));
    println!("metrics: {line}");
    // The process metrics alerts rely on: this replica leads, and says which build it is.
    for (name, want) in [
        ("workflowexecution_leader ", "1"),
        ("workflowexecution_build_info{version=", "1"),
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"));
        assert!(line.ends_with(&format!(" {want}")), "{line}");
    }

    // A failing Job: exit code 2 with a termination message; then the target is blocked.
    let spec = catalog_spec(
        restart_entry(),
        "production/Deployment/flaky",
        &[
            ("podName", "flaky"),
            ("namespace", "production"),
            ("memoryLimit", "1Gi"),
            ("KWOK_RESULT", "fail"),
            ("KWOK_EXIT_CODE", "2"),
            ("KWOK_MESSAGE", "patch failed: deployment flaky not found"),
        ],
        "rr-flaky",
    );
    wfes.create(&PostParams::default(), &new_wfe("restart-flaky", spec))
        .await
        .unwrap();
    let failed = wait_phase(&wfes, "restart-flaky", Phase::Failed).await;
    let d = failed
        .status
        .as_ref()
        .unwrap()
        .failure_details
        .clone()
        .unwrap();
    assert_eq!(
        (d.reason, d.exit_code),
        (FailureReason::TaskFailed, Some(2))
    );
    assert!(
        d.message
            .contains("patch failed: deployment flaky not found"),
        "{}",
        d.message
    );
    assert!(d.was_execution_failure);
    let spec = catalog_spec(
        restart_entry(),
        "production/Deployment/flaky",
        &[
            ("podName", "flaky"),
            ("namespace", "production"),
            ("memoryLimit", "2Gi"),
        ],
        "rr-flaky-2",
    );
    wfes.create(
        &PostParams::default(),
        &new_wfe("restart-flaky-again", spec),
    )
    .await
    .unwrap();
    let blocked = wait_phase(&wfes, "restart-flaky-again", Phase::Failed).await;
    assert_eq!(
        blocked.status.as_ref().unwrap().failure_reason,
        Some(FailureReason::PreviousExecutionFailed)
    );

    // Tekton regression, through the real Tekton controller: no engine and `tekton` both make
    // PipelineRuns (no Job) from bundles published to the local registry, pinned by digest.
    let pinned = |stem: &str| {
        let r = wfe_testing::tekton::bundle(stem);
        let (image, digest) = r.split_once('@').unwrap();
        (image.to_string(), digest.to_string())
    };
    let (image, digest) = pinned("canary-deployment");
    let canary = json!({"workflow_id": "canary-deployment", "version": "2.0.0",
        "container_image": format!("oci://{image}"), "container_digest": digest,
        "parameters": [{"name": "IMAGE_TAG", "required": true}, {"name": "CANARY_PERCENT"}]});
    let (image, digest) = pinned("kwok-steps");
    let explicit = json!({"workflow_id": "canary-check", "version": "1.0.0",
        "execution_engine": "tekton",
        "container_image": format!("oci://{image}"), "container_digest": digest,
        "parameters": [{"name": "KWOK_RESULT"}, {"name": "KWOK_EXIT_CODE"}]});
    let jobs_before = jobs.list(&ListParams::default()).await.unwrap().items.len();
    wfes.create(
        &PostParams::default(),
        &new_wfe(
            "canary-default",
            catalog_spec(
                canary,
                "production/Deployment/payment-api",
                &[("IMAGE_TAG", "v2.1.0"), ("CANARY_PERCENT", "10")],
                "rr-c1",
            ),
        ),
    )
    .await
    .unwrap();
    wfes.create(
        &PostParams::default(),
        &new_wfe(
            "canary-tekton",
            catalog_spec(
                explicit,
                "production/Deployment/checkout",
                &[("KWOK_RESULT", "fail"), ("KWOK_EXIT_CODE", "3")],
                "rr-c2",
            ),
        ),
    )
    .await
    .unwrap();
    let a = wait_phase(&wfes, "canary-default", Phase::Succeeded).await;
    let b = wait_phase(&wfes, "canary-tekton", Phase::Failed).await;
    assert_eq!(
        jobs.list(&ListParams::default()).await.unwrap().items.len(),
        jobs_before,
        "no Job for Tekton requests"
    );
    let sa = a.status.unwrap();
    let sb = b.status.unwrap();
    assert_eq!(
        (
            sa.execution_ref.as_ref().unwrap().kind.as_str(),
            sb.execution_ref.as_ref().unwrap().kind.as_str()
        ),
        ("PipelineRun", "PipelineRun")
    );
    let summary = sa.execution_status.unwrap();
    assert_eq!((summary.completed_tasks, summary.total_tasks), (3, 3));
    assert!(
        prs.get(&sa.execution_ref.unwrap().name).await.is_ok(),
        "the PipelineRun Tekton ran"
    );
    let d = sb.failure_details.unwrap();
    assert_eq!(
        (d.reason, d.exit_code, d.failed_step_name.as_deref()),
        (FailureReason::TaskFailed, Some(3), Some("apply")),
        "{}",
        d.message
    );
    wfe_testing::wait_for("tekton audit trail", TIMEOUT, || async {
        let t = types_and_engines(&audit, "canary-default");
        t.iter()
            .any(|(ty, e)| ty == "workflowexecution.workflow.completed" && e == "tekton")
            .then_some(())
    })
    .await;

    // Memory of every process of the run.
    let cluster: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("target/wfe-cluster/cluster.json")).unwrap(),
    )
    .unwrap();
    let mut rows: Vec<(String, u64)> = cluster["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_string(),
                peak_rss_kib(u32::try_from(c["pid"].as_u64()?).ok()?)?,
            ))
        })
        .collect();
    rows.push(("we-operator".into(), peak_rss_kib(operator.pid()).unwrap()));
    let total: u64 = rows.iter().map(|(_, k)| k).sum();
    println!("\npeak resident memory (VmHWM):");
    for (name, kib) in &rows {
        println!("  {name:<24} {:>8.1} MiB", *kib as f64 / 1024.0);
    }
    println!(
        "  {:<24} {:>8.1} MiB (budget {} MiB)",
        "total",
        total as f64 / 1024.0,
        MEMORY_BUDGET_KIB / 1024
    );
    std::fs::write(
        repo().join("target/e2e-memory.json"),
        serde_json::to_string_pretty(&json!({"peak_rss_kib": rows.iter().map(|(n, k)| (n.clone(), *k)).collect::<BTreeMap<_, _>>(), "total_kib": total})).unwrap(),
    )
    .unwrap();
    assert!(rows.len() >= 6, "every process measured: {rows:?}");
    assert!(
        total <= MEMORY_BUDGET_KIB,
        "the run used {total} KiB, over the 1.5 GiB budget"
    );

    // Graceful shutdown: SIGTERM drains and exits 0.
    let exit = operator.terminate().await;
    assert!(exit.success(), "we-operator exited with {exit}");
    println!("e2e passed in {:?}", started.elapsed());
}
