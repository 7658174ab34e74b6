//! `Idempotency-Key` on POSTs, as the phone's outbox retries them: a retry after the answer was lost
//! gets the first answer and creates nothing; the same key for another request is refused; two
//! people's keys never meet; the same request sent twice at once makes one record.

use crate::common::Session;
use crate::common::harness::{Harness, report};
use axum::http::StatusCode;
use serde_json::{Value, json};
use township_node::auth::roles::Role;

async fn post(
    h: &Harness,
    s: &Session,
    uri: &str,
    key: &str,
    body: Value,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    h.call(
        "POST",
        uri,
        &[
            ("cookie", &s.cookie),
            ("x-csrf-token", &s.csrf),
            ("idempotency-key", key),
        ],
        Some(body),
    )
    .await
}

async fn incident_count(h: &Harness) -> i64 {
    h.state()
        .store
        .read(|c| {
            Ok::<_, township_node::store::StoreError>(c.query_row(
                "SELECT count(*) FROM incidents",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retried_report_is_answered_with_the_first_result_and_makes_one_incident() {
    let h = Harness::new().await;
    let grid = h
        .user("wang.fang", Role::GridWorker, "330723001001", None)
        .await;
    let other = h
        .user("li.qiang", Role::GridWorker, "330723001001", None)
        .await;
    let key = "0192f0c4-7d1e-7a00-8000-000000000001";
    let body = report("路灯不亮", "其他");
    let (status, headers, first) = post(&h, &grid, "/api/v1/incidents", key, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    // The answer was lost on the way; the outbox sends the same request again.
    let (status, headers, again) = post(&h, &grid, "/api/v1/incidents", key, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again, first);
    assert_eq!(incident_count(&h).await, 1);
    // The same key for a different request is a mistake, refused.
    let (status, _, e) = post(
        &h,
        &grid,
        "/api/v1/incidents",
        key,
        report("井盖缺失", "其他"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    // Keys are the person's own: another grid worker's identical key makes her own incident.
    let (status, _, hers) = post(&h, &other, "/api/v1/incidents", key, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(hers["id"], first["id"]);
    assert_eq!(incident_count(&h).await, 2);
    // A refusal is an answer too: the retry gets the same 400 and nothing is stored.
    let (status, _, bad) = post(
        &h,
        &grid,
        "/api/v1/incidents",
        "k-bad",
        json!({"title": ""}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, headers, bad_again) = post(
        &h,
        &grid,
        "/api/v1/incidents",
        "k-bad",
        json!({"title": ""}),
    )
    .await;
    assert_eq!((status, &bad_again), (StatusCode::BAD_REQUEST, &bad));
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    // Keys are visible ASCII.
    let (status, _, e) = post(&h, &grid, "/api/v1/incidents", "has space", body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    // A comment retried is one comment.
    let id = first["id"].as_str().unwrap();
    let uri = format!("/api/v1/incidents/{id}/comments");
    for _ in 0..3 {
        let (status, _, c) = post(
            &h,
            &grid,
            &uri,
            "comment-1",
            json!({"text": "已到现场查看。"}),
        )
        .await;
        assert!(status.is_success(), "{c}");
    }
    let (_, _, view) = h
        .as_(&grid, "GET", &format!("/api/v1/incidents/{id}"), None)
        .await;
    assert_eq!(view["comments"].as_array().unwrap().len(), 1, "{view}");
    // Old answers are dropped after a day.
    h.clock
        .advance_ms(township_node::http::idempotency::KEEP_MS + 1);
    let now = h.clock.now_ms();
    let dropped = h
        .state()
        .store
        .write(move |c| township_node::http::idempotency::purge(c, now))
        .await
        .unwrap();
    assert!(dropped >= 4, "{dropped}");
}

#[tokio::test]
async fn the_same_report_sent_twice_at_once_makes_one_incident() {
    let h = Harness::new().await;
    let grid = h
        .user("wang.fang", Role::GridWorker, "330723001001", None)
        .await;
    let body = report("路面塌陷", "其他");
    let key = "parallel-1";
    let answers = futures_util::future::join_all(
        (0..8).map(|_| post(&h, &grid, "/api/v1/incidents", key, body.clone())),
    )
    .await;
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .map(|(_, _, b)| b)
        .collect();
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|b| b["id"] == created[0]["id"]),
        "one incident answered"
    );
    for (status, _, b) in &answers {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::CONFLICT,
            "{status} {b}"
        );
    }
    assert_eq!(incident_count(&h).await, 1);
}

#[tokio::test]
async fn a_report_named_by_the_phone_is_made_once_however_often_it_is_sent() {
    let h = Harness::new().await;
    let grid = h
        .user("wang.fang", Role::GridWorker, "330723001001", None)
        .await;
    let other = h
        .user("li.qiang", Role::GridWorker, "330723001001", None)
        .await;
    // A UUIDv7 made now by the phone (the harness clock's now).
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, (h.clock.now_ms() / 1000) as u64, 0);
    let id = uuid::Uuid::new_v7(ts).to_string();
    let mut body = report("垃圾堆放", "其他");
    body["id"] = json!(id);
    let (status, _, first) = h
        .as_(&grid, "POST", "/api/v1/incidents", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["id"], id.as_str());
    // Sent again (the answer was lost, or the outbox retried after a reload): the same report.
    let (status, _, again) = h
        .as_(&grid, "POST", "/api/v1/incidents", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(incident_count(&h).await, 1);
    // Nobody else can take or probe that id.
    let (status, _, _) = h
        .as_(&other, "POST", "/api/v1/incidents", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Only a fresh UUIDv7.
    for bad in [
        "not-a-uuid",
        "6f1c6a2e-9c1b-4b5e-8f4d-1d2c3b4a5e6f",
        "00000000-0000-7000-8000-000000000000",
    ] {
        body["id"] = json!(bad);
        let (status, _, e) = h
            .as_(&grid, "POST", "/api/v1/incidents", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(e["field"], "id");
    }
    assert_eq!(incident_count(&h).await, 1);
}
