//! The MQTT 5 property block (§2.2.2): decoded into [`Properties`] with the packet's allowed
//! set checked, and written with [`PropertyWriter`].

use bytes::BufMut;

use super::frame::{put_varint, varint_len};
use super::reader::{DecodeError, Reader, Result};

/// Property identifiers.
pub(crate) mod id {
    pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    pub(crate) const CORRELATION_DATA: u8 = 0x09;
    pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0b;
    pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(crate) const RESPONSE_INFORMATION: u8 = 0x1a;
    pub(crate) const SERVER_REFERENCE: u8 = 0x1c;
    pub(crate) const REASON_STRING: u8 = 0x1f;
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    pub(crate) const MAXIMUM_QOS: u8 = 0x24;
    pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2a;
}

/// A set of property identifiers, as a bit mask (`1 << id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allowed(u64);

impl Allowed {
    const fn of(ids: &[u8]) -> Allowed {
        let mut bits = 0u64;
        let mut i = 0;
        while i < ids.len() {
            bits |= 1 << ids[i];
            i += 1;
        }
        Allowed(bits)
    }

    fn contains(self, id: u8) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }

    /// CONNECT (§3.1.2.11).
    pub(crate) const CONNECT: Allowed = Allowed::of(&[
        id::SESSION_EXPIRY_INTERVAL,
        id::RECEIVE_MAXIMUM,
        id::MAXIMUM_PACKET_SIZE,
        id::TOPIC_ALIAS_MAXIMUM,
        id::REQUEST_RESPONSE_INFORMATION,
        id::REQUEST_PROBLEM_INFORMATION,
        id::USER_PROPERTY,
        id::AUTHENTICATION_METHOD,
        id::AUTHENTICATION_DATA,
    ]);
    /// The will's properties in CONNECT (§3.1.3.2).
    pub(crate) const WILL: Allowed = Allowed::of(&[
        id::WILL_DELAY_INTERVAL,
        id::PAYLOAD_FORMAT_INDICATOR,
        id::MESSAGE_EXPIRY_INTERVAL,
        id::CONTENT_TYPE,
        id::RESPONSE_TOPIC,
        id::CORRELATION_DATA,
        id::USER_PROPERTY,
    ]);
    /// PUBLISH from a client: no Subscription Identifier (MQTT-3.3.4-6).
    pub(crate) const PUBLISH: Allowed = Allowed::of(&[
        id::PAYLOAD_FORMAT_INDICATOR,
        id::MESSAGE_EXPIRY_INTERVAL,
        id::TOPIC_ALIAS,
        id::RESPONSE_TOPIC,
        id::CORRELATION_DATA,
        id::USER_PROPERTY,
        id::CONTENT_TYPE,
    ]);
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    pub(crate) const ACK: Allowed = Allowed::of(&[id::REASON_STRING, id::USER_PROPERTY]);
    /// SUBSCRIBE (§3.8.2.1).
    pub(crate) const SUBSCRIBE: Allowed = Allowed::of(&[id::SUBSCRIPTION_IDENTIFIER, id::USER_PROPERTY]);
    /// UNSUBSCRIBE (§3.10.2.1).
    pub(crate) const UNSUBSCRIBE: Allowed = Allowed::of(&[id::USER_PROPERTY]);
    /// DISCONNECT from a client (§3.14.2.2).
    pub(crate) const DISCONNECT: Allowed =
        Allowed::of(&[id::SESSION_EXPIRY_INTERVAL, id::REASON_STRING, id::USER_PROPERTY, id::SERVER_REFERENCE]);
    /// AUTH (§3.15.2.2).
    pub(crate) const AUTH: Allowed =
        Allowed::of(&[id::AUTHENTICATION_METHOD, id::AUTHENTICATION_DATA, id::REASON_STRING, id::USER_PROPERTY]);
}

