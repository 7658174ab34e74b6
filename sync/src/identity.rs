//! Peer identity: the node's Ed25519 key pair and the node id derived from its public key.
//!
//! The key is made once at `init` and pinned by every peer that enrolls the node, so losing or
//! silently replacing it would cut the node off from the tree. It is kept as PKCS#8 in a file only the
//! service user can read, and loading refuses a file that others could read.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("could not generate a key pair: the system random source failed")]
    Random,
    #[error("key file {path} is not a valid Ed25519 PKCS#8 key")]
    BadKey { path: String },
    #[error(
        "key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` and make sure it belongs to the service user"
    )]
    KeyTooOpen { path: String, mode: u32 },
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not a public key: expected 43 characters of unpadded base64url (32 bytes)")]
    BadPublicKey(String),
}

/// The node's signing key. Debug never prints key material.
pub struct NodeKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Makes a fresh key pair and returns it with its PKCS#8 encoding for storage.
    pub fn generate() -> Result<(NodeKey, Vec<u8>), IdentityError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| IdentityError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| IdentityError::Random)?;
        Ok((NodeKey { pair }, pkcs8.as_ref().to_vec()))
    }

    /// Writes a new key file with mode 0600; refuses to overwrite an existing one.
    pub fn write_new_file(path: &Path, pkcs8: &[u8]) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(pkcs8).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Loads the key file, refusing one that group or others may read.
    pub fn load_file(path: &Path) -> Result<NodeKey, IdentityError> {
        let shown = path.display().to_string();
        let meta = fs::metadata(path).map_err(|source| IdentityError::Io {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyTooOpen { path: shown, mode });
        }
        let bytes = fs::read(path).map_err(|source| IdentityError::Io {
            path: shown.clone(),
            source,
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|_| IdentityError::BadKey { path: shown })?;
        Ok(NodeKey { pair })
    }

    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(bytes)
    }

    pub fn node_id(&self) -> NodeId {
        self.public_key().node_id()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// An Ed25519 public key, written as unpadded base64url so it survives shells, URLs and config files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The node id is a digest of the public key, so it cannot be claimed without the key.
    pub fn node_id(&self) -> NodeId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        NodeId(hex::encode(&digest.as_ref()[..16]))
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::BadPublicKey(s.chars().take(60).collect());
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| bad())?;
        let array: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(PublicKey(array))
    }
}

impl TryFrom<String> for PublicKey {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PublicKey> for String {
    fn from(k: PublicKey) -> String {
        k.to_string()
    }
}

/// 32 lowercase hex characters: the first 128 bits of SHA-256 over the public key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_file_round_trip_and_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (key, pkcs8) = NodeKey::generate().unwrap();
        NodeKey::write_new_file(&path, &pkcs8).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = NodeKey::load_file(&path).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        assert_eq!(loaded.node_id().as_str().len(), 32);

        let sig = loaded.sign(b"hello");
        assert!(key.public_key().verify(b"hello", &sig));
        assert!(!key.public_key().verify(b"hellO", &sig));

        // Never overwrite an existing key.
        assert!(NodeKey::write_new_file(&path, &pkcs8).is_err());
    }

    #[test]
    fn refuses_a_key_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (_, pkcs8) = NodeKey::generate().unwrap();
        NodeKey::write_new_file(&path, &pkcs8).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load_file(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn public_key_text_round_trips() {
        let (key, _) = NodeKey::generate().unwrap();
        let text = key.public_key().to_string();
        assert_eq!(text.len(), 43);
        assert_eq!(text.parse::<PublicKey>().unwrap(), key.public_key());
    }

    proptest! {
        #[test]
        fn public_key_parser_never_panics(s in ".{0,80}") {
            let _ = s.parse::<PublicKey>();
        }
    }
}
