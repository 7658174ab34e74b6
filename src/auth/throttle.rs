//! Login throttling. After too many failures for one account, or from one client address, within the
//! window, further attempts are refused with `Retry-After` before any password is checked; and no
//! account has its password evaluated more than a fixed number of times per hour, whatever the
//! addresses, so a slow distributed guess cannot grind through PBKDF2 on a hub's small CPU.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

const HOUR_MS: i64 = 60 * 60 * 1000;
/// Above this many tracked keys, empty entries are swept so random usernames cannot grow memory.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    pub failures_per_account: usize,
    pub failures_per_address: usize,
    pub window_ms: i64,
    pub evaluations_per_hour: usize,
}

#[derive(Debug, Default)]
struct State {
    account_failures: HashMap<String, VecDeque<i64>>,
    address_failures: HashMap<IpAddr, VecDeque<i64>>,
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

fn prune(q: &mut VecDeque<i64>, oldest_allowed: i64) {
    while q.front().is_some_and(|t| *t < oldest_allowed) {
        q.pop_front();
    }
}

fn wait_secs(q: &VecDeque<i64>, span_ms: i64, now: i64) -> u64 {
    let first = q.front().copied().unwrap_or(now);
    let ms = (first + span_ms - now).max(1000);
    u64::try_from((ms + 999) / 1000).unwrap_or(1)
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

    /// Whether an attempt for `account` from `address` may be evaluated now. Counts nothing.
    pub fn check(
        &self,
        account: &str,
        address: Option<IpAddr>,
        now: i64,
    ) -> Result<(), RetryAfter> {
        let window = self.config.window_ms;
        let mut state = self.lock();
        if let Some(q) = state.account_failures.get_mut(account) {
            prune(q, now - window);
            if q.len() >= self.config.failures_per_account {
                return Err(RetryAfter(wait_secs(q, window, now)));
            }
        }
        if let Some(addr) = address
            && let Some(q) = state.address_failures.get_mut(&addr)
        {
            prune(q, now - window);
            if q.len() >= self.config.failures_per_address {
                return Err(RetryAfter(wait_secs(q, window, now)));
            }
        }
        if let Some(q) = state.evaluations.get_mut(account) {
            prune(q, now - HOUR_MS);
            if q.len() >= self.config.evaluations_per_hour {
                return Err(RetryAfter(wait_secs(q, HOUR_MS, now)));
            }
        }
        Ok(())
    }

    /// Records that a password was evaluated for `account` (success or failure).
    pub fn evaluated(&self, account: &str, now: i64) {
        let mut state = self.lock();
        state
            .evaluations
            .entry(account.to_string())
            .or_default()
            .push_back(now);
        self.sweep(&mut state, now);
    }

    pub fn failed(&self, account: &str, address: Option<IpAddr>, now: i64) {
        let mut state = self.lock();
        state
            .account_failures
            .entry(account.to_string())
            .or_default()
            .push_back(now);
        if let Some(addr) = address {
            state
                .address_failures
                .entry(addr)
                .or_default()
                .push_back(now);
        }
    }

    /// A successful login clears the account's failures (not the address's, which may be shared).
    pub fn succeeded(&self, account: &str) {
        self.lock().account_failures.remove(account);
    }

    fn sweep(&self, state: &mut State, now: i64) {
        let total =
            state.account_failures.len() + state.address_failures.len() + state.evaluations.len();
        if total < SWEEP_ABOVE {
            return;
        }
        let window = self.config.window_ms;
        state.account_failures.retain(|_, q| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(ThrottleConfig {
            failures_per_account: 5,
            failures_per_address: 5,
            window_ms: 15 * 60 * 1000,
            evaluations_per_hour: 100,
        })
    }

    #[test]
    fn five_failures_lock_the_account_for_the_window() {
        let t = throttle();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..5 {
            assert!(t.check("wang", Some(ip), i * 1000).is_ok());
            t.evaluated("wang", i * 1000);
            t.failed("wang", Some(ip), i * 1000);
        }
        let RetryAfter(secs) = t.check("wang", None, 10_000).unwrap_err();
        assert!((890..=900).contains(&secs), "{secs}");
        // From another address too, since the account is what is being guessed.
        assert!(
            t.check("wang", Some("192.0.2.2".parse().unwrap()), 10_000)
                .is_err()
        );
        // The window passes.
        assert!(t.check("wang", None, 15 * 60 * 1000 + 5_000).is_ok());
    }

    #[test]
    fn an_address_spraying_accounts_is_stopped() {
        let t = throttle();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for i in 0..5 {
            t.failed(&format!("user{i}"), Some(ip), 0);
        }
        assert!(t.check("someone-else", Some(ip), 1).is_err());
        assert!(
            t.check("someone-else", Some("192.0.2.10".parse().unwrap()), 1)
                .is_ok()
        );
    }

    #[test]
    fn evaluations_are_capped_per_hour_even_when_they_succeed() {
        let t = throttle();
        for i in 0..100 {
            assert!(
                t.check(
                    "li",
                    Some(format!("10.0.{}.{}", i / 250, i % 250).parse().unwrap()),
                    i
                )
                .is_ok()
            );
            t.evaluated("li", i);
            t.succeeded("li");
        }
        assert!(t.check("li", None, 200).is_err());
        assert!(t.check("li", None, HOUR_MS + 200).is_ok());
    }
}
