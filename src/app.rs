//! Wires the subsystems together and owns start-up and shutdown.
//!
//! Shutdown follows mini-redis: one [`CancellationToken`] is fanned out to every task, the server
//! stops accepting and lets in-flight requests finish, background tasks are awaited through one
//! [`TaskTracker`], and only then is the store closed, so no acknowledged write is cut off.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use rusqlite::{Connection, OptionalExtension};
use township_sync::{DocStore, Hlc, NodeKey};

use crate::auth::password::Hasher;
use crate::auth::throttle::{Throttle, ThrottleConfig};
use crate::clock::Clock;
use crate::config::Config;
use crate::incidents::deadlines::{self, CheckReport};
use crate::metrics::Metrics;
use crate::node::{self, DataDir, DataDirLock, NodeError, NodeInfo};
use crate::records::WriteCtx;
use crate::store::{Store, StoreError};
use crate::users;

/// Everything a handler or background task may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

pub struct AppInner {
    pub node: NodeInfo,
    pub key: Arc<NodeKey>,
    /// Shared, never copied: handlers and tasks clone the `Arc`, not the device list inside.
    pub config: Arc<Config>,
    pub store: Store,
    /// The record store, with every domain's projection registered.
    pub docs: DocStore,
    pub blobs: crate::blobs::BlobStore,
    pub hlc: Hlc,
    /// The highest record sequence number issued (see [`WriteCtx::saw`]).
    pub latest_seq: Arc<std::sync::atomic::AtomicI64>,
    /// Woken when `latest_seq` moves (see [`WriteCtx::saw`]).
    pub records_changed: Arc<tokio::sync::Notify>,
    /// The kind and scope of the latest record changes (see [`crate::records::RecentChanges`]).
    pub recent: Arc<crate::records::RecentChanges>,
    pub throttle: Throttle,
    /// Signs the device cookies that let a browser that signed in before past the account-wide
    /// sign-in limit (see [`crate::auth::throttle`]). Derived from the node key, never stored.
    pub device_key: ring::hmac::Key,
    /// Failed sign-ins, counted per client address for the audit log (see [`crate::audit::Tally`]).
    pub sign_in_failures: crate::audit::Tally,
    /// Password hashing, off the async workers and at most two at once.
    pub hasher: Hasher,
    pub metrics: Metrics,
    pub ui: crate::http::ui::Ui,
    pub clock: Clock,
    /// Cancelled once, when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Every background task is spawned on this, so shutdown can wait for all of them.
    pub tasks: TaskTracker,
    pub sync: Arc<crate::sync::SyncStatus>,
    /// The upstream's URL and pinned key, if this node has one.
    pub upstream: Option<(String, township_sync::PublicKey)>,
    /// Devices, drivers and the readings stream.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Rules evaluated on live readings, and the channel their state changes go out on.
    pub rules: Arc<crate::rules::live::Watch>,
    /// Warning changes made here, for the parts of the node that act on them (the PA to come).
    pub warnings: Arc<crate::warnings::Notices>,
    /// Signs the CAP messages of this node's warnings.
    pub cap_key: Arc<crate::cap::CapKey>,
    /// The loudspeaker outputs and zones, with their health.
    pub pa_outputs: Arc<crate::pa::outputs::Outputs>,
    /// What the drivers must serve for the loudspeakers, taken once when the drivers start.
    pub pa_wiring: std::sync::Mutex<Option<crate::telemetry::drivers::PaWiring>>,
    /// Speech synthesis with its cache.
    pub speech: Arc<crate::pa::speech::Speech>,
    /// Spoken WAVs by content hash, for speakers to fetch.
    pub broadcast_spoken:
        Arc<std::sync::Mutex<std::collections::HashMap<String, std::path::PathBuf>>>,
    /// The PA's counters for `/metrics`.
    pub pa_counters: Arc<crate::broadcast::engine::Counters>,
    /// The CAP messages and feed as last served (see [`crate::cap::Served`]).
    pub cap_served: Arc<crate::cap::Served>,
    /// How each `[[cap.feeds]]` entry has fared.
    pub cap_feeds: Arc<crate::cap::feeds::Feeds>,
    /// The data directory (the database, blobs, keys and certificates live under it).
    pub data_dir: std::path::PathBuf,
    /// HTTPS on the LAN, once [`open`] has loaded the certificates (never for one-off commands).
    pub tls: std::sync::OnceLock<Arc<crate::tls::LanTls>>,
    /// The emergency-broadcast platform link, once [`open`] has loaded its keys (`[ebd] ebrid`).
    pub ebd: std::sync::OnceLock<crate::ebd::Runtime>,
    /// Where the link's follow-up requests wait for its reporter, taken when it starts.
    pub ebd_follow_ups:
        std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::ebd::report::FollowUp>>>,
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

/// Every kind's projection, registered with the record store at start.
fn projections(
    config: &Config,
    key: &Arc<NodeKey>,
    clock: &Clock,
) -> Vec<Arc<dyn township_sync::Projection>> {
    vec![
        users::UserProjection::shared(key.clone(), clock.clone()),
        crate::incidents::IncidentProjection::shared(config.categories.clone()),
        crate::rules::RuleProjection::shared(key.clone(), clock.clone()),
        crate::areas::AreaProjection::shared(key.clone(), clock.clone()),
        crate::warnings::WarningProjection::shared(),
        crate::broadcast::BroadcastProjection::shared(),
        crate::broadcast::receipts::ReceiptProjection::shared(),
    ]
}

/// A secret only this node can compute, for one purpose: an HMAC-SHA256 key from the node key's
/// (deterministic) Ed25519 signature over the purpose.
fn derived_key(key: &NodeKey, purpose: &str) -> ring::hmac::Key {
    let signature = key.sign(format!("township-node derived key v1\0{purpose}").as_bytes());
    let secret = ring::digest::digest(&ring::digest::SHA256, &signature);
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref())
}

