//! A small cache of the service's answers, so a burst of CONNECTs with the same credentials,
//! or of ACL checks on the same topic from many clients, asks the service once.
//!
//! Bounded (`cache_max_size` answers, least recently used dropped first) and short-lived
//! (`cache_ttl`). The key is a SHA-256 digest of the whole request (which request, method,
//! URL and every param after the placeholders are filled in), so two requests share an answer
//! only when the service would have seen the same request, and no password is kept in memory.
//!
//! Allows and denies are both kept: a client retrying with a wrong password in a loop, or a
//! fleet of misconfigured devices, is the flood the cache is for, and a deny the service gave
//! is as much its answer as an allow (EMQX's own ACL cache keeps both). Either is at most
//! `cache_ttl` old, and `broker ctl auth_http cache clean` forgets them all at once. A request
//! that got no HTTP answer (refused, timed out) is never kept: it is not the service's answer,
//! and the next request should find out as soon as the service is back.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use sha2::{Digest, Sha256};

/// The digest of one request.
pub(crate) type Key = [u8; 32];

/// Makes the key of a request from its parts (each length-prefixed, so no two different
/// requests run together into the same bytes).
pub(crate) fn key<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Key {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Answers by request key, each with the time it expires.
#[derive(Debug)]
pub(crate) struct Cache<V> {
    ttl: Duration,
    entries: Option<Mutex<LruCache<Key, (Instant, V)>>>,
}

impl<V: Copy> Cache<V> {
    /// A cache of at most `max_size` answers, each kept for `ttl`. Either one zero: no cache.
    pub(crate) fn new(max_size: usize, ttl: Duration) -> Cache<V> {
        let entries = NonZeroUsize::new(max_size).filter(|_| !ttl.is_zero()).map(|n| Mutex::new(LruCache::new(n)));
        Cache { ttl, entries }
    }

    fn entries(&self) -> Option<std::sync::MutexGuard<'_, LruCache<Key, (Instant, V)>>> {
        self.entries.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The answer for `key` if one was kept and has not expired at `now`.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<V> {
        let mut entries = self.entries()?;
        match entries.get(key) {
            Some(&(expires, value)) if now < expires => Some(value),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `key` from `now` for the TTL.
    pub(crate) fn put(&self, key: Key, value: V, now: Instant) {
        if let Some(mut entries) = self.entries() {
            entries.put(key, (now + self.ttl, value));
        }
    }

    /// Forgets every answer; returns how many there were.
    pub(crate) fn clear(&self) -> usize {
        self.entries().map_or(0, |mut entries| {
            let n = entries.len();
            entries.clear();
            n
        })
    }

    /// How many answers are kept (expired ones included until they are looked up or pushed
    /// out).
    pub(crate) fn len(&self) -> usize {
        self.entries().map_or(0, |entries| entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_after_the_ttl() {
        let cache = Cache::new(4, Duration::from_secs(10));
        let t0 = Instant::now();
        let k = key([&b"a"[..]]);
        cache.put(k, true, t0);
        assert_eq!(cache.get(&k, t0 + Duration::from_secs(9)), Some(true));
        assert_eq!(cache.get(&k, t0 + Duration::from_secs(10)), None);
        assert_eq!(cache.len(), 0, "an expired answer is dropped when found");
    }

    #[test]
    fn the_least_recently_used_answer_goes_first() {
        let cache = Cache::new(2, Duration::from_secs(10));
        let now = Instant::now();
        let (a, b, c) = (key([&b"a"[..]]), key([&b"b"[..]]), key([&b"c"[..]]));
        cache.put(a, 1, now);
        cache.put(b, 2, now);
        assert_eq!(cache.get(&a, now), Some(1));
        cache.put(c, 3, now);
        assert_eq!((cache.get(&a, now), cache.get(&b, now), cache.get(&c, now)), (Some(1), None, Some(3)));
        assert_eq!(cache.clear(), 2);
        assert_eq!(cache.get(&a, now), None);
    }

    #[test]
    fn zero_size_or_ttl_is_no_cache() {
        let now = Instant::now();
        for cache in [Cache::new(0, Duration::from_secs(1)), Cache::new(8, Duration::ZERO)] {
            cache.put(key([&b"a"[..]]), 1, now);
            assert_eq!(cache.get(&key([&b"a"[..]]), now), None);
        }
    }

    #[test]
    fn parts_do_not_run_together() {
        assert_ne!(key([&b"ab"[..], b"c"]), key([&b"a"[..], b"bc"]));
    }
}
