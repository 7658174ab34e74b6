//! Hybrid logical clock: timestamps that follow wall time but never go backwards on one node and
//! always move past every timestamp the node has seen from others.
//!
//! Workflow transitions are ordered by these timestamps (then by actor), so two offices that act on
//! the same incident while apart get the same order on every replica, and causally later actions are
//! never ordered before what they saw.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// A remote timestamp further ahead of our wall clock than this is not adopted: one node with a clock
/// set to 2099 must not drag every other node's clock with it.
pub const MAX_FORWARD_DRIFT_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub wall_ms: u64,
    pub counter: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    #[error("`{0}` is not a timestamp (expected 13 digits, a dash and 5 digits)")]
    Malformed(String),
}

impl fmt::Display for Timestamp {
    /// Fixed width, so timestamps sort the same as text and as numbers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013}-{:05}", self.wall_ms, self.counter)
    }
}

impl FromStr for Timestamp {
    type Err = HlcError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || HlcError::Malformed(s.chars().take(40).collect());
        let (wall, counter) = s.split_once('-').ok_or_else(bad)?;
        if wall.len() != 13 || counter.len() != 5 {
            return Err(bad());
        }
        Ok(Timestamp {
            wall_ms: wall.parse().map_err(|_| bad())?,
            counter: counter.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One clock per node. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Hlc {
    last: Arc<Mutex<Timestamp>>,
    wall: WallClock,
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hlc").field("last", &self.peek()).finish()
    }
}

impl Hlc {
    /// A clock reading wall time from `wall` (milliseconds since the epoch).
    pub fn new(wall: impl Fn() -> u64 + Send + Sync + 'static) -> Hlc {
        Hlc {
            last: Arc::new(Mutex::new(Timestamp::default())),
            wall: Arc::new(wall),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timestamp> {
        // A poisoned lock only means another thread panicked mid-update of two integers; the value is
        // still a valid timestamp, and refusing to tick would stop every write.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn peek(&self) -> Timestamp {
        *self.lock()
    }

    /// A fresh timestamp for a local event: later than every timestamp issued or observed before.
    pub fn now(&self) -> Timestamp {
        let wall = (self.wall)();
        let mut last = self.lock();
        let next = if wall > last.wall_ms {
            Timestamp {
                wall_ms: wall,
                counter: 0,
            }
        } else {
            tick(*last)
        };
        *last = next;
        next
    }

    /// Takes a timestamp seen on a remote change into account, unless it is implausibly far ahead.
    pub fn observe(&self, remote: Timestamp) -> bool {
        let wall = (self.wall)();
        if remote.wall_ms > wall.saturating_add(MAX_FORWARD_DRIFT_MS) {
            return false;
        }
        let mut last = self.lock();
        if remote > *last {
            *last = Timestamp {
                wall_ms: remote.wall_ms,
                counter: remote.counter.min(MAX_COUNTER),
            };
        }
        true
    }
}

/// The counter stays within five digits so the text form keeps its fixed width.
pub const MAX_COUNTER: u32 = 99_999;

fn tick(t: Timestamp) -> Timestamp {
    if t.counter < MAX_COUNTER {
        Timestamp {
            wall_ms: t.wall_ms,
            counter: t.counter + 1,
        }
    } else {
        // A hundred thousand events in one millisecond: borrow the next millisecond.
        Timestamp {
            wall_ms: t.wall_ms + 1,
            counter: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn manual(start: u64) -> (Hlc, Arc<AtomicU64>) {
        let wall = Arc::new(AtomicU64::new(start));
        let w = wall.clone();
        (Hlc::new(move || w.load(Ordering::SeqCst)), wall)
    }

    #[test]
    fn monotonic_even_when_the_wall_clock_steps_back() {
        let (hlc, wall) = manual(1_000);
        let a = hlc.now();
        wall.store(500, Ordering::SeqCst);
        let b = hlc.now();
        assert!(b > a);
        wall.store(2_000, Ordering::SeqCst);
        let c = hlc.now();
        assert_eq!(
            c,
            Timestamp {
                wall_ms: 2_000,
                counter: 0
            }
        );
    }

    #[test]
    fn observing_moves_past_remote_but_not_far_future() {
        let (hlc, _) = manual(1_000);
        assert!(hlc.observe(Timestamp {
            wall_ms: 5_000,
            counter: 7
        }));
        assert!(
            hlc.now()
                > Timestamp {
                    wall_ms: 5_000,
                    counter: 7
                }
        );
        assert!(!hlc.observe(Timestamp {
            wall_ms: 1_000 + MAX_FORWARD_DRIFT_MS + 1,
            counter: 0
        }));
        assert!(hlc.peek().wall_ms < 10_000);
    }

    proptest! {
        #[test]
        fn text_form_round_trips_and_sorts_like_the_value(w1 in 0u64..9_999_999_999_999, c1 in 0u32..99_999, w2 in 0u64..9_999_999_999_999, c2 in 0u32..99_999) {
            let a = Timestamp { wall_ms: w1, counter: c1 };
            let b = Timestamp { wall_ms: w2, counter: c2 };
            prop_assert_eq!(a.to_string().parse::<Timestamp>().unwrap(), a);
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
        }

        #[test]
        fn parser_never_panics(s in ".{0,30}") {
            let _ = s.parse::<Timestamp>();
        }
    }
}
