//! Attachments as content-addressed blobs on disk: `blobs/ab/abcdef…` named by SHA-256, written to a
//! temporary file, synced and renamed into place, so a blob is either whole or absent and the same
//! photo uploaded twice is stored once. The type is decided from the bytes, never from the name.
//! Thumbnails are made for images so lists load on slow links.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::store::StoreError;

mod routes;
pub use routes::routes;

pub const THUMBNAIL_EDGE: u32 = 320;
/// Most memory one thumbnail decode may take. A hub has 1–2 GB; a 633-byte file may claim to be a
/// 7,000 × 7,000 image, and decoding that in full took 147 MB per request before this bound.
pub const DECODE_BUDGET: usize = 48 * 1024 * 1024;
/// JPEGs are decoded at 1/2, 1/4 or 1/8 scale (in the DCT, before pixels exist), so their pixel
/// count matters little; above this many source pixels they are not decoded at all.
const MAX_JPEG_PIXELS: u64 = 120_000_000;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("unsupported file type: send a JPEG, PNG or WebP photo or an MP4 video")]
    UnsupportedType,
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
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

/// How long a thumbnail request waits for its turn to decode before it is told to retry.
pub(crate) const DECODE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Thumbnail decodes at once: one, so the decode budget is the whole cost, however many ask.
    pub decodes: std::sync::Arc<tokio::sync::Semaphore>,
}

