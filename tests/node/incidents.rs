//! Incidents end to end in process: the whole loop by each role, every refused path, deadlines on a
//! manual clock with automatic escalation, transitions made apart on two nodes and merged, attachments
//! byte for byte, CSV and GeoJSON exports, Chinese full-text search, paging and indicators.

use crate::common::harness::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use township_node::auth::roles::Role;
use township_node::config::Config;
use township_node::store::StoreError;

struct Cast {
    grid: Session,
    staff: Session,
    water: Session,
    police: Session,
    it: Session,
}

async fn cast(h: &Harness) -> Cast {
    Cast {
        grid: h
            .user("grid.wang", Role::GridWorker, "330723001001", None)
            .await,
        staff: h
            .user("staff.li", Role::TownshipStaff, "330723001", None)
            .await,
        water: h
            .user("water.zhao", Role::DeptHandler, "330723001", Some("water"))
            .await,
        police: h
            .user("police.sun", Role::DeptHandler, "330723001", Some("police"))
            .await,
        it: h.user("it.chen", Role::CountyIt, "330723001", None).await,
    }
}

async fn create(h: &Harness, s: &Session, body: Value) -> String {
    let v = h
        .act(s, "POST", "/api/v1/incidents", Some(body))
        .await
        .expect(StatusCode::CREATED);
    v["id"].as_str().unwrap().to_string()
}

async fn act(h: &Harness, s: &Session, id: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, v) = h
        .as_(
            s,
            "POST",
            &format!("/api/v1/incidents/{id}/transitions"),
            Some(body),
        )
        .await;
    (status, v)
}

