//! Broadcasts in process, with espeak-ng and audio commands as the outputs: a staff broadcast plays
//! on its zone's outputs with receipts; a test reaches only monitor outputs and says so; the
//! two-person rule for every role pair; cancel within two seconds; a correction within a minute
//! without a second approval; a red pre-empting a routine programme that then plays again; audio
//! messages checked by content; the zones API; and orders forged, altered, replayed or expired
//! that never play.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::harness::{Harness, Session, multipart};
use axum::http::StatusCode;
use serde_json::{Value, json};
use township_node::auth::roles::Role;
use township_node::config::Config;
use township_node::pa::config::{CommandOutput, Output, PaConfig, Zone};
use township_node::store::StoreError;

/// An audio command that logs `start <file>` and `end <file>` to `log` around a pause of `secs`.
fn logging_output(id: &str, log: &Path, secs: f64, test: bool) -> Output {
    Output::AudioCommand(CommandOutput {
        id: id.into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo \"start $1\" >> '{0}'; sleep {secs}; echo \"end $1\" >> '{0}'",
                log.display()
            ),
            "sh".into(),
            "{file}".into(),
        ],
        test,
    })
}

struct Pa {
    h: Harness,
    staff: Session,
    staff2: Session,
    live_log: PathBuf,
    monitor_log: PathBuf,
}

async fn pa(secs: f64, two_person: Vec<township_node::rules::eval::Level>) -> Pa {
    let dir = tempfile::tempdir().unwrap().keep();
    let (live_log, monitor_log) = (dir.join("live.log"), dir.join("monitor.log"));
    let config = Config {
        pa: PaConfig {
            two_person,
            outputs: vec![
                logging_output("amp-office", &live_log, secs, false),
                logging_output("monitor", &monitor_log, secs, true),
            ],
            zones: vec![
                Zone {
                    id: "wangzhai".into(),
                    name: "王宅村".into(),
                    area: "330723001001".into(),
                    outputs: vec!["amp-office".into(), "monitor".into()],
                },
                Zone {
                    id: "xiayang".into(),
                    name: "下洋村".into(),
                    area: "330723001002".into(),
                    outputs: vec![],
                },
            ],
            ..PaConfig::default()
        },
        devices: vec![
            toml::from_str(
                "id = \"wl-01\"\nname = \"熟溪水位站\"\narea = \"330723001001\"\ndriver = \"hj212\"\nmn = \"MNWL01\"\n\
                 points = [{ metric = \"water_level\", unit = \"m\", min = 0.0, max = 20.0 }]",
            )
            .unwrap(),
        ],
        ..Config::default()
    };
    let h = Harness::with_config(config).await;
    township_node::app::start_broadcasts(h.state());
    let staff = h
        .user("li.ming", Role::TownshipStaff, "330723001", None)
        .await;
    let staff2 = h
        .user("zhao.lei", Role::TownshipStaff, "330723001", None)
        .await;
    Pa {
        h,
        staff,
        staff2,
        live_log,
        monitor_log,
    }
}

fn order(text: &str, mode: &str, level: &str) -> Value {
    json!({"text": text, "zones": ["wangzhai"], "mode": mode, "level": level, "repeat": 1})
}

