//! The controller under test: we-operator, or the reference Go controller built from its source
//! (`cargo xtask bench --reference SRC_DIR`, issue #20). Everything that differs between the two is
//! here: the WorkflowExecution they accept (same CRD name, different schemas), how each says
//! "finished", how each counts its API requests, and how each is started.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wfe_api::WorkflowExecution;

use crate::{
    prom::{self, Counts},
    setup::{BENCH_NS, EXEC_NS},
};

/// The reference's finalizer (it adds it on the first reconcile).
pub const REFERENCE_FINALIZER: &str = "workflowexecution.kubernaut.ai/workflowexecution-cleanup";
/// controller-runtime's client-go request counter (by HTTP method and status code).
pub const REST_CLIENT_REQUESTS: &str = "rest_client_requests_total";
/// controller-runtime's reconcile error counter.
pub const CONTROLLER_RUNTIME_ERRORS: &str = "controller_runtime_reconcile_errors_total";

/// The reference controller built from its source tree.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The built `cmd/workflowexecution` binary.
    pub binary: PathBuf,
    /// Its CRD (`config/crd/bases/kubernaut.ai_workflowexecutions.yaml` of the source tree).
    pub crd: PathBuf,
    /// The commit it was built from.
    pub commit: String,
}

/// Which controller runs.
#[derive(Debug, Clone)]
pub enum Subject {
    /// we-operator (the release build).
    Ours,
    /// The reference Go controller.
    Reference(Reference),
}

/// WorkflowExecutions of the bench namespace, untyped: the two controllers' CRDs have the same
/// name and different schemas.
pub fn executions(client: &kube::Client) -> kube::Api<kube::api::DynamicObject> {
    let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "kubernaut.ai",
        "v1alpha1",
        "WorkflowExecution",
    ));
    kube::Api::namespaced_with(client.clone(), BENCH_NS, &ar)
}

/// The HTTP method of one of our client's verbs (the reference's counter only knows methods).
pub fn method_of(verb: &str) -> &'static str {
    match verb {
        "create" => "POST",
        "get" | "list" | "watch" => "GET",
        "patch" => "PATCH",
        "replace" | "update" => "PUT",
        "delete" | "deletecollection" => "DELETE",
        _ => "OTHER",
    }
}

impl Subject {
    /// Short name for files and tables.
    pub fn label(&self) -> &'static str {
        match self {
            Subject::Ours => "we-operator",
            Subject::Reference(_) => "reference",
        }
    }

    /// The WorkflowExecution of execution `name`, as this controller's CRD wants it: a Job-engine
    /// execution on its own target, image pinned by digest, three parameters.
    pub fn execution(&self, name: &str) -> Value {
        let ours = crate::workload::new_wfe(name);
        match self {
            Subject::Ours => serde_json::to_value(&ours).unwrap_or_default(),
            Subject::Reference(_) => reference_execution(&ours),
        }
    }

    /// The phase a successful execution ends in.
    pub fn succeeded_phase(&self) -> &'static str {
        match self {
            Subject::Ours => "Succeeded",
            Subject::Reference(_) => "Completed",
        }
    }

    /// Whether the controller is done with an execution seen with this status: ours records
    /// `lockReleasedTime`; the reference records nothing (it deletes the Job and emits an Event),
    /// so for it the driver's Job watch decides (see [`crate::tracker`]).
    pub fn released_in_status(&self, status: &Value) -> bool {
        match self {
            Subject::Ours => status.get("lockReleasedTime").is_some_and(|t| !t.is_null()),
            Subject::Reference(_) => false,
        }
    }

    /// Whether the deletion of the Job marks the lock release.
    pub fn release_is_job_deletion(&self) -> bool {
        matches!(self, Subject::Reference(_))
    }

    /// API requests by `verb resource` (ours) or by HTTP method (the reference's client-go
    /// counter knows no resource).
    pub fn api_counts(&self, metrics: &str) -> Counts {
        match self {
            Subject::Ours => crate::operator::api_counts(metrics),
            Subject::Reference(_) => prom::sum_by(metrics, REST_CLIENT_REQUESTS, |l| {
                Some(prom::label(l, "method").to_string())
            }),
        }
    }

    /// Reconcile errors by category (ours) or in total (the reference).
    pub fn reconcile_errors(&self, metrics: &str) -> Counts {
        match self {
            Subject::Ours => crate::operator::reconcile_errors(metrics),
            Subject::Reference(_) => {
                prom::sum_by(metrics, CONTROLLER_RUNTIME_ERRORS, |_| Some("all".into()))
            }
        }
    }

    /// A finished execution as the controller leaves it (for the 10 000-object phase): the object
    /// to create and the status to write through the status subresource.
    pub fn finished(&self, name: &str, now: k8s_openapi::jiff::Timestamp) -> (Value, Value) {
        let ours = crate::workload::new_wfe(name);
        match self {
            Subject::Ours => {
                let mut obj = serde_json::to_value(&ours).unwrap_or_default();
                obj["metadata"]["finalizers"] = json!([wfe_api::FINALIZER]);
                let status = crate::workload::finished_status(&ours, now);
                (obj, serde_json::to_value(status).unwrap_or_default())
            }
            Subject::Reference(_) => {
                let mut obj = reference_execution(&ours);
                obj["metadata"]["finalizers"] = json!([REFERENCE_FINALIZER]);
                (obj, reference_finished_status(&ours, now))
            }
        }
    }
}

