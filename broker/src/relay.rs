//! The client-facing listener. Each client connection is relayed, frame by frame, to the
//! embedded rumqttd; hooks fire on the frames that pass. Frames are forwarded unchanged, in
//! batches (one write for everything one read delivered), except where the host must step in:
//!
//! - a PUBLISH a plugin dropped (or the ACL denied) is acknowledged by the host, not forwarded;
//! - the retain flag of a PUBLISH is cleared on its way to rumqttd: retaining is
//!   `emqx_retainer`'s job, so with it unloaded the broker does not retain (as in EMQX);
//! - topic filters the ACL denies, and `$` filters (`$SYS/#`, which rumqttd refuses), are
//!   taken out of a SUBSCRIBE; the host serves `$` subscriptions itself and merges its codes
//!   into rumqttd's SUBACK (0x80 for a denied filter).
//!
//! rumqttd's own connection code serves each client over a `link::ClientLink`: the client's
//! socket as rumqttd's stream, with `inspect::Inspector` looking at every frame on its way
//! through. What the host sends on its own goes through the session's outbox (see `sessions`)
//! and the link puts it on the wire between frames.

mod acl_cache;
mod inspect;
mod link;

pub use acl_cache::AclCacheSettings;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use plugin_api::abi::{RawBytes, RawStr};
use plugin_api::Hook;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::hooks::{Hooks, Verdict};
use crate::mqtt::frame::{kind, parse_header, FrameError, FrameHeader};
use crate::mqtt::packet::{self, Connect, PacketError};
use crate::router::{Publisher, Router};
use crate::sessions::{Identity, Registry, Session};
use crate::stats::Stats;
use inspect::Inspector;
use link::ClientLink;

/// Relay limits.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Largest MQTT packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: Duration,
    /// Per-connection cache of `client.check_acl` answers; `None`: ask every time.
    pub acl_cache: Option<AclCacheSettings>,
}

/// What the relay shares between connections.
#[derive(Debug)]
pub struct Relay {
    pub settings: RelaySettings,
    pub hooks: Arc<Hooks>,
    pub stats: Arc<Stats>,
    pub router: Router,
    pub publisher: Publisher,
    pub registry: Registry,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("normal")]
    Normal,
    #[error("tcp_closed")]
    ClientClosed,
    #[error("closed_by_broker")]
    BrokerClosed,
    #[error("protocol_error: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol_error: {0}")]
    Packet(#[from] PacketError),
    #[error("io_error: {0}")]
    Io(#[from] std::io::Error),
}

impl Ended {
    fn reason(&self) -> &'static str {
        match self {
            Ended::Normal => "normal",
            Ended::ClientClosed => "tcp_closed",
            Ended::BrokerClosed => "closed_by_broker",
            Ended::Frame(_) | Ended::Packet(_) => "protocol_error",
            Ended::Io(_) => "sock_error",
        }
    }
}

/// Accepts clients forever.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let relay = relay.clone();
                tokio::spawn(async move { relay.handle(socket, peer).await });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads from `reader` into `buf` until one complete frame is at its start.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<FrameHeader, Ended> {
    loop {
        if let Some(header) = parse_header(buf, max)? {
            if buf.len() >= header.frame_len() {
                return Ok(header);
            }
            buf.reserve(header.frame_len() - buf.len());
        }
        if reader.read_buf(buf).await? == 0 {
            return Err(Ended::ClientClosed);
        }
    }
}

