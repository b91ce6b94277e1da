//! The kit that builds and runs the linux/arm64 image on an x86_64 build machine, from package
//! registries only (no rustup download, no container daemon):
//!
//! - **linker and C compiler**: zig, from its PyPI wheel (`ziglang`, pinned by version and
//!   SHA-256), called through two small wrappers (`cc`, `ar`) for `aarch64-linux-musl`; zig
//!   brings musl's C library and start files, so the binary is static;
//! - **standard library**: the prebuilt one when `rustup target add aarch64-unknown-linux-musl`
//!   has put it in the toolchain; otherwise cargo builds it from source (`-Zbuild-std`, made
//!   available on a release compiler by `RUSTC_BOOTSTRAP=1`) with the Rust source of exactly
//!   the compiler's version, taken from Debian's `rust-src` package, in a copy of the toolchain
//!   made by hard links (the toolchain itself is not touched);
//! - **emulator**: `qemu-aarch64-static` from Debian's `qemu-user-static`, to run the arm64
//!   binary in tests.
//!
//! Debian packages come through apt itself, with a private configuration and state under the
//! cache (the build machine's apt setup is not touched): the Debian mirror the machine already
//! uses, the suites below, and the archive keyring as the only trusted signer, so apt checks
//! every index and package as it does for an install.
//! Everything lands in `~/.cache/we-operator/cross` (or `$WFE_CROSS_CACHE`) and is reused.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, ensure};

/// The zig release the kit uses, and the SHA-256 of its x86_64 Linux wheel on PyPI.
const ZIG_VERSION: &str = "0.17.1";
const ZIG_WHEEL_SHA256: &str = "ea6cc5d87b033cf0aedfbc8f9549a908cae6c50ac31f1698188fa48a74524b54";
const ZIG_WHEEL_PLATFORM: &str = "manylinux_2_12_x86_64";

/// The keyring apt trusts for the kit's suites (Debian's `debian-archive-keyring`).
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Suites searched for the `rust-src` of the compiler's version, beside the build machine's
/// own: backports carry several recent releases side by side, the development suites the
/// newest.
const RUST_SRC_SUITES: [&str; 3] = ["trixie-backports", "forky", "sid"];

/// What a cross build of one target needs, ready on disk.
#[derive(Debug)]
pub struct Kit {
    /// The cargo to build with: the copy's own when the standard library is built from source
    /// (not rustup's proxy, which points the dynamic loader at the original toolchain and so at
    /// its sysroot).
    pub cargo: PathBuf,
    /// The rustc to build with (the copy holding the standard library's source, or the
    /// toolchain's own).
    pub rustc: PathBuf,
    /// The standard library's source folder as cargo sees it, when the standard library is
    /// built from it (`-Zbuild-std`; the folder is remapped out of the binary).
    pub rust_src: Option<PathBuf>,
    pub cc: PathBuf,
    pub ar: PathBuf,
}

impl Kit {
    /// A `cargo` command of this kit.
    pub fn cargo(&self) -> Command {
        let mut cmd = crate::command(&self.cargo);
        if self.rust_src.is_some() {
            cmd.env_remove("LD_LIBRARY_PATH");
        }
        cmd
    }

    /// The environment and arguments of a `cargo build --target triple` with this kit.
    pub fn configure(&self, cmd: &mut Command, triple: &str, rustflags: &mut String) {
        let key = triple.to_uppercase().replace('-', "_");
        let under = triple.replace('-', "_");
        cmd.env("RUSTC", &self.rustc)
            .env(format!("CARGO_TARGET_{key}_LINKER"), &self.cc)
            .env(format!("CC_{under}"), &self.cc)
            .env(format!("AR_{under}"), &self.ar);
        // zig supplies musl's start files and C library, not rustc's bundled copies.
        rustflags.push_str(" -C link-self-contained=no");
        if let Some(src) = &self.rust_src {
            cmd.env("RUSTC_BOOTSTRAP", "1")
                .arg("-Zbuild-std=std,panic_abort");
            rustflags.push_str(&format!(" --remap-path-prefix={}=/rustc", src.display()));
        }
    }
}

pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WFE_CROSS_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set; set WFE_CROSS_CACHE"))?;
    Ok(PathBuf::from(home).join(".cache/we-operator/cross"))
}

