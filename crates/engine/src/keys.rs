//! Keys and tenants: random bearer tokens, stored only as SHA-256 hashes.

use crate::views::KeyView;
use crate::{DEFAULT_TENANT, EngineError, Paygent, Result, require};
use chrono::{DateTime, Utc};
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_domain::{Principal, Role};
use paygent_store::keys::{self, KeyRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

/// How long a key read from the database answers for its token before it is read again. Revocations reach the
/// cache as they reach open streams ([`KnownKeys::forget`]); this bounds how long one whose event went astray
/// (another instance's, its nudge lost) leaves a key working here: as long as the event hub's own backstop.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// Tokens remembered at most; past it the cache starts afresh.
const MOST_KNOWN: usize = 10_000;

/// Live keys by token hash, as last read from the database: on PostgreSQL, reading a request's key was a round
/// trip and a backend's wake-up per request (BENCHMARKS.md). A key revoked on this instance is forgotten before
/// the revocation is answered; one revoked on another, as its `key_revoked` event reaches this instance's event
/// hub, before its open streams here are told. A hit still checks the key's expiry, and every write checks the
/// key again under its tenant's lock, whatever let it in.
#[derive(Default)]
pub(crate) struct KnownKeys(Mutex<Known>);

#[derive(Default)]
struct Known {
    keys: HashMap<String, KnownKey>,
    /// Bumped by every revocation seen: a key read before one is not remembered after it.
    forgotten: u64,
}

struct KnownKey {
    principal: Principal,
    expires_at: Option<DateTime<Utc>>,
    read: Instant,
}

impl KnownKeys {
    /// The live key whose token hashes to `hash`, if it was read within [`TRUSTED_FOR`] and has not expired at
    /// `now`.
    fn get(&self, hash: &str, now: DateTime<Utc>) -> Option<Principal> {
        let known = self.0.lock().expect("known keys");
        let key = known.keys.get(hash)?;
        let live = key.read.elapsed() < TRUSTED_FOR && key.expires_at.is_none_or(|at| at > now);
        live.then(|| key.principal.clone())
    }

    /// What to hand [`KnownKeys::remember`] with a key about to be read.
    fn before_reading(&self) -> u64 {
        self.0.lock().expect("known keys").forgotten
    }

    /// Remembers a key read as live (`principal`, working until `expires_at`), unless a revocation was seen since
    /// `before` (it may have been this one's).
    fn remember(
        &self,
        hash: String,
        principal: Principal,
        expires_at: Option<DateTime<Utc>>,
        before: u64,
    ) {
        let mut known = self.0.lock().expect("known keys");
        if known.forgotten != before {
            return;
        }
        if known.keys.len() >= MOST_KNOWN {
            known.keys.clear();
        }
        let key = KnownKey {
            principal,
            expires_at,
            read: Instant::now(),
        };
        known.keys.insert(hash, key);
    }

    /// Forgets the key `id`: it was revoked.
    pub(crate) fn forget(&self, id: Uuid) {
        let mut known = self.0.lock().expect("known keys");
        known.forgotten += 1;
        known.keys.retain(|_, k| k.principal.key_id != id);
    }
}

/// A new tenant with its first admin key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewTenant {
    pub tenant_id: Uuid,
    pub name: String,
    pub admin_key: KeyView,
}

/// What an admin asks for when making a key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    /// When the key stops working; never, when absent.
    pub expires_at: Option<DateTime<Utc>>,
    /// The policy its sessions are held to; the tenant's default when absent.
    pub policy_id: Option<Uuid>,
    /// The approver groups it is in.
    pub groups: Vec<String>,
    /// The Slack user (`U…` id) whose button presses decide as this key; approvers and admins only.
    pub slack_user: Option<String>,
    /// The address mails with links to decide go to; approvers and admins only.
    pub email: Option<String>,
}

impl NewKey {
    pub fn new(name: &str, role: Role) -> Self {
        NewKey {
            name: name.to_owned(),
            role,
            expires_at: None,
            policy_id: None,
            groups: Vec::new(),
            slack_user: None,
            email: None,
        }
    }
}

/// Refuses a Slack user that is not a user id or an email that is no address, and either on a key that cannot
/// decide.
fn validate_person(new: &NewKey) -> Result<()> {
    if let Some(user) = &new.slack_user {
        let id_like = (3..=24).contains(&user.len())
            && user.starts_with(['U', 'W'])
            && user
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !id_like {
            return Err(EngineError::Invalid(
                "slack_user must be a Slack user id (U or W, then capitals and digits)".into(),
            ));
        }
    }
    if new
        .email
        .as_deref()
        .is_some_and(|e| !paygent_domain::rules::is_email(e))
    {
        return Err(EngineError::Invalid("email is not an email address".into()));
    }
    if new.role == Role::Agent && (new.slack_user.is_some() || new.email.is_some()) {
        return Err(EngineError::Invalid(
            "slack_user and email are for keys that decide: approvers and admins".into(),
        ));
    }
    Ok(())
}

