//! Link reports up the tree: every node with an upstream describes the links of the nodes enrolled
//! under it (connected, last seen, pending in and out, version, last error) on the `links` stream,
//! and each node above keeps what its children report, so the county sees the health of every link
//! in its tree, villages under townships included, on one screen.
//!
//! Authority rule: a report counts only for a node whose area lies inside the area of the child
//! that sent it, never for this node itself, and a child speaks only for itself and what lies
//! below it (the same origin rule as readings, `telemetry::tree`). Where the API reads reports, the
//! sending child must still be enrolled, unrevoked, over that area.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use township_sync::AreaCode;
use township_sync::engine::StreamRecord;

use super::Runtime;
use crate::store::StoreError;
use crate::telemetry::outbox;
use crate::telemetry::tree::{self, FromBelow};

pub const LINKS: &str = "links";

/// What a node says about one of the links below it. Times are rounded down to the minute, so a
/// healthy link is described again once a minute, not at every frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkDoc {
    pub node_id: String,
    pub name: String,
    pub area: String,
    /// `connected`, `offline` or `refused` (see `status::LinkStatus::state`).
    pub state: String,
    pub connected: bool,
    pub revoked: bool,
    pub last_seen_ms: Option<i64>,
    pub version: Option<String>,
    pub pending_in: u64,
    pub pending_out: u64,
    pub last_error: Option<String>,
    /// When the report was made, rounded down to ten minutes: a report that changes nothing else is
    /// still sent that often, so the node above can tell a current report from an old one.
    pub as_of_ms: i64,
}

/// How often an unchanged report is sent again.
const REPORT_AGAIN_MS: i64 = 10 * 60_000;

