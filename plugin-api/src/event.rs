//! The safe view of one hook event, and the plugin's answer.

use crate::abi::{self, RawBytesWriter, RawEvent, RawWriter};
use crate::info::Hook;

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// From the wire value; anything above 2 reads as 2.
    pub const fn from_u8(v: u8) -> QoS {
        match v {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }
}

/// Which action a `client.check_acl` event asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    /// The client publishes to [`Event::topic`].
    Publish,
    /// The client subscribes to the filter [`Event::topic`].
    Subscribe,
}

/// The options of a subscription, as in MQTT 5 (before MQTT 5 only the QoS is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS granted.
    pub qos: u8,
    /// The subscriber does not get its own messages.
    pub no_local: bool,
    /// Forwarded messages keep their retain flag.
    pub retain_as_published: bool,
    /// 0: send retained messages on subscribe; 1: only if the subscription is new; 2: never.
    pub retain_handling: u8,
}

impl SubscriptionOptions {
    /// From the MQTT 5 subscription options byte.
    pub const fn from_byte(byte: u8) -> SubscriptionOptions {
        SubscriptionOptions {
            qos: byte & 0x03,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling: (byte >> 4) & 0x03,
        }
    }
}

/// One hook event, borrowed from the host for the duration of `on_event`.
///
/// Fields that do not apply to [`Event::hook`] are empty or zero.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Which hook fired.
    pub hook: Hook,
    /// MQTT client id. For `message.publish` and `message.dropped` of a message the broker
    /// itself publishes (a plugin's, `$SYS`), empty.
    pub client_id: &'a str,
    /// MQTT username, empty when none.
    pub username: &'a str,
    /// Password bytes; only in `client.authenticate`.
    pub password: &'a [u8],
    /// Peer address as `ip:port`.
    pub peer: &'a str,
    /// Topic of a message or filter of a subscription.
    pub topic: &'a str,
    /// Message payload.
    pub payload: &'a [u8],
    /// QoS of the message or subscription.
    pub qos: QoS,
    /// Retain flag of a message.
    pub retain: bool,
    /// MQTT protocol level: 3, 4 (3.1.1) or 5.
    pub proto_ver: u8,
    /// Clean session / clean start.
    pub clean_start: bool,
    /// Keep-alive in seconds as the client asked.
    pub keepalive: u16,
    /// Packet identifier of a message (0 for QoS 0).
    pub packet_id: u16,
    /// CONNACK code as sent (`client.connack`: the MQTT 3.1.1 return code, or the MQTT 5
    /// reason code; 0 is success), or SUBACK code (`session.subscribed`).
    pub return_code: u32,
    /// Session expiry interval (MQTT 5).
    pub expiry_interval: u32,
    /// For `client.check_acl`: publish or subscribe.
    pub acl_action: Option<AclAction>,
    /// Why the client disconnected (`client.disconnected`: `normal`, `tcp_closed`,
    /// `keepalive_timeout`, `takeovered`, ...), or why a message was dropped
    /// (`message.dropped`: `no_subscribers`, `denied`, `queue_full`, `expired`, `too_large`).
    pub reason: &'a str,
    /// When it happened, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// For message hooks: the MQTT 5 properties the message carries to subscribers, encoded
    /// (keep them with a stored message and hand them back when delivering it).
    pub properties: &'a [u8],
    /// For message hooks: the remaining MQTT 5 Message Expiry Interval in seconds.
    pub message_expiry: Option<u32>,
    /// For `session.subscribed`: the subscription's options.
    pub subscription: SubscriptionOptions,
    /// For `session.subscribed`: the subscription did not exist before.
    pub subscription_is_new: bool,
    /// For client hooks: the local port of the listener the client connected to (EMQX's
    /// `sockport`); `None` for the broker itself or from a host that does not say.
    pub sockport: Option<u16>,
    /// Where a replacement topic goes ([`Event::replace_topic`]); `None` from a host that
    /// cannot rewrite.
    rewrite: Option<RawWriter>,
    /// Where a replacement payload goes ([`Event::replace_payload`]); `None` from a host that
    /// cannot take one.
    rewrite_payload: Option<RawBytesWriter>,
    /// Where a replacement QoS goes ([`Event::replace_qos`]); `None` from a host that cannot
    /// take one.
    rewrite_qos: Option<RawBytesWriter>,
}

