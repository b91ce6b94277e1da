//! Creating the benchmark's WorkflowExecutions (bursts, a steady rate, finished ones) and removing
//! them and their Jobs between workloads.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, stream};
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::ObjectReference},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use wfe_api::{
    ExecutionEngine, ExecutionRef, ExecutionStatusSummary, Phase, WorkflowExecution,
    WorkflowExecutionSpec, WorkflowExecutionStatus, WorkflowRef, conditions as cond,
};
use wfe_executor::{LABEL_SOURCE_NAMESPACE, execution_name_for};

use crate::{
    setup::{BENCH_NS, EXEC_NS},
    subject::{Subject, executions},
    tracker::Tracker,
};

/// Requests in flight at once when the driver creates or deletes as fast as it can. kube's client
/// speaks HTTP/1.1, so this is also the number of connections it opens.
pub const CONCURRENCY: usize = 64;
const DIGEST: &str = "sha256:3c1f9a0e7b5d4c2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a";

/// The name of execution `i` of a workload.
pub fn name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

/// A Job-engine WorkflowExecution on its own target (so that no guard ever holds it), shaped like
/// the catalog mapping makes them (image pinned by digest, parameters, an allow-list).
pub fn new_wfe(name: &str) -> WorkflowExecution {
    let spec = WorkflowExecutionSpec {
        execution_engine: ExecutionEngine::Job,
        workflow_ref: WorkflowRef {
            workflow_id: "restart-with-increased-memory".into(),
            version: "1.2.0".into(),
            name: Some("restart-with-increased-memory".into()),
            container_image: format!("registry.example.com/remediation/restart@{DIGEST}"),
            container_digest: Some(DIGEST.into()),
            declared_parameter_names: Some(vec![
                "podName".into(),
                "namespace".into(),
                "memoryLimit".into(),
            ]),
            ..Default::default()
        },
        target_resource: format!("bench/Deployment/{name}"),
        parameters: BTreeMap::from([
            ("podName".to_string(), format!("{name}-7d9f8c6b5-x2x4z")),
            ("namespace".to_string(), "bench".to_string()),
            ("memoryLimit".to_string(), "1Gi".to_string()),
        ]),
        execution_config: None,
        remediation_request_ref: ObjectReference {
            api_version: Some("kubernaut.ai/v1alpha1".into()),
            kind: Some("RemediationRequest".into()),
            name: Some(format!("rr-{name}")),
            namespace: Some(BENCH_NS.into()),
            ..Default::default()
        },
        confidence: Some(0.92),
        rationale: Some("benchmark: the deployment was OOMKilled".into()),
    };
    let mut w = WorkflowExecution::new(name, spec);
    w.metadata.namespace = Some(BENCH_NS.into());
    w
}

async fn create_tracked(
    api: &Api<DynamicObject>,
    subject: &Subject,
    tracker: &Tracker,
    name: String,
) {
    let wfe: DynamicObject = match serde_json::from_value(subject.execution(&name)) {
        Ok(w) => w,
        Err(e) => {
            tracker.create_done(&name, Instant::now(), Some(e.to_string()));
            return;
        }
    };
    let sent = Instant::now();
    tracker.create_sent(&name, sent);
    let result = api.create(&PostParams::default(), &wfe).await;
    tracker.create_done(&name, Instant::now(), result.err().map(|e| e.to_string()));
}

/// Creates `n` executions as fast as the client allows ([`CONCURRENCY`] in flight).
pub async fn burst(client: &Client, subject: &Subject, tracker: &Tracker, prefix: &str, n: usize) {
    let api = executions(client);
    stream::iter(0..n)
        .map(|i| create_tracked(&api, subject, tracker, name(prefix, i)))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// Creates `rate` executions per second for `duration` (each create in its own task, so a slow
/// call does not delay the schedule).
pub async fn steady(
    client: &Client,
    subject: &Subject,
    tracker: &Arc<Tracker>,
    prefix: &str,
    rate: u32,
    duration: Duration,
) -> usize {
    let api = executions(client);
    let n = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + period * i as u32).await;
        let (api, tracker, name) = (api.clone(), tracker.clone(), name(prefix, i));
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            create_tracked(&api, &subject, &tracker, name).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    n
}

