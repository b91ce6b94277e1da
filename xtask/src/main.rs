//! `cargo xtask`: project automation.

mod bench;
mod chart;
mod cluster;
mod cross;
mod flows;
mod fresh;
mod image;
mod monitoring;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "we-operator project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write deploy/crds/workflowexecutions.kubernaut.ai.yaml from the Rust types.
    Crdgen {
        /// Fail instead of writing when the file is out of date.
        #[arg(long)]
        check: bool,
    },
    /// Run every check CI runs: fmt, clippy, CRD drift, all tests on the local cluster, e2e.
    Test {
        /// Leave the local cluster running afterwards.
        #[arg(long)]
        keep_cluster: bool,
    },
    /// The end-to-end run: the operator binary on the local cluster (OOMKill via Jobs, Tekton).
    E2e {
        /// Leave the local cluster running afterwards.
        #[arg(long)]
        keep_cluster: bool,
    },
    /// Start the local cluster, the operator and the samples, and show them finish.
    Demo,
    /// Run the fuzz targets (cargo-fuzz, installed when missing; the stable toolchain with RUSTC_BOOTSTRAP=1).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// The resilience run: leader kills (SIGKILL), an audit outage, nothing lost or run twice.
    Chaos {
        /// WorkflowExecutions in the batch.
        #[arg(long, default_value_t = 200)]
        executions: usize,
        /// How many times the leader is killed.
        #[arg(long, default_value_t = 5)]
        kills: usize,
        /// Leave the local cluster running afterwards.
        #[arg(long)]
        keep_cluster: bool,
    },
    /// Measure the release operator on the local control plane (docs/benchmarks.md; not run by `test`).
    Bench(bench::Args),
    /// The README's two commands (demo, test) on a clone of HEAD with empty HOME, cargo and Go
    /// caches, as on a new machine; prints the cold times.
    FreshCheck(fresh::Args),
    /// The Helm chart (deploy/chart/we-operator): render the plain manifests, or check it.
    Chart {
        #[command(subcommand)]
        cmd: chart::ChartCmd,
    },
    /// Check the alert rules (promtool check and test), the dashboard and the metrics reference.
    Monitoring,
    /// The operator's OCI image (static binary, non-root, CA bundle, SBOM) in target/image/oci,
    /// without a container daemon; `--push REPO` also pushes it.
    Image(image::Args),
    /// The local Kubernetes control plane for tests (see docs/controlplane.md).
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// Runs `cmd` and returns its standard output, trimmed; fails with its standard error.
pub fn output(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A command for a tool run by the xtask, without the variables that `cargo run` exported for the
/// xtask package itself (`CARGO_PKG_*`, `CARGO_MANIFEST_*`, ...): some build scripts (ring's)
/// track them, so passing them on would make every cargo run from here and every plain cargo run
/// rebuild each other's dependencies.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                &*key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crdgen { check } => crdgen(check),
        Cmd::Cluster { cmd } => cluster::run(cmd, &repo_root()),
        Cmd::Test { keep_cluster } => flows::test(&repo_root(), keep_cluster),
        Cmd::E2e { keep_cluster } => flows::e2e(&repo_root(), keep_cluster),
        Cmd::Demo => flows::demo(&repo_root()),
        Cmd::Fuzz { seconds } => flows::fuzz(&repo_root(), seconds),
        Cmd::Chaos {
            executions,
            kills,
            keep_cluster,
        } => flows::chaos(&repo_root(), executions, kills, keep_cluster),
        Cmd::Bench(args) => bench::run(&repo_root(), args),
        Cmd::FreshCheck(args) => fresh::run(&repo_root(), args),
        Cmd::Chart { cmd } => chart::run(&repo_root(), cmd),
        Cmd::Monitoring => monitoring::check(&repo_root()),
        Cmd::Image(args) => image::run(&repo_root(), &args).map(drop),
    }
}

pub(crate) fn crdgen(check: bool) -> Result<()> {
    write_generated(
        wfe_api::CRD_REFERENCE_PATH,
        &wfe_api::crd_reference_markdown(),
        check,
    )?;
    write_generated(wfe_api::CRD_PATH, &wfe_api::crd_yaml(), check)?;
    // The chart installs the same CRD (a chart reads files only from its own folder).
    write_generated(
        &format!(
            "{}/files/workflowexecutions.kubernaut.ai.yaml",
            chart::CHART
        ),
        &wfe_api::crd_yaml(),
        check,
    )
}

fn write_generated(relative: &str, yaml: &str, check: bool) -> Result<()> {
    let path = repo_root().join(relative);
    let yaml = yaml.to_string();
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current == yaml {
        println!("{relative} is up to date");
        return Ok(());
    }
    if check {
        anyhow::bail!("{relative} is out of date: run `cargo xtask crdgen`");
    }
    std::fs::create_dir_all(path.parent().expect("CRD path has a parent"))?;
    std::fs::write(&path, yaml)?;
    println!("wrote {relative}");
    Ok(())
}
