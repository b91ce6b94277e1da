//! Shared by the binary's integration tests: applying `deploy/`, the operator's ServiceAccount
//! kubeconfig, the operator process, impersonated users, and an HTTP audit receiver.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    core::{DynamicObject, GroupVersionKind},
    discovery::Discovery,
};
use serde::Deserialize as _;
use serde_json::{Value, json};
use wfe_api::{Phase, WorkflowExecution};

pub const SYSTEM_NS: &str = "kubernaut-system";
pub const EXEC_NS: &str = "kubernaut-workflows";
pub const TIMEOUT: Duration = Duration::from_secs(90);
pub const MEMORY_BUDGET_KIB: u64 = 1536 * 1024;

pub fn repo() -> PathBuf {
    wfe_testing::repo_root()
}

/// Server-side applies every document of a YAML file (the way `kubectl apply --server-side` does).
pub async fn apply_file(client: &Client, discovery: &Discovery, path: &Path) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value).unwrap();
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{} is not served", gvk.kind));
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            (kube::discovery::Scope::Namespaced, None) => {
                Api::default_namespaced_with(client.clone(), &ar)
            }
            _ => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("we-operator-e2e").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {}: {e}", gvk.kind, obj.name_any()));
    }
}

pub use wfe_testing::audit::AuditReceiver;

/// The audit receiver's events of one WorkflowExecution: (event type, execution engine).
pub fn types_and_engines(audit: &AuditReceiver, name: &str) -> Vec<(String, String)> {
    audit
        .for_resource(name)
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap_or_default().to_string(),
                e["event_data"]["execution_engine"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// A kubeconfig that authenticates as the operator's ServiceAccount (a TokenRequest token).
pub async fn operator_kubeconfig(client: &Client, dir: &Path) -> PathBuf {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), SYSTEM_NS);
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token: TokenRequest = sas
        .create_subresource("token", "we-operator", &PostParams::default(), &tr)
        .await
        .expect("TokenRequest for the we-operator ServiceAccount");
    let token = token.status.expect("token issued").token;
    let admin: Value =
        serde_yaml::from_str(&std::fs::read_to_string(wfe_testing::kubeconfig_path()).unwrap())
            .unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": cluster["server"], "certificate-authority-data": cluster["certificate-authority-data"]}}],
        "users": [{"name": "we-operator", "user": {"token": token}}],
        "contexts": [{"name": "we-operator", "context": {"cluster": "local", "user": "we-operator"}}],
        "current-context": "we-operator",
    });
    let path = dir.join("we-operator.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// An admin client that acts as `user` (impersonation), for checks of what a user may do.
pub async fn as_user(user: &str) -> Client {
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(wfe_testing::kubeconfig_path()).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).unwrap()
}

/// The cluster administrator's client, after `deploy/<file>` is applied server-side for each
/// of `files` (in order).
pub async fn admin_with_deploy(files: &[&str]) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = wfe_testing::client().await;
    let discovery = Discovery::new(admin.clone()).run().await.unwrap();
    let deploy = repo().join("deploy");
    for f in files {
        apply_file(&admin, &discovery, &deploy.join(f)).await;
    }
    admin
}

