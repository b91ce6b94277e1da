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

mod http;
mod pki;
mod tekton;

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

use http::{Endpoint, tls_config};
use pki::Pki;

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

pub fn run(cmd: ClusterCmd, root: &Path) -> Result<()> {
    match cmd {
        ClusterCmd::Build => build(root).map(|b| {
            println!("binaries: {}", b.bin.display());
            println!("tekton CRDs: {}", b.tekton_crds.display());
        }),
        ClusterCmd::Up { nodes } => up(root, nodes),
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
// Versions and the binary cache
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Versions {
    kubernetes: String,
    etcd: String,
    kwok: String,
    tekton: String,
}

impl Versions {
    /// Reads the pinned versions from the wrapper modules' go.mod files.
    fn pinned(root: &Path) -> Result<Self> {
        let cp = root.join("xtask/controlplane");
        Ok(Self {
            kubernetes: gomod_version(&cp.join("k8s/go.mod"), "k8s.io/kubernetes")?,
            etcd: gomod_version(&cp.join("etcd/go.mod"), "go.etcd.io/etcd/server/v3")?,
            kwok: gomod_version(&cp.join("kwok/go.mod"), "sigs.k8s.io/kwok")?,
            tekton: gomod_version(&cp.join("tekton/go.mod"), TEKTON_MODULE)?,
        })
    }

    fn cache_key(&self) -> String {
        format!(
            "k8s-{}_etcd-{}_kwok-{}",
            self.kubernetes, self.etcd, self.kwok
        )
    }
}

/// The version a go.mod requires of `module` (ignoring `replace` lines).
pub(crate) fn gomod_version(gomod: &Path, module: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(gomod).with_context(|| format!("reading {}", gomod.display()))?;
    for line in text.lines() {
        if line.contains("=>") {
            continue;
        }
        let line = line.trim().trim_start_matches("require").trim();
        let mut words = line.split_whitespace();
        if words.next() == Some(module)
            && let Some(v) = words.next()
        {
            return Ok(v.to_string());
        }
    }
    bail!("{} does not require {module}", gomod.display())
}

pub(crate) fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WFE_CP_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set; set WFE_CP_CACHE"))?;
    Ok(PathBuf::from(home).join(".cache/we-operator/controlplane"))
}

#[derive(Debug)]
struct Built {
    versions: Versions,
    bin: PathBuf,
    tekton_crds: PathBuf,
}

impl Built {
    fn binary(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

pub(crate) fn go(dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(dir)
        .env("GOWORK", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=readonly -buildvcs=false");
    cmd
}

pub(crate) fn run_go(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("  $ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("running `go` for {what}: is Go installed and on PATH?"))?;
    if !status.success() {
        bail!("building {what} FAILED ({status}); the go output is above");
    }
    Ok(())
}

/// Whether `bin --version` prints a line for which `matches` is true.
fn version_matches(bin: &Path, matches: impl Fn(&str) -> bool) -> bool {
    version_line_matches(bin, &["--version"], matches)
}

/// Whether `bin ARGS` prints a line for which `matches` is true.
fn version_line_matches(bin: &Path, args: &[&str], matches: impl Fn(&str) -> bool) -> bool {
    let Ok(out) = Command::new(bin).args(args).stdin(Stdio::null()).output() else {
        return false;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success() && text.lines().any(|l| matches(l.trim()))
}

fn build(root: &Path) -> Result<Built> {
    let versions = Versions::pinned(root)?;
    let bin = cache_root()?.join(versions.cache_key()).join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let cp = root.join("xtask/controlplane");
    let started = Instant::now();

    // etcd
    let etcd_line = format!("etcd Version: {}", versions.etcd.trim_start_matches('v'));
    if version_matches(&bin.join("etcd"), |l| l == etcd_line) {
        eprintln!("etcd {}: up to date", versions.etcd);
    } else {
        eprintln!("building etcd {} (cold: about 1 minute)", versions.etcd);
        let t = Instant::now();
        let mut cmd = go(&cp.join("etcd"));
        cmd.args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
            .arg(bin.join("etcd"))
            .arg("go.etcd.io/etcd/server/v3");
        run_go(cmd, "etcd")?;
        if !version_matches(&bin.join("etcd"), |l| l == etcd_line) {
            bail!("the freshly built etcd does not report {etcd_line:?}");
        }
        eprintln!("  etcd built in {:.0?}", t.elapsed());
    }

    // kwok
    let kwok_prefix = format!("kwok version {} ", versions.kwok);
    if version_matches(&bin.join("kwok"), |l| l.starts_with(&kwok_prefix)) {
        eprintln!("kwok {}: up to date", versions.kwok);
    } else {
        eprintln!("building kwok {} (cold: about 1-2 minutes)", versions.kwok);
        let t = Instant::now();
        let mut cmd = go(&cp.join("kwok"));
        cmd.args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
            .arg(bin.join("kwok"))
            .arg("sigs.k8s.io/kwok/cmd/kwok");
        run_go(cmd, "kwok")?;
        if !version_matches(&bin.join("kwok"), |l| l.starts_with(&kwok_prefix)) {
            bail!("the freshly built kwok does not report {kwok_prefix:?}");
        }
        eprintln!("  kwok built in {:.0?}", t.elapsed());
    }

    // kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (one go build:
    // shared packages). kubectl is built rather than taken from the machine so that its version
    // matches the server's and a fresh machine needs no kubectl of its own.
    let kube = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
    ];
    let kube_line = format!("Kubernetes {}", versions.kubernetes);
    let kubectl_line = format!("Client Version: {}", versions.kubernetes);
    let current = |b: &str| {
        if b == "kubectl" {
            version_line_matches(&bin.join(b), &["version", "--client"], |l| {
                l == kubectl_line
            })
        } else {
            version_matches(&bin.join(b), |l| l == kube_line)
        }
    };
    if kube.iter().all(|b| current(b)) {
        eprintln!("kubernetes {}: up to date", versions.kubernetes);
    } else {
        eprintln!(
            "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl {} (cold: about 8 minutes, 2.6 GB RAM)",
            versions.kubernetes
        );
        let t = Instant::now();
        let v = &versions.kubernetes;
        let minor = v
            .split('.')
            .nth(1)
            .ok_or_else(|| anyhow!("unexpected kubernetes version {v}"))?;
        let mut ldflags = String::from("-s -w");
        for p in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            write!(
                ldflags,
                " -X {p}.gitVersion={v} -X {p}.gitMajor=1 -X {p}.gitMinor={minor} -X {p}.gitTreeState=clean \
                 -X {p}.gitCommit=0000000000000000000000000000000000000000 -X {p}.buildDate=2026-01-01T00:00:00Z"
            )?;
        }
        let mut out_dir = bin.clone().into_os_string();
        out_dir.push("/");
        let mut cmd = go(&cp.join("k8s"));
        cmd.args(["build", "-trimpath", "-tags=selinux,notest,grpcnotrace"])
            .arg(format!("-ldflags={ldflags}"))
            .arg("-o")
            .arg(out_dir)
            .args(kube.iter().map(|b| format!("k8s.io/kubernetes/cmd/{b}")));
        run_go(cmd, "kubernetes")?;
        for b in kube {
            if !current(b) {
                bail!(
                    "the freshly built {b} does not report version {}",
                    versions.kubernetes
                );
            }
        }
        eprintln!("  kubernetes built in {:.0?}", t.elapsed());
    }

    tekton::build(&cp.join("tekton"), &bin, &versions.tekton)?;
    let tekton_crds = tekton_crds(&versions)?;
    eprintln!("control plane binaries ready in {:.1?}", started.elapsed());
    Ok(Built {
        versions,
        bin,
        tekton_crds,
    })
}

/// The `crane` of the binary cache (go-containerregistry's registry client), built if needed.
pub fn crane(root: &Path) -> Result<PathBuf> {
    Ok(build(root)?.binary("crane"))
}

/// The address (`127.0.0.1:PORT`) of the running local cluster's OCI registry.
pub fn registry(root: &Path) -> Result<String> {
    let paths = Paths::new(root);
    let state = State::load(&paths)?.ok_or_else(|| anyhow!("no local cluster is running"))?;
    if state.ports.registry == 0 {
        bail!("the local cluster runs without its registry (start it with --nodes)");
    }
    Ok(format!("127.0.0.1:{}", state.ports.registry))
}

/// Downloads the Tekton module (a plain Go module download) and returns its CRD directory.
fn tekton_crds(versions: &Versions) -> Result<PathBuf> {
    let module = format!("{TEKTON_MODULE}@{}", versions.tekton);
    let mut cmd = Command::new("go");
    cmd.current_dir(std::env::temp_dir())
        .env("GOWORK", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .args(["mod", "download", "-json", &module]);
    let out = cmd.output().with_context(|| {
        format!("running `go mod download {module}`: is Go installed and on PATH?")
    })?;
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() || info.get("Error").is_some() {
        bail!(
            "go mod download {module} FAILED ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = info
        .get("Dir")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("go mod download {module} gave no Dir"))?;
    let crds = Path::new(dir).join("config/300-crds");
    if !crds.join("300-pipelinerun.yaml").is_file() {
        bail!("{} holds no Tekton CRDs", crds.display());
    }
    Ok(crds)
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ports {
    etcd: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
    scheduler: u16,
    kwok: u16,
    /// The OCI registry (`--nodes`).
    #[serde(default)]
    registry: u16,
    /// Probe ports of Tekton's controller and resolvers (`--nodes`).
    #[serde(default)]
    tekton_controller: u16,
    #[serde(default)]
    tekton_resolvers: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Component {
    name: String,
    pid: u32,
    binary: PathBuf,
    log: PathBuf,
    /// The command line, so that one component can be restarted alone.
    #[serde(default)]
    args: Vec<String>,
    /// Environment variables set for it, beyond the inherited ones.
    #[serde(default)]
    env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    kubeconfig: PathBuf,
    server: String,
    versions: Versions,
    bin_dir: PathBuf,
    tekton_crds: PathBuf,
    ports: Ports,
    components: Vec<Component>,
}

#[derive(Debug)]
struct Paths {
    state: PathBuf,
}

impl Paths {
    fn new(root: &Path) -> Self {
        Self {
            state: root.join(STATE_DIR),
        }
    }
    fn json(&self) -> PathBuf {
        self.state.join("cluster.json")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }
    fn pki(&self) -> Pki {
        Pki {
            dir: self.state.join("pki"),
        }
    }
    fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    fn pids(&self) -> PathBuf {
        self.state.join("pids")
    }
    fn etcd_data(&self) -> PathBuf {
        self.state.join("etcd")
    }
}

impl State {
    fn load(paths: &Paths) -> Result<Option<Self>> {
        match std::fs::read(paths.json()) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).context("parsing cluster.json")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading cluster.json"),
        }
    }

    fn save(&self, paths: &Paths) -> Result<()> {
        let tmp = paths.state.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, paths.json())?;
        Ok(())
    }

    fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    fn apiserver(&self, paths: &Paths) -> Result<Endpoint> {
        let pki = paths.pki();
        let tls = tls_config(&pki.ca_crt(), Some((&pki.admin_crt(), &pki.admin_key())))?;
        Ok(Endpoint::https(self.ports.apiserver, tls))
    }

    /// Health of one component: Ok(detail) or Err(reason).
    fn health(&self, paths: &Paths, name: &str) -> Result<String> {
        let pki = paths.pki();
        let tls = || tls_config(&pki.ca_crt(), None);
        match name {
            "etcd" => {
                let body = Endpoint::http(self.ports.etcd).get_ok("/health")?.text();
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if v.get("health").and_then(Value::as_str) == Some("true") {
                    Ok("/health ok".into())
                } else {
                    bail!("/health: {}", body.trim())
                }
            }
            "kube-apiserver" => {
                self.apiserver(paths)?.get_ok("/readyz")?;
                Ok("/readyz ok".into())
            }
            "kube-controller-manager" => {
                Endpoint::https(self.ports.controller_manager, tls()?).get_ok("/healthz")?;
                Ok("/healthz ok".into())
            }
            "kube-scheduler" => {
                Endpoint::https(self.ports.scheduler, tls()?).get_ok("/healthz")?;
                Ok("/healthz ok".into())
            }
            "kwok" => {
                Endpoint::http(self.ports.kwok).get_ok("/healthz")?;
                let node = self
                    .apiserver(paths)?
                    .get_ok(&format!("/api/v1/nodes/{NODE_NAME}"))?
                    .json()?;
                if node_ready(&node) {
                    Ok(format!("/healthz ok, node {NODE_NAME} Ready"))
                } else {
                    bail!("node {NODE_NAME} is not Ready")
                }
            }
            "registry" => {
                Endpoint::http(self.ports.registry).get_ok("/v2/")?;
                Ok("/v2/ ok".into())
            }
            "tekton-controller" => {
                Endpoint::http(self.ports.tekton_controller).get_ok("/health")?;
                Ok("/health ok".into())
            }
            "tekton-resolvers" => {
                Endpoint::http(self.ports.tekton_resolvers).get_ok("/health")?;
                Ok("/health ok".into())
            }
            other => bail!("unknown component {other}"),
        }
    }

    /// Running (pid alive and the same binary) and healthy.
    fn healthy(&self, paths: &Paths, name: &str) -> bool {
        self.component(name)
            .is_some_and(|c| process_alive(c.pid, &c.binary))
            && self.health(paths, name).is_ok()
    }
}

const CORE: [&str; 2] = ["etcd", "kube-apiserver"];
/// Started by `up --nodes`, in this order.
const NODE_COMPONENTS: [&str; 6] = [
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "registry",
    "tekton-resolvers",
    "tekton-controller",
];

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// Whether `pid` is a live (not zombie) process running `binary`.
fn process_alive(pid: u32, binary: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X") | None) {
        return false;
    }
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let exe = exe.to_string_lossy();
    let exe = exe.trim_end_matches(" (deleted)");
    let want = binary
        .canonicalize()
        .unwrap_or_else(|_| binary.to_path_buf());
    Path::new(exe) == want
}

/// Starts a component detached from this process: its own process group, stdio to a log
/// file, so it keeps running after xtask exits.
fn spawn(
    paths: &Paths,
    name: &str,
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<Component> {
    let log_path = paths.logs().join(format!("{name}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let binary = binary.canonicalize().with_context(|| {
        format!(
            "{} is missing: run `cargo xtask cluster build`",
            binary.display()
        )
    })?;
    let child = Command::new(&binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&paths.state)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    // Not waited for: the process outlives xtask (and is reparented when xtask exits).
    drop(child);
    std::fs::write(paths.pids().join(format!("{name}.pid")), format!("{pid}\n"))?;
    eprintln!("started {name} (pid {pid}), log {}", log_path.display());
    Ok(Component {
        name: name.to_string(),
        pid,
        binary,
        log: log_path,
        args: args.to_vec(),
        env: env.to_vec(),
    })
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls until the component is healthy; fails early if its process exits.
fn wait_healthy(state: &State, paths: &Paths, name: &str, timeout: Duration) -> Result<()> {
    let c = state
        .component(name)
        .ok_or_else(|| anyhow!("{name} was not started"))?;
    let start = Instant::now();
    loop {
        let last = match state.health(paths, name) {
            Ok(_) => {
                eprintln!("{name} is healthy after {:.1?}", start.elapsed());
                return Ok(());
            }
            Err(e) => e,
        };
        if !process_alive(c.pid, &c.binary) {
            bail!(
                "{name} (pid {}) exited; last lines of {}:\n{}",
                c.pid,
                c.log.display(),
                log_tail(&c.log, 60)
            );
        }
        if start.elapsed() > timeout {
            bail!(
                "{name} not healthy after {timeout:?} ({last:#}); last lines of {}:\n{}",
                c.log.display(),
                log_tail(&c.log, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERM, then SIGKILL after a timeout. Only signals `pid` if it still runs `binary`.
fn stop_process(c: &Component) -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !process_alive(c.pid, &c.binary) {
        return Ok(());
    }
    let pid = Pid::from_raw(i32::try_from(c.pid)?);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !process_alive(c.pid, &c.binary) {
            eprintln!("stopped {} (pid {})", c.name, c.pid);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{} (pid {}) ignored SIGTERM for 10s: SIGKILL",
        c.name, c.pid
    );
    let _ = kill(pid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !process_alive(c.pid, &c.binary) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{} (pid {}) survived SIGKILL", c.name, c.pid)
}

fn stop_components(state: &mut State, names: &[&str]) -> Result<()> {
    // Stop in reverse start order.
    let mut errors = Vec::new();
    for c in state.components.iter().rev() {
        if names.contains(&c.name.as_str())
            && let Err(e) = stop_process(c)
        {
            errors.push(format!("{e:#}"));
        }
    }
    state
        .components
        .retain(|c| !names.contains(&c.name.as_str()));
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// An exclusive lock on target/wfe-cluster.lock for the lifetime of the returned file.
fn lock(root: &Path) -> Result<File> {
    let path = root.join(LOCK_FILE);
    std::fs::create_dir_all(path.parent().expect("lock file has a parent"))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        eprintln!(
            "waiting for {} (another `cargo xtask cluster` runs)",
            path.display()
        );
        file.lock()?;
    }
    Ok(file)
}

// ---------------------------------------------------------------------------------------
// up
// ---------------------------------------------------------------------------------------

fn up(root: &Path, nodes: bool) -> Result<()> {
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
    let mut state = match start_core(&paths, &built, root) {
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

fn start_core(paths: &Paths, built: &Built, root: &Path) -> Result<State> {
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
        "--profiling=false".to_string(),
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

fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> Result<()> {
    let b64 = |p: PathBuf| -> Result<String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(&p)?))
    };
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: wfe-test
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: wfe-admin
  user:
    client-certificate-data: {crt}
    client-key-data: {key}
contexts:
- name: wfe-test
  context:
    cluster: wfe-test
    user: wfe-admin
current-context: wfe-test
",
        ca = b64(pki.ca_crt())?,
        crt = b64(pki.admin_crt())?,
        key = b64(pki.admin_key())?,
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Server-side applies every CRD in deploy/crds and the Tekton CRDs (conversion patched to
/// `None`: nothing serves Tekton's conversion webhook; see also
/// [`tekton::relax_resolution_request_status`]), then waits until all are Established.
fn install_crds(state: &State, paths: &Paths, root: &Path) -> Result<()> {
    let t = Instant::now();
    let api = state.apiserver(paths)?;
    let mut files = Vec::new();
    for (dir, tekton) in [
        (root.join("deploy/crds"), false),
        (state.tekton_crds.clone(), true),
    ] {
        let mut yamls: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        yamls.sort();
        files.extend(yamls.into_iter().map(|p| (p, tekton)));
    }
    let mut names = Vec::new();
    for (file, tekton) in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut crd: Value =
                Value::deserialize(doc).with_context(|| format!("parsing {}", file.display()))?;
            if crd.is_null() {
                continue;
            }
            if crd.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                continue;
            }
            let name = crd
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("a CRD in {} has no name", file.display()))?
                .to_string();
            if tekton {
                crd["spec"]["conversion"] = json!({"strategy": "None"});
                tekton::relax_resolution_request_status(&mut crd);
            }
            let resp = api.request(
                "PATCH",
                &format!(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager={FIELD_MANAGER}&force=true"
                ),
                Some("application/apply-patch+yaml"),
                &serde_json::to_vec(&crd)?,
            )?;
            if !resp.is_success() {
                bail!(
                    "applying CRD {name} from {}: HTTP {}: {}",
                    file.display(),
                    resp.status,
                    resp.text()
                );
            }
            names.push(name);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in &names {
        loop {
            let crd = api
                .get_ok(&format!(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                ))?
                .json()?;
            if condition_true(&crd, "Established") {
                break;
            }
            if Instant::now() > deadline {
                bail!("CRD {name} not Established after 60s: {}", crd["status"]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!(
        "installed and established {} CRDs in {:.1?}",
        names.len(),
        t.elapsed()
    );
    Ok(())
}

fn condition_true(obj: &Value, ty: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(ty)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn node_ready(node: &Value) -> bool {
    condition_true(node, "Ready")
}

fn start_nodes(state: &mut State, paths: &Paths, built: &Built, root: &Path) -> Result<()> {
    let pki = paths.pki();
    let p = |path: PathBuf| path.display().to_string();
    let kc = p(paths.kubeconfig());
    let common = |port: u16| {
        vec![
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", p(pki.serving_crt())),
            format!("--tls-private-key-file={}", p(pki.serving_key())),
            "--leader-elect=false".to_string(),
        ]
    };
    let mut kcm_args = common(state.ports.controller_manager);
    kcm_args.extend([
        format!("--controllers={CONTROLLERS}"),
        format!("--service-account-private-key-file={}", p(pki.sa_key())),
        format!("--root-ca-file={}", p(pki.ca_crt())),
        "--kube-api-qps=100".to_string(),
        "--kube-api-burst=200".to_string(),
    ]);
    state.components.push(spawn(
        paths,
        "kube-controller-manager",
        &built.binary("kube-controller-manager"),
        &kcm_args,
        &[],
    )?);
    state.save(paths)?;
    let sched_args = common(state.ports.scheduler);
    state.components.push(spawn(
        paths,
        "kube-scheduler",
        &built.binary("kube-scheduler"),
        &sched_args,
        &[],
    )?);
    state.save(paths)?;

    let stages = root.join("xtask/controlplane/kwok-stages.yaml");
    let kwok_args = vec![
        format!("--kubeconfig={kc}"),
        format!("--config={}", p(stages)),
        "--manage-all-nodes=false".to_string(),
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".to_string(),
        "--cidr=10.244.0.0/16".to_string(),
        "--node-ip=10.0.0.2".to_string(),
        format!("--server-address=127.0.0.1:{}", state.ports.kwok),
    ];
    state.components.push(spawn(
        paths,
        "kwok",
        &built.binary("kwok"),
        &kwok_args,
        &[],
    )?);
    state.save(paths)?;

    wait_healthy(
        state,
        paths,
        "kube-controller-manager",
        Duration::from_secs(60),
    )?;
    wait_healthy(state, paths, "kube-scheduler", Duration::from_secs(60))?;

    // One fake node, no taints, managed by kwok through its annotation.
    let api = state.apiserver(paths)?;
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok"
            }
        }
    });
    let resp = api.request(
        "POST",
        "/api/v1/nodes",
        Some("application/json"),
        &serde_json::to_vec(&node)?,
    )?;
    if !resp.is_success() && resp.status != 409 {
        bail!(
            "creating node {NODE_NAME}: HTTP {}: {}",
            resp.status,
            resp.text()
        );
    }
    wait_healthy(state, paths, "kwok", Duration::from_secs(60))?;
    tekton::start(state, paths, built, root)
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

/// (VmRSS, VmHWM) in KiB from /proc/<pid>/status.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Links the kubectl of the binary cache at [`KUBECTL`], so that scripts, tests and people use
/// a client of the server's version without installing one.
fn link_kubectl(root: &Path, built: &Path) -> Result<()> {
    let link = root.join(KUBECTL);
    let dir = link.parent().expect("KUBECTL has a parent folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(built, &link)
        .with_context(|| format!("linking {} to {}", link.display(), built.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_come_from_go_mod() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let v = Versions::pinned(root).unwrap();
        assert!(v.kubernetes.starts_with("v1."), "{v:?}");
        assert!(v.etcd.starts_with("v3."), "{v:?}");
        assert!(v.kwok.starts_with("v0."), "{v:?}");
        assert_eq!(
            v.cache_key(),
            format!("k8s-{}_etcd-{}_kwok-{}", v.kubernetes, v.etcd, v.kwok)
        );
    }

    #[test]
    fn kwok_stages_file_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("controlplane/kwok-stages.yaml")).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let stages: Vec<&str> = docs
            .iter()
            .filter(|d| d["kind"] == "Stage")
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            stages,
            [
                "node-initialize",
                "pod-running",
                "pod-succeeded",
                "pod-failed",
                "pod-delete"
            ]
        );
    }
}
