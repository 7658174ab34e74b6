//! Deadlines, checked by the node itself every minute whether or not the county is reachable:
//! incidents past 80% of their time are flagged `near`, past 100% `overdue`; overdue incidents of
//! categories configured to escalate are escalated to the county automatically by a township or
//! county node (a village hub flags them only).

use std::collections::BTreeMap;

use township_sync::{Timestamp, Transition};
use uuid::Uuid;

use super::workflow::{ALL_STATES, Action, State, next_state};
use super::{KIND, fold_doc};
use crate::auth::actor::{Actor, ActorRole, SYSTEM};
use crate::config::Category;
use crate::records::RecordChange;
use crate::records::WriteCtx;
use crate::store::Store;
use crate::store::StoreError;

/// What one check did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub near: i64,
    pub overdue: i64,
    pub escalated: Vec<Uuid>,
}

/// Name of the SQL function that applies [`super::due_state`] inside a statement, so the rule that
/// the API shows and the one the stored column holds are one piece of code.
const DUE_STATE_FN: &str = "tn_due_state";

/// Sets every incident's stored due state to what [`super::due_state`] says at `now`.
fn refresh_due_states(conn: &rusqlite::Connection, now: i64) -> rusqlite::Result<usize> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        DUE_STATE_FN,
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let now: i64 = ctx.get(0)?;
            let start: Option<i64> = ctx.get(1)?;
            let due: Option<i64> = ctx.get(2)?;
            Ok(match (start, due) {
                (Some(start), Some(due)) => super::due_state(now, start, due),
                _ => "ok",
            })
        },
    )?;
    conn.execute(
        &format!(
            "UPDATE incidents SET due_state = {DUE_STATE_FN}(?1, due_start_ms, due_ms)
             WHERE due_state IS NOT {DUE_STATE_FN}(?1, due_start_ms, due_ms)"
        ),
        [now],
    )
}

/// `'a', 'b'` for an SQL `IN (…)` list of states (their names are fixed identifiers, never input).
fn sql_list(states: impl Iterator<Item = State>) -> String {
    states
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refreshes every open incident's due state at the clock's now and escalates what must be
/// escalated, as the node itself.
pub async fn check(
    store: &Store,
    ctx: WriteCtx,
    categories: &[Category],
) -> Result<CheckReport, StoreError> {
    let now = ctx.now_ms();
    // Escalating is the township's or the county's office; a village hub only flags deadlines (its
    // own escalations would not count anywhere, see `workflow::IncidentMachine`).
    // Nor does a node with no level above: escalating there would strand the incident (issue 16),
    // so an overdue incident stays with this node's own staff, shown as overdue.
    let escalates_here = ctx.area.level() != township_sync::NodeRole::Village && ctx.has_upstream;
    let auto: Vec<String> = categories
        .iter()
        .filter(|c| c.auto_escalate && escalates_here)
        .map(|c| c.name.clone())
        .collect();
    store
        .write(move |conn| {
            refresh_due_states(conn, now)?;
            let count = |s: &str| conn.query_row("SELECT count(*) FROM incidents WHERE due_state = ?1", [s], |r| r.get::<_, i64>(0));
            let mut report = CheckReport { near: count("near")?, overdue: count("overdue")?, escalated: Vec::new() };
            if auto.is_empty() {
                return Ok(report);
            }
            let marks = vec!["?"; auto.len()].join(",");
            let escalable = sql_list(ALL_STATES.into_iter().filter(|s| next_state(*s, Action::Escalate).is_some()));
            let sql = format!(
                "SELECT id, due_kind, due_ms FROM incidents WHERE due_state = 'overdue' AND escalated = 0
                 AND state IN ({escalable}) AND category IN ({marks})"
            );
            let due: Vec<(String, String, i64)> = conn
                .prepare(&sql)?
                .query_map(rusqlite::params_from_iter(auto.iter()), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (id, kind, due_ms) in due {
                let Ok(uuid) = id.parse::<Uuid>() else { continue };
                // The same id on every node that escalates this deadline, so two nodes doing it while
                // apart produce one transition after a merge, not a conflict.
                let mut data = BTreeMap::new();
                data.insert("note".to_string(), format!("{kind} deadline passed"));
                let transition = Transition {
                    id: format!("auto-escalate:{id}:{kind}:{due_ms}"),
                    at: Timestamp { wall_ms: u64::try_from(due_ms.max(0)).unwrap_or(0), counter: 0 },
                    actor: SYSTEM.into(),
                    role: ActorRole::System.as_str().into(),
                    action: Action::Escalate.as_str().into(),
                    data,
                    written: Default::default(),
                };
                // Folded before the change, in this same write job: folding inside the edit would
                // commit it without its author claim.
                let loaded = match super::load(&ctx.docs, conn, uuid) {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        tracing::warn!(incident = %id, error = %e, "automatic escalation skipped");
                        continue;
                    }
                };
                let (folded, _) = fold_doc(&loaded.doc, &loaded.authors, &loaded.meta.scope);
                if next_state(folded.state.current(), Action::Escalate).is_none() {
                    continue;
                }
                let result = ctx.change_record(
                    conn,
                    &ctx.author(&Actor::system(ctx.area.clone())),
                    RecordChange { id: uuid, kind: KIND, action: "incident.escalate", detail: serde_json::json!({"automatic": true, "deadline": kind}) },
                    move |doc| Ok(township_sync::workflow::append(doc, &transition)?),
                )
                .map(|(meta, ())| (meta, State::Escalated));
                match result {
                    Ok((_, State::Escalated)) => report.escalated.push(uuid),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(incident = %id, error = %e, "automatic escalation failed"),
                }
            }
            Ok(report)
        })
        .await
}
