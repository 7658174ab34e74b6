//! The node's side of the record store: every record created or changed here goes through
//! [`WriteCtx`], which writes the document, its projection and its audit entry in one transaction.
//! Domains never call the document store directly for writes, so no change escapes the audit chain.
//!
//! Every change carries its author claim (this node's area and the person who acted, see
//! `township_sync::author`), and projections record a verdict per record: a record whose fields
//! exceed what their writers could grant is quarantined — kept, listed for admins, never effective —
//! and the quarantine is audited once ([`record_verdict`]).

use std::sync::Arc;

use automerge::AutoCommit;
use rusqlite::{Connection, OptionalExtension};
use township_sync::{
    AreaCode, Author, DocError, DocMeta, DocStore, NodeKey, Timestamp, Transition,
};
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
    /// This node's area: the node part of every author claim it writes.
    pub area: AreaCode,
    pub key: Arc<NodeKey>,
    pub clock: Clock,
    pub hlc: township_sync::Hlc,
    /// The highest record sequence number issued, so sync sessions notice changes without a query.
    pub latest_seq: Arc<std::sync::atomic::AtomicI64>,
    /// Woken whenever `latest_seq` moves, for followers that skip commits that changed no record.
    pub records_changed: Arc<tokio::sync::Notify>,
    /// The kind and scope of the records changed lately, so a sync session can tell without the
    /// database whether a change is for its peer at all.
    pub recent: Arc<RecentChanges>,
    /// Whether this node has a level above it: escalation needs somewhere to go.
    pub has_upstream: bool,
}

/// The last [`RecentChanges::KEPT`] record changes by sequence number: kind and scope. A county with
/// hundreds of villages connected would otherwise have every session look in the database after
/// every change anywhere; with this, only the sessions whose peer holds the record do.
#[derive(Debug, Default)]
pub struct RecentChanges(std::sync::Mutex<std::collections::VecDeque<(i64, String, AreaCode)>>);

impl RecentChanges {
    pub const KEPT: usize = 4096;

    fn push(&self, seq: i64, kind: &str, scope: &AreaCode) {
        let mut ring = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ring.len() >= Self::KEPT {
            ring.pop_front();
        }
        ring.push_back((seq, kind.to_string(), scope.clone()));
    }

    /// Whether any change after `after` up to `upto` satisfies `relevant`; None when the changes
    /// kept no longer reach back that far (the caller must look in the database).
    pub fn any_between(
        &self,
        after: i64,
        upto: i64,
        relevant: impl Fn(&str, &AreaCode) -> bool,
    ) -> Option<bool> {
        let ring = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen: Vec<&(i64, String, AreaCode)> = ring
            .iter()
            .filter(|(seq, _, _)| *seq > after && *seq <= upto)
            .collect();
        // Every sequence number in between must be here (they are issued one by one), or one
        // was missed and only the database can say.
        if i64::try_from(seen.len()).ok()? != upto - after {
            return None;
        }
        Some(seen.iter().any(|(_, kind, scope)| relevant(kind, scope)))
    }
}

impl WriteCtx {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Notes that a record changed, reaching sequence `meta.seq` (the write may still roll back; a
    /// spurious wake-up only costs a sync session one look).
    pub fn saw(&self, meta: &DocMeta) {
        self.recent.push(meta.seq, &meta.kind, &meta.scope);
        self.saw_seq(meta.seq);
    }

    /// [`Self::saw`] when the record's kind and scope are not at hand: sessions then look in the
    /// database for what changed.
    pub fn saw_seq(&self, seq: i64) {
        self.latest_seq
            .fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
        self.records_changed.notify_one();
    }

    /// The author claim for a change `actor` makes through this node: the person, or only the node
    /// when the node acts on its own.
    pub fn author(&self, actor: &crate::auth::actor::Actor) -> Author {
        match actor.claim() {
            Some(person) => Author::person(self.area.clone(), person),
            None => Author::node(self.area.clone()),
        }
    }

    /// A timestamp for a workflow transition made here now.
    pub fn timestamp(&self) -> Timestamp {
        self.hlc.now()
    }

    pub fn audit(&self, conn: &Connection, event: Event<'_>) -> Result<i64, StoreError> {
        audit::append(conn, &self.key, self.now_ms(), event)
    }

    /// [`Self::create_record`] under an id the caller chose (refused if a record already has it).
    #[allow(clippy::too_many_arguments)]
    pub fn create_record_with_id(
        &self,
        conn: &Connection,
        by: &Author,
        id: Uuid,
        kind: &str,
        scope: &AreaCode,
        detail: serde_json::Value,
        build: impl FnOnce(&mut AutoCommit) -> Result<(), DocError>,
    ) -> Result<DocMeta, StoreError> {
        let actor = audit_name(by);
        let meta = self.docs.create_with_id(conn, by, id, kind, scope, build)?;
        self.saw(&meta);
        let target = format!("{kind}/{}", meta.id);
        self.audit(
            conn,
            Event::new(actor.as_str(), "record.create", &target).detail(serde_json::json!({
                "scope": scope.as_str(),
                "fields": detail,
            })),
        )?;
        Ok(meta)
    }

    /// Creates a record and audits it as `record.create` by `by`.
    pub fn create_record(
        &self,
        conn: &Connection,
        by: &Author,
        kind: &str,
        scope: &AreaCode,
        detail: serde_json::Value,
        build: impl FnOnce(&mut AutoCommit) -> Result<(), DocError>,
    ) -> Result<DocMeta, StoreError> {
        self.create_record_with_id(conn, by, Uuid::now_v7(), kind, scope, detail, build)
    }

    /// Changes a record and audits it as `record.change` with the change's action and detail.
    pub fn change_record<T>(
        &self,
        conn: &Connection,
        by: &Author,
        change: RecordChange<'_>,
        edit: impl FnOnce(&mut AutoCommit) -> Result<T, DocError>,
    ) -> Result<(DocMeta, T), StoreError> {
        let actor = audit_name(by);
        let actor = actor.as_str();
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
        let (meta, out) = self.docs.change(conn, by, id, edit)?;
        // An edit that changed nothing wrote nothing, so there is nothing to audit either.
        if meta.seq == before.seq {
            return Ok((meta, out));
        }
        self.saw(&meta);
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
            written: Default::default(),
        }
    }
}

