//! The operator under test as a child process: start, readiness, CPU and memory from `/proc`, its
//! API-request counters from `/metrics`, and stop (SIGTERM, then SIGKILL; killed on drop too).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    prom::{self, Counts},
    subject::Subject,
};

/// The counter the operator's client layer maintains (bins/we-operator/src/apicount.rs).
pub const API_REQUESTS: &str = "workflowexecution_kube_api_requests_total";
/// The operator's reconcile errors (crates/wfe-controller/src/metrics.rs).
pub const RECONCILE_ERRORS: &str = "workflowexecution_reconcile_errors_total";
/// USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on every Linux architecture).
const CLOCK_TICKS: f64 = 100.0;

/// How the operator is started.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The release binary.
    pub binary: PathBuf,
    /// A kubeconfig with the operator's ServiceAccount token.
    pub kubeconfig: PathBuf,
    /// Base URL of the audit receiver.
    pub audit_url: String,
    /// Directory for the operator's logs.
    pub log_dir: PathBuf,
    /// The operator's --log-level.
    pub log_level: String,
    /// Which controller runs.
    pub subject: crate::subject::Subject,
}

impl Launch {
    /// The flags, for the report.
    pub fn flags(&self, watch_namespace: &str) -> Vec<String> {
        [
            "run",
            "--watch-namespace",
            watch_namespace,
            "--execution-namespace",
            crate::setup::EXEC_NS,
            "--cooldown",
            "1s",
            "--leader-election=false",
            "--log-format",
            "json",
            "--log-level",
            &self.log_level,
            "--audit-url",
            &self.audit_url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// A running operator.
#[derive(Debug)]
pub struct Operator {
    child: tokio::process::Child,
    pid: u32,
    metrics: SocketAddr,
    /// From spawn to `/readyz` answering 200.
    pub ready_after: Duration,
    /// The log file.
    pub log: PathBuf,
    /// The reference ran in a private mount namespace holding the token its audit client reads
    /// (false: its audit writes fail).
    pub audit_token_mounted: bool,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Operator {
    /// Starts the operator watching `watch_namespace` and waits until it is ready (caches synced).
    pub async fn start(launch: &Launch, watch_namespace: &str, label: &str) -> Result<Operator> {
        let (hp, mp) = (free_port()?, free_port()?);
        std::fs::create_dir_all(&launch.log_dir)?;
        let log = launch.log_dir.join(format!("we-operator-{label}.log"));
        let log_file = std::fs::File::create(&log)?;
        let log_out = log_file.try_clone()?;
        let spawned = Instant::now();
        let mut audit_token_mounted = true;
        let mut cmd = match &launch.subject {
            Subject::Ours => {
                let mut cmd = tokio::process::Command::new(&launch.binary);
                cmd.args(launch.flags(watch_namespace)).args([
                    "--health-address",
                    &format!("127.0.0.1:{hp}"),
                    "--metrics-address",
                    &format!("127.0.0.1:{mp}"),
                ]);
                cmd.env("POD_NAME", "we-operator-bench");
                cmd
            }
            Subject::Reference(r) => {
                let config = launch.log_dir.join(format!("reference-{label}.yaml"));
                std::fs::write(
                    &config,
                    crate::subject::reference_config(&launch.audit_url, mp, hp),
                )?;
                let token = launch.log_dir.join("reference.token");
                let (mut cmd, mounted) =
                    crate::subject::reference_command(&r.binary, &config, &token);
                audit_token_mounted = mounted;
                cmd.env("KUBERNAUT_CONTROLLER_NAMESPACE", watch_namespace);
                cmd
            }
        };
        let child = cmd
            .env("KUBECONFIG", &launch.kubeconfig)
            .stdin(Stdio::null())
            .stdout(log_out)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", launch.binary.display()))?;
        let pid = child.id().context("the operator exited at once")?;
        let mut op = Operator {
            child,
            pid,
            metrics: ([127, 0, 0, 1], mp).into(),
            ready_after: Duration::ZERO,
            log,
            audit_token_mounted,
        };
        let health: SocketAddr = ([127, 0, 0, 1], hp).into();
        let deadline = spawned + Duration::from_secs(120);
        loop {
            if let Some(status) = op.child.try_wait()? {
                bail!(
                    "the operator exited ({status}) before it was ready; log: {}",
                    op.log.display()
                );
            }
            if let Ok((200, _)) = http_get(health, "/readyz").await {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator was not ready within 120 s; log: {}",
                    op.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        op.ready_after = spawned.elapsed();
        Ok(op)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// User + system CPU time used so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        memory_kib(self.pid)
    }

    /// The operator's /metrics text.
    pub async fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(self.metrics, "/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// Waits until the operator has used less than `threshold` CPU seconds during one
    /// `window` (it finished its start-up work), at most `limit`. Returns how long that took.
    pub async fn settle(&self, window: Duration, threshold: f64, limit: Duration) -> Duration {
        let start = Instant::now();
        let mut last = self.cpu_seconds().unwrap_or_default();
        while start.elapsed() < limit {
            tokio::time::sleep(window).await;
            let now = self.cpu_seconds().unwrap_or_default();
            if now - last < threshold {
                break;
            }
            last = now;
        }
        start.elapsed()
    }

    /// SIGTERM, then SIGKILL after 30 s. Returns the peak RSS (VmHWM, KiB) read just before.
    pub async fn stop(mut self) -> Result<u64> {
        let (_, hwm) = self.memory_kib().unwrap_or_default();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!(
                        "warning: the operator exited with {status}; log: {}",
                        self.log.display()
                    );
                }
            }
            Err(_) => {
                eprintln!("warning: the operator did not stop within 30 s of SIGTERM; killing it");
                self.child.kill().await?;
            }
        }
        Ok(hwm)
    }
}

/// User + system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces: fields are counted after its ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / CLOCK_TICKS)
}

/// (VmRSS, VmHWM) of a process, in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .context("no such field")?
            .parse()
            .map_err(Into::into)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A minimal HTTP/1.0 GET (the operator's admin endpoints are plain HTTP on loopback).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP response")?;
    Ok((code, body.to_string()))
}

/// The operator's API requests by `verb resource`.
pub fn api_counts(metrics: &str) -> Counts {
    prom::sum_by(metrics, API_REQUESTS, |l| {
        Some(format!(
            "{} {}",
            prom::label(l, "verb"),
            prom::label(l, "resource")
        ))
    })
}

/// The operator's reconcile errors by category.
pub fn reconcile_errors(metrics: &str) -> Counts {
    prom::sum_by(metrics, RECONCILE_ERRORS, |l| {
        Some(prom::label(l, "category").to_string())
    })
}

/// Whether a path exists and is executable-ish (for a friendly error).
pub fn check_binary(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!(
            "{} does not exist (cargo build --release -p we-operator)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_api_counter() {
        let text = "# TYPE workflowexecution_kube_api_requests_total counter\n\
            workflowexecution_kube_api_requests_total{verb=\"get\",resource=\"jobs\"} 12\n\
            workflowexecution_kube_api_requests_total{resource=\"events\",verb=\"create\"} 3\n\
            workflowexecution_kube_api_requests_totalx{verb=\"get\"} 1\n";
        let c = api_counts(text);
        assert_eq!(c.len(), 2);
        assert_eq!(c["get jobs"], 12.0);
        assert_eq!(c["create events"], 3.0);
    }

    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        let (rss, hwm) = memory_kib(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }
}
