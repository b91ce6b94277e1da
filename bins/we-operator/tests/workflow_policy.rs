//! The operator refuses to start with a workflow policy it cannot parse: running unrestricted by
//! mistake would be worse than not running (issue #18). Once running, it follows the file: a
//! changed ConfigMap (a symlink swap) is put in force without a restart, and a bad change is
//! logged and counted while the last good policy stays in force.

mod common;

use std::process::Command;

#[test]
fn an_invalid_workflow_policy_stops_the_operator_before_it_starts() {
    let dir = std::env::temp_dir().join(format!("wfe-policy-flag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, says) in [
        (
            "typo.yaml",
            "default: {imagez: [\"registry.example.com/team/\"]}",
            "unknown field `imagez`",
        ),
        (
            "registry-only.yaml",
            "default: {images: [\"registry.example.com\"]}",
            "image entry \"registry.example.com\"",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_we-operator"))
            .args(["run", "--log-format", "plain", "--workflow-policy-file"])
            .arg(&path)
            // No cluster is needed to refuse it: the policy is read first.
            .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("invalid workflow policy") && stderr.contains(says),
            "{name}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ConfigMap volume as the kubelet writes it: `policy.yaml` → `..data/policy.yaml`, and an
/// update swaps the `..data` symlink to a new timestamped folder in one rename.
fn mount(dir: &std::path::Path, version: u32, text: &str) {
    let data = dir.join(format!("..2026_11_30_v{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("policy.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("policy.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/policy.yaml", &link).unwrap();
    }
}

/// The sum of the samples of `metric` whose labels contain `label`.
fn sample(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            (name == metric && rest.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_file_is_reloaded_and_a_bad_one_keeps_the_last_good_policy() {
    use kube::{Api, api::PostParams};
    use std::time::Duration;
    use wfe_api::{Phase, WorkflowExecution};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&admin, "policy-reload").await;
    let exec_ns = wfe_testing::namespace(&admin, "policy-reload-exec").await;
    let dir = std::env::temp_dir().join(format!("wfe-policy-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    mount(
        &dir,
        1,
        "default: {images: [\"registry.example.com/team/\"]}\n",
    );

    let metrics_port = common::free_port();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let log_path = common::repo().join("target/we-operator-policy-reload.log");
    let policy = dir.join("policy.yaml").display().to_string();
    let _operator = common::local_operator(
        &ns,
        &exec_ns,
        metrics_port,
        "we-operator-policy-reload.log",
        &[
            "--workflow-policy-file",
            &policy,
            "--workflow-policy-reload-interval",
            "1s",
        ],
    );

    let wfes: Api<WorkflowExecution> = Api::namespaced(admin.clone(), &ns);
    let image = format!("other.example.com/team/w@sha256:{}", "ab".repeat(32));
    // Each request fails before execution: refused by the policy, or (allowed) because the
    // workflow's service account does not exist in the test's execution namespace.
    let outcome = |name: &'static str| {
        let (wfes, ns, image) = (wfes.clone(), ns.clone(), image.clone());
        async move {
            let w: WorkflowExecution = serde_json::from_value(serde_json::json!({
                "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"executionEngine": "job",
                         "workflowRef": {"workflowId": "w", "version": "1", "containerImage": image},
                         "targetResource": format!("prod/Deployment/{name}"),
                         "remediationRequestRef": {"name": "rr"}}
            }))
            .unwrap();
            wfes.create(&PostParams::default(), &w).await.unwrap();
            let failed = wfe_testing::wait_for(
                &format!("{name} to fail"),
                Duration::from_secs(60),
                || async {
                    wfes.get(name)
                        .await
                        .ok()
                        .filter(|w| w.phase() == Phase::Failed)
                },
            )
            .await;
            failed
                .status
                .and_then(|s| s.failure_details)
                .map(|d| d.message)
                .unwrap_or_default()
        }
    };
    let refused = "refused by the workflow policy";

    // The policy read at start refuses the image.
    let first = outcome("before").await;
    assert!(first.contains(refused), "{first}");

    // The ConfigMap is updated (symlink swap): the new policy is in force without a restart.
    mount(
        &dir,
        2,
        "default: {images: [\"other.example.com/team/\"]}\n",
    );
    let wait_metric = |metric: &'static str, label: &'static str, want: f64| {
        let metrics = metrics.clone();
        async move {
            wfe_testing::wait_for(
                &format!("{metric}{{{label}}} = {want}"),
                Duration::from_secs(30),
                || async {
                    let text = common::http_get(&metrics).await?.1;
                    (sample(&text, metric, label) == want).then_some(())
                },
            )
            .await
        }
    };
    wait_metric(
        "workflowexecution_workflow_policy_reloads_total",
        "result=\"loaded\"",
        1.0,
    )
    .await;
    let second = outcome("after-reload").await;
    assert!(!second.contains(refused), "{second}");

    // A bad update: logged with the reason and counted; the last good policy stays in force.
    mount(
        &dir,
        3,
        "default: {imagez: [\"registry.example.com/team/\"]}\n",
    );
    wait_metric(
        "workflowexecution_workflow_policy_reloads_total",
        "result=\"invalid\"",
        1.0,
    )
    .await;
    wait_metric(
        "workflowexecution_workflow_policy_last_reload_successful",
        "",
        0.0,
    )
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("invalid workflow policy file; keeping the last good policy"))
        .unwrap_or_else(|| panic!("no log line for the bad policy:\n{log}"));
    assert!(
        line.contains("imagez") && line.contains("policy.yaml"),
        "{line}"
    );
    let third = outcome("after-bad-file").await;
    assert!(!third.contains(refused), "the last good policy: {third}");

    // Fixed again: valid, in force, the gauge back at 1.
    mount(
        &dir,
        4,
        "default: {images: [\"registry.example.com/team/\"]}\n",
    );
    wait_metric(
        "workflowexecution_workflow_policy_last_reload_successful",
        "",
        1.0,
    )
    .await;
    let fourth = outcome("after-fix").await;
    assert!(fourth.contains(refused), "{fourth}");
    let _ = std::fs::remove_dir_all(&dir);
}
