//! Quorums: above a USD value, a request needs several distinct people (optionally from named approver groups)
//! to approve the same action. Pure: the engine records each approval under the tenant's lock and asks here
//! what it comes to.

use crate::money::{Decimal, strict};
use serde::{Deserialize, Serialize};

/// The most quorum rules a policy may set.
pub const MAX_QUORUMS: usize = 8;
/// The most people a quorum may ask for.
pub const MAX_APPROVALS_REQUIRED: u32 = 10;
/// The most groups a key may be in, or a quorum may name.
pub const MAX_GROUPS: usize = 16;

/// Above `above_usd`, `approvals_required` distinct people must approve; members of one of `groups` when any
/// are named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quorum {
    #[serde(deserialize_with = "strict::decimal")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$", example = "1000")]
    pub above_usd: Decimal,
    #[schema(minimum = 1, maximum = 10, example = 2)]
    pub approvals_required: u32,
    /// Approver groups (a key's `groups`) whose members decide such requests; anyone who decides, when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16, value_type = Vec<GroupName>)]
    pub groups: Vec<String>,
}

/// The published shape of a group's name.
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "finance")]
#[allow(dead_code)]
struct GroupName(String);

/// Why a group's name is refused, if it is.
pub fn invalid_group(name: &str) -> Option<String> {
    let fine = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    (!fine).then(|| format!("group {name:?} must be 1 to 64 of a-z, 0-9, - and _"))
}

/// Why a list of groups is refused, if it is.
pub fn invalid_groups(groups: &[String]) -> Option<String> {
    if groups.len() > MAX_GROUPS {
        return Some(format!("at most {MAX_GROUPS} groups"));
    }
    groups.iter().find_map(|g| invalid_group(g))
}

impl Quorum {
    /// Why the rule is refused, if it is (its amount is checked with the policy's other amounts).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if !(1..=MAX_APPROVALS_REQUIRED).contains(&self.approvals_required) {
            let why = format!("must be between 1 and {MAX_APPROVALS_REQUIRED}");
            return Some(("approvals_required", why));
        }
        invalid_groups(&self.groups).map(|why| ("groups", why))
    }
}

/// The quorum for a request worth `usd`: of the rules it is above, the one with the highest `above_usd` (the
/// most people, on a tie).
pub fn quorum_for(quorums: &[Quorum], usd: Decimal) -> Option<&Quorum> {
    quorums
        .iter()
        .filter(|q| usd > q.above_usd)
        .max_by_key(|q| (q.above_usd, q.approvals_required))
}

/// Whether a key in `member_of` may decide a request limited to `groups` (any key, when it names none).
pub fn may_decide(groups: &[String], member_of: &[String]) -> bool {
    groups.is_empty() || groups.iter().any(|g| member_of.contains(g))
}

/// The most steps an escalation chain may have.
pub const MAX_ESCALATION_STEPS: usize = 8;

/// One step of an escalation chain: a request still undecided `after_seconds` after it was filed goes to
/// `group` too (its members are told, and may decide it). Past its deadline it expires, denied, escalated or
/// not: nobody's silence allows anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    #[schema(minimum = 1, maximum = 604800, example = 600)]
    pub after_seconds: u32,
    #[schema(value_type = GroupName)]
    pub group: String,
}

/// Why a chain is refused, if it is: each step later than the one before, and a valid group.
pub fn invalid_chain(chain: &[Escalation]) -> Option<String> {
    if chain.len() > MAX_ESCALATION_STEPS {
        return Some(format!("at most {MAX_ESCALATION_STEPS} steps"));
    }
    let mut last = 0;
    for step in chain {
        if step.after_seconds <= last
            || step.after_seconds > crate::session::MAX_APPROVAL_TIMEOUT_SECONDS
        {
            return Some("after_seconds must grow from step to step, up to 604800".into());
        }
        last = step.after_seconds;
        if let Some(why) = invalid_group(&step.group) {
            return Some(why);
        }
    }
    None
}

/// The steps of `chain` a request that has `timeout_seconds` to be decided can reach: those due before it
/// expires.
pub fn reachable(chain: &[Escalation], timeout_seconds: u32) -> Vec<Escalation> {
    chain
        .iter()
        .filter(|s| s.after_seconds < timeout_seconds)
        .cloned()
        .collect()
}

