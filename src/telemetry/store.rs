//! The telemetry tables: series, raw readings, 1-minute and 1-hour aggregates, and the queries and
//! pruning steps over them. Everything here runs on a connection the caller provides (the writer
//! thread or a pooled reader) and holds no state of its own.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use township_drivers::{Quality, Reading};

use crate::store::StoreError;

pub type SeriesKey = (String, String);

/// Series ids by device, then metric: looked up with borrowed strings, so the hot path allocates
/// nothing per reading.
#[derive(Debug, Clone, Default)]
pub struct SeriesIds(HashMap<String, HashMap<String, i64>>);

impl SeriesIds {
    pub fn get(&self, device: &str, metric: &str) -> Option<i64> {
        self.0.get(device).and_then(|m| m.get(metric)).copied()
    }

    pub fn insert(&mut self, (device, metric): SeriesKey, id: i64) {
        self.0.entry(device).or_default().insert(metric, id);
    }
}

impl FromIterator<(SeriesKey, i64)> for SeriesIds {
    fn from_iter<I: IntoIterator<Item = (SeriesKey, i64)>>(iter: I) -> Self {
        let mut ids = SeriesIds::default();
        for (key, id) in iter {
            ids.insert(key, id);
        }
        ids
    }
}

pub fn quality_code(q: Quality) -> i64 {
    match q {
        Quality::Good => 0,
        Quality::OutOfRange => 1,
        Quality::ClockCorrected => 2,
        Quality::DeviceFlagged => 3,
    }
}

pub fn quality_from_code(code: i64) -> Quality {
    match code {
        1 => Quality::OutOfRange,
        2 => Quality::ClockCorrected,
        3 => Quality::DeviceFlagged,
        _ => Quality::Good,
    }
}

/// Whether a reading counts towards aggregates. Values the device flagged or that lie outside the
/// valid range stay in the raw table for inspection but would distort a mean or an hourly rain sum.
fn aggregable(q: Quality) -> bool {
    matches!(q, Quality::Good | Quality::ClockCorrected)
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Default, Clone, Copy)]
struct Agg {
    min: f64,
    max: f64,
    sum: f64,
    count: i64,
}

impl Agg {
    fn add(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.sum += v;
        self.count += 1;
    }
}

/// What one committed batch did.
#[derive(Debug, Default)]
pub struct Inserted {
    /// Indexes into the batch of readings that were new (the rest were duplicates).
    pub new: Vec<usize>,
    /// Series created by this batch; the caller caches them once the batch has committed.
    pub new_series: Vec<(SeriesKey, i64)>,
}

