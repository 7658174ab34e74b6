//! Rules in process: who may write and read them, validation that stores nothing, a rule record
//! forged from below (quarantined, never evaluated), live evaluation of committed readings into the
//! in-process event channel, and the backtest over stored readings.

use std::time::Duration;

use crate::common::harness::{Harness, START_MS, Session};
use axum::http::StatusCode;
use serde_json::{Value, json};
use township_drivers::{Quality, Reading};
use township_node::auth::roles::Role;
use township_node::config::Config;
use township_node::telemetry::config::DeviceConfig;
use township_sync::{AreaCode, Author, Person};

const MINUTE: i64 = 60_000;

fn gauge() -> DeviceConfig {
    toml::from_str(
        "id = \"wl-01\"\nname = \"熟溪水位站\"\narea = \"330723001001\"\ndriver = \"hj212\"\nmn = \"MNWL01\"\n\
         points = [{ metric = \"water_level\", unit = \"m\", min = 0.0, max = 20.0 }]",
    )
    .unwrap()
}

fn rule(area: &str) -> Value {
    json!({"name": "熟溪水位", "area": area, "device": "wl-01", "metric": "water_level",
        "kind": "threshold", "op": ">=", "levels": {"blue": 3.0, "yellow": 3.5, "orange": 4.0, "red": 4.5},
        "hysteresis": 0.1, "event": "flood", "auto_issue": ["red", "orange"], "enabled": true})
}

struct People {
    staff: Session,
    grid: Session,
    handler: Session,
    other_village: Session,
    village_admin: Session,
    admin: Session,
}

async fn harness() -> (Harness, People) {
    let h = Harness::with_config(Config {
        devices: vec![gauge()],
        ..Config::default()
    })
    .await;
    township_node::app::start_telemetry(h.state());
    township_node::app::start_rules(h.state());
    let people = People {
        staff: h
            .user("li.ming", Role::TownshipStaff, "330723001", None)
            .await,
        grid: h
            .user("wang.fang", Role::GridWorker, "330723001001", None)
            .await,
        handler: h
            .user("shui.li", Role::DeptHandler, "330723001", Some("water"))
            .await,
        other_village: h
            .user("zhao.qiang", Role::GridWorker, "330723001002", None)
            .await,
        village_admin: h.user("cun.admin", Role::Admin, "330723001002", None).await,
        admin: h.user("it.admin", Role::Admin, "330723001", None).await,
    };
    (h, people)
}

