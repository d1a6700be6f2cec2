//! The lifecycle of an agent's execution and of each of its steps.

use crate::approval::ApprovalStatus;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Running,
    AwaitingApproval,
    /// Paused because its session is frozen: it goes on once a person unfreezes the session.
    Frozen,
    Completed,
    Failed,
    Rejected,
    Expired,
    Cancelled,
}

/// What an execution does when a person rejects one of its steps.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
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
    Frozen => "frozen",
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
        !Self::ACTIVE.contains(&self)
    }

    /// The states a kill may end.
    pub const ACTIVE: [ExecutionStatus; 3] = [
        ExecutionStatus::Running,
        ExecutionStatus::AwaitingApproval,
        ExecutionStatus::Frozen,
    ];
}

/// What the runner does with the step its execution stands on, by the step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMove {
    /// Run the step's tool: a step found running was cut off by a crash and runs again (tools are idempotent by
    /// step).
    Run,
    /// The step waits on people: look at its approval request.
    AwaitDecision,
    /// The step is done: move on to the next.
    Advance,
    /// The step ended otherwise, and its execution with it: nothing more to run.
    Stop,
}

/// The runner's table over a step's state.
pub fn step_move(step: StepStatus) -> StepMove {
    match step {
        StepStatus::Pending | StepStatus::Running => StepMove::Run,
        StepStatus::AwaitingApproval => StepMove::AwaitDecision,
        StepStatus::Done => StepMove::Advance,
        StepStatus::Failed | StepStatus::Rejected | StepStatus::Expired | StepStatus::Cancelled => {
            StepMove::Stop
        }
    }
}

/// What a paused step does once its approval request is in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDecision {
    /// Nobody has decided: wait for news of the request.
    Wait,
    /// People approved an action that is not a payment: take the request's one-time right, finish the step.
    ResumeAction,
    /// People approved (or edited) the step's payment: execute it, exactly once.
    PayApproved,
    /// Rejected under `on_reject: continue`: the rejection becomes the step's result and the plan goes on.
    ContinueRejected,
    /// Not approved: the step and its execution end in these states.
    End {
        execution: ExecutionStatus,
        step: StepStatus,
    },
}

/// The runner's table over a paused step's request: its state, whether the step pays, and what the session
/// does on a rejection.
pub fn after_decision(request: ApprovalStatus, pays: bool, on_reject: OnReject) -> AfterDecision {
    let end = |execution, step| AfterDecision::End { execution, step };
    match (request, on_reject) {
        (ApprovalStatus::Pending, _) => AfterDecision::Wait,
        (ApprovalStatus::Approved | ApprovalStatus::Edited, _) if pays => {
            AfterDecision::PayApproved
        }
        (ApprovalStatus::Approved | ApprovalStatus::Edited, _) => AfterDecision::ResumeAction,
        (ApprovalStatus::Rejected, OnReject::Continue) => AfterDecision::ContinueRejected,
        (ApprovalStatus::Rejected, OnReject::Stop) => {
            end(ExecutionStatus::Rejected, StepStatus::Rejected)
        }
        (ApprovalStatus::Expired, _) => end(ExecutionStatus::Expired, StepStatus::Expired),
        (ApprovalStatus::Cancelled, _) => end(ExecutionStatus::Cancelled, StepStatus::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_state_has_one_move_and_only_live_steps_run() {
        for &step in StepStatus::ALL {
            let expected = match step {
                StepStatus::Pending | StepStatus::Running => StepMove::Run,
                StepStatus::AwaitingApproval => StepMove::AwaitDecision,
                StepStatus::Done => StepMove::Advance,
                _ => StepMove::Stop,
            };
            assert_eq!(step_move(step), expected, "{step:?}");
        }
    }

    #[test]
    fn only_an_approval_moves_a_paused_step_forward_and_nothing_pays_unless_approved() {
        for &request in ApprovalStatus::ALL {
            for pays in [false, true] {
                for on_reject in [OnReject::Stop, OnReject::Continue] {
                    let next = after_decision(request, pays, on_reject);
                    let approved =
                        matches!(request, ApprovalStatus::Approved | ApprovalStatus::Edited);
                    assert_eq!(
                        next == AfterDecision::PayApproved,
                        approved && pays,
                        "{request:?}"
                    );
                    assert_eq!(
                        next == AfterDecision::ResumeAction,
                        approved && !pays,
                        "{request:?}"
                    );
                    assert_eq!(
                        next == AfterDecision::Wait,
                        request == ApprovalStatus::Pending
                    );
                    assert_eq!(
                        next == AfterDecision::ContinueRejected,
                        request == ApprovalStatus::Rejected && on_reject == OnReject::Continue
                    );
                    if let AfterDecision::End { execution, step } = next {
                        assert!(execution.is_terminal() && execution != ExecutionStatus::Completed);
                        assert_eq!(
                            step.as_str(),
                            execution.as_str(),
                            "the step ends as its execution"
                        );
                    }
                }
            }
        }
    }

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
