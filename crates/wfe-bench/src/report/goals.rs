//! The goals of issue #11, evaluated on the measured workloads.

use super::{Goal, Scale, Workload};

/// The goals of issue #11, evaluated.
pub fn goals(workloads: &[Workload], scale: &Scale) -> Vec<Goal> {
    let find = |prefix: &str| workloads.iter().find(|w| w.name.starts_with(prefix));
    let mut out = Vec::new();
    if let Some(w) = find("steady") {
        out.push(Goal {
            goal: "dispatch p99 < 50 ms at a steady 10 executions/s".into(),
            measured: format!(
                "p99 {} ms (p50 {} ms)",
                w.dispatch_latency_ms.p99, w.dispatch_latency_ms.p50
            ),
            met: !w.timed_out
                && w.dispatch_latency_ms.count > 0
                && w.dispatch_latency_ms.p99 < 50.0,
        });
    }
    if let Some(w) = find("burst-1000") {
        out.push(Goal {
            goal: "a burst of 1000 drained at >= 100 executions/s".into(),
            measured: format!(
                "{} executions/s ({} dispatched in {} s)",
                w.dispatch_throughput_per_s, w.dispatched, w.dispatch_window_s
            ),
            met: !w.timed_out
                && w.dispatched == w.executions
                && w.dispatch_throughput_per_s >= 100.0,
        });
    }
    if let Some(w) = find("steady") {
        out.push(Goal {
            goal: "completion propagation p99 < 50 ms (at a steady 10 executions/s; the reference polls every 10 s)".into(),
            measured: format!(
                "p99 {} ms (p50 {} ms)",
                w.completion_propagation_ms.p99, w.completion_propagation_ms.p50
            ),
            met: !w.timed_out
                && w.completion_propagation_ms.count > 0
                && w.completion_propagation_ms.p99 < 50.0,
        });
    }
    if scale.existing > 0 {
        out.push(Goal {
            goal: format!(
                "operator RSS < 40 MiB with {} WorkflowExecutions",
                scale.existing
            ),
            measured: format!(
                "{} MiB VmRSS after the phase ({} MiB idle with them cached, peak {} MiB)",
                scale.rss_after_mib, scale.rss_idle_mib, scale.peak_rss_mib
            ),
            met: scale.rss_after_mib > 0.0 && scale.rss_after_mib < 40.0,
        });
    }
    out
}
