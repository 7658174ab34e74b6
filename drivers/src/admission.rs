//! Who gets a connection slot on a sensor listener (the embedded MQTT broker, the HJ 212 listener).
//!
//! A connection is *pending* until it proves it is a configured device (a good MQTT CONNECT, an
//! HJ 212 frame from a known station with the right password) and *authenticated* after. The two are
//! limited apart, so strangers on the LAN cannot keep sensors out:
//!
//! - pending connections are few and short-lived (the protocol's own deadline), limited per client
//!   address, and a new connection is never turned away for lack of room: it pushes out the oldest
//!   pending one from its own address when that address is at its limit, else the oldest pending one
//!   overall. An idle flood therefore only ever evicts itself, and a sensor connecting amid it gets
//!   its slot and authenticates within a round trip;
//! - authenticated connections are limited per device and in total, so one device's credentials
//!   cannot take all the room either, and every configured device always has its own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::driver::DriverContext;

/// The group a client address counts in for per-address limits: an IPv6 address by its /64 (a host
/// picks its addresses from one freely), an IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Authenticated connections at once, all devices together.
    pub max_connections: usize,
    /// Unauthenticated connections at once.
    pub pending_max: usize,
    /// Unauthenticated connections from one client address at once.
    pub pending_per_address: usize,
    /// Authenticated connections of one device at once.
    pub per_device: usize,
}

impl ListenerLimits {
    /// Limits for a listener that may hold `max_connections` device connections.
    pub fn for_devices(max_connections: usize) -> ListenerLimits {
        ListenerLimits {
            max_connections: max_connections.max(1),
            pending_max: 128,
            pending_per_address: 16,
            per_device: 4,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Pending connections by arrival: id → (address, token that evicts it).
    pending: BTreeMap<u64, (IpAddr, CancellationToken)>,
    /// The pending ids of each address, oldest first.
    by_address: HashMap<IpAddr, VecDeque<u64>>,
    /// Authenticated connections per device.
    devices: HashMap<String, usize>,
    authenticated: usize,
    next: u64,
    evicted: u64,
    refused: u64,
}

impl Inner {
    fn evict(&mut self, id: u64) {
        if let Some((addr, token)) = self.pending.remove(&id) {
            token.cancel();
            self.evicted += 1;
            self.forget_address(addr, id);
        }
    }

    fn forget_address(&mut self, addr: IpAddr, id: u64) {
        if let Some(ids) = self.by_address.get_mut(&addr) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_address.remove(&addr);
            }
        }
    }
}

/// The slot table of one listener; cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: ListenerLimits,
    inner: Arc<Mutex<Inner>>,
}

/// Why an authenticated connection got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("device {0} already has its most connections")]
    DeviceFull(String),
    #[error("the listener holds its most device connections")]
    Full,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    pub pending: usize,
    pub authenticated: usize,
    /// Pending connections pushed out by newer ones since start.
    pub evicted: u64,
    /// Authenticated connections refused for lack of room since start.
    pub refused: u64,
}

impl Admission {
    pub fn new(limits: ListenerLimits) -> Admission {
        Admission {
            limits,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a pending slot for a new connection from `addr`, pushing out an older pending one if
    /// there is no room. Never refuses.
    pub fn arrive(&self, addr: IpAddr) -> Ticket {
        let addr = address_group(addr);
        let mut inner = self.lock();
        let from_here = inner.by_address.get(&addr).map_or(0, VecDeque::len);
        if from_here >= self.limits.pending_per_address {
            if let Some(oldest) = inner
                .by_address
                .get(&addr)
                .and_then(|ids| ids.front().copied())
            {
                inner.evict(oldest);
            }
        } else if inner.pending.len() >= self.limits.pending_max
            && let Some(oldest) = inner.pending.keys().next().copied()
        {
            inner.evict(oldest);
        }
        let id = inner.next;
        inner.next += 1;
        let token = CancellationToken::new();
        inner.pending.insert(id, (addr, token.clone()));
        inner.by_address.entry(addr).or_default().push_back(id);
        Ticket {
            admission: self.clone(),
            id,
            addr,
            evicted: token,
            device: None,
        }
    }

    pub fn stats(&self) -> AdmissionStats {
        let inner = self.lock();
        AdmissionStats {
            pending: inner.pending.len(),
            authenticated: inner.authenticated,
            evicted: inner.evicted,
            refused: inner.refused,
        }
    }
}

/// One connection's slot: pending until [`Ticket::authenticate`], released when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Admission,
    id: u64,
    addr: IpAddr,
    evicted: CancellationToken,
    device: Option<String>,
}

impl Ticket {
    /// Cancelled when a newer connection pushed this one out while it was still pending.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    /// Whether the connection proved itself already.
    pub fn is_authenticated(&self) -> bool {
        self.device.is_some()
    }

