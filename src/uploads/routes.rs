//! The tus 1.0 routes of resumable uploads (see the module above for the protocol and limits), and
//! the hand-over of a finished upload to the attachment route.

use crate::codes::{Code, Reason};
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use rusqlite::params;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::{MAX_CHUNK, MAX_OPEN_PER_PERSON, TUS_VERSION, Upload, load, parse_metadata};
use crate::app::AppState;
use crate::auth::Caller;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::store::StoreError;

pub fn routes(r: Routes) -> Routes {
    r.post("/api/v1/uploads", create)
        .get("/api/v1/uploads/{id}", status)
        .patch_with_limit("/api/v1/uploads/{id}", append, MAX_CHUNK)
        .delete("/api/v1/uploads/{id}", discard)
}

fn dir(state: &AppState) -> PathBuf {
    state.data_dir.join(super::DIR)
}

fn file_of(state: &AppState, id: Uuid) -> PathBuf {
    super::file_in(&state.data_dir, id)
}

/// The caller's upload `id`; another person's is not found.
async fn owned(state: &AppState, caller: &Caller, id: &str) -> Result<Upload, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound)?;
    let found = state.store.read(move |conn| load(conn, id)).await?;
    match found {
        Some(u) if u.username == caller.username => Ok(u),
        _ => Err(ApiError::NotFound),
    }
}

fn tus_headers(headers: &mut HeaderMap, upload: &Upload) {
    headers.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    headers.insert("upload-offset", HeaderValue::from(upload.offset));
    headers.insert("upload-length", HeaderValue::from(upload.length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn view(upload: &Upload) -> serde_json::Value {
    json!({
        "id": upload.id,
        "offset": upload.offset,
        "length": upload.length,
        "complete": upload.complete,
        "sha256": upload.sha256,
        "content_type": upload.content_type,
    })
}

fn header_number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("{name} must be a whole number"))),
    }
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let max = state.config.incidents.max_attachment_bytes as u64;
    let length = header_number(&headers, "upload-length")?.ok_or_else(|| {
        ApiError::invalid(
            "upload-length",
            "Upload-Length is required (this node does not defer lengths)",
        )
    })?;
    if length == 0 {
        return Err(ApiError::invalid("upload-length", "the file is empty"));
    }
    if length > max {
        return Err(ApiError::QuotaExceeded(
            Reason::new(
                Code::PayloadTooLarge,
                format!("the file is {length} bytes; at most {max} are accepted"),
            )
            .param("max", max),
        ));
    }
    let metadata = headers
        .get("upload-metadata")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let metadata = parse_metadata(metadata).map_err(|e| ApiError::invalid("upload-metadata", e))?;
    let get = |key: &str| {
        metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let sha256 = get("sha256")
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| crate::blobs::is_sha256_hex(s))
        .ok_or_else(|| {
            ApiError::invalid(
                "upload-metadata",
                "Upload-Metadata must carry sha256: the file's SHA-256 in hex",
            )
        })?;
    let filename: String = get("filename")
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let id = Uuid::now_v7();
    let who = caller.username.clone();
    let now = state.clock.now_ms();
    let quota = state.config.incidents.upload_quota_per_day;
    let path = file_of(&state, id);
    tokio::fs::create_dir_all(dir(&state))
        .await
        .map_err(|e| ApiError::Internal(format!("uploads directory: {e}")))?;
    tokio::fs::File::create(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("upload file: {e}")))?;
    let stored = state
        .store
        .write(move |conn| {
            let open: i64 = conn.query_row(
                "SELECT count(*) FROM uploads WHERE username = ?1 AND complete = 0",
                [&who],
                |r| r.get(0),
            )?;
            if open >= MAX_OPEN_PER_PERSON {
                return Ok(Err(ApiError::OverLimit(
                    Reason::new(
                        Code::UploadsTooMany,
                        format!("at most {MAX_OPEN_PER_PERSON} unfinished uploads at once; finish or delete one"),
                    )
                    .param("max", MAX_OPEN_PER_PERSON),
                    60,
                )));
            }
            if let Err(e) = crate::incidents::check_quota(conn, &who, length, quota, now) {
                return Ok(Err(e.into()));
            }
            conn.execute(
                "INSERT INTO uploads (id, username, length, offset, sha256, filename, complete, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, 0, ?6, ?6)",
                params![id.to_string(), who, length as i64, sha256, filename, now],
            )?;
            Ok::<_, StoreError>(Ok(()))
        })
        .await;
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e.into());
        }
    }
    let upload = Upload {
        id,
        username: caller.username.clone(),
        length,
        offset: 0,
        sha256: String::new(),
        filename: String::new(),
        content_type: None,
        complete: false,
    };
    let mut response = (StatusCode::CREATED, axum::Json(view(&upload))).into_response();
    tus_headers(response.headers_mut(), &upload);
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/uploads/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn status(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let upload = owned(&state, &caller, &id).await?;
    let mut response = axum::Json(view(&upload)).into_response();
    tus_headers(response.headers_mut(), &upload);
    Ok(response)
}

