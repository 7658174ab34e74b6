//! `GET /api/v1/audit`: the audit log, newest first, filtered by actor, action, target and time.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::http::extract::empty_as_none;
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
    #[serde(default, deserialize_with = "empty_as_none")]
    actor: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    action: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    target: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    from: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    to: Option<String>,
    before: Option<i64>,
    limit: Option<usize>,
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
        return Err(ApiError::invalid("limit", "limit is 1 to 1000"));
    }
    let filter = Filter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        from_ms: q
            .from
            .as_deref()
            .map(|v| crate::clock::parse_time("from", v))
            .transpose()?,
        to_ms: q
            .to
            .as_deref()
            .map(|v| crate::clock::parse_time("to", v))
            .transpose()?,
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
