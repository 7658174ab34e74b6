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

/// Now as RFC 3339 in UTC, for records meant to be read by people.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
