//! The node's side of sync: enrollment of downstream nodes, the WebSocket at `/api/v1/sync` that
//! downstream nodes open, the client that keeps a connection to the upstream with backoff, and the
//! session that runs the record sync engine of `township-sync` over either.
//!
//! The engine itself is transport-agnostic; here it runs inside write jobs (it reads and writes the
//! record store), frames travel as binary WebSocket messages with a size limit, and local changes are
//! found by watching the record store's sequence number, so a change made anywhere on this node
//! reaches connected peers within about a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use township_sync::engine::{self, Frame, Link, PeerInfo, Relation};
use township_sync::handshake::{self, Enrollment, HandshakeFrame};
use township_sync::{AreaCode, DocStore, PublicKey};

use crate::app::AppState;
use crate::audit::Event;
use crate::auth::Caller;
use crate::http::extract::ApiJson;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::invalid::Invalid;
use crate::store::StoreError;

/// Largest frame accepted on a sync connection (on the wire, and once inflated); larger ones close it.
pub const MAX_FRAME_BYTES: usize = engine::MAX_FRAME_BYTES;
const POLL: Duration = Duration::from_millis(300);
/// Polls between engine ticks (stall checks); the engine restarts a record after five quiet ticks.
const TICK_EVERY: u32 = 10;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Attachments travel in chunks this large, so a break costs at most one chunk.
pub const BLOB_CHUNK: usize = 256 * 1024;
/// Polls between looks for attachments this node still lacks.
const BLOB_LOOK_EVERY: u32 = 3;

/// What the node knows about its links, for `/api/v1/sync/status`, `/api/v1/nodes` and the header.
#[derive(Debug)]
pub struct SyncStatus {
    inner: Mutex<StatusInner>,
    /// Every live connection of every downstream node: a node may hold several (a reconnect before
    /// the old socket timed out, or a copy of its key elsewhere), and revoking it ends all of them.
    sessions: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
    next_connection: std::sync::atomic::AtomicU64,
    /// Refused sync handshakes, counted per client address (see [`crate::audit::Tally`]).
    pub refusals: crate::audit::Tally,
}

impl Default for SyncStatus {
    fn default() -> Self {
        SyncStatus {
            inner: Mutex::default(),
            sessions: Mutex::default(),
            next_connection: std::sync::atomic::AtomicU64::new(0),
            refusals: crate::audit::Tally::new("sync.refused", "handshake"),
        }
    }
}

impl SyncStatus {
    /// Registers a live connection of `node`; returns its number for [`Self::unregister`].
    fn register(&self, node: &str, token: CancellationToken) -> u64 {
        let n = self
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_default()
            .insert(n, token);
        n
    }

    fn unregister(&self, node: &str, n: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = sessions.get_mut(node) {
            live.remove(&n);
            if live.is_empty() {
                sessions.remove(node);
            }
        }
    }

    /// Ends every live connection of `node`; returns how many there were.
    fn close_all(&self, node: &str) -> usize {
        let live = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node)
            .unwrap_or_default();
        for token in live.values() {
            token.cancel();
        }
        live.len()
    }

    /// Live connections of `node`.
    pub fn connections(&self, node: &str) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map_or(0, HashMap::len)
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct LinkStatus {
    connected: bool,
    since_ms: Option<i64>,
    last_success_ms: Option<i64>,
    last_error: Option<String>,
    pending_out: usize,
    pending_in: usize,
}

#[derive(Debug, Default)]
struct StatusInner {
    upstream: Option<LinkStatus>,
    downstream: HashMap<String, LinkStatus>,
}

impl SyncStatus {
    fn update(&self, peer: Option<&str>, f: impl FnOnce(&mut LinkStatus)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let link = match peer {
            None => inner.upstream.get_or_insert_with(LinkStatus::default),
            Some(id) => inner.downstream.entry(id.to_string()).or_default(),
        };
        f(link);
    }

    /// Samples for `/metrics`: upstream connected, changes waiting to go up, downstream connections.
    pub fn samples(&self, now_ms: i64) -> Vec<crate::metrics::Sample> {
        let (up, down) = self.snapshot();
        let mut out = vec![
            crate::metrics::Sample {
                name: "township_sync_downstream_connected",
                help: "Downstream nodes connected now.",
                kind: "gauge",
                value: down.values().filter(|l| l.connected).count() as f64,
            },
            crate::metrics::Sample {
                name: "township_sync_handshakes_refused_total",
                help: "Sync handshakes refused (unknown, revoked or bad keys) since start.",
                kind: "counter",
                value: self.refusals.total() as f64,
            },
        ];
        if let Some(u) = up {
            out.push(crate::metrics::Sample {
                name: "township_sync_upstream_connected",
                help: "1 while the link to the upstream is up.",
                kind: "gauge",
                value: if u.connected { 1.0 } else { 0.0 },
            });
            out.push(crate::metrics::Sample {
                name: "township_sync_upstream_pending",
                help: "Records whose sync with the upstream has not settled.",
                kind: "gauge",
                value: u.pending_out as f64,
            });
            if let Some(ok) = u.last_success_ms {
                out.push(crate::metrics::Sample {
                    name: "township_sync_upstream_seconds_since_success",
                    help: "Seconds since the last frame from the upstream was applied.",
                    kind: "gauge",
                    value: ((now_ms - ok).max(0) as f64) / 1000.0,
                });
            }
        }
        out
    }

