//! Who may run what (issue #18, DESIGN.md §7 "Workflow policy"): the images, service accounts
//! and Secrets a WorkflowExecution may ask for, bounded by an admin-managed policy that is part
//! of the operator's configuration (`--workflow-policy-file`, a ConfigMap in deploy/; why not a
//! custom resource: docs/decisions.md).
//!
//! ```yaml
//! default:                       # every workflow
//!   images: ["registry.example.com/remediation/"]   # repository prefixes (ending in /) or repositories
//!   serviceAccounts: ["kubernaut-workflow-runner"]
//!   secrets: []                  # none
//! workflows:                     # by workflowId: a list set here replaces the default's
//!   restart-deployment:
//!     secrets: ["restart-credentials"]
//! ```
//!
//! A list that is absent at both levels does not restrict. Digest pinning stays mandatory on its
//! own (`--allow-unpinned-images`). A request without `executionConfig.serviceAccountName` runs
//! with the operator's configured default, which the admin chose, and is not checked.
//! Decisions only: the controller fails a refused request before execution (`ConfigurationError`,
//! an Event, the `workflow.failed` audit event).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use serde::Deserialize;
use wfe_api::WorkflowExecutionSpec;

/// The lists of one level of the policy; `None`: this level does not say.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rules {
    /// Allowed image repositories: `registry/path/` (a prefix, ending in `/`) or
    /// `registry/path/name` (exactly that repository). Compared without tag and digest.
    pub images: Option<Vec<String>>,
    /// Allowed `executionConfig.serviceAccountName` values.
    pub service_accounts: Option<Vec<String>>,
    /// Allowed `workflowRef.dependencies.secrets` names.
    pub secrets: Option<Vec<String>>,
}

/// The policy: defaults and per-workflow overrides.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowPolicy {
    /// Rules for every workflow.
    #[serde(default)]
    pub default: Rules,
    /// Rules by `workflowRef.workflowId`; each list set here replaces the default's.
    #[serde(default)]
    pub workflows: BTreeMap<String, Rules>,
}

/// Why a policy file is not a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not YAML of the expected shape.
    #[error("workflow policy: {0}")]
    Parse(#[source] serde_yaml::Error),
    /// An image entry that could never match.
    #[error(
        "workflow policy: image entry {0:?} must name a registry and a repository or prefix (e.g. registry.example.com/team/)"
    )]
    Image(String),
}

/// The repository of an image reference: without `oci://`, digest and tag.
pub fn repository(image: &str) -> &str {
    let image = image.strip_prefix("oci://").unwrap_or(image);
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

fn quoted(list: &[String]) -> String {
    if list.is_empty() {
        return "none".to_string();
    }
    list.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl WorkflowPolicy {
    /// Parses and checks a policy (YAML or JSON).
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let p: WorkflowPolicy = serde_yaml::from_str(text).map_err(PolicyError::Parse)?;
        for rules in std::iter::once(&p.default).chain(p.workflows.values()) {
            for image in rules.images.iter().flatten() {
                let repo = image.trim_end_matches('/');
                if !repo.contains('/') || repo.contains('@') || image.contains(char::is_whitespace)
                {
                    return Err(PolicyError::Image(image.clone()));
                }
            }
        }
        Ok(p)
    }

    /// Whether this policy restricts anything.
    pub fn is_unrestricted(&self) -> bool {
        *self == WorkflowPolicy::default()
    }

    /// The list in force for `workflow_id`, and where it comes from.
    fn list<'a>(
        &'a self,
        workflow_id: &str,
        pick: impl Fn(&Rules) -> Option<&Vec<String>>,
    ) -> Option<(&'a [String], String)> {
        let own = self.workflows.get(workflow_id).and_then(&pick);
        match own {
            Some(l) => Some((l, format!("the policy of workflow {workflow_id:?}"))),
            None => pick(&self.default).map(|l| (l.as_slice(), "the default policy".to_string())),
        }
    }

    /// Every way `spec` asks for more than the policy allows; each message names the field, the
    /// refused value, what is allowed and which part of the policy says so.
    pub fn violations(&self, spec: &WorkflowExecutionSpec) -> Vec<String> {
        let id = spec.workflow_ref.workflow_id.as_str();
        let mut out = Vec::new();
        if let Some((allowed, whose)) = self.list(id, |r| r.images.as_ref()) {
            let image = spec.workflow_ref.container_image.as_str();
            let repo = repository(image);
            let ok = allowed.iter().any(|a| {
                if a.ends_with('/') {
                    repo.starts_with(a.as_str())
                } else {
                    repo == a
                }
            });
            if !ok {
                out.push(format!(
                    "spec.workflowRef.containerImage {image:?}: repository {repo:?} is not allowed by {whose} (images: {})",
                    quoted(allowed)
                ));
            }
        }
        if let Some((allowed, whose)) = self.list(id, |r| r.service_accounts.as_ref())
            && let Some(sa) = spec
                .execution_config
                .as_ref()
                .and_then(|c| c.service_account_name.as_deref())
                .filter(|s| !s.is_empty())
            && !allowed.iter().any(|a| a == sa)
        {
            out.push(format!(
                "spec.executionConfig.serviceAccountName {sa:?} is not allowed by {whose} (serviceAccounts: {})",
                quoted(allowed)
            ));
        }
        if let Some((allowed, whose)) = self.list(id, |r| r.secrets.as_ref()) {
            let secrets = spec
                .workflow_ref
                .dependencies
                .iter()
                .flat_map(|d| d.secrets.iter());
            for (i, s) in secrets.enumerate() {
                if !allowed.contains(&s.name) {
                    out.push(format!(
                        "spec.workflowRef.dependencies.secrets[{i}] {:?} is not allowed by {whose} (secrets: {})",
                        s.name,
                        quoted(allowed)
                    ));
                }
            }
        }
        out
    }
}

