//! From a new connection to its CONNACK: read the CONNECT (within `mqtt.connect_timeout`),
//! check it, fire `client.connect` and `client.authenticate` (on a blocking-pool thread: an
//! authentication plugin may block; `client.connect` and the will's ACL there too when a
//! plugin declared them blocking), apply `allow_anonymous` and the failure limits, open the
//! session (taking over a live connection with the same client id), fire `client.connack`,
//! answer, and resend what was in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use plugin_api::abi::{self, RawBytes};
use plugin_api::Hook;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::inbound::acl_denied;
use super::outbound::OutgoingAliases;
use super::{rate_limit, Connection, Transport, FLUSH_TIMEOUT};
use crate::client::ClientInfo;
use crate::hooks::{Route, Verdict};
use crate::log_limit::clipped;
use crate::message::{Head, Message};
use crate::metrics::{Metric, Metrics};
use crate::mqtt::connect::{encode_connack, ConnackProperties, Connect, ConnectError};
use crate::mqtt::frame::{kind, parse_header, FrameHeader};
use crate::mqtt::packet::decode_first;
use crate::mqtt::properties::PropertyWriter;
use crate::mqtt::reason;
use crate::mqtt::Version;
use crate::node::Node;
use crate::router::{is_valid_topic, is_valid_topic_within};
use crate::session::registry::{Elsewhere, Will};

/// Why the handshake stopped before a CONNACK was due.
#[derive(Debug, thiserror::Error)]
enum Early {
    #[error("closed before CONNECT")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] crate::mqtt::frame::FrameError),
}

/// Reads until one whole frame is at the start of `buf`.
async fn read_frame<T: Transport>(
    io: &mut T,
    buf: &mut BytesMut,
    max: usize,
    metrics: &Metrics,
) -> Result<FrameHeader, Early> {
    loop {
        if let Some(header) = parse_header(buf, max)? {
            if buf.len() >= header.frame_len() {
                return Ok(header);
            }
            buf.reserve(header.frame_len() - buf.len());
        } else if buf.capacity() == buf.len() {
            buf.reserve(256);
        }
        let n = io.read_buf(buf).await?;
        if n == 0 {
            return Err(Early::Closed);
        }
        metrics.add(Metric::BytesReceived, n as u64);
    }
}

/// Answers a CONNECT with a refusal (`code`, an MQTT 5 reason code) and closes. The reason
/// string goes when it fits in the client's Maximum Packet Size (if it said one).
/// `client.connack` fires when the client is known (its CONNECT was read and identified).
async fn refuse<T: Transport>(
    node: &Node,
    io: &mut T,
    client: Option<&ClientInfo>,
    version: Version,
    code: u8,
    max_packet_size: Option<u32>,
) {
    let mut out = Vec::new();
    let max = max_packet_size.map_or(usize::MAX, |m| m as usize);
    let properties = ConnackProperties { reason_string: reason::string_within(code, 6, max), ..Default::default() };
    encode_connack(&mut out, version, false, code, &properties);
    if out.len() > max {
        out.clear(); // MQTT-3.1.2-24: not even the CONNACK without a reason string fits
    }
    connack_sent(&node.stats.metrics, code);
    if let Some(client) = client {
        fire_connack(node, client, code);
    }
    node.stats.metrics.add(Metric::BytesSent, out.len() as u64);
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
        io.write_all(&out).await?;
        io.shutdown().await
    })
    .await;
}

/// `properties`, or fewer of them, so that the CONNACK fits in the client's Maximum Packet
/// Size; `None` if even the fewest do not.
fn fit_connack<'a>(
    version: Version,
    properties: ConnackProperties<'a>,
    max_packet_size: Option<u32>,
) -> Option<ConnackProperties<'a>> {
    let Some(max) = max_packet_size.map(|m| m as usize) else {
        return Some(properties);
    };
    let len = |properties: &ConnackProperties<'_>| {
        let mut out = Vec::new();
        encode_connack(&mut out, version, false, reason::SUCCESS, properties);
        out.len()
    };
    if len(&properties) <= max {
        return Some(properties);
    }
    Some(properties.without_defaults()).filter(|fewer| len(fewer) <= max)
}

