//! The sensors API: the device list with latest values and status, series (raw or aggregated), CSV,
//! and the Server-Sent Events stream the UI listens to. Every route shows only devices inside the
//! caller's area; a device outside it is "not found", so its existence is not confirmed.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;

use crate::http::extract::empty_as_none;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::devices::Device;
use super::store::Source;
use super::tree::{self, TreeStation};
use super::{StreamEvent, store};
use crate::app::AppState;
use crate::auth::Caller;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::store::StoreError;

/// The most points one series request returns; a wider request must choose a larger step.
const MAX_POINTS: usize = 20_000;
/// The most rows one CSV export holds.
const MAX_CSV_ROWS: usize = 500_000;

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/sensors", list)
        .get("/api/v1/sensors/{id}/readings", readings)
        .get("/api/v1/sensors/{id}/readings.csv", readings_csv)
        .get("/api/v1/stream", stream)
}

/// A station the API can show: one of this node's devices, or one of a node below (id
/// `device@origin`, see [`tree`]).
enum Station {
    Local(Device),
    Tree(Box<TreeStation>),
}

impl Station {
    fn id(&self) -> String {
        match self {
            Station::Local(d) => d.id.clone(),
            Station::Tree(t) => t.api_id(),
        }
    }

    fn display_name(&self, metric: &str) -> Option<String> {
        match self {
            Station::Local(d) => d.display_name(metric),
            Station::Tree(t) => t.point(metric).and_then(|p| p.name.clone()),
        }
    }

    fn default_unit(&self, metric: &str) -> Option<String> {
        match self {
            Station::Local(d) => d.default_unit(metric),
            Station::Tree(t) => t.point(metric).and_then(|p| p.unit.clone()),
        }
    }

    /// Every metric the station has, sorted (the CSV's order).
    fn metrics(&self, state: &AppState) -> Vec<String> {
        let mut all = match self {
            Station::Local(d) => d.metrics(state.telemetry.latest(&d.id).keys()),
            Station::Tree(t) => t.metrics(),
        };
        all.sort();
        all.dedup();
        all
    }

    /// The series id, its unit and where its rows are.
    fn series(
        &self,
        conn: &rusqlite::Connection,
        metric: &str,
    ) -> Result<Option<(i64, Option<String>, Source)>, StoreError> {
        Ok(match self {
            Station::Local(d) => {
                store::find_series(conn, &d.id, metric)?.map(|(id, unit)| (id, unit, Source::Local))
            }
            Station::Tree(t) => t
                .series(metric)
                .map(|s| (s.id, s.unit.clone(), Source::Tree)),
        })
    }
}

async fn reachable(state: &AppState, caller: &Caller, id: &str) -> Result<Station, ApiError> {
    if id.contains('@') {
        let api_id = id.to_string();
        let found = state
            .store
            .read(move |conn| tree::station(conn, &api_id))
            .await?;
        return found
            .filter(|t| caller.can_reach(&t.area))
            .map(|t| Station::Tree(Box::new(t)))
            .ok_or(ApiError::NotFound);
    }
    state
        .telemetry
        .devices
        .get(id)
        .filter(|d| caller.can_reach(&d.area))
        .map(Station::Local)
        .ok_or(ApiError::NotFound)
}

/// A station below as the node sees it: faulty when its node says so, stale when nothing newer
/// than a few intervals (at least three minutes, since minutes go up once they are over) has
/// arrived, whether the station or the link is silent.
fn tree_status(t: &TreeStation, now: i64, cfg: &super::config::TelemetryConfig) -> &'static str {
    if t.doc.status == "faulty" {
        return "faulty";
    }
    let Some(last) = t.last_data() else {
        return "unknown";
    };
    let interval_ms = (t.doc.interval_s.max(1.0) * 1000.0 * cfg.stale_after) as i64;
    if now.saturating_sub(last) > interval_ms.max(180_000) {
        "stale"
    } else {
        "online"
    }
}

