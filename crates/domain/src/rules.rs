//! The rules a person sets for the agents bound to a policy. An agent's session may only tighten them: the guard
//! applies the strictest of the two.

use crate::approval::DecisionKind;
use crate::budget::{OnBudgetExceeded, USD_TOTAL, Usage};
use crate::execution::OnReject;
use crate::money::{Decimal, MAX_AMOUNT, parse_decimal, strict};
use crate::payees::PayeeList;
use crate::payment::{Recipient, payee_of};
use crate::policy::{
    Condition, DEFAULT_PAYMENT_THRESHOLD_USD, DEFAULT_SWAP_THRESHOLD_USD, Policy, Rule, SWAP,
    TRANSFER, X402_PAYMENT,
};
use crate::quorum::{Escalation, MAX_QUORUMS, Quorum, invalid_chain};
use crate::session::{
    DEFAULT_APPROVAL_TIMEOUT_SECONDS, MAX_APPROVAL_TIMEOUT_SECONDS, SessionConfig,
};
use crate::swap::SwapRules;
use crate::velocity::{MAX_VELOCITY_RULES, Velocity};
use chrono::{DateTime, Datelike, Days, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The most entries a payee list may hold.
pub const MAX_PAYEES: usize = 1000;
/// The most limits a policy may set.
pub const MAX_LIMITS: usize = 12;

/// A policy's rules. Every field has a default, and the defaults are the behaviour of a key with no policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRules {
    /// USD value above which a payment (transfer or x402) needs a person.
    #[serde(default = "default_threshold", deserialize_with = "strict::decimal")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$", example = "10")]
    pub approval_threshold_usd: Decimal,
    /// Per-tool thresholds (`transfer`, `x402_payment`, `swap`), over `approval_threshold_usd`.
    #[serde(default, deserialize_with = "strict::map")]
    #[schema(value_type = ToolThresholds)]
    pub thresholds: BTreeMap<String, Decimal>,
    /// Above this USD value a payment is denied, whoever would approve it.
    #[serde(default, deserialize_with = "strict::option")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$")]
    pub max_per_payment_usd: Option<Decimal>,
    /// The longest a session may give a person to decide.
    #[serde(default = "default_max_timeout")]
    #[schema(minimum = 1, maximum = 604800)]
    pub max_approval_timeout_seconds: u32,
    #[serde(default)]
    pub payees: Payees,
    /// Limits per period across all of the bound agent's sessions: a new session resets nothing.
    #[serde(default)]
    #[schema(max_items = 12)]
    pub limits: Vec<Limit>,
    /// What happens to a payment over a limit.
    #[serde(default = "deny")]
    pub over_limit: Route,
    /// The wallets (of the tenant's) its agents' sessions may pay from; all of the tenant's when empty.
    #[serde(default)]
    #[schema(value_type = Vec<EvmAddress>)]
    pub wallets: Vec<String>,
    /// The most a session may ask for a payment over its own budget: `require_approval` lets a session send it
    /// to a person (`deny` is always allowed), `deny` makes every such payment denied.
    #[serde(default = "ask")]
    pub on_budget_exceeded: OnBudgetExceeded,
    /// Whether a session's executions may go on past a step a person rejected (`continue`), or must stop.
    #[serde(default = "go_on")]
    pub on_reject: OnReject,
    /// The most approval requests a bound agent may have asked for and still waiting at once; past it, a payment
    /// that needs a person is refused (429) and nothing is written.
    #[serde(default = "max_pending")]
    #[schema(minimum = 1, maximum = 100000)]
    pub max_pending_approvals: u32,
    /// The circuit breaker: a payment that would break one of these freezes its session until a person looks.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub velocity: Vec<Velocity>,
    /// Above a USD value, several distinct people must approve the same action.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub quorums: Vec<Quorum>,
    /// Who else is asked when a request waits: each step, after its delay, takes the request to one more group.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub escalation: Vec<Escalation>,
    /// Where people hear of the requests its agents file, beside the inbox and the event streams.
    #[serde(default)]
    pub notify: Notify,
    /// What its agents may trade, and within which bounds.
    #[serde(default)]
    pub swaps: SwapRules,
}

