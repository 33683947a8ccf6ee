//! What the connection does with each packet from its client: publish (with topic aliases,
//! the ACL, QoS 2 de-duplication and `message.publish`), acknowledgements of what it was
//! sent, subscribe and unsubscribe (with the ACL and the session hooks), ping, disconnect.

use bytes::Bytes;
use plugin_api::abi::{self, RawStr};
use plugin_api::Hook;

use super::handshake::forwarded;
use super::{Connection, Ended, Transport};
use crate::hooks::{Hooks, Verdict};
use crate::message::Message;
use crate::metrics::Metric;
use crate::mqtt::disconnect::{encode_pingresp, Disconnect};
use crate::mqtt::frame::{kind, FrameHeader};
use crate::mqtt::packet::Packet;
use crate::mqtt::publish::{encode_ack, Ack, Publish};
use crate::mqtt::reason;
use crate::mqtt::subscribe::{encode_sub_ack, Subscribe, SubscriptionOptions, Unsubscribe};
use crate::node::{DropReason, Node, Published};
use crate::router::{is_valid_replacement_filter, is_valid_topic, Filter};
use crate::session::{Acked, RecOutcome, Subscription};

/// The most bytes the topics a client set aliases for may hold, each counted with
/// `ALIAS_IN_OVERHEAD`; over it the connection ends with 0x97 (Quota exceeded). The Topic Alias
/// Maximum (`mqtt.max_topic_alias`) bounds how many; this bounds their memory.
const ALIASES_IN_BYTES_MAX: usize = 64 * 1024;

/// What one alias costs beyond its topic's bytes (the map's entry and the allocation).
const ALIAS_IN_OVERHEAD: usize = 32;

/// The topic aliases a client set (MQTT 5 §3.3.2.3.4), and the bytes they hold.
#[derive(Debug, Default)]
pub(super) struct IncomingAliases {
    by_alias: std::collections::HashMap<u16, Box<str>>,
    bytes: usize,
}

impl IncomingAliases {
    fn get(&self, alias: u16) -> Option<&str> {
        self.by_alias.get(&alias).map(|topic| &**topic)
    }

    /// Binds `alias` to `topic`; false (and nothing changed) when that would hold more than
    /// `ALIASES_IN_BYTES_MAX`.
    fn set(&mut self, alias: u16, topic: &str) -> bool {
        let cost = |topic: &str| topic.len() + ALIAS_IN_OVERHEAD;
        let freed = self.by_alias.get(&alias).map_or(0, |old| cost(old));
        let bytes = self.bytes - freed + cost(topic);
        if bytes > ALIASES_IN_BYTES_MAX {
            return false;
        }
        self.bytes = bytes;
        self.by_alias.insert(alias, topic.into());
        true
    }
}