/// The properties a client may send, each `None` when absent. Strings borrow from the frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Properties<'a> {
    pub(crate) payload_format_indicator: Option<u8>,
    pub(crate) message_expiry_interval: Option<u32>,
    pub(crate) content_type: Option<&'a str>,
    pub(crate) response_topic: Option<&'a str>,
    pub(crate) correlation_data: Option<&'a [u8]>,
    pub(crate) subscription_identifier: Option<u32>,
    pub(crate) session_expiry_interval: Option<u32>,
    pub(crate) authentication_method: Option<&'a str>,
    pub(crate) authentication_data: Option<&'a [u8]>,
    pub(crate) request_problem_information: Option<u8>,
    pub(crate) will_delay_interval: Option<u32>,
    pub(crate) request_response_information: Option<u8>,
    pub(crate) server_reference: Option<&'a str>,
    pub(crate) reason_string: Option<&'a str>,
    pub(crate) receive_maximum: Option<u16>,
    pub(crate) topic_alias_maximum: Option<u16>,
    pub(crate) topic_alias: Option<u16>,
    pub(crate) maximum_packet_size: Option<u32>,
    /// In the order the client sent them (MQTT-3.3.2-18).
    pub(crate) user_properties: Vec<(&'a str, &'a str)>,
}

/// Sets `slot`, refusing a second value: every property but User Property (and Subscription
/// Identifier in a server's PUBLISH) may appear at most once.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<()> {
    if slot.replace(value).is_some() {
        return Err(DecodeError::Protocol("a property appears more than once"));
    }
    Ok(())
}

fn flag(value: u8) -> Result<u8> {
    if value > 1 {
        return Err(DecodeError::Protocol("a 0-or-1 property has another value"));
    }
    Ok(value)
}

impl<'a> Properties<'a> {
    /// Reads a property block (its length, then the properties), refusing properties outside
    /// `allowed`.
    pub(crate) fn decode(r: &mut Reader<'a>, allowed: Allowed) -> Result<Properties<'a>> {
        let len = r.varint()? as usize;
        Properties::decode_entries(Reader::new(r.take(len)?), allowed)
    }

    fn decode_entries(mut block: Reader<'a>, allowed: Allowed) -> Result<Properties<'a>> {
        let mut p = Properties::default();
        while !block.is_empty() {
            let property = block.varint()?;
            let property = u8::try_from(property).map_err(|_| DecodeError::Malformed("unknown property"))?;
            if !allowed.contains(property) {
                return Err(if allowed == Allowed::PUBLISH && property == id::SUBSCRIPTION_IDENTIFIER {
                    // Valid in a PUBLISH, but only from the server (MQTT-3.3.4-6).
                    DecodeError::Protocol("a subscription identifier from a client (MQTT-3.3.4-6)")
                } else if known(property) {
                    DecodeError::Malformed("a property not valid for this packet type (§2.2.2.2)")
                } else {
                    DecodeError::Malformed("unknown property")
                });
            }
            let b = &mut block;
            match property {
                id::PAYLOAD_FORMAT_INDICATOR => once(&mut p.payload_format_indicator, flag(b.u8()?)?)?,
                id::MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, b.u32()?)?,
                id::CONTENT_TYPE => once(&mut p.content_type, b.string()?)?,
                id::RESPONSE_TOPIC => once(&mut p.response_topic, b.string()?)?,
                id::CORRELATION_DATA => once(&mut p.correlation_data, b.binary()?)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    let value = b.varint()?;
                    if value == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    once(&mut p.subscription_identifier, value)?
                }
                id::SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, b.u32()?)?,
                id::AUTHENTICATION_METHOD => once(&mut p.authentication_method, b.string()?)?,
                id::AUTHENTICATION_DATA => once(&mut p.authentication_data, b.binary()?)?,
                id::REQUEST_PROBLEM_INFORMATION => once(&mut p.request_problem_information, flag(b.u8()?)?)?,
                id::WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, b.u32()?)?,
                id::REQUEST_RESPONSE_INFORMATION => once(&mut p.request_response_information, flag(b.u8()?)?)?,
                id::SERVER_REFERENCE => once(&mut p.server_reference, b.string()?)?,
                id::REASON_STRING => once(&mut p.reason_string, b.string()?)?,
                id::RECEIVE_MAXIMUM => {
                    let value = b.u16()?;
                    if value == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    once(&mut p.receive_maximum, value)?
                }
                id::TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, b.u16()?)?,
                id::TOPIC_ALIAS => once(&mut p.topic_alias, b.u16()?)?,
                id::MAXIMUM_PACKET_SIZE => {
                    let value = b.u32()?;
                    if value == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    once(&mut p.maximum_packet_size, value)?
                }
                id::USER_PROPERTY => {
                    let pair = (b.string()?, b.string()?);
                    p.user_properties.push(pair);
                }
                _ => return Err(DecodeError::Malformed("unknown property")),
            }
        }
        Ok(p)
    }

    /// Writes the properties a message carries from its publisher to its subscribers
    /// unchanged: Payload Format Indicator, Content Type, Response Topic, Correlation Data
    /// and User Properties, in that order (user properties in the client's order).
    pub(crate) fn write_forwarded(&self, w: &mut PropertyWriter<impl BufMut>) {
        if let Some(v) = self.payload_format_indicator {
            w.u8(id::PAYLOAD_FORMAT_INDICATOR, v);
        }
        if let Some(v) = self.content_type {
            w.string(id::CONTENT_TYPE, v);
        }
        if let Some(v) = self.response_topic {
            w.string(id::RESPONSE_TOPIC, v);
        }
        if let Some(v) = self.correlation_data {
            w.binary(id::CORRELATION_DATA, v);
        }
        for (k, v) in &self.user_properties {
            w.pair(k, v);
        }
    }
}

