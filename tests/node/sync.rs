//! Sync between real processes over loopback: a county and two villages, edits made while the county
//! is stopped, the county started again, convergence checked through the HTTP API; enrollment,
//! revocation, an impostor county and an unenrolled node refused.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

fn incident_titles(server: &Server, session: &Session) -> Vec<String> {
    let (status, _, body) = blocking_request(
        "GET",
        &server.url("/api/v1/incidents?limit=200"),
        &session.headers(),
    )
    .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let mut titles: Vec<String> = v["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect();
    titles.sort();
    titles
}

fn incident_count(server: &Server, session: &Session) -> u64 {
    let (_, _, body) = blocking_request(
        "GET",
        &server.url("/api/v1/incidents?limit=1"),
        &session.headers(),
    )
    .unwrap();
    serde_json::from_slice::<Value>(&body).unwrap()["total"]
        .as_u64()
        .unwrap()
}

fn report(server: &Server, session: &Session, title: &str, area: &str) {
    let (status, _, body) = send_json(
        "POST",
        &server.url("/api/v1/incidents"),
        &session.headers(),
        &json!({"category": "其他", "title": title, "area": area}),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn villages_and_county_converge_after_the_county_was_down() {
    let tmp = tempfile::tempdir().unwrap();
    let county_port = free_port();
    let county = init_tree_node(tmp.path(), "county", "330723", "county", None);
    let county_key = id_of(&county)["public_key"].as_str().unwrap().to_string();
    let url = format!("http://127.0.0.1:{county_port}");
    let v1 = init_tree_node(
        tmp.path(),
        "v1",
        "330723001001",
        "village",
        Some((&url, &county_key)),
    );
    let v2 = init_tree_node(
        tmp.path(),
        "v2",
        "330723002001",
        "village",
        Some((&url, &county_key)),
    );
    for (dir, area, name) in [
        (&v1, "330723001001", "王宅村"),
        (&v2, "330723002001", "上茭道村"),
    ] {
        let key = id_of(dir)["public_key"].as_str().unwrap().to_string();
        let out = run(&[
            "enroll",
            "add",
            "--data-dir",
            county.to_str().unwrap(),
            "--public-key",
            &key,
            "--area",
            area,
            "--name",
            name,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    // The county is down: each village works on its own.
    let s1 = serve_on(&v1, free_port());
    let s2 = serve_on(&v2, free_port());
    let a1 = login(&s1.base, "admin", ADMIN_PASSWORD);
    let a2 = login(&s2.base, "admin", ADMIN_PASSWORD);
    for i in 0..3 {
        report(&s1, &a1, &format!("王宅村事件{i}"), "330723001001");
        report(&s2, &a2, &format!("上茭道村事件{i}"), "330723002001");
    }
    let (_, _, body) =
        blocking_request("GET", &s1.url("/api/v1/sync/status"), &a1.headers()).unwrap();
    let status: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["upstream"]["state"], "offline");

    // The county comes back; both villages converge with it, and neither sees the other's records.
    let county_server = serve_on(&county, county_port);
    let ca = login(&county_server.base, "admin", ADMIN_PASSWORD);
    wait_for("county to hold all six incidents", || {
        incident_titles(&county_server, &ca).len() == 6
    });
    assert_eq!(incident_titles(&s1, &a1).len(), 3);
    assert_eq!(incident_titles(&s2, &a2).len(), 3);
    let (_, _, body) =
        blocking_request("GET", &county_server.url("/api/v1/nodes"), &ca.headers()).unwrap();
    let nodes: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2, "{nodes}");
    assert!(
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["connected"] == true),
        "{nodes}"
    );
    // Each node's own version, reported in its hello, and when it was last seen.
    assert!(
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["version"] == env!("CARGO_PKG_VERSION") && n["last_seen_ms"].is_i64()),
        "{nodes}"
    );

    // Live: an edit at a connected village reaches the county in about a second.
    let started = Instant::now();
    report(&s1, &a1, "实时同步事件", "330723001001");
    wait_for("live push", || {
        incident_titles(&county_server, &ca).contains(&"实时同步事件".to_string())
    });
    assert!(started.elapsed() < Duration::from_secs(10));

    // A change made at the county to a village's record flows down to that village.
    let (_, _, body) = blocking_request(
        "GET",
        &county_server.url("/api/v1/incidents?q=%E5%AE%9E%E6%97%B6%E5%90%8C%E6%AD%A5"),
        &ca.headers(),
    )
    .unwrap();
    let id = serde_json::from_slice::<Value>(&body).unwrap()["incidents"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, _) = send_json(
        "POST",
        &county_server.url(&format!("/api/v1/incidents/{id}/comments")),
        &ca.headers(),
        &json!({"text": "县里已知悉"}),
    );
    assert_eq!(status, 201);
    wait_for("the comment at the village", || {
        let (_, _, body) = blocking_request(
            "GET",
            &s1.url(&format!("/api/v1/incidents/{id}")),
            &a1.headers(),
        )
        .unwrap();
        serde_json::from_slice::<Value>(&body).unwrap()["comments"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    });

    // A photo attached at the village reaches the county in chunks and verifies byte for byte.
    // Noise does not compress, so this photo spans several chunks.
    let photo = {
        let mut x: u32 = 2463534242;
        let img = image::RgbImage::from_fn(600, 500, |_, _| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    assert!(
        photo.len() > 3 * township_node::sync::BLOB_CHUNK,
        "{} bytes",
        photo.len()
    );
    let (ct, body) = crate::common::harness::multipart("file", "photo.png", &photo);
    let mut headers = a1.headers();
    headers.push(("content-type", &ct));
    let (status, _, reply) = blocking_send(
        "POST",
        &s1.url(&format!("/api/v1/incidents/{id}/attachments")),
        &headers,
        &body,
    )
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&reply));
    let sha = serde_json::from_slice::<Value>(&reply).unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the photo at the county", || {
        let (status, _, bytes) = blocking_request(
            "GET",
            &county_server.url(&format!("/api/v1/blobs/{sha}")),
            &ca.headers(),
        )
        .unwrap();
        status == 200 && bytes == photo
    });

    // The village's audit chain is shipped up by cursor and stored once per entry at the county.
    let v1_id = id_of(&v1)["node_id"].as_str().unwrap().to_string();
    let county_db = county.join("township.db");
    wait_for("the village's audit chain at the county", || {
        let conn = rusqlite::Connection::open_with_flags(
            &county_db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let shipped: i64 = conn
            .query_row(
                "SELECT count(*) FROM stream_records WHERE origin = ?1 AND stream = 'audit'",
                [&v1_id],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let own = rusqlite::Connection::open_with_flags(
            v1.join("township.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let entries: i64 = own
            .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        shipped > 0 && shipped == entries
    });

    // Revoking a node closes its connection at once.
    let v2_id = id_of(&v2)["node_id"].as_str().unwrap().to_string();
    let (status, _, _) = blocking_request(
        "DELETE",
        &county_server.url(&format!("/api/v1/nodes/{v2_id}")),
        &ca.headers(),
    )
    .unwrap();
    assert_eq!(status, 204);
    wait_for("v2 offline", || {
        let (_, _, body) =
            blocking_request("GET", &s2.url("/api/v1/sync/status"), &a2.headers()).unwrap();
        serde_json::from_slice::<Value>(&body).unwrap()["upstream"]["state"] == "offline"
    });
    report(&s2, &a2, "撤销后的事件", "330723002001");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !incident_titles(&county_server, &ca).contains(&"撤销后的事件".to_string()),
        "a revoked node syncs nothing"
    );
}

#[test]
fn an_impostor_county_and_an_unenrolled_village_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let county = init_tree_node(tmp.path(), "county", "330723", "county", None);
    let impostor = init_tree_node(tmp.path(), "impostor", "330723", "county", None);
    let real_key = id_of(&county)["public_key"].as_str().unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let village = init_tree_node(
        tmp.path(),
        "v",
        "330723001001",
        "village",
        Some((&url, &real_key)),
    );
    let key = id_of(&village)["public_key"].as_str().unwrap().to_string();
    let enrolled = run(&[
        "enroll",
        "add",
        "--data-dir",
        impostor.to_str().unwrap(),
        "--public-key",
        &key,
        "--area",
        "330723001001",
        "--name",
        "v",
    ]);
    assert!(
        enrolled.status.success(),
        "{}",
        crate::common::stderr(&enrolled)
    );

    // The impostor answers at the county's address with its own key: the village refuses it.
    let fake = serve_on(&impostor, port);
    // Refusals wait `sync.retry_max` before the next try; short here so the test sees several.
    let mut cmd = command(&[
        "serve",
        "--data-dir",
        village.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    cmd.env("TOWNSHIP_SYNC__RETRY_MAX", "2s");
    let sv = Server::spawn(cmd);
    let av = login(&sv.base, "admin", ADMIN_PASSWORD);
    report(&sv, &av, "不该泄露的事件", "330723001001");
    wait_for("a refusal", || {
        let (_, _, body) =
            blocking_request("GET", &sv.url("/api/v1/sync/status"), &av.headers()).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["upstream"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("impostor") || e.contains("pinned"))
    });
    let ai = login(&fake.base, "admin", ADMIN_PASSWORD);
    assert!(
        incident_titles(&fake, &ai).is_empty(),
        "nothing reached the impostor"
    );
    drop(fake);

    // The real county without an enrollment refuses the village.
    let real = serve_on(&county, port);
    let ac = login(&real.base, "admin", ADMIN_PASSWORD);
    wait_for("an unenrolled refusal", || {
        let (_, _, body) =
            blocking_request("GET", &sv.url("/api/v1/sync/status"), &av.headers()).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["upstream"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused: ") && e.contains("not enrolled"))
            && v["upstream"]["state"] == "refused"
    });
    assert!(incident_titles(&real, &ac).is_empty());
    let (_, _, body) = blocking_request(
        "GET",
        &real.url("/api/v1/audit?action=sync.refused"),
        &ac.headers(),
    )
    .unwrap();
    let audit: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        !audit["entries"].as_array().unwrap().is_empty(),
        "refusals are audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_oversized_frames_close_the_connection_and_the_node_carries_on() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tmp = tempfile::tempdir().unwrap();
    let county = init_tree_node(tmp.path(), "county", "330723", "county", None);
    let port = free_port();
    let server = tokio::task::spawn_blocking(move || serve_on(&county, port))
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/api/v1/sync");
    let (_, hello) = township_sync::handshake::Client::start(
        &township_sync::NodeKey::generate().unwrap().0,
        township_sync::NodeKey::generate().unwrap().0.public_key(),
    )
    .unwrap();
    let valid = township_sync::handshake::encode(&hello).unwrap();
    let attempts: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 64],
        valid[..valid.len() / 2].to_vec(),
        b"{\"json\": \"is not the protocol\"}".to_vec(),
        vec![7u8; 17 * 1024 * 1024],
    ];
    for (i, bytes) in attempts.into_iter().enumerate() {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let _ = ws.send(Message::Binary(bytes.into())).await;
        // The node answers with a refusal or closes; either way the connection ends.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "attempt {i}: connection stayed open");
    }
    let health =
        tokio::task::spawn_blocking(move || blocking_get(&server.url("/healthz")).unwrap().0)
            .await
            .unwrap();
    assert_eq!(health, 200, "the node carries on");
}

/// A TCP proxy that breaks every connection after `cut_after` bytes have crossed it, counting the
/// breaks: it either cuts the connection, or (`stall`) stops forwarding while keeping it open.
fn breaking_proxy(
    target: u16,
    cut_after: usize,
    stall: bool,
    broken_connections: usize,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = std::sync::Arc::new(AtomicUsize::new(0));
    let cuts_out = cuts.clone();
    std::thread::spawn(move || {
        let mut connected = 0;
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            // Connections after the first `broken_connections` that reached the target pass untouched.
            connected += 1;
            let cut_after = if connected <= broken_connections {
                cut_after
            } else {
                usize::MAX / 4
            };
            let moved = std::sync::Arc::new(AtomicUsize::new(0));
            let cuts = cuts.clone();
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server.try_clone().unwrap(), client.try_clone().unwrap()),
            ] {
                let (moved, cuts) = (moved.clone(), cuts.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if moved.fetch_add(n, Ordering::SeqCst) + n > cut_after {
                            if moved.swap(usize::MAX / 2, Ordering::SeqCst) < usize::MAX / 2 {
                                cuts.fetch_add(1, Ordering::SeqCst);
                            }
                            if stall {
                                // Hold the connection open and carry nothing more, for good.
                                loop {
                                    std::thread::sleep(std::time::Duration::from_secs(3600));
                                }
                            }
                            break;
                        }
                    }
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (port, cuts_out)
}

#[test]
fn a_link_cut_again_and_again_mid_sync_and_mid_blob_still_delivers_everything_verified() {
    let tmp = tempfile::tempdir().unwrap();
    // Every connection through the proxy dies after 300 KB: a 1 MB photo only arrives by resuming.
    let (county, county_port, village, cuts) =
        proxied_pair(tmp.path(), 300 * 1024, false, usize::MAX);
    let sv = serve_on(&village, free_port());
    let av = login(&sv.base, "admin", ADMIN_PASSWORD);
    for i in 0..40 {
        report(&sv, &av, &format!("断线测试{i:02}"), "330723001001");
    }
    let (_, _, body) =
        blocking_request("GET", &sv.url("/api/v1/incidents?limit=1"), &av.headers()).unwrap();
    let id = serde_json::from_slice::<Value>(&body).unwrap()["incidents"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let photo = {
        let mut x: u32 = 88172645;
        let img = image::RgbImage::from_fn(620, 560, |_, _| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    assert!(photo.len() > 1_000_000);
    let (ct, body) = crate::common::harness::multipart("file", "big.png", &photo);
    let mut headers = av.headers();
    headers.push(("content-type", &ct));
    let (status, _, reply) = blocking_send(
        "POST",
        &sv.url(&format!("/api/v1/incidents/{id}/attachments")),
        &headers,
        &body,
    )
    .unwrap();
    assert_eq!(status, 201);
    let sha = serde_json::from_slice::<Value>(&reply).unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let cs = serve_on(&county, county_port);
    let ac = login(&cs.base, "admin", ADMIN_PASSWORD);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records = incident_titles(&cs, &ac).len();
        let (status, _, bytes) = blocking_request(
            "GET",
            &cs.url(&format!("/api/v1/blobs/{sha}")),
            &ac.headers(),
        )
        .unwrap();
        if records == 40 && status == 200 {
            assert_eq!(bytes, photo, "the photo verifies byte for byte");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered through the cutting proxy: {records} records, blob {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        cuts.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "the link was cut several times"
    );
}

#[test]
fn a_stalled_link_is_noticed_and_reopened_and_everything_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    // The first connection stops carrying anything (but stays open) after 8 KB, mid catch-up; the
    // village must notice and open another.
    let (county, county_port, village, stalls) = proxied_pair(tmp.path(), 8 * 1024, true, 1);
    let quick = [("TOWNSHIP_SYNC__STALL_TIMEOUT", "2s")];
    let mut cmd = command(&[
        "serve",
        "--data-dir",
        village.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    cmd.envs(quick);
    let sv = Server::spawn(cmd);
    let av = login(&sv.base, "admin", ADMIN_PASSWORD);
    for i in 0..300 {
        report(&sv, &av, &format!("停滞测试{i:03}"), "330723001001");
    }
    let mut cmd = command(&[
        "serve",
        "--data-dir",
        county.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{county_port}"),
    ]);
    cmd.envs(quick);
    let cs = Server::spawn(cmd);
    let ac = login(&cs.base, "admin", ADMIN_PASSWORD);
    let deadline = Instant::now() + Duration::from_secs(90);
    while incident_count(&cs, &ac) < 300 {
        if Instant::now() > deadline {
            let (_, _, body) =
                blocking_request("GET", &sv.url("/api/v1/sync/status"), &av.headers()).unwrap();
            let lines: Vec<String> = sv
                .drain_lines()
                .into_iter()
                .filter(|l| !l.contains("http"))
                .collect();
            let clines: Vec<String> = cs
                .drain_lines()
                .into_iter()
                .filter(|l| !l.contains("http"))
                .collect();
            panic!(
                "stalled links were not reopened: {} of 300; village status {}; village log {:?}; county log {:?}",
                incident_count(&cs, &ac),
                String::from_utf8_lossy(&body),
                &lines[lines.len().saturating_sub(8)..],
                &clines[clines.len().saturating_sub(8)..]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        stalls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the first link stalled mid-sync"
    );
}

/// A county and one village enrolled at it, the village's upstream reached through a proxy that
/// breaks the first `broken_connections` connections after `break_after` bytes (cut, or `stall`ed). Returns the county's data
/// directory and port, the village's data directory, and the break counter.
fn proxied_pair(
    tmp: &std::path::Path,
    break_after: usize,
    stall: bool,
    broken_connections: usize,
) -> (
    std::path::PathBuf,
    u16,
    std::path::PathBuf,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let county_port = free_port();
    let county = init_tree_node(tmp, "county", "330723", "county", None);
    let county_key = id_of(&county)["public_key"].as_str().unwrap().to_string();
    let (proxy_port, breaks) = breaking_proxy(county_port, break_after, stall, broken_connections);
    let url = format!("http://127.0.0.1:{proxy_port}");
    let village = init_tree_node(
        tmp,
        "v",
        "330723001001",
        "village",
        Some((&url, &county_key)),
    );
    let key = id_of(&village)["public_key"].as_str().unwrap().to_string();
    let out = run(&[
        "enroll",
        "add",
        "--data-dir",
        county.to_str().unwrap(),
        "--public-key",
        &key,
        "--area",
        "330723001001",
        "--name",
        "v",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    (county, county_port, village, breaks)
}

/// Names made at the county flow down to a village over a real sync link; the village may name
/// nothing itself.
#[test]
fn area_names_made_at_the_county_flow_down_to_a_village() {
    let tmp = tempfile::tempdir().unwrap();
    let (county, county_port, village, _) = proxied_pair(tmp.path(), 1 << 40, false, 0);
    let cs = Server::spawn(command(&[
        "serve",
        "--data-dir",
        county.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{county_port}"),
    ]));
    let ac = login(&cs.base, "admin", ADMIN_PASSWORD);
    for (code, name) in [
        ("330723", "武义县"),
        ("330723001", "熟溪街道"),
        ("330723001001", "王宅村"),
    ] {
        let (status, _, body) = send_json(
            "PUT",
            &cs.url(&format!("/api/v1/areas/{code}")),
            &ac.headers(),
            &json!({"name": name}),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let sv = Server::spawn(command(&[
        "serve",
        "--data-dir",
        village.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]));
    let av = login(&sv.base, "admin", ADMIN_PASSWORD);
    let names = || -> Vec<(String, String)> {
        let (_, _, body) =
            blocking_request("GET", &sv.url("/api/v1/areas"), &av.headers()).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["areas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["code"].as_str().unwrap().to_string(),
                    a["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while names().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "names never arrived: {:?}",
            names()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        names(),
        vec![
            ("330723".to_string(), "武义县".to_string()),
            ("330723001".to_string(), "熟溪街道".to_string()),
            ("330723001001".to_string(), "王宅村".to_string()),
        ]
    );
    // The village's own admin may not rename even its own village.
    let (status, _, _) = send_json(
        "PUT",
        &sv.url("/api/v1/areas/330723001001"),
        &av.headers(),
        &json!({"name": "县政府"}),
    );
    assert_eq!(status, 403);
}

/// A small PNG of noise, different for every `seed` (so every photo is its own attachment).
fn noise_png(seed: u32, width: u32, height: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let img = image::RgbImage::from_fn(width, height, |_, _| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A village link in a storm: every connection through the proxy dies after 64 KB (both directions
/// counted). A cold sync of 5,000 incidents, every tenth with a photo, still completes, because each
/// connection carries at least one acknowledged batch and attachment chunks start small.
/// `SYNC_CUT_INCIDENTS` changes the number.
#[test]
fn a_cold_sync_through_a_link_cut_every_64_kb_completes_with_photos() {
    let n: usize = std::env::var("SYNC_CUT_INCIDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let tmp = tempfile::tempdir().unwrap();
    let (county, county_port, village, cuts) =
        proxied_pair(tmp.path(), 64 * 1024, false, usize::MAX);
    let sv = serve_on(&village, free_port());
    let av = login(&sv.base, "admin", ADMIN_PASSWORD);
    let made = Instant::now();
    let shas: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (base, av) = (sv.base.as_str(), &av);
                s.spawn(move || {
                    let mut shas = Vec::new();
                    for i in (w..n).step_by(8) {
                        let (status, _, body) = send_json(
                            "POST",
                            &format!("{base}/api/v1/incidents"),
                            &av.headers(),
                            &json!({"category": "环境卫生", "title": format!("暴雨断线{i:05}"),
                                    "description": "河道垃圾堆积，请尽快处理。", "area": "330723001001"}),
                        );
                        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                        if i % 10 != 0 {
                            continue;
                        }
                        let id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        let (ct, form) = crate::common::harness::multipart(
                            "file",
                            "photo.png",
                            &noise_png(i as u32, 64, 48),
                        );
                        let mut headers = av.headers();
                        headers.push(("content-type", &ct));
                        let (status, _, reply) = blocking_send(
                            "POST",
                            &format!("{base}/api/v1/incidents/{id}/attachments"),
                            &headers,
                            &form,
                        )
                        .unwrap();
                        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&reply));
                        shas.push(
                            serde_json::from_slice::<Value>(&reply).unwrap()["sha256"]
                                .as_str()
                                .unwrap()
                                .to_string(),
                        );
                    }
                    shas
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    eprintln!(
        "{n} incidents and {} photos made in {:.1} s",
        shas.len(),
        made.elapsed().as_secs_f64()
    );

    let cs = serve_on(&county, county_port);
    let ac = login(&cs.base, "admin", ADMIN_PASSWORD);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    while incident_count(&cs, &ac) < n as u64 {
        assert!(
            Instant::now() < deadline,
            "records stopped short through the cutting proxy: {} of {n}",
            incident_count(&cs, &ac)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let records_done = started.elapsed();
    let mut missing: Vec<String> = shas.clone();
    while !missing.is_empty() {
        missing.retain(|sha| {
            blocking_request(
                "GET",
                &cs.url(&format!("/api/v1/blobs/{sha}")),
                &ac.headers(),
            )
            .map(|(status, _, _)| status != 200)
            .unwrap_or(true)
        });
        assert!(
            Instant::now() < deadline,
            "photos stopped short through the cutting proxy: {} of {} missing",
            missing.len(),
            shas.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let connections = cuts.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "through a link cut every 64 KB: {n} records in {:.1} s, with {} photos in {:.1} s, {connections} connections cut",
        records_done.as_secs_f64(),
        shas.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(connections >= 10, "the link was cut again and again");
}

/// Enrols `child` (its key) at `parent` for `area`.
fn enroll_at(parent: &std::path::Path, child: &std::path::Path, area: &str, name: &str) {
    let key = id_of(child)["public_key"].as_str().unwrap().to_string();
    let out = run(&[
        "enroll",
        "add",
        "--data-dir",
        parent.to_str().unwrap(),
        "--public-key",
        &key,
        "--area",
        area,
        "--name",
        name,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A county, a township enrolled under it (城关镇) and a village under the township (王宅村), each
/// pointed at the one above on a chosen port; none is running yet.
struct ThreeLevels {
    _tmp: tempfile::TempDir,
    county: std::path::PathBuf,
    township: std::path::PathBuf,
    village: std::path::PathBuf,
    county_port: u16,
    township_port: u16,
    village_id: String,
}

fn three_levels() -> ThreeLevels {
    let tmp = tempfile::tempdir().unwrap();
    let (county_port, township_port) = (free_port(), free_port());
    let county = init_tree_node(tmp.path(), "county", "330723", "county", None);
    let county_key = id_of(&county)["public_key"].as_str().unwrap().to_string();
    let township = init_tree_node(
        tmp.path(),
        "township",
        "330723001",
        "township",
        Some((&format!("http://127.0.0.1:{county_port}"), &county_key)),
    );
    let township_key = id_of(&township)["public_key"].as_str().unwrap().to_string();
    let village = init_tree_node(
        tmp.path(),
        "village",
        "330723001001",
        "village",
        Some((&format!("http://127.0.0.1:{township_port}"), &township_key)),
    );
    enroll_at(&county, &township, "330723001", "城关镇");
    enroll_at(&township, &village, "330723001001", "王宅村");
    let village_id = id_of(&village)["node_id"].as_str().unwrap().to_string();
    ThreeLevels {
        _tmp: tmp,
        county,
        township,
        village,
        county_port,
        township_port,
        village_id,
    }
}

fn chains(server: &Server, session: &Session) -> Vec<Value> {
    let (status, _, body) = blocking_request(
        "GET",
        &server.url("/api/v1/sync/chains"),
        &session.headers(),
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<Value>(&body).unwrap()["chains"]
        .as_array()
        .unwrap()
        .clone()
}

/// A township relays its village's audit chain to the county, but one entry was altered in the
/// township's store on the way. The county checks every origin's chain against that node's key
/// and flags the village's chain as broken at that entry (API, metric, audit), while the
/// township's own chain stays intact.
#[test]
fn a_relayed_audit_entry_altered_on_its_way_up_is_flagged_at_the_county() {
    let ThreeLevels {
        _tmp,
        county,
        township,
        village,
        county_port,
        township_port,
        village_id,
    } = three_levels();
    let township_id = id_of(&township)["node_id"].as_str().unwrap().to_string();

    // The county is down; the village's chain reaches the township and checks out there.
    let ts = serve_on(&township, township_port);
    let vs = serve_on(&village, free_port());
    let va = login(&vs.base, "admin", ADMIN_PASSWORD);
    for i in 0..3 {
        report(&vs, &va, &format!("审计链{i}"), "330723001001");
    }
    let ta = login(&ts.base, "admin", ADMIN_PASSWORD);
    let mut shipped = 0;
    wait_for("the village's chain to reach the township", || {
        let found = chains(&ts, &ta);
        shipped = found
            .iter()
            .find(|c| c["origin"] == village_id.as_str())
            .and_then(|c| c["entries"].as_i64())
            .unwrap_or(0);
        shipped >= 5 && found.iter().all(|c| c["intact"] == true)
    });
    drop(vs);
    drop(ts);

    // One relayed entry is rewritten in the township's store, hash and all.
    let db = rusqlite::Connection::open(township.join("township.db")).unwrap();
    let (seq, payload): (i64, Vec<u8>) = db
        .query_row(
            "SELECT seq, payload FROM stream_records WHERE origin = ?1 AND stream = 'audit' AND seq = 3",
            [&village_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut entry: Value = serde_json::from_slice(&payload).unwrap();
    entry["target"] = "incident/forged".into();
    let forged = entry.to_string();
    db.execute(
        "UPDATE stream_records SET payload = ?1 WHERE origin = ?2 AND stream = 'audit' AND seq = ?3",
        rusqlite::params![forged.as_bytes(), village_id, seq],
    )
    .unwrap();
    drop(db);

    let cs = serve_on(&county, county_port);
    let _ts = serve_on(&township, township_port);
    let ca = login(&cs.base, "admin", ADMIN_PASSWORD);
    wait_for("the county to check both chains", || {
        let found = chains(&cs, &ca);
        found.iter().any(|c| c["origin"] == village_id.as_str())
            && found.iter().any(|c| c["origin"] == township_id.as_str())
    });
    let found = chains(&cs, &ca);
    let village_chain = found
        .iter()
        .find(|c| c["origin"] == village_id.as_str())
        .unwrap();
    assert_eq!(village_chain["intact"], false, "{village_chain}");
    assert_eq!(village_chain["broken_seq"], seq, "{village_chain}");
    assert_eq!(village_chain["via"], township_id.as_str());
    let township_chain = found
        .iter()
        .find(|c| c["origin"] == township_id.as_str())
        .unwrap();
    assert_eq!(township_chain["intact"], true, "{township_chain}");
    assert_eq!(township_chain["name"], "城关镇");
    // The nodes page shows it beside the township, the metric counts it, the audit log says it.
    let (_, _, body) = blocking_request("GET", &cs.url("/api/v1/nodes"), &ca.headers()).unwrap();
    let nodes: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(nodes["nodes"][0]["chain"]["intact"], true, "{nodes}");
    let (_, _, metrics) = blocking_request("GET", &cs.url("/metrics"), &[]).unwrap();
    assert!(
        String::from_utf8_lossy(&metrics).contains("\ntownship_audit_chains_broken 1\n"),
        "the metric counts the broken chain"
    );
    let (_, _, body) = blocking_request(
        "GET",
        &cs.url("/api/v1/audit?action=audit.chain_broken"),
        &ca.headers(),
    )
    .unwrap();
    let audit: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(1),
        "audited once: {audit}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn sensors(server: &Server, session: &Session, query: &str) -> Vec<Value> {
    let (status, _, body) = blocking_request(
        "GET",
        &server.url(&format!("/api/v1/sensors{query}")),
        &session.headers(),
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<Value>(&body).unwrap()["devices"]
        .as_array()
        .unwrap()
        .clone()
}

/// A village's MQTT rain gauge reports through the village's broker; its description, minute
/// aggregates and raw readings go up through the township to the county, which lists the station
/// with its latest value and charts it by minute, while a county user of another township sees
/// none of it.
#[test]
fn a_villages_readings_reach_the_county_through_the_township() {
    if !have("mosquitto_pub", &["--help"]) {
        return;
    }
    let ThreeLevels {
        _tmp,
        county,
        township,
        village,
        county_port,
        township_port,
        village_id,
    } = three_levels();
    let config = village.join("township-node.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap_or_default();
    toml.push_str(
        r#"
[mqtt]
listen = "127.0.0.1:0"

[[devices]]
id = "rain-02"
name = "王宅村雨量站"
area = "330723001001"
driver = "mqtt"
username = "rain-02"
password = "rain-02-secret-pw"
format = "json"
points = [ { metric = "rainfall", unit = "mm", min = 0.0, max = 200.0 } ]
"#,
    );
    std::fs::write(&config, toml).unwrap();

    let cs = serve_on(&county, county_port);
    let _ts = serve_on(&township, township_port);
    let mut _vs = serve_on(&village, free_port());
    let addr = _vs.wait_for_line("mqtt broker listening on mqtt://", Duration::from_secs(10));
    let (host, port) = addr.rsplit_once(':').unwrap();
    // Three readings in a minute that is over, one now.
    let minute = (now_ms() / 60_000 - 3) * 60_000;
    let now = now_ms() / 1000 * 1000;
    for (ts, mm) in [
        (minute + 5_000, 0.5),
        (minute + 25_000, 1.0),
        (minute + 45_000, 1.5),
        (now, 2.5),
    ] {
        let out = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                host,
                "-p",
                port,
                "-u",
                "rain-02",
                "-P",
                "rain-02-secret-pw",
                "-q",
                "1",
                "-t",
                "sensors/rain-02",
                "-m",
                &format!(r#"{{"ts": {ts}, "rainfall": {mm}}}"#),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let ca = login(&cs.base, "admin", ADMIN_PASSWORD);
    let id = format!("rain-02@{village_id}");
    let mut station = Value::Null;
    wait_for(
        "the village's station and its readings at the county",
        || {
            station = sensors(&cs, &ca, "?scope=tree")
                .into_iter()
                .find(|d| d["id"] == id.as_str())
                .unwrap_or(Value::Null);
            station["points"][0]["latest"]["t"] == now
        },
    );
    assert_eq!(station["name"], "王宅村雨量站", "{station}");
    assert_eq!(station["area"], "330723001001");
    assert_eq!(station["origin"], village_id.as_str());
    assert_eq!(station["node_name"], "village");
    assert_eq!(station["status"], "online", "{station}");
    assert_eq!(station["points"][0]["unit"], "mm");
    assert_eq!(station["points"][0]["latest"]["value"], 2.5);
    // The closed minute, whole, once; and every raw reading of the window.
    let path = format!(
        "/api/v1/sensors/{}/readings?metric=rainfall&step=1m&from={minute}&to={}",
        id.replace('@', "%40"),
        minute + 60_000
    );
    let (status, _, body) = blocking_request("GET", &cs.url(&path), &ca.headers()).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let series: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        series["points"].as_array().map(Vec::len),
        Some(1),
        "{series}"
    );
    assert_eq!(series["points"][0]["sum"], 3.0, "{series}");
    assert_eq!(series["points"][0]["count"], 3, "{series}");
    let raw = format!(
        "/api/v1/sensors/{}/readings?metric=rainfall&from={minute}",
        id.replace('@', "%40")
    );
    wait_for("all four raw readings at the county", || {
        let (_, _, body) = blocking_request("GET", &cs.url(&raw), &ca.headers()).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        v["points"].as_array().map(Vec::len) == Some(4)
    });
    // The township sees its village's station too; its own list has no devices of its own.
    let ta = login(&_ts.base, "admin", ADMIN_PASSWORD);
    assert!(
        sensors(&_ts, &ta, "")
            .iter()
            .any(|d| d["id"] == id.as_str())
    );

    // The township reports its link to the village: the county sees it, one level further down.
    wait_for("the village's link at the county", || {
        let (_, _, body) =
            blocking_request("GET", &cs.url("/api/v1/nodes"), &ca.headers()).unwrap();
        let nodes: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        nodes["below"].as_array().is_some_and(|below| {
            below.iter().any(|n| {
                n["node_id"] == village_id.as_str()
                    && n["connected"] == true
                    && n["name"] == "王宅村"
            })
        })
    });

    // A county user of another township sees neither the station nor its readings.
    let (status, _, body) = send_json(
        "POST",
        &cs.url("/api/v1/users"),
        &ca.headers(),
        &json!({"username": "other.town", "role": "township_staff", "area": "330723002",
                "password": "Other-Town-Staff-1"}),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let other = login(&cs.base, "other.town", "Other-Town-Staff-1");
    assert!(sensors(&cs, &other, "").is_empty());
    let (status, _, _) = blocking_request("GET", &cs.url(&raw), &other.headers()).unwrap();
    assert_eq!(status, 404);
}
