//! A session: what the broker keeps for one client id across its connections (MQTT §4.1).
//! Its subscriptions, the messages waiting for it (`queue`), those sent and not yet
//! acknowledged (`inflight`), the QoS 2 packet ids it published and has not released, and,
//! between connections, its delayed will.
//!
//! Publishers' tasks [`Session::enqueue`] deliveries and wake the connection task serving the
//! session; only that task takes them out and writes them. The state is behind one short-held
//! mutex; no hook ever runs under it.

mod inflight;
mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use atomic_waker::AtomicWaker;
use tokio::sync::Notify;

pub(crate) use inflight::{Acked, Inflight, Phase, RecOutcome};
pub(crate) use queue::MessageQueue;

use crate::client::ClientInfo;
use crate::message::{Delivery, Message};
use crate::mqtt::subscribe::SubscriptionOptions;

/// One subscription as the session remembers it (the router has the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

/// The connection serving a session.
#[derive(Debug)]
pub(crate) struct Attachment {
    /// Unique per connection.
    pub(crate) connection: u64,
    pub(crate) client: Arc<ClientInfo>,
}

/// A will waiting for its Will Delay Interval (MQTT 5) after the connection ended.
#[derive(Debug)]
pub(crate) struct PendingWill {
    pub(crate) message: Message,
    pub(crate) client: Arc<ClientInfo>,
    pub(crate) at: Instant,
}

/// How many messages a session may hold waiting (EMQX's `max_mqueue_len`, 0 = no limit), and
/// whether QoS 0 messages wait for an offline client (`mqueue_store_qos0`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) max_len: usize,
    pub(crate) store_qos0: bool,
}

/// What the session's mutex guards.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) attachment: Option<Attachment>,
    /// By filter, as the client wrote it (`$share/g/a/#` included).
    pub(crate) subscriptions: HashMap<Box<str>, Subscription>,
    pub(crate) queue: MessageQueue,
    pub(crate) inflight: Inflight,
    /// Packet ids of QoS 2 messages the client published and has not released (PUBREL).
    pub(crate) awaiting_rel: Vec<u16>,
    /// Seconds the session outlives its connection; `u32::MAX` is never ending.
    pub(crate) expiry_interval: u32,
    pub(crate) pending_will: Option<PendingWill>,
    /// When an offline session ends (`None` while connected, or never).
    pub(crate) expires_at: Option<Instant>,
    /// Changes every time a connection attaches; expiry timers compare it.
    pub(crate) generation: u64,
    /// The session is over: nothing is queued into it any more.
    pub(crate) ended: bool,
}

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Unique for the broker's life (never reused, unlike client ids).
    pub(crate) id: u64,
    pub(crate) client_id: Arc<str>,
    /// The id of the connection serving the session; 0 when none. A connection that finds
    /// another id here (it was detached without knowing, e.g. while stuck) ends at once.
    owner: AtomicU64,
    /// Something was queued since the connection last looked.
    pending: AtomicBool,
    /// The connection told to end (its id; 0 for none), with `kick_reason`. A kick names its
    /// connection so that a newer connection attaching never clears it, nor is hit by it.
    kick_target: AtomicU64,
    /// A reason code (MQTT 5) for `kick_target` to end with, e.g. taken over.
    kick_reason: AtomicU8,
    /// The takeover that kicked the connection discards the session (clean start, or the
    /// session was not persistent).
    kick_discards: AtomicBool,
    waker: AtomicWaker,
    /// Notified when a connection detaches.
    pub(crate) detached: Notify,
    state: Mutex<State>,
}

impl Session {
    pub(crate) fn new(id: u64, client_id: Arc<str>) -> Session {
        Session {
            id,
            client_id,
            owner: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            kick_target: AtomicU64::new(0),
            kick_reason: AtomicU8::new(0),
            kick_discards: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            detached: Notify::new(),
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Whether a connection serves the session now.
    pub(crate) fn is_connected(&self) -> bool {
        self.owner.load(Ordering::Acquire) != 0
    }

    /// Attaches connection `attachment` (the caller holds the state).
    pub(crate) fn attach(&self, state: &mut State, attachment: Attachment) {
        state.generation += 1;
        state.pending_will = None;
        state.expires_at = None;
        self.owner.store(attachment.connection, Ordering::Release);
        state.attachment = Some(attachment);
        self.pending.store(true, Ordering::Release);
    }

    /// Detaches connection `connection` if it is the one attached (the caller holds the
    /// state); true if it was.
    pub(crate) fn detach(&self, state: &mut State, connection: u64) -> bool {
        if state.attachment.as_ref().is_none_or(|a| a.connection != connection) {
            return false;
        }
        state.attachment = None;
        self.owner.store(0, Ordering::Release);
        true
    }

    /// Queues a delivery and wakes the connection. Returns what had to be dropped for it
    /// (the oldest QoS 0 message when the queue is full, or the delivery itself when the
    /// session is over or keeps no QoS 0 messages while offline).
    pub(crate) fn enqueue(&self, delivery: Delivery, limits: QueueLimits) -> Option<Delivery> {
        let dropped = {
            let mut state = self.lock();
            if state.ended || (delivery.qos == 0 && !limits.store_qos0 && state.attachment.is_none()) {
                return Some(delivery);
            }
            state.queue.push(delivery, limits.max_len)
        };
        self.notify();
        dropped
    }

    /// Wakes the connection task: there is something for it.
    pub(crate) fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Registers the connection task's waker; true if something is pending (and clears it).
    pub(crate) fn poll_pending(&self, waker: &Waker) -> bool {
        self.waker.register(waker);
        self.pending.swap(false, Ordering::AcqRel)
    }

    /// Tells connection `connection` to end, with an MQTT 5 reason code.
    pub(crate) fn kick(&self, connection: u64, reason: u8) {
        self.kick_reason.store(reason, Ordering::Release);
        self.kick_target.store(connection, Ordering::Release);
        self.notify();
    }

    /// Tells connection `connection` that a new connection takes the session over; with
    /// `discard` the newcomer gets a new session.
    pub(crate) fn kick_takeover(&self, connection: u64, discard: bool) {
        self.kick_discards.store(discard, Ordering::Release);
        self.kick(connection, crate::mqtt::reason::SESSION_TAKEN_OVER);
    }

    /// Whether connection `connection` must end, and why: it was told to (an MQTT 5 reason
    /// code; with takeovers, whether the session is discarded), or it no longer serves the
    /// session (another connection took it without waiting for it: a takeover).
    pub(crate) fn kicked(&self, connection: u64) -> Option<(u8, bool)> {
        let takeover = (crate::mqtt::reason::SESSION_TAKEN_OVER, self.kick_discards.load(Ordering::Acquire));
        if self.kick_target.load(Ordering::Acquire) == connection {
            let reason = self.kick_reason.load(Ordering::Acquire);
            return Some(if reason == crate::mqtt::reason::SESSION_TAKEN_OVER { takeover } else { (reason, false) });
        }
        (self.owner.load(Ordering::Acquire) != connection).then_some(takeover)
    }
}
