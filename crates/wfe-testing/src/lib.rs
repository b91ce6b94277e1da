//! Test support for integration tests against the local control plane of
//! `cargo xtask cluster` (see docs/controlplane.md).
//!
//! * [`client`] returns an admin client. The cluster is, in this order: the kubeconfig in
//!   `$WFE_TEST_KUBECONFIG`; the cluster in `<repo>/target/wfe-cluster` if it is healthy;
//!   otherwise one started by running `cargo xtask cluster up --nodes` once (guarded by a
//!   file lock, so parallel test binaries don't race). A cluster that cannot be started
//!   fails the test with the command's output: tests never skip silently.
//! * [`namespace`] makes a fresh namespace per test, [`ensure_namespace`] a fixed one.
//! * [`wait_for`] polls a condition every 100 ms.
//! * [`audit::AuditReceiver`] receives the operator's audit events (tests and the benchmark).
//!
//! With `--nodes` the cluster runs the Job controller, the garbage collector, the
//! scheduler and kwok with one fake node (`kwok-node-0`): Job pods "run" and succeed after
//! 500 ms, or fail / hold as the kwok knobs below say (see xtask/controlplane/kwok-stages.yaml).
//! It also runs the real Tekton controller, serving [`tekton::NAMESPACE`] only, its bundles
//! resolver and an OCI registry holding the workflow bundles of [`tekton::bundle`].

pub mod audit;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// Environment variable naming a kubeconfig to use instead of the local cluster.
pub const KUBECONFIG_ENV: &str = "WFE_TEST_KUBECONFIG";
/// The local cluster's kubeconfig, relative to the repository root.
pub const KUBECONFIG_RELATIVE: &str = "target/wfe-cluster/kubeconfig";
/// The kubectl linked by `cargo xtask cluster up`, relative to the repository root.
pub const KUBECTL_RELATIVE: &str = "target/wfe-cluster/bin/kubectl";
/// Label put on every namespace made by [`namespace`].
pub const TEST_NAMESPACE_LABEL: &str = "wfe-test";
/// The fake node run by kwok.
pub const NODE_NAME: &str = "kwok-node-0";

/// kwok knobs on pods (labels / annotations) and on the env of the container named
/// [`kwok::WORKFLOW_CONTAINER`]. The label wins over the env; annotations win over env.
pub mod kwok {
    /// Pod label: `fail` or `hold` (default: pods of Jobs succeed).
    pub const RESULT_LABEL: &str = "kwok.wfe.test/result";
    /// Pod annotation: exit code of a failing pod (default 1).
    pub const EXIT_CODE_ANNOTATION: &str = "kwok.wfe.test/exit-code";
    /// Pod annotation: termination reason of a failing pod (default `Error`).
    pub const REASON_ANNOTATION: &str = "kwok.wfe.test/reason";
    /// Pod annotation: termination message of a failing pod.
    pub const MESSAGE_ANNOTATION: &str = "kwok.wfe.test/message";
    /// Pod annotation: how long the pod runs before it finishes (Go duration, default 500ms).
    pub const RUN_FOR_ANNOTATION: &str = "kwok.wfe.test/run-for";
    /// The container whose env is read.
    pub const WORKFLOW_CONTAINER: &str = "workflow";
    /// Env: `fail` or `hold`.
    pub const RESULT_ENV: &str = "KWOK_RESULT";
    /// Env: exit code of a failing pod.
    pub const EXIT_CODE_ENV: &str = "KWOK_EXIT_CODE";
    /// Env: termination reason of a failing pod (e.g. `OOMKilled`).
    pub const REASON_ENV: &str = "KWOK_REASON";
    /// Env: termination message of a failing pod.
    pub const MESSAGE_ENV: &str = "KWOK_MESSAGE";
    /// Env: run time before the pod finishes (Go duration).
    pub const RUN_FOR_ENV: &str = "KWOK_RUN_FOR";
}

/// The real Tekton of the local cluster.
pub mod tekton {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use kube::Client;
    use kube::api::{Api, ObjectMeta, Patch, PatchParams};

    /// The one namespace the local Tekton controller serves: the operator's execution
    /// namespace. PipelineRuns anywhere else are never touched by a controller.
    pub const NAMESPACE: &str = "kubernaut-workflows";
    /// The workflow service account the runs use.
    pub const RUNNER: &str = "kubernaut-workflow-runner";

