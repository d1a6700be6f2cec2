//! Notifiers: a tenant's cursor over its event log for one channel that reaches people (Slack), and the Slack
//! messages it posted.

use crate::db::{Db, query};
use crate::{Result, WriteTx, time, uuid};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a notifier reaches people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Slack,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Slack => "slack",
        }
    }
}

/// One tenant's place in its event log for a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub tenant_id: Uuid,
    /// The last event handled (or passed over).
    pub delivered_seq: i64,
    /// Failed attempts since the last event handled.
    pub failures: i64,
    pub next_attempt_at: DateTime<Utc>,
}

crate::row_type! {
    struct CursorRow {
        tenant_id: String,
        delivered_seq: i64,
        failures: i64,
        next_attempt_at: String,
    }
}

impl TryFrom<CursorRow> for Cursor {
    type Error = crate::StoreError;
    fn try_from(r: CursorRow) -> Result<Self> {
        Ok(Cursor {
            tenant_id: uuid(&r.tenant_id)?,
            delivered_seq: r.delivered_seq,
            failures: r.failures,
            next_attempt_at: time(&r.next_attempt_at)?,
        })
    }
}

/// Starts the tenant's notifier for `channel` at the current end of its event log, unless it has one.
pub async fn ensure(tx: &mut WriteTx, channel: Channel) -> Result<()> {
    let tenant = tx.tenant_id();
    let head = crate::webhooks::event_head(tx.conn(), tenant).await?;
    let now = tx.now_text();
    query(
        "INSERT INTO notifiers (tenant_id, channel, delivered_seq, failures, next_attempt_at) \
         VALUES ($1, $2, $3, 0, $4) ON CONFLICT (tenant_id, channel) DO NOTHING",
    )
    .bind(tenant.to_string())
    .bind(channel.as_str())
    .bind(head)
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The notifiers of `channel` due at `now`, the longest waiting first.
pub async fn due(
    db: Db<'_>,
    channel: Channel,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Cursor>> {
    query(
        "SELECT tenant_id, delivered_seq, failures, next_attempt_at FROM notifiers \
         WHERE channel = $1 AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3",
    )
    .bind(channel.as_str())
    .bind(paygent_domain::time::format(now))
    .bind(limit)
    .records::<CursorRow, _>(db)
    .await
}

/// Moves a notifier from `from` (as it was read) to `to`: a conditional update, so of two instances that read
/// the same cursor only one takes it (a claim sets `to.next_attempt_at` ahead as a lease), and whether it did.
pub async fn advance(db: Db<'_>, channel: Channel, from: &Cursor, to: &Cursor) -> Result<bool> {
    let done = query(
        "UPDATE notifiers SET delivered_seq = $4, failures = $5, next_attempt_at = $6 \
         WHERE tenant_id = $1 AND channel = $2 AND delivered_seq = $3 AND next_attempt_at = $7",
    )
    .bind(from.tenant_id.to_string())
    .bind(channel.as_str())
    .bind(from.delivered_seq)
    .bind(to.delivered_seq)
    .bind(to.failures)
    .bind(paygent_domain::time::format(to.next_attempt_at))
    .bind(paygent_domain::time::format(from.next_attempt_at))
    .execute(db)
    .await?;
    Ok(done == 1)
}

/// Where a request's Slack message is.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackMessage {
    pub approval_id: Uuid,
    pub tenant_id: Uuid,
    pub channel: String,
    pub ts: String,
}

crate::row_type! {
    struct SlackRow {
        approval_id: String,
        tenant_id: String,
        channel: String,
        ts: String,
    }
}

impl TryFrom<SlackRow> for SlackMessage {
    type Error = crate::StoreError;
    fn try_from(r: SlackRow) -> Result<Self> {
        Ok(SlackMessage {
            approval_id: uuid(&r.approval_id)?,
            tenant_id: uuid(&r.tenant_id)?,
            channel: r.channel,
            ts: r.ts,
        })
    }
}

/// Keeps where a request's message was posted (the first post, if it was posted twice).
pub async fn posted(db: Db<'_>, m: &SlackMessage, at: DateTime<Utc>) -> Result<()> {
    query(
        "INSERT INTO slack_messages (approval_id, tenant_id, channel, ts, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (approval_id) DO NOTHING",
    )
    .bind(m.approval_id.to_string())
    .bind(m.tenant_id.to_string())
    .bind(m.channel.clone())
    .bind(m.ts.clone())
    .bind(paygent_domain::time::format(at))
    .execute(db)
    .await?;
    Ok(())
}

/// The message a request was posted in, if it was.
pub async fn message(
    db: Db<'_>,
    tenant_id: Uuid,
    approval_id: Uuid,
) -> Result<Option<SlackMessage>> {
    let sql = "SELECT approval_id, tenant_id, channel, ts FROM slack_messages \
               WHERE tenant_id = $1 AND approval_id = $2";
    crate::by_id::<SlackRow, _>(db, sql, tenant_id, approval_id).await
}
