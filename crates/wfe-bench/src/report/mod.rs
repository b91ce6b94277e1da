//! Results: statistics ([`stats`]), the goals ([`goals`]), `target/bench/results.json` (the types
//! here) and the generated part of `docs/benchmarks.md` ([`markdown`]).

mod goals;
mod markdown;
mod stats;

use std::collections::BTreeMap;

use serde::Serialize;

pub use goals::goals;
pub use markdown::{NO_RATIO, markdown, update_docs};
pub use stats::{Stats, mib, r1, r3};

/// Samples slower than 50 ms, and how many of them started in the 400 ms after a whole second of
/// the wall clock (40 % would by chance).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlowSamples {
    /// Dispatches slower than 50 ms.
    pub dispatch_over_50ms: usize,
    /// ... of which the create was sent 0-400 ms after a whole second.
    pub dispatch_started_in_window: usize,
    /// Completions slower than 50 ms.
    pub completion_over_50ms: usize,
    /// ... of which the Job completion was sent 0-400 ms after a whole second.
    pub completion_started_in_window: usize,
    /// Dispatches slower than 50 ms that overlap a stall: a create call of the driver itself that
    /// took more than 25 ms (the API server slow for every client).
    pub dispatch_in_stall: usize,
    /// Completions slower than 50 ms that overlap such a stall.
    pub completion_in_stall: usize,
}

/// One workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Workload {
    /// Short name (`burst-1000`, `steady-10/s`, ...).
    pub name: String,
    /// What it does.
    pub description: String,
    /// Executions requested.
    pub executions: usize,
    /// Create calls that succeeded.
    pub created: usize,
    /// Executions whose Job the driver saw.
    pub dispatched: usize,
    /// Executions seen Succeeded.
    pub succeeded: usize,
    /// Executions seen Failed (none expected).
    pub failed: usize,
    /// Executions the operator finished with (lock released after the cooldown).
    pub released: usize,
    /// True when not every execution finished within the time limit.
    pub timed_out: bool,
    /// WorkflowExecution create call sent → its Job seen by the driver's watch.
    pub dispatch_latency_ms: Stats,
    /// Job completion patch sent → WorkflowExecution seen Succeeded by the driver's watch.
    pub completion_propagation_ms: Stats,
    /// Slow samples and the wall-clock second.
    pub slow_samples: SlowSamples,
    /// Duration of the create calls themselves (context: the API server's share).
    pub create_call_ms: Stats,
    /// Executions dispatched per second: count / (first create sent → last Job seen).
    pub dispatch_throughput_per_s: f64,
    /// First create sent → last Job seen, seconds.
    pub dispatch_window_s: f64,
    /// First create sent → last execution released, seconds.
    pub wall_s: f64,
    /// Operator CPU (user + system) during the workload, seconds.
    pub operator_cpu_s: f64,
    /// Operator CPU per execution, milliseconds.
    pub operator_cpu_ms_per_execution: f64,
    /// CPU of the operator, the API server, etcd and the driver together per execution, ms (what
    /// one execution costs the machine).
    pub stack_cpu_ms_per_execution: f64,
    /// The throughput that CPU cost allows at best on this machine (CPUs / cost).
    pub cpu_bound_executions_per_s: f64,
    /// Operator API requests during the workload, per execution.
    pub api_calls_per_execution: f64,
    /// The same by verb.
    pub api_calls_per_execution_by_verb: BTreeMap<String, f64>,
    /// The same by `verb resource`.
    pub api_calls_per_execution_by_request: BTreeMap<String, f64>,
    /// Audit events the receiver acknowledged during the workload, per execution.
    pub audit_events_per_execution: f64,
    /// The same by event type.
    pub audit_events_per_execution_by_type: BTreeMap<String, f64>,
    /// Deliveries of an event id that had already been acknowledged, per execution, by type.
    pub audit_redeliveries_per_execution_by_type: BTreeMap<String, f64>,
    /// The operator's reconcile errors per execution, by category (`conflict`: a write on a stale
    /// copy refused by the resourceVersion precondition).
    pub reconcile_errors_per_execution: BTreeMap<String, f64>,
    /// CPU of every process, the API server's request latencies and queueing.
    pub usage: crate::probe::Usage,
    /// Operator start → ready (caches synced), seconds.
    pub operator_ready_s: f64,
    /// Operator VmRSS at the end of the workload, MiB.
    pub operator_rss_end_mib: f64,
    /// Operator VmHWM (peak RSS) of this workload's process, MiB.
    pub operator_peak_rss_mib: f64,
    /// Errors (first few).
    pub errors: Vec<String>,
    /// Failure reasons (first few).
    pub failures: Vec<String>,
}