    /// The bundles published by `cargo xtask cluster up --nodes`, by file stem, pinned by digest
    /// (`127.0.0.1:<port>/workflows/<stem>@sha256:...`).
    pub fn bundles() -> BTreeMap<String, String> {
        let path = super::kubeconfig_path()
            .parent()
            .expect("the kubeconfig lives in a folder")
            .join("bundles.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "reading {}: {e} (the cluster must run with --nodes)",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
    }

    /// The pinned reference of one bundle (see [`bundles`]).
    pub fn bundle(stem: &str) -> String {
        bundles()
            .remove(stem)
            .unwrap_or_else(|| panic!("no bundle {stem} was published"))
    }

    /// Makes [`NAMESPACE`] as deploy/namespaces.yaml does (Pod Security `restricted`) with the
    /// workflow service account [`RUNNER`]; idempotent.
    pub async fn namespace(client: &Client) {
        let pp = PatchParams::apply("wfe-testing").force();
        let labels: BTreeMap<String, String> = [
            "pod-security.kubernetes.io/enforce",
            "pod-security.kubernetes.io/audit",
            "pod-security.kubernetes.io/warn",
        ]
        .into_iter()
        .map(|k| (k.to_string(), "restricted".to_string()))
        .collect();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .patch(NAMESPACE, &pp, &Patch::Apply(&ns))
            .await
            .unwrap_or_else(|e| panic!("applying namespace {NAMESPACE}: {e}"));
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(RUNNER.into()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
            .patch(RUNNER, &pp, &Patch::Apply(&sa))
            .await
            .unwrap_or_else(|e| panic!("applying service account {RUNNER}: {e}"));
    }
}

static KUBECONFIG: OnceCell<PathBuf> = OnceCell::const_new();

/// The repository root (the workspace this crate lives in).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/wfe-testing lives two levels below the repository root")
        .to_path_buf()
}

/// The kubeconfig in use: the one [`client`] settled on, or else the one it would try first
/// (`$WFE_TEST_KUBECONFIG`, or `<repo>/target/wfe-cluster/kubeconfig`).
pub fn kubeconfig_path() -> PathBuf {
    if let Some(p) = KUBECONFIG.get() {
        return p.clone();
    }
    match std::env::var_os(KUBECONFIG_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(KUBECONFIG_RELATIVE),
    }
}

/// A `kubectl` command for the test cluster: the kubectl that `cargo xtask cluster up` built
/// with the control plane (same version as the server), or the one on `PATH` when the tests run
/// against a cluster of their own (`$WFE_TEST_KUBECONFIG`). `--kubeconfig` is already set.
pub fn kubectl() -> std::process::Command {
    let built = repo_root().join(KUBECTL_RELATIVE);
    let program = if std::env::var_os(KUBECONFIG_ENV).is_none_or(|v| v.is_empty()) && built.exists()
    {
        built.into_os_string()
    } else {
        "kubectl".into()
    };
    let mut cmd = std::process::Command::new(program);
    cmd.arg("--kubeconfig").arg(kubeconfig_path());
    cmd
}

/// An admin client for the test cluster, starting the local cluster if needed (see the
/// crate docs). Panics if no cluster can be had.
pub async fn client() -> Client {
    let path = KUBECONFIG.get_or_init(ensure_cluster).await;
    client_for(path)
        .await
        .unwrap_or_else(|e| panic!("building a client from {}: {e:#}", path.display()))
}

async fn client_for(path: &Path) -> Result<Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(Client::try_from(config)?)
}

async fn ensure_cluster() -> PathBuf {
    if let Some(p) = std::env::var_os(KUBECONFIG_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(p);
        if let Err(e) = readyz(&path).await {
            panic!(
                "{KUBECONFIG_ENV}={}: the cluster is not ready: {e:#}",
                path.display()
            );
        }
        return path;
    }
    let root = repo_root();
    let path = root.join(KUBECONFIG_RELATIVE);
    if local_cluster_healthy(&root, &path).await {
        return path;
    }
    // Serialise the start-up across test binaries running in parallel.
    let lock_path = root.join("target/wfe-testing.lock");
    let lock = tokio::task::spawn_blocking(move || lock_file(&lock_path))
        .await
        .expect("lock task")
        .unwrap_or_else(|e| panic!("{e:#}"));
    if !local_cluster_healthy(&root, &path).await {
        let root2 = root.clone();
        tokio::task::spawn_blocking(move || start_local_cluster(&root2))
            .await
            .expect("cluster start task");
        if let Err(e) = readyz(&path).await {
            panic!(
                "`cargo xtask cluster up --nodes` succeeded but the cluster is not ready: {e:#}"
            );
        }
    }
    drop(lock);
    path
}

