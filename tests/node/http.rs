//! The HTTP surface of a real serving process: system endpoints, metrics, problem details, the
//! embedded UI with its SPA fallback and cache rules, and graceful shutdown on signals.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[test]
fn healthz_readyz_and_node_info() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let server = Server::start(&dir, &[], &[]);

    let (status, headers, body) = blocking_get(&server.url("/healthz")).unwrap();
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert!(header(&headers, "x-request-id").is_some_and(|v| !v.is_empty()));
    let health = json(&body);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["area"], "330723001");
    assert_eq!(health["role"], "township");
    let id = run(&["id", "--data-dir", dir.to_str().unwrap()]);
    let id = json(&id.stdout);
    assert_eq!(health["node_id"], id["node_id"]);

    let (status, _, body) = blocking_get(&server.url("/readyz")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&body)["status"], "ready");

    let (status, _, body) = blocking_get(&server.url("/api/v1/node")).unwrap();
    assert_eq!(status, 200);
    let node = json(&body);
    assert_eq!(node["name"], "熟溪街道");
    assert_eq!(node["public_key"], id["public_key"]);

    let (status, _, body) = blocking_get(&server.url("/api/v1/openapi.json")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&body)["openapi"], "3.1.0");
}

#[test]
fn a_client_request_id_is_propagated() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&init_node(tmp.path()), &[], &[]);
    let (_, headers, _) = blocking_request(
        "GET",
        &server.url("/healthz"),
        &[("x-request-id", "trace-me-123")],
    )
    .unwrap();
    assert_eq!(header(&headers, "x-request-id"), Some("trace-me-123"));
}

#[test]
fn metrics_are_prometheus_text_with_the_required_families() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&init_node(tmp.path()), &[], &[]);
    for _ in 0..3 {
        blocking_get(&server.url("/healthz")).unwrap();
    }
    blocking_get(&server.url("/api/v1/no-such-thing")).unwrap();
    let (status, headers, body) = blocking_get(&server.url("/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body).unwrap();
    for family in [
        "township_build_info{version=",
        "township_uptime_seconds ",
        "process_resident_memory_bytes ",
        "http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 3",
        "http_requests_total{route=\"fallback\",method=\"GET\",status=\"404\"} 1",
        "http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 3",
        "http_request_duration_seconds_count{route=\"/healthz\"} 3",
        "township_db_size_bytes ",
        "township_records_quarantined 0",
        "township_audit_entries ",
    ] {
        assert!(text.contains(family), "missing {family} in:\n{text}");
    }
    // Every sample line parses as name{labels} value.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line}");
    }
    let rss: f64 = text
        .lines()
        .find(|l| l.starts_with("process_resident_memory_bytes "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss > 1_000_000.0);
}

#[test]
fn metrics_token_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &init_node(tmp.path()),
        &[],
        &[("TOWNSHIP_HTTP__METRICS_TOKEN", "s3cret-metrics")],
    );
    let (status, headers, body) = blocking_get(&server.url("/metrics")).unwrap();
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(json(&body)["status"], 401);
    let (status, _, _) = blocking_request(
        "GET",
        &server.url("/metrics"),
        &[("authorization", "Bearer wrong")],
    )
    .unwrap();
    assert_eq!(status, 401);
    let (status, _, _) = blocking_request(
        "GET",
        &server.url("/metrics"),
        &[("authorization", "Bearer s3cret-metrics")],
    )
    .unwrap();
    assert_eq!(status, 200);
    // The secret never reaches the log.
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        server
            .drain_lines()
            .iter()
            .all(|l| !l.contains("s3cret-metrics"))
    );
}