    fn snapshot(&self) -> (Option<LinkStatus>, HashMap<String, LinkStatus>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.upstream.clone(), inner.downstream.clone())
    }
}

/// An enrolled or upstream peer as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRow {
    pub node_id: String,
    pub public_key: String,
    pub area: String,
    pub name: String,
    pub relation: String,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    pub acked_seq: i64,
    pub last_seen_ms: Option<i64>,
    pub version: Option<String>,
    pub last_error: Option<String>,
}

fn read_peer(r: &rusqlite::Row<'_>) -> rusqlite::Result<PeerRow> {
    Ok(PeerRow {
        node_id: r.get(0)?,
        public_key: r.get(1)?,
        area: r.get(2)?,
        name: r.get(3)?,
        relation: r.get(4)?,
        enrolled_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
        acked_seq: r.get(7)?,
        last_seen_ms: r.get(8)?,
        version: r.get(9)?,
        last_error: r.get(10)?,
    })
}

const PEER_COLUMNS: &str = "node_id, public_key, area, name, relation, enrolled_ms, revoked_ms, acked_seq, last_seen_ms, version, last_error";

pub fn peer_by_key(conn: &Connection, key: &str) -> Result<Option<PeerRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {PEER_COLUMNS} FROM sync_peers WHERE public_key = ?1"),
            [key],
            read_peer,
        )
        .optional()?)
}

pub fn peers(conn: &Connection, relation: &str) -> Result<Vec<PeerRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {PEER_COLUMNS} FROM sync_peers WHERE relation = ?1 ORDER BY area, name"
    ))?;
    Ok(stmt
        .query_map([relation], read_peer)?
        .collect::<Result<_, _>>()?)
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("this key is already enrolled as node {0}")]
    Exists(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Invalid(invalid) => ApiError::Invalid(invalid),
            EnrollError::Exists(_) => ApiError::Conflict(e.to_string()),
            EnrollError::Store(s) => s.into(),
        }
    }
}

/// A request to enroll a downstream node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub public_key: String,
    pub area: String,
    pub name: String,
}

/// Enrolls a downstream node by its public key and area (in the caller's transaction).
pub fn enroll(
    conn: &Connection,
    ctx: &crate::records::WriteCtx,
    our_area: &AreaCode,
    actor: &str,
    request: EnrollRequest,
) -> Result<PeerRow, EnrollError> {
    let state_area = our_area;
    let now_ms = ctx.now_ms();
    let EnrollRequest {
        public_key: key,
        area,
        name,
    } = request;
    let key: PublicKey = key.trim().parse().map_err(|_| {
        EnrollError::Invalid(Invalid::new(
            "public_key",
            "not a node public key (43 characters of base64url)",
        ))
    })?;
    let area: AreaCode = area
        .parse()
        .map_err(|e: township_sync::AreaError| Invalid::new("area", e))?;
    if !state_area.is_above(&area) {
        return Err(Invalid::new(
            "area",
            format!("a downstream node's area must lie below this node's area {state_area}"),
        )
        .into());
    }
    let name = name.trim();
    if !(1..=100).contains(&name.chars().count()) {
        return Err(EnrollError::Invalid(Invalid::new(
            "name",
            "name is 1 to 100 characters",
        )));
    }
    if let Some(existing) = peer_by_key(conn, &key.to_string())? {
        return Err(EnrollError::Exists(existing.node_id));
    }
    let node_id = key.node_id().to_string();
    conn.execute(
        "INSERT INTO sync_peers (node_id, public_key, area, name, relation, enrolled_ms) VALUES (?1, ?2, ?3, ?4, 'downstream', ?5)",
        params![node_id, key.to_string(), area.as_str(), name, now_ms],
    )
    .map_err(StoreError::from)?;
    ctx.audit(
        conn,
        Event::new(actor, "sync.enroll", &node_id).detail(json!({"area": area, "name": name})),
    )?;
    Ok(PeerRow {
        node_id,
        public_key: key.to_string(),
        area: area.to_string(),
        name: name.to_string(),
        relation: "downstream".into(),
        enrolled_ms: now_ms,
        revoked_ms: None,
        acked_seq: 0,
        last_seen_ms: None,
        version: None,
        last_error: None,
    })
}

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/sync", accept)
        .get("/api/v1/sync/status", status)
        .get("/api/v1/nodes", list_nodes)
        .post("/api/v1/nodes", add_node)
        .delete("/api/v1/nodes/{id}", revoke_node)
}

