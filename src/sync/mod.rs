//! The node's side of sync (the engine itself is the `township-sync` crate): enrolment of downstream
//! nodes ([`registry`]), the frame transport over WebSockets ([`transport`]), the session that runs the
//! engine over an authenticated connection ([`session`]), append-only streams ([`streams`]) and
//! attachments ([`attachments`]) that travel beside the records, the link to the upstream
//! ([`upstream`]), what the node knows about its links ([`status`]), and the HTTP routes ([`routes`]).
//!
//! The engine runs inside write jobs (it reads and writes the record store); frames travel as binary
//! WebSocket messages with a size limit, and local changes are found by watching the record store's
//! sequence number, so a change made anywhere on this node reaches connected peers within a second.
//!
//! Everything here runs with a [`Runtime`]: the pieces of the node it needs, named, so this core
//! never reaches for the HTTP layer's state.

pub mod attachments;
pub mod links;
pub mod registry;
mod routes;
pub mod session;
pub mod status;
pub mod streams;
#[cfg(test)]
mod streams_sim;
pub mod transport;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use township_sync::handshake::HandshakeError;
use township_sync::{DocStore, NodeKey, PublicKey};

pub use registry::{EnrollError, EnrollRequest, PeerRow, enroll};
pub use routes::routes;
pub use status::SyncStatus;
pub use transport::{BLOB_CHUNK, MAX_FRAME_BYTES};
pub use upstream::spawn_upstream;

use crate::blobs::BlobStore;
use crate::clock::Clock;
use crate::config::Config;
use crate::node::NodeInfo;
use crate::records::WriteCtx;
use crate::store::{Store, StoreError};

/// What sync runs with: cheap clones of the node's shared parts.
#[derive(Clone)]
pub struct Runtime {
    pub node: NodeInfo,
    pub key: Arc<NodeKey>,
    pub config: Arc<Config>,
    pub store: Store,
    pub docs: DocStore,
    pub blobs: BlobStore,
    pub clock: Clock,
    pub status: Arc<SyncStatus>,
    /// The upstream's URL and pinned key, if this node has one.
    pub upstream: Option<(String, PublicKey)>,
    /// Writes records and audit entries as this node.
    pub write_ctx: WriteCtx,
    /// The highest record sequence number issued, so a session skips the database when it has not moved.
    pub latest_seq: Arc<AtomicI64>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// Why a sync session ended. [`SessionError::is_permanent`] says whether trying again soon can help:
/// a refusal stays a refusal until a person changes something (an enrolment, a pinned key, a version).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The other side refused us, with its reason.
    #[error("refused: {0}")]
    Refused(String),
    /// Our side of the handshake refused the other (or could not complete it).
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("the handshake timed out")]
    HandshakeTimeout,
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The upstream serves an area that does not contain ours: a configuration error.
    #[error("the upstream serves {0}, which does not contain this node's area")]
    WrongArea(String),
    #[error("closed by this node (revoked or shutting down)")]
    ClosedHere,
    #[error("revoked while connecting")]
    RevokedWhileConnecting,
    #[error("link stalled: {0}")]
    Stalled(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("{0}")]
    Frame(#[from] township_sync::engine::FrameError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("attachment store: {0}")]
    Blobs(String),
}

impl SessionError {
    /// Whether only a person can fix this: retrying at the fastest rate would only fill the logs.
    pub fn is_permanent(&self) -> bool {
        match self {
            SessionError::Refused(_) | SessionError::WrongArea(_) => true,
            SessionError::Handshake(e) => matches!(
                e,
                HandshakeError::Version { .. }
                    | HandshakeError::WrongUpstreamKey { .. }
                    | HandshakeError::NotEnrolled(_)
                    | HandshakeError::Revoked(_)
                    | HandshakeError::IdMismatch
            ),
            _ => false,
        }
    }
}

impl From<crate::blobs::BlobError> for SessionError {
    fn from(e: crate::blobs::BlobError) -> Self {
        SessionError::Blobs(e.to_string())
    }
}

/// The current record sequence number, read in `conn`'s transaction.
pub(crate) fn current_seq(conn: &rusqlite::Connection) -> Result<i64, StoreError> {
    Ok(DocStore::current_seq(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_wrong_keys_are_permanent_and_broken_links_are_not() {
        assert!(SessionError::Refused("node x is not enrolled here".into()).is_permanent());
        assert!(
            SessionError::Handshake(HandshakeError::WrongUpstreamKey {
                found: "a".into(),
                expected: "b".into()
            })
            .is_permanent()
        );
        assert!(
            SessionError::Handshake(HandshakeError::Version { ours: 2, theirs: 1 }).is_permanent()
        );
        assert!(SessionError::WrongArea("330724".into()).is_permanent());
        assert!(!SessionError::Stalled("nothing heard for 30 s".into()).is_permanent());
        assert!(!SessionError::Transport("connection reset".into()).is_permanent());
        assert!(!SessionError::HandshakeTimeout.is_permanent());
        assert!(!SessionError::Handshake(HandshakeError::BadSignature).is_permanent());
    }
}
