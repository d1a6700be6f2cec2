//! An execution whose session the circuit breaker froze: it waits, as `frozen`, until a person unfreezes the
//! session, then goes back to where it stood (its step runs again, or its approved payment executes). A kill
//! ends the wait like any other.

use super::{Flow, update};
use crate::events::{Subscription, SubscriptionEnd};
use crate::{Paygent, Result};
use paygent_domain::SessionState;
use paygent_domain::event::EventKind;
use paygent_domain::execution::{ExecutionStatus, StepMove, StepStatus, step_move};
use paygent_store::executions::{self, ExecutionRecord, StepRecord, StepUpdate};
use paygent_store::sessions;
use serde_json::json;
use uuid::Uuid;

impl Paygent {
    /// Whether the execution must wait for its session to be unfrozen before it goes on with `step`: it waits
    /// already, or the step would run in a frozen session.
    pub(super) async fn held(
        &self,
        execution: &ExecutionRecord,
        step: &StepRecord,
    ) -> Result<bool> {
        if execution.status == ExecutionStatus::Frozen {
            return Ok(true);
        }
        if step_move(step.status) != StepMove::Run {
            return Ok(false);
        }
        let session = sessions::get(
            self.store.reader(),
            execution.tenant_id,
            execution.session_id,
        )
        .await?;
        Ok(session.is_some_and(|s| s.state == SessionState::Frozen))
    }

    /// Pauses the execution as `frozen` (a step cut off by the freeze, with the payment the breaker denied, is
    /// to run again), waits until its session is active again, and resumes it where it stood.
    pub(super) async fn hold(
        &self,
        execution: &ExecutionRecord,
        step: &StepRecord,
        denied: Option<Uuid>,
        events: &mut Subscription,
    ) -> Result<Flow> {
        if execution.status != ExecutionStatus::Frozen
            && !self.freeze(execution, step, denied).await?
        {
            return Ok(Flow::Continue);
        }
        loop {
            let session = sessions::get(
                self.store.reader(),
                execution.tenant_id,
                execution.session_id,
            )
            .await?;
            match session.map(|s| s.state) {
                Some(SessionState::Active) => break,
                // A killed session's sweep cancels the execution: wait for it.
                Some(SessionState::Frozen | SessionState::Killed) => {}
                None => return Ok(Flow::Stop),
            }
            match unfrozen(events, execution.id).await {
                Flow::Continue => {}
                other => return Ok(other),
            }
        }
        let back = match step.status {
            StepStatus::AwaitingApproval => ExecutionStatus::AwaitingApproval,
            _ => ExecutionStatus::Running,
        };
        let mut tx = self.store.begin(execution.tenant_id, self.now()).await?;
        let frozen = [ExecutionStatus::Frozen];
        if executions::transition(&mut tx, execution.id, &frozen, back, None).await? {
            let payload =
                json!({"id": execution.id, "step": step.idx, "reason": "session_unfrozen"});
            tx.event(
                EventKind::ExecutionResumed,
                Some(execution.session_id),
                payload,
            )
            .await?;
            self.publish(tx.commit().await?);
        }
        Ok(Flow::Continue)
    }

    /// The session froze while the step ran (its payment tripped the breaker, or met it frozen): the step
    /// runs again once the session is unfrozen.
    pub(super) async fn cut_off(
        &self,
        execution: &ExecutionRecord,
        step: &StepRecord,
        denied: Option<Uuid>,
        events: &mut Subscription,
    ) -> Result<Flow> {
        let running = ExecutionRecord {
            status: ExecutionStatus::Running,
            ..execution.clone()
        };
        let cut_off = StepRecord {
            status: StepStatus::Running,
            ..step.clone()
        };
        self.hold(&running, &cut_off, denied, events).await
    }

    /// Moves the execution to `frozen`, its cut-off step back to pending; false if it was no longer active.
    async fn freeze(
        &self,
        execution: &ExecutionRecord,
        step: &StepRecord,
        denied: Option<Uuid>,
    ) -> Result<bool> {
        let mut tx = self.store.begin(execution.tenant_id, self.now()).await?;
        let active = [ExecutionStatus::Running, ExecutionStatus::AwaitingApproval];
        let frozen = ExecutionStatus::Frozen;
        if !executions::transition(&mut tx, execution.id, &active, frozen, None).await? {
            return Ok(false);
        }
        if step.status != StepStatus::AwaitingApproval {
            let again = StepUpdate {
                status: StepStatus::Pending,
                payment_id: denied,
                ..update(step)
            };
            executions::update_step(&mut tx, again).await?;
        }
        let payload = json!({"id": execution.id, "step": step.idx, "reason": "session_frozen"});
        tx.event(
            EventKind::ExecutionPaused,
            Some(execution.session_id),
            payload,
        )
        .await?;
        self.publish(tx.commit().await?);
        Ok(true)
    }
}

/// Waits for news that may end a freeze: the session unfrozen (look again), or the execution cancelled.
async fn unfrozen(events: &mut Subscription, execution_id: Uuid) -> Flow {
    loop {
        match events.next().await {
            Ok(e) if e.kind == EventKind::SessionUnfrozen => return Flow::Continue,
            Ok(e) if e.kind == EventKind::Cancelled && e.is_about(execution_id) => {
                return Flow::Stop;
            }
            Ok(_) => {}
            Err(SubscriptionEnd::Lagged) => return Flow::Resubscribe,
            Err(_) => return Flow::Stop,
        }
    }
}
