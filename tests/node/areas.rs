//! The area directory and names instead of codes: `[[areas]]` written as records at start, naming an
//! area through the API, `area_name` and people's names on incidents, CSV with names and Beijing
//! time, and area records forged from below quarantined and never shown.

use crate::common::harness::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use township_node::auth::roles::Role;
use township_node::config::{AreaConfig, Config};
use township_sync::{AreaCode, Author, Person};

fn named(code: &str, name: &str) -> AreaConfig {
    AreaConfig {
        code: code.into(),
        name: name.into(),
        polygon: None,
        circle: None,
    }
}

async fn harness() -> Harness {
    Harness::with_config(Config {
        areas: vec![
            named("330723", "武义县"),
            named("330723001", "熟溪街道"),
            named("330723001001", "王宅村"),
        ],
        ..Config::default()
    })
    .await
}

fn entry<'a>(list: &'a Value, code: &str) -> Option<&'a Value> {
    list["areas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["code"] == code)
}

#[tokio::test]
async fn the_directory_names_areas_and_every_incident_carries_names() {
    let h = harness().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let admin = h.user("it.zhou", Role::CountyIt, "330723001", None).await;

    // A grid worker sees her village's name and those above it, with the parent codes.
    let list = h
        .act(&grid, "GET", "/api/v1/areas", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        entry(&list, "330723001001"),
        Some(&json!({"code": "330723001001", "name": "王宅村", "parent": "330723001"}))
    );
    assert_eq!(entry(&list, "330723").unwrap()["parent"], Value::Null);
    // The township's configured names were written as records (so they flow down); the county's
    // own name is above this township node, which may not name it.
    let records: i64 = h
        .state()
        .store
        .read(|conn| {
            conn.query_row(
                "SELECT count(*) FROM area_names WHERE quarantine IS NULL",
                [],
                |r| r.get(0),
            )
            .map_err(township_node::store::StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(records, 2);

    // County IT names a second village; a grid worker may not; a bad name says which rule.
    let v = h
        .act(
            &admin,
            "PUT",
            "/api/v1/areas/330723001002",
            Some(json!({"name": "上茭道村"})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["name"], "上茭道村");
    let v = h
        .act(
            &grid,
            "PUT",
            "/api/v1/areas/330723001001",
            Some(json!({"name": "县政府"})),
        )
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "role_forbidden");
    let v = h
        .act(
            &admin,
            "PUT",
            "/api/v1/areas/330723001003",
            Some(json!({"name": ""})),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "text_length");
    let v = h
        .act(
            &admin,
            "PUT",
            "/api/v1/areas/330724001",
            Some(json!({"name": "外县"})),
        )
        .await
        .expect(StatusCode::FORBIDDEN);
    assert!(v["detail"].as_str().unwrap().contains("330724001"), "{v}");

    // The incident reads with names: its area, its reporter, and everyone in its timeline.
    let id = h
        .act(
            &grid,
            "POST",
            "/api/v1/incidents",
            Some(report("路灯损坏", "安全隐患")),
        )
        .await
        .expect(StatusCode::CREATED)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = h
        .act(&grid, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["area"], "330723001001");
    assert_eq!(v["area_name"], "王宅村");
    // An account made without a display name is shown by its username.
    assert_eq!(v["reporter_name"], "grid.wang", "{v}");
    let list = h
        .act(&grid, "GET", "/api/v1/incidents", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(list["incidents"][0]["area_name"], "王宅村");
}

#[tokio::test]
async fn csv_carries_names_beside_codes_and_beijing_time() {
    let h = harness().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let staff = h
        .user("staff.li", Role::TownshipStaff, "330723001", None)
        .await;
    let id = h
        .act(
            &grid,
            "POST",
            "/api/v1/incidents",
            Some(report("路灯损坏", "安全隐患")),
        )
        .await
        .expect(StatusCode::CREATED)["id"]
        .as_str()
        .unwrap()
        .to_string();
    for step in [
        json!({"action": "accept"}),
        json!({"action": "dispatch", "department": "water", "assist_departments": ["housing"]}),
    ] {
        h.act(
            &staff,
            "POST",
            &format!("/api/v1/incidents/{id}/transitions"),
            Some(step),
        )
        .await
        .expect(StatusCode::OK);
    }
    let (status, _, csv) = h
        .send_raw(
            &staff,
            "GET",
            "/api/v1/incidents/export.csv",
            "text/plain",
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(csv[3..].to_vec()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(
        lines[0].contains("区划 area_name") && lines[0].contains("状态 state_name"),
        "{}",
        lines[0]
    );
    let row = lines[1];
    for want in [
        "330723001001,王宅村",
        "dispatched,已派遣",
        "water,水利",
        "住房建设",
    ] {
        assert!(row.contains(want), "{want} missing from {row}");
    }
    // The harness clock's start in Beijing time, with its offset; never a bare UTC `Z`.
    let beijing = township_node::clock::rfc3339_china(START_MS);
    assert!(row.contains(&beijing), "{beijing} missing from {row}");
    assert!(beijing.ends_with("+08:00"));
    // No time in the row is written in UTC with a bare `Z`.
    let utc = row.split(',').any(|cell| {
        let b = cell.as_bytes();
        b.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z'
    });
    assert!(!utc, "{row}");
}

#[tokio::test]
async fn area_names_forged_below_are_quarantined_and_never_shown() {
    let h = harness().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let code = |s: &str| -> AreaCode { s.parse().unwrap() };
    let admin_at = |area: &str| {
        Author::person(
            code(area),
            Person {
                name: "admin".into(),
                role: "admin".into(),
                area: code(area),
            },
        )
    };
    let derived = |s: &str| township_node::areas::record_id(&code(s));
    // What a stolen village hub could send, reaching the projection as a merge would: the village
    // node naming a village on its own, a village-level admin naming one, and a second record for
    // a village under an id not derived from its code (by an admin who could name it).
    let forged: Vec<(Author, uuid::Uuid, AreaCode)> = vec![
        (
            Author::node(code("330723001008")),
            derived("330723001008"),
            code("330723001008"),
        ),
        (
            admin_at("330723001009"),
            derived("330723001009"),
            code("330723001009"),
        ),
        (
            admin_at("330723001"),
            uuid::Uuid::now_v7(),
            code("330723001001"),
        ),
    ];
    for (by, id, scope) in forged {
        let docs = h.state().docs.clone();
        h.state()
            .store
            .write(move |conn| {
                docs.create_with_id(conn, &by, id, "area", &scope, |d| {
                    use automerge::transaction::Transactable;
                    d.put(automerge::ROOT, "name", "县政府")?;
                    Ok(())
                })?;
                Ok::<_, township_node::store::StoreError>(())
            })
            .await
            .unwrap();
    }
    let list = h
        .act(&grid, "GET", "/api/v1/areas", None)
        .await
        .expect(StatusCode::OK);
    assert!(
        list["areas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["name"] != "县政府"),
        "{list}"
    );
    assert_eq!(entry(&list, "330723001001").unwrap()["name"], "王宅村");
    let audit = h.audit_actions().await;
    assert_eq!(
        audit.iter().filter(|a| *a == "record.quarantine").count(),
        3,
        "{audit:?}"
    );
}

#[tokio::test]
async fn the_map_serves_its_own_tiles_and_outlines_and_allows_only_its_tile_origin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("township.mbtiles");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE metadata (name TEXT, value TEXT);
         CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);
         INSERT INTO metadata VALUES ('format', 'png');",
    )
    .unwrap();
    let png = png(4, 4);
    // z=2, x=3, y=1 in XYZ is TMS row 2.
    conn.execute("INSERT INTO tiles VALUES (2, 3, 2, ?1)", [png.clone()])
        .unwrap();
    drop(conn);
    let mut config = Config::default();
    config.map.mbtiles = Some(path);
    config.map.center = Some([28.89, 119.81]);
    config.areas = vec![AreaConfig {
        polygon: Some("28.90,119.80 28.91,119.82 28.89,119.83 28.90,119.80".into()),
        ..named("330723001001", "王宅村")
    }];
    let h = Harness::with_config(config).await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let v = h
        .act(&grid, "GET", "/api/v1/map", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["tiles"]["url"], "/api/v1/map/tiles/{z}/{x}/{y}");
    assert_eq!(v["center"], json!([28.89, 119.81]));
    assert_eq!(v["outlines"]["features"][0]["properties"]["name"], "王宅村");
    let (status, headers, body) = h
        .send_raw(
            &grid,
            "GET",
            "/api/v1/map/tiles/2/3/1.png",
            "text/plain",
            vec![],
        )
        .await;
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (StatusCode::OK, "image/png")
    );
    assert_eq!(body, png);
    for missing in [
        "/api/v1/map/tiles/2/3/0",
        "/api/v1/map/tiles/2/9/9",
        "/api/v1/map/tiles/x/1/1",
        "/api/v1/map/tiles/40/1/1",
    ] {
        let (status, _, _) = h
            .send_raw(&grid, "GET", missing, "text/plain", vec![])
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    }
    // Not signed in: no tiles.
    let (status, _, _) = h.call("GET", "/api/v1/map/tiles/2/3/1", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, headers, _) = h.call("GET", "/api/v1/map", &[], None).await;
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("img-src 'self' data: blob:;"), "{csp}");

    // A tile server elsewhere: its origin, and only that, may serve images to the UI.
    let mut config = Config::default();
    config.map.tile_url = Some("https://tiles.example.cn/{z}/{x}/{y}.png".into());
    let h = Harness::with_config(config).await;
    let (_, headers, _) = h.call("GET", "/api/v1/map", &[], None).await;
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("img-src 'self' data: blob: https://tiles.example.cn;"),
        "{csp}"
    );
}
