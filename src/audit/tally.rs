//! Events a stranger can cause at will — refused sync handshakes, failed sign-ins — counted per
//! client address group, so they reach the audit chain (which ships to the county) as one entry when
//! a window opens and one summary with the count when it closes, not one entry each. Keyed by the
//! address (an IPv6 /64 counts as one), never by what the stranger claims, so inventing fresh keys or
//! usernames opens no new windows.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How long events from one address group are summed into one summary.
pub const WINDOW_MS: i64 = 10 * 60 * 1000;
/// Address groups tracked at most; beyond that events are summed under one group, so a flood from
/// many addresses cannot grow memory.
const GROUPS_MAX: usize = 4096;
/// Names (claimed keys, usernames) listed in one summary at most.
const NAMES_MAX: usize = 16;

#[derive(Debug)]
struct Window {
    since_ms: i64,
    /// Events after the one that opened the window.
    count: u64,
    names: BTreeSet<String>,
    last_reason: String,
}

/// A closed window whose later events are not in the audit log yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub client: String,
    pub since_ms: i64,
    pub count: u64,
    pub names: Vec<String>,
    pub last_reason: String,
}

/// One kind of event, counted per address group.
#[derive(Debug)]
pub struct Tally {
    /// The audit action and target its entries use.
    pub action: &'static str,
    pub target: &'static str,
    windows: Mutex<HashMap<String, Window>>,
    total: AtomicU64,
}

/// The group an address counts in: IPv4 addresses alone, IPv6 addresses by their /64 (what one host
/// can pick its addresses from), IPv4-mapped IPv6 as IPv4.
pub fn address_group(ip: Option<IpAddr>) -> String {
    match ip.map(township_drivers::admission::address_group) {
        Some(IpAddr::V6(v6)) => format!("{v6}/64"),
        Some(ip) => ip.to_string(),
        None => "-".into(),
    }
}

impl Tally {
    pub fn new(action: &'static str, target: &'static str) -> Tally {
        Tally {
            action,
            target,
            windows: Mutex::default(),
            total: AtomicU64::new(0),
        }
    }

    /// Counts an event from `client` naming `name`; true when it opens a window (audit it now).
    pub fn record(&self, client: Option<IpAddr>, name: &str, reason: &str, now_ms: i64) -> bool {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut group = address_group(client);
        if !windows.contains_key(&group) && windows.len() >= GROUPS_MAX {
            group = "(many addresses)".into();
        }
        let name: String = name.chars().take(64).collect();
        let reason: String = reason.chars().take(200).collect();
        match windows.get_mut(&group) {
            Some(w) => {
                w.count += 1;
                if w.names.len() < NAMES_MAX {
                    w.names.insert(name);
                }
                w.last_reason = reason;
                false
            }
            None => {
                windows.insert(
                    group,
                    Window {
                        since_ms: now_ms,
                        count: 0,
                        names: BTreeSet::from([name]),
                        last_reason: reason,
                    },
                );
                true
            }
        }
    }

    /// Takes the windows older than [`WINDOW_MS`]; those with events after their first need a summary.
    pub fn take_closed(&self, now_ms: i64) -> Vec<Summary> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let closed: Vec<String> = windows
            .iter()
            .filter(|(_, w)| now_ms - w.since_ms >= WINDOW_MS)
            .map(|(k, _)| k.clone())
            .collect();
        closed
            .into_iter()
            .filter_map(|k| {
                let w = windows.remove(&k)?;
                (w.count > 0).then(|| Summary {
                    client: k,
                    since_ms: w.since_ms,
                    count: w.count,
                    names: w.names.into_iter().collect(),
                    last_reason: w.last_reason,
                })
            })
            .collect()
    }

    /// Every event since start (for `/metrics`).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// One closed window's summary, with the audit action and target of the tally it came from.
pub struct ClosedWindow {
    pub action: &'static str,
    pub target: &'static str,
    pub summary: Summary,
}

/// Takes every closed window of `tallies` at `now_ms` (see [`Tally::take_closed`]).
pub fn take_closed(tallies: &[&Tally], now_ms: i64) -> Vec<ClosedWindow> {
    tallies
        .iter()
        .flat_map(|tally| {
            tally
                .take_closed(now_ms)
                .into_iter()
                .map(|summary| ClosedWindow {
                    action: tally.action,
                    target: tally.target,
                    summary,
                })
        })
        .collect()
}

/// Writes one audit entry per closed window: the events after each window's first, counted.
pub fn audit_summaries(
    conn: &rusqlite::Connection,
    ctx: &crate::records::WriteCtx,
    closed: &[ClosedWindow],
) -> Result<(), crate::store::StoreError> {
    for ClosedWindow {
        action,
        target,
        summary: s,
    } in closed
    {
        ctx.audit(
            conn,
            super::Event::new(crate::auth::actor::SYSTEM, action, target).detail(
                serde_json::json!({
                    "client": s.client, "count": s.count, "since_ms": s.since_ms,
                    "names": s.names, "reason": s.last_reason,
                    "summary": "further events from this client in this window",
                }),
            ),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_entry_per_window_with_a_count_whatever_the_stranger_claims() {
        let t = Tally::new("sync.refused", "handshake");
        assert!(t.record(ip("192.0.2.1"), "key-a", "not enrolled", 0));
        for i in 1..50 {
            // A fresh key each time opens nothing new.
            assert!(!t.record(ip("192.0.2.1"), &format!("key-{i}"), "not enrolled", i));
        }
        // Another address does; an IPv6 neighbour in the same /64 does not.
        assert!(t.record(ip("192.0.2.2"), "key-b", "not enrolled", 10));
        assert!(t.record(ip("2001:db8::1"), "k", "x", 10));
        assert!(!t.record(ip("2001:db8::ffff:1"), "k", "x", 11));
        assert!(t.take_closed(WINDOW_MS - 1).is_empty());
        let closed = t.take_closed(WINDOW_MS + 20);
        assert_eq!(closed.len(), 2, "{closed:?}");
        let v4 = closed.iter().find(|s| s.client == "192.0.2.1").unwrap();
        assert_eq!(v4.count, 49);
        assert_eq!(v4.names.len(), NAMES_MAX);
        assert_eq!(t.total(), 53);
        assert!(t.record(ip("192.0.2.1"), "key-a", "not enrolled", WINDOW_MS + 30));
    }

    #[test]
    fn a_flood_from_many_addresses_does_not_grow_memory() {
        let t = Tally::new("a", "b");
        for i in 0..(GROUPS_MAX + 500) {
            let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            t.record(Some(ip), "k", "x", 0);
        }
        assert!(t.windows.lock().unwrap().len() <= GROUPS_MAX + 1);
    }
}
