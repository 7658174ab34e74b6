//! The record sync engine: one [`Link`] per connection to a peer, transport-agnostic and
//! deterministic, so the same code runs over a WebSocket and inside the seeded simulation.
//!
//! On connect each side sends a [`Frame::Manifest`] of the records it changed since the peer last
//! acknowledged (only those in the peer's scope). Records whose heads differ are synced with
//! automerge's sync protocol, many records per frame, with fresh sync state per connection. When the
//! receiver holds everything a manifest named, it acknowledges the manifest's sequence number, which
//! the sender persists so the next connection starts from there. After catch-up, local changes are
//! pushed as they happen. A record whose sync stops making progress is restarted from a fresh state.
//!
//! Scope and authority (see `DESIGN.md`): a peer receives only records it should hold, and its changes
//! are accepted only for records it may write; anything else is refused and reported, never stored.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::area::AreaCode;
use crate::docstore::{DocError, DocMeta, DocStore, Flow, Merged, Sender};

pub const PROTOCOL_VERSION: u32 = 1;
/// Records named in one manifest frame at most; larger catch-ups send several.
pub const MANIFEST_CHUNK: usize = 2_000;
/// Sync messages carried in one frame at most.
pub const SYNC_BATCH: usize = 256;
/// Ticks without progress after which a record's sync is restarted from a fresh state.
pub const STALL_TICKS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub id: Uuid,
    pub kind: String,
    pub scope: String,
    pub heads: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocMessage {
    pub id: Uuid,
    pub kind: String,
    pub scope: String,
    #[serde(with = "serde_bytes_compat")]
    pub message: Vec<u8>,
}

/// What crosses the link after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Records changed since the peer's last acknowledgement; `upto` is the sender's sequence number
    /// when the manifest was made. `last` marks the final chunk.
    Manifest {
        upto: i64,
        entries: Vec<ManifestEntry>,
        last: bool,
    },
    /// Automerge sync messages, one per record.
    Sync {
        docs: Vec<DocMessage>,
    },
    /// The receiver holds everything the sender's manifest up to `upto` named.
    Ack {
        upto: i64,
    },
    /// A record the receiver would not take from this peer, and why.
    Refused {
        id: Uuid,
        reason: String,
    },
    /// Asks for part of an attachment referenced by a synced record, from `offset` on (resumable).
    BlobRequest {
        sha256: String,
        offset: u64,
    },
    /// Part of an attachment; `total` is its full size.
    BlobChunk {
        sha256: String,
        offset: u64,
        total: u64,
        #[serde(with = "serde_bytes_compat")]
        data: Vec<u8>,
    },
    /// The sender does not have (or will not give) this attachment.
    BlobMissing {
        sha256: String,
    },
    /// Records of an append-only stream (the audit chain, later sensor readings and receipts)
    /// written at node `origin`, in sequence order, shipped upstream by cursor.
    StreamBatch {
        stream: String,
        origin: String,
        records: Vec<StreamRecord>,
    },
    /// The receiver stored everything of `origin`'s `stream` up to `upto`.
    StreamAck {
        stream: String,
        origin: String,
        upto: i64,
    },
    /// Liveness: a link that carries nothing, not even these, is stalled and gets reconnected.
    Ping,
    Pong,
}

/// One record of an append-only stream: its sequence number at its origin and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub seq: i64,
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
}

mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// Largest frame, on the wire and once inflated.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A frame that cannot be put on or taken off the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Bytes from the peer that are not a frame: the connection is closed.
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("a frame inflates past the frame limit")]
    TooLarge,
    /// A frame this node built could not be serialised: a bug here, never something to send as an
    /// empty frame the peer would misread.
    #[error("a frame could not be encoded: {0}")]
    Unencodable(String),
}
/// Frames smaller than this go as they are; deflating them would save nothing worth the time.
const DEFLATE_ABOVE: usize = 512;
const TAG_RAW: u8 = 0;
const TAG_DEFLATE: u8 = 1;

/// Frames travel as postcard, a compact serde encoding in which automerge messages stay binary,
/// behind one tag byte: raw, or deflated when that is smaller. A sync frame carries many records
/// with the same field names, actor ids, areas and author claims, which deflate well; village
/// links are slow and often metered.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    use std::io::Write;
    let raw = postcard::to_allocvec(frame).map_err(|e| FrameError::Unencodable(e.to_string()))?;
    if raw.len() >= DEFLATE_ABOVE {
        let mut deflater = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(raw.len() / 2 + 1),
            flate2::Compression::fast(),
        );
        if deflater.write_all(&[TAG_DEFLATE]).is_ok()
            && deflater.write_all(&raw).is_ok()
            && let Ok(deflated) = deflater.finish()
            && deflated.len() + 1 < raw.len()
        {
            let mut out = Vec::with_capacity(deflated.len() + 1);
            out.push(TAG_DEFLATE);
            out.extend_from_slice(&deflated);
            return Ok(out);
        }
    }
    let mut out = Vec::with_capacity(raw.len() + 1);
    out.push(TAG_RAW);
    out.extend_from_slice(&raw);
    Ok(out)
}

