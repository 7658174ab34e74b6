//! Broadcasts (issue 13): what township staff, rules and upper nodes put on the village
//! loudspeakers, as records (kind `broadcast`, scoped to the area its zones cover) that flow up and
//! down the tree.
//!
//! What a broadcast says and where it goes is fixed at creation in one `content` map (text, zones,
//! mode, level, repeat, times, the warning it belongs to, the broadcast it corrects); everything that
//! happens to it is a transition (`request`, `audio`, `approve`, `start`, `finish`, `cancel`,
//! `correct`, `refuse`) folded like incidents, so two offices acting apart fold to one state.
//!
//! Authority rule, checked in the fold on every replica: `request`, `audio`, `approve`, `cancel`
//! and `correct` count only from township_staff or admin at a township or above whose area contains
//! the broadcast's (county IT runs systems, it does not broadcast), or from the system of a node
//! covering the broadcast (a rule's automatic broadcast); `approve` only from a person other than
//! the requester; `start`, `finish` and `refuse` only from the system. A content map changed after
//! creation makes the broadcast void.
//!
//! On top of that, the node that plays a broadcast trusts no hop: every person's or rule's
//! transition carries an Ed25519 signature by the node where it was made over the broadcast's
//! content digest and the transition itself ([`signing_message`]); the playing node counts it only
//! if the signer is a key it knows (its own, its pinned upstream's, `[pa] trusted_keys`), see
//! [`engine`]. A forged, altered or replayed order therefore never plays even if a node on the way
//! is hostile.

pub mod auto;
pub mod engine;
pub mod receipts;
mod routes;

use crate::codes::{Code, Reason};
use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ReadDoc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;
use township_sync::docstore::{DocMeta, Projection, ProjectionError};
use township_sync::workflow::{Folded as FoldOutcome, Machine};
use township_sync::{AreaCode, Authors, DocError, NodeRole, PublicKey, Transition, fields};
use uuid::Uuid;

pub use routes::routes;

use crate::auth::actor::{Actor, ActorRole};
use crate::auth::roles::Role;
use crate::invalid::Invalid;
use crate::records::{RecordChange, WriteCtx};
use crate::rules::eval::Level;
use crate::store::StoreError;

pub const KIND: &str = "broadcast";

/// Longest text a broadcast may speak (the speech bound is the same).
pub const MAX_TEXT: usize = 2000;
/// How long an order stays playable after its start time unless it says otherwise.
pub const DEFAULT_VALIDITY_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Forbidden(crate::codes::Reason),
    #[error("broadcast not found")]
    NotFound,
    #[error("{0}")]
    Conflict(crate::codes::Reason),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<DocError> for BroadcastError {
    fn from(e: DocError) -> Self {
        match e {
            DocError::NotFound(_) | DocError::WrongKind { .. } => BroadcastError::NotFound,
            other => BroadcastError::Store(other.into()),
        }
    }
}

/// `live` reaches every output of a zone; `test` and `exercise` only outputs marked `test = true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Live,
    Test,
    Exercise,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Test => "test",
            Mode::Exercise => "exercise",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Live, Mode::Test, Mode::Exercise]
            .into_iter()
            .find(|m| m.as_str() == s)
    }

    pub fn is_live(self) -> bool {
        self == Mode::Live
    }
}

/// A broadcast's level: a warning colour, or `routine` for programmes (政策宣讲).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Routine,
    Warning(Level),
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Routine => "routine",
            Priority::Warning(l) => l.as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        if s == "routine" {
            return Some(Priority::Routine);
        }
        s.parse().ok().map(Priority::Warning)
    }

    /// 0 (routine) to 4 (red): what pre-emption compares, and what speakers are told.
    pub fn rank(self) -> u8 {
        match self {
            Priority::Routine => 0,
            Priority::Warning(Level::Blue) => 1,
            Priority::Warning(Level::Yellow) => 2,
            Priority::Warning(Level::Orange) => 3,
            Priority::Warning(Level::Red) => 4,
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where a broadcast is in its life, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    New,
    Requested,
    Approved,
    Playing,
    Finished,
    Cancelled,
    Refused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Requested => "requested",
            State::Approved => "approved",
            State::Playing => "playing",
            State::Finished => "finished",
            State::Cancelled => "cancelled",
            State::Refused => "refused",
        }
    }

    pub fn is_over(self) -> bool {
        matches!(self, State::Finished | State::Cancelled | State::Refused)
    }
}

