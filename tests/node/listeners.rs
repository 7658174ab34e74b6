//! The sensor listeners under attack from the LAN, against a real node process: floods of idle
//! connections (from one address and from many), a station's password guessed over HJ 212, one
//! device's credentials reusing another's MQTT client id, wrong passwords in a device's name, and
//! log lines forged through a username. Attackers bind to their own loopback addresses
//! (127.0.0.x all reach the node on Linux); the sensors are real MQTT and HJ 212 clients.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{ADMIN_PASSWORD, Server, Session, blocking_request, init_node, login};
use serde_json::Value;
use township_drivers::hj212;

const RAIN_PW: &str = "rain-02-secret-pw";
const LEVEL_PW: &str = "wl-09-secret-pw";
const MN: &str = "010000A8900016F000169DC0";
const PW_MN: &str = "PWSTATION01";
const STATION_PW: &str = "hj212-station-pw";

fn config() -> String {
    format!(
        r#"
[mqtt]
listen = "127.0.0.1:0"

[hj212]
listen = "127.0.0.1:0"

[[devices]]
id = "rain-02"
name = "王宅村雨量站"
area = "330723001001"
driver = "mqtt"
password = "{RAIN_PW}"
format = "json"

[[devices]]
id = "wl-09"
name = "南门水位站"
area = "330723001"
driver = "mqtt"
password = "{LEVEL_PW}"
format = "json"

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
mn = "{PW_MN}"
password = "{STATION_PW}"
"#
    )
}

struct Node {
    server: Server,
    mqtt: SocketAddr,
    hj212: SocketAddr,
    admin: Session,
}

fn start(tmp: &Path) -> Node {
    let dir = init_node(tmp);
    std::fs::write(dir.join("township-node.toml"), config()).unwrap();
    let mut server = Server::start(&dir, &[], &[]);
    let mqtt = server
        .wait_for_line("mqtt broker listening on mqtt://", Duration::from_secs(10))
        .parse()
        .unwrap();
    let hj212 = server
        .wait_for_line("hj212 listening on tcp://", Duration::from_secs(10))
        .parse()
        .unwrap();
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    Node {
        server,
        mqtt,
        hj212,
        admin,
    }
}

/// Lets this test process hold a few thousand sockets.
fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

/// Opens `n` idle TCP connections to `to`, spread over the loopback addresses `sources`.
fn idle_flood(to: SocketAddr, n: usize, sources: &[IpAddr]) -> Vec<tokio::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..n {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(sources[i % sources.len()], 0))
                .unwrap();
            if let Ok(s) = socket.connect(to).await {
                out.push(s);
            }
        }
        out
    })
}

fn loopback(a: u8, b: u8) -> IpAddr {
    IpAddr::from([127, 0, a, b])
}

/// A QoS 1 publish by a real MQTT client (rumqttc); true once the PUBACK came back.
fn publish(
    to: SocketAddr,
    user: &str,
    password: &str,
    client_id: &str,
    body: &str,
    within: Duration,
) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut options = rumqttc::MqttOptions::new(client_id, to.ip().to_string(), to.port());
        options.set_credentials(user, password);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
        client
            .publish(
                format!("sensors/{user}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                body,
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => return true,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    })
}

fn hj212_upload(mn: &str, pw: &str, qn: &str, value: f64) -> Vec<u8> {
    let now = time_text();
    hj212::encode(&format!(
        "QN={qn};ST=22;CN=2011;PW={pw};MN={mn};Flag=5;CP=&&DataTime={now};a34004-Rtd={value},a34004-Flag=N&&"
    ))
}

/// Beijing time now as HJ 212's DataTime (YYYYMMDDhhmmss), a minute ago.
fn time_text() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    // 2026-07-01T08:00:00+08:00 → 20260701080000
    township_node::clock::rfc3339_china(ms)
        .chars()
        .take(19)
        .filter(char::is_ascii_digit)
        .collect()
}

/// Sends a frame and waits for the data response; true when the station was answered.
fn station_answered(stream: &mut TcpStream, frame: &[u8]) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    if stream.write_all(frame).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.ends_with(b"\r\n") {
            return hj212::parse(&buf).is_ok_and(|f| f.cn == "9014");
        }
    }
}

