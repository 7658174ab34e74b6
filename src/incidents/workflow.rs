//! The incident workflow (closed-loop handling, 闭环): states, actions, who may take each, and the
//! machine the record store's fold runs. The current state is never stored; every replica folds the
//! same transitions to the same state, and transitions that do not fit where they land (two offices
//! accepting and rejecting while apart) become visible conflicts.
//!
//! ```text
//! reported ──accept──▶ accepted ──dispatch──▶ dispatched ──start──▶ in_progress ──resolve──▶ resolved ──verify──▶ closed
//!     │                   │  ▲                    │                                            │
//!     └─reject─▶ rejected │  └──────return────────┘                   dispatched ◀──reopen─────┘
//!  (reported, accepted, dispatched, in_progress) ──escalate──▶ escalated ──dispatch (county, or the township until then)──▶ dispatched
//!  (reported, accepted, escalated, dispatched, in_progress) ──duplicate──▶ duplicate (closed as a copy of another)
//! ```
//!
//! An escalated incident stays actionable by the township that escalated it until the level above
//! dispatches it, so nothing waits on a county that is unreachable for days.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use township_sync::{Machine, Transition};

use crate::auth::actor::ActorRole;
use crate::auth::roles::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Reported,
    Accepted,
    Rejected,
    Escalated,
    Dispatched,
    InProgress,
    Resolved,
    Closed,
    /// Closed as a duplicate of another incident (`duplicate_of`).
    Duplicate,
}

pub const ALL_STATES: [State; 9] = [
    State::Reported,
    State::Accepted,
    State::Rejected,
    State::Escalated,
    State::Dispatched,
    State::InProgress,
    State::Resolved,
    State::Closed,
    State::Duplicate,
];

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Reported => "reported",
            State::Accepted => "accepted",
            State::Rejected => "rejected",
            State::Escalated => "escalated",
            State::Dispatched => "dispatched",
            State::InProgress => "in_progress",
            State::Resolved => "resolved",
            State::Closed => "closed",
            State::Duplicate => "duplicate",
        }
    }
}

impl State {
    /// The state as people in the county read it, for exports that must stand alone (CSV).
    pub fn name_zh(self) -> &'static str {
        match self {
            State::Reported => "已上报",
            State::Accepted => "已受理",
            State::Rejected => "不予受理",
            State::Escalated => "已上报县级",
            State::Dispatched => "已派遣",
            State::InProgress => "处置中",
            State::Resolved => "已办结待核查",
            State::Closed => "已结案",
            State::Duplicate => "重复件",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown state `{s}`"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Accept,
    Reject,
    Dispatch,
    Escalate,
    Start,
    Return,
    Resolve,
    Verify,
    Reopen,
    /// Close as a duplicate of another incident, named in the transition's `duplicate_of`.
    Duplicate,
}

pub const ALL_ACTIONS: [Action; 10] = [
    Action::Accept,
    Action::Reject,
    Action::Dispatch,
    Action::Escalate,
    Action::Start,
    Action::Return,
    Action::Resolve,
    Action::Verify,
    Action::Reopen,
    Action::Duplicate,
];

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Dispatch => "dispatch",
            Action::Escalate => "escalate",
            Action::Start => "start",
            Action::Return => "return",
            Action::Resolve => "resolve",
            Action::Verify => "verify",
            Action::Reopen => "reopen",
            Action::Duplicate => "duplicate",
        }
    }

    /// Actions that must say why.
    pub fn needs_note(self) -> bool {
        matches!(
            self,
            Action::Reject | Action::Return | Action::Reopen | Action::Resolve
        )
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_ACTIONS
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown action `{s}`: expected accept, reject, dispatch, escalate, start, return, resolve, verify, reopen or duplicate"))
    }
}

/// The folded state of one incident, with what the workflow has decided so far.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Folded {
    pub state: Option<State>,
    pub lead_department: Option<String>,
    pub assist_departments: Vec<String>,
    /// Resolve-by time set at dispatch, if the dispatcher gave one.
    pub deadline_ms: Option<i64>,
    pub escalated: bool,
    pub accepted_ms: Option<i64>,
    pub dispatched_ms: Option<i64>,
    pub started_ms: Option<i64>,
    /// Who started work on the current dispatch.
    pub assignee: Option<String>,
    pub resolved_ms: Option<i64>,
    pub closed_ms: Option<i64>,
    pub rejected_ms: Option<i64>,
    pub result_note: Option<String>,
    /// The incident this one duplicates, once closed as a duplicate.
    pub duplicate_of: Option<String>,
}

