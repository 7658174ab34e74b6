//! RFC 9457 problem details: the one error shape every client of the API sees.
//!
//! Handlers return [`ApiError`]; it says what went wrong in terms a client can act on and never
//! carries internals (SQL, paths, panics) to the client. Internal causes are logged with the request
//! id instead, so an operator can find them from what a user reports.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::codes::{Code, Reason};
use crate::invalid::Invalid;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For validation errors: which request field was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What went wrong as a stable snake_case code ([`Code`]); clients show their own text for it.
    pub code: &'static str,
    /// Values the client's text for `code` fills in.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<Option<String>>) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            code: Code::for_status(status.as_u16()).as_str(),
            params: serde_json::Map::new(),
        }
    }

    fn with(mut self, code: Code, params: serde_json::Map<String, serde_json::Value>) -> Problem {
        self.code = code.as_str();
        self.params = params;
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// Errors a handler can return. Each maps to one status and a message safe to show.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(Reason),
    /// A field of the request was refused; the problem document names it.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("authentication required")]
    Unauthorized,
    /// A sign-in with a wrong username or password (which of them is never said).
    #[error("wrong username or password")]
    BadCredentials,
    #[error("{0}")]
    Forbidden(Reason),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(Reason),
    #[error("request body too large")]
    PayloadTooLarge,
    /// Over a quota; the message names it.
    #[error("{0}")]
    QuotaExceeded(Reason),
    #[error("{0}")]
    UnsupportedMediaType(Reason),
    /// Well-formed but not acceptable as it stands (an idempotency key reused for another request).
    #[error("{0}")]
    Unprocessable(Reason),
    #[error("too many attempts; try again in {0} seconds")]
    TooManyRequests(u64),
    /// Over a count limit (not a rate): the reason says which; retry after the seconds given.
    #[error("{0}")]
    OverLimit(Reason, u64),
    /// An upload's bytes do not have the declared SHA-256 (460, as in tus's checksum extension).
    #[error("{0}")]
    ChecksumMismatch(Reason),
    #[error("the service is not ready: {0}")]
    Unavailable(Reason),
    /// The request names a host this node does not answer to (DNS rebinding).
    #[error("{0}")]
    Misdirected(Reason),
    /// Too much of this work is under way; try again after this many seconds.
    #[error("the node is busy; try again in {0} seconds")]
    Busy(u64),
    /// The cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// 400 naming `field`, with a message saying what is accepted.
    pub fn invalid(field: impl Into<String>, detail: impl ToString) -> ApiError {
        ApiError::Invalid(Invalid::new(field, detail))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge | ApiError::QuotaExceeded(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(_) | ApiError::OverLimit(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ChecksumMismatch(_) => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::Unavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// The machine code and parameters of this refusal.
    pub fn code(&self) -> (Code, serde_json::Map<String, serde_json::Value>) {
        let reason = |r: &Reason, fallback: Code| (r.code.unwrap_or(fallback), r.params.clone());
        let seconds = |code: Code, secs: u64| {
            let mut params = serde_json::Map::new();
            params.insert("seconds".into(), secs.into());
            (code, params)
        };
        match self {
            ApiError::Invalid(i) => (i.code, i.params.clone()),
            ApiError::BadRequest(r) => reason(r, Code::BadRequest),
            ApiError::Forbidden(r) => reason(r, Code::Forbidden),
            ApiError::Conflict(r) => reason(r, Code::Conflict),
            ApiError::QuotaExceeded(r) => reason(r, Code::QuotaExceeded),
            ApiError::UnsupportedMediaType(r) => reason(r, Code::UnsupportedMediaType),
            ApiError::Unprocessable(r) => reason(r, Code::Unprocessable),
            ApiError::ChecksumMismatch(r) => reason(r, Code::ChecksumMismatch),
            ApiError::Misdirected(r) => reason(r, Code::Misdirected),
            ApiError::Unavailable(r) => reason(r, Code::Unavailable),
            ApiError::TooManyRequests(secs) => seconds(Code::TooManyAttempts, *secs),
            ApiError::OverLimit(r, _) => reason(r, Code::TooManyRequests),
            ApiError::Busy(secs) => seconds(Code::Busy, *secs),
            ApiError::Unauthorized => (Code::Unauthenticated, Default::default()),
            ApiError::BadCredentials => (Code::BadCredentials, Default::default()),
            ApiError::NotFound => (Code::NotFound, Default::default()),
            ApiError::PayloadTooLarge => (Code::PayloadTooLarge, Default::default()),
            ApiError::Internal(_) => (Code::Internal, Default::default()),
        }
    }

    /// A refusal with a specific code (403 unless `status` says otherwise is up to the caller).
    pub fn forbidden(code: Code, detail: impl Into<String>) -> ApiError {
        ApiError::Forbidden(Reason::new(code, detail))
    }
}

impl From<crate::clock::TimeError> for ApiError {
    fn from(e: crate::clock::TimeError) -> Self {
        ApiError::Invalid(e.into())
    }
}

impl From<crate::auth::session::RandomUnavailable> for ApiError {
    fn from(e: crate::auth::session::RandomUnavailable) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_retryable() {
            ApiError::Unavailable("the database is busy; try again".into())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error while handling request");
        }
        let (code, params) = self.code();
        let mut problem = Problem::new(status, Some(self.to_string())).with(code, params);
        if let ApiError::Invalid(invalid) = &self {
            problem.field = Some(invalid.field.clone());
        }
        let mut response = problem.into_response();
        if let ApiError::TooManyRequests(secs) | ApiError::Busy(secs) | ApiError::OverLimit(_, secs) =
            &self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// Turns any error response that is not already a problem document (an extractor's rejection, the
/// body limit's 413, the timeout's 408, a caught panic) into one, keeping its status. A short plain
/// text message is kept as the detail; anything else is dropped so internals never leak.
pub async fn normalize(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let is_text = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    let detail = if is_text && !status.is_server_error() {
        axum::body::to_bytes(body, 4096)
            .await
            .ok()
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    } else {
        None
    };
    let mut fresh = Problem::new(status, detail).into_response();
    // Keep headers that matter to clients, such as Allow and Retry-After.
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            fresh.headers_mut().insert(name, v.clone());
        }
    }
    fresh
}
