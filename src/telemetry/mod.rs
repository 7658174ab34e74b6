//! Sensors and telemetry: the devices the node reads, the drivers that read them, and the append-only
//! stream of readings they produce.
//!
//! Drivers (in `township-drivers`) put readings on one bounded channel. A single writer task takes
//! them in groups (bounded size, bounded delay), checks them against the device's configuration
//! (unknown device, valid range, clock), commits them through the store's writer thread, and only then
//! answers the drivers that asked to know (MQTT QoS 1 acknowledgements), updates the latest values and
//! tells the live stream. Retention prunes in small steps in the background.

pub mod config;
pub mod devices;
pub mod drivers;
pub mod outbox;
mod routes;
pub mod store;
pub mod tree;

pub use routes::routes;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use township_drivers::driver::{Batch, Health, Sink};
use township_drivers::{Quality, Reading};

use crate::clock::Clock;
use crate::store::Store;
use crate::store::StoreError;
use devices::{Device, DeviceDirectory};

/// How many batches may wait for the writer before drivers have to wait.
const QUEUE_BATCHES: usize = 4096;

/// Where a device stands, as the UI colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Reporting within its interval.
    Online,
    /// Nothing within `telemetry.stale_after` intervals.
    Stale,
    /// Its recent exchanges fail too often, or its driver is down.
    Faulty,
    /// Never heard from.
    Unknown,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Stale => "stale",
            Status::Faulty => "faulty",
            Status::Unknown => "unknown",
        }
    }
}

/// The newest value of one metric.
#[derive(Debug, Clone, Serialize)]
pub struct Latest {
    pub t: i64,
    pub value: f64,
    pub unit: Option<String>,
    pub quality: Quality,
}

/// What the live stream carries.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// Readings just committed (only new ones, never duplicates).
    Readings(Arc<Vec<Reading>>),
    Status {
        device: String,
        status: Status,
        last_seen: Option<i64>,
    },
}

#[derive(Default)]
pub struct IngestStats {
    pub committed: AtomicU64,
    pub duplicates: AtomicU64,
    pub unknown_device: AtomicU64,
    pub out_of_range: AtomicU64,
    pub clock_corrected: AtomicU64,
    pub batches: AtomicU64,
    pub commit_failures: AtomicU64,
    pub pruned: AtomicU64,
}

pub struct Telemetry {
    pub devices: Arc<dyn DeviceDirectory>,
    pub health: Health,
    sink: Sink,
    queue: Mutex<Option<mpsc::Receiver<Batch>>>,
    /// Series ids known to be committed; replaced (not edited) when a batch adds series, so a commit
    /// takes a cheap snapshot.
    series: Mutex<Arc<store::SeriesIds>>,
    seen: RwLock<HashMap<String, DeviceSeen>>,
    statuses: Mutex<HashMap<String, Status>>,
    pub events: broadcast::Sender<StreamEvent>,
    pub stats: IngestStats,
}

/// What the node has heard from one device.
#[derive(Debug, Default)]
struct DeviceSeen {
    latest: HashMap<String, Latest>,
    /// When the device last delivered a reading, by the node's clock.
    last_seen: i64,
    /// Readings committed since the node started.
    readings: u64,
}

impl Latest {
    fn of(r: &Reading) -> Latest {
        Latest {
            t: r.time_ms,
            value: r.value,
            unit: r.unit.clone(),
            quality: r.quality,
        }
    }
}

impl Telemetry {
    pub fn new(devices: Arc<dyn DeviceDirectory>) -> Telemetry {
        let (sink, rx) = Sink::channel(QUEUE_BATCHES);
        let (events, _) = broadcast::channel(1024);
        Telemetry {
            devices,
            health: Health::default(),
            sink,
            queue: Mutex::new(Some(rx)),
            series: Mutex::new(Arc::new(store::SeriesIds::default())),
            seen: RwLock::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            events,
            stats: IngestStats::default(),
        }
    }

    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    /// The receiving end of the drivers' queue, for [`run_writer`]; `None` once taken (the writer is
    /// started once).
    pub fn take_queue(&self) -> Option<mpsc::Receiver<Batch>> {
        self.queue.lock().ok().and_then(|mut q| q.take())
    }

