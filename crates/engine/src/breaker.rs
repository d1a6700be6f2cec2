//! The circuit breaker's record: a velocity rule tripped by the guard freezes the session, and a person
//! unfreezes it. What trips it is decided in the domain (`paygent_domain::velocity`).

use crate::views::SessionView;
use crate::{EngineError, Paygent, Result, require};
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_domain::velocity::Freeze;
use paygent_domain::{Principal, SessionState};
use paygent_store::WriteTx;
use paygent_store::sessions::{self, SessionRecord};
use serde_json::json;
use uuid::Uuid;

/// Refuses to `start` anything (execute an approved payment, start an execution) in a frozen session.
pub(crate) fn refuse_if_frozen(session: &SessionRecord, start: &str) -> Result<()> {
    match &session.frozen {
        Some(freeze) if session.state == SessionState::Frozen => Err(EngineError::Frozen(format!(
            "the session is frozen by the circuit breaker ({}: {}): {start} once a person unfreezes it",
            freeze.rule, freeze.detail
        ))),
        _ => Ok(()),
    }
}

/// Freezes the session inside the guard's transaction, with its audit entry and `session_frozen` event; a
/// session already frozen (or killed) stays as it is.
pub(crate) async fn freeze(
    tx: &mut WriteTx,
    who: &Principal,
    session_id: Uuid,
    freeze: Freeze,
) -> Result<()> {
    if !sessions::freeze(tx, session_id, &freeze).await? {
        return Ok(());
    }
    let mut data = serde_json::to_value(&freeze).expect("a freeze serializes");
    let subject = format!("session:{session_id}");
    let session = Some(session_id);
    tx.audit(
        &who.actor(),
        AuditAction::SessionFrozen,
        &subject,
        session,
        data.clone(),
    )
    .await?;
    data["session_id"] = json!(session_id);
    Ok(tx.event(EventKind::SessionFrozen, session, data).await?)
}

impl Paygent {
    /// Unfreezes a frozen session (approvers and admins, never the key whose payment tripped it): its payments
    /// are judged again, its breaker counting from now, and its paused executions go on.
    pub async fn unfreeze_session(
        &self,
        who: &Principal,
        id: Uuid,
        comment: Option<String>,
    ) -> Result<SessionView> {
        require(
            who.can_decide(),
            "only approvers and admins unfreeze sessions",
        )?;
        crate::kill::validate_reason(&comment)?;
        let mut tx = self.begin_as(who).await?;
        let session = sessions::get(tx.conn(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("session"))?;
        let Some(freeze) = session
            .frozen
            .filter(|_| session.state == SessionState::Frozen)
        else {
            return Err(EngineError::Conflict(format!(
                "the session is {}, not frozen",
                session.state.as_str()
            )));
        };
        require(
            freeze.tripped_by != who.key_id,
            "four eyes: the key whose payment tripped the breaker never unfreezes it",
        )?;
        if !sessions::unfreeze(&mut tx, id).await? {
            return Err(EngineError::Conflict(
                "the session is no longer frozen".into(),
            ));
        }
        let data = json!({"comment": comment, "freeze": freeze});
        let subject = format!("session:{id}");
        tx.audit(
            &who.actor(),
            AuditAction::SessionUnfrozen,
            &subject,
            Some(id),
            data,
        )
        .await?;
        let payload = json!({"session_id": id, "by": who.key_id, "comment": comment});
        tx.event(EventKind::SessionUnfrozen, Some(id), payload)
            .await?;
        self.publish(tx.commit().await?);
        self.session(who, id).await
    }
}
