//! Spend you can see: a tenant's, an agent key's or a session's spend over the last day and month, its top
//! payees, and where its limits stand, for people. Read from the spend rollups, in bounded time.

use crate::policies;
use crate::views::BudgetView;
use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, Utc};
use paygent_domain::Principal;
use paygent_domain::rules::{LimitUse, Period};
use paygent_domain::spend::{SpendScope, SpendSeries, windows};
use paygent_store::budgets::{self, KEY_PERIODS};
use paygent_store::policies::PolicyRecord;
use paygent_store::{keys, sessions, spend};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Whose spend a [`SpendView`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpendOf {
    Tenant,
    Agent,
    Session,
}

/// Spend over time and where the limits stand.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SpendView {
    pub scope: SpendOf,
    /// The agent key's or session's id.
    pub id: Option<Uuid>,
    /// The agent key's or session's name.
    pub name: Option<String>,
    pub as_of: DateTime<Utc>,
    #[serde(flatten)]
    pub series: SpendSeries,
    /// A session's budget today.
    pub budget: Option<BudgetView>,
    /// An agent key's policy limits, each with what its current period used.
    pub limits: Vec<LimitUse>,
}

impl Paygent {
    /// Spend of `scope` (approvers and admins): every hour of the last day and every day of the last 30, by
    /// the time payments were asked for, in UTC, spent payments only (reservations are in `budget` and
    /// `limits`).
    pub async fn spend(&self, who: &Principal, scope: SpendScope) -> Result<SpendView> {
        require(who.can_decide(), "only approvers and admins read spend")?;
        let now = self.now();
        let mut view = SpendView {
            scope: SpendOf::Tenant,
            id: None,
            name: None,
            as_of: now,
            series: self.series(who.tenant_id, scope, now).await?,
            budget: None,
            limits: Vec::new(),
        };
        let policy = match scope {
            SpendScope::Tenant => {
                policies::in_force(self.store.reader(), who.tenant_id, None).await?
            }
            SpendScope::Agent(id) => self.agent_limits(who, id, &mut view).await?,
            SpendScope::Session(id) => {
                let session = sessions::get(self.store.reader(), who.tenant_id, id)
                    .await?
                    .ok_or(EngineError::NotFound("session"))?;
                view.budget = Some(self.budget_view(&session, now).await?);
                (view.scope, view.id, view.name) = (SpendOf::Session, Some(id), session.name);
                policies::in_force(self.store.reader(), who.tenant_id, session.policy_id).await?
            }
        };
        for p in &mut view.series.top_payees {
            p.label = policy.rules.payees.label_of(&p.payee).map(str::to_owned);
        }
        Ok(view)
    }

    async fn series(
        &self,
        tenant: Uuid,
        scope: SpendScope,
        now: DateTime<Utc>,
    ) -> Result<SpendSeries> {
        let owner = scope.owner();
        let mut rows = Vec::new();
        for (first, last) in &windows(now) {
            let window = (first.as_str(), last.as_str());
            rows.extend(spend::rows(self.store.reader(), tenant, &owner, window).await?);
        }
        Ok(SpendSeries::assemble(now, &rows))
    }

    /// An agent key's name and its policy's limits, as its periods at the view's time used them; the key's
    /// policy.
    async fn agent_limits(
        &self,
        who: &Principal,
        id: Uuid,
        view: &mut SpendView,
    ) -> Result<PolicyRecord> {
        let key = keys::any(self.store.reader(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("agent"))?;
        let policy = policies::in_force(self.store.reader(), who.tenant_id, key.policy_id).await?;
        let buckets = Period::ALL.map(|p| p.bucket(view.as_of));
        let refs = buckets.each_ref().map(String::as_str);
        let book = budgets::usage(self.store.reader(), KEY_PERIODS, id, &refs).await?;
        view.limits = policy.rules.limit_use(view.as_of, |bucket, ledger| {
            let key = (bucket.to_owned(), ledger.to_owned());
            book.get(&key).copied().unwrap_or_default()
        });
        (view.scope, view.id, view.name) = (SpendOf::Agent, Some(id), Some(key.name));
        Ok(policy)
    }
}