async fn add_node(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    caller.require_node_wide(&state.node.area)?;
    let (ctx, area, who) = (
        state.write_ctx(),
        state.node.area.clone(),
        caller.username.clone(),
    );
    let row = state
        .store
        .write(move |conn| enroll(conn, &ctx, &area, &who, body))
        .await?;
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

async fn list_nodes(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_node_wide(&state.node.area)?;
    let rows = state.store.read(|conn| peers(conn, "downstream")).await?;
    let (_, live) = state.sync.snapshot();
    let nodes: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|p| {
            let link = live.get(&p.node_id).cloned().unwrap_or_default();
            json!({
                "node_id": p.node_id, "public_key": p.public_key, "area": p.area, "name": p.name,
                "enrolled_ms": p.enrolled_ms, "revoked": p.revoked_ms.is_some(), "revoked_ms": p.revoked_ms,
                "connected": link.connected, "last_seen_ms": p.last_seen_ms, "version": p.version,
                "pending_out": link.pending_out, "pending_in": link.pending_in,
                "acked_seq": p.acked_seq, "last_error": p.last_error.or(link.last_error),
            })
        })
        .collect();
    Ok(Json(json!({ "nodes": nodes })))
}

async fn revoke_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_node_wide(&state.node.area)?;
    let (ctx, who, target) = (state.write_ctx(), caller.username.clone(), id.clone());
    let changed = state
        .store
        .write(move |conn| {
            let n = conn.execute(
                "UPDATE sync_peers SET revoked_ms = ?2 WHERE node_id = ?1 AND relation = 'downstream' AND revoked_ms IS NULL",
                params![target, ctx.now_ms()],
            )?;
            if n > 0 {
                ctx.audit(conn, Event::new(&who, "sync.revoke", &target))?;
            }
            Ok::<_, StoreError>(n)
        })
        .await?;
    if changed == 0 {
        return Err(ApiError::NotFound);
    }
    // Every live connection of a revoked node is closed at once.
    let closed = state.sync.close_all(&id);
    if closed > 0 {
        tracing::info!(node = %id, connections = closed, "revoked node disconnected");
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn status(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let (upstream, downstream) = state.sync.snapshot();
    let seq = state
        .store
        .read(|conn| Ok::<_, StoreError>(DocStore::current_seq(conn)?))
        .await?;
    let configured = state.upstream().is_some();
    Ok(Json(json!({
        "node_id": state.node.node_id,
        "area": state.node.area,
        "seq": seq,
        "upstream": if configured {
            let u = upstream.unwrap_or_default();
            json!({
                "url": state.upstream().map(|u| u.0),
                "state": if u.connected { "connected" } else { "offline" },
                "since_ms": u.since_ms, "last_success_ms": u.last_success_ms,
                "last_error": u.last_error, "pending_out": u.pending_out, "pending_in": u.pending_in,
            })
        } else { serde_json::Value::Null },
        "downstream_connected": downstream.values().filter(|l| l.connected).count(),
    })))
}

/// The upgrade for downstream nodes. Authentication is the handshake, not a session.
async fn accept(
    State(state): State<AppState>,
    crate::http::extract::ClientAddr(client): crate::http::extract::ClientAddr,
    ws: WebSocketUpgrade,
) -> Response {
    let address = client.map(|c| c.ip());
    ws.max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            if let Err(e) = serve_downstream(state, socket, address).await {
                tracing::info!(reason = %crate::logging::Untrusted(&e), "sync connection from downstream closed");
            }
        })
}

/// A bidirectional byte-frame channel: the server's axum socket or the client's tungstenite one.
trait FrameIo: Send {
    fn send_frame(
        &mut self,
        bytes: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    fn recv_frame(
        &mut self,
    ) -> impl std::future::Future<Output = Option<Result<Vec<u8>, String>>> + Send;
}

impl FrameIo for WebSocket {
    async fn send_frame(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        SinkExt::send(self, Message::Binary(bytes.into()))
            .await
            .map_err(|e| e.to_string())
    }
    async fn recv_frame(&mut self) -> Option<Result<Vec<u8>, String>> {
        loop {
            return match StreamExt::next(self).await? {
                Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
                Ok(Message::Close(_)) => None,
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Text(_)) => Some(Err("text frame on a binary protocol".into())),
                Err(e) => Some(Err(e.to_string())),
            };
        }
    }
}

type ClientSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl FrameIo for ClientSocket {
    async fn send_frame(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        SinkExt::send(
            self,
            tokio_tungstenite::tungstenite::Message::Binary(bytes.into()),
        )
        .await
        .map_err(|e| e.to_string())
    }
    async fn recv_frame(&mut self) -> Option<Result<Vec<u8>, String>> {
        use tokio_tungstenite::tungstenite::Message as M;
        loop {
            return match StreamExt::next(self).await? {
                Ok(M::Binary(b)) => Some(Ok(b.to_vec())),
                Ok(M::Close(_)) => None,
                Ok(M::Ping(_) | M::Pong(_) | M::Frame(_)) => continue,
                Ok(M::Text(_)) => Some(Err("text frame on a binary protocol".into())),
                Err(e) => Some(Err(e.to_string())),
            };
        }
    }
}

