//! Spend over time: the rollups each booked spend is added to, and the picture read back from them. A picture
//! reads rollups, never payments, so it costs the same with a thousand payments stored or a million.

use crate::Decimal;
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Hours in the hourly chart, and days in the daily one.
pub const HOURS: i64 = 24;
pub const DAYS: i64 = 30;
/// Payees in a top list.
pub const TOP_PAYEES: usize = 10;

/// Whose spend a picture shows: the tenant's, one agent key's across its sessions, or one session's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendScope {
    Tenant,
    Agent(Uuid),
    Session(Uuid),
}

impl SpendScope {
    /// The owner column of the scope's rollup rows.
    pub fn owner(self) -> String {
        match self {
            SpendScope::Tenant => "tenant".to_owned(),
            SpendScope::Agent(id) => format!("agent:{id}"),
            SpendScope::Session(id) => format!("session:{id}"),
        }
    }
}

/// Rollup buckets sort as text: an hour's total is `h:2026-12-06T03`, a payee's day `d:2026-12-06`, so each
/// kind is one range of the (owner, bucket) index.
pub fn hour_bucket(at: DateTime<Utc>) -> String {
    format!("h:{}", at.format("%Y-%m-%dT%H"))
}

pub fn day_bucket(at: DateTime<Utc>) -> String {
    format!("d:{}", at.date_naive())
}

/// A change to one rollup row: `usd` added, `payments` counted (negative to take a spend back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupChange {
    pub owner: String,
    pub bucket: String,
    /// Empty for an hour's total.
    pub payee: String,
    pub usd: Decimal,
    pub payments: i64,
}

/// One spend to roll up: who asked, in which session, to whom, when the payment was asked for, and its worth.
#[derive(Debug, Clone)]
pub struct Spent<'a> {
    pub agent: Uuid,
    pub session: Uuid,
    pub payee: &'a str,
    pub at: DateTime<Utc>,
    pub usd: Decimal,
    /// +1 for a payment spent, -1 for one taken back, 0 for a part of one (a lower price paid).
    pub payments: i64,
}

impl Spent<'_> {
    /// The rows it changes: for each of the tenant, the agent and the session, the hour's total and then the
    /// payee's day.
    pub fn changes(&self) -> [RollupChange; 6] {
        let owners = [
            SpendScope::Tenant,
            SpendScope::Agent(self.agent),
            SpendScope::Session(self.session),
        ]
        .map(SpendScope::owner);
        let (hour, day) = (hour_bucket(self.at), day_bucket(self.at));
        std::array::from_fn(|i| RollupChange {
            owner: owners[i / 2].clone(),
            bucket: if i % 2 == 0 {
                hour.clone()
            } else {
                day.clone()
            },
            payee: if i % 2 == 0 {
                String::new()
            } else {
                self.payee.to_owned()
            },
            usd: self.usd,
            payments: self.payments,
        })
    }
}

/// A rollup row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    pub bucket: String,
    pub payee: String,
    pub usd: Decimal,
    pub payments: i64,
}

/// Spend in one hour or day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SpendPoint {
    /// The hour's or day's start.
    pub start: DateTime<Utc>,
    #[schema(value_type = String, example = "12.50")]
    pub usd: Decimal,
    pub payments: i64,
}

/// Spend over a whole chart, summed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SpendTotal {
    #[schema(value_type = String, example = "310.25")]
    pub usd: Decimal,
    pub payments: i64,
}

impl SpendTotal {
    fn of(points: &[SpendPoint]) -> SpendTotal {
        SpendTotal {
            usd: points.iter().map(|p| p.usd).sum(),
            payments: points.iter().map(|p| p.payments).sum(),
        }
    }
}

/// A payee's spend over the days of the picture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PayeeSpend {
    /// A lower-case address, or an x402 service's scheme and host.
    pub payee: String,
    /// What the scope's policy calls it (`payees.labels`), when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[schema(value_type = String, example = "120.00")]
    pub usd: Decimal,
    pub payments: i64,
}

