//! The record sync engine: one [`Link`] per connection to a peer, transport-agnostic and
//! deterministic, so the same code runs over a WebSocket and inside the seeded simulation.
//!
//! Each side walks its record sequence from the peer's last acknowledgement in bounded batches: a
//! [`Frame::Manifest`] names the records of one batch (at most [`BATCH_BYTES`] of stored record bytes)
//! with their heads, and at most [`WINDOW`] batches are unacknowledged at once. The receiver asks for
//! records it has never seen whole ([`Frame::Want`], answered by [`Frame::Records`]: the stored bytes,
//! loaded and checked there like any merge) and syncs records it holds differently with automerge's
//! sync protocol, many per frame, with fresh sync state per connection. Once it holds everything a
//! batch named it acknowledges that batch, and the sender persists the acknowledgement of every
//! batch before it, so a connection that carries one batch makes progress however soon it breaks.
//! Local changes extend the walk as they commit, which is also how they are pushed live. A record
//! whose sync stops making progress is restarted from a fresh state; batches never acknowledged are
//! offered again.
//!
//! Scope and authority (see `DESIGN.md`): a peer receives only records it should hold, and its changes
//! are accepted only for records it may write; anything else is refused and reported, never stored.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use automerge::ChangeHash;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::area::AreaCode;
use crate::docstore::{DocError, DocMeta, DocStore, Flow, Merged, Sender};

/// Stored record bytes named by the first manifest of a connection at most (a single larger record
/// goes alone): small enough that a link which breaks after 64 KB still carries a whole batch and
/// its acknowledgement. Each acknowledged batch doubles the next, up to [`MAX_BATCH_BYTES`], so a
/// link that holds moves records in fewer, larger transactions.
pub const BATCH_BYTES: usize = 24 * 1024;
/// The largest batch, however long a link has held.
pub const MAX_BATCH_BYTES: usize = 768 * 1024;
/// Records sent whole in one frame at most, in stored bytes.
const RECORDS_FRAME_BYTES: usize = 256 * 1024;
/// Records named by one manifest at most.
pub const MANIFEST_MAX: usize = 2_000;
/// Manifests sent and not yet acknowledged at most: enough to keep a fast link busy while the
/// receiver merges, few enough that a slow one is not flooded.
pub const WINDOW: usize = 8;
/// Sync messages carried in one frame at most.
pub const SYNC_BATCH: usize = 256;
/// Ticks without progress after which a record's sync is restarted from a fresh state.
pub const STALL_TICKS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub id: Uuid,
    pub kind: String,
    pub scope: String,
    /// The record's heads, 32 bytes each.
    #[serde(with = "serde_bytes_compat")]
    pub heads: Vec<u8>,
}

/// A record as its sender stores it, for a receiver that has never seen it.
#[derive(Debug, Serialize, Deserialize)]
pub struct WholeRecord {
    pub id: Uuid,
    pub kind: String,
    pub scope: String,
    #[serde(with = "serde_bytes_compat")]
    pub bytes: Vec<u8>,
    /// `bytes` loaded already, off the writer thread ([`preload`]); never on the wire.
    #[serde(skip)]
    pub loaded: Option<crate::docstore::Preloaded>,
}

/// `loaded` is a cache of `bytes`: a copy reads them again, and two records are equal when the rest is.
impl Clone for WholeRecord {
    fn clone(&self) -> WholeRecord {
        WholeRecord {
            id: self.id,
            kind: self.kind.clone(),
            scope: self.scope.clone(),
            bytes: self.bytes.clone(),
            loaded: None,
        }
    }
}

impl PartialEq for WholeRecord {
    fn eq(&self, other: &WholeRecord) -> bool {
        (self.id, &self.kind, &self.scope, &self.bytes)
            == (other.id, &other.kind, &other.scope, &other.bytes)
    }
}

impl Eq for WholeRecord {}

/// Reads the whole records in `frame` ahead ([`DocStore::preload`]), so the writer only has to check
/// and store them. CPU work meant for a thread beside the writer while it stores the batch before.
pub fn preload(store: &DocStore, frame: &mut Frame) {
    if let Frame::Records { records } = frame {
        preload_records(store, records);
    }
}

