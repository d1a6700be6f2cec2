//! The guard: every payment an agent asks for is priced in USD, checked against its session's policy and
//! budget, and then allowed, sent to a person, or denied, in one transaction with its audit entry and event.

use crate::breaker::Count;
use crate::budget::{self, Booking, Move};
use crate::context::{DecisionContext, history_window, payee_history};
use crate::policies;
use crate::pricing::Pricing;
use crate::views::{ApprovalView, BudgetView, PaymentView};
use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, Utc};
use paygent_domain::PolicyRules;
use paygent_domain::SessionState;
use paygent_domain::audit::AuditAction;
use paygent_domain::budget::OnBudgetExceeded;
use paygent_domain::event::EventKind;
use paygent_domain::judgement::{DenyReason, Findings, Fired, Judgement, judge};
use paygent_domain::payment::{PaymentIntent, Recipient};
use paygent_domain::quorum::quorum_for;
use paygent_domain::rules::{NewPayee, Refusal};
use paygent_domain::standing::covers;
use paygent_domain::swap::{SwapAsked, SwapTerms};
use paygent_domain::velocity::{Freeze, FreezeReason, Trip};
use paygent_domain::{Decimal, DecisionKind, PaymentStatus, Principal, Verdict};
use paygent_store::WriteTx;
use paygent_store::approvals::{self, ApprovalRecord, NewRequest};
use paygent_store::payments::{self, PayeeHistory, PaymentRecord};
use paygent_store::policies::PolicyRecord;
use paygent_store::sessions::SessionRecord;
use paygent_store::standing::{self, StandingRecord};
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
    /// For a swap (the recipient is then the exchange's router): its terms as quoted.
    pub swap: Option<SwapTerms>,
}

/// The guard's answer. `replayed` is true when an idempotency key returned an earlier payment.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub payment: PaymentView,
    pub replayed: bool,
}

