//! Audit events (DESIGN.md §5): what is due for a WorkflowExecution, built deterministically from
//! its status (so a retry sends the same event with the same `event_id`), and the sinks that
//! deliver them. The WorkflowExecution status is the outbox: an event type is recorded in
//! `status.auditDelivered` only after the sink acknowledged it.

use std::{fmt, path::PathBuf, time::Duration};

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use wfe_api::{FailureReason, Phase, WorkflowExecution, WorkflowExecutionStatus};

/// Event types.
pub mod types {
    /// The workflow was selected and its execution is about to be created.
    pub const SELECTION_COMPLETED: &str = "workflowexecution.selection.completed";
    /// The execution resource was created.
    pub const EXECUTION_STARTED: &str = "workflowexecution.execution.started";
    /// The workflow succeeded.
    pub const WORKFLOW_COMPLETED: &str = "workflowexecution.workflow.completed";
    /// The request failed (before or during execution).
    pub const WORKFLOW_FAILED: &str = "workflowexecution.workflow.failed";
    /// A person cleared the block on the target.
    pub const BLOCK_CLEARED: &str = "workflowexecution.block.cleared";
}

/// One audit event (the reference envelope plus `event_id` and `execution_engine`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Envelope version.
    pub version: String,
    /// Stable id: the same for every delivery attempt of this event.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// When it happened (from the status, so it is stable across retries).
    pub event_timestamp: String,
    /// Always `workflowexecution`.
    pub event_category: String,
    /// What was done.
    pub event_action: String,
    /// `success` or `failure`.
    pub event_outcome: String,
    /// `service` or `user`.
    pub actor_type: String,
    /// Who did it.
    pub actor_id: String,
    /// Always `WorkflowExecution`.
    pub resource_type: String,
    /// The WorkflowExecution name.
    pub resource_id: String,
    /// The RemediationRequest name.
    pub correlation_id: String,
    /// The WorkflowExecution namespace.
    pub namespace: String,
    /// Type-specific data; always carries `execution_engine`.
    pub event_data: Value,
}

