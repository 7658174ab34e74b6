//! The incidents API: report, list and search, detail, workflow actions, comments, ratings,
//! attachments, exports and indicators.

use crate::codes::{Code, Reason};
use axum::Json;
use axum::extract::{FromRequest, Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use township_sync::AreaCode;
use uuid::Uuid;

use super::query::{self, Filter};
use super::{Attachment, IncidentError, NewIncident, TransitionRequest};
use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::roles::Role;
use crate::http::csv;
use crate::http::extract::{ApiJson, empty_as_none};
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::store::StoreError;
use township_sync::DocError;

/// Uploads may be this much larger than the file itself (multipart framing).
const MULTIPART_OVERHEAD: usize = 64 * 1024;
const MAX_EXPORT_ROWS: usize = 100_000;

pub fn routes(r: Routes, max_attachment_bytes: usize) -> Routes {
    r.post("/api/v1/incidents", create)
        .get("/api/v1/incidents", list)
        .get("/api/v1/incidents/work", work)
        .get("/api/v1/incidents/work/events", work_events)
        .get("/api/v1/incidents/export.csv", export_csv)
        .get("/api/v1/incidents/export.geojson", export_geojson)
        .get("/api/v1/incidents/{id}", detail)
        .post("/api/v1/incidents/{id}/transitions", transition)
        .post("/api/v1/incidents/{id}/comments", comment)
        .post("/api/v1/incidents/{id}/rating", rate)
        .post_with_limit(
            "/api/v1/incidents/{id}/attachments",
            attach,
            max_attachment_bytes + MULTIPART_OVERHEAD,
        )
        .get("/api/v1/indicators", indicators)
        .get("/api/v1/catalog", catalog)
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

/// The incident as the caller may see it, loaded from the read pool.
async fn load_view(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<serde_json::Value, ApiError> {
    let (docs, config, who, now, has_upstream) = (
        state.docs.clone(),
        state.config.clone(),
        caller.clone(),
        state.clock.now_ms(),
        state.upstream().is_some(),
    );
    state
        .store
        .read(move |conn| {
            let loaded = super::load(&docs, conn, id)?;
            if !who.can_reach(&loaded.meta.scope)
                || !super::visible_to(&who, &loaded.doc, &loaded.authors, &loaded.meta.scope)
            {
                return Err(IncidentError::NotFound);
            }
            let mut view = super::view(&loaded, &config, &who, now, has_upstream);
            view["duplicates"] = serde_json::json!(super::duplicates_of(conn, id)?);
            crate::areas::Names::load(conn, &config)?.annotate(&mut view);
            Ok(view)
        })
        .await
        .map_err(ApiError::from)
}

impl From<IncidentError> for ApiError {
    fn from(e: IncidentError) -> Self {
        match e {
            IncidentError::Invalid(invalid) => ApiError::Invalid(invalid),
            IncidentError::Forbidden(m) => ApiError::Forbidden(m),
            IncidentError::NotFound => ApiError::NotFound,
            IncidentError::Conflict(m) => ApiError::Conflict(m),
            IncidentError::Quota(m) => ApiError::QuotaExceeded(m),
            IncidentError::Store(StoreError::Record(DocError::NotFound(_))) => ApiError::NotFound,
            IncidentError::Store(s) => s.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Location {
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// A UUIDv7 the reporter's phone chose, so a retry after a lost answer finds the first report.
    #[serde(default)]
    id: Option<String>,
    category: String,
    title: String,
    #[serde(default)]
    description: String,
    area: String,
    location: Option<Location>,
    place: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let chosen = match body.id.as_deref() {
        None => None,
        Some(text) => {
            let id = Uuid::parse_str(text)
                .ok()
                .filter(|u| u.get_version_num() == 7)
                .ok_or_else(|| {
                    IncidentError::Invalid(
                        crate::invalid::Invalid::new(
                            "id",
                            "a UUIDv7 made on the phone, or leave it out",
                        )
                        .code(Code::IdInvalid),
                    )
                })?;
            // Its time must be near now: an id from far away is no phone's fresh report.
            let ms = id
                .get_timestamp()
                .map(|t| {
                    let (secs, nanos) = t.to_unix();
                    i64::try_from(secs).unwrap_or(i64::MAX) * 1000 + i64::from(nanos / 1_000_000)
                })
                .unwrap_or(0);
            let now = state.clock.now_ms();
            if ms < now - 30 * 86_400_000 || ms > now + 86_400_000 {
                return Err(ApiError::Invalid(
                    crate::invalid::Invalid::new("id", "its time is more than 30 days from now")
                        .code(Code::IdInvalid),
                ));
            }
            Some(id)
        }
    };
    let new = NewIncident {
        id: chosen,
        category: body.category.trim().to_string(),
        title: body.title,
        description: body.description,
        area: body
            .area
            .parse::<AreaCode>()
            .map_err(|e| IncidentError::Invalid(crate::invalid::Invalid::area("area", e)))?,
        location: body.location.map(|l| (l.lat, l.lon)),
        place: body.place,
    };
    super::check_new(&state.config, &state.node.area, &caller, &new)?;
    let ctx = state.write_ctx();
    let who = caller.clone();
    // A chosen id is checked where it is written: a retry of a report that arrived (even one racing
    // the first) is answered with it, an id of someone else's record is a conflict.
    let (id, made) = state
        .store
        .write(move |conn| {
            if let Some(id) = new.id {
                match super::chosen_id_taken(conn, id, &who.username)? {
                    Some(true) => return Ok((id, false)),
                    Some(false) => {
                        return Err(IncidentError::Conflict(Reason::new(
                            Code::IdTaken,
                            "this id belongs to another record",
                        )));
                    }
                    None => {}
                }
            }
            Ok((super::create(conn, &ctx, &who, new)?, true))
        })
        .await?;
    let view = load_view(&state, &caller, id).await?;
    let status = if made {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default, deserialize_with = "empty_as_none")]
    state: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    category: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    area: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    department: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    assignee: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    reporter: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    overdue: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    due_state: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    from: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    to: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    q: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    limit: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    cursor: Option<String>,
}

fn filter_from(q: ListQuery, caller: &Caller) -> Result<Filter, ApiError> {
    let bad = |field: &str, detail: &str| ApiError::invalid(field, detail);
    let states: Vec<String> = q
        .state
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    for s in &states {
        s.parse::<super::workflow::State>()
            .map_err(|e| bad("state", &e))?;
    }
    let area = match q.area {
        Some(a) => Some(
            a.parse::<AreaCode>()
                .map_err(|e| bad("area", &e.to_string()))?,
        ),
        None => None,
    };
    let overdue = match q.overdue.as_deref() {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(_) => return Err(bad("overdue", "overdue is true or false")),
    };
    if let Some(d) = q.due_state.as_deref()
        && !matches!(d, "ok" | "near" | "overdue")
    {
        return Err(bad("due_state", "due_state is ok, near or overdue"));
    }
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=200).contains(l))
            .ok_or_else(|| bad("limit", "limit is 1 to 200"))?,
    };
    let after = match q.cursor.as_deref() {
        Some(c) => Some(
            query::decode_cursor(c)
                .ok_or_else(|| bad("cursor", "cursor is not one this node issued"))?,
        ),
        None => None,
    };
    let time = |field: &str, v: Option<String>| -> Result<Option<i64>, ApiError> {
        Ok(v.map(|s| crate::clock::parse_time(field, &s)).transpose()?)
    };
    let mut department = q.department;
    if caller.role == Role::DeptHandler {
        department = caller.department.clone();
    }
    if q.q.as_deref().is_some_and(|s| s.chars().count() > 100) {
        return Err(bad("q", "search text is at most 100 characters"));
    }
    if q.q
        .as_deref()
        .is_some_and(|s| s.chars().any(char::is_control))
    {
        return Err(bad("q", "search text may not contain control characters"));
    }
    Ok(Filter {
        states,
        category: q.category,
        area,
        department,
        assignee: q.assignee,
        reporter: q.reporter,
        overdue,
        due_state: q.due_state,
        from_ms: time("from", q.from)?,
        to_ms: time("to", q.to)?,
        q: q.q,
        within: Some(caller.area.clone()),
        limit,
        after,
    })
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = filter_from(q, &caller)?;
    let config = state.config.clone();
    let (rows, next, total, names) = state
        .store
        .read(move |conn| {
            let (rows, next) = query::list(conn, &filter)?;
            let total = query::count(
                conn,
                &Filter {
                    after: None,
                    ..filter
                },
            )?;
            let names = crate::areas::Names::load(conn, &config)?;
            Ok::<_, StoreError>((rows, next, total, names))
        })
        .await?;
    let mut rows = serde_json::to_value(rows).map_err(|e| ApiError::Internal(e.to_string()))?;
    names.annotate(&mut rows);
    Ok(Json(
        json!({ "incidents": rows, "next_cursor": next, "total": total }),
    ))
}

/// The caller's work summary (see [`query::work`]).
async fn work_summary(state: &AppState, caller: &Caller) -> Result<serde_json::Value, ApiError> {
    let Some(role) = caller.actor.role.person() else {
        return Err(ApiError::Forbidden("only people have work lists".into()));
    };
    let (username, department, area) = (
        caller.actor.username.clone(),
        caller.actor.department.clone(),
        caller.area.clone(),
    );
    Ok(state
        .store
        .read(move |conn| query::work(conn, role, &username, department.as_deref(), &area))
        .await?)
}

async fn work(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(work_summary(&state, &caller).await?))
}

/// The work summary as server-sent events (`work`): once at once, then whenever it changes. It is
/// looked at after commits, at most every two seconds, so a busy sensor line costs an open tab one
/// small query per two seconds, not one per reading. Ends at shutdown.
async fn work_events(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<
    axum::response::sse::Sse<
        impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let first = work_summary(&state, &caller).await?;
    let commits = state.store.commits();
    let shutdown = state.shutdown.clone();
    let start = (
        state,
        caller,
        commits,
        shutdown,
        Some(first),
        serde_json::Value::Null,
    );
    let stream = futures_util::stream::unfold(
        start,
        |(state, caller, mut commits, shutdown, mut pending, mut last)| async move {
            loop {
                if let Some(summary) = pending.take()
                    && summary != last
                {
                    last = summary.clone();
                    let event = SseEvent::default()
                        .event("work")
                        .json_data(&summary)
                        .unwrap_or_else(|_| SseEvent::default().event("work").data("{}"));
                    return Some((Ok(event), (state, caller, commits, shutdown, None, last)));
                }
                tokio::select! {
                    changed = commits.changed() => if changed.is_err() { return None },
                    () = shutdown.cancelled() => return None,
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    () = shutdown.cancelled() => return None,
                }
                commits.borrow_and_update();
                pending = work_summary(&state, &caller).await.ok();
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))))
}

