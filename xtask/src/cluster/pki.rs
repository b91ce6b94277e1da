//! Certificates for the local control plane, made with rcgen (no `openssl` needed).
//!
//! One CA signs everything: the serving certificate shared by kube-apiserver,
//! kube-controller-manager and kube-scheduler (SANs `localhost`, `127.0.0.1` and the
//! in-cluster `kubernetes.default.svc` names), and the admin client certificate
//! (`CN=wfe-admin`, `O=system:masters`). A separate ECDSA key pair signs service-account
//! tokens. All keys are ECDSA P-256 in PKCS#8 PEM.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// File names inside the pki directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_crt(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn serving_crt(&self) -> PathBuf {
        self.dir.join("serving.crt")
    }
    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("serving.key")
    }
    pub fn admin_crt(&self) -> PathBuf {
        self.dir.join("admin.crt")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Generates a fresh CA, serving and admin certificates and the service-account key pair.
pub fn generate(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let pki = Pki {
        dir: dir.to_path_buf(),
    };

    // The CA.
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "wfe-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).context("self-signing the CA")?;
    write(&pki.ca_crt(), &ca_cert.pem())?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    // The serving certificate (apiserver, controller-manager, scheduler).
    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.is_ca = IsCa::ExplicitNoCa;
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;
    write(&pki.serving_crt(), &serving_cert.pem())?;
    write(&pki.serving_key(), &serving_key.serialize_pem())?;

    // The admin client certificate: user wfe-admin in group system:masters.
    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::default();
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin
        .distinguished_name
        .push(DnType::CommonName, "wfe-admin");
    admin.is_ca = IsCa::ExplicitNoCa;
    admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;
    write(&pki.admin_crt(), &admin_cert.pem())?;
    write(&pki.admin_key(), &admin_key.serialize_pem())?;

    // The service-account token signing key pair.
    let sa_key = KeyPair::generate()?;
    write(&pki.sa_key(), &sa_key.serialize_pem())?;
    write(&pki.sa_pub(), &sa_key.public_key_pem())?;

    Ok(pki)
}
