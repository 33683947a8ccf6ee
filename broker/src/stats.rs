//! The broker's own counters, kept by the connections and read by `ctl`, plugins and
//! telemetry. Names follow EMQX's (`connections.count`, `messages.received`, ...).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::metrics::{Metric, Metrics};

/// Live gauges, and the counters ([`Metrics`]). Updated with relaxed atomics on the hot path.
#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    connections: AtomicU64,
    connections_max: AtomicU64,
    sessions: AtomicU64,
    sessions_max: AtomicU64,
    topics_max: AtomicU64,
    subscriptions_max: AtomicU64,
    /// EMQX's counters: bytes, packets, messages, drops, lifecycle.
    pub(crate) metrics: Metrics,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub(crate) struct Snapshot {
    /// Clients connected now.
    pub(crate) connections: u64,
    /// The most clients connected at once since start.
    pub(crate) connections_max: u64,
    /// Sessions, connected or not.
    pub(crate) sessions: u64,
    /// The most sessions at once since start.
    pub(crate) sessions_max: u64,
    /// Subscriptions held.
    pub(crate) subscriptions: u64,
    /// The most subscriptions seen at once (sampled whenever the gauges are read).
    pub(crate) subscriptions_max: u64,
    /// Topic filters subscribed to.
    pub(crate) topics: u64,
    /// The most topic filters seen at once (sampled whenever the gauges are read).
    pub(crate) topics_max: u64,
    /// PUBLISH packets received from clients (`messages.received`).
    pub(crate) messages_received: u64,
    /// PUBLISH packets sent to clients (`messages.sent`).
    pub(crate) messages_sent: u64,
    /// Messages dropped, whatever the cause (`messages.dropped` + `delivery.dropped`).
    pub(crate) messages_dropped: u64,
    pub(crate) uptime_ms: u64,
}

impl Snapshot {
    /// The gauges by EMQX's names (`emqx_stats`). EMQX 4.3 counts the same things under more
    /// than one name (`channels.*` are the connections, `suboptions.*` and `subscribers.*`
    /// the subscriptions); each is given, so that dashboards made for EMQX find theirs.
    pub(crate) fn named(&self) -> [(&'static str, u64); 16] {
        [
            ("connections.count", self.connections),
            ("connections.max", self.connections_max),
            ("channels.count", self.connections),
            ("channels.max", self.connections_max),
            ("sessions.count", self.sessions),
            ("sessions.max", self.sessions_max),
            ("topics.count", self.topics),
            ("topics.max", self.topics_max),
            ("routes.count", self.topics),
            ("routes.max", self.topics_max),
            ("subscriptions.count", self.subscriptions),
            ("subscriptions.max", self.subscriptions_max),
            ("suboptions.count", self.subscriptions),
            ("suboptions.max", self.subscriptions_max),
            ("subscribers.count", self.subscriptions),
            ("subscribers.max", self.subscriptions_max),
        ]
    }
}

impl Stats {
    pub(crate) fn new(started: Instant) -> Stats {
        Stats {
            started,
            connections: AtomicU64::new(0),
            connections_max: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            sessions_max: AtomicU64::new(0),
            topics_max: AtomicU64::new(0),
            subscriptions_max: AtomicU64::new(0),
            metrics: Metrics::default(),
        }
    }

    pub(crate) fn client_connected(&self) {
        let now = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.connections_max.fetch_max(now, Ordering::Relaxed);
        self.metrics.inc(Metric::ClientConnected);
    }

    pub(crate) fn client_disconnected(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.metrics.inc(Metric::ClientDisconnected);
    }

    pub(crate) fn session_created(&self) {
        let now = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.sessions_max.fetch_max(now, Ordering::Relaxed);
        self.metrics.inc(Metric::SessionCreated);
    }

    pub(crate) fn session_ended(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        self.metrics.inc(Metric::SessionTerminated);
    }

    /// Clients connected now.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Milliseconds since the broker started.
    pub(crate) fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The gauges and the main counters; `topics` and `subscriptions` are the router's,
    /// and their peaks are sampled here.
    pub(crate) fn snapshot(&self, topics: u64, subscriptions: u64) -> Snapshot {
        let m = &self.metrics;
        Snapshot {
            connections: self.connections.load(Ordering::Relaxed),
            connections_max: self.connections_max.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            sessions_max: self.sessions_max.load(Ordering::Relaxed),
            subscriptions,
            subscriptions_max: self.subscriptions_max.fetch_max(subscriptions, Ordering::Relaxed).max(subscriptions),
            topics,
            topics_max: self.topics_max.fetch_max(topics, Ordering::Relaxed).max(topics),
            messages_received: m.get(Metric::MessagesReceived),
            messages_sent: m.get(Metric::MessagesSent),
            messages_dropped: m.get(Metric::MessagesDropped) + m.get(Metric::DeliveryDropped),
            uptime_ms: self.uptime_ms(),
        }
    }
}
