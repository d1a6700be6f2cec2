//! Payments: every intent an agent submits, whatever the guard decided, with its status history in the audit.

use crate::db::{Arg, Db, Row, query};
use crate::deferred::{Changes, Deferred};
use crate::{Result, StoreError, WriteTx, decimal, opt_uuid, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::swap::SwapTerms;
use paygent_domain::{Decimal, PaymentStatus};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub tool: String,
    pub amount: Decimal,
    pub currency: String,
    pub usd_value: Decimal,
    pub recipient: String,
    pub description: Option<String>,
    pub status: PaymentStatus,
    pub reason: Option<String>,
    pub approval_id: Option<Uuid>,
    pub tx_hash: Option<String>,
    /// The network a rail would pay it on when it was filed (it may be signed for no other), then where it was
    /// paid: a CAIP-2 id such as `eip155:338`.
    pub network: Option<String>,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub requested_by: Uuid,
    /// The budget day this payment's reservation or spend is booked on.
    pub budget_day: Option<String>,
    /// Why it was denied, in words (e.g. how much budget was left).
    pub detail: Option<String>,
    /// The key whose period ledgers it is booked on: its session's creator, if its policy had limits.
    pub limits_key: Option<Uuid>,
    /// For a resource that names its own price (x402): the most the agent would pay; `amount` is the price.
    pub max_amount: Option<Decimal>,
    /// For a swap: what it buys and the least it may give.
    pub swap: Option<SwapTerms>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

crate::row_type! {
    struct PaymentRow {
        id: String,
        tenant_id: String,
        session_id: String,
        tool: String,
        amount: String,
        currency: String,
        usd_value: String,
        recipient: String,
        description: Option<String>,
        status: String,
        reason: Option<String>,
        approval_id: Option<String>,
        tx_hash: Option<String>,
        network: Option<String>,
        idempotency_key: Option<String>,
        request_hash: String,
        requested_by: String,
        budget_day: Option<String>,
        detail: Option<String>,
        limits_key: Option<String>,
        max_amount: Option<String>,
        swap: Option<String>,
        created_at: String,
        updated_at: String,
    }
}

const COLUMNS: &str = "id, tenant_id, session_id, tool, amount, currency, usd_value, recipient, description, \
    status, reason, approval_id, tx_hash, network, idempotency_key, request_hash, requested_by, budget_day, detail, \
    limits_key, max_amount, swap, created_at, updated_at";

impl TryFrom<PaymentRow> for PaymentRecord {
    type Error = StoreError;
    fn try_from(r: PaymentRow) -> Result<Self> {
        Ok(PaymentRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            session_id: uuid(&r.session_id)?,
            tool: r.tool,
            amount: decimal(&r.amount)?,
            currency: r.currency,
            usd_value: decimal(&r.usd_value)?,
            recipient: r.recipient,
            description: r.description,
            status: PaymentStatus::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt(format!("bad payment status {:?}", r.status)))?,
            reason: r.reason,
            approval_id: opt_uuid(r.approval_id)?,
            tx_hash: r.tx_hash,
            network: r.network,
            idempotency_key: r.idempotency_key,
            request_hash: r.request_hash,
            requested_by: uuid(&r.requested_by)?,
            budget_day: r.budget_day,
            detail: r.detail,
            limits_key: opt_uuid(r.limits_key)?,
            max_amount: r.max_amount.as_deref().map(decimal).transpose()?,
            swap: r
                .swap
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("bad swap terms: {e}")))?,
            created_at: time(&r.created_at)?,
            updated_at: time(&r.updated_at)?,
        })
    }
}

fn select(filter: &str) -> String {
    format!("SELECT {COLUMNS} FROM payments WHERE {filter}")
}

