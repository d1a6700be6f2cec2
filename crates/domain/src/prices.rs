//! USD values come from a price table, never from raw token amounts: 10.01 CRO and 9 ETH are not comparable.

use crate::money::{Money, MoneyError, parse_decimal, validate_symbol};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// What Paygent knows about a currency: how finely it divides and what one unit is worth in USD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrencySpec {
    pub symbol: String,
    pub decimals: u32,
    pub usd_price: Decimal,
}

/// Prices by currency symbol. A currency without a price cannot be paid in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    currencies: BTreeMap<String, CurrencySpec>,
}

impl Default for PriceTable {
    /// The shipped defaults: USDC = USDT = 1, CRO = 0.10, ETH = 3,000.
    fn default() -> Self {
        let mut table = PriceTable {
            currencies: BTreeMap::new(),
        };
        for (symbol, decimals, price) in [
            ("USDC", 6, "1"),
            ("USDT", 6, "1"),
            ("CRO", 18, "0.10"),
            ("ETH", 18, "3000"),
        ] {
            table
                .set(symbol, Some(decimals), price)
                .expect("default prices are valid");
        }
        table
    }
}

impl PriceTable {
    /// An empty table, for callers that configure every currency themselves.
    pub fn empty() -> Self {
        PriceTable {
            currencies: BTreeMap::new(),
        }
    }

    /// Sets (or overrides) a currency's price, and its decimals when given. A new currency without decimals
    /// gets 18, the ERC-20 norm.
    pub fn set(
        &mut self,
        symbol: &str,
        decimals: Option<u32>,
        usd_price: &str,
    ) -> Result<(), MoneyError> {
        validate_symbol(symbol)?;
        let usd_price = parse_decimal(usd_price)?;
        if usd_price <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        let decimals = decimals
            .or_else(|| self.currencies.get(symbol).map(|c| c.decimals))
            .unwrap_or(18)
            .min(crate::money::MAX_DECIMALS);
        self.currencies.insert(
            symbol.to_owned(),
            CurrencySpec {
                symbol: symbol.to_owned(),
                decimals,
                usd_price,
            },
        );
        Ok(())
    }

    pub fn get(&self, symbol: &str) -> Option<&CurrencySpec> {
        self.currencies.get(symbol)
    }

    pub fn currencies(&self) -> impl Iterator<Item = &CurrencySpec> {
        self.currencies.values()
    }

    /// Parses and validates an amount string in a currency this table knows.
    pub fn money(&self, amount: &str, currency: &str) -> Result<Money, MoneyError> {
        validate_symbol(currency)?;
        let spec = self
            .get(currency)
            .ok_or_else(|| MoneyError::UnknownCurrency(currency.to_owned()))?;
        let amount = parse_decimal(amount).map_err(|e| match e {
            MoneyError::TooManyDecimals { given, .. } => MoneyError::TooManyDecimals {
                currency: currency.to_owned(),
                given,
                allowed: spec.decimals,
            },
            other => other,
        })?;
        Money::new(amount, currency, spec.decimals)
    }

    /// The exact USD value of `money`.
    pub fn usd_value(&self, money: &Money) -> Result<Decimal, MoneyError> {
        let spec = self
            .get(&money.currency)
            .ok_or_else(|| MoneyError::UnknownCurrency(money.currency.clone()))?;
        money
            .amount
            .checked_mul(spec.usd_price)
            .ok_or(MoneyError::TooLarge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn defaults_price_stablecoins_at_par() {
        let t = PriceTable::default();
        let m = t.money("9.99", "USDC").unwrap();
        assert_eq!(t.usd_value(&m).unwrap(), d("9.99"));
        let eth = t.money("1", "ETH").unwrap();
        assert_eq!(t.usd_value(&eth).unwrap(), d("3000"));
        let cro = t.money("100", "CRO").unwrap();
        assert_eq!(t.usd_value(&cro).unwrap(), d("10"));
        assert_eq!(t.get("USDT").unwrap().decimals, 6);
    }

    #[test]
    fn overrides_keep_decimals_and_add_new_currencies() {
        let mut t = PriceTable::default();
        t.set("CRO", None, "0.08").unwrap();
        assert_eq!(t.get("CRO").unwrap().decimals, 18);
        let cro = t.money("100", "CRO").unwrap();
        assert_eq!(t.usd_value(&cro).unwrap(), d("8.00"));
        t.set("DAI", Some(18), "1").unwrap();
        assert!(t.money("1.5", "DAI").is_ok());
        assert!(t.set("BAD", None, "0").is_err());
        assert!(t.set("BAD", None, "-1").is_err());
        assert!(t.set("bad", None, "1").is_err());
    }

    #[test]
    fn unknown_currency_and_precision_are_refused() {
        let t = PriceTable::default();
        assert_eq!(
            t.money("1", "DOGE"),
            Err(MoneyError::UnknownCurrency("DOGE".into()))
        );
        assert_eq!(
            t.money("1.0000001", "USDC"),
            Err(MoneyError::TooManyDecimals {
                currency: "USDC".into(),
                given: 7,
                allowed: 6
            })
        );
        assert_eq!(t.money("0.000", "USDC"), Err(MoneyError::NotPositive));
    }

    #[test]
    fn usd_value_is_exact() {
        let mut t = PriceTable::default();
        t.set("CRO", None, "0.1").unwrap();
        let m = t.money("0.000000000000000003", "CRO").unwrap();
        assert_eq!(t.usd_value(&m).unwrap(), d("0.0000000000000000003"));
    }
}
