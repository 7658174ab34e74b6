//! The audit chain: every state change appends an entry (sequence, time, actor, action, target, a short
//! JSON detail, the previous entry's hash and its own SHA-256), in the same transaction as the change
//! itself, so there is never a change without its entry or an entry without its change. The head
//! (last sequence number and hash) is kept beside the chain and signed with the node's Ed25519 key
//! at every append — microseconds — so rewriting any part of the chain, the newest entries included,
//! needs the node key. Every 100 entries, and every 5 minutes while entries arrive, a checkpoint
//! signature is also kept. `township-node audit verify` walks the chain and the signatures.

pub mod relayed;
mod routes;
pub mod tally;
pub mod verify;

pub use tally::Tally;

pub use routes::routes;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use township_sync::NodeKey;

use crate::store::StoreError;

/// The hash the first entry points back to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// A checkpoint is signed at least every this many entries.
pub const CHECKPOINT_EVERY: i64 = 100;
/// And at least this often while entries arrive.
pub const CHECKPOINT_INTERVAL_MS: i64 = 5 * 60 * 1000;
const HEAD_KEY: &str = "audit_head";
/// Details are short by contract; longer ones are cut so one entry cannot bloat the log.
const MAX_DETAIL_BYTES: usize = 2048;

/// What happened, by whom, to what.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: serde_json::Value,
}

impl<'a> Event<'a> {
    pub fn new(actor: &'a str, action: &'a str, target: &'a str) -> Self {
        Event {
            actor,
            action,
            target,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// One stored entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of an entry: SHA-256 over its fields, each length-prefixed so no two different entries
/// encode to the same bytes.
pub fn entry_hash(
    seq: i64,
    at_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"township-node audit v1");
    ctx.update(&seq.to_le_bytes());
    ctx.update(&at_ms.to_le_bytes());
    for field in [actor, action, target, detail, prev_hash] {
        ctx.update(&(field.len() as u64).to_le_bytes());
        ctx.update(field.as_bytes());
    }
    hex::encode(ctx.finish())
}

/// The message a checkpoint signature covers.
pub fn checkpoint_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("township-node audit checkpoint v1\0{seq}\0{hash}").into_bytes()
}

/// The message the head signature covers.
pub fn head_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("township-node audit head v1\0{seq}\0{hash}").into_bytes()
}

/// A recorded head: `seq:hash:signature` (the signature missing on heads from before they were
/// signed).
pub(crate) struct Head<'a> {
    pub seq: Option<i64>,
    pub hash: &'a str,
    pub signature: Option<&'a str>,
}

pub(crate) fn parse_head(value: &str) -> Head<'_> {
    let mut parts = value.splitn(3, ':');
    Head {
        seq: parts.next().and_then(|s| s.parse().ok()),
        hash: parts.next().unwrap_or(""),
        signature: parts.next(),
    }
}

/// The head record: `seq:hash:signature`.
fn head_value(key: &NodeKey, seq: i64, hash: &str) -> String {
    format!(
        "{seq}:{hash}:{}",
        hex::encode(key.sign(&head_message(seq, hash)))
    )
}

/// Signs the recorded head if it carries no signature — only once, at the first start after the
/// migration that introduced head signatures (it leaves a marker). After that an unsigned head is
/// never signed: someone who rewrote the chain and its head without the key would have the next
/// restart sign their forgery.
pub fn sign_head_if_unsigned(conn: &Connection, key: &NodeKey) -> Result<bool, StoreError> {
    let allowed = conn
        .prepare_cached("DELETE FROM node_meta WHERE key = 'audit_head_unsigned_ok'")?
        .execute([])?
        > 0;
    if !allowed {
        return Ok(false);
    }
    let head: Option<String> = conn
        .query_row(
            "SELECT value FROM node_meta WHERE key = ?1",
            [HEAD_KEY],
            |r| r.get(0),
        )
        .optional()?;
    let Some(head) = head else {
        return Ok(false);
    };
    let Head {
        seq: Some(seq),
        hash,
        signature: None,
    } = parse_head(&head)
    else {
        return Ok(false);
    };
    conn.prepare_cached("UPDATE node_meta SET value = ?2 WHERE key = ?1")?
        .execute(params![HEAD_KEY, head_value(key, seq, hash)])?;
    Ok(true)
}

