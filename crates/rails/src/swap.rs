//! Swaps on Uniswap V2 exchanges (VVS Finance on Cronos is one), quoted from the pool itself: the router's own
//! answer for the trade, and the reserves that say what the price was before it.

use crate::config::{DexConfig, TokenConfig};
use crate::evm::{EvmRails, from_units, to_units, unavailable};
use alloy::primitives::{Address, U256};
use alloy::sol;
use paygent_engine::RailError;
use paygent_engine::domain::Decimal;

sol! {
    #[sol(rpc)]
    interface UniswapV2Router {
        function getAmountsOut(uint256 amountIn, address[] path) external view returns (uint256[] amounts);
        function swapExactTokensForTokens(uint256 amountIn, uint256 amountOutMin, address[] path, address to,
            uint256 deadline) external returns (uint256[] amounts);
    }

    #[sol(rpc)]
    interface UniswapV2Factory {
        function getPair(address a, address b) external view returns (address);
    }

    #[sol(rpc)]
    interface UniswapV2Pair {
        function getReserves() external view returns (uint112 reserve0, uint112 reserve1, uint32 at);
        function token0() external view returns (address);
        event Swap(address indexed sender, uint256 amount0In, uint256 amount1In, uint256 amount0Out,
            uint256 amount1Out, address indexed to);
    }
}

/// Basis points in a whole.
const BPS: u32 = 10_000;

/// What trading `amount_in` of `from` for `to` on `dex` gives now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapQuote {
    pub dex: String,
    /// The exchange's router, which the trade pays.
    pub router: Address,
    pub from: String,
    pub to: String,
    pub amount_in: Decimal,
    pub amount_out: Decimal,
    /// How much worse than the pool's price before the trade it gets, the pool's fee included, in basis points
    /// (rounded up).
    pub price_impact_bps: u32,
    /// The pool's reserves of `from` and `to` when quoted, in their units.
    pub reserves: (U256, U256),
    units_in: U256,
    units_out: U256,
    decimals_out: u32,
}

impl SwapQuote {
    /// The least a trade may give once the price has moved by up to `max_slippage_bps` (rounded down to the
    /// token's units): what the swap's `amountOutMin` is set to.
    pub fn min_out(&self, max_slippage_bps: u32) -> Decimal {
        let kept = U256::from(BPS.saturating_sub(max_slippage_bps));
        let units = self.units_out * kept / U256::from(BPS);
        from_units(units, self.decimals_out).unwrap_or_default()
    }
}

/// How much less than the pool's price before the trade `units_out` is, in basis points rounded up: the
/// marginal price gives `units_in * reserve_out / reserve_in`.
fn price_impact_bps(
    units_in: U256,
    units_out: U256,
    (reserve_in, reserve_out): (U256, U256),
) -> u32 {
    let at_pool_price = units_in * reserve_out;
    let got = units_out * reserve_in;
    if at_pool_price.is_zero() || got >= at_pool_price {
        return 0;
    }
    let lost = (at_pool_price - got) * U256::from(BPS);
    let bps = lost.div_ceil(at_pool_price);
    u32::try_from(bps).unwrap_or(BPS)
}

