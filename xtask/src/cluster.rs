//! `cargo xtask cluster ...`: a real Kubernetes control plane for tests, built from Go
//! modules (see docs/controlplane.md).
//!
//! * `build`  builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, the
//!   Tekton Pipelines controller and resolvers and an OCI registry from the wrapper modules in
//!   `xtask/controlplane/*` into a cache outside the clone, keyed by the pinned versions.
//! * `up`     starts etcd and kube-apiserver on free loopback ports (plus, with `--nodes`,
//!   kube-controller-manager, kube-scheduler, kwok with one fake node, the OCI registry with the
//!   workflow bundles published in it, and Tekton's controller and resolvers), writes
//!   `target/wfe-cluster/kubeconfig` and installs our CRDs and Tekton's.
//! * `down`   stops, by pid, what `up` started and removes `target/wfe-cluster`.
//! * `status` prints the components, their pids, memory and health.
//!
//! By concern: `build` (pinned versions, binary cache, Go builds, kubectl link), `state`
//! (`cluster.json`, paths, the lock, free ports), `process` (spawn, health, stop by pid),
//! `pki` (certificates), `kubeconfig`, `crds` (our CRDs and Tekton's), `nodes` (`up --nodes`:
//! controllers, kwok, registry, Tekton), `tekton` (its install and bundles), `http` (the health
//! and API requests); this file runs the commands (`up`, `down`, `status`, `restart`).

mod build;
mod crds;
mod http;
mod kubeconfig;
mod nodes;
mod pki;
mod process;
mod state;
mod tekton;

pub(crate) use build::{cache_root, go, gomod_version, run_go};
pub use build::{crane, registry};
pub use tekton::BUNDLES_FILE;

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use build::*;
use crds::*;
use http::{Endpoint, tls_config};
use kubeconfig::*;
use nodes::*;
use pki::Pki;
use process::*;
use state::*;

/// State directory of the cluster, relative to the repository root.
pub const STATE_DIR: &str = "target/wfe-cluster";
/// The kubeconfig of the local cluster, relative to the repository root.
pub const KUBECONFIG: &str = "target/wfe-cluster/kubeconfig";
/// The kubectl built with the control plane (a link into the binary cache), relative to the
/// repository root; `export PATH=$PWD/target/wfe-cluster/bin:$PATH` puts it first.
pub const KUBECTL: &str = "target/wfe-cluster/bin/kubectl";
/// Guards `up` and `down` against each other (kept outside the state dir, which `down` removes).
const LOCK_FILE: &str = "target/wfe-cluster.lock";
const TEKTON_MODULE: &str = "github.com/tektoncd/pipeline";
const NODE_NAME: &str = "kwok-node-0";
const FIELD_MANAGER: &str = "wfe-xtask";
/// Controllers run by kube-controller-manager with `--nodes` (Deployments and ReplicaSets for
/// the chart's install check).
const CONTROLLERS: &str = "job-controller,garbage-collector-controller,namespace-controller,\
ttl-after-finished-controller,pod-garbage-collector-controller,serviceaccount-controller,\
serviceaccount-token-controller,deployment-controller,replicaset-controller";

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Build the control-plane binaries at the pinned versions into the cache
    /// ($WFE_CP_CACHE, default ~/.cache/we-operator/controlplane); skips binaries whose
    /// `--version` already matches. Also downloads the Tekton module for its CRDs.
    Build,
    /// Start etcd + kube-apiserver (and with --nodes also kube-controller-manager,
    /// kube-scheduler and kwok with one fake node), install the CRDs and write
    /// target/wfe-cluster/kubeconfig. Idempotent.
    Up {
        /// Also run the Job controller, GC, scheduler and kwok so that pods really run.
        #[arg(long)]
        nodes: bool,
        /// Serve kube-apiserver's /debug/pprof (for cluster-admin), e.g. for
        /// `kubectl get --raw '/debug/pprof/profile?seconds=20' > cpu.pb.gz` and `go tool pprof`.
        /// A running cluster keeps its flags: `cluster down` first.
        #[arg(long)]
        profiling: bool,
    },
    /// Stop every process `up` started (by pid) and remove target/wfe-cluster.
    Down,
    /// Print components, pids, memory (VmRSS/VmHWM) and health.
    Status,
    /// Stop one component (e.g. kube-apiserver) and start it again with the same flags.
    Restart {
        /// Component name as `status` shows it.
        component: String,
    },
}

