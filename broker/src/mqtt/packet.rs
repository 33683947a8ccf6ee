//! Decoding the fields hooks need from a frame's body, and encoding the few packets the host
//! answers by itself. Decoders borrow from the body; nothing is copied.

use std::ops::Range;

use super::frame::{encode_length, kind};

/// A packet's body does not match its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet ends early")]
    Truncated,
    #[error("string is not UTF-8")]
    BadUtf8,
    #[error("malformed property length")]
    BadProperties,
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("invalid QoS 3")]
    BadQoS,
}

type Result<T> = std::result::Result<T, PacketError>;

/// A cursor over a packet body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(PacketError::Truncated)?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn varint(&mut self) -> Result<usize> {
        let mut value = 0usize;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= ((byte & 0x7f) as usize) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(PacketError::BadProperties)
    }

    fn binary(&mut self) -> Result<&'a [u8]> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.binary()?).map_err(|_| PacketError::BadUtf8)
    }

    /// The MQTT 5 property block, as its own reader.
    fn properties(&mut self) -> Result<Reader<'a>> {
        let len = self.varint()?;
        Ok(Reader::new(self.take(len)?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Walks an MQTT 5 property block, calling `f(id, reader)` for the properties `f` wants
/// (it must read the value and return true) and skipping the others.
fn for_each_property<'a>(mut props: Reader<'a>, mut f: impl FnMut(u8, &mut Reader<'a>) -> Result<bool>) -> Result<()> {
    while !props.is_empty() {
        let id = props.u8()?;
        if f(id, &mut props)? {
            continue;
        }
        match id {
            // byte
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                props.take(1)?;
            }
            // two-byte integer
            0x13 | 0x21 | 0x22 | 0x23 => {
                props.take(2)?;
            }
            // four-byte integer
            0x02 | 0x11 | 0x18 | 0x27 => {
                props.take(4)?;
            }
            // variable byte integer
            0x0b => {
                props.varint()?;
            }
            // string or binary
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                props.binary()?;
            }
            // string pair
            0x26 => {
                props.binary()?;
                props.binary()?;
            }
            _ => return Err(PacketError::BadProperties),
        }
    }
    Ok(())
}

/// The fields of a CONNECT the host needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    /// Protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub level: u8,
    pub clean_start: bool,
    pub keepalive: u16,
    /// Offset of the keep-alive field in the body.
    pub keepalive_at: usize,
    /// Session expiry interval property (MQTT 5).
    pub session_expiry: u32,
    pub client_id: &'a str,
    /// Where the client id (with its 2-byte length) sits in the body.
    pub client_id_at: Range<usize>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// The will is to be retained.
    pub will_retain: bool,
}

pub fn decode_connect(body: &[u8]) -> Result<Connect<'_>> {
    let mut r = Reader::new(body);
    let name = r.string()?;
    let level = r.u8()?;
    match (name, level) {
        ("MQTT", 4 | 5) | ("MQIsdp", 3) => {}
        _ => return Err(PacketError::UnsupportedProtocol { name: name.to_owned(), level }),
    }
    let flags = r.u8()?;
    let keepalive_at = r.pos;
    let keepalive = r.u16()?;
    let mut session_expiry = 0;
    if level == 5 {
        for_each_property(r.properties()?, |id, p| {
            if id == 0x11 {
                session_expiry = p.u32()?;
                return Ok(true);
            }
            Ok(false)
        })?;
    }
    let id_start = r.pos;
    let client_id = r.string()?;
    let client_id_at = id_start..r.pos;
    if flags & 0x04 != 0 {
        if level == 5 {
            r.properties()?;
        }
        r.string()?; // will topic
        r.binary()?; // will payload
    }
    let username = if flags & 0x80 != 0 { Some(r.string()?) } else { None };
    let password = if flags & 0x40 != 0 { Some(r.binary()?) } else { None };
    Ok(Connect {
        level,
        clean_start: flags & 0x02 != 0,
        keepalive,
        keepalive_at,
        session_expiry,
        client_id,
        client_id_at,
        username,
        password,
        will_retain: flags & 0x24 == 0x24,
    })
}

