//! The circuit breaker: a policy's velocity rules bound how fast an agent may pay (how many payments, how many
//! dollars, how many identical payments within a window). A payment that would break one trips the breaker: it
//! is denied and its session is frozen until a person looks. Pure: the engine reads the window's payments under
//! the tenant's lock, so concurrent requests cannot all slip under a rule.

use crate::money::{Decimal, strict};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The longest window a rule may have: a day.
pub const MAX_WINDOW_SECONDS: u32 = 86_400;
/// The most payments the breaker reads for one check. A window that holds more than this trips any rule whose
/// window reaches past what was read: a count it cannot finish is not a count under the limit.
pub const MAX_COUNTED: usize = 10_000;
/// The most velocity rules a policy may set.
pub const MAX_VELOCITY_RULES: usize = 8;

/// Whose payments a rule counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VelocityScope {
    /// The session's payments.
    #[default]
    Session,
    /// The asking key's payments, across all of its sessions.
    Agent,
}

/// At most so many payments, dollars or identical payments (same payee, amount and currency) within
/// `per_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Velocity {
    #[schema(minimum = 1, maximum = 86400, example = 60)]
    pub per_seconds: u32,
    #[serde(default)]
    pub scope: VelocityScope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000, example = 20)]
    pub max_payments: Option<u32>,
    #[serde(
        default,
        deserialize_with = "strict::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$", example = "50")]
    pub max_usd: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000, example = 3)]
    pub max_identical: Option<u32>,
}

/// A payment as the breaker counts it: those the guard let through or sent to a person (not those it denied).
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub at: DateTime<Utc>,
    pub usd: Decimal,
    pub recipient: String,
    pub amount: Decimal,
    pub currency: String,
}

impl Counted {
    fn same_as(&self, other: &Counted) -> bool {
        self.amount == other.amount
            && self.currency == other.currency
            && self.recipient.eq_ignore_ascii_case(&other.recipient)
    }
}

/// Why a session is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FreezeReason {
    /// A velocity rule tripped.
    CircuitBreaker,
}

/// A frozen session's freeze, kept with the session until a person unfreezes or kills it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Freeze {
    pub reason: FreezeReason,
    /// The rule that tripped, as its place in the policy: `velocity[0]`.
    #[schema(example = "velocity[0]")]
    pub rule: String,
    #[schema(example = "more than 20 payments within 60 s")]
    pub detail: String,
    /// The payment that tripped it, denied.
    pub payment_id: uuid::Uuid,
    /// The key that asked for that payment: it never unfreezes the session.
    pub tripped_by: uuid::Uuid,
    pub at: DateTime<Utc>,
}

/// The payments of one scope within the widest window, newest first, as read.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub payments: Vec<Counted>,
    /// False when the read stopped at [`MAX_COUNTED`] and older payments were left unread.
    pub complete: bool,
}

impl Window {
    /// A window read with a limit of `MAX_COUNTED + 1` rows.
    pub fn read(mut payments: Vec<Counted>) -> Self {
        let complete = payments.len() <= MAX_COUNTED;
        payments.truncate(MAX_COUNTED);
        Window { payments, complete }
    }
}

/// A rule broken: which one (its index in the policy's `velocity`) and how, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub rule: usize,
    pub detail: String,
}

impl Trip {
    /// The rule as a client finds it in the policy: `velocity[0]`.
    pub fn name(&self) -> String {
        format!("velocity[{}]", self.rule)
    }
}

