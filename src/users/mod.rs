//! People and their accounts. Every account but the box's break-glass `admin` is a record of kind
//! `user`, scoped to the area the person works in, so it syncs like any record and a grid worker can
//! log in at any node whose area contains theirs. The `users` table is the projection of those
//! records; `local_accounts` holds the local admin, which never leaves this node.

mod routes;

pub mod accounts;
pub use routes::routes;

use crate::codes::{Code, Reason};
use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ReadDoc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use township_sync::docstore::{DocMeta, Flow, Projection, ProjectionError};
use township_sync::{AreaCode, Authors, Provenance, fields};
use uuid::Uuid;

pub use crate::auth::actor::Actor;
use crate::auth::roles::Role;
use crate::config::Secret;
use crate::invalid::Invalid;
use crate::records::WriteCtx;
use crate::store::StoreError;

pub const KIND: &str = "user";
/// The break-glass account `init` creates on every box.
pub const LOCAL_ADMIN: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("the username `{0}` is already taken")]
    Taken(String),
    #[error("no user `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    Forbidden(crate::codes::Reason),
    #[error(transparent)]
    Hash(#[from] crate::auth::password::HashError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<township_sync::DocError> for UserError {
    fn from(e: township_sync::DocError) -> Self {
        UserError::Store(e.into())
    }
}

/// An account as authentication sees it: an effective account (not quarantined, and the one that
/// signs in under its username).
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

impl Account {
    /// What a session or token is bound to: the record, or `local` for the box's own admin. A session
    /// only authenticates while its username still leads to this same account, so a clash resolved
    /// differently later, or a rename, never hands a live session to another account.
    pub fn account_ref(&self) -> String {
        self.doc_id
            .map_or_else(|| LOCAL_ACCOUNT_REF.to_string(), |id| id.to_string())
    }
}

/// The account reference of the local admin.
pub const LOCAL_ACCOUNT_REF: &str = "local";

/// An account as the API shows it: never the hash.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UserView {
    /// The record's id (absent for the local admin): the one name that is never ambiguous.
    pub id: Option<String>,
    pub username: String,
    pub display_name: String,
    pub phone: Option<String>,
    pub role: String,
    pub area: String,
    pub department: Option<String>,
    pub disabled: bool,
    pub local: bool,
    /// Another record claims this username (made apart on two nodes); see [`find_account`].
    pub clash: bool,
    /// Whether this account is the one that signs in under its username here.
    pub signs_in: bool,
    /// Why the record is not effective, if its fields exceed what their writers could grant.
    pub quarantine: Option<String>,
}

