//! The CAP routes: a warning's latest message, the Atom feed of current messages, and the public key
//! that verifies them. Public, as warnings are: aggregators and loudspeaker vendors poll them with
//! no account here.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use uuid::Uuid;

use super::{Sender, alert};
use crate::app::AppState;
use crate::clock::rfc3339_china as cap_time;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::store::StoreError;
use crate::warnings::WarningError;

/// Largest CAP document accepted: real alerts are a few kilobytes.
const MAX_ALERT_BYTES: usize = 256 * 1024;

pub fn routes(r: Routes) -> Routes {
    r.post_with_limit("/api/v1/cap", receive, MAX_ALERT_BYTES)
        .get("/api/v1/warnings/{id}/cap", latest)
        .get("/api/v1/cap/alerts.atom", feed)
        .get("/api/v1/cap/key.pem", key)
        .get("/api/v1/cap/feeds", feeds)
}

pub fn sender(state: &AppState) -> Sender {
    Sender {
        address: state
            .config
            .cap
            .sender
            .clone()
            .unwrap_or_else(|| format!("{}@township-node", state.node.node_id)),
        node_id: state.node.node_id.clone(),
        name: state.node.name.clone(),
        areas: state.config.areas.clone(),
    }
}

fn with_type(body: String, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The signed CAP document of a warning's latest message, from the served copy while the warning
/// has not changed.
pub async fn signed_latest(state: &AppState, id: Uuid) -> Result<Option<Arc<str>>, ApiError> {
    let stamp = state
        .store
        .read(move |conn| crate::warnings::published_stamp(conn, id))
        .await?;
    let Some(stamp) = stamp else {
        return Ok(None);
    };
    if let Some(doc) = state.cap_served.message(id, stamp) {
        return Ok(Some(doc));
    }
    let docs = state.docs.clone();
    let published = state
        .store
        .read(move |conn| crate::warnings::published(conn, &docs, id))
        .await?;
    let Some(last) = published.messages.len().checked_sub(1) else {
        return Ok(None);
    };
    let Some(canonical) = alert(&sender(state), &published, last) else {
        return Ok(None);
    };
    let signed: Arc<str> = state
        .cap_key
        .sign_document(&canonical)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .into();
    Ok(Some(state.cap_served.keep_message(id, stamp, signed)))
}

async fn latest(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    match signed_latest(&state, id).await {
        Ok(Some(doc)) => Ok(with_type(
            doc.to_string(),
            "application/cap+xml; charset=utf-8",
        )),
        Ok(None) | Err(ApiError::NotFound) => Err(ApiError::NotFound),
        Err(e) => Err(e),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Warnings whose messages changed within this long are in the feed.
const FEED_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;

async fn feed(State(state): State<AppState>) -> Result<Response, ApiError> {
    // The window moves by the minute; within a minute and with no warning changed, the copy stands.
    let minute = state.clock.now_ms() / 60_000;
    let since = minute * 60_000 - FEED_WINDOW_MS;
    let (count, newest) = state
        .store
        .read(move |conn| crate::warnings::feed_stamp(conn, since))
        .await?;
    let key = (minute, count, newest);
    if let Some(feed) = state.cap_served.feed(key) {
        return Ok(with_type(
            feed.to_string(),
            "application/atom+xml; charset=utf-8",
        ));
    }
    let docs = state.docs.clone();
    let entries = state
        .store
        .read(move |conn| {
            let mut out = Vec::new();
            for id in crate::warnings::published_ids(conn, since, 200)? {
                match crate::warnings::published(conn, &docs, id) {
                    Ok(p) => out.push(p),
                    Err(WarningError::Store(e)) => return Err(e),
                    Err(_) => {}
                }
            }
            Ok::<_, StoreError>(out)
        })
        .await?;
    let sender = sender(&state);
    let updated = entries
        .iter()
        .filter_map(|p| p.messages.last().map(|m| m.at_ms))
        .max()
        .unwrap_or_else(|| state.clock.now_ms());
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\
         <id>urn:township-node:{}:cap</id><title>{} 预警信息 CAP</title><updated>{}</updated>\
         <author><name>{}</name></author>",
        escape(&sender.node_id),
        escape(&sender.name),
        cap_time(updated),
        escape(&sender.address)
    );
    for p in &entries {
        let Some(m) = p.messages.last() else { continue };
        xml.push_str(&format!(
            "<entry><id>urn:township-node:{}:{}</id><title>{}</title><updated>{}</updated>\
             <category term=\"{}\"></category><link rel=\"alternate\" type=\"application/cap+xml\" href=\"/api/v1/warnings/{}/cap\"></link>\
             <summary>{}</summary></entry>",
            escape(&sender.node_id),
            escape(&m.transition),
            escape(&m.folded.headline),
            cap_time(m.at_ms),
            m.msg_type,
            p.id,
            escape(&m.folded.description),
        ));
    }
    xml.push_str("</feed>");
    state.cap_served.keep_feed(key, Arc::from(xml.as_str()));
    Ok(with_type(xml, "application/atom+xml; charset=utf-8"))
}

/// How each configured feed has fared: last poll, last success, last error, counts.
async fn feeds(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "feeds": state.cap_feeds.snapshot() }))
}

async fn key(State(state): State<AppState>) -> Response {
    with_type(state.cap_key.public_pem(), "application/x-pem-file")
}

/// Takes one CAP alert: 201 when it made a warning, 200 when it updated, cancelled or was a
/// duplicate, 400 naming what is wrong with a bad document (nothing stored).
async fn receive(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    headers: axum::http::HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let xml_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("xml"));
    if !xml_type {
        return Err(ApiError::invalid(
            "content-type",
            "send the alert as application/cap+xml",
        ));
    }
    let alert = super::inbound::parse(&body).map_err(|e| ApiError::invalid("alert", e))?;
    use super::inbound::Outcome;
    let (ctx, actor, area) = (
        state.write_ctx(),
        caller.actor.clone(),
        state.node.area.clone(),
    );
    let outcome = state
        .store
        .write(move |conn| super::inbound::apply(conn, &ctx, &actor, &area, alert))
        .await?;
    let (status, word, id) = match outcome {
        Outcome::Created(id) => (axum::http::StatusCode::CREATED, "created", id),
        Outcome::Updated(id) => (axum::http::StatusCode::OK, "updated", id),
        Outcome::Cancelled(id) => (axum::http::StatusCode::OK, "cancelled", id),
        Outcome::Duplicate(id) => (axum::http::StatusCode::OK, "duplicate", id),
    };
    Ok((
        status,
        axum::Json(serde_json::json!({"outcome": word, "warning": id.to_string()})),
    )
        .into_response())
}