/// Whether `property` is an MQTT 5 property identifier at all.
fn known(property: u8) -> bool {
    matches!(property, 0x01..=0x03 | 0x08 | 0x09 | 0x0b | 0x11..=0x13 | 0x15..=0x1a | 0x1c | 0x1f | 0x21..=0x2a)
}

/// Writes properties (without the block's length: see [`PropertyWriter::block_len`]).
#[derive(Debug)]
pub(crate) struct PropertyWriter<B> {
    pub(crate) out: B,
}

impl<B: BufMut> PropertyWriter<B> {
    pub(crate) fn u8(&mut self, id: u8, v: u8) {
        self.out.put_u8(id);
        self.out.put_u8(v);
    }

    pub(crate) fn u16(&mut self, id: u8, v: u16) {
        self.out.put_u8(id);
        self.out.put_u16(v);
    }

    pub(crate) fn u32(&mut self, id: u8, v: u32) {
        self.out.put_u8(id);
        self.out.put_u32(v);
    }

    pub(crate) fn varint(&mut self, id: u8, v: u32) {
        self.out.put_u8(id);
        put_varint(&mut self.out, v as usize);
    }

    pub(crate) fn binary(&mut self, id: u8, v: &[u8]) {
        self.out.put_u8(id);
        self.out.put_u16(v.len() as u16);
        self.out.put_slice(v);
    }

    pub(crate) fn string(&mut self, id: u8, v: &str) {
        self.binary(id, v.as_bytes());
    }

    pub(crate) fn pair(&mut self, k: &str, v: &str) {
        self.out.put_u8(id::USER_PROPERTY);
        self.out.put_u16(k.len() as u16);
        self.out.put_slice(k.as_bytes());
        self.out.put_u16(v.len() as u16);
        self.out.put_slice(v.as_bytes());
    }
}

/// Bytes a property block of `len` bytes takes with its length prefix.
pub(crate) fn block_len(len: usize) -> usize {
    varint_len(len) + len
}

/// Bytes one Subscription Identifier property takes.
pub(crate) fn subscription_identifier_len(v: u32) -> usize {
    1 + varint_len(v as usize)
}

/// Reads a block of properties without its length prefix (as plugins hand them back).
pub(crate) fn decode_block(block: &[u8], allowed: Allowed) -> Result<Properties<'_>> {
    Properties::decode_entries(Reader::new(block), allowed)
}
