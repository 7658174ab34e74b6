//! Rules as records (kind `rule`, scoped to the rule's area) so the county can push rules down and a
//! township can own its own: the document holds the body as written, a `deleted` mark and who made
//! it; the `rules` table is its projection.
//!
//! Authority rule: a rule is effective only if its body and its `deleted` mark were written by a
//! person who may edit rules there — township_staff, county_it or admin, signed in at a township or
//! above, whose area contains the rule's area — and its body is a valid rule for that same area.
//! Otherwise it is quarantined (kept, listed with the reason for admins, never evaluated) and audited
//! once, on every replica alike, like accounts and incidents.

use automerge::AutoCommit;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use township_sync::docstore::{DocMeta, Projection, ProjectionError};
use township_sync::{AreaCode, Authors, DocError, NodeRole, Provenance, fields};
use uuid::Uuid;

use super::spec::{self, Rule, RuleBody};
use crate::auth::actor::Actor;
use crate::auth::roles::Role;
use crate::invalid::Invalid;
use crate::records::{RecordChange, WriteCtx};
use crate::store::StoreError;

pub const KIND: &str = "rule";

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Forbidden(crate::codes::Reason),
    #[error("rule not found")]
    NotFound,
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<DocError> for RuleError {
    fn from(e: DocError) -> Self {
        match e {
            DocError::NotFound(_) | DocError::WrongKind { .. } => RuleError::NotFound,
            other => RuleError::Store(other.into()),
        }
    }
}

/// Who may write rules for `area`: township_staff, county_it and admin at a township or above,
/// inside their own area (a village-level admin has no more say over rules than a grid worker).
pub fn may_edit(role: Role, person_area: &AreaCode, area: &AreaCode) -> bool {
    matches!(role, Role::TownshipStaff | Role::CountyIt | Role::Admin)
        && person_area.level() != NodeRole::Village
        && person_area.contains(area)
}

fn check_editor(actor: &Actor, area: &AreaCode) -> Result<(), RuleError> {
    let allowed = actor
        .role
        .person()
        .is_some_and(|role| may_edit(role, &actor.area, area));
    if allowed {
        Ok(())
    } else {
        Err(RuleError::Forbidden(
            format!(
                "rules for {area} are edited by township staff, county IT or an admin whose area contains it"
            )
            .into(),
        ))
    }
}

/// Whether `viewer_area` may read a rule for `area`: the rules covering their area and those inside it.
pub fn may_read(viewer_area: &AreaCode, area: &AreaCode) -> bool {
    viewer_area.contains(area) || area.contains(viewer_area)
}

/// A rule as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    pub id: String,
    #[serde(flatten)]
    pub body: serde_json::Value,
    pub created_by: String,
    pub updated_ms: i64,
    /// Why the rule is not in force, when its writers could not have made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
}

/// Creates a rule (in the caller's transaction).
pub fn create(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    body: RuleBody,
) -> Result<RuleView, RuleError> {
    let rule = spec::validate(body)?;
    check_editor(actor, &rule.area)?;
    let text = serde_json::to_string(&rule.body).map_err(|e| Invalid::new("body", e))?;
    let by = actor.username.clone();
    let meta = ctx.create_record(
        conn,
        &ctx.author(actor),
        KIND,
        &rule.area,
        serde_json::json!({"name": rule.body.name, "metric": rule.body.metric}),
        move |doc| {
            doc_put(doc, "body", &text)?;
            doc_put(doc, "created_by", &by)?;
            automerge::transaction::Transactable::put(doc, automerge::ROOT, "deleted", false)?;
            Ok(())
        },
    )?;
    get(conn, meta.id)?.ok_or(RuleError::NotFound)
}

fn doc_put(doc: &mut AutoCommit, key: &str, value: &str) -> Result<(), DocError> {
    automerge::transaction::Transactable::put(doc, automerge::ROOT, key, value)?;
    Ok(())
}

fn existing(conn: &Connection, id: Uuid) -> Result<AreaCode, RuleError> {
    let area: Option<String> = conn
        .query_row(
            "SELECT area FROM rules WHERE doc_id = ?1 AND deleted = 0",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from)?;
    area.and_then(|a| a.parse().ok()).ok_or(RuleError::NotFound)
}

/// Replaces a rule's body; its area cannot move (the record's scope is fixed).
pub fn update(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    id: Uuid,
    body: RuleBody,
) -> Result<RuleView, RuleError> {
    let area = existing(conn, id)?;
    check_editor(actor, &area)?;
    let rule = spec::validate(body)?;
    if rule.area != area {
        return Err(Invalid::new(
            "area",
            format!(
                "a rule keeps its area ({area}); make a new rule for {}",
                rule.area
            ),
        )
        .into());
    }
    let text = serde_json::to_string(&rule.body).map_err(|e| Invalid::new("body", e))?;
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id,
            kind: KIND,
            action: "rule.update",
            detail: serde_json::json!({"name": rule.body.name}),
        },
        move |doc| doc_put(doc, "body", &text),
    )?;
    get(conn, id)?.ok_or(RuleError::NotFound)
}

/// Deletes a rule (the record stays, marked, so every replica stops evaluating it).
pub fn delete(conn: &Connection, ctx: &WriteCtx, actor: &Actor, id: Uuid) -> Result<(), RuleError> {
    let area = existing(conn, id)?;
    check_editor(actor, &area)?;
    ctx.change_record(
        conn,
        &ctx.author(actor),
        RecordChange {
            id,
            kind: KIND,
            action: "rule.delete",
            detail: serde_json::json!({}),
        },
        |doc| {
            automerge::transaction::Transactable::put(doc, automerge::ROOT, "deleted", true)?;
            Ok(())
        },
    )?;
    Ok(())
}

