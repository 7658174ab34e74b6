//! Append-only streams up the tree: each node ships its audit chain and its readings (station
//! descriptions, minute aggregates, recent raw readings; see `telemetry::outbox`) to its upstream in
//! batches, the upstream stores them idempotently and acknowledges, and relays what it holds from
//! below with the origin kept. Cursors per peer, origin and stream make a break cost at most one
//! batch. The audit chain goes first, then each readings stream in turn, this node's own before what
//! it relays.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;
use township_sync::engine::{Frame, PeerInfo, Relation, StreamRecord};

use super::{Runtime, SessionError, links};
use crate::store::StoreError;
use crate::telemetry::{outbox, tree};

/// Stream records shipped per batch at most.
pub const BATCH: i64 = 500;
/// Payload bytes per batch at most (a single larger record goes alone): a link that breaks after
/// 64 KB still carries a whole batch and its acknowledgement.
pub const BATCH_BYTES: usize = 24 * 1024;

/// The longest prefix of `records` within [`BATCH_BYTES`], and never nothing.
fn within_budget(mut records: Vec<StreamRecord>) -> Vec<StreamRecord> {
    let mut bytes = 0usize;
    let keep = records
        .iter()
        .position(|r| {
            bytes += r.payload.len() + 16;
            bytes > BATCH_BYTES
        })
        .map_or(records.len(), |i| i.max(1));
    records.truncate(keep);
    records
}
/// Most records a batch from below may carry; more closes nothing but is ignored.
const MAX_BATCH_FROM_BELOW: usize = 10_000;
pub const AUDIT: &str = "audit";
/// The streams in the order they go up: the audit chain, link reports, then readings, raw ones
/// last.
pub const ORDER: [&str; 5] = [
    AUDIT,
    links::LINKS,
    outbox::STATIONS,
    outbox::MINUTES,
    outbox::RAW,
];

