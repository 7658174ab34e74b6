//! Assembles the HTTP router: system routes, the API, the embedded UI, and the middleware every
//! request passes through (request id, tracing, metrics, security headers, problem details, limits).
//!
//! Domains own their routes; this module only mounts them. [`app`] needs no socket, so most handler
//! tests call it with `tower::ServiceExt::oneshot`.

pub mod access;
pub mod caller;
pub mod csv;
pub mod extract;
pub mod idempotency;
pub mod problem;
pub mod routes;
mod system;
pub mod ui;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::AppState;

/// The route label used for metrics when no route template matched (UI files, the shell, 404s).
const FALLBACK_ROUTE: &str = "fallback";

/// A matched route template, carried from routing to the metrics middleware on the response.
#[derive(Clone)]
struct RouteLabel(String);

/// Every route of the node, through the one builder that records them (see [`routes::Routes`]).
pub fn all_routes(config: &crate::config::Config) -> routes::Routes {
    let r = routes::Routes::new();
    let r = system::routes(r);
    let r = crate::auth::routes(r);
    let r = crate::users::routes(r);
    let r = crate::areas::routes::routes(r);
    let r = crate::map::routes::routes(r);
    let r = crate::audit::routes(r);
    let r = crate::incidents::routes(r, config.incidents.max_attachment_bytes);
    let r = crate::sync::routes(r);
    let r = crate::telemetry::routes(r);
    let r = crate::rules::routes(r);
    let r = crate::warnings::routes(r);
    let r = crate::broadcast::routes(r);
    let r = crate::cap::routes(r);
    let r = crate::tls::routes(r);
    let r = crate::uploads::routes(r);
    crate::blobs::routes(r)
}

pub fn app(state: AppState) -> Router {
    let http = &state.config.http;
    // Layers wrap everything added before them, so the last one here sees a request first: request
    // id, then tracing, metrics, compression, security headers, problem details, panics, timeout.
    let hosts = std::sync::Arc::new(AllowedHosts::new(&http.tls_names));
    let csp = content_security_policy(state.config.map.external_origin().as_deref());
    // The emergency-broadcast platform's endpoint is authorised by each package's signature,
    // not by a session or token, so it is mounted outside the access check.
    let ebd = crate::ebd::routes(&state)
        .map(|r| r.route_layer(middleware::from_fn(label_route)))
        .unwrap_or_default();
    all_routes(&state.config)
        .into_router()
        // Inside the access check, so the caller is known; a retried POST is answered from here.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotent,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), access::authorize))
        .route_layer(middleware::from_fn(label_route))
        .merge(ebd)
        .fallback(ui::fallback)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            redirect_lan_browsers,
        ))
        .layer(middleware::from_fn_with_state(hosts, check_host))
        // Extractors (JSON, form, multipart) refuse bodies over the limit with 413.
        .layer(DefaultBodyLimit::max(http.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, http.request_timeout))
        .layer(CatchPanicLayer::new())
        .layer(middleware::map_response(problem::normalize))
        .layer(middleware::from_fn_with_state(csp, security_headers))
        .layer(CompressionLayer::new())
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request
                .extensions()
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Paths a browser on the LAN is sent to HTTPS for: the app's pages and assets. The API (devices,
/// other nodes, scripts), the health and metrics probes and the certificate pages stay on plain
/// HTTP, which is how a phone fetches the CA before it can use HTTPS at all.
fn redirected_to_https(path: &str) -> bool {
    !(path == "/api"
        || path.starts_with("/api/")
        || matches!(
            path,
            "/healthz" | "/readyz" | "/metrics" | "/ca" | "/ca.crt" | "/ca/qr.svg"
        )
        || path.starts_with("/ebd/"))
}

/// Sends a LAN browser that opened the plain-HTTP address to the same page over HTTPS (308), so
/// phones get a secure context. Requests from this machine are served as they are: `localhost` is a
/// secure context already and the hub's own screen and scripts need no certificate.
async fn redirect_lan_browsers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let over_tls = request.extensions().get::<crate::tls::OverTls>().is_some();
    let safe = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let from_lan = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| !c.0.ip().is_loopback() && !c.0.ip().to_canonical().is_loopback());
    if !over_tls
        && safe
        && from_lan
        && redirected_to_https(request.uri().path())
        && let Some(port) = state.lan_tls().and_then(|t| t.port())
        && let Some(host) = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    {
        let host = match host.strip_prefix('[') {
            Some(rest) => format!("[{}]", rest.split(']').next().unwrap_or_default()),
            None => host.split(':').next().unwrap_or_default().to_string(),
        };
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let port = if port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{port}{target}")) {
            let mut response = Response::new(axum::body::Body::empty());
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            response.headers_mut().insert(header::LOCATION, location);
            return response;
        }
    }
    next.run(request).await
}

/// The host names the node answers to (besides IP addresses): `localhost`, this machine's host name
/// and `<hostname>.local`, and `http.tls_names`.
#[derive(Debug, Clone)]
pub struct AllowedHosts(std::collections::HashSet<String>);

