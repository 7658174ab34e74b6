//! How a rule turns readings into a state: the four national warning levels (blue IV, yellow III,
//! orange II, red I; red highest, Emergency Response Law art. 42) entered and left with `for`,
//! `hysteresis` and `clear_after`, or a stale alarm about the sensor itself. Pure and clock-free:
//! callers pass reading times and "now", so the semantics are tested with a manual clock and
//! property tests, and the same code runs live and in backtests.
//!
//! The definitions, exactly:
//! - The watched value is the reading (`threshold`), the sum of good readings in the window ending
//!   at the reading (`rolling_sum`), or the rise per hour between the oldest and newest good readings
//!   in the window (`rate`; only once they span at least half the window, so two readings a second
//!   apart never make a spike).
//! - A level's condition is `value >= level` (`op` `>=`) or `value <= level` (`<=`). A level is
//!   entered once its condition has held for `for` (at once when `for` is zero); it is left only once
//!   the value has been beyond the level minus `hysteresis` (plus, for `<=`) for `clear_after`.
//! - The state is the highest level entered; `none` when none is.
//! - Only good readings count. A reading flagged out of range or by the device, or taken while the
//!   device is stale or faulty, never raises or clears anything. A reading at or before the newest
//!   one already seen (a duplicate, a re-delivery, a late one) is ignored: history is not rewritten.
//! - Entering may complete on a timer (the last good value still meets the condition after `for`);
//!   leaving needs a reading that confirms it (so a sensor that goes silent never clears a warning).
//! - `stale`: no good reading for `after` is an alarm about the sensor, apart from the colours; the
//!   next good reading ends it.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The national warning levels, lowest first, so `Ord` says which is higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Blue,
    Yellow,
    Orange,
    Red,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Blue, Level::Yellow, Level::Orange, Level::Red];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Blue => "blue",
            Level::Yellow => "yellow",
            Level::Orange => "orange",
            Level::Red => "red",
        }
    }

    /// The roman numeral of the national scale: red is I.
    pub fn grade(self) -> &'static str {
        match self {
            Level::Blue => "IV",
            Level::Yellow => "III",
            Level::Orange => "II",
            Level::Red => "I",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Level {
    type Err = ();
    fn from_str(s: &str) -> Result<Level, ()> {
        Level::ALL.into_iter().find(|l| l.as_str() == s).ok_or(())
    }
}

/// Which way a level is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<=")]
    AtMost,
}

/// What a rule computes from its readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Threshold,
    RollingSum { window_ms: i64 },
    Rate { window_ms: i64 },
    Stale { after_ms: i64 },
}

/// What the evaluator needs of a rule: validated, durations in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub measure: Measure,
    pub op: Op,
    /// The value per level; `None` where the rule does not use that level.
    pub levels: [Option<f64>; 4],
    pub for_ms: i64,
    pub hysteresis: f64,
    pub clear_after_ms: i64,
}

impl Spec {
    /// How far back readings matter to this rule's state now: its window, its `for` and
    /// `clear_after` periods, its stale `after`, whichever is longest.
    pub fn memory_ms(&self) -> i64 {
        let measure = match self.measure {
            Measure::Threshold => 0,
            Measure::RollingSum { window_ms } | Measure::Rate { window_ms } => window_ms,
            Measure::Stale { after_ms } => after_ms,
        };
        measure.max(self.for_ms).max(self.clear_after_ms)
    }
}

/// The state of a rule for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    None,
    Level(Level),
    /// No good reading for the rule's `after`: the sensor, not the river, needs attention.
    Stale,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::None => "none",
            State::Level(l) => l.as_str(),
            State::Stale => "stale",
        }
    }
}

/// A change of state and when it happened (the reading's time, or "now" on a timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub at_ms: i64,
    pub from: State,
    pub to: State,
}

/// Whether a reading may move a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Yes,
    /// Flagged, out of range, or taken while the device was stale or faulty.
    No,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Track {
    entered: bool,
    /// Since when the entry condition has held without a break.
    holding_since: Option<i64>,
    /// Since when the leave condition has held without a break.
    clearing_since: Option<i64>,
}

/// One rule's evaluation for one device.
#[derive(Debug, Clone)]
pub struct Evaluator {
    spec: Spec,
    tracks: [Track; 4],
    /// Good readings inside the widest window the measure needs (time, value).
    window: VecDeque<(i64, f64)>,
    /// The sum of `window`, kept as readings enter and leave so a rolling sum costs the same at one
    /// reading a minute and at hundreds a second.
    window_sum: f64,
    newest_ms: Option<i64>,
    last_good_ms: Option<i64>,
    /// The value computed at the last good reading, if the measure had one.
    last_value: Option<f64>,
    stale: bool,
    state: State,
}

