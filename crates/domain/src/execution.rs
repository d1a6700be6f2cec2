//! The lifecycle of an agent's execution and of each of its steps.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Running,
    AwaitingApproval,
    Completed,
    Failed,
    Rejected,
    Expired,
    Cancelled,
}

/// What an execution does when a person rejects one of its steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnReject {
    /// The execution ends as `rejected`.
    #[default]
    Stop,
    /// The agent gets the rejection as the step's result and goes on with the next step.
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    AwaitingApproval,
    Done,
    Failed,
    Rejected,
    Expired,
    Cancelled,
}

names!(ExecutionStatus {
    Running => "running",
    AwaitingApproval => "awaiting_approval",
    Completed => "completed",
    Failed => "failed",
    Rejected => "rejected",
    Expired => "expired",
    Cancelled => "cancelled",
});

names!(StepStatus {
    Pending => "pending",
    Running => "running",
    AwaitingApproval => "awaiting_approval",
    Done => "done",
    Failed => "failed",
    Rejected => "rejected",
    Expired => "expired",
    Cancelled => "cancelled",
});

impl ExecutionStatus {
    /// An execution in these states is over and never runs again.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ExecutionStatus::Running | ExecutionStatus::AwaitingApproval
        )
    }

    /// The states a kill may end.
    pub const ACTIVE: [ExecutionStatus; 2] =
        [ExecutionStatus::Running, ExecutionStatus::AwaitingApproval];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_terminal_states() {
        for s in [
            ExecutionStatus::Running,
            ExecutionStatus::AwaitingApproval,
            ExecutionStatus::Completed,
            ExecutionStatus::Failed,
            ExecutionStatus::Rejected,
            ExecutionStatus::Expired,
            ExecutionStatus::Cancelled,
        ] {
            assert_eq!(ExecutionStatus::parse(s.as_str()), Some(s));
            assert_eq!(s.is_terminal(), !ExecutionStatus::ACTIVE.contains(&s));
        }
        assert_eq!(
            StepStatus::parse("awaiting_approval"),
            Some(StepStatus::AwaitingApproval)
        );
        assert_eq!(StepStatus::parse("paused"), None);
    }
}
