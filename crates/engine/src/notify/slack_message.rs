//! A request's Slack message as it stands: what is asked and why, the budget it would leave, and Approve and
//! Reject buttons while it waits, or who decided it once it is decided.

use super::Facts;
use crate::views::ApprovalView;
use chrono::{DateTime, Utc};
use paygent_domain::{ApprovalStatus, DecisionKind};
use paygent_store::keys::KeyRecord;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The buttons' action ids.
pub(super) const APPROVE: &str = "approve";
pub(super) const REJECT: &str = "reject";

/// The most characters of one piece of text a message quotes (the agent's words, a reason).
const QUOTED_CHARS: usize = 500;

/// Someone who decided, as a message names them.
pub(super) struct Person {
    name: String,
    slack_user: Option<String>,
}

impl From<KeyRecord> for Person {
    fn from(k: KeyRecord) -> Self {
        Person {
            name: k.name,
            slack_user: k.slack_user,
        }
    }
}

impl Person {
    fn mention(&self) -> String {
        match &self.slack_user {
            Some(user) => format!("*{}* (<@{user}>)", quoted(&self.name)),
            None => format!("*{}*", quoted(&self.name)),
        }
    }
}

/// Text from agents and people, made inert for Slack's markup (no mentions, links or formatting of theirs) and
/// cut to a bound.
fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(QUOTED_CHARS).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    cut.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        + more
}

/// A Slack date that each reader sees in their own time zone.
fn when(at: DateTime<Utc>) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} {{time}}|{}>",
        at.timestamp(),
        at.to_rfc3339()
    )
}

/// The `text` (for notifications) and `blocks` of a request's message.
pub(super) fn render(
    view: &ApprovalView,
    tenant_id: Uuid,
    people: &BTreeMap<Uuid, Person>,
) -> Value {
    let facts = Facts::of(view);
    let asked = asked(&facts);
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": asked}}),
        json!({"type": "section", "fields": fields(view, &facts, people)}),
        json!({"type": "context", "elements": [{"type": "mrkdwn",
            "text": format!("request `{}` · action `{}`", view.id, view.digest)}]}),
    ];
    match outcome(view, people) {
        None => blocks.push(buttons(view, tenant_id, &asked)),
        Some(text) => {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}))
        }
    }
    json!({"text": asked, "blocks": blocks})
}

/// "Ops Bot asks to transfer *25 USDC* (about $25) to `0x1111…`": who asks for what.
fn asked(facts: &Facts) -> String {
    facts.headline(quoted, |t| format!("*{t}*"), |t| format!("`{t}`"))
}

/// What a person weighs: the agent's words, why a person is asked, the budget it leaves, the deadline.
fn fields(view: &ApprovalView, facts: &Facts, people: &BTreeMap<Uuid, Person>) -> Vec<Value> {
    let field =
        |title: &str, text: String| json!({"type": "mrkdwn", "text": format!("*{title}*\n{text}")});
    let words = facts.words.as_deref();
    let mut fields = vec![
        field(
            "The agent says",
            words.map_or_else(|| "nothing".into(), quoted),
        ),
        field("Why you are asked", quoted(&facts.reason)),
        field("Budget", quoted(&facts.budget)),
        field("Decide by", when(facts.deadline)),
    ];
    if view.approvals_required > 1 {
        let names: Vec<String> = view
            .approvals
            .iter()
            .filter_map(|v| people.get(&v.by).map(Person::mention))
            .collect();
        let so_far = format!("{} of {}", view.approvals.len(), view.approvals_required);
        fields.push(field("Approvals", format!("{so_far} {}", names.join(", "))));
    }
    fields
}

/// What became of it, once it is decided; `None` while it waits.
fn outcome(view: &ApprovalView, people: &BTreeMap<Uuid, Person>) -> Option<String> {
    let decision = view.decision.as_ref();
    let by = decision
        .and_then(|d| d.by)
        .and_then(|id| people.get(&id))
        .map_or_else(|| "someone".to_owned(), Person::mention);
    let at = decision.map_or_else(String::new, |d| format!(" at {}", when(d.at)));
    let note = decision
        .and_then(|d| d.note.as_deref())
        .map_or_else(String::new, |n| format!(": {}", quoted(n)));
    Some(match view.status {
        ApprovalStatus::Pending => return None,
        ApprovalStatus::Approved => format!(":white_check_mark: Approved by {by}{at}"),
        ApprovalStatus::Edited => format!(":pencil2: Edited and approved by {by}{at}"),
        ApprovalStatus::Rejected => format!(":x: Rejected by {by}{at}{note}"),
        ApprovalStatus::Expired => {
            ":hourglass: Expired: nobody decided in time, so it is denied".to_owned()
        }
        ApprovalStatus::Cancelled => format!(":no_entry_sign: Cancelled{at}{note}"),
    })
}

/// Approve (with a confirmation) and Reject, as the request's rule allows; each names the action it decides.
fn buttons(view: &ApprovalView, tenant_id: Uuid, asked: &str) -> Value {
    let value = format!("{tenant_id}:{}:{}", view.id, view.digest);
    let mut elements = Vec::new();
    if view.allowed_decisions.contains(&DecisionKind::Approve) {
        elements.push(json!({
            "type": "button", "action_id": APPROVE, "style": "primary", "value": value,
            "text": {"type": "plain_text", "text": "Approve"},
            "confirm": {
                "title": {"type": "plain_text", "text": "Approve this payment?"},
                "text": {"type": "mrkdwn", "text": asked},
                "confirm": {"type": "plain_text", "text": "Approve"},
                "deny": {"type": "plain_text", "text": "Cancel"},
            },
        }));
    }
    elements.push(json!({
        "type": "button", "action_id": REJECT, "style": "danger", "value": value,
        "text": {"type": "plain_text", "text": "Reject"},
    }));
    json!({"type": "actions", "elements": elements})
}
