//! One sync session: the handshake a downstream node opens with us, then the record sync engine over
//! the authenticated connection until it closes, stalls, fails, or is cancelled (revocation,
//! shutdown). Local commits wake the session at once; records go first; once they settle,
//! append-only streams go up and attachments that this node lacks are fetched.

use std::time::Duration;

use axum::extract::ws::WebSocket;
use futures_util::FutureExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use township_sync::engine::{self, Frame, Link, PeerInfo, Relation};
use township_sync::handshake::{self, Enrollment, HandshakeFrame};
use township_sync::{AreaCode, DocStore};

use super::transport::{Bandwidth, FrameIo, Sender, recv_handshake, send_handshake};
use super::{Runtime, SessionError, attachments, registry, streams};
use crate::audit::Event;
use crate::store::StoreError;

/// How often a session ticks: stall checks (the engine restarts a record after five quiet ticks),
/// pings, and a look for attachments this node still lacks.
const TICK: Duration = Duration::from_secs(3);
/// Frames already received that one write job handles at most, and their bytes.
const MAX_FRAMES_PER_JOB: usize = 32;
const MAX_BYTES_PER_JOB: usize = 4 * 1024 * 1024;
/// Frame bytes read ahead while a write job runs; loaded records take several times as much memory.
const MAX_BYTES_AHEAD: usize = 1024 * 1024;

/// Tells a peer its handshake is refused, counts the refusal per client address (auditing the
/// first of each window), and returns the reason as the session's error.
async fn refuse(
    rt: &Runtime,
    socket: &mut WebSocket,
    key: &str,
    address: Option<std::net::IpAddr>,
    reason: SessionError,
) -> SessionError {
    let text = reason.to_string();
    if let Ok(bytes) = handshake::encode(&HandshakeFrame::Refused {
        reason: text.clone(),
    }) {
        let _ = socket.send_frame(bytes).await;
    }
    if rt
        .status
        .refusals
        .record(address, key, &text, rt.clock.now_ms())
    {
        audit_refusal(rt, key, address, &text).await;
    }
    reason
}

async fn audit_refusal(rt: &Runtime, key: &str, address: Option<std::net::IpAddr>, reason: &str) {
    let (ctx, key, address, reason) = (
        rt.write_ctx.clone(),
        key.chars().take(64).collect::<String>(),
        crate::audit::tally::address_group(address),
        reason.to_string(),
    );
    let _ = rt
        .store
        .write(move |conn| {
            ctx.audit(
                conn,
                Event::new("sync", "sync.refused", "handshake")
                    .detail(json!({"reason": reason, "key": key, "client": address})),
            )
        })
        .await;
}

