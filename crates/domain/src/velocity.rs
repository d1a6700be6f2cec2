//! The circuit breaker: a policy's velocity rules bound how fast an agent may pay (how many payments, how many
//! dollars, how many identical payments within a window). A payment that would break one trips the breaker: it
//! is denied and its session is frozen until a person looks. Pure: the engine reads each window's totals under
//! the tenant's lock, so concurrent requests cannot all slip under a rule.
//!
//! Each counted payment (allowed, or sent to a person) is tallied in every scope a rule counts, in the scope's
//! mark for the second it falls in: the running number and USD total of that scope at the second's first payment
//! and at its last. A window's totals are the difference between its last mark and its first, two index lookups
//! whatever the number of payments in it; and a scope's payments within one second update one row instead of
//! adding one each, which is most of what the breaker cost a payment (BENCHMARKS.md). So windows start on a whole
//! second: a window of `per_seconds` counts from the start of the second `per_seconds` ago, and may count a
//! payment up to a second older than its length, never one fewer.

use crate::money::{Decimal, strict};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The longest window a rule may have: a day.
pub const MAX_WINDOW_SECONDS: u32 = 86_400;
/// The most a count may be.
pub const MAX_COUNT: u32 = 1_000_000;
/// The most velocity rules a policy may set.
pub const MAX_VELOCITY_RULES: usize = 8;

/// Whose payments a rule counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VelocityScope {
    /// The session's payments.
    #[default]
    Session,
    /// The asking key's payments, across all of its sessions.
    Agent,
}

/// At most so many payments, dollars or identical payments (same payee, amount and currency) within
/// `per_seconds`, counted from the start of the second `per_seconds` ago (a payment up to a second older than the
/// window may count; none in it is missed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Velocity {
    #[schema(minimum = 1, maximum = 86400, example = 60)]
    pub per_seconds: u32,
    #[serde(default)]
    pub scope: VelocityScope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000, example = 20)]
    pub max_payments: Option<u32>,
    #[serde(
        default,
        deserialize_with = "strict::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$", example = "50")]
    pub max_usd: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000, example = 3)]
    pub max_identical: Option<u32>,
}

/// Why a session is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FreezeReason {
    /// A velocity rule tripped.
    CircuitBreaker,
}

/// A frozen session's freeze, kept with the session until a person unfreezes or kills it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Freeze {
    pub reason: FreezeReason,
    /// The rule that tripped, as its place in the policy: `velocity[0]`.
    #[schema(example = "velocity[0]")]
    pub rule: String,
    #[schema(example = "more than 20 payments within 60 s")]
    pub detail: String,
    /// The payment that tripped it, denied.
    pub payment_id: uuid::Uuid,
    /// The key that asked for that payment: it never unfreezes the session.
    pub tripped_by: uuid::Uuid,
    pub at: DateTime<Utc>,
}

/// A scope's counted payments within one second: the running totals at the first of them and at the last so far.
/// A mark never spans an unfreeze (one counting from then starts a new mark), so a window that starts there is
/// exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The first payment's place among the scope's counted payments: 1, 2, 3...
    pub seq: i64,
    /// When it counts from: never before the mark before it, so marks sort by time as they do by place (a
    /// transaction that began before another may take the lock after it).
    pub at: DateTime<Utc>,
    /// The USD of the scope's counted payments up to and including the first.
    pub usd_total: Decimal,
    /// The first payment's own USD.
    pub usd: Decimal,
    /// The last payment's place, and the USD up to and including it.
    pub last_seq: i64,
    pub last_usd_total: Decimal,
}

impl Mark {
    /// The mark a payment of `usd` made at `now` leaves after `last`, for windows counting from `since` at the
    /// earliest: `last` grown by it while both fall in one second after `since`, or a new mark.
    pub fn after(
        last: Option<&Mark>,
        usd: Decimal,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> Mark {
        match last {
            Some(m) if m.at >= since && whole_second(m.at) >= whole_second(now) => Mark {
                last_seq: m.last_seq + 1,
                last_usd_total: m.last_usd_total + usd,
                ..*m
            },
            _ => {
                // Never before `since` either: a write that began before an unfreeze may take the lock after it,
                // and its payment counts in the windows from the unfreeze on.
                let (seq, total, at) = last.map_or((0, Decimal::ZERO, now), |m| {
                    (m.last_seq, m.last_usd_total, m.at.max(now))
                });
                let at = at.max(since);
                Mark {
                    seq: seq + 1,
                    at,
                    usd_total: total + usd,
                    usd,
                    last_seq: seq + 1,
                    last_usd_total: total + usd,
                }
            }
        }
    }
}

/// A scope's latest marks, in order and without a gap (each mark's `seq` follows the last payment of the one
/// before it), ending at the scope's last: kept by the one process that writes them, so a window that starts
/// after the oldest of them is read without the database. The mark before the oldest is no later than it, so
/// a window that starts after the oldest holds no mark from before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent {
    marks: std::collections::VecDeque<Mark>,
}

