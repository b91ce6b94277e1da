//! One fixture builder for WorkflowExecutions in tests (feature `testing`): every crate's tests
//! build their objects here instead of writing their own JSON.
//!
//! ```
//! let w = wfe_api::testing::wfe("restart")
//!     .namespace("team-a")
//!     .target("team-a/Deployment/app")
//!     .status(serde_json::json!({"phase": "Running"}))
//!     .build();
//! assert_eq!(w.spec.target_resource, "team-a/Deployment/app");
//! assert_eq!(w.metadata.uid.as_deref(), Some("uid-restart"));
//! ```

use serde_json::{Value, json};

use crate::WorkflowExecution;

/// A digest that pins an image (64 hex digits).
pub const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A WorkflowExecution under construction.
#[derive(Clone, Debug)]
pub struct Fixture {
    value: Value,
}

/// A valid WorkflowExecution `name` in namespace `default`, UID `uid-<name>`, engine `job`,
/// workflow `wf` version `1` with an image pinned by [`DIGEST`], target
/// `default/Deployment/app`, remediation request `rr`, no status.
pub fn wfe(name: &str) -> Fixture {
    Fixture {
        value: json!({
            "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {
                "executionEngine": "job",
                "workflowRef": {"workflowId": "wf", "version": "1",
                                "containerImage": format!("registry.example.com/wf@{DIGEST}")},
                "targetResource": "default/Deployment/app",
                "remediationRequestRef": {"name": "rr"}
            }
        }),
    }
}

impl Fixture {
    fn set(mut self, path: &[&str], value: Value) -> Self {
        let (last, parents) = path.split_last().expect("a path");
        let mut at = &mut self.value;
        for p in parents {
            at = &mut at[*p];
        }
        at[*last] = value;
        self
    }

    /// The namespace.
    pub fn namespace(self, namespace: &str) -> Self {
        self.set(&["metadata", "namespace"], json!(namespace))
    }

    /// The UID (`None`: no UID).
    pub fn uid(self, uid: Option<&str>) -> Self {
        self.set(&["metadata", "uid"], json!(uid))
    }

    /// The resourceVersion.
    pub fn resource_version(self, rv: &str) -> Self {
        self.set(&["metadata", "resourceVersion"], json!(rv))
    }

    /// The creation timestamp (RFC 3339).
    pub fn created(self, at: &str) -> Self {
        self.set(&["metadata", "creationTimestamp"], json!(at))
    }

    /// Any other metadata field, as JSON (`generation`, `finalizers`, `annotations`, …).
    pub fn meta(self, field: &str, value: Value) -> Self {
        self.set(&["metadata", field], value)
    }

    /// `spec.targetResource`.
    pub fn target(self, target: &str) -> Self {
        self.set(&["spec", "targetResource"], json!(target))
    }

    /// `spec.executionEngine`.
    pub fn engine(self, engine: &str) -> Self {
        self.set(&["spec", "executionEngine"], json!(engine))
    }

    /// `spec.workflowRef.workflowId`.
    pub fn workflow(self, id: &str) -> Self {
        self.set(&["spec", "workflowRef", "workflowId"], json!(id))
    }

    /// `spec.workflowRef.containerImage`.
    pub fn image(self, image: &str) -> Self {
        self.set(&["spec", "workflowRef", "containerImage"], json!(image))
    }

    /// Any other `spec.workflowRef` field, as JSON (`version`, `dependencies`, …).
    pub fn workflow_ref(self, field: &str, value: Value) -> Self {
        self.set(&["spec", "workflowRef", field], value)
    }

    /// One parameter.
    pub fn param(self, key: &str, value: &str) -> Self {
        self.set(&["spec", "parameters", key], json!(value))
    }

    /// Any other spec field, as JSON (`executionConfig`, `workflowRef.dependencies`, …).
    pub fn spec(self, field: &str, value: Value) -> Self {
        self.set(&["spec", field], value)
    }

    /// Without the spec field `field` (e.g. `executionEngine`, to get the default engine).
    pub fn unset_spec(mut self, field: &str) -> Self {
        if let Some(spec) = self.value["spec"].as_object_mut() {
            spec.remove(field);
        }
        self
    }

    /// The status, as JSON.
    pub fn status(self, status: Value) -> Self {
        self.set(&["status"], status)
    }

    /// The WorkflowExecution; panics if the fields set do not make one.
    pub fn build(self) -> WorkflowExecution {
        serde_json::from_value(self.value)
            .unwrap_or_else(|e| panic!("the fixture is not a WorkflowExecution: {e}"))
    }
}
