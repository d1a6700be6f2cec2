//! The guard: every payment an agent asks for is priced in USD, checked against its session's policy and
//! budget, and then allowed, sent to a person, or denied, in one transaction with its audit entry and event.

use crate::budget::{self, Booking, Move};
use crate::executions::tools::{StepContext, StepOutcome, authorized_action};
use crate::policies;
use crate::sessions::reachable;
use crate::views::{ApprovalView, PaymentView};
use crate::{EngineError, Paygent, Result, require};
use chrono::Duration;
use paygent_domain::budget::OnBudgetExceeded;
use paygent_domain::payment::PaymentIntent;
use paygent_domain::{ApprovalStatus, Decimal, PaymentStatus, Principal, Verdict};
use paygent_store::approvals::{self, ApprovalRecord};
use paygent_store::payments::{self, PaymentRecord};
use paygent_store::sessions;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct PaymentRequest {
    pub session_id: Uuid,
    pub amount: String,
    pub currency: String,
    pub recipient: String,
    pub description: Option<String>,
    pub idempotency_key: Option<String>,
}

/// The guard's answer. `replayed` is true when an idempotency key returned an earlier payment.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub payment: PaymentView,
    pub replayed: bool,
}

impl PaymentRequest {
    /// Identifies the request's content, so a reused idempotency key with other content is caught.
    fn fingerprint(&self) -> String {
        let body = json!([
            self.session_id,
            self.amount,
            self.currency,
            self.recipient,
            self.description
        ]);
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    }
}

fn validate_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EngineError::Invalid(
            "idempotency_key must be 1 to 255 printable ASCII characters".into(),
        ));
    }
    Ok(())
}

impl Paygent {
    /// Runs a payment request through the guard.
    pub async fn submit_payment(&self, who: &Principal, req: PaymentRequest) -> Result<Submitted> {
        self.guard(who, req, None).await
    }

    /// Records a payment that failed before it could be guarded (a rail could not find anything it may pay),
    /// so the attempt and its reason are kept like any other payment's. Nothing is booked on the budget.
    pub async fn refuse_payment(
        &self,
        who: &Principal,
        req: PaymentRequest,
        reason: &str,
    ) -> Result<Submitted> {
        self.guard(who, req, Some(reason)).await
    }

