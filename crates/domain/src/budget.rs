//! Daily budgets: how much a session may spend per currency and in USD, and where its day begins.
//!
//! available = limit − spent today − reserved. A payment that passes the guard reserves (or spends) its amount;
//! a pending approval holds a reservation, so many pending requests cannot overspend together once approved.

use crate::money::{Decimal, MoneyError, strict};
use crate::prices::PriceTable;
use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The ledger key of the USD total, which no currency symbol can take (symbols are letters and digits).
pub const USD_TOTAL: &str = "$USD";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBudgetExceeded {
    /// Deny the payment with `budget_exceeded`.
    #[default]
    Deny,
    /// Route it to a person, who may knowingly exceed the budget.
    RequireApproval,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Per-currency daily limits, e.g. `{"USDC": "100.00"}`, each within its currency's decimals. A currency
    /// without one is limited only by the USD total.
    #[serde(default, deserialize_with = "strict::map")]
    #[schema(value_type = BTreeMap<String, crate::rules::AmountText>, example = json!({"USDC": "100.00"}))]
    pub daily_limits: BTreeMap<String, Decimal>,
    /// A daily total across currencies, by USD value.
    #[serde(default, deserialize_with = "strict::option")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$", example = "150")]
    pub daily_limit_usd: Option<Decimal>,
    #[serde(default, deserialize_with = "strict::option")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$", example = "50")]
    pub max_per_payment_usd: Option<Decimal>,
    /// An IANA time zone; "today" starts at its midnight.
    #[serde(default = "utc")]
    #[schema(example = "Europe/Paris", max_length = 64)]
    pub budget_time_zone: String,
    #[serde(default)]
    pub on_budget_exceeded: OnBudgetExceeded,
}

fn utc() -> String {
    "UTC".into()
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            daily_limits: BTreeMap::new(),
            daily_limit_usd: None,
            max_per_payment_usd: None,
            budget_time_zone: utc(),
            on_budget_exceeded: OnBudgetExceeded::Deny,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetConfigError {
    #[error("unknown time zone {0:?}: use an IANA name such as \"Europe/Paris\"")]
    BadTimeZone(String),
    #[error("daily limit for {currency}: {reason}")]
    BadLimit { currency: String, reason: String },
    #[error("{field} must be a non-negative decimal of at most 6 decimals")]
    BadUsd { field: &'static str },
}

/// A spend or reservation that does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error(
        "daily {currency} limit is {limit}; {available} {currency} available, {requested} requested"
    )]
    Currency {
        currency: String,
        limit: Decimal,
        available: Decimal,
        requested: Decimal,
    },
    #[error("daily USD limit is {limit}; ${available} available, ${requested} requested")]
    Usd {
        limit: Decimal,
        available: Decimal,
        requested: Decimal,
    },
    #[error("a single payment may be at most ${max}; this one is ${requested}")]
    PerPayment { max: Decimal, requested: Decimal },
}

/// A day's totals for one ledger key (a currency, or [`USD_TOTAL`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    #[schema(value_type = String, example = "42.50")]
    pub spent: Decimal,
    #[schema(value_type = String, example = "30.00")]
    pub reserved: Decimal,
}

impl Usage {
    /// What is left under `limit`; negative when a person approved past it or the limit was lowered.
    pub fn available(&self, limit: Decimal) -> Decimal {
        limit - self.spent - self.reserved
    }
}

fn check_usd(field: &'static str, v: Option<Decimal>) -> Result<(), BudgetConfigError> {
    match v {
        Some(d) if d.is_sign_negative() || d.scale() > 6 || d > crate::money::MAX_AMOUNT => {
            Err(BudgetConfigError::BadUsd { field })
        }
        _ => Ok(()),
    }
}

