//! A session as it moves from one node of a cluster to another, when its client reconnects
//! to another node: what the node that held it sends (its subscriptions, the messages queued
//! for it and those in flight with their packet ids and phases, its QoS 2 packet ids awaiting
//! release), and, once the new node routes to it, what was queued meanwhile (the tail).
//!
//! The move is in two steps so that nothing is lost in between: the old node takes the
//! session's messages out but keeps routing to it ([`MovedSession::take`]), the new node
//! installs it and subscribes, and only then the old node stops routing and sends what came
//! meanwhile ([`take_tail`]). A message that reached both nodes in that moment is put in
//! once, recognised by its cluster identity ([`crate::message::Origin`]) in [`merge_tail`].
//!
//! Packet ids are kept, so a QoS 2 message sent before the move and sent again after it has
//! the id the client saw (its de-duplication holds: exactly once), and a PUBREL is resent for
//! one whose PUBREC came.
//!
//! The share groups of the messages a share group gave the session follow what is sent, one
//! for each message in order ([`Shares`]), so that the new node hands them to another member
//! if the session ends before its client took them. A node that knows no such trailer reads
//! what comes before it and ignores the rest: the format stays 1.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{MessageQueue, Phase, State, Subscription};
use crate::message::{Delivery, Head, Message, Origin};
use crate::mqtt::subscribe::SubscriptionOptions;
use crate::mqtt::Version;
use crate::persist::ShareTrailer;

/// The format of what is sent; a node refuses a version it does not know.
const FORMAT: u8 = 1;

/// One delivery as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MovedDelivery {
    topic: String,
    #[serde(with = "serde_bytes_vec")]
    payload: Vec<u8>,
    /// The QoS and retain flag it was published with, and those it goes out with.
    published_qos: u8,
    published_retain: bool,
    qos: u8,
    retain: bool,
    #[serde(with = "serde_bytes_vec")]
    forwarded: Vec<u8>,
    expires_in_ms: Option<u64>,
    timestamp_ms: u64,
    origin: Option<(u64, u64)>,
    subscription_ids: Vec<u32>,
    seq: u64,
    maybe_sent: bool,
    /// The share group that gave it (sent after the rest, in [`Shares`]).
    #[serde(skip)]
    share: Option<ShareTrailer>,
}

/// The share groups of a list of [`MovedDelivery`], in its order; sent after it only if one
/// of them has a group.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Shares(Vec<Option<ShareTrailer>>);

impl Shares {
    fn of<'a>(deliveries: impl Iterator<Item = &'a MovedDelivery>) -> Shares {
        Shares(deliveries.map(|d| d.share.clone()).collect())
    }

    /// `bytes` with the shares after them, if there is one.
    fn append_to(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        if self.0.iter().any(Option::is_some) {
            bytes.extend(postcard::to_stdvec(self).unwrap_or_default());
        }
        bytes
    }

    /// The shares after what was read (`rest`): none if nothing follows.
    fn read(rest: &[u8]) -> Result<Shares, postcard::Error> {
        if rest.is_empty() {
            return Ok(Shares::default());
        }
        postcard::from_bytes(rest)
    }

    /// Gives each delivery its share group, in order.
    fn give<'a>(self, deliveries: impl Iterator<Item = &'a mut MovedDelivery>) {
        for (delivery, share) in deliveries.zip(self.0) {
            delivery.share = share;
        }
    }
}

/// Bytes as one postcard byte string, not a sequence of numbers.
mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        <&[u8]>::deserialize(deserializer).map(<[u8]>::to_vec)
    }
}

impl MovedDelivery {
    fn of(delivery: &Delivery, now: Instant) -> MovedDelivery {
        let message = &delivery.message;
        MovedDelivery {
            topic: message.topic().to_owned(),
            payload: message.payload().to_vec(),
            published_qos: message.qos,
            published_retain: message.retain,
            qos: delivery.qos,
            retain: delivery.retain,
            forwarded: message.forwarded().to_vec(),
            expires_in_ms: message.expires_at.map(|at| at.saturating_duration_since(now).as_millis() as u64),
            timestamp_ms: message.timestamp_ms,
            origin: message.origin.map(|o| (o.node, o.seq)),
            subscription_ids: delivery.subscription_ids.to_vec(),
            seq: delivery.seq,
            maybe_sent: delivery.maybe_sent,
            share: delivery.share.as_deref().map(ShareTrailer::of),
        }
    }

    fn into_delivery(self, now: Instant) -> Delivery {
        let head = Head {
            qos: self.published_qos,
            retain: self.published_retain,
            expires_at: self.expires_in_ms.map(|ms| now + Duration::from_millis(ms)),
            publisher: 0,
            timestamp_ms: self.timestamp_ms,
            origin: self.origin.map(|(node, seq)| Origin { node, seq }),
        };
        Delivery {
            message: Message::new(head, &self.topic, &self.payload, &self.forwarded),
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids.into_boxed_slice(),
            seq: self.seq,
            maybe_sent: self.maybe_sent,
            share: self.share.map(ShareTrailer::into_group),
        }
    }
}

