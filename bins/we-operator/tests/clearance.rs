//! Who asked and who cleared, stamped by the API server itself (issue #18): the admission
//! policies of deploy/admission-policies.yaml run on the real API server, users act through
//! impersonation, and the operator binary records what the API server stamped. No webhook, no
//! certificate, no signing key.

mod common;

use std::time::Duration;

use common::{admin_with_deploy, as_user, free_port, grant, refusal};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::{Value, json};
use wfe_api::{CLEARED_BY_ANNOTATION, CREATED_BY_ANNOTATION, Phase, WorkflowExecution, testing};
use wfe_testing::audit::AuditReceiver;

const REASON: &str =
    "the deployment manifest was fixed by the on-call engineer and verified in staging";

/// Binds the shipped identity policies (two mutating, one validating) to `ns` too, the way an
/// admin binds them to a watched namespace other than `kubernaut-system`.
async fn bind_identity_policies(client: &Client, ns: &str) -> Vec<(Api<DynamicObject>, String)> {
    let selector = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    let mut out = Vec::new();
    for (kind, policy, extra) in [
        (
            "MutatingAdmissionPolicyBinding",
            "workflowexecution-created-by.kubernaut.ai",
            json!({}),
        ),
        (
            "MutatingAdmissionPolicyBinding",
            "workflowexecution-cleared-by.kubernaut.ai",
            json!({}),
        ),
        (
            "ValidatingAdmissionPolicyBinding",
            "workflowexecution-identity.kubernaut.ai",
            json!({"validationActions": ["Deny"]}),
        ),
    ] {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let name = format!("{ns}-{policy}");
        let mut spec =
            json!({"policyName": policy, "matchResources": {"namespaceSelector": selector}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        api.patch(
            &name,
            &PatchParams::apply("wfe-clearance-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
        out.push((api, name));
    }
    out
}

fn request(ns: &str, name: &str, annotations: Value) -> WorkflowExecution {
    // A tag-only Job image: the operator fails it before execution, so there is a failed
    // WorkflowExecution to clear without running anything.
    testing::wfe(name)
        .namespace(ns)
        .uid(None)
        .meta("annotations", annotations)
        .workflow("w")
        .image("registry.example.com/w:v1")
        .target("prod/Deployment/app")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_stamps_who_created_and_who_cleared_and_refuses_forgeries() {
    let admin = admin_with_deploy(&["admission-policies.yaml"]).await;
    let ns = wfe_testing::namespace(&admin, "clearance").await;
    let exec_ns = wfe_testing::namespace(&admin, "clearance-exec").await;
    let bindings = bind_identity_policies(&admin, &ns).await;
    for user in ["alice", "mallory"] {
        // RBAC alone would let them write any annotation.
        grant(
            &admin,
            &ns,
            user,
            &format!("wfe-{user}"),
            &["workflowexecutions"],
            &["get", "list", "watch", "create", "patch", "update"],
        )
        .await;
    }
    let alice: Api<WorkflowExecution> = Api::namespaced(as_user("alice").await, &ns);
    let mallory: Api<WorkflowExecution> = Api::namespaced(as_user("mallory").await, &ns);

    // The API server loads new policies and bindings within a second or two: wait until dry
    // runs show all three at work (both stamps, and a forged stamp refused).
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wfe_testing::wait_for(
        "the identity policies to be in force",
        Duration::from_secs(30),
        || async {
            let stamped = alice
                .create(
                    &dry,
                    &request(&ns, "probe", json!({"kubernaut.ai/clear-block": REASON})),
                )
                .await
                .ok()?;
            let a = stamped.annotations();
            (a.get(CREATED_BY_ANNOTATION)? == "alice" && a.get(CLEARED_BY_ANNOTATION)? == "alice")
                .then_some(())?;
            alice
                .create(
                    &dry,
                    &request(&ns, "probe", json!({CLEARED_BY_ANNOTATION: "bob"})),
                )
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;

    let audit = AuditReceiver::start().await.unwrap();
    let audit_url = audit.url.clone();
    let mut operator = common::local_operator(
        &ns,
        &exec_ns,
        free_port(),
        "we-operator-clearance.log",
        &["--audit-url", &audit_url],
    );

    // Alice creates a request claiming to be someone else: the API server stamps her name.
    let created = alice
        .create(
            &PostParams::default(),
            &request(
                &ns,
                "blocked",
                json!({CREATED_BY_ANNOTATION: "orchestrator", CLEARED_BY_ANNOTATION: "bob"}),
            ),
        )
        .await;
    let (code, message) = refusal("a forged cleared-by on create", created);
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("cleared-by") && message.contains("\"bob\" by alice"),
        "{message}"
    );
    let created = alice
        .create(
            &PostParams::default(),
            &request(
                &ns,
                "blocked",
                json!({CREATED_BY_ANNOTATION: "orchestrator"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.annotations()[CREATED_BY_ANNOTATION], "alice");
    let wfes: Api<WorkflowExecution> = Api::namespaced(admin.clone(), &ns);
    wfe_testing::wait_for("the request to fail", Duration::from_secs(60), || async {
        wfes.get("blocked")
            .await
            .ok()
            .filter(|w| w.phase() == Phase::Failed)
    })
    .await;
    let annotate = |pairs: Value| json!({"metadata": {"annotations": pairs}});
    let merge = PatchParams::default();

    // Forgeries, each refused by the API server with a message naming the culprit.
    let (code, message) = refusal(
        "mallory rewriting created-by",
        mallory
            .patch(
                "blocked",
                &merge,
                &Patch::Merge(annotate(json!({CREATED_BY_ANNOTATION: "mallory"}))),
            )
            .await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("creating user (alice)") && message.contains("\"mallory\" by mallory"),
        "{message}"
    );
    let (code, message) = refusal(
        "mallory stamping alice as the clearer",
        mallory
            .patch(
                "blocked",
                &merge,
                &Patch::Merge(annotate(json!({CLEARED_BY_ANNOTATION: "alice"}))),
            )
            .await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("\"alice\" by mallory"), "{message}");
    let (_, message) = refusal(
        "a reason of two words",
        alice
            .patch(
                "blocked",
                &merge,
                &Patch::Merge(annotate(json!({"kubernaut.ai/clear-block": "fixed it"}))),
            )
            .await,
    );
    assert!(
        message.contains("the reason has 2 word(s); at least 10"),
        "{message}"
    );
    // Writing status.blockClearance directly is refused by the status policy
    // (bins/we-operator/tests/policy.rs), which is bound to kubernaut-system.

    // Alice clears the block, naming Bob: the API server stamps Alice, the operator records her.
    let cleared = alice
        .patch(
            "blocked",
            &merge,
            &Patch::Merge(annotate(
                json!({"kubernaut.ai/clear-block": REASON, CLEARED_BY_ANNOTATION: "bob"}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(cleared.annotations()[CLEARED_BY_ANNOTATION], "alice");
    let done = wfe_testing::wait_for(
        "the clearance to be recorded",
        Duration::from_secs(60),
        || async {
            wfes.get("blocked")
                .await
                .ok()
                .and_then(|w| w.status.and_then(|s| s.block_clearance))
        },
    )
    .await;
    assert_eq!(done.cleared_by, "alice");
    assert_eq!(done.clear_reason, REASON);

    // The audit trail names both: who asked (every event) and who cleared.
    let events = wfe_testing::wait_for(
        "the block.cleared audit event",
        Duration::from_secs(60),
        || async {
            let events = audit.events();
            events
                .iter()
                .any(|e| {
                    e["resource_id"] == "blocked"
                        && e["event_type"] == "workflowexecution.block.cleared"
                })
                .then_some(events)
        },
    )
    .await;
    for e in events.iter().filter(|e| e["resource_id"] == "blocked") {
        assert_eq!(e["event_data"]["created_by"], "alice", "{e}");
    }
    let cleared_event = events
        .iter()
        .find(|e| e["event_type"] == "workflowexecution.block.cleared")
        .unwrap();
    assert_eq!(cleared_event["event_data"]["cleared_by"], "alice");
    assert_eq!(cleared_event["actor_id"], "user/alice");

    // Mallory changing the reason afterwards is stamped as Mallory, and the recorded clearance
    // stays Alice's.
    let restamped = mallory
        .patch(
            "blocked",
            &merge,
            &Patch::Merge(annotate(
                json!({"kubernaut.ai/clear-block": format!("{REASON} again")}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(restamped.annotations()[CLEARED_BY_ANNOTATION], "mallory");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = wfes.get("blocked").await.unwrap().status.unwrap();
    assert_eq!(record.block_clearance.unwrap().cleared_by, "alice");

    for (api, name) in bindings {
        api.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    operator.kill().await.ok();
}
