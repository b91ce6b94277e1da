//! Who cleared a block (BR-WE-013), as the API server stamped it.
//!
//! Only the API server knows who made a request. When a person sets or changes the
//! `kubernaut.ai/clear-block` annotation, a MutatingAdmissionPolicy stamps
//! `kubernaut.ai/cleared-by` with `request.userInfo.username`, and a ValidatingAdmissionPolicy
//! refuses every other write of that annotation (deploy/admission-policies.yaml). The stamp
//! therefore belongs to the current reason: whoever changes the reason is stamped anew. The
//! controller copies it into `status.blockClearance.clearedBy`; without a stamp (policies not
//! installed, or a clearance set before they were) it records `unknown` and says so.

use std::collections::BTreeMap;

use wfe_api::CLEARED_BY_ANNOTATION;

/// The identity recorded when no stamp is present.
pub const UNKNOWN: &str = "unknown";

/// Who cleared a block, and how the controller knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clearer {
    /// The user recorded in `status.blockClearance.clearedBy`.
    pub user: String,
    /// Whether the API server stamped it (a Normal Event) or it is unknown (a Warning Event).
    pub stamped: bool,
    /// How the identity was established, for the Event.
    pub how: String,
}

/// The clearer of the current `kubernaut.ai/clear-block` reason, from the object's annotations.
pub fn clearer(annotations: &BTreeMap<String, String>) -> Clearer {
    match annotations
        .get(CLEARED_BY_ANNOTATION)
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
    {
        Some(user) => Clearer {
            user: user.to_string(),
            stamped: true,
            how: format!("the API server stamped {user} as the user who set the reason"),
        },
        None => Clearer {
            user: UNKNOWN.to_string(),
            stamped: false,
            how: format!(
                "no {CLEARED_BY_ANNOTATION} stamp (are the admission policies of deploy/admission-policies.yaml installed?), recorded as clearedBy={UNKNOWN}"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_stamped_user_is_recorded() {
        let c = clearer(&annotations(&[
            ("kubernaut.ai/clear-block", "reason"),
            (CLEARED_BY_ANNOTATION, "alice"),
        ]));
        assert_eq!(c.user, "alice");
        assert!(c.stamped);
        assert!(c.how.contains("stamped alice"), "{}", c.how);
    }

    #[test]
    fn without_a_stamp_the_clearer_is_unknown_and_says_why() {
        for a in [
            annotations(&[("kubernaut.ai/clear-block", "reason")]),
            annotations(&[(CLEARED_BY_ANNOTATION, "  ")]),
        ] {
            let c = clearer(&a);
            assert_eq!(c.user, UNKNOWN);
            assert!(!c.stamped);
            assert!(c.how.contains("admission policies"), "{}", c.how);
        }
    }
}
