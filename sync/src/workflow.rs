//! Workflows as append-only transition lists folded into a state.
//!
//! A record's workflow (an incident's states, a broadcast's approvals) is never a stored "state"
//! field: two offices editing apart would each overwrite it. Instead every action appends a
//! [`Transition`] to a list inside the document; lists merge without loss, and [`fold`] replays them
//! in (timestamp, actor, id) order through a [`Machine`]. Transitions that are not valid where they
//! land are skipped and reported as conflicts, so every replica with the same transitions computes the
//! same state and shows the same conflicts.
//!
//! A transition names its actor and role in its own fields, which whoever wrote the change chose. So
//! [`read`] also records the change that wrote each transition ([`Written`]), and [`fold`] skips, as a
//! conflict, a transition whose change's author claim names someone else, whose claim cannot be read,
//! whose node does not cover the record, or that was edited after it was written. The machine then
//! checks what the role may do.

use std::collections::{BTreeMap, HashSet};

use automerge::{AutoCommit, ObjType, ReadDoc, Value, transaction::Transactable};
use serde::{Deserialize, Serialize};

use crate::area::AreaCode;
use crate::author::{Authors, Provenance};
use crate::hlc::Timestamp;

/// The document key holding the transition list.
pub const TRANSITIONS_KEY: &str = "transitions";

/// One action taken on a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Unique id (a UUID), so a transition delivered twice is applied once.
    pub id: String,
    pub at: Timestamp,
    /// Who acted (a username, or `system` for automatic actions).
    pub actor: String,
    /// The role the actor acted in, as checked when the action was taken.
    pub role: String,
    pub action: String,
    /// Action-specific fields (note, department, deadline...).
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Which change wrote this transition, when it was read from a document.
    #[serde(skip)]
    pub written: Written,
}

/// Where a transition read from a document came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Written {
    /// Not read from a document (made here, about to be appended).
    #[default]
    Here,
    /// Written, exactly as it reads, by a change with this provenance.
    By(Provenance),
    /// Some field was changed after the transition was written, or has concurrent values.
    Altered,
}

/// Whether the change that wrote `t` could have written it: the claim names the transition's actor
/// in its role (or the node itself for `system` actions), and the claimed node covers `scope`.
pub fn check_written(t: &Transition, scope: Option<&AreaCode>) -> Result<(), String> {
    let author = match &t.written {
        Written::Here | Written::By(Provenance::Legacy) => return Ok(()),
        Written::Altered => return Err("it was changed after it was written".into()),
        Written::By(Provenance::Malformed) => {
            return Err("the change that wrote it carries an unreadable author claim".into());
        }
        Written::By(Provenance::Claimed(author)) => author,
    };
    if let Some(scope) = scope {
        author.check_within(scope).map_err(|e| e.to_string())?;
    }
    match &author.person {
        Some(p) if p.name == t.actor && p.role == t.role => Ok(()),
        None if t.actor == "system" && t.role == "system" => Ok(()),
        Some(p) => Err(format!(
            "it names {} ({}) but was written by {} ({}) at a node of area {}",
            t.actor, t.role, p.name, p.role, author.node_area
        )),
        None => Err(format!(
            "it names {} ({}) but was written by the node of area {} on its own",
            t.actor, t.role, author.node_area
        )),
    }
}

/// A transition that was skipped in the fold, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub transition: Transition,
    pub reason: String,
}

/// The result of folding a transition list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded<S> {
    pub state: S,
    /// The transitions that took effect, in fold order.
    pub applied: Vec<Transition>,
    pub conflicts: Vec<Conflict>,
}

/// A state machine over transitions.
pub trait Machine {
    type State: Clone;
    fn initial(&self) -> Self::State;
    /// The state after `t`, or why `t` is not valid in `state`.
    fn apply(&self, state: &Self::State, t: &Transition) -> Result<Self::State, String>;
    /// The record's scope, against which each transition's author is checked.
    fn scope(&self) -> Option<&AreaCode> {
        None
    }
}

