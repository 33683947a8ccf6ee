//! Listeners: accept client connections and give each its own task (`connection::serve`).
//! EMQX's four kinds: `tcp` (plain MQTT), `ssl` (MQTT over TLS), `ws` (MQTT over WebSocket)
//! and `wss` (WebSocket over TLS). Each listener counts its own open connections; past its
//! `max_connections` a new one is closed at once, and so is one from an address that has
//! `max_conns_per_ip` open; past `max_conn_rate` connections a second the listener waits before
//! it accepts the next (`limits`). No listener may take more connections than the open-file
//! limit leaves descriptors for. The TLS and WebSocket handshakes must end within
//! `mqtt.connect_timeout`, so a silent client cannot hold a slot. A listener behind a load
//! balancer may take the client's address from the PROXY protocol header the balancer opens
//! each connection with (`proxy`); a ws or wss listener behind an HTTP proxy, from a header
//! of the HTTP upgrade (`X-Forwarded-For`, see `ws`). Either way the address is known only
//! after the connection has begun, and `max_conns_per_ip` counts it then.

mod limits;
mod partial;
mod proxy;
mod tls;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::config::{Forwarded, ListenerSettings};
use crate::connection::Tagged;
use crate::log_limit::{held_back, Throttle};
use crate::node::Node;
use limits::{AddressSlot, ConnRate, PerAddress};
pub(crate) use partial::PartialInput;
use partial::{Records, Watched};
use tls::Tls;
pub(crate) use tls::TlsError;

/// What a listener speaks on top of TCP.
#[derive(Debug, Clone)]
enum Kind {
    Tcp,
    Ssl(Tls),
    Ws { path: Arc<str>, forwarded: Option<Arc<Forwarded>> },
    Wss { tls: Tls, path: Arc<str>, forwarded: Option<Arc<Forwarded>> },
}

impl Kind {
    /// The name in logs: `mqtt` for plain TCP (the name tests and operators look for).
    fn name(&self) -> &'static str {
        match self {
            Kind::Tcp => "mqtt",
            Kind::Ssl(_) => "ssl",
            Kind::Ws { .. } => "ws",
            Kind::Wss { .. } => "wss",
        }
    }

    /// The headers of the HTTP upgrade that carry the client's address, if it has them.
    fn forwarded(&self) -> Option<&Forwarded> {
        match self {
            Kind::Ws { forwarded, .. } | Kind::Wss { forwarded, .. } => forwarded.as_deref(),
            _ => None,
        }
    }

    /// The section of its settings, for logs: `mqtt` (for plain TCP) or `listener.<kind>`.
    fn section(&self) -> &'static str {
        match self {
            Kind::Tcp => "mqtt",
            Kind::Ssl(_) => "listener.ssl",
            Kind::Ws { .. } => "listener.ws",
            Kind::Wss { .. } => "listener.wss",
        }
    }
}

/// How many connections a listener takes, how fast, and how many from one address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    /// Connections accepted a second; 0 for no limit.
    pub(crate) max_conn_rate: u32,
    /// Connections open at once from one address; 0 for no limit.
    pub(crate) max_conns_per_ip: usize,
}

/// A listener to start: its address, protocol and limits, checked (TLS files read).
#[derive(Debug)]
pub(crate) struct Plan {
    bind: SocketAddr,
    kind: Kind,
    limits: Limits,
    /// With the PROXY protocol: how long the header may take (`proxy`).
    proxy_protocol: Option<Duration>,
}

