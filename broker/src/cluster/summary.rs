//! Which topics a node's subscriptions could want, in summary: the first topic levels of its
//! filters. A node publishing a message that no other node's summary covers, and that no
//! persistent session of its own wants, keeps it on the node: no NATS, no JetStream (what a
//! node's own traffic would otherwise pay for the cluster).
//!
//! - **Each node's summary is in a KV bucket** (`<prefix>_interest`, a key a node), put when it
//!   changes and again every [`REFRESH`]; every node follows the bucket (a watch with its
//!   history) and keeps the others' summaries ([`Others`]).
//! - **A summary that widens is acknowledged before the SUBACK.** A node whose first session
//!   subscribes to a filter of a new first level puts its summary, waits until its own watch
//!   has read it back (so that it has read every summary put before it), and then asks every
//!   node whose summary it read whether it has the new one in its view: a NATS request each,
//!   answered once that node's watch has read it. A node that is not running (or is cut off
//!   from NATS) has no subscription there, and NATS says at once that no one listens. So a
//!   message published on any node after the SUBACK is sent to NATS.
//! - **A node keeps nothing on itself until it is settled**: until its watch has read back its
//!   own first summary it has not read the others' either, and while NATS is away (or its
//!   watch failed) it does not know what they put. Meanwhile every message goes to NATS, as
//!   without summaries. That ordering is what makes the rule safe for a node that starts: if
//!   its summary was put after another's, its watch reads the other's before it settles; if
//!   before, the other's watch read it before the other waited for acknowledgements, and the
//!   other waits for this node's.
//! - **A running node without a summary may want anything**: one heard (its heartbeat) whose
//!   summary is not in the bucket, such as a node of an earlier version during a rolling
//!   upgrade, has every message sent to NATS.
//! - **Stopped nodes' summaries count** until they are older than `[cluster] retention` (and
//!   two refreshes): a persistent session of a node that died is revived on another node
//!   from the streams, which must hold what was published for it; and a node cut off from
//!   NATS catches up from them.
//!
//! What it costs: one KV write and an acknowledgement from each node for a SUBACK that widens a
//! node's summary (a new first level, not a new filter); none for the others. What it
//! misses: a node's summary is its filters' first levels, so a node with `a/b/#` makes every
//! `a/...` message go to NATS; a filter starting with a wildcard covers every topic but `$`
//! ones; more than [`MAX_LEVELS`] first levels make the summary cover everything.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{subject, Cluster};

/// How often a node puts its summary again, unchanged, so that the others can tell a stopped
/// node's summary by its age.
pub(super) const REFRESH: Duration = Duration::from_secs(60);

/// How long a node whose summary widened waits for the others' acknowledgements before its
/// SUBACKs go anyway (logged, naming the nodes that did not answer).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a node waits before it tries again to put its summary or to follow the bucket.
const RETRY: Duration = Duration::from_secs(1);

/// A summary of more first levels than this covers every topic.
pub(super) const MAX_LEVELS: usize = 512;

/// How a summary writes a filter's first level that is a wildcard (`+` or `#`): every level
/// but a `$` one (MQTT-4.7.2-1).
const WILD: &str = "+";

/// The first level of `filter` as a summary holds it.
pub(super) fn first_level(filter: &str) -> &str {
    match filter.split('/').next().unwrap_or_default() {
        "#" => WILD,
        level => level,
    }
}

/// A node's summary, as it is in the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Summary {
    /// The node's name.
    pub(super) node: String,
    /// Every topic (more first levels than [`MAX_LEVELS`]).
    #[serde(default)]
    pub(super) all: bool,
    /// The first levels of its filters (`+`: every level but a `$` one).
    #[serde(default)]
    pub(super) levels: BTreeSet<String>,
    /// When it was put (ms since the Unix epoch, the node's clock).
    pub(super) updated_ms: u64,
}

impl Summary {
    /// Whether this summary covers what `other` does (ignoring when each was put).
    pub(super) fn covers_summary(&self, other: &Summary) -> bool {
        self.all || (!other.all && other.levels.is_subset(&self.levels))
    }
}

/// This node's filters, counted by first level.
#[derive(Debug, Default)]
pub(super) struct Levels {
    counts: HashMap<Box<str>, usize>,
}

