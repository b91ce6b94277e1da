//! The real Tekton on the local cluster: Tekton Pipelines' controller and its bundles resolver,
//! built from the `github.com/tektoncd/pipeline` module at the version whose CRDs we install, an
//! OCI registry (go-containerregistry's), and the workflow bundles published into it.
//!
//! The two Tekton processes run Tekton's own reconcilers through small mains of ours
//! (`xtask/controlplane/tekton/{controller,resolvers}`): the released binaries also start
//! knative's probe server on the fixed port 8080 of every interface, so two of them (or two local
//! clusters) cannot share a host. Ours turn that server off and answer probes on a free loopback
//! port; everything else (flags, environment, ConfigMaps, reconcilers) is Tekton's.
//!
//! Tekton is configured as a user installs it: its namespaces and the ConfigMaps of the module's
//! `config/` and `config/resolvers/` directories, applied unchanged except for one production
//! setting (`set-security-context: "true"`, so that the containers Tekton adds to a TaskRun pod
//! pass the `restricted` Pod Security level of the execution namespace). The processes run on
//! loopback with the cluster's admin credentials, like kube-controller-manager; their webhook is
//! not run (defaulting and validation also happen in the controller's reconcile, and nothing
//! serves the conversion webhook: the CRDs are installed with `conversion: None`). The image
//! flags are plain strings: kwok never pulls an image. The controller serves one namespace,
//! [`SERVED_NAMESPACE`], the operator's execution namespace.
//!
//! Bundles: every `*.yaml` of `deploy/samples/bundles/` (the samples) and
//! `xtask/controlplane/tekton/bundles/` (test workflows) is pushed as
//! `127.0.0.1:<port>/workflows/<file stem>:v1`; the references pinned by digest are written to
//! `target/wfe-cluster/bundles.json` (`{"<file stem>": "127.0.0.1:<port>/workflows/...@sha256:..."}`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Built, FIELD_MANAGER, Paths, State, free_ports, go, run_go, spawn, wait_healthy};

/// The binaries built from the wrapper module, as (package, name in the cache). `crane` is not
/// part of the cluster: `cargo xtask image` pushes and pulls the operator's image with it.
const BINARIES: [(&str, &str); 5] = [
    ("./controller", "tekton-controller"),
    ("./resolvers", "tekton-resolvers"),
    (
        "github.com/google/go-containerregistry/cmd/registry",
        "oci-registry",
    ),
    ("./bundle", "tekton-bundle"),
    ("github.com/google/go-containerregistry/cmd/crane", "crane"),
];
const STAMP: &str = "tekton.stamp";
const CONTROLLER_NS: &str = "tekton-pipelines";
const RESOLVERS_NS: &str = "tekton-pipelines-resolvers";
/// The one namespace the local Tekton controller serves (`-namespace`): the operator's execution
/// namespace. Tests in other namespaces create PipelineRuns that no controller touches and play
/// Tekton's part by writing their status (fixtures for the status mapping).
pub const SERVED_NAMESPACE: &str = "kubernaut-workflows";
/// Where the bundles of the samples and of the tests live, relative to the repository.
pub(super) const BUNDLE_DIRS: [&str; 2] = [
    "deploy/samples/bundles",
    "xtask/controlplane/tekton/bundles",
];
/// The pinned bundle references, relative to the repository.
pub const BUNDLES_FILE: &str = "target/wfe-cluster/bundles.json";

/// What identifies a build: the pinned version and the wrapper module's files.
fn fingerprint(module: &Path, version: &str) -> Result<String> {
    let mut h = Sha256::new();
    for f in [
        "go.mod",
        "go.sum",
        "bundle/main.go",
        "controller/main.go",
        "resolvers/main.go",
        "internal/probes/probes.go",
    ] {
        h.update(std::fs::read(module.join(f)).with_context(|| format!("reading {f}"))?);
    }
    Ok(format!("tektoncd/pipeline {version} {:x}", h.finalize()))
}

/// Builds the Tekton controller and resolvers, the registry, crane and the bundle publisher into `bin`
/// unless the stamp says they are up to date.
pub(super) fn build(module: &Path, bin: &Path, version: &str) -> Result<()> {
    let want = fingerprint(module, version)?;
    let stamp = bin.join(STAMP);
    let present = BINARIES.iter().all(|(_, b)| bin.join(b).is_file());
    if present && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        eprintln!("tekton {version}, registry: up to date");
        return Ok(());
    }
    eprintln!(
        "building the Tekton controller and resolvers {version}, the OCI registry and the bundle publisher (cold: about 5 minutes)"
    );
    let t = Instant::now();
    let out = bin.join("tekton-build");
    std::fs::create_dir_all(&out)?;
    let mut out_dir = out.clone().into_os_string();
    out_dir.push("/");
    let mut cmd = go(module);
    cmd.args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
        .arg(out_dir)
        .args(BINARIES.iter().map(|(p, _)| *p));
    run_go(cmd, "tekton")?;
    for (pkg, name) in BINARIES {
        let built = pkg
            .rsplit('/')
            .next()
            .expect("a package path has a last element");
        std::fs::rename(out.join(built), bin.join(name))
            .with_context(|| format!("moving {built} to {name}"))?;
    }
    std::fs::remove_dir_all(&out)?;
    std::fs::write(&stamp, want)?;
    eprintln!("  tekton built in {:.0?}", t.elapsed());
    Ok(())
}