impl<'a> Event<'a> {
    /// Reads a raw event. Returns `None` for a hook this crate does not know.
    ///
    /// `raw` must be a whole `RawEvent`: copy the host's with [`RawEvent::read`] first (an
    /// older host's is shorter; a reference to it would reach past its end). Fields after
    /// those its `size` covers read as absent.
    ///
    /// # Safety
    /// Every pointer in `raw` must be valid for `'a`, and every string valid UTF-8, as the
    /// host guarantees during `on_event` (it makes them from Rust strings; strings are not
    /// checked again here).
    pub unsafe fn from_raw(raw: &'a RawEvent) -> Option<Event<'a>> {
        let hook = Hook::from_raw(raw.hook)?;
        // Fields appended after the first release are read only when the host sent them.
        let has = |offset: usize, len: usize| raw.size as usize >= offset + len;
        let extended = has(std::mem::offset_of!(RawEvent, sub_new), 1);
        let has_sockport = has(std::mem::offset_of!(RawEvent, sockport), 2);
        let has_rewrite = has(std::mem::offset_of!(RawEvent, rewrite), std::mem::size_of::<RawWriter>());
        let writer_size = std::mem::size_of::<RawBytesWriter>();
        let has_payload_rewrite = has(std::mem::offset_of!(RawEvent, rewrite_payload), writer_size);
        let has_qos_rewrite = has(std::mem::offset_of!(RawEvent, rewrite_qos), writer_size);
        // SAFETY: the caller promises every field points to memory valid for 'a.
        unsafe {
            Some(Event {
                hook,
                client_id: raw.client_id.as_str_unchecked(),
                username: raw.username.as_str_unchecked(),
                password: raw.password.as_slice(),
                peer: raw.peer.as_str_unchecked(),
                topic: raw.topic.as_str_unchecked(),
                payload: raw.payload.as_slice(),
                qos: QoS::from_u8(raw.qos),
                retain: raw.retain != 0,
                proto_ver: raw.proto_ver,
                clean_start: raw.clean_start != 0,
                keepalive: raw.keepalive,
                packet_id: raw.packet_id,
                return_code: raw.return_code,
                expiry_interval: raw.expiry_interval,
                acl_action: match raw.acl_action {
                    abi::ACL_PUBLISH => Some(AclAction::Publish),
                    abi::ACL_SUBSCRIBE => Some(AclAction::Subscribe),
                    _ => None,
                },
                reason: raw.reason.as_str_unchecked(),
                timestamp_ms: raw.timestamp_ms,
                properties: if extended { raw.properties.as_slice() } else { &[] },
                message_expiry: Some(raw.message_expiry).filter(|&s| extended && s > 0),
                subscription: if extended {
                    SubscriptionOptions::from_byte(raw.sub_options)
                } else {
                    SubscriptionOptions { qos: raw.qos, ..Default::default() }
                },
                subscription_is_new: extended && raw.sub_new != 0,
                sockport: Some(raw.sockport).filter(|&port| has_sockport && port != 0),
                rewrite: has_rewrite.then_some(raw.rewrite),
                rewrite_payload: has_payload_rewrite.then_some(raw.rewrite_payload),
                rewrite_qos: has_qos_rewrite.then_some(raw.rewrite_qos),
            })
        }
    }
}

impl Event<'_> {
    /// For `message.publish`, `client.subscribe` and `client.unsubscribe`: replaces the
    /// message's topic (or the subscription's filter) with `topic`; return the answer from
    /// `on_event`. Plugins after this one see the new topic, and the broker uses it (EMQX's
    /// hook fold, as `emqx_mod_rewrite` uses it).
    ///
    /// Answers [`HookResult::Continue`], and changes nothing, on other hooks or on a host
    /// too old to rewrite. The host ignores, with a warning, a replacement that is not a
    /// valid topic name (publish) or filter (subscribe).
    pub fn replace_topic(&self, topic: &str) -> HookResult {
        let rewritable = matches!(self.hook, Hook::MessagePublish | Hook::ClientSubscribe | Hook::ClientUnsubscribe);
        match self.rewrite {
            Some(writer) if rewritable => {
                // SAFETY: the writer belongs to the host's dispatch of this very event, which is
                // still running (an `Event` lives only as long as its `on_event` call).
                unsafe { writer.write_str(topic) };
                HookResult::Replace
            }
            _ => HookResult::Continue,
        }
    }

