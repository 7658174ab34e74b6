//! This node's readings as append-only streams up the tree: station descriptions, minute aggregates
//! of every series, and raw readings of the last `sync.raw_readings_window`. Each follows the
//! readings sequence (one counter, bumped on every write), so the cursor the upstream acknowledged
//! says exactly what it still lacks. A minute goes up once it is over, and again whenever a late
//! reading changes it: the upstream replaces it by origin, series and minute, so it counts once.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use township_sync::engine::StreamRecord;

use crate::store::StoreError;

/// Stream names on the wire, in the order they go up.
pub const STATIONS: &str = "stations";
pub const MINUTES: &str = "minutes";
pub const RAW: &str = "raw";

const MINUTE_MS: i64 = 60_000;

/// What a node says about one of its stations: enough for the county to list, filter by area and
/// chart it without the node's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationDoc {
    pub device: String,
    pub name: String,
    pub area: String,
    pub driver: String,
    pub interval_s: f64,
    /// The status the node saw when it last described the station (online, stale, faulty, unknown).
    pub status: String,
    pub node_name: String,
    pub points: Vec<PointDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointDoc {
    pub metric: String,
    pub name: Option<String>,
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// One minute of one series, whole (not a delta).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteDoc {
    pub d: String,
    pub m: String,
    pub u: Option<String>,
    /// The minute's start, ms since the epoch.
    pub b: i64,
    pub lo: f64,
    pub hi: f64,
    pub s: f64,
    pub n: i64,
}

/// One raw reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawDoc {
    pub d: String,
    pub m: String,
    pub u: Option<String>,
    pub t: i64,
    pub v: f64,
    /// Quality code (see `store::quality_code`).
    pub q: i64,
}

/// Stores the descriptions that differ from the last ones stored, each under the next number of
/// the readings sequence; unchanged ones keep theirs, so describing costs the link nothing.
pub fn describe(conn: &Connection, stations: &[StationDoc]) -> Result<usize, StoreError> {
    let mut changed = 0;
    for station in stations {
        if keep_description(conn, Described::Station, &station.device, station)? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// The tables of descriptions a node keeps about itself for its upstream, keyed by what they
/// describe, and numbered from the outbox sequence.
#[derive(Debug, Clone, Copy)]
pub enum Described {
    /// `telemetry_stations`, by device.
    Station,
    /// `link_reports` (see `sync::links`), by node id.
    Link,
}

/// Stores `doc` under `key` with the next number of the outbox sequence, unless the same
/// description is already stored; says whether it was new.
pub fn keep_description<T: Serialize>(
    conn: &Connection,
    table: Described,
    key: &str,
    doc: &T,
) -> Result<bool, StoreError> {
    let (table, column) = match table {
        Described::Station => ("telemetry_stations", "device"),
        Described::Link => ("link_reports", "node_id"),
    };
    let payload = serde_json::to_vec(doc).map_err(|e| StoreError::Corrupt {
        what: format!("a row for {table}"),
        verdict: e.to_string(),
    })?;
    let same: bool = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM {table} WHERE {column} = ?1 AND payload = ?2"
        ))?
        .query_row(params![key, payload], |r| r.get(0))?;
    if same {
        return Ok(false);
    }
    let seq: i64 = conn
        .prepare_cached("UPDATE outbox_seq SET last = last + 1 WHERE id = 1 RETURNING last")?
        .query_row([], |r| r.get(0))?;
    conn.prepare_cached(&format!(
        "INSERT INTO {table} ({column}, seq, payload) VALUES (?1, ?2, ?3)
         ON CONFLICT ({column}) DO UPDATE SET seq = excluded.seq, payload = excluded.payload"
    ))?
    .execute(params![key, seq, payload])?;
    Ok(true)
}

/// The upstream has this node's `stream` up to `upto`: queued raw readings it has are dropped.
pub fn confirmed(conn: &Connection, stream: &str, upto: i64) -> Result<(), StoreError> {
    if stream == RAW {
        conn.prepare_cached("DELETE FROM raw_outbox WHERE seq <= ?1")?
            .execute([upto])?;
    }
    Ok(())
}

