//! Durable agent executions: a plan of tool calls, persisted before and after every step, paused durably when
//! a step needs a person, resumed by the decision (or after a restart), and stopped within milliseconds by a
//! kill. A runner task drives each execution; it learns of decisions and kills from the event stream, so a
//! decision or kill made on any instance reaches it.

mod frozen;
pub mod planner;
pub mod tools;

use crate::events::{EventFilter, Subscription, SubscriptionEnd};
use crate::views::ExecutionView;
use crate::views::PaymentView;
use crate::{EngineError, Paygent, Result, require};
use paygent_domain::PaymentStatus;
use paygent_domain::SessionState;
use paygent_domain::audit::AuditAction;
use paygent_domain::command::{self, Step};
use paygent_domain::event::EventKind;
use paygent_domain::execution::{
    AfterDecision, ExecutionStatus, OnReject, StepMove, StepStatus, after_decision, step_move,
};
use paygent_domain::judgement::DenyReason;
use paygent_domain::swap::{OnPriceMoved, PRICE_MOVED};
use paygent_domain::{ApprovalStatus, Decimal, Principal, Role};
use paygent_store::WriteTx;
use paygent_store::approvals;
use paygent_store::executions::{self, ExecutionRecord, NewExecution, StepRecord, StepUpdate};
use paygent_store::sessions;
use serde_json::{Value, json};
use tools::{StepContext, StepOutcome};
use uuid::Uuid;

/// What to run: explicit steps, or a command for the parser.
#[derive(Debug, Clone)]
pub enum Plan {
    Steps(Vec<Step>),
    Command(String),
}

/// The events a runner listens for: decisions on its approvals, kills, and its session unfrozen.
const RUNNER_EVENTS: [EventKind; 6] = [
    EventKind::SessionUnfrozen,
    EventKind::Approved,
    EventKind::Edited,
    EventKind::Rejected,
    EventKind::Expired,
    EventKind::Cancelled,
];

