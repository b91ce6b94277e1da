//! The "replaced" way a lock is released, on the real local control plane: a finished execution
//! whose Job was replaced by the next execution on its target before its own release (the next
//! dispatch won the race) records the release like every other way: `status.lockReleasedTime`,
//! a `LockReleased` Event and `workflowexecution_lock_released_total{how="replaced"}`.
//!
//! A test binary of its own: it installs the process's metrics recorder.

mod support;

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::{Api, ResourceExt, api::ListParams};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::*;
use wfe_api::Phase;
use wfe_executor::{CreateOutcome, Executor};
use wfe_job::{JobConfig, JobExecutor};

/// Long enough for the controller to stop before the first execution's release is due.
const COOLDOWN_MS: u64 = 15_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_replaced_by_the_next_execution_is_released_on_its_owner() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");

    let mut h = Harness::start("replaced", guards(COOLDOWN_MS)).await;
    let target = "production/Deployment/replaced";
    h.create(&h.wfe("first", Some("job"), target, &[])).await;
    h.wait_phase("first", Phase::Succeeded).await;

    // The leader goes away inside the cooldown: "first" still holds the lock (its Job).
    h.stop_controller().await;
    let first = h.wfes().get("first").await.unwrap();
    assert!(
        status(&first).lock_released_time.is_none(),
        "the cooldown of {COOLDOWN_MS} ms is not over yet"
    );
    let job_name = status(&first).execution_ref.as_ref().unwrap().name.clone();

    // After the cooldown the next request on the target is dispatched before the first one's
    // release: its create finds the finished Job of a settled owner and replaces it.
    tokio::time::sleep(Duration::from_millis(COOLDOWN_MS + 1_000)).await;
    let second = h.create(&h.wfe("second", Some("job"), target, &[])).await;
    let jobs = JobExecutor::new(
        h.client.clone(),
        JobConfig {
            namespace: h.exec_ns.clone(),
            ..JobConfig::default()
        },
    );
    let created = jobs
        .create(&second)
        .await
        .expect("the next execution's create");
    assert!(
        matches!(&created, CreateOutcome::Created(r) if r.name == job_name),
        "the stale Job is replaced: {created:?}"
    );
    let job = h.jobs().get(&job_name).await.unwrap();
    assert_eq!(
        job.annotations().get("kubernaut.ai/workflow-execution"),
        Some(&"second".to_string()),
        "the Job under the target's name belongs to the next execution"
    );

    // The leader is back: the first execution's release finds its Job replaced.
    h.start_controller();
    let first = h
        .wait_until("first", "lockReleasedTime on the replaced execution", |w| {
            status(w).lock_released_time.is_some()
        })
        .await;
    assert!(status(&first).lock_released_time.is_some());
    h.wait_event("first", "LockReleased").await;
    let events: Api<Event> = Api::namespaced(h.client.clone(), &h.ns);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("first"))
        .filter(|e| e.reason.as_deref() == Some("LockReleased"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(notes.len(), 1, "one LockReleased Event: {notes:?}");
    assert!(
        notes[0].contains("replaced by the next execution on the target"),
        "{}",
        notes[0]
    );
    let rendered = metrics.render();
    let replaced = rendered
        .lines()
        .find(|l| {
            l.starts_with("workflowexecution_lock_released_total{")
                && l.contains("how=\"replaced\"")
                && l.contains("execution_engine=\"job\"")
        })
        .unwrap_or_else(|| panic!("no replaced release counted:\n{rendered}"));
    assert!(replaced.ends_with(" 1"), "{replaced}");

    // The Job was not deleted by the first execution's release: the second one runs on it.
    let done = h.wait_phase("second", Phase::Succeeded).await;
    assert_eq!(status(&done).execution_ref.as_ref().unwrap().name, job_name);
    h.stop_controller().await;
}
