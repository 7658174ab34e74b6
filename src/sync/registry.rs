//! The registry of peers (`sync_peers`): downstream nodes enrolled here by their public key and area,
//! and the upstream as last seen. Every function runs in the caller's transaction.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use township_sync::{AreaCode, PublicKey};

use crate::audit::Event;
use crate::invalid::Invalid;
use crate::records::WriteCtx;
use crate::store::StoreError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRow {
    pub node_id: String,
    pub public_key: String,
    pub area: String,
    pub name: String,
    pub relation: String,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    pub acked_seq: i64,
    pub last_seen_ms: Option<i64>,
    pub version: Option<String>,
    pub last_error: Option<String>,
}

fn read_peer(r: &rusqlite::Row<'_>) -> rusqlite::Result<PeerRow> {
    Ok(PeerRow {
        node_id: r.get(0)?,
        public_key: r.get(1)?,
        area: r.get(2)?,
        name: r.get(3)?,
        relation: r.get(4)?,
        enrolled_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
        acked_seq: r.get(7)?,
        last_seen_ms: r.get(8)?,
        version: r.get(9)?,
        last_error: r.get(10)?,
    })
}

const PEER_COLUMNS: &str = "node_id, public_key, area, name, relation, enrolled_ms, revoked_ms, acked_seq, last_seen_ms, version, last_error";

pub fn peer_by_key(conn: &Connection, key: &str) -> Result<Option<PeerRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {PEER_COLUMNS} FROM sync_peers WHERE public_key = ?1"),
            [key],
            read_peer,
        )
        .optional()?)
}

pub fn peers(conn: &Connection, relation: &str) -> Result<Vec<PeerRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {PEER_COLUMNS} FROM sync_peers WHERE relation = ?1 ORDER BY area, name"
    ))?;
    Ok(stmt
        .query_map([relation], read_peer)?
        .collect::<Result<_, _>>()?)
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("this key is already enrolled as node {0}")]
    Exists(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A request to enroll a downstream node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub public_key: String,
    pub area: String,
    pub name: String,
}

/// Enrolls a downstream node by its public key and area (in the caller's transaction).
pub fn enroll(
    conn: &Connection,
    ctx: &WriteCtx,
    our_area: &AreaCode,
    actor: &str,
    request: EnrollRequest,
) -> Result<PeerRow, EnrollError> {
    let now_ms = ctx.now_ms();
    let EnrollRequest {
        public_key: key,
        area,
        name,
    } = request;
    let key: PublicKey = key.trim().parse().map_err(|_| {
        EnrollError::Invalid(Invalid::new(
            "public_key",
            "not a node public key (43 characters of base64url)",
        ))
    })?;
    let area: AreaCode = area
        .parse()
        .map_err(|e: township_sync::AreaError| Invalid::new("area", e))?;
    if !our_area.is_above(&area) {
        return Err(Invalid::new(
            "area",
            format!("a downstream node's area must lie below this node's area {our_area}"),
        )
        .into());
    }
    let name = name.trim();
    if !(1..=100).contains(&name.chars().count()) {
        return Err(EnrollError::Invalid(Invalid::new(
            "name",
            "name is 1 to 100 characters",
        )));
    }
    if let Some(existing) = peer_by_key(conn, &key.to_string())? {
        return Err(EnrollError::Exists(existing.node_id));
    }
    let node_id = key.node_id().to_string();
    conn.execute(
        "INSERT INTO sync_peers (node_id, public_key, area, name, relation, enrolled_ms) VALUES (?1, ?2, ?3, ?4, 'downstream', ?5)",
params![node_id, key.to_string(), area.as_str(), name, now_ms],
    )
    .map_err(StoreError::from)?;
    ctx.audit(
        conn,
        Event::new(actor, "sync.enroll", &node_id).detail(json!({"area": area, "name": name})),
    )?;
    Ok(PeerRow {
        node_id,
        public_key: key.to_string(),
        area: area.to_string(),
        name: name.to_string(),
        relation: "downstream".into(),
        enrolled_ms: now_ms,
        revoked_ms: None,
        acked_seq: 0,
        last_seen_ms: None,
        version: None,
        last_error: None,
    })
}

/// Revokes an enrolled downstream node (audited); false if there was no such active node.
pub fn revoke(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &str,
    node_id: &str,
) -> Result<bool, StoreError> {
    let n = conn.prepare_cached("UPDATE sync_peers SET revoked_ms = ?2 WHERE node_id = ?1 AND relation = 'downstream' AND revoked_ms IS NULL")?.execute(params![node_id, ctx.now_ms()],
    )?;
    if n > 0 {
        ctx.audit(conn, Event::new(actor, "sync.revoke", node_id))?;
    }
    Ok(n > 0)
}

/// Whether `node_id` is revoked (or no longer known at all).
pub fn is_revoked(conn: &Connection, node_id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT revoked_ms IS NOT NULL FROM sync_peers WHERE node_id = ?1",
            [node_id],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(true))
}

/// A downstream node's own version (from its hello) and when it was last seen, for the nodes page.
pub fn record_seen(
    conn: &Connection,
    node_id: &str,
    version: Option<&str>,
    at_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE sync_peers SET version = ?2, last_seen_ms = ?3, last_error = NULL WHERE node_id = ?1")?.execute(params![node_id, version, at_ms],
    )?;
    Ok(())
}

/// How far a peer has confirmed this node's record sequence; never moves back.
pub fn record_ack(
    conn: &Connection,
    node_id: &str,
    upto: i64,
    at_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE sync_peers SET acked_seq = max(acked_seq, ?2), last_seen_ms = ?3 WHERE node_id = ?1")?.execute(params![node_id, upto, at_ms],
    )?;
    Ok(())
}

/// Remembers the upstream so its acknowledgements persist across reconnects; returns how far it
/// had confirmed.
pub fn remember_upstream(
    conn: &Connection,
    node_id: &str,
    key: &PublicKey,
    area: &AreaCode,
    at_ms: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached("INSERT INTO sync_peers (node_id, public_key, area, name, relation, enrolled_ms) VALUES (?1, ?2, ?3, 'upstream', 'upstream', ?4)
         ON CONFLICT(node_id) DO UPDATE SET area = excluded.area")?.execute(params![node_id, key.to_string(), area.as_str(), at_ms],
    )?;
    Ok(conn
        .prepare_cached("SELECT acked_seq FROM sync_peers WHERE node_id = ?1")?
        .query_row([node_id], |r| r.get::<_, i64>(0))?)
}