/// Who decides a request once it reached `step`: its groups and the step's, when it names groups (a request
/// anyone may decide stays so: the step only tells the group).
pub fn widened(groups: &[String], step: &Escalation) -> Vec<String> {
    let mut wider = groups.to_vec();
    if !wider.is_empty() && !wider.contains(&step.group) {
        wider.push(step.group.clone());
    }
    wider
}

/// What the approvals so far on one action come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Enough distinct people approved it: the request is approved.
    Reached,
    /// It waits for `missing` more.
    Short { missing: u32 },
}

/// The tally of `approvals` distinct people's approvals of a request that needs `required`.
pub fn tally(required: u32, approvals: usize) -> Tally {
    let have = u32::try_from(approvals).unwrap_or(u32::MAX);
    match required.checked_sub(have) {
        Some(missing) if missing > 0 => Tally::Short { missing },
        _ => Tally::Reached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(above: i64, required: u32) -> Quorum {
        Quorum {
            above_usd: Decimal::from(above),
            approvals_required: required,
            groups: Vec::new(),
        }
    }

    #[test]
    fn the_highest_rule_below_the_value_applies() {
        let rules = [q(100, 2), q(1000, 3), q(1000, 2)];
        assert_eq!(
            quorum_for(&rules, Decimal::from(100)),
            None,
            "strictly above"
        );
        assert_eq!(quorum_for(&rules, Decimal::from(101)), Some(&rules[0]));
        assert_eq!(quorum_for(&rules, Decimal::from(5000)), Some(&rules[1]));
        assert_eq!(quorum_for(&[], Decimal::from(5000)), None);
    }

    #[test]
    fn a_tally_counts_distinct_approvals() {
        assert_eq!(tally(2, 0), Tally::Short { missing: 2 });
        assert_eq!(tally(2, 1), Tally::Short { missing: 1 });
        assert_eq!(tally(2, 2), Tally::Reached);
        assert_eq!(tally(1, 1), Tally::Reached);
        assert_eq!(tally(2, 3), Tally::Reached);
    }

    #[test]
    fn groups_limit_who_decides() {
        let finance = vec!["finance".to_owned()];
        assert!(may_decide(&[], &[]));
        assert!(may_decide(&finance, &["ops".into(), "finance".into()]));
        assert!(!may_decide(&finance, &["ops".into()]));
        assert!(!may_decide(&finance, &[]));
    }

    fn step(after_seconds: u32, group: &str) -> Escalation {
        Escalation {
            after_seconds,
            group: group.into(),
        }
    }

    #[test]
    fn chains_climb_and_stop_at_the_deadline() {
        let chain = [step(60, "leads"), step(600, "cfo")];
        assert_eq!(invalid_chain(&chain), None);
        assert!(invalid_chain(&[step(60, "a"), step(60, "b")]).is_some());
        assert!(invalid_chain(&[step(0, "a")]).is_some());
        assert!(invalid_chain(&[step(60, "Leads")]).is_some());
        assert_eq!(reachable(&chain, 600), vec![step(60, "leads")]);
        assert_eq!(reachable(&chain, 601).len(), 2);
        let finance = vec!["finance".to_owned()];
        assert_eq!(widened(&finance, &chain[0]), ["finance", "leads"]);
        assert_eq!(widened(&[], &chain[0]), Vec::<String>::new());
        assert_eq!(widened(&["leads".to_owned()], &chain[0]), ["leads"]);
    }

    #[test]
    fn rules_and_names_are_checked() {
        assert_eq!(q(1, 0).invalid().unwrap().0, "approvals_required");
        assert_eq!(q(1, 11).invalid().unwrap().0, "approvals_required");
        assert_eq!(q(1, 2).invalid(), None);
        let bad = Quorum {
            groups: vec!["Finance".into()],
            ..q(1, 2)
        };
        assert_eq!(bad.invalid().unwrap().0, "groups");
        assert!(invalid_group("risk-2_a").is_none());
        assert!(invalid_group("").is_some());
        assert!(invalid_groups(&vec!["a".to_owned(); 17]).is_some());
        let parsed: Quorum =
            serde_json::from_str(r#"{"above_usd": "1000", "approvals_required": 2}"#).unwrap();
        assert!(parsed.groups.is_empty());
        assert!(
            serde_json::from_str::<Quorum>(r#"{"above_usd": 1000, "approvals_required": 2}"#)
                .is_err()
        );
    }
}