impl Evaluator {
    /// A fresh evaluator; `started_ms` is when watching began (a stale rule counts from there).
    pub fn new(spec: Spec, started_ms: i64) -> Evaluator {
        Evaluator {
            spec,
            tracks: [Track::default(); 4],
            window: VecDeque::new(),
            window_sum: 0.0,
            newest_ms: None,
            last_good_ms: Some(started_ms),
            last_value: None,
            stale: false,
            state: State::None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The value the rule watches, as of the last good reading.
    pub fn value(&self) -> Option<f64> {
        self.last_value
    }

    /// Takes one reading; returns the change it caused, if any.
    pub fn observe(&mut self, time_ms: i64, value: f64, usable: Usable) -> Option<Change> {
        if usable == Usable::No || !value.is_finite() {
            return None;
        }
        if self.newest_ms.is_some_and(|newest| time_ms <= newest) {
            return None;
        }
        self.newest_ms = Some(time_ms);
        self.last_good_ms = Some(time_ms);
        self.stale = false;
        if let Measure::Stale { .. } = self.spec.measure {
            return self.settle(time_ms);
        }
        match self.spec.measure {
            Measure::RollingSum { window_ms } | Measure::Rate { window_ms } => {
                while let Some(&(t, v)) = self.window.front() {
                    if t > time_ms - window_ms {
                        break;
                    }
                    self.window.pop_front();
                    self.window_sum -= v;
                }
                if self.window.is_empty() {
                    // Start again from exact zero, so rounding never outlives the readings.
                    self.window_sum = 0.0;
                }
            }
            _ => {
                self.window.clear();
                self.window_sum = 0.0;
            }
        }
        self.window.push_back((time_ms, value));
        self.window_sum += value;
        self.last_value = self.measure();
        if let Some(v) = self.last_value {
            for level in Level::ALL {
                self.step(level, v, time_ms, true);
            }
        }
        self.settle(time_ms)
    }

    /// Lets time pass with no reading: entries whose `for` has run out complete, and a stale rule
    /// alarms. Nothing is left on a timer.
    pub fn tick(&mut self, now_ms: i64) -> Option<Change> {
        if let Measure::Stale { after_ms } = self.spec.measure {
            if self
                .last_good_ms
                .is_some_and(|last| now_ms - last >= after_ms)
            {
                self.stale = true;
            }
            return self.settle(now_ms);
        }
        if let Some(v) = self.last_value {
            for level in Level::ALL {
                self.step(level, v, now_ms, false);
            }
        }
        self.settle(now_ms)
    }

    /// Runs stored readings (in time order) through the evaluator as if they arrived live, firing
    /// the timers that ran out between them at their own time, then lets time pass to `until_ms`.
    /// Each change is handed to `on_change` with the watched value then.
    pub fn replay(
        &mut self,
        readings: impl IntoIterator<Item = (i64, f64, Usable)>,
        until_ms: i64,
        mut on_change: impl FnMut(Change, Option<f64>),
    ) {
        for (t, value, usable) in readings {
            // A reading at the deadline itself is evidence and goes first.
            while let Some(deadline) = self.next_deadline().filter(|d| *d < t) {
                match self.tick(deadline) {
                    Some(change) => on_change(change, self.value()),
                    None => break,
                }
            }
            if let Some(change) = self.observe(t, value, usable) {
                on_change(change, self.value());
            }
        }
        while let Some(deadline) = self.next_deadline().filter(|d| *d <= until_ms) {
            match self.tick(deadline) {
                Some(change) => on_change(change, self.value()),
                None => break,
            }
        }
        if let Some(change) = self.tick(until_ms) {
            on_change(change, self.value());
        }
    }

    /// When the next timer could change something (an entry whose `for` runs out, a stale alarm).
    pub fn next_deadline(&self) -> Option<i64> {
        if let Measure::Stale { after_ms } = self.spec.measure {
            return (!self.stale)
                .then_some(self.last_good_ms.map(|t| t + after_ms))
                .flatten();
        }
        self.tracks
            .iter()
            .filter(|t| !t.entered)
            .filter_map(|t| t.holding_since.map(|s| s + self.spec.for_ms))
            .min()
    }

    fn measure(&self) -> Option<f64> {
        match self.spec.measure {
            Measure::Threshold => self.window.back().map(|(_, v)| *v),
            Measure::RollingSum { .. } => Some(self.window_sum),
            Measure::Rate { window_ms } => {
                let (t0, v0) = *self.window.front()?;
                let (t1, v1) = *self.window.back()?;
                let span = t1 - t0;
                (span > 0 && span * 2 >= window_ms).then(|| (v1 - v0) * 3_600_000.0 / span as f64)
            }
            Measure::Stale { .. } => None,
        }
    }

    fn meets(&self, v: f64, at: f64) -> bool {
        match self.spec.op {
            Op::AtLeast => v >= at,
            Op::AtMost => v <= at,
        }
    }

    fn beyond_band(&self, v: f64, at: f64) -> bool {
        match self.spec.op {
            Op::AtLeast => v < at - self.spec.hysteresis,
            Op::AtMost => v > at + self.spec.hysteresis,
        }
    }

    /// Moves one level's track with the value `v` at `now`; `reading` says whether a reading (and
    /// not a timer) brought it, since only readings may leave a level.
    fn step(&mut self, level: Level, v: f64, now: i64, reading: bool) {
        let Some(at) = self.spec.levels[level.index()] else {
            return;
        };
        let meets = self.meets(v, at);
        let beyond = self.beyond_band(v, at);
        let (for_ms, clear_ms) = (self.spec.for_ms, self.spec.clear_after_ms);
        let track = &mut self.tracks[level.index()];
        if !track.entered {
            if meets {
                let since = *track.holding_since.get_or_insert(now);
                if now - since >= for_ms {
                    track.entered = true;
                    track.holding_since = None;
                    track.clearing_since = None;
                }
            } else if reading {
                track.holding_since = None;
            }
        } else if reading {
            if beyond {
                let since = *track.clearing_since.get_or_insert(now);
                if now - since >= clear_ms {
                    track.entered = false;
                    track.clearing_since = None;
                    track.holding_since = None;
                }
            } else {
                track.clearing_since = None;
            }
        }
    }

    fn settle(&mut self, at_ms: i64) -> Option<Change> {
        let next = if self.stale {
            State::Stale
        } else {
            Level::ALL
                .into_iter()
                .rev()
                .find(|l| self.tracks[l.index()].entered)
                .map_or(State::None, State::Level)
        };
        (next != self.state).then(|| {
            let change = Change {
                at_ms,
                from: self.state,
                to: next,
            };
            self.state = next;
            change
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    fn threshold(for_ms: i64, clear_after_ms: i64) -> Spec {
        Spec {
            measure: Measure::Threshold,
            op: Op::AtLeast,
            levels: [Some(3.0), Some(3.5), Some(4.0), Some(4.5)],
            for_ms,
            hysteresis: 0.1,
            clear_after_ms,
        }
    }

    fn feed(e: &mut Evaluator, points: &[(i64, f64)]) -> Vec<Change> {
        points
            .iter()
            .filter_map(|(t, v)| e.observe(*t, *v, Usable::Yes))
            .collect()
    }

    #[test]
    fn a_level_is_entered_after_for_and_left_after_clear_after_beyond_the_band() {
        let mut e = Evaluator::new(threshold(5 * MIN, 10 * MIN), 0);
        assert_eq!(e.observe(0, 4.1, Usable::Yes), None);
        assert_eq!(e.observe(4 * MIN, 4.2, Usable::Yes), None);
        let entered = e.observe(5 * MIN, 4.2, Usable::Yes).unwrap();
        assert_eq!(entered.to, State::Level(Level::Orange));
        // Inside the band (4.0 - 0.1 < 3.95 < 4.0): still orange however long it lasts.
        assert_eq!(e.observe(6 * MIN, 3.95, Usable::Yes), None);
        assert_eq!(e.observe(30 * MIN, 3.95, Usable::Yes), None);
        // Below the band, but not yet for ten minutes.
        assert_eq!(e.observe(31 * MIN, 3.8, Usable::Yes), None);
        assert_eq!(e.observe(40 * MIN, 3.8, Usable::Yes), None);
        let left = e.observe(41 * MIN, 3.8, Usable::Yes).unwrap();
        assert_eq!(left.to, State::Level(Level::Yellow));
    }

    #[test]
    fn entry_completes_on_a_timer_but_leaving_needs_a_reading() {
        let mut e = Evaluator::new(threshold(5 * MIN, 5 * MIN), 0);
        e.observe(0, 4.6, Usable::Yes);
        assert_eq!(e.next_deadline(), Some(5 * MIN));
        assert_eq!(e.tick(4 * MIN), None);
        assert_eq!(e.tick(5 * MIN).unwrap().to, State::Level(Level::Red));
        e.observe(6 * MIN, 1.0, Usable::Yes);
        // The sensor goes silent: no amount of time clears the warning.
        assert_eq!(e.tick(600 * MIN), None);
        assert_eq!(e.state(), State::Level(Level::Red));
        assert_eq!(
            e.observe(601 * MIN, 1.0, Usable::Yes).unwrap().to,
            State::None
        );
    }

    #[test]
    fn flagged_late_and_duplicate_readings_move_nothing() {
        let mut e = Evaluator::new(threshold(0, 0), 0);
        assert_eq!(e.observe(MIN, 9.0, Usable::No), None);
        assert_eq!(e.observe(MIN, f64::NAN, Usable::Yes), None);
        assert_eq!(
            e.observe(2 * MIN, 3.6, Usable::Yes).unwrap().to,
            State::Level(Level::Yellow)
        );
        assert_eq!(e.observe(2 * MIN, 9.0, Usable::Yes), None);
        assert_eq!(e.observe(MIN, 9.0, Usable::Yes), None);
        assert_eq!(e.state(), State::Level(Level::Yellow));
    }

    #[test]
    fn at_most_rules_mirror_the_band() {
        let mut e = Evaluator::new(
            Spec {
                op: Op::AtMost,
                levels: [None, Some(10.0), None, Some(5.0)],
                ..threshold(0, 0)
            },
            0,
        );
        assert_eq!(
            e.observe(MIN, 4.0, Usable::Yes).unwrap().to,
            State::Level(Level::Red)
        );
        assert_eq!(e.observe(2 * MIN, 5.05, Usable::Yes), None);
        assert_eq!(
            e.observe(3 * MIN, 5.2, Usable::Yes).unwrap().to,
            State::Level(Level::Yellow)
        );
    }

    #[test]
    fn rolling_sums_and_rates_over_their_windows() {
        let mut rain = Evaluator::new(
            Spec {
                measure: Measure::RollingSum {
                    window_ms: 60 * MIN,
                },
                levels: [Some(10.0), Some(20.0), None, None],
                ..threshold(0, 0)
            },
            0,
        );
        let changes = feed(&mut rain, &[(0, 5.0), (20 * MIN, 5.0), (40 * MIN, 5.0)]);
        assert_eq!(changes.last().unwrap().to, State::Level(Level::Blue));
        assert_eq!(rain.value(), Some(15.0));
        // The first 5 mm leave the window at 60 minutes.
        rain.observe(61 * MIN, 0.0, Usable::Yes);
        assert_eq!(rain.value(), Some(10.0));

        let mut river = Evaluator::new(
            Spec {
                measure: Measure::Rate {
                    window_ms: 30 * MIN,
                },
                levels: [Some(0.5), None, None, None],
                ..threshold(0, 0)
            },
            0,
        );
        // Two readings a minute apart make no rate (less than half the window).
        assert_eq!(river.observe(0, 2.0, Usable::Yes), None);
        assert_eq!(river.observe(MIN, 2.1, Usable::Yes), None);
        assert_eq!(river.value(), None);
        let rose = river.observe(20 * MIN, 2.3, Usable::Yes).unwrap();
        assert_eq!(rose.to, State::Level(Level::Blue));
        assert!((river.value().unwrap() - 0.9).abs() < 1e-9);
    }

    #[test]
    fn a_stale_rule_alarms_about_silence_and_a_good_reading_ends_it() {
        let spec = Spec {
            measure: Measure::Stale { after_ms: 30 * MIN },
            levels: [None; 4],
            ..threshold(0, 0)
        };
        let mut e = Evaluator::new(spec, 0);
        assert_eq!(e.tick(29 * MIN), None);
        assert_eq!(e.next_deadline(), Some(30 * MIN));
        assert_eq!(e.tick(30 * MIN).unwrap().to, State::Stale);
        // A flagged reading is not a good one.
        assert_eq!(e.observe(31 * MIN, 1.0, Usable::No), None);
        assert_eq!(
            e.observe(32 * MIN, 1.0, Usable::Yes).unwrap().to,
            State::None
        );
    }

    fn series() -> impl Strategy<Value = Vec<(i64, f64)>> {
        prop::collection::vec((1i64..120_000, 0.0f64..6.0), 1..120).prop_map(|steps| {
            let mut t = 0;
            steps
                .into_iter()
                .map(|(dt, v)| {
                    t += dt;
                    (t, (v * 100.0).round() / 100.0)
                })
                .collect()
        })
    }

    /// Entry and exit by the definitions, computed directly from the whole series for one level.
    fn direct(
        points: &[(i64, f64)],
        at: f64,
        band: f64,
        for_ms: i64,
        clear_ms: i64,
    ) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        let (mut entered, mut since): (bool, Option<i64>) = (false, None);
        for &(t, v) in points {
            if !entered {
                if v >= at {
                    let s = *since.get_or_insert(t);
                    if t - s >= for_ms {
                        entered = true;
                        since = None;
                        out.push((t, true));
                    }
                } else {
                    since = None;
                }
            } else if v < at - band {
                let s = *since.get_or_insert(t);
                if t - s >= clear_ms {
                    entered = false;
                    since = None;
                    out.push((t, false));
                }
            } else {
                since = None;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn entries_and_exits_follow_the_definitions(points in series(), for_min in 0i64..4, clear_min in 0i64..4) {
            let spec = Spec { levels: [None, None, None, Some(4.0)], ..threshold(for_min * MIN, clear_min * MIN) };
            let mut e = Evaluator::new(spec, 0);
            let got: Vec<(i64, bool)> = feed(&mut e, &points)
                .into_iter()
                .map(|c| (c.at_ms, c.to == State::Level(Level::Red)))
                .collect();
            prop_assert_eq!(got, direct(&points, 4.0, 0.1, for_min * MIN, clear_min * MIN));
        }

        #[test]
        fn nothing_flaps_inside_the_hysteresis_band(start in 4.0f64..5.0, wiggle in prop::collection::vec(-0.099f64..0.099, 1..200)) {
            let mut e = Evaluator::new(Spec { levels: [None, None, None, Some(4.0)], ..threshold(0, 0) }, 0);
            e.observe(0, start, Usable::Yes);
            prop_assert_eq!(e.state(), State::Level(Level::Red));
            for (i, w) in wiggle.iter().enumerate() {
                // Anywhere from 3.901 upwards: inside the band or above the level.
                let v = (4.0 + w).max(3.901);
                prop_assert_eq!(e.observe((i as i64 + 1) * MIN, v, Usable::Yes), None);
            }
        }

        #[test]
        fn redelivered_readings_change_nothing(points in series(), again in prop::collection::vec(any::<prop::sample::Index>(), 0..40)) {
            let spec = threshold(2 * MIN, 3 * MIN);
            let mut clean = Evaluator::new(spec.clone(), 0);
            let expected = feed(&mut clean, &points);
            // The same readings with some delivered again later (QoS 1 and HJ 212 re-sends do this).
            let mut noisy = Vec::new();
            let mut extra = again.iter().map(|i| i.index(points.len())).collect::<Vec<_>>();
            extra.sort_unstable();
            let mut k = 0;
            for (i, p) in points.iter().enumerate() {
                noisy.push(*p);
                while k < extra.len() && extra[k] <= i {
                    noisy.push(points[extra[k]]);
                    k += 1;
                }
            }
            let mut dirty = Evaluator::new(spec, 0);
            prop_assert_eq!(feed(&mut dirty, &noisy), expected);
        }

        #[test]
        fn rolling_sums_and_rates_agree_with_a_direct_computation(points in series(), window_min in 1i64..90) {
            let window = window_min * MIN;
            let mut sum = Evaluator::new(Spec { measure: Measure::RollingSum { window_ms: window }, ..threshold(0, 0) }, 0);
            let mut rate = Evaluator::new(Spec { measure: Measure::Rate { window_ms: window }, ..threshold(0, 0) }, 0);
            for (i, &(t, v)) in points.iter().enumerate() {
                sum.observe(t, v, Usable::Yes);
                rate.observe(t, v, Usable::Yes);
                let inside: Vec<&(i64, f64)> = points[..=i].iter().filter(|(u, _)| *u > t - window).collect();
                let direct_sum: f64 = inside.iter().map(|(_, v)| v).sum();
                prop_assert!((sum.value().unwrap() - direct_sum).abs() < 1e-9);
                let (t0, v0) = *inside[0];
                let direct_rate = (t - t0 > 0 && (t - t0) * 2 >= window).then(|| (v - v0) * 3_600_000.0 / (t - t0) as f64);
                match (rate.value(), direct_rate) {
                    (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-6),
                    (a, b) => prop_assert_eq!(a.is_some(), b.is_some()),
                }
            }
        }

        #[test]
        fn silence_never_clears(points in series(), quiet_min in 1i64..10_000) {
            let mut e = Evaluator::new(threshold(0, 0), 0);
            feed(&mut e, &points);
            let rank = |s: State| match s {
                State::Level(l) => l as i32 + 1,
                _ => 0,
            };
            let before = e.state();
            let last = points.last().map_or(0, |p| p.0);
            e.tick(last + quiet_min * MIN);
            prop_assert!(rank(e.state()) >= rank(before), "{before:?} -> {:?}", e.state());
        }
    }
}
