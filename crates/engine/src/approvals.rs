//! People's decisions on approval requests. Each decision is one conditional update in one transaction with
//! its audit entry and event: of any number of racing decisions, exactly one lands.

use crate::budget::{self, Booking, Move};
use crate::views::ApprovalView;
use crate::{EngineError, Paygent, Result, require};
use paygent_domain::action::action_digest;
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_domain::judgement::DenyReason;
use paygent_domain::payment::{PaymentIntent, check_edit_authority};
use paygent_domain::rules::NewPayee;
use paygent_domain::{ApprovalStatus, Decision, PaymentStatus, Principal};
use paygent_store::WriteTx;
use paygent_store::approvals::{self, ApprovalRecord, Decided};
use paygent_store::payments::{self, Terms, Transition};
use paygent_store::sessions;
use serde_json::{Value, json};
use uuid::Uuid;

impl Paygent {
    /// One request: people read the tenant's, an agent those on its own sessions (as its events carry them).
    pub async fn approval(&self, who: &Principal, id: Uuid) -> Result<ApprovalView> {
        let request = self.load_approval(who.tenant_id, id).await?;
        self.reach(who, request.session_id, "approval request")
            .await?;
        Ok(request.into())
    }

    /// Pending requests, oldest first.
    pub async fn pending_approvals(
        &self,
        who: &Principal,
        page: crate::Page,
    ) -> Result<Vec<ApprovalView>> {
        require(
            who.can_decide(),
            "only approvers and admins list approval requests",
        )?;
        let list =
            approvals::pending(self.store.reader(), crate::payments::scope(who, page)).await?;
        Ok(list.into_iter().map(Into::into).collect())
    }

    pub(crate) async fn load_approval(&self, tenant_id: Uuid, id: Uuid) -> Result<ApprovalRecord> {
        approvals::get(self.store.reader(), tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("approval request"))
    }

