//! Connected clients as the host knows them: who they are (for hook events), an outbox for
//! what the host itself sends them (acknowledgements, SUBACKs it answers, retained and `$SYS`
//! messages), and the `$`-topic subscriptions the host serves (rumqttd refuses `$` filters).
//!
//! Only the connection's link (`relay::link`) writes to the socket: it drains the outbox
//! between frames, after what it had already inspected, so what the host queues never
//! interleaves inside a frame and follows what was already on its way (a retained message
//! comes after its SUBACK).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::Waker;

use atomic_waker::AtomicWaker;
use bytes::{BufMut, BytesMut};
use plugin_api::abi::{RawBytes, RawEvent, RawStr};
use plugin_api::Hook;

use crate::lock;
use crate::mqtt::frame::{encode_length, kind};

/// Packet ids the host uses for what it sends at QoS 1/2. rumqttd numbers its own outgoing
/// messages 1..=100, so the two never collide.
const HOST_PACKET_IDS: std::ops::RangeInclusive<u16> = 0x8000..=0xffff;

/// One connected client.
#[derive(Debug)]
pub struct Session {
    /// Who it is, from its CONNECT.
    pub identity: Identity,
    /// Set when rumqttd accepted the connection (CONNACK success).
    pub connected: AtomicBool,
    /// When the CONNECT arrived, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    outbox: Mutex<BytesMut>,
    /// The connection task that writes to the client, woken when something is queued.
    writer: AtomicWaker,
    host_inflight: Mutex<HostInflight>,
    /// `$` filters (e.g. `$SYS/#`) the host serves for this client, with their QoS.
    sys_subscriptions: Mutex<Vec<(String, u8)>>,
}

#[derive(Debug)]
struct HostInflight {
    next: u16,
    /// Packet id → QoS of messages the host sent and the client has not acknowledged.
    unacked: HashMap<u16, u8>,
}

/// What to do with an acknowledgement from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum HostAck {
    /// Not for a message the host sent: forward it to rumqttd.
    NotOurs,
    /// Ours and settled: drop it.
    Settled,
    /// Ours, a PUBREC: answer with this PUBREL.
    Reply([u8; 4]),
}

/// Who a client is, from its CONNECT (what hook events tell plugins).
#[derive(Debug, Clone)]
pub struct Identity {
    pub client_id: String,
    pub username: String,
    pub peer: String,
    pub proto_ver: u8,
    pub keepalive: u16,
    pub clean_start: bool,
    pub expiry_interval: u32,
}

impl Session {
    pub fn new(identity: Identity) -> Session {
        Session {
            identity,
            connected: AtomicBool::new(false),
            connected_at_ms: crate::now_ms(),
            outbox: Mutex::new(BytesMut::new()),
            writer: AtomicWaker::new(),
            host_inflight: Mutex::new(HostInflight { next: *HOST_PACKET_IDS.start(), unacked: HashMap::new() }),
            sys_subscriptions: Mutex::new(Vec::new()),
        }
    }

    /// A hook event about this client (timestamped now).
    pub fn event(&self, hook: Hook) -> RawEvent {
        self.event_at(hook, crate::now_ms())
    }

    /// A hook event about this client, timestamped `timestamp_ms` (milliseconds since the
    /// Unix epoch).
    pub fn event_at(&self, hook: Hook, timestamp_ms: u64) -> RawEvent {
        RawEvent {
            size: std::mem::size_of::<RawEvent>() as u32,
            hook: hook as u32,
            client_id: RawStr::new(&self.identity.client_id),
            username: RawStr::new(&self.identity.username),
            password: RawBytes::EMPTY,
            peer: RawStr::new(&self.identity.peer),
            topic: RawStr::EMPTY,
            payload: RawBytes::EMPTY,
            qos: 0,
            retain: 0,
            proto_ver: self.identity.proto_ver,
            clean_start: self.identity.clean_start as u8,
            keepalive: self.identity.keepalive,
            packet_id: 0,
            return_code: 0,
            expiry_interval: self.identity.expiry_interval,
            acl_action: 0,
            reason: RawStr::EMPTY,
            timestamp_ms,
        }
    }

    /// Queues bytes (whole frames) for the client and wakes its writer.
    pub fn send(&self, frame: &[u8]) {
        lock(&self.outbox).extend_from_slice(frame);
        self.writer.wake();
    }

    /// Takes everything queued so far.
    pub fn take_outbox(&self) -> Option<BytesMut> {
        let mut outbox = lock(&self.outbox);
        (!outbox.is_empty()).then(|| outbox.split())
    }

    /// Asks for `waker` to be woken the next time something is queued.
    pub fn register_writer(&self, waker: &Waker) {
        self.writer.register(waker);
    }

    /// Queues a PUBLISH from the host itself.
    pub fn send_publish(&self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let qos = qos.min(2);
        let packet_id = if qos > 0 { Some(self.host_packet_id(qos)) } else { None };
        let frame = encode_publish(topic, payload, qos, retain, packet_id, self.identity.proto_ver == 5);
        self.send(&frame);
    }