impl Account {
    pub fn view(&self) -> UserView {
        UserView {
            id: self.doc_id.map(|d| d.to_string()),
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            phone: None,
            role: self.role.as_str().to_string(),
            area: self.area.to_string(),
            department: self.department.clone(),
            disabled: self.disabled,
            local: self.doc_id.is_none(),
            clash: false,
            signs_in: !self.disabled,
            quarantine: None,
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
        Err(UserError::Invalid(Invalid::new(
            "username",
            "username must be 2 to 32 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        ).code(Code::UsernameInvalid)))
    }
}

fn check_department(role: Role, department: Option<&str>) -> Result<Option<String>, UserError> {
    match (role, department.map(str::trim).filter(|d| !d.is_empty())) {
        (Role::DeptHandler, None) => Err(Invalid::required(
            "department",
            "a dept_handler belongs to one department: give its id",
        )
        .code(Code::DepartmentRequired)
        .into()),
        (_, Some(d))
            if !(1..=40).contains(&d.len())
                || !d.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            Err(Invalid::new(
                "department",
                "department ids are lowercase letters and '_' (for example emergency, water)",
            )
            .into())
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

/// The order in which records claiming one username are preferred: the account made higher in the
/// tree first (its `rank` is the length of its maker's area code), then the one that reached this
/// node first. Neither can be chosen by a node below: a claim above its own area is refused at the
/// merge, and arrival order is this node's own. Quarantined records never sign in.
const EFFECTIVE_ORDER: &str = "u.quarantine IS NULL DESC, u.rank ASC, a.arrived_seq ASC";

/// Finds the account that signs in under `username`: the local admin first, then the preferred
/// record (see [`EFFECTIVE_ORDER`]). A record that lost a clash, or is quarantined, never signs in.
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
    let found = conn
        .query_row(
            &format!(
                "SELECT u.username, u.display_name, u.role, u.area, u.department, u.disabled, u.password_hash, u.doc_id, u.quarantine
                 FROM users u JOIN account_arrivals a ON a.doc_id = u.doc_id
                 WHERE u.username = ?1 ORDER BY {EFFECTIVE_ORDER} LIMIT 1"
            ),
            [username],
            |r| {
                let quarantined = r.get::<_, Option<String>>(8)?.is_some();
                Ok(if quarantined { None } else { read_account(r, false)? })
            },
        )
        .optional()?
        .flatten();
    Ok(found)
}

/// The account a session or token was bound to, if it is still the one its username signs in as.
pub fn find_bound_account(
    conn: &Connection,
    username: &str,
    account_ref: Option<&str>,
) -> Result<Option<Account>, StoreError> {
    Ok(find_account(conn, username)?.filter(|a| account_ref == Some(a.account_ref().as_str())))
}

/// Lists accounts whose area (or whose record's scope) lies inside `within`, with clashes, which one
/// signs in, and quarantined records, so county IT and admins see every record that claims a name.
/// Display names by username, for showing people by name (effective accounts and local admins).
pub fn display_names(
    conn: &Connection,
) -> Result<std::collections::HashMap<String, String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT username, display_name FROM users WHERE quarantine IS NULL
         UNION ALL SELECT username, display_name FROM local_accounts",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = std::collections::HashMap::new();
    for row in rows {
        let (username, name) = row?;
        out.entry(username).or_insert(name);
    }
    Ok(out)
}

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
    let mut stmt = conn.prepare(&format!(
        "SELECT u.doc_id, u.username, u.display_name, u.phone, u.role, u.area, u.department, u.disabled, u.quarantine
         FROM users u JOIN account_arrivals a ON a.doc_id = u.doc_id
         WHERE u.area LIKE ?1 || '%' OR u.scope LIKE ?1 || '%'
         ORDER BY u.username, {EFFECTIVE_ORDER}"
    ))?;
    let rows = stmt.query_map([within.as_str()], |r| {
        Ok(UserView {
            id: Some(r.get(0)?),
            username: r.get(1)?,
            display_name: r.get(2)?,
            phone: r.get(3)?,
            role: r.get(4)?,
            area: r.get(5)?,
            department: r.get(6)?,
            disabled: r.get::<_, i64>(7)? != 0,
            local: false,
            clash: false,
            signs_in: false,
            quarantine: r.get(8)?,
        })
    })?;
    for row in rows {
        out.push(row?);
    }
    // Rows come in preference order per username, local admin first: the first effective one signs in.
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for v in &out {
        *counts.entry(v.username.clone()).or_default() += 1;
    }
    let mut winner_seen = std::collections::HashSet::new();
    for v in &mut out {
        v.clash = counts.get(&v.username).is_some_and(|n| *n > 1);
        let effective = v.quarantine.is_none() && winner_seen.insert(v.username.clone());
        v.signs_in = effective && !v.disabled;
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

/// May `actor` manage an account of `role` in `area`? Admins and county IT manage accounts inside
/// their own area; only an admin may create or change another admin.
pub fn check_authority(actor: &Actor, role: Role, area: &AreaCode) -> Result<(), UserError> {
    if !actor.is_any(&[Role::Admin, Role::CountyIt]) {
        return Err(UserError::Forbidden(
            "only admin and county_it manage accounts".into(),
        ));
    }
    if !actor.area.contains(area) {
        return Err(UserError::Forbidden(crate::incidents::outside_yours(
            area,
            &actor.area,
        )));
    }
    if role == Role::Admin && !actor.is(Role::Admin) {
        return Err(UserError::Forbidden(Reason::new(
            Code::AdminOnly,
            "only an admin may manage admin accounts",
        )));
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
        return Err(Invalid::new(
            "area",
            format!(
                "area {} is outside this node's area {node_area}; create the account at a node that covers it",
                new.area
            ),
        )
        .code(Code::AreaOutsideNode)
        .param("area", new.area.to_string())
        .param("node", node_area.to_string())
        .into());
    }
    if !new.role.allowed_at(&new.area) {
        return Err(UserError::Invalid(
            Invalid::new("role", new.role.level_rule())
                .code(Code::RoleLevel)
                .param("role", new.role.as_str()),
        ));
    }
    check_department(new.role, new.department.as_deref())?;
    if new
        .display_name
        .as_deref()
        .is_some_and(|d| d.chars().count() > 60)
    {
        return Err(UserError::Invalid(Invalid::length(
            "display_name",
            0,
            60,
            "display name is at most 60 characters",
        )));
    }
    if new.phone.as_deref().is_some_and(|p| {
        p.len() > 20
            || !p
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'+' || b == b'-' || b == b' ')
    }) {
        return Err(UserError::Invalid(Invalid::new(
            "phone",
            "phone is at most 20 digits, spaces, '+' or '-'",
        )));
    }
    Ok(())
}

/// Whether `username` is taken for an account made at a node whose area code is `node_area`: by the
/// local admin, or by an account made as high in the tree or higher that is not quarantined. An
/// account made lower does not block it — the new one would win the clash anyway — so a village hub
/// cannot squat the names its township or county will need.
fn name_taken(conn: &Connection, username: &str, node_area: &AreaCode) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM local_accounts WHERE username = ?1)
             OR EXISTS (SELECT 1 FROM users WHERE username = ?1 AND quarantine IS NULL AND rank <= ?2)",
        params![username, node_area.as_str().len() as i64],
        |r| r.get(0),
    )?)
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
    if name_taken(conn, &new.username, &ctx.area)? {
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
        actor.username.clone(),
    );
    let (dn, dept) = (display_name.clone(), department.clone());
    let by = ctx.author(actor);
    let meta = ctx.create_record(conn, &by, KIND, &new.area, detail, move |doc| {
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
        id: Some(meta.id.to_string()),
        username: new.username.clone(),
        display_name,
        phone: new.phone.clone(),
        role: new.role.as_str().to_string(),
        area: new.area.to_string(),
        department,
        disabled: false,
        local: false,
        clash: false,
        signs_in: true,
        quarantine: None,
    })
}

