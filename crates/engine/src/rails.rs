//! Payment rails: what carries out a payment the guard authorized. A rail signs only what the engine hands it,
//! after the guard, and the engine stores what was signed before it leaves the process. That order is what
//! makes a payment run once: after a crash the same signed artifact is sent again or found on chain, and a
//! second one is signed only when the first can never settle.

use crate::budget::{self, Booking, Move};
use crate::views::PaymentView;
use crate::{EngineError, Paygent, Result};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_domain::policy::PaymentTool;
use paygent_domain::swap::{PRICE_MOVED, SwapTerms};
use paygent_domain::{Decimal, PaymentStatus, SessionState};
use paygent_store::attempts::AttemptRecord;
use paygent_store::payments::{self, PaymentRecord, Terms, Transition};
use paygent_store::{WriteTx, attempts, sessions};
use serde_json::{Value, json};
use std::sync::{Arc, Weak};
use uuid::Uuid;

/// An authorized payment, as a rail sees it.
#[derive(Debug, Clone)]
pub struct PaymentOrder {
    pub payment_id: Uuid,
    pub session_id: Uuid,
    /// The session's wallet: rails pay only from a wallet the session is bound to.
    pub wallet: Option<String>,
    pub tool: PaymentTool,
    pub amount: Decimal,
    pub currency: String,
    pub recipient: String,
    /// For a swap (`recipient` is then the exchange's router): what it buys and the least it may give.
    pub swap: Option<SwapTerms>,
}

/// A swap to quote: sell `amount_in` of `from` for `to` on `dex` (the only exchange on their chain when not
/// named), the least it may give bounded by `max_slippage_bps`.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapAsk {
    pub dex: Option<String>,
    pub from: String,
    pub to: String,
    pub amount_in: Decimal,
    pub max_slippage_bps: u32,
}

/// A quoted swap: the router its payment goes to, and the terms the guard decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapQuoted {
    pub router: String,
    pub terms: SwapTerms,
}

/// What a rail signed, stored before it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Signed {
    /// A CAIP-2 network id, such as `eip155:338`.
    pub network: String,
    /// Known before sending for a transaction; an x402 payment learns it from the settlement.
    pub tx_hash: Option<String>,
    /// Everything needed to send it again or find it on chain.
    pub artifact: Value,
    /// The service's refusal of it, once it refused: it is then only watched on chain, never sent again.
    pub refusal: Option<Refusal>,
}

impl From<AttemptRecord> for Signed {
    fn from(a: AttemptRecord) -> Self {
        Signed {
            network: a.network,
            tx_hash: a.tx_hash,
            artifact: a.signed,
            refusal: a.refusal.and_then(|r| serde_json::from_value(r).ok()),
        }
    }
}

/// Why a service refused a signed payment, in its own terms, and until when that payment could still settle.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Refusal {
    /// The reason code the service (or its facilitator) gave, such as `insufficient_funds`.
    pub code: Option<String>,
    /// What it answered, in words.
    pub message: String,
    /// The end of the signed authorization's window, by the chain's clock: until then it could still settle,
    /// and the payment stays `authorized`; then it is `failed`, or `executed` if it settled after all.
    pub outstanding_until: DateTime<Utc>,
}

/// A payment that settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub network: String,
    pub tx_hash: Option<String>,
    /// What came back: the block, the payer, an x402 resource's answer.
    pub receipt: Value,
    /// What moved, when less than was authorized (a service that lowered its price): the payment and its
    /// budget then hold what was paid.
    pub paid: Option<Decimal>,
}

