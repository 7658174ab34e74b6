//! Names for the identifiers API objects carry: area codes (the directory), usernames (display
//! names) and department ids (the configured departments). The web layer adds `*_name` fields
//! beside the identifiers, which stay as they are for programs; people read the names.

use std::collections::HashMap;

use rusqlite::Connection;
use serde_json::Value;

use super::Directory;
use crate::config::Config;
use crate::store::StoreError;

/// One read of the names an answer needs.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub areas: Directory,
    people: HashMap<String, String>,
    departments: HashMap<String, String>,
}

impl Names {
    pub fn load(conn: &Connection, config: &Config) -> Result<Names, StoreError> {
        Ok(Names {
            areas: Directory::load(conn, &config.areas)?,
            people: crate::users::display_names(conn)?,
            departments: config
                .departments
                .iter()
                .map(|d| (d.id.clone(), d.name.clone()))
                .collect(),
        })
    }

    /// The person's display name, or None for unknown names (and `system`).
    pub fn person(&self, username: &str) -> Option<&str> {
        self.people
            .get(username)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }

    pub fn department(&self, id: &str) -> Option<&str> {
        self.departments.get(id).map(String::as_str)
    }

    pub fn area(&self, code: &str) -> Option<&str> {
        self.areas.name(code)
    }

    /// Adds the name beside each identifier field of one object: `area` → `area_name`, people
    /// (`reporter`, `assignee`, `actor`, `author`, `by`, `created_by`) → `*_name`,
    /// departments (`lead_department`, `department`) → `*_name` and `assist_departments` →
    /// `assist_department_names`; then into the nested lists an incident has.
    pub fn annotate(&self, value: &mut Value) {
        match value {
            Value::Array(items) => items.iter_mut().for_each(|v| self.annotate(v)),
            Value::Object(map) => {
                let mut add = Vec::new();
                for (key, v) in map.iter() {
                    let Some(id) = v.as_str() else { continue };
                    let name = match key.as_str() {
                        "area" => self.area(id),
                        "reporter" | "assignee" | "actor" | "author" | "by" | "created_by" => {
                            self.person(id)
                        }
                        "lead_department" | "department" => self.department(id),
                        _ => continue,
                    };
                    add.push((format!("{key}_name"), name.map(str::to_string)));
                }
                if let Some(Value::Array(ids)) = map.get("assist_departments") {
                    let names: Vec<Value> = ids
                        .iter()
                        .map(|id| {
                            let id = id.as_str().unwrap_or_default();
                            Value::from(self.department(id).unwrap_or(id))
                        })
                        .collect();
                    map.insert("assist_department_names".into(), Value::Array(names));
                }
                for (key, name) in add {
                    map.insert(key, name.map(Value::from).unwrap_or(Value::Null));
                }
                for nested in [
                    "transitions",
                    "comments",
                    "conflicts",
                    "rating",
                    "transition",
                ] {
                    if let Some(v) = map.get_mut(nested) {
                        self.annotate(v);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_beside_the_ids_they_name_and_into_nested_lists() {
        let names = Names {
            areas: Directory::default(),
            people: [("wang.fang".to_string(), "王芳".to_string())].into(),
            departments: [("water".to_string(), "水利".to_string())].into(),
        };
        let mut v = serde_json::json!({
            "reporter": "wang.fang", "lead_department": "water", "assist_departments": ["water", "gone"],
            "area": "330723001", "transitions": [{"actor": "wang.fang"}, {"actor": "system"}],
        });
        names.annotate(&mut v);
        assert_eq!(v["reporter_name"], "王芳");
        assert_eq!(v["lead_department_name"], "水利");
        assert_eq!(
            v["assist_department_names"],
            serde_json::json!(["水利", "gone"])
        );
        assert!(v["area_name"].is_null());
        assert_eq!(v["transitions"][0]["actor_name"], "王芳");
        assert!(v["transitions"][1]["actor_name"].is_null());
    }
}