/// Counts a CONNACK with `code` (an MQTT 5 reason code) and the `client.connack` it stands for.
fn connack_sent(metrics: &Metrics, code: u8) {
    metrics.packet_sent(kind::CONNACK, code);
    metrics.inc(Metric::ClientConnack);
}

/// Fires `client.connack` with the code as the client gets it (the MQTT 3.1.1 return code, or
/// the MQTT 5 reason code).
fn fire_connack(node: &Node, client: &ClientInfo, code: u8) {
    if node.hooks.wants(Hook::ClientConnack) {
        let mut event = client.event(Hook::ClientConnack, crate::now_ms());
        event.return_code = u32::from(if client.version.is_v5() { code } else { reason::connack_v3(code) });
        node.hooks.dispatch(&event);
    }
}

/// The forwarded properties of a will or a message, encoded once for every subscriber.
pub(super) fn forwarded(properties: &crate::mqtt::properties::Properties<'_>) -> Bytes {
    let mut w = PropertyWriter { out: BytesMut::new() };
    properties.write_forwarded(&mut w);
    w.out.freeze()
}

/// Runs the handshake; `None` when the connection ends before it is accepted.
pub(super) async fn handshake<T: Transport>(node: &Arc<Node>, mut io: T, peer: SocketAddr) -> Option<Connection<T>> {
    let zone = &node.zone;
    let metrics = &node.stats.metrics;
    let mut buf = BytesMut::new();
    let header =
        match tokio::time::timeout(zone.connect_timeout, read_frame(&mut io, &mut buf, zone.max_packet_size, metrics))
            .await
        {
            Ok(Ok(header)) => header,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "connection ended before CONNECT: {e}");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "no CONNECT within {:?}; closing", zone.connect_timeout);
                return None;
            }
        };
    let frame = buf.split_to(header.frame_len()).freeze();
    metrics.packet_received(header.kind(), 0);
    let body = &frame[header.header_len..];
    let connect = match decode_first(&header, body) {
        Ok(connect) => connect,
        Err(ConnectError::UnsupportedVersion { name, level }) => {
            tracing::debug!(%peer, "unsupported protocol {name:?} level {level}; refused");
            // MQTT-3.1.2-2: CONNACK 0x01 (the level is unknown, so a 3.1.1 CONNACK).
            refuse(node, &mut io, None, Version::V3_1_1, reason::UNSUPPORTED_PROTOCOL_VERSION, None).await;
            return None;
        }
        Err(ConnectError::Decode(e)) => {
            // Closed without a CONNACK, whatever the version: MQTT 3.1.1 requires it, MQTT 5
            // allows it (§4.13.1: a CONNACK with the reason code MAY come first), and
            // mosquitto does so for both.
            tracing::debug!(%peer, "bad CONNECT: {e}; closing");
            return None;
        }
    };
    let version = connect.version;
    let (client, assigned) = match identify(node, &connect, peer, io.local_port(), io.cert_username()) {
        Ok(identified) => identified,
        Err(code) => {
            let client_id = clipped(connect.client_id);
            tracing::debug!(%peer, ?client_id, "CONNECT refused: {}", reason::describe(code));
            refuse(node, &mut io, None, version, code, connect.properties.maximum_packet_size).await;
            return None;
        }
    };
    let max_packet_size = connect.properties.maximum_packet_size;
    // Boxed at once: it lives across every await below, in a state allocated per connection.
    let will = match will(node, &connect) {
        Ok(will) => will.map(Box::new),
        Err(Some(code)) => {
            refuse(node, &mut io, Some(&client), version, code, max_packet_size).await;
            return None;
        }
        Err(None) => return None, // 3.1.1: a bad will topic closes the connection
    };
    let Some((keep_alive, server_keep_alive)) = keep_alive(zone, version, connect.keep_alive) else {
        tracing::debug!(%peer, "keep-alive {} over mqtt.max_keepalive; refused", connect.keep_alive);
        let code = reason::CLIENT_IDENTIFIER_NOT_VALID;
        refuse(node, &mut io, Some(&client), version, code, max_packet_size).await;
        return None;
    };
    if let Some(left) = node.auth.failures.banned(peer.ip(), Instant::now()) {
        if let Some(held_back) = node.auth.failures.log_refusal(peer.ip(), Instant::now()) {
            let detail = format!(
                "too many failed authentications; {}s of the ban left{}",
                left.as_secs(),
                crate::log_limit::held_back(held_back)
            );
            refused(&client, "banned", &detail);
        }
        refuse(node, &mut io, Some(&client), version, reason::BANNED, max_packet_size).await;
        return None;
    }
    let superuser = match admit(node, &client, &connect).await {
        Ok(superuser) => superuser,
        Err(refusal) => {
            refused(&client, refusal.why, "");
            if refusal.authentication {
                if node.auth.failures.failed(peer.ip(), Instant::now()) {
                    tracing::warn!(%peer, "{} banned: too many failed authentications", peer.ip());
                }
                // Slows down guessing without holding a worker thread.
                tokio::time::sleep(node.auth.failures.delay()).await;
            }
            refuse(node, &mut io, Some(&client), version, refusal.code, max_packet_size).await;
            return None;
        }
    };
    if let Some(why) = cannot_own(node, &client) {
        refused(&client, why, "");
        refuse(node, &mut io, Some(&client), version, reason::SERVER_UNAVAILABLE, max_packet_size).await;
        return None;
    }
    // Every check passed: from here on the client id is taken (MQTT-3.1.4-2, -3).

    let expiry = client.expiry_interval;
    let properties = ConnackProperties {
        // MQTT 5 §3.2.2.3.2: the client is told when its Session Expiry Interval was lowered.
        session_expiry_interval: connect
            .properties
            .session_expiry_interval
            .filter(|&asked| version.is_v5() && asked != expiry)
            .map(|_| expiry),
        receive_maximum: Some(zone.max_awaiting_rel).filter(|&m| m < u16::MAX),
        maximum_qos: Some(zone.max_qos).filter(|&q| q < 2),
        retain_available: Some(zone.retain_available),
        maximum_packet_size: Some(zone.max_packet_size.min(u32::MAX as usize) as u32),
        assigned_client_identifier: assigned.then_some(&*client.client_id),
        topic_alias_maximum: Some(zone.max_topic_alias).filter(|&m| m > 0),
        wildcard_subscription_available: Some(zone.wildcard_subscription),
        subscription_identifiers_available: Some(true),
        shared_subscription_available: Some(zone.shared_subscription),
        server_keep_alive,
        // MQTT-3.1.2-28: only to a client that asked (Request Response Information 1).
        response_information: zone
            .response_information
            .as_deref()
            .filter(|_| version.is_v5() && connect.properties.request_response_information == Some(1)),
        ..Default::default()
    };
    // MQTT-3.1.2-24, -25: a CONNACK the client cannot take is not sent (nor the session
    // opened); what the client assumes when left out goes first.
    let Some(properties) = fit_connack(version, properties, max_packet_size) else {
        refused(&client, "CONNACK over the client's Maximum Packet Size", "closed without CONNACK");
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, io.shutdown()).await;
        return None;
    };
    // Boxed: it stays alive across the awaits below (opening the session, which in a cluster
    // may ask other nodes), and the handshake's state is allocated for every connection.
    let properties = Box::new(properties);
    let id = node.next_connection_id();
    // Boxed: what opening a session waits for (its turn, a cluster's claim) would otherwise
    // be part of every connection's task for as long as the connection lives.
    let opened = match Box::pin(node.sessions.open(&**node, &client, id, connect.clean_start, expiry)).await {
        Ok(opened) => opened,
        Err(why) => {
            // In a cluster: the session's owner could not be settled (NATS failing, or the node
            // holding the session did not give it up). EMQX answers so when it cannot register
            // a session.
            refused(&client, "the session's owner in the cluster could not be settled", &why);
            refuse(node, &mut io, Some(&client), version, reason::SERVER_UNAVAILABLE, max_packet_size).await;
            return None;
        }
    };
    // Boxed: their NATS round trips would otherwise make every connection's task larger.
    match opened.elsewhere.as_deref() {
        Some(Elsewhere::Moved(from)) => Box::pin(node.finish_move(&opened.session, from)).await,
        Some(Elsewhere::Revived { since_ms, from }) => {
            Box::pin(node.replay_into(&opened.session, *since_ms, from)).await
        }
        None => {}
    }
    if let Some(online) = node.persist_opened(&opened.session, opened.discarded) {
        // A failed write is the store's to log and count; the client is served all the same.
        let _ = Box::pin(online).await;
    }
    let mut will = will;
    if let Some(will) = &mut will {
        will.message.edit(|head| head.publisher = opened.session.id);
    }
    let mut out = BytesMut::new();
    encode_connack(&mut out, version, opened.present, reason::SUCCESS, &properties);
    connack_sent(metrics, reason::SUCCESS);
    fire_connack(node, &client, reason::SUCCESS);
    if opened.present {
        metrics.inc(Metric::SessionResumed);
    }
    fire_session_events(node, &client, &opened);

    let keep_alive = (keep_alive > 0).then(|| std::time::Duration::from_millis(u64::from(keep_alive) * 1500));
    let now = Instant::now();
    let mut connection = Connection {
        node: node.clone(),
        io,
        id,
        client: client.clone(),
        session: opened.session,
        version,
        inbound: buf,
        out,
        keep_alive,
        last_packet: now,
        keep_alive_timer: keep_alive.map(|d| Box::pin(tokio::time::sleep(d))),
        packet_timer: None,
        client_receive_maximum: connect.properties.receive_maximum.unwrap_or(u16::MAX),
        client_max_packet_size: connect.properties.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
        problem_information: connect.properties.request_problem_information != Some(0),
        aliases_in: None,
        // Only for a client that takes topic aliases: the others keep no alias table.
        aliases_out: Some(if version.is_v5() { connect.properties.topic_alias_maximum.unwrap_or(0) } else { 0 })
            .filter(|&max| max > 0)
            .map(|max| Box::new(OutgoingAliases::new(max))),
        acl_cache: zone.acl_cache.map(super::AclCache::new),
        superuser,
        will,
        expiry_was_zero: expiry == 0,
        now,
        now_ms: crate::now_ms(),
        delivered: Vec::new(),
        congestion: None,
        write_deferred: false,
        pipelining: false,
        held: None,
        refill: Default::default(),
        retry: Default::default(),
        limiter: rate_limit::Limiter::new(node.zone.messages_in, node.zone.bytes_in),
    };
    node.stats.client_connected();
    if node.hooks.wants(Hook::ClientConnected) {
        let event = client.event(Hook::ClientConnected, crate::now_ms());
        node.hooks.dispatch(&event);
    }
    if opened.present {
        connection.resend_inflight();
    }
    Some(connection)
}