/// Decodes a frame; any malformed input is an error, never a panic. A deflated frame is inflated
/// only up to [`MAX_FRAME_BYTES`]: a few kilobytes that claim to expand to gigabytes are refused.
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    use std::io::Read;
    match bytes.split_first() {
        Some((&TAG_RAW, rest)) => {
            postcard::from_bytes(rest).map_err(|e| FrameError::Malformed(e.to_string()))
        }
        Some((&TAG_DEFLATE, rest)) => {
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(rest)
                .take(MAX_FRAME_BYTES as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| FrameError::Malformed(e.to_string()))?;
            if inflated.len() > MAX_FRAME_BYTES {
                return Err(FrameError::TooLarge);
            }
            // The tag is deflated too, so a frame cannot be inflated into another kind of wrapper.
            match inflated.split_first() {
                Some((&TAG_DEFLATE, raw)) => {
                    postcard::from_bytes(raw).map_err(|e| FrameError::Malformed(e.to_string()))
                }
                _ => Err(FrameError::Malformed("bad inner tag".into())),
            }
        }
        _ => Err(FrameError::Malformed("unknown tag".into())),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The peer is above us in the tree (we connected to it).
    Upstream,
    /// The peer is below us (it connected to us).
    Downstream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_id: String,
    pub area: AreaCode,
    pub relation: Relation,
}

impl PeerInfo {
    /// Should the peer hold a record of a kind travelling by `flow`, scoped to `scope`? Downstream
    /// nodes get what lies in their area and, for [`Flow::Tree`] kinds, what is scoped to an area
    /// containing them (a county-wide broadcast); upstream gets what lies in our area.
    pub fn holds(&self, our_area: &AreaCode, flow: Flow, scope: &AreaCode) -> bool {
        match self.relation {
            Relation::Downstream => flow.reaches(&self.area, scope),
            Relation::Upstream => our_area.contains(scope),
        }
    }

    /// Whether anything about such a record may come from this peer at all: from below, what the
    /// peer may write or should hold (it may ask about what it only reads); from above, only what
    /// this node should hold.
    pub fn may_send(&self, our_area: &AreaCode, flow: Flow, scope: &AreaCode) -> bool {
        match self.relation {
            Relation::Downstream => {
                self.may_write(our_area, scope) || self.holds(our_area, flow, scope)
            }
            Relation::Upstream => flow.reaches(our_area, scope),
        }
    }

    /// The merge rule for the author claims of this peer's changes.
    pub fn sender(&self) -> Sender<'_> {
        match self.relation {
            Relation::Downstream => Sender::Below(&self.area),
            Relation::Upstream => Sender::Trusted,
        }
    }

    /// May changes to a record scoped to `scope` come from this peer? From below: only inside the
    /// peer's own area. From above (the pinned upstream): anything we hold, since our ancestors may
    /// change what lies below them and relay what lies above us.
    pub fn may_write(&self, our_area: &AreaCode, scope: &AreaCode) -> bool {
        match self.relation {
            Relation::Downstream => self.area.contains(scope),
            Relation::Upstream => our_area.contains(scope) || scope.contains(our_area),
        }
    }
}

/// What handling a frame produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub frames: Vec<Frame>,
    /// The peer acknowledged our changes up to this sequence number: persist it.
    pub acked: Option<i64>,
    /// Records refused from this peer, with the reason (to audit).
    pub refused: Vec<(Uuid, String)>,
    /// Records that changed here (to push on to other peers).
    pub changed: Vec<DocMeta>,
    /// Attachment and stream frames, which the node handles (the engine knows records only).
    pub blobs: Vec<Frame>,
}

struct DocSync {
    state: automerge::sync::State,
    kind: String,
    scope: AreaCode,
    /// Tick at which this record last heard from the peer.
    progress: u64,
    /// Messages received in a row that changed nothing here while the record is not settled. Automerge
    /// never resends a change it believes it sent, so a lost message can leave both sides asking
    /// and answering forever; past a few such rounds the state is reset and everything is offered again.
    idle_rounds: u32,
}

/// Unproductive exchanges tolerated before a record's sync state is reset.
pub const IDLE_ROUNDS: u32 = 4;

/// One side of one connection.
pub struct Link {
    our_area: AreaCode,
    peer: PeerInfo,
    docs: BTreeMap<Uuid, DocSync>,
    /// Manifests received and not yet fully held: upto -> records still missing.
    incoming: BTreeMap<i64, BTreeSet<Uuid>>,
    /// Heads named by those manifests, per record.
    wanted: BTreeMap<Uuid, Vec<ChangeHash>>,
    manifest_complete: BTreeSet<i64>,
    acked_seq: i64,
    tick: u64,
}

fn parse_heads(heads: &[String]) -> Vec<ChangeHash> {
    heads.iter().filter_map(|h| h.parse().ok()).collect()
}

