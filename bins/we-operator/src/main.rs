//! `we-operator`: runs WorkflowExecutions on Tekton or as Kubernetes Jobs.
//!
//! This binary only parses flags and wires the crates together: the executors (`wfe-job`,
//! `wfe-tekton`) into a registry, the controller (`wfe-controller`), leader election on a Lease,
//! and the admin server (`/livez`, `/readyz`, `/metrics`).

mod admin;
mod apicount;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, runtime::events::Reporter};
use wfe_controller::{ControllerConfig, GuardConfig, Health, HttpSink, RunOptions, StdoutSink};
use wfe_executor::Registry;
use wfe_job::{JobConfig, JobExecutor};
use wfe_tekton::{TektonConfig, TektonExecutor};

#[derive(Parser, Debug)]
#[command(
    name = "we-operator",
    version,
    about = "Runs WorkflowExecutions on Tekton or as Kubernetes Jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator.
    Run(Box<RunArgs>),
    /// Print the WorkflowExecution CRD (YAML).
    Crd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Plain,
}

fn duration(text: &str) -> Result<Duration, wfe_api::DurationError> {
    wfe_api::parse_duration(text)
}

/// Every flag can also be set through the environment variable named in `--help`.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespace where Jobs and PipelineRuns are created.
    #[arg(
        long,
        env = "WFE_EXECUTION_NAMESPACE",
        default_value = "kubernaut-workflows"
    )]
    execution_namespace: String,
    /// Watch WorkflowExecutions in this namespace; `*` watches all namespaces (default: the
    /// operator's own namespace, where the orchestrator writes them).
    #[arg(long, env = "WFE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Wait after an execution on a target ends before the next one may start.
    #[arg(long, env = "WFE_COOLDOWN", default_value = "5m", value_parser = duration)]
    cooldown: Duration,
    /// First backoff delay after a pre-execution failure.
    #[arg(long, env = "WFE_BACKOFF_BASE", default_value = "1m", value_parser = duration)]
    backoff_base: Duration,
    /// Largest backoff delay.
    #[arg(long, env = "WFE_BACKOFF_MAX", default_value = "10m", value_parser = duration)]
    backoff_max: Duration,
    /// Delete a finished WorkflowExecution this long after it finished, unless it still owes
    /// audit events or a guard of its target still reads it (a block, a backoff, the cooldown);
    /// `0s` keeps every WorkflowExecution.
    #[arg(long, env = "WFE_RETENTION", default_value = "24h", value_parser = duration)]
    retention: Duration,
    /// Consecutive pre-execution failures on a target before requests fail with ExhaustedRetries.
    #[arg(long, env = "WFE_MAX_CONSECUTIVE_FAILURES", default_value_t = 5)]
    max_consecutive_failures: u32,
    /// ttlSecondsAfterFinished of Jobs, at least 60 (a fallback; Jobs are deleted after the cooldown).
    #[arg(long, env = "WFE_JOB_TTL_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(i32).range(60..))]
    job_ttl_seconds: i32,
    /// Service account of workflows that name none.
    #[arg(
        long,
        env = "WFE_DEFAULT_SERVICE_ACCOUNT",
        default_value = "kubernaut-workflow-runner"
    )]
    default_service_account: String,
    /// Accept Job images and Tekton bundles that are not pinned by digest.
    #[arg(long, env = "WFE_ALLOW_UNPINNED_IMAGES", default_value_t = false)]
    allow_unpinned_images: bool,
    /// Audit service base URL (events are POSTed to {url}/api/v1/audit/events/batch); JSON lines on
    /// stdout when unset.
    #[arg(long, env = "WFE_AUDIT_URL")]
    audit_url: Option<String>,
    /// PEM file of the CA that signs the audit service's certificate (for a private CA).
    #[arg(long, env = "WFE_AUDIT_CA_FILE")]
    audit_ca_file: Option<std::path::PathBuf>,
    /// File with a bearer token for the audit service, re-read for every batch (rotation).
    #[arg(long, env = "WFE_AUDIT_TOKEN_FILE")]
    audit_token_file: Option<std::path::PathBuf>,
    /// PEM client certificate (and chain) for mutual TLS with the audit service; re-read when
    /// it changes (renewal).
    #[arg(
        long,
        env = "WFE_AUDIT_CLIENT_CERT_FILE",
        requires = "audit_client_key_file"
    )]
    audit_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --audit-client-cert-file.
    #[arg(
        long,
        env = "WFE_AUDIT_CLIENT_KEY_FILE",
        requires = "audit_client_cert_file"
    )]
    audit_client_key_file: Option<std::path::PathBuf>,
    /// Timeout of one audit request.
    #[arg(long, env = "WFE_AUDIT_TIMEOUT", default_value = "10s", value_parser = duration)]
    audit_timeout: Duration,
    /// Address of the metrics endpoint (/metrics).
    #[arg(long, env = "WFE_METRICS_ADDRESS", default_value = "0.0.0.0:9090")]
    metrics_address: SocketAddr,
    /// Address of the health endpoints (/livez, /readyz).
    #[arg(long, env = "WFE_HEALTH_ADDRESS", default_value = "0.0.0.0:8081")]
    health_address: SocketAddr,
    /// Elect a leader on a Lease; only the leader reconciles.
    #[arg(long, env = "WFE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "WFE_LEASE_NAME", default_value = "we-operator-leader")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "WFE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Lease duration in seconds (a new leader takes over at most this long after the old one died).
    #[arg(long, env = "WFE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Identity in the Lease and in Events (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "WFE_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,wfe_controller=debug`.
    #[arg(long, env = "WFE_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// WorkflowExecutions reconciled in parallel.
    #[arg(long, env = "WFE_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Re-read running executions at least this often (watches normally make this unnecessary).
    #[arg(long, env = "WFE_RUNNING_RESYNC", default_value = "5m", value_parser = duration)]
    running_resync: Duration,
    /// Fill the WorkflowExecution cache with a streaming list (Kubernetes WatchList) instead of
    /// paged lists: less memory at start-up; set to false for API servers without WatchList.
    #[arg(long, env = "WFE_STREAMING_LISTS", default_value_t = true, action = clap::ArgAction::Set)]
    streaming_lists: bool,
    /// YAML file with the workflow policy: allowed image repositories, service accounts and
    /// Secrets, by default and per workflow (docs/security.md). Without it nothing is restricted
    /// beyond digest pinning.
    #[arg(long, env = "WFE_WORKFLOW_POLICY_FILE")]
    workflow_policy_file: Option<std::path::PathBuf>,
    /// How often the workflow policy file is re-read; a changed valid policy is put in force at
    /// once, an invalid one is logged and counted and the last good policy stays. `0s`: read at
    /// start only.
    #[arg(long, env = "WFE_WORKFLOW_POLICY_RELOAD_INTERVAL", default_value = "10s", value_parser = duration)]
    workflow_policy_reload_interval: Duration,
}

