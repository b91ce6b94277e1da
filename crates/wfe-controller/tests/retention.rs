//! Retention on the real control plane: a finished WorkflowExecution nothing needs any more is
//! deleted after the retention time; one that blocks its target stays until the block is
//! cleared.

mod support;

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::*;
use wfe_api::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_executions_go_after_the_retention_time_but_blocks_stay() {
    // Cooldown 1 s, retention 3 s.
    let h = Harness::start_with_retention("retain", guards(1_000), Duration::from_secs(3)).await;

    // A success: deleted once its lock is released and 3 s have passed since it finished.
    h.create(&h.wfe("done", Some("job"), "production/Deployment/fine", &[]))
        .await;
    h.wait_phase("done", Phase::Succeeded).await;
    wfe_testing::wait_for("the succeeded execution is deleted", TIMEOUT, || async {
        h.wfes()
            .get_opt("done")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // Its audit trail was complete before it went.
    let types = h.audit.types_for("done");
    assert!(
        types
            .iter()
            .any(|t| t == "workflowexecution.workflow.completed"),
        "{types:?}"
    );

    // A failure after the workflow started blocks its target: it stays, well past 3 s.
    let target = "production/Deployment/broken";
    let params = [("KWOK_RESULT", "fail"), ("KWOK_EXIT_CODE", "2")];
    h.create(&h.wfe("broke", Some("job"), target, &params))
        .await;
    h.wait_phase("broke", Phase::Failed).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let kept = h.wfes().get_opt("broke").await.unwrap();
    assert!(
        kept.is_some_and(|w| w.metadata.deletion_timestamp.is_none()),
        "a WorkflowExecution that blocks its target must not be deleted by retention"
    );

    // Cleared: now nothing needs it, and it goes too.
    let reason = "the deployment was fixed by hand and verified by the on-call engineer";
    let clear = json!({"metadata": {"annotations": {"kubernaut.ai/clear-block": reason}}});
    h.wfes()
        .patch("broke", &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .unwrap();
    wfe_testing::wait_for("the cleared execution is deleted", TIMEOUT, || async {
        h.wfes()
            .get_opt("broke")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}
