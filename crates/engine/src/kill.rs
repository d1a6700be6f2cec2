//! Stopping money from moving: a tenant-wide emergency stop, killing one session, and expiring overdue requests.
//! Each stop cancels the pending approvals in its scope and releases their reservations, in the same
//! transaction as its audit entry and events.

use crate::views::SessionView;
use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, Utc};
use paygent_domain::{ApprovalStatus, Principal};
use paygent_store::WriteTx;
use paygent_store::approvals;
use paygent_store::payments;
use paygent_store::sessions;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// The tenant's emergency stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct KillSwitchView {
    pub engaged: bool,
    pub reason: Option<String>,
    /// The key that engaged it.
    pub by: Option<Uuid>,
    pub at: Option<DateTime<Utc>>,
}

/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often signed payments left without an outcome for a minute are reconciled (a runner lost its chain).
const RECONCILE_EVERY: Duration = Duration::from_secs(15);

/// How many overdue requests one sweep expires; the next sweep takes the rest.
const SWEEP_BATCH: i64 = 200;

impl KillSwitchView {
    fn parse(record: Option<&str>) -> KillSwitchView {
        record
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default()
    }
}

fn validate_reason(reason: &Option<String>) -> Result<()> {
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(EngineError::Invalid(
            "reason is limited to 500 characters".into(),
        ));
    }
    Ok(())
}

impl Paygent {
    pub async fn kill_switch(&self, who: &Principal) -> Result<KillSwitchView> {
        let record = self.store.kill_switch(who.tenant_id).await?;
        Ok(KillSwitchView::parse(record.as_deref()))
    }

    /// Engages or releases the tenant's emergency stop (admins). Engaging cancels every pending approval.
    pub async fn set_kill_switch(
        &self,
        who: &Principal,
        engaged: bool,
        reason: Option<String>,
    ) -> Result<KillSwitchView> {
        require(
            who.is_admin(),
            "only admins engage or release the emergency stop",
        )?;
        validate_reason(&reason)?;
        let mut tx = self.begin_as(who).await?;
        let view = KillSwitchView {
            engaged,
            reason: reason.clone(),
            by: Some(who.key_id),
            at: Some(tx.now()),
        };
        let record = engaged.then(|| serde_json::to_string(&view).expect("views serialize"));
        tx.set_kill_switch(record.as_deref()).await?;
        let cancelled = if engaged {
            cancel_scope(&mut tx, None, "kill_switch").await?
        } else {
            Vec::new()
        };
        let action = if engaged {
            "kill_switch.engaged"
        } else {
            "kill_switch.released"
        };
        let data = json!({"reason": reason, "cancelled_approvals": cancelled});
        tx.audit(&who.actor(), action, "tenant", None, data).await?;
        tx.event(
            "kill_switch",
            None,
            json!({"engaged": engaged, "reason": reason, "by": who.key_id}),
        )
        .await?;
        self.publish(tx.commit().await?);
        Ok(if engaged {
            view
        } else {
            KillSwitchView::default()
        })
    }

    /// Kills a session (approvers and admins): it takes no new payments, and its pending approvals are cancelled.
    pub async fn kill_session(
        &self,
        who: &Principal,
        id: Uuid,
        reason: Option<String>,
    ) -> Result<SessionView> {
        require(who.can_decide(), "only approvers and admins kill sessions")?;
        validate_reason(&reason)?;
        self.set_session_state(who, id, "killed", reason).await
    }

    /// Lets a killed session spend again (admins).
    pub async fn revive_session(&self, who: &Principal, id: Uuid) -> Result<SessionView> {
        require(who.is_admin(), "only admins revive sessions")?;
        self.set_session_state(who, id, "active", None).await
    }