impl Levels {
    /// A distinct filter `filter` is now subscribed on this node: true if its first level is
    /// new (the summary widens).
    pub(super) fn add(&mut self, filter: &str) -> bool {
        let count = self.counts.entry(first_level(filter).into()).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// The last subscription to distinct filter `filter` on this node went.
    pub(super) fn remove(&mut self, filter: &str) {
        let level = first_level(filter);
        if let Some(count) = self.counts.get_mut(level) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(level);
            }
        }
    }

    /// The summary of node `node` with these filters, put at `now_ms`.
    pub(super) fn summary(&self, node: &str, now_ms: u64) -> Summary {
        let all = self.counts.len() > MAX_LEVELS;
        let levels = if all { BTreeSet::new() } else { self.counts.keys().map(|l| l.to_string()).collect() };
        Summary { node: node.to_owned(), all, levels, updated_ms: now_ms }
    }
}

/// The other nodes' summaries, merged: what a publishing node looks a topic up in.
#[derive(Debug, Default)]
pub(super) struct Others {
    /// This node has read every summary put before its own (see the module's notes), and
    /// reads on: until then every topic may be wanted.
    settled: bool,
    all: bool,
    wild: bool,
    levels: HashSet<Box<str>>,
}

impl Others {
    /// Merges `summaries` (the other nodes', in force); `settled` as the field says.
    pub(super) fn merge<'a>(settled: bool, summaries: impl IntoIterator<Item = &'a Summary>) -> Others {
        let mut others = Others { settled, ..Others::default() };
        for summary in summaries {
            others.all |= summary.all;
            for level in &summary.levels {
                if level == WILD {
                    others.wild = true;
                } else {
                    others.levels.insert(level.as_str().into());
                }
            }
        }
        others
    }

    /// Whether another node may want a message on `topic`.
    pub(super) fn may_want(&self, topic: &str) -> bool {
        if !self.settled || self.all {
            return true;
        }
        (self.wild && !topic.starts_with('$')) || self.levels.contains(first_level(topic))
    }
}

/// Whether a summary put at `updated_ms` still counts at `now_ms`: its node runs (and puts it
/// again every [`REFRESH`]), or stopped less than `retention` ago.
pub(super) fn in_force(updated_ms: u64, now_ms: u64, retention: Duration) -> bool {
    let lifetime = retention + 2 * REFRESH;
    now_ms.saturating_sub(updated_ms) <= lifetime.as_millis() as u64
}

/// A node's question to another: whether it has `node`'s summary at `revision` in its view.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Ack {
    pub(super) node: String,
    pub(super) revision: u64,
}

/// This node's side of the summaries: its own, kept in the bucket, and the others', followed.
impl Cluster {
    /// The bucket of the nodes' summaries.
    async fn summaries_bucket(&self) -> Result<&kv::Store, String> {
        self.summaries_bucket.get_or_try_init(|| self.make_summaries_bucket()).await
    }

    /// Makes (or finds) the bucket of the nodes' summaries.
    async fn make_summaries_bucket(&self) -> Result<kv::Store, String> {
        let name = subject::kv_bucket(&self.config.subject_prefix, "interest");
        self.open_bucket(name, "the first topic levels each broker node's subscriptions could want").await
    }

    /// Starts the tasks that put this node's summary, follow the others', and answer the
    /// others asking whether this node has read theirs (on the current runtime).
    pub(super) fn start_summaries(self: &Arc<Cluster>) {
        tokio::spawn(self.clone().put_summaries());
        tokio::spawn(self.clone().follow_summaries());
        tokio::spawn(self.clone().answer_summary_asks());
    }

    /// A distinct filter `path` is now subscribed on this node (called with `interest` held,
    /// so that one filter's changes are noted in their order).
    pub(super) fn level_added(&self, path: &str) {
        if crate::lock(&self.levels).add(path) {
            self.summary_wanted.fetch_add(1, Ordering::AcqRel);
            self.summary_changed.notify_one();
        }
    }

    /// The last subscription to distinct filter `path` on this node went (the summary may
    /// shrink: nothing waits for that).
    pub(super) fn level_removed(&self, path: &str) {
        crate::lock(&self.levels).remove(path);
        self.summary_changed.notify_one();
    }

    /// Whether another node may want a message on `topic` published here, as far as this node
    /// knows (see the module's notes): always while NATS is away or the view is not settled.
    pub(crate) fn others_may_want(&self, topic: &str) -> bool {
        !self.reachable() || self.others.load().may_want(topic)
    }

    /// Resolves once every widening of this node's summary asked for so far is acknowledged
    /// (or given up on); `None` if it is.
    pub(super) fn summary_in_place(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let wanted = self.summary_wanted.load(Ordering::Acquire);
        if *self.summary_done.borrow() >= wanted {
            return None;
        }
        let mut done = self.summary_done.subscribe();
        Some(async move {
            let _ = done.wait_for(|&done| done >= wanted).await;
        })
    }

