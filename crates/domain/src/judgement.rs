//! The guard's decision on one payment, from what was found about it. Pure: the engine gathers the findings
//! under the tenant's lock and records whatever this returns.

use crate::approval::DecisionKind;
use crate::budget::{Exceeded, OnBudgetExceeded};
use crate::policy::Verdict;
use crate::rules::{Refusal, Route};
use crate::velocity::Trip;

/// Why a payment is denied: the `reason` clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The emergency stop is engaged or the session was killed.
    Killed,
    /// The policy refuses it outright (a denied payee, above its maximum).
    PolicyDenied,
    /// Over the session's budget or the policy's limits.
    BudgetExceeded,
    /// A person rejected its approval request.
    Rejected,
    /// Nobody decided its approval request in time.
    Expired,
    /// Its session is frozen, or it tripped the circuit breaker (a velocity rule) and froze it.
    CircuitBreaker,
}

names!(DenyReason {
    Killed => "killed",
    PolicyDenied => "policy_denied",
    BudgetExceeded => "budget_exceeded",
    Rejected => "rejected",
    Expired => "expired",
    CircuitBreaker => "circuit_breaker",
});

/// Everything the guard found about a payment, each check's result.
#[derive(Debug, Clone)]
pub struct Findings {
    /// Why money may not move at all now, if it may not.
    pub stopped: Option<&'static str>,
    /// Why its session is frozen, if it is.
    pub frozen: Option<String>,
    pub refusal: Option<Refusal>,
    /// A policy limit it would break, in words, and where such a payment goes.
    pub over_limit: Option<(String, Route)>,
    /// The session budget it would break, and where such a payment goes.
    pub over_budget: Option<(Exceeded, OnBudgetExceeded)>,
    /// What the per-tool rules say.
    pub verdict: Verdict,
    /// The decisions a person may take on this tool, for a payment sent to one for its budget.
    pub allowed: Vec<DecisionKind>,
    /// The velocity rule it would break, if it would move money or ask a person.
    pub tripped: Option<Trip>,
    /// A standing approval that covers it, when only its tool rules would send it to a person.
    pub standing: Option<uuid::Uuid>,
}

/// A check that found something about a payment: what a dry run reports beside the verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Fired {
    /// `stop`, `frozen`, the policy rule that refuses it (`payees.deny`, `max_per_payment_usd`, `wallets`,
    /// `payees.new_payee`...), `limits`, `budget`, `tool_rules` (a threshold or payee rule sends it to a
    /// person), or the velocity rule it trips (`velocity[0]`).
    #[schema(example = "tool_rules")]
    pub rule: String,
    #[schema(example = "above $10")]
    pub detail: String,
}

