//! Exact money: a decimal amount with its currency, validated before anything else sees it.

pub use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The largest amount Paygent accepts in any currency. Anything above is a typo or an attack.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(0xD4A5_1000, 0xE8, 0, false, 0); // 1_000_000_000_000

/// The most decimals any currency may declare (ERC-20 tokens use at most 18).
pub const MAX_DECIMALS: u32 = 18;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount {0:?} is not a plain decimal number such as \"15.00\"")]
    NotADecimal(String),
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount has {given} decimals but {currency} allows at most {allowed}")]
    TooManyDecimals {
        currency: String,
        given: u32,
        allowed: u32,
    },
    #[error("amount exceeds the maximum of {MAX_AMOUNT}")]
    TooLarge,
    #[error("{0:?} is not a currency symbol (1 to 12 letters or digits, upper case)")]
    BadSymbol(String),
    #[error("unknown currency {0}: it has no configured price")]
    UnknownCurrency(String),
}

/// Parses a decimal string strictly: digits, optionally a dot and more digits. No sign, exponent, spaces or
/// leading dot, so "1e3", "+5", " 5" and "1.2.3" are refused rather than guessed at.
pub fn parse_decimal(text: &str) -> Result<Decimal, MoneyError> {
    let bad = || MoneyError::NotADecimal(text.to_owned());
    if let Some(magnitude) = text.strip_prefix('-') {
        // A clear "not positive" beats "not a decimal" for the commonest mistake.
        return Err(match parse_decimal(magnitude) {
            Ok(_) => MoneyError::NotPositive,
            Err(_) => bad(),
        });
    }
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(bad());
    }
    if int.len() > 16 || frac.is_some_and(|f| f.len() as u32 > MAX_DECIMALS) {
        return Err(if int.len() > 16 {
            MoneyError::TooLarge
        } else {
            MoneyError::TooManyDecimals {
                currency: String::new(),
                given: frac.map_or(0, |f| f.len() as u32),
                allowed: MAX_DECIMALS,
            }
        });
    }
    Decimal::from_str_exact(text).map_err(|_| bad())
}

/// Serde helpers that read settings' decimals as strict strings: "1e3", " 5" or the number 5 are refused. A
/// leading minus is read, so that validation can say "must not be negative" instead of "not a decimal".
pub mod strict {
    use super::{Decimal, parse_decimal};
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use std::collections::BTreeMap;

    fn signed(text: &str) -> Result<Decimal, super::MoneyError> {
        match text.strip_prefix('-') {
            Some(magnitude) => parse_decimal(magnitude).map(|d| -d),
            None => parse_decimal(text),
        }
    }

    pub fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        signed(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| signed(&s).map_err(D::Error::custom))
            .transpose()
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Decimal>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| Ok((k, signed(&v).map_err(D::Error::custom)?)))
            .collect()
    }
}

/// Checks a currency symbol's shape (not whether it is known).
pub fn validate_symbol(symbol: &str) -> Result<(), MoneyError> {
    let ok = (1..=12).contains(&symbol.len())
        && symbol
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(MoneyError::BadSymbol(symbol.to_owned()))
    }
}

/// A validated positive amount in a known currency. Build it through [`crate::PriceTable::money`], which knows
/// each currency's decimals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount: Decimal,
    pub currency: String,
}

impl Money {
    /// Validates `amount` against the currency's decimals and the global bounds.
    pub fn new(amount: Decimal, currency: &str, decimals: u32) -> Result<Self, MoneyError> {
        validate_symbol(currency)?;
        if amount <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        if amount > MAX_AMOUNT {
            return Err(MoneyError::TooLarge);
        }
        if amount.scale() > decimals {
            return Err(MoneyError::TooManyDecimals {
                currency: currency.to_owned(),
                given: amount.scale(),
                allowed: decimals,
            });
        }
        Ok(Money {
            amount,
            currency: currency.to_owned(),
        })
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    /// Parses "15.00 USDC", bounded by [`MAX_DECIMALS`]; currency-specific decimals are checked by the price table.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (amount, currency) = s
            .split_once(' ')
            .ok_or_else(|| MoneyError::NotADecimal(s.to_owned()))?;
        Money::new(parse_decimal(amount)?, currency, MAX_DECIMALS)
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn max_amount_is_one_trillion() {
        assert_eq!(MAX_AMOUNT, d("1000000000000"));
    }

    #[test]
    fn parses_plain_decimals_exactly() {
        assert_eq!(parse_decimal("15.00").unwrap(), d("15.00"));
        assert_eq!(parse_decimal("15.00").unwrap().scale(), 2);
        assert_eq!(parse_decimal("0.000001").unwrap(), d("0.000001"));
        assert_eq!(parse_decimal("7").unwrap(), d("7"));
    }

    #[test]
    fn refuses_anything_it_would_have_to_guess() {
        for bad in [
            "", "1e3", "1E3", "+5", "-x", "--5", " 5", "5 ", "1.2.3", ".5", "5.", "NaN", "inf",
            "0x10", "1_000", "1,5", "١",
        ] {
            assert!(
                matches!(parse_decimal(bad), Err(MoneyError::NotADecimal(_))),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(parse_decimal("-5"), Err(MoneyError::NotPositive));
        assert_eq!(
            parse_decimal("12345678901234567"),
            Err(MoneyError::TooLarge)
        );
        assert!(matches!(
            parse_decimal("0.1234567890123456789"),
            Err(MoneyError::TooManyDecimals { .. })
        ));
    }

    #[test]
    fn money_rejects_zero_negative_huge_and_overprecise() {
        assert_eq!(Money::new(d("0"), "USDC", 6), Err(MoneyError::NotPositive));
        assert_eq!(Money::new(d("-1"), "USDC", 6), Err(MoneyError::NotPositive));
        assert_eq!(
            Money::new(d("1000000000000.01"), "USDC", 6),
            Err(MoneyError::TooLarge)
        );
        assert!(Money::new(d("1000000000000"), "USDC", 6).is_ok());
        assert_eq!(
            Money::new(d("1.1234567"), "USDC", 6),
            Err(MoneyError::TooManyDecimals {
                currency: "USDC".into(),
                given: 7,
                allowed: 6
            })
        );
        assert!(Money::new(d("1.123456"), "USDC", 6).is_ok());
        assert!(matches!(
            Money::new(d("1"), "usdc", 6),
            Err(MoneyError::BadSymbol(_))
        ));
    }

    #[test]
    fn parses_and_displays_amount_with_currency() {
        let m: Money = "15.00 USDC".parse().unwrap();
        assert_eq!(m.amount, d("15.00"));
        assert_eq!(m.to_string(), "15.00 USDC");
        assert!("15.00".parse::<Money>().is_err());
    }
}