/// A status as the operator leaves it on a finished execution: Succeeded, audit delivered, lock
/// released (so that a restarted operator has nothing left to do for it).
pub fn finished_status(wfe: &WorkflowExecution, now: Timestamp) -> WorkflowExecutionStatus {
    let start = now - SignedDuration::from_secs(3600);
    let done = start + SignedDuration::from_secs(42);
    let released = done + SignedDuration::from_secs(300);
    let c = |type_: &str, reason: &str, message: &str, at: Timestamp| Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(1),
        last_transition_time: Time(at),
    };
    let job = execution_name_for(wfe);
    WorkflowExecutionStatus {
        observed_generation: Some(1),
        phase: Some(Phase::Succeeded),
        start_time: Some(Time(start)),
        completion_time: Some(Time(done)),
        duration: Some("42s".into()),
        execution_ref: Some(ExecutionRef {
            kind: "Job".into(),
            name: job.clone(),
            namespace: EXEC_NS.into(),
        }),
        execution_status: Some(ExecutionStatusSummary {
            status: "True".into(),
            reason: Some("Complete".into()),
            message: Some("Job completed".into()),
            completed_tasks: 1,
            total_tasks: 1,
            retry_count: 0,
        }),
        audit_delivered: vec![
            "workflowexecution.selection.completed".into(),
            "workflowexecution.execution.started".into(),
            "workflowexecution.workflow.completed".into(),
        ],
        lock_released_time: Some(Time(released)),
        conditions: vec![
            c(
                cond::EXECUTION_CREATED,
                "ExecutionCreated",
                &format!("Job {EXEC_NS}/{job} created"),
                start,
            ),
            c(
                cond::EXECUTION_RUNNING,
                "ExecutionRunning",
                "Job is running",
                start,
            ),
            c(
                cond::EXECUTION_COMPLETE,
                "ExecutionSucceeded",
                "Job completed successfully",
                done,
            ),
            c(
                cond::READY,
                "Succeeded",
                "Workflow completed successfully",
                done,
            ),
            c(
                cond::AUDIT_RECORDED,
                "AuditSucceeded",
                "3 audit event(s) acknowledged by the audit sink",
                done,
            ),
        ],
        ..Default::default()
    }
}

/// Creates `n` finished executions (with the operator's finalizer, status written through the
/// status subresource) while no operator runs. Returns the time it took.
pub async fn create_finished(
    client: &Client,
    subject: &Subject,
    prefix: &str,
    n: usize,
) -> Result<Duration> {
    let api = executions(client);
    let start = Instant::now();
    let errors: Vec<String> = stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let (obj, status) = subject.finished(&name(prefix, i), Timestamp::now());
                let obj: DynamicObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
                let created = api
                    .create(&PostParams::default(), &obj)
                    .await
                    .map_err(|e| e.to_string())?;
                api.patch_status(
                    &created.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    if !errors.is_empty() {
        bail!(
            "{} of {n} finished WorkflowExecutions could not be created, e.g. {}",
            errors.len(),
            errors[0]
        );
    }
    Ok(start.elapsed())
}

/// Removes every WorkflowExecution of the bench namespace (finalizers stripped: call it with no
/// operator running) and the Jobs of the bench, and waits until they are gone.
pub async fn clean(client: &Client) -> Result<()> {
    let wfes = executions(client);
    let jobs: Api<Job> = Api::namespaced(client.clone(), EXEC_NS);
    let job_selector =
        ListParams::default().labels(&format!("{LABEL_SOURCE_NAMESPACE}={BENCH_NS}"));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = wfes.list_metadata(&ListParams::default()).await?;
        let job_list = jobs.list_metadata(&job_selector).await?;
        if list.items.is_empty() && job_list.items.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} WorkflowExecutions and {} Jobs of the bench are still there after 300 s",
                list.items.len(),
                job_list.items.len()
            );
        }
        if !list.items.is_empty() {
            // One by one, many at a time: the API server deletes a collection of custom resources
            // serially, and a large one outlives the request timeout.
            stream::iter(list.items)
                .map(|w| {
                    let wfes = wfes.clone();
                    async move {
                        let name = w.name_any();
                        if !w.finalizers().is_empty() {
                            let _ = wfes
                                .patch(
                                    &name,
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                                )
                                .await;
                        }
                        if w.metadata.deletion_timestamp.is_none() {
                            let _ = wfes.delete(&name, &DeleteParams::default()).await;
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<()>>()
                .await;
        }
        if !job_list.items.is_empty() {
            jobs.delete_collection(&DeleteParams::background(), &job_selector)
                .await
                .context("deleting the bench's Jobs")?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
