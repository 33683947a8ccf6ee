//! One client connection, served by one task from its CONNECT to its end: the handshake
//! (`handshake`: CONNECT, authentication, session, CONNACK), then a loop that reads the
//! client's packets and acts on them (`inbound`), moves the session's waiting messages onto
//! the wire (`outbound`), answers keep-alive, and ends the connection when the client, the
//! protocol or a takeover says so.
//!
//! Reads and writes go through two buffers the task owns. Both are given back while the
//! connection is idle, and the task stops reading from a client that does not read what it is
//! sent (above 64 KiB waiting): a slow client slows itself down, not the broker. A
//! connection whose PUBLISH filled a subscriber's queue handles no further PUBLISH until that
//! queue drains (`overload`): a slow subscriber slows its publishers down.
//!
//! A packet the client has begun must arrive whole within `mqtt.packet_timeout`, whatever its
//! keep-alive: otherwise a client with keep-alive 0 could hold a read buffer of up to
//! `max_packet_size` forever. The timer costs nothing on the fast path: it is armed only when
//! the connection goes to sleep with part of a packet in its read buffer, and dropped when a
//! packet completes.

mod acl_cache;
mod durable;
mod handshake;
mod inbound;
mod outbound;
mod overload;
pub(crate) mod rate_limit;
mod refill;
mod retry;
mod suspend;
mod transport;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use plugin_api::abi::RawStr;
use plugin_api::Hook;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

pub(crate) use transport::{Tagged, Transport};

use crate::client::ClientInfo;
use crate::metrics::Metric;
use crate::mqtt::disconnect::encode_disconnect;
use crate::mqtt::frame::{kind, parse_header, FrameError};
use crate::mqtt::reason;
use crate::mqtt::Version;
use crate::node::Node;
use crate::session::registry::Will;
use crate::session::Session;
use acl_cache::AclCache;
use outbound::OutgoingAliases;
use suspend::{Next, Suspended};

/// Bytes waiting for the client above which the connection stops reading from it and stops
/// taking messages from its session.
const OUT_HIGH_WATER: usize = 64 * 1024;

/// Room made in the read buffer for each read.
const READ_CHUNK: usize = 4096;

/// How long the last words to a client (a DISCONNECT, acknowledgements) may take to write.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Polls a timer armed only while it is needed (boxed: most connections have none running):
/// true once it has run out, and it is then dropped; false while it runs or when none is
/// armed. The task is woken when it runs out.
fn ran_out(timer: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    let Some(running) = timer.as_mut() else {
        return false;
    };
    if running.as_mut().poll(cx).is_pending() {
        return false;
    }
    *timer = None;
    true
}

/// Why a connection ended. The names are EMQX's disconnect reasons.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The client sent DISCONNECT (reason 0x00): its will is discarded.
    Normal,
    /// The client sent DISCONNECT with another reason (0x04: "with will"): its will goes.
    NormalWithWill,
    /// The client closed the connection without DISCONNECT.
    Closed,
    /// Reading or writing failed.
    Io(io::Error),
    /// Nothing from the client for 1.5 times its keep-alive (MQTT-3.1.2-24).
    KeepAlive,
    /// A packet begun did not arrive whole within `mqtt.packet_timeout`.
    PacketTimeout,
    /// A new connection with the same client id resumed the session: no will.
    TakenOver,
    /// A new connection with the same client id and clean start discarded the session.
    Discarded,
    /// The client broke the protocol; `code` is the MQTT 5 reason.
    Protocol { code: u8, why: &'static str },
    /// A packet over `mqtt.max_packet_size`.
    TooLarge,
    /// The broker is shutting down.
    Shutdown,
    /// An operator kicked the client (`ctl sessions kick`, the management API's DELETE):
    /// MQTT 5's DISCONNECT 0x98, Administrative action; EMQX's reason `kicked`.
    Kicked,
}

