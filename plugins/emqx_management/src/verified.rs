//! A short memory of credentials that passed a slow hash check, so the dashboard's polling
//! (several requests a second, each with basic auth) does not pay Argon2 or bcrypt each time.
//!
//! Why this is safe:
//! - Only a *success* is remembered. A wrong password always pays the full hash and counts
//!   towards the lock-out, so the cache cannot speed up guessing.
//! - An entry is the SHA-256 of the exact `username:password` presented; a hit needs the same
//!   bytes again (SHA-256 is second-preimage resistant), never something "close".
//! - Entries are compared in constant time, one by one, so a lookup tells nothing about how
//!   near a wrong guess came to a remembered digest.
//! - It lives in the plugin's memory only, for [`TTL`], at most [`CAPACITY`] entries; a
//!   reload (new password) starts empty. A SHA-256 of the password is weaker than its
//!   Argon2 hash, but reading it needs this process's memory, where every request's plain
//!   credentials pass anyway.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// How long a verified login is remembered.
pub(crate) const TTL: Duration = Duration::from_secs(60);
/// How many verified logins are remembered (one user: normally one).
pub(crate) const CAPACITY: usize = 16;

/// Digests of recently verified credentials, with when they were verified.
#[derive(Debug, Default)]
pub(crate) struct VerifiedCache {
    entries: Mutex<Vec<([u8; 32], Instant)>>,
}

/// The cache key of presented credentials (the username's length first, so no two pairs
/// make the same text).
pub(crate) fn key(username: &str, password: &str) -> [u8; 32] {
    crate::password::sha256(format!("{}:{username}:{password}", username.len()).as_bytes())
}

impl VerifiedCache {
    /// Whether `key` was verified less than [`TTL`] before `now`.
    pub(crate) fn contains(&self, key: &[u8; 32], now: Instant) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(_, at)| now.saturating_duration_since(*at) < TTL);
        // Every entry is compared, whatever matches first.
        entries.iter().fold(subtle::Choice::from(0), |found, (k, _)| found | k.ct_eq(key)).into()
    }

    /// Remembers a verified `key` from `now`, forgetting the oldest entry when full.
    pub(crate) fn insert(&self, key: [u8; 32], now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, _)| k != &key);
        if entries.len() >= CAPACITY {
            entries.remove(0);
        }
        entries.push((key, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_the_ttl_only_and_stays_bounded() {
        let cache = VerifiedCache::default();
        let t0 = Instant::now();
        let k = key("admin", "s3cret");
        assert!(!cache.contains(&k, t0));
        cache.insert(k, t0);
        assert!(cache.contains(&k, t0 + TTL / 2));
        assert!(!cache.contains(&key("admin", "s3cret2"), t0));
        cache.insert(key("admin", "s3:cret"), t0);
        assert!(!cache.contains(&key("admin:s3", "cret"), t0 + TTL / 2));
        assert!(!cache.contains(&k, t0 + TTL));
        for n in 0..CAPACITY * 2 {
            cache.insert(key("admin", &n.to_string()), t0);
        }
        assert_eq!(cache.entries.lock().unwrap().len(), CAPACITY);
    }
}
