//! `cargo xtask fresh-check`: the README's two commands on a clone of HEAD with every cache
//! empty, as on a machine that has never built the project.
//!
//! `HOME`, `CARGO_HOME`, `GOPATH`, `GOMODCACHE` and `GOCACHE` point into a new folder, so the cargo
//! registry, cargo-installed tools (cargo-deny, cargo-fuzz), the Go module and build caches and
//! the control-plane cache (`~/.cache/we-operator`) all start empty. Only the Rust toolchains
//! (`RUSTUP_HOME`), Go itself and the system's packages are shared with the machine: they are
//! what the README asks a user to have. A `kubectl` on the machine is hidden behind one that
//! fails: the project uses the kubectl it builds. The cold times are written to `fresh-check.json` in the
//! folder and belong in README.md.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// An empty or missing folder for the clone and the caches (default: a new folder under the
    /// temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only run the test command, not the demo first.
    #[arg(long)]
    skip_demo: bool,
}

/// The rustup proxies a toolchain is used through.
const PROXIES: [&str; 8] = [
    "cargo",
    "cargo-clippy",
    "cargo-fmt",
    "clippy-driver",
    "rustc",
    "rustdoc",
    "rustfmt",
    "rustup",
];

pub fn run(root: &Path, args: Args) -> Result<()> {
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "we-operator-fresh-{}",
            epoch_seconds(std::time::SystemTime::now())
        ))
    });
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let dirty = crate::command("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root)
        .output()
        .context("cannot run git")?;
    if !dirty.stdout.is_empty() {
        eprintln!(
            "warning: the work tree has uncommitted changes; the fresh check runs the committed HEAD"
        );
    }
    let clone = dir.join("clone");
    let status = crate::command("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(root)
        .arg(&clone)
        .status()
        .context("cannot run git clone")?;
    if !status.success() {
        bail!("git clone failed ({status})");
    }
    let head = String::from_utf8(
        crate::command("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&clone)
            .output()?
            .stdout,
    )?
    .trim()
    .to_string();

    let env = Env::new(&dir)?;
    let mut report = json!({"commit": head, "dir": dir.display().to_string()});
    if !args.skip_demo {
        let secs = env.timed(&clone, &dir.join("demo.log"), "cargo", &["xtask", "demo"])?;
        report["demo_cold_seconds"] = json!(secs);
        env.timed(
            &clone,
            &dir.join("demo-down.log"),
            "cargo",
            &["xtask", "cluster", "down"],
        )?;
    }
    let secs = env.timed(&clone, &dir.join("test.log"), "bash", &[".ci/run"])?;
    report[if args.skip_demo {
        "test_cold_seconds"
    } else {
        "test_after_demo_seconds"
    }] = json!(secs);
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(dir.join("fresh-check.json"), &text)?;
    println!("fresh check passed:\n{text}");
    Ok(())
}

/// The environment of a machine that has never built the project.
struct Env {
    vars: Vec<(&'static str, OsString)>,
}

impl Env {
    fn new(dir: &Path) -> Result<Self> {
        let home = dir.join("home");
        let cargo_home = dir.join("cargo");
        let go = dir.join("go");
        let cargo_bin = cargo_home.join("bin");
        for d in [&home, &cargo_bin, &go] {
            std::fs::create_dir_all(d)?;
        }
        let old_home = std::env::var_os("HOME").map(PathBuf::from);
        let rustup_home = std::env::var_os("RUSTUP_HOME")
            .map(PathBuf::from)
            .or_else(|| old_home.as_ref().map(|h| h.join(".rustup")))
            .context("neither RUSTUP_HOME nor HOME is set")?;
        // The toolchain proxies, as rustup's installer lays them out, and nothing else: tools
        // that an earlier `cargo install` left in the machine's cargo home stay out of sight.
        let rustup = which("rustup").context("rustup is not on PATH")?;
        for p in PROXIES {
            std::os::unix::fs::symlink(&rustup, cargo_bin.join(p))
                .with_context(|| format!("linking {p}"))?;
        }
        let old_cargo_bin = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| old_home.as_ref().map(|h| h.join(".cargo")))
            .map(|c| c.join("bin"));
        let old_go_bin = old_home.as_ref().map(|h| h.join("go/bin"));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let kept = std::env::split_paths(&path)
            .filter(|p| Some(p) != old_cargo_bin.as_ref() && Some(p) != old_go_bin.as_ref());
        // The machine's kubectl, if it has one, is shadowed by a command that fails loudly: the
        // project builds its own (same version as the server) and must never need another.
        let shadow = dir.join("shadow");
        std::fs::create_dir_all(&shadow)?;
        let fence = shadow.join("kubectl");
        std::fs::write(
            &fence,
            "#!/bin/sh\necho \"fresh-check: the machine's kubectl was called ($*); \
             use target/wfe-cluster/bin/kubectl\" >&2\nexit 127\n",
        )?;
        std::fs::set_permissions(&fence, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let path = std::env::join_paths([cargo_bin.clone(), shadow].into_iter().chain(kept))?;
        Ok(Self {
            vars: vec![
                ("HOME", home.into()),
                ("CARGO_HOME", cargo_home.into()),
                ("RUSTUP_HOME", rustup_home.into()),
                ("GOPATH", go.join("path").into()),
                ("GOMODCACHE", go.join("mod").into()),
                ("GOCACHE", go.join("cache").into()),
                ("PATH", path),
                ("CI", "true".into()),
            ],
        })
    }

    /// Runs `program args` in `dir` with this environment, its output in `log`; returns seconds.
    fn timed(&self, dir: &Path, log: &Path, program: &str, args: &[&str]) -> Result<f64> {
        println!("==> {program} {} (log: {})", args.join(" "), log.display());
        let out = std::fs::File::create(log)?;
        let mut cmd = crate::command(program);
        for key in [
            "WFE_CP_CACHE",
            "CARGO_TARGET_DIR",
            "RUSTC_WRAPPER",
            "GOFLAGS",
            "GOENV",
            "KUBECONFIG",
        ] {
            cmd.env_remove(key);
        }
        let started = Instant::now();
        let status = cmd
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (*k, v)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("cannot run {program}"))?;
        let secs = started.elapsed().as_secs_f64();
        if !status.success() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(40).collect();
            bail!(
                "{program} {} failed after {secs:.0} s ({status}); last lines of {}:\n{}",
                args.join(" "),
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        println!("    done in {secs:.0} s");
        Ok(secs)
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Seconds since the epoch, enough to make a folder name unique.
fn epoch_seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
