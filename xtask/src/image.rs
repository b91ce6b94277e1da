//! `cargo xtask image`: the operator's container image, built without a container daemon.
//!
//! The image is one layer: the statically linked `we-operator` binary, `/etc/passwd` and
//! `/etc/group` naming the non-root user 65532, the CA bundle of the build machine (Debian's
//! `ca-certificates`) and the image's SBOM. No shell, no package manager, no libc to patch. It is
//! written as an OCI image layout (`target/image/oci/`) whose one entry is an image index listing
//! the platform images; the SBOM (SPDX 2.3, from `cargo metadata`) is also written beside it.
//!
//! The build is reproducible: file times and the image's `created` come from the commit time of
//! `HEAD` (or `SOURCE_DATE_EPOCH`), paths are remapped out of the binary, tar entries and JSON keys
//! are in a fixed order, and gzip carries no time stamp. The same commit gives the same digest.
//!
//! Pushing and pulling use go-containerregistry's `crane`, built from its Go module beside the
//! local registry (see `cluster::tekton`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Where the CA bundle comes from on the build machine (Debian's `ca-certificates`).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The user and group the image runs as (the conventional "nonroot" id).
const NONROOT: u32 = 65532;
/// Where the SBOM lives inside the image.
const SBOM_IN_IMAGE: &str = "usr/share/we-operator/sbom.spdx.json";

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Platforms to build, as os/arch.
    #[arg(long, value_delimiter = ',', default_value = "linux/amd64,linux/arm64")]
    pub platform: Vec<String>,
    /// Also push the image index to this repository (e.g. 127.0.0.1:5000/we-operator); the
    /// tag is the workspace version.
    #[arg(long)]
    pub push: Option<String>,
}

/// A Rust target the image can be built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub arch: &'static str,
    triple: &'static str,
    elf_machine: u16,
    /// zig's name of the target when it is cross-built with the [`crate::cross`] kit; `None`
    /// for the build machine's own target.
    cross: Option<&'static str>,
}

const PLATFORMS: [Platform; 2] = [
    Platform {
        os: "linux",
        arch: "amd64",
        triple: "x86_64-unknown-linux-gnu",
        elf_machine: 62,
        cross: None,
    },
    Platform {
        os: "linux",
        arch: "arm64",
        triple: "aarch64-unknown-linux-musl",
        elf_machine: 183,
        cross: Some("aarch64-linux-musl"),
    },
];

impl Platform {
    pub fn parse(text: &str) -> Result<Self> {
        PLATFORMS
            .iter()
            .find(|p| format!("{}/{}", p.os, p.arch) == text)
            .copied()
            .ok_or_else(|| anyhow!("unknown platform {text:?}: linux/amd64 or linux/arm64"))
    }
}

/// What `cargo xtask image` produced.
#[derive(Debug)]
pub struct Built {
    /// The OCI image layout.
    pub layout: PathBuf,
    /// Digest of the image index (what a deployment pins).
    pub digest: String,
    /// The tag the index is named by in the layout (the workspace version).
    pub tag: String,
}

pub fn run(root: &Path, args: &Args) -> Result<Built> {
    let platforms = args
        .platform
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let epoch = source_date_epoch(root)?;
    let out = root.join("target/image");
    let tag = workspace_version(root)?;
    let revision = git(root, &["rev-parse", "HEAD"])?;
    let ca = std::fs::read(CA_BUNDLE).with_context(|| {
        format!("reading {CA_BUNDLE}: install the ca-certificates package (apt-get install ca-certificates)")
    })?;

    let mut images = Vec::new();
    for p in &platforms {
        let binary = build_binary(root, &out, p)?;
        check_static(&binary, p)?;
        let sbom = sbom(root, p, &binary, &ca, epoch, &tag)?;
        std::fs::write(
            out.join(format!("sbom-{}-{}.spdx.json", p.os, p.arch)),
            &sbom,
        )?;
        let files = ImageFiles {
            binary: std::fs::read(&binary)?,
            ca: ca.clone(),
            sbom,
        };
        images.push((*p, files));
    }
    let layout = out.join("oci");
    let digest = write_layout(&layout, &images, epoch, &tag, &revision)?;
    let summary = json!({
        "layout": layout.display().to_string(),
        "index_digest": digest,
        "tag": tag,
        "revision": revision,
        "platforms": platforms.iter().map(|p| format!("{}/{}", p.os, p.arch)).collect::<Vec<_>>(),
    });
    std::fs::write(out.join("image.json"), serde_json::to_vec_pretty(&summary)?)?;
    println!("image index {digest} ({tag}) in {}", layout.display());
    let built = Built {
        layout,
        digest,
        tag,
    };
    if let Some(repo) = &args.push {
        let pushed = push(root, &built, repo)?;
        let version = verify_pushed(root, &built, repo)?;
        println!("pushed {pushed}; pulled back, validated, and its binary says {version:?}");
    }
    Ok(built)
}

