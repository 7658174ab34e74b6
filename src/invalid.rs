//! The one validation error: which input field is wrong and why. Domains return it (wrapped in their
//! own error enums) and the API shows it as a 400 problem document naming the field, so a client
//! can put the message next to the right input whichever domain refused it.

use crate::codes::Code;

/// A field of a request (or a command's argument) that was refused, and a message a person can act
/// on. The message is shown to the client: it names the rule, never internals.
/// `code` and `params` let a client say it in its own words (`invalid_field` naming the field
/// when nothing more specific was said).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Invalid {
    pub field: String,
    pub detail: String,
    pub code: Code,
    pub params: serde_json::Map<String, serde_json::Value>,
}

impl Invalid {
    pub fn new(field: impl Into<String>, detail: impl ToString) -> Invalid {
        let field = field.into();
        let mut params = serde_json::Map::new();
        params.insert("field".into(), field.clone().into());
        Invalid {
            field,
            detail: detail.to_string(),
            code: Code::InvalidField,
            params,
        }
    }

    /// The field is required and was missing or empty.
    pub fn required(field: impl Into<String>, detail: impl ToString) -> Invalid {
        Invalid::new(field, detail).code(Code::Required)
    }

    /// The field holds `min` to `max` characters.
    pub fn length(
        field: impl Into<String>,
        min: usize,
        max: usize,
        detail: impl ToString,
    ) -> Invalid {
        Invalid::new(field, detail)
            .code(Code::TextLength)
            .param("min", min)
            .param("max", max)
    }

    /// The field holds a value that is not one of those known.
    pub fn unknown(field: impl Into<String>, value: &str, detail: impl ToString) -> Invalid {
        let value: String = value.chars().take(100).collect();
        Invalid::new(field, detail)
            .code(Code::UnknownValue)
            .param("value", value)
    }

    /// The field is not an area code.
    pub fn area(field: impl Into<String>, detail: impl ToString) -> Invalid {
        Invalid::new(field, detail).code(Code::AreaCodeInvalid)
    }

    pub fn code(mut self, code: Code) -> Invalid {
        self.code = code;
        self
    }

    pub fn param(mut self, name: &str, value: impl Into<serde_json::Value>) -> Invalid {
        self.params.insert(name.to_string(), value.into());
        self
    }
}

impl From<crate::clock::TimeError> for Invalid {
    fn from(e: crate::clock::TimeError) -> Invalid {
        Invalid::new(e.field.clone(), e).code(Code::TimeInvalid)
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
