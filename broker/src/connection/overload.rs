//! Overload protection, the publisher's side (the queue's side is in `crate::session`): a
//! connection whose PUBLISH filled a connected subscriber's queue handles no further PUBLISH
//! until every queue it filled has drained (or its client went offline, or its session
//! ended). The PUBLISH that filled it was queued and is acknowledged; the ones after it wait,
//! unacknowledged, so the client's own inflight window (and TCP) slows it down.
//!
//! What waits and what does not: the connection keeps reading. Complete frames read while it
//! waits are parked, in order, except the acknowledgements of what the broker sent it
//! (PUBACK, PUBREC, PUBREL, PUBCOMP) and PINGREQ, which are handled at once, ahead of the
//! parked PUBLISHes: none of them depends on a PUBLISH sent before it, and they are what
//! drains the client's own queue, so a client publishing to itself, or two clients
//! publishing to each other, keep acknowledging while they wait (no deadlock). SUBSCRIBE,
//! UNSUBSCRIBE and DISCONNECT keep their place behind the parked PUBLISHes.
//!
//! In a cluster, a connection also waits while the node's queue to NATS is long
//! (`Cluster::backlogged`) until it has drained (`Cluster::room`): a burst faster than NATS
//! takes it slows its publishers down rather than losing QoS 0 messages between nodes.
//!
//! Parked input is bounded ([`PARK_HIGH_WATER`]): above it the socket is not read, so TCP
//! pushes back on the client, and its keep-alive is not held against it meanwhile. If the
//! client's acknowledgements are stuck behind that much parked input while other publishers
//! wait for the client's own queue, that could be a cycle of connections waiting for each
//! other: the parked PUBLISHes are then handled as from a publisher that cannot wait (a
//! queue may grow to twice `mqtt.max_mqueue_len`; beyond that the message is dropped,
//! counted as `delivery.dropped.queue_full`).

use std::sync::Arc;
use std::task::Context;

use bytes::BytesMut;

use super::suspend::Suspended;
use super::{Connection, Ended, Transport};
use crate::metrics::Metric;
use crate::mqtt::frame::kind;
use crate::session::Session;

/// Parked input above which the connection stops reading its socket.
pub(super) const PARK_HIGH_WATER: usize = 64 * 1024;

/// A connection slowed down by overload protection (boxed: most connections never are).
#[derive(Default)]
pub(super) struct Congestion {
    /// The sessions whose full queues the connection waits for.
    full: Vec<Arc<Session>>,
    /// Complete frames read and not handled yet, oldest first.
    parked: BytesMut,
    /// The parked PUBLISHes are handled without waiting (a possible cycle is broken).
    forced: bool,
    /// In a cluster: resolves when the node's queue to NATS has drained.
    cluster_room: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Congestion")
            .field("full", &self.full.len())
            .field("parked", &self.parked.len())
            .field("forced", &self.forced)
            .field("cluster_room", &self.cluster_room.is_some())
            .finish()
    }
}

impl Congestion {
    /// Whether anything is still waited for.
    fn waiting(&self) -> bool {
        !self.full.is_empty() || self.cluster_room.is_some()
    }

    /// Stops waiting for anything.
    fn stop_waiting(&mut self) {
        self.full.clear();
        self.cluster_room = None;
    }
}

/// Whether a packet of kind `packet_kind` is handled ahead of parked PUBLISHes.
pub(super) fn overtakes(packet_kind: u8) -> bool {
    matches!(packet_kind, kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP | kind::PINGREQ)
}

impl<T: Transport> Connection<T> {
    /// Whether the next PUBLISH must wait (a queue it filled has not drained yet).
    pub(super) fn must_wait(&self) -> bool {
        self.congestion.as_ref().is_some_and(|c| c.waiting())
    }

    /// Whether frames read now are parked (they would overtake parked ones otherwise).
    pub(super) fn parking(&self) -> bool {
        self.congestion.is_some()
    }

    /// Whether the connection's PUBLISHes can be slowed down now (see the module's doc).
    pub(super) fn can_wait(&self) -> bool {
        !self.congestion.as_ref().is_some_and(|c| c.forced)
    }

