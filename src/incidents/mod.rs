//! Incidents: the grassroots governance platform (基层治理四平台). Grid workers report what they find,
//! township staff accept and dispatch it to departments, departments handle it, the township verifies
//! and closes the loop — all of it on the node, whether or not the county can be reached.
//!
//! Each incident is a record of kind `incident` scoped to the area where it happened. Free fields
//! are plain document values; the workflow is a transition list folded by [`workflow`]; comments and
//! attachments are lists, so additions made apart all survive a merge. The `incidents` table and its
//! trigram full-text index are the projection that serves lists, search, exports and indicators.

pub mod deadlines;
pub mod query;
mod routes;
pub mod workflow;

pub use routes::routes;

use crate::codes::{Code, Reason};
use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ReadDoc, Value};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;
use township_sync::docstore::{DocMeta, Projection, ProjectionError};
use township_sync::{AreaCode, Authors, DocError, Provenance, Transition, fields};
use uuid::Uuid;

use crate::auth::actor::Actor;
use crate::auth::roles::Role;
use crate::config::{Category, Config};
use crate::invalid::Invalid;
use crate::records::{RecordChange, WriteCtx};
use crate::store::StoreError;
use workflow::{Action, Folded, IncidentMachine, State};

pub const KIND: &str = "incident";

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Forbidden(crate::codes::Reason),
    #[error("incident not found")]
    NotFound,
    #[error("{0}")]
    Conflict(crate::codes::Reason),
    /// Over the person's daily upload quota; the message names it.
    #[error("{0}")]
    Quota(crate::codes::Reason),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<DocError> for IncidentError {
    fn from(e: DocError) -> Self {
        match e {
            DocError::NotFound(_) | DocError::WrongKind { .. } => IncidentError::NotFound,
            other => IncidentError::Store(other.into()),
        }
    }
}

/// "`area` is outside your area `yours`", with the code clients translate.
pub fn outside_yours(area: &AreaCode, yours: &AreaCode) -> Reason {
    Reason::new(
        Code::AreaOutsideYours,
        format!("area {area} is outside your area {yours}"),
    )
    .param("area", area.to_string())
    .param("yours", yours.to_string())
}

pub fn invalid(field: &str, detail: impl ToString) -> IncidentError {
    IncidentError::Invalid(Invalid::new(field, detail))
}

/// A new report.
#[derive(Debug, Clone)]
pub struct NewIncident {
    /// The id the reporter's phone chose (a UUIDv7), so a retried report finds the first one.
    pub id: Option<Uuid>,
    pub category: String,
    pub title: String,
    pub description: String,
    pub area: AreaCode,
    pub location: Option<(f64, f64)>,
    pub place: Option<String>,
}

/// Validates a report against the catalog and the actor's reach.
pub fn check_new(
    config: &Config,
    node_area: &AreaCode,
    actor: &Actor,
    new: &NewIncident,
) -> Result<(), IncidentError> {
    if config.category(&new.category).is_none() {
        return Err(IncidentError::Invalid(Invalid::unknown(
            "category",
            &new.category,
            format!("unknown category `{}`", new.category),
        )));
    }
    let title_len = new.title.trim().chars().count();
    if !(1..=100).contains(&title_len) {
        return Err(IncidentError::Invalid(Invalid::length(
            "title",
            1,
            100,
            "title is 1 to 100 characters",
        )));
    }
    // One-line fields hold no control characters at all; the description keeps line breaks.
    let text_ok = |s: &str, multiline: bool| {
        !s.chars()
            .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
    };
    for (field, value, multiline) in [
        ("title", new.title.as_str(), false),
        ("category", new.category.as_str(), false),
        ("description", new.description.as_str(), true),
        ("place", new.place.as_deref().unwrap_or(""), false),
    ] {
        if !text_ok(value, multiline) {
            return Err(invalid(
                field,
                format!("{field} may not contain control characters"),
            ));
        }
    }
    if new.description.chars().count() > 5000 {
        return Err(IncidentError::Invalid(Invalid::length(
            "description",
            0,
            5000,
            "description is at most 5000 characters",
        )));
    }
    if let Some((lat, lon)) = new.location
        && !(lat.is_finite()
            && lon.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lon))
    {
        return Err(IncidentError::Invalid(
            Invalid::new(
                "location",
                "location needs lat in -90..90 and lon in -180..180",
            )
            .code(Code::LocationInvalid),
        ));
    }
    if new
        .place
        .as_deref()
        .is_some_and(|p| p.chars().count() > 200)
    {
        return Err(IncidentError::Invalid(Invalid::length(
            "place",
            0,
            200,
            "place is at most 200 characters",
        )));
    }
    if !node_area.contains(&new.area) {
        return Err(IncidentError::Invalid(
            Invalid::new(
                "area",
                format!("area {} is outside this node's area {node_area}", new.area),
            )
            .code(Code::AreaOutsideNode)
            .param("area", new.area.to_string())
            .param("node", node_area.to_string()),
        ));
    }
    if !actor.can_reach(&new.area) {
        return Err(IncidentError::Forbidden(outside_yours(
            &new.area,
            &actor.area,
        )));
    }
    Ok(())
}

/// Creates the incident record in the actor's transaction.
pub fn create(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    new: NewIncident,
) -> Result<Uuid, IncidentError> {
    let now = ctx.now_ms();
    let detail = json!({"category": new.category, "title": new.title, "area": new.area});
    let reporter = actor.username.clone();
    let role = actor.role.as_str();
    let scope = new.area.clone();
    let by = ctx.author(actor);
    let chosen = new.id;
    let build = move |doc: &mut automerge::AutoCommit| -> Result<(), township_sync::DocError> {
        doc.put(automerge::ROOT, "category", new.category.as_str())?;
        doc.put(automerge::ROOT, "title", new.title.trim())?;
        doc.put(automerge::ROOT, "description", new.description.as_str())?;
        doc.put(automerge::ROOT, "area", new.area.as_str())?;
        if let Some((lat, lon)) = new.location {
            doc.put(automerge::ROOT, "lat", lat)?;
            doc.put(automerge::ROOT, "lon", lon)?;
        }
        if let Some(place) = new
            .place
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            doc.put(automerge::ROOT, "place", place)?;
        }
        doc.put(automerge::ROOT, "reporter", reporter.as_str())?;
        doc.put(automerge::ROOT, "reporter_role", role)?;
        doc.put(automerge::ROOT, "created_ms", now)?;
        township_sync::workflow::init(doc)?;
        doc.put_object(automerge::ROOT, "comments", ObjType::List)?;
        doc.put_object(automerge::ROOT, "attachments", ObjType::List)?;
        Ok(())
    };
    let meta = match chosen {
        Some(id) => ctx.create_record_with_id(conn, &by, id, KIND, &scope, detail, build)?,
        None => ctx.create_record(conn, &by, KIND, &scope, detail, build)?,
    };
    Ok(meta.id)
}