/// Gives `user` the `verbs` on the kubernaut.ai `resources` in `ns`: a Role and a RoleBinding
/// named `name`, applied server-side. RBAC alone then allows what the admission policies must
/// refuse.
pub async fn grant(
    client: &Client,
    ns: &str,
    user: &str,
    name: &str,
    resources: &[&str],
    verbs: &[&str],
) {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let metadata = ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    let role = Role {
        metadata: metadata.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["kubernaut.ai".into()]),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    let pp = PatchParams::apply("wfe-admission-test").force();
    Api::<Role>::namespaced(client.clone(), ns)
        .patch(name, &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .patch(name, &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
}

/// The HTTP code and message of a refused request, or `None` when it was allowed.
pub fn refused<T>(r: Result<T, kube::Error>) -> Option<(u16, String)> {
    match r {
        Ok(_) => None,
        Err(kube::Error::Api(e)) => Some((e.code, e.message)),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The HTTP code and message of a refused request; panics when `what` was allowed.
pub fn refusal<T>(what: &str, r: Result<T, kube::Error>) -> (u16, String) {
    refused(r).unwrap_or_else(|| panic!("{what} was accepted"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Peak resident set (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub struct Operator {
    pub child: tokio::process::Child,
    pub health: String,
    pub metrics: String,
}

impl Operator {
    /// Starts the operator as its own ServiceAccount and waits until it leads.
    pub async fn start(kubeconfig: &Path, audit_url: &str, log: &Path) -> Operator {
        let op = Operator::spawn(
            kubeconfig,
            audit_url,
            log,
            "we-operator-e2e",
            &["--cooldown", "5s"],
        );
        op.wait_ready("leader").await;
        op
    }

    /// Starts the operator without waiting.
    pub fn spawn(
        kubeconfig: &Path,
        audit_url: &str,
        log: &Path,
        identity: &str,
        extra: &[&str],
    ) -> Operator {
        let (hp, mp) = (free_port(), free_port());
        let log_file = std::fs::File::create(log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_we-operator"))
            .args([
                "run",
                "--execution-namespace",
                EXEC_NS,
                "--lease-namespace",
                SYSTEM_NS,
                "--watch-namespace",
                SYSTEM_NS,
            ])
            .args([
                "--audit-url",
                audit_url,
                "--log-format",
                "json",
                "--log-level",
                "info",
            ])
            .args([
                "--health-address",
                &format!("127.0.0.1:{hp}"),
                "--metrics-address",
                &format!("127.0.0.1:{mp}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .args(extra)
            .env("POD_NAME", identity)
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("start we-operator");
        Operator {
            child,
            health: format!("http://127.0.0.1:{hp}"),
            metrics: format!("http://127.0.0.1:{mp}"),
        }
    }

    /// Waits until `/readyz` reports ready with `what` (`leader` or `standby`) in its message.
    pub async fn wait_ready(&self, what: &str) {
        let url = format!("{}/readyz", self.health);
        wfe_testing::wait_for(
            &format!("the operator to be ready ({what})"),
            TIMEOUT,
            || {
                let url = url.clone();
                async move {
                    http_get(&url)
                        .await
                        .filter(|(code, body)| {
                            *code == 200 && body.starts_with(&format!("ok: {what}"))
                        })
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// Whether `/readyz` says this replica leads.
    pub async fn is_leader(&self) -> bool {
        http_get(&format!("{}/readyz", self.health))
            .await
            .is_some_and(|(code, body)| code == 200 && body.starts_with("ok: leader"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("operator running")
    }

    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap()
    }
}

pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

pub async fn wait_phase(
    api: &Api<WorkflowExecution>,
    name: &str,
    phase: Phase,
) -> WorkflowExecution {
    wfe_testing::wait_for(&format!("{name} to reach {phase}"), TIMEOUT, || async {
        api.get(name)
            .await
            .ok()
            .filter(|w| w.status.as_ref().and_then(|s| s.phase) == Some(phase))
    })
    .await
}

/// The operator binary on the local cluster's admin kubeconfig, without leader election: it
/// watches `ns`, creates executions in `exec_ns`, serves metrics on `metrics_port` and logs JSON
/// to `log` (under the repository's `target/`); `extra` flags follow. Killed when dropped.
pub fn local_operator(
    ns: &str,
    exec_ns: &str,
    metrics_port: u16,
    log: &str,
    extra: &[&str],
) -> tokio::process::Child {
    let log = std::fs::File::create(repo().join("target").join(log)).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_we-operator"))
        .args(["run", "--watch-namespace", ns])
        .args(["--execution-namespace", exec_ns])
        .args(["--leader-election=false", "--log-format", "json"])
        .args(["--health-address", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
        .args(extra)
        .env("KUBECONFIG", wfe_testing::kubeconfig_path())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