/// The operator started with 10 000 finished WorkflowExecutions in its namespace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scale {
    /// Finished WorkflowExecutions present before the operator started.
    pub existing: usize,
    /// Time the driver took to create them (create + status patch each), seconds.
    pub create_s: f64,
    /// Operator start → ready (initial list of all of them done), seconds.
    pub ready_s: f64,
    /// Ready → CPU idle (the initial reconcile of every object done), seconds.
    pub settle_s: f64,
    /// Operator CPU from start to idle, seconds.
    pub startup_cpu_s: f64,
    /// API requests from start to idle, by `verb resource`.
    pub startup_api_calls: BTreeMap<String, f64>,
    /// VmRSS once idle with all of them cached, MiB.
    pub rss_idle_mib: f64,
    /// VmRSS after the new executions finished, MiB.
    pub rss_after_mib: f64,
    /// VmHWM of this process, MiB.
    pub peak_rss_mib: f64,
    /// The cost of one cached object, modelled in fresh processes of the driver binary.
    pub memory_model: crate::probe::MemoryModel,
}

/// One goal.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// The goal.
    pub goal: String,
    /// The measured figure.
    pub measured: String,
    /// Met or not.
    pub met: bool,
}

/// An attempt to obtain the reference implementation.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// The command.
    pub command: String,
    /// Exit status.
    pub exit_code: Option<i32>,
    /// What it printed (stderr, then stdout).
    pub output: String,
}

/// The reference Go controller.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// What it is.
    pub implementation: String,
    /// Whether it could be built and measured here.
    pub buildable: bool,
    /// The attempts, with their output.
    pub attempts: Vec<Attempt>,
    /// Its documented behaviour that bounds its figures.
    pub documented_bounds: Vec<String>,
    /// Ratios of our figures to its figures.
    pub ratios: BTreeMap<String, String>,
}

/// The machine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPUs.
    pub logical_cpus: usize,
    /// Memory.
    pub mem_total_mib: u64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// From /proc.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let value = |l: &str| l.split_once(':').map(|(_, v)| v.trim().to_string());
        Machine {
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(value)
                .unwrap_or_else(|| "unknown".into()),
            logical_cpus: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            mem_total_mib: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kib| kib / 1024)
                .unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// Everything, as written to results.json.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Format version.
    pub schema: u32,
    /// When (UTC).
    pub generated_at: String,
    /// `git describe --always --dirty` of the repository.
    pub git: String,
    /// The machine.
    pub machine: Machine,
    /// The control plane.
    pub cluster: String,
    /// The operator binary and flags.
    pub operator: String,
    /// `we-operator` or `reference` (the Go controller, issue #20).
    pub subject: String,
    /// The reference's commit, when this run measured it.
    pub reference_commit: Option<String>,
    /// How the reference's audit writes went, when this run measured it.
    pub reference_audit: Option<String>,
    /// How executions are played and measured.
    pub method: Vec<String>,
    /// Whether this was the short development run (`--quick`): not the published figures.
    pub quick: bool,
    /// /proc/loadavg (1, 5, 15 min) just before the run.
    pub load_average_before: String,
    /// Single API calls, one at a time, on the idle API server (admin client), ms.
    pub calibration_ms: BTreeMap<String, Stats>,
    /// The workloads.
    pub workloads: Vec<Workload>,
    /// The 10 000-object phase.
    pub scale: Scale,
    /// Peak RSS (VmHWM) over every operator process of the run, MiB.
    pub operator_peak_rss_mib: f64,
    /// The goals of issue #11.
    pub goals: Vec<Goal>,
    /// The reference implementation.
    pub reference: Reference,
    /// Total run time of the driver, seconds.
    pub total_s: f64,
}