impl BlobStore {
    pub fn new(data_dir: &Path) -> BlobStore {
        BlobStore {
            root: data_dir.join("blobs"),
            decodes: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// A thumbnail already made (`Some(Some)`), one known not to be possible (`Some(None)`), or
    /// unknown yet (`None`).
    pub fn cached_thumbnail(&self, sha: &str) -> Option<Option<Vec<u8>>> {
        if let Ok(b) = std::fs::read(self.thumbnail_path(sha)) {
            return Some(Some(b));
        }
        self.root
            .join("thumbs")
            .join(format!("{sha}.none"))
            .exists()
            .then_some(None)
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
    /// that do not decode within the budget (which is reported, not fatal: the photo itself is still
    /// served). A failure is remembered, so a hostile file costs one decode, not one per request.
    pub fn thumbnail(&self, sha: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.thumbnail_path(sha);
        if let Ok(b) = std::fs::read(&path) {
            return Ok(Some(b));
        }
        let failed = self.root.join("thumbs").join(format!("{sha}.none"));
        if failed.exists() {
            return Ok(None);
        }
        let Some(original) = self.read(sha)? else {
            return Ok(None);
        };
        let Some(jpeg) = make_thumbnail(&original) else {
            write_atomically(&failed, b"")?;
            return Ok(None);
        };
        write_atomically(&path, &jpeg)?;
        Ok(Some(jpeg))
    }
}

/// An attachment file on disk that no record refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub path: PathBuf,
    pub bytes: u64,
    /// How long ago the file was last written.
    pub age: std::time::Duration,
}

impl BlobStore {
    /// Files under the blob directory that no record refers to: blobs and partial fetches whose hash
    /// is not in `referenced`, and temporary files left by an interrupted write. Thumbnails follow
    /// their blob. Reads only.
    pub fn orphans(
        &self,
        referenced: &std::collections::HashSet<String>,
    ) -> Result<Vec<Orphan>, BlobError> {
        let mut out = Vec::new();
        let now = std::time::SystemTime::now();
        let dirs = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().to_string();
            if name == "thumbs" || !dir.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for file in std::fs::read_dir(dir.path())?.flatten() {
                let file_name = file.file_name().to_string_lossy().to_string();
                let known = is_sha256_hex(&file_name) && referenced.contains(&file_name);
                if known {
                    continue;
                }
                let Ok(meta) = file.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                out.push(Orphan {
                    path: file.path(),
                    bytes: meta.len(),
                    age,
                });
            }
        }
        Ok(out)
    }

    /// Removes orphans older than `grace` (and the thumbnails of orphaned blobs). A blob written for
    /// an upload whose record is still being committed is young, so the grace keeps it.
    pub fn remove_orphans(
        &self,
        referenced: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Result<Vec<Orphan>, BlobError> {
        let mut removed = Vec::new();
        for orphan in self.orphans(referenced)? {
            if orphan.age < grace {
                continue;
            }
            std::fs::remove_file(&orphan.path)?;
            if let Some(name) = orphan.path.file_name().and_then(|n| n.to_str())
                && is_sha256_hex(name)
            {
                for thumb in [
                    self.thumbnail_path(name),
                    self.root.join("thumbs").join(format!("{name}.none")),
                ] {
                    let _ = std::fs::remove_file(thumb);
                }
            }
            removed.push(orphan);
        }
        Ok(removed)
    }
}

/// Removes the attachment files no record refers to (`referenced`, which the incidents domain
/// lists) once they are older than `grace`, and audits what went. Returns how many files went.
pub async fn collect_orphans(
    store: &crate::store::Store,
    blobs: &BlobStore,
    ctx: crate::records::WriteCtx,
    referenced: std::collections::HashSet<String>,
    grace: std::time::Duration,
) -> Result<usize, BlobError> {
    let blobs = blobs.clone();
    let removed = tokio::task::spawn_blocking(move || blobs.remove_orphans(&referenced, grace))
        .await
        .map_err(|_| BlobError::Io(std::io::Error::other("the orphan scan was cancelled")))??;
    if removed.is_empty() {
        return Ok(0);
    }
    let (count, bytes) = (removed.len(), removed.iter().map(|o| o.bytes).sum::<u64>());
    tracing::info!(count, bytes, "removed attachment files no record refers to");
    let names: Vec<String> = removed
        .iter()
        .filter_map(|o| o.path.file_name().map(|n| n.to_string_lossy().to_string()))
        .collect();
    store
        .write(move |conn| {
            for name in names.iter().filter(|n| is_sha256_hex(n)) {
                conn.execute("DELETE FROM blobs WHERE sha256 = ?1", [name])?;
            }
            let shown: Vec<&String> = names.iter().take(20).collect();
            ctx.audit(
                conn,
                crate::audit::Event::new(
                    crate::auth::actor::SYSTEM,
                    "blob.remove_orphans",
                    "blobs",
                )
                .detail(serde_json::json!({"count": count, "bytes": bytes, "files": shown})),
            )
        })
        .await?;
    Ok(count)
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

/// Decodes an image and makes a JPEG no larger than [`THUMBNAIL_EDGE`] on its long side, within
/// [`DECODE_BUDGET`] of memory whatever the file claims. Never panics on hostile input: decoding is
/// bounded and any panic inside a decoder is caught.
pub fn make_thumbnail(bytes: &[u8]) -> Option<Vec<u8>> {
    let kind = sniff(bytes)?;
    std::panic::catch_unwind(|| {
        let image = match kind {
            "image/jpeg" => decode_jpeg_scaled(bytes)?,
            "image/png" => decode_bounded(bytes, image::ImageFormat::Png)?,
            "image/webp" => decode_bounded(bytes, image::ImageFormat::WebP)?,
            _ => return None,
        };
        let thumb = image::DynamicImage::ImageRgb8(image)
            .thumbnail(THUMBNAIL_EDGE, THUMBNAIL_EDGE)
            .to_rgb8();
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75)
            .encode_image(&thumb)
            .ok()?;
        Some(out)
    })
    .ok()
    .flatten()
}

/// A JPEG decoded at the smallest DCT scale (1/8, 1/4, 1/2 or 1) that still covers the thumbnail, so
/// a 50-megapixel phone photo costs a few megabytes. Progressive JPEGs keep every coefficient of
/// the full image while decoding, so those are decoded only when that fits the budget.
fn decode_jpeg_scaled(bytes: &[u8]) -> Option<image::RgbImage> {
    use jpeg_decoder::{CodingProcess, Decoder, PixelFormat};
    let mut decoder = Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(DECODE_BUDGET);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (w, h) = (u64::from(info.width), u64::from(info.height));
    if w == 0 || h == 0 || w * h > MAX_JPEG_PIXELS {
        return None;
    }
    // Every 8 × 8 block takes at least a bit or two of entropy-coded data: a file with less than a
    // bit per block cannot hold the image it claims (the 633-byte "7,000 × 7,000" of the review).
    // It is not decoded at all rather than decoded into grey at full cost.
    if (bytes.len() as u64).saturating_mul(8) < (w / 8) * (h / 8) {
        return None;
    }
    let components: u64 = match info.pixel_format {
        PixelFormat::L8 | PixelFormat::L16 => 1,
        PixelFormat::RGB24 => 3,
        PixelFormat::CMYK32 => 4,
    };
    if info.coding_process != CodingProcess::DctSequential {
        // Every 8 × 8 block's 64 coefficients, 2 bytes each, per component, rounded up to blocks.
        let coefficients = components * w.div_ceil(8) * 8 * h.div_ceil(8) * 8 * 2;
        if coefficients > DECODE_BUDGET as u64 {
            return None;
        }
    }
    let edge = u16::try_from(THUMBNAIL_EDGE).unwrap_or(u16::MAX);
    let (sw, sh) = decoder.scale(edge, edge).ok()?;
    let pixels = decoder.decode().ok()?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    let rgb: Vec<u8> = match info.pixel_format {
        PixelFormat::RGB24 => pixels,
        PixelFormat::L8 => pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        PixelFormat::L16 => pixels
            .chunks_exact(2)
            .flat_map(|c| {
                let l = c[0];
                [l, l, l]
            })
            .collect(),
        PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .flat_map(|c| {
                // Adobe CMYK JPEGs are stored inverted; the decoder hands back the stored values.
                let k = u16::from(c[3]);
                let ch = |v: u8| ((u16::from(v) * k) / 255) as u8;
                [ch(c[0]), ch(c[1]), ch(c[2])]
            })
            .collect(),
    };
    image::RgbImage::from_raw(sw, sh, rgb)
}

/// PNG and WebP have no reduced-scale decoding: they are decoded only when the whole image fits
/// [`DECODE_BUDGET`] (a 12-megapixel screenshot does; a claimed 7,000 × 7,000 does not).
fn decode_bounded(bytes: &[u8], format: image::ImageFormat) -> Option<image::RgbImage> {
    let reader = |bytes| {
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(DECODE_BUDGET as u64);
        reader.limits(limits);
        reader
    };
    let (w, h) = reader(bytes).into_dimensions().ok()?;
    // Decoded as RGBA at most, plus the RGB copy.
    if u64::from(w) * u64::from(h) * 7 > DECODE_BUDGET as u64 {
        return None;
    }
    Some(reader(bytes).decode().ok()?.to_rgb8())
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