/// The node's keys: its Ed25519 identity and its CAP signing key.
pub struct NodeKeys {
    pub node: NodeKey,
    pub cap: crate::cap::CapKey,
}

impl AppState {
    pub fn new(
        node: NodeInfo,
        keys: NodeKeys,
        db_salt: &[u8],
        config: Config,
        store: Store,
        clock: Clock,
        upstream: Option<(String, township_sync::PublicKey)>,
    ) -> AppState {
        let NodeKeys {
            node: key,
            cap: cap_key,
        } = keys;
        let key = Arc::new(key);
        let actor = township_sync::docstore::derive_actor(&key.public_key(), db_salt);
        let doc_clock = clock.clone();
        let docs = DocStore::new(actor, projections(&config, &key, &clock), move || {
            doc_clock.now_ms()
        });
        let device_key = derived_key(&key, "device cookie");
        let blobs = crate::blobs::BlobStore::new(
            store.path().parent().unwrap_or(std::path::Path::new(".")),
        );
        let hlc_clock = clock.clone();
        let hlc = Hlc::new(move || u64::try_from(hlc_clock.now_ms()).unwrap_or(0));
        let auth = &config.auth;
        let throttle = Throttle::new(ThrottleConfig {
            failures_per_client: auth.login_failures_per_account,
            failures_per_address: auth.login_failures_per_address,
            window_ms: auth.login_window.as_millis() as i64,
            evaluations_per_hour: auth.login_evaluations_per_hour,
        });
        let telemetry = Arc::new(crate::telemetry::Telemetry::new(Arc::new(
            crate::telemetry::devices::ConfiguredDevices::new(
                &config.devices,
                &config.hj212.factors,
                &config.mqtt,
            ),
        )));
        let hasher = Hasher::new(config.auth.password_iterations, 2);
        let (pa_outputs, pa_wiring) = crate::pa::outputs::Outputs::wire(&config.pa);
        let data_dir = store
            .path()
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        let speech = crate::pa::speech::Speech::new(
            &data_dir.join("speech"),
            &config.pa.voice,
            config.pa.rate,
        );
        AppState {
            inner: Arc::new(AppInner {
                node,
                key,
                config: Arc::new(config),
                store,
                docs,
                blobs,
                hlc,
                latest_seq: Arc::new(std::sync::atomic::AtomicI64::new(0)),
                records_changed: Arc::default(),
                recent: Arc::default(),
                throttle,
                device_key,
                sign_in_failures: crate::audit::Tally::new("auth.login_failed", "session"),
                hasher,
                metrics: Metrics::new(),
                ui: crate::http::ui::Ui::load(),
                clock,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                sync: Arc::default(),
                upstream,
                telemetry,
                rules: Arc::default(),
                warnings: Arc::default(),
                cap_key: Arc::new(cap_key),
                cap_served: Arc::default(),
                cap_feeds: Arc::default(),
                pa_outputs: Arc::new(pa_outputs),
                pa_wiring: std::sync::Mutex::new(Some(pa_wiring)),
                speech: Arc::new(speech),
                broadcast_spoken: Arc::default(),
                pa_counters: Arc::default(),
                data_dir,
                tls: std::sync::OnceLock::new(),
                ebd: std::sync::OnceLock::new(),
                ebd_follow_ups: std::sync::Mutex::new(None),
            }),
        }
    }
}