/// The same execution in the reference's schema (`workflowRef` is its catalog snapshot;
/// `declaredParameterNames` is a set written as a map and must be present: the reference writes
/// it back on its first update, and its CRD refuses any change of the spec).
fn reference_execution(ours: &WorkflowExecution) -> Value {
    let s = &ours.spec;
    let declared: serde_json::Map<String, Value> = s
        .workflow_ref
        .declared_parameter_names
        .iter()
        .flatten()
        .map(|n| (n.clone(), Value::Bool(true)))
        .collect();
    json!({
        "apiVersion": "kubernaut.ai/v1alpha1",
        "kind": "WorkflowExecution",
        "metadata": {"name": ours.metadata.name, "namespace": BENCH_NS},
        "spec": {
            "remediationRequestRef": s.remediation_request_ref,
            "workflowRef": {
                "workflowId": s.workflow_ref.workflow_id,
                "workflowName": s.workflow_ref.name,
                "actionType": "IncreaseMemoryLimits",
                "version": s.workflow_ref.version,
                "executionBundle": s.workflow_ref.container_image,
                "executionBundleDigest": s.workflow_ref.container_digest,
                "executionEngine": "job",
                "serviceAccountName": "kubernaut-workflow-runner",
                "declaredParameterNames": declared,
            },
            "targetResource": s.target_resource,
            "parameters": s.parameters,
            "confidence": s.confidence,
            "rationale": s.rationale,
        }
    })
}

/// A finished execution's status as the reference leaves it: Completed an hour ago, its Job gone.
fn reference_finished_status(ours: &WorkflowExecution, now: k8s_openapi::jiff::Timestamp) -> Value {
    use k8s_openapi::jiff::SignedDuration;
    let start = now - SignedDuration::from_secs(3600);
    let done = start + SignedDuration::from_secs(42);
    let job = wfe_executor::execution_name_for(ours);
    json!({
        "observedGeneration": 1,
        "phase": "Completed",
        "startTime": start.to_string(),
        "completionTime": done.to_string(),
        "duration": "42s",
        "executionRef": {"name": job},
        "executionStatus": {"status": "True", "reason": "Complete", "message": "Job completed", "completedTasks": 1, "totalTasks": 1},
        "workflowName": ours.spec.workflow_ref.name,
        "conditions": [{
            "type": "ExecutionComplete", "status": "True", "reason": "ExecutionSucceeded",
            "message": "Job completed successfully", "observedGeneration": 1,
            "lastTransitionTime": done.to_string(),
        }],
    })
}

