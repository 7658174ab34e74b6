//! Warning events for the rest of the node (the loudspeakers): every transition that takes effect on
//! a warning — made here by a person, a rule or a CAP alert, or made on another node and merged by
//! sync — goes out once on [`Notices`] as a [`WarningEvent`], after the transaction that holds it has
//! committed.
//!
//! One path for all of them: the dispatcher wakes on the store's commit signal, reads the warning
//! records changed since it last looked (by record sequence, an indexed range), folds them, and sends
//! the transitions it has not told yet. Delivery is at least once: marks are written after sending,
//! so a crash in between repeats an event rather than losing it; consumers dedupe on
//! `(id, transition)`. A transition that a later merge turns into a conflict was already told; the
//! transition that superseded it is told in turn.

use std::collections::HashSet;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use township_sync::{Authors, DocStore, fields};
use uuid::Uuid;

use super::{KIND, Notices, WarningEvent, fold_doc};
use crate::store::{Store, StoreError};

/// What the dispatcher runs with.
#[derive(Clone)]
pub struct Runtime {
    pub store: Store,
    pub docs: DocStore,
    pub notices: Arc<Notices>,
    /// The highest record sequence written or merged here, and its wake-up: a commit that moved no
    /// record (readings, sessions, audit) costs the dispatcher nothing.
    pub latest_seq: Arc<std::sync::atomic::AtomicI64>,
    pub records_changed: Arc<tokio::sync::Notify>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Warnings read per pass; a larger backlog (a cold sync) is read over several passes.
const PASS: i64 = 200;

/// Transitions not told yet, the highest record sequence looked at, and whether there may be more.
fn untold(
    conn: &Connection,
    docs: &DocStore,
    after_seq: i64,
) -> Result<(Vec<WarningEvent>, i64, bool), StoreError> {
    let newest: i64 = conn.query_row("SELECT COALESCE(max(seq), 0) FROM documents", [], |r| {
        r.get(0)
    })?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, seq FROM documents WHERE seq > ?1 AND kind = ?2 AND quarantined IS NULL ORDER BY seq LIMIT ?3",
    )?;
    let rows: Vec<(String, i64)> = stmt
        .query_map(params![after_seq, KIND, PASS], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let full = rows.len() as i64 == PASS;
    let reached = if full {
        rows.last().map_or(newest, |(_, seq)| *seq)
    } else {
        newest
    };
    let mut told_stmt =
        conn.prepare_cached("SELECT transition_id FROM warning_notified WHERE doc_id = ?1")?;
    let mut events = Vec::new();
    for (id, _) in rows {
        let Ok(uuid) = Uuid::parse_str(&id) else {
            continue;
        };
        let (meta, mut doc) = match docs.load_kind(conn, uuid, KIND) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(warning = %id, error = %e, "a warning record could not be read for its events");
                continue;
            }
        };
        let authors = Authors::of(&mut doc);
        let folded = fold_doc(&doc, &authors, &meta.scope);
        let told: HashSet<String> = told_stmt
            .query_map([&id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let status = fields::text(&doc, "status").unwrap_or_else(|| "actual".into());
        for t in folded.applied.iter().filter(|t| !told.contains(&t.id)) {
            events.push(WarningEvent {
                id: uuid,
                area: meta.scope.clone(),
                transition: t.id.clone(),
                action: t.action.clone(),
                state: folded.state.state,
                level: folded.state.level,
                status: status.clone(),
                at_ms: i64::try_from(t.at.wall_ms).unwrap_or(i64::MAX),
            });
        }
    }
    Ok((events, reached, full))
}

fn mark(conn: &Connection, events: &[WarningEvent]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO warning_notified (doc_id, transition_id) VALUES (?1, ?2)",
    )?;
    for e in events {
        stmt.execute(params![e.id.to_string(), e.transition])?;
    }
    Ok(())
}

/// A node that held warnings when it upgraded marks them all as told once, silently.
fn seed_if_upgraded(conn: &Connection, docs: &DocStore) -> Result<usize, StoreError> {
    let pending: Option<String> = conn
        .query_row(
            "SELECT value FROM node_meta WHERE key = 'warning_events_seed'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if pending.is_none() {
        return Ok(0);
    }
    let (mut seq, mut count) = (0, 0);
    loop {
        let (events, reached, full) = untold(conn, docs, seq)?;
        mark(conn, &events)?;
        count += events.len();
        seq = reached;
        if !full {
            break;
        }
    }
    conn.execute(
        "DELETE FROM node_meta WHERE key = 'warning_events_seed'",
        [],
    )?;
    Ok(count)
}

/// Runs until shutdown.
pub async fn run(rt: Runtime) {
    let mut commits = rt.store.commits();
    let docs = rt.docs.clone();
    match rt
        .store
        .write(move |conn| seed_if_upgraded(conn, &docs))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            transitions = n,
            "warnings held before this version marked as already announced"
        ),
        Err(e) => tracing::warn!(error = %e, "marking earlier warnings as announced failed"),
    }
    let mut seq = 0i64;
    // The committed record sequence as of the last complete look; None until the first. A local
    // write moves `latest_seq` before its commit and a merge after it, so the look happens on
    // whichever signal comes second, and only once the record is visible.
    let mut looked_at: Option<i64> = None;
    loop {
        let latest = rt.latest_seq.load(std::sync::atomic::Ordering::Relaxed);
        if looked_at.is_none_or(|l| latest > l) {
            let docs = rt.docs.clone();
            match rt.store.read(move |conn| untold(conn, &docs, seq)).await {
                Ok((events, reached, full)) => {
                    for e in &events {
                        rt.notices.send(e.clone());
                    }
                    if !events.is_empty() {
                        let marked = rt.store.write(move |conn| mark(conn, &events)).await;
                        if let Err(e) = marked {
                            // Not marked: told again after a restart, which consumers dedupe.
                            tracing::warn!(error = %e, "warning events could not be marked as told");
                        }
                    }
                    seq = reached;
                    if full {
                        // A long backlog is read in passes; look again at once.
                        continue;
                    }
                    looked_at = Some(reached);
                }
                Err(e) => tracing::warn!(error = %e, "reading warnings for their events failed"),
            }
        }
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { break },
            () = rt.records_changed.notified() => {}
            () = rt.shutdown.cancelled() => break,
        }
    }
}