    fn seen<T>(&self, device: &str, f: impl FnOnce(&DeviceSeen) -> T) -> Option<T> {
        self.seen.read().ok().and_then(|m| m.get(device).map(f))
    }

    pub fn latest(&self, device: &str) -> HashMap<String, Latest> {
        self.seen(device, |d| d.latest.clone()).unwrap_or_default()
    }

    pub fn last_seen(&self, device: &str) -> Option<i64> {
        self.seen(device, |d| d.last_seen)
    }

    pub fn readings_total(&self, device: &str) -> u64 {
        self.seen(device, |d| d.readings).unwrap_or(0)
    }

    /// The device's status now: faulty beats stale beats online.
    pub fn status(&self, device: &Device, now_ms: i64, cfg: &config::TelemetryConfig) -> Status {
        let driver_down = self.health.driver_failing(&device.driver_name);
        let (rate, samples) = self.health.recent_error_rate(&device.id);
        if driver_down || (samples >= 3 && rate >= cfg.faulty_error_rate) {
            return Status::Faulty;
        }
        let interval = device.interval.unwrap_or(cfg.default_interval);
        match self.last_seen(&device.id) {
            None => Status::Unknown,
            Some(seen) => {
                let stale_ms = (interval.as_millis() as f64 * cfg.stale_after) as i64;
                if now_ms - seen > stale_ms {
                    Status::Stale
                } else {
                    Status::Online
                }
            }
        }
    }

