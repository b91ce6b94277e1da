//! The state of a running cluster: `target/wfe-cluster/cluster.json` (ports, components, pids),
//! the paths below `target/wfe-cluster`, the lock that serializes `cargo xtask cluster`, and
//! free loopback ports.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Ports {
    pub(super) etcd: u16,
    pub(super) etcd_peer: u16,
    pub(super) apiserver: u16,
    pub(super) controller_manager: u16,
    pub(super) scheduler: u16,
    pub(super) kwok: u16,
    /// The OCI registry (`--nodes`).
    #[serde(default)]
    pub(super) registry: u16,
    /// Probe ports of Tekton's controller and resolvers (`--nodes`).
    #[serde(default)]
    pub(super) tekton_controller: u16,
    #[serde(default)]
    pub(super) tekton_resolvers: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Component {
    pub(super) name: String,
    pub(super) pid: u32,
    pub(super) binary: PathBuf,
    pub(super) log: PathBuf,
    /// The command line, so that one component can be restarted alone.
    #[serde(default)]
    pub(super) args: Vec<String>,
    /// Environment variables set for it, beyond the inherited ones.
    #[serde(default)]
    pub(super) env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) kubeconfig: PathBuf,
    pub(super) server: String,
    pub(super) versions: Versions,
    pub(super) bin_dir: PathBuf,
    pub(super) tekton_crds: PathBuf,
    pub(super) ports: Ports,
    pub(super) components: Vec<Component>,
}

#[derive(Debug)]
pub(super) struct Paths {
    pub(super) state: PathBuf,
}

impl Paths {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            state: root.join(STATE_DIR),
        }
    }
    pub(super) fn json(&self) -> PathBuf {
        self.state.join("cluster.json")
    }
    pub(super) fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }
    pub(super) fn pki(&self) -> Pki {
        Pki {
            dir: self.state.join("pki"),
        }
    }
    pub(super) fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    pub(super) fn pids(&self) -> PathBuf {
        self.state.join("pids")
    }
    pub(super) fn etcd_data(&self) -> PathBuf {
        self.state.join("etcd")
    }
}

impl State {
    pub(super) fn load(paths: &Paths) -> Result<Option<Self>> {
        match std::fs::read(paths.json()) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).context("parsing cluster.json")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading cluster.json"),
        }
    }

    pub(super) fn save(&self, paths: &Paths) -> Result<()> {
        let tmp = paths.state.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, paths.json())?;
        Ok(())
    }

    pub(super) fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    pub(super) fn apiserver(&self, paths: &Paths) -> Result<Endpoint> {
        let pki = paths.pki();
        let tls = tls_config(&pki.ca_crt(), Some((&pki.admin_crt(), &pki.admin_key())))?;
        Ok(Endpoint::https(self.ports.apiserver, tls))
    }

    /// Health of one component: Ok(detail) or Err(reason).
    pub(super) fn health(&self, paths: &Paths, name: &str) -> Result<String> {
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
    pub(super) fn healthy(&self, paths: &Paths, name: &str) -> bool {
        self.component(name)
            .is_some_and(|c| process_alive(c.pid, &c.binary))
            && self.health(paths, name).is_ok()
    }
}

pub(super) const CORE: [&str; 2] = ["etcd", "kube-apiserver"];

/// Started by `up --nodes`, in this order.
pub(super) const NODE_COMPONENTS: [&str; 6] = [
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "registry",
    "tekton-resolvers",
    "tekton-controller",
];

pub(super) fn free_ports<const N: usize>() -> Result<[u16; N]> {
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
pub(super) fn lock(root: &Path) -> Result<File> {
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
