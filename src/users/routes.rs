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
use crate::auth::password::HashError;
use crate::auth::roles::Role;
use crate::codes::{Code, Reason};
use crate::config::Secret;
use crate::http::extract::{ApiJson, empty_as_none};
use crate::http::problem::ApiError;
use crate::http::routes::Routes;

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/users", list)
        .post("/api/v1/users", create)
        .post("/api/v1/users/{username}/password", set_password)
        .post("/api/v1/users/{username}/disable", disable)
        .post("/api/v1/users/{username}/rename", rename)
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(invalid) => ApiError::Invalid(invalid),
            UserError::Taken(_) => {
                ApiError::Conflict(Reason::new(Code::UsernameTaken, e.to_string()))
            }
            UserError::Ambiguous(_) => ApiError::Conflict(e.to_string().into()),
            UserError::NotFound(_) => ApiError::NotFound,
            UserError::Forbidden(m) => ApiError::Forbidden(m),
            UserError::Hash(HashError::ShuttingDown) => {
                ApiError::Unavailable("shutting down".into())
            }
            UserError::Hash(other) => ApiError::Internal(other.to_string()),
            UserError::Store(s) => s.into(),
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default, deserialize_with = "empty_as_none")]
    area: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let within = match q.area {
        Some(a) => a
            .parse::<AreaCode>()
            .map_err(|e| ApiError::Invalid(crate::invalid::Invalid::area("area", e)))?,
        None => caller.area.clone(),
    };
    if !caller.can_reach(&within) {
        return Err(ApiError::Forbidden(crate::incidents::outside_yours(
            &within,
            &caller.area,
        )));
    }
    let config = state.config.clone();
    let (users, names) = state
        .store
        .read(move |conn| {
            Ok::<_, crate::store::StoreError>((
                super::list(conn, &within)?,
                crate::areas::Names::load(conn, &config)?,
            ))
        })
        .await?;
    let mut users = serde_json::to_value(users).map_err(|e| ApiError::Internal(e.to_string()))?;
    names.annotate(&mut users);
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

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let new = NewUser {
        username: body.username.trim().to_string(),
        role: body
            .role
            .parse::<Role>()
            .map_err(|e| ApiError::invalid("role", e))?,
        area: body
            .area
            .parse::<AreaCode>()
            .map_err(|e| ApiError::Invalid(crate::invalid::Invalid::area("area", e)))?,
        department: body.department,
        display_name: body.display_name.map(|d| d.trim().to_string()),
        phone: body
            .phone
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty()),
        password: Secret::new(body.password),
    };
    let view = crate::users::accounts::add(
        &state.store,
        state.write_ctx(),
        &state.hasher,
        caller.actor.clone(),
        new,
    )
    .await?;
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
    crate::users::accounts::set_password(
        &state.store,
        state.write_ctx(),
        &state.hasher,
        caller.actor.clone(),
        username,
        Secret::new(body.password),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ctx = state.write_ctx();
    let actor = caller.actor.clone();
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
                .map_err(|_| ApiError::invalid("id", "not a record id"))
        })
        .transpose()?;
    let new_username = body.new_username.trim().to_string();
    let ctx = state.write_ctx();
    let actor = caller.actor.clone();
    let view = state
        .store
        .write(move |conn| super::rename(conn, &ctx, &actor, &username, id, &new_username))
        .await
        .map_err(|e: UserError| ApiError::from(e))?;
    Ok(Json(view))
}