impl AppState {
    /// The upstream's URL and pinned key, if this node has one.
    pub fn upstream(&self) -> Option<(String, township_sync::PublicKey)> {
        self.upstream.clone()
    }

    /// The context a write job needs to change records and append to the audit chain.
    pub fn write_ctx(&self) -> WriteCtx {
        WriteCtx {
            docs: self.docs.clone(),
            area: self.node.area.clone(),
            key: self.key.clone(),
            clock: self.clock.clone(),
            hlc: self.hlc.clone(),
            latest_seq: self.latest_seq.clone(),
            records_changed: self.records_changed.clone(),
            recent: self.recent.clone(),
            has_upstream: self.upstream.is_some(),
        }
    }

    /// Queues a write nobody waits for (bookkeeping such as a session's last-seen time). Failures
    /// are logged; the store refuses new work once shutdown has begun, which is fine for these.
    pub fn spawn_write<F>(&self, job: F)
    where
        F: FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        self.tasks.spawn(async move {
            if let Err(e) = store.write(job).await {
                tracing::debug!(error = %e, "background bookkeeping write failed");
            }
        });
    }

    /// The LAN HTTPS state, when the node serves HTTPS.
    pub fn lan_tls(&self) -> Option<&crate::tls::LanTls> {
        self.tls.get().map(|t| t.as_ref())
    }
}

