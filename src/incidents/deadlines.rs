//! Deadlines, checked by the node itself every minute whether or not the county is reachable:
//! incidents past 80% of their time are flagged `near`, past 100% `overdue`; overdue incidents of
//! categories configured to escalate are escalated to the county automatically by a township or
//! county node (a village hub flags them only).

use std::collections::BTreeMap;

use township_sync::{Timestamp, Transition};
use uuid::Uuid;

use super::workflow::{Action, State};
use super::{KIND, fold_doc};
use crate::app::AppState;
use crate::records::RecordChange;
use crate::store::StoreError;

/// What one check did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub near: i64,
    pub overdue: i64,
    pub escalated: Vec<Uuid>,
}

/// Refreshes every open incident's due state at `now` and escalates what must be escalated.
pub async fn check(state: &AppState) -> Result<CheckReport, StoreError> {
    let now = state.clock.now_ms();
    // Escalating is the township's or the county's office; a village hub only flags deadlines (its
    // own escalations would not count anywhere, see `workflow::IncidentMachine`).
    let escalates_here = state.node.area.level() != township_sync::NodeRole::Village;
    let auto: Vec<String> = state
        .config
        .categories
        .iter()
        .filter(|c| c.auto_escalate && escalates_here)
        .map(|c| c.name.clone())
        .collect();
    let ctx = state.write_ctx();
    state
        .store
        .write(move |conn| {
            conn.execute(
                "UPDATE incidents SET due_state = CASE
                    WHEN due_ms IS NULL THEN 'ok'
                    WHEN ?1 > due_ms THEN 'overdue'
                    WHEN (?1 - due_start_ms) * 10 >= (due_ms - due_start_ms) * 8 THEN 'near'
                    ELSE 'ok' END
                 WHERE due_state != CASE
                    WHEN due_ms IS NULL THEN 'ok'
                    WHEN ?1 > due_ms THEN 'overdue'
                    WHEN (?1 - due_start_ms) * 10 >= (due_ms - due_start_ms) * 8 THEN 'near'
                    ELSE 'ok' END",
                [now],
            )?;
            let count = |s: &str| conn.query_row("SELECT count(*) FROM incidents WHERE due_state = ?1", [s], |r| r.get::<_, i64>(0));
            let mut report = CheckReport { near: count("near")?, overdue: count("overdue")?, escalated: Vec::new() };
            if auto.is_empty() {
                return Ok(report);
            }
            let marks = vec!["?"; auto.len()].join(",");
            let sql = format!(
                "SELECT id, due_kind, due_ms FROM incidents WHERE due_state = 'overdue' AND escalated = 0
                 AND state IN ('reported', 'accepted', 'dispatched', 'in_progress') AND category IN ({marks})"
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
                    actor: "system".into(),
                    role: "system".into(),
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
                if super::workflow::next_state(folded.state.current(), Action::Escalate).is_none() {
                    continue;
                }
                let result = ctx.change_record(
                    conn,
                    &ctx.system(),
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

/// Runs [`check`] every minute until shutdown.
pub fn spawn(state: &AppState) {
    state.spawn_every(std::time::Duration::from_secs(60), |state| async move {
        match check(&state).await {
            Ok(report) => {
                state
                    .metrics
                    .set_gauge("township_incidents_overdue", report.overdue as f64);
                state
                    .metrics
                    .set_gauge("township_incidents_near_deadline", report.near as f64);
                if !report.escalated.is_empty() {
                    tracing::info!(
                        count = report.escalated.len(),
                        "overdue incidents escalated automatically"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "deadline check failed"),
        }
    });
}
