//! A cluster of broker nodes on NATS (`[cluster] nats = "nats://..."`): a client on any node
//! reaches subscribers on every node. Absent `[cluster]`, none of this runs.
//!
//! - **Routes are NATS interest.** A node subscribes to the subjects of each distinct filter
//!   its sessions hold (`subject`), when the first session subscribes to it, and drops them
//!   with the last. A SUBACK goes only once the NATS server has that interest (a round trip
//!   after the SUB), so a message published on another node right after it is not missed.
//! - **Forwarding.** A message published on this node (after `message.publish`) is also
//!   published on its subject, in an envelope (`Envelope`: QoS, retain, properties, expiry,
//!   who published). NATS sends it to the nodes that have interest; each routes it to its own
//!   sessions only (never forwarding it again), with its own subscriptions deciding, so
//!   MQTT's rules are applied where the subscribers are. The connection asks NATS not to
//!   echo a node's messages back to it.
//! - **Once per node, in order.** Overlapping filters (`a/+`, `a/#`) are two NATS
//!   subscriptions, and NATS sends a message once to each: every message carries its node's
//!   id and a sequence number, and a node routes the first copy only (`dedup`), in its node's
//!   order across the subscriptions it came through (`inbox`).
//! - **Share groups** are NATS queue groups (on a second connection, which sees this node's own
//!   messages): one member in the cluster gets each message.
//! - **Who runs**: a heartbeat a second ([`HEARTBEAT`]) with the node's [`NodeInfo`].
//!
//! What this does not do yet (issue "Scale out on NATS"): forwarding is NATS core's, at most
//! once between nodes (QoS 1/2 through JetStream is next); sessions, retained messages and the
//! store are per node.

mod dedup;
mod inbox;
mod subject;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::log_limit::Throttle;
use crate::message::Message;
use crate::router::{Filter, Reach};
use inbox::{Arrived, Via};

/// What the cluster needs of its node (reached through this, so that the node's module does not
/// depend on this one both ways).
pub(crate) trait LocalNode: Send + Sync + 'static {
    /// Routes a message another node forwarded (from client `publisher`) to this node's
    /// sessions that `reach` says.
    fn route_from_cluster(&self, message: Message, publisher: &str, reach: Reach<'_>);

    /// What this node's heartbeat tells the others about it (see [`NodeInfo`]).
    fn info(&self) -> NodeInfo;
}

/// What a node says of itself once a second (its heartbeat), and what `/api/v4/nodes` lists
/// for it (EMQX's names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    pub(crate) node: String,
    pub(crate) version: String,
    pub(crate) sysdescr: String,
    /// Seconds since it started.
    pub(crate) uptime_secs: u64,
    pub(crate) connections: u64,
}

/// How often a node says it runs; a node not heard from for three of these is stopped.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// Subjects longer than this are not forwarded (the NATS server's control line is 4 KiB by
/// default, and a subject travels in it).
const MAX_SUBJECT: usize = 3 * 1024;

/// Messages waiting to be handed to the NATS client; past this, a message is not forwarded
/// (counted and logged).
const OUTBOUND_QUEUE: usize = 64 * 1024;

/// What a node starts its cluster with.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConfig {
    /// The NATS server(s), e.g. `nats://127.0.0.1:4222`.
    pub(crate) nats: String,
    /// The first subject token of every message (one NATS account can hold several clusters).
    pub(crate) subject_prefix: String,
    /// This node's name (`node_name`), for the NATS connection's name and logs.
    pub(crate) node_name: String,
    /// How long connecting at start may take.
    pub(crate) connect_timeout: Duration,
    /// Start without NATS if it cannot be reached (and join once it can), instead of exiting.
    pub(crate) start_alone: bool,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error("cannot reach NATS at {url}: {why} (start nats-server, or remove [cluster] nats to run one node alone)")]
    Unreachable { url: String, why: String },
    #[error("invalid [cluster] subject_prefix {0:?}: use letters, digits, '_' and '-' in '.'-separated tokens")]
    InvalidPrefix(String),
}

/// A message as it travels between nodes (postcard, after a version byte of its own).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<'a> {
    version: u8,
    /// The node that published it (random per start) and its number there.
    origin: u64,
    seq: u64,
    qos: u8,
    retain: bool,
    /// Milliseconds it has left to live (MQTT 5 Message Expiry), if it expires.
    expires_in_ms: Option<u64>,
    timestamp_ms: u64,
    /// The client id of its publisher (the share strategy `hash` picks by it).
    publisher: &'a str,
    #[serde(serialize_with = "crate::bytes_whole", borrow)]
    forwarded: &'a [u8],
    #[serde(serialize_with = "crate::bytes_whole", borrow)]
    payload: &'a [u8],
}