/// Serves a downstream node that opened the sync WebSocket: the handshake against the registry,
/// then the session, with the node's live connections tracked so a revocation can end them.
pub async fn serve_downstream(
    rt: Runtime,
    mut socket: WebSocket,
    address: Option<std::net::IpAddr>,
) -> Result<(), SessionError> {
    let hello = recv_handshake(&mut socket).await?;
    let claimed = match &hello {
        HandshakeFrame::ClientHello { public_key, .. } => public_key.clone(),
        _ => String::new(),
    };
    let lookup = claimed.clone();
    let enrolled = rt
        .store
        .read(move |conn| registry::peer_by_key(conn, &lookup))
        .await?
        .filter(|r| r.relation == "downstream");
    let answer = handshake::Server::answer(&rt.key, hello, |_| {
        enrolled.as_ref().map(|r| {
            if r.revoked_ms.is_some() {
                Enrollment::Revoked
            } else {
                Enrollment::Active
            }
        })
    });
    let (server, server_hello) = match answer {
        Ok(ok) => ok,
        Err(e) => return Err(refuse(&rt, &mut socket, &claimed, address, e.into()).await),
    };
    send_handshake(&mut socket, &server_hello).await?;
    let proof = recv_handshake(&mut socket).await?;
    let proven = match server.finish(proof) {
        Ok(p) => p,
        Err(e) => return Err(refuse(&rt, &mut socket, &claimed, address, e.into()).await),
    };
    send_handshake(
        &mut socket,
        &HandshakeFrame::Welcome {
            area: rt.node.area.to_string(),
        },
    )
    .await?;
    let row = enrolled.ok_or_else(|| SessionError::Protocol("enrolment vanished".into()))?;
    let (seen_id, seen_version, seen_at) = (
        proven.node_id.clone(),
        proven.software.clone(),
        rt.clock.now_ms(),
    );
    rt.store
        .write(move |conn| registry::record_seen(conn, &seen_id, seen_version.as_deref(), seen_at))
        .await?;
    let area: AreaCode = row
        .area
        .parse()
        .map_err(|e: township_sync::AreaError| SessionError::Protocol(e.to_string()))?;
    let peer = PeerInfo {
        node_id: proven.node_id.clone(),
        area,
        relation: Relation::Downstream,
    };
    let cancel = rt.shutdown.child_token();
    let connection = rt.status.register(&proven.node_id, cancel.clone());
    // A revocation that landed between the enrolment check and the registration above found no
    // connection to close; the database has it, so look again now that this one is registered.
    let revoked_id = proven.node_id.clone();
    let revoked = rt
        .store
        .read(move |conn| registry::is_revoked(conn, &revoked_id))
        .await?;
    if revoked {
        rt.status.unregister(&proven.node_id, connection);
        return Err(SessionError::RevokedWhileConnecting);
    }
    rt.status.update(Some(&proven.node_id), |l| {
        l.connected = true;
        l.since_ms = Some(rt.clock.now_ms());
        l.last_error = None;
    });
    let result = run(
        &rt,
        &mut socket,
        peer,
        row.acked_seq,
        Some(proven.node_id.clone()),
        cancel,
    )
    .await;
    rt.status.unregister(&proven.node_id, connection);
    rt.status.update(Some(&proven.node_id), |l| {
        l.connected = rt.status.connections(&proven.node_id) > 0;
        l.last_error = result.as_ref().err().map(ToString::to_string);
    });
    result
}

/// What a look at the link found, for the status page and for what follows records.
struct LinkState {
    pending_out: usize,
    pending_in: usize,
    caught_up: bool,
}

fn link_state(link: &Link, conn: &rusqlite::Connection) -> Result<LinkState, StoreError> {
    Ok(LinkState {
        pending_out: link.pending(conn),
        pending_in: link.pending_in(),
        caught_up: link.caught_up(conn)?,
    })
}

