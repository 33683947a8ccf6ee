//! PUBLISH both ways, and its acknowledgements PUBACK, PUBREC, PUBREL and PUBCOMP.

use bytes::BufMut;

use super::frame::{frame_len, kind, put_header, put_varint, varint_len};
use super::properties::{self, id, Allowed, Properties, PropertyWriter};
use super::reader::{DecodeError, Reader, Result};
use super::Version;

/// A PUBLISH from a client, borrowing from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish<'a> {
    pub(crate) dup: bool,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// Empty when an MQTT 5 client uses a topic alias it set before.
    pub(crate) topic: &'a str,
    /// 0 for QoS 0.
    pub(crate) packet_id: u16,
    pub(crate) properties: Properties<'a>,
    pub(crate) payload: &'a [u8],
}

impl<'a> Publish<'a> {
    /// Decodes a PUBLISH's body; `flags` is the low nibble of its first byte.
    pub(crate) fn decode(flags: u8, body: &'a [u8], version: Version) -> Result<Publish<'a>> {
        let qos = (flags >> 1) & 0x03;
        if qos == 3 {
            return Err(DecodeError::Malformed("QoS 3 (MQTT-3.3.1-4)"));
        }
        let dup = flags & 0x08 != 0;
        if dup && qos == 0 {
            return Err(DecodeError::Malformed("DUP set on a QoS 0 message (MQTT-3.3.1-2)"));
        }
        let mut r = Reader::new(body);
        let topic = r.string()?;
        let packet_id = if qos > 0 { packet_id(r.u16()?)? } else { 0 };
        let properties =
            if version.is_v5() { Properties::decode(&mut r, Allowed::PUBLISH)? } else { Properties::default() };
        Ok(Publish { dup, qos, retain: flags & 0x01 != 0, topic, packet_id, properties, payload: r.rest() })
    }
}

/// A packet identifier must not be 0 (MQTT-2.3.1-1).
pub(crate) fn packet_id(id: u16) -> Result<u16> {
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0 (MQTT-2.3.1-1)"));
    }
    Ok(id)
}

/// A PUBLISH to a client.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OutgoingPublish<'a> {
    pub(crate) dup: bool,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// Empty when an alias the client already knows stands for it.
    pub(crate) topic: &'a str,
    pub(crate) packet_id: u16,
    pub(crate) payload: &'a [u8],
    /// MQTT 5: the remaining Message Expiry Interval.
    pub(crate) message_expiry: Option<u32>,
    /// MQTT 5: the Topic Alias.
    pub(crate) topic_alias: Option<u16>,
    /// MQTT 5: the Subscription Identifiers of the subscriptions it matched.
    pub(crate) subscription_ids: &'a [u32],
    /// MQTT 5: the publisher's forwarded properties, already encoded
    /// (see [`Properties::write_forwarded`]).
    pub(crate) forwarded: &'a [u8],
}