impl Relay {
    /// Publishes as the broker: `$` topics to the host's own subscribers, others into rumqttd.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Result<(), String> {
        if topic.starts_with('$') {
            for (session, sub_qos) in self.registry.sys_subscribers(topic) {
                self.send_to(&session, topic, payload, qos.min(sub_qos), false);
            }
            Ok(())
        } else {
            let _ = retain; // never retained by rumqttd: see the module docs
            self.publisher.publish(topic, payload, qos, false).map_err(|e| e.to_string())
        }
    }

    /// Delivers a message to one client; false if it is not connected.
    pub fn deliver(&self, client_id: &str, topic: &str, payload: &[u8], qos: u8, retain: bool) -> bool {
        match self.registry.get(client_id) {
            Some(session) => {
                self.send_to(&session, topic, payload, qos, retain);
                true
            }
            None => false,
        }
    }

    fn send_to(&self, session: &Session, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        session.send_publish(topic, payload, qos, retain);
        self.stats.message_sent();
        if self.hooks.wants(Hook::MessageDelivered) {
            let mut event = session.event(Hook::MessageDelivered);
            event.topic = RawStr::new(topic);
            event.payload = RawBytes::new(payload);
            event.qos = qos;
            event.retain = retain as u8;
            self.hooks.dispatch(&event);
        }
    }

    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let Some((session, ended)) = self.start_connection(client, peer).await else {
            return;
        };
        let ended = ended.await.unwrap_or(Ended::BrokerClosed);
        if session.connected.load(Ordering::SeqCst) {
            self.registry.unregister(&session);
            self.stats.client_disconnected();
            if self.hooks.wants(Hook::ClientDisconnected) {
                let mut event = session.event(Hook::ClientDisconnected);
                event.reason = RawStr::new(ended.reason());
                self.hooks.dispatch(&event);
            }
        }
        tracing::debug!(client_id = session.identity.client_id, "connection ended: {ended}");
    }

    /// Reads the CONNECT, admits the client and hands the connection to rumqttd; the
    /// receiver says why it ended. `None` if the client never got that far.
    async fn start_connection(
        self: &Arc<Self>,
        mut client: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Arc<Session>, oneshot::Receiver<Ended>)> {
        let _ = client.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(4096);
        let first = tokio::time::timeout(
            self.settings.connect_timeout,
            read_frame(&mut client, &mut buf, self.settings.max_packet_size),
        )
        .await;
        let header = match first {
            Ok(Ok(header)) if header.kind() == kind::CONNECT => header,
            Ok(Ok(header)) => {
                tracing::debug!(%peer, "first packet is type {}, not CONNECT; closing", header.kind());
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "closed before CONNECT: {e}");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "no CONNECT within {:?}; closing", self.settings.connect_timeout);
                return None;
            }
        };
        let frame = buf.split_to(header.frame_len()).freeze();
        let body = &frame[header.header_len..];
        let connect = match packet::decode_connect(body) {
            Ok(connect) => connect,
            Err(e) => {
                tracing::debug!(%peer, "bad CONNECT: {e}; closing");
                return None;
            }
        };
        let session = Arc::new(Session::new(self.new_session(&connect, peer)));
        if !self.admit(&connect, &session, &mut client).await {
            return None;
        }

        // rumqttd drops keep-alive 0 ("no keep-alive", legal MQTT); give it the longest one.
        // An empty client id (3.1.1 clean session) gets a generated one so hooks can name it.
        // A will is never retained by rumqttd (retaining is emqx_retainer's job).
        let needs_rewrite =
            connect.keepalive == 0 || session.identity.client_id != connect.client_id || connect.will_retain;
        let connect_frame = if needs_rewrite {
            let keepalive = if connect.keepalive == 0 { u16::MAX } else { connect.keepalive };
            packet::rewrite_connect(header.first_byte, body, &connect, keepalive, &session.identity.client_id)
        } else {
            frame.to_vec()
        };
        let level = connect.level;

        // rumqttd's own connection code serves the client through the link, on a task of its
        // own: after the link is gone it may still wait out an MQTT 5 will delay.
        let handler = if level == 5 { self.router.v5.clone() } else { self.router.v4.clone() };
        let (on_end, ended) = oneshot::channel();
        let inspector = Inspector::new(self.clone(), session.clone());
        let link = ClientLink::new(client, inspector, self.settings.max_packet_size, &connect_frame, &buf, on_end);
        tokio::spawn(async move { handler.serve(link).await });
        Some((session, ended))
    }

    fn new_session(&self, connect: &Connect<'_>, peer: SocketAddr) -> Identity {
        let client_id = if connect.client_id.is_empty() && connect.level < 5 {
            format!("auto-{}", crate::unique_suffix())
        } else {
            connect.client_id.to_owned()
        };
        Identity {
            client_id,
            username: connect.username.unwrap_or_default().to_owned(),
            peer: peer.to_string(),
            proto_ver: connect.level,
            keepalive: connect.keepalive,
            clean_start: connect.clean_start,
            expiry_interval: connect.session_expiry,
        }
    }

    /// Runs `client.connect` and `client.authenticate`; refuses the client if denied.
    async fn admit(&self, connect: &Connect<'_>, session: &Session, client: &mut TcpStream) -> bool {
        if self.hooks.wants(Hook::ClientConnect) {
            self.hooks.dispatch(&session.event(Hook::ClientConnect));
        }
        if !self.hooks.wants(Hook::ClientAuthenticate) {
            return true;
        }
        let mut event = session.event(Hook::ClientAuthenticate);
        event.password = RawBytes::new(connect.password.unwrap_or_default());
        if self.hooks.dispatch(&event) != Verdict::Deny {
            return true;
        }
        tracing::info!(client_id = session.identity.client_id, peer = session.identity.peer, "authentication denied");
        let _ = client.write_all(&packet::connack_not_authorized(connect.level)).await;
        let _ = client.shutdown().await;
        false
    }
}
