//! The area directory: names for area codes, so people read 熟溪街道 · 城东村 rather than
//! 330723001001. Names are records (kind `area`, one per code, scoped to that code) so the county
//! names everything once and the names flow down to every node below; `[[areas]]` in the config
//! bootstraps them and, on the node that has it, always wins.
//!
//! Authority rule: a name counts only if it was written by an admin or county_it signed in at a
//! township or above whose area contains the code, or by the node itself (from its `[[areas]]`) when
//! that node is a township or above whose area contains the code. A village hub cannot name even
//! itself through sync: a hostile hub could otherwise call itself 县政府. Anything else is
//! quarantined (kept, shown to admins, never used) and audited once, on every replica alike.
//!
//! The record id is derived from the code, so every node that names a code writes the same
//! document and concurrent names merge into one (the last writer by automerge's order wins).

pub mod names;
pub mod routes;

pub use names::Names;

use std::collections::BTreeMap;

use automerge::AutoCommit;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use township_sync::docstore::{DocMeta, Projection, ProjectionError};
use township_sync::{AreaCode, Authors, DocError, NodeRole, Provenance, fields};
use uuid::Uuid;

use crate::auth::actor::Actor;
use crate::auth::roles::Role;
use crate::codes::Reason;
use crate::config::AreaConfig;
use crate::invalid::Invalid;
use crate::records::{RecordChange, WriteCtx};
use crate::store::StoreError;

pub const KIND: &str = "area";

/// Prefixes the code in the hash that makes area record ids; fixed forever, since changing it
/// would give every name a second document.
const ID_DOMAIN: &[u8] = b"township-node area name\0";

#[derive(Debug, thiserror::Error)]
pub enum AreaError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Forbidden(Reason),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<DocError> for AreaError {
    fn from(e: DocError) -> Self {
        AreaError::Store(e.into())
    }
}

