//! Where the time goes: CPU of every process of the run and of the whole machine, the API
//! server's own request latencies and Priority-and-Fairness queueing, and a calibration of single
//! API calls on the idle API server.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use wfe_api::WorkflowExecution;

use crate::{
    operator,
    prom::{self, Counts},
    report::{Stats, r1, r3},
    setup::{BENCH_NS, EXEC_NS},
    workload,
};

/// The control-plane processes, from the cluster state next to the kubeconfig.
pub fn cluster_pids(kubeconfig: &Path) -> Vec<(String, u32)> {
    let Some(path) = kubeconfig.parent().map(|d| d.join("cluster.json")) else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    state["components"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["pid"].as_u64()? as u32)))
                .collect()
        })
        .unwrap_or_default()
}

/// Busy CPU seconds of the whole machine (all CPUs) since boot, from /proc/stat.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| v.get(*i)).sum();
    busy / 100.0
}

/// Everything read at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    at: Option<Instant>,
    cpu: BTreeMap<String, f64>,
    machine: f64,
    apiserver_sum: Counts,
    apiserver_count: Counts,
    apf_wait_sum: Counts,
    apf_wait_count: Counts,
}

fn apiserver_key(l: &prom::Labels) -> Option<String> {
    let verb = prom::label(l, "verb");
    if matches!(verb, "WATCH" | "CONNECT") {
        return None;
    }
    let resource = prom::label(l, "resource");
    if resource.is_empty() {
        return None;
    }
    let sub = prom::label(l, "subresource");
    Some(if sub.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource}/{sub}")
    })
}

