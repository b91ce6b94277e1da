//! The controller in-process against the real local control plane (kube-apiserver, the Job
//! controller, kwok fake nodes, the real Tekton CRDs), both backends registered.

mod support;

use std::{collections::BTreeSet, time::Duration};

use kube::{
    ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use support::*;
use wfe_api::{FailureReason, Phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_happy_path() {
    let h = Harness::start("happy", guards(60_000)).await;
    h.create(&h.wfe(
        "restart-my-app",
        Some("job"),
        "production/Deployment/my-app",
        &[("podName", "my-app"), ("memoryLimit", "1Gi")],
    ))
    .await;
    let running = h
        .wait_until("restart-my-app", "Running or later", |w| {
            w.phase() != Phase::Pending
        })
        .await;
    assert!(matches!(running.phase(), Phase::Running | Phase::Succeeded));
    let done = h.wait_phase("restart-my-app", Phase::Succeeded).await;
    let s = status(&done);
    assert!(s.start_time.is_some() && s.completion_time.is_some() && s.duration.is_some());
    let r = s.execution_ref.as_ref().unwrap();
    assert_eq!(r.kind, "Job");
    assert_eq!(
        condition(&done, "ExecutionCreated"),
        ("True", "ExecutionCreated")
    );
    assert_eq!(
        condition(&done, "ExecutionComplete"),
        ("True", "ExecutionSucceeded")
    );
    assert_eq!(condition(&done, "Ready"), ("True", "Ready"));
    // One Job, carrying the parameters; no PipelineRun.
    let jobs = h.jobs_list().await;
    assert_eq!(jobs.len(), 1);
    let env = jobs[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "memoryLimit" && e.value.as_deref() == Some("1Gi"))
    );
    assert!(h.pipelineruns_list().await.is_empty());
    // Events and the complete audit trail with the engine.
    h.wait_event("restart-my-app", "WorkflowCompleted").await;
    h.wait_audit(
        "restart-my-app",
        &[
            "workflowexecution.selection.completed",
            "workflowexecution.execution.started",
            "workflowexecution.workflow.completed",
        ],
    )
    .await;
    for e in h.audit.for_resource("restart-my-app") {
        assert_eq!(e["event_data"]["execution_engine"], "job", "{e}");
    }
    let done = h
        .wait_until("restart-my-app", "audit recorded", |w| {
            w.condition("AuditRecorded")
                .is_some_and(|c| c.status == "True")
        })
        .await;
    assert_eq!(status(&done).audit_delivered.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_explicit_tekton_create_pipelineruns() {
    let h = Harness::start("tekton", guards(60_000)).await;
    h.create(&h.wfe("no-engine", None, "production/Deployment/a", &[]))
        .await;
    h.create(&h.wfe("empty-engine", Some(""), "production/Deployment/b", &[]))
        .await;
    h.create(&h.wfe("explicit", Some("tekton"), "production/Deployment/c", &[]))
        .await;
    for name in ["no-engine", "empty-engine", "explicit"] {
        let w = h.wait_phase(name, Phase::Running).await;
        assert_eq!(
            status(&w).execution_ref.as_ref().unwrap().kind,
            "PipelineRun"
        );
    }
    assert_eq!(h.pipelineruns_list().await.len(), 3);
    assert!(h.jobs_list().await.is_empty(), "no Job for tekton requests");

    // Play Tekton: one succeeds, one fails.
    let prs = h.pipelineruns();
    let name_of =
        |w: &wfe_api::WorkflowExecution| status(w).execution_ref.as_ref().unwrap().name.clone();
    let a = name_of(&h.wfes().get("no-engine").await.unwrap());
    let c = name_of(&h.wfes().get("explicit").await.unwrap());
    let ok = json!({"status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "Tasks Completed: 1"}],
                               "completionTime": "2026-01-01T00:00:00Z"}});
    prs.patch_status(&a, &PatchParams::default(), &Patch::Merge(&ok))
        .await
        .unwrap();
    let bad = json!({"status": {"conditions": [{"type": "Succeeded", "status": "False", "reason": "PipelineRunTimeout", "message": "PipelineRun exceeded timeout"}],
                                "startTime": "2026-01-01T00:00:00Z"}});
    prs.patch_status(&c, &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap();
    h.wait_phase("no-engine", Phase::Succeeded).await;
    let failed = h.wait_phase("explicit", Phase::Failed).await;
    assert_eq!(
        status(&failed).failure_reason,
        Some(FailureReason::DeadlineExceeded)
    );
    h.wait_audit("explicit", &["workflowexecution.workflow.failed"])
        .await;
    assert!(
        h.audit
            .for_resource("explicit")
            .iter()
            .all(|e| e["event_data"]["execution_engine"] == "tekton")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failure_blocks_the_target_until_cleared() {
    let h = Harness::start("fail", guards(1_000)).await;
    let target = "production/Deployment/broken";
    let params = [
        ("KWOK_RESULT", "fail"),
        ("KWOK_EXIT_CODE", "2"),
        ("KWOK_MESSAGE", "kubectl: deployment has no container app"),
    ];
    h.create(&h.wfe("first", Some("job"), target, &params))
        .await;
    let failed = h.wait_phase("first", Phase::Failed).await;
    let d = status(&failed).failure_details.clone().unwrap();
    assert_eq!(d.reason, FailureReason::TaskFailed);
    assert_eq!(d.exit_code, Some(2));
    assert!(d.was_execution_failure);
    assert!(
        d.message
            .contains("kubectl: deployment has no container app"),
        "{}",
        d.message
    );
    assert_eq!(
        status(&failed).failure_reason,
        Some(FailureReason::TaskFailed)
    );
    h.wait_event("first", "WorkflowFailed").await;

    // The next request on that target is refused at once.
    h.create(&h.wfe("second", Some("job"), target, &[])).await;
    let blocked = h.wait_phase("second", Phase::Failed).await;
    let d = status(&blocked).failure_details.clone().unwrap();
    assert_eq!(d.reason, FailureReason::PreviousExecutionFailed);
    assert!(d.message.contains("first") && !d.was_execution_failure);

    // A too-short reason changes nothing.
    let short = json!({"metadata": {"annotations": {"kubernaut.ai/clear-block": "fixed it"}}});
    h.wfes()
        .patch("first", &PatchParams::default(), &Patch::Merge(&short))
        .await
        .unwrap();
    h.wait_event("first", "BlockClearRefused").await;
    assert!(
        status(&h.wfes().get("first").await.unwrap())
            .block_clearance
            .is_none()
    );

    // Clearing the block lets the next request run.
    let reason =
        "the deployment manifest was fixed by the on-call engineer and verified in staging";
    let clear = json!({"metadata": {"annotations": {"kubernaut.ai/clear-block": reason}}});
    h.wfes()
        .patch("first", &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .unwrap();
    let cleared = h
        .wait_until("first", "block cleared", |w| {
            status(w).block_clearance.is_some()
        })
        .await;
    let bc = status(&cleared).block_clearance.clone().unwrap();
    assert_eq!(
        (bc.cleared_by.as_str(), bc.clear_reason.as_str()),
        ("unknown", reason)
    );
    h.wait_audit("first", &["workflowexecution.block.cleared"])
        .await;
    h.create(&h.wfe("third", Some("job"), target, &[])).await;
    h.wait_phase("third", Phase::Succeeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_while_running_is_deduplicated() {
    let h = Harness::start("dedup", guards(60_000)).await;
    let target = "production/Deployment/busy";
    h.create(&h.wfe("holder", Some("job"), target, &[("KWOK_RESULT", "hold")]))
        .await;
    h.wait_phase("holder", Phase::Running).await;
    // Another engine on the same target is locked out too (the lock is per target).
    h.create(&h.wfe("late-job", Some("job"), target, &[])).await;
    h.create(&h.wfe(
        "late-tekton",
        Some("tekton"),
        "production/deployment/busy",
        &[],
    ))
    .await;
    for name in ["late-job", "late-tekton"] {
        let w = h.wait_phase(name, Phase::Failed).await;
        assert_eq!(status(&w).failure_reason, Some(FailureReason::Deduplicated));
        assert_eq!(
            status(&w).deduplicated_by.as_deref(),
            Some(format!("{}/holder", h.ns).as_str())
        );
    }
    assert_eq!(h.jobs_list().await.len(), 1, "no second Job");
    assert!(h.pipelineruns_list().await.is_empty(), "no PipelineRun");
    assert_eq!(
        h.wfes().get("holder").await.unwrap().phase(),
        Phase::Running,
        "first unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_holds_then_runs() {
    let h = Harness::start("cooldown", guards(4_000)).await;
    let target = "production/Deployment/cool";
    h.create(&h.wfe("one", Some("job"), target, &[])).await;
    h.wait_phase("one", Phase::Succeeded).await;
    h.create(&h.wfe("two", Some("job"), target, &[])).await;
    let waiting = h
        .wait_until("two", "blocked by cooldown", |w| {
            w.condition("Blocked")
                .is_some_and(|c| c.reason == "CooldownActive")
        })
        .await;
    assert_eq!(waiting.phase(), Phase::Pending);
    h.wait_event("two", "CooldownActive").await;
    let done = h.wait_phase("two", Phase::Succeeded).await;
    assert!(done.condition("Blocked").is_none());
    // The first execution's Job was deleted after its cooldown (lock released).
    h.wait_until("one", "lock released", |w| {
        status(w).lock_released_time.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_then_exhausted_retries_after_pre_execution_failures() {
    let h = Harness::start("backoff", guards(200)).await;
    let target = "production/Deployment/needs-secret";
    let with_secret = |name: &str| {
        let mut w = h.wfe(name, Some("job"), target, &[]);
        w.spec.workflow_ref.dependencies = Some(wfe_api::WorkflowDependencies {
            secrets: vec![wfe_api::NamedDependency {
                name: "missing-creds".into(),
            }],
            config_maps: vec![],
        });
        w
    };
    h.create(&with_secret("try-1")).await;
    let f = h.wait_phase("try-1", Phase::Failed).await;
    let d = status(&f).failure_details.clone().unwrap();
    assert_eq!(d.reason, FailureReason::ConfigurationError);
    assert!(
        d.message.contains("missing-creds") && !d.was_execution_failure,
        "{}",
        d.message
    );

    h.create(&with_secret("try-2")).await;
    let w = h
        .wait_until("try-2", "backoff", |w| {
            w.condition("Blocked")
                .is_some_and(|c| c.reason == "BackoffActive")
        })
        .await;
    assert_eq!(w.phase(), Phase::Pending);
    h.wait_phase("try-2", Phase::Failed).await;
    h.create(&with_secret("try-3")).await;
    h.wait_phase("try-3", Phase::Failed).await;
    h.create(&with_secret("try-4")).await;
    let ex = h.wait_phase("try-4", Phase::Failed).await;
    assert_eq!(
        status(&ex).failure_reason,
        Some(FailureReason::ExhaustedRetries)
    );
    assert!(h.jobs_list().await.is_empty(), "no Job was ever created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_deletion_and_wfe_deletion() {
    let h = Harness::start("delete", guards(60_000)).await;
    h.create(&h.wfe(
        "victim",
        Some("job"),
        "production/Deployment/v",
        &[("KWOK_RESULT", "hold")],
    ))
    .await;
    let w = h.wait_phase("victim", Phase::Running).await;
    let job = status(&w).execution_ref.clone().unwrap().name;
    h.jobs()
        .delete(&job, &DeleteParams::background())
        .await
        .unwrap();
    let f = h.wait_phase("victim", Phase::Failed).await;
    let d = status(&f).failure_details.clone().unwrap();
    assert_eq!(d.reason, FailureReason::Unknown);
    assert!(
        d.message.contains("Job") && d.message.contains("deleted externally"),
        "{}",
        d.message
    );

    // Deleting a WorkflowExecution deletes (cancels) its running Job.
    h.create(&h.wfe(
        "cancelled",
        Some("job"),
        "production/Deployment/c",
        &[("KWOK_RESULT", "hold")],
    ))
    .await;
    let w = h.wait_phase("cancelled", Phase::Running).await;
    let job = status(&w).execution_ref.clone().unwrap().name;
    h.wfes()
        .delete("cancelled", &DeleteParams::default())
        .await
        .unwrap();
    let jobs = h.jobs();
    wfe_testing::wait_for("job deleted with its WorkflowExecution", TIMEOUT, || {
        let jobs = jobs.clone();
        let job = job.clone();
        async move {
            jobs.get_opt(&job)
                .await
                .unwrap()
                .is_none_or(|j| j.metadata.deletion_timestamp.is_some())
                .then_some(())
        }
    })
    .await;
    wfe_testing::wait_for("the WorkflowExecution is gone", TIMEOUT, || async {
        h.wfes()
            .get_opt("cancelled")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_outage_loses_nothing() {
    let h = Harness::start("audit", guards(60_000)).await;
    h.audit.set_down(true);
    h.create(&h.wfe(
        "during-outage",
        Some("job"),
        "production/Deployment/audited",
        &[],
    ))
    .await;
    let done = h.wait_phase("during-outage", Phase::Succeeded).await;
    let _ = done;
    h.wait_until("during-outage", "AuditRecorded=False", |w| {
        w.condition("AuditRecorded")
            .is_some_and(|c| c.status == "False")
    })
    .await;
    assert!(h.audit.for_resource("during-outage").is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.audit.set_down(false);
    h.wait_audit(
        "during-outage",
        &[
            "workflowexecution.selection.completed",
            "workflowexecution.execution.started",
            "workflowexecution.workflow.completed",
        ],
    )
    .await;
    let ids: BTreeSet<String> = h
        .audit
        .for_resource("during-outage")
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "each event once by event_id");
    h.wait_until("during-outage", "AuditRecorded=True", |w| {
        w.condition("AuditRecorded")
            .is_some_and(|c| c.status == "True")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_run_creates_no_duplicate_and_loses_no_transition() {
    let mut h = Harness::start("restart", guards(60_000)).await;
    h.create(&h.wfe(
        "survivor",
        Some("job"),
        "production/Deployment/s",
        &[("KWOK_RUN_FOR", "4s")],
    ))
    .await;
    let w = h.wait_phase("survivor", Phase::Running).await;
    let job_name = status(&w).execution_ref.clone().unwrap().name;
    let uid = h.jobs().get(&job_name).await.unwrap().uid();
    h.stop_controller().await;
    // The Job finishes while no controller runs.
    let jobs = h.jobs();
    wfe_testing::wait_for("the Job completes", TIMEOUT, || {
        let jobs = jobs.clone();
        let job_name = job_name.clone();
        async move { wfe_job::is_finished(&jobs.get(&job_name).await.unwrap()).then_some(()) }
    })
    .await;
    h.start_controller();
    let done = h.wait_phase("survivor", Phase::Succeeded).await;
    assert_eq!(status(&done).execution_ref.as_ref().unwrap().name, job_name);
    let all = h.jobs_list().await;
    assert_eq!(all.len(), 1, "no duplicate Job");
    assert_eq!(all[0].uid(), uid, "the same Job");
    h.wait_audit("survivor", &["workflowexecution.workflow.completed"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_a_clear_reason() {
    let h = Harness::start("bad", guards(30_000)).await;
    // Tag-only image for a Job.
    let mut w = h.wfe("tagged", Some("job"), "production/Deployment/t", &[]);
    w.spec.workflow_ref.container_image = "registry.example.com/remediation/restart:v1.2".into();
    h.create(&w).await;
    let f = h.wait_phase("tagged", Phase::Failed).await;
    assert_eq!(
        status(&f).failure_reason,
        Some(FailureReason::ConfigurationError)
    );
    assert!(
        status(&f)
            .failure_details
            .as_ref()
            .unwrap()
            .message
            .contains("spec.workflowRef.containerImage")
    );
    // A missing service account.
    let mut w = h.wfe("no-sa", Some("job"), "production/Deployment/n", &[]);
    w.spec.execution_config = Some(wfe_api::ExecutionConfig {
        timeout: None,
        service_account_name: Some("ghost".into()),
    });
    h.create(&w).await;
    let f = h.wait_phase("no-sa", Phase::Failed).await;
    assert_eq!(
        status(&f).failure_reason,
        Some(FailureReason::ConfigurationError)
    );
    assert!(
        status(&f)
            .failure_details
            .as_ref()
            .unwrap()
            .message
            .contains("ghost")
    );
    // Hostile values reach the container verbatim.
    let hostile = "a b; $(rm -rf /) `id` \"q\"\nline2";
    h.create(&h.wfe(
        "hostile",
        Some("job"),
        "production/Deployment/h",
        &[("VALUE", hostile)],
    ))
    .await;
    h.wait_phase("hostile", Phase::Succeeded).await;
    let job = h
        .jobs_list()
        .await
        .into_iter()
        .find(|j| {
            j.annotations()
                .get("kubernaut.ai/workflow-execution")
                .map(String::as_str)
                == Some("hostile")
        })
        .unwrap();
    let env = job.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert_eq!(
        env.iter()
            .find(|e| e.name == "VALUE")
            .unwrap()
            .value
            .as_deref(),
        Some(hostile)
    );
}
