//! The processes of the cluster: start one (own process group, log file), check that a pid
//! still runs its binary, wait until it is healthy, stop it by pid, read its memory.

use super::*;

/// Whether `pid` is a live (not zombie) process running `binary`.
pub(super) fn process_alive(pid: u32, binary: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X") | None) {
        return false;
    }
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let exe = exe.to_string_lossy();
    let exe = exe.trim_end_matches(" (deleted)");
    let want = binary
        .canonicalize()
        .unwrap_or_else(|_| binary.to_path_buf());
    Path::new(exe) == want
}

/// Starts a component detached from this process: its own process group, stdio to a log
/// file, so it keeps running after xtask exits.
pub(super) fn spawn(
    paths: &Paths,
    name: &str,
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<Component> {
    let log_path = paths.logs().join(format!("{name}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let binary = binary.canonicalize().with_context(|| {
        format!(
            "{} is missing: run `cargo xtask cluster build`",
            binary.display()
        )
    })?;
    let child = Command::new(&binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&paths.state)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    // Not waited for: the process outlives xtask (and is reparented when xtask exits).
    drop(child);
    std::fs::write(paths.pids().join(format!("{name}.pid")), format!("{pid}\n"))?;
    eprintln!("started {name} (pid {pid}), log {}", log_path.display());
    Ok(Component {
        name: name.to_string(),
        pid,
        binary,
        log: log_path,
        args: args.to_vec(),
        env: env.to_vec(),
    })
}

pub(super) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls until the component is healthy; fails early if its process exits.
pub(super) fn wait_healthy(
    state: &State,
    paths: &Paths,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let c = state
        .component(name)
        .ok_or_else(|| anyhow!("{name} was not started"))?;
    let start = Instant::now();
    loop {
        let last = match state.health(paths, name) {
            Ok(_) => {
                eprintln!("{name} is healthy after {:.1?}", start.elapsed());
                return Ok(());
            }
            Err(e) => e,
        };
        if !process_alive(c.pid, &c.binary) {
            bail!(
                "{name} (pid {}) exited; last lines of {}:\n{}",
                c.pid,
                c.log.display(),
                log_tail(&c.log, 60)
            );
        }
        if start.elapsed() > timeout {
            bail!(
                "{name} not healthy after {timeout:?} ({last:#}); last lines of {}:\n{}",
                c.log.display(),
                log_tail(&c.log, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERM, then SIGKILL after a timeout. Only signals `pid` if it still runs `binary`.
pub(super) fn stop_process(c: &Component) -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !process_alive(c.pid, &c.binary) {
        return Ok(());
    }
    let pid = Pid::from_raw(i32::try_from(c.pid)?);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !process_alive(c.pid, &c.binary) {
            eprintln!("stopped {} (pid {})", c.name, c.pid);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{} (pid {}) ignored SIGTERM for 10s: SIGKILL",
        c.name, c.pid
    );
    let _ = kill(pid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !process_alive(c.pid, &c.binary) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{} (pid {}) survived SIGKILL", c.name, c.pid)
}

pub(super) fn stop_components(state: &mut State, names: &[&str]) -> Result<()> {
    // Stop in reverse start order.
    let mut errors = Vec::new();
    for c in state.components.iter().rev() {
        if names.contains(&c.name.as_str())
            && let Err(e) = stop_process(c)
        {
            errors.push(format!("{e:#}"));
        }
    }
    state
        .components
        .retain(|c| !names.contains(&c.name.as_str()));
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

/// (VmRSS, VmHWM) in KiB from /proc/<pid>/status.
pub(super) fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
