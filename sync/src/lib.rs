//! township-sync: everything that crosses the sync boundary between nodes.
//!
//! Today this is peer identity (the node's Ed25519 key and the node id derived from it) and the area-code
//! topology that decides which records flow where. The document store and the sync protocol build on
//! these; they know documents and peers, never incidents or sensors.

pub mod area;
pub mod identity;

pub use area::{AreaCode, AreaError, NodeRole};
pub use identity::{IdentityError, NodeId, NodeKey, PublicKey};
