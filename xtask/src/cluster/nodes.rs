//! `up --nodes`: kube-controller-manager, kube-scheduler, kwok with its fake node, the OCI
//! registry and Tekton's controller and resolvers.

use super::*;

pub(super) fn condition_true(obj: &Value, ty: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(ty)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

pub(super) fn node_ready(node: &Value) -> bool {
    condition_true(node, "Ready")
}

pub(super) fn start_nodes(
    state: &mut State,
    paths: &Paths,
    built: &Built,
    root: &Path,
) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
