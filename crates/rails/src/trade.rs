//! Trading a swap the guard authorized, on the transfers' discipline: quote again, sign everything, journal it,
//! and only then send. A trade is two transactions from the session's wallet: an `approve` of the router for
//! exactly what the trade takes (on top of any allowance already there, so the allowance after the trade is what
//! it was before), then `swapExactTokensForTokens` with the approved least out and a short deadline. Signed with
//! consecutive nonces and journaled together, they are sent again or found on chain after a crash.

use crate::config::TokenConfig;
use crate::evm::{
    Chain, EvmRails, Gas, SignedTx, from_units, land, next_nonce, sign_call, to_units, unavailable,
};
use crate::swap::{SwapQuote, UniswapV2Pair, UniswapV2Router};
use alloy::eips::BlockId;
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::Provider;
use alloy::rpc::types::{Log, TransactionReceipt};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::SolCall;
use paygent_engine::domain::Decimal;
use paygent_engine::domain::swap::SwapTerms;
use paygent_engine::{Journal, PaymentOrder, RailError, Settlement, Signed};
use serde_json::{Value, json};

sol! {
    #[sol(rpc)]
    interface Erc20 {
        function balanceOf(address owner) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
        function approve(address spender, uint256 value) external returns (bool);
        event Transfer(address indexed from, address indexed to, uint256 value);
    }
}

/// How long after signing a swap may be mined: long enough for a restart to send it again, short enough that a
/// swap left behind cannot trade at a much later price (its least out bounds it anyway).
const DEADLINE_SECONDS: u64 = 300;
/// The gas limit of a swap: it is signed before its `approve` is mined, so it cannot be estimated then, and a
/// node's estimate of a swap was seen short of what it used (anvil). A direct Uniswap V2 swap takes about 110,000;
/// gas not used is not paid.
const SWAP_GAS: u64 = 300_000;

/// A swap about to be signed: its units and what the wallet and router hold now.
struct Order<'a> {
    wallet: &'a PrivateKeySigner,
    sell: &'a TokenConfig,
    buy: &'a TokenConfig,
    router: Address,
    pair: Address,
    units_in: U256,
    min_units: U256,
}

/// The node's refusals of this runner's own broadcasts a moment ago: those are not looked up and sent again.
struct Sent {
    approve: Option<String>,
    swap: Option<String>,
}

fn refused(why: impl Into<String>) -> RailError {
    RailError::Refused(why.into())
}

/// The trade would give less than people approved: nothing is signed, and both quotes are told.
fn moved(order: &PaymentOrder, terms: &SwapTerms, now: &SwapQuote) -> RailError {
    RailError::PriceMoved(format!(
        "the price moved: {} {} was quoted {} {} when approved (at least {}), and is quoted {} now: nothing was \
         traded",
        order.amount, order.currency, terms.expected_out, terms.to, terms.min_out, now.amount_out
    ))
}

impl EvmRails {
    /// Trades an authorized swap, or, with `earlier` (a journaled trade from an interrupted run), sends it again
    /// or finds it on chain.
    pub(crate) async fn trade(
        &self,
        order: &PaymentOrder,
        earlier: Option<Signed>,
        journal: Journal<'_>,
    ) -> Result<Settlement, RailError> {
        let (_, chain) = self.token(&order.currency)?;
        match earlier {
            Some(signed) => self.settle_trade(chain, &signed, None).await,
            None => {
                let (signed, sent) = self.sign_trade(order, journal).await?;
                self.settle_trade(chain, &signed, sent).await
            }
        }
    }

    /// Quotes again and, if the trade still gives at least what was approved, signs and journals it, then
    /// broadcasts it if the journal kept this signature (another runner's is its to send).
    async fn sign_trade(
        &self,
        order: &PaymentOrder,
        journal: Journal<'_>,
    ) -> Result<(Signed, Option<Sent>), RailError> {
        let terms = order
            .swap
            .as_ref()
            .ok_or_else(|| refused("a swap without its terms"))?;
        let now = self
            .quote_swap(Some(&terms.dex), &order.currency, &terms.to, order.amount)
            .await?;
        if now.amount_out < terms.min_out {
            return Err(moved(order, terms, &now));
        }
        let trade = self.order_of(order, terms, &now).await?;
        let (_, chain) = self.token(&order.currency)?;
        let from = trade.wallet.address();
        let _turn = self.nonce_turn(from).await;
        let (txs, artifact) = self.sign_both(chain, &trade).await?;
        let mine = Signed {
            network: chain.caip2.clone(),
            tx_hash: Some(txs.1.hash.to_string()),
            artifact,
            refusal: None,
        };
        let stored = journal(mine.clone()).await?;
        if stored != mine {
            return Ok((stored, None));
        }
        let send = |tx: &SignedTx| {
            let raw = tx.raw.clone();
            async move { chain.provider.send_raw_transaction(&raw).await.err() }
        };
        let approve = match &txs.0 {
            Some(tx) => send(tx).await.map(|e| e.to_string()),
            None => None,
        };
        let swap = send(&txs.1).await.map(|e| e.to_string());
        Ok((stored, Some(Sent { approve, swap })))
    }

