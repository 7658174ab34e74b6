//! Lists, search, exports and indicators, all from the `incidents` projection.
//!
//! Search uses the FTS5 trigram index, which finds any substring of three or more characters —
//! what Chinese needs, since it has no spaces between words. Two-character queries (most Chinese
//! words) are shorter than a trigram and fall back to a substring scan.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};
use serde::Serialize;
use serde_json::json;
use township_sync::AreaCode;

use crate::store::StoreError;

/// Filters common to the list and the exports.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub states: Vec<String>,
    pub category: Option<String>,
    /// Incidents inside this area.
    pub area: Option<AreaCode>,
    /// Lead or assisting department.
    pub department: Option<String>,
    pub assignee: Option<String>,
    pub reporter: Option<String>,
    pub overdue: Option<bool>,
    pub due_state: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub q: Option<String>,
    /// Always applied: the caller's own area.
    pub within: Option<AreaCode>,
    pub limit: usize,
    /// Continue after this (created_ms, id).
    pub after: Option<(i64, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: String,
    pub area: String,
    pub category: String,
    pub title: String,
    pub state: String,
    pub reporter: String,
    pub lead_department: Option<String>,
    pub assist_departments: Vec<String>,
    pub assignee: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub place: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub due_ms: Option<i64>,
    pub due_kind: Option<String>,
    pub due_state: String,
    pub conflicts: i64,
    pub thumbnail: Option<String>,
    pub description: String,
    pub rating: Option<i64>,
    pub closed_ms: Option<i64>,
    /// The original, when this incident was closed as its duplicate.
    pub duplicate_of: Option<String>,
}

/// Adds a parameter and returns its placeholder.
fn bind(args: &mut Vec<SqlValue>, value: SqlValue) -> String {
    args.push(value);
    format!("?{}", args.len())
}

/// Builds the WHERE clause and its parameters.
fn where_clause(f: &Filter) -> (String, Vec<SqlValue>) {
    let mut sql = String::from(" WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    let text = |s: &str| SqlValue::Text(s.to_string());
    if !f.states.is_empty() {
        let marks: Vec<String> = f.states.iter().map(|s| bind(&mut args, text(s))).collect();
        sql.push_str(&format!(" AND i.state IN ({})", marks.join(",")));
    }
    if let Some(c) = &f.category {
        sql.push_str(&format!(" AND i.category = {}", bind(&mut args, text(c))));
    }
    for area in [&f.area, &f.within].into_iter().flatten() {
        sql.push_str(&format!(
            " AND i.area LIKE {} || '%'",
            bind(&mut args, text(area.as_str()))
        ));
    }
    if let Some(d) = &f.department {
        let p = bind(&mut args, text(d));
        sql.push_str(&format!(
            " AND (i.lead_department = {p} OR i.assist_departments LIKE '%,' || {p} || ',%')"
        ));
    }
    if let Some(a) = &f.assignee {
        sql.push_str(&format!(" AND i.assignee = {}", bind(&mut args, text(a))));
    }
    if let Some(r) = &f.reporter {
        sql.push_str(&format!(" AND i.reporter = {}", bind(&mut args, text(r))));
    }
    match f.overdue {
        Some(true) => sql.push_str(" AND i.due_state = 'overdue'"),
        Some(false) => sql.push_str(" AND i.due_state != 'overdue'"),
        None => {}
    }
    if let Some(d) = &f.due_state {
        sql.push_str(&format!(" AND i.due_state = {}", bind(&mut args, text(d))));
    }
    if let Some(from) = f.from_ms {
        sql.push_str(&format!(
            " AND i.created_ms >= {}",
            bind(&mut args, SqlValue::Integer(from))
        ));
    }
    if let Some(to) = f.to_ms {
        sql.push_str(&format!(
            " AND i.created_ms <= {}",
            bind(&mut args, SqlValue::Integer(to))
        ));
    }
    if let Some(q) = f.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        if q.chars().count() >= 3 {
            let p = bind(&mut args, SqlValue::Text(fts_phrase(f).unwrap_or_default()));
            sql.push_str(&format!(
                " AND i.row IN (SELECT rowid FROM incidents_fts WHERE incidents_fts MATCH {p})"
            ));
        } else {
            let p = bind(&mut args, text(q));
            sql.push_str(&format!(
                " AND (instr(i.title, {p}) > 0 OR instr(i.description, {p}) > 0)"
            ));
        }
    }
    if let Some((created, id)) = &f.after {
        let c = bind(&mut args, SqlValue::Integer(*created));
        let i = bind(&mut args, text(id));
        sql.push_str(&format!(
            " AND (i.created_ms < {c} OR (i.created_ms = {c} AND i.id < {i}))"
        ));
    }
    (sql, args)
}

