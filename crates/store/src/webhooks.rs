//! Webhook endpoints and their delivery log.

use crate::db::{Db, query};
use crate::{Result, StoreError, WriteTx, opt_time, time, uuid};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    /// The event types it takes; empty for all.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_until`.
    pub previous_secret: Option<String>,
    pub previous_until: Option<DateTime<Utc>>,
    /// The last event delivered or passed over.
    pub delivered_seq: i64,
    /// Failed attempts since the last delivery.
    pub failures: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// The first failure since the last delivery.
    pub failing_since: Option<DateTime<Utc>>,
    /// Set when it kept failing for a day: nothing is sent to it until an admin enables it.
    pub disabled_at: Option<DateTime<Utc>>,
}

crate::row_type! {
    struct WebhookRow {
        id: String,
        tenant_id: String,
        url: String,
        events: String,
        description: Option<String>,
        secret: String,
        previous_secret: Option<String>,
        previous_until: Option<String>,
        delivered_seq: i64,
        failures: i64,
        next_attempt_at: String,
        created_by: String,
        created_at: String,
        failing_since: Option<String>,
        disabled_at: Option<String>,
    }
}

const COLUMNS: &str = "id, tenant_id, url, events, description, secret, previous_secret, previous_until, \
    delivered_seq, failures, next_attempt_at, created_by, created_at, failing_since, disabled_at";

impl TryFrom<WebhookRow> for WebhookRecord {
    type Error = StoreError;
    fn try_from(r: WebhookRow) -> Result<Self> {
        Ok(WebhookRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            url: r.url,
            events: serde_json::from_str(&r.events)
                .map_err(|_| StoreError::Corrupt(format!("bad webhook events {:?}", r.events)))?,
            description: r.description,
            secret: r.secret,
            previous_secret: r.previous_secret,
            previous_until: opt_time(r.previous_until)?,
            delivered_seq: r.delivered_seq,
            failures: r.failures,
            next_attempt_at: time(&r.next_attempt_at)?,
            created_by: uuid(&r.created_by)?,
            created_at: time(&r.created_at)?,
            failing_since: opt_time(r.failing_since)?,
            disabled_at: opt_time(r.disabled_at)?,
        })
    }
}