/// 244 random bits from two v4 UUIDs (the OS generator), with a prefix that secret scanners can spot.
fn new_token() -> String {
    format!("pgk_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(EngineError::Invalid(
            "name must be 1 to 100 characters".into(),
        ));
    }
    Ok(())
}

impl Paygent {
    /// The names of the keys `ids`, as they are named now, in one read.
    pub(crate) async fn key_names(
        &self,
        tenant_id: Uuid,
        ids: impl Iterator<Item = Uuid>,
    ) -> Result<std::collections::HashMap<Uuid, String>> {
        let mut ids: Vec<Uuid> = ids.collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(paygent_store::keys::names(self.store.reader(), tenant_id, &ids).await?)
    }

    /// Resolves a bearer token to its principal. The lookup is by hash, so the token never reaches the database.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        if token.is_empty() || token.len() > 256 {
            return Err(EngineError::Unauthenticated);
        }
        let (hash, now) = (hash_token(token), self.now());
        if let Some(known) = self.keys.get(&hash, now) {
            return Ok(known);
        }
        let before = self.keys.before_reading();
        let key =
            (self.store.key_by_hash(&hash, now).await?).ok_or(EngineError::Unauthenticated)?;
        let principal = key.principal();
        (self.keys).remember(hash, principal.clone(), key.expires_at, before);
        Ok(principal)
    }

    /// Makes sure the default tenant and an admin key exist. With `admin_token`, that exact string becomes an
    /// admin key; otherwise, on the first start only, a new admin key is made and returned to be shown once.
    pub async fn bootstrap(&self, admin_token: Option<&str>) -> Result<Option<KeyView>> {
        self.store
            .ensure_tenant(DEFAULT_TENANT, "default", self.now())
            .await?;
        self.register_wallets().await?;
        match admin_token {
            Some(token) => {
                if token.len() < 16 {
                    return Err(EngineError::Invalid(
                        "PAYGENT_ADMIN_TOKEN must be at least 16 characters".into(),
                    ));
                }
                if self
                    .store
                    .key_by_hash(&hash_token(token), self.now())
                    .await?
                    .is_none()
                {
                    let key = NewKey::new("bootstrap (PAYGENT_ADMIN_TOKEN)", Role::Admin);
                    let inserted = self.insert_key(None, DEFAULT_TENANT, &key, token).await;
                    match inserted {
                        // Another instance starting at the same moment stored it first.
                        Err(EngineError::Store(e)) if e.is_unique_violation() => {}
                        other => {
                            other?;
                        }
                    }
                }
                Ok(None)
            }
            None if self.store.has_admin_key(DEFAULT_TENANT).await? => Ok(None),
            None => {
                let token = new_token();
                let new = NewKey::new("bootstrap admin", Role::Admin);
                let key = self.insert_key(None, DEFAULT_TENANT, &new, &token).await?;
                Ok(Some(KeyView::new(key, token)))
            }
        }
    }

    /// An admin creates a key of any role in their own tenant.
    pub async fn create_key(&self, who: &Principal, new: NewKey) -> Result<KeyView> {
        require(who.is_admin(), "only an admin creates keys")?;
        validate_name(&new.name)?;
        validate_person(&new)?;
        if let Some(why) = paygent_domain::quorum::invalid_groups(&new.groups) {
            return Err(EngineError::Invalid(format!("groups: {why}")));
        }
        if new.expires_at.is_some_and(|at| at <= self.now()) {
            return Err(EngineError::Invalid(
                "expires_at must be in the future".into(),
            ));
        }
        if new.policy_id.is_some() {
            crate::policies::in_force(self.store.reader(), who.tenant_id, new.policy_id)
                .await
                .map_err(|_| {
                    EngineError::Invalid("policy_id names no policy of this tenant".into())
                })?;
        }
        let token = new_token();
        let key = match self
            .insert_key(Some(who), who.tenant_id, &new, &token)
            .await
        {
            Err(EngineError::Store(e)) if e.is_unique_violation() => {
                return Err(EngineError::Conflict(
                    "another live key of this tenant has that slack_user or email".into(),
                ));
            }
            other => other?,
        };
        Ok(KeyView::new(key, token))
    }

    /// An admin revokes a key of their tenant; it stops working at once. An admin cannot revoke their own key,
    /// so a tenant is never left without the key that could mend it.
    pub async fn revoke_key(&self, who: &Principal, id: Uuid) -> Result<()> {
        require(who.is_admin(), "only an admin revokes keys")?;
        if id == who.key_id {
            return Err(EngineError::Conflict(
                "an admin cannot revoke the key it is using".into(),
            ));
        }
        let mut tx = self.begin_as(who).await?;
        if !keys::revoke(&mut tx, id).await? {
            return Err(EngineError::NotFound("key"));
        }
        tx.audit(
            &who.actor(),
            AuditAction::KeyRevoked,
            &format!("key:{id}"),
            None,
            json!({}),
        )
        .await?;
        // Every instance's open streams of that key end on this event.
        tx.event(EventKind::KeyRevoked, None, json!({"key_id": id}))
            .await?;
        self.publish(tx.commit().await?);
        self.keys.forget(id);
        Ok(())
    }

    /// An admin of the default tenant creates another tenant with its first admin key.
    pub async fn create_tenant(&self, who: &Principal, name: &str) -> Result<NewTenant> {
        require(
            who.is_admin() && who.tenant_id == DEFAULT_TENANT,
            "only an admin of the default tenant creates tenants",
        )?;
        validate_name(name)?;
        let tenant_id = Uuid::new_v4();
        self.store
            .ensure_tenant(tenant_id, name, self.now())
            .await?;
        let token = new_token();
        let first = NewKey::new("first admin", Role::Admin);
        let key = self
            .insert_key(Some(who), tenant_id, &first, &token)
            .await?;
        let mut tx = self.begin_as(who).await?;
        tx.audit(
            &who.actor(),
            AuditAction::TenantCreated,
            &format!("tenant:{tenant_id}"),
            None,
            json!({"name": name}),
        )
        .await?;
        tx.commit().await?;
        Ok(NewTenant {
            tenant_id,
            name: name.to_owned(),
            admin_key: KeyView::new(key, token),
        })
    }

    async fn insert_key(
        &self,
        by: Option<&Principal>,
        tenant_id: Uuid,
        new: &NewKey,
        token: &str,
    ) -> Result<KeyRecord> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        let key = KeyRecord {
            id: Uuid::now_v7(),
            tenant_id,
            name: new.name.clone(),
            role: new.role,
            created_at: tx.now(),
            expires_at: new.expires_at,
            policy_id: new.policy_id,
            groups: new.groups.clone(),
            slack_user: new.slack_user.clone(),
            email: new.email.clone(),
        };
        keys::insert(&mut tx, &key, &hash_token(token)).await?;
        let actor = by.map_or_else(|| "system".to_owned(), Principal::actor);
        tx.audit(
            &actor,
            AuditAction::KeyCreated,
            &format!("key:{}", key.id),
            None,
            json!({"name": key.name, "role": key.role.as_str(), "expires_at": key.expires_at,
                "policy_id": key.policy_id, "groups": key.groups,
                "slack_user": key.slack_user, "email": key.email}),
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Principal {
        Principal {
            tenant_id: DEFAULT_TENANT,
            key_id: Uuid::new_v4(),
            role: Role::Agent,
        }
    }

    #[test]
    fn a_known_key_answers_until_it_is_old_expired_or_revoked() {
        let (known, now, key) = (KnownKeys::default(), Utc::now(), agent());
        let expires_at = Some(now + chrono::Duration::seconds(60));
        known.remember("h".into(), key.clone(), expires_at, known.before_reading());
        assert_eq!(known.get("h", now), Some(key.clone()));
        assert_eq!(known.get("other", now), None);

        let past = Instant::now()
            .checked_sub(TRUSTED_FOR)
            .expect("a second ago");
        (known.0.lock().unwrap().keys.get_mut("h").unwrap()).read = past;
        assert_eq!(known.get("h", now), None, "read too long ago");

        known.remember("h".into(), key.clone(), expires_at, known.before_reading());
        assert!(known.get("h", now).is_some());
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(known.get("h", later), None, "expired");

        known.forget(Uuid::new_v4());
        assert!(known.get("h", now).is_some(), "another key's revocation");
        known.forget(key.key_id);
        assert_eq!(known.get("h", now), None, "revoked");
    }

    #[test]
    fn a_key_read_before_a_revocation_is_not_remembered_after_it() {
        let (known, key) = (KnownKeys::default(), agent());
        let before = known.before_reading();
        known.forget(key.key_id);
        known.remember("h".into(), key.clone(), None, before);
        assert_eq!(known.get("h", Utc::now()), None);
        known.remember("h".into(), key, None, known.before_reading());
        assert!(known.get("h", Utc::now()).is_some());
    }
}
