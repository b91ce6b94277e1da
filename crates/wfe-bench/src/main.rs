//! `wfe-bench`: the driver of `cargo xtask bench` (issue #11).
//!
//! Measures the release `we-operator` on the local control plane started WITHOUT node components
//! (etcd + kube-apiserver only: nothing but the operator and this driver touches Jobs). The driver
//! plays the Job controller: it watches Jobs and completes each one by patching its status a hold
//! time after it appeared. Workloads (Job engine, one distinct target per execution so that no
//! guard ever holds one back):
//!
//! 1. bursts of 1, 100 and 1000 WorkflowExecutions created as fast as the client allows;
//! 2. a steady 10 executions/s for 30 s;
//! 3. 10 000 finished WorkflowExecutions present when the operator starts, then 100 new ones.
//!
//! Every workload gets a fresh operator process (watching only the bench namespace) and a clean
//! namespace. Results go to `--out` (JSON) and, with `--docs`, into the generated part of
//! docs/benchmarks.md.

mod compare;
mod operator;
mod probe;
mod prom;
mod report;
mod setup;
mod subject;
mod tracker;
mod workload;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use kube::Client;
use operator::{Launch, Operator};
use prom::{Counts, delta};
use report::{Reference, Results, Scale, Stats, Workload, mib, r1, r3};
use tracker::{Observed, Tracker};
use wfe_testing::audit::AuditReceiver;

/// How long a Job "runs" before the driver completes it.
const HOLD: Duration = Duration::from_secs(1);
/// A steady workload is preceded by this long at the same rate, not measured, so that it measures
/// a warm operator (connections open, first pre-flight checks done).
const WARMUP: Duration = Duration::from_secs(3);

#[derive(Parser, Debug)]
#[command(
    name = "wfe-bench",
    about = "Measures we-operator on the local control plane (run it through `cargo xtask bench`)"
)]
struct Args {
    /// The operator binary (a release build).
    #[arg(long)]
    operator: PathBuf,
    /// Admin kubeconfig of the local cluster.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Repository root (for deploy/).
    #[arg(long)]
    repo: PathBuf,
    /// Where to write the JSON results.
    #[arg(long)]
    out: PathBuf,
    /// Markdown file whose generated section is replaced with the results.
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Reduced sizes for trying the bench out (not for publishing).
    #[arg(long)]
    quick: bool,
    /// The operator's --log-level (e.g. `debug` to trace a run; it slows the operator down).
    #[arg(long, default_value = "warn")]
    operator_log_level: String,
    /// Internal: list the bench's WorkflowExecutions, keep them, print the memory growth (JSON) and
    /// exit (`full`, `stripped` of managedFields, or `kept` as the operator keeps them). Run in a
    /// fresh process by the scale phase.
    #[arg(long, hide = true)]
    memory_probe: Option<String>,
    /// Run only these phases (for investigating one; --docs is then ignored).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Phase>,
    /// Measure the reference Go controller instead of we-operator: its built
    /// `cmd/workflowexecution` binary (see `cargo xtask bench --reference`).
    #[arg(long, requires_all = ["reference_crd", "reference_commit"])]
    reference_binary: Option<PathBuf>,
    /// The reference's WorkflowExecution CRD (it replaces ours on this cluster).
    #[arg(long)]
    reference_crd: Option<PathBuf>,
    /// The commit the reference was built from (recorded in the results).
    #[arg(long)]
    reference_commit: Option<String>,
    /// Compare two results files (ours, then the reference's, each next to its samples-*.csv):
    /// writes the side-by-side JSON to --out, the pictures next to --docs and the table into it.
    #[arg(long, num_args = 2, value_names = ["OURS", "REFERENCE"])]
    compare: Vec<PathBuf>,
    /// A note on how the cluster was prepared, for the report.
    #[arg(
        long,
        default_value = "etcd + kube-apiserver only (no controller-manager, scheduler or kwok)"
    )]
    cluster: String,
}

/// The phases of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Bursts,
    Steady,
    Scale,
}

/// Sizes of the run.
#[derive(Debug, Clone)]
struct Plan {
    bursts: Vec<usize>,
    steady_rate: u32,
    steady_for: Duration,
    existing: usize,
    new_on_top: usize,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            bursts: vec![1, 100, 1000],
            steady_rate: 10,
            steady_for: Duration::from_secs(30),
            existing: 10_000,
            new_on_top: 100,
        }
    }

    fn quick() -> Plan {
        Plan {
            bursts: vec![1, 20, 200],
            steady_rate: 10,
            steady_for: Duration::from_secs(5),
            existing: 1000,
            new_on_top: 20,
        }
    }
}

