//! Payment intents, their recipients, and what an approver's edit may change.

use crate::auth::Role;
use crate::money::{Money, MoneyError};
use crate::policy::PaymentTool;
use crate::prices::PriceTable;
use crate::swap::SwapTerms;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Waiting for a person; the payment carries its `approval_id`.
    PendingApproval,
    /// Allowed, but no rail carries it: the agent pays and reports the outcome.
    Authorized,
    /// Paid on a rail, or reported paid by the agent.
    Executed,
    /// Refused, with a reason such as `rejected` or `budget_exceeded`.
    Denied,
    Failed,
}

names!(PaymentStatus {
    PendingApproval => "pending_approval",
    Authorized => "authorized",
    Executed => "executed",
    Denied => "denied",
    Failed => "failed",
});

impl PaymentStatus {
    /// Only an authorized payment awaits an outcome from its agent, and only `executed` or `failed` end it.
    pub fn can_report(self, outcome: PaymentStatus) -> bool {
        self == PaymentStatus::Authorized
            && matches!(outcome, PaymentStatus::Executed | PaymentStatus::Failed)
    }
}

/// Where the money goes. The kind of recipient decides the tool, and so the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Recipient {
    Evm(String),
    Url(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("recipient must be an EVM address (0x and 40 hex digits) or an http(s) URL")]
    BadRecipient,
    #[error("description is limited to {MAX_DESCRIPTION_CHARS} characters")]
    DescriptionTooLong,
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error(
        "edited_args must be an object with only amount, currency, recipient and description: {0}"
    )]
    BadEdit(String),
    #[error("an edit cannot change the kind of recipient, and so the tool")]
    EditChangesTool,
    #[error("an approver's edit cannot raise the USD value above the requested {requested}")]
    EditRaisesValue { requested: Decimal },
    #[error("a swap is approved or rejected as quoted, never edited: ask the agent for another")]
    SwapEdited,
    #[error("a swap pays an exchange's router, an EVM address, and says what it buys: {0}")]
    BadSwap(String),
}

pub const MAX_DESCRIPTION_CHARS: usize = 500;
const MAX_URL_LEN: usize = 2048;

/// Who a stored recipient pays, as [`Recipient::payee`] says (the recipient as is, should it not parse).
pub fn payee_of(recipient: &str) -> String {
    Recipient::parse(recipient).map_or_else(|_| recipient.to_owned(), |r| r.payee())
}

impl Recipient {
    pub fn parse(s: &str) -> Result<Self, PaymentError> {
        if let Some(hex) = s.strip_prefix("0x") {
            if hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Recipient::Evm(s.to_owned()));
            }
            return Err(PaymentError::BadRecipient);
        }
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .ok_or(PaymentError::BadRecipient)?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let printable = s.bytes().all(|b| b.is_ascii_graphic());
        if host.is_empty() || host.contains('@') || !printable || s.len() > MAX_URL_LEN {
            return Err(PaymentError::BadRecipient);
        }
        Ok(Recipient::Url(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Evm(s) | Recipient::Url(s) => s,
        }
    }

    /// Who is paid, the same however it is spelled: a lower-case address, or an x402 service's scheme and host.
    pub fn payee(&self) -> String {
        match self {
            Recipient::Evm(s) => s.to_ascii_lowercase(),
            Recipient::Url(s) => {
                let (scheme, rest) = s.split_once("://").unwrap_or(("", s));
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                format!("{scheme}://{host}").to_ascii_lowercase()
            }
        }
    }

    /// The tool that moves money to this recipient.
    pub fn tool(&self) -> PaymentTool {
        match self {
            Recipient::Evm(_) => PaymentTool::Transfer,
            Recipient::Url(_) => PaymentTool::X402Payment,
        }
    }
}

/// A validated request to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIntent {
    pub money: Money,
    pub recipient: Recipient,
    pub description: Option<String>,
    /// For a swap: what it buys and the least it may give. The recipient is then the exchange's router.
    pub swap: Option<SwapTerms>,
}

