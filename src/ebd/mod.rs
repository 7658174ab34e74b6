//! The emergency-broadcast platform link (应急广播 EBD/EBM, GD/J 079–083-2018): this node as an
//! adaptor (适配器) under the county's emergency-broadcast platform. It receives the platform's
//! signed orders, plays them on its zones, and reports what happened.
//!
//! - [`sm`]: SM2/SM3 signatures, the 143-byte certificates, this node's own SM2 key.
//! - [`tar`]: the bounded ustar reader and the writer.
//! - [`package`]: EBDB/EBDS files as data (parse and write), ResultCodes.
//! - [`receive`]: a received package from bytes to its receipt: verify, refuse replays, act.
//! - [`orders`]: platform orders as broadcasts, their state as BrdStateCode, the reports' bodies.
//! - [`report`]: what this node posts to the platform (heartbeats, state reports, answers), each
//!   signed and each receipt checked.
//! - `routes.rs`: the receive endpoint (`[ebd] receive_path`).
//!
//! Authority rule: a platform order counts only when its EBDS verifies, over the exact EBDB bytes
//! and the counter, against a certificate in `[ebd] trusted_certs` that a certificate in
//! `[ebd] ca_certs` issued; it is then authorised by that signature alone (no second person), and
//! only on zones inside this node's area. It becomes a broadcast requested by this node's system
//! and signed by this node, so nodes below play it as they play any order of their upstream, and
//! a node below can never pass a platform order off as its own: the signature it would need is
//! this node's. Replays (an EBDID seen before, or a counter not above the last one from the same
//! certificate) are refused and audited.

pub mod orders;
pub mod package;
pub mod receive;
pub mod report;
mod routes;
pub mod sm;
pub mod tar;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use routes::routes;

use crate::blobs::BlobStore;
use crate::pa::outputs::Outputs;
use crate::records::WriteCtx;
use crate::store::{Store, StoreError};
use sm::{Cert, CertSn, NodeSmKey};

/// Largest package accepted: a 15-minute MP3 at 128 kbit/s is 14 MB.
pub const MAX_PACKAGE_BYTES: usize = 32 * 1024 * 1024;
/// The node's SM2 key, under the data directory.
pub const KEY_FILE: &str = "ebd/sm2.key";
/// Its public key in the 143-byte layout and as PEM, for the platform operator.
pub const CERT_FILE: &str = "ebd/node.cert";
pub const PEM_FILE: &str = "ebd/node.pub.pem";

/// `[ebd]`: the link to the county's emergency-broadcast platform. Off unless `ebrid` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EbdConfig {
    /// This node's resource id, 23 digits (2018 form).
    pub ebrid: Option<String>,
    /// Where the platform posts its packages.
    pub receive_path: String,
    /// Where heartbeats, state reports and logs go (`http://` only).
    pub platform_url: Option<String>,
    /// How often a ConnectionCheck goes to `platform_url`.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// CA certificates (143-byte files); every trusted certificate must be issued by one of them.
    pub ca_certs: Vec<PathBuf>,
    /// The platforms' certificates whose signatures this node accepts.
    pub trusted_certs: Vec<PathBuf>,
}

impl Default for EbdConfig {
    fn default() -> Self {
        EbdConfig {
            ebrid: None,
            receive_path: "/ebd/receive".into(),
            platform_url: None,
            heartbeat: Duration::from_secs(30),
            ca_certs: Vec::new(),
            trusted_certs: Vec::new(),
        }
    }
}

