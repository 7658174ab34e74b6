//! Polling `[[cap.feeds]]`: an Atom or RSS feed of CAP alerts (a provincial or national warning feed)
//! read every `interval`; each entry's alert is fetched once, checked against the feed's trusted key
//! when it has one, and applied as if county IT had posted it (`POST /api/v1/cap`).
//!
//! The feed's server is outside the trust boundary: sizes are bounded (feed 1 MiB, alert 256 KiB,
//! 200 entries), every request has a deadline, redirects stay on `http://` and are few, and an alert
//! that fails its signature is refused, audited and never stored. A feed that is down costs a line in
//! the log and its status (`GET /api/v1/cap/feeds`); the next poll tries again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use hyper::header::HeaderValue;
use quick_xml::events::Event;
use serde::Serialize;

use super::verify::TrustedKey;
use crate::auth::actor::Actor;
use crate::config::CapFeed;
use crate::outbound::{self, OutboundError, Target};
use crate::records::WriteCtx;
use crate::store::Store;

const MAX_FEED_BYTES: usize = 1024 * 1024;
const MAX_ALERT_BYTES: usize = 256 * 1024;
const MAX_ENTRIES: usize = 200;
const MAX_REDIRECTS: usize = 3;
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);

/// Reads a `trusted_key`: PEM text inline, or the path of a PEM file.
pub fn load_key(spec: &str) -> Result<TrustedKey, String> {
    let text = if spec.contains("-----BEGIN") {
        spec.to_string()
    } else {
        std::fs::read_to_string(spec).map_err(|e| format!("cannot read {spec}: {e}"))?
    };
    TrustedKey::from_pem(&text)
}

/// Checks one `[[cap.feeds]]` entry at start; the error names the key and says the fix.
pub fn check(feed: &CapFeed) -> Result<(), (String, String)> {
    if Target::parse(&feed.url).is_none() {
        return Err((
            "url".into(),
            format!(
                "`{}` is not an http:// address with a host (https feeds are not supported yet; use a local relay)",
                feed.url
            ),
        ));
    }
    if feed.interval < Duration::from_secs(1) {
        return Err(("interval".into(), "must be at least 1s".into()));
    }
    if let Some(spec) = &feed.trusted_key {
        load_key(spec).map_err(|m| ("trusted_key".to_string(), m))?;
    }
    Ok(())
}

/// Why a fetch failed: the next poll may fare better either way, but only a `Refused` document is
/// worth remembering as done.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
}

async fn get_once(target: &Target, max: usize) -> Result<(u16, Option<String>, Bytes), FetchError> {
    let accept = HeaderValue::from_static(
        "application/cap+xml, application/atom+xml, application/rss+xml, application/xml;q=0.9",
    );
    let answer = outbound::exchange(
        target,
        hyper::Method::GET,
        &[(hyper::header::ACCEPT, accept)],
        Bytes::new(),
        max,
    )
    .await
    .map_err(|e| match e {
        // Too large is the document's fault; a connection that broke off is worth another try.
        OutboundError::TooLarge { .. } => FetchError::Refused(e.to_string()),
        OutboundError::Unreachable(m) => FetchError::Unreachable(m),
    })?;
    Ok((answer.status, answer.location, answer.body))
}

/// GETs `target`, following a few `http://` redirects, within [`REQUEST_DEADLINE`].
async fn get(target: &Target, max: usize) -> Result<Bytes, FetchError> {
    let mut target = target.clone();
    for _ in 0..=MAX_REDIRECTS {
        let (status, location, body) =
            tokio::time::timeout(REQUEST_DEADLINE, get_once(&target, max))
                .await
                .map_err(|_| {
                    FetchError::Unreachable(format!("{} did not answer in time", target.url()))
                })??;
        match status {
            200 => return Ok(body),
            301 | 302 | 303 | 307 | 308 => {
                target = location
                    .as_deref()
                    .and_then(|l| target.join(l))
                    .ok_or_else(|| {
                        FetchError::Refused(format!(
                            "{} redirects somewhere this node does not follow",
                            target.url()
                        ))
                    })?;
            }
            404 | 410 => {
                return Err(FetchError::Refused(format!(
                    "{} answered {status}",
                    target.url()
                )));
            }
            _ => {
                return Err(FetchError::Unreachable(format!(
                    "{} answered {status}",
                    target.url()
                )));
            }
        }
    }
    Err(FetchError::Refused(format!(
        "{} redirects too many times",
        target.url()
    )))
}