impl OutgoingPublish<'_> {
    fn properties_len(&self) -> usize {
        self.message_expiry.map_or(0, |_| 5)
            + self.topic_alias.map_or(0, |_| 3)
            + self.subscription_ids.iter().map(|&v| properties::subscription_identifier_len(v)).sum::<usize>()
            + self.forwarded.len()
    }

    fn body_len(&self, version: Version, properties_len: usize) -> usize {
        let props = if version.is_v5() { properties::block_len(properties_len) } else { 0 };
        2 + self.topic.len() + if self.qos > 0 { 2 } else { 0 } + props + self.payload.len()
    }

    /// Bytes the whole frame takes.
    pub(crate) fn frame_len(&self, version: Version) -> usize {
        frame_len(self.body_len(version, self.properties_len()))
    }

    /// Appends the frame.
    pub(crate) fn encode(&self, out: &mut impl BufMut, version: Version) {
        let properties_len = self.properties_len();
        let first = kind::PUBLISH << 4 | (self.dup as u8) << 3 | self.qos << 1 | self.retain as u8;
        // The caller drops a message whose topic does not fit (never a truncated length).
        debug_assert!(self.topic.len() <= usize::from(u16::MAX), "a topic over 65,535 bytes");
        put_header(out, first, self.body_len(version, properties_len));
        out.put_u16(self.topic.len() as u16);
        out.put_slice(self.topic.as_bytes());
        if self.qos > 0 {
            out.put_u16(self.packet_id);
        }
        if version.is_v5() {
            put_varint(out, properties_len);
            let mut w = PropertyWriter { out: &mut *out };
            if let Some(v) = self.message_expiry {
                w.u32(id::MESSAGE_EXPIRY_INTERVAL, v);
            }
            if let Some(v) = self.topic_alias {
                w.u16(id::TOPIC_ALIAS, v);
            }
            for &v in self.subscription_ids {
                w.varint(id::SUBSCRIPTION_IDENTIFIER, v);
            }
            out.put_slice(self.forwarded);
        }
        out.put_slice(self.payload);
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack<'a> {
    pub(crate) packet_id: u16,
    /// MQTT 5 reason code (0 when absent, and always before MQTT 5).
    pub(crate) reason: u8,
    pub(crate) properties: Properties<'a>,
}

impl<'a> Ack<'a> {
    pub(crate) fn decode(body: &'a [u8], version: Version) -> Result<Ack<'a>> {
        let mut r = Reader::new(body);
        let packet_id = packet_id(r.u16()?)?;
        let mut ack = Ack { packet_id, reason: 0, properties: Properties::default() };
        if version.is_v5() {
            if !r.is_empty() {
                ack.reason = r.u8()?;
            }
            if !r.is_empty() {
                ack.properties = Properties::decode(&mut r, Allowed::ACK)?;
            }
        }
        r.finish()?;
        Ok(ack)
    }
}

/// Appends a PUBACK, PUBREC, PUBREL or PUBCOMP (`packet_kind`). MQTT 5 gets the reason code
/// and reason string, both left out when it is a plain success (§3.4.2.1), and the property
/// length left out when there is no reason string (§3.4.2.2.1: a Remaining Length under 4
/// means no properties), the shortest form, as mosquitto writes it.
pub(crate) fn encode_ack(
    out: &mut impl BufMut,
    version: Version,
    packet_kind: u8,
    packet_id: u16,
    reason: u8,
    reason_string: Option<&str>,
) {
    let flags = if packet_kind == kind::PUBREL { 0b0010 } else { 0 };
    let first = packet_kind << 4 | flags;
    if !version.is_v5() || (reason == 0 && reason_string.is_none()) {
        put_header(out, first, 2);
        out.put_u16(packet_id);
        return;
    }
    let Some(reason_string) = reason_string else {
        put_header(out, first, 3);
        out.put_u16(packet_id);
        out.put_u8(reason);
        return;
    };
    let props_len = 3 + reason_string.len();
    put_header(out, first, 3 + varint_len(props_len) + props_len);
    out.put_u16(packet_id);
    out.put_u8(reason);
    put_varint(out, props_len);
    PropertyWriter { out }.string(id::REASON_STRING, reason_string);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::frame::parse_header;

    fn decode_frame(frame: &[u8], version: Version) -> Publish<'_> {
        let h = parse_header(frame, usize::MAX).unwrap().unwrap();
        assert_eq!(h.frame_len(), frame.len());
        Publish::decode(h.flags(), &frame[h.header_len..], version).unwrap()
    }

