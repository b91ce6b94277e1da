//! `cargo xtask bench` (issue #11; not part of `cargo xtask test`): measures the release operator
//! on the local control plane WITHOUT node components, so that only the operator and the driver
//! (`crates/wfe-bench`, which plays the Job controller) touch Jobs. Writes
//! `target/bench/results.json` and the generated part of `docs/benchmarks.md`.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cluster::{self, ClusterCmd};

/// Components that `cluster up --nodes` adds; any of them running would touch Jobs or pods.
const NODE_COMPONENTS: [&str; 3] = ["kube-controller-manager", "kube-scheduler", "kwok"];
/// The whole driver run is bounded (it takes about 4.5 minutes on 2 cores).
const LIMIT: Duration = Duration::from_secs(20 * 60);

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Reduced sizes (bursts 1/20/200, 5 s steady, 1000 finished objects) to try the bench out;
    /// the figures are not comparable and are marked so.
    #[arg(long)]
    quick: bool,
    /// Write target/bench/results.json only; leave docs/benchmarks.md alone.
    #[arg(long)]
    no_docs: bool,
    /// Keep a running cluster without node components instead of starting a fresh one (an empty
    /// etcd and a fresh API server make runs comparable).
    #[arg(long)]
    reuse_cluster: bool,
}

/// Node components recorded in the cluster state (whatever their health).
fn node_components(root: &Path) -> Vec<String> {
    let path = root.join(cluster::STATE_DIR).join("cluster.json");
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
                .filter_map(|c| c["name"].as_str())
                .filter(|n| NODE_COMPONENTS.contains(n))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `cargo xtask bench`.
pub fn run(root: &Path, args: Args) -> Result<()> {
    let started = Instant::now();
    let nodes = node_components(root);
    let running = root.join(cluster::STATE_DIR).join("cluster.json").exists();
    if !nodes.is_empty() {
        println!(
            "==> a local cluster with node components is running ({}): the benchmark needs one without \
             them (it plays the Job controller itself). Stopping it; `cargo xtask cluster up --nodes` \
             (or any test run) brings them back.",
            nodes.join(", ")
        );
        cluster::run(ClusterCmd::Down, root)?;
    } else if running && !args.reuse_cluster {
        println!(
            "==> stopping the running local cluster so that the benchmark starts on a fresh one \
             (--reuse-cluster keeps it)"
        );
        cluster::run(ClusterCmd::Down, root)?;
    }
    println!("==> local cluster without nodes (etcd + kube-apiserver)");
    cluster::run(ClusterCmd::Up { nodes: false }, root)?;

    println!("\n==> release build: cargo build --release --locked -p we-operator -p wfe-bench");
    let mut build = crate::command("cargo");
    let status = build
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "we-operator",
            "-p",
            "wfe-bench",
        ])
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("the release build failed ({status})");
    }

    let out = root.join("target/bench/results.json");
    let docs = root.join("docs/benchmarks.md");
    let mut cmd = Command::new(root.join("target/release/wfe-bench"));
    cmd.arg("--operator")
        .arg(root.join("target/release/we-operator"))
        .arg("--kubeconfig")
        .arg(root.join(cluster::KUBECONFIG))
        .arg("--repo")
        .arg(root)
        .arg("--out")
        .arg(&out);
    if !args.no_docs {
        cmd.arg("--docs").arg(&docs);
    }
    if args.quick {
        cmd.arg("--quick");
    }
    let note = if !nodes.is_empty() {
        format!(
            "etcd + kube-apiserver only, started fresh for the run (a running cluster with {} was stopped)",
            nodes.join(", ")
        )
    } else if running && args.reuse_cluster {
        "etcd + kube-apiserver only (a running cluster, reused)".to_string()
    } else {
        "etcd + kube-apiserver only, started fresh for the run".to_string()
    };
    cmd.arg("--cluster").arg(note);
    println!(
        "\n==> the benchmark (bounded to {} min)",
        LIMIT.as_secs() / 60
    );
    let mut child = cmd
        .current_dir(root)
        .spawn()
        .context("cannot start target/release/wfe-bench")?;
    let bench_start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if bench_start.elapsed() > LIMIT {
            // The driver kills its operator child on the way out (kill_on_drop).
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the benchmark did not finish within {} min and was stopped",
                LIMIT.as_secs() / 60
            );
        }
        thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        bail!("the benchmark failed ({status}); operator logs: target/bench/we-operator-*.log");
    }
    let appeared = node_components(root);
    if !appeared.is_empty() {
        println!(
            "warning: node components ({}) were started while the benchmark ran (a test run?): \
             they touch Jobs, so these figures may be disturbed; run it again on a quiet machine",
            appeared.join(", ")
        );
    }
    println!(
        "\nresults: {}{}\nbenchmark done in {:.0?} (driver {:.0?})",
        out.display(),
        if args.no_docs {
            String::new()
        } else {
            format!("; tables: {}", docs.display())
        },
        started.elapsed(),
        bench_start.elapsed()
    );
    println!(
        "The local cluster keeps running without nodes: `cargo xtask cluster down` stops it; \
         `cargo xtask cluster up --nodes` (or any test run) adds the node components back."
    );
    Ok(())
}