/// The listeners `settings` ask for, plain TCP first (its limits are `tcp`, from `[mqtt]`);
/// an error names the bad setting or file. No listener's `max_connections` exceeds
/// `descriptors`, the clients the open-file limit allows (lowered with a warning). Those with
/// the PROXY protocol wait for its header at most `proxy_timeout`.
pub(crate) fn plan(
    settings: &ListenerSettings,
    tcp: Limits,
    descriptors: usize,
    proxy_timeout: Duration,
) -> Result<Vec<Plan>, TlsError> {
    let proxy = |on: bool| on.then_some(proxy_timeout);
    let mut plans =
        vec![Plan { bind: settings.tcp, kind: Kind::Tcp, limits: tcp, proxy_protocol: proxy(settings.proxy_protocol) }];
    if let Some(bind) = settings.ssl.bind {
        let kind = Kind::Ssl(Tls::new("ssl", &settings.ssl.tls)?);
        let ssl = &settings.ssl;
        let limits = Limits {
            max_connections: ssl.max_connections,
            max_conn_rate: ssl.max_conn_rate,
            max_conns_per_ip: ssl.max_conns_per_ip,
        };
        plans.push(Plan { bind, kind, limits, proxy_protocol: proxy(ssl.proxy_protocol) });
    }
    if let Some(bind) = settings.ws.bind {
        let ws = &settings.ws;
        // Checked by `config::load`.
        let forwarded = ws.forwarded().ok().flatten().map(Arc::new);
        let kind = Kind::Ws { path: ws.path.as_str().into(), forwarded };
        let limits = Limits {
            max_connections: ws.max_connections,
            max_conn_rate: ws.max_conn_rate,
            max_conns_per_ip: ws.max_conns_per_ip,
        };
        plans.push(Plan { bind, kind, limits, proxy_protocol: proxy(ws.proxy_protocol) });
    }
    if let Some(bind) = settings.wss.bind {
        let wss = &settings.wss;
        let forwarded = wss.forwarded().ok().flatten().map(Arc::new);
        let kind = Kind::Wss { tls: Tls::new("wss", &wss.tls)?, path: wss.path.as_str().into(), forwarded };
        let limits = Limits {
            max_connections: wss.max_connections,
            max_conn_rate: wss.max_conn_rate,
            max_conns_per_ip: wss.max_conns_per_ip,
        };
        plans.push(Plan { bind, kind, limits, proxy_protocol: proxy(wss.proxy_protocol) });
    }
    for plan in &mut plans {
        if plan.limits.max_connections > descriptors {
            tracing::warn!(
                "{}.max_connections ({}) lowered to {descriptors}: the open-file limit leaves descriptors for no \
                 more (one a client); raise it with `ulimit -n`",
                plan.kind.section(),
                plan.limits.max_connections
            );
            plan.limits.max_connections = descriptors;
        }
    }
    Ok(plans)
}

impl Plan {
    /// Binds the address and serves it forever; logs `<kind> listener on <addr>`.
    pub(crate) async fn start(self, node: Arc<Node>) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        tracing::info!("{} listener on {addr}", self.kind.name());
        let name = self.kind.name();
        if self.proxy_protocol.is_some() {
            tracing::info!("{name} listener: each connection opens with a PROXY protocol header (a load balancer's)");
        }
        if let Some(forwarded) = self.kind.forwarded() {
            let header = &forwarded.address;
            tracing::info!(
                "{name} listener: the client's address is the last one in the {header} header of its upgrade"
            );
        }
        tokio::spawn(serve(listener, self.kind, self.limits, self.proxy_protocol, node));
        Ok(addr)
    }

    /// The address it is to listen on.
    pub(crate) fn bind(&self) -> SocketAddr {
        self.bind
    }

    /// The setting that gave its address, for errors (`listener.ssl.bind`, ...).
    pub(crate) fn setting(&self) -> &'static str {
        match self.kind {
            Kind::Tcp => "listener.tcp",
            Kind::Ssl(_) => "listener.ssl.bind",
            Kind::Ws { .. } => "listener.ws.bind",
            Kind::Wss { .. } => "listener.wss.bind",
        }
    }
}

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often a refusal for the same reason and address is logged.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(60);