/// The reference's configuration file (YAML overlaid on its defaults).
pub fn reference_config(audit_url: &str, metrics: u16, health: u16) -> String {
    format!(
        "execution:\n  namespace: {EXEC_NS}\n  cooldownPeriod: 1s\n\
         controller:\n  metricsAddr: 127.0.0.1:{metrics}\n  healthProbeAddr: 127.0.0.1:{health}\n  leaderElection: false\n  leaderElectionId: workflowexecution.kubernaut.ai\n\
         datastorage:\n  url: {audit_url}\n  healthUrl: {audit_url}/readyz\n  timeout: 10s\n  buffer:\n    bufferSize: 10000\n    batchSize: 100\n    flushInterval: 1s\n    maxRetries: 3\n\
         logging:\n  level: WARN\n  format: json\n"
    )
}

/// The in-cluster path the reference's audit client reads its bearer token from.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The command that starts the reference. Out of a cluster its audit client finds no token at
/// the in-cluster path and fails every audit write, so (as root, with `unshare`) it runs in a
/// private mount namespace where a tmpfs over /run holds the token; otherwise it runs as is and
/// its audit writes fail (reported).
pub fn reference_command(
    binary: &Path,
    config: &Path,
    token: &Path,
) -> (tokio::process::Command, bool) {
    // Needs the right to create a mount namespace (root, in practice).
    let private_mounts = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if private_mounts {
        let dir = Path::new(IN_CLUSTER_TOKEN)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let script = format!(
            "mount -t tmpfs -o size=1m tmpfs /run && mkdir -p {dir} && cp \"$1\" {IN_CLUSTER_TOKEN} && exec \"$2\" --config \"$3\""
        );
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(token)
            .arg(binary)
            .arg(config);
        (cmd, true)
    } else {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg("--config").arg(config);
        (cmd, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_execution_has_what_its_crd_requires() {
        let r = Subject::Reference(Reference {
            binary: "x".into(),
            crd: "y".into(),
            commit: "z".into(),
        });
        let v = r.execution("burst-1-00000");
        let wr = &v["spec"]["workflowRef"];
        for k in [
            "actionType",
            "executionBundle",
            "version",
            "workflowId",
            "workflowName",
        ] {
            assert!(wr[k].is_string(), "{k} missing: {wr}");
        }
        assert!(wr["declaredParameterNames"].is_object());
        assert_eq!(wr["executionEngine"], "job");
        assert!(wr["executionBundle"].as_str().unwrap().contains("@sha256:"));
        assert_eq!(
            v["spec"]["targetResource"],
            "bench/Deployment/burst-1-00000"
        );
        let (obj, status) = r.finished("old-00001", k8s_openapi::jiff::Timestamp::now());
        assert_eq!(obj["metadata"]["finalizers"][0], REFERENCE_FINALIZER);
        assert_eq!(status["phase"], "Completed");
    }

    #[test]
    fn ours_round_trips_and_releases_by_status() {
        let v = Subject::Ours.execution("a-00001");
        let w: WorkflowExecution = serde_json::from_value(v).unwrap();
        assert_eq!(w.spec.target_resource, "bench/Deployment/a-00001");
        assert!(
            Subject::Ours.released_in_status(&json!({"lockReleasedTime": "2026-01-01T00:00:00Z"}))
        );
        assert!(!Subject::Ours.released_in_status(&json!({"phase": "Succeeded"})));
    }

    #[test]
    fn counts_the_reference_by_method() {
        let text = "rest_client_requests_total{code=\"200\",host=\"127.0.0.1:6443\",method=\"GET\"} 7\n\
            rest_client_requests_total{code=\"404\",host=\"127.0.0.1:6443\",method=\"GET\"} 1\n\
            rest_client_requests_total{code=\"201\",host=\"127.0.0.1:6443\",method=\"POST\"} 3\n";
        let r = Subject::Reference(Reference {
            binary: "x".into(),
            crd: "y".into(),
            commit: "z".into(),
        });
        let c = r.api_counts(text);
        assert_eq!(c["GET"], 8.0);
        assert_eq!(c["POST"], 3.0);
        assert_eq!(method_of("watch"), "GET");
        assert_eq!(method_of("replace"), "PUT");
    }
}
