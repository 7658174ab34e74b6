//! A rule as people write it (the JSON body of `POST /api/v1/rules`, exactly as the API documents
//! it) and its validation into what the evaluator runs. Every mistake is an [`Invalid`] naming the
//! field, so the editor can point at it; nothing invalid is ever stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use township_sync::AreaCode;

use super::eval::{Level, Measure, Op, Spec};
use crate::invalid::Invalid;

/// What the rule is about, as CAP and the broadcast texts name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Flood,
    Rainstorm,
    Landslide,
    AirPollution,
    WaterPollution,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Threshold,
    RollingSum,
    Rate,
    Stale,
}

/// The value per level; absent levels are not used by the rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yellow: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orange: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub red: Option<f64>,
}

impl Levels {
    pub fn as_array(&self) -> [Option<f64>; 4] {
        [self.blue, self.yellow, self.orange, self.red]
    }
}

/// The rule body, as sent and as stored (durations as written, "90s", "5m", "1h").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    pub name: String,
    pub area: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub metric: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Levels>,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hysteresis: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default = "default_event")]
    pub event: Event,
    #[serde(default)]
    pub auto_issue: Vec<Level>,
    /// Levels at which an issued warning of this rule goes on the loudspeakers with nobody at a
    /// desk (issue 13), on `broadcast_zones` with `broadcast_message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auto_broadcast: Vec<Level>,
    /// Zone ids, or area codes standing for every zone inside them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub broadcast_zones: Vec<String>,
    /// The spoken text; `{level}` becomes the level's name (红色…) and `{rule}` the rule's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_message: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The spoken text when a rule gives none.
pub const DEFAULT_BROADCAST_MESSAGE: &str = "紧急通知：{rule}，现已发布{level}预警。请立即按照村里的安排转移到安全地点，不要靠近河道和山边。";

impl RuleBody {
    /// The spoken text of this rule's automatic broadcast at `level`.
    pub fn broadcast_text(&self, level: Level) -> String {
        self.broadcast_message
            .as_deref()
            .unwrap_or(DEFAULT_BROADCAST_MESSAGE)
            .replace("{level}", crate::warnings::automation::level_zh(level))
            .replace("{rule}", self.name.trim())
    }
}

fn default_event() -> Event {
    Event::Other
}

fn yes() -> bool {
    true
}

/// A checked rule: the body as stored, with what the evaluator needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub body: RuleBody,
    pub area: AreaCode,
    pub spec: Spec,
}

/// Longest duration any rule field may name: a week of readings is what the store keeps raw.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest window: under a minute a sum or a rate is a single reading.
const MIN_WINDOW: Duration = Duration::from_secs(60);

fn duration(field: &str, text: &str, min: Duration) -> Result<i64, Invalid> {
    let d = humantime::parse_duration(text.trim()).map_err(|_| {
        Invalid::new(
            field,
            format!("`{text}` is not a duration (write it as 90s, 5m or 1h)"),
        )
    })?;
    if d < min || d > MAX_DURATION {
        return Err(Invalid::new(
            field,
            format!(
                "must lie between {} and 7 days",
                humantime::format_duration(min)
            ),
        ));
    }
    Ok(d.as_millis() as i64)
}

fn optional_duration(field: &str, text: Option<&str>) -> Result<Option<i64>, Invalid> {
    text.map(|t| duration(field, t, Duration::ZERO)).transpose()
}

