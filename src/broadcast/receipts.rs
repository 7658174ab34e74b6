//! Receipts: what each output did with a broadcast (commanded, started, finished, failed with the
//! reason, unreachable, or simulated for a test with no monitor output), as an append-only stream
//! per broadcast and playing node.
//!
//! They are records of their own (kind `broadcast_receipt`, scoped to the playing node's area) rather
//! than entries in the broadcast: a village hub playing a township's order does not cover the
//! township's record and could not write to it, but it covers its own receipts, which flow up the
//! tree with everything else. Each entry is a transition, so replays and merges are idempotent.
//!
//! Authority rule: entries count only from the system of a node covering the receipt record (the
//! fold's claim check); a person's entry, or one from a node outside the area, is a conflict and
//! never shown. The broadcast id a receipt names is fixed at creation.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ReadDoc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;
use township_sync::docstore::{DocMeta, Projection, ProjectionError};
use township_sync::workflow::Machine;
use township_sync::{AreaCode, Authors, Transition, fields};
use uuid::Uuid;

use crate::auth::actor::{Actor, SYSTEM};
use crate::records::{RecordChange, WriteCtx};
use crate::store::StoreError;

pub const KIND: &str = "broadcast_receipt";

/// What an output reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Commanded,
    Started,
    Finished,
    Failed,
    Unreachable,
    /// A test broadcast on a zone without a monitor output: nothing played, as intended.
    Simulated,
    /// Stopped by a cancel, a correction or a higher level.
    Stopped,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Commanded => "commanded",
            Stage::Started => "started",
            Stage::Finished => "finished",
            Stage::Failed => "failed",
            Stage::Unreachable => "unreachable",
            Stage::Simulated => "simulated",
            Stage::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        [
            Stage::Commanded,
            Stage::Started,
            Stage::Finished,
            Stage::Failed,
            Stage::Unreachable,
            Stage::Simulated,
            Stage::Stopped,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// One entry to append.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub zone: String,
    pub output: String,
    pub stage: Stage,
    pub detail: String,
}

/// One entry as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub node_area: String,
    pub zone: String,
    pub output: String,
    pub state: String,
    pub detail: String,
    pub at_ms: i64,
}

struct ReceiptMachine<'a> {
    scope: &'a AreaCode,
}

impl Machine for ReceiptMachine<'_> {
    type State = ();

    fn scope(&self) -> Option<&AreaCode> {
        Some(self.scope)
    }

    fn initial(&self) {}

    fn apply(&self, (): &(), t: &Transition) -> Result<(), String> {
        if t.role != SYSTEM || t.actor != SYSTEM {
            return Err("receipts are written by the playing node only".into());
        }
        Stage::parse(&t.action).ok_or_else(|| format!("unknown receipt `{}`", t.action))?;
        Ok(())
    }
}

fn entries(doc: &AutoCommit, authors: &Authors, scope: &AreaCode) -> Vec<Transition> {
    let transitions = township_sync::workflow::read(doc, authors);
    township_sync::workflow::fold(&ReceiptMachine { scope }, &transitions).applied
}