impl Ended {
    /// The `reason` of `client.disconnected`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Ended::Normal | Ended::NormalWithWill => "normal",
            Ended::Closed => "tcp_closed",
            Ended::Io(_) => "sock_error",
            Ended::KeepAlive => "keepalive_timeout",
            Ended::PacketTimeout => "packet_timeout",
            Ended::TakenOver => "takeovered",
            Ended::Discarded => "discarded",
            Ended::Protocol { .. } => "protocol_error",
            Ended::TooLarge => "frame_too_large",
            Ended::Shutdown => "server_shutdown",
            Ended::Kicked => "kicked",
        }
    }

    /// The reason code of the DISCONNECT an MQTT 5 client is sent, if the broker ends it.
    fn disconnect_code(&self) -> Option<u8> {
        match self {
            // The closest MQTT 5 reason: the client went quiet in the middle of a packet.
            Ended::KeepAlive | Ended::PacketTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            Ended::TakenOver | Ended::Discarded => Some(reason::SESSION_TAKEN_OVER),
            Ended::Protocol { code, .. } => Some(*code),
            Ended::TooLarge => Some(reason::PACKET_TOO_LARGE),
            Ended::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            Ended::Kicked => Some(reason::ADMINISTRATIVE_ACTION),
            _ => None,
        }
    }

    pub(crate) fn protocol(code: u8, why: &'static str) -> Ended {
        Ended::Protocol { code, why }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Io(e) => write!(f, "sock_error: {e}"),
            Ended::Protocol { why, .. } => write!(f, "protocol_error: {why}"),
            other => f.write_str(other.reason()),
        }
    }
}

/// What woke the connection.
enum Wake {
    /// Something to do: bytes read, messages queued, or room to write again.
    Progress,
    Ended(Ended),
}

/// Serves one client connection until it ends.
///
/// The future lives as long as the connection, in its task: every byte of it is paid by
/// every idle client. So the handshake and the ending are boxed (their state would otherwise
/// make it bigger for all of its life), and it is built from the boxed handshake rather than
/// written as an `async fn`, which would keep its arguments beside the handshake they go to.
pub(crate) fn serve<T: Transport>(node: Arc<Node>, io: T, peer: SocketAddr) -> impl Future<Output = ()> {
    let handshake = Box::pin(async move { handshake::handshake(&node, io, peer).await });
    async move {
        let Some(mut connection) = handshake.await else {
            return;
        };
        let ended = connection.run().await;
        Box::pin(connection.finish(ended)).await;
    }
}

/// A connected client (after a successful CONNACK).
struct Connection<T> {
    node: Arc<Node>,
    io: T,
    /// Unique per connection.
    id: u64,
    client: Arc<ClientInfo>,
    session: Arc<Session>,
    version: Version,
    /// Bytes from the client not yet handled.
    inbound: BytesMut,
    /// Bytes for the client not yet written.
    out: BytesMut,
    /// 1.5 times the keep-alive; `None` when keep-alive is off (0).
    keep_alive: Option<Duration>,
    last_packet: Instant,
    keep_alive_timer: Option<Pin<Box<Sleep>>>,
    /// Runs while part of a packet waits in `inbound` (see [`Connection::poll_packet_timeout`]).
    packet_timer: Option<Pin<Box<Sleep>>>,
    /// MQTT 5 limits the client announced.
    client_receive_maximum: u16,
    client_max_packet_size: usize,
    /// MQTT 5: the client wants reason strings (Request Problem Information).
    problem_information: bool,
    /// Topic aliases the client set (MQTT 5), from the first one it sets: boxed and made on
    /// demand, as most clients never set one (an idle connection holds no table).
    aliases_in: Option<Box<inbound::IncomingAliases>>,
    /// Topic aliases the broker sets for the client, when it takes any (MQTT 5 Topic Alias
    /// Maximum above 0).
    aliases_out: Option<Box<OutgoingAliases>>,
    acl_cache: Option<AclCache>,
    /// Authenticated as a superuser: no `client.check_acl` for its publishes and
    /// subscriptions (EMQX's `is_superuser`).
    superuser: bool,
    /// Boxed: most clients have none, and every byte here is paid by every idle client.
    will: Option<Box<Will>>,
    /// The CONNECT's Session Expiry Interval was 0: a DISCONNECT may not raise it.
    expiry_was_zero: bool,
    /// The clock for the frames being handled (read once a batch: a clock read a message
    /// was 3 % of the broker's time in a QoS 0 flood).
    now: Instant,
    /// The same moment, in milliseconds since the Unix epoch.
    now_ms: u64,
    /// Messages just written, for `message.delivered` (kept to reuse its allocation).
    delivered: Vec<outbound::Delivered>,
    /// Set while overload protection holds the connection's PUBLISHes back.
    congestion: Option<Box<overload::Congestion>>,
    /// The last wake pulled new messages instead of writing first (see `poll_wake`).
    write_deferred: bool,
    /// Set while PUBLISHes wait for `message.publish` answered later, pipelined (`suspend`):
    /// only QoS 0 and 1 PUBLISHes are handled, each handed back to wait behind the others.
    pipelining: bool,
    /// Acknowledgements waiting for the store (`durable`); boxed, made on demand.
    held: Option<Box<durable::Held>>,
    /// Holds a QoS 1/2 subscriber's window refill back until a quarter of it is free
    /// (`refill`).
    refill: refill::RefillHold,
    /// Sends unacknowledged messages again to an MQTT 3.1.1 client (`retry`).
    retry: retry::RetryTimer,
    /// `mqtt.rate_limit`, when set: boxed, as most brokers run without.
    limiter: Option<Box<rate_limit::Limiter>>,
}