/// The actions of the broadcast workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Request,
    Audio,
    Approve,
    Start,
    Finish,
    Cancel,
    Correct,
    Refuse,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Request => "request",
            Action::Audio => "audio",
            Action::Approve => "approve",
            Action::Start => "start",
            Action::Finish => "finish",
            Action::Cancel => "cancel",
            Action::Correct => "correct",
            Action::Refuse => "refuse",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        [
            Action::Request,
            Action::Audio,
            Action::Approve,
            Action::Start,
            Action::Finish,
            Action::Cancel,
            Action::Correct,
            Action::Refuse,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }

    /// Actions only the playing node takes.
    pub fn system_only(self) -> bool {
        matches!(self, Action::Start | Action::Finish | Action::Refuse)
    }

    /// Actions that carry an order's signature: what a playing node checks before it plays.
    pub fn is_signed(self) -> bool {
        matches!(
            self,
            Action::Request | Action::Audio | Action::Approve | Action::Cancel | Action::Correct
        )
    }
}

/// Who may order, approve, cancel and correct broadcasts for `area`: township staff and admins at a
/// township or above whose area contains it.
pub fn may_broadcast(role: Role, person_area: &AreaCode, area: &AreaCode) -> bool {
    matches!(role, Role::TownshipStaff | Role::Admin)
        && person_area.level() != NodeRole::Village
        && person_area.contains(area)
}

fn actor_may_broadcast(actor: &Actor, area: &AreaCode) -> bool {
    actor
        .role
        .person()
        .is_some_and(|r| may_broadcast(r, &actor.area, area))
}

/// What a broadcast says and where, fixed at creation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Content {
    pub text: String,
    /// Zone ids, or area codes meaning every zone inside that area, on whichever node has them.
    pub zones: Vec<String>,
    pub mode: Mode,
    pub level: Priority,
    pub repeat: u32,
    pub start_ms: i64,
    pub expires_ms: i64,
    pub warning: Option<String>,
    /// The broadcast this one corrects (更正).
    pub corrects: Option<String>,
    /// Whether a second person must approve before it plays (decided where it was requested).
    pub needs_second: bool,
    /// The rule that requested it, for automatic broadcasts.
    pub rule: Option<String>,
    /// For routine programmes: times of day (Beijing, "HH:MM") at which it plays, every day from
    /// its start until its expiry. Empty: it plays once, at its start.
    pub schedule: Vec<String>,
}

const CONTENT_KEY: &str = "content";

impl Content {
    /// Writes the content map into a new broadcast document.
    pub fn write(&self, doc: &mut AutoCommit) -> Result<(), automerge::AutomergeError> {
        let map = doc.put_object(automerge::ROOT, CONTENT_KEY, ObjType::Map)?;
        doc.put(&map, "text", self.text.as_str())?;
        doc.put(&map, "zones", self.zones.join(","))?;
        doc.put(&map, "mode", self.mode.as_str())?;
        doc.put(&map, "level", self.level.as_str())?;
        doc.put(&map, "repeat", i64::from(self.repeat))?;
        doc.put(&map, "start_ms", self.start_ms)?;
        doc.put(&map, "expires_ms", self.expires_ms)?;
        doc.put(&map, "warning", self.warning.clone().unwrap_or_default())?;
        doc.put(&map, "corrects", self.corrects.clone().unwrap_or_default())?;
        doc.put(&map, "needs_second", self.needs_second)?;
        doc.put(&map, "rule", self.rule.clone().unwrap_or_default())?;
        doc.put(&map, "schedule", self.schedule.join(","))?;
        Ok(())
    }

