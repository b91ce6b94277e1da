//! The kubeconfig of the local cluster (client certificate of the PKI, server on loopback).

use super::*;

pub(super) fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> Result<()> {
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
