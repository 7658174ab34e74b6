//! CAP 1.2 in: an alert from a provincial or national feed, or posted by county IT, becomes a warning
//! here (source: the alert); an Update or Cancel applies to the warning its `references` name; a
//! duplicate changes nothing.
//!
//! Documents are read by [`super::dom`], built for hostile input (no DTDs, no entity expansion,
//! bounded), so a bad one is named in the error and never panics.

use township_sync::AreaCode;

use super::NAMESPACE;
use super::dom::{self, Node};
use crate::rules::eval::Level;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CapError(pub String);

fn err(s: impl Into<String>) -> CapError {
    CapError(s.into())
}

/// An element as an alert is read: its local name, its text, its child elements.
#[derive(Debug, Default)]
struct El {
    name: String,
    text: String,
    children: Vec<El>,
}

impl El {
    fn from_dom(e: &dom::Element) -> El {
        El {
            name: e.local().to_string(),
            text: e.text(),
            children: e
                .children
                .iter()
                .filter_map(|c| match c {
                    Node::Element(c) => Some(El::from_dom(c)),
                    _ => None,
                })
                .collect(),
        }
    }
    fn child(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a El> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
    fn text_of(&self, name: &str) -> Option<String> {
        self.child(name)
            .map(|c| c.text.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

/// Reads a document (see [`dom`] for what is refused) whose root must be a CAP 1.2 `alert`.
fn tree(xml: &str) -> Result<El, CapError> {
    let doc = dom::parse(xml)?;
    if doc.root.local() != "alert" || dom::namespace_of(&doc.root, &[]) != Some(NAMESPACE) {
        return Err(err(format!(
            "the root element must be <alert> in the {NAMESPACE} namespace"
        )));
    }
    Ok(El::from_dom(&doc.root))
}

/// One alert as this node uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundAlert {
    pub identifier: String,
    pub sender: String,
    pub sent: String,
    /// `actual`, `exercise` or `test` (System and Draft alerts are refused).
    pub status: String,
    /// `Alert`, `Update` or `Cancel`.
    pub msg_type: String,
    /// (sender, identifier) of earlier messages.
    pub references: Vec<(String, String)>,
    pub event: String,
    pub level: Level,
    pub headline: String,
    pub description: String,
    pub instruction: String,
    /// The texts of an English `info`, when the alert has one (empty otherwise).
    pub headline_en: String,
    pub description_en: String,
    pub instruction_en: String,
    /// Area codes (GB/T 2260), trailing zero groups removed.
    pub areas: Vec<AreaCode>,
    pub onset: Option<String>,
    pub expires: Option<String>,
}

/// `330723000000` names the county `330723`, `330723001000` the township `330723001`.
fn area_from_geocode(code: &str) -> Option<AreaCode> {
    let mut c = code.trim();
    if !(c.len() == 6 || c.len() == 9 || c.len() == 12) || !c.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    while c.len() > 6 && c.ends_with("000") {
        c = &c[..c.len() - 3];
    }
    c.parse().ok()
}

fn level_of(info: &El) -> Option<Level> {
    let colour = info
        .all("parameter")
        .filter(|p| {
            p.text_of("valueName")
                .is_some_and(|n| n == "warningColour" || n == "colour" || n == "预警颜色")
        })
        .find_map(|p| p.text_of("value"));
    if let Some(c) = colour {
        let c = c.to_lowercase();
        return match c.as_str() {
            "red" | "红色" => Some(Level::Red),
            "orange" | "橙色" => Some(Level::Orange),
            "yellow" | "黄色" => Some(Level::Yellow),
            "blue" | "蓝色" => Some(Level::Blue),
            _ => None,
        };
    }
    match info.text_of("severity")?.as_str() {
        "Extreme" => Some(Level::Red),
        "Severe" => Some(Level::Orange),
        "Moderate" => Some(Level::Yellow),
        "Minor" => Some(Level::Blue),
        _ => None,
    }
}

fn event_code(info: &El) -> &'static str {
    let event = info.text_of("event").unwrap_or_default();
    let category = info.text_of("category").unwrap_or_default();
    if event.contains("洪") || event.to_lowercase().contains("flood") {
        "flood"
    } else if event.contains("暴雨") || event.to_lowercase().contains("rain") {
        "rainstorm"
    } else if event.contains("滑坡")
        || event.contains("地质")
        || event.to_lowercase().contains("landslide")
    {
        "landslide"
    } else if category == "Env" && event.contains("水") {
        "water_pollution"
    } else if category == "Env" {
        "air_pollution"
    } else {
        "other"
    }
}

/// Parses and checks one alert.
pub fn parse(xml: &str) -> Result<InboundAlert, CapError> {
    let root = tree(xml)?;
    let need = |name: &str| {
        root.text_of(name)
            .ok_or_else(|| err(format!("<{name}> is missing")))
    };
    let identifier = need("identifier")?;
    let sender = need("sender")?;
    let sent = need("sent")?;
    for (name, value) in [("identifier", &identifier), ("sender", &sender)] {
        if value.len() > 256
            || value
                .chars()
                .any(|c| c.is_whitespace() || c == ',' || c == '<' || c == '&')
        {
            return Err(err(format!("<{name}> may not hold spaces, commas, < or &")));
        }
    }
    let status = match need("status")?.as_str() {
        "Actual" => "actual",
        "Exercise" => "exercise",
        "Test" => "test",
        other => {
            return Err(err(format!(
                "status `{other}` is not one this node acts on (Actual, Exercise, Test)"
            )));
        }
    }
    .to_string();
    let msg_type = need("msgType")?;
    if !["Alert", "Update", "Cancel"].contains(&msg_type.as_str()) {
        return Err(err(format!(
            "msgType `{msg_type}` is not Alert, Update or Cancel"
        )));
    }
    let references: Vec<(String, String)> = root
        .text_of("references")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|r| {
            let mut parts = r.split(',');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect();
    if msg_type != "Alert" && references.is_empty() {
        return Err(err(format!(
            "an {msg_type} must name the alert it applies to in <references>"
        )));
    }
    // The Chinese info if there is one, else the first.
    let infos: Vec<&El> = root.all("info").collect();
    let info = infos
        .iter()
        .find(|i| i.text_of("language").is_some_and(|l| l.starts_with("zh")))
        .or(infos.first())
        .copied();
    let Some(info) = info else {
        if msg_type == "Cancel" {
            return Ok(InboundAlert {
                identifier,
                sender,
                sent,
                status,
                msg_type,
                references,
                event: "other".into(),
                level: Level::Blue,
                headline: String::new(),
                description: String::new(),
                instruction: String::new(),
                headline_en: String::new(),
                description_en: String::new(),
                instruction_en: String::new(),
                areas: Vec::new(),
                onset: None,
                expires: None,
            });
        }
        return Err(err("<info> is missing"));
    };
    let level = level_of(info).ok_or_else(|| err("no level: give a warningColour parameter or a severity of Extreme, Severe, Moderate or Minor"))?;
    let areas: Vec<AreaCode> = info
        .all("area")
        .flat_map(|a| a.all("geocode"))
        .filter(|g| g.text_of("valueName").is_some_and(|n| n.contains("2260")))
        .filter_map(|g| g.text_of("value").and_then(|v| area_from_geocode(&v)))
        .collect();
    // An English info beside the Chinese one gives the English texts.
    let english = infos
        .iter()
        .filter(|i| !std::ptr::eq(**i, info))
        .find(|i| i.text_of("language").is_some_and(|l| l.starts_with("en")));
    let english_text = |name: &str, max: usize| -> String {
        english
            .and_then(|i| i.text_of(name))
            .map(|t| t.chars().take(max).collect())
            .unwrap_or_default()
    };
    let headline = info
        .text_of("headline")
        .or_else(|| info.text_of("event"))
        .ok_or_else(|| err("<headline> is missing"))?;
    Ok(InboundAlert {
        identifier,
        sender,
        sent,
        status,
        msg_type,
        references,
        event: event_code(info).to_string(),
        level,
        headline: headline.chars().take(200).collect(),
        description: info
            .text_of("description")
            .unwrap_or_default()
            .chars()
            .take(4000)
            .collect(),
        instruction: info
            .text_of("instruction")
            .unwrap_or_default()
            .chars()
            .take(4000)
            .collect(),
        headline_en: english_text("headline", 200),
        description_en: english_text("description", 4000),
        instruction_en: english_text("instruction", 4000),
        areas,
        onset: info.text_of("onset"),
        expires: info.text_of("expires"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(
        identifier: &str,
        msg_type: &str,
        references: &str,
        colour: &str,
    ) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier><sender>zj-weather@cma.gov.cn</sender>
  <sent>2026-07-01T08:00:00+08:00</sent><status>Actual</status><msgType>{msg_type}</msgType>
  <scope>Public</scope>{references}
  <info><language>zh-CN</language><category>Met</category><event>暴雨</event>
    <urgency>Expected</urgency><severity>Severe</severity><certainty>Likely</certainty>
    <headline>武义县暴雨{colour}预警 &amp; 提示</headline><description>未来3小时降雨量&#x3E;50毫米。</description>
    <parameter><valueName>warningColour</valueName><value>{colour}</value></parameter>
    <area><areaDesc>武义县</areaDesc><geocode><valueName>GB/T 2260</valueName><value>330723000000</value></geocode></area>
  </info>
</alert>"#
        )
    }

    #[test]
    fn an_alert_is_read_with_its_level_area_and_texts() {
        let a = parse(&sample("a1", "Alert", "", "橙色")).unwrap();
        assert_eq!(a.level, Level::Orange);
        assert_eq!(a.areas, vec!["330723".parse::<AreaCode>().unwrap()]);
        assert_eq!(a.headline, "武义县暴雨橙色预警 & 提示");
        assert_eq!(a.description, "未来3小时降雨量>50毫米。");
        assert_eq!(a.event, "rainstorm");
        let u = parse(&sample(
            "a2",
            "Update",
            "<references>zj-weather@cma.gov.cn,a1,2026-07-01T08:00:00+08:00</references>",
            "red",
        ))
        .unwrap();
        assert_eq!(
            u.references,
            vec![("zj-weather@cma.gov.cn".into(), "a1".into())]
        );
        assert_eq!(u.level, Level::Red);
    }

    #[test]
    fn hostile_documents_are_refused_with_a_reason() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol2;</identifier></alert>"#;
        assert!(parse(laughs).unwrap_err().0.contains("document type"));
        let xxe = r#"<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">&x;</alert>"#;
        assert!(parse(xxe).unwrap_err().0.contains("document type"));
        let undeclared = r#"<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>"#;
        assert!(parse(undeclared).unwrap_err().0.contains("entity"));
        assert!(parse("not xml at all").is_err());
        assert!(
            parse(&sample("a", "Alert", "", "red").replace("cap:1.2", "cap:1.1"))
                .unwrap_err()
                .0
                .contains("namespace")
        );
        let deep = format!("<alert xmlns=\"{NAMESPACE}\">{}", "<a>".repeat(100));
        assert!(parse(&deep).is_err());
        assert!(
            parse(&sample("a", "Update", "", "red"))
                .unwrap_err()
                .0
                .contains("references")
        );
        assert!(parse(&sample("has space", "Alert", "", "red")).is_err());
    }

    proptest! {
        #[test]
        fn garbage_and_truncation_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), cut in 0usize..2000) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
            let doc = sample("a", "Alert", "", "red");
            let cut = doc.char_indices().map(|(i, _)| i).take_while(|i| *i <= cut).last().unwrap_or(0);
            let _ = parse(&doc[..cut]);
        }
    }
}