const COLUMNS: &str = "i.id, i.area, i.category, i.title, i.state, i.reporter, i.lead_department, i.assist_departments,
    i.assignee, i.lat, i.lon, i.place, i.created_ms, i.updated_ms, i.due_ms, i.due_kind, i.due_state, i.conflicts,
    (SELECT a.sha256 FROM incident_attachments a JOIN blobs b ON b.sha256 = a.sha256
       WHERE a.incident_id = i.id AND b.content_type LIKE 'image/%' LIMIT 1),
    i.description, i.rating, i.closed_ms, i.duplicate_of";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let assist: String = r.get(7)?;
    Ok(Row {
        id: r.get(0)?,
        area: r.get(1)?,
        category: r.get(2)?,
        title: r.get(3)?,
        state: r.get(4)?,
        reporter: r.get(5)?,
        lead_department: r.get(6)?,
        assist_departments: assist
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        assignee: r.get(8)?,
        lat: r.get(9)?,
        lon: r.get(10)?,
        place: r.get(11)?,
        created_ms: r.get(12)?,
        updated_ms: r.get(13)?,
        due_ms: r.get(14)?,
        due_kind: r.get(15)?,
        due_state: r.get(16)?,
        conflicts: r.get(17)?,
        thumbnail: r.get(18)?,
        description: r.get(19)?,
        rating: r.get(20)?,
        closed_ms: r.get(21)?,
        duplicate_of: r.get(22)?,
    })
}

/// Past this many full-text matches, walking the newest-first index and keeping the matches beats
/// fetching every match and sorting it (a common word matches a sixth of a year's incidents).
const FTS_WALK_THRESHOLD: i64 = 1_000;

fn fts_phrase(f: &Filter) -> Option<String> {
    let q =
        f.q.as_deref()
            .map(str::trim)
            .filter(|q| q.chars().count() >= 3)?;
    // Quoted as one FTS5 string, so the user's text is never read as query syntax.
    Some(format!("\"{}\"", q.replace('"', "\"\"")))
}

/// One page of incidents, newest first, and the cursor for the next page.
pub fn list(conn: &Connection, f: &Filter) -> Result<(Vec<Row>, Option<String>), StoreError> {
    let (clause, mut args) = where_clause(f);
    args.push(SqlValue::Integer(f.limit as i64 + 1));
    let walk = match fts_phrase(f) {
        Some(phrase) => {
            let matches: i64 = conn.query_row(
                "SELECT count(*) FROM (SELECT 1 FROM incidents_fts WHERE incidents_fts MATCH ?1 LIMIT ?2)",
                rusqlite::params![phrase, FTS_WALK_THRESHOLD + 1],
                |r| r.get(0),
            )?;
            matches > FTS_WALK_THRESHOLD
        }
        None => false,
    };
    let source = if walk {
        "incidents i INDEXED BY incidents_by_created"
    } else {
        "incidents i"
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM {source} {clause} ORDER BY i.created_ms DESC, i.id DESC LIMIT ?{}",
        args.len()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows: Vec<Row> = stmt
        .query_map(params_from_iter(args.iter()), read_row)?
        .collect::<Result<_, _>>()?;
    let next = if rows.len() > f.limit {
        rows.truncate(f.limit);
        rows.last().map(|r| encode_cursor(r.created_ms, &r.id))
    } else {
        None
    };
    Ok((rows, next))
}

/// Counting stops here: past it the list header says "10000+", and a phone never waits for an exact
/// count of a hundred thousand rows it will not page through.
pub const COUNT_CAP: i64 = 10_000;

/// Counts matching incidents up to [`COUNT_CAP`] + 1 (for the list header and the UI's badges).
pub fn count(conn: &Connection, f: &Filter) -> Result<i64, StoreError> {
    let (clause, args) = where_clause(f);
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM incidents i {clause} LIMIT {})",
        COUNT_CAP + 1
    );
    Ok(conn.query_row(&sql, params_from_iter(args.iter()), |r| r.get(0))?)
}

