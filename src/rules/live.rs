//! Rules evaluated live: every committed reading reaches the watcher through the telemetry event
//! stream (no polling of the readings), a timer completes `for` periods and stale alarms, and rule
//! records are reloaded when records change. Runs on its own task, off the telemetry writer.
//! State changes go out on an in-process channel ([`RuleEvent`]) that warnings subscribe to.
//!
//! States live in memory and are restored from stored readings: a rule that starts (at start-up,
//! or because it was written) replays the readings its state depends on — its window, its `for`
//! and `clear_after`, the last readings — and picks up where it was. The restored state goes out
//! as a `restored` event, so a warning that should be open is raised, one that should have
//! cleared clears, and one that stands is left alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;
use township_drivers::{Quality, Reading};
use uuid::Uuid;

use super::eval::{Change, Evaluator, State, Usable};
use super::record;
use super::spec::Rule;
use crate::telemetry::{Status, StreamEvent, Telemetry};

/// A rule's state changed for one device.
#[derive(Debug, Clone, Serialize)]
pub struct RuleEvent {
    pub rule: Uuid,
    pub device: String,
    pub at_ms: i64,
    pub from: State,
    pub to: State,
    /// The watched value when it changed (the reading, the sum or the rate), if there was one.
    pub value: Option<f64>,
    /// The state as restored from stored readings when the rule started, not a change seen live.
    pub restored: bool,
}

/// The rule's current state: the highest over its devices, and since when.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Current {
    pub state: State,
    pub since_ms: Option<i64>,
}

struct Watched {
    rule: Rule,
    /// Per device: its evaluator and when its state last changed.
    devices: HashMap<String, (Evaluator, Option<i64>)>,
}

#[derive(Default)]
struct Rules {
    by_id: HashMap<Uuid, Watched>,
    /// Rules naming their device, by metric then device, and area-wide rules by metric: a reading
    /// costs the rules that could care about it, not all of them (looked up without allocating).
    by_device: HashMap<String, HashMap<String, Vec<Uuid>>>,
    by_metric: HashMap<String, Vec<Uuid>>,
}

/// The live evaluation of every rule in force on this node.
pub struct Watch {
    rules: Mutex<Rules>,
    events: broadcast::Sender<RuleEvent>,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            rules: Mutex::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

fn rank(state: State) -> i32 {
    match state {
        State::None => 0,
        State::Stale => 1,
        State::Level(l) => 2 + l as i32,
    }
}

impl Watch {
    pub fn subscribe(&self) -> broadcast::Receiver<RuleEvent> {
        self.events.subscribe()
    }

    /// Takes the rules in force; evaluators of rules whose body did not change keep their state.
    /// Returns the rules that start afresh, for [`warm_up`].
    pub fn load(&self, rules: Vec<(Uuid, Rule)>, now_ms: i64) -> Vec<(Uuid, Rule)> {
        let mut fresh = Vec::new();
        let mut current = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        let mut by_metric: HashMap<String, Vec<Uuid>> = HashMap::new();
        let mut by_device: HashMap<String, HashMap<String, Vec<Uuid>>> = HashMap::new();
        for (id, rule) in rules {
            if !rule.body.enabled {
                continue;
            }
            match &rule.body.device {
                Some(device) => by_device
                    .entry(rule.body.metric.clone())
                    .or_default()
                    .entry(device.clone())
                    .or_default()
                    .push(id),
                None => by_metric
                    .entry(rule.body.metric.clone())
                    .or_default()
                    .push(id),
            }
            let kept = current.by_id.remove(&id).filter(|w| w.rule == rule);
            if kept.is_none() {
                fresh.push((id, rule.clone()));
            }
            let watched = kept.unwrap_or_else(|| {
                let mut devices = HashMap::new();
                // A rule naming its device watches it from now (so a silent one goes stale).
                if let Some(device) = &rule.body.device {
                    devices.insert(
                        device.clone(),
                        (Evaluator::new(rule.spec.clone(), now_ms), None),
                    );
                }
                Watched { rule, devices }
            });
            next.insert(id, watched);
        }
        *current = Rules {
            by_id: next,
            by_device,
            by_metric,
        };
        fresh
    }

