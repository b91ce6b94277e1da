//! The alerts and the dashboard: `promtool check rules` and `promtool test rules` on the alert
//! rules (promtool built from the Prometheus Go module, xtask/controlplane/prometheus), and a
//! cross-check that every metric the alerts and the dashboard query is one the operator exports
//! and that docs/operations.md lists every metric the operator exports.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, ensure};

use crate::cluster;

const RULES: &str = "deploy/chart/we-operator/files/alerts.rules.yaml";
const RULE_TESTS: &str = "deploy/monitoring/alerts.test.yaml";
const DASHBOARD: &str = "deploy/monitoring/dashboard.json";
const REFERENCE: &str = "docs/operations.md";
/// Where the operator names its metrics (`pub const NAME: &str = "workflowexecution_…"`).
const METRIC_SOURCES: [&str; 3] = [
    "crates/wfe-controller/src/metrics.rs",
    "bins/we-operator/src/apicount.rs",
    "bins/we-operator/src/admin.rs",
];

/// The promtool of the cache, built from xtask/controlplane/prometheus when missing.
pub fn promtool(root: &Path) -> Result<PathBuf> {
    let module = root.join("xtask/controlplane/prometheus");
    let version =
        cluster::gomod_version(&module.join("go.mod"), "github.com/prometheus/prometheus")?;
    let bin = cluster::cache_root()?
        .join(format!("prometheus-{version}"))
        .join("promtool");
    // promtool has no version of its own here (the module's tags are v0.x); the folder is the
    // version, and a binary that runs is current.
    if Command::new(&bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(bin);
    }
    eprintln!("building promtool (prometheus {version}; cold: about 6 minutes)");
    let t = Instant::now();
    let mut cmd = cluster::go(&module);
    cmd.args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
        .arg(&bin)
        .arg("github.com/prometheus/prometheus/cmd/promtool");
    cluster::run_go(cmd, "promtool")?;
    eprintln!("  promtool built in {:.0?}", t.elapsed());
    Ok(bin)
}

/// Metric names (`workflowexecution_…`) in a text, histogram series folded to their metric.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("workflowexecution_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(name.to_string());
        i = end;
    }
    names
}

/// The metric names the operator exports (from its `pub const` declarations).
fn exported(root: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for f in METRIC_SOURCES {
        let text = std::fs::read_to_string(root.join(f)).with_context(|| format!("reading {f}"))?;
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("pub const"))
        {
            names.extend(metric_names(line));
        }
    }
    Ok(names)
}

pub fn check(root: &Path) -> Result<()> {
    let t = Instant::now();
    let promtool = promtool(root)?;
    for args in [
        vec!["check", "rules", RULES],
        vec!["test", "rules", RULE_TESTS],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(root)
            .output()
            .context("running promtool")?;
        ensure!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exported = exported(root)?;
    ensure!(
        exported.len() >= 10,
        "found only {exported:?} in {METRIC_SOURCES:?}"
    );
    let dashboard = std::fs::read_to_string(root.join(DASHBOARD))?;
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).context("the dashboard is not JSON")?;
    ensure!(
        parsed["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "the dashboard has no panels"
    );
    for (what, text) in [
        ("the alerts", std::fs::read_to_string(root.join(RULES))?),
        ("the dashboard", dashboard),
    ] {
        let unknown: Vec<_> = metric_names(&text).difference(&exported).cloned().collect();
        ensure!(
            unknown.is_empty(),
            "{what} query metrics the operator does not export: {unknown:?}"
        );
    }
    let reference = std::fs::read_to_string(root.join(REFERENCE))?;
    let missing: Vec<_> = exported
        .iter()
        .filter(|m| !reference.contains(&format!("`{m}`")))
        .collect();
    ensure!(
        missing.is_empty(),
        "{REFERENCE} does not list {missing:?} in its metrics reference"
    );
    println!(
        "==> monitoring: rules checked and unit-tested, dashboard and metrics reference match the {} exported metrics ({:.0?})",
        exported.len(),
        t.elapsed()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::metric_names;

    #[test]
    fn histogram_series_fold_to_their_metric() {
        let names = metric_names(
            "rate(workflowexecution_dispatch_latency_seconds_bucket{a=\"b\"}[5m]) / workflowexecution_leader",
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [
                "workflowexecution_dispatch_latency_seconds",
                "workflowexecution_leader"
            ]
        );
    }
}
