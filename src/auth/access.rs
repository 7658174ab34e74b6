//! The access table: for every route, who may call it. One table, so a reviewer can read the whole
//! policy in one screen, and a test checks that every route the router has is in it. A route missing
//! from the table is refused (fail closed), never opened by accident.
//!
//! The middleware that applies it is `crate::http::access::authorize`. The table decides by role;
//! the area rule (a user sees and changes only records inside their area)
//! depends on the record and is checked by the handlers through [`super::Caller::can_reach`].

use axum::http::Method;

use super::roles::Role::{self, Admin, CountyIt, GridWorker, TownshipStaff};

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
/// Who may write rules (inside their area, at a township or above; see `rules::record::may_edit`).
const RULE_EDITORS: &[Role] = &[TownshipStaff, CountyIt, Admin];
/// Who may report an incident: everyone but department handlers, who handle rather than report.
/// Who may order, approve, cancel and correct broadcasts (inside their area, at a township or
/// above; see `broadcast::may_broadcast`).
const BROADCASTERS: &[Role] = &[TownshipStaff, Admin];
const REPORTERS: &[Role] = &[GridWorker, TownshipStaff, CountyIt, Admin];

pub const RULES: &[Rule] = &[
    rule("GET", "/healthz", Access::Public),
    rule("GET", "/readyz", Access::Public),
    // Protected by its own bearer token when http.metrics_token is set, so Prometheus needs no account.
    rule("GET", "/metrics", Access::Public),
    rule("GET", "/api/v1/node", Access::Public),
    // The LAN CA certificate and how to trust it: public by nature, needed before anyone can sign in
    // over HTTPS.
    rule("GET", "/ca.crt", Access::Public),
    rule("GET", "/ca", Access::Public),
    rule("GET", "/ca/qr.svg", Access::Public),
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
    rule("GET", "/api/v1/incidents/work", Access::SignedIn),
    rule("GET", "/api/v1/incidents/work/events", Access::SignedIn),
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
    // Resumable uploads: each person sees and sends only their own (the handlers check).
    rule("POST", "/api/v1/uploads", Access::SignedIn),
    rule("GET", "/api/v1/uploads/{id}", Access::SignedIn),
    rule("PATCH", "/api/v1/uploads/{id}", Access::SignedIn),
    rule("DELETE", "/api/v1/uploads/{id}", Access::SignedIn),
    rule("GET", "/api/v1/indicators", Access::SignedIn),
    rule("GET", "/api/v1/catalog", Access::SignedIn),
    rule("GET", "/api/v1/areas", Access::SignedIn),
    rule("GET", "/api/v1/map", Access::SignedIn),
    rule("GET", "/api/v1/map/tiles/{z}/{x}/{y}", Access::SignedIn),
    // Who may name which area is checked by `areas::set_name` (township or above, inside their area).
    rule("PUT", "/api/v1/areas/{code}", Access::Roles(ACCOUNT_ADMINS)),
    rule("GET", "/api/v1/blobs/{sha256}", Access::SignedIn),
    rule("GET", "/api/v1/blobs/{sha256}/thumbnail", Access::SignedIn),
    // Nodes authenticate with the Ed25519 handshake inside the WebSocket, not with accounts.
    rule("GET", "/api/v1/sync", Access::Public),
    rule("GET", "/api/v1/sync/status", Access::SignedIn),
    rule("GET", "/api/v1/sync/chains", Access::Roles(ACCOUNT_ADMINS)),
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
    rule("GET", "/api/v1/warnings/events", Access::SignedIn),
    // Rules: everyone reads those covering their area; editors are checked against the rule's area.
    rule("GET", "/api/v1/rules", Access::SignedIn),
    rule("GET", "/api/v1/rules/{id}", Access::SignedIn),
    rule("POST", "/api/v1/rules", Access::Roles(RULE_EDITORS)),
    rule("PUT", "/api/v1/rules/{id}", Access::Roles(RULE_EDITORS)),
    rule("DELETE", "/api/v1/rules/{id}", Access::Roles(RULE_EDITORS)),
    rule("POST", "/api/v1/rules/test", Access::Roles(RULE_EDITORS)),
    // CAP: public, as warnings are meant to be; aggregators poll without an account.
    rule("GET", "/api/v1/warnings/{id}/cap", Access::Public),
    rule("GET", "/api/v1/cap/alerts.atom", Access::Public),
    rule("GET", "/api/v1/cap/key.pem", Access::Public),
    // Alerts from outside: county IT and admins, or a token made for a feed under such an account.
    rule("POST", "/api/v1/cap", Access::Roles(ACCOUNT_ADMINS)),
    rule("GET", "/api/v1/cap/feeds", Access::Roles(ACCOUNT_ADMINS)),
    // Warnings: everyone sees those covering their area; who may act is checked per warning.
    rule("GET", "/api/v1/warnings", Access::SignedIn),
    rule("GET", "/api/v1/warnings/{id}", Access::SignedIn),
    rule("POST", "/api/v1/warnings", Access::Roles(RULE_EDITORS)),
    rule(
        "POST",
        "/api/v1/warnings/{id}/transitions",
        Access::Roles(RULE_EDITORS),
    ),
    // Broadcasts: everyone sees those covering their area (grid workers hear them anyway);
    // ordering and acting is for broadcasters, checked again per broadcast's area.
    rule("GET", "/api/v1/broadcasts", Access::SignedIn),
    rule("GET", "/api/v1/broadcasts/{id}", Access::SignedIn),
    rule("POST", "/api/v1/broadcasts", Access::Roles(BROADCASTERS)),
    rule(
        "POST",
        "/api/v1/broadcasts/{id}/transitions",
        Access::Roles(BROADCASTERS),
    ),
    rule(
        "POST",
        "/api/v1/broadcasts/{id}/audio",
        Access::Roles(BROADCASTERS),
    ),
    rule("GET", "/api/v1/pa/zones", Access::SignedIn),
    // Speakers fetch with their own HTTP Basic credentials; staff with their session (checked in
    // the handler, which refuses everyone else).
    rule("GET", "/api/v1/pa/audio/{sha256}", Access::Public),
];

/// What a person in `role` may call, as `METHOD /path` strings (route templates), for the UI: it
/// shows only what the table lets the person do, instead of keeping its own copy of the role lists.
pub fn capabilities(role: Role) -> Vec<String> {
    RULES
        .iter()
        .filter(|r| match r.access {
            Access::Public | Access::SignedIn => true,
            Access::Roles(roles) => roles.contains(&role),
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    RULES.iter().find(|r| r.method == method && r.path == path)
}

#[cfg(test)]
mod capability_tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_table() {
        let grid = capabilities(GridWorker);
        assert!(grid.contains(&"POST /api/v1/incidents".to_string()));
        assert!(!grid.contains(&"GET /api/v1/users".to_string()));
        let handler = capabilities(Role::DeptHandler);
        assert!(!handler.contains(&"POST /api/v1/incidents".to_string()));
        assert!(handler.contains(&"GET /api/v1/incidents".to_string()));
        let admin = capabilities(Admin);
        assert!(admin.contains(&"POST /api/v1/users".to_string()));
        assert!(admin.contains(&"DELETE /api/v1/nodes/{id}".to_string()));
    }
}
