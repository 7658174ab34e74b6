//! The playback engine: decides which broadcasts play here, verifies them, and drives each zone.
//!
//! It wakes on the store's commit signal (a broadcast made here, merged from above, approved or
//! cancelled anywhere) and on a one-second tick (start times, expiry), reads the broadcasts that are
//! not over, and for each one naming zones of this node:
//! - checks the order: every person's or rule's transition that matters (request, audio, approval,
//!   the correction that made a correction) must carry a signature by a key this node knows, over
//!   this broadcast's content; a live broadcast at a `[pa] two_person` level asked for by a person
//!   needs a signed approval by someone else; it must be within its start and expiry. A forged,
//!   altered, replayed or expired order never plays; it is counted, audited once and remembered
//!   (`pa_plays`), and an expired one is marked `refuse`d;
//! - plays it: one player task per zone with its own queue. A higher level pre-empts a lower one
//!   (the interrupted broadcast starts again from its beginning afterwards, if still valid); equal
//!   levels queue; a zone plays one thing at a time. Relays are switched on (confirmed by reading
//!   the coil back), the warm-up waited, the audio played on every audio output and speaker of the
//!   zone, and the relays switched off again, whatever happened;
//! - stops it: a cancel or correction reaches the players on the next commit signal and every
//!   output is stopped within two seconds (commands' process groups ended, speakers sent `stop`,
//!   relays off).
//!
//! Test and exercise broadcasts reach only outputs marked `test = true`; a zone without one records
//! a `simulated` receipt and nothing is switched. Every output reports receipts (see [`receipts`]).
//! What this node did with a broadcast is remembered when it is over, so a restart never plays a
//! finished broadcast again; one cut short by a crash plays again from its start while still valid.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use township_sync::{AreaCode, PublicKey, Transition};
use uuid::Uuid;

use super::receipts::{self, Entry, Stage};
use super::{Action, Content, Loaded, Mode, Priority, State};
use crate::audit::Event;
use crate::auth::actor::{Actor, SYSTEM};
use crate::pa::config::{Output, PaConfig};
use crate::pa::outputs::{Driven, Outputs};
use crate::pa::speech::Speech;
use crate::records::WriteCtx;
use crate::store::{Store, StoreError};

/// How long a speaker has to report `started` after its play command before it is `unreachable`.
const SPEAKER_START_TIMEOUT: Duration = Duration::from_secs(15);
/// The same for a speaker whose heartbeat has stopped.
const OFFLINE_SPEAKER_TIMEOUT: Duration = Duration::from_secs(3);
/// Slack on top of the audio's own length before a play counts as hung.
const PLAY_SLACK: Duration = Duration::from_secs(30);
/// Over broadcasts are still looked at this long (to stop what was cancelled while queued).
const RECENT_MS: i64 = 10 * 60 * 1000;

/// What the engine runs with.
#[derive(Clone)]
pub struct Runtime {
    pub store: Store,
    pub ctx: WriteCtx,
    pub pa: Arc<PaConfig>,
    pub outputs: Arc<Outputs>,
    pub speech: Arc<Speech>,
    pub blobs: crate::blobs::BlobStore,
    /// Keys whose signatures make an order playable here: this node's, the pinned upstream's and
    /// `[pa] trusted_keys`.
    pub known_keys: Arc<Vec<PublicKey>>,
    pub counters: Arc<Counters>,
    pub latest_seq: Arc<std::sync::atomic::AtomicI64>,
    pub records_changed: Arc<tokio::sync::Notify>,
    pub shutdown: CancellationToken,
    /// Spoken WAVs by content hash, for `GET /api/v1/pa/audio/{sha256}`.
    pub spoken: Arc<std::sync::Mutex<HashMap<String, PathBuf>>>,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// (zone, output, stage) → count.
    receipts: std::sync::Mutex<BTreeMap<(String, String, &'static str), u64>>,
    /// reason → count of orders refused here.
    refused: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    pub played: AtomicU64,
}

impl Counters {
    fn receipt(&self, zone: &str, output: &str, stage: Stage) {
        if let Ok(mut m) = self.receipts.lock() {
            *m.entry((zone.to_string(), output.to_string(), stage.as_str()))
                .or_default() += 1;
        }
    }