    /// The trade's units, checked against the router people approved and the wallet's balance.
    async fn order_of<'a>(
        &'a self,
        order: &'a PaymentOrder,
        terms: &'a SwapTerms,
        now: &SwapQuote,
    ) -> Result<Order<'a>, RailError> {
        let (sell, chain) = self.token(&order.currency)?;
        let buy = self.token_config(&terms.to)?;
        if !now
            .router
            .to_string()
            .eq_ignore_ascii_case(&order.recipient)
        {
            return Err(refused(format!(
                "{}'s router is {} now, not the {} that was approved: nothing was traded",
                terms.dex, now.router, order.recipient
            )));
        }
        let wallet = self.wallet(order)?;
        let (units_in, min_units) = (
            to_units(order.amount, sell.decimals),
            to_units(terms.min_out, buy.decimals),
        );
        let (Some(units_in), Some(min_units)) = (units_in, min_units) else {
            return Err(refused("the amounts are finer than the tokens allow"));
        };
        let token = Erc20::new(sell.address, &chain.provider);
        let owner = wallet.address();
        let held = token.balanceOf(owner).call().await.map_err(unavailable)?;
        if held < units_in {
            let held = from_units(held, sell.decimals).unwrap_or_default();
            return Err(refused(format!(
                "the wallet holds {held} {}, less than the {} to trade: nothing was traded",
                sell.symbol, order.amount
            )));
        }
        let exchange = self.exchange(Some(&terms.dex), sell.chain_id)?;
        Ok(Order {
            wallet,
            sell,
            buy,
            router: now.router,
            pair: self.pair(exchange, sell, buy).await?,
            units_in,
            min_units,
        })
    }

    /// What the router may take of the wallet's token once the wallet's transactions already sent are mined (the
    /// pending block): read in the wallet's turn, so a trade signed while another is in flight sets the allowance
    /// from what that one leaves. A node that cannot answer for the pending block is asked for the latest.
    async fn allowance_left(&self, chain: &Chain, t: &Order<'_>) -> Result<U256, RailError> {
        let token = Erc20::new(t.sell.address, &chain.provider);
        let owner = t.wallet.address();
        let asked = token.allowance(owner, t.router);
        match asked.call().block(BlockId::pending()).await {
            Ok(left) => Ok(left),
            Err(_) => asked.call().await.map_err(unavailable),
        }
    }

    /// Signs the `approve` (none when the allowance is already unlimited) and the swap on the next nonces, the
    /// swap's deadline on the chain's clock: both, and the artifact to journal. In the wallet's turn.
    async fn sign_both(
        &self,
        chain: &Chain,
        t: &Order<'_>,
    ) -> Result<((Option<SignedTx>, SignedTx), Value), RailError> {
        let from = t.wallet.address();
        let before = self.allowance_left(chain, t).await?;
        let mut nonce = next_nonce(chain, from).await?;
        let approve = match before.checked_add(t.units_in) {
            Some(value) => {
                let call = Erc20::approveCall {
                    spender: t.router,
                    value,
                }
                .abi_encode();
                let what = Gas::Estimate("approving the router");
                let signed =
                    sign_call(chain, t.wallet, (t.sell.address, call), nonce, what).await?;
                nonce += 1;
                Some(signed_tx(signed, from, nonce - 1))
            }
            None => None,
        };
        let deadline = crate::evm::chain_clock(chain).await?.1 + DEADLINE_SECONDS;
        let call = UniswapV2Router::swapExactTokensForTokensCall {
            amountIn: t.units_in,
            amountOutMin: t.min_units,
            path: vec![t.sell.address, t.buy.address],
            to: from,
            deadline: U256::from(deadline),
        }
        .abi_encode();
        let swap = sign_call(
            chain,
            t.wallet,
            (t.router, call),
            nonce,
            Gas::Fixed(SWAP_GAS),
        )
        .await?;
        let txs = (approve, signed_tx(swap, from, nonce));
        let artifact = artifact(t, &txs, deadline, before);
        Ok((txs, artifact))
    }

    /// Sends a journaled trade's transactions in order (unless this runner just did, `sent`) or finds them
    /// mined, and reads what the pool moved. The swap's own fate decides: a swap that reverted, or can never be
    /// mined after its `approve` was, traded nothing, and the allowance is set back.
    async fn settle_trade(
        &self,
        chain: &Chain,
        signed: &Signed,
        sent: Option<Sent>,
    ) -> Result<Settlement, RailError> {
        let a = &signed.artifact;
        let approve = match a.get("approve") {
            Some(tx) if !tx.is_null() => Some(SignedTx::stored(tx, None)?),
            _ => None,
        };
        let swap = SignedTx::stored(&a["swap"], None)?;
        let (sent_approve, sent_swap) = match sent {
            Some(s) => (Some(s.approve), Some(s.swap)),
            None => (None, None),
        };
        // The approve's own outcome matters only for the allowance: the swap after it is what trades.
        let approved = match &approve {
            Some(tx) => match land(chain, tx, sent_approve).await {
                Ok(receipt) => receipt.status(),
                Err(RailError::Superseded(_)) => false,
                Err(e) => return Err(e),
            },
            None => false,
        };
        match land(chain, &swap, sent_swap).await {
            Ok(receipt) if receipt.status() => Ok(swapped(chain, signed, &receipt)),
            Ok(_) => Err(self
                .set_back(chain, a, approved, "the swap reverted on chain")
                .await),
            Err(RailError::Superseded(why)) if approved => {
                Err(self.set_back(chain, a, true, &why).await)
            }
            Err(e) => Err(e),
        }
    }

    /// Nothing was traded: sets the router's allowance back to what it was before the trade's `approve` (if that
    /// landed), and says so. Not journaled: if it cannot be sent, the error tells the allowance left behind.
    async fn set_back(&self, chain: &Chain, a: &Value, approved: bool, why: &str) -> RailError {
        let nothing = format!("{why}: nothing was traded");
        if !approved {
            return refused(nothing);
        }
        match self.restore_allowance(chain, a).await {
            Ok(()) => refused(format!(
                "{nothing}, and the router's allowance was set back"
            )),
            Err(e) => refused(format!(
                "{nothing}, and the router's allowance could not be set back to {} ({e}): set it by hand",
                a["allowance_before"].as_str().unwrap_or("?")
            )),
        }
    }

    async fn restore_allowance(&self, chain: &Chain, a: &Value) -> Result<(), RailError> {
        let address = |v: &Value| v.as_str().and_then(|v| v.parse::<Address>().ok());
        let value = a["allowance_before"]
            .as_str()
            .and_then(|v| v.parse::<U256>().ok());
        let (Some(token), Some(router), Some(value), Some(from)) = (
            address(&a["token_in"]),
            address(&a["router"]),
            value,
            address(&a["swap"]["from"]),
        ) else {
            return Err(refused("the stored trade does not say its allowance"));
        };
        let wallet = self.signer_of(from)?;
        let _turn = self.nonce_turn(from).await;
        let nonce = next_nonce(chain, from).await?;
        let call = Erc20::approveCall {
            spender: router,
            value,
        }
        .abi_encode();
        let what = Gas::Estimate("setting the allowance back");
        let signed = sign_call(chain, wallet, (token, call), nonce, what).await?;
        let receipt = land(chain, &signed_tx(signed, from, nonce), None).await?;
        match receipt.status() {
            true => Ok(()),
            false => Err(refused("it reverted")),
        }
    }
}

