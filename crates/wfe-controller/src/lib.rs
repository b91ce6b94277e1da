//! # wfe-controller: the WorkflowExecution reconcile loop
//!
//! Turns WorkflowExecutions into executions through a [`wfe_executor::Registry`], with every
//! engine-agnostic guarantee: validation, the guards of [`guards`] (resource lock, cooldown,
//! backoff, block after an execution failure, block clearing), dispatch, observation driven by
//! watches on the execution resources, terminal transitions written once (resourceVersion
//! preconditions), the audit outbox of [`audit`], [`metrics`] with an `execution_engine` label,
//! Kubernetes Events, lock release after the cooldown and finalizer cleanup.
//!
//! The controller never names an engine: everything engine-specific is behind the executor trait.
//! The decisions are pure functions ([`guards::evaluate`], [`transitions`], [`audit::pending`])
//! with unit tests; [`reconcile`] does the I/O.

pub mod audit;
pub mod cache;
pub mod clearance;
pub mod guards;
pub mod metrics;
pub mod policy;
pub mod preflight;
pub mod reconcile;
pub mod retention;
pub mod targets;
pub mod transitions;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, TryStreamExt, stream};
use kube::{
    Api, Client,
    runtime::{
        Controller, WatchStreamExt,
        controller::Config as ControllerRunConfig,
        events::Reporter,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use wfe_api::{Phase, WorkflowExecution};
use wfe_executor::Registry;

pub use audit::{AuditSink, HttpSink, StdoutSink};
pub use guards::GuardConfig;
pub use reconcile::{
    Context, ControllerConfig, Error, TargetIndex, error_policy, measured_reconcile, reconcile,
};

/// Health of a running controller, for `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    synced: AtomicBool,
}

impl Health {
    /// True once the WorkflowExecution cache completed its first list.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

/// Everything [`run`] needs.
pub struct RunOptions {
    /// API client.
    pub client: Client,
    /// Executors by engine.
    pub registry: Registry,
    /// Settings.
    pub cfg: ControllerConfig,
    /// Audit delivery.
    pub audit: Arc<dyn AuditSink>,
    /// Identity in Kubernetes Events.
    pub reporter: Reporter,
    /// Health flags updated by the controller.
    pub health: Arc<Health>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("cfg", &self.cfg)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let RunOptions {
        client,
        registry,
        cfg,
        audit,
        reporter,
        health,
    } = opts;
    let wfes: Api<WorkflowExecution> = match &cfg.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let watch_config = if cfg.streaming_lists {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default()
    };
    // Target keys use the served kinds (DESIGN.md §7): discover them before anything is indexed.
    match targets::refresh(&client).await {
        Ok(n) => tracing::info!(kinds = n, "API discovery: target kinds resolved"),
        Err(e) => tracing::warn!(error = %e, "API discovery failed; retried on the first request"),
    }
    let index = Arc::new(TargetIndex::default());

    // Execution resources wake their WorkflowExecution (label-filtered watches in the execution
    // namespace, started by each executor).
    let mut triggers = Vec::new();
    for engine in registry.engines() {
        let Some(changes) = registry.get(engine).and_then(|e| e.changes()) else {
            continue;
        };
        triggers.push(
            changes
                .map(|o| ObjectRef::<WorkflowExecution>::new(&o.name).within(&o.namespace))
                .boxed(),
        );
    }

    let ctx = Arc::new(Context::new(
        client,
        registry,
        cfg.clone(),
        reader.clone(),
        index.clone(),
        audit,
        reporter,
    ));

    // The cache holds the WorkflowExecutions with work left; settled ones only have their guard
    // summary in the index (see `cache`).
    let router = ctx.clone();
    let wfe_stream = reflector::reflector(
        writer,
        watcher(wfes, watch_config)
            .default_backoff()
            .modify(cache::strip)
            .try_filter_map(move |event| {
                let (event, forget) = cache::route(event, &router.index);
                if let Some(uid) = forget {
                    router.forget(&uid);
                }
                futures::future::ready(Ok(event))
            }),
    )
    .applied_objects();

    // Gauges and readiness from the cache.
    let gauge_store = reader.clone();
    let gauge_registry: Vec<String> = ctx
        .registry
        .engines()
        .map(|e| e.as_str().to_string())
        .collect();
    let health_task = health.clone();
    tokio::spawn(async move {
        // The store's readiness future wakes only its most recent poller (the controller also
        // waits on it), so poll it again now and then instead of waiting once.
        loop {
            match tokio::time::timeout(Duration::from_millis(250), gauge_store.wait_until_ready())
                .await
            {
                Ok(Ok(())) => {
                    health_task.synced.store(true, Ordering::Relaxed);
                    break;
                }
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
        loop {
            for engine in &gauge_registry {
                let n = gauge_store
                    .state()
                    .iter()
                    .filter(|w| w.engine().as_str() == engine && w.phase() == Phase::Running)
                    .count();
                metrics::active(engine, n);
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    });

    // Retention: settled WorkflowExecutions are deleted once nothing needs them.
    let sweeper = cfg.retention.map(|ttl| {
        let ctx = ctx.clone();
        let every = reconcile::sweep::sweep_interval(ttl);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                ctx.sweep_retention().await;
            }
        })
    });

    metrics::max_concurrency(cfg.concurrency);
    Controller::for_stream(wfe_stream, reader)
        .with_config(ControllerRunConfig::default().concurrency(cfg.concurrency))
        .reconcile_on(stream::select_all(triggers))
        .graceful_shutdown_on(shutdown)
        .run(measured_reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    // Events queued behind dispatch go out before the process ends.
    ctx.flush_events(Duration::from_secs(5)).await;
}
