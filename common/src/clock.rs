//! Millisecond timestamps, and their protobuf and RFC 3339 forms.

use time::OffsetDateTime;
use time::macros::format_description;

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

pub fn to_timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        // In 0..1e9, so the cast cannot truncate.
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn from_timestamp(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

/// RFC 3339 in UTC with exactly three fraction digits, e.g. `2026-11-23T10:00:00.120Z`, so
/// every timestamp in the API has the same width and sorts as text.
pub fn rfc3339(millis: i64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_1970() {
        for ms in [0, 1, 999, 1_000, 1_763_892_000_123, -1, -1_500] {
            assert_eq!(from_timestamp(&to_timestamp(ms)), ms, "{ms}");
        }
    }

    #[test]
    fn rfc3339_is_utc_with_fixed_millisecond_precision() {
        assert_eq!(rfc3339(1_763_892_000_123), "2025-11-23T10:00:00.123Z");
        assert_eq!(rfc3339(1_763_892_000_700), "2025-11-23T10:00:00.700Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