    /// The content as written, if the map is whole and nobody changed it after creation.
    fn read(doc: &AutoCommit, authors: &Authors) -> Result<Content, String> {
        let Ok(Some((automerge::Value::Object(ObjType::Map), map))) =
            doc.get(automerge::ROOT, CONTENT_KEY)
        else {
            return Err("the broadcast has no content".into());
        };
        if !authors.untouched_since_creation(doc, &map) {
            return Err("the broadcast's content was changed after it was made".into());
        }
        let text = |k: &str| fields::text_in(doc, &map, k).unwrap_or_default();
        let int = |k: &str| match doc.get(&map, k) {
            Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
                automerge::ScalarValue::Int(i) => Some(*i),
                automerge::ScalarValue::Uint(u) => i64::try_from(*u).ok(),
                _ => None,
            },
            _ => None,
        };
        let needs_second = matches!(
            doc.get(&map, "needs_second"),
            Ok(Some((automerge::Value::Scalar(s), _))) if matches!(s.as_ref(), automerge::ScalarValue::Boolean(true))
        );
        let opt = |s: String| if s.is_empty() { None } else { Some(s) };
        let zones: Vec<String> = text("zones")
            .split(',')
            .filter(|z| !z.is_empty())
            .map(String::from)
            .collect();
        Ok(Content {
            text: text("text"),
            zones,
            mode: Mode::parse(&text("mode")).ok_or("unknown mode")?,
            level: Priority::parse(&text("level")).ok_or("unknown level")?,
            repeat: u32::try_from(int("repeat").ok_or("no repeat count")?)
                .map_err(|_| "bad repeat count")?,
            start_ms: int("start_ms").ok_or("no start time")?,
            expires_ms: int("expires_ms").ok_or("no expiry")?,
            warning: opt(text("warning")),
            corrects: opt(text("corrects")),
            needs_second,
            rule: opt(text("rule")),
            schedule: text("schedule")
                .split(',')
                .filter(|t| parse_time_of_day(t).is_some())
                .map(String::from)
                .collect(),
        })
    }

    /// The digest every signature covers: the record id, its scope and every content field, in a
    /// fixed layout with lengths, so no two contents share one.
    pub fn digest(&self, id: Uuid, scope: &AreaCode) -> String {
        let mut out = String::from("tn-broadcast-content-v1");
        let mut field = |s: &str| {
            out.push('\n');
            out.push_str(&s.len().to_string());
            out.push(':');
            out.push_str(s);
        };
        field(&id.to_string());
        field(scope.as_str());
        field(&self.text);
        field(&self.zones.join(","));
        field(self.mode.as_str());
        field(self.level.as_str());
        field(&self.repeat.to_string());
        field(&self.start_ms.to_string());
        field(&self.expires_ms.to_string());
        field(self.warning.as_deref().unwrap_or(""));
        field(self.corrects.as_deref().unwrap_or(""));
        field(if self.needs_second { "1" } else { "0" });
        field(self.rule.as_deref().unwrap_or(""));
        field(&self.schedule.join(","));
        hex::encode(ring::digest::digest(&ring::digest::SHA256, out.as_bytes()))
    }
}

/// Minutes after midnight for a time of day written "HH:MM".
pub fn parse_time_of_day(text: &str) -> Option<i64> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

/// How late a scheduled play may still start: a node that was down at 07:30 plays the morning
/// programme at 07:35, not at noon.
pub const SCHEDULE_GRACE_MS: i64 = 10 * 60 * 1000;

impl Content {
    /// The scheduled play due now, as its time (milliseconds): the latest scheduled time of day
    /// not after `now`, within the programme's start and expiry and at most
    /// [`SCHEDULE_GRACE_MS`] ago. `None` for one-off broadcasts and between plays.
    pub fn due_occurrence(&self, now_ms: i64) -> Option<i64> {
        const DAY: i64 = 86_400_000;
        const BEIJING: i64 = 8 * 3_600_000;
        let today = (now_ms + BEIJING).div_euclid(DAY);
        let mut best: Option<i64> = None;
        for day in [today - 1, today] {
            let midnight = day * DAY - BEIJING;
            for t in &self.schedule {
                let Some(minutes) = parse_time_of_day(t) else {
                    continue;
                };
                let at = midnight + minutes * 60_000;
                if at <= now_ms
                    && at >= self.start_ms
                    && at < self.expires_ms
                    && now_ms - at <= SCHEDULE_GRACE_MS
                {
                    best = Some(best.map_or(at, |b: i64| b.max(at)));
                }
            }
        }
        best
    }
}

/// The audio a broadcast plays instead of speech.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Audio {
    pub sha256: String,
    pub mime: String,
    pub duration_ms: i64,
}

/// What the transitions fold to.
#[derive(Debug, Clone, Serialize)]
pub struct Folded {
    pub state: State,
    pub requester: Option<String>,
    pub approver: Option<String>,
    pub audio: Option<Audio>,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// The correction made for this broadcast, if it was corrected.
    pub correction: Option<String>,
}

/// The person's area a transition's change claims (the fold already matched it to the actor).
fn claimed_area(t: &Transition) -> Option<AreaCode> {
    match &t.written {
        township_sync::Written::By(township_sync::Provenance::Claimed(a)) => {
            a.person.as_ref().map(|p| p.area.clone())
        }
        _ => None,
    }
}

struct BroadcastMachine<'a> {
    scope: &'a AreaCode,
    content: Option<&'a Content>,
    /// A transition made here, not read from a document: its person's area is the actor's.
    here_area: Option<&'a AreaCode>,
}