    fn refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Prometheus text for the PA.
    pub fn render(&self, outputs: &Outputs, now_ms: i64) -> String {
        let mut out = String::new();
        out.push_str("# HELP township_pa_receipts_total Receipts reported by PA outputs, by zone, output and state.\n# TYPE township_pa_receipts_total counter\n");
        if let Ok(m) = self.receipts.lock() {
            for ((zone, output, stage), n) in m.iter() {
                out.push_str(&format!(
                    "township_pa_receipts_total{{zone=\"{zone}\",output=\"{output}\",state=\"{stage}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP township_pa_orders_refused_total Broadcasts this node refused to play, by reason.\n# TYPE township_pa_orders_refused_total counter\n");
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                out.push_str(&format!(
                    "township_pa_orders_refused_total{{reason=\"{reason}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP township_pa_broadcasts_played_total Broadcasts that finished playing here.\n# TYPE township_pa_broadcasts_played_total counter\n");
        out.push_str(&format!(
            "township_pa_broadcasts_played_total {}\n",
            self.played.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP township_pa_output_up Whether a PA output is healthy (1), failing or offline (0), or not used yet (-1).\n# TYPE township_pa_output_up gauge\n");
        for zone in &outputs.zones {
            for id in &zone.outputs {
                let h = outputs.health(id, now_ms);
                let v = match h.status.as_str() {
                    "ok" => 1,
                    "unknown" => -1,
                    _ => 0,
                };
                out.push_str(&format!(
                    "township_pa_output_up{{zone=\"{}\",output=\"{id}\"}} {v}\n",
                    zone.id
                ));
            }
        }
        out
    }
}

/// Why a broadcast does not play (yet).
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Play,
    /// Not yet: before its start, or waiting for a second person.
    Wait,
    /// Never: with the reason counted and audited.
    Refuse(&'static str, String),
}

/// The zones of this node a broadcast names: zone ids configured here, or area codes standing for
/// every zone inside them; always inside the broadcast's scope.
/// Zone ids are this node's own names: they count only in broadcasts requested here (`ids_here`);
/// an order from another node names zones by area code.
pub fn local_zones(
    outputs: &Outputs,
    content: &Content,
    scope: &AreaCode,
    ids_here: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for z in &outputs.zones {
        let Ok(area) = z.area.parse::<AreaCode>() else {
            continue;
        };
        if !scope.contains(&area) {
            continue;
        }
        let named = content.zones.iter().any(|entry| {
            (ids_here && entry == &z.id)
                || entry.parse::<AreaCode>().is_ok_and(|a| a.contains(&area))
        });
        if named && !out.contains(&z.id) {
            out.push(z.id.clone());
        }
    }
    out
}

fn signed(digest: &str, t: &Transition, known: &[PublicKey]) -> bool {
    super::signed_by(digest, t, known).is_some()
}

/// Whether the broadcast's request was written by this node (its author claim names this node's
/// area), so its zone ids are this node's.
fn requested_here(loaded: &Loaded, area: &AreaCode) -> bool {
    // Read from the conflicts too: a void broadcast's transitions are all conflicts, and its
    // refusal must still be recorded where its zones are.
    loaded
        .outcome
        .applied
        .iter()
        .chain(loaded.outcome.conflicts.iter().map(|c| &c.transition))
        .find(|t| t.action == Action::Request.as_str())
        .is_some_and(|t| match &t.written {
            township_sync::Written::By(township_sync::Provenance::Claimed(a)) => {
                a.node_area == *area
            }
            _ => false,
        })
}

/// The local zones a void broadcast's content names, read as it stands.
fn claimed_zones(
    outputs: &Outputs,
    doc: &automerge::AutoCommit,
    scope: &AreaCode,
    ids_here: bool,
) -> Vec<String> {
    use automerge::ReadDoc;
    let Ok(Some((_, map))) = doc.get(automerge::ROOT, "content") else {
        return Vec::new();
    };
    let zones = township_sync::fields::text_in(doc, &map, "zones").unwrap_or_default();
    let probe = Content {
        text: String::new(),
        zones: zones
            .split(',')
            .filter(|z| !z.is_empty())
            .map(String::from)
            .collect(),
        mode: Mode::Live,
        level: Priority::Routine,
        repeat: 1,
        start_ms: 0,
        expires_ms: 0,
        warning: None,
        corrects: None,
        needs_second: false,
        rule: None,
        schedule: Vec::new(),
    };
    local_zones(outputs, &probe, scope, ids_here)
}

/// Whether a broadcast may play here now.
fn verdict(
    conn: &Connection,
    rt: &Runtime,
    loaded: &Loaded,
    now_ms: i64,
) -> Result<Verdict, StoreError> {
    let content = match &loaded.content {
        Ok(c) => c,
        Err(e) => return Ok(Verdict::Refuse("altered", e.clone())),
    };
    let id = loaded.meta.id;
    let scope = &loaded.meta.scope;
    let digest = content.digest(id, scope);
    let applied = &loaded.outcome.applied;
    let known = rt.known_keys.as_slice();
    let Some(request) = applied
        .iter()
        .find(|t| t.action == Action::Request.as_str())
    else {
        return Ok(Verdict::Wait);
    };
    if !signed(&digest, request, known) {
        return Ok(Verdict::Refuse(
            "unsigned",
            "the order is not signed by a node this one trusts".into(),
        ));
    }
    for t in applied
        .iter()
        .filter(|t| t.action == Action::Audio.as_str() || t.action == Action::Approve.as_str())
    {
        if !signed(&digest, t, known) {
            return Ok(Verdict::Refuse(
                "unsigned",
                format!("its {} is not signed by a node this one trusts", t.action),
            ));
        }
    }
    // Past its expiry it can never play, approved or not.
    if now_ms >= content.expires_ms {
        return Ok(Verdict::Refuse(
            "expired",
            "its time to play had passed before it could start".into(),
        ));
    }
    if content.text.is_empty() && loaded.outcome.state.audio.is_none() {
        return Ok(Verdict::Wait);
    }
    let by_person = request.role != SYSTEM;
    let two_person = content.mode.is_live()
        && match content.level {
            Priority::Warning(l) => rt.pa.two_person.contains(&l),
            Priority::Routine => false,
        };
    // An approval counts for the message as it was approved, never for audio added after it.
    let audio_now = super::approved_audio(&loaded.outcome.state);
    let approved = applied.iter().any(|t| {
        t.action == Action::Approve.as_str()
            && t.actor != request.actor
            && t.data.get("audio").map(String::as_str) == Some(audio_now.as_str())
    });
    let needs_approval = content.needs_second || (by_person && two_person);
    if needs_approval && !approved {
        // A correction needs no second person when the correction of a broadcast that played
        // made it; anything else waits for one.
        let corrected_here = match &content.corrects {
            Some(original) => correction_made(conn, rt, original, id)?,
            None => false,
        };
        if !corrected_here || content.needs_second {
            return Ok(Verdict::Wait);
        }
    }
    if now_ms < content.start_ms {
        return Ok(Verdict::Wait);
    }
    Ok(Verdict::Play)
}

/// Whether `original` was corrected by `correction` in a signed `correct` transition.
fn correction_made(
    conn: &Connection,
    rt: &Runtime,
    original: &str,
    correction: Uuid,
) -> Result<bool, StoreError> {
    let Ok(original) = Uuid::parse_str(original) else {
        return Ok(false);
    };
    let (loaded, _) = match super::load(conn, &rt.ctx.docs, original) {
        Ok(l) => l,
        Err(super::BroadcastError::Store(e)) => return Err(e),
        Err(_) => return Ok(false),
    };
    let Ok(content) = &loaded.content else {
        return Ok(false);
    };
    // Corrections are for what just went out: a day after the original, a second person again.
    if rt.ctx.now_ms() - content.start_ms > 24 * 3_600_000 {
        return Ok(false);
    }
    let digest = content.digest(original, &loaded.meta.scope);
    Ok(loaded.outcome.applied.iter().any(|t| {
        t.action == Action::Correct.as_str()
            && t.data.get("correction").map(String::as_str) == Some(&correction.to_string())
            && signed(&digest, t, &rt.known_keys)
    }))
}

/// A prepared broadcast (or why its audio could not be made), for the engine's loop.
type Prepared = (Uuid, Result<(Item, Vec<String>), String>);

/// What this node already did with a broadcast.
fn played_before(conn: &Connection, id: impl ToString) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT outcome FROM pa_plays WHERE broadcast_id = ?1",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?)
}

fn remember(
    conn: &Connection,
    id: impl ToString,
    outcome: &str,
    detail: &str,
    at_ms: i64,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO pa_plays (broadcast_id, outcome, detail, at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![id.to_string(), outcome, detail, at_ms],
    )? == 1)
}

/// One broadcast ready to play on one zone.
#[derive(Clone)]
struct Item {
    broadcast: Uuid,
    priority: Priority,
    mode: Mode,
    repeat: u32,
    file: PathBuf,
    sha256: String,
    duration: Duration,
    expires_ms: i64,
}

enum ZoneCommand {
    Play(Item),
    /// Stop (if playing) and drop (if queued).
    Remove(Uuid),
}

/// What a zone player tells the engine.
enum ZoneReport {
    Started(Uuid, String),
    Done(Uuid, String),
}

/// What the engine knows about a broadcast it handles.
struct Tracked {
    zones: HashSet<String>,
    started: bool,
    scope: AreaCode,
    /// For a programme on a schedule, the scheduled time this play is for.
    occurrence: Option<i64>,
}

/// When a broadcast plays: once (at its start), or on its schedule now, or not now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Once,
    Now(i64),
    NotNow,
}

/// What `pa_plays` remembers one scheduled play of a programme by.
fn occurrence_key(id: Uuid, at_ms: i64) -> String {
    format!("{id}@{at_ms}")
}

/// Runs until shutdown.
pub async fn run(rt: Runtime) {
    // A node without zones (most townships above their villages' hubs, the county) plays nothing:
    // the engine costs it nothing, not even a look a second.
    if rt.outputs.zones.is_empty() {
        rt.shutdown.cancelled().await;
        return;
    }
    let (report_tx, mut reports) = mpsc::channel::<ZoneReport>(256);
    let (receipt_tx, receipt_rx) = mpsc::unbounded_channel::<(Uuid, Entry)>();
    let writer = tokio::spawn(write_receipts(rt.clone(), receipt_rx));
    let mut players: HashMap<String, mpsc::UnboundedSender<ZoneCommand>> = HashMap::new();
    let mut player_tasks = Vec::new();
    for zone in &rt.outputs.zones {
        let (tx, rx) = mpsc::unbounded_channel();
        players.insert(zone.id.clone(), tx);
        player_tasks.push(tokio::spawn(zone_player(
            rt.clone(),
            zone.id.clone(),
            rx,
            report_tx.clone(),
            receipt_tx.clone(),
        )));
    }
    let heartbeat_task = rt.outputs.speaker_messages().map(|mut rx| {
        let rt = rt.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Ok(m) => rt.outputs.heard(&m, rt.ctx.now_ms()),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                    () = rt.shutdown.cancelled() => break,
                }
            }
        })
    });
    // Relays off at start: a crash or power cut in the middle of a broadcast must not leave an
    // amplifier powered until the next one.
    for zone in &rt.outputs.zones {
        for o in &zone.outputs {
            if let Some((_, Driven::Relay(r))) = rt.outputs.output(o)
                && let Err(e) = r.switch(false).await
            {
                rt.outputs.note(o, false, &e, rt.ctx.now_ms());
                tracing::warn!(output = %o, error = %e, "a relay could not be switched off at start");
            }
        }
    }
    let mut commits = rt.store.commits();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Commits that moved no record (readings, sessions) are not worth a look; the tick is.
    let mut looked_at_seq = -1i64;
    let mut due_tick = true;
    let mut tracked: HashMap<Uuid, Tracked> = HashMap::new();
    // Broadcasts known not to concern this node (no zones here) or already settled here.
    let mut settled: HashSet<Uuid> = HashSet::new();
    let mut preparing: HashSet<Uuid> = HashSet::new();
    let (ready_tx, mut ready) = mpsc::channel::<Prepared>(16);
    loop {
        let seq = rt.latest_seq.load(Ordering::Relaxed);
        if due_tick || seq > looked_at_seq {
            due_tick = false;
            // What the look saw committed: a write moves the sequence before its commit, so a
            // look that ran in between is repeated when the commit signal comes.
            if let Some(seen) = look(
                &rt,
                &mut tracked,
                &mut settled,
                &mut preparing,
                &players,
                &ready_tx,
            )
            .await
            {
                looked_at_seq = seen;
            }
        }
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { break },
            () = rt.records_changed.notified() => {}
            _ = tick.tick() => due_tick = true,
            Some((id, prepared)) = ready.recv() => {
                preparing.remove(&id);
                match prepared {
                    // Cancelled while its audio was being made: it no longer plays.
                    Ok(_) if !tracked.contains_key(&id) => {}
                    Ok((item, zones)) => {
                        for z in &zones {
                            if let Some(p) = players.get(z) {
                                let _ = p.send(ZoneCommand::Play(item.clone()));
                            }
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(broadcast = %id, %reason, "a broadcast's audio could not be prepared");
                        if let Some(t) = tracked.remove(&id) {
                            for z in &t.zones {
                                let _ = receipt_tx.send((id, Entry { zone: z.clone(), output: String::new(), stage: Stage::Failed, detail: reason.clone() }));
                            }
                        }
                        settle(&rt, id, "failed", &reason).await;
                        settled.insert(id);
                    }
                }
            }
            Some(report) = reports.recv() => {
                match report {
                    ZoneReport::Started(id, _zone) => {
                        if let Some(t) = tracked.get_mut(&id) && !t.started {
                            t.started = true;
                            let scope = t.scope.clone();
                            system_transition(&rt, id, &scope, Action::Start).await;
                        }
                    }
                    ZoneReport::Done(id, zone) => {
                        let finished = match tracked.get_mut(&id) {
                            Some(t) => { t.zones.remove(&zone); t.zones.is_empty() }
                            None => false,
                        };
                        if finished && let Some(t) = tracked.remove(&id) {
                            rt.counters.played.fetch_add(1, Ordering::Relaxed);
                            match t.occurrence {
                                // One play of a programme: remembered; the programme goes on.
                                Some(at) => settle_key(&rt, occurrence_key(id, at), "played").await,
                                None => {
                                    if t.started {
                                        system_transition(&rt, id, &t.scope, Action::Finish).await;
                                    }
                                    settle(&rt, id, "played", "").await;
                                    settled.insert(id);
                                }
                            }
                        }
                    }
                }
            }
            () = rt.shutdown.cancelled() => break,
        }
    }
    drop(players);
    for t in player_tasks {
        let _ = t.await;
    }
    drop(receipt_tx);
    let _ = writer.await;
    if let Some(h) = heartbeat_task {
        h.abort();
    }
}

