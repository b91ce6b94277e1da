//! The HTTP audit sink against an HTTPS receiver signed by a private CA that demands a bearer
//! token (issue #18): trusted through `--audit-ca-file`, authenticated with `--audit-token-file`,
//! a rotated token is used at once, and a sink without the CA or with a wrong token is refused;
//! and an HTTPS receiver that demands a client certificate (mutual TLS): the sink proves who it is
//! with `--audit-client-cert-file`/`--audit-client-key-file`, and a renewed certificate is used
//! without a restart.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wfe_controller::{
    AuditSink, HttpSink,
    audit::{AuditEvent, ClientCert, HttpAuth},
};

/// What the receiver accepted: batches of events.
type Received = Arc<Mutex<Vec<Vec<Value>>>>;

/// An HTTPS receiver on loopback that answers 200 only with `Authorization: Bearer <expected>`;
/// returns its URL and the CA certificate (PEM) that signed it.
async fn receiver(expected: Arc<Mutex<String>>, received: Received) -> (String, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ca.cert.der().clone()], key)
        .unwrap();
    let url = serve_https(config, move |authorization, body| {
        if authorization != format!("Bearer {}", expected.lock().unwrap()) {
            return "401 Unauthorized";
        }
        received
            .lock()
            .unwrap()
            .push(serde_json::from_slice(body).unwrap());
        "201 Created"
    })
    .await;
    (url, ca.cert.pem())
}

/// An HTTPS server on loopback with `config`: for each request, `answer` gets its
/// `Authorization` header and its body and returns the status line's code and reason; returns
/// its URL.
async fn serve_https(
    config: rustls::ServerConfig,
    answer: impl Fn(&str, &[u8]) -> &'static str + Send + Sync + 'static,
) -> String {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, body_start) = loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
                    }
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                while buf.len() < body_start + length {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let status = answer(
                    &header("authorization"),
                    &buf[body_start..body_start + length],
                );
                let _ = tls
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    url
}