impl Machine for BroadcastMachine<'_> {
    type State = Folded;

    fn scope(&self) -> Option<&AreaCode> {
        Some(self.scope)
    }

    fn initial(&self) -> Folded {
        Folded {
            state: State::New,
            requester: None,
            approver: None,
            audio: None,
            started_ms: None,
            ended_ms: None,
            correction: None,
        }
    }

    fn apply(&self, f: &Folded, t: &Transition) -> Result<Folded, String> {
        let content = self
            .content
            .ok_or("the broadcast's content is missing or was altered")?;
        let action =
            Action::parse(&t.action).ok_or_else(|| format!("unknown action `{}`", t.action))?;
        let role: ActorRole = t
            .role
            .parse()
            .map_err(|e: crate::auth::roles::UnknownRole| e.to_string())?;
        match role {
            ActorRole::System => {
                if matches!(action, Action::Approve | Action::Correct) {
                    return Err(format!("{} needs a person", action.as_str()));
                }
            }
            ActorRole::Person(r) => {
                if action.system_only() {
                    return Err(format!(
                        "{} is the playing node's, not {}'s",
                        action.as_str(),
                        t.actor
                    ));
                }
                let area = match &t.written {
                    township_sync::Written::Here => self.here_area.cloned(),
                    _ => claimed_area(t),
                };
                if !area.is_some_and(|a| may_broadcast(r, &a, self.scope)) {
                    return Err(format!(
                        "{} ({}) may not {} broadcasts for {}",
                        t.actor,
                        t.role,
                        action.as_str(),
                        self.scope
                    ));
                }
            }
        }
        let at = i64::try_from(t.at.wall_ms).unwrap_or(i64::MAX);
        let mut out = f.clone();
        let has_content = !content.text.is_empty() || f.audio.is_some();
        match (action, f.state) {
            (Action::Request, State::New) => {
                out.requester = Some(t.actor.clone());
                out.state = if content.needs_second {
                    State::Requested
                } else {
                    State::Approved
                };
            }
            (Action::Audio, State::Requested | State::Approved) if f.audio.is_none() => {
                // Only the requester's own message, and never after someone approved the order:
                // an approval is for what the approver heard.
                if f.requester.as_deref() != Some(t.actor.as_str()) || f.approver.is_some() {
                    return Err("only the requester adds the audio, before any approval".into());
                }
                let d = &t.data;
                let sha = d.get("sha256").cloned().unwrap_or_default();
                if !crate::blobs::is_sha256_hex(&sha) {
                    return Err("audio without a sha256".into());
                }
                out.audio = Some(Audio {
                    sha256: sha,
                    mime: d.get("mime").cloned().unwrap_or_default(),
                    duration_ms: d
                        .get("duration_ms")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                });
            }
            (Action::Approve, State::Requested) => {
                if f.requester.as_deref() == Some(t.actor.as_str()) {
                    return Err(format!(
                        "{} requested it and cannot also approve it",
                        t.actor
                    ));
                }
                if !has_content {
                    return Err("nothing to approve yet: the audio has not arrived".into());
                }
                out.approver = Some(t.actor.clone());
                out.state = State::Approved;
            }
            (Action::Start, State::Approved) => {
                out.state = State::Playing;
                out.started_ms = Some(at);
            }
            (Action::Finish, State::Playing) => {
                out.state = State::Finished;
                out.ended_ms = Some(at);
            }
            (Action::Cancel, State::Requested | State::Approved | State::Playing) => {
                out.state = State::Cancelled;
                out.ended_ms = Some(at);
            }
            (Action::Correct, State::Approved | State::Playing | State::Finished) => {
                out.state = State::Cancelled;
                out.ended_ms = out.ended_ms.or(Some(at));
                out.correction = t.data.get("correction").cloned();
            }
            (Action::Refuse, State::Requested | State::Approved) => {
                out.state = State::Refused;
                out.ended_ms = Some(at);
            }
            (a, s) => {
                return Err(format!(
                    "{} is not possible when the broadcast is {}",
                    a.as_str(),
                    s.as_str()
                ));
            }
        }
        Ok(out)
    }
}

/// A broadcast read from its document: content (unless void), fold and meta.
pub struct Loaded {
    pub meta: DocMeta,
    pub content: Result<Content, String>,
    pub outcome: FoldOutcome<Folded>,
}

pub fn fold_doc(doc: &AutoCommit, authors: &Authors, scope: &AreaCode) -> Loaded0 {
    let content = Content::read(doc, authors);
    let transitions = township_sync::workflow::read(doc, authors);
    let outcome = township_sync::workflow::fold(
        &BroadcastMachine {
            scope,
            content: content.as_ref().ok(),
            here_area: None,
        },
        &transitions,
    );
    Loaded0 { content, outcome }
}

/// [`fold_doc`]'s result, before the meta is attached.
pub struct Loaded0 {
    pub content: Result<Content, String>,
    pub outcome: FoldOutcome<Folded>,
}

pub fn load(
    conn: &Connection,
    docs: &township_sync::DocStore,
    id: Uuid,
) -> Result<(Loaded, AutoCommit), BroadcastError> {
    let (meta, mut doc) = docs.load_kind(conn, id, KIND)?;
    let authors = Authors::of(&mut doc);
    let Loaded0 { content, outcome } = fold_doc(&doc, &authors, &meta.scope);
    Ok((
        Loaded {
            meta,
            content,
            outcome,
        },
        doc,
    ))
}