impl AppState {
    /// Runs `work` every `period` (the first run at once) until shutdown, on the task tracker; a run
    /// that overruns its period delays the next rather than bunching them up.
    pub fn spawn_every<F, Fut>(&self, period: Duration, work: F)
    where
        F: Fn(AppState) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let state = self.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = state.shutdown.cancelled() => break,
                }
                work(state.clone()).await;
            }
        });
    }

    /// What sync sessions and the upstream link run with.
    pub fn sync_runtime(&self) -> crate::sync::Runtime {
        crate::sync::Runtime {
            node: self.node.clone(),
            key: self.key.clone(),
            config: self.config.clone(),
            store: self.store.clone(),
            docs: self.docs.clone(),
            blobs: self.blobs.clone(),
            clock: self.clock.clone(),
            status: self.sync.clone(),
            upstream: self.upstream.clone(),
            write_ctx: self.write_ctx(),
            latest_seq: self.latest_seq.clone(),
            shutdown: self.shutdown.clone(),
            tasks: self.tasks.clone(),
        }
    }

    /// What the playback engine runs with. Orders play here when signed by this node, by its pinned
    /// upstream or by a key in `[pa] trusted_keys`.
    pub fn broadcast_runtime(&self) -> crate::broadcast::engine::Runtime {
        let mut known_keys = vec![self.key.public_key()];
        if let Some((_, key)) = &self.upstream {
            known_keys.push(*key);
        }
        known_keys.extend(
            self.config
                .pa
                .trusted_keys
                .iter()
                .filter_map(|k| k.parse::<township_sync::PublicKey>().ok()),
        );
        crate::broadcast::engine::Runtime {
            store: self.store.clone(),
            ctx: self.write_ctx(),
            pa: Arc::new(self.config.pa.clone()),
            outputs: self.pa_outputs.clone(),
            speech: self.speech.clone(),
            blobs: self.blobs.clone(),
            known_keys: Arc::new(known_keys),
            counters: self.pa_counters.clone(),
            latest_seq: self.latest_seq.clone(),
            records_changed: self.records_changed.clone(),
            shutdown: self.shutdown.clone(),
            spoken: self.broadcast_spoken.clone(),
        }
    }

    /// What the telemetry's background work runs with.
    pub fn telemetry_runtime(&self) -> crate::telemetry::Runtime {
        crate::telemetry::Runtime {
            telemetry: self.telemetry.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            node_name: self.node.name.clone(),
            queue_raw: self.upstream.is_some() && !self.config.sync.raw_readings_window.is_zero(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// One deadline check (see [`crate::incidents::deadlines::check`]), with its gauges updated.
    pub async fn check_deadlines(&self) -> Result<CheckReport, StoreError> {
        let report =
            deadlines::check(&self.store, self.write_ctx(), &self.config.categories).await?;
        self.metrics
            .set_gauge("township_incidents_overdue", report.overdue as f64);
        self.metrics
            .set_gauge("township_incidents_near_deadline", report.near as f64);
        if !report.escalated.is_empty() {
            tracing::info!(
                count = report.escalated.len(),
                "overdue incidents escalated automatically"
            );
        }
        Ok(report)
    }
}

/// Starts the node's background work, all of it here so one screen shows everything the node does
/// on its own: audit checkpoints and summaries, the upstream sync link, orphaned attachment
/// collection, deadlines, the telemetry writer, statuses, retention and drivers, and housekeeping.
/// All of it stops on the shutdown signal and is awaited through the task tracker.
pub fn spawn_background(state: &AppState) {
    // The LAN certificate is renewed well before it expires and when the hub gets a new address;
    // the listener takes the new one without a restart.
    if state.lan_tls().is_some() {
        state.spawn_every(Duration::from_secs(3600), |state| async move {
            let Some(lan) = state.tls.get().cloned() else {
                return;
            };
            let now = state.clock.now_ms();
            match tokio::task::spawn_blocking(move || {
                lan.renew(crate::tls::Renew::IfNeeded, now)
                    .map(|r| (r, lan.certs()))
            })
            .await
            {
                Ok(Ok((Some(reason), certs))) => audit_tls_issue(&state, &certs, reason).await,
                Ok(Ok((None, _))) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "LAN certificate renewal failed"),
                Err(e) => tracing::warn!(error = %e, "LAN certificate renewal panicked"),
            }
        });
    }
    state.spawn_every(Duration::from_secs(30), |state| async move {
        let (key, now) = (state.key.clone(), state.clock.now_ms());
        match state
            .store
            .write(move |conn| crate::audit::checkpoint_if_due(conn, &key, now))
            .await
        {
            Ok(Some(seq)) => tracing::debug!(seq, "audit checkpoint signed"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
        }
    });
    state.spawn_every(Duration::from_secs(60), |state| async move {
        let tallies = [&state.sync.refusals, &state.sign_in_failures];
        let closed = crate::audit::tally::take_closed(&tallies, state.clock.now_ms());
        if closed.is_empty() {
            return;
        }
        let ctx = state.write_ctx();
        if let Err(e) = state
            .store
            .write(move |conn| crate::audit::tally::audit_summaries(conn, &ctx, &closed))
            .await
        {
            tracing::warn!(error = %e, "could not audit event summaries");
        }
    });
    crate::sync::spawn_upstream(&state.sync_runtime());
    // The links below, for the upstream's overview of the whole tree: looked at every few seconds,
    // sent only when a report changed (times are rounded to the minute).
    state.spawn_every(Duration::from_secs(5), |state| async move {
        if let Err(e) = crate::sync::links::report(&state.sync_runtime()).await {
            tracing::warn!(error = %e, "could not report the links below");
        }
    });
    start_rules(state);
    state.spawn_every(Duration::from_secs(3600), |state| async move {
        let referenced = match state
            .store
            .read(|conn| {
                let mut all = crate::incidents::referenced_blobs(conn)?;
                all.extend(crate::broadcast::referenced_blobs(conn)?);
                all.extend(crate::ebd::referenced_blobs(conn)?);
                Ok::<_, StoreError>(all)
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "orphaned attachment check failed");
                return;
            }
        };
        let grace = state.config.incidents.orphan_blob_grace;
        if let Err(e) = crate::blobs::collect_orphans(
            &state.store,
            &state.blobs,
            state.write_ctx(),
            referenced,
            grace,
        )
        .await
        {
            tracing::warn!(error = %e, "removing orphaned attachments failed");
        }
    });
    state.spawn_every(Duration::from_secs(60), |state| async move {
        if let Err(e) = state.check_deadlines().await {
            tracing::warn!(error = %e, "deadline check failed");
        }
    });
    state.spawn_every(Duration::from_secs(3600), |state| async move {
        let now = state.clock.now_ms();
        if let Err(e) = state
            .store
            .write(move |conn| crate::http::idempotency::purge(conn, now))
            .await
        {
            tracing::warn!(error = %e, "dropping old idempotent answers failed");
        }
        let data_dir = state.data_dir.clone();
        match state
            .store
            .write(move |conn| crate::uploads::purge(conn, &data_dir, now))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "dropped uploads without progress for a day"),
            Err(e) => tracing::warn!(error = %e, "dropping stale uploads failed"),
        }
    });
    start_telemetry(state);
    start_cap_feeds(state);
    start_broadcasts(state);
    state.spawn_every(Duration::from_secs(60), |state| async move {
        let now = state.clock.now_ms();
        let idle = state.config.auth.session_idle.as_millis() as i64;
        let max = state.config.auth.session_max.as_millis() as i64;
        if let Err(e) = state
            .store
            .write(move |conn| crate::auth::session::purge_expired(conn, now, idle, max))
            .await
        {
            tracing::warn!(error = %e, "expired-session cleanup failed");
        }
        // Keeps the query planner's statistics current as tables grow (cheap when nothing changed).
        if let Err(e) = state
            .store
            .write(|conn| Ok::<_, StoreError>(conn.execute_batch("PRAGMA optimize")?))
            .await
        {
            tracing::debug!(error = %e, "PRAGMA optimize failed");
        }
        // Compaction in small batches so it never holds the writer for long.
        let docs = state.docs.clone();
        match state
            .store
            .write(move |conn| docs.compact_some(conn, 8, 50).map_err(StoreError::from))
            .await
        {
            Ok(n) if n > 0 => tracing::debug!(documents = n, "compacted record documents"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "document compaction failed"),
        }
    });
}

