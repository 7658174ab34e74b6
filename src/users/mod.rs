//! People and their accounts. Every account but the box's break-glass `admin` is a record of kind
//! `user`, scoped to the area the person works in, so it syncs like any record and a grid worker can
//! log in at any node whose area contains theirs. The `users` table is the projection of those
//! records; `local_accounts` holds the local admin, which never leaves this node.

mod routes;

pub use routes::routes;

use std::sync::Arc;

use automerge::transaction::Transactable;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use township_sync::docstore::{DocMeta, Projection, ProjectionError};
use township_sync::{AreaCode, fields};
use uuid::Uuid;

use crate::auth::roles::Role;
use crate::config::Secret;
use crate::records::WriteCtx;
use crate::store::StoreError;

pub const KIND: &str = "user";
/// The break-glass account `init` creates on every box.
pub const LOCAL_ADMIN: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("the username `{0}` is already taken")]
    Taken(String),
    #[error("no user `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<township_sync::DocError> for UserError {
    fn from(e: township_sync::DocError) -> Self {
        UserError::Store(e.into())
    }
}

impl From<UserError> for crate::http::problem::ApiError {
    fn from(e: UserError) -> Self {
        use crate::http::problem::ApiError;
        match e {
            UserError::Invalid { field, detail } => ApiError::InvalidField {
                field: field.into(),
                detail,
            },
            UserError::Taken(_) => ApiError::Conflict(e.to_string()),
            UserError::NotFound(_) => ApiError::NotFound,
            UserError::Forbidden(m) => ApiError::Forbidden(m),
            UserError::Store(s) => s.into(),
        }
    }
}

/// An account as authentication sees it.
#[derive(Debug, Clone)]
pub struct Account {
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub area: AreaCode,
    pub department: Option<String>,
    pub disabled: bool,
    pub password_hash: String,
    /// The record behind the account; `None` for the local admin.
    pub doc_id: Option<Uuid>,
}

/// An account as the API shows it: never the hash.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserView {
    pub username: String,
    pub display_name: String,
    pub phone: Option<String>,
    pub role: Role,
    pub area: AreaCode,
    pub department: Option<String>,
    pub disabled: bool,
    pub local: bool,
    /// Two records claim this username (made apart on two nodes); sign-in uses the oldest record.
    pub clash: bool,
}

impl Account {
    pub fn view(&self) -> UserView {
        UserView {
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            phone: None,
            role: self.role,
            area: self.area.clone(),
            department: self.department.clone(),
            disabled: self.disabled,
            local: self.doc_id.is_none(),
            clash: false,
        }
    }
}

/// Usernames: 2 to 32 of lowercase ASCII letters, digits, `.`, `_`, `-`, starting with a letter or
/// digit. ASCII keeps them typeable on any phone keyboard and unambiguous in logs.
pub fn check_username(name: &str) -> Result<(), UserError> {
    let ok = (2..=32).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid {
            field: "username",
            detail: "username must be 2 to 32 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit".into(),
        })
    }
}

fn check_department(role: Role, department: Option<&str>) -> Result<Option<String>, UserError> {
    match (role, department.map(str::trim).filter(|d| !d.is_empty())) {
        (Role::DeptHandler, None) => Err(UserError::Invalid {
            field: "department",
            detail: "a dept_handler belongs to one department: give its id".into(),
        }),
        (_, Some(d))
            if !(1..=40).contains(&d.len())
                || !d.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            Err(UserError::Invalid {
                field: "department",
                detail:
                    "department ids are lowercase letters and '_' (for example emergency, water)"
                        .into(),
            })
        }
        (_, d) => Ok(d.map(String::from)),
    }
}

fn read_account(r: &rusqlite::Row<'_>, local: bool) -> rusqlite::Result<Option<Account>> {
    let role: String = r.get(2)?;
    let area: String = r.get(3)?;
    let (Ok(role), Ok(area)) = (role.parse::<Role>(), area.parse::<AreaCode>()) else {
        return Ok(None);
    };
    let doc_id = if local {
        None
    } else {
        r.get::<_, String>(7)?.parse().ok()
    };
    Ok(Some(Account {
        username: r.get(0)?,
        display_name: r.get(1)?,
        role,
        area,
        department: r.get(4)?,
        disabled: r.get::<_, i64>(5)? != 0,
        password_hash: r.get(6)?,
        doc_id,
    }))
}

/// Finds an account by username: the local admin first, then the oldest record with that name (a
/// deterministic choice if a partition ever let two records claim it).
pub fn find_account(conn: &Connection, username: &str) -> Result<Option<Account>, StoreError> {
    let local = conn
        .query_row(
            "SELECT username, display_name, role, area, NULL, disabled, password_hash, '' FROM local_accounts WHERE username = ?1",
            [username],
            |r| read_account(r, true),
        )
        .optional()?
        .flatten();
    if local.is_some() {
        return Ok(local);
    }
    Ok(conn
        .query_row(
            "SELECT username, display_name, role, area, department, disabled, password_hash, doc_id
             FROM users WHERE username = ?1 ORDER BY doc_id LIMIT 1",
            [username],
            |r| read_account(r, false),
        )
        .optional()?
        .flatten())
}

