//! Paygent's domain: the rules that decide whether money moves, free of I/O so they can be tested exhaustively.

/// One way to name a domain word: `as_str` gives its stored and published name, `parse` reads it back, and
/// `ALL` lists every one.
macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub const ALL: &'static [Self] = &[$(Self::$v),*];

            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
    };
}

pub mod action;
pub mod approval;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod canonical;
pub mod command;
pub mod event;
pub mod execution;
pub mod judgement;
pub mod money;
pub mod narrative;
pub mod payees;
pub mod payment;
pub mod policy;
pub mod prices;
pub mod quorum;
pub mod rules;
pub mod session;
pub mod simulation;
pub mod spend;
pub mod standing;
pub mod swap;
pub mod time;
pub mod velocity;

pub use approval::{ApprovalStatus, Decision, DecisionKind};
pub use auth::{Principal, Role};
pub use money::{Decimal, Money, MoneyError};
pub use payment::{PaymentStatus, Recipient};
pub use policy::{Condition, Policy, Rule, Verdict};
pub use prices::{CurrencySpec, PriceTable};
pub use rules::PolicyRules;
pub use session::{SessionConfig, SessionState};
