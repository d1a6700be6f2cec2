//! Standing approvals: a person approving a payment may let its session go on paying that payee, up to a total,
//! for a while, without asking again. Each payment it covers is audited as allowed by it; it is listed, and
//! revoked at once.

use crate::money::{Decimal, MAX_AMOUNT, strict};
use serde::{Deserialize, Serialize};

/// The longest a standing approval lasts: a week.
pub const MAX_MINUTES: u32 = 7 * 24 * 60;

/// "And let this session pay this payee up to `max_usd` in total for the next `minutes`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StandingTerms {
    #[serde(deserialize_with = "strict::decimal")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$", example = "50")]
    pub max_usd: Decimal,
    #[schema(minimum = 1, maximum = 10080, example = 60)]
    pub minutes: u32,
}

impl StandingTerms {
    /// Why the terms are refused, if they are.
    pub fn invalid(&self) -> Option<String> {
        let usd = self.max_usd;
        if usd <= Decimal::ZERO || usd.scale() > 6 || usd > MAX_AMOUNT {
            return Some("standing.max_usd must be above 0, with at most 6 decimals".into());
        }
        (!(1..=MAX_MINUTES).contains(&self.minutes))
            .then(|| format!("standing.minutes must be between 1 and {MAX_MINUTES}"))
    }
}

/// Whether a standing approval of `max_usd`, of which `used_usd` is used, covers a payment of `usd`.
pub fn covers(max_usd: Decimal, used_usd: Decimal, usd: Decimal) -> bool {
    used_usd + usd <= max_usd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn a_standing_approval_covers_exactly_its_cap() {
        assert!(covers(d("50"), d("40"), d("10")));
        assert!(!covers(d("50"), d("40"), d("10.000001")));
        assert!(covers(d("50"), Decimal::ZERO, d("50")));
    }

    #[test]
    fn terms_are_checked() {
        let ok = StandingTerms {
            max_usd: d("50"),
            minutes: 60,
        };
        assert_eq!(ok.invalid(), None);
        let free = StandingTerms {
            max_usd: Decimal::ZERO,
            ..ok.clone()
        };
        assert!(free.invalid().is_some());
        let forever = StandingTerms {
            minutes: MAX_MINUTES + 1,
            ..ok
        };
        assert!(forever.invalid().is_some());
        assert!(
            serde_json::from_str::<StandingTerms>(r#"{"max_usd": 50, "minutes": 60}"#).is_err()
        );
    }
}
