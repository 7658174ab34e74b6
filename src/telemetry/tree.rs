//! Readings from the nodes below: station descriptions, minute aggregates and raw readings that
//! arrive on the streams of `outbox` (and, landed through here under the same origin rule, the link
//! reports of `sync::links`), checked against the authority of the child that sent them,
//! stored by origin (one village's `rain-01` is not another's), and read back for the sensors API.
//!
//! Authority rule: a child speaks for itself and for the nodes below it, never for this node or for
//! another node enrolled here; a station counts only when its area lies inside the sending child's
//! area, and readings count only for a station so described. The same area check runs again where
//! the API reads them (the station's child must still be enrolled, unrevoked, over that area), so a
//! child re-enrolled over a smaller area stops showing what lies outside it.

use rusqlite::{Connection, OptionalExtension, params};
use township_sync::AreaCode;
use township_sync::engine::StreamRecord;

use super::outbox::{MINUTES, MinuteDoc, RAW, RawDoc, STATIONS, StationDoc};
use crate::store::StoreError;

/// Most bytes one record from below may hold; a description with many points fits easily.
const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Readings stamped further ahead than this are a broken clock, not data.
const FUTURE_SLACK_MS: i64 = 24 * 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// The child a batch came from.
pub struct FromBelow<'a> {
    /// This node's id: no child may name it as an origin.
    pub own: &'a str,
    pub via: &'a str,
    pub area: &'a AreaCode,
}

/// What landing one batch did.
#[derive(Debug, Default, PartialEq)]
pub struct Landed {
    /// Sequence numbers of the records stored (what a township relays further up).
    pub kept: Vec<i64>,
    /// The highest sequence number in the batch, stored or not: what the child hears acknowledged,
    /// so a refused record does not come back forever.
    pub upto: Option<i64>,
    pub refused: usize,
    /// Why the first refused record was refused.
    pub reason: Option<&'static str>,
}

impl Landed {
    fn refuse(&mut self, reason: &'static str) {
        self.refused += 1;
        self.reason.get_or_insert(reason);
    }
}

/// Whether `stream` is one of the streams landed here (readings, and link reports).
pub fn is_tree_stream(stream: &str) -> bool {
    matches!(stream, STATIONS | MINUTES | RAW | crate::sync::links::LINKS)
}

fn origin_refusal(
    conn: &Connection,
    from: &FromBelow<'_>,
    origin: &str,
) -> Result<Option<&'static str>, StoreError> {
    if origin == from.own {
        return Ok(Some("names this node as the origin"));
    }
    if origin != from.via {
        let enrolled_here: bool = conn
            .prepare_cached(
                "SELECT count(*) FROM sync_peers WHERE node_id = ?1 AND relation = 'downstream'",
            )?
            .query_row([origin], |r| r.get(0))?;
        if enrolled_here {
            return Ok(Some("speaks for another node enrolled here"));
        }
    }
    Ok(None)
}

/// Checks and stores one batch of a readings stream from a child. Records that fail a check are
/// counted and dropped, never stored; the rest land idempotently, so a batch sent twice changes
/// nothing the second time.
pub fn land(
    conn: &Connection,
    from: &FromBelow<'_>,
    origin: &str,
    stream: &str,
    records: &[StreamRecord],
    now_ms: i64,
) -> Result<Landed, StoreError> {
    let mut landed = Landed {
        upto: records.iter().map(|r| r.seq).max(),
        ..Landed::default()
    };
    if let Some(reason) = origin_refusal(conn, from, origin)? {
        landed.refused = records.len();
        landed.reason = Some(reason);
        return Ok(landed);
    }
    for record in records {
        if record.payload.len() > MAX_RECORD_BYTES {
            landed.refuse("a record too large");
            continue;
        }
        let verdict = match stream {
            STATIONS => land_station(conn, from, origin, record, now_ms)?,
            MINUTES => land_minute(conn, from, origin, record, now_ms)?,
            RAW => land_raw(conn, from, origin, record, now_ms)?,
            crate::sync::links::LINKS => {
                crate::sync::links::land(conn, from, origin, record, now_ms)?
            }
            _ => Err("an unknown stream"),
        };
        match verdict {
            Ok(()) => landed.kept.push(record.seq),
            Err(reason) => landed.refuse(reason),
        }
    }
    Ok(landed)
}

type Verdict = Result<(), &'static str>;

