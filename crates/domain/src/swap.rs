//! Swaps: a payment of one token into an exchange's pool for another token, bounded by the least it may give.
//! The quote is taken before the guard; what people approve is that quote's bound, and a trade that would give
//! less never happens.

use crate::money::Decimal;
use crate::rules::Refusal;
use serde::{Deserialize, Serialize};

/// Basis points in a whole.
pub const BPS: u32 = 10_000;

/// The reason a swap's payment failed when the exchange gave less than people approved by the time it traded.
pub const PRICE_MOVED: &str = "price_moved";

/// What a swap people approved does when, by the time it trades, the exchange gives less than the least out they
/// approved: nothing trades either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnPriceMoved {
    /// The step fails with both quotes.
    #[default]
    Fail,
    /// The step quotes again and asks people again, on the new quote.
    AskAgain,
}

/// What a swap buys and the least it may give, as quoted when it was asked for: stored with its payment, shown
/// to the people asked, and bound by the approval's digest. The payment's amount and currency are what it sells;
/// its recipient is the exchange's router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwapTerms {
    /// The exchange, as configured (`[[dexes]] name`).
    pub dex: String,
    /// The token bought.
    pub to: String,
    /// What the pool gave for it when quoted.
    #[schema(value_type = String, example = "0.049")]
    pub expected_out: Decimal,
    /// The least the trade may give (the swap's `amountOutMin`): the quote less the slippage bound.
    #[schema(value_type = String, example = "0.0487")]
    pub min_out: Decimal,
    /// How much worse than the pool's price before the trade the quote is, fee included.
    pub price_impact_bps: u32,
    /// The slippage bound `min_out` was taken with.
    pub max_slippage_bps: u32,
}

/// What a policy lets its agents trade, and how loosely. An agent may name a tighter slippage, never a looser one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwapRules {
    /// The slippage bound of a swap whose agent names none, in basis points.
    #[serde(default = "default_slippage")]
    #[schema(minimum = 0, maximum = 10000, example = 50)]
    pub default_slippage_bps: u32,
    /// The most slippage a swap may be bounded by.
    #[serde(default = "max_slippage")]
    #[schema(minimum = 0, maximum = 10000, example = 100)]
    pub max_slippage_bps: u32,
    /// The most a swap may move its pool's price (its price impact, fee included).
    #[serde(default = "max_impact")]
    #[schema(minimum = 0, maximum = 10000, example = 300)]
    pub max_price_impact_bps: u32,
    /// The exchanges its agents may trade on, by configured name or router address; any configured one when empty.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub dexes: Vec<String>,
    /// The tokens its agents may sell or buy, by symbol; any configured one when empty.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub tokens: Vec<String>,
    /// What an approved swap does when the price moved past its bound before it traded.
    #[serde(default)]
    pub on_price_moved: OnPriceMoved,
}

fn default_slippage() -> u32 {
    50
}

fn max_slippage() -> u32 {
    100
}

fn max_impact() -> u32 {
    300
}

impl Default for SwapRules {
    fn default() -> Self {
        SwapRules {
            default_slippage_bps: default_slippage(),
            max_slippage_bps: max_slippage(),
            max_price_impact_bps: max_impact(),
            dexes: Vec::new(),
            tokens: Vec::new(),
            on_price_moved: OnPriceMoved::Fail,
        }
    }
}

/// One swap as the policy judges it: what it sells, where, and its terms.
pub struct SwapAsked<'a> {
    pub from: &'a str,
    pub router: &'a str,
    pub terms: &'a SwapTerms,
}

impl SwapTerms {
    /// Terms that make sense: a token to buy, a least out above nothing and at most the quote, bounds in a whole.
    pub fn check(&self) -> Result<(), String> {
        crate::money::validate_symbol(&self.to).map_err(|e| e.to_string())?;
        if self.min_out <= Decimal::ZERO || self.min_out > self.expected_out {
            return Err(format!(
                "the least out {} must be above zero and at most the quote {}",
                self.min_out, self.expected_out
            ));
        }
        if self.max_slippage_bps > BPS || self.price_impact_bps > BPS {
            return Err(format!("basis points are at most {BPS}"));
        }
        Ok(())
    }
}

impl SwapRules {
    /// The slippage bound a swap is quoted with: the agent's, or the policy's default.
    pub fn slippage(&self, asked: Option<u32>) -> u32 {
        asked.unwrap_or(self.default_slippage_bps)
    }