/// What a paid resource (x402) asks for itself, read before the guard decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    /// Its price in the payment's currency: the least it offers in it.
    Price(Decimal),
    /// It answered without asking to be paid: its status and the start of its body.
    Nothing { status: u16, body: String },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RailError {
    /// Nothing was paid and nothing will be: the payment fails with this reason, and its budget is released.
    #[error("{0}")]
    Refused(String),
    /// What was signed can never settle (its nonce went to another transaction, its window closed): sign anew.
    #[error("{0}")]
    Superseded(String),
    /// A venue now gives less than people approved (a swap's least out): nothing was signed, and the payment
    /// fails with the reason `price_moved`, which its policy may answer by asking again.
    #[error("{0}")]
    PriceMoved(String),
    /// The chain or the service could not be reached: the outcome is unknown, and the attempt is kept to be
    /// reconciled later.
    #[error("{0}")]
    Unavailable(String),
    /// The service refused what was sent, yet the signed authorization could still settle: the payment's outcome
    /// stays open until the chain's clock passes its window.
    #[error("{}; its authorization could still settle until {}", .0.message, .0.outstanding_until)]
    Outstanding(Refusal),
}

/// Stores a freshly signed artifact before the rail sends it, and answers the one to send: this one, or one
/// stored earlier by a concurrent runner (the rail must then drop its own).
pub type Journal<'a> =
    &'a (dyn Fn(Signed) -> BoxFuture<'a, Result<Signed, RailError>> + Send + Sync);

pub trait Rail: Send + Sync + 'static {
    /// Stored with each attempt.
    fn name(&self) -> &'static str;
    /// Whether this rail carries the order (its tool, currency and wallet).
    fn carries(&self, order: &PaymentOrder) -> bool;
    /// The network (a CAIP-2 id) it would pay a payment of `tool` in `currency` from `wallet` on, when it carries
    /// such a payment: part of the action a person approves.
    fn network(&self, tool: PaymentTool, currency: &str, wallet: Option<&str>) -> Option<String>;
    /// What the paid resource at `url` asks in `currency`, for a rail that pays such resources. `Refused` says
    /// why nothing it offers can be paid; `Unavailable`, that it could not be asked.
    fn price<'a>(
        &'a self,
        url: &'a str,
        currency: &'a str,
    ) -> BoxFuture<'a, Result<Asked, RailError>>;
    /// Pays the order. With `earlier`, a signed artifact from an interrupted run, it must first find that on chain
    /// or send it again, and never sign a second payment while the first can still settle.
    fn pay<'a>(
        &'a self,
        order: &'a PaymentOrder,
        earlier: Option<Signed>,
        journal: Journal<'a>,
    ) -> BoxFuture<'a, Result<Settlement, RailError>>;
    /// Quotes a swap on an exchange this rail trades on. `Refused` says why it cannot be traded here.
    fn quote_swap<'a>(&'a self, ask: &'a SwapAsk) -> BoxFuture<'a, Result<SwapQuoted, RailError>>;
    /// The wallet's balances on the chains this rail knows, by currency.
    fn balances<'a>(&'a self, wallet: &'a str) -> BoxFuture<'a, Result<Value, RailError>>;
    /// The addresses of the wallets it holds keys for.
    fn wallets(&self) -> Vec<String>;
}

/// Audits how a rail ended a payment (`executed`, `failed`) and tells live subscribers.
async fn announce(
    tx: &mut WriteTx,
    payment: &PaymentRecord,
    outcome: PaymentStatus,
    data: Value,
) -> Result<()> {
    let subject = format!("payment:{}", payment.id);
    let kind = match outcome {
        PaymentStatus::Executed => EventKind::PaymentExecuted,
        _ => EventKind::PaymentFailed,
    };
    tx.audit(
        "rail",
        AuditAction::payment_ended(outcome),
        &subject,
        Some(payment.session_id),
        data.clone(),
    )
    .await?;
    tx.event(kind, Some(payment.session_id), data).await?;
    Ok(())
}

/// How many open attempts one read of a reconciliation takes.
const RECONCILE_PAGE: i64 = 200;

/// How long an execution's step waits for a payment's outcome past the answer that left it in flight (a rail
/// waits up to two minutes for a receipt), or past a refused authorization's window.
const OUTCOME_WAIT_SECONDS: i64 = 180;