/// The files of one platform's image.
pub struct ImageFiles {
    pub binary: Vec<u8>,
    pub ca: Vec<u8>,
    pub sbom: Vec<u8>,
}

/// Builds the static release binary of one platform in its own target folder: the build
/// machine's target with static glibc (`crt-static`), other targets with the musl kit of
/// [`crate::cross`].
fn build_binary(root: &Path, out: &Path, p: &Platform) -> Result<PathBuf> {
    let target_dir = out.join("cargo");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    // No build-machine paths in the binary; flags for the target only (build scripts and proc
    // macros are built for the build machine as usual).
    let mut flags = format!(
        "--remap-path-prefix={}=/src --remap-path-prefix={}=/cargo",
        root.display(),
        cargo_home.display()
    );
    let kit = p
        .cross
        .map(|zig_target| crate::cross::kit(p.triple, zig_target))
        .transpose()?;
    let mut cmd = kit
        .as_ref()
        .map_or_else(|| crate::command("cargo"), |k| k.cargo());
    cmd.current_dir(root)
        .args(["build", "--release", "--locked", "-p", "we-operator"])
        .args(["--target", p.triple])
        .env("CARGO_TARGET_DIR", &target_dir);
    match &kit {
        None => flags.push_str(" -C target-feature=+crt-static"),
        Some(kit) => kit.configure(&mut cmd, p.triple, &mut flags),
    }
    let env_key = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        p.triple.to_uppercase().replace('-', "_")
    );
    cmd.env(env_key, flags);
    eprintln!("==> image: static we-operator for {}/{}", p.os, p.arch);
    let status = cmd.status().context("running cargo build")?;
    ensure!(status.success(), "cargo build for {} failed", p.triple);
    Ok(target_dir.join(p.triple).join("release/we-operator"))
}

/// Fails unless `path` is an ELF executable of the platform's machine with no program
/// interpreter (so it needs no dynamic loader and no shared library in the image).
pub fn check_static(path: &Path, p: &Platform) -> Result<()> {
    let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let facts =
        elf_facts(&elf).with_context(|| format!("{} is not an ELF64 file", path.display()))?;
    ensure!(
        facts.machine == p.elf_machine,
        "{} is built for ELF machine {}, not {}/{}",
        path.display(),
        facts.machine,
        p.os,
        p.arch
    );
    ensure!(
        !facts.has_interpreter,
        "{} asks for a dynamic loader: it is not statically linked",
        path.display()
    );
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub struct ElfFacts {
    pub machine: u16,
    pub has_interpreter: bool,
}

/// Reads the machine and whether a `PT_INTERP` program header exists (little-endian ELF64).
pub fn elf_facts(elf: &[u8]) -> Option<ElfFacts> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let machine = u16_at(18)?;
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    const PT_INTERP: u32 = 3;
    let mut has_interpreter = false;
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            has_interpreter = true;
        }
    }
    Some(ElfFacts {
        machine,
        has_interpreter,
    })
}