fn tree_view(
    t: &TreeStation,
    via_name: Option<&String>,
    now: i64,
    cfg: &super::config::TelemetryConfig,
) -> Value {
    let points: Vec<Value> = t
        .metrics()
        .into_iter()
        .map(|m| {
            let p = t.point(&m);
            let series = t.series(&m);
            let unit = series
                .and_then(|s| s.unit.clone())
                .or_else(|| p.and_then(|p| p.unit.clone()));
            json!({
                "metric": m,
                "name": p.and_then(|p| p.name.clone()),
                "unit": unit,
                "min": p.and_then(|p| p.min),
                "max": p.and_then(|p| p.max),
                "latest": series.and_then(|s| s.latest).map(|(at, value, q)| json!({
                    "t": at, "value": value, "unit": unit, "quality": store::quality_from_code(q),
                })),
            })
        })
        .collect();
    json!({
        "id": t.api_id(),
        "device": t.doc.device,
        "origin": t.origin,
        "via": t.via,
        "via_name": via_name,
        "node_name": t.doc.node_name,
        "name": t.doc.name,
        "area": t.area.to_string(),
        "driver": t.doc.driver,
        "interval_s": t.doc.interval_s,
        "status": tree_status(t, now, cfg),
        "reported_status": t.doc.status,
        "described_at": t.received_ms,
        "last_seen": t.last_data(),
        "readings_total": null,
        "errors": {},
        "last_error": null,
        "points": points,
    })
}

