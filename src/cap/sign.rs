//! The node's CAP signing key (ECDSA P-256, kept as PKCS#8 in the data directory, 0600, made the first
//! time the node starts without one) and the enveloped XML Signature (exclusive C14N, ecdsa-sha256)
//! over a CAP message.
//!
//! The message is written by [`super::xml`] in canonical form already (no declaration inside the
//! signed part, attributes in order, every element closed with an end tag, canonical escaping, no
//! whitespace between elements), so its exclusive canonicalisation is its own bytes: what is signed
//! is exactly what is sent, and any verifier (xmlsec1 in the tests) computes the same digest.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

pub const KEY_FILE: &str = "cap-signing.p8";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the CAP signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the CAP signing key {0} is not a P-256 PKCS#8 key; move it away and restart to make a new one"
    )]
    Corrupt(PathBuf),
    #[error("the system random source failed")]
    Random,
}

pub struct CapKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for CapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CapKey(P-256)")
    }
}

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl CapKey {
    /// Loads the key from `dir`, making it first if there is none.
    pub fn load_or_create(dir: &Path) -> Result<CapKey, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let rng = SystemRandom::new();
        let der = match std::fs::read(&path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyError::Random)?;
                crate::node::write_file_atomically(&path, doc.as_ref(), 0o600).map_err(io)?;
                tracing::debug!(path = %path.display(), "made the CAP signing key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|_| KeyError::Corrupt(path.clone()))?;
        Ok(CapKey { pair, rng })
    }

    /// The public key as PEM (SubjectPublicKeyInfo), for `GET /api/v1/cap/key.pem`.
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_P256_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// Signs `message` (r‖s, as XML Signature's ecdsa-sha256 wants it).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        Ok(self
            .pair
            .sign(&self.rng, message)
            .map_err(|_| KeyError::Random)?
            .as_ref()
            .to_vec())
    }

    /// Puts an enveloped signature into a canonical CAP document, as the last child of its root
    /// element, and returns the signed document with an XML declaration.
    pub fn sign_document(&self, canonical: &str) -> Result<String, KeyError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        let signed_info = format!(
            "<SignedInfo xmlns=\"{DSIG}\"><CanonicalizationMethod Algorithm=\"{EXC_C14N}\"></CanonicalizationMethod>\
             <SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256\"></SignatureMethod>\
             <Reference URI=\"\"><Transforms><Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"></Transform>\
             <Transform Algorithm=\"{EXC_C14N}\"></Transform></Transforms>\
             <DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"></DigestMethod>\
             <DigestValue>{}</DigestValue></Reference></SignedInfo>",
            STANDARD.encode(digest.as_ref())
        );
        let signature = STANDARD.encode(self.sign(signed_info.as_bytes())?);
        // Inside Signature the namespace is inherited, so SignedInfo is written without it.
        let embedded = signed_info.replacen(&format!(" xmlns=\"{DSIG}\""), "", 1);
        let block = format!(
            "<Signature xmlns=\"{DSIG}\">{embedded}<SignatureValue>{signature}</SignatureValue></Signature>"
        );
        let Some(at) = canonical.rfind("</") else {
            return Ok(canonical.to_string());
        };
        Ok(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}{block}{}",
            &canonical[..at],
            &canonical[at..]
        ))
    }
}

const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