/// Sets a new password hash; ends the user's sessions and tokens (except `keep_session`). A person
/// may change their own; otherwise only someone who manages the account.
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
    if actor.username != account.username {
        check_authority(actor, account.role, &account.area)?;
    }
    match account.doc_id {
        Some(id) => {
            ctx.change_record(
                conn,
                &ctx.author(actor),
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
                crate::audit::Event::new(&actor.username, "user.password", username),
            )?;
        }
    }
    crate::auth::session::delete_for_user(conn, username, keep_session)?;
    Ok(())
}

/// Replaces the hash of a password just verified at sign-in with one of more iterations, as the
/// account's holder (who may always write their own password). Nothing is written when the stored
/// hash is no longer the one verified (the password changed meanwhile). Sessions stay: the password
/// itself did not change. Returns whether the hash was replaced.
pub fn upgrade_password_hash(
    conn: &Connection,
    ctx: &WriteCtx,
    verified: &Account,
    new_hash: String,
) -> Result<bool, UserError> {
    let Some(current) =
        find_bound_account(conn, &verified.username, Some(&verified.account_ref()))?
    else {
        return Ok(false);
    };
    if current.password_hash != verified.password_hash {
        return Ok(false);
    }
    let holder = Actor::person(current.username.clone(), current.role, current.area.clone());
    let detail = serde_json::json!({
        "username": current.username,
        "iterations": crate::auth::password::iterations_of(&new_hash),
    });
    match current.doc_id {
        Some(id) => {
            ctx.change_record(
                conn,
                &ctx.author(&holder),
                crate::records::RecordChange {
                    id,
                    kind: KIND,
                    action: "user.password_rehash",
                    detail,
                },
                |doc| Ok(doc.put(automerge::ROOT, "password_hash", new_hash.as_str())?),
            )?;
        }
        None => {
            conn.execute(
                "UPDATE local_accounts SET password_hash = ?2 WHERE username = ?1",
                params![current.username, new_hash],
            )
            .map_err(StoreError::from)?;
            ctx.audit(
                conn,
                crate::audit::Event::new(
                    &holder.username,
                    "user.password_rehash",
                    &holder.username,
                )
                .detail(detail),
            )?;
        }
    }
    Ok(true)
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
    if actor.username == account.username {
        return Err(UserError::Forbidden(Reason::new(
            Code::SelfDisable,
            "you cannot disable your own account",
        )));
    }
    match account.doc_id {
        Some(id) => {
            ctx.change_record(
                conn,
                &ctx.author(actor),
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
                crate::audit::Event::new(&actor.username, "user.disable", username),
            )?;
        }
    }
    crate::auth::session::delete_for_user(conn, username, None)?;
    crate::auth::session::revoke_tokens_for_user(conn, username, ctx.now_ms())?;
    Ok(())
}

