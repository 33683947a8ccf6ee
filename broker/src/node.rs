//! The broker node: what every connection shares (settings, hooks, counters, sessions,
//! router), and the operations that span them: publishing a message (hooks, then routing to
//! every matching session), subscribing, and ending a session.
//!
//! No lock is held while a hook runs: a plugin may publish or deliver from any hook.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_api::abi::{RawBytes, RawEvent, RawStr};
use plugin_api::Hook;

use crate::client::ClientInfo;
use crate::cluster::{Claim, Cluster, HandedOver, LocalNode, NodeInfo, Stored};
use crate::hooks::{Hooks, Rewritten, Verdict};
use crate::log_limit::clipped;
use crate::message::{Delivery, Message};
use crate::metrics::Metric;
use crate::mqtt::subscribe::SubscriptionOptions;
use crate::persist::{self, Keys, SessionRecord};
use crate::router::{
    is_valid_replacement_topic, Filter, Publisher, Reach, Routed, Router, ShareGroup, Subscriber, Target,
};
use crate::session::moved::MovedSession;
use crate::session::registry::{Adopted, Claimed, HandOver, Owner, Sessions, Termination};
use crate::session::{Durable, Enqueued, Overflow, PendingWill, Phase, QueueLimits, Session, Subscription};
use crate::stats::Stats;
use store::{Batch, Store};

/// How the cache behaves (from `[mqtt]`): EMQX's per-connection ACL cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AclCacheSettings {
    /// Most entries one connection keeps.
    pub(crate) max_size: usize,
    /// How long an answer is kept.
    pub(crate) ttl: Duration,
}

/// The MQTT settings every connection follows (EMQX calls this a zone).
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    /// Largest packet accepted from a client, and announced to MQTT 5 clients.
    pub(crate) max_packet_size: usize,
    pub(crate) max_connections: usize,
    /// Most QoS 1/2 messages in flight to one client (lowered by its Receive Maximum).
    pub(crate) max_inflight: u16,
    /// Most QoS 2 messages a client may have unreleased: the Receive Maximum announced.
    pub(crate) max_awaiting_rel: u16,
    pub(crate) connect_timeout: Duration,
    /// How long a packet begun may take to arrive whole (`mqtt.packet_timeout`).
    pub(crate) packet_timeout: Duration,
    /// How long a QoS 1/2 message to an MQTT 3.1.1 client waits for its acknowledgement
    /// before it is sent again while the client stays connected (`mqtt.retry_interval`);
    /// `None` never.
    pub(crate) retry_interval: Option<Duration>,
    pub(crate) acl_cache: Option<AclCacheSettings>,
    pub(crate) queue: QueueLimits,
    /// Session Expiry Interval of an MQTT 3.1.1 session with clean session 0.
    pub(crate) session_expiry_v3: u32,
    /// Longest Session Expiry Interval an MQTT 5 client gets (`mqtt.max_session_expiry`).
    pub(crate) max_session_expiry: u32,
    /// Most subscriptions in one session; 0 for no limit.
    pub(crate) max_subscriptions: usize,
    /// Most PUBLISH packets and bytes one connection may send a period
    /// (`mqtt.rate_limit`); `None` for no limit.
    pub(crate) messages_in: Option<crate::connection::rate_limit::Rate>,
    pub(crate) bytes_in: Option<crate::connection::rate_limit::Rate>,
    /// Deliver at the subscription's QoS even when the message's is lower (EMQX).
    pub(crate) upgrade_qos: bool,
    pub(crate) max_qos: u8,
    pub(crate) retain_available: bool,
    pub(crate) wildcard_subscription: bool,
    pub(crate) shared_subscription: bool,
    /// Topic aliases a client may use (MQTT 5 Topic Alias Maximum announced).
    pub(crate) max_topic_alias: u16,
    /// Most levels of a client's topic name or filter, at most [`crate::router::MAX_TOPIC_LEVELS`].
    pub(crate) max_topic_levels: usize,
    /// Keep-alive the broker imposes on MQTT 5 clients (Server Keep Alive), if any.
    pub(crate) server_keep_alive: Option<u16>,
    /// Longest keep-alive a client may ask for, if limited.
    pub(crate) max_keep_alive: Option<u16>,
    pub(crate) max_client_id_len: usize,
    /// Response Information for MQTT 5 clients that ask for it (`mqtt.response_information`).
    pub(crate) response_information: Option<Box<str>>,
}

impl Default for Zone {
    fn default() -> Self {
        Zone {
            max_packet_size: 1024 * 1024,
            max_connections: 100_000,
            max_inflight: 100,
            max_awaiting_rel: 100,
            connect_timeout: Duration::from_secs(15),
            packet_timeout: Duration::from_secs(30),
            retry_interval: Some(Duration::from_secs(30)),
            acl_cache: None,
            queue: QueueLimits { max_len: 1000, store_qos0: true, overflow: Overflow::Backpressure },
            session_expiry_v3: 7200,
            max_session_expiry: 7200,
            max_subscriptions: 0,
            messages_in: None,
            bytes_in: None,
            upgrade_qos: false,
            max_qos: 2,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            max_topic_alias: 65535,
            max_topic_levels: crate::router::MAX_TOPIC_LEVELS,
            server_keep_alive: None,
            max_keep_alive: None,
            max_client_id_len: 65535,
            response_information: None,
        }
    }
}

/// Why a message did not reach a subscriber (the `reason` of `message.dropped`, EMQX's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// No subscription matched.
    NoSubscribers,
    /// A plugin's `message.publish` dropped it, or the ACL denied it.
    Denied,
    /// The subscriber's queue was full (`mqtt.max_mqueue_len`).
    QueueFull,
    /// Its Message Expiry Interval ran out before it could be sent.
    Expired,
    /// Over the subscriber's Maximum Packet Size (MQTT 5).
    TooLarge,
    /// The publisher's own subscription with No Local (MQTT-3.8.3-3).
    NoLocal,
}

impl DropReason {
    fn name(self) -> &'static str {
        match self {
            DropReason::NoSubscribers => "no_subscribers",
            DropReason::Denied => "denied",
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::NoLocal => "no_local",
        }
    }
}

/// Why a plugin's subscription for a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PluginSubscribeError {
    /// Not a valid topic filter, or a QoS over 2.
    InvalidFilter,
    /// No client with that id is connected.
    NoSuchClient,
}

/// What became of a published message.
pub(crate) enum Published {
    /// A plugin dropped it.
    Dropped,
    /// Routed to this many sessions (this node is alone).
    Routed(usize),
    /// Routed to this many sessions of this node, and handed to the cluster, whose other
    /// nodes may have more. A QoS 1/2 message's `stored` says when NATS has it (its
    /// acknowledgement waits for that).
    Forwarded { routed: usize, stored: Option<Stored> },
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Published::Dropped => write!(f, "Dropped"),
            Published::Routed(n) => write!(f, "Routed({n})"),
            Published::Forwarded { routed, stored } => {
                write!(f, "Forwarded {{ routed: {routed}, stored: {} }}", stored.is_some())
            }
        }
    }
}

/// How often the node writes that it runs (see [`Node::keep_alive_mark`]).
const ALIVE_EVERY: Duration = Duration::from_secs(5);

thread_local! {
    /// Reused between routings on one thread (taken out while in use: routing can nest when a
    /// hook publishes).
    static TARGETS: RefCell<Vec<Target>> = const { RefCell::new(Vec::new()) };
}

/// The broker node.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) zone: Zone,
    /// Anonymous clients and failed authentications.
    pub(crate) auth: crate::auth::Auth,
    pub(crate) hooks: Arc<Hooks>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) router: Router,
    pub(crate) sessions: Sessions,
    /// Where persistent sessions are kept (`[persistence] enabled`); `None`: in memory only.
    pub(crate) persistence: Option<Store>,
    /// The other nodes (`[cluster] nats`); `None`: this node is alone.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// Its name (`node_name`, EMQX's `emqx@127.0.0.1`).
    pub(crate) name: String,
    /// The broker as a publisher (for plugins' messages).
    broker: ClientInfo,
    next_connection: std::sync::atomic::AtomicU64,
}