fn land_station(
    conn: &Connection,
    from: &FromBelow<'_>,
    origin: &str,
    record: &StreamRecord,
    now_ms: i64,
) -> Result<Verdict, StoreError> {
    let Ok(doc) = serde_json::from_slice::<StationDoc>(&record.payload) else {
        return Ok(Err("not a station description"));
    };
    if !super::config::device_id_ok(&doc.device)
        || doc.name.chars().count() > 200
        || doc.node_name.chars().count() > 200
        || doc.points.len() > 256
        || doc
            .points
            .iter()
            .any(|p| p.metric.is_empty() || p.metric.len() > 64)
    {
        return Ok(Err("a malformed station description"));
    }
    let Ok(area) = doc.area.parse::<AreaCode>() else {
        return Ok(Err("a station without a valid area"));
    };
    if !from.area.contains(&area) {
        return Ok(Err("a station outside the sender's area"));
    }
    keep_newest(
        conn,
        Newest::Station,
        origin,
        &doc.device,
        from.via,
        &area,
        record,
        now_ms,
    )?;
    Ok(Ok(()))
}

/// The tables of descriptions from below, kept per origin and key, newest number wins.
#[derive(Debug, Clone, Copy)]
pub enum Newest {
    /// `tree_stations`, by device.
    Station,
    /// `tree_links` (see `sync::links`), by node id.
    Link,
}

/// Keeps a description from below unless a newer one (by the origin's number) is held: a stale
/// copy arriving late changes nothing.
#[allow(clippy::too_many_arguments)]
pub fn keep_newest(
    conn: &Connection,
    table: Newest,
    origin: &str,
    key: &str,
    via: &str,
    area: &AreaCode,
    record: &StreamRecord,
    now_ms: i64,
) -> Result<(), StoreError> {
    let (table, column) = match table {
        Newest::Station => ("tree_stations", "device"),
        Newest::Link => ("tree_links", "node_id"),
    };
    conn.prepare_cached(&format!(
        "INSERT INTO {table} (origin, {column}, via, area, seq, payload, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (origin, {column}) DO UPDATE SET via = excluded.via, area = excluded.area,
             seq = excluded.seq, payload = excluded.payload, received_ms = excluded.received_ms
         WHERE excluded.seq > {table}.seq"
    ))?
    .execute(params![
        origin,
        key,
        via,
        area.to_string(),
        record.seq,
        record.payload,
        now_ms
    ])?;
    Ok(())
}

/// The series of a described station inside the sender's area, created on first use.
fn series_for(
    conn: &Connection,
    from: &FromBelow<'_>,
    origin: &str,
    device: &str,
    metric: &str,
    unit: Option<&str>,
) -> Result<Result<i64, &'static str>, StoreError> {
    if metric.is_empty() || metric.len() > 64 || unit.is_some_and(|u| u.len() > 32) {
        return Ok(Err("a malformed series"));
    }
    let area: Option<String> = conn
        .prepare_cached("SELECT area FROM tree_stations WHERE origin = ?1 AND device = ?2")?
        .query_row([origin, device], |r| r.get(0))
        .optional()?;
    let Some(area) = area else {
        return Ok(Err("readings of a station never described"));
    };
    if !area
        .parse::<AreaCode>()
        .is_ok_and(|a| from.area.contains(&a))
    {
        return Ok(Err("readings outside the sender's area"));
    }
    if let Some(id) = conn
        .prepare_cached(
            "SELECT id FROM tree_series WHERE origin = ?1 AND device = ?2 AND metric = ?3",
        )?
        .query_row([origin, device, metric], |r| r.get(0))
        .optional()?
    {
        return Ok(Ok(id));
    }
    conn.prepare_cached(
        "INSERT INTO tree_series (origin, device, metric, unit) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![origin, device, metric, unit])?;
    Ok(Ok(conn.last_insert_rowid()))
}

