//! Sessions: created by agents or admins, read by anyone in the tenant.

use crate::views::SessionView;
use crate::{EngineError, Paygent, Result, require};
use paygent_domain::audit::AuditAction;
use paygent_domain::payment::Recipient;
use paygent_domain::{Principal, SessionConfig, SessionState};
use paygent_store::policies::PolicyRecord;
use paygent_store::sessions::{self, SessionRecord};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub name: Option<String>,
    pub wallet_address: Option<String>,
    pub config: Option<SessionConfig>,
}

/// The most sessions a page holds: each comes with its budget, read as it is listed.
pub const MAX_SESSIONS_PAGE: i64 = 100;

impl Paygent {
    pub async fn create_session(&self, who: &Principal, new: NewSession) -> Result<SessionView> {
        self.open_session(who, new, Uuid::now_v7()).await
    }

    /// The session a key's MCP tool calls use when they name none: one per key, opened on first use, and bound
    /// to the one wallet of its tenant that its policy lets it pay from (to none when there are several).
    pub async fn mcp_session(&self, who: &Principal) -> Result<Uuid> {
        let id = Uuid::new_v5(&who.key_id, b"paygent mcp session");
        if sessions::get(self.store.reader(), who.tenant_id, id)
            .await?
            .is_some()
        {
            return Ok(id);
        }
        let new = NewSession {
            name: Some("MCP".into()),
            wallet_address: self.only_wallet(who).await?,
            config: None,
        };
        match self.open_session(who, new, id).await {
            Ok(view) => Ok(view.id),
            // Two first calls raced: the other one opened it.
            Err(e) => match sessions::get(self.store.reader(), who.tenant_id, id).await? {
                Some(_) => Ok(id),
                None => Err(e),
            },
        }
    }

    /// The one wallet of the caller's tenant its policy grants, if there is exactly one.
    async fn only_wallet(&self, who: &Principal) -> Result<Option<String>> {
        let (_, policy) = self.policy_of(who).await?;
        let owned = paygent_store::wallets::of_tenant(self.store.reader(), who.tenant_id).await?;
        let mut granted = owned.into_iter().filter(|w| policy.rules.grants_wallet(w));
        Ok(match (granted.next(), granted.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        })
    }

    /// The policy the caller's key names (none: the tenant's default), and the policy in force for it.
    async fn policy_of(&self, who: &Principal) -> Result<(Option<Uuid>, PolicyRecord)> {
        let key = self
            .store
            .key_by_id(who.key_id, self.now())
            .await?
            .ok_or(EngineError::Unauthenticated)?;
        let policy =
            crate::policies::in_force(self.store.reader(), who.tenant_id, key.policy_id).await?;
        Ok((key.policy_id, policy))
    }

    async fn open_session(
        &self,
        who: &Principal,
        new: NewSession,
        id: Uuid,
    ) -> Result<SessionView> {
        require(
            who.can_request_payments(),
            "only agents and admins create sessions",
        )?;
        if new.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
            return Err(EngineError::Invalid(
                "name is limited to 200 characters".into(),
            ));
        }
        if let Some(w) = &new.wallet_address
            && !matches!(Recipient::parse(w), Ok(Recipient::Evm(_)))
        {
            return Err(EngineError::Invalid(
                "wallet_address must be an EVM address (0x and 40 hex digits)".into(),
            ));
        }
        let config = new.config.unwrap_or_default();
        config.validate()?;
        let (policy_id, policy) = self.policy_of(who).await?;
        policy.rules.admit(&config).map_err(|e| {
            EngineError::Invalid(format!("config looser than policy {:?}: {e}", policy.name))
        })?;
        if let Some(wallet) = &new.wallet_address {
            self.check_wallet(who.tenant_id, wallet, &policy.rules)
                .await?;
        }
        config
            .budget
            .validate(&self.prices)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut tx = self.begin_as(who).await?;
        let session = SessionRecord {
            id,
            tenant_id: who.tenant_id,
            name: new.name,
            wallet_address: new.wallet_address,
            config,
            state: SessionState::Active,
            frozen: None,
            breaker_since: None,
            created_by: who.key_id,
            created_at: tx.now(),
            policy_id,
        };
        sessions::insert(&mut tx, &session).await?;
        tx.audit(
            &who.actor(),
            AuditAction::SessionCreated,
            &format!("session:{}", session.id),
            Some(session.id),
            json!({
                "name": session.name,
                "wallet_address": session.wallet_address,
                "config": session.config,
            }),
        )
        .await?;
        tx.commit().await?;
        let budget = self.budget_view(&session, session.created_at).await?;
        Ok(SessionView::new(session, budget))
    }

    /// A committed session the caller may reach.
    pub(crate) async fn reachable_session(
        &self,
        who: &Principal,
        id: Uuid,
    ) -> Result<SessionRecord> {
        reachable(
            who,
            sessions::get(self.store.reader(), who.tenant_id, id).await?,
        )
    }

    /// Checks that the caller may reach something (`what`) that hangs off `session_id`. People reach the whole
    /// tenant without a read; to an agent, what hangs off another's session does not exist.
    pub(crate) async fn reach(
        &self,
        who: &Principal,
        session_id: Uuid,
        what: &'static str,
    ) -> Result<()> {
        if who.can_decide() {
            return Ok(());
        }
        match self.reachable_session(who, session_id).await {
            Err(EngineError::NotFound(_)) => Err(EngineError::NotFound(what)),
            other => other.map(drop),
        }
    }

    /// Sessions with today's budgets, newest first: the tenant's for people, an agent's own for an agent.
    pub async fn sessions(
        &self,
        who: &Principal,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SessionView>> {
        let mine = (!who.can_decide()).then_some(who.key_id);
        let list = sessions::list(
            self.store.reader(),
            who.tenant_id,
            mine,
            after,
            limit.clamp(1, MAX_SESSIONS_PAGE),
        )
        .await?;
        let now = self.now();
        let mut views = Vec::with_capacity(list.len());
        for session in list {
            let budget = self.budget_view(&session, now).await?;
            views.push(SessionView::new(session, budget));
        }
        self.name_creators(who.tenant_id, &mut views).await?;
        Ok(views)
    }

    pub async fn session(&self, who: &Principal, id: Uuid) -> Result<SessionView> {
        let session = self.reachable_session(who, id).await?;
        let budget = self.budget_view(&session, self.now()).await?;
        let mut view = SessionView::new(session, budget);
        self.name_creators(who.tenant_id, std::slice::from_mut(&mut view))
            .await?;
        Ok(view)
    }

    /// Names the keys that created `views`, as they are named now, in one read.
    async fn name_creators(&self, tenant_id: Uuid, views: &mut [SessionView]) -> Result<()> {
        let names = self
            .key_names(tenant_id, views.iter().map(|v| v.created_by))
            .await?;
        for v in views {
            v.created_by_name = names.get(&v.created_by).cloned();
        }
        Ok(())
    }
}

/// An agent reaches only the sessions it created: any other is as unknown to it as another tenant's (404), so
/// an agent cannot even learn that it exists.
pub(crate) fn reachable(who: &Principal, session: Option<SessionRecord>) -> Result<SessionRecord> {
    session
        .filter(|s| who.reaches(s.created_by))
        .ok_or(EngineError::NotFound("session"))
}
