//! Notifiers: a tenant's cursor over its event log for each channel that reaches people (Slack, email), the
//! Slack messages posted, and the one-time links mailed.

use crate::db::{Db, query};
use crate::{Result, WriteTx, time, uuid};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a notifier reaches people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Slack,
    Email,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Slack => "slack",
            Channel::Email => "email",
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
    let head = tx.events_before();
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

/// A one-time link to decide a request, mailed to one person.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionLink {
    /// The SHA-256 of its token: the token itself is only in the mail.
    pub token_hash: String,
    pub tenant_id: Uuid,
    pub approval_id: Uuid,
    /// The key it decides as.
    pub key_id: Uuid,
    /// The action it may decide.
    pub digest: String,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

crate::row_type! {
    struct LinkRow {
        token_hash: String,
        tenant_id: String,
        approval_id: String,
        key_id: String,
        digest: String,
        expires_at: String,
        used_at: Option<String>,
    }
}

impl TryFrom<LinkRow> for DecisionLink {
    type Error = crate::StoreError;
    fn try_from(r: LinkRow) -> Result<Self> {
        Ok(DecisionLink {
            token_hash: r.token_hash,
            tenant_id: uuid(&r.tenant_id)?,
            approval_id: uuid(&r.approval_id)?,
            key_id: uuid(&r.key_id)?,
            digest: r.digest,
            expires_at: time(&r.expires_at)?,
            used_at: crate::opt_time(r.used_at)?,
        })
    }
}

/// Keeps a link about to be mailed, unless this person was already mailed about this request: whether to mail
/// it. A link kept but never sent (a crash, a failed send) is replaced by this one.
pub async fn prepare(db: Db<'_>, link: &DecisionLink, now: DateTime<Utc>) -> Result<bool> {
    let done = query(
        "INSERT INTO decision_links (token_hash, tenant_id, approval_id, key_id, digest, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (approval_id, key_id) DO UPDATE \
         SET token_hash = excluded.token_hash, digest = excluded.digest, expires_at = excluded.expires_at, \
         created_at = excluded.created_at WHERE decision_links.sent_at IS NULL AND decision_links.used_at IS NULL",
    )
    .bind(link.token_hash.clone())
    .bind(link.tenant_id.to_string())
    .bind(link.approval_id.to_string())
    .bind(link.key_id.to_string())
    .bind(link.digest.clone())
    .bind(paygent_domain::time::format(link.expires_at))
    .bind(paygent_domain::time::format(now))
    .execute(db)
    .await?;
    Ok(done == 1)
}

/// Marks a link mailed: a retry no longer replaces it.
pub async fn sent(db: Db<'_>, token_hash: &str, now: DateTime<Utc>) -> Result<()> {
    query("UPDATE decision_links SET sent_at = $2 WHERE token_hash = $1")
        .bind(token_hash.to_owned())
        .bind(paygent_domain::time::format(now))
        .execute(db)
        .await?;
    Ok(())
}

/// The link whose token hashes to `token_hash`, used or not. Its token is only in the mail, so whoever holds it
/// was mailed it (a mail may arrive before it is marked sent).
pub async fn link(db: Db<'_>, token_hash: &str) -> Result<Option<DecisionLink>> {
    query(
        "SELECT token_hash, tenant_id, approval_id, key_id, digest, expires_at, used_at FROM decision_links \
         WHERE token_hash = $1",
    )
    .bind(token_hash.to_owned())
    .record::<LinkRow, _>(db)
    .await
}

/// Spends a link: one conditional update, so of two presses only one decides. Whether it was still unused and
/// alive at `now`.
pub async fn spend(db: Db<'_>, token_hash: &str, now: DateTime<Utc>) -> Result<bool> {
    let done = query(
        "UPDATE decision_links SET used_at = $2 \
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(token_hash.to_owned())
    .bind(paygent_domain::time::format(now))
    .execute(db)
    .await?;
    Ok(done == 1)
}

/// What people were told, kept for a while: each kind pruned on its own clock.
#[derive(Debug, Clone, Copy)]
pub enum Told {
    /// Webhook delivery attempts, by when they were made.
    WebhookDeliveries,
    /// Mailed links, by when they expired.
    DecisionLinks,
    /// Where Slack messages are, by when they were posted.
    SlackMessages,
}

/// Deletes up to `limit` rows of `told` from before `before`; returns how many.
pub async fn prune(
    store: &crate::Store,
    told: Told,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64> {
    let (table, key, at) = match told {
        Told::WebhookDeliveries => ("webhook_deliveries", "webhook_id, seq, attempt", "at"),
        Told::DecisionLinks => ("decision_links", "token_hash", "expires_at"),
        Told::SlackMessages => ("slack_messages", "approval_id", "created_at"),
    };
    query(format!(
        "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {at} < $1 LIMIT $2)"
    ))
    .bind(paygent_domain::time::format(before))
    .bind(limit)
    .execute(store.writer())
    .await
}
