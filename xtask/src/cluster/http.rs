//! A minimal blocking HTTP/1.1 client for loopback: plain HTTP (etcd, kwok) and HTTPS with
//! the cluster CA and the admin client certificate (kube-apiserver, controller-manager,
//! scheduler). One request per connection (`Connection: close`); enough for health checks
//! and installing CRDs, without pulling a full HTTP stack into xtask.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response is not JSON")
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An endpoint on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Endpoint {
    port: u16,
    tls: Option<Arc<ClientConfig>>,
}

/// TLS settings trusting `ca` and, if given, presenting a client certificate.
pub fn tls_config(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
    let config = match client {
        Some((crt, key)) => {
            let certs = CertificateDer::pem_file_iter(crt)
                .with_context(|| format!("reading {}", crt.display()))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

impl Endpoint {
    pub fn http(port: u16) -> Self {
        Self { port, tls: None }
    }

    pub fn https(port: u16, tls: Arc<ClientConfig>) -> Self {
        Self {
            port,
            tls: Some(tls),
        }
    }

    pub fn get(&self, path: &str) -> Result<Response> {
        self.request("GET", path, None, &[])
    }

    /// GET that must answer 2xx.
    pub fn get_ok(&self, path: &str) -> Result<Response> {
        let resp = self.get(path)?;
        if !resp.is_success() {
            bail!("GET {path}: HTTP {}: {}", resp.status, resp.text().trim());
        }
        Ok(resp)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(60)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: wfe-xtask\r\nAccept: application/json, */*\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        let raw = match &self.tls {
            Some(config) => {
                let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
                let conn = ClientConnection::new(config.clone(), name)?;
                let mut stream = StreamOwned::new(conn, tcp);
                exchange(&mut stream, head.as_bytes(), body)?
            }
            None => {
                let mut stream = tcp;
                exchange(&mut stream, head.as_bytes(), body)?
            }
        };
        parse(&raw).with_context(|| format!("{method} 127.0.0.1:{}{path}", self.port))
    }
}

fn exchange(stream: &mut impl ReadWrite, head: &[u8], body: &[u8]) -> Result<Vec<u8>> {
    stream.write_all(head)?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A peer that closes without TLS close_notify: keep what arrived.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !out.is_empty() => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse(raw: &[u8]) -> Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response ({} bytes)", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("malformed status line {status_line:?}"))?
        .parse()?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| anyhow!("truncated HTTP body"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("malformed chunked body"))?;
        let size_str = std::str::from_utf8(&data[..eol])?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or_else(|| anyhow!("truncated chunk"))?);
        data = data.get(size + 2..).unwrap_or_default();
    }
}