impl PaymentRequest {
    /// Identifies the request's content, so a reused idempotency key with other content is caught. A swap's
    /// quote is not its content (a retry quotes again): what it buys and its slippage bound are.
    fn fingerprint(&self) -> String {
        let mut body = json!([
            self.session_id,
            self.amount,
            self.currency,
            self.recipient,
            self.description
        ]);
        if let (Some(t), Some(parts)) = (&self.swap, body.as_array_mut()) {
            parts.push(json!([t.dex, t.to, t.max_slippage_bps]));
        }
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
    /// Runs a payment request through the guard. Boxed, as `decide`: the guard's future is kilobytes, and
    /// every future that awaits it in place (a handler's, which axum moves several times a request) is copied
    /// whole each time it moves.
    pub async fn submit_payment(&self, who: &Principal, req: PaymentRequest) -> Result<Submitted> {
        Box::pin(self.guard(who, req, None)).await
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

    /// The request's payment, its idempotency key's shape checked, parsed and priced.
    fn priced(&self, req: &PaymentRequest) -> Result<(PaymentIntent, Decimal)> {
        if let Some(k) = &req.idempotency_key {
            validate_idempotency_key(k)?;
        }
        let mut intent = PaymentIntent::new(
            &self.prices,
            &req.amount,
            &req.currency,
            &req.recipient,
            req.description.clone(),
        )?;
        if let Some(terms) = &req.swap {
            intent = intent.swapping(terms.clone())?;
        }
        let usd_value = self.prices.usd_value(&intent.money)?;
        Ok((intent, usd_value))
    }

    /// What the guard would do with a payment request now, and every check that found something: the same
    /// reads under the same lock, and nothing written, booked or announced. Agents evaluate on their own
    /// sessions, people on the tenant's.
    pub async fn evaluate_payment(
        &self,
        who: &Principal,
        req: PaymentRequest,
    ) -> Result<Evaluation> {
        let (asked, _) = self.priced(&req)?;
        let pricing = self.pricing(who, &req, &asked).await?;
        let intent = match &pricing {
            Pricing::Price(at) => at,
            Pricing::AsAsked | Pricing::Refused(_) => &asked,
        };
        let usd_value = self.prices.usd_value(&intent.money)?;
        let mut tx = self.begin_about(who, req.session_id).await?;
        let (session, policy) = in_force(&mut tx, who, req.session_id).await?;
        let mut filing = Filing::new(who, &session, &policy, (intent, usd_value), &req, tx.now());
        let findings = filing.findings(&mut tx).await?;
        drop(tx);
        let rules = findings.fired();
        let budget = self.budget_view(&session, self.now()).await?;
        if let Pricing::Refused(why) = pricing {
            return Ok(Evaluation::refused(why, usd_value, budget));
        }
        Ok(Evaluation::new(
            judge(findings),
            rules,
            intent,
            usd_value,
            budget,
        ))
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
        let started = std::time::Instant::now();
        let (intent, _) = self.priced(&req)?;
        // A retry is answered before a resource is asked its price again (the transaction checks it anyway).
        if matches!(intent.recipient, Recipient::Url(_))
            && let Some(earlier) = self.earlier(self.store.reader(), who, &req).await?
        {
            return self.replay(earlier).await;
        }
        let pricing = match refusal {
            Some(why) => Pricing::Refused(why.to_owned()),
            None => self.pricing(who, &req, &intent).await?,
        };
        let (priced, max) = match &pricing {
            Pricing::Price(at) => (at, Some(intent.money.amount)),
            Pricing::AsAsked | Pricing::Refused(_) => (&intent, None),
        };
        let mut tx = self.begin_paying(who, req.session_id, priced).await?;
        if let Some(earlier) = self.earlier(tx.conn(), who, &req).await? {
            // The earlier request may have been written a moment ago in the same group: answered once durable.
            self.publish(tx.commit().await?);
            return self.replay(earlier).await;
        }
        let (session, policy) = in_force(&mut tx, who, req.session_id).await?;
        self.judged(&session, &policy);
        let usd_value = self.prices.usd_value(&priced.money)?;
        let wallet = session.wallet_address.as_deref();
        let network = self.network_for(priced.tool().as_str(), &priced.money.currency, wallet);
        let mut filing = Filing::new(who, &session, &policy, (priced, usd_value), &req, tx.now())
            .on_network(network)
            .up_to(max);
        match &pricing {
            Pricing::Refused(why) => filing.fail(&mut tx, why).await?,
            Pricing::AsAsked | Pricing::Price(_) => {
                let findings = filing.findings(&mut tx).await?;
                filing.fired = findings.fired();
                filing.record(&mut tx, judge(findings)).await?;
            }
        }
        let payment = filing.payment;
        self.publish(tx.commit().await?);
        let tool = priced.tool().as_str();
        self.metrics
            .guard_judged(payment.status, tool, started.elapsed());
        Ok(Submitted {
            payment: self.carry_out(payment).await?,
            replayed: false,
        })
    }

    /// The payment an earlier request with this one's idempotency key made, if any. Keys are the tenant's, but
    /// a payment is its requester's: another key's is neither shown nor carried out, whatever it names.
    async fn earlier(
        &self,
        db: paygent_store::Db<'_>,
        who: &Principal,
        req: &PaymentRequest,
    ) -> Result<Option<PaymentRecord>> {
        let Some(key) = &req.idempotency_key else {
            return Ok(None);
        };
        let Some(earlier) = payments::by_idempotency_key(db, who.tenant_id, key).await? else {
            return Ok(None);
        };
        if earlier.requested_by != who.key_id || earlier.request_hash != req.fingerprint() {
            return Err(EngineError::Invalid(
                "idempotency_key was already used for a different payment request".into(),
            ));
        }
        Ok(Some(earlier))
    }

    /// An earlier payment, answered again: an authorized one whose rail run was interrupted is finished now,
    /// still only once.
    async fn replay(&self, earlier: PaymentRecord) -> Result<Submitted> {
        Ok(Submitted {
            payment: self.carry_out(earlier).await?,
            replayed: true,
        })
    }
}

/// The session a request names, as `who` may reach it, and the policy in force for it. Read under the tenant's
/// write lock: a kill, budget or policy change committed a moment ago applies.
async fn in_force(
    tx: &mut WriteTx,
    who: &Principal,
    session_id: Uuid,
) -> Result<(SessionRecord, PolicyRecord)> {
    policies::session_in_force(tx, session_id)
        .await?
        .filter(|(s, _)| who.reaches(s.created_by))
        .ok_or(EngineError::NotFound("session"))
}

/// What the guard would do with a payment.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EvaluatedVerdict {
    /// It would go at once.
    Allow,
    /// A person would decide.
    RequireApproval,
    Deny,
}

/// What the guard would do with a payment: `POST /payments/evaluate`'s answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Evaluation {
    pub verdict: EvaluatedVerdict,
    /// For a denial, the payment's `reason` (`killed`, `policy_denied`, `budget_exceeded`, or in words why an
    /// x402 resource's price cannot be paid); for a person, why.
    pub reason: Option<String>,
    /// Every check that found something, strongest first; empty when it would go at once.
    pub rules: Vec<Fired>,
    #[schema(value_type = String, example = "25.00")]
    pub usd_value: Decimal,
    /// Today's budget as it would be: spent grows by an allowed payment, reserved by one sent to a person.
    pub budget_after: BudgetView,
}