/// [`preload`] for some of a frame's records (a share of them, on one of several threads).
pub fn preload_records(store: &DocStore, records: &mut [WholeRecord]) {
    for r in records.iter_mut() {
        r.loaded = store.preload(&r.kind, &r.scope, &r.bytes);
    }
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
    /// One batch of the sender's records: those it changed after sequence number `from` up to
    /// `upto` that the peer should hold (records the peer is known to hold already are left out).
    Manifest {
        from: i64,
        upto: i64,
        entries: Vec<ManifestEntry>,
    },
    /// Records a manifest named that the receiver has never seen: send them whole.
    Want {
        ids: Vec<Uuid>,
    },
    /// Records sent whole, in answer to [`Frame::Want`].
    Records {
        records: Vec<WholeRecord>,
    },
    /// Automerge sync messages, one per record.
    Sync {
        docs: Vec<DocMessage>,
    },
    /// The receiver holds everything the manifest `from`..`upto` named.
    Ack {
        from: i64,
        upto: i64,
    },
    /// A record the receiver would not take from this peer, and why.
    Refused {
        id: Uuid,
        reason: String,
    },
    /// Asks for part of an attachment referenced by a synced record, from `offset` on (resumable),
    /// at most `len` bytes: the asker grows its chunks while a link holds, so a link that breaks
    /// often still lands whole chunks.
    BlobRequest {
        sha256: String,
        offset: u64,
        len: u32,
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

/// One manifest sent and not yet acknowledged (or acknowledged out of order).
#[derive(Debug, Clone, Copy)]
struct Batch {
    from: i64,
    upto: i64,
    entries: usize,
    acked: bool,
}

/// A record asked for whole and not yet received.
struct WantedWhole {
    kind: String,
    scope: AreaCode,
    asked: u64,
}

/// Records whose heads the peer has told us, at most: an optimisation (not offering a record back to
/// the peer it came from), so it is simply forgotten when it grows past this.
const KNOWN_MAX: usize = 200_000;

/// One side of one connection.
pub struct Link {
    our_area: AreaCode,
    peer: PeerInfo,
    docs: BTreeMap<Uuid, DocSync>,
    /// Manifests received and not yet fully held: (from, upto) -> records still missing.
    incoming: BTreeMap<(i64, i64), BTreeSet<Uuid>>,
    /// Heads named by those manifests, per record.
    wanted: BTreeMap<Uuid, Vec<ChangeHash>>,
    /// Records asked for whole.
    whole: BTreeMap<Uuid, WantedWhole>,
    /// The peer holds everything of ours up to here (persisted by the caller).
    acked_seq: i64,
    /// Our records up to here have been named in a manifest on this connection.
    sent_upto: i64,
    in_flight: VecDeque<Batch>,
    /// Tick of the last manifest sent or acknowledged.
    sent_progress: u64,
    /// Stored bytes the next manifest may name.
    batch_bytes: usize,
    /// Heads the peer told us it holds, per record, so a record is not offered back to where it came from.
    known: HashMap<Uuid, Vec<ChangeHash>>,
    tick: u64,
}

/// The heads in a manifest entry; None when the bytes are not whole hashes.
fn parse_heads(bytes: &[u8]) -> Option<Vec<ChangeHash>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    bytes
        .chunks(32)
        .map(|c| ChangeHash::try_from(c).ok())
        .collect()
}

fn heads_bytes(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

impl Link {
    pub fn new(our_area: AreaCode, peer: PeerInfo, acked_seq: i64) -> Link {
        Link {
            our_area,
            peer,
            docs: BTreeMap::new(),
            incoming: BTreeMap::new(),
            wanted: BTreeMap::new(),
            whole: BTreeMap::new(),
            acked_seq,
            sent_upto: acked_seq,
            in_flight: VecDeque::new(),
            sent_progress: 0,
            batch_bytes: BATCH_BYTES,
            known: HashMap::new(),
            tick: 0,
        }
    }

    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The peer holds every record of ours up to this sequence number.
    pub fn acked_seq(&self) -> i64 {
        self.acked_seq
    }

    /// Our records still on their way: named in unacknowledged manifests, or syncing unsettled.
    pub fn pending(&self, conn: &Connection) -> usize {
        let named: usize = self
            .in_flight
            .iter()
            .filter(|b| !b.acked)
            .map(|b| b.entries)
            .sum();
        named
            + self
                .docs
                .iter()
                .filter(|(id, d)| !settled(conn, **id, d))
                .count()
    }

    /// Records the peer announced that this node does not hold yet (incoming changes still to arrive).
    pub fn pending_in(&self) -> usize {
        self.incoming.values().map(BTreeSet::len).sum()
    }

    /// Nothing is on its way in either direction and every local change has been offered: the
    /// moment for what comes after records (streams, attachments).
    pub fn caught_up(&self, conn: &Connection) -> Result<bool, DocError> {
        Ok(self.in_flight.is_empty()
            && self.whole.is_empty()
            && self.pending_in() == 0
            && self.sent_upto >= DocStore::current_seq(conn)?
            && self.pending(conn) == 0)
    }

    /// What opens the connection: the first batches since the peer's last acknowledgement.
    pub fn start(&mut self, conn: &Connection, store: &DocStore) -> Result<Vec<Frame>, DocError> {
        self.advance(conn, store)
    }

    /// Whether the peer is known to hold exactly `heads` of record `id`.
    fn peer_holds(&mut self, id: Uuid, heads: &[ChangeHash]) -> bool {
        let told = self
            .known
            .remove(&id)
            .is_some_and(|theirs| same_heads(&theirs, heads));
        told || self.docs.get(&id).is_some_and(|d| {
            d.state
                .their_heads
                .as_ref()
                .is_some_and(|theirs| same_heads(theirs, heads))
        })
    }

    /// Names further records in manifests while the window has room: the catch-up after connecting,
    /// and local changes as they commit.
    pub fn advance(&mut self, conn: &Connection, store: &DocStore) -> Result<Vec<Frame>, DocError> {
        let mut frames = Vec::new();
        while self.in_flight.len() < WINDOW {
            // Rows enough for a batch of small records, not thousands read to use fifty.
            let limit = (self.batch_bytes / 128).clamp(64, MANIFEST_MAX);
            let rows = DocStore::changed_since_sized(conn, self.sent_upto, limit)?;
            if rows.is_empty() {
                break;
            }
            let from = self.sent_upto;
            let mut upto = from;
            let mut bytes = 0usize;
            let mut entries = Vec::new();
            for (meta, size) in rows {
                if !entries.is_empty() && bytes + size > self.batch_bytes {
                    break;
                }
                upto = meta.seq;
                if !self
                    .peer
                    .holds(&self.our_area, store.flow(&meta.kind), &meta.scope)
                    || self.peer_holds(meta.id, &meta.heads)
                {
                    continue;
                }
                bytes += size;
                entries.push(ManifestEntry {
                    id: meta.id,
                    heads: heads_bytes(&meta.heads),
                    kind: meta.kind,
                    scope: meta.scope.to_string(),
                });
            }
            self.sent_upto = upto;
            if entries.is_empty() {
                // Nothing here for the peer: acknowledged without asking once everything before is.
                if self.in_flight.is_empty() {
                    self.acked_seq = upto;
                } else {
                    self.in_flight.push_back(Batch {
                        from,
                        upto,
                        entries: 0,
                        acked: true,
                    });
                }
                continue;
            }
            self.in_flight.push_back(Batch {
                from,
                upto,
                entries: entries.len(),
                acked: false,
            });
            self.sent_progress = self.tick;
            frames.push(Frame::Manifest {
                from,
                upto,
                entries,
            });
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

    /// Refuses a record from the peer: reported to the caller (to audit), told to the peer, and no
    /// longer waited for on this connection.
    fn refuse(&mut self, out: &mut Outcome, id: Uuid, reason: String) {
        out.refused.push((id, reason.clone()));
        out.frames.push(Frame::Refused { id, reason });
        self.give_up(id);
    }

    /// A record can no longer be had on this connection (refused either way): it stops holding up
    /// the acknowledgement of the manifests that named it.
    fn give_up(&mut self, id: Uuid) {
        self.docs.remove(&id);
        self.whole.remove(&id);
        self.wanted.remove(&id);
        for missing in self.incoming.values_mut() {
            missing.remove(&id);
        }
    }

    fn on_manifest(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        key: (i64, i64),
        entries: Vec<ManifestEntry>,
        out: &mut Outcome,
    ) -> Result<(), DocError> {
        let mut missing = BTreeSet::new();
        let mut want = Vec::new();
        let mut sync = Vec::new();
        for e in entries {
            let Ok(scope) = e.scope.parse::<AreaCode>() else {
                out.refused.push((e.id, format!("bad scope {}", e.scope)));
                continue;
            };
            let Some(heads) = parse_heads(&e.heads) else {
                out.refused.push((e.id, "malformed heads".into()));
                continue;
            };
            // What we would not accept from this peer is not worth asking for.
            if !self
                .peer
                .may_send(&self.our_area, store.flow(&e.kind), &scope)
            {
                continue;
            }
            if self.known.len() >= KNOWN_MAX {
                self.known.clear();
            }
            self.known.insert(e.id, heads.clone());
            // One look at the row answers the common cases (never seen, same heads); only a
            // difference loads the document.
            let exists = match DocStore::meta(conn, e.id)? {
                None => false,
                Some((meta, None)) if same_heads(&meta.heads, &heads) => continue,
                Some(_) => {
                    if store.has_heads(conn, e.id, &heads)? {
                        continue;
                    }
                    true
                }
            };
            missing.insert(e.id);
            self.wanted.insert(e.id, heads);
            if exists || self.docs.contains_key(&e.id) {
                self.entry(e.id, &e.kind, &scope);
                sync.push(e.id);
            } else if !self.whole.contains_key(&e.id) {
                self.whole.insert(
                    e.id,
                    WantedWhole {
                        kind: e.kind,
                        scope,
                        asked: self.tick,
                    },
                );
                want.push(e.id);
            }
        }
        self.incoming.entry(key).or_default().extend(missing);
        if !want.is_empty() {
            out.frames.push(Frame::Want { ids: want });
        }
        let mut messages = Vec::new();
        for id in sync {
            if let Some(m) = self.generate(conn, store, id)? {
                messages.push(m);
            }
        }
        out.frames.extend(Self::batch(messages));
        Ok(())
    }

    fn on_want(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        ids: Vec<Uuid>,
        out: &mut Outcome,
    ) -> Result<(), DocError> {
        let mut records = Vec::new();
        let mut bytes = 0usize;
        for id in ids {
            let meta = DocStore::meta(conn, id)?;
            let offered = meta.as_ref().is_some_and(|(m, quarantined)| {
                quarantined.is_none()
                    && self
                        .peer
                        .holds(&self.our_area, store.flow(&m.kind), &m.scope)
            });
            let stored = if offered {
                DocStore::stored_bytes(conn, id)?
            } else {
                None
            };
            let (Some((meta, _)), Some(stored)) = (meta, stored) else {
                out.frames.push(Frame::Refused {
                    id,
                    reason: "not available".into(),
                });
                continue;
            };
            if !records.is_empty() && bytes + stored.len() > RECORDS_FRAME_BYTES {
                out.frames.push(Frame::Records {
                    records: std::mem::take(&mut records),
                });
                bytes = 0;
            }
            bytes += stored.len();
            records.push(WholeRecord {
                id,
                kind: meta.kind,
                scope: meta.scope.to_string(),
                bytes: stored,
                loaded: None,
            });
        }
        if !records.is_empty() {
            out.frames.push(Frame::Records { records });
        }
        Ok(())
    }

    fn on_records(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        records: Vec<WholeRecord>,
        out: &mut Outcome,
    ) -> Result<(), DocError> {
        let mut messages = Vec::new();
        for r in records {
            let Ok(scope) = r.scope.parse::<AreaCode>() else {
                out.refused.push((r.id, format!("bad scope {}", r.scope)));
                self.give_up(r.id);
                continue;
            };
            // A whole record carries changes: only from a peer that may write it.
            if !self
                .peer
                .may_send(&self.our_area, store.flow(&r.kind), &scope)
                || !self.peer.may_write(&self.our_area, &scope)
            {
                let reason = format!(
                    "{} may not send {} records scoped to {scope}",
                    self.peer.area, r.kind
                );
                self.refuse(out, r.id, reason);
                continue;
            }
            // Stored with exactly the heads the manifest named (a record new here, as in a catch-up):
            // held, without looking at the row again.
            let mut held = false;
            match store.merge_remote_preloaded(
                conn,
                self.peer.sender(),
                r.id,
                &r.kind,
                &scope,
                &r.bytes,
                r.loaded,
            ) {
                Ok(Merged::Changed(meta)) => {
                    held = self
                        .wanted
                        .get(&r.id)
                        .is_some_and(|heads| same_heads(&meta.heads, heads));
                    out.changed.push(meta);
                }
                Ok(Merged::Unchanged) => {}
                Err(e) if e.is_refusal() => {
                    self.refuse(out, r.id, e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.whole.remove(&r.id);
            if held {
                self.held(r.id);
            } else {
                self.settle(conn, store, r.id)?;
            }
            // Changes that were still waiting for their dependencies at the sender: fetch the rest
            // through automerge's sync.
            if self.wanted.contains_key(&r.id) {
                self.entry(r.id, &r.kind, &scope);
                if let Some(m) = self.generate(conn, store, r.id)? {
                    messages.push(m);
                }
            }
        }
        out.frames.extend(Self::batch(messages));
        Ok(())
    }

    fn on_ack(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        from: i64,
        upto: i64,
        out: &mut Outcome,
    ) -> Result<(), DocError> {
        for b in self.in_flight.iter_mut() {
            if b.from == from && b.upto == upto {
                b.acked = true;
            }
        }
        let before = self.acked_seq;
        while let Some(b) = self.in_flight.front()
            && b.acked
        {
            self.acked_seq = self.acked_seq.max(b.upto);
            self.in_flight.pop_front();
        }
        if self.acked_seq > before {
            self.sent_progress = self.tick;
            self.batch_bytes = (self.batch_bytes * 2).min(MAX_BATCH_BYTES);
        }
        out.frames.extend(self.advance(conn, store)?);
        Ok(())
    }

    /// Handles one frame from the peer.
    pub fn receive(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        frame: Frame,
    ) -> Result<Outcome, DocError> {
        let mut out = Outcome::default();
        let before = self.acked_seq;
        match frame {
            Frame::Manifest {
                from,
                upto,
                entries,
            } => self.on_manifest(conn, store, (from, upto), entries, &mut out)?,
            Frame::Want { ids } => self.on_want(conn, store, ids, &mut out)?,
            Frame::Records { records } => self.on_records(conn, store, records, &mut out)?,
            Frame::Sync { docs } => self.on_sync(conn, store, docs, &mut out)?,
            Frame::Ack { from, upto } => self.on_ack(conn, store, from, upto, &mut out)?,
            Frame::Refused { id, reason } => {
                // The peer would not take our record, or will not give us its own: stop on this
                // connection.
                self.give_up(id);
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
        if self.acked_seq > before {
            out.acked = Some(self.acked_seq);
        }
        Ok(out)
    }

    fn on_sync(
        &mut self,
        conn: &Connection,
        store: &DocStore,
        docs: Vec<DocMessage>,
        out: &mut Outcome,
    ) -> Result<(), DocError> {
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
                Err(e) if e.is_refusal() => {
                    self.refuse(out, m.id, e.to_string());
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
        Ok(())
    }

    /// Marks a record held once we have every head the peer's manifest named.
    fn settle(&mut self, conn: &Connection, store: &DocStore, id: Uuid) -> Result<(), DocError> {
        if let Some(heads) = self.wanted.get(&id)
            && store.has_heads(conn, id, heads)?
        {
            self.held(id);
        }
        Ok(())
    }

    /// Marks a record held: no longer wanted, and no longer missing from any batch.
    fn held(&mut self, id: Uuid) {
        self.wanted.remove(&id);
        self.whole.remove(&id);
        for missing in self.incoming.values_mut() {
            missing.remove(&id);
        }
    }

    fn acks(&mut self) -> Vec<Frame> {
        let done: Vec<(i64, i64)> = self
            .incoming
            .iter()
            .filter(|(_, missing)| missing.is_empty())
            .map(|(key, _)| *key)
            .collect();
        let mut frames = Vec::new();
        for (from, upto) in done {
            self.incoming.remove(&(from, upto));
            frames.push(Frame::Ack { from, upto });
        }
        frames
    }

    /// Advances time by one tick; restarts records whose sync has not settled and has heard nothing
    /// from the peer for a while (a message was lost), from a fresh sync state; asks through
    /// automerge's sync for records asked for whole that never came; offers again the batches the
    /// peer never acknowledged.
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
        let unanswered: Vec<Uuid> = self
            .whole
            .iter()
            .filter(|(_, w)| now - w.asked >= STALL_TICKS)
            .map(|(id, _)| *id)
            .collect();
        for id in unanswered {
            if let Some(w) = self.whole.remove(&id) {
                self.entry(id, &w.kind, &w.scope);
                if let Some(m) = self.generate(conn, store, id)? {
                    messages.push(m);
                }
            }
        }
        let mut frames = Self::batch(messages);
        if !self.in_flight.is_empty() && now - self.sent_progress >= 2 * STALL_TICKS {
            self.in_flight.clear();
            self.sent_upto = self.acked_seq;
        }
        frames.extend(self.advance(conn, store)?);
        Ok(frames)
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
            let offered = up.advance(&v_conn, &v_store).unwrap();
            assert!(
                !offered
                    .iter()
                    .any(|f| matches!(f, Frame::Manifest { entries, .. }
                if entries.iter().any(|e| e.id == meta.id)))
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

    /// Delivers frames between two links until both are quiet; returns the frames each side sent.
    fn exchange(
        a: (&Connection, &DocStore, &mut Link),
        b: (&Connection, &DocStore, &mut Link),
        first: Vec<Frame>,
    ) -> (usize, usize) {
        let (mut to_b, mut to_a): (VecDeque<Frame>, VecDeque<Frame>) =
            (first.into(), VecDeque::new());
        let (mut sent_a, mut sent_b) = (0, 0);
        while !to_a.is_empty() || !to_b.is_empty() {
            if let Some(f) = to_b.pop_front() {
                sent_a += 1;
                to_a.extend(b.2.receive(b.0, b.1, f).unwrap().frames);
            }
            if let Some(f) = to_a.pop_front() {
                sent_b += 1;
                to_b.extend(a.2.receive(a.0, a.1, f).unwrap().frames);
            }
        }
        (sent_a, sent_b)
    }

    fn notes(conn: &Connection, store: &DocStore, area: &AreaCode, n: usize, size: usize) {
        let author = Author::node(area.clone());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..n {
            // Text that does not compress, so a record's stored size is about `size`.
            let text: String = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            store
                .create(conn, &author, "note", area, |d| {
                    Ok(d.put(automerge::ROOT, "t", format!("{i:05}{text}"))
                        .map(|_| ())?)
                })
                .unwrap();
        }
    }

    /// Catch-up goes in batches bounded by bytes, each acknowledged as it lands: a link that carries
    /// only the first batch before it breaks still moves the acknowledgement, and the next link
    /// starts after it.
    #[test]
    fn catch_up_goes_in_bounded_batches_each_acknowledged_as_it_lands() {
        let (v_conn, v_store, v_area) = node("330723001001", 1);
        let (t_conn, t_store, t_area) = node("330723001", 2);
        notes(&v_conn, &v_store, &v_area, 800, 400);
        let mut up = Link::new(v_area.clone(), peer("330723001", Relation::Upstream), 0);
        let mut down = Link::new(
            t_area.clone(),
            peer("330723001001", Relation::Downstream),
            0,
        );
        let opening = up.start(&v_conn, &v_store).unwrap();
        assert_eq!(
            opening.len(),
            WINDOW,
            "a full window of manifests, not everything"
        );
        let Frame::Manifest {
            from,
            upto,
            entries,
        } = &opening[0]
        else {
            panic!("a manifest first");
        };
        assert_eq!(*from, 0);
        assert!(
            entries.len() < 100,
            "bounded by bytes: {} records",
            entries.len()
        );
        // Only the first batch crosses: the township asks for it whole and acknowledges it.
        let asked = down.receive(&t_conn, &t_store, opening[0].clone()).unwrap();
        let Some(Frame::Want { ids }) = asked.frames.first() else {
            panic!("records never seen are asked for whole: {:?}", asked.frames);
        };
        assert_eq!(ids.len(), entries.len());
        let answer = up
            .receive(&v_conn, &v_store, asked.frames[0].clone())
            .unwrap();
        let mut acks = Vec::new();
        for f in answer.frames {
            acks.extend(down.receive(&t_conn, &t_store, f).unwrap().frames);
        }
        assert!(
            acks.contains(&Frame::Ack {
                from: 0,
                upto: *upto
            }),
            "{acks:?}"
        );
        for f in acks {
            up.receive(&v_conn, &v_store, f).unwrap();
        }
        assert_eq!(
            up.acked_seq(),
            *upto,
            "the first batch is acknowledged on its own"
        );
        // The link breaks; the next one starts after the acknowledged batch and completes.
        let mut up = Link::new(v_area.clone(), peer("330723001", Relation::Upstream), *upto);
        let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
        let opening = up.start(&v_conn, &v_store).unwrap();
        let Frame::Manifest { from, .. } = &opening[0] else {
            panic!("a manifest first");
        };
        assert_eq!(from, upto);
        exchange(
            (&v_conn, &v_store, &mut up),
            (&t_conn, &t_store, &mut down),
            opening,
        );
        assert_eq!(up.acked_seq(), DocStore::current_seq(&v_conn).unwrap());
        assert_eq!(
            DocStore::changed_since(&t_conn, 0, 1000).unwrap().len(),
            800
        );
        assert!(up.caught_up(&v_conn).unwrap());
    }

    /// Records that came from a peer are not offered back to it.
    #[test]
    fn records_are_not_offered_back_to_the_peer_they_came_from() {
        let (v_conn, v_store, v_area) = node("330723001001", 1);
        let (t_conn, t_store, t_area) = node("330723001", 2);
        notes(&v_conn, &v_store, &v_area, 50, 10);
        let mut up = Link::new(v_area, peer("330723001", Relation::Upstream), 0);
        let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
        let opening = up.start(&v_conn, &v_store).unwrap();
        exchange(
            (&v_conn, &v_store, &mut up),
            (&t_conn, &t_store, &mut down),
            opening,
        );
        assert_eq!(DocStore::changed_since(&t_conn, 0, 100).unwrap().len(), 50);
        let back = down.advance(&t_conn, &t_store).unwrap();
        assert!(back.is_empty(), "nothing offered back: {back:?}");
        assert_eq!(down.acked_seq(), DocStore::current_seq(&t_conn).unwrap());
    }

    /// A hostile village sends whole records straight to its township: outside its area, or with
    /// an author claim above itself. Each is refused and nothing is stored.
    #[test]
    fn forged_whole_records_from_below_are_refused_and_nothing_is_stored() {
        let (v_conn, v_store, v_area) = node("330723001001", 1);
        let (t_conn, t_store, t_area) = node("330723001", 2);
        let sibling: AreaCode = "330723001002".parse().unwrap();
        let forged = [
            (Author::node(v_area.clone()), sibling.clone()),
            (Author::node(t_area.clone()), v_area.clone()),
            (
                Author::person(
                    v_area.clone(),
                    Person {
                        name: "li.ming".into(),
                        role: "township_staff".into(),
                        area: t_area.clone(),
                    },
                ),
                v_area.clone(),
            ),
        ];
        for (author, scope) in forged {
            let meta = v_store
                .create(&v_conn, &author, "note", &scope, |d| {
                    Ok(d.put(automerge::ROOT, "t", "forged").map(|_| ())?)
                })
                .unwrap();
            let mut down = Link::new(
                t_area.clone(),
                peer("330723001001", Relation::Downstream),
                0,
            );
            let mut frame = Frame::Records {
                records: vec![WholeRecord {
                    id: meta.id,
                    kind: "note".into(),
                    scope: scope.to_string(),
                    bytes: DocStore::stored_bytes(&v_conn, meta.id).unwrap().unwrap(),
                    loaded: None,
                }],
            };
            // Loaded beside the writer, as a session does: every check still runs.
            preload(&t_store, &mut frame);
            assert!(matches!(&frame, Frame::Records { records } if records[0].loaded.is_some()));
            let out = down.receive(&t_conn, &t_store, frame).unwrap();
            assert_eq!(out.refused.len(), 1, "{author:?} in {scope}");
            assert!(out.changed.is_empty());
            assert!(
                out.frames
                    .iter()
                    .any(|f| matches!(f, Frame::Refused { id, .. } if *id == meta.id))
            );
            assert!(
                DocStore::meta(&t_conn, meta.id).unwrap().is_none(),
                "nothing stored"
            );
        }
        // An envelope that lies about the scope of an honest record is refused too.
        let meta = v_store
            .create(
                &v_conn,
                &Author::node(v_area.clone()),
                "note",
                &v_area,
                |d| Ok(d.put(automerge::ROOT, "t", "fine").map(|_| ())?),
            )
            .unwrap();
        let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
        let lying = Frame::Records {
            records: vec![WholeRecord {
                id: meta.id,
                kind: "note".into(),
                scope: "330723001001001".into(),
                bytes: DocStore::stored_bytes(&v_conn, meta.id).unwrap().unwrap(),
                loaded: None,
            }],
        };
        let out = down.receive(&t_conn, &t_store, lying).unwrap();
        assert_eq!(out.refused.len(), 1);
        assert!(DocStore::meta(&t_conn, meta.id).unwrap().is_none());
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
            let frame = Frame::Manifest { from: 3, upto: 7, entries: vec![ManifestEntry { id: Uuid::nil(), kind: "k".into(), scope: "330723".into(), heads: vec![0xab; 32] }] };
            let encoded = encode(&frame).unwrap();
            prop_assert_eq!(decode(&encoded).unwrap(), frame);
            let _ = decode(&encoded[..cut.min(encoded.len())]);
        }

        /// A whole record damaged on its way (a byte changed, the end cut off), loaded beside the
        /// writer as a session does: received without a panic, and stored only if it still loads
        /// as a record its sender may write.
        #[test]
        fn damaged_whole_records_loaded_ahead_never_panic(flip in 0usize..4096, bit in 0u8..8, cut in 0usize..4096) {
            let (v_conn, v_store, v_area) = node("330723001001", 1);
            let (t_conn, t_store, t_area) = node("330723001", 2);
            let meta = v_store
                .create(&v_conn, &Author::node(v_area.clone()), "note", &v_area, |d| {
                    Ok(d.put(automerge::ROOT, "t", "河道垃圾堆积").map(|_| ())?)
                })
                .unwrap();
            let mut bytes = DocStore::stored_bytes(&v_conn, meta.id).unwrap().unwrap();
            let at = flip % bytes.len();
            bytes[at] ^= 1 << bit;
            bytes.truncate(cut.max(1).min(bytes.len()));
            let mut frame = Frame::Records { records: vec![WholeRecord {
                id: meta.id, kind: "note".into(), scope: v_area.to_string(), bytes, loaded: None,
            }] };
            preload(&t_store, &mut frame);
            let mut down = Link::new(t_area, peer("330723001001", Relation::Downstream), 0);
            let out = down.receive(&t_conn, &t_store, frame);
            prop_assert!(out.is_ok());
            let out = out.unwrap();
            let stored = DocStore::meta(&t_conn, meta.id).unwrap().is_some();
            prop_assert_eq!(stored, out.refused.is_empty());
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
