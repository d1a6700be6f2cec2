//! Per-tool rules: when a money-moving tool call needs a person, and which decisions that person may take.

use crate::approval::DecisionKind;
use crate::payees::PayeeList;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The tools that move money: the rails carry transfers and x402 payments, the guard holds swaps too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentTool {
    Transfer,
    X402Payment,
    Swap,
}

names!(PaymentTool {
    Transfer => "transfer",
    X402Payment => "x402_payment",
    Swap => "swap",
});

/// The tools' names, where rules key on them (per-tool thresholds, rule lists).
pub const X402_PAYMENT: &str = PaymentTool::X402Payment.as_str();
pub const TRANSFER: &str = PaymentTool::Transfer.as_str();
pub const SWAP: &str = PaymentTool::Swap.as_str();

/// When a rule fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    /// The call's USD value is strictly greater than `usd`.
    UsdValueAbove { usd: Decimal },
    /// The string argument `arg` is one of `values` (e.g. a blocked recipient).
    ArgIn { arg: String, values: PayeeList },
    /// The string argument `arg` is missing or not one of `values` (e.g. a recipient allow-list).
    ArgNotIn { arg: String, values: PayeeList },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub tool: String,
    pub condition: Condition,
    pub allowed: Vec<DecisionKind>,
}

/// The rules in force for one session. Several rules may name one tool; the first that fires decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

/// What the guard should do with a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow,
    RequireApproval {
        reason: String,
        allowed: Vec<DecisionKind>,
    },
}

/// Payments default to needing a person above $10; swaps above $100.
pub const DEFAULT_PAYMENT_THRESHOLD_USD: Decimal = Decimal::TEN;
pub const DEFAULT_SWAP_THRESHOLD_USD: Decimal = Decimal::ONE_HUNDRED;

impl Policy {
    /// The default rules with the payment threshold set to `payment_threshold_usd`.
    pub fn with_payment_threshold(payment_threshold_usd: Decimal) -> Self {
        use DecisionKind::*;
        let payment = |tool: &str| Rule {
            tool: tool.to_owned(),
            condition: Condition::UsdValueAbove {
                usd: payment_threshold_usd,
            },
            allowed: vec![Approve, Edit, Reject],
        };
        Policy {
            rules: vec![
                payment(X402_PAYMENT),
                payment(TRANSFER),
                Rule {
                    tool: SWAP.to_owned(),
                    condition: Condition::UsdValueAbove {
                        usd: DEFAULT_SWAP_THRESHOLD_USD,
                    },
                    allowed: vec![Approve, Reject],
                },
            ],
        }
    }

    /// Decides whether a call of `tool` with `args`, worth `usd_value`, may run at once.
    pub fn evaluate(&self, tool: &str, usd_value: Decimal, args: &Value) -> Verdict {
        self.rules
            .iter()
            .filter(|r| r.tool == tool)
            .find_map(|r| {
                r.condition
                    .fires(usd_value, args)
                    .map(|reason| Verdict::RequireApproval {
                        reason,
                        allowed: r.allowed.clone(),
                    })
            })
            .unwrap_or(Verdict::Allow)
    }

    /// The decisions a person may take on a call of `tool`; used when the verdict is not at hand.
    pub fn allowed_for(&self, tool: &str) -> Vec<DecisionKind> {
        self.rules
            .iter()
            .find(|r| r.tool == tool)
            .map(|r| r.allowed.clone())
            .unwrap_or_else(|| vec![DecisionKind::Approve, DecisionKind::Reject])
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::with_payment_threshold(DEFAULT_PAYMENT_THRESHOLD_USD)
    }
}

