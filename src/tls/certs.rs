//! The node's own certificate authority and LAN server certificate, kept in `<data dir>/tls/`.
//!
//! Phones reach a village hub by its LAN address, for which no public CA issues certificates, and
//! without a secure context the browser turns off geolocation, the camera and service workers. So the
//! node makes a small CA once (ten years, name-constrained to LAN names and private addresses, so a
//! phone that trusts it trusts it for nothing on the internet) and issues itself a server certificate
//! for its names and addresses. The server certificate is reissued, under the same CA, when it nears
//! expiry or when the node finds an address or name it does not cover; phones trust the CA once.
//!
//! Files: `ca.key.pem` and `server.key.pem` (PKCS#8, 0600), `ca.crt.pem`, `server.crt.pem`, and
//! `tls.json` (what was issued: the CA's name and constraints, the server certificate's names and
//! validity), so nothing has to parse X.509 to decide whether to renew.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType,
};
use serde::{Deserialize, Serialize};

pub const TLS_DIR: &str = "tls";
const CA_KEY: &str = "ca.key.pem";
const CA_CERT: &str = "ca.crt.pem";
const SERVER_KEY: &str = "server.key.pem";
const SERVER_CERT: &str = "server.crt.pem";
const STATE: &str = "tls.json";

const DAY_MS: i64 = 24 * 3600 * 1000;
const CA_VALIDITY_DAYS: i64 = 3650;
/// Under the 398 days browsers allow public certificates, so no browser policy can object.
const SERVER_VALIDITY_DAYS: i64 = 397;
/// The server certificate is reissued this long before it expires.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// Clocks on village hubs and phones drift; a certificate valid from an hour ago still works on a
/// phone a little behind.
const BACKDATE_MS: i64 = 3600 * 1000;

/// Private and local address ranges the CA may vouch for (RFC 1918, CGNAT, loopback, link-local,
/// IPv6 unique-local and link-local).
const PRIVATE_RANGES: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];
/// DNS suffixes the CA may vouch for besides the names configured when it was made.
const LOCAL_SUFFIXES: &[&str] = &["localhost", "local", "lan", "home.arpa", "internal"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({why}); move the tls directory away and restart to make a new CA (phones must then trust the new one)"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the TLS configuration was refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What was issued, as kept in `tls.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Issued {
    pub ca_common_name: String,
    pub ca_not_after_ms: i64,
    /// The DNS suffixes and address ranges the CA is constrained to.
    pub ca_permitted_dns: Vec<String>,
    pub ca_permitted_ip: Vec<String>,
    pub server_names: Vec<String>,
    pub server_issued_ms: i64,
    pub server_not_after_ms: i64,
    /// Whether a serving node has presented this CA's certificates yet. Until then no phone can
    /// have trusted it, so a CA made at `init` that does not cover the names configured afterwards
    /// is simply made again at the first start.
    #[serde(default)]
    pub ca_served: bool,
}

/// Why the server certificate was (re)issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// There was no CA yet: a new CA and certificate were made.
    NewCa,
    /// There was no server certificate.
    Missing,
    /// The certificate expires within [`RENEW_BEFORE_DAYS`].
    Expiring,
    /// The node has a name or address the certificate does not carry.
    NamesChanged,
    /// An operator asked (`township-node tls renew`).
    Requested,
}

/// The node's CA and server certificate as loaded.
#[derive(Debug, Clone)]
pub struct LanCerts {
    pub dir: PathBuf,
    pub issued: Issued,
    pub ca_der: Vec<u8>,
    pub ca_pem: String,
    pub server_der: Vec<u8>,
    server_key_der: Vec<u8>,
    /// Names the node wanted but the CA's constraints cannot cover (a public address, a name under
    /// no permitted suffix): left out of the certificate, reported by `doctor` and at start.
    pub uncovered: Vec<String>,
}