/// The policy in force, shared by the controller and the file reloader ([`Reload`]): the
/// controller reads the current policy for each request; a reload replaces it at once.
#[derive(Clone, Debug, Default)]
pub struct PolicyHandle(Arc<RwLock<Arc<WorkflowPolicy>>>);

impl From<WorkflowPolicy> for PolicyHandle {
    fn from(p: WorkflowPolicy) -> Self {
        PolicyHandle(Arc::new(RwLock::new(Arc::new(p))))
    }
}

impl PolicyHandle {
    /// The policy in force now.
    pub fn current(&self) -> Arc<WorkflowPolicy> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `p` in force.
    pub fn replace(&self, p: WorkflowPolicy) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }
}

/// What a look at the policy file found (pure: [`Reload::check`]).
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file says what it said at the last look: nothing to do.
    Unchanged,
    /// A new valid policy: put it in force.
    Loaded(WorkflowPolicy),
    /// The file changed but is not a valid policy: the last good policy stays in force.
    Invalid(PolicyError),
}

/// Follows the policy file by its content, not its timestamps or inode: a ConfigMap volume
/// changes by swapping a symlink (`..data`), which leaves the file's own path and often its
/// times unchanged, and a content compare also ignores touches and rewrites with the same text.
#[derive(Debug, Default)]
pub struct Reload {
    last_seen: Option<String>,
}

impl Reload {
    /// A reloader that has already seen `text` (the file as read at start).
    pub fn from_start(text: &str) -> Self {
        Reload {
            last_seen: Some(text.to_string()),
        }
    }

