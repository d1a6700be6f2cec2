//! People's decisions on approval requests. Each decision is one conditional update in one transaction with
//! its audit entry and event: of any number of racing decisions, exactly one lands.

use crate::budget::{self, Booking, Move};
use crate::views::ApprovalView;
use crate::{EngineError, Paygent, Result, require};
use chrono::{DateTime, Utc};
use paygent_domain::Decimal;
use paygent_domain::action::action_digest;
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_domain::judgement::DenyReason;
use paygent_domain::payment::{PaymentIntent, check_edit_authority};
use paygent_domain::quorum::{Tally, may_decide, tally};
use paygent_domain::rules::NewPayee;
use paygent_domain::standing::StandingTerms;
use paygent_domain::{ApprovalStatus, Decision, DecisionKind, PaymentStatus, Principal};
use paygent_store::WriteTx;
use paygent_store::approvals::{self, ApprovalRecord, Decided};
use paygent_store::payments::{self, Terms, Transition};
use paygent_store::sessions;
use serde_json::{Value, json};
use uuid::Uuid;

/// The most decided requests one call of [`Paygent::decided_approvals`] reads.
const MAX_EXAMINED: usize = 1_000;

/// How many decided requests one statement reads.
const READ_BATCH: i64 = 200;

/// What a person looks for among decided requests; every part left out matches all.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub outcome: Option<ApprovalStatus>,
    /// The agent key that asked.
    pub agent: Option<Uuid>,
    /// The payee of the action decided on (an edit's, if edited), compared without case.
    pub payee: Option<String>,
    pub min_usd: Option<Decimal>,
    pub max_usd: Option<Decimal>,
    /// Filed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Filed before.
    pub until: Option<DateTime<Utc>>,
}

impl History {
    fn matches(&self, r: &ApprovalRecord) -> bool {
        let args = r.edited_args.as_ref().unwrap_or(&r.args);
        let payee = ["recipient", "to", "url"]
            .iter()
            .find_map(|field| args[*field].as_str());
        self.outcome.is_none_or(|o| o == r.status)
            && self.agent.is_none_or(|a| a == r.requested_by)
            && self
                .payee
                .as_deref()
                .is_none_or(|p| payee.is_some_and(|q| q.eq_ignore_ascii_case(p)))
            && self.min_usd.is_none_or(|m| r.usd_value >= m)
            && self.max_usd.is_none_or(|m| r.usd_value <= m)
            && self.until.is_none_or(|u| r.created_at < u)
    }
}

impl Paygent {
    /// One request: people read the tenant's, an agent those on its own sessions (as its events carry them).
    pub async fn approval(&self, who: &Principal, id: Uuid) -> Result<ApprovalView> {
        let request = self.load_approval(who.tenant_id, id).await?;
        self.reach(who, request.session_id, "approval request")
            .await?;
        let mut view = request.into();
        self.name_deciders(who.tenant_id, std::slice::from_mut(&mut view))
            .await?;
        Ok(view)
    }

