//! Attachments beside the records: photos travel in chunks of [`BLOB_CHUNK`] after the records have
//! settled, resumable after a break (a partial file grows until its length matches), verified
//! against their hash before anything refers to them. A node serves an attachment only to a peer
//! that holds a record listing it; which records list which attachment is the incidents domain's
//! knowledge, asked through its functions.

use std::collections::HashSet;

use township_sync::engine::{Frame, PeerInfo};

use super::transport::BLOB_CHUNK;
use super::{Runtime, SessionError};
use crate::blobs::{BlobError, BlobStore};

/// Largest attachment a peer may announce; anything claiming more is ignored.
const MAX_TOTAL: u64 = 1 << 32;

/// The first chunk a connection asks for; each chunk landed doubles the next, up to [`BLOB_CHUNK`].
pub const FIRST_CHUNK: usize = 16 * 1024;
/// Smallest chunk served, whatever the asker says.
const MIN_CHUNK: usize = 4 * 1024;

/// One session's fetching: at most one attachment at a time, and those the peer does not have.
#[derive(Debug)]
pub struct Fetch {
    fetching: Option<String>,
    unavailable: HashSet<String>,
    /// The size of the next chunk to ask for.
    chunk: usize,
}

impl Default for Fetch {
    fn default() -> Self {
        Fetch {
            fetching: None,
            unavailable: HashSet::new(),
            chunk: FIRST_CHUNK,
        }
    }
}

impl Fetch {
    pub fn is_idle(&self) -> bool {
        self.fetching.is_none()
    }

    fn request(&self, sha256: String, offset: u64) -> Frame {
        Frame::BlobRequest {
            sha256,
            offset,
            len: u32::try_from(self.chunk).unwrap_or(u32::MAX),
        }
    }

    fn is_fetching(&self, sha256: &str) -> bool {
        self.fetching.as_deref() == Some(sha256)
    }

    /// The peer does not have it (or sent bytes that do not match): not asked for again this session.
    fn give_up(&mut self, sha256: String) {
        if self.is_fetching(&sha256) {
            self.fetching = None;
        }
        self.unavailable.insert(sha256);
    }
}

/// What landing one chunk came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Landed {
    /// More is needed, from this offset.
    More(u64),
    /// Complete and matching its hash: stored under it.
    Verified {
        content_type: &'static str,
        size: u64,
    },
    /// Complete but not matching its hash: discarded.
    Corrupt,
}

/// The chunk of a stored attachment at `offset`, at most `len` bytes (within [4 KiB, `BLOB_CHUNK`]),
/// or `BlobMissing` (blocking: file I/O).
pub fn serve_chunk(
    blobs: &BlobStore,
    sha256: String,
    offset: u64,
    len: u32,
) -> Result<Frame, BlobError> {
    let len = usize::try_from(len)
        .unwrap_or(BLOB_CHUNK)
        .clamp(MIN_CHUNK, BLOB_CHUNK);
    Ok(match blobs.read_chunk(&sha256, offset, len)? {
        Some((data, total)) => Frame::BlobChunk {
            sha256,
            offset,
            total,
            data,
        },
        None => Frame::BlobMissing { sha256 },
    })
}

/// Appends a fetched chunk and, once the attachment is complete, verifies it (blocking: file I/O).
pub fn land_chunk(
    blobs: &BlobStore,
    sha256: &str,
    offset: u64,
    total: u64,
    data: &[u8],
) -> Result<Landed, BlobError> {
    let len = blobs.append_partial(sha256, offset, data)?;
    if len < total {
        return Ok(Landed::More(len));
    }
    Ok(match blobs.finish_partial(sha256)? {
        Some((content_type, size)) => Landed::Verified { content_type, size },
        None => Landed::Corrupt,
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, SessionError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SessionError::Blobs(e.to_string()))?
        .map_err(SessionError::from)
}

/// Whether a stored blob is audio, from its first bytes.
fn is_audio(blobs: &crate::blobs::BlobStore, sha: &str) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(blobs.path(sha))
        .and_then(|mut f| f.read(&mut head))
        .is_ok_and(|n| crate::pa::audio::sniff(&head[..n]).is_some())
}

