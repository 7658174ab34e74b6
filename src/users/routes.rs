//! The accounts API for `admin` and `county_it`: list, create, set password, disable, rename.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use township_sync::AreaCode;

use super::{NewUser, UserError};
use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::roles::Role;
use crate::config::Secret;
use crate::http::extract::ApiJson;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/users", list)
        .post("/api/v1/users", create)
        .post("/api/v1/users/{username}/password", set_password)
        .post("/api/v1/users/{username}/disable", disable)
        .post("/api/v1/users/{username}/rename", rename)
}

#[derive(Deserialize)]
struct ListQuery {
    area: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let within = match q.area {
        Some(a) => a.parse::<AreaCode>().map_err(|e| ApiError::InvalidField {
            field: "area".into(),
            detail: e.to_string(),
        })?,
        None => caller.area.clone(),
    };
    if !caller.can_reach(&within) {
        return Err(ApiError::Forbidden(format!(
            "area {within} is outside your area {}",
            caller.area
        )));
    }
    let users = state
        .store
        .read(move |conn| super::list(conn, &within))
        .await?;
    Ok(Json(serde_json::json!({ "users": users })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    username: String,
    role: String,
    area: String,
    department: Option<String>,
    display_name: Option<String>,
    phone: Option<String>,
    password: String,
}

fn invalid(field: &str, detail: impl ToString) -> ApiError {
    ApiError::InvalidField {
        field: field.into(),
        detail: detail.to_string(),
    }
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let new = NewUser {
        username: body.username.trim().to_string(),
        role: body.role.parse::<Role>().map_err(|e| invalid("role", e))?,
        area: body
            .area
            .parse::<AreaCode>()
            .map_err(|e| invalid("area", e))?,
        department: body.department,
        display_name: body.display_name.map(|d| d.trim().to_string()),
        phone: body
            .phone
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty()),
        password: Secret::new(body.password),
    };
    let view = state.add_user(caller.actor(), new).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

async fn set_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    state
        .set_user_password(caller.actor(), username, Secret::new(body.password))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ctx = state.write_ctx();
    let actor = caller.actor();
    state
        .store
        .write(move |conn| super::disable(conn, &ctx, &actor, &username))
        .await
        .map_err(|e: UserError| ApiError::from(e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    new_username: String,
    /// Which record, when several carry the username (a clash).
    id: Option<String>,
}

async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    ApiJson(body): ApiJson<RenameBody>,
) -> Result<Json<super::UserView>, ApiError> {
    let id = body
        .id
        .as_deref()
        .map(|i| {
            i.parse::<uuid::Uuid>()
                .map_err(|_| invalid("id", "not a record id"))
        })
        .transpose()?;
    let new_username = body.new_username.trim().to_string();
    let ctx = state.write_ctx();
    let actor = caller.actor();
    let view = state
        .store
        .write(move |conn| super::rename(conn, &ctx, &actor, &username, id, &new_username))
        .await
        .map_err(|e: UserError| ApiError::from(e))?;
    Ok(Json(view))
}
