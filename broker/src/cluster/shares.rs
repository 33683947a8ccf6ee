//! Share groups whose strategy is `sticky` or `hash`, across nodes.
//!
//! A share group's NATS queue group gives each message to a node at random: EMQX's `random`,
//! and with each node taking its own members in turn, close to `round_robin`. But `sticky`
//! (one member gets every message while it stays) and `hash` (one publisher's messages go to
//! one member, in order) need the same pick on every node, and a message that went through a
//! node picked at random could overtake the one before it. So with these two strategies the
//! publishing node picks:
//!
//! - Every node says in its heartbeat which share groups it has members of, and since when
//!   ([`Held`]); every node keeps what the running nodes said ([`View`]).
//! - For a message it publishes, a node picks one node for each share group whose filter
//!   matches ([`View::pick`]): for `sticky` the node that has held members of the group the
//!   longest, for `hash` one by the publisher's client id (a hash that comes out the same on
//!   every node). That node's own strategy then picks the member (`router::shared`), so one
//!   member gets them.
//! - The message goes to that node on a subject of its own (`subject::share_root`), one NATS
//!   connection after the other in publishing order, and that node answers once a member took
//!   it. A node that answers that none did, does not answer (it died: NATS says no one
//!   listens), or does not answer in time ([`ANSWER_TIMEOUT`]) has the message redispatched to
//!   the group's queue group ([`Pending`]).
//! - The copy on the topic's subject names the groups served so (`HANDLED_HEADER`), and
//!   their queue groups let it pass. A group the publishing node has not heard of yet (a node's
//!   first member subscribed a moment ago) is served by its queue group as before: nothing is
//!   missed while the nodes' views settle.
//!
//! The cost: heartbeats carry the node's share groups (only with these two strategies), a
//! message matching such a group is sent once more (and answered), and every publish on a
//! node that knows of such groups tests its topic against each group's filter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::router::{ShareGroup, Strategy};

/// How long a node that was sent a share group's message may take to say a member took it,
/// before the message is redispatched to the group's queue group.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A share group a node has members of, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Held {
    /// The share name (`$queue/` is the group `$queue`).
    pub(crate) group: String,
    /// The filter, without `$share/<group>/`.
    pub(crate) path: String,
    /// Since when the node has had members of it (ms since the Unix epoch, its own clock).
    pub(crate) since_ms: u64,
}

/// One share group as the running nodes hold it.
#[derive(Debug)]
pub(crate) struct Spread {
    pub(crate) share: Arc<ShareGroup>,
    /// Its NATS queue group.
    pub(crate) queue: String,
    /// The nodes with members, by since when (then by name): the same order on every node.
    pub(crate) nodes: Vec<(u64, String)>,
}

/// The share groups of every running node, this one's included.
#[derive(Debug, Default)]
pub(crate) struct View {
    groups: Vec<Spread>,
}

impl View {
    /// The view of `held`: each node's name and the groups it has members of. `queue` names a
    /// group's NATS queue group.
    pub(crate) fn build<'a>(
        held: impl IntoIterator<Item = (&'a str, &'a [Held])>,
        queue: impl Fn(&str, &str) -> String,
    ) -> View {
        let mut by_queue: HashMap<String, Spread> = HashMap::new();
        for (node, groups) in held {
            for held in groups {
                let queue = queue(&held.group, &held.path);
                let spread = by_queue.entry(queue.clone()).or_insert_with(|| Spread {
                    share: Arc::new(ShareGroup { name: held.group.as_str().into(), path: held.path.as_str().into() }),
                    queue,
                    nodes: Vec::new(),
                });
                spread.nodes.push((held.since_ms, node.to_owned()));
            }
        }
        let mut groups: Vec<Spread> = by_queue.into_values().collect();
        for spread in &mut groups {
            spread.nodes.sort();
        }
        groups.sort_by(|a, b| a.queue.cmp(&b.queue));
        View { groups }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every group known, for `broker ctl cluster shares`.
    pub(crate) fn groups(&self) -> &[Spread] {
        &self.groups
    }

    /// For a message on `topic` from client `publisher`: each share group whose filter
    /// matches it, and the node that serves it there by `strategy` (`sticky` or `hash`).
    pub(crate) fn pick<'a>(
        &'a self,
        topic: &'a str,
        publisher: &'a str,
        strategy: Strategy,
    ) -> impl Iterator<Item = (&'a Spread, &'a str)> + 'a {
        self.groups.iter().filter(move |g| plugin_api::topic::matches(&g.share.path, topic)).filter_map(move |g| {
            let index = match strategy {
                Strategy::Hash => (super::subject::stable_hash(publisher.as_bytes()) % g.nodes.len() as u64) as usize,
                _ => 0,
            };
            g.nodes.get(index).map(|(_, node)| (g, node.as_str()))
        })
    }
}

