//! Telemetry in process: readings handed over the way drivers hand them (through the sink), then
//! checked through the real router with a manual clock — latest values, status, raw and aggregated
//! series, duplicates, range and clock flags, CSV, the live stream, retention, and area rules.

use std::time::Duration;

use crate::common::harness::{Harness, MINUTE, START_MS};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use serde_json::Value;
use tower::ServiceExt;
use township_drivers::{Quality, Reading};
use township_node::auth::roles::Role;
use township_node::config::Config;
use township_node::telemetry::config::DeviceConfig;

fn device(id: &str, area: &str, toml_extra: &str) -> DeviceConfig {
    toml::from_str(&format!(
        "id = \"{id}\"\nname = \"{id} 站\"\narea = \"{area}\"\ndriver = \"hj212\"\nmn = \"MN{}\"\n{toml_extra}",
        id.replace('-', "")
    ))
    .unwrap()
}

async fn harness() -> Harness {
    let config = Config {
        devices: vec![
            device(
                "wl-01",
                "330723001",
                "interval = \"1m\"\npoints = [{ metric = \"water_level\", unit = \"m\", min = 0.0, max = 20.0 }]",
            ),
            device("aq-01", "330723001001", ""),
        ],
        ..Config::default()
    };
    let h = Harness::with_config(config).await;
    township_node::app::start_telemetry(h.state());
    h.add_user("staff", Role::TownshipStaff, "330723001", None)
        .await;
    h.add_user("village", Role::GridWorker, "330723001002", None)
        .await;
    h
}

fn reading(device: &str, metric: &str, t: i64, v: f64) -> Reading {
    crate::common::harness::reading(device, metric, t, v, Quality::Good)
}

async fn commit(h: &Harness, readings: Vec<Reading>) {
    h.commit(readings).await;
}

fn sensor<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {list}"))
}

