//! Sensors against real peers, with the node as a real process: pymodbus as a Modbus RTU slave on a
//! socat pseudo-terminal pair, HJ 212 frames from the standard over TCP, mosquitto_pub/mosquitto_sub
//! against the embedded broker, and the node as a client of a real mosquitto broker, killed with -9
//! while messages flow.
//!
//! The peers come from Debian and PyPI; `tests/run.sh` installs them and sets TOWNSHIP_REQUIRE_PEERS=1,
//! so in CI a missing peer is a failure. A plain `cargo test` without them skips these tests, saying so.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    ADMIN_PASSWORD, Server, Session, blocking_request, free_port, have, init_node, login,
};
use serde_json::Value;
use township_drivers::hj212;

fn start(dir: &Path, config: &str) -> Server {
    std::fs::write(dir.join("township-node.toml"), config).unwrap();
    Server::start(dir, &[], &[])
}

fn get_json(server: &Server, session: &Session, path: &str) -> Value {
    let (status, _, body) = blocking_request("GET", &server.url(path), &session.headers()).unwrap();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn device<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap()
}

fn latest(server: &Server, session: &Session, id: &str, metric: &str) -> Option<f64> {
    let list = get_json(server, session, "/api/v1/sensors");
    device(&list, id)["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metric"] == metric)
        .and_then(|p| p["latest"]["value"].as_f64())
}