impl Node {
    pub(crate) fn new(zone: Zone, hooks: Arc<Hooks>, stats: Arc<Stats>, router: Router) -> Node {
        Node {
            zone,
            auth: crate::auth::Auth::default(),
            hooks,
            stats,
            router,
            sessions: Sessions::default(),
            persistence: None,
            cluster: None,
            name: "emqx@127.0.0.1".to_owned(),
            broker: ClientInfo::broker(),
            next_connection: Default::default(),
        }
    }

    /// The node named `name`.
    pub(crate) fn with_name(mut self, name: &str) -> Node {
        self.name = name.to_owned();
        self
    }

    /// The node with this authentication policy (the default: anonymous clients from
    /// loopback only, no slowing down).
    pub(crate) fn with_auth(mut self, auth: crate::auth::Auth) -> Node {
        self.auth = auth;
        self
    }

    /// The node keeping persistent sessions in `store`.
    pub(crate) fn with_persistence(mut self, store: Store) -> Node {
        self.persistence = Some(store);
        self
    }

    /// What `/api/v4/nodes` (and the cluster's heartbeat) says of this node.
    pub(crate) fn info(&self) -> NodeInfo {
        NodeInfo {
            node: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            sysdescr: plugin_api::emqx::SYSDESCR.to_owned(),
            uptime_secs: self.stats.uptime_ms() / 1000,
            connections: self.stats.connections(),
        }
    }

    /// The node as one of a cluster.
    pub(crate) fn with_cluster(mut self, cluster: Arc<Cluster>) -> Node {
        self.cluster = Some(cluster);
        self
    }

    /// Commits `batch` without waiting for it (what nobody acknowledges: a plugin's message, a
    /// delivered message's removal). A failure is logged by the store and counted there.
    pub(crate) fn commit_in_background(&self, batch: Batch) {
        if let (Some(store), false) = (&self.persistence, batch.is_empty()) {
            drop(store.commit_async(batch));
        }
    }

    /// The session's record as it is now (expiry, subscriptions; online, or offline since now
    /// with its messages numbered up to now as those that may have been sent).
    fn session_record(state: &crate::session::State) -> SessionRecord {
        let mut record = SessionRecord::new(state.expiry_interval);
        record.set_subscriptions(state.subscriptions.iter().map(|(f, s)| (&**f, s.options, s.id)));
        if state.attachment.is_none() {
            record.offline_since_ms = Some(crate::now_ms());
            record.sent_through = state.durable.as_ref().map(|d| d.next_seq);
        }
        record
    }