    /// The nodes' summaries, as `broker ctl cluster interest` prints them: this node's, then
    /// one line for each other node whose summary it read (stopped nodes' while they count).
    pub(crate) fn interest_summaries(&self) -> String {
        let levels = |summary: &Summary| {
            if summary.all {
                return format!("every topic (more than {MAX_LEVELS} first levels)");
            }
            if summary.levels.is_empty() {
                return "nothing".to_owned();
            }
            let named: Vec<String> = summary
                .levels
                .iter()
                .map(|l| match l.as_str() {
                    WILD => "+ (every topic but $ ones)".to_owned(),
                    "" => "'' (an empty first level)".to_owned(),
                    level => crate::log_limit::clipped(level).to_string(),
                })
                .collect();
            named.join(", ")
        };
        let me = &self.config.node_name;
        let own = crate::lock(&self.levels).summary(me, crate::now_ms());
        let kept = if self.others.load().settled {
            "a message none of the others want stays here"
        } else {
            "not settled (NATS away, or the others' summaries not read yet): every message goes to NATS"
        };
        let mut lines = vec![format!("{me} (this node, {kept}) : {}", levels(&own))];
        let summaries = crate::lock(&self.summaries);
        let mut others: Vec<&Summary> = summaries.values().map(|(s, _)| s).collect();
        others.sort_by(|a, b| a.node.cmp(&b.node));
        let now = crate::now_ms();
        for summary in others.into_iter().filter(|s| in_force(s.updated_ms, now, self.config.retention)) {
            lines.push(format!("{} : {}", summary.node, levels(summary)));
        }
        lines.join("\n")
    }

    /// NATS was lost: what the others put meanwhile is not known, so the view is not settled
    /// until the bucket is read again ([`Cluster::summaries_back`]).
    pub(super) fn summaries_lost(&self) {
        self.watched.send_replace(0);
        self.rebuild_others();
    }

    /// NATS is back: the bucket is read again from its start, and this node's summary put again.
    pub(super) fn summaries_back(&self) {
        self.summary_force.store(true, Ordering::Release);
        self.summary_changed.notify_one();
        self.resync.notify_one();
    }

    /// Merges the other nodes' summaries in force into the view publishing looks up. A node
    /// that runs (its heartbeat heard) with no summary in the bucket (one of a version before
    /// summaries, or one that has not put its first yet) may want anything.
    pub(super) fn rebuild_others(&self) {
        let summaries = crate::lock(&self.summaries);
        let own = self.own_revision.load(Ordering::Acquire);
        let unknown = crate::lock(&self.peers)
            .iter()
            .any(|(node, (at, _))| at.elapsed() <= 3 * super::HEARTBEAT && !summaries.contains_key(node));
        let settled = own > 0 && *self.watched.borrow() >= own && self.reachable();
        let now = crate::now_ms();
        let retention = self.config.retention;
        let in_force = summaries.values().map(|(s, _)| s).filter(|s| in_force(s.updated_ms, now, retention));
        let everything = unknown.then(|| Summary { all: true, ..Summary::default() });
        self.others.store(Arc::new(Others::merge(settled, in_force.chain(everything.as_ref()))));
    }

    /// The task that puts this node's summary in the bucket when it changes, and again every
    /// [`REFRESH`]; a wider one is then acknowledged by the others before the SUBACKs waiting
    /// for it go ([`Cluster::summary_in_place`]).
    async fn put_summaries(self: Arc<Cluster>) {
        let mut last: Option<Summary> = None;
        let mut last_put = Instant::now();
        let failures = crate::log_limit::Throttle::new(Duration::from_secs(60));
        loop {
            let wanted = self.summary_wanted.load(Ordering::Acquire);
            let summary = crate::lock(&self.levels).summary(&self.config.node_name, crate::now_ms());
            let same = last.as_ref().is_some_and(|l| l.covers_summary(&summary) && summary.covers_summary(l));
            let forced = self.summary_force.swap(false, Ordering::AcqRel);
            let mut retry = false;
            if !same || forced || last_put.elapsed() >= REFRESH {
                match self.put_summary(&summary).await {
                    Ok(revision) => {
                        self.own_revision.store(revision, Ordering::Release);
                        self.rebuild_others();
                        self.await_summary_acks(revision).await;
                        (last, last_put) = (Some(summary), Instant::now());
                    }
                    Err(e) => {
                        // Not reaching NATS now is logged by the connection's events.
                        if self.reachable() && failures.check((), Instant::now()).is_some() {
                            tracing::warn!("cluster: cannot put this node's interest summary in NATS: {e}");
                        }
                        if self.reachable() {
                            // The bucket may be gone (a NATS server that lost its JetStream
                            // store): made again, under the same name, for the next try.
                            let _ = self.make_summaries_bucket().await;
                        }
                        self.summary_force.store(true, Ordering::Release);
                        retry = true;
                    }
                }
            }
            // A SUBACK does not wait for a summary NATS cannot take now: the node serves its
            // own clients meanwhile, as a subscription made while NATS is away.
            self.summary_done.send_if_modified(|done| {
                let moved = *done < wanted;
                *done = (*done).max(wanted);
                moved
            });
            let wait = if retry { RETRY } else { REFRESH.saturating_sub(last_put.elapsed()) };
            let _ = tokio::time::timeout(wait, self.summary_changed.notified()).await;
        }
    }