/// Prepares the kit for `triple` (whose zig name is `zig_target`), downloading what is missing.
pub fn kit(triple: &str, zig_target: &str) -> Result<Kit> {
    let cache = cache_root()?;
    std::fs::create_dir_all(&cache)?;
    let zig = zig(&cache)?;
    let (cc, ar) = wrappers(&cache, &zig, zig_target)?;
    let sysroot = PathBuf::from(crate::output(
        Command::new("rustc").args(["--print", "sysroot"]),
    )?);
    let libdir = sysroot.join("lib/rustlib").join(triple).join("lib");
    if has_std(&libdir) {
        return Ok(Kit {
            cargo: PathBuf::from("cargo"),
            rustc: sysroot.join("bin/rustc"),
            rust_src: None,
            cc,
            ar,
        });
    }
    let version = rustc_release(&crate::output(Command::new("rustc").arg("-V"))?)?;
    let src = rust_src(&cache, &version)?;
    let toolchain = toolchain_with_source(&cache, &sysroot, &version, &src)?;
    eprintln!(
        "==> cross: no prebuilt standard library for {triple}; building it from the Rust {version} \
         source of Debian's rust-src"
    );
    Ok(Kit {
        cargo: toolchain.join("bin/cargo"),
        rustc: toolchain.join("bin/rustc"),
        rust_src: Some(toolchain.join("lib/rustlib/src/rust")),
        cc,
        ar,
    })
}

/// `qemu-aarch64-static`, from the build machine's Debian release's `qemu-user-static`
/// (downloaded if needed).
pub fn qemu_aarch64() -> Result<PathBuf> {
    let cache = cache_root()?;
    let codename = host_codename()?;
    let dir = package_dir(&cache, "qemu-user-static", &codename);
    if !dir.join(".complete").is_file() {
        let apt = Apt::new(&cache)?;
        apt.unpack(&format!("qemu-user-static/{codename}"), &dir)?;
    }
    let qemu = dir.join("usr/bin/qemu-aarch64-static");
    ensure!(
        qemu.is_file(),
        "Debian {codename}'s qemu-user-static has no usr/bin/qemu-aarch64-static"
    );
    Ok(qemu)
}

pub fn has_std(libdir: &Path) -> bool {
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    })
}

/// The release number of `rustc -V` output (`rustc 1.95.0 (hash date)` → `1.95.0`); a nightly
/// or beta compiler has no matching Debian source.
pub fn rustc_release(version_line: &str) -> Result<String> {
    let v = version_line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("unexpected `rustc -V` output {version_line:?}"))?;
    ensure!(
        v.split('.').count() == 3 && v.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "rustc {v} is not a release; building the arm64 image from source needs a release compiler \
         (or `rustup target add aarch64-unknown-linux-musl`)"
    );
    Ok(v.to_string())
}