/// What an id a phone chose for its report already names, if anything: `Some(true)` when it is
/// that person's own report (a retry), `Some(false)` when it is any other record.
pub fn chosen_id_taken(
    conn: &Connection,
    id: Uuid,
    reporter: &str,
) -> Result<Option<bool>, StoreError> {
    if township_sync::DocStore::meta(conn, id)?.is_none() {
        return Ok(None);
    }
    let own: Option<String> = conn
        .query_row(
            "SELECT reporter FROM incidents WHERE id = ?1",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Some(own.as_deref() == Some(reporter)))
}

/// A transition request, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct TransitionRequest {
    pub action: String,
    pub note: Option<String>,
    pub department: Option<String>,
    pub assist_departments: Vec<String>,
    pub deadline_ms: Option<i64>,
    /// For `duplicate`: the id of the original incident.
    pub duplicate_of: Option<String>,
}

/// The actor as the workflow sees them.
fn acting(actor: &Actor) -> workflow::Acting<'_> {
    workflow::Acting {
        role: actor.role,
        actor: &actor.username,
        area: Some(&actor.area),
        department: actor.department.as_deref(),
    }
}

/// Department handlers see what is dispatched to their department (lead or assisting) and what they
/// acted on before; everyone else is limited by area alone.
pub fn visible_to(actor: &Actor, doc: &AutoCommit, authors: &Authors, scope: &AreaCode) -> bool {
    if actor.role != Role::DeptHandler {
        return true;
    }
    let (folded, _) = fold_doc(doc, authors, scope);
    let dept = actor.department.as_deref();
    folded.state.lead_department.as_deref() == dept
        || folded
            .state
            .assist_departments
            .iter()
            .any(|d| Some(d.as_str()) == dept)
        || folded.applied.iter().any(|t| t.actor == actor.username)
}

/// An incident as loaded: its row, its document, and who wrote what in it.
pub struct Loaded {
    pub meta: DocMeta,
    pub doc: AutoCommit,
    pub authors: Authors,
}

/// Loads an incident with the authorship of its values.
pub fn load(
    ctx_docs: &township_sync::DocStore,
    conn: &Connection,
    id: Uuid,
) -> Result<Loaded, IncidentError> {
    let (meta, mut doc) = ctx_docs.load_kind(conn, id, KIND)?;
    let authors = Authors::of(&mut doc);
    Ok(Loaded { meta, doc, authors })
}

/// Loads an incident the actor may see, or reports it as not found (never "forbidden", which would
/// confirm that it exists).
fn load_visible(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    id: Uuid,
) -> Result<Loaded, IncidentError> {
    let loaded = load(&ctx.docs, conn, id)?;
    if !actor.can_reach(&loaded.meta.scope)
        || !visible_to(actor, &loaded.doc, &loaded.authors, &loaded.meta.scope)
    {
        return Err(IncidentError::NotFound);
    }
    Ok(loaded)
}

/// The original a duplicate points to: another incident the actor can see, not itself closed as a
/// duplicate (so duplicates never chain) and not the incident itself.
fn check_duplicate_target(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    id: Uuid,
    given: Option<&str>,
) -> Result<Uuid, IncidentError> {
    let refuse = |detail: &str| {
        IncidentError::Invalid(Invalid::new("duplicate_of", detail).code(Code::DuplicateTarget))
    };
    let text = given
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            IncidentError::Invalid(Invalid::required(
                "duplicate_of",
                "duplicate needs the id of the original incident",
            ))
        })?;
    let original = Uuid::parse_str(text).map_err(|_| refuse("not an incident id"))?;
    if original == id {
        return Err(refuse("an incident cannot duplicate itself"));
    }
    let loaded = match load_visible(conn, ctx, actor, original) {
        Ok(loaded) => loaded,
        Err(IncidentError::NotFound) => return Err(refuse("no such incident here")),
        Err(e) => return Err(e),
    };
    let (folded, _) = fold_doc(&loaded.doc, &loaded.authors, &loaded.meta.scope);
    if folded.state.current() == State::Duplicate {
        return Err(refuse(
            "the original is itself a duplicate; name the incident it duplicates",
        ));
    }
    Ok(original)
}

/// The ids of the incidents closed as duplicates of `id`.
pub fn duplicates_of(conn: &Connection, id: Uuid) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM incidents WHERE duplicate_of = ?1 ORDER BY created_ms")?;
    let rows = stmt.query_map([id.to_string()], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The hashes of every attachment an incident here lists: the files the blob store must keep.
pub fn referenced_blobs(
    conn: &Connection,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut stmt = conn.prepare("SELECT DISTINCT sha256 FROM incident_attachments")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The first attachment an incident here lists whose bytes the blob store lacks, skipping `skip`
/// (ones a peer said it does not have). Rows are read lazily and stop at the first match; there is
/// no fixed window, so a window's worth of unavailable attachments never hides the rest.
pub fn first_missing_attachment(
    conn: &Connection,
    skip: &std::collections::HashSet<String>,
) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT a.sha256 FROM incident_attachments a LEFT JOIN blobs b ON b.sha256 = a.sha256
         WHERE b.sha256 IS NULL",
    )?;
    let mut rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.find_map(|row| {
        row.ok()
            .filter(|s| !skip.contains(s) && crate::blobs::is_sha256_hex(s))
    }))
}

