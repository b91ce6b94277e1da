//! Malformed and hostile WorkflowExecutions: each is refused by the API server with a message
//! naming the field, or ends `Failed` with a clear reason; the operator never loops on them and
//! keeps serving valid requests.

mod support;

use std::{collections::BTreeMap, time::Duration};

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;
use wfe_api::{FailureReason, Phase, WorkflowExecution};

fn object(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn valid_spec(target: &str) -> Value {
    json!({
        "executionEngine": "job",
        "workflowRef": {"workflowId": "restart", "version": "1", "containerImage": format!("registry.example.com/w@{DIGEST}")},
        "targetResource": target,
        "remediationRequestRef": {"name": "rr"}
    })
}

fn with(mut spec: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut spec;
    for p in &path[..path.len() - 1] {
        at = at.get_mut(*p).unwrap();
    }
    let last = path[path.len() - 1];
    if value.is_null() {
        at.as_object_mut().unwrap().remove(last);
    } else {
        at[last] = value;
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_requests() {
    let h = Harness::start("bad-table", guards(30_000)).await;
    let api = kube::Api::<kube::core::DynamicObject>::namespaced_with(
        h.client.clone(),
        &h.ns,
        &kube::core::ApiResource::erase::<WorkflowExecution>(&()),
    );
    let many: BTreeMap<String, String> = (0..300)
        .map(|i| (format!("P{i}"), "v".to_string()))
        .collect();

    // Refused by the API server, with the field named in the message.
    let refused: Vec<(&str, Value, &str)> = vec![
        (
            "no-workflowref",
            with(valid_spec("n/Deployment/a1"), &["workflowRef"], Value::Null),
            "workflowRef",
        ),
        (
            "no-target",
            with(
                valid_spec("n/Deployment/a2"),
                &["targetResource"],
                Value::Null,
            ),
            "targetResource",
        ),
        (
            "no-rr",
            with(
                valid_spec("n/Deployment/a3"),
                &["remediationRequestRef"],
                Value::Null,
            ),
            "remediationRequestRef",
        ),
        (
            "empty-workflow-id",
            with(
                valid_spec("n/Deployment/a4"),
                &["workflowRef", "workflowId"],
                json!(""),
            ),
            "workflowId",
        ),
        (
            "empty-image",
            with(
                valid_spec("n/Deployment/a5"),
                &["workflowRef", "containerImage"],
                json!(""),
            ),
            "containerImage",
        ),
        (
            "unknown-engine",
            with(
                valid_spec("n/Deployment/a6"),
                &["executionEngine"],
                json!("ansible"),
            ),
            "executionEngine",
        ),
        ("target-1-part", valid_spec("my-app"), "targetResource"),
        ("target-4-parts", valid_spec("a/b/c/d"), "targetResource"),
        ("target-empty-part", valid_spec("ns//x"), "targetResource"),
        (
            "param-dash",
            with(
                valid_spec("n/Deployment/a7"),
                &["parameters"],
                json!({"bad-key": "x"}),
            ),
            "parameters",
        ),
        (
            "param-digit",
            with(
                valid_spec("n/Deployment/a8"),
                &["parameters"],
                json!({"1abc": "x"}),
            ),
            "parameters",
        ),
        (
            "param-home",
            with(
                valid_spec("n/Deployment/a9"),
                &["parameters"],
                json!({"HOME": "/"}),
            ),
            "parameters",
        ),
        (
            "param-wfe",
            with(
                valid_spec("n/Deployment/b1"),
                &["parameters"],
                json!({"WFE_NAME": "x"}),
            ),
            "parameters",
        ),
        (
            "param-target",
            with(
                valid_spec("n/Deployment/b2"),
                &["parameters"],
                json!({"TARGET_RESOURCE": "x"}),
            ),
            "parameters",
        ),
        (
            "param-too-many",
            with(valid_spec("n/Deployment/b3"), &["parameters"], json!(many)),
            "parameters",
        ),
        (
            "confidence-high",
            with(valid_spec("n/Deployment/b4"), &["confidence"], json!(1.5)),
            "confidence",
        ),
        (
            "confidence-negative",
            with(valid_spec("n/Deployment/b5"), &["confidence"], json!(-1)),
            "confidence",
        ),
        (
            "timeout-zero",
            with(
                valid_spec("n/Deployment/b6"),
                &["executionConfig"],
                json!({"timeout": "0s"}),
            ),
            "timeout",
        ),
        (
            "timeout-words",
            with(
                valid_spec("n/Deployment/b7"),
                &["executionConfig"],
                json!({"timeout": "forever"}),
            ),
            "timeout",
        ),
        (
            "image-too-long",
            with(
                valid_spec("n/Deployment/b8"),
                &["workflowRef", "containerImage"],
                json!("r/".repeat(1100)),
            ),
            "containerImage",
        ),
        (
            "dependency-no-name",
            with(
                valid_spec("n/Deployment/b9"),
                &["workflowRef", "dependencies"],
                json!({"secrets": [{"name": ""}]}),
            ),
            "name",
        ),
    ];
    let mut count = 0;
    for (name, spec, field) in refused {
        let obj: kube::core::DynamicObject =
            serde_json::from_value(object(&h.ns, name, spec)).unwrap();
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(name);
        assert!(
            err.to_string().contains(field),
            "{name}: the refusal must name {field}: {err}"
        );
        count += 1;
    }

    // Accepted by the API server, failed by the operator with a clear reason.
    let ghost_sa = with(
        valid_spec("n/Deployment/c3"),
        &["executionConfig"],
        json!({"serviceAccountName": "ghost"}),
    );
    let failing: Vec<(&str, Value, FailureReason, &str)> = vec![
        (
            "tag-only",
            with(
                valid_spec("n/Deployment/c1"),
                &["workflowRef", "containerImage"],
                json!("registry.example.com/w:v1"),
            ),
            FailureReason::ConfigurationError,
            "pinned by digest",
        ),
        (
            "image-spaces",
            with(
                valid_spec("n/Deployment/c2"),
                &["workflowRef", "containerImage"],
                json!("bad image"),
            ),
            FailureReason::ConfigurationError,
            "containerImage",
        ),
        (
            "no-such-sa",
            ghost_sa,
            FailureReason::ConfigurationError,
            "ghost",
        ),
        (
            "no-such-secret",
            with(
                valid_spec("n/Deployment/c4"),
                &["workflowRef", "dependencies"],
                json!({"secrets": [{"name": "nope"}]}),
            ),
            FailureReason::ConfigurationError,
            "Secret \"nope\"",
        ),
        (
            "no-such-configmap",
            with(
                valid_spec("n/Deployment/c5"),
                &["workflowRef", "dependencies"],
                json!({"configMaps": [{"name": "missing-cm"}]}),
            ),
            FailureReason::ConfigurationError,
            "ConfigMap \"missing-cm\"",
        ),
        (
            "one-mib-value",
            with(
                valid_spec("n/Deployment/c6"),
                &["parameters"],
                json!({"BIG": "x".repeat(1024 * 1024)}),
            ),
            FailureReason::ConfigurationError,
            "spec.parameters",
        ),
        (
            "timeout-too-long",
            with(
                valid_spec("n/Deployment/c7"),
                &["executionConfig"],
                json!({"timeout": "1000h"}),
            ),
            FailureReason::ConfigurationError,
            "timeout",
        ),
        (
            "bad-sa-name",
            with(
                valid_spec("n/Deployment/c8"),
                &["executionConfig"],
                json!({"serviceAccountName": "Bad_SA"}),
            ),
            FailureReason::ConfigurationError,
            "serviceAccountName",
        ),
        (
            "bad-dependency-name",
            with(
                valid_spec("n/Deployment/c9"),
                &["workflowRef", "dependencies"],
                json!({"secrets": [{"name": "My Secret"}]}),
            ),
            FailureReason::ConfigurationError,
            "dependencies",
        ),
    ];
    // Targets that are not Kubernetes targets (#18): refused before execution, naming the part.
    let mut failing = failing;
    for (name, target, text) in [
        (
            "unknown-kind",
            "n/Deploymentz/g1",
            "kind \"Deploymentz\" is not served",
        ),
        (
            "target-dollar",
            "n/Deployment/a$b",
            "name \"a$b\" is not a valid object name",
        ),
        (
            "target-semicolon",
            "n/Deployment/a;reboot",
            "name \"a;reboot\"",
        ),
        (
            "target-quote",
            "n/Deployment/a\"b",
            "is not a valid object name",
        ),
        ("target-single-quote", "n/Deployment/a'b", "name \"a'b\""),
        ("target-newline", "n/Deployment/a\nb", "name \"a\\nb\""),
        (
            "unicode-target",
            "prod/Deployment/ünïcödé-app",
            "is not a valid object name",
        ),
        ("bad-namespace", "N_S/Deployment/g2", "namespace \"N_S\""),
        ("namespaced-node", "n/Node/g3", "Node is cluster-scoped"),
    ] {
        failing.push((
            name,
            valid_spec(target),
            FailureReason::ConfigurationError,
            text,
        ));
    }
    for (name, spec, _, _) in &failing {
        let obj: kube::core::DynamicObject =
            serde_json::from_value(object(&h.ns, name, spec.clone())).unwrap();
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{name} should be accepted: {e}"));
    }
    for (name, _, reason, text) in &failing {
        let w = h.wait_phase(name, Phase::Failed).await;
        let d = status(&w).failure_details.clone().unwrap();
        assert_eq!(d.reason, *reason, "{name}: {}", d.message);
        assert!(
            d.message.contains(text),
            "{name}: {:?} lacks {text:?}",
            d.message
        );
        assert!(!d.was_execution_failure, "{name}");
        count += 1;
    }

    // Hostile but valid: values reach the container verbatim.
    let hostile = "a b; $(reboot) `id` \"q\" 'x' | tee /etc/passwd\nline2\ttab ünï 🚀";
    h.create(&h.wfe(
        "hostile-values",
        Some("job"),
        "n/Deployment/d1",
        &[("VALUE", hostile)],
    ))
    .await;
    for name in ["hostile-values"] {
        h.wait_phase(name, Phase::Succeeded).await;
        count += 1;
    }
    let job = h
        .jobs_list()
        .await
        .into_iter()
        .find(|j| {
            j.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernaut.ai/workflow-execution"))
                .map(String::as_str)
                == Some("hostile-values")
        })
        .unwrap();
    let env = job.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert_eq!(
        env.iter()
            .find(|e| e.name == "VALUE")
            .unwrap()
            .value
            .as_deref(),
        Some(hostile)
    );

    // A spec edited after creation is refused.
    let err = h
        .wfes()
        .patch(
            "hostile-values",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"targetResource": "n/Deployment/other"}})),
        )
        .await
        .expect_err("spec is immutable");
    assert!(err.to_string().contains("immutable"), "{err}");
    count += 1;

    // Deleted while its Job starts: nothing is left behind.
    h.create(&h.wfe(
        "deleted-early",
        Some("job"),
        "n/Deployment/e1",
        &[("KWOK_RESULT", "hold")],
    ))
    .await;
    h.wfes()
        .delete("deleted-early", &DeleteParams::default())
        .await
        .unwrap();
    wfe_testing::wait_for("deleted-early is gone", TIMEOUT, || async {
        h.wfes()
            .get_opt("deleted-early")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let name = wfe_executor::execution_name(&wfe_api::TargetKey::of("n/Deployment/e1"));
    wfe_testing::wait_for("its Job is gone", TIMEOUT, || async {
        h.jobs()
            .get_opt(&name)
            .await
            .unwrap()
            .is_none_or(|j| j.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    count += 1;
    assert!(count >= 30, "the table has {count} cases");

    // No hot loop: once settled, nothing is rewritten.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let versions = |list: Vec<WorkflowExecution>| -> BTreeMap<String, String> {
        list.into_iter()
            .map(|w| {
                (
                    w.metadata.name.clone().unwrap(),
                    w.metadata.resource_version.clone().unwrap(),
                )
            })
            .collect()
    };
    let before = versions(h.wfes().list(&Default::default()).await.unwrap().items);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = versions(h.wfes().list(&Default::default()).await.unwrap().items);
    assert_eq!(
        before, after,
        "settled WorkflowExecutions must not be rewritten"
    );

    // And the operator still serves valid requests.
    h.create(&h.wfe("still-serving", Some("job"), "n/Deployment/f1", &[]))
        .await;
    h.wait_phase("still-serving", Phase::Succeeded).await;
}

/// The API server's refusals name the culprit (CEL `messageExpression`): the offending parameter
/// key (the first one, at most 64 characters of it), the target, the timeout, the confidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_quote_the_offending_value() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&client, "bad-quote").await;
    let api = kube::Api::<kube::core::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &kube::core::ApiResource::erase::<WorkflowExecution>(&()),
    );
    let long_key = format!("9{}", "k".repeat(99));
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "bad-key",
            with(
                valid_spec("n/Deployment/q1"),
                &["parameters"],
                json!({"GOOD": "x", "bad-key": "y"}),
            ),
            "valid environment variable names ([A-Za-z_][A-Za-z0-9_]*); refused: \"bad-key\""
                .to_string(),
        ),
        (
            "reserved",
            with(
                valid_spec("n/Deployment/q2"),
                &["parameters"],
                json!({"GOOD": "x", "WFE_NAME": "y"}),
            ),
            "are reserved; refused: \"WFE_NAME\"".to_string(),
        ),
        (
            "long-key",
            with(
                valid_spec("n/Deployment/q3"),
                &["parameters"],
                json!({ long_key.as_str(): "y" }),
            ),
            format!("refused: \"{}...\"", &long_key[..64]),
        ),
        (
            "target",
            valid_spec("n//x"),
            "targetResource \"n//x\" must be".to_string(),
        ),
        (
            "timeout",
            with(
                valid_spec("n/Deployment/q4"),
                &["executionConfig"],
                json!({"timeout": "-5m"}),
            ),
            "timeout \"-5m\" must be a positive duration".to_string(),
        ),
        (
            "confidence",
            with(valid_spec("n/Deployment/q5"), &["confidence"], json!(7)),
            "confidence must be between 0 and 1, got more than 1".to_string(),
        ),
    ];
    for (name, spec, text) in cases {
        let obj: kube::core::DynamicObject =
            serde_json::from_value(object(&ns, name, spec)).unwrap();
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(name)
            .to_string();
        assert!(err.contains(&text), "{name}: {err} lacks {text}");
    }
}
