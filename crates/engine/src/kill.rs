//! Stopping money from moving: a tenant-wide emergency stop, killing one session, and expiring overdue requests.
//! A stop is one small write: the switch (or the session's state) commits at once, whatever is pending, and from
//! then on nothing in its scope is paid, approved or executed. What it left pending is then cancelled in
//! bounded batches, each with its audit entry and events, by whichever instance gets to it first.

use crate::views::SessionView;
use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, Utc};
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_domain::judgement::DenyReason;
use paygent_domain::{ApprovalStatus, Principal, SessionState};
use paygent_store::WriteTx;
use paygent_store::approvals;
use paygent_store::payments;
use paygent_store::sessions::{self, SessionRecord};
use paygent_store::sweeps::{self, Sweep};
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
/// How often tables that grew are analyzed: soon enough that a plan cached while a table was small does not
/// last. At load a table grows by thousands of rows a second, and a plan cached before may walk all of them
/// (BENCHMARKS.md); checking costs one catalog query.
const STATISTICS_EVERY: Duration = Duration::from_secs(1);

/// How many overdue requests one sweep expires; the next sweep takes the rest.
pub(crate) const SWEEP_BATCH: i64 = 200;
/// How many requests (and executions, and payments) one transaction of a stop's sweep cancels.
const STOP_BATCH: i64 = 500;

impl KillSwitchView {
    /// The stop as its record says. Any record at all is a stop, as the guard counts it: one that cannot be read
    /// shows as engaged, never as released.
    fn parse(record: Option<&str>) -> KillSwitchView {
        let Some(record) = record else {
            return KillSwitchView::default();
        };
        let unreadable = || KillSwitchView {
            reason: Some(
                "the stop's record is unreadable: it holds until an admin releases it".into(),
            ),
            ..KillSwitchView::default()
        };
        KillSwitchView {
            engaged: true,
            ..serde_json::from_str(record).unwrap_or_else(|_| unreadable())
        }
    }
}

