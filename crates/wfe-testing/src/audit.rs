//! One audit receiver for the tests and the benchmark: an HTTP server on 127.0.0.1 that takes
//! the operator's batches (`POST /api/v1/audit/events/batch`), keeps every event, and answers 503
//! while it is [down](AuditReceiver::set_down) (an outage).

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use serde_json::{Value, json};

/// The path the operator posts batches to, under its `--audit-url`.
pub const BATCH_PATH: &str = "/api/v1/audit/events/batch";

/// A running receiver (clones share it).
#[derive(Clone, Debug)]
pub struct AuditReceiver {
    /// `http://127.0.0.1:<port>`: the operator's `--audit-url`.
    pub url: String,
    events: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
}

/// Answers `201` with the ids of the events it kept (the sink's documented answer, which the
/// reference controller's client checks), or `503` while down.
async fn receive(
    State(r): State<AuditReceiver>,
    Json(batch): Json<Vec<Value>>,
) -> (StatusCode, Json<Value>) {
    if r.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"message": "the audit receiver is down"})),
        );
    }
    let mut events = r.events.lock().unwrap_or_else(|e| e.into_inner());
    // One id per event, shaped as a UUID as the sink's clients expect: its position in the store.
    let ids: Vec<Value> = (events.len()..events.len() + batch.len())
        .map(|i| json!(format!("00000000-0000-4000-8000-{i:012x}")))
        .collect();
    let n = ids.len();
    events.extend(batch);
    drop(events);
    (
        StatusCode::CREATED,
        Json(json!({"event_ids": ids, "message": format!("{n} audit event(s) stored")})),
    )
}

/// `GET /readyz`: 200 while up (the reference controller gates its own readiness on it).
async fn readyz(State(r): State<AuditReceiver>) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// Events by `event_type`.
pub type Counts = BTreeMap<String, f64>;

impl AuditReceiver {
    /// Starts a receiver on a free loopback port; it runs until the runtime ends.
    pub async fn start() -> std::io::Result<AuditReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let r = AuditReceiver {
            url: format!("http://{}", listener.local_addr()?),
            events: Arc::default(),
            down: Arc::default(),
        };
        let app = Router::new()
            .route(BATCH_PATH, post(receive))
            .route("/readyz", get(readyz))
            .with_state(r.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("audit receiver stopped: {e}");
            }
        });
        Ok(r)
    }

    /// While `down`, every batch is refused with 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Every event received, in order.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many events were received.
    pub fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True before the first event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events of one WorkflowExecution (`resource_id`).
    pub fn for_resource(&self, name: &str) -> Vec<Value> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .filter(|e| e["resource_id"] == name)
            .cloned()
            .collect()
    }

    /// The event types of one WorkflowExecution, in order.
    pub fn types_for(&self, name: &str) -> Vec<String> {
        self.for_resource(name)
            .iter()
            .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Events by type, and the deliveries of an `event_id` received before (redeliveries) by
    /// type.
    pub fn counts(&self) -> (Counts, Counts) {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let (mut by_type, mut again) = (Counts::new(), Counts::new());
        let mut seen = HashSet::new();
        for e in events.iter() {
            let ty = e["event_type"].as_str().unwrap_or("?").to_string();
            *by_type.entry(ty.clone()).or_default() += 1.0;
            if !seen.insert(e["event_id"].as_str().unwrap_or_default()) {
                *again.entry(ty).or_default() += 1.0;
            }
        }
        (by_type, again)
    }
}