fn device_view(state: &AppState, d: &Device, now: i64) -> Value {
    let t = &state.telemetry;
    let latest = t.latest(&d.id);
    let metrics = d.metrics(latest.keys());
    let points: Vec<Value> = metrics
        .iter()
        .map(|m| {
            let p = d.point(m);
            json!({
                "metric": m,
                "name": d.display_name(m),
                "unit": latest.get(m).and_then(|l| l.unit.clone()).or_else(|| d.default_unit(m)),
                "min": p.and_then(|p| p.min),
                "max": p.and_then(|p| p.max),
                "latest": latest.get(m),
            })
        })
        .collect();
    let health = t.health.device(&d.id);
    let errors: serde_json::Map<String, Value> = health
        .as_ref()
        .map(|h| {
            h.errors
                .iter()
                .map(|(k, n)| (k.label().to_string(), json!(n)))
                .collect()
        })
        .unwrap_or_default();
    let interval = d
        .interval
        .unwrap_or(state.config.telemetry.default_interval);
    json!({
        "id": d.id,
        "device": d.id,
        "origin": null,
        "node_name": state.node.name,
        "name": d.name,
        "area": d.area.to_string(),
        "driver": d.kind.label(),
        "interval_s": interval.as_secs_f64(),
        "status": t.status(d, now, &state.config.telemetry),
        "last_seen": t.last_seen(&d.id),
        "readings_total": t.readings_total(&d.id),
        "errors": errors,
        "last_error": health.and_then(|h| h.last_error.map(|(at, kind, message)| json!({
            "at": at, "kind": kind.label(), "message": message,
        }))),
        "points": points,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `local` (this node's devices), `tree` (the nodes' below) or `all` (the default).
    #[serde(default, deserialize_with = "empty_as_none")]
    scope: Option<String>,
}

/// This node's devices and the stations of every node below it, within the caller's area.
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let (local, below) = match q.scope.as_deref() {
        None | Some("all") => (true, true),
        Some("local") => (true, false),
        Some("tree") => (false, true),
        Some(_) => return Err(ApiError::invalid("scope", "scope is local, tree or all")),
    };
    let now = state.clock.now_ms();
    let mut devices: Vec<Value> = if local {
        state
            .telemetry
            .devices
            .all()
            .iter()
            .filter(|d| caller.can_reach(&d.area))
            .map(|d| device_view(&state, d, now))
            .collect()
    } else {
        Vec::new()
    };
    if below {
        let (stations, children) = state
            .store
            .read(|conn| {
                Ok::<_, StoreError>((
                    tree::stations(conn)?,
                    crate::sync::registry::peers(conn, "downstream")?,
                ))
            })
            .await?;
        let names: std::collections::HashMap<String, String> =
            children.into_iter().map(|p| (p.node_id, p.name)).collect();
        devices.extend(
            stations
                .iter()
                .filter(|t| caller.can_reach(&t.area))
                .map(|t| tree_view(t, names.get(&t.via), now, &state.config.telemetry)),
        );
    }
    let directory = crate::areas::routes::directory(&state).await?;
    devices.iter_mut().for_each(|d| directory.annotate(d));
    Ok(Json(json!({ "devices": devices, "now": now })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    #[serde(default, deserialize_with = "empty_as_none")]
    metric: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    from: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    to: Option<String>,
    /// `raw` (the default) or a duration such as `1m`, `15m`, `1h`, `1d`.
    #[serde(default, deserialize_with = "empty_as_none")]
    step: Option<String>,
}

struct Range {
    from: i64,
    to: i64,
    step_ms: Option<i64>,
}

fn parse_range(q: &SeriesQuery, now: i64) -> Result<Range, ApiError> {
    let to = match &q.to {
        Some(t) => crate::clock::parse_time("to", t)?,
        None => now.saturating_add(1),
    };
    let from = match &q.from {
        Some(f) => crate::clock::parse_time("from", f)?,
        None => to.saturating_sub(24 * 3_600_000),
    };
    if from >= to {
        return Err(ApiError::invalid("from", "from must be before to"));
    }
    let step_ms = match q.step.as_deref() {
        None | Some("") | Some("raw") => None,
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|_| {
                ApiError::invalid("step", "step is `raw` or a duration such as 1m, 1h or 1d")
            })?;
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if ms < 1000 {
                return Err(ApiError::invalid(
                    "step",
                    "step must be at least one second",
                ));
            }
            Some(ms)
        }
    };
    if let Some(step) = step_ms
        && to.saturating_sub(from) / step > MAX_POINTS as i64
    {
        return Err(ApiError::invalid(
            "step",
            format!("more than {MAX_POINTS} buckets; choose a larger step or a shorter range"),
        ));
    }
    // Buckets start on whole steps (whole minutes, hours, days in UTC), so the first bucket is whole.
    let from = step_ms.map_or(from, |step| from.div_euclid(step) * step);
    Ok(Range { from, to, step_ms })
}

async fn readings(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let station = reachable(&state, &caller, &id).await?;
    let Some(metric) = q.metric.clone() else {
        return Err(ApiError::invalid(
            "metric",
            "name the metric, e.g. metric=water_level",
        ));
    };
    let range = parse_range(&q, state.clock.now_ms())?;
    let m = metric.clone();
    let (station, unit, points, truncated) = state
        .store
        .read(move |conn| {
            let Some((series, unit, source)) = station.series(conn, &m)? else {
                return Ok::<_, StoreError>((station, None, json!([]), false));
            };
            let (points, n) = match range.step_ms {
                None => {
                    let p = store::raw_range(
                        conn,
                        source,
                        series,
                        range.from,
                        range.to,
                        MAX_POINTS + 1,
                    )?;
                    let n = p.len();
                    (json!(p.into_iter().take(MAX_POINTS).collect::<Vec<_>>()), n)
                }
                Some(step) => {
                    let p = store::aggregated_range(
                        conn,
                        source,
                        series,
                        range.from,
                        range.to,
                        step,
                        MAX_POINTS + 1,
                    )?;
                    let n = p.len();
                    (json!(p.into_iter().take(MAX_POINTS).collect::<Vec<_>>()), n)
                }
            };
            Ok((station, unit, points, n > MAX_POINTS))
        })
        .await?;
    Ok(Json(json!({
        "device": station.id(),
        "metric": metric,
        "name": station.display_name(&metric),
        "unit": unit.or_else(|| station.default_unit(&metric)),
        "from": range.from,
        "to": range.to,
        "step_s": range.step_ms.map(|s| s as f64 / 1000.0),
        "truncated": truncated,
        "points": points,
    })))
}

async fn readings_csv(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Response, ApiError> {
    let station = reachable(&state, &caller, &id).await?;
    let range = parse_range(&q, state.clock.now_ms())?;
    let metrics: Vec<String> = match q.metric.clone() {
        Some(m) => vec![m],
        None => station.metrics(&state),
    };
    let device_id = station.id();
    let file_name = device_id.replace('@', "_");
    let body = state
        .store
        .read(move |conn| {
            let mut out = String::from(crate::http::csv::BOM);
            match range.step_ms {
                None => out.push_str("time,device,metric,value,unit,quality\r\n"),
                Some(_) => out.push_str("time,device,metric,min,max,mean,sum,count,unit\r\n"),
            }
            let mut rows = 0usize;
            for metric in metrics {
                let Some((series, unit, source)) = station.series(conn, &metric)? else {
                    continue;
                };
                let unit = crate::http::csv::field(unit.as_deref().unwrap_or(""));
                let (dev, met) = (
                    crate::http::csv::field(&device_id),
                    crate::http::csv::field(&metric),
                );
                let left = MAX_CSV_ROWS.saturating_sub(rows);
                match range.step_ms {
                    None => {
                        for p in store::raw_range(conn, source, series, range.from, range.to, left)?
                        {
                            let quality = serde_json::to_value(p.quality)
                                .ok()
                                .and_then(|v| v.as_str().map(String::from))
                                .unwrap_or_default();
                            out.push_str(&format!(
                                "{},{dev},{met},{},{unit},{quality}\r\n",
                                crate::clock::rfc3339_millis(p.t),
                                p.value
                            ));
                            rows += 1;
                        }
                    }
                    Some(step) => {
                        for p in store::aggregated_range(
                            conn, source, series, range.from, range.to, step, left,
                        )? {
                            out.push_str(&format!(
                                "{},{dev},{met},{},{},{},{},{},{unit}\r\n",
                                crate::clock::rfc3339_millis(p.t),
                                p.min,
                                p.max,
                                p.mean,
                                p.sum,
                                p.count
                            ));
                            rows += 1;
                        }
                    }
                }
            }
            Ok::<_, StoreError>(out)
        })
        .await?;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-readings.csv\"",
        file_name
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Live readings and status changes for the devices the caller can see. The stream ends when the
/// node shuts down, so an open browser tab never holds up a restart.
async fn stream(
    State(state): State<AppState>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.telemetry.events.subscribe();
    let shutdown = state.shutdown.clone();
    let telemetry_state = state.clone();
    let events = futures_util::stream::unfold(
        (rx, caller, telemetry_state, shutdown, Vec::<Event>::new()),
        |(mut rx, caller, state, shutdown, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop() {
                    return Some((Ok(e), (rx, caller, state, shutdown, pending)));
                }
                let event = tokio::select! {
                    e = rx.recv() => e,
                    () = shutdown.cancelled() => return None,
                };
                match event {
                    Ok(StreamEvent::Readings(readings)) => {
                        let visible: Vec<&township_drivers::Reading> = readings
                            .iter()
                            .filter(|r| {
                                state
                                    .telemetry
                                    .devices
                                    .get(&r.device)
                                    .is_some_and(|d| caller.can_reach(&d.area))
                            })
                            .collect();
                        if !visible.is_empty()
                            && let Ok(e) = Event::default().event("readings").json_data(&visible)
                        {
                            pending.push(e);
                        }
                    }
                    Ok(StreamEvent::Status {
                        device,
                        status,
                        last_seen,
                    }) => {
                        let can_see = state
                            .telemetry
                            .devices
                            .get(&device)
                            .is_some_and(|d| caller.can_reach(&d.area));
                        if can_see
                            && let Ok(e) = Event::default().event("status").json_data(json!({
                                "device": device, "status": status, "last_seen": last_seen,
                            }))
                        {
                            pending.push(e);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // The client fell behind; it should reload the list rather than trust gaps.
                        pending.push(Event::default().event("lagged").data(n.to_string()));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
