//! DISCONNECT both ways (the broker sends one only to MQTT 5 clients).

use bytes::BufMut;

use super::frame::{kind, put_header, put_varint};
use super::properties::{id, Allowed, Properties, PropertyWriter};
use super::reader::{Reader, Result};
use super::Version;

/// A DISCONNECT from a client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Disconnect<'a> {
    /// MQTT 5 reason code; 0 (normal) when absent and before MQTT 5.
    pub(crate) reason: u8,
    pub(crate) properties: Properties<'a>,
}

impl<'a> Disconnect<'a> {
    pub(crate) fn decode(body: &'a [u8], version: Version) -> Result<Disconnect<'a>> {
        let mut r = Reader::new(body);
        let mut disconnect = Disconnect::default();
        if version.is_v5() {
            if !r.is_empty() {
                disconnect.reason = r.u8()?;
            }
            if !r.is_empty() {
                disconnect.properties = Properties::decode(&mut r, Allowed::DISCONNECT)?;
            }
        }
        r.finish()?;
        Ok(disconnect)
    }
}

/// Appends an MQTT 5 DISCONNECT with `reason` and an optional reason string. The Property
/// Length is always written, 0 when there is no reason string: MQTT 5 allows leaving it out
/// (§3.14.2.2.1, as mosquitto does), but rumqttc 0.25, a common Rust client, cannot read a
/// DISCONNECT without it and would see a decoding error instead of the reason.
pub(crate) fn encode_disconnect(out: &mut impl BufMut, reason: u8, reason_string: Option<&str>) {
    let props_len = reason_string.map_or(0, |s| 3 + s.len());
    put_header(out, kind::DISCONNECT << 4, 1 + super::frame::varint_len(props_len) + props_len);
    out.put_u8(reason);
    put_varint(out, props_len);
    if let Some(s) = reason_string {
        PropertyWriter { out }.string(id::REASON_STRING, s);
    }
}

/// Appends a PINGRESP.
pub(crate) fn encode_pingresp(out: &mut impl BufMut) {
    put_header(out, kind::PINGRESP << 4, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode_disconnect(&mut out, 0x8e, Some("x"));
        assert_eq!(out, [0xe0, 6, 0x8e, 4, 0x1f, 0, 1, b'x']);
        assert_eq!(Disconnect::decode(&[], Version::V5).unwrap().reason, 0);
        let d = Disconnect::decode(&[0x04, 5, 0x11, 0, 0, 0, 9], Version::V5).unwrap();
        assert_eq!((d.reason, d.properties.session_expiry_interval), (4, Some(9)));
        assert!(Disconnect::decode(&[0], Version::V3_1_1).is_err());
    }
}
