//! Share groups across nodes, when the strategy is not `random`: the publishing node picks the
//! node whose member gets a message.
//!
//! A share group's NATS queue group gives each message to a node at random: EMQX's `random`,
//! which the queue groups do by themselves. The other strategies need the same pick on every
//! node: `round_robin` (each member in turn), `sticky` (one member gets every message while it
//! stays) and `hash` (one publisher's messages go to one member, in order); and a message that
//! went through a node picked at random could overtake the one before it. So with these the
//! publishing node picks:
//!
//! - Every node says in its heartbeat which share groups it has members of, how many, and
//!   since when ([`Held`]); every node keeps what the running nodes said ([`View`]).
//! - For a message it publishes, a node picks one node for each share group whose filter
//!   matches ([`View::pick`]): for `round_robin` each node in turn, as many turns as it has
//!   members; for `sticky` the node that has held members of the group the longest; for `hash`
//!   one by the publisher's client id (a hash that comes out the same on every node). That
//!   node's own strategy then picks the member (`router::shared`), so with one publisher
//!   `round_robin` takes every member in turn, and `sticky` and `hash` keep to one member.
//! - The message goes to that node on a subject of its own (`subject::share_root`), one NATS
//!   connection after the other in publishing order, and that node answers once a member took
//!   it (once for all it took in one go, [`Answers`]). A node that answers that none did, does not answer (it died: NATS says no one
//!   listens), or does not answer in time ([`ANSWER_TIMEOUT`]) has the message redispatched to
//!   the group's queue group ([`Pending`]).
//! - The copy on the topic's subject names the groups served so (`HANDLED_HEADER`), and
//!   their queue groups let it pass. A group the publishing node has not heard of yet (a node's
//!   first member subscribed a moment ago) is served by its queue group: nothing is missed
//!   while the nodes' views settle.
//!
//! The cost (why `random` is left to the queue groups): a message for a share group with
//! members on another node crosses NATS twice instead of once (the copy on the topic's
//! subject, which the queue group still receives and lets pass; the one sent to the node
//! picked), and is answered; heartbeats carry the node's share groups; every publish tests its
//! topic against the filter of each such group in the cluster (a list: fine for tens of
//! groups, not for tens of thousands).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::router::{ShareGroup, Strategy};

/// How long a node that was sent a share group's message may take to say a member took it,
/// before the message is redispatched to the group's queue group.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many share groups' messages from other nodes are taken before they are
/// answered (one answer a sending node).
pub(super) const ANSWER_BATCH: usize = 256;

/// The last token of the subject a node's answers to several messages go to
/// (`subject::share_ack`'s, in place of one message's number).
pub(super) const ANSWERS_TOKEN: &str = "all";

/// A node's answers to share groups' messages another node sent it, by their numbers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Answers {
    /// A member took these.
    pub(crate) taken: Vec<u64>,
    /// No member here did (the last left): to redispatch.
    pub(crate) not_taken: Vec<u64>,
}

/// A share group a node has members of, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Held {
    /// The share name (`$queue/` is the group `$queue`).
    pub(crate) group: String,
    /// The filter, without `$share/<group>/`.
    pub(crate) path: String,
    /// Since when the node has had members of it (ms since the Unix epoch, its own clock).
    pub(crate) since_ms: u64,
    /// How many.
    #[serde(default = "one")]
    pub(crate) members: u32,
}

fn one() -> u32 {
    1
}

/// A node with members of a share group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Holder {
    pub(crate) since_ms: u64,
    pub(crate) node: String,
    pub(crate) members: u32,
}

/// One share group as the running nodes hold it.
#[derive(Debug)]
pub(crate) struct Spread {
    pub(crate) share: Arc<ShareGroup>,
    /// Its NATS queue group.
    pub(crate) queue: String,
    /// The nodes with members, by since when (then by name): the same order on every node.
    pub(crate) nodes: Vec<Holder>,
    /// `round_robin`'s next turn (kept when the view is made again).
    turn: AtomicUsize,
}

impl Spread {
    /// The index of the node whose members' share of all members `n` falls in (modulo all).
    fn by_members(&self, n: usize) -> usize {
        let total: usize = self.nodes.iter().map(|h| h.members as usize).sum();
        let mut at = n % total.max(1);
        self.nodes
            .iter()
            .position(|h| {
                let ours = at < h.members as usize;
                at = at.saturating_sub(h.members as usize);
                ours
            })
            .unwrap_or(0)
    }
}

/// The share groups of every running node, this one's included.
#[derive(Debug, Default)]
pub(crate) struct View {
    groups: Vec<Spread>,
}

