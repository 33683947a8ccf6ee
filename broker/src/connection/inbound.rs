//! What the connection does with each packet from its client: publish (with topic aliases,
//! the ACL, QoS 2 de-duplication and `message.publish`), acknowledgements of what it was
//! sent, subscribe and unsubscribe (with the ACL and the session hooks), ping, disconnect.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use plugin_api::abi::{self, RawEvent, RawStr};
use plugin_api::Hook;
use store::Batch;

use super::durable::Commit;
use super::handshake::forwarded;
use super::suspend::{Next, Suspended};
use super::{Connection, Ended, Transport};
use crate::client::ClientInfo;
use crate::hooks::{Hooks, Route, Verdict};
use crate::log_limit::clipped;
use crate::message::{Head, Message};
use crate::metrics::Metric;
use crate::mqtt::disconnect::{encode_pingresp, Disconnect};
use crate::mqtt::frame::{kind, FrameHeader};
use crate::mqtt::packet::Packet;
use crate::mqtt::publish::{encode_ack, Ack, Publish};
use crate::mqtt::reason;
use crate::mqtt::subscribe::{encode_sub_ack, Subscribe, SubscriptionOptions, Unsubscribe};
use crate::node::{DropReason, Node, Published};
use crate::persist;
use crate::router::{is_valid_replacement_filter, is_valid_topic, is_valid_topic_within, Filter};
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

/// What the ACL says about an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acl {
    Allowed,
    Denied,
    /// Not known yet: the `client.check_acl` chain may block, so it is asked off the network
    /// thread.
    Ask,
}

impl Acl {
    fn from_denied(denied: bool) -> Acl {
        if denied {
            Acl::Denied
        } else {
            Acl::Allowed
        }
    }
}

/// A PUBLISH that passed its checks, before the ACL and routing.
#[derive(Debug)]
pub(super) struct Accepted {
    pub(super) message: Message,
    pub(super) ack: PublishAck,
}

/// How a PUBLISH is acknowledged.
#[derive(Debug, Clone, Copy)]
pub(super) struct PublishAck {
    /// PUBACK, PUBREC, or 0 (QoS 0: none).
    kind: u8,
    packet_id: u16,
    qos: u8,
}

impl PublishAck {
    /// The PUBLISH's QoS.
    pub(super) fn qos(&self) -> u8 {
        self.qos
    }
}

/// Runs the `client.check_acl` chain for `client` on the calling thread; true if denied.
pub(super) fn acl_chain(node: &Node, client: &ClientInfo, action: u32, topic: &str, now_ms: u64) -> bool {
    node.stats.metrics.inc(Metric::ClientCheckAcl);
    node.hooks.dispatch(&acl_event(client, action, topic, now_ms)) == Verdict::Deny
}

/// The `client.check_acl` event asking about `action` on `topic`.
fn acl_event(client: &ClientInfo, action: u32, topic: &str, now_ms: u64) -> RawEvent {
    let mut event = client.event(Hook::ClientCheckAcl, now_ms);
    event.acl_action = action;
    event.topic = RawStr::new(topic);
    event
}

/// Runs the `client.check_acl` chain for `client` as its route says: here, on the blocking
/// pool, or on this task awaiting the answers of plugins that answer later; true if denied.
/// A runtime shutting down under a blocking chain denies rather than let it through.
pub(super) async fn acl_denied(
    node: &Arc<Node>,
    client: &Arc<ClientInfo>,
    action: u32,
    topic: &str,
    now_ms: u64,
) -> bool {
    match node.hooks.route(Hook::ClientCheckAcl) {
        Route::Skip => false,
        Route::Inline => acl_chain(node, client, action, topic, now_ms),
        Route::Later => {
            node.stats.metrics.inc(Metric::ClientCheckAcl);
            let event_for = || acl_event(client, action, topic, now_ms);
            node.hooks.dispatch_later(event_for, |_| false).await.0 == Verdict::Deny
        }
        Route::Blocking => {
            let (shared, client, topic) = (node.clone(), client.clone(), topic.to_owned());
            let chain = move || acl_chain(&shared, &client, action, &topic, now_ms);
            node.hooks.run_blocking(Hook::ClientCheckAcl, chain).await.unwrap_or(true)
        }
    }
}

