//! Cluster preparation: the admin client, the manifests of `deploy/`, the bench namespace, and a
//! kubeconfig that authenticates as the operator's ServiceAccount (as the e2e run does).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::ClusterRoleBinding,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::{DynamicObject, GroupVersionKind},
    discovery::{Discovery, Scope},
};
use serde::Deserialize as _;
use serde_json::{Value, json};

/// Where the operator runs from.
pub const SYSTEM_NS: &str = "kubernaut-system";
/// Where Jobs are created.
pub const EXEC_NS: &str = "kubernaut-workflows";
/// Where the benchmark's WorkflowExecutions live (the operator watches only this namespace).
pub const BENCH_NS: &str = "wfe-bench";
const MANAGER: &str = "wfe-bench";

/// A client for the admin kubeconfig.
pub async fn admin_client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Server-side applies every document of a YAML file (as `kubectl apply --server-side`).
pub async fn apply_file(client: &Client, discovery: &Discovery, path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    apply_yaml(client, discovery, &text, path).await
}

/// Server-side applies every document of `text` (read from `path`).
async fn apply_yaml(client: &Client, discovery: &Discovery, text: &str, path: &Path) -> Result<()> {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value)?;
        let types = obj
            .types
            .as_ref()
            .ok_or_else(|| anyhow!("{}: a document without apiVersion/kind", path.display()))?;
        let gvk = GroupVersionKind::try_from(types)?;
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| anyhow!("{} is not served", gvk.kind))?;
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("apply {} {}", gvk.kind, obj.name_any()))?;
    }
    Ok(())
}

/// Applies the operator's namespaces, RBAC and the workflow runner's service account, creates the
/// bench namespace, and checks that the CRD is served.
pub async fn prepare(client: &Client, repo: &Path) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.get("workflowexecutions.kubernaut.ai").await.context(
        "the WorkflowExecution CRD is not installed (cargo xtask cluster up installs it)",
    )?;
    let discovery = Discovery::new(client.clone()).run().await?;
    for f in ["namespaces.yaml", "rbac.yaml", "workflow-runner.yaml"] {
        apply_file(client, &discovery, &repo.join("deploy").join(f)).await?;
    }
    // The finalizer policy of the install, bound to the bench namespace (the operator's watched
    // namespace here): it puts the finalizer on each request at its creation. The install's
    // other policies guard users' writes; the driver itself writes the status of the synthetic
    // finished objects, which the status policy would refuse.
    let path = repo.join("deploy/admission-policies.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    apply_yaml(
        client,
        &discovery,
        &finalizer_policy_for_bench(&text)?,
        &path,
    )
    .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": BENCH_NS, "labels": {"app.kubernetes.io/part-of": "wfe-bench"}}
    }))?;
    namespaces
        .patch(
            BENCH_NS,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await
        .context("creating the bench namespace")?;
    Ok(())
}

/// The finalizer policy of deploy/admission-policies.yaml and its binding, scoped to
/// [`BENCH_NS`] instead of [`SYSTEM_NS`] (the namespace the plain manifests watch).
pub fn finalizer_policy_for_bench(policies: &str) -> Result<String> {
    const NAME: &str = "name: workflowexecution-finalizer.kubernaut.ai";
    let scope = format!("values: [\"{SYSTEM_NS}\"]");
    let docs: Vec<String> = policies
        .split("\n---\n")
        .filter(|d| d.contains(NAME))
        .map(|d| d.replace(&scope, &format!("values: [\"{BENCH_NS}\"]")))
        .collect();
    let bound = docs
        .iter()
        .any(|d| d.contains(&format!("values: [\"{BENCH_NS}\"]")));
    if docs.len() != 2 || !bound {
        bail!(
            "deploy/admission-policies.yaml has no finalizer policy with a binding scoped by `{scope}`"
        );
    }
    Ok(docs.join("\n---\n"))
}

/// The reference's ServiceAccount (in [`SYSTEM_NS`]).
pub const REFERENCE_ACCOUNT: &str = "kubernaut-workflowexecution";