/// Tekton v1.15.0's ResolutionRequest CRD requires `status.data`, `status.refSource` and
/// `status.source`, but a resolver that fails writes a status without them (the Go type sends
/// `null`), so the API server refuses the failure ("status.refSource: Required value") and the
/// PipelineRun waits in `ResolvingPipelineRef` until its own timeout. Dropping the `required`
/// list of the status lets failures be recorded; everything else of the schema stays.
pub(super) fn relax_resolution_request_status(crd: &mut Value) {
    if crd.pointer("/metadata/name").and_then(Value::as_str)
        != Some("resolutionrequests.resolution.tekton.dev")
    {
        return;
    }
    if let Some(versions) = crd
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for v in versions {
            if let Some(status) = v
                .pointer_mut("/schema/openAPIV3Schema/properties/status")
                .and_then(Value::as_object_mut)
            {
                status.remove("required");
            }
        }
    }
}

/// The module directory the Tekton version was downloaded to (its CRDs are in `config/300-crds`).
fn module_config(state: &State) -> Result<PathBuf> {
    let crds = &state.tekton_crds;
    crds.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent", crds.display()))
}

/// Starts the registry (and publishes the bundles), applies Tekton's configuration and starts
/// its resolvers and controller.
pub(super) fn start(state: &mut State, paths: &Paths, built: &Built, root: &Path) -> Result<()> {
    let t = Instant::now();
    let [
        registry,
        ctl_probes,
        ctl_metrics,
        ctl_profiling,
        res_probes,
        res_metrics,
        res_profiling,
    ] = free_ports::<7>()?;
    state.ports.registry = registry;
    state.ports.tekton_controller = ctl_probes;
    state.ports.tekton_resolvers = res_probes;
    state.save(paths)?;

    state.components.push(spawn(
        paths,
        "registry",
        &built.binary("oci-registry"),
        &[format!("-port={registry}")],
        &[],
    )?);
    state.save(paths)?;
    wait_healthy(state, paths, "registry", Duration::from_secs(30))?;
    publish_bundles(state, built, root)?;

    apply_config(state, paths)?;
    let kc = paths.kubeconfig().display().to_string();
    let common = |probes: u16, metrics: u16, profiling: u16| -> Vec<(String, String)> {
        [
            ("KUBERNETES_MIN_VERSION", "v1.28.0".to_string()),
            ("CONFIG_LOGGING_NAME", "config-logging".to_string()),
            (
                "CONFIG_OBSERVABILITY_NAME",
                "config-observability".to_string(),
            ),
            ("CONFIG_FEATURE_FLAGS_NAME", "feature-flags".to_string()),
            ("PROBES_PORT", probes.to_string()),
            ("METRICS_PROMETHEUS_HOST", "127.0.0.1".to_string()),
            ("METRICS_PROMETHEUS_PORT", metrics.to_string()),
            ("PROFILING_PORT", profiling.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };

    let mut env = common(res_probes, res_metrics, res_profiling);
    env.extend(
        [
            ("SYSTEM_NAMESPACE", RESOLVERS_NS),
            (
                "CONFIG_LEADERELECTION_NAME",
                "config-leader-election-resolvers",
            ),
            ("METRICS_DOMAIN", "tekton.dev/resolution"),
            ("TEKTON_HUB_API", ""),
            ("ARTIFACT_HUB_API", ""),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    state.components.push(spawn(
        paths,
        "tekton-resolvers",
        &built.binary("tekton-resolvers"),
        &[format!("-kubeconfig={kc}")],
        &env,
    )?);
    state.save(paths)?;

    let mut env = common(ctl_probes, ctl_metrics, ctl_profiling);
    env.extend(
        [
            ("SYSTEM_NAMESPACE", CONTROLLER_NS),
            ("CONFIG_DEFAULTS_NAME", "config-defaults"),
            (
                "CONFIG_LEADERELECTION_NAME",
                "config-leader-election-controller",
            ),
            ("CONFIG_SPIRE", "config-spire"),
            ("METRICS_DOMAIN", "tekton.dev/pipeline"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    // Image names only: kwok runs no container.
    let image = |name: &str| {
        format!(
            "kwok.invalid/tektoncd/pipeline/{name}:{}",
            state.versions.tekton
        )
    };
    let args = vec![
        format!("-kubeconfig={kc}"),
        format!("-namespace={SERVED_NAMESPACE}"),
        format!("-entrypoint-image={}", image("entrypoint")),
        format!("-nop-image={}", image("nop")),
        format!("-sidecarlogresults-image={}", image("sidecarlogresults")),
        format!("-workingdirinit-image={}", image("workingdirinit")),
        format!("-shell-image={}", image("busybox")),
        format!("-shell-image-win={}", image("powershell")),
    ];
    state.components.push(spawn(
        paths,
        "tekton-controller",
        &built.binary("tekton-controller"),
        &args,
        &env,
    )?);
    state.save(paths)?;
    wait_healthy(state, paths, "tekton-resolvers", Duration::from_secs(60))?;
    wait_healthy(state, paths, "tekton-controller", Duration::from_secs(60))?;
    wait_leaders(state, paths)?;
    eprintln!("tekton is up ({:.1?})", t.elapsed());
    Ok(())
}

/// Waits until the controller and the resolvers hold their leases: from then on they reconcile.
fn wait_leaders(state: &State, paths: &Paths) -> Result<()> {
    let api = state.apiserver(paths)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    // The PipelineRun reconciler's lease, and any lease of the resolvers.
    for (ns, part) in [(CONTROLLER_NS, "pipelinerun"), (RESOLVERS_NS, "")] {
        loop {
            let leases = api
                .get_ok(&format!(
                    "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
                ))?
                .json()?;
            let held = leases["items"].as_array().is_some_and(|items| {
                items.iter().any(|l| {
                    l.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.contains(part))
                        && l.pointer("/spec/holderIdentity")
                            .and_then(Value::as_str)
                            .is_some_and(|h| !h.is_empty())
                })
            });
            if held {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no lease *{part}* held in {ns} after 90s: {}",
                    leases["items"]
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(())
}

/// Applies (server-side) the Namespaces and ConfigMaps of Tekton's `config/` and
/// `config/resolvers/` directories, with `set-security-context: "true"`.
fn apply_config(state: &State, paths: &Paths) -> Result<()> {
    let api = state.apiserver(paths)?;
    let config = module_config(state)?;
    // The namespaces first, then every file of the two directories.
    let mut files = vec![
        config.join("100-namespace/100-namespace.yaml"),
        config.join("resolvers/100-namespace.yaml"),
    ];
    for dir in [config.clone(), config.join("resolvers")] {
        let mut yamls: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml") && !files.contains(p))
            .collect();
        yamls.sort();
        files.extend(yamls);
    }
    let mut applied = 0;
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut obj =
                Value::deserialize(doc).with_context(|| format!("parsing {}", file.display()))?;
            let kind = obj
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let path = match kind.as_str() {
                "Namespace" => format!("/api/v1/namespaces/{name}"),
                "ConfigMap" => {
                    let ns = obj
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            anyhow!("ConfigMap {name} in {} has no namespace", file.display())
                        })?
                        .to_string();
                    if name == "feature-flags" && ns.as_str() == CONTROLLER_NS {
                        obj["data"]["set-security-context"] = json!("true");
                    }
                    format!("/api/v1/namespaces/{ns}/configmaps/{name}")
                }
                _ => continue,
            };
            let resp = api.request(
                "PATCH",
                &format!("{path}?fieldManager={FIELD_MANAGER}&force=true"),
                Some("application/apply-patch+yaml"),
                &serde_json::to_vec(&obj)?,
            )?;
            if !resp.is_success() {
                bail!(
                    "applying {kind} {name} from {}: HTTP {}: {}",
                    file.display(),
                    resp.status,
                    resp.text()
                );
            }
            applied += 1;
        }
    }
    eprintln!("applied {applied} Tekton namespaces and ConfigMaps");
    Ok(())
}

/// Pushes every bundle of [`BUNDLE_DIRS`] and writes [`BUNDLES_FILE`].
fn publish_bundles(state: &State, built: &Built, root: &Path) -> Result<()> {
    let mut args = Vec::new();
    let mut names = Vec::new();
    for dir in BUNDLE_DIRS {
        let dir = root.join(dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let stem = f
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| anyhow!("bad bundle file name {}", f.display()))?
                .to_string();
            args.push(format!(
                "127.0.0.1:{}/workflows/{stem}:v1",
                state.ports.registry
            ));
            args.push(f.display().to_string());
            names.push(stem);
        }
    }
    let out = Command::new(built.binary("tekton-bundle"))
        .args(&args)
        .output()
        .context("running tekton-bundle")?;
    if !out.status.success() {
        bail!(
            "publishing the bundles failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pinned: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    if pinned.len() != names.len() {
        bail!(
            "tekton-bundle printed {} references for {} bundles",
            pinned.len(),
            names.len()
        );
    }
    let map: BTreeMap<String, String> = names.into_iter().zip(pinned).collect();
    std::fs::write(root.join(BUNDLES_FILE), serde_json::to_vec_pretty(&map)?)?;
    eprintln!(
        "published {} bundles: {}",
        map.len(),
        root.join(BUNDLES_FILE).display()
    );
    Ok(())
}