impl AllowedHosts {
    pub fn new(configured: &[String]) -> AllowedHosts {
        let mut names: std::collections::HashSet<String> = configured
            .iter()
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        names.insert("localhost".into());
        let hostname = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .to_ascii_lowercase();
        if !hostname.is_empty() {
            names.insert(format!("{hostname}.local"));
            names.insert(hostname);
        }
        AllowedHosts(names)
    }

    /// Whether a `Host` header value (with or without a port) names this node. An IP literal always
    /// does: DNS rebinding needs a name, and a browser sending an address went to that address.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if let Some(v6) = host.strip_prefix('[') {
            return v6
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        let name = host.rsplit_once(':').map_or(host.as_str(), |(n, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host.as_str()
            }
        });
        name.parse::<std::net::Ipv4Addr>().is_ok() || self.0.contains(name.trim_end_matches('.'))
    }
}

/// Routes that browsers never load and that other machines reach under names of their own: the
/// sync socket (authenticated by its handshake), health checks, and metrics (loopback or token).
const ANY_HOST: &[&str] = &["/healthz", "/readyz", "/metrics", "/api/v1/sync"];

/// Refuses requests naming a host this node does not answer to, with 421.
async fn check_host(
    State(hosts): State<std::sync::Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    if let Some(host) = host
        && !ANY_HOST.contains(&request.uri().path())
        && !hosts.allows(&host)
    {
        return axum::response::IntoResponse::into_response(problem::ApiError::Misdirected(
            format!(
                "this node does not answer to the name `{}`; add it to http.tls_names",
                township_drivers::untrusted::Untrusted(&host)
            )
            .into(),
        ));
    }
    next.run(request).await
}

async fn label_route(request: Request, next: Next) -> Response {
    let label = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(label) = label {
        response.extensions_mut().insert(RouteLabel(label));
    }
    response
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or(FALLBACK_ROUTE, |l| l.0.as_str())
        .to_string();
    state.metrics.record_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The UI loads nothing from elsewhere, except map tiles from the tile server an operator
/// configured (`[map] tile_url`, checked to be a plain https origin).
fn content_security_policy(tile_origin: Option<&str>) -> HeaderValue {
    let images = match tile_origin {
        Some(origin) => format!("'self' data: blob: {origin}"),
        None => "'self' data: blob:".to_string(),
    };
    let policy = format!(
        "default-src 'self'; img-src {images}; media-src 'self' blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static(
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ))
}

/// Headers that cost nothing and close whole classes of browser attacks on a LAN service.
async fn security_headers(
    axum::extract::State(csp): axum::extract::State<HeaderValue>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name: HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(csp);
    response
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{Request as HttpRequest, StatusCode};
    use tower::ServiceExt;

    use crate::app::AppState;
    use crate::clock::Clock;
    use crate::config::Config;
    use crate::node::NodeInfo;
    use crate::store::{DB_FILE, Store};

    async fn state(dir: &std::path::Path) -> AppState {
        let config = Config::default();
        let store = Store::create(&dir.join(DB_FILE), &config.store).unwrap();
        let (key, _) = township_sync::NodeKey::generate().unwrap();
        let node = NodeInfo {
            node_id: "0123456789abcdef0123456789abcdef".into(),
            public_key: key.public_key().to_string(),
            area: "330723001001".parse().unwrap(),
            role: township_sync::NodeRole::Village,
            name: "王宅村".into(),
        };
        let keys = crate::app::NodeKeys {
            node: key,
            cap: crate::cap::CapKey::load_or_create(dir).unwrap(),
        };
        AppState::new(node, keys, b"salt", config, store, Clock::manual(0), None)
    }

    async fn call(
        state: &AppState,
        method: &str,
        uri: &str,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let request = HttpRequest::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = super::app(state.clone()).oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            to_bytes(body, 1 << 20).await.unwrap().to_vec(),
        )
    }

    #[tokio::test]
    async fn healthz_has_the_contract_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state(tmp.path()).await;
        let (status, headers, body) = call(&state, "GET", "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["role"], "village");
        assert_eq!(v["area"], "330723001001");
        assert_eq!(v["node_id"], "0123456789abcdef0123456789abcdef");
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        state.store.close().await;
    }

    #[tokio::test]
    async fn readyz_turns_503_while_draining() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state(tmp.path()).await;
        assert_eq!(call(&state, "GET", "/readyz").await.0, StatusCode::OK);
        state.shutdown.cancel();
        let (status, headers, _) = call(&state, "GET", "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["content-type"], "application/problem+json");
        state.store.close().await;
    }

    #[tokio::test]
    async fn rejections_become_problem_documents() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state(tmp.path()).await;
        let (status, headers, body) = call(&state, "PUT", "/metrics").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["content-type"], "application/problem+json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 405);
        assert!(headers.contains_key("allow"));
        state.store.close().await;
    }
}
