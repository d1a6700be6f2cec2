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
use paygent_domain::policy::{Policy, Verdict};
use paygent_domain::quorum::quorum_for;
use paygent_domain::rules::PolicyRules;
use paygent_domain::velocity::{
    Freeze, MAX_WINDOW_SECONDS, Mark, Paying, Trip, Velocity, Window, Windows, tripped,
};
use paygent_store::WriteTx;
use paygent_store::payments::PaymentRecord;
use paygent_store::sessions::{self, SessionRecord};
use paygent_store::velocity;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The breaker's reads for one payment: the last mark of each scope read, to leave the payment's marks if it
/// counts.
pub(crate) struct Count {
    scopes: Vec<(String, Option<Mark>)>,
    usd: Decimal,
    /// The session's last unfreeze: no mark grown by this payment spans it.
    since: DateTime<Utc>,
}

impl Count {
    /// Reads each rule's window for a payment `asker` asks for in `session`, from the session's last unfreeze at
    /// the earliest, in one statement; returns the reads and the first rule the payment would break.
    pub(crate) async fn read(
        tx: &mut WriteTx,
        rules: &[Velocity],
        (asker, session): (Uuid, &SessionRecord),
        p: &PaymentRecord,
    ) -> Result<(Count, Option<Trip>)> {
        let since = session.breaker_since.unwrap_or(DateTime::<Utc>::MIN_UTC);
        let windows = Windows::of(rules, (tx.now(), since), (session.id, asker), paying(p));
        let found = velocity::windows(tx, &windows.wanted).await?;
        let seen = windows.seen(&found);
        let trip = tripped(rules, &seen, p.usd_value);
        let mut scopes: Vec<(String, Option<Mark>)> = Vec::new();
        for ((scope, _), (_, last)) in windows.wanted.into_iter().zip(found) {
            if !scopes.iter().any(|(s, _)| *s == scope) {
                scopes.push((scope, last));
            }
        }
        let usd = p.usd_value;
        Ok((Count { scopes, usd, since }, trip))
    }

    /// Leaves the payment's mark in every scope read: it counts for every request judged after it.
    pub(crate) async fn mark(&self, tx: &mut WriteTx) -> Result<()> {
        let marks: Vec<(String, Mark)> = self
            .scopes
            .iter()
            .map(|(scope, last)| {
                (
                    scope.clone(),
                    Mark::after(last.as_ref(), self.usd, tx.now(), self.since),
                )
            })
            .collect();
        Ok(velocity::leave(tx, &marks).await?)
    }
}

/// The payment as the breaker tells identical payments apart.
fn paying(p: &PaymentRecord) -> Paying<'_> {
    Paying {
        recipient: &p.recipient,
        amount: p.amount,
        currency: &p.currency,
    }
}

/// Sessions at most whose last judgement is kept; past it, all are forgotten, and guessed again.
const MOST_JUDGED: usize = 65_536;

/// The rules and unfreeze time each session's last payment was judged under. On PostgreSQL the next payment's
/// windows, and whether a person is likely to be asked about it, are guessed from them and read in the round trip
/// that takes the tenant's lock; the store uses that read only if what is then asked for under the lock is
/// exactly that, so a wrong guess (a policy changed, an unfreeze) costs a read of its own, never a wrong answer.
#[derive(Debug, Default)]
pub(crate) struct LastJudged(Mutex<HashMap<Uuid, Judged>>);

/// A session's last payment was judged under these rules (its tool rules as the session tightens them), counting
/// from this unfreeze.
#[derive(Debug, Clone)]
struct Judged {
    rules: Arc<PolicyRules>,
    tools: Arc<Policy>,
    since: DateTime<Utc>,
}

impl LastJudged {
    /// Keeps the rules a payment of `session` was judged under.
    pub(crate) fn judged(&self, session: &SessionRecord, rules: &Arc<PolicyRules>) {
        let since = session.breaker_since.unwrap_or(DateTime::<Utc>::MIN_UTC);
        let tools = Arc::new(rules.for_session(&session.config));
        let rules = Arc::clone(rules);
        let mut judged = self.0.lock().expect("last judged");
        if judged.len() >= MOST_JUDGED && !judged.contains_key(&session.id) {
            judged.clear();
        }
        judged.insert(
            session.id,
            Judged {
                rules,
                tools,
                since,
            },
        );
    }

    /// Whether a payment of `usd` by `tool` with `args` in `session`, judged as the session's last, would go to
    /// one person on its tool rules: the guard then looks for a standing approval and reads the payee's history.
    pub(crate) fn asks_one_person(
        &self,
        session: Uuid,
        (tool, usd, args): (&str, Decimal, &serde_json::Value),
    ) -> bool {
        let last = self.0.lock().expect("last judged").get(&session).cloned();
        last.is_some_and(|j| {
            let one = quorum_for(&j.rules.quorums, usd).is_none_or(|q| q.approvals_required <= 1);
            one && matches!(
                j.tools.evaluate(tool, usd, args),
                Verdict::RequireApproval { .. }
            )
        })
    }

    /// The windows a payment `key` asks for in `session` at `now` would read, if judged as the session's last.
    pub(crate) fn guess(
        &self,
        (session, key): (Uuid, Uuid),
        now: DateTime<Utc>,
        p: Paying<'_>,
    ) -> Vec<Window> {
        let last = self.0.lock().expect("last judged").get(&session).cloned();
        let Some(Judged { rules, since, .. }) = last else {
            return Vec::new();
        };
        Windows::of(&rules.velocity, (now, since), (session, key), p).wanted
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
/// How many scopes one pass of the sweeper looks at: the walk goes on from there a minute later.
pub(crate) const PRUNE_SCOPES: usize = 10_000;

impl Paygent {
    /// Deletes the breaker's marks older than any window reaches, in at most `scopes` of the scopes that have
    /// marks, from the one after `from` on, a batch per statement; returns how many. `from` is left where the
    /// walk stopped, empty once it reached the last scope.
    pub async fn prune_marks(&self, from: &mut String, scopes: usize) -> Result<u64> {
        let longest = Duration::seconds(MAX_WINDOW_SECONDS.into());
        let before = self.now() - longest - Duration::hours(1);
        let mut pruned = 0;
        for _ in 0..scopes {
            let Some((scope, n)) = velocity::prune(&self.store, from, before, PRUNE_BATCH).await?
            else {
                from.clear();
                break;
            };
            pruned += n;
            // A full batch may have left more of the scope's old marks: it is visited again.
            if n < PRUNE_BATCH as u64 {
                *from = scope;
            }
        }
        Ok(pruned)
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