/// The workflow policy of `--workflow-policy-file` and the text it was read from; a policy that
/// does not parse stops the operator (running unrestricted by mistake is worse than not running).
fn workflow_policy(
    path: Option<&std::path::Path>,
) -> Result<(wfe_controller::policy::WorkflowPolicy, String)> {
    let Some(path) = path else {
        tracing::warn!(
            "no --workflow-policy-file: any image repository, service account and Secret may be requested"
        );
        return Ok(Default::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the workflow policy {}", path.display()))?;
    let policy = wfe_controller::policy::WorkflowPolicy::from_yaml(&text)
        .with_context(|| format!("invalid workflow policy {}", path.display()))?;
    tracing::info!(path = %path.display(), workflows = policy.workflows.len(), "workflow policy loaded");
    Ok((policy, text))
}

/// Re-reads the policy file every `every` and acts on what [`Reload::check`] decides: a changed
/// valid policy is put in force at once; an invalid or unreadable file is logged (once per
/// change) and counted, and the last good policy stays in force.
///
/// [`Reload::check`]: wfe_controller::policy::Reload::check
fn follow_workflow_policy(
    path: std::path::PathBuf,
    start_text: &str,
    handle: wfe_controller::policy::PolicyHandle,
    every: Duration,
) {
    use wfe_controller::policy::{Reload, ReloadOutcome};
    wfe_controller::metrics::policy_valid(true);
    let mut reload = Reload::from_start(start_text);
    tokio::spawn(async move {
        let mut unreadable = false;
        loop {
            tokio::time::sleep(every).await;
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => {
                    unreadable = false;
                    text
                }
                Err(e) => {
                    if !unreadable {
                        tracing::error!(path = %path.display(), error = %e, "cannot read the workflow policy file; keeping the last good policy");
                        wfe_controller::metrics::policy_reload(false);
                        unreadable = true;
                    }
                    continue;
                }
            };
            match reload.check(&text) {
                ReloadOutcome::Unchanged => {}
                ReloadOutcome::Loaded(policy) => {
                    tracing::info!(path = %path.display(), workflows = policy.workflows.len(), "workflow policy reloaded");
                    handle.replace(policy);
                    wfe_controller::metrics::policy_reload(true);
                }
                ReloadOutcome::Invalid(why) => {
                    tracing::error!(path = %path.display(), error = %why, "invalid workflow policy file; keeping the last good policy");
                    wfe_controller::metrics::policy_reload(false);
                }
            }
        }
    });
}

fn init_logging(format: LogFormat, level: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).context("invalid --log-level")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Plain => builder.init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", wfe_api::crd_yaml());
            Ok(())
        }
        Command::Run(args) => run(*args).await,
    }
}

