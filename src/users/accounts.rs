//! Account operations that hash a password: creating an account, setting a password, and upgrading
//! an old hash after a sign-in proved the password. The hashing runs through the node's
//! [`Hasher`] (off the async workers, a few at a time) before the write job, so the writer thread
//! never waits on PBKDF2.

use crate::auth::password::{HashError, Hasher, PasswordError};
use crate::config::Secret;
use crate::invalid::Invalid;
use crate::records::WriteCtx;
use crate::store::Store;

use super::{Account, Actor, NewUser, UserError, UserView};

fn hash_error(e: HashError) -> UserError {
    match e {
        HashError::Password(p @ (PasswordError::Length | PasswordError::Trivial)) => {
            UserError::Invalid(
                Invalid::new("password", p)
                    .code(crate::codes::Code::PasswordWeak)
                    .param("min", crate::auth::password::MIN_PASSWORD_CHARS),
            )
        }
        other => UserError::Hash(other),
    }
}

/// Creates an account record; the password is checked and hashed first.
pub async fn add(
    store: &Store,
    ctx: WriteCtx,
    hasher: &Hasher,
    actor: Actor,
    new: NewUser,
) -> Result<UserView, UserError> {
    super::check_authority(&actor, new.role, &new.area)?;
    super::validate(&new, &ctx.area)?;
    let hash = hasher.hash_new(&new.password).await.map_err(hash_error)?;
    store
        .write(move |conn| super::create(conn, &ctx, &actor, &new, hash))
        .await
}

/// Sets `username`'s password (as its holder, or as someone who manages the account); every other
/// session and token of the account ends.
pub async fn set_password(
    store: &Store,
    ctx: WriteCtx,
    hasher: &Hasher,
    actor: Actor,
    username: String,
    password: Secret,
) -> Result<(), UserError> {
    let hash = hasher.hash_new(&password).await.map_err(hash_error)?;
    store
        .write(move |conn| super::set_password(conn, &ctx, &actor, &username, hash, None))
        .await
}

/// After `account` signed in with `given`: when its hash has fewer iterations than configured now,
/// replaces it (see [`super::upgrade_password_hash`]). Returns whether it did.
pub async fn upgrade_after_sign_in(
    store: &Store,
    ctx: WriteCtx,
    hasher: &Hasher,
    account: Account,
    given: Secret,
) -> Result<bool, UserError> {
    if !hasher.needs_rehash(&account.password_hash) {
        return Ok(false);
    }
    let new_hash = hasher
        .rehash(given.expose().to_string())
        .await
        .map_err(hash_error)?;
    store
        .write(move |conn| super::upgrade_password_hash(conn, &ctx, &account, new_hash))
        .await
}