/// What a feed document holds: the alert links of its entries in document order, or, when the
/// address serves one alert itself, that alert.
#[derive(Debug, PartialEq, Eq)]
enum FeedDocument {
    Links(Vec<String>),
    Alert,
}

/// Reads the alert links from an Atom feed (`entry/link`, preferring `type` with "cap", then
/// `rel="alternate"`) or an RSS feed (`item/link`, or an `enclosure`). Hostile-input rules as for
/// alerts: no DTD, bounded.
fn feed_links(xml: &str) -> Result<FeedDocument, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut in_entry = false;
    // (preference, href) of the current entry's best link.
    let mut best: Option<(u8, String)> = None;
    let mut in_rss_link = false;
    let mut links = Vec::new();
    let mut elements = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("the feed is not well-formed XML: {e}"))?;
        match event {
            Event::DocType(_) => return Err("the feed has a document type declaration".into()),
            Event::Start(ref e) | Event::Empty(ref e) => {
                elements += 1;
                if elements > 50_000 || depth > 32 {
                    return Err("the feed is too large or too deeply nested".into());
                }
                let local = e.local_name();
                let local = local.as_ref();
                if !root_seen {
                    root_seen = true;
                    if local == b"alert" {
                        return Ok(FeedDocument::Alert);
                    }
                    if local != b"feed" && local != b"rss" && local != b"RDF" {
                        return Err(
                            "the feed is neither Atom, RSS nor a CAP alert (its root element)"
                                .into(),
                        );
                    }
                }
                let attr = |name: &[u8]| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == name)
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
                };
                if local == b"entry" || local == b"item" {
                    in_entry = true;
                    best = None;
                } else if in_entry && local == b"link" {
                    if let Some(href) = attr(b"href") {
                        let kind = attr(b"type").unwrap_or_default();
                        let rel = attr(b"rel").unwrap_or_else(|| "alternate".into());
                        let preference = if kind.contains("cap") {
                            3
                        } else if rel == "alternate" {
                            2
                        } else {
                            0
                        };
                        if preference > 0 && best.as_ref().is_none_or(|(p, _)| preference > *p) {
                            best = Some((preference, href));
                        }
                    } else if matches!(event, Event::Start(_)) {
                        in_rss_link = true;
                    }
                } else if in_entry
                    && local == b"enclosure"
                    && let Some(url) = attr(b"url")
                    && best.as_ref().is_none_or(|(p, _)| *p < 1)
                {
                    best = Some((1, url));
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::Text(t) if in_rss_link => {
                let href = t.decode().map_err(|e| e.to_string())?.trim().to_string();
                if !href.is_empty() && best.as_ref().is_none_or(|(p, _)| *p < 2) {
                    best = Some((2, href));
                }
            }
            Event::End(ref e) => {
                depth = depth.saturating_sub(1);
                let local = e.local_name();
                if local.as_ref() == b"link" {
                    in_rss_link = false;
                } else if local.as_ref() == b"entry" || local.as_ref() == b"item" {
                    in_entry = false;
                    if let Some((_, href)) = best.take() {
                        links.push(href);
                        if links.len() > MAX_ENTRIES {
                            return Err(format!("the feed has more than {MAX_ENTRIES} entries"));
                        }
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen {
        return Err("the feed is empty".into());
    }
    Ok(FeedDocument::Links(links))
}

/// How one feed has fared, for `GET /api/v1/cap/feeds` and the log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedStatus {
    pub url: String,
    pub signed: bool,
    pub last_poll_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    pub accepted: u64,
    pub duplicates: u64,
    pub refused: u64,
}

/// Every configured feed's status, in config order.
#[derive(Debug, Default)]
pub struct Feeds {
    status: Mutex<Vec<FeedStatus>>,
}

impl Feeds {
    pub fn snapshot(&self) -> Vec<FeedStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut FeedStatus)) {
        if let Ok(mut all) = self.status.lock()
            && let Some(s) = all.get_mut(index)
        {
            f(s);
        }
    }
}

