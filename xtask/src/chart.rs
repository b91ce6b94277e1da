//! `cargo xtask chart`: the Helm chart in deploy/chart/we-operator is the one source of the
//! install. The plain manifests of deploy/ are rendered from it (`render`, drift-checked by
//! `check`), and `check` proves on the local cluster that the chart lints, renders, applies
//! server-side (dry-run and real) with default and non-default values, installs, upgrades and
//! uninstalls with the real Helm, leaving nothing stuck behind.
//!
//! Helm is built from its Go module (xtask/controlplane/helm) into the control-plane cache, like
//! the cluster's binaries: nothing is downloaded but Go modules.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};

use crate::cluster;

pub const CHART: &str = "deploy/chart/we-operator";
/// The release and namespace the plain manifests are rendered for.
const PLAIN_RELEASE: &str = "we-operator";
const PLAIN_NAMESPACE: &str = "kubernaut-system";
const HEADER: &str =
    "# Rendered from deploy/chart/we-operator by `cargo xtask chart render`. Do not edit.\n";

/// The plain manifests: (file in deploy/, templates shown, extra `--set`s).
const PLAIN: [(&str, &[&str], &[&str]); 10] = [
    ("namespaces.yaml", &["templates/namespaces.yaml"], &[]),
    ("rbac.yaml", &["templates/rbac.yaml"], &[]),
    ("deployment.yaml", &["templates/deployment.yaml"], &[]),
    (
        "service.yaml",
        &[
            "templates/service.yaml",
            "templates/poddisruptionbudget.yaml",
            "templates/networkpolicy.yaml",
        ],
        &[],
    ),
    (
        "workflow-runner.yaml",
        &["templates/workflow-runner.yaml"],
        &[],
    ),
    (
        "workflow-policy.yaml",
        &["templates/workflow-policy.yaml"],
        &[],
    ),
    (
        "admission-policies.yaml",
        &["templates/admission-policies.yaml"],
        &[],
    ),
    (
        "servicemonitor.yaml",
        &["templates/servicemonitor.yaml"],
        &["metrics.serviceMonitor.enabled=true"],
    ),
    (
        "prometheusrule.yaml",
        &["templates/prometheusrule.yaml"],
        &["metrics.prometheusRule.enabled=true"],
    ),
    // Everything but the ServiceMonitor and the PrometheusRule (it needs the Prometheus Operator) in one file.
    ("install.yaml", &[], &[]),
];

#[derive(clap::Subcommand, Debug)]
pub enum ChartCmd {
    /// Write the plain manifests of deploy/ from the chart.
    Render {
        /// Fail instead of writing when a file is out of date.
        #[arg(long)]
        check: bool,
    },
    /// Lint, render and drift-check; then dry-run and real server-side applies, a Helm install,
    /// upgrade and uninstall on the local cluster (which must be running).
    Check,
}

pub fn run(root: &Path, cmd: ChartCmd) -> Result<()> {
    match cmd {
        ChartCmd::Render { check } => render(root, check),
        ChartCmd::Check => check(root),
    }
}

/// The chart the upgrade is tested from: no chart has been released yet, so it is the chart of
/// the last commit CI checked before the chart changed again (replace it with the previous
/// release's tag once there is one).
const PREVIOUS_CHART: &str = "d64ad6503773200f221125576c7b28e6f83bf383";

/// The chart of [`PREVIOUS_CHART`], taken out of the repository's history into target/helm;
/// returns its folder.
fn previous_chart(root: &Path) -> Result<String> {
    let dest = root.join("target/helm/previous");
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::create_dir_all(&dest)?;
    let present = Command::new("git")
        .current_dir(root)
        .args(["cat-file", "-e", &format!("{PREVIOUS_CHART}^{{commit}}")])
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        // A shallow clone: fetch that one commit from where this clone came from.
        let _ = Command::new("git")
            .current_dir(root)
            .args(["fetch", "--quiet", "--depth=1", "origin", PREVIOUS_CHART])
            .status();
    }
    let archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", PREVIOUS_CHART, CHART])
        .output()
        .context("running git archive")?;
    ensure!(
        archive.status.success(),
        "the previous chart ({PREVIOUS_CHART}) is not in this clone's history and could not be \
         fetched ({}): the upgrade check needs it (git fetch --unshallow)",
        String::from_utf8_lossy(&archive.stderr).trim()
    );
    tar::Archive::new(&archive.stdout[..])
        .unpack(&dest)
        .context("unpacking the previous chart")?;
    Ok(dest.join(CHART).to_string_lossy().into_owned())
}