/// How long past a refused authorization's window its payment is watched for the chain's clock to pass it too.
const OUTSTANDING_WATCH_SECONDS: i64 = 120;

/// How often a payment is signed anew after its earlier attempt was superseded, before giving up.
const MAX_RESIGNS: usize = 3;

impl Paygent {
    /// Carries out an authorized payment on the rail that takes it; a payment no rail takes stays
    /// `authorized` for its agent to pay. Safe to call again for the same payment, from any runner.
    ///
    /// It runs in a task of its own: a caller that goes away (a client hanging up, a cancelled step) stops it
    /// only before anything is signed. Once the signed payment is journaled it goes out, whoever waits for it.
    /// A caller waits for it at most the engine's answer bound, then gets it `in_flight`.
    pub(crate) async fn carry_out(&self, payment: PaymentRecord) -> Result<PaymentView> {
        if payment.status != PaymentStatus::Authorized {
            return Ok(payment.into());
        }
        let Some((order, rail)) = self.rail_for(&payment).await? else {
            return Ok(payment.into());
        };
        // Its own task: a caller that hangs up or times out does not stop a payment half-way; a retry with the
        // same idempotency key finds it and waits for its one outcome.
        let (this, tenant_id, id) = (self.clone(), payment.tenant_id, payment.id);
        let run = tokio::spawn(async move { this.carry_out_alone(payment, order, rail).await });
        match tokio::time::timeout(self.answer_within, run).await {
            Ok(ran) => ran.map_err(|e| {
                EngineError::Unavailable(format!("the payment runner stopped: {e}"))
            })?,
            Err(_) => {
                let mut view = self.payment_view(tenant_id, id).await?;
                view.in_flight = view.status == PaymentStatus::Authorized;
                Ok(view)
            }
        }
    }

    /// The rail that carries a payment, with its order; none when the agent pays it itself.
    pub(crate) async fn rail_for(
        &self,
        payment: &PaymentRecord,
    ) -> Result<Option<(PaymentOrder, Arc<dyn Rail>)>> {
        if self.rails.is_empty() {
            return Ok(None);
        }
        let Some(tool) = PaymentTool::parse(&payment.tool) else {
            return Ok(None);
        };
        let session = sessions::get(self.store.reader(), payment.tenant_id, payment.session_id)
            .await?
            .ok_or(EngineError::NotFound("session"))?;
        let order = PaymentOrder {
            payment_id: payment.id,
            session_id: payment.session_id,
            wallet: session.wallet_address,
            tool,
            amount: payment.amount,
            currency: payment.currency.clone(),
            recipient: payment.recipient.clone(),
            swap: payment.swap.clone(),
        };
        let rail = self.rails.iter().find(|r| r.carries(&order)).cloned();
        Ok(rail.map(|r| (order, r)))
    }

    /// The network a payment of `tool` in `currency` from `wallet` would be paid on here, if a rail carries it:
    /// what an action's digest binds, and what the payment may be signed for.
    pub(crate) fn network_for(
        &self,
        tool: &str,
        currency: &str,
        wallet: Option<&str>,
    ) -> Option<String> {
        let tool = PaymentTool::parse(tool)?;
        self.rails
            .iter()
            .find_map(|r| r.network(tool, currency, wallet))
    }

    /// A payment whose outcome was not known when it was answered (its rail still in flight, or its service
    /// refused it while its authorization could still settle), once it is: waited for within the rail's bounds
    /// and a margin, for an execution's step. Still open after that, it is answered `in_flight`.
    pub(crate) async fn once_known(&self, tenant_id: Uuid, p: PaymentView) -> PaymentView {
        let give_up = match (p.status, &p.refusal, p.in_flight) {
            (PaymentStatus::Authorized, Some(r), _) => r.outstanding_until,
            (PaymentStatus::Authorized, None, true) => self.now(),
            _ => return p,
        } + chrono::Duration::seconds(OUTCOME_WAIT_SECONDS);
        let mut latest = p;
        while latest.status == PaymentStatus::Authorized && self.now() < give_up {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            match self.payment_view(tenant_id, latest.id).await {
                Ok(view) => latest = view,
                Err(_) => break,
            }
        }
        latest.in_flight = latest.status == PaymentStatus::Authorized;
        latest
    }