const ENVELOPE_VERSION: u8 = 1;

/// What a node subscribes to NATS for: a filter, or a share group's filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Interest {
    group: Option<Box<str>>,
    path: Box<str>,
}

impl Interest {
    fn of(filter: &Filter<'_>) -> Interest {
        Interest { group: filter.group.map(Into::into), path: filter.path.into() }
    }
}

/// A change of this node's interest, for the task that keeps NATS in step.
enum Change {
    Add(Interest),
    Remove(Interest),
}

/// This node's side of the cluster.
pub(crate) struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    /// A second connection, for share groups' queue subscriptions: NATS picks one member of a
    /// queue group in the whole cluster, this node's own included, so these must receive what
    /// this node publishes (the first connection asks NATS not to echo it).
    queues: async_nats::Client,
    origin: u64,
    next_seq: AtomicU64,
    /// Local subscriptions by filter, and by share group and filter: the node's interest.
    interest: Mutex<HashMap<Interest, usize>>,
    changes: mpsc::UnboundedSender<Change>,
    changes_rx: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    /// Interest changes asked for, and those the NATS server has confirmed (counts).
    requested: AtomicU64,
    confirmed: watch::Sender<u64>,
    outbound: mpsc::Sender<(String, Bytes)>,
    outbound_rx: Mutex<Option<mpsc::Receiver<(String, Bytes)>>>,
    node: OnceLock<Weak<dyn LocalNode>>,
    /// Messages not forwarded (queue full, subject too long), logged once a window.
    not_forwarded: AtomicU64,
    not_forwarded_log: Throttle<()>,
    /// The other nodes heard from, by name: when last, and what they said.
    peers: Mutex<HashMap<String, (Instant, NodeInfo)>>,
}

/// An Erlang atom as EMQX prints it (`~p`): bare if it may be, else in single quotes.
fn atom(name: &str) -> String {
    let bare = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@');
    if bare {
        name.to_owned()
    } else {
        format!("'{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

impl Membership {
    /// As EMQX 4's `emqx_ctl cluster status` prints it:
    /// `#{running_nodes => ['emqx@10.0.0.1'],stopped_nodes => []}`.
    pub(crate) fn erlang(&self) -> String {
        let list = |names: &[String]| names.iter().map(|n| atom(n)).collect::<Vec<_>>().join(",");
        format!("#{{running_nodes => [{}],stopped_nodes => [{}]}}", list(&self.running), list(&self.stopped))
    }

    /// As EMQX 5's `cluster status --json`.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({ "running_nodes": self.running, "stopped_nodes": self.stopped })
    }
}

/// Which nodes of the cluster run (EMQX's `cluster status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    /// This node and those heard from within three heartbeats, by name.
    pub(crate) running: Vec<String>,
    /// Nodes heard from before, silent since.
    pub(crate) stopped: Vec<String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("nats", &self.config.nats).field("origin", &self.origin).finish()
    }
}

