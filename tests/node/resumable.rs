//! Resumable uploads (tus 1.0 core + creation + termination) as a phone on a bad link uses them, and
//! as an attacker would: chunks cut mid-way, offsets that lie, racing chunks, a file that is not what
//! it declared, someone else's upload, more than the declared length, and a day without progress.

use crate::common::harness::*;
use axum::body::{Body, Bytes, to_bytes};
use axum::http::{Request, StatusCode};
use base64::Engine;
use serde_json::{Value, json};
use tower::ServiceExt;
use township_node::auth::roles::Role;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sha(bytes: &[u8]) -> String {
    township_node::blobs::sha256_hex(bytes)
}

/// A JPEG of about `n` KB of noise-like content.
fn photo(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(2_654_435_761)
            .wrapping_add(y.wrapping_mul(40_503));
        image::Rgb([(v >> 3) as u8, (v >> 11) as u8, (v >> 19) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out
}

struct Sent {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Sent {
    fn offset(&self) -> u64 {
        self.headers["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

async fn send(
    h: &Harness,
    s: &Session,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Sent {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "node.test")
        .header("cookie", &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .header("tus-resumable", "1.0.0");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = h
        .router()
        .oneshot(builder.body(body).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, 1 << 22).await.unwrap();
    Sent {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn create_upload(h: &Harness, s: &Session, bytes: &[u8], declared_sha: &str) -> Sent {
    let length = bytes.len().to_string();
    let metadata = format!(
        "filename {},content_type {},sha256 {}",
        b64("IMG_0001.jpg"),
        b64("image/jpeg"),
        b64(declared_sha)
    );
    send(
        h,
        s,
        "POST",
        "/api/v1/uploads",
        &[("upload-length", &length), ("upload-metadata", &metadata)],
        Body::empty(),
    )
    .await
}

async fn patch(h: &Harness, s: &Session, id: &str, offset: u64, chunk: Vec<u8>) -> Sent {
    send(
        h,
        s,
        "PATCH",
        &format!("/api/v1/uploads/{id}"),
        &[
            ("content-type", "application/offset+octet-stream"),
            ("upload-offset", &offset.to_string()),
        ],
        Body::from(chunk),
    )
    .await
}

async fn head(h: &Harness, s: &Session, id: &str) -> Sent {
    send(
        h,
        s,
        "HEAD",
        &format!("/api/v1/uploads/{id}"),
        &[],
        Body::empty(),
    )
    .await
}

async fn reporter(h: &Harness) -> (Session, String) {
    let s = h
        .user("li.na", Role::GridWorker, "330723001001", None)
        .await;
    let incident = h
        .act(
            &s,
            "POST",
            "/api/v1/incidents",
            Some(report("垃圾堆放", "环境卫生")),
        )
        .await
        .expect(StatusCode::CREATED);
    (s, incident["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_photo_sent_in_chunks_resumes_where_the_link_dropped_and_becomes_one_attachment() {
    let h = Harness::new().await;
    let (s, incident) = reporter(&h).await;
    let bytes = photo(600, 500);
    assert!(bytes.len() > 200_000, "{}", bytes.len());
    let created = create_upload(&h, &s, &bytes, &sha(&bytes)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        created.headers["location"].to_str().unwrap(),
        format!("/api/v1/uploads/{id}")
    );
    assert_eq!(created.offset(), 0);

    // The first chunk arrives whole.
    let first = patch(&h, &s, &id, 0, bytes[..65_536].to_vec()).await;
    assert_eq!(first.status, StatusCode::NO_CONTENT, "{}", first.body);
    assert_eq!(first.offset(), 65_536);

    // The second is cut after 40,000 bytes: what arrived is kept.
    let sent_part = Bytes::copy_from_slice(&bytes[65_536..65_536 + 40_000]);
    let stream = futures_util::stream::iter(vec![
        Ok::<Bytes, std::io::Error>(sent_part),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "link dropped",
        )),
    ]);
    let cut = send(
        &h,
        &s,
        "PATCH",
        &format!("/api/v1/uploads/{id}"),
        &[
            ("content-type", "application/offset+octet-stream"),
            ("upload-offset", "65536"),
        ],
        Body::from_stream(stream),
    )
    .await;
    assert!(cut.status.is_client_error(), "{:?}", cut.status);
    let after_cut = head(&h, &s, &id).await;
    assert_eq!(after_cut.status, StatusCode::OK);
    assert_eq!(
        after_cut.offset(),
        105_536,
        "the bytes before the cut count"
    );
    assert_eq!(
        after_cut.headers["upload-length"].to_str().unwrap(),
        bytes.len().to_string()
    );

    // A stale offset (the phone thinks it is still at 65,536) is told where the upload stands.
    let stale = patch(&h, &s, &id, 65_536, bytes[65_536..70_000].to_vec()).await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.offset(), 105_536);

    // The rest in 256 KiB chunks.
    let mut offset = 105_536u64;
    while (offset as usize) < bytes.len() {
        let end = (offset as usize + 262_144).min(bytes.len());
        let sent = patch(&h, &s, &id, offset, bytes[offset as usize..end].to_vec()).await;
        assert_eq!(sent.status, StatusCode::NO_CONTENT, "{}", sent.body);
        offset = sent.offset();
    }
    let done = h
        .act(&s, "GET", &format!("/api/v1/uploads/{id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(done["complete"], true);
    assert_eq!(done["content_type"], "image/jpeg");

    // Attached twice (a retry without a key): one attachment, and the upload is used up.
    let attached = h
        .act(
            &s,
            "POST",
            &format!("/api/v1/incidents/{incident}/attachments"),
            Some(json!({"upload": id})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(attached["sha256"], sha(&bytes));
    h.act(
        &s,
        "POST",
        &format!("/api/v1/incidents/{incident}/attachments"),
        Some(json!({"upload": id})),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    let view = h
        .act(&s, "GET", &format!("/api/v1/incidents/{incident}"), None)
        .await
        .expect(StatusCode::OK);
    let files = view["attachments"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["sha256"], sha(&bytes));
    let (status, _, stored) = h
        .send_raw(
            &s,
            "GET",
            &format!("/api/v1/blobs/{}", sha(&bytes)),
            "text/plain",
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored, bytes, "byte-identical to what the phone sent");
    assert!(
        h.audit_actions()
            .await
            .contains(&"record.change".to_string())
    );
}

#[tokio::test]
async fn a_file_that_is_not_what_it_declared_is_refused_and_dropped() {
    let h = Harness::new().await;
    let (s, incident) = reporter(&h).await;
    let bytes = photo(64, 64);
    let created = create_upload(&h, &s, &bytes, &sha(b"something else")).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let sent = patch(&h, &s, &id, 0, bytes.clone()).await;
    assert_eq!(sent.status.as_u16(), 460, "{}", sent.body);
    // Dropped: not there, not attachable.
    assert_eq!(head(&h, &s, &id).await.status, StatusCode::NOT_FOUND);
    h.act(
        &s,
        "POST",
        &format!("/api/v1/incidents/{incident}/attachments"),
        Some(json!({"upload": id})),
    )
    .await
    .expect(StatusCode::NOT_FOUND);

    // Bytes that are no photo at all, with an honest hash: refused as a type.
    let text = b"#!/bin/sh\necho not a photo\n".to_vec();
    let created = create_upload(&h, &s, &text, &sha(&text)).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let sent = patch(&h, &s, &id, 0, text).await;
    assert_eq!(sent.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn uploads_are_private_bounded_and_checked_before_anything_is_stored() {
    let h = Harness::new().await;
    let (s, incident) = reporter(&h).await;
    let other = h
        .user("zhao.lei", Role::GridWorker, "330723001001", None)
        .await;
    let bytes = photo(80, 80);
    let created = create_upload(&h, &s, &bytes, &sha(&bytes)).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    // Another person cannot see, extend, delete or attach it.
    assert_eq!(head(&h, &other, &id).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        patch(&h, &other, &id, 0, bytes.clone()).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(
            &h,
            &other,
            "DELETE",
            &format!("/api/v1/uploads/{id}"),
            &[],
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    // Unfinished: not attachable.
    h.act(
        &s,
        "POST",
        &format!("/api/v1/incidents/{incident}/attachments"),
        Some(json!({"upload": id})),
    )
    .await
    .expect(StatusCode::CONFLICT);
    // Past the declared length, or more than a chunk: refused, nothing kept.
    let mut long = bytes.clone();
    long.extend_from_slice(b"extra");
    assert_eq!(
        patch(&h, &s, &id, 0, long).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(head(&h, &s, &id).await.offset(), 0);
    // Wrong content type for a chunk.
    let wrong = send(
        &h,
        &s,
        "PATCH",
        &format!("/api/v1/uploads/{id}"),
        &[("content-type", "image/jpeg"), ("upload-offset", "0")],
        Body::from(bytes.clone()),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Declared sizes and metadata are checked at creation.
    let huge = send(
        &h,
        &s,
        "POST",
        "/api/v1/uploads",
        &[
            ("upload-length", "999999999999"),
            ("upload-metadata", &format!("sha256 {}", b64(&sha(b"x")))),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    for (length, metadata) in [
        ("100", "filename cGhvdG8="),
        ("100", "sha256 !!!"),
        ("-1", "sha256 YWJj"),
        ("abc", "sha256 YWJj"),
    ] {
        let bad = send(
            &h,
            &s,
            "POST",
            "/api/v1/uploads",
            &[("upload-length", length), ("upload-metadata", metadata)],
            Body::empty(),
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{length} {metadata}");
    }
    // The owner may end it.
    let deleted = send(
        &h,
        &s,
        "DELETE",
        &format!("/api/v1/uploads/{id}"),
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(head(&h, &s, &id).await.status, StatusCode::NOT_FOUND);
    // At most 32 unfinished at once per person.
    for _ in 0..32 {
        assert_eq!(
            create_upload(&h, &s, &bytes, &sha(&bytes)).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        create_upload(&h, &s, &bytes, &sha(&bytes)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Nobody signed in: nothing.
    let anonymous = h.call("POST", "/api/v1/uploads", &[], None).await;
    assert_eq!(anonymous.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn racing_chunks_at_one_offset_move_the_upload_on_once() {
    let h = Harness::new().await;
    let (s, _) = reporter(&h).await;
    let bytes = photo(200, 200);
    let created = create_upload(&h, &s, &bytes, &sha(&bytes)).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let half = bytes.len() / 2;
    let (a, b) = tokio::join!(
        patch(&h, &s, &id, 0, bytes[..half].to_vec()),
        patch(&h, &s, &id, 0, bytes[..half].to_vec()),
    );
    let statuses = [a.status, b.status];
    assert!(statuses.contains(&StatusCode::NO_CONTENT), "{statuses:?}");
    let now = head(&h, &s, &id).await.offset();
    assert_eq!(now as usize, half);
    let rest = patch(&h, &s, &id, now, bytes[half..].to_vec()).await;
    assert_eq!(rest.status, StatusCode::NO_CONTENT, "{}", rest.body);
    let done = h
        .act(&s, "GET", &format!("/api/v1/uploads/{id}"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        done["complete"], true,
        "the SHA-256 matched: no chunk was doubled"
    );
}

#[tokio::test]
async fn an_upload_left_for_a_day_is_dropped_with_its_file() {
    let h = Harness::new().await;
    let (s, _) = reporter(&h).await;
    let bytes = photo(100, 100);
    let created = create_upload(&h, &s, &bytes, &sha(&bytes)).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    patch(&h, &s, &id, 0, bytes[..1000].to_vec()).await;
    let file = h.state().data_dir.join("uploads").join(&id);
    assert!(file.exists());
    let data_dir = h.state().data_dir.clone();
    let now = START_MS + 25 * 60 * MINUTE;
    let dropped = h
        .state()
        .store
        .write(move |conn| township_node::uploads::purge(conn, &data_dir, now))
        .await
        .unwrap();
    assert_eq!(dropped, 1);
    assert!(!file.exists());
    assert_eq!(head(&h, &s, &id).await.status, StatusCode::NOT_FOUND);
}