/// The keep-alive the connection runs with, and the Server Keep Alive to tell an MQTT 5
/// client. Over `mqtt.max_keepalive`, an MQTT 5 client is told the maximum (asking for none
/// counts as over); an MQTT 3.1.1 client cannot be told and is refused (`None`), as mosquitto
/// does, but may still turn keep-alive off.
fn keep_alive(zone: &crate::node::Zone, version: Version, asked: u16) -> Option<(u16, Option<u16>)> {
    if let (Some(server), true) = (zone.server_keep_alive, version.is_v5()) {
        return Some((server, Some(server)));
    }
    match zone.max_keep_alive {
        Some(max) if version.is_v5() && (asked == 0 || asked > max) => Some((max, Some(max))),
        Some(max) if asked > max => None,
        _ => Some((asked, None)),
    }
}

/// Who the client is; the MQTT 5 reason code of the refusal otherwise. The bool says the
/// client id was assigned by the broker.
fn identify(
    node: &Node,
    connect: &Connect<'_>,
    peer: SocketAddr,
    sockport: u16,
    cert_username: Option<&str>,
) -> Result<(Arc<ClientInfo>, bool), u8> {
    let zone = &node.zone;
    let version = connect.version;
    if connect.properties.authentication_method.is_some() {
        return Err(reason::BAD_AUTHENTICATION_METHOD); // no enhanced authentication here
    }
    let assigned = connect.client_id.is_empty();
    let client_id: Arc<str> = if assigned {
        // MQTT-3.1.3-6 / 3.1.3-7 (MQTT 5: assigned and returned); MQTT 3.1.1 only with a
        // clean session (MQTT-3.1.3-7, -8); MQTT 3.1 never.
        if version == Version::V3_1 || (version == Version::V3_1_1 && !connect.clean_start) {
            return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
        }
        format!("auto-{}", crate::unique_suffix()).into()
    } else if connect.client_id.len() > zone.max_client_id_len {
        return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
    } else {
        connect.client_id.into()
    };
    let expiry_interval = if version.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0).min(zone.max_session_expiry)
    } else if connect.clean_start {
        0
    } else {
        zone.session_expiry_v3
    };
    let client = ClientInfo {
        client_id,
        username: cert_username.or(connect.username).unwrap_or_default().into(),
        peer: peer.to_string().into(),
        peer_addr: Some(peer),
        sockport,
        version,
        keep_alive: connect.keep_alive,
        clean_start: connect.clean_start,
        expiry_interval,
        connected_at_ms: crate::now_ms(),
    };
    Ok((Arc::new(client), assigned && version.is_v5()))
}

