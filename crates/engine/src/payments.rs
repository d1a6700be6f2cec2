//! Executing approved payments (exactly once) and recording what agents report back.

use crate::budget::{self, Booking, Move};
use crate::views::PaymentView;
use crate::{EngineError, Paygent, Result, require};
use paygent_domain::audit::AuditAction;
use paygent_domain::judgement::DenyReason;
use paygent_domain::payment::PaymentIntent;
use paygent_domain::{PaymentStatus, Principal};
use paygent_store::WriteTx;
use paygent_store::approvals::{self, ApprovalRecord};
use paygent_store::attempts;
use paygent_store::payments::{self, PaymentRecord, Terms, Transition};
use serde_json::json;
use uuid::Uuid;

fn validate_tx_hash(h: &str) -> Result<()> {
    let ok = h
        .strip_prefix("0x")
        .is_some_and(|x| x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(
            "tx_hash must be 0x and 64 hex digits".into(),
        ))
    }
}

/// Denies a payment still waiting on a person and releases what it reserved. Returns whether it was waiting.
pub(crate) async fn deny_pending(
    tx: &mut WriteTx,
    payment_id: Uuid,
    reason: DenyReason,
) -> Result<bool> {
    let moved = payments::transition(
        tx,
        Transition {
            reason: Some(reason.as_str()),
            ..Transition::new(
                payment_id,
                PaymentStatus::PendingApproval,
                PaymentStatus::Denied,
            )
        },
    )
    .await?;
    if moved && let Some(booking) = Booking::of(&reload(tx, payment_id).await?) {
        budget::book(tx, &booking, Move::Release).await?;
    }
    Ok(moved)
}

/// What a list shows its reader: an agent sees only what hangs off the sessions it created.
pub(crate) fn scope(who: &Principal, page: crate::Page) -> paygent_store::Scope {
    paygent_store::Scope {
        tenant_id: who.tenant_id,
        session_id: page.session_id,
        owner: (!who.can_decide()).then_some(who.key_id),
        after: page.after,
        limit: page.limit.clamp(1, crate::MAX_PAGE),
    }
}

/// Records an approved payment as authorized on the terms people approved: its payee remembered (a person let
/// it be paid, so from now on it is known to the sessions of `owner`, the key that owns the session), the audit
/// entry, and its reservation settled into the budget's spend.
async fn authorized(
    tx: &mut WriteTx,
    (who, owner): (&Principal, Uuid),
    (request, payment_id): (&ApprovalRecord, Uuid),
    intent: &PaymentIntent,
    terms: &Terms,
) -> Result<PaymentRecord> {
    payments::remember_payee(tx, owner, &intent.recipient.payee()).await?;
    let data = json!({"approval_id": request.id, "tool": request.tool, "args": request.effective_args(),
        "digest": request.digest(), "network": request.network, "usd_value": terms.usd_value.to_string()});
    let subject = format!("payment:{payment_id}");
    let session = Some(request.session_id);
    tx.audit(
        &who.actor(),
        AuditAction::PaymentAuthorized,
        &subject,
        session,
        data,
    )
    .await?;
    let payment = reload(tx, payment_id).await?;
    if let Some(booking) = Booking::of(&payment) {
        budget::book(tx, &booking, Move::Settle).await?;
    }
    Ok(payment)
}

/// The payment as the transaction sees it now.
async fn reload(tx: &mut WriteTx, id: Uuid) -> Result<PaymentRecord> {
    let tenant_id = tx.tenant_id();
    payments::get(tx.conn(), tenant_id, id)
        .await?
        .ok_or(EngineError::NotFound("payment"))
}

impl Paygent {
    /// One payment, with what its rail brought back (block, settlement, an x402 resource's answer) if it paid.
    pub async fn payment(&self, who: &Principal, id: Uuid) -> Result<PaymentView> {
        let view = self.payment_view(who.tenant_id, id).await?;
        self.reach(who, view.session_id, "payment").await?;
        Ok(view)
    }

