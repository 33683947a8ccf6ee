//! A cursor over a packet's body, and the two ways a packet can be wrong.

/// A packet the broker cannot accept.
///
/// MQTT 5 tells the two apart: the broker answers a malformed packet with reason 0x81 and a
/// protocol error with 0x82 before it closes the connection (MQTT 3.1.1 just closes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The bytes do not follow the packet's layout.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed, but against a rule of the protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code for a DISCONNECT about this error.
    pub(crate) fn reason_code(self) -> u8 {
        match self {
            DecodeError::Malformed(_) => super::reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => super::reason::PROTOCOL_ERROR,
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, DecodeError>;

const TRUNCATED: DecodeError = DecodeError::Malformed("the packet ends early");

/// A cursor over a packet body. Every read checks the bounds.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(TRUNCATED)?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable byte integer (at most four bytes, MQTT 5 §1.5.5).
    pub(crate) fn varint(&mut self) -> Result<u32> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed("variable byte integer longer than 4 bytes"))
    }

    /// Two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<&'a [u8]> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    /// A UTF-8 string: well-formed UTF-8 without U+0000 (MQTT-1.5.3-1, MQTT-1.5.3-2).
    pub(crate) fn string(&mut self) -> Result<&'a str> {
        let s = std::str::from_utf8(self.binary()?).map_err(|_| DecodeError::Malformed("a string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError::Malformed("a string contains U+0000"));
        }
        Ok(s)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("unexpected bytes at the end of the packet"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_must_be_utf8_without_nul() {
        assert_eq!(Reader::new(&[0, 2, b'o', b'k']).string(), Ok("ok"));
        assert!(matches!(Reader::new(&[0, 2, 0xff, 0xfe]).string(), Err(DecodeError::Malformed(_))));
        assert!(matches!(Reader::new(&[0, 2, b'a', 0]).string(), Err(DecodeError::Malformed(_))));
        assert_eq!(Reader::new(&[0, 3, b'a']).string(), Err(TRUNCATED));
    }

    #[test]
    fn varints() {
        assert_eq!(Reader::new(&[0x7f]).varint(), Ok(127));
        assert_eq!(Reader::new(&[0x80, 0x01]).varint(), Ok(128));
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0x7f]).varint(), Ok(268_435_455));
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x01]).varint().is_err());
    }
}