/// A stable event id derived from the WorkflowExecution UID and the event type (UUID-shaped).
pub fn event_id(uid: &str, event_type: &str) -> String {
    let h = hex::encode(Sha256::digest(format!("{uid}/{event_type}").as_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The audit event types due for a WorkflowExecution in its current state, in lifecycle order.
pub fn due_types(wfe: &WorkflowExecution) -> Vec<&'static str> {
    wfe.status.as_ref().map(due_types_of).unwrap_or_default()
}

/// True when every audit event a status makes due is acknowledged in it.
pub fn all_delivered(status: &WorkflowExecutionStatus) -> bool {
    due_types_of(status)
        .iter()
        .all(|t| status.audit_delivered.iter().any(|d| d == t))
}

/// The audit event types a status makes due, in lifecycle order.
pub fn due_types_of(status: &WorkflowExecutionStatus) -> Vec<&'static str> {
    let mut due = Vec::new();
    if status.execution_ref.is_some() && status.start_time.is_some() {
        due.push(types::SELECTION_COMPLETED);
        due.push(types::EXECUTION_STARTED);
    }
    match status.phase {
        Some(Phase::Succeeded) => due.push(types::WORKFLOW_COMPLETED),
        Some(Phase::Failed) => due.push(types::WORKFLOW_FAILED),
        _ => {}
    }
    if status.block_clearance.is_some() {
        due.push(types::BLOCK_CLEARED);
    }
    due
}

/// The events due and not yet acknowledged.
pub fn pending(wfe: &WorkflowExecution) -> Vec<AuditEvent> {
    let delivered = wfe
        .status
        .as_ref()
        .map(|s| s.audit_delivered.as_slice())
        .unwrap_or_default();
    due_types(wfe)
        .into_iter()
        .filter(|t| !delivered.iter().any(|d| d == t))
        .map(|t| build(wfe, t))
        .collect()
}

fn ts(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<String> {
    t.map(|t| t.0.to_string())
}

/// `error_details` of a failure (code and whether a retry may help).
fn error_details(
    reason: FailureReason,
    was_execution_failure: bool,
    message: &str,
    task: Option<&str>,
) -> Value {
    let (code, retry) = match reason {
        FailureReason::ConfigurationError | FailureReason::Forbidden => {
            ("ERR_WORKFLOW_NOT_FOUND", false)
        }
        FailureReason::ImagePullBackOff => ("ERR_IMAGE_PULL", true),
        FailureReason::TaskFailed => ("ERR_PIPELINE_FAILED", !was_execution_failure),
        FailureReason::PreviousExecutionFailed | FailureReason::ExhaustedRetries => {
            ("ERR_TARGET_BLOCKED", false)
        }
        _ => ("ERR_PIPELINE_FAILED", true),
    };
    let where_ = task.map(|t| format!(" at task '{t}'")).unwrap_or_default();
    json!({
        "component": "workflowexecution",
        "code": code,
        "retry_possible": retry,
        "message": format!("Workflow failed{where_}: {message}"),
    })
}

/// Builds one event of the given type from the WorkflowExecution's current state.
pub fn build(wfe: &WorkflowExecution, event_type: &str) -> AuditEvent {
    let spec = &wfe.spec;
    let status = wfe.status.clone().unwrap_or_default();
    let mut data = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            data.insert(k.to_string(), v);
        }
    };
    put("execution_engine", json!(spec.execution_engine.as_str()));
    put("workflow_id", json!(spec.workflow_ref.workflow_id));
    put("workflow_version", json!(spec.workflow_ref.version));
    put("workflow_name", json!(spec.workflow_ref.name));
    put("container_image", json!(spec.workflow_ref.container_image));
    put(
        "container_digest",
        json!(
            spec.workflow_ref
                .container_digest
                .clone()
                .or_else(|| image_digest(&spec.workflow_ref.container_image))
        ),
    );
    put("target_resource", json!(spec.target_resource));
    put("event_type", json!(event_type));
    put(
        "execution_name",
        json!(status.execution_ref.as_ref().map(|r| r.name.clone())),
    );
    put(
        "execution_kind",
        json!(status.execution_ref.as_ref().map(|r| r.kind.clone())),
    );

    let (action, outcome, when, phase) = match event_type {
        types::SELECTION_COMPLETED => {
            ("selected", "success", status.start_time.as_ref(), "Pending")
        }
        types::EXECUTION_STARTED => ("started", "success", status.start_time.as_ref(), "Running"),
        types::WORKFLOW_COMPLETED => (
            "completed",
            "success",
            status.completion_time.as_ref(),
            "Succeeded",
        ),
        types::WORKFLOW_FAILED => (
            "failed",
            "failure",
            status.completion_time.as_ref(),
            "Failed",
        ),
        _ => (
            "block_cleared",
            "success",
            status
                .block_clearance
                .as_ref()
                .and_then(|b| b.cleared_at.as_ref()),
            "Failed",
        ),
    };
    put("phase", json!(phase));
    // Who asked for the execution, as the API server stamped it at creation (#18).
    put(
        "created_by",
        json!(
            wfe.annotations()
                .get(wfe_api::CREATED_BY_ANNOTATION)
                .map_or(crate::clearance::UNKNOWN, String::as_str)
        ),
    );
    if event_type != types::SELECTION_COMPLETED && event_type != types::BLOCK_CLEARED {
        let params: Map<String, Value> = spec
            .effective_parameters()
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        if !params.is_empty() {
            put("parameters", Value::Object(params));
        }
    }
    if matches!(
        event_type,
        types::WORKFLOW_COMPLETED | types::WORKFLOW_FAILED
    ) {
        put("started_at", json!(ts(status.start_time.as_ref())));
        put("completed_at", json!(ts(status.completion_time.as_ref())));
        put("duration", json!(status.duration));
        if let Some(s) = &status.execution_status
            && s.retry_count > 0
        {
            put("retry_count", json!(s.retry_count));
        }
    }
    if event_type == types::WORKFLOW_FAILED
        && let Some(d) = &status.failure_details
    {
        put("failure_reason", json!(d.reason.as_str()));
        put("failure_message", json!(d.message));
        put("failed_task_name", json!(d.failed_task_name));
        put("exit_code", json!(d.exit_code));
        put("was_execution_failure", json!(d.was_execution_failure));
        put("deduplicated_by", json!(status.deduplicated_by));
        put(
            "error_details",
            error_details(
                d.reason,
                d.was_execution_failure,
                &d.message,
                d.failed_task_name.as_deref(),
            ),
        );
    }
    let mut actor = ("service".to_string(), "we-operator".to_string());
    if event_type == types::BLOCK_CLEARED
        && let Some(b) = &status.block_clearance
    {
        put("cleared_by", json!(b.cleared_by));
        put("clear_reason", json!(b.clear_reason));
        put("clear_method", json!(b.clear_method));
        put("cleared_at", json!(ts(b.cleared_at.as_ref())));
        put("previous_state", json!("Blocked"));
        put("new_state", json!("Cleared"));
        actor = ("user".into(), format!("user/{}", b.cleared_by));
    }

    let uid = wfe.uid().unwrap_or_default();
    let timestamp = when
        .map(|t| t.0)
        .or(wfe.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH);
    AuditEvent {
        version: "1.0".into(),
        event_id: event_id(&uid, event_type),
        event_type: event_type.into(),
        event_timestamp: timestamp.to_string(),
        event_category: "workflowexecution".into(),
        event_action: action.into(),
        event_outcome: outcome.into(),
        actor_type: actor.0,
        actor_id: actor.1,
        resource_type: "WorkflowExecution".into(),
        resource_id: wfe.name_any(),
        correlation_id: spec
            .remediation_request_ref
            .name
            .clone()
            .unwrap_or_else(|| wfe.name_any()),
        namespace: wfe.namespace().unwrap_or_default(),
        event_data: Value::Object(data),
    }
}