/// The layer of one platform: a gzip'd tar, deterministic for the same inputs.
pub fn layer(files: &ImageFiles, epoch: u64) -> Result<(Vec<u8>, Vec<u8>)> {
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{NONROOT}:\n");
    let entries: Vec<(&str, Option<&[u8]>, u32)> = vec![
        ("etc/", None, 0o755),
        ("etc/group", Some(group.as_bytes()), 0o644),
        ("etc/passwd", Some(passwd.as_bytes()), 0o644),
        ("etc/ssl/", None, 0o755),
        ("etc/ssl/certs/", None, 0o755),
        ("etc/ssl/certs/ca-certificates.crt", Some(&files.ca), 0o644),
        ("home/", None, 0o755),
        ("home/nonroot/", None, 0o700),
        ("tmp/", None, 0o1777),
        ("usr/", None, 0o755),
        ("usr/share/", None, 0o755),
        ("usr/share/we-operator/", None, 0o755),
        (SBOM_IN_IMAGE, Some(&files.sbom), 0o644),
        ("we-operator", Some(&files.binary), 0o755),
    ];
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(mode);
        h.set_mtime(epoch);
        let owner = if path.starts_with("home/nonroot") {
            NONROOT
        } else {
            0
        };
        h.set_uid(owner.into());
        h.set_gid(owner.into());
        match data {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, path, std::io::empty())?;
            }
            Some(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                tar.append_data(&mut h, path, bytes)?;
            }
        }
    }
    let tar = tar.into_inner()?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)?;
    Ok((tar, gz.finish()?))
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// JSON with object keys in sorted order at every level, as bytes.
pub fn canonical(value: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let sorted: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(value)).expect("a JSON value serializes")
}

fn rfc3339(epoch: u64) -> String {
    // Civil date from days since 1970-01-01 (proleptic Gregorian), no time-zone database needed.
    let days = i64::try_from(epoch / 86_400).expect("epoch fits");
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Writes the OCI image layout: blobs, `oci-layout`, and an `index.json` whose one entry is the
/// image index of all platforms. Returns the image index's digest.
pub fn write_layout(
    dir: &Path,
    images: &[(Platform, ImageFiles)],
    epoch: u64,
    tag: &str,
    revision: &str,
) -> Result<String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<Value> {
        let digest = sha256(bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), bytes)?;
        Ok(json!({"digest": digest, "size": bytes.len()}))
    };
    let created = rfc3339(epoch);
    let annotations = json!({
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.title": "we-operator",
        "org.opencontainers.image.version": tag,
    });
    let mut manifests = Vec::new();
    for (p, files) in images {
        let (tar, gz) = layer(files, epoch)?;
        let mut layer_desc = put(&gz)?;
        layer_desc["mediaType"] = json!(MEDIA_LAYER);
        let config = json!({
            "created": created,
            "architecture": p.arch,
            "os": p.os,
            "config": {
                "User": format!("{NONROOT}:{NONROOT}"),
                "Entrypoint": ["/we-operator"],
                "Cmd": ["run"],
                "Env": ["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
                "ExposedPorts": {"8081/tcp": {}, "9090/tcp": {}},
                "Labels": annotations,
            },
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
            "history": [{"created": created, "created_by": "cargo xtask image"}],
        });
        let mut config_desc = put(&canonical(&config))?;
        config_desc["mediaType"] = json!(MEDIA_CONFIG);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config_desc,
            "layers": [layer_desc],
            "annotations": annotations,
        });
        let mut desc = put(&canonical(&manifest))?;
        desc["mediaType"] = json!(MEDIA_MANIFEST);
        desc["platform"] = json!({"os": p.os, "architecture": p.arch});
        manifests.push(desc);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": manifests,
        "annotations": annotations,
    });
    let mut index_desc = put(&canonical(&index))?;
    let digest = index_desc["digest"]
        .as_str()
        .expect("put returns a digest")
        .to_string();
    index_desc["mediaType"] = json!(MEDIA_INDEX);
    index_desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let top = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [index_desc]});
    std::fs::write(dir.join("index.json"), canonical(&top))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(digest)
}

