//! `Idempotency-Key` for every POST a signed-in person sends (the phone's outbox retries whatever
//! it is not sure arrived): the first request with a key runs and its answer is kept for a day; a
//! retry with the same key, method, path and body gets that answer again (with
//! `Idempotent-Replayed: true`) and changes nothing; the same key with a different request is a 422;
//! a retry while the first is still running is a 409. Keys belong to the person, so two people's
//! keys never meet. A 5xx is not kept: the retry runs again.
//!
//! Follows the IETF draft "The Idempotency-Key HTTP Header Field" where it fits.

use crate::codes::{Code, Reason};
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rusqlite::{Connection, OptionalExtension, params};

use super::problem::ApiError;
use crate::app::AppState;
use crate::auth::Caller;
use crate::store::StoreError;

pub const HEADER: &str = "idempotency-key";
/// How long an answer is kept for retries.
pub const KEEP_MS: i64 = 24 * 3_600_000;
/// Largest request body buffered to be hashed (the largest upload route's limit and some).
const MAX_REQUEST: usize = 40 * 1024 * 1024;
/// Largest answer kept; a larger one is not replayed (the retry runs again, as for a 5xx).
const MAX_ANSWER: usize = 1024 * 1024;

/// What is stored under a key.
enum Kept {
    Pending {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
}

fn lookup(conn: &Connection, user: &str, key: &str) -> Result<Option<Kept>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT fingerprint, status, content_type, body FROM idempotency WHERE username = ?1 AND key = ?2",
            params![user, key],
            |r| {
                let fingerprint: String = r.get(0)?;
                let status: Option<u16> = r.get(1)?;
                Ok(match status {
                    None => Kept::Pending { fingerprint },
                    Some(status) => Kept::Done {
                        fingerprint,
                        status,
                        content_type: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        body: r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                    },
                })
            },
        )
        .optional()?)
}

/// Claims a key; `false` when someone (another request with it) already holds it.
fn claim(
    conn: &Connection,
    user: &str,
    key: &str,
    fingerprint: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO idempotency (username, key, fingerprint, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![user, key, fingerprint, now],
    )? == 1)
}

/// Drops answers older than [`KEEP_MS`]; returns how many.
pub fn purge(conn: &Connection, now_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM idempotency WHERE created_ms < ?1",
        [now_ms - KEEP_MS],
    )?)
}

fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn replay(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// The middleware, run after the access check so the caller is known.
pub async fn idempotent(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(HEADER).cloned() else {
        return next.run(request).await;
    };
    // Anonymous POSTs (signing in) have nobody to keep answers for.
    let Some(user) = request
        .extensions()
        .get::<Caller>()
        .map(|c| c.actor.username.clone())
    else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k) if valid_key(k) => k.to_string(),
        _ => {
            return ApiError::invalid(
                "Idempotency-Key",
                "1 to 255 visible ASCII characters, such as a UUID",
            )
            .into_response();
        }
    };
    let (parts, body) = request.into_parts();
    let bytes: Bytes = match to_bytes(body, MAX_REQUEST).await {
        Ok(b) => b,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(parts.method.as_str().as_bytes());
    ctx.update(b"\0");
    ctx.update(parts.uri.path().as_bytes());
    ctx.update(b"\0");
    ctx.update(&bytes);
    let fingerprint = hex::encode(ctx.finish());
    let now = state.clock.now_ms();
    let (u, k, f) = (user.clone(), key.clone(), fingerprint.clone());
    let seen = state
        .store
        .write(move |conn| {
            if let Some(kept) = lookup(conn, &u, &k)? {
                return Ok(Some(kept));
            }
            if claim(conn, &u, &k, &f, now)? {
                Ok(None)
            } else {
                Ok::<_, StoreError>(lookup(conn, &u, &k)?)
            }
        })
        .await;
    match seen {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Some(Kept::Done {
            fingerprint: f,
            status,
            content_type,
            body,
        })) if f == fingerprint => {
            return replay(status, &content_type, body);
        }
        Ok(Some(Kept::Pending { fingerprint: f })) if f == fingerprint => {
            return ApiError::Conflict(Reason::new(
                Code::StillProcessing,
                "a request with this Idempotency-Key is still being processed; try again shortly",
            ))
            .into_response();
        }
        Ok(Some(_)) => {
            return ApiError::Unprocessable(Reason::new(
                Code::IdempotencyKeyReused,
                "this Idempotency-Key was used for a different request",
            ))
            .into_response();
        }
        Ok(None) => {}
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    let (parts, body) = response.into_parts();
    // Kept: any final answer (2xx, 4xx) of a known, small size. A server error, or an answer too
    // large or of unknown length, is passed on as it is and the key freed for a retry.
    let small = axum::body::HttpBody::size_hint(&body)
        .exact()
        .is_some_and(|n| n <= MAX_ANSWER as u64);
    let (response, kept) = if status.is_server_error() || !small {
        (Response::from_parts(parts, body), None)
    } else {
        match to_bytes(body, MAX_ANSWER).await {
            Ok(bytes) => (
                Response::from_parts(parts, Body::from(bytes.clone())),
                Some(bytes),
            ),
            Err(_) => (
                ApiError::Internal("an answer could not be read".into()).into_response(),
                None,
            ),
        }
    };
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let result = state
        .store
        .write(move |conn| {
            match kept {
                Some(body) => conn.execute(
                    "UPDATE idempotency SET status = ?3, content_type = ?4, body = ?5 WHERE username = ?1 AND key = ?2",
                    params![user, key, status.as_u16(), content_type, body.to_vec()],
                )?,
                None => conn.execute(
                    "DELETE FROM idempotency WHERE username = ?1 AND key = ?2",
                    params![user, key],
                )?,
            };
            Ok::<_, StoreError>(())
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "an idempotent answer could not be kept");
    }
    response
}