fn image_digest(image: &str) -> Option<String> {
    image.rsplit_once('@').map(|(_, d)| d.to_string())
}

/// A delivery failure: what users read, and the error that caused it when there is one.
#[derive(Debug, thiserror::Error)]
#[error("audit delivery failed: {message}")]
pub struct AuditError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl AuditError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        AuditError {
            message: message.into(),
            source: None,
        }
    }

    /// The same failure, caused by `source`.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What users read.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Where audit events go.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug + 'static {
    /// Delivers a batch; `Ok` means the receiver acknowledged every event.
    async fn send(&self, events: &[AuditEvent]) -> Result<(), AuditError>;
}

/// How the HTTP sink trusts the audit service and proves who it is (issue #18).
#[derive(Clone, Debug, Default)]
pub struct HttpAuth {
    /// PEM file of the CA certificate(s) that sign the audit service's certificate (a private
    /// CA); read once at start.
    pub ca_file: Option<PathBuf>,
    /// File holding a bearer token, sent as `Authorization: Bearer ...`; read for every batch,
    /// so a rotated token (a projected ServiceAccount token, a re-mounted Secret) is used at once.
    pub token_file: Option<PathBuf>,
    /// A client certificate for mutual TLS; re-read when its files change (a renewed
    /// certificate in a re-mounted Secret is used from the next batch on).
    pub client_cert: Option<ClientCert>,
}

/// The PEM files of a client certificate (`tls.crt`, its chain allowed) and its private key
/// (`tls.key`: PKCS#8, PKCS#1 or SEC1), as in a Secret of type `kubernetes.io/tls`.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The certificate (and chain), PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM.
    pub key_file: PathBuf,
}

/// When the client certificate's files last changed: the HTTP client is rebuilt when this
/// differs from the one it was built with.
type Stamp = (Option<std::time::SystemTime>, Option<std::time::SystemTime>);

impl ClientCert {
    fn stamp(&self) -> Stamp {
        let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (modified(&self.cert_file), modified(&self.key_file))
    }

    /// The identity (certificate and key in one PEM buffer, as reqwest reads it).
    fn identity(&self) -> Result<reqwest::Identity, AuditError> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| {
                AuditError::new(format!(
                    "cannot read the audit client {what} {}: {e}",
                    p.display()
                ))
                .caused_by(e)
            })
        };
        let mut pem = read(&self.cert_file, "certificate")?;
        pem.push(b'\n');
        pem.extend(read(&self.key_file, "key")?);
        reqwest::Identity::from_pem(&pem).map_err(|e| {
            AuditError::new(format!(
                "the audit client certificate {} and key {} are not a PEM certificate and private key: {e}",
                self.cert_file.display(),
                self.key_file.display()
            ))
            .caused_by(e)
        })
    }
}

