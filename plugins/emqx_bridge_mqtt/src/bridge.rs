//! One bridge: the task that owns its queue and its connection, and what it shares with the
//! hook and `ctl`.
//!
//! The `message.publish` hook only appends to the bridge's inbox ([`Shared::enqueue`]) and wakes
//! the task. The task, on the plugin's own thread:
//!
//! 1. moves the inbox into the queue, writing its QoS 1/2 messages to the store in one commit
//!    (so they are in the store before they are handed to the remote broker);
//! 2. while connected, hands the remote broker the oldest messages not yet handed over, at most
//!    `max_inflight_size` at a time, under `forward_mountpoint`;
//! 3. deletes a message from the store once the remote broker acknowledged it (PUBACK for QoS 1,
//!    PUBCOMP for QoS 2; QoS 0 once written), in one commit for what arrived together;
//! 4. publishes what arrives from the remote broker's `subscription` into the local broker
//!    (`Host::publish`, under `receive_mountpoint`), then acknowledges it to the remote broker.
//!
//! Messages the bridge publishes are recognised in the hook by the thread they come from (the
//! host runs `message.publish` of a plugin's publish on the caller's thread), so they are never
//! forwarded back. Over MQTT 5 the bridge subscribes with No Local, so the remote broker never
//! sends it its own messages back; over MQTT 3.1.1 (which has no such option), a message from
//! the remote broker equal to one the bridge just forwarded there under a topic its
//! subscriptions cover is taken for that message coming back, and dropped ([`Echoes`]).

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugin_api::store::{Bucket, StoreBatch};
use plugin_api::{Host, QoS};
use rumqttc::tokio_rustls::rustls::ClientConfig;
use tokio::sync::{mpsc, watch, Notify};

use crate::link::{Ack, Inbound, Link, LinkEvent};
use crate::queue::{Message, Queue};
use crate::settings::{BridgeSettings, Proto, StartType};

/// Most messages waiting in a bridge's inbox (between the hook and the task); past it the hook
/// drops them, counted.
const INBOX_MAX_MESSAGES: usize = 65_536;
/// Most bytes waiting in a bridge's inbox.
const INBOX_MAX_BYTES: u64 = 64 << 20;
/// Events handled before the store is written and the queue pumped again.
const EVENT_BURST: usize = 1024;
/// How long a forwarded message is looked for among the messages coming back (MQTT 3.1.1).
const ECHO_TTL: Duration = Duration::from_secs(60);
/// Most forwarded messages remembered for that.
const ECHO_MAX: usize = 65_536;
/// A repeated warning (queue full, store failing, refusals) is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether a bridge is connected, as `ctl bridges list` says it (EMQX: `Running` once
/// connected and subscribed, `Stopped` otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Not started, or stopped with `ctl bridges stop`.
    Stopped = 0,
    /// Started, not connected (yet, or any more).
    Connecting = 1,
    /// Connected and subscribed.
    Running = 2,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            1 => Status::Connecting,
            2 => Status::Running,
            _ => Status::Stopped,
        }
    }

    /// EMQX's word for it.
    pub(crate) fn emqx(self) -> &'static str {
        match self {
            Status::Running => "Running",
            _ => "Stopped",
        }
    }
}

/// What `ctl bridges status` shows.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Messages queued for the remote broker now (QoS 0 in memory, QoS 1/2 in the store).
    pub(crate) queued: AtomicU64,
    pub(crate) queued_bytes: AtomicU64,
    /// Handed to the remote broker, not yet acknowledged.
    pub(crate) inflight: AtomicU64,
    /// Acknowledged by the remote broker (QoS 0: written to it).
    pub(crate) forwarded: AtomicU64,
    /// Brought in from the remote broker and published locally.
    pub(crate) received: AtomicU64,
    /// Dropped: over the queue's size, over the inbox's, or refused by the remote broker.
    pub(crate) dropped: AtomicU64,
    /// Messages that came back from the remote broker and were not published again (MQTT 3.1.1).
    pub(crate) echoes: AtomicU64,
    /// Connection attempts that failed.
    pub(crate) connect_failures: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A `ctl` command for the task, with where its answer goes.
