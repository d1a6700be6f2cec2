//! Simulation: replays recorded payments, in the order they were made, against a policy's rules, and tells
//! what the guard would have done with each beside what it did. Pure: the engine pages the payments in.
//!
//! What is replayed: the policy's refusals (payee lists, its maximum), its first-payment rule, its limits, its
//! thresholds as each session tightened them, and its velocity rules, each counted from the window's start (a
//! limit or velocity window reaching back before it starts empty). Not replayed: the sessions' own budgets, stops
//! and freezes, and people's decisions (a payment sent to a person counts as approved).

use crate::judgement::{Findings, Judgement, judge};
use crate::money::Decimal;
use crate::payment::{PaymentStatus, payee_of};
use crate::rules::{NewPayee, PolicyRules};
use crate::session::SessionConfig;
use crate::velocity::{
    MAX_WINDOW_SECONDS, Seen, Totals, identical_key, scope_key, tripped, window_start,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use uuid::Uuid;

/// The most differences a report lists (it counts them all).
pub const MAX_DIFFERENCES: usize = 100;

/// What the guard did, or would do, with a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    RequireApproval,
    Deny,
}

impl Outcome {
    /// What the guard did with a payment now in `status`: a payment that went to a person did so whatever they
    /// decided; a failed one was allowed (its rail failed after).
    pub fn of(status: PaymentStatus, asked_a_person: bool) -> Outcome {
        match (asked_a_person, status) {
            (true, _) => Outcome::RequireApproval,
            (false, PaymentStatus::Denied) => Outcome::Deny,
            (false, _) => Outcome::Allow,
        }
    }
}

/// A recorded payment, as the replay needs it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub session_id: Uuid,
    /// The session's creator: the key whose limits it books on.
    pub owner: Uuid,
    /// The key that asked: the scope of `agent` velocity rules.
    pub asker: Uuid,
    pub tool: String,
    pub amount: Decimal,
    pub currency: String,
    pub usd: Decimal,
    pub recipient: String,
    pub happened: Outcome,
}

/// A payment the policy would have treated otherwise than it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Difference {
    pub payment_id: Uuid,
    pub happened: Outcome,
    pub would: Outcome,
    /// Why, in the guard's words; absent when the payment would go at once.
    pub reason: Option<String>,
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub replayed: u64,
    /// How many the policy would have allowed, sent to a person, or denied.
    pub allow: u64,
    pub require_approval: u64,
    pub deny: u64,
    /// How many it would have treated otherwise than they were.
    pub differing: u64,
    /// The first of them (at most 100).
    pub differences: Vec<Difference>,
}

/// A replay in progress: the usage and history it built up so far.
pub struct Replay<'a> {
    rules: &'a PolicyRules,
    /// Booked per (key, period bucket, ledger), for limits.
    usage: HashMap<(Uuid, String, String), Decimal>,
    /// Counted payments (time, USD) per velocity scope.
    counted: HashMap<String, VecDeque<(DateTime<Utc>, Decimal)>>,
    /// (key, payee) pairs paid so far, for the first-payment rule.
    paid: HashSet<(Uuid, String)>,
    report: Report,
}

impl<'a> Replay<'a> {
    pub fn new(rules: &'a PolicyRules) -> Self {
        Replay {
            rules,
            usage: HashMap::new(),
            counted: HashMap::new(),
            paid: HashSet::new(),
            report: Report::default(),
        }
    }

