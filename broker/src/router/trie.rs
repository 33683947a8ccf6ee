//! The subscription trie: one level a topic level, `+` and `#` as children of their own.
//! Empty levels are removed as soon as their last subscription goes, so nothing per filter
//! outlives its subscriptions.

use foldhash::HashMap;

use super::shared::Group;
use super::{Filter, Subscriber};

/// One level of the trie and the subscriptions whose filter ends here. Children are hashed
/// with foldhash (randomly seeded): SipHash was 6 % of the broker's time in a QoS 0 flood.
#[derive(Debug, Default)]
pub(super) struct Level {
    children: HashMap<Box<str>, Level>,
    pub(super) subscribers: Vec<Subscriber>,
    pub(super) groups: Vec<Group>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }

    /// Adds or replaces a subscription; true if it is new.
    pub(super) fn insert(&mut self, filter: &Filter<'_>, subscriber: Subscriber) -> bool {
        let mut level = self;
        for name in filter.path.split('/') {
            level = level.children.entry(name.into()).or_default();
        }
        let session = subscriber.session.id;
        let list = match filter.group {
            None => &mut level.subscribers,
            Some(name) => {
                let index = match level.groups.iter().position(|g| &*g.name == name) {
                    Some(index) => index,
                    None => {
                        level.groups.push(Group::new(name, filter.path));
                        level.groups.len() - 1
                    }
                };
                &mut level.groups[index].members
            }
        };
        match list.iter_mut().find(|s| s.session.id == session) {
            Some(existing) => {
                *existing = subscriber;
                false
            }
            None => {
                list.push(subscriber);
                true
            }
        }
    }

    /// Removes session `session`'s subscription; true if it existed. Levels left empty go.
    pub(super) fn remove(&mut self, filter: &Filter<'_>, session: u64) -> bool {
        self.remove_at(filter.path.split('/'), filter.group, session)
    }

    fn remove_at<'a>(&mut self, mut names: impl Iterator<Item = &'a str>, group: Option<&str>, session: u64) -> bool {
        let Some(name) = names.next() else {
            let list = match group {
                None => &mut self.subscribers,
                Some(name) => match self.groups.iter_mut().find(|g| &*g.name == name) {
                    Some(group) => &mut group.members,
                    None => return false,
                },
            };
            let Some(index) = list.iter().position(|s| s.session.id == session) else {
                return false;
            };
            list.swap_remove(index);
            self.groups.retain(|g| !g.members.is_empty());
            return true;
        };
        let Some(child) = self.children.get_mut(name) else {
            return false;
        };
        let removed = child.remove_at(names, group, session);
        if child.is_empty() {
            self.children.remove(name);
            self.children.shrink_to_fit();
        }
        removed
    }

    /// The level of `path` (a filter), if it has one.
    pub(super) fn at(&self, path: &str) -> Option<&Level> {
        path.split('/').try_fold(self, |level, name| level.children.get(name))
    }

    /// Calls `found` with every level whose filter matches `topic`. A topic starting with `$`
    /// is never matched by a filter starting with a wildcard (MQTT-4.7.2-1).
    pub(super) fn matches(&self, topic: &str, found: &mut impl FnMut(&Level)) {
        self.match_rest(Some(topic), topic.starts_with('$'), found);
    }

    fn match_rest(&self, rest: Option<&str>, dollar: bool, found: &mut impl FnMut(&Level)) {
        if !dollar {
            // `#` matches the parent level too: `a/#` matches `a` (MQTT 5 §4.7.1.2).
            if let Some(hash) = self.children.get("#") {
                found(hash);
            }
        }
        let Some(rest) = rest else {
            found(self);
            return;
        };
        let (name, next) = match rest.split_once('/') {
            Some((name, next)) => (name, Some(next)),
            None => (rest, None),
        };
        if let Some(child) = self.children.get(name) {
            child.match_rest(next, false, found);
        }
        if !dollar {
            if let Some(plus) = self.children.get("+") {
                plus.match_rest(next, false, found);
            }
        }
    }

    /// Levels with at least one subscription.
    pub(super) fn count_filters(&self) -> usize {
        let here = usize::from(!self.subscribers.is_empty() || !self.groups.is_empty());
        here + self.children.values().map(Level::count_filters).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mqtt::subscribe::SubscriptionOptions;
    use crate::session::Session;

    fn subscriber(id: u64) -> Subscriber {
        Subscriber {
            session: Arc::new(Session::new(id, format!("c{id}").into())),
            options: SubscriptionOptions::default(),
            id: None,
        }
    }

    fn matching(trie: &Level, topic: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        trie.matches(topic, &mut |level| ids.extend(level.subscribers.iter().map(|s| s.session.id)));
        ids.sort();
        ids
    }

    fn filter(path: &str) -> Filter<'_> {
        Filter { group: None, path }
    }

    #[test]
    fn wildcards_match_as_mqtt_says() {
        let mut trie = Level::default();
        for (i, f) in ["a/b", "a/+", "a/#", "#", "+/b", "+", "$SYS/#", "a/+/c", "/a"].iter().enumerate() {
            assert!(trie.insert(&filter(f), subscriber(i as u64)));
        }
        assert_eq!(matching(&trie, "a/b"), vec![0, 1, 2, 3, 4]);
        assert_eq!(matching(&trie, "a"), vec![2, 3, 5], "a/# matches a");
        assert_eq!(matching(&trie, "a/x/c"), vec![2, 3, 7]);
        assert_eq!(matching(&trie, "$SYS/x"), vec![6], "no leading wildcard for $ topics");
        assert_eq!(matching(&trie, "/a"), vec![3, 8]);
        assert_eq!(matching(&trie, "a/"), vec![1, 2, 3]);
    }

    #[test]
    fn empty_levels_go_with_their_last_subscription() {
        let mut trie = Level::default();
        assert!(trie.insert(&filter("x/y/z"), subscriber(1)));
        assert!(!trie.insert(&filter("x/y/z"), subscriber(1)), "a second subscribe replaces");
        assert!(trie.insert(&filter("x/y"), subscriber(2)));
        assert!(trie.insert(&Filter { group: Some("g"), path: "x/y/z" }, subscriber(3)));
        assert_eq!(trie.count_filters(), 2);
        assert!(!trie.remove(&filter("x/y/z"), 9));
        assert!(trie.remove(&filter("x/y/z"), 1));
        assert!(trie.remove(&Filter { group: Some("g"), path: "x/y/z" }, 3));
        assert!(trie.remove(&filter("x/y"), 2));
        assert!(trie.is_empty(), "{trie:?}");
    }
}