    /// Parked bytes.
    pub(super) fn parked_len(&self) -> usize {
        self.congestion.as_ref().map_or(0, |c| c.parked.len())
    }

    /// Parks one complete frame.
    pub(super) fn park(&mut self, frame: &[u8]) {
        self.congestion.get_or_insert_with(Box::default).parked.extend_from_slice(frame);
    }

    /// Waits for `full` (the sessions a PUBLISH just filled) before the next PUBLISH, and in
    /// a cluster for the node's queue to NATS if it is long.
    pub(super) fn wait_for(&mut self, full: Vec<Arc<Session>>) {
        let backlogged = self.node.cluster.as_ref().filter(|c| c.backlogged()).map(|c| c.room());
        if full.is_empty() && backlogged.is_none() {
            return;
        }
        self.node.stats.metrics.inc(Metric::OverloadProtectionPublisherHeld);
        let congestion = self.congestion.get_or_insert_with(Box::default);
        for session in full {
            if !congestion.full.iter().any(|s| Arc::ptr_eq(s, &session)) {
                congestion.full.push(session);
            }
        }
        if congestion.cluster_room.is_none() {
            congestion.cluster_room = backlogged;
        }
    }

    /// Handles the parked frames once nothing is waited for; stops at a PUBLISH that must
    /// wait again.
    /// A parked packet that waits for a hook chain that may block is returned, as from
    /// `handle_frames`.
    pub(super) fn handle_parked(&mut self) -> Result<Option<Box<Suspended>>, Ended> {
        let Some(congestion) = self.congestion.as_mut() else {
            return Ok(None);
        };
        if congestion.waiting() || congestion.parked.is_empty() {
            return Ok(None);
        }
        let mut parked = std::mem::take(&mut congestion.parked);
        let result = self.handle_frames(&mut parked, true);
        if let Some(congestion) = self.congestion.as_mut() {
            congestion.forced = false;
            // Emptied, the buffer goes: it may have grown to the high-water mark.
            congestion.parked = if parked.is_empty() { BytesMut::new() } else { parked };
            if !congestion.waiting() && congestion.parked.is_empty() {
                self.congestion = None;
            }
        }
        result
    }

    /// Checks the queues the connection waits for, registering to be woken by those still
    /// full; true when it can handle its parked frames now.
    pub(super) fn poll_room(&mut self, cx: &mut Context<'_>) -> bool {
        let (id, limits) = (self.id, self.node.zone.queue);
        let Some(congestion) = self.congestion.as_mut() else {
            return false;
        };
        congestion.full.retain(|session| session.wait_for_room(id, cx.waker(), limits));
        if congestion.cluster_room.as_mut().is_some_and(|room| room.as_mut().poll(cx).is_ready()) {
            congestion.cluster_room = None;
        }
        if !congestion.waiting() {
            if congestion.parked.is_empty() {
                self.congestion = None;
                return false;
            }
            return true;
        }
        if congestion.parked.len() >= PARK_HIGH_WATER && self.session.lock().has_waiting() {
            tracing::debug!(
                client_id = &*self.client.client_id,
                "waiting for full queues while others wait for this client's: publishing without waiting"
            );
            congestion.stop_waiting();
            congestion.forced = true;
            return true;
        }
        false
    }

    /// The connection ends with `ended`; a client that closed its socket while its frames
    /// were parked has them handled first, without waiting (its DISCONNECT among them).
    pub(super) async fn end_parked(&mut self, ended: Ended) -> Ended {
        if !matches!(ended, Ended::Closed) {
            return ended;
        }
        while self.parked_len() > 0 {
            if let Some(congestion) = self.congestion.as_mut() {
                congestion.stop_waiting();
                congestion.forced = true;
            }
            match self.handle_parked() {
                Ok(None) => {}
                Ok(Some(waiting)) => {
                    if let Err(ended) = Box::pin(self.resume(waiting)).await {
                        return ended;
                    }
                }
                Err(ended) => return ended,
            }
        }
        ended
    }
}
