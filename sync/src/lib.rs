//! township-sync: everything that crosses the sync boundary between nodes.
//!
//! - [`identity`]: the node's Ed25519 key and the node id derived from it.
//! - [`author`]: the author claim every change carries, and tracing values back to their change.
//! - [`area`]: area codes and the containment rules that decide which records flow where.
//! - [`docstore`]: collaborative records as automerge documents in SQLite, with projections.
//! - [`engine`]: the transport-agnostic record sync between two nodes (manifests, automerge sync,
//!   acknowledgements, scope and authority).
//! - [`workflow`]: append-only transition lists folded deterministically into a state.
//! - [`handshake`]: mutual Ed25519 challenge-response that opens every sync connection.
//! - [`hlc`]: the hybrid logical clock that orders transitions.
//! - [`fields`]: typed reads of record fields and their concurrent values.
//!
//! This crate knows documents, peers and areas; never incidents or sensors.

pub mod area;
pub mod author;
pub mod docstore;
pub mod engine;
pub mod fields;
pub mod handshake;
pub mod hlc;
pub mod identity;
pub mod workflow;

pub use area::{AreaCode, AreaError, NodeRole};
pub use author::{Author, Authors, Person, Provenance};
pub use docstore::{
    DocError, DocMeta, DocStore, Flow, Merged, Projection, ProjectionError, Sender,
};
pub use hlc::{Hlc, Timestamp};
pub use identity::{IdentityError, NodeId, NodeKey, PublicKey};
pub use workflow::{Conflict, Folded, Machine, Transition, Written};
