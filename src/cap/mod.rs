//! CAP 1.2 (OASIS Common Alerting Protocol) for warnings: every `issue`, `update` and `cancel` of an
//! issued warning is a signed CAP message (`GET /api/v1/warnings/{id}/cap`, the latest), and
//! `GET /api/v1/cap/alerts.atom` is the Atom feed of current messages that aggregators poll. The
//! public half of the signing key is at `GET /api/v1/cap/key.pem`.
//!
//! Levels map to CAP as the national scale reads (documented in the README):
//!
//! | level | urgency | severity |
//! |---|---|---|
//! | red (I) | Immediate | Extreme |
//! | orange (II) | Expected | Severe |
//! | yellow (III) | Expected | Moderate |
//! | blue (IV) | Future | Minor |
//!
//! Certainty is `Observed` for warnings a rule raised from readings, `Likely` otherwise.

pub mod inbound;
mod routes;
pub mod sign;
pub mod xml;

pub use routes::routes;
pub use sign::CapKey;

use crate::rules::eval::Level;
use crate::warnings::{Message, Published};

pub const NAMESPACE: &str = "urn:oasis:names:tc:emergency:cap:1.2";

/// Milliseconds since the epoch as CAP wants times: to the second, with the +08:00 offset of
/// China Standard Time (CAP forbids `Z`).
pub fn cap_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000) + 8 * 3600;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+08:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn urgency_severity(level: Level) -> (&'static str, &'static str) {
    match level {
        Level::Red => ("Immediate", "Extreme"),
        Level::Orange => ("Expected", "Severe"),
        Level::Yellow => ("Expected", "Moderate"),
        Level::Blue => ("Future", "Minor"),
    }
}

fn category_and_name(event: &str) -> (&'static str, &'static str) {
    match event {
        "flood" => ("Met", "洪水"),
        "rainstorm" => ("Met", "暴雨"),
        "landslide" => ("Geo", "滑坡"),
        "air_pollution" => ("Env", "大气污染"),
        "water_pollution" => ("Env", "水污染"),
        _ => ("Other", "其他"),
    }
}

fn cap_status(status: &str) -> &'static str {
    match status {
        "exercise" => "Exercise",
        "test" => "Test",
        _ => "Actual",
    }
}

/// Who this node is, as CAP names it.
#[derive(Debug, Clone)]
pub struct Sender {
    /// `[cap] sender`, or `{node_id}@township-node`.
    pub address: String,
    pub node_id: String,
    pub name: String,
}

fn identifier(sender: &Sender, message: &Message) -> String {
    format!("township-node.{}.{}", sender.node_id, message.transition)
}

/// The CAP document for `published.messages[index]`, in canonical form, unsigned.
pub fn alert(sender: &Sender, published: &Published, index: usize) -> Option<String> {
    let message = published.messages.get(index)?;
    let f = &message.folded;
    let level = f.level?;
    let mut w = xml::Writer::new();
    w.open("alert", &[("xmlns", NAMESPACE)]);
    w.leaf("identifier", &identifier(sender, message));
    w.leaf("sender", &sender.address);
    w.leaf("sent", &cap_time(message.at_ms));
    w.leaf("status", cap_status(&published.status));
    w.leaf("msgType", message.msg_type);
    w.leaf("scope", "Public");
    let references: Vec<String> = published.messages[..index]
        .iter()
        .map(|m| {
            format!(
                "{},{},{}",
                sender.address,
                identifier(sender, m),
                cap_time(m.at_ms)
            )
        })
        .collect();
    if !references.is_empty() {
        w.leaf("references", &references.join(" "));
    }
    let (category, event_name) = category_and_name(&published.event);
    let (urgency, severity) = urgency_severity(level);
    let certainty = if published.source.get("rule").is_some() {
        "Observed"
    } else {
        "Likely"
    };
    w.open("info", &[]);
    w.leaf("language", "zh-CN");
    w.leaf("category", category);
    w.leaf("event", event_name);
    w.leaf("urgency", urgency);
    w.leaf("severity", severity);
    w.leaf("certainty", certainty);
    if let Some(onset) = f.onset_ms {
        w.leaf("onset", &cap_time(onset));
    }
    if let Some(expires) = f.expires_ms {
        w.leaf("expires", &cap_time(expires));
    }
    w.leaf("senderName", &sender.name);
    w.leaf("headline", &f.headline);
    if !f.description.is_empty() {
        w.leaf("description", &f.description);
    }
    if !f.instruction.is_empty() {
        w.leaf("instruction", &f.instruction);
    }
    for (name, value) in [
        ("warningColour", level.as_str()),
        ("warningLevel", level.grade()),
    ] {
        w.open("parameter", &[]);
        w.leaf("valueName", name);
        w.leaf("value", value);
        w.close();
    }
    w.open("area", &[]);
    w.leaf("areaDesc", &format!("行政区划 {}", f.areas.join("、")));
    for code in &f.areas {
        w.open("geocode", &[]);
        w.leaf("valueName", "GB/T 2260");
        w.leaf("value", code);
        w.close();
    }
    w.close();
    w.close();
    Some(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_china_standard_time() {
        assert_eq!(cap_time(0), "1970-01-01T08:00:00+08:00");
        // 2026-11-30T10:48:43Z is 18:48:43 in Beijing.
        assert_eq!(cap_time(1_796_035_723_000), "2026-11-30T18:48:43+08:00");
        assert_eq!(cap_time(951_782_400_000), "2000-02-29T08:00:00+08:00");
    }
}
