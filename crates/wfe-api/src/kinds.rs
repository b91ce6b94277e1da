//! Canonical target kinds (DESIGN.md §7): what the API server serves, as a pure index that turns
//! the kind a request wrote (`Deployment`, `deployments`, `deploy`, `deployment.apps`) into the
//! served Kind and its group.
//!
//! The index is built from API discovery by the operator (this crate has no client); it is pure
//! and tested with plain values. [`install`] makes one index the process's: [`crate::TargetKey`]
//! then keys targets by their resolved Kind, so every writing of one kind is one lock, one
//! cooldown and one execution name.

use std::{
    collections::BTreeSet,
    sync::{Arc, RwLock},
};

/// One resource type the API server serves (the preferred version of its group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedKind {
    /// API group, `""` for the core group.
    pub group: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource name, e.g. `deployments`.
    pub plural: String,
    /// Singular resource name, e.g. `deployment` (may be empty in discovery).
    pub singular: String,
    /// Short names, e.g. `deploy`.
    pub short_names: Vec<String>,
    /// Whether objects of this kind live in a namespace.
    pub namespaced: bool,
}

impl ServedKind {
    fn is_named(&self, lower: &str) -> bool {
        self.kind.eq_ignore_ascii_case(lower)
            || self.plural == lower
            || (!self.singular.is_empty() && self.singular == lower)
            || self.short_names.iter().any(|s| s == lower)
    }
}

/// A kind resolved to what the API server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedKind {
    /// API group (`""`: core).
    pub group: String,
    /// The served Kind.
    pub kind: String,
    /// Whether objects of this kind live in a namespace.
    pub namespaced: bool,
    /// The kind as it appears in a target key: the Kind lower-cased, with `.group` added only
    /// when another group serves a Kind of the same name (DESIGN.md §7).
    pub key: String,
}

/// Why a kind cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// Nothing served has this name.
    #[error(
        "kind {0:?} is not served by the API server (no Kind, resource, singular or short name of any API group matches)"
    )]
    Unknown(String),
}

/// The kinds the API server serves, in discovery order (the order of preference).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindIndex {
    served: Vec<ServedKind>,
}

impl KindIndex {
    /// An index of `served`, in the API server's order of preference (core group first).
    pub fn new(served: Vec<ServedKind>) -> Self {
        KindIndex { served }
    }

    /// The number of served kinds.
    pub fn len(&self) -> usize {
        self.served.len()
    }

    /// Whether nothing is served (discovery has not run).
    pub fn is_empty(&self) -> bool {
        self.served.is_empty()
    }

    /// Resolves the kind part of a target: a Kind, plural, singular or short name, case
    /// insensitive, optionally qualified by its group (`deployment.apps`, `deployments.apps`).
    /// An unqualified name served by several groups resolves to the first in discovery order, as
    /// kubectl does.
    pub fn resolve(&self, written: &str) -> Result<ResolvedKind, KindError> {
        let lower = written.trim().to_ascii_lowercase();
        let unqualified = self.served.iter().find(|s| s.is_named(&lower));
        let found = unqualified.or_else(|| {
            let (name, group) = lower.split_once('.')?;
            self.served
                .iter()
                .find(|s| s.group == group && s.is_named(name))
        });
        let s = found.ok_or_else(|| KindError::Unknown(written.to_string()))?;
        let groups: BTreeSet<&str> = self
            .served
            .iter()
            .filter(|o| o.kind == s.kind)
            .map(|o| o.group.as_str())
            .collect();
        let kind = s.kind.to_ascii_lowercase();
        let key = if groups.len() > 1 && !s.group.is_empty() {
            format!("{kind}.{}", s.group)
        } else {
            kind
        };
        Ok(ResolvedKind {
            group: s.group.clone(),
            kind: s.kind.clone(),
            namespaced: s.namespaced,
            key,
        })
    }
}

static INSTALLED: RwLock<Option<Arc<KindIndex>>> = RwLock::new(None);

/// Makes `index` the process's kind index, used by [`crate::TargetKey::of`] from now on. The
/// operator installs it from API discovery before it starts watching, so every key it computes
/// uses the same index.
pub fn install(index: KindIndex) {
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(index));
}

/// The process's kind index, if one was installed.
pub fn installed() -> Option<Arc<KindIndex>> {
    INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn served(group: &str, kind: &str, plural: &str, short: &[&str]) -> ServedKind {
        ServedKind {
            group: group.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            namespaced: kind != "Node",
        }
    }

    pub(crate) fn index() -> KindIndex {
        KindIndex::new(vec![
            served("", "Pod", "pods", &["po"]),
            served("", "Node", "nodes", &["no"]),
            served("", "Event", "events", &["ev"]),
            served("apps", "Deployment", "deployments", &["deploy"]),
            served("events.k8s.io", "Event", "events", &["ev"]),
            served("example.com", "Widget", "widgets", &[]),
            served("other.example.com", "Widget", "widgets", &[]),
        ])
    }

    #[test]
    fn every_writing_of_a_kind_resolves_to_one_key() {
        let idx = index();
        for written in [
            "Deployment",
            "deployment",
            "DEPLOYMENT",
            "deployments",
            "deploy",
            "deployment.apps",
            "Deployment.apps",
            "deployments.apps",
        ] {
            let r = idx.resolve(written).unwrap();
            assert_eq!(
                (r.group.as_str(), r.kind.as_str(), r.key.as_str()),
                ("apps", "Deployment", "deployment"),
                "{written}"
            );
        }
        assert!(!idx.resolve("Node").unwrap().namespaced);
    }

    #[test]
    fn a_kind_served_by_several_groups_keeps_its_group() {
        let idx = index();
        assert_eq!(idx.resolve("Widget").unwrap().key, "widget.example.com");
        assert_eq!(
            idx.resolve("widgets.other.example.com").unwrap().key,
            "widget.other.example.com"
        );
        // The core group needs no suffix: `event` stays today's key.
        assert_eq!(idx.resolve("events").unwrap().key, "event");
        assert_eq!(
            idx.resolve("event.events.k8s.io").unwrap().key,
            "event.events.k8s.io"
        );
    }

    #[test]
    fn unknown_kinds_are_named() {
        let idx = index();
        for bad in ["Deploymentz", "deployment.extensions", "", "apps"] {
            let e = idx.resolve(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
