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

pub(crate) mod dom;
pub mod feeds;
pub mod inbound;
mod routes;
pub mod sign;
pub mod verify;
pub mod xml;

pub use routes::routes;
pub use sign::CapKey;

use crate::clock::rfc3339_china as cap_time;
use crate::rules::eval::Level;
use crate::warnings::{Message, Published};

pub const NAMESPACE: &str = "urn:oasis:names:tc:emergency:cap:1.2";

/// Signed messages and the feed as last served, keyed by when what they show last changed. They are
/// public and aggregators poll them: a request for something unchanged costs one indexed read, not
/// loading documents, folding and signing again, and a message reads the same bytes every time.
#[derive(Default)]
pub struct Served {
    inner: std::sync::Mutex<ServedInner>,
}

#[derive(Default)]
struct ServedInner {
    messages: std::collections::HashMap<uuid::Uuid, (i64, std::sync::Arc<str>)>,
    feed: Option<((i64, i64, i64), std::sync::Arc<str>)>,
}

/// More warnings than this are never served at once; past it the copies start again.
const SERVED_MAX: usize = 10_000;

impl Served {
    pub fn message(&self, id: uuid::Uuid, stamp: i64) -> Option<std::sync::Arc<str>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .messages
            .get(&id)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, m)| m.clone())
    }

    /// Keeps `doc` unless another request kept one for the same state first, and returns the kept
    /// one: requests that raced to sign all serve the same bytes.
    pub fn keep_message(
        &self,
        id: uuid::Uuid,
        stamp: i64,
        doc: std::sync::Arc<str>,
    ) -> std::sync::Arc<str> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, kept)) = inner.messages.get(&id)
            && *s == stamp
        {
            return kept.clone();
        }
        if inner.messages.len() >= SERVED_MAX {
            inner.messages.clear();
        }
        inner.messages.insert(id, (stamp, doc.clone()));
        doc
    }

    pub fn feed(&self, key: (i64, i64, i64)) -> Option<std::sync::Arc<str>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .feed
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, f)| f.clone())
    }

    pub fn keep_feed(&self, key: (i64, i64, i64), feed: std::sync::Arc<str>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).feed = Some((key, feed));
    }
}

pub fn urgency_severity(level: Level) -> (&'static str, &'static str) {
    match level {
        Level::Red => ("Immediate", "Extreme"),
        Level::Orange => ("Expected", "Severe"),
        Level::Yellow => ("Expected", "Moderate"),
        Level::Blue => ("Future", "Minor"),
    }
}

/// CAP category and the event's name in Chinese and English.
fn category_and_names(event: &str) -> (&'static str, &'static str, &'static str) {
    match event {
        "flood" => ("Met", "洪水", "Flood"),
        "rainstorm" => ("Met", "暴雨", "Rainstorm"),
        "landslide" => ("Geo", "滑坡", "Landslide"),
        "air_pollution" => ("Env", "大气污染", "Air pollution"),
        "water_pollution" => ("Env", "水污染", "Water pollution"),
        _ => ("Other", "其他", "Other"),
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
    /// `[[areas]]`: names and shapes for the `area` blocks.
    pub areas: Vec<crate::config::AreaConfig>,
}

fn identifier(sender: &Sender, message: &Message) -> String {
    format!("township-node.{}.{}", sender.node_id, message.transition)
}

/// What the Chinese and the English `info` share.
struct InfoCommon<'a> {
    category: &'static str,
    urgency: &'static str,
    severity: &'static str,
    certainty: &'static str,
    level: Level,
    folded: &'a crate::warnings::Folded,
    sender: &'a Sender,
}

impl InfoCommon<'_> {
    /// One `info` in `language`, in the order the schema requires.
    fn write(&self, w: &mut xml::Writer, language: &str, event: &str, texts: [&String; 3]) {
        let [headline, description, instruction] = texts;
        let f = self.folded;
        w.open("info", &[]);
        w.leaf("language", language);
        w.leaf("category", self.category);
        w.leaf("event", event);
        w.leaf("urgency", self.urgency);
        w.leaf("severity", self.severity);
        w.leaf("certainty", self.certainty);
        if let Some(onset) = f.onset_ms {
            w.leaf("onset", &cap_time(onset));
        }
        if let Some(expires) = f.expires_ms {
            w.leaf("expires", &cap_time(expires));
        }
        w.leaf("senderName", &self.sender.name);
        w.leaf("headline", headline);
        if !description.is_empty() {
            w.leaf("description", description);
        }
        if !instruction.is_empty() {
            w.leaf("instruction", instruction);
        }
        for (name, value) in [
            ("warningColour", self.level.as_str()),
            ("warningLevel", self.level.grade()),
        ] {
            w.open("parameter", &[]);
            w.leaf("valueName", name);
            w.leaf("value", value);
            w.close();
        }
        // One block per area code: its name, its shape when `[[areas]]` gives one, its code.
        for code in &f.areas {
            let known = self.sender.areas.iter().find(|a| &a.code == code);
            w.open("area", &[]);
            let desc = match known {
                Some(a) if language.starts_with("zh") => a.name.clone(),
                Some(a) => format!("{} ({code})", a.name),
                None if language.starts_with("zh") => format!("行政区划 {code}"),
                None => format!("Area {code}"),
            };
            w.leaf("areaDesc", &desc);
            if let Some(polygon) = known.and_then(|a| a.polygon.as_deref()) {
                w.leaf(
                    "polygon",
                    &polygon.split_whitespace().collect::<Vec<_>>().join(" "),
                );
            }
            if let Some(circle) = known.and_then(|a| a.circle.as_deref()) {
                w.leaf(
                    "circle",
                    &circle.split_whitespace().collect::<Vec<_>>().join(" "),
                );
            }
            w.open("geocode", &[]);
            w.leaf("valueName", "GB/T 2260");
            w.leaf("value", code);
            w.close();
            w.close();
        }
        w.close();
    }
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
    let (category, event_zh, event_en) = category_and_names(&published.event);
    let (urgency, severity) = urgency_severity(level);
    let certainty = if published.source.get("rule").is_some() {
        "Observed"
    } else {
        "Likely"
    };
    let common = InfoCommon {
        category,
        urgency,
        severity,
        certainty,
        level,
        folded: f,
        sender,
    };
    common.write(
        &mut w,
        "zh-CN",
        event_zh,
        [&f.headline, &f.description, &f.instruction],
    );
    if !f.headline_en.is_empty() {
        common.write(
            &mut w,
            "en-US",
            event_en,
            [&f.headline_en, &f.description_en, &f.instruction_en],
        );
    }
    w.close();
    Some(w.finish())
}