fn signed_tx((raw, hash): (Bytes, B256), from: Address, nonce: u64) -> SignedTx {
    SignedTx {
        hash,
        raw,
        from,
        nonce,
    }
}

fn tx_json(tx: &SignedTx) -> Value {
    json!({"raw": tx.raw.to_string(), "hash": tx.hash.to_string(), "from": tx.from, "nonce": tx.nonce})
}

/// What is journaled of a signed trade: both transactions, and what is needed to read its outcome or set the
/// allowance back.
fn artifact(
    t: &Order<'_>,
    (approve, swap): &(Option<SignedTx>, SignedTx),
    deadline: u64,
    allowance_before: U256,
) -> Value {
    json!({"kind": "swap", "router": t.router, "pair": t.pair, "token_in": t.sell.address,
        "token_out": t.buy.address, "decimals_in": t.sell.decimals, "decimals_out": t.buy.decimals,
        "units_in": t.units_in.to_string(), "min_units": t.min_units.to_string(),
        "allowance_before": allowance_before.to_string(), "deadline": deadline,
        "approve": approve.as_ref().map(tx_json), "swap": tx_json(swap)})
}

/// What a mined swap moved, as units in and out: from its pool's `Swap` event, or, from a pool that tells none
/// Paygent reads (a fork that changed it), the `Transfer` of the bought token to the wallet (what went in is then
/// the amount signed: an exact-in swap takes all of it).
fn moved_units(a: &Value, logs: &[Log]) -> Option<(U256, U256)> {
    let address = |v: &Value| v.as_str().and_then(|v| v.parse::<Address>().ok());
    let (pair, token_in, token_out) = (
        address(&a["pair"])?,
        address(&a["token_in"])?,
        address(&a["token_out"])?,
    );
    let swap = logs
        .iter()
        .filter(|l| l.address() == pair)
        .find_map(|l| l.log_decode::<UniswapV2Pair::Swap>().ok());
    if let Some(event) = swap {
        let e = event.inner.data;
        // A pool's token0 is the lower address.
        return Some(match token_in < token_out {
            true => (e.amount0In, e.amount1Out),
            false => (e.amount1In, e.amount0Out),
        });
    }
    let wallet = address(&a["swap"]["from"])?;
    let units_in = a["units_in"].as_str()?.parse().ok()?;
    let bought = logs
        .iter()
        .filter(|l| l.address() == token_out)
        .filter_map(|l| l.log_decode::<Erc20::Transfer>().ok())
        .find(|t| t.inner.data.to == wallet)?;
    Some((units_in, bought.inner.data.value))
}