impl Evaluation {
    /// A payment that would fail before the guard, for `why` (a price above the maximum): nothing booked.
    fn refused(why: String, usd_value: Decimal, budget: BudgetView) -> Self {
        Evaluation {
            verdict: EvaluatedVerdict::Deny,
            reason: Some(why),
            rules: Vec::new(),
            usd_value,
            budget_after: budget,
        }
    }

    fn new(
        judgement: Judgement,
        rules: Vec<Fired>,
        intent: &PaymentIntent,
        usd_value: Decimal,
        mut budget: BudgetView,
    ) -> Self {
        let (amount, currency) = (intent.money.amount, intent.money.currency.as_str());
        let (verdict, reason) = match judgement {
            Judgement::Allow => {
                budget.book(currency, amount, usd_value, false);
                (EvaluatedVerdict::Allow, None)
            }
            Judgement::Approve { reason, .. } => {
                budget.book(currency, amount, usd_value, true);
                (EvaluatedVerdict::RequireApproval, Some(reason))
            }
            Judgement::Deny { reason, .. } => {
                (EvaluatedVerdict::Deny, Some(reason.as_str().to_owned()))
            }
            Judgement::Trip(_) => {
                let reason = DenyReason::CircuitBreaker.as_str().to_owned();
                (EvaluatedVerdict::Deny, Some(reason))
            }
            Judgement::Standing(_) => {
                budget.book(currency, amount, usd_value, false);
                (EvaluatedVerdict::Allow, None)
            }
        };
        Evaluation {
            verdict,
            reason,
            rules,
            usd_value,
            budget_after: budget,
        }
    }
}

/// One payment on its way through the guard: what it is, and the one place its judgement becomes rows, audit
/// entries and events.
struct Filing<'a> {
    who: &'a Principal,
    session: &'a SessionRecord,
    policy: &'a PolicyRecord,
    payment: PaymentRecord,
    booking: Booking,
    /// What the audit entry and event say about it.
    summary: Value,
    /// Every check that found something about it, for the person who may be asked.
    fired: Vec<Fired>,
    /// The circuit breaker's reads, to mark the payment if it counts.
    count: Option<Count>,
    /// The standing approval that covers it, if one does.
    cover: Option<StandingRecord>,
    /// The payee's history, when it was read with the standing approvals.
    history: Option<PayeeHistory>,
}