impl Recent {
    /// The scope's last mark.
    pub fn last(&self) -> Option<&Mark> {
        self.marks.back()
    }

    /// How many marks are kept.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// The first mark from `after` on (none when the window is empty), or `None` when the marks kept do not
    /// reach back to `after`: an older mark may fall in the window, and only the database knows it.
    pub fn first_from(&self, after: DateTime<Utc>) -> Option<Option<Mark>> {
        let oldest = self.marks.front()?;
        if oldest.at >= after && oldest.seq != 1 {
            return None;
        }
        let i = self.marks.partition_point(|m| m.at < after);
        Some(self.marks.get(i).copied())
    }

    /// Keeps `mark`, the scope's newest: its last mark grown, or the one after it. A mark that does neither
    /// (another writer's, or the first after an empty `Recent`) starts the marks kept anew. Marks older than
    /// `oldest` go (one stays, so windows from `oldest` on are covered), and the oldest go beyond `most`.
    pub fn keep(&mut self, mark: Mark, oldest: DateTime<Utc>, most: usize) {
        match self.marks.back_mut() {
            Some(last) if last.seq == mark.seq && last.at == mark.at => *last = mark,
            Some(last) if last.last_seq + 1 == mark.seq && last.at <= mark.at => {
                self.marks.push_back(mark)
            }
            _ => self.marks = std::iter::once(mark).collect(),
        }
        while self.marks.len() > most.max(1) || self.marks.get(1).is_some_and(|m| m.at < oldest) {
            self.marks.pop_front();
        }
    }
}

/// The start of the second `at` falls in.
fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

/// The earliest mark a window of `per_seconds` ending at `now` counts (by its `at`): from the start of the
/// second `per_seconds` ago, or from `since` if that is later.
pub fn window_start(now: DateTime<Utc>, per_seconds: u32, since: DateTime<Utc>) -> DateTime<Utc> {
    since.max(whole_second(
        now - chrono::Duration::seconds(per_seconds.into()),
    ))
}

/// How many counted payments a scope made within a window, and their USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub payments: u64,
    pub usd: Decimal,
}

impl Totals {
    /// The totals between a window's first mark and the scope's last (none, when the window has no mark).
    pub fn between(first: Option<&Mark>, last: Option<&Mark>) -> Totals {
        match (first, last) {
            (Some(f), Some(l)) if l.last_seq >= f.seq => Totals {
                payments: u64::try_from(l.last_seq - f.seq + 1).unwrap_or(u64::MAX),
                usd: l.last_usd_total - f.usd_total + f.usd,
            },
            _ => Totals::default(),
        }
    }
}

/// What a rule sees: its scope's totals within its window, and those of the payments identical to this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub all: Totals,
    pub identical: Totals,
}

/// The scope a rule counts, as marks name it: the session's, or the asking key's.
pub fn scope_key(scope: VelocityScope, session: uuid::Uuid, key: uuid::Uuid) -> String {
    match scope {
        VelocityScope::Session => format!("session:{session}"),
        VelocityScope::Agent => format!("key:{key}"),
    }
}

/// The scope of the payments identical to one (same payee, amount and currency) within `base`.
pub fn identical_key(base: &str, recipient: &str, amount: Decimal, currency: &str) -> String {
    let payment = (
        recipient.to_ascii_lowercase(),
        amount.normalize().to_string(),
        currency,
    );
    format!(
        "{base}:same:{}",
        &crate::canonical::sha256_hex(&payment)[..32]
    )
}

/// What a payment is to the breaker: where it goes and how much, which tells identical payments apart.
#[derive(Debug, Clone, Copy)]
pub struct Paying<'a> {
    pub recipient: &'a str,
    pub amount: Decimal,
    pub currency: &'a str,
}

/// A window a rule reads: its scope, and the time it counts from.
pub type Window = (String, DateTime<Utc>);

