//! The emergency-broadcast signatures: SM2 with SM3 (GB/T 32918.2), Z_A over the default user id
//! `1234567812345678`, as the Tass cipher devices and signing servers of the county platforms make
//! them; the 143-byte certificates those devices exchange; and this node's own SM2 key.
//!
//! What is signed is the exact EBDB file followed by the 4-byte counter C, and the signature travels
//! as `Base64(C[4] ‖ CertSN[6] ‖ r[32] ‖ s[32])` (see `tests/conformance/ebd/README.md`, §3).
//! A certificate is `0x10 ‖ issuer SN[6] ‖ SN[6] ‖ 2 bytes ‖ X[32] ‖ Y[32] ‖ r[32] ‖ s[32]`, the last 64
//! bytes being the issuer's signature over the first 79.

use std::path::Path;

use base64::Engine as _;
use sm2::dsa::signature::{Signer as _, Verifier as _};
use sm2::dsa::{Signature, SigningKey, VerifyingKey};
use sm2::elliptic_curve::sec1::{EncodedPoint, ToEncodedPoint};

/// The user id every observed implementation hashes into Z_A (GM/T 0009's default).
pub const DEFAULT_ID: &str = "1234567812345678";
/// Length of a certificate file.
pub const CERT_LEN: usize = 143;
/// Length of a decoded SignatureValue.
const SIGNATURE_VALUE_LEN: usize = 74;
/// The bytes a certificate's issuer signs.
const CERT_SIGNED_LEN: usize = 79;
/// Bytes 13–14 of the certificates seen; their meaning is unknown, so ours copy the common value.
const CERT_KIND: [u8; 2] = [0x45, 0x10];

#[derive(Debug, thiserror::Error)]
pub enum SmError {
    #[error("a certificate is {CERT_LEN} bytes, this one is {0}")]
    CertLength(usize),
    #[error("the certificate does not start with 0x10")]
    CertTag,
    #[error("the certificate's public key is not a point on the SM2 curve")]
    CertKey,
    #[error("the signature value is not base64 of {SIGNATURE_VALUE_LEN} bytes")]
    SignatureValue,
    #[error("the key file {path}: {message}")]
    KeyFile { path: String, message: String },
}

/// A 6-byte certificate serial number, shown as 12 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertSn(pub [u8; 6]);

impl std::fmt::Display for CertSn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A parsed 143-byte certificate.
#[derive(Clone)]
pub struct Cert {
    pub issuer: CertSn,
    pub sn: CertSn,
    key: VerifyingKey,
    raw: [u8; CERT_LEN],
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cert(sn {}, issuer {})", self.sn, self.issuer)
    }
}

fn six(bytes: &[u8]) -> [u8; 6] {
    let mut out = [0u8; 6];
    out.copy_from_slice(&bytes[..6]);
    out
}

fn verifying_key(xy: &[u8]) -> Option<VerifyingKey> {
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(0x04);
    sec1.extend_from_slice(xy);
    VerifyingKey::from_sec1_bytes(DEFAULT_ID, &sec1).ok()
}

impl Cert {
    pub fn parse(bytes: &[u8]) -> Result<Cert, SmError> {
        let raw: [u8; CERT_LEN] = bytes
            .try_into()
            .map_err(|_| SmError::CertLength(bytes.len()))?;
        if raw[0] != 0x10 {
            return Err(SmError::CertTag);
        }
        let key = verifying_key(&raw[15..79]).ok_or(SmError::CertKey)?;
        Ok(Cert {
            issuer: CertSn(six(&raw[1..7])),
            sn: CertSn(six(&raw[7..13])),
            key,
            raw,
        })
    }

    pub fn read(path: &Path) -> Result<Cert, SmError> {
        let bytes = std::fs::read(path).map_err(|e| SmError::KeyFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Cert::parse(&bytes)
    }

    /// Whether `issuer` signed this certificate (and is the issuer it names).
    pub fn issued_by(&self, issuer: &Cert) -> bool {
        self.issuer == issuer.sn
            && Signature::from_slice(&self.raw[CERT_SIGNED_LEN..]).is_ok_and(|sig| {
                issuer
                    .key
                    .verify(&self.raw[..CERT_SIGNED_LEN], &sig)
                    .is_ok()
            })
    }

    /// Whether `signature` is this certificate's key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.key.verify(message, signature).is_ok()
    }

    pub fn bytes(&self) -> &[u8; CERT_LEN] {
        &self.raw
    }
}

/// A decoded `SignatureValue`.
#[derive(Debug, Clone)]
pub struct SignatureValue {
    pub counter: u32,
    pub cert: CertSn,
    pub signature: Signature,
}

