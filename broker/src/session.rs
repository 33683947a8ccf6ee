//! A session: what the broker keeps for one client id across its connections (MQTT §4.1).
//! Its subscriptions, the messages waiting for it (`queue`), those sent and not yet
//! acknowledged (`inflight`), the QoS 2 packet ids it published and has not released, and,
//! between connections, its delayed will. Every session by client id, and when one is
//! opened, taken over or expires, is the node's registry (`registry`).
//!
//! Publishers' tasks [`Session::enqueue`] deliveries and wake the connection task serving the
//! session; only that task takes them out and writes them. The state is behind one short-held
//! mutex; no hook ever runs under it.
//!
//! Overload protection (`mqtt.mqueue_overflow = "backpressure"`, the default): while a client
//! is connected, a QoS 1/2 message from a client connection is always queued (its PUBACK is
//! honest), and when that makes the queue reach `mqtt.max_mqueue_len` the publishing
//! connection is told to wait ([`Enqueued::Full`]): it registers with
//! [`Session::wait_for_room`] and is woken once the queue has drained to three quarters of the
//! limit, or the client went offline, or the session ended. Each waiting connection adds at
//! most one message over the limit. Publishers that cannot wait (plugins, `$SYS`, wills,
//! retained messages) may fill the queue up to twice the limit; beyond that their message is
//! dropped (counted), never one already queued. QoS 0 messages never make a publisher wait:
//! a full queue drops its oldest QoS 0 message, or the new one. An offline client never
//! drains its queue, so it keeps the limit by dropping (EMQX's policy), as does
//! `mqueue_overflow = "drop_oldest"` always.

mod inflight;
pub(crate) mod listing;
pub(crate) mod moved;
mod queue;
pub(crate) mod registry;

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
use crate::persist::{self, EntryView, Keys};

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

/// What a connected client's full queue does with one more QoS 1/2 message
/// (`mqtt.mqueue_overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Queue it and slow its publisher down (overload protection).
    Backpressure,
    /// Drop the oldest message (EMQX's policy).
    DropOldest,
}

/// How many messages a session may hold waiting (EMQX's `max_mqueue_len`, 0 = no limit),
/// whether QoS 0 messages wait for an offline client (`mqueue_store_qos0`), and what a full
/// queue does (`mqueue_overflow`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) max_len: usize,
    pub(crate) store_qos0: bool,
    pub(crate) overflow: Overflow,
}

impl QueueLimits {
    /// Below this many messages a full queue lets the publishers waiting for it go on: a
    /// quarter of the queue drains between two waits, not one message.
    fn resume_below(&self) -> usize {
        self.max_len - self.max_len / 4
    }

    /// Whether a queue of `len` messages is three quarters full or more (never, without a
    /// limit): publishers held back by it wait until it is not (`State::is_full`), and a
    /// connection then refills its client's window at once, so that messages held back while
    /// the client has room do not fill the queue (`connection::refill`).
    pub(crate) fn filling(&self, len: usize) -> bool {
        self.max_len > 0 && len >= self.resume_below()
    }

    /// Most messages that publishers which cannot wait may fill a connected client's queue
    /// with, under backpressure.
    fn hard_len(&self) -> usize {
        self.max_len.saturating_mul(2)
    }
}

/// What became of a delivery handed to [`Session::enqueue`].
#[derive(Debug)]
pub(crate) enum Enqueued {
    Queued,
    /// Queued, and the queue is full: a publisher that can wait must, until
    /// [`Session::wait_for_room`] says there is room.
    Full,
    /// This delivery, or another one to make room for it, was dropped.
    Dropped(Delivery),
}

/// What a persistent session keeps to write itself to the store (see `persist`).
#[derive(Debug)]
pub(crate) struct Durable {
    pub(crate) keys: Keys,
    /// The sequence number of the last QoS 1/2 message queued; the next is one more.
    pub(crate) next_seq: u64,
}

impl Durable {
    /// `next_seq` of a session with no message yet: its first is numbered `u16::MAX`, which
    /// goes out as packet id 1 ([`crate::persist::packet_id_of`]), the id clients see first
    /// from mosquitto and EMQX too.
    pub(crate) const START: u64 = u16::MAX as u64 - 1;
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
    /// Boxed: rare, and the state of every session makes room for it.
    pub(crate) pending_will: Option<Box<PendingWill>>,
    /// When an offline session ends (`None` while connected, or never).
    pub(crate) expires_at: Option<Instant>,
    /// Changes every time a connection attaches; expiry timers compare it.
    pub(crate) generation: u64,
    /// The session is over: nothing is queued into it any more.
    pub(crate) ended: bool,
    /// Set while the session is persistent and persistence is on: its QoS 1/2 messages,
    /// subscriptions and QoS 2 state are written to the store. Boxed: clean sessions have none.
    pub(crate) durable: Option<Box<Durable>>,
    /// Publishing connections waiting for the queue to drain (connection id, its task).
    waiting: Vec<(u64, Waker)>,
}