/// Starts one poller per `[[cap.feeds]]` entry.
pub fn start_cap_feeds(state: &AppState) {
    use crate::cap::feeds;
    feeds::init_status(&state.cap_feeds, &state.config.cap.feeds);
    let runtime = feeds::Runtime {
        store: state.store.clone(),
        write_ctx: state.write_ctx(),
        status: state.cap_feeds.clone(),
        shutdown: state.shutdown.clone(),
    };
    for (index, feed) in state.config.cap.feeds.iter().enumerate() {
        state
            .tasks
            .spawn(feeds::run(runtime.clone(), index, feed.clone()));
    }
}

/// Starts the rule watcher (rules evaluated on every committed reading and on a timer), the
/// warnings it drives, and the warning events every part of the node hears.
pub fn start_rules(state: &AppState) {
    state.tasks.spawn(crate::warnings::automation::run(
        crate::warnings::automation::Runtime {
            store: state.store.clone(),
            write_ctx: state.write_ctx(),
            watch: state.rules.clone(),
            shutdown: state.shutdown.clone(),
        },
    ));
    state.tasks.spawn(crate::warnings::events::run(
        crate::warnings::events::Runtime {
            store: state.store.clone(),
            docs: state.docs.clone(),
            notices: state.warnings.clone(),
            latest_seq: state.latest_seq.clone(),
            records_changed: state.records_changed.clone(),
            shutdown: state.shutdown.clone(),
        },
    ));
    state
        .tasks
        .spawn(crate::rules::live::run(crate::rules::live::Runtime {
            watch: state.rules.clone(),
            telemetry: state.telemetry.clone(),
            store: state.store.clone(),
            clock: state.clock.clone(),
            config: state.config.clone(),
            latest_seq: state.latest_seq.clone(),
            shutdown: state.shutdown.clone(),
        }));
}

