//! A session is one agent's working context: its approval threshold, its timeout, and later its budgets.

use crate::budget::{BudgetConfig, OnBudgetExceeded};
use crate::execution::OnReject;
use crate::money::{parse_decimal, strict};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Whether a session may still move money: a frozen one (the circuit breaker tripped) takes no payments and
/// runs no steps until a person unfreezes it; a killed one takes none and runs nothing until revived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Active,
    Frozen,
    Killed,
}

names!(SessionState {
    Active => "active",
    Frozen => "frozen",
    Killed => "killed",
});

/// How long a person has to decide, by default.
pub const DEFAULT_APPROVAL_TIMEOUT_SECONDS: u32 = 900;
/// Longest allowed approval timeout: a week. Longer pauses hold reservations too long to be sane.
pub const MAX_APPROVAL_TIMEOUT_SECONDS: u32 = 7 * 24 * 3600;

/// A session's settings. The budget's keys sit beside the others, as one flat object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FlatSessionConfig")]
pub struct SessionConfig {
    /// USD value above which a payment needs a person (strictly greater); the policy's when absent. A session
    /// may only tighten its policy, so the guard applies the lower of the two.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_threshold_usd: Option<Decimal>,
    /// How long a person has to decide; 15 minutes when absent, and never longer than the policy allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_timeout_seconds: Option<u32>,
    /// Whether an execution stops or goes on when a person rejects one of its steps.
    #[serde(default)]
    pub on_reject: OnReject,
    #[serde(flatten)]
    pub budget: BudgetConfig,
}

/// The wire form, spelled out because serde cannot refuse unknown keys through `flatten`; it is also the
/// published schema of [`SessionConfig`].
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SessionConfig, description = "A session's settings: it may only tighten its policy's.")]
struct FlatSessionConfig {
    /// USD value above which a payment needs a person; the policy's when absent, and never above it.
    #[serde(default, deserialize_with = "strict::option")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$", example = "10")]
    approval_threshold_usd: Option<Decimal>,
    /// How long a person has to decide; 15 minutes when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    approval_timeout_seconds: Option<u32>,
    #[serde(default)]
    on_reject: OnReject,
    /// Per-currency daily limits, e.g. `{"USDC": "100.00"}`.
    #[serde(default, deserialize_with = "strict::map")]
    #[schema(value_type = std::collections::BTreeMap<String, crate::rules::AmountText>)]
    daily_limits: std::collections::BTreeMap<String, Decimal>,
    #[serde(default, deserialize_with = "strict::option")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$")]
    daily_limit_usd: Option<Decimal>,
    #[serde(default, deserialize_with = "strict::option")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$")]
    max_per_payment_usd: Option<Decimal>,
    /// An IANA time zone; "today" starts at its midnight.
    #[serde(default = "default_time_zone")]
    #[schema(example = "Europe/Paris")]
    budget_time_zone: String,
    #[serde(default)]
    on_budget_exceeded: OnBudgetExceeded,
}

impl utoipa::PartialSchema for SessionConfig {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        FlatSessionConfig::schema()
    }
}

impl utoipa::ToSchema for SessionConfig {
    fn name() -> std::borrow::Cow<'static, str> {
        "SessionConfig".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        FlatSessionConfig::schemas(schemas)
    }
}

fn default_time_zone() -> String {
    BudgetConfig::default().budget_time_zone
}

impl From<FlatSessionConfig> for SessionConfig {
    fn from(f: FlatSessionConfig) -> Self {
        SessionConfig {
            approval_threshold_usd: f.approval_threshold_usd,
            approval_timeout_seconds: f.approval_timeout_seconds,
            on_reject: f.on_reject,
            budget: BudgetConfig {
                daily_limits: f.daily_limits,
                daily_limit_usd: f.daily_limit_usd,
                max_per_payment_usd: f.max_per_payment_usd,
                budget_time_zone: f.budget_time_zone,
                on_budget_exceeded: f.on_budget_exceeded,
            },
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            approval_threshold_usd: None,
            approval_timeout_seconds: None,
            on_reject: OnReject::Stop,
            budget: BudgetConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionConfigError {
    #[error("approval_threshold_usd must be a non-negative decimal string with at most 6 decimals")]
    BadThreshold,
    #[error("approval_timeout_seconds must be between 1 and {MAX_APPROVAL_TIMEOUT_SECONDS}")]
    BadTimeout,
}

impl SessionConfig {
    /// Checks bounds that serde cannot express.
    pub fn validate(&self) -> Result<(), SessionConfigError> {
        if let Some(t) = self.approval_threshold_usd {
            let canonical = parse_decimal(&t.to_string()).is_ok();
            if !canonical || t.is_sign_negative() || t.scale() > 6 || t > crate::money::MAX_AMOUNT {
                return Err(SessionConfigError::BadThreshold);
            }
        }
        if self
            .approval_timeout_seconds
            .is_some_and(|s| !(1..=MAX_APPROVAL_TIMEOUT_SECONDS).contains(&s))
        {
            return Err(SessionConfigError::BadTimeout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_ten_dollars_and_fifteen_minutes() {
        let c: SessionConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, SessionConfig::default());
        assert_eq!(c.approval_threshold_usd, None, "the policy's");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_are_refused() {
        let parse = |s: &str| serde_json::from_str::<SessionConfig>(s);
        assert!(
            parse(r#"{"approval_threshold_usd": 10}"#).is_err(),
            "numbers are not money"
        );
        assert!(parse(r#"{"surprise": 1}"#).is_err());
        assert!(parse(r#"{"approval_threshold_usd": "1e3"}"#).is_err());
        let neg = parse(r#"{"approval_threshold_usd": "-1"}"#).unwrap();
        assert_eq!(neg.validate(), Err(SessionConfigError::BadThreshold));
        let fine = parse(r#"{"approval_threshold_usd": "0.1234567"}"#).unwrap();
        assert_eq!(fine.validate(), Err(SessionConfigError::BadThreshold));
        let zero = parse(r#"{"approval_timeout_seconds": 0}"#).unwrap();
        assert_eq!(zero.validate(), Err(SessionConfigError::BadTimeout));
        assert!(
            parse(r#"{"approval_threshold_usd": "0"}"#)
                .unwrap()
                .validate()
                .is_ok()
        );
    }
}