    /// Names the keys that decided `views`, as they are named now, in one read.
    async fn name_deciders(&self, tenant_id: Uuid, views: &mut [ApprovalView]) -> Result<()> {
        let ids = views.iter().filter_map(|v| v.decision.as_ref()?.by);
        let names = self.key_names(tenant_id, ids).await?;
        for decision in views.iter_mut().filter_map(|v| v.decision.as_mut()) {
            decision.by_name = decision.by.and_then(|by| names.get(&by).cloned());
        }
        Ok(())
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

    /// Decided requests, newest first, that match `filter`, with the cursor of the next page (the last request
    /// read) while there may be more. At most [`MAX_EXAMINED`] requests are read a call, so a filter few
    /// requests match answers a short page and the cursor to go on from, never a walk of the whole history.
    pub async fn decided_approvals(
        &self,
        who: &Principal,
        page: crate::Page,
        filter: &History,
    ) -> Result<(Vec<ApprovalView>, Option<Uuid>)> {
        require(
            who.can_decide(),
            "only approvers and admins list approval requests",
        )?;
        let (mut found, next) = self.read_decided(who, page, filter).await?;
        self.name_deciders(who.tenant_id, &mut found).await?;
        Ok((found, next))
    }

    /// The reading of [`Paygent::decided_approvals`]: batches of [`READ_BATCH`], until the page is full, the
    /// history ends, or [`MAX_EXAMINED`] requests were read.
    async fn read_decided(
        &self,
        who: &Principal,
        page: crate::Page,
        filter: &History,
    ) -> Result<(Vec<ApprovalView>, Option<Uuid>)> {
        let limit = page.limit.clamp(1, crate::MAX_PAGE);
        // Read in batches of their own size, not the page's: a page of one that few requests match would
        // otherwise take a statement per request read.
        let mut scope = crate::payments::scope(who, page);
        scope.limit = READ_BATCH;
        let (mut found, mut examined) = (Vec::new(), 0);
        loop {
            let batch = approvals::decided(self.store.reader(), scope).await?;
            let more = batch.len() as i64 == READ_BATCH;
            for request in batch {
                if filter.since.is_some_and(|since| request.created_at < since) {
                    return Ok((found, None));
                }
                examined += 1;
                scope.after = Some(request.id);
                if filter.matches(&request) {
                    found.push(request.into());
                }
                if found.len() as i64 == limit || examined == MAX_EXAMINED {
                    return Ok((found, scope.after));
                }
            }
            if !more {
                return Ok((found, None));
            }
        }
    }

    pub(crate) async fn load_approval(&self, tenant_id: Uuid, id: Uuid) -> Result<ApprovalRecord> {
        approvals::get(self.store.reader(), tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("approval request"))
    }

    /// Approves, rejects, or edits and approves a pending request. With `seen`, the digest of the action the
    /// person was shown, the decision lands only on that action. A request that needs a quorum records each
    /// approval and is approved by the last one it needs; one rejection ends it. Boxed, as `submit_payment`.
    pub async fn decide(
        &self,
        who: &Principal,
        id: Uuid,
        decision: Decision,
        seen: Option<&str>,
    ) -> Result<ApprovalView> {
        Box::pin(self.rule_and_land(who, id, decision, seen)).await
    }

    async fn rule_and_land(
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
        let mut tx = self.begin_deciding(who, id).await?;
        let request = current(&mut tx, id).await?;
        let ruling = self.rule(who, request, &decision, seen).await?;
        let session = ruling.request.session_id;
        if ruling.to != ApprovalStatus::Rejected {
            crate::kill::refuse_if_stopped(&mut tx, session).await?;
        }
        let counted =
            ruling.request.approvals_required > 1 && ruling.to != ApprovalStatus::Rejected;
        let landed = if counted {
            self.vote(&mut tx, who, &ruling).await?
        } else {
            self.land(&mut tx, who, &ruling).await?
        };
        match landed {
            Some(mut view) => {
                if let Some(decision) = view.decision.as_mut() {
                    decision.by_name = paygent_store::keys::name_of(&mut tx, who.key_id).await?;
                }
                self.publish(tx.commit().await?);
                if view.status != ApprovalStatus::Pending {
                    let waited = (self.now() - view.created_at).to_std().unwrap_or_default();
                    self.metrics.approval_ended(view.status, waited);
                }
                Ok(view)
            }
            None => Err(self.explain_refused(tx, id).await?),
        }
    }

    /// Checks a decision on `request`, as the tenant's lock holds it, before anything is written: who decides, on
    /// which action, and what it would become.
    async fn rule(
        &self,
        who: &Principal,
        request: ApprovalRecord,
        decision: &Decision,
        seen: Option<&str>,
    ) -> Result<Ruling> {
        require(
            request.requested_by != who.key_id,
            "four eyes: the key that asked for a payment never decides it",
        )?;
        self.check_groups(who, &request).await?;
        let digest = request.digest();
        if seen.is_some_and(|seen| seen != digest) {
            return Err(EngineError::Conflict(format!(
                "the request's action is not the one you were shown: its digest is {digest}"
            )));
        }
        decision.validate(&request.allowed_decisions)?;
        let to = request.status.decide(decision.kind())?;
        let edit = match decision {
            Decision::Edit { edited_args, .. } => {
                Some(self.checked_edit(who, &request, edited_args)?)
            }
            _ => None,
        };
        let (digest, network) = match &edit {
            Some((intent, _)) => {
                let network = self.network_of_edit(&request, intent).await?;
                let args = intent.args();
                let edited =
                    action_digest(request.session_id, &request.tool, &args, network.as_deref());
                (edited, network)
            }
            None => (digest, request.network.clone()),
        };
        let standing = match decision {
            Decision::Approve {
                standing: Some(terms),
                ..
            } => {
                crate::standing::check_terms(&request, terms)?;
                Some(terms.clone())
            }
            _ => None,
        };
        Ok(Ruling {
            standing,
            kind: decision.kind(),
            note: decision.note().map(str::to_owned),
            request,
            to,
            edit,
            digest,
            network,
        })
    }

    /// The network an edit's payment would be paid on from the session's wallet: an edit to another currency may
    /// move it to another chain, and the digest a person approves says so.
    async fn network_of_edit(
        &self,
        request: &ApprovalRecord,
        intent: &PaymentIntent,
    ) -> Result<Option<String>> {
        let session = sessions::get(self.store.reader(), request.tenant_id, request.session_id)
            .await?
            .ok_or(EngineError::NotFound("session"))?;
        let wallet = session.wallet_address.as_deref();
        Ok(self.network_for(&request.tool, &intent.money.currency, wallet))
    }

    /// Refuses a person outside the groups a request names (403).
    async fn check_groups(&self, who: &Principal, request: &ApprovalRecord) -> Result<()> {
        if request.groups.is_empty() {
            return Ok(());
        }
        let key = self
            .store
            .key_by_id(who.key_id, self.now())
            .await?
            .ok_or(EngineError::Unauthenticated)?;
        if may_decide(&request.groups, &key.groups) {
            return Ok(());
        }
        Err(EngineError::Forbidden(format!(
            "this request is decided by members of {}",
            request.groups.join(", ")
        )))
    }

    /// Records a decision that ends the request (one person's, or a rejection): one conditional update. `None`
    /// when it did not land.
    async fn land(
        &self,
        tx: &mut WriteTx,
        who: &Principal,
        r: &Ruling,
    ) -> Result<Option<ApprovalView>> {
        let edited_args = r.edit.as_ref().map(|(intent, _)| intent.args());
        let ending = (r.to, edited_args.as_ref());
        let Some(decided) = end_request(tx, who, r, &r.request, ending).await? else {
            return Ok(None);
        };
        if r.to == ApprovalStatus::Rejected {
            self.deny_payment(tx, &r.request, DenyReason::Rejected)
                .await?;
        }
        if let Some((intent, usd)) = &r.edit {
            check_edit_policy(tx, &r.request, intent, *usd).await?;
            rebook_edit(tx, &r.request, intent, *usd).await?;
        }
        if let Some(terms) = &r.standing {
            crate::standing::grant(tx, who, &r.request, terms).await?;
        }
        self.announce(tx, who, r, (r.kind, decided)).await.map(Some)
    }

    /// One person's approval (or edit) of a request that needs a quorum, recorded once per person and action
    /// under the tenant's lock: of racing approvals, exactly one completes the quorum. `None` when the request
    /// is no longer pending.
    async fn vote(
        &self,
        tx: &mut WriteTx,
        who: &Principal,
        r: &Ruling,
    ) -> Result<Option<ApprovalView>> {
        let (id, current) = (r.request.id, &r.request);
        if current.status != ApprovalStatus::Pending || current.deadline <= tx.now() {
            return Ok(None);
        }
        if let Some((intent, usd)) = &r.edit {
            let edit = approvals::Edit {
                args: &intent.args(),
                network: r.network.as_deref(),
            };
            approvals::amend(tx, id, edit).await?;
            check_edit_policy(tx, current, intent, *usd).await?;
            rebook_edit(tx, current, intent, *usd).await?;
        }
        if !approvals::vote(tx, id, &r.digest, who.key_id, r.note.as_deref()).await? {
            return Err(EngineError::Conflict(
                "you approved this action already: its quorum needs other people".into(),
            ));
        }
        let so_far = approvals::votes(tx.conn(), id, &r.digest).await?;
        match tally(current.approvals_required, so_far.len()) {
            Tally::Reached => self.complete(tx, who, r, current).await,
            Tally::Short { missing } => {
                let counted = (so_far.len(), missing);
                self.count_vote(tx, who, r, counted).await.map(Some)
            }
        }
    }

    /// The approval that completes a quorum: the request becomes approved (edited, if its action is an edit).
    async fn complete(
        &self,
        tx: &mut WriteTx,
        who: &Principal,
        r: &Ruling,
        current: &ApprovalRecord,
    ) -> Result<Option<ApprovalView>> {
        let edited_args = match &r.edit {
            Some((intent, _)) => Some(intent.args()),
            None => current.edited_args.clone(),
        };
        let (to, kind) = match edited_args {
            Some(_) => (ApprovalStatus::Edited, DecisionKind::Edit),
            None => (ApprovalStatus::Approved, DecisionKind::Approve),
        };
        let ending = (to, edited_args.as_ref());
        let Some(decided) = end_request(tx, who, r, current, ending).await? else {
            return Ok(None);
        };
        self.announce(tx, who, r, (kind, decided)).await.map(Some)
    }

    /// An approval short of its quorum: audited, and the request (still pending, with its approvals so far)
    /// announced as updated.
    async fn count_vote(
        &self,
        tx: &mut WriteTx,
        who: &Principal,
        r: &Ruling,
        (approvals, missing): (usize, u32),
    ) -> Result<ApprovalView> {
        let mut data = decision_data(r, r.kind);
        data["approvals"] = json!(approvals);
        data["missing"] = json!(missing);
        let (subject, session) = (
            format!("approval:{}", r.request.id),
            Some(r.request.session_id),
        );
        tx.audit(
            &who.actor(),
            AuditAction::ApprovalVoted,
            &subject,
            session,
            data,
        )
        .await?;
        let view = self.reread(tx, r.request.id).await?;
        let payload = serde_json::to_value(&view).expect("views serialize");
        tx.event(EventKind::ApprovalUpdated, session, payload)
            .await?;
        Ok(view)
    }

    /// The decision's audit entry and event, and the request as the decision left it.
    async fn announce(
        &self,
        tx: &mut WriteTx,
        who: &Principal,
        r: &Ruling,
        (kind, decided): (DecisionKind, ApprovalRecord),
    ) -> Result<ApprovalView> {
        let data = decision_data(r, kind);
        let (subject, session) = (
            format!("approval:{}", r.request.id),
            Some(r.request.session_id),
        );
        tx.audit(&who.actor(), kind.audit_action(), &subject, session, data)
            .await?;
        let view = ApprovalView::from(decided);
        let payload = serde_json::to_value(&view).expect("views serialize");
        tx.event(kind.event(), session, payload).await?;
        Ok(view)
    }

    async fn reread(&self, tx: &mut WriteTx, id: Uuid) -> Result<ApprovalView> {
        let tenant_id = tx.tenant_id();
        let request = approvals::get(tx.conn(), tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("approval request"))?;
        Ok(request.into())
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
        // The decision that won may have been written a moment ago in the same group: named once durable.
        self.publish(tx.commit().await?);
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

/// A decision, checked, before it is recorded.
struct Ruling {
    request: ApprovalRecord,
    kind: DecisionKind,
    /// What the request becomes if this decision ends it.
    to: ApprovalStatus,
    note: Option<String>,
    /// An edit's new payment and its USD value.
    edit: Option<(PaymentIntent, paygent_domain::Decimal)>,
    /// The action decided: the request's, or the edit's, and the network it pays on.
    digest: String,
    network: Option<String>,
    /// A standing approval to grant with the approval.
    standing: Option<StandingTerms>,
}

/// The conditional update that ends `current`, a pending request, as `to` on `who`'s decision: the request as
/// it became, or none if the decision did not land.
async fn end_request(
    tx: &mut WriteTx,
    who: &Principal,
    r: &Ruling,
    current: &ApprovalRecord,
    (to, edited_args): (ApprovalStatus, Option<&Value>),
) -> Result<Option<ApprovalRecord>> {
    let decided = Decided {
        id: r.request.id,
        to,
        by: who.key_id,
        note: r.note.as_deref(),
        edited_args,
        digest: &r.digest,
        network: r.network.as_deref(),
    };
    Ok(approvals::decide(tx, current, decided).await?)
}

/// What the audit trail keeps of a decision: its kind, note and digest, and an edit's old and new arguments.
fn decision_data(r: &Ruling, kind: DecisionKind) -> Value {
    let mut data = json!({"decision": kind.as_str(), "note": r.note, "digest": r.digest});
    if let Some((intent, usd)) = &r.edit {
        data["old_args"] = r.request.args.clone();
        data["new_args"] = intent.args();
        data["new_usd_value"] = json!(usd.to_string());
    }
    data
}

/// The request `id` as a write reads it, under the tenant's lock.
pub(crate) async fn current(tx: &mut WriteTx, id: Uuid) -> Result<ApprovalRecord> {
    approvals::current(tx, id)
        .await?
        .ok_or(EngineError::NotFound("approval request"))
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
    let policy = crate::policies::locked(tx, session.policy_id).await?;
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
    if !allow.is_empty() && asked != Some(recipient) && !allow.contains(recipient) {
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
        let policy = crate::policies::locked(tx, session.policy_id).await?;
        if let Some(over) = budget::check_limits(tx, &policy.rules, &new).await? {
            return Err(EngineError::Invalid(format!(
                "the edit does not fit {over}"
            )));
        }
    }
    budget::book(tx, &new, Move::Reserve).await
}
