//! Policies: named, versioned rules that admins set for the agents bound to them.

use crate::db::{Db, query};
use crate::sessions::SessionRecord;
use crate::{Result, StoreError, WriteTx, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::PolicyRules;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// 1 when created, one more for each change; 0 for a default policy nobody has changed yet.
    pub version: i64,
    /// Shared: the rules of one version are parsed once and read by every payment under them.
    pub rules: Arc<PolicyRules>,
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
        let rules = Arc::new(crate::parsed(&r.rules, "policy rules")?);
        Head::try_from(r.head())?.with(rules)
    }
}

impl PolicyRow {
    fn head(self) -> HeadRow {
        HeadRow {
            id: self.id,
            tenant_id: self.tenant_id,
            name: self.name,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

crate::row_type! {
    struct HeadRow {
        id: String,
        tenant_id: String,
        name: String,
        version: i64,
        created_at: String,
        updated_at: String,
    }
}

/// A policy row without its rules, which may be long (payee lists of 1,000 entries) and are read only when the
/// cache lacks their version.
struct Head {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<HeadRow> for Head {
    type Error = StoreError;
    fn try_from(r: HeadRow) -> Result<Self> {
        Ok(Head {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            name: r.name,
            version: r.version,
            created_at: time(&r.created_at)?,
            updated_at: time(&r.updated_at)?,
        })
    }
}

impl Head {
    fn with(self, rules: Arc<PolicyRules>) -> Result<PolicyRecord> {
        Ok(PolicyRecord {
            id: self.id,
            tenant_id: self.tenant_id,
            name: self.name,
            version: self.version,
            rules,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }

    /// The head with its rules: from `cache` when this version was parsed before, else read and parsed once.
    async fn completed(self, db: Db<'_>, cache: &RulesCache) -> Result<PolicyRecord> {
        let key = (self.tenant_id, self.id);
        if let Some(rules) = cache.get(key, self.version, self.updated_at) {
            return self.with(rules);
        }
        let row =
            query("SELECT rules FROM policies WHERE tenant_id = $1 AND id = $2 AND version = $3")
                .bind(self.tenant_id.to_string())
                .bind(self.id.to_string())
                .bind(self.version)
                .fetch_optional(db)
                .await?
                .ok_or_else(|| StoreError::Corrupt("a policy changed while it was read".into()))?;
        let rules = Arc::new(crate::parsed::<PolicyRules>(
            &row.get::<String>(0)?,
            "policy rules",
        )?);
        cache.put(key, self.version, self.updated_at, rules.clone());
        self.with(rules)
    }
}

/// Parsed rules by policy version. The guard reads its policy for every payment, and a policy with long payee
/// lists costs more to read and parse than the rest of the guard. An entry serves only the version and change
/// time it was parsed for, both read in the same transaction, so it is never stale whichever instance changed
/// the policy.
#[derive(Clone, Debug, Default)]
pub struct RulesCache(Arc<Mutex<HashMap<(Uuid, Uuid), Parsed>>>);

#[derive(Debug)]
struct Parsed {
    version: i64,
    updated_at: DateTime<Utc>,
    rules: Arc<PolicyRules>,
}

/// The most policies whose rules are kept parsed; past it, the cache starts again.
const CACHED_POLICIES: usize = 4096;

impl RulesCache {
    fn get(
        &self,
        key: (Uuid, Uuid),
        version: i64,
        updated_at: DateTime<Utc>,
    ) -> Option<Arc<PolicyRules>> {
        let cached = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        cached
            .get(&key)
            .filter(|p| p.version == version && p.updated_at == updated_at)
            .map(|p| p.rules.clone())
    }

    fn put(
        &self,
        key: (Uuid, Uuid),
        version: i64,
        updated_at: DateTime<Utc>,
        rules: Arc<PolicyRules>,
    ) {
        let mut cached = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.len() >= CACHED_POLICIES && !cached.contains_key(&key) {
            cached.clear();
        }
        let parsed = Parsed {
            version,
            updated_at,
            rules,
        };
        cached.insert(key, parsed);
    }
}

const COLUMNS: &str = "id, tenant_id, name, version, rules, created_at, updated_at";
const HEAD: &str = "id, tenant_id, name, version, created_at, updated_at";

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

/// The policy `id` as of the tenant's lock, its rules parsed once per version.
pub async fn locked(tx: &mut WriteTx, id: Uuid) -> Result<Option<PolicyRecord>> {
    let tenant = tx.tenant_id();
    let (mut db, cache) = tx.with_rules();
    let row = query(format!(
        "SELECT {HEAD} FROM policies WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant.to_string())
    .bind(id.to_string())
    .fetch_optional(db.again())
    .await?;
    match row {
        Some(row) => Ok(Some(
            Head::try_from(HeadRow::try_from(row)?)?
                .completed(db, cache)
                .await?,
        )),
        None => Ok(None),
    }
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
        p_created_at: Option<String>,
        p_updated_at: Option<String>,
    }
}

/// A session (`$2`) of the tenant (`$1`) with the policy it is held to, `$3` when it names none.
pub(crate) static SESSION_WITH_POLICY: LazyLock<String> =
    LazyLock::new(|| session_with_policy_sql("$2"));

/// As [`SESSION_WITH_POLICY`], the session of the tenant's approval request `$2`: read in a decision's first
/// round trip, before the request says which session it is about.
pub(crate) static SESSION_OF_REQUEST: LazyLock<String> =
    LazyLock::new(|| session_with_policy_sql(crate::approvals::REQUEST_SESSION));

fn session_with_policy_sql(session: &str) -> String {
    format!(
        "SELECT {}, p.id, p.name, p.version, p.created_at, p.updated_at \
         FROM sessions s LEFT JOIN policies p ON p.tenant_id = s.tenant_id AND p.id = COALESCE(s.policy_id, $3) \
         WHERE s.tenant_id = $1 AND s.id = {session}",
        crate::sessions::COLUMNS
    )
}

/// A session with the policy it is held to (`default_id` when it names none), as of the tenant's lock: one read,
/// and one more only when the policy's version was never parsed. The policy is `None` when it has no row (a
/// default nobody changed, or a policy that is gone).
pub async fn session_with_policy(
    tx: &mut WriteTx,
    session_id: Uuid,
    default_id: Uuid,
) -> Result<Option<(SessionRecord, Option<PolicyRecord>)>> {
    let row = match tx.take_prefetched(session_id, default_id) {
        Some(row) => row,
        None => {
            let tenant = tx.tenant_id().to_string();
            query(SESSION_WITH_POLICY.as_str())
                .bind(tenant)
                .bind(session_id.to_string())
                .bind(default_id.to_string())
                .fetch_optional(tx.conn())
                .await?
        }
    };
    let (db, cache) = tx.with_rules();
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
    let head = match (
        r.p_id,
        r.p_name,
        r.p_version,
        r.p_created_at,
        r.p_updated_at,
    ) {
        (Some(id), Some(name), Some(version), Some(created_at), Some(updated_at)) => HeadRow {
            id,
            tenant_id: r.tenant_id,
            name,
            version,
            created_at,
            updated_at,
        },
        _ => return Ok(Some((session, None))),
    };
    let policy = Head::try_from(head)?.completed(db, cache).await?;
    Ok(Some((session, Some(policy))))
}