/// The windows a payment's rules read, each once however many rules look at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows {
    pub wanted: Vec<Window>,
    /// For each rule, in the policy's order, the place of its scope's window, and of its identical payments'.
    picks: Vec<(usize, Option<usize>)>,
}

impl Windows {
    /// The windows `rules` read for a payment a key asks for in a session at `now`, counting from the session's
    /// last unfreeze (`since`) at the earliest.
    pub fn of(
        rules: &[Velocity],
        (now, since): (DateTime<Utc>, DateTime<Utc>),
        (session, key): (uuid::Uuid, uuid::Uuid),
        p: Paying<'_>,
    ) -> Windows {
        let mut windows = Windows::default();
        for rule in rules {
            let after = window_start(now, rule.per_seconds, since);
            let base = scope_key(rule.scope, session, key);
            let identical = rule.max_identical.map(|_| {
                let same = identical_key(&base, p.recipient, p.amount, p.currency);
                windows.place(same, after)
            });
            let all = windows.place(base, after);
            windows.picks.push((all, identical));
        }
        windows
    }

    /// The place of a window among those to read, added if it is not there yet.
    fn place(&mut self, scope: String, after: DateTime<Utc>) -> usize {
        let window = (scope, after);
        match self.wanted.iter().position(|w| *w == window) {
            Some(i) => i,
            None => {
                self.wanted.push(window);
                self.wanted.len() - 1
            }
        }
    }

    /// What each rule sees, from each window's first mark and its scope's last, one for each of `wanted`.
    pub fn seen(&self, found: &[(Option<Mark>, Option<Mark>)]) -> Vec<Seen> {
        let totals = |i: usize| Totals::between(found[i].0.as_ref(), found[i].1.as_ref());
        (self.picks.iter())
            .map(|&(all, same)| Seen {
                all: totals(all),
                identical: same.map_or_else(Totals::default, totals),
            })
            .collect()
    }
}

/// A window's first mark from `after` on and its scope's last, once the scope left `m`: its new last mark, or its
/// last mark grown by a payment in the same second. Marks only ever come last, so the first changes only when
/// the window had none, or when it is the one grown.
pub fn marked(after: DateTime<Utc>, first: Option<Mark>, m: Mark) -> (Option<Mark>, Option<Mark>) {
    let moved = first.map_or(m.at >= after, |f| (f.at, f.seq) == (m.at, m.seq));
    (if moved { Some(m) } else { first }, Some(m))
}

/// A rule broken: which one (its index in the policy's `velocity`) and how, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub rule: usize,
    pub detail: String,
}

impl Trip {
    /// The rule as a client finds it in the policy: `velocity[0]`.
    pub fn name(&self) -> String {
        format!("velocity[{}]", self.rule)
    }
}

impl Velocity {
    /// The error in this rule, if any, as (field, why).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.per_seconds) {
            return Some((
                "per_seconds",
                format!("must be between 1 and {MAX_WINDOW_SECONDS}"),
            ));
        }
        let most = MAX_COUNT;
        for (field, v) in [
            ("max_payments", self.max_payments),
            ("max_identical", self.max_identical),
        ] {
            if v.is_some_and(|v| !(1..=most).contains(&v)) {
                return Some((field, format!("must be between 1 and {most}")));
            }
        }
        if self.max_payments.is_none() && self.max_usd.is_none() && self.max_identical.is_none() {
            return Some((
                "max_payments",
                "set max_payments, max_usd or max_identical".into(),
            ));
        }
        None
    }

    /// Why a payment of `usd` would break the rule, given what its window holds.
    fn breaks(&self, seen: Seen, usd: Decimal) -> Option<String> {
        let span = format!("{} s", self.per_seconds);
        if let Some(most) = self.max_payments
            && seen.all.payments >= u64::from(most)
        {
            return Some(format!("more than {most} payments within {span}"));
        }
        if let Some(most) = self.max_usd
            && seen.all.usd + usd > most
        {
            return Some(format!(
                "more than {most} USD within {span} (paid {}, this {usd})",
                seen.all.usd
            ));
        }
        let most = self.max_identical?;
        (seen.identical.payments >= u64::from(most))
            .then(|| format!("more than {most} identical payments within {span}"))
    }
}