/// A CAP time (`2026-07-01T08:00:00+08:00`) as milliseconds since the epoch; a time that is there
/// but not readable is refused rather than dropped, so a warning never loses its expiry silently.
fn cap_time(text: Option<&str>, field: &str) -> Result<Option<i64>, crate::invalid::Invalid> {
    let Some(text) = text else {
        return Ok(None);
    };
    let ms = crate::clock::parse_rfc3339_offset(text).ok_or_else(|| {
        crate::invalid::Invalid::new(
            field,
            format!("`{text}` is not a CAP time such as 2026-07-01T08:00:00+08:00"),
        )
    })?;
    Ok(Some(crate::clock::check_time(field, ms)?))
}

/// What an accepted alert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created(uuid::Uuid),
    Updated(uuid::Uuid),
    Cancelled(uuid::Uuid),
    /// Seen before: nothing changed.
    Duplicate(uuid::Uuid),
}

fn seen(
    conn: &rusqlite::Connection,
    sender: &str,
    identifier: &str,
) -> Result<Option<uuid::Uuid>, crate::store::StoreError> {
    use rusqlite::OptionalExtension;
    let id: Option<String> = conn
        .query_row(
            "SELECT warning_id FROM cap_inbound WHERE sender = ?1 AND identifier = ?2",
            [sender, identifier],
            |r| r.get(0),
        )
        .optional()?;
    Ok(id.and_then(|i| uuid::Uuid::parse_str(&i).ok()))
}