async fn export_rows(
    state: &AppState,
    caller: &Caller,
    q: ListQuery,
) -> Result<(Vec<query::Row>, crate::areas::Names), ApiError> {
    let filter = filter_from(q, caller)?;
    let config = state.config.clone();
    Ok(state
        .store
        .read(move |conn| {
            Ok::<_, StoreError>((
                query::all(conn, &filter, MAX_EXPORT_ROWS)?,
                crate::areas::Names::load(conn, &config)?,
            ))
        })
        .await?)
}

/// A download: the body with its type, named so browsers save it as a file.
fn download(
    mut response: Response,
    content_type: &'static str,
    filename: &'static str,
) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(filename),
    );
    response
}

async fn export_csv(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let (rows, names) = export_rows(&state, &caller, q).await?;
    Ok(download(
        incidents_csv(&rows, &names).into_response(),
        "text/csv; charset=utf-8",
        "attachment; filename=\"incidents.csv\"",
    ))
}

async fn export_geojson(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let (rows, names) = export_rows(&state, &caller, q).await?;
    let mut collection = query::to_geojson(&rows);
    if let Some(features) = collection["features"].as_array_mut() {
        for feature in features {
            names.annotate(&mut feature["properties"]);
        }
    }
    Ok(download(
        Json(collection).into_response(),
        "application/geo+json",
        "attachment; filename=\"incidents.geojson\"",
    ))
}