impl PaymentIntent {
    /// The payment as the circuit breaker tells identical payments apart.
    pub fn paying(&self) -> crate::velocity::Paying<'_> {
        crate::velocity::Paying {
            recipient: self.recipient.as_str(),
            amount: self.money.amount,
            currency: &self.money.currency,
        }
    }

    pub fn new(
        prices: &PriceTable,
        amount: &str,
        currency: &str,
        recipient: &str,
        description: Option<String>,
    ) -> Result<Self, PaymentError> {
        let money = prices.money(amount, currency)?;
        let recipient = Recipient::parse(recipient)?;
        if description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
        {
            return Err(PaymentError::DescriptionTooLong);
        }
        Ok(PaymentIntent {
            money,
            recipient,
            description,
            swap: None,
        })
    }

    /// This payment as a swap on `terms`, into the router it pays.
    pub fn swapping(mut self, terms: SwapTerms) -> Result<Self, PaymentError> {
        if !matches!(self.recipient, Recipient::Evm(_)) {
            return Err(PaymentError::BadSwap("the router is no address".into()));
        }
        terms.check().map_err(PaymentError::BadSwap)?;
        self.swap = Some(terms);
        Ok(self)
    }

    pub fn tool(&self) -> PaymentTool {
        match self.swap {
            Some(_) => PaymentTool::Swap,
            None => self.recipient.tool(),
        }
    }

    /// The payment at the price a resource asks, this intent's amount being the most the agent would pay; or,
    /// in words, why that price cannot be paid.
    pub fn at_price(&self, price: Decimal) -> Result<PaymentIntent, String> {
        let (max, currency) = (self.money.amount, &self.money.currency);
        if price <= Decimal::ZERO {
            return Err(format!(
                "{} asks {price} {currency}: not a price that can be paid",
                self.recipient.as_str()
            ));
        }
        if price > max {
            return Err(format!(
                "{} asks {} {currency}, above the agent's maximum of {max} {currency}: nothing was signed",
                self.recipient.as_str(),
                price.normalize()
            ));
        }
        let mut priced = self.clone();
        priced.money.amount = price;
        Ok(priced)
    }

    /// The tool arguments as stored on an approval request and shown to people.
    pub fn args(&self) -> Value {
        let mut args = json!({
            "amount": self.money.amount.to_string(),
            "currency": self.money.currency,
            "recipient": self.recipient.as_str(),
            "description": self.description,
        });
        if let Some(terms) = &self.swap {
            args["swap"] = serde_json::to_value(terms).expect("terms serialize");
        }
        args
    }

    /// Rebuilds an intent from stored [`PaymentIntent::args`].
    pub fn from_args(prices: &PriceTable, args: &Value) -> Result<Self, PaymentError> {
        let text = |k: &str| args.get(k).and_then(Value::as_str);
        let intent = PaymentIntent::new(
            prices,
            text("amount").unwrap_or(""),
            text("currency").unwrap_or(""),
            text("recipient").unwrap_or(""),
            text("description").map(str::to_owned),
        )?;
        match args.get("swap") {
            None | Some(Value::Null) => Ok(intent),
            Some(terms) => intent.swapping(
                serde_json::from_value(terms.clone())
                    .map_err(|e| PaymentError::BadSwap(e.to_string()))?,
            ),
        }
    }

    /// Applies an approver's `edits` over this intent and validates the result from scratch.
    pub fn edited(&self, prices: &PriceTable, edits: &Value) -> Result<Self, PaymentError> {
        let obj = edits
            .as_object()
            .ok_or_else(|| PaymentError::BadEdit("not an object".into()))?;
        if self.swap.is_some() {
            return Err(PaymentError::SwapEdited);
        }
        if obj.is_empty() {
            return Err(PaymentError::BadEdit("nothing to change".into()));
        }
        let mut args = self.args();
        for (k, v) in obj {
            let ok_type = match k.as_str() {
                "amount" | "currency" | "recipient" => v.is_string(),
                "description" => v.is_string() || v.is_null(),
                other => return Err(PaymentError::BadEdit(format!("unknown field {other:?}"))),
            };
            if !ok_type {
                return Err(PaymentError::BadEdit(format!("{k} must be a string")));
            }
            args[k] = v.clone();
        }
        let edited = PaymentIntent::from_args(prices, &args)?;
        if edited.tool() != self.tool() {
            return Err(PaymentError::EditChangesTool);
        }
        Ok(edited)
    }
}