impl BudgetConfig {
    /// Checks limits against the currencies Paygent knows, and the time zone against the IANA database.
    pub fn validate(&self, prices: &PriceTable) -> Result<(), BudgetConfigError> {
        self.time_zone()?;
        for (currency, limit) in &self.daily_limits {
            let bad = |reason: String| BudgetConfigError::BadLimit {
                currency: currency.clone(),
                reason,
            };
            let spec = prices
                .get(currency)
                .ok_or_else(|| bad(MoneyError::UnknownCurrency(currency.clone()).to_string()))?;
            if limit.is_sign_negative() {
                return Err(bad("must not be negative".into()));
            }
            if limit.scale() > spec.decimals || *limit > crate::money::MAX_AMOUNT {
                return Err(bad(format!(
                    "must have at most {} decimals and not exceed {}",
                    spec.decimals,
                    crate::money::MAX_AMOUNT
                )));
            }
        }
        check_usd("daily_limit_usd", self.daily_limit_usd)?;
        check_usd("max_per_payment_usd", self.max_per_payment_usd)?;
        Ok(())
    }

    pub fn time_zone(&self) -> Result<Tz, BudgetConfigError> {
        self.budget_time_zone
            .parse()
            .map_err(|_| BudgetConfigError::BadTimeZone(self.budget_time_zone.clone()))
    }

    /// The budget day `at` falls in, and when that day ends (UTC).
    pub fn day(&self, at: DateTime<Utc>) -> (NaiveDate, DateTime<Utc>) {
        let tz = self.time_zone().unwrap_or(Tz::UTC);
        let date = at.with_timezone(&tz).date_naive();
        let next = date.checked_add_days(Days::new(1)).unwrap_or(date);
        // A midnight skipped by a DST change starts the day at the first instant that exists.
        let resets_at = (0..=3)
            .find_map(|h| {
                next.and_hms_opt(h, 0, 0)
                    .and_then(|t| tz.from_local_datetime(&t).earliest())
            })
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(at);
        (date, resets_at)
    }