impl<T: Transport> Connection<T> {
    async fn run(&mut self) -> Ended {
        loop {
            // Nothing more for a session another connection took (it may have been stuck).
            if let Some(ended) = self.kicked() {
                return ended;
            }
            match self.handle_input() {
                Ok(None) => {}
                Ok(Some(waiting)) => {
                    // A packet waits for a hook chain that may block: this client's input
                    // waits with it (handled in order afterwards), other clients do not.
                    // Boxed: its state costs the task nothing while no packet waits.
                    let resumed = if self.pipelines(&waiting) {
                        Box::pin(self.resume_publishes(waiting)).await
                    } else {
                        Box::pin(self.resume(waiting)).await
                    };
                    if let Err(ended) = resumed {
                        return ended;
                    }
                    continue;
                }
                Err(ended) => return ended,
            }
            // What this round wrote to the store is committed once, for all of it.
            self.flush_held();
            self.pull_deliveries();
            self.flush_held();
            match std::future::poll_fn(|cx| self.poll_wake(cx)).await {
                Wake::Progress => {}
                // Boxed, as `resume`: only a connection with parked frames needs its state.
                Wake::Ended(ended) => return Box::pin(self.end_parked(ended)).await,
            }
        }
    }

    /// Handles every complete packet in the read buffer (parked ones first), up to one that
    /// waits for a hook chain that may block (returned, for [`Connection::resume`]).
    fn handle_input(&mut self) -> Result<Option<Box<Suspended>>, Ended> {
        if let Some(waiting) = self.handle_parked()? {
            return Ok(Some(waiting));
        }
        if self.inbound.is_empty() {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.inbound);
        let result = self.handle_frames(&mut buf, false);
        self.inbound = buf;
        result
    }

    /// Handles the complete frames in `buf`, which holds frames parked before when `parked`
    /// (see `overload`): those stop at a PUBLISH that must wait; frames just read are parked
    /// instead while anything is. Stops after a packet that waits for a hook chain that may
    /// block, and returns it.
    fn handle_frames(&mut self, buf: &mut BytesMut, parked: bool) -> Result<Option<Box<Suspended>>, Ended> {
        self.now = Instant::now();
        self.now_ms = crate::now_ms();
        let mut handled = false;
        let result = loop {
            let header = match parse_header(buf, self.node.zone.max_packet_size) {
                Ok(Some(header)) => header,
                Ok(None) => break Ok(None),
                Err(FrameError::TooLarge { .. }) => break Err(Ended::TooLarge),
                Err(FrameError::MalformedLength | FrameError::ReservedType) => {
                    break Err(Ended::protocol(reason::MALFORMED_PACKET, "malformed fixed header"))
                }
            };
            if buf.len() < header.frame_len() {
                buf.reserve(header.frame_len() - buf.len());
                break Ok(None);
            }
            if self.pipelining && !(header.kind() == kind::PUBLISH && header.qos() < 2) {
                // Waits for the pipelined PUBLISHes ahead of it (see `suspend`).
                break Ok(None);
            }
            if !overload::overtakes(header.kind()) {
                if parked && self.must_wait() {
                    break Ok(None);
                }
                if !parked && self.parking() {
                    self.park(&buf[..header.frame_len()]);
                    buf.advance(header.frame_len());
                    handled = true;
                    continue;
                }
            }
            if header.kind() == kind::PUBLISH
                && self.limiter.as_deref_mut().is_some_and(|limiter| !limiter.admit_message(self.now))
            {
                // Over `mqtt.rate_limit.conn_messages_in`: it waits in the buffer, with what
                // follows it, until the limit allows it.
                break Ok(None);
            }
            handled = true;
            self.node.stats.metrics.packet_received(header.kind(), header.qos());
            let outcome = self.handle_packet(&header, &buf[header.header_len..header.frame_len()]);
            buf.advance(header.frame_len());
            match outcome {
                Ok(Next::Done) => {}
                Ok(Next::Wait(waiting)) => break Ok(Some(waiting)),
                Err(ended) => break Err(ended),
            }
        };
        if handled {
            self.last_packet = self.now;
            // The packet that was waiting arrived; the next one gets its own deadline.
            self.packet_timer = None;
        }
        result
    }