pub fn encode_cursor(created_ms: i64, id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_ms}:{id}"))
}

pub fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (ms, id) = text.split_once(':')?;
    Some((ms.parse().ok()?, id.to_string()))
}

/// Every matching row, for exports (bounded so an export cannot exhaust memory).
pub fn all(conn: &Connection, f: &Filter, max: usize) -> Result<Vec<Row>, StoreError> {
    let mut f = f.clone();
    f.limit = max;
    f.after = None;
    Ok(list(conn, &f)?.0)
}

/// GeoJSON (RFC 7946) points for incidents that have a location.
pub fn to_geojson(rows: &[Row]) -> serde_json::Value {
    let features: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|r| {
            let (lat, lon) = (r.lat?, r.lon?);
            Some(json!({
                "type": "Feature",
                "id": r.id,
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {
                    "title": r.title, "category": r.category, "state": r.state, "area": r.area,
                    "reporter": r.reporter, "lead_department": r.lead_department, "created": crate::clock::rfc3339_china(r.created_ms),
                    "due_state": r.due_state, "place": r.place, "created_ms": r.created_ms,
                    "due_ms": r.due_ms, "duplicate_of": r.duplicate_of,
                }
            }))
        })
        .collect();
    json!({"type": "FeatureCollection", "features": features})
}

/// What waits for a person, by kind: the counts behind the landing page and the notification
/// badge. Each kind is one list the UI can open (`filter` in the list's query syntax).
///
/// - grid worker: `verify` — her reports resolved and waiting for her check;
/// - township staff and admins: `new` reports, `overdue` open incidents, `escalated` still here;
/// - department handler: `queue` — dispatched to or being handled by their department;
/// - county IT: `escalated` from the townships.
pub fn work(
    conn: &Connection,
    role: crate::auth::roles::Role,
    username: &str,
    department: Option<&str>,
    within: &AreaCode,
) -> Result<serde_json::Value, StoreError> {
    use crate::auth::roles::Role;
    let base = Filter {
        within: Some(within.clone()),
        ..Filter::default()
    };
    let open: Vec<String> = [
        "reported",
        "accepted",
        "escalated",
        "dispatched",
        "in_progress",
    ]
    .map(String::from)
    .to_vec();
    let mut kinds: Vec<(&str, Filter, String)> = Vec::new();
    match role {
        Role::GridWorker => kinds.push((
            "verify",
            Filter {
                states: vec!["resolved".into()],
                reporter: Some(username.to_string()),
                ..base.clone()
            },
            format!("state=resolved&reporter={username}"),
        )),
        Role::TownshipStaff | Role::Admin => {
            kinds.push((
                "new",
                Filter {
                    states: vec!["reported".into()],
                    ..base.clone()
                },
                "state=reported".to_string(),
            ));
            kinds.push((
                "overdue",
                Filter {
                    states: open.clone(),
                    overdue: Some(true),
                    ..base.clone()
                },
                "overdue=true".to_string(),
            ));
            kinds.push((
                "escalated",
                Filter {
                    states: vec!["escalated".into()],
                    ..base.clone()
                },
                "state=escalated".to_string(),
            ));
        }
        Role::DeptHandler => kinds.push((
            "queue",
            Filter {
                states: vec!["dispatched".into(), "in_progress".into()],
                department: Some(department.unwrap_or("-").to_string()),
                ..base.clone()
            },
            format!(
                "state=dispatched,in_progress&department={}",
                department.unwrap_or("-")
            ),
        )),
        Role::CountyIt => kinds.push((
            "escalated",
            Filter {
                states: vec!["escalated".into()],
                ..base.clone()
            },
            "state=escalated".to_string(),
        )),
    }
    let mut items = Vec::new();
    let mut total = 0;
    for (kind, filter, query) in kinds {
        let n = count(conn, &filter)?;
        // Overdue reported or escalated incidents are already counted there; the badge counts
        // each incident once.
        total += if kind == "overdue" {
            count(
                conn,
                &Filter {
                    states: vec!["accepted".into(), "dispatched".into(), "in_progress".into()],
                    ..filter.clone()
                },
            )?
        } else {
            n
        };
        items.push(json!({"kind": kind, "count": n, "filter": query}));
    }
    Ok(json!({"items": items, "total": total}))
}