    async fn guard(
        &self,
        who: &Principal,
        req: PaymentRequest,
        refusal: Option<&str>,
    ) -> Result<Submitted> {
        require(
            who.can_request_payments(),
            "only agents and admins request payments",
        )?;
        if let Some(k) = &req.idempotency_key {
            validate_idempotency_key(k)?;
        }
        let intent = PaymentIntent::new(
            &self.prices,
            &req.amount,
            &req.currency,
            &req.recipient,
            req.description.clone(),
        )?;
        let usd_value = self.prices.usd_value(&intent.money)?;
        let tool = intent.tool();
        let args = intent.args();
        let fingerprint = req.fingerprint();

        let mut tx = self.begin_as(who).await?;
        if let Some(key) = &req.idempotency_key
            && let Some(earlier) = payments::by_idempotency_key(&mut tx, key).await?
        {
            if earlier.request_hash != fingerprint {
                return Err(EngineError::Invalid(
                    "idempotency_key was already used for a different payment request".into(),
                ));
            }
            drop(tx);
            // An authorized payment whose rail run was interrupted is finished now, still only once.
            return Ok(Submitted {
                payment: self.carry_out(earlier).await?,
                replayed: true,
            });
        }
        // Read under the tenant's write lock: a kill or budget change committed a moment ago must apply.
        let session = reachable(
            who,
            sessions::get(tx.conn(), who.tenant_id, req.session_id).await?,
        )?;
        // Read under the same lock: a policy tightened a moment ago applies to this payment.
        let rules = policies::in_force(tx.conn(), who.tenant_id, session.policy_id).await?;
        let now = tx.now();
        let booking = Booking {
            session_id: session.id,
            day: session.config.budget.day(now).0.to_string(),
            currency: intent.money.currency.clone(),
            amount: intent.money.amount,
            usd: usd_value,
        };
        let policy = rules.rules.for_session(&session.config);
        let refused = rules.rules.refusal(usd_value, &args);
        let over_budget = budget::check(&mut tx, &session.config.budget, &booking)
            .await?
            .err();
        let deny_over_budget = session.config.budget.on_budget_exceeded == OnBudgetExceeded::Deny;
        let verdict = match &over_budget {
            Some(exceeded) if !deny_over_budget => Verdict::RequireApproval {
                reason: format!("over budget: {exceeded}"),
                allowed: policy.allowed_for(tool),
            },
            _ => policy.evaluate(tool, usd_value, &args),
        };
        let timeout = rules.rules.approval_timeout(&session.config);

        let mut payment = PaymentRecord {
            id: Uuid::now_v7(),
            tenant_id: who.tenant_id,
            session_id: session.id,
            tool: tool.to_owned(),
            amount: intent.money.amount,
            currency: intent.money.currency.clone(),
            usd_value,
            recipient: intent.recipient.as_str().to_owned(),
            description: intent.description.clone(),
            status: PaymentStatus::Authorized,
            reason: None,
            approval_id: None,
            tx_hash: None,
            network: None,
            idempotency_key: req.idempotency_key.clone(),
            request_hash: fingerprint,
            requested_by: who.key_id,
            budget_day: Some(booking.day.clone()),
            detail: None,
            created_at: now,
            updated_at: now,
        };
        let subject = format!("payment:{}", payment.id);
        let mut summary = json!({
            "payment_id": payment.id,
            "tool": tool,
            "args": args,
            "usd_value": usd_value.to_string(),
        });

        let stopped = if tx.kill_switch().is_some() {
            Some("the emergency stop is engaged")
        } else if session.state != "active" {
            Some("the session was killed")
        } else {
            None
        };
        // A stop outranks the policy, which outranks the budget.
        let denial = match (stopped, refused) {
            (Some(why), _) => Some(("killed", why.to_owned(), None)),
            (None, Some(r)) => {
                let detail = format!("{} (policy {:?}, rule {})", r.detail, rules.name, r.rule);
                Some(("policy_denied", detail, Some(r.rule)))
            }
            (None, None) => None,
        };
        if let Some(why) = refusal {
            payment.status = PaymentStatus::Failed;
            payment.reason = Some(why.into());
            payments::insert(&mut tx, &payment).await?;
            summary["reason"] = json!(why);
            tx.audit(
                &who.actor(),
                "payment.failed",
                &subject,
                Some(session.id),
                summary,
            )
            .await?;
        } else if let Some((reason, detail, rule)) = denial {
            payment.status = PaymentStatus::Denied;
            payment.reason = Some(reason.into());
            payment.detail = Some(detail);
            payments::insert(&mut tx, &payment).await?;
            summary["reason"] = json!(reason);
            if let Some(rule) = rule {
                summary["rule"] = json!(rule);
                summary["policy"] = json!({"id": rules.id, "version": rules.version});
            }
            tx.audit(
                &who.actor(),
                "payment.denied",
                &subject,
                Some(session.id),
                summary,
            )
            .await?;
        } else if let Some(exceeded) = over_budget.as_ref().filter(|_| deny_over_budget) {
            payment.status = PaymentStatus::Denied;
            payment.reason = Some("budget_exceeded".into());
            payment.detail = Some(exceeded.to_string());
            payments::insert(&mut tx, &payment).await?;
            summary["detail"] = json!(exceeded.to_string());
            tx.audit(
                &who.actor(),
                "budget.exceeded",
                &subject,
                Some(session.id),
                summary.clone(),
            )
            .await?;
            tx.event("budget_exceeded", Some(session.id), summary)
                .await?;
        } else if let Verdict::RequireApproval { reason, allowed } = verdict {
            let request = ApprovalRecord {
                id: Uuid::now_v7(),
                tenant_id: who.tenant_id,
                session_id: session.id,
                payment_id: Some(payment.id),
                tool: tool.to_owned(),
                args: args.clone(),
                edited_args: None,
                reason: format!("{reason} (policy {:?} v{})", rules.name, rules.version),
                usd_value,
                allowed_decisions: allowed,
                status: ApprovalStatus::Pending,
                requested_by: who.key_id,
                deadline: now + Duration::seconds(timeout.into()),
                decided_by: None,
                decided_at: None,
                decision_note: None,
                consumed_at: None,
                created_at: now,
            };
            payment.status = PaymentStatus::PendingApproval;
            payment.approval_id = Some(request.id);
            payments::insert(&mut tx, &payment).await?;
            approvals::insert(&mut tx, &request).await?;
            budget::book(&mut tx, &booking, Move::Reserve).await?;
            summary["reason"] = json!(request.reason);
            summary["deadline"] = json!(paygent_domain::time::format(request.deadline));
            tx.audit(
                &who.actor(),
                "approval.requested",
                &format!("approval:{}", request.id),
                Some(session.id),
                summary,
            )
            .await?;
            let view = serde_json::to_value(ApprovalView::from(request))
                .expect("approval views serialize");
            tx.event("approval_required", Some(session.id), view)
                .await?;
        } else {
            payments::insert(&mut tx, &payment).await?;
            budget::book(&mut tx, &booking, Move::Spend).await?;
            tx.audit(
                &who.actor(),
                "payment.authorized",
                &subject,
                Some(session.id),
                summary,
            )
            .await?;
        }
        self.publish(tx.commit().await?);
        Ok(Submitted {
            payment: self.carry_out(payment).await?,
            replayed: false,
        })
    }
}

