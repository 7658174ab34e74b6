//! Warnings (issue 12): the four-colour warnings a node issues for its area, raised by rules or made
//! by people, as records (kind `warning`, scoped to their area) that flow up and down the tree.
//!
//! Everything that can change is a transition (`raise`, `issue`, `update`, `cancel`, `expire`,
//! `all_clear`) carrying the level and texts it sets, folded like incidents: two nodes acting apart
//! merge into one state on every replica, with conflicts shown. The document itself holds only what
//! is fixed at creation (event, status, source).
//!
//! Authority rule: a transition counts only if the change that wrote it claims its actor. A person's
//! `issue`, `update` or `cancel` counts only from township_staff, county_it or admin at a township or
//! above whose area contains the warning's; `raise`, `all_clear`, `expire` and a rule's own `issue`
//! and `update` are the system's, from a node that covers the warning. A village hub can therefore
//! warn its own village (its rules, with the county link down) and nothing above it.

pub mod automation;
pub mod events;
mod routes;

use crate::codes::{Code, Reason};
use std::collections::BTreeMap;

use automerge::AutoCommit;
use automerge::transaction::Transactable;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;
use township_sync::docstore::{DocMeta, Projection, ProjectionError};
use township_sync::workflow::{Folded as FoldOutcome, Machine};
use township_sync::{AreaCode, Authors, DocError, Transition, fields};
use uuid::Uuid;

pub use routes::routes;

use crate::auth::actor::{Actor, ActorRole};
use crate::invalid::Invalid;
use crate::records::{RecordChange, WriteCtx};
use crate::rules::eval::Level;
use crate::rules::spec::Event;
use crate::store::StoreError;

pub const KIND: &str = "warning";

#[derive(Debug, thiserror::Error)]
pub enum WarningError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Forbidden(crate::codes::Reason),
    #[error("warning not found")]
    NotFound,
    #[error("{0}")]
    Conflict(crate::codes::Reason),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<DocError> for WarningError {
    fn from(e: DocError) -> Self {
        match e {
            DocError::NotFound(_) | DocError::WrongKind { .. } => WarningError::NotFound,
            other => WarningError::Store(other.into()),
        }
    }
}

/// Where a warning is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Created, nothing counted yet (never shown: every warning starts with `raise` or `issue`).
    New,
    Raised,
    Issued,
    Cancelled,
    Expired,
    Cleared,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Raised => "raised",
            State::Issued => "issued",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
            State::Cleared => "cleared",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, State::Raised | State::Issued)
    }
}

/// The actions of the warning workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Raise,
    Issue,
    Update,
    Cancel,
    Expire,
    AllClear,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Raise => "raise",
            Action::Issue => "issue",
            Action::Update => "update",
            Action::Cancel => "cancel",
            Action::Expire => "expire",
            Action::AllClear => "all_clear",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        [
            Action::Raise,
            Action::Issue,
            Action::Update,
            Action::Cancel,
            Action::Expire,
            Action::AllClear,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }

    /// The state after this action, if it may be taken in `from`.
    pub fn next(self, from: State) -> Option<State> {
        match (self, from) {
            (Action::Raise, State::New) => Some(State::Raised),
            (Action::Issue, State::New | State::Raised) => Some(State::Issued),
            (Action::Update, s) if s.is_open() => Some(s),
            (Action::Cancel, s) if s.is_open() => Some(State::Cancelled),
            (Action::Expire, s) if s.is_open() => Some(State::Expired),
            (Action::AllClear, s) if s.is_open() => Some(State::Cleared),
            _ => None,
        }
    }

    /// Actions only the system takes (a rule, the expiry timer).
    fn system_only(self) -> bool {
        matches!(self, Action::Raise | Action::Expire | Action::AllClear)
    }
}

/// Who may issue, update and cancel warnings for `area`.
pub fn may_warn(actor: &Actor, area: &AreaCode) -> bool {
    actor
        .role
        .person()
        .is_some_and(|r| crate::rules::record::may_edit(r, &actor.area, area))
}