#[derive(Debug)]
pub(crate) enum Command {
    /// `bridges start`: `Ok` text once connected, `Err` text if the first attempt failed.
    Start(std::sync::mpsc::SyncSender<Result<String, String>>),
    /// `bridges stop`.
    Stop(std::sync::mpsc::SyncSender<String>),
}

/// Messages the hook handed over, not yet taken by the task.
#[derive(Debug, Default)]
struct Inbox {
    messages: Vec<Message>,
    bytes: u64,
}

/// What the hook, `ctl` and the task share about one bridge.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: BridgeSettings,
    inbox: Mutex<Inbox>,
    wake: Notify,
    status: AtomicU8,
    pub(crate) counters: Counters,
    commands: mpsc::UnboundedSender<Command>,
}

impl Shared {
    /// The shared part, and the receiving end of its commands (for [`Bridge::run`]).
    pub(crate) fn new(settings: BridgeSettings) -> (Arc<Shared>, mpsc::UnboundedReceiver<Command>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Shared {
            settings,
            inbox: Mutex::default(),
            wake: Notify::new(),
            status: AtomicU8::new(Status::Stopped as u8),
            counters: Counters::default(),
            commands,
        };
        (Arc::new(shared), receiver)
    }

    /// From the hook: queues a local message for the remote broker. Never waits.
    pub(crate) fn enqueue(&self, message: Message) {
        let size = message.size();
        {
            let mut inbox = lock(&self.inbox);
            if inbox.messages.len() >= INBOX_MAX_MESSAGES || inbox.bytes + size > INBOX_MAX_BYTES {
                drop(inbox);
                add(&self.counters.dropped, 1);
                return;
            }
            inbox.bytes += size;
            inbox.messages.push(message);
        }
        self.wake.notify_one();
    }

    pub(crate) fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Relaxed))
    }

    fn set_status(&self, status: Status) {
        self.status.store(status as u8, Ordering::Relaxed);
    }

    /// Sends a command to the task; false if it is gone.
    pub(crate) fn command(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forwarded messages the remote broker may send back (MQTT 3.1.1 only: over MQTT 5 the bridge
/// subscribes with No Local). A message counts once: each forward is matched by at most one
/// message coming back.
#[derive(Debug, Default)]
struct Echoes {
    order: VecDeque<(Instant, u64)>,
    counts: HashMap<u64, u32>,
}

impl Echoes {
    fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        topic.hash(&mut hasher);
        payload.hash(&mut hasher);
        hasher.finish()
    }

    fn record(&mut self, topic: &str, payload: &[u8], now: Instant) {
        while let Some(&(at, print)) = self.order.front() {
            if now.duration_since(at) < ECHO_TTL && self.order.len() < ECHO_MAX {
                break;
            }
            self.order.pop_front();
            if let Some(count) = self.counts.get_mut(&print) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&print);
                }
            }
        }
        let print = Echoes::fingerprint(topic, payload);
        self.order.push_back((now, print));
        *self.counts.entry(print).or_default() += 1;
    }

    /// Whether `topic` / `payload` is a recorded forward coming back (it is then forgotten).
    fn take(&mut self, topic: &str, payload: &[u8]) -> bool {
        if self.counts.is_empty() {
            return false;
        }
        let print = Echoes::fingerprint(topic, payload);
        match self.counts.get_mut(&print) {
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&print);
                }
                true
            }
            None => false,
        }
    }
}

/// Messages handed to the remote broker and not yet done with.
#[derive(Debug, Default)]
struct Window {
    /// Handed to the client, packet id not known yet (rumqttc numbers them in order).
    unnumbered: VecDeque<u64>,
    /// By packet id.
    numbered: HashMap<u16, u64>,
}

impl Window {
    fn len(&self) -> usize {
        self.unnumbered.len() + self.numbered.len()
    }

    fn clear(&mut self) {
        self.unnumbered.clear();
        self.numbered.clear();
    }
}

/// A warning logged at most once a [`WARN_EVERY`], with how many happened since.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    /// Counts one; the number to report if it is time to log.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        match self.last {
            Some(at) if now.duration_since(at) < WARN_EVERY => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.since))
            }
        }
    }
}