/// Posts batches to `{url}/api/v1/audit/events/batch`.
#[derive(Debug)]
pub struct HttpSink {
    url: String,
    timeout: Duration,
    ca: Vec<reqwest::Certificate>,
    client_cert: Option<ClientCert>,
    /// The client, and the stamp of the client certificate it holds.
    client: std::sync::Mutex<(reqwest::Client, Stamp)>,
    token_file: Option<PathBuf>,
}

impl HttpSink {
    /// A sink for the audit service at `base_url`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, AuditError> {
        Self::with_auth(base_url, timeout, &HttpAuth::default())
    }

    /// A sink for the audit service at `base_url` with a custom CA, a bearer token and/or a
    /// client certificate. Every file is checked here, so a wrong path stops the operator at start.
    pub fn with_auth(
        base_url: &str,
        timeout: Duration,
        auth: &HttpAuth,
    ) -> Result<Self, AuditError> {
        let mut ca = Vec::new();
        if let Some(path) = &auth.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                AuditError::new(format!("cannot read the audit CA {}: {e}", path.display()))
                    .caused_by(e)
            })?;
            ca = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                AuditError::new(format!("the audit CA {} is not PEM: {e}", path.display()))
                    .caused_by(e)
            })?;
            if ca.is_empty() {
                return Err(AuditError::new(format!(
                    "the audit CA {} holds no certificate",
                    path.display()
                )));
            }
        }
        let built = http_client(timeout, &ca, auth.client_cert.as_ref())?;
        Ok(HttpSink {
            url: format!(
                "{}/api/v1/audit/events/batch",
                base_url.trim_end_matches('/')
            ),
            timeout,
            ca,
            client_cert: auth.client_cert.clone(),
            client: std::sync::Mutex::new(built),
            token_file: auth.token_file.clone(),
        })
    }

    /// The client to use: rebuilt when the client certificate's files changed since it was
    /// built; a renewed certificate that cannot be read yet (a half-written Secret update)
    /// keeps the previous client and is tried again with the next batch.
    fn client(&self) -> reqwest::Client {
        let mut current = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cert) = &self.client_cert
            && cert.stamp() != current.1
        {
            match http_client(self.timeout, &self.ca, Some(cert)) {
                Ok(built) => {
                    tracing::info!(cert = %cert.cert_file.display(), "audit client certificate reloaded");
                    *current = built;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "audit client certificate changed but cannot be loaded; keeping the previous one");
                }
            }
        }
        current.0.clone()
    }
}

/// A client with the CA and the client certificate as their files are now.
fn http_client(
    timeout: Duration,
    ca: &[reqwest::Certificate],
    client_cert: Option<&ClientCert>,
) -> Result<(reqwest::Client, Stamp), AuditError> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if !ca.is_empty() {
        builder = builder.tls_certs_merge(ca.to_vec());
    }
    let mut stamp = (None, None);
    if let Some(cert) = client_cert {
        stamp = cert.stamp();
        builder = builder.identity(cert.identity()?);
    }
    let client = builder
        .build()
        .map_err(|e| AuditError::new(e.to_string()).caused_by(e))?;
    Ok((client, stamp))
}