async fn wait_for_crd(client: &Client, state: &admin::State) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "workflowexecutions.kubernaut.ai";
    loop {
        let reason = match crds.get_opt(name).await {
            Ok(Some(crd)) => {
                if wfe_api::crd_established(&crd) {
                    state.set_not_ready(None);
                    return;
                }
                format!("CRD {name} is not established yet")
            }
            Ok(None) => format!("CRD {name} is not installed (kubectl apply -f deploy/crds/)"),
            Err(e) => format!("cannot read CRD {name}: {e}"),
        };
        tracing::warn!(reason, "waiting for the WorkflowExecution CRD");
        state.set_not_ready(Some(reason));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

async fn run(args: RunArgs) -> Result<()> {
    init_logging(args.log_format, &args.log_level)?;
    // A bad policy stops the operator before it serves or connects to anything.
    let (policy, policy_text) = workflow_policy(args.workflow_policy_file.as_deref())?;
    let policy = wfe_controller::policy::PolicyHandle::from(policy);
    // reqwest uses rustls without a built-in provider; kube brings ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                wfe_controller::metrics::RECONCILER_DURATION.into(),
            ),
            wfe_controller::metrics::DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                wfe_controller::metrics::RECONCILE_DURATION.into(),
            ),
            wfe_controller::metrics::RECONCILE_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("latency_seconds".into()),
            wfe_controller::metrics::LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                wfe_controller::metrics::COMPLETION_LATENCY.into(),
            ),
            wfe_controller::metrics::LATENCY_BUCKETS,
        )?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    wfe_controller::metrics::describe();
    apicount::describe();
    admin::describe();

    let health = Arc::new(Health::default());
    let state = Arc::new(admin::State::new(
        health.clone(),
        metrics,
        args.leader_election,
    ));
    admin::serve(state.clone(), args.health_address, args.metrics_address).await?;
    if let Some(path) = &args.workflow_policy_file
        && !args.workflow_policy_reload_interval.is_zero()
    {
        follow_workflow_policy(
            path.clone(),
            &policy_text,
            policy.clone(),
            args.workflow_policy_reload_interval,
        );
    }

    let client = apicount::client()
        .await
        .context("cannot build a Kubernetes client (in-cluster or KUBECONFIG)")?;
    // One signal, many listeners.
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("termination signal received; draining");
        let _ = signal_tx.send(true);
    });
    let signalled = move || {
        let mut rx = signal_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::select! {
        _ = wait_for_crd(&client, &state) => {},
        _ = signalled() => return Ok(()),
    }

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("we-operator-{}", std::process::id()));
    let registry = Registry::new()
        .with(Arc::new(JobExecutor::new(
            client.clone(),
            JobConfig {
                namespace: args.execution_namespace.clone(),
                ttl_seconds_after_finished: args.job_ttl_seconds,
                default_service_account: args.default_service_account.clone(),
                allow_unpinned_images: args.allow_unpinned_images,
                ..JobConfig::default()
            },
        )))
        .with(Arc::new(TektonExecutor::new(
            client.clone(),
            TektonConfig {
                namespace: args.execution_namespace.clone(),
                default_service_account: args.default_service_account.clone(),
                allow_unpinned_bundles: args.allow_unpinned_images,
            },
        )));
    let audit: Arc<dyn wfe_controller::AuditSink> = match &args.audit_url {
        Some(url) => Arc::new(HttpSink::with_auth(
            url,
            args.audit_timeout,
            &wfe_controller::audit::HttpAuth {
                ca_file: args.audit_ca_file.clone(),
                token_file: args.audit_token_file.clone(),
                client_cert: args
                    .audit_client_cert_file
                    .clone()
                    .zip(args.audit_client_key_file.clone())
                    .map(|(cert_file, key_file)| wfe_controller::audit::ClientCert {
                        cert_file,
                        key_file,
                    }),
            },
        )?),
        None => Arc::new(StdoutSink),
    };
    if args.cooldown.is_zero() {
        bail!("--cooldown must be positive");
    }
    let options = RunOptions {
        client: client.clone(),
        registry,
        cfg: ControllerConfig {
            guards: GuardConfig {
                cooldown: args.cooldown,
                backoff_base: args.backoff_base,
                backoff_max: args.backoff_max,
                max_consecutive_failures: args.max_consecutive_failures,
            },
            running_resync: args.running_resync,
            concurrency: args.concurrency,
            watch_namespace: watch_scope(args.watch_namespace.as_deref(), &own_namespace(&client)),
            streaming_lists: args.streaming_lists,
            policy,
            retention: (!args.retention.is_zero()).then_some(args.retention),
        },
        audit,
        reporter: Reporter {
            controller: "we-operator".into(),
            instance: Some(identity.clone()),
        },
        health,
    };

    if !args.leader_election {
        tracing::info!("starting without leader election");
        state.set_leader(true);
        wfe_controller::run(options, signalled()).await;
        tracing::info!("stopped");
        return Ok(());
    }

    let namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| own_namespace(&client));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(namespace.trim())
        .with_identity(&identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace((args.lease_duration_seconds / 3).max(1))
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leader, lease_task) = manager.watch().await;
    tracing::info!(identity, lease = args.lease_name, "waiting for leadership");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { bail!("leader election stopped") },
            _ = signalled() => return Ok(()),
        }
    }
    tracing::info!(identity, "acquired leadership; starting the controller");
    state.set_leader(true);
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let mut watch_leader = leader.clone();
    tokio::spawn(async move {
        while watch_leader.changed().await.is_ok() {
            if !*watch_leader.borrow() {
                let _ = lost_tx.send(());
                return;
            }
        }
        let _ = lost_tx.send(());
    });
    let stop_reason = Arc::new(std::sync::Mutex::new("shutdown"));
    let reason = stop_reason.clone();
    let shutdown = signalled();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = lost_rx => { *reason.lock().unwrap_or_else(|e| e.into_inner()) = "leadership lost"; },
        }
    };
    wfe_controller::run(options, stop).await;
    state.set_leader(false);
    let why = *stop_reason.lock().unwrap_or_else(|e| e.into_inner());
    drop(leader); // releases the Lease
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    if why == "leadership lost" {
        bail!("leadership lost; exiting so that a fresh process rejoins the election");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The operator's own namespace: the pod's (its ServiceAccount's namespace file), else the
/// kubeconfig context's namespace (out of a cluster).
fn own_namespace(client: &kube::Client) -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string())
}

/// Which WorkflowExecutions to watch: `--watch-namespace` if given (`*`: every namespace, i.e.
/// `None`), else only `own`.
fn watch_scope(flag: Option<&str>, own: &str) -> Option<String> {
    match flag.map(str::trim) {
        Some("*") => None,
        Some(ns) if !ns.is_empty() => Some(ns.to_string()),
        _ => Some(own.to_string()),
    }
}

#[cfg(test)]
mod watch_scope_tests {
    use super::watch_scope;

    #[test]
    fn watch_scope_defaults_to_the_own_namespace() {
        assert_eq!(
            watch_scope(None, "kubernaut-system").as_deref(),
            Some("kubernaut-system")
        );
        assert_eq!(watch_scope(Some(""), "own").as_deref(), Some("own"));
        assert_eq!(
            watch_scope(Some("team-a"), "own").as_deref(),
            Some("team-a")
        );
        assert_eq!(watch_scope(Some("*"), "own"), None);
    }
}