/// The task's state.
pub(crate) struct Bridge {
    shared: Arc<Shared>,
    host: Host,
    bucket: Bucket,
    queue: Queue,
    tls: Option<Arc<ClientConfig>>,
    link: Option<Link>,
    /// CONNACK seen on the current connection.
    connected: bool,
    /// The remote broker's Maximum Packet Size (MQTT 5), on the current connection.
    max_packet: Option<u32>,
    awaiting_suback: bool,
    window: Window,
    /// Store deletes not yet committed.
    deletes: StoreBatch,
    /// Acknowledgements the client could not take yet, in order.
    unsent_acks: VecDeque<Ack>,
    /// Failed attempts since the connection was lost (or since the start), while it is down.
    outage: Option<u64>,
    echoes: Echoes,
    /// Whether forwarded messages may come back (MQTT 3.1.1 with subscriptions).
    echo_check: bool,
    start_reply: Option<std::sync::mpsc::SyncSender<Result<String, String>>>,
    dropped_full: Throttled,
    store_failing: Throttled,
    refused: Throttled,
    publish_failing: Throttled,
}

impl Bridge {
    pub(crate) fn new(
        shared: Arc<Shared>,
        host: Host,
        bucket: Bucket,
        queue: Queue,
        tls: Option<Arc<ClientConfig>>,
    ) -> Bridge {
        let s = &shared.settings;
        let echo_check = s.proto == Proto::V4 && !s.subscriptions.is_empty();
        Bridge {
            host,
            bucket,
            queue,
            tls,
            link: None,
            connected: false,
            max_packet: None,
            awaiting_suback: false,
            window: Window::default(),
            deletes: StoreBatch::new(),
            unsent_acks: VecDeque::new(),
            outage: None,
            echoes: Echoes::default(),
            echo_check,
            start_reply: None,
            dropped_full: Throttled::default(),
            store_failing: Throttled::default(),
            refused: Throttled::default(),
            publish_failing: Throttled::default(),
            shared,
        }
    }

    fn settings(&self) -> &BridgeSettings {
        &self.shared.settings
    }

    fn log_name(&self) -> String {
        format!("bridge {}", self.settings().name)
    }

