//! Resilience under real faults (run by `cargo xtask chaos`; ignored in plain `cargo test`): two
//! operator replicas with leader election process a batch of WorkflowExecutions while the leader is
//! killed with SIGKILL again and again, the audit service goes down for a while, and kube-apiserver
//! is restarted under the replicas. The test supervises the replicas as the kubelet would
//! (`restartPolicy: Always`): a replica that exits is started again, but only an exit the
//! operator documents (its Lease expired while the API server was away: "leadership lost") is
//! accepted; any other exit fails the run. Afterwards every
//! request is terminal with the right outcome, no WorkflowExecution ever got a second Job, and the
//! audit receiver holds every expected event id.
//!
//! `CHAOS_EXECUTIONS` (default 40), `CHAOS_KILLS` (default 5) and `CHAOS_AUDIT_OUTAGE_SECONDS`
//! (default 5) size the run.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    discovery::Discovery,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use wfe_api::{FailureReason, Phase, WorkflowExecution, testing};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(i: usize) -> WorkflowExecution {
    let fails = i % 3 == 2;
    let mut fixture = testing::wfe(&format!("chaos-{i:04}"))
        .namespace(SYSTEM_NS)
        .uid(None)
        .workflow("chaos")
        .image(&format!("registry.example.com/chaos@{}", testing::DIGEST))
        .target(&format!("chaos/Deployment/app-{i:04}"))
        .spec(
            "remediationRequestRef",
            json!({"name": format!("rr-chaos-{i}")}),
        )
        .param("KWOK_RUN_FOR", &format!("{}ms", 300 + (i % 7) * 250));
    if fails {
        fixture = fixture
            .param("KWOK_RESULT", "fail")
            .param("KWOK_EXIT_CODE", "2")
            .param("KWOK_MESSAGE", &format!("chaos failure {i}"));
    }
    fixture.build()
}