fn metric(node: &Node, name_and_labels: &str) -> f64 {
    let (_, _, body) = blocking_request("GET", &node.server.url("/metrics"), &[]).unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn device_status(node: &Node, id: &str) -> String {
    let (_, _, body) = blocking_request(
        "GET",
        &node.server.url("/api/v1/sensors"),
        &node.admin.headers(),
    )
    .unwrap();
    let list: Value = serde_json::from_slice(&body).unwrap();
    list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .map(|d| d["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// An MQTT 3.1.1 CONNECT written by hand from a chosen address; the CONNACK return code, if any.
async fn raw_connect(
    from: IpAddr,
    to: SocketAddr,
    client_id: &str,
    user: &str,
    pw: &str,
) -> Option<u8> {
    held_connect(from, to, client_id, user, pw)
        .await
        .map(|(code, _)| code)
}

/// [`raw_connect`], keeping the connection open.
async fn held_connect(
    from: IpAddr,
    to: SocketAddr,
    client_id: &str,
    user: &str,
    pw: &str,
) -> Option<(u8, tokio::net::TcpStream)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let field = |s: &str| {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    };
    let mut body = field("MQTT");
    body.extend_from_slice(&[4, 0xC2, 0, 60]);
    for s in [client_id, user, pw] {
        body.extend(field(s));
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let mut stream = socket.connect(to).await.ok()?;
    stream.write_all(&packet).await.ok()?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut ack))
        .await
        .ok()?
        .ok()?;
    (ack[0] == 0x20).then_some((ack[3], stream))
}

#[test]
fn idle_floods_never_keep_sensors_out() {
    raise_fd_limit();
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path());

    // 1,100 idle connections to the broker from one address (this kept every sensor out before).
    let flood = idle_flood(node.mqtt, 1100, &[loopback(0, 66)]);
    assert!(flood.len() > 1000, "{} connected", flood.len());
    let started = Instant::now();
    assert!(
        publish(
            node.mqtt,
            "rain-02",
            RAIN_PW,
            "rain-02",
            r#"{"rainfall": 1.5}"#,
            Duration::from_secs(10)
        ),
        "a sensor could not publish amid an idle flood from one address"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(flood);

    // 400 idle connections spread over 200 addresses (more than the pending room).
    let sources: Vec<IpAddr> = (1..=200).map(|i| loopback(1, i as u8)).collect();
    let flood = idle_flood(node.mqtt, 400, &sources);
    assert!(
        publish(
            node.mqtt,
            "wl-09",
            LEVEL_PW,
            "wl-09",
            r#"{"water_level": 3.2}"#,
            Duration::from_secs(10)
        ),
        "a sensor could not publish amid an idle flood from many addresses"
    );
    assert!(metric(&node, "township_listener_evicted_total{listener=\"mqtt\"}") > 0.0);
    drop(flood);

    // 300 silent connections to the HJ 212 listener (this kept every station out for 15 minutes).
    let flood = idle_flood(node.hj212, 300, &[loopback(0, 67)]);
    let mut station = TcpStream::connect(node.hj212).unwrap();
    assert!(
        station_answered(
            &mut station,
            &hj212_upload(MN, "123456", "20240601120000001", 35.2)
        ),
        "a station could not deliver amid a silent flood"
    );
    drop(flood);
}

#[test]
fn a_station_password_cannot_be_guessed_at_line_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path());
    let attacker = loopback(0, 70);
    let started = Instant::now();
    let mut refused_at_once = 0;
    for i in 0..8 {
        let socket = std::net::TcpStream::connect(node.hj212).unwrap();
        drop(socket);
        // From the attacker's own address, one guess per connection.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::new(attacker, 0)).unwrap();
            s.connect(node.hj212).await.unwrap().into_std().unwrap()
        });
        stream.set_nonblocking(false).unwrap();
        let mut stream = stream;
        let t = Instant::now();
        assert!(!station_answered(
            &mut stream,
            &hj212_upload(PW_MN, &format!("guess-{i}"), "20240601120000002", 1.0)
        ));
        // Several guesses on one connection are impossible: it is closed after the first.
        let again = hj212_upload(PW_MN, STATION_PW, "20240601120000003", 1.0);
        assert!(
            !station_answered(&mut stream, &again),
            "still open after a wrong password"
        );
        if t.elapsed() < Duration::from_millis(500) {
            refused_at_once += 1;
        }
    }
    // Five wrong guesses cost a second each; after them the address is refused without a look.
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(refused_at_once >= 3, "{refused_at_once}");
    // The right password from the attacker's address is refused for now...
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut stream = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(attacker, 0)).unwrap();
        s.connect(node.hj212).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    assert!(!station_answered(
        &mut stream,
        &hj212_upload(PW_MN, STATION_PW, "20240601120000004", 2.0)
    ));
    // ...but the real station, at its own address, delivers, and is not marked faulty.
    let mut station = TcpStream::connect(node.hj212).unwrap();
    assert!(station_answered(
        &mut station,
        &hj212_upload(PW_MN, STATION_PW, "20240601120000005", 3.0)
    ));
    assert!(
        metric(
            &node,
            "township_sensor_sign_ins_refused_total{device=\"aq-pw\",driver=\"hj212\"}"
        ) >= 8.0
    );
    assert_eq!(
        metric(
            &node,
            "township_sensor_errors_total{device=\"aq-pw\",driver=\"hj212\",kind=\"refused\"}"
        ),
        0.0
    );
    assert_ne!(device_status(&node, "aq-pw"), "faulty");
}