#[async_trait]
impl AuditSink for HttpSink {
    async fn send(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut request = self.client().post(&self.url).json(events);
        if let Some(path) = &self.token_file {
            let token = tokio::fs::read_to_string(path).await.map_err(|e| {
                AuditError::new(format!(
                    "cannot read the audit token {}: {e}",
                    path.display()
                ))
                .caused_by(e)
            })?;
            request = request.bearer_auth(token.trim());
        }
        let response = request
            .send()
            .await
            .map_err(|e| AuditError::new(format!("POST {}: {e}", self.url)).caused_by(e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(AuditError::new(format!(
                "POST {}: HTTP {}",
                self.url,
                response.status()
            )))
        }
    }
}

/// Writes each event as one JSON line on standard output.
#[derive(Debug, Clone, Default)]
pub struct StdoutSink;

#[async_trait]
impl AuditSink for StdoutSink {
    async fn send(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let mut out = Vec::new();
        for e in events {
            serde_json::to_writer(&mut out, &json!({"audit": e}))
                .map_err(|e| AuditError::new(e.to_string()).caused_by(e))?;
            out.push(b'\n');
        }
        let mut stdout = tokio::io::stdout();
        stdout
            .write_all(&out)
            .await
            .map_err(|e| AuditError::new(e.to_string()).caused_by(e))?;
        stdout
            .flush()
            .await
            .map_err(|e| AuditError::new(e.to_string()).caused_by(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wfe(status: Value) -> WorkflowExecution {
        serde_json::from_value(json!({
            "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
            "metadata": {"name": "w1", "namespace": "ns", "uid": "uid-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"executionEngine": "job",
                     "workflowRef": {"workflowId": "restart", "version": "1.0", "containerImage": "r/x@sha256:abc"},
                     "targetResource": "ns/Deployment/app", "parameters": {"podName": "app"},
                     "remediationRequestRef": {"name": "rr-7"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn due_events_follow_the_lifecycle() {
        assert!(due_types(&wfe(json!({"phase": "Pending"}))).is_empty());
        let running = json!({"phase": "Running", "startTime": "2026-01-01T00:00:01Z",
                             "executionRef": {"kind": "Job", "name": "wfe-1", "namespace": "x"}});
        assert_eq!(
            due_types(&wfe(running.clone())),
            [types::SELECTION_COMPLETED, types::EXECUTION_STARTED]
        );
        let mut done = running.clone();
        done["phase"] = json!("Succeeded");
        done["completionTime"] = json!("2026-01-01T00:00:09Z");
        assert_eq!(due_types(&wfe(done.clone())).len(), 3);
        done["auditDelivered"] = json!([types::SELECTION_COMPLETED, types::EXECUTION_STARTED]);
        let p = pending(&wfe(done));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].event_type, types::WORKFLOW_COMPLETED);
        // A guard failure only reports the failure.
        let dedup = json!({"phase": "Failed", "completionTime": "2026-01-01T00:00:02Z",
                           "failureDetails": {"reason": "Deduplicated", "message": "held", "wasExecutionFailure": false}});
        assert_eq!(due_types(&wfe(dedup)), [types::WORKFLOW_FAILED]);
    }

    #[test]
    fn events_are_stable_and_carry_the_engine() {
        let status = json!({"phase": "Failed", "startTime": "2026-01-01T00:00:01Z", "completionTime": "2026-01-01T00:00:09Z",
            "duration": "8s", "executionRef": {"kind": "Job", "name": "wfe-1", "namespace": "x"},
            "failureDetails": {"reason": "TaskFailed", "message": "exit 2", "exitCode": 2, "wasExecutionFailure": true}});
        let a = build(&wfe(status.clone()), types::WORKFLOW_FAILED);
        let b = build(&wfe(status), types::WORKFLOW_FAILED);
        assert_eq!(a, b, "rebuilding gives the same event");
        assert_eq!(a.event_id, event_id("uid-1", types::WORKFLOW_FAILED));
        assert_ne!(a.event_id, event_id("uid-1", types::WORKFLOW_COMPLETED));
        assert_eq!(a.event_data["execution_engine"], "job");
        assert_eq!(a.event_data["failure_reason"], "TaskFailed");
        assert_eq!(a.event_data["exit_code"], 2);
        assert_eq!(a.event_data["container_digest"], "sha256:abc");
        assert_eq!(a.event_data["error_details"]["retry_possible"], false);
        assert_eq!(a.correlation_id, "rr-7");
        assert_eq!(a.event_timestamp, "2026-01-01T00:00:09Z");
        assert_eq!(a.event_outcome, "failure");
        assert_eq!(a.event_data["parameters"]["podName"], "app");
    }

    #[test]
    fn events_name_the_creating_identity_stamped_by_admission() {
        let status = json!({"phase": "Running", "startTime": "2026-01-01T00:00:01Z"});
        let unstamped = build(&wfe(status.clone()), types::EXECUTION_STARTED);
        assert_eq!(unstamped.event_data["created_by"], "unknown");
        let mut stamped = wfe(status);
        stamped.metadata.annotations = Some(
            [(
                wfe_api::CREATED_BY_ANNOTATION.to_string(),
                "system:serviceaccount:kubernaut-system:orchestrator".to_string(),
            )]
            .into(),
        );
        let e = build(&stamped, types::EXECUTION_STARTED);
        assert_eq!(
            e.event_data["created_by"],
            "system:serviceaccount:kubernaut-system:orchestrator"
        );
    }

    #[test]
    fn event_ids_look_like_uuids() {
        let id = event_id("u", "t");
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
