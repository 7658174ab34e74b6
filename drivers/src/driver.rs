//! The driver contract and its supervisor.
//!
//! A driver talks to devices and hands typed readings to a [`Sink`]; it never touches the database.
//! It runs until the node's shutdown signal, and when it fails (a port unplugged, a broker gone) the
//! supervisor logs and counts the failure and starts it again after a growing, jittered delay, so a
//! device that comes back is picked up without anyone restarting the node.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::reading::Reading;

/// Why a driver stopped. Every variant is worth a retry: the supervisor retries them all, and the
/// message says what an operator should look at.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
    /// The node is shutting down and no longer takes readings.
    #[error("the node is no longer taking readings")]
    SinkClosed,
}

impl DriverError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> DriverError {
        DriverError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The kinds of error counted per device; the metric label is [`ErrorKind::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No answer in time.
    Timeout,
    /// A frame whose checksum did not match.
    Crc,
    /// The device answered with a Modbus exception.
    Exception,
    /// A frame or payload that could not be understood.
    Malformed,
    /// Wrong credentials, a foreign topic, or a foreign station id.
    Refused,
    /// The port or connection failed.
    Io,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Crc => "crc",
            ErrorKind::Exception => "exception",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Refused => "refused",
            ErrorKind::Io => "io",
        }
    }
}

/// How many recent outcomes decide whether a device is faulty.
const RECENT_WINDOW: usize = 20;

/// One device's counters, as drivers see it.
#[derive(Debug, Clone, Default)]
pub struct DeviceHealth {
    pub ok_total: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    pub last_ok_ms: Option<i64>,
    pub last_error: Option<(i64, ErrorKind, String)>,
    /// The last [`RECENT_WINDOW`] outcomes, newest last; `true` is a success.
    recent: std::collections::VecDeque<bool>,
    /// Sign-ins in this device's name that were refused (wrong password). Anyone on the network can
    /// cause these, so they never count against the device's health.
    pub sign_ins_refused: u64,
    pub last_sign_in_refused: Option<(i64, String)>,
}

impl DeviceHealth {
    /// Share of failures among the recent outcomes, and how many outcomes that is based on.
    pub fn recent_error_rate(&self) -> (f64, usize) {
        let n = self.recent.len();
        if n == 0 {
            return (0.0, 0);
        }
        let failures = self.recent.iter().filter(|ok| !**ok).count();
        (failures as f64 / n as f64, n)
    }

    fn push(&mut self, ok: bool) {
        if self.recent.len() == RECENT_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(ok);
    }
}

/// A driver's own state: how often it failed and why, last.
#[derive(Debug, Clone, Default)]
pub struct DriverHealth {
    pub restarts: u64,
    pub failing: bool,
    pub last_failure: Option<(i64, String)>,
}

#[derive(Default)]
struct HealthInner {
    devices: HashMap<String, DeviceHealth>,
    drivers: BTreeMap<String, DriverHealth>,
    listeners: BTreeMap<String, crate::admission::Admission>,
}

/// Per-device and per-driver counters shared between the drivers and the node; cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<HealthInner>>,
}

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut HealthInner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    /// A successful exchange (a poll answered, a frame or message accepted).
    pub fn ok(&self, device: &str, now_ms: i64) {
        self.with(|h| {
            // Called for every message: no allocation once the device has an entry.
            if !h.devices.contains_key(device) {
                h.devices
                    .insert(device.to_string(), DeviceHealth::default());
            }
            if let Some(d) = h.devices.get_mut(device) {
                d.ok_total += 1;
                d.last_ok_ms = Some(now_ms);
                d.push(true);
            }
        });
    }

    pub fn error(&self, device: &str, kind: ErrorKind, message: impl Into<String>, now_ms: i64) {
        let message = message.into();
        tracing::debug!(device = %crate::untrusted::Untrusted(device), kind = kind.label(), message = %crate::untrusted::Untrusted(&message), "device error");
        self.with(|h| {
            let d = h.devices.entry(device.to_string()).or_default();
            *d.errors.entry(kind).or_default() += 1;
            d.last_error = Some((now_ms, kind, message));
            d.push(false);
        });
    }

    /// A sign-in in this device's name was refused. Counted apart from the device's errors: a
    /// stranger guessing its password must not make a working sensor look faulty.
    pub fn sign_in_refused(&self, device: &str, message: impl Into<String>, now_ms: i64) {
        let message = message.into();
        self.with(|h| {
            let d = h.devices.entry(device.to_string()).or_default();
            d.sign_ins_refused += 1;
            d.last_sign_in_refused = Some((now_ms, message));
        });
    }

    pub fn driver_failed(&self, driver: &str, message: String, now_ms: i64) {
        self.with(|h| {
            let d = h.drivers.entry(driver.to_string()).or_default();
            d.restarts += 1;
            d.failing = true;
            d.last_failure = Some((now_ms, message));
        });
    }

    /// Makes a listener's connection slots visible to the node (for metrics).
    pub fn listener(&self, name: &str, admission: &crate::admission::Admission) {
        self.with(|h| h.listeners.insert(name.to_string(), admission.clone()));
    }

    /// Each listener's connection slots now.
    pub fn listeners(&self) -> Vec<(String, crate::admission::AdmissionStats)> {
        self.with(|h| {
            h.listeners
                .iter()
                .map(|(name, a)| (name.clone(), a.stats()))
                .collect()
        })
        .unwrap_or_default()
    }

    pub fn driver_running(&self, driver: &str) {
        self.with(|h| h.drivers.entry(driver.to_string()).or_default().failing = false);
    }

    /// Share of failures among the device's recent outcomes, and how many outcomes that is.
    pub fn recent_error_rate(&self, device: &str) -> (f64, usize) {
        self.with(|h| h.devices.get(device).map(DeviceHealth::recent_error_rate))
            .flatten()
            .unwrap_or((0.0, 0))
    }

    pub fn driver_failing(&self, driver: &str) -> bool {
        self.with(|h| h.drivers.get(driver).is_some_and(|d| d.failing))
            .unwrap_or(false)
    }

    pub fn device(&self, device: &str) -> Option<DeviceHealth> {
        self.with(|h| h.devices.get(device).cloned()).flatten()
    }

    pub fn devices(&self) -> HashMap<String, DeviceHealth> {
        self.with(|h| h.devices.clone()).unwrap_or_default()
    }

    pub fn drivers(&self) -> BTreeMap<String, DriverHealth> {
        self.with(|h| h.drivers.clone()).unwrap_or_default()
    }
}

/// Readings on their way to the node, with an optional promise to say when they are durable.
pub struct Batch {
    pub readings: Vec<Reading>,
    /// Answered `true` once every reading is committed (or was already stored), `false` if the
    /// commit failed. Dropped unanswered when the node stops first.
    pub committed: Option<oneshot::Sender<bool>>,
}

/// Where drivers put readings. Sending waits while the node's queue is full, so a flood slows the
/// sender down instead of growing memory without bound.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Batch>,
}

impl Sink {
    pub fn channel(capacity: usize) -> (Sink, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Sink { tx }, rx)
    }

    /// Hands readings over without waiting for the commit.
    pub async fn send(&self, readings: Vec<Reading>) -> Result<(), DriverError> {
        if readings.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Batch {
                readings,
                committed: None,
            })
            .await
            .map_err(|_| DriverError::SinkClosed)
    }

    /// Hands readings over and returns a receiver answered after the commit, so a protocol can
    /// acknowledge only what is durable while more messages are already on their way.
    pub async fn send_acked(
        &self,
        readings: Vec<Reading>,
    ) -> Result<oneshot::Receiver<bool>, DriverError> {
        let (tx, rx) = oneshot::channel();
        if readings.is_empty() {
            let _ = tx.send(true);
            return Ok(rx);
        }
        self.tx
            .send(Batch {
                readings,
                committed: Some(tx),
            })
            .await
            .map_err(|_| DriverError::SinkClosed)?;
        Ok(rx)
    }
}

/// The node's clock in milliseconds since the Unix epoch (a manual one in tests).
pub type NowMs = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What every driver gets from the node.
#[derive(Clone)]
pub struct DriverContext {
    pub sink: Sink,
    pub health: Health,
    pub shutdown: CancellationToken,
    pub now_ms: NowMs,
}

impl DriverContext {
    pub fn now(&self) -> i64 {
        (self.now_ms)()
    }
}

pub type DriverFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DriverError>> + Send + 'a>>;

/// A driver: [`Driver::run`] works until `ctx.shutdown` is cancelled (then returns `Ok`) or until
/// something fails (then returns the error and the supervisor starts it again).
pub trait Driver: Send {
    /// Names the driver in logs and metrics, e.g. `modbus_rtu:/dev/ttyUSB0`.
    fn name(&self) -> String;
    fn run<'a>(&'a mut self, ctx: &'a DriverContext) -> DriverFuture<'a>;
}

/// Exponential backoff with jitter, so many nodes losing the same broker do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Backoff {
            first,
            max,
            next: first,
            seed,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The next delay: between half and all of the current step, which then doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let delay = self.next.mul_f64(fraction);
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// How long a driver must have run for its next failure to count as a fresh one.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs `driver` until shutdown, restarting it with backoff whenever it fails.
pub async fn supervise(mut driver: Box<dyn Driver>, ctx: DriverContext, first_retry: Duration) {
    let name = driver.name();
    let mut backoff = Backoff::new(first_retry, Duration::from_secs(60));
    loop {
        let started = tokio::time::Instant::now();
        ctx.health.driver_running(&name);
        tracing::info!(driver = %name, "driver started");
        let result = driver.run(&ctx).await;
        if ctx.shutdown.is_cancelled() {
            tracing::info!(driver = %name, "driver stopped");
            return;
        }
        let message = match result {
            Ok(()) => "stopped without being asked to".to_string(),
            Err(DriverError::SinkClosed) => return,
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(driver = %name, error = %message, retry_in_ms = delay.as_millis() as u64, "driver failed; retrying");
        ctx.health.driver_failed(&name, message, ctx.now());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Flaky {
        runs: Arc<AtomicU32>,
    }

    impl Driver for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }
        fn run<'a>(&'a mut self, ctx: &'a DriverContext) -> DriverFuture<'a> {
            Box::pin(async move {
                let n = self.runs.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    return Err(DriverError::Other(format!("failure {n}")));
                }
                ctx.sink
                    .send(vec![Reading {
                        device: "d".into(),
                        metric: "m".into(),
                        time_ms: 1,
                        value: 1.0,
                        unit: None,
                        quality: crate::Quality::Good,
                    }])
                    .await?;
                ctx.shutdown.cancelled().await;
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn supervisor_restarts_until_the_driver_works_then_stops_on_shutdown() {
        let (sink, mut rx) = Sink::channel(8);
        let ctx = DriverContext {
            sink,
            health: Health::default(),
            shutdown: CancellationToken::new(),
            now_ms: Arc::new(|| 0),
        };
        let runs = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(supervise(
            Box::new(Flaky { runs: runs.clone() }),
            ctx.clone(),
            Duration::from_millis(100),
        ));
        let batch = rx.recv().await.expect("a reading after the restarts");
        assert_eq!(batch.readings.len(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        let drivers = ctx.health.drivers();
        assert_eq!(drivers["flaky"].restarts, 3);
        assert!(!drivers["flaky"].failing);
        ctx.shutdown.cancel();
        task.await.expect("supervisor ends");
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays[5] >= Duration::from_secs(4) && delays[5] <= Duration::from_secs(8));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn health_tracks_error_rate_over_recent_outcomes() {
        let h = Health::default();
        for _ in 0..30 {
            h.ok("a", 1);
        }
        for _ in 0..10 {
            h.error("a", ErrorKind::Timeout, "no answer", 2);
        }
        let d = h.device("a").unwrap();
        assert_eq!(d.ok_total, 30);
        assert_eq!(d.errors[&ErrorKind::Timeout], 10);
        assert_eq!(d.recent_error_rate(), (0.5, 20));
    }
}
