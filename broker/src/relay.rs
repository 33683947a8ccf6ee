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
//! One connection is two pumps: client → broker (`ClientPump`) and broker → client
//! (`BrokerPump`). Only `BrokerPump` writes to the client: what the host sends on its own
//! goes through the session's outbox (see `sessions`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use plugin_api::abi::{self, RawBytes, RawEvent, RawStr};
use plugin_api::Hook;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::hooks::{Hooks, Verdict};
use crate::lock;
use crate::mqtt::frame::{kind, parse_header, FrameError, FrameHeader};
use crate::mqtt::packet::{self, Connect, PacketError};
use crate::router::{Publisher, Router};
use crate::sessions::{HostAck, Identity, Registry, Session};
use crate::stats::Stats;

/// Relay limits.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Largest MQTT packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: Duration,
}

/// Bytes the pipe to rumqttd holds in each direction before a writer waits.
const UPSTREAM_BUFFER: usize = 64 * 1024;

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

/// A SUBSCRIBE / UNSUBSCRIBE waiting for rumqttd's answer, by packet id.
#[derive(Debug)]
struct PendingSubscriptions {
    /// Each filter with its requested QoS.
    filters: Vec<(String, u8)>,
    /// The host's code for the filters it answered itself (denied, or `$`); `None` for those
    /// forwarded to rumqttd.
    host_codes: Vec<Option<u8>>,
}

#[derive(Debug, Default)]
struct Pending {
    subscribes: HashMap<u16, PendingSubscriptions>,
    unsubscribes: HashMap<u16, PendingSubscriptions>,
}

type UpstreamReader = tokio::io::ReadHalf<tokio::io::DuplexStream>;
type UpstreamWriter = tokio::io::WriteHalf<tokio::io::DuplexStream>;

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