    /// Decides what the file's current `text` means. A bad text is reported once per distinct
    /// content (the caller logs and counts it), not at every look.
    pub fn check(&mut self, text: &str) -> ReloadOutcome {
        if self.last_seen.as_deref() == Some(text) {
            return ReloadOutcome::Unchanged;
        }
        self.last_seen = Some(text.to_string());
        match WorkflowPolicy::from_yaml(text) {
            Ok(p) => ReloadOutcome::Loaded(p),
            Err(e) => ReloadOutcome::Invalid(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn spec(image: &str, sa: Option<&str>, secrets: &[&str]) -> WorkflowExecutionSpec {
        let secrets: Vec<_> = secrets.iter().map(|n| json!({"name": n})).collect();
        let mut w = wfe_api::testing::wfe("w")
            .workflow("restart")
            .image(image)
            .workflow_ref("dependencies", json!({"secrets": secrets}))
            .target("ns/Deployment/app");
        if let Some(sa) = sa {
            w = w.spec("executionConfig", json!({"serviceAccountName": sa}));
        }
        w.build().spec
    }

    fn policy() -> WorkflowPolicy {
        WorkflowPolicy::from_yaml(
            r#"
default:
  images: ["registry.example.com/remediation/", "quay.io/team/exact"]
  serviceAccounts: ["kubernaut-workflow-runner"]
  secrets: []
workflows:
  restart:
    secrets: ["restart-credentials"]
"#,
        )
        .unwrap()
    }

    #[test]
    fn repositories_drop_scheme_tag_and_digest() {
        assert_eq!(repository(&format!("r.io/a/b:v1@{DIGEST}")), "r.io/a/b");
        assert_eq!(repository(&format!("oci://r.io/a/b@{DIGEST}")), "r.io/a/b");
        assert_eq!(repository("r.io:5000/a/b"), "r.io:5000/a/b");
        assert_eq!(repository("r.io:5000/a/b:v2"), "r.io:5000/a/b");
    }

    #[test]
    fn what_the_policy_allows_passes() {
        let p = policy();
        for s in [
            spec(
                &format!("registry.example.com/remediation/restart:v1@{DIGEST}"),
                None,
                &[],
            ),
            spec(
                &format!("quay.io/team/exact@{DIGEST}"),
                Some("kubernaut-workflow-runner"),
                &["restart-credentials"],
            ),
        ] {
            assert_eq!(p.violations(&s), Vec::<String>::new());
        }
        assert!(
            WorkflowPolicy::default()
                .violations(&spec("x/y", Some("any"), &["s"]))
                .is_empty()
        );
        assert!(WorkflowPolicy::default().is_unrestricted());
    }

    #[test]
    fn refusals_name_the_field_the_value_and_the_policy() {
        let p = policy();
        let v = p.violations(&spec(
            &format!("registry.example.com.evil.io/remediation/restart@{DIGEST}"),
            Some("cluster-admin-sa"),
            &["restart-credentials", "db-root-password"],
        ));
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(
            v[0].contains("containerImage")
                && v[0].contains("\"registry.example.com.evil.io/remediation/restart\"")
                && v[0].contains("the default policy"),
            "{}",
            v[0]
        );
        assert!(
            v[1].contains("serviceAccountName \"cluster-admin-sa\""),
            "{}",
            v[1]
        );
        assert!(
            v[2].contains("secrets[1] \"db-root-password\"")
                && v[2].contains("the policy of workflow \"restart\""),
            "{}",
            v[2]
        );
        // A prefix must end at a path boundary; an exact entry is exact.
        assert_eq!(
            p.violations(&spec(
                &format!("quay.io/team/exact-not@{DIGEST}"),
                None,
                &[]
            ))
            .len(),
            1
        );
        // Another workflow gets the default: no Secrets at all.
        let mut other = spec(
            &format!("quay.io/team/exact@{DIGEST}"),
            None,
            &["restart-credentials"],
        );
        other.workflow_ref.workflow_id = "scale".into();
        let v = p.violations(&other);
        assert!(v.len() == 1 && v[0].contains("(secrets: none)"), "{v:?}");
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            "default: {images: [\"registry.example.com\"]}",
            "default: {images: [\"r.io/a@sha256:x\"]}",
            "default: {imagez: []}",
            "workflows: {x: {secrets: \"one\"}}",
        ] {
            assert!(WorkflowPolicy::from_yaml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reloads_follow_the_content_and_keep_the_last_good_policy() {
        let v1 = "default: {images: [\"registry.example.com/team/\"]}";
        let v2 = "default: {images: [\"other.example.com/team/\"]}";
        let mut reload = Reload::from_start(v1);
        assert!(matches!(reload.check(v1), ReloadOutcome::Unchanged));
        let ReloadOutcome::Loaded(p) = reload.check(v2) else {
            panic!("v2 is a valid policy");
        };
        assert_eq!(
            p.default.images.as_deref(),
            Some(&["other.example.com/team/".to_string()][..])
        );
        assert!(matches!(reload.check(v2), ReloadOutcome::Unchanged));
        // A bad file is reported once, then ignored until it changes again.
        let ReloadOutcome::Invalid(why) = reload.check("default: {imagez: []}") else {
            panic!("a typo is not a policy");
        };
        assert!(why.to_string().contains("imagez"), "{why}");
        assert!(
            matches!(why, PolicyError::Parse(_)),
            "the YAML error is kept as the source"
        );
        assert!(matches!(
            reload.check("default: {imagez: []}"),
            ReloadOutcome::Unchanged
        ));
        // Back to a good file: loaded again, even one seen before.
        assert!(matches!(reload.check(v1), ReloadOutcome::Loaded(_)));
    }

    #[test]
    fn a_handle_shares_replacements() {
        let handle = PolicyHandle::default();
        let controller = handle.clone();
        assert!(controller.current().is_unrestricted());
        handle.replace(
            WorkflowPolicy::from_yaml("default: {serviceAccounts: [\"runner\"]}").unwrap(),
        );
        assert!(!controller.current().is_unrestricted());
    }
}