/// 409 with the offset the node has, so the client can go on from there.
fn offset_conflict(upload: &Upload, detail: &str) -> Response {
    let reason = Reason::new(Code::UploadOffset, detail).param("offset", upload.offset);
    let mut response = ApiError::Conflict(reason).into_response();
    tus_headers(response.headers_mut(), upload);
    response
}

async fn append(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let upload = owned(&state, &caller, &id).await?;
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.eq_ignore_ascii_case("application/offset+octet-stream") {
        return Err(ApiError::UnsupportedMediaType(
            "a chunk is sent as Content-Type: application/offset+octet-stream".into(),
        ));
    }
    let offset = header_number(headers, "upload-offset")?
        .ok_or_else(|| ApiError::invalid("upload-offset", "Upload-Offset is required"))?;
    if upload.complete {
        return Ok(offset_conflict(&upload, "the upload is already complete"));
    }
    if offset != upload.offset {
        return Ok(offset_conflict(
            &upload,
            "Upload-Offset is not where the upload stands; HEAD it and go on from there",
        ));
    }
    let room = upload.length - upload.offset;
    let path = file_of(&state, upload.id);
    let written = match receive(&path, upload.offset, room, request.into_body()).await {
        Ok(w) => w,
        Err(ReceiveError::PastLength) => {
            return Err(ApiError::invalid(
                "upload-offset",
                "the chunk goes past Upload-Length",
            ));
        }
        Err(ReceiveError::TooLarge) => return Err(ApiError::PayloadTooLarge),
        Err(ReceiveError::Io(e)) => return Err(ApiError::Internal(format!("upload write: {e}"))),
    };
    let new_offset = upload.offset + written.bytes;
    let now = state.clock.now_ms();
    let (old, id_text) = (upload.offset as i64, upload.id.to_string());
    // Compare and set: of two racing chunks at one offset, only one moves the upload on.
    let moved = state
        .store
        .write(move |conn| {
            Ok::<_, StoreError>(conn.execute(
                "UPDATE uploads SET offset = ?1, updated_ms = ?2 WHERE id = ?3 AND offset = ?4 AND complete = 0",
                params![new_offset as i64, now, id_text, old],
            )?)
        })
        .await?;
    let mut upload = upload;
    if moved == 0 {
        let id = upload.id;
        let current = state.store.read(move |conn| load(conn, id)).await?;
        return match current {
            Some(u) => Ok(offset_conflict(&u, "another request moved the upload on")),
            None => Err(ApiError::NotFound),
        };
    }
    upload.offset = new_offset;
    if written.broken {
        // The client is gone; what arrived is kept and acknowledged to the next HEAD.
        return Err(ApiError::BadRequest(Reason::new(
            Code::UploadCut,
            "the chunk was cut short",
        )));
    }
    if upload.offset == upload.length {
        upload = finish(&state, upload).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    tus_headers(response.headers_mut(), &upload);
    Ok(response)
}

struct Received {
    bytes: u64,
    /// The body ended with an error (the connection dropped): keep what came, answer nobody.
    broken: bool,
}

enum ReceiveError {
    /// More than [`MAX_CHUNK`] in one request.
    TooLarge,
    /// More than the declared length.
    PastLength,
    Io(std::io::Error),
}

/// Writes the body at `offset`, at most `room` bytes (and [`MAX_CHUNK`]), and makes it durable before the offset is
/// acknowledged. Bytes past `offset` left by an earlier request that never got acknowledged are cut
/// off first.
async fn receive(
    path: &Path,
    offset: u64,
    room: u64,
    body: Body,
) -> Result<Received, ReceiveError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .await
        .map_err(ReceiveError::Io)?;
    file.set_len(offset).await.map_err(ReceiveError::Io)?;
    use tokio::io::AsyncSeekExt;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(ReceiveError::Io)?;
    let mut stream = body.into_data_stream();
    let mut bytes = 0u64;
    let mut broken = false;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(data) => {
                let after = bytes + data.len() as u64;
                if after > room || after > MAX_CHUNK as u64 {
                    file.set_len(offset).await.map_err(ReceiveError::Io)?;
                    return Err(if after > room {
                        ReceiveError::PastLength
                    } else {
                        ReceiveError::TooLarge
                    });
                }
                file.write_all(&data).await.map_err(ReceiveError::Io)?;
                bytes += data.len() as u64;
            }
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    file.sync_data().await.map_err(ReceiveError::Io)?;
    Ok(Received { bytes, broken })
}