/// zig from its PyPI wheel, unpacked in the cache; returns the `zig` executable.
fn zig(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join(format!("zig-{ZIG_VERSION}"));
    let zig = dir.join("ziglang/zig");
    if zig.is_file() {
        return Ok(zig);
    }
    let download = cache.join("downloads");
    std::fs::create_dir_all(&download)?;
    eprintln!("==> cross: downloading zig {ZIG_VERSION} (PyPI ziglang)");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps"])
        .args(["--only-binary=:all:", "--platform", ZIG_WHEEL_PLATFORM])
        .arg(format!("ziglang=={ZIG_VERSION}"))
        .arg("-d")
        .arg(&download)
        .status()
        .context("running `python3 -m pip download` (is Python's pip installed?)")?;
    ensure!(
        status.success(),
        "pip could not download ziglang=={ZIG_VERSION}"
    );
    let wheel = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&format!("ziglang-{ZIG_VERSION}-")) && n.ends_with(".whl")
            })
        })
        .context("pip wrote no ziglang wheel")?;
    check_sha256(&wheel, ZIG_WHEEL_SHA256)?;
    let tmp = cache.join(format!("zig-{ZIG_VERSION}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&tmp)
        .status()
        .context("unpacking the zig wheel")?;
    ensure!(status.success(), "could not unpack {}", wheel.display());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tmp.join("ziglang/zig"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::fs::rename(&tmp, &dir)?;
    Ok(zig)
}

/// The `cc` and `ar` wrappers: zig for `zig_target`, without the `--target=` the `cc` crate adds
/// (zig spells targets its own way and takes the one the wrapper gives).
fn wrappers(cache: &Path, zig: &Path, zig_target: &str) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = cache.join(format!("bin-{zig_target}"));
    std::fs::create_dir_all(&dir)?;
    let cc = dir.join("cc");
    let ar = dir.join("ar");
    let scripts = [
        (
            &cc,
            format!(
                "#!/bin/sh\n# zig as the C compiler and linker of {zig_target} (written by cargo xtask image)\n\
                 for a do\n  shift\n  case \"$a\" in --target=*) continue ;; esac\n  set -- \"$@\" \"$a\"\ndone\n\
                 exec '{}' cc -target {zig_target} \"$@\"\n",
                zig.display()
            ),
        ),
        (
            &ar,
            format!("#!/bin/sh\nexec '{}' ar \"$@\"\n", zig.display()),
        ),
    ];
    for (path, text) in scripts {
        std::fs::write(path, text)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok((cc, ar))
}

/// The Rust source of `version` from Debian's `rust-src`; returns its top folder (holding
/// `library/`).
fn rust_src(cache: &Path, version: &str) -> Result<PathBuf> {
    let dir = package_dir(cache, "rust-src", version);
    let src = dir.join(format!("usr/src/rustc-{version}"));
    if !dir.join(".complete").is_file() {
        let apt = Apt::new(cache)?;
        let listed = apt.madison("rust-src")?;
        let debian_version = pick_version(&listed, version).with_context(|| {
            format!(
                "Debian has no rust-src of Rust {version} in {}; use a Rust release Debian \
                 packages, or `rustup target add aarch64-unknown-linux-musl` where rustup can \
                 download",
                RUST_SRC_SUITES.join(", ")
            )
        })?;
        apt.unpack(&format!("rust-src={debian_version}"), &dir)?;
    }
    ensure!(
        src.join("library/Cargo.lock").is_file(),
        "Debian's rust-src of Rust {version} has no library/Cargo.lock"
    );
    Ok(src)
}

/// A copy of the toolchain at `sysroot` (hard links where the file system allows, else a copy)
/// with `src` as its standard library source, where cargo's `-Zbuild-std` looks for it.
fn toolchain_with_source(
    cache: &Path,
    sysroot: &Path,
    version: &str,
    src: &Path,
) -> Result<PathBuf> {
    let dir = cache.join(format!("toolchain-{version}"));
    if dir.join("bin/rustc").is_file() && dir.join("lib/rustlib/src/rust/library").is_dir() {
        return Ok(dir);
    }
    let tmp = cache.join(format!("toolchain-{version}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let copy = |flags: &str| {
        Command::new("cp")
            .arg(flags)
            .arg(sysroot.join("bin"))
            .arg(sysroot.join("lib"))
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !copy("-al") {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        ensure!(
            copy("-a"),
            "could not copy the toolchain at {}",
            sysroot.display()
        );
    }
    let link = tmp.join("lib/rustlib/src/rust");
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_dir_all(&link);
    std::fs::create_dir_all(link.parent().expect("has a parent"))?;
    std::os::unix::fs::symlink(src, &link)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// Where an unpacked Debian package is kept.
fn package_dir(cache: &Path, package: &str, version: &str) -> PathBuf {
    cache.join("debian").join(format!("{package}_{version}"))
}

/// The Debian version, among `apt-cache madison` lines, of the package built from Rust
/// `upstream` (`1.95.0` matches `1.95.0+dfsg1-2~bpo13+1`); the first listed (the newest) wins.
pub fn pick_version(madison: &str, upstream: &str) -> Option<String> {
    madison.lines().find_map(|line| {
        let version = line.split('|').nth(1)?.trim();
        let up = version
            .split(':')
            .next_back()?
            .split(['+', '~', '-'])
            .next()?;
        (up == upstream).then(|| version.to_string())
    })
}

/// The mirror of the build machine's apt sources that serves its own release `codename`, from
/// `apt-get indextargets` lines formatted as `REPO_URI RELEASE`.
pub fn pick_mirror(indextargets: &str, codename: &str) -> Option<String> {
    indextargets.lines().find_map(|line| {
        let (uri, release) = line.trim().split_once(' ')?;
        (release == codename).then(|| uri.to_string())
    })
}

fn host_codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("the build machine is not a Debian release (no VERSION_CODENAME): the arm64 kit uses Debian's packages")
}

/// apt with a private configuration and state: the machine's Debian mirror, its own release
/// and [`RUST_SRC_SUITES`], signed by [`DEBIAN_KEYRING`].
struct Apt {
    options: Vec<String>,
    downloads: PathBuf,
}

impl Apt {
    fn new(cache: &Path) -> Result<Self> {
        let codename = host_codename()?;
        let listed = crate::output(
            Command::new("apt-get")
                .args([
                    "indextargets",
                    "--no-release-info",
                    "--format",
                    "$(REPO_URI) $(RELEASE)",
                ])
                .arg("Identifier: Packages"),
        )?;
        let mirror = pick_mirror(&listed, &codename).with_context(|| {
            format!("the apt sources of this machine name no Debian mirror for {codename}")
        })?;
        let root = cache.join("apt");
        let downloads = cache.join("downloads");
        for dir in ["lists/partial", "cache/archives/partial", "sources"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        std::fs::create_dir_all(&downloads)?;
        let mut suites = vec![codename.clone()];
        suites.extend(RUST_SRC_SUITES.iter().map(|s| s.to_string()));
        std::fs::write(
            root.join("sources/kit.sources"),
            format!(
                "Types: deb\nURIs: {mirror}\nSuites: {}\nComponents: main\nSigned-By: {DEBIAN_KEYRING}\n",
                suites.join(" ")
            ),
        )?;
        let options = [
            "Dir::Etc::SourceList=/dev/null".to_string(),
            format!("Dir::Etc::SourceParts={}", root.join("sources").display()),
            format!("Dir::State::Lists={}", root.join("lists").display()),
            format!("Dir::Cache={}", root.join("cache").display()),
            "Dir::State::status=/dev/null".to_string(),
            "Debug::NoLocking=1".to_string(),
            "APT::Sandbox::User=root".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        let apt = Apt { options, downloads };
        eprintln!("==> cross: apt-get update ({})", suites.join(", "));
        crate::output(apt.command("apt-get").args(["-q", "update"]))?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options).current_dir(&self.downloads);
        cmd
    }

    fn madison(&self, package: &str) -> Result<String> {
        crate::output(self.command("apt-cache").args(["madison", package]))
    }

    /// Downloads `spec` (`name=version` or `name/suite`) with apt and unpacks it into `dir`.
    fn unpack(&self, spec: &str, dir: &Path) -> Result<()> {
        eprintln!("==> cross: apt-get download {spec}");
        for e in std::fs::read_dir(&self.downloads)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        crate::output(self.command("apt-get").args(["-q", "download", spec]))?;
        let deb = std::fs::read_dir(&self.downloads)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {spec} wrote no package"))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir)
            .status()
            .context("running dpkg-deb")?;
        ensure!(status.success(), "could not unpack {}", deb.display());
        std::fs::remove_file(&deb)?;
        std::fs::write(dir.join(".complete"), b"")?;
        Ok(())
    }
}

fn check_sha256(path: &Path, want: &str) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let got = crate::image::sha256(&bytes);
    ensure!(
        got.strip_prefix("sha256:") == Some(want),
        "{} has {got}, expected sha256:{want}",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_debian_version_of_the_compiler_release() {
        let madison = "  rust-src | 1.97.1+dfsg1-1~bpo13+1 | http://mirror/debian trixie-backports/main amd64 Packages
  rust-src | 1.95.0+dfsg1-2~bpo13+1 | http://mirror/debian trixie-backports/main amd64 Packages
  rust-src | 1.95.0+dfsg1-1 | http://mirror/debian forky/main amd64 Packages
  rust-src | 1.63.0+dfsg1-2 | http://mirror/debian bookworm/main amd64 Packages";
        assert_eq!(
            pick_version(madison, "1.95.0").as_deref(),
            Some("1.95.0+dfsg1-2~bpo13+1")
        );
        assert_eq!(pick_version(madison, "1.96.0"), None);
        assert_eq!(pick_version(madison, "1.9"), None);
    }

    #[test]
    fn picks_the_mirror_of_the_machine_release() {
        let listed = "http://mirror/debian-security/ bookworm-security\nhttp://mirror/debian/ bookworm\nhttp://mirror/debian/ bookworm-updates\n";
        assert_eq!(
            pick_mirror(listed, "bookworm").as_deref(),
            Some("http://mirror/debian/")
        );
        assert_eq!(pick_mirror(listed, "trixie"), None);
    }

    #[test]
    fn only_a_release_compiler_has_a_matching_source() {
        assert_eq!(
            rustc_release("rustc 1.95.0 (59807616e 2026-04-14)").unwrap(),
            "1.95.0"
        );
        assert!(rustc_release("rustc 1.97.0-nightly (e50aa6fba 2026-05-19)").is_err());
        assert!(rustc_release("garbage").is_err());
    }
}
