//! Sign-in and sign-out: `POST /api/v1/session`, `GET /api/v1/session`, `DELETE /api/v1/session`.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Caller, Via, password, session, throttle};
use crate::app::AppState;
use crate::audit::Event;
use crate::config::Secret;
use crate::http::extract::ApiJson;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::store::StoreError;
use crate::users;

pub fn routes(r: Routes) -> Routes {
    r.post("/api/v1/session", login)
        .get("/api/v1/session", current)
        .delete("/api/v1/session", logout)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

fn session_cookie(token: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}",
        session::COOKIE_NAME
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("tn_session=; Path=/; Max-Age=0"))
}

fn client_address(request_addr: Option<SocketAddr>) -> Option<IpAddr> {
    request_addr.map(|a| a.ip())
}

fn device_cookie(value: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/api/v1/session; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        throttle::device::COOKIE_NAME,
        365 * 24 * 3600
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("tn_device=; Path=/api/v1/session; Max-Age=0"))
}

/// Sign-in. The attempt is reserved with the throttle before the password is checked; a wrong
/// password, an unknown user and a disabled account all get the same answer after the same work.
async fn login(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    // Cookies set over HTTPS are Secure; over plain HTTP (localhost, the hub's own screen) they
    // cannot be, or the browser would never send them back.
    let secure = request.extensions().get::<crate::tls::OverTls>().is_some();
    let addr = client_address(
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    );
    let headers = request.headers().clone();
    let ApiJson(body): ApiJson<Login> = ApiJson::from_request_compat(request, &state).await?;
    let username = body.username.trim().to_string();
    if username.is_empty() || username.len() > 64 {
        return Err(ApiError::invalid("username", "username is required"));
    }
    if body.password.is_empty() || body.password.len() > 1024 {
        return Err(ApiError::invalid("password", "password is required"));
    }
    let now = state.clock.now_ms();
    let device = super::cookie(&headers, throttle::device::COOKIE_NAME)
        .and_then(|c| throttle::device::verify(&state.device_key, c, &username));
    let attempt = state
        .throttle
        .reserve(&username, addr, device.as_deref(), now)
        .map_err(|throttle::RetryAfter(secs)| ApiError::TooManyRequests(secs))?;

    let lookup = username.clone();
    let account = state
        .store
        .read(move |conn| users::find_account(conn, &lookup))
        .await?;
    let stored = account
        .as_ref()
        .map(|a| a.password_hash.clone())
        .unwrap_or_else(|| password::decoy_hash().to_string());
    let given = Secret::new(body.password);
    let matches = state
        .hasher
        .verify(given.expose().to_string(), stored)
        .await
        .map_err(|_| ApiError::Unavailable("shutting down".into()))?;

    let client = addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
    let ctx = state.write_ctx();
    let account = match account {
        Some(account) if matches && !account.disabled => account,
        other => {
            state.throttle.failed(attempt);
            // The audit says why; the caller learns nothing about which it was.
            let reason = match other {
                Some(a) if matches && a.disabled => "disabled",
                Some(_) => "wrong password",
                None => "unknown user",
            };
            // The first failure from a client in a window is audited now, the rest as one summary
            // when it closes: strangers cannot flood the chain that ships to the county.
            if state.sign_in_failures.record(addr, &username, reason, now) {
                let (who, from) = (username.clone(), client.clone());
                state
                    .store
                    .write(move |conn| {
                        ctx.audit(
                            conn,
                            Event::new(&who, "auth.login_failed", &who)
                                .detail(json!({"client": from, "reason": reason})),
                        )
                    })
                    .await?;
            }
            return Err(ApiError::BadCredentials);
        }
    };
    state.throttle.succeeded(attempt);
    if state.hasher.needs_rehash(&account.password_hash) {
        rehash_later(&state, account.clone(), given);
    }

    // A fresh token at every login: a cookie planted before login is never promoted to a session.
    let token = session::random_secret()?;
    let csrf = session::random_secret()?;
    let token_hash = session::secret_hash(&token);
    let previous = super::cookie(&headers, session::COOKIE_NAME).map(session::secret_hash);
    let (bound, csrf_row) = (account.clone(), csrf.clone());
    state
        .store
        .write(move |conn| {
            if let Some(old) = previous {
                session::delete(conn, &old)?;
            }
            session::insert(conn, &token_hash, &bound, &csrf_row, now, &client)?;
            ctx.audit(
                conn,
                Event::new(&bound.username, "auth.login", &bound.username)
                    .detail(json!({"client": client})),
            )?;
            Ok::<_, StoreError>(())
        })
        .await?;

    let max_age = state.config.auth.session_max.as_secs();
    let me = json!({
        "user": {
            "username": account.username, "display_name": account.display_name, "role": account.role,
            "area": account.area, "department": account.department,
        },
        "csrf_token": csrf,
        "can": super::access::capabilities(account.role),
    });
    let mut response = Json(me).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&token, max_age, secure));
    // This browser has now signed in as this account: later attempts from it are not held by the
    // account-wide limit that strangers elsewhere could fill.
    if let Some(value) = throttle::device::issue(&state.device_key, &account.username) {
        response
            .headers_mut()
            .append(header::SET_COOKIE, device_cookie(&value, secure));
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Replaces an old, cheaper password hash after a sign-in proved the password, off the request:
/// the caller already has their session.
fn rehash_later(state: &AppState, account: users::Account, given: Secret) {
    let state_for_task = state.clone();
    state.tasks.spawn(async move {
        let state = state_for_task;
        let who = account.username.clone();
        let upgraded = users::accounts::upgrade_after_sign_in(
            &state.store,
            state.write_ctx(),
            &state.hasher,
            account,
            given,
        )
        .await;
        match upgraded {
            Ok(true) => tracing::info!(user = %who, "password hash upgraded at sign-in"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(user = %who, error = %e, "could not upgrade the password hash")
            }
        }
    });
}

async fn current(caller: Caller) -> Response {
    let csrf = match &caller.via {
        Via::Session { csrf, .. } => Some(csrf.clone()),
        Via::Token { .. } => None,
    };
    let can = caller
        .role
        .person()
        .map(super::access::capabilities)
        .unwrap_or_default();
    let mut response =
        Json(json!({ "user": caller.me(), "csrf_token": csrf, "can": can })).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    tls: Option<axum::Extension<crate::tls::OverTls>>,
) -> Result<Response, ApiError> {
    let secure = tls.is_some();
    let ctx = state.write_ctx();
    let who = caller.username.clone();
    let token_hash = match &caller.via {
        Via::Session { token_hash, .. } => Some(token_hash.clone()),
        Via::Token { .. } => None,
    };
    state
        .store
        .write(move |conn| {
            if let Some(hash) = token_hash {
                session::delete(conn, &hash)?;
            }
            ctx.audit(conn, Event::new(&who, "auth.logout", &who))?;
            Ok::<_, StoreError>(())
        })
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0, secure));
    Ok(response)
}
