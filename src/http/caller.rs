//! The caller of a request: identified from an API token or the session cookie (expired, idle or
//! disabled credentials identify nobody), handed to handlers as the [`Caller`] extractor.

use crate::codes::{Code, Reason};
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::problem::ApiError;
use crate::app::AppState;
use crate::auth::{Caller, NotNodeWide, Via, bearer, cookie, session};
use crate::store::StoreError;
use crate::users;

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

impl From<NotNodeWide> for ApiError {
    fn from(e: NotNodeWide) -> Self {
        ApiError::Forbidden(Reason::new(Code::PersonOnly, e.to_string()))
    }
}

/// A stored credential, bound to one account record when it was made.
trait Credential: Send + 'static {
    fn username(&self) -> &str;
    fn account(&self) -> &str;
}

impl Credential for session::SessionRow {
    fn username(&self) -> &str {
        &self.username
    }
    fn account(&self) -> &str {
        &self.account
    }
}

impl Credential for session::TokenRow {
    fn username(&self) -> &str {
        &self.username
    }
    fn account(&self) -> &str {
        &self.account
    }
}

/// Looks up a credential and, in the same read, the account record it is bound to: a credential
/// whose record no longer signs in under its username identifies nobody.
async fn bound<C: Credential>(
    state: &AppState,
    lookup: impl FnOnce(&rusqlite::Connection) -> Result<Option<C>, StoreError> + Send + 'static,
) -> Result<Option<(C, users::Account)>, StoreError> {
    state
        .store
        .read(move |conn| {
            let Some(row) = lookup(conn)? else {
                return Ok(None);
            };
            Ok(
                users::find_bound_account(conn, row.username(), Some(row.account()))?
                    .map(|a| (row, a)),
            )
        })
        .await
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
        let found = bound(state, move |conn| session::lookup_token(conn, &hash)).await?;
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
    let found = bound(state, move |conn| session::lookup(conn, &lookup_hash)).await?;
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