/// The receipt people see of a mined swap that succeeded: what it moved, or, if no event says, that it traded
/// and what it bought is not known here. Never a failure: the trade happened.
fn swapped(chain: &Chain, signed: &Signed, receipt: &TransactionReceipt) -> Settlement {
    let a = &signed.artifact;
    let decimals = |k: &str| {
        a[k].as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(0)
    };
    let amount =
        |units: U256, k: &str| from_units(units, decimals(k)).map(|d: Decimal| d.to_string());
    let min_out = a["min_units"].as_str().and_then(|u| u.parse::<U256>().ok());
    let mut told = json!({"min_out": min_out.and_then(|m| amount(m, "decimals_out")),
        "approve_tx": a["approve"]["hash"], "block": receipt.block_number, "gas_used": receipt.gas_used,
        "confirmations": chain.config.confirmations});
    match moved_units(a, receipt.inner.logs()) {
        Some((units_in, units_out)) => {
            told["amount_in"] = json!(amount(units_in, "decimals_in"));
            told["amount_out"] = json!(amount(units_out, "decimals_out"));
        }
        None => {
            told["note"] =
                json!("the swap traded, but no event in its receipt says what it bought");
        }
    }
    Settlement {
        network: chain.caip2.clone(),
        tx_hash: Some(receipt.transaction_hash.to_string()),
        receipt: told,
        paid: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::SolEvent;

    fn log(address: Address, data: alloy::primitives::LogData) -> Log {
        Log {
            inner: alloy::primitives::Log { address, data },
            ..Default::default()
        }
    }

    /// What a swap moved is read from its pool's `Swap` (token0 is the lower address), else from the bought
    /// token's `Transfer` to the wallet; from neither, it is not known (and the trade is still not a failure).
    #[test]
    fn a_swap_s_amounts_come_from_its_pool_or_the_bought_token() {
        let (pair, wallet) = (Address::repeat_byte(0xaa), Address::repeat_byte(0x0b));
        let (low, high) = (Address::repeat_byte(0x01), Address::repeat_byte(0x02));
        let artifact = |token_in: Address, token_out: Address| {
            json!({"pair": pair, "token_in": token_in, "token_out": token_out, "units_in": "700",
                "swap": {"from": wallet}})
        };
        let units = |n: u64| U256::from(n);
        let swap = UniswapV2Pair::Swap {
            sender: wallet,
            amount0In: units(700),
            amount1In: units(0),
            amount0Out: units(0),
            amount1Out: units(42),
            to: wallet,
        };
        let pool = [log(pair, swap.encode_log_data())];
        assert_eq!(
            moved_units(&artifact(low, high), &pool),
            Some((units(700), units(42)))
        );
        let back = UniswapV2Pair::Swap {
            amount0In: units(0),
            amount1In: units(9),
            amount0Out: units(5),
            amount1Out: units(0),
            ..swap
        };
        let pool = [log(pair, back.encode_log_data())];
        assert_eq!(
            moved_units(&artifact(high, low), &pool),
            Some((units(9), units(5)))
        );

        let to_wallet = Erc20::Transfer {
            from: pair,
            to: wallet,
            value: units(41),
        };
        let elsewhere = Erc20::Transfer {
            to: Address::repeat_byte(0x0c),
            ..to_wallet.clone()
        };
        let transfers = [
            log(high, elsewhere.encode_log_data()),
            log(high, to_wallet.encode_log_data()),
        ];
        assert_eq!(
            moved_units(&artifact(low, high), &transfers),
            Some((units(700), units(41)))
        );
        assert_eq!(moved_units(&artifact(low, high), &transfers[..1]), None);
    }
}
