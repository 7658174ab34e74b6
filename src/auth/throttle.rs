//! Sign-in throttling that holds under parallel guessing and that a stranger cannot turn against the
//! account's owner.
//!
//! - Every attempt *reserves* its place before the password is checked: it counts as a failure from
//!   the moment it is let through, and only a success takes it back. Thirty guesses sent at once are
//!   thirty attempts, not one.
//! - Failures are limited per (account, client), where the client is the browser's device cookie if
//!   it carries a valid one for this account, else its address. A guesser at one address locks out
//!   only that address for that account.
//! - A client address that fails across many accounts (spraying) is limited on its own.
//! - Password evaluations per account are bounded per hour across all untrusted clients, so a slow
//!   distributed guess cannot grind through PBKDF2 on a hub's small CPU — and a browser that signed
//!   in as this account before (a signed device cookie, as OWASP describes) is not held by that
//!   account-wide bound, so guessing from elsewhere never locks the owner out of their own phone.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

const HOUR_MS: i64 = 60 * 60 * 1000;
/// Above this many tracked keys, empty entries are swept so random usernames cannot grow memory.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failures allowed per account from one client (address or device) within the window.
    pub failures_per_client: usize,
    /// Failures allowed from one address across all accounts within the window.
    pub failures_per_address: usize,
    pub window_ms: i64,
    /// Password evaluations per account per hour from clients without the account's device cookie.
    pub evaluations_per_hour: usize,
}

/// Who is trying: a browser that proved it signed in as this account before, or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Device(String),
    Address(IpAddr),
    Unknown,
}

#[derive(Debug, Default)]
struct State {
    /// Failures (and attempts in flight) per (account, client).
    client_failures: HashMap<(String, ClientKey), VecDeque<i64>>,
    /// Failures (and attempts in flight) per address, any account.
    address_failures: HashMap<IpAddr, VecDeque<i64>>,
    /// Evaluations per account by untrusted clients.
    evaluations: HashMap<String, VecDeque<i64>>,
}

#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    state: Mutex<State>,
}

/// Refused: try again after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

/// An attempt let through. It stays counted as a failure unless [`Throttle::succeeded`] takes it back.
#[derive(Debug)]
#[must_use = "an attempt is a failure unless it is reported as a success"]
pub struct Attempt {
    account: String,
    client: ClientKey,
    address: Option<IpAddr>,
    at: i64,
}

fn prune(q: &mut VecDeque<i64>, oldest_allowed: i64) {
    while q.front().is_some_and(|t| *t < oldest_allowed) {
        q.pop_front();
    }
}

fn wait_secs(q: &VecDeque<i64>, span_ms: i64, now: i64) -> u64 {
    let first = q.front().copied().unwrap_or(now);
    let ms = first.saturating_add(span_ms).saturating_sub(now).max(1000);
    u64::try_from(ms.saturating_add(999) / 1000).unwrap_or(1)
}

/// Removes one occurrence of `at` (the reserved attempt), keeping the others.
fn take_back(q: &mut VecDeque<i64>, at: i64) {
    if let Some(i) = q.iter().rposition(|t| *t == at) {
        q.remove(i);
    }
}