impl Folded {
    pub fn current(&self) -> State {
        self.state.unwrap_or(State::Reported)
    }
}

/// Who is acting: their role, username, area (when known: the caller here, or the person an author
/// claim names) and department.
#[derive(Debug, Clone, Copy)]
pub struct Acting<'a> {
    pub role: ActorRole,
    pub actor: &'a str,
    pub area: Option<&'a township_sync::AreaCode>,
    pub department: Option<&'a str>,
}

/// Who may take an action, given who acts and the incident as folded so far. `reporter` is the
/// username that reported the incident. Checked when an action is taken and again in the fold, so a
/// transition a peer forged with the wrong role never takes effect anywhere.
///
/// An admin stands in for any role, but only with the authority of their area's level: an admin of
/// a village (the village hub's own, or one it made) is no township office, and may only do what a
/// grid worker may.
pub fn role_may(action: Action, who: Acting<'_>, reporter: &str, folded: &Folded) -> bool {
    let Acting {
        role,
        actor,
        area,
        department: actor_department,
    } = who;
    let role = match role {
        ActorRole::Person(role) => role,
        // The node itself: automatic escalation of overdue incidents.
        ActorRole::System => return action == Action::Escalate,
    };
    if role == Role::Admin {
        let village_level = area.is_some_and(|a| !Role::TownshipStaff.allowed_at(a));
        return !village_level || (action == Action::Verify && actor == reporter);
    }
    let lead = folded.lead_department.as_deref();
    let is_lead_handler =
        role == Role::DeptHandler && actor_department.is_some() && actor_department == lead;
    match action {
        Action::Accept | Action::Reject | Action::Escalate | Action::Reopen | Action::Duplicate => {
            role == Role::TownshipStaff
        }
        Action::Dispatch => {
            // The level above takes an escalated incident by dispatching it; until it does, the
            // township that escalated it may still dispatch it itself.
            role == Role::TownshipStaff
                || (folded.current() == State::Escalated && role == Role::CountyIt)
        }
        Action::Start | Action::Return | Action::Resolve => is_lead_handler,
        Action::Verify => role == Role::TownshipStaff || actor == reporter,
    }
}

/// The state an action leads to from `from`, if it is valid there.
pub fn next_state(from: State, action: Action) -> Option<State> {
    use Action as A;
    use State as S;
    Some(match (from, action) {
        (S::Reported, A::Accept) => S::Accepted,
        (S::Reported, A::Reject) => S::Rejected,
        (S::Accepted | S::Escalated, A::Dispatch) => S::Dispatched,
        (S::Reported | S::Accepted | S::Dispatched | S::InProgress, A::Escalate) => S::Escalated,
        (S::Dispatched, A::Start) => S::InProgress,
        (S::Dispatched, A::Return) => S::Accepted,
        (S::InProgress, A::Resolve) => S::Resolved,
        (S::Resolved, A::Verify) => S::Closed,
        (S::Resolved, A::Reopen) => S::Dispatched,
        (
            S::Reported | S::Accepted | S::Escalated | S::Dispatched | S::InProgress,
            A::Duplicate,
        ) => S::Duplicate,
        _ => return None,
    })
}

/// The fold for one incident: knows its reporter, so "the reporting grid worker may verify" holds on
/// every replica, and its scope, against which each transition's author is checked.
///
/// Authority rule for transitions: the change that wrote a transition must claim the transition's
/// own actor and role (checked by the generic fold), the claimed node must cover the incident, and
/// the person must be one who could act on it from there: their area contains the incident and
/// their role exists at their area's level. So a village hub can act as the people it hosts (its
/// grid workers, its local admin) but never as township staff or a department.
pub struct IncidentMachine<'a> {
    pub reporter: &'a str,
    pub scope: &'a township_sync::AreaCode,
}

