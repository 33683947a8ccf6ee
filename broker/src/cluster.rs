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
//!   messages): one member in the cluster gets each message. With `random` NATS picks the
//!   node; with the other strategies the publishing node picks it, from what every node's
//!   heartbeat says it has members of, and sends the message there, which answers once a
//!   member took it (`shares`); the queue group then serves only a group the publishing node
//!   has not heard of yet. A message that its member will not deliver (its session ended;
//!   its full queue dropped it) goes to another member (`Node::redispatch`), on another node
//!   when none is left on this one: offered as a NATS request to the queue group, which the
//!   receiving node answers once a member took it, again until one does.
//! - **Who runs**: a heartbeat a second ([`HEARTBEAT`]) with the node's [`NodeInfo`].
//! - **Commands on another node** (`broker ctl cluster call NODE ...`, and the management
//!   API's per-node paths): a NATS request to `<prefix>.ctl.<node>`, which that node answers
//!   by running the command as its own `broker ctl` would ([`Commands`]).
//!
//! - **QoS 1 and 2 are stored before they are acknowledged.** Such a message reaches the
//!   other nodes on its subject as a QoS 0 one does, and is also stored in this node's
//!   JetStream stream (`[cluster] retention`, `replicas`), which captures
//!   `<prefix>.q.<node>` (`subject::durable_root`); the publisher's PUBACK / PUBREC waits until
//!   the stream has it ([`Stored`]): once a publisher holds one, the message is in NATS,
//!   whatever becomes of this node. While NATS is away, nothing waits (the node serves its own
//!   clients).
//! - **One batch, one answer from JetStream, for a run of messages** (`batch`). The QoS 1/2
//!   messages queued together (at most [`ACK_EVERY`]) are stored as one stream message on
//!   this node's batch subject, which no node subscribes to: JetStream writes each stream
//!   message to its file store, the costliest part of forwarding for the NATS server. The
//!   stream is this node's alone, so its sequence numbers count this node's batches: an
//!   answer with sequence `last + 1` vouches for the run (see `await_stored`). A gap fails the
//!   run, and its publishers are told so. Readers of the streams take batches apart.
//!
//! - **A message no other node wants stays here** (`summary`): each node's interest in
//!   summary (its filters' first topic levels) is in a KV bucket that every node follows; a
//!   message whose first level no other node's summary holds is routed here only, and goes
//!   to the stream only if a persistent session here gets it. A SUBACK that widens this
//!   node's summary waits until the other nodes have it in their view.
//!
//! - **Catching up after losing NATS.** When its connection comes back, a node reads the
//!   other nodes' streams from shortly before it was lost (`catch_up`) and routes what it
//!   missed: every QoS 1/2 message published meanwhile reaches its subscribers, late. What it
//!   had routed already is recognised (`dedup`) and not routed twice.
//!
//! - **Sessions across nodes** (`ownership`): one node owns each client id's session at a
//!   time, recorded in a JetStream KV bucket and changed by compare-and-set. A CONNECT on
//!   another node has the owner give the session up (its connection ends with 0x8E) and
//!   moves it (`crate::session::moved`); a node that is not running has its key taken, and a
//!   persistent session of it is revived from its record in a second bucket, with what was
//!   published for it read back from the streams ([`Cluster::replay`]).
//!
//! - **Plugin state** named in `[cluster] shared_state` is the cluster's (`shared_state`).
//!
//! What this does not do yet (issue "Scale out on NATS"): with `random`, a session revived
//! after its node died does not get back what a share group had given it there (the group
//! gets it when that node comes back with its store), and a message NATS hands to a node as
//! it is killed is lost to its group.

mod batch;
mod dedup;
mod inbox;
mod ownership;
mod shared_state;
mod shares;
mod subject;
mod summary;

pub(crate) use ownership::{Claim, HandedOver};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::log_limit::Throttle;
use crate::message::{Head, Message};
use crate::router::{Filter, Reach};
use inbox::{Arrived, Via};

/// What the cluster needs of its node (reached through this, so that the node's module does not
/// depend on this one both ways).
pub(crate) trait LocalNode: Send + Sync + 'static {
    /// Routes a message another node forwarded (from client `publisher`) to this node's
    /// sessions that `reach` says.
    /// Returns to how many sessions it went.
    fn route_from_cluster(&self, message: Message, publisher: &str, reach: Reach<'_>) -> usize;

    /// What this node's heartbeat tells the others about it (see [`NodeInfo`]).
    fn info(&self) -> NodeInfo;

    /// Gives `client_id`'s session up to node `to` (see `ownership`), whose connection asked
    /// with `clean_start`: passes the ownership on, ends the connection serving it, and says
    /// what became of the session. It stays routed to until [`LocalNode::release_moved`].
    fn hand_over(
        self: Arc<Self>,
        client_id: String,
        clean_start: bool,
        to: String,
    ) -> Pin<Box<dyn Future<Output = HandedOver> + Send>>;

    /// Ends `client_id`'s session, given up before, and returns what was queued for it since
    /// (encoded); `None` if it is not here.
    fn release_moved(&self, client_id: &str) -> Option<Vec<u8>>;

    /// Whether this node has a session for `client_id`, or a connection of it opening one.
    fn holds(&self, client_id: &str) -> bool;
}

/// A command's outcome: its output, or a status (`plugin_api::abi::STATUS_*`) and the error's
/// text.
pub(crate) type CommandResult = Result<String, (plugin_api::abi::Status, String)>;

/// How a node runs a `broker ctl` command another node asked it to (its plugin manager's,
/// reached through this, so that this module does not depend on the manager's).
pub(crate) trait Commands: Send + Sync + 'static {
    /// Runs `args` (the words after `broker ctl`): the output, or a status
    /// (`plugin_api::abi::STATUS_*`) and the error's text.
    fn run(&self, args: Vec<String>) -> Pin<Box<dyn Future<Output = CommandResult> + Send>>;
}

/// A command's answer between nodes.
#[derive(Debug, Serialize, Deserialize)]
struct CommandReply {
    /// `plugin_api::abi::STATUS_OK`, or why it failed.
    status: plugin_api::abi::Status,
    output: String,
}

/// How long a command on another node may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Subjects longer than this are not forwarded, and no interest is taken in them (the NATS
/// server's control line is 4 KiB by default, and a subject travels in it: a longer line
/// closes the connection).
const MAX_SUBJECT: usize = 3 * 1024;

/// The queue to NATS (`[cluster] forward_queue` messages): past that, a message is not
/// forwarded (counted and logged). Client publishers are held back from half of it (see
/// [`Cluster::backlogged`]) until it is down to an eighth, so only publishers that cannot wait
/// (plugins, `$SYS`) ever fill it.
#[derive(Debug, Clone, Copy)]
struct QueueLimits {
    capacity: usize,
    high: usize,
    low: usize,
}

impl QueueLimits {
    fn of(capacity: usize) -> QueueLimits {
        QueueLimits { capacity, high: capacity / 2, low: capacity / 8 }
    }
}

/// How long a QoS 1/2 message's publisher waits for JetStream to say it stored the message.
const STORED_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many QoS 1/2 messages share one answer from JetStream.
const ACK_EVERY: usize = 256;

/// The most bytes a batch of QoS 1/2 messages holds when the server has not said how large a
/// message it takes (`batch`; three quarters of NATS's default 1 MiB).
const DEFAULT_MAX_BATCH: usize = 768 * 1024;

/// How far the forwarding task looks ahead in its queue for more QoS 1/2 messages.
const LOOKAHEAD: usize = 1024;

/// How long before it lost NATS a node reads the streams from when it is back (the messages
/// that may have been on their way; those it had routed are recognised).
const CATCH_UP_MARGIN: Duration = Duration::from_secs(2);

/// How many messages read back are handed to the inbox at a time.
const CATCH_UP_BATCH: usize = 1024;

/// Resolves when JetStream has stored a forwarded QoS 1/2 message; `Err` says why it did not.
/// What the publisher's PUBACK / PUBREC waits for.
pub(crate) type Stored = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A message on its way to NATS.
struct Outgoing {
    subject: String,
    /// Headers (`HANDLED_HEADER`, `SHARE_GROUP_HEADER`), and where the answer goes, if any.
    headers: Option<async_nats::HeaderMap>,
    reply: Option<String>,
    bytes: Bytes,
    /// For a QoS 1/2 message: told when JetStream stored it (in a batch, `batch`).
    stored: Option<Told>,
    /// Sent on its subject too (not for a message kept on this node, which is only stored).
    core: bool,
}

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
    /// How many messages may wait to be handed to NATS (see `QueueLimits`).
    pub(crate) forward_queue: usize,
    /// How long the JetStream stream keeps QoS 1/2 messages.
    pub(crate) retention: Duration,
    /// How many bytes of them it keeps at most (the oldest go first).
    pub(crate) retention_bytes: i64,
    /// On how many NATS servers the stream keeps each message (a NATS cluster's).
    pub(crate) replicas: usize,
    /// How share groups pick their members (`broker.shared_subscription_strategy`): but for
    /// `random`, the publishing node picks the node by it (`shares`).
    pub(crate) share_strategy: crate::router::Strategy,
    /// How far back, before the last time a node that died was heard from (or before the
    /// oldest message pending for a session, as its record says), the streams are read for a
    /// session revived from it.
    pub(crate) revive_margin: Duration,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error("cannot reach NATS at {url}: {why} (start nats-server, or remove [cluster] nats to run one node alone)")]
    Unreachable { url: String, why: String },
    #[error("invalid [cluster] subject_prefix {0:?}: use letters, digits, '_' and '-' in '.'-separated tokens")]
    InvalidPrefix(String),
    #[error(
        "NATS at {url} cannot keep QoS 1/2 messages (JetStream stream {stream}): {why} (start nats-server with -js)"
    )]
    NoJetStream { url: String, stream: String, why: String },
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