    /// Checks readings against their device: unknown devices are dropped, the unit filled in, the
    /// valid range and the clock applied.
    fn admit(&self, readings: Vec<Reading>, now_ms: i64) -> Vec<Reading> {
        let mut out = Vec::with_capacity(readings.len());
        // A batch holds few devices: look each up once, not once per reading.
        let mut devices: Vec<(String, Option<Device>)> = Vec::new();
        for reading in readings {
            let at = match devices.iter().position(|(id, _)| *id == reading.device) {
                Some(at) => at,
                None => {
                    devices.push((reading.device.clone(), self.devices.get(&reading.device)));
                    devices.len() - 1
                }
            };
            let Some(device) = &devices[at].1 else {
                self.stats.unknown_device.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut reading = township_drivers::payload::clock_checked(reading, now_ms);
            if reading.quality == Quality::ClockCorrected {
                self.stats.clock_corrected.fetch_add(1, Ordering::Relaxed);
            }
            let (min, max) = device
                .point(&reading.metric)
                .map_or((None, None), |p| (p.min, p.max));
            reading = reading.with_range(min, max);
            if !reading.value.is_finite() {
                // SQLite stores NaN as NULL; keep the row, but as a number it can hold.
                reading.value = 0.0;
            }
            if reading.unit.is_none() {
                reading.unit = device.default_unit(&reading.metric);
            }
            if reading.quality == Quality::OutOfRange {
                self.stats.out_of_range.fetch_add(1, Ordering::Relaxed);
            }
            out.push(reading);
        }
        out
    }

    fn after_commit(&self, readings: &[Reading], now_ms: i64) {
        if readings.is_empty() {
            return;
        }
        let Ok(mut seen) = self.seen.write() else {
            return;
        };
        for r in readings {
            // Entries exist after a device's first reading; looking them up before inserting keeps
            // the common case free of allocations.
            if !seen.contains_key(&r.device) {
                seen.insert(r.device.clone(), DeviceSeen::default());
            }
            let Some(d) = seen.get_mut(&r.device) else {
                continue;
            };
            d.last_seen = now_ms;
            d.readings += 1;
            match d.latest.get_mut(&r.metric) {
                Some(l) if l.t <= r.time_ms => *l = Latest::of(r),
                Some(_) => {}
                None => {
                    d.latest.insert(r.metric.clone(), Latest::of(r));
                }
            }
        }
    }
}

/// What the telemetry's background work (the writer, statuses, retention) needs from the node.
#[derive(Clone)]
pub struct Runtime {
    pub telemetry: Arc<Telemetry>,
    pub store: Store,
    pub clock: Clock,
    pub config: Arc<crate::config::Config>,
    /// This node's name, which its stations' descriptions carry up the tree.
    pub node_name: String,
    /// Whether raw readings are queued for an upstream (the node has one and
    /// `sync.raw_readings_window` is not 0).
    pub queue_raw: bool,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Loads series ids and latest values, so a restarted node shows what it had at once.
async fn warm_up(state: &Runtime) -> Result<(), StoreError> {
    let (series, latest) = state
        .store
        .read(|conn| Ok::<_, StoreError>((store::all_series(conn)?, store::latest_readings(conn)?)))
        .await?;
    let t = &state.telemetry;
    if let Ok(mut cache) = t.series.lock() {
        *cache = Arc::new(series);
    }
    if let Ok(mut seen) = t.seen.write() {
        for r in latest {
            let d = seen.entry(r.device.clone()).or_default();
            d.last_seen = d.last_seen.max(r.time_ms);
            d.latest.insert(r.metric.clone(), Latest::of(&r));
        }
    }
    Ok(())
}

/// Commits one group of batches and answers each batch's waiter.
async fn commit_group(state: &Runtime, group: Vec<Batch>) {
    let t = &state.telemetry;
    let now = state.clock.now_ms();
    let mut readings = Vec::new();
    let mut waiters = Vec::new();
    for batch in group {
        readings.extend(batch.readings);
        if let Some(w) = batch.committed {
            waiters.push(w);
        }
    }
    let readings = t.admit(readings, now);
    let known = t.series.lock().map(|c| Arc::clone(&c)).unwrap_or_default();
    let queue_raw = state.queue_raw;
    let result = if readings.is_empty() {
        Ok((readings, store::Inserted::default()))
    } else {
        state
            .store
            .write(move |conn| {
                let inserted = store::insert_batch(conn, &readings, &known, queue_raw)?;
                Ok::<_, StoreError>((readings, inserted))
            })
            .await
    };
    match result {
        Ok((readings, inserted)) => {
            t.stats.batches.fetch_add(1, Ordering::Relaxed);
            t.stats
                .committed
                .fetch_add(inserted.new.len() as u64, Ordering::Relaxed);
            t.stats.duplicates.fetch_add(
                (readings.len() - inserted.new.len()) as u64,
                Ordering::Relaxed,
            );
            if !inserted.new_series.is_empty()
                && let Ok(mut cache) = t.series.lock()
            {
                let mut next = (**cache).clone();
                for (key, id) in inserted.new_series {
                    next.insert(key, id);
                }
                *cache = Arc::new(next);
            }
            for w in waiters {
                let _ = w.send(true);
            }
            let fresh: Vec<Reading> = if inserted.new.len() == readings.len() {
                readings
            } else {
                let mut keep = inserted.new.into_iter().peekable();
                readings
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| keep.next_if_eq(i).is_some())
                    .map(|(_, r)| r)
                    .collect()
            };
            t.after_commit(&fresh, now);
            if !fresh.is_empty() {
                let _ = t.events.send(StreamEvent::Readings(Arc::new(fresh)));
            }
        }
        Err(e) => {
            t.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "could not commit readings; their senders were told");
            for w in waiters {
                let _ = w.send(false);
            }
        }
    }
}

