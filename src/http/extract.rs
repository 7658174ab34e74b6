//! Request extractors with problem-detail rejections. `ApiJson` refuses a non-JSON body with 415 and
//! a body that does not fit the expected shape with 400 naming the offending field, which axum's own
//! `Json` reports as a bare 422.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::problem::ApiError;

pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> ApiJson<T> {
    /// For handlers that need the raw request first (for its extensions) and the body after.
    pub async fn from_request_compat<S: Send + Sync>(
        req: Request,
        state: &S,
    ) -> Result<Self, ApiError> {
        <Self as FromRequest<S>>::from_request(req, state).await
    }
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("could not read the request body".into())
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            // A body is one JSON value: anything after it is refused, not silently ignored.
            Ok(value) => match de.end() {
                Ok(()) => Ok(ApiJson(value)),
                Err(_) => Err(ApiError::invalid(
                    "body",
                    "the body holds more than one JSON value",
                )),
            },
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = inner.to_string();
                // serde names a missing field only in its message: "missing field `role` at ...".
                let field = message
                    .split('`')
                    .nth(1)
                    .filter(|_| {
                        message.starts_with("missing field") || message.starts_with("unknown field")
                    })
                    .map(String::from)
                    .unwrap_or_else(|| {
                        if path == "." {
                            "body".into()
                        } else {
                            path.clone()
                        }
                    });
                let detail = message
                    .split(" at line")
                    .next()
                    .unwrap_or(&message)
                    .to_string();
                Err(ApiError::invalid(field, detail))
            }
        }
    }
}

/// The client's address, when the server was given it (`ConnectInfo`); `None` for in-process
/// requests such as handler tests.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// For optional query parameters: `?area=` (what an HTML form sends for an empty field) means the
/// parameter was not given. Use as `#[serde(default, deserialize_with = "empty_as_none")]`.
pub fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = <Option<String> as serde::Deserialize>::deserialize(d)?;
    Ok(value.filter(|s| !s.is_empty()))
}

/// The bytes of the multipart field named `file`, at most `limit` of them (413 beyond, without
/// reading further), or a 400 saying what to send (`what`, such as "the photo").
pub async fn file_field(
    multipart: &mut axum::extract::Multipart,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, ApiError> {
    let failed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(e.body_text().into())
        }
    };
    while let Some(mut field) = multipart.next_field().await.map_err(failed)? {
        if field.name() != Some("file") {
            continue;
        }
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(failed)? {
            if data.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge);
            }
            data.extend_from_slice(&chunk);
        }
        return Ok(data);
    }
    Err(ApiError::invalid(
        "file",
        format!("send {what} in a multipart field named `file`"),
    ))
}
