//! The broker's own counters, kept by the connections and read by `ctl`, plugins and
//! telemetry. Names follow EMQX's (`connections.count`, `messages.received`, ...).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Live counters. Updated with relaxed atomics on the hot path.
#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    connections: AtomicU64,
    connections_max: AtomicU64,
    sessions: AtomicU64,
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_dropped: AtomicU64,
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
    /// Subscriptions held.
    pub(crate) subscriptions: u64,
    /// Topic filters subscribed to.
    pub(crate) topics: u64,
    pub(crate) messages_received: u64,
    pub(crate) messages_sent: u64,
    pub(crate) messages_dropped: u64,
    pub(crate) uptime_ms: u64,
}

impl Stats {
    pub(crate) fn new(started: Instant) -> Stats {
        Stats {
            started,
            connections: AtomicU64::new(0),
            connections_max: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn client_connected(&self) {
        let now = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.connections_max.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn client_disconnected(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn session_created(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_ended(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn message_received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn messages_sent(&self, n: u64) {
        self.messages_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn message_dropped(&self) {
        self.messages_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters (subscriptions and topics are the router's: see `Node::stats_snapshot`).
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections: self.connections.load(Ordering::Relaxed),
            connections_max: self.connections_max.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            subscriptions: 0,
            topics: 0,
            messages_received: self.messages_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_dropped: self.messages_dropped.load(Ordering::Relaxed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}