fn raw_values(
    server: &Server,
    session: &Session,
    id: &str,
    metric: &str,
) -> Vec<(i64, f64, String)> {
    let body = get_json(
        server,
        session,
        &format!("/api/v1/sensors/{id}/readings?metric={metric}&from=0"),
    );
    body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["t"].as_i64().unwrap(),
                p["value"].as_f64().unwrap(),
                p["quality"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls `check` until it holds or `timeout` passes.
pub(crate) fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric_value(server: &Server, name_and_labels: &str) -> f64 {
    let (_, _, body) = blocking_request("GET", &server.url("/metrics"), &[]).unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `ms` (whole seconds) as an HJ 212 DataTime, `YYYYMMDDhhmmss` in Beijing time.
fn data_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis((ms + 8 * 3_600_000) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// HJ 212

const MN: &str = "010000A8900016F000169DC0";

fn hj212_config() -> String {
    format!(
        r#"
[hj212]
listen = "127.0.0.1:0"

[[devices]]
id = "aq-01"
name = "县城空气站"
area = "330723001"
driver = "hj212"
mn = "{MN}"

[[devices]]
id = "aq-pw"
name = "有密码的站"
area = "330723001"
driver = "hj212"
mn = "PWSTATION01"
password = "hj212-station-pw"
"#
    )
}

fn read_answer(stream: &mut TcpStream) -> Option<hj212::Frame> {
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.ends_with(b"\r\n") {
            return Some(hj212::parse(&buf).expect("the node's answer is a valid frame"));
        }
    }
}

#[test]
fn hj212_stations_over_tcp_with_frames_from_the_standard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let mut server = start(&dir, &hj212_config());
    let addr = server.wait_for_line("hj212 listening on tcp://", Duration::from_secs(10));
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    let mut station = TcpStream::connect(&addr).unwrap();
    // Data from ten minutes ago, on a whole second (DataTime has seconds).
    let t0 = (now_ms() - 600_000) / 1000 * 1000;

    // The standard's example (a command frame whose CRC is 1C80) is accepted; it is not a data upload,
    // so it needs no data response.
    station
        .write_all(b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80\r\n")
        .unwrap();
    assert!(read_answer(&mut station).is_none());

    // A real-time upload that asks for an answer gets CN 9014 with its QN, after the commit.
    let upload = |qn: &str, cn: &str, flag: u8, cp: &str, mn: &str| {
        hj212::encode(&format!(
            "QN={qn};ST=22;CN={cn};PW=123456;MN={mn};Flag={flag};CP=&&{cp}&&"
        ))
    };
    station
        .write_all(&upload(
            "20240601120000001",
            "2011",
            5,
            &format!(
                "DataTime={};a34004-Rtd=35.2,a34004-Flag=N;a21026-Rtd=8.0,a21026-Flag=D",
                data_time(t0)
            ),
            MN,
        ))
        .unwrap();
    let answer = read_answer(&mut station).expect("a data response");
    assert_eq!(
        (answer.cn.as_str(), answer.qn.as_deref()),
        ("9014", Some("20240601120000001"))
    );
    assert_eq!(latest(&server, &admin, "aq-01", "a34004"), Some(35.2));
    let flagged = raw_values(&server, &admin, "aq-01", "a21026");
    assert_eq!(flagged, vec![(t0, 8.0, "device_flagged".into())]);

    // Corruption of every kind, in one stream: a bad CRC, a station nobody enrolled, line noise, and
    // a frame cut short by the next one. None of it is stored; the connection carries on.
    let mut corrupted = upload(
        "20240601120100001",
        "2011",
        5,
        &format!(
            "DataTime={};a34004-Rtd=99.9,a34004-Flag=N",
            data_time(t0 + 60_000)
        ),
        MN,
    );
    let n = corrupted.len();
    corrupted[n - 6] = if corrupted[n - 6] == b'0' { b'1' } else { b'0' };
    station.write_all(&corrupted).unwrap();
    station
        .write_all(&upload(
            "20240601120100002",
            "2011",
            5,
            &format!(
                "DataTime={};a34004-Rtd=77.7,a34004-Flag=N",
                data_time(t0 + 60_000)
            ),
            "999999999999",
        ))
        .unwrap();
    station
        .write_all(b"\x00\xff garbage ## more garbage\r\n")
        .unwrap();
    let cut = upload(
        "20240601120100003",
        "2011",
        5,
        &format!(
            "DataTime={};a34004-Rtd=66.6,a34004-Flag=N",
            data_time(t0 + 60_000)
        ),
        MN,
    );
    station.write_all(&cut[..cut.len() / 2]).unwrap();
    assert!(
        read_answer(&mut station).is_none(),
        "nothing bad is answered"
    );
    // Minute data after all that still gets through (the half frame's stated length swallows the
    // start of the next frame, which is then lost too: the next one arrives intact).
    for (qn, minute, value) in [
        ("20240601120200001", data_time(t0 + 120_000), 36.0),
        ("20240601120300001", data_time(t0 + 180_000), 37.5),
    ] {
        station
            .write_all(&upload(
                qn,
                "2051",
                5,
                &format!(
                    "DataTime={minute};a34004-Avg={value},a34004-Min=30,a34004-Max=40,a34004-Flag=N"
                ),
                MN,
            ))
            .unwrap();
    }
    let mut answered = Vec::new();
    while let Some(a) = read_answer(&mut station) {
        answered.push(a.qn.unwrap_or_default());
    }
    assert!(
        answered.contains(&"20240601120300001".to_string()),
        "{answered:?}"
    );
    // A station with an access password: a wrong one is refused and closes the connection, and it
    // counts as a refused sign-in for the station, never as its fault; the right one is answered.
    station
        .write_all(&upload(
            "20240601120400001",
            "2011",
            5,
            &format!("DataTime={};a34004-Rtd=11.0", data_time(t0)),
            "PWSTATION01",
        ))
        .unwrap();
    assert!(
        read_answer(&mut station).is_none(),
        "wrong PW (123456) is refused"
    );
    let mut rest = [0u8; 16];
    assert!(
        matches!(station.read(&mut rest), Ok(0) | Err(_)),
        "and the connection is closed"
    );
    let mut station = TcpStream::connect(&addr).unwrap();
    let right = hj212::encode(&format!(
        "QN=20240601120400002;ST=22;CN=2011;PW=hj212-station-pw;MN=PWSTATION01;Flag=5;CP=&&DataTime={};a34004-Rtd=12.0&&",
        data_time(t0)
    ));
    station.write_all(&right).unwrap();
    assert!(read_answer(&mut station).is_some());
    assert_eq!(latest(&server, &admin, "aq-pw", "a34004"), Some(12.0));
    assert!(
        metric_value(
            &server,
            "township_sensor_sign_ins_refused_total{device=\"aq-pw\",driver=\"hj212\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric_value(
            &server,
            "township_sensor_errors_total{device=\"aq-pw\",driver=\"hj212\",kind=\"refused\"}"
        ),
        0.0
    );
    assert!(
        metric_value(
            &server,
            "township_link_errors_total{link=\"hj212\",kind=\"refused\"}"
        ) >= 1.0
    );
    let values: Vec<f64> = raw_values(&server, &admin, "aq-01", "a34004")
        .into_iter()
        .map(|v| v.1)
        .collect();
    assert!(values.contains(&37.5), "{values:?}");
    for bad in [99.9, 77.7, 66.6] {
        assert!(
            !values.contains(&bad),
            "{bad} must not be stored: {values:?}"
        );
    }
    assert!(
        metric_value(
            &server,
            "township_sensor_errors_total{device=\"aq-01\",driver=\"hj212\",kind=\"crc\"}"
        ) >= 1.0
    );
    let list = get_json(&server, &admin, "/api/v1/sensors");
    let aq = device(&list, "aq-01");
    assert_eq!(
        aq["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["metric"] == "a34004")
            .unwrap()["name"],
        "PM2.5"
    );
    drop(station);
    let (status, _) = server.signal_and_wait(rustix::process::Signal::TERM);
    assert!(status.success());
}

#[test]
fn hj212_station_on_a_serial_line() {
    if !have("socat", &["-V"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let ptys = pty_pair(tmp.path());
    let server = start(
        &dir,
        &format!(
            "[[devices]]\nid = \"aq-02\"\nname = \"污水站\"\narea = \"330723001\"\ndriver = \"hj212\"\nmn = \"{MN}\"\nport = \"{}\"\nbaud = 9600\n",
            ptys.master
        ),
    );
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    let mut line = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&ptys.slave)
        .unwrap();
    let t0 = (now_ms() - 300_000) / 1000 * 1000;
    let frame = hj212::encode(&format!(
        "QN=20240601120000009;ST=32;CN=2061;PW=123456;MN={MN};Flag=5;CP=&&DataTime={};w01018-Avg=21.5,w01018-Flag=N;w00000-Cou=350.0,w00000-Flag=N&&",
        data_time(t0)
    ));
    // Noise first, as a line that was just plugged in gives.
    line.write_all(b"\x00\x13noise").unwrap();
    line.write_all(&frame).unwrap();
    eventually(Duration::from_secs(20), "the hourly data", || {
        latest(&server, &admin, "aq-02", "w01018") == Some(21.5)
    });
    assert_eq!(latest(&server, &admin, "aq-02", "w00000-Cou"), Some(350.0));
    // The data response comes back on the same line.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") {
        line.read_exact(&mut byte).unwrap();
        answer.push(byte[0]);
    }
    let start = answer.windows(2).position(|w| w == b"##").unwrap();
    let answer = hj212::parse(&answer[start..]).unwrap();
    assert_eq!(
        (answer.cn.as_str(), answer.qn.as_deref()),
        ("9014", Some("20240601120000009"))
    );
    let list = get_json(&server, &admin, "/api/v1/sensors");
    let point = device(&list, "aq-02")["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metric"] == "w01018")
        .unwrap()
        .clone();
    assert_eq!(
        (point["name"].as_str(), point["unit"].as_str()),
        (Some("化学需氧量"), Some("mg/L"))
    );
}

// ---------------------------------------------------------------------------------------------
// MQTT, embedded broker

const RAIN_PW: &str = "rain-02-secret-pw";
const LEVEL_PW: &str = "wl-09-secret-pw";

fn mqtt_devices() -> String {
    format!(
        r#"
[[devices]]
id = "rain-02"
name = "王宅村雨量站"
area = "330723001001"
driver = "mqtt"
username = "rain-02"
password = "{RAIN_PW}"
format = "json"
points = [ {{ metric = "rainfall", unit = "mm", min = 0.0, max = 200.0 }} ]

[[devices]]
id = "wl-09"
name = "南门水位站"
area = "330723001"
driver = "mqtt"
password = "{LEVEL_PW}"
format = "senml"
"#
    )
}

fn split_addr(addr: &str) -> (String, String) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    (host.to_string(), port.to_string())
}

fn mosquitto_pub(
    addr: &str,
    user: &str,
    pw: &str,
    topic: &str,
    message: &str,
) -> std::process::Output {
    let (host, port) = split_addr(addr);
    Command::new("mosquitto_pub")
        .args([
            "-h", &host, "-p", &port, "-u", user, "-P", pw, "-q", "1", "-t", topic, "-m", message,
        ])
        .output()
        .unwrap()
}

#[test]
fn mqtt_sensors_publish_to_the_embedded_broker_with_their_own_credentials_only() {
    if !have("mosquitto_pub", &["--help"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let mut server = start(
        &dir,
        &format!("[mqtt]\nlisten = \"127.0.0.1:0\"\n{}", mqtt_devices()),
    );
    let addr = server.wait_for_line("mqtt broker listening on mqtt://", Duration::from_secs(10));
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    let (host, port) = split_addr(&addr);

    // A subscriber on the device's own topic sees what the device publishes.
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-u",
            "rain-02",
            "-P",
            RAIN_PW,
            "-t",
            "sensors/rain-02/#",
            "-C",
            "1",
            "-W",
            "20",
            "-v",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sub = Killed(sub);
    std::thread::sleep(Duration::from_millis(500));
    let ts = (now_ms() - 60_000) / 1000 * 1000;
    let out = mosquitto_pub(
        &addr,
        "rain-02",
        RAIN_PW,
        "sensors/rain-02",
        &format!(r#"{{"ts": {ts}, "rainfall": 1.5}}"#),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // QoS 1: mosquitto_pub returned after the PUBACK, which the node sends after the commit.
    assert_eq!(
        raw_values(&server, &admin, "rain-02", "rainfall"),
        vec![(ts, 1.5, "good".into())]
    );
    let mut sub = sub;
    let mut seen = String::new();
    sub.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut seen)
        .unwrap();
    assert!(seen.starts_with("sensors/rain-02 "), "{seen}");

    // SenML on the other device's senml topic.
    let senml = format!(
        r#"[{{"bn":"urn:dev:wl-09:","n":"water_level","u":"m","v":3.21,"t":{}}}]"#,
        ts / 1000
    );
    let out = mosquitto_pub(&addr, "wl-09", LEVEL_PW, "sensors/wl-09/senml", &senml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        raw_values(&server, &admin, "wl-09", "water_level"),
        vec![(ts, 3.21, "good".into())]
    );

    // Wrong password, unknown user, and a user with a wildcard: refused at CONNECT.
    for (user, pw) in [
        ("rain-02", "wrong-password"),
        ("nobody", RAIN_PW),
        ("rain-#", RAIN_PW),
    ] {
        let out = mosquitto_pub(&addr, user, pw, "sensors/rain-02", r#"{"rainfall": 9}"#);
        assert!(!out.status.success(), "{user} must be refused");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains("bad user name or password") || err.contains("not authori"),
            "{err}"
        );
    }
    // A device publishing to another device's topic is cut off and nothing is stored.
    let out = mosquitto_pub(
        &addr,
        "rain-02",
        RAIN_PW,
        "sensors/wl-09",
        r#"{"water_level": 99}"#,
    );
    assert!(!out.status.success(), "a foreign topic must be refused");
    // Subscribing to everything is refused too.
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-u",
            "rain-02",
            "-P",
            RAIN_PW,
            "-t",
            "sensors/#",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("denied"), "mosquitto_sub: {said}");
    // Garbage on the broker's port ends that connection only.
    for junk in [
        &b"\x10\xff\xff\xff\xff\x0f"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0x30; 300],
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut rest = Vec::new();
        // The broker closes the connection (a timeout would be an error here) without a CONNACK.
        s.read_to_end(&mut rest)
            .expect("the broker closes the connection");
        assert!(
            rest.is_empty() || rest[0] >> 4 != 2,
            "no CONNACK for garbage: {rest:?}"
        );
    }
    // A payload that is not JSON is counted, acknowledged, and not stored.
    let out = mosquitto_pub(&addr, "rain-02", RAIN_PW, "sensors/rain-02", "not json");
    assert!(out.status.success());
    assert_eq!(raw_values(&server, &admin, "wl-09", "water_level").len(), 1);
    assert_eq!(raw_values(&server, &admin, "rain-02", "rainfall").len(), 1);
    let refused = metric_value(
        &server,
        "township_sensor_errors_total{device=\"rain-02\",driver=\"mqtt\",kind=\"refused\"}",
    );
    assert!(
        refused >= 2.0,
        "foreign topic, foreign subscription: {refused}"
    );
    // A wrong password in its name is anyone's doing: counted apart, never as the device's error.
    let sign_ins = metric_value(
        &server,
        "township_sensor_sign_ins_refused_total{device=\"rain-02\",driver=\"mqtt\"}",
    );
    assert_eq!(sign_ins, 1.0);
    let malformed = metric_value(
        &server,
        "township_sensor_errors_total{device=\"rain-02\",driver=\"mqtt\",kind=\"malformed\"}",
    );
    assert_eq!(malformed, 1.0);
}

// ---------------------------------------------------------------------------------------------
// MQTT, external broker, with kill -9

fn start_mosquitto(dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nmax_inflight_messages 100\n"),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "mosquitto to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (Killed(child), port)
}

fn external_config(port: u16) -> String {
    format!(
        r#"
[mqtt]
external = {{ host = "127.0.0.1", port = {port}, client_id = "township-node-test" }}

[[devices]]
id = "rain-02"
name = "王宅村雨量站"
area = "330723001001"
driver = "mqtt"
format = "json"
"#
    )
}

#[test]
fn readings_acknowledged_through_an_external_broker_survive_kill_9() {
    if !have("mosquitto", &["-h"]) || !have("mosquitto_pub", &["--help"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let (_broker, port) = start_mosquitto(tmp.path());
    let config = external_config(port);
    let mut server = start(&dir, &config);
    server.wait_for_line("subscribed to sensors/+", Duration::from_secs(20));

    // 600 QoS 1 messages from a publisher that keeps going while the node is killed twice.
    const N: i64 = 600;
    let base_ts = now_ms() - 3_600_000;
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "sensors/rain-02",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for i in 0..N {
            writeln!(
                stdin,
                r#"{{"ts": {}, "rainfall": {}}}"#,
                base_ts + i * 1000,
                (i % 50) as f64 * 0.5
            )
            .unwrap();
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(30));
            }
        }
    });
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(300 + round * 200));
        let pid = server.pid();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let _ = server.child.wait();
        server = start(&dir, &config);
        server.wait_for_line("subscribed to sensors/+", Duration::from_secs(20));
    }
    feeder.join().unwrap();
    let status = publisher.wait().unwrap();
    assert!(status.success());
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    eventually(
        Duration::from_secs(60),
        "every message to be stored",
        || raw_count(&server, &admin) == N as usize,
    );
    let values = raw_values_all(&server, &admin);
    assert_eq!(values.len(), N as usize, "each exactly once");
    for (i, (t, v)) in values.iter().enumerate() {
        assert_eq!(*t, base_ts + i as i64 * 1000);
        assert_eq!(*v, (i % 50) as f64 * 0.5);
    }
    let (status, _) = server.signal_and_wait(rustix::process::Signal::TERM);
    assert!(status.success());
    // The database is sound, and every acknowledged reading is still there after an orderly restart.
    let doctor = crate::common::run(&["doctor", "--data-dir", dir.to_str().unwrap()]);
    assert!(
        doctor.status.success(),
        "{}",
        crate::common::stdout(&doctor)
    );
    let server = start(&dir, &config);
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    assert_eq!(raw_values_all(&server, &admin), values);
}