impl<'a> Filing<'a> {
    /// The payment as asked, authorized until judged, and its booking on the session's day and the periods of
    /// the key whose policy limits it (the session's creator).
    fn new(
        who: &'a Principal,
        session: &'a SessionRecord,
        policy: &'a PolicyRecord,
        (intent, usd_value): (&PaymentIntent, Decimal),
        req: &PaymentRequest,
        now: DateTime<Utc>,
    ) -> Self {
        let booking = Booking {
            session_id: session.id,
            day: session.config.budget.day(now).0.to_string(),
            currency: intent.money.currency.clone(),
            amount: intent.money.amount,
            usd: usd_value,
            agent: who.key_id,
            payee: intent.recipient.payee(),
            at: now,
            // Booked on the key's periods only under limits: what a payment booked is what it releases later.
            limits: (!policy.rules.limits.is_empty()).then_some(session.created_by),
        };
        let payment = PaymentRecord {
            // A v7 id of the payment's own time: a time window of payments is a range of ids.
            id: paygent_domain::time::uuid_at(now),
            tenant_id: who.tenant_id,
            session_id: session.id,
            tool: intent.tool().as_str().to_owned(),
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
            request_hash: req.fingerprint(),
            requested_by: who.key_id,
            budget_day: Some(booking.day.clone()),
            detail: None,
            limits_key: booking.limits,
            max_amount: None,
            swap: intent.swap.clone(),
            created_at: now,
            updated_at: now,
        };
        let summary = json!({
            "payment_id": payment.id,
            "tool": payment.tool,
            "args": intent.args(),
            "usd_value": usd_value.to_string(),
        });
        Filing {
            who,
            session,
            policy,
            payment,
            booking,
            summary,
            fired: Vec::new(),
            count: None,
            cover: None,
            history: None,
        }
    }

    /// The network a rail would pay it on: the payment may be signed for that network only, and an approval of
    /// it binds that network.
    fn on_network(mut self, network: Option<String>) -> Self {
        if let Some(n) = &network {
            self.summary["network"] = json!(n);
        }
        self.payment.network = network;
        self
    }

    /// For a resource that named its price: the most the agent would pay.
    fn up_to(mut self, max: Option<Decimal>) -> Self {
        if let Some(m) = max {
            self.summary["max_amount"] = json!(m.to_string());
        }
        self.payment.max_amount = max;
        self
    }

    /// Gathers the findings as the transaction sees them, under the tenant's lock.
    async fn findings(&mut self, tx: &mut WriteTx) -> Result<Findings> {
        let tripped = self.velocity(tx).await?;
        let (session, policy) = (self.session, self.policy);
        let (rules, p) = (&policy.rules, &self.payment);
        let args = &self.summary["args"];
        let tools = rules.for_session(&session.config);
        let stopped = if tx.kill_switch().is_some() {
            Some("the emergency stop is engaged")
        } else if session.state == SessionState::Killed {
            Some("the session was killed")
        } else {
            None
        };
        let frozen = session.freeze();
        let over_limit = budget::check_limits(tx, rules, &self.booking).await?;
        let budget = &session.config.budget;
        let over_budget = budget::check(tx, budget, &self.booking).await?.err();
        let wallet = session.wallet_address.as_deref();
        let ungranted = wallet.filter(|w| !rules.grants_wallet(w)).map(|w| Refusal {
            rule: "wallets",
            detail: format!("the policy does not let this session pay from {w}"),
        });
        let (first, verdict) = self
            .first_payment(tx, tools.evaluate(&p.tool, p.usd_value, args))
            .await?;
        let swap = p.swap.as_ref().and_then(|terms| {
            let (from, router) = (&p.currency, &p.recipient);
            rules.swaps.refusal(&SwapAsked {
                from,
                router,
                terms,
            })
        });
        let refusal = rules
            .refusal(p.usd_value, args)
            .or(swap)
            .or(ungranted)
            .or(first);
        let only_rules_ask = matches!(verdict, Verdict::RequireApproval { .. })
            && refusal.is_none()
            && over_limit.is_none()
            && over_budget.is_none();
        let standing = self.standing(tx, only_rules_ask).await?;
        let p = &self.payment;
        Ok(Findings {
            stopped,
            frozen: frozen.map(|f| format!("the session is frozen by {}: {}", f.rule, f.detail)),
            tripped,
            standing,
            refusal,
            over_limit: over_limit.map(|detail| (detail, rules.over_limit)),
            // The strictest of session and policy: a policy that says deny denies.
            over_budget: over_budget.map(|e| {
                let route = match rules.on_budget_exceeded {
                    OnBudgetExceeded::Deny => OnBudgetExceeded::Deny,
                    OnBudgetExceeded::RequireApproval => budget.on_budget_exceeded,
                };
                (e, route)
            }),
            verdict,
            allowed: tools.allowed_for(&p.tool),
        })
    }

