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

impl From<SpendScope> for SpendOf {
    fn from(scope: SpendScope) -> Self {
        match scope {
            SpendScope::Tenant => SpendOf::Tenant,
            SpendScope::Agent(_) => SpendOf::Agent,
            SpendScope::Session(_) => SpendOf::Session,
        }
    }
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
        let (now, tenant) = (self.now(), who.tenant_id);
        let reader = || self.store.reader();
        // The scope is found (or 404) before any rollup is read.
        let (id, name, policy, budget, limits) = match scope {
            SpendScope::Tenant => {
                let policy = policies::in_force(reader(), tenant, None).await?;
                (None, None, policy, None, Vec::new())
            }
            SpendScope::Agent(id) => {
                let key = keys::any(reader(), tenant, id)
                    .await?
                    .ok_or(EngineError::NotFound("agent"))?;
                let policy = policies::in_force(reader(), tenant, key.policy_id).await?;
                let limits = self.limit_use(id, &policy, now).await?;
                (Some(id), Some(key.name), policy, None, limits)
            }
            SpendScope::Session(id) => {
                let session = sessions::get(reader(), tenant, id)
                    .await?
                    .ok_or(EngineError::NotFound("session"))?;
                let budget = self.budget_view(&session, now).await?;
                let policy = policies::in_force(reader(), tenant, session.policy_id).await?;
                (Some(id), session.name, policy, Some(budget), Vec::new())
            }
        };
        let mut series = self.series(tenant, scope, now).await?;
        for p in &mut series.top_payees {
            p.label = policy.rules.payees.label_of(&p.payee).map(str::to_owned);
        }
        Ok(SpendView {
            scope: scope.into(),
            id,
            name,
            as_of: now,
            series,
            budget,
            limits,
        })
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

    /// An agent key's policy limits, each with what its current period used at `now`.
    async fn limit_use(
        &self,
        key: Uuid,
        policy: &PolicyRecord,
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitUse>> {
        let buckets = Period::ALL.map(|p| p.bucket(now));
        let refs = buckets.each_ref().map(String::as_str);
        let book = budgets::usage(self.store.reader(), KEY_PERIODS, key, &refs).await?;
        Ok(policy.rules.limit_use(now, |bucket, ledger| {
            let key = (bucket.to_owned(), ledger.to_owned());
            book.get(&key).copied().unwrap_or_default()
        }))
    }
}
