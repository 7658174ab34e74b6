//! The node's side of the record store: every record created or changed here goes through
//! [`WriteCtx`], which writes the document, its projection and its audit entry in one transaction.
//! Domains never call the document store directly for writes, so no change escapes the audit chain.

use std::sync::Arc;

use automerge::AutoCommit;
use rusqlite::Connection;
use township_sync::{AreaCode, DocError, DocMeta, DocStore, NodeKey, Timestamp, Transition};
use uuid::Uuid;

use crate::audit::{self, Event};
use crate::clock::Clock;
use crate::store::StoreError;

/// Which record a change is to, what kind it must be, and how the audit entry describes it.
pub struct RecordChange<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub action: &'a str,
    pub detail: serde_json::Value,
}

/// What a write job needs besides its connection. Cheap to clone into each job.
#[derive(Clone)]
pub struct WriteCtx {
    pub docs: DocStore,
    pub key: Arc<NodeKey>,
    pub clock: Clock,
    pub hlc: township_sync::Hlc,
    /// The highest record sequence number issued, so sync sessions notice changes without a query.
    pub latest_seq: Arc<std::sync::atomic::AtomicI64>,
}

impl WriteCtx {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Notes that a record reached sequence `seq` (the write may still roll back; a spurious wake-up
    /// only costs a sync session one look).
    pub fn saw_seq(&self, seq: i64) {
        self.latest_seq
            .fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
    }

    /// A timestamp for a workflow transition made here now.
    pub fn timestamp(&self) -> Timestamp {
        self.hlc.now()
    }

    pub fn audit(&self, conn: &Connection, event: Event<'_>) -> Result<i64, StoreError> {
        audit::append(conn, &self.key, self.now_ms(), event)
    }

    /// Creates a record and audits it as `record.create` by `actor`.
    pub fn create_record(
        &self,
        conn: &Connection,
        actor: &str,
        kind: &str,
        scope: &AreaCode,
        detail: serde_json::Value,
        build: impl FnOnce(&mut AutoCommit) -> Result<(), DocError>,
    ) -> Result<DocMeta, StoreError> {
        let meta = self.docs.create(conn, kind, scope, build)?;
        self.saw_seq(meta.seq);
        let target = format!("{kind}/{}", meta.id);
        self.audit(
            conn,
            Event::new(actor, "record.create", &target).detail(serde_json::json!({
                "scope": scope.as_str(),
                "fields": detail,
            })),
        )?;
        Ok(meta)
    }

    /// Changes a record and audits it as `record.change` with the change's action and detail.
    pub fn change_record<T>(
        &self,
        conn: &Connection,
        actor: &str,
        change: RecordChange<'_>,
        edit: impl FnOnce(&mut AutoCommit) -> Result<T, DocError>,
    ) -> Result<(DocMeta, T), StoreError> {
        let RecordChange {
            id,
            kind,
            action,
            detail,
        } = change;
        let (before, _) = DocStore::meta(conn, id)?.ok_or(DocError::NotFound(id))?;
        if before.kind != kind {
            return Err(DocError::WrongKind {
                id,
                expected: kind.into(),
                found: before.kind,
            }
            .into());
        }
        let (meta, out) = self.docs.change(conn, id, edit)?;
        // An edit that changed nothing wrote nothing, so there is nothing to audit either.
        if meta.seq == before.seq {
            return Ok((meta, out));
        }
        self.saw_seq(meta.seq);
        let target = format!("{kind}/{id}");
        self.audit(
            conn,
            Event::new(actor, "record.change", &target).detail(serde_json::json!({
                "action": action,
                "fields": detail,
            })),
        )?;
        Ok((meta, out))
    }

    /// Builds a transition by `actor` acting as `role`, stamped now.
    pub fn transition(&self, actor: &str, role: &str, action: &str) -> Transition {
        Transition {
            id: Uuid::now_v7().to_string(),
            at: self.timestamp(),
            actor: actor.into(),
            role: role.into(),
            action: action.into(),
            data: Default::default(),
        }
    }
}