    /// A standing approval of the session for this payee that covers the payment, looked for only when its tool
    /// rules alone would send it to a person, and never for a value that needs a quorum. Kept, to take from.
    /// The payee's history, which that person would be shown, comes in the same round trip.
    async fn standing(&mut self, tx: &mut WriteTx, only_rules_ask: bool) -> Result<Option<Uuid>> {
        let rules = &self.policy.rules;
        let one_person = quorum(rules, self.payment.usd_value).0 <= 1;
        if !only_rules_ask || !one_person {
            return Ok(None);
        }
        let (usd, (since, limit)) = (self.payment.usd_value, history_window(tx.now()));
        let scope = (self.session.id, self.booking.payee.as_str());
        let paid = (self.payment.recipient.as_str(), since, limit);
        let (found, history) = standing::in_force_with_history(tx, scope, paid).await?;
        self.history = Some(history);
        self.cover = found
            .into_iter()
            .find(|s| covers(s.max_usd, s.used_usd, usd));
        Ok(self.cover.as_ref().map(|s| s.id))
    }

    /// The velocity rule this payment would break, read under the tenant's lock (requests judged after it see
    /// its marks); keeps the reads to mark the payment if it counts.
    async fn velocity(&mut self, tx: &mut WriteTx) -> Result<Option<Trip>> {
        let rules = &self.policy.rules.velocity;
        if rules.is_empty() {
            return Ok(None);
        }
        let p = &self.payment;
        let (count, trip) = Count::read(tx, rules, (self.who.key_id, self.session), p).await?;
        self.count = Some(count);
        Ok(trip)
    }

    /// Applies the policy's rule for a key's first payment to a payee: a refusal, or a person instead of
    /// `verdict`. Looks at the key's history only when the rule is not `allow`.
    async fn first_payment(
        &self,
        tx: &mut WriteTx,
        verdict: Verdict,
    ) -> Result<(Option<Refusal>, Verdict)> {
        let (rule, payee) = (self.policy.rules.payees.new_payee, &self.booking.payee);
        if rule == NewPayee::Allow
            || payments::known_payee(tx.conn(), self.session.created_by, payee).await?
        {
            return Ok((None, verdict));
        }
        let why = format!("the first payment to {payee}");
        Ok(match (rule, verdict) {
            (NewPayee::Deny, verdict) => {
                let refusal = Refusal {
                    rule: "payees.new_payee",
                    detail: format!("{why} is denied"),
                };
                (Some(refusal), verdict)
            }
            (_, Verdict::Allow) => {
                let allowed = self
                    .policy
                    .rules
                    .for_session(&self.session.config)
                    .allowed_for(&self.payment.tool);
                let reason = format!("{why} needs a person");
                (None, Verdict::RequireApproval { reason, allowed })
            }
            (_, verdict) => (None, verdict),
        })
    }

    async fn record(&mut self, tx: &mut WriteTx, judgement: Judgement) -> Result<()> {
        match judgement {
            Judgement::Deny {
                reason,
                detail,
                rule,
            } => self.deny(tx, reason, detail, rule).await,
            Judgement::Approve { reason, allowed } => self.ask(tx, reason, allowed).await,
            Judgement::Allow => self.allow(tx).await,
            Judgement::Trip(trip) => self.trip(tx, trip).await,
            Judgement::Standing(id) => self.allow_standing(tx, id).await,
        }
    }

    /// Allows a payment a standing approval covers, taking its value from it (a compare-and-set under the
    /// tenant's lock), audited as allowed by it.
    async fn allow_standing(&mut self, tx: &mut WriteTx, id: Uuid) -> Result<()> {
        let cover = self.cover.take().filter(|s| s.id == id);
        let taken = match &cover {
            Some(s) => standing::take(tx, s, self.payment.usd_value).await?,
            None => false,
        };
        if !taken {
            return Err(EngineError::Conflict(
                "the standing approval changed meanwhile; ask again".into(),
            ));
        }
        self.summary["standing_approval"] = json!(id);
        self.allow(tx).await
    }

