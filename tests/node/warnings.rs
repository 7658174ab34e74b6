//! Warnings in process: issued by hand with the roles and states the API promises, raised, issued,
//! updated and cleared by a rule with one warning per rule, every change on the in-process channel,
//! a warning acted on at two nodes apart folding to one state, and a forged issue from below that
//! does not count.

use std::time::Duration;

use crate::common::harness::{Harness, START_MS, Session};
use axum::http::StatusCode;
use serde_json::{Value, json};
use township_drivers::{Quality, Reading};
use township_node::auth::roles::Role;
use township_node::config::Config;
use township_node::store::StoreError;
use township_node::telemetry::config::DeviceConfig;

fn gauge() -> DeviceConfig {
    toml::from_str(
        "id = \"wl-01\"\nname = \"熟溪水位站\"\narea = \"330723001001\"\ndriver = \"hj212\"\nmn = \"MNWL01\"\n\
         points = [{ metric = \"water_level\", unit = \"m\", min = 0.0, max = 20.0 }]",
    )
    .unwrap()
}

async fn harness() -> (Harness, Session, Session) {
    let h = Harness::with_config(Config {
        devices: vec![gauge()],
        ..Config::default()
    })
    .await;
    township_node::app::start_telemetry(h.state());
    township_node::app::start_rules(h.state());
    let staff = h
        .user("li.ming", Role::TownshipStaff, "330723001", None)
        .await;
    let grid = h
        .user("wang.fang", Role::GridWorker, "330723001001", None)
        .await;
    (h, staff, grid)
}

fn manual() -> Value {
    json!({"area": "330723001", "event": "rainstorm", "level": "orange", "headline": "熟溪街道暴雨橙色预警",
           "description": "未来6小时降雨量将达50毫米以上。", "instruction": "转移低洼地带人员。",
           "areas": ["330723001001", "330723001002"], "expires": (START_MS + 6 * 3_600_000).to_string()})
}

