//! Swaps through the guard: quoted from the exchange first, then guarded as a payment of what they sell into the
//! exchange's router, bounded by the least they may give. A rail that trades carries them out like any payment:
//! signed, journaled, then sent, once.

use crate::guard::{PaymentRequest, Submitted};
use crate::rails::{RailError, SwapAsk, SwapQuoted};
use crate::{EngineError, Paygent, Result, policies};
use paygent_domain::policy::PaymentTool;
use paygent_domain::swap::SwapTerms;
use paygent_domain::{Principal, SessionState};
use paygent_store::{payments, sessions};
use uuid::Uuid;

/// A swap an agent asks for: sell `amount_in` of `from` for `to`, on `dex` if named, within
/// `max_slippage_bps` if named (else the policy's default).
#[derive(Debug, Clone)]
pub struct SwapRequest {
    pub session_id: Uuid,
    pub amount_in: String,
    pub from: String,
    pub to: String,
    pub dex: Option<String>,
    pub max_slippage_bps: Option<u32>,
    pub description: Option<String>,
    pub idempotency_key: Option<String>,
}

impl SwapRequest {
    /// The payment the swap is guarded as: what it sells, into `router`, on `terms`.
    fn payment(&self, router: String, terms: Option<SwapTerms>) -> PaymentRequest {
        PaymentRequest {
            session_id: self.session_id,
            amount: self.amount_in.clone(),
            currency: self.from.clone(),
            recipient: router,
            description: self.description.clone(),
            idempotency_key: self.idempotency_key.clone(),
            swap: terms,
        }
    }

    /// Whether `terms` are what this request asks for (its quote apart).
    fn asks(&self, terms: &SwapTerms) -> bool {
        terms.to == self.to
            && self.dex.as_ref().is_none_or(|d| *d == terms.dex)
            && self
                .max_slippage_bps
                .is_none_or(|b| b == terms.max_slippage_bps)
    }
}

impl Paygent {
    /// Quotes a swap and runs it through the guard. A retry with the swap's idempotency key answers the swap it
    /// made, without quoting again; a swap that cannot be quoted (no exchange, no pool, a session that cannot
    /// trade) is refused with why, and nothing is written.
    pub async fn submit_swap(&self, who: &Principal, req: SwapRequest) -> Result<Submitted> {
        crate::require(
            who.can_request_payments(),
            "only agents and admins request swaps",
        )?;
        if let Some(key) = &req.idempotency_key
            && let Some(earlier) =
                payments::by_idempotency_key(self.store.reader(), who.tenant_id, key).await?
        {
            // The guard checks the rest of the request against the key (and its owner), and answers the swap made.
            let same = earlier.swap.as_ref().is_some_and(|t| req.asks(t));
            let terms = earlier.swap.filter(|_| same);
            return self
                .submit_payment(who, req.payment(earlier.recipient, terms))
                .await;
        }
        let quoted = self.quote(who, &req).await?;
        let request = req.payment(quoted.router, Some(quoted.terms));
        self.submit_payment(who, request).await
    }

    /// The swap as an exchange quotes it now, for a session that may trade. Read without the lock, as a price is
    /// asked: the guard judges the quote under it, the policy included.
    async fn quote(&self, who: &Principal, req: &SwapRequest) -> Result<SwapQuoted> {
        let amount_in = self.prices.money(&req.amount_in, &req.from)?.amount;
        let session = sessions::get(self.store.reader(), who.tenant_id, req.session_id)
            .await?
            .filter(|s| who.reaches(s.created_by))
            .ok_or(EngineError::NotFound("session"))?;
        let policy =
            policies::in_force(self.store.reader(), who.tenant_id, session.policy_id).await?;
        crate::breaker::refuse_if_frozen(&session, "the swap is quoted")?;
        if session.state != SessionState::Active {
            return Err(EngineError::Conflict(format!(
                "the session is {}: nothing is quoted for it",
                session.state.as_str()
            )));
        }
        let wallet = session.wallet_address.as_deref();
        let rail = self
            .rails
            .iter()
            .find(|r| r.network(PaymentTool::Swap, &req.from, wallet).is_some())
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "no exchange here trades {} from this session's wallet: configure [[dexes]] and bind the \
                     session to a wallet",
                    req.from
                ))
            })?;
        let ask = SwapAsk {
            dex: req.dex.clone(),
            from: req.from.clone(),
            to: req.to.clone(),
            amount_in,
            max_slippage_bps: policy.rules.swaps.slippage(req.max_slippage_bps),
        };
        rail.quote_swap(&ask).await.map_err(|e| match e {
            RailError::Refused(why) => EngineError::Invalid(why),
            other => EngineError::Unavailable(format!("the swap could not be quoted: {other}")),
        })
    }
}