#[test]
fn errors_are_problem_details() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&init_node(tmp.path()), &[], &[]);
    let (status, headers, body) = blocking_get(&server.url("/api/v1/nothing-here")).unwrap();
    assert_eq!(status, 404);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    let problem = json(&body);
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["title"], "Not Found");
    assert!(problem["type"].is_string());

    // Wrong method on a known route: 405 with Allow, still a problem document.
    let (status, headers, body) = blocking_request("POST", &server.url("/healthz"), &[]).unwrap();
    assert_eq!(status, 405);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    assert!(header(&headers, "allow").is_some_and(|v| v.contains("GET")));
    assert_eq!(json(&body)["status"], 405);

    // Non-GET on the UI fallback.
    let (status, _, body) = blocking_request("DELETE", &server.url("/incidents"), &[]).unwrap();
    assert_eq!(status, 405);
    assert_eq!(json(&body)["status"], 405);
}

#[test]
fn the_ui_is_served_from_the_binary_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    // Run from an empty directory: nothing beside the binary.
    let empty = tmp.path().join("cwd");
    std::fs::create_dir(&empty).unwrap();
    let mut cmd = command(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.current_dir(&empty);
    let server = Server::spawn(cmd);

    let (status, headers, body) = blocking_get(&server.url("/")).unwrap();
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let cache = header(&headers, "cache-control").unwrap();
    assert!(
        cache.contains("no-cache") || cache.contains("no-store"),
        "shell must not be cached: {cache}"
    );
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("lang=\"zh-CN\""));
    assert!(
        !html.contains("__UI_VERSION__"),
        "version placeholder replaced"
    );

    // Every asset the shell references is served, versioned ones cacheable for a long time.
    let assets: Vec<String> = html
        .split(['"', '\''])
        .filter(|s| {
            s.starts_with("/assets/") || s.starts_with("/icon") || s.starts_with("/manifest")
        })
        .map(String::from)
        .collect();
    assert!(
        assets.iter().any(|a| a.ends_with("/js/app.js")),
        "{assets:?}"
    );
    for asset in &assets {
        let (status, headers, body) = blocking_get(&server.url(asset)).unwrap();
        assert_eq!(status, 200, "{asset}");
        assert!(!body.is_empty(), "{asset}");
        let cache = header(&headers, "cache-control").unwrap_or("");
        if asset.starts_with("/assets/") {
            assert!(
                cache.contains("max-age=31536000") && cache.contains("immutable"),
                "{asset}: {cache}"
            );
        } else {
            assert!(!cache.contains("immutable"), "{asset}: {cache}");
        }
        if asset.ends_with(".js") {
            assert!(
                header(&headers, "content-type")
                    .unwrap()
                    .contains("javascript"),
                "{asset}"
            );
        }
    }

    // ES module imports are relative, so every module app.js reaches, directly or through others
    // (static and dynamic imports), must resolve under the versioned prefix.
    let app_js = assets.iter().find(|a| a.ends_with("/js/app.js")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut queue = vec![app_js.to_string()];
    while let Some(module) = queue.pop() {
        if !seen.insert(module.clone()) {
            continue;
        }
        let (status, _, body) = blocking_get(&server.url(&module)).unwrap();
        assert_eq!(status, 200, "{module}");
        let text = String::from_utf8_lossy(&body).into_owned();
        let dir = &module[..module.rfind('/').unwrap() + 1];
        for quote in ["'./", "'../", "\"./", "\"../"] {
            for (at, _) in text.match_indices(quote) {
                let rest = &text[at + 1..];
                let end = rest.find(['\'', '"']).unwrap_or(rest.len());
                let target = &rest[..end];
                if !target.ends_with(".js") {
                    continue;
                }
                let mut parts: Vec<&str> = dir.trim_end_matches('/').split('/').collect();
                for part in target.split('/') {
                    match part {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        p => parts.push(p),
                    }
                }
                queue.push(parts.join("/"));
            }
        }
    }
    for expected in [
        "pages/sensors-list.js",
        "live-stream.js",
        "i18n/zh-CN.js",
        "format.js",
    ] {
        assert!(
            seen.iter().any(|m| m.ends_with(expected)),
            "{expected} not reached from app.js: {seen:?}"
        );
    }

    // Conditional requests save the bytes on slow links.
    let (_, headers, _) = blocking_get(&server.url(app_js)).unwrap();
    let etag = header(&headers, "etag").unwrap().to_string();
    let (status, _, body) =
        blocking_request("GET", &server.url(app_js), &[("if-none-match", &etag)]).unwrap();
    assert_eq!(status, 304);
    assert!(body.is_empty());

    // Compressed when the client asks.
    let (status, headers, _) =
        blocking_request("GET", &server.url(app_js), &[("accept-encoding", "gzip")]).unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
}