fn last(conn: &Connection) -> Result<(i64, String), StoreError> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, GENESIS.to_string())))
}

fn truncate_detail(detail: &serde_json::Value) -> String {
    let text = detail.to_string();
    if text.len() <= MAX_DETAIL_BYTES {
        return text;
    }
    let mut cut = MAX_DETAIL_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({ "truncated": &text[..cut] }).to_string()
}

/// Appends an entry inside the caller's transaction; signs a checkpoint when one is due by count.
pub fn append(
    conn: &Connection,
    key: &NodeKey,
    now_ms: i64,
    event: Event<'_>,
) -> Result<i64, StoreError> {
    let (prev_seq, prev_hash) = last(conn)?;
    let seq = prev_seq + 1;
    let detail = truncate_detail(&event.detail);
    let hash = entry_hash(
        seq,
        now_ms,
        event.actor,
        event.action,
        event.target,
        &detail,
        &prev_hash,
    );
    conn.prepare_cached("INSERT INTO audit_log (seq, at_ms, actor, action, target, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?.execute(params![seq, now_ms, event.actor, event.action, event.target, detail, prev_hash, hash],
    )?;
    // The head is kept beside the chain, signed, so that cutting entries off the end, or rewriting
    // the newest ones and chaining them anew, is noticed too.
    conn.prepare_cached("INSERT INTO node_meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?.execute(params![HEAD_KEY, head_value(key, seq, &hash)],
    )?;
    if seq % CHECKPOINT_EVERY == 0 {
        sign_checkpoint(conn, key, seq, &hash, now_ms)?;
    }
    Ok(seq)
}

fn sign_checkpoint(
    conn: &Connection,
    key: &NodeKey,
    seq: i64,
    hash: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let signature = key.sign(&checkpoint_message(seq, hash));
    conn.prepare_cached("INSERT OR IGNORE INTO audit_checkpoints (seq, hash, signature, public_key, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![seq, hash, hex::encode(signature), key.public_key().to_string(), now_ms],
    )?;
    Ok(())
}

/// Signs the latest entry if it is not signed yet and the last checkpoint is older than the interval.
/// Returns the signed sequence number, if any.
pub fn checkpoint_if_due(
    conn: &Connection,
    key: &NodeKey,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let (seq, hash) = last(conn)?;
    if seq == 0 {
        return Ok(None);
    }
    let (last_seq, last_at): (i64, i64) = conn
        .query_row(
            "SELECT seq, at_ms FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, 0));
    if last_seq >= seq || now_ms - last_at < CHECKPOINT_INTERVAL_MS {
        return Ok(None);
    }
    sign_checkpoint(conn, key, seq, &hash, now_ms)?;
    Ok(Some(seq))
}

/// Filters for reading the log.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only entries with a sequence below this (for paging backwards).
    pub before_seq: Option<i64>,
    pub limit: usize,
}

