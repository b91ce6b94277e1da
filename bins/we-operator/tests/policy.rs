//! The guarantees of deploy/admission-policies.yaml, enforced by the real API server itself
//! (Validating- and MutatingAdmissionPolicy): users act through impersonation with full RBAC rights on
//! WorkflowExecutions and their status, and still cannot rewrite the operator's record or
//! silently lift a block by deleting the execution that set it.

mod common;

use std::time::Duration;

use common::*;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use wfe_api::{WorkflowExecution, testing};

const OPERATOR: &str = "system:serviceaccount:kubernaut-system:we-operator";
const INTRUDER: &str = "wfe-policy-intruder";

fn request(name: &str) -> WorkflowExecution {
    testing::wfe(name)
        .namespace(SYSTEM_NS)
        .uid(None)
        .workflow("restart")
        .image(&format!("registry.example.com/restart@{}", testing::DIGEST))
        .target(&format!("production/Deployment/{name}"))
        .spec(
            "remediationRequestRef",
            json!({"name": format!("rr-{name}")}),
        )
        .build()
}

fn failed_status() -> Value {
    json!({"status": {"phase": "Failed", "failureReason": "TaskFailed",
        "failureDetails": {"reason": "TaskFailed", "message": "exit code 2", "wasExecutionFailure": true}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_writes_status_and_a_blocking_execution_cannot_be_deleted() {
    let admin =
        admin_with_deploy(&["namespaces.yaml", "rbac.yaml", "admission-policies.yaml"]).await;
    // Every verb on WorkflowExecutions and their status: RBAC alone would allow anything.
    grant(
        &admin,
        SYSTEM_NS,
        INTRUDER,
        &format!("{INTRUDER}-all"),
        &["workflowexecutions", "workflowexecutions/status"],
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    )
    .await;
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let (a, b) = (format!("policy-a-{suffix}"), format!("policy-b-{suffix}"));
    let wfes = Api::<WorkflowExecution>::namespaced(admin.clone(), SYSTEM_NS);
    for n in [&a, &b] {
        wfes.create(&PostParams::default(), &request(n))
            .await
            .unwrap();
    }
    let intruder = Api::<WorkflowExecution>::namespaced(as_user(INTRUDER).await, SYSTEM_NS);
    let operator = Api::<WorkflowExecution>::namespaced(as_user(OPERATOR).await, SYSTEM_NS);
    let merge = PatchParams::default();

    // A user with every RBAC right on the status cannot write it (the API server loads a new
    // policy within a second or two: wait for the first refusal; every attempt is a change, since
    // writing what is already there changes nothing and is allowed).
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let (code, message) = wfe_testing::wait_for(
        "the status policy to refuse the user",
        Duration::from_secs(30),
        || async {
            let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let change = json!({"status": {"phase": "Succeeded", "failureDetails": {
                "reason": "Unknown", "message": format!("attempt {n}"), "wasExecutionFailure": false}}});
            refused(
                intruder
                    .patch_status(&a, &merge, &Patch::Merge(change))
                    .await,
            )
        },
    )
    .await;
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("only the we-operator ServiceAccount writes the status"),
        "{message}"
    );
    // The operator can; its failed execution now blocks the target.
    for n in [&a, &b] {
        operator
            .patch_status(n, &merge, &Patch::Merge(failed_status()))
            .await
            .unwrap();
    }
    // Nobody else can change a guarded field, including forging a clearance or the audit record.
    for forged in [
        json!({"status": {"failureDetails": {"reason": "TaskFailed", "message": "x", "wasExecutionFailure": false}}}),
        json!({"status": {"blockClearance": {"clearedBy": "someone-else", "clearReason": "a reason long enough to be accepted by the operator when it counts words", "clearMethod": "StatusField"}}}),
        json!({"status": {"auditDelivered": ["workflowexecution.workflow.failed"]}}),
    ] {
        let (code, _) = refused(
            intruder
                .patch_status(&a, &merge, &Patch::Merge(&forged))
                .await,
        )
        .unwrap_or_else(|| panic!("{forged} was accepted"));
        assert_eq!(code, 403);
    }

    // Deleting the blocking execution would lift the block: refused, saying what to do (a dry
    // run first, until the policy is loaded, so that an early attempt deletes nothing).
    wfe_testing::wait_for(
        "the block policy to refuse the deletion",
        Duration::from_secs(30),
        || async {
            let dry = DeleteParams {
                dry_run: true,
                ..DeleteParams::default()
            };
            refused(intruder.delete(&a, &dry).await)
        },
    )
    .await;
    let (code, message) = refusal(
        "deleting the blocking execution",
        intruder.delete(&a, &DeleteParams::default()).await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("blocks its target") && message.contains("clear the block first"),
        "{message}"
    );
    assert!(wfes.get_opt(&a).await.unwrap().is_some(), "still there");

    // Once the operator recorded a clearance, the user may delete it.
    operator
        .patch_status(
            &a,
            &merge,
            &Patch::Merge(json!({"status": {"blockClearance": {
                "clearedBy": INTRUDER, "clearMethod": "Annotation",
                "clearReason": "the deployment manifest was fixed by the on-call engineer and verified in staging"}}})),
        )
        .await
        .unwrap();
    intruder.delete(&a, &DeleteParams::default()).await.unwrap();

    // Break-glass: a cluster administrator may delete a blocking execution.
    wfes.delete(&b, &DeleteParams::default()).await.unwrap();

    // No operator runs here to remove the finalizer the creation policy may have added.
    for n in [&a, &b] {
        let _ = wfes
            .patch_metadata(
                n,
                &merge,
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
}

/// The finalizer is on a WorkflowExecution from its creation (policy 5), so the operator's
/// first write on a new request is its dispatch. Shown with dry-run creates, which go through
/// admission and store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_is_there_from_creation() {
    let admin =
        admin_with_deploy(&["namespaces.yaml", "rbac.yaml", "admission-policies.yaml"]).await;
    let wfes = Api::<WorkflowExecution>::namespaced(admin.clone(), SYSTEM_NS);
    let dry = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let created = wfe_testing::wait_for(
        "the finalizer policy to add the finalizer",
        Duration::from_secs(30),
        || async {
            let created = wfes.create(&dry, &request("finalizer-at-creation")).await;
            created
                .ok()
                .filter(|w| w.finalizers().iter().any(|f| f == wfe_api::FINALIZER))
        },
    )
    .await;
    assert_eq!(created.finalizers(), [wfe_api::FINALIZER], "exactly once");
    // A request that names the finalizer already keeps one copy of it.
    let mut named = request("finalizer-named");
    named.metadata.finalizers = Some(vec![wfe_api::FINALIZER.to_string()]);
    let created = wfes.create(&dry, &named).await.unwrap();
    assert_eq!(created.finalizers(), [wfe_api::FINALIZER]);
}
