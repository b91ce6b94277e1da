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
        // The identity the API server stamped (admission policies), see crate::clearance.
        let clearer = crate::clearance::clearer(wfe.annotations());
        let mut status = wfe.status.clone().unwrap_or_default();
        status.block_clearance = Some(BlockClearance {
            cleared_at: Some(Time(now)),
            cleared_by: clearer.user.clone(),
            clear_reason: reason,
            clear_method: ClearMethod::Annotation,
        });
        let updated = self.write_status(wfe, status).await?;
        self.memory.cleared(&uid);
        let type_ = if clearer.stamped {
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
                    "Block on {} cleared by annotation; {}",
                    wfe.spec.target_resource, clearer.how
                ),
            },
        );
        Ok(Some(updated))
    }
}
