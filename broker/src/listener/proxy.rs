//! The PROXY protocol (HAProxy's, version 1 in text and 2 in binary), for a listener behind a
//! load balancer in TCP mode (EMQX's `proxy_protocol`): the balancer opens each connection
//! with a header that says where the client connects from, and the broker takes that as the
//! client's address (for `allow_anonymous = "loopback"`, bans, `max_conns_per_ip`, the logs and
//! the clients' listings) instead of the balancer's.
//!
//! The header is read before anything else, within `proxy_protocol_timeout`; a connection
//! that sends none, or a malformed one, is closed. Only the header's bytes are taken from the
//! socket (what follows is the client's MQTT). The parsing is the `ppp` crate's.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest version 1 header.
const V1_MAX: usize = 107;
/// A version 2 header's fixed part: its signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// How each version's header starts.
const V1_START: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's PROXY protocol header was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("no PROXY protocol header (the connection does not start with one)")]
    Missing,
    #[error("a malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY protocol header `socket` starts with, within `timeout`: the client's
/// address, or `None` when the header says the connection is the balancer's own (`LOCAL`,
/// `UNKNOWN`: a health check), which keeps the socket's.
pub(crate) async fn read_header(socket: &mut TcpStream, timeout: Duration) -> Result<Option<SocketAddr>, ProxyError> {
    tokio::time::timeout(timeout, read(socket)).await.map_err(|_| ProxyError::Timeout(timeout))?
}

async fn read(socket: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut header = vec![0; V1_START.len()];
    socket.read_exact(&mut header).await?;
    if header == V1_START {
        read_v1_rest(socket, &mut header).await?;
    } else if header == V2_SIGNATURE[..V1_START.len()] {
        header.resize(V2_FIXED, 0);
        socket.read_exact(&mut header[V1_START.len()..]).await?;
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        header.resize(V2_FIXED + length, 0);
        socket.read_exact(&mut header[V2_FIXED..]).await?;
    } else {
        return Err(ProxyError::Missing);
    }
    source(HeaderResult::parse(&header))
}

/// Reads the rest of a version 1 header, up to and with its `\r\n`, and nothing after it: what
/// has arrived is looked at first, so that one read takes the whole header when it came whole.
async fn read_v1_rest(socket: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), ProxyError> {
    let mut ahead = [0; V1_MAX];
    let seen = socket.peek(&mut ahead[..V1_MAX - header.len()]).await?;
    if let Some(end) = ahead[..seen].windows(2).position(|w| w == b"\r\n") {
        let start = header.len();
        header.resize(start + end + 2, 0);
        socket.read_exact(&mut header[start..]).await?;
        return Ok(());
    }
    // Not all there yet: a byte at a time, so as not to read past it.
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_MAX {
            return Err(ProxyError::Malformed(format!("a version 1 header longer than {V1_MAX} bytes")));
        }
        header.push(socket.read_u8().await?);
    }
    Ok(())
}

/// The client's address a parsed header gives (`None`: the balancer's own connection).
fn source(header: HeaderResult<'_>) -> Result<Option<SocketAddr>, ProxyError> {
    match header {
        HeaderResult::V1(Ok(header)) => Ok(match header.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(header)) => Ok(match (header.command, header.addresses) {
            (v2::Command::Local, _) => None,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
        }),
        HeaderResult::V1(Err(e)) => Err(ProxyError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_give_the_clients_address_or_none() {
        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 1883\r\n";
        assert_eq!(source(HeaderResult::parse(v1)).unwrap(), Some("203.0.113.7:51234".parse().unwrap()));
        let v1 = b"PROXY TCP6 2001:db8::1 ::1 4000 1883\r\n";
        assert_eq!(source(HeaderResult::parse(v1)).unwrap(), Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(source(HeaderResult::parse(b"PROXY UNKNOWN\r\n")).unwrap(), None);
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x1f, 0x90, 0x07, 0x5b]);
        assert_eq!(source(HeaderResult::parse(&v2)).unwrap(), Some("198.51.100.9:8080".parse().unwrap()));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(source(HeaderResult::parse(&local)).unwrap(), None, "LOCAL: a health check");
        assert!(source(HeaderResult::parse(b"PROXY TCP4 nonsense\r\n")).is_err());
    }
}
