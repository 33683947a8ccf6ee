//! Frame boundaries: the fixed header and the remaining length.

use bytes::BufMut;

use super::reader::DecodeError;

/// MQTT control packet types (high nibble of the first byte).
pub(crate) mod kind {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const CONNACK: u8 = 2;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBSCRIBE: u8 = 8;
    pub(crate) const SUBACK: u8 = 9;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const UNSUBACK: u8 = 11;
    pub(crate) const PINGREQ: u8 = 12;
    pub(crate) const PINGRESP: u8 = 13;
    pub(crate) const DISCONNECT: u8 = 14;
    pub(crate) const AUTH: u8 = 15;
}

/// A frame could not be delimited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("malformed remaining length")]
    MalformedLength,
    #[error("packet of {size} bytes is over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("packet type 0 is reserved")]
    ReservedType,
}

/// The location of one complete frame at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// First byte: packet type (high nibble) and flags (low nibble).
    pub(crate) first_byte: u8,
    /// Length of the fixed header (1 + 1..=4 bytes).
    pub(crate) header_len: usize,
    /// Length of the variable header and payload.
    pub(crate) body_len: usize,
}

impl FrameHeader {
    pub(crate) fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    pub(crate) fn flags(&self) -> u8 {
        self.first_byte & 0x0f
    }

    /// The QoS bits of the flags (a PUBLISH's QoS; 0 for the other packets but PUBREL,
    /// SUBSCRIBE and UNSUBSCRIBE, whose reserved flags hold 1 there).
    pub(crate) fn qos(&self) -> u8 {
        (self.first_byte >> 1) & 3
    }

    pub(crate) fn frame_len(&self) -> usize {
        self.header_len + self.body_len
    }

    /// Checks the flag bits: PUBLISH carries DUP, QoS and RETAIN; SUBSCRIBE, UNSUBSCRIBE and
    /// PUBREL must have 0b0010, every other packet 0 (MQTT-2.2.2-1, MQTT-2.2.2-2). An MQTT 3.1
    /// client (`v3_1`) may also set DUP on those three, as its version has them sent again
    /// with DUP set (MQTT 3.1 §2.1: they are QoS 1 packets there).
    pub(crate) fn check_flags(&self, v3_1: bool) -> Result<(), DecodeError> {
        let expected = match self.kind() {
            kind::PUBLISH => return Ok(()),
            kind::SUBSCRIBE | kind::UNSUBSCRIBE | kind::PUBREL if v3_1 && self.flags() == 0b1010 => return Ok(()),
            kind::SUBSCRIBE | kind::UNSUBSCRIBE | kind::PUBREL => 0b0010,
            _ => 0,
        };
        if self.flags() == expected {
            Ok(())
        } else {
            Err(DecodeError::Malformed("reserved flag bits of the fixed header are wrong"))
        }
    }
}

/// Reads the fixed header at the start of `buf`. `Ok(None)` means more bytes are needed.
/// A frame longer than `max_frame` is an error as soon as its length is known.
pub(crate) fn parse_header(buf: &[u8], max_frame: usize) -> Result<Option<FrameHeader>, FrameError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    if first_byte >> 4 == 0 {
        return Err(FrameError::ReservedType);
    }
    let mut body_len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        body_len |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            let header = FrameHeader { first_byte, header_len: 2 + i, body_len };
            if header.frame_len() > max_frame {
                return Err(FrameError::TooLarge { size: header.frame_len(), max: max_frame });
            }
            return Ok(Some(header));
        }
    }
    Err(FrameError::MalformedLength)
}

/// Bytes the variable byte integer encoding of `n` takes.
pub(crate) fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends the variable byte integer encoding of `n`.
pub(crate) fn put_varint(out: &mut impl BufMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

/// Appends a fixed header.
pub(crate) fn put_header(out: &mut impl BufMut, first_byte: u8, body_len: usize) {
    out.put_u8(first_byte);
    put_varint(out, body_len);
}

/// Size of a whole frame whose body is `body_len` bytes.
pub(crate) fn frame_len(body_len: usize) -> usize {
    1 + varint_len(body_len) + body_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455] {
            let mut buf = vec![];
            put_header(&mut buf, 0x30, len);
            let header = parse_header(&buf, usize::MAX).unwrap().unwrap();
            assert_eq!(header.body_len, len);
            assert_eq!(header.header_len, buf.len());
            assert_eq!(header.header_len, 1 + varint_len(len));
        }
    }

    #[test]
    fn partial_and_malformed_headers() {
        assert_eq!(parse_header(&[], 100), Ok(None));
        assert_eq!(parse_header(&[0x30], 100), Ok(None));
        assert_eq!(parse_header(&[0x30, 0x80], 100), Ok(None));
        assert_eq!(parse_header(&[0x30, 0x80, 0x80, 0x80, 0x80], 100), Err(FrameError::MalformedLength));
        assert_eq!(parse_header(&[0x00, 0x00], 100), Err(FrameError::ReservedType));
        assert_eq!(parse_header(&[0x30, 0x7f], 100), Err(FrameError::TooLarge { size: 129, max: 100 }));
    }

    #[test]
    fn fixed_header_flags() {
        let header = |first_byte| FrameHeader { first_byte, header_len: 2, body_len: 0 };
        assert!(header(0x82).check_flags(false).is_ok());
        assert!(header(0x80).check_flags(false).is_err(), "SUBSCRIBE without 0b0010 (MQTT-3.8.1-1)");
        assert!(header(0x62).check_flags(false).is_ok());
        assert!(header(0x60).check_flags(false).is_err(), "PUBREL without 0b0010 (MQTT-3.6.1-1)");
        assert!(header(0xc1).check_flags(false).is_err());
        assert!(header(0x3f).check_flags(false).is_ok(), "PUBLISH flags are its own (QoS checked there)");
        // DUP on a PUBREL, SUBSCRIBE or UNSUBSCRIBE sent again: MQTT 3.1 only.
        for first in [0x6a, 0x8a, 0xaa] {
            assert!(header(first).check_flags(true).is_ok(), "{first:#x} from an MQTT 3.1 client");
            assert!(header(first).check_flags(false).is_err(), "{first:#x} from an MQTT 3.1.1 or 5 client");
        }
        assert!(header(0xe8).check_flags(true).is_err(), "DUP on other packets stays malformed");
    }
}
