//! Automatic broadcasts: a rule saying `auto_broadcast = ["red", …]` puts its issued warnings at
//! those levels on its `broadcast_zones` with nobody at a desk and the county unreachable. The
//! node's own system requests it (signed by this node, so it plays here without a second person:
//! the people who wrote the rule decided ahead), naming the rule and the warning.
//!
//! It listens to the warning events (every transition that took effect, local or merged, told at
//! least once): an `issue`, or an `update` to a new level, of a warning a rule raised makes one
//! broadcast per (warning, level) — a restart or a repeated event never plays it twice. Only zones
//! of this node count: a township without the village's zones leaves the village hub to play it.
//! The spoken texts of every rule's automatic levels are synthesised ahead (at start and every ten
//! minutes), so an alarm starts with a cache hit instead of a synthesis.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::broadcast::error::RecvError;
use township_sync::AreaCode;
use uuid::Uuid;

use super::engine::{Runtime, local_zones};
use super::{Content, Mode, NewBroadcast, Priority};
use crate::auth::actor::Actor;
use crate::rules::eval::Level;
use crate::rules::spec::RuleBody;
use crate::store::StoreError;
use crate::warnings::{State as WarningState, WarningEvent};

/// How many times an automatic broadcast plays its message.
const AUTO_REPEAT: u32 = 3;

/// The rule behind a warning, if a rule raised it and it is in force.
fn rule_of(conn: &Connection, warning: Uuid) -> Result<Option<(Uuid, RuleBody)>, StoreError> {
    let rule: Option<Option<String>> = conn
        .query_row(
            "SELECT rule_id FROM warnings WHERE doc_id = ?1",
            [warning.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(rule) = rule.flatten().and_then(|r| Uuid::parse_str(&r).ok()) else {
        return Ok(None);
    };
    let Some(view) = crate::rules::record::get(conn, rule)? else {
        return Ok(None);
    };
    if view.quarantine.is_some() {
        return Ok(None);
    }
    Ok(serde_json::from_value(view.body).ok().map(|b| (rule, b)))
}

/// Whether this warning already has its automatic broadcast at this level.
fn already(conn: &Connection, warning: Uuid, level: Level) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM broadcasts WHERE warning_id = ?1 AND rule_id IS NOT NULL AND level = ?2 LIMIT 1",
            rusqlite::params![warning.to_string(), level.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Makes the broadcast a warning event calls for, if any; returns its id.
pub fn on_warning(
    conn: &Connection,
    rt: &Runtime,
    event: &WarningEvent,
) -> Result<Option<Uuid>, super::BroadcastError> {
    if event.state != WarningState::Issued || !matches!(event.action.as_str(), "issue" | "update") {
        return Ok(None);
    }
    let Some(level) = event.level else {
        return Ok(None);
    };
    let Some((rule, body)) = rule_of(conn, event.id)? else {
        return Ok(None);
    };
    if !body.auto_broadcast.contains(&level) || already(conn, event.id, level)? {
        return Ok(None);
    }
    let scope: AreaCode = match body.area.parse() {
        Ok(a) => a,
        Err(_) => return Ok(None),
    };
    if !rt.ctx.area.contains(&scope) && !scope.contains(&rt.ctx.area) {
        return Ok(None);
    }
    let now = rt.ctx.now_ms();
    // An unknown status fails closed: nothing is broadcast for it.
    let mode = match event.status.as_str() {
        "actual" => Mode::Live,
        "exercise" => Mode::Exercise,
        "test" => Mode::Test,
        _ => return Ok(None),
    };
    let content = Content {
        text: body.broadcast_text(level),
        zones: body.broadcast_zones.clone(),
        mode,
        level: Priority::Warning(level),
        repeat: AUTO_REPEAT,
        start_ms: now,
        expires_ms: now + super::DEFAULT_VALIDITY_MS,
        warning: Some(event.id.to_string()),
        corrects: None,
        needs_second: false,
        rule: Some(rule.to_string()),
        schedule: Vec::new(),
    };
    // Only where the zones are: elsewhere the record would be noise, and a node above must not
    // order a second copy of what the village hub plays itself.
    let zone_scope = scope.clone();
    if local_zones(&rt.outputs, &content, &zone_scope, true).is_empty() {
        return Ok(None);
    }
    let system = Actor::system(rt.ctx.area.clone());
    let id = super::create(
        conn,
        &rt.ctx,
        &system,
        NewBroadcast {
            scope: if rt.ctx.area.contains(&scope) {
                scope
            } else {
                rt.ctx.area.clone()
            },
            content,
            origin: Default::default(),
        },
    )?;
    Ok(Some(id))
}

/// Synthesises every automatic text ahead, so an alarm starts from the cache.
async fn render_ahead(rt: &Runtime) {
    let area = rt.ctx.area.clone();
    let rules = match rt
        .store
        .read(move |conn| crate::rules::record::list(conn, &area, false))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "reading rules for their broadcast texts failed");
            return;
        }
    };
    for view in rules {
        let Ok(body) = serde_json::from_value::<RuleBody>(view.body) else {
            continue;
        };
        for level in &body.auto_broadcast {
            let text = super::spoken_text(&Content {
                text: body.broadcast_text(*level),
                zones: Vec::new(),
                mode: Mode::Live,
                level: Priority::Warning(*level),
                repeat: 1,
                start_ms: 0,
                expires_ms: 0,
                warning: None,
                corrects: None,
                needs_second: false,
                rule: None,
                schedule: Vec::new(),
            });
            if rt.speech.cached(&text).is_none()
                && let Err(e) = rt.speech.speak(&text).await
            {
                tracing::warn!(rule = %view.id, error = %e, "a rule's broadcast text could not be synthesised ahead");
            }
        }
    }
}

/// Runs until shutdown.
pub async fn run(rt: Runtime, notices: std::sync::Arc<crate::warnings::Notices>) {
    // Without zones here nothing could play: no broadcast is made and nothing is synthesised.
    if rt.outputs.zones.is_empty() {
        rt.shutdown.cancelled().await;
        return;
    }
    let mut events = notices.subscribe();
    let mut ahead = tokio::time::interval(Duration::from_secs(600));
    ahead.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = rt.shutdown.cancelled() => break,
            _ = ahead.tick() => render_ahead(&rt).await,
            event = events.recv() => match event {
                Ok(event) => {
                    let (rt2, e) = (rt.clone(), event.clone());
                    match rt.store.write(move |conn| on_warning(conn, &rt2, &e)).await {
                        Ok(Some(id)) => tracing::info!(warning = %event.id, broadcast = %id, "warning put on the loudspeakers automatically"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(warning = %event.id, error = %e, "an automatic broadcast could not be made"),
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "automatic broadcasts fell behind the warning events"),
                Err(RecvError::Closed) => break,
            },
        }
    }
}