/// The last byte is in: check the SHA-256 and what the bytes are. A mismatch or a file type the
/// node does not take drops the upload (the phone starts it again).
async fn finish(state: &AppState, mut upload: Upload) -> Result<Upload, ApiError> {
    let path = file_of(state, upload.id);
    let checked = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<(String, Option<&'static str>)> {
            use std::io::Read;
            let mut file = std::fs::File::open(&path)?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buffer = vec![0u8; 64 * 1024];
            let mut head = Vec::new();
            loop {
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                if head.len() < 4096 {
                    head.extend_from_slice(&buffer[..n.min(4096 - head.len())]);
                }
                ctx.update(&buffer[..n]);
            }
            Ok((
                hex::encode(ctx.finish().as_ref()),
                crate::blobs::sniff(&head),
            ))
        })
        .await
    };
    let (sha, kind) = match checked {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Err(ApiError::Internal(format!("upload read: {e}"))),
        Err(e) => return Err(ApiError::Internal(format!("upload check: {e}"))),
    };
    if sha != upload.sha256 {
        remove(state, upload.id).await?;
        return Err(ApiError::ChecksumMismatch(
            "the file's SHA-256 is not the one declared in Upload-Metadata; upload it again".into(),
        ));
    }
    let Some(kind) = kind else {
        remove(state, upload.id).await?;
        return Err(ApiError::UnsupportedMediaType(
            crate::blobs::BlobError::UnsupportedType.to_string().into(),
        ));
    };
    let (id, now) = (upload.id.to_string(), state.clock.now_ms());
    state
        .store
        .write(move |conn| {
            conn.execute(
                "UPDATE uploads SET complete = 1, content_type = ?1, updated_ms = ?2 WHERE id = ?3",
                params![kind, now, id],
            )?;
            Ok::<_, StoreError>(())
        })
        .await?;
    upload.complete = true;
    upload.content_type = Some(kind.to_string());
    Ok(upload)
}

async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let upload = owned(&state, &caller, &id).await?;
    remove(&state, upload.id).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    Ok(response)
}

async fn remove(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    state
        .store
        .write(move |conn| {
            conn.execute("DELETE FROM uploads WHERE id = ?1", [id.to_string()])?;
            Ok::<_, StoreError>(())
        })
        .await?;
    let _ = tokio::fs::remove_file(file_of(state, id)).await;
    Ok(())
}

/// A finished upload of the caller's, with its bytes, to become an attachment. Not found when it
/// is someone else's, unfinished or gone.
pub async fn take_complete(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(Upload, Vec<u8>), ApiError> {
    let upload = owned(state, caller, id).await?;
    if !upload.complete {
        return Err(ApiError::Conflict(
            Reason::new(
                Code::UploadUnfinished,
                format!(
                    "upload {} has {} of {} bytes; finish it first",
                    upload.id, upload.offset, upload.length
                ),
            )
            .param("offset", upload.offset)
            .param("length", upload.length),
        ));
    }
    let bytes = tokio::fs::read(file_of(state, upload.id))
        .await
        .map_err(|e| ApiError::Internal(format!("upload read: {e}")))?;
    if bytes.len() as u64 != upload.length {
        return Err(ApiError::Internal("upload file changed".into()));
    }
    Ok((upload, bytes))
}

/// Drops an upload once its bytes are an attachment.
pub async fn consumed(state: &AppState, id: Uuid) {
    if let Err(e) = remove(state, id).await {
        tracing::warn!(error = %e, %id, "could not drop a used upload");
    }
}
