//! What the host does with each frame that passes a connection, in either direction: fire the
//! hooks, and say whether the frame goes on unchanged, changed, or not at all.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use plugin_api::abi::{self, RawBytes, RawEvent, RawStr};
use plugin_api::Hook;

use super::acl_cache::AclCache;
use super::{Ended, Relay};
use crate::hooks::{Hooks, Verdict};
use crate::mqtt::frame::{kind, parse_header, FrameHeader};
use crate::mqtt::packet;
use crate::sessions::{HostAck, Session};

/// What to do with one frame.
#[derive(Debug)]
pub(super) enum Action {
    /// Pass it on unchanged.
    Forward,
    /// Pass it on with the retain flag cleared (a PUBLISH).
    ForwardWithoutRetain,
    /// Pass these bytes on instead.
    Replace(Vec<u8>),
    /// Do not pass it on (the host answered it, or it is dropped).
    Skip,
}

/// One frame at `start..start + len` of a buffer, and what to do with it.
pub(super) type Planned = (usize, usize, Action);

/// Splits the complete frames at the start of `buf`, asking `inspect` what to do with each;
/// stops after a DISCONNECT.
pub(super) fn plan(
    buf: &[u8],
    max: usize,
    mut inspect: impl FnMut(&FrameHeader, &[u8]) -> Result<Action, Ended>,
) -> Result<Vec<Planned>, Ended> {
    let mut actions = Vec::new();
    let mut pos = 0;
    while let Some(header) = parse_header(&buf[pos..], max).map_err(Ended::from)? {
        if buf.len() - pos < header.frame_len() {
            break;
        }
        let body = &buf[pos + header.header_len..pos + header.frame_len()];
        let action = inspect(&header, body)?;
        actions.push((pos, header.frame_len(), action));
        pos += header.frame_len();
        if header.kind() == kind::DISCONNECT {
            break;
        }
    }
    Ok(actions)
}

/// Bytes of `buf` the planned frames cover.
pub(super) fn planned_len(actions: &[Planned]) -> usize {
    actions.last().map_or(0, |(start, len, _)| start + len)
}

/// Appends the planned frames of `src` to `out`, each as its action says.
pub(super) fn apply(src: &[u8], actions: &[Planned], out: &mut BytesMut) {
    let mut from = 0;
    for (start, len, action) in actions {
        match action {
            Action::Forward => continue,
            Action::ForwardWithoutRetain => {
                out.extend_from_slice(&src[from..*start]);
                out.extend_from_slice(&[src[*start] & !0x01]);
                from = start + 1;
            }
            Action::Replace(bytes) => {
                out.extend_from_slice(&src[from..*start]);
                out.extend_from_slice(bytes);
                from = start + len;
            }
            Action::Skip => {
                out.extend_from_slice(&src[from..*start]);
                from = start + len;
            }
        }
    }
    out.extend_from_slice(&src[from..planned_len(actions)]);
}

/// A SUBSCRIBE / UNSUBSCRIBE waiting for rumqttd's answer.
#[derive(Debug)]
struct PendingSubscriptions {
    /// Each filter with its requested QoS.
    filters: Vec<(String, u8)>,
    /// The host's code for the filters it answered itself (denied, or `$`); `None` for those
    /// forwarded to rumqttd.
    host_codes: Vec<Option<u8>>,
}

/// The host's view of one connection's frames.
pub(super) struct Inspector {
    pub(super) relay: Arc<Relay>,
    pub(super) session: Arc<Session>,
    /// SUBSCRIBEs and UNSUBSCRIBEs forwarded to rumqttd, by packet id.
    subscribes: HashMap<u16, PendingSubscriptions>,
    unsubscribes: HashMap<u16, PendingSubscriptions>,
    /// MQTT 5 topic aliases the client set.
    aliases: HashMap<u16, String>,
    /// QoS 2 messages a plugin dropped: their PUBREL is answered by the host.
    dropped_qos2: HashSet<u16>,
    acl_cache: Option<AclCache>,
    /// When the frames being inspected arrived, read once a batch ([`Inspector::start_batch`]):
    /// a clock read for every message was 5 % of the broker's time in a QoS 0 flood.
    now: Instant,
    now_ms: u64,
}