/// The bytes a transition's signature covers: the content digest and every field of the
/// transition but the signature itself.
pub fn signing_message(digest: &str, t: &Transition) -> Vec<u8> {
    let mut out = format!(
        "tn-broadcast-order-v1\n{digest}\n{}\n{}\n{}\n{}\n{}\n{}",
        t.id, t.action, t.actor, t.role, t.at.wall_ms, t.at.counter
    );
    for (k, v) in &t.data {
        if k == "sig" || k == "signer" {
            continue;
        }
        out.push_str(&format!("\n{}:{k}={}:{v}", k.len(), v.len()));
    }
    out.into_bytes()
}

/// Signs `t` with this node's key.
fn sign(ctx: &WriteCtx, digest: &str, t: &mut Transition) {
    sign_with(&ctx.key, digest, t);
}

/// Signs `t` with `key`: the signature and the signer's public key go into its data.
pub fn sign_with(key: &township_sync::NodeKey, digest: &str, t: &mut Transition) {
    use base64::Engine as _;
    let sig = key.sign(&signing_message(digest, t));
    t.data.insert(
        "sig".into(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
    );
    t.data.insert("signer".into(), key.public_key().to_string());
}

/// The key that signed `t`, if the signature is sound and the key is one of `known`.
pub fn signed_by<'k>(
    digest: &str,
    t: &Transition,
    known: &'k [PublicKey],
) -> Option<&'k PublicKey> {
    use base64::Engine as _;
    let signer: PublicKey = t.data.get("signer")?.parse().ok()?;
    let key = known.iter().find(|k| **k == signer)?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.data.get("sig")?)
        .ok()?;
    key.verify(&signing_message(digest, t), &sig).then_some(key)
}

/// A new broadcast as a caller asks for it.
#[derive(Debug, Clone)]
pub struct NewBroadcast {
    pub scope: AreaCode,
    pub content: Content,
    /// Where the order came from, kept in the signed request (an emergency-broadcast platform
    /// order's EBMID, EBDID, sender and package hash: see [`crate::ebd`]). Empty for people and rules.
    pub origin: BTreeMap<String, String>,
}

/// Creates a broadcast with its `request` transition, signed by this node.
pub fn create(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    new: NewBroadcast,
) -> Result<Uuid, BroadcastError> {
    if actor.role != ActorRole::System && !actor_may_broadcast(actor, &new.scope) {
        return Err(BroadcastError::Forbidden(
            format!(
                "broadcasts for {} are ordered by township staff or an admin at a township or above whose area contains it",
                new.scope
            )
            .into(),
        ));
    }
    let content = new.content.clone();
    let mut t = ctx.transition(
        &actor.username,
        actor.role.as_str(),
        Action::Request.as_str(),
    );
    t.data = new.origin.clone();
    let detail = json!({
        "origin": new.origin,
        "zones": content.zones, "mode": content.mode, "level": content.level,
        "repeat": content.repeat, "text": content.text, "warning": content.warning,
        "corrects": content.corrects, "needs_second": content.needs_second, "rule": content.rule,
    });
    let meta = ctx.create_record(conn, &ctx.author(actor), KIND, &new.scope, detail, |doc| {
        content.write(doc)?;
        township_sync::workflow::init(doc)?;
        Ok(())
    })?;
    // The signature covers the id, which exists only now.
    sign(ctx, &new.content.digest(meta.id, &new.scope), &mut t);
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id: meta.id,
            kind: KIND,
            action: "broadcast.request",
            detail: json!({"mode": new.content.mode, "level": new.content.level}),
        },
        move |doc| Ok(township_sync::workflow::append(doc, &t)?),
    )?;
    Ok(meta.id)
}

