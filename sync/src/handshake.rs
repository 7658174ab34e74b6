//! The connection handshake: mutual Ed25519 challenge-response over fresh nonces from both sides.
//!
//! ```text
//! downstream → upstream   ClientHello  { version, node id, public key, client nonce }
//! upstream → downstream   ServerHello  { version, node id, public key, server nonce,
//!                                        signature over the transcript }
//! downstream → upstream   ClientProof  { signature over the transcript }
//! ```
//!
//! Each side signs a transcript binding the protocol version, both node ids and keys, both nonces and
//! its own role, so a signature is worthless in any other session (no replay) and cannot be reflected
//! back as the other side's. The downstream node checks the upstream's key against the one it pinned
//! at `init`; the upstream checks the downstream's key against its enrollments.

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::identity::{NodeKey, PublicKey};

/// 2: every change carries an author claim, and changes from below without one are refused. A
/// version-1 node would have its changes refused one by one; it is refused here instead, with a
/// message that says which node to upgrade.
pub const HANDSHAKE_VERSION: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeFrame {
    ClientHello {
        version: u32,
        node_id: String,
        public_key: String,
        nonce: Vec<u8>,
        /// The downstream's software version, shown to county IT on the nodes page.
        software: String,
    },
    ServerHello {
        version: u32,
        node_id: String,
        public_key: String,
        nonce: Vec<u8>,
        signature: Vec<u8>,
    },
    ClientProof {
        signature: Vec<u8>,
    },
    /// Sent by the upstream when the proof checks out, with the area it serves.
    Welcome {
        area: String,
    },
    Refused {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("protocol version {theirs} is not {ours}; upgrade the older node")]
    Version { ours: u32, theirs: u32 },
    #[error("the upstream presented key {found}, not the pinned {expected}: refusing an impostor")]
    WrongUpstreamKey { found: String, expected: String },
    #[error("node {0} is not enrolled here")]
    NotEnrolled(String),
    #[error("node {0} was revoked")]
    Revoked(String),
    #[error("the node id does not belong to the public key")]
    IdMismatch,
    #[error("bad signature")]
    BadSignature,
    #[error("malformed handshake: {0}")]
    Malformed(String),
    #[error("the system random source failed")]
    Random,
}

/// Who is on the other end, once proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub node_id: String,
    pub public_key: PublicKey,
    /// The peer's software version, when it said (downstream nodes do in their hello).
    pub software: Option<String>,
}

/// What the upstream knows about an enrolled downstream key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    Active,
    Revoked,
}

fn nonce() -> Result<Vec<u8>, HandshakeError> {
    let mut n = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| HandshakeError::Random)?;
    Ok(n)
}

struct Transcript<'a> {
    client_id: &'a str,
    client_key: &'a PublicKey,
    client_nonce: &'a [u8],
    server_id: &'a str,
    server_key: &'a PublicKey,
    server_nonce: &'a [u8],
}

impl Transcript<'_> {
    fn bytes(&self, signer: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"township-node sync handshake\0");
        out.extend_from_slice(&HANDSHAKE_VERSION.to_le_bytes());
        for part in [
            signer.as_bytes(),
            self.client_id.as_bytes(),
            self.client_key.as_bytes(),
            self.client_nonce,
            self.server_id.as_bytes(),
            self.server_key.as_bytes(),
            self.server_nonce,
        ] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

fn parse_key(text: &str, claimed_id: &str) -> Result<PublicKey, HandshakeError> {
    let key: PublicKey = text
        .parse()
        .map_err(|_| HandshakeError::Malformed("public key".into()))?;
    if key.node_id().as_str() != claimed_id {
        return Err(HandshakeError::IdMismatch);
    }
    Ok(key)
}

fn check_nonce(n: &[u8]) -> Result<(), HandshakeError> {
    if n.len() == 32 {
        Ok(())
    } else {
        Err(HandshakeError::Malformed("nonce must be 32 bytes".into()))
    }
}

/// The downstream side.
pub struct Client<'k> {
    key: &'k NodeKey,
    pinned: PublicKey,
    nonce: Vec<u8>,
}

impl<'k> Client<'k> {
    pub fn start(
        key: &'k NodeKey,
        pinned_upstream: PublicKey,
    ) -> Result<(Client<'k>, HandshakeFrame), HandshakeError> {
        let nonce = nonce()?;
        let hello = HandshakeFrame::ClientHello {
            version: HANDSHAKE_VERSION,
            node_id: key.node_id().to_string(),
            public_key: key.public_key().to_string(),
            nonce: nonce.clone(),
            software: env!("CARGO_PKG_VERSION").to_string(),
        };
        Ok((
            Client {
                key,
                pinned: pinned_upstream,
                nonce,
            },
            hello,
        ))
    }