/// Polls a broadcast until `done` holds (or fails after `wait`).
async fn until(
    h: &Harness,
    s: &Session,
    id: &str,
    wait: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let v = h
            .act(s, "GET", &format!("/api/v1/broadcasts/{id}"), None)
            .await
            .expect(StatusCode::OK);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every audit entry as `action detail`.
async fn audited(h: &Harness) -> Vec<String> {
    h.state()
        .store
        .read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT action || ' ' || COALESCE(detail, '') FROM audit_log ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok::<_, StoreError>(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .unwrap()
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn receipt(v: &Value, output: &str) -> Option<String> {
    v["receipts"]
        .as_array()?
        .iter()
        .find(|r| r["output"] == output)
        .and_then(|r| r["state"].as_str().map(String::from))
}

#[tokio::test]
async fn a_staff_broadcast_plays_on_every_output_of_its_zone_with_receipts() {
    let p = pa(0.05, vec![]).await;
    let mut body = order(
        "请注意：今晚有大雨，请低洼地带居民做好转移准备。",
        "live",
        "yellow",
    );
    body["repeat"] = json!(2);
    let b =
        p.h.act(&p.staff, "POST", "/api/v1/broadcasts", Some(body))
            .await
            .expect(StatusCode::CREATED);
    assert_eq!(b["state"], "approved", "{b}");
    assert_eq!(b["allowed_actions"], json!(["cancel", "correct"]));
    let id = b["id"].as_str().unwrap();
    // Receipts are written beside the state: wait for both.
    let done = until(&p.h, &p.staff, id, Duration::from_secs(30), |v| {
        v["state"] == "finished"
            && receipt(v, "amp-office").as_deref() == Some("finished")
            && receipt(v, "monitor").as_deref() == Some("finished")
    })
    .await;
    assert_eq!(
        receipt(&done, "amp-office").as_deref(),
        Some("finished"),
        "{done}"
    );
    assert_eq!(
        receipt(&done, "monitor").as_deref(),
        Some("finished"),
        "{done}"
    );
    // Played twice, one after the other, a real WAV each time.
    let played = lines(&p.live_log);
    assert_eq!(played.len(), 4, "{played:?}");
    assert!(played[0].starts_with("start ") && played[1].starts_with("end "));
    let wav = played[0].trim_start_matches("start ");
    assert_eq!(&std::fs::read(wav).unwrap()[..4], b"RIFF");
    let log: Vec<String> = done["receipt_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["output"] == "amp-office")
        .map(|r| r["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(log, ["started", "finished"]);
    // The speakers' audio is served by hash, to staff.
    let audit = audited(&p.h).await;
    assert!(
        audit.iter().any(|a| a.contains("broadcast.request")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.contains("broadcast.receipt")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.contains("broadcast.start")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.contains("broadcast.finish")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_test_broadcast_reaches_only_monitor_outputs_and_says_it_is_a_test() {
    let p = pa(0.05, vec![]).await;
    let b =
        p.h.act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("防汛广播系统测试。", "test", "red")),
        )
        .await
        .expect(StatusCode::CREATED);
    // A test needs no second person even at red, and its spoken text says 测试 first.
    assert_eq!(b["state"], "approved", "{b}");
    assert!(
        b["spoken_text"].as_str().unwrap().starts_with("测试"),
        "{b}"
    );
    let id = b["id"].as_str().unwrap();
    let done = until(&p.h, &p.staff, id, Duration::from_secs(30), |v| {
        v["state"] == "finished"
    })
    .await;
    assert_eq!(
        receipt(&done, "monitor").as_deref(),
        Some("finished"),
        "{done}"
    );
    assert_eq!(receipt(&done, "amp-office"), None, "{done}");
    assert!(lines(&p.live_log).is_empty());
    assert_eq!(lines(&p.monitor_log).len(), 2);
    // A zone without a monitor output records that nothing played, as intended.
    let mut body = order("测试", "exercise", "blue");
    body["zones"] = json!(["xiayang"]);
    let b =
        p.h.act(&p.staff, "POST", "/api/v1/broadcasts", Some(body))
            .await
            .expect(StatusCode::CREATED);
    let done = until(
        &p.h,
        &p.staff,
        b["id"].as_str().unwrap(),
        Duration::from_secs(30),
        |v| v["state"] == "finished",
    )
    .await;
    assert_eq!(done["receipts"][0]["state"], "simulated", "{done}");
}

#[tokio::test]
async fn the_two_person_rule_holds_for_every_role_pair() {
    use township_node::rules::eval::Level;
    let p = pa(0.05, vec![Level::Red, Level::Orange]).await;
    let h = &p.h;
    let grid = h
        .user("wang.fang", Role::GridWorker, "330723001001", None)
        .await;
    let handler = h
        .user("chen.jun", Role::DeptHandler, "330723001", Some("water"))
        .await;
    let it = h.user("zhou.it", Role::CountyIt, "330723001", None).await;
    let village_admin = h.user("cun.admin", Role::Admin, "330723001001", None).await;
    let admin = h.user("xiang.admin", Role::Admin, "330723001", None).await;
    // Who may not ask at all.
    for s in [&grid, &handler, &it, &village_admin] {
        h.act(
            s,
            "POST",
            "/api/v1/broadcasts",
            Some(order("转移", "live", "red")),
        )
        .await
        .expect(StatusCode::FORBIDDEN);
    }
    // Who may approve whose request: never their own; only township staff and admins in the area.
    let requesters = [("li.ming", &p.staff), ("xiang.admin", &admin)];
    let approvers: [(&str, &Session, bool); 7] = [
        ("cun.admin", &village_admin, false),
        ("li.ming", &p.staff, true),
        ("zhao.lei", &p.staff2, true),
        ("xiang.admin", &admin, true),
        ("wang.fang", &grid, false),
        ("chen.jun", &handler, false),
        ("zhou.it", &it, false),
    ];
    for (requester, rs) in requesters {
        for (approver, s, role_may) in &approvers {
            let b = h
                .act(
                    rs,
                    "POST",
                    "/api/v1/broadcasts",
                    Some(order("山洪红色预警，请立即转移。", "live", "red")),
                )
                .await
                .expect(StatusCode::CREATED);
            assert_eq!(b["state"], "requested", "{b}");
            let id = b["id"].as_str().unwrap();
            let answer = h
                .act(
                    s,
                    "POST",
                    &format!("/api/v1/broadcasts/{id}/transitions"),
                    Some(json!({"action": "approve"})),
                )
                .await;
            let expected = if !role_may {
                StatusCode::FORBIDDEN
            } else if *approver == requester {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            assert_eq!(
                answer.status, expected,
                "{requester} → {approver}: {}",
                answer.body
            );
            // Nothing approved plays: cancel what is left so the next pair starts clean.
            h.act(
                rs,
                "POST",
                &format!("/api/v1/broadcasts/{id}/transitions"),
                Some(json!({"action": "cancel"})),
            )
            .await
            .expect(StatusCode::OK);
        }
    }
    // While waiting for its second person, a red plays nowhere. (The approved ones above may have
    // begun before their cancel: let them end first.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = lines(&p.live_log).len();
    let b = h
        .act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("山洪红色预警", "live", "red")),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = b["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(lines(&p.live_log).len(), before, "played without approval");
    h.act(
        &p.staff2,
        "POST",
        &format!("/api/v1/broadcasts/{id}/transitions"),
        Some(json!({"action": "approve"})),
    )
    .await
    .expect(StatusCode::OK);
    // Once approved, the requester cannot swap in a recording of their own: the approval was for
    // what the approver saw.
    let (ct, wav_body) = multipart("file", "m.wav", &wav(0.2));
    let (status, _, _) = h
        .send_raw(
            &p.staff,
            "POST",
            &format!("/api/v1/broadcasts/{id}/audio"),
            &ct,
            wav_body,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let done = until(h, &p.staff, &id, Duration::from_secs(30), |v| {
        v["state"] == "finished"
    })
    .await;
    assert_eq!(done["approver"], "zhao.lei");
    assert_eq!(done["transitions"][1]["data"]["audio"], "none", "{done}");
    assert_eq!(lines(&p.live_log).len(), before + 2);
}

#[tokio::test]
async fn cancel_stops_a_playing_broadcast_on_every_output_within_two_seconds() {
    let p = pa(60.0, vec![]).await;
    let b =
        p.h.act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("长时间广播", "live", "blue")),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = b["id"].as_str().unwrap();
    until(&p.h, &p.staff, id, Duration::from_secs(30), |v| {
        receipt(v, "amp-office").as_deref() == Some("started")
            && receipt(v, "monitor").as_deref() == Some("started")
    })
    .await;
    let clicked = Instant::now();
    p.h.act(
        &p.staff,
        "POST",
        &format!("/api/v1/broadcasts/{id}/transitions"),
        Some(json!({"action": "cancel", "note": "误发"})),
    )
    .await
    .expect(StatusCode::OK);
    let v = until(&p.h, &p.staff, id, Duration::from_secs(10), |v| {
        receipt(v, "amp-office").as_deref() == Some("stopped")
            && receipt(v, "monitor").as_deref() == Some("stopped")
    })
    .await;
    let took = clicked.elapsed();
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    assert_eq!(v["state"], "cancelled");
    // The players really ended: no `end` line ever comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        lines(&p.live_log).iter().all(|l| l.starts_with("start")),
        "{:?}",
        lines(&p.live_log)
    );
}

#[tokio::test]
async fn a_correction_cancels_and_plays_within_a_minute_without_a_second_approval() {
    use township_node::rules::eval::Level;
    let p = pa(30.0, vec![Level::Red]).await;
    let b =
        p.h.act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("导弹来袭，立即避难。", "live", "red")),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = b["id"].as_str().unwrap().to_string();
    p.h.act(
        &p.staff2,
        "POST",
        &format!("/api/v1/broadcasts/{id}/transitions"),
        Some(json!({"action": "approve"})),
    )
    .await
    .expect(StatusCode::OK);
    until(&p.h, &p.staff, &id, Duration::from_secs(30), |v| {
        receipt(v, "amp-office").as_deref() == Some("started")
    })
    .await;
    let clicked = Instant::now();
    let v =
        p.h.act(
            &p.staff,
            "POST",
            &format!("/api/v1/broadcasts/{id}/transitions"),
            Some(json!({"action": "correct", "note": "这是误报，没有危险。"})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["state"], "cancelled", "{v}");
    let correction = v["correction"].as_str().unwrap().to_string();
    let c = until(&p.h, &p.staff, &correction, Duration::from_secs(60), |v| {
        receipt(v, "amp-office").as_deref() == Some("started")
    })
    .await;
    let took = clicked.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "the correction started after {took:?}"
    );
    assert!(c["text"].as_str().unwrap().starts_with("更正"), "{c}");
    assert!(
        c["text"].as_str().unwrap().contains("导弹来袭"),
        "names what it corrects: {c}"
    );
    // The note is kept with the transition, never spoken: one person cannot put words on the air
    // through a correction.
    assert!(!c["text"].as_str().unwrap().contains("这是误报"), "{c}");
    assert_eq!(c["corrects"], id.as_str());
    assert_eq!(c["approver"], Value::Null, "no second approval was needed");
    let original = until(&p.h, &p.staff, &id, Duration::from_secs(5), |v| {
        receipt(v, "amp-office").as_deref() == Some("stopped")
    })
    .await;
    assert_eq!(original["correction"], correction.as_str());
}

#[tokio::test]
async fn a_red_pre_empts_a_routine_programme_which_then_plays_again_from_its_start() {
    let p = pa(1.5, vec![]).await;
    let routine =
        p.h.act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("政策宣讲：医保缴费提醒。", "live", "routine")),
        )
        .await
        .expect(StatusCode::CREATED);
    let rid = routine["id"].as_str().unwrap().to_string();
    until(&p.h, &p.staff, &rid, Duration::from_secs(30), |v| {
        receipt(v, "amp-office").as_deref() == Some("started")
    })
    .await;
    let red =
        p.h.act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("山洪红色预警，请立即转移。", "live", "red")),
        )
        .await
        .expect(StatusCode::CREATED);
    let red_id = red["id"].as_str().unwrap().to_string();
    // Equal levels queue: a second routine waits behind the first.
    let second =
        p.h.act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("政策宣讲：垃圾分类。", "live", "routine")),
        )
        .await
        .expect(StatusCode::CREATED);
    let sid = second["id"].as_str().unwrap().to_string();
    for id in [&red_id, &rid, &sid] {
        until(&p.h, &p.staff, id, Duration::from_secs(60), |v| {
            v["state"] == "finished"
        })
        .await;
    }
    let order_seen: Vec<String> = lines(&p.live_log);
    let files: Vec<&str> = order_seen
        .iter()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    // routine starts, is cut (no end), red plays whole, routine plays whole, then the second.
    assert_eq!(order_seen.len(), 7, "{order_seen:?}");
    assert!(
        order_seen[0].starts_with("start") && order_seen[1].starts_with("start"),
        "{order_seen:?}"
    );
    assert_eq!(
        files[0], files[3],
        "the routine plays again: {order_seen:?}"
    );
    assert_eq!(files[1], files[2], "the red played whole: {order_seen:?}");
    assert_ne!(files[0], files[1]);
    assert_ne!(files[5], files[0]);
}

