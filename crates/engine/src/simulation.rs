//! `POST /policies/{id}/simulate`: a policy (or a draft of its rules) replayed over the payments its sessions
//! made in a time window, so a change can be judged before it is made. Reads only.

use crate::context::PolicyRef;
use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, Utc};
use paygent_domain::simulation::{Replay, Report};
use paygent_domain::{PolicyRules, Principal};
use paygent_store::payments;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The most payments one simulation replays; a window holding more is replayed up to there.
pub const MAX_REPLAYED: usize = 10_000;
/// How many payments are read at a time.
const BATCH: i64 = 500;

/// What a policy would have done with a window's payments.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Simulation {
    /// The policy replayed; its rules, or the draft given instead.
    pub policy: PolicyRef,
    pub draft: bool,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The window held more than 10,000 payments: the first 10,000 were replayed.
    pub truncated: bool,
    #[serde(flatten)]
    pub report: Report,
}

impl Paygent {
    /// Replays the payments made in `[from, to)` by sessions held to policy `id` (`None`: the default) against
    /// its rules, or against `draft` (approvers and admins). Writes nothing.
    pub async fn simulate_policy(
        &self,
        who: &Principal,
        id: Option<Uuid>,
        draft: Option<PolicyRules>,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<Simulation> {
        require(
            who.can_decide(),
            "only approvers and admins simulate policies",
        )?;
        if from >= to {
            return Err(EngineError::Invalid("from must be before to".into()));
        }
        if let Some(rules) = &draft {
            crate::policies::validate(rules)?;
        }
        let policy = crate::policies::in_force(self.store.reader(), who.tenant_id, id).await?;
        let rules = draft.as_ref().unwrap_or(&policy.rules);
        let default = crate::policies::default_policy_id(who.tenant_id) == policy.id;
        let mut replay = Replay::new(rules);
        let (mut after, mut replayed) = (None, 0);
        let truncated = loop {
            let scope = (policy.id, default);
            let batch = payments::to_replay(
                self.store.reader(),
                who.tenant_id,
                scope,
                (from, to),
                after,
                BATCH,
            )
            .await?;
            for p in &batch {
                replay.replay(&p.recorded, &p.config);
            }
            replayed += batch.len();
            after = batch.last().map(|p| p.recorded.id);
            if (batch.len() as i64) < BATCH {
                break false;
            }
            if replayed >= MAX_REPLAYED {
                break true;
            }
        };
        Ok(Simulation {
            policy: PolicyRef {
                id: policy.id,
                name: policy.name,
                version: policy.version,
            },
            draft: draft.is_some(),
            from,
            to,
            truncated,
            report: replay.finish(),
        })
    }
}