    /// Approves, rejects, or edits and approves a pending request. With `seen`, the digest of the action the
    /// person was shown, the decision lands only on that action.
    pub async fn decide(
        &self,
        who: &Principal,
        id: Uuid,
        decision: Decision,
        seen: Option<&str>,
    ) -> Result<ApprovalView> {
        require(
            who.can_decide(),
            "only approvers and admins decide approval requests",
        )?;
        let request = self.load_approval(who.tenant_id, id).await?;
        require(
            request.requested_by != who.key_id,
            "four eyes: the key that asked for a payment never decides it",
        )?;
        let digest = request.digest();
        if seen.is_some_and(|seen| seen != digest) {
            return Err(EngineError::Conflict(format!(
                "the request's action is not the one you were shown: its digest is {digest}"
            )));
        }
        decision.validate(&request.allowed_decisions)?;
        let to = request.status.decide(decision.kind())?;
        let edit = match &decision {
            Decision::Edit { edited_args, .. } => {
                Some(self.checked_edit(who, &request, edited_args)?)
            }
            _ => None,
        };
        let (kind, note) = (decision.kind(), decision.note());
        let edited_args = edit.as_ref().map(|(intent, _)| intent.args());
        let digest = match &edited_args {
            Some(args) => action_digest(request.session_id, &request.tool, args),
            None => digest,
        };

        let mut tx = self.begin_as(who).await?;
        if to != ApprovalStatus::Rejected {
            crate::kill::refuse_if_stopped(&mut tx, request.session_id).await?;
        }
        let landed = approvals::decide(
            &mut tx,
            Decided {
                id,
                to,
                by: who.key_id,
                note,
                edited_args: edited_args.as_ref(),
                digest: &digest,
            },
        )
        .await?;
        if !landed {
            return Err(self.explain_refused(tx, id).await?);
        }
        if to == ApprovalStatus::Rejected {
            self.deny_payment(&mut tx, &request, DenyReason::Rejected)
                .await?;
        }
        if let Some((intent, usd)) = &edit {
            check_edit_policy(&mut tx, &request, intent, *usd).await?;
            rebook_edit(&mut tx, &request, intent, *usd).await?;
        }
        let mut data = json!({"decision": kind.as_str(), "note": note, "digest": digest});
        if let Some((_, usd)) = &edit {
            data["old_args"] = request.args.clone();
            data["new_args"] = edited_args.clone().unwrap_or(Value::Null);
            data["new_usd_value"] = json!(usd.to_string());
        }
        let (subject, session) = (format!("approval:{id}"), Some(request.session_id));
        tx.audit(&who.actor(), kind.audit_action(), &subject, session, data)
            .await?;
        let decided = approvals::get(tx.conn(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("approval request"))?;
        let view = ApprovalView::from(decided);
        let payload = serde_json::to_value(&view).expect("views serialize");
        tx.event(kind.event(), session, payload).await?;
        self.publish(tx.commit().await?);
        Ok(view)
    }

    /// Validates an edit from scratch and checks the editor may make it. Returns the new intent and its USD value.
    fn checked_edit(
        &self,
        who: &Principal,
        request: &ApprovalRecord,
        edited_args: &Value,
    ) -> Result<(PaymentIntent, paygent_domain::Decimal)> {
        let original = PaymentIntent::from_args(&self.prices, &request.args)?;
        let edited = original.edited(&self.prices, edited_args)?;
        let usd = self.prices.usd_value(&edited.money)?;
        check_edit_authority(who.role, request.usd_value, usd)?;
        Ok((edited, usd))
    }

    /// A decision did not land: find out why. An overdue request is expired here and now, so it never lingers
    /// as pending once someone has tried to decide it.
    async fn explain_refused(&self, mut tx: WriteTx, id: Uuid) -> Result<EngineError> {
        let tenant_id = tx.tenant_id();
        let current = approvals::get(tx.conn(), tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("approval request"))?;
        if current.status == ApprovalStatus::Pending && current.deadline <= tx.now() {
            self.expire_within(&mut tx, &current).await?;
            self.publish(tx.commit().await?);
            return Ok(EngineError::Conflict(
                "the request expired before it was decided".into(),
            ));
        }
        Ok(EngineError::Conflict(format!(
            "the request is already {}",
            current.status.as_str()
        )))
    }

    /// Ends an overdue pending request as expired, with its payment, audit entry and event.
    pub(crate) async fn expire_within(
        &self,
        tx: &mut WriteTx,
        request: &ApprovalRecord,
    ) -> Result<bool> {
        if !approvals::end(tx, request.id, ApprovalStatus::Expired, None).await? {
            return Ok(false);
        }
        self.deny_payment(tx, request, DenyReason::Expired).await?;
        tx.audit(
            "system",
            AuditAction::ApprovalExpired,
            &format!("approval:{}", request.id),
            Some(request.session_id),
            json!({"deadline": paygent_domain::time::format(request.deadline)}),
        )
        .await?;
        tx.event(
            EventKind::Expired,
            Some(request.session_id),
            json!({"id": request.id, "session_id": request.session_id, "payment_id": request.payment_id}),
        )
        .await?;
        Ok(true)
    }

    /// Moves the request's payment, if any, from pending to denied, and releases its reservation.
    async fn deny_payment(
        &self,
        tx: &mut WriteTx,
        request: &ApprovalRecord,
        reason: DenyReason,
    ) -> Result<()> {
        if let Some(payment_id) = request.payment_id {
            crate::payments::deny_pending(tx, payment_id, reason).await?;
        }
        Ok(())
    }
}

async fn session_of(
    tx: &mut WriteTx,
    request: &ApprovalRecord,
) -> Result<paygent_store::sessions::SessionRecord> {
    let tenant_id = tx.tenant_id();
    sessions::get(tx.conn(), tenant_id, request.session_id)
        .await?
        .ok_or(EngineError::NotFound("session"))
}

/// An edit is held to the session's policy as a new request would be: it may not name a denied payee, go
/// above the policy's maximum, or pay anyone outside a non-empty allow list (a person may approve an outside
/// payee the agent asked for, but not put one there).
async fn check_edit_policy(
    tx: &mut WriteTx,
    request: &ApprovalRecord,
    intent: &PaymentIntent,
    usd: paygent_domain::Decimal,
) -> Result<()> {
    let session = session_of(tx, request).await?;
    let tenant_id = tx.tenant_id();
    let policy = crate::policies::in_force(tx.conn(), tenant_id, session.policy_id).await?;
    let args = intent.args();
    if let Some(refusal) = policy.rules.refusal(usd, &args) {
        return Err(EngineError::Invalid(format!(
            "the edit breaks policy {:?}: {} (rule {})",
            policy.name, refusal.detail, refusal.rule
        )));
    }
    let allow = &policy.rules.payees.allow;
    let recipient = intent.recipient.as_str();
    let asked = request.args.get("recipient").and_then(Value::as_str);
    let payee = intent.recipient.payee();
    if asked != Some(recipient)
        && policy.rules.payees.new_payee == NewPayee::Deny
        && !payments::known_payee(tx.conn(), session.created_by, &payee).await?
    {
        return Err(EngineError::Invalid(format!(
            "the edit's recipient {recipient} was never paid, and policy {:?} denies first payments \
             (rule payees.new_payee)",
            policy.name
        )));
    }
    if !allow.is_empty()
        && asked != Some(recipient)
        && !allow.iter().any(|p| p.eq_ignore_ascii_case(recipient))
    {
        return Err(EngineError::Invalid(format!(
            "the edit's recipient {recipient} is not on policy {:?}'s allow list (rule payees.allow)",
            policy.name
        )));
    }
    Ok(())
}

/// Moves an edited request's reservation to its new terms. An edit that needs more budget than is left fails
/// with the budget's own words, and the caller's transaction (and so the whole decision) is rolled back.
async fn rebook_edit(
    tx: &mut WriteTx,
    request: &ApprovalRecord,
    intent: &PaymentIntent,
    usd: paygent_domain::Decimal,
) -> Result<()> {
    let tenant_id = tx.tenant_id();
    let Some(payment_id) = request.payment_id else {
        return Ok(());
    };
    let payment = payments::get(tx.conn(), tenant_id, payment_id)
        .await?
        .ok_or(EngineError::NotFound("payment"))?;
    let Some(old) = Booking::of(&payment) else {
        return Ok(());
    };
    let new = old.with_terms(&intent.money.currency, intent.money.amount, usd);
    // The payment takes the edited terms now, so every later release or settlement books what is reserved.
    let terms = Terms {
        amount: intent.money.amount,
        currency: intent.money.currency.clone(),
        usd_value: usd,
        recipient: intent.recipient.as_str().to_owned(),
        description: intent.description.clone(),
    };
    payments::transition(
        tx,
        Transition {
            terms: Some(&terms),
            ..Transition::new(
                payment_id,
                PaymentStatus::PendingApproval,
                PaymentStatus::PendingApproval,
            )
        },
    )
    .await?;
    budget::book(tx, &old, Move::Release).await?;
    if !old.covers(&new) {
        let session = session_of(tx, request).await?;
        if let Err(exceeded) = budget::check(tx, &session.config.budget, &new).await? {
            return Err(EngineError::Invalid(format!(
                "the edit does not fit the budget: {exceeded}"
            )));
        }
        let tenant_id = tx.tenant_id();
        let policy = crate::policies::in_force(tx.conn(), tenant_id, session.policy_id).await?;
        if let Some(over) = budget::check_limits(tx, &policy.rules, &new).await? {
            return Err(EngineError::Invalid(format!(
                "the edit does not fit {over}"
            )));
        }
    }
    budget::book(tx, &new, Move::Reserve).await
}