pub(crate) fn validate_reason(reason: &Option<String>) -> Result<()> {
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
        let (action, sweep) = if engaged {
            let sweep = Uuid::now_v7();
            sweeps::open(&mut tx, sweep, None, "kill_switch").await?;
            (AuditAction::KillSwitchEngaged, Some(sweep))
        } else {
            sweeps::call_off(&mut tx, None).await?;
            (AuditAction::KillSwitchReleased, None)
        };
        let data = json!({"reason": reason});
        tx.audit(&who.actor(), action, "tenant", None, data).await?;
        tx.event(
            EventKind::KillSwitch,
            None,
            json!({"engaged": engaged, "reason": reason, "by": who.key_id}),
        )
        .await?;
        self.publish(tx.commit().await?);
        self.spawn_sweep(who.tenant_id, sweep);
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
        self.set_session_state(who, id, SessionState::Killed, reason)
            .await
    }

    /// Lets a killed session spend again (admins).
    pub async fn revive_session(&self, who: &Principal, id: Uuid) -> Result<SessionView> {
        require(who.is_admin(), "only admins revive sessions")?;
        self.set_session_state(who, id, SessionState::Active, None)
            .await
    }

    async fn set_session_state(
        &self,
        who: &Principal,
        id: Uuid,
        state: SessionState,
        reason: Option<String>,
    ) -> Result<SessionView> {
        let mut tx = self.begin_as(who).await?;
        sessions::get(tx.conn(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("session"))?;
        let killing = state == SessionState::Killed;
        let changed = if killing {
            sessions::kill(&mut tx, id).await?
        } else {
            sessions::revive(&mut tx, id).await?
        };
        if changed {
            let (action, sweep) = if killing {
                let sweep = Uuid::now_v7();
                sweeps::open(&mut tx, sweep, Some(id), "killed").await?;
                (AuditAction::SessionKilled, Some(sweep))
            } else {
                sweeps::call_off(&mut tx, Some(id)).await?;
                (AuditAction::SessionRevived, None)
            };
            let data = json!({"reason": reason});
            let subject = format!("session:{id}");
            tx.audit(&who.actor(), action, &subject, Some(id), data)
                .await?;
            if killing {
                let payload = json!({"kind": "session", "session_id": id, "reason": reason});
                tx.event(EventKind::Cancelled, Some(id), payload).await?;
            }
            self.publish(tx.commit().await?);
            self.spawn_sweep(who.tenant_id, sweep);
        }
        self.session(who, id).await
    }

    /// Sweeps a stop that just committed, now, beside the answer.
    fn spawn_sweep(&self, tenant_id: Uuid, sweep: Option<Uuid>) {
        let Some(sweep) = sweep else { return };
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.sweep_stop(tenant_id, sweep).await {
                tracing::warn!(error = %e, %sweep, "a stop's sweep stopped; the sweeper takes it up");
            }
        });
    }

    /// Finishes every stop's sweep left open (by a crash, or another instance); returns how many it finished.
    pub async fn sweep_stops(&self) -> Result<usize> {
        let open = sweeps::open_sweeps(self.store.reader(), 100).await?;
        let mut finished = 0;
        for sweep in open {
            if self.sweep_stop(sweep.tenant_id, sweep.id).await? {
                finished += 1;
            }
        }
        Ok(finished)
    }

    /// Cancels what a stop left pending in its scope, a batch per transaction, until nothing is left; then
    /// closes the sweep and reports how many requests it cancelled. Returns whether this call closed it.
    pub(crate) async fn sweep_stop(&self, tenant_id: Uuid, id: Uuid) -> Result<bool> {
        loop {
            let mut tx = self.store.begin(tenant_id, self.now()).await?;
            let Some(sweep) = sweeps::get(&mut tx, id).await? else {
                return Ok(false);
            };
            let batch = cancel_batch(&mut tx, &sweep).await?;
            let scope = sweep.session_id;
            let subject = scope.map_or_else(|| "tenant".to_owned(), |s| format!("session:{s}"));
            if batch.done {
                sweeps::close(&mut tx, id).await?;
                let total = json!({"reason": sweep.reason, "cancelled": sweep.cancelled});
                tx.audit(
                    "system",
                    AuditAction::StopSwept,
                    &subject,
                    scope,
                    total.clone(),
                )
                .await?;
                let (kind, mut payload) = match scope {
                    None => (EventKind::KillSwitch, json!({"engaged": true})),
                    Some(s) => (
                        EventKind::Cancelled,
                        json!({"kind": "session", "session_id": s}),
                    ),
                };
                payload["swept"] = json!(true);
                payload["cancelled"] = json!(sweep.cancelled);
                tx.event(kind, scope, payload).await?;
                self.publish(tx.commit().await?);
                return Ok(true);
            }
            sweeps::add(&mut tx, id, batch.cancelled.len() as i64).await?;
            let data = json!({"reason": sweep.reason, "cancelled_approvals": batch.cancelled});
            tx.audit("system", AuditAction::StopBatch, &subject, scope, data)
                .await?;
            self.publish(tx.commit().await?);
        }
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
                let waited = (self.now() - request.created_at)
                    .to_std()
                    .unwrap_or_default();
                self.metrics.approval_ended(ApprovalStatus::Expired, waited);
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// Runs [`Paygent::expire_overdue`], [`Paygent::escalate_due`] and the stops' sweeps every `every`,
    /// reconciles stale signed payments every 15 s, keeps the planner's statistics current every second
    /// ([`paygent_store::Store::keep_statistics`]), and once a minute prunes what is older than
    /// `event_retention`, until the task is aborted.
    pub fn spawn_sweeper(
        &self,
        every: Duration,
        event_retention: chrono::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let paygent = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reconcile = Every::new(RECONCILE_EVERY);
            let mut statistics = Every::new(STATISTICS_EVERY);
            let mut prune = Every::new(PRUNE_EVERY);
            let mut marks_from = String::new();
            loop {
                tick.tick().await;
                paygent.sweep_waiting().await;
                if reconcile.due() {
                    let stale = paygent.now() - chrono::Duration::seconds(60);
                    if let Err(e) = paygent.reconcile_signed_before(Some(stale)).await {
                        tracing::warn!(error = %e, "reconciling signed payments failed; retrying");
                    }
                }
                if statistics.due() {
                    match paygent.store.keep_statistics().await {
                        Ok(tables) if !tables.is_empty() => tracing::debug!(?tables, "analyzed"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "analyzing tables failed; retrying"),
                    }
                }
                if prune.due() {
                    paygent.prune_old(event_retention, &mut marks_from).await;
                }
            }
        })
    }

    /// Expires overdue requests, escalates waiting ones, and sweeps stopped scopes; a failure is retried on
    /// the next tick.
    async fn sweep_waiting(&self) {
        if let Err(e) = self.expire_overdue().await {
            tracing::warn!(error = %e, "sweeping overdue approvals failed; retrying");
        }
        if let Err(e) = self.escalate_due().await {
            tracing::warn!(error = %e, "escalating waiting approvals failed; retrying");
        }
        if let Err(e) = self.sweep_stops().await {
            tracing::warn!(error = %e, "sweeping stopped scopes failed; retrying");
        }
    }

    /// Prunes events, the breaker's marks (a share of their scopes, from `marks_from` on), and what people were
    /// told, older than `retention`.
    async fn prune_old(&self, retention: chrono::Duration, marks_from: &mut String) {
        match self.store.prune_events(self.now() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "pruned old events"),
            Err(e) => tracing::warn!(error = %e, "pruning events failed; retrying"),
        }
        if let Err(e) = self
            .prune_marks(marks_from, crate::breaker::PRUNE_SCOPES)
            .await
        {
            tracing::warn!(error = %e, "pruning the breaker's marks failed; retrying");
        }
        if let Err(e) = self.prune_told(retention).await {
            tracing::warn!(error = %e, "pruning deliveries, links and messages failed; retrying");
        }
    }
}