impl State {
    /// Whether publishers must still wait for this queue.
    fn is_full(&self, limits: QueueLimits) -> bool {
        limits.overflow == Overflow::Backpressure
            && !self.ended
            && self.attachment.is_some()
            && limits.filling(self.queue.len())
    }

    /// Wakes the publishers waiting for this queue if they need wait no longer (the caller
    /// took messages out, detached the client or ended the session).
    pub(crate) fn release_waiting(&mut self, limits: QueueLimits) {
        if !self.waiting.is_empty() && !self.is_full(limits) {
            for (_, waker) in self.waiting.drain(..) {
                waker.wake();
            }
            self.waiting = Vec::new();
        }
    }

    /// Whether publishing connections wait for this queue.
    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

/// Writes `delivery` (just queued at its `seq`) to `batch`. A store that refuses the batch is
/// seen when it is committed.
fn persist_enqueued(durable: &Durable, delivery: &Delivery, batch: &mut store::Batch) {
    let _ = persist::put_entry(batch, &durable.keys, delivery.seq, &EntryView::of(delivery));
}

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Unique for the broker's life (never reused, unlike client ids).
    pub(crate) id: u64,
    pub(crate) client_id: Arc<str>,
    /// When it was made (or read back from the store), in milliseconds since the Unix epoch.
    pub(crate) created_at_ms: u64,
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
            created_at_ms: crate::now_ms(),
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
        // An offline client never drains its queue: nobody waits for it.
        for (_, waker) in state.waiting.drain(..) {
            waker.wake();
        }
        state.waiting = Vec::new();
        self.owner.store(0, Ordering::Release);
        true
    }

    /// Queues a delivery and wakes the connection. `can_wait` when the publisher is a client
    /// connection that overload protection may slow down (see the module's doc). A persistent
    /// session's QoS 1/2 message gets a sequence number and, with `batch`, is written to the
    /// store in it (and one it dropped for it is deleted in it).
    pub(crate) fn enqueue(
        &self,
        mut delivery: Delivery,
        limits: QueueLimits,
        can_wait: bool,
        mut batch: Option<&mut store::Batch>,
    ) -> Enqueued {
        let outcome = {
            let mut state = self.lock();
            let offline = state.attachment.is_none();
            if state.ended || (delivery.qos == 0 && !limits.store_qos0 && offline) {
                return Enqueued::Dropped(delivery);
            }
            if let Some(durable) = state.durable.as_deref_mut().filter(|_| delivery.qos > 0) {
                durable.next_seq += 1;
                delivery.seq = durable.next_seq;
                if let Some(batch) = batch.as_deref_mut() {
                    persist_enqueued(durable, &delivery, batch);
                }
            }
            let queue = &mut state.queue;
            let max = limits.max_len;
            let dropped = if max == 0 {
                queue.push(delivery);
                None
            } else if offline || limits.overflow == Overflow::DropOldest {
                queue.push_dropping(delivery, max)
            } else if delivery.qos == 0 {
                queue.push_keeping(delivery, max)
            } else if can_wait {
                queue.push(delivery);
                if queue.len() >= max {
                    drop(state);
                    self.notify();
                    return Enqueued::Full;
                }
                None
            } else {
                queue.push_keeping(delivery, limits.hard_len())
            };
            if let (Some(lost), Some(durable), Some(batch)) = (&dropped, &state.durable, batch) {
                if lost.seq != 0 {
                    let _ = batch.delete(persist::BUCKET, &durable.keys.entry(lost.seq));
                }
            }
            match dropped {
                Some(lost) => Enqueued::Dropped(lost),
                None => Enqueued::Queued,
            }
        };
        self.notify();
        outcome
    }

    /// For connection `connection`, told [`Enqueued::Full`] by this session: true while it
    /// must still wait, and then `waker` is woken when it need wait no longer.
    pub(crate) fn wait_for_room(&self, connection: u64, waker: &Waker, limits: QueueLimits) -> bool {
        let mut state = self.lock();
        if !state.is_full(limits) {
            return false;
        }
        match state.waiting.iter_mut().find(|(id, _)| *id == connection) {
            Some((_, registered)) if registered.will_wake(waker) => {}
            Some((_, registered)) => *registered = waker.clone(),
            None => state.waiting.push((connection, waker.clone())),
        }
        true
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