/// Runs the record sync engine over an authenticated connection until it closes, fails, or `cancel`.
/// `status_key` names the link in [`super::SyncStatus`] (`None` for the upstream).
///
/// Local changes are offered as soon as the store's writer commits them (its commit signal, not a
/// poll); a tick every [`TICK`] checks stalls and pings. Records go first; once the link is caught
/// up, append-only streams go up and attachments this node lacks are fetched, each next batch or
/// chunk asked for as soon as the last one landed.
pub async fn run<S: FrameIo>(
    rt: &Runtime,
    io: &mut S,
    peer: PeerInfo,
    acked_seq: i64,
    status_key: Option<String>,
    cancel: CancellationToken,
) -> Result<(), SessionError> {
    let peer_id = peer.node_id.clone();
    let docs = rt.docs.clone();
    // Subscribed before the first look, so no commit after it is missed.
    let mut commits = rt.store.commits();
    let link = Link::new(rt.node.area.clone(), peer.clone(), acked_seq);
    let (mut link, frames, mut offered, mut state) = {
        let docs = docs.clone();
        let mut l = link;
        rt.store
            .write(move |conn| {
                let offered = DocStore::current_seq(conn)?;
                let frames = l.start(conn, &docs)?;
                let state = link_state(&l, conn)?;
                Ok::<_, StoreError>((l, frames, offered, state))
            })
            .await?
    };
    let mut persisted_ack = acked_seq;
    let mut sender = Sender {
        bandwidth: Bandwidth::new(rt.config.sync.bandwidth_limit),
        stall_timeout: rt.config.sync.stall_timeout,
    };
    let stall_timeout = sender.stall_timeout;
    for f in &frames {
        sender.send(io, f).await?;
    }
    let mut blobs = attachments::Fetch::default();
    let mut streaming = false;
    // Whether to look for the next stream batch or attachment once the link is caught up.
    let mut look = true;
    let mut last_heard = tokio::time::Instant::now();
    let mut last_ping = tokio::time::Instant::now();
    // Frames read ahead of the writer, in the order they arrived: `loaded` (their records loaded
    // while the writer stored the batch before) and then `unloaded` (read, not yet loaded), each
    // with its size on the wire.
    let mut ahead = ReadAhead::new(docs.clone());
    let mut peer_closed = false;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if link.acked_seq() > persisted_ack {
            persisted_ack = link.acked_seq();
            let (id, now) = (peer_id.clone(), rt.clock.now_ms());
            if let Err(e) = rt
                .store
                .write(move |conn| registry::record_ack(conn, &id, persisted_ack, now))
                .await
            {
                tracing::debug!(error = %e, "could not persist a sync acknowledgement");
            }
        }
        rt.status.update(status_key.as_deref(), |l| {
            l.pending_out = state.pending_out;
            l.pending_in = state.pending_in;
        });
        // Records first, then append-only streams up the tree, then attachments.
        if look && state.caught_up && !streaming {
            look = false;
            if peer.relation == Relation::Upstream
                && let Some(batch) = streams::next_batch(rt, &peer.node_id).await
            {
                sender.send(io, &batch).await?;
                streaming = true;
            } else if let Some(request) = attachments::next_request(rt, &mut blobs).await {
                sender.send(io, &request).await?;
            }
        }
        if ahead.is_empty() && peer_closed {
            return Ok(());
        }
        let mut received: Option<Vec<Frame>> = None;
        tokio::select! {
            () = cancel.cancelled() => return Err(SessionError::ClosedHere),
            () = std::future::ready(()), if !ahead.is_empty() => {
                received = Some(ahead.next_job().await?);
            }
            incoming = io.recv_frame(), if ahead.is_empty() && !peer_closed => {
                let bytes = match incoming {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(b)) => b,
                };
                last_heard = tokio::time::Instant::now();
                // Frames that already arrived are queued together. The writer starts on the first
                // run of them as soon as its records are loaded; the rest are loaded while it
                // stores that, and go in the next job, many to one commit (one fsync).
                ahead.push(engine::decode(&bytes)?, bytes.len());
                while ahead.len() < MAX_FRAMES_PER_JOB && ahead.bytes < MAX_BYTES_PER_JOB {
                    match io.recv_frame().now_or_never() {
                        Some(Some(Ok(b))) => ahead.push(engine::decode(&b)?, b.len()),
                        Some(Some(Err(e))) => return Err(e),
                        Some(None) => {
                            peer_closed = true;
                            break;
                        }
                        None => break,
                    }
                }
                received = Some(ahead.next_job().await?);
            }
            changed = commits.changed() => {
                if changed.is_err() {
                    // The store is closing: the node is shutting down.
                    return Err(SessionError::ClosedHere);
                }
                // Most commits are not records (readings, audit entries): skip the look then.
                let latest = rt.latest_seq.load(std::sync::atomic::Ordering::Relaxed);
                if latest <= offered {
                    continue;
                }
                // Nor is every record change for this peer: with hundreds of nodes connected, only
                // the sessions whose peer holds the record look in the database.
                let for_peer = rt.write_ctx.recent.any_between(offered, latest, |kind, scope| {
                    peer.holds(&rt.node.area, rt.docs.flow(kind), scope)
                });
                if for_peer == Some(false) {
                    offered = latest;
                    continue;
                }
                let docs = docs.clone();
                let (l, frames, now_seq, st) = rt
                    .store
                    .write(move |conn| {
                        let mut l = link;
                        let now_seq = DocStore::current_seq(conn)?;
                        let frames = l.advance(conn, &docs)?;
                        let st = link_state(&l, conn)?;
                        Ok::<_, StoreError>((l, frames, now_seq, st))
                    })
                    .await?;
                link = l;
                offered = now_seq;
                state = st;
                for f in &frames {
                    sender.send(io, f).await?;
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > stall_timeout {
                    return Err(SessionError::Stalled(format!("nothing heard for {} s", stall_timeout.as_secs())));
                }
                if last_ping.elapsed() > stall_timeout / 3 {
                    last_ping = tokio::time::Instant::now();
                    sender.send(io, &Frame::Ping).await?;
                }
                look = true;
                // An idle link has nothing to restart or offer again: it skips the database, so
                // hundreds of connected idle nodes cost the county next to nothing.
                if state.caught_up && state.pending_out == 0 && state.pending_in == 0 {
                    continue;
                }
                let docs = docs.clone();
                let (l, frames, st) = rt
                    .store
                    .write(move |conn| {
                        let mut l = link;
                        let frames = l.tick(conn, &docs)?;
                        let st = link_state(&l, conn)?;
                        Ok::<_, StoreError>((l, frames, st))
                    })
                    .await?;
                link = l;
                state = st;
                for f in &frames {
                    sender.send(io, f).await?;
                }
            }
        }
        let Some(frames) = received else {
            continue;
        };
        let (docs, ctx, from) = (docs.clone(), rt.write_ctx.clone(), peer_id.clone());
        let write = rt.store.write(move |conn| {
            let mut l = link;
            let mut all = engine::Outcome::default();
            for frame in frames {
                let outcome = l.receive(conn, &docs, frame)?;
                for (id, reason) in &outcome.refused {
                    ctx.audit(
                        conn,
                        Event::new(
                            &format!("node:{from}"),
                            "sync.refused",
                            &format!("record/{id}"),
                        )
                        .detail(json!({"reason": reason})),
                    )?;
                }
                all.frames.extend(outcome.frames);
                all.changed.extend(outcome.changed);
                all.blobs.extend(outcome.blobs);
            }
            let st = link_state(&l, conn)?;
            Ok::<_, StoreError>((l, all, st))
        });
        // While the writer stores this batch, the next frames are read and their records
        // loaded on another core, so the writer goes straight on to them.
        tokio::pin!(write);
        let (l, outcome, st) = loop {
            tokio::select! {
                // The job goes to the writer at its first poll, so it is polled first, always:
                // otherwise a frame already waiting could be loaded before the job was even queued.
                biased;
                done = &mut write => break done?,
                // Frames already read are loaded before more are read.
                () = std::future::ready(()), if !ahead.unloaded.is_empty() => ahead.load_one().await?,
                incoming = io.recv_frame(), if !peer_closed && ahead.bytes < MAX_BYTES_AHEAD => {
                    match incoming {
                        None => peer_closed = true,
                        Some(Err(e)) => return Err(e),
                        Some(Ok(b)) => {
                            last_heard = tokio::time::Instant::now();
                            ahead.push(engine::decode(&b)?, b.len());
                            ahead.load_one().await?;
                        }
                    }
                }
            }
        };
        link = l;
        state = st;
        for meta in &outcome.changed {
            rt.write_ctx.saw(meta);
        }
        for f in &outcome.frames {
            sender.send(io, f).await?;
        }
        if !outcome.blobs.is_empty() || !outcome.changed.is_empty() {
            look = true;
        }
        for frame in outcome.blobs {
            let replies = match frame {
                Frame::StreamBatch { .. } | Frame::StreamAck { .. } => {
                    streams::handle(rt, &peer, frame, &mut streaming).await?
                }
                other => attachments::handle(rt, &peer, other, &mut blobs).await?,
            };
            for reply in &replies {
                sender.send(io, reply).await?;
            }
        }
        if peer_closed && ahead.is_empty() {
            return Ok(());
        }
        rt.status.update(status_key.as_deref(), |l| {
            l.last_success_ms = Some(rt.clock.now_ms())
        });
    }
}

