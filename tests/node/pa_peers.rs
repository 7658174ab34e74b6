//! Loudspeakers against real peers, with the node as a real process: a pymodbus slave on a socat
//! pseudo-terminal pair as the relay board, on the same line as a Modbus water-level sensor; the
//! reference IP speaker (`tests/interop/pa_speaker.py`) on the embedded broker; espeak-ng for the
//! speech; and the county node killed before the alarm.
//!
//! `tests/run.sh` installs the peers and sets TOWNSHIP_REQUIRE_PEERS=1, so in CI a missing peer is
//! a failure; a plain `cargo test` without them skips these tests, saying so.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{
    ADMIN_PASSWORD, Server, Session, blocking_request, free_port, have, init_tree_node, login,
    send_json,
};
use crate::sensors::{Killed, eventually, pty_pair};
use serde_json::{Value, json};

fn get_json(server: &Server, session: &Session, path: &str) -> Value {
    let (status, _, body) = blocking_request("GET", &server.url(path), &session.headers()).unwrap();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn post(server: &Server, session: &Session, path: &str, body: Value) -> (u16, Value) {
    let (status, _, answer) = send_json("POST", &server.url(path), &session.headers(), &body);
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
    )
}

fn relay_board(port: &str, coil_log: &Path) -> Killed {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/modbus_slave.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", port, "--coil-log", coil_log.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "ready", "the relay board did not start");
    Killed(child)
}

/// (slave, coil, on, wall time in ns) per write the board received.
fn coil_writes(log: &Path) -> Vec<(u8, u16, bool, i128)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                *f.get(2)? == "1",
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

fn receipts_of(server: &Server, session: &Session, id: &str) -> Value {
    get_json(server, session, &format!("/api/v1/broadcasts/{id}"))
}

fn receipt(v: &Value, output: &str) -> Option<String> {
    v["receipts"]
        .as_array()?
        .iter()
        .find(|r| r["output"] == output)
        .and_then(|r| r["state"].as_str().map(String::from))
}

