//! Validation that the API server cannot do, plus the same checks the CRD makes (so that objects
//! admitted by an older CRD, or built in memory by other services, are checked the same way).

use std::{fmt, time::Duration};

use crate::{ExecutionEngine, TargetResource, WorkflowExecutionSpec};

/// Names the operator sets itself; parameters may not use them.
pub const RESERVED_PARAMETER_NAMES: [&str; 3] = ["TARGET_RESOURCE", "HOME", "TMPDIR"];
/// Prefix reserved for variables set by the operator.
pub const RESERVED_PARAMETER_PREFIX: &str = "WFE_";
/// Timeout used when `executionConfig.timeout` is absent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Largest accepted timeout (7 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest accepted total size of parameter names and values (the Job's environment).
pub const MAX_PARAMETERS_BYTES: usize = 256 * 1024;

/// One problem with a spec, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.parameters[bad-key]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// All problems with a spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError(pub Vec<FieldError>);

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// True for `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// True for names the operator reserves for itself.
pub fn is_reserved_parameter(name: &str) -> bool {
    RESERVED_PARAMETER_NAMES.contains(&name) || name.starts_with(RESERVED_PARAMETER_PREFIX)
}

/// True when `image` is pinned by a sha256 digest (`...@sha256:<64 lowercase hex>`).
pub fn is_digest_pinned(image: &str) -> bool {
    let image = image.strip_prefix("oci://").unwrap_or(image);
    match image.rsplit_once('@') {
        Some((repo, digest)) => {
            !repo.is_empty()
                && digest.strip_prefix("sha256:").is_some_and(|h| {
                    h.len() == 64
                        && h.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                })
        }
        None => false,
    }
}

/// Why an image reference is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageReferenceError {
    /// Nothing (or only `oci://`).
    #[error("must not be empty")]
    Empty,
    /// Spaces, newlines or other control characters.
    #[error("must not contain whitespace or control characters")]
    Whitespace,
    /// A digest without `<algorithm>:`.
    #[error("digest {0:?} must be <algorithm>:<hex>")]
    DigestShape(String),
    /// A digest with an empty algorithm or a hex part that is not hex.
    #[error("digest {0:?} is malformed")]
    Digest(String),
    /// An empty repository, or one with empty path components.
    #[error("repository {0:?} is malformed")]
    Repository(String),
    /// A repository path with characters a registry does not accept.
    #[error("repository {0:?} must be lower-case letters, digits and . _ -")]
    RepositoryCharacters(String),
    /// An empty, too long or ill-formed tag.
    #[error("tag {0:?} is malformed")]
    Tag(String),
}

/// Checks the shape of an OCI reference: `[registry/]repository[:tag][@digest]` with no spaces or
/// control characters.
pub fn check_image_reference(image: &str) -> Result<(), ImageReferenceError> {
    let image = image.strip_prefix("oci://").unwrap_or(image);
    if image.is_empty() {
        return Err(ImageReferenceError::Empty);
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ImageReferenceError::Whitespace);
    }
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let Some((alg, hex)) = d.split_once(':') else {
            return Err(ImageReferenceError::DigestShape(d.to_string()));
        };
        if alg.is_empty() || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageReferenceError::Digest(d.to_string()));
        }
    }
    // A tag follows the last ':' after the last '/'.
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if repo.is_empty() || repo.starts_with('/') || repo.ends_with('/') || repo.contains("//") {
        return Err(ImageReferenceError::Repository(repo.to_string()));
    }
    let path_ok = repo
        .split('/')
        .skip(usize::from(repo.contains('/')))
        .all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if !path_ok {
        return Err(ImageReferenceError::RepositoryCharacters(repo.to_string()));
    }
    if let Some(t) = tag
        && (t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        return Err(ImageReferenceError::Tag(t.to_string()));
    }
    Ok(())
}

