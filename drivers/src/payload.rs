//! MQTT payloads from sensors: the node's JSON form (`{"ts": …, "<metric>": number, …}` on
//! `sensors/{id}`) and SenML (RFC 8428) arrays on `sensors/{id}/senml`. Both become readings; bad
//! payloads are errors to count, never panics.

use serde_json::Value;

use crate::reading::{Quality, Reading};

/// Device times further ahead of the receive time than this are not believed.
pub const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60 * 1000;
/// SenML times below 2^28 seconds are relative to now (RFC 8428 §4.5.3).
const SENML_RELATIVE_LIMIT: f64 = 268_435_456.0;
/// Payloads larger than this are refused before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload over {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Shape(String),
}

/// Keeps a device time unless it is implausibly far in the future, in which case the receive time
/// is used and the reading is marked.
pub fn clock_checked(mut reading: Reading, receive_ms: i64) -> Reading {
    if reading.time_ms > receive_ms + MAX_CLOCK_AHEAD_MS {
        reading.time_ms = receive_ms;
        reading.quality = Quality::ClockCorrected;
    }
    reading
}

fn parse_time(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok()),
        _ => None,
    }
}

pub fn metric_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `{"ts": RFC 3339 or epoch ms, "<metric>": number, ...}`; without `ts` the receive time is used.
pub fn parse_json(
    device: &str,
    bytes: &[u8],
    receive_ms: i64,
) -> Result<Vec<Reading>, PayloadError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge);
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(PayloadError::Shape("expected a JSON object".into()));
    };
    let time_ms = match map.get("ts") {
        Some(t) => parse_time(t).ok_or_else(|| {
            PayloadError::Shape("ts is neither RFC 3339 nor epoch milliseconds".into())
        })?,
        None => receive_ms,
    };
    let mut out = Vec::new();
    for (key, v) in &map {
        if key == "ts" {
            continue;
        }
        let Some(number) = v.as_f64() else { continue };
        if !metric_name_ok(key) || !number.is_finite() {
            continue;
        }
        out.push(clock_checked(
            Reading {
                device: device.into(),
                metric: key.clone(),
                time_ms,
                value: number,
                unit: None,
                quality: Quality::Good,
            },
            receive_ms,
        ));
    }
    if out.is_empty() {
        return Err(PayloadError::Shape("no numeric fields".into()));
    }
    Ok(out)
}