/// The will of a CONNECT, checked. `Err(Some(code))` refuses with a CONNACK,
/// `Err(None)` closes the connection.
fn will(node: &Node, connect: &Connect<'_>) -> Result<Option<Will>, Option<u8>> {
    let Some(will) = &connect.will else {
        return Ok(None);
    };
    let v5 = connect.version.is_v5();
    if !is_valid_topic_within(will.topic, node.zone.max_topic_levels) {
        return Err(v5.then_some(reason::TOPIC_NAME_INVALID));
    }
    if will.properties.response_topic.is_some_and(|t| !is_valid_topic(t)) {
        return Err(Some(reason::PROTOCOL_ERROR)); // MQTT-3.3.2-14
    }
    if will.qos > node.zone.max_qos {
        return Err(Some(reason::QOS_NOT_SUPPORTED)); // MQTT-3.2.2-12
    }
    if will.retain && !node.zone.retain_available {
        return Err(Some(reason::RETAIN_NOT_SUPPORTED)); // MQTT-3.2.2-13
    }
    let head =
        Head { qos: will.qos, retain: will.retain, expires_at: None, publisher: 0, timestamp_ms: 0, origin: None };
    let forwarded = if v5 { forwarded(&will.properties) } else { Bytes::new() };
    let message = Message::new(head, will.topic, will.payload, &forwarded);
    Ok(Some(Will {
        message,
        delay: will.properties.will_delay_interval.unwrap_or(0),
        expiry: will.properties.message_expiry_interval,
    }))
}

