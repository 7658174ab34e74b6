//! Server-side sessions and API tokens. The secret a client holds (cookie or bearer token) is 256
//! random bits; only its SHA-256 is stored, so a copy of the database opens no session.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;

pub const COOKIE_NAME: &str = "tn_session";
pub const TOKEN_PREFIX: &str = "tn_";

/// The operating system could not supply random bytes; nothing secret can be made until it can.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the system random source failed")]
pub struct RandomUnavailable;

/// 256 random bits, URL-safe, for a session cookie, an API token or a CSRF token.
pub fn random_secret() -> Result<String, RandomUnavailable> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomUnavailable)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

pub fn secret_hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub username: String,
    /// The account record the session was opened for (see `users::Account::account_ref`).
    pub account: String,
    pub csrf_token: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
}

/// Stores a new session, for a token the caller generated, bound to one account record.
pub fn insert(
    conn: &Connection,
    token_hash: &str,
    account: &crate::users::Account,
    csrf: &str,
    now: i64,
    client: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO sessions (token_hash, username, csrf_token, created_ms, last_seen_ms, client, account) VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
        params![token_hash, account.username, csrf, now, client, account.account_ref()],
    )?;
    Ok(())
}

pub fn lookup(conn: &Connection, token_hash: &str) -> Result<Option<SessionRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT username, csrf_token, created_ms, last_seen_ms, account FROM sessions WHERE token_hash = ?1",
            [token_hash],
            |r| {
                Ok(SessionRow {
                    username: r.get(0)?,
                    csrf_token: r.get(1)?,
                    created_ms: r.get(2)?,
                    last_seen_ms: r.get(3)?,
                    account: r.get(4)?,
                })
            },
        )
        .optional()?)
}

pub fn touch(conn: &Connection, token_hash: &str, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE sessions SET last_seen_ms = ?2 WHERE token_hash = ?1",
        params![token_hash, now],
    )?;
    Ok(())
}

pub fn delete(conn: &Connection, token_hash: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])? > 0)
}

/// Ends every session of a user (password change, disable), optionally keeping one.
pub fn delete_for_user(
    conn: &Connection,
    username: &str,
    keep: Option<&str>,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM sessions WHERE username = ?1 AND token_hash IS NOT ?2",
        params![username, keep],
    )?)
}

pub fn purge_expired(
    conn: &Connection,
    now: i64,
    idle_ms: i64,
    max_ms: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM sessions WHERE last_seen_ms < ?1 OR created_ms < ?2",
        params![now - idle_ms, now - max_ms],
    )?)
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub username: String,
    pub account: String,
}

pub fn insert_token(
    conn: &Connection,
    id: &str,
    token_hash: &str,
    account: &crate::users::Account,
    name: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO api_tokens (id, token_hash, username, name, created_ms, account) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, token_hash, account.username, name, now, account.account_ref()],
    )?;
    Ok(())
}

pub fn lookup_token(conn: &Connection, token_hash: &str) -> Result<Option<TokenRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, username, account FROM api_tokens WHERE token_hash = ?1 AND revoked_ms IS NULL",
            [token_hash],
            |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    username: r.get(1)?,
                    account: r.get(2)?,
                })
            },
        )
        .optional()?)
}

pub fn touch_token(conn: &Connection, id: &str, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE api_tokens SET last_used_ms = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

pub fn revoke_tokens_for_user(
    conn: &Connection,
    username: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE api_tokens SET revoked_ms = ?2 WHERE username = ?1 AND revoked_ms IS NULL",
        params![username, now],
    )?)
}
