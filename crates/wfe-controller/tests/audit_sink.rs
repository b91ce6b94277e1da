//! The HTTP audit sink against an HTTPS receiver signed by a private CA that demands a bearer
//! token (issue #18): trusted through `--audit-ca-file`, authenticated with `--audit-token-file`,
//! a rotated token is used at once, and a sink without the CA or with a wrong token is refused.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wfe_controller::{
    AuditSink, HttpSink,
    audit::{AuditEvent, HttpAuth},
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, expected, received) =
                (acceptor.clone(), expected.clone(), received.clone());
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
                let authorized =
                    header("authorization") == format!("Bearer {}", expected.lock().unwrap());
                let status = if authorized {
                    let batch: Vec<Value> =
                        serde_json::from_slice(&buf[body_start..body_start + length]).unwrap();
                    received.lock().unwrap().push(batch);
                    "201 Created"
                } else {
                    "401 Unauthorized"
                };
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
    (url, ca.cert.pem())
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
                token_file: None
            }
        )
        .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