impl View {
    /// The view of `held`: each node's name and the groups it has members of. `queue` names a
    /// group's NATS queue group; `previous` is the view this one replaces (where each group's
    /// turns stand).
    pub(crate) fn build<'a>(
        held: impl IntoIterator<Item = (&'a str, &'a [Held])>,
        previous: &View,
        queue: impl Fn(&str, &str) -> String,
    ) -> View {
        let mut by_queue: HashMap<String, Spread> = HashMap::new();
        for (node, groups) in held {
            for held in groups {
                let queue = queue(&held.group, &held.path);
                let spread = by_queue.entry(queue.clone()).or_insert_with(|| {
                    let turn = previous.get(&queue).map_or(0, |p| p.turn.load(Ordering::Relaxed));
                    Spread {
                        share: Arc::new(ShareGroup {
                            name: held.group.as_str().into(),
                            path: held.path.as_str().into(),
                        }),
                        queue,
                        nodes: Vec::new(),
                        turn: AtomicUsize::new(turn),
                    }
                });
                spread.nodes.push(Holder {
                    since_ms: held.since_ms,
                    node: node.to_owned(),
                    members: held.members.max(1),
                });
            }
        }
        let mut groups: Vec<Spread> = by_queue.into_values().collect();
        for spread in &mut groups {
            spread.nodes.sort();
        }
        groups.sort_by(|a, b| a.queue.cmp(&b.queue));
        View { groups }
    }

    /// The group of NATS queue group `queue`.
    fn get(&self, queue: &str) -> Option<&Spread> {
        self.groups.binary_search_by(|g| g.queue.as_str().cmp(queue)).ok().map(|i| &self.groups[i])
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every group known, for `broker ctl cluster shares`.
    pub(crate) fn groups(&self) -> &[Spread] {
        &self.groups
    }

    /// For a message on `topic` from client `publisher`: each share group whose filter
    /// matches it, and the node that serves it there by `strategy`.
    pub(crate) fn pick<'a>(
        &'a self,
        topic: &'a str,
        publisher: &'a str,
        strategy: Strategy,
    ) -> impl Iterator<Item = (&'a Spread, &'a str)> + 'a {
        self.groups.iter().filter(move |g| plugin_api::topic::matches(&g.share.path, topic)).filter_map(move |g| {
            let index = match strategy {
                Strategy::Hash => (super::subject::stable_hash(publisher.as_bytes()) % g.nodes.len() as u64) as usize,
                // As many turns (or chances) to each node as it has members.
                Strategy::RoundRobin => g.by_members(g.turn.fetch_add(1, Ordering::Relaxed)),
                Strategy::Random => g.by_members(fastrand::usize(..)),
                Strategy::Sticky => 0,
            };
            g.nodes.get(index).map(|holder| (g, holder.node.as_str()))
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
        Held { group: group.to_owned(), path: path.to_owned(), since_ms, members: 1 }
    }

    fn view(nodes: &[(&str, Vec<Held>)]) -> View {
        View::build(nodes.iter().map(|(n, h)| (*n, h.as_slice())), &View::default(), |g, p| format!("{g}|{p}"))
    }

    #[test]
    fn round_robin_gives_each_node_as_many_turns_as_it_has_members_and_keeps_its_turn() {
        let mut two = held("g", "#", 1);
        two.members = 2;
        let nodes = vec![("n1", vec![two]), ("n2", vec![held("g", "#", 2)]), ("n3", vec![held("g", "#", 3)])];
        let v = view(&nodes);
        let turns: Vec<&str> = (0..8).map(|_| v.pick("x", "p", Strategy::RoundRobin).next().unwrap().1).collect();
        assert_eq!(turns, ["n1", "n1", "n2", "n3", "n1", "n1", "n2", "n3"]);
        v.pick("x", "p", Strategy::RoundRobin).for_each(drop);
        let again = View::build(nodes.iter().map(|(n, h)| (*n, h.as_slice())), &v, |g, p| format!("{g}|{p}"));
        assert_eq!(again.pick("x", "p", Strategy::RoundRobin).next().unwrap().1, "n1", "the turn goes on: n1's second");
        assert_eq!(again.pick("x", "p", Strategy::RoundRobin).next().unwrap().1, "n2");
        let mut counts = HashMap::new();
        for _ in 0..4000 {
            *counts.entry(v.pick("x", "p", Strategy::Random).next().unwrap().1).or_insert(0) += 1;
        }
        assert!((1800..2200).contains(&counts["n1"]), "random, by members: {counts:?}");
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
