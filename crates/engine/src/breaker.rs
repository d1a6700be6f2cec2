//! The circuit breaker's record: the marks each counted payment leaves, the freeze a tripped velocity rule
//! puts on a session, and a person's unfreeze. What trips it is decided in the domain
//! (`paygent_domain::velocity`).

use crate::views::SessionView;
use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, Duration, Utc};
use paygent_domain::Decimal;
use paygent_domain::Principal;
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_domain::velocity::{
    Freeze, MAX_WINDOW_SECONDS, Mark, Seen, Totals, Trip, Velocity, identical_key, scope_key,
    tripped,
};
use paygent_store::WriteTx;
use paygent_store::payments::PaymentRecord;
use paygent_store::sessions::{self, SessionRecord};
use paygent_store::velocity;
use serde_json::json;
use uuid::Uuid;

/// The breaker's reads for one payment: what each rule saw, and the last mark of each scope read, to leave
/// the payment's marks if it counts.
pub(crate) struct Count {
    scopes: Vec<(String, Option<Mark>)>,
    usd: Decimal,
}

impl Count {
    /// Reads each rule's window for a payment `asker` asks for in `session`, from the session's last unfreeze at
    /// the earliest; returns the reads and the first rule the payment would break.
    pub(crate) async fn read(
        tx: &mut WriteTx,
        rules: &[Velocity],
        (asker, session): (Uuid, &SessionRecord),
        p: &PaymentRecord,
    ) -> Result<(Count, Option<Trip>)> {
        let mut count = Count {
            scopes: Vec::new(),
            usd: p.usd_value,
        };
        let since = session.breaker_since.unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut seen = Vec::with_capacity(rules.len());
        for rule in rules {
            let after = since.max(tx.now() - Duration::seconds(rule.per_seconds.into()));
            let base = scope_key(rule.scope, session.id, asker);
            let all = count.totals(tx, base.clone(), after).await?;
            let identical = match rule.max_identical {
                Some(_) => {
                    let same = identical_key(&base, &p.recipient, p.amount, &p.currency);
                    count.totals(tx, same, after).await?
                }
                None => Totals::default(),
            };
            seen.push(Seen { all, identical });
        }
        let trip = tripped(rules, &seen, p.usd_value);
        Ok((count, trip))
    }

    async fn totals(
        &mut self,
        tx: &mut WriteTx,
        scope: String,
        after: DateTime<Utc>,
    ) -> Result<Totals> {
        let (first, last) = velocity::window(tx, &scope, after).await?;
        if !self.scopes.iter().any(|(s, _)| *s == scope) {
            self.scopes.push((scope, last));
        }
        Ok(Totals::between(first.as_ref(), last.as_ref()))
    }

    /// Leaves the payment's mark in every scope read: it counts for every request judged after it.
    pub(crate) async fn mark(&self, tx: &mut WriteTx) -> Result<()> {
        for (scope, last) in &self.scopes {
            let mark = Mark::after(last.as_ref(), self.usd, tx.now());
            velocity::leave(tx, scope, &mark).await?;
        }
        Ok(())
    }
}

/// Refuses to `start` anything (execute an approved payment, start an execution) in a frozen session.
pub(crate) fn refuse_if_frozen(session: &SessionRecord, start: &str) -> Result<()> {
    match session.freeze() {
        Some(freeze) => Err(EngineError::Frozen(format!(
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

/// How many old marks one statement deletes.
const PRUNE_BATCH: i64 = 10_000;

impl Paygent {
    /// Deletes the breaker's marks older than any window reaches, a batch per statement; returns how many.
    pub async fn prune_marks(&self) -> Result<u64> {
        let longest = Duration::seconds(MAX_WINDOW_SECONDS.into());
        let before = self.now() - longest - Duration::hours(1);
        let mut pruned = 0;
        loop {
            let n = velocity::prune(&self.store, before, PRUNE_BATCH).await?;
            pruned += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(pruned);
            }
        }
    }

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
        let Some(freeze) = session.freeze().cloned() else {
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