/// Applies an accepted alert (in the caller's transaction) as `actor`, on a node of `node_area`.
pub fn apply(
    conn: &rusqlite::Connection,
    ctx: &crate::records::WriteCtx,
    actor: &crate::auth::actor::Actor,
    node_area: &AreaCode,
    alert: InboundAlert,
) -> Result<Outcome, crate::warnings::WarningError> {
    use crate::warnings::{Action, Content, NewWarning, Source, WarningError};
    if let Some(id) = seen(conn, &alert.sender, &alert.identifier)? {
        return Ok(Outcome::Duplicate(id));
    }
    let inside: Vec<AreaCode> = alert
        .areas
        .iter()
        .filter(|a| node_area.contains(a))
        .cloned()
        .collect();
    let covers = alert.areas.iter().any(|a| a.contains(node_area));
    let areas = if covers || (alert.areas.is_empty() && alert.msg_type == "Cancel") {
        vec![node_area.clone()]
    } else if !inside.is_empty() {
        inside
    } else {
        return Err(crate::invalid::Invalid::new(
            "area",
            format!("none of the alert's areas lies in this node's area {node_area}"),
        )
        .into());
    };
    let content = Content {
        level: Some(alert.level),
        headline: Some(alert.headline.clone()),
        description: Some(alert.description.clone()),
        instruction: Some(alert.instruction.clone()),
        headline_en: Some(alert.headline_en.clone()).filter(|t| !t.is_empty()),
        description_en: Some(alert.description_en.clone()).filter(|t| !t.is_empty()),
        instruction_en: Some(alert.instruction_en.clone()).filter(|t| !t.is_empty()),
        areas: Some(areas),
        onset_ms: cap_time(alert.onset.as_deref(), "onset")?,
        expires_ms: cap_time(alert.expires.as_deref(), "expires")?,
    };
    let outcome = if alert.msg_type == "Alert" {
        let event: crate::rules::spec::Event =
            serde_json::from_value(serde_json::Value::String(alert.event.clone()))
                .unwrap_or(crate::rules::spec::Event::Other);
        let id = crate::warnings::create(
            conn,
            ctx,
            actor,
            NewWarning {
                area: node_area.clone(),
                event,
                status: alert.status.clone(),
                source: Source::Cap(alert.identifier.clone()),
                content,
                first: Action::Issue,
                readings: Vec::new(),
            },
        )?;
        Outcome::Created(id)
    } else {
        let mut target = None;
        for (sender, identifier) in &alert.references {
            if let Some(id) = seen(conn, sender, identifier)? {
                target = Some(id);
            }
        }
        let Some(id) = target else {
            return Err(WarningError::Conflict(
                "the alert refers to no alert this node has received".into(),
            ));
        };
        if alert.msg_type == "Cancel" {
            crate::warnings::act(conn, ctx, actor, id, Action::Cancel, Content::default())?;
            Outcome::Cancelled(id)
        } else {
            crate::warnings::act(conn, ctx, actor, id, Action::Update, content)?;
            Outcome::Updated(id)
        }
    };
    let id = match &outcome {
        Outcome::Created(id)
        | Outcome::Updated(id)
        | Outcome::Cancelled(id)
        | Outcome::Duplicate(id) => *id,
    };
    conn.execute(
        "INSERT INTO cap_inbound (sender, identifier, warning_id, msg_type, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![alert.sender, alert.identifier, id.to_string(), alert.msg_type, ctx.now_ms()],
    )
    .map_err(crate::store::StoreError::from)?;
    Ok(outcome)
}
