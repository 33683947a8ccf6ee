//! Whether a connection's transport holds input that has not reached MQTT yet.
//!
//! tungstenite hands a message on only once it is whole, and rustls a record's plaintext only
//! once the record is whole, so a client that stops in the middle of a WebSocket frame (or
//! between the frames of a fragmented message), or of a TLS record, leaves bytes in their
//! buffers that the connection never sees: its `mqtt.packet_timeout` would not start, and with
//! keep-alive 0 nothing else would ever close it. [`Watched`] sits under tungstenite or
//! rustls, follows the frame or record boundaries in the bytes it reads ([`Frames`], RFC 6455
//! §5.2; [`Records`], RFC 8446 §5.1), and keeps a flag the connection reads through
//! [`PartialInput`]. Over wss both layers are watched, each with its own bit of one flag.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The connection's view of its [`Watched`] layers: whether one is in the middle of a frame,
/// a message or a record.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartialInput(Arc<AtomicU8>);

impl PartialInput {
    /// Whether the client has begun a frame, a fragmented message or a record, and not
    /// finished it.
    pub(crate) fn pending(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    fn set(&self, bit: u8, mid: bool) {
        if mid {
            self.0.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.0.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// A layer's unit boundaries, followed through the bytes a client sends.
pub(crate) trait Boundaries: Default {
    /// This layer's bit of the [`PartialInput`] flag.
    const BIT: u8;
    /// Takes in bytes read.
    fn feed(&mut self, bytes: &[u8]);
    /// Whether bytes were read that the layer above cannot hand on yet.
    fn mid(&self) -> bool;
}

/// A client's byte stream, read through a [`Boundaries`] tracker.
#[derive(Debug)]
pub(crate) struct Watched<S, B> {
    stream: S,
    boundaries: B,
    partial: PartialInput,
}

impl<S, B: Boundaries> Watched<S, B> {
    /// Watches `stream` from its first byte, reporting to `partial`.
    pub(crate) fn new(stream: S, partial: PartialInput) -> Watched<S, B> {
        Watched { stream, boundaries: B::default(), partial }
    }
}

impl<S: AsyncRead + Unpin, B: Boundaries + Unpin> AsyncRead for Watched<S, B> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.boundaries.feed(&buf.filled()[before..]);
            this.partial.set(B::BIT, this.boundaries.mid());
        }
        read
    }
}

impl<S: AsyncWrite + Unpin, B: Unpin> AsyncWrite for Watched<S, B> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// TLS records: a 5-byte header (content type, version, length) and that many bytes.
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// Header bytes read of the record under way (5: its payload is being read).
    header: [u8; 5],
    have: u8,
    /// Payload bytes still to come.
    left: usize,
}

impl Boundaries for Records {
    const BIT: u8 = 2;

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.have < 5 {
                self.header[usize::from(self.have)] = bytes[0];
                self.have += 1;
                bytes = &bytes[1..];
                if self.have == 5 {
                    self.left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                    if self.left == 0 {
                        self.have = 0;
                    }
                }
            } else {
                let take = self.left.min(bytes.len());
                bytes = &bytes[take..];
                self.left -= take;
                if self.left == 0 {
                    self.have = 0;
                }
            }
        }
    }

    fn mid(&self) -> bool {
        self.have > 0
    }
}

/// Where the byte stream stands: still in the HTTP request head, in a frame header, or in a
/// payload.
#[derive(Debug)]
enum Stage {
    /// The upgrade request; `matched` bytes of its closing `\r\n\r\n` seen.
    Head { matched: u8 },
    /// A frame header (at most 14 bytes), `have` of them read.
    Header { bytes: [u8; 14], have: u8 },
    /// A payload, `left` bytes still to come.
    Payload { left: u64 },
}

/// WebSocket frames (after the HTTP upgrade request): follows frame boundaries through the
/// bytes a client sends.
#[derive(Debug)]
pub(crate) struct Frames {
    stage: Stage,
    /// A data frame without FIN was seen, and its message's last frame was not.
    in_message: bool,
}

impl Default for Frames {
    fn default() -> Frames {
        Frames { stage: Stage::Head { matched: 0 }, in_message: false }
    }
}

const HEAD_END: &[u8; 4] = b"\r\n\r\n";

impl Boundaries for Frames {
    const BIT: u8 = 1;

    fn feed(&mut self, bytes: &[u8]) {
        Frames::feed(self, bytes);
    }

    fn mid(&self) -> bool {
        self.mid_message()
    }
}

