//! Standing approvals as people grant, list and revoke them. The guard takes from them
//! ([`crate::guard`]); what covers a payment is decided in the domain (`paygent_domain::standing`).

use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, Duration, Utc};
use paygent_domain::audit::AuditAction;
use paygent_domain::payment::Recipient;
use paygent_domain::standing::StandingTerms;
use paygent_domain::{Decimal, Principal};
use paygent_store::WriteTx;
use paygent_store::approvals::ApprovalRecord;
use paygent_store::standing::{self, StandingRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

/// A standing approval: this session may pay this payee up to `max_usd` in total until `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StandingView {
    pub id: Uuid,
    pub session_id: Uuid,
    /// The payee, normalized (a lower-case address, or an x402 service's origin).
    pub payee: String,
    #[schema(value_type = String, example = "50")]
    pub max_usd: Decimal,
    #[schema(value_type = String, example = "20")]
    pub used_usd: Decimal,
    #[schema(value_type = String, example = "30")]
    pub remaining_usd: Decimal,
    /// The request whose approval granted it, and who granted it.
    pub approval_id: Uuid,
    pub granted_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<Uuid>,
}

impl From<StandingRecord> for StandingView {
    fn from(s: StandingRecord) -> Self {
        StandingView {
            id: s.id,
            session_id: s.session_id,
            payee: s.payee,
            max_usd: s.max_usd,
            used_usd: s.used_usd,
            remaining_usd: (s.max_usd - s.used_usd).max(Decimal::ZERO),
            approval_id: s.approval_id,
            granted_by: s.granted_by,
            created_at: s.created_at,
            expires_at: s.expires_at,
            revoked_at: s.revoked_at,
            revoked_by: s.revoked_by,
        }
    }
}

/// Grants a standing approval with the approval of `request` by `who`, in its transaction, audited.
pub(crate) async fn grant(
    tx: &mut WriteTx,
    who: &Principal,
    request: &ApprovalRecord,
    terms: &StandingTerms,
) -> Result<Value> {
    let recipient = request.effective_args()["recipient"]
        .as_str()
        .unwrap_or_default();
    let payee = Recipient::parse(recipient)
        .map(|r| r.payee())
        .map_err(|e| EngineError::Invalid(format!("the request's recipient: {e}")))?;
    let now = tx.now();
    let record = StandingRecord {
        id: Uuid::now_v7(),
        tenant_id: who.tenant_id,
        session_id: request.session_id,
        payee,
        max_usd: terms.max_usd,
        used_usd: Decimal::ZERO,
        approval_id: request.id,
        granted_by: who.key_id,
        created_at: now,
        expires_at: now + Duration::minutes(terms.minutes.into()),
        revoked_at: None,
        revoked_by: None,
    };
    standing::insert(tx, &record).await?;
    let view = serde_json::to_value(StandingView::from(record.clone())).expect("views serialize");
    let subject = format!("standing:{}", record.id);
    let session = Some(record.session_id);
    tx.audit(
        &who.actor(),
        AuditAction::StandingGranted,
        &subject,
        session,
        view.clone(),
    )
    .await?;
    Ok(view)
}

/// Refuses terms a request cannot carry: a standing approval comes with one person's approval of a payment.
pub(crate) fn check_terms(request: &ApprovalRecord, terms: &StandingTerms) -> Result<()> {
    if let Some(why) = terms.invalid() {
        return Err(EngineError::Invalid(why));
    }
    if request.payment_id.is_none() {
        return Err(EngineError::Invalid(
            "standing: only a payment's approval may stand for later payments".into(),
        ));
    }
    if request.approvals_required > 1 {
        return Err(EngineError::Invalid(
            "standing: one person cannot stand in for a quorum".into(),
        ));
    }
    Ok(())
}

impl Paygent {
    /// The tenant's standing approvals, newest first (people); an agent's, of its own sessions.
    pub async fn standing_approvals(
        &self,
        who: &Principal,
        page: crate::Page,
    ) -> Result<Vec<StandingView>> {
        let list = standing::list(self.store.reader(), crate::payments::scope(who, page)).await?;
        Ok(list.into_iter().map(Into::into).collect())
    }

    /// Revokes a standing approval at once (approvers and admins): the next payment it would have covered asks
    /// a person again.
    pub async fn revoke_standing(&self, who: &Principal, id: Uuid) -> Result<StandingView> {
        require(
            who.can_decide(),
            "only approvers and admins revoke standing approvals",
        )?;
        let mut tx = self.begin_as(who).await?;
        if !standing::revoke(&mut tx, id, who.key_id).await? {
            let found = standing::get(tx.conn(), who.tenant_id, id).await?;
            return Err(match found {
                Some(_) => EngineError::Conflict("the standing approval is revoked already".into()),
                None => EngineError::NotFound("standing approval"),
            });
        }
        let subject = format!("standing:{id}");
        let revoked = standing::get(tx.conn(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("standing approval"))?;
        let session = Some(revoked.session_id);
        tx.audit(
            &who.actor(),
            AuditAction::StandingRevoked,
            &subject,
            session,
            json!({}),
        )
        .await?;
        self.publish(tx.commit().await?);
        Ok(revoked.into())
    }
}
