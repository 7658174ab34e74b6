//! The middleware every matched route passes through: find the caller, apply the route's rule from
//! the access table ([`crate::auth::access::RULES`]; a route missing from it is refused), and for
//! changes check the origin and, for cookie sessions, the CSRF token.

use crate::codes::{Code, Reason};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::caller::authenticate;
use super::problem::ApiError;
use crate::app::AppState;
use crate::auth::Via;
use crate::auth::access::{Access, RULES, rule_for};

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
                return ApiError::Forbidden(
                    Reason::new(
                        Code::RoleForbidden,
                        format!("the {} role may not do this", c.role),
                    )
                    .param("role", c.role.as_str()),
                )
                .into_response();
            }
        }
    }
    if !is_safe(request.method()) {
        if !same_origin(request.headers()) {
            return ApiError::forbidden(Code::OriginRefused, "cross-origin request refused")
                .into_response();
        }
        if let Some(crate::auth::Caller {
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
                return ApiError::forbidden(Code::CsrfMissing, "missing or wrong X-CSRF-Token")
                    .into_response();
            }
        }
    }
    if let Some(c) = caller {
        request.extensions_mut().insert(c);
    }
    next.run(request).await
}
