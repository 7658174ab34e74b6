//! The receive endpoint: `POST [ebd] receive_path` with a multipart `file` part holding the
//! package tar (a bare tar body is taken too). The answer is always HTTP 200 with the signed
//! receipt tar, whatever the package was, because the platforms read the outcome from its
//! ResultCode; only a body over the size limit (413) or a node shutting down gets an HTTP error.
//!
//! The route is authorised by the package's signature, not by a session, so it sits outside the
//! access table (see [`crate::http::app`]); at most four packages are checked at once.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::package;
use super::receive::{self, Receipt};
use crate::app::AppState;

/// Packages checked at once; more wait their turn (a package can be 32 MB).
const AT_ONCE: usize = 4;

/// The router for `[ebd] receive_path`, when the link is on.
pub fn routes(state: &AppState) -> Option<Router<AppState>> {
    let rt = state.ebd.get()?.clone();
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let path = rt.config.receive_path.clone();
    Some(
        Router::new().route(
            &path,
            axum::routing::post(move |State(app): State<AppState>, request: Request| {
                let (rt, gate) = (rt.clone(), gate.clone());
                async move {
                    let Ok(_permit) = gate.acquire().await else {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    };
                    let archive = match package_bytes(request, &app).await {
                        Ok(b) => b,
                        Err(response) => return response,
                    };
                    let receipt = receive::receive(&rt, archive).await;
                    receipt_response(&rt, &receipt)
                }
            })
            .layer(axum::extract::DefaultBodyLimit::max(
                super::MAX_PACKAGE_BYTES,
            )),
        ),
    )
}

/// The package: the multipart part named `file` (or the first whose file name ends in `.tar`),
/// or the whole body when it is not multipart.
async fn package_bytes(request: Request, state: &AppState) -> Result<Bytes, Response> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let too_large = |_| StatusCode::PAYLOAD_TOO_LARGE.into_response();
    if !multipart {
        return Bytes::from_request(request, state)
            .await
            .map_err(|e| e.into_response());
    }
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| e.into_response())?;
    let mut found = Bytes::new();
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let named = field.name() == Some("file")
                    || field.file_name().is_some_and(|f| f.ends_with(".tar"));
                if !named {
                    continue;
                }
                match field.bytes().await {
                    Ok(b) => {
                        found = b;
                        break;
                    }
                    Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                        return Err(too_large(e));
                    }
                    Err(_) => break,
                }
            }
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(e)),
            // A broken form is a package that cannot be parsed: it gets its receipt (ResultCode 2).
            Err(_) => break,
        }
    }
    Ok(found)
}

fn receipt_response(rt: &super::Runtime, receipt: &Receipt) -> Response {
    let (ebdid, tar) = rt.package(
        "EBDResponse",
        receipt.sender.as_deref(),
        receipt.related.as_deref(),
        |w| package::response_body(w, receipt.code, &receipt.desc),
    );
    let mut response = tar.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment;filename=\"EBDT_{ebdid}.tar\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}
