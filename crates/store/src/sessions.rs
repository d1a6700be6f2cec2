//! Sessions: an agent's working context and its configuration.

use crate::db::{Db, query};
use crate::{Result, StoreError, WriteTx, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::{SessionConfig, SessionState};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: Option<String>,
    pub wallet_address: Option<String>,
    pub config: SessionConfig,
    pub state: SessionState,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// The policy it was opened under; the tenant's default when absent.
    pub policy_id: Option<Uuid>,
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
    }
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> Result<Self> {
        Ok(SessionRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            name: r.name,
            wallet_address: r.wallet_address,
            config: crate::parsed(&r.config, "session config")?,
            state: SessionState::parse(&r.state)
                .ok_or_else(|| StoreError::Corrupt(format!("bad session state {:?}", r.state)))?,
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
    query(
        "SELECT id, tenant_id, name, wallet_address, config, state, created_by, created_at, policy_id \
         FROM sessions WHERE tenant_id = $1 AND ($2 IS NULL OR created_by = $2) \
         AND ($4 IS NULL OR (created_at, id) < (SELECT created_at, id FROM sessions WHERE id = $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(tenant_id.to_string())
    .bind(created_by.map(|k| k.to_string()))
    .bind(limit)
    .bind(after.map(|k| k.to_string()))
    .records::<SessionRow, _>(db)
.await
}

/// The session, if it exists in this tenant.
pub async fn get(db: Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<SessionRecord>> {
    let sql = "SELECT id, tenant_id, name, wallet_address, config, state, created_by, created_at, policy_id \
         FROM sessions WHERE tenant_id = $1 AND id = $2";
    crate::by_id::<SessionRow, _>(db, sql, tenant_id, id).await
}

/// Replaces a session's config; returns whether the session exists in this tenant.
pub async fn update_config(tx: &mut WriteTx, id: Uuid, config: &SessionConfig) -> Result<bool> {
    let text = serde_json::to_string(config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let sql = "UPDATE sessions SET config = $3 WHERE tenant_id = $1 AND id = $2";
    tx.change_one(sql, id, text).await
}

/// Sets a session's state; returns whether it changed.
pub async fn set_state(tx: &mut WriteTx, id: Uuid, state: SessionState) -> Result<bool> {
    let sql = "UPDATE sessions SET state = $3 WHERE tenant_id = $1 AND id = $2 AND state <> $3";
    tx.change_one(sql, id, state.as_str()).await
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
