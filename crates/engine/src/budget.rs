//! Booking payments against a session's daily budget, and showing where a budget stands.

use crate::views::{BudgetLine, BudgetView};
use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, NaiveDate, Utc};
use paygent_domain::PolicyRules;
use paygent_domain::audit::AuditAction;
use paygent_domain::budget::{BudgetConfig, Exceeded, USD_TOTAL, Usage};
use paygent_domain::payment::payee_of;
use paygent_domain::rules::Period;
use paygent_domain::spend::Spent;
use paygent_domain::{Decimal, Principal};
use paygent_store::WriteTx;
use paygent_store::budgets::{self, Delta, KEY_PERIODS, SESSION_DAYS};
use paygent_store::payments::PaymentRecord;
use paygent_store::sessions::{self, SessionRecord};
use paygent_store::spend;
use serde_json::json;
use std::collections::BTreeMap;
use uuid::Uuid;

/// An amount booked on one session's budget day, in its currency and in USD, on the periods of the key whose
/// policy limits it, and (once spent) on the spend rollups of the tenant, the agent and the session.
#[derive(Debug, Clone)]
pub(crate) struct Booking {
    pub session_id: Uuid,
    pub day: String,
    pub currency: String,
    pub amount: Decimal,
    pub usd: Decimal,
    /// The key that asked, and whom it pays (normalized): the rollups' agent and payee.
    pub agent: Uuid,
    pub payee: String,
    /// When the payment was asked for: what places it in the key's periods and the rollups' hours.
    pub at: DateTime<Utc>,
    /// The key whose period ledgers it is booked on.
    pub limits: Option<Uuid>,
}

impl Booking {
    /// The booking a payment holds under its current terms; none for a payment made before budgets existed.
    pub(crate) fn of(p: &PaymentRecord) -> Option<Booking> {
        Some(Booking {
            session_id: p.session_id,
            day: p.budget_day.clone()?,
            currency: p.currency.clone(),
            amount: p.amount,
            usd: p.usd_value,
            agent: p.requested_by,
            payee: payee_of(&p.recipient),
            at: p.created_at,
            limits: p.limits_key,
        })
    }

    /// The same booking day and session, for other terms (an approver's edit).
    pub(crate) fn with_terms(&self, currency: &str, amount: Decimal, usd: Decimal) -> Booking {
        Booking {
            currency: currency.to_owned(),
            amount,
            usd,
            ..self.clone()
        }
    }

    /// True when `other` needs no more budget than this one.
    pub(crate) fn covers(&self, other: &Booking) -> bool {
        self.currency == other.currency && other.amount <= self.amount && other.usd <= self.usd
    }

    /// What a move of `sign` times its worth, counting `payments`, adds to the spend rollups.
    fn spent(&self, sign: i64, payments: i64) -> Spent<'_> {
        Spent {
            agent: self.agent,
            session: self.session_id,
            payee: &self.payee,
            at: self.at,
            usd: self.usd * Decimal::from(sign),
            payments,
        }
    }
}

/// How a booking moves between reserved and spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Move {
    Reserve,
    Release,
    Spend,
    /// A spent payment that failed.
    Unspend,
    /// The part of a spend that a lower price left unpaid: the payment stays spent.
    Unused,
    /// A reservation becomes spend: execution.
    Settle,
}

impl Move {
    /// Signs of the move on spent and on reserved, and the payments it counts as spent.
    fn factors(self) -> (i64, i64, i64) {
        match self {
            Move::Reserve => (0, 1, 0),
            Move::Release => (0, -1, 0),
            Move::Spend => (1, 0, 1),
            Move::Unspend => (-1, 0, -1),
            Move::Unused => (-1, 0, 0),
            Move::Settle => (1, -1, 1),
        }
    }
}

/// Applies `how` to both the booking's currency and the USD total, on the session's day and on each of the
/// key's periods, and what it spends to the spend rollups.
pub(crate) async fn book(tx: &mut WriteTx, b: &Booking, how: Move) -> Result<()> {
    let (spent, reserved, payments) = how.factors();
    if spent != 0 {
        spend::fold(tx, &b.spent(spent, payments).changes()).await?;
    }
    let delta = |amount: Decimal| Delta {
        spent: amount * Decimal::from(spent),
        reserved: amount * Decimal::from(reserved),
    };
    let ledgers = [
        (b.currency.as_str(), delta(b.amount)),
        (USD_TOTAL, delta(b.usd)),
    ];
    let day = [
        (b.day.as_str(), ledgers[0].0, ledgers[0].1),
        (b.day.as_str(), USD_TOTAL, ledgers[1].1),
    ];
    budgets::apply(tx, SESSION_DAYS, b.session_id, &day).await?;
    let Some(key) = b.limits else {
        return Ok(());
    };
    let buckets = Period::ALL.map(|p| p.bucket(b.at));
    let changes: Vec<(&str, &str, Delta)> = buckets
        .iter()
        .flat_map(|bucket| ledgers.iter().map(move |(l, d)| (bucket.as_str(), *l, *d)))
        .collect();
    Ok(budgets::apply(tx, KEY_PERIODS, key, &changes).await?)
}

