//! Append-only streams up the tree: each node ships its audit chain to its upstream in batches, the
//! upstream stores them idempotently (by origin and sequence number) and acknowledges, and relays
//! what it holds from below with the origin kept. Cursors per peer and origin make a break cost at
//! most one batch.

use rusqlite::{Connection, OptionalExtension, params};
use township_sync::engine::{Frame, PeerInfo, Relation, StreamRecord};

use super::{Runtime, SessionError};
use crate::store::StoreError;

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
const AUDIT: &str = "audit";

fn cursor(conn: &Connection, peer: &str, origin: &str) -> Result<i64, StoreError> {
    Ok(conn
        .query_row(
            "SELECT acked FROM stream_cursors WHERE peer = ?1 AND origin = ?2 AND stream = 'audit'",
            params![peer, origin],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// The next batch the upstream `peer` has not confirmed: this node's own audit chain first, then
/// what downstream nodes shipped here, relayed with their origin.
pub fn next_batch_in(
    conn: &Connection,
    own: &str,
    peer: &str,
) -> Result<Option<Frame>, StoreError> {
    let records: Vec<StreamRecord> =
        crate::audit::chain_after(conn, cursor(conn, peer, own)?, BATCH)?
            .into_iter()
            .map(|(seq, payload)| StreamRecord { seq, payload })
            .collect();
    let records = within_budget(records);
    if !records.is_empty() {
        return Ok(Some(Frame::StreamBatch {
            stream: AUDIT.into(),
            origin: own.to_string(),
            records,
        }));
    }
    let origins: Vec<String> = conn
        .prepare_cached(
            "SELECT DISTINCT origin FROM stream_records WHERE stream = 'audit' ORDER BY origin",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for origin in origins {
        let after = cursor(conn, peer, &origin)?;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, payload FROM stream_records WHERE origin = ?1 AND stream = 'audit' AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let records: Vec<StreamRecord> = stmt
            .query_map(params![origin, after, BATCH], |r| {
                Ok(StreamRecord {
                    seq: r.get(0)?,
                    payload: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let records = within_budget(records);
        if !records.is_empty() {
            return Ok(Some(Frame::StreamBatch {
                stream: AUDIT.into(),
                origin,
                records,
            }));
        }
    }
    Ok(None)
}

/// Stores a batch from a downstream node (idempotently); returns the highest sequence number in it.
pub fn store_batch(
    conn: &Connection,
    via: &str,
    origin: &str,
    records: &[StreamRecord],
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO stream_records (origin, stream, seq, payload, via, received_ms) VALUES (?1, 'audit', ?2, ?3, ?4, ?5)",
    )?;
    for r in records {
        stmt.execute(params![origin, r.seq, r.payload, via, now_ms])?;
    }
    Ok(records.iter().map(|r| r.seq).max())
}

/// Records that `peer` confirmed `origin`'s stream up to `upto`; a cursor never moves back.
pub fn record_ack(
    conn: &Connection,
    peer: &str,
    origin: &str,
    upto: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO stream_cursors (peer, origin, stream, acked) VALUES (?1, ?2, 'audit', ?3)
         ON CONFLICT(peer, origin, stream) DO UPDATE SET acked = max(acked, excluded.acked)",
    )?
    .execute(params![peer, origin, upto])?;
    Ok(())
}

/// The next batch for the upstream, if any.
pub async fn next_batch(rt: &Runtime, upstream: &str) -> Option<Frame> {
    let (own, peer) = (rt.node.node_id.clone(), upstream.to_string());
    match rt
        .store
        .read(move |conn| next_batch_in(conn, &own, &peer))
        .await
    {
        Ok(batch) => batch,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the next stream batch");
            None
        }
    }
}

/// Stores stream records from a downstream node and acknowledges them; persists acknowledgements
/// from the upstream. Only the audit stream exists, and only downstream nodes may send batches.
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
                || stream != AUDIT
                || records.len() > MAX_BATCH_FROM_BELOW
            {
                return Ok(Vec::new());
            }
            let (via, now, from) = (peer.node_id.clone(), rt.clock.now_ms(), origin.clone());
            let ctx = rt.write_ctx.clone();
            let upto = rt
                .store
                .write(move |conn| {
                    let upto = store_batch(conn, &via, &from, &records, now)?;
                    // Checked where it lands, in the same transaction: a chain altered on its way
                    // up is flagged before anything is relayed further.
                    if let Some(fault) = crate::audit::relayed::check(conn, &from, now)? {
                        tracing::error!(origin = %from, via = %via, seq = fault.seq, problem = %fault.problem,
                            "an audit chain from below is broken");
                        ctx.audit(
                            conn,
                            crate::audit::Event::new("sync", "audit.chain_broken", &format!("node:{from}"))
                                .detail(serde_json::json!({"seq": fault.seq, "problem": fault.problem, "via": via})),
                        )?;
                    }
                    Ok::<_, StoreError>(upto)
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
            if stream == AUDIT {
                let peer_id = peer.node_id.clone();
                rt.store
                    .write(move |conn| record_ack(conn, &peer_id, &origin, upto))
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

    fn batch_of(frame: Option<Frame>) -> (String, Vec<i64>) {
        match frame {
            Some(Frame::StreamBatch {
                origin, records, ..
            }) => (origin, records.iter().map(|r| r.seq).collect()),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn relayed_records_go_up_in_bounded_batches_and_acks_move_the_cursor() {
        let conn = db();
        let total = BATCH + 20;
        store_batch(&conn, "village", "village", &records(1..=total), 0).unwrap();
        let (origin, seqs) = batch_of(next_batch_in(&conn, "township", "county").unwrap());
        assert_eq!(origin, "village");
        assert_eq!(seqs.len() as i64, BATCH);
        assert_eq!(seqs[0], 1);
        record_ack(&conn, "county", "village", BATCH).unwrap();
        let (_, rest) = batch_of(next_batch_in(&conn, "township", "county").unwrap());
        assert_eq!(rest, ((BATCH + 1)..=total).collect::<Vec<_>>());
        record_ack(&conn, "county", "village", total).unwrap();
        // An old acknowledgement arriving late does not move the cursor back.
        record_ack(&conn, "county", "village", 3).unwrap();
        assert!(
            next_batch_in(&conn, "township", "county")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_replayed_batch_is_stored_once_and_keeps_the_first_payload() {
        let conn = db();
        assert_eq!(
            store_batch(&conn, "village", "village", &records(1..=5), 0).unwrap(),
            Some(5)
        );
        let mut forged = records(3..=3);
        forged[0].payload = b"rewritten".to_vec();
        store_batch(&conn, "village", "village", &forged, 1).unwrap();
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
            store_batch(&conn, "village", "village", &[], 2).unwrap(),
            None
        );
    }
}
