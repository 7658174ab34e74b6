//! The installable app's server side: the service worker is served with this build's version and
//! the exact list of files it precaches (every one of which the node serves), never cached by HTTP,
//! and the manifest names icons that exist.

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::common::harness::Harness;

async fn get(h: &Harness, path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let request = Request::builder()
        .uri(path)
        .header("host", "node.test")
        .body(Body::empty())
        .unwrap();
    let response = h.router().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        to_bytes(body, 1 << 24).await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn the_service_worker_precaches_exactly_the_files_this_build_serves() {
    let h = Harness::new().await;
    let (status, headers, body) = get(&h, "/sw.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    let text = String::from_utf8(body).unwrap();
    assert!(!text.contains("__UI_VERSION__") && !text.contains("__ASSETS__"));
    let version = h.state().ui.version().to_string();
    assert!(text.contains(&version));
    let start = text.find("const ASSETS = ").expect("the asset list") + "const ASSETS = ".len();
    let end = start + text[start..].find(";\n").unwrap();
    let assets: Vec<String> = serde_json::from_str(&text[start..end]).unwrap();
    assert!(assets.iter().any(|a| a.ends_with("/js/app.js")));
    assert!(assets.iter().any(|a| a.ends_with("/js/outbox.js")));
    assert!(assets.iter().any(|a| a == "/manifest.webmanifest"));
    assert!(
        !assets
            .iter()
            .any(|a| a.ends_with("index.html") || a.ends_with("sw.js"))
    );
    for asset in &assets {
        let (status, headers, _) = get(&h, asset).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        if asset.starts_with("/assets/") {
            assert!(
                headers["cache-control"]
                    .to_str()
                    .unwrap()
                    .contains("immutable"),
                "{asset}"
            );
        }
    }
    // The raw template is never served.
    let (status, _, _) = get(&h, &format!("/assets/{version}/sw.js")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The manifest's icons exist.
    let (_, _, manifest) = get(&h, "/manifest.webmanifest").await;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    for icon in manifest["icons"].as_array().unwrap() {
        let (status, _, _) = get(&h, icon["src"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{icon}");
    }
}