/// The header of a message redispatched to a share group ([`Cluster::redispatch`]): the
/// group's NATS queue group. Only that group routes it.
const SHARE_GROUP_HEADER: &str = "Mqtt-Share-Group";

/// The header of a message on its topic's subject that names (space-separated) the NATS
/// queue groups its publishing node served by sending it to the node it picked (`shares`),
/// each as `<queue group>=<node>` (the node as a subject token): those queue groups let it
/// pass, and a session revived from a node that died reads back, from the stream, the
/// messages its share groups were sent there for.
const HANDLED_HEADER: &str = "Mqtt-Share-Handled";

/// Where each node's stream was read to (by stream name, its last sequence number read):
/// where a next read of it starts after.
pub(crate) type ReadTo = HashMap<String, u64>;

/// A share group's message to offer to the other nodes, and its group.
type Redispatched = (Message, Arc<crate::router::ShareGroup>);

/// How a node answers a redispatched message: a member of the group took it, or none here.
const TAKEN: &[u8] = b"taken";
const NOT_TAKEN: &[u8] = b"none";

/// How often a redispatched message is offered before it is given up, and how long an offer
/// waits for its answer.
const REDISPATCH_TRIES: u32 = 10;
const REDISPATCH_TIMEOUT: Duration = Duration::from_secs(1);

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

/// A share group's queue subscription: the group and its filter, and its NATS queue group
/// (named once, for the headers each message it brings is checked against).
#[derive(Debug)]
struct QueueSubscription {
    group: Box<str>,
    path: Box<str>,
    queue: String,
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
    /// Publishes QoS 1/2 messages into the stream, on `client`.
    jetstream: async_nats::jetstream::Context,
    /// `<prefix>.q.<node>`: the root of the subjects of this node's QoS 1/2 messages.
    durable_root: String,
    /// `<prefix>.q.*`: the root under which filters receive every node's QoS 1/2 messages.
    every_durable_root: String,
    origin: u64,
    next_seq: AtomicU64,
    /// Local subscriptions by filter, and by share group and filter: the node's interest.
    interest: Mutex<HashMap<Interest, usize>>,
    changes: mpsc::UnboundedSender<Change>,
    changes_rx: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    /// Interest changes asked for, and those the NATS server has confirmed (counts).
    requested: AtomicU64,
    confirmed: watch::Sender<u64>,
    outbound: mpsc::Sender<Outgoing>,
    queue: QueueLimits,
    outbound_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Some publisher waits for the queue to NATS to drain ([`Cluster::room`]).
    publishers_wait: std::sync::atomic::AtomicBool,
    /// Bumped when the queue drained below its low mark while publishers waited.
    drained: watch::Sender<u64>,
    node: OnceLock<Weak<dyn LocalNode>>,
    /// Messages not forwarded (queue full, subject too long), logged once a window.
    not_forwarded: AtomicU64,
    not_forwarded_log: Throttle<()>,
    /// The other nodes heard from, by name: when last, and what they said.
    peers: Mutex<HashMap<String, (Instant, NodeInfo)>>,
    /// The runtime the cluster's tasks run on (for [`Cluster::call_blocking`]).
    runtime: OnceLock<tokio::runtime::Handle>,
    /// Where this node's stream's numbering stood when it was made at start (`None`: NATS was
    /// not there yet; the forwarding task makes it).
    stream_at_start: Option<u64>,
    /// The main connection's events (lost, back), for the task that catches up.
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<async_nats::Event>>>,
    /// Share groups' messages to offer to the other nodes ([`Cluster::redispatch`]).
    redispatches: mpsc::UnboundedSender<Redispatched>,
    redispatches_rx: Mutex<Option<mpsc::UnboundedReceiver<Redispatched>>>,
    /// The bucket of session owners (`ownership`), once used.
    owners: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// The bucket of persistent sessions' records (`ownership`), once used, and what to write
    /// to it.
    records: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    record_writes: mpsc::UnboundedSender<ownership::RecordWrite>,
    record_writes_rx: Mutex<Option<mpsc::UnboundedReceiver<ownership::RecordWrite>>>,
    /// Plugin state shared with the other nodes (`shared_state`), once the store is given.
    shared_state: OnceLock<shared_state::SharedState>,
    /// The share groups this node has members of and since when (by NATS queue group: the
    /// group, since when, how many members); and unless the strategy is `random` (`shares`),
    /// those the other nodes said they have, the view made of both, the messages sent to
    /// another node for a group and not answered yet, and a wake-up for the heartbeat (sent at
    /// once when this node's groups change).
    held: Mutex<HashMap<String, (Interest, u64, u32)>>,
    peer_shares: Mutex<HashMap<String, Vec<shares::Held>>>,
    share_view: arc_swap::ArcSwap<shares::View>,
    share_pending: shares::Pending,
    beat_now: tokio::sync::Notify,
    /// This node's interest in summary, and the others' (`summary`): its filters by first
    /// level; widenings asked for and those acknowledged (counts); a wake-up for the task that
    /// puts it (and whether it must put it even if unchanged); the bucket; the revision of its
    /// last put, how far its watch of the bucket has read (0: not reading), and a wake-up to
    /// read it again from the start; the others' summaries by node with their revisions, and
    /// the view merged of them.
    levels: Mutex<summary::Levels>,
    summary_wanted: AtomicU64,
    summary_done: watch::Sender<u64>,
    summary_changed: tokio::sync::Notify,
    summary_force: std::sync::atomic::AtomicBool,
    summaries_bucket: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    own_revision: AtomicU64,
    watched: watch::Sender<u64>,
    resync: tokio::sync::Notify,
    summaries: Mutex<HashMap<String, (summary::Summary, u64)>>,
    others: arc_swap::ArcSwap<summary::Others>,
}

/// A heartbeat: the node's [`NodeInfo`], and its share groups (unless the strategy is `random`).
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    #[serde(flatten)]
    info: NodeInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shares: Vec<shares::Held>,
}

