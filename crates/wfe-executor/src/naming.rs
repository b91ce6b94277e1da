//! Deterministic names, labels and annotations of execution resources.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use wfe_api::{TargetKey, WorkflowExecution};

/// Label: name of the owning WorkflowExecution (sanitized to a valid label value).
pub const LABEL_WORKFLOW_EXECUTION: &str = "kubernaut.ai/workflow-execution";
/// Label: namespace of the owning WorkflowExecution.
pub const LABEL_SOURCE_NAMESPACE: &str = "kubernaut.ai/source-namespace";
/// Label: catalog id of the workflow (sanitized).
pub const LABEL_WORKFLOW_ID: &str = "kubernaut.ai/workflow-id";
/// Label: `job` or `tekton`.
pub const LABEL_EXECUTION_ENGINE: &str = "kubernaut.ai/execution-engine";
/// Label: 16 hex digits of the target key's sha256 (the same as in the resource name).
pub const LABEL_TARGET_HASH: &str = "kubernaut.ai/target-hash";
/// Annotation: the raw `spec.targetResource`.
pub const ANNOTATION_TARGET_RESOURCE: &str = "kubernaut.ai/target-resource";
/// Annotation: the exact name of the owning WorkflowExecution (labels may be truncated).
pub const ANNOTATION_WORKFLOW_EXECUTION: &str = "kubernaut.ai/workflow-execution";
/// Annotation: the UID of the owning WorkflowExecution, the authority for ownership.
pub const ANNOTATION_WORKFLOW_EXECUTION_UID: &str = "kubernaut.ai/workflow-execution-uid";

/// The first 16 hex digits of sha256 of the target key.
pub fn target_hash(key: &TargetKey) -> String {
    let digest = Sha256::digest(key.as_str().as_bytes());
    hex::encode(&digest[..8])
}

/// The name of the execution resource for a target: `wfe-` + [`target_hash`]. Always 20
/// characters, a valid DNS-1123 label, identical for every engine.
pub fn execution_name(key: &TargetKey) -> String {
    format!("wfe-{}", target_hash(key))
}

/// The execution resource name of a WorkflowExecution.
pub fn execution_name_for(wfe: &WorkflowExecution) -> String {
    execution_name(&wfe.target_key())
}

/// Turns any string into a valid label value (`(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, at most
/// 63 characters). Invalid characters become `_`; a value that had to be truncated or changed keeps
/// a short hash of the original so that distinct inputs stay distinct.
pub fn sanitize_label_value(value: &str) -> String {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let replaced: String = value
        .chars()
        .map(|c| if valid_char(c) { c } else { '_' })
        .collect();
    let trim = |s: &str| {
        s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string()
    };
    let clean = trim(&replaced);
    if clean == value && value.len() <= 63 {
        return clean;
    }
    let hash = hex::encode(&Sha256::digest(value.as_bytes())[..4]);
    let prefix: String = clean.chars().take(63 - 9).collect();
    let prefix = trim(&prefix);
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// True when `value` is a valid label value.
pub fn is_valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

/// Labels for every execution resource of `wfe`.
pub fn execution_labels(wfe: &WorkflowExecution) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            LABEL_WORKFLOW_EXECUTION.to_string(),
            sanitize_label_value(&wfe.name_any()),
        ),
        (
            LABEL_SOURCE_NAMESPACE.to_string(),
            sanitize_label_value(&wfe.namespace().unwrap_or_default()),
        ),
        (
            LABEL_WORKFLOW_ID.to_string(),
            sanitize_label_value(&wfe.spec.workflow_ref.workflow_id),
        ),
        (
            LABEL_EXECUTION_ENGINE.to_string(),
            sanitize_label_value(wfe.spec.execution_engine.as_str()),
        ),
        (
            LABEL_TARGET_HASH.to_string(),
            target_hash(&wfe.target_key()),
        ),
    ])
}

/// Annotations for every execution resource of `wfe`.
pub fn execution_annotations(wfe: &WorkflowExecution) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            ANNOTATION_TARGET_RESOURCE.to_string(),
            wfe.spec.target_resource.clone(),
        ),
        (ANNOTATION_WORKFLOW_EXECUTION.to_string(), wfe.name_any()),
        (
            ANNOTATION_WORKFLOW_EXECUTION_UID.to_string(),
            wfe.uid().unwrap_or_default(),
        ),
    ])
}