    /// One payment's turn in this process: two callers never run one payment's rail at once.
    fn payment_turn(&self, id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.payment_turns.lock().expect("payment turns");
        if let Some(turn) = turns.get(&id).and_then(Weak::upgrade) {
            return turn;
        }
        turns.retain(|_, t| t.strong_count() > 0);
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        turns.insert(id, Arc::downgrade(&turn));
        turn
    }

    async fn carry_out_alone(
        &self,
        payment: PaymentRecord,
        order: PaymentOrder,
        rail: Arc<dyn Rail>,
    ) -> Result<PaymentView> {
        let turn = self.payment_turn(payment.id);
        let _mine = turn.lock().await;
        let tenant_id = payment.tenant_id;
        // Another caller may have finished it while this one waited.
        let payment = payments::get(self.store.reader(), tenant_id, payment.id)
            .await?
            .ok_or(EngineError::NotFound("payment"))?;
        if payment.status != PaymentStatus::Authorized {
            return self.payment_view(tenant_id, payment.id).await;
        }
        let journal = |signed: Signed| -> BoxFuture<'_, Result<Signed, RailError>> {
            let rail = rail.name();
            Box::pin(async move {
                self.journal(tenant_id, payment.id, rail, signed)
                    .await
                    .map_err(|e| match e {
                        EngineError::Conflict(why) => RailError::Refused(why),
                        other => RailError::Unavailable(other.to_string()),
                    })
            })
        };
        for _ in 0..MAX_RESIGNS {
            let earlier = attempts::get(self.store.reader(), payment.id)
                .await?
                .map(Signed::from);
            match rail.pay(&order, earlier.clone(), &journal).await {
                Ok(settlement) => return self.settled(&payment, settlement).await,
                Err(RailError::Refused(why)) => {
                    return self.rail_failed(&payment, &why, None).await;
                }
                Err(RailError::PriceMoved(why)) => {
                    return self.rail_failed(&payment, PRICE_MOVED, Some(&why)).await;
                }
                Err(RailError::Superseded(why)) => {
                    tracing::info!(payment = %payment.id, %why, "signing the payment anew");
                    let mut tx = self.store.begin(tenant_id, self.now()).await?;
                    attempts::discard(&mut tx, payment.id).await?;
                    tx.commit().await?;
                }
                Err(RailError::Unavailable(why)) => {
                    return Err(EngineError::Unavailable(format!(
                        "the payment is authorized but its outcome is not known yet: {why}"
                    )));
                }
                Err(RailError::Outstanding(refusal)) => {
                    let first = earlier.is_none_or(|e| e.refusal.is_none());
                    return self.outstanding(&payment, refusal, first).await;
                }
            }
        }
        self.rail_failed(&payment, "its signed attempts kept being superseded", None)
            .await
    }

    /// Stores a signed artifact unless the payment has one already, and refuses it once the payment may no
    /// longer be paid (a kill, or someone else ended it).
    async fn journal(
        &self,
        tenant_id: Uuid,
        payment_id: Uuid,
        rail: &str,
        signed: Signed,
    ) -> Result<Signed> {
        let mut tx = self.store.begin(tenant_id, self.now()).await?;
        let payment = payments::get(tx.conn(), tenant_id, payment_id)
            .await?
            .ok_or(EngineError::NotFound("payment"))?;
        let session = sessions::get(tx.conn(), tenant_id, payment.session_id).await?;
        if tx.kill_switch().is_some() || session.is_none_or(|s| s.state != SessionState::Active) {
            return Err(EngineError::Conflict(
                "killed: the session or the whole tenant was stopped before the payment was sent"
                    .into(),
            ));
        }
        if payment.status != PaymentStatus::Authorized {
            return Err(EngineError::Conflict(format!(
                "the payment is {}, no longer authorized",
                payment.status.as_str()
            )));
        }
        if payment.network.as_deref() != Some(signed.network.as_str()) {
            return Err(EngineError::Conflict(format!(
                "the payment was authorized on network {}, not {}: nothing was sent",
                payment.network.as_deref().unwrap_or("none"),
                signed.network
            )));
        }
        let fresh = attempts::insert(
            &mut tx,
            payment_id,
            rail,
            &signed.network,
            &signed.artifact,
            signed.tx_hash.as_deref(),
        )
        .await?;
        if fresh {
            tx.commit().await?;
            return Ok(signed);
        }
        attempts::get(tx.conn(), payment_id)
            .await?
            .map(Signed::from)
            .ok_or(EngineError::NotFound("payment attempt"))
    }

    async fn settled(&self, payment: &PaymentRecord, s: Settlement) -> Result<PaymentView> {
        let paid = self.paid_terms(payment, s.paid)?;
        let mut tx = self.store.begin(payment.tenant_id, self.now()).await?;
        let moved = payments::transition(
            &mut tx,
            Transition {
                tx_hash: s.tx_hash.as_deref(),
                network: Some(&s.network),
                terms: paid.as_ref(),
                ..Transition::new(
                    payment.id,
                    PaymentStatus::Authorized,
                    PaymentStatus::Executed,
                )
            },
        )
        .await?;
        attempts::finish(&mut tx, payment.id, s.tx_hash.as_deref(), &s.receipt).await?;
        if moved {
            if let (Some(paid), Some(booked)) = (&paid, Booking::of(payment)) {
                let unpaid = booked.with_terms(
                    &paid.currency,
                    payment.amount - paid.amount,
                    payment.usd_value - paid.usd_value,
                );
                budget::book(&mut tx, &unpaid, Move::Unused).await?;
            }
            let data =
                json!({"payment_id": payment.id, "tx_hash": s.tx_hash, "network": s.network});
            announce(&mut tx, payment, PaymentStatus::Executed, data).await?;
        }
        self.publish(tx.commit().await?);
        if moved {
            self.metrics.rail_ended(PaymentStatus::Executed);
        }
        self.payment_view(payment.tenant_id, payment.id).await
    }

    /// A service refused the payment while its authorization could still settle: the refusal is kept and shown
    /// at once, the payment stays open, and (the first time) a watcher ends it once the chain says how. After a
    /// restart the sweeper does.
    async fn outstanding(
        &self,
        payment: &PaymentRecord,
        refusal: Refusal,
        first: bool,
    ) -> Result<PaymentView> {
        if first {
            let mut tx = self.store.begin(payment.tenant_id, self.now()).await?;
            attempts::refused(&mut tx, payment.id, &json!(refusal)).await?;
            self.publish(tx.commit().await?);
            self.watch_outstanding(payment, refusal.outstanding_until);
        }
        self.payment_view(payment.tenant_id, payment.id).await
    }

    /// Carries the payment out again every few seconds (each time one read of the chain: it is not sent again)
    /// until it ends, or the watch is given up past its window (the sweeper then reconciles it).
    fn watch_outstanding(&self, payment: &PaymentRecord, until: DateTime<Utc>) {
        let (this, tenant_id, id) = (self.clone(), payment.tenant_id, payment.id);
        let give_up = until + chrono::Duration::seconds(OUTSTANDING_WATCH_SECONDS);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let Ok(Some(p)) = payments::get(this.store.reader(), tenant_id, id).await else {
                    return;
                };
                if p.status != PaymentStatus::Authorized || this.now() > give_up {
                    return;
                }
                if let Err(e) = this.carry_out(p).await {
                    tracing::info!(payment = %id, error = %e, "a refused payment is still open");
                }
            }
        });
    }

    /// The terms of a payment that moved less than was authorized: what was paid, priced now.
    fn paid_terms(&self, p: &PaymentRecord, paid: Option<Decimal>) -> Result<Option<Terms>> {
        let Some(amount) = paid.filter(|a| *a < p.amount) else {
            return Ok(None);
        };
        let money = paygent_domain::Money {
            amount,
            currency: p.currency.clone(),
        };
        Ok(Some(Terms {
            amount,
            usd_value: self.prices.usd_value(&money)?,
            currency: money.currency,
            recipient: p.recipient.clone(),
            description: p.description.clone(),
        }))
    }

    /// Nothing was paid: the payment fails for `why` (a code, with `detail` in words, or words alone) and what it
    /// took from the budget goes back.
    async fn rail_failed(
        &self,
        payment: &PaymentRecord,
        why: &str,
        detail: Option<&str>,
    ) -> Result<PaymentView> {
        let mut tx = self.store.begin(payment.tenant_id, self.now()).await?;
        let moved = payments::transition(
            &mut tx,
            Transition {
                reason: Some(why),
                detail,
                ..Transition::new(payment.id, PaymentStatus::Authorized, PaymentStatus::Failed)
            },
        )
        .await?;
        if moved {
            if let Some(booking) = Booking::of(payment) {
                budget::book(&mut tx, &booking, Move::Unspend).await?;
            }
            let data = json!({"payment_id": payment.id, "reason": why, "detail": detail});
            announce(&mut tx, payment, PaymentStatus::Failed, data).await?;
        }
        self.publish(tx.commit().await?);
        if moved {
            self.metrics.rail_ended(PaymentStatus::Failed);
        }
        self.payment_view(payment.tenant_id, payment.id).await
    }

    /// Finishes the payments a crash left between signing and settling. Run at start, before agents retry.
    pub async fn reconcile_payments(&self) -> Result<usize> {
        self.reconcile_signed_before(None).await
    }

    /// Finishes signed payments whose outcome is still unknown: all of them, or those signed before `before`.
    /// Safe beside a live runner of the same payment: both can only send the same signed artifact.
    pub(crate) async fn reconcile_signed_before(
        &self,
        before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<usize> {
        let before = before.map(paygent_domain::time::format);
        let (mut after, mut seen) = (None, 0);
        loop {
            let reader = self.store.reader();
            let page = attempts::open(reader, before.as_deref(), after, RECONCILE_PAGE).await?;
            for (tenant_id, payment_id) in &page {
                if let Some(p) = payments::get(self.store.reader(), *tenant_id, *payment_id).await?
                    && let Err(e) = self.carry_out(p).await
                {
                    tracing::warn!(payment = %payment_id, error = %e, "payment not reconciled yet");
                }
            }
            seen += page.len();
            match page.last() {
                Some((_, last)) if page.len() as i64 == RECONCILE_PAGE => after = Some(*last),
                _ => return Ok(seen),
            }
        }
    }

    /// A session wallet's balances, read from the chains.
    pub async fn balances(
        &self,
        who: &paygent_domain::Principal,
        session_id: Uuid,
    ) -> Result<Value> {
        let session = self.reachable_session(who, session_id).await?;
        let wallet = session
            .wallet_address
            .ok_or_else(|| EngineError::Invalid("the session is not bound to a wallet".into()))?;
        let Some(rail) = self.rails.first() else {
            return Err(EngineError::NotImplemented(
                "no payment rail is configured: add chains and tokens to the configuration".into(),
            ));
        };
        let balances = rail
            .balances(&wallet)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        Ok(json!({"session_id": session_id, "wallet": wallet, "balances": balances}))
    }
}
