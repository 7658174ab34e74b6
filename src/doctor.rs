//! `township-node doctor`: checks a data directory and says what to fix.
//!
//! Every check reports ok, warn or FAIL with a one-line fix, so a township's IT contact can act on it
//! without reading source. It only reads: the database is opened read-only and nothing is repaired.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::{Config, StoreConfig};
use crate::node::{self, DataDir, DataDirLock};
use crate::store::{self, migrations};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub verdict: Verdict,
    pub name: &'static str,
    pub detail: String,
    pub fix: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.verdict {
            Verdict::Pass => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{tag}  {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

fn check(
    verdict: Verdict,
    name: &'static str,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        verdict,
        name,
        detail: detail.into(),
        fix,
    }
}

/// The LAN HTTPS certificate: present, its keys private, not expired or about to, and carrying
/// every configured name (checked the way a phone that trusts only the node's CA would).
fn lan_certificate(dir: &DataDir, config: &Config, out: &mut Vec<Check>) {
    use Verdict::{Fail, Pass, Warn};
    let shown = dir.root().display();
    let certs = match crate::tls::certs::load(dir.root()) {
        Ok(Some(c)) => c,
        Ok(None) => {
            out.push(check(
                Warn,
                "LAN certificate",
                "none yet; the node makes its CA and certificate when it starts",
                Some(format!(
                    "start the node, or run `township-node tls renew --data-dir {shown}`"
                )),
            ));
            return;
        }
        Err(e) => {
            out.push(check(Fail, "LAN certificate", e.to_string(), None));
            return;
        }
    };
    for key in crate::tls::certs::key_files(dir.root()) {
        match std::fs::metadata(&key) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => out.push(check(
                Fail,
                "LAN certificate key",
                format!(
                    "{} has mode {:o}; other users could impersonate the node to phones",
                    key.display(),
                    meta.permissions().mode() & 0o777
                ),
                Some(format!("chmod 600 {}", key.display())),
            )),
            Ok(_) => {}
            Err(e) => out.push(check(
                Fail,
                "LAN certificate key",
                format!("{}: {e}", key.display()),
                Some(format!("run `township-node tls renew --data-dir {shown}`")),
            )),
        }
    }
    let now = crate::clock::system_now_ms();
    let day = 24 * 3600 * 1000;
    let left_days = (certs.issued.server_not_after_ms - now) / day;
    let renew = Some(format!(
        "run `township-node tls renew --data-dir {shown}` (phones keep trusting the same CA)"
    ));
    if left_days < 0 {
        out.push(check(
            Fail,
            "LAN certificate expiry",
            "the certificate has expired",
            renew.clone(),
        ));
    } else if left_days < crate::tls::certs::RENEW_BEFORE_DAYS {
        out.push(check(
            Warn,
            "LAN certificate expiry",
            format!("{left_days} days left; a running node renews it within the hour"),
            renew.clone(),
        ));
    } else {
        out.push(check(
            Pass,
            "LAN certificate expiry",
            format!(
                "valid to {} ({left_days} days)",
                crate::clock::rfc3339_china(certs.issued.server_not_after_ms)
            ),
            None,
        ));
    }
    let mut missing = Vec::new();
    let mut outside = Vec::new();
    for name in &config.http.tls_names {
        let name = name.trim().to_ascii_lowercase();
        if !crate::tls::certs::permitted(&certs.issued, &name) {
            outside.push(name);
        } else if crate::tls::certs::verify_for(&certs, &name, now).is_err() {
            missing.push(name);
        }
    }
    if !outside.is_empty() {
        out.push(check(
            Warn,
            "LAN certificate names",
            format!("{} are outside what the node's CA may vouch for", outside.join(", ")),
            Some(format!("run `township-node tls renew --new-ca --data-dir {shown}` (every phone must then trust the new CA)")),
        ));
    }
    if !missing.is_empty() {
        out.push(check(
            Warn,
            "LAN certificate names",
            format!("the certificate does not carry {}", missing.join(", ")),
            renew,
        ));
    } else if outside.is_empty() {
        out.push(check(
            Pass,
            "LAN certificate names",
            certs.issued.server_names.join(", "),
            None,
        ));
    }
    out.push(check(
        Pass,
        "LAN CA fingerprint",
        certs.ca_fingerprint(),
        None,
    ));
}

