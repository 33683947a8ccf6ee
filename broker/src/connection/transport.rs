//! What a connection runs over: a byte stream, and for TCP a way to wait for input without
//! holding a read buffer (an idle connection then costs no buffer memory at all).

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A client's byte stream.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would make progress. A transport that cannot tell says ready, and
    /// the connection then reads into a buffer straight away.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The local port the client connected to (EMQX's `sockport`); 0 when unknown.
    fn local_port(&self) -> u16 {
        0
    }
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn local_port(&self) -> u16 {
        self.local_addr().map_or(0, |a| a.port())
    }
}