/// Replaces the WorkflowExecution CRD with the one in `path` (the reference's: same name,
/// different schema) and waits until it is established. Any WorkflowExecution goes with the old
/// one.
pub async fn install_crd(client: &Client, path: &Path) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let wanted: CustomResourceDefinition = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a CustomResourceDefinition", path.display()))?;
    let name = wanted.name_any();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    if let Some(old) = crds.get_opt(&name).await? {
        // The API server defaults parts of a CRD's spec: the schemas tell the two apart.
        let schemas = |c: &CustomResourceDefinition| {
            c.spec
                .versions
                .iter()
                .map(|v| (v.name.clone(), serde_json::to_value(&v.schema).ok()))
                .collect::<Vec<_>>()
        };
        if schemas(&old) == schemas(&wanted) {
            return Ok(());
        }
        let _ = crds.delete(&name, &Default::default()).await;
        while crds.get_opt(&name).await?.is_some() {
            if std::time::Instant::now() > deadline {
                bail!("the old {name} CRD was not deleted within 120 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    crds.create(&PostParams::default(), &wanted)
        .await
        .with_context(|| format!("creating the CRD of {}", path.display()))?;
    loop {
        if wfe_api::crd_established(&crds.get(&name).await?) {
            // Discovery and the API server's handlers catch up a moment later.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the CRD of {} was not established within 120 s",
                path.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A ServiceAccount for the reference, bound to `cluster-admin` (its own chart's RBAC is not
/// reproduced here; an authorizer that allows everything is the cheapest for it).
pub async fn reference_account(client: &Client) -> Result<()> {
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": REFERENCE_ACCOUNT, "namespace": SYSTEM_NS},
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), SYSTEM_NS)
        .patch(
            REFERENCE_ACCOUNT,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&sa),
        )
        .await
        .context("creating the reference's ServiceAccount")?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": REFERENCE_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": REFERENCE_ACCOUNT, "namespace": SYSTEM_NS}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            REFERENCE_ACCOUNT,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&binding),
        )
        .await
        .context("binding the reference's ServiceAccount")?;
    Ok(())
}

/// Copies the bearer token of a kubeconfig written by [`operator_kubeconfig`] into `path`.
pub fn write_token(kubeconfig: &Path, path: &Path) -> Result<()> {
    let kc: Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    let token = kc["users"][0]["user"]["token"]
        .as_str()
        .context("no token in the kubeconfig")?;
    std::fs::write(path, token)?;
    Ok(())
}

/// Writes a kubeconfig holding only a TokenRequest token of the `we-operator` ServiceAccount, so
/// that the operator runs with exactly the RBAC of `deploy/`.
pub async fn operator_kubeconfig(
    client: &Client,
    admin_kubeconfig: &Path,
    dir: &Path,
    account: &str,
) -> Result<PathBuf> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), SYSTEM_NS);
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(4 * 3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token: TokenRequest = sas
        .create_subresource("token", account, &PostParams::default(), &tr)
        .await
        .with_context(|| format!("TokenRequest for the {account} ServiceAccount"))?;
    let token = token.status.context("no token issued")?.token;
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(admin_kubeconfig)?)?;
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": cluster["server"], "certificate-authority-data": cluster["certificate-authority-data"]}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account}}],
        "current-context": account,
    });
    let path = dir.join(format!("{account}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalizer_policy_of_deploy_is_bound_to_the_bench_namespace() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/admission-policies.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let only = finalizer_policy_for_bench(&text).unwrap();
        assert!(only.contains("kind: MutatingAdmissionPolicy\n"));
        assert!(only.contains("kind: MutatingAdmissionPolicyBinding\n"));
        assert!(!only.contains("ValidatingAdmissionPolicy"));
        assert!(only.contains(&format!("values: [\"{BENCH_NS}\"]")));
        assert!(!only.contains(&format!("values: [\"{SYSTEM_NS}\"]")));
        assert!(finalizer_policy_for_bench("kind: Nothing").is_err());
    }
}
