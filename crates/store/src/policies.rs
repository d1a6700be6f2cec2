//! Policies: named, versioned rules that admins set for the agents bound to them.

use crate::db::{Db, query};
use crate::sessions::SessionRecord;
use crate::{Result, StoreError, WriteTx, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::PolicyRules;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// 1 when created, one more for each change; 0 for a default policy nobody has changed yet.
    pub version: i64,
    pub rules: PolicyRules,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

crate::row_type! {
    struct PolicyRow {
        id: String,
        tenant_id: String,
        name: String,
        version: i64,
        rules: String,
        created_at: String,
        updated_at: String,
    }
}

impl TryFrom<PolicyRow> for PolicyRecord {
    type Error = StoreError;
    fn try_from(r: PolicyRow) -> Result<Self> {
        Ok(PolicyRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            name: r.name,
            version: r.version,
            rules: crate::parsed(&r.rules, "policy rules")?,
            created_at: time(&r.created_at)?,
            updated_at: time(&r.updated_at)?,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, name, version, rules, created_at, updated_at";

fn rules_text(rules: &PolicyRules) -> Result<String> {
    serde_json::to_string(rules).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub async fn get(db: Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<PolicyRecord>> {
    crate::by_id::<PolicyRow, _>(
        db,
        format!("SELECT {COLUMNS} FROM policies WHERE tenant_id = $1 AND id = $2"),
        tenant_id,
        id,
    )
    .await
}

/// A tenant's policies by name, after `after` (a name) for the next page.
pub async fn list(
    db: Db<'_>,
    tenant_id: Uuid,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<PolicyRecord>> {
    query(format!(
        "SELECT {COLUMNS} FROM policies WHERE tenant_id = $1 AND ($2 IS NULL OR name > $2) \
         ORDER BY name LIMIT $3"
    ))
    .bind(tenant_id.to_string())
    .bind(after.map(str::to_owned))
    .bind(limit)
    .records::<PolicyRow, _>(db)
    .await
}

pub async fn insert(tx: &mut WriteTx, p: &PolicyRecord) -> Result<()> {
    query(format!(
        "INSERT INTO policies ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(p.id.to_string())
    .bind(p.tenant_id.to_string())
    .bind(&p.name)
    .bind(p.version)
    .bind(rules_text(&p.rules)?)
    .bind(paygent_domain::time::format(p.created_at))
    .bind(paygent_domain::time::format(p.updated_at))
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Replaces a policy's rules if it is still at `from_version`; returns whether it was.
pub async fn replace(
    tx: &mut WriteTx,
    id: Uuid,
    from_version: i64,
    rules: &PolicyRules,
) -> Result<bool> {
    let now = tx.now_text();
    let tenant = tx.tenant_id().to_string();
    let done = query(
        "UPDATE policies SET rules = $4, version = version + 1, updated_at = $5 \
         WHERE tenant_id = $1 AND id = $2 AND version = $3",
    )
    .bind(tenant)
    .bind(id.to_string())
    .bind(from_version)
    .bind(rules_text(rules)?)
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

crate::row_type! {
    struct SessionPolicyRow {
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
        p_id: Option<String>,
        p_name: Option<String>,
        p_version: Option<i64>,
        p_rules: Option<String>,
        p_created_at: Option<String>,
        p_updated_at: Option<String>,
    }
}

/// A session with the row of the policy it is held to (`default_id` when it names none), in one read; the
/// policy is `None` when it has no row (a default nobody changed, or a policy that is gone).
pub async fn session_with_policy(
    db: Db<'_>,
    tenant_id: Uuid,
    session_id: Uuid,
    default_id: Uuid,
) -> Result<Option<(SessionRecord, Option<PolicyRecord>)>> {
    let row = query(format!(
        "SELECT {}, p.id, p.name, p.version, p.rules, p.created_at, p.updated_at \
         FROM sessions s LEFT JOIN policies p ON p.tenant_id = s.tenant_id AND p.id = COALESCE(s.policy_id, $3) \
         WHERE s.tenant_id = $1 AND s.id = $2",
        crate::sessions::COLUMNS
    ))
    .bind(tenant_id.to_string())
    .bind(session_id.to_string())
    .bind(default_id.to_string())
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let r = SessionPolicyRow::try_from(row)?;
    let session = SessionRecord::try_from(crate::sessions::SessionRow {
        id: r.id,
        tenant_id: r.tenant_id.clone(),
        name: r.name,
        wallet_address: r.wallet_address,
        config: r.config,
        state: r.state,
        created_by: r.created_by,
        created_at: r.created_at,
        policy_id: r.policy_id,
        frozen: r.frozen,
        breaker_since: r.breaker_since,
    })?;
    let policy = match (
        r.p_id,
        r.p_name,
        r.p_version,
        r.p_rules,
        r.p_created_at,
        r.p_updated_at,
    ) {
        (Some(id), Some(name), Some(version), Some(rules), Some(created_at), Some(updated_at)) => {
            Some(PolicyRecord::try_from(PolicyRow {
                id,
                tenant_id: r.tenant_id,
                name,
                version,
                rules,
                created_at,
                updated_at,
            })?)
        }
        _ => None,
    };
    Ok(Some((session, policy)))
}
