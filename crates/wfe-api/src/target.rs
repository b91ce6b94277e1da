//! The target of a remediation (`spec.targetResource`) and its lock key.

use std::fmt;

/// A parsed `spec.targetResource`: `namespace/kind/name` for namespaced objects, `kind/name` for
/// cluster-scoped ones.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetResource<'a> {
    /// Namespace of a namespaced target; `None` for a cluster-scoped target.
    pub namespace: Option<&'a str>,
    /// Kind as written (case preserved).
    pub kind: &'a str,
    /// Object name.
    pub name: &'a str,
}

/// Why a `targetResource` string is not a valid target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The string has fewer than 2 or more than 3 `/`-separated parts.
    #[error("targetResource {0:?} must be \"namespace/kind/name\" or \"kind/name\"")]
    Shape(String),
    /// One of the parts is empty or only whitespace.
    #[error("targetResource {0:?} has an empty part")]
    EmptyPart(String),
}

impl<'a> TargetResource<'a> {
    /// Parses `namespace/kind/name` or `kind/name`; every part must be non-empty.
    pub fn parse(raw: &'a str) -> Result<Self, TargetError> {
        let parts: Vec<&str> = raw.split('/').collect();
        if parts.iter().any(|p| p.trim().is_empty()) && (2..=3).contains(&parts.len()) {
            return Err(TargetError::EmptyPart(raw.to_string()));
        }
        match parts.as_slice() {
            [kind, name] => Ok(Self {
                namespace: None,
                kind,
                name,
            }),
            [ns, kind, name] => Ok(Self {
                namespace: Some(ns),
                kind,
                name,
            }),
            _ => Err(TargetError::Shape(raw.to_string())),
        }
    }

    /// The lock key: the target with the kind lower-cased, so that `ns/Deployment/x` and
    /// `ns/deployment/x` are one target.
    pub fn key(&self) -> TargetKey {
        let kind = self.kind.to_ascii_lowercase();
        TargetKey(match self.namespace {
            Some(ns) => format!("{ns}/{kind}/{}", self.name),
            None => format!("{kind}/{}", self.name),
        })
    }
}

/// The normalized identity of a target, used for locking, cooldown and backoff.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey(String);

impl TargetKey {
    /// The key of a raw `targetResource`. An unparsable value is its own key (trimmed), so that even
    /// malformed requests are grouped consistently.
    pub fn of(raw: &str) -> Self {
        TargetResource::parse(raw)
            .map(|t| t.key())
            .unwrap_or_else(|_| TargetKey(raw.trim().to_string()))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes() {
        let t = TargetResource::parse("production/Deployment/my-app").unwrap();
        assert_eq!(
            (t.namespace, t.kind, t.name),
            (Some("production"), "Deployment", "my-app")
        );
        let t = TargetResource::parse("Node/worker-1").unwrap();
        assert_eq!((t.namespace, t.kind, t.name), (None, "Node", "worker-1"));
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in ["", "a", "a/b/c/d", "/", "a//b", "a/ /b", "/a/b", "a/b/"] {
            assert!(TargetResource::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_lowercases_kind_only() {
        assert_eq!(
            TargetKey::of("ns/Deployment/My-App").as_str(),
            "ns/deployment/My-App"
        );
        assert_eq!(
            TargetKey::of("ns/Deployment/x"),
            TargetKey::of("ns/deployment/x")
        );
        assert_ne!(
            TargetKey::of("NS/deployment/x"),
            TargetKey::of("ns/deployment/x")
        );
        assert_eq!(TargetKey::of("Node/n1").as_str(), "node/n1");
        assert_eq!(TargetKey::of(" garbage ").as_str(), "garbage");
    }
}
