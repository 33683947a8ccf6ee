//! One client connection as rumqttd's connection code sees it: a byte stream whose reads are
//! the client's frames after the host has inspected them, and whose writes reach the client
//! after the host has inspected them, with what the host sends on its own (the session's
//! outbox) put in between frames.
//!
//! The link runs inside rumqttd's connection task: a frame goes from the client's socket to
//! rumqttd's buffer, and from rumqttd's buffer to the socket, with no pipe, no second task and
//! no thread hop in between.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::inspect::{self, Action, Inspector};
use super::Ended;
use crate::mqtt::frame::kind;

/// Bytes waiting for the client above which rumqttd's writes wait for the socket: a slow
/// client slows its own connection down, it does not grow the host's memory.
const OUT_HIGH_WATER: usize = 64 * 1024;

/// Room made in the read buffer before each read from the client.
const READ_CHUNK: usize = 4096;

/// How long rumqttd gets to close a connection itself after the client's DISCONNECT.
const DISCONNECT_LINGER: Duration = Duration::from_secs(5);

/// The client's socket, as rumqttd's stream.
pub(super) struct ClientLink {
    tcp: TcpStream,
    inspector: Inspector,
    max_packet_size: usize,
    /// Bytes from the client; the first `ready` of them are inspected and owed to rumqttd.
    inbound: BytesMut,
    ready: usize,
    /// Nothing more comes from the client: it sent DISCONNECT, closed, or broke the protocol.
    client_done: bool,
    /// Set when the client sent DISCONNECT: the end of the stream is held back until then
    /// (see `poll_read`).
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The start of a frame from rumqttd whose end has not been written yet.
    partial: BytesMut,
    /// Inspected frames on their way to the client.
    out: BytesMut,
    /// The first reason the connection ended for, reported on `on_end` when rumqttd drops
    /// the link (`closed_by_broker` if the link saw none).
    ended: Option<Ended>,
    on_end: Option<oneshot::Sender<Ended>>,
}

impl ClientLink {
    /// A link whose first bytes for rumqttd are `connect` (the client's CONNECT, as the host
    /// passes it on), followed by `rest`, what the client sent after it.
    pub(super) fn new(
        tcp: TcpStream,
        inspector: Inspector,
        max_packet_size: usize,
        connect: &[u8],
        rest: &[u8],
        on_end: oneshot::Sender<Ended>,
    ) -> ClientLink {
        let mut inbound = BytesMut::with_capacity(connect.len() + rest.len().max(READ_CHUNK));
        inbound.extend_from_slice(connect);
        inbound.extend_from_slice(rest);
        ClientLink {
            tcp,
            inspector,
            max_packet_size,
            inbound,
            ready: connect.len(),
            client_done: false,
            linger: None,
            partial: BytesMut::new(),
            out: BytesMut::new(),
            ended: None,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, why: Ended) {
        self.ended.get_or_insert(why);
    }

    /// Inspects the complete frames after the ready ones and makes them ready, as changed.
    fn inspect_inbound(&mut self) -> Result<(), Ended> {
        let start = self.ready;
        if self.inbound.len() == start {
            return Ok(());
        }
        let inspector = &mut self.inspector;
        inspector.start_batch();
        let actions = inspect::plan(&self.inbound[start..], self.max_packet_size, |header, body| {
            inspector.client_frame(header, body)
        })?;
        let Some((last, _, _)) = actions.last() else {
            return Ok(());
        };
        if self.inbound[start + last] >> 4 == kind::DISCONNECT {
            self.client_done = true;
            self.linger = Some(Box::pin(tokio::time::sleep(DISCONNECT_LINGER)));
            self.end(Ended::Normal);
        }
        let len = inspect::planned_len(&actions);
        if actions.iter().all(|(_, _, action)| matches!(action, Action::Forward | Action::ForwardWithoutRetain)) {
            // The usual case: the frames pass as they are, in place.
            for (at, _, action) in &actions {
                if matches!(action, Action::ForwardWithoutRetain) {
                    self.inbound[start + at] &= !0x01;
                }
            }
            self.ready += len;
        } else {
            let rest = self.inbound.split_off(start + len);
            let planned = self.inbound.split_off(start);
            inspect::apply(&planned, &actions, &mut self.inbound);
            self.ready = self.inbound.len();
            self.inbound.extend_from_slice(&rest);
        }
        Ok(())
    }

    /// Queues what the host put in the session's outbox, and asks to be woken for more.
    fn collect_outbox(&mut self, cx: &Context<'_>) {
        let session = &self.inspector.session;
        session.register_writer(cx.waker());
        if let Some(outbox) = session.take_outbox() {
            self.out.extend_from_slice(&outbox);
        }
    }

    /// Writes `out` to the client until it is empty or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn client_gone<T>(&mut self, error: io::Error) -> Poll<io::Result<T>> {
        self.end(Ended::ClientClosed);
        Poll::Ready(Err(error))
    }