/// The texts and times a transition sets; fields absent keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Content {
    pub level: Option<Level>,
    pub headline: Option<String>,
    pub description: Option<String>,
    pub instruction: Option<String>,
    /// The English texts, when someone wrote them (CAP then carries an `en` info beside `zh-CN`).
    pub headline_en: Option<String>,
    pub description_en: Option<String>,
    pub instruction_en: Option<String>,
    pub areas: Option<Vec<AreaCode>>,
    pub onset_ms: Option<i64>,
    pub expires_ms: Option<i64>,
}

impl Content {
    fn into_data(self, data: &mut BTreeMap<String, String>) {
        if let Some(l) = self.level {
            data.insert("level".into(), l.as_str().into());
        }
        for (k, v) in [
            ("headline", self.headline),
            ("description", self.description),
            ("instruction", self.instruction),
            ("headline_en", self.headline_en),
            ("description_en", self.description_en),
            ("instruction_en", self.instruction_en),
        ] {
            if let Some(v) = v {
                data.insert(k.into(), v);
            }
        }
        if let Some(areas) = self.areas {
            let list: Vec<&str> = areas.iter().map(AreaCode::as_str).collect();
            data.insert("areas".into(), list.join(","));
        }
        if let Some(t) = self.onset_ms {
            data.insert("onset_ms".into(), t.to_string());
        }
        if let Some(t) = self.expires_ms {
            data.insert("expires_ms".into(), t.to_string());
        }
    }
}

/// What the transitions fold to.
#[derive(Debug, Clone, Serialize)]
pub struct Folded {
    pub state: State,
    pub level: Option<Level>,
    pub headline: String,
    pub description: String,
    pub instruction: String,
    pub headline_en: String,
    pub description_en: String,
    pub instruction_en: String,
    pub areas: Vec<String>,
    pub onset_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    pub issued_ms: Option<i64>,
    pub ended_ms: Option<i64>,
}

struct WarningMachine<'a> {
    scope: &'a AreaCode,
}

impl Machine for WarningMachine<'_> {
    type State = Folded;

    fn scope(&self) -> Option<&AreaCode> {
        Some(self.scope)
    }

    fn initial(&self) -> Folded {
        Folded {
            state: State::New,
            level: None,
            headline: String::new(),
            description: String::new(),
            instruction: String::new(),
            headline_en: String::new(),
            description_en: String::new(),
            instruction_en: String::new(),
            areas: vec![self.scope.to_string()],
            onset_ms: None,
            expires_ms: None,
            issued_ms: None,
            ended_ms: None,
        }
    }

    fn apply(&self, f: &Folded, t: &Transition) -> Result<Folded, String> {
        let action =
            Action::parse(&t.action).ok_or_else(|| format!("unknown action `{}`", t.action))?;
        let next = action.next(f.state).ok_or_else(|| {
            format!(
                "{} is not possible when the warning is {}",
                action.as_str(),
                f.state.as_str()
            )
        })?;
        let role: ActorRole = t
            .role
            .parse()
            .map_err(|e: crate::auth::roles::UnknownRole| e.to_string())?;
        match role {
            ActorRole::System => {}
            ActorRole::Person(r) => {
                if action.system_only() {
                    return Err(format!(
                        "{} is the system's, not {}'s",
                        action.as_str(),
                        t.actor
                    ));
                }
                // The person's area comes from the change's claim, which the fold already matched
                // to the transition's actor.
                let area = match &t.written {
                    township_sync::Written::By(township_sync::Provenance::Claimed(a)) => {
                        a.person.as_ref().map(|p| p.area.clone())
                    }
                    _ => None,
                };
                let allowed =
                    area.is_some_and(|a| crate::rules::record::may_edit(r, &a, self.scope));
                if !allowed {
                    return Err(format!(
                        "{} ({}) may not {} this warning",
                        t.actor,
                        t.role,
                        action.as_str()
                    ));
                }
            }
        }
        let at = i64::try_from(t.at.wall_ms).unwrap_or(i64::MAX);
        let mut out = f.clone();
        out.state = next;
        let d = &t.data;
        if let Some(level) = d.get("level") {
            out.level = Some(
                level
                    .parse()
                    .map_err(|()| format!("unknown level `{level}`"))?,
            );
        }
        for (key, field) in [
            ("headline", &mut out.headline),
            ("description", &mut out.description),
            ("instruction", &mut out.instruction),
            ("headline_en", &mut out.headline_en),
            ("description_en", &mut out.description_en),
            ("instruction_en", &mut out.instruction_en),
        ] {
            if let Some(v) = d.get(key) {
                *field = v.clone();
            }
        }
        if let Some(areas) = d.get("areas") {
            let parsed: Vec<AreaCode> = areas
                .split(',')
                .map(|a| a.parse::<AreaCode>().map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            if let Some(outside) = parsed.iter().find(|a| !self.scope.contains(a)) {
                return Err(format!(
                    "area {outside} lies outside the warning's area {}",
                    self.scope
                ));
            }
            out.areas = parsed.iter().map(ToString::to_string).collect();
        }
        if let Some(v) = d.get("onset_ms") {
            out.onset_ms = v.parse().ok();
        }
        if let Some(v) = d.get("expires_ms") {
            out.expires_ms = v.parse().ok();
        }
        if action == Action::Issue {
            out.issued_ms = Some(at);
        }
        if !next.is_open() {
            out.ended_ms = Some(at);
        }
        if out.level.is_none() {
            return Err("a warning needs a level".into());
        }
        Ok(out)
    }
}

