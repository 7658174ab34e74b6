//! The broadcasts and PA API: the list and one broadcast with its receipts and the caller's
//! actions, new broadcasts, transitions (approve, cancel, correct), an audio message instead of
//! text, the zones with their outputs' health, and the audio speakers fetch.

use crate::codes::{Code, Reason};
use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Multipart, Path, Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use township_sync::AreaCode;
use uuid::Uuid;

use super::receipts;
use super::{Action, BroadcastError, Content, NewBroadcast, Priority};
use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::actor::Actor;
use crate::http::extract::{ApiJson, empty_as_none};
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::invalid::Invalid;

impl From<BroadcastError> for ApiError {
    fn from(e: BroadcastError) -> Self {
        match e {
            BroadcastError::Invalid(invalid) => ApiError::Invalid(invalid),
            BroadcastError::Forbidden(m) => ApiError::Forbidden(m),
            BroadcastError::NotFound => ApiError::NotFound,
            BroadcastError::Conflict(m) => ApiError::Conflict(m),
            BroadcastError::Store(s) => s.into(),
        }
    }
}

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/broadcasts", list)
        .post("/api/v1/broadcasts", create)
        .get("/api/v1/broadcasts/{id}", get)
        .post("/api/v1/broadcasts/{id}/transitions", transition)
        .post_with_limit(
            "/api/v1/broadcasts/{id}/audio",
            audio,
            MAX_AUDIO_BYTES + 64 * 1024,
        )
        .get("/api/v1/pa/zones", zones)
        .get("/api/v1/pa/audio/{sha256}", fetch_audio)
}

/// Largest audio message accepted (a 15-minute Opus recording is about 3 MB; WAV is larger).
const MAX_AUDIO_BYTES: usize = 24 * 1024 * 1024;

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default, deserialize_with = "empty_as_none")]
    state: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    limit: Option<String>,
}

const STATES: [&str; 6] = [
    "requested",
    "approved",
    "playing",
    "finished",
    "cancelled",
    "refused",
];

async fn list(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let states: Vec<String> = q
        .state
        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default();
    if let Some(bad) = states.iter().find(|s| !STATES.contains(&s.as_str())) {
        return Err(ApiError::invalid("state", format!("unknown state `{bad}`")));
    }
    let limit = match q.limit {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::invalid("limit", "a number from 1 to 1000"))?
            .clamp(1, 1000),
        None => 200,
    };
    let viewer = caller.area.clone();
    let rows = state
        .store
        .read(move |conn| super::list(conn, &viewer, &states, limit))
        .await?;
    Ok(Json(json!({ "broadcasts": rows })))
}