fn event(id: &str) -> AuditEvent {
    serde_json::from_value(serde_json::json!({
        "version": "1.0", "event_id": id, "event_type": "workflowexecution.workflow.failed",
        "event_timestamp": "2026-01-01T00:00:00Z", "event_category": "workflowexecution",
        "event_action": "failed", "event_outcome": "failure", "actor_type": "service",
        "actor_id": "we-operator", "resource_type": "WorkflowExecution", "resource_id": "w",
        "correlation_id": "rr", "namespace": "ns", "event_data": {"created_by": "alice"}
    }))
    .unwrap()
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_sink_trusts_a_private_ca_and_sends_a_rotating_bearer_token() {
    let expected = Arc::new(Mutex::new("first-token".to_string()));
    let received = Received::default();
    let (url, ca_pem) = receiver(expected.clone(), received.clone()).await;
    let dir = std::env::temp_dir().join(format!("wfe-audit-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = write(&dir, "ca.pem", &ca_pem);
    let token_file = write(&dir, "token", "first-token\n");
    let timeout = Duration::from_secs(5);
    let auth = HttpAuth {
        ca_file: Some(ca_file.clone()),
        token_file: Some(token_file.clone()),
        ..Default::default()
    };

    let sink = HttpSink::with_auth(&url, timeout, &auth).unwrap();
    sink.send(&[event("e1")]).await.unwrap();
    // The token is rotated: the next batch carries the new one without a restart.
    write(&dir, "token", "second-token");
    *expected.lock().unwrap() = "second-token".into();
    sink.send(&[event("e2")]).await.unwrap();
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1][0]["event_id"], "e2");
    assert_eq!(got[1][0]["event_data"]["created_by"], "alice");

    // A wrong token is refused by the receiver: not acknowledged (retried later).
    write(&dir, "token", "stolen-token");
    let err = sink.send(&[event("e3")]).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    // Without the private CA the receiver's certificate is not trusted.
    let untrusting = HttpSink::with_auth(
        &url,
        timeout,
        &HttpAuth {
            ca_file: None,
            token_file: Some(token_file),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(untrusting.send(&[event("e4")]).await.is_err());
    assert_eq!(received.lock().unwrap().len(), 2, "nothing else accepted");
    // A CA file that holds no certificate is refused at start.
    let empty = write(&dir, "empty.pem", "not a certificate");
    assert!(
        HttpSink::with_auth(
            &url,
            timeout,
            &HttpAuth {
                ca_file: Some(empty),
                ..Default::default()
            }
        )
        .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA that signs a server certificate for 127.0.0.1 and client certificates.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        Ca { issuer }
    }

    /// A leaf certificate and its key (PEM): a server's for `127.0.0.1`, or a client's.
    fn leaf(&self, name: &str, server: bool) -> (String, String) {
        let sans = if server {
            vec!["127.0.0.1".to_string()]
        } else {
            vec![]
        };
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// An HTTPS receiver on loopback that completes the handshake only with a client certificate
/// signed by `client_ca`, and then accepts every batch; returns its URL.
async fn mtls_receiver(server_ca: &Ca, client_ca: &Ca, received: Received) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key) = server_ca.leaf("audit.test", true);
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.issuer.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .unwrap();
    // Without a client certificate signed by the client CA, the handshake fails.
    serve_https(config, move |_, body| {
        received
            .lock()
            .unwrap()
            .push(serde_json::from_slice(body).unwrap());
        "201 Created"
    })
    .await
}

#[tokio::test]
async fn the_sink_proves_who_it_is_with_a_client_certificate_and_picks_up_a_renewed_one() {
    let server_ca = Ca::new("audit server CA");
    let client_ca = Ca::new("audit client CA");
    let impostor_ca = Ca::new("someone else's CA");
    let received = Received::default();
    let url = mtls_receiver(&server_ca, &client_ca, received.clone()).await;
    let dir = std::env::temp_dir().join(format!("wfe-audit-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = write(&dir, "ca.crt", &server_ca.issuer.pem());
    let timeout = Duration::from_secs(5);

    // With the certificate the receiver's CA signed: accepted.
    let (cert, key) = client_ca.leaf("we-operator", false);
    let client_cert = ClientCert {
        cert_file: write(&dir, "tls.crt", &cert),
        key_file: write(&dir, "tls.key", &key),
    };
    let auth = HttpAuth {
        ca_file: Some(ca_file.clone()),
        client_cert: Some(client_cert.clone()),
        ..Default::default()
    };
    let sink = HttpSink::with_auth(&url, timeout, &auth).unwrap();
    sink.send(&[event("m1")]).await.unwrap();
    assert_eq!(received.lock().unwrap().len(), 1);

    // Without a client certificate: the handshake fails, nothing is acknowledged.
    let anonymous = HttpSink::with_auth(
        &url,
        timeout,
        &HttpAuth {
            ca_file: Some(ca_file.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(anonymous.send(&[event("m2")]).await.is_err());

    // The mounted Secret is replaced by a certificate of another CA: refused, and replaced again
    // by a renewed certificate of the right CA: accepted, without a new sink (no restart).
    std::thread::sleep(Duration::from_millis(20));
    let (cert, key) = impostor_ca.leaf("we-operator", false);
    write(&dir, "tls.crt", &cert);
    write(&dir, "tls.key", &key);
    assert!(sink.send(&[event("m3")]).await.is_err());
    std::thread::sleep(Duration::from_millis(20));
    let (cert, key) = client_ca.leaf("we-operator", false);
    write(&dir, "tls.crt", &cert);
    write(&dir, "tls.key", &key);
    sink.send(&[event("m4")]).await.unwrap();
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1][0]["event_id"], "m4");

    // A key that is not a key is refused at start, naming the files.
    let bad = write(&dir, "bad.key", "not a key");
    let err = HttpSink::with_auth(
        &url,
        timeout,
        &HttpAuth {
            client_cert: Some(ClientCert {
                cert_file: client_cert.cert_file.clone(),
                key_file: bad,
            }),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("bad.key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