impl<T: Transport> Connection<T> {
    /// Handles one packet from the client.
    pub(super) fn handle_packet(&mut self, header: &FrameHeader, body: &[u8]) -> Result<(), Ended> {
        let packet = Packet::decode(header, body, self.version).map_err(|e| {
            let why = match e {
                crate::mqtt::reader::DecodeError::Malformed(why) | crate::mqtt::reader::DecodeError::Protocol(why) => {
                    why
                }
            };
            Ended::protocol(e.reason_code(), why)
        })?;
        match packet {
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::PubAck(ack) => self.on_puback(ack),
            Packet::PubRec(ack) => self.on_pubrec(ack),
            Packet::PubRel(ack) => {
                self.on_pubrel(ack);
                Ok(())
            }
            Packet::PubComp(ack) => self.on_pubcomp(ack),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                encode_pingresp(&mut self.out);
                self.node.stats.metrics.packet_sent(kind::PINGRESP, 0);
                Ok(())
            }
            Packet::Disconnect(disconnect) => Err(self.on_disconnect(disconnect)),
            Packet::Connect => Err(Ended::protocol(reason::PROTOCOL_ERROR, "a second CONNECT (MQTT-3.1.0-2)")),
            Packet::Auth(_) => Err(Ended::protocol(reason::PROTOCOL_ERROR, "AUTH without an authentication method")),
        }
    }

    /// A reason string for an MQTT 5 acknowledgement with `code`, when it is a failure and
    /// the client wants problem information.
    fn reason_string(&self, code: u8, base_len: usize) -> Option<&'static str> {
        if code < 0x80 || !self.problem_information {
            return None;
        }
        reason::string_within(code, base_len, self.client_max_packet_size)
    }

    fn ack(&mut self, packet_kind: u8, packet_id: u16, code: u8) {
        // Fixed header, packet id, reason code, property length.
        let reason_string = self.reason_string(code, 6);
        encode_ack(&mut self.out, self.version, packet_kind, packet_id, code, reason_string);
        self.node.stats.metrics.packet_sent(packet_kind, code);
    }

    /// The topic a PUBLISH goes to, with MQTT 5 topic aliases applied (§3.3.2.3.4).
    fn topic_of(&mut self, publish: &Publish<'_>) -> Result<Box<str>, Ended> {
        let Some(alias) = publish.properties.topic_alias else {
            if publish.topic.is_empty() {
                return Err(Ended::protocol(reason::PROTOCOL_ERROR, "an empty topic without a topic alias"));
            }
            return Ok(publish.topic.into());
        };
        if alias == 0 || alias > self.node.zone.max_topic_alias {
            return Err(Ended::protocol(reason::TOPIC_ALIAS_INVALID, "topic alias out of range (MQTT-3.3.2-9)"));
        }
        if publish.topic.is_empty() {
            return match self.aliases_in.get(alias) {
                Some(topic) => Ok(topic.into()),
                None => Err(Ended::protocol(reason::PROTOCOL_ERROR, "an unknown topic alias")),
            };
        }
        if !self.aliases_in.set(alias, publish.topic) {
            return Err(Ended::protocol(reason::QUOTA_EXCEEDED, "topic aliases over 64 KiB"));
        }
        Ok(publish.topic.into())
    }

    fn on_publish(&mut self, publish: Publish<'_>) -> Result<(), Ended> {
        let node = self.node.clone();
        let topic = self.topic_of(&publish)?;
        if !is_valid_topic(&topic) {
            return Err(Ended::protocol(reason::TOPIC_NAME_INVALID, "a topic name with wildcards (MQTT-3.3.2-2)"));
        }
        if publish.properties.response_topic.is_some_and(|t| !is_valid_topic(t)) {
            return Err(Ended::protocol(reason::PROTOCOL_ERROR, "a Response Topic with wildcards (MQTT-3.3.2-14)"));
        }
        if publish.qos > node.zone.max_qos {
            return Err(Ended::protocol(reason::QOS_NOT_SUPPORTED, "QoS above the maximum (MQTT-3.2.2-11)"));
        }
        if publish.retain && !node.zone.retain_available {
            return Err(Ended::protocol(reason::RETAIN_NOT_SUPPORTED, "retain is not available (MQTT-3.2.2-14)"));
        }
        let ack_kind = match publish.qos {
            0 => 0,
            1 => kind::PUBACK,
            _ => kind::PUBREC,
        };
        if publish.qos == 2 {
            let mut state = self.session.lock();
            if state.awaiting_rel.contains(&publish.packet_id) {
                // A resent QoS 2 message already routed: acknowledge, never route twice
                // (MQTT-4.3.3-10).
                drop(state);
                self.ack(kind::PUBREC, publish.packet_id, reason::SUCCESS);
                return Ok(());
            }
            if state.awaiting_rel.len() >= usize::from(node.zone.max_awaiting_rel) {
                return Err(Ended::protocol(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "over the Receive Maximum (MQTT-3.3.4-7)",
                ));
            }
            state.awaiting_rel.push(publish.packet_id);
        }
        let v5 = self.version.is_v5();
        let message = Message {
            topic,
            payload: Bytes::copy_from_slice(publish.payload),
            qos: publish.qos,
            retain: publish.retain,
            forwarded: if v5 { forwarded(&publish.properties) } else { Bytes::new() },
            expires_at: Message::expiry_from(publish.properties.message_expiry_interval, self.now),
            publisher: self.session.id,
            timestamp_ms: self.now_ms,
        };
        if self.acl_denied(abi::ACL_PUBLISH, &message.topic) {
            tracing::debug!(client_id = &*self.client.client_id, topic = &*message.topic, "publish denied by ACL");
            node.dropped(&self.client.client_id, &message, DropReason::Denied);
            if ack_kind != 0 {
                // MQTT 5 says why; MQTT 3.1.1 has no way to, so the message is acknowledged.
                self.ack(ack_kind, publish.packet_id, if v5 { reason::NOT_AUTHORIZED } else { reason::SUCCESS });
            }
            if v5 && publish.qos == 2 {
                self.session.lock().awaiting_rel.retain(|&id| id != publish.packet_id);
            }
            return Ok(());
        }
        let outcome = node.publish(message, &self.client);
        if ack_kind != 0 {
            let code = match outcome {
                Published::Routed(0) => reason::NO_MATCHING_SUBSCRIBERS,
                _ => reason::SUCCESS,
            };
            self.ack(ack_kind, publish.packet_id, code);
        }
        Ok(())
    }

    /// Asks `client.check_acl` (or the connection's ACL cache) whether `action` on `topic` is
    /// denied. A superuser is never asked about.
    fn acl_denied(&mut self, action: u32, topic: &str) -> bool {
        let hooks: &Hooks = &self.node.hooks;
        if self.superuser || !hooks.wants(Hook::ClientCheckAcl) {
            return false;
        }
        let ask = || {
            self.node.stats.metrics.inc(Metric::ClientCheckAcl);
            let mut event = self.client.event(Hook::ClientCheckAcl, self.now_ms);
            event.acl_action = action;
            event.topic = RawStr::new(topic);
            hooks.dispatch(&event) == Verdict::Deny
        };
        let Some(cache) = &mut self.acl_cache else {
            return ask();
        };
        let generation = hooks.acl_generation();
        if let Some(denied) = cache.get(generation, action, topic, self.now) {
            self.node.stats.metrics.inc(Metric::ClientAclCacheHit);
            return denied;
        }
        let denied = ask();
        cache.put(generation, action, topic, denied, self.now);
        denied
    }

    fn fire_acked(&self, message: &Message, packet_id: u16) {
        self.node.stats.metrics.inc(Metric::MessagesAcked);
        let hooks = &self.node.hooks;
        if hooks.wants(Hook::MessageAcked) {
            let mut event = Node::message_event(&self.client, Hook::MessageAcked, message);
            event.packet_id = packet_id;
            hooks.dispatch(&event);
        }
    }

    /// A PUBACK or PUBCOMP: settles the delivery; an id not in flight is counted; an id in
    /// flight waiting for another acknowledgement is a protocol error (as in mosquitto).
    fn on_settled(&mut self, acked: Acked, packet_id: u16, missed: Metric, wrong: &'static str) -> Result<(), Ended> {
        match acked {
            Acked::Settled(delivery) => self.fire_acked(&delivery.message, packet_id),
            Acked::Unknown => self.node.stats.metrics.inc(missed),
            Acked::WrongType => return Err(Ended::protocol(reason::PROTOCOL_ERROR, wrong)),
        }
        Ok(())
    }

    fn on_puback(&mut self, ack: Ack<'_>) -> Result<(), Ended> {
        let acked = self.session.lock().inflight.puback(ack.packet_id);
        self.on_settled(acked, ack.packet_id, Metric::PacketsPubackMissed, "PUBACK for a QoS 2 message")
    }

    fn on_pubrec(&mut self, ack: Ack<'_>) -> Result<(), Ended> {
        let outcome = self.session.lock().inflight.pubrec(ack.packet_id, ack.reason);
        match outcome {
            RecOutcome::Release => self.ack(kind::PUBREL, ack.packet_id, reason::SUCCESS),
            RecOutcome::Unknown => {
                self.node.stats.metrics.inc(Metric::PacketsPubrecMissed);
                self.ack(kind::PUBREL, ack.packet_id, reason::PACKET_IDENTIFIER_NOT_FOUND)
            }
            RecOutcome::Refused => {}
            RecOutcome::WrongType => {
                return Err(Ended::protocol(reason::PROTOCOL_ERROR, "PUBREC for a QoS 1 message"));
            }
        }
        Ok(())
    }

    fn on_pubcomp(&mut self, ack: Ack<'_>) -> Result<(), Ended> {
        let acked = self.session.lock().inflight.pubcomp(ack.packet_id);
        let wrong = "PUBCOMP for a message not released (QoS 1, or QoS 2 before PUBREC)";
        self.on_settled(acked, ack.packet_id, Metric::PacketsPubcompMissed, wrong)
    }

    fn on_pubrel(&mut self, ack: Ack<'_>) {
        let known = {
            let mut state = self.session.lock();
            let before = state.awaiting_rel.len();
            state.awaiting_rel.retain(|&id| id != ack.packet_id);
            state.awaiting_rel.len() != before
        };
        if !known {
            self.node.stats.metrics.inc(Metric::PacketsPubrelMissed);
        }
        let code = if known { reason::SUCCESS } else { reason::PACKET_IDENTIFIER_NOT_FOUND };
        self.ack(kind::PUBCOMP, ack.packet_id, code);
    }

    fn on_subscribe(&mut self, subscribe: Subscribe<'_>) -> Result<(), Ended> {
        let node = self.node.clone();
        let zone = &node.zone;
        let id = subscribe.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::with_capacity(subscribe.filters.len());
        node.stats.metrics.inc(Metric::ClientSubscribe);
        for &(filter, options) in &subscribe.filters {
            // EMQX's order: `client.subscribe` may rewrite the filter (`emqx_mod_rewrite`);
            // the ACL and the subscription then see the rewritten one.
            let rewritten = self.client_subscribe_hook(Hook::ClientSubscribe, filter, options);
            let filter = rewritten.as_deref().unwrap_or(filter);
            let code = match Filter::parse(filter) {
                Err(_) => reason::TOPIC_FILTER_INVALID,
                Ok(parsed) if parsed.group.is_some() && options.no_local => {
                    return Err(Ended::protocol(
                        reason::PROTOCOL_ERROR,
                        "No Local on a shared subscription (MQTT-3.8.3-4)",
                    ));
                }
                Ok(parsed) if parsed.group.is_some() && !zone.shared_subscription => {
                    reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(parsed) if parsed.has_wildcards() && !zone.wildcard_subscription => {
                    reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(_) if self.over_subscription_quota(filter) => reason::QUOTA_EXCEEDED,
                Ok(parsed) => {
                    if self.acl_denied(abi::ACL_SUBSCRIBE, filter) {
                        tracing::debug!(client_id = &*self.client.client_id, filter, "subscribe denied by ACL");
                        reason::NOT_AUTHORIZED
                    } else {
                        let options = SubscriptionOptions { qos: options.qos.min(zone.max_qos), ..options };
                        let is_new = node.subscribe(&self.session, filter, &parsed, Subscription { options, id });
                        granted.push((filter.to_owned(), options, is_new));
                        options.qos
                    }
                }
            };
            codes.push(code);
        }
        let base_len = 5 + 1 + codes.len();
        let reason_string = codes.iter().find(|&&c| c >= 0x80).and_then(|&c| self.reason_string(c, base_len));
        encode_sub_ack(&mut self.out, self.version, kind::SUBACK, subscribe.packet_id, &codes, reason_string);
        let metrics = &node.stats.metrics;
        metrics.packet_sent(kind::SUBACK, 0);
        if codes.iter().any(|&c| c >= 0x80) {
            metrics.inc(Metric::PacketsSubscribeError);
        }
        if codes.contains(&reason::NOT_AUTHORIZED) {
            metrics.inc(Metric::PacketsSubscribeAuthError);
        }
        // After the SUBACK is queued: retained messages a plugin delivers now follow it.
        if node.hooks.wants(Hook::SessionSubscribed) {
            for (filter, options, is_new) in granted {
                node.subscribed(&self.client, &filter, options, is_new, self.now_ms);
            }
        }
        Ok(())
    }

    /// Whether subscribing to `filter` would take the session over `mqtt.max_subscriptions`
    /// (a filter it has already is replaced, not added).
    fn over_subscription_quota(&self, filter: &str) -> bool {
        let max = self.node.zone.max_subscriptions;
        if max == 0 {
            return false;
        }
        let state = self.session.lock();
        state.subscriptions.len() >= max && !state.subscriptions.contains_key(filter)
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe<'_>) {
        let node = self.node.clone();
        let mut codes = Vec::with_capacity(unsubscribe.filters.len());
        let mut removed = Vec::new();
        node.stats.metrics.inc(Metric::ClientUnsubscribe);
        for &filter in &unsubscribe.filters {
            let rewritten = self.client_subscribe_hook(Hook::ClientUnsubscribe, filter, SubscriptionOptions::default());
            let filter = rewritten.as_deref().unwrap_or(filter);
            let code = match Filter::parse(filter) {
                Err(_) => reason::TOPIC_FILTER_INVALID,
                Ok(parsed) if node.unsubscribe(&self.session, filter, &parsed) => {
                    removed.push(filter.to_owned());
                    reason::SUCCESS
                }
                Ok(_) => reason::NO_SUBSCRIPTION_EXISTED,
            };
            codes.push(code);
        }
        encode_sub_ack(&mut self.out, self.version, kind::UNSUBACK, unsubscribe.packet_id, &codes, None);
        node.stats.metrics.packet_sent(kind::UNSUBACK, 0);
        if node.hooks.wants(Hook::SessionUnsubscribed) {
            for filter in removed {
                let mut event = self.client.event(Hook::SessionUnsubscribed, self.now_ms);
                event.topic = RawStr::new(&filter);
                node.hooks.dispatch(&event);
            }
        }
    }

    /// Fires `client.subscribe` or `client.unsubscribe` for one filter; the filter a plugin
    /// replaced it with, if one did.
    fn client_subscribe_hook(&self, hook: Hook, filter: &str, options: SubscriptionOptions) -> Option<String> {
        let hooks = &self.node.hooks;
        if !hooks.wants(hook) {
            return None;
        }
        let mut event = self.client.event(hook, self.now_ms);
        event.topic = RawStr::new(filter);
        event.qos = options.qos;
        event.sub_options = options.to_byte();
        hooks.dispatch_rewriting(&mut event, is_valid_replacement_filter).1
    }

    fn on_disconnect(&mut self, disconnect: Disconnect<'_>) -> Ended {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.expiry_was_zero && expiry != 0 {
                return Ended::protocol(
                    reason::PROTOCOL_ERROR,
                    "Session Expiry raised from 0 at DISCONNECT (§3.14.2.2.2)",
                );
            }
            self.session.lock().expiry_interval = expiry.min(self.node.zone.max_session_expiry);
        }
        if disconnect.reason == reason::SUCCESS {
            Ended::Normal // MQTT-3.14.4-3: the will is discarded
        } else {
            Ended::NormalWithWill
        }
    }
}
