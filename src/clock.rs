//! Wall-clock time behind one seam, so code with deadlines can be tested with a controllable clock;
//! and times from outside (query parameters, deadlines) parsed into a sane window, so no arithmetic
//! on them can overflow and no extreme value slips past a limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds since the Unix epoch.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    /// A clock that moves only when told to; for tests of deadlines and timeouts.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn manual(start_ms: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => system_now_ms(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance_ms(&self, by: i64) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by, Ordering::SeqCst);
        }
    }
}

pub fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The earliest time accepted from outside: the Unix epoch.
pub const EARLIEST_MS: i64 = 0;
/// The latest: 2100-01-01T00:00:00Z. Anything later is a typo or an attack.
pub const LATEST_MS: i64 = 4_102_444_800_000;

/// Why a time from outside was refused; the message is for the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be RFC 3339 or epoch milliseconds between 1970 and 2100")]
pub struct TimeError {
    pub field: String,
}

/// Checks that `ms` lies in [`EARLIEST_MS`]..=[`LATEST_MS`].
pub fn check_time(field: &str, ms: i64) -> Result<i64, TimeError> {
    if (EARLIEST_MS..=LATEST_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(TimeError {
            field: field.into(),
        })
    }
}

/// A time given as epoch milliseconds or RFC 3339, inside the sane window.
pub fn parse_time(field: &str, value: &str) -> Result<i64, TimeError> {
    let bad = || TimeError {
        field: field.into(),
    };
    let ms = match value.trim().parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => humantime::parse_rfc3339_weak(value.trim())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .ok_or_else(bad)?,
    };
    check_time(field, ms)
}

/// Milliseconds since the epoch as RFC 3339 in UTC to the second (exports people read); empty for
/// times before 1970, which no record here has.
pub fn rfc3339_seconds(ms: i64) -> String {
    u64::try_from(ms)
        .map(|ms| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(ms))
                .to_string()
        })
        .unwrap_or_default()
}

/// Milliseconds since the epoch as RFC 3339 in UTC to the millisecond (readings); empty before 1970.
pub fn rfc3339_millis(ms: i64) -> String {
    u64::try_from(ms)
        .map(|ms| {
            humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms))
                .to_string()
        })
        .unwrap_or_default()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Milliseconds since the epoch to the second with the +08:00 offset of China Standard Time, as CAP
/// wants times (it forbids `Z`).
pub fn rfc3339_china(ms: i64) -> String {
    let secs = ms.div_euclid(1000) + 8 * 3600;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+08:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An RFC 3339 time with a numeric offset (`2026-07-01T08:00:00+08:00`, fractions not allowed), as
/// milliseconds since the epoch. `Z` is not accepted: CAP forbids it and the callers want offsets.
pub fn parse_rfc3339_offset(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() != 25 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let sign = match s.get(19..20)? {
        "+" => 1,
        "-" => -1,
        _ => return None,
    };
    let (oh, om) = (num(20..22)?, num(23..25)?);
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || se > 60
        || oh > 23
        || om > 59
    {
        return None;
    }
    let secs =
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - sign * (oh * 3600 + om * 60);
    Some(secs * 1000)
}

/// Now as RFC 3339 in UTC, for records meant to be read by people.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_china_standard_time() {
        assert_eq!(rfc3339_china(0), "1970-01-01T08:00:00+08:00");
        // 2026-11-30T10:48:43Z is 18:48:43 in Beijing.
        assert_eq!(
            rfc3339_china(1_796_035_723_000),
            "2026-11-30T18:48:43+08:00"
        );
        assert_eq!(rfc3339_china(951_782_400_000), "2000-02-29T08:00:00+08:00");
    }

    #[test]
    fn cap_times_with_offsets() {
        assert_eq!(
            parse_rfc3339_offset("2026-11-30T18:48:43+08:00"),
            Some(1_796_035_723_000)
        );
        assert_eq!(
            parse_rfc3339_offset("2026-11-30T10:48:43-00:00"),
            Some(1_796_035_723_000)
        );
        assert_eq!(parse_rfc3339_offset("2026-11-30T10:48:43Z"), None);
        assert_eq!(parse_rfc3339_offset("garbage"), None);
        // Formatting and parsing agree over the whole window.
        for ms in [0, 951_782_400_000, 1_796_035_723_000, 4_102_444_799_000] {
            assert_eq!(parse_rfc3339_offset(&rfc3339_china(ms)), Some(ms));
        }
    }

    #[test]
    fn times_from_outside_stay_in_the_window() {
        assert_eq!(parse_time("from", "0"), Ok(0));
        assert_eq!(
            parse_time("from", "2026-11-30T12:00:00Z"),
            Ok(1_796_040_000_000)
        );
        for bad in [
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "4102444800001",
            "2200-01-01T00:00:00Z",
            "yesterday",
            "",
        ] {
            assert!(parse_time("from", bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = parse_time("t", &s);
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance_ms(500);
        assert_eq!(clock.now_ms(), 1_500);
        assert!(Clock::System.now_ms() > 1_700_000_000_000);
    }
}