    /// Denies the payment that broke a velocity rule and freezes its session, in the same transaction.
    async fn trip(&mut self, tx: &mut WriteTx, trip: Trip) -> Result<()> {
        let freeze = Freeze {
            reason: FreezeReason::CircuitBreaker,
            rule: trip.name(),
            detail: trip.detail,
            payment_id: self.payment.id,
            tripped_by: self.who.key_id,
            at: tx.now(),
        };
        let reason = DenyReason::CircuitBreaker;
        self.deny(tx, reason, freeze.detail.clone(), Some(&freeze.rule))
            .await?;
        crate::breaker::freeze(tx, self.who, self.session.id, freeze).await
    }

    /// Writes the audit entry, the last use of the summary.
    async fn audit(&mut self, tx: &mut WriteTx, action: AuditAction, subject: &str) -> Result<()> {
        let (actor, session) = (self.who.actor(), Some(self.session.id));
        let summary = std::mem::take(&mut self.summary);
        Ok(tx.audit(&actor, action, subject, session, summary).await?)
    }

    fn subject(&self) -> String {
        format!("payment:{}", self.payment.id)
    }

    /// A payment that failed before it could be guarded: kept, with its reason, and nothing booked.
    async fn fail(&mut self, tx: &mut WriteTx, why: &str) -> Result<()> {
        self.payment.status = PaymentStatus::Failed;
        self.payment.reason = Some(why.into());
        payments::insert(tx, &self.payment).await?;
        self.summary["reason"] = json!(why);
        self.audit(tx, AuditAction::PaymentFailed, &self.subject())
            .await
    }

    async fn deny(
        &mut self,
        tx: &mut WriteTx,
        reason: DenyReason,
        detail: String,
        rule: Option<&str>,
    ) -> Result<()> {
        let detail = match rule {
            Some(rule) => format!("{detail} (policy {:?}, rule {rule})", self.policy.name),
            None => detail,
        };
        self.payment.status = PaymentStatus::Denied;
        self.payment.reason = Some(reason.as_str().into());
        self.payment.detail = Some(detail.clone());
        payments::insert(tx, &self.payment).await?;
        self.summary["reason"] = json!(reason.as_str());
        self.summary["detail"] = json!(detail);
        if let Some(rule) = rule {
            self.summary["rule"] = json!(rule);
            self.summary["policy"] = json!({"id": self.policy.id, "version": self.policy.version});
        }
        if reason != DenyReason::BudgetExceeded {
            return self
                .audit(tx, AuditAction::PaymentDenied, &self.subject())
                .await;
        }
        let (session, summary) = (Some(self.session.id), self.summary.clone());
        self.audit(tx, AuditAction::BudgetExceeded, &self.subject())
            .await?;
        Ok(tx
            .event(EventKind::BudgetExceeded, session, summary)
            .await?)
    }

    /// Files the approval request a person decides, holding the payment's amount on the budget meanwhile.
    async fn ask(
        &mut self,
        tx: &mut WriteTx,
        reason: String,
        allowed: Vec<DecisionKind>,
    ) -> Result<()> {
        let p = &self.payment;
        let new = NewRequest {
            id: Uuid::now_v7(),
            tenant_id: p.tenant_id,
            session_id: p.session_id,
            payment_id: Some(p.id),
            tool: p.tool.clone(),
            args: self.summary["args"].clone(),
            network: p.network.clone(),
            reason: format!(
                "{reason} (policy {:?} v{})",
                self.policy.name, self.policy.version
            ),
            usd_value: p.usd_value,
            allowed_decisions: allowed,
            requested_by: self.who.key_id,
            timeout_seconds: self.policy.rules.approval_timeout(&self.session.config),
            quorum: quorum(&self.policy.rules, p.usd_value),
            escalation: self.policy.rules.escalation.clone(),
        };
        let mut request = ApprovalRecord::pending(new, tx.now());
        let context = self.context(tx).await?;
        self.payment.status = PaymentStatus::PendingApproval;
        self.payment.approval_id = Some(request.id);
        payments::insert(tx, &self.payment).await?;
        budget::book(tx, &self.booking, Move::Reserve).await?;
        self.mark(tx).await?;
        request.context = Some(self.with_budget(tx, context).await?);
        self.summary["reason"] = json!(request.reason);
        self.summary["deadline"] = json!(paygent_domain::time::format(request.deadline));
        let summary = std::mem::take(&mut self.summary);
        file_request(tx, self.who, self.policy, request, summary).await
    }

