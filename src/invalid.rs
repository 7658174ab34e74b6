//! The one validation error: which input field is wrong and why. Domains return it (wrapped in their
//! own error enums) and the API shows it as a 400 problem document naming the field, so a client
//! can put the message next to the right input whichever domain refused it.

/// A field of a request (or a command's argument) that was refused, and a message a person can act
/// on. The message is shown to the client: it names the rule, never internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Invalid {
    pub field: String,
    pub detail: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, detail: impl ToString) -> Invalid {
        Invalid {
            field: field.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<crate::clock::TimeError> for Invalid {
    fn from(e: crate::clock::TimeError) -> Invalid {
        Invalid::new(e.field.clone(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_error_names_its_field() {
        let e = crate::clock::parse_time("from", "yesterday-ish").unwrap_err();
        let invalid = Invalid::from(e);
        assert_eq!(invalid.field, "from");
        assert!(invalid.detail.contains("from"), "{}", invalid.detail);
    }
}
