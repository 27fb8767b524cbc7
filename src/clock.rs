//! Times as stored (microseconds since the Unix epoch, an SQLite INTEGER) and
//! as sent (`google.protobuf.Timestamp`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

pub fn now_micros() -> Micros {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the system clock is set before 1970");
    since_epoch.as_micros() as Micros
}

pub fn to_timestamp(micros: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// The first and last seconds a `Timestamp` may hold (AIP-142):
/// 0001-01-01 and 9999-12-31.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// Whether a stored time is one the API could have stored.
pub fn is_valid(micros: Micros) -> bool {
    (MIN_SECONDS * 1_000_000..(MAX_SECONDS + 1) * 1_000_000).contains(&micros)
}

/// A `Timestamp` as microseconds, if it is a valid one (AIP-142: between
/// 0001-01-01 and 9999-12-31, nanoseconds in range). Sub-microsecond
/// precision is dropped.
pub fn from_timestamp(timestamp: &prost_types::Timestamp) -> Option<Micros> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&timestamp.seconds)
        || !(0..1_000_000_000).contains(&timestamp.nanos)
    {
        return None;
    }
    Some(timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos) / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_microseconds_on_both_sides_of_the_epoch() {
        assert_eq!(
            to_timestamp(1_700_000_000_123_456),
            prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000
            }
        );
        assert_eq!(
            to_timestamp(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_999_000
            }
        );
    }

    #[test]
    fn timestamps_parse_back_and_out_of_range_ones_are_refused() {
        for micros in [0, 1_700_000_000_123_456, -1] {
            assert_eq!(from_timestamp(&to_timestamp(micros)), Some(micros));
        }
        let bad_nanos = prost_types::Timestamp {
            seconds: 0,
            nanos: 1_000_000_000,
        };
        let too_late = prost_types::Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        };
        assert_eq!(from_timestamp(&bad_nanos), None);
        assert_eq!(from_timestamp(&too_late), None);
    }
}