/// The share groups' messages this node sent to another node and that no answer has come for
/// yet, by number (the last token of the subject they are answered on).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    next: AtomicU64,
    sent: Mutex<HashMap<u64, Sent>>,
}

/// A message sent for a share group, the group, and when.
type Sent = (Message, Arc<ShareGroup>, Instant);

impl Pending {
    /// Keeps `message`, about to be sent for `share`, until its answer; its number.
    pub(crate) fn add(&self, message: Message, share: Arc<ShareGroup>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        crate::lock(&self.sent).insert(id, (message, share, Instant::now()));
        id
    }

    /// The message numbered `id`, answered: `None` if it was answered before (or timed out).
    pub(crate) fn answered(&self, id: u64) -> Option<(Message, Arc<ShareGroup>)> {
        crate::lock(&self.sent).remove(&id).map(|(message, share, _)| (message, share))
    }

    /// The messages sent more than `timeout` ago and still not answered, taken out.
    pub(crate) fn expired(&self, timeout: Duration) -> Vec<(Message, Arc<ShareGroup>)> {
        let mut sent = crate::lock(&self.sent);
        let old: Vec<u64> = sent.iter().filter(|(_, (_, _, at))| at.elapsed() > timeout).map(|(id, _)| *id).collect();
        old.into_iter().filter_map(|id| sent.remove(&id)).map(|(message, share, _)| (message, share)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(group: &str, path: &str, since_ms: u64) -> Held {
        Held { group: group.to_owned(), path: path.to_owned(), since_ms }
    }

    fn view(nodes: &[(&str, Vec<Held>)]) -> View {
        View::build(nodes.iter().map(|(n, h)| (*n, h.as_slice())), |g, p| format!("{g}|{p}"))
    }

    #[test]
    fn sticky_picks_the_node_that_held_members_longest_whoever_looks() {
        let a = vec![("n1", vec![held("g", "s/#", 20)]), ("n2", vec![held("g", "s/#", 10)]), ("n3", vec![])];
        let mut b = a.clone();
        b.reverse();
        for v in [view(&a), view(&b)] {
            let picked: Vec<_> = v.pick("s/1", "p", Strategy::Sticky).map(|(g, n)| (g.queue.clone(), n)).collect();
            assert_eq!(picked, [("g|s/#".to_owned(), "n2")]);
            assert_eq!(v.pick("t/1", "p", Strategy::Sticky).count(), 0, "not its filter");
            assert_eq!(v.pick("$SYS/s", "p", Strategy::Sticky).count(), 0);
        }
    }

    #[test]
    fn hash_picks_one_node_per_publisher_and_spreads_publishers() {
        let nodes: Vec<(&str, Vec<Held>)> = ["n1", "n2", "n3"].iter().map(|n| (*n, vec![held("g", "#", 1)])).collect();
        let v = view(&nodes);
        let mut used = std::collections::HashSet::new();
        for p in 0..30 {
            let publisher = format!("client-{p}");
            let first: Vec<&str> = v.pick("x", &publisher, Strategy::Hash).map(|(_, n)| n).collect();
            assert_eq!(first.len(), 1);
            for _ in 0..3 {
                let again: Vec<&str> = v.pick("x", &publisher, Strategy::Hash).map(|(_, n)| n).collect();
                assert_eq!(again, first, "the same node for one publisher");
            }
            used.insert(first[0].to_owned());
        }
        assert_eq!(used.len(), 3, "30 publishers over three nodes use each");
    }

    #[test]
    fn each_matching_group_gets_its_pick() {
        let v = view(&[("n1", vec![held("a", "x/+", 1), held("b", "x/#", 5)]), ("n2", vec![held("b", "x/#", 2)])]);
        let mut picked: Vec<_> =
            v.pick("x/y", "p", Strategy::Sticky).map(|(g, n)| (g.share.name.to_string(), n)).collect();
        picked.sort();
        assert_eq!(picked, [("a".to_owned(), "n1"), ("b".to_owned(), "n2")]);
        assert!(view(&[]).is_empty());
    }

    #[test]
    fn pending_messages_are_answered_once_or_expire() {
        let pending = Pending::default();
        let share = Arc::new(ShareGroup { name: "g".into(), path: "t".into() });
        let head = crate::message::Head {
            qos: 1,
            retain: false,
            expires_at: None,
            publisher: 0,
            timestamp_ms: 0,
            origin: None,
        };
        let message = Message::new(head, "t", b"m", &[]);
        let first = pending.add(message.clone(), share.clone());
        let second = pending.add(message, share);
        assert_ne!(first, second);
        assert!(pending.answered(first).is_some());
        assert!(pending.answered(first).is_none(), "once");
        assert!(pending.expired(Duration::from_secs(60)).is_empty());
        assert_eq!(pending.expired(Duration::ZERO).len(), 1);
        assert!(pending.answered(second).is_none(), "expired, taken out");
    }
}