    /// Checks what serde cannot: bounds within a whole, the default within the maximum, list sizes.
    pub fn validate(&self) -> Result<(), String> {
        let (default, max) = (self.default_slippage_bps, self.max_slippage_bps);
        if max > BPS || self.max_price_impact_bps > BPS {
            return Err(format!("basis points are at most {BPS}"));
        }
        if default > max {
            return Err(format!(
                "default_slippage_bps {default} is above max_slippage_bps {max}"
            ));
        }
        if self.dexes.len() > 100 || self.tokens.len() > 100 {
            return Err("dexes and tokens hold at most 100 entries each".into());
        }
        Ok(())
    }

    /// Whether the policy refuses the swap outright: an exchange or token it does not list, a slippage bound or a
    /// price impact above its maximum.
    pub fn refusal(&self, swap: &SwapAsked<'_>) -> Option<Refusal> {
        let t = swap.terms;
        let on_dex = |d: &String| *d == t.dex || d.eq_ignore_ascii_case(swap.router);
        if !self.dexes.is_empty() && !self.dexes.iter().any(on_dex) {
            let detail = format!("the policy does not let its agents trade on {}", t.dex);
            return Some(refused("swaps.dexes", detail));
        }
        let unlisted = [swap.from, t.to.as_str()]
            .into_iter()
            .find(|token| !self.tokens.is_empty() && !self.tokens.iter().any(|l| l == token));
        if let Some(token) = unlisted {
            let detail = format!("the policy does not let its agents trade {token}");
            return Some(refused("swaps.tokens", detail));
        }
        if t.max_slippage_bps > self.max_slippage_bps {
            let detail = format!(
                "a slippage bound of {} bps is above the policy's {} bps",
                t.max_slippage_bps, self.max_slippage_bps
            );
            return Some(refused("swaps.max_slippage_bps", detail));
        }
        if t.price_impact_bps > self.max_price_impact_bps {
            let detail = format!(
                "the trade would move the pool's price by {} bps, above the policy's {} bps",
                t.price_impact_bps, self.max_price_impact_bps
            );
            return Some(refused("swaps.max_price_impact_bps", detail));
        }
        None
    }
}

fn refused(rule: &'static str, detail: String) -> Refusal {
    Refusal { rule, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER: &str = "0x00000000000000000000000000000000000000aa";

    fn terms(slippage: u32, impact: u32) -> SwapTerms {
        SwapTerms {
            dex: "vvs".into(),
            to: "WETH".into(),
            expected_out: Decimal::ONE,
            min_out: Decimal::ONE,
            price_impact_bps: impact,
            max_slippage_bps: slippage,
        }
    }

    fn rule_of(rules: &SwapRules, t: &SwapTerms, from: &str) -> Option<&'static str> {
        let asked = SwapAsked {
            from,
            router: ROUTER,
            terms: t,
        };
        rules.refusal(&asked).map(|r| r.rule)
    }

    #[test]
    fn the_policy_bounds_slippage_impact_exchanges_and_tokens() {
        let open = SwapRules::default();
        assert_eq!(rule_of(&open, &terms(100, 300), "USDC"), None);
        assert_eq!(
            rule_of(&open, &terms(101, 0), "USDC"),
            Some("swaps.max_slippage_bps")
        );
        assert_eq!(
            rule_of(&open, &terms(50, 301), "USDC"),
            Some("swaps.max_price_impact_bps")
        );
        let listed = SwapRules {
            dexes: vec![ROUTER.to_uppercase().replace("0X", "0x")],
            tokens: vec!["USDC".into(), "WETH".into()],
            ..SwapRules::default()
        };
        assert_eq!(rule_of(&listed, &terms(50, 0), "USDC"), None, "by router");
        assert_eq!(rule_of(&listed, &terms(50, 0), "CRO"), Some("swaps.tokens"));
        let by_name = SwapRules {
            dexes: vec!["mmf".into()],
            ..SwapRules::default()
        };
        assert_eq!(
            rule_of(&by_name, &terms(50, 0), "USDC"),
            Some("swaps.dexes")
        );
    }

    #[test]
    fn an_agent_names_its_slippage_or_takes_the_default() {
        let rules = SwapRules::default();
        assert_eq!(rules.slippage(None), 50);
        assert_eq!(rules.slippage(Some(10)), 10);
        assert!(rules.validate().is_ok());
        let loose = SwapRules {
            default_slippage_bps: 200,
            ..SwapRules::default()
        };
        assert!(
            loose
                .validate()
                .unwrap_err()
                .contains("above max_slippage_bps")
        );
        let whole = SwapRules {
            max_price_impact_bps: 10_001,
            ..SwapRules::default()
        };
        assert!(whole.validate().is_err());
    }
}
