//! The rules API: list and read (everyone whose area the rule covers or contains), create, replace and
//! delete (township staff, county IT and admins inside their area), and the backtest that runs a rule,
//! saved or not, over stored readings.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::eval::Evaluator;
use super::live::stored_usable;
use super::record::{self, RuleError, RuleView};
use super::spec::{self, RuleBody};
use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::roles::Role;
use crate::http::extract::ApiJson;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;
use crate::invalid::Invalid;
use crate::store::StoreError;

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Invalid(invalid) => ApiError::Invalid(invalid),
            RuleError::Forbidden(m) => ApiError::Forbidden(m),
            RuleError::NotFound => ApiError::NotFound,
            RuleError::Store(s) => s.into(),
        }
    }
}

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/rules", list)
        .post("/api/v1/rules", create)
        .post("/api/v1/rules/test", backtest)
        .get("/api/v1/rules/{id}", get)
        .put("/api/v1/rules/{id}", replace)
        .delete("/api/v1/rules/{id}", remove)
}

fn rule_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound)
}

/// A rule with its live state.
fn with_state(state: &AppState, rule: RuleView) -> serde_json::Value {
    let current = Uuid::parse_str(&rule.id)
        .map(|id| state.rules.current(id))
        .ok();
    let mut value = serde_json::to_value(&rule).unwrap_or_default();
    if let (Some(map), Some(current)) = (value.as_object_mut(), current) {
        map.insert("state".into(), json!(current.state.as_str()));
        map.insert("since".into(), json!(current.since_ms));
    }
    value
}

fn area_of(rule: &RuleView) -> Option<township_sync::AreaCode> {
    rule.body.get("area")?.as_str()?.parse().ok()
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (area, admins) = (
        caller.area.clone(),
        caller.is_any(&[Role::Admin, Role::CountyIt]),
    );
    let rules = state
        .store
        .read(move |conn| record::list(conn, &area, admins))
        .await?;
    let rules: Vec<_> = rules.into_iter().map(|r| with_state(&state, r)).collect();
    Ok(Json(json!({ "rules": rules })))
}

async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = rule_id(&id)?;
    let rule = state
        .store
        .read(move |conn| record::get(conn, id))
        .await?
        .ok_or(ApiError::NotFound)?;
    // Out of the caller's sight is the same as missing: ids are not an oracle.
    if !area_of(&rule).is_some_and(|a| record::may_read(&caller.area, &a)) {
        return Err(ApiError::NotFound);
    }
    Ok(Json(with_state(&state, rule)))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<Response, ApiError> {
    let (ctx, actor) = (state.write_ctx(), caller.actor.clone());
    let rule = state
        .store
        .write(move |conn| record::create(conn, &ctx, &actor, body))
        .await?;
    Ok((StatusCode::CREATED, Json(with_state(&state, rule))).into_response())
}

async fn replace(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = rule_id(&id)?;
    let (ctx, actor) = (state.write_ctx(), caller.actor.clone());
    let rule = state
        .store
        .write(move |conn| record::update(conn, &ctx, &actor, id, body))
        .await?;
    Ok(Json(with_state(&state, rule)))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = rule_id(&id)?;
    let (ctx, actor) = (state.write_ctx(), caller.actor.clone());
    state
        .store
        .write(move |conn| record::delete(conn, &ctx, &actor, id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BacktestBody {
    /// A rule body to try (need not be saved)...
    #[serde(default)]
    rule: Option<RuleBody>,
    /// ...or the id of a saved one.
    #[serde(default)]
    id: Option<String>,
    from: String,
    to: String,
}

/// Most readings one backtest reads in all, shared between the devices it covers (a rule without a
/// device covers every station in its area): a week of one-second readings is more than this, and
/// the answer says when it stopped short.
const BACKTEST_MAX_READINGS: usize = 200_000;

async fn backtest(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BacktestBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let from = crate::clock::parse_time("from", &body.from)?;
    let to = crate::clock::parse_time("to", &body.to)?;
    if to <= from {
        return Err(ApiError::invalid("to", "must be after `from`"));
    }
    let rule_body = match (body.rule, body.id) {
        (Some(rule), None) => rule,
        (None, Some(id)) => {
            let id = rule_id(&id)?;
            let saved = state
                .store
                .read(move |conn| record::get(conn, id))
                .await?
                .ok_or(ApiError::NotFound)?;
            serde_json::from_value(saved.body)
                .map_err(|e| ApiError::Internal(format!("stored rule does not parse: {e}")))?
        }
        _ => return Err(ApiError::invalid("rule", "give either `rule` or `id`")),
    };
    let rule = spec::validate(rule_body).map_err(RuleError::from)?;
    if !record::may_read(&caller.area, &rule.area) {
        return Err(ApiError::Invalid(Invalid::new(
            "area",
            format!("{} is outside your area {}", rule.area, caller.area),
        )));
    }
    let devices: Vec<String> = match &rule.body.device {
        Some(d) => vec![d.clone()],
        None => state
            .telemetry
            .devices
            .all()
            .into_iter()
            .filter(|d| rule.area.contains(&d.area) && caller.can_reach(&d.area))
            .map(|d| d.id)
            .collect(),
    };
    let metric = rule.body.metric.clone();
    let share = (BACKTEST_MAX_READINGS / devices.len().max(1)).max(1);
    let series = state
        .store
        .read(move |conn| {
            let mut out = Vec::new();
            for device in devices {
                if let Some((id, _)) = crate::telemetry::store::find_series(conn, &device, &metric)?
                {
                    let points = crate::telemetry::store::raw_range(
                        conn,
                        crate::telemetry::store::Source::Local,
                        id,
                        from,
                        to,
                        share,
                    )?;
                    out.push((device, points));
                }
            }
            Ok::<_, StoreError>(out)
        })
        .await?;
    let mut transitions = Vec::new();
    let mut readings = 0usize;
    let mut truncated = false;
    for (device, points) in series {
        readings += points.len();
        truncated |= points.len() >= share;
        let mut evaluator = Evaluator::new(rule.spec.clone(), from);
        let readings = points
            .into_iter()
            .map(|p| (p.t, p.value, stored_usable(p.quality)));
        evaluator.replay(readings, to, |change, value| {
            transitions.push(json!({"device": device, "at_ms": change.at_ms, "from": change.from.as_str(), "to": change.to.as_str(), "value": value}));
        });
    }
    transitions.sort_by_key(|t| t["at_ms"].as_i64());
    Ok(Json(json!({
        "from": from, "to": to, "readings": readings, "truncated": truncated,
        "transitions": transitions,
    })))
}