/// Whether the person who wrote `t` (as its change claims) could have taken it on this incident.
/// Automatic escalations are the node's own, and only a township's or the county's: a village hub
/// escalating its own incidents at will would be acting as the office above it.
fn author_may_act(t: &Transition, scope: &township_sync::AreaCode) -> Result<(), String> {
    let township_sync::Written::By(township_sync::Provenance::Claimed(author)) = &t.written else {
        return Ok(());
    };
    let Some(person) = &author.person else {
        if author.node_area.level() == township_sync::NodeRole::Village {
            return Err(format!(
                "the village node {} may not escalate on its own",
                author.node_area
            ));
        }
        return Ok(());
    };
    if !person.area.contains(scope) {
        return Err(format!(
            "{} (area {}) cannot reach an incident in {scope}",
            person.name, person.area
        ));
    }
    match person.role.parse::<Role>() {
        Ok(role) if role.allowed_at(&person.area) => Ok(()),
        Ok(role) => Err(format!("{}: {}", person.name, role.level_rule())),
        Err(e) => Err(e.to_string()),
    }
}

impl Machine for IncidentMachine<'_> {
    type State = Folded;

    fn scope(&self) -> Option<&township_sync::AreaCode> {
        Some(self.scope)
    }

    fn initial(&self) -> Folded {
        Folded {
            state: Some(State::Reported),
            ..Folded::default()
        }
    }

    fn apply(&self, folded: &Folded, t: &Transition) -> Result<Folded, String> {
        let action: Action = t.action.parse()?;
        let from = folded.current();
        let to = next_state(from, action).ok_or_else(|| {
            format!(
                "{} is not possible when the incident is {from}",
                action.as_str()
            )
        })?;
        author_may_act(t, self.scope)?;
        let person_area = match &t.written {
            township_sync::Written::By(township_sync::Provenance::Claimed(a)) => {
                a.person.as_ref().map(|p| &p.area)
            }
            _ => None,
        };
        let who = Acting {
            role: t.role.parse::<ActorRole>().map_err(|e| e.to_string())?,
            actor: &t.actor,
            area: person_area,
            department: t.data.get("actor_department").map(String::as_str),
        };
        if !role_may(action, who, self.reporter, folded) {
            return Err(format!(
                "{} ({}) may not {} this incident",
                t.actor,
                t.role,
                action.as_str()
            ));
        }
        let at = i64::try_from(t.at.wall_ms).unwrap_or(i64::MAX);
        let mut next = folded.clone();
        next.state = Some(to);
        match action {
            Action::Accept => next.accepted_ms = Some(at),
            Action::Reject => next.rejected_ms = Some(at),
            Action::Dispatch => {
                let lead = t
                    .data
                    .get("department")
                    .filter(|d| !d.is_empty())
                    .ok_or("dispatch needs a lead department")?;
                next.lead_department = Some(lead.clone());
                next.assist_departments = t
                    .data
                    .get("assist_departments")
                    .map(|a| {
                        a.split(',')
                            .filter(|d| !d.is_empty() && d != lead)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                next.deadline_ms = t.data.get("deadline_ms").and_then(|d| d.parse().ok());
                next.dispatched_ms = Some(at);
                next.assignee = None;
                next.started_ms = None;
                next.accepted_ms = next.accepted_ms.or(Some(at));
            }
            Action::Escalate => next.escalated = true,
            Action::Start => {
                next.started_ms = Some(at);
                next.assignee = Some(t.actor.clone());
            }
            Action::Return => {
                next.lead_department = None;
                next.assist_departments.clear();
                next.deadline_ms = None;
                next.assignee = None;
            }
            Action::Resolve => {
                next.resolved_ms = Some(at);
                next.result_note = t.data.get("note").cloned();
            }
            Action::Verify => next.closed_ms = Some(at),
            Action::Reopen => {
                next.resolved_ms = None;
                next.started_ms = None;
                next.assignee = None;
                next.dispatched_ms = Some(at);
            }
            Action::Duplicate => {
                let original = t
                    .data
                    .get("duplicate_of")
                    .filter(|d| uuid::Uuid::parse_str(d).is_ok())
                    .ok_or("duplicate needs the id of the original incident")?;
                next.duplicate_of = Some(original.clone());
                next.closed_ms = Some(at);
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use township_sync::{Timestamp, workflow::fold};

    fn t(
        id: &str,
        ms: u64,
        actor: &str,
        role: &str,
        action: &str,
        data: &[(&str, &str)],
    ) -> Transition {
        Transition {
            id: id.into(),
            at: Timestamp {
                wall_ms: ms,
                counter: 0,
            },
            actor: actor.into(),
            role: role.into(),
            action: action.into(),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            written: Default::default(),
        }
    }

    fn village() -> township_sync::AreaCode {
        "330723001001".parse().unwrap()
    }

    #[test]
    fn the_whole_loop_folds_to_closed() {
        let scope = village();
        let m = IncidentMachine {
            reporter: "grid1",
            scope: &scope,
        };
        let list = [
            t("1", 10, "staff", "township_staff", "accept", &[]),
            t(
                "2",
                20,
                "staff",
                "township_staff",
                "dispatch",
                &[
                    ("department", "water"),
                    ("assist_departments", "housing,water"),
                ],
            ),
            t(
                "3",
                30,
                "h1",
                "dept_handler",
                "start",
                &[("actor_department", "water")],
            ),
            t(
                "4",
                40,
                "h1",
                "dept_handler",
                "resolve",
                &[("actor_department", "water"), ("note", "修好了")],
            ),
            t("5", 50, "grid1", "grid_worker", "verify", &[]),
        ];
        let f = fold(&m, &list);
        assert!(f.conflicts.is_empty(), "{:?}", f.conflicts);
        assert_eq!(f.state.current(), State::Closed);
        assert_eq!(f.state.lead_department.as_deref(), Some("water"));
        assert_eq!(f.state.assist_departments, vec!["housing".to_string()]);
        assert_eq!(f.state.assignee.as_deref(), Some("h1"));
        assert_eq!(f.state.result_note.as_deref(), Some("修好了"));
    }

    #[test]
    fn wrong_department_and_forged_roles_do_not_take_effect() {
        let scope = village();
        let m = IncidentMachine {
            reporter: "grid1",
            scope: &scope,
        };
        let list = [
            t("1", 10, "staff", "township_staff", "accept", &[]),
            t(
                "2",
                20,
                "staff",
                "township_staff",
                "dispatch",
                &[("department", "water")],
            ),
            t(
                "3",
                30,
                "h2",
                "dept_handler",
                "start",
                &[("actor_department", "police")],
            ),
            t("4", 35, "grid9", "grid_worker", "reopen", &[]),
            t("5", 40, "someone", "mayor", "start", &[]),
        ];
        let f = fold(&m, &list);
        assert_eq!(f.state.current(), State::Dispatched);
        assert_eq!(f.conflicts.len(), 3);
    }

    #[test]
    fn escalated_incidents_stay_with_the_township_until_the_county_dispatches_them() {
        let scope = village();
        let m = IncidentMachine {
            reporter: "g",
            scope: &scope,
        };
        let list = [
            t("1", 10, "system", "system", "escalate", &[]),
            t(
                "2",
                20,
                "staff",
                "township_staff",
                "dispatch",
                &[("department", "water")],
            ),
            t(
                "3",
                30,
                "it",
                "county_it",
                "dispatch",
                &[("department", "emergency")],
            ),
        ];
        // The township's dispatch came first: it keeps the incident, and the county's, later,
        // finds it dispatched already.
        let f = fold(&m, &list);
        assert_eq!(f.state.current(), State::Dispatched);
        assert!(f.state.escalated);
        assert_eq!(f.state.lead_department.as_deref(), Some("water"));
        assert_eq!(f.conflicts.len(), 1);
        // The county first: it takes the incident, and the township's later dispatch conflicts.
        let mut county_first = list.clone();
        county_first[1].at.wall_ms = 40;
        let f = fold(&m, &county_first);
        assert_eq!(f.state.lead_department.as_deref(), Some("emergency"));
        assert_eq!(f.conflicts.len(), 1);
        // A department handler never dispatches, escalated or not.
        let handler = [
            list[0].clone(),
            t(
                "4",
                20,
                "h",
                "dept_handler",
                "dispatch",
                &[("department", "water")],
            ),
        ];
        assert_eq!(fold(&m, &handler).conflicts.len(), 1);
    }
}