/// Re-encodes a CONNECT frame with another keep-alive and client id, and without the will's
/// retain flag, keeping every other byte as the client sent it.
pub fn rewrite_connect(first_byte: u8, body: &[u8], connect: &Connect<'_>, keepalive: u16, client_id: &str) -> Vec<u8> {
    let mut new_body = Vec::with_capacity(body.len() + client_id.len());
    new_body.extend_from_slice(&body[..connect.keepalive_at]);
    // The connect flags sit just before the keep-alive; 0x20 is "will retain".
    new_body[connect.keepalive_at - 1] &= !0x20;
    new_body.extend_from_slice(&keepalive.to_be_bytes());
    new_body.extend_from_slice(&body[connect.keepalive_at + 2..connect.client_id_at.start]);
    new_body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    new_body.extend_from_slice(client_id.as_bytes());
    new_body.extend_from_slice(&body[connect.client_id_at.end..]);
    let mut frame = Vec::with_capacity(new_body.len() + 5);
    frame.push(first_byte);
    encode_length(new_body.len(), &mut frame);
    frame.extend_from_slice(&new_body);
    frame
}

/// CONNACK: session present and return / reason code.
pub fn decode_connack(body: &[u8]) -> Result<(bool, u8)> {
    let mut r = Reader::new(body);
    let flags = r.u8()?;
    Ok((flags & 1 != 0, r.u8()?))
}

/// The fields of a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub topic: &'a str,
    pub qos: u8,
    pub retain: bool,
    pub packet_id: u16,
    /// MQTT 5 topic alias property, if any.
    pub topic_alias: Option<u16>,
    pub payload: &'a [u8],
}

pub fn decode_publish(flags: u8, body: &[u8], v5: bool) -> Result<Publish<'_>> {
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err(PacketError::BadQoS);
    }
    let mut r = Reader::new(body);
    let topic = r.string()?;
    let packet_id = if qos > 0 { r.u16()? } else { 0 };
    let mut topic_alias = None;
    if v5 {
        for_each_property(r.properties()?, |id, p| {
            if id == 0x23 {
                topic_alias = Some(p.u16()?);
                return Ok(true);
            }
            Ok(false)
        })?;
    }
    Ok(Publish { topic, qos, retain: flags & 0x01 != 0, packet_id, topic_alias, payload: r.rest() })
}

/// A SUBSCRIBE or UNSUBSCRIBE, with what is needed to re-encode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriptions<'a> {
    pub packet_id: u16,
    /// MQTT 5 property block, with its length prefix (empty before MQTT 5).
    pub properties: &'a [u8],
    /// Topic filters with their options byte (QoS in the low two bits); UNSUBSCRIBE has 0.
    pub filters: Vec<(&'a str, u8)>,
}

fn decode_subscriptions(body: &[u8], v5: bool, with_options: bool) -> Result<Subscriptions<'_>> {
    let mut r = Reader::new(body);
    let packet_id = r.u16()?;
    let props_start = r.pos;
    if v5 {
        r.properties()?;
    }
    let properties = &body[props_start..r.pos];
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = if with_options { r.u8()? } else { 0 };
        filters.push((filter, options));
    }
    Ok(Subscriptions { packet_id, properties, filters })
}

/// SUBSCRIBE: packet id, properties and (filter, options) pairs.
pub fn decode_subscribe(body: &[u8], v5: bool) -> Result<Subscriptions<'_>> {
    decode_subscriptions(body, v5, true)
}

/// UNSUBSCRIBE: packet id, properties and filters.
pub fn decode_unsubscribe(body: &[u8], v5: bool) -> Result<Subscriptions<'_>> {
    decode_subscriptions(body, v5, false)
}

/// Re-encodes a SUBSCRIBE (`first_byte` 0x82) or UNSUBSCRIBE (0xa2) with only `keep` of its
/// filters.
pub fn encode_subscriptions<'a>(
    first_byte: u8,
    packet_id: u16,
    properties: &[u8],
    keep: impl Iterator<Item = (&'a str, u8)>,
) -> Vec<u8> {
    let with_options = first_byte >> 4 == kind::SUBSCRIBE;
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.extend_from_slice(properties);
    for (filter, options) in keep {
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        if with_options {
            body.push(options);
        }
    }
    frame(first_byte, &body)
}

