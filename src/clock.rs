//! Times as stored (microseconds since the Unix epoch, an SQLite INTEGER) and
//! as sent (`google.protobuf.Timestamp`).

use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// Microseconds since the Unix epoch.
pub type Micros = i64;

pub fn now_micros() -> Micros {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the system clock is set before 1970");
    since_epoch.as_micros() as Micros
}

/// A time-ordered id for a reading of the clock (at or after 1970): a
/// version 7 UUID whose first 48 bits are the millisecond, and whose next 12
/// (after the version) are the microsecond within it, as a fraction of
/// 4,096 (RFC 9562, method 3); the rest is random. The id of a later reading
/// sorts after the id of an earlier one, as bytes and as text, and
/// [`time_of_id`] gives the reading back.
pub fn id_at(at: Micros) -> Uuid {
    let millis = at.div_euclid(1000) as u64;
    let fraction = at.rem_euclid(1000) as u64 * 4096 / 1000;
    let random: [u8; 8] = rand::random();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70 | (fraction >> 8) as u8;
    bytes[7] = fraction as u8;
    bytes[8] = 0x80 | (random[0] & 0x3f);
    bytes[9..].copy_from_slice(&random[1..]);
    Uuid::from_bytes(bytes)
}

/// The reading a version 7 id carries (exact for an id of [`id_at`]; for
/// another generator's, the microsecond its 12 bits after the millisecond
/// would mean), or `None` for another version.
pub fn time_of_id(id: &Uuid) -> Option<Micros> {
    if id.get_version_num() != 7 {
        return None;
    }
    let b = id.as_bytes();
    let millis = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]) as i64;
    let fraction = (u64::from(b[6] & 0x0f) << 8) | u64::from(b[7]);
    Some(millis * 1000 + (fraction * 1000).div_ceil(4096) as i64)
}

/// The one reading of the clock a new row takes, `now` unless the newest
/// row (by id) says otherwise: never before that row's time, and late enough
/// that its id ([`id_at`]) sorts after that row's. So within one file, times
/// never go back as ids go up, whatever the system clock does.
pub fn reading_after(now: Micros, newest: Option<(Uuid, Micros)>) -> Micros {
    let Some((id, time)) = newest else {
        return now;
    };
    let past_id = match time_of_id(&id) {
        Some(at) => at + 1,
        // Not a version 7 id: its first 48 bits, read as a millisecond.
        None => {
            let b = id.as_bytes();
            let millis = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]) as i64;
            (millis + 1) * 1000
        }
    };
    now.max(time).max(past_id)
}

/// How far past this server's clock a snapshot's times may be: a year, so
/// that a file written by a machine whose clock once ran ahead (a virtual
/// machine started with a wrong clock, say) is still taken back, while one
/// dated at the end of time, which would hold every later write of its
/// file there ([`reading_after`]), is not.
const FUTURE_SLACK: Micros = 366 * 24 * 3600 * 1_000_000;

/// Whether `micros` is no later than a year from now.
pub fn is_not_future(micros: Micros) -> bool {
    micros <= now_micros().saturating_add(FUTURE_SLACK)
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
    fn an_id_carries_its_reading_to_the_microsecond_and_sorts_by_it() {
        let base = 1_700_000_000_000_000;
        let mut previous: Option<Uuid> = None;
        for at in base..base + 3000 {
            let id = id_at(at);
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(time_of_id(&id), Some(at));
            if let Some(previous) = previous {
                assert!(id > previous, "{at}");
                assert!(id.hyphenated().to_string() > previous.hyphenated().to_string());
            }
            previous = Some(id);
        }
    }

    #[test]
    fn a_reading_after_the_newest_row_sorts_after_it_whatever_its_id() {
        let now = 1_700_000_000_000_000;
        assert_eq!(reading_after(now, None), now);
        // The clock went back: the newest row's time holds.
        let newest = id_at(now + 5_000);
        let at = reading_after(now, Some((newest, now + 5_000)));
        assert_eq!(at, now + 5_001);
        assert!(id_at(at) > newest);
        // Ids of another generator: whatever their low bits, the next id
        // sorts after them.
        for newest in [
            uuid::Uuid::now_v7(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::from_u128(0x0fff_ffff_ffff_4fff_bfff_ffff_ffff_ffff),
        ] {
            let at = reading_after(0, Some((newest, 0)));
            assert!(id_at(at) > newest, "{newest}");
        }
        // A row whose time is ahead of its id keeps times from going back.
        let old = id_at(now - 1_000_000);
        assert_eq!(reading_after(now, Some((old, now + 7))), now + 7);
    }

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