    async fn set_session_state(
        &self,
        who: &Principal,
        id: Uuid,
        state: &str,
        reason: Option<String>,
    ) -> Result<SessionView> {
        let mut tx = self.begin_as(who).await?;
        sessions::get(tx.conn(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("session"))?;
        if sessions::set_state(&mut tx, id, state).await? {
            let killing = state == "killed";
            let cancelled = if killing {
                cancel_scope(&mut tx, Some(id), "killed").await?
            } else {
                Vec::new()
            };
            let action = if killing {
                "session.killed"
            } else {
                "session.revived"
            };
            let data = json!({"reason": reason, "cancelled_approvals": cancelled});
            tx.audit(
                &who.actor(),
                action,
                &format!("session:{id}"),
                Some(id),
                data,
            )
            .await?;
            if killing {
                let payload = json!({"kind": "session", "session_id": id, "reason": reason});
                tx.event("cancelled", Some(id), payload).await?;
            }
            self.publish(tx.commit().await?);
        }
        self.session(who, id).await
    }

    /// Expires every pending request whose deadline has passed; returns how many. Safe to run from any number of
    /// instances at once: each expiry is a conditional update under the tenant's lock, so it happens once.
    pub async fn expire_overdue(&self) -> Result<usize> {
        let overdue = approvals::overdue(self.store.reader(), self.now(), SWEEP_BATCH).await?;
        let mut expired = 0;
        for (tenant_id, id) in overdue {
            let mut tx = self.store.begin(tenant_id, self.now()).await?;
            let Some(request) = approvals::get(tx.conn(), tenant_id, id).await? else {
                continue;
            };
            if request.status == ApprovalStatus::Pending
                && request.deadline <= tx.now()
                && self.expire_within(&mut tx, &request).await?
            {
                self.publish(tx.commit().await?);
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// Runs [`Paygent::expire_overdue`] every `every`, and prunes events older than `event_retention` once a
    /// minute, until the task is aborted.
    pub fn spawn_sweeper(
        &self,
        every: Duration,
        event_retention: chrono::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let paygent = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune: Option<tokio::time::Instant> = None;
            let mut last_reconcile: Option<tokio::time::Instant> = None;
            loop {
                tick.tick().await;
                if let Err(e) = paygent.expire_overdue().await {
                    tracing::warn!(error = %e, "sweeping overdue approvals failed; retrying");
                }
                if last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY) {
                    last_reconcile = Some(tokio::time::Instant::now());
                    let stale = paygent.now() - chrono::Duration::seconds(60);
                    if let Err(e) = paygent.reconcile_signed_before(Some(stale)).await {
                        tracing::warn!(error = %e, "reconciling signed payments failed; retrying");
                    }
                }
                if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(tokio::time::Instant::now());
                    match paygent
                        .store
                        .prune_events(paygent.now() - event_retention)
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(pruned = n, "pruned old events"),
                        Err(e) => tracing::warn!(error = %e, "pruning events failed; retrying"),
                    }
                }
            }
        })
    }
}

/// Cancels the pending approvals in scope (one session, or the whole tenant) and denies their payments,
/// releasing reservations. Returns the cancelled requests' ids.
async fn cancel_scope(
    tx: &mut WriteTx,
    session_id: Option<Uuid>,
    reason: &str,
) -> Result<Vec<Uuid>> {
    let tenant_id = tx.tenant_id();
    // Executions first: each cancels the approval its step waits on, and the event that stops its runner.
    for execution in paygent_store::executions::active_in(tx, session_id).await? {
        crate::executions::cancel_within(tx, &execution, reason).await?;
    }
    let pending = approvals::pending(
        tx.conn(),
        tenant_id,
        paygent_store::Scope {
            session_id,
            owner: None,
        },
        i64::MAX,
    )
    .await?;
    let mut cancelled = Vec::with_capacity(pending.len());
    for request in pending {
        if approvals::end(tx, request.id, ApprovalStatus::Cancelled, Some(reason)).await? {
            let payload = json!({"kind": "approval", "id": request.id, "session_id": request.session_id,
                "payment_id": request.payment_id, "reason": reason});
            tx.event("cancelled", Some(request.session_id), payload)
                .await?;
            cancelled.push(request.id);
        }
    }
    // Approved requests not yet executed lose their payment too: nothing moves while a stop is in force.
    for payment in payments::awaiting_approval(tx, session_id).await? {
        crate::payments::deny_pending(tx, payment.id, "killed").await?;
    }
    Ok(cancelled)
}
