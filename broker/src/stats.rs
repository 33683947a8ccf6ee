//! The broker's own counters, kept by the relay and read by `ctl`, plugins and telemetry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Live counters. Updated with relaxed atomics on the hot path.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    connections: AtomicU64,
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub connections: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub uptime_secs: u64,
}

impl Stats {
    pub fn new(started: Instant) -> Stats {
        Stats {
            started,
            connections: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
        }
    }

    pub fn client_connected(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_disconnected(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn message_received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn message_sent(&self) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections: self.connections.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }
}
