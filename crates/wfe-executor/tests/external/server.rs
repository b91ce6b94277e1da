//! A small AWX-like REST engine on 127.0.0.1 for the tests: job templates are launched, jobs
//! are read and cancelled, and the test decides how a job ends (`/test/...`), playing the engine.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct Jobs {
    next: u64,
    /// Job id → (status, traceback).
    jobs: HashMap<u64, (String, String)>,
    /// Launch request key → job id (a repeated launch returns the same job).
    requests: HashMap<String, u64>,
    launches: usize,
}

type Shared = Arc<Mutex<Jobs>>;

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    jobs: Shared,
}

impl Server {
    /// Starts a server on a free loopback port (it runs until the runtime ends).
    pub async fn start() -> Server {
        let jobs = Shared::default();
        let app = Router::new()
            .route("/api/v2/job_templates/{template}/launch/", post(launch))
            .route("/api/v2/jobs/{id}/", get(read))
            .route("/api/v2/jobs/{id}/cancel/", post(cancel))
            .route("/test/jobs/{id}/finish", post(finish))
            .with_state(jobs.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { base, jobs }
    }

    /// How many launches created a job.
    pub fn launches(&self) -> usize {
        self.jobs.lock().unwrap().launches
    }

    /// The status of job `id`.
    pub fn status(&self, id: u64) -> Option<String> {
        self.jobs.lock().unwrap().jobs.get(&id).map(|j| j.0.clone())
    }
}

async fn launch(
    State(jobs): State<Shared>,
    Path(_template): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let request = body["request"].as_str().unwrap_or_default().to_string();
    let mut jobs = jobs.lock().unwrap();
    if let Some(id) = jobs.requests.get(&request) {
        return (StatusCode::OK, Json(json!({"id": id})));
    }
    jobs.next += 1;
    let id = jobs.next;
    jobs.jobs.insert(id, ("pending".into(), String::new()));
    jobs.requests.insert(request, id);
    jobs.launches += 1;
    (StatusCode::CREATED, Json(json!({"id": id})))
}

async fn read(State(jobs): State<Shared>, Path(id): Path<u64>) -> (StatusCode, Json<Value>) {
    match jobs.lock().unwrap().jobs.get(&id) {
        Some((status, traceback)) => (
            StatusCode::OK,
            Json(json!({"id": id, "status": status, "result_traceback": traceback})),
        ),
        None => (StatusCode::NOT_FOUND, Json(json!({"detail": "Not found."}))),
    }
}

async fn cancel(State(jobs): State<Shared>, Path(id): Path<u64>) -> StatusCode {
    match jobs.lock().unwrap().jobs.get_mut(&id) {
        Some((status, _)) if matches!(status.as_str(), "pending" | "running") => {
            *status = "canceled".into();
            StatusCode::ACCEPTED
        }
        Some(_) => StatusCode::METHOD_NOT_ALLOWED,
        None => StatusCode::NOT_FOUND,
    }
}

async fn finish(
    State(jobs): State<Shared>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> StatusCode {
    match jobs.lock().unwrap().jobs.get_mut(&id) {
        Some(job) => {
            job.0 = body["status"].as_str().unwrap_or("successful").into();
            job.1 = body["result_traceback"].as_str().unwrap_or_default().into();
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}