impl Paygent {
    /// Validates a plan, stores it, and starts running it.
    pub async fn start_execution(
        &self,
        who: &Principal,
        session_id: Uuid,
        plan: Plan,
    ) -> Result<ExecutionView> {
        require(
            who.can_request_payments(),
            "only agents and admins start executions",
        )?;
        let (steps, command, planner) = self.steps_of(plan).await?;
        self.check_plan(&steps, planner)?;

        let mut tx = self.begin_as(who).await?;
        let session = crate::sessions::reachable(
            who,
            sessions::get(tx.conn(), who.tenant_id, session_id).await?,
        )?;
        if session.state == SessionState::Killed || tx.kill_switch().is_some() {
            return Err(EngineError::Conflict(
                "killed: the session or the whole tenant is stopped".into(),
            ));
        }
        crate::breaker::refuse_if_frozen(&session, "executions start")?;
        let now = tx.now();
        let new = NewExecution {
            tenant_id: who.tenant_id,
            session_id,
            command,
            created_by: who.key_id,
        };
        let execution = ExecutionRecord::started(new, now);
        let records: Vec<StepRecord> = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| StepRecord::pending(execution.id, i, s.tool, s.args))
            .collect();
        executions::insert(&mut tx, &execution, &records).await?;
        // Leased from the start: no other instance may take it over before this one's runner starts.
        let until = paygent_domain::time::format(now + self.lease);
        executions::claim(tx.conn(), execution.id, &self.instance, &until, &until).await?;
        let plan: Vec<Value> = records
            .iter()
            .map(|s| json!({"tool": s.tool, "args": s.args}))
            .collect();
        let subject = format!("execution:{}", execution.id);
        let data = json!({"command": execution.command, "plan": plan, "planner": planner});
        tx.audit(
            &who.actor(),
            AuditAction::ExecutionStarted,
            &subject,
            Some(session_id),
            data,
        )
        .await?;
        let started = json!({"id": execution.id, "plan": plan});
        tx.event(EventKind::ExecutionStarted, Some(session_id), started)
            .await?;
        self.publish(tx.commit().await?);
        self.spawn_runner(who.tenant_id, execution.id);
        Ok(ExecutionView::new(execution, records))
    }

    /// A plan's steps, the command they came from, and the planner that planned them when the parser could not.
    async fn steps_of(
        &self,
        plan: Plan,
    ) -> Result<(Vec<Step>, Option<String>, Option<&'static str>)> {
        let command = match plan {
            Plan::Steps(steps) => return Ok((steps, None, None)),
            Plan::Command(c) => c,
        };
        let unparsed = match command::parse(&command) {
            Ok(steps) => return Ok((steps, Some(command), None)),
            Err(e) => e,
        };
        let Some(planner) = &self.planner else {
            return Err(EngineError::Invalid(unparsed.to_string()));
        };
        let steps = planner
            .plan(&command, &self.tools.specs())
            .await
            .map_err(|why| {
                EngineError::Invalid(format!(
                    "{unparsed} The planner ({}) could not plan it either: {why}",
                    planner.name()
                ))
            })?;
        Ok((steps, Some(command), Some(planner.name())))
    }

    /// Every step names a known tool with arguments it accepts, and there are 1 to `MAX_STEPS` of them.
    fn check_plan(&self, steps: &[Step], planner: Option<&str>) -> Result<()> {
        if steps.is_empty() || steps.len() > command::MAX_STEPS {
            return Err(EngineError::Invalid(format!(
                "a plan has 1 to {} steps",
                command::MAX_STEPS
            )));
        }
        let origin = planner.map_or(String::new(), |p| format!("the planner's plan ({p}): "));
        for (i, step) in steps.iter().enumerate() {
            let tool = self.tools.get(&step.tool).ok_or_else(|| {
                let known: Vec<_> = self.tools.names().collect();
                EngineError::Invalid(format!(
                    "{origin}step {i}: unknown tool {:?}; known: {known:?}",
                    step.tool
                ))
            })?;
            tool.check(&step.args, &self.prices).map_err(|e| {
                EngineError::Invalid(format!("{origin}step {i} ({}): {e}", step.tool))
            })?;
        }
        Ok(())
    }

    pub async fn execution(&self, who: &Principal, id: Uuid) -> Result<ExecutionView> {
        let execution = executions::get(self.store.reader(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("execution"))?;
        self.reach(who, execution.session_id, "execution").await?;
        let steps = executions::steps(self.store.reader(), id).await?;
        Ok(ExecutionView::new(execution, steps))
    }

    /// Executions, newest first, without their steps: the tenant's for people, an agent's sessions' for it.
    pub async fn executions(
        &self,
        who: &Principal,
        page: crate::Page,
    ) -> Result<Vec<ExecutionView>> {
        let scope = crate::payments::scope(who, page);
        let list = executions::list(self.store.reader(), scope).await?;
        Ok(list
            .into_iter()
            .map(|e| ExecutionView::new(e, Vec::new()))
            .collect())
    }

    /// Kills one execution: approvers, admins, or the agent whose session it runs on.
    pub async fn cancel_execution(&self, who: &Principal, id: Uuid) -> Result<ExecutionView> {
        let execution = executions::get(self.store.reader(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("execution"))?;
        self.reach(who, execution.session_id, "execution").await?;
        let mut tx = self.begin_as(who).await?;
        let execution = executions::get(tx.conn(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("execution"))?;
        if !cancel_within(&mut tx, &execution, "cancelled").await? {
            return Err(EngineError::Conflict(format!(
                "the execution is already {}",
                execution.status.as_str()
            )));
        }
        tx.audit(
            &who.actor(),
            AuditAction::ExecutionCancelled,
            &format!("execution:{id}"),
            Some(execution.session_id),
            json!({"step": execution.current_step}),
        )
        .await?;
        self.publish(tx.commit().await?);
        self.execution(who, id).await
    }

    /// Takes over the executions nobody runs, now and from now on, and keeps this instance's leases alive.
    /// Returns how many it took over now.
    ///
    /// On PostgreSQL several instances share the work: an execution whose runner died is taken over once its
    /// lease expires, by one instance. A SQLite file belongs to one process, so a starting process takes over
    /// every active execution at once: whoever held them before is gone.
    pub async fn resume_executions(&self) -> Result<usize> {
        let every_active = self.store.backend() == paygent_store::Backend::Sqlite;
        let taken = self.take_over(every_active).await?;
        if !self
            .lease_keeper
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let paygent = self.clone();
            tokio::spawn(async move { paygent.keep_leases().await });
        }
        Ok(taken)
    }

    /// Claims active executions whose lease is free or expired (or all of them) and runs them.
    async fn take_over(&self, every_active: bool) -> Result<usize> {
        let now = paygent_domain::time::format(self.now());
        let due =
            executions::orphans(self.store.reader(), (!every_active).then_some(&*now)).await?;
        let mut taken = 0;
        for (tenant, id) in due {
            let owner = if every_active {
                None
            } else {
                Some(now.as_str())
            };
            if self.claim_lease(id, owner).await? {
                taken += 1;
                self.spawn_runner(tenant, id);
            }
        }
        Ok(taken)
    }

    /// Claims or renews `id`'s lease for this instance. With `expired_by` = None the claim is forced (SQLite's
    /// one process taking over at start).
    async fn claim_lease(&self, id: Uuid, expired_by: Option<&str>) -> Result<bool> {
        let now = self.now();
        let until = paygent_domain::time::format(now + self.lease);
        let cutoff = match expired_by {
            Some(t) => t.to_owned(),
            None => paygent_domain::time::format(now + self.lease * 2),
        };
        Ok(executions::claim(self.store.writer(), id, &self.instance, &cutoff, &until).await?)
    }

    /// Renews this instance's leases and takes over orphaned executions, a few times per lease period, until the
    /// database is closed.
    async fn keep_leases(&self) {
        let mut tick = tokio::time::interval((self.lease / 3).to_std().unwrap_or_default());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let kept = async {
                let until = paygent_domain::time::format(self.now() + self.lease);
                executions::renew_leases(&self.store, &self.instance, &until).await?;
                self.take_over(false).await
            };
            match kept.await {
                Ok(_) => {}
                Err(EngineError::Store(e)) if e.is_closed() => return,
                Err(e) => tracing::warn!(error = %e, "keeping execution leases failed; retrying"),
            }
        }
    }

    /// Drives an execution to its end. A failure to reach the database is not the execution's failure: the
    /// runner waits and picks up again from what is stored.
    ///
    /// One runner per execution in this process: a takeover never starts a second beside a live one.
    fn spawn_runner(&self, tenant_id: Uuid, id: Uuid) {
        if !self.runners.lock().expect("runners").insert(id) {
            return;
        }
        let paygent = self.clone();
        tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_millis(100);
            while let Err(e) = paygent.run_execution(tenant_id, id).await {
                tracing::warn!(execution = %id, error = %e, "execution runner interrupted; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
            paygent.runners.lock().expect("runners").remove(&id);
        });
    }

    async fn run_execution(&self, tenant_id: Uuid, id: Uuid) -> Result<()> {
        let Some(first) = executions::get(self.store.reader(), tenant_id, id).await? else {
            return Ok(());
        };
        let agent = Principal {
            tenant_id,
            key_id: first.created_by,
            role: Role::Agent,
        };
        let filter = EventFilter {
            session_id: Some(first.session_id),
            types: RUNNER_EVENTS.to_vec(),
        };
        let mut events = self.subscribe_events(&agent, filter.clone(), None).await?;
        loop {
            // Each step starts under this instance's lease; another instance that took over ends this runner.
            if !self
                .claim_lease(id, Some(&paygent_domain::time::format(self.now())))
                .await?
            {
                return Ok(());
            }
            let Some(execution) = executions::get(self.store.reader(), tenant_id, id).await? else {
                return Ok(());
            };
            if execution.status.is_terminal() {
                return Ok(());
            }
            let steps = executions::steps(self.store.reader(), id).await?;
            let Some(step) = steps.get(execution.current_step as usize).cloned() else {
                self.finish(tenant_id, &execution, ExecutionStatus::Completed, None)
                    .await?;
                return Ok(());
            };
            let next = match step_move(step.status) {
                _ if self.held(&execution, &step).await? => {
                    self.hold(&execution, &step, None, &mut events).await?
                }
                StepMove::Run => {
                    self.run_step(&agent, &execution, &step, &mut events)
                        .await?
                }
                StepMove::AwaitDecision => {
                    self.await_decision(&agent, &execution, &step, &mut events)
                        .await?
                }
                StepMove::Advance => {
                    self.complete_step(tenant_id, &execution, &step, None)
                        .await?;
                    Flow::Continue
                }
                StepMove::Stop => Flow::Stop,
            };
            match next {
                Flow::Continue => {}
                Flow::Stop => return Ok(()),
                Flow::Resubscribe => {
                    events = self.subscribe_events(&agent, filter.clone(), None).await?
                }
            }
        }
    }

    /// Runs one step, racing it against a kill: a kill drops the step's future, aborting whatever it awaits.
    async fn run_step(
        &self,
        agent: &Principal,
        execution: &ExecutionRecord,
        step: &StepRecord,
        events: &mut Subscription,
    ) -> Result<Flow> {
        let mut tx = self.store.begin(agent.tenant_id, self.now()).await?;
        executions::update_step(
            &mut tx,
            StepUpdate {
                status: StepStatus::Running,
                started: true,
                ..update(step)
            },
        )
        .await?;
        tx.commit().await?;
        let started_at = executions::steps(self.store.reader(), execution.id)
            .await?
            .get(step.idx as usize)
            .and_then(|s| s.started_at)
            .unwrap_or_else(|| self.now());
        let Some(tool) = self.tools.get(&step.tool) else {
            return self
                .fail(
                    agent.tenant_id,
                    execution,
                    step,
                    "the tool is no longer registered",
                )
                .await;
        };
        let ctx = StepContext {
            paygent: self,
            principal: agent,
            execution_id: execution.id,
            session_id: execution.session_id,
            idx: step.idx,
            started_at,
            retry_of: step.payment_id,
        };
        let outcome = tokio::select! {
            outcome = tool.run(ctx, &step.args) => outcome,
            stop = killed(events, execution.id) => return Ok(stop),
        };
        match outcome {
            StepOutcome::Done {
                result,
                cost_usd,
                payment_id,
            } => {
                self.complete_step(
                    agent.tenant_id,
                    execution,
                    step,
                    Some((result, cost_usd, payment_id)),
                )
                .await?;
                Ok(Flow::Continue)
            }
            StepOutcome::AwaitingApproval {
                approval_id,
                payment_id,
            } => {
                let wait = (approval_id, payment_id);
                self.pause(agent.tenant_id, execution, step, wait).await
            }
            StepOutcome::Failed { error } => {
                self.fail(agent.tenant_id, execution, step, &error).await
            }
            StepOutcome::Frozen { payment_id } => {
                self.cut_off(execution, step, payment_id, events).await
            }
        }
    }

    /// Pauses the execution on the step until people decide `approval_id` (for `payment_id`, if a payment).
    async fn pause(
        &self,
        tenant_id: Uuid,
        execution: &ExecutionRecord,
        step: &StepRecord,
        (approval_id, payment_id): (Uuid, Option<Uuid>),
    ) -> Result<Flow> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        let running = [ExecutionStatus::Running];
        let waiting = ExecutionStatus::AwaitingApproval;
        if !executions::transition(&mut tx, execution.id, &running, waiting, None).await? {
            return Ok(Flow::Stop);
        }
        let paused = StepUpdate {
            status: StepStatus::AwaitingApproval,
            approval_id: Some(approval_id),
            payment_id,
            ..update(step)
        };
        executions::update_step(&mut tx, paused).await?;
        let payload = json!({"id": execution.id, "step": step.idx, "approval_id": approval_id});
        tx.event(
            EventKind::ExecutionPaused,
            Some(execution.session_id),
            payload,
        )
        .await?;
        self.publish(tx.commit().await?);
        Ok(Flow::Continue)
    }

    /// Waits for a person's decision on the step's approval request, then acts on it.
    async fn await_decision(
        &self,
        agent: &Principal,
        execution: &ExecutionRecord,
        step: &StepRecord,
        events: &mut Subscription,
    ) -> Result<Flow> {
        let tenant_id = agent.tenant_id;
        let Some(approval_id) = step.approval_id else {
            let why = "paused without an approval request";
            return self.fail(tenant_id, execution, step, why).await;
        };
        let request = approvals::get(self.store.reader(), tenant_id, approval_id)
            .await?
            .ok_or(EngineError::NotFound("approval request"))?;
        let on_reject = sessions::get(self.store.reader(), tenant_id, execution.session_id)
            .await?
            .map_or(OnReject::Stop, |s| s.config.on_reject);
        let pays = step.payment_id.is_some();
        match after_decision(request.status, pays, on_reject) {
            AfterDecision::Wait => news(events, approval_id, execution.id).await,
            AfterDecision::ResumeAction => {
                self.resume_action(tenant_id, execution, step, &request)
                    .await
            }
            AfterDecision::PayApproved => {
                let at = (execution, step);
                self.pay_approved(agent, at, approval_id, events).await
            }
            AfterDecision::ContinueRejected => {
                let error = undecided(&request);
                self.continue_after_rejection(tenant_id, execution, step, &error)
                    .await
            }
            AfterDecision::End {
                execution: ended,
                step: step_ended,
            } => {
                let error = undecided(&request);
                let ends = (ended, step_ended);
                self.end_undecided(tenant_id, execution, step, ends, &error)
                    .await
            }
        }
    }

    /// Ends an execution whose step's request was rejected, expired or cancelled, with that step.
    async fn end_undecided(
        &self,
        tenant_id: Uuid,
        execution: &ExecutionRecord,
        step: &StepRecord,
        (status, step_status): (ExecutionStatus, StepStatus),
        error: &str,
    ) -> Result<Flow> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        executions::update_step(
            &mut tx,
            StepUpdate {
                status: step_status,
                error: Some(error),
                finished: true,
                ..update(step)
            },
        )
        .await?;
        self.end_within(&mut tx, execution, status, Some(error))
            .await?;
        self.publish(tx.commit().await?);
        Ok(Flow::Stop)
    }

    /// Executes the payment a person approved for the step, exactly once, and finishes the step with it.
    async fn pay_approved(
        &self,
        agent: &Principal,
        (execution, step): (&ExecutionRecord, &StepRecord),
        approval_id: Uuid,
        events: &mut Subscription,
    ) -> Result<Flow> {
        let tenant_id = agent.tenant_id;
        let payment = match self.execute_approved(agent, approval_id).await {
            Ok(payment) => self.once_known(tenant_id, payment).await,
            Err(EngineError::Frozen(_)) => {
                return self.hold(execution, step, None, events).await;
            }
            Err(e) => return self.fail(tenant_id, execution, step, &e.to_string()).await,
        };
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        if resume_within(&mut tx, execution, step, false).await? {
            self.publish(tx.commit().await?);
        }
        let running = ExecutionRecord {
            status: ExecutionStatus::Running,
            ..execution.clone()
        };
        if self
            .asks_again(tenant_id, execution.session_id, &payment)
            .await?
        {
            return self.ask_again(tenant_id, step, payment.id).await;
        }
        match tools::payment_outcome(payment) {
            StepOutcome::Done {
                result,
                cost_usd,
                payment_id,
            } => {
                let done = Some((result, cost_usd, payment_id));
                self.complete_step(tenant_id, &running, step, done).await?;
                Ok(Flow::Continue)
            }
            StepOutcome::Failed { error } => self.fail(tenant_id, &running, step, &error).await,
            StepOutcome::AwaitingApproval { .. } | StepOutcome::Frozen { .. } => {
                let why = "the approved payment did not execute";
                self.fail(tenant_id, &running, step, why).await
            }
        }
    }

    /// Whether an approved swap that failed because its price moved past its bound is asked again, as its
    /// session's policy says (`swaps.on_price_moved`).
    async fn asks_again(&self, tenant_id: Uuid, session_id: Uuid, p: &PaymentView) -> Result<bool> {
        if p.status != PaymentStatus::Failed || p.reason.as_deref() != Some(PRICE_MOVED) {
            return Ok(false);
        }
        let Some(session) = sessions::get(self.store.reader(), tenant_id, session_id).await? else {
            return Ok(false);
        };
        let reader = self.store.reader();
        let policy = crate::policies::in_force(reader, tenant_id, session.policy_id).await?;
        Ok(policy.rules.swaps.on_price_moved == OnPriceMoved::AskAgain)
    }

    /// Runs the step again after its swap's price moved: its next payment is keyed after `failed`, so it quotes
    /// anew and files a new request for people, on the new quote.
    async fn ask_again(&self, tenant_id: Uuid, step: &StepRecord, failed: Uuid) -> Result<Flow> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        let again = StepUpdate {
            status: StepStatus::Running,
            payment_id: Some(failed),
            ..update(step)
        };
        executions::update_step(&mut tx, again).await?;
        tx.commit().await?;
        Ok(Flow::Continue)
    }

    /// An approved request with no payment: a swap filed before swaps were traded (they are payments now). Its
    /// one-time right is taken and the step fails: nothing was traded, and the agent must ask again.
    async fn resume_action(
        &self,
        tenant_id: Uuid,
        execution: &ExecutionRecord,
        step: &StepRecord,
        request: &paygent_store::approvals::ApprovalRecord,
    ) -> Result<Flow> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        if let Some(current) = approvals::current(&mut tx, request.id).await? {
            approvals::consume(&mut tx, &current).await?;
        }
        if !resume_within(&mut tx, execution, step, false).await? {
            return Ok(Flow::Stop);
        }
        self.publish(tx.commit().await?);
        let running = ExecutionRecord {
            status: ExecutionStatus::Running,
            ..execution.clone()
        };
        let why =
            "approved before this server traded swaps: nothing was traded; ask for the swap again";
        self.fail(tenant_id, &running, step, why).await
    }

    /// Under `on_reject: continue`, the rejection becomes the step's result and the plan goes on.
    async fn continue_after_rejection(
        &self,
        tenant_id: Uuid,
        execution: &ExecutionRecord,
        step: &StepRecord,
        error: &str,
    ) -> Result<Flow> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        if !resume_within(&mut tx, execution, step, true).await?
            || !executions::advance(&mut tx, execution.id, step.idx + 1, Decimal::ZERO).await?
        {
            return Ok(Flow::Stop);
        }
        let result = json!({"rejected": true, "reason": error});
        executions::update_step(
            &mut tx,
            StepUpdate {
                status: StepStatus::Rejected,
                result: Some(&result),
                error: Some(error),
                finished: true,
                ..update(step)
            },
        )
        .await?;
        self.publish(tx.commit().await?);
        Ok(Flow::Continue)
    }

    /// Records a finished step and moves to the next; stops if the execution was killed meanwhile.
    async fn complete_step(
        &self,
        tenant_id: Uuid,
        execution: &ExecutionRecord,
        step: &StepRecord,
        outcome: Option<(Value, Decimal, Option<Uuid>)>,
    ) -> Result<()> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        let cost = outcome.as_ref().map_or(Decimal::ZERO, |o| o.1);
        if !executions::advance(&mut tx, execution.id, step.idx + 1, cost).await? {
            return Ok(());
        }
        let (result, payment_id) = match &outcome {
            Some((r, _, p)) => (Some(r), *p),
            None => (None, None),
        };
        executions::update_step(
            &mut tx,
            StepUpdate {
                status: StepStatus::Done,
                result,
                payment_id,
                cost_usd: outcome.as_ref().map(|o| o.1),
                finished: true,
                ..update(step)
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fail(
        &self,
        tenant_id: Uuid,
        execution: &ExecutionRecord,
        step: &StepRecord,
        error: &str,
    ) -> Result<Flow> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        executions::update_step(
            &mut tx,
            StepUpdate {
                status: StepStatus::Failed,
                error: Some(error),
                finished: true,
                ..update(step)
            },
        )
        .await?;
        self.end_within(&mut tx, execution, ExecutionStatus::Failed, Some(error))
            .await?;
        self.publish(tx.commit().await?);
        Ok(Flow::Stop)
    }

    async fn finish(
        &self,
        tenant_id: Uuid,
        execution: &ExecutionRecord,
        status: ExecutionStatus,
        error: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        self.end_within(&mut tx, execution, status, error).await?;
        self.publish(tx.commit().await?);
        Ok(())
    }

    /// Ends an active execution with its audit entry and event; does nothing if it already ended.
    async fn end_within(
        &self,
        tx: &mut WriteTx,
        execution: &ExecutionRecord,
        status: ExecutionStatus,
        error: Option<&str>,
    ) -> Result<()> {
        if !executions::transition(tx, execution.id, &ExecutionStatus::ACTIVE, status, error)
            .await?
        {
            return Ok(());
        }
        let kind = if status == ExecutionStatus::Completed {
            EventKind::ExecutionCompleted
        } else {
            EventKind::ExecutionFailed
        };
        let payload = json!({"id": execution.id, "status": status.as_str(), "error": error});
        tx.audit(
            "system",
            AuditAction::execution_ended(status),
            &format!("execution:{}", execution.id),
            Some(execution.session_id),
            payload.clone(),
        )
        .await?;
        tx.event(kind, Some(execution.session_id), payload).await?;
        Ok(())
    }
}

