//! An audit entry told in words, for people reading the trail: who did what to which payment, for how much, and
//! why, from the entry's own data. Fields an entry lacks are left out of its sentence, never guessed.

use crate::audit::AuditAction as A;
use serde_json::Value;

/// `entry`'s sentence: `actor` is who did it as people know them (a key's name, or "Paygent" for the system).
pub fn in_words(action: A, actor: &str, data: &Value) -> String {
    let said = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let with = |base: String, k: &str, sep: &str| match said(k) {
        Some(v) => format!("{base}{sep}{v}"),
        None => base,
    };
    let name = |what: &str| match said("name") {
        Some(n) => format!("{what} {n}"),
        None => what.to_owned(),
    };
    match action {
        A::TenantCreated => format!("{actor} created the {}", name("tenant")),
        A::KeyCreated => format!(
            "{actor} made the {} key {}",
            said("role").unwrap_or("new"),
            said("name").unwrap_or("")
        ),
        A::KeyRevoked => format!("{actor} revoked a key"),
        A::PolicyCreated => format!("{actor} created the {}", name("policy")),
        A::PolicyChanged => format!("{actor} changed the {}", name("policy")),
        A::WalletAssigned => format!("{actor} gave a wallet to a tenant"),
        A::SessionCreated => format!("{actor} opened the {}", name("session")),
        A::SessionKilled => with(format!("{actor} killed the session"), "reason", ": "),
        A::SessionRevived => format!("{actor} revived the session"),
        A::SessionFrozen => with(
            "The circuit breaker froze the session".into(),
            "detail",
            ": ",
        ),
        A::SessionUnfrozen => format!("{actor} unfroze the session"),
        A::StandingGranted => format!("{actor} let the session go on paying{}", standing(data)),
        A::StandingRevoked => format!("{actor} revoked a standing approval"),
        A::BudgetChanged => format!("{actor} changed the session's budget"),
        A::BudgetExceeded => with(
            format!("{actor} went over budget with {}", payment(data)),
            "reason",
            ": ",
        ),
        A::PaymentAuthorized if data.get("approval_id").is_some() => {
            format!("{actor} was let pay {}, as approved", payment(data))
        }
        A::PaymentAuthorized => format!("{actor} was let pay {}", payment(data)),
        A::PaymentDenied => with(
            format!("{actor} was refused {}", payment(data)),
            "reason",
            ": ",
        ),
        A::PaymentExecuted => with(
            format!("{} was paid", payment_or("The payment", data)),
            "tx_hash",
            ", transaction ",
        ),
        A::PaymentFailed => with(
            format!("{} failed", payment_or("The payment", data)),
            "reason",
            ": ",
        ),
        A::ActionAuthorized => format!(
            "{actor} was let run {}",
            said("tool").unwrap_or("an action")
        ),
        A::ApprovalRequested => with(
            format!("{actor} asked to pay {}", payment(data)),
            "reason",
            ": ",
        ),
        A::ApprovalApproved => with(format!("{actor} approved"), "note", ": "),
        A::ApprovalVoted => with(format!("{actor} approved{}", votes(data)), "note", ": "),
        A::ApprovalEscalated => with("Nobody decided in time: escalated".into(), "group", " to "),
        A::ApprovalEdited => with(
            format!("{actor} edited and approved: {}", payment(data)),
            "note",
            "; ",
        ),
        A::ApprovalRejected => with(format!("{actor} rejected"), "note", ": "),
        A::ApprovalExpired => "Nobody decided before the deadline: expired, denied".into(),
        A::ExecutionStarted => with(format!("{actor} started an execution"), "command", ": "),
        A::ExecutionCompleted => "The execution completed".into(),
        A::ExecutionFailed => with("The execution failed".into(), "reason", ": "),
        A::ExecutionRejected => "The execution stopped: a person rejected a step".into(),
        A::ExecutionExpired => "The execution stopped: a step's approval expired".into(),
        A::ExecutionCancelled => format!("{actor} cancelled the execution"),
        A::KillSwitchEngaged => with(
            format!("{actor} engaged the emergency stop"),
            "reason",
            ": ",
        ),
        A::KillSwitchReleased => format!("{actor} released the emergency stop"),
        A::StopBatch | A::StopSwept => format!("The stop cancelled {}", cancelled(data)),
        A::WebhookCreated => with(format!("{actor} registered a webhook"), "url", " to "),
        A::WebhookDeleted => format!("{actor} removed a webhook"),
        A::WebhookSecretRotated => format!("{actor} rotated a webhook's secret"),
        A::WebhookDisabled => "A webhook failed for a day and was disabled".into(),
        A::WebhookEnabled => format!("{actor} enabled a webhook again"),
    }
}