    /// For `message.publish`: replaces the message's payload with `payload`; return the
    /// answer from `on_event` (with [`Event::replace_topic`] and [`Event::replace_qos`], any
    /// of them). Plugins after this one see the new payload, and the broker routes it (and
    /// `emqx_retainer` keeps it). EMQX's `OnMessagePublish` returning a changed message.
    ///
    /// Answers [`HookResult::Continue`], and changes nothing, on other hooks or on a host too
    /// old to take a payload.
    pub fn replace_payload(&self, payload: &[u8]) -> HookResult {
        match self.rewrite_payload {
            Some(writer) if self.hook == Hook::MessagePublish => {
                // SAFETY: as in `replace_topic`: the host's dispatch of this event still runs.
                unsafe { writer.write_bytes(payload) };
                HookResult::Replace
            }
            _ => HookResult::Continue,
        }
    }

    /// For `message.publish`: replaces the message's QoS (the QoS it is routed with;
    /// subscribers still get at most their subscription's); return the answer from
    /// `on_event`. Answers [`HookResult::Continue`], and changes nothing, on other hooks or
    /// on a host too old to take a QoS.
    pub fn replace_qos(&self, qos: QoS) -> HookResult {
        match self.rewrite_qos {
            Some(writer) if self.hook == Hook::MessagePublish => {
                // SAFETY: as in `replace_topic`: the host's dispatch of this event still runs.
                unsafe { writer.write_bytes(&[qos as u8]) };
                HookResult::Replace
            }
            _ => HookResult::Continue,
        }
    }

    /// For `session.subscribed`: whether the subscriber wants the retained messages that
    /// match its filter now, as its Retain Handling option says. A shared subscription
    /// (`$share/...`, `$queue/...`) never gets retained messages.
    pub fn wants_retained(&self) -> bool {
        if self.topic.starts_with("$share/") || self.topic.starts_with("$queue/") {
            return false;
        }
        match self.subscription.retain_handling {
            0 => true,
            1 => self.subscription_is_new,
            _ => false,
        }
    }
}

/// A plugin's answer to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookResult {
    /// No opinion (defer to the next plugin), or keep the message.
    #[default]
    Continue,
    /// For `client.authenticate` / `client.check_acl`: allow, and ask no further plugin.
    Allow,
    /// For `client.authenticate` / `client.check_acl`: deny, and ask no further plugin.
    Deny,
    /// For `message.publish`: drop the message. The publisher still gets its
    /// acknowledgement; subscribers get nothing.
    Drop,
    /// For `client.authenticate`: allow, ask no further plugin, and make the client a
    /// superuser, whose publishes and subscriptions are never checked against the ACL
    /// (EMQX's `is_superuser`).
    Superuser,
    /// For `message.publish`, `client.subscribe` and `client.unsubscribe`: the topic was
    /// replaced. Only [`Event::replace_topic`] makes it (it writes the new topic first).
    Replace,
}

