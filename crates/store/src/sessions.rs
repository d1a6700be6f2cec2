//! Sessions: an agent's working context and its configuration.

use crate::db::{Db, query};
use crate::{Result, StoreError, WriteTx, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::velocity::Freeze;
use paygent_domain::{SessionConfig, SessionState};
use uuid::Uuid;

/// A session row's columns, in [`SessionRow`]'s order, for queries that name the table `s`.
pub(crate) const COLUMNS: &str = "s.id, s.tenant_id, s.name, s.wallet_address, s.config, s.state, s.created_by, \
     s.created_at, s.policy_id, s.frozen, s.breaker_since";

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: Option<String>,
    pub wallet_address: Option<String>,
    pub config: SessionConfig,
    /// `frozen` when the circuit breaker froze an active session; a killed one reads `killed`.
    pub state: SessionState,
    /// The trip that froze it, while it is frozen (and kept if it is killed frozen).
    pub frozen: Option<Freeze>,
    /// The breaker counts only payments made after this: when a person last unfroze or revived it.
    pub breaker_since: Option<DateTime<Utc>>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// The policy it was opened under; the tenant's default when absent.
    pub policy_id: Option<Uuid>,
}

impl SessionRecord {
    /// The freeze in force: a killed session keeps the freeze it was killed with, but it is not in force.
    pub fn freeze(&self) -> Option<&Freeze> {
        self.frozen
            .as_ref()
            .filter(|_| self.state == SessionState::Frozen)
    }
}

crate::row_type! {
    pub(crate) struct SessionRow {
        id: String,
        tenant_id: String,
        name: Option<String>,
        wallet_address: Option<String>,
        config: String,
        state: String,
        created_by: String,
        created_at: String,
        policy_id: Option<String>,
        frozen: Option<String>,
        breaker_since: Option<String>,
    }
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> Result<Self> {
        let frozen: Option<Freeze> = match &r.frozen {
            Some(text) => Some(crate::parsed(text, "session freeze")?),
            None => None,
        };
        Ok(SessionRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            name: r.name,
            wallet_address: r.wallet_address,
            config: crate::parsed(&r.config, "session config")?,
            state: match (SessionState::parse(&r.state), &frozen) {
                (Some(SessionState::Active), Some(_)) => SessionState::Frozen,
                (Some(state), _) => state,
                (None, _) => {
                    return Err(StoreError::Corrupt(format!(
                        "bad session state {:?}",
                        r.state
                    )));
                }
            },
            frozen,
            breaker_since: r.breaker_since.as_deref().map(time).transpose()?,
            created_by: uuid(&r.created_by)?,
            created_at: time(&r.created_at)?,
            policy_id: crate::opt_uuid(r.policy_id)?,
        })
    }
}

pub async fn insert(tx: &mut WriteTx, s: &SessionRecord) -> Result<()> {
    let config =
        serde_json::to_string(&s.config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    query(
        "INSERT INTO sessions (id, tenant_id, name, wallet_address, config, state, created_by, created_at, \
         policy_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(s.id.to_string())
    .bind(s.tenant_id.to_string())
    .bind(s.name.clone())
    .bind(s.wallet_address.clone())
    .bind(config)
    .bind(s.state.as_str())
    .bind(s.created_by.to_string())
    .bind(paygent_domain::time::format(s.created_at))
    .bind(s.policy_id.map(|p| p.to_string()))
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// A tenant's sessions, newest first, optionally only those `created_by` one key.
pub async fn list(
    db: Db<'_>,
    tenant_id: Uuid,
    created_by: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<SessionRecord>> {
    query(format!(
        "SELECT {COLUMNS} FROM sessions s WHERE s.tenant_id = $1 AND ($2 IS NULL OR s.created_by = $2) \
         AND ($4 IS NULL OR (s.created_at, s.id) < (SELECT created_at, id FROM sessions WHERE id = $4)) \
         ORDER BY s.created_at DESC, s.id DESC LIMIT $3"
    ))
    .bind(tenant_id.to_string())
    .bind(created_by.map(|k| k.to_string()))
    .bind(limit)
    .bind(after.map(|k| k.to_string()))
    .records::<SessionRow, _>(db)
.await
}

/// The session, if it exists in this tenant.
pub async fn get(db: Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<SessionRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM sessions s WHERE s.tenant_id = $1 AND s.id = $2");
    crate::by_id::<SessionRow, _>(db, sql, tenant_id, id).await
}

/// Replaces a session's config; returns whether the session exists in this tenant.
pub async fn update_config(tx: &mut WriteTx, id: Uuid, config: &SessionConfig) -> Result<bool> {
    let text = serde_json::to_string(config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let sql = "UPDATE sessions SET config = $3 WHERE tenant_id = $1 AND id = $2";
    tx.change_one(sql, id, text).await
}

/// Kills a session, frozen or not; returns whether it changed.
pub async fn kill(tx: &mut WriteTx, id: Uuid) -> Result<bool> {
    let sql = "UPDATE sessions SET state = $3 WHERE tenant_id = $1 AND id = $2 AND state <> $3";
    tx.change_one(sql, id, SessionState::Killed.as_str()).await
}

/// Lets a killed session spend again, unfrozen, its breaker counting from now; returns whether it changed.
pub async fn revive(tx: &mut WriteTx, id: Uuid) -> Result<bool> {
    let sql = "UPDATE sessions SET state = 'active', frozen = NULL, breaker_since = $3 \
               WHERE tenant_id = $1 AND id = $2 AND state = 'killed'";
    let now = tx.now_text();
    tx.change_one(sql, id, now).await
}

/// Freezes an active session that is not frozen yet; returns whether it did.
pub async fn freeze(tx: &mut WriteTx, id: Uuid, freeze: &Freeze) -> Result<bool> {
    let text = serde_json::to_string(freeze).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let sql = "UPDATE sessions SET frozen = $3 \
               WHERE tenant_id = $1 AND id = $2 AND state = 'active' AND frozen IS NULL";
    tx.change_one(sql, id, text).await
}

/// Unfreezes an active frozen session, its breaker counting from now; returns whether it did.
pub async fn unfreeze(tx: &mut WriteTx, id: Uuid) -> Result<bool> {
    let sql = "UPDATE sessions SET frozen = NULL, breaker_since = $3 \
               WHERE tenant_id = $1 AND id = $2 AND state = 'active' AND frozen IS NOT NULL";
    let now = tx.now_text();
    tx.change_one(sql, id, now).await
}

/// How many of a session's rows in `table` (payments, approval_requests or executions) are in each status.
pub async fn status_counts(
    db: Db<'_>,
    table: StatusTable,
    tenant_id: Uuid,
    session_id: Uuid,
) -> Result<Vec<(String, i64)>> {
    let name = match table {
        StatusTable::Payments => "payments",
        StatusTable::Approvals => "approval_requests",
        StatusTable::Executions => "executions",
    };
    query(format!(
        "SELECT status, COUNT(*) FROM {name} WHERE tenant_id = $1 AND session_id = $2 GROUP BY status ORDER BY status"
    ))
    .bind(tenant_id.to_string())
    .bind(session_id.to_string())
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|r| Ok((r.get(0)?, r.get(1)?)))
    .collect()
}

/// The tables that [`status_counts`] counts.
#[derive(Debug, Clone, Copy)]
pub enum StatusTable {
    Payments,
    Approvals,
    Executions,
}