/// Appends entries for `broadcast` to this node's receipt record for it (made on first use).
pub fn append(
    conn: &Connection,
    ctx: &WriteCtx,
    broadcast: Uuid,
    new: &[Entry],
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    let system = Actor::system(ctx.area.clone());
    let author = ctx.author(&system);
    let existing: Option<String> = conn
        .query_row(
            "SELECT doc_id FROM broadcast_receipt_docs WHERE broadcast_id = ?1 AND area = ?2",
            params![broadcast.to_string(), ctx.area.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let id = match existing.and_then(|i| Uuid::parse_str(&i).ok()) {
        Some(id) => id,
        None => {
            let b = broadcast.to_string();
            ctx.create_record(
                conn,
                &author,
                KIND,
                &ctx.area,
                json!({"broadcast": b}),
                move |doc| {
                    doc.put(automerge::ROOT, "broadcast", b.as_str())?;
                    township_sync::workflow::init(doc)?;
                    Ok(())
                },
            )?
            .id
        }
    };
    let transitions: Vec<Transition> = new
        .iter()
        .map(|e| {
            let mut t = ctx.transition(SYSTEM, SYSTEM, e.stage.as_str());
            let mut data = BTreeMap::new();
            data.insert("zone".into(), e.zone.clone());
            data.insert("output".into(), e.output.clone());
            if !e.detail.is_empty() {
                data.insert("detail".into(), e.detail.clone());
            }
            t.data = data;
            t
        })
        .collect();
    let detail = json!(
        new.iter()
            .map(|e| json!({"zone": e.zone, "output": e.output, "state": e.stage.as_str(), "detail": e.detail}))
            .collect::<Vec<_>>()
    );
    ctx.change_record(
        conn,
        &author,
        RecordChange {
            id,
            kind: KIND,
            action: "broadcast.receipt",
            detail: json!({"broadcast": broadcast.to_string(), "entries": detail}),
        },
        move |doc| {
            for t in &transitions {
                township_sync::workflow::append(doc, t)?;
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Every receipt entry for a broadcast, from every node, in time order.
pub fn for_broadcast(conn: &Connection, broadcast: Uuid) -> Result<Vec<Receipt>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT node_area, zone, output, state, detail, at_ms FROM broadcast_receipts
         WHERE broadcast_id = ?1 ORDER BY at_ms, rowid",
    )?;
    let rows = stmt
        .query_map([broadcast.to_string()], |r| {
            Ok(Receipt {
                node_area: r.get(0)?,
                zone: r.get(1)?,
                output: r.get(2)?,
                state: r.get(3)?,
                detail: r.get(4)?,
                at_ms: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Keeps `broadcast_receipts` (and the record index `broadcast_receipt_docs`) in step.
pub struct ReceiptProjection;

impl ReceiptProjection {
    pub fn shared() -> std::sync::Arc<dyn Projection> {
        std::sync::Arc::new(ReceiptProjection)
    }
}

impl Projection for ReceiptProjection {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &AutoCommit,
        authors: &Authors,
    ) -> Result<(), ProjectionError> {
        // The broadcast id must be the creator's (written with the entry list, never again): a
        // rewrite from a hostile node would move receipts onto another broadcast.
        let broadcast = match (
            doc.get_all(automerge::ROOT, "broadcast"),
            doc.get(automerge::ROOT, township_sync::workflow::TRANSITIONS_KEY),
        ) {
            (Ok(values), Ok(Some((_, list)))) if values.len() == 1 => {
                let (_, op) = &values[0];
                if authors.change_of(op).is_some()
                    && authors.change_of(op) == authors.change_of(&list)
                {
                    fields::text(doc, "broadcast").unwrap_or_default()
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        };
        let id = meta.id.to_string();
        conn.execute("DELETE FROM broadcast_receipts WHERE doc_id = ?1", [&id])?;
        conn.execute(
            "INSERT INTO broadcast_receipt_docs (doc_id, broadcast_id, area) VALUES (?1, ?2, ?3)
             ON CONFLICT(doc_id) DO UPDATE SET broadcast_id = excluded.broadcast_id, area = excluded.area",
            params![id, broadcast, meta.scope.as_str()],
        )?;
        let mut insert = conn.prepare_cached(
            "INSERT OR IGNORE INTO broadcast_receipts (doc_id, transition_id, broadcast_id, node_area, zone, output, state, detail, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for t in entries(doc, authors, &meta.scope) {
            let get = |k: &str| t.data.get(k).cloned().unwrap_or_default();
            insert.execute(params![
                id,
                t.id,
                broadcast,
                meta.scope.as_str(),
                get("zone"),
                get("output"),
                t.action,
                get("detail"),
                i64::try_from(t.at.wall_ms).unwrap_or(i64::MAX),
            ])?;
        }
        Ok(())
    }

    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
        conn.execute_batch("DELETE FROM broadcast_receipts; DELETE FROM broadcast_receipt_docs;")?;
        Ok(())
    }

    fn forget(&self, conn: &Connection, id: Uuid) -> Result<(), ProjectionError> {
        conn.execute(
            "DELETE FROM broadcast_receipts WHERE doc_id = ?1",
            [id.to_string()],
        )?;
        conn.execute(
            "DELETE FROM broadcast_receipt_docs WHERE doc_id = ?1",
            [id.to_string()],
        )?;
        Ok(())
    }
}