    /// Puts `summary` in the bucket: its revision.
    async fn put_summary(&self, summary: &Summary) -> Result<u64, String> {
        let bucket = self.summaries_bucket().await?;
        let value = serde_json::to_vec(summary).map_err(|e| e.to_string())?;
        let key = super::ownership::key(&self.config.node_name);
        bucket.put(key, Bytes::from(value)).await.map_err(|e| e.to_string())
    }

    /// Waits until this node's watch has read its summary at `revision` back (so that it has
    /// read every summary put before), then until every other node whose summary it read has
    /// it in its view too ([`Cluster::answer_summary_asks`]), at most [`ACK_TIMEOUT`] in all.
    /// A node not running has no subscription to be asked on: NATS answers at once that no
    /// one listens.
    async fn await_summary_acks(&self, revision: u64) {
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        let mut watched = self.watched.subscribe();
        let read_back = watched.wait_for(|&at| at >= revision);
        if !matches!(tokio::time::timeout_at(deadline, read_back).await, Ok(Ok(_))) {
            tracing::warn!("cluster: this node's interest summary was not read back from NATS within {ACK_TIMEOUT:?}");
            return;
        }
        let nodes: Vec<String> = crate::lock(&self.summaries).keys().cloned().collect();
        let ask = Ack { node: self.config.node_name.clone(), revision };
        let Ok(ask) = serde_json::to_vec(&ask) else { return };
        let ask = Bytes::from(ask);
        let asks = nodes.iter().map(|node| {
            let subject = subject::summary_ack(&self.config.subject_prefix, node);
            let request = self.client.request(subject, ask.clone());
            async move {
                match tokio::time::timeout_at(deadline, request).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => None,
                    Ok(Err(e)) => Some(format!("{node} ({e})")),
                    Err(_) => Some(format!("{node} (no answer)")),
                }
            }
        });
        let missing: Vec<String> = futures_util::future::join_all(asks).await.into_iter().flatten().collect();
        if !missing.is_empty() {
            tracing::warn!(
                nodes = %missing.join(", "),
                "cluster: not every node acknowledged this node's wider interest within {ACK_TIMEOUT:?}; what \
                 they publish for its new subscriptions may not reach it until they read it"
            );
        }
    }

    /// The task that follows the bucket: every node's summary, from the bucket's start, then
    /// each change. Read again from the start when NATS is back, or when the watch fails.
    async fn follow_summaries(self: Arc<Cluster>) {
        let failures = crate::log_limit::Throttle::new(Duration::from_secs(60));
        loop {
            self.watched.send_replace(0);
            self.rebuild_others();
            let watch =
                async { self.summaries_bucket().await?.watch_with_history(">").await.map_err(|e| e.to_string()) };
            let mut watch = match watch.await {
                Ok(watch) => watch,
                Err(e) => {
                    if self.reachable() && failures.check((), Instant::now()).is_some() {
                        tracing::warn!("cluster: cannot follow the nodes' interest summaries in NATS: {e}");
                    }
                    let _ = tokio::time::timeout(RETRY, self.resync.notified()).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => self.read_summary(entry),
                        Some(Err(e)) => {
                            tracing::debug!("cluster: following the nodes' interest summaries: {e}");
                            break;
                        }
                        None => break,
                    },
                    () = self.resync.notified() => break,
                }
            }
        }
    }

    /// A summary read from the bucket: another node's goes into the view.
    fn read_summary(&self, entry: kv::Entry) {
        let revision = entry.revision;
        let summary = match entry.operation {
            kv::Operation::Put => serde_json::from_slice::<Summary>(&entry.value)
                .map_err(|e| tracing::debug!("cluster: an unreadable interest summary: {e}"))
                .ok(),
            _ => None,
        };
        if let Some(summary) = summary.filter(|s| s.node != self.config.node_name) {
            crate::lock(&self.summaries).insert(summary.node.clone(), (summary, revision));
        }
        self.watched.send_replace(revision);
        self.rebuild_others();
    }

    /// The task that answers the other nodes asking whether this node has their summary (at a
    /// revision) in its view: once its watch has read it.
    async fn answer_summary_asks(self: Arc<Cluster>) {
        let subject = subject::summary_ack(&self.config.subject_prefix, &self.config.node_name);
        let mut asks = match self.client.subscribe(subject).await {
            Ok(asks) => asks,
            Err(e) => return tracing::error!("cluster: cannot acknowledge the other nodes' interest: {e}"),
        };
        while let Some(message) = asks.next().await {
            let (Some(reply), Ok(ask)) = (message.reply, serde_json::from_slice::<Ack>(&message.payload)) else {
                continue;
            };
            let cluster = self.clone();
            tokio::spawn(async move {
                let mut watched = cluster.watched.subscribe();
                let read = watched.wait_for(|&at| at >= ask.revision);
                if matches!(tokio::time::timeout(ACK_TIMEOUT, read).await, Ok(Ok(_))) {
                    let _ = cluster.client.publish(reply, Bytes::new()).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(levels: &[&str]) -> Summary {
        Summary { levels: levels.iter().map(|l| l.to_string()).collect(), ..Summary::default() }
    }

    #[test]
    fn a_filters_first_level_is_what_a_summary_holds_wildcards_as_one() {
        assert_eq!(first_level("a/b/#"), "a");
        assert_eq!(first_level("a"), "a");
        assert_eq!(first_level("/a"), "");
        assert_eq!(first_level("#"), "+");
        assert_eq!(first_level("+/b"), "+");
        assert_eq!(first_level("$SYS/#"), "$SYS");
    }

    #[test]
    fn levels_widen_on_a_new_first_level_only_and_shrink_with_the_last_filter() {
        let mut levels = Levels::default();
        assert!(levels.add("a/b"));
        assert!(!levels.add("a/c"), "same first level: no wider");
        assert!(levels.add("#"));
        assert_eq!(levels.summary("n", 1), Summary { node: "n".into(), updated_ms: 1, ..summary(&["+", "a"]) });
        levels.remove("a/b");
        assert_eq!(levels.summary("n", 1).levels.len(), 2, "a/c still there");
        levels.remove("a/c");
        levels.remove("#");
        assert!(levels.summary("n", 1).levels.is_empty());
        assert!(levels.add("a/b"), "a level gone and back widens again");
    }

    #[test]
    fn too_many_levels_cover_everything() {
        let mut levels = Levels::default();
        for i in 0..=MAX_LEVELS {
            levels.add(&format!("l{i}/x"));
        }
        let all = levels.summary("n", 0);
        assert!(all.all && all.levels.is_empty());
        assert!(Others::merge(true, [&all]).may_want("$SYS/x"));
    }

    #[test]
    fn others_want_their_levels_wildcards_want_all_but_dollar_topics() {
        let a = summary(&["a", ""]);
        let others = Others::merge(true, [&a]);
        assert!(others.may_want("a/x"));
        assert!(others.may_want("a"));
        assert!(others.may_want("/x"), "an empty first level is a level");
        assert!(!others.may_want("b/x"));
        assert!(!others.may_want("ab"));
        let wild = Others::merge(true, [&a, &summary(&["+"])]);
        assert!(wild.may_want("b/x"));
        assert!(!wild.may_want("$SYS/x"), "MQTT-4.7.2-1: a wildcard first level never matches a $ topic");
        assert!(Others::merge(true, [&summary(&["$SYS"])]).may_want("$SYS/brokers"));
    }

    #[test]
    fn until_settled_every_topic_may_be_wanted() {
        assert!(Others::merge(false, []).may_want("b/x"));
        assert!(!Others::merge(true, []).may_want("b/x"));
    }

    #[test]
    fn a_summary_counts_while_its_node_may_run_or_for_the_retention_after() {
        let retention = std::time::Duration::from_secs(3600);
        let now = 10_000_000_000;
        assert!(in_force(now - 1000, now, retention));
        assert!(in_force(now - 3_600_000 - 2 * 60_000, now, retention));
        assert!(!in_force(now - 3_600_000 - 2 * 60_000 - 1, now, retention));
    }

    #[test]
    fn a_summary_covers_another_with_its_levels() {
        assert!(summary(&["a", "b"]).covers_summary(&summary(&["a"])));
        assert!(!summary(&["a"]).covers_summary(&summary(&["a", "b"])));
        assert!(Summary { all: true, ..Summary::default() }.covers_summary(&summary(&["z"])));
    }
}
