//! The sync routes: the WebSocket downstream nodes open (authenticated by its handshake, not by an
//! account), the link status for the header, and enrolment, listing and revocation of nodes.

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::registry::{self, EnrollError, EnrollRequest};
use super::transport::MAX_FRAME_BYTES;
use crate::app::AppState;
use crate::auth::Caller;
use crate::http::extract::{ApiJson, ClientAddr};
use crate::http::problem::ApiError;
use crate::http::routes::Routes;

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Invalid(invalid) => ApiError::Invalid(invalid),
            EnrollError::Exists(_) => ApiError::Conflict(e.to_string().into()),
            EnrollError::Store(s) => s.into(),
        }
    }
}

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/sync", accept)
        .get("/api/v1/sync/status", status)
        .get("/api/v1/sync/chains", list_chains)
        .get("/api/v1/nodes", list_nodes)
        .post("/api/v1/nodes", add_node)
        .delete("/api/v1/nodes/{id}", revoke_node)
}

async fn add_node(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    caller.require_node_wide(&state.node.area)?;
    let (ctx, area, who) = (
        state.write_ctx(),
        state.node.area.clone(),
        caller.username.clone(),
    );
    let row = state
        .store
        .write(move |conn| registry::enroll(conn, &ctx, &area, &who, body))
        .await?;
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

async fn list_nodes(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_node_wide(&state.node.area)?;
    let config = state.config.clone();
    let (rows, names, chains, reported) = state
        .store
        .read(move |conn| {
            Ok::<_, crate::store::StoreError>((
                registry::peers(conn, "downstream")?,
                crate::areas::Directory::load(conn, &config.areas)?,
                crate::audit::relayed::chains(conn)?,
                super::links::below(conn)?,
            ))
        })
        .await?;
    let chains: std::collections::HashMap<String, crate::audit::relayed::ChainStatus> =
        chains.into_iter().map(|c| (c.origin.clone(), c)).collect();
    let (_, live) = state.sync.snapshot();
    let nodes: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|p| {
            let link = live.get(&p.node_id).cloned().unwrap_or_default();
            json!({
                "node_id": p.node_id, "public_key": p.public_key, "area_name": names.name(&p.area),
                "area": p.area, "name": p.name,
                "enrolled_ms": p.enrolled_ms, "revoked": p.revoked_ms.is_some(), "revoked_ms": p.revoked_ms,
                "connected": link.connected, "state": link.state(), "last_seen_ms": p.last_seen_ms, "version": p.version,
                "pending_out": link.pending_out, "pending_in": link.pending_in,
                "acked_seq": p.acked_seq, "last_error": p.last_error.or(link.last_error),
                "chain": chains.get(&p.node_id),
            })
        })
        .collect();
    // Nodes further down, as the nodes above them report their links (see `links`).
    let names_of: std::collections::HashMap<String, String> = nodes
        .iter()
        .filter_map(|n| {
            Some((
                n["node_id"].as_str()?.to_string(),
                n["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    let below: Vec<serde_json::Value> = reported
        .into_iter()
        .map(|r| {
            let d = r.doc;
            json!({
                "node_id": d.node_id, "name": d.name, "area": d.area, "area_name": names.name(&d.area),
                "reported_by": r.origin, "reported_by_name": names_of.get(&r.origin), "via": r.via,
                "via_name": names_of.get(&r.via), "reported_ms": r.received_ms, "as_of_ms": d.as_of_ms,
                "state": d.state, "connected": d.connected, "revoked": d.revoked, "last_seen_ms": d.last_seen_ms,
                "version": d.version, "pending_in": d.pending_in, "pending_out": d.pending_out,
                "last_error": d.last_error, "chain": chains.get(&d.node_id),
            })
        })
        .collect();
    Ok(Json(
        json!({ "nodes": nodes, "below": below, "now": state.clock.now_ms() }),
    ))
}

/// The audit chains of the nodes below, as checked here: broken ones first, each with the node's
/// name when it is enrolled here (a relayed origin is known by its id and the node that relayed it).
async fn list_chains(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_node_wide(&state.node.area)?;
    let (chains, peers, vias) = state
        .store
        .read(|conn| {
            let vias: Vec<(String, String)> = conn
                .prepare(
                    "SELECT origin, via FROM stream_records WHERE stream = 'audit'
                     GROUP BY origin HAVING seq = MAX(seq)",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok::<_, crate::store::StoreError>((
                crate::audit::relayed::chains(conn)?,
                registry::peers(conn, "downstream")?,
                vias,
            ))
        })
        .await?;
    let peers: std::collections::HashMap<String, registry::PeerRow> =
        peers.into_iter().map(|p| (p.node_id.clone(), p)).collect();
    let vias: std::collections::HashMap<String, String> = vias.into_iter().collect();
    let chains: Vec<serde_json::Value> = chains
        .into_iter()
        .map(|c| {
            let peer = peers.get(&c.origin);
            json!({
                "origin": c.origin, "name": peer.map(|p| p.name.clone()), "area": peer.map(|p| p.area.clone()),
                "via": vias.get(&c.origin), "entries": c.entries, "signed_seq": c.signed_seq,
                "intact": c.intact, "broken_seq": c.broken_seq, "problem": c.problem, "checked_ms": c.checked_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "chains": chains })))
}

async fn revoke_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_node_wide(&state.node.area)?;
    let (ctx, who, target) = (state.write_ctx(), caller.username.clone(), id.clone());
    let revoked = state
        .store
        .write(move |conn| registry::revoke(conn, &ctx, &who, &target))
        .await?;
    if !revoked {
        return Err(ApiError::NotFound);
    }
    // Every live connection of a revoked node is closed at once.
    let closed = state.sync.close_all(&id);
    if closed > 0 {
        tracing::info!(node = %id, connections = closed, "revoked node disconnected");
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn status(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let (upstream, downstream) = state.sync.snapshot();
    let seq = state.store.read(super::current_seq).await?;
    let configured = state.upstream.as_ref().map(|u| u.0.clone());
    Ok(Json(json!({
        "node_id": state.node.node_id,
        "area": state.node.area,
        "seq": seq,
        "upstream": match configured {
            Some(url) => {
                let u = upstream.unwrap_or_default();
                json!({
                    "url": url,
                    "state": u.state(),
                    "since_ms": u.since_ms, "last_success_ms": u.last_success_ms,
                    "last_error": u.last_error, "pending_out": u.pending_out, "pending_in": u.pending_in,
                })
            }
            None => serde_json::Value::Null,
        },
        "downstream_connected": downstream.values().filter(|l| l.connected).count(),
    })))
}

/// The upgrade for downstream nodes. Authentication is the handshake, not a session.
async fn accept(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ws: WebSocketUpgrade,
) -> Response {
    let address = client.map(|c| c.ip());
    let rt = state.sync_runtime();
    ws.max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            if let Err(e) = super::session::serve_downstream(rt, socket, address).await {
                tracing::info!(reason = %crate::logging::Untrusted(&e.to_string()), "sync connection from downstream closed");
            }
        })
}
