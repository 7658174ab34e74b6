//! Uploads, attachments and exports under hostile use, in process (real store and router, manual
//! clock): photos readable exactly when their incident is, thumbnails of files that lie about their
//! size, CSV cells that would run as formulas, the daily upload quota, and files left behind by
//! record writes that never committed.

use crate::common::harness::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use township_node::auth::roles::Role;
use township_node::config::Config;

async fn create(h: &Harness, s: &Session, body: Value) -> String {
    let v = h
        .act(s, "POST", "/api/v1/incidents", Some(body))
        .await
        .expect(StatusCode::CREATED);
    v["id"].as_str().unwrap().to_string()
}

async fn upload(h: &Harness, s: &Session, id: &str, bytes: &[u8]) -> (StatusCode, Value) {
    let (ct, body) = multipart("file", "photo.jpg", bytes);
    let (status, _, out) = h
        .send_raw(
            s,
            "POST",
            &format!("/api/v1/incidents/{id}/attachments"),
            &ct,
            body,
        )
        .await;
    (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
}

async fn get(h: &Harness, s: &Session, path: &str) -> (StatusCode, Vec<u8>) {
    let (status, _, body) = h.send_raw(s, "GET", path, "text/plain", vec![]).await;
    (status, body)
}

/// A baseline JPEG of `w` × `h` pixels.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, 90])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&img)
        .unwrap();
    out
}

/// A tiny JPEG whose frame header claims `w` × `h` pixels: the decompression bomb of the review.
fn lying_jpeg(w: u16, h: u16, salt: u8) -> Vec<u8> {
    let mut bytes = jpeg(16, 16);
    let sof = bytes
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline frame header");
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    // A different comment each time, so each file is a different blob.
    bytes.splice(2..2, [0xFF, 0xFE, 0x00, 0x03, salt]);
    bytes
}