impl Link {
    pub fn new(our_area: AreaCode, peer: PeerInfo, acked_seq: i64) -> Link {
        Link {
            our_area,
            peer,
            docs: BTreeMap::new(),
            incoming: BTreeMap::new(),
            wanted: BTreeMap::new(),
            manifest_complete: BTreeSet::new(),
            acked_seq,
            tick: 0,
        }
    }

    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Records whose sync has not settled on this link (the peer's heads are not known to equal ours).
    pub fn pending(&self, conn: &Connection) -> usize {
        self.docs
            .iter()
            .filter(|(id, d)| !settled(conn, **id, d))
            .count()
    }

    /// Records the peer announced that this node does not hold yet (incoming changes still to arrive).
    pub fn pending_in(&self) -> usize {
        self.incoming.values().map(BTreeSet::len).sum()
    }

    /// The manifest that opens the connection.
    pub fn start(&mut self, conn: &Connection, store: &DocStore) -> Result<Vec<Frame>, DocError> {
        let upto = DocStore::current_seq(conn)?;
        let mut frames = Vec::new();
        let mut since = self.acked_seq;
        loop {
            let batch = DocStore::changed_since(conn, since, MANIFEST_CHUNK)?;
            let done = batch.len() < MANIFEST_CHUNK;
            if let Some(last) = batch.last() {
                since = last.seq;
            }
            let entries: Vec<ManifestEntry> = batch
                .into_iter()
                .filter(|m| {
                    m.seq <= upto
                        && self
                            .peer
                            .holds(&self.our_area, store.flow(&m.kind), &m.scope)
                })
                .map(|m| ManifestEntry {
                    id: m.id,
                    kind: m.kind,
                    scope: m.scope.to_string(),
                    heads: m.heads.iter().map(|h| h.to_string()).collect(),
                })
                .collect();
            frames.push(Frame::Manifest {
                upto,
                entries,
                last: done,
            });
            if done {
                break;
            }
        }
        Ok(frames)
    }

    fn entry(&mut self, id: Uuid, kind: &str, scope: &AreaCode) -> &mut DocSync {
        let tick = self.tick;
        self.docs.entry(id).or_insert_with(|| DocSync {
            state: automerge::sync::State::new(),
            kind: kind.to_string(),
            scope: scope.clone(),
            progress: tick,
            idle_rounds: 0,
        })
    }

    fn generate(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        id: Uuid,
    ) -> Result<Option<DocMessage>, DocError> {
        let Some(sync) = self.docs.get_mut(&id) else {
            return Ok(None);
        };
        let message = store.sync_generate(conn, id, &mut sync.state)?;
        Ok(message.map(|message| DocMessage {
            id,
            kind: sync.kind.clone(),
            scope: sync.scope.to_string(),
            message,
        }))
    }

    fn batch(messages: Vec<DocMessage>) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut rest = messages;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(SYNC_BATCH));
            frames.push(Frame::Sync { docs: rest });
            rest = tail;
        }
        frames
    }

    /// A record changed here: push it to the peer if the peer holds it.
    pub fn local_change(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        meta: &DocMeta,
    ) -> Result<Vec<Frame>, DocError> {
        if !self
            .peer
            .holds(&self.our_area, store.flow(&meta.kind), &meta.scope)
        {
            return Ok(Vec::new());
        }
        self.entry(meta.id, &meta.kind, &meta.scope);
        Ok(Self::batch(
            self.generate(conn, store, meta.id)?.into_iter().collect(),
        ))
    }

    /// Handles one frame from the peer.
    pub fn receive(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        frame: Frame,
    ) -> Result<Outcome, DocError> {
        let mut out = Outcome::default();
        match frame {
            Frame::Manifest {
                upto,
                entries,
                last,
            } => {
                let mut messages = Vec::new();
                let missing = self.incoming.entry(upto).or_default();
                let mut to_sync = Vec::new();
                for e in entries {
                    let Ok(scope) = e.scope.parse::<AreaCode>() else {
                        out.refused.push((e.id, format!("bad scope {}", e.scope)));
                        continue;
                    };
                    // What we would not accept from this peer is not worth asking for.
                    if !self
                        .peer
                        .may_send(&self.our_area, store.flow(&e.kind), &scope)
                    {
                        continue;
                    }
                    let heads = parse_heads(&e.heads);
                    if store.has_heads(conn, e.id, &heads)? {
                        continue;
                    }
                    missing.insert(e.id);
                    self.wanted.insert(e.id, heads);
                    to_sync.push((e.id, e.kind, scope));
                }
                if last {
                    self.manifest_complete.insert(upto);
                }
                for (id, kind, scope) in to_sync {
                    self.entry(id, &kind, &scope);
                    if let Some(m) = self.generate(conn, store, id)? {
                        messages.push(m);
                    }
                }
                out.frames.extend(Self::batch(messages));
                // Our own manifest goes out at start(); the peer's needs are met by its sync messages.
            }
            Frame::Sync { docs } => {
                let mut replies = Vec::new();
                for m in docs {
                    let Ok(scope) = m.scope.parse::<AreaCode>() else {
                        out.refused.push((m.id, format!("bad scope {}", m.scope)));
                        continue;
                    };
                    if !self
                        .peer
                        .may_send(&self.our_area, store.flow(&m.kind), &scope)
                    {
                        let reason = format!(
                            "{} may not send {} records scoped to {scope}",
                            self.peer.area, m.kind
                        );
                        out.refused.push((m.id, reason.clone()));
                        out.frames.push(Frame::Refused { id: m.id, reason });
                        continue;
                    }
                    let tick = self.tick;
                    let sync = self.entry(m.id, &m.kind, &scope);
                    sync.progress = tick;
                    // A peer may ask about records it should hold even when it may not change them (a
                    // village learning a county broadcast); its message must then carry no changes.
                    let writable = self.peer.may_write(&self.our_area, &scope);
                    let sender = self.peer.sender();
                    let mut st = self
                        .docs
                        .get_mut(&m.id)
                        .map(|d| std::mem::replace(&mut d.state, automerge::sync::State::new()))
                        .unwrap_or_default();
                    // The writable path answers from the document it already loaded.
                    let (result, answer) = if writable {
                        match store.sync_exchange(
                            conn, sender, m.id, &m.kind, &scope, &m.message, &mut st, true,
                        ) {
                            Ok((merged, answer)) => (Ok(merged), Some(answer)),
                            Err(e) => (Err(e), None),
                        }
                    } else {
                        (
                            receive_read_only(conn, store, m.id, &m.message, &mut st),
                            None,
                        )
                    };
                    if let Some(d) = self.docs.get_mut(&m.id) {
                        d.state = st;
                    }
                    match result {
                        Ok(Merged::Changed(meta)) => {
                            if let Some(d) = self.docs.get_mut(&m.id) {
                                d.idle_rounds = 0;
                            }
                            out.changed.push(meta);
                        }
                        Ok(Merged::Unchanged) => {
                            if let Some(d) = self.docs.get_mut(&m.id)
                                && !settled(conn, m.id, d)
                            {
                                d.idle_rounds += 1;
                                if d.idle_rounds >= IDLE_ROUNDS {
                                    d.idle_rounds = 0;
                                    d.state = automerge::sync::State::new();
                                }
                            }
                        }
                        Err(
                            e @ (DocError::Invalid(_)
                            | DocError::Corrupt { .. }
                            | DocError::Quarantined { .. }),
                        ) => {
                            let reason = e.to_string();
                            out.refused.push((m.id, reason.clone()));
                            out.frames.push(Frame::Refused { id: m.id, reason });
                            self.docs.remove(&m.id);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    let reply = match answer {
                        Some(message) => message.map(|message| DocMessage {
                            id: m.id,
                            kind: m.kind.clone(),
                            scope: scope.to_string(),
                            message,
                        }),
                        None => self.generate(conn, store, m.id)?,
                    };
                    if let Some(reply) = reply {
                        replies.push(reply);
                    }
                    self.settle(conn, store, m.id)?;
                }
                out.frames.extend(Self::batch(replies));
            }
            Frame::Ack { upto } => {
                if upto > self.acked_seq {
                    self.acked_seq = upto;
                    out.acked = Some(upto);
                }
            }
            Frame::Refused { id, reason } => {
                // The peer would not take our record; stop offering it on this connection.
                self.docs.remove(&id);
                out.refused.push((id, format!("peer refused: {reason}")));
            }
            Frame::Ping => out.frames.push(Frame::Pong),
            Frame::Pong => {}
            other @ (Frame::BlobRequest { .. }
            | Frame::BlobChunk { .. }
            | Frame::BlobMissing { .. }
            | Frame::StreamBatch { .. }
            | Frame::StreamAck { .. }) => out.blobs.push(other),
        }
        out.frames.extend(self.acks());
        Ok(out)
    }

    /// Marks a record held once we have every head the peer's manifest named.
    fn settle(&mut self, conn: &Connection, store: &DocStore, id: Uuid) -> Result<(), DocError> {
        if let Some(heads) = self.wanted.get(&id)
            && store.has_heads(conn, id, heads)?
        {
            self.wanted.remove(&id);
            for missing in self.incoming.values_mut() {
                missing.remove(&id);
            }
        }
        Ok(())
    }

    fn acks(&mut self) -> Vec<Frame> {
        let done: Vec<i64> = self
            .incoming
            .iter()
            .filter(|(upto, missing)| missing.is_empty() && self.manifest_complete.contains(upto))
            .map(|(upto, _)| *upto)
            .collect();
        let mut frames = Vec::new();
        for upto in done {
            self.incoming.remove(&upto);
            self.manifest_complete.remove(&upto);
            frames.push(Frame::Ack { upto });
        }
        frames
    }

    /// Advances time by one tick; restarts records whose sync has not settled and has heard nothing
    /// from the peer for a while (a message was lost), from a fresh sync state.
    pub fn tick(&mut self, conn: &Connection, store: &DocStore) -> Result<Vec<Frame>, DocError> {
        self.tick += 1;
        let now = self.tick;
        // Settled records need no state: a later change starts a fresh exchange. Dropping them keeps
        // this map, and every look at it, the size of the work in flight rather than of every record
        // the connection ever carried.
        self.docs
            .retain(|id, d| now - d.progress < STALL_TICKS || !settled(conn, *id, d));
        let stalled: Vec<Uuid> = self
            .docs
            .iter()
            .filter(|(_, d)| now - d.progress >= STALL_TICKS)
            .map(|(id, _)| *id)
            .collect();
        let mut messages = Vec::new();
        for id in stalled {
            if let Some(d) = self.docs.get_mut(&id) {
                d.state = automerge::sync::State::new();
                d.progress = now;
            }
            if let Some(m) = self.generate(conn, store, id)? {
                messages.push(m);
            }
        }
        Ok(Self::batch(messages))
    }
}

/// Settled: the peer has told us its heads and they are exactly ours.
fn settled(conn: &Connection, id: Uuid, d: &DocSync) -> bool {
    let Some(theirs) = &d.state.their_heads else {
        return false;
    };
    let ours = match DocStore::meta(conn, id) {
        Ok(Some((meta, _))) => meta.heads,
        Ok(None) => Vec::new(),
        Err(_) => return false,
    };
    let mut a = theirs.clone();
    let mut b = ours;
    a.sort();
    b.sort();
    a == b
}

/// Sync with a peer that may read but not change a record: answer its questions, refuse its changes.
fn receive_read_only(
    conn: &Connection,
    store: &DocStore,
    id: Uuid,
    message: &[u8],
    state: &mut automerge::sync::State,
) -> Result<Merged, DocError> {
    let decoded = automerge::sync::Message::decode(message)
        .map_err(|e| DocError::Invalid(format!("record {id}: undecodable sync message: {e}")))?;
    if !decoded.changes.is_empty() {
        return Err(DocError::Invalid(format!(
            "record {id}: this peer may read but not change it"
        )));
    }
    let meta = DocStore::meta(conn, id)?.map(|(m, _)| m);
    let Some(meta) = meta else {
        return Ok(Merged::Unchanged);
    };
    store.sync_receive(
        conn,
        Sender::Trusted,
        id,
        &meta.kind,
        &meta.scope,
        message,
        state,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::author::{Author, Person};
    use automerge::transaction::Transactable;
    use proptest::prelude::*;

    fn node(area: &str, actor: u8) -> (Connection, DocStore, AreaCode) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::docstore::SCHEMA).unwrap();
        (
            conn,
            DocStore::new(automerge::ActorId::from([actor; 16]), vec![], || 0),
            area.parse().unwrap(),
        )
    }

    fn peer(area: &str, relation: Relation) -> PeerInfo {
        PeerInfo {
            node_id: "p".into(),
            area: area.parse().unwrap(),
            relation,
        }
    }

    #[test]
    fn scope_rules_follow_the_tree() {
        let township: AreaCode = "330723001".parse().unwrap();
        let village = peer("330723001001", Relation::Downstream);
        let county = peer("330723", Relation::Upstream);
        let own: AreaCode = "330723001001".parse().unwrap();
        let sibling: AreaCode = "330723001002".parse().unwrap();
        let county_scope: AreaCode = "330723".parse().unwrap();
        let tree = Flow::Tree;
        assert!(village.holds(&township, tree, &own) && village.may_write(&township, &own));
        assert!(
            !village.holds(&township, tree, &sibling) && !village.may_write(&township, &sibling)
        );
        assert!(
            village.holds(&township, tree, &county_scope)
                && !village.may_write(&township, &county_scope)
        );
        assert!(
            county.holds(&township, tree, &own) && !county.holds(&township, tree, &county_scope)
        );
        // Credentials travel up only: the village holds its own accounts, not the county's.
        let up = Flow::UpOnly;
        assert!(village.holds(&township, up, &own));
        assert!(!village.holds(&township, up, &county_scope));
        assert!(!village.holds(&township, up, &township));
        assert!(county.holds(&township, up, &own));
        assert!(!county.may_send(&township, up, &county_scope));
        assert!(county.may_send(&township, tree, &county_scope));
        assert!(county.may_write(&township, &own) && county.may_write(&township, &county_scope));
    }

    /// Pushes record `id` from a hostile village straight into the township's downstream link,
    /// bypassing the village's own filters, until the township stops answering. Returns how many
    /// times the township refused it.
    fn push_from_below(
        v: (&Connection, &DocStore),
        down: &mut Link,
        t: (&Connection, &DocStore),
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
    ) -> usize {
        let mut state = automerge::sync::State::new();
        let mut refused = 0;
        for _ in 0..8 {
            let Some(message) = v.1.sync_generate(v.0, id, &mut state).unwrap() else {
                break;
            };
            let frame = Frame::Sync {
                docs: vec![DocMessage {
                    id,
                    kind: kind.into(),
                    scope: scope.to_string(),
                    message,
                }],
            };
            let out = down.receive(t.0, t.1, frame).unwrap();
            refused += out.refused.len();
            for f in out.frames {
                if let Frame::Sync { docs } = f {
                    for d in docs {
                        let _ = v.1.sync_receive(
                            v.0,
                            Sender::Trusted,
                            id,
                            kind,
                            scope,
                            &d.message,
                            &mut state,
                        );
                    }
                }
            }
        }
        refused
    }

    #[test]
    fn a_village_writing_outside_its_area_is_refused_and_nothing_is_stored() {
        // The village forges records in a sibling village and at county level and pushes them up.
        let (v_conn, v_store, v_area) = node("330723001001", 1);
        let (t_conn, t_store, t_area) = node("330723001", 2);
        let sibling: AreaCode = "330723001002".parse().unwrap();
        let county: AreaCode = "330723".parse().unwrap();
        let mut up = Link::new(v_area.clone(), peer("330723001", Relation::Upstream), 0);
        let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
        for scope in [&sibling, &county] {
            let meta = v_store
                .create(&v_conn, &Author::node(v_area.clone()), "note", scope, |d| {
                    Ok(d.put(automerge::ROOT, "t", "forged").map(|_| ())?)
                })
                .unwrap();
            let refused = push_from_below(
                (&v_conn, &v_store),
                &mut down,
                (&t_conn, &t_store),
                meta.id,
                "note",
                scope,
            );
            assert!(refused >= 1, "{scope}: refused");
            assert!(
                DocStore::meta(&t_conn, meta.id).unwrap().is_none(),
                "nothing stored for {scope}"
            );
            // And the honest path never offers them.
            assert!(
                up.local_change(&v_conn, &v_store, &meta)
                    .unwrap()
                    .is_empty()
            );
        }
    }

    /// A hostile village writes a record in its own area (which it may) but claims an author it is
    /// not: its township, a county node, a township staff member, or no claim at all.
    #[test]
    fn a_change_claiming_more_than_its_sender_is_refused_and_nothing_is_stored() {
        let (v_conn, v_store, v_area) = node("330723001001", 1);
        let (t_conn, t_store, t_area) = node("330723001", 2);
        let township: AreaCode = "330723001".parse().unwrap();
        let forged = [
            Some(Author::node(township.clone())),
            Some(Author::node("330723".parse().unwrap())),
            Some(Author::person(
                v_area.clone(),
                Person {
                    name: "li.ming".into(),
                    role: "township_staff".into(),
                    area: township.clone(),
                },
            )),
            None,
        ];
        for claim in forged {
            let mut down = Link::new(
                t_area.clone(),
                peer("330723001001", Relation::Downstream),
                0,
            );
            let meta = match &claim {
                Some(author) => v_store
                    .create(&v_conn, author, "note", &v_area, |d| {
                        Ok(d.put(automerge::ROOT, "t", "forged").map(|_| ())?)
                    })
                    .unwrap(),
                None => {
                    // No claim at all: written with automerge directly, as an old or hostile node would.
                    let mut doc = automerge::AutoCommit::new();
                    doc.put(automerge::ROOT, crate::docstore::KIND_KEY, "note")
                        .unwrap();
                    doc.put(automerge::ROOT, crate::docstore::SCOPE_KEY, v_area.as_str())
                        .unwrap();
                    doc.commit();
                    let id = Uuid::now_v7();
                    v_store
                        .merge_remote(&v_conn, Sender::Trusted, id, "note", &v_area, &doc.save())
                        .unwrap();
                    DocStore::meta(&v_conn, id).unwrap().unwrap().0
                }
            };
            let refused = push_from_below(
                (&v_conn, &v_store),
                &mut down,
                (&t_conn, &t_store),
                meta.id,
                "note",
                &v_area,
            );
            assert!(refused >= 1, "{claim:?}: refused");
            assert!(
                DocStore::meta(&t_conn, meta.id).unwrap().is_none(),
                "{claim:?}: nothing stored"
            );
        }
        // The honest claim goes through.
        let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
        let honest = Author::person(
            v_area.clone(),
            Person {
                name: "wang".into(),
                role: "grid_worker".into(),
                area: v_area.clone(),
            },
        );
        let meta = v_store
            .create(&v_conn, &honest, "note", &v_area, |d| {
                Ok(d.put(automerge::ROOT, "t", "fine").map(|_| ())?)
            })
            .unwrap();
        let refused = push_from_below(
            (&v_conn, &v_store),
            &mut down,
            (&t_conn, &t_store),
            meta.id,
            "note",
            &v_area,
        );
        assert_eq!(refused, 0);
        assert!(DocStore::meta(&t_conn, meta.id).unwrap().is_some());
    }

    /// A later forged change to a record the township already holds is refused too, and the record
    /// stays as it was.
    #[test]
    fn a_forged_edit_to_a_held_record_is_refused() {
        let (v_conn, v_store, v_area) = node("330723001001", 1);
        let (t_conn, t_store, t_area) = node("330723001", 2);
        let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
        let meta = v_store
            .create(
                &v_conn,
                &Author::node(v_area.clone()),
                "note",
                &v_area,
                |d| Ok(d.put(automerge::ROOT, "t", "v1").map(|_| ())?),
            )
            .unwrap();
        assert_eq!(
            push_from_below(
                (&v_conn, &v_store),
                &mut down,
                (&t_conn, &t_store),
                meta.id,
                "note",
                &v_area
            ),
            0
        );
        let heads = DocStore::meta(&t_conn, meta.id).unwrap().unwrap().0.heads;
        v_store
            .change(
                &v_conn,
                &Author::node("330723".parse().unwrap()),
                meta.id,
                |d| Ok(d.put(automerge::ROOT, "t", "v2")?),
            )
            .unwrap();
        let mut down = Link::new(
            "330723001".parse().unwrap(),
            peer("330723001001", Relation::Downstream),
            0,
        );
        let refused = push_from_below(
            (&v_conn, &v_store),
            &mut down,
            (&t_conn, &t_store),
            meta.id,
            "note",
            &v_area,
        );
        assert!(refused >= 1);
        assert_eq!(
            DocStore::meta(&t_conn, meta.id).unwrap().unwrap().0.heads,
            heads
        );
    }

    /// A registry with a kind whose transition list is append-only (the default).
    fn ticket_store(actor: u8) -> (Connection, DocStore) {
        struct Ticket;
        impl crate::docstore::Projection for Ticket {
            fn kind(&self) -> &'static str {
                "ticket"
            }
            fn project(
                &self,
                _: &Connection,
                _: &DocMeta,
                _: &automerge::AutoCommit,
                _: &crate::author::Authors,
            ) -> Result<(), crate::docstore::ProjectionError> {
                Ok(())
            }
            fn clear(&self, _: &Connection) -> Result<(), crate::docstore::ProjectionError> {
                Ok(())
            }
        }
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::docstore::SCHEMA).unwrap();
        let store = DocStore::new(
            automerge::ActorId::from([actor; 16]),
            vec![std::sync::Arc::new(Ticket)],
            || 0,
        );
        (conn, store)
    }

    /// A village may add to a transition list, never take anything out of it or change what is in it.
    #[test]
    fn removing_or_editing_a_transition_from_below_is_refused() {
        use automerge::{ObjType, ReadDoc, Value};
        let v_area: AreaCode = "330723001001".parse().unwrap();
        let t_area: AreaCode = "330723001".parse().unwrap();
        let grid = Author::person(
            v_area.clone(),
            Person {
                name: "wang".into(),
                role: "grid_worker".into(),
                area: v_area.clone(),
            },
        );
        let transition = |id: &str| crate::workflow::Transition {
            id: id.into(),
            at: crate::hlc::Timestamp {
                wall_ms: 1,
                counter: 0,
            },
            actor: "wang".into(),
            role: "grid_worker".into(),
            action: "verify".into(),
            data: Default::default(),
            written: Default::default(),
        };
        let list_and_item = |doc: &automerge::AutoCommit| {
            let Ok(Some((Value::Object(ObjType::List), list))) =
                doc.get(automerge::ROOT, crate::workflow::TRANSITIONS_KEY)
            else {
                panic!("no list")
            };
            let Ok(Some((Value::Object(ObjType::Map), item))) = doc.get(&list, 0) else {
                panic!("no item")
            };
            (list, item)
        };
        type Tamper = fn(&mut automerge::AutoCommit, automerge::ObjId, automerge::ObjId);
        let tampers: [(&str, Tamper); 3] = [
            ("delete", |d, list, _| d.delete(&list, 0).unwrap()),
            ("edit", |d, _, item| {
                d.put(&item, "action", "reject").unwrap()
            }),
            ("replace", |d, _, _| {
                d.put_object(
                    automerge::ROOT,
                    crate::workflow::TRANSITIONS_KEY,
                    ObjType::List,
                )
                .unwrap();
            }),
        ];
        for (what, tamper) in tampers {
            let (v_conn, v_store) = ticket_store(1);
            let (t_conn, t_store) = ticket_store(2);
            let mut down = Link::new(
                t_area.clone(),
                peer("330723001001", Relation::Downstream),
                0,
            );
            let first = transition("t1");
            let meta = v_store
                .create(&v_conn, &grid, "ticket", &v_area, |d| {
                    crate::workflow::init(d)?;
                    crate::workflow::append(d, &first)?;
                    Ok(())
                })
                .unwrap();
            assert_eq!(
                push_from_below(
                    (&v_conn, &v_store),
                    &mut down,
                    (&t_conn, &t_store),
                    meta.id,
                    "ticket",
                    &v_area
                ),
                0
            );
            let held = DocStore::meta(&t_conn, meta.id).unwrap().unwrap().0.heads;
            v_store
                .change(&v_conn, &grid, meta.id, |d| {
                    let (list, item) = list_and_item(d);
                    tamper(d, list, item);
                    // An honest addition in the same change does not make it pass.
                    crate::workflow::append(d, &transition("t2"))?;
                    Ok(())
                })
                .unwrap();
            let mut down = Link::new(
                t_area.clone(),
                peer("330723001001", Relation::Downstream),
                0,
            );
            let refused = push_from_below(
                (&v_conn, &v_store),
                &mut down,
                (&t_conn, &t_store),
                meta.id,
                "ticket",
                &v_area,
            );
            assert!(refused >= 1, "{what}: refused");
            assert_eq!(
                DocStore::meta(&t_conn, meta.id).unwrap().unwrap().0.heads,
                held,
                "{what}: nothing stored"
            );
        }
    }

    /// Changes from below whose dependencies are missing wait with the record, but only after the
    /// same checks as a merge: a forged claim is refused and not kept, and a change sent twice waits
    /// once.
    #[test]
    fn changes_from_below_waiting_for_dependencies_are_checked_first() {
        let (v_conn, v_store, v_area) = node("330723001001", 1);
        let (t_conn, t_store, t_area) = node("330723001", 2);
        let author = Author::node(v_area.clone());
        let meta = v_store
            .create(&v_conn, &author, "note", &v_area, |d| {
                Ok(d.put(automerge::ROOT, "t", "v0").map(|_| ())?)
            })
            .unwrap();
        let mut down = Link::new(
            t_area.clone(),
            peer("330723001001", Relation::Downstream),
            0,
        );
        push_from_below(
            (&v_conn, &v_store),
            &mut down,
            (&t_conn, &t_store),
            meta.id,
            "note",
            &v_area,
        );
        let waiting = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT count(*) FROM document_changes WHERE doc_id = ?1",
                [meta.id.to_string()],
                |r| r.get(0),
            )
            .unwrap()
        };
        // Sends only the newest change, whose dependency the township does not have.
        let send_second_only = |down: &mut Link, claim: &Author| -> Outcome {
            v_store
                .change(&v_conn, &author, meta.id, |d| {
                    Ok(d.put(automerge::ROOT, "t", "next")?)
                })
                .unwrap();
            let (after_first, _) = v_store.load(&v_conn, meta.id).unwrap();
            v_store
                .change(&v_conn, claim, meta.id, |d| {
                    Ok(d.put(automerge::ROOT, "t", "last")?)
                })
                .unwrap();
            let (_, mut doc) = v_store.load(&v_conn, meta.id).unwrap();
            let second = doc.get_changes(&after_first.heads);
            assert_eq!(second.len(), 1);
            let message = automerge::sync::Message {
                heads: doc.get_heads(),
                need: vec![],
                have: vec![],
                changes: vec![second[0].raw_bytes().to_vec()].into(),
                flags: None,
                version: automerge::sync::MessageVersion::V1,
            }
            .encode();
            let frame = |message: Vec<u8>| Frame::Sync {
                docs: vec![DocMessage {
                    id: meta.id,
                    kind: "note".into(),
                    scope: v_area.to_string(),
                    message,
                }],
            };
            let out = down
                .receive(&t_conn, &t_store, frame(message.clone()))
                .unwrap();
            // The same message again: nothing more waits.
            let again = down.receive(&t_conn, &t_store, frame(message)).unwrap();
            assert!(again.refused.len() <= out.refused.len());
            out
        };
        let before = waiting(&t_conn);
        let out = send_second_only(&mut down, &author);
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        assert_eq!(waiting(&t_conn), before + 1, "kept once, to apply later");
        let before = waiting(&t_conn);
        let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
        let out = send_second_only(&mut down, &Author::node("330723001".parse().unwrap()));
        assert!(!out.refused.is_empty(), "a forged claim is refused");
        assert_eq!(waiting(&t_conn), before, "and not kept");
    }

    #[test]
    fn an_envelope_that_lies_about_the_scope_is_refused() {
        let (v_conn, v_store, v_area) = node("330723001001", 1);
        let (t_conn, t_store, t_area) = node("330723001", 2);
        let real: AreaCode = "330723001002".parse().unwrap();
        let meta = v_store
            .create(&v_conn, &Author::node(v_area.clone()), "note", &real, |d| {
                Ok(d.put(automerge::ROOT, "t", "x").map(|_| ())?)
            })
            .unwrap();
        let mut state = automerge::sync::State::new();
        let message = v_store
            .sync_generate(&v_conn, meta.id, &mut state)
            .unwrap()
            .unwrap();
        let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
        // Claims its own village in the envelope; the content says the sibling.
        let frame = Frame::Sync {
            docs: vec![DocMessage {
                id: meta.id,
                kind: "note".into(),
                scope: "330723001001".into(),
                message,
            }],
        };
        let out = down.receive(&t_conn, &t_store, frame).unwrap();
        let _ = out;
        // The first message carries no changes (automerge asks first); drive the exchange to the end.
        assert!(DocStore::meta(&t_conn, meta.id).unwrap().is_none());
    }

    #[test]
    fn big_frames_are_deflated_and_deflate_bombs_refused() {
        let docs: Vec<DocMessage> = (0..200)
            .map(|i| DocMessage {
                id: Uuid::now_v7(),
                kind: "incident".into(),
                scope: "330723001001".into(),
                message: format!("tn1;330723001001;wang.fang;grid_worker {i}").into_bytes(),
            })
            .collect();
        let frame = Frame::Sync { docs };
        let wire = encode(&frame).unwrap();
        assert_eq!(wire[0], TAG_DEFLATE);
        assert!(wire.len() < postcard::to_allocvec(&frame).unwrap().len() / 2);
        assert_eq!(decode(&wire).unwrap(), frame);
        // 40 MiB of zeros deflate to a few tens of kilobytes.
        use std::io::Write;
        let mut bomb = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&[TAG_DEFLATE]).unwrap();
        for _ in 0..40 {
            bomb.write_all(&vec![0u8; 1 << 20]).unwrap();
        }
        let mut wire = vec![TAG_DEFLATE];
        wire.extend(bomb.finish().unwrap());
        assert!(wire.len() < 100_000);
        assert_eq!(decode(&wire).unwrap_err(), FrameError::TooLarge);
    }

    proptest! {
        #[test]
        fn garbage_and_truncated_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), cut in 0usize..200) {
            let _ = decode(&bytes);
            let frame = Frame::Manifest { upto: 7, entries: vec![ManifestEntry { id: Uuid::nil(), kind: "k".into(), scope: "330723".into(), heads: vec!["ab".into()] }], last: true };
            let encoded = encode(&frame).unwrap();
            prop_assert_eq!(decode(&encoded).unwrap(), frame);
            let _ = decode(&encoded[..cut.min(encoded.len())]);
        }

        #[test]
        fn garbage_sync_messages_are_refused_not_fatal(message in prop::collection::vec(any::<u8>(), 0..300)) {
            let (t_conn, t_store, t_area) = node("330723001", 2);
            let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
            let frame = Frame::Sync { docs: vec![DocMessage { id: Uuid::now_v7(), kind: "note".into(), scope: "330723001001".into(), message }] };
            let out = down.receive(&t_conn, &t_store, frame);
            prop_assert!(out.is_ok());
        }
    }
}