    /// Puts restored evaluators in place (for rules still in force as they were) and tells the
    /// restored states: a level always, `none` only when readings showed it.
    pub fn restore(&self, restored: Vec<Restored>) {
        // One verdict per rule, not per device: the highest level any device stands at, else
        // `none` when readings showed it for every device (one device at none must not clear a
        // warning another device still holds).
        let mut verdicts: HashMap<Uuid, Verdict> = HashMap::new();
        {
            let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            for r in restored {
                let Some(watched) = rules.by_id.get_mut(&r.rule) else {
                    continue;
                };
                if watched.rule.spec != r.spec {
                    continue;
                }
                let state = r.evaluator.state();
                let value = r.evaluator.value();
                let v = verdicts.entry(r.rule).or_insert_with(|| Verdict {
                    device: r.device.clone(),
                    state: State::None,
                    since: None,
                    value: None,
                    evidence: false,
                });
                if rank(state) > rank(v.state) {
                    (v.device, v.state, v.since, v.value) =
                        (r.device.clone(), state, r.since_ms, value);
                }
                v.evidence |= r.evidence;
                watched.devices.insert(r.device, (r.evaluator, r.since_ms));
            }
        }
        for (
            rule,
            Verdict {
                device,
                state,
                since,
                value,
                evidence,
            },
        ) in verdicts
        {
            let tell = matches!(state, State::Level(_)) || (state == State::None && evidence);
            if !tell {
                continue;
            }
            tracing::info!(rule = %rule, device, state = state.as_str(), "rule state restored from stored readings");
            let _ = self.events.send(RuleEvent {
                rule,
                device,
                at_ms: since.unwrap_or(0),
                from: State::None,
                to: state,
                value,
                restored: true,
            });
        }
    }

    /// The state of one rule now.
    pub fn current(&self, id: Uuid) -> Current {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules
            .by_id
            .get(&id)
            .and_then(|w| {
                w.devices
                    .values()
                    .max_by_key(|(e, _)| rank(e.state()))
                    .map(|(e, since)| Current {
                        state: e.state(),
                        since_ms: *since,
                    })
            })
            .unwrap_or(Current {
                state: State::None,
                since_ms: None,
            })
    }

    fn emit(&self, id: Uuid, device: &str, change: Change, value: Option<f64>) {
        tracing::info!(rule = %id, device, from = change.from.as_str(), to = change.to.as_str(), "rule state changed");
        let _ = self.events.send(RuleEvent {
            rule: id,
            device: device.to_string(),
            at_ms: change.at_ms,
            from: change.from,
            to: change.to,
            value,
            restored: false,
        });
    }

    /// Evaluates committed readings; `usable` says whether a reading's device was fit to report.
    pub fn observe(
        &self,
        readings: &[Reading],
        in_area: impl Fn(&str, &township_sync::AreaCode) -> bool,
        usable: impl Fn(&Reading) -> Usable,
    ) {
        let mut changes = Vec::new();
        {
            let mut guard = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            let Rules {
                by_id,
                by_device,
                by_metric,
            } = &mut *guard;
            for reading in readings {
                let named = by_device
                    .get(&reading.metric)
                    .and_then(|devices| devices.get(&reading.device))
                    .map_or(&[][..], Vec::as_slice);
                let area_wide = by_metric
                    .get(&reading.metric)
                    .map_or(&[][..], Vec::as_slice);
                if named.is_empty() && area_wide.is_empty() {
                    continue;
                }
                // Once per reading, not per rule: it asks the device's health.
                let fit = usable(reading);
                for id in named.iter().chain(area_wide) {
                    let Some(watched) = by_id.get_mut(id) else {
                        continue;
                    };
                    let rule = &watched.rule;
                    let ours = match &rule.body.device {
                        Some(d) => *d == reading.device,
                        None => in_area(&reading.device, &rule.area),
                    };
                    if !ours {
                        continue;
                    }
                    // Looked up by reference: a reading reaches many rules, and cloning the
                    // device id for each (as `entry` would) was a large share of their cost.
                    if !watched.devices.contains_key(&reading.device) {
                        let fresh = Evaluator::new(rule.spec.clone(), reading.time_ms);
                        watched
                            .devices
                            .insert(reading.device.clone(), (fresh, None));
                    }
                    let Some((evaluator, since)) = watched.devices.get_mut(&reading.device) else {
                        continue;
                    };
                    if let Some(change) = evaluator.observe(reading.time_ms, reading.value, fit) {
                        *since = Some(change.at_ms);
                        changes.push((*id, reading.device.clone(), change, evaluator.value()));
                    }
                }
            }
        }
        for (id, device, change, value) in changes {
            self.emit(id, &device, change, value);
        }
    }

