//! Stable machine codes for every refusal the API gives, and [`Reason`], a refusal's message.
//!
//! A problem document's English `detail` is for people reading the API; the web UI and other
//! clients show their own words, in Chinese first, chosen by `code` and filled in from `params`.
//! So codes are part of the API contract: never renamed, only added. [`Code::ALL`] lists every code
//! the server can emit; a test checks the UI has a zh-CN and an English text for each.

use serde_json::{Map, Value};

macro_rules! codes {
    ( $( $(#[$doc:meta])* $variant:ident = $text:literal, )* ) => {
        /// A refusal's stable, snake_case machine code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, in declaration order.
            pub const ALL: &'static [Code] = &[ $( Code::$variant, )* ];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( Code::$variant => $text, )*
                }
            }
        }
    };
}

codes! {
    // What a status means when nothing more specific was said.
    BadRequest = "bad_request",
    /// A request field was refused; `params.field` names it.
    InvalidField = "invalid_field",
    Unauthenticated = "unauthenticated",
    Forbidden = "forbidden",
    NotFound = "not_found",
    MethodNotAllowed = "method_not_allowed",
    RequestTimeout = "request_timeout",
    Conflict = "conflict",
    PayloadTooLarge = "payload_too_large",
    QuotaExceeded = "quota_exceeded",
    UnsupportedMediaType = "unsupported_media_type",
    Unprocessable = "unprocessable",
    /// Sign-in attempts are held back; `params.seconds` says for how long.
    TooManyAttempts = "too_many_attempts",
    TooManyRequests = "too_many_requests",
    ChecksumMismatch = "checksum_mismatch",
    Misdirected = "misdirected",
    Unavailable = "unavailable",
    /// `params.seconds` until a retry is worth it.
    Busy = "busy",
    Internal = "internal",
    /// A status with no code of its own.
    Error = "error",

    // Access and sessions.
    /// `params.role` may not call this route.
    RoleForbidden = "role_forbidden",
    OriginRefused = "origin_refused",
    CsrfMissing = "csrf_missing",
    /// Wrong username or password.
    BadCredentials = "bad_credentials",
    /// `params.username` is disabled.
    AccountDisabled = "account_disabled",
    /// The route needs a signed-in person, not an API token or a device.
    PersonOnly = "person_only",
    /// An earlier request with this Idempotency-Key is still running.
    StillProcessing = "still_processing",
    IdempotencyKeyReused = "idempotency_key_reused",

    // Fields.
    /// `params.field` is required.
    Required = "required",
    /// `params.field` holds `params.min` to `params.max` characters.
    TextLength = "text_length",
    /// `params.field` holds a value (`params.value`) that is not one of those known.
    UnknownValue = "unknown_value",
    /// `params.field` is not an area code (6, 9 or 12 digits).
    AreaCodeInvalid = "area_code_invalid",
    /// `params.area` is outside the person's area `params.yours`.
    AreaOutsideYours = "area_outside_yours",
    /// `params.area` is outside this node's area `params.node`.
    AreaOutsideNode = "area_outside_node",
    /// `params.field` is not a time this node accepts.
    TimeInvalid = "time_invalid",
    /// `params.field` must come after `params.after`.
    TimeOrder = "time_order",
    /// `params.field` holds no valid id.
    IdInvalid = "id_invalid",
    /// The location is not a latitude and longitude.
    LocationInvalid = "location_invalid",

    // Accounts.
    UsernameInvalid = "username_invalid",
    UsernameTaken = "username_taken",
    /// The password is too short or too common; `params.min` characters at least.
    PasswordWeak = "password_weak",
    /// A department handler needs a department.
    DepartmentRequired = "department_required",
    /// `params.role` does not exist at this area's level.
    RoleLevel = "role_level",
    SelfDisable = "self_disable",
    AdminOnly = "admin_only",

    // Incidents.
    /// `params.action` needs a note saying why.
    NoteRequired = "note_required",
    /// `params.action` cannot be taken on something that is `params.state`.
    ActionNotAllowed = "action_not_allowed",
    /// `params.role` may not take `params.action` on this incident now.
    RoleMayNotAct = "role_may_not_act",
    /// The chosen id already belongs to another record.
    IdTaken = "id_taken",
    /// Rated only after it is closed.
    RatingNotClosed = "rating_not_closed",
    RatingNotYours = "rating_not_yours",
    /// The incident named in `duplicate_of` cannot be the original (itself, unknown, or itself a
    /// duplicate).
    DuplicateTarget = "duplicate_target",
    /// Escalation needs a level above, and this node has none.
    NoUpstream = "no_upstream",
    /// The record is quarantined: its writer had no authority for it.
    Quarantined = "quarantined",

    // Uploads.
    /// The upload has `params.offset` of `params.length` bytes.
    UploadUnfinished = "upload_unfinished",
    /// The chunk was not sent at the upload's offset, `params.offset`.
    UploadOffset = "upload_offset",
    UploadCut = "upload_cut",
    /// Too many unfinished uploads; `params.max` at once.
    UploadsTooMany = "uploads_too_many",

    // Warnings and broadcasts.
    /// Done by the node itself, never by a person.
    SystemOnly = "system_only",
    /// The broadcast's content was changed after it was made.
    BroadcastVoid = "broadcast_void",
    /// The alert refers to none this node has received.
    UnknownReference = "unknown_reference",
}