impl<T: Transport> Connection<T> {
    /// Handles one packet from the client; a packet that waits for a hook chain that may
    /// block is left to [`Connection::resume`].
    pub(super) fn handle_packet(&mut self, header: &FrameHeader, body: &[u8]) -> Result<Next, Ended> {
        let packet = Packet::decode(header, body, self.version).map_err(|e| {
            let why = match e {
                crate::mqtt::reader::DecodeError::Malformed(why) | crate::mqtt::reader::DecodeError::Protocol(why) => {
                    why
                }
            };
            Ended::protocol(e.reason_code(), why)
        })?;
        match packet {
            Packet::Publish(publish) => return self.on_publish(publish),
            Packet::PubAck(ack) => self.on_puback(ack)?,
            Packet::PubRec(ack) => self.on_pubrec(ack)?,
            Packet::PubRel(ack) => self.on_pubrel(ack),
            Packet::PubComp(ack) => self.on_pubcomp(ack)?,
            Packet::Subscribe(subscribe) => {
                let why = "the SUBACK would exceed the client's Maximum Packet Size (MQTT-3.1.2-24)";
                self.answer_fits(subscribe.filters.len(), why)?;
                return self.on_subscribe(subscribe);
            }
            Packet::Unsubscribe(unsubscribe) => {
                let why = "the UNSUBACK would exceed the client's Maximum Packet Size (MQTT-3.1.2-24)";
                self.answer_fits(unsubscribe.filters.len(), why)?;
                self.on_unsubscribe(unsubscribe)
            }
            Packet::PingReq => {
                encode_pingresp(&mut self.out);
                self.node.stats.metrics.packet_sent(kind::PINGRESP, 0);
            }
            Packet::Disconnect(disconnect) => return Err(self.on_disconnect(disconnect)),
            Packet::Connect => return Err(Ended::protocol(reason::PROTOCOL_ERROR, "a second CONNECT (MQTT-3.1.0-2)")),
            Packet::Auth(_) => {
                return Err(Ended::protocol(reason::PROTOCOL_ERROR, "AUTH without an authentication method"))
            }
        }
        Ok(Next::Done)
    }

    /// Whether the SUBACK or UNSUBACK for `filters` filters (a reason code each, no Reason
    /// String) fits the client's Maximum Packet Size: MQTT-3.1.2-24 forbids sending it bigger,
    /// and a client left without its answer would wait for good, so the connection is closed
    /// instead (MQTT 5: DISCONNECT 0x95, 4 bytes, which fits any limit a client can give).
    fn answer_fits(&self, filters: usize, why: &'static str) -> Result<(), Ended> {
        let body = 2 + usize::from(self.version == crate::mqtt::Version::V5) + filters;
        let size = 1 + crate::mqtt::frame::varint_len(body) + body;
        if size <= self.client_max_packet_size {
            return Ok(());
        }
        Err(Ended::protocol(reason::PACKET_TOO_LARGE, why))
    }