/// A message in flight as it travels: its packet id, and whether its PUBREC came (PUBREL is
/// then what is resent).
#[derive(Debug, Serialize, Deserialize)]
struct MovedInflight {
    packet_id: u16,
    released: bool,
    delivery: MovedDelivery,
}

/// What a node sends of a session it gives up.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MovedSession {
    format: u8,
    expiry_interval: u32,
    /// Filter, subscription options byte (MQTT 5 layout), subscription identifier.
    subscriptions: Vec<(String, u8, Option<u32>)>,
    inflight: Vec<MovedInflight>,
    queue: Vec<MovedDelivery>,
    awaiting_rel: Vec<u16>,
    /// A persistent session's next sequence number (0 if it was kept in memory only).
    next_seq: u64,
}

/// Why what another node sent cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MovedError {
    #[error("unreadable: {0}")]
    Unreadable(#[from] postcard::Error),
    #[error("format {0} is newer than this node's ({FORMAT})")]
    Format(u8),
}

impl MovedSession {
    /// Takes `state`'s messages (queued and in flight) out, with a copy of the rest. The
    /// session stays subscribed: what is routed to it from now on waits for [`take_tail`].
    pub(crate) fn take(state: &mut State) -> MovedSession {
        let now = Instant::now();
        let inflight = state
            .inflight
            .take()
            .into_iter()
            .map(|e| MovedInflight {
                packet_id: e.packet_id,
                released: e.phase == Phase::Pubcomp,
                delivery: MovedDelivery::of(&e.delivery, now),
            })
            .collect();
        let queue = state.queue.take().iter().map(|d| MovedDelivery::of(d, now)).collect();
        let mut subscriptions: Vec<(String, u8, Option<u32>)> =
            state.subscriptions.iter().map(|(f, s)| (f.to_string(), s.options.to_byte(), s.id)).collect();
        subscriptions.sort();
        MovedSession {
            format: FORMAT,
            expiry_interval: state.expiry_interval,
            subscriptions,
            inflight,
            queue,
            awaiting_rel: state.awaiting_rel.clone(),
            next_seq: state.durable.as_ref().map_or(0, |d| d.next_seq),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let shares = Shares::of(self.inflight.iter().map(|e| &e.delivery).chain(&self.queue));
        shares.append_to(postcard::to_stdvec(self).unwrap_or_default())
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<MovedSession, MovedError> {
        let (mut moved, rest): (MovedSession, _) = postcard::take_from_bytes(bytes)?;
        if moved.format > FORMAT {
            return Err(MovedError::Format(moved.format));
        }
        Shares::read(rest)?.give(moved.inflight.iter_mut().map(|e| &mut e.delivery).chain(&mut moved.queue));
        Ok(moved)
    }

    /// Its subscriptions: filter and how.
    pub(crate) fn subscriptions(&self) -> Vec<(String, Subscription)> {
        self.subscriptions
            .iter()
            .filter_map(|(filter, options, id)| {
                let options = SubscriptionOptions::decode(*options, Version::V5).ok()?;
                Some((filter.clone(), Subscription { options, id: *id }))
            })
            .collect()
    }

    /// How many messages it brings (queued and in flight).
    pub(crate) fn messages(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// Puts its messages into `state` (a new session's, not yet subscribed): those in flight
    /// with their packet ids, then the queue; and its QoS 2 packet ids awaiting release.
    /// Returns the persistent session's next sequence number it had.
    pub(crate) fn install(self, state: &mut State) -> u64 {
        let now = Instant::now();
        for entry in self.inflight {
            let delivery = entry.delivery.into_delivery(now);
            if entry.released {
                state.inflight.push_released(entry.packet_id, delivery);
            } else {
                state.inflight.push(entry.packet_id, delivery);
            }
        }
        for delivery in self.queue {
            state.queue.push(delivery.into_delivery(now));
        }
        state.awaiting_rel = self.awaiting_rel;
        self.next_seq
    }
}

/// What was queued for a session being moved since [`MovedSession::take`], taken out.
pub(crate) fn take_tail(state: &mut State) -> Vec<u8> {
    let now = Instant::now();
    let tail: Vec<MovedDelivery> = state.queue.take().iter().map(|d| MovedDelivery::of(d, now)).collect();
    Shares::of(tail.iter()).append_to(postcard::to_stdvec(&(FORMAT, &tail)).unwrap_or_default())
}

/// Puts `tail` (from [`take_tail`]) into `queue` ahead of what the new node queued itself since
/// it subscribed, leaving out what reached both nodes ([`merge`]). Returns how many it put in.
pub(crate) fn merge_tail(
    queue: &mut MessageQueue,
    tail: &[u8],
    added: impl FnMut(&mut Delivery),
) -> Result<usize, MovedError> {
    let ((format, mut tail), rest): ((u8, Vec<MovedDelivery>), _) = postcard::take_from_bytes(tail)?;
    if format > FORMAT {
        return Err(MovedError::Format(format));
    }
    Shares::read(rest)?.give(tail.iter_mut());
    let now = Instant::now();
    Ok(merge(queue, tail.into_iter().map(|d| d.into_delivery(now)), added))
}

/// Puts `older` into `queue` ahead of what it holds, leaving out what it holds already (by
/// [`Origin`]); `added` sees each one put in. Returns how many.
pub(crate) fn merge(
    queue: &mut MessageQueue,
    older: impl IntoIterator<Item = Delivery>,
    mut added: impl FnMut(&mut Delivery),
) -> usize {
    let newer = queue.take();
    let seen: HashSet<Origin> = newer.iter().filter_map(|d| d.message.origin).collect();
    let mut count = 0;
    for mut delivery in older {
        if delivery.message.origin.is_some_and(|o| seen.contains(&o)) {
            continue;
        }
        added(&mut delivery);
        queue.push(delivery);
        count += 1;
    }
    for delivery in newer {
        queue.push(delivery);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(qos: u8, payload: &str, origin: Option<u64>) -> Delivery {
        let mut delivery = Delivery::for_test(qos, payload.as_bytes());
        delivery.message.edit(|head| head.origin = origin.map(|seq| Origin { node: 7, seq }));
        delivery
    }

    fn payloads(queue: &mut MessageQueue) -> Vec<String> {
        queue.take().iter().map(|d| String::from_utf8_lossy(d.message.payload()).into_owned()).collect()
    }

    #[test]
    fn a_session_moves_with_its_messages_packet_ids_and_phases() {
        let mut old = State::default();
        old.inflight.push(5, delivery(1, "sent q1", None));
        old.inflight.push_released(9, delivery(2, "pubrec came", None));
        for p in ["a", "b", "c"] {
            old.queue.push(delivery(2, p, Some(1)));
        }
        old.awaiting_rel = vec![3, 4];
        let moved = MovedSession::decode(&MovedSession::take(&mut old).encode()).expect("reads back");
        assert_eq!((old.queue.len(), old.inflight.len()), (0, 0), "taken out of the old session");
        assert_eq!(moved.messages(), 5);
        let mut new = State::default();
        moved.install(&mut new);
        let inflight: Vec<(u16, Phase)> = new.inflight.iter().map(|e| (e.packet_id, e.phase)).collect();
        assert_eq!(inflight, [(5, Phase::Puback), (9, Phase::Pubcomp)]);
        assert_eq!(payloads(&mut new.queue), ["a", "b", "c"]);
        assert_eq!(new.awaiting_rel, [3, 4]);
    }

    #[test]
    fn share_groups_move_with_their_messages_and_older_nodes_read_the_rest() {
        let group =
            |name: &str| Some(std::sync::Arc::new(crate::router::ShareGroup { name: name.into(), path: "t".into() }));
        let with_group = |payload: &str, name: &str| {
            let mut d = delivery(1, payload, None);
            d.share = group(name);
            d
        };
        let mut old = State::default();
        old.inflight.push(5, with_group("in flight", "g1"));
        old.queue.push(delivery(1, "plain", None));
        old.queue.push(with_group("queued", "g2"));
        let bytes = MovedSession::take(&mut old).encode();
        let mut new = State::default();
        MovedSession::decode(&bytes).expect("reads back").install(&mut new);
        let groups = |state: &mut State| -> Vec<Option<String>> {
            let inflight = state.inflight.iter().map(|e| e.delivery.share.as_ref().map(|g| g.name.to_string()));
            let queued: Vec<_> =
                state.queue.take().iter().map(|d| d.share.as_ref().map(|g| g.name.to_string())).collect();
            inflight.collect::<Vec<_>>().into_iter().chain(queued).collect()
        };
        assert_eq!(groups(&mut new), [Some("g1".into()), None, Some("g2".into())]);
        // A node of before the shares reads what comes before them, as format 1.
        let older: MovedSession = postcard::from_bytes(&bytes).expect("the session before its shares");
        assert_eq!((older.format, older.messages()), (FORMAT, 3));

        let mut old = State::default();
        old.queue.push(with_group("tail", "g3"));
        let mut queue = MessageQueue::default();
        assert_eq!(merge_tail(&mut queue, &take_tail(&mut old), |_| {}).unwrap(), 1);
        assert_eq!(queue.take()[0].share, group("g3"));
    }

    #[test]
    fn what_reached_both_nodes_is_merged_once_and_older_messages_go_first() {
        let mut queue = MessageQueue::default();
        queue.push(delivery(1, "x", Some(1)));
        queue.push(delivery(1, "y", Some(2)));
        let older = [delivery(1, "a", Some(0)), delivery(1, "x again", Some(1)), delivery(1, "no origin", None)];
        let mut seen = 0;
        assert_eq!(merge(&mut queue, older, |_| seen += 1), 2);
        assert_eq!(seen, 2);
        assert_eq!(payloads(&mut queue), ["a", "no origin", "x", "y"]);
    }
}