impl Cluster {
    /// Connects to NATS; fails if it cannot within `connect_timeout`.
    pub(crate) async fn connect(config: ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        let prefix_ok = !config.subject_prefix.is_empty()
            && config.subject_prefix.split('.').all(|t| !t.is_empty() && t.bytes().all(subject::is_plain));
        if !prefix_ok {
            return Err(ClusterError::InvalidPrefix(config.subject_prefix.clone()));
        }
        let unreachable = |why: String| ClusterError::Unreachable { url: config.nats.clone(), why };
        let connect = |echo: bool| {
            let mut options = async_nats::ConnectOptions::new()
                .name(format!("broker {}{}", config.node_name, if echo { " (share groups)" } else { "" }))
                .connection_timeout(config.connect_timeout)
                // Every subject is made by `subject`, valid by construction (and tested so).
                .skip_subject_validation(true);
            if config.start_alone {
                options = options.retry_on_initial_connect();
            }
            if !echo {
                options = options.no_echo().event_callback(|event| async move { log_event(event) });
            }
            let connecting = options.connect(config.nats.clone());
            async {
                match tokio::time::timeout(config.connect_timeout, connecting).await {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(e)) => Err(unreachable(e.to_string())),
                    Err(_) => Err(unreachable(format!("no connection within {:?}", config.connect_timeout))),
                }
            }
        };
        let client = connect(false).await?;
        let queues = connect(true).await?;
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        tracing::info!(nats = %config.nats, prefix = %config.subject_prefix, "cluster: connected to NATS");
        Ok(Arc::new(Cluster {
            config,
            client,
            queues,
            origin: rand_u64(),
            next_seq: AtomicU64::new(1),
            interest: Mutex::new(HashMap::new()),
            changes,
            changes_rx: Mutex::new(Some(changes_rx)),
            requested: AtomicU64::new(0),
            confirmed: watch::Sender::new(0),
            outbound,
            outbound_rx: Mutex::new(Some(outbound_rx)),
            node: OnceLock::new(),
            not_forwarded: AtomicU64::new(0),
            not_forwarded_log: Throttle::new(Duration::from_secs(10)),
            peers: Mutex::new(HashMap::new()),
        }))
    }

    /// Starts the tasks that keep NATS in step with `node` and route what other nodes send
    /// (on the current runtime).
    pub(crate) fn start(self: &Arc<Cluster>, node: Weak<dyn LocalNode>) {
        let _ = self.node.set(node);
        let (reading, reading_rx) = mpsc::unbounded_channel();
        if let Some(changes) = crate::lock(&self.changes_rx).take() {
            tokio::spawn(self.clone().keep_interest(changes, reading));
        }
        if let Some(outbound) = crate::lock(&self.outbound_rx).take() {
            tokio::spawn(self.clone().publish_forwarded(outbound));
        }
        let cluster = self.clone();
        let mut seen = dedup::Seen::default();
        inbox::Inbox::default().spawn(reading_rx, move |arrived| {
            if let Some(node) = cluster.node.get().and_then(Weak::upgrade) {
                cluster.route_one(&*node, &mut seen, arrived);
            }
        });
        tokio::spawn(self.clone().heartbeat());
    }

    /// Says every [`HEARTBEAT`] that this node runs, and hears the others say so.
    async fn heartbeat(self: Arc<Cluster>) {
        let prefix = &self.config.subject_prefix;
        let mut heard = match self.client.subscribe(subject::every_node(prefix)).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                tracing::error!("cluster: cannot hear the other nodes: {e}");
                return;
            }
        };
        let mine = subject::node_subject(prefix, &self.config.node_name);
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let Some(node) = self.node.get().and_then(Weak::upgrade) else { return };
                    let Ok(info) = serde_json::to_vec(&node.info()) else { continue };
                    // Not reaching NATS now is logged by the connection's events.
                    let _ = self.client.publish(mine.clone(), Bytes::from(info)).await;
                }
                message = heard.next() => {
                    let Some(message) = message else { return };
                    match serde_json::from_slice::<NodeInfo>(&message.payload) {
                        Ok(info) if info.node != self.config.node_name => {
                            crate::lock(&self.peers).insert(info.node.clone(), (Instant::now(), info));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!("cluster: an unreadable heartbeat: {e}"),
                    }
                }
            }
        }
    }

    /// The other nodes heard from: what each said last, and whether it still runs.
    pub(crate) fn peers(&self) -> Vec<(NodeInfo, bool)> {
        let mut peers: Vec<_> =
            crate::lock(&self.peers).values().map(|(at, info)| (info.clone(), at.elapsed() <= 3 * HEARTBEAT)).collect();
        peers.sort_by(|a, b| a.0.node.cmp(&b.0.node));
        peers
    }

    /// Which nodes run and which stopped, as far as this node heard.
    pub(crate) fn membership(&self) -> Membership {
        let mut running = vec![self.config.node_name.clone()];
        let mut stopped = Vec::new();
        for (info, runs) in self.peers() {
            if runs { &mut running } else { &mut stopped }.push(info.node);
        }
        running.sort();
        Membership { running, stopped }
    }

    /// A session subscribed to `filter` on this node.
    pub(crate) fn subscribed(&self, filter: &Filter<'_>) {
        let key = Interest::of(filter);
        let mut interest = crate::lock(&self.interest);
        let count = interest.entry(key.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.requested.fetch_add(1, Ordering::AcqRel);
            let _ = self.changes.send(Change::Add(key));
        }
    }

    /// A session's subscription to `filter` went.
    pub(crate) fn unsubscribed(&self, filter: &Filter<'_>) {
        let key = Interest::of(filter);
        let mut interest = crate::lock(&self.interest);
        let Some(count) = interest.get_mut(&key) else { return };
        *count -= 1;
        if *count == 0 {
            interest.remove(&key);
            let _ = self.changes.send(Change::Remove(key));
        }
    }

    /// Whether the NATS connection is up now.
    pub(crate) fn reachable(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Resolves once the NATS server has every interest asked for so far (at once if it has):
    /// what a SUBACK waits for.
    /// While NATS is away nothing waits: the subscription is made when it is back, and the
    /// node serves its own clients meanwhile.
    pub(crate) fn interest_in_place(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if !self.reachable() {
            return None;
        }
        let wanted = self.requested.load(Ordering::Acquire);
        if *self.confirmed.borrow() >= wanted {
            return None;
        }
        let mut confirmed = self.confirmed.subscribe();
        Some(async move {
            // An error means the cluster task ended (shutting down): nothing to wait for.
            let _ = confirmed.wait_for(|&done| done >= wanted).await;
        })
    }

    /// Forwards `message`, just published on this node by `publisher`, to the other nodes.
    pub(crate) fn forward(&self, message: &Message, publisher: &str) {
        let subject = subject::topic_to_subject(&self.config.subject_prefix, &message.topic);
        if subject.len() > MAX_SUBJECT {
            self.not_forwarded("its topic is too long for a NATS subject");
            return;
        }
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            origin: self.origin,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            qos: message.qos,
            retain: message.retain,
            expires_in_ms: message
                .expires_at
                .map(|at| at.saturating_duration_since(Instant::now()).as_millis().try_into().unwrap_or(u64::MAX)),
            timestamp_ms: message.timestamp_ms,
            publisher,
            forwarded: &message.forwarded,
            payload: &message.payload,
        };
        // One allocation: the payload and properties, and room for the rest.
        let room = Vec::with_capacity(message.payload.len() + message.forwarded.len() + publisher.len() + 64);
        let Ok(bytes) = postcard::to_extend(&envelope, room) else { return };
        if self.outbound.try_send((subject, Bytes::from(bytes))).is_err() {
            self.not_forwarded("the queue to NATS is full");
        }
    }

    fn not_forwarded(&self, why: &str) {
        let count = self.not_forwarded.fetch_add(1, Ordering::Relaxed) + 1;
        if self.not_forwarded_log.check((), Instant::now()).is_some() {
            tracing::warn!("cluster: a message was not forwarded to other nodes: {why} ({count} so far)");
        }
    }

    /// Keeps NATS subscriptions in step with the node's interest; after each round of changes,
    /// a round trip to the server confirms them.
    async fn keep_interest(
        self: Arc<Cluster>,
        mut changes: mpsc::UnboundedReceiver<Change>,
        reading: mpsc::UnboundedSender<inbox::Command>,
    ) {
        let mut readers: HashMap<Interest, Vec<u64>> = HashMap::new();
        let mut next_id = 0u64;
        let mut asked = 0u64;
        while let Some(first) = changes.recv().await {
            let mut next = Some(first);
            while let Some(change) = next.take() {
                match change {
                    Change::Add(filter) => {
                        asked += 1;
                        let mut ids = Vec::new();
                        let via: Via = filter.group.is_some().then(|| Arc::new(filter.clone()));
                        for subject in subject::filter_to_subjects(&self.config.subject_prefix, &filter.path) {
                            let subscribed = match &filter.group {
                                None => self.client.subscribe(subject.clone()).await,
                                Some(group) => {
                                    let queue = subject::queue_group(&self.config.subject_prefix, group, &filter.path);
                                    self.queues.queue_subscribe(subject.clone(), queue).await
                                }
                            };
                            match subscribed {
                                Ok(subscriber) => {
                                    next_id += 1;
                                    ids.push(next_id);
                                    let via = via.clone();
                                    let _ = reading.send(inbox::Command::Attach { id: next_id, via, subscriber });
                                }
                                Err(e) => tracing::error!(%subject, "cluster: cannot subscribe: {e}"),
                            }
                        }
                        // A filter removed and added again before this ran: the old readers go.
                        for old in readers.insert(filter, ids).into_iter().flatten() {
                            let _ = reading.send(inbox::Command::Detach(old));
                        }
                    }
                    Change::Remove(filter) => {
                        let still_wanted = crate::lock(&self.interest).contains_key(&filter);
                        if !still_wanted {
                            // Dropping a subscriber unsubscribes it.
                            for old in readers.remove(&filter).into_iter().flatten() {
                                let _ = reading.send(inbox::Command::Detach(old));
                            }
                        }
                    }
                }
                next = changes.try_recv().ok();
            }
            self.round_trip().await;
            self.confirmed.send_replace(asked);
        }
    }

    /// Waits until the NATS server has handled everything this node sent it so far. The
    /// client's `flush` only writes its buffer; a request to a subject nobody serves comes back
    /// (as "no responders") only after the server handled what came before it on this
    /// connection.
    async fn round_trip(&self) {
        let subject = format!("{}.rtt", self.config.subject_prefix);
        for client in [&self.client, &self.queues] {
            if client.connection_state() != async_nats::connection::State::Connected {
                continue; // it subscribes again when it is back
            }
            match client.request(subject.clone(), Bytes::new()).await {
                Ok(_) => {}
                Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {}
                Err(e) => tracing::warn!("cluster: NATS did not confirm this node's subscriptions: {e}"),
            }
        }
    }

    /// Hands forwarded messages to the NATS client, in order.
    async fn publish_forwarded(self: Arc<Cluster>, mut outbound: mpsc::Receiver<(String, Bytes)>) {
        while let Some((subject, bytes)) = outbound.recv().await {
            if let Err(e) = self.client.publish(subject, bytes).await {
                self.not_forwarded(&format!("NATS refused it: {e}"));
            }
        }
    }

    /// Routes what another node forwarded to this node's sessions, each message once.
    fn route_one(&self, node: &dyn LocalNode, seen: &mut dedup::Seen, arrived: Arrived) {
        let Arrived { via, message: nats, .. } = arrived;
        let via = via.as_deref();
        let Some(topic) = subject::subject_to_topic(&self.config.subject_prefix, &nats.subject) else { return };
        let raw = nats.payload;
        let envelope = match postcard::from_bytes::<Envelope<'_>>(&raw) {
            Ok(envelope) if envelope.version == ENVELOPE_VERSION => envelope,
            Ok(envelope) => {
                tracing::debug!(version = envelope.version, "cluster: a message of an unknown envelope version");
                return;
            }
            Err(e) => {
                tracing::debug!("cluster: an unreadable message from NATS: {e}");
                return;
            }
        };
        // A share group's copy comes once (NATS gives it to one member of the queue group);
        // plain subscriptions may overlap.
        if via.is_none() && !seen.first_time(envelope.origin, envelope.seq) {
            return;
        }
        let message = Message {
            topic: topic.into_boxed_str(),
            payload: raw.slice_ref(envelope.payload),
            qos: envelope.qos.min(2),
            retain: envelope.retain,
            forwarded: raw.slice_ref(envelope.forwarded),
            expires_at: envelope.expires_in_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
            publisher: 0,
            timestamp_ms: envelope.timestamp_ms,
        };
        let reach = match via {
            None => Reach::Plain,
            Some(Interest { group, path }) => Reach::Group { path, group: group.as_deref().unwrap_or_default() },
        };
        node.route_from_cluster(message, envelope.publisher, reach);
    }
}

