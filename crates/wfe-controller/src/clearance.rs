//! Authenticated block clearing (BR-WE-013): the admission decisions of the operator's webhook and
//! the attestation the controller trusts.
//!
//! When a person sets or changes the `kubernaut.ai/clear-block` annotation, the API server sends
//! the update to the webhook, which knows the authenticated user (`userInfo.username`). The
//! webhook refuses reasons under 10 words and stamps an attestation annotation: the user, the time,
//! the WorkflowExecution UID and a digest of the reason, signed with an HMAC key that only the
//! operator holds. The controller records `status.blockClearance.clearedBy` from a valid
//! attestation only; anything else is recorded as `unknown`. Forged attestations and hand-written
//! `status.blockClearance` are refused by the webhook.

use hmac::{Hmac, Mac};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use wfe_api::{CLEAR_BLOCK_ANNOTATION, MIN_CLEAR_REASON_WORDS, word_count};

/// Annotation holding the webhook's signed attestation of who cleared a block.
pub const ATTESTATION_ANNOTATION: &str = "kubernaut.ai/clear-block-attestation";

/// What the webhook attests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The authenticated user (`userInfo.username`).
    pub user: String,
    /// When the webhook admitted the clearance (RFC 3339).
    pub at: String,
    /// The WorkflowExecution's UID.
    pub uid: String,
    /// sha256 of the clearance reason (hex).
    pub reason_sha256: String,
}

/// The HMAC key shared by the webhook and the controller (all replicas: from one Secret).
#[derive(Clone)]
pub struct ClearanceKey(Vec<u8>);

impl std::fmt::Debug for ClearanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClearanceKey(<redacted>)")
    }
}

fn mac(key: &[u8], payload: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(payload.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// sha256 of a clearance reason as the attestation records it.
pub fn reason_digest(reason: &str) -> String {
    hex::encode(Sha256::digest(reason.trim().as_bytes()))
}

impl ClearanceKey {
    /// A key from secret bytes (at least 32).
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < 32 {
            return Err(format!(
                "the clearance key must have at least 32 bytes, it has {}",
                bytes.len()
            ));
        }
        Ok(ClearanceKey(bytes))
    }

    /// The annotation value: hex(JSON) + "." + hex(HMAC).
    pub fn sign(&self, a: &Attestation) -> String {
        let payload = hex::encode(serde_json::to_vec(a).expect("attestation serializes"));
        let signature = mac(&self.0, &payload);
        format!("{payload}.{signature}")
    }

    /// The attestation, if the signature is valid.
    pub fn verify(&self, token: &str) -> Option<Attestation> {
        let (payload, signature) = token.split_once('.')?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).ok()?;
        m.update(payload.as_bytes());
        m.verify_slice(&hex::decode(signature).ok()?).ok()?;
        serde_json::from_slice(&hex::decode(payload).ok()?).ok()
    }
}

/// The webhook's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admit unchanged.
    Allow,
    /// Admit, setting the attestation annotation to this value.
    Attest(String),
    /// Refuse, with a message for the user.
    Deny(String),
}

fn annotation<'a>(obj: Option<&'a Value>, key: &str) -> Option<&'a str> {
    obj?.get("metadata")?.get("annotations")?.get(key)?.as_str()
}