/// The first of the policy's limits that `b` would break, in words, as this transaction sees the key's usage.
pub(crate) async fn check_limits(
    tx: &mut WriteTx,
    rules: &PolicyRules,
    b: &Booking,
) -> Result<Option<String>> {
    let Some(key) = b.limits.filter(|_| !rules.limits.is_empty()) else {
        return Ok(None);
    };
    let (at, buckets) = (b.at, Period::ALL.map(|p| p.bucket(b.at)));
    let refs = buckets.each_ref().map(String::as_str);
    let book = budgets::usage_in(tx, KEY_PERIODS, key, &refs).await?;
    let used = |bucket: &str, ledger: &str| {
        book.get(&(bucket.to_owned(), ledger.to_owned()))
            .map_or(Decimal::ZERO, |u| u.spent + u.reserved)
    };
    Ok(rules.over_limit(at, &b.currency, b.amount, b.usd, used))
}

/// Whether `b` fits today's budget as this transaction sees it.
pub(crate) async fn check(
    tx: &mut WriteTx,
    config: &BudgetConfig,
    b: &Booking,
) -> Result<Result<(), Exceeded>> {
    let usage = budgets::day_usage_in(tx, b.session_id, &b.day).await?;
    let of = |k: &str| usage.get(k).copied().unwrap_or_default();
    Ok(config.check(&b.currency, b.amount, b.usd, of(&b.currency), of(USD_TOTAL)))
}

impl Paygent {
    /// Where a session's budget stands today.
    pub async fn budget(&self, who: &Principal, session_id: Uuid) -> Result<BudgetView> {
        let session = self.reachable_session(who, session_id).await?;
        self.budget_view(&session, self.now()).await
    }

    pub(crate) async fn budget_view(
        &self,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<BudgetView> {
        view_of(self.store.reader(), session, now).await
    }

    /// Replaces a session's budget settings (admins and approvers). The change is audited with both versions.
    pub async fn set_budget(
        &self,
        who: &Principal,
        session_id: Uuid,
        budget: BudgetConfig,
    ) -> Result<BudgetView> {
        require(who.can_decide(), "only approvers and admins change budgets")?;
        budget
            .validate(&self.prices)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut tx = self.begin_as(who).await?;
        let mut session = sessions::get(tx.conn(), who.tenant_id, session_id)
            .await?
            .ok_or(EngineError::NotFound("session"))?;
        let old = std::mem::replace(&mut session.config.budget, budget);
        sessions::update_config(&mut tx, session_id, &session.config).await?;
        tx.audit(
            &who.actor(),
            AuditAction::BudgetChanged,
            &format!("session:{session_id}"),
            Some(session_id),
            json!({"old": old, "new": session.config.budget}),
        )
        .await?;
        let now = tx.now();
        tx.commit().await?;
        self.budget_view(&session, now).await
    }
}

/// Where a session's budget stands at `now`, as `db` sees it.
pub(crate) async fn view_of(
    db: paygent_store::db::Db<'_>,
    session: &SessionRecord,
    now: DateTime<Utc>,
) -> Result<BudgetView> {
    let today = session.config.budget.day(now);
    let usage = budgets::day_usage(db, session.id, &today.0.to_string()).await?;
    Ok(view_from(session, today, usage))
}

/// Where a session's budget stands at `now`, as the transaction sees it: with what it booked.
pub(crate) async fn view_in(
    tx: &mut WriteTx,
    session: &SessionRecord,
    now: DateTime<Utc>,
) -> Result<BudgetView> {
    let today = session.config.budget.day(now);
    let usage = budgets::day_usage_in(tx, session.id, &today.0.to_string()).await?;
    Ok(view_from(session, today, usage))
}

/// The view of a session's budget on its day (and when that day ends), from the day's usage by ledger.
fn view_from(
    session: &SessionRecord,
    (day, resets_at): (NaiveDate, DateTime<Utc>),
    usage: BTreeMap<String, Usage>,
) -> BudgetView {
    let config = &session.config.budget;
    let line = |limit: Option<Decimal>, u: Usage| BudgetLine {
        limit,
        spent: u.spent,
        reserved: u.reserved,
        available: limit.map(|l| u.available(l)),
    };
    let mut currencies = BTreeMap::new();
    for (currency, limit) in &config.daily_limits {
        currencies.insert(currency.clone(), line(Some(*limit), Usage::default()));
    }
    for (ledger, u) in &usage {
        if ledger != USD_TOTAL {
            currencies.insert(
                ledger.clone(),
                line(config.daily_limits.get(ledger).copied(), *u),
            );
        }
    }
    BudgetView {
        session_id: session.id,
        day: day.to_string(),
        time_zone: config.budget_time_zone.clone(),
        resets_at,
        on_budget_exceeded: config.on_budget_exceeded,
        max_per_payment_usd: config.max_per_payment_usd,
        usd: line(
            config.daily_limit_usd,
            usage.get(USD_TOTAL).copied().unwrap_or_default(),
        ),
        currencies,
    }
}