    /// Checks that spending or reserving `amount` of `currency` (worth `usd`) fits today's usage.
    pub fn check(
        &self,
        currency: &str,
        amount: Decimal,
        usd: Decimal,
        in_currency: Usage,
        in_usd: Usage,
    ) -> Result<(), Exceeded> {
        if let Some(max) = self.max_per_payment_usd
            && usd > max
        {
            return Err(Exceeded::PerPayment {
                max,
                requested: usd,
            });
        }
        if let Some(&limit) = self.daily_limits.get(currency) {
            let available = in_currency.available(limit);
            if amount > available {
                return Err(Exceeded::Currency {
                    currency: currency.to_owned(),
                    limit,
                    available: available.max(Decimal::ZERO),
                    requested: amount,
                });
            }
        }
        if let Some(limit) = self.daily_limit_usd {
            let available = in_usd.available(limit);
            if usd > available {
                return Err(Exceeded::Usd {
                    limit,
                    available: available.max(Decimal::ZERO),
                    requested: usd,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn usage(spent: &str, reserved: &str) -> Usage {
        Usage {
            spent: d(spent),
            reserved: d(reserved),
        }
    }

    fn budget(json: &str) -> BudgetConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn available_counts_spent_and_reserved() {
        let b = budget(r#"{"daily_limits": {"USDC": "100"}}"#);
        let none = Usage::default();
        assert!(
            b.check("USDC", d("40"), d("40"), usage("30", "30"), none)
                .is_ok()
        );
        assert_eq!(
            b.check("USDC", d("40.01"), d("40.01"), usage("30", "30"), none),
            Err(Exceeded::Currency {
                currency: "USDC".into(),
                limit: d("100"),
                available: d("40"),
                requested: d("40.01")
            })
        );
        assert!(
            b.check("CRO", d("1000000"), d("100000"), none, none)
                .is_ok(),
            "USDC limits do not limit CRO"
        );
    }

    #[test]
    fn the_usd_total_limits_every_currency() {
        let b = budget(r#"{"daily_limits": {"USDC": "100"}, "daily_limit_usd": "50"}"#);
        let none = Usage::default();
        assert!(
            b.check("CRO", d("400"), d("40"), none, usage("10", "0"))
                .is_ok()
        );
        assert!(matches!(
            b.check("CRO", d("400"), d("40"), none, usage("10", "0.01")),
            Err(Exceeded::Usd { .. })
        ));
        assert!(matches!(
            b.check("USDC", d("60"), d("60"), none, none),
            Err(Exceeded::Usd { .. })
        ));
    }

    #[test]
    fn a_lowered_limit_shows_nothing_available() {
        let b = budget(r#"{"daily_limits": {"USDC": "10"}}"#);
        match b.check("USDC", d("1"), d("1"), usage("25", "0"), Usage::default()) {
            Err(Exceeded::Currency { available, .. }) => assert_eq!(available, Decimal::ZERO),
            other => panic!("{other:?}"),
        }
        assert_eq!(usage("25", "0").available(d("10")), d("-15"));
    }

    #[test]
    fn per_payment_cap() {
        let b = budget(r#"{"max_per_payment_usd": "20"}"#);
        assert!(
            b.check(
                "ETH",
                d("0.001"),
                d("3"),
                Usage::default(),
                Usage::default()
            )
            .is_ok()
        );
        assert!(matches!(
            b.check(
                "ETH",
                d("0.01"),
                d("30"),
                Usage::default(),
                Usage::default()
            ),
            Err(Exceeded::PerPayment { .. })
        ));
    }

    #[test]
    fn validation() {
        let prices = PriceTable::default();
        assert!(
            budget(r#"{"daily_limits": {"USDC": "100.00"}}"#)
                .validate(&prices)
                .is_ok()
        );
        assert!(
            budget(r#"{"daily_limits": {"USDC": "0"}}"#)
                .validate(&prices)
                .is_ok(),
            "zero blocks spending"
        );
        for bad in [
            r#"{"daily_limits": {"USDC": "-1"}}"#,
            r#"{"daily_limits": {"DOGE": "1"}}"#,
            r#"{"daily_limits": {"USDC": "1.0000001"}}"#,
            r#"{"budget_time_zone": "Mars/Olympus"}"#,
            r#"{"daily_limit_usd": "-5"}"#,
            r#"{"max_per_payment_usd": "0.0000001"}"#,
        ] {
            assert!(budget(bad).validate(&prices).is_err(), "{bad}");
        }
        assert!(
            serde_json::from_str::<BudgetConfig>(r#"{"daily_limits": {"USDC": 100}}"#).is_err()
        );
        assert!(
            serde_json::from_str::<BudgetConfig>(r#"{"daily_limits": {"USDC": "1e3"}}"#).is_err()
        );
        assert!(serde_json::from_str::<BudgetConfig>(r#"{"daily_limit_usd": "1E3"}"#).is_err());
        assert!(serde_json::from_str::<BudgetConfig>(r#"{"daily_limit": "1"}"#).is_err());
        assert!(
            serde_json::from_str::<BudgetConfig>(r#"{"on_budget_exceeded": "shrug"}"#).is_err()
        );
    }

    #[test]
    fn the_day_starts_at_local_midnight() {
        let b = budget(r#"{"budget_time_zone": "America/New_York"}"#);
        // 03:30 UTC on 15 Jan is still 14 Jan in New York (UTC-5); the day ends at 05:00 UTC.
        let at = Utc.with_ymd_and_hms(2026, 1, 15, 3, 30, 0).unwrap();
        let (day, resets) = b.day(at);
        assert_eq!(day, NaiveDate::from_ymd_opt(2026, 1, 14).unwrap());
        assert_eq!(resets, Utc.with_ymd_and_hms(2026, 1, 15, 5, 0, 0).unwrap());
        let (utc_day, utc_resets) = BudgetConfig::default().day(at);
        assert_eq!(utc_day, NaiveDate::from_ymd_opt(2026, 1, 15).unwrap());
        assert_eq!(
            utc_resets,
            Utc.with_ymd_and_hms(2026, 1, 16, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn a_skipped_midnight_still_ends_the_day() {
        // Santiago skipped midnight on 2026-09-06 (clocks went from 00:00 to 01:00).
        let b = budget(r#"{"budget_time_zone": "America/Santiago"}"#);
        let at = Utc.with_ymd_and_hms(2026, 9, 5, 12, 0, 0).unwrap();
        let (_, resets) = b.day(at);
        assert!(resets > at);
        assert!(resets - at <= chrono::Duration::hours(24));
    }
}