/// The telemetry's share of the background work: the writer (once), device statuses every second,
/// retention every five minutes, and every configured driver under the supervisor.
pub fn start_telemetry(state: &AppState) {
    let Some(queue) = state.telemetry.take_queue() else {
        tracing::error!("telemetry was already started");
        return;
    };
    let runtime = state.telemetry_runtime();
    state
        .tasks
        .spawn(crate::telemetry::run_writer(runtime.clone(), queue));
    let statuses = runtime.clone();
    // A status change is also news for the upstream: the stations' descriptions carry it.
    // Once a minute regardless, for metrics first seen since (describing what has not changed
    // costs a read).
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    state.spawn_every(Duration::from_secs(1), move |_| {
        let tick = ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let changed = crate::telemetry::refresh_statuses(&statuses) || tick.is_multiple_of(60);
        let runtime = statuses.clone();
        async move {
            if changed && let Err(e) = crate::telemetry::describe_stations(&runtime).await {
                tracing::warn!(error = %e, "could not record the stations' descriptions");
            }
        }
    });
    let retention = runtime;
    state.spawn_every(Duration::from_secs(300), move |_| {
        let runtime = retention.clone();
        async move {
            match crate::telemetry::prune(&runtime, 2000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned old telemetry"),
                Err(e) => tracing::warn!(error = %e, "telemetry pruning failed"),
            }
        }
    });
    let clock = state.clock.clone();
    let ctx = township_drivers::driver::DriverContext {
        sink: state.telemetry.sink(),
        health: state.telemetry.health.clone(),
        shutdown: state.shutdown.clone(),
        now_ms: Arc::new(move || clock.now_ms()),
    };
    let pa = state
        .pa_wiring
        .lock()
        .ok()
        .and_then(|mut w| w.take())
        .unwrap_or_default();
    for driver in crate::telemetry::drivers::build(&state.config, pa) {
        state.tasks.spawn(township_drivers::driver::supervise(
            driver,
            ctx.clone(),
            Duration::from_secs(1),
        ));
    }
}

/// Starts the playback engine (separate so in-process tests can run it alone).
pub fn start_broadcasts(state: &AppState) {
    state
        .tasks
        .spawn(crate::broadcast::engine::run(state.broadcast_runtime()));
    if let Some(rt) = state.ebd.get()
        && let Some(rx) = state.ebd_follow_ups.lock().ok().and_then(|mut s| s.take())
    {
        state.tasks.spawn(crate::ebd::report::run(rt.clone(), rx));
    }
    state.tasks.spawn(crate::broadcast::auto::run(
        state.broadcast_runtime(),
        state.warnings.clone(),
    ));
}

/// A node opened from its data directory, holding the directory lock until dropped.
pub struct OpenedNode {
    pub state: AppState,
    _lock: DataDirLock,
}

/// Opens the data directory for serving: takes the lock, migrates the store, and checks the key.
pub async fn open(dir: &DataDir, config: Config) -> Result<OpenedNode, NodeError> {
    open_with_clock(dir, config, Clock::System).await
}

/// [`open`] with a chosen clock; tests pass a manual one to drive deadlines.
pub async fn open_with_clock(
    dir: &DataDir,
    config: Config,
    clock: Clock,
) -> Result<OpenedNode, NodeError> {
    let opened = open_store(dir, config, clock).await?;
    if opened.state.config.http.https_listen.is_some()
        && let Err(e) = open_lan_tls(&opened.state).await
    {
        opened.state.store.close().await;
        return Err(e);
    }
    if let Err(e) = open_ebd(&opened.state).await {
        opened.state.store.close().await;
        return Err(e);
    }
    let (ctx, flat) = (
        opened.state.write_ctx(),
        crate::audit::flatten_config(&opened.state.config),
    );
    if let Err(e) = opened
        .state
        .store
        .write(move |conn| crate::audit::record_config(conn, &ctx, &flat))
        .await
    {
        tracing::warn!(error = %e, "could not record the configuration in the audit log");
    }
    // The names in [[areas]] become records, so the nodes below learn them.
    let (ctx, areas) = (opened.state.write_ctx(), opened.state.config.areas.clone());
    match opened
        .state
        .store
        .write(move |conn| crate::areas::bootstrap(conn, &ctx, &areas))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(changed = n, "area names from the config written as records"),
        Err(e) => tracing::warn!(error = %e, "could not write the configured area names"),
    }
    Ok(opened)
}

