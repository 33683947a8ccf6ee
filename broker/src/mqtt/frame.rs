//! Frame boundaries: the fixed header and the remaining length.

/// MQTT control packet types (high nibble of the first byte).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const DISCONNECT: u8 = 14;
}

/// A frame could not be delimited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed remaining length")]
    MalformedLength,
    #[error("packet of {size} bytes is over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("packet type 0 is reserved")]
    ReservedType,
}

/// The location of one complete frame at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// First byte: packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Length of the fixed header (1 + 1..=4 bytes).
    pub header_len: usize,
    /// Length of the variable header and payload.
    pub body_len: usize,
}

impl FrameHeader {
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    pub fn flags(&self) -> u8 {
        self.first_byte & 0x0f
    }

    pub fn frame_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Reads the fixed header at the start of `buf`. `Ok(None)` means more bytes are needed.
/// A frame longer than `max_frame` is an error as soon as its length is known.
pub fn parse_header(buf: &[u8], max_frame: usize) -> Result<Option<FrameHeader>, FrameError> {
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

/// Appends the variable-length encoding of `len` to `out`.
pub fn encode_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455] {
            let mut buf = vec![0x30];
            encode_length(len, &mut buf);
            let header = parse_header(&buf, usize::MAX).unwrap().unwrap();
            assert_eq!(header.body_len, len);
            assert_eq!(header.header_len, buf.len());
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
}
