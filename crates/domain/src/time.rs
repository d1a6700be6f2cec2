//! One timestamp format everywhere, so stored timestamps sort as text on every database.

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 UTC with microseconds and a `Z`: fixed width, so lexical order is time order.
pub fn format(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses what [`format`] wrote (and any RFC 3339 timestamp).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A UUIDv7 of the moment `at` (its milliseconds, then random bits): ids made this way sort by their time.
pub fn uuid_at(at: DateTime<Utc>) -> uuid::Uuid {
    let secs = u64::try_from(at.timestamp()).unwrap_or_default();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, at.timestamp_subsec_nanos());
    uuid::Uuid::new_v7(ts)
}

/// The smallest UUIDv7 of the millisecond `at` falls in: every id [`uuid_at`] makes at or after that
/// millisecond is at least this, every one made before it less.
pub fn uuid_floor(at: DateTime<Utc>) -> uuid::Uuid {
    let ms = u128::try_from(at.timestamp_millis()).unwrap_or_default();
    uuid::Uuid::from_u128((ms << 80) | (0x7 << 76) | (0b10 << 62))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_a_moment_sort_by_their_time() {
        let at = parse("2026-12-01T08:00:00.123456Z").unwrap();
        let id = uuid_at(at);
        assert_eq!(id.get_version_num(), 7);
        assert!(uuid_floor(at) <= id && id < uuid_floor(at + chrono::Duration::milliseconds(1)));
        assert!(uuid_floor(at).to_string() <= id.to_string(), "as text too");
        let later = uuid_at(at + chrono::Duration::milliseconds(5));
        assert!(id.to_string() < later.to_string());
        assert!(uuid_floor(at - chrono::Duration::milliseconds(1)) < uuid_floor(at));
    }
    use chrono::TimeZone;

    #[test]
    fn round_trips_and_sorts_as_text() {
        let a = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let b = a + chrono::Duration::microseconds(1);
        assert_eq!(parse(&format(a)), Some(a));
        assert!(format(a) < format(b));
        assert_eq!(format(a), "2026-01-02T03:04:05.000000Z");
    }
}