impl LanCerts {
    /// SHA-256 of the CA certificate as colon-separated upper-case hex, the form phones show.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// The rustls key for the server certificate.
    pub fn certified_key(&self) -> Result<rustls::sign::CertifiedKey, TlsError> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(self.server_key_der.clone()),
        );
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
        // The CA goes along so a client that has it installed can build the chain either way.
        let chain = vec![
            rustls::pki_types::CertificateDer::from(self.server_der.clone()),
            rustls::pki_types::CertificateDer::from(self.ca_der.clone()),
        ];
        Ok(rustls::sign::CertifiedKey::new(chain, signing))
    }
}

pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The names a server certificate should carry: the configured ones, `localhost`, the host name
/// (and `<name>.local`), loopback, and every address of this machine's interfaces.
pub fn wanted_names(configured: &[String]) -> Vec<String> {
    let mut names: BTreeSet<String> = configured
        .iter()
        .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.insert("localhost".into());
    names.insert("127.0.0.1".into());
    names.insert("::1".into());
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .to_ascii_lowercase();
    if !host.is_empty() && host.parse::<IpAddr>().is_err() {
        names.insert(format!("{host}.local"));
        names.insert(host);
    }
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        for interface in interfaces {
            names.insert(interface.ip().to_string());
        }
    }
    names.into_iter().collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves half a
/// key; `secret` files are 0600 from their first byte.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    crate::node::write_file_atomically(path, bytes, if secret { 0o600 } else { 0o644 })
        .map_err(io(path))
}

fn read_text(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

fn pem_der(path: &Path, text: &str) -> Result<Vec<u8>, TlsError> {
    let corrupt = |why: &str| TlsError::Corrupt {
        path: path.to_path_buf(),
        why: why.into(),
    };
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| corrupt("not PEM"))
}

fn time_of(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(issued: &Issued, now_ms: i64) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, issued.ca_common_name.as_str());
    dn.push(DnType::OrganizationName, "township-node");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time_of(now_ms - BACKDATE_MS);
    params.not_after = time_of(issued.ca_not_after_ms);
    let mut permitted = Vec::new();
    for suffix in &issued.ca_permitted_dns {
        permitted.push(GeneralSubtree::DnsName(suffix.clone()));
    }
    for range in &issued.ca_permitted_ip {
        let subnet = range
            .parse::<CidrSubnet>()
            .map_err(|()| TlsError::Corrupt {
                path: PathBuf::from(STATE),
                why: format!("address range {range}"),
            })?;
        permitted.push(GeneralSubtree::IpAddress(subnet));
    }
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    Ok(params)
}

/// Whether the CA's constraints admit `name` (a DNS name or an address).
pub fn permitted(issued: &Issued, name: &str) -> bool {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return issued.ca_permitted_ip.iter().any(|r| in_range(r, ip));
    }
    issued
        .ca_permitted_dns
        .iter()
        .any(|s| name == s || name.ends_with(&format!(".{s}")))
}