/// Accepts connections forever (`proxy_protocol`: with its header, and how long it may take).
async fn serve(listener: TcpListener, kind: Kind, limits: Limits, proxy_protocol: Option<Duration>, node: Arc<Node>) {
    let open = Arc::new(AtomicUsize::new(0));
    let max = limits.max_connections;
    let mut rate = ConnRate::new(limits.max_conn_rate, Instant::now());
    let per_address = PerAddress::new(limits.max_conns_per_ip);
    let refusals = Arc::new(Throttle::new(REFUSAL_LOG_WINDOW));
    let section = kind.section();
    loop {
        if let Some(rate) = &mut rate {
            while let Err(wait) = rate.take(Instant::now()) {
                if let Some(n) = refusals.check(("max_conn_rate", None), Instant::now()) {
                    let rate = limits.max_conn_rate;
                    tracing::info!("{section}.max_conn_rate ({rate}/s) reached: accepting slower{}", held_back(n));
                }
                tokio::time::sleep(wait).await;
            }
        }
        match listener.accept().await {
            Ok((socket, peer)) => {
                if open.fetch_add(1, Ordering::Relaxed) >= max {
                    open.fetch_sub(1, Ordering::Relaxed);
                    if let Some(n) = refusals.check(("max_connections", Some(peer.ip())), Instant::now()) {
                        tracing::warn!(%peer, "connection refused: {section}.max_connections ({max}) reached{}", held_back(n));
                    }
                    continue;
                }
                let open = OpenConnection(open.clone());
                if proxy_protocol.is_some() || kind.forwarded().is_some() {
                    // The client's address, for `max_conns_per_ip` too, is in a header.
                    let _ = socket.set_nodelay(true);
                    let admission =
                        LateAdmission { per_address: per_address.clone(), refusals: refusals.clone(), limits, section };
                    let behind = Behind { node: node.clone(), kind: kind.clone(), admission };
                    let serving = Box::pin(behind.serve(socket, peer, proxy_protocol));
                    tokio::spawn(Counted { serving, counted: (open, AddressSlot::uncounted()) });
                    continue;
                }
                let Some(slot) = per_address.admit(peer.ip()) else {
                    if let Some(n) = refusals.check(("max_conns_per_ip", Some(peer.ip())), Instant::now()) {
                        let per_ip = limits.max_conns_per_ip;
                        tracing::warn!(%peer, "connection refused: {section}.max_conns_per_ip ({per_ip}) reached{}", held_back(n));
                    }
                    continue;
                };
                let _ = socket.set_nodelay(true);
                match kind {
                    Kind::Tcp => tokio::spawn(tcp_task(node.clone(), socket, peer, (open, slot))),
                    _ => tokio::spawn(Counted {
                        serving: Box::pin(connect_layered(node.clone(), kind.clone(), socket, peer, None)),
                        counted: (open, slot),
                    }),
                };
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: `serving` the connection, counted open until the task is done.
    ///
    /// Its size is what every connection costs for its whole life (tokio keeps the future in
    /// the task's allocation). A plain TCP connection's is held inline; the TLS and WebSocket
    /// handshakes and streams are an order of magnitude bigger (15 KiB: nearly all of an idle
    /// client's cost while they were inline) and are boxed, paid for by those connections
    /// alone. A struct, not an `async fn`: that would keep its arguments beside the future it
    /// moves them into. `tests::a_tcp_connection_task_stays_small` keeps it small.
    struct Counted<F> {
        #[pin]
        serving: F,
        // Released when the connection ends: the listener's and its address's counts.
        counted: (OpenConnection, AddressSlot),
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().serving.poll(cx)
    }
}

/// Counts a connection against its client's address once that is known: after the PROXY
/// protocol header, or after the HTTP upgrade that names it.
#[derive(Clone)]
struct LateAdmission {
    per_address: PerAddress,
    refusals: Arc<Throttle<(&'static str, Option<std::net::IpAddr>)>>,
    limits: Limits,
    section: &'static str,
}

impl LateAdmission {
    /// The connection's count against `peer`'s address, `None` (logged) when that address
    /// has `max_conns_per_ip` open already.
    fn admit(&self, peer: SocketAddr) -> Option<AddressSlot> {
        let slot = self.per_address.admit(peer.ip());
        if slot.is_none() {
            if let Some(n) = self.refusals.check(("max_conns_per_ip", Some(peer.ip())), Instant::now()) {
                let (section, per_ip) = (self.section, self.limits.max_conns_per_ip);
                tracing::warn!(%peer, "connection refused: {section}.max_conns_per_ip ({per_ip}) reached{}", held_back(n));
            }
        }
        slot
    }
}

/// What a connection whose client's address comes in a header (a load balancer's PROXY
/// protocol, an HTTP proxy's `X-Forwarded-For`) is served with.
struct Behind {
    node: Arc<Node>,
    kind: Kind,
    admission: LateAdmission,
}

impl Behind {
    /// Reads the PROXY protocol header within `proxy_protocol` when the listener takes it,
    /// counts the connection against the client's address it gives (`balancer`'s for the
    /// balancer's own), then serves it as its listener does. A WebSocket listener that takes
    /// the address from the upgrade's headers counts it after the upgrade.
    async fn serve(self, mut socket: TcpStream, balancer: SocketAddr, proxy_protocol: Option<Duration>) {
        let refusals = &self.admission.refusals;
        let peer = match proxy_protocol {
            None => balancer,
            Some(timeout) => match proxy::read_header(&mut socket, timeout).await {
                Ok(client) => client.unwrap_or(balancer),
                Err(e) => {
                    if let Some(n) = refusals.check(("proxy_protocol", Some(balancer.ip())), Instant::now()) {
                        let name = self.kind.name();
                        tracing::warn!(%balancer, "connection closed: {e} (the {name} listener takes the PROXY protocol){}", held_back(n));
                    }
                    return;
                }
            },
        };
        if self.kind.forwarded().is_some() {
            return connect_layered(self.node, self.kind, socket, peer, Some(self.admission)).await;
        }
        let Some(_slot) = self.admission.admit(peer) else { return };
        match self.kind {
            Kind::Tcp => crate::connection::serve(self.node, socket, peer).await,
            kind => connect_layered(self.node, kind, socket, peer, None).await,
        }
    }
}

/// A plain TCP connection's task.
fn tcp_task(
    node: Arc<Node>,
    socket: TcpStream,
    peer: SocketAddr,
    counted: (OpenConnection, AddressSlot),
) -> Counted<impl Future<Output = ()>> {
    Counted { serving: crate::connection::serve(node, socket, peer), counted }
}

/// Runs the listener's handshakes (TLS, WebSocket), then the MQTT connection. With
/// `admission`, the connection is counted against its client's address after the
/// WebSocket upgrade, which may name it (see [`Forwarded`]).
async fn connect_layered(
    node: Arc<Node>,
    kind: Kind,
    socket: TcpStream,
    peer: SocketAddr,
    admission: Option<LateAdmission>,
) {
    let port = socket.local_addr().map_or(0, |a| a.port());
    let deadline = node.zone.connect_timeout;
    let admit = |peer: SocketAddr| match &admission {
        Some(admission) => admission.admit(peer).map(Some),
        None => Some(None),
    };
    // What the TLS and WebSocket layers hold of a record or frame begun (the connection's
    // `mqtt.packet_timeout` runs while they do).
    let partial = PartialInput::default();
    match kind {
        Kind::Tcp => crate::connection::serve(node, socket, peer).await,
        Kind::Ssl(tls) => {
            let watched = Watched::<_, Records>::new(socket, partial.clone());
            let Some(stream) = tls_accept(&tls, watched, peer, deadline).await else { return };
            let username = tls.cert_username(stream.get_ref().1);
            crate::connection::serve(node, Tagged::new(stream, port, username).watched(partial), peer).await;
        }
        Kind::Ws { path, forwarded } => {
            let upgraded = ws_upgrade(socket, &path, forwarded.as_deref(), &node, peer, deadline, &partial).await;
            let Some((stream, client)) = upgraded else { return };
            let peer = client.unwrap_or(peer);
            let Some(_slot) = admit(peer) else { return };
            crate::connection::serve(node, Tagged::new(stream, port, None).watched(partial), peer).await;
        }
        Kind::Wss { tls, path, forwarded } => {
            let started = tokio::time::Instant::now();
            let watched = Watched::<_, Records>::new(socket, partial.clone());
            let Some(stream) = tls_accept(&tls, watched, peer, deadline).await else { return };
            let username = tls.cert_username(stream.get_ref().1);
            let left = deadline.saturating_sub(started.elapsed());
            let upgraded = ws_upgrade(stream, &path, forwarded.as_deref(), &node, peer, left, &partial).await;
            let Some((stream, client)) = upgraded else { return };
            let peer = client.unwrap_or(peer);
            let Some(_slot) = admit(peer) else { return };
            crate::connection::serve(node, Tagged::new(stream, port, username).watched(partial), peer).await;
        }
    }
}

/// The TLS handshake, within `deadline`; `None` (logged) when it fails.
async fn tls_accept<S>(
    tls: &Tls,
    socket: S,
    peer: SocketAddr,
    deadline: Duration,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(deadline, tls.acceptor.accept(socket)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake not done within mqtt.connect_timeout ({deadline:?}); closing");
            None
        }
    }
}

/// The WebSocket upgrade, within `deadline`, and the client's address if `forwarded`'s
/// header named one; `None` (logged) when it fails. A frame begun shows in `partial`.
async fn ws_upgrade<S>(
    stream: S,
    path: &str,
    forwarded: Option<&Forwarded>,
    node: &Node,
    peer: SocketAddr,
    deadline: Duration,
    partial: &PartialInput,
) -> Option<(ws::WsTransport<S>, Option<SocketAddr>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let upgrade = ws::upgrade(stream, path, forwarded, peer, node.zone.max_packet_size, partial.clone());
    match tokio::time::timeout(deadline, upgrade).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::info!(%peer, "WebSocket upgrade refused: {e}");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "WebSocket upgrade not done within mqtt.connect_timeout ({deadline:?}); closing");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns (without calling it).
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Arc<Node>, TcpStream, SocketAddr, (OpenConnection, AddressSlot)) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle client costs its task's future for as long as it stays connected: with the
    /// TLS and WebSocket handshakes inline it was 15,216 bytes, nearly all of a client's
    /// 16.5 KiB. A plain TCP connection's is about 500 bytes now (`Connection` inline); 640
    /// leaves room for a few fields, not for a stream or a handshake to creep back in. (The
    /// figure that matters is measured by `bench/src/bin/idle_memory.rs`.)
    #[test]
    fn a_tcp_connection_task_stays_small() {
        let size = future_size(tcp_task);
        assert!(size <= 640, "a TCP connection's task future is {size} bytes (limit 640)");
    }
}
