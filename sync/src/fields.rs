//! Typed reads of plain fields in a record document, and the concurrent values behind a field.
//!
//! Free fields (title, description, category...) are ordinary automerge map values. When two places
//! set one while apart, automerge picks a winner deterministically and keeps the others; [`all_texts`]
//! returns them so the UI can show the conflict instead of hiding it.

use automerge::{AutoCommit, ObjId, ReadDoc, ScalarValue, Value};

fn scalar(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ScalarValue> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => Some(s.into_owned()),
        _ => None,
    }
}

pub fn text(doc: &AutoCommit, key: &str) -> Option<String> {
    text_in(doc, &automerge::ROOT, key)
}

pub fn text_in(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    as_text(&scalar(doc, obj, key)?)
}

pub fn int(doc: &AutoCommit, key: &str) -> Option<i64> {
    as_int(&scalar(doc, &automerge::ROOT, key)?)
}

pub fn float(doc: &AutoCommit, key: &str) -> Option<f64> {
    as_float(&scalar(doc, &automerge::ROOT, key)?)
}

pub fn boolean(doc: &AutoCommit, key: &str) -> Option<bool> {
    as_boolean(&scalar(doc, &automerge::ROOT, key)?)
}

// One reading of each type, shared by single reads and [`Fields`].
fn as_text(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

fn as_int(value: &ScalarValue) -> Option<i64> {
    match *value {
        ScalarValue::Int(i) => Some(i),
        ScalarValue::Uint(u) => i64::try_from(u).ok(),
        ScalarValue::Timestamp(t) => Some(t),
        _ => None,
    }
}

fn as_float(value: &ScalarValue) -> Option<f64> {
    match *value {
        ScalarValue::F64(f) => Some(f),
        ScalarValue::Int(i) => Some(i as f64),
        _ => None,
    }
}

fn as_boolean(value: &ScalarValue) -> Option<bool> {
    match *value {
        ScalarValue::Boolean(b) => Some(b),
        _ => None,
    }
}

/// Every concurrent text value of a root field; more than one means the field is in conflict.
pub fn all_texts(doc: &AutoCommit, key: &str) -> Vec<String> {
    let Ok(values) = doc.get_all(automerge::ROOT, key) else {
        return Vec::new();
    };
    values
        .into_iter()
        .filter_map(|(v, _)| match v {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Str(t) => Some(t.to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A map's visible fields read in one pass. A projection reads a dozen fields of each record, and
/// looking each one up on its own cost more than reading them all at once (a tenth of the county's
/// CPU in a cold sync).
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, ScalarValue)>);

impl Fields {
    /// The scalar fields of the root map (objects are left out; they are read where they are used).
    pub fn root(doc: &AutoCommit) -> Fields {
        Fields::of(doc, &automerge::ROOT)
    }

    pub fn of(doc: &AutoCommit, obj: &ObjId) -> Fields {
        Fields(
            doc.map_range(obj, ..)
                .filter_map(|item| match item.value.into_value() {
                    Value::Scalar(s) => Some((item.key.into_owned(), s.into_owned())),
                    Value::Object(_) => None,
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&ScalarValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn text(&self, key: &str) -> Option<String> {
        as_text(self.get(key)?)
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        as_int(self.get(key)?)
    }

    pub fn float(&self, key: &str) -> Option<f64> {
        as_float(self.get(key)?)
    }

    pub fn boolean(&self, key: &str) -> Option<bool> {
        as_boolean(self.get(key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    #[test]
    fn concurrent_edits_keep_both_values() {
        let mut a = AutoCommit::new().with_actor(automerge::ActorId::from([1u8; 16]));
        a.put(automerge::ROOT, "title", "路灯损坏").unwrap();
        a.put(automerge::ROOT, "n", 3).unwrap();
        a.put(automerge::ROOT, "ok", true).unwrap();
        let mut b = a.fork().with_actor(automerge::ActorId::from([2u8; 16]));
        a.put(automerge::ROOT, "title", "路灯不亮").unwrap();
        b.put(automerge::ROOT, "title", "路灯坏了").unwrap();
        a.merge(&mut b).unwrap();
        let mut all = all_texts(&a, "title");
        all.sort();
        assert_eq!(all, vec!["路灯不亮".to_string(), "路灯坏了".to_string()]);
        assert!(text(&a, "title").is_some());
        assert_eq!(int(&a, "n"), Some(3));
        assert_eq!(boolean(&a, "ok"), Some(true));
        assert_eq!(text(&a, "missing"), None);
        assert_eq!(int(&a, "title"), None);
    }

    #[test]
    fn one_pass_reads_agree_with_single_reads() {
        let mut a = AutoCommit::new().with_actor(automerge::ActorId::from([1u8; 16]));
        a.put(automerge::ROOT, "title", "路灯损坏").unwrap();
        a.put(automerge::ROOT, "n", 3).unwrap();
        a.put(automerge::ROOT, "lat", 28.9).unwrap();
        a.put(automerge::ROOT, "ok", false).unwrap();
        a.put_object(automerge::ROOT, "list", automerge::ObjType::List)
            .unwrap();
        let mut b = a.fork().with_actor(automerge::ActorId::from([2u8; 16]));
        a.put(automerge::ROOT, "title", "路灯不亮").unwrap();
        b.put(automerge::ROOT, "title", "路灯坏了").unwrap();
        a.merge(&mut b).unwrap();
        let f = Fields::root(&a);
        for key in ["title", "n", "lat", "ok", "list", "missing"] {
            assert_eq!(f.text(key), text(&a, key), "{key}");
            assert_eq!(f.int(key), int(&a, key), "{key}");
            assert_eq!(f.float(key), float(&a, key), "{key}");
            assert_eq!(f.boolean(key), boolean(&a, key), "{key}");
        }
    }
}