fn fold_doc(doc: &AutoCommit, authors: &Authors, scope: &AreaCode) -> FoldOutcome<Folded> {
    let transitions = township_sync::workflow::read(doc, authors);
    township_sync::workflow::fold(&WarningMachine { scope }, &transitions)
}

/// Where a warning came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Rule(String),
    Person(String),
    Cap(String),
}

impl Source {
    fn json(&self) -> serde_json::Value {
        match self {
            Source::Rule(id) => json!({"rule": id}),
            Source::Person(u) => json!({"person": u}),
            Source::Cap(i) => json!({"cap": i}),
        }
    }
}

/// A new warning.
#[derive(Debug, Clone)]
pub struct NewWarning {
    pub area: AreaCode,
    pub event: Event,
    /// `actual`, `exercise` or `test`.
    pub status: String,
    pub source: Source,
    pub content: Content,
    /// The first action: `raise` (a rule) or `issue`.
    pub first: Action,
    /// Readings that made a rule raise it (time, value), for the detail page and CAP.
    pub readings: Vec<(i64, f64)>,
}

pub const STATUSES: [&str; 3] = ["actual", "exercise", "test"];

/// An in-process notice that a transition took effect on a warning, wherever it was made, with the
/// warning's state and level as they stand when it is told (see [`events`]; the broadcast work
/// subscribes to these).
#[derive(Debug, Clone, Serialize)]
pub struct WarningEvent {
    pub id: Uuid,
    /// The warning's area (its record scope): who may hear of it.
    pub area: AreaCode,
    /// The transition's own id: with `id`, what a consumer dedupes on.
    pub transition: String,
    /// `raise`, `issue`, `update`, `cancel`, `expire` or `all_clear`.
    pub action: String,
    pub state: State,
    pub level: Option<Level>,
    pub status: String,
    pub at_ms: i64,
}

/// The channel warning events go out on.
pub struct Notices {
    sender: tokio::sync::broadcast::Sender<WarningEvent>,
}

impl Default for Notices {
    fn default() -> Self {
        Notices {
            sender: tokio::sync::broadcast::channel(256).0,
        }
    }
}

impl Notices {
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<WarningEvent> {
        self.sender.subscribe()
    }

    pub fn send(&self, event: WarningEvent) {
        let _ = self.sender.send(event);
    }
}

fn validate_content(c: &Content, scope: &AreaCode, creating: bool) -> Result<(), Invalid> {
    if creating && c.level.is_none() {
        return Err(Invalid::new("level", "blue, yellow, orange or red"));
    }
    if let Some(h) = &c.headline {
        let n = h.trim().chars().count();
        if n == 0 || n > 200 {
            return Err(Invalid::new("headline", "1 to 200 characters"));
        }
    } else if creating {
        return Err(Invalid::new("headline", "a warning needs a headline"));
    }
    if c.headline_en
        .as_ref()
        .is_some_and(|h| h.chars().count() > 200)
    {
        return Err(Invalid::new("headline_en", "at most 200 characters"));
    }
    for (field, v) in [
        ("description", &c.description),
        ("instruction", &c.instruction),
        ("description_en", &c.description_en),
        ("instruction_en", &c.instruction_en),
    ] {
        if v.as_ref().is_some_and(|t| t.chars().count() > 4000) {
            return Err(Invalid::new(field, "at most 4000 characters"));
        }
    }
    if let Some(areas) = &c.areas {
        if areas.is_empty() || areas.len() > 200 {
            return Err(Invalid::new("areas", "1 to 200 area codes"));
        }
        if let Some(a) = areas.iter().find(|a| !scope.contains(a)) {
            return Err(Invalid::new(
                "areas",
                format!("{a} lies outside the warning's area {scope}"),
            ));
        }
    }
    if let (Some(on), Some(ex)) = (c.onset_ms, c.expires_ms)
        && ex <= on
    {
        return Err(Invalid::new("expires", "must be after the onset"));
    }
    Ok(())
}

