//! The attachments API: a blob and its thumbnail, for whoever may see an incident that lists it.

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::OptionalExtension;

use super::{DECODE_WAIT, is_sha256_hex};
use crate::app::AppState;
use crate::auth::Caller;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::incidents::IncidentError;
use crate::store::StoreError;

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/blobs/{sha256}", get_blob)
        .get("/api/v1/blobs/{sha256}/thumbnail", get_thumbnail)
}

/// The blob's type, if the caller may see it: exactly when they may see an incident that lists it
/// (the incidents domain decides). Anything else is "not found", never "forbidden".
async fn authorize_blob(state: &AppState, caller: &Caller, sha: &str) -> Result<String, ApiError> {
    if !is_sha256_hex(sha) {
        return Err(ApiError::NotFound);
    }
    let (sha_owned, who, docs) = (sha.to_string(), caller.clone(), state.docs.clone());
    let found = state
        .store
        .read(move |conn| {
            let content_type: Option<String> = conn
                .query_row(
                    "SELECT content_type FROM blobs WHERE sha256 = ?1",
                    [&sha_owned],
                    |r| r.get(0),
                )
                .optional()
                .map_err(StoreError::from)?;
            let Some(content_type) = content_type else {
                return Ok(None);
            };
            let visible = crate::incidents::attachment_visible(conn, &docs, &who, &sha_owned)?;
            Ok::<_, IncidentError>(visible.then_some(content_type))
        })
        .await?;
    found.ok_or(ApiError::NotFound)
}

fn bytes_response(bytes: Vec<u8>, content_type: &str, etag: &str, request: &HeaderMap) -> Response {
    let quoted = format!("\"{etag}\"");
    if request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == quoted))
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&quoted) {
        headers.insert(header::ETAG, v);
    }
    // Content-addressed: the bytes behind a hash never change.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    response
}

async fn get_blob(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(sha): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let content_type = authorize_blob(&state, &caller, &sha).await?;
    let blobs = state.blobs.clone();
    let sha_read = sha.clone();
    let bytes = tokio::task::spawn_blocking(move || blobs.read(&sha_read))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NotFound)?;
    Ok(bytes_response(bytes, &content_type, &sha, &headers))
}

async fn get_thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(sha): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let content_type = authorize_blob(&state, &caller, &sha).await?;
    if !content_type.starts_with("image/") {
        return Err(ApiError::NotFound);
    }
    let blobs = state.blobs.clone();
    let sha_read = sha.clone();
    // Decodes take memory: one at a time, and a request that cannot get its turn soon is told to
    // come back rather than queueing without end. Thumbnails already made need no turn.
    let cached = {
        let (blobs, sha) = (state.blobs.clone(), sha.clone());
        tokio::task::spawn_blocking(move || blobs.cached_thumbnail(&sha))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    let bytes = match cached {
        Some(known) => known,
        None => {
            let _turn = tokio::time::timeout(DECODE_WAIT, state.blobs.decodes.acquire())
                .await
                .map_err(|_| ApiError::Busy(DECODE_WAIT.as_secs()))?
                .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
            tokio::task::spawn_blocking(move || blobs.thumbnail(&sha_read))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::Internal(e.to_string()))?
        }
    }
    .ok_or(ApiError::NotFound)?;
    Ok(bytes_response(
        bytes,
        "image/jpeg",
        &format!("{sha}-thumb"),
        &headers,
    ))
}
