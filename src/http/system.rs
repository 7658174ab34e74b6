//! System routes: liveness, readiness, Prometheus metrics, node identity and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::http::problem::ApiError;
use crate::metrics::Sample;
use crate::store::StoreError;

pub fn routes(r: crate::http::routes::Routes) -> crate::http::routes::Routes {
    r.get("/healthz", healthz)
        .get("/readyz", readyz)
        .get("/metrics", metrics)
        .get("/api/v1/node", node_info)
        .get("/api/v1/openapi.json", openapi)
}

/// Liveness: the process is up and serving. Cheap, no database access, safe to poll every second.
pub async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": state.node.node_id,
        "area": state.node.area,
        "role": state.node.role,
    }))
}

/// Readiness: the database answers and the node is not draining for shutdown.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    state
        .store
        .read(|conn| Ok::<_, StoreError>(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
        .map_err(|e| ApiError::Unavailable(format!("database not answering: {e}").into()))?;
    Ok(Json(json!({"status": "ready"})))
}

/// Prometheus text. With `http.metrics_token` set, for whoever presents it; otherwise only for
/// clients on this machine, unless `http.metrics_public` (what a stranger learns from it — device
/// names, sign-in failures, sync peers — is reconnaissance).
pub async fn metrics(
    State(state): State<AppState>,
    crate::http::extract::ClientAddr(client): crate::http::extract::ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let local = client.is_none_or(|c| c.ip().is_loopback());
    if state.config.http.metrics_token.is_none() && !local && !state.config.http.metrics_public {
        return Err(ApiError::Forbidden(
            "metrics answer only on this machine; set http.metrics_token to scrape them from elsewhere"
                .into(),
        ));
    }
    if let Some(token) = &state.config.http.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes());
        let given = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
        // Comparing digests keeps the comparison independent of where the strings first differ.
        if expected.as_ref() != given.as_ref() {
            return Err(ApiError::Unauthorized);
        }
    }
    let writes = state.store.write_metrics();
    let (documents, quarantined, audit_entries, attachments, chains_broken) = state
        .store
        .read(|conn| {
            let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
            Ok::<_, StoreError>((
                count("SELECT count(*) FROM documents")?,
                count("SELECT count(*) FROM documents WHERE quarantined IS NOT NULL")?,
                count("SELECT COALESCE(MAX(seq), 0) FROM audit_log")?,
                count("SELECT count(*) FROM blobs")?,
                crate::audit::relayed::broken_count(conn)?,
            ))
        })
        .await?;
    let extra = [
        Sample {
            name: "township_records",
            help: "Record documents in the store.",
            kind: "gauge",
            value: documents as f64,
        },
        Sample {
            name: "township_records_quarantined",
            help: "Record documents that failed to load and are kept out of use until repaired.",
            kind: "gauge",
            value: quarantined as f64,
        },
        Sample {
            name: "township_attachments",
            help: "Attachments stored and verified (photos, videos, audio).",
            kind: "gauge",
            value: attachments as f64,
        },
        Sample {
            name: "township_audit_chains_broken",
            help: "Audit chains from nodes below that failed their check here (altered, re-signed or unsigned).",
            kind: "gauge",
            value: chains_broken as f64,
        },
        Sample {
            name: "township_audit_entries",
            help: "Entries in the audit chain.",
            kind: "gauge",
            value: audit_entries as f64,
        },
        Sample {
            name: "township_db_size_bytes",
            help: "Bytes on disk for the database and its WAL.",
            kind: "gauge",
            value: state.store.size_on_disk() as f64,
        },
        Sample {
            name: "township_store_write_batches_total",
            help: "Write transactions committed by the writer (group commits).",
            kind: "counter",
            value: writes.batches() as f64,
        },
        Sample {
            name: "township_store_write_jobs_total",
            help: "Write jobs run by the writer.",
            kind: "counter",
            value: writes.jobs() as f64,
        },
        Sample {
            name: "township_store_write_jobs_failed_total",
            help: "Write jobs that failed and were rolled back.",
            kind: "counter",
            value: writes.failed_jobs() as f64,
        },
        Sample {
            name: "township_store_commits_failed_total",
            help: "Write batches whose commit failed.",
            kind: "counter",
            value: writes.failed_commits() as f64,
        },
        Sample {
            name: "township_store_reads_total",
            help: "Queries run on the read pool.",
            kind: "counter",
            value: state.store.reads_total() as f64,
        },
    ];
    let mut extra = extra.to_vec();
    extra.extend(state.sync.samples(state.clock.now_ms()));
    let mut body = state.metrics.render(&extra);
    body.push_str(
        &state
            .telemetry
            .render_metrics(state.clock.now_ms(), &state.config.telemetry),
    );
    body.push_str(
        &state
            .pa_counters
            .render(&state.pa_outputs, state.clock.now_ms()),
    );
    if let Some(ebd) = state.ebd.get() {
        body.push_str(&ebd.counters.render());
    }
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// What the UI shows in its header: who this node is.
pub async fn node_info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "node_id": state.node.node_id,
        "name": state.node.name,
        "area": state.node.area,
        "role": state.node.role,
        "public_key": state.node.public_key,
        "version": env!("CARGO_PKG_VERSION"),
        "ui_version": state.ui.version(),
        "uptime_seconds": state.metrics.uptime().as_secs(),
    }))
}

pub async fn openapi() -> Response {
    let mut response = include_str!("openapi.json").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