/// One pass over the broadcasts that may concern this node.
async fn look(
    rt: &Runtime,
    tracked: &mut HashMap<Uuid, Tracked>,
    settled: &mut HashSet<Uuid>,
    preparing: &mut HashSet<Uuid>,
    players: &HashMap<String, mpsc::UnboundedSender<ZoneCommand>>,
    ready: &mpsc::Sender<Prepared>,
) -> Option<i64> {
    let now = rt.ctx.now_ms();
    let rt2 = rt.clone();
    let skip: HashSet<Uuid> = settled.clone();
    let found = rt
        .store
        .read(move |conn| {
            let committed: i64 =
                conn.query_row("SELECT COALESCE(max(seq), 0) FROM documents", [], |r| {
                    r.get(0)
                })?;
            let mut out = Vec::new();
            for id in super::active_ids(conn, now - RECENT_MS)? {
                if skip.contains(&id) {
                    continue;
                }
                let (loaded, doc) = match super::load(conn, &rt2.ctx.docs, id) {
                    Ok(l) => l,
                    Err(super::BroadcastError::Store(e)) => return Err(e),
                    Err(_) => continue,
                };
                let here = requested_here(&loaded, &rt2.ctx.area);
                let zones = match &loaded.content {
                    Ok(c) => local_zones(&rt2.outputs, c, &loaded.meta.scope, here),
                    // Void (altered) content still names zones: if they are ours, the refusal
                    // is recorded and audited rather than passed over in silence.
                    Err(_) => claimed_zones(&rt2.outputs, &doc, &loaded.meta.scope, here),
                };
                let before = played_before(conn, id)?;
                let verdict = if zones.is_empty() || before.is_some() {
                    None
                } else {
                    Some(verdict(conn, &rt2, &loaded, now)?)
                };
                // A programme on a schedule: the play due now, unless it was played already.
                let due = match &loaded.content {
                    Ok(c) if !c.schedule.is_empty() => match c.due_occurrence(now) {
                        Some(at) if played_before(conn, occurrence_key(id, at))?.is_none() => {
                            Due::Now(at)
                        }
                        _ => Due::NotNow,
                    },
                    _ => Due::Once,
                };
                out.push((loaded, zones, before, verdict, due));
            }
            Ok::<_, StoreError>((committed, out))
        })
        .await;
    let (committed, found) = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "reading broadcasts for playback failed");
            return None;
        }
    };
    for (loaded, zones, before, verdict, due) in found {
        let id = loaded.meta.id;
        let state = loaded.outcome.state.state;
        if zones.is_empty() || before.is_some() {
            settled.insert(id);
            continue;
        }
        if let Err(why) = &loaded.content {
            refuse(rt, &loaded, "altered", why).await;
            settled.insert(id);
            continue;
        }
        if matches!(state, State::Cancelled | State::Refused) {
            // Stop it wherever it plays or waits here.
            if let Some(t) = tracked.remove(&id) {
                for z in &t.zones {
                    if let Some(p) = players.get(z) {
                        let _ = p.send(ZoneCommand::Remove(id));
                    }
                }
                settle(rt, id, "stopped", state.as_str()).await;
            } else {
                settle(rt, id, "not played", state.as_str()).await;
            }
            settled.insert(id);
            continue;
        }
        if tracked.contains_key(&id) || preparing.contains(&id) {
            continue;
        }
        if state == State::Finished {
            // Finished elsewhere before it came here.
            settled.insert(id);
            continue;
        }
        // One that played and reached its expiry (a programme's last day, or a one-off cut short
        // by a restart) is over, not refused.
        if state == State::Playing && matches!(&verdict, Some(Verdict::Refuse("expired", _))) {
            system_transition(rt, id, &loaded.meta.scope, Action::Finish).await;
            settle(rt, id, "played", "schedule ended").await;
            settled.insert(id);
            continue;
        }
        // A forged or expired order is refused whether it waits for its second person or not.
        if let Some(Verdict::Refuse(reason, detail)) = &verdict {
            if matches!(state, State::Requested | State::Approved | State::Playing) {
                refuse(rt, &loaded, reason, detail).await;
                settled.insert(id);
            }
            continue;
        }
        if !matches!(state, State::Approved | State::Playing) || verdict != Some(Verdict::Play) {
            // Waiting for its second person, its audio or its start time.
            continue;
        }
        let Ok(content) = loaded.content.clone() else {
            continue;
        };
        // A recorded message from above plays once its bytes have come down and been verified.
        if let Some(audio) = &loaded.outcome.state.audio
            && !rt.blobs.path(&audio.sha256).exists()
        {
            continue;
        }
        let occurrence = match due {
            Due::Once => None,
            Due::Now(at) => Some(at),
            Due::NotNow => continue,
        };
        tracked.insert(
            id,
            Tracked {
                zones: zones.iter().cloned().collect(),
                started: state == State::Playing && occurrence.is_some(),
                scope: loaded.meta.scope.clone(),
                occurrence,
            },
        );
        preparing.insert(id);
        let (rt, ready, audio) = (
            rt.clone(),
            ready.clone(),
            loaded.outcome.state.audio.clone(),
        );
        tokio::spawn(async move {
            let prepared = prepare(&rt, id, &content, audio.as_ref())
                .await
                .map(|item| (item, zones));
            let _ = ready.send((id, prepared)).await;
        });
    }
    Some(committed)
}