/// The writer: takes everything queued (up to `telemetry.batch_max` readings), waits at most
/// `telemetry.batch_delay` for more, and commits; readings arriving during a commit share the next
/// one. On shutdown it commits whatever is queued before it returns.
pub async fn run_writer(state: Runtime, mut rx: mpsc::Receiver<Batch>) {
    if let Err(e) = warm_up(&state).await {
        tracing::warn!(error = %e, "could not load the latest readings");
    }
    let max = state.config.telemetry.batch_max;
    let delay = state.config.telemetry.batch_delay;
    loop {
        let first = tokio::select! {
            b = rx.recv() => match b { Some(b) => b, None => return },
            () = state.shutdown.cancelled() => break,
        };
        let mut count = first.readings.len();
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + delay;
        while count < max {
            match rx.try_recv() {
                Ok(b) => {
                    count += b.readings.len();
                    group.push(b);
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(b)) => {
                            count += b.readings.len();
                            group.push(b);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        commit_group(&state, group).await;
    }
    // Shutting down: drivers are stopping; commit what they already handed over.
    rx.close();
    let mut group = Vec::new();
    while let Some(b) = rx.recv().await {
        group.push(b);
        if group.len() >= 256 {
            commit_group(&state, std::mem::take(&mut group)).await;
        }
    }
    if !group.is_empty() {
        commit_group(&state, group).await;
    }
}

/// Records what the upstream should know of every device (see [`outbox::StationDoc`]): names,
/// area, driver, points and the status now. Only descriptions that changed take a new number.
pub async fn describe_stations(state: &Runtime) -> Result<usize, StoreError> {
    let t = &state.telemetry;
    let now = state.clock.now_ms();
    let cfg = &state.config.telemetry;
    let docs: Vec<outbox::StationDoc> = t
        .devices
        .all()
        .iter()
        .map(|d| {
            let metrics = d.metrics(t.latest(&d.id).keys());
            outbox::StationDoc {
                device: d.id.clone(),
                name: d.name.clone(),
                area: d.area.to_string(),
                driver: d.kind.label().to_string(),
                interval_s: d.interval.unwrap_or(cfg.default_interval).as_secs_f64(),
                status: t.status(d, now, cfg).label().to_string(),
                node_name: state.node_name.clone(),
                points: metrics
                    .iter()
                    .map(|m| {
                        let p = d.point(m);
                        outbox::PointDoc {
                            metric: m.clone(),
                            name: d.display_name(m),
                            unit: d.default_unit(m),
                            min: p.and_then(|p| p.min),
                            max: p.and_then(|p| p.max),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    if docs.is_empty() {
        return Ok(0);
    }
    state
        .store
        .write(move |conn| outbox::describe(conn, &docs))
        .await
}

/// Publishes status changes to the live stream and keeps the status gauge current; says whether
/// any status changed (every device's does at the first call).
pub fn refresh_statuses(state: &Runtime) -> bool {
    let t = &state.telemetry;
    let now = state.clock.now_ms();
    let mut changed = Vec::new();
    if let Ok(mut statuses) = t.statuses.lock() {
        for device in t.devices.all() {
            let status = t.status(&device, now, &state.config.telemetry);
            if statuses.insert(device.id.clone(), status) != Some(status) {
                changed.push((device.id.clone(), status));
            }
        }
    }
    let any = !changed.is_empty();
    for (device, status) in changed {
        let last_seen = t.last_seen(&device);
        tracing::info!(device = %device, status = status.label(), "device status");
        let _ = t.events.send(StreamEvent::Status {
            device,
            status,
            last_seen,
        });
    }
    any
}

/// One pass of retention: raw readings past their period or over the disk budget, then aggregates
/// past theirs, each in steps of at most `step_rows` with the writer free in between.
pub async fn prune(state: &Runtime, step_rows: usize) -> Result<u64, StoreError> {
    let cfg = &state.config.telemetry;
    let now = state.clock.now_ms();
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let mut total = 0u64;
    for (table, keep) in [
        (store::PruneTable::Raw, cfg.raw_retention),
        (store::PruneTable::Minute, cfg.minute_retention),
        (store::PruneTable::Hour, cfg.hour_retention),
        (store::PruneTable::TreeRaw, cfg.raw_retention),
        (store::PruneTable::TreeMinute, cfg.minute_retention),
    ] {
        let cutoff = now.saturating_sub(ms(keep));
        loop {
            let n = state
                .store
                .write(move |conn| store::prune_step(conn, table, cutoff, step_rows))
                .await?;
            total += n as u64;
            if n < step_rows || state.shutdown.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    // Raw readings queued for an upstream that has been away longer than the window.
    let window = state.config.sync.raw_readings_window;
    let cutoff = now.saturating_sub(ms(window));
    loop {
        let n = state
            .store
            .write(move |conn| store::prune_raw_outbox(conn, cutoff, step_rows))
            .await?;
        total += n as u64;
        if n < step_rows || state.shutdown.is_cancelled() {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Over budget: the oldest raw hour goes first, until under budget. Aggregates are small and stay.
    let budget = cfg.disk_budget_mb.saturating_mul(1024 * 1024);
    for _ in 0..10_000 {
        let (used, oldest) = state
            .store
            .read(|conn| Ok::<_, StoreError>((store::used_bytes(conn)?, store::oldest_raw(conn)?)))
            .await?;
        let Some(oldest) = oldest else { break };
        if used <= budget || state.shutdown.is_cancelled() {
            break;
        }
        let cutoff = oldest + 3_600_000;
        let n = state
            .store
            .write(move |conn| store::prune_step(conn, store::PruneTable::Raw, cutoff, step_rows))
            .await?;
        total += n as u64;
        if n == 0 {
            break;
        }
        tracing::warn!(
            used_bytes = used,
            budget_bytes = budget,
            deleted = n,
            "over the disk budget; pruned the oldest raw readings"
        );
    }
    state
        .telemetry
        .stats
        .pruned
        .fetch_add(total, Ordering::Relaxed);
    Ok(total)
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Telemetry {
    /// Prometheus text for the telemetry: ingest counters, then per device and per driver.
    pub fn render_metrics(&self, now_ms: i64, cfg: &config::TelemetryConfig) -> String {
        let mut out = String::new();
        let s = &self.stats;
        for (name, help, value) in [
            (
                "township_telemetry_readings_committed_total",
                "Readings committed (new ones only).",
                &s.committed,
            ),
            (
                "township_telemetry_readings_duplicate_total",
                "Readings dropped as already stored.",
                &s.duplicates,
            ),
            (
                "township_telemetry_readings_unknown_device_total",
                "Readings from devices not configured.",
                &s.unknown_device,
            ),
            (
                "township_telemetry_readings_out_of_range_total",
                "Readings outside their valid range (kept, flagged).",
                &s.out_of_range,
            ),
            (
                "township_telemetry_readings_clock_corrected_total",
                "Readings whose device time was far in the future.",
                &s.clock_corrected,
            ),
            (
                "township_telemetry_commits_total",
                "Telemetry write transactions.",
                &s.batches,
            ),
            (
                "township_telemetry_commit_failures_total",
                "Telemetry write transactions that failed.",
                &s.commit_failures,
            ),
            (
                "township_telemetry_pruned_total",
                "Telemetry rows removed by retention.",
                &s.pruned,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let health = self.health.devices();
        let devices = self.devices.all();
        let listeners = self.health.listeners();
        for (name, help, kind, value) in [
            (
                "township_listener_pending",
                "Connections to a sensor listener that have not signed in yet.",
                "gauge",
                (|s: &township_drivers::admission::AdmissionStats| s.pending as u64)
                    as fn(&township_drivers::admission::AdmissionStats) -> u64,
            ),
            (
                "township_listener_connections",
                "Signed-in device connections on a sensor listener.",
                "gauge",
                |s| s.authenticated as u64,
            ),
            (
                "township_listener_evicted_total",
                "Connections that had not signed in, pushed out to make room for newer ones.",
                "counter",
                |s| s.evicted,
            ),
            (
                "township_listener_refused_total",
                "Signed-in connections refused for lack of room (per device or in total).",
                "counter",
                |s| s.refused,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (listener, stats) in &listeners {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\"}} {}",
                    label(listener),
                    value(stats)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP township_sensor_readings_total Readings committed per device.\n# TYPE township_sensor_readings_total counter"
        );
        for d in &devices {
            let _ = writeln!(
                out,
                "township_sensor_readings_total{{device=\"{}\",driver=\"{}\"}} {}",
                label(&d.id),
                d.kind.label(),
                self.readings_total(&d.id)
            );
        }
        let _ = writeln!(
            out,
            "# HELP township_sensor_errors_total Device errors by kind.\n# TYPE township_sensor_errors_total counter"
        );
        for d in &devices {
            if let Some(h) = health.get(&d.id) {
                for (kind, n) in &h.errors {
                    let _ = writeln!(
                        out,
                        "township_sensor_errors_total{{device=\"{}\",driver=\"{}\",kind=\"{}\"}} {n}",
                        label(&d.id),
                        d.kind.label(),
                        kind.label()
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP township_sensor_sign_ins_refused_total Sign-ins in a device's name refused (wrong password); not counted as device errors.\n# TYPE township_sensor_sign_ins_refused_total counter"
        );
        for d in &devices {
            if let Some(h) = health.get(&d.id)
                && h.sign_ins_refused > 0
            {
                let _ = writeln!(
                    out,
                    "township_sensor_sign_ins_refused_total{{device=\"{}\",driver=\"{}\"}} {}",
                    label(&d.id),
                    d.kind.label(),
                    h.sign_ins_refused
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP township_link_errors_total Errors not attributable to a configured device (line noise, unknown stations).\n# TYPE township_link_errors_total counter"
        );
        for (name, h) in &health {
            if self.devices.get(name).is_none() {
                for (kind, n) in &h.errors {
                    let _ = writeln!(
                        out,
                        "township_link_errors_total{{link=\"{}\",kind=\"{}\"}} {n}",
                        label(name),
                        kind.label()
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP township_sensor_last_seen_timestamp_seconds When the device last delivered a reading.\n# TYPE township_sensor_last_seen_timestamp_seconds gauge"
        );
        for d in &devices {
            if let Some(seen) = self.last_seen(&d.id) {
                let _ = writeln!(
                    out,
                    "township_sensor_last_seen_timestamp_seconds{{device=\"{}\"}} {:.3}",
                    label(&d.id),
                    seen as f64 / 1000.0
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP township_sensor_status The device's status (1 for the current one).\n# TYPE township_sensor_status gauge"
        );
        for d in &devices {
            let status = self.status(d, now_ms, cfg);
            let _ = writeln!(
                out,
                "township_sensor_status{{device=\"{}\",status=\"{}\"}} 1",
                label(&d.id),
                status.label()
            );
        }
        let _ = writeln!(
            out,
            "# HELP township_driver_restarts_total Times a driver failed and was restarted.\n# TYPE township_driver_restarts_total counter"
        );
        let drivers = self.health.drivers();
        for (name, d) in &drivers {
            let _ = writeln!(
                out,
                "township_driver_restarts_total{{driver=\"{}\"}} {}",
                label(name),
                d.restarts
            );
        }
        let _ = writeln!(
            out,
            "# HELP township_driver_up Whether the driver is running (0 while it waits to retry).\n# TYPE township_driver_up gauge"
        );
        for (name, d) in &drivers {
            let _ = writeln!(
                out,
                "township_driver_up{{driver=\"{}\"}} {}",
                label(name),
                u8::from(!d.failing)
            );
        }
        out
    }
}