    /// What the person asked needs to decide, but the budget: read before this payment's writes are held, so
    /// its reads (the payee's history) do not send them first, in a round trip of their own, under the lock.
    async fn context(&mut self, tx: &mut WriteTx) -> Result<DecisionContext> {
        let history = match self.history.take() {
            Some(read) => read,
            None => payee_history(tx, &self.payment.recipient).await?,
        };
        let (who, p) = (self.who.key_id, &self.payment);
        let fired = std::mem::take(&mut self.fired);
        let about = (self.session, self.policy);
        let label = self.policy.rules.payees.label_of(&self.booking.payee);
        let context = DecisionContext::gather(tx, who, about, fired, p.description.clone()).await?;
        Ok(context.with_payee(&history, label))
    }

    /// `context` with the budget as this payment's reservation leaves it.
    async fn with_budget(&self, tx: &mut WriteTx, context: DecisionContext) -> Result<Value> {
        let now = tx.now();
        let budget = budget::view_in(tx, self.session, now).await?;
        let context = DecisionContext {
            budget_after: Some(budget),
            ..context
        };
        Ok(serde_json::to_value(context).expect("a context serializes"))
    }

    /// Counts the payment for the circuit breaker, if its policy has velocity rules.
    async fn mark(&self, tx: &mut WriteTx) -> Result<()> {
        match &self.count {
            Some(count) => count.mark(tx).await,
            None => Ok(()),
        }
    }

    async fn allow(&mut self, tx: &mut WriteTx) -> Result<()> {
        self.mark(tx).await?;
        payments::insert(tx, &self.payment).await?;
        if self.policy.rules.payees.new_payee != NewPayee::Allow {
            payments::remember_payee(tx, self.session.created_by, &self.booking.payee).await?;
        }
        budget::book(tx, &self.booking, Move::Spend).await?;
        self.audit(tx, AuditAction::PaymentAuthorized, &self.subject())
            .await
    }
}

/// How many people, and from which groups, must approve a request worth `usd` under `rules`.
fn quorum(rules: &PolicyRules, usd: Decimal) -> (u32, Vec<String>) {
    match quorum_for(&rules.quorums, usd) {
        Some(q) => (q.approvals_required, q.groups.clone()),
        None => (1, Vec::new()),
    }
}

/// The one place a request for people is filed: held to the key's cap on requests waiting (the policy's
/// `max_pending_approvals`), stored, audited with `summary` and the action's digest, and announced.
async fn file_request(
    tx: &mut WriteTx,
    who: &Principal,
    policy: &PolicyRecord,
    request: ApprovalRecord,
    mut summary: Value,
) -> Result<()> {
    let most = policy.rules.max_pending_approvals;
    let waiting = approvals::pending_of_key(tx, who.key_id).await?;
    if waiting >= i64::from(most) {
        return Err(EngineError::TooMany(format!(
            "{waiting} of this key's approval requests already wait on people, the most policy {:?} allows \
             (max_pending_approvals); decide or cancel some first",
            policy.name
        )));
    }
    approvals::insert(tx, &request).await?;
    summary["digest"] = Value::String(request.digest());
    let subject = format!("approval:{}", request.id);
    let session = Some(request.session_id);
    tx.audit(
        &who.actor(),
        AuditAction::ApprovalRequested,
        &subject,
        session,
        summary,
    )
    .await?;
    let view = serde_json::to_value(ApprovalView::from(request)).expect("views serialize");
    Ok(tx.event(EventKind::ApprovalRequired, session, view).await?)
}