impl HookResult {
    /// The raw ABI value.
    pub const fn to_raw(self) -> u32 {
        match self {
            HookResult::Continue => abi::HOOK_CONTINUE,
            HookResult::Allow => abi::HOOK_ALLOW,
            HookResult::Deny => abi::HOOK_DENY,
            HookResult::Drop => abi::HOOK_DROP,
            HookResult::Superuser => abi::HOOK_SUPERUSER,
            HookResult::Replace => abi::HOOK_REPLACE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{RawBytes, RawStr};

    fn raw(size: usize) -> RawEvent {
        RawEvent {
            size: size as u32,
            hook: Hook::ClientConnected as u32,
            client_id: RawStr::new("c1"),
            username: RawStr::EMPTY,
            password: RawBytes::EMPTY,
            peer: RawStr::new("127.0.0.1:5000"),
            topic: RawStr::EMPTY,
            payload: RawBytes::EMPTY,
            qos: 0,
            retain: 0,
            proto_ver: 5,
            clean_start: 1,
            keepalive: 60,
            packet_id: 0,
            return_code: 0,
            expiry_interval: 0,
            acl_action: 0,
            reason: RawStr::EMPTY,
            timestamp_ms: 1,
            properties: RawBytes::EMPTY,
            message_expiry: 0,
            sub_options: 0,
            sub_new: 1,
            sockport: 1883,
            rewrite: RawWriter::DISCARD,
            rewrite_payload: RawBytesWriter::DISCARD,
            rewrite_qos: RawBytesWriter::DISCARD,
            ticket: std::ptr::null_mut(),
            answer: None,
        }
    }

    #[test]
    fn replace_topic_writes_where_the_host_said_and_only_on_rewritable_hooks() {
        let mut written = String::new();
        let mut publish = raw(std::mem::size_of::<RawEvent>());
        publish.hook = Hook::MessagePublish as u32;
        publish.rewrite = RawWriter::for_string(&mut written);
        // SAFETY: the strings are static and `written` outlives the event.
        let event = unsafe { Event::from_raw(&publish) }.unwrap();
        assert_eq!(event.replace_topic("z/y/1"), HookResult::Replace);
        assert_eq!(written, "z/y/1");

        let mut connected = publish;
        connected.hook = Hook::ClientConnected as u32;
        // SAFETY: as above.
        let event = unsafe { Event::from_raw(&connected) }.unwrap();
        assert_eq!(event.replace_topic("nope"), HookResult::Continue, "no topic to replace");

        // A host built before `rewrite` was appended cannot take a replacement.
        let older = RawEvent { size: std::mem::offset_of!(RawEvent, rewrite) as u32, ..publish };
        // SAFETY: as above.
        let event = unsafe { Event::from_raw(&older) }.unwrap();
        assert_eq!(event.replace_topic("nope"), HookResult::Continue);
        assert_eq!(written, "z/y/1", "nothing more written");
    }

    #[test]
    fn replace_payload_and_qos_write_where_the_host_said_on_message_publish_only() {
        let (mut payload, mut qos) = (None, None);
        let mut publish = raw(std::mem::size_of::<RawEvent>());
        publish.hook = Hook::MessagePublish as u32;
        publish.rewrite_payload = RawBytesWriter::for_option(&mut payload);
        publish.rewrite_qos = RawBytesWriter::for_option(&mut qos);
        // SAFETY: the strings are static; `payload` and `qos` outlive the event.
        let event = unsafe { Event::from_raw(&publish) }.unwrap();
        assert_eq!(event.replace_payload(b""), HookResult::Replace);
        assert_eq!(payload.as_deref(), Some(&b""[..]), "written empty, not absent");
        assert_eq!(event.replace_qos(QoS::ExactlyOnce), HookResult::Replace);
        assert_eq!(qos.as_deref(), Some(&[2u8][..]));

        let mut delivered = publish;
        delivered.hook = Hook::MessageDelivered as u32;
        // SAFETY: as above.
        let event = unsafe { Event::from_raw(&delivered) }.unwrap();
        assert_eq!(event.replace_payload(b"nope"), HookResult::Continue, "only message.publish");

        // A host built before the payload and QoS writers were appended cannot take them.
        let older = RawEvent { size: std::mem::offset_of!(RawEvent, rewrite_payload) as u32, ..publish };
        // SAFETY: as above.
        let event = unsafe { Event::from_raw(&older) }.unwrap();
        assert_eq!(event.replace_payload(b"nope"), HookResult::Continue);
        assert_eq!(event.replace_qos(QoS::AtMostOnce), HookResult::Continue);
        assert_eq!((payload.as_deref(), qos.as_deref()), (Some(&b""[..]), Some(&[2u8][..])), "nothing more written");
    }

    #[test]
    fn appended_fields_are_read_only_when_the_host_sent_them() {
        let full = raw(std::mem::size_of::<RawEvent>());
        // SAFETY: the strings are static.
        let event = unsafe { Event::from_raw(&full) }.unwrap();
        assert_eq!((event.sockport, event.subscription_is_new), (Some(1883), true));

        // A host built before `sockport` was appended: its events end before the field.
        let older = raw(std::mem::offset_of!(RawEvent, sockport));
        // SAFETY: as above.
        let event = unsafe { Event::from_raw(&older) }.unwrap();
        assert_eq!((event.sockport, event.subscription_is_new), (None, true));

        // A host of the first release: none of the appended fields.
        let first = raw(std::mem::offset_of!(RawEvent, properties));
        // SAFETY: as above.
        let event = unsafe { Event::from_raw(&first) }.unwrap();
        assert_eq!((event.sockport, event.subscription_is_new, event.properties), (None, false, &[][..]));
    }
}
