//! Problem documents carry a stable machine `code` and its `params` beside the English `detail`, so
//! the UI can say it in Chinese: the codes of the refusals people meet most, checked through the
//! real router, and every code emitted is one the UI has texts for (`Code::ALL`).

use crate::common::harness::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use township_node::auth::roles::Role;
use township_node::codes::Code;

fn known(code: &Value) -> bool {
    Code::ALL.iter().any(|c| Some(c.as_str()) == code.as_str())
}

#[tokio::test]
async fn refusals_carry_a_code_with_params_and_keep_the_english_detail() {
    let h = Harness::new().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let staff = h
        .user("staff.li", Role::TownshipStaff, "330723001", None)
        .await;

    // A field too long: which field, and the bounds.
    let mut body = report("路灯损坏", "安全隐患");
    body["title"] = json!("长".repeat(101));
    let v = h
        .act(&grid, "POST", "/api/v1/incidents", Some(body))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "text_length", "{v}");
    assert_eq!(v["params"], json!({"field": "title", "min": 1, "max": 100}));
    assert_eq!(v["field"], "title");
    assert_eq!(v["detail"], "title is 1 to 100 characters");

    // An area outside the reporter's own: both areas as params.
    let mut body = report("路灯损坏", "安全隐患");
    body["area"] = json!("330723001002");
    let v = h
        .act(&grid, "POST", "/api/v1/incidents", Some(body))
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "area_outside_yours", "{v}");
    assert_eq!(v["params"]["area"], "330723001002");
    assert_eq!(v["params"]["yours"], "330723001001");

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
    let path = format!("/api/v1/incidents/{id}/transitions");
    // Rejecting needs a note: the action is named.
    let v = h
        .act(&staff, "POST", &path, Some(json!({"action": "reject"})))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "note_required", "{v}");
    assert_eq!(v["params"]["action"], "reject");
    // An action the state does not allow: the action and the state are named.
    h.act(&staff, "POST", &path, Some(json!({"action": "accept"})))
        .await
        .expect(StatusCode::OK);
    let v = h
        .act(&staff, "POST", &path, Some(json!({"action": "accept"})))
        .await
        .expect(StatusCode::CONFLICT);
    assert_eq!(v["code"], "action_not_allowed", "{v}");
    assert_eq!(
        v["params"],
        json!({"action": "accept", "state": "accepted"})
    );
    // A grid worker may not accept: role and action.
    let v = h
        .act(&grid, "POST", &path, Some(json!({"action": "accept"})))
        .await;
    let v = v.expect(StatusCode::FORBIDDEN);
    assert!(known(&v["code"]), "{v}");

    // The access table and the CSRF check.
    let (status, _, v) = h
        .call(
            "POST",
            &path,
            &[("cookie", &staff.cookie)],
            Some(json!({"action": "accept"})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_missing"))
    );
    let v = h
        .act(&grid, "GET", "/api/v1/users", None)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "role_forbidden", "{v}");
    assert_eq!(v["params"]["role"], "grid_worker");

    // Sign-in: a wrong password says so (not "authentication required"); no session says that.
    let (status, _, v) = h
        .call(
            "POST",
            "/api/v1/session",
            &[],
            Some(json!({"username": "grid.wang", "password": "not-the-password"})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_credentials"))
    );
    let (status, _, v) = h.call("GET", "/api/v1/incidents", &[], None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );

    // Errors made outside the handlers (the router's 404, a bad JSON body) get a code too.
    let v = h
        .act(&grid, "GET", "/api/v1/no-such-thing", None)
        .await
        .expect(StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "not_found", "{v}");
    let (status, _, v) = h
        .as_(
            &grid,
            "POST",
            "/api/v1/incidents",
            Some(json!({"title": 7})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(known(&v["code"]), "{v}");
}

/// The API description lists exactly the codes the server can emit.
#[test]
fn the_openapi_description_lists_every_code() {
    let spec: Value =
        serde_json::from_str(include_str!("../../src/http/openapi.json")).expect("openapi.json");
    let listed: Vec<&str> = spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .expect("Problem.code.enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let all: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, all);
}