/// What the pollers run with.
#[derive(Clone)]
pub struct Runtime {
    pub store: Store,
    pub write_ctx: WriteCtx,
    pub status: Arc<Feeds>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Sets up one status entry per configured feed; call once before the pollers start.
pub fn init_status(status: &Feeds, feeds: &[CapFeed]) {
    if let Ok(mut all) = status.status.lock() {
        *all = feeds
            .iter()
            .map(|f| FeedStatus {
                url: f.url.clone(),
                signed: f.trusted_key.is_some(),
                ..FeedStatus::default()
            })
            .collect();
    }
}

/// Polls feed `index` every `interval` (the first at once) until shutdown.
pub async fn run(rt: Runtime, index: usize, feed: CapFeed) {
    let key = match feed.trusted_key.as_deref().map(load_key).transpose() {
        Ok(key) => key,
        // Checked when the config was loaded; a key file removed since stops only this feed.
        Err(e) => {
            tracing::error!(feed = %feed.url, error = %e, "CAP feed not polled: its trusted key cannot be read");
            rt.status
                .update(index, |s| s.last_error = Some(format!("trusted_key: {e}")));
            return;
        }
    };
    let Some(target) = Target::parse(&feed.url) else {
        return;
    };
    let mut done = HashSet::new();
    let mut tick = tokio::time::interval(feed.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = rt.shutdown.cancelled() => return,
        }
        tokio::select! {
            () = poll(&rt, index, &target, key.as_ref(), &mut done) => {}
            () = rt.shutdown.cancelled() => return,
        }
    }
}

/// One alert's fate.
enum Fate {
    Accepted,
    Duplicate,
    /// Refused for good (bad signature, bad document, not for this area): not fetched again.
    Refused(String),
    /// Worth another try at the next poll (feed server or this node's store busy).
    Retry(String),
}

async fn poll(
    rt: &Runtime,
    index: usize,
    target: &Target,
    key: Option<&TrustedKey>,
    done: &mut HashSet<String>,
) {
    let now = rt.write_ctx.now_ms();
    rt.status.update(index, |s| s.last_poll_ms = Some(now));
    let document = match get(target, MAX_FEED_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(feed = %target.url(), error = %e, "CAP feed not read");
            rt.status
                .update(index, |s| s.last_error = Some(e.to_string()));
            return;
        }
    };
    let text = String::from_utf8_lossy(&document);
    let alerts: Vec<(String, Option<Bytes>)> = match feed_links(&text) {
        Ok(FeedDocument::Alert) => vec![(target.url(), Some(document.clone()))],
        // Feeds list the newest first; older alerts go first so an Update finds its Alert.
        Ok(FeedDocument::Links(links)) => links
            .into_iter()
            .rev()
            .filter_map(|l| target.join(&l))
            .map(|t| (t.url(), None))
            .collect(),
        Err(e) => {
            tracing::warn!(feed = %target.url(), error = %e, "CAP feed not understood");
            rt.status.update(index, |s| s.last_error = Some(e));
            return;
        }
    };
    let mut current = HashSet::new();
    let mut last_error = None;
    for (url, body) in alerts {
        current.insert(url.clone());
        if done.contains(&url) && body.is_none() {
            continue;
        }
        let fate = one_alert(rt, &url, body, key).await;
        let remember = !matches!(fate, Fate::Retry(_));
        match fate {
            Fate::Accepted => rt.status.update(index, |s| s.accepted += 1),
            Fate::Duplicate => rt.status.update(index, |s| s.duplicates += 1),
            Fate::Refused(reason) => {
                tracing::warn!(feed = %target.url(), alert = %url, %reason, "CAP alert refused");
                audit_refusal(rt, &target.url(), &url, &reason).await;
                rt.status.update(index, |s| s.refused += 1);
                last_error = Some(format!("{url}: {reason}"));
            }
            Fate::Retry(reason) => {
                tracing::warn!(feed = %target.url(), alert = %url, %reason, "CAP alert not fetched; trying again at the next poll");
                last_error = Some(format!("{url}: {reason}"));
            }
        }
        if remember {
            done.insert(url);
        }
    }
    // Only what the feed still lists is remembered, so the set stays as small as the feed.
    done.retain(|u| current.contains(u));
    let now = rt.write_ctx.now_ms();
    rt.status.update(index, |s| {
        s.last_success_ms = Some(now);
        s.last_error = last_error;
    });
}

