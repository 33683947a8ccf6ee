//! The per-connection ACL cache (EMQX's `enable_acl_cache`, `acl_cache_max_size`,
//! `acl_cache_ttl`): a client that publishes to the same few topics asks the
//! `client.check_acl` chain once per topic and minute, not once per message.
//!
//! Entries are dropped when they expire, oldest first when the cache is full, and all at once
//! when the hook table changes (a plugin loaded or unloaded) or a plugin ran a `ctl` command
//! (`broker ctl acl reload`): the host cannot tell what the command changed.

use std::collections::VecDeque;
use std::time::Instant;

use crate::node::AclCacheSettings;

#[derive(Debug)]
struct Entry {
    action: u32,
    topic: Box<str>,
    denied: bool,
    expires: Instant,
}

/// One connection's cached ACL answers.
#[derive(Debug)]
pub(super) struct AclCache {
    settings: AclCacheSettings,
    /// The generation of ACL answers the entries belong to ([`crate::hooks::Hooks::acl_generation`]).
    generation: u64,
    /// Oldest first.
    entries: VecDeque<Entry>,
}

impl AclCache {
    pub(super) fn new(settings: AclCacheSettings) -> AclCache {
        AclCache { settings, generation: 0, entries: VecDeque::new() }
    }

    /// The cached answer for `action` on `topic`: `Some(denied)`, or `None` if the chain must
    /// be asked.
    pub(super) fn get(&mut self, generation: u64, action: u32, topic: &str, now: Instant) -> Option<bool> {
        self.follow(generation);
        let at = self.entries.iter().rposition(|e| e.action == action && &*e.topic == topic)?;
        if self.entries[at].expires > now {
            return Some(self.entries[at].denied);
        }
        self.entries.retain(|e| e.expires > now);
        None
    }

    /// Forgets every answer of an older generation.
    fn follow(&mut self, generation: u64) {
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
        }
    }

    /// Remembers the chain's answer.
    pub(super) fn put(&mut self, generation: u64, action: u32, topic: &str, denied: bool, now: Instant) {
        if self.settings.max_size == 0 {
            return;
        }
        self.follow(generation);
        if self.entries.len() >= self.settings.max_size {
            self.entries.retain(|e| e.expires > now);
            if self.entries.len() >= self.settings.max_size {
                self.entries.pop_front();
            }
        }
        self.entries.push_back(Entry { action, topic: topic.into(), denied, expires: now + self.settings.ttl });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PUB: u32 = 1;
    const SUB: u32 = 2;

    fn cache(max_size: usize) -> AclCache {
        AclCache::new(AclCacheSettings { max_size, ttl: Duration::from_secs(60) })
    }

    #[test]
    fn answers_by_action_and_topic() {
        let (mut c, now) = (cache(32), Instant::now());
        assert_eq!(c.get(0, PUB, "a", now), None);
        c.put(0, PUB, "a", true, now);
        c.put(0, SUB, "a", false, now);
        assert_eq!(c.get(0, PUB, "a", now), Some(true));
        assert_eq!(c.get(0, SUB, "a", now), Some(false));
        assert_eq!(c.get(0, PUB, "b", now), None);
    }

    #[test]
    fn entries_expire() {
        let (mut c, now) = (cache(32), Instant::now());
        c.put(0, PUB, "a", true, now);
        assert_eq!(c.get(0, PUB, "a", now + Duration::from_secs(59)), Some(true));
        assert_eq!(c.get(0, PUB, "a", now + Duration::from_secs(60)), None);
        assert!(c.entries.is_empty(), "expired entries are dropped");
    }

    #[test]
    fn the_oldest_entry_goes_when_full() {
        let (mut c, now) = (cache(2), Instant::now());
        c.put(0, PUB, "a", false, now);
        c.put(0, PUB, "b", false, now);
        c.put(0, PUB, "c", false, now);
        assert_eq!(c.get(0, PUB, "a", now), None);
        assert_eq!(c.get(0, PUB, "b", now), Some(false));
        assert_eq!(c.get(0, PUB, "c", now), Some(false));
    }

    #[test]
    fn a_new_generation_empties_it() {
        let (mut c, now) = (cache(32), Instant::now());
        c.put(0, PUB, "a", true, now);
        assert_eq!(c.get(1, PUB, "a", now), None);
        assert!(c.entries.is_empty());
        c.put(1, PUB, "a", false, now);
        assert_eq!(c.get(1, PUB, "a", now), Some(false));
    }

    #[test]
    fn size_zero_keeps_nothing() {
        let (mut c, now) = (cache(0), Instant::now());
        c.put(0, PUB, "a", true, now);
        assert_eq!(c.get(0, PUB, "a", now), None);
    }
}
