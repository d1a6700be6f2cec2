//! Escalation: a request nobody decided in time goes to the next group of its policy's chain, with an event
//! and an audit entry. It never decides anything: past its deadline a request expires, denied.

use crate::views::ApprovalView;
use crate::{EngineError, Paygent, Result};
use paygent_domain::ApprovalStatus;
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_domain::quorum::widened;
use paygent_store::WriteTx;
use paygent_store::approvals::{self, ApprovalRecord, Escalated, step_at};
use serde_json::json;
use uuid::Uuid;

impl Paygent {
    /// Takes every pending request whose next escalation step is due to that step; returns how many. Safe
    /// from any number of instances at once: each step is a conditional update under the tenant's lock.
    pub async fn escalate_due(&self) -> Result<usize> {
        let due = approvals::to_escalate(self.store.reader(), self.now(), crate::kill::SWEEP_BATCH)
            .await?;
        let mut escalated = 0;
        for (tenant_id, id) in due {
            let mut tx = self.store.begin(tenant_id, self.now()).await?;
            if escalate_within(&mut tx, id).await? {
                self.publish(tx.commit().await?);
                escalated += 1;
            }
        }
        Ok(escalated)
    }
}

/// Escalates one request if it is still pending and its step is due, as this transaction sees it.
async fn escalate_within(tx: &mut WriteTx, id: Uuid) -> Result<bool> {
    let tenant_id = tx.tenant_id();
    let Some(request) = approvals::get(tx.conn(), tenant_id, id).await? else {
        return Ok(false);
    };
    let due = request.escalate_at.is_some_and(|at| at <= tx.now());
    let Some(step) = request.next_step().filter(|_| due) else {
        return Ok(false);
    };
    if request.status != ApprovalStatus::Pending {
        return Ok(false);
    }
    let groups = widened(&request.groups, step);
    let after = request.escalation.get(request.escalated as usize + 1);
    let moved = approvals::escalate(
        tx,
        Escalated {
            id,
            from: request.escalated,
            next: after.map(|s| step_at(request.created_at, s)),
            groups: &groups,
        },
    )
    .await?;
    if !moved {
        return Ok(false);
    }
    announce(tx, &request, &step.group).await?;
    Ok(true)
}

/// The escalation's audit entry, and the event that tells the group (the request as it now is).
async fn announce(tx: &mut WriteTx, before: &ApprovalRecord, group: &str) -> Result<()> {
    let (subject, session) = (format!("approval:{}", before.id), Some(before.session_id));
    let data = json!({"step": before.escalated + 1, "group": group, "digest": before.digest()});
    tx.audit(
        "system",
        AuditAction::ApprovalEscalated,
        &subject,
        session,
        data,
    )
    .await?;
    let tenant_id = tx.tenant_id();
    let now = approvals::get(tx.conn(), tenant_id, before.id)
        .await?
        .ok_or(EngineError::NotFound("approval request"))?;
    let mut payload = serde_json::to_value(ApprovalView::from(now)).expect("views serialize");
    payload["escalated_to"] = json!(group);
    Ok(tx
        .event(EventKind::ApprovalEscalated, session, payload)
        .await?)
}
