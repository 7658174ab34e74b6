//! Who wrote each change of a record, and how far that author's authority reaches.
//!
//! Automerge changes carry an actor id but nothing that says which node or person made them, and
//! actor ids are chosen by whoever writes the change. So every change a node commits carries an
//! *author claim* in its commit message: the area of the node that wrote it and, when a person acted,
//! their username, role and area (`tn1;330723;li.ming;township_staff;330723001`; the person's area is
//! left out when it is the node's own, as it mostly is). The claim is part of the change's bytes and
//! hash, so every replica reads the same claim for the same change.
//!
//! A claim is only as good as the checks on it. Where changes merge, a change from a node below must
//! claim an author inside that node's area (see [`check_from_below`]); a hostile village therefore
//! cannot claim to be its township or to act as township staff. Where projections read a record,
//! [`Authors`] maps every value back to the change that wrote it, so a projection trusts a field only
//! as far as its writer's claim reaches. Changes from before claims existed ([`Provenance::Legacy`])
//! are accepted only from the trusted upstream and are bounded by the record's scope.

use std::collections::HashMap;

use automerge::{ActorId, AutoCommit, ObjId, ReadDoc};

use crate::area::AreaCode;

/// The prefix of every claim this version writes.
pub const CLAIM_PREFIX: &str = "tn1";

/// A person acting through a node: their account's username, role and area as the node saw them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Person {
    pub name: String,
    pub role: String,
    pub area: AreaCode,
}

/// The author of a change: the node that committed it and, unless the node acted on its own (an
/// automatic escalation, a relay), the person who asked it to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Author {
    pub node_area: AreaCode,
    pub person: Option<Person>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorError {
    #[error("the change carries no author claim")]
    Missing,
    #[error("malformed author claim `{0}`")]
    Malformed(String),
    #[error("the change claims node area {claimed}, outside the sending node's area {bound}")]
    AboveSender { claimed: AreaCode, bound: AreaCode },
    #[error(
        "the change claims node area {claimed}, which does not cover the record's scope {scope}"
    )]
    OutsideScope { claimed: AreaCode, scope: AreaCode },
    #[error(
        "the change claims {person} of area {person_area} acting at a node of area {node_area}"
    )]
    PersonOutsideNode {
        person: String,
        person_area: AreaCode,
        node_area: AreaCode,
    },
}