/// Serial ports the devices use: present, and readable and writable by this user (without opening
/// them, so a running node's line is not disturbed). A missing port is a warning: the driver waits
/// for the adapter to come back.
fn serial_ports(config: &Config, out: &mut Vec<Check>) {
    use Verdict::{Fail, Pass, Warn};
    let mut ports: Vec<&str> = config
        .devices
        .iter()
        .filter_map(|d| d.serial_line().map(|line| line.0))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let path = Path::new(port);
        if !path.exists() {
            out.push(check(
                Warn,
                "serial port",
                format!("{port} is not present"),
                Some("plug the adapter in, or name it by /dev/serial/by-id/... so it keeps its name; the node opens it when it appears".into()),
            ));
            continue;
        }
        let access = rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK;
        match rustix::fs::access(path, access) {
            Ok(()) => out.push(check(Pass, "serial port", format!("{port} is readable and writable"), None)),
            Err(e) => out.push(check(
                Fail,
                "serial port",
                format!("{port}: {e}"),
                Some("run the node as a member of the port's group (dialout on Debian; the systemd unit adds it)".into()),
            )),
        }
    }
}

/// Runs every check. `config_file` is the file `serve` would use.
pub fn run(dir: &DataDir, config_file: Option<&Path>) -> Vec<Check> {
    use Verdict::{Fail, Pass, Warn};
    let mut out = Vec::new();
    let root = dir.root();
    let shown = root.display();

    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                out.push(check(
                    Warn,
                    "data directory",
                    format!("{shown} is accessible to other users (mode {mode:o})"),
                    Some(format!("chmod 700 {shown}")),
                ));
            } else {
                out.push(check(
                    Pass,
                    "data directory",
                    format!("{shown} (mode {mode:o})"),
                    None,
                ));
            }
        }
        Ok(_) => {
            out.push(check(
                Fail,
                "data directory",
                format!("{shown} is not a directory"),
                Some("pass the directory made by `township-node init`".into()),
            ));
            return out;
        }
        Err(e) => {
            out.push(check(
                Fail,
                "data directory",
                format!("{shown}: {e}"),
                Some(format!("run `township-node init --data-dir {shown} --area CODE --name NAME --role ROLE`, or pass the right --data-dir")),
            ));
            return out;
        }
    }

    if let Some(pid) = DataDirLock::is_held(dir) {
        out.push(check(
            Pass,
            "running node",
            format!("a node is serving this directory (pid {pid}); checks read a live database"),
            None,
        ));
    }

    let store_config = StoreConfig::default();
    let config = match config_file {
        Some(path) => match Config::load_from_process(Some(path)) {
            Ok(config) => {
                out.push(check(
                    Pass,
                    "config",
                    format!("{} loads", path.display()),
                    None,
                ));
                Some(config)
            }
            Err(e) => {
                out.push(check(Fail, "config", e.to_string(), Some("correct or remove the key named above; deploy/township-node.example.toml lists every key".into())));
                None
            }
        },
        None => match Config::load_from_process(None) {
            Ok(config) => {
                out.push(check(
                    Pass,
                    "config",
                    "no config file; defaults and TOWNSHIP_ variables load",
                    None,
                ));
                Some(config)
            }
            Err(e) => {
                out.push(check(
                    Fail,
                    "config",
                    e.to_string(),
                    Some("unset or correct the TOWNSHIP_ variable named above".into()),
                ));
                None
            }
        },
    };
    if let Some(config) = &config {
        serial_ports(config, &mut out);
        if config.http.https_listen.is_some() {
            lan_certificate(dir, config, &mut out);
        }
    }
    let store_config = config.map(|c| c.store).unwrap_or(store_config);

    let key_path = dir.key();
    let key_ok = match std::fs::metadata(&key_path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                out.push(check(
                    Fail,
                    "key permissions",
                    format!(
                        "{} has mode {mode:o}; other users could read the node's private key",
                        key_path.display()
                    ),
                    Some(format!("chmod 600 {}", key_path.display())),
                ));
                false
            } else {
                out.push(check(
                    Pass,
                    "key permissions",
                    format!("{} (mode {mode:o})", key_path.display()),
                    None,
                ));
                true
            }
        }
        Err(e) => {
            out.push(check(
                Fail,
                "key",
                format!("{}: {e}", key_path.display()),
                Some("restore node.key from the node's backup; without it the node must be initialised and enrolled again".into()),
            ));
            false
        }
    };

    let db_path = dir.db();
    let conn = match store::open_read_only(&db_path, &store_config) {
        Ok(conn) => conn,
        Err(e) => {
            out.push(check(
                Fail,
                "database",
                e.to_string(),
                Some(
                    "restore the database from a backup (`township-node backup` makes them)".into(),
                ),
            ));
            return out;
        }
    };
    match migrations::schema_version(&conn) {
        Ok(v) if v == migrations::LATEST => out.push(check(
            Pass,
            "schema version",
            format!("{v} (current)"),
            None,
        )),
        Ok(v) => out.push(check(
            Warn,
            "schema version",
            format!(
                "{v}; this binary will migrate it to {} at the next start",
                migrations::LATEST
            ),
            Some("take a backup before starting the new version".into()),
        )),
        Err(e) => out.push(check(Fail, "schema version", e.to_string(), None)),
    }
    match conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)) {
        Ok(v) if v == "ok" => out.push(check(
            Pass,
            "database integrity",
            "integrity_check ok",
            None,
        )),
        Ok(v) => out.push(check(
            Fail,
            "database integrity",
            v,
            Some("stop the node and restore the latest backup".into()),
        )),
        Err(e) => out.push(check(
            Fail,
            "database integrity",
            e.to_string(),
            Some("stop the node and restore the latest backup".into()),
        )),
    }
    match conn
        .prepare("PRAGMA foreign_key_check")
        .and_then(|mut s| s.query_map([], |_| Ok(())).map(|rows| rows.count()))
    {
        Ok(0) => out.push(check(Pass, "foreign keys", "no violations", None)),
        Ok(n) => out.push(check(
            Fail,
            "foreign keys",
            format!("{n} violations"),
            Some("restore the latest backup".into()),
        )),
        Err(e) => out.push(check(Warn, "foreign keys", e.to_string(), None)),
    }
    match conn.pragma_query_value(None, "journal_mode", |r| r.get::<_, String>(0)) {
        Ok(mode) if mode.eq_ignore_ascii_case("wal") => {
            out.push(check(Pass, "journal mode", "wal", None))
        }
        Ok(mode) => out.push(check(
            Warn,
            "journal mode",
            format!("{mode}; the node switches it to WAL at start"),
            None,
        )),
        Err(e) => out.push(check(Warn, "journal mode", e.to_string(), None)),
    }

    match township_sync::DocStore::quarantined(&conn) {
        Ok(list) if list.is_empty() => {
            out.push(check(Pass, "records", "no quarantined records", None))
        }
        Ok(list) => out.push(check(
            Warn,
            "records",
            format!(
                "{} record(s) failed to load and are quarantined: {}",
                list.len(),
                list.iter()
                    .take(5)
                    .map(|(id, kind, _)| format!("{kind}/{id}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some("they are kept out of use; send the data directory's backup to county IT for repair".into()),
        )),
        Err(_) => {}
    }
    match conn
        .prepare("SELECT kind, doc_id, reason FROM record_verdicts ORDER BY since_ms")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()
        }) {
        Ok(list) if list.is_empty() => {}
        Ok(list) => out.push(check(
            Warn,
            "authority",
            format!(
                "{} record(s) claim more than their writers could grant and are quarantined, e.g. {}",
                list.len(),
                list.iter()
                    .take(3)
                    .map(|(kind, id, reason)| format!("{kind}/{id}: {reason}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Some("they were written by a node below that overstepped its area; see the users page and the audit log (record.quarantine), and check that node".into()),
        )),
        Err(_) => {}
    }
    let referenced = crate::incidents::referenced_blobs(&conn).map(|mut all| {
        // A database from before broadcasts has no broadcasts table: nothing more is referenced.
        if let Ok(more) = crate::broadcast::referenced_blobs(&conn) {
            all.extend(more);
        }
        all
    });
    match referenced {
        Ok(referenced) => {
            let store = crate::blobs::BlobStore::new(root);
            match store.orphans(&referenced) {
                Ok(list) if list.is_empty() => {
                    out.push(check(Pass, "attachments", "every attachment file belongs to a record", None))
                }
                Ok(list) => out.push(check(
                    Warn,
                    "attachments",
                    format!(
                        "{} file(s), {} KiB, belong to no record (an upload whose record write failed or was cut off)",
                        list.len(),
                        list.iter().map(|o| o.bytes).sum::<u64>() / 1024
                    ),
                    Some("nothing to do: the running node removes them after incidents.orphan_blob_grace".into()),
                )),
                Err(e) => out.push(check(Warn, "attachments", e.to_string(), None)),
            }
        }
        Err(e) => out.push(check(Warn, "attachments", e.to_string(), None)),
    }
    match node::read_identity(&conn) {
        Ok(info) => {
            if key_ok {
                match node::load_key_checked(dir, &info) {
                    Ok(_) => out.push(check(
                        Pass,
                        "identity",
                        format!(
                            "node {} ({} {}, area {})",
                            info.node_id, info.role, info.name, info.area
                        ),
                        None,
                    )),
                    Err(e) => out.push(check(Fail, "identity", e.to_string(), None)),
                }
            }
        }
        Err(e) => out.push(check(Fail, "identity", e.to_string(), None)),
    }

    match rustix::fs::statvfs(root) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            let total = stat.f_blocks.saturating_mul(stat.f_frsize).max(1);
            let mib = free / (1024 * 1024);
            if free < 512 * 1024 * 1024 || free * 20 < total {
                out.push(check(Warn, "disk space", format!("{mib} MiB free"), Some("free space on this disk; the node needs room for its WAL, attachments and backups".into())));
            } else {
                out.push(check(Pass, "disk space", format!("{mib} MiB free"), None));
            }
        }
        Err(e) => out.push(check(Warn, "disk space", e.to_string(), None)),
    }
    out
}