/// Channels outside Paygent that tell people of a request they must decide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The Slack channel (its id, or `#name`) each request is posted to, with Approve and Reject buttons; the
    /// server must be set up for Slack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^#?[A-Za-z0-9._-]{1,80}$", example = "C0123456789")]
    pub slack_channel: Option<String>,
    /// The addresses each request is mailed to, with one-time links to decide: each must be the `email` of an
    /// approver's or admin's key of the tenant (the link decides as that key). The server must be set up for
    /// mail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 20, example = json!(["alice@example.com"]))]
    pub email: Vec<String>,
}

/// The most addresses a policy mails a request to.
pub const MAX_EMAILS: usize = 20;

/// Whether `address` looks like a mailbox: one `@` between non-empty parts, no spaces or angle brackets, at most
/// 254 characters.
pub fn is_email(address: &str) -> bool {
    let shape = address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.contains('@')
    });
    shape
        && address.len() <= 254
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
}

impl Notify {
    fn validate(&self) -> Result<(), RuleError> {
        if self.email.len() > MAX_EMAILS {
            return Err(broken(
                "notify.email",
                format!("at most {MAX_EMAILS} addresses"),
            ));
        }
        if let Some(bad) = self.email.iter().find(|e| !is_email(e)) {
            return Err(broken(
                "notify.email",
                format!("{bad:?} is not an email address"),
            ));
        }
        let valid = |c: &str| {
            let name = c.strip_prefix('#').unwrap_or(c);
            (1..=80).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        match &self.slack_channel {
            Some(c) if !valid(c) => Err(broken(
                "notify.slack_channel",
                "must be a Slack channel id or #name (letters, digits, '.', '_', '-')",
            )),
            _ => Ok(()),
        }
    }
}

/// The published shape of per-tool thresholds: only these tools have one.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ToolThresholds {
    #[schema(required = false, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$")]
    transfer: String,
    #[schema(
        required = false,
        pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$",
        example = "25"
    )]
    x402_payment: String,
    #[schema(
        required = false,
        pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$",
        example = "100"
    )]
    swap: String,
}

/// The published shape of an EVM address.
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^0x[0-9a-fA-F]{40}$")]
#[allow(dead_code)]
struct EvmAddress(String);

/// The published shape of a payee: an EVM address or an http(s) URL.
#[derive(utoipa::ToSchema)]
#[schema(pattern = r"^(0x[0-9a-fA-F]{40}|https?://[^/?#@\s]+[!-~]*)$")]
#[allow(dead_code)]
struct Payee(String);

/// The published shape of an amount in a currency: up to 18 decimals (at most the currency's own).
#[derive(utoipa::ToSchema)]
#[schema(pattern = r"^[0-9]{1,13}(\.[0-9]{1,18})?$")]
#[allow(dead_code)]
pub(crate) struct AmountText(String);

/// How many requests an agent may have waiting on people by default.
pub const DEFAULT_MAX_PENDING: u32 = 1000;

fn max_pending() -> u32 {
    DEFAULT_MAX_PENDING
}

fn ask() -> OnBudgetExceeded {
    OnBudgetExceeded::RequireApproval
}

fn go_on() -> OnReject {
    OnReject::Continue
}

/// A most that may be spent (and held by pending requests) in one period, in USD or in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub period: Period,
    #[serde(
        default,
        deserialize_with = "strict::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$")]
    pub usd: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Z0-9]{1,12}$")]
    pub currency: Option<String>,
    #[serde(
        default,
        deserialize_with = "strict::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$")]
    pub amount: Option<Decimal>,
}

impl Limit {
    /// The ledger key it counts (a currency, or [`USD_TOTAL`]) and its most.
    fn ledger(&self) -> Option<(&str, Decimal)> {
        match (self.usd, &self.currency, self.amount) {
            (Some(most), _, _) => Some((USD_TOTAL, most)),
            (None, Some(c), Some(most)) => Some((c, most)),
            _ => None,
        }
    }
}

/// A limit and what its current period used of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LimitUse {
    pub period: Period,
    /// The currency it counts; absent for a USD limit.
    pub currency: Option<String>,
    #[schema(value_type = String, example = "100")]
    pub limit: Decimal,
    #[serde(flatten)]
    #[schema(inline)]
    pub used: Usage,
}

