//! The approval request's state machine. A request is decided once, and an approval is consumed once.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Edited,
    Expired,
    Cancelled,
}

/// The kinds of decision a rule may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Approve,
    Edit,
    Reject,
}

/// A person's decision on a pending request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Approve {
        comment: Option<String>,
        /// Let the session go on paying this payee, within these terms, without asking again.
        standing: Option<crate::standing::StandingTerms>,
    },
    Reject {
        reason: String,
    },
    Edit {
        edited_args: serde_json::Value,
        comment: Option<String>,
    },
}

/// The longest comment or reason kept; longer text is refused, not cut.
pub const MAX_NOTE_CHARS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("the request is already {0}")]
    NotPending(&'static str),
    #[error("this request's rule allows only: {allowed}")]
    NotAllowed { allowed: String },
    #[error("a rejection needs a non-empty reason")]
    MissingReason,
    #[error("comments and reasons are limited to {MAX_NOTE_CHARS} characters")]
    NoteTooLong,
}

impl Decision {
    /// What the person said with it: the comment, or the reason for a rejection.
    pub fn note(&self) -> Option<&str> {
        match self {
            Decision::Approve { comment, .. } | Decision::Edit { comment, .. } => {
                comment.as_deref()
            }
            Decision::Reject { reason } => Some(reason),
        }
    }

    pub fn kind(&self) -> DecisionKind {
        match self {
            Decision::Approve { .. } => DecisionKind::Approve,
            Decision::Reject { .. } => DecisionKind::Reject,
            Decision::Edit { .. } => DecisionKind::Edit,
        }
    }

    /// Checks the decision's own shape and that the request's rule allows it.
    pub fn validate(&self, allowed: &[DecisionKind]) -> Result<(), DecisionError> {
        if let Decision::Reject { reason } = self
            && reason.trim().is_empty()
        {
            return Err(DecisionError::MissingReason);
        }
        if self
            .note()
            .is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS)
        {
            return Err(DecisionError::NoteTooLong);
        }
        if !allowed.contains(&self.kind()) {
            return Err(DecisionError::NotAllowed {
                allowed: allowed
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(" | "),
            });
        }
        Ok(())
    }
}

names!(DecisionKind {
    Approve => "approve",
    Edit => "edit",
    Reject => "reject",
});

impl DecisionKind {
    /// The audit trail's action for this decision.
    pub fn audit_action(self) -> crate::audit::AuditAction {
        use crate::audit::AuditAction;
        match self {
            DecisionKind::Approve => AuditAction::ApprovalApproved,
            DecisionKind::Edit => AuditAction::ApprovalEdited,
            DecisionKind::Reject => AuditAction::ApprovalRejected,
        }
    }

    /// The event that tells live subscribers of this decision.
    pub fn event(self) -> crate::event::EventKind {
        use crate::event::EventKind;
        match self {
            DecisionKind::Approve => EventKind::Approved,
            DecisionKind::Edit => EventKind::Edited,
            DecisionKind::Reject => EventKind::Rejected,
        }
    }

    /// The state a pending request moves to under this decision.
    pub fn outcome(self) -> ApprovalStatus {
        match self {
            DecisionKind::Approve => ApprovalStatus::Approved,
            DecisionKind::Edit => ApprovalStatus::Edited,
            DecisionKind::Reject => ApprovalStatus::Rejected,
        }
    }
}

names!(ApprovalStatus {
    Pending => "pending",
    Approved => "approved",
    Rejected => "rejected",
    Edited => "edited",
    Expired => "expired",
    Cancelled => "cancelled",
});

impl ApprovalStatus {
    /// Approved and edited requests carry a one-time right to execute.
    pub fn is_consumable(self) -> bool {
        matches!(self, ApprovalStatus::Approved | ApprovalStatus::Edited)
    }

    /// The state after `decision`, if this state can still be decided.
    pub fn decide(self, decision: DecisionKind) -> Result<ApprovalStatus, DecisionError> {
        match self {
            ApprovalStatus::Pending => Ok(decision.outcome()),
            other => Err(DecisionError::NotPending(other.as_str())),
        }
    }

    /// Expiry and cancellation end only pending requests; a decided request keeps its decision.
    pub fn end(self, to: ApprovalStatus) -> Result<ApprovalStatus, DecisionError> {
        match (self, to) {
            (ApprovalStatus::Pending, ApprovalStatus::Expired | ApprovalStatus::Cancelled) => {
                Ok(to)
            }
            (other, _) => Err(DecisionError::NotPending(other.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApprovalStatus::*;

    const ALL: [DecisionKind; 3] = [
        DecisionKind::Approve,
        DecisionKind::Edit,
        DecisionKind::Reject,
    ];

    #[test]
    fn only_pending_requests_can_be_decided() {
        assert_eq!(Pending.decide(DecisionKind::Approve), Ok(Approved));
        assert_eq!(Pending.decide(DecisionKind::Reject), Ok(Rejected));
        assert_eq!(Pending.decide(DecisionKind::Edit), Ok(Edited));
        for done in [Approved, Rejected, Edited, Expired, Cancelled] {
            for k in ALL {
                assert_eq!(
                    done.decide(k),
                    Err(DecisionError::NotPending(done.as_str()))
                );
            }
        }
    }

    #[test]
    fn expiry_and_cancel_end_only_pending() {
        assert_eq!(Pending.end(Expired), Ok(Expired));
        assert_eq!(Pending.end(Cancelled), Ok(Cancelled));
        assert!(Pending.end(Approved).is_err());
        assert!(Approved.end(Expired).is_err());
        assert!(Rejected.end(Cancelled).is_err());
    }

    #[test]
    fn consumable_only_when_approved_or_edited() {
        assert!(Approved.is_consumable());
        assert!(Edited.is_consumable());
        for s in [Pending, Rejected, Expired, Cancelled] {
            assert!(!s.is_consumable());
        }
    }

    #[test]
    fn decisions_respect_the_rule() {
        let swap = [DecisionKind::Approve, DecisionKind::Reject];
        let edit = Decision::Edit {
            edited_args: serde_json::json!({}),
            comment: None,
        };
        assert!(matches!(
            edit.validate(&swap),
            Err(DecisionError::NotAllowed { .. })
        ));
        assert!(edit.validate(&ALL).is_ok());
        let empty_reason = Decision::Reject {
            reason: "  ".into(),
        };
        assert_eq!(
            empty_reason.validate(&ALL),
            Err(DecisionError::MissingReason)
        );
        let long = Decision::Approve {
            comment: Some("x".repeat(MAX_NOTE_CHARS + 1)),
            standing: None,
        };
        assert_eq!(long.validate(&ALL), Err(DecisionError::NoteTooLong));
    }

    #[test]
    fn names_round_trip() {
        for s in [Pending, Approved, Rejected, Edited, Expired, Cancelled] {
            assert_eq!(ApprovalStatus::parse(s.as_str()), Some(s));
        }
        for k in ALL {
            assert_eq!(DecisionKind::parse(k.as_str()), Some(k));
        }
    }
}
