//! The warnings API: the list (filtered by state, level and area, limited to warnings covering or
//! inside the caller's area), one warning with its timeline and the caller's allowed actions, manual
//! warnings, and transitions (issue, update, cancel).

use axum::Json;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use township_sync::AreaCode;
use uuid::Uuid;

use super::{Action, Content, Filter, NewWarning, Source, WarningError};
use crate::app::AppState;
use crate::auth::Caller;
use crate::http::extract::{ApiJson, empty_as_none};
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::invalid::Invalid;
use crate::rules::eval::Level;
use crate::rules::spec::Event;

impl From<WarningError> for ApiError {
    fn from(e: WarningError) -> Self {
        match e {
            WarningError::Invalid(invalid) => ApiError::Invalid(invalid),
            WarningError::Forbidden(m) => ApiError::Forbidden(m),
            WarningError::NotFound => ApiError::NotFound,
            WarningError::Conflict(m) => ApiError::Conflict(m),
            WarningError::Store(s) => s.into(),
        }
    }
}

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/warnings", list)
        .post("/api/v1/warnings", create)
        .get("/api/v1/warnings/{id}", get)
        .post("/api/v1/warnings/{id}/transitions", transition)
        .get("/api/v1/warnings/events", events)
}

/// Warning events the caller may see, as they happen (server-sent events named `warning`), so a
/// banner changes the moment a warning does. Ends at shutdown so an open tab never holds up a
/// restart; a client that falls behind gets `lagged` and should reload the list.
async fn events(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let rx = state.warnings.subscribe();
    let shutdown = state.shutdown.clone();
    let area = caller.actor.area.clone();
    let stream = futures_util::stream::unfold(
        (rx, shutdown, area),
        |(mut rx, shutdown, area)| async move {
            loop {
                let next = tokio::select! {
                    e = rx.recv() => e,
                    () = shutdown.cancelled() => return None,
                };
                let event = match next {
                    Ok(e) if super::may_see(&area, &e.area) => {
                        match SseEvent::default().event("warning").json_data(&e) {
                            Ok(ev) => ev,
                            Err(_) => continue,
                        }
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        SseEvent::default().event("lagged").data(n.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(event), (rx, shutdown, area)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default, deserialize_with = "empty_as_none")]
    state: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    level: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    area: Option<String>,
}

fn split(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

async fn list(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let area = q
        .area
        .map(|a| {
            a.parse::<AreaCode>()
                .map_err(|e| ApiError::Invalid(crate::invalid::Invalid::area("area", e)))
        })
        .transpose()?;
    let levels = split(q.level);
    if let Some(bad) = levels.iter().find(|l| l.parse::<Level>().is_err()) {
        return Err(ApiError::invalid("level", format!("unknown level `{bad}`")));
    }
    let states = split(q.state);
    if let Some(bad) = states
        .iter()
        .find(|s| !["raised", "issued", "cancelled", "expired", "cleared"].contains(&s.as_str()))
    {
        return Err(ApiError::invalid("state", format!("unknown state `{bad}`")));
    }
    let (viewer, filter) = (
        caller.area.clone(),
        Filter {
            states,
            levels,
            area,
        },
    );
    let config = state.config.clone();
    let (rows, directory) = state
        .store
        .read(move |conn| {
            Ok::<_, crate::store::StoreError>((
                super::list(conn, &viewer, &filter)?,
                crate::areas::Directory::load(conn, &config.areas)?,
            ))
        })
        .await?;
    let mut rows = serde_json::to_value(rows).map_err(|e| ApiError::Internal(e.to_string()))?;
    directory.annotate(&mut rows);
    Ok(Json(json!({ "warnings": rows })))
}

async fn get(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let (docs, actor, config) = (
        state.docs.clone(),
        caller.actor.clone(),
        state.config.clone(),
    );
    let view = state
        .store
        .read(move |conn| {
            let mut view = super::view(conn, &docs, &actor, id)?;
            crate::areas::Directory::load(conn, &config.areas)?.annotate(&mut view);
            Ok::<_, super::WarningError>(view)
        })
        .await?;
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentBody {
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    headline: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    instruction: Option<String>,
    #[serde(default)]
    headline_en: Option<String>,
    #[serde(default)]
    description_en: Option<String>,
    #[serde(default)]
    instruction_en: Option<String>,
    #[serde(default)]
    areas: Option<Vec<String>>,
    #[serde(default)]
    onset: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

impl ContentBody {
    fn into_content(self) -> Result<Content, ApiError> {
        let level = self
            .level
            .map(|l| {
                l.parse::<Level>()
                    .map_err(|()| ApiError::invalid("level", "blue, yellow, orange or red"))
            })
            .transpose()?;
        let areas = self
            .areas
            .map(|list| {
                list.iter()
                    .map(|a| {
                        a.parse::<AreaCode>().map_err(|e| {
                            ApiError::Invalid(crate::invalid::Invalid::area("areas", e))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let onset_ms = self
            .onset
            .map(|t| crate::clock::parse_time("onset", &t))
            .transpose()?;
        let expires_ms = self
            .expires
            .map(|t| crate::clock::parse_time("expires", &t))
            .transpose()?;
        Ok(Content {
            level,
            headline: self.headline.map(|h| h.trim().to_string()),
            description: self.description,
            instruction: self.instruction,
            headline_en: self.headline_en.map(|h| h.trim().to_string()),
            description_en: self.description_en,
            instruction_en: self.instruction_en,
            areas,
            onset_ms,
            expires_ms,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    area: String,
    event: Event,
    #[serde(default = "actual")]
    status: String,
    #[serde(flatten)]
    content: ContentBody,
}

fn actual() -> String {
    "actual".into()
}

async fn create(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let area: AreaCode = body
        .area
        .parse()
        .map_err(|e| ApiError::Invalid(Invalid::new("area", e)))?;
    let content = body.content.into_content()?;
    let new = NewWarning {
        area,
        event: body.event,
        status: body.status.clone(),
        source: Source::Person(caller.username.clone()),
        content,
        first: Action::Issue,
        readings: Vec::new(),
    };
    let (ctx, actor, docs) = (state.write_ctx(), caller.actor.clone(), state.docs.clone());
    let view = state
        .store
        .write(move |conn| {
            let id = super::create(conn, &ctx, &actor, new)?;
            super::view(conn, &docs, &actor, id)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    action: String,
    #[serde(flatten)]
    content: ContentBody,
}

async fn transition(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TransitionBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let action = match body.action.as_str() {
        "issue" => Action::Issue,
        "update" => Action::Update,
        "cancel" => Action::Cancel,
        other => {
            return Err(ApiError::invalid(
                "action",
                format!("`{other}` is not an action people take (issue, update, cancel)"),
            ));
        }
    };
    let content = body.content.into_content()?;
    let (ctx, actor, docs) = (state.write_ctx(), caller.actor.clone(), state.docs.clone());
    let view = state
        .store
        .write(move |conn| {
            super::act(conn, &ctx, &actor, id, action, content)?;
            super::view(conn, &docs, &actor, id)
        })
        .await?;
    Ok(Json(view))
}