/// Decides on a create or update of a WorkflowExecution (main resource).
pub fn review_object(
    key: &ClearanceKey,
    old: Option<&Value>,
    new: &Value,
    username: &str,
    now: Timestamp,
) -> Decision {
    let old_reason = annotation(old, CLEAR_BLOCK_ANNOTATION);
    let new_reason = annotation(Some(new), CLEAR_BLOCK_ANNOTATION);
    let old_attestation = annotation(old, ATTESTATION_ANNOTATION);
    let new_attestation = annotation(Some(new), ATTESTATION_ANNOTATION);
    match new_reason {
        Some(reason) if Some(reason) != old_reason => {
            let words = word_count(reason);
            if words < MIN_CLEAR_REASON_WORDS {
                return Decision::Deny(format!(
                    "{CLEAR_BLOCK_ANNOTATION}: the reason has {words} word(s); at least {MIN_CLEAR_REASON_WORDS} are required to clear a block"
                ));
            }
            let uid = new
                .get("metadata")
                .and_then(|m| m.get("uid"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if username.is_empty() {
                return Decision::Deny("clearing a block requires an authenticated user".into());
            }
            Decision::Attest(key.sign(&Attestation {
                user: username.to_string(),
                at: now.to_string(),
                uid: uid.to_string(),
                reason_sha256: reason_digest(reason),
            }))
        }
        // Anything else must leave the attestation exactly as the webhook wrote it.
        _ if new_attestation != old_attestation => Decision::Deny(format!(
            "{ATTESTATION_ANNOTATION} is written by the operator's admission webhook only; set {CLEAR_BLOCK_ANNOTATION} instead"
        )),
        _ => Decision::Allow,
    }
}

/// Decides on an update of the status subresource: only the operator may change
/// `status.blockClearance`.
pub fn review_status(old: Option<&Value>, new: &Value, username: &str, operator: &str) -> Decision {
    let clearance = |o: Option<&Value>| {
        o.and_then(|o| o.get("status"))
            .and_then(|s| s.get("blockClearance"))
            .cloned()
    };
    if clearance(old) != clearance(Some(new)) && username != operator {
        return Decision::Deny(format!(
            "status.blockClearance is recorded by the operator ({operator}); clear a block with the {CLEAR_BLOCK_ANNOTATION} annotation"
        ));
    }
    Decision::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> ClearanceKey {
        ClearanceKey::new(vec![7; 32]).unwrap()
    }

    fn obj(annotations: Value) -> Value {
        json!({"metadata": {"name": "w", "uid": "uid-1", "annotations": annotations}})
    }

    const REASON: &str = "the deployment manifest was fixed by the on-call engineer and verified";

    #[test]
    fn signatures_verify_and_forgeries_do_not() {
        let a = Attestation {
            user: "alice".into(),
            at: "t".into(),
            uid: "u".into(),
            reason_sha256: reason_digest(REASON),
        };
        let token = key().sign(&a);
        assert_eq!(key().verify(&token), Some(a.clone()));
        let other = ClearanceKey::new(vec![8; 32]).unwrap();
        assert_eq!(other.verify(&token), None, "another key");
        let forged_payload = hex::encode(
            serde_json::to_vec(&Attestation {
                user: "mallory".into(),
                ..a
            })
            .unwrap(),
        );
        let forged = format!("{forged_payload}.{}", token.split_once('.').unwrap().1);
        assert_eq!(key().verify(&forged), None, "payload swapped");
        assert_eq!(key().verify("garbage"), None);
        assert!(
            ClearanceKey::new(vec![1; 8]).is_err(),
            "short keys are refused"
        );
    }

    #[test]
    fn a_new_reason_is_attested_for_the_authenticated_user() {
        let old = obj(json!({}));
        let new = obj(json!({CLEAR_BLOCK_ANNOTATION: REASON}));
        let Decision::Attest(token) =
            review_object(&key(), Some(&old), &new, "alice", Timestamp::UNIX_EPOCH)
        else {
            panic!("attested")
        };
        let a = key().verify(&token).unwrap();
        assert_eq!((a.user.as_str(), a.uid.as_str()), ("alice", "uid-1"));
        assert_eq!(a.reason_sha256, reason_digest(REASON));
    }

    #[test]
    fn short_reasons_forgeries_and_anonymous_users_are_refused() {
        let old = obj(json!({}));
        let short = obj(json!({CLEAR_BLOCK_ANNOTATION: "fixed it"}));
        assert!(
            matches!(review_object(&key(), Some(&old), &short, "alice", Timestamp::UNIX_EPOCH), Decision::Deny(m) if m.contains("at least 10"))
        );
        let forged = obj(json!({ATTESTATION_ANNOTATION: "abc.def"}));
        assert!(
            matches!(review_object(&key(), Some(&old), &forged, "mallory", Timestamp::UNIX_EPOCH), Decision::Deny(m) if m.contains("webhook only"))
        );
        // Removing an attestation is a change too.
        let attested = obj(json!({CLEAR_BLOCK_ANNOTATION: REASON, ATTESTATION_ANNOTATION: "x.y"}));
        let stripped = obj(json!({CLEAR_BLOCK_ANNOTATION: REASON}));
        assert!(matches!(
            review_object(
                &key(),
                Some(&attested),
                &stripped,
                "mallory",
                Timestamp::UNIX_EPOCH
            ),
            Decision::Deny(_)
        ));
        let new = obj(json!({CLEAR_BLOCK_ANNOTATION: REASON}));
        assert!(matches!(
            review_object(&key(), Some(&old), &new, "", Timestamp::UNIX_EPOCH),
            Decision::Deny(_)
        ));
        // Unrelated updates pass.
        let labelled = obj(json!({"team": "sre"}));
        assert_eq!(
            review_object(&key(), Some(&old), &labelled, "bob", Timestamp::UNIX_EPOCH),
            Decision::Allow
        );
        assert_eq!(
            review_object(
                &key(),
                Some(&attested),
                &attested,
                "bob",
                Timestamp::UNIX_EPOCH
            ),
            Decision::Allow
        );
    }

    #[test]
    fn only_the_operator_writes_block_clearance() {
        let old = json!({"status": {"phase": "Failed"}});
        let new = json!({"status": {"phase": "Failed", "blockClearance": {"clearedBy": "alice", "clearReason": "x", "clearMethod": "Annotation"}}});
        let op = "system:serviceaccount:kubernaut-system:we-operator";
        assert!(matches!(
            review_status(Some(&old), &new, "mallory", op),
            Decision::Deny(_)
        ));
        assert_eq!(review_status(Some(&old), &new, op, op), Decision::Allow);
        assert_eq!(
            review_status(Some(&old), &old, "anyone", op),
            Decision::Allow
        );
    }
}