/// Takes a snapshot: CPU of the operator (`operator_pid`), the control plane and this driver, the
/// machine, and the API server's metrics.
pub async fn snapshot(
    client: &Client,
    cluster: &[(String, u32)],
    operator_pid: Option<u32>,
) -> Snapshot {
    let mut cpu = BTreeMap::new();
    if let Some(pid) = operator_pid
        && let Ok(c) = operator::cpu_seconds(pid)
    {
        cpu.insert("we-operator".to_string(), c);
    }
    for (name, pid) in cluster {
        if let Ok(c) = operator::cpu_seconds(*pid) {
            cpu.insert(name.clone(), c);
        }
    }
    if let Ok(c) = operator::cpu_seconds(std::process::id()) {
        cpu.insert("wfe-bench (driver)".to_string(), c);
    }
    let machine = machine_busy_seconds();
    let text = match http::Request::get("/metrics").body(Vec::new()) {
        Ok(req) => client.request_text(req).await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    Snapshot {
        at: Some(Instant::now()),
        cpu,
        machine,
        apiserver_sum: prom::sum_by(
            &text,
            "apiserver_request_duration_seconds_sum",
            apiserver_key,
        ),
        apiserver_count: prom::sum_by(
            &text,
            "apiserver_request_duration_seconds_count",
            apiserver_key,
        ),
        apf_wait_sum: prom::sum_by(
            &text,
            "apiserver_flowcontrol_request_wait_duration_seconds_sum",
            |l| Some(prom::label(l, "priority_level").to_string()),
        ),
        apf_wait_count: prom::sum_by(
            &text,
            "apiserver_flowcontrol_request_wait_duration_seconds_count",
            |l| Some(prom::label(l, "priority_level").to_string()),
        ),
    }
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Usage {
    /// Wall time, seconds.
    pub wall_s: f64,
    /// CPU seconds by process; `other processes` is the rest of the machine.
    pub cpu_s: BTreeMap<String, f64>,
    /// Share of the machine's CPUs that was busy (1.0 = every CPU all the time).
    pub machine_busy: f64,
    /// API server requests (every client) during the interval: count and mean latency (ms), by
    /// `VERB resource`.
    pub apiserver_requests: BTreeMap<String, (u64, f64)>,
    /// Mean Priority-and-Fairness queue wait (ms) by priority level.
    pub apf_wait_ms: BTreeMap<String, f64>,
}

/// The difference between two snapshots.
pub fn usage(before: &Snapshot, after: &Snapshot, cpus: usize) -> Usage {
    let wall = match (before.at, after.at) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let mut cpu_s = BTreeMap::new();
    let mut ours = 0.0;
    for (k, v) in &after.cpu {
        let d = v - before.cpu.get(k).copied().unwrap_or_default();
        ours += d;
        cpu_s.insert(k.clone(), r3(d));
    }
    let machine = after.machine - before.machine;
    cpu_s.insert("other processes".to_string(), r3((machine - ours).max(0.0)));
    let counts = prom::delta(&before.apiserver_count, &after.apiserver_count);
    let sums = prom::delta(&before.apiserver_sum, &after.apiserver_sum);
    let apiserver_requests = counts
        .iter()
        .map(|(k, n)| {
            let mean = sums.get(k).copied().unwrap_or_default() / n * 1000.0;
            (k.clone(), (*n as u64, r1(mean)))
        })
        .collect();
    let wait_n = prom::delta(&before.apf_wait_count, &after.apf_wait_count);
    let wait_s = prom::delta(&before.apf_wait_sum, &after.apf_wait_sum);
    let apf_wait_ms = wait_n
        .iter()
        .map(|(k, n)| {
            (
                k.clone(),
                r3(wait_s.get(k).copied().unwrap_or_default() / n * 1000.0),
            )
        })
        .collect();
    Usage {
        wall_s: r3(wall),
        cpu_s,
        machine_busy: if wall > 0.0 && cpus > 0 {
            r3(machine / (wall * cpus as f64))
        } else {
            0.0
        },
        apiserver_requests,
        apf_wait_ms,
    }
}

/// Latency of single API calls, one at a time, on the idle API server (no operator running).
pub async fn calibrate(
    client: &Client,
    subject: &crate::subject::Subject,
    rounds: usize,
) -> Result<BTreeMap<String, Stats>> {
    let wfes = crate::subject::executions(client);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), BENCH_NS);
    let jobs: Api<Job> = Api::namespaced(client.clone(), EXEC_NS);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), EXEC_NS);
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut time = |what: &str, t: Instant| {
        samples
            .entry(what.to_string())
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1000.0);
    };
    let pp = PostParams::default();
    let merge = PatchParams::default();
    for i in 0..rounds {
        let name = workload::name("calibrate", i);
        let t = Instant::now();
        wfes.create(&pp, &serde_json::from_value(subject.execution(&name))?)
            .await?;
        time("create workflowexecutions", t);
        let t = Instant::now();
        wfes.patch(
            &name,
            &merge,
            &Patch::Merge(json!({"metadata": {"finalizers": ["kubernaut.ai/calibration"]}})),
        )
        .await?;
        time("patch workflowexecutions (add a finalizer)", t);
        let t = Instant::now();
        wfes.patch_status(
            &name,
            &merge,
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await?;
        time("patch workflowexecutions/status", t);
        let t = Instant::now();
        sas.get_metadata("kubernaut-workflow-runner").await?;
        time("get serviceaccounts (metadata)", t);
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "wfe-bench-calibration"}},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "workflow", "image": "registry.example.com/x@sha256:3c1f9a0e7b5d4c2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a"}]}}}
        }))?;
        let t = Instant::now();
        jobs.create(&pp, &job).await?;
        time("create jobs", t);
        let t = Instant::now();
        jobs.get(&name).await?;
        time("get jobs", t);
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"a": "b"}}))?;
        let t = Instant::now();
        cms.create(&pp, &cm).await?;
        time("create configmaps (baseline)", t);
        let t = Instant::now();
        cms.patch(&name, &merge, &Patch::Merge(json!({"data": {"a": "c"}})))
            .await?;
        time("patch configmaps (baseline)", t);
        let t = Instant::now();
        jobs.delete(&name, &DeleteParams::background()).await?;
        time("delete jobs", t);
        cms.delete(&name, &DeleteParams::default()).await?;
        wfes.patch(
            &name,
            &merge,
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
        wfes.delete(&name, &DeleteParams::default())
            .await
            .context("cleaning up the calibration")?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(samples
        .into_iter()
        .map(|(k, v)| (k, Stats::of(v)))
        .collect())
}