/// An RFC 8428 SenML JSON array. Names are base name + name; a name that starts with the device's
/// own prefix (`urn:dev:…:` or `{device}/`) is reduced to the metric part.
pub fn parse_senml(
    device: &str,
    bytes: &[u8],
    receive_ms: i64,
) -> Result<Vec<Reading>, PayloadError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge);
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let Value::Array(records) = value else {
        return Err(PayloadError::Shape(
            "SenML is a JSON array of records".into(),
        ));
    };
    let (mut base_name, mut base_time, mut base_unit, mut base_value) =
        (String::new(), 0.0f64, None::<String>, 0.0f64);
    let mut out = Vec::new();
    for record in records {
        let Value::Object(r) = record else {
            return Err(PayloadError::Shape("each SenML record is an object".into()));
        };
        if let Some(bn) = r.get("bn").and_then(Value::as_str) {
            base_name = bn.to_string();
        }
        if let Some(bt) = r.get("bt").and_then(Value::as_f64) {
            base_time = bt;
        }
        if let Some(bu) = r.get("bu").and_then(Value::as_str) {
            base_unit = Some(bu.to_string());
        }
        if let Some(bv) = r.get("bv").and_then(Value::as_f64) {
            base_value = bv;
        }
        // Only numeric values become readings; vs/vb/vd records are skipped.
        let Some(v) = r.get("v").and_then(Value::as_f64) else {
            continue;
        };
        let name = format!(
            "{base_name}{}",
            r.get("n").and_then(Value::as_str).unwrap_or("")
        );
        let metric = name
            .strip_prefix(&format!("{device}/"))
            .or_else(|| name.rsplit_once(':').map(|(_, m)| m))
            .unwrap_or(&name)
            .to_string();
        if !metric_name_ok(&metric) {
            continue;
        }
        let t = base_time + r.get("t").and_then(Value::as_f64).unwrap_or(0.0);
        let seconds = if t.abs() < SENML_RELATIVE_LIMIT {
            receive_ms as f64 / 1000.0 + t
        } else {
            t
        };
        let value = base_value + v;
        if !value.is_finite() || !seconds.is_finite() {
            continue;
        }
        let unit = r
            .get("u")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| base_unit.clone());
        out.push(clock_checked(
            Reading {
                device: device.into(),
                metric,
                time_ms: (seconds * 1000.0) as i64,
                value,
                unit,
                quality: Quality::Good,
            },
            receive_ms,
        ));
    }
    if out.is_empty() {
        return Err(PayloadError::Shape("no numeric SenML records".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn json_with_and_without_time() {
        let r = parse_json(
            "rain-02",
            br#"{"ts": "2026-09-21T08:00:00Z", "rain": 1.5, "battery": 3.7, "note": "x"}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert!(
            r.iter()
                .all(|x| x.time_ms == 1_789_977_600_000 && x.quality == Quality::Good)
        );
        let r = parse_json("rain-02", br#"{"rain": 0.5}"#, NOW).unwrap();
        assert_eq!(r[0].time_ms, NOW);
        let r = parse_json("rain-02", br#"{"ts": 1790000000000, "rain": 0.5}"#, NOW).unwrap();
        assert_eq!(r[0].time_ms, 1_790_000_000_000);
        let future = format!(r#"{{"ts": {}, "rain": 1}}"#, NOW + 3_600_000);
        let r = parse_json("rain-02", future.as_bytes(), NOW).unwrap();
        assert_eq!((r[0].time_ms, r[0].quality), (NOW, Quality::ClockCorrected));
        assert!(parse_json("x", b"[1,2]", NOW).is_err());
        assert!(parse_json("x", b"{\"ts\": \"yesterday\", \"a\": 1}", NOW).is_err());
        assert!(parse_json("x", b"{\"a\": \"not a number\"}", NOW).is_err());
    }

    #[test]
    fn senml_from_the_rfc_shape() {
        let payload = br#"[
            {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.790000000e9,"bu":"mm","n":"rain","v":0.5},
            {"n":"rain","t":60,"v":1.0},
            {"n":"level","u":"m","v":2.35},
            {"n":"status","vs":"ok"}
        ]"#;
        let r = parse_senml("rain-02", payload, NOW).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].metric.as_str(), r[0].time_ms, r[0].unit.as_deref()),
            ("rain", 1_790_000_000_000, Some("mm"))
        );
        assert_eq!(r[1].time_ms, 1_790_000_060_000);
        assert_eq!(
            (r[2].metric.as_str(), r[2].unit.as_deref()),
            ("level", Some("m"))
        );
        let relative = parse_senml("d", br#"[{"n":"d/temp","t":-10,"v":21}]"#, NOW).unwrap();
        assert_eq!(
            (relative[0].metric.as_str(), relative[0].time_ms),
            ("temp", NOW - 10_000)
        );
        assert!(parse_senml("d", br#"{"n":"x","v":1}"#, NOW).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), text in ".{0,200}") {
            let _ = parse_json("d", &bytes, NOW);
            let _ = parse_senml("d", &bytes, NOW);
            let _ = parse_json("d", text.as_bytes(), NOW);
            let _ = parse_senml("d", text.as_bytes(), NOW);
        }

        #[test]
        fn any_finite_value_round_trips(v in -1e9f64..1e9, metric in "[a-z][a-z0-9_]{0,20}") {
            // `ts` is the payload's time, never a metric (proptest found it).
            prop_assume!(metric != "ts");
            let payload = serde_json::json!({ metric.clone(): v }).to_string();
            let r = parse_json("d", payload.as_bytes(), NOW).unwrap();
            prop_assert_eq!(r.len(), 1);
            prop_assert_eq!(&r[0].metric, &metric);
            prop_assert_eq!(r[0].value, v);
        }
    }
}
