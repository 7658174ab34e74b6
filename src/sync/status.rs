//! What the node knows about its links, for `/api/v1/sync/status`, `/api/v1/nodes`, the header and
//! `/metrics`: the upstream link's state (connected, offline, or refused with a reason) and every live
//! connection of every downstream node, so revoking a node can end all of them.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What the node knows about its links, for `/api/v1/sync/status`, `/api/v1/nodes` and the header.
#[derive(Debug)]
pub struct SyncStatus {
    inner: Mutex<StatusInner>,
    /// Every live connection of every downstream node: a node may hold several (a reconnect before
    /// the old socket timed out, or a copy of its key elsewhere), and revoking it ends all of them.
    sessions: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
    next_connection: std::sync::atomic::AtomicU64,
    /// Refused sync handshakes, counted per client address (see [`crate::audit::Tally`]).
    pub refusals: crate::audit::Tally,
}

impl Default for SyncStatus {
    fn default() -> Self {
        SyncStatus {
            inner: Mutex::default(),
            sessions: Mutex::default(),
            next_connection: std::sync::atomic::AtomicU64::new(0),
            refusals: crate::audit::Tally::new("sync.refused", "handshake"),
        }
    }
}

impl SyncStatus {
    /// Registers a live connection of `node`; returns its number for [`Self::unregister`].
    pub(super) fn register(&self, node: &str, token: CancellationToken) -> u64 {
        let n = self
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_default()
            .insert(n, token);
        n
    }

    pub(super) fn unregister(&self, node: &str, n: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = sessions.get_mut(node) {
            live.remove(&n);
            if live.is_empty() {
                sessions.remove(node);
            }
        }
    }

    /// Ends every live connection of `node`; returns how many there were.
    pub(super) fn close_all(&self, node: &str) -> usize {
        let live = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node)
            .unwrap_or_default();
        for token in live.values() {
            token.cancel();
        }
        live.len()
    }

    /// Live connections of `node`.
    pub fn connections(&self, node: &str) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map_or(0, HashMap::len)
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct LinkStatus {
    pub connected: bool,
    pub since_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Set when the last attempt failed in a way only a person can fix (see
    /// [`super::SessionError::is_permanent`]); the link then retries only at the slowest rate.
    pub refused: bool,
    pub pending_out: usize,
    pub pending_in: usize,
}

impl LinkStatus {
    /// `connected`, `offline`, or `refused` (the reason is in `last_error`).
    pub fn state(&self) -> &'static str {
        if self.connected {
            "connected"
        } else if self.refused {
            "refused"
        } else {
            "offline"
        }
    }
}

#[derive(Debug, Default)]
struct StatusInner {
    upstream: Option<LinkStatus>,
    downstream: HashMap<String, LinkStatus>,
}

impl SyncStatus {
    pub(super) fn update(&self, peer: Option<&str>, f: impl FnOnce(&mut LinkStatus)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let link = match peer {
            None => inner.upstream.get_or_insert_with(LinkStatus::default),
            Some(id) => inner.downstream.entry(id.to_string()).or_default(),
        };
        f(link);
    }

    /// Samples for `/metrics`: upstream connected, changes waiting to go up, downstream connections.
    pub fn samples(&self, now_ms: i64) -> Vec<crate::metrics::Sample> {
        let (up, down) = self.snapshot();
        let mut out = vec![
            crate::metrics::Sample {
                name: "township_sync_downstream_connected",
                help: "Downstream nodes connected now.",
                kind: "gauge",
                value: down.values().filter(|l| l.connected).count() as f64,
            },
            crate::metrics::Sample {
                name: "township_sync_handshakes_refused_total",
                help: "Sync handshakes refused (unknown, revoked or bad keys) since start.",
                kind: "counter",
                value: self.refusals.total() as f64,
            },
        ];
        if let Some(u) = up {
            out.push(crate::metrics::Sample {
                name: "township_sync_upstream_connected",
                help: "1 while the link to the upstream is up.",
                kind: "gauge",
                value: if u.connected { 1.0 } else { 0.0 },
            });
            out.push(crate::metrics::Sample {
                name: "township_sync_upstream_pending",
                help: "Records whose sync with the upstream has not settled.",
                kind: "gauge",
                value: u.pending_out as f64,
            });
            if let Some(ok) = u.last_success_ms {
                out.push(crate::metrics::Sample {
                    name: "township_sync_upstream_seconds_since_success",
                    help: "Seconds since the last frame from the upstream was applied.",
                    kind: "gauge",
                    value: ((now_ms - ok).max(0) as f64) / 1000.0,
                });
            }
        }
        out
    }

    pub(super) fn snapshot(&self) -> (Option<LinkStatus>, HashMap<String, LinkStatus>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.upstream.clone(), inner.downstream.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_ends_every_connection_of_that_node_and_no_other() {
        let status = SyncStatus::default();
        let (a1, a2, b) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let n1 = status.register("a", a1.clone());
        let _n2 = status.register("a", a2.clone());
        let _nb = status.register("b", b.clone());
        assert_eq!(status.connections("a"), 2);
        status.unregister("a", n1);
        assert_eq!(status.connections("a"), 1);
        assert_eq!(status.close_all("a"), 1);
        assert!(a2.is_cancelled() && !a1.is_cancelled() && !b.is_cancelled());
        assert_eq!(status.connections("a"), 0);
        assert_eq!(status.connections("b"), 1);
    }

    #[test]
    fn a_refused_link_says_so_until_it_connects() {
        let status = SyncStatus::default();
        status.update(None, |l| {
            l.refused = true;
            l.last_error = Some("refused: node x is not enrolled here".into());
        });
        assert_eq!(status.snapshot().0.map(|l| l.state()), Some("refused"));
        status.update(None, |l| {
            l.connected = true;
            l.refused = false;
        });
        assert_eq!(status.snapshot().0.map(|l| l.state()), Some("connected"));
    }
}
