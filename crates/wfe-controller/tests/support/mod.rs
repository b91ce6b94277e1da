//! Test harness: the controller in-process on the real local control plane (both backends
//! registered), a per-test namespace for WorkflowExecutions and one for executions, and a small
//! HTTP audit receiver that can be taken down.

#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Secret, ServiceAccount},
    events::v1::Event,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, PostParams},
    core::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::events::Reporter,
};
use serde_json::json;
use wfe_api::{Phase, WorkflowExecution, testing};
use wfe_controller::{ControllerConfig, GuardConfig, Health, HttpSink, RunOptions};
use wfe_executor::Registry;
use wfe_job::{JobConfig, JobExecutor};
use wfe_tekton::{TektonConfig, TektonExecutor};

pub use wfe_api::testing::DIGEST;
pub const TIMEOUT: Duration = Duration::from_secs(120);

pub use wfe_testing::audit::AuditReceiver;

pub struct Harness {
    pub client: Client,
    pub ns: String,
    pub exec_ns: String,
    pub audit: AuditReceiver,
    pub cfg: ControllerConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn guards(cooldown_ms: u64) -> GuardConfig {
    GuardConfig {
        cooldown: Duration::from_millis(cooldown_ms),
        backoff_base: Duration::from_secs(2),
        backoff_max: Duration::from_secs(8),
        max_consecutive_failures: 3,
    }
}

impl Harness {
    /// A controller whose requests live in a fresh namespace and whose Jobs and PipelineRuns go
    /// to another fresh namespace, where no Tekton controller runs (tests play Tekton there).
    pub async fn start(prefix: &str, guards: GuardConfig) -> Harness {
        Self::start_in(prefix, guards, None, Default::default()).await
    }

    /// Like [`Harness::start`], with a retention time for finished WorkflowExecutions.
    pub async fn start_with_retention(
        prefix: &str,
        guards: GuardConfig,
        retention: Duration,
    ) -> Harness {
        let mut h = Self::start_in_stopped(prefix, guards, None, Default::default()).await;
        h.cfg.retention = Some(retention);
        h.start_controller();
        h
    }

    /// Like [`Harness::start`], with a workflow policy.
    pub async fn start_with_policy(
        prefix: &str,
        guards: GuardConfig,
        policy: wfe_controller::policy::WorkflowPolicy,
    ) -> Harness {
        Self::start_in(prefix, guards, None, policy).await
    }

    /// Like [`Harness::start`], but Jobs and PipelineRuns go to the namespace the local cluster's
    /// real Tekton controller serves ([`wfe_testing::tekton::NAMESPACE`]).
    pub async fn start_with_tekton(prefix: &str, guards: GuardConfig) -> Harness {
        Self::start_in(
            prefix,
            guards,
            Some(wfe_testing::tekton::NAMESPACE),
            Default::default(),
        )
        .await
    }

    async fn start_in(
        prefix: &str,
        guards: GuardConfig,
        exec_ns: Option<&str>,
        policy: wfe_controller::policy::WorkflowPolicy,
    ) -> Harness {
        let mut h = Self::start_in_stopped(prefix, guards, exec_ns, policy).await;
        h.start_controller();
        h
    }

    async fn start_in_stopped(
        prefix: &str,
        guards: GuardConfig,
        exec_ns: Option<&str>,
        policy: wfe_controller::policy::WorkflowPolicy,
    ) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = wfe_testing::client().await;
        let ns = wfe_testing::namespace(&client, &format!("{prefix}-req")).await;
        let exec_ns = match exec_ns {
            Some(fixed) => {
                wfe_testing::tekton::namespace(&client).await;
                fixed.to_string()
            }
            None => {
                let exec_ns = wfe_testing::namespace(&client, &format!("{prefix}-exec")).await;
                let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &exec_ns);
                let sa = ServiceAccount {
                    metadata: ObjectMeta {
                        name: Some("kubernaut-workflow-runner".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                sas.create(&PostParams::default(), &sa).await.unwrap();
                exec_ns
            }
        };
        let audit = AuditReceiver::start().await.unwrap();
        let cfg = ControllerConfig {
            guards,
            running_resync: Duration::from_secs(30),
            concurrency: 8,
            watch_namespace: Some(ns.clone()),
            streaming_lists: true,
            policy: policy.into(),
            retention: None,
        };
        Harness {
            client,
            ns,
            exec_ns,
            audit,
            cfg,
            stop: None,
            task: None,
        }
    }

    pub fn start_controller(&mut self) {
        let client = self.client.clone();
        let registry = Registry::new()
            .with(Arc::new(JobExecutor::new(
                client.clone(),
                JobConfig {
                    namespace: self.exec_ns.clone(),
                    ..JobConfig::default()
                },
            )))
            .with(Arc::new(TektonExecutor::new(
                client.clone(),
                TektonConfig {
                    namespace: self.exec_ns.clone(),
                    ..TektonConfig::default()
                },
            )));
        let opts = RunOptions {
            client,
            registry,
            cfg: self.cfg.clone(),
            audit: Arc::new(HttpSink::new(&self.audit.url, Duration::from_secs(2)).unwrap()),
            reporter: Reporter {
                controller: "we-operator-test".into(),
                instance: None,
            },
            health: Arc::new(Health::default()),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(wfe_controller::run(opts, async {
            let _ = rx.await;
        })));
    }

    pub async fn stop_controller(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("controller stops")
                .unwrap();
        }
    }