#[tokio::test]
async fn the_whole_loop_by_each_role() {
    let h = Harness::new().await;
    let c = cast(&h).await;
    let id = create(&h, &c.grid, report("路灯损坏", "安全隐患")).await;
    let (_, _, v) = h
        .as_(&c.grid, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await;
    assert_eq!(v["state"], "reported");
    assert_eq!(v["reporter"], "grid.wang");
    assert_eq!(v["location"]["lat"], 28.8921);
    assert_eq!(v["allowed_actions"], json!([]));
    let (_, _, v) = h
        .as_(&c.staff, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await;
    assert_eq!(
        v["allowed_actions"],
        json!(["accept", "reject", "duplicate"])
    );

    let (status, v) = act(&h, &c.staff, &id, json!({"action": "accept"})).await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    let (status, v) = act(&h, &c.staff, &id, json!({"action": "dispatch", "department": "water", "assist_departments": ["housing"], "deadline": h.clock.now_ms() + 86_400_000})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["lead_department"], "water");
    assert_eq!(v["assist_departments"], json!(["housing"]));
    let (_, _, v) = h
        .as_(&c.water, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await;
    assert_eq!(
        v["allowed_actions"],
        json!(
            ["start", "return", "resolve"]
                .iter()
                .filter(|a| **a != "resolve")
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        act(&h, &c.water, &id, json!({"action": "start"})).await.0,
        StatusCode::OK
    );
    let (status, v) = act(
        &h,
        &c.water,
        &id,
        json!({"action": "resolve", "note": "已更换灯泡"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["state"], "resolved");
    assert_eq!(v["result_note"], "已更换灯泡");
    assert_eq!(v["assignee"], "water.zhao");
    let (status, v) = act(&h, &c.grid, &id, json!({"action": "verify"})).await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("closed"))
    );
    let (status, _, v) = h
        .as_(
            &c.grid,
            "POST",
            &format!("/api/v1/incidents/{id}/rating"),
            Some(json!({"score": 5, "comment": "很满意"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["rating"]["score"], 5);
    assert_eq!(v["transitions"].as_array().unwrap().len(), 5);
    assert_eq!(v["conflicts"], json!([]));
    let (status, _, v) = h
        .as_(
            &c.water,
            "POST",
            &format!("/api/v1/incidents/{id}/comments"),
            Some(json!({"text": "已现场复核"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(v["comments"][0]["text"], "已现场复核");
    assert_eq!(v["comments"][0]["author"], "water.zhao");

    // Indicators count it: reported, accepted, closed, cross-department, on time, satisfaction.
    let ind = h
        .act(&c.staff, "GET", "/api/v1/indicators", None)
        .await
        .expect(StatusCode::OK);
    let t = &ind["total"];
    assert_eq!(
        (
            t["reported"].as_i64(),
            t["accepted"].as_i64(),
            t["closed"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(t["cross_department_completion_rate"], 1.0);
    assert_eq!(t["on_time_rate"], 1.0);
    assert_eq!(t["satisfaction"], 5.0);
    assert!(ind["per_department"]["water"].is_object());
    assert!(ind["per_area"]["330723001001"].is_object());

    // Return and reopen paths with their reasons.
    let id2 = create(&h, &c.grid, report("河道垃圾", "环境卫生")).await;
    act(&h, &c.staff, &id2, json!({"action": "accept"})).await;
    act(
        &h,
        &c.staff,
        &id2,
        json!({"action": "dispatch", "department": "water"}),
    )
    .await;
    assert_eq!(
        act(&h, &c.water, &id2, json!({"action": "return"})).await.0,
        StatusCode::BAD_REQUEST,
        "return needs a reason"
    );
    let (status, v) = act(
        &h,
        &c.water,
        &id2,
        json!({"action": "return", "note": "不属于水利"}),
    )
    .await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    assert!(v["lead_department"].is_null());
    act(
        &h,
        &c.staff,
        &id2,
        json!({"action": "dispatch", "department": "environment"}),
    )
    .await;
    let env = h
        .user(
            "env.qian",
            Role::DeptHandler,
            "330723001",
            Some("environment"),
        )
        .await;
    act(&h, &env, &id2, json!({"action": "start"})).await;
    act(
        &h,
        &env,
        &id2,
        json!({"action": "resolve", "note": "已清理"}),
    )
    .await;
    let (status, v) = act(
        &h,
        &c.staff,
        &id2,
        json!({"action": "reopen", "note": "仍有垃圾"}),
    )
    .await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("dispatched"))
    );
}

#[tokio::test]
async fn refused_paths_wrong_role_wrong_area_invalid_transition_bad_input() {
    let h = Harness::new().await;
    let c = cast(&h).await;
    let id = create(&h, &c.grid, report("占道经营", "道路交通")).await;
    let url = format!("/api/v1/incidents/{id}");

    // Wrong role: 403, nothing changes.
    assert_eq!(
        act(&h, &c.grid, &id, json!({"action": "accept"})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        act(&h, &c.water, &id, json!({"action": "accept"})).await.0,
        StatusCode::NOT_FOUND,
        "not dispatched to water: invisible"
    );
    let (status, _, _) = h
        .as_(
            &c.water,
            "POST",
            "/api/v1/incidents",
            Some(report("x", "其他")),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "department handlers do not report"
    );

    act(&h, &c.staff, &id, json!({"action": "accept"})).await;
    // Invalid transition from the current state: 409.
    let (status, v) = act(&h, &c.staff, &id, json!({"action": "accept"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        act(&h, &c.staff, &id, json!({"action": "verify"})).await.0,
        StatusCode::CONFLICT
    );
    // Bad input: 400 naming the field.
    let (status, v) = act(
        &h,
        &c.staff,
        &id,
        json!({"action": "dispatch", "department": "aliens"}),
    )
    .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("department"))
    );
    let (status, v) = act(&h, &c.staff, &id, json!({"action": "teleport"})).await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("action"))
    );
    let (status, v) = act(
        &h,
        &c.staff,
        &id,
        json!({"action": "dispatch", "department": "water", "deadline": 5}),
    )
    .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("deadline"))
    );
    act(
        &h,
        &c.staff,
        &id,
        json!({"action": "dispatch", "department": "water"}),
    )
    .await;
    assert_eq!(
        act(&h, &c.police, &id, json!({"action": "start"})).await.0,
        StatusCode::NOT_FOUND,
        "police cannot even see it"
    );
    assert_eq!(
        h.as_(&c.police, "GET", &url, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, _) = h
        .as_(
            &c.staff,
            "POST",
            &format!("{url}/rating"),
            Some(json!({"score": 4})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "not closed yet");

    // Wrong area: a grid worker of another village neither sees nor reports there.
    let other = h
        .user("grid.zhou", Role::GridWorker, "330723001002", None)
        .await;
    assert_eq!(
        h.as_(&other, "GET", &url, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, _) = h
        .as_(
            &other,
            "POST",
            "/api/v1/incidents",
            Some(report("越界", "其他")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, _, list) = h.as_(&other, "GET", "/api/v1/incidents", None).await;
    assert_eq!(list["total"], 0);

    // Bad reports: 400 naming the field, and nothing stored.
    for (body, field) in [
        (
            json!({"category": "外星人", "title": "x", "area": "330723001001"}),
            "category",
        ),
        (
            json!({"category": "其他", "title": "", "area": "330723001001"}),
            "title",
        ),
        (
            json!({"category": "其他", "title": "x", "area": "3307"}),
            "area",
        ),
        (
            json!({"category": "其他", "title": "x", "area": "330723009001"}),
            "area",
        ),
        (
            json!({"category": "其他", "title": "x", "area": "330723001001", "location": {"lat": 123.0, "lon": 0.0}}),
            "location",
        ),
        (
            json!({"category": "其他", "title": "x", "area": "330723001001", "secret": 1}),
            "secret",
        ),
        (json!({"title": "x", "area": "330723001001"}), "category"),
    ] {
        let (status, _, v) = h
            .as_(&c.staff, "POST", "/api/v1/incidents", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    let (_, _, list) = h.as_(&c.staff, "GET", "/api/v1/incidents", None).await;
    assert_eq!(list["total"], 1);
    assert_eq!(
        h.as_(&c.staff, "GET", "/api/v1/incidents/not-a-uuid", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.as_(&c.staff, "GET", "/api/v1/incidents?state=flying", None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.as_(&c.staff, "GET", "/api/v1/incidents?cursor=garbage!", None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let _ = c.it;
}

fn long_sessions() -> Config {
    let mut config = Config::default();
    config.auth.session_idle = std::time::Duration::from_secs(3 * 24 * 3600);
    config.auth.session_max = std::time::Duration::from_secs(3 * 24 * 3600);
    config
}

/// A pinned upstream (never reached in these tests): escalation has a level above to go to.
fn with_upstream(config: &mut Config) {
    let (key, _) = township_sync::NodeKey::generate().unwrap();
    config.sync.upstream_url = Some("http://127.0.0.1:9".into());
    config.sync.upstream_key = Some(key.public_key().to_string());
}

#[tokio::test]
async fn a_node_without_a_level_above_never_strands_an_overdue_incident() {
    let h = Harness::with_config(long_sessions()).await;
    let c = cast(&h).await;
    let urgent = create(&h, &c.grid, report("燃气泄漏", "安全隐患")).await;
    h.clock.advance_ms(3 * 60 * MINUTE);
    let report = h.state().check_deadlines().await.unwrap();
    assert_eq!(report.overdue, 1);
    assert!(report.escalated.is_empty(), "nowhere to escalate to");
    let (_, _, v) = h
        .as_(
            &c.staff,
            "GET",
            &format!("/api/v1/incidents/{urgent}"),
            None,
        )
        .await;
    assert_eq!(
        (v["state"].as_str(), v["due_state"].as_str()),
        (Some("reported"), Some("overdue"))
    );
    assert_eq!(
        v["allowed_actions"],
        json!(["accept", "reject", "duplicate"]),
        "escalate is not offered"
    );
    let (status, v) = act(&h, &c.staff, &urgent, json!({"action": "escalate"})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_upstream"))
    );
    // The on-time rate counts the overdue open incident: never 100% beside an overdue case.
    let v = h
        .act(&c.staff, "GET", "/api/v1/indicators", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (
            v["total"]["overdue_open"].as_i64(),
            &v["total"]["on_time_rate"]
        ),
        (Some(1), &json!(0.0)),
        "{v}"
    );
    // The township's own staff handle it.
    for step in [
        json!({"action": "accept"}),
        json!({"action": "dispatch", "department": "emergency"}),
    ] {
        assert_eq!(act(&h, &c.staff, &urgent, step).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn deadlines_flag_near_and_overdue_and_escalate_configured_categories() {
    // Sessions that outlast the simulated days, so the clock only moves the incidents' deadlines; an
    // upstream, so escalation has somewhere to go.
    let mut config = long_sessions();
    with_upstream(&mut config);
    let h = Harness::with_config(config).await;
    let c = cast(&h).await;
    // 安全隐患: accept within 2 h, escalates on its own. 其他: 24 h, does not.
    let urgent = create(&h, &c.grid, report("燃气泄漏", "安全隐患")).await;
    let slow = create(&h, &c.grid, report("路面坑洼", "其他")).await;
    let due_state = |v: &Value| v["due_state"].as_str().unwrap().to_string();

    h.clock.advance_ms(90 * MINUTE);
    let report = h.state().check_deadlines().await.unwrap();
    assert_eq!((report.near, report.overdue), (0, 0));
    h.clock.advance_ms(10 * MINUTE); // 100 of 120 minutes: past 80%
    let report = h.state().check_deadlines().await.unwrap();
    assert_eq!((report.near, report.overdue), (1, 0));
    let (_, _, list) = h
        .as_(&c.staff, "GET", "/api/v1/incidents?due_state=near", None)
        .await;
    assert_eq!(list["incidents"][0]["id"], urgent.as_str(), "{list}");

    h.clock.advance_ms(21 * MINUTE);
    let report = h.state().check_deadlines().await.unwrap();
    assert_eq!(report.overdue, 1);
    assert_eq!(report.escalated.len(), 1);
    let (_, _, v) = h
        .as_(
            &c.staff,
            "GET",
            &format!("/api/v1/incidents/{urgent}"),
            None,
        )
        .await;
    assert_eq!(v["state"], "escalated");
    assert_eq!(v["transitions"][0]["actor"], "system");
    // Checking again escalates nothing twice.
    assert!(
        h.state()
            .check_deadlines()
            .await
            .unwrap()
            .escalated
            .is_empty()
    );
    // Escalated, it runs on the resolve clock again (from the report), so it leaves the overdue list
    // and waits in the county's queue.
    let (_, _, list) = h
        .as_(&c.it, "GET", "/api/v1/incidents?state=escalated", None)
        .await;
    assert_eq!(list["incidents"][0]["id"], urgent.as_str());
    // Until the county takes it, the township may still dispatch it itself: nothing is stranded.
    let (_, _, v) = h
        .as_(
            &c.staff,
            "GET",
            &format!("/api/v1/incidents/{urgent}"),
            None,
        )
        .await;
    assert!(
        v["allowed_actions"]
            .as_array()
            .unwrap()
            .contains(&json!("dispatch")),
        "{v}"
    );
    // The county takes it by dispatching it; then it is the department's.
    let (status, v) = act(
        &h,
        &c.it,
        &urgent,
        json!({"action": "dispatch", "department": "emergency"}),
    )
    .await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("dispatched"))
    );
    assert_eq!(
        act(
            &h,
            &c.staff,
            &urgent,
            json!({"action": "dispatch", "department": "water"})
        )
        .await
        .0,
        StatusCode::CONFLICT,
        "dispatched once by the county, it is not dispatched again"
    );

    h.clock.advance_ms(24 * 60 * MINUTE);
    h.state().check_deadlines().await.unwrap();
    let (_, _, v) = h
        .as_(&c.staff, "GET", &format!("/api/v1/incidents/{slow}"), None)
        .await;
    assert_eq!(due_state(&v), "overdue");
    assert_eq!(v["state"], "reported", "其他 does not escalate on its own");
}

#[tokio::test]
async fn transitions_made_apart_fold_the_same_on_both_nodes_with_the_conflict_shown() {
    let a = Harness::new().await;
    let b = Harness::new().await;
    let staff_a = a
        .user("staff.a", Role::TownshipStaff, "330723001", None)
        .await;
    let staff_b = b
        .user("staff.b", Role::TownshipStaff, "330723001", None)
        .await;
    let grid = a
        .user("grid.a", Role::GridWorker, "330723001001", None)
        .await;
    let id = create(&a, &grid, report("山体滑坡隐患", "防汛防台")).await;
    let uuid: uuid::Uuid = id.parse().unwrap();

    async fn copy(from: &Harness, to: &Harness, id: uuid::Uuid) {
        let docs = from.state().docs.clone();
        let bytes = from
            .state()
            .store
            .read(move |c| Ok::<_, StoreError>(docs.load(c, id)?.1.save()))
            .await
            .unwrap();
        let docs = to.state().docs.clone();
        let scope: township_sync::AreaCode = "330723001001".parse().unwrap();
        to.state()
            .store
            .write(move |c| {
                Ok::<_, StoreError>(
                    docs.merge_remote(
                        c,
                        township_sync::Sender::Trusted,
                        id,
                        "incident",
                        &scope,
                        &bytes,
                    )
                    .map(|_| ())?,
                )
            })
            .await
            .unwrap();
    }
    copy(&a, &b, uuid).await;
    // Apart: one office accepts, the other rejects.
    assert_eq!(
        act(&a, &staff_a, &id, json!({"action": "accept"})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        act(
            &b,
            &staff_b,
            &id,
            json!({"action": "reject", "note": "重复上报"})
        )
        .await
        .0,
        StatusCode::OK
    );
    copy(&a, &b, uuid).await;
    copy(&b, &a, uuid).await;
    let (_, _, va) = a
        .as_(&staff_a, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await;
    let (_, _, vb) = b
        .as_(&staff_b, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await;
    // Names are each node's own knowledge of people (staff.b is unknown at a); the folded record
    // itself must be identical.
    let (va, vb) = (without_names(va), without_names(vb));
    assert_eq!(va["state"], vb["state"]);
    assert_eq!(va["transitions"], vb["transitions"]);
    assert_eq!(va["conflicts"], vb["conflicts"]);
    assert_eq!(va["conflicts"].as_array().unwrap().len(), 1, "{va}");
    assert!(
        va["conflicts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not possible")
    );
    // The projections agree too.
    async fn state_in(h: &Harness, id: String) -> (String, i64) {
        h.state()
            .store
            .read(move |c| {
                Ok::<_, StoreError>(c.query_row(
                    "SELECT state, conflicts FROM incidents WHERE id = ?1",
                    [id],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )?)
            })
            .await
            .unwrap()
    }
    assert_eq!(
        state_in(&a, id.clone()).await,
        state_in(&b, id.clone()).await
    );
}

#[tokio::test]
async fn attachments_round_trip_byte_for_byte_and_bad_files_store_nothing() {
    let mut config = Config::default();
    config.incidents.max_attachment_bytes = 200_000;
    let h = Harness::with_config(config).await;
    let c = cast(&h).await;
    let id = create(&h, &c.grid, report("围墙开裂", "安全隐患")).await;
    let photo = png(900, 600);
    let (ct, body) = multipart("file", "IMG_0001.jpg", &photo);
    let (status, _, out) = h
        .send_raw(
            &c.grid,
            "POST",
            &format!("/api/v1/incidents/{id}/attachments"),
            &ct,
            body,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&out)
    );
    let meta: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        meta["content_type"], "image/png",
        "type from the bytes, not the .jpg name"
    );
    assert_eq!(meta["size"], photo.len());
    let sha = meta["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha, township_node::blobs::sha256_hex(&photo));

    let (status, headers, bytes) = h
        .send_raw(
            &c.staff,
            "GET",
            &format!("/api/v1/blobs/{sha}"),
            "text/plain",
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, photo, "byte for byte");
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["etag"], format!("\"{sha}\"").as_str());
    let (status, headers, thumb) = h
        .send_raw(
            &c.staff,
            "GET",
            &format!("/api/v1/blobs/{sha}/thumbnail"),
            "text/plain",
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/jpeg");
    let img = image::load_from_memory(&thumb).unwrap();
    assert!(
        img.width() <= 320 && img.height() <= 320,
        "{}x{}",
        img.width(),
        img.height()
    );
    let (_, _, v) = h
        .as_(&c.staff, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await;
    assert_eq!(v["attachments"][0]["sha256"], sha.as_str());
    // Uploading the same photo again stores it once.
    let (ct, body) = multipart("file", "again.png", &photo);
    assert_eq!(
        h.send_raw(
            &c.grid,
            "POST",
            &format!("/api/v1/incidents/{id}/attachments"),
            &ct,
            body
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (_, _, v) = h
        .as_(&c.staff, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await;
    assert_eq!(v["attachments"].as_array().unwrap().len(), 1);
    // Someone outside the area cannot fetch it.
    let other = h
        .user("grid.far", Role::GridWorker, "330723001009", None)
        .await;
    assert_eq!(
        h.send_raw(
            &other,
            "GET",
            &format!("/api/v1/blobs/{sha}"),
            "text/plain",
            vec![]
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    let blobs_before = count_blob_files(h.tmp.path());
    let (ct, body) = multipart(
        "file",
        "evil.png",
        b"<script>alert(1)</script> not an image at all",
    );
    assert_eq!(
        h.send_raw(
            &c.grid,
            "POST",
            &format!("/api/v1/incidents/{id}/attachments"),
            &ct,
            body
        )
        .await
        .0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let mut huge = png(4, 4);
    huge.extend(std::iter::repeat_n(7u8, 300_000));
    let (ct, body) = multipart("file", "huge.png", &huge);
    assert_eq!(
        h.send_raw(
            &c.grid,
            "POST",
            &format!("/api/v1/incidents/{id}/attachments"),
            &ct,
            body
        )
        .await
        .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let (ct, body) = multipart("photo", "wrong-field.png", &photo);
    assert_eq!(
        h.send_raw(
            &c.grid,
            "POST",
            &format!("/api/v1/incidents/{id}/attachments"),
            &ct,
            body
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let (ct, body) = multipart("file", "p.png", &png(10, 10));
    assert_eq!(
        h.send_raw(
            &c.grid,
            "POST",
            "/api/v1/incidents/0192b7f0-0000-7000-8000-000000000000/attachments",
            &ct,
            body
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        count_blob_files(h.tmp.path()),
        blobs_before,
        "nothing stored for refused uploads"
    );
}

fn count_blob_files(root: &std::path::Path) -> usize {
    fn walk(p: &std::path::Path) -> usize {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&root.join("node").join("blobs"))
}

#[tokio::test]
async fn chinese_full_text_search_filters_paging_and_exports() {
    let h = Harness::new().await;
    let c = cast(&h).await;
    let titles = [
        "路灯损坏不亮",
        "河道垃圾堆积严重",
        "违章搭建彩钢棚",
        "邻里噪音纠纷, \"楼上\"装修",
    ];
    for t in titles {
        create(&h, &c.grid, report(t, "其他")).await;
    }
    let search = |q: &str| {
        let q = q.to_string();
        let h = &h;
        let s = c.staff.clone();
        async move {
            let url = format!("/api/v1/incidents?q={}", urlencode(&q));
            let v = h.act(&s, "GET", &url, None).await.expect(StatusCode::OK);
            v["incidents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["title"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("垃圾堆积").await, vec!["河道垃圾堆积严重"]);
    assert_eq!(
        search("路灯").await,
        vec!["路灯损坏不亮"],
        "two characters: substring fallback"
    );
    assert_eq!(search("彩钢").await, vec!["违章搭建彩钢棚"]);
    assert_eq!(
        search("请尽快处理").await.len(),
        4,
        "descriptions are searched too"
    );
    assert!(search("不存在的内容").await.is_empty());
    assert_eq!(
        search("\"楼上\"").await.len(),
        1,
        "quotes are text, not query syntax"
    );
    for nasty in ["AND OR NOT", "*", "\"", "NEAR(", "';--"] {
        search(nasty).await;
    }

    for i in 0..21 {
        create(&h, &c.grid, report(&format!("测试事件{i:02}"), "民生服务")).await;
        h.clock.advance_ms(1000);
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!(
                "/api/v1/incidents?category={}&limit=10&cursor={c}",
                urlencode("民生服务")
            ),
            None => format!(
                "/api/v1/incidents?category={}&limit=10",
                urlencode("民生服务")
            ),
        };
        let (_, _, v) = h.as_(&c.staff, "GET", &url, None).await;
        assert_eq!(v["total"], 21);
        for i in v["incidents"].as_array().unwrap() {
            assert!(
                seen.insert(i["id"].as_str().unwrap().to_string()),
                "no duplicates across pages"
            );
        }
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 21));

    let (status, headers, csv) = h
        .send_raw(
            &c.staff,
            "GET",
            &format!(
                "/api/v1/incidents/export.csv?category={}",
                urlencode("其他")
            ),
            "text/plain",
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(csv.starts_with(&[0xEF, 0xBB, 0xBF]), "UTF-8 BOM for Excel");
    let text = String::from_utf8(csv[3..].to_vec()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 5, "header and four rows");
    assert!(
        text.contains("\"邻里噪音纠纷, \"\"楼上\"\"装修\""),
        "quoted per RFC 4180"
    );
    let (status, headers, geo) = h
        .send_raw(
            &c.staff,
            "GET",
            "/api/v1/incidents/export.geojson",
            "text/plain",
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/geo+json");
    let geo: Value = serde_json::from_slice(&geo).unwrap();
    assert_eq!(geo["type"], "FeatureCollection");
    assert_eq!(geo["features"].as_array().unwrap().len(), 25);
    assert_eq!(geo["features"][0]["geometry"]["type"], "Point");
    assert_eq!(
        geo["features"][0]["geometry"]["coordinates"],
        json!([119.8165, 28.8921]),
        "[lon, lat]"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn staff_close_a_report_as_a_duplicate_linked_both_ways_and_counted_apart() {
    let h = Harness::new().await;
    let c = cast(&h).await;
    let original = create(&h, &c.grid, report("河道垃圾堆积", "环境卫生")).await;
    let copy = create(&h, &c.grid, report("桥下垃圾很多", "环境卫生")).await;
    let other = create(&h, &c.grid, report("路灯损坏", "安全隐患")).await;

    // Refused: a grid worker; no original; itself; an unknown id.
    let (status, _) = act(
        &h,
        &c.grid,
        &copy,
        json!({"action": "duplicate", "duplicate_of": original}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (given, code) in [
        (json!(null), "required"),
        (json!(copy), "duplicate_target"),
        (json!(uuid::Uuid::now_v7().to_string()), "duplicate_target"),
        (json!("not-an-id"), "duplicate_target"),
    ] {
        let (status, v) = act(
            &h,
            &c.staff,
            &copy,
            json!({"action": "duplicate", "duplicate_of": given}),
        )
        .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{given}: {v}"
        );
    }

    let (status, v) = act(
        &h,
        &c.staff,
        &copy,
        json!({"action": "duplicate", "duplicate_of": original}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["duplicate_of"].as_str()),
        (Some("duplicate"), Some(original.as_str()))
    );
    assert_eq!(v["allowed_actions"], json!([]), "a duplicate is closed");
    let (_, _, v) = h
        .as_(
            &c.staff,
            "GET",
            &format!("/api/v1/incidents/{original}"),
            None,
        )
        .await;
    assert_eq!(
        v["duplicates"],
        json!([copy]),
        "the original lists its duplicates"
    );
    // Duplicates never chain: a report cannot duplicate a duplicate.
    let (status, v) = act(
        &h,
        &c.staff,
        &other,
        json!({"action": "duplicate", "duplicate_of": copy}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("duplicate_target"))
    );

    let v = h
        .act(&c.staff, "GET", "/api/v1/indicators", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (
            v["total"]["reported"].as_i64(),
            v["total"]["duplicates"].as_i64()
        ),
        (Some(2), Some(1)),
        "{v}"
    );
    let audit = h.audit_actions().await;
    assert!(audit.iter().any(|a| a == "record.change"), "{audit:?}");
}

/// The view without the `*_name` fields a node adds from its own directory of people and areas.
fn without_names(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|k, _| !k.ends_with("_name") && k != "assist_department_names");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

#[tokio::test]
async fn each_role_sees_what_waits_for_it_first() {
    let h = Harness::new().await;
    let c = cast(&h).await;
    let work = |s: &Session| {
        let s = s.clone();
        let h = &h;
        async move {
            let v = h
                .act(&s, "GET", "/api/v1/incidents/work", None)
                .await
                .expect(StatusCode::OK);
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i["kind"].as_str().unwrap().to_string(),
                        i["count"].as_i64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let id = create(&h, &c.grid, report("路灯损坏", "安全隐患")).await;
    assert_eq!(
        work(&c.staff).await,
        vec![
            ("new".into(), 1),
            ("overdue".into(), 0),
            ("escalated".into(), 0)
        ]
    );
    assert_eq!(work(&c.grid).await, vec![("verify".into(), 0)]);
    for step in [
        json!({"action": "accept"}),
        json!({"action": "dispatch", "department": "water"}),
    ] {
        assert_eq!(act(&h, &c.staff, &id, step).await.0, StatusCode::OK);
    }
    assert_eq!(work(&c.water).await, vec![("queue".into(), 1)]);
    assert_eq!(
        work(&c.police).await,
        vec![("queue".into(), 0)],
        "another department's queue"
    );
    for step in [
        json!({"action": "start"}),
        json!({"action": "resolve", "note": "已更换"}),
    ] {
        assert_eq!(act(&h, &c.water, &id, step).await.0, StatusCode::OK);
    }
    // Resolved, it waits for the grid worker who reported it; the badge's total says so.
    let v = h
        .act(&c.grid, "GET", "/api/v1/incidents/work", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (v["items"][0]["kind"].as_str(), v["total"].as_i64()),
        (Some("verify"), Some(1)),
        "{v}"
    );
    assert_eq!(v["items"][0]["filter"], "state=resolved&reporter=grid.wang");
    assert_eq!(work(&c.it).await, vec![("escalated".into(), 0)]);
    // Strangers get no stream and no summary; many asking at once all get the same answer.
    for path in ["/api/v1/incidents/work", "/api/v1/incidents/work/events"] {
        let (status, _, v) = h.call("GET", path, &[], None).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
        );
    }
    let answers = futures_util::future::join_all(
        (0..32).map(|_| h.as_(&c.grid, "GET", "/api/v1/incidents/work", None)),
    )
    .await;
    assert!(
        answers
            .iter()
            .all(|(s, _, v)| *s == StatusCode::OK && v["total"] == 1)
    );
    // The same as a live stream.
    let (status, headers, _) = h
        .as_(&c.grid, "GET", "/api/v1/incidents/work/events", None)
        .await;
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (StatusCode::OK, "text/event-stream")
    );
}