/// Moves a paused execution back to running, with its `execution_resumed` event; false if it was no longer
/// paused (a kill came first).
async fn resume_within(
    tx: &mut WriteTx,
    execution: &ExecutionRecord,
    step: &StepRecord,
    rejected: bool,
) -> Result<bool> {
    let from = [ExecutionStatus::AwaitingApproval];
    if !executions::transition(tx, execution.id, &from, ExecutionStatus::Running, None).await? {
        return Ok(false);
    }
    let payload = json!({"id": execution.id, "step": step.idx, "rejected": rejected});
    tx.event(
        EventKind::ExecutionResumed,
        Some(execution.session_id),
        payload,
    )
    .await?;
    Ok(true)
}

/// Why a paused step's request let it go no further, as the step's error.
fn undecided(request: &paygent_store::approvals::ApprovalRecord) -> String {
    match request.status {
        ApprovalStatus::Expired => "the approval request expired".to_owned(),
        ApprovalStatus::Cancelled => "the approval request was cancelled".to_owned(),
        _ => format!(
            "rejected: {}",
            request.decision_note.as_deref().unwrap_or_default()
        ),
    }
}

/// What the runner does next.
enum Flow {
    Continue,
    Stop,
    /// The event subscription fell behind; take a fresh one and look at the database again.
    Resubscribe,
}