/// SUBACK (or MQTT 5 UNSUBACK) with these codes; `properties` with its length prefix (MQTT 5)
/// or empty. An MQTT 3.1.1 UNSUBACK has no codes: pass `codes` empty.
pub fn encode_ack_with_codes(packet_kind: u8, packet_id: u16, properties: &[u8], codes: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + properties.len() + codes.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.extend_from_slice(properties);
    body.extend_from_slice(codes);
    frame(packet_kind << 4, &body)
}

fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(first_byte);
    encode_length(body.len(), &mut frame);
    frame.extend_from_slice(body);
    frame
}

/// SUBACK / UNSUBACK: packet id, properties (with length prefix; MQTT 5) and reason codes
/// (UNSUBACK codes are MQTT 5 only).
pub fn decode_ack_with_codes(body: &[u8], v5: bool) -> Result<(u16, &[u8], &[u8])> {
    let mut r = Reader::new(body);
    let packet_id = r.u16()?;
    let props_start = r.pos;
    if v5 {
        r.properties()?;
    }
    let properties = &body[props_start..r.pos];
    Ok((packet_id, properties, r.rest()))
}

/// The packet id of PUBACK, PUBREC, PUBREL or PUBCOMP.
pub fn decode_packet_id(body: &[u8]) -> Result<u16> {
    Reader::new(body).u16()
}

/// CONNACK refusing a connection as not authorised.
pub fn connack_not_authorized(level: u8) -> Vec<u8> {
    if level == 5 {
        vec![kind::CONNACK << 4, 3, 0, 0x87, 0]
    } else {
        vec![kind::CONNACK << 4, 2, 0, 5]
    }
}