/// The name the audit log records for a change's author.
fn audit_name(by: &Author) -> String {
    by.person.as_ref().map_or_else(
        || crate::auth::actor::SYSTEM.to_string(),
        |p| p.name.clone(),
    )
}

/// Records a projection's verdict on a record: quarantined with `reason`, or effective (`None`). A
/// new or changed quarantine, and a release, are audited; an unchanged verdict writes nothing. The
/// verdicts outlive projection rebuilds, so a rebuild does not audit the same quarantine again.
pub fn record_verdict(
    conn: &Connection,
    key: &NodeKey,
    now_ms: i64,
    meta: &DocMeta,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    let id = meta.id.to_string();
    let previous: Option<String> = conn
        .prepare_cached("SELECT reason FROM record_verdicts WHERE doc_id = ?1")?
        .query_row([&id], |r| r.get(0))
        .optional()?;
    if previous.as_deref() == reason {
        return Ok(());
    }
    let target = format!("{}/{id}", meta.kind);
    match reason {
        Some(reason) => {
            conn.execute(
                "INSERT INTO record_verdicts (doc_id, kind, reason, since_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(doc_id) DO UPDATE SET reason = excluded.reason, since_ms = excluded.since_ms",
                rusqlite::params![id, meta.kind, reason, now_ms],
            )?;
            tracing::warn!(record = %target, reason, "record quarantined: it claims more than its writers could grant");
            audit::append(
                conn,
                key,
                now_ms,
                Event::new(crate::auth::actor::SYSTEM, "record.quarantine", &target)
                    .detail(serde_json::json!({"reason": reason, "scope": meta.scope})),
            )?;
        }
        None => {
            conn.execute("DELETE FROM record_verdicts WHERE doc_id = ?1", [&id])?;
            audit::append(
                conn,
                key,
                now_ms,
                Event::new(crate::auth::actor::SYSTEM, "record.release", &target),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::RecentChanges;
    use township_sync::AreaCode;

    #[test]
    fn recent_changes_answer_only_when_they_reach_back_far_enough() {
        let recent = RecentChanges::default();
        let village: AreaCode = "330723001001".parse().unwrap();
        let other: AreaCode = "330723002001".parse().unwrap();
        for seq in 1..=10 {
            recent.push(seq, "incident", if seq == 7 { &village } else { &other });
        }
        let for_village = |_: &str, scope: &AreaCode| scope == &village;
        assert_eq!(recent.any_between(0, 10, for_village), Some(true));
        assert_eq!(recent.any_between(7, 10, for_village), Some(false));
        assert_eq!(recent.any_between(2, 6, for_village), Some(false));
        // A change not seen here (or a sequence number used twice after a rollback): ask the database.
        assert_eq!(recent.any_between(7, 12, for_village), None);
        recent.push(10, "incident", &village);
        assert_eq!(recent.any_between(8, 10, for_village), None);
        for seq in 11..=(RecentChanges::KEPT as i64 + 20) {
            recent.push(seq, "incident", &other);
        }
        assert_eq!(
            recent.any_between(0, 30, for_village),
            None,
            "fell off the ring"
        );
    }
}
