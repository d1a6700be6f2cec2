//! Policies: people own the rules, agents are bound to them, and a session may only tighten them.

use crate::views::PolicyView;
use crate::{EngineError, Paygent, Result, require};
use paygent_domain::audit::AuditAction;
use paygent_domain::{PolicyRules, Principal};
use paygent_store::policies::{self, PolicyRecord};
use paygent_store::sessions::SessionRecord;
use paygent_store::{Db, WriteTx};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

/// The reserved name of every tenant's default policy.
pub const DEFAULT_NAME: &str = "default";

/// The id of a tenant's default policy: fixed, so keys and sessions can name it before anyone changed it.
pub fn default_policy_id(tenant_id: Uuid) -> Uuid {
    Uuid::new_v5(&tenant_id, b"default policy")
}

/// The default policy as it is before an admin changes it: today's built-in rules, version 0.
fn built_in_default(tenant_id: Uuid) -> PolicyRecord {
    let epoch = chrono::DateTime::UNIX_EPOCH;
    PolicyRecord {
        id: default_policy_id(tenant_id),
        tenant_id,
        name: DEFAULT_NAME.into(),
        version: 0,
        rules: Default::default(),
        created_at: epoch,
        updated_at: epoch,
    }
}

pub(crate) fn validate(rules: &PolicyRules) -> Result<()> {
    rules
        .validate()
        .map_err(|e| EngineError::Invalid(e.to_string()))
}

/// The policy `id` of a tenant (the default when `None`). A missing default is the built-in one; any other
/// missing policy is an error, so nothing is allowed under rules nobody can read.
pub(crate) async fn in_force(
    db: Db<'_>,
    tenant_id: Uuid,
    id: Option<Uuid>,
) -> Result<PolicyRecord> {
    let id = id.unwrap_or_else(|| default_policy_id(tenant_id));
    resolve(tenant_id, id, policies::get(db, tenant_id, id).await?)
}

/// The policy `id` from its row, if it has one.
fn resolve(tenant_id: Uuid, id: Uuid, row: Option<PolicyRecord>) -> Result<PolicyRecord> {
    match row {
        Some(p) => Ok(p),
        None if id == default_policy_id(tenant_id) => Ok(built_in_default(tenant_id)),
        None => Err(EngineError::NotFound("policy")),
    }
}

/// The policy `id` of the transaction's tenant (the default when `None`), as of the tenant's lock.
pub(crate) async fn locked(tx: &mut WriteTx, id: Option<Uuid>) -> Result<PolicyRecord> {
    let tenant_id = tx.tenant_id();
    let id = id.unwrap_or_else(|| default_policy_id(tenant_id));
    resolve(tenant_id, id, policies::locked(tx, id).await?)
}

/// A session and the policy it is held to, in one read (the guard's, under the tenant's lock).
pub(crate) async fn session_in_force(
    tx: &mut WriteTx,
    session_id: Uuid,
) -> Result<Option<(SessionRecord, PolicyRecord)>> {
    let tenant_id = tx.tenant_id();
    let default = default_policy_id(tenant_id);
    let Some((session, row)) = policies::session_with_policy(tx, session_id, default).await? else {
        return Ok(None);
    };
    let policy = resolve(tenant_id, session.policy_id.unwrap_or(default), row)?;
    Ok(Some((session, policy)))
}

/// Starts the tenant's Slack or email notifier once a policy names a channel or an address: requests filed
/// from then on are posted or mailed.
async fn start_notifiers(tx: &mut WriteTx, rules: &PolicyRules) -> Result<()> {
    use paygent_store::notifiers::{Channel, ensure};
    if rules.notify.slack_channel.is_some() {
        ensure(tx, Channel::Slack).await?;
    }
    if !rules.notify.email.is_empty() {
        ensure(tx, Channel::Email).await?;
    }
    Ok(())
}