/// A controller ownerReference to `wfe` when it lives in the execution namespace (ownerReferences
/// cannot cross namespaces: the garbage collector would treat the owner as absent and delete the
/// resource; elsewhere the operator's finalizer cleans up). `None` without a UID as well.
pub fn owner_reference(
    wfe: &WorkflowExecution,
    execution_namespace: &str,
) -> Option<OwnerReference> {
    if wfe.namespace().as_deref() != Some(execution_namespace) {
        return None;
    }
    Some(OwnerReference {
        api_version: WorkflowExecution::api_version(&()).into_owned(),
        kind: WorkflowExecution::kind(&()).into_owned(),
        name: wfe.name_any(),
        uid: wfe.uid()?,
        controller: Some(true),
        block_owner_deletion: Some(false),
    })
}

/// The WorkflowExecution an execution resource belongs to, read from its labels and annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// WorkflowExecution name.
    pub name: String,
    /// WorkflowExecution namespace.
    pub namespace: String,
    /// WorkflowExecution UID, when recorded.
    pub uid: Option<String>,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Reads the owner of an execution resource; `None` when it carries no owner label.
pub fn owner_of(meta: &ObjectMeta) -> Option<Owner> {
    let labels = meta.labels.as_ref();
    let annotations = meta.annotations.as_ref();
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let annotation = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let name =
        annotation(ANNOTATION_WORKFLOW_EXECUTION).or_else(|| label(LABEL_WORKFLOW_EXECUTION))?;
    let namespace = label(LABEL_SOURCE_NAMESPACE)?;
    Some(Owner {
        name,
        namespace,
        uid: annotation(ANNOTATION_WORKFLOW_EXECUTION_UID),
    })
}

/// True when the execution resource was created for exactly this WorkflowExecution (same UID when
/// both are known, else same namespace and name).
pub fn is_owned_by(meta: &ObjectMeta, wfe: &WorkflowExecution) -> bool {
    match owner_of(meta) {
        None => false,
        Some(owner) => match (owner.uid.as_deref(), wfe.uid()) {
            (Some(a), Some(b)) => a == b,
            _ => owner.name == wfe.name_any() && Some(owner.namespace) == wfe.namespace(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_valid() {
        let cases = [
            "default/deployment/my-app",
            "default/Deployment/my-app",
            "payment/deployment/payment-api",
            "node/worker-node-1",
            "Node/worker-node-1",
            "ns/StatefulSet/db-0",
            &format!("ns/deployment/{}", "x".repeat(300)),
            "ns/deployment/ünïcödé",
            "a/b",
        ];
        for target in cases {
            let key = TargetKey::of(target);
            let name = execution_name(&key);
            assert_eq!(
                name,
                execution_name(&TargetKey::of(target)),
                "deterministic"
            );
            assert_eq!(name.len(), 20, "{target}");
            assert!(
                name.starts_with("wfe-")
                    && name[4..]
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(wfe_api::is_dns_subdomain(&name) && name.len() <= 63);
        }
        // Kind case does not matter; anything else does.
        assert_eq!(
            execution_name(&TargetKey::of("ns/Deployment/x")),
            execution_name(&TargetKey::of("ns/deployment/x"))
        );
        assert_ne!(
            execution_name(&TargetKey::of("ns/deployment/x")),
            execution_name(&TargetKey::of("ns/deployment/y"))
        );
        // The key of "default/deployment/my-app" is itself, so the name matches the reference scheme.
        assert_eq!(
            execution_name(&TargetKey::of("default/deployment/my-app")),
            "wfe-c00449355dfb987a"
        );
        assert_eq!(
            execution_name(&TargetKey::of("node/worker-node-1")),
            "wfe-ac45b7d6911e97a5"
        );
    }

    #[test]
    fn label_values_are_always_valid() {
        let long = "a".repeat(100);
        let cases = [
            "",
            "ok",
            "my-app",
            "ns/deployment/x",
            "-lead",
            "trail-",
            "a:b",
            "ünï",
            "___",
            &long,
            "a.b_c-d",
        ];
        for v in cases {
            let s = sanitize_label_value(v);
            assert!(is_valid_label_value(&s), "{v:?} -> {s:?}");
        }
        assert_eq!(sanitize_label_value("my-app"), "my-app");
        assert_eq!(sanitize_label_value(""), "");
        assert_ne!(
            sanitize_label_value(&"a".repeat(70)),
            sanitize_label_value(&"a".repeat(71))
        );
        assert_ne!(sanitize_label_value("a/b"), sanitize_label_value("a:b"));
        assert!(sanitize_label_value(&long).len() <= 63);
    }
}