fn name_like(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    let n = value.trim().chars().count();
    if n == 0 || n > max {
        return Err(Invalid::new(field, format!("1 to {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(field, "no control characters"));
    }
    Ok(())
}

/// Checks a body and makes it a rule; the first mistake found is named.
pub fn validate(body: RuleBody) -> Result<Rule, Invalid> {
    name_like("name", &body.name, 100)?;
    let area: AreaCode = body
        .area
        .parse()
        .map_err(|e: township_sync::AreaError| Invalid::new("area", e))?;
    if let Some(device) = &body.device {
        name_like("device", device, 64)?;
    }
    name_like("metric", &body.metric, 64)?;
    let for_ms = optional_duration("for", body.for_.as_deref())?.unwrap_or(0);
    let clear_after_ms =
        optional_duration("clear_after", body.clear_after.as_deref())?.unwrap_or(for_ms);
    let hysteresis = body.hysteresis.unwrap_or(0.0);
    if !hysteresis.is_finite() || hysteresis < 0.0 {
        return Err(Invalid::new("hysteresis", "a number of zero or more"));
    }
    let window = |body: &RuleBody| -> Result<i64, Invalid> {
        let text = body
            .window
            .as_deref()
            .ok_or_else(|| Invalid::new("window", "this kind needs a window, such as 1h"))?;
        duration("window", text, MIN_WINDOW)
    };
    let measure = match body.kind {
        Kind::Threshold => Measure::Threshold,
        Kind::RollingSum => Measure::RollingSum {
            window_ms: window(&body)?,
        },
        Kind::Rate => Measure::Rate {
            window_ms: window(&body)?,
        },
        Kind::Stale => {
            let text = body
                .after
                .as_deref()
                .ok_or_else(|| Invalid::new("after", "a stale rule needs `after`, such as 30m"))?;
            Measure::Stale {
                after_ms: duration("after", text, MIN_WINDOW)?,
            }
        }
    };
    let stale = body.kind == Kind::Stale;
    for (field, present) in [
        ("levels", body.levels.is_some()),
        ("op", body.op.is_some()),
        ("auto_issue", !body.auto_issue.is_empty()),
        ("auto_broadcast", !body.auto_broadcast.is_empty()),
    ] {
        if stale && present {
            return Err(Invalid::new(
                field,
                "a stale rule alarms about the sensor and has no levels",
            ));
        }
    }
    if !stale && body.after.is_some() {
        return Err(Invalid::new("after", "only stale rules have `after`"));
    }
    if !matches!(body.kind, Kind::RollingSum | Kind::Rate) && body.window.is_some() {
        return Err(Invalid::new(
            "window",
            "only rolling_sum and rate rules have a window",
        ));
    }
    let op = body.op.unwrap_or(Op::AtLeast);
    let levels = body.levels.unwrap_or_default().as_array();
    if !stale {
        let present: Vec<(Level, f64)> = Level::ALL
            .into_iter()
            .zip(levels)
            .filter_map(|(l, v)| v.map(|v| (l, v)))
            .collect();
        if present.is_empty() {
            return Err(Invalid::new(
                "levels",
                "give a value for at least one level",
            ));
        }
        if let Some((l, _)) = present.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Invalid::new(
                "levels",
                format!("the {l} value is not a number"),
            ));
        }
        for pair in present.windows(2) {
            let ((lower, a), (higher, b)) = (pair[0], pair[1]);
            let ordered = match op {
                Op::AtLeast => b > a,
                Op::AtMost => b < a,
            };
            if !ordered {
                return Err(Invalid::new(
                    "levels",
                    format!(
                        "{higher} must be {} than {lower}: a higher level is a worse value",
                        if op == Op::AtLeast { "greater" } else { "less" }
                    ),
                ));
            }
        }
        if let Some(l) = body
            .auto_issue
            .iter()
            .find(|l| levels[**l as usize].is_none())
        {
            return Err(Invalid::new(
                "auto_issue",
                format!("{l} is not one of this rule's levels"),
            ));
        }
    }
    if let Some(l) = body
        .auto_broadcast
        .iter()
        .find(|l| levels[**l as usize].is_none())
    {
        return Err(Invalid::new(
            "auto_broadcast",
            format!("{l} is not one of this rule's levels"),
        ));
    }
    if !body.auto_broadcast.is_empty() && body.broadcast_zones.is_empty() {
        return Err(Invalid::new(
            "broadcast_zones",
            "say which zones an automatic broadcast plays on",
        ));
    }
    if body.broadcast_zones.len() > 50 {
        return Err(Invalid::new("broadcast_zones", "at most 50 zones"));
    }
    for z in &body.broadcast_zones {
        let zone_id = !z.is_empty()
            && z.len() <= 64
            && z.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !zone_id && z.parse::<AreaCode>().is_err() {
            return Err(Invalid::new(
                "broadcast_zones",
                format!("`{z}` is neither a zone id nor an area code"),
            ));
        }
        if let Ok(a) = z.parse::<AreaCode>()
            && !area.contains(&a)
        {
            return Err(Invalid::new(
                "broadcast_zones",
                format!("{a} lies outside the rule's area {area}"),
            ));
        }
    }
    if let Some(m) = &body.broadcast_message {
        name_like("broadcast_message", m, 500)?;
    }
    let spec = Spec {
        measure,
        op,
        levels,
        for_ms,
        hysteresis,
        clear_after_ms,
    };
    Ok(Rule { body, area, spec })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Rule, Invalid> {
        validate(serde_json::from_value(json).map_err(|e| Invalid::new("body", e.to_string()))?)
    }

    fn example() -> serde_json::Value {
        serde_json::json!({"name": "熟溪水位", "area": "330723001", "device": "wl-01", "metric": "water_level",
            "kind": "threshold", "op": ">=", "levels": {"blue": 3.0, "yellow": 3.5, "orange": 4.0, "red": 4.5},
            "for": "5m", "hysteresis": 0.1, "clear_after": "10m",
            "event": "flood", "auto_issue": ["red", "orange"], "enabled": true})
    }

    #[test]
    fn the_documented_example_is_a_rule() {
        let rule = parse(example()).unwrap();
        assert_eq!(rule.spec.for_ms, 300_000);
        assert_eq!(rule.spec.clear_after_ms, 600_000);
        assert_eq!(
            rule.spec.levels,
            [Some(3.0), Some(3.5), Some(4.0), Some(4.5)]
        );
        assert_eq!(rule.body.auto_issue, vec![Level::Red, Level::Orange]);
        // It serialises back to the same body.
        assert_eq!(serde_json::to_value(&rule.body).unwrap(), example());
    }

    #[test]
    fn other_kinds_and_defaults() {
        let rain = parse(
            serde_json::json!({"name": "雨量", "area": "330723001", "metric": "rain",
            "kind": "rolling_sum", "window": "1h", "levels": {"yellow": 30, "red": 50}}),
        )
        .unwrap();
        assert_eq!(
            rain.spec.measure,
            Measure::RollingSum {
                window_ms: 3_600_000
            }
        );
        assert_eq!((rain.spec.for_ms, rain.spec.clear_after_ms), (0, 0));
        assert!(rain.body.enabled);
        assert_eq!(rain.body.event, Event::Other);
        let stale = parse(
            serde_json::json!({"name": "断线", "area": "330723001", "device": "wl-01",
            "metric": "water_level", "kind": "stale", "after": "30m"}),
        )
        .unwrap();
        assert_eq!(
            stale.spec.measure,
            Measure::Stale {
                after_ms: 1_800_000
            }
        );
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases = [
            ("name", serde_json::json!({"name": ""})),
            ("area", serde_json::json!({"area": "33"})),
            ("for", serde_json::json!({"for": "soon"})),
            ("for", serde_json::json!({"for": "30d"})),
            ("hysteresis", serde_json::json!({"hysteresis": -1})),
            ("levels", serde_json::json!({"levels": {}})),
            (
                "levels",
                serde_json::json!({"levels": {"blue": 4.0, "red": 3.0}}),
            ),
            (
                "auto_issue",
                serde_json::json!({"levels": {"red": 4.5}, "auto_issue": ["orange"]}),
            ),
            ("window", serde_json::json!({"window": "1h"})),
            ("window", serde_json::json!({"kind": "rate"})),
            (
                "window",
                serde_json::json!({"kind": "rate", "window": "10s"}),
            ),
            (
                "after",
                serde_json::json!({"kind": "stale", "levels": null, "op": null, "auto_issue": []}),
            ),
            (
                "levels",
                serde_json::json!({"kind": "stale", "after": "30m", "op": null, "auto_issue": []}),
            ),
        ];
        for (field, change) in cases {
            let mut body = example();
            for (k, v) in change.as_object().unwrap() {
                if v.is_null() {
                    body.as_object_mut().unwrap().remove(k);
                } else {
                    body[k] = v.clone();
                }
            }
            let err = parse(body.clone()).expect_err(&format!("{body}"));
            assert_eq!(err.field, field, "{body}: {err:?}");
        }
        // Unknown keys and unknown kinds are refused by the parser.
        let mut body = example();
        body["colour"] = "red".into();
        assert!(serde_json::from_value::<RuleBody>(body).is_err());
        let mut body = example();
        body["kind"] = "vibes".into();
        assert!(serde_json::from_value::<RuleBody>(body).is_err());
    }
}