    /// Checks the upstream's proof and answers with ours.
    pub fn finish(self, frame: HandshakeFrame) -> Result<(Proven, HandshakeFrame), HandshakeError> {
        let HandshakeFrame::ServerHello {
            version,
            node_id,
            public_key,
            nonce,
            signature,
        } = frame
        else {
            return match frame {
                HandshakeFrame::Refused { reason } => {
                    Err(HandshakeError::Malformed(format!("refused: {reason}")))
                }
                _ => Err(HandshakeError::Malformed(
                    "expected the upstream's hello".into(),
                )),
            };
        };
        if version != HANDSHAKE_VERSION {
            return Err(HandshakeError::Version {
                ours: HANDSHAKE_VERSION,
                theirs: version,
            });
        }
        check_nonce(&nonce)?;
        let server_key = parse_key(&public_key, &node_id)?;
        if server_key != self.pinned {
            return Err(HandshakeError::WrongUpstreamKey {
                found: server_key.to_string(),
                expected: self.pinned.to_string(),
            });
        }
        let our_id = self.key.node_id().to_string();
        let our_key = self.key.public_key();
        let transcript = Transcript {
            client_id: &our_id,
            client_key: &our_key,
            client_nonce: &self.nonce,
            server_id: &node_id,
            server_key: &server_key,
            server_nonce: &nonce,
        };
        if !server_key.verify(&transcript.bytes("server"), &signature) {
            return Err(HandshakeError::BadSignature);
        }
        let proof = HandshakeFrame::ClientProof {
            signature: self.key.sign(&transcript.bytes("client")).to_vec(),
        };
        Ok((
            Proven {
                node_id,
                public_key: server_key,
                software: None,
            },
            proof,
        ))
    }
}

/// The upstream side.
pub struct Server<'k> {
    key: &'k NodeKey,
    client_id: String,
    client_key: PublicKey,
    client_nonce: Vec<u8>,
    client_software: String,
    nonce: Vec<u8>,
}

impl<'k> Server<'k> {
    /// Answers a hello from a downstream node whose key `enrollment` looks up.
    pub fn answer(
        key: &'k NodeKey,
        frame: HandshakeFrame,
        enrollment: impl Fn(&PublicKey) -> Option<Enrollment>,
    ) -> Result<(Server<'k>, HandshakeFrame), HandshakeError> {
        let HandshakeFrame::ClientHello {
            version,
            node_id,
            public_key,
            nonce: client_nonce,
            software,
        } = frame
        else {
            return Err(HandshakeError::Malformed("expected a hello".into()));
        };
        if version != HANDSHAKE_VERSION {
            return Err(HandshakeError::Version {
                ours: HANDSHAKE_VERSION,
                theirs: version,
            });
        }
        check_nonce(&client_nonce)?;
        let client_key = parse_key(&public_key, &node_id)?;
        match enrollment(&client_key) {
            None => return Err(HandshakeError::NotEnrolled(node_id)),
            Some(Enrollment::Revoked) => return Err(HandshakeError::Revoked(node_id)),
            Some(Enrollment::Active) => {}
        }
        let nonce = nonce()?;
        let our_id = key.node_id().to_string();
        let our_key = key.public_key();
        let transcript = Transcript {
            client_id: &node_id,
            client_key: &client_key,
            client_nonce: &client_nonce,
            server_id: &our_id,
            server_key: &our_key,
            server_nonce: &nonce,
        };
        let signature = key.sign(&transcript.bytes("server")).to_vec();
        let hello = HandshakeFrame::ServerHello {
            version: HANDSHAKE_VERSION,
            node_id: our_id.clone(),
            public_key: our_key.to_string(),
            nonce: nonce.clone(),
            signature,
        };
        Ok((
            Server {
                key,
                client_id: node_id,
                client_key,
                client_nonce,
                client_software: software.chars().take(40).collect(),
                nonce,
            },
            hello,
        ))
    }

    /// Checks the downstream's proof.
    pub fn finish(self, frame: HandshakeFrame) -> Result<Proven, HandshakeError> {
        let HandshakeFrame::ClientProof { signature } = frame else {
            return Err(HandshakeError::Malformed("expected the proof".into()));
        };
        let our_id = self.key.node_id().to_string();
        let our_key = self.key.public_key();
        let transcript = Transcript {
            client_id: &self.client_id,
            client_key: &self.client_key,
            client_nonce: &self.client_nonce,
            server_id: &our_id,
            server_key: &our_key,
            server_nonce: &self.nonce,
        };
        if !self
            .client_key
            .verify(&transcript.bytes("client"), &signature)
        {
            return Err(HandshakeError::BadSignature);
        }
        Ok(Proven {
            node_id: self.client_id,
            public_key: self.client_key,
            software: Some(self.client_software),
        })
    }
}

