//! Building the control plane: the pinned versions, the binary cache outside the clone, the
//! Go builds of the wrapper modules, the tools they provide (crane, the registry) and the link
//! to kubectl.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Versions {
    pub(super) kubernetes: String,
    pub(super) etcd: String,
    pub(super) kwok: String,
    pub(super) tekton: String,
}

impl Versions {
    /// Reads the pinned versions from the wrapper modules' go.mod files.
    pub(super) fn pinned(root: &Path) -> Result<Self> {
        let cp = root.join("xtask/controlplane");
        Ok(Self {
            kubernetes: gomod_version(&cp.join("k8s/go.mod"), "k8s.io/kubernetes")?,
            etcd: gomod_version(&cp.join("etcd/go.mod"), "go.etcd.io/etcd/server/v3")?,
            kwok: gomod_version(&cp.join("kwok/go.mod"), "sigs.k8s.io/kwok")?,
            tekton: gomod_version(&cp.join("tekton/go.mod"), TEKTON_MODULE)?,
        })
    }

    pub(super) fn cache_key(&self) -> String {
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
pub(super) struct Built {
    pub(super) versions: Versions,
    pub(super) bin: PathBuf,
    pub(super) tekton_crds: PathBuf,
}

impl Built {
    pub(super) fn binary(&self, name: &str) -> PathBuf {
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
pub(super) fn version_matches(bin: &Path, matches: impl Fn(&str) -> bool) -> bool {
    version_line_matches(bin, &["--version"], matches)
}

/// Whether `bin ARGS` prints a line for which `matches` is true.
pub(super) fn version_line_matches(
    bin: &Path,
    args: &[&str],
    matches: impl Fn(&str) -> bool,
) -> bool {
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

pub(super) fn build(root: &Path) -> Result<Built> {
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
pub(super) fn tekton_crds(versions: &Versions) -> Result<PathBuf> {
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

/// Links the kubectl of the binary cache at [`KUBECTL`], so that scripts, tests and people use
/// a client of the server's version without installing one.
pub(super) fn link_kubectl(root: &Path, built: &Path) -> Result<()> {
    let link = root.join(KUBECTL);
    let dir = link.parent().expect("KUBECTL has a parent folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(built, &link)
        .with_context(|| format!("linking {} to {}", link.display(), built.display()))
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
}