/// The leader-election Lease of deploy/ (its RBAC names it).
const LEASE: &str = "we-operator-leader";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "resilience: run by `cargo xtask chaos`"]
async fn leader_kills_and_audit_outage_lose_nothing_and_run_nothing_twice() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let executions = env_usize("CHAOS_EXECUTIONS", 40);
    let kills = env_usize("CHAOS_KILLS", 5);
    let outage = env_usize("CHAOS_AUDIT_OUTAGE_SECONDS", 5) as u64;
    let started = Instant::now();
    let client = wfe_testing::client().await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let deploy = wfe_testing::repo_root().join("deploy");
    for f in [
        "namespaces.yaml",
        "rbac.yaml",
        "admission-policies.yaml",
        "workflow-runner.yaml",
    ] {
        apply_file(&client, &discovery, &deploy.join(f)).await;
    }
    let wfes: Api<WorkflowExecution> = Api::namespaced(client.clone(), SYSTEM_NS);
    let jobs: Api<Job> = Api::namespaced(client.clone(), EXEC_NS);
    for w in wfes.list(&ListParams::default()).await.unwrap() {
        wfes.delete(&w.name_any(), &DeleteParams::default())
            .await
            .ok();
        wfes.patch(
            &w.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .ok();
    }
    jobs.delete_collection(&DeleteParams::background(), &ListParams::default())
        .await
        .ok();
    // The replicas elect a leader with the Lease the RBAC of deploy/ names (the only one they may
    // read); one left by an earlier run would hold them back until it expires.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), SYSTEM_NS);
    leases.delete(LEASE, &DeleteParams::default()).await.ok();

    // Every Job ever created, by owner.
    let created: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let seen = created.clone();
    let job_watch = tokio::spawn(
        watcher(jobs.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .for_each(move |j| {
                if let Ok(job) = j
                    && let Some(owner) = job.annotations().get("kubernaut.ai/workflow-execution")
                {
                    seen.lock()
                        .unwrap()
                        .entry(owner.clone())
                        .or_default()
                        .insert(job.uid().unwrap_or_default());
                }
                futures::future::ready(())
            }),
    );

    let dir = std::env::temp_dir().join(format!("we-operator-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = operator_kubeconfig(&client, &dir).await;
    let audit = AuditReceiver::start().await.unwrap();
    let audit_url = audit.url.clone();
    let logs = wfe_testing::repo_root().join("target/chaos");
    std::fs::create_dir_all(&logs).unwrap();
    let extra = [
        "--cooldown",
        "1s",
        "--lease-duration-seconds",
        "10",
        "--lease-name",
        LEASE,
    ];
    let mut generation = 0;
    let spawn = |generation: &mut usize| {
        *generation += 1;
        let id = format!("chaos-replica-{generation}");
        let log = logs.join(format!("{id}.log"));
        (
            Operator::spawn(&kubeconfig, &audit_url, &log, &id, &extra),
            log,
        )
    };
    // The kubelet's part: restart replicas that exited, accepting only a documented exit.
    let mut restarts: Vec<String> = Vec::new();
    let mut supervise = |replicas: &mut Vec<(Operator, std::path::PathBuf)>,
                         generation: &mut usize| {
        let mut i = 0;
        while i < replicas.len() {
            let Some(status) = replicas[i].0.child.try_wait().unwrap() else {
                i += 1;
                continue;
            };
            let (_, log) = replicas.remove(i);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                text.contains("leadership lost"),
                "{} exited ({status}) for a reason other than a lost Lease; log tail:\n{}",
                log.display(),
                text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
            restarts.push(log.display().to_string());
            replicas.push(spawn(generation));
        }
    };
    let mut replicas = vec![spawn(&mut generation), spawn(&mut generation)];

    for i in 0..executions {
        wfes.create(&PostParams::default(), &request(i))
            .await
            .unwrap();
    }

    // Kill the leader again and again; measure how long the other takes to lead.
    let mut failovers = Vec::new();
    for k in 0..kills {
        let leader = wait_leader(&mut replicas, &mut generation, &mut supervise).await;
        tokio::time::sleep(Duration::from_millis(300 + (k as u64 * 577) % 1500)).await;
        if k == kills / 2 {
            audit.set_down(true);
        }
        let (victim, _) = replicas.remove(leader);
        let pid = victim.pid().to_string();
        tokio::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await
            .unwrap();
        let killed = Instant::now();
        drop(victim); // reaped on drop
        replicas.push(spawn(&mut generation));
        wait_leader(&mut replicas, &mut generation, &mut supervise).await;
        failovers.push(killed.elapsed());
        if k == kills / 2 {
            tokio::time::sleep(Duration::from_secs(outage)).await;
            audit.set_down(false);
        }
    }

    // kube-apiserver restarts under the running replicas, with more requests in flight.
    let more = (executions / 4).max(5);
    for i in executions..executions + more {
        wfes.create(&PostParams::default(), &request(i))
            .await
            .unwrap();
    }
    let root = wfe_testing::repo_root();
    let restarted = tokio::task::spawn_blocking(move || {
        std::process::Command::new("cargo")
            .args(["xtask", "cluster", "restart", "kube-apiserver"])
            .current_dir(root)
            .status()
    })
    .await
    .unwrap()
    .expect("cargo xtask cluster restart");
    assert!(restarted.success(), "kube-apiserver restart failed");
    let restarted_at = Instant::now();
    let total = executions + more;

    // Everything ends, with the right outcome; replicas that lost their Lease while the API
    // server was away are restarted as the kubelet would.
    let deadline = Instant::now() + Duration::from_secs(600);
    let all = loop {
        supervise(&mut replicas, &mut generation);
        if let Ok(list) = wfes.list(&ListParams::default()).await
            && list.items.len() == total
            && list.items.iter().all(|w| w.phase().is_terminal())
        {
            break list.items;
        }
        assert!(
            Instant::now() < deadline,
            "not every request was terminal within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let recovery = restarted_at.elapsed();
    supervise(&mut replicas, &mut generation);
    for w in &all {
        let i: usize = w.name_any()[6..].parse().unwrap();
        let s = w.status.as_ref().unwrap();
        if i % 3 == 2 {
            assert_eq!(w.phase(), Phase::Failed, "{}", w.name_any());
            let d = s.failure_details.as_ref().unwrap();
            assert_eq!(
                (d.reason, d.exit_code),
                (FailureReason::TaskFailed, Some(2)),
                "{}: {}",
                w.name_any(),
                d.message
            );
        } else {
            assert_eq!(
                w.phase(),
                Phase::Succeeded,
                "{}: {:?}",
                w.name_any(),
                s.failure_details
            );
        }
    }
    // No WorkflowExecution got a second Job.
    let created = created.lock().unwrap().clone();
    let duplicates: Vec<_> = created.iter().filter(|(_, uids)| uids.len() > 1).collect();
    assert!(duplicates.is_empty(), "Jobs created twice: {duplicates:?}");
    assert_eq!(created.len(), total, "every request ran exactly once");
    // Every expected audit event arrived (duplicates allowed, none missing).
    let expected: BTreeSet<(String, String)> = all
        .iter()
        .flat_map(|w| {
            let last = if w.phase() == Phase::Succeeded {
                "workflowexecution.workflow.completed"
            } else {
                "workflowexecution.workflow.failed"
            };
            [
                "workflowexecution.selection.completed",
                "workflowexecution.execution.started",
                last,
            ]
            .into_iter()
            .map(move |t| (w.name_any(), t.to_string()))
        })
        .collect();
    let missing = wfe_testing::wait_for("every audit event", Duration::from_secs(180), || async {
        let got: BTreeSet<(String, String)> = audit
            .events()
            .iter()
            .map(|e| {
                (
                    e["resource_id"].as_str().unwrap_or_default().to_string(),
                    e["event_type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let missing: Vec<_> = expected.difference(&got).cloned().collect();
        missing.is_empty().then_some(missing)
    })
    .await;
    assert!(missing.is_empty());
    let delivered = audit.len();
    let unique: BTreeSet<String> = audit
        .events()
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(String::from))
        .collect();

    let max_failover = failovers.iter().max().copied().unwrap_or_default();
    let report = json!({
        "executions": total,
        "apiserver_restarts": 1,
        "replica_restarts_after_lost_lease": restarts.len(),
        "all_terminal_after_apiserver_restart_seconds": recovery.as_secs_f64(),
        "leader_kills": kills,
        "audit_outage_seconds": outage,
        "failover_seconds": failovers.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
        "max_failover_seconds": max_failover.as_secs_f64(),
        "jobs_created": created.len(),
        "duplicate_jobs": 0,
        "audit_events_received": delivered,
        "audit_event_ids_unique": unique.len(),
        "audit_events_missing": 0,
        "elapsed_seconds": started.elapsed().as_secs_f64(),
    });
    println!("chaos report: {report:#}");
    std::fs::write(
        wfe_testing::repo_root().join("target/chaos.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    assert!(
        max_failover < Duration::from_secs(10 + 10),
        "failover took {max_failover:?} (lease 10 s)"
    );
    job_watch.abort();
    drop(replicas);
}

/// Waits (at most 60 s) for a leader among the replicas, restarting any that exited.
async fn wait_leader<S>(
    replicas: &mut Vec<(Operator, std::path::PathBuf)>,
    generation: &mut usize,
    supervise: &mut S,
) -> usize
where
    S: FnMut(&mut Vec<(Operator, std::path::PathBuf)>, &mut usize),
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        supervise(replicas, generation);
        for (i, (r, _)) in replicas.iter().enumerate() {
            if r.is_leader().await {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
