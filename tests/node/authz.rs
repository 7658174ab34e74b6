//! Accounts, sessions and the access table, in process with a controllable clock: every route against
//! every role, timeouts, logout, CSRF, Origin, throttling, the area rule, disabled users, API tokens,
//! input validation, and the audit entries all of it leaves.

use crate::common::harness::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use township_node::auth::access::{Access, RULES, rule_for};
use township_node::auth::roles::{ALL_ROLES, Role};
use township_node::config::Config;
use township_node::control;
use township_node::store::StoreError;

#[tokio::test]
async fn every_route_has_exactly_one_rule_and_no_rule_is_stale() {
    let routes = township_node::http::all_routes(&Config::default());
    let table = routes.table();
    assert!(table.len() >= RULES.len());
    for (method, path) in table {
        assert!(
            rule_for(method, path).is_some(),
            "route {method} {path} has no access rule"
        );
    }
    for rule in RULES {
        assert!(
            table
                .iter()
                .any(|(m, p)| m.as_str() == rule.method && *p == rule.path),
            "rule {} {} names no route",
            rule.method,
            rule.path
        );
    }
}

#[tokio::test]
async fn every_role_and_anonymous_against_every_route() {
    let h = Harness::new().await;
    for role in ALL_ROLES {
        if role == Role::Admin {
            continue;
        }
        let dept = (role == Role::DeptHandler).then_some("water");
        h.add_user(&format!("u-{role}"), role, "330723001", dept)
            .await;
    }
    let mut sessions = vec![(Role::Admin, h.session_for("admin").await)];
    for role in ALL_ROLES.into_iter().filter(|r| *r != Role::Admin) {
        sessions.push((role, h.session_for(&format!("u-{role}")).await));
    }
    let routes = township_node::http::all_routes(&Config::default());
    // Sign-out last, since it ends the session it is called with.
    let mut table: Vec<_> = routes.table().to_vec();
    table.sort_by_key(|(m, p)| (*m == Method::DELETE && *p == "/api/v1/session", *p));
    for (method, path) in table {
        let uri = path.replace("{username}", "nobody");
        let access = rule_for(&method, path).unwrap().access;
        if path == "/metrics" {
            // Public in the table, but by default only for clients on the node's own machine; these
            // requests come from a LAN address (tests/hygiene.rs covers loopback and the token).
            let (status, _, _) = h.call(method.as_str(), &uri, &[], None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "/metrics from the LAN");
            continue;
        }
        if path == "/api/v1/pa/audio/{sha256}" {
            // Public in the table so speakers can sign in with HTTP Basic; the handler answers
            // only speakers and people who may broadcast (tests/node/broadcast.rs covers speakers).
            let (status, _, _) = h.call(method.as_str(), &uri, &[], None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "anonymous audio");
            for (role, s) in &sessions {
                let (status, _, _) = h.as_(s, method.as_str(), &uri, None).await;
                let broadcaster = matches!(role, Role::TownshipStaff | Role::Admin);
                let expected = if broadcaster {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::UNAUTHORIZED
                };
                assert_eq!(status, expected, "{role} GET audio");
            }
            continue;
        }
        let (status, _, _) = h.call(method.as_str(), &uri, &[], None).await;
        match access {
            Access::Public => assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "anonymous {method} {path}: {status}"
            ),
            _ => assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "anonymous {method} {path}"
            ),
        }
        for (role, s) in &sessions {
            let (status, _, body) = h.as_(s, method.as_str(), &uri, None).await;
            let allowed = match access {
                Access::Public | Access::SignedIn => true,
                Access::Roles(roles) => roles.contains(role),
            };
            if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED
                        && status != StatusCode::FORBIDDEN
                        && !status.is_server_error(),
                    "{role} {method} {path} should be allowed: {status} {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} {method} {path} should be forbidden: {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn sessions_end_after_idle_and_absolute_limits() {
    let h = Harness::new().await;
    let s = h.login("admin", ADMIN_PW).await.unwrap();
    h.clock.advance_ms(29 * MINUTE);
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/session", None).await.0,
        StatusCode::OK
    );
    // Wait for the bookkeeping write that refreshed last-seen.
    wait_for_touch(&h, START_MS + 29 * MINUTE).await;
    h.clock.advance_ms(29 * MINUTE);
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/session", None).await.0,
        StatusCode::OK,
        "idle timer was reset"
    );
    h.clock.advance_ms(31 * MINUTE);
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/session", None).await.0,
        StatusCode::UNAUTHORIZED,
        "idle timeout"
    );

    let s = h.login("admin", ADMIN_PW).await.unwrap();
    let login_at = h.clock.now_ms();
    for _ in 0..(12 * 60 / 20) {
        h.clock.advance_ms(20 * MINUTE);
        let now = h.clock.now_ms();
        let (status, _, _) = h.as_(&s, "GET", "/api/v1/session", None).await;
        if now - login_at > 12 * 60 * MINUTE {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "absolute limit");
        } else {
            assert_eq!(status, StatusCode::OK);
            wait_for_touch(&h, now).await;
        }
    }
    h.clock.advance_ms(20 * MINUTE);
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/session", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn wait_for_touch(h: &Harness, at_least: i64) {
    for _ in 0..200 {
        let latest: i64 = h
            .state()
            .store
            .read(|c| {
                Ok::<_, StoreError>(c.query_row(
                    "SELECT COALESCE(MAX(last_seen_ms), 0) FROM sessions",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        if latest >= at_least {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("session was never touched");
}

#[tokio::test]
async fn logout_invalidates_the_token_server_side() {
    let h = Harness::new().await;
    let s = h.login("admin", ADMIN_PW).await.unwrap();
    let (status, headers, _) = h.as_(&s, "DELETE", "/api/v1/session", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    // A copy of the old cookie is worthless now.
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/session", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/users", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn login_rotates_the_token_and_sets_a_strict_cookie() {
    let h = Harness::new().await;
    let (status, headers, body) = h
        .call(
            "POST",
            "/api/v1/session",
            &[],
            Some(json!({"username": "admin", "password": ADMIN_PW})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert_eq!(body["user"]["username"], "admin");
    assert_eq!(body["user"]["role"], "admin");
    assert!(body["csrf_token"].as_str().unwrap().len() >= 43);
    let first = cookie.split(';').next().unwrap().to_string();
    // Signing in again with the old cookie ends the old session and issues a new token.
    let (_, headers2, _) = h
        .call(
            "POST",
            "/api/v1/session",
            &[("cookie", &first)],
            Some(json!({"username": "admin", "password": ADMIN_PW})),
        )
        .await;
    let second = headers2["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    let old = Session {
        cookie: first,
        csrf: String::new(),
    };
    assert_eq!(
        h.as_(&old, "GET", "/api/v1/session", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Only hashes are stored.
    let raw = second.split('=').nth(1).unwrap().to_string();
    let stored: i64 = h
        .state()
        .store
        .read(move |c| {
            Ok::<_, StoreError>(c.query_row(
                "SELECT count(*) FROM sessions WHERE token_hash = ?1",
                [raw],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn wrong_password_unknown_user_and_no_default_password() {
    let h = Harness::new().await;
    for (user, pw) in [
        ("admin", "admin"),
        ("admin", "wrong-password"),
        ("nobody", ADMIN_PW),
        ("admin", ""),
    ] {
        let err = h.login(user, pw).await.unwrap_err();
        assert!(
            matches!(err.0, StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST),
            "{user}/{pw}: {}",
            err.0
        );
    }
    // From one client: the first failure is audited at once, the rest go into one summary when the
    // window closes, so guessing cannot flood the chain that ships to the county.
    let actions = h.audit_actions().await;
    assert_eq!(
        actions.iter().filter(|a| *a == "auth.login_failed").count(),
        1
    );
    let closed = h
        .state()
        .sign_in_failures
        .take_closed(h.clock.now_ms() + township_node::audit::tally::WINDOW_MS);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].count, 2);
    assert_eq!(
        closed[0].names,
        vec!["admin".to_string(), "nobody".to_string()]
    );
}

#[tokio::test]
async fn five_failures_then_429_with_retry_after_until_the_window_passes() {
    let h = Harness::new().await;
    for _ in 0..5 {
        assert_eq!(
            h.login("admin", "not-the-password").await.unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, headers) = h.login("admin", ADMIN_PW).await.unwrap_err();
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    h.clock.advance_ms(15 * MINUTE + 1000);
    assert!(h.login("admin", ADMIN_PW).await.is_ok());
}

#[tokio::test]
async fn csrf_token_and_origin_are_required_for_changes() {
    let h = Harness::new().await;
    let s = h.login("admin", ADMIN_PW).await.unwrap();
    let body = json!({"username": "wang.wei", "role": "grid_worker", "area": "330723001001", "password": "Grid-Worker-1"});
    let (status, _, _) = h
        .call(
            "POST",
            "/api/v1/users",
            &[("cookie", &s.cookie)],
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "missing token");
    let (status, _, _) = h
        .call(
            "POST",
            "/api/v1/users",
            &[("cookie", &s.cookie), ("x-csrf-token", "forged")],
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "wrong token");
    let (status, _, _) = h
        .call(
            "POST",
            "/api/v1/users",
            &[
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                ("origin", "http://evil.example"),
            ],
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "foreign origin");
    let (status, _, created) = h
        .call(
            "POST",
            "/api/v1/users",
            &[
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                ("origin", "http://node.test"),
            ],
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["username"], "wang.wei");
    assert!(created.get("password_hash").is_none());
    // Nothing was stored by the refused attempts: exactly one record.create.
    assert_eq!(
        h.audit_actions()
            .await
            .iter()
            .filter(|a| *a == "record.create")
            .count(),
        1
    );
}

#[tokio::test]
async fn the_area_rule_limits_what_an_account_admin_sees_and_changes() {
    let h = Harness::new().await;
    h.add_user("it-village", Role::Admin, "330723001001", None)
        .await;
    h.add_user("grid-a", Role::GridWorker, "330723001001", None)
        .await;
    h.add_user("grid-b", Role::GridWorker, "330723001002", None)
        .await;
    let s = h.session_for("it-village").await;
    let body = h
        .act(&s, "GET", "/api/v1/users", None)
        .await
        .expect(StatusCode::OK);
    let names: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"grid-a") && !names.contains(&"grid-b") && !names.contains(&"admin"),
        "{names:?}"
    );
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/users?area=330723001", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, _, _) = h
        .as_(&s, "POST", "/api/v1/users", Some(json!({"username": "grid-c", "role": "grid_worker", "area": "330723001002", "password": "Grid-Worker-1"})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "other village");
    assert_eq!(
        h.as_(&s, "POST", "/api/v1/users/grid-b/disable", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    h.add_user("it-township", Role::CountyIt, "330723001", None)
        .await;
    let it = h.session_for("it-township").await;
    let (status, _, _) = h
        .as_(&it, "POST", "/api/v1/users", Some(json!({"username": "boss", "role": "admin", "area": "330723001001", "password": "Grid-Worker-1"})))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "county_it cannot make admins"
    );
    // Roles that work for a township or the county do not exist at village level.
    for role in ["township_staff", "dept_handler", "county_it"] {
        let (status, _, body) = h
            .as_(&it, "POST", "/api/v1/users", Some(json!({"username": "low", "role": role, "area": "330723001001", "department": "water", "password": "Grid-Worker-1"})))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{role}: {body}");
        assert_eq!(body["field"], "role", "{body}");
    }
}

#[tokio::test]
async fn disabling_ends_sessions_and_tokens_and_blocks_login() {
    let h = Harness::new().await;
    h.add_user("li.na", Role::TownshipStaff, "330723001", None)
        .await;
    let s = h.login("li.na", "li.na-password").await.unwrap();
    let token = control::execute(
        h.state(),
        control::Request::TokenCreate {
            username: "li.na".into(),
            name: "script".into(),
        },
        None,
    )
    .await
    .map(token_of)
    .unwrap();
    let bearer = format!("Bearer {token}");
    assert_eq!(
        h.call(
            "GET",
            "/api/v1/session",
            &[("authorization", &bearer)],
            None
        )
        .await
        .0,
        StatusCode::OK
    );

    let admin = h.login("admin", ADMIN_PW).await.unwrap();
    assert_eq!(
        h.as_(&admin, "POST", "/api/v1/users/li.na/disable", None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/session", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call(
            "GET",
            "/api/v1/session",
            &[("authorization", &bearer)],
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    // The right password of a disabled account gets the same answer as a wrong one.
    assert_eq!(
        h.login("li.na", "li.na-password").await.unwrap_err().0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.as_(&admin, "POST", "/api/v1/users/admin/disable", None)
            .await
            .0,
        StatusCode::FORBIDDEN,
        "not yourself"
    );
}

#[tokio::test]
async fn api_tokens_work_like_cookies_without_csrf() {
    let h = Harness::new().await;
    let token = control::execute(
        h.state(),
        control::Request::TokenCreate {
            username: "admin".into(),
            name: "county export".into(),
        },
        None,
    )
    .await
    .map(token_of)
    .unwrap();
    let bearer = format!("Bearer {token}");
    let (status, _, body) = h
        .call(
            "POST",
            "/api/v1/users",
            &[("authorization", &bearer)],
            Some(json!({"username": "zhao.gang", "role": "dept_handler", "department": "water", "area": "330723001", "password": "Handler-Pass-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        h.call(
            "GET",
            "/api/v1/users",
            &[("authorization", "Bearer tn_forged")],
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn changing_a_password_ends_the_users_sessions() {
    let h = Harness::new().await;
    h.add_user("sun.li", Role::GridWorker, "330723001001", None)
        .await;
    let worker = h.login("sun.li", "sun.li-password").await.unwrap();
    let admin = h.login("admin", ADMIN_PW).await.unwrap();
    let (status, _, body) = h
        .as_(
            &admin,
            "POST",
            "/api/v1/users/sun.li/password",
            Some(json!({"password": "short"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "password");
    assert_eq!(
        h.as_(
            &admin,
            "POST",
            "/api/v1/users/sun.li/password",
            Some(json!({"password": "New-Password-9"}))
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.as_(&worker, "GET", "/api/v1/session", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(h.login("sun.li", "sun.li-password").await.is_err());
    assert!(h.login("sun.li", "New-Password-9").await.is_ok());
    assert_eq!(
        h.as_(
            &admin,
            "POST",
            "/api/v1/users/ghost/password",
            Some(json!({"password": "New-Password-9"}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_stored() {
    let h = Harness::new().await;
    let s = h.login("admin", ADMIN_PW).await.unwrap();
    let cases = [
        (
            json!({"username": "x1", "area": "330723001", "password": "Long-Enough-1"}),
            "role",
        ),
        (
            json!({"username": "Bad Name", "role": "grid_worker", "area": "330723001", "password": "Long-Enough-1"}),
            "username",
        ),
        (
            json!({"username": "ok.name", "role": "mayor", "area": "330723001", "password": "Long-Enough-1"}),
            "role",
        ),
        (
            json!({"username": "ok.name", "role": "grid_worker", "area": "33072", "password": "Long-Enough-1"}),
            "area",
        ),
        (
            json!({"username": "ok.name", "role": "grid_worker", "area": "330724001", "password": "Long-Enough-1"}),
            "area",
        ),
        (
            json!({"username": "ok.name", "role": "dept_handler", "area": "330723001", "password": "Long-Enough-1"}),
            "department",
        ),
        (
            json!({"username": "ok.name", "role": "grid_worker", "area": "330723001", "password": "short"}),
            "password",
        ),
        (
            json!({"username": "ok.name", "role": "grid_worker", "area": "330723001", "password": "Long-Enough-1", "extra": 1}),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let (status, headers, problem) =
            h.as_(&s, "POST", "/api/v1/users", Some(body.clone())).await;
        let expected = if field == "area" && body["area"] == "330724001" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(status, expected, "{body}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
        if expected == StatusCode::BAD_REQUEST {
            assert_eq!(problem["field"], field, "{body}: {problem}");
        }
    }
    // Not JSON at all: 415.
    let request = Request::builder()
        .method("POST")
        .uri("/api/v1/users")
        .header("host", "node.test")
        .header("cookie", &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .header("content-type", "text/plain")
        .body(Body::from("username=x"))
        .unwrap();
    assert_eq!(
        h.router().oneshot(request).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    // Too large: 413.
    let big = json!({"username": "x".repeat(2 * 1024 * 1024), "role": "grid_worker", "area": "330723001", "password": "Long-Enough-1"});
    assert_eq!(
        h.as_(&s, "POST", "/api/v1/users", Some(big)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Taken username: 409.
    let ok = json!({"username": "dup.user", "role": "grid_worker", "area": "330723001001", "password": "Long-Enough-1"});
    assert_eq!(
        h.as_(&s, "POST", "/api/v1/users", Some(ok.clone())).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        h.as_(&s, "POST", "/api/v1/users", Some(ok)).await.0,
        StatusCode::CONFLICT
    );
    let taken_admin = json!({"username": "admin", "role": "grid_worker", "area": "330723001001", "password": "Long-Enough-1"});
    assert_eq!(
        h.as_(&s, "POST", "/api/v1/users", Some(taken_admin))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let users = h
        .state()
        .store
        .read(|c| {
            Ok::<_, StoreError>(
                c.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))?,
            )
        })
        .await
        .unwrap();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn every_change_is_audited_and_the_chain_verifies() {
    let h = Harness::new().await;
    let _ = h.login("admin", "bad-password-1").await;
    let s = h.login("admin", ADMIN_PW).await.unwrap();
    let body = json!({"username": "chen.jie", "role": "township_staff", "area": "330723001", "password": "Staff-Pass-2026"});
    assert_eq!(
        h.as_(&s, "POST", "/api/v1/users", Some(body)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        h.as_(
            &s,
            "POST",
            "/api/v1/users/chen.jie/password",
            Some(json!({"password": "Staff-Pass-2027"}))
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.as_(&s, "POST", "/api/v1/users/chen.jie/disable", None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    h.as_(&s, "DELETE", "/api/v1/session", None).await;
    let actions = h.audit_actions().await;
    for expected in [
        "node.init",
        "config.change",
        "auth.login_failed",
        "auth.login",
        "record.create",
        "record.change",
        "auth.logout",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} missing from {actions:?}"
        );
    }
    assert_eq!(
        actions.iter().filter(|a| *a == "record.change").count(),
        2,
        "{actions:?}"
    );

    let s = h.login("admin", ADMIN_PW).await.unwrap();
    let (status, _, body) = h
        .as_(&s, "GET", "/api/v1/audit?action=record&limit=10", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(
        entries
            .iter()
            .all(|e| e["action"].as_str().unwrap().starts_with("record."))
    );
    let (_, _, body) = h
        .as_(&s, "GET", "/api/v1/audit?actor=admin&limit=2", None)
        .await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 2);
    assert!(body["next_before"].is_i64());
    assert_eq!(
        h.as_(&s, "GET", "/api/v1/audit?from=yesterday", None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    let key = h.state().key.public_key();
    let report = h
        .state()
        .store
        .read(move |c| Ok::<_, StoreError>(township_node::audit::verify::verify(c, &key)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.entries as usize, h.audit_actions().await.len());
}

#[tokio::test]
async fn rebuild_restores_projections_from_documents() {
    let h = Harness::new().await;
    for i in 0..5 {
        h.add_user(
            &format!("worker{i}"),
            Role::GridWorker,
            "330723001001",
            None,
        )
        .await;
    }
    h.state()
        .store
        .write(|c| Ok::<_, StoreError>(c.execute("DELETE FROM users", [])?))
        .await
        .unwrap();
    assert!(h.login("worker3", "worker3-password").await.is_err());
    let result = control::execute(h.state(), control::Request::Rebuild, None)
        .await
        .unwrap();
    assert!(
        matches!(result, control::Reply::Rebuilt { documents: 5, .. }),
        "{result:?}"
    );
    assert!(h.login("worker3", "worker3-password").await.is_ok());
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let doc: Value = serde_json::from_str(include_str!("../../src/http/openapi.json")).unwrap();
    for (method, path) in township_node::http::all_routes(&Config::default()).table() {
        let op = &doc["paths"][*path][method.as_str().to_lowercase()];
        assert!(
            op.is_object(),
            "{method} {path} is missing from openapi.json"
        );
    }
}

#[tokio::test]
async fn a_username_made_on_two_nodes_apart_is_resolved_deterministically_and_shown() {
    let a = Harness::new().await;
    let b = Harness::new().await;
    a.add_user("same.name", Role::GridWorker, "330723001001", None)
        .await;
    b.add_user("same.name", Role::GridWorker, "330723001002", None)
        .await;
    // B's record reaches A (as sync would deliver it).
    let docs = b.state().docs.clone();
    let (id, bytes) = b
        .state()
        .store
        .read(move |c| {
            let id: String = c.query_row(
                "SELECT doc_id FROM users WHERE username = 'same.name'",
                [],
                |r| r.get(0),
            )?;
            let id: uuid::Uuid = id.parse().unwrap();
            Ok::<_, StoreError>((id, docs.load(c, id)?.1.save()))
        })
        .await
        .unwrap();
    let docs = a.state().docs.clone();
    a.state()
        .store
        .write(move |c| {
            let scope: township_sync::AreaCode = "330723001002".parse().unwrap();
            Ok::<_, StoreError>(
                docs.merge_remote(
                    c,
                    township_sync::Sender::Trusted,
                    id,
                    "user",
                    &scope,
                    &bytes,
                )
                .map(|_| ())?,
            )
        })
        .await
        .unwrap();
    let admin = a.session_for("admin").await;
    let (_, _, body) = a.as_(&admin, "GET", "/api/v1/users", None).await;
    let same: Vec<&Value> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["username"] == "same.name")
        .collect();
    assert_eq!(same.len(), 2);
    assert!(same.iter().all(|u| u["clash"] == true), "{body}");
    // Sign-in keeps using the account that was here first (both were made at village level); the
    // newcomer cannot win by its document id or clock, and does not sign in until renamed.
    let s = a.login("same.name", "same.name-password").await.unwrap();
    let (_, _, me) = a.as_(&s, "GET", "/api/v1/session", None).await;
    assert_eq!(me["user"]["area"], "330723001001");
    let loser = same.iter().find(|u| u["area"] == "330723001002").unwrap();
    assert_eq!(loser["signs_in"], false, "{body}");
    // Without saying which record, a rename is ambiguous.
    let (status, _, _) = a
        .as_(
            &admin,
            "POST",
            "/api/v1/users/same.name/rename",
            Some(json!({"new_username": "same.name2"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, renamed) = a
        .as_(
            &admin,
            "POST",
            "/api/v1/users/same.name/rename",
            Some(json!({"new_username": "same.name2", "id": loser["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["username"], "same.name2");
    assert_eq!(renamed["clash"], false);
    assert_eq!(renamed["signs_in"], true);
    assert!(a.audit_actions().await.iter().any(|x| x == "record.change"),);
    // Both sign in now, each under its own name.
    let s2 = a.login("same.name2", "same.name-password").await.unwrap();
    let (_, _, me2) = a.as_(&s2, "GET", "/api/v1/session", None).await;
    assert_eq!(me2["user"]["area"], "330723001002");
    assert!(a.login("same.name", "same.name-password").await.is_ok());
}

/// Raising `auth.password_iterations` upgrades each old hash at its holder's next sign-in: the stored
/// hash gets the new count (audited), the session just issued stays valid, and the same password still
/// signs in. Both kinds of account: the box's local admin and an account record.
#[tokio::test]
async fn old_password_hashes_are_upgraded_at_sign_in() {
    let mut config = Config::default();
    config.auth.password_iterations = 700_000;
    let h = Harness::with_config(config).await;
    // An account record hashed before the configuration was raised.
    let old_hash = township_node::auth::password::hash("Grid-Old-Hash-1", 600_000).unwrap();
    let (ctx, actor) = (h.state().write_ctx(), h.cli());
    h.state()
        .store
        .write(move |conn| -> Result<(), township_node::users::UserError> {
            let new = township_node::users::NewUser {
                username: "old.hash".into(),
                role: township_node::auth::roles::Role::GridWorker,
                area: "330723001001".parse().unwrap(),
                department: None,
                display_name: None,
                phone: None,
                password: township_node::config::Secret::new("unused"),
            };
            township_node::users::create(conn, &ctx, &actor, &new, old_hash).map(|_| ())
        })
        .await
        .unwrap();
    for (username, password) in [("admin", ADMIN_PW), ("old.hash", "Grid-Old-Hash-1")] {
        let before = stored_iterations(&h, username).await;
        assert_eq!(before, Some(600_000), "{username}");
        let session = h.login(username, password).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while stored_iterations(&h, username).await != Some(700_000) {
            assert!(
                std::time::Instant::now() < deadline,
                "{username} never rehashed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = h
            .act(&session, "GET", "/api/v1/session", None)
            .await
            .expect(StatusCode::OK);
        h.login(username, password).await.unwrap();
    }
    let rehashes: i64 = h
        .state()
        .store
        .read(|conn| {
            Ok::<_, StoreError>(conn.query_row(
                "SELECT count(*) FROM audit_log WHERE action = 'user.password_rehash'
                 OR json_extract(detail, '$.action') = 'user.password_rehash'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(
        rehashes, 2,
        "each upgrade audited once, none at the second sign-in"
    );
}

async fn stored_iterations(h: &Harness, username: &str) -> Option<u32> {
    let user = username.to_string();
    h.state()
        .store
        .read(move |conn| {
            Ok::<_, StoreError>(
                township_node::users::find_account(conn, &user)?
                    .and_then(|a| township_node::auth::password::iterations_of(&a.password_hash)),
            )
        })
        .await
        .unwrap()
}

/// The token a `token create` request made.
fn token_of(reply: control::Reply) -> String {
    match reply {
        control::Reply::Token { token, .. } => token,
        other => panic!("expected a token, got {other:?}"),
    }
}
