//! Issue #18 on the real control plane: targets are keyed by the kind the API server serves, so
//! every writing of one kind is one lock and keeps today's execution name; what cannot be
//! resolved, and what the workflow policy does not allow, fails before execution with a reason,
//! an Event and an audit record, and nothing is created.

mod support;

use std::time::Duration;

use support::*;
use wfe_api::{FailureReason, Phase};
use wfe_controller::policy::WorkflowPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_writing_of_a_kind_is_one_target() {
    let h = Harness::start("trust-keys", guards(60_000)).await;
    // Written as the Kind: the execution name is today's (`n/deployment/app`).
    h.create(&h.wfe(
        "as-kind",
        Some("job"),
        "n/Deployment/app",
        &[("KWOK_RESULT", "hold")],
    ))
    .await;
    h.wait_phase("as-kind", Phase::Running).await;
    // The execution name of today's key form, computed by hand: unchanged across the upgrade.
    let name = format!("wfe-{}", &sha256_hex("n/deployment/app")[..16]);
    assert!(h.jobs().get_opt(&name).await.unwrap().is_some());

    // The plural, a short name and the group-qualified forms are the same target: deduplicated.
    for (n, target) in [
        ("as-plural", "n/deployments/app"),
        ("as-short-name", "n/deploy/app"),
        ("as-qualified", "n/deployment.apps/app"),
        ("as-qualified-plural", "n/Deployments.apps/app"),
    ] {
        h.create(&h.wfe(n, Some("job"), target, &[])).await;
        let w = h.wait_phase(n, Phase::Failed).await;
        let d = status(&w).failure_details.clone().unwrap();
        assert_eq!(d.reason, FailureReason::Deduplicated, "{n}: {}", d.message);
        let holder = status(&w).deduplicated_by.clone().unwrap_or_default();
        assert!(holder.ends_with("/as-kind"), "{n}: {holder}");
    }
    assert_eq!(h.jobs_list().await.len(), 1, "one Job for one target");

    // An unknown kind: refused before execution, with an Event and an audit record, and no
    // hot loop (the object is not rewritten once failed).
    h.create(&h.wfe("unknown-kind", Some("job"), "n/Deploymnet/app", &[]))
        .await;
    let w = h.wait_phase("unknown-kind", Phase::Failed).await;
    let d = status(&w).failure_details.clone().unwrap();
    assert_eq!(d.reason, FailureReason::ConfigurationError);
    assert!(
        d.message.contains("kind \"Deploymnet\" is not served"),
        "{}",
        d.message
    );
    assert!(!d.was_execution_failure);
    h.wait_event("unknown-kind", "InvalidTarget").await;
    h.wait_audit("unknown-kind", &["workflowexecution.workflow.failed"])
        .await;
    let version = w.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = h.wfes().get("unknown-kind").await.unwrap();
    assert_eq!(again.metadata.resource_version, version, "not rewritten");
    assert_eq!(h.jobs_list().await.len(), 1, "nothing created");
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_workflow_policy_fail_before_execution() {
    let policy = WorkflowPolicy::from_yaml(
        r#"
default:
  images: ["registry.example.com/remediation/"]
  serviceAccounts: ["kubernaut-workflow-runner"]
  secrets: []
workflows:
  restart-with-increased-memory:
    secrets: ["allowed-credentials"]
"#,
    )
    .unwrap();
    let h = Harness::start_with_policy("trust-policy", guards(0), policy).await;
    h.secret("allowed-credentials").await;
    h.secret("db-root-password").await;

    let with = |name: &str, target: &str, edit: &dyn Fn(&mut wfe_api::WorkflowExecution)| {
        let mut w = h.wfe(name, Some("job"), target, &[]);
        edit(&mut w);
        w
    };
    let cases: Vec<(&str, wfe_api::WorkflowExecution, &str)> = vec![
        (
            "other-registry",
            with("other-registry", "n/Deployment/p1", &|w| {
                w.spec.workflow_ref.container_image =
                    format!("registry.example.com.evil.io/remediation/restart@{DIGEST}")
            }),
            "containerImage \"registry.example.com.evil.io/remediation/restart@",
        ),
        (
            "other-sa",
            with("other-sa", "n/Deployment/p2", &|w| {
                w.spec.execution_config = Some(wfe_api::ExecutionConfig {
                    service_account_name: Some("cluster-admin".into()),
                    ..Default::default()
                })
            }),
            "serviceAccountName \"cluster-admin\" is not allowed by the default policy",
        ),
        (
            "other-secret",
            with("other-secret", "n/Deployment/p3", &|w| {
                w.spec.workflow_ref.dependencies = Some(
                    serde_json::from_value(serde_json::json!({"secrets": [
                        {"name": "allowed-credentials"}, {"name": "db-root-password"}]}))
                    .unwrap(),
                )
            }),
            "secrets[1] \"db-root-password\" is not allowed by the policy of workflow \"restart-with-increased-memory\"",
        ),
    ];
    for (_, w, _) in &cases {
        h.create(w).await;
    }
    for (name, _, text) in &cases {
        let w = h.wait_phase(name, Phase::Failed).await;
        let d = status(&w).failure_details.clone().unwrap();
        assert_eq!(d.reason, FailureReason::ConfigurationError, "{name}");
        assert!(
            d.message.contains("refused by the workflow policy") && d.message.contains(text),
            "{name}: {}",
            d.message
        );
        assert!(!d.was_execution_failure, "{name}");
        h.wait_event(name, "PolicyViolation").await;
        h.wait_audit(name, &["workflowexecution.workflow.failed"])
            .await;
        let audited = h
            .audit
            .for_resource(name)
            .into_iter()
            .find(|e| e["event_type"] == "workflowexecution.workflow.failed")
            .unwrap();
        assert!(
            audited["event_data"]["failure_message"]
                .as_str()
                .unwrap()
                .contains(text),
            "{audited}"
        );
    }
    assert!(h.jobs_list().await.is_empty(), "nothing ran");

    // Inside the policy: it runs.
    let ok = with("allowed", "n/Deployment/p4", &|w| {
        w.spec.workflow_ref.dependencies = Some(
            serde_json::from_value(
                serde_json::json!({"secrets": [{"name": "allowed-credentials"}]}),
            )
            .unwrap(),
        )
    });
    h.create(&ok).await;
    h.wait_phase("allowed", Phase::Succeeded).await;
}