impl Code {
    /// The code for a status when nothing more specific was said.
    pub fn for_status(status: u16) -> Code {
        match status {
            400 => Code::BadRequest,
            401 => Code::Unauthenticated,
            403 => Code::Forbidden,
            404 => Code::NotFound,
            405 => Code::MethodNotAllowed,
            408 => Code::RequestTimeout,
            409 => Code::Conflict,
            413 => Code::PayloadTooLarge,
            415 => Code::UnsupportedMediaType,
            421 => Code::Misdirected,
            422 => Code::Unprocessable,
            429 => Code::TooManyRequests,
            460 => Code::ChecksumMismatch,
            503 => Code::Unavailable,
            500..=599 => Code::Internal,
            _ => Code::Error,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why something was refused: the English `detail` every client can read, and optionally a code
/// with parameters for clients that speak to people in their own words. Without a code the status
/// decides it ([`Code::for_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: Option<Code>,
    pub params: Map<String, Value>,
    pub detail: String,
}

impl Reason {
    pub fn new(code: Code, detail: impl Into<String>) -> Reason {
        Reason {
            code: Some(code),
            params: Map::new(),
            detail: detail.into(),
        }
    }

    /// Adds a parameter the client's text fills in.
    pub fn param(mut self, name: &str, value: impl Into<Value>) -> Reason {
        self.params.insert(name.to_string(), value.into());
        self
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl From<String> for Reason {
    fn from(detail: String) -> Reason {
        Reason {
            code: None,
            params: Map::new(),
            detail,
        }
    }
}

impl From<&str> for Reason {
    fn from(detail: &str) -> Reason {
        Reason::from(detail.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                !s.is_empty()
                    && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && !s.starts_with('_')
                    && !s.ends_with('_'),
                "{s} is not snake_case"
            );
        }
    }

    /// Every code the server can emit has a text in both UI languages, so no refusal reaches a
    /// person as a raw English sentence or a bare code.
    #[test]
    fn every_code_has_zh_cn_and_english_text_in_the_ui() {
        for (lang, source) in [
            ("zh-CN", include_str!("../ui/js/i18n/problems-zh-CN.js")),
            ("en", include_str!("../ui/js/i18n/problems-en.js")),
        ] {
            for code in Code::ALL {
                let key = format!("'problem.{}':", code.as_str());
                assert!(source.contains(&key), "{lang} has no text for {code}");
            }
        }
    }
}