/// Fires what became of sessions as `client`'s opened one (EMQX's order): `session.discarded`
/// or `session.takenover` for the one it replaced, then `session.created` or
/// `session.resumed`.
fn fire_session_events(node: &Node, client: &ClientInfo, opened: &crate::session::registry::Opened) {
    let replaced = if opened.discarded {
        Some(Hook::SessionDiscarded)
    } else {
        opened.taken_over.then_some(Hook::SessionTakenover)
    };
    let now = if opened.present { Hook::SessionResumed } else { Hook::SessionCreated };
    for hook in replaced.into_iter().chain([now]) {
        if node.hooks.wants(hook) {
            node.hooks.dispatch(&client.event(hook, crate::now_ms()));
        }
    }
}

/// Why a node of a cluster that cannot reach NATS refuses `client`, if it does: it would
/// open a new persistent session, and without NATS the node cannot tell that no other node
/// holds one for the same client id. A session this node already holds resumes, and clean
/// sessions (which end with their connection) are served. The client gets 0x88 Server
/// unavailable (3.1.1: 3), as EMQX answers when it cannot register a session.
fn cannot_own(node: &Node, client: &ClientInfo) -> Option<&'static str> {
    let cluster = node.cluster.as_ref()?;
    let refuse = client.expiry_interval > 0 && !cluster.reachable() && node.sessions.get(&client.client_id).is_none();
    refuse.then_some("a new persistent session while the cluster's NATS is unreachable")
}

/// Why `admit` refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    /// The MQTT 5 reason code of the CONNACK.
    code: u8,
    /// For the log.
    why: &'static str,
    /// A failed authentication: delayed, and counted against the peer's address.
    authentication: bool,
}

