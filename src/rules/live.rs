//! Rules evaluated live: every committed reading reaches the watcher through the telemetry event
//! stream (no polling of the readings), a timer completes `for` periods and stale alarms, and rule
//! records are reloaded when records change. Runs on its own task, off the telemetry writer.
//! State changes go out on an in-process channel ([`RuleEvent`]) that warnings subscribe to.
//!
//! States live in memory: after a restart every rule starts at `none` and readings bring it back.

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
    /// Which rules watch each metric, so a reading costs the rules that could care about it, not all.
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
    pub fn load(&self, rules: Vec<(Uuid, Rule)>, now_ms: i64) {
        let mut current = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        let mut by_metric: HashMap<String, Vec<Uuid>> = HashMap::new();
        for (id, rule) in rules {
            if !rule.body.enabled {
                continue;
            }
            by_metric
                .entry(rule.body.metric.clone())
                .or_default()
                .push(id);
            let kept = current.by_id.remove(&id).filter(|w| w.rule == rule);
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
            by_metric,
        };
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
            let Rules { by_id, by_metric } = &mut *guard;
            for reading in readings {
                let Some(ids) = by_metric.get(&reading.metric) else {
                    continue;
                };
                // Once per reading, not per rule: it asks the device's health.
                let fit = usable(reading);
                for id in ids {
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
                    let (evaluator, since) = watched
                        .devices
                        .entry(reading.device.clone())
                        .or_insert_with(|| {
                            (Evaluator::new(rule.spec.clone(), reading.time_ms), None)
                        });
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
            rt.watch.load(rules, rt.clock.now_ms());
            *seen = Some(now);
        }
        Err(e) => tracing::warn!(error = %e, "could not load the rules"),
    }
}

/// Runs the watcher until shutdown.
pub async fn run(rt: Runtime) {
    let mut readings = rt.telemetry.events.subscribe();
    let mut rule_set = None;
    reload(&rt, &mut rule_set).await;
    let mut seen_seq = rt.latest_seq.load(std::sync::atomic::Ordering::Relaxed);
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
                    reload(&rt, &mut rule_set).await;
                }
                rt.watch.tick(rt.clock.now_ms());
            }
        }
    }
}