async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(load_view(&state, &caller, parse_id(&id)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    action: String,
    note: Option<String>,
    department: Option<String>,
    #[serde(default)]
    assist_departments: Vec<String>,
    /// RFC 3339 or epoch milliseconds.
    deadline: Option<serde_json::Value>,
    /// For `duplicate`: the original incident's id.
    duplicate_of: Option<String>,
}

async fn transition(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TransitionBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let deadline_ms = match body.deadline {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            let ms = n.as_i64().ok_or_else(|| {
                ApiError::invalid("deadline", "deadline is RFC 3339 or epoch milliseconds")
            })?;
            Some(
                crate::clock::check_time("deadline", ms)
                    .map_err(|e| ApiError::invalid("deadline", e))?,
            )
        }
        Some(serde_json::Value::String(s)) => Some(crate::clock::parse_time("deadline", &s)?),
        Some(_) => {
            return Err(ApiError::invalid(
                "deadline",
                "deadline is RFC 3339 or epoch milliseconds",
            ));
        }
    };
    let request = TransitionRequest {
        action: body.action,
        note: body.note,
        department: body.department,
        assist_departments: body.assist_departments,
        deadline_ms,
        duplicate_of: body.duplicate_of,
    };
    let (ctx, config, who) = (state.write_ctx(), state.config.clone(), caller.clone());
    state
        .store
        .write(move |conn| super::transition(conn, &ctx, &config, &who, id, request))
        .await?;
    Ok(Json(load_view(&state, &caller, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    text: String,
}

async fn comment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CommentBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (ctx, who) = (state.write_ctx(), caller.clone());
    state
        .store
        .write(move |conn| super::comment(conn, &ctx, &who, id, &body.text))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(load_view(&state, &caller, id).await?),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatingBody {
    score: i64,
    comment: Option<String>,
}

async fn rate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RatingBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let (ctx, who) = (state.write_ctx(), caller.clone());
    state
        .store
        .write(move |conn| super::rate(conn, &ctx, &who, id, body.score, body.comment))
        .await?;
    Ok(Json(load_view(&state, &caller, id).await?))
}

/// `{"upload": "<id>"}`: attach a finished resumable upload (see [`crate::uploads`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromUpload {
    upload: String,
}

/// Attaches a file: sent whole as multipart field `file`, or named as a finished resumable upload
/// with JSON `{"upload": "<id>"}` (what the phone's outbox does on a bad link).
async fn attach(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // The incident must exist and be the caller's to touch before a byte is stored, and the person
    // must have quota left today (checked again, exactly, when the record is written).
    load_view(&state, &caller, id).await?;
    let quota = state.config.incidents.upload_quota_per_day;
    let (who, now) = (caller.username.clone(), state.clock.now_ms());
    state
        .store
        .read(move |conn| super::check_quota(conn, &who, 1, quota, now))
        .await?;
    let is_json = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let (bytes, used_upload) = if is_json {
        let ApiJson(body): ApiJson<FromUpload> =
            ApiJson::from_request_compat(request, &state).await?;
        let (upload, bytes) =
            crate::uploads::routes::take_complete(&state, &caller, &body.upload).await?;
        (bytes, Some(upload.id))
    } else {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text().into()))?;
        let limit = state.config.incidents.max_attachment_bytes;
        let bytes = crate::http::extract::file_field(&mut multipart, limit, "the file").await?;
        (bytes, None)
    };
    if bytes.is_empty() {
        return Err(ApiError::invalid("file", "the file is empty"));
    }
    let content_type = crate::blobs::sniff(&bytes).ok_or_else(|| {
        ApiError::UnsupportedMediaType(crate::blobs::BlobError::UnsupportedType.to_string().into())
    })?;
    let size = bytes.len();
    // The bytes are taken from the quota before the file is written, in a write, so parallel
    // uploads cannot all pass; they are given back if the file does not become an attachment.
    let (who, now) = (caller.username.clone(), state.clock.now_ms());
    state
        .store
        .write(move |conn| super::reserve_upload(conn, &who, size as u64, quota, now))
        .await?;
    let release = |state: &AppState| {
        let (who, now) = (caller.username.clone(), now);
        state.spawn_write(move |conn| super::release_upload(conn, &who, size as u64, now));
    };
    let blobs = state.blobs.clone();
    let sha = match tokio::task::spawn_blocking(move || blobs.put(&bytes)).await {
        Ok(Ok(sha)) => sha,
        Ok(Err(e)) => {
            release(&state);
            return Err(ApiError::Internal(e.to_string()));
        }
        Err(e) => {
            release(&state);
            return Err(ApiError::Internal(e.to_string()));
        }
    };
    let file = Attachment {
        sha256: sha.clone(),
        size: size as i64,
        content_type: content_type.to_string(),
        added_by: caller.username.clone(),
        at_ms: state.clock.now_ms(),
    };
    let (ctx, who) = (state.write_ctx(), caller.clone());
    if let Err(e) = state
        .store
        .write(move |conn| super::attach(conn, &ctx, &who, id, file))
        .await
    {
        release(&state);
        return Err(e.into());
    }
    if let Some(upload) = used_upload {
        crate::uploads::routes::consumed(&state, upload).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"sha256": sha, "size": size, "content_type": content_type})),
    )
        .into_response())
}