    /// A reason string for an MQTT 5 acknowledgement with `code`, when it is a failure and
    /// the client wants problem information.
    fn reason_string(&self, code: u8, base_len: usize) -> Option<&'static str> {
        if code < 0x80 || !self.problem_information {
            return None;
        }
        reason::string_within(code, base_len, self.client_max_packet_size)
    }

    /// Sends an acknowledgement, behind those waiting for the store (`durable`).
    fn ack(&mut self, packet_kind: u8, packet_id: u16, code: u8) {
        self.ack_after(packet_kind, packet_id, code, None, None);
    }

    /// Sends an acknowledgement once `batch` is committed (and behind those waiting already).
    fn ack_after(
        &mut self,
        packet_kind: u8,
        packet_id: u16,
        code: u8,
        batch: Option<Batch>,
        refusal: Option<(u8, u16)>,
    ) {
        let start = self.out.len();
        self.encode_ack(packet_kind, packet_id, code);
        self.hold_from(start, batch, refusal, None);
    }

    fn encode_ack(&mut self, packet_kind: u8, packet_id: u16, code: u8) {
        // Fixed header, packet id, reason code, property length.
        let reason_string = self.reason_string(code, 6);
        encode_ack(&mut self.out, self.version, packet_kind, packet_id, code, reason_string);
        self.node.stats.metrics.packet_sent(packet_kind, code);
    }

    /// The batch a PUBLISH starts with: for a persistent session's QoS 2 message, its packet
    /// id awaiting release, written with the message's copies so that a PUBLISH resent after a
    /// restart is recognised.
    pub(super) fn publish_batch(&mut self, ack: &PublishAck) -> Batch {
        let mut batch = self.write_batch();
        if ack.qos == 2 && self.node.persistence.is_some() {
            if let Some(durable) = self.session.lock().durable.as_deref() {
                let _ = batch.put(persist::BUCKET, &durable.keys.awaiting_rel(ack.packet_id), b"");
            }
        }
        batch
    }

    /// Applies a PUBLISH's MQTT 5 topic alias (§3.3.2.3.4): checks it, and records the
    /// alias a PUBLISH with a topic sets. [`topic_of`] then reads the topic.
    fn apply_alias(&mut self, publish: &Publish<'_>) -> Result<(), Ended> {
        let Some(alias) = publish.properties.topic_alias else {
            if publish.topic.is_empty() {
                return Err(Ended::protocol(reason::PROTOCOL_ERROR, "an empty topic without a topic alias"));
            }
            return Ok(());
        };
        if alias == 0 || alias > self.node.zone.max_topic_alias {
            return Err(Ended::protocol(reason::TOPIC_ALIAS_INVALID, "topic alias out of range (MQTT-3.3.2-9)"));
        }
        if publish.topic.is_empty() {
            return match self.aliases_in.as_deref().and_then(|a| a.get(alias)) {
                Some(_) => Ok(()),
                None => Err(Ended::protocol(reason::PROTOCOL_ERROR, "an unknown topic alias")),
            };
        }
        if !self.aliases_in.get_or_insert_with(Box::default).set(alias, publish.topic) {
            return Err(Ended::protocol(reason::QUOTA_EXCEEDED, "topic aliases over 64 KiB"));
        }
        Ok(())
    }

    fn on_publish(&mut self, publish: Publish<'_>) -> Result<Next, Ended> {
        let Some(accepted) = self.accept_publish(publish)? else {
            return Ok(Next::Done);
        };
        let acl = self.acl_check(abi::ACL_PUBLISH, accepted.message.topic());
        if self.pipelining {
            // PUBLISHes ahead of it wait for their chains: it is finished after them, in order.
            return Ok(Next::Wait(Box::new(Suspended::Publish { accepted, acl })));
        }
        match acl {
            Acl::Denied => self.publish_denied(accepted),
            Acl::Allowed if !self.node.hooks.route(Hook::MessagePublish).waits() => {
                let mut batch = self.publish_batch(&accepted.ack);
                let outcome = self.publish_message(accepted.message, &mut batch);
                self.publish_acked(accepted.ack, outcome, batch);
            }
            _ => return Ok(Next::Wait(Box::new(Suspended::Publish { accepted, acl }))),
        }
        Ok(Next::Done)
    }

    /// Checks a PUBLISH and makes its message; `None` when it is a resent QoS 2 message,
    /// acknowledged again and not routed twice.
    fn accept_publish(&mut self, publish: Publish<'_>) -> Result<Option<Accepted>, Ended> {
        let node = self.node.clone();
        self.apply_alias(&publish)?;
        let topic = topic_of(&publish, self.aliases_in.as_deref());
        if !is_valid_topic_within(topic, node.zone.max_topic_levels) {
            return Err(Ended::protocol(
                reason::TOPIC_NAME_INVALID,
                "a topic name with wildcards (MQTT-3.3.2-2) or more levels than mqtt.max_topic_levels",
            ));
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
                return Ok(None);
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
        let head = Head {
            qos: publish.qos,
            retain: publish.retain,
            expires_at: Message::expiry_from(publish.properties.message_expiry_interval, self.now),
            publisher: self.session.id,
            timestamp_ms: self.now_ms,
            origin: None,
        };
        let forwarded = if v5 { forwarded(&publish.properties) } else { Bytes::new() };
        let message = Message::new(head, topic, publish.payload, &forwarded);
        let ack = PublishAck { kind: ack_kind, packet_id: publish.packet_id, qos: publish.qos };
        Ok(Some(Accepted { message, ack }))
    }

    /// A PUBLISH the ACL denied: dropped, and acknowledged.
    pub(super) fn publish_denied(&mut self, accepted: Accepted) {
        let Accepted { message, ack } = accepted;
        let (client_id, topic) = (clipped(&self.client.client_id), clipped(message.topic()));
        tracing::debug!(?client_id, ?topic, "publish denied by ACL");
        self.node.dropped(&self.client.client_id, &message, DropReason::Denied);
        let v5 = self.version.is_v5();
        if ack.kind != 0 {
            // MQTT 5 says why; MQTT 3.1.1 has no way to, so the message is acknowledged.
            self.ack(ack.kind, ack.packet_id, if v5 { reason::NOT_AUTHORIZED } else { reason::SUCCESS });
        }
        if v5 && ack.qos == 2 {
            self.session.lock().awaiting_rel.retain(|&id| id != ack.packet_id);
        }
    }

    /// Publishes a client's message with overload protection: the message is queued even
    /// into a full session queue (so it can be acknowledged), and the queues it filled make
    /// the connection's next PUBLISH wait until they drain.
    pub(super) fn publish_message(&mut self, message: Message, durable: &mut Batch) -> Published {
        let mut full = Vec::new();
        let node = self.node.clone();
        let outcome = node.publish_from(message, &self.client, self.can_wait().then_some(&mut full), Some(durable));
        if self.can_wait() {
            self.wait_for(full);
        }
        outcome
    }

    /// Acknowledges a PUBLISH that was published, once `durable` (its copies for persistent
    /// sessions) is committed.
    /// In a cluster, a QoS 1/2 message's acknowledgement also waits until NATS stored it.
    pub(super) fn publish_acked(&mut self, ack: PublishAck, outcome: Published, durable: Batch) {
        if ack.kind != 0 {
            let (code, stored) = match outcome {
                Published::Routed(0) => (reason::NO_MATCHING_SUBSCRIBERS, None),
                Published::Forwarded { stored, .. } => (reason::SUCCESS, stored),
                _ => (reason::SUCCESS, None),
            };
            let start = self.out.len();
            self.encode_ack(ack.kind, ack.packet_id, code);
            self.hold_from(start, Some(durable), Some((ack.kind, ack.packet_id)), stored);
        } else {
            self.write_later(durable);
        }
    }

    /// Takes a settled message of a persistent session out of the store (in the background:
    /// should the delete be lost, the message is sent again, which QoS 1 allows and QoS 2's
    /// packet id de-duplicates); with `released`, its PUBREC mark too (a QoS 2 message settled
    /// by PUBCOMP: no other has one).
    pub(super) fn forget_delivered(&mut self, seq: u64, released: bool) {
        if seq == 0 || self.node.persistence.is_none() {
            return;
        }
        let mut batch = self.write_batch();
        if let Some(durable) = self.session.lock().durable.as_deref() {
            let _ = batch.delete(persist::BUCKET, &durable.keys.entry(seq));
            if released {
                let _ = batch.delete(persist::BUCKET, &durable.keys.released(seq));
            }
        }
        self.write_later(batch);
    }

    /// What `client.check_acl` (or the connection's ACL cache) says about `action` on `topic`.
    /// A superuser is never asked about. A chain that may block is not run here:
    /// [`Acl::Ask`] says it must be asked off the network thread
    /// ([`Connection::acl_ask_blocking`]).
    pub(super) fn acl_check(&mut self, action: u32, topic: &str) -> Acl {
        let hooks: &Hooks = &self.node.hooks;
        let route = hooks.route(Hook::ClientCheckAcl);
        if self.superuser || route == Route::Skip {
            return Acl::Allowed;
        }
        let ask = || Acl::from_denied(acl_chain(&self.node, &self.client, action, topic, self.now_ms));
        let Some(cache) = &mut self.acl_cache else {
            return if route.waits() { Acl::Ask } else { ask() };
        };
        let generation = hooks.acl_generation();
        if let Some(denied) = cache.get(generation, action, topic, self.now) {
            self.node.stats.metrics.inc(Metric::ClientAclCacheHit);
            return Acl::from_denied(denied);
        }
        if route.waits() {
            return Acl::Ask;
        }
        let answer = ask();
        cache.put(generation, action, topic, answer == Acl::Denied, self.now);
        answer
    }

    /// [`Connection::acl_check`], running even a chain that may block here: for a packet
    /// that was not suspended because the chain became blocking while it was handled (a
    /// plugin started at that moment).
    fn acl_denied_here(&mut self, action: u32, topic: &str) -> bool {
        match self.acl_check(action, topic) {
            Acl::Ask => acl_chain(&self.node, &self.client, action, topic, self.now_ms),
            acl => acl == Acl::Denied,
        }
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
            Acked::Settled(delivery) => {
                self.forget_delivered(delivery.seq, delivery.qos == 2);
                self.fire_acked(&delivery.message, packet_id)
            }
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
        let (outcome, released) = {
            let mut state = self.session.lock();
            let seq = state.inflight.seq_of(ack.packet_id);
            let outcome = state.inflight.pubrec(ack.packet_id, ack.reason);
            // A persistent session's message whose PUBREC came: PUBREL, not the message, is
            // what is resent from now on, even after a restart; the PUBREL waits for that.
            let released = match (&outcome, seq, state.durable.as_deref()) {
                (RecOutcome::Release, Some(seq), Some(durable)) if seq != 0 => {
                    let mut batch = Batch::new();
                    let _ = batch.put(persist::BUCKET, &durable.keys.released(seq), b"");
                    Some(batch)
                }
                (RecOutcome::Refused, Some(seq), _) => {
                    drop(state);
                    self.forget_delivered(seq, false);
                    None
                }
                _ => None,
            };
            (outcome, released)
        };
        match outcome {
            RecOutcome::Release => self.ack_after(kind::PUBREL, ack.packet_id, reason::SUCCESS, released, None),
            RecOutcome::Unknown => {
                self.node.stats.metrics.inc(Metric::PacketsPubrecMissed);
                self.ack(kind::PUBREL, ack.packet_id, reason::PACKET_IDENTIFIER_NOT_FOUND)
            }
            // MQTT-4.8.2-6: a share group's message refused by its member is not sent to another.
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
        let mut batch = Batch::new();
        let known = {
            let mut state = self.session.lock();
            let before = state.awaiting_rel.len();
            state.awaiting_rel.retain(|&id| id != ack.packet_id);
            if let Some(durable) = state.durable.as_deref().filter(|_| self.node.persistence.is_some()) {
                // The PUBCOMP frees the packet id for the client: it waits until a restart
                // cannot bring the id back.
                let _ = batch.delete(persist::BUCKET, &durable.keys.awaiting_rel(ack.packet_id));
            }
            state.awaiting_rel.len() != before
        };
        if !known {
            self.node.stats.metrics.inc(Metric::PacketsPubrelMissed);
        }
        let code = if known { reason::SUCCESS } else { reason::PACKET_IDENTIFIER_NOT_FOUND };
        self.ack_after(kind::PUBCOMP, ack.packet_id, code, Some(batch), None);
    }

    fn on_subscribe(&mut self, subscribe: Subscribe<'_>) -> Result<Next, Ended> {
        self.node.stats.metrics.inc(Metric::ClientSubscribe);
        let (packet_id, id) = (subscribe.packet_id, subscribe.properties.subscription_identifier);
        // In a cluster sharing plugin state, `session.subscribed` (the retainer) waits until
        // this node has what the other nodes stored (`Connection::resume`).
        let catch_up = self.node.cluster.as_ref().is_some_and(|c| c.shares_state())
            && self.node.hooks.wants(Hook::SessionSubscribed);
        if catch_up || (!self.superuser && self.node.hooks.route(Hook::ClientCheckAcl).waits()) {
            let filters = subscribe.filters.iter().map(|&(filter, options)| (filter.into(), options)).collect();
            return Ok(Next::Wait(Box::new(Suspended::Subscribe { packet_id, id, filters })));
        }
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::with_capacity(subscribe.filters.len());
        for &(filter, options) in &subscribe.filters {
            let code = match self.subscribe_filter(filter, options)? {
                Err(code) => code,
                Ok(filter) => {
                    let denied = self.acl_denied_here(abi::ACL_SUBSCRIBE, &filter);
                    self.grant(&filter, options, id, denied, &mut granted)
                }
            };
            codes.push(code);
        }
        self.send_suback(packet_id, &codes, granted, false);
        Ok(Next::Done)
    }

    /// One filter of a SUBSCRIBE up to its ACL check: `client.subscribe`, which may rewrite
    /// it (EMQX's order: the ACL and the subscription then see the rewritten filter, as with
    /// `emqx_mod_rewrite`), then the checks of its form. `Ok(Err(code))` refuses it.
    pub(super) fn subscribe_filter<'f>(
        &self,
        filter: &'f str,
        options: SubscriptionOptions,
    ) -> Result<Result<Cow<'f, str>, u8>, Ended> {
        let zone = &self.node.zone;
        let filter = match self.client_subscribe_hook(Hook::ClientSubscribe, filter, options) {
            Some(rewritten) => Cow::Owned(rewritten),
            None => Cow::Borrowed(filter),
        };
        let code = match Filter::parse_within(&filter, zone.max_topic_levels) {
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
            Ok(_) if self.over_subscription_quota(&filter) => reason::QUOTA_EXCEEDED,
            Ok(_) => return Ok(Ok(filter)),
        };
        Ok(Err(code))
    }

    /// Subscribes to `filter` (its form checked by `subscribe_filter`) unless the ACL
    /// `denied` it; the SUBACK code.
    pub(super) fn grant(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
        denied: bool,
        granted: &mut Vec<(String, SubscriptionOptions, bool)>,
    ) -> u8 {
        if denied {
            let (client_id, filter) = (clipped(&self.client.client_id), clipped(filter));
            tracing::debug!(?client_id, ?filter, "subscribe denied by ACL");
            return reason::NOT_AUTHORIZED;
        }
        let Ok(parsed) = Filter::parse(filter) else {
            return reason::TOPIC_FILTER_INVALID;
        };
        let options = SubscriptionOptions { qos: options.qos.min(self.node.zone.max_qos), ..options };
        let is_new = self.node.subscribe(&self.session, filter, &parsed, Subscription { options, id });
        granted.push((filter.to_owned(), options, is_new));
        options.qos
    }

    /// In a cluster, what a SUBACK waits for: until the other nodes would send what this one
    /// now wants (NATS has the interest), and a persistent session's record is shared, for
    /// another node to revive it from should this one die. `None` when nothing is to wait for.
    pub(super) fn in_cluster(&self, granted: &[(String, SubscriptionOptions, bool)]) -> Option<Commit> {
        let cluster = self.node.cluster.as_ref().filter(|_| !granted.is_empty())?;
        let (ready, shared) = (cluster.interest_in_place(), self.node.share_record(&self.session, false));
        if ready.is_none() && shared.is_none() {
            return None;
        }
        Some(Box::pin(async move {
            if let Some(ready) = ready {
                ready.await;
            }
            if let Some(shared) = shared {
                let _ = shared.await;
            }
            Ok(())
        }))
    }

    /// Sends the SUBACK with `codes`, then fires `session.subscribed` for what was `granted`.
    /// `cluster_waited`: [`Self::in_cluster`] was awaited already.
    pub(super) fn send_suback(
        &mut self,
        packet_id: u16,
        codes: &[u8],
        granted: Vec<(String, SubscriptionOptions, bool)>,
        cluster_waited: bool,
    ) {
        let node = self.node.clone();
        let base_len = 5 + 1 + codes.len();
        let reason_string = codes.iter().find(|&&c| c >= 0x80).and_then(|&c| self.reason_string(c, base_len));
        if !cluster_waited {
            if let Some(in_cluster) = self.in_cluster(&granted) {
                self.hold_until(in_cluster);
            }
        }
        let start = self.out.len();
        encode_sub_ack(&mut self.out, self.version, kind::SUBACK, packet_id, codes, reason_string);
        // A persistent session's subscriptions are on disk before the SUBACK says they exist.
        let record = if granted.is_empty() { None } else { node.session_record_batch(&self.session) };
        self.hold_from(start, record, None, None);
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
        let start = self.out.len();
        encode_sub_ack(&mut self.out, self.version, kind::UNSUBACK, unsubscribe.packet_id, &codes, None);
        node.stats.metrics.packet_sent(kind::UNSUBACK, 0);
        let record = if removed.is_empty() { None } else { node.session_record_batch(&self.session) };
        if !removed.is_empty() {
            let _ = node.share_record(&self.session, false);
        }
        self.hold_from(start, record, None, None);
        if node.hooks.wants(Hook::SessionUnsubscribed) {
            for filter in removed {
                node.unsubscribed(&self.client, &filter, self.now_ms);
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
        hooks.dispatch_rewriting(&mut event, is_valid_replacement_filter).1.topic
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

/// The topic a PUBLISH goes to: its own, or the one its topic alias stands for (checked by
/// `apply_alias`).
fn topic_of<'a>(publish: &'a Publish<'_>, aliases: Option<&'a IncomingAliases>) -> &'a str {
    match publish.properties.topic_alias {
        Some(alias) if publish.topic.is_empty() => aliases.and_then(|a| a.get(alias)).unwrap_or_default(),
        _ => publish.topic,
    }
}
