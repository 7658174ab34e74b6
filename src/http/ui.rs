//! The web UI, embedded into the binary with rust-embed so a release build serves it from any working
//! directory with nothing beside it.
//!
//! URL rules:
//! - `/assets/{version}/{file}`: a UI file under the build's content version. When the version is
//!   the current one the response is cacheable for a year (`immutable`); old phones on bad Wi-Fi then
//!   load the app once per release. A stale version still gets the current file, but uncached.
//! - `/{file.ext}` (icons, the manifest): served with revalidation; unknown ones are 404.
//! - `/sw.js`: the service worker, never cached by HTTP (browsers check it for updates), with the
//!   content version and the list of this version's files filled in, so it precaches exactly the
//!   files this build serves and drops the previous version's cache.
//! - `/api/...` that no route matched: 404 problem JSON.
//! - any other path: the app shell (`index.html`), never cached, so a new release is picked up at
//!   once and deep links like `/incidents/123` work.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::app::AppState;
use crate::http::problem::{ApiError, Problem};

#[derive(RustEmbed)]
#[folder = "ui/"]
struct Assets;

const SHELL: &str = "index.html";
const SERVICE_WORKER: &str = "sw.js";
const VERSION_PLACEHOLDER: &str = "__UI_VERSION__";
const ASSETS_PLACEHOLDER: &str = "__ASSETS__";
const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";
const NEVER_CACHE: &str = "no-cache, no-store, must-revalidate";

/// The UI as served: its content version and the rendered shell.
#[derive(Debug, Clone)]
pub struct Ui {
    version: String,
    shell: Vec<u8>,
    service_worker: Vec<u8>,
}

impl Ui {
    pub fn load() -> Ui {
        // The version is a digest over every file's digest, so any change to any file changes every
        // asset URL, and ES module imports (relative) stay inside one consistent version.
        let mut names: Vec<String> = Assets::iter().map(|n| n.into_owned()).collect();
        names.sort();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for name in &names {
            if let Some(file) = Assets::get(name) {
                ctx.update(name.as_bytes());
                ctx.update(&file.metadata.sha256_hash());
            }
        }
        let version = hex::encode(&ctx.finish().as_ref()[..6]);
        let shell = Assets::get(SHELL)
            .map(|f| String::from_utf8_lossy(&f.data).replace(VERSION_PLACEHOLDER, &version))
            .unwrap_or_else(|| {
                "<!doctype html><title>township-node</title><p>UI missing from this build.</p>"
                    .into()
            })
            .into_bytes();
        // What the service worker precaches: the files the app loads (under this version's asset
        // URLs) and the root files the shell and manifest name; not the shell (fetched as `/`),
        // the worker itself, or the vendored files' notes.
        let assets: Vec<String> = names
            .iter()
            .filter(|n| n.as_str() != SHELL && n.as_str() != SERVICE_WORKER)
            .filter(|n| !n.ends_with(".md"))
            .map(|n| {
                if n.contains('/') {
                    format!("/assets/{version}/{n}")
                } else {
                    format!("/{n}")
                }
            })
            .collect();
        let assets = serde_json::to_string(&assets).unwrap_or_else(|_| "[]".into());
        let service_worker = Assets::get(SERVICE_WORKER)
            .map(|f| {
                String::from_utf8_lossy(&f.data)
                    .replace(VERSION_PLACEHOLDER, &version)
                    .replace(ASSETS_PLACEHOLDER, &assets)
            })
            .unwrap_or_default()
            .into_bytes();
        Ui {
            version,
            shell,
            service_worker,
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    fn shell_response(&self, method: &Method) -> Response {
        let mut response = if method == Method::HEAD {
            Response::new(Body::empty())
        } else {
            Response::new(Body::from(self.shell.clone()))
        };
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NEVER_CACHE));
        response
    }
}

fn file_response(
    name: &str,
    cache: &'static str,
    method: &Method,
    request: &HeaderMap,
) -> Option<Response> {
    if name == SHELL
        || name == SERVICE_WORKER
        || name
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return None;
    }
    let file = Assets::get(name)?;
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]));
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(file.data.into_owned()))
    };
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/")
        || mime.contains("javascript")
        || mime.contains("json")
        || mime.contains("svg")
    {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Some(response)
}

/// The router's fallback: UI files, the SPA shell, and 404s for unknown API and asset paths.
pub async fn fallback(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return ApiError::NotFound.into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = Problem::new(StatusCode::METHOD_NOT_ALLOWED, None).into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let ui = &state.ui;
    if let Some(rest) = path.strip_prefix("/assets/") {
        let (version, name) = rest.split_once('/').unwrap_or((rest, ""));
        let cache = if version == ui.version() {
            CACHE_FOREVER
        } else {
            REVALIDATE
        };
        return file_response(name, cache, &method, &headers)
            .unwrap_or_else(|| ApiError::NotFound.into_response());
    }
    if path == "/sw.js" && !ui.service_worker.is_empty() {
        let mut response = if method == Method::HEAD {
            Response::new(Body::empty())
        } else {
            Response::new(Body::from(ui.service_worker.clone()))
        };
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NEVER_CACHE));
        return response;
    }
    let last_segment = path.rsplit('/').next().unwrap_or("");
    if last_segment.contains('.') {
        if path == "/index.html" {
            return ui.shell_response(&method);
        }
        let name = path.trim_start_matches('/');
        return file_response(name, REVALIDATE, &method, &headers)
            .unwrap_or_else(|| ApiError::NotFound.into_response());
    }
    ui.shell_response(&method)
}