/// Takes a transition on a broadcast (people: approve, cancel, correct, audio; the system: start,
/// finish, refuse, cancel). People's transitions are signed. Returns the folded state after it.
pub fn act(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    id: Uuid,
    action: Action,
    data: BTreeMap<String, String>,
) -> Result<Folded, BroadcastError> {
    let (loaded, _) = load(conn, &ctx.docs, id)?;
    let scope = loaded.meta.scope.clone();
    if actor.role != ActorRole::System && !may_see(&actor.area, &scope) {
        return Err(BroadcastError::NotFound);
    }
    let content = loaded.content.as_ref().map_err(|e| {
        BroadcastError::Conflict(Reason::new(
            Code::BroadcastVoid,
            format!("this broadcast is void: {e}"),
        ))
    })?;
    if actor.role != ActorRole::System {
        if action.system_only() {
            return Err(BroadcastError::Forbidden(
                Reason::new(
                    Code::SystemOnly,
                    format!(
                        "{} is done by the playing node, not by a person",
                        action.as_str()
                    ),
                )
                .param("action", action.as_str()),
            ));
        }
        if !actor_may_broadcast(actor, &scope) {
            return Err(BroadcastError::Forbidden(
                Reason::new(
                    Code::RoleMayNotAct,
                    format!(
                        "the {} role may not {} a broadcast for {scope}",
                        actor.role,
                        action.as_str()
                    ),
                )
                .param("role", actor.role.as_str())
                .param("action", action.as_str()),
            ));
        }
    }
    let mut t = ctx.transition(&actor.username, actor.role.as_str(), action.as_str());
    t.data = data;
    if action == Action::Approve {
        // The approval names the message it approves; a playing node counts it only for that one.
        t.data
            .insert("audio".into(), approved_audio(&loaded.outcome.state));
    }
    let machine = BroadcastMachine {
        scope: &scope,
        content: Some(content),
        here_area: Some(&actor.area),
    };
    if let Err(why) = machine.apply(&loaded.outcome.state, &t) {
        return Err(BroadcastError::Conflict(why.into()));
    }
    if action.is_signed() {
        sign(ctx, &content.digest(id, &scope), &mut t);
    }
    let detail: BTreeMap<&String, &String> = t
        .data
        .iter()
        .filter(|(k, _)| *k != "sig" && *k != "signer")
        .collect();
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id,
            kind: KIND,
            action: &format!("broadcast.{}", action.as_str()),
            detail: json!({"data": detail}),
        },
        move |doc| Ok(township_sync::workflow::append(doc, &t)?),
    )?;
    let (after, _) = load(conn, &ctx.docs, id)?;
    Ok(after.outcome.state)
}

/// What an approval of a broadcast in this state approves besides its content: its audio message.
pub fn approved_audio(f: &Folded) -> String {
    f.audio
        .as_ref()
        .map_or_else(|| "none".to_string(), |a| a.sha256.clone())
}

/// Whether someone of `area` sees a broadcast for `scope`: those covering it and those inside it.
pub fn may_see(area: &AreaCode, scope: &AreaCode) -> bool {
    area.contains(scope) || scope.contains(area)
}

/// The actions `actor` may take on a broadcast now.
pub fn allowed_actions(actor: &Actor, scope: &AreaCode, f: &Folded) -> Vec<&'static str> {
    if !actor_may_broadcast(actor, scope) {
        return Vec::new();
    }
    let mut out = Vec::new();
    if f.state == State::Requested && f.requester.as_deref() != Some(actor.username.as_str()) {
        out.push("approve");
    }
    if matches!(f.state, State::Requested | State::Approved | State::Playing) {
        out.push("cancel");
    }
    if matches!(f.state, State::Approved | State::Playing | State::Finished) {
        out.push("correct");
    }
    out
}

/// The smallest area containing every area in `areas`.
pub fn common_area(areas: &[AreaCode]) -> Option<AreaCode> {
    let mut it = areas.iter();
    let mut acc = it.next()?.clone();
    for a in it {
        while !acc.contains(a) {
            acc = acc.parent()?;
        }
    }
    Some(acc)
}

/// A row of the list.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: String,
    pub area: String,
    pub state: String,
    pub mode: String,
    pub level: String,
    pub zones: Vec<String>,
    pub text: String,
    pub requester: Option<String>,
    pub warning: Option<String>,
    pub corrects: Option<String>,
    pub start_ms: i64,
    pub updated_ms: i64,
}

