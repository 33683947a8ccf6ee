//! Acknowledgements that wait for the store: a PUBACK or PUBREC promises that the message
//! reached every persistent session it was routed to, a PUBREL that the broker will not send
//! that message again, a PUBCOMP that the packet id is free, a SUBACK that the subscription
//! outlives a crash. Each is held until the batch that keeps its promise is committed (group
//! commit: one fsync for everything that arrived meanwhile), while the connection goes on
//! reading and delivering.
//!
//! In a cluster, a QoS 1/2 message's PUBACK or PUBREC also waits until NATS stored the message
//! ([`crate::cluster::Stored`]); if it was not, MQTT 5 is told 0x80 Unspecified error and a
//! 3.1.1 client (which cannot be told) is disconnected, so that it sends the message again.
//!
//! Acknowledgements leave in the order they were made (MQTT-4.6.0-2..4): once one waits,
//! every later one waits behind it, even one that needs no write. A connection of a clean
//! session never has any of this (nothing of it is written); the queue is boxed and made on
//! demand.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use store::{Batch, StoreError};

use super::{Connection, Ended, Transport};
use crate::cluster::Stored;
use crate::mqtt::publish::encode_ack;
use crate::mqtt::reason;

/// Something an acknowledgement waits for, which may fail with `E`.
type Awaited<E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send>>;

pub(super) type Commit = Awaited<StoreError>;

/// Acknowledgements waiting, oldest first, and the writes they wait for.
///
/// The writes made while the connection handles what it read (one PUBLISH or many) go into
/// one batch, committed when it is done ([`Connection::flush_held`]): one commit request, and
/// one wake-up, for every acknowledgement of that round.
#[derive(Default)]
pub(super) struct Held {
    waiting: VecDeque<HeldAck>,
    /// The encoded acknowledgements of `waiting`, one after the other in its order (one
    /// buffer for all of them, not one each).
    bytes: Vec<u8>,
    /// How much of the front of `bytes` was already sent.
    sent: usize,
    /// Writes made since the last flush.
    pending: Batch,
    /// An empty batch whose buffers a connection's next writes reuse (see `write_batch`).
    spare: Batch,
    /// Where in `waiting` the first acknowledgement waiting for `pending` is: it carries the
    /// commit, and those after it wait behind it.
    first_for_pending: Option<usize>,
    /// The round `pending` belongs to.
    round: u64,
    /// The last round whose commit failed.
    failed_round: Option<u64>,
}

struct HeldAck {
    /// The commit of its round, on the round's first acknowledgement.
    commit: Option<Commit>,
    /// The round whose writes it waits for; `None`: it only waits for those before it.
    round: Option<u64>,
    /// The length of the acknowledgement, encoded in [`Held::bytes`].
    len: usize,
    /// The PUBACK or PUBREC (kind, packet id) to send instead when the store refuses its
    /// round's commit (MQTT 5: 0x97 Quota exceeded); `None` sends `bytes` all the same.
    refusal: Option<(u8, u16)>,
    /// In a cluster: the message's storing in NATS, which it waits for too.
    stored: Option<Stored>,
    /// NATS did not store the message: `refusal` is sent instead (MQTT 5: 0x80).
    not_stored: bool,
}

impl Held {
    /// Moves `batch`'s writes into this round's, keeping its buffers as the spare.
    fn add_writes(&mut self, mut batch: Batch) {
        self.pending.append(&mut batch);
        self.spare = batch;
    }

    /// Nothing waits and nothing is to be written: the connection may drop it when it goes
    /// idle (it is kept while busy, buffers and all, for the next round).
    pub(super) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.pending.is_empty()
    }

    /// Adds the encoded bytes of the acknowledgement about to be pushed onto `waiting`, and
    /// says how long they are. What was sent is dropped from the buffer once it is at least
    /// half of it (a connection that always has an acknowledgement waiting never empties it).
    fn push_bytes(&mut self, ack: &[u8]) -> usize {
        if self.waiting.is_empty() {
            self.bytes.clear();
            self.sent = 0;
        } else if self.sent > 0 && self.sent * 2 >= self.bytes.len() {
            self.bytes.drain(..self.sent);
            self.sent = 0;
        }
        self.bytes.extend_from_slice(ack);
        ack.len()
    }

    /// The encoded bytes of the front acknowledgement, `len` long, taken off `bytes`.
    /// (`push_bytes` starts the buffer again once nothing waits.)
    fn take_front(&mut self, len: usize) -> &[u8] {
        let start = self.sent;
        self.sent += len;
        &self.bytes[start..self.sent]
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("waiting", &self.waiting.len()).field("round", &self.round).finish()
    }
}