impl Velocity {
    /// The error in this rule, if any, as (field, why).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.per_seconds) {
            return Some((
                "per_seconds",
                format!("must be between 1 and {MAX_WINDOW_SECONDS}"),
            ));
        }
        let most = MAX_COUNTED as u32;
        for (field, v) in [
            ("max_payments", self.max_payments),
            ("max_identical", self.max_identical),
        ] {
            if v.is_some_and(|v| !(1..=most).contains(&v)) {
                return Some((field, format!("must be between 1 and {most}")));
            }
        }
        if self.max_payments.is_none() && self.max_usd.is_none() && self.max_identical.is_none() {
            return Some((
                "max_payments",
                "set max_payments, max_usd or max_identical".into(),
            ));
        }
        None
    }

    /// Why `this` payment, at `now`, would break the rule given the scope's `window`; payments before `since`
    /// (a person unfroze the session then) do not count.
    fn breaks(&self, window: &Window, this: &Counted, since: DateTime<Utc>) -> Option<String> {
        let start = since.max(this.at - Duration::seconds(self.per_seconds.into()));
        let inside: Vec<&Counted> = window.payments.iter().filter(|p| p.at > start).collect();
        let span = format!("{} s", self.per_seconds);
        let oldest_read = window.payments.last().map(|p| p.at);
        if !window.complete && oldest_read.is_some_and(|oldest| oldest > start) {
            return Some(format!(
                "more than {MAX_COUNTED} payments within {span}, more than the breaker counts"
            ));
        }
        if let Some(most) = self.max_payments
            && inside.len() >= most as usize
        {
            return Some(format!("more than {most} payments within {span}"));
        }
        if let Some(most) = self.max_usd {
            let so_far: Decimal = inside.iter().map(|p| p.usd).sum();
            if so_far + this.usd > most {
                return Some(format!(
                    "more than {most} USD within {span} (paid {so_far}, this {})",
                    this.usd
                ));
            }
        }
        let most = self.max_identical?;
        let same = inside.iter().filter(|p| p.same_as(this)).count();
        (same >= most as usize).then(|| {
            format!(
                "more than {most} identical payments ({} {} to {}) within {span}",
                this.amount, this.currency, this.recipient
            )
        })
    }
}

/// The first rule `this` payment would break: `session` and `agent` are the windows of the two scopes (the
/// engine reads only those some rule counts). Pure, and the same for every instance.
pub fn tripped(
    rules: &[Velocity],
    session: &Window,
    agent: &Window,
    this: &Counted,
    since: DateTime<Utc>,
) -> Option<Trip> {
    rules.iter().enumerate().find_map(|(rule, v)| {
        let window = match v.scope {
            VelocityScope::Session => session,
            VelocityScope::Agent => agent,
        };
        v.breaks(window, this, since)
            .map(|detail| Trip { rule, detail })
    })
}