impl EvmRails {
    /// Quotes trading `amount_in` of the token `from` for `to` on `dex` (the only exchange on their chain if not
    /// named): the router's `getAmountsOut` for the direct pool, and that pool's reserves.
    pub async fn quote_swap(
        &self,
        dex: Option<&str>,
        from: &str,
        to: &str,
        amount_in: Decimal,
    ) -> Result<SwapQuote, RailError> {
        if from == to {
            return Err(RailError::Refused(format!(
                "a swap trades one token for another, not {from} for itself"
            )));
        }
        let (sell, buy) = (self.token_config(from)?, self.token_config(to)?);
        let exchange = self.exchange(dex, sell.chain_id)?;
        if buy.chain_id != exchange.chain_id {
            let why = format!("{to} is not on {}'s chain", exchange.name);
            return Err(RailError::Refused(why));
        }
        let units_in = to_units(amount_in, sell.decimals)
            .filter(|u| !u.is_zero())
            .ok_or_else(|| {
                RailError::Refused(format!("{amount_in} {from} is not an amount to trade"))
            })?;
        let provider = self.provider(exchange.chain_id);
        let no_pool =
            || RailError::Refused(format!("{} has no pool of {from} and {to}", exchange.name));
        let path = vec![sell.address, buy.address];
        let amounts = UniswapV2Router::new(exchange.router, provider)
            .getAmountsOut(units_in, path)
            .call()
            .await
            .map_err(|_| no_pool())?;
        let units_out = *amounts.last().ok_or_else(no_pool)?;
        let reserves = self.reserves(exchange, sell, buy).await?;
        Ok(SwapQuote {
            dex: exchange.name.clone(),
            router: exchange.router,
            from: from.to_owned(),
            to: to.to_owned(),
            amount_in,
            amount_out: from_units(units_out, buy.decimals).ok_or_else(no_pool)?,
            price_impact_bps: price_impact_bps(units_in, units_out, reserves),
            reserves,
            units_in,
            units_out,
            decimals_out: buy.decimals,
        })
    }

    /// The exchange named, or the only one on `chain_id`.
    pub(crate) fn exchange(
        &self,
        name: Option<&str>,
        chain_id: u64,
    ) -> Result<&DexConfig, RailError> {
        let mut on_chain = self.dexes().filter(|d| d.chain_id == chain_id);
        let found = match name {
            Some(name) => on_chain.find(|d| d.name == name),
            None => on_chain.next().filter(|_| on_chain.next().is_none()),
        };
        found.ok_or_else(|| {
            RailError::Refused(match name {
                Some(name) => format!("no exchange named {name} is configured on chain {chain_id}"),
                None => {
                    format!("name the exchange: chain {chain_id} has none configured, or several")
                }
            })
        })
    }

    /// The pool of `a` and `b` on `exchange`: the contract whose `Swap` event says what a trade moved.
    pub(crate) async fn pair(
        &self,
        exchange: &DexConfig,
        a: &TokenConfig,
        b: &TokenConfig,
    ) -> Result<Address, RailError> {
        UniswapV2Factory::new(exchange.factory, self.provider(exchange.chain_id))
            .getPair(a.address, b.address)
            .call()
            .await
            .map_err(unavailable)
    }

    /// The pool's reserves of `sell` and `buy`, in that order.
    async fn reserves(
        &self,
        exchange: &DexConfig,
        sell: &TokenConfig,
        buy: &TokenConfig,
    ) -> Result<(U256, U256), RailError> {
        let provider = self.provider(exchange.chain_id);
        let pair = self.pair(exchange, sell, buy).await?;
        let pool = UniswapV2Pair::new(pair, provider);
        let token0 = pool.token0().call().await.map_err(unavailable)?;
        let r = pool.getReserves().call().await.map_err(unavailable)?;
        let (r0, r1) = (U256::from(r.reserve0), U256::from(r.reserve1));
        Ok(if token0 == sell.address {
            (r0, r1)
        } else {
            (r1, r0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_impact_counts_the_fee_and_the_pool_moving() {
        let pool = (U256::from(10_000u64), U256::from(5_000u64));
        // 100 in at 2:1 would be 50 out; 49 out is 2% worse.
        assert_eq!(
            price_impact_bps(U256::from(100u64), U256::from(49u64), pool),
            200
        );
        // 49.5 (as 99 of 200) rounds up to 1%.
        let fine = (U256::from(20_000u64), U256::from(10_000u64));
        assert_eq!(
            price_impact_bps(U256::from(200u64), U256::from(99u64), fine),
            100
        );
        assert_eq!(
            price_impact_bps(U256::from(100u64), U256::from(50u64), pool),
            0
        );
        assert_eq!(price_impact_bps(U256::ZERO, U256::ZERO, pool), 0);
    }
}