fn land_minute(
    conn: &Connection,
    from: &FromBelow<'_>,
    origin: &str,
    record: &StreamRecord,
    now_ms: i64,
) -> Result<Verdict, StoreError> {
    let Ok(doc) = serde_json::from_slice::<MinuteDoc>(&record.payload) else {
        return Ok(Err("not a minute aggregate"));
    };
    let sane = [doc.lo, doc.hi, doc.s].iter().all(|v| v.is_finite())
        && doc.lo <= doc.hi
        && (1..=100_000_000).contains(&doc.n)
        && doc.b.rem_euclid(MINUTE_MS) == 0
        && doc.b >= 0
        && doc.b <= now_ms.saturating_add(FUTURE_SLACK_MS);
    if !sane {
        return Ok(Err("a malformed minute aggregate"));
    }
    let series = match series_for(conn, from, origin, &doc.d, &doc.m, doc.u.as_deref())? {
        Ok(id) => id,
        Err(reason) => return Ok(Err(reason)),
    };
    let changed = conn
        .prepare_cached(
            "INSERT INTO tree_minute (series, bucket, min, max, sum, count, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (series, bucket) DO UPDATE SET min = excluded.min, max = excluded.max,
             sum = excluded.sum, count = excluded.count, seq = excluded.seq
         WHERE excluded.seq > tree_minute.seq",
        )?
        .execute(params![
            series, doc.b, doc.lo, doc.hi, doc.s, doc.n, record.seq
        ])?;
    if changed == 0 {
        // An older version of a minute held newer: nothing to show either.
        return Ok(Ok(()));
    }
    conn.prepare_cached(
        "UPDATE tree_series SET latest_t = ?2, latest_value = ?3, latest_quality = 0
         WHERE id = ?1 AND (latest_t IS NULL OR latest_t <= ?2)",
    )?
    .execute(params![series, doc.b, doc.s / doc.n as f64])?;
    Ok(Ok(()))
}