/// Frames read ahead of the writer (see the session loop).
struct ReadAhead {
    /// The store the records are read for (its projections read them ahead).
    docs: DocStore,
    loaded: std::collections::VecDeque<(Frame, usize)>,
    unloaded: std::collections::VecDeque<(Frame, usize)>,
    /// Wire bytes of both queues.
    bytes: usize,
}

impl ReadAhead {
    fn new(docs: DocStore) -> ReadAhead {
        ReadAhead {
            docs,
            loaded: Default::default(),
            unloaded: Default::default(),
            bytes: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.loaded.is_empty() && self.unloaded.is_empty()
    }

    fn len(&self) -> usize {
        self.loaded.len() + self.unloaded.len()
    }

    fn push(&mut self, frame: Frame, wire_bytes: usize) {
        self.bytes += wire_bytes;
        self.unloaded.push_back((frame, wire_bytes));
    }

    /// Loads the records of the first unloaded frame on the blocking pool.
    async fn load_one(&mut self) -> Result<(), SessionError> {
        if let Some((frame, size)) = self.unloaded.pop_front() {
            for frame in preloaded(&self.docs, vec![frame]).await? {
                self.loaded.push_back((frame, size));
            }
        }
        Ok(())
    }

    /// The frames for the next write job, in order: every loaded one; or, when none is, the
    /// unloaded ones up to and including the first that carries records, loaded now. The writer
    /// then waits for one frame's loading, never for the whole queue's.
    async fn next_job(&mut self) -> Result<Vec<Frame>, SessionError> {
        if !self.loaded.is_empty() {
            self.bytes -= self.loaded.iter().map(|(_, size)| size).sum::<usize>();
            return Ok(self.loaded.drain(..).map(|(frame, _)| frame).collect());
        }
        let mut run = Vec::new();
        while let Some((frame, size)) = self.unloaded.pop_front() {
            self.bytes -= size;
            let records = matches!(frame, Frame::Records { .. });
            run.push(frame);
            if records {
                break;
            }
        }
        preloaded(&self.docs, run).await
    }
}

/// Reads the whole records in `frames` ahead on the blocking pool, beside the writer. Each frame's
/// records are shared out over as many threads as there are cores: on one thread, reading a
/// catch-up's records kept a core busy while the writer waited for it.
async fn preloaded(docs: &DocStore, frames: Vec<Frame>) -> Result<Vec<Frame>, SessionError> {
    let mut out = Vec::with_capacity(frames.len());
    for frame in frames {
        out.push(match frame {
            Frame::Records { records } => Frame::Records {
                records: read_ahead(docs, records).await?,
            },
            other => other,
        });
    }
    Ok(out)
}

/// Threads one frame's records are read on at most.
fn read_ahead_threads() -> usize {
    static THREADS: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
    });
    *THREADS
}

async fn read_ahead(
    docs: &DocStore,
    mut records: Vec<engine::WholeRecord>,
) -> Result<Vec<engine::WholeRecord>, SessionError> {
    let share = records.len().div_ceil(read_ahead_threads()).max(1);
    let mut reading = Vec::new();
    while !records.is_empty() {
        let rest = records.split_off(share.min(records.len()));
        let mut chunk = std::mem::replace(&mut records, rest);
        let docs = docs.clone();
        reading.push(tokio::task::spawn_blocking(move || {
            engine::preload_records(&docs, &mut chunk);
            chunk
        }));
    }
    let mut out = Vec::new();
    for chunk in reading {
        out.extend(
            chunk
                .await
                .map_err(|e| SessionError::Protocol(format!("loading records failed: {e}")))?,
        );
    }
    Ok(out)
}
