//! The shapes the API shows. They live here, beside the engine that fills them, so HTTP responses, events and
//! (later) WebSocket messages cannot drift apart.

use chrono::{DateTime, Utc};
use paygent_domain::budget::OnBudgetExceeded;
use paygent_domain::execution::{ExecutionStatus, StepStatus};
use paygent_domain::{ApprovalStatus, Decimal, DecisionKind, PaymentStatus, Role};
use paygent_store::approvals::ApprovalRecord;
use paygent_store::executions::{ExecutionRecord, StepRecord};
use paygent_store::keys::KeyRecord;
use paygent_store::payments::PaymentRecord;
use paygent_store::sessions::SessionRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    pub id: Uuid,
    pub session_id: Uuid,
    /// `transfer` for an EVM recipient, `x402_payment` for a URL, `swap` for a trade on an exchange (the recipient
    /// is then its router).
    pub tool: String,
    /// For an x402 URL, the price its service asked (and what the guard decided on).
    #[schema(value_type = String, example = "15.00")]
    pub amount: Decimal,
    /// For an x402 URL, the most the agent would pay: the `amount` it asked with.
    #[schema(value_type = Option<String>, example = "20.00")]
    pub max_amount: Option<Decimal>,
    #[schema(example = "USDC")]
    pub currency: String,
    #[schema(value_type = String, example = "15.00")]
    pub usd_value: Decimal,
    pub recipient: String,
    pub description: Option<String>,
    /// For a swap: what it buys and the least it may give, as quoted; what it bought is `receipt.amount_out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<paygent_domain::swap::SwapTerms>,
    #[schema(value_type = String, example = "pending_approval")]
    /// `executed`, `authorized`, `pending_approval`, `denied` or `failed`.
    pub status: PaymentStatus,
    /// Why it was denied or failed: `rejected`, `expired`, `killed`, `budget_exceeded`, `policy_denied`,
    /// `circuit_breaker`, ...
    pub reason: Option<String>,
    /// The reason in words, e.g. how much of the budget is left.
    pub detail: Option<String>,
    pub approval_id: Option<Uuid>,
    pub tx_hash: Option<String>,
    pub network: Option<String>,
    /// What the rail brought back when it paid, such as an x402 resource's answer; only in the answer that paid.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<Value>,
    /// An x402 service refused the signed payment: its reason, and until when the payment could still settle
    /// (it stays `authorized` until then). Only in the answer for one payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<crate::Refusal>,
    /// A rail is carrying it out and its outcome was not known when this answer was given (it stays
    /// `authorized` until then): read it again, or retry with the same idempotency key. Only in that answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_flight: bool,
    pub idempotency_key: Option<String>,
    pub requested_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<PaymentRecord> for PaymentView {
    fn from(p: PaymentRecord) -> Self {
        PaymentView {
            id: p.id,
            session_id: p.session_id,
            tool: p.tool,
            amount: p.amount,
            max_amount: p.max_amount,
            currency: p.currency,
            usd_value: p.usd_value,
            recipient: p.recipient,
            description: p.description,
            swap: p.swap,
            status: p.status,
            reason: p.reason,
            detail: p.detail,
            approval_id: p.approval_id,
            tx_hash: p.tx_hash,
            network: p.network,
            receipt: None,
            refusal: None,
            in_flight: false,
            idempotency_key: p.idempotency_key,
            requested_by: p.requested_by,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Who decided, when, and what they said.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionRecord {
    /// The deciding key; absent when the system ended the request (expiry).
    pub by: Option<Uuid>,
    /// The deciding key's name, in a decision's answer, a read and a list (events carry the id only).
    pub by_name: Option<String>,
    pub at: DateTime<Utc>,
    /// The comment, or the rejection's reason.
    pub note: Option<String>,
    /// The digest of the action decided: the request's, or its edit's. Absent for an expiry or a cancellation,
    /// and for decisions made before digests were recorded.
    #[schema(example = "sha256:f7870a201e65988cf87894c174d38b59f1a5cc231b993fc835a8cbb789dcfd10")]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    pub id: Uuid,
    pub session_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub tool: String,
    /// The arguments as the agent asked.
    pub args: Value,
    /// The arguments an edit approved instead, if any.
    pub edited_args: Option<Value>,
    /// Why a person is needed.
    pub reason: String,
    /// The network its (edited) payment would be paid on, a CAIP-2 id; null when no rail here carries it.
    #[schema(example = "eip155:338")]
    pub network: Option<String>,
    /// The SHA-256 of the exact action the request would run (session, tool, arguments, edited ones if any, and
    /// network, in canonical JSON): what an approval binds to. Only an action with the approved digest runs, on
    /// the network it names.
    #[schema(example = "sha256:390056b4b2224793d79e658699cca7cb6fb336fa7536c7fd55d8ad0793ba03c8")]
    pub digest: String,
    #[schema(value_type = String, example = "25.00")]
    pub usd_value: Decimal,
    #[schema(value_type = Vec<String>, example = json!(["approve", "edit", "reject"]))]
    pub allowed_decisions: Vec<DecisionKind>,
    #[schema(value_type = String, example = "pending")]
    /// `pending`, `approved`, `rejected`, `edited`, `expired` or `cancelled`.
    pub status: ApprovalStatus,
    pub requested_by: Uuid,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub decision: Option<DecisionRecord>,
    /// When the one execution this approval allows took place.
    pub consumed_at: Option<DateTime<Utc>>,
    /// How many distinct people must approve its action (a policy's quorum); 1 for most.
    #[schema(minimum = 1, maximum = 10, example = 1)]
    pub approvals_required: u32,
    /// The approver groups whose members decide it; anyone who decides, when empty.
    pub groups: Vec<String>,
    /// The approvals of its current action so far, while more than one is required (an edit starts again).
    pub approvals: Vec<VoteView>,
    /// The steps of its policy's escalation chain it can reach before its deadline.
    pub escalation: Vec<paygent_domain::quorum::Escalation>,
    /// How many of them it reached.
    pub escalated: u32,
    /// When the next one is due, while it waits.
    pub escalate_at: Option<DateTime<Utc>>,
    /// What a person needs to decide it, as it stood when it was filed; absent on requests filed before it was
    /// kept.
    pub context: Option<crate::context::DecisionContext>,
}

impl ApprovalView {
    /// The arguments its execution would use: the edit's, if any.
    pub fn effective_args(&self) -> &Value {
        self.edited_args.as_ref().unwrap_or(&self.args)
    }
}

/// One person's approval of a request's action, on the way to its quorum.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VoteView {
    pub by: Uuid,
    pub at: DateTime<Utc>,
    pub comment: Option<String>,
}

impl From<ApprovalRecord> for ApprovalView {
    fn from(a: ApprovalRecord) -> Self {
        let decision = a.decided_at.map(|at| DecisionRecord {
            by: a.decided_by,
            by_name: None,
            at,
            note: a.decision_note.clone(),
            digest: a.decided_digest.clone(),
        });
        let digest = a.digest();
        ApprovalView {
            id: a.id,
            session_id: a.session_id,
            payment_id: a.payment_id,
            tool: a.tool,
            args: a.args,
            edited_args: a.edited_args,
            reason: a.reason,
            network: a.network,
            digest,
            usd_value: a.usd_value,
            allowed_decisions: a.allowed_decisions,
            status: a.status,
            requested_by: a.requested_by,
            deadline: a.deadline,
            created_at: a.created_at,
            decision,
            consumed_at: a.consumed_at,
            approvals_required: a.approvals_required,
            groups: a.groups,
            approvals: a
                .approvals
                .into_iter()
                .map(|v| VoteView {
                    by: v.by,
                    at: v.at,
                    comment: v.comment,
                })
                .collect(),
            escalation: a.escalation,
            escalated: a.escalated,
            escalate_at: a
                .escalate_at
                .filter(|_| a.status == ApprovalStatus::Pending),
            context: a.context.and_then(|c| serde_json::from_value(c).ok()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    pub name: Option<String>,
    pub wallet_address: Option<String>,
    #[schema(value_type = Object, example = json!({"approval_threshold_usd": "10", "approval_timeout_seconds": 900}))]
    pub config: paygent_domain::SessionConfig,
    /// `active`, `frozen` (the circuit breaker tripped: nothing moves until a person unfreezes it) or `killed`.
    #[schema(value_type = String, example = "active")]
    pub state: paygent_domain::SessionState,
    /// Why it is frozen, while it is.
    pub frozen: Option<paygent_domain::velocity::Freeze>,
    /// Today's spend, reservations and limits.
    pub budget: BudgetView,
    pub created_by: Uuid,
    /// The name of the key that created it (in lists and reads).
    pub created_by_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl SessionView {
    pub(crate) fn new(s: SessionRecord, budget: BudgetView) -> Self {
        let frozen = s.freeze().cloned();
        SessionView {
            id: s.id,
            name: s.name,
            wallet_address: s.wallet_address,
            config: s.config,
            state: s.state,
            frozen,
            budget,
            created_by: s.created_by,
            created_by_name: None,
            created_at: s.created_at,
        }
    }
}

/// A key as its creator sees it once. Its `Debug` leaves the token out: logs never hold a usable key.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = String, example = "approver")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// When the key stops working; never, when absent.
    pub expires_at: Option<DateTime<Utc>>,
    /// The policy the key's sessions are held to; the tenant's default when absent.
    pub policy_id: Option<Uuid>,
    /// The approver groups it is in.
    pub groups: Vec<String>,
    /// The Slack user whose button presses decide as this key.
    pub slack_user: Option<String>,
    /// The address its mails with links to decide go to.
    pub email: Option<String>,
    /// The bearer token. Shown once, at creation; only its hash is kept.
    pub token: String,
}

impl std::fmt::Debug for KeyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyView")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .field("policy_id", &self.policy_id)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl KeyView {
    pub(crate) fn new(k: KeyRecord, token: String) -> Self {
        KeyView {
            id: k.id,
            name: k.name,
            role: k.role,
            created_at: k.created_at,
            expires_at: k.expires_at,
            policy_id: k.policy_id,
            groups: k.groups,
            slack_user: k.slack_user,
            email: k.email,
            token,
        }
    }
}

/// One line of a budget: a currency, or the USD total.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetLine {
    /// Absent when there is no limit.
    #[schema(value_type = Option<String>, example = "100.00")]
    pub limit: Option<Decimal>,
    #[schema(value_type = String, example = "42.50")]
    pub spent: Decimal,
    /// Held by pending approvals.
    #[schema(value_type = String, example = "30.00")]
    pub reserved: Decimal,
    /// limit − spent − reserved; negative when a person approved past the limit or it was lowered.
    #[schema(value_type = Option<String>, example = "27.50")]
    pub available: Option<Decimal>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetView {
    pub session_id: Uuid,
    /// The budget day, in the session's time zone.
    #[schema(example = "2026-11-24")]
    pub day: String,
    pub time_zone: String,
    /// When the day ends and the budget starts afresh.
    pub resets_at: DateTime<Utc>,
    #[schema(value_type = String, example = "deny")]
    pub on_budget_exceeded: OnBudgetExceeded,
    #[schema(value_type = Option<String>)]
    pub max_per_payment_usd: Option<Decimal>,
    /// The USD total across currencies.
    pub usd: BudgetLine,
    pub currencies: BTreeMap<String, BudgetLine>,
}

impl BudgetView {
    /// Books `amount` of `currency` (worth `usd`) as spent, or as reserved while a person decides: the budget
    /// as it would be after a payment.
    pub(crate) fn book(&mut self, currency: &str, amount: Decimal, usd: Decimal, held: bool) {
        let unlimited = BudgetLine {
            limit: None,
            spent: Decimal::ZERO,
            reserved: Decimal::ZERO,
            available: None,
        };
        let line = self
            .currencies
            .entry(currency.to_owned())
            .or_insert(unlimited);
        line.add(amount, held);
        self.usd.add(usd, held);
    }
}

impl BudgetLine {
    fn add(&mut self, value: Decimal, held: bool) {
        if held {
            self.reserved += value;
        } else {
            self.spent += value;
        }
        self.available = self.limit.map(|l| l - self.spent - self.reserved);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub idx: i64,
    pub tool: String,
    #[schema(value_type = Object)]
    pub args: Value,
    #[schema(value_type = String, example = "done")]
    /// `pending`, `running`, `awaiting_approval`, `done`, `failed`, `rejected`, `expired` or `cancelled`.
    pub status: StepStatus,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub approval_id: Option<Uuid>,
    pub payment_id: Option<Uuid>,
    #[schema(value_type = Option<String>)]
    pub cost_usd: Option<Decimal>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

impl From<StepRecord> for StepView {
    fn from(s: StepRecord) -> Self {
        StepView {
            idx: s.idx,
            tool: s.tool,
            args: s.args,
            status: s.status,
            result: s.result,
            error: s.error,
            approval_id: s.approval_id,
            payment_id: s.payment_id,
            cost_usd: s.cost_usd,
            started_at: s.started_at,
            finished_at: s.finished_at,
            duration_ms: s.duration_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionView {
    pub id: Uuid,
    pub session_id: Uuid,
    #[schema(value_type = String, example = "running")]
    /// `running`, `awaiting_approval`, `frozen` (its session is frozen: it goes on once unfrozen), `completed`,
    /// `failed`, `rejected`, `expired` or `cancelled`.
    pub status: ExecutionStatus,
    /// The natural-language command, when the plan came from one.
    pub command: Option<String>,
    pub error: Option<String>,
    /// The step running or next to run.
    pub current_step: i64,
    /// USD value of the payments its steps made.
    #[schema(value_type = String)]
    pub cost_usd: Decimal,
    pub steps: Vec<StepView>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// From creation to the end, when it has ended.
    pub duration_ms: Option<i64>,
}

impl ExecutionView {
    pub(crate) fn new(e: ExecutionRecord, steps: Vec<StepRecord>) -> Self {
        ExecutionView {
            duration_ms: e.finished_at.map(|f| (f - e.created_at).num_milliseconds()),
            id: e.id,
            session_id: e.session_id,
            status: e.status,
            command: e.command,
            error: e.error,
            current_step: e.current_step,
            cost_usd: e.cost_usd,
            steps: steps.into_iter().map(Into::into).collect(),
            created_by: e.created_by,
            created_at: e.created_at,
            updated_at: e.updated_at,
            finished_at: e.finished_at,
        }
    }
}

/// A policy: the rules people set for the agents bound to it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyView {
    pub id: Uuid,
    pub name: String,
    /// 1 when created, one more for each change; 0 for a default nobody has changed.
    pub version: i64,
    #[serde(flatten)]
    #[schema(value_type = Object, example = json!({"approval_threshold_usd": "10", "thresholds": {"swap": "100"},
        "max_per_payment_usd": "500", "max_approval_timeout_seconds": 3600,
        "payees": {"allow": [], "deny": [], "outside_allow": "approve"}}))]
    pub rules: paygent_domain::PolicyRules,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<paygent_store::policies::PolicyRecord> for PolicyView {
    fn from(p: paygent_store::policies::PolicyRecord) -> Self {
        PolicyView {
            id: p.id,
            name: p.name,
            version: p.version,
            rules: Arc::unwrap_or_clone(p.rules),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Read by hand: the rules sit beside the policy's own fields and refuse any field they do not know, which
/// serde's `flatten` cannot combine.
impl<'de> Deserialize<'de> for PolicyView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Own {
            id: Uuid,
            name: String,
            version: i64,
            created_at: DateTime<Utc>,
            updated_at: DateTime<Utc>,
        }
        let mut rules = serde_json::Map::deserialize(d)?;
        let own: serde_json::Map<String, Value> =
            ["id", "name", "version", "created_at", "updated_at"]
                .into_iter()
                .filter_map(|k| rules.remove_entry(k))
                .collect();
        let own = Own::deserialize(Value::Object(own)).map_err(D::Error::custom)?;
        let rules = paygent_domain::PolicyRules::deserialize(Value::Object(rules))
            .map_err(D::Error::custom)?;
        Ok(PolicyView {
            id: own.id,
            name: own.name,
            version: own.version,
            rules,
            created_at: own.created_at,
            updated_at: own.updated_at,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_view_never_prints_its_token() {
        let view = super::KeyView {
            id: uuid::Uuid::nil(),
            name: "ops".into(),
            role: paygent_domain::Role::Admin,
            created_at: chrono::Utc::now(),
            expires_at: None,
            policy_id: None,
            groups: Vec::new(),
            slack_user: None,
            email: None,
            token: "pg_live_secret".into(),
        };
        let printed = format!("{view:?}");
        assert!(!printed.contains("pg_live_secret"), "{printed}");
        assert!(printed.contains("ops"));
    }
}
