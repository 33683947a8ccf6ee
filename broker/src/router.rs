//! Routing: which sessions a message goes to.
//!
//! A subscription trie (`trie`) holds every subscription, keyed by topic filter level; shared
//! subscriptions (`$share/<group>/<filter>`, and EMQX's `$queue/<filter>`) sit in the same
//! trie as groups (`shared`) of which one member gets each message. There is no router
//! thread: the publisher's own connection task matches the trie (under a read lock that many
//! publishers hold at once) and hands each matching session the shared message.

mod shared;
mod trie;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

pub(crate) use shared::ShareGroup;
pub use shared::Strategy;

use crate::mqtt::subscribe::SubscriptionOptions;
use crate::session::Session;
use shared::Pick;
use trie::Level;

/// A topic filter as a subscription names it: a plain filter, or a shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Filter<'a> {
    /// The share group (`$queue/` is the group `$queue`); `None` for a plain subscription.
    pub(crate) group: Option<&'a str>,
    /// The filter matched against topics.
    pub(crate) path: &'a str,
}

/// Why a topic filter cannot be subscribed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("invalid topic filter")]
    Invalid,
    #[error("invalid share name")]
    InvalidShare,
}

impl<'a> Filter<'a> {
    /// Parses a filter from SUBSCRIBE or UNSUBSCRIBE: `+` and `#` only as whole levels, `#`
    /// last (MQTT-4.7.1-1, MQTT-4.7.1-2); a share name without wildcards (MQTT-4.8.2-1); at
    /// most [`MAX_TOPIC_LEVELS`] levels.
    pub(crate) fn parse(filter: &'a str) -> Result<Filter<'a>, FilterError> {
        Filter::parse_within(filter, MAX_TOPIC_LEVELS)
    }

    /// [`Filter::parse`], with at most `max_levels` levels (a client's: `mqtt.max_topic_levels`,
    /// itself at most [`MAX_TOPIC_LEVELS`]); a share name is not counted.
    pub(crate) fn parse_within(filter: &'a str, max_levels: usize) -> Result<Filter<'a>, FilterError> {
        let (group, path) = if let Some(rest) = filter.strip_prefix("$share/") {
            let (group, path) = rest.split_once('/').ok_or(FilterError::InvalidShare)?;
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(FilterError::InvalidShare);
            }
            (Some(group), path)
        } else if let Some(path) = filter.strip_prefix("$queue/") {
            (Some("$queue"), path)
        } else {
            (None, filter)
        };
        if !plugin_api::topic::is_valid_filter(path) || levels(path) > max_levels.min(MAX_TOPIC_LEVELS) {
            return Err(FilterError::Invalid);
        }
        Ok(Filter { group, path })
    }

    pub(crate) fn has_wildcards(&self) -> bool {
        self.path.contains(['+', '#'])
    }
}

/// The most levels a topic name or filter may have: 201, that is 200 `/` separators
/// (mosquitto's limit, which counts separators; EMQX's default `max_topic_levels` is 128).
/// The router and the subscription trie walk a topic level by level, recursively: a
/// 65,535-byte topic of slashes has 65,536 levels, and routing one to a filter as deep
/// overflowed a network thread's stack and aborted the broker. Nothing deeper than this
/// reaches them: such a PUBLISH or will is refused as an invalid topic name, such a filter
/// as an invalid topic filter. `mqtt.max_topic_levels` may set a lower limit for clients.
pub(crate) const MAX_TOPIC_LEVELS: usize = 201;

/// How many levels `topic` (a name or filter) has: one more than its separators.
fn levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Whether `topic` is a valid topic name to publish to: not empty, no wildcards
/// (MQTT-3.3.2-2, MQTT-4.7.3-1), at most [`MAX_TOPIC_LEVELS`] levels.
pub(crate) fn is_valid_topic(topic: &str) -> bool {
    is_valid_topic_within(topic, MAX_TOPIC_LEVELS)
}

/// [`is_valid_topic`], with at most `max_levels` levels (a client's: `mqtt.max_topic_levels`,
/// itself at most [`MAX_TOPIC_LEVELS`]).
pub(crate) fn is_valid_topic_within(topic: &str, max_levels: usize) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#']) && levels(topic) <= max_levels.min(MAX_TOPIC_LEVELS)
}

