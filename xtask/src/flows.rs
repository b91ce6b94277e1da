//! The project's top-level flows: `test` (everything CI checks), `e2e` and `demo`.

use std::{
    path::Path,
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::cluster::{self, ClusterCmd};

/// Runs a command in the repository, streaming its output; fails with `what` when it fails.
fn run(root: &Path, what: &str, program: &str, args: &[&str]) -> Result<()> {
    println!("\n==> {what}: {program} {}", args.join(" "));
    let status = crate::command(program)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Waits for a child at most `limit`, killing it (and failing) past that.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not finish within {}s and was stopped",
                limit.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the local cluster with nodes unless one is healthy; returns whether this call started it.
fn ensure_cluster(root: &Path) -> Result<bool> {
    let was_running = cluster::is_healthy(root);
    cluster::run(ClusterCmd::Build, root)?;
    cluster::run(ClusterCmd::up(true), root)?;
    Ok(!was_running)
}

fn stop_cluster_if(root: &Path, started: bool) {
    if started && let Err(e) = cluster::run(ClusterCmd::Down, root) {
        eprintln!("warning: cannot stop the local cluster: {e:#}");
    }
}

/// `cargo xtask test`: formatting, lints, CRD drift, every test (unit, integration on the real
/// control plane) and the end-to-end run.
pub fn test(root: &Path, keep_cluster: bool) -> Result<()> {
    let start = Instant::now();
    run(root, "format", "cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        root,
        "lint",
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    crate::crdgen(true)?;
    crate::monitoring::check(root)?;
    supply_chain(root)?;
    let started = ensure_cluster(root)?;
    let result = (|| {
        run(
            root,
            "tests",
            "cargo",
            &["test", "--workspace", "--locked", "--no-fail-fast"],
        )?;
        image_check(root)?;
        crate::chart::run(root, crate::chart::ChartCmd::Check)?;
        e2e_inner(root)?;
        chaos_inner(root, 40, 5, 5)?;
        fuzz(root, 15)
    })();
    if !keep_cluster {
        stop_cluster_if(root, started);
    }
    result?;
    println!("\nall checks passed in {:.0?}", start.elapsed());
    Ok(())
}

/// The image: built (static binary, SBOM, OCI layout), pushed to the local cluster's registry,
/// pulled back by digest, validated blob by blob, and its binary run.
fn image_check(root: &Path) -> Result<()> {
    let t = Instant::now();
    let repo = format!("{}/we-operator", cluster::registry(root)?);
    crate::image::run(
        root,
        &crate::image::Args {
            platform: vec!["linux/amd64".into(), "linux/arm64".into()],
            push: Some(repo),
        },
    )?;
    eprintln!("==> image: checked in {:.0?}", t.elapsed());
    Ok(())
}

/// True when `program args` runs and succeeds (a tool is installed and usable).
fn works(program: &str, args: &[&str]) -> bool {
    crate::command(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Licenses, banned crates and sources (`deny.toml`), installing cargo-deny when missing.
///
/// cargo-deny reads `cargo metadata` for every platform of Cargo.lock, while a build downloads
/// only the host's crates: fetch every locked crate first, so that the offline check also runs
/// on a machine whose cargo cache has never seen the other platforms.
fn supply_chain(root: &Path) -> Result<()> {
    run(
        root,
        "fetch every locked crate (all platforms)",
        "cargo",
        &["fetch", "--locked"],
    )?;
    if !works("cargo", &["deny", "--version"]) {
        run(
            root,
            "install cargo-deny",
            "cargo",
            &["install", "--locked", "cargo-deny@0.20.2"],
        )?;
    }
    run(
        root,
        "supply chain",
        "cargo",
        &["deny", "--offline", "check", "licenses", "bans", "sources"],
    )
}

/// Runs one ignored test binary of `we-operator` (the e2e and resilience runs) with `envs`,
/// bounded by `limit`.
fn run_ignored_test(
    root: &Path,
    test: &str,
    envs: &[(&str, String)],
    limit: Duration,
    what: &str,
) -> Result<ExitStatus> {
    let child = crate::command("cargo")
        .args([
            "test",
            "--locked",
            "-p",
            "we-operator",
            "--test",
            test,
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(root)
        .spawn()
        .context("cannot run cargo test")?;
    wait_bounded(child, limit, what)
}

fn e2e_inner(root: &Path) -> Result<()> {
    println!("\n==> end to end: the we-operator binary on the local cluster");
    let status = run_ignored_test(
        root,
        "e2e",
        &[],
        Duration::from_secs(15 * 60),
        "the end-to-end run",
    )?;
    if !status.success() {
        bail!("the end-to-end run failed ({status}); operator log: target/we-operator-e2e.log");
    }
    let memory = std::fs::read_to_string(root.join("target/e2e-memory.json")).unwrap_or_default();
    println!("end-to-end passed; peak memory per process:\n{memory}");
    Ok(())
}

fn chaos_inner(root: &Path, executions: usize, kills: usize, outage_seconds: u64) -> Result<()> {
    println!(
        "\n==> resilience: {executions} executions, {kills} leader kills (SIGKILL), a {outage_seconds}s audit outage, a kube-apiserver restart"
    );
    let envs = [
        ("CHAOS_EXECUTIONS", executions.to_string()),
        ("CHAOS_KILLS", kills.to_string()),
        ("CHAOS_AUDIT_OUTAGE_SECONDS", outage_seconds.to_string()),
    ];
    let status = run_ignored_test(
        root,
        "chaos",
        &envs,
        Duration::from_secs(20 * 60),
        "the resilience run",
    )?;
    if !status.success() {
        bail!("the resilience run failed ({status}); operator logs: target/chaos/");
    }
    println!("resilience run passed; report: target/chaos.json");
    Ok(())
}

/// The fuzz targets of `fuzz/` (cargo-fuzz), each for `seconds`.
///
/// cargo-fuzz needs unstable compiler flags (`-Zsanitizer=address`, coverage passes). They come
/// from the same stable toolchain that builds the project, unlocked for this command alone with
/// `RUSTC_BOOTSTRAP=1` (stable ships the sanitizer runtimes): a nightly toolchain would be a
/// second toolchain to install, from a server that a machine restricted to package registries
/// cannot reach.
pub fn fuzz(root: &Path, seconds: u64) -> Result<()> {
    if !works("cargo", &["fuzz", "--version"]) {
        run(
            root,
            "install cargo-fuzz",
            "cargo",
            &["install", "--locked", "cargo-fuzz@0.13.2"],
        )?;
    }
    let fuzz_dir = root.join("fuzz");
    for target in ["wfe_deserialize_validate", "execution_builders"] {
        let limit = format!("-max_total_time={seconds}");
        let args = ["fuzz", "run", target, "--", &limit, "-rss_limit_mb=2048"];
        println!(
            "\n==> fuzz {target} for {seconds}s: RUSTC_BOOTSTRAP=1 cargo {}",
            args.join(" ")
        );
        let status = crate::command("cargo")
            .args(args)
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&fuzz_dir)
            .status()
            .context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!("fuzz {target} failed ({status})");
        }
    }
    Ok(())
}

/// `cargo xtask chaos`: the full resilience run.
pub fn chaos(root: &Path, executions: usize, kills: usize, keep_cluster: bool) -> Result<()> {
    let started = ensure_cluster(root)?;
    let result = chaos_inner(root, executions, kills, 60);
    if !keep_cluster {
        stop_cluster_if(root, started);
    }
    result
}

/// `cargo xtask e2e`.
pub fn e2e(root: &Path, keep_cluster: bool) -> Result<()> {
    let started = ensure_cluster(root)?;
    let result = e2e_inner(root);
    if !keep_cluster {
        stop_cluster_if(root, started);
    }
    result
}

fn kubectl(root: &Path, args: &[&str]) -> Result<String> {
    let out = crate::command(root.join(cluster::KUBECTL))
        .args(["--kubeconfig", cluster::KUBECONFIG])
        .args(args)
        .current_dir(root)
        .output()
        .context("cannot run kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo xtask demo`: the local cluster with nodes, the operator, and the samples of
/// `deploy/samples/` running to their terminal phase.
pub fn demo(root: &Path) -> Result<()> {
    ensure_cluster(root)?;
    run(
        root,
        "build the operator",
        "cargo",
        &["build", "--locked", "-p", "we-operator"],
    )?;
    for f in [
        "namespaces.yaml",
        "workflow-runner.yaml",
        "samples/production-app.yaml",
        "samples/workflow-runner-rbac.yaml",
    ] {
        kubectl(
            root,
            &["apply", "--server-side", "-f", &format!("deploy/{f}")],
        )?;
    }
    // A fresh start for the samples.
    let _ = kubectl(
        root,
        &[
            "delete",
            "-f",
            "deploy/samples/oomkill-remediation-job.yaml",
            "-f",
            "deploy/samples/canary-tekton.yaml",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=30s",
        ],
    );

    let log_path = root.join("target/we-operator-demo.log");
    let log = std::fs::File::create(&log_path)?;
    println!("\n==> starting we-operator (log: {})", log_path.display());
    let mut operator = crate::command(root.join("target/debug/we-operator"))
        .args([
            "run",
            "--execution-namespace",
            "kubernaut-workflows",
            "--cooldown",
            "30s",
            "--leader-election=false",
            "--watch-namespace",
            "kubernaut-system",
        ])
        .args([
            "--log-format",
            "plain",
            "--health-address",
            "127.0.0.1:18081",
            "--metrics-address",
            "127.0.0.1:19090",
        ])
        .env("KUBECONFIG", root.join(cluster::KUBECONFIG))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start we-operator")?;
    let result = demo_samples(root);
    let _ = operator.kill();
    let _ = operator.wait();
    result?;
    println!(
        "\nThe cluster keeps running: export KUBECONFIG={}/{} ; kubectl get wfe -A\nStop it with: cargo xtask cluster down",
        root.display(),
        cluster::KUBECONFIG
    );
    Ok(())
}

/// deploy/samples/canary-tekton.yaml pointed at the canary bundle that `cluster up --nodes`
/// published to the local registry (the same content, so the same digest, as the sample names);
/// returns the written file and the bundle reference.
fn local_canary(root: &Path) -> Result<(std::path::PathBuf, String)> {
    let bundles: std::collections::BTreeMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(root.join(cluster::BUNDLES_FILE))
            .with_context(|| format!("reading {}", cluster::BUNDLES_FILE))?,
    )?;
    let bundle = bundles
        .get("canary-deployment")
        .context("the canary-deployment bundle was not published")?;
    let text = std::fs::read_to_string(root.join("deploy/samples/canary-tekton.yaml"))?;
    let mut wfe: serde_json::Value = serde_yaml::from_str(&text)?;
    let sample = wfe["spec"]["workflowRef"]["containerImage"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let digest = |r: &str| r.rsplit_once('@').map(|(_, d)| d.to_string());
    if digest(&sample) != digest(bundle) {
        eprintln!(
            "warning: deploy/samples/canary-tekton.yaml names {sample}, but the published bundle is {bundle}: update the sample's digest"
        );
    }
    wfe["spec"]["workflowRef"]["containerImage"] = serde_json::json!(format!("oci://{bundle}"));
    let out = root.join("target/wfe-cluster/canary-tekton.yaml");
    std::fs::write(&out, serde_yaml::to_string(&wfe)?)?;
    Ok((out, bundle.clone()))
}

fn demo_samples(root: &Path) -> Result<()> {
    thread::sleep(Duration::from_secs(2));
    let canary = local_canary(root)?;
    println!(
        "\n==> applying deploy/samples/oomkill-remediation-job.yaml (Job backend) and canary-tekton.yaml (Tekton, the default; its bundle from the local registry: {})",
        canary.1
    );
    kubectl(
        root,
        &[
            "apply",
            "-f",
            "deploy/samples/oomkill-remediation-job.yaml",
            "-f",
            &canary.0.display().to_string(),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    loop {
        let table = kubectl(
            root,
            &[
                "get",
                "wfe",
                "restart-my-app-oom",
                "canary-payment-api",
                "-n",
                "kubernaut-system",
            ],
        )?;
        if table != last {
            println!(
                "\n$ kubectl get wfe -n kubernaut-system restart-my-app-oom canary-payment-api\n{table}"
            );
            last = table.clone();
        }
        let phases = kubectl(
            root,
            &[
                "get",
                "wfe",
                "restart-my-app-oom",
                "canary-payment-api",
                "-n",
                "kubernaut-system",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ],
        )?;
        let done = phases
            .split_whitespace()
            .filter(|p| matches!(*p, "Succeeded" | "Failed"))
            .count();
        if done == 2 {
            let t = kubectl(
                root,
                &[
                    "get",
                    "wfe",
                    "restart-my-app-oom",
                    "canary-payment-api",
                    "-n",
                    "kubernaut-system",
                ],
            )?;
            if t != last {
                println!(
                    "\n$ kubectl get wfe -n kubernaut-system restart-my-app-oom canary-payment-api\n{t}"
                );
            }
            println!(
                "$ kubectl get jobs,pipelineruns -n kubernaut-workflows\n{}",
                kubectl(
                    root,
                    &["get", "jobs,pipelineruns", "-n", "kubernaut-workflows"]
                )?
            );
            println!(
                "$ kubectl get events -n kubernaut-system --field-selector involvedObject.name=restart-my-app-oom\n{}",
                kubectl(
                    root,
                    &[
                        "get",
                        "events",
                        "-n",
                        "kubernaut-system",
                        "--field-selector",
                        "involvedObject.name=restart-my-app-oom",
                        "-o",
                        "custom-columns=REASON:.reason,MESSAGE:.message"
                    ]
                )?
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the samples did not reach a terminal phase within 120s; see target/we-operator-demo.log"
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}