/// A calendar period in UTC. Weeks start on Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    /// The ledger bucket of the period `at` falls in: `day:2026-11-30`, `week:2026-11-30` (its Monday) or
    /// `month:2026-11`.
    pub fn bucket(self, at: DateTime<Utc>) -> String {
        let day = at.date_naive();
        match self {
            Period::Day => format!("day:{day}"),
            Period::Week => {
                let back = Days::new(day.weekday().num_days_from_monday().into());
                format!("week:{}", day - back)
            }
            Period::Month => format!("month:{}", day.format("%Y-%m")),
        }
    }
}

/// Where a payment that a rule does not allow outright goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// A person decides.
    Approve,
    /// Denied, whoever would approve it.
    Deny,
}

fn deny() -> Route {
    Route::Deny
}

/// Who may be paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Payees {
    /// When not empty, a payment to anyone else needs a person (`outside_allow: approve`) or is denied.
    #[serde(default)]
    #[schema(value_type = Vec<Payee>, max_items = 1000)]
    pub allow: PayeeList,
    /// Never paid.
    #[serde(default)]
    #[schema(value_type = Vec<Payee>, max_items = 1000)]
    pub deny: PayeeList,
    #[serde(default = "approve")]
    pub outside_allow: Route,
    /// A key's first payment to a payee: allowed as any other, sent to a person, or denied.
    #[serde(default)]
    pub new_payee: NewPayee,
    /// What people call payees (an address or x402 URL, then a label of at most 100 characters): shown beside
    /// the payee on requests and in spend, never used to decide.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = labels_schema)]
    pub labels: BTreeMap<String, String>,
}

/// `payees.labels` as the server takes it: at most 1,000 entries, each label 1 to 100 characters.
fn labels_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    let label = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_LABEL_CHARS));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_PAYEES))
        .additional_properties(Some(label))
        .build()
}

/// The longest payee label.
pub const MAX_LABEL_CHARS: usize = 100;

impl Payees {
    /// The label people gave `payee` (normalized, as [`Recipient::payee`] gives it), if any.
    pub fn label_of(&self, payee: &str) -> Option<&str> {
        let labelled = self.labels.iter().find(|(p, _)| payee_of(p) == payee);
        labelled.map(|(_, label)| label.as_str())
    }