    #[test]
    fn decode_v4_and_v5() {
        let body = [0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i'];
        let p = Publish::decode(0x02, &body, Version::V3_1_1).unwrap();
        assert_eq!((p.topic, p.qos, p.packet_id, p.payload), ("a/b", 1, 7, &b"hi"[..]));

        let body = [0, 0, 3, 0x23, 0, 9, b'x'];
        let p = Publish::decode(0x01, &body, Version::V5).unwrap();
        assert_eq!((p.topic, p.retain, p.properties.topic_alias, p.payload), ("", true, Some(9), &b"x"[..]));
    }

    #[test]
    fn refusals() {
        let body = [0, 1, b'a', 0, 1];
        assert!(matches!(Publish::decode(0x06, &body, Version::V3_1_1), Err(DecodeError::Malformed(_))));
        assert!(matches!(Publish::decode(0x08, &body, Version::V3_1_1), Err(DecodeError::Malformed(_))));
        let zero_id = [0, 1, b'a', 0, 0];
        assert!(matches!(Publish::decode(0x02, &zero_id, Version::V3_1_1), Err(DecodeError::Protocol(_))));
        // A subscription identifier from a client (MQTT-3.3.4-6).
        let sub_id = [0, 1, b'a', 2, 0x0b, 1];
        assert!(matches!(Publish::decode(0x00, &sub_id, Version::V5), Err(DecodeError::Protocol(_))));
    }

    #[test]
    fn outgoing_round_trips() {
        let mut forwarded = PropertyWriter { out: Vec::new() };
        forwarded.string(id::CONTENT_TYPE, "text/plain");
        forwarded.pair("k", "v");
        let forwarded = forwarded.out;
        for version in [Version::V3_1_1, Version::V5] {
            let out = OutgoingPublish {
                dup: true,
                qos: 2,
                retain: true,
                topic: "t/x",
                packet_id: 42,
                payload: b"payload",
                message_expiry: Some(9),
                topic_alias: Some(3),
                subscription_ids: &[],
                forwarded: &forwarded,
            };
            let mut frame = Vec::new();
            out.encode(&mut frame, version);
            assert_eq!(frame.len(), out.frame_len(version));
            let p = decode_frame(&frame, version);
            assert_eq!(
                (p.dup, p.qos, p.retain, p.topic, p.packet_id, p.payload),
                (true, 2, true, "t/x", 42, &b"payload"[..])
            );
            if version.is_v5() {
                assert_eq!(p.properties.message_expiry_interval, Some(9));
                assert_eq!(p.properties.topic_alias, Some(3));
                assert_eq!(p.properties.content_type, Some("text/plain"));
                assert_eq!(p.properties.user_properties, vec![("k", "v")]);
            } else {
                assert_eq!(p.properties, Properties::default(), "no properties before MQTT 5");
            }
        }
    }

    #[test]
    fn subscription_identifiers_are_written() {
        // Clients may not send them, so the decoder refuses them: read the bytes by hand.
        let out = OutgoingPublish { topic: "t", payload: b"x", subscription_ids: &[1, 300], ..Default::default() };
        let mut frame = Vec::new();
        out.encode(&mut frame, Version::V5);
        assert_eq!(frame.len(), out.frame_len(Version::V5));
        assert_eq!(frame, [0x30, 10, 0, 1, b't', 5, 0x0b, 1, 0x0b, 0xac, 0x02, b'x']);
    }

    #[test]
    fn acks() {
        let mut out = Vec::new();
        encode_ack(&mut out, Version::V5, kind::PUBACK, 7, 0, None);
        assert_eq!(out, [0x40, 2, 0, 7], "a plain success is two bytes");
        out.clear();
        encode_ack(&mut out, Version::V5, kind::PUBREL, 7, 0x92, Some("gone"));
        assert_eq!(out, [0x62, 11, 0, 7, 0x92, 7, 0x1f, 0, 4, b'g', b'o', b'n', b'e']);
        let ack = Ack::decode(&out[2..], Version::V5).unwrap();
        assert_eq!((ack.packet_id, ack.reason, ack.properties.reason_string), (7, 0x92, Some("gone")));
        out.clear();
        encode_ack(&mut out, Version::V3_1_1, kind::PUBREC, 7, 0x10, Some("ignored"));
        assert_eq!(out, [0x50, 2, 0, 7]);
        assert!(Ack::decode(&[0, 7, 0], Version::V3_1_1).is_err(), "3.1.1 acks are two bytes");
        assert!(Ack::decode(&[0, 0], Version::V5).is_err(), "packet id 0");
    }
}