#[tokio::test]
async fn staff_issue_update_and_cancel_and_grid_workers_see_what_covers_them() {
    let (h, staff, grid) = harness().await;
    let mut notices = h.state().warnings.subscribe();
    let w = h
        .act(&staff, "POST", "/api/v1/warnings", Some(manual()))
        .await
        .expect(StatusCode::CREATED);
    let id = w["id"].as_str().unwrap().to_string();
    assert_eq!(
        (w["state"].as_str(), w["level"].as_str()),
        (Some("issued"), Some("orange"))
    );
    assert_eq!(w["source"], json!({"person": "li.ming"}));
    assert_eq!(w["allowed_actions"], json!(["update", "cancel"]));
    assert!(w["transitions"][0]["at_ms"].is_number());
    let n = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .expect("the issue is told")
        .unwrap();
    assert_eq!((n.action.as_str(), n.state.as_str()), ("issue", "issued"));
    // The grid worker sees it (it covers her village) but may do nothing with it.
    let seen = h
        .act(&grid, "GET", &format!("/api/v1/warnings/{id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(seen["allowed_actions"], json!([]));
    let list = h
        .act(
            &grid,
            "GET",
            "/api/v1/warnings?state=issued&level=orange,red",
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(list["warnings"].as_array().unwrap().len(), 1, "{list}");
    h.act(
        &grid,
        "POST",
        &format!("/api/v1/warnings/{id}/transitions"),
        Some(json!({"action": "cancel"})),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    h.act(&grid, "POST", "/api/v1/warnings", Some(manual()))
        .await
        .expect(StatusCode::FORBIDDEN);
    // Bad input names the field; a person cannot `raise` or `all_clear`.
    let mut bad = manual();
    bad["level"] = json!("purple");
    h.act(&staff, "POST", "/api/v1/warnings", Some(bad))
        .await
        .expect(StatusCode::BAD_REQUEST);
    let mut outside = manual();
    outside["areas"] = json!(["330723002001"]);
    let problem = h
        .act(&staff, "POST", "/api/v1/warnings", Some(outside))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(problem.to_string().contains("areas"), "{problem}");
    h.act(
        &staff,
        "POST",
        &format!("/api/v1/warnings/{id}/transitions"),
        Some(json!({"action": "all_clear"})),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    let list = h
        .act(&staff, "GET", "/api/v1/warnings", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        list["warnings"].as_array().unwrap().len(),
        1,
        "nothing stored: {list}"
    );
    // Raise to red, then cancel; cancelling twice is a conflict.
    let red = h
        .act(
            &staff,
            "POST",
            &format!("/api/v1/warnings/{id}/transitions"),
            Some(json!({"action": "update", "level": "red"})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (red["level"].as_str(), red["state"].as_str()),
        (Some("red"), Some("issued"))
    );
    let cancelled = h
        .act(
            &staff,
            "POST",
            &format!("/api/v1/warnings/{id}/transitions"),
            Some(json!({"action": "cancel"})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(cancelled["state"], "cancelled");
    h.act(
        &staff,
        "POST",
        &format!("/api/v1/warnings/{id}/transitions"),
        Some(json!({"action": "cancel"})),
    )
    .await
    .expect(StatusCode::CONFLICT);
    let mut actions = Vec::new();
    while actions.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), notices.recv())
            .await
            .expect("every change is told")
            .unwrap();
        actions.push(n.action);
    }
    assert_eq!(actions, ["update", "cancel"]);
    // The refused second cancel told nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(notices.try_recv().is_err());
}

fn reading(t: i64, v: f64) -> Reading {
    crate::common::harness::reading("wl-01", "water_level", t, v, Quality::Good)
}

async fn warnings_of(h: &Harness, s: &Session) -> Vec<Value> {
    let list = h
        .act(s, "GET", "/api/v1/warnings", None)
        .await
        .expect(StatusCode::OK);
    list["warnings"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_rule_raises_issues_updates_and_clears_one_warning() {
    let (h, staff, grid) = harness().await;
    let mut notices = h.state().warnings.subscribe();
    let rule = h
        .act(&staff, "POST", "/api/v1/rules", Some(json!({"name": "熟溪水位", "area": "330723001", "device": "wl-01",
            "metric": "water_level", "kind": "threshold", "levels": {"yellow": 3.5, "orange": 4.0, "red": 4.5},
            "hysteresis": 0.1, "event": "flood", "auto_issue": ["red", "orange"]})))
        .await
        .expect(StatusCode::CREATED);
    let rule_id = rule["id"].as_str().unwrap().to_string();
    // Yellow: raised, not issued. The watcher loads the new rule within a second; keep reading.
    let mut t = START_MS - 600_000;
    loop {
        t += 1000;
        h.commit(vec![reading(t, 3.6)]).await;
        if !warnings_of(&h, &grid).await.is_empty() {
            break;
        }
        assert!(t < START_MS, "no warning was raised");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            n.action.as_str(),
            n.state.as_str(),
            n.level.map(|l| l.as_str())
        ),
        ("raise", "raised", Some("yellow"))
    );
    // Orange: the same warning is updated and, since the rule says so, issued.
    h.commit(vec![reading(t + 1000, 4.1)]).await;
    let n = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (n.action.as_str(), n.level.map(|l| l.as_str())),
        ("update", Some("orange"))
    );
    let n = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n.action.as_str(), n.state.as_str()), ("issue", "issued"));
    let list = warnings_of(&h, &grid).await;
    assert_eq!(list.len(), 1, "one warning per rule: {list:?}");
    let id = list[0]["id"].as_str().unwrap().to_string();
    let w = h
        .act(&grid, "GET", &format!("/api/v1/warnings/{id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(w["source"], json!({"rule": rule_id}));
    assert_eq!(w["headline"], "熟溪水位橙色预警");
    assert_eq!(w["event"], "flood");
    let actions: Vec<&str> = w["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["raise", "update", "issue"]);
    assert!(
        w["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["actor"] == "system")
    );
    // Below every band: all clear.
    h.commit(vec![reading(t + 2000, 2.0)]).await;
    let n = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (n.action.as_str(), n.state.as_str()),
        ("all_clear", "cleared")
    );
    assert_eq!(warnings_of(&h, &grid).await.len(), 1);
}

async fn load(h: &Harness, id: uuid::Uuid) -> Vec<u8> {
    let docs = h.state().docs.clone();
    h.state()
        .store
        .read(move |c| Ok::<_, StoreError>(docs.load(c, id)?.1.save()))
        .await
        .unwrap()
}

async fn merge(h: &Harness, id: uuid::Uuid, bytes: Vec<u8>) {
    let docs = h.state().docs.clone();
    let seq = h
        .state()
        .store
        .write(move |c| {
            let scope: township_sync::AreaCode = "330723001".parse().unwrap();
            docs.merge_remote(
                c,
                township_sync::Sender::Trusted,
                id,
                "warning",
                &scope,
                &bytes,
            )?;
            Ok::<_, StoreError>(
                c.query_row("SELECT max(seq) FROM documents", [], |r| r.get::<_, i64>(0))?,
            )
        })
        .await
        .unwrap();
    // As a sync session does once a merge has committed.
    h.state().write_ctx().saw_seq(seq);
}

#[tokio::test]
async fn an_update_here_and_a_cancel_there_fold_to_one_state_on_both() {
    let (a, staff_a, _) = harness().await;
    let b = Harness::new().await;
    let staff_b = b
        .user("zhang.wei", Role::TownshipStaff, "330723001", None)
        .await;
    let w = a
        .act(&staff_a, "POST", "/api/v1/warnings", Some(manual()))
        .await
        .expect(StatusCode::CREATED);
    let id: uuid::Uuid = w["id"].as_str().unwrap().parse().unwrap();
    merge(&b, id, load(&a, id).await).await;
    // Apart: A raises it to red, B cancels it.
    a.act(
        &staff_a,
        "POST",
        &format!("/api/v1/warnings/{id}/transitions"),
        Some(json!({"action": "update", "level": "red"})),
    )
    .await
    .expect(StatusCode::OK);
    a.clock.advance_ms(1000);
    b.clock.advance_ms(2000);
    b.act(
        &staff_b,
        "POST",
        &format!("/api/v1/warnings/{id}/transitions"),
        Some(json!({"action": "cancel"})),
    )
    .await
    .expect(StatusCode::OK);
    township_node::app::start_rules(b.state());
    let mut told_b = b.state().warnings.subscribe();
    let (from_a, from_b) = (load(&a, id).await, load(&b, id).await);
    merge(&a, id, from_b).await;
    merge(&b, id, from_a).await;
    // B hears A's update as it merges, once, after its own cancel and the issue were told.
    let mut heard = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), told_b.recv())
            .await
            .expect("a change merged from another node is told")
            .unwrap();
        heard.push(n.action.clone());
        if n.action == "update" {
            assert_eq!(n.id, id);
            assert_eq!(n.state.as_str(), "cancelled", "told with the merged state");
            break;
        }
    }
    assert!(
        !heard[..heard.len() - 1].contains(&"update".to_string()),
        "{heard:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        std::iter::from_fn(|| told_b.try_recv().ok()).all(|n| n.action != "update"),
        "told twice"
    );
    let view_a = a
        .act(&staff_a, "GET", &format!("/api/v1/warnings/{id}"), None)
        .await
        .expect(StatusCode::OK);
    let view_b = b
        .act(&staff_b, "GET", &format!("/api/v1/warnings/{id}"), None)
        .await
        .expect(StatusCode::OK);
    for key in ["state", "level", "transitions", "conflicts"] {
        assert_eq!(view_a[key], view_b[key], "{key}");
    }
    assert_eq!(view_a["state"], "cancelled");
    assert_eq!(view_a["level"], "red");
}

#[tokio::test]
async fn an_issue_forged_from_below_does_not_count() {
    let (h, staff, _) = harness().await;
    let w = h
        .act(&staff, "POST", "/api/v1/warnings", Some(manual()))
        .await
        .expect(StatusCode::CREATED);
    let id: uuid::Uuid = w["id"].as_str().unwrap().parse().unwrap();
    // A village hub appends a cancel in the name of the township's staff member, and an update by
    // its own grid worker; both arrive as a merge would deliver them.
    let village: township_sync::AreaCode = "330723001001".parse().unwrap();
    let docs = h.state().docs.clone();
    let hlc = h.state().write_ctx().timestamp();
    h.state()
        .store
        .write(move |c| {
            for (claimed, actor, role, action) in [
                ("wang.fang", "li.ming", "township_staff", "cancel"),
                ("wang.fang", "wang.fang", "grid_worker", "update"),
            ] {
                let by = township_sync::Author::person(
                    village.clone(),
                    township_sync::Person {
                        name: claimed.into(),
                        role: "grid_worker".into(),
                        area: village.clone(),
                    },
                );
                let t = township_sync::Transition {
                    id: uuid::Uuid::now_v7().to_string(),
                    at: hlc,
                    actor: actor.into(),
                    role: role.into(),
                    action: action.into(),
                    data: [("level".to_string(), "blue".to_string())]
                        .into_iter()
                        .collect(),
                    written: Default::default(),
                };
                docs.change(c, &by, id, move |d| {
                    Ok(township_sync::workflow::append(d, &t)?)
                })?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let view = h
        .act(&staff, "GET", &format!("/api/v1/warnings/{id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (view["state"].as_str(), view["level"].as_str()),
        (Some("issued"), Some("orange")),
        "{view}"
    );
    assert_eq!(view["conflicts"].as_array().unwrap().len(), 2, "{view}");
}

/// Opens `/api/v1/warnings/events` as `s` and returns its body as a stream of frames.
async fn event_stream(h: &Harness, s: &Session) -> axum::body::BodyDataStream {
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .uri("/api/v1/warnings/events")
        .header("host", "node.test")
        .header("cookie", &s.cookie)
        .body(axum::body::Body::empty())
        .unwrap();
    let mut request = request;
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 7],
            40000,
        ))));
    let response = h.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().into_data_stream()
}

async fn next_frame(stream: &mut axum::body::BodyDataStream, wait: Duration) -> Option<String> {
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(wait, stream.next())
            .await
            .ok()??
            .ok()?;
        let text = String::from_utf8_lossy(&frame).into_owned();
        // Keep-alive comments are not events.
        if !text.trim().is_empty() && !text.starts_with(':') {
            return Some(text);
        }
    }
}

#[tokio::test]
async fn the_event_stream_tells_each_person_the_warnings_that_cover_them() {
    let (h, staff, grid) = harness().await;
    let elsewhere = h
        .user("zhao.lei", Role::GridWorker, "330723001002", None)
        .await;
    let mut hers = event_stream(&h, &grid).await;
    let mut theirs = event_stream(&h, &elsewhere).await;
    let mut for_her_village = manual();
    for_her_village["area"] = json!("330723001001");
    for_her_village["areas"] = json!(["330723001001"]);
    let w = h
        .act(&staff, "POST", "/api/v1/warnings", Some(for_her_village))
        .await
        .expect(StatusCode::CREATED);
    let frame = next_frame(&mut hers, Duration::from_secs(5))
        .await
        .expect("the grid worker hears of the warning over her village");
    assert!(frame.contains("event: warning"), "{frame}");
    let data: Value = serde_json::from_str(
        frame
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("a data line"),
    )
    .unwrap();
    assert_eq!(data["id"], w["id"]);
    assert_eq!(
        (data["action"].as_str(), data["level"].as_str()),
        (Some("issue"), Some("orange"))
    );
    assert!(
        next_frame(&mut theirs, Duration::from_millis(300))
            .await
            .is_none(),
        "a grid worker of another village hears nothing of it"
    );
}

#[tokio::test]
async fn a_rule_that_starts_again_picks_up_its_state_from_stored_readings() {
    let (h, staff, grid) = harness().await;
    let body = json!({"name": "熟溪水位", "area": "330723001", "device": "wl-01",
        "metric": "water_level", "kind": "threshold", "levels": {"yellow": 3.5, "orange": 4.0, "red": 4.5},
        "hysteresis": 0.1, "event": "flood", "auto_issue": ["red", "orange"]});
    let rule = h
        .act(&staff, "POST", "/api/v1/rules", Some(body.clone()))
        .await
        .expect(StatusCode::CREATED);
    let rule_id = rule["id"].as_str().unwrap().to_string();
    let mut t = START_MS - 600_000;
    loop {
        t += 1000;
        h.commit(vec![reading(t, 4.2)]).await;
        let list = warnings_of(&h, &grid).await;
        if list.first().is_some_and(|w| w["state"] == "issued") {
            break;
        }
        assert!(t < START_MS, "no warning was issued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = warnings_of(&h, &grid).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = transition_count(&h, &grid, &id).await;
    // The rule is written again (a new name): its evaluation starts afresh, as after a restart,
    // and rebuilds its state from the stored readings. Orange stands: the warning is left alone.
    let mut rule_events = h.state().rules.subscribe();
    let mut renamed = body.clone();
    renamed["name"] = json!("熟溪水位（新）");
    h.act(
        &staff,
        "PUT",
        &format!("/api/v1/rules/{rule_id}"),
        Some(renamed),
    )
    .await
    .expect(StatusCode::OK);
    let restored = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), rule_events.recv())
            .await
            .expect("the rewritten rule restores its state")
            .unwrap();
        if e.restored {
            break e;
        }
    };
    assert_eq!(restored.rule.to_string(), rule_id);
    assert_eq!(restored.to.as_str(), "orange");
    let r = h
        .act(&staff, "GET", &format!("/api/v1/rules/{rule_id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (r["name"].as_str(), r["state"].as_str()),
        (Some("熟溪水位（新）"), Some("orange"))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        transition_count(&h, &grid, &id).await,
        before,
        "a restored state that stands changes nothing"
    );
    // The water falls: the restored orange is left and the warning clears. Started from `none`, the
    // rule would never have seen a level to leave, and the warning would stay open for ever.
    h.commit(vec![reading(t + 1000, 2.0)]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while warnings_of(&h, &grid).await[0]["state"] != "cleared" {
        assert!(
            std::time::Instant::now() < deadline,
            "the warning did not clear"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn transition_count(h: &Harness, s: &Session, id: &str) -> usize {
    h.act(s, "GET", &format!("/api/v1/warnings/{id}"), None)
        .await
        .expect(StatusCode::OK)["transitions"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_rule_rewritten_to_auto_issue_its_level_issues_the_raised_warning() {
    let (h, staff, grid) = harness().await;
    let mut body = json!({"name": "熟溪水位", "area": "330723001", "device": "wl-01",
        "metric": "water_level", "kind": "threshold", "levels": {"yellow": 3.5, "orange": 4.0},
        "hysteresis": 0.1, "event": "flood"});
    let rule = h
        .act(&staff, "POST", "/api/v1/rules", Some(body.clone()))
        .await
        .expect(StatusCode::CREATED);
    let rule_id = rule["id"].as_str().unwrap().to_string();
    let mut t = START_MS - 600_000;
    while warnings_of(&h, &grid).await.is_empty() {
        t += 1000;
        h.commit(vec![reading(t, 3.6)]).await;
        assert!(t < START_MS, "no warning was raised");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(warnings_of(&h, &grid).await[0]["state"], "raised");
    body["auto_issue"] = json!(["yellow"]);
    h.act(
        &staff,
        "PUT",
        &format!("/api/v1/rules/{rule_id}"),
        Some(body),
    )
    .await
    .expect(StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while warnings_of(&h, &grid).await[0]["state"] != "issued" {
        assert!(
            std::time::Instant::now() < deadline,
            "the restored yellow did not issue the warning"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        warnings_of(&h, &grid).await.len(),
        1,
        "the same warning, not a second"
    );
}