/// The areas of the incidents that list attachment `sha256`: a peer may have it exactly when it
/// holds one of them.
pub fn attachment_areas(conn: &Connection, sha256: &str) -> Result<Vec<AreaCode>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT i.area FROM incident_attachments a JOIN incidents i ON i.id = a.incident_id WHERE a.sha256 = ?1",
    )?;
    let areas: Vec<String> = stmt
        .query_map([sha256], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(areas.iter().filter_map(|a| a.parse().ok()).collect())
}

/// Whether `actor` may read the attachment `sha256`: exactly when they may read an incident that
/// lists it (its area, and for department handlers what is dispatched to their department).
pub fn attachment_visible(
    conn: &Connection,
    docs: &township_sync::DocStore,
    actor: &Actor,
    sha256: &str,
) -> Result<bool, IncidentError> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT i.id FROM incident_attachments a JOIN incidents i ON i.id = a.incident_id
             WHERE a.sha256 = ?1 AND i.area LIKE ?2 || '%'",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![sha256, actor.area.as_str()], |r| r.get(0))?
                .collect()
        })
        .map_err(|e| IncidentError::Store(e.into()))?;
    for id in ids {
        let Ok(id) = id.parse::<Uuid>() else { continue };
        if actor.role != Role::DeptHandler {
            return Ok(true);
        }
        match load(docs, conn, id) {
            Ok(loaded)
                if actor.can_reach(&loaded.meta.scope)
                    && visible_to(actor, &loaded.doc, &loaded.authors, &loaded.meta.scope) =>
            {
                return Ok(true);
            }
            Ok(_) | Err(IncidentError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// A text field naming a person (the reporter) counts only if the change that wrote it was made by
/// that person (or predates author claims); otherwise it names no one.
fn attributed(provenance: Option<&Provenance>, name: String) -> Option<String> {
    match provenance? {
        Provenance::Legacy => Some(name),
        Provenance::Claimed(a) => a.person.as_ref().filter(|p| p.name == name).map(|_| name),
        Provenance::Malformed => None,
    }
}

/// The incident's workflow folded, with every transition checked against the change that wrote it,
/// and the reporter as attributed.
pub(crate) fn fold_doc(
    doc: &AutoCommit,
    authors: &Authors,
    scope: &AreaCode,
) -> (township_sync::Folded<Folded>, String) {
    let reporter = fields::text(doc, "reporter")
        .and_then(|r| attributed(authors.of_field(doc, &automerge::ROOT, "reporter"), r))
        .unwrap_or_default();
    let transitions = township_sync::workflow::read(doc, authors);
    let folded = township_sync::workflow::fold(
        &IncidentMachine {
            reporter: &reporter,
            scope,
        },
        &transitions,
    );
    (folded, reporter)
}

/// Applies a workflow action: checks the actor's role (403) and the current state (409), then appends
/// the transition in the same transaction.
pub fn transition(
    conn: &Connection,
    ctx: &WriteCtx,
    config: &Config,
    actor: &Actor,
    id: Uuid,
    req: TransitionRequest,
) -> Result<State, IncidentError> {
    let action: Action = req
        .action
        .parse()
        .map_err(|e: String| invalid("action", e))?;
    let loaded = load_visible(conn, ctx, actor, id)?;
    let (folded, reporter) = fold_doc(&loaded.doc, &loaded.authors, &loaded.meta.scope);
    let current = folded.state.current();
    let note = req
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from);
    if note.as_deref().is_some_and(|n| n.chars().count() > 2000) {
        return Err(IncidentError::Invalid(Invalid::length(
            "note",
            0,
            2000,
            "note is at most 2000 characters",
        )));
    }
    if !workflow::role_may(action, acting(actor), &reporter, &folded.state) {
        return Err(IncidentError::Forbidden(
            Reason::new(
                Code::RoleMayNotAct,
                format!(
                    "the {} role may not {} this incident now",
                    actor.role,
                    action.as_str()
                ),
            )
            .param("role", actor.role.as_str())
            .param("action", action.as_str()),
        ));
    }
    if action == Action::Escalate && !ctx.has_upstream {
        return Err(IncidentError::Conflict(Reason::new(
            Code::NoUpstream,
            "this node has no level above to escalate to; handle the incident here",
        )));
    }
    let Some(next) = workflow::next_state(current, action) else {
        return Err(IncidentError::Conflict(
            Reason::new(
                Code::ActionNotAllowed,
                format!("cannot {} an incident that is {current}", action.as_str()),
            )
            .param("action", action.as_str())
            .param("state", current.as_str()),
        ));
    };
    if action.needs_note() && note.is_none() {
        return Err(Invalid::required(
            "note",
            format!("{} needs a note saying why", action.as_str()),
        )
        .code(Code::NoteRequired)
        .param("action", action.as_str())
        .into());
    }
    let mut t: Transition = ctx.transition(&actor.username, actor.role.as_str(), action.as_str());
    if let Some(dept) = &actor.department {
        t.data.insert("actor_department".into(), dept.clone());
    }
    if let Some(n) = &note {
        t.data.insert("note".into(), n.clone());
    }
    if action == Action::Duplicate {
        let original = check_duplicate_target(conn, ctx, actor, id, req.duplicate_of.as_deref())?;
        t.data.insert("duplicate_of".into(), original.to_string());
    }
    if action == Action::Dispatch {
        let lead = req
            .department
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                IncidentError::Invalid(Invalid::required(
                    "department",
                    "dispatch needs the lead department",
                ))
            })?;
        if config.department(lead).is_none() {
            return Err(IncidentError::Invalid(Invalid::unknown(
                "department",
                lead,
                format!("unknown department `{lead}`"),
            )));
        }
        let mut assist = Vec::new();
        for d in &req.assist_departments {
            if config.department(d).is_none() {
                return Err(IncidentError::Invalid(Invalid::unknown(
                    "assist_departments",
                    d,
                    format!("unknown department `{d}`"),
                )));
            }
            if d != lead && !assist.contains(d) {
                assist.push(d.clone());
            }
        }
        if let Some(deadline) = req.deadline_ms
            && deadline <= ctx.now_ms()
        {
            return Err(IncidentError::Invalid(
                Invalid::new("deadline", "the deadline must be in the future")
                    .code(Code::TimeOrder)
                    .param("after", "now"),
            ));
        }
        t.data.insert("department".into(), lead.to_string());
        t.data.insert("assist_departments".into(), assist.join(","));
        if let Some(d) = req.deadline_ms {
            t.data.insert("deadline_ms".into(), d.to_string());
        }
    }
    let detail = json!({"action": action.as_str(), "from": current.as_str(), "data": t.data});
    // The state was folded just above in this same write job, so nothing can land in between: the
    // transition takes the incident to `next`. (Folding again inside the edit would ask automerge
    // for the document's changes mid-edit, which commits them without their author claim.)
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id,
            kind: KIND,
            action: &format!("incident.{}", action.as_str()),
            detail,
        },
        move |doc| Ok(township_sync::workflow::append(doc, &t)?),
    )?;
    Ok(next)
}