async fn recv_handshake<S: FrameIo>(io: &mut S) -> Result<HandshakeFrame, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, io.recv_frame()).await {
        Ok(Some(Ok(bytes))) => handshake::decode(&bytes).map_err(|e| e.to_string()),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) => Err("closed during the handshake".into()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Tells a peer its handshake is refused, counts the refusal per client address (auditing the
/// first of each window), and returns the reason.
async fn refuse(
    state: &AppState,
    socket: &mut WebSocket,
    key: &str,
    address: Option<std::net::IpAddr>,
    reason: String,
) -> String {
    let _ = socket
        .send_frame(handshake::encode(&HandshakeFrame::Refused {
            reason: reason.clone(),
        }))
        .await;
    if state
        .sync
        .refusals
        .record(address, key, &reason, state.clock.now_ms())
    {
        audit_refusal(state, key, address, &reason).await;
    }
    reason
}

async fn serve_downstream(
    state: AppState,
    mut socket: WebSocket,
    address: Option<std::net::IpAddr>,
) -> Result<(), String> {
    let hello = recv_handshake(&mut socket).await?;
    let claimed = match &hello {
        HandshakeFrame::ClientHello { public_key, .. } => public_key.clone(),
        _ => String::new(),
    };
    let lookup = claimed.clone();
    let enrolled = state
        .store
        .read(move |conn| peer_by_key(conn, &lookup))
        .await
        .map_err(|e| e.to_string())?
        .filter(|r| r.relation == "downstream");
    let answer = handshake::Server::answer(&state.key, hello, |_| {
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
        Err(e) => return Err(refuse(&state, &mut socket, &claimed, address, e.to_string()).await),
    };
    socket.send_frame(handshake::encode(&server_hello)).await?;
    let proof = recv_handshake(&mut socket).await?;
    let proven = match server.finish(proof) {
        Ok(p) => p,
        Err(e) => return Err(refuse(&state, &mut socket, &claimed, address, e.to_string()).await),
    };
    socket
        .send_frame(handshake::encode(&HandshakeFrame::Welcome {
            area: state.node.area.to_string(),
        }))
        .await?;
    let row = enrolled.ok_or("enrollment vanished")?;
    // The downstream's own version (from its hello) and when it was last seen, for the nodes page.
    let (seen_id, seen_version, seen_at) = (
        proven.node_id.clone(),
        proven.software.clone(),
        state.clock.now_ms(),
    );
    state
        .store
        .write(move |conn| {
            conn.execute(
                "UPDATE sync_peers SET version = ?2, last_seen_ms = ?3, last_error = NULL WHERE node_id = ?1",
                params![seen_id, seen_version, seen_at],
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| e.to_string())?;
    let area: AreaCode = row
        .area
        .parse()
        .map_err(|e: township_sync::AreaError| e.to_string())?;
    let peer = PeerInfo {
        node_id: proven.node_id.clone(),
        area,
        relation: Relation::Downstream,
    };
    let cancel = state.shutdown.child_token();
    let connection = state.sync.register(&proven.node_id, cancel.clone());
    // A revocation that landed between the enrollment check and the registration above found no
    // connection to close; the database has it, so look again now that this one is registered.
    let revoked_id = proven.node_id.clone();
    let revoked = state
        .store
        .read(move |conn| {
            Ok::<_, StoreError>(
                conn.query_row(
                    "SELECT revoked_ms IS NOT NULL FROM sync_peers WHERE node_id = ?1",
                    [&revoked_id],
                    |r| r.get::<_, bool>(0),
                )
                .optional()?
                .unwrap_or(true),
            )
        })
        .await
        .map_err(|e| e.to_string())?;
    if revoked {
        state.sync.unregister(&proven.node_id, connection);
        return Err("revoked while connecting".into());
    }
    state.sync.update(Some(&proven.node_id), |l| {
        l.connected = true;
        l.since_ms = Some(state.clock.now_ms());
        l.last_error = None;
    });
    let result = run_session(
        &state,
        &mut socket,
        peer,
        row.acked_seq,
        Some(proven.node_id.clone()),
        cancel,
    )
    .await;
    state.sync.unregister(&proven.node_id, connection);
    state.sync.update(Some(&proven.node_id), |l| {
        l.connected = state.sync.connections(&proven.node_id) > 0;
        l.last_error = result.as_ref().err().cloned();
    });
    result
}

async fn audit_refusal(
    state: &AppState,
    key: &str,
    address: Option<std::net::IpAddr>,
    reason: &str,
) {
    let (ctx, key, address, reason) = (
        state.write_ctx(),
        key.chars().take(64).collect::<String>(),
        crate::audit::tally::address_group(address),
        reason.to_string(),
    );
    let _ = state
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

/// Runs the record sync engine over an authenticated connection until it closes, fails, or `cancel`.
async fn run_session<S: FrameIo>(
    state: &AppState,
    io: &mut S,
    peer: PeerInfo,
    acked_seq: i64,
    peer_row: Option<String>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let our_area = state.node.area.clone();
    let peer_id = peer.node_id.clone();
    let mut link = Some(Link::new(our_area, peer, acked_seq));
    let docs = state.docs.clone();

    let (l, frames, mut seen) = {
        let mut l = link.take().ok_or("no link")?;
        let docs = docs.clone();
        state
            .store
            .write(move |conn| {
                let frames = l.start(conn, &docs)?;
                let seq = DocStore::current_seq(conn)?;
                Ok::<_, StoreError>((l, frames, seq))
            })
            .await
            .map_err(|e| e.to_string())?
    };
    link = Some(l);
    let mut throttle = Throttle::new(state.config.sync.bandwidth_limit);
    let stall_timeout = state.config.sync.stall_timeout;
    for f in frames {
        send(io, &mut throttle, engine::encode(&f), stall_timeout).await?;
    }
    let mut polls = 0u32;
    let mut fetching: Option<String> = None;
    let mut streaming = false;
    let mut unavailable: std::collections::HashSet<String> = std::collections::HashSet::new();
    let peer_for_blobs = link.as_ref().map(|l| l.peer().clone()).ok_or("no link")?;
    let mut last_heard = tokio::time::Instant::now();
    let mut last_ping = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Err("closed by this node (revoked or shutting down)".into()),
            incoming = io.recv_frame() => {
                let bytes = match incoming {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(b)) => b,
                };
                last_heard = tokio::time::Instant::now();
                let frame = engine::decode(&bytes)?;
                let mut l = link.take().ok_or("no link")?;
                let (docs, ctx, peer_id2) = (docs.clone(), state.write_ctx(), peer_id.clone());
                let seq_ctx = state.write_ctx();
                let (l, outcome) = state
                    .store
                    .write(move |conn| {
                        let outcome = l.receive(conn, &docs, frame)?;
                        for (id, reason) in &outcome.refused {
                            ctx.audit(conn, Event::new(&format!("node:{peer_id2}"), "sync.refused", &format!("record/{id}")).detail(json!({"reason": reason})))?;
                        }
                        Ok::<_, StoreError>((l, outcome))
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                link = Some(l);
                for meta in &outcome.changed {
                    seq_ctx.saw_seq(meta.seq);
                }
                for f in &outcome.frames {
                    {
                    send(io, &mut throttle, engine::encode(f), stall_timeout).await?;
                }
                }
                if let Some(upto) = outcome.acked {
                    persist_ack(state, &peer_id, upto).await;
                }
                for frame in outcome.blobs {
                    let replies = match frame {
                        Frame::StreamBatch { .. } | Frame::StreamAck { .. } => {
                            handle_stream(state, &peer_for_blobs, frame, &mut streaming).await?
                        }
                        other => handle_blob(state, &peer_for_blobs, other, &mut fetching, &mut unavailable).await?,
                    };
                    for reply in replies {
                        {
                    send(io, &mut throttle, engine::encode(&reply), stall_timeout).await?;
                }
                    }
                }
                state.sync.update(peer_row.as_deref(), |l| l.last_success_ms = Some(state.clock.now_ms()));
            }
            () = tokio::time::sleep(POLL) => {
                polls += 1;
                if last_heard.elapsed() > stall_timeout {
                    return Err(format!("link stalled: nothing heard for {} s", stall_timeout.as_secs()));
                }
                if last_ping.elapsed() > stall_timeout / 3 {
                    last_ping = tokio::time::Instant::now();
                    send(io, &mut throttle, engine::encode(&Frame::Ping), stall_timeout).await?;
                }
                let tick = polls.is_multiple_of(TICK_EVERY);
                // Most polls find nothing new: skip the database unless a record changed or a tick is due.
                if !tick && state.latest_seq.load(std::sync::atomic::Ordering::Relaxed) <= seen {
                    continue;
                }
                let mut l = link.take().ok_or("no link")?;
                let docs = docs.clone();
                let (l, frames, now_seq, pending) = state
                    .store
                    .write(move |conn| {
                        let mut frames = Vec::new();
                        let now_seq = DocStore::current_seq(conn)?;
                        if now_seq > seen {
                            for meta in DocStore::changed_since(conn, seen, 10_000)? {
                                frames.extend(l.local_change(conn, &docs, &meta)?);
                            }
                        }
                        if tick {
                            frames.extend(l.tick(conn, &docs)?);
                        }
                        let pending = l.pending(conn);
                        let pending_in = l.pending_in();
                        Ok::<_, StoreError>((l, frames, now_seq, (pending, pending_in)))
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                link = Some(l);
                seen = now_seq;
                for f in &frames {
                    {
                    send(io, &mut throttle, engine::encode(f), stall_timeout).await?;
                }
                }
                let (pending, pending_in) = pending;
                state.sync.update(peer_row.as_deref(), |l| {
                    l.pending_out = pending;
                    l.pending_in = pending_in;
                });
                // Records first, then append-only streams up the tree, then attachments.
                if pending == 0 && !streaming && peer_for_blobs.relation == Relation::Upstream
                    && let Some(batch) = next_stream_batch(state, &peer_for_blobs.node_id).await
                {
                    {
                    send(io, &mut throttle, engine::encode(&batch), stall_timeout).await?;
                }
                    streaming = true;
                }
                if fetching.is_none() && !streaming && pending == 0 && polls.is_multiple_of(BLOB_LOOK_EVERY)
                    && let Some(sha) = next_missing_blob(state, &unavailable).await
                {
                    let offset = state.blobs.partial_len(&sha);
                    let request = Frame::BlobRequest { sha256: sha.clone(), offset };
                    send(io, &mut throttle, engine::encode(&request), stall_timeout).await?;
                    fetching = Some(sha);
                }
            }
        }
    }
}

/// Stream records shipped per batch at most.
const STREAM_BATCH: i64 = 500;

/// The next batch of stream records the upstream has not confirmed: this node's own audit chain
/// first, then what downstream nodes shipped here (relayed with their origin).
async fn next_stream_batch(state: &AppState, upstream: &str) -> Option<Frame> {
    let (own, peer) = (state.node.node_id.clone(), upstream.to_string());
    state
        .store
        .read(move |conn| {
            let cursor = |origin: &str| -> rusqlite::Result<i64> {
                Ok(conn
                    .query_row(
                        "SELECT acked FROM stream_cursors WHERE peer = ?1 AND origin = ?2 AND stream = 'audit'",
                        params![peer, origin],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0))
            };
            let after = cursor(&own)?;
            let mut stmt = conn.prepare(
                "SELECT seq, at_ms, actor, action, target, detail, prev_hash, hash FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let records: Vec<engine::StreamRecord> = stmt
                .query_map(params![after, STREAM_BATCH], |r| {
                    let entry = json!({
                        "seq": r.get::<_, i64>(0)?, "at_ms": r.get::<_, i64>(1)?, "actor": r.get::<_, String>(2)?,
                        "action": r.get::<_, String>(3)?, "target": r.get::<_, String>(4)?, "detail": r.get::<_, String>(5)?,
                        "prev_hash": r.get::<_, String>(6)?, "hash": r.get::<_, String>(7)?,
                    });
                    Ok(engine::StreamRecord { seq: r.get(0)?, payload: entry.to_string().into_bytes() })
                })?
                .collect::<Result<_, _>>()?;
            if !records.is_empty() {
                return Ok::<_, StoreError>(Some(Frame::StreamBatch { stream: "audit".into(), origin: own, records }));
            }
            let origins: Vec<String> = conn
                .prepare("SELECT DISTINCT origin FROM stream_records WHERE stream = 'audit' ORDER BY origin")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for origin in origins {
                let after = cursor(&origin)?;
                let mut stmt = conn.prepare(
                    "SELECT seq, payload FROM stream_records WHERE origin = ?1 AND stream = 'audit' AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                let records: Vec<engine::StreamRecord> = stmt
                    .query_map(params![origin, after, STREAM_BATCH], |r| Ok(engine::StreamRecord { seq: r.get(0)?, payload: r.get(1)? }))?
                    .collect::<Result<_, _>>()?;
                if !records.is_empty() {
                    return Ok(Some(Frame::StreamBatch { stream: "audit".into(), origin, records }));
                }
            }
            Ok(None)
        })
        .await
        .ok()
        .flatten()
}

/// Stores stream records from a downstream node (idempotently) and acknowledges them; persists
/// acknowledgements from the upstream.
async fn handle_stream(
    state: &AppState,
    peer: &PeerInfo,
    frame: Frame,
    streaming: &mut bool,
) -> Result<Vec<Frame>, String> {
    match frame {
        Frame::StreamBatch {
            stream,
            origin,
            records,
        } => {
            if peer.relation != Relation::Downstream || stream != "audit" || records.len() > 10_000
            {
                return Ok(Vec::new());
            }
            let Some(upto) = records.iter().map(|r| r.seq).max() else {
                return Ok(Vec::new());
            };
            let (via, now, origin_row, stream_row) = (
                peer.node_id.clone(),
                state.clock.now_ms(),
                origin.clone(),
                stream.clone(),
            );
            state
                .store
                .write(move |conn| {
                    let mut stmt = conn.prepare_cached(
                        "INSERT OR IGNORE INTO stream_records (origin, stream, seq, payload, via, received_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?;
                    for r in &records {
                        stmt.execute(params![origin_row, stream_row, r.seq, r.payload, via, now])?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(vec![Frame::StreamAck {
                stream,
                origin,
                upto,
            }])
        }
        Frame::StreamAck {
            stream,
            origin,
            upto,
        } => {
            *streaming = false;
            let peer_id = peer.node_id.clone();
            state
                .store
                .write(move |conn| {
                    conn.execute(
                        "INSERT INTO stream_cursors (peer, origin, stream, acked) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(peer, origin, stream) DO UPDATE SET acked = max(acked, excluded.acked)",
                        params![peer_id, origin, stream, upto],
                    )?;
                    Ok::<_, StoreError>(())
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    }
}

/// An attachment referenced by a record here whose bytes are not here yet.
async fn next_missing_blob(
    state: &AppState,
    unavailable: &std::collections::HashSet<String>,
) -> Option<String> {
    let skip = unavailable.clone();
    state
        .store
        .read(move |conn| {
            // No LIMIT: with a fixed window, once that many attachments were unavailable from the peer
            // the rest would never be asked for. Rows are read lazily and stop at the first match.
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT a.sha256 FROM incident_attachments a LEFT JOIN blobs b ON b.sha256 = a.sha256
                 WHERE b.sha256 IS NULL",
            )?;
            let mut rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let found = rows.find_map(|row| {
                row.ok()
                    .filter(|s| !skip.contains(s) && crate::blobs::is_sha256_hex(s))
            });
            Ok::<_, StoreError>(found)
        })
        .await
        .ok()
        .flatten()
}

/// Serves and fetches attachments in chunks. Only attachments of records the peer holds are served;
/// fetched ones are verified against their hash before anything refers to them.
async fn handle_blob(
    state: &AppState,
    peer: &PeerInfo,
    frame: Frame,
    fetching: &mut Option<String>,
    unavailable: &mut std::collections::HashSet<String>,
) -> Result<Vec<Frame>, String> {
    match frame {
        Frame::BlobRequest { sha256, offset } => {
            let sha = sha256.clone();
            let areas: Vec<String> = state
                .store
                .read(move |conn| {
                    let mut stmt = conn.prepare(
                        "SELECT i.area FROM incident_attachments a JOIN incidents i ON i.id = a.incident_id WHERE a.sha256 = ?1",
                    )?;
                    Ok::<_, StoreError>(stmt.query_map([sha], |r| r.get(0))?.collect::<Result<_, _>>()?)
                })
                .await
                .map_err(|e| e.to_string())?;
            let allowed = crate::blobs::is_sha256_hex(&sha256)
                && areas
                    .iter()
                    .filter_map(|a| a.parse::<AreaCode>().ok())
                    .any(|a| {
                        peer.holds(
                            &state.node.area,
                            state.docs.flow(crate::incidents::KIND),
                            &a,
                        )
                    });
            if !allowed {
                return Ok(vec![Frame::BlobMissing { sha256 }]);
            }
            let blobs = state.blobs.clone();
            let sha = sha256.clone();
            let chunk =
                tokio::task::spawn_blocking(move || blobs.read_chunk(&sha, offset, BLOB_CHUNK))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            Ok(vec![match chunk {
                Some((data, total)) => Frame::BlobChunk {
                    sha256,
                    offset,
                    total,
                    data,
                },
                None => Frame::BlobMissing { sha256 },
            }])
        }
        Frame::BlobChunk {
            sha256,
            offset,
            total,
            data,
        } => {
            if fetching.as_deref() != Some(sha256.as_str()) || total > 1 << 32 {
                return Ok(Vec::new());
            }
            let blobs = state.blobs.clone();
            let sha = sha256.clone();
            let len =
                tokio::task::spawn_blocking(move || blobs.append_partial(&sha, offset, &data))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            if len < total {
                return Ok(vec![Frame::BlobRequest {
                    sha256,
                    offset: len,
                }]);
            }
            *fetching = None;
            let blobs = state.blobs.clone();
            let sha = sha256.clone();
            let finished = tokio::task::spawn_blocking(move || blobs.finish_partial(&sha))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            match finished {
                Some((content_type, size)) => {
                    let (ctx, sha) = (state.write_ctx(), sha256.clone());
                    state
                        .store
                        .write(move |conn| {
                            crate::blobs::register(
                                conn,
                                &sha,
                                size as usize,
                                content_type,
                                ctx.now_ms(),
                            )
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::debug!(sha256 = %sha256, size, "attachment fetched and verified");
                }
                None => {
                    tracing::warn!(sha256 = %sha256, "a fetched attachment did not match its hash; discarded");
                    unavailable.insert(sha256);
                }
            }
            Ok(Vec::new())
        }
        Frame::BlobMissing { sha256 } => {
            if fetching.as_deref() == Some(sha256.as_str()) {
                *fetching = None;
            }
            unavailable.insert(sha256);
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    }
}

/// Sends one frame within the bandwidth cap; a send that cannot complete within the stall timeout
/// (the peer stopped reading) ends the session.
async fn send<S: FrameIo>(
    io: &mut S,
    throttle: &mut Throttle,
    bytes: Vec<u8>,
    stall_timeout: Duration,
) -> Result<(), String> {
    throttle.take(bytes.len()).await;
    match tokio::time::timeout(stall_timeout, io.send_frame(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "link stalled: a send did not complete in {} s",
            stall_timeout.as_secs()
        )),
    }
}

/// A token bucket for the optional bandwidth cap: sending waits until the bytes fit the rate.
struct Throttle {
    bytes_per_sec: u64,
    allowance: f64,
    last: tokio::time::Instant,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec,
            allowance: bytes_per_sec as f64,
            last: tokio::time::Instant::now(),
        }
    }

    async fn take(&mut self, bytes: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let rate = self.bytes_per_sec as f64;
        let now = tokio::time::Instant::now();
        self.allowance =
            (self.allowance + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.allowance -= bytes as f64;
        if self.allowance < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.allowance / rate)).await;
        }
    }
}

async fn persist_ack(state: &AppState, peer_id: &str, upto: i64) {
    let (id, now) = (peer_id.to_string(), state.clock.now_ms());
    let _ = state
        .store
        .write(move |conn| {
            conn.execute(
                "UPDATE sync_peers SET acked_seq = max(acked_seq, ?2), last_seen_ms = ?3 WHERE node_id = ?1",
                params![id, upto, now],
            )?;
            Ok::<_, StoreError>(())
        })
        .await;
}

/// Keeps a connection to the upstream, reconnecting with exponential backoff and jitter.
pub fn spawn_upstream(state: &AppState) {
    let Some((url, key)) = state.upstream() else {
        return;
    };
    let task_state = state.clone();
    state.tasks.spawn(async move {
        let state = task_state;
        let mut delay = Duration::from_secs(1);
        state.sync.update(None, |l| l.since_ms = Some(state.clock.now_ms()));
        loop {
            let mut established = false;
            let result = connect_upstream(&state, &url, &key, &mut established).await;
            state.sync.update(None, |l| {
                l.connected = false;
                l.since_ms = Some(state.clock.now_ms());
                l.last_error = result.as_ref().err().cloned();
            });
            // A link that came up and later broke starts again from a short delay; only repeated
            // failures to connect back off towards a minute.
            if established || result.is_ok() {
                delay = Duration::from_secs(1);
            }
            if let Err(e) = &result {
                tracing::info!(error = %crate::logging::Untrusted(e), retry_in_ms = delay.as_millis() as u64, "upstream link down");
            }
            let jitter = Duration::from_millis(u64::from(ring_jitter()) % (delay.as_millis() as u64 / 2 + 1));
            tokio::select! {
                () = state.shutdown.cancelled() => break,
                () = tokio::time::sleep(delay + jitter) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    });
}

fn ring_jitter() -> u16 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u16::from_le_bytes(b)
}

async fn connect_upstream(
    state: &AppState,
    url: &str,
    pinned: &PublicKey,
    established: &mut bool,
) -> Result<(), String> {
    let ws_url = format!(
        "{}/api/v1/sync",
        url.trim_end_matches('/')
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    );
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES));
    let (mut socket, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(ws_url.as_str(), Some(config), false),
    )
    .await
    .map_err(|_| format!("connecting to {ws_url} timed out"))?
    .map_err(|e| format!("cannot connect to {ws_url}: {e}"))?;
    let (client, hello) =
        handshake::Client::start(&state.key, *pinned).map_err(|e| e.to_string())?;
    socket.send_frame(handshake::encode(&hello)).await?;
    let server_hello = recv_handshake(&mut socket).await?;
    let (proven, proof) = client.finish(server_hello).map_err(|e| e.to_string())?;
    socket.send_frame(handshake::encode(&proof)).await?;
    let area = match recv_handshake(&mut socket).await? {
        HandshakeFrame::Welcome { area } => area.parse::<AreaCode>().map_err(|e| e.to_string())?,
        HandshakeFrame::Refused { reason } => return Err(format!("upstream refused us: {reason}")),
        _ => return Err("unexpected handshake frame".into()),
    };
    if !area.is_above(&state.node.area) {
        return Err(format!(
            "the upstream serves {area}, which does not contain this node's area"
        ));
    }
    // Remember the upstream so its acknowledgements persist across reconnects.
    let (id, key_text, area_text, now) = (
        proven.node_id.clone(),
        proven.public_key.to_string(),
        area.to_string(),
        state.clock.now_ms(),
    );
    let acked = state
        .store
        .write(move |conn| {
            conn.execute(
                "INSERT INTO sync_peers (node_id, public_key, area, name, relation, enrolled_ms) VALUES (?1, ?2, ?3, 'upstream', 'upstream', ?4)
                 ON CONFLICT(node_id) DO UPDATE SET area = excluded.area",
                params![id, key_text, area_text, now],
            )?;
            Ok::<_, StoreError>(conn.query_row("SELECT acked_seq FROM sync_peers WHERE node_id = ?1", [&id], |r| r.get::<_, i64>(0))?)
        })
        .await
        .map_err(|e| e.to_string())?;
    state.sync.update(None, |l| {
        l.connected = true;
        l.since_ms = Some(state.clock.now_ms());
        l.last_error = None;
    });
    tracing::info!(upstream = %proven.node_id, %area, "connected to upstream");
    *established = true;
    let peer = PeerInfo {
        node_id: proven.node_id,
        area,
        relation: Relation::Upstream,
    };
    run_session(
        state,
        &mut socket,
        peer,
        acked,
        None,
        state.shutdown.child_token(),
    )
    .await
}