/// A `$` topic filter the host serves itself (shared subscriptions are rumqttd's).
fn is_host_filter(filter: &str) -> bool {
    filter.starts_with('$') && !filter.starts_with("$share/")
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
        let session = Arc::new(Session::new(self.new_session(&connect, peer)));
        if !self.admit(&connect, &session, &mut client).await {
            return;
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

        // The connection to rumqttd is an in-memory pipe served by rumqttd's own connection
        // code on this runtime.
        let (mut upstream, router_end) = tokio::io::duplex(UPSTREAM_BUFFER);
        let handler = if level == 5 { self.router.v5.clone() } else { self.router.v4.clone() };
        tokio::spawn(async move { handler.serve(router_end).await });
        if upstream.write_all(&connect_frame).await.is_err() {
            return;
        }

        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = tokio::io::split(upstream);
        let pending = Arc::new(Mutex::new(Pending::default()));

        let mut broker_pump = tokio::spawn(
            BrokerPump { relay: self.clone(), session: session.clone(), pending: pending.clone() }
                .run(upstream_read, client_write),
        );
        let client_pump = ClientPump {
            relay: self.clone(),
            session: session.clone(),
            pending,
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

/// What a pump does with one frame.
#[derive(Debug)]
enum Action {
    /// Pass it on unchanged.
    Forward,
    /// Pass it on with the retain flag cleared (a PUBLISH).
    ForwardWithoutRetain,
    /// Pass these bytes on instead.
    Replace(Vec<u8>),
    /// Do not pass it on (the host answered it, or it is dropped).
    Skip,
}

/// Writes `frames` (complete frames) to `out`, applying each frame's action; one write per
/// run of unchanged frames.
async fn write_frames<W: AsyncWrite + Unpin>(
    out: &mut W,
    buf: &mut [u8],
    actions: &[(usize, usize, Action)],
) -> std::io::Result<()> {
    let mut from = 0;
    for (start, len, action) in actions {
        match action {
            Action::Forward => {}
            Action::ForwardWithoutRetain => buf[*start] &= !0x01,
            Action::Replace(bytes) => {
                out.write_all(&buf[from..*start]).await?;
                out.write_all(bytes).await?;
                from = start + len;
            }
            Action::Skip => {
                out.write_all(&buf[from..*start]).await?;
                from = start + len;
            }
        }
    }
    let end = actions.last().map_or(0, |(start, len, _)| start + len);
    if from < end {
        out.write_all(&buf[from..end]).await?;
    }
    Ok(())
}

/// Splits the complete frames at the start of `buf`, asking `inspect` what to do with each.
fn plan<E: From<FrameError>>(
    buf: &[u8],
    max: usize,
    mut inspect: impl FnMut(&FrameHeader, &[u8]) -> Result<Action, E>,
) -> Result<Vec<(usize, usize, Action)>, E> {
    let mut actions = Vec::new();
    let mut pos = 0;
    while let Some(header) = parse_header(&buf[pos..], max)? {
        if buf.len() - pos < header.frame_len() {
            break;
        }
        let body = &buf[pos + header.header_len..pos + header.frame_len()];
        let action = inspect(&header, body)?;
        actions.push((pos, header.frame_len(), action));
        pos += header.frame_len();
        if header.kind() == kind::DISCONNECT {
            break;
        }
    }
    Ok(actions)
}

/// Client → broker.
struct ClientPump {
    relay: Arc<Relay>,
    session: Arc<Session>,
    pending: Arc<Mutex<Pending>>,
    /// MQTT 5 topic aliases the client set.
    aliases: HashMap<u16, String>,
    /// QoS 2 messages a plugin dropped: their PUBREL is answered here.
    dropped_qos2: HashSet<u16>,
}

impl ClientPump {
    async fn run(mut self, mut reader: OwnedReadHalf, mut upstream: UpstreamWriter, mut buf: BytesMut) -> Ended {
        let max = self.relay.settings.max_packet_size;
        loop {
            let actions = match plan(&buf, max, |h, body| self.inspect(h, body)) {
                Ok(actions) => actions,
                Err(e) => return e,
            };
            let consumed = actions.last().map_or(0, |(start, len, _)| start + len);
            let disconnect = actions.last().is_some_and(|(start, _, _)| buf[*start] >> 4 == kind::DISCONNECT);
            if write_frames(&mut upstream, &mut buf[..], &actions).await.is_err() {
                return Ended::BrokerClosed;
            }
            if disconnect {
                let _ = upstream.shutdown().await;
                return Ended::Normal;
            }
            buf.advance(consumed);
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
    fn inspect(&mut self, header: &FrameHeader, body: &[u8]) -> Result<Action, Ended> {
        let v5 = self.session.identity.proto_ver == 5;
        let hooks = &self.relay.hooks;
        match header.kind() {
            kind::PUBLISH => {
                self.relay.stats.message_received();
                let retained = header.flags() & 0x01 != 0;
                let forward = if retained { Action::ForwardWithoutRetain } else { Action::Forward };
                let check_acl = hooks.wants(Hook::ClientCheckAcl);
                if !check_acl && !hooks.wants(Hook::MessagePublish) && !hooks.wants(Hook::MessageDropped) {
                    return Ok(forward);
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
                    let acl = RawEvent { hook: Hook::ClientCheckAcl as u32, acl_action: abi::ACL_PUBLISH, ..event };
                    if hooks.dispatch(&acl) == Verdict::Deny {
                        tracing::debug!(client_id = self.session.identity.client_id, topic, "publish denied by ACL");
                        verdict = Verdict::Drop;
                    }
                }
                if verdict == Verdict::Continue && hooks.wants(Hook::MessagePublish) {
                    verdict = hooks.dispatch(&event);
                }
                if verdict != Verdict::Drop {
                    return Ok(forward);
                }
                if hooks.wants(Hook::MessageDropped) {
                    hooks.dispatch(&RawEvent { hook: Hook::MessageDropped as u32, ..event });
                }
                // The publisher still gets its acknowledgement.
                match publish.qos {
                    0 => {}
                    1 => self.session.send(&packet::ack(kind::PUBACK, publish.packet_id)),
                    _ => {
                        self.dropped_qos2.insert(publish.packet_id);
                        self.session.send(&packet::ack(kind::PUBREC, publish.packet_id));
                    }
                }
                Ok(Action::Skip)
            }
            kind::PUBREL if !self.dropped_qos2.is_empty() => {
                let id = packet::decode_packet_id(body)?;
                if self.dropped_qos2.remove(&id) {
                    self.session.send(&packet::ack(kind::PUBCOMP, id));
                    Ok(Action::Skip)
                } else {
                    Ok(Action::Forward)
                }
            }
            kind @ (kind::PUBACK | kind::PUBREC | kind::PUBCOMP) => {
                let id = packet::decode_packet_id(body)?;
                match self.session.host_ack(kind, id) {
                    HostAck::Settled => return Ok(Action::Skip),
                    HostAck::Reply(reply) => {
                        self.session.send(&reply);
                        return Ok(Action::Skip);
                    }
                    HostAck::NotOurs => {}
                }
                if kind != kind::PUBREC && hooks.wants(Hook::MessageAcked) {
                    let mut event = self.session.event(Hook::MessageAcked);
                    event.packet_id = id;
                    hooks.dispatch(&event);
                }
                Ok(Action::Forward)
            }
            kind::SUBSCRIBE => self.subscribe(header, body, v5),
            kind::UNSUBSCRIBE => self.unsubscribe(header, body, v5),
            _ => Ok(Action::Forward),
        }
    }

    fn subscribe(&mut self, header: &FrameHeader, body: &[u8], v5: bool) -> Result<Action, Ended> {
        let hooks = &self.relay.hooks;
        let sub = packet::decode_subscribe(body, v5)?;
        let check_acl = hooks.wants(Hook::ClientCheckAcl);
        let mut host_codes = Vec::with_capacity(sub.filters.len());
        for &(filter, options) in &sub.filters {
            let qos = options & 0x03;
            let mut event = self.session.event(Hook::ClientSubscribe);
            event.topic = RawStr::new(filter);
            event.qos = qos;
            if hooks.wants(Hook::ClientSubscribe) {
                hooks.dispatch(&event);
            }
            let denied = check_acl
                && hooks.dispatch(&RawEvent {
                    hook: Hook::ClientCheckAcl as u32,
                    acl_action: abi::ACL_SUBSCRIBE,
                    ..event
                }) == Verdict::Deny;
            host_codes.push(if denied {
                tracing::debug!(client_id = self.session.identity.client_id, filter, "subscribe denied by ACL");
                Some(0x80)
            } else if is_host_filter(filter) {
                self.session.add_sys_subscription(filter, qos.min(2));
                Some(qos.min(2))
            } else {
                None
            });
        }
        let (pending, action) = route_filters(header, &sub, host_codes);
        let Some(action) = action else {
            // The host answers the whole SUBSCRIBE.
            let codes: Vec<u8> = pending.host_codes.iter().map(|c| c.unwrap_or(0x80)).collect();
            let props: &[u8] = if v5 { &[0] } else { &[] };
            self.session.send(&packet::encode_ack_with_codes(kind::SUBACK, sub.packet_id, props, &codes));
            fire_subscribed(&self.relay, &self.session, &pending.filters, &codes);
            return Ok(Action::Skip);
        };
        lock(&self.pending).subscribes.insert(sub.packet_id, pending);
        Ok(action)
    }

    fn unsubscribe(&mut self, header: &FrameHeader, body: &[u8], v5: bool) -> Result<Action, Ended> {
        let hooks = &self.relay.hooks;
        let unsub = packet::decode_unsubscribe(body, v5)?;
        let mut host_codes = Vec::with_capacity(unsub.filters.len());
        for &(filter, _) in &unsub.filters {
            if hooks.wants(Hook::ClientUnsubscribe) {
                let mut event = self.session.event(Hook::ClientUnsubscribe);
                event.topic = RawStr::new(filter);
                hooks.dispatch(&event);
            }
            host_codes.push(if is_host_filter(filter) {
                // MQTT 5: 0x00 success, 0x11 no subscription existed.
                Some(if self.session.remove_sys_subscription(filter) { 0x00 } else { 0x11 })
            } else {
                None
            });
        }
        let (pending, action) = route_filters(header, &unsub, host_codes);
        let Some(action) = action else {
            // The host answers the whole UNSUBSCRIBE.
            let codes: Vec<u8> = pending.host_codes.iter().map(|c| c.unwrap_or(0)).collect();
            let unsuback = if v5 {
                packet::encode_ack_with_codes(kind::UNSUBACK, unsub.packet_id, &[0], &codes)
            } else {
                packet::encode_ack_with_codes(kind::UNSUBACK, unsub.packet_id, &[], &[])
            };
            self.session.send(&unsuback);
            fire_unsubscribed(&self.relay, &self.session, &pending.filters);
            return Ok(Action::Skip);
        };
        lock(&self.pending).unsubscribes.insert(unsub.packet_id, pending);
        Ok(action)
    }
}

/// Splits a SUBSCRIBE or UNSUBSCRIBE between the host (the filters it has a code for) and
/// rumqttd (the rest). The action is `None` when the host answers every filter itself.
fn route_filters(
    header: &FrameHeader,
    subs: &packet::Subscriptions<'_>,
    host_codes: Vec<Option<u8>>,
) -> (PendingSubscriptions, Option<Action>) {
    let filters = subs.filters.iter().map(|&(f, options)| (f.to_owned(), options & 0x03)).collect();
    let forwarded: Vec<(&str, u8)> =
        subs.filters.iter().zip(&host_codes).filter(|(_, code)| code.is_none()).map(|(f, _)| *f).collect();
    let action = if forwarded.is_empty() {
        None
    } else if forwarded.len() == subs.filters.len() {
        Some(Action::Forward)
    } else {
        let frame =
            packet::encode_subscriptions(header.first_byte, subs.packet_id, subs.properties, forwarded.into_iter());
        Some(Action::Replace(frame))
    };
    (PendingSubscriptions { filters, host_codes }, action)
}

/// Fires `session.subscribed` for every granted filter (code below 0x80).
fn fire_subscribed(relay: &Relay, session: &Session, filters: &[(String, u8)], codes: &[u8]) {
    if !relay.hooks.wants(Hook::SessionSubscribed) {
        return;
    }
    for ((filter, _), &code) in filters.iter().zip(codes) {
        if code < 0x80 {
            let mut event = session.event(Hook::SessionSubscribed);
            event.topic = RawStr::new(filter);
            event.qos = code;
            event.return_code = code as u32;
            relay.hooks.dispatch(&event);
        }
    }
}

fn fire_unsubscribed(relay: &Relay, session: &Session, filters: &[(String, u8)]) {
    if !relay.hooks.wants(Hook::SessionUnsubscribed) {
        return;
    }
    for (filter, _) in filters {
        let mut event = session.event(Hook::SessionUnsubscribed);
        event.topic = RawStr::new(filter);
        relay.hooks.dispatch(&event);
    }
}

/// Merges rumqttd's codes (for the forwarded filters, in order) with the host's.
fn merge_codes(host_codes: &[Option<u8>], router_codes: &[u8]) -> Vec<u8> {
    let mut router_codes = router_codes.iter();
    host_codes.iter().map(|code| code.unwrap_or_else(|| router_codes.next().copied().unwrap_or(0x80))).collect()
}

/// Broker → client.
struct BrokerPump {
    relay: Arc<Relay>,
    session: Arc<Session>,
    pending: Arc<Mutex<Pending>>,
}

impl BrokerPump {
    async fn run(self, mut upstream: UpstreamReader, mut client: OwnedWriteHalf) -> Ended {
        let ended = self.pump(&mut upstream, &mut client).await;
        let _ = client.shutdown().await;
        ended
    }

    async fn pump(&self, upstream: &mut UpstreamReader, client: &mut OwnedWriteHalf) -> Ended {
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            tokio::select! {
                read = upstream.read_buf(&mut buf) => match read {
                    Ok(0) => return Ended::BrokerClosed,
                    Ok(_) => {}
                    Err(e) => return e.into(),
                },
                _ = self.session.queued() => {}
            }
            // Frames from rumqttd are trusted to be well formed.
            let actions = match plan(&buf, usize::MAX, |h, body| self.inspect(h, body)) {
                Ok(actions) => actions,
                Err(e) => return e,
            };
            let consumed = actions.last().map_or(0, |(start, len, _)| start + len);
            if write_frames(client, &mut buf[..], &actions).await.is_err() {
                return Ended::ClientClosed;
            }
            buf.advance(consumed);
            if let Some(outbox) = self.session.take_outbox() {
                if client.write_all(&outbox).await.is_err() {
                    return Ended::ClientClosed;
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8192);
            }
        }
    }

    fn inspect(&self, header: &FrameHeader, body: &[u8]) -> Result<Action, Ended> {
        let v5 = self.session.identity.proto_ver == 5;
        let relay = &self.relay;
        let hooks = &relay.hooks;
        match header.kind() {
            kind::PUBLISH => {
                relay.stats.message_sent();
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
                Ok(Action::Forward)
            }
            kind::CONNACK if !self.session.connected.load(Ordering::Relaxed) => {
                let (_, code) = packet::decode_connack(body)?;
                if code == 0 {
                    self.session.connected.store(true, Ordering::SeqCst);
                    relay.registry.register(&self.session);
                    relay.stats.client_connected();
                    if hooks.wants(Hook::ClientConnected) {
                        let mut event = self.session.event(Hook::ClientConnected);
                        event.return_code = code as u32;
                        hooks.dispatch(&event);
                    }
                }
                Ok(Action::Forward)
            }
            kind::SUBACK => {
                let (packet_id, properties, codes) = packet::decode_ack_with_codes(body, v5)?;
                let Some(pending) = lock(&self.pending).subscribes.remove(&packet_id) else {
                    return Ok(Action::Forward);
                };
                let merged = merge_codes(&pending.host_codes, codes);
                fire_subscribed(relay, &self.session, &pending.filters, &merged);
                if pending.host_codes.iter().all(Option::is_none) {
                    Ok(Action::Forward)
                } else {
                    Ok(Action::Replace(packet::encode_ack_with_codes(kind::SUBACK, packet_id, properties, &merged)))
                }
            }
            kind::UNSUBACK => {
                let (packet_id, properties, codes) = packet::decode_ack_with_codes(body, v5)?;
                let Some(pending) = lock(&self.pending).unsubscribes.remove(&packet_id) else {
                    return Ok(Action::Forward);
                };
                fire_unsubscribed(relay, &self.session, &pending.filters);
                if !v5 || pending.host_codes.iter().all(Option::is_none) {
                    Ok(Action::Forward)
                } else {
                    let merged = merge_codes(&pending.host_codes, codes);
                    Ok(Action::Replace(packet::encode_ack_with_codes(kind::UNSUBACK, packet_id, properties, &merged)))
                }
            }
            _ => Ok(Action::Forward),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_merge_in_filter_order() {
        assert_eq!(merge_codes(&[None, Some(0x80), None, Some(1)], &[2, 0]), vec![2, 0x80, 0, 1]);
        assert_eq!(merge_codes(&[None], &[]), vec![0x80], "a missing code reads as failure");
    }

    #[test]
    fn host_filters() {
        assert!(is_host_filter("$SYS/#"));
        assert!(!is_host_filter("$share/g/a"));
        assert!(!is_host_filter("a/$b"));
    }
}
