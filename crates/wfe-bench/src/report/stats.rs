//! Latency statistics and the rounding of the report's figures.

use serde::Serialize;

/// Distribution of a latency, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Samples.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Stats {
    /// Statistics of samples in milliseconds.
    pub fn of(mut samples: Vec<f64>) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            round1(samples[i - 1])
        };
        Stats {
            count: samples.len(),
            mean: round1(samples.iter().sum::<f64>() / samples.len() as f64),
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: round1(samples[samples.len() - 1]),
        }
    }
}

/// MiB from KiB.
pub fn mib(kib: u64) -> f64 {
    round1(kib as f64 / 1024.0)
}

/// Rounds for the report.
pub fn r1(x: f64) -> f64 {
    round1(x)
}

/// Rounds for the report.
pub fn r3(x: f64) -> f64 {
    round3(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Stats::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (s.p50, s.p95, s.p99, s.max, s.count),
            (50.0, 95.0, 99.0, 100.0, 100)
        );
        let one = Stats::of(vec![7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(Stats::of(vec![]).count, 0);
    }
}