pub async fn insert(tx: &mut WriteTx, p: &PaymentRecord) -> Result<()> {
    let values: Vec<Arg> = vec![
        p.id.to_string().into(),
        p.tenant_id.to_string().into(),
        p.session_id.to_string().into(),
        (&p.tool).into(),
        p.amount.to_string().into(),
        (&p.currency).into(),
        p.usd_value.to_string().into(),
        (&p.recipient).into(),
        p.description.clone().into(),
        p.status.as_str().into(),
        p.reason.clone().into(),
        p.approval_id.map(|a| a.to_string()).into(),
        p.tx_hash.clone().into(),
        p.network.clone().into(),
        p.idempotency_key.clone().into(),
        (&p.request_hash).into(),
        p.requested_by.to_string().into(),
        p.budget_day.clone().into(),
        p.detail.clone().into(),
        p.limits_key.map(|k| k.to_string()).into(),
        p.max_amount.map(|m| m.to_string()).into(),
        p.swap.as_ref().map(|t| json!(t).to_string()).into(),
        paygent_domain::time::format(p.created_at).into(),
        paygent_domain::time::format(p.updated_at).into(),
    ];
    let changes = match PAID.contains(&p.status) {
        true => Changes::PaidTo(p.recipient.clone()),
        false => Changes::Unread,
    };
    tx.hold(Deferred::insert("payments", COLUMNS, values, 1).changing(changes))
        .await
}

pub async fn get(db: Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<PaymentRecord>> {
    crate::by_id::<PaymentRow, _>(db, select("tenant_id = $1 AND id = $2"), tenant_id, id).await
}

pub async fn by_idempotency_key(
    db: Db<'_>,
    tenant_id: Uuid,
    key: &str,
) -> Result<Option<PaymentRecord>> {
    query(select("tenant_id = $1 AND idempotency_key = $2"))
        .bind(tenant_id.to_string())
        .bind(key)
        .record::<PaymentRow, _>(db)
        .await
}

/// Payments, newest first, optionally of one session.
pub async fn list(db: Db<'_>, scope: crate::Scope) -> Result<Vec<PaymentRecord>> {
    let sql = select(&crate::scoped("payments", true));
    crate::in_scope::<PaymentRow, _>(db, sql, scope).await
}

/// What is paid: replaced as a whole when an approver's edit is executed.
#[derive(Debug, Clone, PartialEq)]
pub struct Terms {
    pub amount: Decimal,
    pub currency: String,
    pub usd_value: Decimal,
    pub recipient: String,
    pub description: Option<String>,
}

/// A conditional status change: it happens only if the payment is still in `from`.
pub struct Transition<'a> {
    pub id: Uuid,
    pub from: PaymentStatus,
    pub to: PaymentStatus,
    pub reason: Option<&'a str>,
    /// The reason in words, where `reason` is a code.
    pub detail: Option<&'a str>,
    pub tx_hash: Option<&'a str>,
    /// Where a rail may pay it, or paid it (a CAIP-2 network id such as `eip155:338`).
    pub network: Option<&'a str>,
    pub terms: Option<&'a Terms>,
}

impl Transition<'_> {
    /// A move from one state to another that records nothing else.
    pub fn new(id: Uuid, from: PaymentStatus, to: PaymentStatus) -> Self {
        Transition {
            id,
            from,
            to,
            reason: None,
            detail: None,
            tx_hash: None,
            network: None,
            terms: None,
        }
    }
}