impl SignatureValue {
    pub fn parse(text: &str) -> Result<SignatureValue, SmError> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| SmError::SignatureValue)?;
        if bytes.len() != SIGNATURE_VALUE_LEN {
            return Err(SmError::SignatureValue);
        }
        let counter = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let signature = Signature::from_slice(&bytes[10..]).map_err(|_| SmError::SignatureValue)?;
        Ok(SignatureValue {
            counter,
            cert: CertSn(six(&bytes[4..10])),
            signature,
        })
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(SIGNATURE_VALUE_LEN);
        bytes.extend_from_slice(&self.counter.to_be_bytes());
        bytes.extend_from_slice(&self.cert.0);
        bytes.extend_from_slice(&self.signature.to_bytes());
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// The message a package signature covers: the EBDB bytes, then the counter.
pub fn signed_message(ebdb: &[u8], counter: u32) -> Vec<u8> {
    let mut message = Vec::with_capacity(ebdb.len() + 4);
    message.extend_from_slice(ebdb);
    message.extend_from_slice(&counter.to_be_bytes());
    message
}

/// Whether `value` is `cert`'s signature over `ebdb` (with the counter it carries).
pub fn verify_package(cert: &Cert, ebdb: &[u8], value: &SignatureValue) -> bool {
    value.cert == cert.sn && cert.verifies(&signed_message(ebdb, value.counter), &value.signature)
}

/// This node's SM2 key for the packages it sends, with the serial number it signs under (taken
/// from the public key, so it needs no registry and stays the same for the same key).
pub struct NodeSmKey {
    key: SigningKey,
    pub sn: CertSn,
}