/// Lists accounts whose area lies inside `within`.
pub fn list(conn: &Connection, within: &AreaCode) -> Result<Vec<UserView>, StoreError> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT username, display_name, role, area, NULL, disabled, password_hash, '' FROM local_accounts ORDER BY username",
    )?;
    for account in stmt.query_map([], |r| read_account(r, true))? {
        if let Some(a) = account?
            && within.contains(&a.area)
        {
            out.push(a.view());
        }
    }
    let mut stmt = conn.prepare(
        "SELECT username, display_name, role, area, department, disabled, password_hash, doc_id, phone
         FROM users WHERE area LIKE ?1 || '%' ORDER BY username, doc_id",
    )?;
    let rows = stmt.query_map([within.as_str()], |r| {
        Ok((read_account(r, false)?, r.get::<_, Option<String>>(8)?))
    })?;
    for row in rows {
        if let (Some(a), phone) = row? {
            let mut view = a.view();
            view.phone = phone;
            out.push(view);
        }
    }
    // Usernames two records claim (made apart on two nodes) are shown, so county IT can rename one;
    // sign-in keeps using the oldest record, the same on every node.
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for v in &out {
        *counts.entry(v.username.clone()).or_default() += 1;
    }
    for v in &mut out {
        v.clash = counts.get(&v.username).is_some_and(|n| *n > 1);
    }
    Ok(out)
}

/// A new account as requested by an admin, the API or the CLI.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub role: Role,
    pub area: AreaCode,
    pub department: Option<String>,
    pub display_name: Option<String>,
    pub phone: Option<String>,
    pub password: Secret,
}

/// Who is asking, for authority checks and the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub role: Role,
    pub area: AreaCode,
}

/// May `actor` manage an account of `role` in `area`? Admins and county IT manage accounts inside
/// their own area; only an admin may create or change another admin.
pub fn check_authority(actor: &Actor, role: Role, area: &AreaCode) -> Result<(), UserError> {
    if !matches!(actor.role, Role::Admin | Role::CountyIt) {
        return Err(UserError::Forbidden(
            "only admin and county_it manage accounts".into(),
        ));
    }
    if !actor.area.contains(area) {
        return Err(UserError::Forbidden(format!(
            "area {area} is outside your area {}",
            actor.area
        )));
    }
    if role == Role::Admin && actor.role != Role::Admin {
        return Err(UserError::Forbidden(
            "only an admin may manage admin accounts".into(),
        ));
    }
    Ok(())
}

/// Checks a new account's fields (the password policy is checked where it is hashed).
pub fn validate(new: &NewUser, node_area: &AreaCode) -> Result<(), UserError> {
    check_username(&new.username)?;
    if new.username == LOCAL_ADMIN {
        return Err(UserError::Taken(new.username.clone()));
    }
    if !node_area.contains(&new.area) {
        return Err(UserError::Invalid {
            field: "area",
            detail: format!(
                "area {} is outside this node's area {node_area}; create the account at a node that covers it",
                new.area
            ),
        });
    }
    check_department(new.role, new.department.as_deref())?;
    if new
        .display_name
        .as_deref()
        .is_some_and(|d| d.chars().count() > 60)
    {
        return Err(UserError::Invalid {
            field: "display_name",
            detail: "display name is at most 60 characters".into(),
        });
    }
    if new.phone.as_deref().is_some_and(|p| {
        p.len() > 20
            || !p
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'+' || b == b'-' || b == b' ')
    }) {
        return Err(UserError::Invalid {
            field: "phone",
            detail: "phone is at most 20 digits, spaces, '+' or '-'".into(),
        });
    }
    Ok(())
}

/// Creates the account record (in the caller's transaction), refusing a username already in use here.
pub fn create(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    new: &NewUser,
    password_hash: String,
) -> Result<UserView, UserError> {
    check_authority(actor, new.role, &new.area)?;
    if find_account(conn, &new.username)?.is_some() {
        return Err(UserError::Taken(new.username.clone()));
    }
    let department = check_department(new.role, new.department.as_deref())?;
    let display_name = new
        .display_name
        .clone()
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| new.username.clone());
    let detail = serde_json::json!({
        "username": new.username, "role": new.role, "area": new.area, "department": department,
    });
    let (username, role, area, phone, creator) = (
        new.username.clone(),
        new.role,
        new.area.clone(),
        new.phone.clone(),
        actor.name.clone(),
    );
    let (dn, dept) = (display_name.clone(), department.clone());
    ctx.create_record(conn, &actor.name, KIND, &new.area, detail, move |doc| {
        doc.put(automerge::ROOT, "username", username.as_str())?;
        doc.put(automerge::ROOT, "display_name", dn.as_str())?;
        doc.put(automerge::ROOT, "role", role.as_str())?;
        doc.put(automerge::ROOT, "area", area.as_str())?;
        if let Some(d) = &dept {
            doc.put(automerge::ROOT, "department", d.as_str())?;
        }
        if let Some(p) = &phone {
            doc.put(automerge::ROOT, "phone", p.as_str())?;
        }
        doc.put(automerge::ROOT, "disabled", false)?;
        doc.put(automerge::ROOT, "password_hash", password_hash.as_str())?;
        doc.put(automerge::ROOT, "created_by", creator.as_str())?;
        Ok(())
    })?;
    Ok(UserView {
        username: new.username.clone(),
        display_name,
        phone: new.phone.clone(),
        role: new.role,
        area: new.area.clone(),
        department,
        disabled: false,
        local: false,
        clash: false,
    })
}