    /// Replays the next payment, made in a session configured as `config`.
    pub fn replay(&mut self, p: &Recorded, config: &SessionConfig) {
        let judgement = judge(self.findings(p, config));
        let (would, reason) = match &judgement {
            Judgement::Allow => (Outcome::Allow, None),
            Judgement::Approve { reason, .. } => (Outcome::RequireApproval, Some(reason.clone())),
            Judgement::Deny { detail, .. } => (Outcome::Deny, Some(detail.clone())),
            Judgement::Trip(trip) => (
                Outcome::Deny,
                Some(format!("{}: {}", trip.name(), trip.detail)),
            ),
            Judgement::Standing(_) => (Outcome::Allow, None),
        };
        if would != Outcome::Deny {
            self.book(p);
        }
        let r = &mut self.report;
        r.replayed += 1;
        *match would {
            Outcome::Allow => &mut r.allow,
            Outcome::RequireApproval => &mut r.require_approval,
            Outcome::Deny => &mut r.deny,
        } += 1;
        if would != p.happened {
            r.differing += 1;
            if r.differences.len() < MAX_DIFFERENCES {
                r.differences.push(Difference {
                    payment_id: p.id,
                    happened: p.happened,
                    would,
                    reason,
                });
            }
        }
    }

    pub fn finish(self) -> Report {
        self.report
    }

    fn findings(&self, p: &Recorded, config: &SessionConfig) -> Findings {
        let rules = self.rules;
        let args = json!({"recipient": p.recipient, "amount": p.amount.to_string(), "currency": p.currency});
        let tools = rules.for_session(config);
        let used = |bucket: &str, ledger: &str| {
            let key = (p.owner, bucket.to_owned(), ledger.to_owned());
            self.usage.get(&key).copied().unwrap_or_default()
        };
        let over_limit = rules.over_limit(p.at, &p.currency, p.amount, p.usd, used);
        let mut verdict = tools.evaluate(&p.tool, p.usd, &args);
        let first = rules.payees.new_payee != NewPayee::Allow
            && !self.paid.contains(&(p.owner, payee_of(&p.recipient)));
        let refusal = rules.refusal(p.usd, &args).or_else(|| {
            (first && rules.payees.new_payee == NewPayee::Deny).then(|| crate::rules::Refusal {
                rule: "payees.new_payee",
                detail: format!("the first payment to {} is denied", p.recipient),
            })
        });
        if first && verdict == crate::policy::Verdict::Allow {
            let reason = format!("the first payment to {} needs a person", p.recipient);
            verdict = crate::policy::Verdict::RequireApproval {
                reason,
                allowed: Vec::new(),
            };
        }
        Findings {
            stopped: None,
            frozen: None,
            refusal,
            over_limit: over_limit.map(|detail| (detail, rules.over_limit)),
            over_budget: None,
            verdict,
            allowed: Vec::new(),
            tripped: tripped(&rules.velocity, &self.seen(p), p.usd),
            standing: None,
        }
    }

    /// What each velocity rule sees of the payments replayed before `p`.
    fn seen(&self, p: &Recorded) -> Vec<Seen> {
        let totals = |scope: &str, per: u32| {
            let start = window_start(p.at, per, DateTime::<Utc>::MIN_UTC);
            let inside = self.counted.get(scope).into_iter().flatten();
            inside
                .filter(|(at, _)| *at >= start)
                .fold(Totals::default(), |t, (_, usd)| Totals {
                    payments: t.payments + 1,
                    usd: t.usd + usd,
                })
        };
        self.rules
            .velocity
            .iter()
            .map(|rule| {
                let base = scope_key(rule.scope, p.session_id, p.asker);
                let same = identical_key(&base, &p.recipient, p.amount, &p.currency);
                Seen {
                    all: totals(&base, rule.per_seconds),
                    identical: totals(&same, rule.per_seconds),
                }
            })
            .collect()
    }

