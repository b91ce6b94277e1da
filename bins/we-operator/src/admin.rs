//! The admin server: `/livez`, `/readyz` (with the reason when not ready) and `/metrics`.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, Result};
use axum::{Router, extract::State as AxumState, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use wfe_controller::Health;

/// 1 while this replica leads (reconciles), 0 while it waits; the sum over replicas is 1 when the
/// operator works, 0 when none leads.
pub const LEADER: &str = "workflowexecution_leader";
/// Always 1, labelled with the operator's version (joins with other series by pod).
pub const BUILD_INFO: &str = "workflowexecution_build_info";

/// Describes the process-level metrics and sets the ones known at start.
pub fn describe() {
    metrics::describe_gauge!(LEADER, "1 while this replica is the leader, else 0");
    metrics::describe_gauge!(BUILD_INFO, "Always 1; the version label names the build");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(LEADER).set(0.0);
}

/// What the endpoints report.
#[derive(Debug)]
pub struct State {
    health: Arc<Health>,
    metrics: PrometheusHandle,
    not_ready: Mutex<Option<String>>,
    leader: AtomicBool,
    leader_election: bool,
}

impl State {
    pub fn new(health: Arc<Health>, metrics: PrometheusHandle, leader_election: bool) -> Self {
        State {
            health,
            metrics,
            not_ready: Mutex::new(Some("starting".into())),
            leader: AtomicBool::new(false),
            leader_election,
        }
    }

    pub fn set_not_ready(&self, reason: Option<String>) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
        metrics::gauge!(LEADER).set(if leader { 1.0 } else { 0.0 });
    }

    fn readiness(&self) -> Result<String, String> {
        if let Some(reason) = self
            .not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(reason);
        }
        if !self.leader.load(Ordering::Relaxed) {
            // A standby replica is healthy and ready to take over.
            return if self.leader_election {
                Ok("standby (not the leader)".into())
            } else {
                Err("starting".into())
            };
        }
        if !self.health.synced() {
            return Err("WorkflowExecution cache not synced yet".into());
        }
        Ok("leader, caches synced".into())
    }
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(AxumState(state): AxumState<Arc<State>>) -> (StatusCode, String) {
    match state.readiness() {
        Ok(m) => (StatusCode::OK, format!("ok: {m}\n")),
        Err(m) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {m}\n")),
    }
}

async fn metrics(AxumState(state): AxumState<Arc<State>>) -> String {
    state.metrics.render()
}

async fn listen(addr: SocketAddr, router: Router) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, "admin server listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok(())
}

/// Serves health on `health` and metrics on `metrics` (one listener when they are equal).
pub async fn serve(state: Arc<State>, health: SocketAddr, metrics_addr: SocketAddr) -> Result<()> {
    let health_routes = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz));
    let metrics_routes = Router::new().route("/metrics", get(metrics));
    if health == metrics_addr {
        listen(
            health,
            health_routes.merge(metrics_routes).with_state(state),
        )
        .await
    } else {
        listen(health, health_routes.with_state(state.clone())).await?;
        listen(metrics_addr, metrics_routes.with_state(state)).await
    }
}
