//! The guard's decision on one payment, from what was found about it. Pure: the engine gathers the findings
//! under the tenant's lock and records whatever this returns.

use crate::approval::DecisionKind;
use crate::budget::{Exceeded, OnBudgetExceeded};
use crate::policy::Verdict;
use crate::rules::{Refusal, Route};

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
}

names!(DenyReason {
    Killed => "killed",
    PolicyDenied => "policy_denied",
    BudgetExceeded => "budget_exceeded",
    Rejected => "rejected",
    Expired => "expired",
});

/// Everything the guard found about a payment, each check's result.
#[derive(Debug, Clone)]
pub struct Findings {
    /// Why money may not move at all now, if it may not.
    pub stopped: Option<&'static str>,
    pub refusal: Option<Refusal>,
    /// A policy limit it would break, in words, and where such a payment goes.
    pub over_limit: Option<(String, Route)>,
    /// The session budget it would break, and where such a payment goes.
    pub over_budget: Option<(Exceeded, OnBudgetExceeded)>,
    /// What the per-tool rules say.
    pub verdict: Verdict,
    /// The decisions a person may take on this tool, for a payment sent to one for its budget.
    pub allowed: Vec<DecisionKind>,
}

/// A check that found something about a payment: what a dry run reports beside the verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Fired {
    /// `stop`, the policy rule that refuses it (`payees.deny`, `max_per_payment_usd`, `wallets`,
    /// `payees.new_payee`...), `limits`, `budget`, or `tool_rules` (a threshold or payee rule sends it to a
    /// person).
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
}

/// A stop outranks the policy, the policy's refusals outrank its limits, limits outrank the session's budget, and
/// only then do the per-tool rules decide between a person and at once.
pub fn judge(f: Findings) -> Judgement {
    let deny = |reason, detail, rule| Judgement::Deny {
        reason,
        detail,
        rule,
    };
    if let Some(why) = f.stopped {
        return deny(DenyReason::Killed, why.to_owned(), None);
    }
    if let Some(r) = f.refusal {
        return deny(DenyReason::PolicyDenied, r.detail, Some(r.rule));
    }
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
        (None, None) => match f.verdict {
            Verdict::Allow => Judgement::Allow,
            Verdict::RequireApproval { reason, allowed } => Judgement::Approve { reason, allowed },
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
            ..clear()
        };
        let rules: Vec<String> = findings.fired().into_iter().map(|f| f.rule).collect();
        assert_eq!(
            rules,
            ["stop", "payees.deny", "limits", "budget", "tool_rules"]
        );
        let fired = findings.fired();
        assert_eq!(fired[1].detail, "denied payee");
        assert_eq!(fired[4].detail, "above $10");
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

    /// Every combination of findings, against the order written out once more: a stop, then the policy's
    /// refusal, then its limits, then the session budget, then the rules. Each check that routes to people
    /// does so only when nothing before it denied.
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
        for stopped in [None, Some("stopped")] {
            for refused in [false, true] {
                for limit in routes {
                    for budget in budgets {
                        for rules_ask in [false, true] {
                            let f = Findings {
                                stopped,
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
                                ..clear()
                            };
                            let expected = if stopped.is_some() {
                                Some(Some(DenyReason::Killed))
                            } else if refused {
                                Some(Some(DenyReason::PolicyDenied))
                            } else if limit == Some(Route::Deny)
                                || (limit.is_none() && budget == Some(OnBudgetExceeded::Deny))
                            {
                                Some(Some(DenyReason::BudgetExceeded))
                            } else if limit.is_some() || budget.is_some() || rules_ask {
                                Some(None)
                            } else {
                                None
                            };
                            let got = match judge(f) {
                                Judgement::Deny { reason, .. } => Some(Some(reason)),
                                Judgement::Approve { .. } => Some(None),
                                Judgement::Allow => None,
                            };
                            assert_eq!(
                                got, expected,
                                "stopped {stopped:?}, refused {refused}, limit {limit:?}, budget {budget:?}, \
                                 rules ask {rules_ask}"
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 72);
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
