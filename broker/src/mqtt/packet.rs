//! What a client may send after its CONNECT, as one enum.

use super::connect::{Connect, ConnectError};
use super::disconnect::Disconnect;
use super::frame::{kind, FrameHeader};
use super::properties::{Allowed, Properties};
use super::publish::{Ack, Publish};
use super::reader::{DecodeError, Reader, Result};
use super::subscribe::{Subscribe, Unsubscribe};
use super::Version;

/// A packet from a client, borrowing from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    /// A second CONNECT: a protocol error (MQTT-3.1.0-2), reported by the connection.
    Connect,
    Publish(Publish<'a>),
    PubAck(Ack<'a>),
    PubRec(Ack<'a>),
    PubRel(Ack<'a>),
    PubComp(Ack<'a>),
    Subscribe(Subscribe<'a>),
    Unsubscribe(Unsubscribe<'a>),
    PingReq,
    Disconnect(Disconnect<'a>),
    /// MQTT 5 AUTH (enhanced authentication, which this broker does not offer).
    Auth(Properties<'a>),
}

impl<'a> Packet<'a> {
    /// Decodes the frame `header` delimits, whose body is `body`.
    pub(crate) fn decode(header: &FrameHeader, body: &'a [u8], version: Version) -> Result<Packet<'a>> {
        header.check_flags(version == Version::V3_1)?;
        Ok(match header.kind() {
            kind::CONNECT => Packet::Connect,
            kind::PUBLISH => Packet::Publish(Publish::decode(header.flags(), body, version)?),
            kind::PUBACK => Packet::PubAck(Ack::decode(body, version)?),
            kind::PUBREC => Packet::PubRec(Ack::decode(body, version)?),
            kind::PUBREL => Packet::PubRel(Ack::decode(body, version)?),
            kind::PUBCOMP => Packet::PubComp(Ack::decode(body, version)?),
            kind::SUBSCRIBE => Packet::Subscribe(Subscribe::decode(body, version)?),
            kind::UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::decode(body, version)?),
            kind::PINGREQ => {
                Reader::new(body).finish()?;
                Packet::PingReq
            }
            kind::DISCONNECT => Packet::Disconnect(Disconnect::decode(body, version)?),
            kind::AUTH if version.is_v5() => {
                let mut r = Reader::new(body);
                let _reason = if r.is_empty() { 0 } else { r.u8()? };
                let properties =
                    if r.is_empty() { Properties::default() } else { Properties::decode(&mut r, Allowed::AUTH)? };
                r.finish()?;
                Packet::Auth(properties)
            }
            kind::AUTH => return Err(DecodeError::Malformed("packet type 15 is reserved before MQTT 5")),
            _ => return Err(DecodeError::Protocol("a packet only a server sends")),
        })
    }
}

/// Decodes the first packet of a connection, which must be a CONNECT (MQTT-3.1.0-1).
pub(crate) fn decode_first<'a>(header: &FrameHeader, body: &'a [u8]) -> std::result::Result<Connect<'a>, ConnectError> {
    if header.kind() != kind::CONNECT {
        return Err(DecodeError::Protocol("the first packet is not CONNECT (MQTT-3.1.0-1)").into());
    }
    header.check_flags(false)?;
    Connect::decode(body)
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
        fn decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..96), first_byte in 0x10u8..=0xff) {
            let header = FrameHeader { first_byte, header_len: 2, body_len: body.len() };
            for version in [Version::V3_1, Version::V3_1_1, Version::V5] {
                let _ = Packet::decode(&header, &body, version);
            }
            let _ = decode_first(&header, &body);
        }

        #[test]
        fn connect_bodies_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..64), flags in any::<u8>(), v5 in any::<bool>()) {
            // A valid start, so that the fuzzing reaches the flags, properties and payload.
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }, flags, 0, 30];
            body.extend_from_slice(&tail);
            let _ = Connect::decode(&body);
        }
    }
}