fn list_obj(doc: &mut AutoCommit, key: &str) -> Result<automerge::ObjId, DocError> {
    match doc.get(automerge::ROOT, key)? {
        Some((Value::Object(ObjType::List), id)) => Ok(id),
        _ => Ok(doc.put_object(automerge::ROOT, key, ObjType::List)?),
    }
}

pub fn comment(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    id: Uuid,
    text: &str,
) -> Result<(), IncidentError> {
    let text = text.trim();
    if !(1..=2000).contains(&text.chars().count()) {
        return Err(IncidentError::Invalid(Invalid::length(
            "text",
            1,
            2000,
            "a comment is 1 to 2000 characters",
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid(
            "text",
            "a comment may not contain control characters",
        ));
    }
    load_visible(conn, ctx, actor, id)?;
    let (author, now, body, comment_id) = (
        actor.username.clone(),
        ctx.now_ms(),
        text.to_string(),
        Uuid::now_v7().to_string(),
    );
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id,
            kind: KIND,
            action: "incident.comment",
            detail: json!({"length": body.chars().count()}),
        },
        move |doc| {
            let list = list_obj(doc, "comments")?;
            let index = doc.length(&list);
            let item = doc.insert_object(&list, index, ObjType::Map)?;
            doc.put(&item, "id", comment_id.as_str())?;
            doc.put(&item, "author", author.as_str())?;
            doc.put(&item, "text", body.as_str())?;
            doc.put(&item, "at_ms", now)?;
            Ok(())
        },
    )?;
    Ok(())
}

pub fn rate(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    id: Uuid,
    score: i64,
    comment: Option<String>,
) -> Result<(), IncidentError> {
    if !(1..=5).contains(&score) {
        return Err(invalid("score", "score is 1 to 5"));
    }
    if comment.as_deref().is_some_and(|c| c.chars().count() > 500) {
        return Err(IncidentError::Invalid(Invalid::length(
            "comment",
            0,
            500,
            "comment is at most 500 characters",
        )));
    }
    let loaded = load_visible(conn, ctx, actor, id)?;
    let (folded, reporter) = fold_doc(&loaded.doc, &loaded.authors, &loaded.meta.scope);
    if !(actor.username == reporter || actor.is_any(&[Role::TownshipStaff, Role::Admin])) {
        return Err(IncidentError::Forbidden(Reason::new(
            Code::RatingNotYours,
            "only the reporter or township staff rate an incident",
        )));
    }
    if folded.state.current() != State::Closed {
        return Err(IncidentError::Conflict(Reason::new(
            Code::RatingNotClosed,
            "an incident is rated after it is closed",
        )));
    }
    let (by, now) = (actor.username.clone(), ctx.now_ms());
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id,
            kind: KIND,
            action: "incident.rating",
            detail: json!({"score": score}),
        },
        move |doc| {
            let map = doc.put_object(automerge::ROOT, "rating", ObjType::Map)?;
            doc.put(&map, "score", score)?;
            if let Some(c) = comment.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
                doc.put(&map, "comment", c)?;
            }
            doc.put(&map, "by", by.as_str())?;
            doc.put(&map, "at_ms", now)?;
            Ok(())
        },
    )?;
    Ok(())
}

/// A stored attachment, as the API reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attachment {
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
    pub added_by: String,
    pub at_ms: i64,
}

/// The day (Beijing time, UTC+8) an instant falls on, for the daily upload quota.
fn beijing_day(ms: i64) -> i64 {
    ms.saturating_add(8 * 3_600_000).div_euclid(86_400_000)
}

/// Bytes `username` uploaded on the Beijing day of `now_ms`.
pub fn uploaded_today(conn: &Connection, username: &str, now_ms: i64) -> Result<u64, StoreError> {
    let bytes: Option<i64> = conn
        .query_row(
            "SELECT bytes FROM upload_use WHERE username = ?1 AND day = ?2",
            params![username, beijing_day(now_ms)],
            |r| r.get(0),
        )
        .optional()?;
    Ok(bytes.map_or(0, |b| u64::try_from(b).unwrap_or(0)))
}

/// Refuses an upload of `size` bytes that would take `username` past `quota` today (0: no quota).
pub fn check_quota(
    conn: &Connection,
    username: &str,
    size: u64,
    quota: u64,
    now_ms: i64,
) -> Result<(), IncidentError> {
    if quota == 0 {
        return Ok(());
    }
    let used = uploaded_today(conn, username, now_ms)?;
    if used.saturating_add(size) > quota {
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        return Err(IncidentError::Quota(
            Reason::new(
                Code::QuotaExceeded,
                format!(
                    "daily upload quota reached: {username} may upload {:.0} MB a day (incidents.upload_quota_per_day) and has used {:.1} MB today; this file is {:.1} MB",
                    mb(quota),
                    mb(used),
                    mb(size)
                ),
            )
            .param("quota_mb", mb(quota).round())
            .param("used_mb", (mb(used) * 10.0).round() / 10.0),
        ));
    }
    Ok(())
}

