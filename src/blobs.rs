//! Attachments as content-addressed blobs on disk: `blobs/ab/abcdef…` named by SHA-256, written to a
//! temporary file, synced and renamed into place, so a blob is either whole or absent and the same
//! photo uploaded twice is stored once. The type is decided from the bytes, never from the name.
//! Thumbnails are made for images so lists load on slow links.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::{Connection, OptionalExtension, params};

use crate::app::AppState;
use crate::auth::Caller;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::store::StoreError;

pub const THUMBNAIL_EDGE: u32 = 320;
/// Decoding refuses images larger than this many pixels, so a tiny file claiming to be a
/// 100,000 × 100,000 image cannot exhaust a hub's memory.
const MAX_PIXELS: u64 = 50_000_000;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("unsupported file type: send a JPEG, PNG or WebP photo or an MP4 video")]
    UnsupportedType,
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

/// The media type of `bytes`, from their magic numbers.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        Some("image/png")
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        Some("video/mp4")
    } else {
        None
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn new(data_dir: &Path) -> BlobStore {
        BlobStore {
            root: data_dir.join("blobs"),
        }
    }

    pub fn path(&self, sha: &str) -> PathBuf {
        self.root.join(&sha[..2]).join(sha)
    }

    fn thumbnail_path(&self, sha: &str) -> PathBuf {
        self.root.join("thumbs").join(format!("{sha}.jpg"))
    }

    /// Stores `bytes` under their hash; returns the hash. Idempotent.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let sha = sha256_hex(bytes);
        let path = self.path(&sha);
        if path.exists() {
            return Ok(sha);
        }
        write_atomically(&path, bytes)?;
        Ok(sha)
    }

    pub fn read(&self, sha: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match std::fs::read(self.path(sha)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn partial_path(&self, sha: &str) -> PathBuf {
        self.root.join("partial").join(sha)
    }

    /// How much of a blob being fetched from a peer is already here (to resume after a break).
    pub fn partial_len(&self, sha: &str) -> u64 {
        std::fs::metadata(self.partial_path(sha))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Appends a fetched chunk at `offset`; a chunk that does not continue the partial file restarts it.
    pub fn append_partial(&self, sha: &str, offset: u64, data: &[u8]) -> Result<u64, BlobError> {
        use std::io::{Seek, SeekFrom};
        let path = self.partial_path(sha);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        if offset != len {
            file.set_len(0)?;
            if offset != 0 {
                return Ok(0);
            }
        }
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(data)?;
        file.sync_data()?;
        Ok(offset + data.len() as u64)
    }

    /// Verifies a completed fetch against its hash and moves it into place. Returns its bytes' type
    /// and size, or `None` (and discards it) when the bytes do not match the hash.
    pub fn finish_partial(&self, sha: &str) -> Result<Option<(&'static str, u64)>, BlobError> {
        let path = self.partial_path(sha);
        let bytes = std::fs::read(&path)?;
        if sha256_hex(&bytes) != sha {
            std::fs::remove_file(&path)?;
            return Ok(None);
        }
        let content_type = sniff(&bytes).unwrap_or("application/octet-stream");
        let target = self.path(sha);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(&path, &target)?;
        Ok(Some((content_type, bytes.len() as u64)))
    }

    /// Part of a stored blob, for a peer fetching it.
    pub fn read_chunk(
        &self,
        sha: &str,
        offset: u64,
        max: usize,
    ) -> Result<Option<(Vec<u8>, u64)>, BlobError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = match std::fs::File::open(self.path(sha)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let total = file.metadata()?.len();
        file.seek(SeekFrom::Start(offset.min(total)))?;
        let mut data = vec![0u8; max.min((total.saturating_sub(offset)) as usize)];
        file.read_exact(&mut data)?;
        Ok(Some((data, total)))
    }

    /// The thumbnail of an image blob, made on first use. `None` for blobs that are not images or
    /// that do not decode (which is reported, not fatal: the photo itself is still served).
    pub fn thumbnail(&self, sha: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.thumbnail_path(sha);
        if let Ok(b) = std::fs::read(&path) {
            return Ok(Some(b));
        }
        let Some(original) = self.read(sha)? else {
            return Ok(None);
        };
        let Some(jpeg) = make_thumbnail(&original) else {
            return Ok(None);
        };
        write_atomically(&path, &jpeg)?;
        Ok(Some(jpeg))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("blob path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Decodes an image and makes a JPEG no larger than [`THUMBNAIL_EDGE`] on its long side. Never
/// panics on hostile input: decoding is bounded and any panic inside the decoder is caught.
pub fn make_thumbnail(bytes: &[u8]) -> Option<Vec<u8>> {
    let format = match sniff(bytes)? {
        "image/jpeg" => image::ImageFormat::Jpeg,
        "image/png" => image::ImageFormat::Png,
        "image/webp" => image::ImageFormat::WebP,
        _ => return None,
    };
    std::panic::catch_unwind(|| {
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(512 * 1024 * 1024);
        reader.limits(limits);
        let (w, h) = reader.into_dimensions().ok()?;
        if u64::from(w) * u64::from(h) > MAX_PIXELS {
            return None;
        }
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(512 * 1024 * 1024);
        reader.limits(limits);
        let img = reader.decode().ok()?;
        let thumb = img.thumbnail(THUMBNAIL_EDGE, THUMBNAIL_EDGE).to_rgb8();
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75)
            .encode_image(&thumb)
            .ok()?;
        Some(out)
    })
    .ok()
    .flatten()
}

/// Records a stored blob's type and size (idempotent).
pub fn register(
    conn: &Connection,
    sha: &str,
    size: usize,
    content_type: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO blobs (sha256, size, content_type, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![sha, size as i64, content_type, now_ms],
    )?;
    Ok(())
}

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/blobs/{sha256}", get_blob)
        .get("/api/v1/blobs/{sha256}/thumbnail", get_thumbnail)
}

/// The blob's type, if the caller may see it: it must belong to an incident inside their area.
async fn authorize_blob(state: &AppState, caller: &Caller, sha: &str) -> Result<String, ApiError> {
    if !is_sha256_hex(sha) {
        return Err(ApiError::NotFound);
    }
    let (sha_owned, area) = (sha.to_string(), caller.area.as_str().to_string());
    let found = state
        .store
        .read(move |conn| {
            Ok::<_, StoreError>(
                conn.query_row(
                    "SELECT b.content_type FROM blobs b
                     WHERE b.sha256 = ?1 AND EXISTS (
                       SELECT 1 FROM incident_attachments a JOIN incidents i ON i.id = a.incident_id
                       WHERE a.sha256 = b.sha256 AND i.area LIKE ?2 || '%')",
                    params![sha_owned, area],
                    |r| r.get::<_, String>(0),
                )
                .optional()?,
            )
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
    let bytes = tokio::task::spawn_blocking(move || blobs.thumbnail(&sha_read))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NotFound)?;
    Ok(bytes_response(
        bytes,
        "image/jpeg",
        &format!("{sha}-thumb"),
        &headers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn sniffing_by_bytes() {
        assert_eq!(sniff(&png(2, 2)), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]), Some("image/jpeg"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42\0\0"), Some("video/mp4"));
        assert_eq!(sniff(b"<html><script>"), None);
        assert_eq!(sniff(b"GIF89a"), None);
    }

    #[test]
    fn store_is_content_addressed_and_thumbnails_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let bytes = png(1200, 800);
        let a = store.put(&bytes).unwrap();
        let b = store.put(&bytes).unwrap();
        assert_eq!(a, b);
        assert_eq!(store.read(&a).unwrap().unwrap(), bytes);
        let thumb = store.thumbnail(&a).unwrap().unwrap();
        let decoded = image::load_from_memory(&thumb).unwrap();
        assert!(decoded.width() <= THUMBNAIL_EDGE && decoded.height() <= THUMBNAIL_EDGE);
        assert_eq!(decoded.width(), THUMBNAIL_EDGE);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn thumbnails_never_panic_on_garbage(prefix in prop::sample::select(vec![
            vec![0xFFu8, 0xD8, 0xFF], vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A], b"RIFF\0\0\0\0WEBP".to_vec()]),
            tail in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut bytes = prefix;
            bytes.extend(tail);
            let _ = make_thumbnail(&bytes);
        }

        #[test]
        fn truncated_images_never_panic(cut in 0usize..400) {
            let bytes = png(40, 30);
            let _ = make_thumbnail(&bytes[..cut.min(bytes.len())]);
        }
    }
}