/// The audio a broadcast plays: its attachment, or the speech of its text.
async fn prepare(
    rt: &Runtime,
    id: Uuid,
    content: &Content,
    audio: Option<&super::Audio>,
) -> Result<Item, String> {
    let (file, sha256, duration) = match audio {
        Some(a) => {
            let path = rt.blobs.path(&a.sha256);
            if !path.exists() {
                return Err("the audio attachment has not arrived".into());
            }
            let ms = u64::try_from(a.duration_ms).unwrap_or(0);
            (path, a.sha256.clone(), Duration::from_millis(ms))
        }
        None => {
            let text = super::spoken_text(content);
            let spoken = rt.speech.speak(&text).await.map_err(|e| e.to_string())?;
            let duration = wav_duration(&spoken.path).unwrap_or(Duration::from_secs(60));
            if let Ok(mut m) = rt.spoken.lock() {
                m.insert(spoken.sha256.clone(), spoken.path.clone());
            }
            (spoken.path, spoken.sha256, duration)
        }
    };
    Ok(Item {
        broadcast: id,
        priority: content.level,
        mode: content.mode,
        repeat: content.repeat.max(1),
        file,
        sha256,
        duration,
        expires_ms: content.expires_ms,
    })
}

/// A WAV file's length from its header (PCM: data bytes over byte rate).
pub fn wav_duration(path: &std::path::Path) -> Option<Duration> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let total = f.metadata().ok()?.len();
    let mut head = [0u8; 44];
    f.read_exact(&mut head).ok()?;
    if &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let byte_rate = u32::from_le_bytes([head[28], head[29], head[30], head[31]]);
    if byte_rate == 0 {
        return None;
    }
    let data = total.saturating_sub(44);
    Some(Duration::from_millis(data * 1000 / u64::from(byte_rate)))
}