/// The id of the record naming `code`: a version 8 UUID from SHA-256 of the code, so every node
/// derives the same one.
pub fn record_id(code: &AreaCode) -> Uuid {
    let mut input = ID_DOMAIN.to_vec();
    input.extend_from_slice(code.as_str().as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Who may name `code`: admin or county_it at a township or above whose area contains it.
pub fn may_name(role: Role, person_area: &AreaCode, code: &AreaCode) -> bool {
    matches!(role, Role::Admin | Role::CountyIt)
        && person_area.level() != NodeRole::Village
        && person_area.contains(code)
}

/// A node names areas on its own (from its config) only as a township or above, inside its area.
fn node_may_name(node_area: &AreaCode, code: &AreaCode) -> bool {
    node_area.level() != NodeRole::Village && node_area.contains(code)
}

fn check_name(name: &str) -> Result<String, Invalid> {
    let name = name.trim();
    let n = name.chars().count();
    if n == 0 || n > 100 || name.chars().any(char::is_control) {
        return Err(Invalid::length(
            "name",
            1,
            100,
            "an area's name is 1 to 100 characters without control characters",
        ));
    }
    Ok(name.to_string())
}

/// Names `code` (creating its record or changing it), in the caller's transaction. Nothing is
/// written when the effective name is already this one.
pub fn set_name(
    conn: &Connection,
    ctx: &WriteCtx,
    actor: &Actor,
    code: &AreaCode,
    name: &str,
) -> Result<bool, AreaError> {
    let name = check_name(name)?;
    let allowed = match actor.role.person() {
        Some(role) => may_name(role, &actor.area, code),
        None => node_may_name(&ctx.area, code),
    };
    if !allowed {
        return Err(AreaError::Forbidden(
            format!(
                "areas are named by an admin or county IT at a township or above whose area contains {code}"
            )
            .into(),
        ));
    }
    let id = record_id(code);
    let current: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT name, quarantine FROM area_names WHERE doc_id = ?1",
            [id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(StoreError::from)?;
    let author = ctx.author(actor);
    let detail = serde_json::json!({"code": code.as_str(), "name": name});
    let text = name.clone();
    match current {
        Some((existing, None)) if existing == name => return Ok(false),
        Some(_) => {
            ctx.change_record(
                conn,
                &author,
                RecordChange {
                    id,
                    kind: KIND,
                    action: "area.name",
                    detail,
                },
                move |doc| put(doc, &text),
            )?;
        }
        None => {
            ctx.create_record_with_id(conn, &author, id, KIND, code, detail, move |doc| {
                put(doc, &text)
            })?;
        }
    }
    Ok(true)
}

fn put(doc: &mut AutoCommit, name: &str) -> Result<(), DocError> {
    automerge::transaction::Transactable::put(doc, automerge::ROOT, "name", name)?;
    Ok(())
}

/// Writes the configured names this node may give (a township or above, inside its area) as
/// records, so they flow down; run at start. Returns how many changed.
pub fn bootstrap(
    conn: &Connection,
    ctx: &WriteCtx,
    configured: &[AreaConfig],
) -> Result<usize, AreaError> {
    let system = Actor::system(ctx.area.clone());
    let mut changed = 0;
    for entry in configured {
        let Ok(code) = entry.code.parse::<AreaCode>() else {
            continue;
        };
        if node_may_name(&ctx.area, &code) && set_name(conn, ctx, &system, &code, &entry.name)? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// One entry of the directory as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AreaEntry {
    pub code: String,
    pub name: String,
    /// The code one level up (a township's county, a village's township), whether named or not.
    pub parent: Option<String>,
}

/// Every name this node knows: effective records, overlaid by its own `[[areas]]`.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    names: BTreeMap<String, String>,
}

impl Directory {
    pub fn load(conn: &Connection, configured: &[AreaConfig]) -> Result<Directory, StoreError> {
        let mut names = BTreeMap::new();
        let mut stmt =
            conn.prepare_cached("SELECT code, name FROM area_names WHERE quarantine IS NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (code, name) = row?;
            names.insert(code, name);
        }
        for entry in configured {
            names.insert(entry.code.clone(), entry.name.clone());
        }
        Ok(Directory { names })
    }

    /// The name of `code`, if it has one.
    pub fn name(&self, code: &str) -> Option<&str> {
        self.names.get(code).map(String::as_str)
    }

    /// The entries whose code `viewer` contains or that contain `viewer` (the names a person there
    /// meets), sorted by code.
    pub fn entries(&self, viewer: &AreaCode) -> Vec<AreaEntry> {
        self.names
            .iter()
            .filter_map(|(code, name)| {
                let area = code.parse::<AreaCode>().ok()?;
                (viewer.contains(&area) || area.contains(viewer)).then(|| AreaEntry {
                    code: code.clone(),
                    name: name.clone(),
                    parent: area.parent().map(|p| p.as_str().to_string()),
                })
            })
            .collect()
    }

    /// Adds `area_name` beside every `area` key of a JSON object (and of the objects in an array).
    pub fn annotate(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(name) = map
                    .get("area")
                    .and_then(|a| a.as_str())
                    .and_then(|a| self.name(a))
                {
                    let name = name.to_string();
                    map.insert("area_name".into(), name.into());
                } else if map.contains_key("area") && !map.contains_key("area_name") {
                    map.insert("area_name".into(), serde_json::Value::Null);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.annotate(item);
                }
            }
            _ => {}
        }
    }
}

/// The verdict on an area record, from the document alone (so every replica agrees).
fn verdict(meta: &DocMeta, doc: &AutoCommit, authors: &Authors) -> Result<(), String> {
    let name = fields::text(doc, "name").unwrap_or_default();
    check_name(&name).map_err(|e| e.detail)?;
    let Some(provenance) = authors.of_field(doc, &automerge::ROOT, "name") else {
        return Err("the record has no name".into());
    };
    if provenance.authority(&meta.scope).is_none() {
        return Err(
            "the name was written by a change whose author claim is unreadable or outside the area"
                .into(),
        );
    }
    let Provenance::Claimed(author) = provenance else {
        return Err("the name was written by a change with no author claim".into());
    };
    match &author.person {
        None if node_may_name(&author.node_area, &meta.scope) => Ok(()),
        None => Err(format!(
            "the name was written by the node of area {} on its own, which may not name {}",
            author.node_area, meta.scope
        )),
        Some(person) => {
            let allowed = person
                .role
                .parse::<Role>()
                .is_ok_and(|role| may_name(role, &person.area, &meta.scope));
            if allowed {
                Ok(())
            } else {
                Err(format!(
                    "the name was written by {} ({}, area {}), who may not name {}",
                    person.name, person.role, person.area, meta.scope
                ))
            }
        }
    }
}

/// Keeps the `area_names` table in step with the records, with each record's verdict.
pub struct AreaProjection {
    key: std::sync::Arc<township_sync::NodeKey>,
    clock: crate::clock::Clock,
}

impl AreaProjection {
    pub fn shared(
        key: std::sync::Arc<township_sync::NodeKey>,
        clock: crate::clock::Clock,
    ) -> std::sync::Arc<dyn Projection> {
        std::sync::Arc::new(AreaProjection { key, clock })
    }
}

impl Projection for AreaProjection {
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
        // A record whose id is not the one its scope derives to is someone's attempt at a second
        // name for a code: never effective.
        let quarantine = if meta.id != record_id(&meta.scope) {
            Some(format!(
                "the record's id is not the one derived from its area {}",
                meta.scope
            ))
        } else {
            verdict(meta, doc, authors).err()
        };
        conn.execute(
            "INSERT INTO area_names (doc_id, code, name, updated_ms, quarantine)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(doc_id) DO UPDATE SET code = excluded.code, name = excluded.name,
               updated_ms = excluded.updated_ms, quarantine = excluded.quarantine",
            params![
                meta.id.to_string(),
                meta.scope.as_str(),
                fields::text(doc, "name").unwrap_or_default(),
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
        conn.execute("DELETE FROM area_names", [])?;
        Ok(())
    }

    fn forget(&self, conn: &Connection, id: Uuid) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM area_names WHERE doc_id = ?1", [id.to_string()])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(s: &str) -> AreaCode {
        s.parse().unwrap()
    }

    #[test]
    fn who_may_name_what() {
        let county = area("330723");
        let township = area("330723001");
        let village = area("330723001001");
        assert!(may_name(Role::CountyIt, &county, &village));
        assert!(may_name(Role::Admin, &township, &village));
        assert!(
            !may_name(Role::Admin, &village, &village),
            "not from a village"
        );
        assert!(!may_name(Role::TownshipStaff, &township, &village));
        assert!(
            !may_name(Role::Admin, &township, &county),
            "not above oneself"
        );
        assert!(node_may_name(&township, &township));
        assert!(!node_may_name(&village, &village));
    }

    #[test]
    fn ids_derive_from_the_code_alone() {
        assert_eq!(record_id(&area("330723001")), record_id(&area("330723001")));
        assert_ne!(record_id(&area("330723001")), record_id(&area("330723002")));
    }

    #[test]
    fn the_directory_annotates_objects_and_arrays_and_config_wins() {
        let dir = Directory {
            names: [("330723001".to_string(), "熟溪街道".to_string())].into(),
        };
        let mut v = serde_json::json!([{"area": "330723001"}, {"area": "330723009"}, {"x": 1}]);
        dir.annotate(&mut v);
        assert_eq!(v[0]["area_name"], "熟溪街道");
        assert!(v[1]["area_name"].is_null());
        assert!(v[2].get("area_name").is_none());
        let entries = dir.entries(&area("330723001001"));
        assert_eq!(
            entries,
            vec![AreaEntry {
                code: "330723001".into(),
                name: "熟溪街道".into(),
                parent: Some("330723".into())
            }]
        );
    }
}