/// Takes `size` bytes of `username`'s quota for today, in a write, before the file is stored: uploads
/// racing each other cannot all pass a check made before any of them counted.
pub fn reserve_upload(
    conn: &Connection,
    username: &str,
    size: u64,
    quota: u64,
    now_ms: i64,
) -> Result<(), IncidentError> {
    check_quota(conn, username, size, quota, now_ms)?;
    conn.prepare_cached(
        "INSERT INTO upload_use (username, day, bytes) VALUES (?1, ?2, ?3)
         ON CONFLICT(username, day) DO UPDATE SET bytes = bytes + excluded.bytes",
    )
    .map_err(StoreError::from)?
    .execute(params![
        username,
        beijing_day(now_ms),
        i64::try_from(size).unwrap_or(i64::MAX)
    ])
    .map_err(StoreError::from)?;
    Ok(())
}

/// Gives back a reservation whose upload did not become an attachment.
pub fn release_upload(
    conn: &Connection,
    username: &str,
    size: u64,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE upload_use SET bytes = max(0, bytes - ?3) WHERE username = ?1 AND day = ?2",
    )?
    .execute(params![
        username,
        beijing_day(now_ms),
        i64::try_from(size).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

/// Lists an uploaded file on the incident (the actor reserved its bytes of quota first).
pub fn attach(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    id: Uuid,
    file: Attachment,
) -> Result<(), IncidentError> {
    load_visible(conn, ctx, actor, id)?;
    crate::blobs::register(
        conn,
        &file.sha256,
        file.size as usize,
        &file.content_type,
        ctx.now_ms(),
    )?;
    let detail =
        json!({"sha256": file.sha256, "size": file.size, "content_type": file.content_type});
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id,
            kind: KIND,
            action: "incident.attach",
            detail,
        },
        move |doc| {
            let list = list_obj(doc, "attachments")?;
            if attachment_hashes(doc).contains(&file.sha256) {
                return Ok(());
            }
            let index = doc.length(&list);
            let item = doc.insert_object(&list, index, ObjType::Map)?;
            doc.put(&item, "sha256", file.sha256.as_str())?;
            doc.put(&item, "size", file.size)?;
            doc.put(&item, "content_type", file.content_type.as_str())?;
            doc.put(&item, "added_by", file.added_by.as_str())?;
            doc.put(&item, "at_ms", file.at_ms)?;
            Ok(())
        },
    )?;
    Ok(())
}

fn int_in(doc: &AutoCommit, obj: &automerge::ObjId, key: &str) -> Option<i64> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => s.as_i64(),
        _ => None,
    }
}