/// Records, audits and counts a refusal, once; an expired order is also marked `refuse`d.
async fn refuse(rt: &Runtime, loaded: &Loaded, reason: &'static str, detail: &str) {
    let id = loaded.meta.id;
    let scope = loaded.meta.scope.clone();
    let ctx = rt.ctx.clone();
    let detail = detail.to_string();
    let now = ctx.now_ms();
    let expired = reason == "expired";
    let covers = rt.ctx.area.contains(&scope);
    let result = rt
        .store
        .write(move |conn| {
            if !remember(conn, id, "refused", &detail, now)? {
                return Ok(false);
            }
            ctx.audit(
                conn,
                Event::new(SYSTEM, "broadcast.refused", &format!("broadcast/{id}"))
                    .detail(json!({"reason": reason, "detail": detail})),
            )?;
            if expired && covers {
                let system = Actor::system(ctx.area.clone());
                let mut data = BTreeMap::new();
                data.insert("reason".to_string(), detail.clone());
                if let Err(e) = super::act(conn, &ctx, &system, id, Action::Refuse, data) {
                    tracing::debug!(broadcast = %id, error = %e, "could not mark the broadcast refused");
                }
            }
            Ok::<_, StoreError>(true)
        })
        .await;
    match result {
        Ok(true) => {
            rt.counters.refused(reason);
            tracing::warn!(broadcast = %id, reason, "a broadcast was refused and will not play");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(broadcast = %id, error = %e, "recording a refused broadcast failed")
        }
    }
}