/// A step update that changes only what the caller sets.
fn update(step: &StepRecord) -> StepUpdate<'static> {
    StepUpdate {
        execution_id: step.execution_id,
        idx: step.idx,
        status: step.status,
        result: None,
        error: None,
        approval_id: None,
        payment_id: None,
        cost_usd: None,
        started: false,
        finished: false,
    }
}

/// Resolves when this execution is killed (or the event stream can no longer tell).
async fn killed(events: &mut Subscription, id: Uuid) -> Flow {
    loop {
        match events.next().await {
            Ok(e) if e.kind == EventKind::Cancelled && e.is_about(id) => {
                return Flow::Stop;
            }
            Ok(_) => {}
            Err(SubscriptionEnd::Lagged) => return Flow::Resubscribe,
            Err(_) => return Flow::Stop,
        }
    }
}

/// Cancels an active execution inside `tx`: its current step, any approval that step waits on (releasing the
/// reservation), and an event that stops its runner wherever it runs. Returns false if it had already ended.
pub(crate) async fn cancel_within(
    tx: &mut WriteTx,
    execution: &ExecutionRecord,
    reason: &str,
) -> Result<bool> {
    if !executions::transition(
        tx,
        execution.id,
        &ExecutionStatus::ACTIVE,
        ExecutionStatus::Cancelled,
        Some(reason),
    )
    .await?
    {
        return Ok(false);
    }
    let steps = executions::steps(tx.conn(), execution.id).await?;
    if let Some(step) = steps.get(execution.current_step as usize) {
        let payment_id = paying(tx, step).await?;
        executions::update_step(
            tx,
            StepUpdate {
                status: StepStatus::Cancelled,
                error: Some(reason),
                payment_id,
                finished: true,
                ..update(step)
            },
        )
        .await?;
        if let (StepStatus::AwaitingApproval, Some(approval_id)) = (step.status, step.approval_id)
            && approvals::end(tx, approval_id, ApprovalStatus::Cancelled, Some(reason)).await?
        {
            if let Some(payment_id) = step.payment_id {
                crate::payments::deny_pending(tx, payment_id, DenyReason::Killed).await?;
            }
            let payload =
                json!({"kind": "approval", "id": approval_id, "session_id": execution.session_id});
            tx.event(EventKind::Cancelled, Some(execution.session_id), payload)
                .await?;
        }
    }
    let payload = json!({"kind": "execution", "id": execution.id, "session_id": execution.session_id, "reason": reason});
    tx.event(EventKind::Cancelled, Some(execution.session_id), payload)
        .await?;
    Ok(true)
}