/// A chore done at most once a period, the first time at once.
struct Every {
    period: Duration,
    last: Option<tokio::time::Instant>,
}

impl Every {
    fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    /// Whether it is due now; if so, it counts as done from now.
    fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed() >= self.period);
        if due {
            self.last = Some(tokio::time::Instant::now());
        }
        due
    }
}

/// Refuses to let money move in a stopped scope, as this transaction sees it (under the tenant's lock): the
/// emergency stop, or the session killed. A stop's commit is enough; its sweep need not have come by yet.
/// Returns the session, for checks of its own (a frozen session's approvals are decided, not executed).
pub(crate) async fn refuse_if_stopped(tx: &mut WriteTx, session_id: Uuid) -> Result<SessionRecord> {
    if tx.kill_switch().is_some() {
        return Err(EngineError::Conflict(
            "the emergency stop is engaged: nothing is approved or executed".into(),
        ));
    }
    // Read with its policy: a write begun about the session has both already, from the lock's round trip.
    let (session, _) = crate::policies::session_in_force(tx, session_id)
        .await?
        .ok_or(EngineError::NotFound("session"))?;
    if session.state == SessionState::Killed {
        return Err(EngineError::Conflict(
            "the session was killed: nothing is approved or executed".into(),
        ));
    }
    Ok(session)
}

/// One transaction's share of a sweep.
struct Batch {
    /// The requests it cancelled.
    cancelled: Vec<Uuid>,
    /// True when it found nothing left to cancel.
    done: bool,
}

/// Cancels at most a batch of what the stop left in its scope (one session, or the whole tenant): active
/// executions, pending approvals, and payments still waiting on a person (approved requests not yet executed lose
/// their payment too), releasing reservations.
async fn cancel_batch(tx: &mut WriteTx, sweep: &Sweep) -> Result<Batch> {
    let (session_id, reason) = (sweep.session_id, sweep.reason.as_str());
    // Executions first: each cancels the approval its step waits on, and the event that stops its runner.
    let executions = paygent_store::executions::active_in(tx, session_id, STOP_BATCH).await?;
    for execution in &executions {
        crate::executions::cancel_within(tx, execution, reason).await?;
    }
    let ended = approvals::cancel_some(tx, session_id, reason, STOP_BATCH).await?;
    let mut cancelled = Vec::with_capacity(ended.len());
    for (id, session, payment_id) in ended {
        let payload = json!({"kind": "approval", "id": id, "session_id": session,
            "payment_id": payment_id, "reason": reason});
        tx.event(EventKind::Cancelled, Some(session), payload)
            .await?;
        cancelled.push(id);
    }
    let waiting = payments::awaiting_approval(tx, session_id, STOP_BATCH).await?;
    for payment in &waiting {
        crate::payments::deny_pending(tx, payment.id, DenyReason::Killed).await?;
    }
    let done = executions.is_empty() && cancelled.is_empty() && waiting.is_empty();
    Ok(Batch { cancelled, done })
}

#[cfg(test)]
mod tests {
    use super::KillSwitchView;

    #[test]
    fn a_stop_record_never_reads_as_released() {
        assert!(!KillSwitchView::parse(None).engaged);
        for record in [
            "{\"engaged\":true,\"reason\":\"runaway\"}",
            "{\"engaged\":false}",
            "not json",
            "",
        ] {
            let view = KillSwitchView::parse(Some(record));
            assert!(view.engaged, "{record:?} reads as engaged");
        }
        let unreadable = KillSwitchView::parse(Some("not json"));
        assert!(unreadable.reason.unwrap().contains("unreadable"));
        let readable = KillSwitchView::parse(Some("{\"engaged\":true,\"reason\":\"runaway\"}"));
        assert_eq!(readable.reason.as_deref(), Some("runaway"));
    }
}