/// Broadcasts the viewer may see, newest first.
pub fn list(
    conn: &Connection,
    viewer: &AreaCode,
    states: &[String],
    limit: i64,
) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id, area, state, mode, level, zones, text, requester, warning_id, corrects, start_ms, updated_ms
         FROM broadcasts ORDER BY updated_ms DESC, doc_id LIMIT 2000",
    )?;
    let rows = stmt.query_map([], |r| {
        let zones: String = r.get(5)?;
        Ok(Row {
            id: r.get(0)?,
            area: r.get(1)?,
            state: r.get(2)?,
            mode: r.get(3)?,
            level: r.get(4)?,
            zones: zones
                .split(',')
                .filter(|z| !z.is_empty())
                .map(String::from)
                .collect(),
            text: r.get(6)?,
            requester: r.get(7)?,
            warning: r.get(8)?,
            corrects: r.get(9)?,
            start_ms: r.get(10)?,
            updated_ms: r.get(11)?,
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        let Ok(area) = row.area.parse::<AreaCode>() else {
            continue;
        };
        if row.state == State::New.as_str()
            || !may_see(viewer, &area)
            || (!states.is_empty() && !states.contains(&row.state))
        {
            continue;
        }
        out.push(row);
        if out.len() as i64 >= limit {
            break;
        }
    }
    Ok(out)
}

/// Broadcasts that may need the engine: not over, or over since `since_ms` (to stop them).
pub fn active_ids(conn: &Connection, since_ms: i64) -> Result<Vec<Uuid>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id FROM broadcasts WHERE state IN ('requested', 'approved', 'playing') OR updated_ms >= ?1",
    )?;
    let ids: Vec<String> = stmt
        .query_map([since_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids.iter().filter_map(|i| Uuid::parse_str(i).ok()).collect())
}

/// The open broadcast a rule made for a warning, if any (so a warning plays once).
pub fn for_warning(conn: &Connection, warning: &str) -> Result<Option<Uuid>, StoreError> {
    let id: Option<String> = conn
        .query_row(
            "SELECT doc_id FROM broadcasts WHERE warning_id = ?1 AND rule_id IS NOT NULL LIMIT 1",
            [warning],
            |r| r.get(0),
        )
        .optional()?;
    Ok(id.and_then(|i| Uuid::parse_str(&i).ok()))
}

/// Audio files broadcasts refer to (kept by the orphan collector).
pub fn referenced_blobs(
    conn: &Connection,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut stmt = conn.prepare("SELECT DISTINCT audio FROM broadcasts WHERE audio IS NOT NULL")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A broadcast's state as the projection holds it (`None`: no such broadcast here).
pub fn state_of(conn: &Connection, id: Uuid) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT state FROM broadcasts WHERE doc_id = ?1",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?)
}

/// The first broadcast audio this node lacks, skipping `skip` (for the sync link to fetch: an
/// order from above with a recorded message plays only once its bytes are here and verified).
pub fn first_missing_audio(
    conn: &Connection,
    skip: &std::collections::HashSet<String>,
) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT b.audio FROM broadcasts b LEFT JOIN blobs x ON x.sha256 = b.audio
         WHERE b.audio IS NOT NULL AND x.sha256 IS NULL",
    )?;
    let mut rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.find_map(|row| {
        row.ok()
            .filter(|s| !skip.contains(s) && crate::blobs::is_sha256_hex(s))
    }))
}

/// The areas of the broadcasts whose audio is `sha256`: a peer may have it exactly when it holds
/// one of them.
pub fn audio_areas(conn: &Connection, sha256: &str) -> Result<Vec<AreaCode>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT area FROM broadcasts WHERE audio = ?1")?;
    let areas: Vec<String> = stmt
        .query_map([sha256], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(areas.iter().filter_map(|a| a.parse().ok()).collect())
}

/// Keeps the `broadcasts` table in step with the records.
pub struct BroadcastProjection;

impl BroadcastProjection {
    pub fn shared() -> std::sync::Arc<dyn Projection> {
        std::sync::Arc::new(BroadcastProjection)
    }
}

impl Projection for BroadcastProjection {
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
        let Loaded0 { content, outcome } = fold_doc(doc, authors, &meta.scope);
        let f = &outcome.state;
        let (state, mode, level, zones, text, warning, corrects, rule, start) = match &content {
            Ok(c) => (
                f.state.as_str(),
                c.mode.as_str(),
                c.level.as_str(),
                c.zones.join(","),
                c.text.clone(),
                c.warning.clone(),
                c.corrects.clone(),
                c.rule.clone(),
                c.start_ms,
            ),
            Err(_) => (
                State::Refused.as_str(),
                "live",
                "routine",
                String::new(),
                String::new(),
                None,
                None,
                None,
                0,
            ),
        };
        conn.execute(
            "INSERT INTO broadcasts (doc_id, area, state, mode, level, zones, text, requester, warning_id, corrects, rule_id, start_ms, updated_ms, audio)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT(doc_id) DO UPDATE SET area = excluded.area, state = excluded.state, mode = excluded.mode,
               level = excluded.level, zones = excluded.zones, text = excluded.text, requester = excluded.requester,
               warning_id = excluded.warning_id, corrects = excluded.corrects, rule_id = excluded.rule_id,
               start_ms = excluded.start_ms, updated_ms = excluded.updated_ms, audio = excluded.audio",
            params![
                meta.id.to_string(),
                meta.scope.as_str(),
                state,
                mode,
                level,
                zones,
                text,
                f.requester,
                warning,
                corrects,
                rule,
                start,
                meta.updated_ms,
                f.audio.as_ref().map(|a| a.sha256.clone()),
            ],
        )?;
        Ok(())
    }

    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM broadcasts", [])?;
        Ok(())
    }

    fn forget(&self, conn: &Connection, id: Uuid) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM broadcasts WHERE doc_id = ?1", [id.to_string()])?;
        Ok(())
    }
}

/// A transition as the API shows it, without its signature.
pub fn transition_json(t: &Transition) -> serde_json::Value {
    let data: BTreeMap<&String, &String> = t.data.iter().filter(|(k, _)| *k != "sig").collect();
    json!({
        "id": t.id, "action": t.action, "actor": t.actor, "role": t.role,
        "at_ms": t.at.wall_ms, "data": data,
    })
}