/// The widest window of the rules of one scope, if any rule counts it.
pub fn widest(rules: &[Velocity], scope: VelocityScope) -> Option<u32> {
    rules
        .iter()
        .filter(|v| v.scope == scope)
        .map(|v| v.per_seconds)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn paid(seconds: i64, usd: &str, to: &str) -> Counted {
        Counted {
            at: at(seconds),
            usd: d(usd),
            recipient: to.into(),
            amount: d(usd),
            currency: "USDC".into(),
        }
    }

    fn rule(per_seconds: u32) -> Velocity {
        Velocity {
            per_seconds,
            scope: VelocityScope::Session,
            max_payments: None,
            max_usd: None,
            max_identical: None,
        }
    }

    /// `n` payments of `usd` to `to`, one a second, newest first, the newest at `newest`.
    fn history(n: i64, newest: i64, usd: &str, to: &str) -> Window {
        Window::read((0..n).map(|i| paid(newest - i, usd, to)).collect())
    }

    fn trips(v: &Velocity, window: &Window, this: &Counted) -> Option<String> {
        tripped(
            std::slice::from_ref(v),
            window,
            &Window::default(),
            this,
            at(-100_000),
        )
        .map(|t| t.detail)
    }

    #[test]
    fn a_count_lets_through_exactly_its_number_within_the_window() {
        let v = Velocity {
            max_payments: Some(3),
            ..rule(60)
        };
        let this = paid(100, "1", "a");
        assert_eq!(trips(&v, &history(2, 99, "1", "b"), &this), None);
        let third = trips(&v, &history(3, 99, "1", "b"), &this).unwrap();
        assert!(
            third.contains("more than 3 payments within 60 s"),
            "{third}"
        );
        // Payments that fell out of the window no longer count: the oldest of these is 60 s old.
        assert_eq!(trips(&v, &history(3, 41, "1", "b"), &this), None);
    }

    #[test]
    fn dollars_count_exactly_up_to_the_cap() {
        let v = Velocity {
            max_usd: Some(d("10")),
            ..rule(60)
        };
        let window = history(3, 99, "3", "b");
        assert_eq!(trips(&v, &window, &paid(100, "1", "a")), None);
        let over = trips(&v, &window, &paid(100, "1.000001", "a")).unwrap();
        assert!(over.contains("paid 9, this 1.000001"), "{over}");
    }

    #[test]
    fn identical_payments_are_same_payee_amount_and_currency() {
        let v = Velocity {
            max_identical: Some(2),
            ..rule(60)
        };
        let to = "0x00000000000000000000000000000000000000AA";
        let window = Window::read(vec![
            paid(99, "2.50", &to.to_lowercase()),
            paid(98, "2.5", to),
            paid(97, "9", to),
        ]);
        let looped = trips(&v, &window, &paid(100, "2.5", to)).unwrap();
        assert!(looped.contains("identical"), "{looped}");
        assert_eq!(trips(&v, &window, &paid(100, "9", to)), None);
        let mut other_currency = paid(100, "2.5", to);
        other_currency.currency = "EURC".into();
        assert_eq!(trips(&v, &window, &other_currency), None);
    }

    #[test]
    fn an_unfreeze_starts_the_count_again() {
        let v = Velocity {
            max_payments: Some(2),
            ..rule(3600)
        };
        let window = history(5, 99, "1", "b");
        let this = paid(100, "1", "a");
        let none = Window::default();
        let rules = std::slice::from_ref(&v);
        assert!(tripped(rules, &window, &none, &this, at(0)).is_some());
        assert_eq!(tripped(rules, &window, &none, &this, at(98)), None);
    }

    #[test]
    fn each_rule_counts_its_own_scope() {
        let agent_rule = Velocity {
            scope: VelocityScope::Agent,
            max_payments: Some(1),
            ..rule(60)
        };
        let busy = history(1, 99, "1", "b");
        let this = paid(100, "1", "a");
        let none = Window::default();
        let rules = [rule(60), agent_rule];
        assert_eq!(tripped(&rules, &busy, &none, &this, at(0)), None);
        let trip = tripped(&rules, &none, &busy, &this, at(0)).unwrap();
        assert_eq!(trip.rule, 1);
        assert_eq!(widest(&rules, VelocityScope::Agent), Some(60));
        assert_eq!(widest(&[], VelocityScope::Session), None);
    }

    #[test]
    fn a_window_too_full_to_count_trips() {
        let v = Velocity {
            max_usd: Some(d("1000000")),
            ..rule(60)
        };
        let full = Window::read(
            (0..=MAX_COUNTED as i64)
                .map(|_| paid(99, "0", "b"))
                .collect(),
        );
        assert!(!full.complete);
        let detail = trips(&v, &full, &paid(100, "0", "a")).unwrap();
        assert!(detail.contains("more than the breaker counts"), "{detail}");
        // The same payments, all of them read: nothing broken.
        let read = Window::read(
            (0..MAX_COUNTED as i64)
                .map(|_| paid(99, "0", "b"))
                .collect(),
        );
        assert_eq!(trips(&v, &read, &paid(100, "0", "a")), None);
    }

    #[test]
    fn rules_are_checked_for_sense() {
        assert_eq!(rule(60).invalid().unwrap().0, "max_payments");
        let zero = Velocity {
            max_payments: Some(0),
            ..rule(60)
        };
        assert_eq!(zero.invalid().unwrap().0, "max_payments");
        let long = Velocity {
            max_identical: Some(3),
            ..rule(MAX_WINDOW_SECONDS + 1)
        };
        assert_eq!(long.invalid().unwrap().0, "per_seconds");
        let fine = Velocity {
            max_identical: Some(3),
            ..rule(MAX_WINDOW_SECONDS)
        };
        assert_eq!(fine.invalid(), None);
        let parsed: Velocity =
            serde_json::from_str(r#"{"per_seconds": 60, "max_usd": "50"}"#).unwrap();
        assert_eq!(parsed.scope, VelocityScope::Session);
        assert!(serde_json::from_str::<Velocity>(r#"{"per_seconds": 60, "max_usd": 50}"#).is_err());
    }
}