fn wav(seconds: f64) -> Vec<u8> {
    let rate = 8000u32;
    let data = (f64::from(rate) * seconds) as u32 * 2;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    out.resize(out.len() + data as usize, 0);
    out
}

#[tokio::test]
async fn a_recorded_message_plays_instead_of_speech_and_other_files_are_refused() {
    let p = pa(0.05, vec![]).await;
    let mut body = order("", "live", "blue");
    body.as_object_mut().unwrap().remove("text");
    let b =
        p.h.act(&p.staff, "POST", "/api/v1/broadcasts", Some(body))
            .await
            .expect(StatusCode::CREATED);
    let id = b["id"].as_str().unwrap().to_string();
    // Without text it waits for its audio.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(lines(&p.live_log).is_empty());
    let uri = format!("/api/v1/broadcasts/{id}/audio");
    let (ct, pdf) = multipart("file", "message.wav", b"%PDF-1.7 this is not audio");
    let (status, _, _) = p.h.send_raw(&p.staff, "POST", &uri, &ct, pdf).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let grid =
        p.h.user("wang.fang", Role::GridWorker, "330723001001", None)
            .await;
    let (ct, good) = multipart("file", "message.wav", &wav(0.5));
    let (status, _, _) = p.h.send_raw(&grid, "POST", &uri, &ct, good.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, answer) = p.h.send_raw(&p.staff, "POST", &uri, &ct, good).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(v["audio"]["mime"], "audio/wav");
    assert_eq!(v["audio"]["duration_ms"], 500);
    // Served to a broadcaster who may see the broadcast; an audio file no broadcast names is not.
    let sha = v["audio"]["sha256"].as_str().unwrap().to_string();
    let got =
        p.h.send_raw(
            &p.staff,
            "GET",
            &format!("/api/v1/pa/audio/{sha}"),
            "application/octet-stream",
            vec![],
        )
        .await;
    assert_eq!((got.0, got.2), (StatusCode::OK, wav(0.5)));
    let stray = p.h.state().blobs.put(&wav(0.3)).unwrap();
    let got =
        p.h.send_raw(
            &p.staff,
            "GET",
            &format!("/api/v1/pa/audio/{stray}"),
            "application/octet-stream",
            vec![],
        )
        .await;
    assert_eq!(got.0, StatusCode::NOT_FOUND);
    let done = until(&p.h, &p.staff, &id, Duration::from_secs(30), |v| {
        v["state"] == "finished"
    })
    .await;
    let played = lines(&p.live_log);
    let file = played[0].trim_start_matches("start ");
    assert_eq!(std::fs::read(file).unwrap(), wav(0.5), "{done}");
    // A second audio is refused: the message is fixed once it has one.
    let (ct, again) = multipart("file", "m.wav", &wav(0.2));
    let (status, _, _) = p.h.send_raw(&p.staff, "POST", &uri, &ct, again).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn zones_show_their_outputs_health_and_audio_is_served_only_to_staff_and_speakers() {
    let p = pa(0.05, vec![]).await;
    let grid =
        p.h.user("wang.fang", Role::GridWorker, "330723001001", None)
            .await;
    let z =
        p.h.act(&grid, "GET", "/api/v1/pa/zones", None)
            .await
            .expect(StatusCode::OK);
    let zones = z["zones"].as_array().unwrap();
    // A grid worker of 王宅村 sees her own village's zone only.
    assert_eq!(zones.len(), 1, "{z}");
    assert_eq!(zones[0]["outputs"][0]["health"]["status"], "unknown");
    let b =
        p.h.act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("通知", "live", "blue")),
        )
        .await
        .expect(StatusCode::CREATED);
    until(
        &p.h,
        &p.staff,
        b["id"].as_str().unwrap(),
        Duration::from_secs(30),
        |v| v["state"] == "finished",
    )
    .await;
    let z =
        p.h.act(&p.staff, "GET", "/api/v1/pa/zones", None)
            .await
            .expect(StatusCode::OK);
    assert_eq!(z["zones"].as_array().unwrap().len(), 2);
    assert_eq!(z["zones"][0]["outputs"][0]["health"]["status"], "ok", "{z}");
    let played = lines(&p.live_log);
    let wav = std::fs::read(played[0].trim_start_matches("start ")).unwrap();
    let sha = township_node::blobs::sha256_hex(&wav);
    let uri = format!("/api/v1/pa/audio/{sha}");
    let got =
        p.h.send_raw(&p.staff, "GET", &uri, "application/octet-stream", vec![])
            .await;
    assert_eq!(got.0, StatusCode::OK);
    assert_eq!(got.2, wav);
    let refused =
        p.h.send_raw(&grid, "GET", &uri, "application/octet-stream", vec![])
            .await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
}