/// Loads or makes the LAN certificates (audited when something is issued) and keeps them in the
/// state for the HTTPS listener and the trust page.
async fn open_lan_tls(state: &AppState) -> Result<(), NodeError> {
    let (lan, reason) = crate::tls::LanTls::open(
        state.data_dir.clone(),
        &state.node.name,
        &state.config.http.tls_names,
        state.clock.now_ms(),
    )?;
    if let Some(reason) = reason {
        audit_tls_issue(state, &lan.certs(), reason).await;
    }
    let _ = state.tls.set(Arc::new(lan));
    Ok(())
}

/// Loads the emergency-broadcast link when `[ebd] ebrid` is set: the node's SM2 key, the trusted
/// platform certificates (each checked against a CA: a wrong one refuses the start, saying which),
/// and the id sequence.
async fn open_ebd(state: &AppState) -> Result<(), NodeError> {
    let config = &state.config.ebd;
    let Some(ebrid) = config.ebrid.clone() else {
        return Ok(());
    };
    // Mounting the endpoint over an existing route would stop the router at start.
    if crate::http::all_routes(&state.config)
        .table()
        .iter()
        .any(|(_, path)| *path == config.receive_path)
    {
        return Err(crate::ebd::EbdError::PathTaken(config.receive_path.clone()).into());
    }
    let key = crate::ebd::open_key(&state.data_dir)?;
    let trust = crate::ebd::Trust::load(config)?;
    let ids = state.store.read(crate::ebd::Ids::load).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let runtime = crate::ebd::Runtime {
        store: state.store.clone(),
        ctx: state.write_ctx(),
        blobs: state.blobs.clone(),
        config: Arc::new(config.clone()),
        ebrid: ebrid.into(),
        key: Arc::new(key),
        trust: Arc::new(trust),
        ids: Arc::new(ids),
        outputs: state.pa_outputs.clone(),
        counters: Arc::default(),
        follow_ups: tx,
        shutdown: state.shutdown.clone(),
    };
    let _ = state.ebd.set(runtime);
    if let Ok(mut slot) = state.ebd_follow_ups.lock() {
        *slot = Some(rx);
    }
    Ok(())
}

/// Logs and audits a (re)issued LAN certificate.
pub async fn audit_tls_issue(
    state: &AppState,
    certs: &crate::tls::LanCerts,
    reason: crate::tls::Reason,
) {
    let detail = serde_json::json!({
        "reason": reason,
        "names": certs.issued.server_names,
        "not_after": crate::clock::rfc3339_china(certs.issued.server_not_after_ms),
        "ca_sha256": certs.ca_fingerprint(),
    });
    tracing::info!(?reason, names = ?certs.issued.server_names, "LAN certificate issued");
    let ctx = state.write_ctx();
    if let Err(e) = state
        .store
        .write(move |conn| {
            ctx.audit(
                conn,
                crate::audit::Event::new(
                    crate::auth::actor::SYSTEM,
                    "tls.issue",
                    "lan-certificate",
                )
                .detail(detail),
            )
        })
        .await
    {
        tracing::warn!(error = %e, "could not audit the LAN certificate");
    }
}

/// Opens the node for a one-off CLI command while it is not serving. Unlike [`open`] it does not
/// record the configuration: the command's environment is not the configuration the node runs with,
/// and recording it would write configuration changes that never took effect into the audit log.
pub async fn open_for_command(dir: &DataDir, config: Config) -> Result<OpenedNode, NodeError> {
    open_store(dir, config, Clock::System).await
}