/// The plan's measures over a period, for an area: in total, per child area and per lead department.
///
/// Duplicates are counted apart (`duplicates`), not as reports. The on-time rate counts every
/// incident whose deadline has been decided: resolved in time, resolved late, and still open past
/// its deadline, so 100% never stands beside overdue cases.
pub fn indicators(
    conn: &Connection,
    within: &AreaCode,
    from_ms: i64,
    to_ms: i64,
) -> Result<serde_json::Value, StoreError> {
    let measures = "sum(state != 'duplicate'),
        sum(accepted_ms IS NOT NULL OR state NOT IN ('reported', 'rejected', 'duplicate')),
        sum(state = 'closed'),
        sum(on_time = 1), sum(on_time IS NOT NULL OR due_state = 'overdue'),
        sum(state = 'closed' AND assist_departments != ''), sum(accepted_ms IS NOT NULL AND assist_departments != ''),
        avg(accepted_ms - created_ms), avg(CASE WHEN state = 'closed' THEN closed_ms - created_ms END),
        avg(rating), count(rating), sum(due_state = 'overdue'), sum(state = 'rejected'),
        sum(state = 'duplicate')";
    let read = |r: &rusqlite::Row<'_>, offset: usize| -> rusqlite::Result<serde_json::Value> {
        let n = |i: usize| r.get::<_, Option<i64>>(offset + i).map(|v| v.unwrap_or(0));
        let f = |i: usize| r.get::<_, Option<f64>>(offset + i);
        let (on_time, with_deadline, cross_closed, cross_accepted) = (n(3)?, n(4)?, n(5)?, n(6)?);
        let rate = |a: i64, b: i64| {
            if b > 0 {
                json!((a as f64 / b as f64 * 1000.0).round() / 1000.0)
            } else {
                serde_json::Value::Null
            }
        };
        Ok(json!({
            "reported": n(0)?,
            "accepted": n(1)?,
            "closed": n(2)?,
            "rejected": n(12)?,
            "duplicates": n(13)?,
            "overdue_open": n(11)?,
            "on_time_rate": rate(on_time, with_deadline),
            "cross_department_completion_rate": rate(cross_closed, cross_accepted),
            "cross_department": {"closed": cross_closed, "accepted": cross_accepted},
            "mean_minutes_to_accept": f(7)?.map(|ms| (ms / 60_000.0 * 10.0).round() / 10.0),
            "mean_minutes_to_close": f(8)?.map(|ms| (ms / 60_000.0 * 10.0).round() / 10.0),
            "satisfaction": f(9)?.map(|v| (v * 100.0).round() / 100.0),
            "ratings": n(10)?,
        }))
    };
    let base = "FROM incidents WHERE area LIKE ?1 || '%' AND created_ms >= ?2 AND created_ms <= ?3";
    let args = rusqlite::params![within.as_str(), from_ms, to_ms];
    let total = conn.query_row(&format!("SELECT {measures} {base}"), args, |r| read(r, 0))?;
    // One level down the tree: townships of a county, villages of a township.
    let child_len = match within.as_str().len() {
        6 => 9,
        _ => 12,
    };
    let mut per_area = serde_json::Map::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT substr(area, 1, {child_len}) AS a, {measures} {base} GROUP BY a ORDER BY a"
    ))?;
    for row in stmt.query_map(args, |r| Ok((r.get::<_, String>(0)?, read(r, 1)?)))? {
        let (area, v) = row?;
        per_area.insert(area, v);
    }
    let mut per_department = serde_json::Map::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT lead_department, {measures} {base} AND lead_department IS NOT NULL GROUP BY lead_department ORDER BY lead_department"
    ))?;
    for row in stmt.query_map(args, |r| Ok((r.get::<_, String>(0)?, read(r, 1)?)))? {
        let (dept, v) = row?;
        per_department.insert(dept, v);
    }
    Ok(json!({
        "area": within,
        "from_ms": from_ms,
        "to_ms": to_ms,
        "total": total,
        "per_area": per_area,
        "per_department": per_department,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursor_round_trips_and_decoding_never_panics(ms in any::<i64>(), id in "[0-9a-f-]{1,40}", junk in ".{0,60}") {
            prop_assert_eq!(decode_cursor(&encode_cursor(ms, &id)), Some((ms, id)));
            let _ = decode_cursor(&junk);
        }
    }
}