/// Spend over the last [`HOURS`] hours and [`DAYS`] days (UTC, the current hour and day included), and the
/// payees paid most over those days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SpendSeries {
    pub hours: Vec<SpendPoint>,
    pub hours_total: SpendTotal,
    pub days: Vec<SpendPoint>,
    pub days_total: SpendTotal,
    pub top_payees: Vec<PayeeSpend>,
}

/// The first and last bucket of each kind a picture at `now` reads: hours, then payees' days.
pub fn windows(now: DateTime<Utc>) -> [(String, String); 2] {
    let hour = truncate(now, Duration::hours(1));
    let first_day = truncate(now, Duration::days(1)) - Duration::days(DAYS - 1);
    [
        (hour_bucket(first_day), hour_bucket(hour)),
        (day_bucket(first_day), day_bucket(now)),
    ]
}

fn truncate(at: DateTime<Utc>, to: Duration) -> DateTime<Utc> {
    at.duration_trunc(to).unwrap_or(at)
}

impl SpendSeries {
    /// The picture at `now` from the rows of [`windows`] (others are left out): every hour and day present,
    /// at zero when nothing was spent.
    pub fn assemble(now: DateTime<Utc>, rows: &[RollupRow]) -> SpendSeries {
        let [_, (first, last)] = windows(now);
        let (totals, payees): (Vec<&RollupRow>, Vec<&RollupRow>) =
            rows.iter().partition(|r| r.payee.is_empty());
        let payees: Vec<&RollupRow> = payees
            .into_iter()
            .filter(|r| (first.as_str()..=last.as_str()).contains(&r.bucket.as_str()))
            .collect();
        let by_bucket: BTreeMap<&str, &RollupRow> =
            totals.iter().map(|r| (r.bucket.as_str(), *r)).collect();
        let hour = truncate(now, Duration::hours(1));
        let hours: Vec<SpendPoint> = (0..HOURS)
            .rev()
            .map(|back| hour - Duration::hours(back))
            .map(|start| point(start, [by_bucket.get(hour_bucket(start).as_str())]))
            .collect();
        let today = truncate(now, Duration::days(1));
        let days: Vec<SpendPoint> = (0..DAYS)
            .rev()
            .map(|back| today - Duration::days(back))
            .map(|start| {
                let hours = (0..24).map(|h| hour_bucket(start + Duration::hours(h)));
                point(start, hours.map(|b| by_bucket.get(b.as_str())))
            })
            .collect();
        SpendSeries {
            hours_total: SpendTotal::of(&hours),
            hours,
            days_total: SpendTotal::of(&days),
            days,
            top_payees: top(&payees),
        }
    }
}

fn point<'a>(
    start: DateTime<Utc>,
    rows: impl IntoIterator<Item = Option<&'a &'a RollupRow>>,
) -> SpendPoint {
    let (usd, payments) = rows
        .into_iter()
        .flatten()
        .fold((Decimal::ZERO, 0), |(u, n), r| (u + r.usd, n + r.payments));
    SpendPoint {
        start,
        usd,
        payments,
    }
}