impl ClusterCmd {
    /// `up`, as the other xtask commands start the cluster (without profiling).
    pub fn up(nodes: bool) -> Self {
        ClusterCmd::Up {
            nodes,
            profiling: false,
        }
    }
}

pub fn run(cmd: ClusterCmd, root: &Path) -> Result<()> {
    match cmd {
        ClusterCmd::Build => build(root).map(|b| {
            println!("binaries: {}", b.bin.display());
            println!("tekton CRDs: {}", b.tekton_crds.display());
        }),
        ClusterCmd::Up { nodes, profiling } => up(root, nodes, profiling),
        ClusterCmd::Down => down(root),
        ClusterCmd::Status => status(root),
        ClusterCmd::Restart { component } => restart(root, &component),
    }
}

/// Stops one component and starts it again with the same command line (for fault injection:
/// e.g. restarting kube-apiserver under a running operator).
fn restart(root: &Path, name: &str) -> Result<()> {
    let paths = Paths::new(root);
    let Some(mut state) = State::load(&paths)? else {
        bail!("no cluster in {}", paths.state.display());
    };
    let Some(c) = state.components.iter().find(|c| c.name == name).cloned() else {
        bail!("no component {name} in the cluster");
    };
    if c.args.is_empty() {
        bail!(
            "{name} was started by an older xtask without a recorded command line: run `cargo xtask cluster down` and `up`"
        );
    }
    let started = Instant::now();
    stop_components(&mut state, &[name])?;
    // Keep the start order of the state file.
    let fresh = spawn(&paths, name, &c.binary, &c.args, &c.env)?;
    state.components.push(fresh);
    state.save(&paths)?;
    wait_healthy(&state, &paths, name, Duration::from_secs(90))?;
    eprintln!("{name} restarted in {:.1?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// up
// ---------------------------------------------------------------------------------------

fn up(root: &Path, nodes: bool, profiling: bool) -> Result<()> {
    let _lock = lock(root)?;
    let paths = Paths::new(root);
    let started = Instant::now();

    if let Some(mut state) = State::load(&paths).ok().flatten() {
        if CORE.iter().all(|n| state.healthy(&paths, n)) {
            let nodes_ok = NODE_COMPONENTS.iter().all(|n| state.healthy(&paths, n));
            if nodes && !nodes_ok {
                eprintln!("cluster is running without healthy node components: starting them");
                stop_components(&mut state, &NODE_COMPONENTS)?;
                state.save(&paths)?;
                let built = build(root)?;
                start_nodes(&mut state, &paths, &built, root)?;
            }
            if !root.join(KUBECTL).exists() {
                // A cluster started by an older xtask: build (or find) the kubectl it lacks.
                let built = build(root)?;
                link_kubectl(root, &built.binary("kubectl"))?;
            }
            let profiled = |c: &state::Component| c.args.contains(&profiling_flag(true));
            if profiling && !state.component("kube-apiserver").is_some_and(profiled) {
                eprintln!(
                    "the running cluster keeps the flags it was started with: \
                     `cargo xtask cluster down` first to serve /debug/pprof"
                );
            }
            eprintln!("cluster is up ({:.1?})", started.elapsed());
            println!("{}", state.kubeconfig.display());
            return Ok(());
        }
        eprintln!(
            "cluster in {} is not healthy: stopping what is left of it",
            paths.state.display()
        );
        let names: Vec<String> = state.components.iter().map(|c| c.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        stop_components(&mut state, &names)?;
    }
    if paths.state.exists() {
        std::fs::remove_dir_all(&paths.state)
            .with_context(|| format!("removing {}", paths.state.display()))?;
    }

    let built = build(root)?;
    let mut state = match start_core(&paths, &built, root, profiling) {
        Ok(state) => state,
        Err(e) => return Err(cleanup_after_failure(&paths, e)),
    };
    if nodes && let Err(e) = start_nodes(&mut state, &paths, &built, root) {
        return Err(cleanup_after_failure(&paths, e));
    }
    eprintln!(
        "cluster is up ({:.1?}); use it with: export KUBECONFIG={} PATH={}:$PATH",
        started.elapsed(),
        state.kubeconfig.display(),
        root.join(KUBECTL)
            .parent()
            .expect("KUBECTL has a parent")
            .display()
    );
    println!("{}", state.kubeconfig.display());
    Ok(())
}

/// Stops whatever a failed `up` started; keeps the state dir (logs) for inspection.
fn cleanup_after_failure(paths: &Paths, err: anyhow::Error) -> anyhow::Error {
    if let Ok(Some(mut state)) = State::load(paths) {
        let names: Vec<String> = state.components.iter().map(|c| c.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = stop_components(&mut state, &names);
        let _ = state.save(paths);
    }
    err.context(format!(
        "`cargo xtask cluster up` FAILED; logs are in {}",
        paths.logs().display()
    ))
}

/// kube-apiserver's flag that serves (or not) /debug/pprof.
fn profiling_flag(on: bool) -> String {
    format!("--profiling={on}")
}

fn start_core(paths: &Paths, built: &Built, root: &Path, profiling: bool) -> Result<State> {
    for dir in [paths.logs(), paths.pids(), paths.etcd_data()] {
        std::fs::create_dir_all(&dir)?;
    }
    let pki = pki::generate(&paths.pki().dir)?;
    let [
        etcd,
        etcd_peer,
        apiserver,
        controller_manager,
        scheduler,
        kwok,
    ] = free_ports::<6>()?;
    let ports = Ports {
        etcd,
        etcd_peer,
        apiserver,
        controller_manager,
        scheduler,
        kwok,
        registry: 0,
        tekton_controller: 0,
        tekton_resolvers: 0,
    };
    let server = format!("https://127.0.0.1:{apiserver}");
    write_kubeconfig(&paths.kubeconfig(), &server, &pki)?;
    let mut state = State {
        kubeconfig: paths.kubeconfig(),
        server,
        versions: built.versions.clone(),
        bin_dir: built.bin.clone(),
        tekton_crds: built.tekton_crds.clone(),
        ports,
        components: Vec::new(),
    };
    state.save(paths)?;
    link_kubectl(root, &built.binary("kubectl"))?;

    let p = |path: PathBuf| path.display().to_string();
    let etcd_url = format!("http://127.0.0.1:{etcd}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let etcd_args = vec![
        "--name=wfe".to_string(),
        format!("--data-dir={}", p(paths.etcd_data())),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=wfe={peer_url}"),
        "--unsafe-no-fsync=true".to_string(),
        "--quota-backend-bytes=1073741824".to_string(),
        "--log-level=warn".to_string(),
    ];
    state.components.push(spawn(
        paths,
        "etcd",
        &built.binary("etcd"),
        &etcd_args,
        &[],
    )?);
    state.save(paths)?;
    wait_healthy(&state, paths, "etcd", Duration::from_secs(30))?;

    let apiserver_args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={apiserver}"),
        format!("--cert-dir={}", p(pki.dir.join("apiserver"))),
        format!("--tls-cert-file={}", p(pki.serving_crt())),
        format!("--tls-private-key-file={}", p(pki.serving_key())),
        format!("--client-ca-file={}", p(pki.ca_crt())),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
        format!("--service-account-key-file={}", p(pki.sa_pub())),
        format!("--service-account-signing-key-file={}", p(pki.sa_key())),
        "--service-cluster-ip-range=10.0.0.0/24".to_string(),
        "--authorization-mode=RBAC".to_string(),
        // No ServiceAccount admission (no token volumes without kubelet); no not-ready
        // taint on new nodes (nothing runs the node-lifecycle controller). PodSecurity
        // and the other default plugins stay enabled.
        "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition".to_string(),
        "--endpoint-reconciler-type=none".to_string(),
        "--allow-privileged=true".to_string(),
        profiling_flag(profiling),
    ];
    state.components.push(spawn(
        paths,
        "kube-apiserver",
        &built.binary("kube-apiserver"),
        &apiserver_args,
        &[],
    )?);
    state.save(paths)?;
    wait_healthy(&state, paths, "kube-apiserver", Duration::from_secs(120))?;

    install_crds(&state, paths, root)?;
    Ok(state)
}

// ---------------------------------------------------------------------------------------
// down, status
// ---------------------------------------------------------------------------------------

fn down(root: &Path) -> Result<()> {
    let _lock = lock(root)?;
    let paths = Paths::new(root);
    if !paths.state.exists() {
        println!("no cluster in {}", paths.state.display());
        return Ok(());
    }
    match State::load(&paths) {
        Ok(Some(mut state)) => {
            let names: Vec<String> = state.components.iter().map(|c| c.name.clone()).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            stop_components(&mut state, &names)?;
        }
        Ok(None) => eprintln!("no cluster.json: nothing to stop"),
        Err(e) => bail!(
            "{e:#}: cannot tell which processes to stop; see {} and remove {} by hand",
            paths.pids().display(),
            paths.state.display()
        ),
    }
    std::fs::remove_dir_all(&paths.state)
        .with_context(|| format!("removing {}", paths.state.display()))?;
    println!("cluster stopped, {} removed", paths.state.display());
    Ok(())
}

/// True when a cluster with node components runs and is healthy.
pub fn is_healthy(root: &Path) -> bool {
    let paths = Paths::new(root);
    match State::load(&paths) {
        Ok(Some(state)) => CORE
            .iter()
            .chain(NODE_COMPONENTS.iter())
            .all(|n| state.healthy(&paths, n)),
        _ => false,
    }
}

fn status(root: &Path) -> Result<()> {
    let paths = Paths::new(root);
    let Some(state) = State::load(&paths)? else {
        println!(
            "no cluster in {} (start one with `cargo xtask cluster up --nodes`)",
            paths.state.display()
        );
        return Ok(());
    };
    println!("kubeconfig: {}", state.kubeconfig.display());
    println!("server:     {}", state.server);
    println!(
        "versions:   kubernetes {}, etcd {}, kwok {}, tekton {}",
        state.versions.kubernetes, state.versions.etcd, state.versions.kwok, state.versions.tekton
    );
    println!("binaries:   {}", state.bin_dir.display());
    println!();
    println!(
        "{:<24} {:>8} {:>8} {:>11} {:>11}  health",
        "component", "pid", "state", "RSS MiB", "peak MiB"
    );
    let mut total = (0u64, 0u64);
    let mut all_ok = true;
    for c in &state.components {
        let alive = process_alive(c.pid, &c.binary);
        let (rss, hwm) = if alive {
            memory_kib(c.pid).unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        total.0 += rss;
        total.1 += hwm;
        let health = if alive {
            match state.health(&paths, &c.name) {
                Ok(s) => s,
                Err(e) => {
                    all_ok = false;
                    format!("UNHEALTHY: {e:#}")
                }
            }
        } else {
            all_ok = false;
            "-".to_string()
        };
        println!(
            "{:<24} {:>8} {:>8} {:>11.1} {:>11.1}  {}",
            c.name,
            c.pid,
            if alive { "running" } else { "DEAD" },
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            health
        );
    }
    println!(
        "{:<24} {:>8} {:>8} {:>11.1} {:>11.1}",
        "total",
        "",
        "",
        total.0 as f64 / 1024.0,
        total.1 as f64 / 1024.0
    );
    if !NODE_COMPONENTS.iter().any(|n| state.component(n).is_some()) {
        println!("\nno node components (start them with `cargo xtask cluster up --nodes`)");
    }
    if !all_ok {
        bail!("the cluster is not healthy");
    }
    Ok(())
}