/// The canonical order: timestamp, then actor, then id. Total, so every replica agrees.
pub fn canonical_order(transitions: &mut [Transition]) {
    transitions.sort_by(|a, b| (a.at, &a.actor, &a.id).cmp(&(b.at, &b.actor, &b.id)));
}

/// Folds transitions (in any order, possibly with duplicates) into the machine's state.
pub fn fold<M: Machine>(machine: &M, transitions: &[Transition]) -> Folded<M::State> {
    let mut ordered = transitions.to_vec();
    canonical_order(&mut ordered);
    let mut seen = HashSet::new();
    let mut state = machine.initial();
    let mut applied = Vec::new();
    let mut conflicts = Vec::new();
    for t in ordered {
        if !seen.insert(t.id.clone()) {
            continue;
        }
        if let Err(reason) = check_written(&t, machine.scope()) {
            conflicts.push(Conflict {
                transition: t,
                reason: format!("not taken into account: {reason}"),
            });
            continue;
        }
        match machine.apply(&state, &t) {
            Ok(next) => {
                state = next;
                applied.push(t);
            }
            Err(reason) => conflicts.push(Conflict {
                transition: t,
                reason,
            }),
        }
    }
    Folded {
        state,
        applied,
        conflicts,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionDocError {
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

/// Appends a transition to the document's list (creating the list on first use).
pub fn append(doc: &mut AutoCommit, t: &Transition) -> Result<(), TransitionDocError> {
    let list = match doc.get(automerge::ROOT, TRANSITIONS_KEY)? {
        Some((Value::Object(ObjType::List), id)) => id,
        _ => doc.put_object(automerge::ROOT, TRANSITIONS_KEY, ObjType::List)?,
    };
    let index = doc.length(&list);
    let item = doc.insert_object(&list, index, ObjType::Map)?;
    doc.put(&item, "id", t.id.as_str())?;
    doc.put(&item, "at", t.at.to_string())?;
    doc.put(&item, "actor", t.actor.as_str())?;
    doc.put(&item, "role", t.role.as_str())?;
    doc.put(&item, "action", t.action.as_str())?;
    let data = doc.put_object(&item, "data", ObjType::Map)?;
    for (k, v) in &t.data {
        doc.put(&data, k.as_str(), v.as_str())?;
    }
    Ok(())
}

/// Creates the empty transition list. Call it when the record is created, so replicas never race
/// to create the list concurrently.
pub fn init(doc: &mut AutoCommit) -> Result<(), TransitionDocError> {
    if !matches!(
        doc.get(automerge::ROOT, TRANSITIONS_KEY)?,
        Some((Value::Object(ObjType::List), _))
    ) {
        doc.put_object(automerge::ROOT, TRANSITIONS_KEY, ObjType::List)?;
    }
    Ok(())
}

/// Reads every well-formed transition from the document, each with the change that wrote it. If two
/// replicas created the list concurrently, automerge keeps both; entries from all of them are read,
/// so nothing is lost. Malformed entries (which only a buggy or hostile peer could write) are skipped.
pub fn read(doc: &AutoCommit, authors: &Authors) -> Vec<Transition> {
    let Ok(lists) = doc.get_all(automerge::ROOT, TRANSITIONS_KEY) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (value, list) in lists {
        if !matches!(value, Value::Object(ObjType::List)) {
            continue;
        }
        read_list(doc, authors, &list, &mut out);
    }
    out
}

fn read_list(
    doc: &AutoCommit,
    authors: &Authors,
    list: &automerge::ObjId,
    out: &mut Vec<Transition>,
) {
    for index in 0..doc.length(list) {
        let Ok(Some((Value::Object(ObjType::Map), item))) = doc.get(list, index) else {
            continue;
        };
        let (Some(id), Some(at), Some(actor), Some(role), Some(action)) = (
            crate::fields::text_in(doc, &item, "id"),
            crate::fields::text_in(doc, &item, "at").and_then(|s| s.parse().ok()),
            crate::fields::text_in(doc, &item, "actor"),
            crate::fields::text_in(doc, &item, "role"),
            crate::fields::text_in(doc, &item, "action"),
        ) else {
            continue;
        };
        let mut data = BTreeMap::new();
        if let Ok(Some((Value::Object(ObjType::Map), map))) = doc.get(&item, "data") {
            for key in doc.keys(&map) {
                if let Some(v) = crate::fields::text_in(doc, &map, &key) {
                    data.insert(key, v);
                }
            }
        }
        let written = if authors.untouched_since_creation(doc, &item) {
            Written::By(authors.of_op(&item).clone())
        } else {
            Written::Altered
        };
        out.push(Transition {
            id,
            at,
            actor,
            role,
            action,
            data,
            written,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small machine with the shape of an incident workflow.
    struct Ticket;

    impl Machine for Ticket {
        type State = &'static str;
        fn initial(&self) -> &'static str {
            "reported"
        }
        fn apply(&self, s: &&'static str, t: &Transition) -> Result<&'static str, String> {
            let next = match (*s, t.action.as_str()) {
                ("reported", "accept") => "accepted",
                ("reported", "reject") => "rejected",
                ("accepted", "dispatch") => "dispatched",
                ("dispatched", "start") => "in_progress",
                ("dispatched", "return") => "accepted",
                ("in_progress", "resolve") => "resolved",
                ("resolved", "verify") => "closed",
                ("resolved", "reopen") => "dispatched",
                (state, action) => return Err(format!("{action} is not valid in {state}")),
            };
            Ok(next)
        }
    }

    fn t(id: &str, wall: u64, actor: &str, action: &str) -> Transition {
        Transition {
            id: id.into(),
            at: Timestamp {
                wall_ms: wall,
                counter: 0,
            },
            actor: actor.into(),
            role: "township_staff".into(),
            action: action.into(),
            data: BTreeMap::new(),
            written: Written::Here,
        }
    }

    #[test]
    fn concurrent_accept_and_reject_fold_the_same_way_and_report_the_loser() {
        let a = t("a", 10, "zhang", "accept");
        let b = t("b", 10, "li", "reject");
        let one = fold(&Ticket, &[a.clone(), b.clone()]);
        let two = fold(&Ticket, &[b, a]);
        assert_eq!(one, two);
        // Same time: actor breaks the tie, "li" < "zhang", so reject wins and accept conflicts.
        assert_eq!(one.state, "rejected");
        assert_eq!(one.conflicts.len(), 1);
        assert_eq!(one.conflicts[0].transition.action, "accept");
    }

    #[test]
    fn duplicates_apply_once_and_documents_round_trip() {
        let mut doc = AutoCommit::new();
        let list = [
            t("1", 1, "a", "accept"),
            t("2", 2, "a", "dispatch"),
            t("1", 1, "a", "accept"),
        ];
        for tr in &list {
            append(&mut doc, tr).unwrap();
        }
        let authors = Authors::of(&mut doc);
        let read_back = read(&doc, &authors);
        assert_eq!(read_back.len(), 3);
        let folded = fold(&Ticket, &read_back);
        assert_eq!(folded.state, "dispatched");
        assert!(folded.conflicts.is_empty());
    }

    fn claimed(doc: &mut AutoCommit, author: &crate::author::Author) {
        doc.commit_with(
            automerge::transaction::CommitOptions::default().with_message(author.encode()),
        );
    }

    fn staff_at(node: &str, name: &str, role: &str, area: &str) -> crate::author::Author {
        crate::author::Author::person(
            node.parse().unwrap(),
            crate::author::Person {
                name: name.into(),
                role: role.into(),
                area: area.parse().unwrap(),
            },
        )
    }

    /// A scoped ticket machine, so the claimed node is checked against the record's scope.
    struct ScopedTicket(AreaCode);

    impl Machine for ScopedTicket {
        type State = &'static str;
        fn initial(&self) -> &'static str {
            Ticket.initial()
        }
        fn apply(&self, s: &&'static str, t: &Transition) -> Result<&'static str, String> {
            Ticket.apply(s, t)
        }
        fn scope(&self) -> Option<&AreaCode> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_transition_counts_only_as_what_its_change_claims() {
        let scope: AreaCode = "330723001001".parse().unwrap();
        let machine = ScopedTicket(scope.clone());
        // The village writes a transition that names township staff: not what its change claims.
        let mut doc = AutoCommit::new();
        init(&mut doc).unwrap();
        append(&mut doc, &t("forged", 1, "li", "accept")).unwrap();
        claimed(
            &mut doc,
            &staff_at("330723001001", "wang", "grid_worker", "330723001001"),
        );
        let authors = Authors::of(&mut doc);
        let folded = fold(&machine, &read(&doc, &authors));
        assert_eq!(folded.state, "reported");
        assert_eq!(folded.conflicts.len(), 1, "{folded:?}");
        assert!(folded.conflicts[0].reason.contains("written by wang"));

        // The township's own staff member, written at the township: taken.
        append(&mut doc, &t("real", 2, "li", "accept")).unwrap();
        claimed(
            &mut doc,
            &staff_at("330723001", "li", "township_staff", "330723001"),
        );
        let authors = Authors::of(&mut doc);
        let folded = fold(&machine, &read(&doc, &authors));
        assert_eq!(folded.state, "accepted");
        assert_eq!(folded.applied.len(), 1);

        // A node that does not cover the record cannot have written it.
        append(&mut doc, &t("elsewhere", 3, "zhao", "dispatch")).unwrap();
        claimed(
            &mut doc,
            &staff_at("330723002", "zhao", "township_staff", "330723002"),
        );
        let authors = Authors::of(&mut doc);
        let folded = fold(&machine, &read(&doc, &authors));
        assert_eq!(folded.state, "accepted");
        assert!(
            folded
                .conflicts
                .iter()
                .any(|c| c.transition.id == "elsewhere" && c.reason.contains("scope"))
        );
    }

    #[test]
    fn a_transition_edited_after_it_was_written_does_not_count() {
        let mut doc = AutoCommit::new();
        init(&mut doc).unwrap();
        append(&mut doc, &t("1", 1, "li", "accept")).unwrap();
        let li = staff_at("330723001", "li", "township_staff", "330723001");
        claimed(&mut doc, &li);
        // Someone rewrites the accepted transition into a rejection, in a later change.
        let list = match doc.get(automerge::ROOT, TRANSITIONS_KEY).unwrap() {
            Some((Value::Object(ObjType::List), id)) => id,
            other => panic!("{other:?}"),
        };
        let item = match doc.get(&list, 0).unwrap() {
            Some((Value::Object(ObjType::Map), id)) => id,
            other => panic!("{other:?}"),
        };
        doc.put(&item, "action", "reject").unwrap();
        claimed(&mut doc, &li);
        let authors = Authors::of(&mut doc);
        let folded = fold(&Ticket, &read(&doc, &authors));
        assert_eq!(folded.state, "reported");
        assert_eq!(folded.conflicts.len(), 1);
        assert!(folded.conflicts[0].reason.contains("changed after"));
    }

    #[test]
    fn system_actions_are_the_node_s_own() {
        let mut doc = AutoCommit::new();
        init(&mut doc).unwrap();
        let mut esc = t("e", 1, "system", "accept");
        esc.role = "system".into();
        append(&mut doc, &esc).unwrap();
        claimed(
            &mut doc,
            &crate::author::Author::node("330723001".parse().unwrap()),
        );
        // A person's change may not pass itself off as the node's.
        let mut fake = t("f", 2, "system", "dispatch");
        fake.role = "system".into();
        append(&mut doc, &fake).unwrap();
        claimed(
            &mut doc,
            &staff_at("330723001", "li", "township_staff", "330723001"),
        );
        let authors = Authors::of(&mut doc);
        let folded = fold(&Ticket, &read(&doc, &authors));
        assert_eq!(folded.state, "accepted");
        assert_eq!(folded.conflicts.len(), 1);
        assert_eq!(folded.conflicts[0].transition.id, "f");
    }

    const ACTIONS: [&str; 8] = [
        "accept", "reject", "dispatch", "start", "return", "resolve", "verify", "reopen",
    ];

    fn transition_strategy() -> impl Strategy<Value = (u64, u32, usize, usize)> {
        (0u64..50, 0u32..3, 0usize..4, 0usize..ACTIONS.len())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any split of the same transitions across replicas, appended in any interleaving and merged
        /// in any order, folds to one state with the same conflicts everywhere.
        #[test]
        fn any_interleaving_and_merge_order_converges(
            raw in prop::collection::vec(transition_strategy(), 0..24),
            replicas in 2usize..5,
            assignment in prop::collection::vec(0usize..5, 24),
            merge_order in prop::collection::vec((0usize..5, 0usize..5), 0..30),
        ) {
            let actors = ["li", "wang", "zhang", "zhao"];
            let transitions: Vec<Transition> = raw.iter().enumerate().map(|(i, (wall, counter, actor, action))| Transition {
                id: format!("t{i:02}"),
                at: Timestamp { wall_ms: *wall, counter: *counter },
                actor: actors[*actor].into(),
                role: "township_staff".into(),
                action: ACTIONS[*action].into(),
                data: BTreeMap::new(),
                written: Written::Here,
            }).collect();

            let mut base = AutoCommit::new();
            base.put(automerge::ROOT, "kind", "ticket").unwrap();
            let mut docs: Vec<AutoCommit> = (0..replicas)
                .map(|i| base.fork().with_actor(automerge::ActorId::from(vec![i as u8 + 1; 16])))
                .collect();
            for (i, tr) in transitions.iter().enumerate() {
                let r = assignment[i] % replicas;
                append(&mut docs[r], tr).unwrap();
                docs[r].commit();
            }
            // Random pairwise merges (gossip), then a full heal.
            for (a, b) in merge_order {
                let (a, b) = (a % replicas, b % replicas);
                if a != b {
                    let mut other = docs[b].clone();
                    docs[a].merge(&mut other).unwrap();
                }
            }
            for a in 0..replicas {
                for b in 0..replicas {
                    if a != b {
                        let mut other = docs[b].clone();
                        docs[a].merge(&mut other).unwrap();
                    }
                }
            }
            let expected = fold(&Ticket, &transitions);
            for doc in &mut docs {
                let authors = Authors::of(doc);
                let mut folded = fold(&Ticket, &read(doc, &authors));
                // Committed without claims, as before claims existed: legacy, and otherwise equal.
                for t in folded.applied.iter_mut().chain(folded.conflicts.iter_mut().map(|c| &mut c.transition)) {
                    prop_assert_eq!(&t.written, &Written::By(Provenance::Legacy));
                    t.written = Written::Here;
                }
                prop_assert_eq!(&folded, &expected);
            }
        }

        #[test]
        fn fold_is_independent_of_input_order(
            raw in prop::collection::vec(transition_strategy(), 0..20),
            seed in any::<u64>(),
        ) {
            let transitions: Vec<Transition> = raw.iter().enumerate().map(|(i, (wall, counter, actor, action))| Transition {
                id: format!("t{i}"),
                at: Timestamp { wall_ms: *wall, counter: *counter },
                actor: format!("u{actor}"),
                role: "r".into(),
                action: ACTIONS[*action].into(),
                data: BTreeMap::new(),
                written: Written::Here,
            }).collect();
            let mut shuffled = transitions.clone();
            // A cheap deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(fold(&Ticket, &transitions), fold(&Ticket, &shuffled));
        }
    }
}