/// The [`TOP_PAYEES`] payees paid most, the larger count first among equals, then by name.
fn top(rows: &[&RollupRow]) -> Vec<PayeeSpend> {
    let mut by_payee: BTreeMap<&str, (Decimal, i64)> = BTreeMap::new();
    for r in rows {
        let e = by_payee.entry(&r.payee).or_default();
        *e = (e.0 + r.usd, e.1 + r.payments);
    }
    let mut all: Vec<PayeeSpend> = by_payee
        .into_iter()
        .filter(|(_, (usd, n))| *n > 0 || !usd.is_zero())
        .map(|(payee, (usd, payments))| PayeeSpend {
            payee: payee.to_owned(),
            label: None,
            usd,
            payments,
        })
        .collect();
    all.sort_by(|a, b| b.usd.cmp(&a.usd).then(b.payments.cmp(&a.payments)));
    all.truncate(TOP_PAYEES);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn rolled(changes: &[RollupChange]) -> Vec<RollupRow> {
        let mut rows: BTreeMap<(String, String, String), RollupRow> = BTreeMap::new();
        for c in changes.iter().filter(|c| c.owner == "tenant") {
            let key = (c.owner.clone(), c.bucket.clone(), c.payee.clone());
            let row = rows.entry(key).or_insert(RollupRow {
                bucket: c.bucket.clone(),
                payee: c.payee.clone(),
                usd: Decimal::ZERO,
                payments: 0,
            });
            row.usd += c.usd;
            row.payments += c.payments;
        }
        rows.into_values().collect()
    }

    #[test]
    fn a_spend_changes_an_hour_and_a_payee_day_for_each_scope() {
        let (agent, session) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let at = parse("2026-12-06T03:59:59Z").unwrap();
        let spent = Spent {
            agent,
            session,
            payee: "0xabc",
            at,
            usd: d("2.50"),
            payments: 1,
        };
        let changes = spent.changes();
        assert_eq!(changes.len(), 6);
        let owners: Vec<&str> = changes.iter().map(|c| c.owner.as_str()).collect();
        assert_eq!(owners[0], "tenant");
        assert_eq!(owners[2], format!("agent:{agent}"));
        assert_eq!(owners[4], format!("session:{session}"));
        assert_eq!(changes[0].bucket, "h:2026-12-06T03");
        assert_eq!(
            (changes[1].bucket.as_str(), changes[1].payee.as_str()),
            ("d:2026-12-06", "0xabc")
        );
    }

    #[test]
    fn a_picture_has_every_hour_and_day_and_ranks_payees() {
        let now = parse("2026-12-06T03:10:00Z").unwrap();
        let spend = |payee, at: &str, usd: &str, payments| Spent {
            agent: Uuid::nil(),
            session: Uuid::nil(),
            payee,
            at: parse(at).unwrap(),
            usd: d(usd),
            payments,
        };
        let changes: Vec<RollupChange> = [
            spend("a", "2026-12-06T03:01:00Z", "1.25", 1),
            spend("a", "2026-12-06T03:02:00Z", "1.25", 1),
            spend("b", "2026-12-05T04:00:00Z", "7", 1),
            spend("b", "2026-12-05T03:00:00Z", "9", 1),
            spend("c", "2026-11-01T00:00:00Z", "99", 1),
            spend("d", "2026-12-01T00:00:00Z", "1", 1),
            spend("d", "2026-12-01T00:00:01Z", "-1", -1),
        ]
        .iter()
        .flat_map(|s| s.changes())
        .collect();
        let s = SpendSeries::assemble(now, &rolled(&changes));
        assert_eq!((s.hours.len(), s.days.len()), (24, 30));
        assert_eq!(s.hours[23].start, parse("2026-12-06T03:00:00Z").unwrap());
        assert_eq!((s.hours[23].usd, s.hours[23].payments), (d("2.50"), 2));
        assert_eq!(s.hours[0].usd, d("7"), "the hour 23 hours back is in");
        assert_eq!((s.hours_total.usd, s.hours_total.payments), (d("9.50"), 3));
        assert_eq!((s.days_total.usd, s.days_total.payments), (d("18.50"), 4));
        assert_eq!(s.days[29].start, parse("2026-12-06T00:00:00Z").unwrap());
        assert_eq!((s.days[28].usd, s.days[28].payments), (d("16"), 2));
        assert_eq!(s.days[0].start, parse("2026-11-07T00:00:00Z").unwrap());
        let top: Vec<(&str, Decimal)> = s
            .top_payees
            .iter()
            .map(|p| (p.payee.as_str(), p.usd))
            .collect();
        assert_eq!(
            top,
            [("b", d("16")), ("a", d("2.50"))],
            "c is too old, d was taken back"
        );
    }

    #[test]
    fn the_windows_read_thirty_days_of_hours_and_payee_days() {
        let now = parse("2026-12-06T03:10:00Z").unwrap();
        let [hours, days] = windows(now);
        assert_eq!(hours, ("h:2026-11-07T00".into(), "h:2026-12-06T03".into()));
        assert_eq!(days, ("d:2026-11-07".into(), "d:2026-12-06".into()));
    }
}