    /// After a connection opened `session`: a persistent one (Session Expiry above 0) is kept
    /// in the store from now on, with its record written; one that stopped being persistent
    /// is taken out of it.
    ///
    /// Returns the write to wait for before the client is sent anything when the session
    /// holds messages queued while it was offline: the store says those were never sent
    /// (`SessionRecord::sent_through`) until it knows the session is online, and a crash in
    /// between would have them sent again as first deliveries, DUP 0.
    pub(crate) fn persist_opened(
        &self,
        session: &Session,
        discarded: bool,
    ) -> Option<impl Future<Output = Result<(), store::StoreError>> + Send + 'static> {
        let _ = self.share_record(session, discarded);
        let store = self.persistence.as_ref()?;
        let mut batch = Batch::new();
        let never_sent = {
            let mut state = session.lock();
            if state.ended {
                return None;
            }
            if state.expiry_interval == 0 {
                if let Some(durable) = state.durable.take() {
                    let _ = durable.keys.delete_all(&mut batch);
                }
            } else {
                let keys = state
                    .durable
                    .get_or_insert_with(|| {
                        Box::new(Durable { keys: Keys::new(&session.client_id), next_seq: Durable::START })
                    })
                    .keys
                    .clone();
                let _ = persist::put_session(&mut batch, &keys, &Node::session_record(&state));
                // Its client is back: a will kept while it was offline is not due any more.
                let _ = persist::put_will(&mut batch, &keys, None);
            }
            state.durable.is_some() && state.queue.iter().any(|d| d.seq != 0 && !d.maybe_sent)
        };
        if never_sent {
            return Some(store.commit_async(batch));
        }
        self.commit_in_background(batch);
        None
    }

    /// Puts a session another node gave up (`moved`) into `session`, new and attached, not yet
    /// in the registry: its messages (those in flight with their packet ids), its QoS 2 packet
    /// ids awaiting release, and its subscriptions, routed here (and through the cluster to
    /// this node). A persistent one is written to the store, its messages numbered on from
    /// the numbers they had.
    pub(crate) fn adopt(&self, session: &Arc<Session>, moved: MovedSession) {
        let subscriptions = moved.subscriptions();
        {
            let mut guard = session.lock();
            let state = &mut *guard;
            let next_seq = moved.install(state);
            if self.persistence.is_some() && state.expiry_interval > 0 {
                let mut durable =
                    Durable { keys: Keys::new(&session.client_id), next_seq: next_seq.max(Durable::START) };
                let mut batch = Batch::new();
                let inflight = state.inflight.take();
                durable.next_seq = durable.next_seq.max(inflight.iter().map(|e| e.delivery.seq).max().unwrap_or(0));
                let mut queued = state.queue.take();
                durable.next_seq = durable.next_seq.max(queued.iter().map(|d| d.seq).max().unwrap_or(0));
                for mut entry in inflight {
                    Node::persist_moved(&mut durable, &mut entry.delivery, &mut batch);
                    if entry.phase == Phase::Pubcomp {
                        let _ = batch.put(persist::BUCKET, &durable.keys.released(entry.delivery.seq), b"");
                        state.inflight.push_released(entry.packet_id, entry.delivery);
                    } else {
                        state.inflight.push(entry.packet_id, entry.delivery);
                    }
                }
                for delivery in queued.iter_mut() {
                    Node::persist_moved(&mut durable, delivery, &mut batch);
                }
                for delivery in queued {
                    state.queue.push(delivery);
                }
                for &packet_id in &state.awaiting_rel {
                    let _ = batch.put(persist::BUCKET, &durable.keys.awaiting_rel(packet_id), b"");
                }
                state.durable = Some(Box::new(durable));
                self.commit_in_background(batch);
            }
        }
        for (filter, subscription) in subscriptions {
            if let Ok(parsed) = Filter::parse(&filter) {
                self.subscribe(session, &filter, &parsed, subscription);
            }
        }
    }

    /// Numbers a delivery that came from another node for a persistent session here, unless it
    /// has a number, and writes it to `batch`.
    fn persist_moved(durable: &mut Durable, delivery: &mut Delivery, batch: &mut Batch) {
        if delivery.seq == 0 {
            durable.next_seq += 1;
            delivery.seq = durable.next_seq;
        }
        let _ = persist::put_entry(batch, &durable.keys, delivery.seq, &persist::EntryView::of(delivery));
    }

    /// After `session` moved here from node `from` (see `Sessions::hand_over`): once this
    /// node's subscriptions for it are in place in NATS, asks `from` for what was queued for it
    /// there meanwhile and to stop routing to it. That goes ahead of what came here since;
    /// what came to both is put in once.
    pub(crate) async fn finish_move(&self, session: &Arc<Session>, from: &str) {
        let Some(cluster) = &self.cluster else { return };
        if let Some(in_place) = cluster.interest_in_place() {
            in_place.await;
        }
        let tail = match cluster.release(from, &session.client_id).await {
            Ok(Some(tail)) => tail,
            Ok(None) => return,
            Err(why) => {
                let client_id = clipped(&session.client_id);
                tracing::warn!(
                    ?client_id,
                    from,
                    "cluster: what was queued on the session's old node meanwhile is lost: {why}"
                );
                return;
            }
        };
        let mut batch = Batch::new();
        {
            let mut guard = session.lock();
            let state = &mut *guard;
            let durable = &mut state.durable;
            let merged = crate::session::moved::merge_tail(&mut state.queue, &tail, |delivery| {
                if let Some(durable) = durable.as_deref_mut() {
                    delivery.seq = 0;
                    Node::persist_moved(durable, delivery, &mut batch);
                }
            });
            if let Err(e) = merged {
                tracing::warn!(from, "cluster: what was queued on the session's old node meanwhile is unreadable: {e}");
            }
        }
        self.commit_in_background(batch);
        session.notify();
    }

    /// After `session` was revived from its record (its node, `from`, died, see
    /// `cluster::ownership`): once this node's subscriptions for it are in place in NATS, reads
    /// back from the cluster's streams what was published for it from `since_ms` on, and puts
    /// it ahead of what came since; what came both ways is put in once. For its share groups,
    /// that is the messages their publishing nodes sent to `from` for them (`cluster::shares`:
    /// with `random` they do not say): with QoS 1 at least once, so if `from` had several
    /// members of a group, each revived member gets them all.
    ///
    /// What this node routed before the subscriptions were here is in its stream before that
    /// is read (`Cluster::flushed`). What another node published before they were in place
    /// may be stored only after the read: the streams are read once more, after the time such
    /// a message takes at most to be stored, for what was published before and stored after.
    pub(crate) async fn replay_into(self: &Arc<Self>, session: &Arc<Session>, since_ms: u64, from: &str) {
        let Some(cluster) = &self.cluster else { return };
        if let Some(in_place) = cluster.interest_in_place() {
            in_place.await;
        }
        let in_place_ms = crate::now_ms();
        cluster.flushed().await;
        let wanted = ReadBack::of(session, cluster, from);
        let read_to = match cluster.replay(since_ms, None, |topic, handled| wanted.wants(topic, handled)).await {
            Ok((found, read_to)) => {
                let read = self.put_read_back(session, &wanted, found);
                tracing::info!(client_id = ?clipped(&session.client_id), read, "cluster: a revived session's messages read back");
                read_to
            }
            Err(why) => {
                let client_id = clipped(&session.client_id);
                tracing::warn!(?client_id, "cluster: a revived session's messages could not be read back: {why}");
                return;
            }
        };
        let (node, session, cluster) = (self.clone(), session.clone(), cluster.clone());
        tokio::spawn(async move {
            tokio::time::sleep(cluster.store_deadline() + Duration::from_secs(1)).await;
            let again =
                cluster.replay(since_ms, Some((&read_to, in_place_ms)), |topic, handled| wanted.wants(topic, handled));
            match again.await {
                Ok((found, _)) if !found.is_empty() && !session.lock().ended => {
                    let read = node.put_read_back(&session, &wanted, found);
                    tracing::info!(client_id = ?clipped(&session.client_id), read, "cluster: a revived session's messages stored late read back");
                }
                Ok(_) => {}
                Err(why) => {
                    let client_id = clipped(&session.client_id);
                    tracing::warn!(
                        ?client_id,
                        "cluster: a revived session's messages stored late could not be read back: {why}"
                    );
                }
            }
        });
    }

    /// Puts messages read back for `session` (`found`, with their publishers and the share
    /// groups each is for) ahead of what its queue holds, leaving out what it holds already;
    /// returns how many.
    fn put_read_back(&self, session: &Session, wanted: &ReadBack, found: Vec<(Message, String, Vec<usize>)>) -> usize {
        let mut deliveries = Vec::with_capacity(found.len());
        for (message, publisher, shares) in found {
            let mut delivery: Option<Delivery> = None;
            for (filter, subscription) in &wanted.subscriptions {
                let options = subscription.options;
                let own = options.no_local && publisher == *session.client_id;
                if own || !plugin_api::topic::matches(filter, message.topic()) {
                    continue;
                }
                let qos = message.qos.min(options.qos);
                let d = delivery.get_or_insert_with(|| Delivery {
                    message: message.clone(),
                    qos: 0,
                    retain: message.retain && options.retain_as_published,
                    subscription_ids: Box::new([]),
                    seq: 0,
                    maybe_sent: true,
                    share: None,
                });
                d.qos = d.qos.max(qos);
                if let Some(id) = subscription.id {
                    d.subscription_ids = d.subscription_ids.iter().copied().chain([id]).collect();
                }
            }
            deliveries.extend(delivery.filter(|d| d.qos > 0));
            // A share group's delivery is one of its own (as the router gives it).
            for i in shares {
                let (group, subscription, _) = &wanted.groups[i];
                let options = subscription.options;
                let delivery = Delivery {
                    message: message.clone(),
                    qos: message.qos.min(options.qos),
                    retain: message.retain && options.retain_as_published,
                    subscription_ids: subscription.id.into_iter().collect(),
                    seq: 0,
                    maybe_sent: true,
                    share: Some(group.clone()),
                };
                deliveries.extend(Some(delivery).filter(|d| d.qos > 0));
            }
        }
        let mut batch = Batch::new();
        let read = deliveries.len();
        {
            let mut guard = session.lock();
            let state = &mut *guard;
            let durable = &mut state.durable;
            crate::session::moved::merge(&mut state.queue, deliveries, |delivery| {
                if let Some(durable) = durable.as_deref_mut() {
                    Node::persist_moved(durable, delivery, &mut batch);
                }
            });
        }
        self.commit_in_background(batch);
        session.notify();
        read
    }

    /// In a cluster, shares `session`'s record (subscriptions, expiry, since when offline) if it
    /// is persistent, so that another node can revive it should this one die; forgets it if it
    /// is not.
    /// The future resolves once the record is shared (a SUBACK waits for it). A session that
    /// is not persistent forgets the record only when `forget`: it replaced one that may have
    /// had a record (a session ending forgets its own, see `Cluster::disown`).
    pub(crate) fn share_record(&self, session: &Session, forget: bool) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let cluster = self.cluster.as_ref()?;
        let record = {
            let state = session.lock();
            if state.ended || (state.expiry_interval == 0 && !forget) {
                return None;
            }
            (state.expiry_interval > 0).then(|| Node::session_record(&state).encode_shared(Node::pending_since(&state)))
        };
        Some(cluster.share_record(&session.client_id, record))
    }

    /// When the oldest QoS 1/2 message still queued or in flight for a session was published
    /// (ms since the Unix epoch), if one is.
    fn pending_since(state: &crate::session::State) -> Option<u64> {
        let queued = state.queue.iter().find(|d| d.qos > 0).map(|d| d.message.timestamp_ms);
        let in_flight = state.inflight.iter().filter(|e| e.delivery.qos > 0).map(|e| e.delivery.message.timestamp_ms);
        queued.into_iter().chain(in_flight).filter(|&ms| ms > 0).min()
    }

    /// Keeps the records the cluster shares of this node's persistent sessions telling since
    /// when each has had messages pending, once that is longer ago than half of `[cluster]
    /// revive_margin`: a session revived on another node after this one died has the streams
    /// read from before its oldest message, not only from before this node was last heard, so
    /// that a client far behind loses none of what it was owed. A record is written again
    /// when the backlog has moved on by the margin, and once more when it is gone; checked
    /// every third of the margin.
    pub(crate) async fn share_backlogs(node: Arc<Node>, margin: Duration) {
        let margin_ms = margin.as_millis() as u64;
        let mut recorded: std::collections::HashMap<Arc<str>, u64> = std::collections::HashMap::new();
        let mut every = tokio::time::interval(margin / 3);
        loop {
            every.tick().await;
            let now = crate::now_ms();
            let mut still = std::collections::HashMap::with_capacity(recorded.len());
            for session in node.sessions.all() {
                let old = {
                    let state = session.lock();
                    if state.ended || state.expiry_interval == 0 {
                        continue;
                    }
                    Node::pending_since(&state).filter(|&since| now.saturating_sub(since) > margin_ms / 2)
                };
                let before = recorded.get(&session.client_id).copied();
                let write = match (old, before) {
                    (Some(_), None) | (None, Some(_)) => true,
                    (Some(since), Some(written)) => since > written + margin_ms,
                    (None, None) => false,
                };
                if write {
                    let _ = node.share_record(&session, false);
                }
                if let Some(since) = if write { old } else { before } {
                    still.insert(session.client_id.clone(), since);
                }
            }
            recorded = still;
        }
    }

    /// The batch that writes `session`'s record as it is now (after a SUBSCRIBE or
    /// UNSUBSCRIBE), if it is persistent: the acknowledgement waits for it.
    pub(crate) fn session_record_batch(&self, session: &Session) -> Option<Batch> {
        self.persistence.as_ref()?;
        let state = session.lock();
        let durable = state.durable.as_deref()?;
        let mut batch = Batch::new();
        persist::put_session(&mut batch, &durable.keys, &Node::session_record(&state)).ok()?;
        if state.attachment.is_none() {
            // Offline: a will waiting for its delay is kept with it, to outlive a restart.
            let will = state
                .pending_will
                .as_deref()
                .map(|w| persist::WillRecord::of(&w.message, w.at, &w.client.username, &w.client.peer));
            persist::put_will(&mut batch, &durable.keys, will.as_ref()).ok()?;
        }
        Some(batch)
    }

    /// Reads the persistent sessions back from the store at start: each comes back offline,
    /// with its subscriptions in the router, its messages queued (a QoS 2 message whose PUBREC
    /// came back in flight, for PUBREL) and its QoS 2 packet ids awaiting release, and ends
    /// when its expiry, counted from when it went offline, runs out. Returns how many.
    pub(crate) fn restore_sessions(node: &Arc<Node>) -> Result<usize, persist::RecordError> {
        let Some(store) = &node.persistence else { return Ok(0) };
        let persist::Stored { sessions: restored, alive_at_ms: alive_at, orphans } = persist::restore(store)?;
        let now_ms = crate::now_ms();
        let mut batch = Batch::new();
        for key in orphans {
            batch.delete(persist::BUCKET, &key)?;
        }
        let mut sessions = Vec::with_capacity(restored.len());
        for restored in restored {
            let keys = Keys::new(&restored.client_id);
            // One that ended while the broker was down is dropped, but for its will: it is
            // read back, and ends when its timers start (below), the will published then.
            if restored.will.is_none() && restored.expires_at_ms(alive_at).is_some_and(|at| at <= now_ms) {
                keys.delete_all(&mut batch)?;
                continue;
            }
            // Numbered on from its last message, read back or sent before it went offline.
            let next_seq = restored
                .entries
                .last()
                .map(|(seq, _)| *seq)
                .max(restored.record.sent_through)
                .unwrap_or(Durable::START);
            // Messages numbered above `sent_through` were queued while the session was offline:
            // they go out as first deliveries (DUP 0). Without it (online when the broker
            // stopped, or a record from before it was kept) any may have been sent: DUP 1.
            let sent_through = restored.record.sent_through;
            if restored.record.offline_since_ms.is_none() {
                // Online when the broker stopped: offline since it was last known to run, and
                // what it has now may all have been sent.
                let mut record = restored.record.clone();
                record.offline_since_ms = Some(alive_at.min(now_ms));
                record.sent_through = Some(next_seq);
                persist::put_session(&mut batch, &keys, &record)?;
            }
            let session = Arc::new(node.sessions.new_session(restored.client_id.as_str().into()));
            {
                let mut state = session.lock();
                state.expiry_interval = restored.record.expiry_interval;
                state.expires_at = restored.expires_at(alive_at, now_ms);
                state.durable = Some(Box::new(Durable { keys, next_seq }));
                state.awaiting_rel = restored.awaiting_rel;
                if let Some(will) = restored.will {
                    let client = ClientInfo::of_kept_will(session.client_id.clone(), &will.username, &will.peer);
                    let at = will.due_at(now_ms);
                    let message = will.into_message(session.id, now_ms);
                    state.pending_will = Some(Box::new(PendingWill { message, client: Arc::new(client), at }));
                }
                for (seq, entry) in restored.entries {
                    let mut delivery = entry.into_delivery(seq, now_ms);
                    delivery.maybe_sent = sent_through.is_none_or(|through| seq <= through);
                    let packet_id = persist::packet_id_of(seq);
                    if delivery.qos == 2 && restored.released.contains(&seq) {
                        state.inflight.push_released(packet_id, delivery);
                    } else if delivery.maybe_sent && !state.inflight.is_in_use(packet_id) {
                        // It may have gone out and not been acknowledged: in flight, as it was
                        // (resent first, DUP 1, MQTT-4.4.0-1), not queued, where a full queue
                        // would drop it first and an expiry unsend it (MQTT-3.3.2-5 lets an
                        // expired message go only before its delivery starts).
                        state.inflight.push(packet_id, delivery);
                    } else {
                        state.queue.push(delivery);
                    }
                }
            }
            // Routed to only once its stored messages are queued: they come first.
            for (filter, options, id) in restored.record.subscriptions() {
                if let Ok(parsed) = Filter::parse(filter) {
                    node.subscribe(&session, filter, &parsed, Subscription { options, id });
                }
            }
            node.stats.session_created();
            node.sessions.restore(session.clone());
            sessions.push(session);
        }
        store.commit(batch)?;
        // Their timers (expiry, a delayed will) start once every session is back in the router,
        // so a will due already reaches every session subscribed to it. In a cluster they start
        // once this node knows it still owns the session (`Node::own_restored`): a client back
        // on another node meanwhile has no will sent.
        if node.cluster.is_none() {
            for session in &sessions {
                node.sessions.start_timers(node, session.clone());
            }
        }
        Ok(sessions.len())
    }

    /// In a cluster, after the persistent sessions were read back at start: each is kept if
    /// this node owns its client id (or nobody did), and dropped if another node took it while
    /// this one was down (its client got a new session there). While NATS is away they are
    /// kept, and checked once it answers.
    pub(crate) async fn own_restored(node: Arc<Node>) {
        let Some(cluster) = node.cluster.clone() else { return };
        let mut pending = node.sessions.all();
        while !pending.is_empty() {
            if !cluster.reachable() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let mut retry = Vec::new();
            for session in pending {
                match cluster.owns_restored(&session.client_id).await {
                    Ok(true) => {
                        let untouched = { session.lock().generation == 0 };
                        if untouched {
                            node.sessions.start_timers(&node, session);
                        }
                    }
                    Ok(false) => {
                        let client_id = clipped(&session.client_id);
                        let dropped = node.end_session_if(&session, Termination::Discarded, |state| {
                            let untouched = state.attachment.is_none() && state.generation == 0;
                            if untouched {
                                // Its client is back elsewhere: no will (MQTT-3.1.3-9).
                                state.pending_will = None;
                            }
                            untouched
                        });
                        if dropped {
                            tracing::info!(?client_id, "cluster: another node took this session's client id while this one was down: the copy here is dropped");
                        }
                    }
                    Err(why) => {
                        tracing::debug!("cluster: cannot check a restored session's owner yet: {why}");
                        retry.push(session);
                    }
                }
            }
            pending = retry;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Writes, every few seconds, that the node runs: a session online when the broker dies
    /// counts its expiry from then.
    pub(crate) async fn keep_alive_mark(node: Arc<Node>) {
        let mut every = tokio::time::interval(ALIVE_EVERY);
        loop {
            every.tick().await;
            let mut batch = Batch::new();
            if persist::put_alive(&mut batch, crate::now_ms()).is_ok() {
                node.commit_in_background(batch);
            }
        }
    }

    /// Ends the session of `client_id` (`broker ctl sessions kick`, EMQX's kick): its connection,
    /// if any, is closed (MQTT 5: DISCONNECT 0x98 Administrative action) and the session, with
    /// its store keys, is discarded. False if there is none.
    pub(crate) fn kick_session(&self, client_id: &str) -> bool {
        let Some(session) = self.sessions.get(client_id) else { return false };
        let connection = session.lock().attachment.as_ref().map(|a| a.connection);
        self.end_session(&session, Termination::Kicked);
        if let Some(connection) = connection {
            session.kick(connection, crate::mqtt::reason::ADMINISTRATIVE_ACTION);
        }
        true
    }

    /// A connection id never used before.
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// Every counter, the router's included.
    pub(crate) fn stats_snapshot(&self) -> crate::stats::Snapshot {
        self.stats.snapshot(self.router.filter_count() as u64, self.router.subscription_count() as u64)
    }

    /// A hook event about `message`, as seen by `client`.
    pub(crate) fn message_event(client: &ClientInfo, hook: Hook, message: &Message) -> RawEvent {
        let mut event = about_message(client.event(hook, message.timestamp_ms), message);
        event.message_expiry = message.remaining_expiry_now().ok().flatten().unwrap_or(0);
        event
    }

    /// Fires `message.dropped` for a message that did not reach `client_id`.
    pub(crate) fn dropped(&self, client_id: &str, message: &Message, reason: DropReason) {
        // EMQX's counters: dropped before routing (`messages.dropped`) or at a session
        // (`delivery.dropped`), and by cause.
        let (dropped, cause) = match reason {
            DropReason::NoSubscribers => (Metric::MessagesDropped, Some(Metric::MessagesDroppedNoSubscribers)),
            DropReason::Denied => (Metric::MessagesDropped, None),
            DropReason::QueueFull if message.qos == 0 => {
                (Metric::DeliveryDropped, Some(Metric::DeliveryDroppedQos0Msg))
            }
            DropReason::QueueFull => (Metric::DeliveryDropped, Some(Metric::DeliveryDroppedQueueFull)),
            DropReason::Expired => (Metric::DeliveryDropped, Some(Metric::DeliveryDroppedExpired)),
            DropReason::TooLarge => (Metric::DeliveryDropped, Some(Metric::DeliveryDroppedTooLarge)),
            DropReason::NoLocal => (Metric::DeliveryDropped, Some(Metric::DeliveryDroppedNoLocal)),
        };
        self.stats.metrics.inc(dropped);
        if let Some(cause) = cause {
            self.stats.metrics.inc(cause);
        }
        if !self.hooks.wants(Hook::MessageDropped) {
            return;
        }
        let mut event = about_message(self.broker.event(Hook::MessageDropped, crate::now_ms()), message);
        event.client_id = RawStr::new(client_id);
        event.reason = RawStr::new(reason.name());
        self.hooks.dispatch(&event);
    }

    /// Publishes `message` from `client`: `message.publish` may drop it or replace its topic
    /// (EMQX's `emqx_mod_rewrite`), then it is routed. The broker never retains it (that is
    /// `emqx_retainer`'s job, through the hook).
    pub(crate) fn publish(&self, message: Message, client: &ClientInfo) -> Published {
        self.publish_from(message, client, None, None)
    }

    /// [`Node::publish`] from a client connection that overload protection may slow down:
    /// the sessions whose queues the message filled are added to `full` (see
    /// [`Session::enqueue`]); the connection waits for them before it handles its next
    /// PUBLISH. With `None`, the publisher cannot wait.
    ///
    /// The message's copies for persistent sessions are written to `durable`, for the caller to
    /// commit before it acknowledges; without one, they are committed in the background.
    pub(crate) fn publish_from(
        &self,
        mut message: Message,
        client: &ClientInfo,
        full: Option<&mut Vec<Arc<Session>>>,
        durable: Option<&mut Batch>,
    ) -> Published {
        if let Some(refused) = self.refused_by_cluster(&message) {
            return refused;
        }
        self.stats.metrics.inc(Metric::MessagesPublish);
        if self.hooks.wants_message(Hook::MessagePublish, message.retain) {
            let mut event = Node::message_event(client, Hook::MessagePublish, &message);
            let (verdict, rewritten) = self.hooks.dispatch_rewriting(&mut event, is_valid_replacement_topic);
            match self.published_as(message, client, verdict, rewritten) {
                Some(kept) => message = kept,
                None => return Published::Dropped,
            }
        }
        self.route_published(message, client, full, durable)
    }

    /// The `message.publish` part of [`Node::publish_from`] for a chain of
    /// [`crate::hooks::Route::Later`]: run on the calling task, plugins' later answers
    /// awaited. The message as the plugins left it, then for [`Node::route_published`] to
    /// route; or what became of it (a plugin dropped it, the cluster refused it).
    pub(crate) async fn publish_hooks_later(
        &self,
        message: Message,
        client: &ClientInfo,
    ) -> Result<Message, Published> {
        if let Some(refused) = self.refused_by_cluster(&message) {
            return Err(refused);
        }
        self.stats.metrics.inc(Metric::MessagesPublish);
        if !self.hooks.wants_message(Hook::MessagePublish, message.retain) {
            return Ok(message);
        }
        let event_for = || Node::message_event(client, Hook::MessagePublish, &message);
        let (verdict, rewritten) = self.hooks.dispatch_later(event_for, is_valid_replacement_topic).await;
        self.published_as(message, client, verdict, rewritten).ok_or(Published::Dropped)
    }

    /// A QoS 1/2 message the cluster cannot take, refused before `message.publish` runs (see
    /// [`Cluster::refusal`]).
    fn refused_by_cluster(&self, message: &Message) -> Option<Published> {
        let stored = self.cluster.as_ref()?.refusal(message)?;
        Some(Published::Forwarded { routed: 0, stored: Some(stored) })
    }

    /// `message` as `message.publish`'s chain left it, or `None` (counted, `message.dropped`
    /// fired) if it dropped it.
    fn published_as(
        &self,
        mut message: Message,
        client: &ClientInfo,
        verdict: Verdict,
        rewritten: Rewritten,
    ) -> Option<Message> {
        if let Some(topic) = rewritten.topic {
            message = message.with_topic(&topic);
        }
        if let Some(payload) = rewritten.payload {
            message = message.with_payload(&payload);
        }
        if let Some(qos) = rewritten.qos {
            let max_qos = self.zone.max_qos;
            message.edit(|head| head.qos = qos.min(max_qos));
        }
        if verdict == Verdict::Drop {
            self.dropped(&client.client_id, &message, DropReason::Denied);
            return None;
        }
        Some(message)
    }

    /// Routes a message `message.publish` has passed (the rest of [`Node::publish_from`]).
    pub(crate) fn route_published(
        &self,
        mut message: Message,
        client: &ClientInfo,
        full: Option<&mut Vec<Arc<Session>>>,
        durable: Option<&mut Batch>,
    ) -> Published {
        let publisher = Publisher { session: message.publisher, client_id: &client.client_id };
        let mut own_batch = None;
        let batch = match durable {
            Some(batch) => batch,
            None => own_batch.insert(Batch::new()),
        };
        // In a cluster, a message no other node may want stays here (`cluster::summary`):
        // routed as on a node alone, and sent to NATS only to be stored if a persistent
        // session here gets it.
        if let Some(cluster) = self.cluster.as_ref().filter(|c| !c.others_may_want(message.topic())) {
            cluster.number(&mut message);
            let mut persistent = false;
            let watch = (message.qos > 0).then_some(&mut persistent);
            let routed = self.route(message.clone(), publisher, Reach::All, full, batch, watch);
            let stored = if persistent { cluster.store(&message, &client.client_id) } else { None };
            if let Some(batch) = own_batch {
                self.commit_in_background(batch);
            }
            return Published::Forwarded { routed, stored };
        }
        // In a cluster, share groups get their messages through NATS, but for those this node
        // serves itself (see `Forwarded::here`).
        let (reach, stored, here) = match &self.cluster {
            Some(cluster) => {
                let forwarded = cluster.forward(&mut message, &client.client_id);
                // EMQX's `messages.forward`: published here, sent on for other nodes.
                self.stats.metrics.inc(Metric::MessagesForward);
                (Reach::Plain, forwarded.stored, forwarded.here)
            }
            None => (Reach::All, None, Vec::new()),
        };
        let mut full = full;
        let mut routed = 0;
        for share in &here {
            let reach = Reach::Group { path: &share.path, group: &share.name };
            let to_group = self.route(message.clone(), publisher, reach, full.as_deref_mut(), batch, None);
            if to_group == 0 {
                if let Some(cluster) = &self.cluster {
                    cluster.redispatch(message.clone(), share.clone());
                }
            }
            routed += to_group;
        }
        routed += self.route(message, publisher, reach, full, batch, None);
        if let Some(batch) = own_batch {
            self.commit_in_background(batch);
        }
        if self.cluster.is_some() {
            Published::Forwarded { routed, stored }
        } else {
            Published::Routed(routed)
        }
    }

    /// Publishes as the broker itself (plugins' messages, `$SYS`).
    pub(crate) fn publish_as_broker(&self, message: Message) -> Published {
        self.publish(message, &self.broker)
    }

    /// Hands `message` to every matching session; returns how many. Sessions whose queues it
    /// filled go to `full`, if the publisher can wait. `persistent`, if given, is set when a
    /// persistent session gets it at QoS 1 or 2.
    fn route(
        &self,
        message: Message,
        publisher: Publisher<'_>,
        reach: Reach<'_>,
        mut full: Option<&mut Vec<Arc<Session>>>,
        durable: &mut Batch,
        mut persistent: Option<&mut bool>,
    ) -> usize {
        let mut targets = TARGETS.with(|t| std::mem::take(&mut *t.borrow_mut()));
        let found = match reach {
            Reach::All => self.router.route(message.topic(), publisher, &mut targets),
            Reach::Plain => self.router.route_plain(message.topic(), publisher, &mut targets),
            Reach::Group { path, group } => {
                self.router.route_to_group(path, group, publisher, 0, &mut targets);
                Routed::default()
            }
        };
        // The publisher's own No Local subscription counts as a match (PUBACK 0x00, as EMQX
        // and mosquitto answer), its copy as dropped.
        let routed = targets.len() + usize::from(found.own_no_local);
        if found.own_no_local {
            self.dropped(publisher.client_id, &message, DropReason::NoLocal);
        } else if routed == 0 && self.cluster.is_none() {
            self.dropped(publisher.client_id, &message, DropReason::NoSubscribers);
        }
        let (mut dropped, mut refused) = (Vec::new(), Vec::new());
        for target in targets.drain(..) {
            let (session, delivery) = self.delivery(message.clone(), target);
            if let Some(persistent) = persistent.as_deref_mut().filter(|p| !**p && delivery.qos > 0) {
                *persistent = session.lock().expiry_interval > 0;
            }
            match session.enqueue(delivery, self.zone.queue, full.is_some(), Some(&mut *durable)) {
                Enqueued::Queued => {}
                Enqueued::Full => {
                    if let Some(full) = full.as_deref_mut() {
                        if !full.iter().any(|s| Arc::ptr_eq(s, &session)) {
                            full.push(session);
                        }
                    }
                }
                // A share group's member whose full queue refused a message (EMQX 5's nack): it
                // goes to another member.
                Enqueued::Dropped(lost) if lost.share.is_some() && lost.qos > 0 => refused.push((session, lost)),
                Enqueued::Dropped(lost) => dropped.push((session.client_id.clone(), lost)),
            }
        }
        TARGETS.with(|t| *t.borrow_mut() = targets);
        for (client_id, lost) in dropped {
            self.dropped(&client_id, &lost.message, DropReason::QueueFull);
        }
        for (member, lost) in refused {
            self.redispatch(&member, [lost]);
        }
        routed
    }

    /// What `target`'s matching subscriptions make of `message`: its session, and the
    /// delivery to queue there.
    fn delivery(&self, message: Message, target: Target) -> (Arc<Session>, Delivery) {
        let delivery = Delivery {
            qos: if self.zone.upgrade_qos { target.qos } else { message.qos.min(target.qos) },
            // MQTT-3.3.1-9 / MQTT-3.3.1-12: a forwarded message keeps its retain flag only
            // for a Retain As Published subscription.
            retain: message.retain && target.retain_as_published,
            subscription_ids: target.ids.into_boxed_slice(),
            seq: 0,
            maybe_sent: false,
            share: target.share,
            message,
        };
        (target.session, delivery)
    }

    /// Gives share-group messages that member session `from` will not deliver (its session
    /// ended before the client acknowledged them, or the client refused one) to another
    /// member of their group, as EMQX 5 does: on this node if the group has another member
    /// here, else (in a cluster) to a member on another node. QoS 0 deliveries, messages that
    /// did not come through a group and expired ones are not. With no other member on a node
    /// alone, the message is dropped (counted, `message.dropped` with `no_subscribers`).
    pub(crate) fn redispatch(&self, from: &Session, deliveries: impl IntoIterator<Item = Delivery>) {
        let now = Instant::now();
        let mut batch = Batch::new();
        let mut targets = Vec::new();
        for delivery in deliveries {
            let Some(share) = delivery.share.filter(|_| delivery.qos > 0) else { continue };
            let message = delivery.message;
            if message.expires_at.is_some_and(|at| at <= now) {
                continue;
            }
            let publisher = Publisher { session: message.publisher, client_id: "" };
            self.router.route_to_group(&share.path, &share.name, publisher, from.id, &mut targets);
            let Some(target) = targets.pop() else {
                match &self.cluster {
                    Some(cluster) => cluster.redispatch(message, share),
                    None => self.dropped(&from.client_id, &message, DropReason::NoSubscribers),
                }
                continue;
            };
            tracing::debug!(
                topic = %clipped(message.topic()),
                group = %clipped(&share.name),
                from = %clipped(&from.client_id),
                to = %clipped(&target.session.client_id),
                "redispatched a share group's message"
            );
            let (session, redelivery) = self.delivery(message, target);
            if let Enqueued::Dropped(lost) = session.enqueue(redelivery, self.zone.queue, false, Some(&mut batch)) {
                self.dropped(&session.client_id, &lost.message, DropReason::QueueFull);
            }
        }
        self.commit_in_background(batch);
    }

    /// Delivers to one connected client only (`Host::deliver`); false if it is not connected.
    pub(crate) fn deliver(&self, client_id: &str, delivery: Delivery) -> bool {
        match self.sessions.get(client_id).filter(|s| s.is_connected()) {
            Some(session) => {
                self.enqueue_one(&session, delivery);
                true
            }
            None => false,
        }
    }

    /// Queues `delivery`, which no publisher waits for (a plugin's, a retained message), for
    /// `session`; a persistent session's QoS 1/2 copy is written to the store with it, in the
    /// background (nobody is acknowledged for it), so that it is resent after a restart as
    /// it is after a reconnect, and its sequence number, and packet id, are never given out
    /// twice.
    fn enqueue_one(&self, session: &Session, delivery: Delivery) {
        let mut batch = Batch::new();
        if let Enqueued::Dropped(lost) = session.enqueue(delivery, self.zone.queue, false, Some(&mut batch)) {
            self.dropped(&session.client_id, &lost.message, DropReason::QueueFull);
        }
        self.commit_in_background(batch);
    }

    /// Delivers a retained message to `client_id`'s subscription `filter`: retain flag set,
    /// at the lower of the message's and the subscription's QoS, with its identifier.
    pub(crate) fn deliver_retained(&self, client_id: &str, filter: &str, message: Message) -> bool {
        let Some(session) = self.sessions.get(client_id) else {
            return false;
        };
        let Some(subscription) = session.lock().subscriptions.get(filter).copied() else {
            return false;
        };
        let qos =
            if self.zone.upgrade_qos { subscription.options.qos } else { message.qos.min(subscription.options.qos) };
        let delivery = Delivery {
            message,
            qos,
            retain: true,
            subscription_ids: subscription.id.into_iter().collect(),
            seq: 0,
            maybe_sent: false,
            share: None,
        };
        self.enqueue_one(&session, delivery);
        true
    }

    /// Adds or replaces `session`'s subscription to `filter` (already validated); true if it
    /// is new.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        parsed: &Filter<'_>,
        subscription: Subscription,
    ) -> bool {
        let subscriber = Subscriber { session: session.clone(), options: subscription.options, id: subscription.id };
        {
            let mut state = session.lock();
            if state.ended {
                return false;
            }
            state.subscriptions.insert(filter.into(), subscription);
        }
        let is_new = self.router.subscribe(parsed, subscriber);
        if let (true, Some(cluster)) = (is_new, &self.cluster) {
            cluster.subscribed(parsed);
        }
        is_new
    }

    /// Subscribes connected client `client_id` to `filter` at `qos` on a plugin's behalf
    /// (`Host::subscribe`, EMQX's `emqx_mod_subscription`), as if it had sent a SUBSCRIBE:
    /// the QoS is capped by `mqtt.max_qos_allowed` and `session.subscribed` fires, so a
    /// retainer delivers what is retained.
    pub(crate) fn subscribe_for(&self, client_id: &str, filter: &str, qos: u8) -> Result<(), PluginSubscribeError> {
        let parsed = Filter::parse(filter).map_err(|_| PluginSubscribeError::InvalidFilter)?;
        if qos > 2 {
            return Err(PluginSubscribeError::InvalidFilter);
        }
        let session = self.sessions.get(client_id).ok_or(PluginSubscribeError::NoSuchClient)?;
        let client = session.lock().attachment.as_ref().map(|a| a.client.clone());
        let client = client.ok_or(PluginSubscribeError::NoSuchClient)?;
        let options = SubscriptionOptions { qos: qos.min(self.zone.max_qos), ..Default::default() };
        let is_new = self.subscribe(&session, filter, &parsed, Subscription { options, id: None });
        self.subscriptions_changed(&session);
        if self.hooks.wants(Hook::SessionSubscribed) {
            self.subscribed(&client, filter, options, is_new, crate::now_ms());
        }
        Ok(())
    }

    /// Removes connected client `client_id`'s subscription to `filter` on an operator's behalf
    /// (`broker ctl subscriptions del`, the management API's `/mqtt/unsubscribe`), as the
    /// client's own UNSUBSCRIBE would: `session.unsubscribed` fires. False if it had none.
    pub(crate) fn unsubscribe_for(&self, client_id: &str, filter: &str) -> Result<bool, PluginSubscribeError> {
        let parsed = Filter::parse(filter).map_err(|_| PluginSubscribeError::InvalidFilter)?;
        let session = self.sessions.get(client_id).ok_or(PluginSubscribeError::NoSuchClient)?;
        let client = session.lock().attachment.as_ref().map(|a| a.client.clone());
        let client = client.ok_or(PluginSubscribeError::NoSuchClient)?;
        if !self.unsubscribe(&session, filter, &parsed) {
            return Ok(false);
        }
        self.subscriptions_changed(&session);
        if self.hooks.wants(Hook::SessionUnsubscribed) {
            self.unsubscribed(&client, filter, crate::now_ms());
        }
        Ok(true)
    }

    /// After a subscription was added or removed other than by the client's own packets: a
    /// persistent session's record is written, and the cluster's copy of it.
    fn subscriptions_changed(&self, session: &Session) {
        if let Some(batch) = self.session_record_batch(session) {
            self.commit_in_background(batch);
        }
        let _ = self.share_record(session, false);
    }

    /// Fires `session.subscribed` for `client`'s subscription to `filter` (check
    /// `hooks.wants(Hook::SessionSubscribed)` first).
    pub(crate) fn subscribed(
        &self,
        client: &ClientInfo,
        filter: &str,
        options: SubscriptionOptions,
        is_new: bool,
        now_ms: u64,
    ) {
        let mut event = client.event(Hook::SessionSubscribed, now_ms);
        event.topic = RawStr::new(filter);
        event.qos = options.qos;
        event.return_code = u32::from(options.qos);
        event.sub_options = options.to_byte();
        event.sub_new = is_new as u8;
        self.hooks.dispatch(&event);
    }

    /// Fires `session.unsubscribed` for `client`'s subscription to `filter`, removed (check
    /// `hooks.wants(Hook::SessionUnsubscribed)` first).
    pub(crate) fn unsubscribed(&self, client: &ClientInfo, filter: &str, now_ms: u64) {
        let mut event = client.event(Hook::SessionUnsubscribed, now_ms);
        event.topic = RawStr::new(filter);
        self.hooks.dispatch(&event);
    }

    /// Removes `session`'s subscription to `filter`; true if it existed.
    pub(crate) fn unsubscribe(&self, session: &Session, filter: &str, parsed: &Filter<'_>) -> bool {
        let existed = session.lock().subscriptions.remove(filter).is_some();
        self.unroute(parsed, session.id) || existed
    }

    /// Takes session `session_id`'s subscription to `parsed` out of the router (and, with the
    /// last one on this node, the cluster's interest); true if it was there.
    fn unroute(&self, parsed: &Filter<'_>, session_id: u64) -> bool {
        let removed = self.router.unsubscribe(parsed, session_id);
        if let (true, Some(cluster)) = (removed, &self.cluster) {
            cluster.unsubscribed(parsed);
        }
        removed
    }

    /// Ends `session`: its subscriptions, queue and messages in flight go, and a will still
    /// waiting for its delay is published now (MQTT-3.1.2-8: the session ended first).
    /// `session.terminated` fires here when `why` has a reason ([`Termination::reason`]).
    /// False if it had ended already.
    pub(crate) fn end_session(&self, session: &Arc<Session>, why: Termination) -> bool {
        self.end_session_if(session, why, |_| true)
    }

    /// Ends `session` if `still` holds for its state (checked under its lock); true if it did.
    pub(crate) fn end_session_if(
        &self,
        session: &Arc<Session>,
        why: Termination,
        still: impl FnOnce(&mut crate::session::State) -> bool,
    ) -> bool {
        let mut unfinished = Vec::new();
        let (subscriptions, will, serving, persistent) = {
            let mut state = session.lock();
            if state.ended || !still(&mut state) {
                return false;
            }
            let persistent = state.expiry_interval > 0;
            state.ended = true;
            let serving = state.attachment.as_ref().map(|a| a.client.clone());
            if let (true, Some(durable)) = (self.persistence.is_some(), state.durable.take()) {
                let mut batch = Batch::new();
                let _ = durable.keys.delete_all(&mut batch);
                self.commit_in_background(batch);
            }
            state.release_waiting(self.zone.queue);
            // What a share group gave it goes to another member (MQTT 5 §4.8.2: SHOULD), but a
            // QoS 2 message already sent, which no other member may get (MQTT-4.8.2-5).
            let queued = state.queue.take().into_iter();
            let unreceived = state.inflight.take().into_iter().filter(|e| e.phase == Phase::Puback).map(|e| e.delivery);
            unfinished.extend(unreceived.chain(queued).filter(|d| d.share.is_some()));
            state.awaiting_rel = Vec::new();
            (std::mem::take(&mut state.subscriptions), state.pending_will.take(), serving, persistent)
        };
        for filter in subscriptions.keys() {
            if let Ok(parsed) = Filter::parse(filter) {
                self.unroute(&parsed, session.id);
            }
        }
        if !unfinished.is_empty() {
            self.redispatch(session, unfinished);
        }
        self.sessions.remove(session);
        if let Some(cluster) = self.cluster.as_ref().filter(|_| !self.sessions.holds(&session.client_id)) {
            cluster.disown(&session.client_id, persistent);
        }
        self.stats.session_ended();
        if let Some(will) = will {
            self.publish(will.message, &will.client);
        }
        if let Some(reason) = why.reason() {
            // The client as the connection serving the session knew it; an offline session
            // has only its client id.
            self.session_terminated(serving.as_deref().unwrap_or(&self.broker), &session.client_id, reason);
        }
        true
    }

    /// Fires `session.terminated` for the session of `client_id`, ended for `reason`, with
    /// `client`'s details (the broker's own, empty, for a session that was offline).
    pub(crate) fn session_terminated(&self, client: &ClientInfo, client_id: &str, reason: &str) {
        if self.hooks.wants(Hook::SessionTerminated) {
            let mut event = client.event(Hook::SessionTerminated, crate::now_ms());
            event.client_id = RawStr::new(client_id);
            event.reason = RawStr::new(reason);
            self.hooks.dispatch(&event);
        }
    }
}