/// The request for the next attachment this node lacks, if any (and if nothing is being fetched).
pub async fn next_request(rt: &Runtime, fetch: &mut Fetch) -> Option<Frame> {
    if !fetch.is_idle() {
        return None;
    }
    let skip = fetch.unavailable.clone();
    let sha = rt
        .store
        .read(move |conn| {
            Ok::<_, crate::store::StoreError>(
                match crate::incidents::first_missing_attachment(conn, &skip)? {
                    Some(sha) => Some(sha),
                    None => crate::broadcast::first_missing_audio(conn, &skip)?,
                },
            )
        })
        .await
        .ok()
        .flatten()?;
    let offset = rt.blobs.partial_len(&sha);
    fetch.fetching = Some(sha.clone());
    Some(fetch.request(sha, offset))
}

/// Serves and fetches attachments in chunks; returns the frames to send back.
pub async fn handle(
    rt: &Runtime,
    peer: &PeerInfo,
    frame: Frame,
    fetch: &mut Fetch,
) -> Result<Vec<Frame>, SessionError> {
    match frame {
        Frame::BlobRequest {
            sha256,
            offset,
            len,
        } => {
            if !crate::blobs::is_sha256_hex(&sha256) {
                return Ok(vec![Frame::BlobMissing { sha256 }]);
            }
            let sha = sha256.clone();
            let (incident_areas, broadcast_areas) = rt
                .store
                .read(move |conn| {
                    Ok::<_, crate::store::StoreError>((
                        crate::incidents::attachment_areas(conn, &sha)?,
                        crate::broadcast::audio_areas(conn, &sha)?,
                    ))
                })
                .await?;
            let incident_flow = rt.docs.flow(crate::incidents::KIND);
            let broadcast_flow = rt.docs.flow(crate::broadcast::KIND);
            // Through a broadcast only audio is served: a node below may name any hash in a
            // broadcast of its own area, and must not fetch a photo that way.
            let may_have = incident_areas
                .iter()
                .any(|a| peer.holds(&rt.node.area, incident_flow, a))
                || (broadcast_areas
                    .iter()
                    .any(|a| peer.holds(&rt.node.area, broadcast_flow, a))
                    && is_audio(&rt.blobs, &sha256));
            if !may_have {
                return Ok(vec![Frame::BlobMissing { sha256 }]);
            }
            let blobs = rt.blobs.clone();
            Ok(vec![
                blocking(move || serve_chunk(&blobs, sha256, offset, len)).await?,
            ])
        }
        Frame::BlobChunk {
            sha256,
            offset,
            total,
            data,
        } => {
            if !fetch.is_fetching(&sha256) || total > MAX_TOTAL {
                return Ok(Vec::new());
            }
            let (blobs, sha) = (rt.blobs.clone(), sha256.clone());
            match blocking(move || land_chunk(&blobs, &sha, offset, total, &data)).await? {
                Landed::More(from) => {
                    fetch.chunk = (fetch.chunk * 2).min(BLOB_CHUNK);
                    Ok(vec![fetch.request(sha256, from)])
                }
                Landed::Verified { content_type, size } => {
                    fetch.fetching = None;
                    let (ctx, sha) = (rt.write_ctx.clone(), sha256.clone());
                    rt.store
                        .write(move |conn| {
                            crate::blobs::register(
                                conn,
                                &sha,
                                size as usize,
                                content_type,
                                ctx.now_ms(),
                            )
                        })
                        .await?;
                    tracing::debug!(sha256 = %sha256, size, "attachment fetched and verified");
                    Ok(Vec::new())
                }
                Landed::Corrupt => {
                    tracing::warn!(sha256 = %sha256, "a fetched attachment did not match its hash; discarded");
                    fetch.give_up(sha256);
                    Ok(Vec::new())
                }
            }
        }
        Frame::BlobMissing { sha256 } => {
            fetch.give_up(sha256);
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::sha256_hex;

    /// Fetches `sha` from `from` into `to` chunk by chunk, as a session would.
    fn copy(from: &BlobStore, to: &BlobStore, sha: &str) -> (Landed, usize) {
        let mut offset = to.partial_len(sha);
        let mut chunks = 0;
        loop {
            let Frame::BlobChunk {
                offset: at,
                total,
                data,
                ..
            } = serve_chunk(from, sha.to_string(), offset, BLOB_CHUNK as u32).unwrap()
            else {
                panic!("the source has it");
            };
            chunks += 1;
            match land_chunk(to, sha, at, total, &data).unwrap() {
                Landed::More(next) => offset = next,
                done => return (done, chunks),
            }
        }
    }

    fn photo(len: usize) -> Vec<u8> {
        let mut bytes = vec![0xff, 0xd8, 0xff, 0xe0];
        bytes.extend((0..len).map(|i| (i * 31 % 251) as u8));
        bytes
    }

    #[test]
    fn an_attachment_arrives_in_chunks_and_is_verified() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (BlobStore::new(a.path()), BlobStore::new(b.path()));
        let bytes = photo(3 * BLOB_CHUNK + 100);
        let sha = from.put(&bytes).unwrap();
        let (landed, chunks) = copy(&from, &to, &sha);
        assert_eq!(chunks, 4);
        assert_eq!(
            landed,
            Landed::Verified {
                content_type: "image/jpeg",
                size: bytes.len() as u64
            }
        );
        assert_eq!(to.read(&sha).unwrap().unwrap(), bytes);
    }

    #[test]
    fn a_broken_fetch_resumes_where_it_stopped() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (BlobStore::new(a.path()), BlobStore::new(b.path()));
        let bytes = photo(2 * BLOB_CHUNK + 10);
        let sha = from.put(&bytes).unwrap();
        // One chunk lands, then the link breaks.
        let Frame::BlobChunk { total, data, .. } =
            serve_chunk(&from, sha.clone(), 0, BLOB_CHUNK as u32).unwrap()
        else {
            panic!("the source has it");
        };
        assert_eq!(
            land_chunk(&to, &sha, 0, total, &data).unwrap(),
            Landed::More(BLOB_CHUNK as u64)
        );
        // The next session asks from there and needs only the rest.
        let (landed, chunks) = copy(&from, &to, &sha);
        assert!(matches!(landed, Landed::Verified { .. }));
        assert_eq!(chunks, 2);
        assert_eq!(to.read(&sha).unwrap().unwrap(), bytes);
    }

    #[test]
    fn bytes_that_do_not_match_the_hash_are_discarded() {
        let b = tempfile::tempdir().unwrap();
        let to = BlobStore::new(b.path());
        let claimed = sha256_hex(b"what the record lists");
        let lie = b"something else entirely";
        assert_eq!(
            land_chunk(&to, &claimed, 0, lie.len() as u64, lie).unwrap(),
            Landed::Corrupt
        );
        assert!(to.read(&claimed).unwrap().is_none());
        assert_eq!(to.partial_len(&claimed), 0);
    }

    #[test]
    fn a_chunk_that_does_not_continue_the_partial_file_restarts_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (BlobStore::new(a.path()), BlobStore::new(b.path()));
        let bytes = photo(2 * BLOB_CHUNK);
        let sha = from.put(&bytes).unwrap();
        let Frame::BlobChunk { total, data, .. } =
            serve_chunk(&from, sha.clone(), 0, BLOB_CHUNK as u32).unwrap()
        else {
            panic!("the source has it");
        };
        land_chunk(&to, &sha, 0, total, &data).unwrap();
        // A chunk from the wrong place (a replay, a confused peer) is not glued on.
        assert_eq!(
            land_chunk(&to, &sha, 7, total, &data[..10]).unwrap(),
            Landed::More(0)
        );
        let (landed, _) = copy(&from, &to, &sha);
        assert!(matches!(landed, Landed::Verified { .. }));
    }

    #[test]
    fn a_missing_attachment_is_not_asked_for_again() {
        let mut fetch = Fetch {
            fetching: Some("ab".repeat(32)),
            ..Fetch::default()
        };
        fetch.give_up("ab".repeat(32));
        assert!(fetch.is_idle());
        assert!(fetch.unavailable.contains(&"ab".repeat(32)));
        let b = tempfile::tempdir().unwrap();
        let store = BlobStore::new(b.path());
        assert_eq!(
            serve_chunk(&store, "cd".repeat(32), 0, BLOB_CHUNK as u32).unwrap(),
            Frame::BlobMissing {
                sha256: "cd".repeat(32)
            }
        );
    }
}