/// A `$` topic filter the host serves itself (shared subscriptions are rumqttd's).
fn is_host_filter(filter: &str) -> bool {
    filter.starts_with('$') && !filter.starts_with("$share/")
}

impl Inspector {
    pub(super) fn new(relay: Arc<Relay>, session: Arc<Session>) -> Inspector {
        let acl_cache = relay.settings.acl_cache.map(AclCache::new);
        Inspector {
            relay,
            session,
            subscribes: HashMap::new(),
            unsubscribes: HashMap::new(),
            aliases: HashMap::new(),
            dropped_qos2: HashSet::new(),
            acl_cache,
            now: Instant::now(),
            now_ms: crate::now_ms(),
        }
    }

    /// Reads the clock for the frames about to be inspected (one read, one write).
    pub(super) fn start_batch(&mut self) {
        self.now = Instant::now();
        self.now_ms = crate::now_ms();
    }

    fn v5(&self) -> bool {
        self.session.identity.proto_ver == 5
    }

    /// A frame from the client, on its way to rumqttd.
    pub(super) fn client_frame(&mut self, header: &FrameHeader, body: &[u8]) -> Result<Action, Ended> {
        let hooks = &self.relay.hooks;
        match header.kind() {
            kind::PUBLISH => self.publish(header, body),
            kind::PUBREL if !self.dropped_qos2.is_empty() => {
                let id = packet::decode_packet_id(body)?;
                if self.dropped_qos2.remove(&id) {
                    self.session.send(&packet::ack(kind::PUBCOMP, id));
                    Ok(Action::Skip)
                } else {
                    Ok(Action::Forward)
                }
            }
            kind @ (kind::PUBACK | kind::PUBREC | kind::PUBCOMP) => {
                let id = packet::decode_packet_id(body)?;
                match self.session.host_ack(kind, id) {
                    HostAck::Settled => return Ok(Action::Skip),
                    HostAck::Reply(reply) => {
                        self.session.send(&reply);
                        return Ok(Action::Skip);
                    }
                    HostAck::NotOurs => {}
                }
                if kind != kind::PUBREC && hooks.wants(Hook::MessageAcked) {
                    let mut event = self.session.event_at(Hook::MessageAcked, self.now_ms);
                    event.packet_id = id;
                    hooks.dispatch(&event);
                }
                Ok(Action::Forward)
            }
            kind::SUBSCRIBE => self.subscribe(header, body),
            kind::UNSUBSCRIBE => self.unsubscribe(header, body),
            _ => Ok(Action::Forward),
        }
    }

