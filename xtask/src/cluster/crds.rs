//! Our CRDs and Tekton's on the local API server.

use super::*;

/// Server-side applies every CRD in deploy/crds and the Tekton CRDs (conversion patched to
/// `None`: nothing serves Tekton's conversion webhook; see also
/// [`tekton::relax_resolution_request_status`]), then waits until all are Established.
pub(super) fn install_crds(state: &State, paths: &Paths, root: &Path) -> Result<()> {
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