/// What forwarding a message gave: when it is stored (QoS 1/2, see [`Cluster::forward`]), and
/// the share groups this node serves it to itself: those `shares` picked this node for, and
/// while NATS is away every group of its own the message is for.
pub(crate) struct Forwarded {
    pub(crate) stored: Option<Stored>,
    pub(crate) here: Vec<Arc<crate::router::ShareGroup>>,
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
        // The main connection's events (lost, back) are logged and go to the catch-up task.
        let (events, events_rx) = mpsc::unbounded_channel();
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
                let events = events.clone();
                options = options.no_echo().event_callback(move |event| {
                    log_event(&event);
                    let _ = events.send(event);
                    async {}
                });
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
        let jetstream = async_nats::jetstream::ContextBuilder::new().timeout(STORED_TIMEOUT).build(client.clone());
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let (redispatches, redispatches_rx) = mpsc::unbounded_channel();
        let (record_writes, record_writes_rx) = mpsc::unbounded_channel();
        let queue = QueueLimits::of(config.forward_queue);
        let (outbound, outbound_rx) = mpsc::channel(queue.capacity);
        let durable_root = subject::durable_root(&config.subject_prefix, &config.node_name);
        let every_durable_root = subject::every_durable_root(&config.subject_prefix);
        let mut cluster = Cluster {
            config,
            client,
            queues,
            jetstream,
            durable_root,
            every_durable_root,
            origin: rand_u64(),
            next_seq: AtomicU64::new(1),
            interest: Mutex::new(HashMap::new()),
            changes,
            changes_rx: Mutex::new(Some(changes_rx)),
            requested: AtomicU64::new(0),
            confirmed: watch::Sender::new(0),
            outbound,
            queue,
            outbound_rx: Mutex::new(Some(outbound_rx)),
            publishers_wait: std::sync::atomic::AtomicBool::new(false),
            drained: watch::Sender::new(0),
            node: OnceLock::new(),
            not_forwarded: AtomicU64::new(0),
            not_forwarded_log: Throttle::new(Duration::from_secs(10)),
            peers: Mutex::new(HashMap::new()),
            runtime: OnceLock::new(),
            stream_at_start: None,
            events_rx: Mutex::new(Some(events_rx)),
            redispatches,
            redispatches_rx: Mutex::new(Some(redispatches_rx)),
            owners: tokio::sync::OnceCell::new(),
            records: tokio::sync::OnceCell::new(),
            shared_state: OnceLock::new(),
            record_writes,
            record_writes_rx: Mutex::new(Some(record_writes_rx)),
            held: Mutex::new(HashMap::new()),
            peer_shares: Mutex::new(HashMap::new()),
            share_view: arc_swap::ArcSwap::from_pointee(shares::View::default()),
            share_pending: shares::Pending::default(),
            beat_now: tokio::sync::Notify::new(),
            levels: Mutex::new(summary::Levels::default()),
            summary_wanted: AtomicU64::new(0),
            summary_done: watch::Sender::new(0),
            summary_changed: tokio::sync::Notify::new(),
            summary_force: std::sync::atomic::AtomicBool::new(false),
            summaries_bucket: tokio::sync::OnceCell::new(),
            own_revision: AtomicU64::new(0),
            watched: watch::Sender::new(0),
            resync: tokio::sync::Notify::new(),
            summaries: Mutex::new(HashMap::new()),
            others: arc_swap::ArcSwap::from_pointee(summary::Others::default()),
        };
        // A NATS without JetStream is refused at start; one not reached yet (`start_alone`)
        // gets its stream when it comes (see `publish_forwarded`).
        if cluster.reachable() {
            let last = cluster.ensure_stream().await.map_err(|why| ClusterError::NoJetStream {
                url: cluster.config.nats.clone(),
                stream: subject::stream(&cluster.config.subject_prefix, &cluster.config.node_name).0,
                why,
            })?;
            cluster.stream_at_start = Some(last);
        }
        tracing::info!(
            nats = %cluster.config.nats,
            prefix = %cluster.config.subject_prefix,
            "cluster: connected to NATS"
        );
        Ok(Arc::new(cluster))
    }

    /// Makes this node's stream of QoS 1/2 messages, or updates its settings; gives the
    /// sequence number of the last message in it.
    async fn ensure_stream(&self) -> Result<u64, String> {
        let (name, subjects) = subject::stream(&self.config.subject_prefix, &self.config.node_name);
        let config = async_nats::jetstream::stream::Config {
            name,
            subjects: vec![subjects],
            max_age: self.config.retention,
            max_bytes: self.config.retention_bytes,
            discard: async_nats::jetstream::stream::DiscardPolicy::Old,
            num_replicas: self.config.replicas,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let info = self.jetstream.create_or_update_stream(config).await.map_err(|e| e.to_string())?;
        Ok(info.state.last_sequence)
    }

    /// Starts the tasks that keep NATS in step with `node` and route what other nodes send
    /// (on the current runtime).
    pub(crate) fn start(self: &Arc<Cluster>, node: Weak<dyn LocalNode>) {
        let _ = self.node.set(node);
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let (reading, reading_rx) = mpsc::unbounded_channel();
        if let Some(changes) = crate::lock(&self.changes_rx).take() {
            tokio::spawn(self.clone().keep_interest(changes, reading.clone()));
        }
        if let Some(outbound) = crate::lock(&self.outbound_rx).take() {
            tokio::spawn(self.clone().publish_forwarded(outbound));
        }
        if let Some(events) = crate::lock(&self.events_rx).take() {
            tokio::spawn(self.clone().catch_up_after_losses(events, reading.clone()));
        }
        if let Some(redispatches) = crate::lock(&self.redispatches_rx).take() {
            tokio::spawn(self.clone().offer_redispatched(redispatches));
        }
        let cluster = self.clone();
        let mut seen = dedup::Seen::default();
        inbox::Inbox::default().spawn(reading_rx, move |arrived| {
            if let Some(node) = cluster.node.get().and_then(Weak::upgrade) {
                cluster.route_one(&*node, &mut seen, arrived);
            }
        });
        tokio::spawn(self.clone().heartbeat());
        self.start_summaries();
        if self.picks_shares() {
            tokio::spawn(self.clone().serve_picked_shares());
            tokio::spawn(self.clone().await_share_answers());
        }
        self.serve_sessions();
        if let Some(writes) = crate::lock(&self.record_writes_rx).take() {
            tokio::spawn(self.clone().write_records(writes));
        }
    }

    /// Each time the main connection comes back after it was lost, reads what the other nodes
    /// stored meanwhile (see [`Cluster::catch_up`]).
    async fn catch_up_after_losses(
        self: Arc<Cluster>,
        mut events: mpsc::UnboundedReceiver<async_nats::Event>,
        reading: mpsc::UnboundedSender<inbox::Command>,
    ) {
        let mut lost_at_ms = None;
        while let Some(event) = events.recv().await {
            match event {
                async_nats::Event::Disconnected => {
                    lost_at_ms.get_or_insert(crate::now_ms());
                    self.summaries_lost();
                }
                async_nats::Event::Connected => {
                    let Some(lost) = lost_at_ms.take() else { continue };
                    self.summaries_back();
                    let since = lost.saturating_sub(CATCH_UP_MARGIN.as_millis() as u64);
                    // The connection subscribes again as it comes back: once the server has
                    // handled that, what is published from now on arrives live.
                    self.round_trip().await;
                    match self.catch_up(since, &reading).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!("cluster: NATS is back; {n} QoS 1/2 messages read back to catch up"),
                        Err(e) => tracing::warn!("cluster: NATS is back, but catching up failed: {e}"),
                    }
                }
                _ => {}
            }
        }
    }

    /// Hands the inbox every QoS 1/2 message the other nodes' streams hold from `since_ms`
    /// (ms since the Unix epoch) up to now; it routes those not routed yet. Returns how many
    /// were read.
    async fn catch_up(&self, since_ms: u64, reading: &mpsc::UnboundedSender<inbox::Command>) -> Result<usize, String> {
        let (mine, _) = subject::stream(&self.config.subject_prefix, &self.config.node_name);
        let (mut read, mut batch) = (0, Vec::new());
        self.read_streams(
            since_ms,
            None,
            |name| name != mine,
            |message| {
                batch.push(message);
                if batch.len() >= CATCH_UP_BATCH {
                    read += batch.len();
                    let _ = reading.send(inbox::Command::Replay(std::mem::take(&mut batch)));
                }
            },
        )
        .await?;
        read += batch.len();
        let _ = reading.send(inbox::Command::Replay(batch));
        Ok(read)
    }

    /// Hands `each` every message that the nodes' streams `which` accepts (by name) hold from
    /// `since_ms` (ms since the Unix epoch) up to now, stream by stream, each in its order;
    /// for a stream that `after` names, only what it took after the sequence number given.
    /// Returns where each stream was read to (for a next read `after` it).
    async fn read_streams(
        &self,
        since_ms: u64,
        after: Option<&ReadTo>,
        which: impl Fn(&str) -> bool,
        mut each: impl FnMut(async_nats::Message),
    ) -> Result<ReadTo, String> {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        let prefix = subject::stream_name_prefix(&self.config.subject_prefix);
        let names: Vec<String> = self.jetstream.stream_names().filter_map(|n| async { n.ok() }).collect().await;
        let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
            .map_err(|e| e.to_string())?;
        let mut read_to = ReadTo::new();
        for name in names.into_iter().filter(|n| n.starts_with(&prefix) && which(n)) {
            let stream = self.jetstream.get_stream(&name).await.map_err(|e| e.to_string())?;
            let read_before = after.and_then(|after| after.get(&name)).copied();
            let deliver_policy = match read_before {
                Some(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
                None => DeliverPolicy::ByStartTime { start_time },
            };
            // Where it stood before the consumer was made (as `get_stream` found it): read to
            // there at least.
            let last = stream.cached_info().state.last_sequence;
            let at = read_to.entry(name.clone()).or_insert(read_before.unwrap_or(0));
            let config = OrderedConfig { deliver_policy, ..Default::default() };
            let consumer = stream.create_consumer(config).await.map_err(|e| e.to_string())?;
            // What it holds from there on, as the consumer was made.
            let pending = consumer.cached_info().num_pending;
            if pending == 0 {
                *at = (*at).max(last);
                continue;
            }
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            for _ in 0..pending {
                match tokio::time::timeout(COMMAND_TIMEOUT, messages.next()).await {
                    Ok(Some(Ok(message))) => {
                        if let Ok(info) = message.info() {
                            *at = (*at).max(info.stream_sequence);
                        }
                        let message = message.split().0;
                        if subject::is_batch(&self.config.subject_prefix, &message.subject) {
                            batch::unpack(&message).into_iter().for_each(&mut each);
                        } else {
                            // Stored one by one (before batches).
                            each(message);
                        }
                    }
                    Ok(Some(Err(e))) => return Err(format!("reading {name}: {e}")),
                    Ok(None) | Err(_) => return Err(format!("reading {name}: no message within {COMMAND_TIMEOUT:?}")),
                }
            }
        }
        Ok(read_to)
    }

    /// Answers the commands other nodes send this one with `commands` (on the current runtime).
    pub(crate) fn serve_commands(self: &Arc<Cluster>, commands: Arc<dyn Commands>) {
        let subject = subject::command_subject(&self.config.subject_prefix, &self.config.node_name);
        self.answer_requests(subject, "answer other nodes' commands", move |request| {
            let commands = commands.clone();
            async move {
                let reply = match serde_json::from_slice::<Vec<String>>(&request) {
                    // A command may not call on yet another node (nor back): no loops.
                    Ok(args) if args.starts_with(&["cluster".to_owned(), "call".to_owned()]) => CommandReply {
                        status: plugin_api::abi::STATUS_INVALID_ARGUMENT,
                        output: "`cluster call` cannot be called on another node".to_owned(),
                    },
                    Ok(args) => match commands.run(args).await {
                        Ok(output) => CommandReply { status: plugin_api::abi::STATUS_OK, output },
                        Err((status, output)) => CommandReply { status, output },
                    },
                    Err(e) => CommandReply {
                        status: plugin_api::abi::STATUS_INVALID_ARGUMENT,
                        output: format!("malformed command: {e}"),
                    },
                };
                Some(serde_json::to_vec(&reply).unwrap_or_default())
            }
        });
    }

    /// Subscribes to `subject` (on the current runtime) and answers each request on it with
    /// what `answer` makes of its payload, each in a task of its own; `None` leaves a request
    /// unanswered. `what` says, in the error logged if NATS refuses the subscription, what the
    /// node then cannot do.
    fn answer_requests<F, A>(self: &Arc<Cluster>, subject: String, what: &'static str, answer: F)
    where
        F: Fn(Bytes) -> A + Send + 'static,
        A: Future<Output = Option<Vec<u8>>> + Send + 'static,
    {
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut requests = match client.subscribe(subject).await {
                Ok(requests) => requests,
                Err(e) => return tracing::error!("cluster: cannot {what}: {e}"),
            };
            while let Some(request) = requests.next().await {
                let Some(reply_to) = request.reply else { continue };
                let (client, answered) = (client.clone(), answer(request.payload));
                tokio::spawn(async move {
                    if let Some(body) = answered.await {
                        let _ = client.publish(reply_to, Bytes::from(body)).await;
                    }
                });
            }
        });
    }

    /// Runs `args` (the words after `broker ctl`) on node `node`: its output, or a status
    /// (`plugin_api::abi::STATUS_*`) and the error's text.
    pub(crate) async fn call(&self, node: &str, args: &[String]) -> CommandResult {
        let subject = subject::command_subject(&self.config.subject_prefix, node);
        let body = Bytes::from(serde_json::to_vec(args).unwrap_or_default());
        let request = self.client.request(subject, body);
        let answer = match tokio::time::timeout(COMMAND_TIMEOUT, request).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                return Err((plugin_api::abi::STATUS_NOT_FOUND, format!("no running node {node:?} in the cluster")));
            }
            Ok(Err(e)) => {
                return Err((plugin_api::abi::STATUS_UNAVAILABLE, format!("node {node:?} did not answer: {e}")))
            }
            Err(_) => {
                let why = format!("node {node:?} did not answer within {COMMAND_TIMEOUT:?}");
                return Err((plugin_api::abi::STATUS_TIMEOUT, why));
            }
        };
        match serde_json::from_slice::<CommandReply>(&answer.payload) {
            Ok(CommandReply { status: plugin_api::abi::STATUS_OK, output }) => Ok(output),
            Ok(CommandReply { status, output }) => Err((status, output)),
            Err(e) => Err((plugin_api::abi::STATUS_ERROR, format!("node {node:?} answered unreadably: {e}"))),
        }
    }

    /// [`Cluster::call`], from a thread that may block (the plugin manager's, a plugin's).
    pub(crate) fn call_blocking(self: &Arc<Cluster>, node: &str, args: &[String]) -> CommandResult {
        let (node, args) = (node.to_owned(), args.to_vec());
        self.block_on(|cluster| async move { cluster.call(&node, &args).await })
            .unwrap_or_else(|why| Err((plugin_api::abi::STATUS_UNAVAILABLE, why.to_owned())))
    }

    /// Runs `work` on the cluster's runtime and blocks this thread until it is done (from any
    /// thread but the runtime's own workers); why not, if the cluster has not started or stopped.
    fn block_on<T, F>(self: &Arc<Cluster>, work: impl FnOnce(Arc<Cluster>) -> F) -> Result<T, &'static str>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let runtime = self.runtime.get().ok_or("the cluster has not started")?;
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        let work = work(self.clone());
        runtime.spawn(async move {
            let _ = done.send(work.await);
        });
        answer.recv().map_err(|_| "the cluster stopped")
    }

    /// Says every [`HEARTBEAT`] that this node runs (and at once when its share groups
    /// changed, see `shares`), and hears the others say so.
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
            let beat = tokio::select! {
                _ = tick.tick() => {
                    // Nodes silent for long enough drop out of the views.
                    self.rebuild_share_view();
                    self.rebuild_others();
                    true
                }
                () = self.beat_now.notified() => {
                    self.rebuild_share_view();
                    true
                }
                message = heard.next() => {
                    let Some(message) = message else { return };
                    self.heard(&message.payload);
                    false
                }
            };
            if beat {
                let Some(node) = self.node.get().and_then(Weak::upgrade) else { return };
                let shares = if self.picks_shares() { self.held_shares() } else { Vec::new() };
                let beat = Beat { info: node.info(), shares };
                let Ok(beat) = serde_json::to_vec(&beat) else { continue };
                // Not reaching NATS now is logged by the connection's events.
                let _ = self.client.publish(mine.clone(), Bytes::from(beat)).await;
            }
        }
    }

    /// Another node's heartbeat (or this node's own, ignored).
    fn heard(&self, payload: &[u8]) {
        let beat = match serde_json::from_slice::<Beat>(payload) {
            Ok(beat) if beat.info.node != self.config.node_name => beat,
            Ok(_) => return,
            Err(e) => return tracing::debug!("cluster: an unreadable heartbeat: {e}"),
        };
        let name = beat.info.node.clone();
        let was_running = crate::lock(&self.peers)
            .insert(name.clone(), (Instant::now(), beat.info))
            .is_some_and(|(at, _)| at.elapsed() <= 3 * HEARTBEAT);
        let changed = {
            let mut peer_shares = crate::lock(&self.peer_shares);
            let changed = peer_shares.get(&name).map_or(!beat.shares.is_empty(), |old| *old != beat.shares);
            peer_shares.insert(name, beat.shares);
            changed
        };
        if changed || !was_running {
            self.rebuild_share_view();
        }
        if !was_running {
            // A node heard (again) may want what this one keeps to itself until its summary
            // is read (`summary`).
            self.rebuild_others();
        }
    }

    /// The other nodes heard from: what each said last, and whether it still runs.
    pub(crate) fn peers(&self) -> Vec<(NodeInfo, bool)> {
        let mut peers: Vec<_> =
            crate::lock(&self.peers).values().map(|(at, info)| (info.clone(), at.elapsed() <= 3 * HEARTBEAT)).collect();
        peers.sort_by(|a, b| a.0.node.cmp(&b.0.node));
        peers
    }

    /// When node `name` was last heard from (ms since the Unix epoch), if ever since this node
    /// started.
    pub(crate) fn last_heard(&self, name: &str) -> Option<u64> {
        let at = crate::lock(&self.peers).get(name).map(|(at, _)| *at)?;
        Some(crate::now_ms().saturating_sub(at.elapsed().as_millis() as u64))
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
            let _ = self.changes.send(Change::Add(key.clone()));
            self.level_added(&key.path);
        }
        if self.holds_shares(&key, *count) {
            self.beat_now.notify_one();
        }
    }

    /// A session's subscription to `filter` went.
    pub(crate) fn unsubscribed(&self, filter: &Filter<'_>) {
        let key = Interest::of(filter);
        let mut interest = crate::lock(&self.interest);
        let Some(count) = interest.get_mut(&key) else { return };
        *count -= 1;
        let members = *count;
        if members == 0 {
            interest.remove(&key);
            let _ = self.changes.send(Change::Remove(key.clone()));
            self.level_removed(&key.path);
        }
        if self.holds_shares(&key, members) {
            self.beat_now.notify_one();
        }
    }

    /// Whether the publishing node picks the node of a share group's member (`shares`): with
    /// every strategy but `random`, which the NATS queue groups are by themselves.
    fn picks_shares(&self) -> bool {
        self.config.share_strategy != crate::router::Strategy::Random
    }

    /// Notes that this node now has `members` members of `key` (0: none left), if it is a
    /// share group: true if the publishing node picks its node (the heartbeat then tells the
    /// other nodes at once, and makes the view again). Called with `interest` held, so that
    /// the changes of one key are noted in their order.
    fn holds_shares(&self, key: &Interest, members: usize) -> bool {
        let Some(group) = key.group.as_deref() else { return false };
        let queue = subject::queue_group(&self.config.subject_prefix, group, &key.path);
        let mut held = crate::lock(&self.held);
        let members = u32::try_from(members).unwrap_or(u32::MAX);
        if members == 0 {
            held.remove(&queue);
        } else {
            held.entry(queue).or_insert_with(|| (key.clone(), crate::now_ms(), 0)).2 = members;
        }
        self.picks_shares()
    }

    /// This node's share groups, as its heartbeat says.
    fn held_shares(&self) -> Vec<shares::Held> {
        let held = crate::lock(&self.held);
        let mut list: Vec<shares::Held> = held
            .values()
            .map(|(key, since_ms, members)| shares::Held {
                group: key.group.as_deref().unwrap_or_default().to_owned(),
                path: key.path.to_string(),
                since_ms: *since_ms,
                members: *members,
            })
            .collect();
        list.sort_by(|a, b| (&a.group, &a.path).cmp(&(&b.group, &b.path)));
        list
    }

    /// Makes the share groups' view again from this node's groups and those of the running
    /// nodes. The other nodes' groups stay locked meanwhile, so that views are stored in the
    /// order they were made.
    fn rebuild_share_view(&self) {
        if !self.picks_shares() {
            return; // no node says it holds any: the view stays empty
        }
        let peer_shares = crate::lock(&self.peer_shares);
        let mine = self.held_shares();
        let running: Vec<String> =
            self.peers().into_iter().filter(|(_, runs)| *runs).map(|(info, _)| info.node).collect();
        let others =
            running.iter().filter_map(|node| peer_shares.get(node).map(|held| (node.as_str(), held.as_slice())));
        let held = std::iter::once((self.config.node_name.as_str(), mine.as_slice())).chain(others);
        let prefix = &self.config.subject_prefix;
        let previous = self.share_view.load();
        let view = shares::View::build(held, &previous, |group, path| subject::queue_group(prefix, group, path));
        self.share_view.store(Arc::new(view));
    }

    /// The share groups of the cluster, as `broker ctl cluster shares` prints them: one line a
    /// group, its nodes (and their members) in the order `sticky` takes them.
    pub(crate) fn share_groups(&self) -> String {
        if !self.picks_shares() {
            return "Share groups are spread by NATS queue groups (shared_subscription_strategy = random): each \
                    message to a node at random, then to a member there at random."
                .to_owned();
        }
        let view = self.share_view.load();
        view.groups()
            .iter()
            .map(|g| {
                let nodes: Vec<String> = g
                    .nodes
                    .iter()
                    .map(|n| format!("{} ({} member{})", n.node, n.members, if n.members == 1 { "" } else { "s" }))
                    .collect();
                format!("$share/{}/{} : {}", g.share.name, g.share.path, nodes.join(", "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `[cluster] revive_margin`.
    pub(crate) fn revive_margin(&self) -> Duration {
        self.config.revive_margin
    }

    /// Whether the NATS connection is up now.
    pub(crate) fn reachable(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Resolves once the NATS server has every interest asked for so far (at once if it has):
    /// what a SUBACK waits for.
    /// While NATS is away nothing waits: the subscription is made when it is back, and the
    /// node serves its own clients meanwhile.
    /// It also waits until the other nodes have this node's interest summary in their view,
    /// if it widened (`summary`): they send every message it may want to NATS.
    pub(crate) fn interest_in_place(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if !self.reachable() {
            return None;
        }
        let wanted = self.requested.load(Ordering::Acquire);
        let subscribed = (*self.confirmed.borrow() < wanted).then(|| {
            let mut confirmed = self.confirmed.subscribe();
            async move {
                // An error means the cluster task ended (shutting down): nothing to wait for.
                let _ = confirmed.wait_for(|&done| done >= wanted).await;
            }
        });
        let summarised = self.summary_in_place();
        if subscribed.is_none() && summarised.is_none() {
            return None;
        }
        Some(async move {
            if let Some(subscribed) = subscribed {
                subscribed.await;
            }
            if let Some(summarised) = summarised {
                summarised.await;
            }
        })
    }

    /// The next number among this node's messages: its identity in the cluster.
    fn next_origin(&self) -> crate::message::Origin {
        crate::message::Origin { node: self.origin, seq: self.next_seq.fetch_add(1, Ordering::Relaxed) }
    }

    /// `message`'s envelope, numbered `origin`.
    fn envelope<'a>(&self, message: &'a Message, publisher: &'a str, origin: crate::message::Origin) -> Envelope<'a> {
        Envelope {
            version: ENVELOPE_VERSION,
            origin: origin.node,
            seq: origin.seq,
            qos: message.qos,
            retain: message.retain,
            expires_in_ms: message
                .expires_at
                .map(|at| at.saturating_duration_since(Instant::now()).as_millis().try_into().unwrap_or(u64::MAX)),
            timestamp_ms: message.timestamp_ms,
            publisher,
            forwarded: message.forwarded(),
            payload: message.payload(),
        }
    }

    /// The refusal a QoS 1/2 `message` gets before anything is done with it (no
    /// `message.publish`, so no plugin retains it; no routing) when it cannot be forwarded as
    /// its acknowledgement promises: its topic is too long for a NATS subject. `None`
    /// otherwise, and for QoS 0 (delivered on this node only, see [`Cluster::forward`]).
    pub(crate) fn refusal(&self, message: &Message) -> Option<Stored> {
        if message.qos == 0 || !self.reachable() || subject_fits(&self.durable_root, message.topic()) {
            return None;
        }
        self.not_forwarded(TOO_LONG);
        Some(refused(TOO_LONG))
    }

    /// Forwards `message`, just published on this node by `publisher`, to the other nodes,
    /// numbering it (its [`Message::origin`]).
    /// A QoS 1/2 message goes through JetStream while NATS is reachable: the future says when
    /// it is stored. Unless the strategy is `random`, it also goes to the node picked for each
    /// share group it is for (`shares`); the groups this node was picked for are handed back.
    pub(crate) fn forward(&self, message: &mut Message, publisher: &str) -> Forwarded {
        self.number(message);
        self.send_out(message, publisher, false)
    }

    /// Numbers `message`, just published on this node (its [`Message::origin`]): for one that
    /// stays here, no other node wanting it ([`Cluster::others_may_want`]).
    pub(crate) fn number(&self, message: &mut Message) {
        let origin = self.next_origin();
        message.edit(|head| head.origin = Some(origin));
    }

    /// Stores `message`, numbered and routed on this node only (no other node wants it), in
    /// this node's stream: a persistent session here that it went to is revived from the
    /// streams on another node if this one dies. This node's share groups already served it:
    /// they are named in its stored copy's header, so that a member revived from this node
    /// gets it (`Handled`). The future says when it is stored; `None` while NATS is away.
    pub(crate) fn store(&self, message: &Message, publisher: &str) -> Option<Stored> {
        self.send_out(message, publisher, true).stored
    }

    /// Sends numbered `message` to NATS ([`Cluster::forward`]); `kept_here`: only to be stored
    /// ([`Cluster::store`]).
    fn send_out(&self, message: &Message, publisher: &str, kept_here: bool) -> Forwarded {
        let reachable = self.reachable();
        let through_jetstream = message.qos > 0 && reachable;
        let subject = subject::topic_to_subject(&self.config.subject_prefix, message.topic());
        let refusal = |why: &str| Forwarded { stored: through_jetstream.then(|| refused(why)), here: Vec::new() };
        if subject.len() > MAX_SUBJECT {
            self.not_forwarded(TOO_LONG);
            return refusal(TOO_LONG);
        }
        let origin = message.origin.unwrap_or_else(|| self.next_origin());
        let envelope = self.envelope(message, publisher, origin);
        // One allocation: the payload and properties, and room for the rest.
        let room = Vec::with_capacity(message.payload().len() + message.forwarded().len() + publisher.len() + 64);
        let Ok(bytes) = postcard::to_extend(&envelope, room) else {
            return Forwarded { stored: None, here: Vec::new() };
        };
        let bytes = Bytes::from(bytes);
        let view = self.share_view.load();
        let picked: Vec<(&shares::Spread, &str)> = if view.is_empty() || !reachable || kept_here {
            Vec::new()
        } else {
            view.pick(message.topic(), publisher, self.config.share_strategy).collect()
        };
        // While NATS is away nothing reaches a share group through it: this node's own groups
        // are served here, and named in the copy the NATS client holds for when it is back,
        // so that their queue groups let it pass then. So for a message kept here.
        let here = if reachable && !kept_here { Vec::new() } else { self.own_groups_matching(message.topic()) };
        let headers = (!picked.is_empty() || !here.is_empty()).then(|| {
            let me = self.config.node_name.as_str();
            let handled: Vec<String> = picked
                .iter()
                .map(|(spread, node)| (spread.queue.as_str(), *node))
                .chain(here.iter().map(|(_, queue)| (queue.as_str(), me)))
                .map(|(queue, node)| format!("{queue}={}", subject::token(node)))
                .collect();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(HANDLED_HEADER, handled.join(" ").as_str());
            headers
        });
        let (stored, told) = through_jetstream.then(oneshot::channel).unzip();
        let outgoing = Outgoing { subject, headers, reply: None, bytes: bytes.clone(), stored, core: !kept_here };
        let mut here: Vec<_> = here.into_iter().map(|(share, _)| share).collect();
        let (mine, others): (Vec<_>, Vec<_>) = picked.into_iter().partition(|(_, node)| *node == self.config.node_name);
        here.extend(mine.into_iter().map(|(spread, _)| spread.share.clone()));
        if self.outbound.try_send(outgoing).is_err() {
            self.not_forwarded("the queue to NATS is full");
            // This node's own subscribers get it all the same, its share groups' members too.
            return Forwarded { here, ..refusal("the queue to NATS is full") };
        }
        for (spread, node) in others {
            self.send_picked(message, &bytes, spread, node);
        }
        let stored = told.map(|told| -> Stored {
            Box::pin(async move { told.await.unwrap_or_else(|_| Err("the cluster stopped".to_owned())) })
        });
        Forwarded { stored, here }
    }

    /// Resolves once every QoS 1/2 message this node queued for NATS before the call is stored
    /// in its stream (or failed): a barrier through the forwarding queue, answered with the
    /// batch of what was queued ahead of it (an empty batch if nothing was). At once while
    /// NATS is away; at most [`STORED_TIMEOUT`].
    pub(crate) async fn flushed(&self) {
        if !self.reachable() {
            return;
        }
        let (told, stored) = oneshot::channel();
        let barrier = Outgoing {
            subject: String::new(),
            headers: None,
            reply: None,
            bytes: Bytes::new(),
            stored: Some(told),
            core: false,
        };
        if self.outbound.send(barrier).await.is_ok() {
            let _ = tokio::time::timeout(STORED_TIMEOUT, stored).await;
        }
    }

    /// This node's share groups whose filter matches `topic`, and their queue groups.
    fn own_groups_matching(&self, topic: &str) -> Vec<(Arc<crate::router::ShareGroup>, String)> {
        let held = crate::lock(&self.held);
        held.iter()
            .filter(|(_, (key, ..))| plugin_api::topic::matches(&key.path, topic))
            .filter_map(|(queue, (key, ..))| {
                let group = key.group.as_deref()?;
                Some((
                    Arc::new(crate::router::ShareGroup { name: group.into(), path: key.path.clone() }),
                    queue.clone(),
                ))
            })
            .collect()
    }

    /// Sends `message` (its envelope `bytes`) to `node`, picked for share group `spread`,
    /// which answers once a member took it ([`Cluster::await_share_answers`]).
    fn send_picked(&self, message: &Message, bytes: &Bytes, spread: &shares::Spread, node: &str) {
        let prefix = &self.config.subject_prefix;
        let subject = subject::topic_to_subject(&subject::share_root(prefix, node), message.topic());
        if subject.len() > MAX_SUBJECT {
            self.redispatch(message.clone(), spread.share.clone());
            return;
        }
        let id = self.share_pending.add(message.clone(), spread.share.clone());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SHARE_GROUP_HEADER, spread.queue.as_str());
        let reply = Some(subject::share_ack(prefix, &self.config.node_name, Some(id)));
        let outgoing =
            Outgoing { subject, headers: Some(headers), reply, bytes: bytes.clone(), stored: None, core: true };
        if self.outbound.try_send(outgoing).is_err() {
            self.not_forwarded("the queue to NATS is full");
            if let Some((message, share)) = self.share_pending.answered(id) {
                self.redispatch(message, share);
            }
        }
    }

    /// Takes the share groups' messages other nodes picked this node for (`shares`): routes
    /// each to its group's members here and answers whether one took it.
    async fn serve_picked_shares(self: Arc<Cluster>) {
        let prefix = &self.config.subject_prefix;
        let subject = format!("{}.>", subject::share_root(prefix, &self.config.node_name));
        let mut picked = match self.client.subscribe(subject).await {
            Ok(picked) => picked,
            Err(e) => return tracing::error!("cluster: cannot take share groups' messages from other nodes: {e}"),
        };
        while let Some(first) = picked.next().await {
            // What has arrived is taken, then answered: one answer a sending node for them all.
            let mut answers: HashMap<String, shares::Answers> = HashMap::new();
            let (mut next, mut taken) = (Some(first), 0);
            while let Some(nats) = next.take() {
                let took = self.take_picked(&nats);
                let to = nats.reply.as_deref().and_then(|reply| reply.rsplit_once('.'));
                if let Some((to, Ok(id))) = to.map(|(to, id)| (to, id.parse::<u64>())) {
                    let answer = answers.entry(to.to_owned()).or_default();
                    if took { &mut answer.taken } else { &mut answer.not_taken }.push(id);
                }
                taken += 1;
                if taken < shares::ANSWER_BATCH {
                    next = futures_util::FutureExt::now_or_never(picked.next()).flatten();
                }
            }
            for (to, answer) in answers {
                let Ok(body) = postcard::to_stdvec(&answer) else { continue };
                let _ = self.client.publish(format!("{to}.{}", shares::ANSWERS_TOKEN), Bytes::from(body)).await;
            }
        }
    }

    /// Routes a share group's message another node picked this node for: true if a member
    /// took it.
    fn take_picked(&self, nats: &async_nats::Message) -> bool {
        let Some(node) = self.node.get().and_then(Weak::upgrade) else { return false };
        let Some((message, envelope)) = self.open_envelope(&nats.subject, &nats.payload) else { return false };
        let Some(queue) = nats.headers.as_ref().and_then(|h| h.get(SHARE_GROUP_HEADER)) else { return false };
        let Some(key) = crate::lock(&self.held).get(queue.as_str()).map(|(key, ..)| key.clone()) else { return false };
        let Some(group) = key.group.as_deref() else { return false };
        node.route_from_cluster(message, envelope.publisher, Reach::Group { path: &key.path, group }) > 0
    }

    /// Hears the answers of the nodes sent share groups' messages (`send_picked`): a message
    /// that no member took there, whose node is gone (NATS says no one listens), or that is
    /// not answered within [`shares::ANSWER_TIMEOUT`], is redispatched to its group.
    async fn await_share_answers(self: Arc<Cluster>) {
        let subject = subject::share_ack(&self.config.subject_prefix, &self.config.node_name, None);
        // Without answers, every message sent is redispatched once its time is up.
        let mut answers = match self.client.subscribe(subject).await {
            Ok(answers) => Some(answers),
            Err(e) => {
                tracing::error!("cluster: cannot hear whether share groups' messages were taken: {e}");
                None
            }
        };
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                answer = async { answers.as_mut()?.next().await }, if answers.is_some() => {
                    let Some(answer) = answer else {
                        answers = None;
                        continue;
                    };
                    let (not_taken, taken) = match answer.subject.rsplit('.').next() {
                        // A node's answers to several.
                        Some(shares::ANSWERS_TOKEN) => match postcard::from_bytes::<shares::Answers>(&answer.payload) {
                            Ok(answers) => (answers.not_taken, answers.taken),
                            Err(e) => {
                                tracing::debug!("cluster: unreadable answers about share groups' messages: {e}");
                                continue;
                            }
                        },
                        // NATS's for one: no one listens there (the node is gone).
                        Some(id) => match id.parse() {
                            Ok(id) => (vec![id], Vec::new()),
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    for id in taken {
                        self.share_pending.answered(id);
                    }
                    for id in not_taken {
                        if let Some((message, share)) = self.share_pending.answered(id) {
                            self.redispatch(message, share);
                        }
                    }
                }
                _ = sweep.tick() => {
                    for (message, share) in self.share_pending.expired(shares::ANSWER_TIMEOUT) {
                        tracing::debug!(group = %crate::log_limit::clipped(&share.name), "cluster: a share group's message was not answered in time; redispatched");
                        self.redispatch(message, share);
                    }
                }
            }
        }
    }

    /// Sends `message`, which a member of share group `share` on this node will not deliver
    /// (see `Node::redispatch`), to a member on another node: on the topic's subject as when
    /// it was forwarded, with a [`SHARE_GROUP_HEADER`] that has every node route it to that
    /// group only (NATS gives one member of each queue group a copy; plain subscriptions and
    /// other groups ignore it). Not through JetStream: the stream holds the message already.
    ///
    /// It is a NATS request, which the node that got it answers once it routed it: a node
    /// whose last member just left may still be in the queue group (NATS had not heard yet),
    /// and may even have dropped the subscription it came through, so an offer not taken is
    /// made again ([`REDISPATCH_TRIES`]). One task offers them, in order.
    pub(crate) fn redispatch(&self, message: Message, share: Arc<crate::router::ShareGroup>) {
        if self.redispatches.send((message, share)).is_err() {
            tracing::warn!("cluster: a share group's message could not be redispatched: the cluster stopped");
        }
    }

    /// The task that offers redispatched messages to the other nodes, one at a time.
    async fn offer_redispatched(self: Arc<Cluster>, mut redispatches: mpsc::UnboundedReceiver<Redispatched>) {
        while let Some((message, share)) = redispatches.recv().await {
            let subject = subject::topic_to_subject(&self.config.subject_prefix, message.topic());
            // Who published is not known any more (the share strategy `hash` picks by it).
            let origin = message.origin.unwrap_or_else(|| self.next_origin());
            let envelope = self.envelope(&message, "", origin);
            let Ok(bytes) = postcard::to_stdvec(&envelope) else { continue };
            let bytes = Bytes::from(bytes);
            let mut headers = async_nats::HeaderMap::new();
            let queue = subject::queue_group(&self.config.subject_prefix, &share.name, &share.path);
            headers.insert(SHARE_GROUP_HEADER, queue.as_str());
            let mut why = String::new();
            let taken = 'offers: {
                for attempt in 1..=REDISPATCH_TRIES {
                    let offer = self.client.request_with_headers(subject.clone(), headers.clone(), bytes.clone());
                    why = match tokio::time::timeout(REDISPATCH_TIMEOUT, offer).await {
                        Ok(Ok(answer)) if answer.payload == TAKEN => break 'offers true,
                        Ok(Ok(_)) => "the node that got it had no member left".to_owned(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer".to_owned(),
                    };
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                false
            };
            if !taken {
                tracing::warn!(
                    topic = %crate::log_limit::clipped(message.topic()),
                    group = %crate::log_limit::clipped(&share.name),
                    "cluster: a share group's message was dropped: no other member took it ({why})"
                );
            }
        }
    }

    /// Messages queued for NATS now.
    fn queued(&self) -> usize {
        self.queue.capacity - self.outbound.capacity()
    }

    /// Whether the queue to NATS is long enough that a client publisher should wait
    /// ([`Cluster::room`]) before its next PUBLISH: overload protection, so that QoS 0
    /// messages are not dropped for a queue that a burst filled faster than NATS takes it.
    pub(crate) fn backlogged(&self) -> bool {
        self.queued() >= self.queue.high
    }

    /// Resolves once the queue to NATS is down to its low mark.
    pub(crate) fn room(self: &Arc<Cluster>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let cluster = self.clone();
        let mut drained = self.drained.subscribe();
        Box::pin(async move {
            loop {
                // Said before looking, so that the forwarding task, which looks at it after
                // taking from the queue, cannot miss this publisher.
                cluster.publishers_wait.store(true, Ordering::SeqCst);
                if cluster.queued() <= cluster.queue.low || drained.changed().await.is_err() {
                    return;
                }
            }
        })
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
                        let via: Via = filter.group.as_ref().map(|group| {
                            let queue = subject::queue_group(&self.config.subject_prefix, group, &filter.path);
                            Arc::new(QueueSubscription { group: group.clone(), path: filter.path.clone(), queue })
                        });
                        let roots = [&self.config.subject_prefix, &self.every_durable_root];
                        let subjects =
                            roots.into_iter().flat_map(|root| subject::filter_to_subjects(root, &filter.path));
                        for subject in subjects {
                            // No message on a topic that long is forwarded (`forward`), and a
                            // SUB line over the server's limit would cost the node its NATS
                            // connection.
                            if subject.len() + via.as_ref().map_or(0, |v| v.queue.len()) > MAX_SUBJECT {
                                tracing::debug!("cluster: no interest taken in a filter too long for a NATS subject");
                                continue;
                            }
                            let subscribed = match &via {
                                None => self.client.subscribe(subject.clone()).await,
                                Some(via) => self.queues.queue_subscribe(subject.clone(), via.queue.clone()).await,
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

    /// Hands forwarded messages to the NATS client, in order. Each run of QoS 1/2 messages
    /// (see the module's notes) is stored as one batch, whose answer from JetStream a task of
    /// its own awaits (`await_stored`), so that publishing goes on meanwhile (and the JetStream
    /// client's limit of answers awaited, which it releases as they come, is never waited for
    /// by the task that would release it).
    async fn publish_forwarded(self: Arc<Cluster>, mut outbound: mpsc::Receiver<Outgoing>) {
        let (runs, answers) = mpsc::unbounded_channel();
        // Where the stream's numbering stands, when it was just made or found again.
        let mut restart_at = self.stream_at_start;
        let stream_lost = Arc::new(std::sync::atomic::AtomicBool::new(restart_at.is_none()));
        tokio::spawn(await_stored(answers, stream_lost.clone()));
        let batch_subject = subject::batch_subject(&self.config.subject_prefix, &self.config.node_name);
        let mut ahead = std::collections::VecDeque::new();
        let mut durable_ahead = 0;
        let mut run = RunMade::default();
        let mut max_batch = DEFAULT_MAX_BATCH;
        loop {
            if ahead.is_empty() {
                let Some(next) = outbound.recv().await else { return };
                durable_ahead += usize::from(next.stored.is_some());
                ahead.push_back(next);
            }
            while ahead.len() < LOOKAHEAD {
                let Ok(next) = outbound.try_recv() else { break };
                durable_ahead += usize::from(next.stored.is_some());
                ahead.push_back(next);
            }
            if outbound.len() <= self.queue.low && self.publishers_wait.swap(false, Ordering::SeqCst) {
                self.drained.send_modify(|n| *n += 1);
            }
            let Some(Outgoing { subject, headers, reply, bytes, stored, core }) = ahead.pop_front() else { continue };
            let barrier = subject.is_empty();
            let Some(told) = stored else {
                if let Err(e) = self.send(subject, headers, reply, bytes).await {
                    self.not_forwarded(&format!("NATS refused it: {e}"));
                }
                continue;
            };
            durable_ahead -= 1;
            if stream_lost.swap(false, Ordering::AcqRel) {
                match self.ensure_stream().await {
                    Ok(last) => restart_at = Some(last),
                    Err(why) => {
                        stream_lost.store(true, Ordering::Release);
                        let (_, mut waiting, _) = run.take();
                        waiting.push(told);
                        fail(waiting, &format!("the JetStream stream cannot be made: {why}"));
                        continue;
                    }
                }
            }
            // A batch stays within what the server takes in one message (as it said when the
            // batch started): one that a message would take past it is stored first.
            if run.batch.messages() == 0 {
                max_batch = match self.client.server_info().max_payload {
                    0 => DEFAULT_MAX_BATCH,
                    max => max * 3 / 4,
                };
            }
            if run.batch.messages() > 0 && run.batch.len_with(&subject, bytes.len()) > max_batch {
                self.store_batch(&batch_subject, &mut run, restart_at.take(), &runs).await;
            }
            run.told.push(told);
            if barrier {
                // Answered with the batch of what was queued before it (`Cluster::flushed`).
                self.store_batch(&batch_subject, &mut run, restart_at.take(), &runs).await;
                continue;
            }
            let handled = headers.as_ref().and_then(|h| h.get(HANDLED_HEADER)).map(|h| h.as_str().to_owned());
            run.batch.push(&subject, handled.as_deref(), &bytes);
            if core {
                if let Err(e) = self.send(subject, headers, None, bytes).await {
                    run.failed.get_or_insert_with(|| format!("NATS refused it: {e}"));
                }
            }
            if durable_ahead > 0 && run.told.len() < ACK_EVERY {
                continue; // the run goes on: stored with the messages queued behind it
            }
            self.store_batch(&batch_subject, &mut run, restart_at.take(), &runs).await;
        }
    }

    /// Stores the batch of `run` in this node's stream (or fails the run, if it failed), and
    /// starts the next run empty: its waiting publishers are told once the stream's answer is
    /// in (`await_stored`).
    async fn store_batch(
        &self,
        subject: &str,
        run: &mut RunMade,
        restart_at: Option<u64>,
        runs: &mpsc::UnboundedSender<Run>,
    ) {
        let (batch, told, failed) = run.take();
        if let Some(why) = failed {
            return fail(told, &why);
        }
        match self.jetstream.publish(subject.to_owned(), batch).await {
            Ok(answer) => drop(runs.send(Run { answer, told, restart_at })),
            Err(e) => fail(told, &format!("JetStream refused it: {e}")),
        }
    }

    /// Publishes on the main connection, with `headers` and a `reply` subject if given.
    async fn send(
        &self,
        subject: String,
        headers: Option<async_nats::HeaderMap>,
        reply: Option<String>,
        bytes: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        match (headers, reply) {
            (None, None) => self.client.publish(subject, bytes).await,
            (Some(headers), None) => self.client.publish_with_headers(subject, headers, bytes).await,
            (headers, Some(reply)) => {
                self.client.publish_with_reply_and_headers(subject, reply, headers.unwrap_or_default(), bytes).await
            }
        }
    }

    /// Routes what another node forwarded to this node's sessions, each message once.
    fn route_one(&self, node: &dyn LocalNode, seen: &mut dedup::Seen, arrived: Arrived) {
        let Arrived { via, message: nats, .. } = arrived;
        let via = via.as_deref();
        let header = |name| nats.headers.as_ref().and_then(|h| h.get(name));
        // A message redispatched to a share group is for that group only; its sender waits for
        // the answer.
        let target = header(SHARE_GROUP_HEADER);
        let redispatched = target.is_some();
        if target.is_some_and(|target| via.map(|v| v.queue.as_str()) != Some(target.as_str())) {
            return;
        }
        // A group its publishing node sent the message to the node it picked for it (`shares`).
        if let (Some(handled), Some(via)) = (header(HANDLED_HEADER), via) {
            if handled_groups(handled.as_str()).any(|(queue, _)| queue == via.queue) {
                return;
            }
        }
        let Some((message, envelope)) = self.open_envelope(&nats.subject, &nats.payload) else { return };
        let reply = nats.reply.clone().filter(|_| redispatched);
        // A share group's copy comes once (NATS gives it to one member of the queue group);
        // plain subscriptions may overlap.
        if via.is_none() && !seen.first_time(envelope.origin, envelope.seq) {
            return;
        }
        let Some(QueueSubscription { group, path, .. }) = via else {
            node.route_from_cluster(message, envelope.publisher, Reach::Plain);
            return;
        };
        let routed = node.route_from_cluster(message.clone(), envelope.publisher, Reach::Group { path, group });
        if let Some(reply) = reply {
            // From the connection that got it: the other one's echo is off, and the sender may
            // be this node.
            let queues = self.queues.clone();
            tokio::spawn(async move {
                let answer = if routed > 0 { TAKEN } else { NOT_TAKEN };
                let _ = queues.publish(reply, Bytes::from_static(answer)).await;
            });
        } else if routed == 0 {
            // The group's last member here left while NATS still counted this node in the
            // queue group: a member on another node gets it.
            self.redispatch(message, Arc::new(crate::router::ShareGroup { name: group.clone(), path: path.clone() }));
        }
    }
}

impl Cluster {
    /// The message a NATS message on `subject` carries (`raw`, an [`Envelope`]), and its
    /// envelope; `None` if it is not one.
    fn open_envelope<'a>(&self, subject: &str, raw: &'a [u8]) -> Option<(Message, Envelope<'a>)> {
        let topic = subject::subject_to_topic(&self.config.subject_prefix, subject)?;
        let envelope = match postcard::from_bytes::<Envelope<'_>>(raw) {
            Ok(envelope) if envelope.version == ENVELOPE_VERSION => envelope,
            Ok(envelope) => {
                tracing::debug!(version = envelope.version, "cluster: a message of an unknown envelope version");
                return None;
            }
            Err(e) => {
                tracing::debug!("cluster: an unreadable message from NATS: {e}");
                return None;
            }
        };
        let head = Head {
            qos: envelope.qos.min(2),
            retain: envelope.retain,
            expires_at: envelope.expires_in_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
            publisher: 0,
            timestamp_ms: envelope.timestamp_ms,
            origin: Some(crate::message::Origin { node: envelope.origin, seq: envelope.seq }),
        };
        let message = Message::new(head, &topic, envelope.payload, envelope.forwarded);
        Some((message, envelope))
    }

    /// Every QoS 1/2 message the nodes' streams hold from `since_ms` on that `wanted` accepts
    /// (`Some`), with its publisher's client id and what `wanted` said, stream by stream in
    /// each stream's order (for a session revived from a node that died: see `ownership`).
    /// `wanted` is given each message's topic and the share groups its publishing node sent it
    /// to a node for ([`Handled`]).
    /// Read again `after` where a first read stopped, it gives only messages published up to
    /// `until_ms` (this node's clock; the publishing node's stamp): what was published before
    /// then and stored only after the first read (see `Node::replay_into`). Also returns where
    /// each stream was read to.
    pub(crate) async fn replay<T>(
        &self,
        since_ms: u64,
        after: Option<(&ReadTo, u64)>,
        wanted: impl Fn(&str, &Handled<'_>) -> Option<T>,
    ) -> Result<(Vec<(Message, String, T)>, ReadTo), String> {
        let mut found = Vec::new();
        let until_ms = after.map(|(_, until)| until);
        let read_to = self
            .read_streams(
                since_ms,
                after.map(|(read_to, _)| read_to),
                |_| true,
                |nats| {
                    if let Some((message, envelope)) = self.open_envelope(&nats.subject, &nats.payload) {
                        if until_ms.is_some_and(|until| message.timestamp_ms > until) {
                            return;
                        }
                        let header = nats.headers.as_ref().and_then(|h| h.get(HANDLED_HEADER)).map(|h| h.as_str());
                        let handled = Handled { header: header.unwrap_or_default() };
                        if let Some(why) = wanted(message.topic(), &handled) {
                            let publisher = envelope.publisher.to_owned();
                            found.push((message, publisher, why));
                        }
                    }
                },
            )
            .await?;
        Ok((found, read_to))
    }

    /// How long a QoS 1/2 message's publisher waits for it to be stored: one queued for NATS
    /// is stored within this, or its publisher is told it was not.
    pub(crate) fn store_deadline(&self) -> Duration {
        STORED_TIMEOUT
    }
}

/// The share groups a message's publishing node sent it to a node for, and which (`shares`).
#[derive(Debug)]
pub(crate) struct Handled<'a> {
    header: &'a str,
}

impl Handled<'_> {
    /// Whether the message was sent to `sent`'s node for its share group.
    pub(crate) fn names(&self, sent: &SentTo) -> bool {
        handled_groups(self.header).any(|(queue, node)| queue == sent.queue && node == sent.node)
    }
}

/// A share group and a node, as a [`HANDLED_HEADER`] names them (made once, then tested
/// against every message read back: [`Handled::names`]).
#[derive(Debug)]
pub(crate) struct SentTo {
    queue: String,
    node: String,
}

impl SentTo {
    fn new(prefix: &str, group: &str, path: &str, node: &str) -> SentTo {
        SentTo { queue: subject::queue_group(prefix, group, path), node: subject::token(node) }
    }
}

impl Cluster {
    /// Share group `group` at filter `path` sent to node `node`, as a message's header would
    /// say it.
    pub(crate) fn sent_to(&self, group: &str, path: &str, node: &str) -> SentTo {
        SentTo::new(&self.config.subject_prefix, group, path, node)
    }
}

fn log_event(event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => tracing::info!("cluster: connected to NATS"),
        async_nats::Event::Disconnected => tracing::warn!("cluster: lost NATS; serving local clients, reconnecting"),
        other => tracing::debug!("cluster: NATS {other}"),
    }
}

/// Tells a QoS 1/2 message's publisher whether the message is stored (or why not).
type Told = oneshot::Sender<Result<(), String>>;

/// The run of QoS 1/2 messages the forwarding task is making (`Cluster::publish_forwarded`):
/// its batch, who waits for it to be stored, and why it failed, if it did.
#[derive(Default)]
struct RunMade {
    batch: batch::Batch,
    told: Vec<Told>,
    failed: Option<String>,
}

impl RunMade {
    /// Its batch (as the stream message's payload), who waits, and why it failed; it starts
    /// again empty.
    fn take(&mut self) -> (Bytes, Vec<Told>, Option<String>) {
        (self.batch.take(), std::mem::take(&mut self.told), self.failed.take())
    }
}

/// A run of QoS 1/2 messages stored in JetStream as one batch, and the stream's answer.
struct Run {
    answer: async_nats::jetstream::context::PublishAckFuture,
    /// The run's publishers, oldest first.
    told: Vec<Told>,
    /// Where the stream's numbering stood before this run, when the stream was just made or
    /// found again.
    restart_at: Option<u64>,
}

/// Awaits the stream's answers to runs of QoS 1/2 messages, many at once, and tells each
/// run's publishers, in order, whether the stream has their messages: it does when the
/// answer's sequence number is the last one's plus the run's length (this node's stream
/// numbers only this node's messages, in the order they were sent). Anything else (an error,
/// a gap, a stream made anew) fails the run; the numbering then starts again from its answer.
async fn await_stored(mut runs: mpsc::UnboundedReceiver<Run>, stream_lost: Arc<std::sync::atomic::AtomicBool>) {
    type Answered = (Vec<Told>, Option<u64>, Result<u64, String>);
    let mut awaiting: futures_util::stream::FuturesOrdered<Pin<Box<dyn Future<Output = Answered> + Send>>> =
        futures_util::stream::FuturesOrdered::new();
    let mut last: Option<u64> = None;
    let mut open = true;
    while open || !awaiting.is_empty() {
        tokio::select! {
            Some((told, restart_at, answer)) = awaiting.next(), if !awaiting.is_empty() => {
                if restart_at.is_some() {
                    last = restart_at;
                }
                let answered = answer.as_ref().ok().copied();
                let verdict = match answer {
                    // One stream message, a batch, for the run.
                    Ok(seq) if last.is_some_and(|last| seq == last + 1) => Ok(()),
                    Ok(seq) => Err(format!(
                        "the stream's numbering has a gap (answer {seq} after {last:?} for a batch of {} \
                         messages): is another node named like this one?",
                        told.len()
                    )),
                    Err(why) => {
                        // The stream may be gone (NATS lost it): the next run makes or finds
                        // it first, and its numbering starts over there.
                        stream_lost.store(true, Ordering::Release);
                        Err(why)
                    }
                };
                last = answered;
                for t in told {
                    let _ = t.send(verdict.clone());
                }
            }
            run = runs.recv(), if open => match run {
                Some(Run { answer, told, restart_at }) => awaiting.push_back(Box::pin(async move {
                    let answer = answer.await.map(|ack| ack.sequence).map_err(|e| {
                        let lost = e.kind() == PublishErrorKind::StreamNotFound;
                        format!("JetStream did not store it: {e}{}", if lost { " (the stream is made again)" } else { "" })
                    });
                    (told, restart_at, answer)
                }) as Pin<Box<dyn Future<Output = Answered> + Send>>),
                None => open = false,
            },
        }
    }
}

/// The queue groups and nodes a [`HANDLED_HEADER`] names.
fn handled_groups(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(' ').filter_map(|item| item.split_once('='))
}

/// Tells the publishers of `run` that their messages were not stored, and why.
fn fail(run: impl IntoIterator<Item = Told>, why: &str) {
    for told in run {
        let _ = told.send(Err(why.to_owned()));
    }
}

/// Why a message on a topic too long for NATS is not forwarded.
const TOO_LONG: &str = "its topic is too long for a NATS subject";

/// Whether `topic`'s subject under `root` is within [`MAX_SUBJECT`]. The subject is built
/// only for a topic long enough for it to matter: past the root, the class token and its
/// dot, a byte takes at most three characters in a subject (`%XX`; a separator and an empty
/// level after it, `.%`, two).
fn subject_fits(root: &str, topic: &str) -> bool {
    root.len() + 4 + topic.len() * 3 <= MAX_SUBJECT || subject::topic_to_subject(root, topic).len() <= MAX_SUBJECT
}

/// A QoS 1/2 message that will not be stored, and why.
fn refused(why: &str) -> Stored {
    let why = why.to_owned();
    Box::pin(async move { Err(why) })
}

/// A random number (this node's id in the cluster for one run).
fn rand_u64() -> u64 {
    fastrand::u64(..)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header a message's publishing node names the share groups it served in: each group
    /// with the node it was sent to, which a revived session's replay reads back.
    #[test]
    fn the_handled_header_names_each_group_and_its_node() {
        let (g1, g2) = (subject::queue_group("mqtt", "g", "a/#"), subject::queue_group("mqtt", "h", "a/b"));
        let header = format!("{g1}={} {g2}={}", subject::token("emqx@n 1"), subject::token("emqx@n2"));
        let parsed: Vec<(&str, &str)> = handled_groups(&header).collect();
        assert_eq!(parsed, [(g1.as_str(), "emqx%40n%201"), (g2.as_str(), "emqx%40n2")]);
        let handled = Handled { header: &header };
        let sent = |group, path, node| SentTo::new("mqtt", group, path, node);
        assert!(handled.names(&sent("g", "a/#", "emqx@n 1")));
        assert!(!handled.names(&sent("g", "a/#", "emqx@n2")), "another node");
        assert!(!handled.names(&sent("g", "a/+", "emqx@n 1")), "another filter");
        assert!(handled.names(&sent("h", "a/b", "emqx@n2")));
        assert!(!Handled { header: "" }.names(&sent("g", "a/#", "emqx@n 1")));
    }

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
