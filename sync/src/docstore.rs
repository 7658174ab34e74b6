//! The record store: collaborative records as automerge documents in SQLite.
//!
//! Each record is one document keyed by a UUIDv7, with a `kind` and a `scope` (area code). Its bytes
//! are a compacted save plus appended incremental changes, folded back into the save once enough pile
//! up (and in the background). Every change, local or merged, bumps a per-node sequence number, so
//! sync can ask "what changed since N". After every change the kind's registered [`Projection`] runs
//! in the same transaction, so query tables never disagree with the documents they come from.
//!
//! All functions take a `&Connection` that the caller has inside a transaction: the node's writer
//! thread. Automerge calls that could panic on hostile bytes run under `catch_unwind`; a document that
//! fails to load is reported as [`DocError::Corrupt`] so the caller can quarantine it, and one bad
//! document never takes the node down.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::area::AreaCode;
use crate::author::{Author, Authors};
use crate::identity::PublicKey;

/// Schema for the record store; the node runs it as one of its numbered migrations.
pub const SCHEMA: &str = "
CREATE TABLE documents (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    scope           TEXT NOT NULL,
    heads           TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    snapshot        BLOB NOT NULL,
    pending_changes INTEGER NOT NULL DEFAULT 0,
    quarantined     TEXT,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX documents_by_seq ON documents(seq);
CREATE INDEX documents_by_kind ON documents(kind, scope);
CREATE TABLE document_changes (
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    n      INTEGER NOT NULL,
    bytes  BLOB NOT NULL,
    PRIMARY KEY (doc_id, n)
) STRICT;
CREATE TABLE doc_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
INSERT INTO doc_counters (name, value) VALUES ('seq', 0);
";

/// Root keys every record document carries, so a document is self-describing when it arrives alone.
pub const KIND_KEY: &str = "_kind";
pub const SCOPE_KEY: &str = "_scope";

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("record {0} not found")]
    NotFound(Uuid),
    #[error("record {id} is a {found}, not a {expected}")]
    WrongKind {
        id: Uuid,
        expected: String,
        found: String,
    },
    #[error("record {id} is quarantined: {reason}")]
    Quarantined { id: Uuid, reason: String },
    /// The stored or received bytes do not load; the caller should quarantine the record.
    #[error("record {id} is corrupt: {reason}")]
    Corrupt { id: Uuid, reason: String },
    #[error("automerge: {0}")]
    Automerge(String),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("projection for {kind}: {message}")]
    Projection { kind: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<automerge::AutomergeError> for DocError {
    fn from(e: automerge::AutomergeError) -> Self {
        DocError::Automerge(e.to_string())
    }
}

impl From<crate::workflow::TransitionDocError> for DocError {
    fn from(e: crate::workflow::TransitionDocError) -> Self {
        DocError::Automerge(e.to_string())
    }
}

impl DocError {
    /// Lock contention is transient; everything else will fail the same way again.
    /// The record was refused (invalid, unreadable or quarantined): the sender is told and the
    /// connection goes on; any other error ends the write.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            DocError::Invalid(_) | DocError::Corrupt { .. } | DocError::Quarantined { .. }
        )
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, DocError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }
}

/// What the store knows about a document without loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    pub id: Uuid,
    pub kind: String,
    pub scope: AreaCode,
    pub heads: Vec<ChangeHash>,
    pub seq: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProjectionError(pub String);

impl From<rusqlite::Error> for ProjectionError {
    fn from(e: rusqlite::Error) -> Self {
        ProjectionError(e.to_string())
    }
}

/// Which way a kind's records travel through the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Up to every ancestor and down to every node inside the record's scope or below it (the
    /// default: incidents go up, a county-wide broadcast comes down).
    Tree,
    /// Only to nodes whose area contains the record's scope: its own node and the ones above. Used
    /// for records holding credentials, which a node below has no reason to hold.
    UpOnly,
}

impl Flow {
    /// Whether a node of area `holder` should hold a record scoped to `scope`.
    pub fn reaches(self, holder: &AreaCode, scope: &AreaCode) -> bool {
        match self {
            Flow::Tree => holder.contains(scope) || scope.contains(holder),
            Flow::UpOnly => holder.contains(scope),
        }
    }
}

/// Keeps a kind's query tables in step with its documents. Runs inside the change's transaction.
///
/// `authors` says which change (and so which claimed author) wrote every value in `doc`: a
/// projection trusts a field only as far as its writer's authority reaches (see [`crate::author`]).
pub trait Projection: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Brings the rows for this document up to date.
    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &AutoCommit,
        authors: &Authors,
    ) -> Result<(), ProjectionError>;
    /// The part of [`Projection::project`] that only reads the document, for a record new here whose
    /// bytes were loaded beside the writer ([`DocStore::preload`]): what it returns is handed to
    /// [`Projection::write`] on the writer instead of the document. Reading a record's fields was
    /// half of the writer's time in a cold sync, and the writer is the thread every record waits
    /// for. `None` (the default) keeps the document for `project`.
    ///
    /// `scope` is the record's envelope scope, which the merge checks against the document's own.
    fn read(
        &self,
        _scope: &AreaCode,
        _doc: &AutoCommit,
        _authors: &Authors,
    ) -> Option<ProjectionInput> {
        None
    }
    /// Writes the rows for a record from what [`Projection::read`] returned for it. Only called for
    /// a projection whose `read` returned something.
    fn write(
        &self,
        _conn: &Connection,
        _meta: &DocMeta,
        _input: ProjectionInput,
    ) -> Result<(), ProjectionError> {
        Err(ProjectionError(format!(
            "the {} projection reads no records ahead",
            self.kind()
        )))
    }
    /// Removes every row this projection owns (before a rebuild).
    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError>;
    /// Removes the rows of one record this node no longer holds.
    fn forget(&self, _conn: &Connection, _id: Uuid) -> Result<(), ProjectionError> {
        Ok(())
    }
    /// Which way records of this kind travel.
    fn flow(&self) -> Flow {
        Flow::Tree
    }
    /// Root keys holding lists that only ever grow: no change from below may remove an item from
    /// them, replace them, or change an item already there (see [`check_new_changes`]).
    fn append_only(&self) -> &'static [&'static str] {
        &[crate::workflow::TRANSITIONS_KEY]
    }
}

/// Who a remote change comes from, for the merge rule on author claims.
#[derive(Debug, Clone, Copy)]
pub enum Sender<'a> {
    /// The pinned upstream (or a test): its claims are taken as they are.
    Trusted,
    /// A node below whose area is this: every new change must claim an author inside it.
    Below(&'a AreaCode),
}

/// An actor id for this node and database: the same node key with a different database (a restored
/// backup on a new machine gets a new salt) gives a different actor, so two live copies never share one.
pub fn derive_actor(public_key: &PublicKey, db_salt: &[u8]) -> ActorId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"township-node actor v1\0");
    ctx.update(public_key.as_bytes());
    ctx.update(db_salt);
    let digest = ctx.finish();
    ActorId::from(&digest.as_ref()[..16])
}

fn encode_heads(heads: &[ChangeHash]) -> String {
    let mut hex: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
    hex.sort();
    hex.join(",")
}

/// A document's metadata from its row's columns.
fn meta_from_columns(
    id: Uuid,
    kind: String,
    scope: &str,
    heads: &str,
    seq: i64,
    created_ms: i64,
    updated_ms: i64,
) -> Result<DocMeta, DocError> {
    let scope = scope.parse().map_err(|_| DocError::Corrupt {
        id,
        reason: format!("bad scope {scope}"),
    })?;
    Ok(DocMeta {
        id,
        kind,
        scope,
        heads: decode_heads(heads),
        seq,
        created_ms,
        updated_ms,
    })
}