fn in_range(range: &str, ip: IpAddr) -> bool {
    let Some((addr, prefix)) = range.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(prefix)) = (addr.parse::<IpAddr>(), prefix.parse::<u32>()) else {
        return false;
    };
    match (addr, ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - prefix.min(32)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - prefix.min(128)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn new_ca(node_name: &str, configured: &[String], now_ms: i64) -> Issued {
    let mut dns: BTreeSet<String> = LOCAL_SUFFIXES.iter().map(|s| s.to_string()).collect();
    for name in configured {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if !name.is_empty() && name.parse::<IpAddr>().is_err() {
            dns.insert(name);
        }
    }
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .to_ascii_lowercase();
    if !host.is_empty() && host.parse::<IpAddr>().is_err() {
        dns.insert(host);
    }
    let mut ip: Vec<String> = PRIVATE_RANGES.iter().map(|s| s.to_string()).collect();
    // An address configured explicitly (a county centre's public address) is admitted by name.
    for name in configured {
        if let Ok(addr) = name.trim().parse::<IpAddr>() {
            let host_range = match addr {
                IpAddr::V4(_) => format!("{addr}/32"),
                IpAddr::V6(_) => format!("{addr}/128"),
            };
            if !ip.contains(&host_range) {
                ip.push(host_range);
            }
        }
    }
    let unique = &hex::encode(uuid::Uuid::new_v4().as_bytes())[..8];
    let short_name: String = node_name.chars().take(32).collect();
    Issued {
        ca_common_name: format!("township-node LAN CA {short_name} {unique}"),
        ca_not_after_ms: now_ms + CA_VALIDITY_DAYS * DAY_MS,
        ca_permitted_dns: dns.into_iter().collect(),
        ca_permitted_ip: ip,
        server_names: Vec::new(),
        server_issued_ms: 0,
        server_not_after_ms: 0,
        ca_served: false,
    }
}

/// What [`ensure`] should do beyond keeping a valid certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renew {
    /// Only when missing, expiring or short of a name.
    IfNeeded,
    /// Reissue the server certificate under the same CA.
    Server,
    /// Make a new CA too (every phone must trust it again).
    NewCa,
}

