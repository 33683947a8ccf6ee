//! SUBSCRIBE and UNSUBSCRIBE (client → broker), SUBACK and UNSUBACK (broker → client).

use bytes::BufMut;

use super::frame::{kind, put_header, put_varint, varint_len};
use super::properties::{id, Allowed, Properties, PropertyWriter};
use super::publish::packet_id;
use super::reader::{DecodeError, Reader, Result};
use super::Version;

/// The options of one subscription (MQTT 5 §3.8.3.1; before MQTT 5 only the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SubscriptionOptions {
    /// Maximum QoS.
    pub(crate) qos: u8,
    /// Do not send the client its own messages.
    pub(crate) no_local: bool,
    /// Keep the retain flag of forwarded messages.
    pub(crate) retain_as_published: bool,
    /// 0: send retained messages, 1: only for a new subscription, 2: never.
    pub(crate) retain_handling: u8,
}

impl SubscriptionOptions {
    pub(crate) fn decode(byte: u8, version: Version) -> Result<SubscriptionOptions> {
        if !version.is_v5() && byte & 0xfc != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits set (MQTT-3.8.3-4)"));
        }
        if byte & 0xc0 != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits set (MQTT-3.8.3-5)"));
        }
        let options = SubscriptionOptions {
            qos: byte & 0x03,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling: (byte >> 4) & 0x03,
        };
        if options.qos == 3 {
            return Err(DecodeError::Malformed("subscription QoS 3 (MQTT-3.8.3-4)"));
        }
        if options.retain_handling == 3 {
            return Err(DecodeError::Protocol("retain handling 3"));
        }
        Ok(options)
    }

    /// The options byte, as on the wire.
    pub(crate) fn to_byte(self) -> u8 {
        self.qos | (self.no_local as u8) << 2 | (self.retain_as_published as u8) << 3 | self.retain_handling << 4
    }
}

/// A SUBSCRIBE, borrowing from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribe<'a> {
    pub(crate) packet_id: u16,
    pub(crate) properties: Properties<'a>,
    pub(crate) filters: Vec<(&'a str, SubscriptionOptions)>,
}

impl<'a> Subscribe<'a> {
    pub(crate) fn decode(body: &'a [u8], version: Version) -> Result<Subscribe<'a>> {
        let mut r = Reader::new(body);
        let packet_id = packet_id(r.u16()?)?;
        let properties =
            if version.is_v5() { Properties::decode(&mut r, Allowed::SUBSCRIBE)? } else { Properties::default() };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            filters.push((filter, SubscriptionOptions::decode(r.u8()?, version)?));
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("a SUBSCRIBE without topic filters (MQTT-3.8.3-3)"));
        }
        Ok(Subscribe { packet_id, properties, filters })
    }
}

/// An UNSUBSCRIBE, borrowing from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsubscribe<'a> {
    pub(crate) packet_id: u16,
    pub(crate) properties: Properties<'a>,
    pub(crate) filters: Vec<&'a str>,
}

impl<'a> Unsubscribe<'a> {
    pub(crate) fn decode(body: &'a [u8], version: Version) -> Result<Unsubscribe<'a>> {
        let mut r = Reader::new(body);
        let packet_id = packet_id(r.u16()?)?;
        let properties =
            if version.is_v5() { Properties::decode(&mut r, Allowed::UNSUBSCRIBE)? } else { Properties::default() };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(r.string()?);
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("an UNSUBSCRIBE without topic filters (MQTT-3.10.3-2)"));
        }
        Ok(Unsubscribe { packet_id, properties, filters })
    }
}

/// Appends a SUBACK (`codes`: MQTT 5 reason codes, mapped for older versions) or an UNSUBACK
/// (which has no codes before MQTT 5).
pub(crate) fn encode_sub_ack(
    out: &mut impl BufMut,
    version: Version,
    packet_kind: u8,
    packet_id: u16,
    codes: &[u8],
    reason_string: Option<&str>,
) {
    if !version.is_v5() {
        if packet_kind == kind::UNSUBACK {
            put_header(out, kind::UNSUBACK << 4, 2);
            out.put_u16(packet_id);
        } else {
            put_header(out, kind::SUBACK << 4, 2 + codes.len());
            out.put_u16(packet_id);
            for &code in codes {
                out.put_u8(super::reason::suback_v3(code));
            }
        }
        return;
    }
    let props_len = reason_string.map_or(0, |s| 3 + s.len());
    put_header(out, packet_kind << 4, 2 + varint_len(props_len) + props_len + codes.len());
    out.put_u16(packet_id);
    put_varint(out, props_len);
    if let Some(s) = reason_string {
        PropertyWriter { out: &mut *out }.string(id::REASON_STRING, s);
    }
    out.put_slice(codes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_v4_and_v5() {
        let body = [0, 1, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'b', 2];
        let sub = Subscribe::decode(&body, Version::V3_1_1).unwrap();
        assert_eq!(sub.packet_id, 1);
        assert_eq!(sub.filters.iter().map(|(f, o)| (*f, o.qos)).collect::<Vec<_>>(), vec![("a/#", 1), ("b", 2)]);

        let v5 = [0, 7, 2, 0x0b, 3, 0, 1, b'c', 0x2e];
        let sub = Subscribe::decode(&v5, Version::V5).unwrap();
        assert_eq!(sub.properties.subscription_identifier, Some(3));
        let options = sub.filters[0].1;
        assert_eq!(
            options,
            SubscriptionOptions { qos: 2, no_local: true, retain_as_published: true, retain_handling: 2 }
        );
        assert_eq!(options.to_byte(), 0x2e);
    }

    #[test]
    fn subscribe_refusals() {
        assert!(Subscribe::decode(&[0, 1], Version::V3_1_1).is_err(), "no filters (MQTT-3.8.3-3)");
        assert!(Subscribe::decode(&[0, 1, 0, 1, b'a', 0x04], Version::V3_1_1).is_err(), "v5 bits in 3.1.1");
        assert!(Subscribe::decode(&[0, 1, 0, 0, 1, b'a', 0x40], Version::V5).is_err(), "reserved bits");
        assert!(Subscribe::decode(&[0, 1, 0, 0, 1, b'a', 0x30], Version::V5).is_err(), "retain handling 3");
        assert!(Subscribe::decode(&[0, 1, 0, 0, 1, b'a', 0x03], Version::V5).is_err(), "QoS 3");
        assert!(Subscribe::decode(&[0, 0, 0, 1, b'a', 0], Version::V3_1_1).is_err(), "packet id 0");
        assert!(Unsubscribe::decode(&[0, 1, 0], Version::V5).is_err(), "no filters (MQTT-3.10.3-2)");
    }

    #[test]
    fn acks() {
        let mut out = Vec::new();
        encode_sub_ack(&mut out, Version::V3_1_1, kind::SUBACK, 9, &[1, 0x87], None);
        assert_eq!(out, [0x90, 4, 0, 9, 1, 0x80]);
        out.clear();
        encode_sub_ack(&mut out, Version::V3_1_1, kind::UNSUBACK, 9, &[0x11], None);
        assert_eq!(out, [0xb0, 2, 0, 9]);
        out.clear();
        encode_sub_ack(&mut out, Version::V5, kind::UNSUBACK, 9, &[0, 0x11], None);
        assert_eq!(out, [0xb0, 5, 0, 9, 0, 0, 0x11]);
    }
}