impl Paygent {
    /// Guards a value-moving action that is not a payment (a swap) for an execution's step: the session's rule
    /// for the tool lets it run, or files one approval request for the step (the same one if the step runs
    /// again after a crash).
    pub(crate) async fn guard_action(
        &self,
        ctx: &StepContext<'_>,
        tool: &str,
        args: &Value,
        usd_value: Decimal,
    ) -> Result<StepOutcome> {
        let who = ctx.principal;
        let mut tx = self.begin_as(who).await?;
        let session = sessions::get(tx.conn(), who.tenant_id, ctx.session_id)
            .await?
            .ok_or(EngineError::NotFound("session"))?;
        if tx.kill_switch().is_some() || session.state != "active" {
            return Ok(StepOutcome::Failed {
                error: "killed: the session or the whole tenant is stopped".into(),
            });
        }
        let rules = policies::in_force(tx.conn(), who.tenant_id, session.policy_id).await?;
        if let Some(refusal) = rules.rules.refusal(usd_value, args) {
            return Ok(StepOutcome::Failed {
                error: format!("policy_denied: {} (rule {})", refusal.detail, refusal.rule),
            });
        }
        let subject = format!("execution:{}", ctx.execution_id);
        let summary = json!({"tool": tool, "args": args, "usd_value": usd_value.to_string(), "step": ctx.idx});
        let policy = rules.rules.for_session(&session.config);
        let outcome = match policy.evaluate(tool, usd_value, args) {
            Verdict::Allow => {
                tx.audit(
                    &who.actor(),
                    "action.authorized",
                    &subject,
                    Some(session.id),
                    summary,
                )
                .await?;
                authorized_action(args, usd_value)
            }
            Verdict::RequireApproval { reason, allowed } => {
                let id = Uuid::new_v5(&ctx.execution_id, &ctx.idx.to_be_bytes());
                if approvals::get(tx.conn(), who.tenant_id, id)
                    .await?
                    .is_none()
                {
                    let now = tx.now();
                    let request = ApprovalRecord {
                        id,
                        tenant_id: who.tenant_id,
                        session_id: session.id,
                        payment_id: None,
                        tool: tool.to_owned(),
                        args: args.clone(),
                        edited_args: None,
                        reason,
                        usd_value,
                        allowed_decisions: allowed,
                        status: ApprovalStatus::Pending,
                        requested_by: who.key_id,
                        deadline: now
                            + Duration::seconds(
                                rules.rules.approval_timeout(&session.config).into(),
                            ),
                        decided_by: None,
                        decided_at: None,
                        decision_note: None,
                        consumed_at: None,
                        created_at: now,
                    };
                    approvals::insert(&mut tx, &request).await?;
                    tx.audit(
                        &who.actor(),
                        "approval.requested",
                        &format!("approval:{id}"),
                        Some(session.id),
                        summary,
                    )
                    .await?;
                    let view =
                        serde_json::to_value(ApprovalView::from(request)).expect("views serialize");
                    tx.event("approval_required", Some(session.id), view)
                        .await?;
                }
                StepOutcome::AwaitingApproval {
                    approval_id: id,
                    payment_id: None,
                }
            }
        };
        self.publish(tx.commit().await?);
        Ok(outcome)
    }
}
