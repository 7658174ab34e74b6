//! `/api/v1/areas`: the area directory (codes with names) every page uses to show names, and naming
//! an area, which writes its record so the name flows down to the nodes below.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use township_sync::AreaCode;

use super::{AreaError, Directory};
use crate::app::AppState;
use crate::auth::Caller;
use crate::http::extract::ApiJson;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::invalid::Invalid;

impl From<AreaError> for ApiError {
    fn from(e: AreaError) -> Self {
        match e {
            AreaError::Invalid(invalid) => ApiError::Invalid(invalid),
            AreaError::Forbidden(reason) => ApiError::Forbidden(reason),
            AreaError::Store(s) => s.into(),
        }
    }
}

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/areas", list)
        .put("/api/v1/areas/{code}", name)
}

/// The directory as this node knows it, for the areas around the caller's own: those inside it and
/// those above it.
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let directory = directory(&state).await?;
    Ok(Json(
        serde_json::json!({"areas": directory.entries(&caller.area)}),
    ))
}

/// The directory, read once per request (a small table).
pub async fn directory(state: &AppState) -> Result<Directory, ApiError> {
    let config = state.config.clone();
    Ok(state
        .store
        .read(move |conn| Directory::load(conn, &config.areas))
        .await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

async fn name(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
    ApiJson(body): ApiJson<NameBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let code: AreaCode = code
        .parse()
        .map_err(|e| ApiError::Invalid(Invalid::area("code", e)))?;
    let (ctx, actor, target) = (state.write_ctx(), caller.actor.clone(), code.clone());
    state
        .store
        .write(move |conn| super::set_name(conn, &ctx, &actor, &target, &body.name))
        .await?;
    let directory = directory(&state).await?;
    Ok(Json(serde_json::json!({
        "code": code.as_str(),
        "name": directory.name(code.as_str()),
        "parent": code.parent().map(|p| p.as_str().to_string()),
    })))
}