    fn host_packet_id(&self, qos: u8) -> u16 {
        let mut inflight = lock(&self.host_inflight);
        loop {
            let id = inflight.next;
            inflight.next = if id == *HOST_PACKET_IDS.end() { *HOST_PACKET_IDS.start() } else { id + 1 };
            if let std::collections::hash_map::Entry::Vacant(slot) = inflight.unacked.entry(id) {
                slot.insert(qos);
                return id;
            }
        }
    }

    /// Handles a PUBACK / PUBREC / PUBCOMP from the client if it settles a host message.
    pub fn host_ack(&self, packet_kind: u8, packet_id: u16) -> HostAck {
        if !HOST_PACKET_IDS.contains(&packet_id) {
            return HostAck::NotOurs;
        }
        let mut inflight = lock(&self.host_inflight);
        match (packet_kind, inflight.unacked.get(&packet_id)) {
            (kind::PUBACK, Some(1)) | (kind::PUBCOMP, Some(2)) => {
                inflight.unacked.remove(&packet_id);
                HostAck::Settled
            }
            (kind::PUBREC, Some(2)) => HostAck::Reply(crate::mqtt::packet::ack(kind::PUBREL, packet_id)),
            _ => HostAck::Settled,
        }
    }

    /// Adds (or replaces) a `$` subscription the host serves.
    pub fn add_sys_subscription(&self, filter: &str, qos: u8) {
        let mut subs = lock(&self.sys_subscriptions);
        subs.retain(|(f, _)| f != filter);
        subs.push((filter.to_owned(), qos));
    }

    /// Removes a `$` subscription; whether it existed.
    pub fn remove_sys_subscription(&self, filter: &str) -> bool {
        let mut subs = lock(&self.sys_subscriptions);
        let before = subs.len();
        subs.retain(|(f, _)| f != filter);
        subs.len() != before
    }

    /// The highest QoS among this client's `$` subscriptions matching `topic`.
    pub fn sys_match(&self, topic: &str) -> Option<u8> {
        lock(&self.sys_subscriptions)
            .iter()
            .filter(|(filter, _)| plugin_api::topic::matches(filter, topic))
            .map(|(_, qos)| *qos)
            .max()
    }
}

/// Encodes a PUBLISH frame.
pub fn encode_publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    packet_id: Option<u16>,
    v5: bool,
) -> BytesMut {
    let body_len = 2 + topic.len() + packet_id.map_or(0, |_| 2) + usize::from(v5) + payload.len();
    let mut frame = Vec::with_capacity(body_len + 5);
    frame.push(kind::PUBLISH << 4 | qos << 1 | u8::from(retain));
    encode_length(body_len, &mut frame);
    let mut frame = BytesMut::from(&frame[..]);
    frame.put_u16(topic.len() as u16);
    frame.put_slice(topic.as_bytes());
    if let Some(id) = packet_id {
        frame.put_u16(id);
    }
    if v5 {
        frame.put_u8(0); // no properties
    }
    frame.put_slice(payload);
    frame
}

/// Every connected client by client id.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Registry {
    /// Records a newly connected client (a takeover replaces the old session).
    pub fn register(&self, session: &Arc<Session>) {
        lock(&self.sessions).insert(session.identity.client_id.clone(), session.clone());
    }

    /// Forgets a client, unless a newer connection took its id over.
    pub fn unregister(&self, session: &Arc<Session>) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&session.identity.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(&session.identity.client_id);
        }
    }

    /// Every connected client, ordered by client id.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<_> = lock(&self.sessions).values().cloned().collect();
        all.sort_by(|a, b| a.identity.client_id.cmp(&b.identity.client_id));
        all
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(client_id).cloned()
    }

    /// The sessions subscribed to `$`-topic `topic`, with their subscription QoS.
    pub fn sys_subscribers(&self, topic: &str) -> Vec<(Arc<Session>, u8)> {
        lock(&self.sessions).values().filter_map(|s| s.sys_match(topic).map(|qos| (s.clone(), qos))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::frame::parse_header;
    use crate::mqtt::packet::decode_publish;

    #[test]
    fn encoded_publish_decodes() {
        for v5 in [false, true] {
            let frame = encode_publish("a/b", b"xyz", 1, true, Some(0x8001), v5);
            let header = parse_header(&frame, usize::MAX).unwrap().unwrap();
            assert_eq!(header.frame_len(), frame.len());
            let p = decode_publish(header.flags(), &frame[header.header_len..], v5).unwrap();
            assert_eq!((p.topic, p.qos, p.retain, p.packet_id, p.payload), ("a/b", 1, true, 0x8001, &b"xyz"[..]));
        }
    }

    #[test]
    fn host_packet_ids_are_settled_by_the_right_ack() {
        let s = Session::new(Identity {
            client_id: "c".into(),
            username: String::new(),
            peer: String::new(),
            proto_ver: 4,
            keepalive: 0,
            clean_start: true,
            expiry_interval: 0,
        });
        assert_eq!(s.host_ack(kind::PUBACK, 5), HostAck::NotOurs);
        let id = s.host_packet_id(2);
        assert!(HOST_PACKET_IDS.contains(&id));
        assert_eq!(s.host_ack(kind::PUBREC, id), HostAck::Reply(crate::mqtt::packet::ack(kind::PUBREL, id)));
        assert_eq!(s.host_ack(kind::PUBCOMP, id), HostAck::Settled);
        assert_ne!(s.host_packet_id(1), id, "ids advance");
    }
}