impl<T: Transport> Connection<T> {
    fn holding(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.waiting.is_empty())
    }

    /// Holds what was encoded into the write buffer from `start` (one acknowledgement) until
    /// `batch` is committed with this round's other writes, and behind every acknowledgement
    /// already held. With nothing to write and nothing held, it goes out at once.
    /// With `stored`, it also waits for NATS to store its message.
    pub(super) fn hold_from(
        &mut self,
        start: usize,
        batch: Option<Batch>,
        refusal: Option<(u8, u16)>,
        stored: Option<Stored>,
    ) {
        let batch = batch.filter(|b| !b.is_empty() && self.node.persistence.is_some());
        if batch.is_none() && stored.is_none() && !self.holding() {
            return;
        }
        let held = self.held.get_or_insert_with(Box::default);
        let len = held.push_bytes(&self.out[start..]);
        self.out.truncate(start);
        let round = batch.map(|batch| {
            held.add_writes(batch);
            held.first_for_pending.get_or_insert(held.waiting.len());
            held.round
        });
        held.waiting.push_back(HeldAck { commit: None, round, len, refusal, stored, not_stored: false });
    }

    /// Holds every acknowledgement from now on until `ready` resolves (a SUBACK waiting for
    /// the cluster's interest to be in place).
    pub(super) fn hold_until(&mut self, ready: Commit) {
        let held = self.held.get_or_insert_with(Box::default);
        let len = held.push_bytes(&[]);
        held.waiting.push_back(HeldAck {
            commit: Some(ready),
            round: None,
            len,
            refusal: None,
            stored: None,
            not_stored: false,
        });
    }

    /// Adds `batch` to this round's writes, with no acknowledgement waiting for it (a delivered
    /// message's removal).
    pub(super) fn write_later(&mut self, batch: Batch) {
        if batch.is_empty() || self.node.persistence.is_none() {
            return;
        }
        self.held.get_or_insert_with(Box::default).add_writes(batch);
    }

    /// An empty batch for the writes of one packet, reusing the buffers of the last one
    /// (appended to this round's writes) when the connection holds any.
    pub(super) fn write_batch(&mut self) -> Batch {
        self.held.as_deref_mut().map(|held| std::mem::take(&mut held.spare)).unwrap_or_default()
    }

    /// Commits this round's writes: the acknowledgements waiting for them go once it is done.
    pub(super) fn flush_held(&mut self) {
        let (Some(held), Some(store)) = (self.held.as_deref_mut(), &self.node.persistence) else { return };
        if !held.pending.is_empty() {
            let commit = store.commit_async(std::mem::take(&mut held.pending));
            match held.first_for_pending.take() {
                Some(first) => held.waiting[first].commit = Some(Box::pin(commit)),
                // Nobody waits: it is committed all the same.
                None => drop(commit),
            }
            held.round += 1;
        }
    }

    /// Moves the acknowledgements whose writes are done to the write buffer, in order:
    /// `Ready(Ok(()))` when it moved any. A refused commit turns its round's PUBACKs and
    /// PUBRECs into refusals (MQTT 5) or ends the connection (3.1.1, which has no way to say
    /// it).
    pub(super) fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        let Some(held) = self.held.as_deref_mut() else { return Poll::Pending };
        let mut moved = false;
        while let Some(front) = held.waiting.front_mut() {
            if front.round == Some(held.round) {
                break; // its round is not committed yet
            }
            let Poll::Ready(refused) = poll_taken(&mut front.commit, cx) else { break };
            if let Some(e) = refused {
                tracing::warn!(
                    client_id = ?crate::log_limit::clipped(&self.client.client_id),
                    "a message for persistent sessions was refused: {e}"
                );
                held.failed_round = front.round;
            }
            let Poll::Ready(not_stored) = poll_taken(&mut front.stored, cx) else { break };
            if let Some(why) = not_stored {
                tracing::warn!(
                    client_id = ?crate::log_limit::clipped(&self.client.client_id),
                    "cluster: a QoS 1/2 message was not stored in NATS: {why}"
                );
                front.not_stored = true;
            }
            let Some(front) = held.waiting.pop_front() else { break };
            moved = true;
            let refused = front.round.is_some() && front.round == held.failed_round;
            let code = if front.not_stored { reason::UNSPECIFIED_ERROR } else { reason::QUOTA_EXCEEDED };
            // Its bytes leave the buffer whether they are sent or replaced by a refusal.
            let bytes = held.take_front(front.len);
            match (refused || front.not_stored, front.refusal) {
                (true, Some((kind, packet_id))) => {
                    if !self.version.is_v5() {
                        let why = if front.not_stored {
                            "NATS did not store a message"
                        } else {
                            "the store refused a message"
                        };
                        return Poll::Ready(Err(Ended::protocol(code, why)));
                    }
                    encode_ack(&mut self.out, self.version, kind, packet_id, code, None);
                    self.node.stats.metrics.packet_sent(kind, code);
                }
                _ => self.out.extend_from_slice(bytes),
            }
        }
        if moved {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// Polls the future in `slot`, if there is one: `Pending` while it runs; once it is done, empties
/// the slot (it is never polled again) and gives its error, if any.
fn poll_taken<E>(slot: &mut Option<Awaited<E>>, cx: &mut Context<'_>) -> Poll<Option<E>> {
    let Some(future) = slot.as_mut() else { return Poll::Ready(None) };
    let result = std::task::ready!(future.as_mut().poll(cx));
    *slot = None;
    Poll::Ready(result.err())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(len: usize) -> HeldAck {
        HeldAck { commit: None, round: None, len, refusal: None, stored: None, not_stored: false }
    }

    #[test]
    fn held_acknowledgements_leave_in_order_and_their_buffer_stays_small_while_one_always_waits() {
        let mut held = Held::default();
        let mut next = 0u8;
        // Two waiting at any time: the queue never empties.
        for _ in 0..2 {
            let len = held.push_bytes(&[next; 4]);
            held.waiting.push_back(ack(len));
            next += 1;
        }
        for expected in 0u8..200 {
            let len = held.push_bytes(&[next; 4]);
            held.waiting.push_back(ack(len));
            next = next.wrapping_add(1);
            let front = held.waiting.pop_front().unwrap();
            assert_eq!(held.take_front(front.len), &[expected; 4], "in the order they were held");
            assert!(held.bytes.len() <= 4 * 6, "{} bytes kept for 2 waiting", held.bytes.len());
        }
    }
}