    pub fn wfes(&self) -> Api<WorkflowExecution> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.exec_ns)
    }

    pub fn pipelineruns(&self) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"));
        Api::namespaced_with(self.client.clone(), &self.exec_ns, &ar)
    }

    /// A WorkflowExecution for `target`; `params` become environment variables of the Job (the
    /// KWOK_* ones script the fake kubelet).
    pub fn wfe(
        &self,
        name: &str,
        engine: Option<&str>,
        target: &str,
        params: &[(&str, &str)],
    ) -> WorkflowExecution {
        let mut fixture = testing::wfe(name)
            .namespace(&self.ns)
            .uid(None)
            .workflow("restart-with-increased-memory")
            .workflow_ref("version", json!("1.2.0"))
            .image(&format!(
                "registry.example.com/remediation/restart:v1.2@{DIGEST}"
            ))
            .target(target)
            .spec("parameters", json!({}))
            .spec(
                "remediationRequestRef",
                json!({"name": format!("rr-{name}"), "namespace": self.ns}),
            )
            // No engine unless asked: the default (Tekton) is under test too.
            .unset_spec("executionEngine");
        for (k, v) in params {
            fixture = fixture.param(k, v);
        }
        if let Some(e) = engine {
            fixture = fixture.engine(e);
        }
        fixture.build()
    }

    pub async fn create(&self, wfe: &WorkflowExecution) -> WorkflowExecution {
        self.wfes()
            .create(&PostParams::default(), wfe)
            .await
            .unwrap()
    }

    pub async fn wait_phase(&self, name: &str, phase: Phase) -> WorkflowExecution {
        let api = self.wfes();
        let what = format!("{}/{name} to reach {phase}", self.ns);
        wfe_testing::wait_for(&what, TIMEOUT, || {
            let api = api.clone();
            async move {
                api.get(name)
                    .await
                    .ok()
                    .filter(|w| w.status.as_ref().and_then(|s| s.phase) == Some(phase))
            }
        })
        .await
    }

    pub async fn wait_until<F: Fn(&WorkflowExecution) -> bool>(
        &self,
        name: &str,
        what: &str,
        f: F,
    ) -> WorkflowExecution {
        let api = self.wfes();
        let f = &f;
        wfe_testing::wait_for(what, TIMEOUT, || {
            let api = api.clone();
            async move { api.get(name).await.ok().filter(|w| f(w)) }
        })
        .await
    }

    pub async fn jobs_list(&self) -> Vec<Job> {
        self.jobs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    pub async fn pipelineruns_list(&self) -> Vec<DynamicObject> {
        self.pipelineruns()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }

    pub async fn wait_event(&self, name: &str, reason: &str) {
        let what = format!("event {reason} on {name}");
        wfe_testing::wait_for(&what, TIMEOUT, || async {
            self.event_reasons(name)
                .await
                .contains(&reason.to_string())
                .then_some(())
        })
        .await
    }

    pub async fn wait_audit(&self, name: &str, types: &[&str]) {
        let what = format!("audit events {types:?} for {name}");
        wfe_testing::wait_for(&what, TIMEOUT, || async {
            let got = self.audit.types_for(name);
            types
                .iter()
                .all(|t| got.iter().any(|g| g == t))
                .then_some(())
        })
        .await
    }

    pub async fn secret(&self, name: &str) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.exec_ns);
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn status(w: &WorkflowExecution) -> &wfe_api::WorkflowExecutionStatus {
    w.status.as_ref().expect("status")
}

pub fn condition<'a>(w: &'a WorkflowExecution, t: &str) -> (&'a str, &'a str) {
    let c = w
        .condition(t)
        .unwrap_or_else(|| panic!("condition {t} missing on {}", w.name_any()));
    (c.status.as_str(), c.reason.as_str())
}