fn lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// All components recorded in cluster.json run, the apiserver is ready and the node Ready.
async fn local_cluster_healthy(root: &Path, kubeconfig: &Path) -> bool {
    let Ok(bytes) = std::fs::read(root.join("target/wfe-cluster/cluster.json")) else {
        return false;
    };
    let Ok(state) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    let components = state["components"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = components
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let wanted = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "registry",
        "tekton-resolvers",
        "tekton-controller",
    ];
    if !wanted.iter().all(|w| names.contains(w)) {
        return false;
    }
    let all_alive = components
        .iter()
        .all(|c| c["pid"].as_u64().is_some_and(|pid| pid_alive(pid as u32)));
    if !all_alive || readyz(kubeconfig).await.is_err() {
        return false;
    }
    node_ready(kubeconfig).await.unwrap_or(false)
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}

async fn readyz(kubeconfig: &Path) -> Result<()> {
    let client = client_for(kubeconfig).await?;
    let req = http::Request::get("/readyz").body(Vec::new())?;
    let text = tokio::time::timeout(Duration::from_secs(10), client.request_text(req))
        .await
        .context("GET /readyz timed out")??;
    anyhow::ensure!(text.trim() == "ok", "GET /readyz: {text}");
    Ok(())
}

async fn node_ready(kubeconfig: &Path) -> Result<bool> {
    let client = client_for(kubeconfig).await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    let node = nodes.get(NODE_NAME).await?;
    Ok(node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Runs `cargo xtask cluster up --nodes`, showing its progress on stderr (a cold build of
/// the control plane takes ~10 minutes); panics with its whole output if it fails.
fn start_local_cluster(root: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut stderr = std::io::stderr();
    let _ = writeln!(
        stderr,
        "wfe-testing: starting the local cluster: cargo xtask cluster up --nodes"
    );
    let mut child = Command::new(&cargo)
        .args(["xtask", "cluster", "up", "--nodes"])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cargo:?} xtask cluster up --nodes: {e}"));
    let output = std::sync::Arc::new(Mutex::new(String::new()));
    let pump = |stream: Box<dyn std::io::Read + Send>| {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                // Straight to the process's stderr: libtest does not capture this, so a
                // long build shows progress.
                let _ = writeln!(std::io::stderr(), "  | {line}");
                let mut out = output.lock().expect("output lock");
                out.push_str(&line);
                out.push('\n');
            }
        })
    };
    let t1 = pump(Box::new(child.stdout.take().expect("piped stdout")));
    let t2 = pump(Box::new(child.stderr.take().expect("piped stderr")));
    let status = child.wait().expect("waiting for cargo xtask cluster up");
    let _ = t1.join();
    let _ = t2.join();
    if !status.success() {
        let out = output.lock().expect("output lock");
        panic!("`cargo xtask cluster up --nodes` failed ({status}):\n{out}");
    }
}

fn sanitize_prefix(prefix: &str) -> String {
    let mut s: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(50);
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "test".to_string() } else { s }
}

/// Creates a fresh namespace `{prefix}-{random}` labelled `wfe-test=true` and returns its name.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{}-{}", sanitize_prefix(prefix), &suffix[..8]);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// Creates the namespace `name` unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) {
    let api = Api::<Namespace>::all(client.clone());
    match api.get_opt(name).await {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => panic!("reading namespace {name}: {e}"),
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// Calls `f` every 100 ms until it returns `Some`; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_valid_names() {
        assert_eq!(sanitize_prefix("Job_Tests"), "job-tests");
        assert_eq!(sanitize_prefix("--"), "test");
        assert!(sanitize_prefix(&"x".repeat(100)).len() <= 50);
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("xtask").is_dir());
    }

    #[tokio::test]
    async fn wait_for_returns_the_value() {
        let mut n = 0;
        let v = wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 200ms waiting for never")]
    async fn wait_for_panics_on_timeout() {
        wait_for::<(), _, _>("never", Duration::from_millis(200), || async { None }).await;
    }
}
