//! From the session to the wire: waiting messages are taken in order while the inflight
//! window (`mqtt.max_inflight`, lowered by the client's Receive Maximum) has room, given a
//! packet id if QoS 1 or 2, encoded (with the remaining Message Expiry, the Subscription
//! Identifiers and a topic alias for MQTT 5 clients that accept them), and
//! `message.delivered` fires. Messages that expired or are over the client's Maximum Packet
//! Size are dropped (`message.dropped`). While more waits than a sliver of free window holds,
//! the window is refilled in batches, a quarter of it at least or after 1 ms (`refill`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use plugin_api::Hook;

use super::{Connection, Transport, OUT_HIGH_WATER};
use crate::message::{Delivery, Message};
use crate::metrics::Metric;
use crate::mqtt::frame::kind;
use crate::mqtt::publish::{encode_ack, OutgoingPublish};
use crate::mqtt::Version;
use crate::node::{DropReason, Node};
use crate::persist;
use crate::session::{Inflight, Phase};

/// Topics longer than this get no alias: holding them would cost more than the alias saves.
const ALIAS_TOPIC_MAX: usize = 128;

/// The most aliases the broker sets for one connection, whatever the client's Topic Alias
/// Maximum: with `ALIAS_TOPIC_MAX`, a connection's aliases hold at most 16 KiB of topics.
const ALIASES_MAX: u16 = 128;

/// The topic aliases the broker set for this connection (MQTT 5 §3.3.2.3.4). A topic gets the
/// next alias while the client's Topic Alias Maximum (and `ALIASES_MAX`) allows; then the
/// least recently used alias is bound to it (the PUBLISH carries both, so the client rebinds
/// it). Aliases are always 1 to the maximum, never 0, and one alias means one topic.
#[derive(Debug)]
pub(super) struct OutgoingAliases {
    max: u16,
    by_topic: HashMap<Box<str>, AliasSlot>,
    /// Counts uses; a slot's `used` is the count at its last use.
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct AliasSlot {
    alias: u16,
    used: u64,
}

impl OutgoingAliases {
    pub(super) fn new(max: u16) -> OutgoingAliases {
        OutgoingAliases { max: max.min(ALIASES_MAX), by_topic: HashMap::new(), clock: 0 }
    }

    /// The alias for `topic`: `(alias, known)`, `known` when the client has it already.
    fn lookup(&self, topic: &str) -> Option<(u16, bool)> {
        if self.max == 0 || topic.len() > ALIAS_TOPIC_MAX {
            return None;
        }
        if let Some(slot) = self.by_topic.get(topic) {
            return Some((slot.alias, true));
        }
        if self.by_topic.len() < usize::from(self.max) {
            // The aliases in use are exactly 1..=len until the maximum is reached.
            return Some((self.by_topic.len() as u16 + 1, false));
        }
        self.least_recent().map(|(_, slot)| (slot.alias, false))
    }

    fn least_recent(&self) -> Option<(&str, &AliasSlot)> {
        self.by_topic.iter().min_by_key(|(_, slot)| slot.used).map(|(topic, slot)| (&**topic, slot))
    }

    /// Records that `topic` was sent with `alias`, as `lookup` gave it.
    fn used(&mut self, topic: &str, alias: u16, known: bool) {
        self.clock += 1;
        if known {
            if let Some(slot) = self.by_topic.get_mut(topic) {
                slot.used = self.clock;
            }
            return;
        }
        if self.by_topic.len() >= usize::from(self.max) {
            let victim: Option<Box<str>> = self.least_recent().map(|(topic, _)| topic.into());
            if let Some(victim) = victim {
                self.by_topic.remove(&victim);
            }
        }
        self.by_topic.insert(topic.into(), AliasSlot { alias, used: self.clock });
    }
}

/// A message just written, its QoS, packet id and retain flag: `message.delivered` fires for
/// it once the session's lock is released.
pub(super) type Delivered = (Message, u8, u16, bool);

/// Why a delivery could not be encoded.
struct TooLarge;

/// Encodes `delivery` as a PUBLISH with `packet_id` into `out`, unless it is over
/// `max_packet_size`.
#[allow(clippy::too_many_arguments)]
fn encode_delivery(
    out: &mut BytesMut,
    aliases: Option<&mut OutgoingAliases>,
    version: Version,
    max_packet_size: usize,
    delivery: &Delivery,
    packet_id: u16,
    expiry: Option<u32>,
    dup: bool,
) -> Result<(), TooLarge> {
    let message = &delivery.message;
    let v5 = version.is_v5();
    let alias = if v5 { aliases.as_deref().and_then(|a| a.lookup(message.topic())) } else { None };
    let publish = OutgoingPublish {
        dup,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: if matches!(alias, Some((_, true))) { "" } else { message.topic() },
        packet_id,
        payload: message.payload(),
        message_expiry: expiry,
        topic_alias: alias.map(|(a, _)| a),
        subscription_ids: &delivery.subscription_ids,
        forwarded: message.forwarded(),
    };
    // A topic over 65,535 bytes (made by the broker or a plugin) cannot be written at all.
    if publish.frame_len(version) > max_packet_size || message.topic().len() > usize::from(u16::MAX) {
        return Err(TooLarge);
    }
    if let (Some((alias, known)), Some(aliases)) = (alias, aliases) {
        aliases.used(message.topic(), alias, known);
    }
    publish.encode(out, version);
    Ok(())
}

impl<T: Transport> Connection<T> {
    /// How long a message in flight waits before it is sent again while the client stays
    /// connected: `mqtt.retry_interval` for MQTT 3.1 and 3.1.1, never for MQTT 5 (`retry`).
    fn retry_interval(&self) -> Option<Duration> {
        self.node.zone.retry_interval.filter(|_| !self.version.is_v5())
    }