/// Creates a warning with its first transition (in the caller's transaction).
pub fn create(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    new: NewWarning,
) -> Result<Uuid, WarningError> {
    validate_content(&new.content, &new.area, true)?;
    if !STATUSES.contains(&new.status.as_str()) {
        return Err(Invalid::new("status", "actual, exercise or test").into());
    }
    if actor.role != ActorRole::System && !may_warn(actor, &new.area) {
        return Err(WarningError::Forbidden(
            format!(
                "warnings for {} are issued by township staff, county IT or an admin whose area contains it",
                new.area
            )
            .into(),
        ));
    }
    let mut t = ctx.transition(&actor.username, actor.role.as_str(), new.first.as_str());
    new.content.clone().into_data(&mut t.data);
    let event = serde_json::to_value(new.event).unwrap_or_default();
    let (event, source) = (
        event.as_str().unwrap_or("other").to_string(),
        new.source.json().to_string(),
    );
    let readings = serde_json::to_string(&new.readings).unwrap_or_default();
    let status = new.status.clone();
    let meta = ctx.create_record(
        conn,
        &ctx.author(actor),
        KIND,
        &new.area,
        json!({"event": event, "level": new.content.level, "status": status, "source": new.source.json()}),
        move |doc| {
            doc.put(automerge::ROOT, "event", event.as_str())?;
            doc.put(automerge::ROOT, "status", status.as_str())?;
            doc.put(automerge::ROOT, "source", source.as_str())?;
            doc.put(automerge::ROOT, "readings", readings.as_str())?;
            township_sync::workflow::init(doc)?;
            township_sync::workflow::append(doc, &t)?;
            Ok(())
        },
    )?;
    Ok(meta.id)
}

/// Takes an action on a warning; returns the state it leads to.
pub fn act(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    id: Uuid,
    action: Action,
    content: Content,
) -> Result<Folded, WarningError> {
    let (meta, mut doc) = ctx.docs.load_kind(conn, id, KIND)?;
    let authors = Authors::of(&mut doc);
    if actor.role != ActorRole::System
        && !(actor.can_reach(&meta.scope) || meta.scope.contains(&actor.area))
    {
        return Err(WarningError::NotFound);
    }
    let folded = fold_doc(&doc, &authors, &meta.scope).state;
    if actor.role != ActorRole::System {
        if action.system_only() {
            return Err(WarningError::Forbidden(
                Reason::new(
                    Code::SystemOnly,
                    format!("{} is done by the node, not by a person", action.as_str()),
                )
                .param("action", action.as_str()),
            ));
        }
        if !may_warn(actor, &meta.scope) {
            return Err(WarningError::Forbidden(
                Reason::new(
                    Code::RoleMayNotAct,
                    format!(
                        "the {} role may not {} a warning for {}",
                        actor.role,
                        action.as_str(),
                        meta.scope
                    ),
                )
                .param("role", actor.role.as_str())
                .param("action", action.as_str()),
            ));
        }
    }
    if action.next(folded.state).is_none() {
        return Err(WarningError::Conflict(
            Reason::new(
                Code::ActionNotAllowed,
                format!(
                    "cannot {} a warning that is {}",
                    action.as_str(),
                    folded.state.as_str()
                ),
            )
            .param("action", action.as_str())
            .param("state", folded.state.as_str()),
        ));
    }
    validate_content(&content, &meta.scope, false)?;
    let mut t = ctx.transition(&actor.username, actor.role.as_str(), action.as_str());
    content.into_data(&mut t.data);
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id,
            kind: KIND,
            action: &format!("warning.{}", action.as_str()),
            detail: json!({"data": t.data}),
        },
        move |doc| Ok(township_sync::workflow::append(doc, &t)?),
    )?;
    let (_, mut doc) = ctx.docs.load_kind(conn, id, KIND)?;
    let authors = Authors::of(&mut doc);
    Ok(fold_doc(&doc, &authors, &meta.scope).state)
}