/// A broadcast as the API shows it.
fn view(
    conn: &rusqlite::Connection,
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<serde_json::Value, BroadcastError> {
    let (loaded, _) = super::load(conn, &state.docs, id)?;
    let scope = &loaded.meta.scope;
    if !super::may_see(&actor.area, scope) {
        return Err(BroadcastError::NotFound);
    }
    let f = &loaded.outcome.state;
    let receipts = receipts::for_broadcast(conn, id)?;
    // Per zone and output: the latest report, and the whole trail.
    let mut latest: BTreeMap<(String, String), &receipts::Receipt> = BTreeMap::new();
    for r in &receipts {
        latest.insert((r.zone.clone(), r.output.clone()), r);
    }
    let by_output: Vec<serde_json::Value> = latest
        .values()
        .map(|r| json!({"zone": r.zone, "output": r.output, "state": r.state, "detail": r.detail, "at_ms": r.at_ms, "node_area": r.node_area}))
        .collect();
    let content = loaded.content.as_ref().ok();
    Ok(json!({
        "id": id.to_string(),
        "area": scope,
        "state": f.state.as_str(),
        "void": loaded.content.as_ref().err(),
        "mode": content.map(|c| c.mode),
        "level": content.map(|c| c.level),
        "zones": content.map(|c| c.zones.clone()).unwrap_or_default(),
        "text": content.map(|c| c.text.clone()).unwrap_or_default(),
        "spoken_text": content.map(super::spoken_text),
        "repeat": content.map(|c| c.repeat),
        "start_at": content.map(|c| crate::clock::rfc3339_china(c.start_ms)),
        "expires_at": content.map(|c| crate::clock::rfc3339_china(c.expires_ms)),
        "warning": content.and_then(|c| c.warning.clone()),
        "corrects": content.and_then(|c| c.corrects.clone()),
        "rule": content.and_then(|c| c.rule.clone()),
        "schedule": content.map(|c| c.schedule.clone()).unwrap_or_default(),
        "needs_second": content.map(|c| c.needs_second),
        "requester": f.requester,
        "approver": f.approver,
        "audio": f.audio,
        "correction": f.correction,
        "started_ms": f.started_ms,
        "ended_ms": f.ended_ms,
        "receipts": by_output,
        "receipt_log": receipts,
        "transitions": loaded.outcome.applied.iter().map(super::transition_json).collect::<Vec<_>>(),
        "conflicts": loaded.outcome.conflicts.iter().map(|c| json!({"transition": super::transition_json(&c.transition), "reason": c.reason})).collect::<Vec<_>>(),
        "allowed_actions": super::allowed_actions(actor, scope, f),
        "updated_ms": loaded.meta.updated_ms,
    }))
}

async fn load_view(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<serde_json::Value, ApiError> {
    let (st, actor) = (state.clone(), actor.clone());
    Ok(state
        .store
        .read(move |conn| view(conn, &st, &actor, id))
        .await?)
}

async fn get(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    Ok(Json(load_view(&state, &caller.actor, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    text: Option<String>,
    zones: Vec<String>,
    mode: String,
    level: String,
    #[serde(default)]
    repeat: Option<u32>,
    #[serde(default, deserialize_with = "empty_as_none")]
    warning: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    start_at: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    expires_at: Option<String>,
    /// Routine programmes only: times of day (Beijing, "HH:MM") it plays every day until it expires.
    #[serde(default)]
    schedule: Vec<String>,
}

/// The area each requested zone stands for: a zone of this node, or an area code.
fn zone_areas(state: &AppState, zones: &[String]) -> Result<Vec<AreaCode>, Invalid> {
    if zones.is_empty() || zones.len() > 50 {
        return Err(Invalid::new("zones", "1 to 50 zones"));
    }
    let mut areas = Vec::new();
    for z in zones {
        if let Some(zone) = state.pa_outputs.zone(z) {
            let area = zone
                .area
                .parse::<AreaCode>()
                .map_err(|e| Invalid::new("zones", format!("zone {z}: {e}")))?;
            areas.push(area);
        } else if let Ok(area) = z.parse::<AreaCode>() {
            areas.push(area);
        } else {
            return Err(Invalid::new(
                "zones",
                format!("`{z}` is neither a zone of this node nor an area code"),
            ));
        }
    }
    Ok(areas)
}

async fn create(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let now = state.clock.now_ms();
    let text = body.text.unwrap_or_default().trim().to_string();
    if text.chars().count() > super::MAX_TEXT {
        return Err(Invalid::new("text", "at most 2000 characters").into());
    }
    let mode = super::Mode::parse(&body.mode)
        .ok_or_else(|| Invalid::new("mode", "live, test or exercise"))?;
    let level = Priority::parse(&body.level)
        .ok_or_else(|| Invalid::new("level", "red, orange, yellow, blue or routine"))?;
    let repeat = body.repeat.unwrap_or(1);
    if !(1..=10).contains(&repeat) {
        return Err(Invalid::new("repeat", "1 to 10").into());
    }
    // Sizes first: de-duplicating an enormous list would cost quadratic time.
    if body.zones.len() > 50 {
        return Err(Invalid::new("zones", "1 to 50 zones").into());
    }
    if body.schedule.len() > 12 {
        return Err(Invalid::new("schedule", "at most 12 times a day").into());
    }
    let mut zones: Vec<String> = Vec::new();
    for z in body.zones {
        let z = z.trim().to_string();
        if !zones.contains(&z) {
            zones.push(z);
        }
    }
    let areas = zone_areas(&state, &zones)?;
    let scope = super::common_area(&areas).ok_or_else(|| Invalid::new("zones", "no zones"))?;
    if let Some(outside) = areas.iter().find(|a| !caller.area.contains(a)) {
        return Err(ApiError::Forbidden(
            Reason::new(
                Code::AreaOutsideYours,
                format!("zone area {outside} lies outside your area {}", caller.area),
            )
            .param("area", outside.to_string())
            .param("yours", caller.area.to_string()),
        ));
    }
    let start_ms = match body.start_at {
        Some(s) => {
            let t = crate::clock::parse_time("start_at", &s)?;
            if t < now - 5 * 60_000 || t > now + 30 * 86_400_000 {
                return Err(Invalid::new(
                    "start_at",
                    "from now to 30 days ahead (omit it to broadcast now)",
                )
                .into());
            }
            t.max(now)
        }
        None => now,
    };
    let mut schedule: Vec<String> = Vec::new();
    for t in &body.schedule {
        let t = t.trim();
        if super::parse_time_of_day(t).is_none() {
            return Err(Invalid::new(
                "schedule",
                format!("`{t}` is not a time of day such as 07:30"),
            )
            .into());
        }
        if !schedule.iter().any(|s| s == t) {
            schedule.push(t.to_string());
        }
    }
    schedule.sort();
    if !schedule.is_empty() && level != Priority::Routine {
        return Err(Invalid::new("schedule", "only routine programmes play on a schedule").into());
    }
    if schedule.len() > 12 {
        return Err(Invalid::new("schedule", "at most 12 times a day").into());
    }
    let expires_ms = match body.expires_at {
        Some(s) => {
            let t = crate::clock::parse_time("expires_at", &s)?;
            if t <= start_ms {
                return Err(Invalid::new("expires_at", "must be after the start").into());
            }
            if t - start_ms > 366 * 86_400_000 {
                return Err(Invalid::new("expires_at", "at most a year after the start").into());
            }
            t
        }
        // A programme runs a week unless it says otherwise; a one-off order stays playable an hour.
        None if !schedule.is_empty() => start_ms + 7 * 86_400_000,
        None => start_ms + super::DEFAULT_VALIDITY_MS,
    };
    if let Some(w) = &body.warning {
        let id = Uuid::parse_str(w).map_err(|_| Invalid::new("warning", "a warning id"))?;
        let (docs, actor) = (state.docs.clone(), caller.actor.clone());
        let found = state
            .store
            .read(
                move |conn| match crate::warnings::view(conn, &docs, &actor, id) {
                    Ok(_) => Ok(true),
                    Err(crate::warnings::WarningError::Store(e)) => Err(e),
                    Err(_) => Ok(false),
                },
            )
            .await?;
        if !found {
            return Err(Invalid::new("warning", "no such warning in your area").into());
        }
    }
    let needs_second = mode.is_live()
        && matches!(level, Priority::Warning(l) if state.config.pa.two_person.contains(&l));
    let content = Content {
        text,
        zones,
        mode,
        level,
        repeat,
        start_ms,
        expires_ms,
        warning: body.warning,
        corrects: None,
        needs_second,
        rule: None,
        schedule,
    };
    let (ctx, actor) = (state.write_ctx(), caller.actor.clone());
    let id = state
        .store
        .write(move |conn| {
            super::create(
                conn,
                &ctx,
                &actor,
                NewBroadcast {
                    scope,
                    content,
                    origin: Default::default(),
                },
            )
        })
        .await?;
    let view = load_view(&state, &caller.actor, id).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    action: String,
    #[serde(default)]
    note: Option<String>,
}

async fn transition(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TransitionBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let action = match body.action.as_str() {
        "approve" => Action::Approve,
        "cancel" => Action::Cancel,
        "correct" => Action::Correct,
        _ => return Err(Invalid::new("action", "approve, cancel or correct").into()),
    };
    let note = body.note.unwrap_or_default().trim().to_string();
    if note.chars().count() > 500 {
        return Err(Invalid::new("note", "at most 500 characters").into());
    }
    let (ctx, actor) = (state.write_ctx(), caller.actor.clone());
    let now = state.clock.now_ms();
    let correction = state
        .store
        .write(move |conn| {
            let mut data = BTreeMap::new();
            if !note.is_empty() {
                data.insert("note".to_string(), note.clone());
            }
            if action != Action::Correct {
                super::act(conn, &ctx, &actor, id, action, data)?;
                return Ok(None);
            }
            // A correction: cancel the original and play a correction naming it, on the same
            // zones at the same level, without a second approval (the playing node checks that
            // the original's signed `correct` names this correction).
            let (loaded, _) = super::load(conn, &ctx.docs, id)?;
            let original = loaded.content.map_err(|e| {
                BroadcastError::Conflict(Reason::new(
                    Code::BroadcastVoid,
                    format!("this broadcast is void: {e}"),
                ))
            })?;
            // The note is recorded with the transition, never spoken: a correction plays without a
            // second person, so it may only say what the node writes for it.
            let correction_content = Content {
                text: super::correction_text(&original),
                zones: original.zones.clone(),
                mode: original.mode,
                level: original.level,
                repeat: 2,
                start_ms: now,
                expires_ms: now + super::DEFAULT_VALIDITY_MS,
                warning: original.warning.clone(),
                corrects: Some(id.to_string()),
                needs_second: false,
                rule: None,
                schedule: Vec::new(),
            };
            let correction_id = super::create(
                conn,
                &ctx,
                &actor,
                NewBroadcast {
                    scope: loaded.meta.scope.clone(),
                    content: correction_content,
                    origin: Default::default(),
                },
            )?;
            data.insert("correction".to_string(), correction_id.to_string());
            super::act(conn, &ctx, &actor, id, Action::Correct, data)?;
            Ok::<_, BroadcastError>(Some(correction_id))
        })
        .await?;
    let mut v = load_view(&state, &caller.actor, id).await?;
    if let (Some(c), Some(m)) = (correction, v.as_object_mut()) {
        m.insert("correction".into(), json!(c.to_string()));
    }
    Ok(Json(v))
}

async fn audio(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    mut multipart: Multipart,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    // The broadcast must be the caller's to change before a byte is stored.
    load_view(&state, &caller.actor, id).await?;
    let bytes =
        crate::http::extract::file_field(&mut multipart, MAX_AUDIO_BYTES, "the audio").await?;
    let probe_bytes = bytes.clone();
    let probed = tokio::task::spawn_blocking(move || crate::pa::audio::probe(&probe_bytes))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (mime, duration) = match probed {
        Ok(p) => p,
        Err(crate::pa::audio::AudioError::UnsupportedType) => {
            return Err(ApiError::UnsupportedMediaType(
                "send WAV, MP3, Ogg/Opus or WebM audio".into(),
            ));
        }
        Err(crate::pa::audio::AudioError::Unreadable(e)) => {
            return Err(ApiError::UnsupportedMediaType(
                format!("the audio could not be read: {e}").into(),
            ));
        }
        Err(e) => return Err(Invalid::new("file", e.to_string()).into()),
    };
    let size = bytes.len();
    let blobs = state.blobs.clone();
    let sha = tokio::task::spawn_blocking(move || blobs.put(&bytes))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Registered like a fetched attachment, so the sync link knows this node has it.
    let (registered, now) = (sha.clone(), state.clock.now_ms());
    state
        .store
        .write(move |conn| crate::blobs::register(conn, &registered, size, mime, now))
        .await?;
    let (ctx, actor) = (state.write_ctx(), caller.actor.clone());
    let mut data = BTreeMap::new();
    data.insert("sha256".to_string(), sha.clone());
    data.insert("mime".to_string(), mime.to_string());
    data.insert("duration_ms".to_string(), duration.as_millis().to_string());
    state
        .store
        .write(move |conn| super::act(conn, &ctx, &actor, id, Action::Audio, data))
        .await?;
    let view = load_view(&state, &caller.actor, id).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The zones of this node the caller may see, with their outputs and each output's health.
async fn zones(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = state.clock.now_ms();
    let outputs = &state.pa_outputs;
    let zones: Vec<serde_json::Value> = outputs
        .zones
        .iter()
        .filter(|z| {
            z.area
                .parse::<AreaCode>()
                .is_ok_and(|a| super::may_see(&caller.area, &a))
        })
        .map(|z| {
            let outs: Vec<serde_json::Value> = z
                .outputs
                .iter()
                .filter_map(|o| {
                    let (config, _) = outputs.output(o)?;
                    Some(json!({
                        "id": o,
                        "kind": config.kind(),
                        "test": config.is_test(),
                        "health": outputs.health(o, now),
                    }))
                })
                .collect();
            json!({"id": z.id, "name": z.name, "area": z.area, "outputs": outs})
        })
        .collect();
    Ok(Json(json!({ "zones": zones })))
}

/// Audio for speakers (HTTP Basic with the speaker's MQTT credentials) and for staff (their
/// session): an uploaded message or a spoken one, by content hash.
async fn fetch_audio(
    AxumState(state): AxumState<AppState>,
    headers: HeaderMap,
    Path(sha): Path<String>,
) -> Result<Response, ApiError> {
    // The route is public in the access table so a speaker can sign in with HTTP Basic; a
    // person is identified here, the same way the access middleware does it.
    let caller = match speaker_from_basic(&state, &headers) {
        Some(_) => None,
        None => crate::http::caller::authenticate(&state, &headers).await?,
    };
    let allowed = match &caller {
        Some(c) => c.actor.role.person().is_some_and(|r| {
            matches!(
                r,
                crate::auth::roles::Role::TownshipStaff | crate::auth::roles::Role::Admin
            )
        }),
        None => speaker_from_basic(&state, &headers).is_some(),
    };
    if !allowed {
        return Err(ApiError::Unauthorized);
    }
    if !crate::blobs::is_sha256_hex(&sha) {
        return Err(ApiError::NotFound);
    }
    let spoken = state
        .broadcast_spoken
        .lock()
        .ok()
        .and_then(|m| m.get(&sha).cloned());
    let path = match spoken {
        Some(path) => path,
        None => {
            // A recorded message: only one a broadcast here refers to, and for a person only one
            // of a broadcast they may see.
            let viewer = caller.as_ref().map(|c| c.actor.area.clone());
            let wanted = sha.clone();
            let visible = state
                .store
                .read(move |conn| {
                    let areas = super::audio_areas(conn, &wanted)?;
                    Ok::<_, crate::store::StoreError>(match viewer {
                        Some(v) => areas.iter().any(|a| super::may_see(&v, a)),
                        None => !areas.is_empty(),
                    })
                })
                .await?;
            if !visible {
                return Err(ApiError::NotFound);
            }
            state.blobs.path(&sha)
        }
    };
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(_) => return Err(ApiError::NotFound),
    };
    let mime = crate::pa::audio::sniff(&bytes).ok_or(ApiError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "private, max-age=86400, immutable"),
        ],
        bytes,
    )
        .into_response())
}

fn speaker_from_basic(state: &AppState, headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    state.pa_outputs.speaker_sign_in(user, password)
}