fn full(
    q: Option<&mut VecDeque<i64>>,
    limit: usize,
    span: i64,
    now: i64,
) -> Result<(), RetryAfter> {
    if let Some(q) = q {
        prune(q, now.saturating_sub(span));
        if q.len() >= limit {
            return Err(RetryAfter(wait_secs(q, span, now)));
        }
    }
    Ok(())
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets an attempt for `account` through, or says how long to wait. `device` is the nonce of a
    /// device cookie already verified for this account. The attempt is counted at once.
    pub fn reserve(
        &self,
        account: &str,
        address: Option<IpAddr>,
        device: Option<&str>,
        now: i64,
    ) -> Result<Attempt, RetryAfter> {
        let window = self.config.window_ms;
        // One host picks IPv6 addresses freely within its /64: that is one client here.
        let address = address.map(township_drivers::admission::address_group);
        let client = match (device, address) {
            (Some(d), _) => ClientKey::Device(d.to_string()),
            (None, Some(a)) => ClientKey::Address(a),
            (None, None) => ClientKey::Unknown,
        };
        let trusted = matches!(client, ClientKey::Device(_));
        let mut state = self.lock();
        let key = (account.to_string(), client.clone());
        full(
            state.client_failures.get_mut(&key),
            self.config.failures_per_client,
            window,
            now,
        )?;
        if !trusted {
            if let Some(addr) = address {
                full(
                    state.address_failures.get_mut(&addr),
                    self.config.failures_per_address,
                    window,
                    now,
                )?;
            }
            full(
                state.evaluations.get_mut(account),
                self.config.evaluations_per_hour,
                HOUR_MS,
                now,
            )?;
        }
        state.client_failures.entry(key).or_default().push_back(now);
        if !trusted {
            if let Some(addr) = address {
                state
                    .address_failures
                    .entry(addr)
                    .or_default()
                    .push_back(now);
            }
            state
                .evaluations
                .entry(account.to_string())
                .or_default()
                .push_back(now);
        }
        self.sweep(&mut state, now);
        Ok(Attempt {
            account: account.to_string(),
            client,
            address: if trusted { None } else { address },
            at: now,
        })
    }

    /// The attempt succeeded: it is no failure, and the client's earlier failures for this account
    /// are forgiven. The evaluation still counts towards the hourly bound.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut state = self.lock();
        state
            .client_failures
            .remove(&(attempt.account.clone(), attempt.client));
        if let Some(addr) = attempt.address
            && let Some(q) = state.address_failures.get_mut(&addr)
        {
            take_back(q, attempt.at);
        }
    }

    /// The attempt failed; it stays counted. (Dropping the attempt does the same; this says so.)
    pub fn failed(&self, attempt: Attempt) {
        drop(attempt);
    }

    fn sweep(&self, state: &mut State, now: i64) {
        let total =
            state.client_failures.len() + state.address_failures.len() + state.evaluations.len();
        if total < SWEEP_ABOVE {
            return;
        }
        let window = self.config.window_ms;
        state.client_failures.retain(|_, q| {
            prune(q, now - window);
            !q.is_empty()
        });
        state.address_failures.retain(|_, q| {
            prune(q, now - window);
            !q.is_empty()
        });
        state.evaluations.retain(|_, q| {
            prune(q, now - HOUR_MS);
            !q.is_empty()
        });
    }
}

/// Device cookies: proof that this browser signed in as an account before. The value is
/// `<username>.<nonce>.<mac>` (base64url), the MAC an HMAC-SHA256 under a key that never leaves the
/// node, so a client cannot make one for an account it never signed in to.
pub mod device {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::hmac;

    pub const COOKIE_NAME: &str = "tn_device";

    fn mac_input(username: &str, nonce: &str) -> Vec<u8> {
        format!("township-node device cookie v1\0{username}\0{nonce}").into_bytes()
    }