    /// The most QoS 1/2 messages in flight to this client.
    fn window(&self) -> usize {
        usize::from(self.node.zone.max_inflight.min(self.client_receive_maximum)).max(1)
    }

    /// Moves waiting messages from the session onto the wire, as the window and the write
    /// buffer allow.
    pub(super) fn pull_deliveries(&mut self) {
        if self.out.len() >= OUT_HIGH_WATER {
            return;
        }
        let window = self.window();
        let node = self.node.clone();
        let want_delivered = node.hooks.wants(Hook::MessageDelivered);
        let mut delivered = std::mem::take(&mut self.delivered);
        let mut dropped: Vec<(Message, DropReason)> = Vec::new();
        // Sequence numbers of the persistent session's messages dropped here.
        let mut forgotten: Vec<u64> = Vec::new();
        let mut sent = [0u64; 3];
        let in_flight = {
            let mut state = self.session.lock();
            let state = &mut *state;
            // What a resumed session could not send again within the window goes first.
            if state.inflight.has_unsent() {
                let wire = Wire {
                    out: &mut self.out,
                    aliases: self.aliases_out.as_deref_mut(),
                    version: self.version,
                    max_packet_size: self.client_max_packet_size,
                };
                for (message, seq) in wire.send_unsent(&mut state.inflight, window, &node) {
                    forgotten.push(seq);
                    dropped.push((message, DropReason::TooLarge));
                }
            }
            // While little of the window is free and more waits, fill it later in one go.
            let free = window.saturating_sub(state.inflight.len());
            // Never with a QoS 0 message at the front (it goes at once), nor once the queue is
            // filling: the hold must not make it drop messages or hold its publishers back.
            let waiting = match state.queue.front() {
                Some(front) if front.qos > 0 && !node.zone.queue.filling(state.queue.len()) && !state.has_waiting() => {
                    state.queue.len()
                }
                _ => 0,
            };
            let held = self.refill.holds(window, free, waiting);
            while self.out.len() < OUT_HIGH_WATER {
                let Some(front) = state.queue.front() else {
                    break;
                };
                if front.qos > 0 && (held || state.inflight.len() >= window) {
                    break;
                }
                // A persistent session's message goes out with the packet id of its sequence
                // number (the same after a restart): it waits while an older message holds it.
                let durable_id = (front.qos > 0 && front.seq != 0).then(|| persist::packet_id_of(front.seq));
                if durable_id.is_some_and(|id| state.inflight.is_in_use(id)) {
                    break;
                }
                let Some(delivery) = state.queue.pop_front() else {
                    break;
                };
                // MQTT-3.3.2-5: an expired message is not sent.
                let Ok(expiry) = delivery.message.remaining_expiry_now() else {
                    forgotten.push(delivery.seq);
                    dropped.push((delivery.message, DropReason::Expired));
                    continue;
                };
                let packet_id = match (delivery.qos, durable_id) {
                    (0, _) => 0,
                    (_, Some(id)) => id,
                    (_, None) => state.inflight.next_packet_id(),
                };
                let encoded = encode_delivery(
                    &mut self.out,
                    self.aliases_out.as_deref_mut(),
                    self.version,
                    self.client_max_packet_size,
                    &delivery,
                    packet_id,
                    expiry,
                    delivery.maybe_sent,
                );
                if encoded.is_err() {
                    // MQTT-3.1.2-25: never more than the client's Maximum Packet Size.
                    forgotten.push(delivery.seq);
                    dropped.push((delivery.message, DropReason::TooLarge));
                    continue;
                }
                sent[usize::from(delivery.qos.min(2))] += 1;
                if want_delivered {
                    delivered.push((delivery.message.clone(), delivery.qos, packet_id, delivery.retain));
                }
                if delivery.qos > 0 {
                    state.inflight.push(packet_id, delivery);
                }
            }
            // Overload protection: publishers waiting for this queue may go on.
            state.release_waiting(node.zone.queue);
            !state.inflight.is_empty()
        };
        self.retry.watch(self.retry_interval(), in_flight);
        for (qos, n) in (0u8..).zip(sent) {
            if n > 0 {
                node.stats.metrics.publishes_sent(qos, n);
                node.stats.metrics.add(Metric::MessagesDelivered, n);
            }
        }
        for (message, qos, packet_id, retain) in delivered.drain(..) {
            let mut event = Node::message_event(&self.client, Hook::MessageDelivered, &message);
            event.qos = qos;
            event.packet_id = packet_id;
            event.retain = retain as u8;
            node.hooks.dispatch(&event);
        }
        self.delivered = delivered;
        for seq in forgotten {
            self.forget_delivered(seq, false);
        }
        for (message, why) in dropped {
            node.dropped(&self.client.client_id, &message, why);
        }
    }

