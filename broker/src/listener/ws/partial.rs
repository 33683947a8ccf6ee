//! Whether a WebSocket connection holds input that has not reached MQTT yet.
//!
//! tungstenite hands a message on only once it is whole, so a client that stops in the middle
//! of a frame (or between the frames of a fragmented message) leaves bytes in tungstenite's
//! buffer that the connection never sees: its `mqtt.packet_timeout` would not start, and with
//! keep-alive 0 nothing else would ever close it. [`Watched`] sits under tungstenite, follows
//! the frame boundaries in the bytes it reads (RFC 6455 §5.2), and keeps a flag the connection
//! reads through [`PartialInput`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The connection's view of a [`Watched`] stream: whether a frame or message is under way.
#[derive(Debug, Clone)]
pub(crate) struct PartialInput(Arc<AtomicBool>);

impl PartialInput {
    /// Whether the client has begun a frame, or a fragmented message, and not finished it.
    pub(crate) fn pending(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A client's byte stream, read through a [`Frames`] tracker.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    stream: S,
    frames: Frames,
    partial: PartialInput,
}

impl<S> Watched<S> {
    /// Watches `stream` from its first byte (the HTTP upgrade request).
    pub(crate) fn new(stream: S) -> (Watched<S>, PartialInput) {
        let partial = PartialInput(Arc::new(AtomicBool::new(false)));
        (Watched { stream, frames: Frames::default(), partial: partial.clone() }, partial)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.frames.feed(&buf.filled()[before..]);
            this.partial.0.store(this.frames.mid_message(), Ordering::Relaxed);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
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

/// Follows frame boundaries through the bytes a client sends.
#[derive(Debug)]
struct Frames {
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
