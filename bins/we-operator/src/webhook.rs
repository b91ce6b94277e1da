//! The TLS admission webhook for authenticated block clearing (decisions in
//! `wfe_controller::clearance`).
//!
//! `POST /mutate-workflowexecution`: creates and updates of WorkflowExecutions (stamps the
//! attestation, refuses short reasons and forgeries). `POST /validate-workflowexecution-status`:
//! updates of the status subresource (only the operator may change `status.blockClearance`).

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context, Result};
use axum::{Json, Router, extract::State, routing::post};
use k8s_openapi::jiff::Timestamp;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use serde_json::{Value, json};
use wfe_controller::clearance::{
    ATTESTATION_ANNOTATION, ClearanceKey, Decision, review_object, review_status,
};

#[derive(Debug)]
struct Webhook {
    key: ClearanceKey,
    operator: String,
}

fn respond(
    req: &AdmissionRequest<DynamicObject>,
    decision: Decision,
    new: &Value,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    match decision {
        Decision::Allow => response,
        Decision::Deny(message) => response.deny(message),
        Decision::Attest(token) => {
            let pointer = format!(
                "/metadata/annotations/{}",
                ATTESTATION_ANNOTATION.replace('~', "~0").replace('/', "~1")
            );
            let has_annotations = new
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .is_some_and(Value::is_object);
            let ops = if has_annotations {
                json!([{"op": "add", "path": pointer, "value": token}])
            } else {
                json!([{"op": "add", "path": "/metadata/annotations", "value": {ATTESTATION_ANNOTATION: token}}])
            };
            match serde_json::from_value::<json_patch::Patch>(ops)
                .map(|p| response.clone().with_patch(p))
            {
                Ok(Ok(r)) => r,
                _ => response.deny("internal error: cannot build the attestation patch"),
            }
        }
    }
}

fn review(
    review: AdmissionReview<DynamicObject>,
    decide: impl Fn(&AdmissionRequest<DynamicObject>, Option<&Value>, &Value) -> Decision,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let new = req
        .object
        .as_ref()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .unwrap_or_default();
    let old = req
        .old_object
        .as_ref()
        .map(|o| serde_json::to_value(o).unwrap_or_default());
    let decision = decide(&req, old.as_ref(), &new);
    if let Decision::Deny(m) = &decision {
        tracing::info!(
            user = req.user_info.username.as_deref().unwrap_or(""),
            name = req.name,
            reason = m,
            "admission refused"
        );
    }
    Json(respond(&req, decision, &new).into_review())
}

async fn mutate(
    State(w): State<Arc<Webhook>>,
    Json(body): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    review(body, |req, old, new| {
        review_object(
            &w.key,
            old,
            new,
            req.user_info.username.as_deref().unwrap_or_default(),
            Timestamp::now(),
        )
    })
}

async fn validate_status(
    State(w): State<Arc<Webhook>>,
    Json(body): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    review(body, |req, old, new| {
        review_status(
            old,
            new,
            req.user_info.username.as_deref().unwrap_or_default(),
            &w.operator,
        )
    })
}

/// Serves the webhook over TLS until the process ends.
pub async fn serve(
    addr: SocketAddr,
    cert: &Path,
    key: &Path,
    clearance: ClearanceKey,
    operator: String,
) -> Result<()> {
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "cannot load the webhook certificate {} / key {}",
                cert.display(),
                key.display()
            )
        })?;
    let state = Arc::new(Webhook {
        key: clearance,
        operator,
    });
    let router = Router::new()
        .route("/mutate-workflowexecution", post(mutate))
        .route("/validate-workflowexecution-status", post(validate_status))
        .with_state(state);
    tracing::info!(%addr, "admission webhook listening (TLS)");
    tokio::spawn(async move {
        if let Err(e) = axum_server::bind_rustls(addr, tls)
            .serve(router.into_make_service())
            .await
        {
            tracing::error!(error = %e, "admission webhook stopped");
        }
    });
    Ok(())
}