/// What a revived session's messages are read back for: its plain subscriptions, and its
/// share groups (each with how a message's header names it sent to the dead node).
struct ReadBack {
    subscriptions: Vec<(Box<str>, Subscription)>,
    groups: Vec<(Arc<ShareGroup>, Subscription, crate::cluster::SentTo)>,
}

impl ReadBack {
    /// `session`'s, its dead node being `from`.
    fn of(session: &Session, cluster: &Cluster, from: &str) -> ReadBack {
        let mut wanted = ReadBack { subscriptions: Vec::new(), groups: Vec::new() };
        for (filter, subscription) in session.lock().subscriptions.iter() {
            match Filter::parse(filter) {
                Ok(Filter { group: Some(name), path }) => {
                    let sent = cluster.sent_to(name, path, from);
                    let group = Arc::new(ShareGroup { name: name.into(), path: path.into() });
                    wanted.groups.push((group, *subscription, sent));
                }
                _ => wanted.subscriptions.push((filter.clone(), *subscription)),
            }
        }
        wanted
    }

    /// Whether a message on `topic` is wanted (`Some`), and for which share groups (by index).
    fn wants(&self, topic: &str, handled: &crate::cluster::Handled<'_>) -> Option<Vec<usize>> {
        let shares: Vec<usize> = (0..self.groups.len())
            .filter(|&i| {
                let (group, _, sent) = &self.groups[i];
                plugin_api::topic::matches(&group.path, topic) && handled.names(sent)
            })
            .collect();
        let plain = self.subscriptions.iter().any(|(f, _)| plugin_api::topic::matches(f, topic));
        (plain || !shares.is_empty()).then_some(shares)
    }
}

