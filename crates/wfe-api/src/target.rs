//! The target of a remediation (`spec.targetResource`) and its lock key.

use std::fmt;

use crate::kinds::{KindError, KindIndex, ResolvedKind};

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
    /// The namespace part is not a Kubernetes namespace name.
    #[error(
        "targetResource {target:?}: namespace {namespace:?} is not a valid namespace name (lower-case letters, digits and '-', at most 63)"
    )]
    Namespace {
        /// The whole target.
        target: String,
        /// The offending namespace.
        namespace: String,
    },
    /// The name part is not a Kubernetes object name.
    #[error(
        "targetResource {target:?}: name {name:?} is not a valid object name (lower-case letters, digits, '-', '.' and ':', at most 253)"
    )]
    Name {
        /// The whole target.
        target: String,
        /// The offending name.
        name: String,
    },
    /// The kind is not served by the API server.
    #[error("targetResource {target:?}: {source}")]
    Kind {
        /// The whole target.
        target: String,
        /// Why the kind is unknown.
        source: KindError,
    },
    /// A namespaced kind without a namespace, or a cluster-scoped kind with one.
    #[error("targetResource {target:?}: {kind} is {scope}; write it as {expected}")]
    Scope {
        /// The whole target.
        target: String,
        /// The resolved Kind.
        kind: String,
        /// `namespaced` or `cluster-scoped`.
        scope: &'static str,
        /// The shape the target must have.
        expected: &'static str,
    },
}

/// A namespace name: a DNS-1123 label.
fn is_namespace_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An object name: a DNS-1123 subdomain, where `:` is also admitted (RBAC objects such as
/// `system:node` use it). Rejects every character a shell or a log line could misread.
fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':')
                && label.starts_with(|c: char| c.is_ascii_alphanumeric())
                && label.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
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
    /// `ns/deployment/x` are one target. With a kind index installed ([`crate::kinds::install`])
    /// a kind it resolves is keyed by the served Kind ([`TargetResource::canonical_key`]).
    pub fn key(&self) -> TargetKey {
        let resolved = crate::kinds::installed().and_then(|idx| idx.resolve(self.kind).ok());
        let kind = match resolved {
            Some(r) => r.key,
            None => self.kind.to_ascii_lowercase(),
        };
        self.key_with(&kind)
    }

    fn key_with(&self, kind: &str) -> TargetKey {
        TargetKey(match self.namespace {
            Some(ns) => format!("{ns}/{kind}/{}", self.name),
            None => format!("{kind}/{}", self.name),
        })
    }

    /// Checks that the namespace and name are Kubernetes names.
    pub fn check_names(&self, raw: &str) -> Result<(), TargetError> {
        if let Some(ns) = self.namespace
            && !is_namespace_name(ns)
        {
            return Err(TargetError::Namespace {
                target: raw.to_string(),
                namespace: ns.to_string(),
            });
        }
        if !is_object_name(self.name) {
            return Err(TargetError::Name {
                target: raw.to_string(),
                name: self.name.to_string(),
            });
        }
        Ok(())
    }

    /// The canonical key (DESIGN.md §7): the kind resolved through `index` to its served Kind
    /// (lower-cased, with `.group` only when several groups serve that Kind), the namespace and
    /// name checked as Kubernetes names, and the shape checked against the kind's scope.
    pub fn canonical_key(
        &self,
        raw: &str,
        index: &KindIndex,
    ) -> Result<(TargetKey, ResolvedKind), TargetError> {
        self.check_names(raw)?;
        let r = index
            .resolve(self.kind)
            .map_err(|source| TargetError::Kind {
                target: raw.to_string(),
                source,
            })?;
        match (r.namespaced, self.namespace.is_some()) {
            (true, false) => Err(TargetError::Scope {
                target: raw.to_string(),
                kind: r.kind,
                scope: "namespaced",
                expected: "namespace/kind/name",
            }),
            (false, true) => Err(TargetError::Scope {
                target: raw.to_string(),
                kind: r.kind,
                scope: "cluster-scoped",
                expected: "kind/name",
            }),
            _ => Ok((self.key_with(&r.key), r)),
        }
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

    #[test]
    fn canonical_keys_keep_todays_form_for_the_kind_as_written() {
        let idx = crate::kinds::tests::index();
        let key = |raw: &str| {
            TargetResource::parse(raw)
                .unwrap()
                .canonical_key(raw, &idx)
                .map(|(k, _)| k.as_str().to_string())
        };
        // The same key (and so the same execution name) as before for the Kind as written.
        assert_eq!(
            key("production/Deployment/my-app").unwrap(),
            TargetResource::parse("production/Deployment/my-app")
                .unwrap()
                .key_with("deployment")
                .as_str()
        );
        for raw in [
            "production/deployments/my-app",
            "production/deployment.apps/my-app",
            "production/deploy/my-app",
        ] {
            assert_eq!(key(raw).unwrap(), "production/deployment/my-app", "{raw}");
        }
        assert_eq!(key("nodes/worker-1").unwrap(), "node/worker-1");
        assert_eq!(key("rbac/Widget/w").unwrap(), "rbac/widget.example.com/w");
    }

    #[test]
    fn canonical_keys_refuse_what_is_not_a_kubernetes_target() {
        let idx = crate::kinds::tests::index();
        let refusal = |raw: &str| {
            TargetResource::parse(raw)
                .unwrap()
                .canonical_key(raw, &idx)
                .unwrap_err()
                .to_string()
        };
        for (raw, culprit) in [
            ("production/Deployment/a$b", "name \"a$b\""),
            ("production/Deployment/a;rm -rf", "name \"a;rm -rf\""),
            ("production/Deployment/a\"b", "name \"a\\\"b\""),
            ("production/Deployment/a'b", "name \"a'b\""),
            ("production/Deployment/a\nb", "name \"a\\nb\""),
            ("production/Deployment/My-App", "name \"My-App\""),
            ("Prod/Deployment/app", "namespace \"Prod\""),
            ("production/Deploymentz/app", "kind \"Deploymentz\""),
            (
                "production/Node/n1",
                "Node is cluster-scoped; write it as kind/name",
            ),
            ("Deployment/app", "Deployment is namespaced"),
        ] {
            let message = refusal(raw);
            assert!(message.contains(culprit), "{raw:?}: {message}");
        }
        assert!(
            TargetResource::parse("system/ClusterRole/system:node")
                .unwrap()
                .check_names("system/ClusterRole/system:node")
                .is_ok()
        );
    }
}