    /// A frame broke the protocol (or could not be inspected): the connection ends for it.
    fn frame_failed<T>(&mut self, e: Ended) -> Poll<io::Result<T>> {
        let error = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        self.end(e);
        Poll::Ready(Err(error))
    }

    fn read_failed(&mut self, e: io::Error) -> Poll<io::Result<()>> {
        self.client_done = true;
        let error = io::Error::new(e.kind(), e.to_string());
        self.end(Ended::Io(e));
        Poll::Ready(Err(error))
    }

    /// Inspects frames from rumqttd in `data` (with any partial frame before them) into `out`.
    fn take_from_broker(&mut self, data: &[u8]) -> Result<(), Ended> {
        let inspector = &mut self.inspector;
        inspector.start_batch();
        if self.partial.is_empty() {
            let actions = inspect::plan(data, usize::MAX, |header, body| inspector.broker_frame(header, body))?;
            inspect::apply(data, &actions, &mut self.out);
            self.partial.extend_from_slice(&data[inspect::planned_len(&actions)..]);
        } else {
            self.partial.extend_from_slice(data);
            let actions =
                inspect::plan(&self.partial, usize::MAX, |header, body| inspector.broker_frame(header, body))?;
            inspect::apply(&self.partial, &actions, &mut self.out);
            self.partial.advance(inspect::planned_len(&actions));
        }
        Ok(())
    }
}

impl AsyncRead for ClientLink {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // rumqttd always has a read pending while it waits: the host's own frames go out here.
        this.collect_outbox(cx);
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return this.client_gone(e);
        }
        loop {
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.inbound[..n]);
                this.inbound.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.client_done {
                // After a DISCONNECT, rumqttd's router closes the connection itself. An end of
                // stream here too made rumqttd report a second disconnection for the same
                // connection id, which its router applied to whichever new client had been
                // given that id in between: the newcomer was dropped right after CONNECT.
                if let Some(linger) = &mut this.linger {
                    ready!(linger.as_mut().poll(cx));
                }
                return Poll::Ready(Ok(())); // end of stream
            }
            if let Err(e) = this.inspect_inbound() {
                this.client_done = true;
                return this.frame_failed(e);
            }
            if this.ready > 0 || this.client_done {
                continue;
            }
            if this.inbound.is_empty() {
                match this.tcp.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return this.read_failed(e),
                    Poll::Pending => {
                        // Idle: hold no read buffer until the client has something to say.
                        this.inbound = BytesMut::new();
                        return Poll::Pending;
                    }
                }
            }
            if this.inbound.capacity() - this.inbound.len() < READ_CHUNK / 4 {
                this.inbound.reserve(READ_CHUNK);
            }
            match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.tcp), cx, &mut this.inbound)) {
                Ok(0) => {
                    this.client_done = true;
                    this.end(Ended::ClientClosed);
                }
                Ok(_) => {}
                Err(e) => return this.read_failed(e),
            }
        }
    }
}

impl AsyncWrite for ClientLink {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Err(e)) => return this.client_gone(e),
            Poll::Pending if this.out.len() >= OUT_HIGH_WATER => return Poll::Pending,
            _ => {}
        }
        if let Err(e) = this.take_from_broker(data) {
            return this.frame_failed(e);
        }
        this.collect_outbox(cx);
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return this.client_gone(e);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = ready!(this.poll_drain(cx)) {
            return this.client_gone(e);
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = ready!(this.poll_drain(cx)) {
            return this.client_gone(e);
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl Drop for ClientLink {
    fn drop(&mut self) {
        // rumqttd's last words (a DISCONNECT with a reason, say) may still be here; they go
        // if the socket has room, as they would have had rumqttd written to it directly.
        while !self.out.is_empty() {
            match self.tcp.try_write(&self.out) {
                Ok(n) if n > 0 => self.out.advance(n),
                _ => break,
            }
        }
        if let Some(on_end) = self.on_end.take() {
            let _ = on_end.send(self.ended.take().unwrap_or(Ended::BrokerClosed));
        }
    }
}
