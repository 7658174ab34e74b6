//! CAP 1.2 out: every message of a warning's life (Alert, Update, Cancel with references) validates
//! against the OASIS schema with xmllint and verifies with xmlsec1 against the node's published key;
//! a changed byte fails verification; the Atom feed lists the current messages.

use std::path::Path;
use std::process::Command;

use crate::common::harness::{Harness, START_MS, Session};
use axum::http::StatusCode;
use serde_json::json;
use township_node::auth::roles::Role;

fn schema() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/cap/CAP-v1.2.xsd")
}

#[test]
fn the_kept_schema_is_the_shared_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kept = std::fs::read(schema()).expect("tests/conformance/cap/CAP-v1.2.xsd");
    assert!(String::from_utf8_lossy(&kept).contains("urn:oasis:names:tc:emergency:cap:1.2"));
    // Wherever the shared conformance set sits beside the clone, the two must not drift apart.
    if let Ok(shared) = std::fs::read(root.join("../shared/conformance/cap/CAP-v1.2.xsd")) {
        assert_eq!(
            kept, shared,
            "tests/conformance/cap/CAP-v1.2.xsd differs from the shared schema"
        );
    }
}

fn xmllint_valid(file: &Path) -> Result<(), String> {
    let out = Command::new("xmllint")
        .args(["--noout", "--nonet", "--schema"])
        .arg(schema())
        .arg(file)
        .output()
        .expect("xmllint (Debian's libxml2-utils; tests/run.sh installs it)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn xmlsec_verifies(file: &Path, key: &Path) -> bool {
    Command::new("xmlsec1")
        .args(["--verify", "--pubkey-pem"])
        .arg(key)
        .arg(file)
        .output()
        .expect("xmlsec1 (Debian's xmlsec1; tests/run.sh installs it)")
        .status
        .success()
}

/// A public GET through the router, as text (CAP and Atom are not JSON).
async fn get_text(h: &Harness, uri: &str) -> (StatusCode, String, String) {
    let request = axum::http::Request::builder()
        .uri(uri)
        .header("host", "node.test")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(h.router(), request)
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn act(h: &Harness, s: &Session, id: &str, body: serde_json::Value) {
    h.act(
        s,
        "POST",
        &format!("/api/v1/warnings/{id}/transitions"),
        Some(body),
    )
    .await
    .expect(StatusCode::OK);
}

#[tokio::test]
async fn every_message_validates_and_verifies_and_a_changed_byte_does_not() {
    let h = Harness::new().await;
    let staff = h
        .user("li.ming", Role::TownshipStaff, "330723001", None)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let (status, _, pem) = get_text(&h, "/api/v1/cap/key.pem").await;
    assert_eq!(status, StatusCode::OK);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let key = tmp.path().join("key.pem");
    std::fs::write(&key, &pem).unwrap();

    let w = h
        .act(&staff, "POST", "/api/v1/warnings", Some(json!({"area": "330723001", "event": "flood", "level": "orange",
            "headline": "熟溪水位橙色预警 <&> \"引号\"", "description": "水位4.1米，超过警戒水位。", "instruction": "沿河人员立即转移。",
            "areas": ["330723001001", "330723001002"], "onset": START_MS.to_string(), "expires": (START_MS + 3_600_000).to_string()})))
        .await
        .expect(StatusCode::CREATED);
    let id = w["id"].as_str().unwrap().to_string();
    let mut identifiers = Vec::new();
    for (step, change) in [
        ("alert", None),
        (
            "update",
            Some(json!({"action": "update", "level": "red", "instruction": "全部撤离。"})),
        ),
        ("cancel", Some(json!({"action": "cancel"}))),
    ] {
        if let Some(change) = change {
            h.clock.advance_ms(60_000);
            act(&h, &staff, &id, change).await;
        }
        let (status, content_type, doc) = get_text(&h, &format!("/api/v1/warnings/{id}/cap")).await;
        assert_eq!(status, StatusCode::OK, "{step}: {doc}");
        assert!(
            content_type.starts_with("application/cap+xml"),
            "{content_type}"
        );
        let file = tmp.path().join(format!("{step}.xml"));
        std::fs::write(&file, &doc).unwrap();
        xmllint_valid(&file).unwrap_or_else(|e| panic!("{step} is not valid CAP 1.2: {e}\n{doc}"));
        assert!(
            xmlsec_verifies(&file, &key),
            "{step}: signature does not verify\n{doc}"
        );
        let identifier = doc
            .split("<identifier>")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_string();
        // Every earlier message is referenced, by sender, identifier and time.
        for earlier in &identifiers {
            assert!(
                doc.contains(&format!(",{earlier},")),
                "{step} lacks a reference to {earlier}"
            );
        }
        identifiers.push(identifier);
        let msg_type = doc
            .split("<msgType>")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap();
        assert_eq!(msg_type.to_lowercase(), step);
        assert!(doc.contains("+08:00</sent>"), "{doc}");
        assert!(doc.contains("<valueName>GB/T 2260</valueName><value>330723001002</value>"));
        // One changed byte in the signed text: verification fails.
        let tampered = doc.replacen("熟溪水位", "熟溪水住", 1);
        let bad = tmp.path().join(format!("{step}-tampered.xml"));
        std::fs::write(&bad, tampered).unwrap();
        assert!(
            !xmlsec_verifies(&bad, &key),
            "{step}: a tampered message verified"
        );
    }
    assert_eq!(identifiers.len(), 3);
    assert!(
        identifiers
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            == 3
    );
    // The severity follows the level (red at the update), and the message is stable on re-reading.
    let (_, _, again) = get_text(&h, &format!("/api/v1/warnings/{id}/cap")).await;
    assert!(again.contains(&identifiers[2]));

    // The feed lists it with a link to its latest message.
    let (status, content_type, feed) = get_text(&h, "/api/v1/cap/alerts.atom").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/atom+xml"));
    assert!(
        feed.contains(&format!("/api/v1/warnings/{id}/cap")),
        "{feed}"
    );
    let file = tmp.path().join("feed.xml");
    std::fs::write(&file, &feed).unwrap();
    let wf = Command::new("xmllint")
        .args(["--noout", "--nonet"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(wf.success(), "the feed is not well-formed XML: {feed}");

    // A warning that was only raised (not issued) has no CAP message.
    let (status, _, _) = get_text(
        &h,
        &format!("/api/v1/warnings/{}/cap", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn inbound(identifier: &str, msg_type: &str, references: &str, colour: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>{identifier}</identifier><sender>zj-weather@cma.gov.cn</sender>
<sent>2026-07-01T08:00:00+08:00</sent><status>Actual</status><msgType>{msgType}</msgType><scope>Public</scope>{references}
<info><language>zh-CN</language><category>Met</category><event>暴雨</event><urgency>Expected</urgency><severity>Severe</severity>
<certainty>Likely</certainty><headline>武义县暴雨{colour}预警</headline><description>未来3小时降雨量将达50毫米以上。</description>
<parameter><valueName>warningColour</valueName><value>{colour}</value></parameter>
<area><areaDesc>武义县</areaDesc><geocode><valueName>GB/T 2260</valueName><value>330723000000</value></geocode></area></info></alert>"#,
        msgType = msg_type
    )
}

async fn post_xml(h: &Harness, s: &Session, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
    let (status, _, bytes) = h
        .send_raw(s, "POST", "/api/v1/cap", "application/cap+xml", body)
        .await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

async fn warning_count(h: &Harness) -> i64 {
    h.state()
        .store
        .read(|c| {
            Ok::<_, township_node::store::StoreError>(c.query_row(
                "SELECT count(*) FROM warnings",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn alerts_from_outside_become_warnings_updates_and_cancels_apply_and_hostile_xml_stores_nothing()
 {
    let h = Harness::new().await;
    let it = h.user("it.xu", Role::CountyIt, "330723001", None).await;
    let grid = h
        .user("wang.fang", Role::GridWorker, "330723001001", None)
        .await;
    // A county-wide alert lands on this township as a warning for the township.
    let (status, v) = post_xml(&h, &it, inbound("zj-1", "Alert", "", "橙色").into_bytes()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["warning"].as_str().unwrap().to_string();
    let w = h
        .act(&grid, "GET", &format!("/api/v1/warnings/{id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (w["level"].as_str(), w["state"].as_str()),
        (Some("orange"), Some("issued")),
        "{w}"
    );
    assert_eq!(w["source"], json!({"cap": "zj-1"}));
    assert_eq!(w["areas"], json!(["330723001"]));
    // The same alert again changes nothing.
    let (status, v) = post_xml(&h, &it, inbound("zj-1", "Alert", "", "橙色").into_bytes()).await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    // An Update raises it; a Cancel ends it.
    let refs = "<references>zj-weather@cma.gov.cn,zj-1,2026-07-01T08:00:00+08:00</references>";
    let (status, v) = post_xml(
        &h,
        &it,
        inbound("zj-2", "Update", refs, "红色").into_bytes(),
    )
    .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (StatusCode::OK, Some("updated")),
        "{v}"
    );
    let w = h
        .act(&grid, "GET", &format!("/api/v1/warnings/{id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(w["level"], "red");
    let (status, v) = post_xml(
        &h,
        &it,
        inbound("zj-3", "Cancel", refs, "红色").into_bytes(),
    )
    .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (StatusCode::OK, Some("cancelled")),
        "{v}"
    );
    // An Update for an alert never received is a conflict.
    let stray = "<references>zj-weather@cma.gov.cn,nope,2026-07-01T08:00:00+08:00</references>";
    let (status, _) = post_xml(
        &h,
        &it,
        inbound("zj-4", "Update", stray, "红色").into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // A grid worker may not post alerts.
    let (status, _) = post_xml(&h, &grid, inbound("zj-5", "Alert", "", "红色").into_bytes()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let before = warning_count(&h).await;
    let laughs = format!(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaa">{}]><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&e9;</identifier></alert>"#,
        (1..10)
            .map(|i| format!(
                "<!ENTITY e{i} \"{}\">",
                format!(
                    "&{};",
                    if i == 1 {
                        "a".to_string()
                    } else {
                        format!("e{}", i - 1)
                    }
                )
                .repeat(10)
            ))
            .collect::<String>()
    );
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>"#;
    for (what, body, want) in [
        (
            "billion laughs",
            laughs.into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "external entity",
            xxe.as_bytes().to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not XML",
            b"{\"alert\": true}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong namespace",
            inbound("zj-6", "Alert", "", "红色")
                .replace("cap:1.2", "cap:1.1")
                .into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        ("50 MB", vec![b' '; 50 << 20], StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let (status, v) = post_xml(&h, &it, body).await;
        assert_eq!(status, want, "{what}: {v}");
    }
    assert_eq!(warning_count(&h).await, before, "nothing stored");
}

#[tokio::test]
async fn a_flood_of_unauthenticated_requests_gets_the_same_signed_bytes_and_unknown_ids_cost_nothing()
 {
    let h = Harness::new().await;
    let staff = h
        .user("li.ming", Role::TownshipStaff, "330723001", None)
        .await;
    let w = h
        .act(
            &staff,
            "POST",
            "/api/v1/warnings",
            Some(
                json!({"area": "330723001", "event": "flood", "level": "red",
            "headline": "熟溪水位红色预警"}),
            ),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = w["id"].as_str().unwrap().to_string();
    let cap = format!("/api/v1/warnings/{id}/cap");
    let answers = futures_util::future::join_all((0..200).map(|i| {
        let uri = match i % 3 {
            0 => cap.clone(),
            1 => "/api/v1/cap/alerts.atom".to_string(),
            _ => format!("/api/v1/warnings/{}/cap", uuid::Uuid::now_v7()),
        };
        let h = &h;
        async move { (i % 3, get_text(h, &uri).await) }
    }))
    .await;
    let mut bodies: [std::collections::HashSet<String>; 2] = Default::default();
    for (kind, (status, _, body)) in answers {
        if kind == 2 {
            assert_eq!(status, StatusCode::NOT_FOUND);
        } else {
            assert_eq!(status, StatusCode::OK);
            bodies[kind].insert(body);
        }
    }
    // One message, one feed: served from the copy, byte for byte (an ECDSA signature made afresh
    // for each request would differ every time).
    assert_eq!(bodies[0].len(), 1);
    assert_eq!(bodies[1].len(), 1);
    // A change is served at once: the cancel is the new latest message.
    h.act(
        &staff,
        "POST",
        &format!("/api/v1/warnings/{id}/transitions"),
        Some(json!({"action": "cancel"})),
    )
    .await
    .expect(StatusCode::OK);
    let (_, _, after) = get_text(&h, &cap).await;
    assert!(after.contains("<msgType>Cancel</msgType>"), "{after}");
}

#[tokio::test]
async fn the_same_alert_posted_at_once_from_many_places_makes_one_warning() {
    let h = Harness::new().await;
    let it = h.user("it.xu", Role::CountyIt, "330723001", None).await;
    let before = warning_count(&h).await;
    let answers = futures_util::future::join_all(
        (0..16).map(|_| post_xml(&h, &it, inbound("zj-par", "Alert", "", "橙色").into_bytes())),
    )
    .await;
    let created = answers
        .iter()
        .filter(|(s, v)| *s == StatusCode::CREATED && v["outcome"] == "created")
        .count();
    let duplicates = answers
        .iter()
        .filter(|(s, v)| *s == StatusCode::OK && v["outcome"] == "duplicate")
        .count();
    assert_eq!((created, duplicates), (1, 15), "{answers:?}");
    let ids: std::collections::HashSet<&str> = answers
        .iter()
        .map(|(_, v)| v["warning"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the one warning");
    assert_eq!(warning_count(&h).await, before + 1);
}

#[tokio::test]
async fn english_texts_and_area_shapes_go_into_valid_signed_cap_and_come_back_in() {
    let mut config = township_node::config::Config::default();
    config.areas = vec![
        township_node::config::AreaConfig {
            code: "330723001001".into(),
            name: "王宅村".into(),
            polygon: Some("28.90,119.80 28.91,119.82 28.89,119.83 28.90,119.80".into()),
            circle: None,
        },
        township_node::config::AreaConfig {
            code: "330723001002".into(),
            name: "下杨村".into(),
            polygon: None,
            circle: Some("28.88,119.79 2.5".into()),
        },
    ];
    let h = Harness::with_config(config).await;
    let staff = h
        .user("li.ming", Role::TownshipStaff, "330723001", None)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, pem) = get_text(&h, "/api/v1/cap/key.pem").await;
    let key = tmp.path().join("key.pem");
    std::fs::write(&key, &pem).unwrap();
    let w = h
        .act(&staff, "POST", "/api/v1/warnings", Some(json!({"area": "330723001", "event": "flood", "level": "red",
            "headline": "熟溪洪水红色预警", "description": "水位超保证。", "instruction": "立即转移。",
            "headline_en": "Red (I) flood warning: Shuxi river", "description_en": "The river is above its guaranteed level.",
            "instruction_en": "Move to high ground now.",
            "areas": ["330723001001", "330723001002", "330723001003"]})))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(w["headline_en"], "Red (I) flood warning: Shuxi river");
    let id = w["id"].as_str().unwrap();
    let (status, _, doc) = get_text(&h, &format!("/api/v1/warnings/{id}/cap")).await;
    assert_eq!(status, StatusCode::OK);
    let file = tmp.path().join("en.xml");
    std::fs::write(&file, &doc).unwrap();
    xmllint_valid(&file).unwrap_or_else(|e| panic!("not valid CAP 1.2: {e}\n{doc}"));
    assert!(xmlsec_verifies(&file, &key), "{doc}");
    for needle in [
        "<language>zh-CN</language>",
        "<language>en-US</language>",
        "<event>Flood</event>",
        "<headline>Red (I) flood warning: Shuxi river</headline>",
        "<instruction>Move to high ground now.</instruction>",
        "<areaDesc>王宅村</areaDesc><polygon>28.90,119.80 28.91,119.82 28.89,119.83 28.90,119.80</polygon>",
        "<areaDesc>下杨村</areaDesc><circle>28.88,119.79 2.5</circle>",
        "<areaDesc>行政区划 330723001003</areaDesc><geocode>",
        "<areaDesc>王宅村 (330723001001)</areaDesc>",
    ] {
        assert!(doc.contains(needle), "{needle} missing:\n{doc}");
    }
    assert_eq!(doc.matches("<info>").count(), 2);
    assert_eq!(
        doc.matches("<area>").count(),
        6,
        "one block per area in each language"
    );

    // An alert with an English info beside the Chinese one brings its English texts in.
    let it = h.user("it.xu", Role::CountyIt, "330723001", None).await;
    let with_en = inbound("zj-en-1", "Alert", "", "红色").replace(
        "</info>",
        "</info><info><language>en-US</language><category>Met</category><event>Rainstorm</event>\
         <urgency>Immediate</urgency><severity>Extreme</severity><certainty>Likely</certainty>\
         <headline>Wuyi rainstorm red warning</headline><instruction>Stay indoors.</instruction></info>",
    );
    let (status, v) = post_xml(&h, &it, with_en.into_bytes()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let made = h
        .act(
            &it,
            "GET",
            &format!("/api/v1/warnings/{}", v["warning"].as_str().unwrap()),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(made["headline_en"], "Wuyi rainstorm red warning");
    assert_eq!(made["instruction_en"], "Stay indoors.");
    assert!(made["headline"].as_str().unwrap().contains("暴雨"));

    // Bad English input is refused by name, and nothing is stored.
    let before = warning_count(&h).await;
    let answer = h
        .act(
            &staff,
            "POST",
            "/api/v1/warnings",
            Some(
                json!({"area": "330723001", "event": "flood", "level": "red",
            "headline": "x", "headline_en": "y".repeat(201)}),
            ),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.body.to_string().contains("headline_en"),
        "{}",
        answer.body
    );
    assert_eq!(warning_count(&h).await, before);
}
