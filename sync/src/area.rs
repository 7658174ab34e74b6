//! Area codes (national administrative division codes) and node roles.
//!
//! The sync tree is shaped by these codes: a county is six digits (`330723`), a township nine
//! (`330723001`), a village twelve (`330723001001`). Containment is prefix containment at a level
//! boundary, which is what decides whether a record scoped to one area may flow to a node of another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AreaError {
    #[error("area code `{0}` must be 6 (county), 9 (township) or 12 (village) digits")]
    BadCode(String),
    #[error("unknown node role `{0}`: expected county, township or village")]
    BadRole(String),
    #[error("a {role} node needs a {expected}-digit area code, but `{code}` has {actual} digits")]
    RoleMismatch {
        role: NodeRole,
        code: String,
        expected: usize,
        actual: usize,
    },
}

/// A validated administrative area code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AreaCode(String);

impl AreaCode {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The administrative level this code names.
    pub fn level(&self) -> NodeRole {
        match self.0.len() {
            6 => NodeRole::County,
            9 => NodeRole::Township,
            _ => NodeRole::Village,
        }
    }

    /// True when `other` is this area or lies inside it.
    pub fn contains(&self, other: &AreaCode) -> bool {
        other.0.starts_with(&self.0)
    }

    /// Whether `other` lies strictly below this area (contained, and not the same area): where a
    /// downstream node must be.
    pub fn is_above(&self, other: &AreaCode) -> bool {
        self.contains(other) && self != other
    }

    /// The enclosing area one level up, if any.
    pub fn parent(&self) -> Option<AreaCode> {
        match self.0.len() {
            12 => Some(AreaCode(self.0[..9].to_string())),
            9 => Some(AreaCode(self.0[..6].to_string())),
            _ => None,
        }
    }
}

impl FromStr for AreaCode {
    type Err = AreaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed = matches!(s.len(), 6 | 9 | 12) && s.bytes().all(|b| b.is_ascii_digit());
        if well_formed {
            Ok(AreaCode(s.to_string()))
        } else {
            Err(AreaError::BadCode(s.chars().take(40).collect()))
        }
    }
}

impl TryFrom<String> for AreaCode {
    type Error = AreaError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AreaCode> for String {
    fn from(a: AreaCode) -> String {
        a.0
    }
}

impl fmt::Display for AreaCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a node is in the tree. The county is the root; it has no upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    County,
    Township,
    Village,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::County => "county",
            NodeRole::Township => "township",
            NodeRole::Village => "village",
        }
    }

    fn code_len(self) -> usize {
        match self {
            NodeRole::County => 6,
            NodeRole::Township => 9,
            NodeRole::Village => 12,
        }
    }

    /// A node's role must match the level of its area code, or scope checks would be meaningless.
    pub fn check_area(self, area: &AreaCode) -> Result<(), AreaError> {
        let actual = area.as_str().len();
        if actual == self.code_len() {
            Ok(())
        } else {
            Err(AreaError::RoleMismatch {
                role: self,
                code: area.to_string(),
                expected: self.code_len(),
                actual,
            })
        }
    }
}

impl FromStr for NodeRole {
    type Err = AreaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "county" => Ok(NodeRole::County),
            "township" => Ok(NodeRole::Township),
            "village" => Ok(NodeRole::Village),
            other => Err(AreaError::BadRole(other.chars().take(40).collect())),
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn containment_follows_the_tree() {
        let county: AreaCode = "330723".parse().unwrap();
        let township: AreaCode = "330723001".parse().unwrap();
        let village: AreaCode = "330723001001".parse().unwrap();
        let other_village: AreaCode = "330723002001".parse().unwrap();
        assert!(county.contains(&village));
        assert!(township.contains(&village));
        assert!(!township.contains(&other_village));
        assert!(!village.contains(&township));
        assert_eq!(village.parent(), Some(township.clone()));
        assert_eq!(township.parent(), Some(county.clone()));
        assert_eq!(county.parent(), None);
        assert_eq!(village.level(), NodeRole::Village);
    }

    #[test]
    fn role_must_match_code_length() {
        let township: AreaCode = "330723001".parse().unwrap();
        assert!(NodeRole::Township.check_area(&township).is_ok());
        let err = NodeRole::Village.check_area(&township).unwrap_err();
        assert!(err.to_string().contains("12-digit"), "{err}");
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_accepts_only_digit_codes(s in ".{0,20}") {
            match s.parse::<AreaCode>() {
                Ok(code) => {
                    prop_assert!(matches!(code.as_str().len(), 6 | 9 | 12));
                    prop_assert!(code.as_str().bytes().all(|b| b.is_ascii_digit()));
                }
                Err(AreaError::BadCode(_)) => {}
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }

        #[test]
        fn a_code_contains_its_descendants(base in "[0-9]{6}", t in "[0-9]{3}", v in "[0-9]{3}") {
            let county: AreaCode = base.parse().unwrap();
            let township: AreaCode = format!("{base}{t}").parse().unwrap();
            let village: AreaCode = format!("{base}{t}{v}").parse().unwrap();
            prop_assert!(county.contains(&township) && township.contains(&village) && county.contains(&village));
            prop_assert_eq!(village.parent().and_then(|p| p.parent()), Some(county));
        }
    }
}