impl NodeSmKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<NodeSmKey, SmError> {
        let rng = ring::rand::SystemRandom::new();
        // A random 32-byte string is a valid scalar with overwhelming probability; retry otherwise.
        for _ in 0..16 {
            let mut secret = [0u8; 32];
            ring::rand::SecureRandom::fill(&rng, &mut secret).map_err(|_| SmError::KeyFile {
                path: String::new(),
                message: "the system's random source failed".into(),
            })?;
            if let Ok(key) = SigningKey::from_slice(DEFAULT_ID, &secret) {
                return Ok(NodeSmKey::from_signing_key(key));
            }
        }
        Err(SmError::KeyFile {
            path: String::new(),
            message: "no valid key came from the random source".into(),
        })
    }

    fn from_signing_key(key: SigningKey) -> NodeSmKey {
        let point = key.verifying_key().to_encoded_point(false);
        let digest = sm3_digest(point.as_bytes());
        NodeSmKey {
            key,
            sn: CertSn(six(&digest)),
        }
    }

    /// Reads the key (the private scalar as 64 hex digits) from its file, or makes one there (mode
    /// 0600) when there is none.
    pub fn load_or_create(path: &Path) -> Result<(NodeSmKey, bool), SmError> {
        let fail = |message: String| SmError::KeyFile {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let secret =
                    hex::decode(text.trim()).map_err(|_| fail("not 64 hex digits".into()))?;
                let key = SigningKey::from_slice(DEFAULT_ID, &secret)
                    .map_err(|_| fail("not a valid SM2 private key".into()))?;
                Ok((NodeSmKey::from_signing_key(key), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = NodeSmKey::generate()?;
                let text = format!("{}\n", hex::encode(key.key.to_bytes()));
                crate::node::write_file_atomically(path, text.as_bytes(), 0o600)
                    .map_err(|e| fail(e.to_string()))?;
                Ok((key, true))
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// `Base64(C ‖ SN ‖ r ‖ s)` over `ebdb ‖ C`.
    pub fn sign_package(&self, ebdb: &[u8], counter: u32) -> String {
        let signature: Signature = self.key.sign(&signed_message(ebdb, counter));
        SignatureValue {
            counter,
            cert: self.sn,
            signature,
        }
        .encode()
    }

    /// The public key in the 143-byte layout, self-signed (issuer = itself), for the platform
    /// operator to register: its key field is what a platform's trust list needs.
    pub fn certificate(&self) -> [u8; CERT_LEN] {
        let mut raw = [0u8; CERT_LEN];
        raw[0] = 0x10;
        raw[1..7].copy_from_slice(&self.sn.0);
        raw[7..13].copy_from_slice(&self.sn.0);
        raw[13..15].copy_from_slice(&CERT_KIND);
        let point: EncodedPoint<sm2::Sm2> = self.key.verifying_key().to_encoded_point(false);
        raw[15..79].copy_from_slice(&point.as_bytes()[1..65]);
        let signature: Signature = self.key.sign(&raw[..CERT_SIGNED_LEN]);
        raw[CERT_SIGNED_LEN..].copy_from_slice(&signature.to_bytes());
        raw
    }

    /// The public key as a PEM SubjectPublicKeyInfo (id-ecPublicKey on the SM2 curve,
    /// 1.2.156.10197.1.301), as `openssl pkey -pubin` reads it.
    pub fn public_pem(&self) -> String {
        // SEQUENCE { SEQUENCE { OID 1.2.840.10045.2.1, OID 1.2.156.10197.1.301 }, BIT STRING 04‖X‖Y }
        const PREFIX: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06,
            0x08, 0x2A, 0x81, 0x1C, 0xCF, 0x55, 0x01, 0x82, 0x2D, 0x03, 0x42, 0x00,
        ];
        let point = self.key.verifying_key().to_encoded_point(false);
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(point.as_bytes());
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// The public key's X ‖ Y, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(&self.certificate()[15..79])
    }
}

pub fn sm3_digest(bytes: &[u8]) -> [u8; 32] {
    use sm3::Digest as _;
    sm3::Sm3::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/ebd");
        std::fs::read(dir.join(name)).expect("shared EBD sample")
    }

    fn signature_of(ebds: &[u8]) -> SignatureValue {
        let text = String::from_utf8_lossy(ebds);
        let start = text.find("<SignatureValue>").expect("value") + "<SignatureValue>".len();
        let end = text.find("</SignatureValue>").expect("end");
        SignatureValue::parse(&text[start..end]).expect("signature value")
    }

    #[test]
    fn the_jiangsu_package_verifies_against_its_certificate_and_that_against_the_ca() {
        let platform =
            Cert::parse(&sample("05_cert_JS_platform_SN00000000090d.cert")).expect("cert");
        let ca = Cert::parse(&sample("06_cert_device_CA_SN000000000001.cert")).expect("ca");
        assert_eq!(platform.sn.to_string(), "00000000090d");
        assert!(platform.issued_by(&ca));
        assert!(!ca.issued_by(&platform));
        let ebdb = sample("01_EBM_play_2017JS_EBDB_100102320000000000010000000000097264.xml");
        let value = signature_of(&sample(
            "02_EBM_play_2017JS_EBDS_EBDB_100102320000000000010000000000097264.xml",
        ));
        assert_eq!(value.counter, 0x0009_408c);
        assert!(verify_package(&platform, &ebdb, &value));
        // The message alone, and the counter in front, do not verify: the order matters.
        assert!(!platform.verifies(&ebdb, &value.signature));
        let mut front = value.counter.to_be_bytes().to_vec();
        front.extend_from_slice(&ebdb);
        assert!(!platform.verifies(&front, &value.signature));
    }

    #[test]
    fn a_changed_byte_of_the_package_counter_or_signature_fails() {
        let platform =
            Cert::parse(&sample("05_cert_JS_platform_SN00000000090d.cert")).expect("cert");
        let ebdb = sample("01_EBM_play_2017JS_EBDB_100102320000000000010000000000097264.xml");
        let value = signature_of(&sample(
            "02_EBM_play_2017JS_EBDS_EBDB_100102320000000000010000000000097264.xml",
        ));
        let mut changed = ebdb.clone();
        changed[500] ^= 0x01;
        assert!(!verify_package(&platform, &changed, &value));
        let mut counter = value.clone();
        counter.counter += 1;
        assert!(!verify_package(&platform, &ebdb, &counter));
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(value.encode())
            .expect("b64");
        for at in [10usize, 41, 42, 73] {
            let mut flipped = raw.clone();
            flipped[at] ^= 0x80;
            let text = base64::engine::general_purpose::STANDARD.encode(&flipped);
            if let Ok(v) = SignatureValue::parse(&text) {
                assert!(!verify_package(&platform, &ebdb, &v), "byte {at}");
            }
        }
        raw[4] ^= 1;
        let other_cert =
            SignatureValue::parse(&base64::engine::general_purpose::STANDARD.encode(&raw))
                .expect("value");
        assert!(!verify_package(&platform, &ebdb, &other_cert));
    }

    #[test]
    fn the_node_key_signs_what_its_certificate_verifies_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ebd").join("sm2.key");
        let (key, made) = NodeSmKey::load_or_create(&path).expect("key");
        assert!(made);
        let (again, made) = NodeSmKey::load_or_create(&path).expect("key");
        assert!(!made);
        assert_eq!(key.public_hex(), again.public_hex());
        let cert = Cert::parse(&key.certificate()).expect("cert");
        assert!(cert.issued_by(&cert), "self-signed");
        let value = SignatureValue::parse(&key.sign_package(b"<EBD/>", 7)).expect("value");
        assert_eq!(value.counter, 7);
        assert!(verify_package(&cert, b"<EBD/>", &value));
        assert!(!verify_package(&cert, b"<EBD/ >", &value));
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        // OpenSSL reads the PEM as an SM2 key with the same point, where it is installed.
        let pem_path = dir.path().join("pub.pem");
        std::fs::write(&pem_path, key.public_pem()).expect("pem");
        if let Ok(out) = std::process::Command::new("openssl")
            .args(["pkey", "-pubin", "-noout", "-text", "-in"])
            .arg(&pem_path)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout).replace([' ', '\n', ':'], "");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("SM2"), "{text}");
            assert!(text.contains(&format!("04{}", key.public_hex())), "{text}");
        }
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn garbage_certificates_and_signature_values_are_refused_without_panicking() {
        assert!(Cert::parse(&[0u8; 10]).is_err());
        assert!(Cert::parse(&[0x10u8; CERT_LEN]).is_err());
        assert!(SignatureValue::parse("not base64!").is_err());
        assert!(SignatureValue::parse("AAAA").is_err());
        let zeros = base64::engine::general_purpose::STANDARD.encode([0u8; 74]);
        assert!(
            SignatureValue::parse(&zeros).is_err(),
            "r = s = 0 is no signature"
        );
    }
}