/// Why a text is not a duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but whitespace.
    #[error("empty duration")]
    Empty,
    /// A part that is not a number followed by a unit.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// A unit other than `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
    #[error("invalid unit {unit:?} in duration {text:?}")]
    Unit {
        /// The unit.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// More than 10¹² seconds.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses a Go-style duration (`30m`, `1h30m`, `45s`, `1.5h`, `500ms`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(DurationError::Invalid(text.to_string()));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| DurationError::Invalid(text.to_string()))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(DurationError::Unit {
                    unit: other.to_string(),
                    text: text.to_string(),
                });
            }
        };
        rest = &rest[unit_len..];
        total += value * factor;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(DurationError::TooLarge(text.to_string()));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration like Go's `time.Duration.String()` rounded to seconds (`45s`, `2m5s`, `1h0m0s`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_millis() >= 500);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Why `executionConfig.timeout` is not a usable timeout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// Not a duration; the message is the parse error's.
    #[error("{0}")]
    Parse(#[source] DurationError),
    /// Under one second.
    #[error("timeout {0:?} must be at least 1s")]
    TooShort(String),
    /// Over 168 hours.
    #[error("timeout {0:?} must be at most 168h")]
    TooLong(String),
}

impl WorkflowExecutionSpec {
    /// The execution timeout (default 30 minutes).
    pub fn timeout(&self) -> Result<Duration, TimeoutError> {
        match self
            .execution_config
            .as_ref()
            .and_then(|c| c.timeout.as_deref())
        {
            None => Ok(DEFAULT_TIMEOUT),
            Some(t) => {
                let d = parse_duration(t).map_err(TimeoutError::Parse)?;
                if d < Duration::from_secs(1) {
                    Err(TimeoutError::TooShort(t.to_string()))
                } else if d > MAX_TIMEOUT {
                    Err(TimeoutError::TooLong(t.to_string()))
                } else {
                    Ok(d)
                }
            }
        }
    }