    /// Runs until `shutdown`: then writes what the hook handed over and closes the connection.
    pub(crate) async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        if self.settings().start_type == StartType::Auto {
            self.start_link();
        }
        loop {
            self.ingest();
            self.pump();
            self.flush();
            self.update_gauges();
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(command) = commands.recv() => self.command(command).await,
                event = next_event(&mut self.link) => match event {
                    Some(event) => {
                        self.handle(event);
                        for _ in 1..EVENT_BURST {
                            let Some(event) = self.link.as_mut().and_then(|l| l.events.try_recv().ok()) else { break };
                            self.handle(event);
                        }
                    }
                    None => self.link_ended(),
                },
                _ = self.shared.wake.notified() => {}
            }
        }
        self.stop_link().await;
        self.ingest();
        self.flush();
        self.update_gauges();
    }

    /// Moves the inbox into the queue, writing its QoS 1/2 messages to the store.
    fn ingest(&mut self) {
        let messages = std::mem::take(&mut *lock(&self.shared.inbox)).messages;
        if messages.is_empty() {
            return;
        }
        let mut batch = StoreBatch::new();
        let mut pushed = Vec::with_capacity(messages.len());
        let mut dropped = 0;
        for message in messages {
            let (seq, lost) = self.queue.push(message, &mut batch);
            pushed.push(seq);
            dropped += lost;
        }
        let written = match self.bucket.commit(&batch) {
            Ok(()) => true,
            Err(e) => {
                if let Some(n) = self.store_failing.hit(Instant::now()) {
                    self.host.warn(&format!(
                        "{}: {n} batch(es) of queued messages not written to the store: {e}; they are sent from memory \
                         and would not survive a restart",
                        self.log_name()
                    ));
                }
                false
            }
        };
        self.queue.committed(&pushed, written);
        if dropped > 0 {
            add(&self.shared.counters.dropped, dropped);
            if let Some(n) = self.dropped_full.hit(Instant::now()) {
                self.host.warn(&format!(
                    "{}: queue full (queue.max_total_size {} bytes): {n} oldest message(s) dropped since the last such \
                     line",
                    self.log_name(),
                    self.settings().max_total_size
                ));
            }
        }
    }

    /// Hands the remote broker what it can take: acknowledgements first, then queued messages up
    /// to the window.
    fn pump(&mut self) {
        let Some(link) = &self.link else { return };
        if !self.connected {
            return;
        }
        let client = link.client.clone();
        while let Some(ack) = self.unsent_acks.front() {
            if client.try_ack(ack).is_err() {
                break;
            }
            self.unsent_acks.pop_front();
        }
        let max = self.settings().max_inflight as usize;
        while self.window.len() < max {
            let Some((seq, message)) = self.queue.next_unsent() else { break };
            let message = match message {
                Some(message) => message,
                None => match self.read(seq) {
                    Some(message) => Arc::new(message),
                    None => continue,
                },
            };
            let topic = self.settings().remote_topic(&message.topic);
            if self.too_large(seq, &topic, &message) {
                continue;
            }
            if client.try_publish(&topic, message.qos, message.retain, &message.payload).is_err() {
                self.queue.unsend(seq);
                break;
            }
            self.window.unnumbered.push_back(seq);
            self.queue.sent(seq);
            if self.echo_check && self.settings().subscribed_to(&topic) {
                self.echoes.record(&topic, &message.payload, Instant::now());
            }
        }
    }

    /// Whether message `seq` would be over the remote broker's Maximum Packet Size (it would close
    /// the connection at every attempt): then it is dropped, counted and logged.
    fn too_large(&mut self, seq: u64, topic: &str, message: &Message) -> bool {
        let Some(max) = self.max_packet else { return false };
        // Fixed header (5), topic length (2), packet id (2), properties (at most a few bytes).
        let size = 16 + topic.len() as u64 + message.payload.len() as u64;
        if size <= u64::from(max) {
            return false;
        }
        self.queue.remove(seq, &mut self.deletes);
        add(&self.shared.counters.dropped, 1);
        self.host.warn(&format!(
            "{}: a message to {topic} dropped: about {size} bytes, over the remote broker's Maximum Packet Size ({max})",
            self.log_name()
        ));
        true
    }

    /// Reads message `seq` back from the store; an unreadable one is dropped (and logged).
    fn read(&mut self, seq: u64) -> Option<Message> {
        let key = self.queue.key(seq);
        let why = match self.bucket.get(&key) {
            Ok(Some(value)) => match Message::decode(&value) {
                Ok(message) => return Some(message),
                Err(why) => why,
            },
            Ok(None) => "not in the store".to_owned(),
            Err(e) => format!("the store failed: {e}"),
        };
        self.host.warn(&format!("{}: queued message {seq} dropped: {why}", self.log_name()));
        self.queue.remove(seq, &mut self.deletes);
        add(&self.shared.counters.dropped, 1);
        None
    }

    /// Commits the deletes of what the remote broker acknowledged.
    fn flush(&mut self) {
        if self.deletes.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.deletes);
        if let Err(e) = self.bucket.commit(&batch) {
            if let Some(n) = self.store_failing.hit(Instant::now()) {
                self.host.warn(&format!(
                    "{}: {n} batch(es) of acknowledged messages not deleted from the store: {e}; they are sent again \
                     after a restart",
                    self.log_name()
                ));
            }
        }
    }

    fn update_gauges(&self) {
        let c = &self.shared.counters;
        c.queued.store(self.queue.len() as u64, Ordering::Relaxed);
        c.queued_bytes.store(self.queue.bytes(), Ordering::Relaxed);
        c.inflight.store(self.window.len() as u64, Ordering::Relaxed);
    }

    fn handle(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected { session_present, max_packet } => {
                self.max_packet = max_packet;
                self.connected(session_present);
            }
            LinkEvent::Disconnected(why) => self.disconnected(&why),
            LinkEvent::SubAck { refused } => {
                if refused > 0 {
                    self.host.warn(&format!(
                        "{}: the remote broker refused {refused} of the subscriptions {:?}",
                        self.log_name(),
                        self.settings().subscriptions
                    ));
                }
                if self.awaiting_suback {
                    self.awaiting_suback = false;
                    self.running();
                }
            }
            LinkEvent::Sent(pkid) => self.sent(pkid),
            LinkEvent::Done { pkid, refused } => self.done(pkid, refused),
            LinkEvent::Message(inbound) => self.bring_in(inbound),
            LinkEvent::Closed => {}
        }
    }

    fn connected(&mut self, session_present: bool) {
        self.connected = true;
        if !session_present {
            // A new session: whatever was handed over before is sent again, oldest first.
            self.window.clear();
            self.queue.rewind();
        }
        let target = self.settings().target();
        match self.outage.take() {
            Some(failures) if failures > 0 => self
                .host
                .info(&format!("{}: connected to {target} again after {failures} failed attempt(s)", self.log_name())),
            Some(_) => self.host.info(&format!("{}: connected to {target} again", self.log_name())),
            None => self.host.info(&format!("{}: connected to {target}", self.log_name())),
        }
        let subscriptions = self.settings().subscriptions.clone();
        if subscriptions.is_empty() {
            self.running();
            return;
        }
        let subscribed = self.link.as_ref().is_some_and(|l| l.client.try_subscribe(&subscriptions).is_ok());
        if subscribed {
            self.awaiting_suback = true;
            self.shared.set_status(Status::Connecting);
        } else {
            self.host.warn(&format!("{}: could not subscribe to {subscriptions:?}", self.log_name()));
            self.running();
        }
    }

    /// Connected and subscribed.
    fn running(&mut self) {
        self.shared.set_status(Status::Running);
        if let Some(reply) = self.start_reply.take() {
            let _ = reply.send(Ok("Start bridge successfully.".to_owned()));
        }
    }

    fn disconnected(&mut self, why: &str) {
        let was_connected = std::mem::replace(&mut self.connected, false);
        self.awaiting_suback = false;
        // Acknowledgements belong to the lost connection; the remote broker sends those
        // messages again if it kept the session.
        self.unsent_acks.clear();
        self.shared.set_status(Status::Connecting);
        if !was_connected {
            add(&self.shared.counters.connect_failures, 1);
        }
        let target = self.settings().target();
        let every = humantime::format_duration(self.settings().reconnect_interval);
        match &mut self.outage {
            None => {
                let what = if was_connected {
                    format!("connection to {target} lost")
                } else {
                    format!("cannot connect to {target}")
                };
                self.host.warn(&format!(
                    "{}: {what}: {why}; retrying every {every} (failures are counted, not logged, until it \
                     connects: broker ctl bridges status)",
                    self.log_name()
                ));
                self.outage = Some(u64::from(!was_connected));
            }
            Some(failures) => {
                *failures += 1;
                self.host.debug(&format!("{}: still cannot connect to {target}: {why}", self.log_name()));
            }
        }
        if !was_connected {
            if let Some(reply) = self.start_reply.take() {
                let _ = reply.send(Err(format!(
                    "Start bridge failed. (cannot connect to {target}: {why}; retrying every {every})"
                )));
            }
        }
        if let Some(link) = &self.link {
            link.resume();
        }
    }

    /// rumqttc took a PUBLISH with packet id `pkid` (0: QoS 0).
    fn sent(&mut self, pkid: u16) {
        if pkid != 0 && self.window.numbered.contains_key(&pkid) {
            // Sent again on a resumed session; already numbered.
            return;
        }
        let Some(seq) = self.window.unnumbered.pop_front() else { return };
        if pkid == 0 {
            if self.queue.remove(seq, &mut self.deletes) {
                add(&self.shared.counters.forwarded, 1);
            }
        } else {
            self.window.numbered.insert(pkid, seq);
        }
    }

    /// The remote broker is done with packet id `pkid`.
    fn done(&mut self, pkid: u16, refused: Option<String>) {
        let Some(seq) = self.window.numbered.remove(&pkid) else { return };
        let qos = self.queue.qos(seq);
        if !self.queue.remove(seq, &mut self.deletes) {
            return;
        }
        match refused {
            None => add(&self.shared.counters.forwarded, 1),
            Some(reason) => {
                add(&self.shared.counters.dropped, 1);
                if let Some(n) = self.refused.hit(Instant::now()) {
                    self.host.warn(&format!(
                        "{}: the remote broker refused {n} QoS {} message(s) since the last such line ({reason}); \
                         dropped",
                        self.log_name(),
                        qos.unwrap_or(1)
                    ));
                }
            }
        }
    }

    /// A message from the remote broker: published into the local broker, then acknowledged.
    fn bring_in(&mut self, inbound: Box<Inbound>) {
        if self.echo_check && self.echoes.take(&inbound.topic, inbound.payload()) {
            add(&self.shared.counters.echoes, 1);
        } else {
            let topic = self.settings().local_topic(&inbound.topic);
            // The hook sees this publish on this very thread, and leaves it alone.
            match self.host.publish(&topic, inbound.payload(), QoS::from_u8(inbound.qos), inbound.retain) {
                Ok(()) => add(&self.shared.counters.received, 1),
                Err(e) => {
                    if let Some(n) = self.publish_failing.hit(Instant::now()) {
                        self.host.warn(&format!(
                            "{}: {n} message(s) from the remote broker not published locally (last to {topic}): {e}",
                            self.log_name()
                        ));
                    }
                }
            }
        }
        if inbound.qos == 0 || !self.connected {
            return;
        }
        let ack = inbound.ack;
        let taken = self.unsent_acks.is_empty() && self.link.as_ref().is_some_and(|l| l.client.try_ack(&ack).is_ok());
        if !taken {
            self.unsent_acks.push_back(ack);
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Start(reply) => {
                if self.link.is_some() {
                    let _ = reply.send(Ok("Bridge already started.".to_owned()));
                    return;
                }
                self.start_link();
                if let Some(earlier) = self.start_reply.replace(reply) {
                    let _ = earlier.send(Ok("Bridge already started.".to_owned()));
                }
            }
            Command::Stop(reply) => {
                self.stop_link().await;
                let _ = reply.send("Stop bridge successfully.".to_owned());
            }
        }
    }

    fn start_link(&mut self) {
        self.host.info(&format!("{}: connecting to {}", self.log_name(), self.settings().target()));
        self.link = Some(Link::start(self.settings(), self.tls.clone()));
        self.connected = false;
        self.awaiting_suback = false;
        self.outage = None;
        self.shared.set_status(Status::Connecting);
    }

    /// Disconnects; what was handed over and not acknowledged is sent again at the next start.
    async fn stop_link(&mut self) {
        let Some(link) = self.link.take() else { return };
        let events = link.close().await;
        self.connected = false;
        for event in events {
            match event {
                LinkEvent::Sent(_) | LinkEvent::Done { .. } | LinkEvent::Message(_) => self.handle(event),
                _ => {}
            }
        }
        self.window.clear();
        self.queue.rewind();
        self.unsent_acks.clear();
        self.awaiting_suback = false;
        self.outage = None;
        self.shared.set_status(Status::Stopped);
        if let Some(reply) = self.start_reply.take() {
            let _ = reply.send(Err("Start bridge failed. (stopped)".to_owned()));
        }
        self.host.info(&format!("{}: stopped", self.log_name()));
    }

    /// The event loop ended on its own (it never should).
    fn link_ended(&mut self) {
        self.host.error(&format!("{}: the connection's event loop ended; the bridge is stopped", self.log_name()));
        self.link = None;
        self.connected = false;
        self.window.clear();
        self.queue.rewind();
        self.shared.set_status(Status::Stopped);
    }
}

/// The next event of the link, or never without one.
async fn next_event(link: &mut Option<Link>) -> Option<LinkEvent> {
    match link {
        Some(link) => link.events.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_forward_matches_one_echo() {
        let mut echoes = Echoes::default();
        let now = Instant::now();
        assert!(!echoes.take("x/1", b"a"));
        echoes.record("x/1", b"a", now);
        echoes.record("x/1", b"a", now);
        assert!(!echoes.take("x/1", b"b"), "another payload");
        assert!(!echoes.take("x/2", b"a"), "another topic");
        assert!(echoes.take("x/1", b"a"));
        assert!(echoes.take("x/1", b"a"));
        assert!(!echoes.take("x/1", b"a"), "two forwards, two echoes");
        echoes.record("x/1", b"a", now);
        echoes.record("y", b"", now + ECHO_TTL);
        assert!(!echoes.take("x/1", b"a"), "forgotten after the TTL");
    }

    #[test]
    fn throttled_warnings() {
        let mut t = Throttled::default();
        let now = Instant::now();
        assert_eq!(t.hit(now), Some(1));
        assert_eq!(t.hit(now), None);
        assert_eq!(t.hit(now), None);
        assert_eq!(t.hit(now + WARN_EVERY), Some(3));
    }
}