/// One message a warning has produced for the outside world (CAP): an `issue`, or an `update` or
/// `cancel` after it was issued, with the warning as it stood then.
#[derive(Debug, Clone)]
pub struct Message {
    /// `Alert`, `Update` or `Cancel`.
    pub msg_type: &'static str,
    pub at_ms: i64,
    /// The transition's id: stable, so the message's identifier is too.
    pub transition: String,
    pub folded: Folded,
}

/// A warning as the CAP layer needs it: fixed fields and every message it has produced, in order.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: Uuid,
    pub area: AreaCode,
    pub status: String,
    pub event: String,
    pub source: serde_json::Value,
    pub messages: Vec<Message>,
}

/// The messages of one warning (none until it is issued).
pub fn published(
    conn: &Connection,
    docs: &township_sync::DocStore,
    id: Uuid,
) -> Result<Published, WarningError> {
    let (meta, mut doc) = docs.load_kind(conn, id, KIND)?;
    let authors = Authors::of(&mut doc);
    let applied = fold_doc(&doc, &authors, &meta.scope).applied;
    let machine = WarningMachine { scope: &meta.scope };
    let mut messages = Vec::new();
    let mut issued = false;
    for (i, t) in applied.iter().enumerate() {
        let msg_type = match t.action.as_str() {
            "issue" => {
                issued = true;
                "Alert"
            }
            "update" if issued => "Update",
            "cancel" if issued => "Cancel",
            _ => continue,
        };
        let folded = township_sync::workflow::fold(&machine, &applied[..=i]).state;
        messages.push(Message {
            msg_type,
            at_ms: i64::try_from(t.at.wall_ms).unwrap_or(0),
            transition: t.id.clone(),
            folded,
        });
    }
    Ok(Published {
        id,
        area: meta.scope.clone(),
        status: fields::text(&doc, "status").unwrap_or_else(|| "actual".into()),
        event: fields::text(&doc, "event").unwrap_or_else(|| "other".into()),
        source: fields::text(&doc, "source")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null),
        messages,
    })
}

/// Issued warnings (open or ended) whose latest message is newer than `since_ms`, newest first.
pub fn published_ids(
    conn: &Connection,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id FROM warnings WHERE issued_ms IS NOT NULL AND updated_ms >= ?1
         ORDER BY updated_ms DESC LIMIT ?2",
    )?;
    let ids: Vec<String> = stmt
        .query_map(params![since_ms, limit], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids.iter().filter_map(|i| Uuid::parse_str(i).ok()).collect())
}

/// The record sequence number of an issued warning's last change (`None` if there is no such issued
/// warning): what a copy of its CAP message is keyed by. Not a time, which two changes can share.
pub fn published_stamp(conn: &Connection, id: Uuid) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT d.seq FROM warnings w JOIN documents d ON d.id = w.doc_id
             WHERE w.doc_id = ?1 AND w.issued_ms IS NOT NULL",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?)
}