async fn rule_count(h: &Harness) -> i64 {
    h.state()
        .store
        .read(|c| {
            Ok::<_, township_node::store::StoreError>(c.query_row(
                "SELECT count(*) FROM rules",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn staff_write_rules_in_their_area_and_everyone_there_reads_them() {
    let (h, p) = harness().await;
    let created = h
        .act(&p.staff, "POST", "/api/v1/rules", Some(rule("330723001")))
        .await
        .expect(StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["state"], "none");
    assert_eq!(created["levels"]["red"], 4.5);
    // A grid worker in a village of the township reads it; so does a department handler.
    for s in [&p.grid, &p.handler] {
        let list = h
            .act(s, "GET", "/api/v1/rules", None)
            .await
            .expect(StatusCode::OK);
        assert!(
            list["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == id.as_str()),
            "{list}"
        );
        h.act(s, "GET", &format!("/api/v1/rules/{id}"), None)
            .await
            .expect(StatusCode::OK);
    }
    // A rule for one village is not shown in the next village; a village-level admin writes no rules.
    let village_rule = h
        .act(
            &p.staff,
            "POST",
            "/api/v1/rules",
            Some(rule("330723001001")),
        )
        .await
        .expect(StatusCode::CREATED);
    let village_id = village_rule["id"].as_str().unwrap().to_string();
    let list = h
        .act(&p.other_village, "GET", "/api/v1/rules", None)
        .await
        .expect(StatusCode::OK);
    let ids: Vec<&str> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()], "{list}");
    h.act(
        &p.other_village,
        "GET",
        &format!("/api/v1/rules/{village_id}"),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    h.act(
        &p.village_admin,
        "PUT",
        &format!("/api/v1/rules/{id}"),
        Some(rule("330723001")),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    h.act(
        &p.village_admin,
        "POST",
        "/api/v1/rules",
        Some(rule("330723001002")),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    // Grid workers and handlers read but never write.
    h.act(&p.grid, "POST", "/api/v1/rules", Some(rule("330723001001")))
        .await
        .expect(StatusCode::FORBIDDEN);
    h.act(&p.handler, "DELETE", &format!("/api/v1/rules/{id}"), None)
        .await
        .expect(StatusCode::FORBIDDEN);
    // Bad input names the field and stores nothing.
    let before = rule_count(&h).await;
    let mut bad = rule("330723001");
    bad["levels"] = json!({"blue": 5.0, "red": 4.0});
    let problem = h
        .act(&p.staff, "POST", "/api/v1/rules", Some(bad))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(problem.to_string().contains("levels"), "{problem}");
    let mut unknown = rule("330723001");
    unknown["colour"] = json!("red");
    h.act(&p.staff, "POST", "/api/v1/rules", Some(unknown))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(rule_count(&h).await, before);
    // Replace, then delete; both are audited.
    let mut changed = rule("330723001");
    changed["levels"]["red"] = json!(4.8);
    let replaced = h
        .act(
            &p.staff,
            "PUT",
            &format!("/api/v1/rules/{id}"),
            Some(changed),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(replaced["levels"]["red"], 4.8);
    let mut moved = rule("330723001001");
    moved["name"] = json!("moved");
    h.act(&p.staff, "PUT", &format!("/api/v1/rules/{id}"), Some(moved))
        .await
        .expect(StatusCode::BAD_REQUEST);
    h.act(&p.admin, "DELETE", &format!("/api/v1/rules/{id}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.act(&p.grid, "GET", &format!("/api/v1/rules/{id}"), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    let audit = h.audit_actions().await;
    assert!(
        audit.iter().filter(|a| *a == "record.create").count() >= 2,
        "{audit:?}"
    );
    assert!(
        audit.iter().filter(|a| *a == "record.change").count() >= 2,
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_rule_forged_below_is_quarantined_and_never_evaluated() {
    let (h, p) = harness().await;
    let village: AreaCode = "330723001001".parse().unwrap();
    // What a stolen village hub would send up: a rule for its village written by its grid worker,
    // and one written by a village-level admin; both reach the projection as a merge would.
    let body = serde_json::to_string(&rule("330723001001")).unwrap();
    for (name, role) in [("wang.fang", "grid_worker"), ("admin", "admin")] {
        let (docs, body) = (h.state().docs.clone(), body.clone());
        let by = Author::person(
            village.clone(),
            Person {
                name: name.into(),
                role: role.into(),
                area: village.clone(),
            },
        );
        let scope = village.clone();
        h.state()
            .store
            .write(move |conn| {
                docs.create(conn, &by, "rule", &scope, move |d| {
                    use automerge::transaction::Transactable;
                    d.put(automerge::ROOT, "body", body.as_str())?;
                    d.put(automerge::ROOT, "created_by", "x")?;
                    d.put(automerge::ROOT, "deleted", false)?;
                    Ok(())
                })?;
                Ok::<_, township_node::store::StoreError>(())
            })
            .await
            .unwrap();
    }
    // Staff and grid workers never see them; the admin sees both, with the reason.
    let list = h
        .act(&p.grid, "GET", "/api/v1/rules", None)
        .await
        .expect(StatusCode::OK);
    assert!(list["rules"].as_array().unwrap().is_empty(), "{list}");
    let list = h
        .act(&p.admin, "GET", "/api/v1/rules", None)
        .await
        .expect(StatusCode::OK);
    let rules = list["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{list}");
    assert!(
        rules.iter().all(|r| r["quarantine"]
            .as_str()
            .is_some_and(|q| q.contains("may not edit rules"))),
        "{list}"
    );
    let effective = h
        .state()
        .store
        .read(township_node::rules::record::effective)
        .await
        .unwrap();
    assert!(effective.is_empty());
    let audit = h.audit_actions().await;
    assert_eq!(
        audit.iter().filter(|a| *a == "record.quarantine").count(),
        2,
        "{audit:?}"
    );
}

fn reading(t: i64, v: f64, quality: Quality) -> Reading {
    crate::common::harness::reading("wl-01", "water_level", t, v, quality)
}

async fn state_of(h: &Harness, s: &Session, id: &str) -> String {
    let v = h
        .act(s, "GET", &format!("/api/v1/rules/{id}"), None)
        .await
        .expect(StatusCode::OK);
    v["state"].as_str().unwrap().to_string()
}

async fn until(h: &Harness, s: &Session, id: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state_of(h, s, id).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "rule never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn committed_readings_move_the_rule_and_the_change_goes_out_in_process() {
    let (h, p) = harness().await;
    let mut events = h.state().rules.subscribe();
    let created = h
        .act(&p.staff, "POST", "/api/v1/rules", Some(rule("330723001")))
        .await
        .expect(StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_string();
    // The watcher picks the new rule up on its next tick; readings before that are not lost to it
    // only if it has loaded, so wait for a first evaluation to show.
    let t = START_MS;
    let mut n = 0;
    loop {
        n += 1;
        h.commit(vec![reading(t + n * 1000, 4.2, Quality::Good)])
            .await;
        if state_of(&h, &p.grid, &id).await == "orange" {
            break;
        }
        assert!(n < 400, "the rule never saw a reading");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.rule.to_string(), id);
    assert_eq!(event.to.as_str(), "orange");
    assert_eq!(event.value, Some(4.2));
    // Later readings; the node refuses device times ahead of its own clock, so move it on first.
    h.clock.advance_ms(600_000);
    // A flagged reading far above red moves nothing; a good one does.
    h.commit(vec![reading(t + 500_000, 19.0, Quality::DeviceFlagged)])
        .await;
    h.commit(vec![reading(t + 501_000, 4.3, Quality::Good)])
        .await;
    h.commit(vec![reading(t + 502_000, 4.6, Quality::Good)])
        .await;
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.to.as_str(), event.at_ms, event.value),
        ("red", t + 502_000, Some(4.6))
    );
    until(&h, &p.grid, &id, "red").await;
    // Inside the band nothing changes; below it the rule falls back.
    h.commit(vec![reading(t + 503_000, 4.45, Quality::Good)])
        .await;
    h.commit(vec![reading(t + 504_000, 3.2, Quality::Good)])
        .await;
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((event.to.as_str(), event.at_ms), ("blue", t + 504_000));
    until(&h, &p.grid, &id, "blue").await;
}

#[tokio::test]
async fn a_backtest_replays_stored_readings_through_a_rule_that_was_never_saved() {
    let (h, p) = harness().await;
    let t = START_MS - 60 * MINUTE;
    let series: Vec<Reading> = [2.0, 3.1, 3.6, 4.1, 4.6, 4.0, 3.0, 2.0]
        .iter()
        .enumerate()
        .map(|(i, v)| reading(t + i as i64 * 5 * MINUTE, *v, Quality::Good))
        .collect();
    h.commit(series).await;
    let mut candidate = rule("330723001");
    candidate["for"] = json!("5m");
    let answer = h
        .act(
            &p.staff,
            "POST",
            "/api/v1/rules/test",
            Some(json!({"rule": candidate, "from": t.to_string(), "to": START_MS.to_string()})),
        )
        .await
        .expect(StatusCode::OK);
    let path: Vec<(String, i64)> = answer["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["to"].as_str().unwrap().to_string(),
                (c["at_ms"].as_i64().unwrap() - t) / MINUTE,
            )
        })
        .collect();
    // Each level counts once it has held five minutes: blue at 10 (3.1 since 5), yellow at 15, orange
    // at 20; red never (4.6 at 20, but 4.0 at 25, the moment it would have counted). Orange and
    // yellow are left at 35, five minutes below their bands; blue needs a reading at 40 to go.
    assert_eq!(
        path,
        vec![
            ("blue".to_string(), 10),
            ("yellow".to_string(), 15),
            ("orange".to_string(), 20),
            ("blue".to_string(), 35),
        ],
        "{answer}"
    );
    assert_eq!(answer["readings"], 8);
    // Nothing was saved, and a grid worker may not run one.
    assert_eq!(rule_count(&h).await, 0);
    h.act(
        &p.grid,
        "POST",
        "/api/v1/rules/test",
        Some(json!({"rule": rule("330723001"), "from": "0", "to": "1"})),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_edited_rule_is_evaluated_as_edited_even_within_the_same_millisecond() {
    let (h, p) = harness().await;
    let created = h
        .act(&p.staff, "POST", "/api/v1/rules", Some(rule("330723001")))
        .await
        .expect(StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_string();
    // The watcher has the rule once a reading moves it (4.2 is orange under the first body).
    let mut t = START_MS - 600_000;
    loop {
        t += 1000;
        h.commit(vec![reading(t, 4.2, Quality::Good)]).await;
        if state_of(&h, &p.grid, &id).await == "orange" {
            break;
        }
        assert!(t < START_MS, "the rule never saw a reading");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The node's clock does not move (it is manual here): the edit has the same time as the rule.
    let mut edited = rule("330723001");
    edited["levels"]["red"] = json!(4.1);
    h.act(
        &p.staff,
        "PUT",
        &format!("/api/v1/rules/{id}"),
        Some(edited),
    )
    .await
    .expect(StatusCode::OK);
    // The same reading value is red under the edited rule.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        t += 1000;
        h.commit(vec![reading(t, 4.2, Quality::Good)]).await;
        if state_of(&h, &p.grid, &id).await == "red" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edited rule was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