/// Fails only if the frame cannot be serialised, a bug here: never an empty frame on the wire.
pub fn encode(frame: &HandshakeFrame) -> Result<Vec<u8>, HandshakeError> {
    postcard::to_allocvec(frame).map_err(|e| HandshakeError::Malformed(e.to_string()))
}

pub fn decode(bytes: &[u8]) -> Result<HandshakeFrame, HandshakeError> {
    postcard::from_bytes(bytes).map_err(|e| HandshakeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> (NodeKey, NodeKey) {
        (
            NodeKey::generate().unwrap().0,
            NodeKey::generate().unwrap().0,
        )
    }

    fn enrolled(k: &NodeKey) -> impl Fn(&PublicKey) -> Option<Enrollment> + '_ {
        move |p| (*p == k.public_key()).then_some(Enrollment::Active)
    }

    #[test]
    fn both_sides_prove_who_they_are() {
        let (county, village) = keys();
        let (client, hello) = Client::start(&village, county.public_key()).unwrap();
        let (server, server_hello) = Server::answer(
            &county,
            decode(&encode(&hello).unwrap()).unwrap(),
            enrolled(&village),
        )
        .unwrap();
        let (upstream, proof) = client
            .finish(decode(&encode(&server_hello).unwrap()).unwrap())
            .unwrap();
        assert_eq!(upstream.public_key, county.public_key());
        let downstream = server.finish(proof).unwrap();
        assert_eq!(downstream.node_id, village.node_id().to_string());
    }

    #[test]
    fn an_impostor_upstream_is_refused() {
        let (county, village) = keys();
        let (impostor, _) = keys();
        let (client, hello) = Client::start(&village, county.public_key()).unwrap();
        let (_, server_hello) = Server::answer(&impostor, hello, enrolled(&village)).unwrap();
        assert!(matches!(
            client.finish(server_hello),
            Err(HandshakeError::WrongUpstreamKey { .. })
        ));
    }

    #[test]
    fn unenrolled_and_revoked_nodes_are_refused() {
        let (county, village) = keys();
        let (_, hello) = Client::start(&village, county.public_key()).unwrap();
        assert!(matches!(
            Server::answer(&county, hello.clone(), |_| None),
            Err(HandshakeError::NotEnrolled(_))
        ));
        assert!(matches!(
            Server::answer(&county, hello, |_| Some(Enrollment::Revoked)),
            Err(HandshakeError::Revoked(_))
        ));
    }

    #[test]
    fn a_replayed_proof_fails_in_a_new_session() {
        let (county, village) = keys();
        let (client, hello) = Client::start(&village, county.public_key()).unwrap();
        let (server, server_hello) =
            Server::answer(&county, hello.clone(), enrolled(&village)).unwrap();
        let (_, proof) = client.finish(server_hello).unwrap();
        server.finish(proof.clone()).unwrap();
        // An eavesdropper replays the same hello and proof: the upstream's fresh nonce differs.
        let (server2, _) = Server::answer(&county, hello, enrolled(&village)).unwrap();
        assert_eq!(server2.finish(proof), Err(HandshakeError::BadSignature));
    }

    #[test]
    fn a_stolen_node_id_and_a_wrong_version_are_refused() {
        let (county, village) = keys();
        let (other, _) = keys();
        let (_, hello) = Client::start(&village, county.public_key()).unwrap();
        let HandshakeFrame::ClientHello {
            nonce, public_key, ..
        } = hello
        else {
            unreachable!()
        };
        let forged = HandshakeFrame::ClientHello {
            version: HANDSHAKE_VERSION,
            node_id: other.node_id().to_string(),
            public_key: public_key.clone(),
            nonce: nonce.clone(),
            software: "test".into(),
        };
        assert_eq!(
            Server::answer(&county, forged, |_| Some(Enrollment::Active)).err(),
            Some(HandshakeError::IdMismatch)
        );
        let old = HandshakeFrame::ClientHello {
            version: 0,
            node_id: village.node_id().to_string(),
            public_key,
            nonce,
            software: "test".into(),
        };
        assert!(matches!(
            Server::answer(&county, old, enrolled(&village)),
            Err(HandshakeError::Version { .. })
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let (county, village) = keys();
            if let Ok(frame) = decode(&bytes) {
                let _ = Server::answer(&county, frame.clone(), enrolled(&village));
                let (client, _) = Client::start(&village, county.public_key()).unwrap();
                let _ = client.finish(frame);
            }
        }
    }
}