/// How many issued warnings changed since `since_ms`, and the sequence number of the latest change:
/// what a copy of the feed is keyed by.
pub fn feed_stamp(conn: &Connection, since_ms: i64) -> Result<(i64, i64), StoreError> {
    Ok(conn.query_row(
        "SELECT count(*), COALESCE(max(d.seq), 0) FROM warnings w JOIN documents d ON d.id = w.doc_id
         WHERE w.issued_ms IS NOT NULL AND w.updated_ms >= ?1",
        [since_ms],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// A warning's folded state now.
pub fn current(conn: &Connection, ctx: &WriteCtx, id: Uuid) -> Result<Folded, WarningError> {
    let (meta, mut doc) = ctx.docs.load_kind(conn, id, KIND)?;
    let authors = Authors::of(&mut doc);
    Ok(fold_doc(&doc, &authors, &meta.scope).state)
}

/// The actions `actor` may take on a warning in `state`.
fn allowed_actions(actor: &Actor, scope: &AreaCode, state: State) -> Vec<&'static str> {
    if !may_warn(actor, scope) {
        return Vec::new();
    }
    [Action::Issue, Action::Update, Action::Cancel]
        .into_iter()
        .filter(|a| a.next(state).is_some())
        .map(Action::as_str)
        .collect()
}

/// Whether someone of `area` sees a warning for `scope`: those covering their area and those inside it.
pub fn may_see(area: &AreaCode, scope: &AreaCode) -> bool {
    area.contains(scope) || scope.contains(area)
}

/// A warning as the API shows it.
pub fn view(
    conn: &Connection,
    docs: &township_sync::DocStore,
    actor: &Actor,
    id: Uuid,
) -> Result<serde_json::Value, WarningError> {
    let (meta, mut doc) = docs.load_kind(conn, id, KIND)?;
    if !may_see(&actor.area, &meta.scope) {
        return Err(WarningError::NotFound);
    }
    let authors = Authors::of(&mut doc);
    let outcome = fold_doc(&doc, &authors, &meta.scope);
    Ok(render(&meta, &doc, &outcome, Some(actor)))
}

fn render(
    meta: &DocMeta,
    doc: &AutoCommit,
    outcome: &FoldOutcome<Folded>,
    actor: Option<&Actor>,
) -> serde_json::Value {
    let f = &outcome.state;
    let source: serde_json::Value = fields::text(doc, "source")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let readings: serde_json::Value = fields::text(doc, "readings")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(json!([]));
    let transition = |t: &Transition| {
        let mut v = serde_json::to_value(t).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("at_ms".into(), json!(t.at.wall_ms));
        }
        v
    };
    json!({
        "id": meta.id.to_string(),
        "area": meta.scope,
        "level": f.level,
        "state": f.state.as_str(),
        "status": fields::text(doc, "status").unwrap_or_else(|| "actual".into()),
        "event": fields::text(doc, "event").unwrap_or_else(|| "other".into()),
        "headline": f.headline,
        "description": f.description,
        "instruction": f.instruction,
        "headline_en": f.headline_en,
        "description_en": f.description_en,
        "instruction_en": f.instruction_en,
        "areas": f.areas,
        "onset_ms": f.onset_ms,
        "expires_ms": f.expires_ms,
        "issued_ms": f.issued_ms,
        "ended_ms": f.ended_ms,
        "source": source,
        "readings": readings,
        "transitions": outcome.applied.iter().map(transition).collect::<Vec<_>>(),
        "conflicts": outcome.conflicts.iter().map(|c| json!({"transition": transition(&c.transition), "reason": c.reason})).collect::<Vec<_>>(),
        "allowed_actions": actor.map(|a| allowed_actions(a, &meta.scope, f.state)).unwrap_or_default(),
        "updated_ms": meta.updated_ms,
    })
}

/// A row of the list.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: String,
    pub area: String,
    pub level: Option<String>,
    pub state: String,
    pub status: String,
    pub event: String,
    pub headline: String,
    pub rule: Option<String>,
    pub onset_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    pub issued_ms: Option<i64>,
    pub updated_ms: i64,
}

/// Filters for the list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub states: Vec<String>,
    pub levels: Vec<String>,
    pub area: Option<AreaCode>,
}