/// The node as the cluster sees it.
impl LocalNode for Node {
    /// To this node's sessions only (never forwarded again), with no `message.publish` (its
    /// node ran that).
    fn route_from_cluster(&self, message: Message, publisher: &str, reach: Reach<'_>) -> usize {
        let publisher = Publisher { session: 0, client_id: publisher };
        let mut batch = Batch::new();
        let routed = self.route(message, publisher, reach, None, &mut batch, None);
        self.commit_in_background(batch);
        routed
    }

    fn info(&self) -> NodeInfo {
        self.info()
    }

    fn hand_over(
        self: Arc<Self>,
        client_id: String,
        clean_start: bool,
        to: String,
    ) -> Pin<Box<dyn Future<Output = HandedOver> + Send>> {
        Box::pin(async move {
            let Some(cluster) = self.cluster.clone() else { return HandedOver::NotOwner };
            let pass = async {
                cluster.pass_ownership(&client_id, &to).await.unwrap_or_else(|why| {
                    tracing::warn!(client_id, to, "cluster: cannot pass a session's ownership on: {why}");
                    false
                })
            };
            match self.sessions.hand_over(&self, &client_id, clean_start, pass).await {
                HandOver::NotOwner => HandedOver::NotOwner,
                HandOver::Nothing => HandedOver::Nothing,
                HandOver::Discarded => {
                    // Its record goes before the new owner may write its own.
                    let _ = cluster.share_record(&client_id, None).await;
                    HandedOver::Discarded
                }
                HandOver::Moved(moved) => {
                    tracing::info!(
                        client_id,
                        to,
                        messages = moved.messages(),
                        "cluster: session moved to another node"
                    );
                    HandedOver::Moved(moved.encode())
                }
            }
        })
    }