    /// The connection proved it is `device`: it leaves the pending pool for a device slot. A
    /// pending connection that was already pushed out stays out.
    pub fn authenticate(&mut self, device: &str) -> Result<(), AdmissionError> {
        if self.device.as_deref() == Some(device) {
            return Ok(());
        }
        let limits = self.admission.limits;
        let mut inner = self.admission.lock();
        if self.device.is_none() && !inner.pending.contains_key(&self.id) {
            return Err(AdmissionError::Full);
        }
        let here = inner.devices.get(device).copied().unwrap_or(0);
        let total = inner.authenticated + usize::from(self.device.is_none());
        if here >= limits.per_device {
            inner.refused += 1;
            return Err(AdmissionError::DeviceFull(device.to_string()));
        }
        if total > limits.max_connections {
            inner.refused += 1;
            return Err(AdmissionError::Full);
        }
        if inner.pending.remove(&self.id).is_some() {
            inner.forget_address(self.addr, self.id);
            inner.authenticated += 1;
        }
        if let Some(old) = self.device.take()
            && let Some(n) = inner.devices.get_mut(&old)
        {
            *n = n.saturating_sub(1);
        }
        *inner.devices.entry(device.to_string()).or_default() += 1;
        self.device = Some(device.to_string());
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        if inner.pending.remove(&self.id).is_some() {
            inner.forget_address(self.addr, self.id);
        }
        if let Some(device) = self.device.take() {
            inner.authenticated = inner.authenticated.saturating_sub(1);
            if let Some(n) = inner.devices.get_mut(&device) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.devices.remove(&device);
                }
            }
        }
    }
}

/// Accepts TCP connections until shutdown and serves each on its own task with `serve`, which gets
/// the connection's [`Ticket`]. Returns after every connection task has finished.
pub async fn accept_connections<F, Fut>(
    listener: tokio::net::TcpListener,
    admission: Admission,
    ctx: &DriverContext,
    what: &'static str,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, Ticket) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                // Out of file descriptors and the like: pause rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = ctx.shutdown.cancelled() => break,
        };
        let ticket = admission.arrive(peer.ip());
        let evicted = ticket.evicted().clone();
        let task = serve(socket, peer, ticket);
        tracker.spawn(async move {
            // A pending connection pushed out by a newer one ends here, whatever it was waiting for.
            tokio::select! {
                () = task => {}
                () = evicted.cancelled() => {
                    tracing::debug!(%peer, "{what}: pending connection pushed out by a newer one");
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_connections: 10,
            pending_max: 8,
            pending_per_address: 3,
            per_device: 2,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn a_flood_from_one_address_only_evicts_itself() {
        let a = Admission::new(limits());
        let sensor = a.arrive(ip(1));
        let flood: Vec<Ticket> = (0..100).map(|_| a.arrive(ip(66))).collect();
        assert!(!sensor.evicted().is_cancelled());
        assert_eq!(
            flood.iter().filter(|t| !t.evicted().is_cancelled()).count(),
            3
        );
        assert_eq!(a.stats().pending, 4);
    }

    #[test]
    fn a_new_connection_always_gets_in_and_the_oldest_pending_goes() {
        let a = Admission::new(limits());
        let many: Vec<Ticket> = (0..8).map(|i| a.arrive(ip(10 + i))).collect();
        let mut newcomer = a.arrive(ip(99));
        assert!(many[0].evicted().is_cancelled());
        assert!(!newcomer.evicted().is_cancelled());
        newcomer.authenticate("rain-01").unwrap();
        assert_eq!(a.stats().authenticated, 1);
        assert_eq!(a.stats().pending, 7);
    }

    #[test]
    fn device_slots_are_bounded_per_device_and_released() {
        let a = Admission::new(limits());
        let mut one = a.arrive(ip(1));
        let mut two = a.arrive(ip(1));
        let mut three = a.arrive(ip(1));
        one.authenticate("d").unwrap();
        two.authenticate("d").unwrap();
        assert_eq!(
            three.authenticate("d"),
            Err(AdmissionError::DeviceFull("d".into()))
        );
        // Another device still finds room.
        three.authenticate("e").unwrap();
        drop(one);
        let mut four = a.arrive(ip(2));
        four.authenticate("d").unwrap();
        assert_eq!(a.stats().authenticated, 3);
        drop((two, three, four));
        assert_eq!(
            a.stats(),
            AdmissionStats {
                evicted: 0,
                refused: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn an_evicted_connection_cannot_authenticate_after_all() {
        let a = Admission::new(ListenerLimits {
            pending_max: 1,
            ..limits()
        });
        let mut old = a.arrive(ip(1));
        let _new = a.arrive(ip(2));
        assert!(old.evicted().is_cancelled());
        assert!(old.authenticate("d").is_err());
    }
}