fn land_raw(
    conn: &Connection,
    from: &FromBelow<'_>,
    origin: &str,
    record: &StreamRecord,
    now_ms: i64,
) -> Result<Verdict, StoreError> {
    let Ok(doc) = serde_json::from_slice::<RawDoc>(&record.payload) else {
        return Ok(Err("not a raw reading"));
    };
    let sane = doc.v.is_finite()
        && (0..=3).contains(&doc.q)
        && doc.t >= 0
        && doc.t <= now_ms.saturating_add(FUTURE_SLACK_MS);
    if !sane {
        return Ok(Err("a malformed raw reading"));
    }
    let series = match series_for(conn, from, origin, &doc.d, &doc.m, doc.u.as_deref())? {
        Ok(id) => id,
        Err(reason) => return Ok(Err(reason)),
    };
    conn.prepare_cached(
        "INSERT INTO tree_raw (series, t, value, quality) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![series, doc.t, doc.v, doc.q])?;
    conn.prepare_cached(
        "UPDATE tree_series SET latest_t = ?2, latest_value = ?3, latest_quality = ?4
         WHERE id = ?1 AND (latest_t IS NULL OR latest_t <= ?2)",
    )?
    .execute(params![series, doc.t, doc.v, doc.q])?;
    Ok(Ok(()))
}

/// One series of a station below, with its newest value.
#[derive(Debug, Clone)]
pub struct TreeSeries {
    pub id: i64,
    pub metric: String,
    pub unit: Option<String>,
    /// Time, value and quality code of the newest reading (or the newest minute's mean).
    pub latest: Option<(i64, f64, i64)>,
}

/// A station of a node below, as its origin last described it.
#[derive(Debug, Clone)]
pub struct TreeStation {
    pub origin: String,
    pub via: String,
    pub area: AreaCode,
    pub received_ms: i64,
    pub doc: StationDoc,
    pub series: Vec<TreeSeries>,
}

impl TreeStation {
    /// The id the API uses: the device's id and its origin, which no device id can contain.
    pub fn api_id(&self) -> String {
        format!("{}@{}", self.doc.device, self.origin)
    }

    /// The newest data from the station, whichever series.
    pub fn last_data(&self) -> Option<i64> {
        self.series
            .iter()
            .filter_map(|s| s.latest.map(|l| l.0))
            .max()
    }

    /// The described metrics in their order, then any others readings came for.
    pub fn metrics(&self) -> Vec<String> {
        let described = self.doc.points.iter().map(|p| p.metric.clone());
        let others = self
            .series
            .iter()
            .filter(|s| self.point(&s.metric).is_none())
            .map(|s| s.metric.clone());
        described.chain(others).collect()
    }

    /// The point as its node described it.
    pub fn point(&self, metric: &str) -> Option<&super::outbox::PointDoc> {
        self.doc.points.iter().find(|p| p.metric == metric)
    }

    pub fn series(&self, metric: &str) -> Option<&TreeSeries> {
        self.series.iter().find(|s| s.metric == metric)
    }
}

/// Children enrolled here, unrevoked, with their areas: what vouches for a description from below
/// where it is read.
pub struct Children(Vec<(String, AreaCode)>);

impl Children {
    pub fn load(conn: &Connection) -> Result<Children, StoreError> {
        Ok(Children(
            conn.prepare_cached(
                "SELECT node_id, area FROM sync_peers WHERE relation = 'downstream' AND revoked_ms IS NULL",
            )?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .filter_map(|row| match row {
                Ok((id, area)) => area.parse().ok().map(|a| Ok((id, a))),
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?,
        ))
    }

    /// Whether what came through child `via` for `area` still counts: the child is enrolled,
    /// unrevoked and over that area.
    pub fn vouch(&self, via: &str, area: &AreaCode) -> bool {
        self.0
            .iter()
            .any(|(id, child)| id == via && child.contains(area))
    }
}

fn read_stations(
    conn: &Connection,
    only: Option<(&str, &str)>,
) -> Result<Vec<TreeStation>, StoreError> {
    let children = Children::load(conn)?;
    let mut stmt = conn.prepare_cached(
        "SELECT origin, device, via, area, payload, received_ms FROM tree_stations
         WHERE (?1 IS NULL OR (origin = ?1 AND device = ?2)) ORDER BY area, origin, device",
    )?;
    let rows = stmt.query_map(params![only.map(|o| o.0), only.map(|o| o.1)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Vec<u8>>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut series_stmt = conn.prepare_cached(
        "SELECT id, metric, unit, latest_t, latest_value, latest_quality FROM tree_series
         WHERE origin = ?1 AND device = ?2 ORDER BY metric",
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (origin, device, via, area, payload, received_ms) = row?;
        let (Ok(area), Ok(doc)) = (
            area.parse::<AreaCode>(),
            serde_json::from_slice::<StationDoc>(&payload),
        ) else {
            continue;
        };
        if !children.vouch(&via, &area) {
            continue;
        }
        let series = series_stmt
            .query_map([&origin, &device], |r| {
                let t: Option<i64> = r.get(3)?;
                let v: Option<f64> = r.get(4)?;
                let q: Option<i64> = r.get(5)?;
                Ok(TreeSeries {
                    id: r.get(0)?,
                    metric: r.get(1)?,
                    unit: r.get(2)?,
                    latest: t.zip(v).map(|(t, v)| (t, v, q.unwrap_or(0))),
                })
            })?
            .collect::<Result<_, _>>()?;
        out.push(TreeStation {
            origin,
            via,
            area,
            received_ms,
            doc,
            series,
        });
    }
    Ok(out)
}

/// Every station of the tree below that still counts.
pub fn stations(conn: &Connection) -> Result<Vec<TreeStation>, StoreError> {
    read_stations(conn, None)
}

/// One station by its API id (`device@origin`).
pub fn station(conn: &Connection, api_id: &str) -> Result<Option<TreeStation>, StoreError> {
    let Some((device, origin)) = api_id.rsplit_once('@') else {
        return Ok(None);
    };
    Ok(read_stations(conn, Some((origin, device)))?
        .into_iter()
        .next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::outbox::PointDoc;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        for (id, area) in [("village-a", "330723001001"), ("village-b", "330723001002")] {
            conn.execute(
                "INSERT INTO sync_peers (node_id, public_key, area, name, relation, enrolled_ms, acked_seq)
                 VALUES (?1, ?1, ?2, ?1, 'downstream', 0, 0)",
                [id, area],
            )
            .unwrap();
        }
        conn
    }

    fn station(device: &str, area: &str) -> Vec<u8> {
        serde_json::to_vec(&StationDoc {
            device: device.into(),
            name: "雨量站".into(),
            area: area.into(),
            driver: "mqtt".into(),
            interval_s: 60.0,
            status: "online".into(),
            node_name: "村".into(),
            points: vec![PointDoc {
                metric: "rainfall".into(),
                name: None,
                unit: Some("mm".into()),
                min: None,
                max: None,
            }],
        })
        .unwrap()
    }

    fn minute(device: &str, b: i64, s: f64, n: i64) -> Vec<u8> {
        serde_json::to_vec(&MinuteDoc {
            d: device.into(),
            m: "rainfall".into(),
            u: Some("mm".into()),
            b,
            lo: 0.0,
            hi: s,
            s,
            n,
        })
        .unwrap()
    }

    fn rec(seq: i64, payload: Vec<u8>) -> StreamRecord {
        StreamRecord { seq, payload }
    }

    const A_AREA: &str = "330723001001";

    fn from_a(area: &AreaCode) -> FromBelow<'_> {
        FromBelow {
            own: "county",
            via: "village-a",
            area,
        }
    }

    #[test]
    fn a_minute_sent_again_replaces_and_counts_once() {
        let conn = db();
        let area: AreaCode = A_AREA.parse().unwrap();
        let from = from_a(&area);
        let st = land(
            &conn,
            &from,
            "village-a",
            STATIONS,
            &[rec(1, station("rain-01", A_AREA))],
            0,
        )
        .unwrap();
        assert_eq!(st.kept.len(), 1);
        land(
            &conn,
            &from,
            "village-a",
            MINUTES,
            &[rec(5, minute("rain-01", 0, 3.0, 2))],
            0,
        )
        .unwrap();
        // The same minute, whole again after a late reading, then the old version replayed.
        land(
            &conn,
            &from,
            "village-a",
            MINUTES,
            &[rec(9, minute("rain-01", 0, 7.0, 3))],
            0,
        )
        .unwrap();
        land(
            &conn,
            &from,
            "village-a",
            MINUTES,
            &[rec(5, minute("rain-01", 0, 3.0, 2))],
            0,
        )
        .unwrap();
        let (sum, count): (f64, i64) = conn
            .query_row("SELECT sum(sum), sum(count) FROM tree_minute", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((sum, count), (7.0, 3));
        let listed = stations(&conn).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].api_id(), "rain-01@village-a");
        assert_eq!(listed[0].series[0].latest, Some((0, 7.0 / 3.0, 0)));
    }

    #[test]
    fn a_village_cannot_forge_stations_or_readings_beyond_its_area() {
        let conn = db();
        let area: AreaCode = A_AREA.parse().unwrap();
        let from = from_a(&area);
        // A station in the neighbouring village's area.
        let out = land(
            &conn,
            &from,
            "village-a",
            STATIONS,
            &[rec(1, station("rain-09", "330723001002"))],
            0,
        )
        .unwrap();
        assert_eq!(
            (out.kept.len(), out.reason),
            (0, Some("a station outside the sender's area"))
        );
        // Speaking for the neighbour, which is enrolled here itself.
        let out = land(
            &conn,
            &from,
            "village-b",
            STATIONS,
            &[rec(1, station("rain-09", A_AREA))],
            0,
        )
        .unwrap();
        assert_eq!(out.reason, Some("speaks for another node enrolled here"));
        // Speaking for the county itself.
        let out = land(
            &conn,
            &from,
            "county",
            STATIONS,
            &[rec(1, station("x", A_AREA))],
            0,
        )
        .unwrap();
        assert_eq!(out.reason, Some("names this node as the origin"));
        // Readings for a station never described, and garbage.
        let out = land(
            &conn,
            &from,
            "village-a",
            MINUTES,
            &[
                rec(2, minute("ghost", 0, 1.0, 1)),
                rec(3, b"\x00\xff".to_vec()),
            ],
            0,
        )
        .unwrap();
        assert_eq!((out.kept.len(), out.refused), (0, 2));
        let n: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM tree_stations) + (SELECT count(*) FROM tree_minute)
                    + (SELECT count(*) FROM tree_series)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "nothing refused is stored");
    }

    #[test]
    fn a_station_stops_counting_when_its_child_is_revoked() {
        let conn = db();
        let area: AreaCode = A_AREA.parse().unwrap();
        land(
            &conn,
            &from_a(&area),
            "village-a",
            STATIONS,
            &[rec(1, station("rain-01", A_AREA))],
            0,
        )
        .unwrap();
        assert_eq!(stations(&conn).unwrap().len(), 1);
        conn.execute(
            "UPDATE sync_peers SET revoked_ms = 1 WHERE node_id = 'village-a'",
            [],
        )
        .unwrap();
        assert!(stations(&conn).unwrap().is_empty());
        assert!(
            super::station(&conn, "rain-01@village-a")
                .unwrap()
                .is_none()
        );
    }
}
