//! Warnings made by the node itself: a rule entering a level raises a warning (and issues it when the
//! rule says `auto_issue` for that level), a rule re-entering or changing level while its warning is
//! open updates that warning (never a second one), a rule falling to `none` clears it, and a warning
//! whose `expires` has passed expires. Every change goes out as a [`super::WarningEvent`] through
//! [`super::events`], like changes made anywhere else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use uuid::Uuid;

use super::{Action, Content, NewWarning, Source, State, WarningError};
use crate::auth::actor::Actor;
use crate::records::WriteCtx;
use crate::rules::eval::{Level, State as RuleState};
use crate::rules::live::{RuleEvent, Watch};
use crate::rules::spec::RuleBody;
use crate::store::{Store, StoreError};

/// The level's name as the national scale says it, for headlines.
pub fn level_zh(level: Level) -> &'static str {
    match level {
        Level::Blue => "蓝色",
        Level::Yellow => "黄色",
        Level::Orange => "橙色",
        Level::Red => "红色",
    }
}

/// The level's name in English, for the English texts of rule-raised warnings.
pub fn level_en(level: Level) -> &'static str {
    match level {
        Level::Blue => "Blue (IV)",
        Level::Yellow => "Yellow (III)",
        Level::Orange => "Orange (II)",
        Level::Red => "Red (I)",
    }
}

/// What the automation runs with.
#[derive(Clone)]
pub struct Runtime {
    pub store: Store,
    pub write_ctx: WriteCtx,
    pub watch: Arc<Watch>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// What one rule event did to the warnings (for tests and the log).
type Done = Vec<(Uuid, Action)>;

fn rule_body(conn: &rusqlite::Connection, id: Uuid) -> Result<Option<RuleBody>, StoreError> {
    Ok(crate::rules::record::get(conn, id)?.and_then(|v| serde_json::from_value(v.body).ok()))
}

/// Applies one rule state change to the warnings, in one transaction.
pub fn apply(
    conn: &rusqlite::Connection,
    ctx: &WriteCtx,
    event: &RuleEvent,
) -> Result<Done, WarningError> {
    let system = Actor::system(ctx.area.clone());
    let Some(body) = rule_body(conn, event.rule)? else {
        return Ok(Vec::new());
    };
    let Ok(area) = body.area.parse::<township_sync::AreaCode>() else {
        return Ok(Vec::new());
    };
    // A village hub acts for its own village only; a rule above its area is the upstream's to act on.
    if !ctx.area.contains(&area) {
        return Ok(Vec::new());
    }
    let open = super::open_for_rule(conn, &event.rule.to_string())?;
    let status = "actual".to_string();
    let mut done = Vec::new();
    match event.to {
        RuleState::Level(level) => {
            let content = Content {
                level: Some(level),
                headline: Some(format!("{}{}预警", body.name, level_zh(level))),
                description: Some(format!(
                    "{} {} {}（规则「{}」）",
                    event.device,
                    body.metric,
                    event.value.map_or_else(String::new, |v| format!("{v:.2}")),
                    body.name
                )),
                headline_en: Some(format!("{} warning: {}", level_en(level), body.name)),
                description_en: Some(format!(
                    "{} {} reached {} (rule \u{201c}{}\u{201d})",
                    event.device,
                    body.metric,
                    event.value.map_or_else(String::new, |v| format!("{v:.2}")),
                    body.name
                )),
                ..Content::default()
            };
            let auto = body.auto_issue.contains(&level);
            match open {
                None => {
                    let id = super::create(
                        conn,
                        ctx,
                        &system,
                        NewWarning {
                            area: area.clone(),
                            event: body.event,
                            status: status.clone(),
                            source: Source::Rule(event.rule.to_string()),
                            content,
                            first: Action::Raise,
                            readings: event
                                .value
                                .map(|v| vec![(event.at_ms, v)])
                                .unwrap_or_default(),
                        },
                    )?;
                    done.push((id, Action::Raise));
                    if auto {
                        super::act(conn, ctx, &system, id, Action::Issue, Content::default())?;
                        done.push((id, Action::Issue));
                    }
                }
                // A state restored at start that matches the open warning changes nothing, except
                // that a rule now saying `auto_issue` for the level issues a warning only raised.
                Some((id, current)) if event.restored && current == level.as_str() => {
                    if auto && super::current(conn, ctx, id)?.state == State::Raised {
                        super::act(conn, ctx, &system, id, Action::Issue, Content::default())?;
                        done.push((id, Action::Issue));
                    }
                }
                Some((id, current)) => {
                    let folded = super::act(conn, ctx, &system, id, Action::Update, content)?;
                    if current != level.as_str() {
                        done.push((id, Action::Update));
                    }
                    if auto && folded.state == State::Raised {
                        super::act(conn, ctx, &system, id, Action::Issue, Content::default())?;
                        done.push((id, Action::Issue));
                    }
                }
            }
        }
        RuleState::None => {
            if let Some((id, _)) = open {
                super::act(conn, ctx, &system, id, Action::AllClear, Content::default())?;
                done.push((id, Action::AllClear));
            }
        }
        // A silent sensor is a technical alarm shown with the rule, never a colour warning.
        RuleState::Stale => {}
    }
    Ok(done)
}

/// Whether a rule event could change a warning, checked with a read: falling to `none` (or a
/// stale alarm) with no warning open for the rule changes nothing, and a thousand rules restored
/// at `none` at start must not cost a thousand write transactions.
async fn worth_a_write(rt: &Runtime, event: &RuleEvent) -> bool {
    if matches!(event.to, RuleState::Level(_)) {
        return true;
    }
    if event.to == RuleState::Stale {
        return false;
    }
    let rule = event.rule.to_string();
    match rt
        .store
        .read(move |conn| super::open_for_rule(conn, &rule))
        .await
    {
        Ok(open) => open.is_some(),
        // When in doubt, let the write path decide.
        Err(_) => true,
    }
}

/// Runs until shutdown: rule changes become warning changes; expired warnings expire.
pub async fn run(rt: Runtime) {
    let mut events = rt.watch.subscribe();
    let mut expiry = tokio::time::interval(Duration::from_secs(30));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = rt.shutdown.cancelled() => break,
            event = events.recv() => match event {
                Ok(event) => {
                    if !worth_a_write(&rt, &event).await {
                        continue;
                    }
                    let (ctx, e) = (rt.write_ctx.clone(), event.clone());
                    match rt.store.write(move |conn| apply(conn, &ctx, &e)).await {
                        Ok(done) => tracing::debug!(rule = %event.rule, changes = done.len(), "rule change applied to its warning"),
                        Err(e) => tracing::warn!(error = %e, rule = %event.rule, "a rule change could not update its warning"),
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "warnings fell behind the rule changes"),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = expiry.tick() => {
                let ctx = rt.write_ctx.clone();
                let now = ctx.now_ms();
                let result = rt.store.write(move |conn| {
                    let system = Actor::system(ctx.area.clone());
                    let mut done = Vec::new();
                    for id in super::due_to_expire(conn, now)? {
                        match super::act(conn, &ctx, &system, id, Action::Expire, Content::default()) {
                            Ok(_) => done.push((id, Action::Expire)),
                            Err(e) => tracing::debug!(error = %e, warning = %id, "not expired here"),
                        }
                    }
                    Ok::<_, WarningError>(done)
                }).await;
                match result {
                    Ok(done) => if !done.is_empty() { tracing::info!(expired = done.len(), "warnings expired") },
                    Err(e) => tracing::warn!(error = %e, "expiring warnings failed"),
                }
            }
        }
    }
}