/// Newest first.
pub fn query(conn: &Connection, f: &Filter) -> Result<Vec<Entry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at_ms, actor, action, target, detail, prev_hash, hash FROM audit_log
         WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2 OR action LIKE ?2 || '.%')
           AND (?3 IS NULL OR target = ?3) AND (?4 IS NULL OR at_ms >= ?4) AND (?5 IS NULL OR at_ms <= ?5)
           AND (?6 IS NULL OR seq < ?6)
         ORDER BY seq DESC LIMIT ?7",
    )?;
    let rows = stmt.query_map(
        params![
            f.actor,
            f.action,
            f.target,
            f.from_ms,
            f.to_ms,
            f.before_seq,
            f.limit as i64
        ],
        |r| {
            Ok(Entry {
                seq: r.get(0)?,
                at_ms: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                detail: r.get(5)?,
                prev_hash: r.get(6)?,
                hash: r.get(7)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const CONFIG_KEY: &str = "config_effective";

fn is_secret_key(key: &str) -> bool {
    ["token", "password", "secret"]
        .iter()
        .any(|s| key.contains(s))
}

/// This node's own chain entries after `after`, at most `limit`, as the JSON the upstream stores and
/// verifies (seq, time, actor, action, target, detail, and both hashes; on a checkpoint entry also
/// the checkpoint signature and the key that made it, see [`relayed`]).
pub fn chain_after(
    conn: &Connection,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.seq, a.at_ms, a.actor, a.action, a.target, a.detail, a.prev_hash, a.hash, c.signature, c.public_key
         FROM audit_log a LEFT JOIN audit_checkpoints c ON c.seq = a.seq AND c.hash = a.hash
         WHERE a.seq > ?1 ORDER BY a.seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        let seq: i64 = r.get(0)?;
        let mut entry = serde_json::json!({
            "seq": seq, "at_ms": r.get::<_, i64>(1)?, "actor": r.get::<_, String>(2)?,
            "action": r.get::<_, String>(3)?, "target": r.get::<_, String>(4)?, "detail": r.get::<_, String>(5)?,
            "prev_hash": r.get::<_, String>(6)?, "hash": r.get::<_, String>(7)?,
        });
        if let (Some(signature), Some(key)) = (
            r.get::<_, Option<String>>(8)?,
            r.get::<_, Option<String>>(9)?,
        ) {
            entry["checkpoint"] = signature.into();
            entry["public_key"] = key.into();
        }
        Ok((seq, entry.to_string().into_bytes()))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The effective configuration as `section.key = value` lines, secrets reduced to a short digest so
/// a change is still visible without the value ever entering the database.
pub fn flatten_config(
    config: &crate::config::Config,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(table) = toml::Table::try_from(config) else {
        return out;
    };
    for (section, value) in table {
        let Some(keys) = value.as_table() else {
            continue;
        };
        for (key, v) in keys {
            let name = format!("{section}.{key}");
            let shown = if is_secret_key(key) {
                let digest = ring::digest::digest(&ring::digest::SHA256, v.to_string().as_bytes());
                format!("[redacted sha256:{}]", &hex::encode(digest)[..16])
            } else {
                v.to_string()
            };
            out.insert(name, shown);
        }
    }
    out
}

/// Compares the configuration this start runs with (flattened by [`flatten_config`]) against the
/// last one recorded and, when it changed, appends a `config.change` entry naming every changed key.
pub fn record_config(
    conn: &Connection,
    ctx: &crate::records::WriteCtx,
    current: &std::collections::BTreeMap<String, String>,
) -> Result<(), StoreError> {
    let previous: Option<String> = conn
        .query_row(
            "SELECT value FROM node_meta WHERE key = ?1",
            [CONFIG_KEY],
            |r| r.get(0),
        )
        .optional()?;
    let previous: std::collections::BTreeMap<String, String> = previous
        .and_then(|p| serde_json::from_str(&p).ok())
        .unwrap_or_default();
    if &previous == current {
        return Ok(());
    }
    let mut changed = serde_json::Map::new();
    for key in previous.keys().chain(current.keys()) {
        let (old, new) = (previous.get(key), current.get(key));
        if old != new {
            changed.insert(key.clone(), serde_json::json!({ "from": old, "to": new }));
        }
    }
    let text = serde_json::to_string(current).unwrap_or_default();
    conn.prepare_cached("INSERT INTO node_meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?.execute(params![CONFIG_KEY, text],
    )?;
    ctx.audit(
        conn,
        Event::new(crate::auth::actor::SYSTEM, "config.change", "config")
            .detail(serde_json::Value::Object(changed)),
    )?;
    Ok(())
}
