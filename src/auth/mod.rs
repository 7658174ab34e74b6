//! Authentication and authorization: who is calling (session cookie or API token), whether their role
//! may use the route (one table, [`access`]), CSRF for cookie-authenticated changes, login throttling.

pub mod access;
pub mod actor;
pub mod password;
pub mod roles;
mod routes;
pub mod session;
pub mod throttle;

pub use routes::routes;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::Serialize;
use township_sync::AreaCode;

use crate::app::AppState;
use crate::http::problem::ApiError;
use crate::store::StoreError;
use crate::users;
use actor::{Actor, ActorRole};

/// How the caller proved who they are.
#[derive(Debug, Clone)]
pub enum Via {
    Session { token_hash: String, csrf: String },
    Token { id: String },
}

/// An authenticated caller, put into request extensions by the access middleware: the acting person
/// and how they proved who they are. Domain functions take the [`Actor`] it derefs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub via: Via,
}

impl std::ops::Deref for Caller {
    type Target = Actor;
    fn deref(&self) -> &Actor {
        &self.actor
    }
}

/// What the API says about the current user.
#[derive(Debug, Clone, Serialize)]
pub struct Me {
    pub username: String,
    pub display_name: String,
    pub role: ActorRole,
    pub area: AreaCode,
    pub department: Option<String>,
}

impl Caller {
    fn of(account: users::Account, via: Via) -> Caller {
        Caller {
            actor: Actor::person(account.username, account.role, account.area)
                .with_display_name(account.display_name)
                .with_department(account.department),
            via,
        }
    }

    /// For what concerns the node as a whole (its sync peers, its audit log): the caller's area must
    /// cover the node's. An admin of one village signed in at the township manages that village's
    /// accounts there, never the township's peers or its log.
    pub fn require_node_wide(&self, node_area: &AreaCode) -> Result<(), ApiError> {
        if self.area.contains(node_area) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this concerns the whole node (area {node_area}); your account covers only {}",
                self.area
            )))
        }
    }

    pub fn me(&self) -> Me {
        Me {
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            role: self.role,
            area: self.area.clone(),
            department: self.department.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The value of one cookie from the request headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Refreshing `last_seen` on every request would be a write per click; a minute is precise enough
/// for a 30-minute idle timeout.
const TOUCH_AFTER_MS: i64 = 60_000;

/// Identifies the caller from an API token or a session cookie. Unknown, expired or disabled
/// credentials identify nobody (the route's rule then decides between 401 and public access).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Caller>, ApiError> {
    let now = state.clock.now_ms();
    if let Some(token) = bearer(headers).filter(|t| t.starts_with(session::TOKEN_PREFIX)) {
        let hash = session::secret_hash(token);
        let found = state
            .store
            .read(move |conn| {
                let Some(row) = session::lookup_token(conn, &hash)? else {
                    return Ok::<_, StoreError>(None);
                };
                Ok(
                    users::find_bound_account(conn, &row.username, Some(&row.account))?
                        .map(|a| (row, a)),
                )
            })
            .await?;
        let Some((row, account)) = found else {
            return Ok(None);
        };
        if account.disabled {
            return Ok(None);
        }
        let id = row.id.clone();
        state.spawn_write(move |conn| session::touch_token(conn, &id, now));
        return Ok(Some(Caller::of(account, Via::Token { id: row.id })));
    }
    let Some(token) = cookie(headers, session::COOKIE_NAME) else {
        return Ok(None);
    };
    let hash = session::secret_hash(token);
    let lookup_hash = hash.clone();
    let found = state
        .store
        .read(move |conn| {
            let Some(row) = session::lookup(conn, &lookup_hash)? else {
                return Ok::<_, StoreError>(None);
            };
            Ok(
                users::find_bound_account(conn, &row.username, Some(&row.account))?
                    .map(|a| (row, a)),
            )
        })
        .await?;
    let Some((row, account)) = found else {
        return Ok(None);
    };
    let auth = &state.config.auth;
    let idle_ms = auth.session_idle.as_millis() as i64;
    let max_ms = auth.session_max.as_millis() as i64;
    if now - row.last_seen_ms > idle_ms || now - row.created_ms > max_ms || account.disabled {
        let expired = hash.clone();
        state.spawn_write(move |conn| session::delete(conn, &expired).map(|_| ()));
        return Ok(None);
    }
    if now - row.last_seen_ms > TOUCH_AFTER_MS {
        let touched = hash.clone();
        state.spawn_write(move |conn| session::touch(conn, &touched, now));
    }
    Ok(Some(Caller::of(
        account,
        Via::Session {
            token_hash: hash,
            csrf: row.csrf_token,
        },
    )))
}