    fn publish(&mut self, header: &FrameHeader, body: &[u8]) -> Result<Action, Ended> {
        let hooks = &self.relay.hooks;
        self.relay.stats.message_received();
        let retained = header.flags() & 0x01 != 0;
        let forward = if retained { Action::ForwardWithoutRetain } else { Action::Forward };
        let check_acl = hooks.wants(Hook::ClientCheckAcl);
        if !check_acl && !hooks.wants(Hook::MessagePublish) && !hooks.wants(Hook::MessageDropped) {
            return Ok(forward);
        }
        let publish = packet::decode_publish(header.flags(), body, self.v5())?;
        let topic = match (publish.topic, publish.topic_alias) {
            ("", Some(alias)) => self.aliases.get(&alias).map(String::as_str).unwrap_or(""),
            (topic, Some(alias)) => {
                self.aliases.insert(alias, topic.to_owned());
                topic
            }
            (topic, None) => topic,
        };
        let mut event = self.session.event_at(Hook::MessagePublish, self.now_ms);
        event.topic = RawStr::new(topic);
        event.payload = RawBytes::new(publish.payload);
        event.qos = publish.qos;
        event.retain = publish.retain as u8;
        event.packet_id = publish.packet_id;
        let mut verdict = Verdict::Continue;
        if check_acl {
            let acl = RawEvent { hook: Hook::ClientCheckAcl as u32, acl_action: abi::ACL_PUBLISH, ..event };
            if acl_denied(&mut self.acl_cache, hooks, &acl, topic, self.now) {
                tracing::debug!(client_id = self.session.identity.client_id, topic, "publish denied by ACL");
                verdict = Verdict::Drop;
            }
        }
        if verdict == Verdict::Continue && hooks.wants(Hook::MessagePublish) {
            verdict = hooks.dispatch(&event);
        }
        if verdict != Verdict::Drop {
            return Ok(forward);
        }
        if hooks.wants(Hook::MessageDropped) {
            hooks.dispatch(&RawEvent { hook: Hook::MessageDropped as u32, ..event });
        }
        // The publisher still gets its acknowledgement.
        match publish.qos {
            0 => {}
            1 => self.session.send(&packet::ack(kind::PUBACK, publish.packet_id)),
            _ => {
                self.dropped_qos2.insert(publish.packet_id);
                self.session.send(&packet::ack(kind::PUBREC, publish.packet_id));
            }
        }
        Ok(Action::Skip)
    }

    fn subscribe(&mut self, header: &FrameHeader, body: &[u8]) -> Result<Action, Ended> {
        let (relay, session) = (&self.relay, &self.session);
        let hooks = &relay.hooks;
        let v5 = self.v5();
        let sub = packet::decode_subscribe(body, v5)?;
        let check_acl = hooks.wants(Hook::ClientCheckAcl);
        let mut host_codes = Vec::with_capacity(sub.filters.len());
        for &(filter, options) in &sub.filters {
            let qos = options & 0x03;
            let mut event = session.event(Hook::ClientSubscribe);
            event.topic = RawStr::new(filter);
            event.qos = qos;
            if hooks.wants(Hook::ClientSubscribe) {
                hooks.dispatch(&event);
            }
            let acl = RawEvent { hook: Hook::ClientCheckAcl as u32, acl_action: abi::ACL_SUBSCRIBE, ..event };
            let denied = check_acl && acl_denied(&mut self.acl_cache, hooks, &acl, filter, self.now);
            host_codes.push(if denied {
                tracing::debug!(client_id = session.identity.client_id, filter, "subscribe denied by ACL");
                Some(0x80)
            } else if is_host_filter(filter) {
                session.add_sys_subscription(filter, qos.min(2));
                Some(qos.min(2))
            } else {
                None
            });
        }
        let (pending, action) = route_filters(header, &sub, host_codes);
        let Some(action) = action else {
            // The host answers the whole SUBSCRIBE.
            let codes: Vec<u8> = pending.host_codes.iter().map(|c| c.unwrap_or(0x80)).collect();
            let props: &[u8] = if v5 { &[0] } else { &[] };
            session.send(&packet::encode_ack_with_codes(kind::SUBACK, sub.packet_id, props, &codes));
            fire_subscribed(relay, session, &pending.filters, &codes);
            return Ok(Action::Skip);
        };
        self.subscribes.insert(sub.packet_id, pending);
        Ok(action)
    }

