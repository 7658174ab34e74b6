//! Input hygiene, in process (real store and router): times outside a sane window, control
//! characters, JSON with trailing data, a Host the node does not answer to (DNS rebinding), and
//! /metrics for strangers — each a clear 4xx with nothing stored, never a 500 or a silent wrap.

use crate::common::harness::*;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;
use township_node::auth::roles::Role;
use township_node::config::{Config, Secret};

async fn raw(
    h: &Harness,
    host: &str,
    path: &str,
    from: [u8; 4],
    extra: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut builder = Request::builder()
        .method("GET")
        .uri(path)
        .header("host", host);
    for (k, v) in extra {
        builder = builder.header(*k, *v);
    }
    let mut request = builder.body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            from, 40000,
        ))));
    let response = h.router().oneshot(request).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).to_string())
}

async fn incident_count(h: &Harness, s: &Session) -> u64 {
    let (_, _, v) = h.as_(s, "GET", "/api/v1/incidents?limit=1", None).await;
    v["total"].as_u64().unwrap()
}

#[tokio::test]
async fn times_outside_a_sane_window_are_400_not_wrapped() {
    let h = Harness::new().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let staff = h
        .user("staff.li", Role::TownshipStaff, "330723001", None)
        .await;
    let admin = h.session_for("admin").await;
    let (_, _, v) = h
        .as_(
            &grid,
            "POST",
            "/api/v1/incidents",
            Some(report("路灯不亮", "其他")),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let (status, _, v) = h
        .as_(
            &staff,
            "POST",
            &format!("/api/v1/incidents/{id}/transitions"),
            Some(json!({"action": "accept"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // A deadline of i64::MAX used to wrap and show as "near".
    for deadline in [json!(i64::MAX), json!(-1), json!("9999-01-01T00:00:00Z")] {
        let (status, _, v) = h
            .as_(
                &staff,
                "POST",
                &format!("/api/v1/incidents/{id}/transitions"),
                Some(json!({"action": "dispatch", "department": "water", "deadline": deadline})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{deadline}: {v}");
        assert_eq!(v["field"], "deadline");
    }
    for path in [
        "/api/v1/incidents?from=-9223372036854775808".to_string(),
        "/api/v1/incidents?to=9223372036854775807".to_string(),
        "/api/v1/indicators?from=-1".to_string(),
        "/api/v1/audit?from=99999999999999999".to_string(),
        "/api/v1/incidents/export.csv?from=-5".to_string(),
    ] {
        let s = if path.contains("audit") {
            &admin
        } else {
            &staff
        };
        let v = h
            .act(s, "GET", &path, None)
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert!(v["field"] == "from" || v["field"] == "to", "{path}: {v}");
    }
}

#[tokio::test]
async fn control_characters_and_trailing_json_are_refused_and_store_nothing() {
    let h = Harness::new().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    // A NUL in a search used to be a 500 from SQLite.
    let (status, _, v) = h
        .as_(&grid, "GET", "/api/v1/incidents?q=%E6%B2%B3%00x", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "q");
    let before = incident_count(&h, &grid).await;
    let (status, _, v) = h
        .as_(
            &grid,
            "POST",
            "/api/v1/incidents",
            Some(report("河道\u{0}垃圾", "其他")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "title");
    // Two JSON values in one body: refused, not the first taken and the rest ignored.
    let body = format!("{}{}", report("河道垃圾", "其他"), json!({"admin": true}));
    let (status, _, out) = h
        .send_raw(
            &grid,
            "POST",
            "/api/v1/incidents",
            "application/json",
            body.into_bytes(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&out)
    );
    let body = format!("{} trailing", report("河道垃圾", "其他"));
    let (status, _, _) = h
        .send_raw(
            &grid,
            "POST",
            "/api/v1/incidents",
            "application/json",
            body.into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(incident_count(&h, &grid).await, before, "nothing stored");
}

#[tokio::test]
async fn a_host_the_node_does_not_answer_to_is_refused() {
    let h = Harness::new().await;
    let lan = [192, 168, 1, 20];
    // A page at evil.example whose name now resolves to the hub (DNS rebinding).
    for path in ["/", "/api/v1/session", "/api/v1/node", "/incidents"] {
        let (status, body) = raw(&h, "evil.example", path, lan, &[]).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{path}: {body}");
        assert!(body.contains("http.tls_names"), "{body}");
        let (status, _) = raw(&h, "evil.example:8080", path, lan, &[]).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{path}");
    }
    // Addresses, localhost, and the configured names are the node.
    for host in [
        "192.168.1.5:8080",
        "127.0.0.1",
        "[::1]:8080",
        "localhost:8080",
        "node.test",
        "NODE.TEST.",
    ] {
        let (status, body) = raw(&h, host, "/api/v1/node", lan, &[]).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    // Health checks answer under any name.
    let (status, _) = raw(&h, "evil.example", "/healthz", lan, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_answer_on_loopback_or_with_the_token_only() {
    let h = Harness::new().await;
    let (status, _) = raw(&h, "node.test", "/metrics", [192, 168, 1, 20], &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = raw(&h, "127.0.0.1", "/metrics", [127, 0, 0, 1], &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("township_build_info") || body.contains("township_"));

    let mut config = Config::default();
    config.http.metrics_token = Some(Secret::new("scrape-token-0123456789"));
    let h = Harness::with_config(config).await;
    let lan = [192, 168, 1, 20];
    assert_eq!(
        raw(&h, "node.test", "/metrics", lan, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        raw(
            &h,
            "node.test",
            "/metrics",
            lan,
            &[("authorization", "Bearer scrape-token-0123456789")]
        )
        .await
        .0,
        StatusCode::OK
    );

    let mut config = Config::default();
    config.http.metrics_public = true;
    let h = Harness::with_config(config).await;
    assert_eq!(
        raw(&h, "node.test", "/metrics", lan, &[]).await.0,
        StatusCode::OK
    );
}