    /// Lets time pass: `for` periods that ran out and stale alarms.
    pub fn tick(&self, now_ms: i64) {
        let mut changes = Vec::new();
        {
            let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            for (id, watched) in rules.by_id.iter_mut() {
                for (device, (evaluator, since)) in watched.devices.iter_mut() {
                    if evaluator.next_deadline().is_some_and(|d| d <= now_ms)
                        && let Some(change) = evaluator.tick(now_ms)
                    {
                        *since = Some(change.at_ms);
                        changes.push((*id, device.clone(), change, evaluator.value()));
                    }
                }
            }
        }
        for (id, device, change, value) in changes {
            self.emit(id, &device, change, value);
        }
    }
}

/// Whether a reading may move a rule: good (or clock-corrected) values from a device that is not
/// faulty. Flagged and out-of-range values never raise or clear anything.
pub fn usable(
    telemetry: &Telemetry,
    reading: &Reading,
    now_ms: i64,
    cfg: &crate::telemetry::config::TelemetryConfig,
) -> Usable {
    if !matches!(reading.quality, Quality::Good | Quality::ClockCorrected) {
        return Usable::No;
    }
    match telemetry.devices.get(&reading.device) {
        Some(device) if telemetry.status(&device, now_ms, cfg) != Status::Faulty => Usable::Yes,
        _ => Usable::No,
    }
}

/// A rule's restored state: the device at its highest level, and whether any readings showed it.
struct Verdict {
    device: String,
    state: State,
    since: Option<i64>,
    value: Option<f64>,
    evidence: bool,
}

/// One rule's state for one device, rebuilt from stored readings.
pub struct Restored {
    pub rule: Uuid,
    pub device: String,
    /// The spec it was rebuilt with, so a rule changed meanwhile is not given a stale state.
    pub spec: super::eval::Spec,
    pub evaluator: Evaluator,
    pub since_ms: Option<i64>,
    /// Whether any usable reading was replayed (a `none` without one proves nothing).
    pub evidence: bool,
}

/// Most stored readings replayed per device and metric: enough for a day of 20-second readings.
const WARM_UP_READINGS: usize = 5_000;
/// Readings further back than this never matter, whatever the rule says.
const WARM_UP_LONGEST_MS: i64 = 7 * 24 * 3_600_000;

/// Rebuilds the state of rules starting afresh from the stored readings their state depends on: at
/// least the last hour, or the rule's memory (window, `for`, `clear_after`, stale `after`) when
/// longer, the newest [`WARM_UP_READINGS`] of each device. Devices of area-wide rules are those of
/// `devices` inside the rule's area. One read per (device, metric), however many rules share it.
pub fn warm_up(
    conn: &rusqlite::Connection,
    fresh: &[(Uuid, Rule)],
    devices: &[crate::telemetry::devices::Device],
    now_ms: i64,
) -> Result<Vec<Restored>, crate::store::StoreError> {
    let mut history: HashMap<(String, String), Vec<crate::telemetry::store::RawPoint>> =
        HashMap::new();
    let mut out = Vec::new();
    for (id, rule) in fresh {
        let memory = rule.spec.memory_ms().clamp(3_600_000, WARM_UP_LONGEST_MS);
        let from = now_ms - memory;
        let watched: Vec<String> = match &rule.body.device {
            Some(d) => vec![d.clone()],
            None => devices
                .iter()
                .filter(|d| rule.area.contains(&d.area))
                .map(|d| d.id.clone())
                .collect(),
        };
        for device in watched {
            let key = (device.clone(), rule.body.metric.clone());
            if !history.contains_key(&key) {
                let points =
                    match crate::telemetry::store::find_series(conn, &device, &rule.body.metric)? {
                        Some((series, _)) => crate::telemetry::store::recent_range(
                            conn,
                            series,
                            now_ms - WARM_UP_LONGEST_MS,
                            now_ms + 1,
                            WARM_UP_READINGS,
                        )?,
                        None => Vec::new(),
                    };
                history.insert(key.clone(), points);
            }
            let points: Vec<_> = history
                .get(&key)
                .map(|p| p.iter().filter(|p| p.t >= from).collect())
                .unwrap_or_default();
            if points.is_empty() && rule.body.device.is_none() {
                continue;
            }
            let mut evaluator = Evaluator::new(rule.spec.clone(), from);
            let mut since = None;
            let evidence = points
                .iter()
                .any(|p| stored_usable(p.quality) == Usable::Yes);
            evaluator.replay(
                points
                    .iter()
                    .map(|p| (p.t, p.value, stored_usable(p.quality))),
                now_ms,
                |change, _| since = Some(change.at_ms),
            );
            out.push(Restored {
                rule: *id,
                device,
                spec: rule.spec.clone(),
                evaluator,
                since_ms: since,
                evidence,
            });
        }
    }
    Ok(out)
}

/// Whether a stored reading may move a rule when readings are replayed: its quality is kept, its
/// device's health then is not.
pub fn stored_usable(quality: Quality) -> Usable {
    if matches!(quality, Quality::Good | Quality::ClockCorrected) {
        Usable::Yes
    } else {
        Usable::No
    }
}

/// What the watcher runs with.
#[derive(Clone)]
pub struct Runtime {
    pub watch: Arc<Watch>,
    pub telemetry: Arc<Telemetry>,
    pub store: crate::store::Store,
    pub clock: crate::clock::Clock,
    pub config: Arc<crate::config::Config>,
    pub latest_seq: Arc<std::sync::atomic::AtomicI64>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// What identifies the rule set as it stands: how many rows and the record sequence number of the
/// newest change among them (not a time, which two changes can share). Any rule written, deleted,
/// quarantined or released changes it.
fn fingerprint(conn: &rusqlite::Connection) -> Result<(i64, i64), crate::store::StoreError> {
    Ok(conn.query_row(
        "SELECT count(*), COALESCE(max(d.seq), 0) FROM rules r JOIN documents d ON d.id = r.doc_id",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Reloads the rules if they changed since `seen` (every record change moves the sequence; only
/// a change to a rule is worth parsing every rule again).
async fn reload(rt: &Runtime, seen: &mut Option<(i64, i64)>) {
    let before = *seen;
    let result = rt
        .store
        .read(move |conn| {
            let now = fingerprint(conn)?;
            if Some(now) == before {
                return Ok::<_, crate::store::StoreError>(None);
            }
            Ok(Some((now, record::effective(conn)?)))
        })
        .await;
    match result {
        Ok(None) => {}
        Ok(Some((now, rules))) => {
            let at = rt.clock.now_ms();
            let fresh = rt.watch.load(rules, at);
            *seen = Some(now);
            if fresh.is_empty() {
                return;
            }
            let devices = rt.telemetry.devices.all();
            match rt
                .store
                .read(move |conn| warm_up(conn, &fresh, &devices, at))
                .await
            {
                Ok(restored) => rt.watch.restore(restored),
                Err(e) => {
                    tracing::warn!(error = %e, "could not restore rule states from stored readings")
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not load the rules"),
    }
}

/// Runs the watcher until shutdown.
pub async fn run(rt: Runtime) {
    let mut readings = rt.telemetry.events.subscribe();
    let mut rule_set = None;
    let mut seen_seq = rt.latest_seq.load(std::sync::atomic::Ordering::Relaxed);
    reload(&rt, &mut rule_set).await;
    // A local write moves the sequence before its transaction commits, so a load on the tick that
    // noticed the move may not see the rule yet: every change is looked at on one more tick (the
    // look costs one indexed query when nothing changed). Without it a rule written just before or
    // during a load waited for some unrelated record change to be loaded.
    let mut look_again = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = rt.shutdown.cancelled() => break,
            event = readings.recv() => match event {
                Ok(StreamEvent::Readings(batch)) => {
                    let now = rt.clock.now_ms();
                    let devices = &rt.telemetry.devices;
                    rt.watch.observe(
                        &batch,
                        |device, area| devices.get(device).is_some_and(|d| area.contains(&d.area)),
                        |r| usable(&rt.telemetry, r, now, &rt.config.telemetry),
                    );
                }
                Ok(StreamEvent::Status { .. }) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "the rule watcher fell behind the readings; some were not evaluated");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                let seq = rt.latest_seq.load(std::sync::atomic::Ordering::Relaxed);
                if seq != seen_seq {
                    seen_seq = seq;
                    look_again = true;
                    reload(&rt, &mut rule_set).await;
                } else if look_again {
                    look_again = false;
                    reload(&rt, &mut rule_set).await;
                }
                rt.watch.tick(rt.clock.now_ms());
            }
        }
    }
}
