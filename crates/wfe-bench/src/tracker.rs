//! Driver-side observation with timestamps: a watch on Jobs (dispatch seen; the Job is then
//! completed by patching its status after a hold time, playing the Job controller) and a watch on
//! WorkflowExecutions (Succeeded seen; lock released seen).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::StreamExt as _;
use k8s_openapi::{api::batch::v1::Job, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::json;
use tokio::{sync::Semaphore, task::JoinHandle};
use wfe_executor::{LABEL_SOURCE_NAMESPACE, owner_of};

use crate::{
    setup::{BENCH_NS, EXEC_NS},
    subject::Subject,
};

/// Everything observed about the executions of one workload, by WorkflowExecution name.
#[derive(Debug, Default)]
pub struct Observed {
    /// Just before the create call was sent.
    pub create_sent: HashMap<String, Instant>,
    /// When the create call returned.
    pub create_done: HashMap<String, Instant>,
    /// The Job first seen by the watch.
    pub job_seen: HashMap<String, Instant>,
    /// Just before the patch that completes the Job was sent.
    pub complete_sent: HashMap<String, Instant>,
    /// The WorkflowExecution first seen `Succeeded`.
    pub succeeded: HashMap<String, Instant>,
    /// The WorkflowExecution first seen with `lockReleasedTime` (the operator is done with it).
    pub released: HashMap<String, Instant>,
    /// WorkflowExecutions seen `Failed`, with the reason.
    pub failed: HashMap<String, String>,
    /// Errors of create calls and Job completion patches.
    pub errors: Vec<String>,
}

/// The watches of one workload.
#[derive(Debug)]
pub struct Tracker {
    state: Arc<Mutex<Observed>>,
    tasks: Vec<JoinHandle<()>>,
    prefix: String,
}

fn lock(m: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tracker {
    /// Starts both watches for WorkflowExecutions named `{prefix}-*` and waits until their initial
    /// lists are done. Jobs are completed `hold` after they are first seen.
    pub async fn start(
        client: &Client,
        prefix: &str,
        hold: Duration,
        subject: &Subject,
    ) -> Result<Tracker> {
        let state = Arc::new(Mutex::new(Observed::default()));
        let prefix = format!("{prefix}-");
        let (jobs_ready_tx, jobs_ready) = tokio::sync::oneshot::channel::<()>();
        let (wfes_ready_tx, wfes_ready) = tokio::sync::oneshot::channel::<()>();

        // Jobs: metadata is enough to know the owner.
        let jobs: Api<Job> = Api::namespaced(client.clone(), EXEC_NS);
        let metas: Api<PartialObjectMeta<Job>> = Api::namespaced(client.clone(), EXEC_NS);
        let cfg =
            watcher::Config::default().labels(&format!("{LABEL_SOURCE_NAMESPACE}={BENCH_NS}"));
        let st = state.clone();
        let pfx = prefix.clone();
        let release_by_deletion = subject.release_is_job_deletion();
        let completer = Completer {
            jobs,
            permits: Arc::new(Semaphore::new(32)),
            hold,
        };
        let job_task = tokio::spawn(async move {
            let mut ready = Some(jobs_ready_tx);
            let mut stream = std::pin::pin!(watcher::watcher(metas, cfg).default_backoff());
            while let Some(event) = stream.next().await {
                let seen = Instant::now();
                let meta = match event {
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => m,
                    Ok(watcher::Event::Delete(m)) => {
                        // The reference records no release in its status: its lock is released
                        // when it deletes the Job.
                        if release_by_deletion
                            && let Some(owner) = owner_of(&m.metadata)
                            && owner.name.starts_with(&pfx)
                        {
                            lock(&st).released.entry(owner.name).or_insert(seen);
                        }
                        continue;
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("warning: Job watch: {e}");
                        continue;
                    }
                };
                if meta.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let Some(owner) = owner_of(&meta.metadata) else {
                    continue;
                };
                if !owner.name.starts_with(&pfx) {
                    continue;
                }
                let first = {
                    let mut s = lock(&st);
                    if s.job_seen.contains_key(&owner.name) {
                        false
                    } else {
                        s.job_seen.insert(owner.name.clone(), seen);
                        true
                    }
                };
                if first {
                    completer.complete_later(st.clone(), meta.name_any(), owner.name, seen);
                }
            }
        });

        let wfes = crate::subject::executions(client);
        let st = state.clone();
        let pfx = prefix.clone();
        let subject = subject.clone();
        let wfe_task = tokio::spawn(async move {
            let mut ready = Some(wfes_ready_tx);
            let mut stream = std::pin::pin!(
                watcher::watcher(wfes, watcher::Config::default()).default_backoff()
            );
            let succeeded = subject.succeeded_phase();
            while let Some(event) = stream.next().await {
                let seen = Instant::now();
                let wfe = match event {
                    Ok(watcher::Event::Apply(w) | watcher::Event::InitApply(w)) => w,
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("warning: WorkflowExecution watch: {e}");
                        continue;
                    }
                };
                let name = wfe.name_any();
                if !name.starts_with(&pfx) {
                    continue;
                }
                let status = wfe.data.get("status").cloned().unwrap_or_default();
                let mut s = lock(&st);
                match status.get("phase").and_then(|p| p.as_str()) {
                    Some(p) if p == succeeded => {
                        s.succeeded.entry(name.clone()).or_insert(seen);
                    }
                    Some("Failed") => {
                        let d = &status["failureDetails"];
                        let reason = format!(
                            "{}: {}",
                            d["reason"].as_str().unwrap_or_default(),
                            d["message"].as_str().unwrap_or_default()
                        );
                        s.failed.entry(name.clone()).or_insert(reason);
                    }
                    _ => {}
                }
                if subject.released_in_status(&status) {
                    s.released.entry(name).or_insert(seen);
                }
            }
        });
        let tracker = Tracker {
            state,
            tasks: vec![job_task, wfe_task],
            prefix,
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            let _ = jobs_ready.await;
            let _ = wfes_ready.await;
        })
        .await
        .map_err(|_| anyhow::anyhow!("the driver's watches did not sync within 60 s"))?;
        Ok(tracker)
    }

    /// Records the send time of a create call.
    pub fn create_sent(&self, name: &str, at: Instant) {
        lock(&self.state).create_sent.insert(name.to_string(), at);
    }

    /// Records the end of a create call.
    pub fn create_done(&self, name: &str, at: Instant, error: Option<String>) {
        let mut s = lock(&self.state);
        match error {
            None => {
                s.create_done.insert(name.to_string(), at);
            }
            Some(e) => s.errors.push(format!("create {name}: {e}")),
        }
    }

    /// (created, finished: released or failed, failed) so far.
    pub fn progress(&self) -> (usize, usize, usize) {
        let s = lock(&self.state);
        let finished = s
            .create_done
            .keys()
            .filter(|n| s.released.contains_key(*n) || s.failed.contains_key(*n))
            .count();
        (s.create_done.len(), finished, s.failed.len())
    }

    /// Waits until every one of `expected` executions was released (or failed), at most `limit`.
    /// Returns false on timeout.
    pub async fn wait_finished(&self, expected: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut last_print = Instant::now();
        loop {
            let (created, finished, failed) = self.progress();
            if finished >= expected {
                return true;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "warning: {}*: only {finished} of {expected} executions finished within {} s ({created} created, {failed} failed)",
                    self.prefix,
                    limit.as_secs()
                );
                return false;
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!("    ... {finished}/{expected} finished");
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the watches and returns what was observed.
    pub fn finish(&self) -> Observed {
        for t in &self.tasks {
            t.abort();
        }
        std::mem::take(&mut *lock(&self.state))
    }
}

/// Plays the Job controller: marks a Job complete a while after it appeared.
#[derive(Debug, Clone)]
struct Completer {
    jobs: Api<Job>,
    permits: Arc<Semaphore>,
    hold: Duration,
}

impl Completer {
    fn complete_later(&self, st: Arc<Mutex<Observed>>, job: String, wfe: String, seen: Instant) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((seen + this.hold).into()).await;
            let Ok(_permit) = this.permits.acquire().await else {
                return;
            };
            let now = Time(Timestamp::now());
            // What the API server (1.37) requires of a finished Job: startTime, completionTime,
            // succeeded, and SuccessCriteriaMet=True before Complete=True.
            let condition = |type_: &str| {
                json!({
                    "type": type_, "status": "True", "reason": "CompletionsReached",
                    "message": "Reached expected number of succeeded pods",
                    "lastProbeTime": now, "lastTransitionTime": now,
                })
            };
            let patch = json!({"status": {
                "startTime": now,
                "completionTime": now,
                "succeeded": 1,
                "conditions": [condition("SuccessCriteriaMet"), condition("Complete")],
            }});
            let sent = Instant::now();
            lock(&st).complete_sent.insert(wfe.clone(), sent);
            if let Err(e) = this
                .jobs
                .patch_status(&job, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                let mut s = lock(&st);
                s.complete_sent.remove(&wfe);
                s.errors.push(format!("complete Job {job} of {wfe}: {e}"));
            }
        });
    }
}