    /// Books a payment the policy lets through (at once, or to a person, as if approved): on its limits, its
    /// velocity scopes, and its payee as paid.
    fn book(&mut self, p: &Recorded) {
        for limit in &self.rules.limits {
            let ledger = match (&limit.usd, &limit.currency) {
                (Some(_), _) => (crate::budget::USD_TOTAL.to_owned(), p.usd),
                (None, Some(c)) if *c == p.currency => (c.clone(), p.amount),
                _ => continue,
            };
            let key = (p.owner, limit.period.bucket(p.at), ledger.0);
            *self.usage.entry(key).or_default() += ledger.1;
        }
        let scopes: HashSet<String> = self
            .rules
            .velocity
            .iter()
            .flat_map(|rule| {
                let base = scope_key(rule.scope, p.session_id, p.asker);
                let same = identical_key(&base, &p.recipient, p.amount, &p.currency);
                [base, same]
            })
            .collect();
        let oldest = window_start(p.at, MAX_WINDOW_SECONDS, DateTime::<Utc>::MIN_UTC);
        for scope in scopes {
            let marks = self.counted.entry(scope).or_default();
            while marks.front().is_some_and(|(at, _)| *at < oldest) {
                marks.pop_front();
            }
            marks.push_back((p.at, p.usd));
        }
        self.paid.insert((p.owner, payee_of(&p.recipient)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TRANSFER;

    const A: &str = "0x00000000000000000000000000000000000000a0";
    const B: &str = "0x00000000000000000000000000000000000000b0";

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn paid(n: u128, seconds: i64, usd: &str, to: &str, happened: Outcome) -> Recorded {
        Recorded {
            id: Uuid::from_u128(n),
            at: DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap(),
            session_id: Uuid::from_u128(1000),
            owner: Uuid::from_u128(2000),
            asker: Uuid::from_u128(2000),
            tool: TRANSFER.into(),
            amount: d(usd),
            currency: "USDC".into(),
            usd: d(usd),
            recipient: to.into(),
            happened,
        }
    }

    fn run(rules: &PolicyRules, history: &[Recorded]) -> Report {
        let mut replay = Replay::new(rules);
        for p in history {
            replay.replay(p, &SessionConfig::default());
        }
        replay.finish()
    }

    #[test]
    fn the_defaults_replay_what_happened() {
        use Outcome::*;
        let history = [
            paid(1, 0, "5", A, Allow),
            paid(2, 1, "25", A, RequireApproval),
            paid(3, 2, "10", B, Allow),
        ];
        let r = run(&PolicyRules::default(), &history);
        assert_eq!(
            (r.replayed, r.allow, r.require_approval, r.deny),
            (3, 2, 1, 0)
        );
        assert_eq!(r.differing, 0);
    }

    #[test]
    fn a_stricter_policy_names_each_payment_it_would_treat_otherwise() {
        use Outcome::*;
        let rules: PolicyRules = serde_json::from_value(json!({
            "approval_threshold_usd": "8",
            "payees": {"deny": [B]},
            "limits": [{"period": "day", "usd": "30"}],
            "velocity": [{"per_seconds": 60, "max_identical": 2}],
        }))
        .unwrap();
        let history = [
            paid(1, 0, "5", A, Allow),
            paid(2, 1, "9", A, Allow),
            paid(3, 2, "5", A, Allow),
            paid(4, 3, "5", A, Allow),
            paid(5, 4, "1", B, Allow),
            paid(6, 5, "12", A, Allow),
        ];
        let r = run(&rules, &history);
        // 1 goes; 2 is above $8; 3 goes; 4 is a third identical payment; 5 pays a denied payee; 6 is over the day's
        // $30 (5 + 9 + 5 booked).
        assert_eq!((r.allow, r.require_approval, r.deny), (2, 1, 3));
        let differ: Vec<(u128, Outcome)> = r
            .differences
            .iter()
            .map(|d| (d.payment_id.as_u128(), d.would))
            .collect();
        assert_eq!(
            differ,
            [(2, RequireApproval), (4, Deny), (5, Deny), (6, Deny)]
        );
        assert_eq!(r.differing, 4);
        let why = r.differences[1].reason.clone().unwrap_or_default();
        assert!(why.contains("identical"), "{why}");
    }

    #[test]
    fn first_payments_count_within_the_replay() {
        use Outcome::*;
        let rules: PolicyRules =
            serde_json::from_value(json!({"payees": {"new_payee": "approve"}})).unwrap();
        let history = [
            paid(1, 0, "1", A, Allow),
            paid(2, 1, "1", A, Allow),
            paid(3, 2, "1", B, Allow),
        ];
        let r = run(&rules, &history);
        assert_eq!((r.allow, r.require_approval), (1, 2), "{r:?}");
    }
}
