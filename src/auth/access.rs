//! The access table: for every route, who may call it. One table, so a reviewer can read the whole
//! policy in one screen, and a test checks that every route the router has is in it. A route missing
//! from the table is refused (fail closed), never opened by accident.
//!
//! The table decides by role; the area rule (a user sees and changes only records inside their area)
//! depends on the record and is checked by the handlers through [`super::Caller::can_reach`].

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::roles::Role::{self, Admin, CountyIt, GridWorker, TownshipStaff};
use super::{Via, authenticate};
use crate::app::AppState;
use crate::http::problem::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in user.
    SignedIn,
    /// Signed-in users holding one of these roles.
    Roles(&'static [Role]),
}

pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

const fn rule(method: &'static str, path: &'static str, access: Access) -> Rule {
    Rule {
        method,
        path,
        access,
    }
}

const ACCOUNT_ADMINS: &[Role] = &[Admin, CountyIt];
/// Who may report an incident: everyone but department handlers, who handle rather than report.
const REPORTERS: &[Role] = &[GridWorker, TownshipStaff, CountyIt, Admin];

pub const RULES: &[Rule] = &[
    rule("GET", "/healthz", Access::Public),
    rule("GET", "/readyz", Access::Public),
    // Protected by its own bearer token when http.metrics_token is set, so Prometheus needs no account.
    rule("GET", "/metrics", Access::Public),
    rule("GET", "/api/v1/node", Access::Public),
    rule("GET", "/api/v1/openapi.json", Access::Public),
    rule("POST", "/api/v1/session", Access::Public),
    rule("GET", "/api/v1/session", Access::SignedIn),
    rule("DELETE", "/api/v1/session", Access::SignedIn),
    rule("GET", "/api/v1/users", Access::Roles(ACCOUNT_ADMINS)),
    rule("POST", "/api/v1/users", Access::Roles(ACCOUNT_ADMINS)),
    rule(
        "POST",
        "/api/v1/users/{username}/password",
        Access::Roles(ACCOUNT_ADMINS),
    ),
    rule(
        "POST",
        "/api/v1/users/{username}/disable",
        Access::Roles(ACCOUNT_ADMINS),
    ),
    rule(
        "POST",
        "/api/v1/users/{username}/rename",
        Access::Roles(ACCOUNT_ADMINS),
    ),
    rule("GET", "/api/v1/audit", Access::Roles(ACCOUNT_ADMINS)),
    rule("POST", "/api/v1/incidents", Access::Roles(REPORTERS)),
    rule("GET", "/api/v1/incidents", Access::SignedIn),
    rule("GET", "/api/v1/incidents/export.csv", Access::SignedIn),
    rule("GET", "/api/v1/incidents/export.geojson", Access::SignedIn),
    rule("GET", "/api/v1/incidents/{id}", Access::SignedIn),
    // Which action each role may take depends on the incident's state; the workflow decides (403).
    rule(
        "POST",
        "/api/v1/incidents/{id}/transitions",
        Access::SignedIn,
    ),
    rule("POST", "/api/v1/incidents/{id}/comments", Access::SignedIn),
    rule(
        "POST",
        "/api/v1/incidents/{id}/rating",
        Access::Roles(&[GridWorker, TownshipStaff, Admin]),
    ),
    rule(
        "POST",
        "/api/v1/incidents/{id}/attachments",
        Access::SignedIn,
    ),
    rule("GET", "/api/v1/indicators", Access::SignedIn),
    rule("GET", "/api/v1/catalog", Access::SignedIn),
    rule("GET", "/api/v1/blobs/{sha256}", Access::SignedIn),
    rule("GET", "/api/v1/blobs/{sha256}/thumbnail", Access::SignedIn),
    // Nodes authenticate with the Ed25519 handshake inside the WebSocket, not with accounts.
    rule("GET", "/api/v1/sync", Access::Public),
    rule("GET", "/api/v1/sync/status", Access::SignedIn),
    rule("GET", "/api/v1/nodes", Access::Roles(ACCOUNT_ADMINS)),
    rule("POST", "/api/v1/nodes", Access::Roles(ACCOUNT_ADMINS)),
    rule(
        "DELETE",
        "/api/v1/nodes/{id}",
        Access::Roles(ACCOUNT_ADMINS),
    ),
    // Sensors: every signed-in role, filtered to the caller's area by the handlers.
    rule("GET", "/api/v1/sensors", Access::SignedIn),
    rule("GET", "/api/v1/sensors/{id}/readings", Access::SignedIn),
    rule("GET", "/api/v1/sensors/{id}/readings.csv", Access::SignedIn),
    rule("GET", "/api/v1/stream", Access::SignedIn),
];

pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    RULES.iter().find(|r| r.method == method && r.path == path)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Where the browser sends `Origin`, it must be this node itself.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

/// The middleware applied to every matched route: authenticate, apply the route's rule, check CSRF.
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(rule) = path.as_deref().and_then(|p| rule_for(request.method(), p)) else {
        // A known path with a method it does not serve: let the router answer 405 with Allow.
        if path
            .as_deref()
            .is_some_and(|p| RULES.iter().any(|r| r.path == p))
        {
            return next.run(request).await;
        }
        tracing::error!(method = %request.method(), path = ?path, "route has no access rule; refusing");
        return ApiError::Forbidden("this route has no access rule".into()).into_response();
    };
    // Public routes never need the caller, and skipping the lookup keeps health checks off the database.
    let caller = if rule.access == Access::Public {
        None
    } else {
        match authenticate(&state, request.headers()).await {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        }
    };
    match (rule.access, &caller) {
        (Access::Public, _) => {}
        (_, None) => return ApiError::Unauthorized.into_response(),
        (Access::SignedIn, Some(_)) => {}
        (Access::Roles(roles), Some(c)) => {
            if !c.is_any(roles) {
                return ApiError::Forbidden(format!("the {} role may not do this", c.role))
                    .into_response();
            }
        }
    }
    if !is_safe(request.method()) {
        if !same_origin(request.headers()) {
            return ApiError::Forbidden("cross-origin request refused".into()).into_response();
        }
        if let Some(super::Caller {
            via: Via::Session { csrf, .. },
            ..
        }) = &caller
        {
            let presented = request
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok());
            let matches = presented.is_some_and(|p| {
                ring::digest::digest(&ring::digest::SHA256, p.as_bytes()).as_ref()
                    == ring::digest::digest(&ring::digest::SHA256, csrf.as_bytes()).as_ref()
            });
            if !matches {
                return ApiError::Forbidden("missing or wrong X-CSRF-Token".into()).into_response();
            }
        }
    }
    if let Some(c) = caller {
        request.extensions_mut().insert(c);
    }
    next.run(request).await
}
