//! Block clearing (BR-WE-013): a person asks with the clearance annotation on a Failed
//! WorkflowExecution; the controller records who cleared the block, and why, in the status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::events::EventType};
use wfe_api::{
    BlockClearance, CLEAR_BLOCK_ANNOTATION, ClearMethod, MIN_CLEAR_REASON_WORDS, Phase,
    WorkflowExecution, word_count,
};

use super::{Context, Error, effects::Note};

impl Context {
    /// Records a block clearance requested with the annotation (BR-WE-013).
    pub(super) async fn clear_block(
        &self,
        wfe: &WorkflowExecution,
    ) -> Result<Option<WorkflowExecution>, Error> {
        if wfe.phase() != Phase::Failed
            || wfe
                .status
                .as_ref()
                .is_some_and(|s| s.block_clearance.is_some())
        {
            return Ok(None);
        }
        let Some(reason) = wfe
            .annotations()
            .get(CLEAR_BLOCK_ANNOTATION)
            .map(|r| r.trim().to_string())
        else {
            return Ok(None);
        };
        let uid = wfe.uid().unwrap_or_default();
        if word_count(&reason) < MIN_CLEAR_REASON_WORDS {
            if self.memory.refusal_is_new(&uid, &reason) {
                self.warn(
                    wfe,
                    "BlockClearRefused",
                    "ClearBlock",
                    format!(
                        "The {CLEAR_BLOCK_ANNOTATION} reason has {} word(s); at least {MIN_CLEAR_REASON_WORDS} are required. Nothing was cleared.",
                        word_count(&reason)
                    ),
                );
            }
            return Ok(None);
        }
        let now = self.now();
        // Trust only an identity the admission webhook attested for this object and this reason.
        let token = wfe
            .annotations()
            .get(crate::clearance::ATTESTATION_ANNOTATION);
        let attested = match (&self.cfg.clearance_key, token) {
            (Some(key), Some(token)) => key.verify(token).filter(|a| {
                Some(&a.uid) == wfe.uid().as_ref()
                    && a.reason_sha256 == crate::clearance::reason_digest(&reason)
            }),
            _ => None,
        };
        let (cleared_by, how) = match &attested {
            Some(a) => (a.user.clone(), format!("attested by the admission webhook for {}", a.user)),
            None if self.cfg.clearance_key.is_none() => (
                "unknown".to_string(),
                "no authenticated identity was attested (the admission webhook is not configured), recorded as clearedBy=unknown".to_string(),
            ),
            None => (
                "unknown".to_string(),
                "the clearance carries no valid webhook attestation, recorded as clearedBy=unknown".to_string(),
            ),
        };
        let mut status = wfe.status.clone().unwrap_or_default();
        status.block_clearance = Some(BlockClearance {
            cleared_at: Some(Time(now)),
            cleared_by,
            clear_reason: reason,
            clear_method: ClearMethod::Annotation,
        });
        let updated = self.write_status(wfe, status).await?;
        self.memory.cleared(&uid);
        let type_ = if attested.is_some() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        self.event(
            &updated,
            &Note {
                type_,
                reason: "BlockCleared".into(),
                action: "ClearBlock",
                note: format!(
                    "Block on {} cleared by annotation; {how}",
                    wfe.spec.target_resource
                ),
            },
        );
        Ok(Some(updated))
    }
}