impl Condition {
    /// The human-readable reason if the condition fires.
    fn fires(&self, usd_value: Decimal, args: &Value) -> Option<String> {
        match self {
            Condition::UsdValueAbove { usd } => (usd_value > *usd)
                .then(|| format!("USD value {usd_value} exceeds the approval threshold of {usd}")),
            Condition::ArgIn { arg, values } => {
                let v = args.get(arg).and_then(Value::as_str)?;
                values
                    .contains(v)
                    .then(|| format!("{arg} {v} is on the list that needs approval"))
            }
            Condition::ArgNotIn { arg, values } => {
                let v = args.get(arg).and_then(Value::as_str).unwrap_or("");
                (!values.contains(v)).then(|| format!("{arg} {v:?} is not on the allowed list"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn payments_need_approval_strictly_above_ten_dollars() {
        let p = Policy::default();
        let args = json!({});
        assert_eq!(p.evaluate(TRANSFER, d("9.99"), &args), Verdict::Allow);
        assert_eq!(p.evaluate(TRANSFER, d("10.00"), &args), Verdict::Allow);
        match p.evaluate(X402_PAYMENT, d("10.01"), &args) {
            Verdict::RequireApproval { allowed, reason } => {
                assert_eq!(
                    allowed,
                    vec![
                        DecisionKind::Approve,
                        DecisionKind::Edit,
                        DecisionKind::Reject
                    ]
                );
                assert!(reason.contains("10.01"), "{reason}");
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            p.evaluate(TRANSFER, d("3000"), &args),
            Verdict::RequireApproval { .. }
        ));
    }

    #[test]
    fn swaps_have_their_own_rule_without_edit() {
        let p = Policy::default();
        assert_eq!(p.evaluate(SWAP, d("100"), &json!({})), Verdict::Allow);
        match p.evaluate(SWAP, d("100.01"), &json!({})) {
            Verdict::RequireApproval { allowed, .. } => {
                assert_eq!(allowed, vec![DecisionKind::Approve, DecisionKind::Reject])
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            p.allowed_for(SWAP),
            vec![DecisionKind::Approve, DecisionKind::Reject]
        );
    }

    #[test]
    fn a_session_threshold_moves_the_payment_line() {
        let p = Policy::with_payment_threshold(d("1"));
        assert!(matches!(
            p.evaluate(TRANSFER, d("1.01"), &json!({})),
            Verdict::RequireApproval { .. }
        ));
        assert_eq!(p.evaluate(SWAP, d("50"), &json!({})), Verdict::Allow);
    }

    #[test]
    fn tools_without_rules_run() {
        assert_eq!(
            Policy::default().evaluate("http_get", d("1000000"), &json!({})),
            Verdict::Allow
        );
    }

    #[test]
    fn argument_conditions() {
        let p = Policy {
            rules: vec![
                Rule {
                    tool: TRANSFER.into(),
                    condition: Condition::ArgIn {
                        arg: "recipient".into(),
                        values: vec!["0xBAD".to_owned()].into(),
                    },
                    allowed: vec![DecisionKind::Reject],
                },
                Rule {
                    tool: X402_PAYMENT.into(),
                    condition: Condition::ArgNotIn {
                        arg: "recipient".into(),
                        values: vec!["https://ok.example/".to_owned()].into(),
                    },
                    allowed: vec![DecisionKind::Approve, DecisionKind::Reject],
                },
            ],
        };
        let one = d("1");
        assert!(matches!(
            p.evaluate(TRANSFER, one, &json!({"recipient": "0xbad"})),
            Verdict::RequireApproval { .. }
        ));
        assert_eq!(
            p.evaluate(TRANSFER, one, &json!({"recipient": "0xgood"})),
            Verdict::Allow
        );
        assert_eq!(
            p.evaluate(
                X402_PAYMENT,
                one,
                &json!({"recipient": "https://ok.example/"})
            ),
            Verdict::Allow
        );
        assert!(matches!(
            p.evaluate(X402_PAYMENT, one, &json!({})),
            Verdict::RequireApproval { .. }
        ));
    }

    #[test]
    fn rules_serialize_for_config() {
        let p = Policy::default();
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"kind\":\"usd_value_above\""), "{text}");
        assert_eq!(serde_json::from_str::<Policy>(&text).unwrap(), p);
    }
}