impl Paygent {
    /// Refuses a channel this server cannot reach people on.
    fn check_notify(&self, rules: &PolicyRules) -> Result<()> {
        if rules.notify.slack_channel.is_some() && self.slack.is_none() {
            return Err(EngineError::Invalid(
                "notify.slack_channel: this server has no Slack app (PAYGENT_SLACK_BOT_TOKEN and \
                 PAYGENT_SLACK_SIGNING_SECRET)"
                    .into(),
            ));
        }
        if !rules.notify.email.is_empty() && self.mailer.is_none() {
            return Err(EngineError::Invalid(
                "notify.email: this server sends no mail (PAYGENT_SMTP_URL, PAYGENT_MAIL_FROM and \
                 PAYGENT_PUBLIC_URL)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// An admin creates a named policy.
    pub async fn create_policy(
        &self,
        who: &Principal,
        name: &str,
        rules: PolicyRules,
    ) -> Result<PolicyView> {
        require(who.is_admin(), "only admins write policies")?;
        if name.trim().is_empty() || name.chars().count() > 100 || name == DEFAULT_NAME {
            return Err(EngineError::Invalid(format!(
                "name must be 1 to 100 characters, and not {DEFAULT_NAME:?}"
            )));
        }
        validate(&rules)?;
        self.check_notify(&rules)?;
        let mut tx = self.begin_as(who).await?;
        let now = tx.now();
        let policy = PolicyRecord {
            id: Uuid::now_v7(),
            tenant_id: who.tenant_id,
            name: name.to_owned(),
            version: 1,
            rules: Arc::new(rules),
            created_at: now,
            updated_at: now,
        };
        match policies::insert(&mut tx, &policy).await {
            Err(e) if e.is_unique_violation() => {
                return Err(EngineError::Conflict(format!(
                    "a policy named {name:?} exists"
                )));
            }
            other => other?,
        }
        start_notifiers(&mut tx, &policy.rules).await?;
        let subject = format!("policy:{}", policy.id);
        let data = json!({"name": name, "version": 1, "new": &*policy.rules});
        tx.audit(
            &who.actor(),
            AuditAction::PolicyCreated,
            &subject,
            None,
            data,
        )
        .await?;
        tx.commit().await?;
        Ok(policy.into())
    }

    /// One policy (approvers and admins); `None` is the tenant's default.
    pub async fn policy(&self, who: &Principal, id: Option<Uuid>) -> Result<PolicyView> {
        require(who.can_decide(), "only approvers and admins read policies")?;
        Ok(in_force(self.store.reader(), who.tenant_id, id)
            .await?
            .into())
    }

    /// The tenant's policies by name, the default first, after the name `after` for the next page.
    pub async fn policies(
        &self,
        who: &Principal,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PolicyView>> {
        require(who.can_decide(), "only approvers and admins read policies")?;
        let limit = limit.clamp(1, crate::MAX_PAGE);
        let mut list = Vec::new();
        if after.is_none() {
            list.push(in_force(self.store.reader(), who.tenant_id, None).await?);
        }
        let stored = policies::list(self.store.reader(), who.tenant_id, after, limit).await?;
        list.extend(stored.into_iter().filter(|p| p.name != DEFAULT_NAME));
        list.truncate(limit as usize);
        Ok(list.into_iter().map(Into::into).collect())
    }

    /// An admin replaces a policy's rules (`None`: the default). It takes effect for every bound agent's next
    /// payment, and the audit trail keeps the old and new rules.
    pub async fn update_policy(
        &self,
        who: &Principal,
        id: Option<Uuid>,
        rules: PolicyRules,
    ) -> Result<PolicyView> {
        require(who.is_admin(), "only admins write policies")?;
        validate(&rules)?;
        self.check_notify(&rules)?;
        let mut tx = self.begin_as(who).await?;
        start_notifiers(&mut tx, &rules).await?;
        let old = in_force(tx.conn(), who.tenant_id, id).await?;
        if old.version == 0 {
            let fresh = PolicyRecord {
                version: 1,
                rules: Arc::new(rules.clone()),
                created_at: tx.now(),
                updated_at: tx.now(),
                ..old.clone()
            };
            policies::insert(&mut tx, &fresh).await?;
        } else if !policies::replace(&mut tx, old.id, old.version, &rules).await? {
            return Err(EngineError::Conflict(
                "the policy changed meanwhile; read it again".into(),
            ));
        }
        let version = old.version + 1;
        let subject = format!("policy:{}", old.id);
        let data = json!({"name": old.name, "version": version, "old": &*old.rules, "new": rules});
        tx.audit(
            &who.actor(),
            AuditAction::PolicyChanged,
            &subject,
            None,
            data,
        )
        .await?;
        let now = tx.now();
        tx.commit().await?;
        Ok(PolicyRecord {
            version,
            rules: Arc::new(rules),
            updated_at: now,
            ..old
        }
        .into())
    }
}