fn maps_in_list(doc: &AutoCommit, key: &str) -> Vec<automerge::ObjId> {
    let Ok(lists) = doc.get_all(automerge::ROOT, key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (value, list) in lists {
        if !matches!(value, Value::Object(ObjType::List)) {
            continue;
        }
        for i in 0..doc.length(&list) {
            if let Ok(Some((Value::Object(ObjType::Map), item))) = doc.get(&list, i) {
                out.push(item);
            }
        }
    }
    out
}

/// Who a list item (comment, attachment) is by: the person whose change made it, when the change
/// names one; the item's own field only for items from before author claims.
fn item_author(
    doc: &AutoCommit,
    authors: &Authors,
    item: &automerge::ObjId,
    field: &str,
) -> String {
    match authors.of_op(item) {
        Provenance::Claimed(a) => a.person.as_ref().map_or_else(
            || crate::auth::actor::SYSTEM.to_string(),
            |p| p.name.clone(),
        ),
        Provenance::Legacy => fields::text_in(doc, item, field).unwrap_or_default(),
        Provenance::Malformed => String::new(),
    }
}

/// The hashes of the attachments listed in the document.
fn attachment_hashes(doc: &AutoCommit) -> Vec<String> {
    maps_in_list(doc, "attachments")
        .into_iter()
        .filter_map(|item| fields::text_in(doc, &item, "sha256"))
        .filter(|s| crate::blobs::is_sha256_hex(s))
        .collect()
}

pub fn read_attachments(doc: &AutoCommit, authors: &Authors) -> Vec<Attachment> {
    let mut out: Vec<Attachment> = Vec::new();
    for item in maps_in_list(doc, "attachments") {
        let Some(sha256) =
            fields::text_in(doc, &item, "sha256").filter(|s| crate::blobs::is_sha256_hex(s))
        else {
            continue;
        };
        if out.iter().any(|a| a.sha256 == sha256) {
            continue;
        }
        out.push(Attachment {
            sha256,
            size: int_in(doc, &item, "size").unwrap_or(0),
            content_type: fields::text_in(doc, &item, "content_type").unwrap_or_default(),
            added_by: item_author(doc, authors, &item, "added_by"),
            at_ms: int_in(doc, &item, "at_ms").unwrap_or(0),
        });
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Comment {
    pub id: String,
    pub author: String,
    pub text: String,
    pub at_ms: i64,
}

pub fn read_comments(doc: &AutoCommit, authors: &Authors) -> Vec<Comment> {
    let mut out: Vec<Comment> = maps_in_list(doc, "comments")
        .into_iter()
        .filter_map(|item| {
            Some(Comment {
                id: fields::text_in(doc, &item, "id")?,
                author: item_author(doc, authors, &item, "author"),
                text: fields::text_in(doc, &item, "text")?,
                at_ms: int_in(doc, &item, "at_ms").unwrap_or(0),
            })
        })
        .collect();
    out.sort_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
    out
}

fn rating(doc: &AutoCommit) -> Option<serde_json::Value> {
    let Ok(Some((Value::Object(ObjType::Map), map))) = doc.get(automerge::ROOT, "rating") else {
        return None;
    };
    Some(json!({
        "score": int_in(doc, &map, "score"),
        "comment": fields::text_in(doc, &map, "comment"),
        "by": fields::text_in(doc, &map, "by"),
        "at_ms": int_in(doc, &map, "at_ms"),
    }))
}

/// When the incident is due, from its category and workflow: (start, due, kind).
pub fn due(
    category: Option<&Category>,
    created_ms: i64,
    folded: &Folded,
) -> Option<(i64, i64, &'static str)> {
    let category = category?;
    match folded.current() {
        State::Reported => Some((
            created_ms,
            created_ms.saturating_add(millis(category.accept_within)),
            "accept",
        )),
        State::Accepted | State::Escalated | State::Dispatched | State::InProgress => {
            let start = folded.accepted_ms.unwrap_or(created_ms);
            let due = folded
                .deadline_ms
                .unwrap_or(start.saturating_add(millis(category.resolve_within)));
            Some((start, due, "resolve"))
        }
        State::Resolved | State::Closed | State::Rejected | State::Duplicate => None,
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// ok, near (80% of the time used) or overdue. In i128, so times from a record (which a peer
/// wrote) cannot overflow the comparison.
pub fn due_state(now: i64, start: i64, due: i64) -> &'static str {
    let (now, start, due) = (i128::from(now), i128::from(start), i128::from(due));
    if now > due {
        "overdue"
    } else if (now - start) * 10 >= (due - start) * 8 {
        "near"
    } else {
        "ok"
    }
}

/// The full incident as the API shows it, with the actions `actor` may take now.
/// `has_upstream`: whether escalation has somewhere to go from this node.
pub fn view(
    loaded: &Loaded,
    config: &Config,
    actor: &Actor,
    now: i64,
    has_upstream: bool,
) -> serde_json::Value {
    let (doc, meta, authors) = (&loaded.doc, &loaded.meta, &loaded.authors);
    let (folded, reporter) = fold_doc(doc, authors, &meta.scope);
    let state = folded.state.current();
    let category = fields::text(doc, "category").unwrap_or_default();
    let created_ms = fields::int(doc, "created_ms").unwrap_or(meta.created_ms);
    let due = due(config.category(&category), created_ms, &folded.state);
    let location = match (fields::float(doc, "lat"), fields::float(doc, "lon")) {
        (Some(lat), Some(lon)) => json!({"lat": lat, "lon": lon}),
        _ => serde_json::Value::Null,
    };
    let allowed: Vec<&str> = workflow::ALL_ACTIONS
        .into_iter()
        .filter(|a| *a != Action::Escalate || has_upstream)
        .filter(|a| workflow::next_state(state, *a).is_some())
        .filter(|a| workflow::role_may(*a, acting(actor), &reporter, &folded.state))
        .map(Action::as_str)
        .collect();
    let field_conflicts: serde_json::Map<String, serde_json::Value> =
        ["title", "description", "category"]
            .into_iter()
            .filter_map(|k| {
                let all = fields::all_texts(doc, k);
                (all.len() > 1).then(|| (k.to_string(), json!(all)))
            })
            .collect();
    json!({
        "id": meta.id.to_string(),
        "category": category,
        "title": fields::text(doc, "title").unwrap_or_default(),
        "description": fields::text(doc, "description").unwrap_or_default(),
        "area": meta.scope,
        "location": location,
        "place": fields::text(doc, "place"),
        "reporter": reporter,
        "state": state,
        "lead_department": folded.state.lead_department,
        "assist_departments": folded.state.assist_departments,
        "assignee": folded.state.assignee,
        "escalated": folded.state.escalated,
        "deadline_ms": due.map(|d| d.1),
        "deadline_kind": due.map(|d| d.2),
        "due_state": due.map(|(s, d, _)| due_state(now, s, d)).unwrap_or("ok"),
        "result_note": folded.state.result_note,
        "duplicate_of": folded.state.duplicate_of,
        "transitions": folded.applied.iter().map(transition_json).collect::<Vec<_>>(),
        "conflicts": folded.conflicts.iter().map(|c| json!({
            "transition": transition_json(&c.transition), "reason": c.reason,
        })).collect::<Vec<_>>(),
        "field_conflicts": field_conflicts,
        "comments": read_comments(doc, authors),
        "attachments": read_attachments(doc, authors),
        "rating": rating(doc),
        "allowed_actions": allowed,
        "created_ms": created_ms,
        "updated_ms": meta.updated_ms,
    })
}

/// A transition as the API shows it: its fields, plus `at_ms` so clients need not parse the
/// clock's wire format (`at` stays for ordering ties and for what is stored).
fn transition_json(t: &Transition) -> serde_json::Value {
    let mut value = serde_json::to_value(t).unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("at_ms".into(), json!(t.at.wall_ms));
    }
    value
}

/// Keeps the `incidents` table, its full-text index and the attachment index in step.
pub struct IncidentProjection {
    categories: Arc<Vec<Category>>,
}

impl IncidentProjection {
    pub fn shared(categories: Vec<Category>) -> Arc<dyn Projection> {
        Arc::new(IncidentProjection {
            categories: Arc::new(categories),
        })
    }
}

/// What the incidents projection reads from a record: all its rows need but the store's times. Read
/// on the writer for an edit, and beside it for a record new here ([`Projection::read`]).
struct IncidentFields {
    state: Folded,
    conflicts: i64,
    reporter: String,
    category: String,
    created_ms: Option<i64>,
    title: String,
    description: String,
    lat: Option<f64>,
    lon: Option<f64>,
    place: Option<String>,
    score: Option<i64>,
    /// The attachments' hashes.
    attachments: Vec<String>,
}

impl IncidentFields {
    fn read(scope: &AreaCode, doc: &AutoCommit, authors: &Authors) -> IncidentFields {
        let (folded, reporter) = fold_doc(doc, authors, scope);
        let root = fields::Fields::root(doc);
        IncidentFields {
            conflicts: folded.conflicts.len() as i64,
            state: folded.state,
            reporter,
            category: root.text("category").unwrap_or_default(),
            created_ms: root.int("created_ms"),
            title: root.text("title").unwrap_or_default(),
            description: root.text("description").unwrap_or_default(),
            lat: root.float("lat"),
            lon: root.float("lon"),
            place: root.text("place"),
            score: rating(doc).and_then(|r| r["score"].as_i64()),
            attachments: read_attachments(doc, authors)
                .into_iter()
                .map(|a| a.sha256)
                .collect(),
        }
    }
}

impl IncidentProjection {
    /// The incident's rows from what was read of its record; `meta` gives the store's times.
    fn write_row(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        read: IncidentFields,
    ) -> Result<(), ProjectionError> {
        let IncidentFields {
            state: f,
            conflicts,
            reporter,
            category,
            created_ms,
            title,
            description,
            lat,
            lon,
            place,
            score,
            attachments,
        } = read;
        let f = &f;
        let created_ms = created_ms.unwrap_or(meta.created_ms);
        let due = due(
            self.categories.iter().find(|c| c.name == category),
            created_ms,
            f,
        );
        let due_state_now = due
            .map(|(s, d, _)| due_state(meta.updated_ms, s, d))
            .unwrap_or("ok");
        let on_time = match (f.resolved_ms, f.current()) {
            (Some(resolved), State::Resolved | State::Closed) => {
                let start = f.accepted_ms.unwrap_or(created_ms);
                let limit = f.deadline_ms.or_else(|| {
                    self.categories
                        .iter()
                        .find(|c| c.name == category)
                        .map(|c| start.saturating_add(millis(c.resolve_within)))
                });
                limit.map(|l| i64::from(resolved <= l))
            }
            _ => None,
        };
        let id = meta.id.to_string();
        let row = params![
            id,
            meta.scope.as_str(),
            category,
            title,
            description,
            f.current().as_str(),
            reporter,
            f.lead_department,
            if f.assist_departments.is_empty() {
                String::new()
            } else {
                format!(",{},", f.assist_departments.join(","))
            },
            f.assignee,
            lat,
            lon,
            place,
            f.escalated,
            created_ms,
            meta.updated_ms,
            f.accepted_ms,
            f.dispatched_ms,
            f.resolved_ms,
            f.closed_ms,
            f.rejected_ms,
            due.map(|d| d.0),
            due.map(|d| d.1),
            due.map(|d| d.2),
            due_state_now,
            on_time,
            score,
            conflicts,
            f.duplicate_of,
        ];
        // No upsert and no trigger: either makes the write a multi-write statement, which SQLite
        // runs with a statement journal (see store::search_index). The search index is noted here.
        let held: Option<(i64, String, String)> = conn
            .prepare_cached("SELECT row, title, description FROM incidents WHERE id = ?1")?
            .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        match held {
            None => {
                conn.prepare_cached("INSERT INTO incidents (id, area, category, title, description, state, reporter, lead_department,
                        assist_departments, assignee, lat, lon, place, escalated, created_ms, updated_ms, accepted_ms, dispatched_ms,
                        resolved_ms, closed_ms, rejected_ms, due_start_ms, due_ms, due_kind, due_state, on_time, rating, conflicts, duplicate_of)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25,
                        ?26, ?27, ?28, ?29)")?
                    .execute(row)?;
                crate::store::search_index::note_inserted(conn, conn.last_insert_rowid())?;
            }
            Some((held_row, held_title, held_description)) => {
                if held_title != title || held_description != description {
                    crate::store::search_index::note_changed(
                        conn,
                        held_row,
                        &held_title,
                        &held_description,
                    )?;
                }
                // ?15 (created_ms) stays as first projected.
                conn.prepare_cached("UPDATE incidents SET area = ?2, category = ?3, title = ?4, description = ?5, state = ?6,
                        reporter = ?7, lead_department = ?8, assist_departments = ?9, assignee = ?10, lat = ?11, lon = ?12,
                        place = ?13, escalated = ?14, updated_ms = ?16, accepted_ms = ?17, dispatched_ms = ?18, resolved_ms = ?19,
                        closed_ms = ?20, rejected_ms = ?21, due_start_ms = ?22, due_ms = ?23, due_kind = ?24, due_state = ?25,
                        on_time = ?26, rating = ?27, conflicts = ?28, duplicate_of = ?29
                     WHERE id = ?1")?
                    .execute(row)?;
            }
        }
        conn.prepare_cached("DELETE FROM incident_attachments WHERE incident_id = ?1")?
            .execute([&id])?;
        for sha256 in attachments {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO incident_attachments (incident_id, sha256) VALUES (?1, ?2)",
            )?
            .execute(params![&id, sha256])?;
        }
        Ok(())
    }
}

impl Projection for IncidentProjection {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// Transitions, comments and attachments are only ever added: from below, nothing in them is
    /// removed or changed.
    fn append_only(&self) -> &'static [&'static str] {
        &[
            township_sync::workflow::TRANSITIONS_KEY,
            "comments",
            "attachments",
        ]
    }

    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &AutoCommit,
        authors: &Authors,
    ) -> Result<(), ProjectionError> {
        self.write_row(conn, meta, IncidentFields::read(&meta.scope, doc, authors))
    }

    fn read(
        &self,
        scope: &AreaCode,
        doc: &AutoCommit,
        authors: &Authors,
    ) -> Option<township_sync::docstore::ProjectionInput> {
        Some(Box::new(IncidentFields::read(scope, doc, authors)))
    }

    fn write(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        input: township_sync::docstore::ProjectionInput,
    ) -> Result<(), ProjectionError> {
        let fields = input.downcast::<IncidentFields>().map_err(|_| {
            ProjectionError("the incidents projection was handed another kind's reading".into())
        })?;
        self.write_row(conn, meta, *fields)
    }

    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
        conn.execute_batch("DELETE FROM incident_attachments; DELETE FROM incidents;")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::ActorId;
    use township_sync::Author;
    use township_sync::docstore::DocStore;

    fn found(conn: &Connection, term: &str) -> i64 {
        conn.query_row(
            "SELECT count(*) FROM incidents_fts WHERE incidents_fts MATCH ?1",
            [term],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// Every column of an incident's rows, as text.
    fn incident_rows(conn: &Connection, id: Uuid) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT * FROM incidents WHERE id = ?1")
            .unwrap();
        let columns = stmt.column_count();
        let mut out: Vec<String> = stmt
            .query_row([id.to_string()], |r| {
                Ok((0..columns)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect::<Vec<_>>())
            })
            .unwrap();
        let mut attachments = conn
            .prepare("SELECT sha256 FROM incident_attachments WHERE incident_id = ?1")
            .unwrap();
        out.extend(
            attachments
                .query_map([id.to_string()], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap),
        );
        out
    }

    /// A record new here is read beside the writer and written on it; its rows must be exactly
    /// those of the same record read on the writer.
    #[test]
    fn an_incident_read_ahead_projects_the_same_rows_as_one_read_on_the_writer() {
        let village: AreaCode = "330723001001".parse().unwrap();
        let staff = Author::person(
            "330723001".parse().unwrap(),
            township_sync::author::Person {
                name: "zhang".into(),
                role: "township_staff".into(),
                area: "330723001".parse().unwrap(),
            },
        );
        let reporter = Author::person(
            village.clone(),
            township_sync::author::Person {
                name: "li".into(),
                role: "grid_worker".into(),
                area: village.clone(),
            },
        );
        let categories = vec![Category {
            name: "环境卫生".into(),
            accept_within: std::time::Duration::from_secs(3600),
            resolve_within: std::time::Duration::from_secs(86_400),
            auto_escalate: false,
        }];
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, actor: u8| {
            let path = dir.path().join(name);
            let mut conn = Connection::open(&path).unwrap();
            crate::store::migrations::migrate(&mut conn, &path).unwrap();
            let docs = DocStore::new(
                ActorId::from([actor; 16]),
                vec![IncidentProjection::shared(categories.clone())],
                || 5_000,
            );
            (conn, docs)
        };
        let (source, source_docs) = open("source.db", 1);
        let meta = source_docs
            .create(&source, &reporter, KIND, &village, |d| {
                d.put(automerge::ROOT, "title", "河道垃圾堆积")?;
                d.put(automerge::ROOT, "description", "桥下约两吨")?;
                d.put(automerge::ROOT, "category", "环境卫生")?;
                d.put(automerge::ROOT, "lat", 28.61)?;
                d.put(automerge::ROOT, "lon", 120.08)?;
                d.put(automerge::ROOT, "place", "东溪桥")?;
                d.put(automerge::ROOT, "reporter", "li")?;
                d.put(automerge::ROOT, "created_ms", 1_000)?;
                township_sync::workflow::init(d)?;
                d.put_object(automerge::ROOT, "comments", ObjType::List)?;
                let list = d.put_object(automerge::ROOT, "attachments", ObjType::List)?;
                let photo = d.insert_object(&list, 0, ObjType::Map)?;
                d.put(&photo, "sha256", "ab".repeat(32))?;
                d.put(&photo, "size", 1_234)?;
                d.put(&photo, "content_type", "image/jpeg")?;
                Ok(())
            })
            .unwrap();
        for (i, action) in ["accept", "dispatch"].into_iter().enumerate() {
            let mut t = township_sync::workflow::Transition {
                id: Uuid::now_v7().to_string(),
                at: township_sync::hlc::Timestamp {
                    wall_ms: 2_000 + i as u64,
                    counter: 0,
                },
                actor: "zhang".into(),
                role: "township_staff".into(),
                action: action.into(),
                data: Default::default(),
                written: Default::default(),
            };
            if action == "dispatch" {
                t.data.insert("department".into(), "水利站".into());
                t.data
                    .insert("assist_departments".into(), "环卫所,派出所".into());
            }
            source_docs
                .change(&source, &staff, meta.id, move |d| {
                    Ok(township_sync::workflow::append(d, &t)?)
                })
                .unwrap();
        }
        let bytes = DocStore::stored_bytes(&source, meta.id).unwrap().unwrap();

        let (ahead, ahead_docs) = open("ahead.db", 2);
        let (direct, direct_docs) = open("direct.db", 3);
        let preloaded = ahead_docs.preload(KIND, village.as_str(), &bytes);
        assert!(preloaded.is_some());
        for (conn, docs, preloaded) in [
            (&ahead, &ahead_docs, preloaded),
            (&direct, &direct_docs, None),
        ] {
            docs.merge_remote_preloaded(
                conn,
                township_sync::docstore::Sender::Trusted,
                meta.id,
                KIND,
                &village,
                &bytes,
                preloaded,
            )
            .unwrap();
        }
        let rows = incident_rows(&ahead, meta.id);
        assert_eq!(rows, incident_rows(&direct, meta.id));
        for expected in [
            "河道垃圾堆积",
            "东溪桥",
            "dispatched",
            "水利站",
            "li",
            &"ab".repeat(32),
        ] {
            assert!(
                rows.iter().any(|c| c.contains(expected)),
                "{expected} in {rows:?}"
            );
        }
    }

    /// The projection notes its own rows for the search index (no trigger does): a new incident,
    /// a changed title, and a rebuild all reach the index, and what the index held is removed.
    #[test]
    fn the_projection_keeps_the_search_index_up_to_date_through_edits_and_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = Connection::open(&path).unwrap();
        crate::store::migrations::migrate(&mut conn, &path).unwrap();
        let docs = DocStore::new(
            ActorId::from([7u8; 16]),
            vec![IncidentProjection::shared(Vec::new())],
            || 1_000,
        );
        let author = Author::node("330723001001".parse().unwrap());
        let scope: AreaCode = "330723001001".parse().unwrap();
        let meta = docs
            .create(&conn, &author, KIND, &scope, |d| {
                d.put(automerge::ROOT, "title", "河道垃圾堆积")?;
                d.put(automerge::ROOT, "description", "请尽快处理")?;
                d.put(automerge::ROOT, "category", "环境卫生")?;
                Ok(())
            })
            .unwrap();
        crate::store::search_index::flush(&conn).unwrap();
        assert_eq!(found(&conn, "河道垃圾"), 1);

        docs.change(&conn, &author, meta.id, |d| {
            d.put(automerge::ROOT, "title", "河道漂浮物")?;
            Ok(())
        })
        .unwrap();
        crate::store::search_index::flush(&conn).unwrap();
        assert_eq!(found(&conn, "河道垃圾"), 0, "the old title left the index");
        assert_eq!(found(&conn, "漂浮物"), 1);
        assert_eq!(found(&conn, "请尽快"), 1, "the unchanged description stays");

        assert_eq!(docs.rebuild_projections(&conn).unwrap(), 1);
        crate::store::search_index::flush(&conn).unwrap();
        assert_eq!(found(&conn, "漂浮物"), 1);
        assert_eq!(found(&conn, "河道垃圾"), 0);
        conn.execute(
            "INSERT INTO incidents_fts (incidents_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .unwrap();
    }
}