pub async fn insert(tx: &mut WriteTx, w: &WebhookRecord) -> Result<()> {
    query(format!(
        "INSERT INTO webhooks ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, 0, $8, $9, $8, NULL, NULL)"
    ))
    .bind(w.id.to_string())
    .bind(w.tenant_id.to_string())
    .bind(w.url.clone())
    .bind(serde_json::json!(w.events).to_string())
    .bind(w.description.clone())
    .bind(w.secret.clone())
    .bind(w.delivered_seq)
    .bind(paygent_domain::time::format(w.created_at))
    .bind(w.created_by.to_string())
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn get(db: Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<WebhookRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2");
    crate::by_id::<WebhookRow, _>(db, sql, tenant_id, id).await
}

/// A tenant's webhooks in id order, the page after `after`.
pub async fn list(
    db: Db<'_>,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<WebhookRecord>> {
    query(format!(
        "SELECT {COLUMNS} FROM webhooks WHERE tenant_id = $1 AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    ))
    .bind(tenant_id.to_string())
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .records::<WebhookRow, _>(db)
    .await
}

/// Up to `limit` webhooks of every tenant whose next attempt is due at `now`.
pub async fn due(db: Db<'_>, now: DateTime<Utc>, limit: i64) -> Result<Vec<WebhookRecord>> {
    query(format!(
        "SELECT {COLUMNS} FROM webhooks WHERE next_attempt_at <= $1 AND disabled_at IS NULL \
         ORDER BY next_attempt_at LIMIT $2"
    ))
    .bind(paygent_domain::time::format(now))
    .bind(limit)
    .records::<WebhookRow, _>(db)
    .await
}

/// Deletes a webhook and its delivery log; returns whether it existed.
pub async fn delete(tx: &mut WriteTx, id: Uuid) -> Result<bool> {
    let tenant = tx.tenant_id().to_string();
    query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
        .bind(id.to_string())
        .execute(tx.conn())
        .await?;
    let gone = query("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id.to_string())
        .execute(tx.conn())
        .await?;
    Ok(gone == 1)
}

/// Replaces the secret; the one it replaces signs too until `until`. Returns whether the webhook exists.
pub async fn rotate(
    tx: &mut WriteTx,
    id: Uuid,
    secret: &str,
    until: DateTime<Utc>,
) -> Result<bool> {
    let tenant = tx.tenant_id().to_string();
    let done = query(
        "UPDATE webhooks SET previous_secret = secret, previous_until = $3, secret = $4 \
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id.to_string())
    .bind(paygent_domain::time::format(until))
    .bind(secret)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// Where a webhook's delivery stands after an attempt: its cursor moves only from `from`, so two instances
/// never move it past an event neither delivered.
pub struct Progress {
    pub from: i64,
    pub to: i64,
    pub failures: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub failing_since: Option<DateTime<Utc>>,
}

pub async fn progress(db: Db<'_>, id: Uuid, p: &Progress) -> Result<bool> {
    let done = query(
        "UPDATE webhooks SET delivered_seq = $3, failures = $4, next_attempt_at = $5, failing_since = $6 \
         WHERE id = $1 AND delivered_seq = $2",
    )
    .bind(id.to_string())
    .bind(p.from)
    .bind(p.to)
    .bind(p.failures)
    .bind(paygent_domain::time::format(p.next_attempt_at))
    .bind(p.failing_since.map(paygent_domain::time::format))
    .execute(db)
    .await?;
    Ok(done == 1)
}

/// Disables a webhook (`Some`) or enables it again (`None`, its failures forgotten and due at once); returns
/// whether it changed.
pub async fn disable(tx: &mut WriteTx, id: Uuid, at: Option<DateTime<Utc>>) -> Result<bool> {
    let tenant = tx.tenant_id().to_string();
    let now = tx.now_text();
    let done = query(
        "UPDATE webhooks SET disabled_at = $3, failures = CASE WHEN $3 IS NULL THEN 0 ELSE failures END, \
         failing_since = CASE WHEN $3 IS NULL THEN NULL ELSE failing_since END, next_attempt_at = $4 \
         WHERE tenant_id = $1 AND id = $2 AND (disabled_at IS NULL) = ($3 IS NOT NULL)",
    )
    .bind(tenant)
    .bind(id.to_string())
    .bind(at.map(paygent_domain::time::format))
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// One attempt to deliver one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub webhook_id: Uuid,
    pub seq: i64,
    pub attempt: i64,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
}

crate::row_type! {
    struct DeliveryRow {
        webhook_id: String,
        seq: i64,
        attempt: i64,
        at: String,
        status: Option<i64>,
        error: Option<String>,
        latency_ms: i64,
    }
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;
    fn try_from(r: DeliveryRow) -> Result<Self> {
        Ok(Delivery {
            webhook_id: uuid(&r.webhook_id)?,
            seq: r.seq,
            attempt: r.attempt,
            at: time(&r.at)?,
            status: r.status,
            error: r.error,
            latency_ms: r.latency_ms,
        })
    }
}

pub async fn record(db: Db<'_>, d: &Delivery) -> Result<()> {
    query(
        "INSERT INTO webhook_deliveries (webhook_id, seq, attempt, at, status, error, latency_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(d.webhook_id.to_string())
    .bind(d.seq)
    .bind(d.attempt)
    .bind(paygent_domain::time::format(d.at))
    .bind(d.status)
    .bind(d.error.clone())
    .bind(d.latency_ms)
    .execute(db)
    .await?;
    Ok(())
}

/// A webhook's delivery attempts, newest first, the page before `(seq, attempt)`.
pub async fn deliveries(
    db: Db<'_>,
    webhook_id: Uuid,
    before: Option<(i64, i64)>,
    limit: i64,
) -> Result<Vec<Delivery>> {
    let (seq, attempt) = before.unwrap_or((i64::MAX, i64::MAX));
    query(
        "SELECT webhook_id, seq, attempt, at, status, error, latency_ms FROM webhook_deliveries \
         WHERE webhook_id = $1 AND (seq < $2 OR (seq = $2 AND attempt < $3)) \
         ORDER BY seq DESC, attempt DESC LIMIT $4",
    )
    .bind(webhook_id.to_string())
    .bind(seq)
    .bind(attempt)
    .bind(limit)
    .records::<DeliveryRow, _>(db)
    .await
}
