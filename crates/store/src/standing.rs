//! Standing approvals: what a person let a session go on paying one payee without asking again.

use crate::db::{Db, Query, query};
use crate::payments::PayeeHistory;
use crate::{Result, StoreError, WriteTx, decimal, opt_time, opt_uuid, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::Decimal;
use std::sync::LazyLock;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct StandingRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    /// The payee, normalized.
    pub payee: String,
    pub max_usd: Decimal,
    pub used_usd: Decimal,
    /// The request whose approval granted it.
    pub approval_id: Uuid,
    pub granted_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<Uuid>,
}

crate::row_type! {
    struct StandingRow {
        id: String,
        tenant_id: String,
        session_id: String,
        payee: String,
        max_usd: String,
        used_usd: String,
        approval_id: String,
        granted_by: String,
        created_at: String,
        expires_at: String,
        revoked_at: Option<String>,
        revoked_by: Option<String>,
    }
}

const COLUMNS: &str = "id, tenant_id, session_id, payee, max_usd, used_usd, approval_id, granted_by, \
    created_at, expires_at, revoked_at, revoked_by";

impl TryFrom<StandingRow> for StandingRecord {
    type Error = StoreError;
    fn try_from(r: StandingRow) -> Result<Self> {
        Ok(StandingRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            session_id: uuid(&r.session_id)?,
            payee: r.payee,
            max_usd: decimal(&r.max_usd)?,
            used_usd: decimal(&r.used_usd)?,
            approval_id: uuid(&r.approval_id)?,
            granted_by: uuid(&r.granted_by)?,
            created_at: time(&r.created_at)?,
            expires_at: time(&r.expires_at)?,
            revoked_at: opt_time(r.revoked_at)?,
            revoked_by: opt_uuid(r.revoked_by)?,
        })
    }
}

pub async fn insert(tx: &mut WriteTx, s: &StandingRecord) -> Result<()> {
    query(format!(
        "INSERT INTO standing_approvals ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL)"
    ))
    .bind(s.id.to_string())
    .bind(s.tenant_id.to_string())
    .bind(s.session_id.to_string())
    .bind(s.payee.clone())
    .bind(s.max_usd.to_string())
    .bind(s.used_usd.to_string())
    .bind(s.approval_id.to_string())
    .bind(s.granted_by.to_string())
    .bind(paygent_domain::time::format(s.created_at))
    .bind(paygent_domain::time::format(s.expires_at))
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The session's standing approvals for `payee` in force at this transaction's time, oldest first (a few at
/// most: people grant them one decision at a time), and what the tenant paid `recipient` (as
/// [`crate::payments::payee_history`]), read together: a payment the rules send to a person looks for a
/// standing approval that covers it and, finding none, shows the person the payee's history, and both are read
/// under the tenant's lock: on PostgreSQL in the write's first round trip, when [`crate::About`] guessed them.
pub async fn in_force_with_history(
    tx: &mut WriteTx,
    (session_id, payee): (Uuid, &str),
    (recipient, since, limit): (&str, DateTime<Utc>, i64),
) -> Result<(Vec<StandingRecord>, PayeeHistory)> {
    let asked = crate::StandingAsked {
        payee: payee.to_owned(),
        recipient: recipient.to_owned(),
        since,
        limit,
    };
    let mut found = match tx.take_prefetched_standing(session_id, asked) {
        Some(read) => read,
        None => {
            let standing = in_force_query(tx, session_id, payee);
            let history =
                crate::payments::payee_history_query(tx.tenant_id(), recipient, since, limit);
            crate::db::fetch_together(tx, vec![standing, history]).await?
        }
    }
    .into_iter();
    let mut next = || found.next().unwrap_or_default();
    let standing = crate::records::<StandingRow, StandingRecord>(next())?;
    Ok((standing, PayeeHistory::from_rows(next())?))
}

/// A session's standing approvals for a payee in force at a time, oldest first: `$1` tenant, `$2` session, `$3`
/// payee, `$4` the time.
pub(crate) static IN_FORCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM standing_approvals WHERE tenant_id = $1 AND session_id = $2 AND payee = $3 \
         AND revoked_at IS NULL AND expires_at > $4 ORDER BY created_at LIMIT 20"
    )
});

fn in_force_query(tx: &WriteTx, session_id: Uuid, payee: &str) -> Query {
    let (tenant, now) = (tx.tenant_id().to_string(), tx.now_text());
    query(IN_FORCE.as_str())
        .bind(tenant)
        .bind(session_id.to_string())
        .bind(payee.to_owned())
        .bind(now)
}

/// Takes `usd` of a standing approval that had `used` taken: a compare-and-set, false if it changed, was
/// revoked or expired meanwhile.
pub async fn take(tx: &mut WriteTx, s: &StandingRecord, usd: Decimal) -> Result<bool> {
    let (tenant, now) = (tx.tenant_id().to_string(), tx.now_text());
    let done = query(
        "UPDATE standing_approvals SET used_usd = $3 WHERE tenant_id = $1 AND id = $2 AND used_usd = $4 \
         AND revoked_at IS NULL AND expires_at > $5",
    )
    .bind(tenant)
    .bind(s.id.to_string())
    .bind((s.used_usd + usd).to_string())
    .bind(s.used_usd.to_string())
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

pub async fn get(db: Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<StandingRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM standing_approvals WHERE tenant_id = $1 AND id = $2");
    crate::by_id::<StandingRow, _>(db, sql, tenant_id, id).await
}

/// A tenant's standing approvals within a scope, newest first.
pub async fn list(db: Db<'_>, scope: crate::Scope) -> Result<Vec<StandingRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM standing_approvals WHERE {}",
        crate::scoped("standing_approvals", true)
    );
    crate::in_scope::<StandingRow, _>(db, sql, scope).await
}

/// Revokes a standing approval still standing; false if it was revoked already.
pub async fn revoke(tx: &mut WriteTx, id: Uuid, by: Uuid) -> Result<bool> {
    let (tenant, now) = (tx.tenant_id().to_string(), tx.now_text());
    let done = query(
        "UPDATE standing_approvals SET revoked_at = $3, revoked_by = $4 \
         WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(id.to_string())
    .bind(now)
    .bind(by.to_string())
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}