/// The first rule a payment of `usd` would break; `seen` holds what each rule sees, in the policy's order.
pub fn tripped(rules: &[Velocity], seen: &[Seen], usd: Decimal) -> Option<Trip> {
    rules
        .iter()
        .zip(seen)
        .enumerate()
        .find_map(|(rule, (v, seen))| v.breaks(*seen, usd).map(|detail| Trip { rule, detail }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn rule(per_seconds: u32) -> Velocity {
        Velocity {
            per_seconds,
            scope: VelocityScope::Session,
            max_payments: None,
            max_usd: None,
            max_identical: None,
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    const EVER: DateTime<Utc> = DateTime::<Utc>::MIN_UTC;

    /// A scope's marks after payments of `usd`, in order, a second apart.
    fn marks(usd: &[&str]) -> Vec<Mark> {
        let mut out: Vec<Mark> = Vec::new();
        for (i, u) in usd.iter().enumerate() {
            out.push(Mark::after(out.last(), d(u), at(i as i64), EVER));
        }
        out
    }

    fn millis(ms: i64) -> chrono::Duration {
        chrono::Duration::milliseconds(ms)
    }

    /// Rules that look at the same window read it once; each rule sees its own windows' totals.
    #[test]
    fn windows_are_read_once_and_seen_by_each_rule() {
        let (session, key) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let agent = Velocity {
            scope: VelocityScope::Agent,
            ..rule(60)
        };
        let identical = Velocity {
            max_identical: Some(3),
            ..rule(60)
        };
        let rules = [rule(60), identical, rule(5), agent];
        let p = Paying {
            recipient: "0xAB",
            amount: d("1.50"),
            currency: "USDC",
        };
        let windows = Windows::of(&rules, (at(100), at(97)), (session, key), p);
        let same = identical_key(&format!("session:{session}"), "0xab", d("1.5"), "USDC");
        // The unfreeze at 97 s is later than the 5 s window's start (95 s): it reads the 60 s window's.
        let expected = vec![
            (format!("session:{session}"), at(97)),
            (same, at(97)),
            (format!("key:{key}"), at(97)),
        ];
        assert_eq!(windows.wanted, expected);
        let m = marks(&["1", "2", "4"]);
        let found = [
            (Some(m[0]), Some(m[2])),
            (Some(m[2]), Some(m[2])),
            (None, None),
        ];
        let seen = windows.seen(&found);
        let three = Totals {
            payments: 3,
            usd: d("7"),
        };
        assert_eq!(
            seen[0],
            Seen {
                all: three,
                identical: Totals::default()
            }
        );
        let one = Totals {
            payments: 1,
            usd: d("4"),
        };
        assert_eq!(
            seen[1],
            Seen {
                all: three,
                identical: one
            }
        );
        assert_eq!(seen[2], seen[0], "the same window as the first rule's");
        assert_eq!(seen[3], Seen::default());
    }

    /// A window's first and last marks follow the scope's new marks as a read of them would find them.
    #[test]
    fn a_window_follows_the_marks_left_after_it_was_read() {
        let first = Mark::after(None, d("1"), at(10), EVER);
        let grown = Mark::after(Some(&first), d("2"), at(10) + millis(300), EVER);
        let next = Mark::after(Some(&grown), d("4"), at(12), EVER);
        assert_eq!(
            marked(at(11), None, first),
            (None, Some(first)),
            "before the window"
        );
        assert_eq!(marked(at(10), None, first), (Some(first), Some(first)));
        assert_eq!(
            marked(at(10), Some(first), grown),
            (Some(grown), Some(grown))
        );
        assert_eq!(marked(at(10), Some(grown), next), (Some(grown), Some(next)));
        assert_eq!(marked(at(11), None, next), (Some(next), Some(next)));
    }

    #[test]
    fn a_mark_never_counts_from_before_the_one_before_it() {
        let first = Mark::after(None, d("1"), at(10), EVER);
        let late = Mark::after(Some(&first), d("1"), at(5), EVER);
        assert_eq!((late.seq, late.last_seq, late.at), (1, 2, at(10)), "grown");
        let next = Mark::after(Some(&late), d("1"), at(12), EVER);
        assert_eq!((next.seq, next.at), (3, at(12)));
    }

    #[test]
    fn payments_within_one_second_grow_one_mark() {
        let first = Mark::after(None, d("1"), at(10) + millis(100), EVER);
        let second = Mark::after(Some(&first), d("2"), at(10) + millis(900), EVER);
        assert_eq!((second.seq, second.at, second.usd), (1, first.at, d("1")));
        assert_eq!((second.last_seq, second.last_usd_total), (2, d("3")));
        let next = Mark::after(Some(&second), d("4"), at(11), EVER);
        assert_eq!((next.seq, next.usd_total, next.usd), (3, d("7"), d("4")));
        let all = Totals::between(Some(&second), Some(&next));
        assert_eq!((all.payments, all.usd), (3, d("7")));
        let tail = Totals::between(Some(&next), Some(&next));
        assert_eq!((tail.payments, tail.usd), (1, d("4")));
    }

    #[test]
    fn a_mark_never_spans_an_unfreeze_and_windows_start_on_a_whole_second() {
        let before = Mark::after(None, d("1"), at(10) + millis(100), EVER);
        let since = at(10) + millis(500);
        let after = Mark::after(Some(&before), d("1"), at(10) + millis(700), since);
        assert_eq!(
            (after.seq, after.at),
            (2, at(10) + millis(700)),
            "a new mark"
        );
        assert_eq!(window_start(at(70) + millis(300), 60, EVER), at(10));
        assert_eq!(window_start(at(70) + millis(300), 60, since), since);
        assert_eq!(window_start(at(69), 60, EVER), at(9));
    }

    #[test]
    fn recent_marks_answer_only_windows_they_reach_back_to() {
        let m = marks(&["1", "2", "3", "4"]);
        let mut recent = Recent::default();
        assert_eq!(recent.first_from(at(0)), None, "nothing kept");
        for mark in &m[1..] {
            recent.keep(*mark, EVER, 10);
        }
        assert_eq!(
            recent.first_from(at(1)),
            None,
            "the mark before may be in it"
        );
        assert_eq!(recent.first_from(at(1) + millis(1)), Some(Some(m[2])));
        assert_eq!(recent.first_from(at(3)), Some(Some(m[3])));
        assert_eq!(recent.first_from(at(4)), Some(None), "an empty window");
        assert_eq!(recent.last(), Some(&m[3]));
        let mut from_the_first = Recent::default();
        from_the_first.keep(m[0], EVER, 10);
        assert_eq!(
            from_the_first.first_from(at(0)),
            Some(Some(m[0])),
            "none before seq 1"
        );
    }

    #[test]
    fn recent_marks_grow_chain_and_stay_bounded() {
        let first = Mark::after(None, d("1"), at(10), EVER);
        let grown = Mark::after(Some(&first), d("2"), at(10) + millis(5), EVER);
        let mut recent = Recent::default();
        recent.keep(first, EVER, 3);
        recent.keep(grown, EVER, 3);
        assert_eq!((recent.len(), recent.last()), (1, Some(&grown)));
        let mut last = grown;
        for s in 11..20 {
            last = Mark::after(Some(&last), d("1"), at(s), EVER);
            recent.keep(last, at(s - 2), 3);
        }
        assert_eq!(recent.len(), 3, "older than needed, or beyond the most");
        let first_at = |from| {
            recent
                .first_from(from)
                .map(|m: Option<Mark>| m.map(|m| m.at))
        };
        assert_eq!(first_at(at(17) + millis(1)), Some(Some(at(18))));
        assert_eq!(first_at(at(17)), None, "the kept marks start at 17 s");
        let mut gap = last;
        gap.seq += 5;
        gap.last_seq += 5;
        recent.keep(gap, EVER, 3);
        assert_eq!(recent.len(), 1, "a mark that does not follow starts anew");
        assert_eq!(recent.first_from(gap.at), None);
    }

    #[test]
    fn a_payment_judged_after_an_unfreeze_counts_from_it() {
        let before = Mark::after(None, d("1"), at(10), EVER);
        let since = at(20);
        // Its write began at 19 s and took the lock after the unfreeze at 20 s.
        let late = Mark::after(Some(&before), d("1"), at(19), since);
        assert_eq!((late.seq, late.at), (2, since));
        let first = Mark::after(None, d("1"), at(19), since);
        assert_eq!(first.at, since);
        let from = window_start(at(19), 60, since);
        let window = Totals::between(Some(&late), Some(&late));
        assert!(late.at >= from, "it falls in the window");
        assert_eq!(window.payments, 1);
    }

    fn seen(payments: u64, usd: &str, identical: u64) -> Seen {
        Seen {
            all: Totals {
                payments,
                usd: d(usd),
            },
            identical: Totals {
                payments: identical,
                usd: Decimal::ZERO,
            },
        }
    }

    #[test]
    fn a_window_is_the_difference_of_its_first_and_last_marks() {
        let m = marks(&["1", "2.5", "4", "0.25"]);
        assert_eq!(m[3].seq, 4);
        assert_eq!(m[3].usd_total, d("7.75"));
        let all = Totals::between(m.first(), m.last());
        assert_eq!((all.payments, all.usd), (4, d("7.75")));
        let tail = Totals::between(Some(&m[2]), m.last());
        assert_eq!((tail.payments, tail.usd), (2, d("4.25")));
        assert_eq!(
            Totals::between(None, m.last()),
            Totals::default(),
            "nothing in the window"
        );
        assert_eq!(Totals::between(None, None), Totals::default());
    }

    #[test]
    fn a_count_lets_through_exactly_its_number() {
        let v = Velocity {
            max_payments: Some(3),
            ..rule(60)
        };
        let one = d("1");
        assert_eq!(
            tripped(std::slice::from_ref(&v), &[seen(2, "2", 0)], one),
            None
        );
        let trip = tripped(&[v], &[seen(3, "3", 0)], one).unwrap();
        assert_eq!(trip.rule, 0);
        assert!(
            trip.detail.contains("more than 3 payments within 60 s"),
            "{}",
            trip.detail
        );
    }

    #[test]
    fn dollars_count_exactly_up_to_the_cap() {
        let v = [Velocity {
            max_usd: Some(d("10")),
            ..rule(60)
        }];
        assert_eq!(tripped(&v, &[seen(3, "9", 0)], d("1")), None);
        let over = tripped(&v, &[seen(3, "9", 0)], d("1.000001")).unwrap();
        assert!(
            over.detail.contains("paid 9, this 1.000001"),
            "{}",
            over.detail
        );
    }

    #[test]
    fn identical_payments_are_same_payee_amount_and_currency() {
        let v = [Velocity {
            max_identical: Some(2),
            ..rule(60)
        }];
        assert_eq!(tripped(&v, &[seen(9, "9", 1)], d("1")), None);
        assert!(tripped(&v, &[seen(9, "9", 2)], d("1")).is_some());
        let to = "0x00000000000000000000000000000000000000AA";
        let base = "session:x";
        let same = identical_key(base, to, d("2.50"), "USDC");
        // Marks already stored are found by this name: the SHA-256 of `["0x…aa","2.5","USDC"]`, computed apart.
        assert_eq!(same, "session:x:same:789ed9762f33d51e1a875271fe3c4683");
        assert_eq!(
            same,
            identical_key(base, &to.to_lowercase(), d("2.5"), "USDC")
        );
        assert_ne!(same, identical_key(base, to, d("2.4"), "USDC"));
        assert_ne!(same, identical_key(base, to, d("2.5"), "EURC"));
        assert_ne!(same, identical_key("key:y", to, d("2.5"), "USDC"));
    }

    #[test]
    fn the_first_broken_rule_trips() {
        let rules = [
            Velocity {
                max_payments: Some(100),
                ..rule(60)
            },
            Velocity {
                scope: VelocityScope::Agent,
                max_payments: Some(1),
                ..rule(60)
            },
        ];
        let seen = [seen(1, "1", 0), seen(1, "1", 0)];
        assert_eq!(
            tripped(&rules, &seen, d("1")).unwrap().name(),
            "velocity[1]"
        );
        let (s, k) = (uuid::Uuid::nil(), uuid::Uuid::max());
        assert!(scope_key(VelocityScope::Session, s, k).starts_with("session:"));
        assert!(scope_key(VelocityScope::Agent, s, k).starts_with("key:"));
    }

    #[test]
    fn rules_are_checked_for_sense() {
        assert_eq!(rule(60).invalid().unwrap().0, "max_payments");
        let zero = Velocity {
            max_payments: Some(0),
            ..rule(60)
        };
        assert_eq!(zero.invalid().unwrap().0, "max_payments");
        let long = Velocity {
            max_identical: Some(3),
            ..rule(MAX_WINDOW_SECONDS + 1)
        };
        assert_eq!(long.invalid().unwrap().0, "per_seconds");
        let fine = Velocity {
            max_identical: Some(3),
            ..rule(MAX_WINDOW_SECONDS)
        };
        assert_eq!(fine.invalid(), None);
        let parsed: Velocity =
            serde_json::from_str(r#"{"per_seconds": 60, "max_usd": "50"}"#).unwrap();
        assert_eq!(parsed.scope, VelocityScope::Session);
        assert!(serde_json::from_str::<Velocity>(r#"{"per_seconds": 60, "max_usd": 50}"#).is_err());
    }
}
