//! Failed authentications per peer address, and the bans they lead to.
//!
//! One short lock per refused CONNECT (and one lookup per CONNECT while the table is not
//! empty); the table holds at most [`MAX_TRACKED`] addresses: when full, entries whose
//! window and ban are over go first, then the one whose window started longest ago.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::FailurePolicy;
use crate::lock;
use crate::log_limit::Throttle;

/// Most peer addresses tracked at once (about 40 bytes each).
pub(crate) const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    banned_until: Option<Instant>,
}

impl Entry {
    /// Nothing left to remember at `now`: the window is over and no ban runs.
    fn stale(&self, now: Instant, window: Duration) -> bool {
        now.duration_since(self.window_start) > window && self.banned_until.is_none_or(|until| until <= now)
    }
}

/// The failure table.
#[derive(Debug)]
pub(crate) struct Failures {
    policy: FailurePolicy,
    table: Mutex<HashMap<IpAddr, Entry>>,
    /// One log line per banned address per ban time: a banned client may retry at will.
    refusal_log: Throttle<IpAddr>,
}

impl Default for Failures {
    fn default() -> Self {
        Failures::new(FailurePolicy::default())
    }
}

impl Failures {
    pub(crate) fn new(policy: FailurePolicy) -> Failures {
        Failures { policy, table: Mutex::default(), refusal_log: Throttle::new(policy.ban_time) }
    }

    /// Whether the refusal of banned `ip` at `now` is to be logged: the first of a ban is,
    /// the rest of that ban are counted, and the count goes with the next line logged.
    pub(crate) fn log_refusal(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        self.refusal_log.check(ip, now)
    }

    /// How long a refused CONNACK waits.
    pub(crate) fn delay(&self) -> Duration {
        self.policy.delay
    }

    /// How much longer `ip` is banned, if it is.
    pub(crate) fn banned(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.policy.max_failures == 0 {
            return None;
        }
        let table = lock(&self.table);
        let until = table.get(&ip)?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failed authentication from `ip`; true when it bans the address now.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let policy = self.policy;
        if policy.max_failures == 0 {
            return false;
        }
        let mut table = lock(&self.table);
        if table.len() >= MAX_TRACKED && !table.contains_key(&ip) {
            make_room(&mut table, now, policy.window);
        }
        let entry = table.entry(ip).or_insert(Entry { window_start: now, failures: 0, banned_until: None });
        if entry.banned_until.is_some_and(|until| until <= now) {
            entry.banned_until = None;
        }
        if now.duration_since(entry.window_start) > policy.window {
            *entry = Entry { window_start: now, failures: 0, banned_until: entry.banned_until };
        }
        entry.failures += 1;
        if entry.failures >= policy.max_failures && entry.banned_until.is_none() {
            entry.banned_until = Some(now + policy.ban_time);
            entry.failures = 0;
            entry.window_start = now;
            return true;
        }
        false
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.table).len()
    }
}

/// Frees at least one slot of a full table.
fn make_room(table: &mut HashMap<IpAddr, Entry>, now: Instant, window: Duration) {
    table.retain(|_, entry| !entry.stale(now, window));
    if table.len() < MAX_TRACKED {
        return;
    }
    // Every entry is live: forget the unbanned one whose window started first, or else the
    // ban that ends first.
    let victim = table
        .iter()
        .min_by_key(|(_, e)| (e.banned_until.is_some(), e.banned_until.unwrap_or(e.window_start)))
        .map(|(ip, _)| *ip);
    if let Some(ip) = victim {
        table.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn policy(max_failures: u32) -> FailurePolicy {
        FailurePolicy {
            delay: Duration::ZERO,
            max_failures,
            window: Duration::from_secs(60),
            ban_time: Duration::from_secs(300),
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn the_limit_bans_for_the_ban_time_then_lets_the_address_try_again() {
        let failures = Failures::new(policy(3));
        let t0 = Instant::now();
        assert!(!failures.failed(ip(1), t0));
        assert!(!failures.failed(ip(1), t0));
        assert_eq!(failures.banned(ip(1), t0), None);
        assert!(failures.failed(ip(1), t0), "the third failure bans");
        assert_eq!(failures.banned(ip(1), t0), Some(Duration::from_secs(300)));
        assert_eq!(failures.banned(ip(2), t0), None, "only that address");
        let later = t0 + Duration::from_secs(301);
        assert_eq!(failures.banned(ip(1), later), None);
        assert!(!failures.failed(ip(1), later), "a new window starts after the ban");
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let failures = Failures::new(policy(3));
        let t0 = Instant::now();
        failures.failed(ip(1), t0);
        failures.failed(ip(1), t0);
        let later = t0 + Duration::from_secs(61);
        assert!(!failures.failed(ip(1), later));
        assert!(!failures.failed(ip(1), later));
        assert!(failures.failed(ip(1), later));
    }

    #[test]
    fn zero_max_failures_never_bans_nor_remembers() {
        let failures = Failures::new(policy(0));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!failures.failed(ip(1), t0));
        }
        assert_eq!(failures.banned(ip(1), t0), None);
        assert_eq!(failures.len(), 0);
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_bans_over_fresh_failures() {
        let failures = Failures::new(policy(2));
        let t0 = Instant::now();
        failures.failed(ip(0), t0);
        assert!(failures.failed(ip(0), t0), "address 0 banned");
        for n in 1..(MAX_TRACKED as u32 + 500) {
            failures.failed(ip(n), t0 + Duration::from_millis(u64::from(n)));
        }
        assert!(failures.len() <= MAX_TRACKED, "{}", failures.len());
        assert!(failures.banned(ip(0), t0 + Duration::from_secs(20)).is_some(), "the ban outlived the churn");
    }
}
