//! A reusable conformance suite for executors, run against a real API server.
//!
//! A backend's integration test calls [`run`] with its executor and a factory of
//! WorkflowExecutions. The suite checks the contract of the crate documentation: deterministic
//! names, idempotent create with adoption, "held by another" instead of an error, ownership on
//! delete, idempotent delete and NotFound reported as deleted externally.

use kube::ResourceExt;
use wfe_api::WorkflowExecution;

use crate::{CreateOutcome, DeleteOutcome, Executor, Observation, execution_name_for};

/// Runs the suite. `make` builds a WorkflowExecution with the given name and target (it must be
/// created in the cluster by the caller if the backend needs it to exist; the suite only needs
/// `metadata.uid` to be set).
pub async fn run<F>(executor: &dyn Executor, make: F) -> Result<(), String>
where
    F: Fn(&str, &str) -> WorkflowExecution,
{
    let target = format!("conformance/Deployment/app-{}", std::process::id());
    let first = make("conformance-first", &target);
    let second = make("conformance-second", &target);
    let name = execution_name_for(&first);
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };

    // Create, then create again: adopted, same reference.
    let created = executor
        .create(&first)
        .await
        .map_err(|e| format!("first create failed: {e}"))?;
    let CreateOutcome::Created(reference) = created else {
        return Err(format!("first create should create, got {created:?}"));
    };
    check(
        reference.name == name,
        "the resource name must be the deterministic execution name",
    )?;
    check(
        reference.kind == executor.resource_kind(),
        "the reference kind must be the executor's resource kind",
    )?;
    let again = executor
        .create(&first)
        .await
        .map_err(|e| format!("second create failed: {e}"))?;
    check(
        again == CreateOutcome::Adopted(reference.clone()),
        "a second create by the owner must adopt",
    )?;

    // Another WorkflowExecution on the same target: held by the first.
    match executor
        .create(&second)
        .await
        .map_err(|e| format!("competing create failed: {e}"))?
    {
        CreateOutcome::HeldBy { holder, .. } => check(
            holder.name == first.name_any(),
            "the holder must be the first WorkflowExecution",
        )?,
        other => {
            return Err(format!(
                "a competing create must report the holder, got {other:?}"
            ));
        }
    }

    // Status of a fresh resource is Running.
    match executor
        .status(&first)
        .await
        .map_err(|e| format!("status failed: {e}"))?
    {
        Observation::Running { .. } => {}
        other => return Err(format!("a new execution must be running, got {other:?}")),
    }

    // Delete by a non-owner leaves it; delete by the owner removes it; again is NotFound.
    let d = executor
        .delete(&second)
        .await
        .map_err(|e| format!("foreign delete failed: {e}"))?;
    check(
        d == DeleteOutcome::NotOwned,
        "delete by another WorkflowExecution must be refused",
    )?;
    let d = executor
        .delete(&first)
        .await
        .map_err(|e| format!("delete failed: {e}"))?;
    check(
        d == DeleteOutcome::Deleted,
        "delete by the owner must delete",
    )?;
    // Deletion may be asynchronous (finalizers); wait until it is gone.
    for _ in 0..100 {
        if executor
            .delete(&first)
            .await
            .map_err(|e| format!("delete failed: {e}"))?
            == DeleteOutcome::NotFound
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let d = executor
        .delete(&first)
        .await
        .map_err(|e| format!("repeated delete failed: {e}"))?;
    check(
        d == DeleteOutcome::NotFound,
        "a repeated delete must report NotFound",
    )?;
    match executor
        .status(&first)
        .await
        .map_err(|e| format!("status after delete failed: {e}"))?
    {
        Observation::DeletedExternally { name: n, .. } => {
            check(n == name, "deleted-externally must name the resource")?
        }
        other => {
            return Err(format!(
                "status of a deleted execution must be DeletedExternally, got {other:?}"
            ));
        }
    }
    Ok(())
}
