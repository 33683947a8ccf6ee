//! Hand-made MQTT bytes, for tests that send what no client library would (reserved flags, a
//! missing field, MQTT 3.1's DUP on a PUBREL) or must see the exact bytes the broker writes.

use std::io::Read;
use std::net::TcpStream;

/// `s` as an MQTT string: its length in two bytes, then its bytes.
pub fn mqtt_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A packet: the fixed header's first byte `first`, the remaining length, then `body`.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Reads exactly one whole packet from `stream` (its raw bytes, fixed header included).
pub fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 1];
    stream.read_exact(&mut header).expect("a packet from the broker");
    let mut out = header.to_vec();
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).unwrap();
        out.push(b[0]);
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    out.extend_from_slice(&body);
    out
}