#[test]
fn with_the_county_down_a_red_reading_switches_the_relay_plays_and_switches_it_off() {
    if !have("socat", &["-V"])
        || !have("python3", &["-c", "import pymodbus, serial"])
        || !have("espeak-ng", &["--version"])
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A county and a township under it; the county is killed before anything happens.
    let county_dir = init_tree_node(tmp.path(), "county", "330723", "county", None);
    let county_port = free_port();
    let county = crate::common::serve_on(&county_dir, county_port);
    let county_key = crate::common::id_of(&county_dir)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://127.0.0.1:{county_port}");
    let dir = init_tree_node(
        tmp.path(),
        "township",
        "330723001",
        "township",
        Some((&url, &county_key)),
    );
    drop(county);
    let wire = pty_pair(tmp.path());
    let coil_log = tmp.path().join("coils.log");
    let _board = relay_board(&wire.slave, &coil_log);
    let audio_log = tmp.path().join("audio.log");
    let config = format!(
        r#"
[[devices]]
id = "wl-01"
name = "熟溪水位站"
area = "330723001001"
driver = "modbus_rtu"
port = "{port}"
baud = 115200
slave = 1
interval = "200ms"
timeout = "150ms"
points = [ {{ metric = "water_level", register = 0, kind = "holding", type = "u16", scale = 0.01, unit = "m", min = 0.0, max = 20.0 }} ]

[pa]
two_person = ["red", "orange"]

[[pa.outputs]]
id = "amp-wangzhai"
kind = "modbus_relay"
port = "{port}"
baud = 115200
slave = 1
coil = 0
warmup = "500ms"

[[pa.outputs]]
id = "line-out"
kind = "audio_command"
command = ["sh", "-c", "echo \"start $(date +%s%N)\" >> '{log}'; sleep 0.3; echo \"end $(date +%s%N)\" >> '{log}'", "sh", "{{file}}"]

[[pa.zones]]
id = "wangzhai"
name = "王宅村"
area = "330723001001"
outputs = ["amp-wangzhai", "line-out"]
"#,
        port = wire.master,
        log = audio_log.display()
    );
    std::fs::write(dir.join("township-node.toml"), config).unwrap();
    let server = Server::start(&dir, &[], &[]);
    let admin = login(&server.url(""), "admin", ADMIN_PASSWORD);
    // The water level reads 12.34 m: past red at 10 m at the first poll after the rule exists.
    let (status, rule) = post(
        &server,
        &admin,
        "/api/v1/rules",
        json!({"name": "熟溪水位", "area": "330723001", "device": "wl-01", "metric": "water_level",
               "kind": "threshold", "levels": {"orange": 8.0, "red": 10.0}, "event": "flood",
               "auto_issue": ["red"], "auto_broadcast": ["red"], "broadcast_zones": ["wangzhai"]}),
    );
    assert_eq!(status, 201, "{rule}");
    let mut id = String::new();
    eventually(Duration::from_secs(60), "the automatic broadcast", || {
        let list = get_json(&server, &admin, "/api/v1/broadcasts");
        if let Some(b) = list["broadcasts"].as_array().and_then(|l| l.first()) {
            id = b["id"].as_str().unwrap().to_string();
            return b["state"] == "finished";
        }
        false
    });
    // The node switches every relay off when it starts (a crash mid-broadcast leaves none on),
    // then on and off once for the alarm.
    let all = coil_writes(&coil_log);
    assert_eq!(
        all.iter().map(|w| (w.0, w.1, w.2)).collect::<Vec<_>>(),
        [(1, 0, false), (1, 0, true), (1, 0, false)],
        "{all:?}"
    );
    let writes = all[1..].to_vec();
    let audio: Vec<i128> = std::fs::read_to_string(&audio_log)
        .unwrap()
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.parse().unwrap())
        .collect();
    // Three rounds; the first starts after the warm-up, the relay goes off after the last ends.
    assert_eq!(audio.len(), 6, "{audio:?}");
    assert!(
        audio[0] - writes[0].3 >= 500_000_000,
        "audio {} ns after the relay",
        audio[0] - writes[0].3
    );
    assert!(writes[1].3 >= audio[5], "relay off before the audio ended");
    let v = receipts_of(&server, &admin, &id);
    assert_eq!(
        receipt(&v, "amp-wangzhai").as_deref(),
        Some("finished"),
        "{v}"
    );
    assert_eq!(receipt(&v, "line-out").as_deref(), Some("finished"), "{v}");
    // The sensor on the same line kept being polled throughout.
    let sensors = get_json(&server, &admin, "/api/v1/sensors");
    assert_eq!(sensors["devices"][0]["status"], "online", "{sensors}");
    // A test broadcast to the zone never touches its live relay.
    let before = coil_writes(&coil_log).len();
    let (status, t) = post(
        &server,
        &admin,
        "/api/v1/broadcasts",
        json!({"text": "系统测试", "zones": ["wangzhai"], "mode": "test", "level": "red", "repeat": 1}),
    );
    assert_eq!(status, 201, "{t}");
    let tid = t["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the test broadcast to end", || {
        receipts_of(&server, &admin, &tid)["state"] == "finished"
    });
    assert_eq!(
        coil_writes(&coil_log).len(),
        before,
        "a test switched a live relay"
    );
    // Random interleavings of live, test and exercise orders and cancels (seeded, so a failure can
    // be replayed): the relay is written only for live broadcasts, once on and once off per play.
    let mut seed: u64 = 0x7e57_11fe;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut made: Vec<(String, String)> = Vec::new();
    for _ in 0..16 {
        match next() % 4 {
            0 | 1 => {
                let mode = ["live", "test", "exercise"][(next() % 3) as usize];
                let level = ["blue", "yellow", "routine", "red"][(next() % 4) as usize];
                let level = if mode == "live" && level == "red" {
                    "yellow"
                } else {
                    level
                };
                let (status, b) = post(
                    &server,
                    &admin,
                    "/api/v1/broadcasts",
                    json!({"text": format!("交错{}", made.len()), "zones": ["wangzhai"], "mode": mode, "level": level, "repeat": 1}),
                );
                assert_eq!(status, 201, "{b}");
                made.push((b["id"].as_str().unwrap().to_string(), mode.to_string()));
            }
            2 if !made.is_empty() => {
                let (id, _) = &made[(next() % made.len() as u64) as usize];
                let _ = post(
                    &server,
                    &admin,
                    &format!("/api/v1/broadcasts/{id}/transitions"),
                    json!({"action": "cancel"}),
                );
            }
            _ => std::thread::sleep(Duration::from_millis(next() % 400)),
        }
    }
    eventually(
        Duration::from_secs(120),
        "every interleaved broadcast to end",
        || {
            made.iter().all(|(id, _)| {
                let v = receipts_of(&server, &admin, id);
                ["finished", "cancelled", "refused"].contains(&v["state"].as_str().unwrap_or(""))
                    && !v["receipts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r["state"] == "started")
            })
        },
    );
    let mut relay_plays = 0;
    for (id, mode) in &made {
        let v = receipts_of(&server, &admin, id);
        let amp: Vec<&Value> = v["receipt_log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["output"] == "amp-wangzhai")
            .collect();
        if mode != "live" {
            assert!(
                amp.is_empty(),
                "a {mode} broadcast reached the live relay: {v}"
            );
        }
        relay_plays += amp.iter().filter(|r| r["state"] == "started").count();
    }
    let writes = coil_writes(&coil_log)[before..].to_vec();
    let ons = writes.iter().filter(|w| w.2).count();
    assert_eq!(
        ons, relay_plays,
        "coil-on writes against live plays: {writes:?}"
    );
    assert_eq!(
        writes.iter().filter(|w| !w.2).count(),
        ons,
        "every on was followed by an off"
    );
    assert!(writes.last().is_none_or(|w| !w.2), "the relay ended off");
    let metrics = String::from_utf8(
        blocking_request("GET", &server.url("/metrics"), &[])
            .unwrap()
            .2,
    )
    .unwrap();
    assert!(
        metrics.contains("township_pa_receipts_total{zone=\"wangzhai\",output=\"amp-wangzhai\",state=\"finished\"} "),
        "{metrics}"
    );
}

const SPEAKER_PW: &str = "spk-xiayang-01-secret";

#[test]
fn the_reference_speaker_fetches_checks_plays_and_reports_and_a_silent_one_is_unreachable() {
    if !have("python3", &["-c", "import paho.mqtt"]) || !have("espeak-ng", &["--version"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_tree_node(tmp.path(), "node", "330723001", "township", None);
    let pw = tmp.path().join("spk.pw");
    std::fs::write(&pw, format!("{SPEAKER_PW}\n")).unwrap();
    let pw2 = tmp.path().join("spk2.pw");
    std::fs::write(&pw2, "another-secret\n").unwrap();
    let mqtt_port = free_port();
    let config = format!(
        r#"
[mqtt]
listen = "127.0.0.1:{mqtt_port}"

[[pa.outputs]]
id = "spk-xiayang-01"
kind = "mqtt_speaker"
username = "spk-xiayang-01"
password_file = "{pw}"

[[pa.outputs]]
id = "spk-xiayang-02"
kind = "mqtt_speaker"
username = "spk-xiayang-02"
password_file = "{pw2}"

[[pa.zones]]
id = "xiayang"
name = "下洋村"
area = "330723001002"
outputs = ["spk-xiayang-01", "spk-xiayang-02"]
"#,
        pw = pw.display(),
        pw2 = pw2.display()
    );
    std::fs::write(dir.join("township-node.toml"), config).unwrap();
    let server = Server::start(&dir, &[], &[]);
    let events = tmp.path().join("speaker.events");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pa_speaker.py");
    let mut speaker = Command::new("python3")
        .arg(script)
        .args([
            "--id",
            "spk-xiayang-01",
            "--host",
            "127.0.0.1",
            "--port",
            &mqtt_port.to_string(),
            "--username",
            "spk-xiayang-01",
            "--password-file",
            pw.to_str().unwrap(),
            "--http",
            &server.url(""),
            "--speed",
            "0.05",
            "--heartbeat",
            "5",
            "--events",
            events.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(speaker.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "ready");
    let _speaker = Killed(speaker);
    let admin = login(&server.url(""), "admin", ADMIN_PASSWORD);
    eventually(Duration::from_secs(20), "the speaker's heartbeat", || {
        let z = get_json(&server, &admin, "/api/v1/pa/zones");
        z["zones"][0]["outputs"][0]["health"]["status"] == "ok"
    });
    let (status, b) = post(
        &server,
        &admin,
        "/api/v1/broadcasts",
        json!({"text": "下洋村通知：明天上午九点在村委会召开防汛会议。", "zones": ["xiayang"], "mode": "live", "level": "blue", "repeat": 2}),
    );
    assert_eq!(status, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(40), "the broadcast to end", || {
        receipts_of(&server, &admin, &id)["state"] == "finished"
    });
    let v = receipts_of(&server, &admin, &id);
    assert_eq!(
        receipt(&v, "spk-xiayang-01").as_deref(),
        Some("finished"),
        "{v}"
    );
    assert_eq!(
        receipt(&v, "spk-xiayang-02").as_deref(),
        Some("unreachable"),
        "{v}"
    );
    let trail: Vec<&str> = v["receipt_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["output"] == "spk-xiayang-01")
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(trail, ["commanded", "started", "finished"], "{v}");
    let seen = std::fs::read_to_string(&events).unwrap();
    assert!(seen.contains("first_audio_byte"), "{seen}");
    // Audio is served to a speaker's own credentials only (a wrong password is refused before the
    // hash is even looked at).
    use base64::Engine as _;
    let basic = |user: &str, pw: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let missing = format!("/api/v1/pa/audio/{}", "0".repeat(64));
    let wrong = basic("spk-xiayang-01", "guess");
    let (status, _, _) = blocking_request(
        "GET",
        &server.url(&missing),
        &[("authorization", wrong.as_str())],
    )
    .unwrap();
    assert_eq!(status, 401);
    let right = basic("spk-xiayang-01", SPEAKER_PW);
    let (status, _, _) = blocking_request(
        "GET",
        &server.url(&missing),
        &[("authorization", right.as_str())],
    )
    .unwrap();
    assert_eq!(status, 404);
    let metrics = String::from_utf8(
        blocking_request("GET", &server.url("/metrics"), &[])
            .unwrap()
            .2,
    )
    .unwrap();
    assert!(
        metrics.contains("township_pa_output_up{zone=\"xiayang\",output=\"spk-xiayang-01\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("township_pa_output_up{zone=\"xiayang\",output=\"spk-xiayang-02\"} 0"),
        "{metrics}"
    );
}

#[test]
fn an_order_from_the_township_plays_at_the_village_hub_and_its_receipts_come_back_up() {
    if !have("espeak-ng", &["--version"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let township_port = free_port();
    let township_dir = init_tree_node(tmp.path(), "township", "330723001", "township", None);
    let township_key = crate::common::id_of(&township_dir)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://127.0.0.1:{township_port}");
    let village_dir = init_tree_node(
        tmp.path(),
        "village",
        "330723001001",
        "village",
        Some((&url, &township_key)),
    );
    let village_key = crate::common::id_of(&village_dir)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let out = crate::common::run(&[
        "enroll",
        "add",
        "--data-dir",
        township_dir.to_str().unwrap(),
        "--public-key",
        &village_key,
        "--area",
        "330723001001",
        "--name",
        "王宅村",
    ]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let log = tmp.path().join("village-amp.log");
    std::fs::write(
        village_dir.join("township-node.toml"),
        format!(
            r#"
[[pa.outputs]]
id = "amp"
kind = "audio_command"
command = ["sh", "-c", "echo \"play $1\" >> '{}'", "sh", "{{file}}"]

[[pa.zones]]
id = "wangzhai"
name = "王宅村"
area = "330723001001"
outputs = ["amp"]
"#,
            log.display()
        ),
    )
    .unwrap();
    let township = crate::common::serve_on(&township_dir, township_port);
    let _village = Server::start(&village_dir, &[], &[]);
    let admin = login(&township.url(""), "admin", ADMIN_PASSWORD);
    // The township does not know the village hub's zone ids: it names the village's area.
    let (status, b) = post(
        &township,
        &admin,
        "/api/v1/broadcasts",
        json!({"text": "王宅村村民请注意：今晚八点起停水检修。", "zones": ["330723001001"], "mode": "live", "level": "blue", "repeat": 1}),
    );
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["area"], "330723001001");
    let id = b["id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(60),
        "the village's receipts at the township",
        || receipt(&receipts_of(&township, &admin, &id), "amp").as_deref() == Some("finished"),
    );
    let v = receipts_of(&township, &admin, &id);
    assert_eq!(v["receipts"][0]["node_area"], "330723001001", "{v}");
    assert_eq!(v["receipts"][0]["zone"], "wangzhai", "{v}");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    // A recorded message: its bytes follow the order down the sync link and are verified first.
    let (status, b) = post(
        &township,
        &admin,
        "/api/v1/broadcasts",
        json!({"zones": ["330723001001"], "mode": "live", "level": "blue", "repeat": 1}),
    );
    assert_eq!(status, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let mut wav = b"RIFF".to_vec();
    let data = 8000u32;
    wav.extend_from_slice(&(36 + data).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    for v in [1u16, 1] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    for v in [8000u32, 16000] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    for v in [2u16, 16] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data.to_le_bytes());
    wav.extend((0..data).map(|i| (i % 251) as u8));
    let (ct, body) = crate::common::harness::multipart("file", "message.wav", &wav);
    let mut headers = admin.headers();
    headers.push(("content-type", ct.as_str()));
    let (status, _, answer) = crate::common::blocking_send(
        "POST",
        &township.url(&format!("/api/v1/broadcasts/{id}/audio")),
        &headers,
        &body,
    )
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    eventually(
        Duration::from_secs(60),
        "the recorded message at the village",
        || receipt(&receipts_of(&township, &admin, &id), "amp").as_deref() == Some("finished"),
    );
    let played = std::fs::read_to_string(&log).unwrap();
    let file = played.lines().last().unwrap().trim_start_matches("play ");
    assert_eq!(
        std::fs::read(file).unwrap(),
        wav,
        "the village played the verified bytes"
    );
}