    /// Why the connection must end now, if it was told to or no longer serves its session.
    fn kicked(&self) -> Option<Ended> {
        let (code, discard) = self.session.kicked(self.id)?;
        Some(match code {
            reason::SESSION_TAKEN_OVER if discard => Ended::Discarded,
            reason::SESSION_TAKEN_OVER => Ended::TakenOver,
            reason::SERVER_SHUTTING_DOWN => Ended::Shutdown,
            reason::ADMINISTRATIVE_ACTION => Ended::Kicked,
            code => Ended::protocol(code, "kicked"),
        })
    }

    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        if let Some(ended) = self.kicked() {
            return Poll::Ready(Wake::Ended(ended));
        }
        match self.poll_held(cx) {
            Poll::Ready(Err(ended)) => return Poll::Ready(Wake::Ended(ended)),
            Poll::Ready(Ok(())) => return Poll::Ready(Wake::Progress),
            Poll::Pending => {}
        }
        let pending = self.session.poll_pending(cx.waker());
        // Writes are batched: when more was queued meanwhile, it is pulled first and written
        // with what waits (one round at most: a stream of new messages never holds back what
        // is already encoded).
        if pending && !self.write_deferred && self.out.len() < OUT_HIGH_WATER {
            self.write_deferred = true;
            return Poll::Ready(Wake::Progress);
        }
        self.write_deferred = false;
        let was_full = self.out.len() >= OUT_HIGH_WATER;
        if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
            return Poll::Ready(Wake::Ended(Ended::Io(e)));
        }
        if pending || (was_full && self.out.len() < OUT_HIGH_WATER) {
            return Poll::Ready(Wake::Progress);
        }
        if self.congestion.is_some() && self.poll_room(cx) {
            return Poll::Ready(Wake::Progress);
        }
        let limited = match self.limiter.as_deref_mut().map(|limiter| limiter.poll_pause(cx)) {
            // What waited in the buffer for the limit is handled now.
            Some(rate_limit::Pause::Ended) => return Poll::Ready(Wake::Progress),
            Some(rate_limit::Pause::Waiting) => true,
            Some(rate_limit::Pause::None) | None => false,
        };
        if !limited && self.out.len() < OUT_HIGH_WATER && self.parked_len() < overload::PARK_HIGH_WATER {
            match self.poll_read(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Wake::Ended(Ended::Closed)),
                Poll::Ready(Ok(_)) => return Poll::Ready(Wake::Progress),
                Poll::Ready(Err(e)) => return Poll::Ready(Wake::Ended(Ended::Io(e))),
                Poll::Pending => {}
            }
            if self.poll_packet_timeout(cx) {
                return Poll::Ready(Wake::Ended(Ended::PacketTimeout));
            }
        } else {
            // Not reading (the broker holds the client back): no deadline runs against it.
            self.packet_timer = None;
        }
        if let Some(ended) = self.poll_keep_alive(cx) {
            return Poll::Ready(Wake::Ended(ended));
        }
        if self.refill.poll_expired(cx) {
            return Poll::Ready(Wake::Progress);
        }
        if self.retry.poll_due(cx) {
            // Sent by the next `pull_deliveries`, which starts the next round.
            self.session.lock().inflight.mark_overdue();
            return Poll::Ready(Wake::Progress);
        }
        // Idle: hold no buffers.
        if self.held.as_deref().is_some_and(durable::Held::is_idle) {
            self.held = None;
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        if self.inbound.is_empty() && self.inbound.capacity() > 0 {
            self.inbound = BytesMut::new();
        }
        Poll::Pending
    }

    /// Writes what is waiting, until it is all written or the socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.node.stats.metrics.add(Metric::BytesSent, n as u64);
            self.out.advance(n);
        }
        // TLS and WebSocket streams may hold written bytes back until flushed.
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads what the client sent; `Ok(0)` when it closed the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.inbound.is_empty() {
            ready!(self.io.poll_read_ready(cx))?;
        }
        if self.inbound.capacity() - self.inbound.len() < READ_CHUNK / 4 {
            self.inbound.reserve(READ_CHUNK);
        }
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.inbound);
        if let Poll::Ready(Ok(n)) = read {
            self.node.stats.metrics.add(Metric::BytesReceived, n as u64);
            if let Some(limiter) = self.limiter.as_deref_mut() {
                limiter.took_bytes(n);
            }
        }
        read
    }

    /// Whether the packet waiting in part in `inbound` (or in the transport: a WebSocket frame
    /// begun) is overdue. Called when the connection is
    /// about to sleep with nothing left to read: arms the timer the first time a partial
    /// packet stays across a wake.
    fn poll_packet_timeout(&mut self, cx: &mut Context<'_>) -> bool {
        if self.inbound.is_empty() && !self.io.holds_partial_input() {
            self.packet_timer = None;
            return false;
        }
        let timeout = self.node.zone.packet_timeout;
        let timer = self.packet_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        timer.as_mut().poll(cx).is_ready()
    }

    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> Option<Ended> {
        // While its input is not read (overload protection, a rate limit), the client is not
        // timed out.
        let not_read = self.parked_len() >= overload::PARK_HIGH_WATER
            || self.limiter.as_deref().is_some_and(rate_limit::Limiter::is_paused);
        let (Some(keep_alive), Some(timer)) = (self.keep_alive, self.keep_alive_timer.as_mut()) else {
            return None;
        };
        while timer.as_mut().poll(cx).is_ready() {
            if not_read {
                self.last_packet = Instant::now();
            }
            let deadline = self.last_packet + keep_alive;
            if Instant::now() >= deadline {
                return Some(Ended::KeepAlive);
            }
            timer.as_mut().reset(deadline.into());
        }
        None
    }

    /// Ends the connection: tells an MQTT 5 client why, hands the will and the session over,
    /// writes what is left and closes.
    async fn finish(mut self, ended: Ended) {
        // Writes made and not yet committed (a delivered message's removal) still go.
        self.flush_held();
        if self.version.is_v5() {
            if let Some(code) = ended.disconnect_code() {
                let reason_string = self
                    .problem_information
                    .then(|| reason::string_within(code, 4, self.client_max_packet_size))
                    .flatten();
                encode_disconnect(&mut self.out, code, reason_string);
                self.node.stats.metrics.packet_sent(kind::DISCONNECT, code);
            }
        }
        // No will after a normal DISCONNECT (MQTT-3.14.4-3), nor when a new connection resumes
        // the session: the client is back before its will was due (MQTT-3.1.3-9 (5) with any
        // delay; MQTT 3.1.1's §3.1.2.5 does not list a takeover), as mosquitto and EMQX do. A
        // takeover that discards the session publishes it. When the broker stops, the will goes
        // as for any close the client did not ask for (MQTT-3.1.2-8), as EMQX and mosquitto
        // send it: now, or, delayed in a persistent session, kept in the store and sent when
        // due after the restart unless the client is back first.
        let will = match ended {
            Ended::Normal | Ended::TakenOver => None,
            _ => self.will.take().map(|w| *w),
        };
        let taken_over = matches!(ended, Ended::TakenOver | Ended::Discarded);
        let node = self.node.clone();
        // Before the session is handed over: a connection that takes it over (or discards it)
        // runs its session hooks after this one's `client.disconnected`, as EMQX orders them.
        if node.hooks.wants(Hook::ClientDisconnected) {
            let mut event = self.client.event(Hook::ClientDisconnected, crate::now_ms());
            event.reason = RawStr::new(ended.reason());
            node.hooks.dispatch(&event);
        }
        let session_ended = node.sessions.close(&node, &self.session, self.id, &self.client, will, taken_over);
        if session_ended {
            node.session_terminated(&self.client, &self.client.client_id, ended.reason());
        }
        tracing::debug!(client_id = ?crate::log_limit::clipped(&self.client.client_id), "connection ended: {ended}");
        // Write what is left, then read (and drop) until the client closes: closing with its
        // bytes unread would reset the connection, and the client could lose our last words.
        let (out, io) = (&self.out, &mut self.io);
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, async move {
            io.write_all(out).await?;
            io.shutdown().await?;
            let mut sink = [0u8; 256];
            while io.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
        // Counted until its socket is done with: `connections.count` is what is open.
        node.stats.client_disconnected();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection lives inline in its task's future (see `listener::Counted`): each byte
    /// of it is paid by every idle client. About 400 bytes; what only some clients need (a
    /// will, state that grows) belongs behind a pointer or in a collection that starts empty.
    #[test]
    fn a_tcp_connection_stays_small() {
        let size = std::mem::size_of::<Connection<tokio::net::TcpStream>>();
        assert!(size <= 448, "Connection<TcpStream> is {size} bytes (limit 448)");
    }
}