/// "12.00 USDC to 0x1111…1111 ($12.00)", from an entry's `args` and `usd_value`; as much of it as is there.
fn payment(data: &Value) -> String {
    payment_or("a payment", data)
}

fn payment_or(none: &str, data: &Value) -> String {
    let args = &data["args"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let amount = match (text(&args["amount"]), text(&args["currency"])) {
        (Some(a), Some(c)) => Some(format!("{a} {c}")),
        (Some(a), None) => Some(a),
        _ => None,
    };
    let to = ["recipient", "to", "url"]
        .iter()
        .find_map(|k| text(&args[k]));
    let usd = text(&data["usd_value"]).map(|u| format!("${u}"));
    let mut parts = Vec::new();
    parts.extend(amount);
    parts.extend(to.map(|t| format!("to {}", short_payee(&t))));
    match (parts.is_empty(), usd) {
        (true, Some(usd)) => usd,
        (true, None) => none.to_owned(),
        (false, Some(usd)) if !parts[0].ends_with(" USD") => format!("{} ({usd})", parts.join(" ")),
        (false, _) => parts.join(" "),
    }
}

/// An address by its ends (`0x1111…1111`); anything else as it is.
pub fn short_payee(p: &str) -> String {
    let hex = p.len() == 42 && p.starts_with("0x") && p[2..].bytes().all(|b| b.is_ascii_hexdigit());
    match hex {
        true => format!("{}…{}", &p[..6], &p[38..]),
        false => p.to_owned(),
    }
}

fn standing(data: &Value) -> String {
    let text = |k: &str| {
        data[k]
            .as_str()
            .map(str::to_owned)
            .or_else(|| data[k].as_u64().map(|n| n.to_string()))
    };
    let payee = text("payee")
        .map(|p| format!(" {}", short_payee(&p)))
        .unwrap_or_default();
    let most = text("max_usd")
        .map(|u| format!(" up to ${u}"))
        .unwrap_or_default();
    format!("{payee}{most} without asking")
}

fn votes(data: &Value) -> String {
    match (data["approvals"].as_array(), data["missing"].as_u64()) {
        (Some(so_far), Some(missing)) => {
            format!(" ({} so far, {missing} more needed)", so_far.len())
        }
        _ => String::new(),
    }
}

fn cancelled(data: &Value) -> String {
    let n = data["cancelled"]
        .as_u64()
        .or_else(|| data["cancelled_approvals"].as_u64());
    match n {
        Some(1) => "1 pending request".into(),
        Some(n) => format!("{n} pending requests"),
        None => "pending requests".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_and_its_decisions_read_as_sentences() {
        let asked = json!({"args": {"amount": "12.00", "currency": "USDC", "recipient":
            "0x1111111111111111111111111111111111111111"}, "usd_value": "12.00",
            "reason": "USD value 12.00 exceeds the approval threshold of 10"});
        assert_eq!(
            in_words(A::ApprovalRequested, "Ops Bot", &asked),
            "Ops Bot asked to pay 12.00 USDC to 0x1111…1111 ($12.00): USD value 12.00 exceeds the approval \
             threshold of 10"
        );
        let note = json!({"decision": "reject", "note": "not this one"});
        assert_eq!(
            in_words(A::ApprovalRejected, "Alice", &note),
            "Alice rejected: not this one"
        );
        assert_eq!(
            in_words(A::ApprovalApproved, "Alice", &json!({})),
            "Alice approved"
        );
        let paid =
            json!({"approval_id": "x", "args": {"amount": "5", "url": "https://api.example/data"}});
        assert_eq!(
            in_words(A::PaymentAuthorized, "Ops Bot", &paid),
            "Ops Bot was let pay 5 to https://api.example/data, as approved"
        );
        let votes = json!({"approvals": ["a"], "missing": 1});
        assert_eq!(
            in_words(A::ApprovalVoted, "Bob", &votes),
            "Bob approved (1 so far, 1 more needed)"
        );
        assert_eq!(
            in_words(A::StopBatch, "Paygent", &json!({"cancelled_approvals": 3})),
            "The stop cancelled 3 pending requests"
        );
        assert_eq!(
            in_words(A::PaymentFailed, "Paygent", &json!({})),
            "The payment failed"
        );
    }

    #[test]
    fn every_action_has_a_sentence() {
        for action in A::ALL {
            assert!(
                !in_words(*action, "Alice", &json!({})).is_empty(),
                "{action:?}"
            );
        }
    }
}