fn view(r: &rusqlite::Row<'_>) -> rusqlite::Result<RuleView> {
    let body: String = r.get(1)?;
    Ok(RuleView {
        id: r.get(0)?,
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        created_by: r.get(2)?,
        updated_ms: r.get(3)?,
        quarantine: r.get(4)?,
    })
}

pub fn get(conn: &Connection, id: Uuid) -> Result<Option<RuleView>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT doc_id, body, created_by, updated_ms, quarantine FROM rules WHERE doc_id = ?1 AND deleted = 0",
            [id.to_string()],
            view,
        )
        .optional()?)
}

/// The rules a person of `area` may read, newest first; quarantined ones only when `with_quarantined`.
pub fn list(
    conn: &Connection,
    area: &AreaCode,
    with_quarantined: bool,
) -> Result<Vec<RuleView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id, body, created_by, updated_ms, quarantine, area FROM rules
         WHERE deleted = 0 AND (quarantine IS NULL OR ?1) ORDER BY updated_ms DESC, doc_id",
    )?;
    let rows = stmt.query_map([with_quarantined], |r| {
        Ok((view(r)?, r.get::<_, String>(5)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (rule, rule_area) = row?;
        if rule_area
            .parse::<AreaCode>()
            .is_ok_and(|a| may_read(area, &a))
        {
            out.push(rule);
        }
    }
    Ok(out)
}

/// Every rule in force on this node, for the evaluator.
pub fn effective(conn: &Connection) -> Result<Vec<(Uuid, Rule)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id, body FROM rules WHERE deleted = 0 AND quarantine IS NULL",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body) = row?;
        let parsed = Uuid::parse_str(&id).ok().zip(
            serde_json::from_str::<RuleBody>(&body)
                .ok()
                .and_then(|b| spec::validate(b).ok()),
        );
        if let Some(rule) = parsed {
            out.push(rule);
        }
    }
    Ok(out)
}

/// The verdict on a rule record, from the document alone (so every replica agrees).
fn verdict(meta: &DocMeta, doc: &AutoCommit, authors: &Authors) -> Result<(), String> {
    let text = fields::text(doc, "body").unwrap_or_default();
    let body: RuleBody =
        serde_json::from_str(&text).map_err(|e| format!("the rule body does not parse: {e}"))?;
    let rule = spec::validate(body).map_err(|e| format!("`{}`: {}", e.field, e.detail))?;
    if rule.area != meta.scope {
        return Err(format!(
            "the rule's area {} is not its record's scope {}",
            rule.area, meta.scope
        ));
    }
    for key in ["body", "deleted"] {
        let Some(provenance) = authors.of_field(doc, &automerge::ROOT, key) else {
            continue;
        };
        if provenance.authority(&meta.scope).is_none() {
            return Err(format!(
                "`{key}` was written by a change whose author claim is unreadable or outside the rule's area"
            ));
        }
        let Provenance::Claimed(author) = provenance else {
            return Err(format!(
                "`{key}` was written by a change with no author claim"
            ));
        };
        let Some(person) = &author.person else {
            return Err(format!(
                "`{key}` was written by the node of area {} on its own, not by a person who edits rules",
                author.node_area
            ));
        };
        let allowed = person
            .role
            .parse::<Role>()
            .is_ok_and(|role| may_edit(role, &person.area, &meta.scope));
        if !allowed {
            return Err(format!(
                "`{key}` was written by {} ({}, area {}), who may not edit rules for {}",
                person.name, person.role, person.area, meta.scope
            ));
        }
    }
    Ok(())
}

/// Keeps the `rules` table in step with the records, with each record's verdict.
pub struct RuleProjection {
    key: std::sync::Arc<township_sync::NodeKey>,
    clock: crate::clock::Clock,
}

impl RuleProjection {
    pub fn shared(
        key: std::sync::Arc<township_sync::NodeKey>,
        clock: crate::clock::Clock,
    ) -> std::sync::Arc<dyn Projection> {
        std::sync::Arc::new(RuleProjection { key, clock })
    }
}

impl Projection for RuleProjection {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn append_only(&self) -> &'static [&'static str] {
        &[]
    }

    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &AutoCommit,
        authors: &Authors,
    ) -> Result<(), ProjectionError> {
        let quarantine = verdict(meta, doc, authors).err();
        let body = fields::text(doc, "body").unwrap_or_default();
        conn.execute(
            "INSERT INTO rules (doc_id, area, body, created_by, deleted, updated_ms, quarantine)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(doc_id) DO UPDATE SET area = excluded.area, body = excluded.body,
               created_by = excluded.created_by, deleted = excluded.deleted,
               updated_ms = excluded.updated_ms, quarantine = excluded.quarantine",
            params![
                meta.id.to_string(),
                meta.scope.as_str(),
                body,
                fields::text(doc, "created_by").unwrap_or_default(),
                fields::boolean(doc, "deleted").unwrap_or(false),
                meta.updated_ms,
                quarantine,
            ],
        )?;
        crate::records::record_verdict(
            conn,
            &self.key,
            self.clock.now_ms(),
            meta,
            quarantine.as_deref(),
        )
        .map_err(|e| ProjectionError(e.to_string()))?;
        Ok(())
    }

    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM rules", [])?;
        Ok(())
    }

    fn forget(&self, conn: &Connection, id: Uuid) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM rules WHERE doc_id = ?1", [id.to_string()])?;
        Ok(())
    }
}
