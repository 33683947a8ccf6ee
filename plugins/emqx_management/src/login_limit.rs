//! Failed logins per client IP (EMQX 5's `unsuccessful_login_*` settings): after
//! `max_attempts` wrong credentials within `interval`, the IP is refused (HTTP 429,
//! `Retry-After`) for `lock_duration`, right password or not, so a locked-out guesser learns
//! nothing. A success is never delayed, and does not clear the count: behind a proxy (the
//! dashboard) many users share one IP, and one user's good logins must not reset another's
//! guesses.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] IPs; when full, finished entries go first, then
//! the one whose count started longest ago.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many client IPs are tracked at most.
pub(crate) const MAX_TRACKED: usize = 4096;

/// When to lock an IP out, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Failures within `interval` that lock the IP out.
    pub(crate) max_attempts: u32,
    /// The window failures are counted in, from the first one.
    pub(crate) interval: Duration,
    /// How long a locked-out IP is refused.
    pub(crate) lock_duration: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

impl Failures {
    /// Whether this entry no longer matters at `now`: its lock or its window is over.
    fn finished(&self, policy: &Policy, now: Instant) -> bool {
        match self.locked_until {
            Some(until) => now >= until,
            None => now.saturating_duration_since(self.first) >= policy.interval,
        }
    }
}

/// The failure counts per IP.
#[derive(Debug)]
pub(crate) struct LoginLimiter {
    policy: Policy,
    ips: Mutex<HashMap<IpAddr, Failures>>,
}

impl LoginLimiter {
    pub(crate) fn new(policy: Policy) -> LoginLimiter {
        LoginLimiter { policy, ips: Mutex::new(HashMap::new()) }
    }

    fn ips(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.ips.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(retry_after)` while `ip` is locked out at `now`.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut ips = self.ips();
        match ips.get(&ip) {
            Some(entry) if entry.finished(&self.policy, now) => {
                ips.remove(&ip);
                Ok(())
            }
            Some(Failures { locked_until: Some(until), .. }) => Err(until.saturating_duration_since(now)),
            _ => Ok(()),
        }
    }

    /// Counts a failed login from `ip`; `Some(lock_duration)` when this one locked it out.
    pub(crate) fn failure(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let policy = self.policy;
        let mut ips = self.ips();
        if !ips.contains_key(&ip) && ips.len() >= MAX_TRACKED {
            ips.retain(|_, entry| !entry.finished(&policy, now));
            if ips.len() >= MAX_TRACKED {
                let oldest = ips.iter().min_by_key(|(_, entry)| entry.first).map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    ips.remove(&oldest);
                }
            }
        }
        let entry = ips.entry(ip).or_insert(Failures { count: 0, first: now, locked_until: None });
        if entry.finished(&policy, now) {
            *entry = Failures { count: 0, first: now, locked_until: None };
        }
        if entry.locked_until.is_some() {
            return None;
        }
        entry.count += 1;
        if entry.count >= policy.max_attempts {
            entry.locked_until = Some(now + policy.lock_duration);
            return Some(policy.lock_duration);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy =
        Policy { max_attempts: 3, interval: Duration::from_secs(60), lock_duration: Duration::from_secs(10) };

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn locks_after_max_attempts_within_the_interval_until_the_lock_ends() {
        let limiter = LoginLimiter::new(POLICY);
        let t0 = Instant::now();
        assert_eq!(limiter.failure(ip(1), t0), None);
        assert_eq!(limiter.failure(ip(1), t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.check(ip(1), t0 + Duration::from_secs(2)), Ok(()));
        assert_eq!(limiter.failure(ip(1), t0 + Duration::from_secs(2)), Some(POLICY.lock_duration));
        assert_eq!(limiter.check(ip(1), t0 + Duration::from_secs(5)), Err(Duration::from_secs(7)));
        assert_eq!(limiter.check(ip(2), t0 + Duration::from_secs(5)), Ok(()), "other IPs are not locked");
        // Failures while locked neither count nor log a second lock-out.
        assert_eq!(limiter.failure(ip(1), t0 + Duration::from_secs(6)), None);
        assert_eq!(limiter.check(ip(1), t0 + Duration::from_secs(12)), Ok(()));
        assert_eq!(limiter.failure(ip(1), t0 + Duration::from_secs(13)), None, "a fresh count");
    }

    #[test]
    fn failures_spread_over_more_than_the_interval_never_lock() {
        let limiter = LoginLimiter::new(POLICY);
        let t0 = Instant::now();
        for n in 0..10 {
            assert_eq!(limiter.failure(ip(1), t0 + POLICY.interval * n), None);
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = LoginLimiter::new(POLICY);
        let t0 = Instant::now();
        for n in 0..(MAX_TRACKED as u32 * 2) {
            limiter.failure(ip(n), t0);
        }
        assert_eq!(limiter.ips().len(), MAX_TRACKED);
    }
}