/// An SPDX 2.3 document of what the image holds: the operator's crates compiled for the
/// platform (normal dependencies of `we-operator` only; build scripts and proc macros do not
/// ship) and the CA bundle.
fn sbom(
    root: &Path,
    p: &Platform,
    binary: &Path,
    ca: &[u8],
    epoch: u64,
    tag: &str,
) -> Result<Vec<u8>> {
    let out = crate::command("cargo")
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", p.triple])
        .output()
        .context("running cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let bin = std::fs::read(binary)?;
    spdx(&meta, &sha256(&bin), &sha256(ca), epoch, tag)
}

/// The SPDX document from `cargo metadata` output (pure, for tests).
pub fn spdx(
    meta: &Value,
    binary_digest: &str,
    ca_digest: &str,
    epoch: u64,
    tag: &str,
) -> Result<Vec<u8>> {
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("cargo metadata has no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata has no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root_id = packages
        .iter()
        .find(|(_, p)| p["name"] == "we-operator")
        .map(|(id, _)| *id)
        .context("no we-operator package")?;
    // Walk normal (non-build, non-dev) dependencies from the binary's package.
    let mut seen = BTreeSet::from([root_id]);
    let mut todo = vec![root_id];
    let mut edges = BTreeSet::new();
    while let Some(id) = todo.pop() {
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            let Some(pkg) = dep["pkg"].as_str() else {
                continue;
            };
            let proc_macro = packages.get(pkg).is_some_and(|p| {
                p["targets"].as_array().into_iter().flatten().any(|t| {
                    t["kind"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|k| k == "proc-macro")
                })
            });
            if !normal || proc_macro {
                continue;
            }
            edges.insert((id, pkg));
            if seen.insert(pkg) {
                todo.push(pkg);
            }
        }
    }
    let spdx_id = |id: &str| -> String {
        let p = packages[id];
        let raw = format!(
            "SPDXRef-Crate-{}-{}",
            p["name"].as_str().unwrap_or("unknown"),
            p["version"].as_str().unwrap_or("0")
        );
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let mut spdx_packages = vec![
        json!({
            "SPDXID": "SPDXRef-Image",
            "name": "we-operator-image",
            "versionInfo": tag,
            "downloadLocation": "NOASSERTION",
            "primaryPackagePurpose": "CONTAINER",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "Apache-2.0",
            "copyrightText": "NOASSERTION",
        }),
        json!({
            "SPDXID": "SPDXRef-CA-Bundle",
            "name": "ca-certificates",
            "versionInfo": "build machine",
            "downloadLocation": "NOASSERTION",
            "primaryPackagePurpose": "FILE",
            "checksums": [{"algorithm": "SHA256", "checksumValue": ca_digest.trim_start_matches("sha256:")}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "MPL-2.0",
            "copyrightText": "NOASSERTION",
        }),
    ];
    for id in &seen {
        let p = packages[id];
        let name = p["name"].as_str().unwrap_or_default();
        let version = p["version"].as_str().unwrap_or_default();
        let license = p["license"]
            .as_str()
            .map(|l| l.replace('/', " OR "))
            .unwrap_or_else(|| "NOASSERTION".into());
        let from_registry = p["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("registry+"));
        let mut pkg = json!({
            "SPDXID": spdx_id(id),
            "name": name,
            "versionInfo": version,
            "downloadLocation": if from_registry {
                format!("https://crates.io/api/v1/crates/{name}/{version}/download")
            } else {
                "NOASSERTION".into()
            },
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license,
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:cargo/{name}@{version}"),
            }],
        });
        if *id == root_id {
            pkg["primaryPackagePurpose"] = json!("APPLICATION");
            pkg["checksums"] = json!([{"algorithm": "SHA256",
                "checksumValue": binary_digest.trim_start_matches("sha256:")}]);
        }
        spdx_packages.push(pkg);
    }
    let mut relationships = vec![
        json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image"}),
        json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": spdx_id(root_id)}),
        json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": "SPDXRef-CA-Bundle"}),
    ];
    for (from, to) in edges {
        relationships.push(json!({
            "spdxElementId": spdx_id(from),
            "relationshipType": "DEPENDS_ON",
            "relatedSpdxElement": spdx_id(to),
        }));
    }
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("we-operator-image-{tag}"),
        "documentNamespace": format!(
            "urn:we-operator:sbom:{}",
            binary_digest.trim_start_matches("sha256:")
        ),
        "creationInfo": {"created": rfc3339(epoch), "creators": ["Tool: we-operator-xtask-image"]},
        "packages": spdx_packages,
        "relationships": relationships,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Seconds since the epoch that the build records: `SOURCE_DATE_EPOCH`, else the commit time
/// of `HEAD`.
fn source_date_epoch(root: &Path) -> Result<u64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        return v
            .to_string_lossy()
            .parse()
            .context("SOURCE_DATE_EPOCH is not a number of seconds");
    }
    git(root, &["log", "-1", "--format=%ct"])?
        .parse()
        .context("git log printed no commit time")
}

fn git(root: &Path, args: &[&str]) -> Result<String> {
    crate::output(crate::command("git").current_dir(root).args(args))
}

/// `[workspace.package] version` of Cargo.toml (read by lines: xtask has no TOML parser).
fn workspace_version(root: &Path) -> Result<String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section
            && let Some(rest) = line.strip_prefix("version")
            && let Some(value) = rest.trim_start().strip_prefix('=')
        {
            return Ok(value.trim().trim_matches('"').to_string());
        }
    }
    bail!("Cargo.toml has no [workspace.package] version")
}