    fn unsubscribe(&mut self, header: &FrameHeader, body: &[u8]) -> Result<Action, Ended> {
        let (relay, session) = (&self.relay, &self.session);
        let hooks = &relay.hooks;
        let v5 = self.v5();
        let unsub = packet::decode_unsubscribe(body, v5)?;
        let mut host_codes = Vec::with_capacity(unsub.filters.len());
        for &(filter, _) in &unsub.filters {
            if hooks.wants(Hook::ClientUnsubscribe) {
                let mut event = session.event(Hook::ClientUnsubscribe);
                event.topic = RawStr::new(filter);
                hooks.dispatch(&event);
            }
            host_codes.push(if is_host_filter(filter) {
                // MQTT 5: 0x00 success, 0x11 no subscription existed.
                Some(if session.remove_sys_subscription(filter) { 0x00 } else { 0x11 })
            } else {
                None
            });
        }
        let (pending, action) = route_filters(header, &unsub, host_codes);
        let Some(action) = action else {
            // The host answers the whole UNSUBSCRIBE.
            let codes: Vec<u8> = pending.host_codes.iter().map(|c| c.unwrap_or(0)).collect();
            let unsuback = if v5 {
                packet::encode_ack_with_codes(kind::UNSUBACK, unsub.packet_id, &[0], &codes)
            } else {
                packet::encode_ack_with_codes(kind::UNSUBACK, unsub.packet_id, &[], &[])
            };
            session.send(&unsuback);
            fire_unsubscribed(relay, session, &pending.filters);
            return Ok(Action::Skip);
        };
        self.unsubscribes.insert(unsub.packet_id, pending);
        Ok(action)
    }

    /// A frame from rumqttd, on its way to the client.
    pub(super) fn broker_frame(&mut self, header: &FrameHeader, body: &[u8]) -> Result<Action, Ended> {
        let v5 = self.v5();
        let (relay, session) = (&self.relay, &self.session);
        let hooks = &relay.hooks;
        match header.kind() {
            kind::PUBLISH => {
                relay.stats.message_sent();
                if hooks.wants(Hook::MessageDelivered) {
                    let publish = packet::decode_publish(header.flags(), body, v5)?;
                    let mut event = session.event_at(Hook::MessageDelivered, self.now_ms);
                    event.topic = RawStr::new(publish.topic);
                    event.payload = RawBytes::new(publish.payload);
                    event.qos = publish.qos;
                    event.retain = publish.retain as u8;
                    event.packet_id = publish.packet_id;
                    hooks.dispatch(&event);
                }
                Ok(Action::Forward)
            }
            kind::CONNACK if !session.connected.load(Ordering::Relaxed) => {
                let (_, code) = packet::decode_connack(body)?;
                if code == 0 {
                    session.connected.store(true, Ordering::SeqCst);
                    relay.registry.register(session);
                    relay.stats.client_connected();
                    if hooks.wants(Hook::ClientConnected) {
                        let mut event = session.event(Hook::ClientConnected);
                        event.return_code = code as u32;
                        hooks.dispatch(&event);
                    }
                }
                Ok(Action::Forward)
            }
            kind::SUBACK => {
                let (packet_id, properties, codes) = packet::decode_ack_with_codes(body, v5)?;
                let Some(pending) = self.subscribes.remove(&packet_id) else {
                    return Ok(Action::Forward);
                };
                let merged = merge_codes(&pending.host_codes, codes);
                fire_subscribed(relay, session, &pending.filters, &merged);
                if pending.host_codes.iter().all(Option::is_none) {
                    Ok(Action::Forward)
                } else {
                    Ok(Action::Replace(packet::encode_ack_with_codes(kind::SUBACK, packet_id, properties, &merged)))
                }
            }
            kind::UNSUBACK => {
                let (packet_id, properties, codes) = packet::decode_ack_with_codes(body, v5)?;
                let Some(pending) = self.unsubscribes.remove(&packet_id) else {
                    return Ok(Action::Forward);
                };
                fire_unsubscribed(relay, session, &pending.filters);
                if !v5 || pending.host_codes.iter().all(Option::is_none) {
                    Ok(Action::Forward)
                } else {
                    let merged = merge_codes(&pending.host_codes, codes);
                    Ok(Action::Replace(packet::encode_ack_with_codes(kind::UNSUBACK, packet_id, properties, &merged)))
                }
            }
            _ => Ok(Action::Forward),
        }
    }
}