/// Sets a new password hash; ends the user's sessions and tokens (except `keep_session`).
pub fn set_password(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    username: &str,
    password_hash: String,
    keep_session: Option<&str>,
) -> Result<(), UserError> {
    let account =
        find_account(conn, username)?.ok_or_else(|| UserError::NotFound(username.into()))?;
    if actor.name != account.username {
        check_authority(actor, account.role, &account.area)?;
    }
    match account.doc_id {
        Some(id) => {
            ctx.change_record(
                conn,
                &actor.name,
                crate::records::RecordChange {
                    id,
                    kind: KIND,
                    action: "user.password",
                    detail: serde_json::json!({"username": username}),
                },
                |doc| Ok(doc.put(automerge::ROOT, "password_hash", password_hash.as_str())?),
            )?;
        }
        None => {
            conn.execute(
                "UPDATE local_accounts SET password_hash = ?2 WHERE username = ?1",
                params![username, password_hash],
            )
            .map_err(StoreError::from)?;
            ctx.audit(
                conn,
                crate::audit::Event::new(&actor.name, "user.password", username),
            )?;
        }
    }
    crate::auth::session::delete_for_user(conn, username, keep_session)?;
    Ok(())
}

/// Disables an account: it can no longer log in, and its sessions and tokens end at once.
pub fn disable(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    username: &str,
) -> Result<(), UserError> {
    let account =
        find_account(conn, username)?.ok_or_else(|| UserError::NotFound(username.into()))?;
    check_authority(actor, account.role, &account.area)?;
    if actor.name == account.username {
        return Err(UserError::Forbidden(
            "you cannot disable your own account".into(),
        ));
    }
    match account.doc_id {
        Some(id) => {
            ctx.change_record(
                conn,
                &actor.name,
                crate::records::RecordChange {
                    id,
                    kind: KIND,
                    action: "user.disable",
                    detail: serde_json::json!({"username": username}),
                },
                |doc| Ok(doc.put(automerge::ROOT, "disabled", true)?),
            )?;
        }
        None => {
            conn.execute(
                "UPDATE local_accounts SET disabled = 1 WHERE username = ?1",
                [username],
            )
            .map_err(StoreError::from)?;
            ctx.audit(
                conn,
                crate::audit::Event::new(&actor.name, "user.disable", username),
            )?;
        }
    }
    crate::auth::session::delete_for_user(conn, username, None)?;
    crate::auth::session::revoke_tokens_for_user(conn, username, ctx.now_ms())?;
    Ok(())
}

/// Creates the local break-glass admin (at `init`).
pub fn create_local_admin(
    conn: &Connection,
    area: &AreaCode,
    password_hash: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO local_accounts (username, display_name, role, area, password_hash, disabled, created_ms) VALUES (?1, ?2, 'admin', ?3, ?4, 0, ?5)",
        params![LOCAL_ADMIN, "本机管理员", area.as_str(), password_hash, now_ms],
    )?;
    Ok(())
}

/// Projects `user` records into the `users` table.
pub struct UserProjection;

impl UserProjection {
    pub fn shared() -> Arc<dyn Projection> {
        Arc::new(UserProjection)
    }
}

impl Projection for UserProjection {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &automerge::AutoCommit,
    ) -> Result<(), ProjectionError> {
        let username = fields::text(doc, "username")
            .ok_or_else(|| ProjectionError("user record without username".into()))?;
        let role = fields::text(doc, "role").unwrap_or_default();
        let area = fields::text(doc, "area").unwrap_or_else(|| meta.scope.to_string());
        conn.execute(
            "INSERT INTO users (doc_id, username, display_name, phone, role, area, department, disabled, password_hash, created_by, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(doc_id) DO UPDATE SET username = excluded.username, display_name = excluded.display_name,
               phone = excluded.phone, role = excluded.role, area = excluded.area, department = excluded.department,
               disabled = excluded.disabled, password_hash = excluded.password_hash, updated_ms = excluded.updated_ms",
            params![
                meta.id.to_string(),
                username,
                fields::text(doc, "display_name").unwrap_or_else(|| username.clone()),
                fields::text(doc, "phone"),
                role,
                area,
                fields::text(doc, "department"),
                fields::boolean(doc, "disabled").unwrap_or(false),
                fields::text(doc, "password_hash").unwrap_or_default(),
                fields::text(doc, "created_by").unwrap_or_default(),
                meta.updated_ms,
            ],
        )?;
        Ok(())
    }

    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM users", [])?;
        Ok(())
    }
}