pub fn list(conn: &Connection, viewer: &AreaCode, f: &Filter) -> Result<Vec<Row>, StoreError> {
    // The state filter runs before the limit: an old warning still in force is never crowded out of
    // `state=raised,issued` by two thousand newer ones that ended.
    let states = if f.states.is_empty() {
        String::new()
    } else {
        format!(",{},", f.states.join(","))
    };
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id, area, level, state, status, event, headline, rule_id, onset_ms, expires_ms, issued_ms, updated_ms
         FROM warnings WHERE ?1 = '' OR instr(?1, ',' || state || ',') > 0
         ORDER BY updated_ms DESC, doc_id LIMIT 2000",
    )?;
    let rows = stmt.query_map([states], |r| {
        Ok(Row {
            id: r.get(0)?,
            area: r.get(1)?,
            level: r.get(2)?,
            state: r.get(3)?,
            status: r.get(4)?,
            event: r.get(5)?,
            headline: r.get(6)?,
            rule: r.get(7)?,
            onset_ms: r.get(8)?,
            expires_ms: r.get(9)?,
            issued_ms: r.get(10)?,
            updated_ms: r.get(11)?,
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        if row.state == State::New.as_str() {
            continue;
        }
        let Ok(area) = row.area.parse::<AreaCode>() else {
            continue;
        };
        if !may_see(viewer, &area)
            || f.area.as_ref().is_some_and(|a| !may_see(a, &area))
            || (!f.states.is_empty() && !f.states.contains(&row.state))
            || (!f.levels.is_empty() && !row.level.as_ref().is_some_and(|l| f.levels.contains(l)))
        {
            continue;
        }
        out.push(row);
    }
    Ok(out)
}

/// The open warning a rule raised, if any.
pub fn open_for_rule(conn: &Connection, rule: &str) -> Result<Option<(Uuid, String)>, StoreError> {
    let row: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT doc_id, level FROM warnings WHERE rule_id = ?1 AND state IN ('raised', 'issued')
             ORDER BY updated_ms DESC LIMIT 1",
            [rule],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(id, level)| {
        Uuid::parse_str(&id)
            .ok()
            .map(|id| (id, level.unwrap_or_default()))
    }))
}

/// Open warnings whose `expires` has passed.
pub fn due_to_expire(conn: &Connection, now_ms: i64) -> Result<Vec<Uuid>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id FROM warnings WHERE state IN ('raised', 'issued') AND expires_ms IS NOT NULL AND expires_ms <= ?1",
    )?;
    let ids: Vec<String> = stmt
        .query_map([now_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids.iter().filter_map(|i| Uuid::parse_str(i).ok()).collect())
}

/// Keeps the `warnings` table in step with the records.
pub struct WarningProjection;

impl WarningProjection {
    pub fn shared() -> std::sync::Arc<dyn Projection> {
        std::sync::Arc::new(WarningProjection)
    }
}

impl Projection for WarningProjection {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &AutoCommit,
        authors: &Authors,
    ) -> Result<(), ProjectionError> {
        let outcome = fold_doc(doc, authors, &meta.scope);
        let f = &outcome.state;
        let rule: Option<String> = fields::text(doc, "source")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.get("rule").and_then(|r| r.as_str()).map(String::from));
        conn.execute(
            "INSERT INTO warnings (doc_id, area, level, state, status, event, headline, rule_id, onset_ms, expires_ms, issued_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT(doc_id) DO UPDATE SET area = excluded.area, level = excluded.level, state = excluded.state,
               status = excluded.status, event = excluded.event, headline = excluded.headline, rule_id = excluded.rule_id,
               onset_ms = excluded.onset_ms, expires_ms = excluded.expires_ms, issued_ms = excluded.issued_ms,
               updated_ms = excluded.updated_ms",
            params![
                meta.id.to_string(),
                meta.scope.as_str(),
                f.level.map(Level::as_str),
                f.state.as_str(),
                fields::text(doc, "status").unwrap_or_else(|| "actual".into()),
                fields::text(doc, "event").unwrap_or_else(|| "other".into()),
                f.headline,
                rule,
                f.onset_ms,
                f.expires_ms,
                f.issued_ms,
                meta.updated_ms,
            ],
        )?;
        Ok(())
    }

    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM warnings", [])?;
        Ok(())
    }

    fn forget(&self, conn: &Connection, id: Uuid) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM warnings WHERE doc_id = ?1", [id.to_string()])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_in_force_is_listed_behind_thousands_that_ended() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        let insert = |id: String, state: &str, updated: i64| {
            conn.execute(
                "INSERT INTO warnings (doc_id, area, level, state, status, event, headline, updated_ms)
                 VALUES (?1, '330723', 'red', ?2, 'Actual', 'flood', '洪水', ?3)",
                rusqlite::params![id, state, updated],
            )
            .unwrap();
        };
        insert("in-force".into(), "issued", 0);
        for i in 0..2100 {
            insert(format!("ended-{i}"), "cleared", 1 + i);
        }
        let county: AreaCode = "330723".parse().unwrap();
        let active = Filter {
            states: vec!["raised".into(), "issued".into()],
            ..Filter::default()
        };
        let rows = list(&conn, &county, &active).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["in-force"]
        );
        assert_eq!(
            list(&conn, &county, &Filter::default()).unwrap().len(),
            2000
        );
    }
}
