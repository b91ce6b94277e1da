//! `wfe-awx`-like backend: runs a WorkflowExecution as a job of an AWX-like REST engine (the job
//! template named by the workflow id, the parameters as extra variables). The execution is not a
//! Kubernetes object: the framework holds the per-target lock with a Lease
//! (`wfe_executor::external`), this file only talks to the engine.

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wfe_api::{ExecutionEngine, ExecutionStatusSummary, FailureReason, WorkflowExecution};
use wfe_executor::{ExecutorError, Failure, Observation, external::ExternalEngine};

/// The AWX-like backend.
#[derive(Clone, Debug)]
pub struct AwxEngine {
    /// `http://host:port` of the engine's API.
    pub base: String,
}

/// One HTTP/1.1 request to the engine with a JSON body; the status code and the JSON answer.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), ExecutorError> {
    let transient = |e: std::io::Error| {
        ExecutorError::transient(format!("{method} {base}{path}: {e}")).caused_by(e)
    };
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(transient)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(transient)?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(transient)?;
    let code = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Ok((code, json))
}

fn summary(status: &str, reason: &str, done: i32) -> ExecutionStatusSummary {
    ExecutionStatusSummary {
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(format!("AWX job {reason}")),
        completed_tasks: done,
        total_tasks: 1,
        retry_count: 0,
    }
}

/// What a job's state says (pure).
pub fn observation(job: &Value) -> Observation {
    let state = job["status"].as_str().unwrap_or("pending");
    match state {
        "successful" => Observation::Succeeded {
            summary: summary("True", state, 1),
            finished_at: None,
        },
        "failed" | "error" | "canceled" => {
            let traceback = job["result_traceback"].as_str().unwrap_or_default();
            let message = format!("AWX job {} {state}: {traceback}", job["id"]);
            Observation::Failed {
                summary: summary("False", state, 0),
                // The playbook ran (or was stopped while running): it may have changed the cluster.
                failure: Failure::new(FailureReason::TaskFailed, message, true),
                finished_at: None,
            }
        }
        _ => Observation::Running {
            summary: summary("Unknown", state, 0),
        },
    }
}

#[async_trait]
impl ExternalEngine for AwxEngine {
    fn engine(&self) -> ExecutionEngine {
        ExecutionEngine::parse_lenient("ansible")
    }

    async fn launch(
        &self,
        wfe: &WorkflowExecution,
        request: &str,
    ) -> Result<String, ExecutorError> {
        let template = &wfe.spec.workflow_ref.workflow_id;
        let path = format!("/api/v2/job_templates/{template}/launch/");
        let body = json!({"request": request, "extra_vars": wfe.spec.effective_parameters()});
        match call(&self.base, "POST", &path, Some(body)).await? {
            (200 | 201, job) => Ok(job["id"].to_string()),
            (code @ 400..=499, answer) => Err(ExecutorError::invalid(format!(
                "AWX refused to launch job template {template}: {code} {answer}"
            ))),
            (code, answer) => Err(ExecutorError::transient(format!(
                "AWX launch of {template}: {code} {answer}"
            ))),
        }
    }

    async fn observe(
        &self,
        id: &str,
        _wfe: &WorkflowExecution,
    ) -> Result<Observation, ExecutorError> {
        match call(&self.base, "GET", &format!("/api/v2/jobs/{id}/"), None).await? {
            (200, job) => Ok(observation(&job)),
            // The engine forgot the job: it may have run.
            (404, _) => Ok(Observation::Failed {
                summary: summary("False", "missing", 0),
                failure: Failure::new(
                    FailureReason::Unknown,
                    format!("AWX job {id} no longer exists on the engine"),
                    true,
                ),
                finished_at: None,
            }),
            (code, answer) => Err(ExecutorError::transient(format!(
                "AWX job {id}: {code} {answer}"
            ))),
        }
    }

    async fn cancel(&self, id: &str) -> Result<(), ExecutorError> {
        match call(
            &self.base,
            "POST",
            &format!("/api/v2/jobs/{id}/cancel/"),
            None,
        )
        .await?
        {
            // 405: finished already.
            (202 | 405 | 404, _) => Ok(()),
            (code, answer) => Err(ExecutorError::transient(format!(
                "cancel AWX job {id}: {code} {answer}"
            ))),
        }
    }
}
