//! The client-facing listener. Each client connection is relayed, frame by frame, to the
//! embedded rumqttd; hooks fire on the frames that pass. Frames are forwarded unchanged, in
//! batches (one write for everything one read delivered), unless a hook drops a message.
//!
//! One connection is two pumps: client → broker (`ClientPump`) and broker → client
//! (`BrokerPump`). The client's write half is shared (behind an async mutex) because the host
//! itself answers a client in two cases: a refused CONNECT and the acknowledgement of a
//! message a plugin dropped.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use plugin_api::abi::{self, RawBytes, RawEvent, RawStr};
use plugin_api::Hook;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::hooks::{Hooks, Verdict};
use crate::mqtt::frame::{kind, parse_header, FrameError, FrameHeader};
use crate::mqtt::packet::{self, Connect, PacketError};
use crate::router::Router;
use crate::stats::Stats;

/// Relay limits.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Largest MQTT packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: Duration,
}

/// What the relay shares between connections.
#[derive(Debug)]
pub struct Relay {
    pub settings: RelaySettings,
    pub hooks: Arc<Hooks>,
    pub stats: Arc<Stats>,
    pub router: Router,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

/// Who a connection is, for hook events.
#[derive(Debug)]
struct Session {
    client_id: String,
    username: String,
    peer: String,
    proto_ver: u8,
    keepalive: u16,
    clean_start: bool,
    expiry_interval: u32,
    /// Set when rumqttd accepted the connection (CONNACK success).
    connected: AtomicBool,
}

impl Session {
    fn event(&self, hook: Hook) -> RawEvent {
        RawEvent {
            size: std::mem::size_of::<RawEvent>() as u32,
            hook: hook as u32,
            client_id: RawStr::new(&self.client_id),
            username: RawStr::new(&self.username),
            password: RawBytes::EMPTY,
            peer: RawStr::new(&self.peer),
            topic: RawStr::EMPTY,
            payload: RawBytes::EMPTY,
            qos: 0,
            retain: 0,
            proto_ver: self.proto_ver,
            clean_start: self.clean_start as u8,
            keepalive: self.keepalive,
            packet_id: 0,
            return_code: 0,
            expiry_interval: self.expiry_interval,
            acl_action: 0,
            reason: RawStr::EMPTY,
            timestamp_ms: now_ms(),
        }
    }
}

/// Subscriptions and unsubscriptions waiting for their SUBACK / UNSUBACK, by packet id.
#[derive(Debug, Default)]
struct Pending {
    subscribes: HashMap<u16, Vec<(String, u8)>>,
    unsubscribes: HashMap<u16, Vec<String>>,
}

type ClientWriter = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

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
    async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
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
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "closed before CONNECT: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no CONNECT within {:?}; closing", self.settings.connect_timeout);
                return;
            }
        };
        let frame = buf.split_to(header.frame_len()).freeze();
        let body = &frame[header.header_len..];
        let connect = match packet::decode_connect(body) {
            Ok(connect) => connect,
            Err(e) => {
                tracing::debug!(%peer, "bad CONNECT: {e}; closing");
                return;
            }
        };
        let session = Arc::new(self.session(&connect, peer));
        if !self.admit(&connect, &session, &mut client).await {
            return;
        }

        // rumqttd drops keep-alive 0 ("no keep-alive", legal MQTT); give it the longest one.
        // An empty client id (3.1.1 clean session) gets a generated one so hooks can name it.
        let needs_rewrite = connect.keepalive == 0 || session.client_id != connect.client_id;
        let connect_frame = if needs_rewrite {
            let keepalive = if connect.keepalive == 0 {
                u16::MAX
            } else {
                connect.keepalive
            };
            packet::rewrite_connect(
                header.first_byte,
                body,
                &connect,
                keepalive,
                &session.client_id,
            )
        } else {
            frame.to_vec()
        };
        let level = connect.level;

        let upstream_addr = if level == 5 {
            self.router.v5
        } else {
            self.router.v4
        };
        let mut upstream = match TcpStream::connect(upstream_addr).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::error!("cannot reach the embedded router at {upstream_addr}: {e}");
                let refuse = if level == 5 {
                    [0x20, 3, 0, 0x88, 0].to_vec()
                } else {
                    vec![0x20, 2, 0, 3]
                };
                let _ = client.write_all(&refuse).await;
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        if upstream.write_all(&connect_frame).await.is_err() {
            return;
        }

        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = upstream.into_split();
        let client_write: ClientWriter = Arc::new(tokio::sync::Mutex::new(client_write));
        let pending = Arc::new(Mutex::new(Pending::default()));

        let mut broker_pump = tokio::spawn(
            BrokerPump {
                relay: self.clone(),
                session: session.clone(),
                pending: pending.clone(),
            }
            .run(upstream_read, client_write.clone()),
        );
        let client_pump = ClientPump {
            relay: self.clone(),
            session: session.clone(),
            pending,
            client_writer: client_write,
            aliases: HashMap::new(),
            dropped_qos2: HashSet::new(),
        }
        .run(client_read, upstream_write, buf);

        let ended = tokio::select! {
            ended = client_pump => {
                broker_pump.abort();
                ended
            }
            joined = &mut broker_pump => match joined {
                Ok(ended) => ended,
                Err(e) => Ended::Io(std::io::Error::other(e.to_string())),
            },
        };
        if session.connected.load(Ordering::SeqCst) {
            self.stats.client_disconnected();
            if self.hooks.wants(Hook::ClientDisconnected) {
                let mut event = session.event(Hook::ClientDisconnected);
                let reason = ended.reason();
                event.reason = RawStr::new(reason);
                self.hooks.dispatch(&event);
            }
        }
        tracing::debug!(client_id = session.client_id, "connection ended: {ended}");
    }

    fn session(&self, connect: &Connect<'_>, peer: SocketAddr) -> Session {
        let client_id = if connect.client_id.is_empty() && connect.level < 5 {
            format!("auto-{:016x}", rand_u64())
        } else {
            connect.client_id.to_owned()
        };
        Session {
            client_id,
            username: connect.username.unwrap_or_default().to_owned(),
            peer: peer.to_string(),
            proto_ver: connect.level,
            keepalive: connect.keepalive,
            clean_start: connect.clean_start,
            expiry_interval: connect.session_expiry,
            connected: AtomicBool::new(false),
        }
    }

    /// Runs `client.connect` and `client.authenticate`; refuses the client if denied.
    async fn admit(
        &self,
        connect: &Connect<'_>,
        session: &Session,
        client: &mut TcpStream,
    ) -> bool {
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
        tracing::info!(
            client_id = session.client_id,
            peer = session.peer,
            "authentication denied"
        );
        let _ = client
            .write_all(&packet::connack_not_authorized(connect.level))
            .await;
        let _ = client.shutdown().await;
        false
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Client → broker.
struct ClientPump {
    relay: Arc<Relay>,
    session: Arc<Session>,
    pending: Arc<Mutex<Pending>>,
    client_writer: ClientWriter,
    /// MQTT 5 topic aliases the client set.
    aliases: HashMap<u16, String>,
    /// QoS 2 messages a plugin dropped: their PUBREL is answered here.
    dropped_qos2: HashSet<u16>,
}

impl ClientPump {
    async fn run(
        mut self,
        mut reader: OwnedReadHalf,
        mut upstream: OwnedWriteHalf,
        mut buf: BytesMut,
    ) -> Ended {
        let max = self.relay.settings.max_packet_size;
        loop {
            // Forward every complete frame in the buffer, in as few writes as possible.
            let mut pos = 0;
            let mut forward_from = 0;
            while let Some(header) = match parse_header(&buf[pos..], max) {
                Ok(h) => h.filter(|h| buf.len() - pos >= h.frame_len()),
                Err(e) => return e.into(),
            } {
                let frame = &buf[pos..pos + header.frame_len()];
                let action = match self.inspect(&header, &frame[header.header_len..]) {
                    Ok(action) => action,
                    Err(e) => return e.into(),
                };
                if let Some(reply) = action.reply {
                    if upstream.write_all(&buf[forward_from..pos]).await.is_err() {
                        return Ended::BrokerClosed;
                    }
                    forward_from = pos + header.frame_len();
                    if self
                        .client_writer
                        .lock()
                        .await
                        .write_all(&reply)
                        .await
                        .is_err()
                    {
                        return Ended::ClientClosed;
                    }
                } else if action.skip {
                    if upstream.write_all(&buf[forward_from..pos]).await.is_err() {
                        return Ended::BrokerClosed;
                    }
                    forward_from = pos + header.frame_len();
                }
                pos += header.frame_len();
                if header.kind() == kind::DISCONNECT {
                    let _ = upstream.write_all(&buf[forward_from..pos]).await;
                    let _ = upstream.shutdown().await;
                    return Ended::Normal;
                }
            }
            if forward_from < pos && upstream.write_all(&buf[forward_from..pos]).await.is_err() {
                return Ended::BrokerClosed;
            }
            buf.advance(pos);
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => return Ended::ClientClosed,
                Ok(_) => {}
                Err(e) => return e.into(),
            }
        }
    }

    /// Fires the hooks for one frame from the client and says what to do with it.
    fn inspect(&mut self, header: &FrameHeader, body: &[u8]) -> Result<Action, PacketError> {
        let v5 = self.session.proto_ver == 5;
        let hooks = &self.relay.hooks;
        match header.kind() {
            kind::PUBLISH => {
                self.relay.stats.message_received();
                let check_acl = hooks.wants(Hook::ClientCheckAcl);
                if !check_acl
                    && !hooks.wants(Hook::MessagePublish)
                    && !hooks.wants(Hook::MessageDropped)
                {
                    return Ok(Action::FORWARD);
                }
                let publish = packet::decode_publish(header.flags(), body, v5)?;
                let topic = match (publish.topic, publish.topic_alias) {
                    ("", Some(alias)) => self.aliases.get(&alias).map(String::as_str).unwrap_or(""),
                    (topic, Some(alias)) => {
                        self.aliases.insert(alias, topic.to_owned());
                        topic
                    }
                    (topic, None) => topic,
                };
                let mut event = self.session.event(Hook::MessagePublish);
                event.topic = RawStr::new(topic);
                event.payload = RawBytes::new(publish.payload);
                event.qos = publish.qos;
                event.retain = publish.retain as u8;
                event.packet_id = publish.packet_id;
                let mut verdict = Verdict::Continue;
                if check_acl {
                    let acl = RawEvent {
                        hook: Hook::ClientCheckAcl as u32,
                        acl_action: abi::ACL_PUBLISH,
                        ..event
                    };
                    if hooks.dispatch(&acl) == Verdict::Deny {
                        verdict = Verdict::Drop;
                    }
                }
                if verdict == Verdict::Continue && hooks.wants(Hook::MessagePublish) {
                    verdict = hooks.dispatch(&event);
                }
                if verdict != Verdict::Drop {
                    return Ok(Action::FORWARD);
                }
                if hooks.wants(Hook::MessageDropped) {
                    hooks.dispatch(&RawEvent {
                        hook: Hook::MessageDropped as u32,
                        ..event
                    });
                }
                // The publisher still gets its acknowledgement.
                Ok(match publish.qos {
                    0 => Action::SKIP,
                    1 => Action::reply(packet::ack(kind::PUBACK, publish.packet_id)),
                    _ => {
                        self.dropped_qos2.insert(publish.packet_id);
                        Action::reply(packet::ack(kind::PUBREC, publish.packet_id))
                    }
                })
            }
            kind::PUBREL if !self.dropped_qos2.is_empty() => {
                let id = packet::decode_packet_id(body)?;
                if self.dropped_qos2.remove(&id) {
                    Ok(Action::reply(packet::ack(kind::PUBCOMP, id)))
                } else {
                    Ok(Action::FORWARD)
                }
            }
            kind::PUBACK | kind::PUBCOMP if hooks.wants(Hook::MessageAcked) => {
                let mut event = self.session.event(Hook::MessageAcked);
                event.packet_id = packet::decode_packet_id(body)?;
                hooks.dispatch(&event);
                Ok(Action::FORWARD)
            }
            kind::SUBSCRIBE => {
                let (packet_id, filters) = packet::decode_subscribe(body, v5)?;
                if hooks.wants(Hook::ClientSubscribe) {
                    for (filter, qos) in &filters {
                        let mut event = self.session.event(Hook::ClientSubscribe);
                        event.topic = RawStr::new(filter);
                        event.qos = *qos;
                        hooks.dispatch(&event);
                    }
                }
                let owned = filters
                    .into_iter()
                    .map(|(f, q)| (f.to_owned(), q))
                    .collect();
                lock(&self.pending).subscribes.insert(packet_id, owned);
                Ok(Action::FORWARD)
            }
            kind::UNSUBSCRIBE => {
                let (packet_id, filters) = packet::decode_unsubscribe(body, v5)?;
                if hooks.wants(Hook::ClientUnsubscribe) {
                    for filter in &filters {
                        let mut event = self.session.event(Hook::ClientUnsubscribe);
                        event.topic = RawStr::new(filter);
                        hooks.dispatch(&event);
                    }
                }
                let owned = filters.into_iter().map(str::to_owned).collect();
                lock(&self.pending).unsubscribes.insert(packet_id, owned);
                Ok(Action::FORWARD)
            }
            _ => Ok(Action::FORWARD),
        }
    }
}