    /// Checks everything about a spec that does not depend on the operator's configuration.
    /// Engine-specific checks (such as digest pinning for Jobs) belong to the executors.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        if let ExecutionEngine::Unsupported(e) = &self.execution_engine {
            errors.push(err(
                "spec.executionEngine",
                format!("unsupported value {e:?}: must be \"tekton\" or \"job\""),
            ));
        }
        let wr = &self.workflow_ref;
        if wr.workflow_id.trim().is_empty() {
            errors.push(err("spec.workflowRef.workflowId", "must not be empty"));
        }
        if let Err(e) = check_image_reference(&wr.container_image) {
            errors.push(err("spec.workflowRef.containerImage", e.to_string()));
        }
        if let Some(deps) = &wr.dependencies {
            for (kind, list) in [
                ("secrets", &deps.secrets),
                ("configMaps", &deps.config_maps),
            ] {
                for (i, d) in list.iter().enumerate() {
                    if !is_dns_subdomain(&d.name) {
                        errors.push(err(
                            format!("spec.workflowRef.dependencies.{kind}[{i}].name"),
                            format!("{:?} is not a valid object name", d.name),
                        ));
                    }
                }
            }
        }
        if let Err(e) = TargetResource::parse(&self.target_resource)
            .and_then(|t| t.check_names(&self.target_resource))
        {
            errors.push(err("spec.targetResource", e.to_string()));
        }
        let mut size = 0usize;
        for (k, v) in &self.parameters {
            size += k.len() + v.len();
            if !is_env_name(k) {
                errors.push(err(
                    format!("spec.parameters[{k}]"),
                    "name must be a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            } else if is_reserved_parameter(k) {
                errors.push(err(
                    format!("spec.parameters[{k}]"),
                    "name is reserved (TARGET_RESOURCE, HOME, TMPDIR, WFE_*)",
                ));
            }
        }
        if size > MAX_PARAMETERS_BYTES {
            errors.push(err(
                "spec.parameters",
                format!("total size {size} bytes exceeds {MAX_PARAMETERS_BYTES} bytes"),
            ));
        }
        if let Err(e) = self.timeout() {
            errors.push(err("spec.executionConfig.timeout", e.to_string()));
        }
        if let Some(sa) = self
            .execution_config
            .as_ref()
            .and_then(|c| c.service_account_name.as_deref())
            && !sa.is_empty()
            && !is_dns_subdomain(sa)
        {
            errors.push(err(
                "spec.executionConfig.serviceAccountName",
                format!("{sa:?} is not a valid name"),
            ));
        }
        if let Some(c) = self.confidence
            && !(0.0..=1.0).contains(&c)
        {
            errors.push(err("spec.confidence", "must be between 0 and 1"));
        }
        if self
            .remediation_request_ref
            .name
            .as_deref()
            .is_none_or(str::is_empty)
        {
            errors.push(err("spec.remediationRequestRef.name", "must not be empty"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationError(errors))
        }
    }
}

/// True for a DNS-1123 subdomain (object names).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn env_names() {
        for ok in ["A", "_", "podName", "MEMORY_LIMIT", "a1_b2"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "a-b", "a b", "a.b", "ä", "A=B", "$X"] {
            assert!(!is_env_name(bad), "{bad}");
        }
        assert!(
            is_reserved_parameter("HOME")
                && is_reserved_parameter("WFE_NAME")
                && !is_reserved_parameter("WFEX")
        );
    }

    #[test]
    fn digest_pinning() {
        assert!(is_digest_pinned(&format!(
            "registry.example.com/remediation/restart:v1.2@{DIGEST}"
        )));
        assert!(is_digest_pinned(&format!("oci://quay.io/x/y@{DIGEST}")));
        assert!(!is_digest_pinned(
            "registry.example.com/remediation/restart:v1.2"
        ));
        assert!(!is_digest_pinned("x@sha256:abc"));
        assert!(!is_digest_pinned(&format!("@{DIGEST}")));
        assert!(!is_digest_pinned(&format!("x@{}", DIGEST.to_uppercase())));
    }

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "registry.example.com:5000/team/app:v1.2",
            &format!("registry.example.com/remediation/restart:v1.2@{DIGEST}"),
            "oci://registry.example.com/pipelines/canary:v2.0",
        ] {
            assert_eq!(check_image_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Busybox",
            "a b",
            "x:",
            "x@sha256",
            "x@sha256:zz",
            "/x",
            "x//y",
            "x:\n",
            "x:tag!",
        ] {
            assert!(check_image_reference(bad).is_err(), "{bad:?}");
        }
        // The messages users see in `ConfigurationError` conditions.
        for (bad, message) in [
            ("", "must not be empty"),
            ("a b", "must not contain whitespace or control characters"),
            ("x@sha256", "digest \"sha256\" must be <algorithm>:<hex>"),
            ("x@sha256:zz", "digest \"sha256:zz\" is malformed"),
            ("x//y", "repository \"x//y\" is malformed"),
            (
                "Busybox",
                "repository \"Busybox\" must be lower-case letters, digits and . _ -",
            ),
            ("x:tag!", "tag \"tag!\" is malformed"),
        ] {
            let e = check_image_reference(bad).unwrap_err();
            assert_eq!(e.to_string(), message, "{bad:?}");
        }
    }

    #[test]
    fn a_timeout_that_is_no_duration_keeps_the_parse_error_as_its_source() {
        use std::error::Error as _;
        let e = TimeoutError::Parse(parse_duration("5x").unwrap_err());
        assert_eq!(e.to_string(), "invalid unit \"x\" in duration \"5x\"");
        let source = e.source().and_then(|s| s.downcast_ref::<DurationError>());
        assert_eq!(
            source,
            Some(&DurationError::Unit {
                unit: "x".into(),
                text: "5x".into()
            })
        );
        assert_eq!(parse_duration(" "), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("h").unwrap_err().to_string(),
            "invalid duration \"h\""
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "abc", "10", "5x", "h", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m5s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "2s");
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_subdomain("my-creds") && is_dns_subdomain("a.b-c"));
        for bad in ["", "My", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