/// Remembers that this node is done with a broadcast.
async fn settle(rt: &Runtime, id: Uuid, outcome: &'static str, detail: &str) {
    let now = rt.ctx.now_ms();
    let detail = detail.to_string();
    if let Err(e) = rt
        .store
        .write(move |conn| remember(conn, id, outcome, &detail, now).map(|_| ()))
        .await
    {
        tracing::warn!(broadcast = %id, error = %e, "recording a broadcast's outcome failed");
    }
}

/// Remembers one scheduled play.
async fn settle_key(rt: &Runtime, key: String, outcome: &'static str) {
    let now = rt.ctx.now_ms();
    if let Err(e) = rt
        .store
        .write(move |conn| remember(conn, &key, outcome, "", now).map(|_| ()))
        .await
    {
        tracing::warn!(error = %e, "recording a scheduled play failed");
    }
}

/// `start` and `finish` on the broadcast itself, where this node covers it (a village playing a
/// township's order reports through its receipts instead).
async fn system_transition(rt: &Runtime, id: Uuid, scope: &AreaCode, action: Action) {
    if !rt.ctx.area.contains(scope) {
        return;
    }
    let ctx = rt.ctx.clone();
    let result = rt
        .store
        .write(move |conn| {
            let system = Actor::system(ctx.area.clone());
            match super::act(conn, &ctx, &system, id, action, BTreeMap::new()) {
                Ok(_) | Err(super::BroadcastError::Conflict(_)) => Ok(()),
                Err(super::BroadcastError::Store(e)) => Err(e),
                Err(e) => {
                    tracing::debug!(broadcast = %id, error = %e, "broadcast transition skipped");
                    Ok(())
                }
            }
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(broadcast = %id, error = %e, "recording a broadcast's {} failed", action.as_str());
    }
}

/// Writes receipts as they come, several per transaction when they come together.
async fn write_receipts(rt: Runtime, mut rx: mpsc::UnboundedReceiver<(Uuid, Entry)>) {
    while let Some(first) = rx.recv().await {
        let mut batch: BTreeMap<Uuid, Vec<Entry>> = BTreeMap::new();
        batch.entry(first.0).or_default().push(first.1);
        while let Ok((id, e)) = rx.try_recv() {
            batch.entry(id).or_default().push(e);
        }
        for entries in batch.values() {
            for e in entries {
                rt.counters.receipt(&e.zone, &e.output, e.stage);
            }
        }
        let ctx = rt.ctx.clone();
        let result = rt
            .store
            .write(move |conn| {
                for (id, entries) in &batch {
                    receipts::append(conn, &ctx, *id, entries)?;
                }
                Ok::<_, StoreError>(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "writing broadcast receipts failed");
        }
    }
}

/// One zone: its queue and the one thing it plays.
async fn zone_player(
    rt: Runtime,
    zone: String,
    mut commands: mpsc::UnboundedReceiver<ZoneCommand>,
    reports: mpsc::Sender<ZoneReport>,
    receipts: mpsc::UnboundedSender<(Uuid, Entry)>,
) {
    let mut queue: VecDeque<Item> = VecDeque::new();
    let mut current: Option<(Item, CancellationToken, tokio::task::JoinHandle<bool>)> = None;
    loop {
        if current.is_none() {
            let now = rt.ctx.now_ms();
            // What waited past its expiry behind higher levels is dropped, and said so.
            let (stale, fresh): (VecDeque<Item>, VecDeque<Item>) =
                queue.drain(..).partition(|i| i.expires_ms <= now);
            queue = fresh;
            for item in stale {
                let _ = receipts.send((
                    item.broadcast,
                    Entry {
                        zone: zone.clone(),
                        output: String::new(),
                        stage: Stage::Failed,
                        detail: "expired while waiting behind higher levels".into(),
                    },
                ));
                let _ = reports
                    .send(ZoneReport::Done(item.broadcast, zone.clone()))
                    .await;
            }
            if let Some(next) = queue.pop_front() {
                let token = rt.shutdown.child_token();
                let handle = tokio::spawn(play(
                    rt.clone(),
                    zone.clone(),
                    next.clone(),
                    token.clone(),
                    reports.clone(),
                    receipts.clone(),
                ));
                current = Some((next, token, handle));
            }
        }
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(ZoneCommand::Play(item)) => {
                    let preempts = current.as_ref().is_some_and(|(c, _, _)| item.rank() > c.rank());
                    enqueue(&mut queue, item);
                    if preempts && let Some((interrupted, token, handle)) = current.take() {
                        token.cancel();
                        let _ = handle.await;
                        // The interrupted broadcast starts again from its beginning afterwards,
                        // ahead of others of its level that came after it.
                        resume(&mut queue, interrupted);
                    }
                }
                Some(ZoneCommand::Remove(id)) => {
                    queue.retain(|i| i.broadcast != id);
                    if current.as_ref().is_some_and(|(c, _, _)| c.broadcast == id)
                        && let Some((_, token, handle)) = current.take()
                    {
                        token.cancel();
                        let _ = handle.await;
                        let _ = reports.send(ZoneReport::Done(id, zone.clone())).await;
                    }
                }
            },
            done = async {
                match current.as_mut() {
                    Some((_, _, handle)) => handle.await.unwrap_or(true),
                    None => std::future::pending().await,
                }
            } => {
                let _ = done;
                if let Some((item, _, _)) = current.take() {
                    let _ = reports.send(ZoneReport::Done(item.broadcast, zone.clone())).await;
                }
            }
            () = rt.shutdown.cancelled() => {
                if let Some((_, token, handle)) = current.take() {
                    token.cancel();
                    let _ = handle.await;
                }
                break;
            }
        }
    }
}