fn decode_heads(text: &str) -> Vec<ChangeHash> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Runs an automerge operation, turning a panic into an error.
fn guarded<T>(
    id: Uuid,
    f: impl FnOnce() -> Result<T, automerge::AutomergeError>,
) -> Result<T, DocError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DocError::Corrupt {
            id,
            reason: e.to_string(),
        }),
        Err(_) => Err(DocError::Corrupt {
            id,
            reason: "automerge panicked on these bytes".into(),
        }),
    }
}

/// What [`Projection::read`] takes from a document for [`Projection::write`]; each projection
/// knows its own type.
pub type ProjectionInput = Box<dyn std::any::Any + Send + Sync>;

/// A record's bytes read as a whole document ahead of the write job that merges them, on a thread
/// beside the writer ([`DocStore::preload`]): loading and reading are most of the cost of storing a
/// record seen for the first time, and the writer is the one thread every record waits for. What the
/// merge needs of the document is kept; the document itself only where a projection reads it on the
/// writer. Only ever paired with the bytes it came from (it travels in the same
/// [`crate::engine::WholeRecord`]), and used only if the record is new here.
pub struct Preloaded {
    heads: Vec<ChangeHash>,
    /// Every change's hash and message (its author claim), for the merge rule on claims.
    claims: Vec<(ChangeHash, Option<String>)>,
    stated_kind: Option<String>,
    stated_scope: Option<String>,
    for_projection: ForProjection,
}

enum ForProjection {
    /// The kind has no projection.
    Nothing,
    /// What the kind's projection read from the document.
    Read(ProjectionInput),
    /// The document, for a projection that reads it on the writer.
    Document(Box<AutoCommit>),
}

impl std::fmt::Debug for Preloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Preloaded")
    }
}

/// Outcome of merging changes received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// New changes were applied (or the document was new here).
    Changed(DocMeta),
    /// Everything received was already known.
    Unchanged,
}