async fn open_store(dir: &DataDir, config: Config, clock: Clock) -> Result<OpenedNode, NodeError> {
    dir.ensure_exists()?;
    let lock = DataDirLock::acquire(dir)?;
    let store = Store::open(&dir.db(), &config.store)?;
    // Everything that can refuse the start, checked before the state is built; on any refusal the
    // store is closed in order before the error is returned.
    let checked = async {
        let (info, salt, stored_upstream) = store
            .read(|conn| {
                Ok::<_, NodeError>((
                    node::read_identity(conn)?,
                    node::db_salt(conn)?,
                    node::upstream_from_meta(conn)?,
                ))
            })
            .await?;
        let key = node::load_key_checked(dir, &info)?;
        let cap_key = crate::cap::CapKey::load_or_create(dir.root())?;
        let config_upstream = match (&config.sync.upstream_url, &config.sync.upstream_key) {
            (Some(url), Some(key)) => Some((url.clone(), key.parse().map_err(NodeError::from)?)),
            _ => None,
        };
        Ok::<_, NodeError>((
            info,
            key,
            cap_key,
            salt,
            config_upstream.or(stored_upstream),
        ))
    }
    .await;
    let (info, key, cap_key, salt, upstream) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let keys = NodeKeys {
        node: key,
        cap: cap_key,
    };
    let state = AppState::new(info, keys, &salt, config, store, clock, upstream);
    if let Err(e) = prepare_records(&state).await {
        state.store.close().await;
        return Err(e);
    }
    Ok(OpenedNode { state, _lock: lock })
}

/// Start-up housekeeping on records: forgets records of kinds this node should no longer hold (the
/// accounts of areas above it, which came down before credentials flowed up only), and rebuilds the
/// projections when a migration asked for it. Both are audited.
async fn prepare_records(state: &AppState) -> Result<(), NodeError> {
    let (docs, ctx, area) = (
        state.docs.clone(),
        state.write_ctx(),
        state.node.area.clone(),
    );
    state
        .store
        .write(move |conn| {
            if crate::audit::sign_head_if_unsigned(conn, &ctx.key)? {
                tracing::info!("audit chain head signed (it was written before heads were signed)");
            }
            for (kind, count) in docs.forget_out_of_flow(conn, &area)? {
                tracing::info!(kind, count, "forgot records this node no longer holds");
                ctx.audit(
                    conn,
                    crate::audit::Event::new(crate::auth::actor::SYSTEM, "record.forget", kind).detail(
                        serde_json::json!({"count": count, "reason": "outside this node's flow"}),
                    ),
                )?;
            }
            let stale: Option<String> = conn
                .query_row(
                    "SELECT value FROM node_meta WHERE key = ?1",
                    [crate::store::migrations::PROJECTIONS_STALE],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(version) = stale {
                let count = docs.rebuild_projections(conn)?;
                conn.execute(
                    "DELETE FROM node_meta WHERE key = ?1",
                    [crate::store::migrations::PROJECTIONS_STALE],
                )?;
                tracing::info!(
                    documents = count,
                    "projections rebuilt after the schema upgrade"
                );
                ctx.audit(
                    conn,
                    crate::audit::Event::new(crate::auth::actor::SYSTEM, "projections.rebuild", "projections")
                        .detail(serde_json::json!({"documents": count, "schema": version})),
                )?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(NodeError::from)
}

/// Serves HTTP on `listener` until `state.shutdown` is cancelled, then lets in-flight requests finish
/// for up to `http.shutdown_grace`. Tests call this with a listener bound to port 0.
pub async fn run(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let router = crate::http::app(state.clone());
    run_router(
        listener,
        router,
        state.shutdown.clone(),
        state.config.http.shutdown_grace,
    )
    .await
}

/// Serves `router` until `shutdown`, then waits at most `grace` for open requests.
pub async fn run_router(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    // The peer address reaches handlers as `ConnectInfo`: sign-in throttling, the Host check and the
    // loopback-only routes depend on it.
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still running after the shutdown grace period; closing them");
            Ok(())
        }
    }
}

/// After the server has stopped: waits for background tasks, then closes the store.
pub async fn finish(state: &AppState, wait: Duration) {
    state.shutdown.cancel();
    state.tasks.close();
    if tokio::time::timeout(wait, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time");
    }
    state.store.close().await;
}

/// Resolves on SIGTERM or SIGINT and cancels `token`; the whole node shuts down from that one signal.
pub fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            () = terminate => tracing::info!("SIGTERM received, shutting down"),
            () = token.cancelled() => {}
        }
        token.cancel();
    });
}