/// Behind everything of its level or higher, ahead of anything lower.
fn enqueue(queue: &mut VecDeque<Item>, item: Item) {
    if queue.iter().any(|i| i.broadcast == item.broadcast) {
        return;
    }
    let at = queue
        .iter()
        .position(|i| i.rank() < item.rank())
        .unwrap_or(queue.len());
    queue.insert(at, item);
}

impl Item {
    /// What pre-emption and queueing compare: anything live above any test or exercise, then the
    /// level (a red exercise never interrupts a live orange warning).
    fn rank(&self) -> (bool, Priority) {
        (self.mode.is_live(), self.priority)
    }
}

/// Ahead of everything of its level, behind anything higher.
fn resume(queue: &mut VecDeque<Item>, item: Item) {
    if queue.iter().any(|i| i.broadcast == item.broadcast) {
        return;
    }
    let at = queue
        .iter()
        .position(|i| i.rank() <= item.rank())
        .unwrap_or(queue.len());
    queue.insert(at, item);
}

/// Plays one item on one zone until it ends or `stop` is cancelled; relays always end off.
async fn play(
    rt: Runtime,
    zone: String,
    item: Item,
    stop: CancellationToken,
    reports: mpsc::Sender<ZoneReport>,
    receipts: mpsc::UnboundedSender<(Uuid, Entry)>,
) -> bool {
    let id = item.broadcast;
    let receipt = |output: &str, stage: Stage, detail: String| {
        let _ = receipts.send((
            id,
            Entry {
                zone: zone.clone(),
                output: output.to_string(),
                stage,
                detail,
            },
        ));
    };
    let Some(zone_config) = rt.outputs.zone(&zone).cloned() else {
        return false;
    };
    // Test and exercise broadcasts reach only monitor outputs.
    let outputs: Vec<(String, Output, Driven)> = zone_config
        .outputs
        .iter()
        .filter_map(|o| {
            let (config, driven) = rt.outputs.output(o)?;
            (item.mode.is_live() || config.is_test())
                .then(|| (o.clone(), config.clone(), driven.clone()))
        })
        .collect();
    if outputs.is_empty() {
        receipt(
            "",
            Stage::Simulated,
            if item.mode.is_live() {
                "the zone has no outputs".into()
            } else {
                format!(
                    "{} broadcast: the zone has no test output",
                    item.mode.as_str()
                )
            },
        );
        let _ = reports.send(ZoneReport::Started(id, zone.clone())).await;
        return true;
    }
    let _ = reports.send(ZoneReport::Started(id, zone.clone())).await;
    // Relays on, together.
    let relays: Vec<(String, crate::pa::outputs::Relay)> = outputs
        .iter()
        .filter_map(|(o, _, d)| match d {
            Driven::Relay(r) => Some((o.clone(), r.clone())),
            _ => None,
        })
        .collect();
    let mut on = Vec::new();
    // Every relay a switch-on was sent to is switched off afterwards, confirmed or not: a write
    // whose echo or read-back was lost may still have closed the contact.
    let mut tried = Vec::new();
    let mut warmup = Duration::ZERO;
    let switched = futures_util::future::join_all(
        relays
            .iter()
            .map(|(o, r)| async move { (o.clone(), r.clone(), r.switch(true).await) }),
    )
    .await;
    for (o, r, result) in switched {
        match result {
            Ok(()) => {
                rt.outputs.note(&o, true, "switched on", rt.ctx.now_ms());
                receipt(&o, Stage::Started, "relay on".into());
                warmup = warmup.max(r.warmup);
                on.push((o, r));
            }
            Err(e) => {
                rt.outputs.note(&o, false, &e, rt.ctx.now_ms());
                receipt(&o, Stage::Failed, e);
                tried.push((o, r));
            }
        }
    }
    let mut completed = true;
    if !on.is_empty() {
        tokio::select! {
            () = tokio::time::sleep(warmup) => {}
            () = stop.cancelled() => completed = false,
        }
    }
    if completed {
        let audio = outputs.iter().filter_map(|(o, _, d)| match d {
            Driven::Command(c) => Some(play_command(&rt, o, c, &item, &stop, &receipt).boxed()),
            Driven::Speaker => Some(play_speaker(&rt, o, &item, &stop, &receipt).boxed()),
            Driven::Relay(_) => None,
        });
        let results = futures_util::future::join_all(audio).await;
        completed = results.iter().all(|r| *r) && !stop.is_cancelled();
    }
    // Relays off, whatever happened.
    for (o, r) in tried {
        if let Err(e) = r.switch(false).await {
            rt.outputs.note(&o, false, &e, rt.ctx.now_ms());
        }
    }
    for (o, r) in on {
        match r.switch(false).await {
            Ok(()) => receipt(
                &o,
                if completed {
                    Stage::Finished
                } else {
                    Stage::Stopped
                },
                "relay off".into(),
            ),
            Err(e) => {
                rt.outputs.note(&o, false, &e, rt.ctx.now_ms());
                receipt(&o, Stage::Failed, format!("switching off: {e}"));
            }
        }
    }
    completed
}