async fn one_alert(rt: &Runtime, url: &str, body: Option<Bytes>, key: Option<&TrustedKey>) -> Fate {
    let body = match body {
        Some(b) => b,
        None => match Target::parse(url) {
            Some(t) => match get(&t, MAX_ALERT_BYTES).await {
                Ok(b) => b,
                Err(FetchError::Unreachable(e)) => return Fate::Retry(e),
                Err(FetchError::Refused(e)) => return Fate::Refused(e),
            },
            None => return Fate::Refused("not an http:// address".into()),
        },
    };
    if body.len() > MAX_ALERT_BYTES {
        return Fate::Refused(format!("larger than {MAX_ALERT_BYTES} bytes"));
    }
    let Ok(xml) = std::str::from_utf8(&body) else {
        return Fate::Refused("the alert is not UTF-8".into());
    };
    if let Some(key) = key
        && let Err(e) = super::verify::verify(xml, key)
    {
        return Fate::Refused(format!("signature: {e}"));
    }
    let alert = match super::inbound::parse(xml) {
        Ok(a) => a,
        Err(e) => return Fate::Refused(e.to_string()),
    };
    let ctx = rt.write_ctx.clone();
    let applied = rt
        .store
        .write(move |conn| {
            let actor = Actor::system(ctx.area.clone());
            let area = ctx.area.clone();
            super::inbound::apply(conn, &ctx, &actor, &area, alert)
        })
        .await;
    match applied {
        Ok(super::inbound::Outcome::Duplicate(_)) => Fate::Duplicate,
        Ok(_) => Fate::Accepted,
        // The store was busy or failing: the alert is fine, try it again.
        Err(crate::warnings::WarningError::Store(e)) => Fate::Retry(e.to_string()),
        Err(e) => Fate::Refused(e.to_string()),
    }
}

async fn audit_refusal(rt: &Runtime, feed: &str, url: &str, reason: &str) {
    let (ctx, feed, url, reason) = (
        rt.write_ctx.clone(),
        feed.to_string(),
        url.to_string(),
        reason.to_string(),
    );
    let written = rt
        .store
        .write(move |conn| {
            ctx.audit(
                conn,
                crate::audit::Event::new("system", "cap.refused", &url)
                    .detail(serde_json::json!({"feed": feed, "reason": reason})),
            )
        })
        .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "the refusal of a CAP alert could not be audited");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn atom_and_rss_links_are_found() {
        let atom = r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><link rel="self" href="s"/><link href="page.html"/><link type="application/cap+xml" href="a1.xml"/></entry><entry><link href="a2.xml"/></entry></feed>"#;
        assert_eq!(
            feed_links(atom).unwrap(),
            FeedDocument::Links(vec!["a1.xml".into(), "a2.xml".into()])
        );
        let rss = r#"<rss version="2.0"><channel><link>http://site/</link><item><title>t</title><link> http://x/1.xml </link></item><item><enclosure url="http://x/2.xml" type="application/cap+xml"/></item></channel></rss>"#;
        assert_eq!(
            feed_links(rss).unwrap(),
            FeedDocument::Links(vec!["http://x/1.xml".into(), "http://x/2.xml".into()])
        );
        assert_eq!(
            feed_links(r#"<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>"#).unwrap(),
            FeedDocument::Alert
        );
        assert!(feed_links("<!DOCTYPE x [<!ENTITY a 'b'>]><feed/>").is_err());
        assert!(feed_links("<html/>").is_err());
        assert!(feed_links("").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = feed_links(&text);
            let _ = Target::parse(&text);
            let _ = Target::parse(&format!("http://{text}"));
            if let Some(t) = Target::parse("http://x/a/b") { let _ = t.join(&text); }
        }
    }
}