/// Loads the CA and server certificate from `data_dir/tls`, making or reissuing what is missing,
/// expiring or short of a wanted name. `serving` is set by a node about to present them (see
/// [`Issued::ca_served`]). Returns the certificates and, when something was issued, why.
pub fn ensure(
    data_dir: &Path,
    node_name: &str,
    configured: &[String],
    wanted: &[String],
    now_ms: i64,
    renew: Renew,
    serving: bool,
) -> Result<(LanCerts, Option<Reason>), TlsError> {
    let dir = data_dir.join(TLS_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let state_path = dir.join(STATE);
    let ca_key_path = dir.join(CA_KEY);
    let ca_cert_path = dir.join(CA_CERT);

    let existing = match (
        read_text(&state_path)?,
        read_text(&ca_key_path)?,
        read_text(&ca_cert_path)?,
    ) {
        (Some(state), Some(key), Some(cert)) if renew != Renew::NewCa => {
            let issued: Issued = serde_json::from_str(&state).map_err(|e| TlsError::Corrupt {
                path: state_path.clone(),
                why: e.to_string(),
            })?;
            let key = KeyPair::from_pem(&key).map_err(|e| TlsError::Corrupt {
                path: ca_key_path.clone(),
                why: e.to_string(),
            })?;
            // A CA no phone can have trusted yet is made again when it does not cover a
            // configured name.
            let unserved_and_short = !issued.ca_served
                && configured.iter().any(|n| {
                    let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
                    !n.is_empty() && !permitted(&issued, &n)
                });
            (!unserved_and_short).then_some((issued, key, cert))
        }
        _ => None,
    };
    let mut reason = None;
    let (mut issued, ca_key, ca_pem) = match existing {
        Some(found) => found,
        None => {
            let issued = new_ca(node_name, configured, now_ms);
            let key = KeyPair::generate()?;
            let cert = ca_params(&issued, now_ms)?.self_signed(&key)?;
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), true)?;
            write_file(&ca_cert_path, cert.pem().as_bytes(), false)?;
            reason = Some(Reason::NewCa);
            (issued, key, cert.pem())
        }
    };
    let ca_der = pem_der(&ca_cert_path, &ca_pem)?;

    let (covered, uncovered): (Vec<String>, Vec<String>) =
        wanted.iter().cloned().partition(|n| permitted(&issued, n));
    let server_key_path = dir.join(SERVER_KEY);
    let server_cert_path = dir.join(SERVER_CERT);
    let server_files = (read_text(&server_key_path)?, read_text(&server_cert_path)?);
    let have: BTreeSet<&String> = issued.server_names.iter().collect();
    let need = match (&server_files, reason) {
        (_, Some(r)) => Some(r),
        ((None, _) | (_, None), None) => Some(Reason::Missing),
        _ if renew == Renew::Server => Some(Reason::Requested),
        _ if issued.server_not_after_ms - now_ms < RENEW_BEFORE_DAYS * DAY_MS => {
            Some(Reason::Expiring)
        }
        _ if covered.iter().any(|n| !have.contains(n)) => Some(Reason::NamesChanged),
        _ => None,
    };
    let (server_key_der, server_der) = match (need, server_files) {
        (None, (Some(key), Some(cert))) => {
            let key = KeyPair::from_pem(&key).map_err(|e| TlsError::Corrupt {
                path: server_key_path.clone(),
                why: e.to_string(),
            })?;
            (key.serialize_der(), pem_der(&server_cert_path, &cert)?)
        }
        _ => {
            // Names the old certificate had stay, so a phone using an address that has just gone
            // away for a moment (a Wi-Fi restart) does not lose the hub.
            let mut names: BTreeSet<String> = covered.iter().cloned().collect();
            if need != Some(Reason::NewCa) {
                names.extend(
                    issued
                        .server_names
                        .iter()
                        .filter(|n| permitted(&issued, n))
                        .cloned(),
                );
            }
            let names: Vec<String> = names.into_iter().collect();
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.subject_alt_names = names
                .iter()
                .map(|n| match n.parse::<IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
                })
                .collect::<Result<Vec<_>, rcgen::Error>>()?;
            let mut dn = DistinguishedName::new();
            dn.push(
                DnType::CommonName,
                names
                    .iter()
                    .find(|n| n.parse::<IpAddr>().is_err())
                    .map_or("township-node", String::as_str),
            );
            params.distinguished_name = dn;
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.use_authority_key_identifier_extension = true;
            params.not_before = time_of(now_ms - BACKDATE_MS);
            let not_after = (now_ms + SERVER_VALIDITY_DAYS * DAY_MS).min(issued.ca_not_after_ms);
            params.not_after = time_of(not_after);
            let issuer = Issuer::new(ca_params(&issued, now_ms)?, &ca_key);
            let cert = params.signed_by(&key, &issuer)?;
            write_file(&server_key_path, key.serialize_pem().as_bytes(), true)?;
            write_file(&server_cert_path, cert.pem().as_bytes(), false)?;
            issued.server_names = names;
            issued.server_issued_ms = now_ms;
            issued.server_not_after_ms = not_after;
            let state = serde_json::to_vec_pretty(&issued).map_err(|e| TlsError::Corrupt {
                path: state_path.clone(),
                why: e.to_string(),
            })?;
            write_file(&state_path, &state, false)?;
            reason = need;
            (key.serialize_der(), cert.der().to_vec())
        }
    };
    if serving && !issued.ca_served {
        issued.ca_served = true;
        let state = serde_json::to_vec_pretty(&issued).map_err(|e| TlsError::Corrupt {
            path: state_path.clone(),
            why: e.to_string(),
        })?;
        write_file(&state_path, &state, false)?;
    }
    Ok((
        LanCerts {
            dir,
            issued,
            ca_der,
            ca_pem,
            server_der,
            server_key_der,
            uncovered,
        },
        reason,
    ))
}

/// Loads what is there without making anything (for `doctor` and `tls show` on a stopped node).
pub fn load(data_dir: &Path) -> Result<Option<LanCerts>, TlsError> {
    let dir = data_dir.join(TLS_DIR);
    let state_path = dir.join(STATE);
    let (Some(state), Some(ca_pem), Some(server_pem), Some(server_key)) = (
        read_text(&state_path)?,
        read_text(&dir.join(CA_CERT))?,
        read_text(&dir.join(SERVER_CERT))?,
        read_text(&dir.join(SERVER_KEY))?,
    ) else {
        return Ok(None);
    };
    let issued: Issued = serde_json::from_str(&state).map_err(|e| TlsError::Corrupt {
        path: state_path.clone(),
        why: e.to_string(),
    })?;
    let key = KeyPair::from_pem(&server_key).map_err(|e| TlsError::Corrupt {
        path: dir.join(SERVER_KEY),
        why: e.to_string(),
    })?;
    Ok(Some(LanCerts {
        ca_der: pem_der(&dir.join(CA_CERT), &ca_pem)?,
        server_der: pem_der(&dir.join(SERVER_CERT), &server_pem)?,
        server_key_der: key.serialize_der(),
        dir,
        issued,
        ca_pem,
        uncovered: Vec::new(),
    }))
}

