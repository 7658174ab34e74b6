//! Durability under power-cut conditions: incidents acknowledged with 201 survive `kill -9` of the
//! node, across repeated kills in the middle of concurrent writes, and the database stays intact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

#[test]
fn acknowledged_incidents_survive_repeated_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let pw = tmp.path().join("grid.pw");
    std::fs::write(&pw, "Grid-Worker-2026\n").unwrap();
    let out = run(&[
        "user",
        "add",
        "--data-dir",
        dir.to_str().unwrap(),
        "--username",
        "grid.crash",
        "--role",
        "grid_worker",
        "--area",
        "330723001001",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    for round in 0..4 {
        let mut server = Server::start(&dir, &[], &[]);
        let session = login(&server.base, "grid.crash", "Grid-Worker-2026");
        let stop = Arc::new(AtomicBool::new(false));
        let round_acks = Arc::new(Mutex::new(0usize));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (base, session, stop, acks, round_acks) = (
                server.base.clone(),
                session.clone(),
                stop.clone(),
                acknowledged.clone(),
                round_acks.clone(),
            );
            writers.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let body = json!({"category": "其他", "title": format!("断电测试 {round}-{w}-{n}"), "area": "330723001001"});
                    let Ok((status, _, reply)) = std::panic::catch_unwind(|| {
                        send_json("POST", &format!("{base}/api/v1/incidents"), &session.headers(), &body)
                    }) else {
                        break; // the node died mid-request: that one was never acknowledged
                    };
                    if status == 201 {
                        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
                        acks.lock().unwrap().push(v["id"].as_str().unwrap().to_string());
                        *round_acks.lock().unwrap() += 1;
                    } else if status == 0 {
                        break;
                    }
                }
            }));
        }
        // Kill while writes are in flight, once a good number have been acknowledged.
        let deadline = Instant::now() + Duration::from_secs(30);
        while *round_acks.lock().unwrap() < 40 {
            assert!(
                Instant::now() < deadline,
                "writes are not being acknowledged"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (status, _) = server.signal_and_wait(rustix::process::Signal::KILL);
        assert!(!status.success());
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            let _ = w.join();
        }
    }

    // Every acknowledged incident is there after the last kill.
    let server = Server::start(&dir, &[], &[]);
    let session = login(&server.base, "grid.crash", "Grid-Worker-2026");
    let acked = acknowledged.lock().unwrap().clone();
    assert!(acked.len() >= 160, "{} acknowledged", acked.len());
    for id in &acked {
        let (status, _, _) = blocking_request(
            "GET",
            &server.url(&format!("/api/v1/incidents/{id}")),
            &session.headers(),
        )
        .unwrap();
        assert_eq!(status, 200, "acknowledged incident {id} was lost");
    }
    let (_, _, body) = blocking_request(
        "GET",
        &server.url("/api/v1/incidents?limit=1"),
        &session.headers(),
    )
    .unwrap();
    let total = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["total"]
        .as_u64()
        .unwrap();
    assert!(total as usize >= acked.len());
    drop(server);
    let out = run(&["doctor", "--data-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = run(&["audit", "verify", "--data-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}