impl Refusal {
    /// A plugin refused the credentials: 0x86 Bad User Name or Password (3.1.1: 0x04).
    const DENIED: Refusal =
        Refusal { code: reason::BAD_USER_NAME_OR_PASSWORD, why: "bad username or password", authentication: true };
    /// No plugin accepted the client and `allow_anonymous` refuses it: 0x87 (3.1.1: 0x05).
    const ANONYMOUS: Refusal = Refusal {
        code: reason::NOT_AUTHORIZED,
        why: "not authorized: anonymous clients are not allowed from this address (allow_anonymous)",
        authentication: true,
    };
}

/// Logs a refused CONNECT: who, from where, and why (never the password).
fn refused(client: &ClientInfo, why: &str, detail: &str) {
    tracing::info!(
        client_id = ?clipped(&client.client_id),
        username = ?clipped(&client.username),
        peer = &*client.peer,
        reason = why,
        "connection refused{}{detail}",
        if detail.is_empty() { "" } else { ": " }
    );
}

/// Runs `client.connect`, `client.authenticate` (on a blocking-pool thread) and the will's
/// ACL check, and applies `allow_anonymous` when no plugin vouched for the client. Ok says
/// whether the client is a superuser (no `client.check_acl` for it).
async fn admit(node: &Arc<Node>, client: &Arc<ClientInfo>, connect: &Connect<'_>) -> Result<bool, Refusal> {
    let hooks = &node.hooks;
    let now = crate::now_ms();
    node.stats.metrics.inc(Metric::ClientConnect);
    node.stats.metrics.inc(Metric::ClientAuthenticate);
    match hooks.route(Hook::ClientConnect) {
        Route::Skip => {}
        Route::Inline => {
            hooks.dispatch(&client.event(Hook::ClientConnect, now));
        }
        Route::Blocking => {
            let (node, client) = (node.clone(), client.clone());
            let chain = move || node.hooks.dispatch(&client.event(Hook::ClientConnect, now));
            hooks.run_blocking(Hook::ClientConnect, chain).await;
        }
        Route::Later => {
            hooks.dispatch_later(|| client.event(Hook::ClientConnect, now), |_| false).await;
        }
    }
    let verdict = if hooks.wants(Hook::ClientAuthenticate) {
        authenticate(node, client, connect.password.unwrap_or_default(), now).await
    } else {
        Verdict::Continue
    };
    let superuser = match verdict {
        Verdict::Superuser => true,
        Verdict::Allow => false,
        Verdict::Deny => return Err(Refusal::DENIED),
        Verdict::Continue | Verdict::Drop => {
            if !node.auth.allow_anonymous.admits(client.peer_addr.map(|a| a.ip())) {
                return Err(Refusal::ANONYMOUS);
            }
            false
        }
    };
    if let (Some(will), false) = (&connect.will, superuser) {
        // `client.check_acl` asked whether the will may be published to its topic.
        if acl_denied(node, client, abi::ACL_PUBLISH, will.topic, now).await {
            let (client_id, topic) = (clipped(&client.client_id), clipped(will.topic));
            tracing::info!(?client_id, ?topic, "will denied by ACL");
            return Err(Refusal { code: reason::NOT_AUTHORIZED, why: "will denied by ACL", authentication: false });
        }
    }
    Ok(superuser)
}

/// Runs the `client.authenticate` chain on the blocking pool (a plugin may block
/// there, an HTTP request, a slow hash, without holding up a network worker), so only this
/// client waits; or, when every plugin on it answers at once or later, on this task.
async fn authenticate(node: &Arc<Node>, client: &Arc<ClientInfo>, password: &[u8], now: u64) -> Verdict {
    let event_for = move |client: &ClientInfo, password: &[u8]| {
        let mut event = client.event(Hook::ClientAuthenticate, now);
        event.password = RawBytes::new(password);
        event
    };
    if node.hooks.route(Hook::ClientAuthenticate) == Route::Later {
        // Every plugin on the chain answers at once or later: none holds this thread.
        return node.hooks.dispatch_later(|| event_for(client, password), |_| false).await.0;
    }
    let (shared, client, password) = (node.clone(), client.clone(), password.to_vec());
    let chain = move || shared.hooks.dispatch(&event_for(&client, &password));
    // Only when the runtime shuts down under it: refuse rather than let the client in.
    node.hooks.run_blocking(Hook::ClientAuthenticate, chain).await.unwrap_or(Verdict::Deny)
}
