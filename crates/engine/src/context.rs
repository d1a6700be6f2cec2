//! What a person needs to decide a request, gathered once, when it is filed, inside the guard's transaction:
//! who asked and in which session, the policy and checks that sent it to people, what this payee was paid
//! before, and the budget with this request in it.

use crate::Result;
use crate::views::BudgetView;
use chrono::{DateTime, Duration, Utc};
use paygent_domain::Decimal;
use paygent_domain::judgement::Fired;
use paygent_store::WriteTx;
use paygent_store::keys;
use paygent_store::payments::{self, PayeeHistory};
use paygent_store::policies::PolicyRecord;
use paygent_store::sessions::SessionRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// How far back a payee's history goes.
const HISTORY_DAYS: i64 = 30;
/// The most of a payee's recent payments a request's context sums.
const HISTORY_LIMIT: i64 = 200;

/// Since when, and how many of, a payee's payments a request's context shows, for a request filed at `now`.
pub(crate) fn history_window(now: DateTime<Utc>) -> (DateTime<Utc>, i64) {
    (now - Duration::days(HISTORY_DAYS), HISTORY_LIMIT)
}

/// What the tenant paid `recipient`, within [`history_window`].
pub(crate) async fn payee_history(tx: &mut WriteTx, recipient: &str) -> Result<PayeeHistory> {
    let (since, limit) = history_window(tx.now());
    Ok(payments::payee_history(tx, recipient, since, limit).await?)
}

/// What a person needs to decide a request, as it stood when it was filed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionContext {
    /// The agent's own words for the payment.
    pub description: Option<String>,
    /// The key that asked.
    pub agent: Named,
    pub session: Named,
    pub policy: PolicyRef,
    /// Every check that found something, the one that sent it to people among them.
    pub rules: Vec<Fired>,
    /// The payee's history in the tenant; absent for an action that pays nobody.
    pub payee: Option<PayeeRecord>,
    /// The session's budget today with this request's reservation in it.
    pub budget_after: Option<BudgetView>,
}

/// Something people know by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Named {
    pub id: Uuid,
    pub name: Option<String>,
}

/// The policy version that sent a request to people.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyRef {
    pub id: Uuid,
    pub name: String,
    pub version: i64,
}

/// What the tenant let be paid to a payee.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PayeeRecord {
    /// Nothing was ever paid to it: this would be the first payment.
    pub first_payment: bool,
    /// Paid (allowed or executed) to it in the last 30 days, in USD.
    #[schema(value_type = String, example = "120.50")]
    pub paid_30d_usd: Decimal,
    pub payments_30d: u32,
    /// More than 200 payments in those days: the sum is of the latest 200.
    pub more: bool,
    /// What the policy calls the payee (`payees.labels`), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl DecisionContext {
    /// The context of a request `who` asked for in `session` under `policy`, without payee or budget.
    pub(crate) async fn gather(
        tx: &mut WriteTx,
        asked_by: Uuid,
        (session, policy): (&SessionRecord, &PolicyRecord),
        rules: Vec<Fired>,
        description: Option<String>,
    ) -> Result<Self> {
        let agent = keys::name_of(tx, asked_by).await?;
        Ok(DecisionContext {
            description,
            agent: Named {
                id: asked_by,
                name: agent,
            },
            session: Named {
                id: session.id,
                name: session.name.clone(),
            },
            policy: PolicyRef {
                id: policy.id,
                name: policy.name.clone(),
                version: policy.version,
            },
            rules,
            payee: None,
            budget_after: None,
        })
    }

    /// Adds what the tenant paid the payee before, and the policy's `label` for it.
    pub(crate) fn with_payee(mut self, history: &PayeeHistory, label: Option<&str>) -> Self {
        self.payee = Some(PayeeRecord {
            first_payment: !history.paid_before,
            paid_30d_usd: history.recent.iter().sum(),
            payments_30d: history.recent.len() as u32,
            more: history.recent.len() as i64 >= HISTORY_LIMIT,
            label: label.map(str::to_owned),
        });
        self
    }
}
