//! Target discovery after a late CRD (issue #18, DESIGN.md §7): a request naming a kind whose CRD
//! is installed after the operator started becomes resolvable without a restart. An unknown kind
//! refreshes API discovery, at most once per `wfe_controller::targets::REFRESH_EVERY`; before
//! the CRD exists the request fails naming the kind, after it a request on the same kind runs.
//! Its own test binary: the discovery index and its refresh clock are process-wide.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use support::*;
use wfe_api::{FailureReason, Phase};
use wfe_controller::targets::REFRESH_EVERY;

/// A namespaced CRD of a kind no other test uses (a fresh group and Kind per run).
fn crd(group: &str, kind: &str) -> CustomResourceDefinition {
    let plural = format!("{}s", kind.to_lowercase());
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_whose_crd_arrives_after_the_start_becomes_a_target_without_a_restart() {
    let h = Harness::start("late-crd", guards(60_000)).await;
    // Lower-case letters of the namespace's random suffix make the Kind and group unique.
    let suffix: String =
        h.ns.rsplit('-')
            .next()
            .unwrap()
            .chars()
            .map(|c| {
                if c.is_ascii_digit() {
                    (b'a' + (c as u8 - b'0')) as char
                } else {
                    c
                }
            })
            .collect();
    let kind = format!("Gizmo{suffix}");
    let group = format!("late-{suffix}.example.com");
    let target = format!("n/{kind}/app");

    // Before the CRD: the kind is unknown, the request fails before execution naming it (and
    // this miss refreshed discovery, so the next refresh is REFRESH_EVERY away).
    h.create(&h.wfe("before-crd", Some("job"), &target, &[]))
        .await;
    let missed = Instant::now();
    let w = h.wait_phase("before-crd", Phase::Failed).await;
    let d = status(&w).failure_details.clone().unwrap();
    assert_eq!(d.reason, FailureReason::ConfigurationError, "{}", d.message);
    assert!(
        d.message
            .contains(&format!("kind \"{kind}\" is not served")),
        "{}",
        d.message
    );

    // The CRD is installed while the operator runs.
    let crds: Api<CustomResourceDefinition> = Api::all(h.client.clone());
    let name = format!("{}s.{group}", kind.to_lowercase());
    crds.create(&PostParams::default(), &crd(&group, &kind))
        .await
        .unwrap();
    wfe_testing::wait_for("the CRD to be established", TIMEOUT, || async {
        let c = crds.get(&name).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;

    // Once a refresh is allowed again, a request on the kind resolves and runs: its Job exists.
    let wait = REFRESH_EVERY.saturating_sub(missed.elapsed()) + Duration::from_millis(500);
    tokio::time::sleep(wait).await;
    h.create(&h.wfe(
        "after-crd",
        Some("job"),
        &target,
        &[("KWOK_RESULT", "hold")],
    ))
    .await;
    let w = h.wait_phase("after-crd", Phase::Running).await;
    assert!(status(&w).failure_details.is_none());
    assert_eq!(
        h.jobs_list().await.len(),
        1,
        "the late kind's execution runs"
    );
    // Written by its plural, the same kind is the same target: deduplicated, no second Job.
    let plural_target = format!("n/{}s/app", kind.to_lowercase());
    h.create(&h.wfe("by-plural", Some("job"), &plural_target, &[]))
        .await;
    let w = h.wait_phase("by-plural", Phase::Failed).await;
    assert_eq!(
        status(&w).failure_details.as_ref().unwrap().reason,
        FailureReason::Deduplicated
    );

    crds.delete(&name, &DeleteParams::default()).await.unwrap();
}