/// Pushes the layout's image index to `repo:<tag>` with crane; returns `repo@digest`.
pub fn push(root: &Path, built: &Built, repo: &str) -> Result<String> {
    let crane = crate::cluster::crane(root)?;
    let reference = format!("{repo}:{}", built.tag);
    let out = Command::new(&crane)
        .arg("push")
        .arg(&built.layout)
        .arg(&reference)
        .output()
        .context("running crane push")?;
    ensure!(
        out.status.success(),
        "crane push {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        printed.ends_with(&built.digest),
        "crane pushed {printed}, expected digest {}",
        built.digest
    );
    Ok(format!("{repo}@{}", built.digest))
}

/// Pulls `repo@digest` back into a new layout with crane, checks that the registry serves the
/// same index digest and that every blob matches its digest (`crane validate`), and runs each
/// platform's binary taken out of its pulled layer. Returns their `--version` lines.
pub fn verify_pushed(root: &Path, built: &Built, repo: &str) -> Result<String> {
    let crane = crate::cluster::crane(root)?;
    let reference = format!("{repo}@{}", built.digest);
    let run = |args: &[&str]| -> Result<String> {
        let out = Command::new(&crane)
            .args(args)
            .output()
            .context("running crane")?;
        ensure!(
            out.status.success(),
            "crane {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let served = run(&["digest", &reference])?;
    ensure!(
        served == built.digest,
        "the registry serves {served} for {reference}"
    );
    run(&["validate", "--remote", &reference])?;
    let pulled = root.join("target/image/pulled");
    if pulled.exists() {
        std::fs::remove_dir_all(&pulled)?;
    }
    let pulled_str = pulled.to_string_lossy().into_owned();
    run(&["pull", "--format=oci", &reference, &pulled_str])?;
    // The pulled layout's index names the same image index.
    let index: Value = serde_json::from_slice(&std::fs::read(pulled.join("index.json"))?)?;
    let digests: Vec<&str> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    ensure!(
        digests.contains(&built.digest.as_str()),
        "the pulled layout holds {digests:?}, not {}",
        built.digest
    );
    // Take each platform's binary out of its pulled layer and run it: natively on the build
    // machine's architecture, under qemu's user-mode emulator on the other.
    let blob = |d: &str| {
        std::fs::read(
            pulled
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
    };
    let image_index: Value = serde_json::from_slice(&blob(&built.digest)?)?;
    let mut versions = Vec::new();
    for m in image_index["manifests"].as_array().into_iter().flatten() {
        let arch = m["platform"]["architecture"]
            .as_str()
            .context("an index entry without an architecture")?;
        let digest = m["digest"]
            .as_str()
            .context("an index entry without a digest")?;
        let manifest: Value = serde_json::from_slice(&blob(digest)?)?;
        let layer_digest = manifest["layers"][0]["digest"]
            .as_str()
            .context("the pulled image has no layer")?;
        let gz = blob(layer_digest)?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let binary = pulled.join(format!("we-operator-{arch}"));
        let mut found = false;
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.path()?.as_os_str() == "we-operator" {
                entry.unpack(&binary)?;
                found = true;
            }
        }
        ensure!(found, "the pulled {arch} layer has no /we-operator");
        let mut cmd = match arch {
            "amd64" => Command::new(&binary),
            "arm64" => {
                let mut cmd = Command::new(crate::cross::qemu_aarch64()?);
                cmd.arg(&binary);
                cmd
            }
            other => bail!("no way to run a linux/{other} binary here"),
        };
        let out = cmd
            .arg("--version")
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        ensure!(
            out.status.success(),
            "the pulled {arch} binary fails: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        versions.push(format!(
            "{arch}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    ensure!(!versions.is_empty(), "the pulled index lists no image");
    Ok(versions.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> ImageFiles {
        ImageFiles {
            binary: b"\x7fELF not really".to_vec(),
            ca: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
            sbom: b"{}".to_vec(),
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_digest() {
        let dir = std::env::temp_dir().join(format!("wfe-image-test-{}", std::process::id()));
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let a = write_layout(
            &dir.join("a"),
            &[(amd64, files())],
            1_700_000_000,
            "0.1.0",
            "abc",
        )
        .unwrap();
        let b = write_layout(
            &dir.join("b"),
            &[(amd64, files())],
            1_700_000_000,
            "0.1.0",
            "abc",
        )
        .unwrap();
        assert_eq!(a, b);
        let c = write_layout(
            &dir.join("c"),
            &[(amd64, files())],
            1_700_000_001,
            "0.1.0",
            "abc",
        )
        .unwrap();
        assert_ne!(a, c, "the time stamp is part of the image");
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("a/index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], a);
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "0.1.0"
        );
        let blob = |d: &str| {
            std::fs::read(
                dir.join("a/blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap()
        };
        let image_index: Value = serde_json::from_slice(&blob(&a)).unwrap();
        let m = &image_index["manifests"][0];
        assert_eq!(m["platform"]["architecture"], "amd64");
        let manifest: Value = serde_json::from_slice(&blob(m["digest"].as_str().unwrap())).unwrap();
        let config: Value =
            serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/we-operator");
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_layer_holds_the_files_with_owners_and_modes() {
        let (tar, gz) = layer(&files(), 0).unwrap();
        assert_eq!(layer(&files(), 0).unwrap().1, gz, "gzip is deterministic");
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: BTreeMap<String, (u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    (h.mode().unwrap(), h.uid().unwrap()),
                )
            })
            .collect();
        assert_eq!(entries["we-operator"], (0o755, 0));
        assert_eq!(entries["home/nonroot/"], (0o700, 65532));
        assert_eq!(entries["tmp/"], (0o1777, 0));
        assert!(entries.contains_key(SBOM_IN_IMAGE));
        assert!(!entries.keys().any(|k| k.starts_with("bin/")), "no shell");
    }

    #[test]
    fn elf_interpreter_is_detected() {
        // A minimal ELF64 header with one PT_INTERP program header at offset 64.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            elf_facts(&elf),
            Some(ElfFacts {
                machine: 62,
                has_interpreter: true
            })
        );
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert!(!elf_facts(&elf).unwrap().has_interpreter);
        assert_eq!(elf_facts(b"#!/bin/sh"), None);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_038_970), "2026-11-30T11:42:50Z");
    }

    #[test]
    fn spdx_keeps_normal_dependencies_only() {
        let meta = json!({
            "packages": [
                {"id": "op", "name": "we-operator", "version": "0.1.0", "license": "Apache-2.0", "source": null, "targets": [{"kind": ["bin"]}]},
                {"id": "a", "name": "serde", "version": "1.0.0", "license": "MIT/Apache-2.0", "source": "registry+https://github.com/rust-lang/crates.io-index", "targets": [{"kind": ["lib"]}]},
                {"id": "m", "name": "serde_derive", "version": "1.0.0", "license": "MIT", "source": "registry+x", "targets": [{"kind": ["proc-macro"]}]},
                {"id": "b", "name": "cc", "version": "1.0.0", "license": "MIT", "source": "registry+x", "targets": [{"kind": ["lib"]}]},
                {"id": "t", "name": "mockall", "version": "0.13.0", "license": "MIT", "source": "registry+x", "targets": [{"kind": ["lib"]}]},
            ],
            "resolve": {"nodes": [
                {"id": "op", "deps": [
                    {"pkg": "a", "dep_kinds": [{"kind": null}]},
                    {"pkg": "b", "dep_kinds": [{"kind": "build"}]},
                    {"pkg": "t", "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": "a", "deps": [{"pkg": "m", "dep_kinds": [{"kind": null}]}]},
            ]},
        });
        let doc: Value =
            serde_json::from_slice(&spdx(&meta, "sha256:00", "sha256:11", 0, "0.1.0").unwrap())
                .unwrap();
        let names: Vec<&str> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "we-operator-image",
                "ca-certificates",
                "serde",
                "we-operator"
            ]
        );
        let serde = &doc["packages"][2];
        assert_eq!(serde["licenseDeclared"], "MIT OR Apache-2.0");
        assert_eq!(
            serde["externalRefs"][0]["referenceLocator"],
            "pkg:cargo/serde@1.0.0"
        );
        assert!(
            doc["relationships"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["relationshipType"] == "DEPENDS_ON"
                    && r["relatedSpdxElement"] == "SPDXRef-Crate-serde-1.0.0")
        );
    }
}
