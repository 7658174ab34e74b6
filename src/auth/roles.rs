//! The roles a person can hold, and what each may do in general terms. Which route needs which role
//! is decided in one place, [`super::access`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use township_sync::{AreaCode, NodeRole};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    GridWorker,
    TownshipStaff,
    DeptHandler,
    CountyIt,
    Admin,
}

pub const ALL_ROLES: [Role; 5] = [
    Role::GridWorker,
    Role::TownshipStaff,
    Role::DeptHandler,
    Role::CountyIt,
    Role::Admin,
];

impl Role {
    /// Whether an account of this role may belong to `area`. Township staff, department handlers
    /// and county IT work for a township or the county, so their accounts are never village-level;
    /// that is what keeps a village hub from hosting (or claiming) one.
    pub fn allowed_at(self, area: &AreaCode) -> bool {
        match self {
            Role::TownshipStaff | Role::DeptHandler | Role::CountyIt => {
                area.level() != NodeRole::Village
            }
            Role::GridWorker | Role::Admin => true,
        }
    }

    /// The rule [`Role::allowed_at`] applies, for messages.
    pub fn level_rule(self) -> &'static str {
        match self {
            Role::TownshipStaff => "a township_staff account belongs to a township or the county",
            Role::DeptHandler => "a dept_handler account belongs to a township or the county",
            Role::CountyIt => "a county_it account belongs to a township or the county",
            Role::GridWorker | Role::Admin => "any area",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::GridWorker => "grid_worker",
            Role::TownshipStaff => "township_staff",
            Role::DeptHandler => "dept_handler",
            Role::CountyIt => "county_it",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role `{0}`: expected grid_worker, township_staff, dept_handler, county_it or admin"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_ROLES
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.chars().take(40).collect()))
    }
}