    pub(crate) async fn payment_view(&self, tenant_id: Uuid, id: Uuid) -> Result<PaymentView> {
        let mut view: PaymentView = payments::get(self.store.reader(), tenant_id, id)
            .await?
            .map(Into::into)
            .ok_or(EngineError::NotFound("payment"))?;
        if let Some(attempt) = attempts::get(self.store.reader(), id).await? {
            // A transaction's hash is known once it is signed: shown while its outcome is not.
            view.tx_hash = view.tx_hash.or(attempt.tx_hash);
            view.receipt = attempt.receipt;
            view.refusal = attempt.refusal.and_then(|r| serde_json::from_value(r).ok());
        }
        Ok(view)
    }

    /// Payments, newest first, optionally of one session: the tenant's for people, an agent's sessions' for it;
    /// the page after the payment `after`.
    pub async fn payments(&self, who: &Principal, page: crate::Page) -> Result<Vec<PaymentView>> {
        let list = payments::list(self.store.reader(), scope(who, page)).await?;
        Ok(list.into_iter().map(Into::into).collect())
    }

    /// Carries out an approved (or edited) request's payment, exactly once, with the arguments the person
    /// approved. A repeat returns the same payment; the caller can never supply arguments.
    pub async fn execute_approved(
        &self,
        who: &Principal,
        approval_id: Uuid,
    ) -> Result<PaymentView> {
        require(
            who.can_request_payments(),
            "only agents and admins execute payments",
        )?;
        let asked = self.load_approval(who.tenant_id, approval_id).await?;
        self.reach(who, asked.session_id, "approval request")
            .await?;
        let payment_id = asked
            .payment_id
            .ok_or_else(|| EngineError::Conflict("this request is not a payment".into()))?;
        let mut tx = self
            .begin_about_request(who, asked.session_id, approval_id)
            .await?;
        // What runs is the request as it stands under the lock: a decision (an edit) that landed after the read
        // above is the one carried out, or refused.
        let request = crate::approvals::current(&mut tx, approval_id).await?;
        let (intent, terms) = self.approved_terms(&request)?;
        let session = crate::kill::refuse_if_stopped(&mut tx, request.session_id).await?;
        let wallet = session.wallet_address.as_deref();
        let network = self.network_for(&request.tool, &terms.currency, wallet);
        // An undecided request is refused below, by its status, with what it is.
        if request.status.is_consumable() && !request.approves(&intent.args(), network.as_deref()) {
            return Err(EngineError::Conflict(
                "what would be paid is not the action people approved: its digest differs".into(),
            ));
        }
        if !approvals::consume(&mut tx, &request).await? {
            return self.executed_before(tx, &request, payment_id).await;
        }
        // A repeat answers with what was paid above; a first run waits for the session to be unfrozen.
        crate::breaker::refuse_if_frozen(&session, "the approved payment runs")?;
        let moved = payments::transition(
            &mut tx,
            Transition {
                terms: Some(&terms),
                network: network.as_deref(),
                ..Transition::new(
                    payment_id,
                    PaymentStatus::PendingApproval,
                    PaymentStatus::Authorized,
                )
            },
        )
        .await?;
        if !moved {
            let now = reload(&mut tx, payment_id).await?;
            return Err(EngineError::Conflict(format!(
                "the payment is {} ({}), no longer awaiting approval",
                now.status.as_str(),
                now.reason.as_deref().unwrap_or("no reason")
            )));
        }
        let approved = (&request, payment_id);
        let by = (who, session.created_by);
        let payment = authorized(&mut tx, by, approved, &intent, &terms).await?;
        self.publish(tx.commit().await?);
        self.carry_out(payment).await
    }