#[derive(Deserialize)]
struct IndicatorQuery {
    #[serde(default, deserialize_with = "empty_as_none")]
    from: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    to: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    area: Option<String>,
}

async fn indicators(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<IndicatorQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = state.clock.now_ms();
    let from = q
        .from
        .map(|s| crate::clock::parse_time("from", &s))
        .transpose()?
        .unwrap_or(now.saturating_sub(30 * 24 * 3600 * 1000));
    let to =
        q.to.map(|s| crate::clock::parse_time("to", &s))
            .transpose()?
            .unwrap_or(now);
    if from > to {
        return Err(ApiError::Invalid(
            crate::invalid::Invalid::new("from", "from must not be after to")
                .code(Code::TimeOrder)
                .param("after", "to"),
        ));
    }
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
    Ok(Json(
        state
            .store
            .read(move |conn| query::indicators(conn, &within, from, to))
            .await?,
    ))
}

async fn catalog(State(state): State<AppState>) -> Json<serde_json::Value> {
    let categories: Vec<serde_json::Value> = state
        .config
        .categories
        .iter()
        .map(|c| json!({"name": c.name, "accept_within_minutes": c.accept_within.as_secs() / 60, "resolve_within_minutes": c.resolve_within.as_secs() / 60, "auto_escalate": c.auto_escalate}))
        .collect();
    Json(json!({
        "categories": categories,
        "departments": state.config.departments,
        "node_area": state.node.area,
        "max_attachment_bytes": state.config.incidents.max_attachment_bytes,
    }))
}