/// The spoken text of a broadcast: test and exercise broadcasts say so, before and after.
pub fn spoken_text(content: &Content) -> String {
    // The message's own closing stop is dropped so the sentence that follows does not double it.
    let body = content
        .text
        .trim_end()
        .trim_end_matches(['。', '.', '；', ';', '，', ','])
        .to_string();
    match content.mode {
        Mode::Live => content.text.clone(),
        Mode::Test => format!("测试，这是测试广播。{body}。测试广播结束。"),
        Mode::Exercise => format!("演练，这是演练广播。{body}。演练广播结束。"),
    }
}

/// The text of a correction (更正) naming what it corrects. The person's note is never part of it:
/// a correction plays without a second person, so it says only what the node writes for it.
pub fn correction_text(original: &Content) -> String {
    let quoted: String = original.text.chars().take(60).collect();
    let ellipsis = if original.text.chars().count() > 60 {
        "……"
    } else {
        ""
    };
    format!("更正：刚才播出的广播“{quoted}{ellipsis}”有误，已经撤销，请不要按该广播行动。")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> Content {
        Content {
            text: "请转移".into(),
            zones: vec!["wangzhai".into()],
            mode: Mode::Live,
            level: Priority::Warning(Level::Red),
            repeat: 2,
            start_ms: 1,
            expires_ms: 2,
            warning: None,
            corrects: None,
            needs_second: true,
            rule: None,
            schedule: Vec::new(),
        }
    }

    #[test]
    fn digests_differ_for_any_field_and_for_shifted_boundaries() {
        let id = Uuid::nil();
        let scope: AreaCode = "330723001".parse().unwrap_or_else(|_| unreachable!());
        let base = content().digest(id, &scope);
        let mut c = content();
        c.repeat = 3;
        assert_ne!(base, c.digest(id, &scope));
        let mut c = content();
        c.needs_second = false;
        assert_ne!(base, c.digest(id, &scope));
        let mut a = content();
        a.text = "a,b".into();
        a.zones = vec![];
        let mut b = content();
        b.text = "a".into();
        b.zones = vec!["b".into()];
        assert_ne!(a.digest(id, &scope), b.digest(id, &scope));
    }

    #[test]
    fn a_schedule_plays_at_its_times_of_day_in_beijing_within_its_span() {
        // 2026-12-01 00:00 Beijing is 2026-11-30 16:00 UTC.
        let midnight = 1_796_054_400_000;
        let at = |h: i64, m: i64| midnight + (h * 60 + m) * 60_000;
        let mut c = content();
        c.schedule = vec!["07:30".into(), "18:00".into()];
        c.start_ms = at(0, 0);
        c.expires_ms = at(0, 0) + 2 * 86_400_000;
        assert_eq!(c.due_occurrence(at(7, 29)), None);
        assert_eq!(c.due_occurrence(at(7, 30)), Some(at(7, 30)));
        assert_eq!(c.due_occurrence(at(7, 39)), Some(at(7, 30)));
        assert_eq!(
            c.due_occurrence(at(7, 41)),
            None,
            "too late for the morning"
        );
        assert_eq!(c.due_occurrence(at(18, 5)), Some(at(18, 0)));
        // Just after midnight, yesterday evening's is long gone.
        assert_eq!(c.due_occurrence(at(24, 1)), None);
        assert_eq!(c.due_occurrence(at(24 + 7, 30)), Some(at(24 + 7, 30)));
        // Not after its expiry, not before its start.
        assert_eq!(c.due_occurrence(at(48 + 7, 30)), None);
        c.start_ms = at(8, 0);
        assert_eq!(c.due_occurrence(at(7, 30)), None);
        assert_eq!(parse_time_of_day("24:00"), None);
        assert_eq!(parse_time_of_day("7:30"), None);
        assert_eq!(parse_time_of_day("07:30"), Some(450));
    }

    #[test]
    fn priorities_rank_red_highest_and_routine_lowest() {
        assert!(Priority::Warning(Level::Red) > Priority::Warning(Level::Orange));
        assert!(Priority::Warning(Level::Blue) > Priority::Routine);
        assert_eq!(Priority::parse("routine"), Some(Priority::Routine));
        assert_eq!(Priority::parse("purple"), None);
    }

    #[test]
    fn common_area_climbs_to_the_shared_parent() {
        let a: AreaCode = "330723001001".parse().unwrap_or_else(|_| unreachable!());
        let b: AreaCode = "330723001002".parse().unwrap_or_else(|_| unreachable!());
        let t: AreaCode = "330723001".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(common_area(&[a.clone(), b]), Some(t));
        assert_eq!(common_area(std::slice::from_ref(&a)), Some(a));
    }
}