impl EbdConfig {
    /// Rules the types cannot express: (key, why).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(ebrid) = &self.ebrid
            && (ebrid.len() != 23 || !ebrid.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err((
                "ebd.ebrid",
                "must be the 23-digit resource id (2018 form), e.g. 43307230000000314010201".into(),
            ));
        }
        let path = &self.receive_path;
        if !path.starts_with('/')
            || path.len() > 200
            || !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
            || path.starts_with("/api/")
            || path == "/"
        {
            return Err((
                "ebd.receive_path",
                "must be a plain path such as /ebd/receive (letters, digits, / - _ .), outside /api/"
                    .into(),
            ));
        }
        if let Some(url) = &self.platform_url
            && crate::outbound::Target::parse(url).is_none()
        {
            return Err((
                "ebd.platform_url",
                "must be an http:// URL such as http://county-platform:7500/ebd".into(),
            ));
        }
        if self.heartbeat < Duration::from_secs(1) {
            return Err(("ebd.heartbeat", "must be at least 1s".into()));
        }
        if self.ebrid.is_some() && self.trusted_certs.is_empty() {
            return Err((
                "ebd.trusted_certs",
                "name at least one platform certificate: without one no order could ever verify"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EbdError {
    #[error("[ebd] {what} {path}: {source}")]
    Cert {
        what: &'static str,
        path: String,
        #[source]
        source: sm::SmError,
    },
    #[error(
        "[ebd] trusted certificate {path} (SN {sn}, issuer {issuer}) is not signed by any certificate in ca_certs; add its CA or remove it"
    )]
    Untrusted {
        path: String,
        sn: CertSn,
        issuer: CertSn,
    },
    #[error(
        "[ebd] receive_path {0} is already a route of the node; choose another, such as /ebd/receive"
    )]
    PathTaken(String),
    #[error("[ebd] the node's SM2 key: {0}")]
    Key(sm::SmError),
    #[error("[ebd] cannot write {path}: {source}")]
    Export {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The platform certificates this node accepts signatures from, each checked against a CA.
#[derive(Debug, Default)]
pub struct Trust {
    certs: Vec<Cert>,
}

impl Trust {
    /// Reads `[ebd] ca_certs` and `trusted_certs`; a trusted certificate no CA issued is an error.
    pub fn load(config: &EbdConfig) -> Result<Trust, EbdError> {
        let read = |what: &'static str, path: &PathBuf| {
            Cert::read(path).map_err(|source| EbdError::Cert {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let cas = config
            .ca_certs
            .iter()
            .map(|p| read("CA certificate", p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut certs = Vec::new();
        for path in &config.trusted_certs {
            let cert = read("trusted certificate", path)?;
            if !cas.iter().any(|ca| cert.issued_by(ca)) {
                return Err(EbdError::Untrusted {
                    path: path.display().to_string(),
                    sn: cert.sn,
                    issuer: cert.issuer,
                });
            }
            certs.push(cert);
        }
        Ok(Trust { certs })
    }

    pub fn from_certs(certs: Vec<Cert>) -> Trust {
        Trust { certs }
    }

    pub fn find(&self, sn: &CertSn) -> Option<&Cert> {
        self.certs.iter().find(|c| c.sn == *sn)
    }
}

/// Loads (or makes, the first time) the node's SM2 key and writes its public parts beside it.
pub fn open_key(data_dir: &std::path::Path) -> Result<NodeSmKey, EbdError> {
    let (key, made) = NodeSmKey::load_or_create(&data_dir.join(KEY_FILE)).map_err(EbdError::Key)?;
    for (file, bytes) in [
        (CERT_FILE, key.certificate().to_vec()),
        (PEM_FILE, key.public_pem().into_bytes()),
    ] {
        let path = data_dir.join(file);
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            crate::node::write_file_atomically(&path, &bytes, 0o644).map_err(|source| {
                EbdError::Export {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
    }
    if made {
        tracing::info!(public_key = %key.public_hex(), "made the node's SM2 key for the emergency-broadcast platform");
    }
    Ok(key)
}

/// EBDIDs and signature counters for what this node sends. Each is above every one issued before:
/// above the last one persisted (a restart), and at least the clock (`ms × 1000` for sequences,
/// seconds for counters), so a database restored from a backup still never repeats one as long
/// as the clock did not go back, and a clock that went back is covered by the persisted value.
#[derive(Debug)]
pub struct Ids {
    last_seq: AtomicU64,
    last_counter: AtomicU64,
    persisted_seq: AtomicU64,
}

const MAX_SEQ: u64 = 9_999_999_999_999_999;

impl Ids {
    pub fn load(conn: &Connection) -> Result<Ids, StoreError> {
        let (seq, counter): (i64, i64) = conn
            .query_row(
                "SELECT last_seq, last_counter FROM ebd_sequence WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 0));
        let seq = u64::try_from(seq).unwrap_or(0);
        Ok(Ids {
            last_seq: AtomicU64::new(seq),
            last_counter: AtomicU64::new(u64::try_from(counter).unwrap_or(0)),
            persisted_seq: AtomicU64::new(seq),
        })
    }

    fn bump(cell: &AtomicU64, floor: u64, max: u64) -> u64 {
        let mut next = 0;
        let _ = cell.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            next = (last + 1).max(floor).min(max);
            Some(next)
        });
        next
    }

    /// The next 16-digit sequence number.
    pub fn next_seq(&self, now_ms: i64) -> u64 {
        let floor = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000) % (MAX_SEQ + 1);
        Ids::bump(&self.last_seq, floor, MAX_SEQ)
    }

    /// The next signature counter (Unix seconds, or above the last one).
    pub fn next_counter(&self, now_ms: i64) -> u32 {
        let floor = u64::try_from(now_ms / 1000).unwrap_or(0);
        u32::try_from(Ids::bump(&self.last_counter, floor, u64::from(u32::MAX))).unwrap_or(u32::MAX)
    }

    /// Whether ids were issued since the last [`Self::persist`].
    pub fn moved(&self) -> bool {
        self.persisted_seq.load(Ordering::SeqCst) != self.last_seq.load(Ordering::SeqCst)
    }

    /// Writes the sequence and counter, if they moved since the last time.
    pub fn persist(&self, conn: &Connection) -> Result<(), StoreError> {
        let seq = self.last_seq.load(Ordering::SeqCst);
        if self.persisted_seq.load(Ordering::SeqCst) == seq {
            return Ok(());
        }
        let counter = self.last_counter.load(Ordering::SeqCst);
        conn.execute(
            "INSERT INTO ebd_sequence (id, last_seq, last_counter) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq),
                 last_counter = max(last_counter, excluded.last_counter)",
            params![seq as i64, counter as i64],
        )?;
        self.persisted_seq.store(seq, Ordering::SeqCst);
        Ok(())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packages received, by the ResultCode they got (index 0–5).
    pub received: [AtomicU64; 6],
    pub sent_ok: AtomicU64,
    pub sent_failed: AtomicU64,
    /// When the platform last acknowledged a heartbeat (ms; 0: never).
    pub last_heartbeat_ok_ms: std::sync::atomic::AtomicI64,
}

impl Counters {
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP township_ebd_packages_received_total Emergency-broadcast packages received, by the ResultCode of their receipt.\n# TYPE township_ebd_packages_received_total counter\n",
        );
        for (code, n) in self.received.iter().enumerate() {
            out.push_str(&format!(
                "township_ebd_packages_received_total{{result=\"{code}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# HELP township_ebd_packages_sent_total Packages posted to the platform, by whether it acknowledged them.\n# TYPE township_ebd_packages_sent_total counter\n");
        out.push_str(&format!(
            "township_ebd_packages_sent_total{{outcome=\"acknowledged\"}} {}\ntownship_ebd_packages_sent_total{{outcome=\"failed\"}} {}\n",
            self.sent_ok.load(Ordering::Relaxed),
            self.sent_failed.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP township_ebd_heartbeat_acknowledged_ms When the platform last acknowledged a heartbeat (Unix ms, 0: never).\n# TYPE township_ebd_heartbeat_acknowledged_ms gauge\n");
        out.push_str(&format!(
            "township_ebd_heartbeat_acknowledged_ms {}\n",
            self.last_heartbeat_ok_ms.load(Ordering::Relaxed)
        ));
        out
    }
}

/// What the platform link runs with (built by the composition root when `[ebd] ebrid` is set).
#[derive(Clone)]
pub struct Runtime {
    pub store: Store,
    pub ctx: WriteCtx,
    pub blobs: BlobStore,
    pub config: Arc<EbdConfig>,
    pub ebrid: Arc<str>,
    pub key: Arc<NodeSmKey>,
    pub trust: Arc<Trust>,
    pub ids: Arc<Ids>,
    pub outputs: Arc<Outputs>,
    pub counters: Arc<Counters>,
    /// Requests the platform made that are answered in a new POST (state requests, OMD requests).
    pub follow_ups: tokio::sync::mpsc::Sender<report::FollowUp>,
    pub shutdown: CancellationToken,
}

impl Runtime {
    /// A new EBDID of this node: `type` (01 heartbeat, 10 the rest), its EBRID, a sequence number.
    pub fn next_ebdid(&self, ebd_type: &str) -> String {
        let prefix = if ebd_type == "ConnectionCheck" {
            "01"
        } else {
            "10"
        };
        format!(
            "{prefix}{}{:016}",
            self.ebrid,
            self.ids.next_seq(self.ctx.now_ms())
        )
    }

    /// A signed package of this node: the EBDB made by `body`, its EBDS, as a tar; and its EBDID.
    pub fn package(
        &self,
        ebd_type: &'static str,
        dest: Option<&str>,
        related: Option<&str>,
        body: impl FnOnce(&mut crate::cap::xml::Writer),
    ) -> (String, Vec<u8>) {
        let ebdid = self.next_ebdid(ebd_type);
        let now = self.ctx.now_ms();
        let ebdb = package::write_ebdb(
            &package::OutHeader {
                ebdid: &ebdid,
                ebd_type,
                src_ebrid: &self.ebrid,
                src_url: None,
                dest_ebrid: dest,
                time_ms: now,
                related_ebdid: related,
            },
            body,
        );
        let counter = self.ids.next_counter(now);
        let value = self.key.sign_package(&ebdb, counter);
        let ebds = package::write_ebds(&ebdid, &self.key.sn.to_string(), &value);
        let (b, s) = (
            format!("EBDB_{ebdid}.xml"),
            format!("EBDS_EBDB_{ebdid}.xml"),
        );
        let tar = tar::write(
            &[(b.as_str(), ebdb.as_slice()), (s.as_str(), ebds.as_slice())],
            u64::try_from(now / 1000).unwrap_or(0),
        );
        (ebdid, tar)
    }
}

/// The blobs the platform link keeps (the packages of its orders), for the orphan collector.
pub fn referenced_blobs(
    conn: &Connection,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut stmt = conn.prepare("SELECT package_sha256 FROM ebd_orders")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_a_restart_a_restore_or_a_clock_that_went_back() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(
            "CREATE TABLE ebd_sequence (id INTEGER PRIMARY KEY CHECK (id = 1), last_seq INTEGER NOT NULL, last_counter INTEGER NOT NULL) STRICT;",
        )
        .expect("table");
        let now = 1_764_000_000_000;
        let ids = Ids::load(&conn).expect("ids");
        let a = ids.next_seq(now);
        let b = ids.next_seq(now);
        assert!(b > a && a >= 1_764_000_000_000_000);
        let c1 = ids.next_counter(now);
        let c2 = ids.next_counter(now);
        assert!(c2 > c1);
        ids.persist(&conn).expect("persist");
        // Restart with the clock set back a year (a village box without its battery).
        let again = Ids::load(&conn).expect("ids");
        assert!(again.next_seq(now - 31_536_000_000) > b);
        assert!(again.next_counter(now - 31_536_000_000) > c2);
        // A restore from before `a` was issued, with the clock right: the clock keeps it above.
        let restored = Connection::open_in_memory().expect("db");
        restored
            .execute_batch(
                "CREATE TABLE ebd_sequence (id INTEGER PRIMARY KEY CHECK (id = 1), last_seq INTEGER NOT NULL, last_counter INTEGER NOT NULL) STRICT;",
            )
            .expect("table");
        let fresh = Ids::load(&restored).expect("ids");
        assert!(fresh.next_seq(now + 1) > b);
        assert_eq!(format!("{:016}", fresh.next_seq(now + 2)).len(), 16);
    }

    #[test]
    fn config_is_checked() {
        let mut c = EbdConfig {
            ebrid: Some("43307230000000314010201".into()),
            trusted_certs: vec!["/x".into()],
            ..EbdConfig::default()
        };
        assert!(c.check().is_ok());
        c.receive_path = "/api/v1/x".into();
        assert_eq!(c.check().map_err(|e| e.0), Err("ebd.receive_path"));
        c.receive_path = "/ebd/{x}".into();
        assert!(c.check().is_err());
        c.receive_path = "/ebd/receive".into();
        c.ebrid = Some("4330723".into());
        assert_eq!(c.check().map_err(|e| e.0), Err("ebd.ebrid"));
        c.ebrid = Some("43307230000000314010201".into());
        c.platform_url = Some("https://x".into());
        assert_eq!(c.check().map_err(|e| e.0), Err("ebd.platform_url"));
    }
}