/// What a workload does.
#[derive(Debug, Clone, Copy)]
enum Load {
    Burst(usize),
    Steady { rate: u32, duration: Duration },
}

impl Load {
    fn count(self) -> usize {
        match self {
            Load::Burst(n) => n,
            Load::Steady { rate, duration } => {
                (f64::from(rate) * duration.as_secs_f64()).round() as usize
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Latencies between two maps of instants, for the names in `from`.
fn latencies(
    from: &std::collections::HashMap<String, Instant>,
    to: &std::collections::HashMap<String, Instant>,
) -> Vec<f64> {
    from.iter()
        .filter_map(|(n, a)| to.get(n).map(|b| ms(b.saturating_duration_since(*a))))
        .collect()
}

/// API counts per execution: (total, by verb, by `verb resource`).
fn per_execution(counts: &Counts, n: usize) -> (f64, BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let n = n.max(1) as f64;
    let mut by_verb: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = 0.0;
    for (request, v) in counts {
        total += v;
        let verb = request.split_whitespace().next().unwrap_or("").to_string();
        *by_verb.entry(verb).or_default() += v;
    }
    (r3(total / n), per(&by_verb, n), per(counts, n))
}

/// Every value divided by `n`.
fn per(counts: &Counts, n: f64) -> BTreeMap<String, f64> {
    counts.iter().map(|(k, v)| (k.clone(), r3(v / n))).collect()
}

/// Context shared by the workloads.
struct Bench {
    /// This run's command-line arguments (for the memory probe processes).
    args: Vec<std::ffi::OsString>,
    client: Client,
    launch: Launch,
    audit: AuditReceiver,
    peak_kib: u64,
    cluster: Vec<(String, u32)>,
    cpus: usize,
    /// Whether every reference process had the token its audit client reads.
    audit_token_mounted: bool,
}

/// Writes one line per execution: its instants in ms after the first create was sent.
fn write_samples(path: &std::path::Path, o: &Observed) -> Result<()> {
    let Some(t0) = o.create_sent.values().min().copied() else {
        return Ok(());
    };
    let at = |m: &std::collections::HashMap<String, Instant>, n: &str| {
        m.get(n)
            .map(|t| format!("{:.1}", ms(t.saturating_duration_since(t0))))
            .unwrap_or_default()
    };
    let mut names: Vec<&String> = o.create_sent.keys().collect();
    names.sort();
    // The wall clock of t0, to line the samples up with timestamps of logs.
    let t0_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| ms(d) - ms(t0.elapsed()))
        .unwrap_or_default();
    let mut out = format!(
        "# t0_unix_ms={t0_unix_ms:.1}\nname,create_sent_ms,create_done_ms,job_seen_ms,complete_sent_ms,succeeded_seen_ms,released_seen_ms\n"
    );
    for n in names {
        out.push_str(&format!(
            "{n},{},{},{},{},{},{}\n",
            at(&o.create_sent, n),
            at(&o.create_done, n),
            at(&o.job_seen, n),
            at(&o.complete_sent, n),
            at(&o.succeeded, n),
            at(&o.released, n)
        ));
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// Wall-clock milliseconds (Unix) of an instant of this process.
fn unix_ms(t: Instant) -> f64 {
    let now = Instant::now();
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(ms)
        .unwrap_or_default();
    if t <= now {
        unix_now - ms(now - t)
    } else {
        unix_now + ms(t - now)
    }
}

/// Samples slower than 50 ms, and how many of them started within 400 ms after a whole second of
/// the wall clock (40 % of them would by chance; lock releases used to be scheduled at whole
/// seconds, see docs/benchmarks.md), and how many overlap a stall of the API server: a create call
/// of the driver itself that took more than 25 ms.
fn slow_samples(o: &Observed) -> report::SlowSamples {
    let stalls: Vec<(Instant, Instant)> = o
        .create_sent
        .iter()
        .filter_map(|(n, a)| Some((*a, *o.create_done.get(n)?)))
        .filter(|(a, b)| ms(b.saturating_duration_since(*a)) > 25.0)
        .collect();
    let count = |from: &std::collections::HashMap<String, Instant>,
                 to: &std::collections::HashMap<String, Instant>| {
        let (mut over, mut in_window, mut in_stall) = (0, 0, 0);
        for (n, a) in from {
            let Some(b) = to.get(n) else { continue };
            if ms(b.saturating_duration_since(*a)) > 50.0 {
                over += 1;
                if unix_ms(*a).rem_euclid(1000.0) < 400.0 {
                    in_window += 1;
                }
                if stalls.iter().any(|(s, e)| s <= b && e >= a) {
                    in_stall += 1;
                }
            }
        }
        (over, in_window, in_stall)
    };
    let (dispatch_over_50ms, dispatch_started_in_window, dispatch_in_stall) =
        count(&o.create_sent, &o.job_seen);
    let (completion_over_50ms, completion_started_in_window, completion_in_stall) =
        count(&o.complete_sent, &o.succeeded);
    report::SlowSamples {
        dispatch_over_50ms,
        dispatch_started_in_window,
        completion_over_50ms,
        completion_started_in_window,
        dispatch_in_stall,
        completion_in_stall,
    }
}

/// Summary of the observation of one workload (the operator part is filled in by the caller).
fn summarize(
    name: &str,
    description: &str,
    requested: usize,
    o: &Observed,
    timed_out: bool,
) -> Workload {
    let dispatch = latencies(&o.create_sent, &o.job_seen);
    let completion = latencies(&o.complete_sent, &o.succeeded);
    let create_call = latencies(&o.create_sent, &o.create_done);
    let first_create = o.create_sent.values().min().copied();
    let last_job = o.job_seen.values().max().copied();
    let last_release = o.released.values().max().copied();
    let window = match (first_create, last_job) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let wall = match (first_create, last_release) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    Workload {
        slow_samples: slow_samples(o),
        name: name.into(),
        description: description.into(),
        executions: requested,
        created: o.create_done.len(),
        dispatched: o.job_seen.len(),
        succeeded: o.succeeded.len(),
        failed: o.failed.len(),
        released: o.released.len(),
        timed_out,
        dispatch_latency_ms: Stats::of(dispatch),
        completion_propagation_ms: Stats::of(completion),
        create_call_ms: Stats::of(create_call),
        dispatch_throughput_per_s: if window > 0.0 {
            r1(o.job_seen.len() as f64 / window)
        } else {
            0.0
        },
        dispatch_window_s: r3(window),
        wall_s: r3(wall),
        errors: o.errors.iter().take(5).cloned().collect(),
        failures: o
            .failed
            .iter()
            .take(5)
            .map(|(n, r)| format!("{n}: {r}"))
            .collect(),
        ..Default::default()
    }
}

impl Bench {
    fn subject(&self) -> &subject::Subject {
        &self.launch.subject
    }

    /// One workload on a fresh operator and a clean namespace.
    async fn run(
        &mut self,
        name: &str,
        prefix: &str,
        description: &str,
        load: Load,
    ) -> Result<Workload> {
        eprintln!("==> {name}: {description}");
        workload::clean(&self.client).await?;
        let tracker = Arc::new(Tracker::start(&self.client, prefix, HOLD, self.subject()).await?);
        let op = Operator::start(&self.launch, setup::BENCH_NS, prefix).await?;
        self.audit_token_mounted &= op.audit_token_mounted;
        op.settle(Duration::from_millis(300), 0.01, Duration::from_secs(10))
            .await;
        if let Load::Steady { rate, .. } = load {
            let warm =
                Arc::new(Tracker::start(&self.client, "warmup", HOLD, self.subject()).await?);
            let n =
                workload::steady(&self.client, self.subject(), &warm, "warmup", rate, WARMUP).await;
            warm.wait_finished(n, Duration::from_secs(60)).await;
            warm.finish();
        }
        let n = load.count();
        let (w, hwm) = self
            .measure(&op, &tracker, name, prefix, description, load, n)
            .await?;
        let hwm = hwm.max(op.stop().await?);
        self.peak_kib = self.peak_kib.max(hwm);
        let mut w = w;
        w.operator_peak_rss_mib = mib(hwm);
        eprintln!(
            "    dispatch p50/p99 {}/{} ms, completion p50/p99 {}/{} ms, {} dispatched/s, {} API calls and {} CPU ms per execution",
            w.dispatch_latency_ms.p50,
            w.dispatch_latency_ms.p99,
            w.completion_propagation_ms.p50,
            w.completion_propagation_ms.p99,
            w.dispatch_throughput_per_s,
            w.api_calls_per_execution,
            w.operator_cpu_ms_per_execution
        );
        Ok(w)
    }

    /// Runs `load` against a ready operator and measures it.
    #[allow(clippy::too_many_arguments)]
    async fn measure(
        &self,
        op: &Operator,
        tracker: &Arc<Tracker>,
        name: &str,
        prefix: &str,
        description: &str,
        load: Load,
        n: usize,
    ) -> Result<(Workload, u64)> {
        let metrics_before = op.metrics().await?;
        let cpu_before = op.cpu_seconds()?;
        let (audit_before, again_before) = self.audit.counts();
        let snap_before = probe::snapshot(&self.client, &self.cluster, Some(op.pid())).await;
        match load {
            Load::Burst(n) => {
                workload::burst(&self.client, self.subject(), tracker, prefix, n).await
            }
            Load::Steady { rate, duration } => {
                workload::steady(
                    &self.client,
                    self.subject(),
                    tracker,
                    prefix,
                    rate,
                    duration,
                )
                .await;
            }
        }
        let limit = Duration::from_secs(120) + Duration::from_millis(300) * n as u32;
        let finished = tracker.wait_finished(n, limit).await;
        // Work that trails the last outcome belongs to the workload. Ours queues its Events (at
        // most 15 s late under saturation): wait until it is idle. The reference publishes its
        // Events inside its reconciles, and its 10 s requeues never let it idle: one second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if matches!(self.subject(), subject::Subject::Ours) {
            op.settle(Duration::from_millis(500), 0.005, Duration::from_secs(30))
                .await;
        }
        let snap_after = probe::snapshot(&self.client, &self.cluster, Some(op.pid())).await;
        let metrics_after = op.metrics().await?;
        let cpu = op.cpu_seconds()? - cpu_before;
        let (audit_after, again_after) = self.audit.counts();
        let (rss, hwm) = op.memory_kib()?;
        let observed = tracker.finish();
        let csv = self.launch.log_dir.join(format!("samples-{prefix}.csv"));
        if let Err(e) = write_samples(&csv, &observed) {
            eprintln!("warning: cannot write {}: {e}", csv.display());
        }
        let mut w = summarize(name, description, n, &observed, !finished);
        let nf = n.max(1) as f64;
        let subject = self.subject();
        let calls = delta(
            &subject.api_counts(&metrics_before),
            &subject.api_counts(&metrics_after),
        );
        let (total, by_verb, by_request) = per_execution(&calls, n);
        w.operator_cpu_s = r3(cpu);
        w.operator_cpu_ms_per_execution = r3(cpu * 1000.0 / nf);
        w.api_calls_per_execution = total;
        w.api_calls_per_execution_by_verb = by_verb;
        w.api_calls_per_execution_by_request = by_request;
        w.reconcile_errors_per_execution = per(
            &delta(
                &subject.reconcile_errors(&metrics_before),
                &subject.reconcile_errors(&metrics_after),
            ),
            nf,
        );
        let audit = delta(&audit_before, &audit_after);
        w.audit_events_per_execution = r3(audit.values().sum::<f64>() / nf);
        w.audit_events_per_execution_by_type = per(&audit, nf);
        w.audit_redeliveries_per_execution_by_type = per(&delta(&again_before, &again_after), nf);
        w.usage = probe::usage(&snap_before, &snap_after, self.cpus);
        let stack: f64 = w
            .usage
            .cpu_s
            .iter()
            .filter(|(k, _)| k.as_str() != "other processes")
            .map(|(_, v)| v)
            .sum();
        w.stack_cpu_ms_per_execution = r1(stack * 1000.0 / nf);
        if stack > 0.0 {
            w.cpu_bound_executions_per_s = r1(self.cpus as f64 * nf / stack);
        }
        w.operator_ready_s = r3(op.ready_after.as_secs_f64());
        w.operator_rss_end_mib = mib(rss);
        Ok((w, hwm))
    }

    /// The operator starting with `existing` finished WorkflowExecutions, then `new` more.
    async fn scale(&mut self, existing: usize, new: usize) -> Result<(Scale, Workload)> {
        let name = format!("with-{existing}-finished");
        let description = format!(
            "{new} new executions created at once while the operator holds {existing} finished ones in its cache"
        );
        eprintln!("==> {name}: creating {existing} finished WorkflowExecutions (operator stopped)");
        workload::clean(&self.client).await?;
        let create =
            workload::create_finished(&self.client, self.subject(), "old", existing).await?;
        eprintln!(
            "    created in {:.1} s; starting the operator",
            create.as_secs_f64()
        );
        let tracker = Arc::new(Tracker::start(&self.client, "new", HOLD, self.subject()).await?);
        let op = Operator::start(&self.launch, setup::BENCH_NS, "scale").await?;
        self.audit_token_mounted &= op.audit_token_mounted;
        let settle = op
            .settle(Duration::from_secs(1), 0.02, Duration::from_secs(180))
            .await;
        let startup_calls = self.subject().api_counts(&op.metrics().await?);
        let startup_cpu = op.cpu_seconds()?;
        let (rss_idle, _) = op.memory_kib()?;
        eprintln!(
            "    ready after {:.2} s, idle {:.1} s later, {:.1} MiB RSS idle; {description}",
            op.ready_after.as_secs_f64(),
            settle.as_secs_f64(),
            mib(rss_idle)
        );
        let (mut w, hwm) = self
            .measure(
                &op,
                &tracker,
                &name,
                "new",
                &description,
                Load::Burst(new),
                new,
            )
            .await?;
        let (rss_after, _) = op.memory_kib()?;
        let hwm = hwm.max(op.stop().await?);
        eprintln!(
            "    modelling the cache of {existing} objects in fresh processes (as received, without managedFields, as the operator keeps them)"
        );
        let model = match self.subject() {
            subject::Subject::Ours => probe::memory_model(&self.args).await?,
            // The model is of our own cache's types; it says nothing about the reference.
            subject::Subject::Reference(_) => probe::MemoryModel::default(),
        };
        eprintln!(
            "    {} objects: {} JSON bytes each ({} without managedFields); {} KiB resident each as received, {} KiB without managedFields, {} KiB as the operator keeps them ({} settled: guard summary only)",
            model.objects,
            model.json_bytes,
            model.json_bytes_without_managed_fields,
            model.rss_kib_per_object,
            model.rss_kib_per_object_without_managed_fields,
            model.rss_kib_per_object_as_kept,
            model.settled_share
        );
        self.peak_kib = self.peak_kib.max(hwm);
        w.operator_peak_rss_mib = mib(hwm);
        let scale = Scale {
            existing,
            create_s: r1(create.as_secs_f64()),
            ready_s: r3(w.operator_ready_s),
            settle_s: r1(settle.as_secs_f64()),
            startup_cpu_s: r3(startup_cpu),
            startup_api_calls: startup_calls,
            rss_idle_mib: mib(rss_idle),
            rss_after_mib: mib(rss_after),
            peak_rss_mib: mib(hwm),
            memory_model: model,
        };
        eprintln!(
            "    dispatch p99 {} ms, completion p99 {} ms; RSS {} MiB after, peak {} MiB",
            w.dispatch_latency_ms.p99,
            w.completion_propagation_ms.p99,
            scale.rss_after_mib,
            scale.peak_rss_mib
        );
        Ok((scale, w))
    }
}

/// The reference Go controller as this run's report names it (its figures come from a
/// side-by-side run, `cargo xtask bench --reference`).
fn reference(ours: bool) -> Reference {
    if !ours {
        return Reference {
            implementation: "this run measures the reference itself".into(),
            buildable: true,
            attempts: Vec::new(),
            documented_bounds: Vec::new(),
            ratios: BTreeMap::new(),
        };
    }
    let ratios = [
        "dispatch_latency_p99",
        "burst_1000_throughput",
        "completion_propagation_p99",
        "rss_with_10000",
        "api_calls_per_execution",
    ]
    .iter()
    .map(|k| (k.to_string(), report::NO_RATIO.to_string()))
    .collect();
    Reference {
        implementation: "github.com/jordigilh/kubernaut, cmd/workflowexecution (the Go controller)".into(),
        buildable: true,
        attempts: Vec::new(),
        documented_bounds: vec![
            "completion is detected by a 10 s RequeueAfter poll of Running WorkflowExecutions, not by the Job watch: its global GenerationChangedPredicate filters Job status updates (reference-behaviour.md §9.2 and §12 item 7), so its completion propagation is up to ~10 s".into(),
            "MaxConcurrentReconciles is not set: controller-runtime's default of 1 reconcile at a time (reference-behaviour.md §9.1), so every dispatch of a burst is serial".into(),
        ],
        ratios,
    }
}

fn git_describe(repo: &std::path::Path) -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(repo)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    operator::check_binary(&args.operator)?;
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let out_dir = args
        .out
        .parent()
        .context("--out has no parent directory")?
        .to_path_buf();
    std::fs::create_dir_all(&out_dir)?;

    if let Some(mode) = &args.memory_probe {
        let client = setup::admin_client(&args.kubeconfig).await?;
        let out = probe::memory_probe(&client, mode).await?;
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    if !args.compare.is_empty() {
        return compare::run(
            &args.compare[0],
            &args.compare[1],
            &args.out,
            args.docs.as_deref(),
        );
    }
    let subject = match (
        &args.reference_binary,
        &args.reference_crd,
        &args.reference_commit,
    ) {
        (Some(binary), Some(crd), Some(commit)) => {
            subject::Subject::Reference(subject::Reference {
                binary: binary.clone(),
                crd: crd.clone(),
                commit: commit.clone(),
            })
        }
        _ => subject::Subject::Ours,
    };
    let reference = reference(matches!(subject, subject::Subject::Ours));
    let client = setup::admin_client(&args.kubeconfig).await?;
    // The two controllers' CRDs share a name: the one of this run's subject is put in place.
    let crd = match &subject {
        subject::Subject::Reference(r) => r.crd.clone(),
        subject::Subject::Ours => args.repo.join(wfe_api::CRD_PATH),
    };
    setup::install_crd(&client, &crd).await?;
    setup::prepare(&client, &args.repo).await?;
    let kubeconfig = match &subject {
        subject::Subject::Ours => {
            setup::operator_kubeconfig(&client, &args.kubeconfig, &out_dir, "we-operator").await?
        }
        subject::Subject::Reference(_) => {
            setup::reference_account(&client).await?;
            let kc = setup::operator_kubeconfig(
                &client,
                &args.kubeconfig,
                &out_dir,
                setup::REFERENCE_ACCOUNT,
            )
            .await?;
            setup::write_token(&kc, &out_dir.join("reference.token"))?;
            kc
        }
    };
    let audit = AuditReceiver::start().await?;
    let audit_url = audit.url.clone();
    let launch = Launch {
        binary: args
            .reference_binary
            .clone()
            .unwrap_or_else(|| args.operator.clone()),
        kubeconfig,
        audit_url,
        log_dir: out_dir.clone(),
        log_level: args.operator_log_level.clone(),
        subject: subject.clone(),
    };
    let operator_desc = match &subject {
        subject::Subject::Reference(r) => format!(
            "the reference Go controller (`cmd/workflowexecution` of github.com/jordigilh/kubernaut at {}, built with `go build -trimpath -ldflags='-s -w'`), `--config` with execution.namespace {}, cooldownPeriod 1s, leader election off, datastorage.url the driver's receiver, KUBERNAUT_CONTROLLER_NAMESPACE={}; authenticated as a ServiceAccount bound to cluster-admin",
            r.commit,
            setup::EXEC_NS,
            setup::BENCH_NS
        ),
        subject::Subject::Ours => format!(
            "`{} {}` (release build, authenticated as the `we-operator` ServiceAccount with the RBAC of deploy/ and the finalizer admission policy bound to the bench namespace, concurrency 16 by default)",
            args.operator
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            launch
                .flags(setup::BENCH_NS)
                .iter()
                .map(|f| if f.starts_with("http://") {
                    "http://127.0.0.1:<port>".to_string()
                } else {
                    f.clone()
                })
                .collect::<Vec<_>>()
                .join(" ")
        ),
    };
    let mut bench = Bench {
        args: std::env::args_os().skip(1).collect(),
        client: client.clone(),
        launch,
        audit,
        peak_kib: 0,
        cluster: probe::cluster_pids(&args.kubeconfig),
        cpus: report::Machine::read().logical_cpus,
        audit_token_mounted: true,
    };
    let load_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!(
        "==> calibration: single API calls on the idle API server (load average {load_before})"
    );
    workload::clean(&client).await?;
    let calibration = probe::calibrate(&client, &subject, if args.quick { 10 } else { 50 }).await?;
    for (k, v) in &calibration {
        eprintln!("    {k}: p50 {} ms, p95 {} ms", v.p50, v.p95);
    }

    let runs = |p: Phase| args.only.is_empty() || args.only.contains(&p);
    let mut workloads = Vec::new();
    for &n in plan.bursts.iter().filter(|_| runs(Phase::Bursts)) {
        let name = format!("burst-{n}");
        let description = format!(
            "{n} WorkflowExecution(s) created at once ({} create calls in flight)",
            workload::CONCURRENCY
        );
        workloads.push(
            bench
                .run(&name, &name, &description, Load::Burst(n))
                .await?,
        );
    }
    let steady_name = format!("steady-{}/s", plan.steady_rate);
    let steady_description = format!(
        "{} executions/s for {} s (after {} s at that rate to warm up, not measured)",
        plan.steady_rate,
        plan.steady_for.as_secs(),
        WARMUP.as_secs()
    );
    if runs(Phase::Steady) {
        workloads.push(
            bench
                .run(
                    &steady_name,
                    "steady",
                    &steady_description,
                    Load::Steady {
                        rate: plan.steady_rate,
                        duration: plan.steady_for,
                    },
                )
                .await?,
        );
    }
    let mut scale = Scale::default();
    if runs(Phase::Scale) {
        let (s, w) = bench.scale(plan.existing, plan.new_on_top).await?;
        scale = s;
        workloads.push(w);
    }
    eprintln!("==> removing the bench's WorkflowExecutions and Jobs");
    workload::clean(&client).await?;

    let reference_audit = match &subject {
        subject::Subject::Ours => None,
        subject::Subject::Reference(_) => {
            let (acked, _) = bench.audit.counts();
            Some(format!(
                "{} audit events acknowledged by the driver's receiver over the run ({})",
                acked.values().sum::<f64>(),
                if bench.audit_token_mounted {
                    "its audit client read a ServiceAccount token from the in-cluster path, mounted in a private mount namespace"
                } else {
                    "no private mount namespace here: its audit client had no token and its audit writes failed"
                }
            ))
        }
    };
    let goals = report::goals(&workloads, &scale);
    let results = Results {
        schema: 1,
        load_average_before: load_before,
        calibration_ms: calibration,
        generated_at: k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        git: git_describe(&args.repo),
        machine: report::Machine::read(),
        cluster: format!("Kubernetes v1.37.2 local control plane: {}", args.cluster),
        operator: operator_desc,
        subject: subject.label().to_string(),
        reference_commit: match &subject {
            subject::Subject::Reference(r) => Some(r.commit.clone()),
            subject::Subject::Ours => None,
        },
        reference_audit,
        method: vec![
            format!("each workload: a clean namespace `{}`, a fresh operator process watching only it, driver-side watches on Jobs and WorkflowExecutions", setup::BENCH_NS),
            "dispatch latency: the instant just before the create call is sent → the Job first seen by the driver's watch".into(),
            format!("the driver plays the Job controller: {} s after a Job appears it patches its status to Complete (startTime, completionTime, succeeded: 1, SuccessCriteriaMet=True, Complete=True)", HOLD.as_secs()),
            "completion propagation: the instant just before that status patch is sent → the WorkflowExecution first seen Succeeded by the driver's watch".into(),
            "a workload ends when every WorkflowExecution shows lockReleasedTime (Job deleted after the 1 s cooldown), plus 1 s for the last Events".into(),
            "operator CPU: utime + stime from /proc/<pid>/stat (clock ticks / 100) over the workload; memory: VmRSS and VmHWM from /proc/<pid>/status".into(),
            "API calls: the operator's workflowexecution_kube_api_requests_total counter (a tower layer on its kube client) scraped before and after, divided by the executions".into(),
            "audit: POSTed to an HTTP receiver inside the driver that acknowledges every batch".into(),
        ],
        quick: args.quick,
        operator_peak_rss_mib: mib(bench.peak_kib),
        workloads,
        scale,
        goals,
        reference,
        total_s: r1(started.elapsed().as_secs_f64()),
    };
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!("wrote {}", args.out.display());
    if let Some(docs) = args.docs.as_ref().filter(|_| args.only.is_empty()) {
        report::update_docs(docs, &report::markdown(&results))?;
        eprintln!("updated {}", docs.display());
    }
    println!("\nGoals:");
    for g in &results.goals {
        println!(
            "  [{}] {}: {}",
            if g.met { "met" } else { "NOT met" },
            g.goal,
            g.measured
        );
    }
    Ok(())
}