/// The payment a running step was making when it was cancelled, if the guard had taken it: it may have been
/// sent, and may still land, so the step names it (its own status says how it ended).
async fn paying(tx: &mut WriteTx, step: &StepRecord) -> Result<Option<Uuid>> {
    if step.status != StepStatus::Running || step.payment_id.is_some() {
        return Ok(None);
    }
    let key = tools::step_payment_key(step.execution_id, step.idx);
    let tenant = tx.tenant_id();
    let found = paygent_store::payments::by_idempotency_key(tx.conn(), tenant, &key).await?;
    Ok(found.map(|p| p.id))
}

/// Nothing decided yet: waits for an event about the request (look again) or a cancellation of the execution.
async fn news(events: &mut Subscription, approval_id: Uuid, execution_id: Uuid) -> Result<Flow> {
    loop {
        match events.next().await {
            Ok(e) if e.is_about(approval_id) => return Ok(Flow::Continue),
            Ok(e) if e.kind == EventKind::Cancelled && e.is_about(execution_id) => {
                return Ok(Flow::Stop);
            }
            Ok(_) => {}
            Err(SubscriptionEnd::Lagged) => return Ok(Flow::Resubscribe),
            Err(e) => return Err(EngineError::Conflict(e.to_string())),
        }
    }
}
