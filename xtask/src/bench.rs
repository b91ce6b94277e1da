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
    /// Also measure the reference Go controller, built from its source tree at SRC_DIR (a clone of
    /// github.com/jordigilh/kubernaut, pinned at the commit in docs/benchmarks.md): the same
    /// workloads on a fresh control plane of the same shape, then the side-by-side table and
    /// pictures in docs/benchmarks.md.
    #[arg(long, value_name = "SRC_DIR")]
    reference: Option<std::path::PathBuf>,
}

/// The reference commit the published side-by-side figures were measured against (issue #20).
pub const REFERENCE_COMMIT: &str = "d5a4a870967312d98dbc302ac2ae3505087bfcb0";

/// The commit of a reference source tree: `git rev-parse HEAD`, or the `.reference-commit` file of
/// an exported tree.
fn reference_commit(src: &Path) -> String {
    let git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(src)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    git.or_else(|| {
        std::fs::read_to_string(src.join(".reference-commit"))
            .ok()
            .map(|s| s.trim().to_string())
    })
    .unwrap_or_else(|| "unknown (neither a git checkout nor a .reference-commit file)".into())
}

/// Builds the reference's `cmd/workflowexecution` into `out` (about 9 minutes cold on 2 cores, its
/// modules from the Go module proxy; seconds when Go's caches are warm).
fn build_reference(src: &Path, out: &Path) -> Result<()> {
    if !src.join("cmd/workflowexecution").is_dir() {
        bail!(
            "{} has no cmd/workflowexecution: not a source tree of github.com/jordigilh/kubernaut",
            src.display()
        );
    }
    println!(
        "\n==> building the reference: go build ./cmd/workflowexecution in {}",
        src.display()
    );
    let status = Command::new("go")
        .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
        .arg(out)
        .arg("./cmd/workflowexecution")
        .current_dir(src)
        .env("GOWORK", "off")
        .status()
        .context("cannot run go")?;
    if !status.success() {
        bail!("building the reference failed ({status})");
    }
    Ok(())
}

/// The driver (release build) with the arguments every run of it takes.
fn driver(root: &Path) -> Command {
    let mut cmd = Command::new(root.join("target/release/wfe-bench"));
    cmd.arg("--operator")
        .arg(root.join("target/release/we-operator"))
        .arg("--kubeconfig")
        .arg(root.join(cluster::KUBECONFIG))
        .arg("--repo")
        .arg(root);
    cmd
}

/// Runs the driver once and waits for it, bounded by [`LIMIT`].
fn drive(root: &Path, extra: &[std::ffi::OsString], note: &str) -> Result<Duration> {
    let mut cmd = driver(root);
    cmd.args(extra).arg("--cluster").arg(note);
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
        bail!("the benchmark failed ({status}); operator logs: target/bench/**/we-operator-*.log");
    }
    Ok(bench_start.elapsed())
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
    cluster::run(ClusterCmd::up(false), root)?;

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

    let reference = match &args.reference {
        Some(src) => {
            let src = src
                .canonicalize()
                .with_context(|| format!("the reference source tree {}", src.display()))?;
            let commit = reference_commit(&src);
            if commit != REFERENCE_COMMIT {
                println!(
                    "warning: the reference tree is at {commit}, not at {REFERENCE_COMMIT} (the commit of the published figures)"
                );
            }
            let binary = root.join("target/bench/reference/workflowexecution");
            std::fs::create_dir_all(root.join("target/bench/reference"))?;
            build_reference(&src, &binary)?;
            Some((src, commit, binary))
        }
        None => None,
    };

    let out = root.join("target/bench/results.json");
    let docs = root.join("docs/benchmarks.md");
    let mut extra: Vec<std::ffi::OsString> = vec!["--out".into(), out.clone().into()];
    if !args.no_docs {
        extra.extend(["--docs".into(), docs.clone().into()]);
    }
    if args.quick {
        extra.push("--quick".into());
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
    let mut driver_time = drive(root, &extra, &note)?;

    if let Some((src, commit, binary)) = &reference {
        println!("\n==> a fresh local cluster of the same shape for the reference");
        cluster::run(ClusterCmd::Down, root)?;
        cluster::run(ClusterCmd::up(false), root)?;
        let ref_out = root.join("target/bench/reference/results.json");
        let mut extra: Vec<std::ffi::OsString> = vec![
            "--out".into(),
            ref_out.clone().into(),
            "--reference-binary".into(),
            binary.clone().into(),
            "--reference-crd".into(),
            src.join("config/crd/bases/kubernaut.ai_workflowexecutions.yaml")
                .into(),
            "--reference-commit".into(),
            commit.into(),
        ];
        if args.quick {
            extra.push("--quick".into());
        }
        driver_time += drive(
            root,
            &extra,
            "etcd + kube-apiserver only, started fresh for the reference, its CRD in place of ours",
        )?;
        println!("\n==> side by side");
        let mut cmp = driver(root);
        cmp.arg("--out")
            .arg(root.join("target/bench/side-by-side.json"))
            .arg("--compare")
            .arg(&out)
            .arg(&ref_out);
        if !args.no_docs {
            cmp.arg("--docs").arg(&docs);
        }
        let status = cmp.current_dir(root).status()?;
        if !status.success() {
            bail!("comparing the two runs failed ({status})");
        }
        // Leave a cluster with our own CRD behind, as without --reference.
        cluster::run(ClusterCmd::Down, root)?;
        cluster::run(ClusterCmd::up(false), root)?;
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
        driver_time
    );
    println!(
        "The local cluster keeps running without nodes: `cargo xtask cluster down` stops it; \
         `cargo xtask cluster up --nodes` (or any test run) adds the node components back."
    );
    Ok(())
}