fn raw_values_all(server: &Server, session: &Session) -> Vec<(i64, f64)> {
    raw_values(server, session, "rain-02", "rainfall")
        .into_iter()
        .map(|(t, v, _)| (t, v))
        .collect()
}

fn raw_count(server: &Server, session: &Session) -> usize {
    raw_values(server, session, "rain-02", "rainfall").len()
}

// ---------------------------------------------------------------------------------------------
// Modbus RTU

pub(crate) struct PtyPair {
    _socat: Killed,
    /// Held open so the line stays up while the slave process is stopped: a pseudo-terminal whose
    /// last user closes it reads as an I/O error on the other end, which is an unplugged port, not a
    /// silent slave.
    _hold: std::fs::File,
    pub(crate) master: String,
    pub(crate) slave: String,
}

pub(crate) fn pty_pair(dir: &Path) -> PtyPair {
    let (master, slave) = (dir.join("ttyNODE"), dir.join("ttySLAVE"));
    let socat = Command::new("socat")
        .args([
            &format!("pty,raw,echo=0,link={}", master.display()),
            &format!("pty,raw,echo=0,link={}", slave.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "socat's pseudo-terminals", || {
        master.exists() && slave.exists()
    });
    let hold = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave)
        .unwrap();
    PtyPair {
        _socat: Killed(socat),
        _hold: hold,
        master: master.display().to_string(),
        slave: slave.display().to_string(),
    }
}

fn modbus_slave(port: &str, noisy: bool) -> Killed {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/modbus_slave.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(["--port", port]);
    if noisy {
        cmd.arg("--noisy");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the slave did not start");
    Killed(child)
}

fn modbus_config(port: &str) -> String {
    format!(
        r#"
[[devices]]
id = "wl-01"
name = "熟溪水位站"
area = "330723001"
driver = "modbus_rtu"
port = "{port}"
baud = 115200
slave = 1
interval = "200ms"
timeout = "150ms"
points = [
  {{ metric = "water_level", register = 0, kind = "holding", type = "u16", scale = 0.01, unit = "m", min = 0.0, max = 20.0 }},
  {{ metric = "offset", register = 1, kind = "holding", type = "i16", scale = 0.5 }},
  {{ metric = "flow", register = 2, kind = "holding", type = "f32", word_order = "big", unit = "m3/s" }},
  {{ metric = "total", register = 4, kind = "holding", type = "u32", word_order = "little" }},
  {{ metric = "battery", register = 0, kind = "input", type = "f32", unit = "V", min = 0.0, max = 3.0 }},
]

[[devices]]
id = "wl-02"
name = "南溪水位站"
area = "330723001"
driver = "modbus_rtu"
port = "{port}"
baud = 115200
slave = 2
interval = "200ms"
timeout = "150ms"
points = [ {{ metric = "water_level", register = 0, type = "u16", scale = 0.1, offset = -10.0, unit = "m" }} ]
"#
    )
}

fn status(server: &Server, session: &Session, id: &str) -> String {
    let list = get_json(server, session, "/api/v1/sensors");
    device(&list, id)["status"].as_str().unwrap().to_string()
}

#[test]
fn modbus_rtu_polls_a_pymodbus_slave_and_survives_restarts_and_a_noisy_line() {
    if !have("socat", &["-V"]) || !have("python3", &["-c", "import pymodbus, serial"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let ptys = pty_pair(tmp.path());
    let slave = modbus_slave(&ptys.slave, false);
    let server = start(&dir, &modbus_config(&ptys.master));
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);

    eventually(Duration::from_secs(20), "both devices to report", || {
        latest(&server, &admin, "wl-01", "total").is_some()
            && latest(&server, &admin, "wl-02", "water_level").is_some()
    });
    assert_eq!(latest(&server, &admin, "wl-01", "water_level"), Some(12.34));
    assert_eq!(latest(&server, &admin, "wl-01", "offset"), Some(-1.0));
    assert_eq!(latest(&server, &admin, "wl-01", "flow"), Some(12.5));
    assert_eq!(latest(&server, &admin, "wl-01", "total"), Some(70000.0));
    let battery = latest(&server, &admin, "wl-01", "battery").unwrap();
    assert!((battery - 3.7).abs() < 1e-6, "{battery}");
    // 3.7 V is outside the configured 0..3: kept, flagged.
    assert!(
        raw_values(&server, &admin, "wl-01", "battery")
            .iter()
            .all(|r| r.2 == "out_of_range")
    );
    assert_eq!(latest(&server, &admin, "wl-02", "water_level"), Some(40.0));
    assert_eq!(status(&server, &admin, "wl-01"), "online");

    // The slave goes away: timeouts are counted and the device turns faulty; the node carries on.
    drop(slave);
    eventually(Duration::from_secs(20), "wl-01 to turn faulty", || {
        status(&server, &admin, "wl-01") == "faulty"
    });
    eventually(Duration::from_secs(20), "timeouts to be counted", || {
        metric_value(
            &server,
            "township_sensor_errors_total{device=\"wl-01\",driver=\"modbus_rtu\",kind=\"timeout\"}",
        ) >= 3.0
    });
    // It comes back and is polled again without anyone touching the node.
    let slave = modbus_slave(&ptys.slave, false);
    let before = raw_values(&server, &admin, "wl-02", "water_level").len();
    eventually(Duration::from_secs(20), "polls to resume", || {
        raw_values(&server, &admin, "wl-02", "water_level").len() > before + 3
            && status(&server, &admin, "wl-01") == "online"
    });
    drop(slave);

    // A noisy line: random bytes, truncated frames, flipped bits, exceptions, silence. The node never
    // stores a value that is not the slave's.
    let _noisy = modbus_slave(&ptys.slave, true);
    let before = raw_values(&server, &admin, "wl-01", "water_level").len();
    eventually(
        Duration::from_secs(30),
        "readings through the noise",
        || raw_values(&server, &admin, "wl-01", "water_level").len() > before + 10,
    );
    for (metric, expected) in [
        ("water_level", 12.34),
        ("offset", -1.0),
        ("flow", 12.5),
        ("total", 70000.0),
    ] {
        for (_, v, _) in raw_values(&server, &admin, "wl-01", metric) {
            assert_eq!(v, expected, "{metric} took a bad value from the noisy line");
        }
    }
    for (_, v, _) in raw_values(&server, &admin, "wl-02", "water_level") {
        assert_eq!(v, 40.0);
    }
    for kind in ["crc", "exception", "timeout"] {
        assert!(
            metric_value(
                &server,
                &format!(
                    "township_sensor_errors_total{{device=\"wl-01\",driver=\"modbus_rtu\",kind=\"{kind}\"}}"
                )
            ) >= 1.0,
            "{kind} errors are counted"
        );
    }
    let (status_code, _, _) = blocking_request("GET", &server.url("/healthz"), &[]).unwrap();
    assert_eq!(status_code, 200);
}

/// Publishes QoS 1 messages one connection at a time until the node goes away, and returns the
/// timestamps of the messages whose PUBACK arrived.
fn publish_until_killed(addr: &str, user: &str, password: &str, base_ts: i64) -> Vec<i64> {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Connect, Login, Packet, Publish};
    let mut acked = Vec::new();
    let Ok(mut socket) = TcpStream::connect(addr) else {
        return acked;
    };
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut connect = Connect::new("crash-publisher");
    connect.login = Some(Login::new(user, password));
    let mut out = BytesMut::new();
    Packet::Connect(connect).write(&mut out, 1 << 20).unwrap();
    if socket.write_all(&out).is_err() {
        return acked;
    }
    let mut inbuf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let mut read_packet = |socket: &mut TcpStream, inbuf: &mut BytesMut| -> Option<Packet> {
        loop {
            match Packet::read(inbuf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(_) => return None,
            }
            match socket.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    if !matches!(
        read_packet(&mut socket, &mut inbuf),
        Some(Packet::ConnAck(_))
    ) {
        return acked;
    }
    // A window of 20 unacknowledged messages, as a sensor gateway would keep.
    let mut in_flight = std::collections::VecDeque::new();
    for i in 0..100_000i64 {
        let ts = base_ts + i;
        let mut p = Publish::new(
            "sensors/rain-02",
            QoS::AtLeastOnce,
            format!(r#"{{"ts": {ts}, "rainfall": 0.5}}"#),
        );
        p.pkid = (i % 60_000 + 1) as u16;
        out.clear();
        Packet::Publish(p).write(&mut out, 1 << 20).unwrap();
        if socket.write_all(&out).is_err() {
            return acked;
        }
        in_flight.push_back(ts);
        while in_flight.len() >= 20 {
            match read_packet(&mut socket, &mut inbuf) {
                Some(Packet::PubAck(_)) => acked.extend(in_flight.pop_front()),
                Some(_) => {}
                None => return acked,
            }
        }
    }
    acked
}

#[test]
fn readings_acknowledged_by_the_embedded_broker_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let config = format!("[mqtt]\nlisten = \"127.0.0.1:0\"\n{}", mqtt_devices());
    let mut server = start(&dir, &config);
    let addr = server.wait_for_line("mqtt broker listening on mqtt://", Duration::from_secs(10));
    let base_ts = now_ms() - 3_600_000;
    let publisher = {
        let addr = addr.clone();
        std::thread::spawn(move || publish_until_killed(&addr, "rain-02", RAIN_PW, base_ts))
    };
    // Let a few thousand messages through, then pull the plug.
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    eventually(Duration::from_secs(30), "readings to flow", || {
        metric_value(&server, "township_telemetry_readings_committed_total") >= 2000.0
    });
    drop(admin);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.pid()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = server.child.wait();
    let acked = publisher.join().unwrap();
    assert!(acked.len() >= 1000, "only {} acknowledged", acked.len());
    let server = start(&dir, &config);
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    // Ten thousand readings (one per millisecond) per request, below the API's 20,000-point cap.
    let mut stored = std::collections::HashSet::new();
    let last = acked.iter().max().copied().unwrap_or(base_ts);
    let mut from = base_ts;
    while from <= last {
        let body = get_json(
            &server,
            &admin,
            &format!(
                "/api/v1/sensors/rain-02/readings?metric=rainfall&from={from}&to={}",
                from + 10_000
            ),
        );
        stored.extend(
            body["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["t"].as_i64().unwrap()),
        );
        from += 10_000;
    }
    let lost: Vec<&i64> = acked.iter().filter(|t| !stored.contains(t)).collect();
    eprintln!(
        "embedded broker kill -9: {} readings acknowledged, {} stored after restart",
        acked.len(),
        stored.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged readings lost, first {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
}