/// Applies `t`; returns whether the payment was still in `t.from`.
pub async fn transition(tx: &mut WriteTx, t: Transition<'_>) -> Result<bool> {
    let now = tx.now_text();
    let tenant = tx.tenant_id().to_string();
    let terms = t.terms;
    let (amount, currency, usd, recipient, description) = (
        terms.map(|x| x.amount.to_string()),
        terms.map(|x| x.currency.clone()),
        terms.map(|x| x.usd_value.to_string()),
        terms.map(|x| x.recipient.clone()),
        terms.and_then(|x| x.description.clone()),
    );
    let edited = terms.is_some() as i64;
    let done = query(
        "UPDATE payments SET status = $3, reason = COALESCE($4, reason), tx_hash = COALESCE($5, tx_hash), \
         updated_at = $6, amount = COALESCE($7, amount), currency = COALESCE($8, currency), \
         usd_value = COALESCE($9, usd_value), recipient = COALESCE($10, recipient), \
         description = CASE WHEN $12 = 1 THEN $11 ELSE description END, network = COALESCE($14, network), \
         detail = COALESCE($15, detail) WHERE tenant_id = $1 AND id = $2 AND status = $13",
    )
    .bind(tenant)
    .bind(t.id.to_string())
    .bind(t.to.as_str())
    .bind(t.reason)
    .bind(t.tx_hash)
    .bind(now)
    .bind(amount)
    .bind(currency)
    .bind(usd)
    .bind(recipient)
    .bind(description)
    .bind(edited)
    .bind(t.from.as_str())
    .bind(t.network)
    .bind(t.detail)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// Payments still waiting on a person, optionally of one session.
pub async fn awaiting_approval(
    tx: &mut WriteTx,
    session_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<PaymentRecord>> {
    let tenant = tx.tenant_id().to_string();
    query(select(
        "tenant_id = $1 AND status = 'pending_approval' AND ($2 IS NULL OR session_id = $2) \
         ORDER BY created_at LIMIT $3",
    ))
    .bind(tenant)
    .bind(session_id.map(|s| s.to_string()))
    .bind(limit)
    .records::<PaymentRow, _>(tx.conn())
    .await
}

/// Whether `key`'s sessions were let pay `payee` (normalized) before.
pub async fn known_payee(db: Db<'_>, key: Uuid, payee: &str) -> Result<bool> {
    let found = query("SELECT 1 FROM key_payees WHERE key_id = $1 AND payee = $2")
        .bind(key.to_string())
        .bind(payee.to_owned())
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}

/// Remembers that `key`'s sessions were let pay `payee` (normalized).
pub async fn remember_payee(tx: &mut WriteTx, key: Uuid, payee: &str) -> Result<()> {
    let (tenant, now) = (tx.tenant_id().to_string(), tx.now_text());
    query(
        "INSERT INTO key_payees (tenant_id, key_id, payee, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (key_id, payee) DO NOTHING",
    )
    .bind(tenant)
    .bind(key.to_string())
    .bind(payee.to_owned())
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// A payee's history in the tenant, for the person deciding a payment to it.
#[derive(Debug, Clone, PartialEq)]
pub struct PayeeHistory {
    /// Whether the tenant let anything be paid to it before.
    pub paid_before: bool,
    /// The USD values of what it let be paid to it since the moment asked, newest first, at most the limit.
    pub recent: Vec<Decimal>,
}

/// What the tenant let be paid (allowed or executed) to `recipient`: ever, and since `since` (at most `limit`
/// payments, an index range of that payee's paid payments alone), in one statement: its rows are the recent
/// payments' values, then a NULL if anything was ever paid to it.
pub async fn payee_history(
    tx: &mut WriteTx,
    recipient: &str,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<PayeeHistory> {
    let tenant_id = tx.tenant_id();
    let q = payee_history_query(tenant_id, recipient, since, limit);
    PayeeHistory::from_rows(q.fetch_all(tx.conn()).await?)
}

/// The statuses in which a payment counts in its payee's history: let be paid.
const PAID: [PaymentStatus; 2] = [PaymentStatus::Executed, PaymentStatus::Authorized];

/// What the tenant let be paid to a recipient: `$1` tenant, `$2` recipient, `$3` since when, `$4` how many at most.
pub(crate) static PAYEE_HISTORY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let statuses: Vec<String> = PAID.iter().map(|s| format!("'{}'", s.as_str())).collect();
    let paid = format!(
        "tenant_id = $1 AND recipient = $2 AND status IN ({})",
        statuses.join(", ")
    );
    format!(
        "SELECT usd_value FROM (SELECT usd_value FROM payments WHERE {paid} AND created_at > $3 \
         ORDER BY created_at DESC LIMIT $4) r \
         UNION ALL SELECT NULL FROM (SELECT 1 FROM payments WHERE {paid} LIMIT 1) e"
    )
});

pub(crate) fn payee_history_query(
    tenant_id: Uuid,
    recipient: &str,
    since: DateTime<Utc>,
    limit: i64,
) -> crate::db::Query {
    query(PAYEE_HISTORY.as_str())
        .bind(tenant_id.to_string())
        .bind(recipient.to_owned())
        .bind(paygent_domain::time::format(since))
        .bind(limit)
}

impl PayeeHistory {
    pub(crate) fn from_rows(rows: Vec<Row>) -> Result<PayeeHistory> {
        let paid_before = !rows.is_empty();
        let recent: Vec<Decimal> = (rows.into_iter())
            .filter_map(|r| r.get::<Option<String>>(0).transpose())
            .map(|usd| decimal(&usd?))
            .collect::<Result<_>>()?;
        Ok(PayeeHistory {
            paid_before,
            recent,
        })
    }
}

crate::row_type! {
    struct ReplayRow {
        id: String,
        created_at: String,
        session_id: String,
        owner: String,
        requested_by: String,
        tool: String,
        amount: String,
        currency: String,
        usd_value: String,
        recipient: String,
        status: String,
        approval_id: Option<String>,
        config: String,
    }
}

/// A recorded payment to replay, and its session's settings.
pub struct ToReplay {
    pub recorded: paygent_domain::simulation::Recorded,
    pub config: paygent_domain::SessionConfig,
}

/// Up to `limit` of the tenant's payments made in `[from, to)` in sessions held to `policy` (or to no policy,
/// when `default`), in the order of their ids (v7, of their time), after the payment `after` (a cursor): a
/// range of the primary key, no index of its own.
pub async fn to_replay(
    db: Db<'_>,
    tenant_id: Uuid,
    (policy, default): (Uuid, bool),
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ToReplay>> {
    let rows = query(
        "SELECT p.id, p.created_at, p.session_id, s.created_by, p.requested_by, p.tool, p.amount, p.currency, \
         p.usd_value, p.recipient, p.status, p.approval_id, s.config \
         FROM payments p JOIN sessions s ON s.id = p.session_id \
         WHERE p.id >= $8 AND p.id < $9 AND p.tenant_id = $1 AND p.created_at >= $2 AND p.created_at < $3 \
         AND (s.policy_id = $4 OR ($5 = 1 AND s.policy_id IS NULL)) \
         AND ($6 IS NULL OR p.id > $6) \
         ORDER BY p.id LIMIT $7",
    )
    .bind(tenant_id.to_string())
    .bind(paygent_domain::time::format(from))
    .bind(paygent_domain::time::format(to))
    .bind(policy.to_string())
    .bind(i64::from(default))
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .bind(paygent_domain::time::uuid_floor(from).to_string())
    .bind(paygent_domain::time::uuid_floor(to + chrono::Duration::milliseconds(1)).to_string())
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| replayed(ReplayRow::try_from(row)?))
        .collect()
}

fn replayed(r: ReplayRow) -> Result<ToReplay> {
    use paygent_domain::simulation::{Outcome, Recorded};
    let status = PaymentStatus::parse(&r.status)
        .ok_or_else(|| StoreError::Corrupt(format!("bad payment status {:?}", r.status)))?;
    let happened = Outcome::of(status, r.approval_id.is_some());
    Ok(ToReplay {
        recorded: Recorded {
            id: uuid(&r.id)?,
            at: time(&r.created_at)?,
            session_id: uuid(&r.session_id)?,
            owner: uuid(&r.owner)?,
            asker: uuid(&r.requested_by)?,
            tool: r.tool,
            amount: decimal(&r.amount)?,
            currency: r.currency,
            usd: decimal(&r.usd_value)?,
            recipient: r.recipient,
            happened,
        },
        config: crate::parsed(&r.config, "session config")?,
    })
}