/// The record store. Cheap to clone.
#[derive(Clone)]
pub struct DocStore {
    actor: ActorId,
    projections: Arc<BTreeMap<&'static str, Arc<dyn Projection>>>,
    compact_after: i64,
    now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl std::fmt::Debug for DocStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocStore")
            .field("actor", &self.actor.to_hex_string())
            .field("kinds", &self.projections.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DocStore {
    pub fn new(
        actor: ActorId,
        projections: Vec<Arc<dyn Projection>>,
        now_ms: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> DocStore {
        DocStore {
            actor,
            projections: Arc::new(projections.into_iter().map(|p| (p.kind(), p)).collect()),
            compact_after: 64,
            now_ms: Arc::new(now_ms),
        }
    }

    /// Sets how many incremental changes may pile up before a write compacts them inline.
    pub fn with_compact_after(mut self, n: i64) -> Self {
        self.compact_after = n.max(1);
        self
    }

    fn next_seq(conn: &Connection) -> Result<i64, DocError> {
        // Read, then set: RETURNING would make the update a multi-write statement, which SQLite runs
        // with a statement journal. Only the writer's connection writes, inside its transaction.
        let next = Self::current_seq(conn)? + 1;
        conn.prepare_cached("UPDATE doc_counters SET value = ?1 WHERE name = 'seq'")?
            .execute([next])?;
        Ok(next)
    }

    /// The highest sequence number issued so far.
    pub fn current_seq(conn: &Connection) -> Result<i64, DocError> {
        Ok(conn
            .prepare_cached("SELECT value FROM doc_counters WHERE name = 'seq'")?
            .query_row([], |r| r.get(0))?)
    }

    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &mut AutoCommit,
    ) -> Result<(), DocError> {
        if let Some(p) = self.projections.get(meta.kind.as_str()) {
            let authors = Authors::of(doc);
            p.project(conn, meta, doc, &authors)
                .map_err(|e| projection_failed(&meta.kind, e))?;
        }
        Ok(())
    }

    /// Which way records of `kind` travel (kinds without a projection travel the whole tree).
    pub fn flow(&self, kind: &str) -> Flow {
        self.projections.get(kind).map_or(Flow::Tree, |p| p.flow())
    }

    /// The append-only lists of records of `kind`.
    fn append_only(&self, kind: &str) -> &'static [&'static str] {
        self.projections
            .get(kind)
            .map_or(&[crate::workflow::TRANSITIONS_KEY], |p| p.append_only())
    }

    /// Commits the open transaction with `author`'s claim, and refuses the edit if anything in it was
    /// committed without one (an edit that asked automerge for heads or changes mid-way): a local
    /// change with no claim would count as legacy here and be refused by every node above.
    fn commit_claimed(
        id: Uuid,
        doc: &mut AutoCommit,
        before: &[ChangeHash],
        author: &Author,
    ) -> Result<(), DocError> {
        doc.commit_with(CommitOptions::default().with_message(author.encode()));
        let unclaimed = doc
            .get_changes_meta(before)
            .iter()
            .filter(|m| m.message.as_deref().is_none_or(str::is_empty))
            .count();
        if unclaimed > 0 {
            return Err(DocError::Invalid(format!(
                "record {id}: an edit committed {unclaimed} change(s) without an author claim"
            )));
        }
        Ok(())
    }

    /// Creates a new record of `kind` in `scope`, filled in by `build`.
    pub fn create(
        &self,
        conn: &Connection,
        author: &Author,
        kind: &str,
        scope: &AreaCode,
        build: impl FnOnce(&mut AutoCommit) -> Result<(), DocError>,
    ) -> Result<DocMeta, DocError> {
        self.create_with_id(conn, author, Uuid::now_v7(), kind, scope, build)
    }

    /// [`Self::create`] with an id chosen by the caller (a phone's outbox names its report so a
    /// retry finds it); refused if a record already has it.
    pub fn create_with_id(
        &self,
        conn: &Connection,
        author: &Author,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        build: impl FnOnce(&mut AutoCommit) -> Result<(), DocError>,
    ) -> Result<DocMeta, DocError> {
        if Self::meta(conn, id)?.is_some() {
            return Err(DocError::Invalid(format!("record {id} exists already")));
        }
        let mut doc = AutoCommit::new().with_actor(self.actor.clone());
        doc.put(automerge::ROOT, KIND_KEY, kind)?;
        doc.put(automerge::ROOT, SCOPE_KEY, scope.as_str())?;
        build(&mut doc)?;
        Self::commit_claimed(id, &mut doc, &[], author)?;
        self.insert_new(conn, id, kind, scope, &mut doc, None)
    }

    /// Stores a document this node has not had before, with a fresh sequence number, and projects it.
    /// `loaded_from` is the bytes `doc` was loaded from whole, stored instead of saving it again.
    fn insert_new(
        &self,
        conn: &Connection,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        doc: &mut AutoCommit,
        loaded_from: Option<&[u8]>,
    ) -> Result<DocMeta, DocError> {
        let snapshot = match loaded_from {
            Some(bytes) => bytes.to_vec(),
            None => doc.save(),
        };
        let meta = self.insert_row(conn, id, kind, scope, doc.get_heads(), &snapshot)?;
        self.project(conn, &meta, doc)?;
        Ok(meta)
    }

    /// The `documents` row of a record new here, with a fresh sequence number.
    fn insert_row(
        &self,
        conn: &Connection,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        heads: Vec<ChangeHash>,
        snapshot: &[u8],
    ) -> Result<DocMeta, DocError> {
        let seq = Self::next_seq(conn)?;
        let now = (self.now_ms)();
        conn.prepare_cached("INSERT INTO documents (id, kind, scope, heads, seq, snapshot, pending_changes, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7)")?.execute(params![id.to_string(), kind, scope.as_str(), encode_heads(&heads), seq, snapshot, now],
        )?;
        Ok(DocMeta {
            id,
            kind: kind.to_string(),
            scope: scope.clone(),
            heads,
            seq,
            created_ms: now,
            updated_ms: now,
        })
    }

    /// [`Self::insert_new`] for a record read ahead by [`Self::preload`], with the same checks as a
    /// record read here: the claims of every change, then the envelope. Its bytes are stored as they
    /// came (they loaded as a whole document).
    #[allow(clippy::too_many_arguments)]
    fn insert_preloaded(
        &self,
        conn: &Connection,
        sender: Sender<'_>,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        bytes: &[u8],
        preloaded: Preloaded,
    ) -> Result<DocMeta, DocError> {
        let Preloaded {
            heads,
            claims,
            stated_kind,
            stated_scope,
            for_projection,
        } = preloaded;
        check_claims(
            id,
            claims
                .iter()
                .map(|(hash, message)| (*hash, message.as_deref())),
            sender,
            scope,
        )?;
        check_envelope(id, kind, scope, stated_kind, stated_scope)?;
        let meta = self.insert_row(conn, id, kind, scope, heads, bytes)?;
        match (for_projection, self.projections.get(kind)) {
            (ForProjection::Read(input), Some(p)) => p
                .write(conn, &meta, input)
                .map_err(|e| projection_failed(kind, e))?,
            (ForProjection::Document(mut doc), _) => self.project(conn, &meta, &mut doc)?,
            // The kind has no projection (`read_ahead_for` pairs the rest).
            _ => {}
        }
        Ok(meta)
    }

    /// Reads a document's metadata without loading it.
    pub fn meta(
        conn: &Connection,
        id: Uuid,
    ) -> Result<Option<(DocMeta, Option<String>)>, DocError> {
        // Kept prepared: every record merged or offered asks this first, and parsing the statement
        // again each time was a tenth of the county's CPU in a cold sync.
        let row = conn
            .prepare_cached(
                "SELECT kind, scope, heads, seq, created_ms, updated_ms, quarantined FROM documents WHERE id = ?1",
            )?
            .query_row(
                [id.to_string()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((kind, scope, heads, seq, created_ms, updated_ms, quarantined)) = row else {
            return Ok(None);
        };
        Ok(Some((
            meta_from_columns(id, kind, &scope, &heads, seq, created_ms, updated_ms)?,
            quarantined,
        )))
    }

    /// Loads a document: its snapshot plus every pending incremental change.
    pub fn load(&self, conn: &Connection, id: Uuid) -> Result<(DocMeta, AutoCommit), DocError> {
        let (meta, quarantined) = Self::meta(conn, id)?.ok_or(DocError::NotFound(id))?;
        if let Some(reason) = quarantined {
            return Err(DocError::Quarantined { id, reason });
        }
        let snapshot: Vec<u8> = conn
            .prepare_cached("SELECT snapshot FROM documents WHERE id = ?1")?
            .query_row([id.to_string()], |r| r.get(0))?;
        let mut doc = guarded(id, || AutoCommit::load(&snapshot))?;
        let mut stmt =
            conn.prepare_cached("SELECT bytes FROM document_changes WHERE doc_id = ?1 ORDER BY n")?;
        let changes = stmt.query_map([id.to_string()], |r| r.get::<_, Vec<u8>>(0))?;
        for bytes in changes {
            let bytes = bytes?;
            guarded(id, || doc.load_incremental(&bytes))?;
        }
        doc.set_actor(self.actor.clone());
        Ok((meta, doc))
    }

    /// Loads a document and checks its kind.
    pub fn load_kind(
        &self,
        conn: &Connection,
        id: Uuid,
        kind: &str,
    ) -> Result<(DocMeta, AutoCommit), DocError> {
        let (meta, doc) = self.load(conn, id)?;
        if meta.kind != kind {
            return Err(DocError::WrongKind {
                id,
                expected: kind.into(),
                found: meta.kind,
            });
        }
        Ok((meta, doc))
    }

    /// Applies a local change made by `edit` on behalf of `author`. If `edit` changes nothing,
    /// nothing is written.
    pub fn change<T>(
        &self,
        conn: &Connection,
        author: &Author,
        id: Uuid,
        edit: impl FnOnce(&mut AutoCommit) -> Result<T, DocError>,
    ) -> Result<(DocMeta, T), DocError> {
        let (meta, mut doc) = self.load(conn, id)?;
        let before = doc.get_heads();
        let out = edit(&mut doc)?;
        Self::commit_claimed(id, &mut doc, &before, author)?;
        let heads = doc.get_heads();
        if heads == before {
            return Ok((meta, out));
        }
        let bytes = doc.save_after(&before);
        let meta = self.record_change(conn, meta, &mut doc, &bytes)?;
        Ok((meta, out))
    }

    /// Appends `bytes` as the next incremental change, bumps the sequence, compacts when due, projects.
    fn record_change(
        &self,
        conn: &Connection,
        mut meta: DocMeta,
        doc: &mut AutoCommit,
        bytes: &[u8],
    ) -> Result<DocMeta, DocError> {
        let id = meta.id.to_string();
        let pending: i64 = conn
            .prepare_cached("SELECT pending_changes FROM documents WHERE id = ?1")?
            .query_row([&id], |r| r.get(0))?;
        let seq = Self::next_seq(conn)?;
        let now = (self.now_ms)();
        let heads = doc.get_heads();
        // A save holds only applied changes; while some wait for dependencies, keep the log instead.
        if pending + 1 >= self.compact_after && doc.get_missing_deps(&[]).is_empty() {
            let snapshot = doc.save();
            conn.prepare_cached("DELETE FROM document_changes WHERE doc_id = ?1")?
                .execute([&id])?;
            conn.prepare_cached("UPDATE documents SET snapshot = ?2, pending_changes = 0, heads = ?3, seq = ?4, updated_ms = ?5 WHERE id = ?1")?.execute(params![id, snapshot, encode_heads(&heads), seq, now],
            )?;
        } else {
            conn.prepare_cached(
                "INSERT INTO document_changes (doc_id, n, bytes) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, pending + 1, bytes])?;
            conn.prepare_cached("UPDATE documents SET pending_changes = ?2, heads = ?3, seq = ?4, updated_ms = ?5 WHERE id = ?1")?.execute(params![id, pending + 1, encode_heads(&heads), seq, now],
            )?;
        }
        meta.heads = heads;
        meta.seq = seq;
        meta.updated_ms = now;
        self.project(conn, &meta, doc)?;
        Ok(meta)
    }

    /// Merges changes received from a peer (bytes from `save`, `save_after` or concatenated changes).
    /// Creates the document if this node has not seen it. The caller has already checked that the
    /// peer may write records of this kind in this scope; the changes' author claims are checked
    /// here against `sender`.
    pub fn merge_remote(
        &self,
        conn: &Connection,
        sender: Sender<'_>,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        bytes: &[u8],
    ) -> Result<Merged, DocError> {
        self.merge_remote_preloaded(conn, sender, id, kind, scope, bytes, None)
    }

    /// Reads `bytes` of a record of `kind` in `scope` as a whole document, and takes from it what
    /// merging it as a new record needs, including what the kind's projection reads. Meant for a
    /// thread beside the writer; the document is dropped there too unless a projection reads it on
    /// the writer. `None` when the bytes are not a whole document (or automerge panicked on them):
    /// the merge then reads them as it always did, and refuses what it refused before.
    pub fn preload(&self, kind: &str, scope: &str, bytes: &[u8]) -> Option<Preloaded> {
        let mut doc = guarded(Uuid::nil(), || AutoCommit::load(bytes)).ok()?;
        catch_unwind(AssertUnwindSafe(|| {
            let claims = doc
                .get_changes_meta(&[])
                .into_iter()
                .map(|m| (m.hash, m.message.map(std::borrow::Cow::into_owned)))
                .collect();
            let stated_kind = crate::fields::text(&doc, KIND_KEY);
            let stated_scope = crate::fields::text(&doc, SCOPE_KEY);
            let heads = doc.get_heads();
            // Read only for what the merge will accept: the envelope must match the document.
            let matching = (stated_kind.as_deref() == Some(kind)
                && stated_scope.as_deref() == Some(scope))
            .then(|| scope.parse::<AreaCode>().ok())
            .flatten();
            let for_projection = match (self.projections.get(kind), matching) {
                (None, _) => ForProjection::Nothing,
                (Some(p), Some(scope)) => {
                    let authors = Authors::of(&mut doc);
                    match p.read(&scope, &doc, &authors) {
                        Some(input) => ForProjection::Read(input),
                        None => ForProjection::Document(Box::new(doc)),
                    }
                }
                (Some(_), None) => ForProjection::Document(Box::new(doc)),
            };
            Preloaded {
                heads,
                claims,
                stated_kind,
                stated_scope,
                for_projection,
            }
        }))
        .ok()
    }

    /// Whether `preloaded` was read for this store's projection of `kind` (by a clone of this
    /// store): otherwise the record is read again on the writer.
    fn read_ahead_for(&self, kind: &str, preloaded: &Preloaded) -> bool {
        matches!(
            (&preloaded.for_projection, self.projections.get(kind)),
            (ForProjection::Nothing, None)
                | (ForProjection::Read(_) | ForProjection::Document(_), Some(_))
        )
    }

    /// [`Self::merge_remote`] with `bytes` already read by [`Self::preload`] (used only if the record
    /// is new here). Every check runs as without it.
    #[allow(clippy::too_many_arguments)]
    pub fn merge_remote_preloaded(
        &self,
        conn: &Connection,
        sender: Sender<'_>,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        bytes: &[u8],
        preloaded: Option<Preloaded>,
    ) -> Result<Merged, DocError> {
        match Self::meta(conn, id)? {
            None => {
                if let Some(preloaded) = preloaded.filter(|p| self.read_ahead_for(kind, p)) {
                    return self
                        .insert_preloaded(conn, sender, id, kind, scope, bytes, preloaded)
                        .map(Merged::Changed);
                }
                // Bytes that load as a whole document (what a peer sends for a record we have not
                // seen: its snapshot and pending changes) are kept as they came: saving the
                // document again would cost more than the rest of the merge. Anything else is
                // read change by change and saved.
                let (mut doc, verbatim) = match guarded(id, || AutoCommit::load(bytes)) {
                    Ok(doc) => (doc, Some(bytes)),
                    Err(_) => (
                        guarded(id, || {
                            let mut d = AutoCommit::new();
                            d.load_incremental(bytes)?;
                            Ok(d)
                        })?,
                        None,
                    ),
                };
                check_new_changes(id, &mut doc, &[], sender, scope)?;
                check_envelope(
                    id,
                    kind,
                    scope,
                    crate::fields::text(&doc, KIND_KEY),
                    crate::fields::text(&doc, SCOPE_KEY),
                )?;
                Ok(Merged::Changed(
                    self.insert_new(conn, id, kind, scope, &mut doc, verbatim)?,
                ))
            }
            Some((meta, _)) => {
                if meta.kind != kind || meta.scope != *scope {
                    return Err(DocError::Invalid(format!(
                        "record {id} is {} in {} here; a peer sent it as {kind} in {scope}",
                        meta.kind, meta.scope
                    )));
                }
                let (meta, mut doc) = self.load(conn, id)?;
                let before = doc.get_heads();
                let lists_before = ListItems::read(&doc, self.append_only(kind));
                guarded(id, || doc.load_incremental(bytes))?;
                let after = doc.get_heads();
                if after == before {
                    return Ok(Merged::Unchanged);
                }
                check_new_changes(id, &mut doc, &before, sender, scope)?;
                check_append_only(id, &doc, &lists_before, sender, self.append_only(kind))?;
                let new_bytes = doc.save_after(&before);
                Ok(Merged::Changed(
                    self.record_change(conn, meta, &mut doc, &new_bytes)?,
                ))
            }
        }
    }

    /// Marks a document as quarantined: it is skipped by loads, projections and sync until repaired.
    pub fn quarantine(conn: &Connection, id: Uuid, reason: &str) -> Result<(), DocError> {
        conn.prepare_cached("UPDATE documents SET quarantined = ?2 WHERE id = ?1")?
            .execute(params![
                id.to_string(),
                reason.chars().take(500).collect::<String>()
            ])?;
        Ok(())
    }

    /// Quarantined documents: id, kind, reason.
    pub fn quarantined(conn: &Connection) -> Result<Vec<(Uuid, String, String)>, DocError> {
        let mut stmt = conn.prepare(
            "SELECT id, kind, quarantined FROM documents WHERE quarantined IS NOT NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, reason) = row?;
            if let Ok(id) = id.parse() {
                out.push((id, kind, reason));
            }
        }
        Ok(out)
    }

    /// Documents changed after `since`, in sequence order, at most `limit`.
    pub fn changed_since(
        conn: &Connection,
        since: i64,
        limit: usize,
    ) -> Result<Vec<DocMeta>, DocError> {
        // One query for the whole page, not one more per document.
        let mut stmt = conn.prepare_cached(
            "SELECT id, kind, scope, heads, seq, created_ms, updated_ms FROM documents
             WHERE seq > ?1 AND quarantined IS NULL ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since, limit as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, scope, heads, seq, created_ms, updated_ms) = row?;
            if let Ok(id) = id.parse() {
                out.push(meta_from_columns(
                    id, kind, &scope, &heads, seq, created_ms, updated_ms,
                )?);
            }
        }
        Ok(out)
    }

    /// [`Self::changed_since`] with each document's stored size in bytes (snapshot and pending
    /// changes), so a sender can bound a batch by what it will put on the wire.
    pub fn changed_since_sized(
        conn: &Connection,
        since: i64,
        limit: usize,
    ) -> Result<Vec<(DocMeta, usize)>, DocError> {
        let mut stmt = conn.prepare_cached(
            "SELECT id, kind, scope, heads, seq, created_ms, updated_ms,
                    length(snapshot) + CASE WHEN pending_changes = 0 THEN 0 ELSE
                      (SELECT COALESCE(SUM(length(bytes)), 0) FROM document_changes WHERE doc_id = id) END
             FROM documents WHERE seq > ?1 AND quarantined IS NULL ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since, limit as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, scope, heads, seq, created_ms, updated_ms, size) = row?;
            if let Ok(id) = id.parse() {
                out.push((
                    meta_from_columns(id, kind, &scope, &heads, seq, created_ms, updated_ms)?,
                    usize::try_from(size).unwrap_or(0),
                ));
            }
        }
        Ok(out)
    }

    /// A document as stored: its snapshot followed by its pending changes, which automerge loads
    /// as one sequence of chunks. Sent whole to a peer that has never seen the record, without
    /// loading it here. None for a document this node lacks or has quarantined.
    pub fn stored_bytes(conn: &Connection, id: Uuid) -> Result<Option<Vec<u8>>, DocError> {
        let key = id.to_string();
        let row = conn
            .prepare_cached(
                "SELECT snapshot, pending_changes FROM documents WHERE id = ?1 AND quarantined IS NULL",
            )?
            .query_row(
                [&key],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        let Some((mut bytes, pending)) = row else {
            return Ok(None);
        };
        if pending > 0 {
            let mut stmt = conn.prepare_cached(
                "SELECT bytes FROM document_changes WHERE doc_id = ?1 ORDER BY n",
            )?;
            for change in stmt.query_map([&key], |r| r.get::<_, Vec<u8>>(0))? {
                bytes.extend_from_slice(&change?);
            }
        }
        Ok(Some(bytes))
    }

    /// Folds pending incremental changes into snapshots for up to `limit` documents with at least
    /// `min_pending` changes. Returns how many were compacted. Compaction changes bytes, not content,
    /// so it does not bump the sequence.
    pub fn compact_some(
        &self,
        conn: &Connection,
        min_pending: i64,
        limit: usize,
    ) -> Result<usize, DocError> {
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM documents WHERE pending_changes >= ?1 AND quarantined IS NULL LIMIT ?2")?
            .query_map(params![min_pending.max(1), limit as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut done = 0;
        for id in ids {
            let Ok(uuid) = id.parse() else { continue };
            let (_, mut doc) = match self.load(conn, uuid) {
                Ok(loaded) => loaded,
                Err(DocError::Corrupt { id, reason }) => {
                    Self::quarantine(conn, id, &reason)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !doc.get_missing_deps(&[]).is_empty() {
                continue;
            }
            let snapshot = doc.save();
            conn.prepare_cached("DELETE FROM document_changes WHERE doc_id = ?1")?
                .execute([&id])?;
            conn.prepare_cached(
                "UPDATE documents SET snapshot = ?2, pending_changes = 0 WHERE id = ?1",
            )?
            .execute(params![id, snapshot])?;
            done += 1;
        }
        Ok(done)
    }

    /// Drops every projection's rows and rebuilds them from the documents. Returns the number of
    /// documents projected; corrupt ones are quarantined and skipped.
    pub fn rebuild_projections(&self, conn: &Connection) -> Result<usize, DocError> {
        for p in self.projections.values() {
            p.clear(conn).map_err(|e| projection_failed(p.kind(), e))?;
        }
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM documents WHERE quarantined IS NULL ORDER BY seq")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut count = 0;
        for id in ids {
            let Ok(uuid) = id.parse() else { continue };
            match self.load(conn, uuid) {
                Ok((meta, mut doc)) => {
                    self.project(conn, &meta, &mut doc)?;
                    count += 1;
                }
                Err(DocError::Corrupt { id, reason }) => Self::quarantine(conn, id, &reason)?,
                Err(e) => return Err(e),
            }
        }
        Ok(count)
    }

    /// Deletes the records of [`Flow::UpOnly`] kinds that a node of area `holder` should not hold
    /// (they came down before the kind's flow changed), with their projection rows. Returns how many
    /// went, per kind.
    pub fn forget_out_of_flow(
        &self,
        conn: &Connection,
        holder: &AreaCode,
    ) -> Result<Vec<(&'static str, usize)>, DocError> {
        let mut out = Vec::new();
        for p in self.projections.values() {
            if p.flow() != Flow::UpOnly {
                continue;
            }
            let ids: Vec<(String, String)> = conn
                .prepare("SELECT id, scope FROM documents WHERE kind = ?1")?
                .query_map([p.kind()], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut gone = 0;
            for (id, scope) in ids {
                let keep = scope
                    .parse::<AreaCode>()
                    .is_ok_and(|scope| Flow::UpOnly.reaches(holder, &scope));
                if keep {
                    continue;
                }
                if let Ok(uuid) = id.parse() {
                    p.forget(conn, uuid)
                        .map_err(|e| projection_failed(p.kind(), e))?;
                }
                conn.prepare_cached("DELETE FROM documents WHERE id = ?1")?
                    .execute([&id])?;
                gone += 1;
            }
            if gone > 0 {
                out.push((p.kind(), gone));
            }
        }
        Ok(out)
    }
}

/// The merge rule on author claims: from a node below, every change not yet here must claim an author
/// inside the sender's area who could write a record scoped to `scope`. One bad change refuses the
/// whole message, and nothing of it is stored.
fn check_new_changes(
    id: Uuid,
    doc: &mut AutoCommit,
    before: &[ChangeHash],
    sender: Sender<'_>,
    scope: &AreaCode,
) -> Result<(), DocError> {
    if matches!(sender, Sender::Trusted) {
        return Ok(());
    }
    let changes = doc.get_changes_meta(before);
    check_claims(
        id,
        changes.iter().map(|m| (m.hash, m.message.as_deref())),
        sender,
        scope,
    )
}

/// [`check_new_changes`] on changes already listed: (hash, message) of each.
fn check_claims<'a>(
    id: Uuid,
    claims: impl IntoIterator<Item = (ChangeHash, Option<&'a str>)>,
    sender: Sender<'_>,
    scope: &AreaCode,
) -> Result<(), DocError> {
    let Sender::Below(sender_area) = sender else {
        return Ok(());
    };
    for (hash, message) in claims {
        if let Err(e) = crate::author::check_from_below(message, sender_area, scope) {
            return Err(DocError::Invalid(format!(
                "record {id}: change {hash}: {e}"
            )));
        }
    }
    Ok(())
}

/// A record new here must say inside itself the kind and scope its envelope gives it: the row is
/// stored under the envelope's, and every later merge trusts the row.
fn check_envelope(
    id: Uuid,
    kind: &str,
    scope: &AreaCode,
    stated_kind: Option<String>,
    stated_scope: Option<String>,
) -> Result<(), DocError> {
    if stated_kind.as_deref() != Some(kind) || stated_scope.as_deref() != Some(scope.as_str()) {
        return Err(DocError::Invalid(format!(
            "record {id}: its content says kind {stated_kind:?} scope {stated_scope:?}, the envelope {kind} {scope}"
        )));
    }
    Ok(())
}

/// A projection's failure, named by its kind, as the store reports it.
fn projection_failed(kind: &str, e: ProjectionError) -> DocError {
    DocError::Projection {
        kind: kind.to_string(),
        message: e.0,
    }
}

/// Changes from below waiting for their dependencies, per record, at most.
const MAX_PENDING_FROM_BELOW: i64 = 256;

/// The changes in sync-message chunks (single change chunks, or the bundles newer peers send).
fn changes_in(chunks: &[Vec<u8>]) -> Option<Vec<automerge::Change>> {
    let mut out = Vec::new();
    for chunk in chunks {
        match automerge::Change::from_bytes(chunk.clone()) {
            Ok(change) => out.push(change),
            Err(_) => {
                let bundle = automerge::Bundle::try_from(chunk.as_slice()).ok()?;
                out.extend(bundle.to_changes().ok()?);
            }
        }
    }
    Some(out)
}

/// Of queued changes from below, those to keep, each as its own change chunk: each checked like a
/// merged change (an unreadable chunk or a bad claim refuses the message), those already applied in
/// the document dropped.
fn checked_pending(
    id: Uuid,
    doc: &mut AutoCommit,
    chunks: &[Vec<u8>],
    sender: Sender<'_>,
    scope: &AreaCode,
) -> Result<Vec<Vec<u8>>, DocError> {
    let Sender::Below(sender_area) = sender else {
        return Ok(chunks.to_vec());
    };
    let changes = changes_in(chunks)
        .ok_or_else(|| DocError::Invalid(format!("record {id}: changes that cannot be read")))?;
    let mut keep = Vec::new();
    for change in changes {
        if doc.get_change_by_hash(&change.hash()).is_some() {
            continue;
        }
        crate::author::check_from_below(change.message(), sender_area, scope).map_err(|e| {
            DocError::Invalid(format!("record {id}: change {}: {e}", change.hash()))
        })?;
        keep.push(change.raw_bytes().to_vec());
    }
    Ok(keep)
}

/// The items of a document's append-only lists, each with a fingerprint of its content.
#[derive(Debug, Default)]
struct ListItems(BTreeMap<String, String>);

impl ListItems {
    fn read(doc: &AutoCommit, keys: &[&str]) -> ListItems {
        use automerge::ReadDoc;
        let mut out = BTreeMap::new();
        for key in keys {
            let Ok(lists) = doc.get_all(automerge::ROOT, *key) else {
                continue;
            };
            for (value, list) in lists {
                if !matches!(value, automerge::Value::Object(automerge::ObjType::List)) {
                    continue;
                }
                for index in 0..doc.length(&list) {
                    for (item, item_id) in doc.get_all(&list, index).unwrap_or_default() {
                        out.insert(
                            format!("{key}/{item_id}"),
                            fingerprint(doc, &item, &item_id),
                        );
                    }
                }
            }
        }
        ListItems(out)
    }
}

/// A value's content, recursively for objects, as text: equal exactly when the content is.
fn fingerprint(doc: &AutoCommit, value: &automerge::Value<'_>, id: &automerge::ObjId) -> String {
    use automerge::ReadDoc;
    match value {
        automerge::Value::Scalar(s) => format!("{s:?}"),
        automerge::Value::Object(automerge::ObjType::Map) => {
            let mut parts = Vec::new();
            for key in doc.keys(id) {
                for (v, child) in doc.get_all(id, key.as_str()).unwrap_or_default() {
                    parts.push(format!("{key}={}", fingerprint(doc, &v, &child)));
                }
            }
            format!("{{{}}}", parts.join(","))
        }
        automerge::Value::Object(_) => {
            let mut parts = Vec::new();
            for index in 0..doc.length(id) {
                for (v, child) in doc.get_all(id, index).unwrap_or_default() {
                    parts.push(fingerprint(doc, &v, &child));
                }
            }
            format!("[{}]", parts.join(","))
        }
    }
}

/// The merge rule for append-only lists (transitions, comments, attachments): from a node below, a
/// change may add items, never remove one, replace a list, or change an item already there. The
/// writer of a township's transition is the township; a village deleting or editing it would make
/// the record say what its writer did not write.
fn check_append_only(
    id: Uuid,
    doc: &AutoCommit,
    before: &ListItems,
    sender: Sender<'_>,
    keys: &[&str],
) -> Result<(), DocError> {
    if !matches!(sender, Sender::Below(_)) || before.0.is_empty() {
        return Ok(());
    }
    let after = ListItems::read(doc, keys);
    for (item, content) in &before.0 {
        match after.0.get(item) {
            None => {
                return Err(DocError::Invalid(format!(
                    "record {id}: a change from below removes {item} from an append-only list"
                )));
            }
            Some(now) if now != content => {
                return Err(DocError::Invalid(format!(
                    "record {id}: a change from below alters {item} in an append-only list"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The next sync message from an in-memory document, with automerge's panics turned into errors.
fn generate(
    doc: &mut AutoCommit,
    id: Uuid,
    state: &mut automerge::sync::State,
) -> Result<Option<Vec<u8>>, DocError> {
    use automerge::sync::SyncDoc;
    let message = catch_unwind(AssertUnwindSafe(|| doc.sync().generate_sync_message(state)))
        .map_err(|_| DocError::Corrupt {
            id,
            reason: "automerge panicked generating a sync message".into(),
        })?;
    Ok(message.map(|m| m.encode()))
}

/// Automerge sync over stored documents: one side of the per-document sync protocol, with the
/// caller holding the per-peer, per-connection [`automerge::sync::State`].
impl DocStore {
    /// Loads a document for sync, or an empty one if this node has never seen it (so the peer learns
    /// it must send everything).
    fn load_or_empty(
        &self,
        conn: &Connection,
        id: Uuid,
    ) -> Result<Option<(DocMeta, AutoCommit)>, DocError> {
        match self.load(conn, id) {
            Ok(loaded) => Ok(Some(loaded)),
            Err(DocError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The next sync message for `id` to the peer behind `state`, if there is one.
    pub fn sync_generate(
        &self,
        conn: &Connection,
        id: Uuid,
        state: &mut automerge::sync::State,
    ) -> Result<Option<Vec<u8>>, DocError> {
        let mut doc = match self.load_or_empty(conn, id)? {
            Some((_, doc)) => doc,
            None => AutoCommit::new(),
        };
        generate(&mut doc, id, state)
    }

    /// Applies a sync message from a peer. The caller has already decided the peer may write
    /// records of this kind in this scope; the content must agree with that envelope or nothing is
    /// stored.
    #[allow(clippy::too_many_arguments)]
    pub fn sync_receive(
        &self,
        conn: &Connection,
        sender: Sender<'_>,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        message: &[u8],
        state: &mut automerge::sync::State,
    ) -> Result<Merged, DocError> {
        Ok(self
            .sync_exchange(conn, sender, id, kind, scope, message, state, false)?
            .0)
    }

    /// [`Self::sync_receive`] and, with `reply`, the answer to send back, made from the document
    /// already in memory rather than loaded a second time.
    #[allow(clippy::too_many_arguments)]
    pub fn sync_exchange(
        &self,
        conn: &Connection,
        sender: Sender<'_>,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        message: &[u8],
        state: &mut automerge::sync::State,
        reply: bool,
    ) -> Result<(Merged, Option<Vec<u8>>), DocError> {
        use automerge::sync::SyncDoc;
        let message = automerge::sync::Message::decode(message).map_err(|e| {
            DocError::Invalid(format!("record {id}: undecodable sync message: {e}"))
        })?;
        let existing = self.load_or_empty(conn, id)?;
        if let Some((meta, _)) = &existing
            && (meta.kind != kind || meta.scope != *scope)
        {
            return Err(DocError::Invalid(format!(
                "record {id} is {} in {} here; a peer sent it as {kind} in {scope}",
                meta.kind, meta.scope
            )));
        }
        let (meta, mut doc) = match existing {
            Some((meta, doc)) => (Some(meta), doc),
            None => (None, AutoCommit::new().with_actor(self.actor.clone())),
        };
        let before = doc.get_heads();
        let lists_before = ListItems::read(&doc, self.append_only(kind));
        let raw_chunks: Vec<Vec<u8>> = message.changes.iter().map(<[u8]>::to_vec).collect();
        let raw_changes: Vec<u8> = raw_chunks.iter().flatten().copied().collect();
        catch_unwind(AssertUnwindSafe(|| {
            doc.sync().receive_sync_message(state, message)
        }))
        .map_err(|_| DocError::Corrupt {
            id,
            reason: "automerge panicked on a sync message".into(),
        })?
        .map_err(|e| DocError::Corrupt {
            id,
            reason: e.to_string(),
        })?;
        let after = doc.get_heads();
        if after == before {
            // Changes whose dependencies have not arrived yet are queued by automerge, not applied.
            // The peer will not send them again (it believes they arrived), so they are kept with the
            // document and applied when a later load finds their dependencies. From below, each is
            // checked first like any merged change (its author claim), duplicates are dropped, and at
            // most a bounded number wait per record: nothing unchecked is stored, nothing grows without
            // bound.
            if let Some(meta) = &meta
                && !raw_changes.is_empty()
            {
                match sender {
                    Sender::Trusted => self.keep_pending(conn, meta.id, &raw_changes)?,
                    Sender::Below(_) => {
                        for change in checked_pending(id, &mut doc, &raw_chunks, sender, scope)? {
                            let (waiting, known): (i64, bool) = conn
                                .prepare_cached(
                                    "SELECT pending_changes, EXISTS (SELECT 1 FROM document_changes
                                   WHERE doc_id = ?1 AND bytes = ?2) FROM documents WHERE id = ?1",
                                )?
                                .query_row(params![id.to_string(), change], |r| {
                                    Ok((r.get(0)?, r.get(1)?))
                                })?;
                            if !known && waiting < MAX_PENDING_FROM_BELOW {
                                self.keep_pending(conn, meta.id, &change)?;
                            }
                        }
                    }
                }
            }
            let answer = if reply {
                generate(&mut doc, id, state)?
            } else {
                None
            };
            return Ok((Merged::Unchanged, answer));
        }
        check_new_changes(id, &mut doc, &before, sender, scope)?;
        check_append_only(id, &doc, &lists_before, sender, self.append_only(kind))?;
        let stated_kind = crate::fields::text(&doc, KIND_KEY);
        let stated_scope = crate::fields::text(&doc, SCOPE_KEY);
        if stated_kind.as_deref() != Some(kind) || stated_scope.as_deref() != Some(scope.as_str()) {
            return Err(DocError::Invalid(format!(
                "record {id}: its content says kind {stated_kind:?} scope {stated_scope:?}, the envelope {kind} {scope}"
            )));
        }
        doc.set_actor(self.actor.clone());
        let merged = match meta {
            None => Merged::Changed(self.insert_new(conn, id, kind, scope, &mut doc, None)?),
            Some(meta) => {
                let bytes = doc.save_after(&before);
                Merged::Changed(self.record_change(conn, meta, &mut doc, &bytes)?)
            }
        };
        let answer = if reply {
            generate(&mut doc, id, state)?
        } else {
            None
        };
        Ok((merged, answer))
    }

    /// Appends received changes that cannot be applied yet to the document's change log, without a
    /// new sequence number (nothing visible changed).
    fn keep_pending(&self, conn: &Connection, id: Uuid, bytes: &[u8]) -> Result<(), DocError> {
        let key = id.to_string();
        let pending: i64 = conn
            .prepare_cached("SELECT pending_changes FROM documents WHERE id = ?1")?
            .query_row([&key], |r| r.get(0))?;
        conn.prepare_cached("INSERT INTO document_changes (doc_id, n, bytes) VALUES (?1, ?2, ?3)")?
            .execute(params![key, pending + 1, bytes])?;
        conn.prepare_cached("UPDATE documents SET pending_changes = ?2 WHERE id = ?1")?
            .execute(params![key, pending + 1])?;
        Ok(())
    }

    /// Whether this node's copy of `id` already contains every change in `heads`.
    pub fn has_heads(
        &self,
        conn: &Connection,
        id: Uuid,
        heads: &[ChangeHash],
    ) -> Result<bool, DocError> {
        if heads.is_empty() {
            return Ok(true);
        }
        // The common answer (same heads) comes from the row alone; only a difference needs the
        // document itself, which is much dearer to load.
        if let Some((meta, None)) = Self::meta(conn, id)?
            && meta.heads == heads
        {
            return Ok(true);
        }
        match self.load_or_empty(conn, id)? {
            None => Ok(false),
            Some((meta, mut doc)) => {
                if meta.heads == heads {
                    return Ok(true);
                }
                Ok(heads.iter().all(|h| doc.get_change_by_hash(h).is_some()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct TitleProjection {
        calls: Mutex<usize>,
    }

    impl Projection for TitleProjection {
        fn kind(&self) -> &'static str {
            "note"
        }
        fn project(
            &self,
            conn: &Connection,
            meta: &DocMeta,
            doc: &AutoCommit,
            _authors: &Authors,
        ) -> Result<(), ProjectionError> {
            *self.calls.lock().unwrap() += 1;
            conn.execute("INSERT INTO notes (id, title) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET title = excluded.title", params![meta.id.to_string(), crate::fields::text(doc, "title").unwrap_or_default()],
            )?;
            Ok(())
        }
        fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
            conn.execute("DELETE FROM notes", [])?;
            Ok(())
        }
    }

    fn author() -> Author {
        Author::node("330723".parse().unwrap())
    }

    fn setup() -> (Connection, DocStore, Arc<TitleProjection>) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch("CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT)")
            .unwrap();
        let projection = Arc::new(TitleProjection {
            calls: Mutex::new(0),
        });
        let store = DocStore::new(ActorId::from([7u8; 16]), vec![projection.clone()], || 1_000)
            .with_compact_after(4);
        (conn, store, projection)
    }

    fn title(conn: &Connection, id: Uuid) -> String {
        conn.prepare_cached("SELECT title FROM notes WHERE id = ?1")
            .unwrap()
            .query_row([id.to_string()], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn create_change_compact_and_rebuild() {
        let (conn, store, projection) = setup();
        let scope: AreaCode = "330723001001".parse().unwrap();
        let meta = store
            .create(&conn, &author(), "note", &scope, |d| {
                Ok(d.put(automerge::ROOT, "title", "v0").map(|_| ())?)
            })
            .unwrap();
        assert_eq!(meta.seq, 1);
        assert_eq!(title(&conn, meta.id), "v0");
        for i in 1..10 {
            let (m, ()) = store
                .change(&conn, &author(), meta.id, |d| {
                    Ok(d.put(automerge::ROOT, "title", format!("v{i}"))?)
                })
                .unwrap();
            assert_eq!(m.seq, i + 1);
        }
        assert_eq!(title(&conn, meta.id), "v9");
        let pending: i64 = conn
            .query_row("SELECT count(*) FROM document_changes", [], |r| r.get(0))
            .unwrap();
        assert!(
            pending < 4,
            "inline compaction keeps the change log short ({pending})"
        );

        // A no-op change writes nothing.
        let seq_before = DocStore::current_seq(&conn).unwrap();
        store.change(&conn, &author(), meta.id, |_| Ok(())).unwrap();
        assert_eq!(DocStore::current_seq(&conn).unwrap(), seq_before);

        assert_eq!(
            store.compact_some(&conn, 1, 10).unwrap(),
            usize::from(pending > 0)
        );
        let (_, doc) = store.load(&conn, meta.id).unwrap();
        assert_eq!(crate::fields::text(&doc, "title").as_deref(), Some("v9"));

        conn.prepare_cached("DELETE FROM notes")
            .unwrap()
            .execute([])
            .unwrap();
        let before = *projection.calls.lock().unwrap();
        assert_eq!(store.rebuild_projections(&conn).unwrap(), 1);
        assert_eq!(*projection.calls.lock().unwrap(), before + 1);
        assert_eq!(title(&conn, meta.id), "v9");
        assert_eq!(DocStore::changed_since(&conn, 0, 10).unwrap().len(), 1);
        assert!(
            DocStore::changed_since(&conn, seq_before, 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn remote_merges_converge_and_are_idempotent() {
        let (conn_a, store_a, _) = setup();
        let (conn_b, _, _) = setup();
        let store_b = DocStore::new(
            ActorId::from([9u8; 16]),
            vec![Arc::new(TitleProjection {
                calls: Mutex::new(0),
            })],
            || 2_000,
        );
        let scope: AreaCode = "330723001".parse().unwrap();
        let meta = store_a
            .create(&conn_a, &author(), "note", &scope, |d| {
                Ok(d.put(automerge::ROOT, "title", "a").map(|_| ())?)
            })
            .unwrap();
        let (_, mut doc_a) = store_a.load(&conn_a, meta.id).unwrap();
        let full = doc_a.save();
        assert!(matches!(
            store_b
                .merge_remote(&conn_b, Sender::Trusted, meta.id, "note", &scope, &full)
                .unwrap(),
            Merged::Changed(_)
        ));
        assert_eq!(
            store_b
                .merge_remote(&conn_b, Sender::Trusted, meta.id, "note", &scope, &full)
                .unwrap(),
            Merged::Unchanged
        );

        // Concurrent edits on both sides, exchanged both ways.
        store_a
            .change(&conn_a, &author(), meta.id, |d| {
                Ok(d.put(automerge::ROOT, "body", "from a")?)
            })
            .unwrap();
        store_b
            .change(&conn_b, &author(), meta.id, |d| {
                Ok(d.put(automerge::ROOT, "extra", "from b")?)
            })
            .unwrap();
        let (_, mut a) = store_a.load(&conn_a, meta.id).unwrap();
        let (_, mut b) = store_b.load(&conn_b, meta.id).unwrap();
        let a_bytes = a.save();
        let b_bytes = b.save();
        store_a
            .merge_remote(&conn_a, Sender::Trusted, meta.id, "note", &scope, &b_bytes)
            .unwrap();
        store_b
            .merge_remote(&conn_b, Sender::Trusted, meta.id, "note", &scope, &a_bytes)
            .unwrap();
        let (ma, _) = store_a.load(&conn_a, meta.id).unwrap();
        let (mb, _) = store_b.load(&conn_b, meta.id).unwrap();
        assert_eq!(encode_heads(&ma.heads), encode_heads(&mb.heads));

        // Wrong envelope is refused.
        let other: AreaCode = "330723002".parse().unwrap();
        assert!(
            store_b
                .merge_remote(&conn_b, Sender::Trusted, meta.id, "note", &other, &a_bytes)
                .is_err()
        );
    }

    /// The title projection split in two, as the incidents projection is: read ahead, then written.
    struct ReadAheadTitles {
        reads: Mutex<usize>,
        writes: Mutex<usize>,
    }

    impl Projection for ReadAheadTitles {
        fn kind(&self) -> &'static str {
            "note"
        }
        fn project(
            &self,
            conn: &Connection,
            meta: &DocMeta,
            doc: &AutoCommit,
            authors: &Authors,
        ) -> Result<(), ProjectionError> {
            let input = self.read(&meta.scope, doc, authors).unwrap();
            self.write(conn, meta, input)
        }
        fn read(
            &self,
            scope: &AreaCode,
            doc: &AutoCommit,
            _authors: &Authors,
        ) -> Option<ProjectionInput> {
            *self.reads.lock().unwrap() += 1;
            let title = crate::fields::text(doc, "title").unwrap_or_default();
            Some(Box::new(format!("{title} @{scope}")))
        }
        fn write(
            &self,
            conn: &Connection,
            meta: &DocMeta,
            input: ProjectionInput,
        ) -> Result<(), ProjectionError> {
            *self.writes.lock().unwrap() += 1;
            let title = input
                .downcast::<String>()
                .map_err(|_| ProjectionError("not a title".into()))?;
            conn.execute(
                "INSERT INTO notes (id, title) VALUES (?1, ?2)",
                params![meta.id.to_string(), *title],
            )?;
            Ok(())
        }
        fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
            conn.execute("DELETE FROM notes", [])?;
            Ok(())
        }
    }

    fn read_ahead_node() -> (Connection, DocStore, Arc<ReadAheadTitles>) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch("CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT)")
            .unwrap();
        let projection = Arc::new(ReadAheadTitles {
            reads: Mutex::new(0),
            writes: Mutex::new(0),
        });
        let store = DocStore::new(ActorId::from([8u8; 16]), vec![projection.clone()], || 3_000);
        (conn, store, projection)
    }

    fn row(conn: &Connection, id: Uuid) -> (String, String, String, i64, Vec<u8>, String) {
        conn.query_row(
            "SELECT d.kind, d.scope, d.heads, d.seq, d.snapshot, n.title FROM documents d JOIN notes n ON n.id = d.id WHERE d.id = ?1",
            [id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .unwrap()
    }

    #[test]
    fn a_record_read_ahead_is_stored_and_projected_as_one_read_on_the_writer() {
        let (source, source_store, _) = setup();
        let scope: AreaCode = "330723001".parse().unwrap();
        let village: AreaCode = "330723001001".parse().unwrap();
        let mut bytes = Vec::new();
        for (i, (who, at)) in [(&village, &village), (&scope, &scope)]
            .into_iter()
            .enumerate()
        {
            let meta = source_store
                .create(&source, &Author::node((*who).clone()), "note", at, |d| {
                    Ok(d.put(automerge::ROOT, "title", format!("河道 {i}"))
                        .map(|_| ())?)
                })
                .unwrap();
            bytes.push((
                meta.id,
                at.clone(),
                DocStore::stored_bytes(&source, meta.id).unwrap().unwrap(),
            ));
        }
        let (ahead, ahead_store, projection) = read_ahead_node();
        let (direct, direct_store, _) = read_ahead_node();
        for (id, at, b) in &bytes {
            let preloaded = ahead_store.preload("note", at.as_str(), b);
            assert!(preloaded.is_some());
            ahead_store
                .merge_remote_preloaded(&ahead, Sender::Trusted, *id, "note", at, b, preloaded)
                .unwrap();
            direct_store
                .merge_remote(&direct, Sender::Trusted, *id, "note", at, b)
                .unwrap();
            assert_eq!(row(&ahead, *id), row(&direct, *id));
        }
        assert_eq!(*projection.reads.lock().unwrap(), 2);
        assert_eq!(*projection.writes.lock().unwrap(), 2);

        // Every check still runs on what was read ahead. From the village, a record claimed by the
        // township's node is refused, and so is one whose envelope disagrees with its content.
        let (below, below_store, _) = read_ahead_node();
        let (forged_id, forged_scope, forged) = &bytes[1];
        let (own_id, own_scope, own) = &bytes[0];
        for (id, envelope_scope, b, sender, why) in [
            (
                forged_id,
                forged_scope,
                forged,
                Sender::Below(&village),
                "claims the township's node",
            ),
            // Even from the trusted upstream.
            (
                own_id,
                forged_scope,
                own,
                Sender::Trusted,
                "is the village's",
            ),
        ] {
            let preloaded = below_store.preload("note", envelope_scope.as_str(), b);
            let result = below_store.merge_remote_preloaded(
                &below,
                sender,
                *id,
                "note",
                envelope_scope,
                b,
                preloaded,
            );
            assert!(
                matches!(result, Err(DocError::Invalid(_))),
                "{why}: {result:?}"
            );
            assert!(DocStore::meta(&below, *id).unwrap().is_none(), "{why}");
        }
        let preloaded = below_store.preload("other-kind", own_scope.as_str(), own);
        assert!(
            below_store
                .merge_remote_preloaded(
                    &below,
                    Sender::Below(&village),
                    *own_id,
                    "note",
                    own_scope,
                    own,
                    preloaded
                )
                .is_ok(),
            "read for another kind: read again on the writer"
        );
        assert_eq!(row(&below, *own_id).5, format!("河道 0 @{own_scope}"));
        assert!(
            below_store
                .preload("note", own_scope.as_str(), b"garbage")
                .is_none()
        );
    }

    #[test]
    fn garbage_bytes_are_reported_corrupt_not_panics() {
        let (conn, store, _) = setup();
        let scope: AreaCode = "330723001".parse().unwrap();
        let id = Uuid::now_v7();
        for junk in [
            &b""[..],
            b"\x85\x6f\x4a\x83garbage",
            &[0u8; 64],
            &[0xffu8; 300],
        ] {
            let result = store.merge_remote(&conn, Sender::Trusted, id, "note", &scope, junk);
            assert!(
                result.is_err() || matches!(result, Ok(Merged::Changed(_))),
                "{result:?}"
            );
        }
        // A stored document whose bytes went bad is reported, and quarantine keeps it out.
        let meta = store
            .create(&conn, &author(), "note", &scope, |d| {
                Ok(d.put(automerge::ROOT, "title", "x").map(|_| ())?)
            })
            .unwrap();
        conn.prepare_cached("UPDATE documents SET snapshot = x'00ff00ff' WHERE id = ?1")
            .unwrap()
            .execute([meta.id.to_string()])
            .unwrap();
        let err = store.load(&conn, meta.id).unwrap_err();
        assert!(matches!(err, DocError::Corrupt { .. }), "{err}");
        DocStore::quarantine(&conn, meta.id, "test").unwrap();
        assert!(matches!(
            store.load(&conn, meta.id),
            Err(DocError::Quarantined { .. })
        ));
        assert_eq!(DocStore::quarantined(&conn).unwrap().len(), 1);
        assert_eq!(store.rebuild_projections(&conn).unwrap(), 0);
    }

    #[test]
    fn actor_depends_on_key_and_salt() {
        let (key, _) = crate::identity::NodeKey::generate().unwrap();
        let a = derive_actor(&key.public_key(), b"salt-1");
        let b = derive_actor(&key.public_key(), b"salt-2");
        assert_ne!(a, b);
        assert_eq!(a, derive_actor(&key.public_key(), b"salt-1"));
    }
}