/// What the client pump does with a frame.
#[derive(Debug)]
struct Action {
    /// Do not forward the frame.
    skip: bool,
    /// Answer the client with these bytes instead of forwarding.
    reply: Option<[u8; 4]>,
}

impl Action {
    const FORWARD: Action = Action {
        skip: false,
        reply: None,
    };
    const SKIP: Action = Action {
        skip: true,
        reply: None,
    };

    fn reply(bytes: [u8; 4]) -> Action {
        Action {
            skip: true,
            reply: Some(bytes),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Broker → client.
struct BrokerPump {
    relay: Arc<Relay>,
    session: Arc<Session>,
    pending: Arc<Mutex<Pending>>,
}

impl BrokerPump {
    async fn run(mut self, mut upstream: OwnedReadHalf, client: ClientWriter) -> Ended {
        let ended = self.pump(&mut upstream, &client).await;
        let _ = client.lock().await.shutdown().await;
        ended
    }

    async fn pump(&mut self, upstream: &mut OwnedReadHalf, client: &ClientWriter) -> Ended {
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            match upstream.read_buf(&mut buf).await {
                Ok(0) => return Ended::BrokerClosed,
                Ok(_) => {}
                Err(e) => return e.into(),
            }
            let mut pos = 0;
            // Frames from rumqttd are trusted to be well formed, but never larger than
            // what a client could be sent.
            while let Some(header) = match parse_header(&buf[pos..], usize::MAX) {
                Ok(h) => h.filter(|h| buf.len() - pos >= h.frame_len()),
                Err(e) => return e.into(),
            } {
                let body = &buf[pos + header.header_len..pos + header.frame_len()];
                if let Err(e) = self.inspect(&header, body) {
                    return e.into();
                }
                pos += header.frame_len();
            }
            if pos > 0 {
                if client.lock().await.write_all(&buf[..pos]).await.is_err() {
                    return Ended::ClientClosed;
                }
                buf.advance(pos);
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8192);
            }
        }
    }

    fn inspect(&mut self, header: &FrameHeader, body: &[u8]) -> Result<(), PacketError> {
        let v5 = self.session.proto_ver == 5;
        let hooks = &self.relay.hooks;
        match header.kind() {
            kind::PUBLISH => {
                self.relay.stats.message_sent();
                if hooks.wants(Hook::MessageDelivered) {
                    let publish = packet::decode_publish(header.flags(), body, v5)?;
                    let mut event = self.session.event(Hook::MessageDelivered);
                    event.topic = RawStr::new(publish.topic);
                    event.payload = RawBytes::new(publish.payload);
                    event.qos = publish.qos;
                    event.retain = publish.retain as u8;
                    event.packet_id = publish.packet_id;
                    hooks.dispatch(&event);
                }
            }
            kind::CONNACK if !self.session.connected.load(Ordering::Relaxed) => {
                let (_, code) = packet::decode_connack(body)?;
                if code == 0 {
                    self.session.connected.store(true, Ordering::SeqCst);
                    self.relay.stats.client_connected();
                    if hooks.wants(Hook::ClientConnected) {
                        let mut event = self.session.event(Hook::ClientConnected);
                        event.return_code = code as u32;
                        hooks.dispatch(&event);
                    }
                }
            }
            kind::SUBACK => {
                let (packet_id, codes) = packet::decode_ack_with_codes(body, v5)?;
                let filters = lock(&self.pending)
                    .subscribes
                    .remove(&packet_id)
                    .unwrap_or_default();
                if hooks.wants(Hook::SessionSubscribed) {
                    for ((filter, _), &code) in filters.iter().zip(codes) {
                        if code < 0x80 {
                            let mut event = self.session.event(Hook::SessionSubscribed);
                            event.topic = RawStr::new(filter);
                            event.qos = code;
                            event.return_code = code as u32;
                            hooks.dispatch(&event);
                        }
                    }
                }
            }
            kind::UNSUBACK => {
                let packet_id = packet::decode_packet_id(body)?;
                let filters = lock(&self.pending)
                    .unsubscribes
                    .remove(&packet_id)
                    .unwrap_or_default();
                if hooks.wants(Hook::SessionUnsubscribed) {
                    for filter in &filters {
                        let mut event = self.session.event(Hook::SessionUnsubscribed);
                        event.topic = RawStr::new(filter);
                        hooks.dispatch(&event);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