#[test]
fn spa_fallback_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&init_node(tmp.path()), &[], &[]);
    let (_, _, shell) = blocking_get(&server.url("/")).unwrap();

    // Deep links without a file extension get the shell.
    for path in [
        "/incidents",
        "/incidents/0192b7f0-1234",
        "/sensors/wl-01/chart",
        "/no/such/page",
    ] {
        let (status, headers, body) = blocking_get(&server.url(path)).unwrap();
        assert_eq!(status, 200, "{path}");
        assert!(
            header(&headers, "content-type")
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert_eq!(body, shell, "{path}");
    }
    // Unknown asset paths are 404, at the root and under the versioned prefix.
    for path in [
        "/missing.js",
        "/css/missing.css",
        "/assets/abc/js/missing.js",
        "/favicon.ico",
    ] {
        let (status, _, _) = blocking_get(&server.url(path)).unwrap();
        assert_eq!(status, 404, "{path}");
    }
    // Traversal attempts do not escape the embedded folder.
    for path in [
        "/assets/x/../Cargo.toml",
        "/assets/x/%2e%2e/Cargo.toml",
        "/../Cargo.toml",
    ] {
        let (status, _, body) = blocking_get(&server.url(path)).unwrap();
        assert!(
            status == 404 || status == 400 || (status == 200 && body == shell),
            "{path}: {status}"
        );
        assert!(
            !String::from_utf8_lossy(&body).contains("[workspace]"),
            "{path}"
        );
    }
    // Unknown API paths are JSON 404s, not the shell.
    let (status, headers, _) = blocking_get(&server.url("/api/v1/incidents-not-yet")).unwrap();
    assert_eq!(status, 404);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    // An asset under an old version is still served, but not as immutable.
    let (status, headers, _) = blocking_get(&server.url("/assets/000000000000/js/app.js")).unwrap();
    assert_eq!(status, 200);
    assert!(
        !header(&headers, "cache-control")
            .unwrap()
            .contains("immutable")
    );
}

#[test]
fn sigterm_with_open_connections_exits_zero_within_ten_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&init_node(tmp.path()), &[], &[]);
    // An idle keep-alive connection must not hold shutdown up.
    let host = server.base.trim_start_matches("http://").to_string();
    let mut idle = std::net::TcpStream::connect(&host).unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let (status, took) = server.signal_and_wait(rustix::process::Signal::TERM);
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let lines: Vec<String> = server.lines.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("stopped cleanly")),
        "{lines:?}"
    );
}

#[test]
fn sigint_also_shuts_down_cleanly_and_the_database_stays_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let mut server = Server::start(&dir, &[], &[]);
    let (status, took) = server.signal_and_wait(rustix::process::Signal::INT);
    assert!(status.success());
    assert!(took < Duration::from_secs(10));
    let out = run(&["doctor", "--data-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    // The lock was released: the node starts again.
    let server = Server::start(&dir, &[], &[]);
    assert_eq!(blocking_get(&server.url("/healthz")).unwrap().0, 200);
}

#[test]
fn json_logs_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let mut cmd = command(&[
        "serve",
        "--log-format",
        "json",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("listening on http://127.0.0.1:"),
        "{line}"
    );
    assert_eq!(line["level"], "INFO");
}