/// `;` separates fields and `%` escapes; names are otherwise kept as they are (CLI actors have spaces).
fn escape(text: &str) -> String {
    text.replace('%', "%25").replace(';', "%3B")
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("%25") {
            out.push('%');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("%3B") {
            out.push(';');
            rest = after;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn field_ok(text: &str) -> bool {
    (1..=64).contains(&text.chars().count()) && !text.chars().any(char::is_control)
}

impl Author {
    /// A change the node made on its own.
    pub fn node(node_area: AreaCode) -> Author {
        Author {
            node_area,
            person: None,
        }
    }

    /// A change a person made through the node.
    pub fn person(node_area: AreaCode, person: Person) -> Author {
        Author {
            node_area,
            person: Some(person),
        }
    }

    /// The commit message that carries this claim.
    pub fn encode(&self) -> String {
        match &self.person {
            None => format!("{CLAIM_PREFIX};{}", self.node_area),
            Some(p) if p.area == self.node_area => format!(
                "{CLAIM_PREFIX};{};{};{}",
                self.node_area,
                escape(&p.name),
                escape(&p.role)
            ),
            Some(p) => format!(
                "{CLAIM_PREFIX};{};{};{};{}",
                self.node_area,
                escape(&p.name),
                escape(&p.role),
                p.area
            ),
        }
    }

    /// Reads a claim from a commit message.
    pub fn parse(message: &str) -> Result<Author, AuthorError> {
        let bad = || AuthorError::Malformed(message.chars().take(80).collect());
        let mut parts = message.split(';');
        if parts.next() != Some(CLAIM_PREFIX) {
            return Err(bad());
        }
        let node_area: AreaCode = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let rest: Vec<&str> = parts.collect();
        match rest.as_slice() {
            [] => Ok(Author::node(node_area)),
            [name, role, rest @ ..] if rest.len() <= 1 => {
                let (name, role) = (unescape(name), unescape(role));
                if !field_ok(&name) || !field_ok(&role) {
                    return Err(bad());
                }
                let area: AreaCode = match rest {
                    [area] => area.parse().map_err(|_| bad())?,
                    _ => node_area.clone(),
                };
                Ok(Author::person(node_area, Person { name, role, area }))
            }
            _ => Err(bad()),
        }
    }

    /// The checks that hold for any claim on a record scoped to `scope`, wherever it is read: the
    /// node must cover the record, and the person must be someone who could sign in at that node.
    pub fn check_within(&self, scope: &AreaCode) -> Result<(), AuthorError> {
        if !self.node_area.contains(scope) {
            return Err(AuthorError::OutsideScope {
                claimed: self.node_area.clone(),
                scope: scope.clone(),
            });
        }
        if let Some(p) = &self.person
            && !self.node_area.contains(&p.area)
        {
            return Err(AuthorError::PersonOutsideNode {
                person: p.name.clone(),
                person_area: p.area.clone(),
                node_area: self.node_area.clone(),
            });
        }
        Ok(())
    }
}

/// A change's author as far as it can be known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// Written before author claims existed: the author is unknown, bounded only by the record's
    /// scope (the merge rules have always kept writers inside it).
    Legacy,
    /// The change carries a well-formed claim.
    Claimed(Author),
    /// The change carries a claim this version cannot read: nothing it says is trusted.
    Malformed,
}

impl Provenance {
    pub fn from_message(message: Option<&str>) -> Provenance {
        match message {
            None | Some("") => Provenance::Legacy,
            Some(m) => Author::parse(m).map_or(Provenance::Malformed, Provenance::Claimed),
        }
    }

    pub fn author(&self) -> Option<&Author> {
        match self {
            Provenance::Claimed(a) => Some(a),
            _ => None,
        }
    }

    /// The person the change names, if it names one.
    pub fn person(&self) -> Option<&Person> {
        self.author().and_then(|a| a.person.as_ref())
    }

    /// The area whose authority the change carries on a record scoped to `scope`: the claimed
    /// node's area when the claim is sound there, else (legacy) the scope itself; `None` when the
    /// claim is malformed or impossible.
    pub fn authority(&self, scope: &AreaCode) -> Option<AreaCode> {
        match self {
            Provenance::Legacy => Some(scope.clone()),
            Provenance::Claimed(a) => a.check_within(scope).ok().map(|()| a.node_area.clone()),
            Provenance::Malformed => None,
        }
    }
}

/// The merge rule for changes arriving from a node below whose area is `sender_area`: each must
/// carry a claim, inside the sender's area, covering the record's scope.
pub fn check_from_below(
    message: Option<&str>,
    sender_area: &AreaCode,
    scope: &AreaCode,
) -> Result<Author, AuthorError> {
    let message = message
        .filter(|m| !m.is_empty())
        .ok_or(AuthorError::Missing)?;
    let author = Author::parse(message)?;
    if !sender_area.contains(&author.node_area) {
        return Err(AuthorError::AboveSender {
            claimed: author.node_area,
            bound: sender_area.clone(),
        });
    }
    author.check_within(scope)?;
    Ok(author)
}

/// Identifies one change within a document: its actor and its first operation counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChangeRef {
    actor: ActorId,
    start_op: u64,
}

/// For one document: which change wrote each operation, and that change's provenance.
#[derive(Debug, Default, Clone)]
pub struct Authors {
    /// Per actor, its changes' operation ranges (start, max inclusive), sorted by start.
    ranges: HashMap<ActorId, Vec<(u64, u64, usize)>>,
    changes: Vec<(ChangeRef, Provenance)>,
}

impl Authors {
    /// Reads every change's claim. Needs `&mut` only because automerge closes an open transaction
    /// before listing changes.
    pub fn of(doc: &mut AutoCommit) -> Authors {
        let mut out = Authors::default();
        for meta in doc.get_changes_meta(&[]) {
            let index = out.changes.len();
            out.changes.push((
                ChangeRef {
                    actor: meta.actor.clone().into_owned(),
                    start_op: meta.start_op,
                },
                Provenance::from_message(meta.message.as_deref()),
            ));
            out.ranges
                .entry(meta.actor.into_owned())
                .or_default()
                .push((meta.start_op, meta.max_op, index));
        }
        for ranges in out.ranges.values_mut() {
            ranges.sort_unstable();
        }
        out
    }

    fn index_of(&self, id: &ObjId) -> Option<usize> {
        let ObjId::Id(counter, actor, _) = id else {
            return None;
        };
        let ranges = self.ranges.get(actor)?;
        let at = ranges.partition_point(|(start, _, _)| *start <= *counter);
        let (start, max, index) = *ranges.get(at.checked_sub(1)?)?;
        (start..=max).contains(counter).then_some(index)
    }

    /// The change that made the operation `id` (a value's or an object's id).
    pub fn change_of(&self, id: &ObjId) -> Option<&ChangeRef> {
        self.index_of(id).map(|i| &self.changes[i].0)
    }

    /// The provenance of the change that made operation `id`. An id that belongs to no known change
    /// (which a well-formed document never has) counts as malformed.
    pub fn of_op(&self, id: &ObjId) -> &Provenance {
        const MALFORMED: Provenance = Provenance::Malformed;
        self.index_of(id)
            .map(|i| &self.changes[i].1)
            .unwrap_or(&MALFORMED)
    }

    /// The provenance of the winning value of `key` in `obj`, if the key is set.
    pub fn of_field(&self, doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<&Provenance> {
        let (_, id) = doc.get(obj, key).ok()??;
        Some(self.of_op(&id))
    }

    /// Whether every value inside `obj` (recursively, for maps) was written by the change that
    /// created `obj`, with no concurrent values: the object is exactly as its author wrote it.
    pub fn untouched_since_creation(&self, doc: &AutoCommit, obj: &ObjId) -> bool {
        let Some(creator) = self.change_of(obj) else {
            return false;
        };
        doc.keys(obj).all(|key| {
            let Ok(values) = doc.get_all(obj, key.as_str()) else {
                return false;
            };
            values.len() == 1
                && values.iter().all(|(value, id)| {
                    self.change_of(id) == Some(creator)
                        && match value {
                            automerge::Value::Object(automerge::ObjType::Map) => {
                                self.untouched_since_creation(doc, id)
                            }
                            automerge::Value::Object(_) => false,
                            automerge::Value::Scalar(_) => true,
                        }
                })
        })
    }

    /// How many changes the document has.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::{CommitOptions, Transactable};
    use proptest::prelude::*;

    fn area(s: &str) -> AreaCode {
        s.parse().unwrap()
    }

    #[test]
    fn claims_round_trip() {
        let a = Author::person(
            area("330723001"),
            Person {
                name: "cli(uid 0);x%".into(),
                role: "admin".into(),
                area: area("330723001"),
            },
        );
        assert_eq!(Author::parse(&a.encode()).unwrap(), a);
        let n = Author::node(area("330723"));
        assert_eq!(n.encode(), "tn1;330723");
        let own = Author::person(
            area("330723001001"),
            Person {
                name: "wang.fang".into(),
                role: "grid_worker".into(),
                area: area("330723001001"),
            },
        );
        assert_eq!(own.encode(), "tn1;330723001001;wang.fang;grid_worker");
        assert_eq!(Author::parse(&own.encode()).unwrap(), own);
        assert_eq!(Author::parse("tn1;330723").unwrap(), n);
        for bad in [
            "",
            "tn1",
            "tn2;330723",
            "tn1;33072",
            "tn1;330723;a",
            "tn1;330723;a;b;33072",
            "tn1;330723;;admin;330723",
            "tn1;330723;a;b;c;d",
        ] {
            assert!(Author::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_below_a_claim_must_stay_inside_the_sender() {
        let village = area("330723001001");
        let own = Author::person(
            village.clone(),
            Person {
                name: "wang".into(),
                role: "grid_worker".into(),
                area: village.clone(),
            },
        );
        assert!(check_from_below(Some(&own.encode()), &village, &village).is_ok());
        let township = Author::node(area("330723001"));
        assert!(matches!(
            check_from_below(Some(&township.encode()), &village, &village),
            Err(AuthorError::AboveSender { .. })
        ));
        assert!(matches!(
            check_from_below(None, &village, &village),
            Err(AuthorError::Missing)
        ));
        // A person from the township acting at the village node is not someone the village hosts.
        let staff = Author::person(
            village.clone(),
            Person {
                name: "li".into(),
                role: "township_staff".into(),
                area: area("330723001"),
            },
        );
        assert!(matches!(
            check_from_below(Some(&staff.encode()), &village, &village),
            Err(AuthorError::PersonOutsideNode { .. })
        ));
        // A node cannot write a record above its own area.
        let sibling_scope = area("330723001002");
        assert!(matches!(
            check_from_below(Some(&own.encode()), &village, &sibling_scope),
            Err(AuthorError::OutsideScope { .. })
        ));
    }

    #[test]
    fn values_trace_back_to_their_change() {
        let mut doc = AutoCommit::new().with_actor(ActorId::from([1u8; 16]));
        doc.put(automerge::ROOT, "a", "first").unwrap();
        let map = doc
            .put_object(automerge::ROOT, "m", automerge::ObjType::Map)
            .unwrap();
        doc.put(&map, "x", 1).unwrap();
        doc.commit_with(CommitOptions::default().with_message("tn1;330723"));
        doc.put(automerge::ROOT, "b", "second").unwrap();
        doc.commit_with(CommitOptions::default().with_message("tn1;330723001"));
        let authors = Authors::of(&mut doc);
        assert_eq!(authors.len(), 2);
        let a = authors.of_field(&doc, &automerge::ROOT, "a").unwrap();
        assert_eq!(a.author().unwrap().node_area, area("330723"));
        let b = authors.of_field(&doc, &automerge::ROOT, "b").unwrap();
        assert_eq!(b.author().unwrap().node_area, area("330723001"));
        assert!(authors.untouched_since_creation(&doc, &map));
        doc.put(&map, "x", 2).unwrap();
        doc.commit_with(CommitOptions::default().with_message("tn1;330723001"));
        let authors = Authors::of(&mut doc);
        assert!(!authors.untouched_since_creation(&doc, &map));
        // A change without a message is legacy.
        doc.put(automerge::ROOT, "c", "old").unwrap();
        doc.commit();
        let authors = Authors::of(&mut doc);
        assert_eq!(
            authors.of_field(&doc, &automerge::ROOT, "c"),
            Some(&Provenance::Legacy)
        );
    }

    #[test]
    fn claims_survive_save_and_load() {
        let mut doc = AutoCommit::new();
        doc.put(automerge::ROOT, "a", "x").unwrap();
        doc.commit_with(CommitOptions::default().with_message("tn1;330723001"));
        let mut loaded = AutoCommit::load(&doc.save()).unwrap();
        let authors = Authors::of(&mut loaded);
        assert_eq!(
            authors
                .of_field(&loaded, &automerge::ROOT, "a")
                .and_then(Provenance::author)
                .map(|a| a.node_area.clone()),
            Some(area("330723001"))
        );
    }

    proptest! {
        #[test]
        fn parsing_garbage_never_panics(text in ".{0,120}") {
            let _ = Author::parse(&text);
            let _ = Provenance::from_message(Some(&text));
        }

        #[test]
        fn any_claim_round_trips(name in "[^\\p{Cc}]{1,20}", role in "[a-z_]{1,16}") {
            let a = Author::person(area("330723001"), Person { name, role, area: area("330723001001") });
            prop_assert_eq!(Author::parse(&a.encode()).unwrap(), a);
        }
    }
}
