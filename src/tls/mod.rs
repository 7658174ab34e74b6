//! HTTPS on the LAN: the node's own CA and server certificate ([`certs`]), the TLS listener
//! ([`serve`]), and the public pages that let a phone trust the CA: `GET /ca.crt` (the certificate,
//! DER, as Android and iOS install it), `GET /ca` (its fingerprint, a QR code of the HTTPS address
//! and short instructions) and `GET /ca/qr.svg`.
//!
//! These pages are served on the plain listener too (that is how a phone gets the CA before it can
//! use HTTPS), and they show only public things: a CA certificate is meant to be handed out.

pub mod certs;
pub mod routes;
pub mod serve;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, RwLock};

pub use certs::{LanCerts, Reason, Renew, TlsError};
pub use routes::routes;
pub use serve::{CertSlot, OverTls};

/// The running node's TLS state: the certificates, the slot the listener reads, and the port the
/// HTTPS listener really got (for redirects and the QR code; 0 until it listens).
#[derive(Debug)]
pub struct LanTls {
    data_dir: PathBuf,
    node_name: String,
    configured: Vec<String>,
    certs: RwLock<LanCerts>,
    pub slot: Arc<CertSlot>,
    port: AtomicU16,
}

impl LanTls {
    /// Loads or makes the certificates for this node's names and addresses.
    pub fn open(
        data_dir: PathBuf,
        node_name: &str,
        configured: &[String],
        now_ms: i64,
    ) -> Result<(LanTls, Option<Reason>), TlsError> {
        let wanted = certs::wanted_names(configured);
        let (lan, reason) = certs::ensure(
            &data_dir,
            node_name,
            configured,
            &wanted,
            now_ms,
            Renew::IfNeeded,
            true,
        )?;
        // An interface address outside the private ranges (a public or documentation address) is
        // simply not carried; a configured name left out is something the operator must fix.
        let configured_lower: Vec<String> = configured
            .iter()
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        let (named, found): (Vec<&String>, Vec<&String>) = lan
            .uncovered
            .iter()
            .partition(|n| configured_lower.contains(n));
        if !named.is_empty() {
            tracing::warn!(names = ?named, "these configured names are outside what the node's CA may vouch for and are not in its certificate; `township-node tls renew --new-ca` makes a CA that covers them (phones must trust it again)");
        }
        if !found.is_empty() {
            tracing::debug!(addresses = ?found, "addresses outside the private ranges are not in the LAN certificate");
        }
        let slot = Arc::new(CertSlot::new(&lan)?);
        Ok((
            LanTls {
                data_dir,
                node_name: node_name.to_string(),
                configured: configured.to_vec(),
                certs: RwLock::new(lan),
                slot,
                port: AtomicU16::new(0),
            },
            reason,
        ))
    }

    pub fn certs(&self) -> LanCerts {
        match self.certs.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reissues what needs it (or what `renew` asks for) and puts the new certificate in service.
    pub fn renew(&self, renew: Renew, now_ms: i64) -> Result<Option<Reason>, TlsError> {
        let wanted = certs::wanted_names(&self.configured);
        let (lan, reason) = certs::ensure(
            &self.data_dir,
            &self.node_name,
            &self.configured,
            &wanted,
            now_ms,
            renew,
            true,
        )?;
        if reason.is_some() {
            self.slot.replace(&lan)?;
        }
        match self.certs.write() {
            Ok(mut c) => *c = lan,
            Err(p) => *p.into_inner() = lan,
        }
        Ok(reason)
    }

    pub fn port(&self) -> Option<u16> {
        match self.port.load(Ordering::Relaxed) {
            0 => None,
            p => Some(p),
        }
    }

    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }
}

/// `tls show`: what an operator needs to see.
pub fn describe(certs: &LanCerts, https_listen: Option<std::net::SocketAddr>) -> String {
    let mut out = String::new();
    out.push_str(&format!("CA:            {}\n", certs.issued.ca_common_name));
    out.push_str(&format!("CA SHA-256:    {}\n", certs.ca_fingerprint()));
    out.push_str(&format!(
        "CA valid to:   {}\n",
        crate::clock::rfc3339_china(certs.issued.ca_not_after_ms)
    ));
    out.push_str(&format!(
        "certificate:   issued {}, valid to {}\n",
        crate::clock::rfc3339_china(certs.issued.server_issued_ms),
        crate::clock::rfc3339_china(certs.issued.server_not_after_ms)
    ));
    out.push_str(&format!(
        "names:         {}\n",
        certs.issued.server_names.join(", ")
    ));
    out.push_str(&format!(
        "CA may vouch for: {} and {}\n",
        certs.issued.ca_permitted_dns.join(", "),
        certs.issued.ca_permitted_ip.join(", ")
    ));
    out.push_str(&format!("files:         {}\n", certs.dir.display()));
    match https_listen {
        Some(addr) => out.push_str(&format!("https_listen:  {addr}\n")),
        None => out.push_str("https_listen:  off\n"),
    }
    out
}