/// Writes a broadcast record as a hostile node would, bypassing the API.
async fn forge(
    h: &Harness,
    scope: &str,
    author: township_sync::Author,
    content_text: &str,
    sign: Option<std::sync::Arc<township_sync::NodeKey>>,
    tamper: bool,
) -> uuid::Uuid {
    let docs = h.state().docs.clone();
    let scope: township_sync::AreaCode = scope.parse().unwrap();
    let hlc = h.state().write_ctx().timestamp();
    let text = content_text.to_string();
    let key = sign;
    h.state()
        .store
        .write(move |c| {
            let content = township_node::broadcast::Content {
                text: text.clone(),
                zones: vec!["wangzhai".into()],
                mode: township_node::broadcast::Mode::Live,
                level: township_node::broadcast::Priority::Warning(
                    township_node::rules::eval::Level::Blue,
                ),
                repeat: 1,
                start_ms: crate::common::harness::START_MS,
                expires_ms: crate::common::harness::START_MS + 3_600_000,
                warning: None,
                corrects: None,
                needs_second: false,
                rule: None,
                schedule: Vec::new(),
            };
            let meta = docs.create(c, &author, "broadcast", &scope, |d| {
                content.write(d)?;
                township_sync::workflow::init(d)?;
                Ok(())
            })?;
            let mut t = township_sync::Transition {
                id: uuid::Uuid::now_v7().to_string(),
                at: hlc,
                actor: author
                    .person
                    .as_ref()
                    .map_or("system".into(), |p| p.name.clone()),
                role: author
                    .person
                    .as_ref()
                    .map_or("system".into(), |p| p.role.clone()),
                action: "request".into(),
                data: Default::default(),
                written: Default::default(),
            };
            if let Some(k) = &key {
                let digest = content.digest(meta.id, &scope);
                township_node::broadcast::sign_with(k, &digest, &mut t);
            }
            let tampered = if tamper {
                Some(format!("{text}（已篡改）"))
            } else {
                None
            };
            docs.change(c, &author, meta.id, move |d| {
                township_sync::workflow::append(d, &t)?;
                if let Some(text) = tampered {
                    use automerge::ReadDoc;
                    use automerge::transaction::Transactable;
                    if let Some((_, map)) = d.get(automerge::ROOT, "content")? {
                        d.put(&map, "text", text)?;
                    }
                }
                Ok(())
            })?;
            Ok::<_, StoreError>(meta.id)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn orders_forged_from_below_signed_by_strangers_altered_or_expired_never_play() {
    let p = pa(0.05, vec![]).await;
    let village: township_sync::AreaCode = "330723001001".parse().unwrap();
    let township: township_sync::AreaCode = "330723001".parse().unwrap();
    let person = |name: &str, role: &str, area: &township_sync::AreaCode| township_sync::Person {
        name: name.into(),
        role: role.into(),
        area: area.clone(),
    };
    let stranger = std::sync::Arc::new(township_sync::NodeKey::generate().unwrap().0);
    let own = p.h.state().key.clone();
    // (record scope, the change's node and person, text, signing key, altered after signing)
    let cases = [
        // 1. A village hub's grid worker orders a broadcast (no signature at all).
        (
            "330723001001",
            &village,
            person("wang.fang", "grid_worker", &village),
            "伪造一",
            None,
            false,
        ),
        // 2. The village hub claims a township staff member, signed with its own (unknown) key.
        (
            "330723001001",
            &village,
            person("li.ming", "township_staff", &township),
            "伪造二",
            Some(stranger.clone()),
            false,
        ),
        // 3. A well-formed order from this node, signed by a stranger's key.
        (
            "330723001",
            &township,
            person("li.ming", "township_staff", &township),
            "伪造三",
            Some(stranger.clone()),
            false,
        ),
        // 4. Signed by this node, then its text altered.
        (
            "330723001",
            &township,
            person("li.ming", "township_staff", &township),
            "伪造四",
            Some(own.clone()),
            true,
        ),
        // 5. A sound order signed by this node, as a control: it plays.
        (
            "330723001",
            &township,
            person("li.ming", "township_staff", &township),
            "真实通知",
            Some(own.clone()),
            false,
        ),
    ];
    let mut ids = Vec::new();
    for (scope, node, who, text, key, tamper) in cases {
        let author = township_sync::Author::person(node.clone(), who);
        ids.push(forge(&p.h, scope, author, text, key, tamper).await);
    }
    let control = ids.pop().unwrap();
    until(
        &p.h,
        &p.staff,
        &control.to_string(),
        Duration::from_secs(30),
        |v| v["state"] == "finished",
    )
    .await;
    for id in &ids {
        let v =
            p.h.act(&p.staff, "GET", &format!("/api/v1/broadcasts/{id}"), None)
                .await
                .expect(StatusCode::OK);
        assert!(v["receipts"].as_array().unwrap().is_empty(), "{v}");
    }
    let played = lines(&p.live_log);
    assert_eq!(played.len(), 2, "only the control played: {played:?}");
    let audit = audited(&p.h).await;
    let refused: Vec<&String> = audit
        .iter()
        .filter(|a| a.starts_with("broadcast.refused"))
        .collect();
    // The stranger's signature and the altered text are refused and audited; the two made below
    // never even count as requested (their claims fail where the fold reads them).
    assert_eq!(refused.len(), 2, "{audit:?}");
    assert!(
        refused.iter().any(|a| a.contains("unsigned")),
        "{refused:?}"
    );
    assert!(refused.iter().any(|a| a.contains("altered")), "{refused:?}");
    for id in &ids[..2] {
        let v =
            p.h.act(&p.staff, "GET", &format!("/api/v1/broadcasts/{id}"), None)
                .await
                .expect(StatusCode::OK);
        assert_eq!(v["conflicts"].as_array().unwrap().len(), 1, "{v}");
    }
    let metrics = p.h.state().pa_counters.render(&p.h.state().pa_outputs, 0);
    assert!(
        metrics.contains("township_pa_orders_refused_total{reason=\"unsigned\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_red_reading_puts_the_rules_message_on_the_loudspeakers_with_nobody_at_a_desk() {
    let p = pa(0.05, vec![township_node::rules::eval::Level::Red]).await;
    township_node::app::start_telemetry(p.h.state());
    township_node::app::start_rules(p.h.state());
    p.h.act(&p.staff, "POST", "/api/v1/rules", Some(json!({"name": "熟溪水位", "area": "330723001", "device": "wl-01",
        "metric": "water_level", "kind": "threshold", "levels": {"orange": 4.0, "red": 4.5}, "event": "flood",
        "auto_issue": ["red"], "auto_broadcast": ["red"], "broadcast_zones": ["330723001001"],
        "broadcast_message": "{rule}{level}预警：熟溪水位超过警戒，请沿河居民立即转移。"})))
        .await
        .expect(StatusCode::CREATED);
    // A rule naming a level it does not have, or no zones, is refused with the field named.
    let bad = p.h.act(&p.staff, "POST", "/api/v1/rules", Some(json!({"name": "x", "area": "330723001", "device": "wl-01",
        "metric": "water_level", "kind": "threshold", "levels": {"red": 4.5}, "auto_broadcast": ["red"]})))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(bad.to_string().contains("broadcast_zones"), "{bad}");
    let mut t = crate::common::harness::START_MS - 600_000;
    // Readings until the clock's now; then the chain (rule, warning, broadcast) gets a while of
    // wall time to finish, since on a loaded machine it may lag the readings.
    let patience = std::time::Instant::now() + Duration::from_secs(30);
    let broadcast = loop {
        if t < crate::common::harness::START_MS {
            t += 1000;
            p.h.commit(vec![crate::common::harness::reading(
                "wl-01",
                "water_level",
                t,
                4.8,
                township_drivers::Quality::Good,
            )])
            .await;
        }
        let list =
            p.h.act(&p.staff, "GET", "/api/v1/broadcasts", None)
                .await
                .expect(StatusCode::OK);
        if let Some(b) = list["broadcasts"].as_array().unwrap().first() {
            break b.clone();
        }
        if t >= crate::common::harness::START_MS && std::time::Instant::now() > patience {
            let w =
                p.h.act(&p.staff, "GET", "/api/v1/warnings", None)
                    .await
                    .expect(StatusCode::OK);
            let r =
                p.h.act(&p.staff, "GET", "/api/v1/rules", None)
                    .await
                    .expect(StatusCode::OK);
            panic!("no broadcast was made; warnings {w}; rules {r}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(broadcast["level"], "red");
    assert_eq!(broadcast["requester"], "system");
    assert!(
        broadcast["text"]
            .as_str()
            .unwrap()
            .starts_with("熟溪水位红色预警"),
        "{broadcast}"
    );
    let id = broadcast["id"].as_str().unwrap().to_string();
    // A red at a two-person level plays without a second person: the rule's writers decided ahead.
    let done = until(&p.h, &p.staff, &id, Duration::from_secs(30), |v| {
        v["state"] == "finished"
    })
    .await;
    assert!(
        done["rule"].is_string() && done["warning"].is_string(),
        "{done}"
    );
    assert_eq!(
        lines(&p.live_log).len(),
        6,
        "three times on the live output"
    );
    // More red readings make no second broadcast for the same warning and level.
    for i in 1..5 {
        p.h.commit(vec![crate::common::harness::reading(
            "wl-01",
            "water_level",
            t + i * 1000,
            4.9,
            township_drivers::Quality::Good,
        )])
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let list =
        p.h.act(&p.staff, "GET", "/api/v1/broadcasts", None)
            .await
            .expect(StatusCode::OK);
    assert_eq!(list["broadcasts"].as_array().unwrap().len(), 1, "{list}");
}

/// A small deterministic generator, so a failing case can be replayed from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One hostile record, built as a node on the way would build it: its own document, its own author
/// claims, bytes merged through the sync path.
fn hostile_record(
    rng: &mut XorShift,
    own: &township_sync::NodeKey,
    stranger: &township_sync::NodeKey,
    replayed: &township_sync::Transition,
) -> (uuid::Uuid, String, Vec<u8>, bool) {
    use automerge::transaction::{CommitOptions, Transactable};
    use township_node::broadcast::{Content, Mode, Priority};
    use township_node::rules::eval::Level;
    let township: township_sync::AreaCode = "330723001".parse().unwrap();
    let village: township_sync::AreaCode = "330723001001".parse().unwrap();
    let variant = rng.next() % 8;
    let now = crate::common::harness::START_MS;
    let (scope, claim_area, person_area, role) = match variant {
        // A village hub claiming a township staff member (refused where it merges from below).
        7 => (
            village.clone(),
            village.clone(),
            township.clone(),
            "township_staff",
        ),
        _ => (
            township.clone(),
            township.clone(),
            township.clone(),
            "township_staff",
        ),
    };
    let author = township_sync::Author::person(
        claim_area,
        township_sync::Person {
            name: "li.ming".into(),
            role: role.into(),
            area: person_area,
        },
    );
    let id = uuid::Uuid::now_v7();
    let expired = variant == 4;
    let content = Content {
        text: format!("伪造的广播 {}", rng.next() % 1000),
        zones: vec![if rng.next().is_multiple_of(2) {
            "wangzhai".into()
        } else {
            "330723001001".into()
        }],
        mode: Mode::Live,
        level: Priority::Warning(Level::ALL[(rng.next() % 4) as usize]),
        repeat: 1,
        start_ms: if expired { now - 7_200_000 } else { now },
        expires_ms: if expired {
            now - 3_600_000
        } else {
            now + 3_600_000
        },
        warning: None,
        corrects: None,
        needs_second: variant == 5,
        rule: None,
        schedule: Vec::new(),
    };
    let mut t = township_sync::Transition {
        id: uuid::Uuid::now_v7().to_string(),
        at: township_sync::Timestamp {
            wall_ms: now as u64,
            counter: (rng.next() % 1000) as u32,
        },
        actor: "li.ming".into(),
        role: role.into(),
        action: "request".into(),
        data: Default::default(),
        written: Default::default(),
    };
    let digest = content.digest(id, &scope);
    match variant {
        0 => {} // unsigned
        1 => township_node::broadcast::sign_with(stranger, &digest, &mut t),
        2 => {
            // Signed by this node over other words than it carries.
            let mut other = content.clone();
            other.text.push('！');
            township_node::broadcast::sign_with(own, &other.digest(id, &scope), &mut t);
        }
        3 => t = replayed.clone(), // a real signed request from another broadcast, copied
        4 | 7 => township_node::broadcast::sign_with(own, &digest, &mut t),
        5 => township_node::broadcast::sign_with(own, &digest, &mut t),
        _ => township_node::broadcast::sign_with(own, &digest, &mut t),
    }
    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "_kind", "broadcast").unwrap();
    doc.put(automerge::ROOT, "_scope", scope.as_str()).unwrap();
    content.write(&mut doc).unwrap();
    township_sync::workflow::init(&mut doc).unwrap();
    township_sync::workflow::append(&mut doc, &t).unwrap();
    doc.commit_with(CommitOptions::default().with_message(author.encode()));
    if variant == 5 {
        // A second person's approval, in its own change under their name, but unsigned.
        let approve = township_sync::Transition {
            id: uuid::Uuid::now_v7().to_string(),
            at: township_sync::Timestamp {
                wall_ms: now as u64 + 1,
                counter: 0,
            },
            actor: "zhao.lei".into(),
            role: role.into(),
            action: "approve".into(),
            data: Default::default(),
            written: Default::default(),
        };
        township_sync::workflow::append(&mut doc, &approve).unwrap();
        let second = township_sync::Author::person(
            township.clone(),
            township_sync::Person {
                name: "zhao.lei".into(),
                role: role.into(),
                area: township.clone(),
            },
        );
        doc.commit_with(CommitOptions::default().with_message(second.encode()));
    }
    if variant == 6 {
        // Signed as it was made, then its words changed in a later change.
        use automerge::ReadDoc;
        let (_, map) = doc.get(automerge::ROOT, "content").unwrap().unwrap();
        doc.put(&map, "text", "篡改后的内容").unwrap();
        doc.commit_with(CommitOptions::default().with_message(author.encode()));
    }
    (id, scope.to_string(), doc.save(), variant == 7)
}

#[tokio::test]
async fn ten_thousand_forged_altered_replayed_and_expired_orders_merged_through_sync_play_nothing()
{
    let count: usize = std::env::var("BROADCAST_FORGERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let p = pa(0.05, vec![township_node::rules::eval::Level::Red]).await;
    // A real order, whose signed request the replays copy.
    let real =
        p.h.act(
            &p.staff,
            "POST",
            "/api/v1/broadcasts",
            Some(order("真实通知", "test", "blue")),
        )
        .await
        .expect(StatusCode::CREATED);
    let real_id = real["id"].as_str().unwrap().to_string();
    until(&p.h, &p.staff, &real_id, Duration::from_secs(30), |v| {
        v["state"] == "finished"
    })
    .await;
    let replayed: township_sync::Transition = {
        let docs = p.h.state().docs.clone();
        let id: uuid::Uuid = real_id.parse().unwrap();
        p.h.state()
            .store
            .read(move |c| {
                let (_, mut doc) = docs.load(c, id)?;
                let authors = township_sync::Authors::of(&mut doc);
                Ok::<_, StoreError>(township_sync::workflow::read(&doc, &authors)[0].clone())
            })
            .await
            .unwrap()
    };
    let receipts_before: i64 = count_rows(&p.h, "SELECT count(*) FROM broadcast_receipts").await;
    let stranger = township_sync::NodeKey::generate().unwrap().0;
    let own = p.h.state().key.clone();
    let mut rng = XorShift(0x5eed_cafe_f00d_1234);
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        records.push(hostile_record(&mut rng, &own, &stranger, &replayed));
    }
    let started = Instant::now();
    let mut refused_at_merge = 0usize;
    for chunk in records.chunks(500) {
        let chunk = chunk.to_vec();
        let docs = p.h.state().docs.clone();
        let (refused, seq) =
            p.h.state()
                .store
                .write(move |c| {
                    let below: township_sync::AreaCode = "330723001001".parse().unwrap();
                    let mut refused = 0;
                    for (id, scope, bytes, from_below) in &chunk {
                        let scope: township_sync::AreaCode = scope.parse().unwrap();
                        let sender = if *from_below {
                            township_sync::Sender::Below(&below)
                        } else {
                            township_sync::Sender::Trusted
                        };
                        if docs
                            .merge_remote(c, sender, *id, "broadcast", &scope, bytes)
                            .is_err()
                        {
                            refused += 1;
                        }
                    }
                    Ok::<_, StoreError>((
                        refused,
                        c.query_row("SELECT max(seq) FROM documents", [], |r| r.get::<_, i64>(0))?,
                    ))
                })
                .await
                .unwrap();
        refused_at_merge += refused;
        p.h.state().write_ctx().saw_seq(seq);
    }
    let stored = count - refused_at_merge;
    assert!(
        refused_at_merge > 0,
        "the claims from below were refused where they merged"
    );
    // Every stored one is looked at and refused (or left waiting for an approval that never comes).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let settled: i64 = count_rows(
            &p.h,
            "SELECT count(*) FROM pa_plays WHERE outcome = 'refused'",
        )
        .await;
        if settled as usize >= stored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {settled} of {stored} looked at"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    assert_eq!(
        count_rows(&p.h, "SELECT count(*) FROM broadcast_receipts").await,
        receipts_before,
        "something played"
    );
    assert_eq!(lines(&p.live_log).len(), 0, "a live output played");
    let metrics = p.h.state().pa_counters.render(&p.h.state().pa_outputs, 0);
    for reason in ["unsigned", "altered", "expired"] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason}: {metrics}"
        );
    }
    let audited = count_rows(
        &p.h,
        "SELECT count(*) FROM audit_log WHERE action = 'broadcast.refused'",
    )
    .await;
    assert_eq!(audited as usize, stored, "each refusal audited once");
    eprintln!(
        "{count} hostile orders ({refused_at_merge} refused at the merge) looked at in {took:?}"
    );
}

async fn count_rows(h: &Harness, sql: &'static str) -> i64 {
    h.state()
        .store
        .read(move |c| Ok::<_, StoreError>(c.query_row(sql, [], |r| r.get::<_, i64>(0))?))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_routine_programme_plays_at_its_times_of_day_until_it_ends() {
    let p = pa(0.05, vec![]).await;
    const DAY: i64 = 86_400_000;
    let start = p.h.clock.now_ms();
    // Two minutes after the harness's time, in Beijing.
    let minutes = ((start + 8 * 3_600_000).rem_euclid(DAY) / 60_000 + 2) % (24 * 60);
    let at = format!("{:02}:{:02}", minutes / 60, minutes % 60);
    let mut body = order("政策宣讲：城乡居民医保开始缴费。", "live", "routine");
    body["schedule"] = json!([at]);
    body["expires_at"] = json!(township_node::clock::rfc3339_seconds(
        start + 2 * DAY - 3_600_000
    ));
    let b =
        p.h.act(&p.staff, "POST", "/api/v1/broadcasts", Some(body.clone()))
            .await
            .expect(StatusCode::CREATED);
    assert_eq!(b["schedule"], json!([at]));
    let id = b["id"].as_str().unwrap().to_string();
    // A schedule is for routine programmes only, and times are times of day.
    let mut bad = body.clone();
    bad["level"] = json!("red");
    let e =
        p.h.act(&p.staff, "POST", "/api/v1/broadcasts", Some(bad))
            .await
            .expect(StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("schedule"), "{e}");
    let mut bad = body;
    bad["schedule"] = json!(["7:30"]);
    p.h.act(&p.staff, "POST", "/api/v1/broadcasts", Some(bad))
        .await
        .expect(StatusCode::BAD_REQUEST);
    // Nothing before its time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(lines(&p.live_log).is_empty());
    let played = |n: usize| {
        let log = p.live_log.clone();
        move |_: &Value| lines(&log).len() >= 2 * n
    };
    p.h.clock.advance_ms(2 * 60_000 + 30_000);
    until(&p.h, &p.staff, &id, Duration::from_secs(30), played(1)).await;
    // Sessions end after idle time; the clock jumps by days below, so each look signs in afresh.
    // Once per day: the next tick the same minute plays nothing more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(lines(&p.live_log).len(), 2);
    let v = until(&p.h, &p.staff, &id, Duration::from_secs(5), |v| {
        v["state"] == "playing"
    })
    .await;
    assert_eq!(v["receipts"][0]["state"], "finished", "{v}");
    p.h.clock.advance_ms(DAY);
    let staff = p.h.session_for("li.ming").await;
    until(&p.h, &staff, &id, Duration::from_secs(30), played(2)).await;
    // After its expiry the programme is over.
    p.h.clock.advance_ms(DAY);
    let staff = p.h.session_for("li.ming").await;
    until(&p.h, &staff, &id, Duration::from_secs(30), |v| {
        v["state"] == "finished"
    })
    .await;
    assert_eq!(lines(&p.live_log).len(), 4);
}
