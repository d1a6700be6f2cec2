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
use utoipa::ToSchema;
use uuid::Uuid;

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
        let key = self
            .store
            .key_by_hash(&hash_token(token), self.now())
            .await?
            .ok_or(EngineError::Unauthenticated)?;
        Ok(Principal {
            tenant_id: key.tenant_id,
            key_id: key.id,
            role: key.role,
        })
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
