//! Who acts: the one type every domain function takes for "the person (or the node itself) doing
//! this", whether the request came from a browser session, an API token, the CLI, the demo, or the
//! node's own deadlines and rules. The HTTP layer's `Caller` is an [`Actor`] plus how it proved who it
//! is; nothing below the HTTP layer needs to know that.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use township_sync::{AreaCode, Person};

use super::roles::{Role, UnknownRole};

/// What an actor acts as: a person holding a role, or the node itself (automatic escalations,
/// warning rules, start-up housekeeping). The system is never a role an account can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorRole {
    Person(Role),
    System,
}

/// The name the system acts under in transitions, audit entries and author claims.
pub const SYSTEM: &str = "system";

impl ActorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorRole::Person(role) => role.as_str(),
            ActorRole::System => SYSTEM,
        }
    }

    /// The person's role; `None` for the system.
    pub fn person(self) -> Option<Role> {
        match self {
            ActorRole::Person(role) => Some(role),
            ActorRole::System => None,
        }
    }
}

impl PartialEq<Role> for ActorRole {
    fn eq(&self, other: &Role) -> bool {
        *self == ActorRole::Person(*other)
    }
}

impl fmt::Display for ActorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a role as records carry it (`"grid_worker"`, …, or `"system"`).
impl FromStr for ActorRole {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == SYSTEM {
            return Ok(ActorRole::System);
        }
        s.parse().map(ActorRole::Person)
    }
}

impl Serialize for ActorRole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The person or system acting, with what the domains check: role, area and department.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub username: String,
    pub display_name: String,
    pub role: ActorRole,
    pub area: AreaCode,
    pub department: Option<String>,
}

impl Actor {
    /// A person with `role` in `area`, named by `username` (display name the same until known).
    pub fn person(username: impl Into<String>, role: Role, area: AreaCode) -> Actor {
        let username = username.into();
        Actor {
            display_name: username.clone(),
            username,
            role: ActorRole::Person(role),
            area,
            department: None,
        }
    }

    /// The node itself, acting over its whole area.
    pub fn system(node_area: AreaCode) -> Actor {
        Actor {
            username: SYSTEM.into(),
            display_name: SYSTEM.into(),
            role: ActorRole::System,
            area: node_area,
            department: None,
        }
    }

    pub fn with_department(mut self, department: Option<String>) -> Actor {
        self.department = department;
        self
    }

    pub fn with_display_name(mut self, display_name: impl Into<String>) -> Actor {
        self.display_name = display_name.into();
        self
    }

    /// Whether the actor is a person holding `role`.
    pub fn is(&self, role: Role) -> bool {
        self.role == role
    }

    /// Whether the actor is a person holding one of `roles`.
    pub fn is_any(&self, roles: &[Role]) -> bool {
        self.role.person().is_some_and(|r| roles.contains(&r))
    }

    /// The area rule: an actor sees and changes only records inside their own area.
    pub fn can_reach(&self, area: &AreaCode) -> bool {
        self.area.contains(area)
    }

    /// The person as the author claim of their changes names them; `None` for the system, whose
    /// changes claim only the node.
    pub fn claim(&self) -> Option<Person> {
        self.role.person().map(|role| Person {
            name: self.username.clone(),
            role: role.as_str().to_string(),
            area: self.area.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print_including_the_system() {
        for role in super::super::roles::ALL_ROLES {
            let parsed: ActorRole = role.as_str().parse().unwrap();
            assert_eq!(parsed, role);
            assert_eq!(parsed.to_string(), role.as_str());
        }
        assert_eq!("system".parse::<ActorRole>().unwrap(), ActorRole::System);
        assert!("province".parse::<ActorRole>().is_err());
        assert!(
            "system".parse::<Role>().is_err(),
            "no account holds the system role"
        );
    }

    #[test]
    fn the_system_claims_no_person_and_holds_no_role() {
        let area: AreaCode = "330723001".parse().unwrap();
        let system = Actor::system(area.clone());
        assert!(system.claim().is_none());
        assert!(!system.is(Role::Admin));
        assert!(!system.is_any(&super::super::roles::ALL_ROLES));
        let admin = Actor::person("wang", Role::Admin, area);
        assert_eq!(admin.claim().unwrap().role, "admin");
        assert!(admin.is(Role::Admin) && admin.is_any(&[Role::GridWorker, Role::Admin]));
    }
}
