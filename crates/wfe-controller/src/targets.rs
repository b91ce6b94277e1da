//! Canonical targets through API discovery (DESIGN.md §7, issue #18): the kinds the API server
//! serves, fetched with aggregated discovery (two requests), installed as the process's
//! [`wfe_api::kinds::KindIndex`], and refreshed when a request names a kind the index does not
//! know (a CRD installed since), at most once per [`REFRESH_EVERY`].

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::Client;
use wfe_api::{
    TargetError, TargetKey, TargetResource,
    kinds::{self, KindIndex, ServedKind},
};

/// The least time between two discovery refreshes caused by unknown kinds.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

static LAST_REFRESH: Mutex<Option<Instant>> = Mutex::new(None);

/// The served kinds of an aggregated discovery document (first listed version of each group:
/// the preferred one; subresources are not kinds).
pub fn served_kinds(doc: kube::core::discovery::v2::APIGroupDiscoveryList) -> Vec<ServedKind> {
    let mut out = Vec::new();
    for group in doc.items {
        let name = group.metadata.and_then(|m| m.name).unwrap_or_default();
        let Some(version) = group.versions.into_iter().next() else {
            continue;
        };
        for r in version.resources {
            let (Some(plural), Some(kind)) = (
                r.resource,
                r.response_kind
                    .and_then(|k| k.kind)
                    .filter(|k| !k.is_empty()),
            ) else {
                continue;
            };
            if plural.contains('/') {
                continue;
            }
            out.push(ServedKind {
                group: name.clone(),
                kind,
                plural,
                singular: r.singular_resource.unwrap_or_default(),
                short_names: r.short_names,
                namespaced: r.scope.as_deref() == Some("Namespaced"),
            });
        }
    }
    out
}

/// Fetches what the API server serves (core group first, then the groups in its order of
/// preference).
pub async fn discover(client: &Client) -> Result<KindIndex, kube::Error> {
    let mut served = served_kinds(client.list_core_api_versions_aggregated().await?);
    served.extend(served_kinds(client.list_api_groups_aggregated().await?));
    Ok(KindIndex::new(served))
}

/// Discovers and installs the process's kind index; returns the number of kinds.
pub async fn refresh(client: &Client) -> Result<usize, kube::Error> {
    let index = discover(client).await?;
    let n = index.len();
    kinds::install(index);
    *LAST_REFRESH.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    Ok(n)
}

fn refresh_due() -> bool {
    LAST_REFRESH
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_none_or(|t| t.elapsed() >= REFRESH_EVERY)
}

/// The canonical key of a raw `targetResource`, or why it is not a target. An unknown kind
/// refreshes discovery first (rate-limited), so a CRD installed after the operator started is
/// found. `Err` only when discovery itself failed and nothing was ever discovered (retried).
pub async fn canonical(
    client: &Client,
    raw: &str,
) -> Result<Result<TargetKey, TargetError>, kube::Error> {
    let target = match TargetResource::parse(raw) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let mut index = kinds::installed();
    let unknown = |idx: &Option<std::sync::Arc<KindIndex>>| {
        idx.as_ref().is_none_or(|i| i.resolve(target.kind).is_err())
    };
    if unknown(&index) && refresh_due() {
        match refresh(client).await {
            Ok(_) => index = kinds::installed(),
            Err(e) if index.is_none() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "API discovery refresh failed; using the last one")
            }
        }
    }
    let index = index.unwrap_or_default();
    Ok(target.canonical_key(raw, &index).map(|(key, _)| key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aggregated_discovery_becomes_served_kinds() {
        let doc = serde_json::from_value(json!({"items": [
            {"metadata": {"name": "apps"}, "versions": [
                {"version": "v1", "resources": [
                    {"resource": "deployments", "responseKind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                     "scope": "Namespaced", "singularResource": "deployment", "shortNames": ["deploy"], "verbs": ["get"],
                     "subresources": [{"subresource": "scale", "responseKind": {"kind": "Scale"}, "verbs": ["get"]}]}
                ]},
                {"version": "v1beta1", "resources": [
                    {"resource": "oldthings", "responseKind": {"kind": "OldThing"}, "scope": "Namespaced", "singularResource": "oldthing", "verbs": []}
                ]}
            ]},
            {"metadata": {}, "versions": [
                {"version": "v1", "resources": [
                    {"resource": "nodes", "responseKind": {"kind": "Node"}, "scope": "Cluster", "singularResource": "node", "verbs": []}
                ]}
            ]}
        ]}))
        .unwrap();
        let kinds = served_kinds(doc);
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        assert_eq!(
            (
                kinds[0].group.as_str(),
                kinds[0].kind.as_str(),
                kinds[0].short_names.clone()
            ),
            ("apps", "Deployment", vec!["deploy".to_string()])
        );
        assert!(kinds[0].namespaced && !kinds[1].namespaced);
        assert_eq!(kinds[1].group, "");
    }
}