/// What this node has for one of its streams past a cursor.
#[derive(Debug, PartialEq)]
pub enum Own {
    /// Records to ship, in sequence order.
    Records(Vec<StreamRecord>),
    /// Nothing to ship up to this sequence number (raw readings older than the window): the
    /// cursor may move there without the upstream hearing of them.
    SkipTo(i64),
    Nothing,
}

fn encode<T: Serialize>(doc: &T) -> rusqlite::Result<Vec<u8>> {
    serde_json::to_vec(doc).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// This node's records of `stream` after `after`, at most `limit`. Minutes stop at the first one
/// still open at `now_ms`; raw readings older than `raw_window_ms` (0: none go up) are left out.
pub fn own_after(
    conn: &Connection,
    stream: &str,
    after: i64,
    limit: i64,
    now_ms: i64,
    raw_window_ms: i64,
) -> Result<Own, StoreError> {
    let records: Vec<StreamRecord> = match stream {
        STATIONS => conn
            .prepare_cached(
                "SELECT seq, payload FROM telemetry_stations WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![after, limit], |r| {
                Ok(StreamRecord {
                    seq: r.get(0)?,
                    payload: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?,
        MINUTES => {
            let mut stmt = conn.prepare_cached(
                "SELECT m.seq, s.device, s.metric, s.unit, m.bucket, m.min, m.max, m.sum, m.count
                 FROM telemetry_minute m JOIN telemetry_series s ON s.id = m.series
                 WHERE m.seq > ?1 ORDER BY m.seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| {
                let doc = MinuteDoc {
                    d: r.get(1)?,
                    m: r.get(2)?,
                    u: r.get(3)?,
                    b: r.get(4)?,
                    lo: r.get(5)?,
                    hi: r.get(6)?,
                    s: r.get(7)?,
                    n: r.get(8)?,
                };
                Ok((r.get::<_, i64>(0)?, doc))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, doc) = row?;
                // An open minute would go up again at its next reading; it waits until it is over,
                // and so does everything numbered after it (at most a minute).
                if doc.b + MINUTE_MS > now_ms {
                    break;
                }
                out.push(StreamRecord {
                    seq,
                    payload: encode(&doc)?,
                });
            }
            out
        }
        RAW => {
            if raw_window_ms <= 0 {
                return Ok(Own::Nothing);
            }
            let since = now_ms.saturating_sub(raw_window_ms);
            // A queued reading whose row retention already pruned comes back without a value.
            let mut stmt = conn.prepare_cached(
                "SELECT o.seq, s.device, s.metric, s.unit, o.t, r.value, r.quality
                 FROM raw_outbox o JOIN telemetry_series s ON s.id = o.series
                 LEFT JOIN telemetry_raw r ON r.series = o.series AND r.t = o.t
                 WHERE o.seq > ?1 ORDER BY o.seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| {
                let doc = RawDoc {
                    d: r.get(1)?,
                    m: r.get(2)?,
                    u: r.get(3)?,
                    t: r.get(4)?,
                    v: 0.0,
                    q: 0,
                };
                let value: Option<(f64, i64)> = r.get::<_, Option<f64>>(5)?.zip(r.get(6)?);
                Ok((
                    r.get::<_, i64>(0)?,
                    value.map(|(v, q)| RawDoc { v, q, ..doc }),
                ))
            })?;
            let mut out = Vec::new();
            let mut last = None;
            for row in rows {
                let (seq, doc) = row?;
                last = Some(seq);
                if let Some(doc) = doc.filter(|d| d.t >= since) {
                    out.push(StreamRecord {
                        seq,
                        payload: encode(&doc)?,
                    });
                }
            }
            if out.is_empty()
                && let Some(last) = last
            {
                return Ok(Own::SkipTo(last));
            }
            out
        }
        _ => Vec::new(),
    };
    Ok(if records.is_empty() {
        Own::Nothing
    } else {
        Own::Records(records)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::store::{SeriesIds, insert_batch};
    use township_drivers::{Quality, Reading};

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        conn
    }

    fn reading(t: i64, v: f64) -> Reading {
        Reading {
            device: "rain-01".into(),
            metric: "rainfall".into(),
            time_ms: t,
            value: v,
            unit: Some("mm".into()),
            quality: Quality::Good,
        }
    }

    fn minutes(own: Own) -> Vec<(i64, MinuteDoc)> {
        match own {
            Own::Records(r) => r
                .into_iter()
                .map(|r| (r.seq, serde_json::from_slice(&r.payload).unwrap()))
                .collect(),
            Own::Nothing => Vec::new(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_minute_goes_up_once_it_is_over_and_again_when_a_late_reading_changes_it() {
        let conn = db();
        insert_batch(
            &conn,
            &[reading(0, 1.0), reading(30_000, 2.0), reading(61_000, 5.0)],
            &SeriesIds::default(),
            false,
        )
        .unwrap();
        // At 90 s the second minute is still open: only the first goes.
        let first = minutes(own_after(&conn, MINUTES, 0, 500, 90_000, 0).unwrap());
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].1.b, first[0].1.s, first[0].1.n), (0, 3.0, 2));
        let cursor = first[0].0;
        assert_eq!(
            minutes(own_after(&conn, MINUTES, cursor, 500, 121_000, 0).unwrap()).len(),
            1
        );
        // A late reading for the first minute numbers it again, whole.
        insert_batch(
            &conn,
            &[reading(45_000, 4.0)],
            &crate::telemetry::store::all_series(&conn).unwrap(),
            false,
        )
        .unwrap();
        let again = minutes(own_after(&conn, MINUTES, cursor, 500, 121_000, 0).unwrap());
        let late = again.iter().find(|(_, m)| m.b == 0).unwrap();
        assert!(late.0 > cursor);
        assert_eq!((late.1.s, late.1.n, late.1.hi), (7.0, 3, 4.0));
    }

    #[test]
    fn raw_readings_older_than_the_window_are_skipped_not_sent() {
        let conn = db();
        insert_batch(
            &conn,
            &[reading(1_000, 1.0), reading(2_000, 2.0)],
            &SeriesIds::default(),
            true,
        )
        .unwrap();
        assert_eq!(
            own_after(&conn, RAW, 0, 500, 100_000, 0).unwrap(),
            Own::Nothing,
            "a window of 0 sends no raw readings"
        );
        let Own::Records(recent) = own_after(&conn, RAW, 0, 500, 5_000, 10_000).unwrap() else {
            panic!("expected records")
        };
        assert_eq!(recent.len(), 2);
        let Own::SkipTo(to) = own_after(&conn, RAW, 0, 500, 100_000, 10_000).unwrap() else {
            panic!("expected a skip")
        };
        assert_eq!(
            own_after(&conn, RAW, to, 500, 100_000, 10_000).unwrap(),
            Own::Nothing
        );
        // Confirmed readings leave the queue; the readings themselves stay.
        confirmed(&conn, RAW, to).unwrap();
        let queued: i64 = conn
            .query_row("SELECT count(*) FROM raw_outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(queued, 0);
        assert_eq!(crate::telemetry::store::raw_count(&conn).unwrap(), 2);
        // A node without an upstream queues nothing.
        insert_batch(
            &conn,
            &[reading(3_000, 3.0)],
            &crate::telemetry::store::all_series(&conn).unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(
            own_after(&conn, RAW, to, 500, 5_000, 10_000).unwrap(),
            Own::Nothing
        );
    }

    #[test]
    fn an_unchanged_description_keeps_its_number() {
        let conn = db();
        let mut station = StationDoc {
            device: "rain-01".into(),
            name: "雨量站".into(),
            area: "330723001001".into(),
            driver: "modbus_rtu".into(),
            interval_s: 60.0,
            status: "online".into(),
            node_name: "village".into(),
            points: Vec::new(),
        };
        assert_eq!(describe(&conn, std::slice::from_ref(&station)).unwrap(), 1);
        assert_eq!(describe(&conn, std::slice::from_ref(&station)).unwrap(), 0);
        station.status = "faulty".into();
        assert_eq!(describe(&conn, std::slice::from_ref(&station)).unwrap(), 1);
        let Own::Records(r) = own_after(&conn, STATIONS, 0, 500, 0, 0).unwrap() else {
            panic!()
        };
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].seq, 2);
    }
}