#[tokio::test]
async fn a_photo_is_readable_exactly_when_its_incident_is() {
    let h = Harness::new().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let staff = h
        .user("staff.li", Role::TownshipStaff, "330723001", None)
        .await;
    let water = h
        .user("water.zhao", Role::DeptHandler, "330723001", Some("water"))
        .await;
    let police = h
        .user("police.sun", Role::DeptHandler, "330723001", Some("police"))
        .await;
    let id = create(&h, &grid, report("河道垃圾", "环境卫生")).await;
    let (status, meta) = upload(&h, &grid, &id, &png(64, 48)).await;
    assert_eq!(status, StatusCode::CREATED, "{meta}");
    let sha = meta["sha256"].as_str().unwrap().to_string();
    for (path, what) in [
        (format!("/api/v1/blobs/{sha}"), "photo"),
        (format!("/api/v1/blobs/{sha}/thumbnail"), "thumbnail"),
    ] {
        // Before dispatch, neither department sees the incident, nor its photo.
        assert_eq!(
            get(&h, &water, &path).await.0,
            StatusCode::NOT_FOUND,
            "{what}"
        );
        assert_eq!(
            get(&h, &police, &path).await.0,
            StatusCode::NOT_FOUND,
            "{what}"
        );
    }
    for action in [
        json!({"action": "accept"}),
        json!({"action": "dispatch", "department": "water"}),
    ] {
        let (status, _, v) = h
            .as_(
                &staff,
                "POST",
                &format!("/api/v1/incidents/{id}/transitions"),
                Some(action),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let path = format!("/api/v1/blobs/{sha}");
    assert_eq!(
        get(&h, &water, &path).await.0,
        StatusCode::OK,
        "the lead department"
    );
    assert_eq!(
        get(&h, &police, &path).await.0,
        StatusCode::NOT_FOUND,
        "another department, by the photo's hash"
    );
    assert_eq!(
        get(&h, &police, &format!("/api/v1/incidents/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&h, &staff, &path).await.0, StatusCode::OK);
}

#[tokio::test]
async fn thumbnails_of_files_that_lie_about_their_size_cost_little() {
    let h = Harness::new().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let id = create(&h, &grid, report("围墙开裂", "安全隐患")).await;
    // A real photo-sized JPEG gets a thumbnail, decoded at a reduced scale.
    let (status, meta) = upload(&h, &grid, &id, &jpeg(4000, 3000)).await;
    assert_eq!(status, StatusCode::CREATED, "{meta}");
    let (status, thumb) = get(
        &h,
        &grid,
        &format!(
            "/api/v1/blobs/{}/thumbnail",
            meta["sha256"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let img = image::load_from_memory(&thumb).unwrap();
    assert_eq!((img.width(), img.height()), (320, 240));
    // Sixteen bombs at once: each is answered, none takes the node down, and the second request
    // for the same file is answered from what the first learnt.
    let mut shas = Vec::new();
    for salt in 0..16u8 {
        let bomb = lying_jpeg(7000, 7000, salt);
        assert!(bomb.len() < 1024);
        let (status, meta) = upload(&h, &grid, &id, &bomb).await;
        assert_eq!(status, StatusCode::CREATED, "{meta}");
        shas.push(meta["sha256"].as_str().unwrap().to_string());
    }
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all(shas.iter().map(|sha| {
        let path = format!("/api/v1/blobs/{sha}/thumbnail");
        let (h, grid) = (&h, &grid);
        async move { get(h, grid, &path).await.0 }
    }))
    .await;
    // Each is answered: no thumbnail, or (when decodes queue up) "busy, come back".
    assert!(
        answers.iter().all(|s| *s == StatusCode::NOT_FOUND
            || *s == StatusCode::OK
            || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{answers:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    for sha in &shas {
        let s = get(&h, &grid, &format!("/api/v1/blobs/{sha}/thumbnail"))
            .await
            .0;
        assert!(s == StatusCode::OK || s == StatusCode::NOT_FOUND);
    }
    // The photo itself is still served as it was uploaded.
    assert_eq!(
        get(&h, &grid, &format!("/api/v1/blobs/{}", shas[0]))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn exported_cells_never_run_as_formulas() {
    let h = Harness::new().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let mut body = report("  =HYPERLINK(\"http://evil\",\"点我\")", "其他");
    body["description"] = json!("\t=1+1");
    body["place"] = json!("@SUM(A1:A9)");
    create(&h, &grid, body).await;
    let (status, csv) = get(&h, &grid, "/api/v1/incidents/export.csv").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(csv[3..].to_vec()).unwrap();
    let row = text.lines().nth(1).unwrap();
    // Split per RFC 4180 enough for these cells (no embedded newlines).
    let mut cells = Vec::new();
    let (mut cell, mut quoted) = (String::new(), false);
    for c in row.chars() {
        match (c, quoted) {
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(std::mem::take(&mut cell)),
            (c, _) => cell.push(c),
        }
    }
    cells.push(cell);
    for cell in &cells {
        let trimmed = cell.trim_start();
        assert!(
            !(trimmed.starts_with(['=', '+', '-', '@']) || cell.starts_with(['\t', '\r'])),
            "a cell a spreadsheet would run: {cell:?} in {row}"
        );
    }
    assert!(
        cells
            .iter()
            .any(|c| c == "'=HYPERLINK(\"\"http://evil\"\",\"\"点我\"\")"
                || c.starts_with("'=HYPERLINK"))
    );
    assert!(cells.iter().any(|c| c == "'\t=1+1"), "{cells:?}");
    assert!(cells.iter().any(|c| c == "'@SUM(A1:A9)"), "{cells:?}");
}

#[tokio::test]
async fn the_daily_upload_quota_refuses_with_413_and_stores_nothing() {
    let mut config = Config::default();
    config.incidents.upload_quota_per_day = 200_000;
    let h = Harness::with_config(config).await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let other = h
        .user("grid.zhao", Role::GridWorker, "330723001001", None)
        .await;
    let id = create(&h, &grid, report("围墙开裂", "安全隐患")).await;
    let first = noise_png(200, 200, 1);
    assert!(
        first.len() > 100_000 && first.len() < 200_000,
        "{}",
        first.len()
    );
    assert_eq!(upload(&h, &grid, &id, &first).await.0, StatusCode::CREATED);
    let files = count_files(h.tmp.path());
    let (status, problem) = upload(&h, &grid, &id, &noise_png(200, 200, 2)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("incidents.upload_quota_per_day"),
        "{problem}"
    );
    assert_eq!(count_files(h.tmp.path()), files, "nothing stored");
    // The quota is per person.
    assert_eq!(
        upload(&h, &other, &id, &noise_png(200, 200, 3)).await.0,
        StatusCode::CREATED
    );
    // The next day (Beijing time) it starts again.
    h.clock.advance_ms(24 * 3600 * 1000);
    let grid = h.session_for("grid.wang").await;
    assert_eq!(
        upload(&h, &grid, &id, &noise_png(200, 200, 2)).await.0,
        StatusCode::CREATED
    );
}

/// A PNG that does not compress: about 3 bytes per pixel.
fn noise_png(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn count_files(root: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains("/blobs/") {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn files_no_record_refers_to_are_reported_and_removed_after_the_grace() {
    let h = Harness::new().await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let id = create(&h, &grid, report("围墙开裂", "安全隐患")).await;
    let kept = png(40, 30);
    assert_eq!(upload(&h, &grid, &id, &kept).await.0, StatusCode::CREATED);
    // An upload whose record write never committed left its file behind (as a kill -9 would).
    let blobs = h.state().blobs.clone();
    let orphan = blobs.put(&png(41, 30)).unwrap();
    let referenced = h
        .state()
        .store
        .read(township_node::incidents::referenced_blobs)
        .await
        .unwrap();
    let found = blobs.orphans(&referenced).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].path.ends_with(&orphan));
    // Young files are kept: their record may still be on its way.
    let grace = std::time::Duration::from_secs(3600);
    assert!(blobs.remove_orphans(&referenced, grace).unwrap().is_empty());
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&found[0].path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let removed = blobs.remove_orphans(&referenced, grace).unwrap();
    assert_eq!(removed.len(), 1);
    assert!(!found[0].path.exists());
    assert!(
        blobs
            .read(&township_node::blobs::sha256_hex(&kept))
            .unwrap()
            .is_some()
    );
    assert!(blobs.orphans(&referenced).unwrap().is_empty());
}

#[tokio::test]
async fn uploads_racing_each_other_cannot_pass_the_quota_together() {
    let mut config = Config::default();
    config.incidents.upload_quota_per_day = 200_000;
    let h = Harness::with_config(config).await;
    let grid = h
        .user("grid.wang", Role::GridWorker, "330723001001", None)
        .await;
    let id = create(&h, &grid, report("围墙开裂", "安全隐患")).await;
    let files: Vec<Vec<u8>> = (10..14).map(|seed| noise_png(200, 200, seed)).collect();
    let answers =
        futures_util::future::join_all(files.iter().map(|f| upload(&h, &grid, &id, f))).await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::PAYLOAD_TOO_LARGE)
    );
    // Only the accepted file was written: the others were refused before their bytes were stored.
    let blobs = h.state().blobs.clone();
    let referenced = h
        .state()
        .store
        .read(township_node::incidents::referenced_blobs)
        .await
        .unwrap();
    assert!(blobs.orphans(&referenced).unwrap().is_empty());
}
