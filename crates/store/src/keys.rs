//! API keys. Only a SHA-256 hash of each token is stored; the token itself is shown once.

use crate::db::{placeholders, query};
use crate::{Result, Store, StoreError, WriteTx, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::{Principal, Role};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// After this moment the key works nowhere; never, when absent.
    pub expires_at: Option<DateTime<Utc>>,
    /// The policy an agent key is bound to; its tenant's default when absent.
    pub policy_id: Option<Uuid>,
    /// The approver groups it is in, for quorums that name groups.
    pub groups: Vec<String>,
    /// The Slack user whose button presses decide as this key.
    pub slack_user: Option<String>,
    /// The address its person's mails go to.
    pub email: Option<String>,
}

crate::row_type! {
    struct KeyRow {
        id: String,
        tenant_id: String,
        name: String,
        role: String,
        created_at: String,
        expires_at: Option<String>,
        policy_id: Option<String>,
        groups: Option<String>,
        slack_user: Option<String>,
        email: Option<String>,
    }
}

const COLUMNS: &str =
    "id, tenant_id, name, role, created_at, expires_at, policy_id, groups, slack_user, email";
/// A key that was neither revoked nor is past its expiry at `$2`.
const LIVE: &str = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)";

impl KeyRecord {
    /// Who acts with this key.
    pub fn principal(&self) -> Principal {
        Principal {
            tenant_id: self.tenant_id,
            key_id: self.id,
            role: self.role,
        }
    }
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> Result<Self> {
        Ok(KeyRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            name: r.name,
            role: Role::parse(&r.role)
                .ok_or_else(|| StoreError::Corrupt(format!("bad role {:?}", r.role)))?,
            created_at: time(&r.created_at)?,
            expires_at: crate::opt_time(r.expires_at)?,
            policy_id: crate::opt_uuid(r.policy_id)?,
            groups: match r.groups {
                Some(text) => crate::parsed(&text, "key groups")?,
                None => Vec::new(),
            },
            slack_user: r.slack_user,
            email: r.email,
        })
    }
}

pub async fn insert(tx: &mut WriteTx, key: &KeyRecord, token_hash: &str) -> Result<()> {
    query(
        "INSERT INTO api_keys (id, tenant_id, name, role, token_hash, created_at, expires_at, policy_id, groups, \
         slack_user, email) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(key.id.to_string())
    .bind(key.tenant_id.to_string())
    .bind(&key.name)
    .bind(key.role.as_str())
    .bind(token_hash)
    .bind(paygent_domain::time::format(key.created_at))
    .bind(key.expires_at.map(paygent_domain::time::format))
    .bind(key.policy_id.map(|p| p.to_string()))
    .bind((!key.groups.is_empty()).then(|| serde_json::Value::from(key.groups.clone()).to_string()))
    .bind(key.slack_user.clone())
    .bind(key.email.clone())
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// How a key's person is known outside Paygent.
#[derive(Debug, Clone, Copy)]
pub enum Person<'a> {
    SlackUser(&'a str),
    Email(&'a str),
}

impl Store {
    /// The key whose token hashes to `token_hash`, if it is live at `now`.
    pub async fn key_by_hash(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<KeyRecord>> {
        self.live_key("token_hash = $1", token_hash.to_owned(), now)
            .await
    }

    /// The key `id`, if it is live at `now`.
    pub async fn key_by_id(&self, id: Uuid, now: DateTime<Utc>) -> Result<Option<KeyRecord>> {
        self.live_key("id = $1", id.to_string(), now).await
    }

    /// The live key of a tenant whose person is `who` elsewhere: a Slack user or an email address.
    pub async fn key_of_person(
        &self,
        tenant_id: Uuid,
        who: Person<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<KeyRecord>> {
        let (column, value) = match who {
            Person::SlackUser(u) => ("slack_user", u),
            Person::Email(e) => ("email", e),
        };
        query(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND {column} = $3 AND {LIVE}"
        ))
        .bind(tenant_id.to_string())
        .bind(paygent_domain::time::format(now))
        .bind(value.to_owned())
        .record::<KeyRow, _>(self.reader())
        .await
    }

    /// A page of a tenant's live keys in the approver group `group` that have an email address, by id after
    /// `after`: the people an escalation to that group mails.
    pub async fn mailed_members(
        &self,
        tenant_id: Uuid,
        group: &str,
        (after, limit): (Option<Uuid>, i64),
        now: DateTime<Utc>,
    ) -> Result<Vec<KeyRecord>> {
        // Groups are stored as a JSON list of names of a-z, 0-9, - and _: a quoted name, its `_` escaped for LIKE,
        // matches that name only.
        let pattern = format!("%\"{}\"%", group.replace('_', "\\_"));
        query(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND email IS NOT NULL AND {LIVE} \
             AND groups LIKE $3 ESCAPE '\\' AND id > $4 ORDER BY id LIMIT $5"
        ))
        .bind(tenant_id.to_string())
        .bind(paygent_domain::time::format(now))
        .bind(pattern)
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(limit)
        .records::<KeyRow, _>(self.reader())
        .await
    }

    async fn live_key(
        &self,
        filter: &str,
        value: String,
        now: DateTime<Utc>,
    ) -> Result<Option<KeyRecord>> {
        query(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE {filter} AND {LIVE}"
        ))
        .bind(value)
        .bind(paygent_domain::time::format(now))
        .record::<KeyRow, _>(self.reader())
        .await
    }

    /// Whether the tenant has any live admin key (bootstrap creates one only if not).
    pub async fn has_admin_key(&self, tenant_id: Uuid) -> Result<bool> {
        let found = query(
            "SELECT id FROM api_keys WHERE tenant_id = $1 AND role = 'admin' AND revoked_at IS NULL LIMIT 1",
        )
        .bind(tenant_id.to_string())
        .fetch_optional(self.reader())
        .await?;
        Ok(found.is_some())
    }
}

/// Revokes a live key of this tenant; returns whether it was live.
pub async fn revoke(tx: &mut WriteTx, id: Uuid) -> Result<bool> {
    let now = tx.now_text();
    let sql = "UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL";
    tx.change_one(sql, id, now).await
}

/// The name of one of this tenant's keys, revoked or not (a request's context names who asked).
pub async fn name_of(tx: &mut WriteTx, id: Uuid) -> Result<Option<String>> {
    if let Some(name) = tx.actor_name(id) {
        return Ok(Some(name.to_owned()));
    }
    let tenant = tx.tenant_id().to_string();
    let row = query("SELECT name FROM api_keys WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id.to_string())
        .fetch_optional(tx.conn())
        .await?;
    row.map(|r| r.get(0)).transpose()
}

/// The names of some of a tenant's keys, revoked or not, in one statement: a page of decisions names its
/// deciders (at most a page's worth of ids).
pub async fn names(
    db: crate::Db<'_>,
    tenant_id: Uuid,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT id, name FROM api_keys WHERE tenant_id = $1 AND id IN {}",
        placeholders(2, 1, ids.len())
    );
    let mut q = query(sql).bind(tenant_id.to_string());
    for id in ids {
        q = q.bind(id.to_string());
    }
    let rows = q.fetch_all(db).await?;
    rows.iter()
        .map(|r| Ok((uuid(&r.get::<String>(0)?)?, r.get(1)?)))
        .collect()
}

/// One of a tenant's keys, revoked or not (to name who decided something).
pub async fn any(db: crate::Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<KeyRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2");
    crate::by_id::<KeyRow, _>(db, sql, tenant_id, id).await
}