/// Stores the reports that changed, each under the next number of the outbox sequence.
pub fn describe(conn: &Connection, links: &[LinkDoc]) -> Result<usize, StoreError> {
    let mut changed = 0;
    for link in links {
        if outbox::keep_description(conn, outbox::Described::Link, &link.node_id, link)? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// This node's reports after `after`, at most `limit`.
pub fn own_after(
    conn: &Connection,
    after: i64,
    limit: i64,
) -> Result<Vec<StreamRecord>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, payload FROM link_reports WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![after, limit], |r| {
            Ok(StreamRecord {
                seq: r.get(0)?,
                payload: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// Checks and keeps one report from a child (see the authority rule above).
pub fn land(
    conn: &Connection,
    from: &FromBelow<'_>,
    origin: &str,
    record: &StreamRecord,
    now_ms: i64,
) -> Result<Result<(), &'static str>, StoreError> {
    let Ok(doc) = serde_json::from_slice::<LinkDoc>(&record.payload) else {
        return Ok(Err("not a link report"));
    };
    if doc.node_id.is_empty()
        || doc.node_id.len() > 128
        || doc.name.chars().count() > 200
        || doc.version.as_ref().is_some_and(|v| v.len() > 64)
        || doc.last_error.as_ref().is_some_and(|e| e.len() > 1000)
    {
        return Ok(Err("a malformed link report"));
    }
    if doc.node_id == from.own || doc.node_id == from.via {
        return Ok(Err("a report on this node or the sender itself"));
    }
    let Ok(area) = doc.area.parse::<AreaCode>() else {
        return Ok(Err("a link report without a valid area"));
    };
    if !from.area.contains(&area) {
        return Ok(Err("a link outside the sender's area"));
    }
    tree::keep_newest(
        conn,
        tree::Newest::Link,
        origin,
        &doc.node_id,
        from.via,
        &area,
        record,
        now_ms,
    )?;
    Ok(Ok(()))
}

/// A link below a child, as the node above it last reported.
#[derive(Debug, Clone)]
pub struct Reported {
    /// The node that reported it (the link's upstream end).
    pub origin: String,
    pub via: String,
    pub area: AreaCode,
    pub received_ms: i64,
    pub doc: LinkDoc,
}

/// Every reported link that still counts: its child enrolled here, unrevoked, over its area.
pub fn below(conn: &Connection) -> Result<Vec<Reported>, StoreError> {
    let children = tree::Children::load(conn)?;
    let mut stmt = conn.prepare_cached(
        "SELECT origin, via, area, received_ms, payload FROM tree_links ORDER BY area, node_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Vec<u8>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (origin, via, area, received_ms, payload) = row?;
        let (Ok(area), Ok(doc)) = (
            area.parse::<AreaCode>(),
            serde_json::from_slice::<LinkDoc>(&payload),
        ) else {
            continue;
        };
        if children.vouch(&via, &area) {
            out.push(Reported {
                origin,
                via,
                area,
                received_ms,
                doc,
            });
        }
    }
    Ok(out)
}

fn minute(ms: Option<i64>) -> Option<i64> {
    ms.map(|t| t.div_euclid(60_000) * 60_000)
}

/// Describes the links of the nodes enrolled here, for the upstream; only a node with an upstream
/// reports.
pub async fn report(rt: &Runtime) -> Result<usize, StoreError> {
    if rt.upstream.is_none() {
        return Ok(0);
    }
    let peers = rt
        .store
        .read(|conn| super::registry::peers(conn, "downstream"))
        .await?;
    if peers.is_empty() {
        return Ok(0);
    }
    let (_, live) = rt.status.snapshot();
    let now = rt.clock.now_ms();
    let docs: Vec<LinkDoc> = peers
        .into_iter()
        .map(|p| {
            let link = live.get(&p.node_id).cloned().unwrap_or_default();
            LinkDoc {
                state: link.state().to_string(),
                connected: link.connected,
                as_of_ms: now.div_euclid(REPORT_AGAIN_MS) * REPORT_AGAIN_MS,
                revoked: p.revoked_ms.is_some(),
                last_seen_ms: minute(p.last_seen_ms),
                version: p.version,
                pending_in: link.pending_in as u64,
                pending_out: link.pending_out as u64,
                last_error: p.last_error.or(link.last_error),
                node_id: p.node_id,
                name: p.name,
                area: p.area,
            }
        })
        .collect();
    rt.store.write(move |conn| describe(conn, &docs)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        conn.execute(
            "INSERT INTO sync_peers (node_id, public_key, area, name, relation, enrolled_ms)
             VALUES ('township', 'k', '330723001', '城关镇', 'downstream', 0)",
            [],
        )
        .unwrap();
        conn
    }

    fn report_on(node_id: &str, area: &str) -> StreamRecord {
        StreamRecord {
            seq: 1,
            payload: serde_json::to_vec(&LinkDoc {
                node_id: node_id.into(),
                name: "王宅村".into(),
                area: area.into(),
                state: "connected".into(),
                as_of_ms: 0,
                connected: true,
                revoked: false,
                last_seen_ms: Some(60_000),
                version: Some("0.1.0".into()),
                pending_in: 0,
                pending_out: 3,
                last_error: None,
            })
            .unwrap(),
        }
    }

    #[test]
    fn a_township_reports_its_villages_and_nothing_beyond_its_area() {
        let conn = db();
        let area: AreaCode = "330723001".parse().unwrap();
        let from = FromBelow {
            own: "county",
            via: "township",
            area: &area,
        };
        let ok = land(
            &conn,
            &from,
            "township",
            &report_on("village", "330723001001"),
            0,
        )
        .unwrap();
        assert_eq!(ok, Ok(()));
        let outside = land(
            &conn,
            &from,
            "township",
            &report_on("stranger", "330723002001"),
            0,
        )
        .unwrap();
        assert_eq!(outside, Err("a link outside the sender's area"));
        let about_us = land(
            &conn,
            &from,
            "township",
            &report_on("county", "330723001"),
            0,
        )
        .unwrap();
        assert!(about_us.is_err());
        for garbage in [&b"\x00\xff"[..], b"{}", br#"{"node_id":"x"}"#] {
            let record = StreamRecord {
                seq: 2,
                payload: garbage.to_vec(),
            };
            assert_eq!(
                land(&conn, &from, "township", &record, 0).unwrap(),
                Err("not a link report")
            );
        }
        let listed = below(&conn).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].doc.pending_out, 3);
        conn.execute("UPDATE sync_peers SET revoked_ms = 1", [])
            .unwrap();
        assert!(
            below(&conn).unwrap().is_empty(),
            "a revoked child's reports stop counting"
        );
    }

    #[test]
    fn an_unchanged_report_is_not_sent_again() {
        let conn = db();
        let doc: LinkDoc = serde_json::from_slice(&report_on("v", "330723001001").payload).unwrap();
        assert_eq!(describe(&conn, std::slice::from_ref(&doc)).unwrap(), 1);
        assert_eq!(describe(&conn, std::slice::from_ref(&doc)).unwrap(), 0);
        assert_eq!(own_after(&conn, 0, 10).unwrap().len(), 1);
    }
}