fn cursor(conn: &Connection, peer: &str, origin: &str, stream: &str) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT acked FROM stream_cursors WHERE peer = ?1 AND origin = ?2 AND stream = ?3",
        )?
        .query_row(params![peer, origin, stream], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// What to send the upstream next.
#[derive(Debug)]
pub enum Next {
    Batch(Frame),
    /// This node's own `stream` has nothing to send up to `upto` (raw readings past the window):
    /// move the cursor there and look again.
    Skip {
        stream: &'static str,
        upto: i64,
    },
    Nothing,
}

fn batch(stream: &str, origin: &str, records: Vec<StreamRecord>) -> Next {
    Next::Batch(Frame::StreamBatch {
        stream: stream.into(),
        origin: origin.to_string(),
        records: within_budget(records),
    })
}

/// The next batch the upstream `peer` has not confirmed: stream by stream in [`ORDER`], this
/// node's own records first, then what downstream nodes shipped here, relayed with their origin.
pub fn next_batch_in(
    conn: &Connection,
    own: &str,
    peer: &str,
    now_ms: i64,
    raw_window_ms: i64,
) -> Result<Next, StoreError> {
    for stream in ORDER {
        let after = cursor(conn, peer, own, stream)?;
        if stream == AUDIT {
            let records: Vec<StreamRecord> = crate::audit::chain_after(conn, after, BATCH)?
                .into_iter()
                .map(|(seq, payload)| StreamRecord { seq, payload })
                .collect();
            if !records.is_empty() {
                return Ok(batch(stream, own, records));
            }
        } else if stream == links::LINKS {
            let records = links::own_after(conn, after, BATCH)?;
            if !records.is_empty() {
                return Ok(batch(stream, own, records));
            }
        } else {
            match outbox::own_after(conn, stream, after, BATCH, now_ms, raw_window_ms)? {
                outbox::Own::Records(records) => return Ok(batch(stream, own, records)),
                outbox::Own::SkipTo(upto) => return Ok(Next::Skip { stream, upto }),
                outbox::Own::Nothing => {}
            }
        }
        let origins: Vec<String> = conn
            .prepare_cached(
                "SELECT DISTINCT origin FROM stream_records WHERE stream = ?1 ORDER BY origin",
            )?
            .query_map([stream], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for origin in origins {
            let after = cursor(conn, peer, &origin, stream)?;
            let mut stmt = conn.prepare_cached(
                "SELECT seq, payload FROM stream_records WHERE origin = ?1 AND stream = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?;
            let records: Vec<StreamRecord> = stmt
                .query_map(params![origin, stream, after, BATCH], |r| {
                    Ok(StreamRecord {
                        seq: r.get(0)?,
                        payload: r.get(1)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            if !records.is_empty() {
                return Ok(batch(stream, &origin, records));
            }
        }
    }
    Ok(Next::Nothing)
}

/// Stores a batch from a downstream node (idempotently), to check or relay; returns the highest
/// sequence number in it.
pub fn store_batch(
    conn: &Connection,
    via: &str,
    origin: &str,
    stream: &str,
    records: &[StreamRecord],
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO stream_records (origin, stream, seq, payload, via, received_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for r in records {
        stmt.execute(params![origin, stream, r.seq, r.payload, via, now_ms])?;
    }
    Ok(records.iter().map(|r| r.seq).max())
}

/// Records that `peer` confirmed `origin`'s `stream` up to `upto`; a cursor never moves back.
/// Readings and link reports relayed from below are kept only until the upstream has them (the
/// audit chain stays: it is checked and shown here).
pub fn record_ack(
    conn: &Connection,
    peer: &str,
    origin: &str,
    stream: &str,
    upto: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO stream_cursors (peer, origin, stream, acked) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(peer, origin, stream) DO UPDATE SET acked = max(acked, excluded.acked)",
    )?
    .execute(params![peer, origin, stream, upto])?;
    if tree::is_tree_stream(stream) {
        conn.prepare_cached(
            "DELETE FROM stream_records WHERE origin = ?1 AND stream = ?2 AND seq <= ?3",
        )?
        .execute(params![origin, stream, upto])?;
    }
    Ok(())
}

/// Lands a readings batch from a child and, on a node with an upstream, keeps what was stored to
/// relay it (only what passed the checks goes further up).
pub fn land_readings(
    conn: &Connection,
    below: &tree::FromBelow<'_>,
    relay: bool,
    origin: &str,
    stream: &str,
    records: Vec<StreamRecord>,
    now_ms: i64,
) -> Result<tree::Landed, StoreError> {
    let landed = tree::land(conn, below, origin, stream, &records, now_ms)?;
    if relay && !landed.kept.is_empty() {
        // A batch sent again after the upstream already confirmed it would otherwise wait here
        // for ever: its records lie behind the cursor.
        let relayed: i64 = conn
            .prepare_cached(
                "SELECT coalesce(max(acked), 0) FROM stream_cursors WHERE origin = ?1 AND stream = ?2",
            )?
            .query_row(params![origin, stream], |r| r.get(0))?;
        let kept: std::collections::HashSet<i64> = landed.kept.iter().copied().collect();
        let kept: Vec<StreamRecord> = records
            .into_iter()
            .filter(|r| r.seq > relayed && kept.contains(&r.seq))
            .collect();
        store_batch(conn, below.via, origin, stream, &kept, now_ms)?;
    }
    Ok(landed)
}

/// The upstream confirmed `origin`'s `stream` up to `upto`: the cursor moves, and what this node
/// queued of its own for it (raw readings) is dropped.
pub fn ack_from_upstream(
    conn: &Connection,
    own: &str,
    upstream: &str,
    origin: &str,
    stream: &str,
    upto: i64,
) -> Result<(), StoreError> {
    record_ack(conn, upstream, origin, stream, upto)?;
    if origin == own {
        outbox::confirmed(conn, stream, upto)?;
    }
    Ok(())
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The next batch for the upstream, if any.
pub async fn next_batch(rt: &Runtime, upstream: &str) -> Option<Frame> {
    let window = millis(rt.config.sync.raw_readings_window);
    // Each skip moves a cursor forward over at most one batch's worth of old raw readings.
    for _ in 0..1000 {
        let (own, peer, now) = (
            rt.node.node_id.clone(),
            upstream.to_string(),
            rt.clock.now_ms(),
        );
        let next = rt
            .store
            .read(move |conn| next_batch_in(conn, &own, &peer, now, window))
            .await;
        match next {
            Ok(Next::Batch(frame)) => return Some(frame),
            Ok(Next::Nothing) => return None,
            Ok(Next::Skip { stream, upto }) => {
                let (own, peer) = (rt.node.node_id.clone(), upstream.to_string());
                if let Err(e) = rt
                    .store
                    .write(move |conn| ack_from_upstream(conn, &own, &peer, &own, stream, upto))
                    .await
                {
                    tracing::warn!(error = %e, "could not move a stream cursor");
                    return None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the next stream batch");
                return None;
            }
        }
    }
    None
}

/// Stores stream records from a downstream node and acknowledges them; persists acknowledgements
/// from the upstream. Only downstream nodes may send batches, and only of the known streams.
pub async fn handle(
    rt: &Runtime,
    peer: &PeerInfo,
    frame: Frame,
    streaming: &mut bool,
) -> Result<Vec<Frame>, SessionError> {
    match frame {
        Frame::StreamBatch {
            stream,
            origin,
            records,
        } => {
            if peer.relation != Relation::Downstream
                || !(stream == AUDIT || tree::is_tree_stream(&stream))
                || records.len() > MAX_BATCH_FROM_BELOW
            {
                return Ok(Vec::new());
            }
            let (via, area, now, from) = (
                peer.node_id.clone(),
                peer.area.clone(),
                rt.clock.now_ms(),
                origin.clone(),
            );
            let (own, relay) = (rt.node.node_id.clone(), rt.upstream.is_some());
            let ctx = rt.write_ctx.clone();
            let name = stream.clone();
            let upto = rt
                .store
                .write(move |conn| {
                    if name == AUDIT {
                        let upto = store_batch(conn, &via, &from, AUDIT, &records, now)?;
                        // Checked where it lands, in the same transaction: a chain altered on its
                        // way up is flagged before anything is relayed further.
                        if let Some(fault) = crate::audit::relayed::check(conn, &from, now)? {
                            tracing::error!(origin = %from, via = %via, seq = fault.seq, problem = %fault.problem,
                                "an audit chain from below is broken");
                            ctx.audit(
                                conn,
                                crate::audit::Event::new("sync", "audit.chain_broken", &format!("node:{from}"))
                                    .detail(json!({"seq": fault.seq, "problem": fault.problem, "via": via})),
                            )?;
                        }
                        return Ok::<_, StoreError>(upto);
                    }
                    let below = tree::FromBelow { own: &own, via: &via, area: &area };
                    let landed = land_readings(conn, &below, relay, &from, &name, records, now)?;
                    if landed.refused > 0 {
                        tracing::warn!(origin = %from, via = %via, stream = %name, refused = landed.refused,
                            reason = landed.reason.unwrap_or(""), "readings from below refused");
                        ctx.audit(
                            conn,
                            crate::audit::Event::new(&format!("node:{via}"), "sync.refused", &format!("stream/{name}"))
                                .detail(json!({"origin": from, "refused": landed.refused, "reason": landed.reason})),
                        )?;
                    }
                    Ok(landed.upto)
                })
                .await?;
            Ok(upto
                .map(|upto| Frame::StreamAck {
                    stream,
                    origin,
                    upto,
                })
                .into_iter()
                .collect())
        }
        Frame::StreamAck {
            stream,
            origin,
            upto,
        } => {
            *streaming = false;
            if stream == AUDIT || tree::is_tree_stream(&stream) {
                let (peer_id, own) = (peer.node_id.clone(), rt.node.node_id.clone());
                rt.store
                    .write(move |conn| {
                        ack_from_upstream(conn, &own, &peer_id, &origin, &stream, upto)
                    })
                    .await?;
            }
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrations;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        conn
    }

    fn records(range: std::ops::RangeInclusive<i64>) -> Vec<StreamRecord> {
        range
            .map(|seq| StreamRecord {
                seq,
                payload: format!("{{\"seq\":{seq}}}").into_bytes(),
            })
            .collect()
    }

    fn next(conn: &Connection) -> Next {
        next_batch_in(conn, "township", "county", 0, 0).unwrap()
    }

    fn batch_of(next: Next) -> (String, Vec<i64>) {
        match next {
            Next::Batch(Frame::StreamBatch {
                origin, records, ..
            }) => (origin, records.iter().map(|r| r.seq).collect()),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn relayed_records_go_up_in_bounded_batches_and_acks_move_the_cursor() {
        let conn = db();
        let total = BATCH + 20;
        store_batch(&conn, "village", "village", AUDIT, &records(1..=total), 0).unwrap();
        let (origin, seqs) = batch_of(next(&conn));
        assert_eq!(origin, "village");
        assert_eq!(seqs.len() as i64, BATCH);
        assert_eq!(seqs[0], 1);
        record_ack(&conn, "county", "village", AUDIT, BATCH).unwrap();
        let (_, rest) = batch_of(next(&conn));
        assert_eq!(rest, ((BATCH + 1)..=total).collect::<Vec<_>>());
        record_ack(&conn, "county", "village", AUDIT, total).unwrap();
        // An old acknowledgement arriving late does not move the cursor back.
        record_ack(&conn, "county", "village", AUDIT, 3).unwrap();
        assert!(matches!(
            next_batch_in(&conn, "township", "county", 0, 0).unwrap(),
            Next::Nothing
        ));
    }

    #[test]
    fn a_replayed_batch_is_stored_once_and_keeps_the_first_payload() {
        let conn = db();
        assert_eq!(
            store_batch(&conn, "village", "village", AUDIT, &records(1..=5), 0).unwrap(),
            Some(5)
        );
        let mut forged = records(3..=3);
        forged[0].payload = b"rewritten".to_vec();
        store_batch(&conn, "village", "village", AUDIT, &forged, 1).unwrap();
        let payload: Vec<u8> = conn
            .query_row(
                "SELECT payload FROM stream_records WHERE origin = 'village' AND seq = 3",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(payload, b"{\"seq\":3}");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM stream_records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            store_batch(&conn, "village", "village", AUDIT, &[], 2).unwrap(),
            None
        );
    }
}