/// What the operator's cache of WorkflowExecutions costs, modelled with the same types and
/// allocator: a fresh process (this binary with `--memory-probe`) lists the objects of the bench
/// namespace and keeps them as the operator's reflector keeps them (`Arc<WorkflowExecution>`),
/// once as they come, once with `metadata.managedFields` dropped on arrival, and once as the
/// operator keeps them (`wfe_controller::cache`: managedFields dropped, a settled object only as
/// its guard summary in the `TargetIndex`, others whole).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MemoryModel {
    /// Objects listed.
    pub objects: usize,
    /// Mean size of one object as JSON, bytes.
    pub json_bytes: f64,
    /// The same without managedFields.
    pub json_bytes_without_managed_fields: f64,
    /// Mean number of managedFields entries.
    pub managed_fields_entries: f64,
    /// Resident memory per object kept as received, KiB.
    pub rss_kib_per_object: f64,
    /// Resident memory per object kept without managedFields, KiB.
    pub rss_kib_per_object_without_managed_fields: f64,
    /// Resident memory per object kept as the operator keeps it, KiB.
    pub rss_kib_per_object_as_kept: f64,
    /// Share of the objects that were settled (kept as a guard summary only).
    pub settled_share: f64,
}

/// What one probe process measured.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProbeOutput {
    /// Objects kept.
    pub objects: usize,
    /// VmRSS growth while listing and keeping them, KiB.
    pub rss_growth_kib: f64,
    /// Mean JSON size of what was kept, bytes.
    pub json_bytes: f64,
    /// Mean managedFields entries as received.
    pub managed_fields_entries: f64,
    /// Objects settled (kept as a summary in `kept` mode).
    #[serde(default)]
    pub settled: usize,
}

/// The probe itself (run in a fresh process): lists and keeps every object of the bench namespace.
pub async fn memory_probe(client: &Client, mode: &str) -> Result<ProbeOutput> {
    let api: Api<WorkflowExecution> = Api::namespaced(client.clone(), BENCH_NS);
    let rss = || operator::memory_kib(std::process::id()).map(|(rss, _)| rss as f64);
    let base = rss()?;
    let mut kept = Vec::new();
    let index = wfe_controller::TargetIndex::default();
    let (mut bytes, mut entries, mut settled) = (0usize, 0usize, 0usize);
    let mut lp = kube::api::ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        for mut w in page.items {
            entries += w.metadata.managed_fields.as_ref().map_or(0, Vec::len);
            match mode {
                "stripped" => w.metadata.managed_fields = None,
                "kept" => {
                    wfe_controller::cache::strip(&mut w);
                    bytes += serde_json::to_vec(&w)?.len();
                    if index.insert(&w) {
                        settled += 1;
                        continue;
                    }
                }
                _ => {}
            }
            if mode != "kept" {
                bytes += serde_json::to_vec(&w)?.len();
            }
            kept.push(std::sync::Arc::new(w));
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    let n = (kept.len() + settled).max(1) as f64;
    Ok(ProbeOutput {
        objects: kept.len() + settled,
        rss_growth_kib: rss()? - base,
        json_bytes: bytes as f64 / n,
        managed_fields_entries: entries as f64 / n,
        settled,
    })
}

/// Runs the probe in three fresh processes (`args` are this run's arguments) and sums it up.
pub async fn memory_model(args: &[std::ffi::OsString]) -> Result<MemoryModel> {
    let exe = std::env::current_exe()?;
    let mut outputs = Vec::new();
    for mode in ["full", "stripped", "kept"] {
        let out = tokio::process::Command::new(&exe)
            .args(args)
            .args(["--memory-probe", mode])
            .output()
            .await?;
        if !out.status.success() {
            anyhow::bail!(
                "the memory probe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let p: ProbeOutput =
            serde_json::from_slice(&out.stdout).context("the memory probe printed no result")?;
        outputs.push(p);
    }
    let (full, stripped, as_kept) = (&outputs[0], &outputs[1], &outputs[2]);
    let per = |p: &ProbeOutput| r3(p.rss_growth_kib.max(0.0) / p.objects.max(1) as f64);
    Ok(MemoryModel {
        objects: full.objects,
        json_bytes: r1(full.json_bytes),
        json_bytes_without_managed_fields: r1(stripped.json_bytes),
        managed_fields_entries: r3(full.managed_fields_entries),
        rss_kib_per_object: per(full),
        rss_kib_per_object_without_managed_fields: per(stripped),
        rss_kib_per_object_as_kept: per(as_kept),
        settled_share: r3(as_kept.settled as f64 / as_kept.objects.max(1) as f64),
    })
}