    fn release_moved(&self, client_id: &str) -> Option<Vec<u8>> {
        self.sessions.release_moved(self, client_id)
    }

    fn holds(&self, client_id: &str) -> bool {
        self.sessions.holds(client_id)
    }
}

/// The node as its session registry sees it.
impl Owner for Node {
    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn end_session(&self, session: &Arc<Session>, why: Termination) -> bool {
        Node::end_session(self, session, why)
    }

    fn end_session_if(
        &self,
        session: &Arc<Session>,
        why: Termination,
        still: impl FnOnce(&mut crate::session::State) -> bool,
    ) -> bool {
        Node::end_session_if(self, session, why, still)
    }

    fn claim(&self, client: &ClientInfo, clean_start: bool) -> impl Future<Output = Result<Claimed, String>> + Send {
        // Boxed, and only in a cluster: the claim's NATS round trips would otherwise make every
        // connection's task larger (see `Sessions::open`).
        let claiming = self.cluster.clone().map(|cluster| {
            let client_id = client.client_id.clone();
            Box::pin(async move { (cluster.claim(&client_id, clean_start).await, client_id) })
        });
        async move {
            let Some(claiming) = claiming else { return Ok(Claimed::Here) };
            let (claim, client_id) = claiming.await;
            Ok(match claim? {
                Claim::Here => Claimed::Here,
                Claim::Discarded => Claimed::Discarded,
                Claim::Revived { record, since_ms, from } => {
                    let read = SessionRecord::decode(&record, &client_id);
                    readable(read, &client_id, &from, "a session's record")
                        .map_or(Claimed::Here, |record| Claimed::Revived { record, since_ms, from })
                }
                Claim::Moved { session, from } => {
                    let read = MovedSession::decode(&session);
                    readable(read, &client_id, &from, "a moved session")
                        .map_or(Claimed::Here, |session| Claimed::Moved { session, from })
                }
            })
        }
    }