/// An approver may lower or redirect a payment, but only an admin may raise its USD value: the person who
/// approves should not be able to approve more than was asked for.
pub fn check_edit_authority(
    role: Role,
    requested_usd: Decimal,
    edited_usd: Decimal,
) -> Result<(), PaymentError> {
    if role != Role::Admin && edited_usd > requested_usd {
        return Err(PaymentError::EditRaisesValue {
            requested: requested_usd,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "0x1111111111111111111111111111111111111111";

    fn intent(amount: &str, recipient: &str) -> PaymentIntent {
        PaymentIntent::new(&PriceTable::default(), amount, "USDC", recipient, None).unwrap()
    }

    #[test]
    fn recipients_pick_the_tool() {
        assert_eq!(
            Recipient::parse(ADDR).unwrap().tool(),
            PaymentTool::Transfer
        );
        assert_eq!(
            Recipient::parse("https://api.example/data?q=1")
                .unwrap()
                .tool(),
            PaymentTool::X402Payment
        );
        for bad in [
            "0x123",
            "0xZZ11111111111111111111111111111111111111",
            "ftp://x",
            "https://",
            "https:// x",
            "https://user@evil/",
            "vitalik.eth",
            "",
        ] {
            assert_eq!(
                Recipient::parse(bad),
                Err(PaymentError::BadRecipient),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_maximum_pays_the_asked_price_and_nothing_above_it() {
        let max = intent("0.10", "https://api.example/data");
        let priced = max.at_price("0.05".parse().unwrap()).unwrap();
        assert_eq!(priced.money.amount.to_string(), "0.05");
        assert_eq!(priced.recipient, max.recipient);
        assert_eq!(max.at_price("0.10".parse().unwrap()).unwrap(), max);
        let above = max.at_price("0.100001".parse().unwrap()).unwrap_err();
        assert_eq!(
            above,
            "https://api.example/data asks 0.100001 USDC, above the agent's maximum of 0.10 USDC: nothing was signed"
        );
        assert!(max.at_price(Decimal::ZERO).is_err());
    }

    #[test]
    fn args_round_trip() {
        let i = intent("15.00", ADDR);
        let back = PaymentIntent::from_args(&PriceTable::default(), &i.args()).unwrap();
        assert_eq!(back, i);
        assert_eq!(i.args()["amount"], "15.00");
    }

    #[test]
    fn edits_are_revalidated_from_scratch() {
        let prices = PriceTable::default();
        let i = intent("15.00", ADDR);
        let lower = i.edited(&prices, &json!({"amount": "5"})).unwrap();
        assert_eq!(lower.money.amount.to_string(), "5");
        assert_eq!(lower.recipient, i.recipient);
        assert!(matches!(
            i.edited(&prices, &json!({"amount": "-5"})),
            Err(PaymentError::Money(MoneyError::NotPositive))
        ));
        assert!(matches!(
            i.edited(&prices, &json!({"amount": 5})),
            Err(PaymentError::BadEdit(_))
        ));
        assert!(matches!(
            i.edited(&prices, &json!({"fee": "1"})),
            Err(PaymentError::BadEdit(_))
        ));
        assert!(matches!(
            i.edited(&prices, &json!({})),
            Err(PaymentError::BadEdit(_))
        ));
        assert!(matches!(
            i.edited(&prices, &json!("5")),
            Err(PaymentError::BadEdit(_))
        ));
        assert_eq!(
            i.edited(&prices, &json!({"recipient": "https://x.example/"})),
            Err(PaymentError::EditChangesTool)
        );
        assert!(matches!(
            i.edited(&prices, &json!({"currency": "DOGE"})),
            Err(PaymentError::Money(MoneyError::UnknownCurrency(_)))
        ));
    }

    #[test]
    fn a_swap_round_trips_as_its_terms_and_is_never_edited() {
        let prices = PriceTable::default();
        let terms = SwapTerms {
            dex: "vvs".into(),
            to: "CRO".into(),
            expected_out: "120.5".parse().unwrap(),
            min_out: "119.9".parse().unwrap(),
            price_impact_bps: 12,
            max_slippage_bps: 50,
        };
        let swap = intent("10", ADDR).swapping(terms.clone()).unwrap();
        assert_eq!(swap.tool(), PaymentTool::Swap);
        assert_eq!(swap.args()["swap"]["min_out"], "119.9");
        assert_eq!(
            PaymentIntent::from_args(&prices, &swap.args()).unwrap(),
            swap
        );
        assert_eq!(
            swap.edited(&prices, &json!({"amount": "5"})),
            Err(PaymentError::SwapEdited)
        );
        let mut bad = swap.args();
        bad["swap"]["min_out"] = json!(1.5);
        assert!(matches!(
            PaymentIntent::from_args(&prices, &bad),
            Err(PaymentError::BadSwap(_))
        ));
        let url = intent("1", "https://x.example/").swapping(terms.clone());
        assert!(matches!(url, Err(PaymentError::BadSwap(_))));
        for bad in [
            SwapTerms {
                min_out: Decimal::ZERO,
                ..terms.clone()
            },
            SwapTerms {
                min_out: "121".parse().unwrap(),
                ..terms.clone()
            },
            SwapTerms {
                max_slippage_bps: 10_001,
                ..terms.clone()
            },
            SwapTerms {
                to: "weth".into(),
                ..terms.clone()
            },
        ] {
            let refused = intent("10", ADDR).swapping(bad.clone());
            assert!(matches!(refused, Err(PaymentError::BadSwap(_))), "{bad:?}");
        }
    }

    #[test]
    fn only_admins_raise_the_value() {
        let ten = Decimal::TEN;
        let more = Decimal::ONE_HUNDRED;
        assert!(check_edit_authority(Role::Approver, ten, Decimal::ONE).is_ok());
        assert!(check_edit_authority(Role::Approver, ten, ten).is_ok());
        assert!(check_edit_authority(Role::Approver, ten, more).is_err());
        assert!(check_edit_authority(Role::Admin, ten, more).is_ok());
    }

    #[test]
    fn only_authorized_payments_take_outcomes() {
        use PaymentStatus::*;
        assert!(Authorized.can_report(Executed));
        assert!(Authorized.can_report(Failed));
        assert!(!Authorized.can_report(Denied));
        assert!(!Executed.can_report(Failed));
        assert!(!PendingApproval.can_report(Executed));
        for s in [PendingApproval, Authorized, Executed, Denied, Failed] {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
        }
    }
}