/// Renames an account record: how a username clash between accounts made apart is resolved. With
/// several records under `username`, `id` names the one to rename. The old name is kept in the
/// record (`former_usernames`) so password changes the person made under it still count as theirs.
pub fn rename(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    username: &str,
    id: Option<Uuid>,
    new_username: &str,
) -> Result<UserView, UserError> {
    check_username(new_username)?;
    let rows: Vec<(String, String, String)> = conn
        .prepare("SELECT doc_id, role, area FROM users WHERE username = ?1")
        .and_then(|mut stmt| {
            stmt.query_map([username], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(StoreError::from)?;
    let target = match (id, rows.len()) {
        (_, 0) => return Err(UserError::NotFound(username.into())),
        (None, 1) => &rows[0],
        (None, _) => {
            return Err(UserError::Ambiguous(format!(
                "{} accounts are named {username}; give the id of the one to rename",
                rows.len()
            )));
        }
        (Some(id), _) => rows
            .iter()
            .find(|(doc, _, _)| *doc == id.to_string())
            .ok_or_else(|| UserError::NotFound(username.into()))?,
    };
    let (Ok(doc_id), Ok(role), Ok(area)) = (
        target.0.parse::<Uuid>(),
        target.1.parse::<Role>(),
        target.2.parse::<AreaCode>(),
    ) else {
        return Err(UserError::Forbidden(Reason::new(
            Code::Quarantined,
            "this record is quarantined: its role or area cannot be read",
        )));
    };
    check_authority(actor, role, &area)?;
    if new_username == LOCAL_ADMIN || name_taken(conn, new_username, &ctx.area)? {
        return Err(UserError::Taken(new_username.into()));
    }
    let (old, new) = (username.to_string(), new_username.to_string());
    ctx.change_record(
        conn,
        &ctx.author(actor),
        crate::records::RecordChange {
            id: doc_id,
            kind: KIND,
            action: "user.rename",
            detail: serde_json::json!({"from": username, "to": new_username}),
        },
        move |doc| {
            let former = match doc.get(automerge::ROOT, FORMER_USERNAMES)? {
                Some((automerge::Value::Object(automerge::ObjType::List), list)) => list,
                _ => doc.put_object(automerge::ROOT, FORMER_USERNAMES, automerge::ObjType::List)?,
            };
            let at = doc.length(&former);
            doc.insert(&former, at, old.as_str())?;
            doc.put(automerge::ROOT, "username", new.as_str())?;
            Ok(())
        },
    )?;
    crate::auth::session::delete_for_user(conn, username, None)?;
    list(conn, &area)?
        .into_iter()
        .find(|v| v.id.as_deref() == Some(target.0.as_str()))
        .ok_or_else(|| UserError::NotFound(new_username.into()))
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

/// The list of names an account had before county IT renamed it.
const FORMER_USERNAMES: &str = "former_usernames";

/// What a user record's fields are checked against: each must have been written by someone who
/// could write it. The record is effective only if all hold; otherwise it is quarantined.
fn verdict(meta: &DocMeta, doc: &AutoCommit, authors: &Authors) -> Result<(), String> {
    let username = fields::text(doc, "username").unwrap_or_default();
    check_username(&username).map_err(|e| e.to_string())?;
    let role_text = fields::text(doc, "role").unwrap_or_default();
    let role: Role = role_text
        .parse()
        .map_err(|e: crate::auth::roles::UnknownRole| e.to_string())?;
    let area_text = fields::text(doc, "area").unwrap_or_default();
    let area: AreaCode = area_text
        .parse()
        .map_err(|_| format!("the account's area `{area_text}` is not an area code"))?;
    if !meta.scope.contains(&area) {
        return Err(format!(
            "the account's area {area} lies outside its record's scope {}",
            meta.scope
        ));
    }
    if !role.allowed_at(&area) {
        return Err(role.level_rule().into());
    }
    let former: Vec<String> = match doc.get(automerge::ROOT, FORMER_USERNAMES) {
        Ok(Some((automerge::Value::Object(automerge::ObjType::List), list))) => (0..doc
            .length(&list))
            .filter_map(|i| match doc.get(&list, i) {
                Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
                    automerge::ScalarValue::Str(t) => Some(t.to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    // (field, may the person themselves write it)
    const GUARDED: [(&str, bool); 7] = [
        ("username", false),
        ("role", false),
        ("area", false),
        ("department", false),
        ("disabled", false),
        (FORMER_USERNAMES, false),
        ("password_hash", true),
    ];
    for (key, self_service) in GUARDED {
        let Some(provenance) = authors.of_field(doc, &automerge::ROOT, key) else {
            continue;
        };
        if provenance.authority(&meta.scope).is_none() {
            return Err(format!(
                "`{key}` was written by a change whose author claim is unreadable or could not have written this record"
            ));
        }
        let Provenance::Claimed(author) = provenance else {
            // Written before author claims existed: bounded by the scope, checked above.
            continue;
        };
        let Some(person) = &author.person else {
            return Err(format!(
                "`{key}` was written by the node of area {} on its own, not by a person who manages accounts",
                author.node_area
            ));
        };
        let is_self = self_service && (person.name == username || former.contains(&person.name));
        let manager = person
            .role
            .parse::<Role>()
            .ok()
            .map(|r| Actor::person(person.name.clone(), r, person.area.clone()));
        let may_grant = manager.is_some_and(|m| check_authority(&m, role, &area).is_ok());
        if !is_self && !may_grant {
            return Err(format!(
                "`{key}` was written by {} ({}, area {}), who may not grant a {role} account in {area}",
                person.name, person.role, person.area
            ));
        }
    }
    Ok(())
}

/// Projects `user` records into the `users` table, with each record's verdict: an account whose
/// fields exceed what their writers could grant is kept, shown to admins, never effective, and the
/// quarantine is audited once, on every node that holds the record.
pub struct UserProjection {
    key: Arc<township_sync::NodeKey>,
    clock: crate::clock::Clock,
}

impl UserProjection {
    pub fn shared(
        key: Arc<township_sync::NodeKey>,
        clock: crate::clock::Clock,
    ) -> Arc<dyn Projection> {
        Arc::new(UserProjection { key, clock })
    }
}

impl Projection for UserProjection {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// Accounts carry password hashes: a node receives only the accounts that may sign in on it,
    /// those whose area lies inside its own.
    fn flow(&self) -> Flow {
        Flow::UpOnly
    }

    fn append_only(&self) -> &'static [&'static str] {
        &[FORMER_USERNAMES]
    }

    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &AutoCommit,
        authors: &Authors,
    ) -> Result<(), ProjectionError> {
        let username = fields::text(doc, "username").unwrap_or_default();
        let verdict = verdict(meta, doc, authors).err();
        // How high in the tree the account was made: the level of whoever wrote its username.
        let rank = authors
            .of_field(doc, &automerge::ROOT, "username")
            .and_then(|p| p.authority(&meta.scope))
            .map_or(12, |a| a.as_str().len() as i64);
        conn.execute(
            "INSERT INTO users (doc_id, username, display_name, phone, role, area, department, disabled, password_hash, created_by, updated_ms, scope, rank, quarantine)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT(doc_id) DO UPDATE SET username = excluded.username, display_name = excluded.display_name,
               phone = excluded.phone, role = excluded.role, area = excluded.area, department = excluded.department,
               disabled = excluded.disabled, password_hash = excluded.password_hash, updated_ms = excluded.updated_ms,
               scope = excluded.scope, rank = excluded.rank, quarantine = excluded.quarantine",
            params![
                meta.id.to_string(),
                username,
                fields::text(doc, "display_name").unwrap_or_else(|| username.clone()),
                fields::text(doc, "phone"),
                fields::text(doc, "role").unwrap_or_default(),
                fields::text(doc, "area").unwrap_or_default(),
                fields::text(doc, "department"),
                fields::boolean(doc, "disabled").unwrap_or(false),
                fields::text(doc, "password_hash").unwrap_or_default(),
                fields::text(doc, "created_by").unwrap_or_default(),
                meta.updated_ms,
                meta.scope.as_str(),
                rank,
                verdict,
            ],
        )?;
        // Arrival order here, kept across rebuilds: the tie-break no node below can choose.
        conn.execute(
            "INSERT OR IGNORE INTO account_arrivals (doc_id, arrived_seq) VALUES (?1, ?2)",
            params![meta.id.to_string(), meta.seq],
        )?;
        crate::records::record_verdict(
            conn,
            &self.key,
            self.clock.now_ms(),
            meta,
            verdict.as_deref(),
        )
        .map_err(|e| ProjectionError(e.to_string()))?;
        Ok(())
    }

    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM users", [])?;
        Ok(())
    }

    fn forget(&self, conn: &Connection, id: Uuid) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM users WHERE doc_id = ?1", [id.to_string()])?;
        Ok(())
    }
}
