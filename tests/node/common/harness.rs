//! An in-process node for tests: a real data directory and store, the real router driven with
//! `tower::ServiceExt::oneshot`, and a manual clock so deadlines and timeouts are tested without sleeps.

#![allow(dead_code)]

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use township_node::app::{self, AppState, OpenedNode};
use township_node::auth::roles::Role;
use township_node::auth::{password, session};
use township_node::clock::Clock;
use township_node::config::{Config, Secret};
use township_node::node::{self, DataDir, InitRequest};
use township_node::store::StoreError;
use township_node::users::{Actor, NewUser};

pub use super::Session;

pub const START_MS: i64 = 1_790_000_000_000;
pub const MINUTE: i64 = 60_000;
pub const ADMIN_PW: &str = "Admin-Pass-2026";

pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub opened: OpenedNode,
    pub clock: Clock,
}

/// What a request came back with; [`Answer::expect`] asserts the status and returns the body.
#[derive(Debug)]
pub struct Answer {
    /// `METHOD uri`, for the failure message.
    pub request: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The body, after asserting the status (the body is in the message when it differs).
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}: {}", self.request, self.body);
        self.body
    }
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_config(Config::default()).await
    }

    /// `s` sends `method uri` with an optional JSON body; pair with [`Answer::expect`].
    pub async fn act(&self, s: &Session, method: &str, uri: &str, body: Option<Value>) -> Answer {
        let (status, headers, body) = self.as_(s, method, uri, body).await;
        Answer {
            request: format!("{method} {uri}"),
            status,
            headers,
            body,
        }
    }

    pub async fn with_config(mut config: Config) -> Harness {
        super::capture_logs();
        // Requests in these tests name the host node.test, as a browser would name the hub.
        config.http.tls_names.push("node.test".into());
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        node::init(
            &dir,
            InitRequest {
                area: "330723001".parse().unwrap(),
                role: township_sync::NodeRole::Township,
                name: "熟溪街道".into(),
                admin_password_hash: password::hash(ADMIN_PW, password::MIN_ITERATIONS).unwrap(),
                upstream: None,
            },
            &config.store,
        )
        .await
        .unwrap();
        let clock = Clock::manual(START_MS);
        let opened = app::open_with_clock(&dir, config, clock.clone())
            .await
            .unwrap();
        Harness { tmp, opened, clock }
    }

    pub fn state(&self) -> &AppState {
        &self.opened.state
    }

    pub fn router(&self) -> Router {
        township_node::http::app(self.state().clone())
    }

    pub fn cli(&self) -> Actor {
        Actor::person("test", Role::Admin, self.state().node.area.clone())
    }

    pub async fn add_user(&self, username: &str, role: Role, area: &str, department: Option<&str>) {
        township_node::users::accounts::add(
            &self.state().store,
            self.state().write_ctx(),
            &self.state().hasher,
            self.cli(),
            NewUser {
                username: username.into(),
                role,
                area: area.parse().unwrap(),
                department: department.map(String::from),
                display_name: None,
                phone: None,
                password: Secret::new(format!("{username}-password")),
            },
        )
        .await
        .unwrap();
    }

    /// A session made directly in the store, so walking every route does not cost a PBKDF2 each.
    pub async fn session_for(&self, username: &str) -> Session {
        let token = session::random_secret().unwrap();
        let csrf = session::random_secret().unwrap();
        let (hash, user, c, now) = (
            session::secret_hash(&token),
            username.to_string(),
            csrf.clone(),
            self.clock.now_ms(),
        );
        let account = self
            .state()
            .store
            .read(move |conn| township_node::users::find_account(conn, &user))
            .await
            .unwrap()
            .expect("session_for names an existing user");
        self.state()
            .store
            .write(move |conn| session::insert(conn, &hash, &account, &c, now, "test"))
            .await
            .unwrap();
        Session {
            cookie: format!("{}={token}", session::COOKIE_NAME),
            csrf,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "node.test");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let body = match body {
            Some(v) => {
                builder = builder.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut request = builder.body(body).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40000))));
        let response = self.router().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        // An event stream never ends by itself; its status and headers are what a caller checks here.
        if parts
            .headers
            .get("content-type")
            .is_some_and(|v| v == "text/event-stream")
        {
            return (parts.status, parts.headers, Value::Null);
        }
        let bytes = to_bytes(body, 1 << 22).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, json)
    }

    pub async fn as_(
        &self,
        s: &Session,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        self.call(
            method,
            uri,
            &[("cookie", &s.cookie), ("x-csrf-token", &s.csrf)],
            body,
        )
        .await
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Session, (StatusCode, HeaderMap)> {
        let (status, headers, body) = self
            .call(
                "POST",
                "/api/v1/session",
                &[],
                Some(json!({"username": username, "password": password})),
            )
            .await;
        if status != StatusCode::OK {
            return Err((status, headers));
        }
        let cookie = headers["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        Ok(Session {
            cookie,
            csrf: body["csrf_token"].as_str().unwrap().to_string(),
        })
    }

    pub async fn audit_actions(&self) -> Vec<String> {
        self.state()
            .store
            .read(|conn| {
                let mut stmt = conn.prepare("SELECT action FROM audit_log ORDER BY seq")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                Ok::<_, StoreError>(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap()
    }
}

impl Harness {
    /// A signed-in session for a new user of `role` in `area`, created directly.
    pub async fn user(
        &self,
        username: &str,
        role: Role,
        area: &str,
        department: Option<&str>,
    ) -> Session {
        self.add_user(username, role, area, department).await;
        self.session_for(username).await
    }

    /// Sends raw bytes with a content type (multipart uploads).
    pub async fn send_raw(
        &self,
        s: &Session,
        method: &str,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "node.test")
            .header("cookie", &s.cookie)
            .header("x-csrf-token", &s.csrf)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        let response = self.router().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            to_bytes(body, 1 << 26).await.unwrap().to_vec(),
        )
    }
}

/// A reading as a driver hands it over.
pub fn reading(
    device: &str,
    metric: &str,
    t: i64,
    v: f64,
    quality: township_drivers::Quality,
) -> township_drivers::Reading {
    township_drivers::Reading {
        device: device.into(),
        metric: metric.into(),
        time_ms: t,
        value: v,
        unit: None,
        quality,
    }
}

impl Harness {
    /// Hands readings over through the telemetry sink, as drivers do, and waits for their commit.
    pub async fn commit(&self, readings: Vec<township_drivers::Reading>) {
        let rx = self
            .state()
            .telemetry
            .sink()
            .send_acked(readings)
            .await
            .unwrap();
        assert!(rx.await.unwrap(), "committed");
    }
}

/// A multipart/form-data body with one file field; returns (content type, body).
pub fn multipart(field: &str, filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----township-test-boundary-7d3a";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The body of a report in a village of 熟溪街道.
pub fn report(title: &str, category: &str) -> Value {
    json!({"category": category, "title": title, "description": format!("{title}，请尽快处理。"), "area": "330723001001",
           "location": {"lat": 28.8921, "lon": 119.8165}, "place": "熟溪路口"})
}
