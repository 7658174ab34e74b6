//! Authentication and authorization: who is calling (session cookie or API token), whether their role
//! may use the route (one table, [`access`]), passwords, sessions and sign-in throttling. The HTTP
//! side of it (finding the caller of a request, the middleware that applies the table, CSRF) is in
//! `crate::http::caller` and `crate::http::access`.

pub mod access;
pub mod actor;
pub mod password;
pub mod roles;
mod routes;
pub mod session;
pub mod throttle;

pub use routes::routes;

use axum::http::{HeaderMap, header};
use serde::Serialize;
use township_sync::AreaCode;

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

/// A caller whose area does not cover the node's asked for something that concerns the whole node.
#[derive(Debug, thiserror::Error)]
#[error("this concerns the whole node (area {node_area}); your account covers only {caller_area}")]
pub struct NotNodeWide {
    pub node_area: AreaCode,
    pub caller_area: AreaCode,
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
    pub fn of(account: users::Account, via: Via) -> Caller {
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
    pub fn require_node_wide(&self, node_area: &AreaCode) -> Result<(), NotNodeWide> {
        if self.area.contains(node_area) {
            Ok(())
        } else {
            Err(NotNodeWide {
                node_area: node_area.clone(),
                caller_area: self.area.clone(),
            })
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

/// The API token in an `Authorization: Bearer` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}
