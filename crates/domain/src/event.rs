//! The kinds of event the live channel carries (CONTRACT.md, "WebSocket"): one name each, here and nowhere else.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ApprovalRequired,
    /// A request still pending changed: an approval towards its quorum, or an edit that starts the count again.
    ApprovalUpdated,
    /// A request nobody decided in time went to the next group of its escalation chain.
    ApprovalEscalated,
    Approved,
    Rejected,
    Edited,
    Expired,
    /// A request, an execution or a session's pending work was cancelled.
    Cancelled,
    ExecutionStarted,
    ExecutionPaused,
    ExecutionResumed,
    ExecutionCompleted,
    ExecutionFailed,
    PaymentExecuted,
    PaymentFailed,
    BudgetExceeded,
    KillSwitch,
    /// The circuit breaker froze a session: its payments are denied and its executions pause until a person
    /// unfreezes or kills it.
    SessionFrozen,
    /// A person unfroze a session.
    SessionUnfrozen,
    /// Admins only: a key stopped working.
    KeyRevoked,
    /// Admins only: a webhook kept failing for a day and was disabled; an admin enables it again.
    WebhookDisabled,
}

names!(EventKind {
    ApprovalRequired => "approval_required",
    ApprovalUpdated => "approval_updated",
    ApprovalEscalated => "approval_escalated",
    Approved => "approved",
    Rejected => "rejected",
    Edited => "edited",
    Expired => "expired",
    Cancelled => "cancelled",
    ExecutionStarted => "execution_started",
    ExecutionPaused => "execution_paused",
    ExecutionResumed => "execution_resumed",
    ExecutionCompleted => "execution_completed",
    ExecutionFailed => "execution_failed",
    PaymentExecuted => "payment_executed",
    PaymentFailed => "payment_failed",
    BudgetExceeded => "budget_exceeded",
    KillSwitch => "kill_switch",
    SessionFrozen => "session_frozen",
    SessionUnfrozen => "session_unfrozen",
    KeyRevoked => "key_revoked",
    WebhookDisabled => "webhook_disabled",
});

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn every_kind_has_one_name_that_reads_back() {
        for &kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str(), "serde and as_str agree");
        }
        assert_eq!(EventKind::ALL.len(), 21);
        assert_eq!(EventKind::parse("payment_made"), None);
    }
}