/// Inserts readings, skipping any already stored (same series and time), and folds the new ones
/// into the minute and hour aggregates. `known` is the caller's cache of series ids.
///
/// With `queue_raw` (a node with an upstream that ships raw readings) every new raw reading is also
/// queued in `raw_outbox` for the upstream (see `outbox`).
pub fn insert_batch(
    conn: &Connection,
    readings: &[Reading],
    known: &SeriesIds,
    queue_raw: bool,
) -> Result<Inserted, StoreError> {
    let mut out = Inserted::default();
    let mut created = SeriesIds::default();
    let mut minute: HashMap<(i64, i64), Agg> = HashMap::new();
    let mut hour: HashMap<(i64, i64), Agg> = HashMap::new();
    // Every minute a batch changes, and every raw reading queued for the upstream, takes the next
    // number of the outbox sequence, which is what the streams up the tree follow (see `outbox`).
    let first_seq: i64 = conn
        .prepare_cached("SELECT last FROM outbox_seq WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    let mut seq = first_seq;
    let mut insert = conn.prepare_cached(
        "INSERT INTO telemetry_raw (series, t, value, quality) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
    )?;
    let mut queue =
        conn.prepare_cached("INSERT INTO raw_outbox (seq, series, t) VALUES (?1, ?2, ?3)")?;
    for (i, r) in readings.iter().enumerate() {
        let series = match known
            .get(&r.device, &r.metric)
            .or_else(|| created.get(&r.device, &r.metric))
        {
            Some(id) => id,
            None => {
                let id = series_id(conn, &r.device, &r.metric, r.unit.as_deref())?;
                let key = (r.device.clone(), r.metric.clone());
                created.insert(key.clone(), id);
                out.new_series.push((key, id));
                id
            }
        };
        if insert.execute(params![series, r.time_ms, r.value, quality_code(r.quality)])? == 1 {
            if queue_raw {
                seq += 1;
                queue.execute(params![seq, series, r.time_ms])?;
            }
            out.new.push(i);
            if aggregable(r.quality) {
                minute
                    .entry((series, r.time_ms.div_euclid(MINUTE_MS) * MINUTE_MS))
                    .or_default()
                    .add(r.value);
                hour.entry((series, r.time_ms.div_euclid(HOUR_MS) * HOUR_MS))
                    .or_default()
                    .add(r.value);
            }
        }
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO telemetry_minute (series, bucket, min, max, sum, count, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (series, bucket) DO UPDATE SET
             min = min(min, excluded.min), max = max(max, excluded.max),
             sum = sum + excluded.sum, count = count + excluded.count, seq = excluded.seq",
    )?;
    // Oldest minutes take the lower numbers: an open minute (the newest) then holds back nothing
    // that is already over (see `outbox::own_after`).
    let mut minute: Vec<((i64, i64), Agg)> = minute.into_iter().collect();
    minute.sort_unstable_by_key(|((series, bucket), _)| (*bucket, *series));
    for ((series, bucket), a) in minute {
        seq += 1;
        upsert.execute(params![series, bucket, a.min, a.max, a.sum, a.count, seq])?;
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO telemetry_hour (series, bucket, min, max, sum, count) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (series, bucket) DO UPDATE SET
             min = min(min, excluded.min), max = max(max, excluded.max),
             sum = sum + excluded.sum, count = count + excluded.count",
    )?;
    for ((series, bucket), a) in hour {
        upsert.execute(params![series, bucket, a.min, a.max, a.sum, a.count])?;
    }
    if seq != first_seq {
        conn.prepare_cached("UPDATE outbox_seq SET last = ?1 WHERE id = 1")?
            .execute([seq])?;
    }
    Ok(out)
}

fn series_id(
    conn: &Connection,
    device: &str,
    metric: &str,
    unit: Option<&str>,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO telemetry_series (device, metric, unit) VALUES (?1, ?2, ?3)
         ON CONFLICT (device, metric) DO UPDATE SET unit = coalesce(excluded.unit, unit)",
    )?
    .execute(params![device, metric, unit])?;
    Ok(conn
        .prepare_cached("SELECT id FROM telemetry_series WHERE device = ?1 AND metric = ?2")?
        .query_row(params![device, metric], |r| r.get(0))?)
}

pub fn all_series(conn: &Connection) -> Result<SeriesIds, StoreError> {
    let mut stmt = conn.prepare("SELECT device, metric, id FROM telemetry_series")?;
    let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn find_series(
    conn: &Connection,
    device: &str,
    metric: &str,
) -> Result<Option<(i64, Option<String>)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, unit FROM telemetry_series WHERE device = ?1 AND metric = ?2",
            params![device, metric],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// The newest stored reading of every series.
pub fn latest_readings(conn: &Connection) -> Result<Vec<Reading>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT s.device, s.metric, s.unit, r.t, r.value, r.quality
         FROM telemetry_series s
         JOIN telemetry_raw r ON r.series = s.id
              AND r.t = (SELECT max(t) FROM telemetry_raw WHERE series = s.id)",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Reading {
            device: r.get(0)?,
            metric: r.get(1)?,
            unit: r.get(2)?,
            time_ms: r.get(3)?,
            value: r.get(4)?,
            quality: quality_from_code(r.get(5)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RawPoint {
    pub t: i64,
    pub value: f64,
    pub quality: Quality,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AggPoint {
    pub t: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub sum: f64,
    pub count: i64,
}

/// Whose readings a series id names: this node's (`telemetry_*`) or a node's below (`tree_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Tree,
}

/// At most `limit` raw readings of `source`'s series in `from..to`, oldest first.
pub fn raw_range(
    conn: &Connection,
    source: Source,
    series: i64,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Vec<RawPoint>, StoreError> {
    raw_points(conn, source, series, from, to, limit, false)
}

/// The newest `limit` raw readings in `from..to`, oldest first: what a rule needs to pick up where
/// it was (its window and the last readings), however long the series.
pub fn recent_range(
    conn: &Connection,
    series: i64,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Vec<RawPoint>, StoreError> {
    let mut points = raw_points(conn, Source::Local, series, from, to, limit, true)?;
    points.reverse();
    Ok(points)
}

/// At most `limit` raw readings in `from..to`, from the oldest or from the newest.
fn raw_points(
    conn: &Connection,
    source: Source,
    series: i64,
    from: i64,
    to: i64,
    limit: usize,
    newest_first: bool,
) -> Result<Vec<RawPoint>, StoreError> {
    let table = match source {
        Source::Local => "telemetry_raw",
        Source::Tree => "tree_raw",
    };
    let order = if newest_first { "DESC" } else { "" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT t, value, quality FROM {table}
         WHERE series = ?1 AND t >= ?2 AND t < ?3 ORDER BY t {order} LIMIT ?4"
    ))?;
    let rows = stmt.query_map(params![series, from, to, limit as i64], |r| {
        Ok(RawPoint {
            t: r.get(0)?,
            value: r.get(1)?,
            quality: quality_from_code(r.get(2)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Buckets of `step_ms`, read from the coarsest table that divides the step: hour aggregates for
/// whole hours, minute aggregates for whole minutes, raw readings otherwise.
/// Readings from below have no hour table, so their whole hours come from their minutes.
pub fn aggregated_range(
    conn: &Connection,
    source: Source,
    series: i64,
    from: i64,
    to: i64,
    step_ms: i64,
    limit: usize,
) -> Result<Vec<AggPoint>, StoreError> {
    let (hour, minute, raw) = match source {
        Source::Local => ("telemetry_hour", "telemetry_minute", "telemetry_raw"),
        Source::Tree => ("tree_minute", "tree_minute", "tree_raw"),
    };
    let sql = if step_ms % HOUR_MS == 0 || step_ms % MINUTE_MS == 0 {
        let table = if step_ms % HOUR_MS == 0 { hour } else { minute };
        format!(
            "SELECT (bucket / ?4) * ?4 AS b, min(min), max(max), sum(sum), sum(count) FROM {table}
             WHERE series = ?1 AND bucket >= ?2 AND bucket < ?3 GROUP BY b ORDER BY b LIMIT ?5"
        )
    } else {
        format!(
            "SELECT (t / ?4) * ?4 AS b, min(value), max(value), sum(value), count(*) FROM {raw}
             WHERE series = ?1 AND t >= ?2 AND t < ?3 AND quality IN (0, 2) GROUP BY b ORDER BY b LIMIT ?5"
        )
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![series, from, to, step_ms, limit as i64], |r| {
        let sum: f64 = r.get(3)?;
        let count: i64 = r.get(4)?;
        Ok(AggPoint {
            t: r.get(0)?,
            min: r.get(1)?,
            max: r.get(2)?,
            mean: if count > 0 { sum / count as f64 } else { 0.0 },
            sum,
            count,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes at most `max_rows` rows older than `cutoff` from one telemetry table and says how many
/// went. Small steps keep each write transaction short, so readings never wait long behind pruning.
pub fn prune_step(
    conn: &Connection,
    table: PruneTable,
    cutoff_ms: i64,
    max_rows: usize,
) -> Result<usize, StoreError> {
    let (name, column) = match table {
        PruneTable::Raw => ("telemetry_raw", "t"),
        PruneTable::Minute => ("telemetry_minute", "bucket"),
        PruneTable::Hour => ("telemetry_hour", "bucket"),
        PruneTable::TreeRaw => ("tree_raw", "t"),
        PruneTable::TreeMinute => ("tree_minute", "bucket"),
    };
    let series_table = match table {
        PruneTable::TreeRaw | PruneTable::TreeMinute => "tree_series",
        _ => "telemetry_series",
    };
    let series: Vec<i64> = conn
        .prepare_cached(&format!("SELECT id FROM {series_table} ORDER BY id"))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut deleted = 0;
    for s in series {
        if deleted >= max_rows {
            break;
        }
        let budget = (max_rows - deleted) as i64;
        // The newest key this step may delete: the budget-th oldest row, or the cutoff if fewer.
        deleted += conn
            .prepare_cached(&format!(
                "DELETE FROM {name} WHERE series = ?1 AND {column} < ?2 AND {column} <= coalesce(
                     (SELECT {column} FROM {name} WHERE series = ?1 AND {column} < ?2
                      ORDER BY {column} LIMIT 1 OFFSET ?3), ?2)"
            ))?
            .execute(params![s, cutoff_ms, budget - 1])?;
    }
    Ok(deleted)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneTable {
    Raw,
    Minute,
    Hour,
    /// Readings from the nodes below (see `tree`), kept as long as this node's own.
    TreeRaw,
    TreeMinute,
}

/// Drops at most `max_rows` queued raw readings older than `cutoff_ms` (past the raw window: they
/// would not be sent) and says how many went, so a queue for an upstream that is gone for weeks stays
/// the size of the window.
pub fn prune_raw_outbox(
    conn: &Connection,
    cutoff_ms: i64,
    max_rows: usize,
) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM raw_outbox WHERE seq IN
                 (SELECT seq FROM raw_outbox WHERE t < ?1 ORDER BY t LIMIT ?2)",
        )?
        .execute(params![cutoff_ms, max_rows as i64])?)
}

/// The oldest raw reading's time, across series.
pub fn oldest_raw(conn: &Connection) -> Result<Option<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT min((SELECT min(t) FROM telemetry_raw WHERE series = s.id)) FROM telemetry_series s",
    )?;
    Ok(stmt.query_row([], |r| r.get(0))?)
}

/// Bytes the database uses (pages in use, not free ones), which is what a disk budget limits.
pub fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
}

pub fn raw_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT count(*) FROM telemetry_raw", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = Connection::open(&path).unwrap();
        crate::store::migrations::migrate(&mut conn, &path).unwrap();
        (dir, conn)
    }

    fn r(t: i64, v: f64, q: Quality) -> Reading {
        Reading {
            device: "rain-01".into(),
            metric: "rainfall".into(),
            time_ms: t,
            value: v,
            unit: Some("mm".into()),
            quality: q,
        }
    }

    #[test]
    fn duplicates_are_skipped_and_not_aggregated_twice() {
        let (_d, conn) = db();
        let batch = vec![
            r(0, 1.0, Quality::Good),
            r(30_000, 2.0, Quality::Good),
            r(60_000, 4.0, Quality::Good),
            r(90_000, 99.0, Quality::OutOfRange),
        ];
        let first = insert_batch(&conn, &batch, &SeriesIds::default(), false).unwrap();
        assert_eq!(first.new, vec![0, 1, 2, 3]);
        let known: SeriesIds = first.new_series.into_iter().collect();
        let again = insert_batch(&conn, &batch, &known, false).unwrap();
        assert!(again.new.is_empty() && again.new_series.is_empty());
        let (series, _) = find_series(&conn, "rain-01", "rainfall").unwrap().unwrap();
        let minutes =
            aggregated_range(&conn, Source::Local, series, 0, HOUR_MS, MINUTE_MS, 100).unwrap();
        assert_eq!(minutes.len(), 2);
        assert_eq!(
            (
                minutes[0].sum,
                minutes[0].count,
                minutes[0].min,
                minutes[0].max
            ),
            (3.0, 2, 1.0, 2.0)
        );
        assert_eq!(
            (minutes[1].sum, minutes[1].count),
            (4.0, 1),
            "out-of-range values are not aggregated"
        );
        let hours =
            aggregated_range(&conn, Source::Local, series, 0, HOUR_MS, HOUR_MS, 100).unwrap();
        assert_eq!(
            (hours[0].sum, hours[0].count, hours[0].mean),
            (7.0, 3, 7.0 / 3.0)
        );
        let odd = aggregated_range(&conn, Source::Local, series, 0, HOUR_MS, 45_000, 100).unwrap();
        assert_eq!(odd.iter().map(|p| p.count).sum::<i64>(), 3);
        let raw = raw_range(&conn, Source::Local, series, 0, HOUR_MS, 100).unwrap();
        assert_eq!(raw.len(), 4);
        assert_eq!(raw[3].quality, Quality::OutOfRange);
        assert_eq!(latest_readings(&conn).unwrap()[0].value, 99.0);
    }

    #[test]
    fn pruning_goes_in_bounded_steps_and_keeps_aggregates() {
        let (_d, conn) = db();
        let batch: Vec<Reading> = (0..1000).map(|i| r(i * 1000, 1.0, Quality::Good)).collect();
        insert_batch(&conn, &batch, &SeriesIds::default(), false).unwrap();
        assert_eq!(
            prune_step(&conn, PruneTable::Raw, 500_000, 100).unwrap(),
            100
        );
        assert_eq!(oldest_raw(&conn).unwrap(), Some(100_000));
        let mut total = 100;
        loop {
            let n = prune_step(&conn, PruneTable::Raw, 500_000, 100).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 500);
        assert_eq!(raw_count(&conn).unwrap(), 500);
        let (series, _) = find_series(&conn, "rain-01", "rainfall").unwrap().unwrap();
        let hours =
            aggregated_range(&conn, Source::Local, series, 0, HOUR_MS, HOUR_MS, 10).unwrap();
        assert_eq!(hours[0].count, 1000, "aggregates outlive raw readings");
    }
}