/// Whether a plugin's replacement topic (`HOOK_REPLACE` in `message.publish`) can be
/// published to: a valid topic name that fits a PUBLISH (MQTT-1.5.4-1: at most 65535 bytes;
/// MQTT-1.5.4-2: no null character).
pub(crate) fn is_valid_replacement_topic(topic: &str) -> bool {
    is_valid_topic(topic) && topic.len() <= u16::MAX as usize && !topic.contains('\0')
}

/// Whether a plugin's replacement filter (`HOOK_REPLACE` in `client.subscribe` /
/// `client.unsubscribe`) can be subscribed to, as [`is_valid_replacement_topic`] asks of a topic.
pub(crate) fn is_valid_replacement_filter(filter: &str) -> bool {
    Filter::parse(filter).is_ok() && filter.len() <= u16::MAX as usize && !filter.contains('\0')
}

/// One session's subscription, as the trie keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub(crate) session: Arc<Session>,
    pub(crate) options: SubscriptionOptions,
    /// MQTT 5 Subscription Identifier.
    pub(crate) id: Option<u32>,
}

/// Where one message goes: a session, and what its matching subscriptions decide.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) session: Arc<Session>,
    /// The highest QoS of the matching subscriptions.
    pub(crate) qos: u8,
    /// A matching subscription keeps the retain flag.
    pub(crate) retain_as_published: bool,
    /// Identifiers of the matching subscriptions.
    pub(crate) ids: Vec<u32>,
    /// The share group it was picked from; `None` for plain subscriptions (a share group's
    /// target is never merged with the session's plain subscriptions).
    pub(crate) share: Option<Arc<ShareGroup>>,
}

impl Target {
    /// Where `sub`'s subscription sends a message (`share`: as that group's member).
    fn of(sub: &Subscriber, share: Option<&Arc<ShareGroup>>) -> Target {
        Target {
            session: sub.session.clone(),
            qos: sub.options.qos,
            retain_as_published: sub.options.retain_as_published,
            ids: sub.id.into_iter().collect(),
            share: share.cloned(),
        }
    }

    fn shared(&self) -> bool {
        self.share.is_some()
    }
}

/// Who published, for the subscription options and share strategies that depend on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Publisher<'a> {
    /// Session id; 0 for the broker.
    pub(crate) session: u64,
    pub(crate) client_id: &'a str,
}

/// What routing a message found besides its targets.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Routed {
    /// A subscription of the publisher's own session with No Local matched, and the session
    /// gets no copy: the message matched a subscription (EMQX and mosquitto acknowledge it as
    /// such) and the copy is dropped (`delivery.dropped.no_local`).
    pub(crate) own_no_local: bool,
}

/// Which of this node's subscriptions a message goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reach<'a> {
    /// Every matching subscription (a node alone).
    All,
    /// Plain subscriptions only: in a cluster, share groups get their messages through NATS.
    Plain,
    /// The share group `group` at filter `path` (a message a NATS queue group gave this node).
    Group { path: &'a str, group: &'a str },
}

/// Every subscription of every session.
#[derive(Debug)]
pub(crate) struct Router {
    trie: RwLock<Level>,
    strategy: Strategy,
    subscriptions: AtomicUsize,
}

impl Router {
    pub(crate) fn new(strategy: Strategy) -> Router {
        Router { trie: RwLock::new(Level::default()), strategy, subscriptions: AtomicUsize::new(0) }
    }

