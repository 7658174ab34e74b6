//! `GET /api/v1/audit`: the audit log, newest first, filtered by actor, action, target and time.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::json;

use super::Filter;
use crate::app::AppState;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/audit", list)
}

#[derive(Deserialize)]
struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    from: Option<String>,
    to: Option<String>,
    before: Option<i64>,
    limit: Option<usize>,
}

/// Times are RFC 3339 (`2026-11-29T08:00:00Z`) or milliseconds since the epoch.
pub fn parse_time(field: &str, value: &str) -> Result<i64, ApiError> {
    crate::clock::parse_time(field, value).map_err(|e| ApiError::InvalidField {
        field: field.into(),
        detail: e.to_string(),
    })
}

async fn list(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // The log is the node's: it names every account and change here, whatever their area.
    caller.require_node_wide(&state.node.area)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidField {
            field: "limit".into(),
            detail: "limit is 1 to 1000".into(),
        });
    }
    let filter = Filter {
        actor: q.actor.filter(|s| !s.is_empty()),
        action: q.action.filter(|s| !s.is_empty()),
        target: q.target.filter(|s| !s.is_empty()),
        from_ms: q
            .from
            .as_deref()
            .map(|v| parse_time("from", v))
            .transpose()?,
        to_ms: q.to.as_deref().map(|v| parse_time("to", v)).transpose()?,
        before_seq: q.before,
        limit,
    };
    let entries = state
        .store
        .read(move |conn| super::query(conn, &filter))
        .await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(json!({ "entries": entries, "next_before": next })))
}