use futures_util::FutureExt as _;

async fn play_command(
    rt: &Runtime,
    output: &str,
    command: &crate::pa::command::CommandOutput,
    item: &Item,
    stop: &CancellationToken,
    receipt: &impl Fn(&str, Stage, String),
) -> bool {
    let deadline = item.duration.saturating_add(PLAY_SLACK);
    for round in 0..item.repeat {
        let playing = match command.start(&item.file) {
            Ok(p) => p,
            Err(e) => {
                rt.outputs
                    .note(output, false, &e.to_string(), rt.ctx.now_ms());
                receipt(output, Stage::Failed, e.to_string());
                return false;
            }
        };
        if round == 0 {
            receipt(output, Stage::Started, String::new());
        }
        match playing.finish_unless(deadline, stop).await {
            Ok(true) => {}
            Ok(false) => {
                receipt(output, Stage::Stopped, String::new());
                return false;
            }
            Err(e) => {
                rt.outputs
                    .note(output, false, &e.to_string(), rt.ctx.now_ms());
                receipt(output, Stage::Failed, e.to_string());
                return false;
            }
        }
    }
    rt.outputs.note(output, true, "played", rt.ctx.now_ms());
    receipt(output, Stage::Finished, String::new());
    true
}

async fn play_speaker(
    rt: &Runtime,
    speaker: &str,
    item: &Item,
    stop: &CancellationToken,
    receipt: &impl Fn(&str, Stage, String),
) -> bool {
    let Some(mut messages) = rt.outputs.speaker_messages() else {
        receipt(speaker, Stage::Unreachable, "no broker for speakers".into());
        return false;
    };
    let id = item.broadcast.to_string();
    rt.outputs.command_speaker(
        speaker,
        &json!({
            "op": "play",
            "broadcast": id,
            "url": format!("/api/v1/pa/audio/{}", item.sha256),
            "sha256": item.sha256,
            "repeat": item.repeat,
            "priority": item.priority.rank(),
            "level": item.priority.as_str(),
            "mode": item.mode.as_str(),
        }),
    );
    receipt(speaker, Stage::Commanded, String::new());
    let total = item
        .duration
        .saturating_mul(item.repeat)
        .saturating_add(PLAY_SLACK);
    let mut started = false;
    // A speaker silent for longer than its heartbeat period gets a short chance only: the zone's
    // receipts should say it is unreachable while people still wait for them.
    let start_timeout = if rt.outputs.speaker_online(speaker, rt.ctx.now_ms()) {
        SPEAKER_START_TIMEOUT
    } else {
        OFFLINE_SPEAKER_TIMEOUT
    };
    let start_deadline = tokio::time::Instant::now() + start_timeout;
    let end_deadline = tokio::time::Instant::now()
        + SPEAKER_START_TIMEOUT
        + total.min(Duration::from_secs(24 * 3600));
    loop {
        let deadline = if started {
            end_deadline
        } else {
            start_deadline
        };
        let message = tokio::select! {
            m = messages.recv() => m,
            () = tokio::time::sleep_until(deadline) => {
                let (stage, detail) = if started {
                    (Stage::Failed, "no report of the end in time".to_string())
                } else if rt.outputs.speaker_online(speaker, rt.ctx.now_ms()) {
                    (Stage::Unreachable, "the speaker did not start in time".to_string())
                } else {
                    (Stage::Unreachable, "the speaker is offline".to_string())
                };
                rt.outputs.note(speaker, false, &detail, rt.ctx.now_ms());
                receipt(speaker, stage, detail);
                if started {
                    rt.outputs.command_speaker(speaker, &json!({"op": "stop", "broadcast": id}));
                }
                return false;
            }
            () = stop.cancelled() => {
                rt.outputs.command_speaker(speaker, &json!({"op": "stop", "broadcast": id}));
                receipt(speaker, Stage::Stopped, String::new());
                return false;
            }
        };
        let m = match message {
            Ok(m) => m,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return false,
        };
        if m.speaker != speaker || m.topic != format!("pa/{speaker}/status") {
            continue;
        }
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&m.payload) else {
            continue;
        };
        if status.get("broadcast").and_then(|b| b.as_str()) != Some(id.as_str()) {
            continue;
        }
        let detail = status
            .get("detail")
            .and_then(|d| d.as_str())
            .map(|d| d.chars().take(300).collect::<String>())
            .unwrap_or_default();
        match status.get("state").and_then(|s| s.as_str()) {
            Some("started") if !started => {
                started = true;
                receipt(speaker, Stage::Started, detail);
            }
            Some("finished") => {
                rt.outputs.note(speaker, true, "played", rt.ctx.now_ms());
                receipt(speaker, Stage::Finished, detail);
                return true;
            }
            Some("failed") => {
                rt.outputs.note(speaker, false, &detail, rt.ctx.now_ms());
                receipt(speaker, Stage::Failed, detail);
                return false;
            }
            _ => {}
        }
    }
}