    /// Adds or replaces `subscriber`'s subscription to `filter`; true if it is new.
    pub(crate) fn subscribe(&self, filter: &Filter<'_>, subscriber: Subscriber) -> bool {
        let added = crate::write(&self.trie).insert(filter, subscriber);
        if added {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Removes session `session_id`'s subscription to `filter`; true if it existed.
    pub(crate) fn unsubscribe(&self, filter: &Filter<'_>, session_id: u64) -> bool {
        let removed = crate::write(&self.trie).remove(filter, session_id);
        if removed {
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The sessions a message on `topic` goes to, appended to `out`: one target a session for
    /// its plain subscriptions (the highest QoS and every identifier of those that match,
    /// MQTT-3.3.4-2, MQTT-3.3.4-3), and one a share group.
    pub(crate) fn route(&self, topic: &str, publisher: Publisher<'_>, out: &mut Vec<Target>) -> Routed {
        self.route_scoped(topic, publisher, out, true)
    }

    /// [`Router::route`] to plain subscriptions only (in a cluster, share groups are served
    /// through NATS queue groups: see [`Router::route_to_group`]).
    pub(crate) fn route_plain(&self, topic: &str, publisher: Publisher<'_>, out: &mut Vec<Target>) -> Routed {
        self.route_scoped(topic, publisher, out, false)
    }

    /// The member of share group `group` at filter `path` that gets a message (which matches
    /// `path`), picked by the strategy, appended to `out`. Session `exclude` is not picked (a
    /// message redispatched from it); 0 excludes none.
    pub(crate) fn route_to_group(
        &self,
        path: &str,
        group: &str,
        publisher: Publisher<'_>,
        exclude: u64,
        out: &mut Vec<Target>,
    ) {
        let trie = crate::read(&self.trie);
        let Some(level) = trie.at(path) else { return };
        let Some(group) = level.groups.iter().find(|g| &*g.name == group) else { return };
        if let Some(sub) = group.pick(self.strategy, &Pick { publisher: publisher.client_id, exclude }) {
            out.push(Target::of(sub, Some(&group.origin)));
        }
    }

    fn route_scoped(&self, topic: &str, publisher: Publisher<'_>, out: &mut Vec<Target>, groups: bool) -> Routed {
        let first = out.len();
        let mut own = false;
        {
            let trie = crate::read(&self.trie);
            trie.matches(topic, &mut |level| {
                for sub in &level.subscribers {
                    if sub.options.no_local && sub.session.id == publisher.session {
                        own = true;
                        continue; // MQTT-3.8.3-3
                    }
                    out.push(Target::of(sub, None));
                }
                for group in level.groups.iter().filter(|_| groups) {
                    if let Some(sub) = group.pick(self.strategy, &Pick { publisher: publisher.client_id, exclude: 0 }) {
                        out.push(Target::of(sub, Some(&group.origin)));
                    }
                }
            });
        }
        merge_overlapping(out, first);
        // A message its own publisher also subscribed to gets no copy from that subscription
        // when it says No Local; it did match it.
        Routed { own_no_local: own && !out[first..].iter().any(|t| t.session.id == publisher.session) }
    }

    /// Subscriptions held now.
    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Topic filters with at least one subscription now.
    pub(crate) fn filter_count(&self) -> usize {
        crate::read(&self.trie).count_filters()
    }
}

/// Merges the targets from `first` on that name the same session through plain
/// subscriptions into one (overlapping subscriptions deliver one copy).
fn merge_overlapping(targets: &mut Vec<Target>, first: usize) {
    if targets.len() - first < 2 {
        return;
    }
    targets[first..].sort_unstable_by_key(|t| (t.shared(), t.session.id));
    let mut kept = first;
    for next in first + 1..targets.len() {
        let (head, tail) = targets.split_at_mut(next);
        let (last, target) = (&mut head[kept], &mut tail[0]);
        if !last.shared() && !target.shared() && last.session.id == target.session.id {
            last.qos = last.qos.max(target.qos);
            last.retain_as_published |= target.retain_as_published;
            last.ids.append(&mut target.ids);
        } else {
            kept += 1;
            targets.swap(kept, next);
        }
    }
    targets.truncate(kept + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        assert_eq!(Filter::parse("a/+/#"), Ok(Filter { group: None, path: "a/+/#" }));
        assert_eq!(Filter::parse("$share/g/a/#"), Ok(Filter { group: Some("g"), path: "a/#" }));
        assert_eq!(Filter::parse("$queue/a"), Ok(Filter { group: Some("$queue"), path: "a" }));
        assert_eq!(Filter::parse("$share/g"), Err(FilterError::InvalidShare));
        assert_eq!(Filter::parse("$share//a"), Err(FilterError::InvalidShare));
        assert_eq!(Filter::parse("$share/g+/a"), Err(FilterError::InvalidShare));
        assert_eq!(Filter::parse("a/#/b"), Err(FilterError::Invalid));
        assert_eq!(Filter::parse("a+"), Err(FilterError::Invalid));
        assert_eq!(Filter::parse(""), Err(FilterError::Invalid));
        assert!(is_valid_topic("a/b") && !is_valid_topic("a/+") && !is_valid_topic(""));
        let deepest = vec!["l"; MAX_TOPIC_LEVELS].join("/");
        let deeper = format!("{deepest}/l");
        assert!(is_valid_topic(&deepest) && !is_valid_topic(&deeper) && !is_valid_topic(&"/".repeat(65_535)));
        assert!(Filter::parse(&deepest).is_ok() && Filter::parse(&format!("$share/g/{deepest}")).is_ok());
        assert_eq!(Filter::parse(&deeper), Err(FilterError::Invalid));
    }
}