impl Findings {
    /// Every check that found something, in the order the guard weighs them; empty when the payment would go at
    /// once.
    pub fn fired(&self) -> Vec<Fired> {
        let mut fired = Vec::new();
        let mut add = |rule: &str, detail: String| {
            fired.push(Fired {
                rule: rule.to_owned(),
                detail,
            })
        };
        if let Some(why) = self.stopped {
            add("stop", why.to_owned());
        }
        if let Some(why) = &self.frozen {
            add("frozen", why.clone());
        }
        if let Some(r) = &self.refusal {
            add(r.rule, r.detail.clone());
        }
        if let Some((detail, _)) = &self.over_limit {
            add("limits", detail.clone());
        }
        if let Some((exceeded, _)) = &self.over_budget {
            add("budget", exceeded.to_string());
        }
        if let Verdict::RequireApproval { reason, .. } = &self.verdict {
            add("tool_rules", reason.clone());
        }
        if let Some(trip) = &self.tripped {
            add(&trip.name(), trip.detail.clone());
        }
        if let Some(id) = self.standing {
            add(
                "standing_approval",
                format!("standing approval {id} covers it"),
            );
        }
        fired
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    Deny {
        reason: DenyReason,
        detail: String,
        /// The policy rule that denied it, if one did.
        rule: Option<&'static str>,
    },
    Approve {
        reason: String,
        allowed: Vec<DecisionKind>,
    },
    Allow,
    /// It would have gone at once or to a person, but it breaks a velocity rule: deny it (`circuit_breaker`) and
    /// freeze its session.
    Trip(Trip),
    /// Its tool rules would send it to a person, but this standing approval, granted by one, covers it: it goes
    /// at once, taken from the standing approval.
    Standing(uuid::Uuid),
}

fn deny(reason: DenyReason, detail: String, rule: Option<&'static str>) -> Judgement {
    Judgement::Deny {
        reason,
        detail,
        rule,
    }
}

/// A stop outranks a freeze, a freeze the policy, the policy's refusals outrank its limits, limits outrank the
/// session's budget, and only then do the per-tool rules decide between a person and at once. A payment that
/// would move money or reach a person and breaks a velocity rule trips the breaker instead.
pub fn judge(mut f: Findings) -> Judgement {
    if let Some(why) = f.stopped {
        return deny(DenyReason::Killed, why.to_owned(), None);
    }
    if let Some(why) = f.frozen.take() {
        return deny(DenyReason::CircuitBreaker, why, Some("velocity"));
    }
    if let Some(r) = f.refusal.take() {
        return deny(DenyReason::PolicyDenied, r.detail, Some(r.rule));
    }
    let tripped = f.tripped.take();
    match (route(f), tripped) {
        (Judgement::Allow | Judgement::Approve { .. } | Judgement::Standing(_), Some(trip)) => {
            Judgement::Trip(trip)
        }
        (judged, _) => judged,
    }
}

/// Past the stops and refusals: the policy's limits, then the session's budget, then the per-tool rules.
fn route(f: Findings) -> Judgement {
    let to_person = |reason: String| Judgement::Approve {
        reason,
        allowed: f.allowed.clone(),
    };
    match (f.over_limit, f.over_budget) {
        (Some((detail, Route::Deny)), _) => {
            deny(DenyReason::BudgetExceeded, detail, Some("limits"))
        }
        (Some((detail, Route::Approve)), _) => to_person(format!("over a limit: {detail}")),
        (None, Some((e, OnBudgetExceeded::Deny))) => {
            deny(DenyReason::BudgetExceeded, e.to_string(), None)
        }
        (None, Some((e, OnBudgetExceeded::RequireApproval))) => {
            to_person(format!("over budget: {e}"))
        }
        (None, None) => match (f.verdict, f.standing) {
            (Verdict::Allow, _) => Judgement::Allow,
            (Verdict::RequireApproval { .. }, Some(id)) => Judgement::Standing(id),
            (Verdict::RequireApproval { reason, allowed }, None) => {
                Judgement::Approve { reason, allowed }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decimal;

    fn clear() -> Findings {
        Findings {
            stopped: None,
            refusal: None,
            over_limit: None,
            over_budget: None,
            verdict: Verdict::Allow,
            allowed: vec![DecisionKind::Approve, DecisionKind::Reject],
            frozen: None,
            tripped: None,
            standing: None,
        }
    }

    fn trip() -> Trip {
        Trip {
            rule: 1,
            detail: "more than 3 payments within 60 s".into(),
        }
    }

    fn refusal() -> Refusal {
        Refusal {
            rule: "payees.deny",
            detail: "denied payee".into(),
        }
    }

    fn reason(j: &Judgement) -> Option<DenyReason> {
        match j {
            Judgement::Deny { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    #[test]
    fn a_dry_run_names_every_check_that_found_something_in_the_guards_order() {
        assert!(clear().fired().is_empty(), "a payment that goes at once");
        let findings = Findings {
            stopped: Some("the session was killed"),
            refusal: Some(refusal()),
            over_limit: Some(("over the week's $50".into(), Route::Approve)),
            over_budget: Some((
                Exceeded::Usd {
                    limit: Decimal::TEN,
                    available: Decimal::ONE,
                    requested: Decimal::TWO,
                },
                OnBudgetExceeded::Deny,
            )),
            verdict: Verdict::RequireApproval {
                reason: "above $10".into(),
                allowed: vec![DecisionKind::Approve],
            },
            frozen: Some("frozen by velocity[0]".into()),
            tripped: Some(trip()),
            ..clear()
        };
        let rules: Vec<String> = findings.fired().into_iter().map(|f| f.rule).collect();
        assert_eq!(
            rules,
            [
                "stop",
                "frozen",
                "payees.deny",
                "limits",
                "budget",
                "tool_rules",
                "velocity[1]"
            ]
        );
        let fired = findings.fired();
        assert_eq!(fired[2].detail, "denied payee");
        assert_eq!(fired[5].detail, "above $10");
    }

    #[test]
    fn the_order_of_checks() {
        assert_eq!(judge(clear()), Judgement::Allow);
        let all = Findings {
            stopped: Some("the emergency stop is engaged"),
            refusal: Some(refusal()),
            over_limit: Some(("weekly".into(), Route::Deny)),
            ..clear()
        };
        assert_eq!(reason(&judge(all.clone())), Some(DenyReason::Killed));
        let policy = Findings {
            stopped: None,
            ..all
        };
        assert_eq!(
            reason(&judge(policy.clone())),
            Some(DenyReason::PolicyDenied)
        );
        let limit = Findings {
            refusal: None,
            ..policy
        };
        assert_eq!(
            reason(&judge(limit.clone())),
            Some(DenyReason::BudgetExceeded)
        );
        let routed = Findings {
            over_limit: Some(("weekly".into(), Route::Approve)),
            ..limit
        };
        assert!(
            matches!(judge(routed), Judgement::Approve { reason, .. } if reason.contains("weekly"))
        );
    }

    /// What a judgement comes to, in one word, for the table below.
    fn outcome(j: Judgement) -> &'static str {
        match j {
            Judgement::Deny { reason, .. } => reason.as_str(),
            Judgement::Approve { .. } => "person",
            Judgement::Allow => "allow",
            Judgement::Trip(_) => "trip",
            Judgement::Standing(_) => "standing",
        }
    }

    /// Every combination of findings, against the order written out once more: a stop, a freeze, then the
    /// policy's refusal, then its limits, then the session budget, then the rules; a payment that would go
    /// ahead or to a person trips a broken velocity rule. Each check that routes to people does so only when
    /// nothing before it denied.
    #[test]
    fn every_combination_follows_the_order() {
        let exceeded = || Exceeded::Usd {
            limit: Decimal::TEN,
            available: Decimal::ONE,
            requested: Decimal::TEN,
        };
        let routes = [None, Some(Route::Deny), Some(Route::Approve)];
        let budgets = [
            None,
            Some(OnBudgetExceeded::Deny),
            Some(OnBudgetExceeded::RequireApproval),
        ];
        let mut cases = 0;
        for (stopped, frozen, refused, tripped) in flags4() {
            for limit in routes {
                for budget in budgets {
                    for rules_ask in [false, true] {
                        let f = Findings {
                            stopped: stopped.then_some("stopped"),
                            frozen: frozen.then(|| "frozen".to_owned()),
                            refusal: refused.then(refusal),
                            over_limit: limit.map(|r| ("weekly".to_owned(), r)),
                            over_budget: budget.map(|on| (exceeded(), on)),
                            verdict: if rules_ask {
                                Verdict::RequireApproval {
                                    reason: "above $10".into(),
                                    allowed: vec![DecisionKind::Approve],
                                }
                            } else {
                                Verdict::Allow
                            },
                            tripped: tripped.then(trip),
                            ..clear()
                        };
                        let expected = if stopped {
                            "killed"
                        } else if frozen {
                            "circuit_breaker"
                        } else if refused {
                            "policy_denied"
                        } else if limit == Some(Route::Deny)
                            || (limit.is_none() && budget == Some(OnBudgetExceeded::Deny))
                        {
                            "budget_exceeded"
                        } else if tripped {
                            "trip"
                        } else if limit.is_some() || budget.is_some() || rules_ask {
                            "person"
                        } else {
                            "allow"
                        };
                        assert_eq!(
                            outcome(judge(f)),
                            expected,
                            "stopped {stopped}, frozen {frozen}, refused {refused}, tripped {tripped}, \
                             limit {limit:?}, budget {budget:?}, rules ask {rules_ask}"
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 288);
    }

    /// Every combination of four flags.
    fn flags4() -> impl Iterator<Item = (bool, bool, bool, bool)> {
        (0..16u8).map(|n| (n & 1 != 0, n & 2 != 0, n & 4 != 0, n & 8 != 0))
    }

    #[test]
    fn rules_decide_only_within_budget() {
        let asks = Findings {
            verdict: Verdict::RequireApproval {
                reason: "above $10".into(),
                allowed: vec![DecisionKind::Approve],
            },
            ..clear()
        };
        assert!(matches!(judge(asks), Judgement::Approve { reason, .. } if reason == "above $10"));
    }
}

#[cfg(test)]
mod standing_tests {
    use super::*;

    #[test]
    fn a_standing_approval_stands_in_only_for_the_tool_rules() {
        let id = uuid::Uuid::nil();
        let asks = || Findings {
            stopped: None,
            frozen: None,
            refusal: None,
            over_limit: None,
            over_budget: None,
            verdict: Verdict::RequireApproval {
                reason: "above $10".into(),
                allowed: vec![DecisionKind::Approve],
            },
            allowed: vec![DecisionKind::Approve],
            tripped: None,
            standing: Some(id),
        };
        assert_eq!(judge(asks()), Judgement::Standing(id));
        let over = Findings {
            over_limit: Some(("weekly".into(), Route::Approve)),
            ..asks()
        };
        assert!(
            matches!(judge(over), Judgement::Approve { .. }),
            "not over a limit"
        );
        let looping = Findings {
            tripped: Some(Trip {
                rule: 0,
                detail: "loop".into(),
            }),
            ..asks()
        };
        assert!(
            matches!(judge(looping), Judgement::Trip(_)),
            "nor past the breaker"
        );
        let at_once = Findings {
            verdict: Verdict::Allow,
            ..asks()
        };
        assert_eq!(
            judge(at_once),
            Judgement::Allow,
            "nor taken when not needed"
        );
    }
}
