//! What a connection runs over: a byte stream, and for TCP a way to wait for input without
//! holding a read buffer (an idle connection then costs no buffer memory at all). TLS and
//! WebSocket streams come wrapped in [`Tagged`], which carries what the listener learnt
//! before the MQTT connection began (its port, the client certificate's name).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::listener::PartialInput;

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

    /// The username the client's TLS certificate gives (EMQX's `peer_cert_as_username`);
    /// it replaces the CONNECT's.
    fn cert_username(&self) -> Option<&str> {
        None
    }

    /// Whether the transport holds input it cannot hand on yet (a WebSocket frame begun and
    /// not finished): the connection's `mqtt.packet_timeout` runs against it as against a
    /// packet begun.
    fn holds_partial_input(&self) -> bool {
        false
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

/// A stream layered on a TCP socket (TLS, WebSocket), with what its listener knows.
#[derive(Debug)]
pub(crate) struct Tagged<S> {
    stream: S,
    local_port: u16,
    cert_username: Option<Box<str>>,
    partial: Option<PartialInput>,
}

impl<S> Tagged<S> {
    pub(crate) fn new(stream: S, local_port: u16, cert_username: Option<Box<str>>) -> Tagged<S> {
        Tagged { stream, local_port, cert_username, partial: None }
    }

    /// With what tells whether the stream is in the middle of a WebSocket frame or message.
    pub(crate) fn watched(self, partial: PartialInput) -> Tagged<S> {
        Tagged { partial: Some(partial), ..self }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for Tagged<S> {
    fn local_port(&self) -> u16 {
        self.local_port
    }

    fn cert_username(&self) -> Option<&str> {
        self.cert_username.as_deref()
    }

    fn holds_partial_input(&self) -> bool {
        self.partial.as_ref().is_some_and(PartialInput::pending)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tagged<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tagged<S> {
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