    fn validate_labels(&self) -> Result<(), RuleError> {
        if self.labels.len() > MAX_PAYEES {
            return Err(broken(
                "payees.labels",
                format!("at most {MAX_PAYEES} entries"),
            ));
        }
        for (payee, label) in &self.labels {
            let field = || format!("payees.labels[{payee:?}]");
            if Recipient::parse(payee).is_err() {
                return Err(broken(
                    &field(),
                    "is neither an EVM address nor an http(s) URL",
                ));
            }
            let chars = label.chars().count();
            if chars == 0 || chars > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
                let why = format!("a label is 1 to {MAX_LABEL_CHARS} printable characters");
                return Err(broken(&field(), why));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NewPayee {
    #[default]
    Allow,
    Approve,
    Deny,
}

impl Default for Payees {
    fn default() -> Self {
        Payees {
            allow: PayeeList::default(),
            deny: PayeeList::default(),
            outside_allow: Route::Approve,
            labels: BTreeMap::new(),
            new_payee: NewPayee::Allow,
        }
    }
}

fn approve() -> Route {
    Route::Approve
}

fn default_threshold() -> Decimal {
    DEFAULT_PAYMENT_THRESHOLD_USD
}

fn default_max_timeout() -> u32 {
    MAX_APPROVAL_TIMEOUT_SECONDS
}

impl Default for PolicyRules {
    fn default() -> Self {
        PolicyRules {
            approval_threshold_usd: default_threshold(),
            thresholds: BTreeMap::new(),
            max_per_payment_usd: None,
            max_approval_timeout_seconds: default_max_timeout(),
            payees: Payees::default(),
            limits: Vec::new(),
            over_limit: Route::Deny,
            wallets: Vec::new(),
            on_budget_exceeded: ask(),
            on_reject: go_on(),
            max_pending_approvals: max_pending(),
            velocity: Vec::new(),
            quorums: Vec::new(),
            escalation: Vec::new(),
            notify: Notify::default(),
            swaps: SwapRules::default(),
        }
    }
}

/// A rule broken, named by its field so a client can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct RuleError {
    pub field: String,
    pub why: String,
}

fn broken(field: &str, why: impl Into<String>) -> RuleError {
    RuleError {
        field: field.to_owned(),
        why: why.into(),
    }
}

/// Why the policy refuses a payment outright.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule's field, e.g. `payees.deny`.
    pub rule: &'static str,
    pub detail: String,
}

fn usd_bound(field: &str, v: Decimal) -> Result<(), RuleError> {
    let canonical = parse_decimal(&v.to_string()).is_ok();
    if !canonical || v.is_sign_negative() || v.scale() > 6 || v > MAX_AMOUNT {
        return Err(broken(
            field,
            "must be a non-negative decimal string with at most 6 decimals",
        ));
    }
    Ok(())
}

fn period_word(p: Period) -> &'static str {
    match p {
        Period::Day => "daily",
        Period::Week => "weekly",
        Period::Month => "monthly",
    }
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl PolicyRules {
    /// Checks what serde cannot: amounts, known tools, timeouts and payees' shapes.
    pub fn validate(&self) -> Result<(), RuleError> {
        usd_bound("approval_threshold_usd", self.approval_threshold_usd)?;
        for (tool, usd) in &self.thresholds {
            if ![TRANSFER, X402_PAYMENT, SWAP].contains(&tool.as_str()) {
                return Err(broken(
                    "thresholds",
                    format!("unknown tool {tool:?}: transfer, x402_payment or swap"),
                ));
            }
            usd_bound(&format!("thresholds.{tool}"), *usd)?;
        }
        if let Some(max) = self.max_per_payment_usd {
            usd_bound("max_per_payment_usd", max)?;
        }
        if !(1..=MAX_APPROVAL_TIMEOUT_SECONDS).contains(&self.max_approval_timeout_seconds) {
            return Err(broken(
                "max_approval_timeout_seconds",
                format!("must be between 1 and {MAX_APPROVAL_TIMEOUT_SECONDS}"),
            ));
        }
        self.validate_limits()?;
        self.validate_velocity()?;
        self.validate_quorums()?;
        self.notify.validate()?;
        self.swaps.validate().map_err(|why| broken("swaps", why))?;
        if !(1..=100_000).contains(&self.max_pending_approvals) {
            return Err(broken(
                "max_pending_approvals",
                "must be between 1 and 100000",
            ));
        }
        if let Some(bad) = self
            .wallets
            .iter()
            .find(|w| !matches!(Recipient::parse(w), Ok(Recipient::Evm(_))))
        {
            return Err(broken("wallets", format!("{bad:?} is not an EVM address")));
        }
        self.payees.validate_labels()?;
        for (field, list) in [
            ("payees.allow", &self.payees.allow),
            ("payees.deny", &self.payees.deny),
        ] {
            if list.len() > MAX_PAYEES {
                return Err(broken(field, format!("at most {MAX_PAYEES} entries")));
            }
            if let Some(bad) = list.iter().find(|p| Recipient::parse(p).is_err()) {
                return Err(broken(
                    field,
                    format!("{bad:?} is neither an EVM address nor an http(s) URL"),
                ));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), RuleError> {
        if self.limits.len() > MAX_LIMITS {
            return Err(broken("limits", format!("at most {MAX_LIMITS}")));
        }
        for (i, limit) in self.limits.iter().enumerate() {
            let field = format!("limits[{i}]");
            match (limit.usd, &limit.currency, limit.amount) {
                (Some(usd), None, None) => usd_bound(&field, usd)?,
                (None, Some(currency), Some(amount)) => {
                    crate::money::validate_symbol(currency)
                        .map_err(|e| broken(&field, e.to_string()))?;
                    usd_bound(&field, amount)?;
                }
                _ => return Err(broken(&field, "set either usd, or currency and amount")),
            }
        }
        Ok(())
    }

    fn validate_velocity(&self) -> Result<(), RuleError> {
        if self.velocity.len() > MAX_VELOCITY_RULES {
            return Err(broken(
                "velocity",
                format!("at most {MAX_VELOCITY_RULES} rules"),
            ));
        }
        for (i, rule) in self.velocity.iter().enumerate() {
            if let Some((field, why)) = rule.invalid() {
                return Err(broken(&format!("velocity[{i}].{field}"), why));
            }
            if let Some(usd) = rule.max_usd {
                usd_bound(&format!("velocity[{i}].max_usd"), usd)?;
            }
        }
        Ok(())
    }

    fn validate_quorums(&self) -> Result<(), RuleError> {
        if self.quorums.len() > MAX_QUORUMS {
            return Err(broken("quorums", format!("at most {MAX_QUORUMS} rules")));
        }
        if let Some(why) = invalid_chain(&self.escalation) {
            return Err(broken("escalation", why));
        }
        for (i, rule) in self.quorums.iter().enumerate() {
            usd_bound(&format!("quorums[{i}].above_usd"), rule.above_usd)?;
            if let Some((field, why)) = rule.invalid() {
                return Err(broken(&format!("quorums[{i}].{field}"), why));
            }
        }
        Ok(())
    }

    /// The first limit a payment of `amount` `currency` worth `usd` at `at` would break, in words. `used` gives
    /// what is spent and reserved in a (bucket, ledger key) so far.
    pub fn over_limit(
        &self,
        at: DateTime<Utc>,
        currency: &str,
        amount: Decimal,
        usd: Decimal,
        used: impl Fn(&str, &str) -> Decimal,
    ) -> Option<String> {
        self.limits.iter().find_map(|limit| {
            let (ledger, most) = limit.ledger()?;
            let (this, unit) = match ledger {
                USD_TOTAL => (usd, "USD"),
                c if c == currency => (amount, c),
                _ => return None,
            };
            let so_far = used(&limit.period.bucket(at), ledger);
            (so_far + this > most).then(|| {
                format!(
                    "the policy's {} limit of {most} {unit} (used {so_far}, this {this})",
                    period_word(limit.period)
                )
            })
        })
    }

    /// Where each limit stands at `at`: `used` gives what is spent and reserved in a (bucket, ledger key).
    pub fn limit_use(
        &self,
        at: DateTime<Utc>,
        used: impl Fn(&str, &str) -> Usage,
    ) -> Vec<LimitUse> {
        self.limits
            .iter()
            .filter_map(|limit| {
                let (ledger, most) = limit.ledger()?;
                Some(LimitUse {
                    period: limit.period,
                    currency: (ledger != USD_TOTAL).then(|| ledger.to_owned()),
                    limit: most,
                    used: used(&limit.period.bucket(at), ledger),
                })
            })
            .collect()
    }

    /// The USD value above which `tool` needs a person under this policy alone.
    pub fn threshold(&self, tool: &str) -> Decimal {
        match self.thresholds.get(tool) {
            Some(t) => *t,
            None if tool == SWAP => DEFAULT_SWAP_THRESHOLD_USD,
            None => self.approval_threshold_usd,
        }
    }

    /// Refuses a session configuration that is looser than this policy, naming the field and the bound.
    pub fn admit(&self, config: &SessionConfig) -> Result<(), RuleError> {
        let payment = self.threshold(TRANSFER).min(self.threshold(X402_PAYMENT));
        if config.approval_threshold_usd.is_some_and(|t| t > payment) {
            return Err(broken(
                "approval_threshold_usd",
                format!("the policy allows at most {payment}"),
            ));
        }
        if config
            .approval_timeout_seconds
            .is_some_and(|t| t > self.max_approval_timeout_seconds)
        {
            return Err(broken(
                "approval_timeout_seconds",
                format!(
                    "the policy allows at most {}",
                    self.max_approval_timeout_seconds
                ),
            ));
        }
        if self.on_budget_exceeded == OnBudgetExceeded::Deny
            && config.budget.on_budget_exceeded != OnBudgetExceeded::Deny
        {
            return Err(broken("on_budget_exceeded", "the policy allows only deny"));
        }
        if self.on_reject == OnReject::Stop && config.on_reject != OnReject::Stop {
            return Err(broken("on_reject", "the policy allows only stop"));
        }
        if let (Some(max), Some(asked)) =
            (self.max_per_payment_usd, config.budget.max_per_payment_usd)
            && asked > max
        {
            return Err(broken(
                "max_per_payment_usd",
                format!("the policy allows at most {max}"),
            ));
        }
        Ok(())
    }

    /// The per-tool rules in force for a session: the strictest of this policy and the session's own threshold,
    /// then the payee allow list. The first rule that fires decides, so the reason names the tightest limit.
    pub fn for_session(&self, config: &SessionConfig) -> Policy {
        use DecisionKind::*;
        let mut rules = Vec::new();
        for tool in [X402_PAYMENT, TRANSFER, SWAP] {
            let usd = match tool {
                SWAP => self.threshold(tool),
                _ => {
                    let policy = self.threshold(tool);
                    config
                        .approval_threshold_usd
                        .map_or(policy, |t| t.min(policy))
                }
            };
            let allowed = match tool {
                SWAP => vec![Approve, Reject],
                _ => vec![Approve, Edit, Reject],
            };
            rules.push(Rule {
                tool: tool.to_owned(),
                condition: Condition::UsdValueAbove { usd },
                allowed,
            });
        }
        if !self.payees.allow.is_empty() {
            for tool in [X402_PAYMENT, TRANSFER] {
                rules.push(Rule {
                    tool: tool.to_owned(),
                    condition: Condition::ArgNotIn {
                        arg: "recipient".into(),
                        values: self.payees.allow.clone(),
                    },
                    allowed: vec![Approve, Edit, Reject],
                });
            }
        }
        Policy { rules }
    }

    /// How long a person has to decide on a session's request: the session's time, or the default, within the
    /// policy's bound.
    pub fn approval_timeout(&self, config: &SessionConfig) -> u32 {
        config
            .approval_timeout_seconds
            .unwrap_or(DEFAULT_APPROVAL_TIMEOUT_SECONDS)
            .min(self.max_approval_timeout_seconds)
    }

    /// Whether the policy lets a session pay from `wallet`.
    pub fn grants_wallet(&self, wallet: &str) -> bool {
        self.wallets.is_empty() || self.wallets.iter().any(|w| same(w, wallet))
    }

    /// Whether the policy denies a payment outright, whatever a person would say: a denied payee, a payee
    /// outside the allow list when that means denial, or a value above `max_per_payment_usd`.
    pub fn refusal(&self, usd_value: Decimal, args: &Value) -> Option<Refusal> {
        let recipient = args.get("recipient").and_then(Value::as_str).unwrap_or("");
        if self.payees.deny.contains(recipient) {
            return Some(Refusal {
                rule: "payees.deny",
                detail: format!("{recipient} is on the policy's deny list"),
            });
        }
        let outside = !self.payees.allow.is_empty() && !self.payees.allow.contains(recipient);
        if outside && self.payees.outside_allow == Route::Deny {
            return Some(Refusal {
                rule: "payees.allow",
                detail: format!("{recipient} is not on the policy's allow list"),
            });
        }
        match self.max_per_payment_usd {
            Some(max) if usd_value > max => Some(Refusal {
                rule: "max_per_payment_usd",
                detail: format!("USD value {usd_value} is above the policy's maximum of {max}"),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Verdict;
    use serde_json::json;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    const BAD: &str = "0x00000000000000000000000000000000000000bd";
    const OK: &str = "0x00000000000000000000000000000000000000a0";

    #[test]
    fn the_defaults_are_todays_behaviour() {
        let rules: PolicyRules = serde_json::from_str("{}").unwrap();
        assert_eq!(rules, PolicyRules::default());
        assert!(rules.validate().is_ok());
        assert_eq!(
            rules.for_session(&SessionConfig::default()),
            Policy::default()
        );
        assert_eq!(rules.refusal(d("1000000"), &json!({"recipient": OK})), None);
    }

    #[test]
    fn sessions_may_only_tighten() {
        let rules = PolicyRules::default();
        let config = |v: Value| serde_json::from_value::<SessionConfig>(v).unwrap();
        let looser = rules.admit(&config(json!({"approval_threshold_usd": "1000000"})));
        assert_eq!(looser.unwrap_err().field, "approval_threshold_usd");
        assert!(
            rules
                .admit(&config(json!({"approval_threshold_usd": "5"})))
                .is_ok()
        );
        let strict = PolicyRules {
            max_per_payment_usd: Some(d("50")),
            max_approval_timeout_seconds: 60,
            ..PolicyRules::default()
        };
        let e = strict.admit(&config(json!({"max_per_payment_usd": "51"})));
        assert_eq!(e.unwrap_err().field, "max_per_payment_usd");
        let e = strict.admit(&config(json!({"approval_timeout_seconds": 61})));
        assert_eq!(e.unwrap_err().field, "approval_timeout_seconds");
        let fits = strict.admit(&config(json!({"approval_timeout_seconds": 60})));
        assert!(fits.is_ok());
        assert!(
            strict.admit(&SessionConfig::default()).is_ok(),
            "defaults fit any policy"
        );
        let closed = PolicyRules {
            on_budget_exceeded: OnBudgetExceeded::Deny,
            on_reject: OnReject::Stop,
            ..PolicyRules::default()
        };
        let e = closed.admit(&config(json!({"on_budget_exceeded": "require_approval"})));
        assert_eq!(e.unwrap_err().field, "on_budget_exceeded");
        let e = closed.admit(&config(json!({"on_reject": "continue"})));
        assert_eq!(e.unwrap_err().field, "on_reject");
        assert!(closed.admit(&SessionConfig::default()).is_ok());
        assert!(
            rules
                .admit(&config(json!({"on_reject": "continue"})))
                .is_ok()
        );
        assert_eq!(strict.approval_timeout(&SessionConfig::default()), 60);
        assert_eq!(rules.approval_timeout(&SessionConfig::default()), 900);
    }

    #[test]
    fn the_strictest_threshold_applies() {
        let rules = PolicyRules {
            thresholds: BTreeMap::from([(TRANSFER.to_owned(), d("2"))]),
            ..PolicyRules::default()
        };
        let policy = rules.for_session(&SessionConfig::default());
        let none = json!({});
        assert!(matches!(
            policy.evaluate(TRANSFER, d("2.01"), &none),
            Verdict::RequireApproval { .. }
        ));
        assert_eq!(policy.evaluate(X402_PAYMENT, d("9"), &none), Verdict::Allow);
        let tight = SessionConfig {
            approval_threshold_usd: Some(d("1")),
            ..SessionConfig::default()
        };
        let policy = rules.for_session(&tight);
        assert!(matches!(
            policy.evaluate(X402_PAYMENT, d("1.5"), &none),
            Verdict::RequireApproval { .. }
        ));
    }

    #[test]
    fn payees_and_the_maximum_refuse_or_ask() {
        let rules = PolicyRules {
            max_per_payment_usd: Some(d("100")),
            payees: Payees {
                allow: vec![OK.to_owned()].into(),
                deny: vec![BAD.to_owned()].into(),
                ..Payees::default()
            },
            ..PolicyRules::default()
        };
        let to = |r: &str| json!({"recipient": r});
        assert_eq!(rules.refusal(d("1"), &to(BAD)).unwrap().rule, "payees.deny");
        assert_eq!(
            rules.refusal(d("100.01"), &to(OK)).unwrap().rule,
            "max_per_payment_usd"
        );
        assert_eq!(
            rules.refusal(d("1"), &to(&OK.to_uppercase().replace("0X", "0x"))),
            None
        );
        let policy = rules.for_session(&SessionConfig::default());
        let other = "0x00000000000000000000000000000000000000c0";
        assert!(matches!(
            policy.evaluate(TRANSFER, d("1"), &to(other)),
            Verdict::RequireApproval { .. }
        ));
        assert_eq!(policy.evaluate(TRANSFER, d("1"), &to(OK)), Verdict::Allow);
        let deny = PolicyRules {
            payees: Payees {
                outside_allow: Route::Deny,
                ..rules.payees.clone()
            },
            ..rules
        };
        assert_eq!(
            deny.refusal(d("1"), &to(other)).unwrap().rule,
            "payees.allow"
        );
    }

    #[test]
    fn periods_bucket_by_utc_calendar() {
        let at = crate::time::parse("2026-12-02T23:59:59.000000Z").unwrap();
        assert_eq!(Period::Day.bucket(at), "day:2026-12-02");
        assert_eq!(Period::Week.bucket(at), "week:2026-11-30", "the Monday");
        assert_eq!(Period::Month.bucket(at), "month:2026-12");
    }

    #[test]
    fn limits_count_what_was_used_in_their_period() {
        let rules: PolicyRules = serde_json::from_value(json!({"limits": [
            {"period": "week", "usd": "100"},
            {"period": "day", "currency": "CRO", "amount": "50"},
        ]}))
        .unwrap();
        assert!(rules.validate().is_ok());
        let at = crate::time::parse("2026-12-02T12:00:00.000000Z").unwrap();
        let used = |bucket: &str, ledger: &str| match (bucket, ledger) {
            ("week:2026-11-30", USD_TOTAL) => d("90"),
            ("day:2026-12-02", "CRO") => d("45"),
            _ => Decimal::ZERO,
        };
        assert_eq!(rules.over_limit(at, "USDC", d("10"), d("10"), used), None);
        let over = rules
            .over_limit(at, "USDC", d("10.01"), d("10.01"), used)
            .unwrap();
        assert!(over.contains("weekly limit of 100 USD"), "{over}");
        let over = rules.over_limit(at, "CRO", d("6"), d("0.6"), used).unwrap();
        assert!(over.contains("daily limit of 50 CRO"), "{over}");
        let next_week = crate::time::parse("2026-12-07T00:00:00.000000Z").unwrap();
        assert_eq!(
            rules.over_limit(next_week, "USDC", d("99"), d("99"), used),
            None
        );
        let usage = |bucket: &str, ledger: &str| Usage {
            spent: used(bucket, ledger),
            reserved: d("1"),
        };
        let standing: Vec<(Option<String>, Decimal, Decimal)> = rules
            .limit_use(at, usage)
            .into_iter()
            .map(|l| (l.currency, l.limit, l.used.spent))
            .collect();
        assert_eq!(
            standing,
            [
                (None, d("100"), d("90")),
                (Some("CRO".into()), d("50"), d("45"))
            ],
            "each limit with its period's use"
        );
        let field = |v: Value| {
            let r: PolicyRules = serde_json::from_value(json!({"limits": [v]})).unwrap();
            r.validate().unwrap_err().field
        };
        assert_eq!(field(json!({"period": "day"})), "limits[0]");
        assert_eq!(
            field(json!({"period": "day", "usd": "1", "currency": "USDC"})),
            "limits[0]"
        );
        assert_eq!(
            field(json!({"period": "day", "currency": "US DC", "amount": "1"})),
            "limits[0]"
        );
    }

    #[test]
    fn bad_rules_name_their_field() {
        let parse = |v: Value| serde_json::from_value::<PolicyRules>(v).unwrap();
        let field = |v: Value| parse(v).validate().unwrap_err().field;
        assert_eq!(
            field(json!({"approval_threshold_usd": "-1"})),
            "approval_threshold_usd"
        );
        assert_eq!(
            field(json!({"thresholds": {"http_get": "1"}})),
            "thresholds"
        );
        assert_eq!(
            field(json!({"thresholds": {"swap": "0.0000001"}})),
            "thresholds.swap"
        );
        assert_eq!(
            field(json!({"max_approval_timeout_seconds": 0})),
            "max_approval_timeout_seconds"
        );
        assert_eq!(field(json!({"payees": {"deny": ["bob"]}})), "payees.deny");
        assert_eq!(
            field(json!({"velocity": [{"per_seconds": 60, "max_usd": "1.0000001"}]})),
            "velocity[0].max_usd"
        );
        assert_eq!(
            field(json!({"velocity": [{"per_seconds": 0, "max_payments": 1}]})),
            "velocity[0].per_seconds"
        );
        let nine = vec![json!({"per_seconds": 1, "max_payments": 1}); 9];
        assert_eq!(field(json!({"velocity": nine})), "velocity");
        assert_eq!(
            field(json!({"quorums": [{"above_usd": "-1", "approvals_required": 2}]})),
            "quorums[0].above_usd"
        );
        assert_eq!(
            field(
                json!({"quorums": [{"above_usd": "1", "approvals_required": 2, "groups": ["A B"]}]})
            ),
            "quorums[0].groups"
        );
        assert!(
            serde_json::from_value::<PolicyRules>(json!({"approval_threshold_usd": 5})).is_err()
        );
        assert!(serde_json::from_value::<PolicyRules>(json!({"surprise": 1})).is_err());
    }
}