/// PUBACK, PUBREC or PUBCOMP (success) for `packet_id`.
pub fn ack(packet_kind: u8, packet_id: u16) -> [u8; 4] {
    let [hi, lo] = packet_id.to_be_bytes();
    let flags = if packet_kind == kind::PUBREL { 0x02 } else { 0 };
    [packet_kind << 4 | flags, 2, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::frame::parse_header;

    fn split(frame: &[u8]) -> (u8, &[u8]) {
        let h = parse_header(frame, usize::MAX).unwrap().unwrap();
        (h.first_byte, &frame[h.header_len..])
    }

    #[test]
    fn connect_v4_with_credentials() {
        // MQTT 3.1.1, clean, user+password, keepalive 0, client id "c1"
        let body = [0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 0, 0, 2, b'c', b'1', 0, 1, b'u', 0, 2, b'p', b'w'];
        let c = decode_connect(&body).unwrap();
        assert_eq!((c.level, c.clean_start, c.keepalive, c.client_id), (4, true, 0, "c1"));
        assert_eq!((c.username, c.password), (Some("u"), Some(&b"pw"[..])));

        let mut with_will = body.to_vec();
        with_will[7] |= 0x24; // will flag + will retain: the will's fields follow the client id
        let will = [0, 1, b't', 0, 1, b'w'];
        let at = c.client_id_at.end;
        with_will.splice(at..at, will);
        let w = decode_connect(&with_will).unwrap();
        assert!(w.will_retain);
        let rewritten = rewrite_connect(0x10, &with_will, &w, 30, "c1");
        let (_, rewritten_body) = split(&rewritten);
        let again = decode_connect(rewritten_body).unwrap();
        assert!(!again.will_retain, "the will retain flag is cleared");
        assert_eq!((again.client_id, again.username), ("c1", Some("u")));

        let frame = rewrite_connect(0x10, &body, &c, 60, "client-two");
        let (first, new_body) = split(&frame);
        assert_eq!(first, 0x10);
        let c2 = decode_connect(new_body).unwrap();
        assert_eq!((c2.keepalive, c2.client_id, c2.username), (60, "client-two", Some("u")));
    }

    #[test]
    fn connect_v5_reads_session_expiry() {
        let body = [0, 4, b'M', b'Q', b'T', b'T', 5, 0x00, 0, 30, 5, 0x11, 0, 0, 0, 100, 0, 1, b'x'];
        let c = decode_connect(&body).unwrap();
        assert_eq!((c.level, c.session_expiry, c.client_id), (5, 100, "x"));
    }

    #[test]
    fn publish_v4_and_v5() {
        let body = [0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i'];
        let p = decode_publish(0x02, &body, false).unwrap();
        assert_eq!((p.topic, p.qos, p.packet_id, p.payload), ("a/b", 1, 7, &b"hi"[..]));

        let body = [0, 0, 3, 0x23, 0, 9, b'x'];
        let p = decode_publish(0x01, &body, true).unwrap();
        assert_eq!((p.topic, p.retain, p.topic_alias, p.payload), ("", true, Some(9), &b"x"[..]));
        assert_eq!(decode_publish(0x06, &body, true), Err(PacketError::BadQoS));
    }

    #[test]
    fn subscribe_filters() {
        let body = [0, 1, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'b', 2];
        let sub = decode_subscribe(&body, false).unwrap();
        assert_eq!((sub.packet_id, sub.filters.clone()), (1, vec![("a/#", 1), ("b", 2)]));
        let frame = encode_subscriptions(0x82, 1, sub.properties, sub.filters.into_iter().skip(1));
        let (first, body) = split(&frame);
        assert_eq!(first, 0x82);
        assert_eq!(decode_subscribe(body, false).unwrap().filters, vec![("b", 2)]);

        let v5 = [0, 7, 2, 0x0b, 3, 0, 1, b'c', 0x15];
        let sub = decode_subscribe(&v5, true).unwrap();
        assert_eq!((sub.properties, sub.filters), (&[2, 0x0b, 3][..], vec![("c", 0x15)]));
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        let body = [0, 9, b'a'];
        assert_eq!(decode_publish(0, &body, false), Err(PacketError::Truncated));
        assert_eq!(decode_connect(&[0, 4, b'M']), Err(PacketError::Truncated));
    }
}

/// Property tests: the decoders never panic, whatever the bytes (the fuzz targets).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::mqtt::frame::parse_header;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn frame_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16), max in 0usize..1 << 20) {
            if let Ok(Some(h)) = parse_header(&bytes, max) {
                prop_assert!(h.header_len >= 2 && h.header_len <= 5);
                prop_assert!(h.frame_len() <= max);
            }
        }

        #[test]
        fn decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..96), flags in 0u8..16, v5 in any::<bool>()) {
            let _ = decode_connect(&body);
            let _ = decode_connack(&body);
            let _ = decode_publish(flags, &body, v5);
            let _ = decode_subscribe(&body, v5);
            let _ = decode_unsubscribe(&body, v5);
            let _ = decode_ack_with_codes(&body, v5);
            let _ = decode_packet_id(&body);
        }

        #[test]
        fn connect_rewrite_round_trips(id in "[a-zA-Z0-9_-]{0,30}", new_id in "[a-z0-9]{1,30}", keepalive in any::<u16>(), user in proptest::option::of("[a-z]{1,8}")) {
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
            body.push(0x02 | if user.is_some() { 0x80 } else { 0 });
            body.extend_from_slice(&30u16.to_be_bytes());
            body.extend_from_slice(&(id.len() as u16).to_be_bytes());
            body.extend_from_slice(id.as_bytes());
            if let Some(u) = &user {
                body.extend_from_slice(&(u.len() as u16).to_be_bytes());
                body.extend_from_slice(u.as_bytes());
            }
            let connect = decode_connect(&body).unwrap();
            let frame = rewrite_connect(0x10, &body, &connect, keepalive, &new_id);
            let header = parse_header(&frame, usize::MAX).unwrap().unwrap();
            prop_assert_eq!(header.frame_len(), frame.len());
            let again = decode_connect(&frame[header.header_len..]).unwrap();
            prop_assert_eq!(again.client_id, new_id.as_str());
            prop_assert_eq!(again.keepalive, keepalive);
            prop_assert_eq!(again.username, user.as_deref());
        }
    }
}