fn log_event(event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => tracing::info!("cluster: connected to NATS"),
        async_nats::Event::Disconnected => tracing::warn!("cluster: lost NATS; serving local clients, reconnecting"),
        other => tracing::debug!("cluster: NATS {other}"),
    }
}

/// A random number (this node's id in the cluster for one run).
fn rand_u64() -> u64 {
    fastrand::u64(..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_prints_as_emqx_does() {
        let m = Membership { running: vec!["emqx@n1".into(), "emqx@127.0.0.1".into()], stopped: vec![] };
        assert_eq!(m.erlang(), "#{running_nodes => [emqx@n1,'emqx@127.0.0.1'],stopped_nodes => []}");
        assert_eq!(m.json(), serde_json::json!({"running_nodes": ["emqx@n1", "emqx@127.0.0.1"], "stopped_nodes": []}));
    }

    #[test]
    fn an_envelope_reads_back_borrowing_its_payload() {
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            origin: 7,
            seq: 9,
            qos: 1,
            retain: true,
            expires_in_ms: Some(5),
            timestamp_ms: 11,
            publisher: "p",
            forwarded: b"\x01\x02",
            payload: b"hello",
        };
        let bytes = postcard::to_allocvec(&envelope).unwrap();
        let back: Envelope<'_> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((back.origin, back.seq, back.qos, back.retain), (7, 9, 1, true));
        assert_eq!((back.payload, back.forwarded, back.expires_in_ms), (&b"hello"[..], &b"\x01\x02"[..], Some(5)));
    }
}
