//! The reconcile metrics (issue #19), scraped from the operator binary's `/metrics` on the real
//! control plane: every call of the reconcile function is counted by result (`success`,
//! `requeue`, `error`) and timed, errors are counted by category, and the in-flight gauge and
//! the concurrency bound are exported.

mod common;

use std::time::Duration;

use common::{free_port, http_get};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use wfe_api::{Phase, WorkflowExecution};
use wfe_testing::audit::AuditReceiver;

/// A request the operator fails before execution (a tag-only Job image): reconciled, audited,
/// nothing run.
fn request(ns: &str, name: &str) -> WorkflowExecution {
    serde_json::from_value(json!({
        "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"executionEngine": "job",
                 "workflowRef": {"workflowId": "w", "version": "1", "containerImage": "registry.example.com/w:v1"},
                 "targetResource": format!("prod/Deployment/{name}"), "remediationRequestRef": {"name": "rr"}}
    }))
    .unwrap()
}

/// The sum of the samples of `metric` whose labels contain every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            (name == metric && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(url: &str) -> String {
    http_get(&format!("{url}/metrics"))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

#[test]
fn samples_are_read_by_name_and_labels() {
    let text = "# TYPE workflowexecution_reconcile_total counter\n\
        workflowexecution_reconcile_total{result=\"success\"} 4\n\
        workflowexecution_reconcile_total{result=\"error\"} 1\n\
        workflowexecution_reconcile_totalx{result=\"error\"} 7\n\
        workflowexecution_reconcile_active_workers 2\n";
    assert_eq!(sample(text, "workflowexecution_reconcile_total", &[]), 5.0);
    assert_eq!(
        sample(
            text,
            "workflowexecution_reconcile_total",
            &["result=\"error\""]
        ),
        1.0
    );
    assert_eq!(
        sample(text, "workflowexecution_reconcile_active_workers", &[]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_are_counted_by_result_timed_and_errors_by_category() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&admin, "recmetrics").await;
    let exec_ns = wfe_testing::namespace(&admin, "recmetrics-exec").await;
    let audit = AuditReceiver::start().await.unwrap();
    let metrics_port = free_port();
    let metrics = format!("http://127.0.0.1:{metrics_port}");
    let _operator = common::local_operator(
        &ns,
        &exec_ns,
        metrics_port,
        "we-operator-reconcile-metrics.log",
        &["--audit-url", &audit.url, "--concurrency", "3"],
    );

    // Before any reconcile: the series exist (rates and ratios have a denominator), nothing runs.
    let before = wfe_testing::wait_for("the operator to run", Duration::from_secs(60), || async {
        let text = scrape(&metrics).await;
        (sample(&text, "workflowexecution_reconcile_max_concurrency", &[]) == 3.0).then_some(text)
    })
    .await;
    for result in ["success", "requeue", "error"] {
        assert!(
            before.contains(&format!(
                "workflowexecution_reconcile_total{{result=\"{result}\"}}"
            )),
            "no {result} series:\n{before}"
        );
    }
    assert!(
        before.contains("workflowexecution_reconcile_active_workers "),
        "{before}"
    );

    // A request reconciled to its end: successes, each timed.
    let wfes: Api<WorkflowExecution> = Api::namespaced(admin.clone(), &ns);
    wfes.create(&PostParams::default(), &request(&ns, "first"))
        .await
        .unwrap();
    let after_first =
        wfe_testing::wait_for("reconciles counted", Duration::from_secs(60), || async {
            let done = wfes
                .get("first")
                .await
                .ok()
                .is_some_and(|w| w.phase() == Phase::Failed);
            let text = scrape(&metrics).await;
            let total = sample(&text, "workflowexecution_reconcile_total", &[]);
            // Every reconcile is timed (equal once nothing is in flight).
            let timed = sample(
                &text,
                "workflowexecution_reconcile_duration_seconds_count",
                &[],
            );
            (done
                && timed == total
                && sample(
                    &text,
                    "workflowexecution_reconcile_total",
                    &["result=\"success\""],
                ) >= 1.0)
                .then_some(text)
        })
        .await;
    assert!(
        after_first.contains(
            "workflowexecution_reconcile_duration_seconds_bucket{result=\"success\",le=\"0.001\"}"
        ),
        "a histogram with the reconcile buckets:\n{after_first}"
    );

    // The audit sink goes down: the next request's events cannot be delivered, so its reconciles
    // requeue for a later delivery, and deleting it fails (the finalizer delivers what is owed
    // first): errors of category `audit`, retried until the sink is back.
    audit.set_down(true);
    wfes.create(&PostParams::default(), &request(&ns, "second"))
        .await
        .unwrap();
    wfe_testing::wait_for("a requeue counted", Duration::from_secs(60), || async {
        let text = scrape(&metrics).await;
        (sample(
            &text,
            "workflowexecution_reconcile_total",
            &["result=\"requeue\""],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    wfes.delete("second", &DeleteParams::default())
        .await
        .unwrap();
    let failing = wfe_testing::wait_for("an error counted", Duration::from_secs(60), || async {
        let text = scrape(&metrics).await;
        (sample(
            &text,
            "workflowexecution_reconcile_errors_total",
            &["category=\"audit\""],
        ) >= 1.0)
            .then_some(text)
    })
    .await;
    // The error is counted by category before its result, so a scrape never sees more error
    // results than errors.
    let errors = sample(&failing, "workflowexecution_reconcile_errors_total", &[]);
    let error_results = sample(
        &failing,
        "workflowexecution_reconcile_total",
        &["result=\"error\""],
    );
    assert!(errors >= error_results, "{failing}");
    wfe_testing::wait_for("an error result", Duration::from_secs(10), || async {
        let text = scrape(&metrics).await;
        (sample(
            &text,
            "workflowexecution_reconcile_total",
            &["result=\"error\""],
        ) >= 1.0)
            .then_some(())
    })
    .await;

    // Back up: the deletion completes.
    audit.set_down(false);
    wfe_testing::wait_for(
        "the deletion to complete",
        Duration::from_secs(90),
        || async { wfes.get_opt("second").await.ok()?.is_none().then_some(()) },
    )
    .await;
    wfe_testing::wait_for(
        "nothing in flight once idle",
        Duration::from_secs(30),
        || async {
            let text = scrape(&metrics).await;
            (sample(&text, "workflowexecution_reconcile_active_workers", &[]) == 0.0).then_some(())
        },
    )
    .await;
}