    /// A new device cookie value for `username`.
    pub fn issue(key: &hmac::Key, username: &str) -> Option<String> {
        let nonce = crate::auth::session::random_secret().ok()?;
        let tag = hmac::sign(key, &mac_input(username, &nonce));
        Some(format!(
            "{}.{nonce}.{}",
            URL_SAFE_NO_PAD.encode(username),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
    }

    /// The cookie's nonce, if it is genuine and was issued for `username`.
    pub fn verify(key: &hmac::Key, value: &str, username: &str) -> Option<String> {
        let mut parts = value.splitn(3, '.');
        let (name, nonce, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let name = URL_SAFE_NO_PAD.decode(name).ok()?;
        if name != username.as_bytes() || nonce.len() > 64 {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(key, &mac_input(username, nonce), &tag).ok()?;
        Some(nonce.to_string())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn cookies_are_bound_to_their_account_and_key() {
            let key = hmac::Key::new(hmac::HMAC_SHA256, b"k1");
            let other = hmac::Key::new(hmac::HMAC_SHA256, b"k2");
            let c = issue(&key, "wang.fang").unwrap();
            assert!(verify(&key, &c, "wang.fang").is_some());
            assert!(verify(&key, &c, "li.ming").is_none());
            assert!(verify(&other, &c, "wang.fang").is_none());
            let mut forged = c.clone();
            forged.push('A');
            assert!(verify(&key, &forged, "wang.fang").is_none());
            for junk in ["", ".", "..", "a.b.c", "d2FuZy5mYW5n.x."] {
                assert!(verify(&key, junk, "wang.fang").is_none());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(ThrottleConfig {
            failures_per_client: 5,
            failures_per_address: 20,
            window_ms: 15 * 60 * 1000,
            evaluations_per_hour: 100,
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn attempts_in_flight_count_before_any_password_is_checked() {
        let t = throttle();
        // Thirty at once: only five are let through, whatever their outcome will be.
        let let_through: Vec<Attempt> = (0..30)
            .filter_map(|_| t.reserve("wang", ip("192.0.2.1"), None, 0).ok())
            .collect();
        assert_eq!(let_through.len(), 5);
    }

    #[test]
    fn a_stranger_locks_out_only_themselves() {
        let t = throttle();
        for i in 0..5 {
            let a = t.reserve("wang", ip("192.0.2.66"), None, i).unwrap();
            t.failed(a);
        }
        let RetryAfter(secs) = t.reserve("wang", ip("192.0.2.66"), None, 10).unwrap_err();
        assert!((890..=900).contains(&secs), "{secs}");
        // The owner, from her own phone's address, is not held.
        let mine = t.reserve("wang", ip("192.0.2.7"), None, 11).unwrap();
        t.succeeded(mine);
        // The window passes for the stranger too.
        assert!(
            t.reserve("wang", ip("192.0.2.66"), None, 15 * 60 * 1000 + 5_000)
                .is_ok()
        );
    }

    #[test]
    fn a_success_takes_its_reservation_back() {
        let t = throttle();
        for i in 0..4 {
            t.failed(t.reserve("li", ip("192.0.2.3"), None, i).unwrap());
        }
        let ok = t.reserve("li", ip("192.0.2.3"), None, 5).unwrap();
        t.succeeded(ok);
        for i in 0..5 {
            t.failed(t.reserve("li", ip("192.0.2.3"), None, 10 + i).unwrap());
        }
        assert!(t.reserve("li", ip("192.0.2.3"), None, 20).is_err());
    }

    #[test]
    fn an_ipv6_host_is_one_client_whichever_address_it_picks() {
        let t = throttle();
        for i in 0..5 {
            let a = t
                .reserve("wang", ip(&format!("2001:db8:1:2::{i:x}")), None, i)
                .unwrap();
            t.failed(a);
        }
        assert!(
            t.reserve("wang", ip("2001:db8:1:2::ffff"), None, 10)
                .is_err()
        );
        assert!(t.reserve("wang", ip("2001:db8:1:3::1"), None, 10).is_ok());
    }

    #[test]
    fn an_address_spraying_accounts_is_stopped() {
        let t = throttle();
        for i in 0..20 {
            t.failed(
                t.reserve(&format!("user{i}"), ip("192.0.2.9"), None, 0)
                    .unwrap(),
            );
        }
        assert!(t.reserve("someone-else", ip("192.0.2.9"), None, 1).is_err());
        assert!(t.reserve("someone-else", ip("192.0.2.10"), None, 1).is_ok());
    }

    #[test]
    fn evaluations_are_capped_per_account_but_not_for_its_own_devices() {
        let t = throttle();
        // A hundred guesses from a hundred addresses.
        for i in 0..100 {
            let a = t
                .reserve(
                    "li",
                    Some(format!("10.0.{}.{}", i / 250, i % 250).parse().unwrap()),
                    None,
                    i,
                )
                .unwrap();
            t.failed(a);
        }
        assert!(t.reserve("li", ip("10.9.9.9"), None, 200).is_err());
        // The browser she signed in with before is not held by the account-wide bound.
        let mine = t
            .reserve("li", ip("10.9.9.9"), Some("nonce-1"), 201)
            .unwrap();
        t.succeeded(mine);
        // But a device guessing on its own is limited like any client.
        for i in 0..5 {
            t.failed(t.reserve("li", None, Some("nonce-2"), 300 + i).unwrap());
        }
        assert!(t.reserve("li", None, Some("nonce-2"), 400).is_err());
        assert!(t.reserve("li", None, Some("nonce-1"), 400).is_ok());
        assert!(t.reserve("li", None, None, HOUR_MS + 200).is_ok());
    }
}
