//! Acknowledgements that wait for the store: a PUBACK or PUBREC promises that the message
//! reached every persistent session it was routed to, a PUBREL that the broker will not send
//! that message again, a PUBCOMP that the packet id is free, a SUBACK that the subscription
//! outlives a crash. Each is held until the batch that keeps its promise is committed (group
//! commit: one fsync for everything that arrived meanwhile), while the connection goes on
//! reading and delivering.
//!
//! Acknowledgements leave in the order they were made (MQTT-4.6.0-2..4): once one waits,
//! every later one waits behind it, even one that needs no write. A connection of a clean
//! session never has any of this (nothing of it is written); the queue is boxed and made on
//! demand.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use store::{Batch, StoreError};

use super::{Connection, Ended, Transport};
use crate::mqtt::publish::encode_ack;
use crate::mqtt::reason;

type Commit = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// Acknowledgements waiting, oldest first.
#[derive(Default)]
pub(super) struct Held {
    waiting: VecDeque<HeldAck>,
}

struct HeldAck {
    /// The commit it waits for; `None`: it only waits for those before it.
    commit: Option<Commit>,
    /// The acknowledgement, encoded.
    bytes: BytesMut,
    /// The PUBACK or PUBREC (kind, packet id) to send instead when the store refuses the
    /// commit (MQTT 5: 0x97 Quota exceeded); `None` sends `bytes` all the same.
    refusal: Option<(u8, u16)>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("waiting", &self.waiting.len()).finish()
    }
}

impl<T: Transport> Connection<T> {
    fn holding(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.waiting.is_empty())
    }

    /// Holds what was encoded into the write buffer from `start` (one acknowledgement) until
    /// `batch` is committed, and behind every acknowledgement already held. With nothing to
    /// commit and nothing held, it goes out at once.
    pub(super) fn hold_from(&mut self, start: usize, batch: Option<Batch>, refusal: Option<(u8, u16)>) {
        let commit: Option<Commit> = match (batch.filter(|b| !b.is_empty()), &self.node.persistence) {
            (Some(batch), Some(store)) => Some(Box::pin(store.commit_async(batch))),
            _ => None,
        };
        if commit.is_none() && !self.holding() {
            return;
        }
        let bytes = self.out.split_off(start);
        self.held.get_or_insert_with(Box::default).waiting.push_back(HeldAck { commit, bytes, refusal });
    }

    /// Moves the acknowledgements whose commits are done to the write buffer, in order:
    /// `Ready(Ok(()))` when it moved any. A refused commit turns its PUBACK or PUBREC into a
    /// refusal (MQTT 5) or ends the connection (3.1.1, which has no way to say it).
    pub(super) fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        let Some(held) = self.held.as_deref_mut() else { return Poll::Pending };
        let mut moved = false;
        while let Some(front) = held.waiting.front_mut() {
            let verdict = match front.commit.as_mut() {
                Some(commit) => match commit.as_mut().poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(verdict) => verdict,
                },
                None => Ok(()),
            };
            let Some(front) = held.waiting.pop_front() else { break };
            moved = true;
            match (verdict, front.refusal) {
                (Ok(()), _) | (Err(_), None) => self.out.extend_from_slice(&front.bytes),
                (Err(e), Some((kind, packet_id))) => {
                    tracing::warn!(
                        client_id = ?crate::log_limit::clipped(&self.client.client_id),
                        "a message for persistent sessions was refused: {e}"
                    );
                    if !self.version.is_v5() {
                        return Poll::Ready(Err(Ended::protocol(
                            reason::QUOTA_EXCEEDED,
                            "the store refused a message",
                        )));
                    }
                    encode_ack(&mut self.out, self.version, kind, packet_id, reason::QUOTA_EXCEEDED, None);
                    self.node.stats.metrics.packet_sent(kind, reason::QUOTA_EXCEEDED);
                }
            }
        }
        if held.waiting.is_empty() {
            self.held = None;
        }
        if moved {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