    /// After a session is resumed: resends the unacknowledged PUBLISHes (DUP set) and PUBRELs,
    /// in the order first sent (MQTT-4.4.0-1), as many as the window (the client's Receive
    /// Maximum) holds; the rest follow as it frees ([`Connection::pull_deliveries`],
    /// MQTT-3.3.4-9). A message now over the client's Maximum Packet Size (it may have lowered
    /// it) is dropped instead (MQTT-3.1.2-25).
    pub(super) fn resend_inflight(&mut self) {
        let window = self.window();
        let (too_large, in_flight) = {
            let mut state = self.session.lock();
            state.inflight.mark_unsent();
            let wire = Wire {
                out: &mut self.out,
                aliases: self.aliases_out.as_deref_mut(),
                version: self.version,
                max_packet_size: self.client_max_packet_size,
            };
            let too_large = wire.send_unsent(&mut state.inflight, window, &self.node);
            (too_large, !state.inflight.is_empty())
        };
        self.retry.watch(self.retry_interval(), in_flight);
        let node = self.node.clone();
        for (message, seq) in too_large {
            self.forget_delivered(seq, false);
            node.dropped(&self.client.client_id, &message, DropReason::TooLarge);
        }
    }
}

/// Where a connection encodes what it sends, and how: its write buffer, its topic aliases,
/// its protocol version and the client's Maximum Packet Size.
struct Wire<'a> {
    out: &'a mut BytesMut,
    aliases: Option<&'a mut OutgoingAliases>,
    version: Version,
    max_packet_size: usize,
}

impl Wire<'_> {
    /// Sends again, oldest first, what a resumed session holds in flight and has not sent on
    /// this connection ([`Inflight::next_unsent`]): a PUBLISH with DUP set, or a PUBREL, as
    /// far as `window` and the write buffer allow. A message now over the client's Maximum
    /// Packet Size is taken out instead and returned, with its sequence number.
    fn send_unsent(mut self, inflight: &mut Inflight, window: usize, node: &Node) -> Vec<(Message, u64)> {
        let now = Instant::now();
        let mut too_large = Vec::new();
        while self.out.len() < OUT_HIGH_WATER {
            let Some(entry) = inflight.next_unsent(window) else {
                break;
            };
            match entry.phase {
                Phase::Puback | Phase::Pubrec => {
                    // Onward delivery had begun: an expired message still goes (§3.3.2.3.3).
                    let expiry = entry.delivery.message.remaining_expiry(now).unwrap_or(Some(1));
                    let encoded = encode_delivery(
                        self.out,
                        self.aliases.as_deref_mut(),
                        self.version,
                        self.max_packet_size,
                        &entry.delivery,
                        entry.packet_id,
                        expiry,
                        true,
                    );
                    match encoded {
                        Ok(()) => node.stats.metrics.publishes_sent(entry.delivery.qos, 1),
                        Err(TooLarge) => too_large.push(entry.packet_id),
                    }
                }
                Phase::Pubcomp => {
                    encode_ack(self.out, self.version, kind::PUBREL, entry.packet_id, 0, None);
                    node.stats.metrics.packet_sent(kind::PUBREL, 0);
                }
            }
        }
        too_large
            .into_iter()
            .filter_map(|id| inflight.remove(id))
            .map(|e| (e.delivery.message, e.delivery.seq))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_stay_within_the_maximum_and_the_least_recently_used_is_rebound() {
        let mut aliases = OutgoingAliases::new(2);
        let send = |aliases: &mut OutgoingAliases, topic: &str| {
            let (alias, known) = aliases.lookup(topic).expect("an alias");
            aliases.used(topic, alias, known);
            (alias, known)
        };
        assert_eq!(send(&mut aliases, "a"), (1, false));
        assert_eq!(send(&mut aliases, "b"), (2, false));
        assert_eq!(send(&mut aliases, "a"), (1, true));
        assert_eq!(send(&mut aliases, "c"), (2, false), "b was the least recently used");
        assert_eq!(send(&mut aliases, "a"), (1, true));
        assert_eq!(send(&mut aliases, "b"), (2, false), "c was");
        assert_eq!(aliases.by_topic.len(), 2);
        assert_eq!(aliases.lookup(&"t".repeat(ALIAS_TOPIC_MAX + 1)), None, "long topics get none");
        assert_eq!(OutgoingAliases::new(u16::MAX).max, ALIASES_MAX);
        assert_eq!(OutgoingAliases::new(0).lookup("a"), None);
    }
}