#[test]
fn one_device_cannot_end_another_by_reusing_its_client_id() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = |user: &'static str, pw: &'static str| {
            let mut options = rumqttc::MqttOptions::new(
                "gateway-1",
                node.mqtt.ip().to_string(),
                node.mqtt.port(),
            );
            options.set_credentials(user, pw);
            options.set_keep_alive(Duration::from_secs(30));
            rumqttc::AsyncClient::new(options, 10)
        };
        // The water level station connects with the client id "gateway-1"...
        let (level, mut level_events) = connect("wl-09", LEVEL_PW);
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) =
                level_events.poll().await.unwrap()
            {
                break;
            }
        }
        // ...then the rain gauge's credentials use the same client id.
        let (_rain, mut rain_events) = connect("rain-02", RAIN_PW);
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) =
                rain_events.poll().await.unwrap()
            {
                break;
            }
        }
        let keep_rain = tokio::spawn(async move { while rain_events.poll().await.is_ok() {} });
        // The water level station is still connected: its publish is acknowledged on the same link.
        level
            .publish(
                "sensors/wl-09",
                rumqttc::QoS::AtLeastOnce,
                false,
                r#"{"water_level": 2.5}"#,
            )
            .await
            .unwrap();
        let acked = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match level_events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return true,
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return false,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        assert!(
            acked,
            "the first device was disconnected by another's client id"
        );
        keep_rain.abort();
    });
}

#[test]
fn wrong_passwords_in_a_devices_name_do_not_make_it_faulty_or_forge_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path());
    assert!(publish(
        node.mqtt,
        "rain-02",
        RAIN_PW,
        "rain-02",
        r#"{"rainfall": 0.5}"#,
        Duration::from_secs(10)
    ));
    // Thirty wrong passwords in the rain gauge's name, from several addresses.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..30u8 {
            let to = node.mqtt;
            tasks.push(tokio::spawn(async move {
                raw_connect(
                    loopback(2, 1 + i % 3),
                    to,
                    &format!("x{i}"),
                    "rain-02",
                    "wrong",
                )
                .await
            }));
        }
        for t in tasks {
            assert_ne!(t.await.unwrap(), Some(0), "a wrong password was accepted");
        }
    });
    assert!(
        metric(
            &node,
            "township_sensor_sign_ins_refused_total{device=\"rain-02\",driver=\"mqtt\"}"
        ) >= 30.0
    );
    assert_eq!(
        metric(
            &node,
            "township_sensor_errors_total{device=\"rain-02\",driver=\"mqtt\",kind=\"refused\"}"
        ),
        0.0
    );
    assert_ne!(device_status(&node, "rain-02"), "faulty");

    // A username carrying a newline and a terminal escape cannot forge a log line.
    let _ = node.server.drain_lines();
    rt.block_on(raw_connect(
        loopback(2, 9),
        node.mqtt,
        "forger",
        "x\nFORGED admin signed in\x1b[2J",
        "pw",
    ));
    std::thread::sleep(Duration::from_millis(300));
    let lines = node.server.drain_lines();
    assert!(
        lines.iter().any(|l| l.contains("MQTT sign-in refused")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("FORGED") || l.contains('\u{1b}')),
        "{lines:?}"
    );
}

#[test]
fn a_device_with_every_slot_taken_can_still_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The water level station holds all four of its connections (a gateway, say).
        let mut held = Vec::new();
        for id in ["c1", "c2", "c3", "c4"] {
            let (code, stream) = held_connect(loopback(0, 1), node.mqtt, id, "wl-09", LEVEL_PW)
                .await
                .unwrap();
            assert_eq!(code, 0, "{id}");
            held.push(stream);
        }
        // A fifth, new client id, is refused: the device's slots are full.
        assert_ne!(
            raw_connect(loopback(0, 1), node.mqtt, "c5", "wl-09", LEVEL_PW).await,
            Some(0)
        );
        // A reconnect with one of its client ids takes that connection's slot over.
        assert_eq!(
            raw_connect(loopback(0, 1), node.mqtt, "c2", "wl-09", LEVEL_PW).await,
            Some(0),
            "the reconnect was refused after its old connection was ended"
        );
        drop(held);
    });
}