/// The Helm of the cache, built from xtask/controlplane/helm when missing or of another version.
pub fn helm(root: &Path) -> Result<PathBuf> {
    let module = root.join("xtask/controlplane/helm");
    let version = cluster::gomod_version(&module.join("go.mod"), "helm.sh/helm/v4")?;
    let bin = cluster::cache_root()?
        .join(format!("helm-{version}"))
        .join("helm");
    let current = Command::new(&bin)
        .args(["version", "--template", "{{.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == version);
    if current {
        return Ok(bin);
    }
    eprintln!("building helm {version} (cold: about 4 minutes)");
    let t = Instant::now();
    let mut cmd = cluster::go(&module);
    cmd.args(["build", "-trimpath"])
        .arg(format!(
            "-ldflags=-s -w -X helm.sh/helm/v4/internal/version.version={version}"
        ))
        .arg("-o")
        .arg(&bin)
        .arg("helm.sh/helm/v4/cmd/helm");
    cluster::run_go(cmd, "helm")?;
    eprintln!("  helm built in {:.0?}", t.elapsed());
    Ok(bin)
}

fn helm_out(helm: &Path, root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(helm)
        .args(args)
        .current_dir(root)
        .env("HELM_CACHE_HOME", root.join("target/helm/cache"))
        .env("HELM_CONFIG_HOME", root.join("target/helm/config"))
        .env("HELM_DATA_HOME", root.join("target/helm/data"))
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm template` of the plain manifests for some templates (all when `show` is empty).
fn template(helm: &Path, root: &Path, show: &[&str], sets: &[&str]) -> Result<String> {
    let mut args = vec![
        "template",
        PLAIN_RELEASE,
        CHART,
        "--namespace",
        PLAIN_NAMESPACE,
        "--set",
        "plainManifests=true",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    for s in show {
        args.extend(["--show-only", s]);
    }
    helm_out(helm, root, &args)
}

/// The rendered text of each plain manifest.
fn plain(helm: &Path, root: &Path) -> Result<Vec<(&'static str, String)>> {
    PLAIN
        .iter()
        .map(|(file, show, sets)| {
            let body = template(helm, root, show, sets)?;
            Ok((*file, format!("{HEADER}{}", tidy(&body))))
        })
        .collect()
}

/// Drops Helm's `# Source:` lines and empty documents, so the files read like hand-written ones.
pub fn tidy(rendered: &str) -> String {
    let docs: Vec<String> = rendered
        .split("\n---")
        .map(|d| {
            d.lines()
                .filter(|l| !l.starts_with("# Source: "))
                .collect::<Vec<_>>()
                .join("\n")
                .trim_matches('\n')
                .trim_start_matches("---")
                .trim_matches('\n')
                .to_string()
        })
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect();
    let mut out = docs.join("\n---\n");
    out.push('\n');
    out
}

fn render(root: &Path, check: bool) -> Result<()> {
    let helm = helm(root)?;
    let mut stale = Vec::new();
    for (file, text) in plain(&helm, root)? {
        let path = root.join("deploy").join(file);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if check {
            stale.push(file);
        } else {
            std::fs::write(&path, text)?;
            println!("wrote deploy/{file}");
        }
    }
    ensure!(
        stale.is_empty(),
        "deploy/{} out of date with the chart: run `cargo xtask chart render`",
        stale.join(", deploy/")
    );
    println!("the plain manifests of deploy/ match the chart");
    Ok(())
}

/// Non-default values exercised by the checks: every group changed at least once.
const NON_DEFAULT: &[&str] = &[
    "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "image.repository=registry.example/ops/we-operator",
    "replicas=1",
    "namespaces.execution=wfe-check-runs",
    "namespaces.watch=*",
    "leaderElection.leaseDurationSeconds=20",
    "leaderElection.leaseName=wfe-check-leader",
    "log.format=text",
    "log.level=debug",
    "execution.cooldown=1m",
    "execution.retention=0s",
    "audit.url=https://audit.example:8443",
    "audit.clientCertSecret=wfe-check-audit-client",
    "metrics.service.port=9443",
    "networkPolicy.enabled=false",
    "podDisruptionBudget.enabled=false",
    "workflowRunner.name=runner",
    "resources.limits.memory=256Mi",
];

fn sets(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| ["--set".into(), (*v).to_string()])
        .collect()
}

fn check(root: &Path) -> Result<()> {
    let t = Instant::now();
    let helm = helm(root)?;
    println!("\n==> chart: helm lint (default and non-default values)");
    helm_out(&helm, root, &["lint", "--strict", CHART])?;
    let mut lint = vec!["lint".to_string(), "--strict".into(), CHART.into()];
    lint.extend(sets(NON_DEFAULT));
    helm_out(
        &helm,
        root,
        &lint.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    render(root, true)?;

    let kubeconfig = root.join(cluster::KUBECONFIG);
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let kubectl = |args: &[&str], stdin: Option<&str>| -> Result<String> {
        use std::io::Write;
        let mut child = crate::command(root.join(cluster::KUBECTL))
            .args(["--kubeconfig", &kubeconfig])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())?;
        }
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // Server-side dry-run of the one-file install and of a non-default rendering. A dry run
    // creates nothing, so the namespaces the objects live in are applied for real first.
    println!("==> chart: server-side dry-run apply (default and non-default values)");
    let namespaces = std::fs::read_to_string(root.join("deploy/namespaces.yaml"))?;
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&namespaces))?;
    let install = std::fs::read_to_string(root.join("deploy/install.yaml"))?;
    kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            "-",
        ],
        Some(&install),
    )?;
    let mut args: Vec<String> = ["template", "wfe-check", CHART, "--namespace", "wfe-check"]
        .map(String::from)
        .to_vec();
    args.extend(sets(NON_DEFAULT));
    args.extend(["--set".into(), "plainManifests=true".into()]);
    let rendered = helm_out(
        &helm,
        root,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    args.extend(["--show-only".into(), "templates/namespaces.yaml".into()]);
    let check_namespaces = helm_out(
        &helm,
        root,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&check_namespaces),
    )?;
    kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            "-",
        ],
        Some(&rendered),
    )?;

    // A real install, an upgrade to non-default values, and an uninstall.
    let release = "wfe-chart-check";
    let ns = "wfe-chart-check";
    let helm_k = |extra: &[&str]| -> Result<String> {
        let mut a = extra.to_vec();
        a.extend(["--kubeconfig", &kubeconfig]);
        helm_out(&helm, root, &a)
    };
    println!(
        "==> chart: helm install of the previous chart ({}), upgrade to this one and to non-default values, uninstall",
        &PREVIOUS_CHART[..12]
    );
    // `helm install|upgrade` of `chart` as the release, waiting for it, with `--set` values.
    let deploy = |verb: &str, chart: &str, values: &[&str]| -> Result<String> {
        let mut args = vec![verb, release, chart, "--namespace", ns];
        if verb == "install" {
            args.push("--create-namespace");
        }
        args.extend([
            "--take-ownership",
            "--force-conflicts",
            "--wait",
            "--timeout",
            "3m",
        ]);
        let values = sets(values);
        args.extend(values.iter().map(String::as_str));
        helm_k(&args)
    };
    let previous = previous_chart(root)?;
    let _ = helm_k(&["uninstall", release, "--namespace", ns, "--wait"]);
    deploy(
        "install",
        &previous,
        &["namespaces.execution=wfe-chart-check-runs"],
    )?;
    // The upgrade from the previous chart, with the same values; then to non-default values.
    deploy(
        "upgrade",
        CHART,
        &["namespaces.execution=wfe-chart-check-runs"],
    )?;
    let mut values = NON_DEFAULT.to_vec();
    values.extend([
        "namespaces.execution=wfe-chart-check-runs",
        "namespaces.watch=wfe-chart-check",
    ]);
    deploy("upgrade", CHART, &values)?;
    let image = kubectl(
        &[
            "get",
            "deployment",
            "we-operator",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
        None,
    )?;
    ensure!(
        image.ends_with("@sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        "after the upgrade the Deployment runs {image}, not the digest-pinned image"
    );
    helm_k(&[
        "uninstall",
        release,
        "--namespace",
        ns,
        "--wait",
        "--timeout",
        "3m",
    ])?;

    // Nothing of the release is left but what it keeps on purpose (the CRD, the execution
    // namespace), and nothing waits on a finalizer.
    let selector = format!("app.kubernetes.io/instance={release}");
    // Each query must print nothing.
    let none_of = |args: &[&str], what: &str| -> Result<()> {
        let out = kubectl(args, None)?;
        ensure!(out.trim().is_empty(), "{what}: {}", out.trim());
        Ok(())
    };
    none_of(
        &[
            "get",
            "deployments,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies,\
             clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings,\
             mutatingadmissionpolicies,mutatingadmissionpolicybindings,configmaps",
            "--all-namespaces",
            "-l",
            &selector,
            "-o",
            "name",
        ],
        "helm uninstall left objects behind",
    )?;
    none_of(
        &[
            "get",
            "crd",
            "workflowexecutions.kubernaut.ai",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
        "the CRD is being deleted after uninstall",
    )?;
    none_of(
        &[
            "get",
            "workflowexecutions",
            "--all-namespaces",
            "-o",
            "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{.metadata.namespace}/{.metadata.name} {end}",
        ],
        "WorkflowExecutions stuck in deletion after uninstall",
    )?;
    kubectl(
        &[
            "delete",
            "namespace",
            ns,
            "wfe-chart-check-runs",
            "wfe-check",
            "wfe-check-runs",
            "--ignore-not-found",
            "--wait=false",
        ],
        None,
    )?;
    println!("==> chart: checked in {:.0?}", t.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tidy;

    #[test]
    fn tidy_drops_source_lines_and_empty_documents() {
        let rendered = "---\n# Source: we-operator/templates/a.yaml\n# a comment\n---\n# Source: we-operator/templates/b.yaml\napiVersion: v1\nkind: A\n---\n# Source: x\n# only a comment\n";
        assert_eq!(tidy(rendered), "apiVersion: v1\nkind: A\n");
    }
}
