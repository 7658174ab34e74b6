//! The emergency-broadcast platform link with the node as a real process: the independent upper
//! platform simulator (`tests/interop/ebd_platform.py`, its own SM2/SM3 from the `gmssl` package)
//! orders, asks and cancels; the reference MQTT speaker plays; hostile packages built here get the
//! ResultCode they earn and nothing else happens.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use township_node::ebd::{package, sm, tar};

use crate::common::{
    ADMIN_PASSWORD, Server, blocking_request, blocking_send, free_port, have, init_tree_node, login,
};
use crate::sensors::{Killed, eventually};

const NODE_EBRID: &str = "53307230010000314010201";
const SPEAKER_PW: &str = "speaker-secret-ebd";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/ebd_platform.py")
}

fn platform(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("the platform simulator runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "simulator said {text} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The ResultCode of a receipt the node answered with, after checking its signature with the
/// node's exported certificate.
fn receipt_code(node_cert: &Path, body: &[u8]) -> u8 {
    let cert = sm::Cert::read(node_cert).expect("node cert");
    let members = tar::read(body).expect("the receipt is a tar");
    let files = package::sort_members(members).expect("files");
    let ebds = package::parse_ebds(files.ebds.expect("the receipt is signed")).expect("ebds");
    let value = sm::SignatureValue::parse(&ebds.signature_value).expect("value");
    assert!(
        sm::verify_package(&cert, files.ebdb, &value),
        "the receipt verifies"
    );
    let ebdb = package::parse_ebdb(files.ebdb).expect("ebdb");
    assert_eq!(ebdb.header.ebd_type, "EBDResponse");
    let text = String::from_utf8_lossy(files.ebdb).to_string();
    let code = text
        .split("<ResultCode>")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .expect("ResultCode");
    code.parse().expect("numeric ResultCode")
}

fn broadcasts(server: &Server, admin: &crate::common::Session) -> Vec<Value> {
    let (_, _, list) =
        blocking_request("GET", &server.url("/api/v1/broadcasts"), &admin.headers()).unwrap();
    let list: Value = serde_json::from_slice(&list).unwrap();
    list["broadcasts"].as_array().cloned().unwrap_or_default()
}

fn post_package(server: &Server, tar_bytes: &[u8]) -> (u16, Vec<u8>) {
    post_to(&server.url("/ebd/receive"), tar_bytes)
}

fn post_to(url: &str, tar_bytes: &[u8]) -> (u16, Vec<u8>) {
    let boundary = "----ebdtestboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"EBDT_x.tar\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(tar_bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let (status, _, answer) =
        blocking_send("POST", url, &[("content-type", ct.as_str())], &body).expect("post");
    (status, answer)
}

#[test]
fn the_shared_samples_kept_here_are_the_shared_ones() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/ebd");
    let Ok(entries) = std::fs::read_dir(&shared) else {
        eprintln!("SKIPPED: no shared conformance copy beside this clone");
        return;
    };
    for e in entries.flatten() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/conformance/ebd")
            .join(e.file_name());
        assert_eq!(
            std::fs::read(e.path()).ok(),
            std::fs::read(&here).ok(),
            "{:?}",
            e.file_name()
        );
    }
}

#[test]
fn a_signed_platform_order_plays_its_mp3_byte_for_byte_is_reported_and_can_be_cancelled() {
    if !have("python3", &["-c", "import gmssl, paho.mqtt"])
        || !have("espeak-ng", &["--version"])
        || !have("lame", &["--version"])
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    platform(&["keys", keys.to_str().unwrap()]);
    let dir = init_tree_node(tmp.path(), "node", "330723001", "township", None);
    let node_cert = dir.join("ebd/node.cert");
    assert_eq!(
        std::fs::metadata(&node_cert).unwrap().len(),
        143,
        "made at init"
    );

    // The platform's receive side.
    let sim_events = tmp.path().join("platform.events");
    let mut sim = Command::new("python3")
        .arg(script())
        .args([
            "serve",
            "--keys",
            keys.to_str().unwrap(),
            "--node-cert",
            node_cert.to_str().unwrap(),
            "--events",
            sim_events.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sim_port = line
        .trim()
        .strip_prefix("ready ")
        .expect("ready <port>")
        .to_string();
    let _sim = Killed(sim);
    let sim_url = format!("http://127.0.0.1:{sim_port}/ebd");

    let pw = tmp.path().join("spk.pw");
    std::fs::write(&pw, format!("{SPEAKER_PW}\n")).unwrap();
    let mqtt_port = free_port();
    std::fs::write(
        dir.join("township-node.toml"),
        format!(
            r#"
[mqtt]
listen = "127.0.0.1:{mqtt_port}"

[[pa.outputs]]
id = "spk-01"
kind = "mqtt_speaker"
username = "spk-01"
password_file = "{pw}"

[[pa.zones]]
id = "xiayang"
name = "下洋村"
area = "330723001002"
outputs = ["spk-01"]

[ebd]
ebrid = "{NODE_EBRID}"
receive_path = "/ebd/receive"
platform_url = "{sim_url}"
heartbeat = "1s"
ca_certs = ["{ca}"]
trusted_certs = ["{cert}"]
"#,
            pw = pw.display(),
            ca = keys.join("ca.cert").display(),
            cert = keys.join("platform.cert").display(),
        ),
    )
    .unwrap();
    let server = Server::start(&dir, &[], &[]);
    let out_dir = tmp.path().join("played");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut speaker = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pa_speaker.py"))
        .args([
            "--id",
            "spk-01",
            "--host",
            "127.0.0.1",
            "--port",
            &mqtt_port.to_string(),
            "--username",
            "spk-01",
            "--password-file",
            pw.to_str().unwrap(),
            "--http",
            &server.url(""),
            "--speed",
            "0.05",
            "--heartbeat",
            "5",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(speaker.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "ready");
    let _speaker = Killed(speaker);

    // Heartbeats reach the platform, signed by the node's key.
    eventually(Duration::from_secs(20), "a verified heartbeat", || {
        events(&sim_events)
            .iter()
            .any(|e| e["ebd_type"] == "ConnectionCheck" && e["verified"] == true)
    });

    // A real MP3 of speech.
    let wav = tmp.path().join("msg.wav");
    let mp3 = tmp.path().join("msg.mp3");
    assert!(
        Command::new("espeak-ng")
            .args([
                "-v",
                "cmn",
                "-w",
                wav.to_str().unwrap(),
                "防汛紧急通知：请沿河群众立即转移到安全地带。"
            ])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("lame")
            .args([
                "--quiet",
                "-b",
                "64",
                wav.to_str().unwrap(),
                mp3.to_str().unwrap()
            ])
            .status()
            .unwrap()
            .success()
    );
    let mp3_bytes = std::fs::read(&mp3).unwrap();
    let receive = server.url("/ebd/receive");
    let saved = tmp.path().join("order.tar");
    let common = |extra: &[&str]| {
        let mut args = vec![
            "--node",
            receive.as_str(),
            "--keys",
            keys.to_str().unwrap(),
            "--node-cert",
            node_cert.to_str().unwrap(),
            "--src-url",
            sim_url.as_str(),
            "--dest",
            NODE_EBRID,
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let send = |extra: &[&str]| {
        let mut args = vec!["send".to_string()];
        args.extend(common(extra));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        platform(&refs)
    };
    let order = send(&[
        "--mp3",
        mp3.to_str().unwrap(),
        "--digest",
        "--severity",
        "1",
        "--area",
        "330723001000",
        "--save",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(order["result_code"], 1, "{order}");
    assert_eq!(order["receipt_verified"], true, "{order}");
    assert_eq!(order["related"], order["ebdid"], "{order}");
    let ebm_id = order["ebmid"].as_str().unwrap().to_string();

    // The speaker fetched and played exactly the platform's MP3.
    eventually(
        Duration::from_secs(30),
        "the speaker to have the MP3",
        || {
            std::fs::read_dir(&out_dir)
                .unwrap()
                .flatten()
                .any(|f| std::fs::read(f.path()).ok().as_deref() == Some(mp3_bytes.as_slice()))
        },
    );
    // The platform is told: playing, then success, each signed and acknowledged.
    eventually(Duration::from_secs(30), "a success report", || {
        events(&sim_events).iter().any(|e| {
            e["ebd_type"] == "EBMStateResponse"
                && e["verified"] == true
                && e["body"]["BrdStateCode"] == "3"
                && e["xml"].as_str().is_some_and(|x| x.contains(&ebm_id))
        })
    });
    let admin = login(&server.url(""), "admin", ADMIN_PASSWORD);
    let rows = broadcasts(&server, &admin);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["level"], "red", "{rows:?}");
    // The broadcast keeps the platform's ids in its signed request.
    let id = rows[0]["id"].as_str().unwrap();
    let (_, _, detail) = blocking_request(
        "GET",
        &server.url(&format!("/api/v1/broadcasts/{id}")),
        &admin.headers(),
    )
    .unwrap();
    let detail: Value = serde_json::from_slice(&detail).unwrap();
    let request = &detail["transitions"][0];
    assert_eq!(request["action"], "request", "{detail}");
    assert_eq!(request["actor"], "system", "{detail}");
    assert_eq!(request["data"]["ebd_ebm_id"], ebm_id.as_str(), "{detail}");
    assert_eq!(request["data"]["ebd_ebdid"], order["ebdid"], "{detail}");

    // The same package again is a replay: refused, audited, nothing new plays.
    let replay = platform(&[
        "send-raw",
        "--node",
        &receive,
        "--tar",
        saved.to_str().unwrap(),
        "--node-cert",
        node_cert.to_str().unwrap(),
    ]);
    assert_eq!(replay["result_code"], 5, "{replay}");
    assert_eq!(replay["receipt_verified"], true, "{replay}");

    // A state request is answered in a new POST naming it.
    let asked = {
        let mut args = vec![
            "send-state-request".to_string(),
            "--ebmid".into(),
            ebm_id.clone(),
        ];
        args.extend(common(&[]));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        platform(&refs)
    };
    assert_eq!(asked["result_code"], 1, "{asked}");
    eventually(Duration::from_secs(20), "the state answer", || {
        events(&sim_events).iter().any(|e| {
            e["ebd_type"] == "EBMStateResponse"
                && e["related"] == asked["ebdid"]
                && e["verified"] == true
        })
    });
    // OMD requests: the zones' outputs as terminals, and the broadcast log.
    for omd in ["EBRDTInfo", "EBRDTState", "EBMBrdLog"] {
        let mut args = vec!["send-omd".to_string(), "--omd-type".into(), omd.into()];
        args.extend(common(&[]));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let asked = platform(&refs);
        assert_eq!(asked["result_code"], 1, "{asked}");
        eventually(Duration::from_secs(20), "the OMD answer", || {
            events(&sim_events).iter().any(|e| {
                e["ebd_type"] == omd && e["related"] == asked["ebdid"] && e["verified"] == true
            })
        });
    }
    let log = events(&sim_events);
    let brd_log = log
        .iter()
        .rev()
        .find(|e| e["ebd_type"] == "EBMBrdLog")
        .unwrap();
    assert!(
        brd_log["xml"].as_str().unwrap().contains(&ebm_id),
        "{brd_log}"
    );

    // An order for later, cancelled before it starts: the platform hears "cancelled".
    let later = send(&["--start", "+120", "--end", "+600", "--area", "330723001002"]);
    assert_eq!(later["result_code"], 1, "{later}");
    let later_id = later["ebmid"].as_str().unwrap().to_string();
    let cancel = send(&["--msg-type", "2", "--related-ebmid", &later_id]);
    assert_eq!(cancel["result_code"], 1, "{cancel}");
    eventually(Duration::from_secs(20), "a cancelled report", || {
        events(&sim_events).iter().any(|e| {
            e["ebd_type"] == "EBMStateResponse"
                && e["body"]["BrdStateCode"] == "5"
                && e["xml"].as_str().is_some_and(|x| x.contains(&later_id))
        })
    });
    let unknown = send(&[
        "--msg-type",
        "2",
        "--related-ebmid",
        "23307230000000101010101209901010001",
    ]);
    assert_eq!(unknown["result_code"], 5, "{unknown}");

    // Forged, unsigned and altered orders: ResultCode 4, nothing plays. (Bit 127 is the low bit of
    // byte 15, the `1` of `version="1.0"`: the document still parses, so only the signature fails.)
    for extra in [
        &["--key", "rogue"][..],
        &["--unsigned"],
        &["--flip-bit", "127"],
    ] {
        let r = send(extra);
        assert_eq!(r["result_code"], 4, "{extra:?}: {r}");
    }
    let rows = broadcasts(&server, &admin);
    assert_eq!(
        rows.len(),
        2,
        "the played one and the cancelled one: {rows:?}"
    );
    let (_, _, audit) = blocking_request(
        "GET",
        &server.url("/api/v1/audit?limit=200"),
        &admin.headers(),
    )
    .unwrap();
    let audit = String::from_utf8_lossy(&audit);
    assert!(audit.contains("ebd.replay_refused"), "{audit}");
    assert!(audit.contains("ebd.signature_refused"), "{audit}");
    let (_, _, metrics) = blocking_request("GET", &server.url("/metrics"), &[]).unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("township_ebd_packages_received_total{result=\"4\"} 3"),
        "{metrics}"
    );
}

/// A platform key for the hostile tests, self-signed so it is its own CA.
struct Platform {
    key: sm::NodeSmKey,
}

const PLATFORM_EBRID: &str = "43307230000000101010101";

impl Platform {
    fn ebdb(&self, ebdid: &str, ebd_type: &str, body: &str, time: &str) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><EBD xmlns:xs=\"http://www.w3.org/2001/XMLSchema\"><EBDVersion>1</EBDVersion><EBDID>{ebdid}</EBDID><EBDType>{ebd_type}</EBDType><SRC><EBRID>{PLATFORM_EBRID}</EBRID></SRC><EBDTime>{time}</EBDTime><{ebd_type}>{body}</{ebd_type}></EBD>"
        )
        .into_bytes()
    }

    fn signed(&self, ebdid: &str, ebdb: &[u8], counter: u32, extra: &[(&str, &[u8])]) -> Vec<u8> {
        let value = self.key.sign_package(ebdb, counter);
        let ebds = package::write_ebds(ebdid, &self.key.sn.to_string(), &value);
        let b = format!("EBDB_{ebdid}.xml");
        let s = format!("EBDS_EBDB_{ebdid}.xml");
        let mut members: Vec<(&str, &[u8])> = vec![(b.as_str(), ebdb)];
        members.extend_from_slice(extra);
        members.push((s.as_str(), &ebds));
        tar::write(&members, 0)
    }
}

fn ebm_body(ebm_id: &str, area: &str) -> String {
    format!(
        "<EBMVersion>1</EBMVersion><EBMID>{ebm_id}</EBMID><MsgBasicInfo><MsgType>1</MsgType><SenderName>县平台</SenderName><SenderCode>{PLATFORM_EBRID}</SenderCode><SendTime>2026-12-01 10:00:00</SendTime><EventType>11000</EventType><Severity>2</Severity><StartTime>2026-12-01 10:00:00</StartTime><EndTime>2099-12-01 10:00:00</EndTime></MsgBasicInfo><MsgContent><LanguageCode>zho</LanguageCode><MsgTitle>测试</MsgTitle><MsgDesc>测试广播</MsgDesc><AreaCode>{area}</AreaCode></MsgContent>"
    )
}

fn raw_header(name: &str, size_field: &[u8], kind: u8) -> Vec<u8> {
    raw_link_header(name, size_field, kind, "")
}

fn raw_link_header(name: &str, size_field: &[u8], kind: u8, link: &str) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[124..124 + size_field.len()].copy_from_slice(size_field);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h.to_vec()
}

#[test]
fn hostile_packages_get_the_code_they_earn_and_nothing_plays_or_lands_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let platform = Platform {
        key: sm::NodeSmKey::generate().unwrap(),
    };
    let dir = platform_node(tmp.path(), &platform);
    let before: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let server = Server::start(&dir, &[], &[]);
    let node_cert = dir.join("ebd/node.cert");
    let id = |n: u64| format!("10{PLATFORM_EBRID}{n:016}");
    let time = "2026-12-01 10:00:00";
    let mut counter = 1000u32;
    let mut next = || {
        counter += 1;
        counter
    };

    let mut cases: Vec<(&str, Vec<u8>, u8)> = Vec::new();
    cases.push(("not a tar", b"<EBD>hello</EBD>".to_vec(), 2));
    cases.push(("empty", Vec::new(), 2));
    let mut traversal = raw_header("../../evil.xml", b"00000000005", b'0');
    traversal.extend_from_slice(b"owned");
    traversal.resize(traversal.len() + 1024 + 507, 0);
    cases.push(("path traversal", traversal, 2));
    let mut link = raw_link_header("EBDB_x.xml", b"00000000000", b'2', "/etc/passwd");
    link.resize(2048, 0);
    cases.push(("symlink", link, 2));
    let mut huge = raw_header("EBDR_big.mp3", b"17777777777", b'0');
    huge.resize(4096, 0);
    cases.push(("2 GB declared member", huge, 2));
    let dtd_id = id(1);
    let dtd = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE EBD [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><EBD><EBDID>{dtd_id}</EBDID>&x;</EBD>"
    );
    cases.push((
        "XML with a DTD and an external entity",
        platform.signed(&dtd_id, dtd.as_bytes(), next(), &[]),
        2,
    ));
    cases.push((
        "no EBDB",
        tar::write(
            &[("EBDR_a.mp3", b"xx"), ("EBDS_EBDB_1.xml", b"<Signature/>")],
            0,
        ),
        3,
    ));
    let two = platform.ebdb(
        &id(2),
        "ConnectionCheck",
        "<RptTime>2026-12-01 10:00:00</RptTime>",
        time,
    );
    cases.push((
        "two EBDBs",
        tar::write(
            &[
                (&format!("EBDB_{}.xml", id(2)), &two),
                (&format!("EBDB_{}.xml", id(3)), &two),
            ],
            0,
        ),
        2,
    ));
    let wrong_type = platform.ebdb(&id(4), "Launch", "<x/>", time);
    cases.push((
        "wrong EBDType",
        platform.signed(&id(4), &wrong_type, next(), &[]),
        2,
    ));
    let bad_id = "10123";
    let malformed = platform.ebdb(bad_id, "EBM", &ebm_body("1", "330723001000"), time);
    cases.push((
        "malformed EBDID",
        platform.signed(bad_id, &malformed, next(), &[]),
        2,
    ));
    let bad_time = platform.ebdb(
        &id(5),
        "EBM",
        &ebm_body("23307230000000101010101202612010001", "330723001000"),
        "yesterday",
    );
    cases.push((
        "malformed EBDTime",
        platform.signed(&id(5), &bad_time, next(), &[]),
        2,
    ));
    let bad_area = platform.ebdb(
        &id(6),
        "EBM",
        &ebm_body("23307230000000101010101202612010002", "3307"),
        time,
    );
    cases.push((
        "malformed AreaCode",
        platform.signed(&id(6), &bad_area, next(), &[]),
        2,
    ));
    let aux = ebm_body("23307230000000101010101202612010003", "330723001000").replace(
        "</AreaCode>",
        "</AreaCode><Auxiliary><AuxiliaryType>2</AuxiliaryType><AuxiliaryDesc>EBDR_gone.mp3</AuxiliaryDesc><Size>10</Size></Auxiliary>",
    );
    let missing_mp3 = platform.ebdb(&id(7), "EBM", &aux, time);
    cases.push((
        "an Auxiliary not in the package",
        platform.signed(&id(7), &missing_mp3, next(), &[]),
        3,
    ));
    let good = platform.ebdb(
        &id(8),
        "EBM",
        &ebm_body("23307230000000101010101202612010004", "330723001000"),
        time,
    );
    let mut tampered = platform.signed(&id(8), &good, next(), &[]);
    let needle = "测试广播".as_bytes();
    let at = tampered.windows(3).position(|w| w == &needle[..3]).unwrap();
    tampered[at + 1] ^= 0x01;
    cases.push(("a changed byte in the EBDB", tampered, 4));
    let stranger = sm::NodeSmKey::generate().unwrap();
    let value = stranger.sign_package(&good, next());
    let forged = tar::write(
        &[
            (&format!("EBDB_{}.xml", id(8)), &good),
            (
                &format!("EBDS_EBDB_{}.xml", id(8)),
                &package::write_ebds(&id(8), "000000000000", &value),
            ),
        ],
        0,
    );
    cases.push(("signed by a stranger", forged, 4));
    let unsigned = tar::write(&[(&format!("EBDB_{}.xml", id(8)), &good)], 0);
    cases.push(("an unsigned order", unsigned, 4));
    // A real order for another county: accepted, but nothing of this node's is named.
    let elsewhere = platform.ebdb(
        &id(9),
        "EBM",
        &ebm_body("23307230000000101010101202612010005", "320582000000"),
        time,
    );
    cases.push((
        "an order for another county",
        platform.signed(&id(9), &elsewhere, next(), &[]),
        1,
    ));
    let stale_counter = platform.ebdb(
        &id(10),
        "EBM",
        &ebm_body("23307230000000101010101202612010006", "330723001000"),
        time,
    );
    cases.push((
        "a counter not above the last",
        platform.signed(&id(10), &stale_counter, 5, &[]),
        5,
    ));

    for (what, body, expected) in &cases {
        let (status, answer) = post_package(&server, body);
        assert_eq!(status, 200, "{what}");
        assert_eq!(receipt_code(&node_cert, &answer), *expected, "{what}");
    }
    // A body over the limit never reaches the parser.
    let (status, _) = post_package(&server, &vec![0u8; 33 * 1024 * 1024]);
    assert_eq!(status, 413);

    let admin = login(&server.url(""), "admin", ADMIN_PASSWORD);
    let rows = broadcasts(&server, &admin);
    assert!(rows.is_empty(), "nothing was ordered: {rows:?}");
    let after: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        before, after,
        "nothing was written beside the data directory"
    );
    assert!(
        !Path::new("/tmp/evil.xml").exists()
            || std::fs::read("/tmp/evil.xml").ok().as_deref() != Some(b"owned")
    );
}

#[test]
fn a_trusted_certificate_no_ca_issued_refuses_the_start_saying_which() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_tree_node(tmp.path(), "node", "330723001", "township", None);
    let ca = sm::NodeSmKey::generate().unwrap();
    let other = sm::NodeSmKey::generate().unwrap();
    let (ca_path, cert_path) = (tmp.path().join("ca.cert"), tmp.path().join("p.cert"));
    std::fs::write(&ca_path, ca.certificate()).unwrap();
    std::fs::write(&cert_path, other.certificate()).unwrap();
    std::fs::write(
        dir.join("township-node.toml"),
        format!(
            "[ebd]\nebrid = \"{NODE_EBRID}\"\nca_certs = [\"{}\"]\ntrusted_certs = [\"{}\"]\n",
            ca_path.display(),
            cert_path.display()
        ),
    )
    .unwrap();
    let out = crate::common::command(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not signed by any certificate in ca_certs"),
        "{err}"
    );
}

#[test]
fn a_receive_path_that_is_already_a_route_refuses_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_tree_node(tmp.path(), "node", "330723001", "township", None);
    let ca = sm::NodeSmKey::generate().unwrap();
    let ca_path = tmp.path().join("ca.cert");
    std::fs::write(&ca_path, ca.certificate()).unwrap();
    std::fs::write(
        dir.join("township-node.toml"),
        format!(
            "[ebd]\nebrid = \"{NODE_EBRID}\"\nreceive_path = \"/healthz\"\nca_certs = [\"{c}\"]\ntrusted_certs = [\"{c}\"]\n",
            c = ca_path.display()
        ),
    )
    .unwrap();
    let out = crate::common::command(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already a route of the node"), "{err}");
}

/// A node with `[ebd]` trusting `platform`'s self-signed certificate.
fn platform_node(parent: &Path, platform: &Platform) -> PathBuf {
    let dir = init_tree_node(parent, "node", "330723001", "township", None);
    let cert_path = parent.join("platform.cert");
    std::fs::write(&cert_path, platform.key.certificate()).unwrap();
    std::fs::write(
        dir.join("township-node.toml"),
        format!(
            "[ebd]\nebrid = \"{NODE_EBRID}\"\nca_certs = [\"{c}\"]\ntrusted_certs = [\"{c}\"]\n",
            c = cert_path.display()
        ),
    )
    .unwrap();
    dir
}

fn receipt_desc(body: &[u8]) -> String {
    let members = tar::read(body).expect("the receipt is a tar");
    let files = package::sort_members(members).expect("files");
    let text = String::from_utf8_lossy(files.ebdb).to_string();
    text.split("<ResultDesc>")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_order_that_cannot_be_stored_is_not_remembered_as_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let platform = Platform {
        key: sm::NodeSmKey::generate().unwrap(),
    };
    let dir = platform_node(tmp.path(), &platform);
    let node_cert = dir.join("ebd/node.cert");
    let id = |n: u64| format!("10{PLATFORM_EBRID}{n:016}");
    let time = "2026-12-01 10:00:00";
    let ebm_id = "23307230000000101010101202612010100";
    {
        let server = Server::start(&dir, &[], &[]);
        let order = platform.ebdb(&id(1), "EBM", &ebm_body(ebm_id, "330723001000"), time);
        let (_, answer) = post_package(&server, &platform.signed(&id(1), &order, 10, &[]));
        assert_eq!(receipt_code(&node_cert, &answer), 1);
    }
    // The order's broadcast is gone from under it (as if lost), so cancelling it fails in the
    // middle of the write job.
    {
        let db = rusqlite::Connection::open(dir.join("township.db")).unwrap();
        let changed = db
            .execute(
                "UPDATE ebd_orders SET broadcast_id = '00000000-0000-4000-8000-000000000000' WHERE ebm_id = ?1",
                [ebm_id],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let server = Server::start(&dir, &[], &[]);
    let cancel_body = format!(
        "<EBMVersion>1</EBMVersion><EBMID>23307230000000101010101202612010101</EBMID><RelatedInfo><EBMID>{ebm_id}</EBMID></RelatedInfo><MsgBasicInfo><MsgType>2</MsgType></MsgBasicInfo>"
    );
    let cancel = platform.ebdb(&id(2), "EBM", &cancel_body, time);
    let package = platform.signed(&id(2), &cancel, 11, &[]);
    let (_, first) = post_package(&server, &package);
    assert_eq!(receipt_code(&node_cert, &first), 5);
    assert!(
        !receipt_desc(&first).contains("重复"),
        "{}",
        receipt_desc(&first)
    );
    // Sent again, it is the same failure, not a replay: the failed job left no trace.
    let (_, again) = post_package(&server, &package);
    assert_eq!(receipt_code(&node_cert, &again), 5);
    assert!(
        !receipt_desc(&again).contains("重复"),
        "{}",
        receipt_desc(&again)
    );
    drop(server);
    let db = rusqlite::Connection::open(dir.join("township.db")).unwrap();
    let seen: i64 = db
        .query_row(
            "SELECT count(*) FROM ebd_seen WHERE ebdid = ?1",
            [id(2)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seen, 0);
}

#[test]
fn the_same_order_posted_at_once_from_many_connections_is_taken_once() {
    let tmp = tempfile::tempdir().unwrap();
    let platform = Platform {
        key: sm::NodeSmKey::generate().unwrap(),
    };
    let dir = platform_node(tmp.path(), &platform);
    let node_cert = dir.join("ebd/node.cert");
    let server = Server::start(&dir, &[], &[]);
    let ebdid = format!("10{PLATFORM_EBRID}{:016}", 7);
    let order = platform.ebdb(
        &ebdid,
        "EBM",
        &ebm_body("23307230000000101010101202612010200", "330723001000"),
        "2026-12-01 10:00:00",
    );
    let package = platform.signed(&ebdid, &order, 20, &[]);
    // 16 copies of the signed package and 16 connections of garbage, all at once.
    let url = server.url("/ebd/receive");
    let codes: Vec<u8> = std::thread::scope(|s| {
        let copies: Vec<_> = (0..16)
            .map(|_| s.spawn(|| post_to(&url, &package)))
            .collect();
        let garbage: Vec<_> = (0..16)
            .map(|i| {
                let url = &url;
                s.spawn(move || post_to(url, &vec![i as u8; 4096]))
            })
            .collect();
        for g in garbage {
            let (status, answer) = g.join().unwrap();
            assert_eq!(status, 200);
            assert_eq!(receipt_code(&node_cert, &answer), 2);
        }
        copies
            .into_iter()
            .map(|c| {
                let (status, answer) = c.join().unwrap();
                assert_eq!(status, 200);
                receipt_code(&node_cert, &answer)
            })
            .collect()
    });
    assert_eq!(codes.iter().filter(|c| **c == 1).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 5).count(), 15, "{codes:?}");
    let admin = login(&server.url(""), "admin", ADMIN_PASSWORD);
    assert_eq!(broadcasts(&server, &admin).len(), 1);
}