impl Frames {
    /// Whether bytes were read that tungstenite cannot hand on yet.
    fn mid_message(&self) -> bool {
        match self.stage {
            Stage::Head { .. } => false,
            Stage::Header { have: 0, .. } => self.in_message,
            Stage::Header { .. } | Stage::Payload { .. } => true,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&byte, rest)) = bytes.split_first() {
            match &mut self.stage {
                Stage::Head { matched } => {
                    bytes = rest;
                    *matched =
                        if byte == HEAD_END[usize::from(*matched)] { *matched + 1 } else { u8::from(byte == b'\r') };
                    if usize::from(*matched) == HEAD_END.len() {
                        self.stage = Stage::Header { bytes: [0; 14], have: 0 };
                    }
                }
                Stage::Header { bytes: header, have } => {
                    bytes = rest;
                    header[usize::from(*have)] = byte;
                    *have += 1;
                    if let Some(left) = Frames::payload_len(&header[..usize::from(*have)]) {
                        let (fin, opcode) = (header[0] & 0x80 != 0, header[0] & 0x0f);
                        if opcode < 8 {
                            // Data frames (continuation, text, binary); control frames may
                            // come between the fragments of a message and change nothing.
                            self.in_message = !fin;
                        }
                        self.stage =
                            if left == 0 { Stage::Header { bytes: [0; 14], have: 0 } } else { Stage::Payload { left } };
                    }
                }
                Stage::Payload { left } => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[take..];
                    *left -= take as u64;
                    if *left == 0 {
                        self.stage = Stage::Header { bytes: [0; 14], have: 0 };
                    }
                }
            }
        }
    }

    /// A frame's payload length once `header` holds the whole frame header, else `None`.
    fn payload_len(header: &[u8]) -> Option<u64> {
        let [_, second, ..] = *header else { return None };
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        if header.len() < 2 + extended + mask {
            return None;
        }
        Some(match extended {
            0 => u64::from(second & 0x7f),
            _ => header[2..2 + extended].iter().fold(0, |len, &b| len << 8 | u64::from(b)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (mask key 0) announcing `len` payload bytes, with its header only.
    fn header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut h = vec![u8::from(fin) << 7 | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        h.extend_from_slice(&[0; 4]);
        h
    }

    fn upgraded() -> Frames {
        let mut frames = Frames::default();
        frames.feed(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r");
        assert!(!frames.mid_message(), "the request head is not a frame");
        frames.feed(b"\n");
        frames
    }

    #[test]
    fn a_tls_record_is_pending_from_its_first_byte_to_its_last() {
        let record = |len: u16| {
            let mut r = vec![23, 3, 3];
            r.extend_from_slice(&len.to_be_bytes());
            r.extend(std::iter::repeat_n(0, usize::from(len)));
            r
        };
        let mut records = Records::default();
        let two: Vec<u8> = [record(300), record(0), record(5)].concat();
        for (i, &byte) in two.iter().enumerate() {
            records.feed(&[byte]);
            assert_eq!(records.mid(), i + 1 != 305 && i + 1 != 310 && i + 1 != two.len(), "after byte {i}");
        }
        records.feed(&[record(40), record(2)[..3].to_vec()].concat());
        assert!(records.mid(), "a header begun");
        records.feed(&[0, 2, 9, 9]);
        assert!(!records.mid(), "whole again");
    }

    #[test]
    fn whole_frames_leave_nothing_pending_whatever_the_length_encoding() {
        for len in [0, 2, 125, 126, 1000, 70_000] {
            let mut frames = upgraded();
            frames.feed(&header(true, 2, len));
            assert_eq!(frames.mid_message(), len > 0, "header of {len}");
            frames.feed(&vec![0; len.saturating_sub(1)]);
            assert_eq!(frames.mid_message(), len > 0, "one byte short of {len}");
            frames.feed(&vec![0; len.min(1)]);
            assert!(!frames.mid_message(), "whole frame of {len}");
        }
    }

    #[test]
    fn a_header_fed_a_byte_at_a_time_is_pending_until_its_payload_arrives() {
        let mut frames = upgraded();
        for byte in header(true, 2, 300) {
            frames.feed(&[byte]);
            assert!(frames.mid_message());
        }
        frames.feed(&[0; 300]);
        assert!(!frames.mid_message());
    }

    #[test]
    fn a_fragmented_message_is_pending_until_its_last_frame_and_control_frames_change_nothing() {
        let mut frames = upgraded();
        let mut first = header(false, 2, 2);
        first.extend_from_slice(&[0xc0, 0]);
        frames.feed(&first);
        assert!(frames.mid_message(), "FIN 0: the message goes on");
        frames.feed(&header(true, 9, 0)); // a ping between fragments
        assert!(frames.mid_message());
        frames.feed(&header(true, 0, 0)); // the last continuation
        assert!(!frames.mid_message());
        frames.feed(&header(true, 9, 0)); // a ping on its own
        assert!(!frames.mid_message());
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut frames = upgraded();
        let mut bytes = header(true, 2, 3);
        bytes.extend_from_slice(&[1, 2, 3]);
        bytes.extend(header(true, 2, 5));
        bytes.extend_from_slice(&[1, 2]);
        frames.feed(&bytes);
        assert!(frames.mid_message());
        frames.feed(&[3, 4, 5]);
        assert!(!frames.mid_message());
    }
}