/// The key files and their modes, for `doctor`.
pub fn key_files(data_dir: &Path) -> [PathBuf; 2] {
    let dir = data_dir.join(TLS_DIR);
    [dir.join(CA_KEY), dir.join(SERVER_KEY)]
}

/// Checks the server certificate the way a client that trusts only the CA would, for `name`.
pub fn verify_for(certs: &LanCerts, name: &str, now_ms: i64) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            certs.ca_der.clone(),
        ))
        .map_err(|e| e.to_string())?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let server_name =
        rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let now = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_millis(
        now_ms.max(0) as u64,
    ));
    verifier
        .verify_server_cert(
            &rustls::pki_types::CertificateDer::from(certs.server_der.clone()),
            &[],
            &server_name,
            &[],
            now,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn wanted() -> Vec<String> {
        vec![
            "hub.test".into(),
            "localhost".into(),
            "192.168.1.20".into(),
            "127.0.0.1".into(),
        ]
    }

    #[test]
    fn a_new_node_gets_a_ca_and_a_certificate_a_client_trusting_the_ca_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let configured = vec!["hub.test".to_string()];
        let (certs, reason) = ensure(
            dir.path(),
            "王宅村",
            &configured,
            &wanted(),
            NOW,
            Renew::IfNeeded,
            true,
        )
        .unwrap();
        assert_eq!(reason, Some(Reason::NewCa));
        for name in ["hub.test", "localhost", "192.168.1.20", "127.0.0.1"] {
            verify_for(&certs, name, NOW).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify_for(&certs, "example.com", NOW).is_err());
        for key in key_files(dir.path()) {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        // A second start changes nothing.
        let (again, reason) = ensure(
            dir.path(),
            "王宅村",
            &configured,
            &wanted(),
            NOW,
            Renew::IfNeeded,
            true,
        )
        .unwrap();
        assert_eq!(reason, None);
        assert_eq!(again.server_der, certs.server_der);
    }

    #[test]
    fn renewal_keeps_the_ca_and_happens_before_expiry_or_when_an_address_appears() {
        let dir = tempfile::tempdir().unwrap();
        let configured = vec!["hub.test".to_string()];
        let (first, _) = ensure(
            dir.path(),
            "x",
            &configured,
            &wanted(),
            NOW,
            Renew::IfNeeded,
            true,
        )
        .unwrap();
        // A new DHCP address on the LAN.
        let mut more = wanted();
        more.push("10.1.2.3".into());
        let (second, reason) = ensure(
            dir.path(),
            "x",
            &configured,
            &more,
            NOW,
            Renew::IfNeeded,
            true,
        )
        .unwrap();
        assert_eq!(reason, Some(Reason::NamesChanged));
        assert_eq!(second.ca_der, first.ca_der);
        verify_for(&second, "10.1.2.3", NOW).unwrap();
        // The old address is still carried.
        verify_for(&second, "192.168.1.20", NOW).unwrap();
        // 370 days later the certificate is within 30 days of its end: reissued, same CA.
        let later = NOW + 370 * DAY_MS;
        let (third, reason) = ensure(
            dir.path(),
            "x",
            &configured,
            &more,
            later,
            Renew::IfNeeded,
            true,
        )
        .unwrap();
        assert_eq!(reason, Some(Reason::Expiring));
        assert_eq!(third.ca_der, first.ca_der);
        verify_for(&third, "hub.test", later + 300 * DAY_MS).unwrap();
        assert!(verify_for(&second, "hub.test", later + 300 * DAY_MS).is_err());
        // An operator's renew, and a new CA on request.
        let (_, reason) = ensure(
            dir.path(),
            "x",
            &configured,
            &more,
            later,
            Renew::Server,
            true,
        )
        .unwrap();
        assert_eq!(reason, Some(Reason::Requested));
        let (fresh, reason) = ensure(
            dir.path(),
            "x",
            &configured,
            &more,
            later,
            Renew::NewCa,
            true,
        )
        .unwrap();
        assert_eq!(reason, Some(Reason::NewCa));
        assert_ne!(fresh.ca_der, first.ca_der);
    }

    #[test]
    fn the_ca_cannot_vouch_for_public_names_or_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let mut names = wanted();
        names.push("8.8.8.8".into());
        names.push("bank.example.com".into());
        let (certs, _) = ensure(dir.path(), "x", &[], &names, NOW, Renew::IfNeeded, true).unwrap();
        assert!(certs.uncovered.contains(&"8.8.8.8".to_string()));
        assert!(certs.uncovered.contains(&"bank.example.com".to_string()));
        assert!(!certs.issued.server_names.contains(&"8.8.8.8".to_string()));
        // A configured name was admitted when the CA was made; a configured public address too.
        let dir = tempfile::tempdir().unwrap();
        let configured = vec!["county.example.cn".to_string(), "203.0.113.7".to_string()];
        let mut names = wanted();
        names.extend(configured.clone());
        let (certs, _) = ensure(
            dir.path(),
            "x",
            &configured,
            &names,
            NOW,
            Renew::IfNeeded,
            true,
        )
        .unwrap();
        verify_for(&certs, "county.example.cn", NOW).unwrap();
        verify_for(&certs, "203.0.113.7", NOW).unwrap();
    }

    #[test]
    fn a_ca_no_phone_has_seen_is_remade_for_names_configured_after_init_but_a_served_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        // init: no names configured yet.
        let (at_init, _) =
            ensure(dir.path(), "x", &[], &wanted(), NOW, Renew::IfNeeded, false).unwrap();
        assert!(!at_init.issued.ca_served);
        // First start with a name: the unserved CA is made again to cover it.
        let configured = vec!["hub.township.example.cn".to_string()];
        let mut names = wanted();
        names.extend(configured.clone());
        let (first, reason) = ensure(
            dir.path(),
            "x",
            &configured,
            &names,
            NOW,
            Renew::IfNeeded,
            true,
        )
        .unwrap();
        assert_eq!(reason, Some(Reason::NewCa));
        assert_ne!(first.ca_der, at_init.ca_der);
        assert!(first.issued.ca_served);
        verify_for(&first, "hub.township.example.cn", NOW).unwrap();
        // Once served, a new name does not silently replace the CA phones trust.
        let configured = vec![
            "hub.township.example.cn".to_string(),
            "other.example.org".to_string(),
        ];
        let mut names = wanted();
        names.extend(configured.clone());
        let (later, _) = ensure(
            dir.path(),
            "x",
            &configured,
            &names,
            NOW,
            Renew::IfNeeded,
            true,
        )
        .unwrap();
        assert_eq!(later.ca_der, first.ca_der);
        assert!(later.uncovered.contains(&"other.example.org".to_string()));
    }

    #[test]
    fn damaged_files_are_named_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), "x", &[], &wanted(), NOW, Renew::IfNeeded, true).unwrap();
        std::fs::write(dir.path().join(TLS_DIR).join(CA_KEY), "garbage").unwrap();
        let err = ensure(dir.path(), "x", &[], &wanted(), NOW, Renew::IfNeeded, true).unwrap_err();
        assert!(err.to_string().contains("ca.key.pem"), "{err}");
    }

    #[test]
    fn fingerprints_look_like_what_phones_show() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF"));
    }
}