    fn adopt(&self, session: &Arc<Session>, adopted: Adopted) {
        match adopted {
            Adopted::Moved(moved) => Node::adopt(self, session, moved),
            Adopted::Revived(record) => {
                for (filter, options, id) in record.subscriptions() {
                    if let Ok(parsed) = Filter::parse(filter) {
                        self.subscribe(session, filter, &parsed, Subscription { options, id });
                    }
                }
            }
        }
    }

    fn publish(&self, message: Message, client: &ClientInfo) {
        Node::publish(self, message, client);
    }

    fn went_offline(&self, session: &Arc<Session>) {
        let _ = self.share_record(session, false);
        if let Some(batch) = self.session_record_batch(session) {
            self.commit_in_background(batch);
        }
    }

    fn will_published(&self, session: &Arc<Session>) {
        let Some(keys) = session.lock().durable.as_ref().map(|d| d.keys.clone()) else { return };
        let mut batch = Batch::new();
        if persist::put_will(&mut batch, &keys, None).is_ok() {
            self.commit_in_background(batch);
        }
    }
}

/// `event` with `message`'s topic, payload, QoS, retain flag and forwarded properties.
fn about_message(mut event: RawEvent, message: &Message) -> RawEvent {
    event.topic = RawStr::new(message.topic());
    event.payload = RawBytes::new(message.payload());
    event.qos = message.qos;
    event.retain = message.retain as u8;
    event.properties = RawBytes::new(message.forwarded());
    event
}

/// What node `from` sent of `client_id`'s session (`what`), read; `None`, logged, if it could
/// not be: the ownership passed all the same, so the session starts anew here.
fn readable<T, E: std::fmt::Display>(read: Result<T, E>, client_id: &str, from: &str, what: &str) -> Option<T> {
    read.map_err(|e| tracing::warn!(client_id, from, "cluster: {what} could not be read: {e}")).ok()
}