/// Asks the `client.check_acl` chain about `event` (its action on `topic`), or the cache.
fn acl_denied(cache: &mut Option<AclCache>, hooks: &Hooks, event: &RawEvent, topic: &str, now: Instant) -> bool {
    let Some(cache) = cache else {
        return hooks.dispatch(event) == Verdict::Deny;
    };
    let generation = hooks.acl_generation();
    if let Some(denied) = cache.get(generation, event.acl_action, topic, now) {
        return denied;
    }
    let denied = hooks.dispatch(event) == Verdict::Deny;
    cache.put(generation, event.acl_action, topic, denied, now);
    denied
}

/// Splits a SUBSCRIBE or UNSUBSCRIBE between the host (the filters it has a code for) and
/// rumqttd (the rest). The action is `None` when the host answers every filter itself.
fn route_filters(
    header: &FrameHeader,
    subs: &packet::Subscriptions<'_>,
    host_codes: Vec<Option<u8>>,
) -> (PendingSubscriptions, Option<Action>) {
    let filters = subs.filters.iter().map(|&(f, options)| (f.to_owned(), options & 0x03)).collect();
    let forwarded: Vec<(&str, u8)> =
        subs.filters.iter().zip(&host_codes).filter(|(_, code)| code.is_none()).map(|(f, _)| *f).collect();
    let action = if forwarded.is_empty() {
        None
    } else if forwarded.len() == subs.filters.len() {
        Some(Action::Forward)
    } else {
        let frame =
            packet::encode_subscriptions(header.first_byte, subs.packet_id, subs.properties, forwarded.into_iter());
        Some(Action::Replace(frame))
    };
    (PendingSubscriptions { filters, host_codes }, action)
}

/// Fires `session.subscribed` for every granted filter (code below 0x80).
fn fire_subscribed(relay: &Relay, session: &Session, filters: &[(String, u8)], codes: &[u8]) {
    if !relay.hooks.wants(Hook::SessionSubscribed) {
        return;
    }
    for ((filter, _), &code) in filters.iter().zip(codes) {
        if code < 0x80 {
            let mut event = session.event(Hook::SessionSubscribed);
            event.topic = RawStr::new(filter);
            event.qos = code;
            event.return_code = code as u32;
            relay.hooks.dispatch(&event);
        }
    }
}

fn fire_unsubscribed(relay: &Relay, session: &Session, filters: &[(String, u8)]) {
    if !relay.hooks.wants(Hook::SessionUnsubscribed) {
        return;
    }
    for (filter, _) in filters {
        let mut event = session.event(Hook::SessionUnsubscribed);
        event.topic = RawStr::new(filter);
        relay.hooks.dispatch(&event);
    }
}

/// Merges rumqttd's codes (for the forwarded filters, in order) with the host's.
fn merge_codes(host_codes: &[Option<u8>], router_codes: &[u8]) -> Vec<u8> {
    let mut router_codes = router_codes.iter();
    host_codes.iter().map(|code| code.unwrap_or_else(|| router_codes.next().copied().unwrap_or(0x80))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_merge_in_filter_order() {
        assert_eq!(merge_codes(&[None, Some(0x80), None, Some(1)], &[2, 0]), vec![2, 0x80, 0, 1]);
        assert_eq!(merge_codes(&[None], &[]), vec![0x80], "a missing code reads as failure");
    }

    #[test]
    fn host_filters() {
        assert!(is_host_filter("$SYS/#"));
        assert!(!is_host_filter("$share/g/a"));
        assert!(!is_host_filter("a/$b"));
    }

    #[test]
    fn actions_apply_in_order() {
        // Four one-byte-bodied frames: forward, clear retain, replace, skip.
        let src = [0x31, 0, 0x31, 0, 0x90, 0, 0xe0, 0];
        let actions = vec![
            (0, 2, Action::Forward),
            (2, 2, Action::ForwardWithoutRetain),
            (4, 2, Action::Replace(vec![0xb0, 0])),
            (6, 2, Action::Skip),
        ];
        let mut out = BytesMut::new();
        apply(&src, &actions, &mut out);
        assert_eq!(&out[..], &[0x31, 0, 0x30, 0, 0xb0, 0]);
    }
}
