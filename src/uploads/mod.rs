//! Resumable uploads for photos from phones on bad links: the tus 1.0 core protocol with its
//! creation and termination extensions, under `/api/v1/uploads`.
//!
//! A photo sent in one request must arrive within `http.request_timeout` and starts again from
//! nothing when the link drops; at 400 kbit/s that is a photo that never arrives. Here the phone
//! declares the file (length and SHA-256), then sends it in chunks (`PATCH` at the offset the node
//! acknowledged); after a break it asks the offset (`HEAD`) and goes on from there. The node keeps
//! what each request delivered, even when the connection dies half-way through a chunk, and checks
//! the SHA-256 when the last byte lands. A finished upload becomes an attachment with
//! `POST /api/v1/incidents/{id}/attachments` and `{"upload": "<id>"}`.
//!
//! The `uploads` table (schema v16) owns the state; bytes live in `<data dir>/uploads/<id>`. An
//! upload belongs to the person who made it (others get 404), is bounded by
//! `incidents.max_attachment_bytes` and the daily upload quota, and is dropped after a day without
//! progress. Differences from tus: `Upload-Metadata` must carry `sha256` (hex), and a mismatch is
//! 460 as in tus's checksum extension; `Upload-Defer-Length` and concatenation are not offered.

pub mod routes;

use std::path::{Path, PathBuf};

use base64::Engine;
use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

use crate::store::StoreError;

pub use routes::routes;

pub const TUS_VERSION: &str = "1.0.0";
/// The largest chunk one PATCH may carry.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Unfinished uploads one person may have at once.
pub const MAX_OPEN_PER_PERSON: i64 = 32;
/// An upload without progress for this long is dropped.
pub const KEEP_MS: i64 = 24 * 3_600_000;
const DIR: &str = "uploads";

/// Where the bytes of upload `id` are kept.
pub fn file_in(data_dir: &Path, id: Uuid) -> PathBuf {
    data_dir.join(DIR).join(id.to_string())
}

/// One upload as stored.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: Uuid,
    pub username: String,
    pub length: u64,
    pub offset: u64,
    pub sha256: String,
    pub filename: String,
    /// Known once complete: what the bytes are (never what the phone said they are).
    pub content_type: Option<String>,
    pub complete: bool,
}

pub fn load(conn: &Connection, id: Uuid) -> Result<Option<Upload>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT username, length, offset, sha256, filename, content_type, complete FROM uploads WHERE id = ?1",
            [id.to_string()],
            |r| {
                Ok(Upload {
                    id,
                    username: r.get(0)?,
                    length: r.get::<_, i64>(1)?.max(0) as u64,
                    offset: r.get::<_, i64>(2)?.max(0) as u64,
                    sha256: r.get(3)?,
                    filename: r.get(4)?,
                    content_type: r.get(5)?,
                    complete: r.get::<_, i64>(6)? != 0,
                })
            },
        )
        .optional()?)
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (tus 1.0).
pub fn parse_metadata(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("metadata key {key:?} is not valid"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| format!("metadata {key} is not base64"))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("metadata {key} is not UTF-8"))?;
        out.push((key.to_string(), text));
    }
    Ok(out)
}

/// Drops uploads without progress for a day (rows and files). Returns how many went.
pub fn purge(conn: &Connection, data_dir: &Path, now_ms: i64) -> Result<usize, StoreError> {
    let old: Vec<String> = conn
        .prepare("SELECT id FROM uploads WHERE updated_ms < ?1")?
        .query_map([now_ms - KEEP_MS], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &old {
        conn.execute("DELETE FROM uploads WHERE id = ?1", [id])?;
        if id.parse::<Uuid>().is_ok() {
            let _ = std::fs::remove_file(data_dir.join(DIR).join(id));
        }
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metadata_reads_as_tus_writes_it() {
        let parsed = parse_metadata("filename cGhvdG8uanBn,sha256 YWJj,empty").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("filename".to_string(), "photo.jpg".to_string()),
                ("sha256".to_string(), "abc".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        assert!(parse_metadata("filename !!!").is_err());
    }

    proptest! {
        #[test]
        fn metadata_parsing_never_panics(s in ".{0,300}") {
            let _ = parse_metadata(&s);
        }
    }
}