    /// What a request's (edited) arguments pay, priced now.
    fn approved_terms(&self, request: &ApprovalRecord) -> Result<(PaymentIntent, Terms)> {
        let intent = PaymentIntent::from_args(&self.prices, request.effective_args())?;
        let terms = Terms {
            usd_value: self.prices.usd_value(&intent.money)?,
            amount: intent.money.amount,
            currency: intent.money.currency.clone(),
            recipient: intent.recipient.as_str().to_owned(),
            description: intent.description.clone(),
        };
        Ok((intent, terms))
    }

    /// A request whose one-time right was taken already: its payment as it stands (finished now if a run of it
    /// was interrupted), or why there is nothing to execute. The payment is read in `tx`, which writes nothing
    /// but is committed before the answer: a run that took the right a moment before in the same group is then
    /// durable, and is what this one answers, not the payment as it was before it.
    async fn executed_before(
        &self,
        mut tx: WriteTx,
        request: &ApprovalRecord,
        payment_id: Uuid,
    ) -> Result<PaymentView> {
        if request.consumed_at.is_none() {
            return Err(EngineError::Conflict(format!(
                "the request is {}, not approved",
                request.status.as_str()
            )));
        }
        let payment = reload(&mut tx, payment_id).await?;
        self.publish(tx.commit().await?);
        self.carry_out(payment).await
    }

    /// An agent reports how an `authorized` payment it made itself ended.
    pub async fn report_outcome(
        &self,
        who: &Principal,
        payment_id: Uuid,
        outcome: PaymentStatus,
        tx_hash: Option<&str>,
    ) -> Result<PaymentView> {
        require(
            who.can_request_payments(),
            "only agents and admins report payment outcomes",
        )?;
        if !matches!(outcome, PaymentStatus::Executed | PaymentStatus::Failed) {
            return Err(EngineError::Invalid(
                "status must be executed or failed".into(),
            ));
        }
        if let Some(h) = tx_hash {
            validate_tx_hash(h)?;
        }
        let current = self.reportable(who, payment_id).await?;
        let mut tx = self.begin_as(who).await?;
        let moved = payments::transition(
            &mut tx,
            Transition {
                tx_hash,
                ..Transition::new(payment_id, PaymentStatus::Authorized, outcome)
            },
        )
        .await?;
        if !moved {
            let now = reload(&mut tx, payment_id).await?;
            if now.status == outcome && (tx_hash.is_none() || now.tx_hash.as_deref() == tx_hash) {
                // A repeat of a report made a moment ago in the same group: answered once that is durable.
                self.publish(tx.commit().await?);
                return Ok(now.into());
            }
            return Err(EngineError::Conflict(format!(
                "the payment is {}; only an authorized payment takes an outcome",
                now.status.as_str()
            )));
        }
        tx.audit(
            &who.actor(),
            AuditAction::payment_ended(outcome),
            &format!("payment:{payment_id}"),
            Some(current.session_id),
            json!({"reported": true, "tx_hash": tx_hash}),
        )
        .await?;
        let payment = reload(&mut tx, payment_id).await?;
        // A failure reported with a transaction may still have moved money: its spend stays booked.
        if outcome == PaymentStatus::Failed
            && tx_hash.is_none()
            && let Some(booking) = Booking::of(&payment)
        {
            budget::book(&mut tx, &booking, Move::Unspend).await?;
        }
        self.publish(tx.commit().await?);
        Ok(payment.into())
    }

    /// A payment whose outcome the caller may report: one it requested itself, and that no rail of Paygent's
    /// carries (a rail's outcome comes from the chain, never from the agent's word).
    async fn reportable(&self, who: &Principal, payment_id: Uuid) -> Result<PaymentView> {
        let current = self.payment(who, payment_id).await?;
        require(
            current.requested_by == who.key_id,
            "only the key that requested a payment reports its outcome",
        )?;
        let record = payments::get(self.store.reader(), who.tenant_id, payment_id)
            .await?
            .ok_or(EngineError::NotFound("payment"))?;
        if self.rail_for(&record).await?.is_some() {
            return Err(EngineError::Conflict(
                "a payment rail carries this payment: its outcome comes from the chain".into(),
            ));
        }
        Ok(current)
    }
}