/// The incidents as CSV (see [`crate::http::csv`]): names beside codes and ids, so a spreadsheet
/// reads without a lookup table, and times in Beijing time with their offset.
fn incidents_csv(rows: &[query::Row], names: &crate::areas::Names) -> String {
    let mut out = String::from(csv::BOM);
    out.push_str(
        "编号 id,区划代码 area,区划 area_name,类别 category,标题 title,状态代码 state,状态 state_name,上报人账号 reporter,上报人 reporter_name,牵头部门代码 lead_department,牵头部门 lead_department_name,协办部门 assist_departments,处置人 assignee,纬度 lat,经度 lon,地点 place,上报时间 created,期限 deadline,期限状态 due_state,评价 rating,重复于 duplicate_of,描述 description\r\n",
    );
    let time = |ms: i64| crate::clock::rfc3339_china(ms);
    for r in rows {
        let assist: Vec<&str> = r
            .assist_departments
            .iter()
            .map(|d| names.department(d).unwrap_or(d))
            .collect();
        let cells = [
            r.id.clone(),
            r.area.clone(),
            names.area(&r.area).unwrap_or_default().to_string(),
            r.category.clone(),
            r.title.clone(),
            r.state.clone(),
            r.state
                .parse::<super::workflow::State>()
                .map(|s| s.name_zh())
                .unwrap_or_default()
                .to_string(),
            r.reporter.clone(),
            names.person(&r.reporter).unwrap_or_default().to_string(),
            r.lead_department.clone().unwrap_or_default(),
            r.lead_department
                .as_deref()
                .and_then(|d| names.department(d))
                .unwrap_or_default()
                .to_string(),
            assist.join(";"),
            r.assignee
                .as_deref()
                .map(|a| names.person(a).unwrap_or(a).to_string())
                .unwrap_or_default(),
            r.lat.map(|v| v.to_string()).unwrap_or_default(),
            r.lon.map(|v| v.to_string()).unwrap_or_default(),
            r.place.clone().unwrap_or_default(),
            time(r.created_ms),
            r.due_ms.map(time).unwrap_or_default(),
            r.due_state.clone(),
            r.rating.map(|v| v.to_string()).unwrap_or_default(),
            r.duplicate_of.clone().unwrap_or_default(),
            r.description.clone(),
        ];
        out.push_str(&csv::line(&cells));
    }
    out
}
