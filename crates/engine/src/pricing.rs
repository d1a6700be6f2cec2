//! Resources that name their own price (x402 URLs): the agent's amount is the most it would pay, and the guard
//! decides on the price the service asks, read before the tenant's lock is taken.

use crate::guard::PaymentRequest;
use crate::rails::{Asked, RailError};
use crate::{EngineError, Paygent, Result};
use paygent_domain::payment::{PaymentIntent, Recipient};
use paygent_domain::policy::PaymentTool;
use paygent_domain::{Principal, SessionState};
use paygent_store::sessions;

/// What the guard decides on.
#[derive(Debug)]
pub(crate) enum Pricing {
    /// The amount as asked: an address, or a resource no rail here pays (its agent pays it and reports back).
    AsAsked,
    /// The service's price, within the agent's maximum (the amount it asked with).
    Price(PaymentIntent),
    /// Nothing it offers can be paid, in words: recorded as a failed payment, and nothing is signed.
    Refused(String),
}

impl Paygent {
    /// Asks the resource a payment names its price, when a rail here would pay it from the session's wallet.
    /// A resource that does not ask to be paid is an error ([`EngineError::Unpaid`]): there is nothing to pay.
    pub(crate) async fn pricing(
        &self,
        who: &Principal,
        req: &PaymentRequest,
        intent: &PaymentIntent,
    ) -> Result<Pricing> {
        let Recipient::Url(url) = &intent.recipient else {
            return Ok(Pricing::AsAsked);
        };
        // Read without the lock. A session the caller cannot reach is answered by the guard (not found), and so
        // is a frozen or killed one (denied): nobody is asked a price on their behalf.
        let session = sessions::get(self.store.reader(), who.tenant_id, req.session_id)
            .await?
            .filter(|s| who.reaches(s.created_by) && s.state == SessionState::Active);
        let wallet = session.as_ref().and_then(|s| s.wallet_address.as_deref());
        let currency = &intent.money.currency;
        let rail = self.rails.iter().find(|r| {
            r.network(PaymentTool::X402Payment, currency, wallet)
                .is_some()
        });
        let Some(rail) = rail.filter(|_| session.is_some()) else {
            return Ok(Pricing::AsAsked);
        };
        // Nor while the tenant's emergency stop is engaged (the guard denies it): an unreadable stop fails.
        if self.store.kill_switch(who.tenant_id).await?.is_some() {
            return Ok(Pricing::AsAsked);
        }
        match rail.price(url, currency).await {
            Ok(Asked::Price(price)) => Ok(match intent.at_price(price) {
                Ok(priced) => Pricing::Price(priced),
                Err(why) => Pricing::Refused(why),
            }),
            Ok(Asked::Nothing { status, body }) => Err(EngineError::Unpaid {
                url: url.clone(),
                status,
                body,
            }),
            Err(RailError::Refused(why)) => Ok(Pricing::Refused(why)),
            Err(e) => Err(EngineError::Unavailable(format!(
                "{url} could not be asked its price: {e}"
            ))),
        }
    }
}