#[tokio::test]
async fn readings_flow_to_latest_series_and_status() {
    let h = harness().await;
    let staff = h.session_for("staff").await;
    let (s, _, list) = h.as_(&staff, "GET", "/api/v1/sensors", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(sensor(&list, "wl-01")["status"], "unknown");

    // Ten minutes of water level, once a minute, plus noise the writer must sort out.
    let t0 = START_MS - 10 * MINUTE;
    let mut batch: Vec<Reading> = (0..10)
        .map(|i| {
            reading(
                "wl-01",
                "water_level",
                t0 + i * MINUTE,
                2.0 + i as f64 * 0.1,
            )
        })
        .collect();
    batch.push(reading(
        "wl-01",
        "water_level",
        t0 + 9 * MINUTE + 30_000,
        25.0,
    )); // out of range, kept
    batch.push(reading("wl-01", "water_level", START_MS + 3_600_000, 3.0)); // an hour ahead: corrected
    batch.push(reading("ghost", "water_level", t0, 1.0)); // not a device here: dropped
    commit(&h, batch.clone()).await;
    commit(&h, batch[..10].to_vec()).await; // a replay changes nothing

    let (_, _, list) = h.as_(&staff, "GET", "/api/v1/sensors", None).await;
    let wl = sensor(&list, "wl-01");
    assert_eq!(wl["status"], "online");
    assert_eq!(wl["readings_total"], 12);
    let point = &wl["points"][0];
    assert_eq!(point["metric"], "water_level");
    assert_eq!(point["unit"], "m");
    // The clock-corrected reading is the newest, at the receive time.
    assert_eq!(point["latest"]["t"], START_MS);
    assert_eq!(point["latest"]["quality"], "clock_corrected");

    let (s, _, raw) = h
        .as_(
            &staff,
            "GET",
            &format!("/api/v1/sensors/wl-01/readings?metric=water_level&from={t0}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    let points = raw["points"].as_array().unwrap();
    assert_eq!(points.len(), 12, "no duplicates: {raw}");
    assert_eq!(points[10]["quality"], "out_of_range");
    assert_eq!(points[10]["value"], 25.0);

    // Aggregated per five minutes: out-of-range values are kept raw but not averaged in.
    let (_, _, agg) = h
        .as_(
            &staff,
            "GET",
            &format!("/api/v1/sensors/wl-01/readings?metric=water_level&from={t0}&step=5m"),
            None,
        )
        .await;
    let buckets = agg["points"].as_array().unwrap();
    let counted: i64 = buckets.iter().map(|b| b["count"].as_i64().unwrap()).sum();
    assert_eq!(counted, 11, "{agg}");
    assert!(buckets.iter().all(|b| b["max"].as_f64().unwrap() < 20.0));

    // CSV: header, BOM, one row per raw reading.
    let (s, headers, csv) = h
        .send_raw(
            &staff,
            "GET",
            &format!("/api/v1/sensors/wl-01/readings.csv?from={t0}"),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "\u{feff}time,device,metric,value,unit,quality");
    assert_eq!(lines.len(), 1 + 12, "{csv}");
    assert!(lines[1].ends_with(",wl-01,water_level,2,m,good"), "{csv}");
    assert!(csv.contains(",25,m,out_of_range\r\n"), "{csv}");

    // Three intervals later with nothing new, the station is stale.
    h.clock.advance_ms(4 * MINUTE);
    let (_, _, list) = h.as_(&staff, "GET", "/api/v1/sensors", None).await;
    assert_eq!(sensor(&list, "wl-01")["status"], "stale");

    let (s, _, metrics) = h
        .send_raw(&staff, "GET", "/metrics", "text/plain", Vec::new())
        .await;
    assert_eq!(s, StatusCode::OK);
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "township_telemetry_readings_committed_total 12",
        "township_telemetry_readings_duplicate_total 10",
        "township_telemetry_readings_unknown_device_total 1",
        "township_telemetry_readings_out_of_range_total 1",
        "township_telemetry_readings_clock_corrected_total 1",
        "township_sensor_readings_total{device=\"wl-01\",driver=\"hj212\"} 12",
        "township_sensor_status{device=\"wl-01\",status=\"stale\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}`:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn bad_requests_are_refused_and_areas_are_enforced() {
    let h = harness().await;
    let staff = h.session_for("staff").await;
    let village = h.session_for("village").await;
    for (uri, field) in [
        ("/api/v1/sensors/wl-01/readings", "metric"),
        ("/api/v1/sensors/wl-01/readings?metric=x&step=fast", "step"),
        ("/api/v1/sensors/wl-01/readings?metric=x&step=1ms", "step"),
        (
            "/api/v1/sensors/wl-01/readings?metric=x&from=yesterday",
            "from",
        ),
        (
            "/api/v1/sensors/wl-01/readings?metric=x&from=2000&to=1000",
            "from",
        ),
        (
            "/api/v1/sensors/wl-01/readings?metric=x&from=0&step=1s",
            "step",
        ),
        // Extremes used to wrap the range arithmetic and slip past the points limit.
        (
            "/api/v1/sensors/wl-01/readings?metric=x&from=-9223372036854775808&step=1h",
            "from",
        ),
        (
            "/api/v1/sensors/wl-01/readings.csv?metric=x&to=9223372036854775807",
            "to",
        ),
    ] {
        let (s, _, body) = h.as_(&staff, "GET", uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["field"], field, "{uri}: {body}");
    }
    let (s, _, _) = h
        .as_(
            &staff,
            "GET",
            "/api/v1/sensors/nope/readings?metric=x",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A village grid worker sees neither the township's station nor another village's.
    let (_, _, list) = h.as_(&village, "GET", "/api/v1/sensors", None).await;
    assert_eq!(list["devices"].as_array().unwrap().len(), 0, "{list}");
    let (s, _, _) = h
        .as_(
            &village,
            "GET",
            "/api/v1/sensors/wl-01/readings?metric=water_level",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = h.call("GET", "/api/v1/sensors", &[], None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_stream_carries_new_readings_to_those_who_may_see_them() {
    let h = harness().await;
    let open = |cookie: String| {
        let router = h.router();
        async move {
            let request = Request::builder()
                .uri("/api/v1/stream")
                .header("host", "node.test")
                .header("cookie", cookie)
                .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                    [192, 0, 2, 7],
                    40000,
                ))))
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            response.into_body().into_data_stream()
        }
    };
    let mut body = open(h.session_for("staff").await.cookie).await;
    // A grid worker of another village sees neither the township's station nor this village's.
    let mut village = open(h.session_for("village").await.cookie).await;
    commit(
        &h,
        vec![
            reading("wl-01", "water_level", START_MS, 4.25),
            reading("aq-01", "a34004", START_MS, 31.0),
        ],
    )
    .await;
    let mut text = String::new();
    while !text.contains("4.25") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: readings"), "{text}");
    assert!(text.contains("\"device\":\"wl-01\""), "{text}");
    // Shutdown ends the stream, so an open tab cannot hold a restart.
    h.state().shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended on shutdown");
    let mut seen_by_village = String::new();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(chunk)) = village.next().await {
            seen_by_village.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(end.is_ok());
    assert!(
        !seen_by_village.contains("wl-01") && !seen_by_village.contains("aq-01"),
        "{seen_by_village}"
    );
}

#[tokio::test]
async fn retention_prunes_raw_readings_and_keeps_aggregates() {
    let h = harness().await;
    let t0 = (START_MS / 3_600_000 - 2) * 3_600_000;
    let batch: Vec<Reading> = (0..7200)
        .map(|i| {
            reading(
                "wl-01",
                "water_level",
                t0 + i * 1000,
                1.0 + (i % 10) as f64 * 0.1,
            )
        })
        .collect();
    commit(&h, batch).await;
    // Forty days on, raw readings are past their 30 days; the hourly aggregates remain.
    h.clock.advance_ms(40 * 86_400_000);
    let pruned = township_node::telemetry::prune(&h.state().telemetry_runtime(), 500)
        .await
        .unwrap();
    assert_eq!(pruned, 7200);
    let staff = h.session_for("staff").await;
    let q = format!("/api/v1/sensors/wl-01/readings?metric=water_level&from={t0}&to={START_MS}");
    let (_, _, raw) = h.as_(&staff, "GET", &q, None).await;
    assert_eq!(raw["points"].as_array().unwrap().len(), 0);
    let (_, _, hourly) = h.as_(&staff, "GET", &format!("{q}&step=1h"), None).await;
    let hours = hourly["points"].as_array().unwrap();
    assert_eq!(hours.len(), 2, "{hourly}");
    assert_eq!(
        hours
            .iter()
            .map(|p| p["count"].as_i64().unwrap())
            .sum::<i64>(),
        7200
    );
    assert!((hours[0]["mean"].as_f64().unwrap() - 1.45).abs() < 1e-9);
}
