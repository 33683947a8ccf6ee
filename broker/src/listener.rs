//! Listeners: accept client connections and give each its own task (`connection::serve`).
//! EMQX's four kinds: `tcp` (plain MQTT), `ssl` (MQTT over TLS), `ws` (MQTT over WebSocket)
//! and `wss` (WebSocket over TLS). Each listener counts its own open connections; past its
//! `max_connections` a new one is closed at once. The TLS and WebSocket handshakes must end
//! within `mqtt.connect_timeout`, so a silent client cannot hold a slot.

mod tls;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::config::ListenerSettings;
use crate::connection::Tagged;
use crate::node::Node;
use tls::Tls;
pub(crate) use tls::TlsError;

/// What a listener speaks on top of TCP.
#[derive(Debug, Clone)]
enum Kind {
    Tcp,
    Ssl(Tls),
    Ws { path: Arc<str> },
    Wss { tls: Tls, path: Arc<str> },
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

    /// The setting that limits its connections, for logs.
    fn limit_setting(&self) -> &'static str {
        match self {
            Kind::Tcp => "mqtt.max_connections",
            Kind::Ssl(_) => "listener.ssl.max_connections",
            Kind::Ws { .. } => "listener.ws.max_connections",
            Kind::Wss { .. } => "listener.wss.max_connections",
        }
    }
}

/// A listener to start: its address, protocol and limit, checked (TLS files read).
#[derive(Debug)]
pub(crate) struct Plan {
    bind: SocketAddr,
    kind: Kind,
    max_connections: usize,
}

/// The listeners `settings` ask for, plain TCP first; an error names the bad setting or file.
pub(crate) fn plan(settings: &ListenerSettings, tcp_max_connections: usize) -> Result<Vec<Plan>, TlsError> {
    let mut plans = vec![Plan { bind: settings.tcp, kind: Kind::Tcp, max_connections: tcp_max_connections }];
    if let Some(bind) = settings.ssl.bind {
        let kind = Kind::Ssl(Tls::new("ssl", &settings.ssl.tls)?);
        plans.push(Plan { bind, kind, max_connections: settings.ssl.max_connections });
    }
    if let Some(bind) = settings.ws.bind {
        let kind = Kind::Ws { path: settings.ws.path.as_str().into() };
        plans.push(Plan { bind, kind, max_connections: settings.ws.max_connections });
    }
    if let Some(bind) = settings.wss.bind {
        let kind = Kind::Wss { tls: Tls::new("wss", &settings.wss.tls)?, path: settings.wss.path.as_str().into() };
        plans.push(Plan { bind, kind, max_connections: settings.wss.max_connections });
    }
    Ok(plans)
}

impl Plan {
    /// Binds the address and serves it forever; logs `<kind> listener on <addr>`.
    pub(crate) async fn start(self, node: Arc<Node>) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        tracing::info!("{} listener on {addr}", self.kind.name());
        tokio::spawn(serve(listener, self.kind, self.max_connections, node));
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

/// Accepts connections forever.
async fn serve(listener: TcpListener, kind: Kind, max: usize, node: Arc<Node>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                if open.fetch_add(1, Ordering::Relaxed) >= max {
                    open.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "connection refused: {} ({max}) reached", kind.limit_setting());
                    continue;
                }
                let guard = OpenConnection(open.clone());
                let _ = socket.set_nodelay(true);
                let (node, kind) = (node.clone(), kind.clone());
                tokio::spawn(async move {
                    connect(node, kind, socket, peer).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the listener's handshakes (TLS, WebSocket), then the MQTT connection.
async fn connect(node: Arc<Node>, kind: Kind, socket: TcpStream, peer: SocketAddr) {
    let port = socket.local_addr().map_or(0, |a| a.port());
    let deadline = node.zone.connect_timeout;
    match kind {
        Kind::Tcp => crate::connection::serve(node, socket, peer).await,
        Kind::Ssl(tls) => {
            let Some(stream) = tls_accept(&tls, socket, peer, deadline).await else { return };
            let username = tls.cert_username(stream.get_ref().1);
            crate::connection::serve(node, Tagged::new(stream, port, username), peer).await;
        }
        Kind::Ws { path } => {
            let Some(stream) = ws_upgrade(socket, &path, &node, peer, deadline).await else { return };
            crate::connection::serve(node, Tagged::new(stream, port, None), peer).await;
        }
        Kind::Wss { tls, path } => {
            let started = tokio::time::Instant::now();
            let Some(stream) = tls_accept(&tls, socket, peer, deadline).await else { return };
            let username = tls.cert_username(stream.get_ref().1);
            let left = deadline.saturating_sub(started.elapsed());
            let Some(stream) = ws_upgrade(stream, &path, &node, peer, left).await else { return };
            crate::connection::serve(node, Tagged::new(stream, port, username), peer).await;
        }
    }
}

/// The TLS handshake, within `deadline`; `None` (logged) when it fails.
async fn tls_accept(
    tls: &Tls,
    socket: TcpStream,
    peer: SocketAddr,
    deadline: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
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

/// The WebSocket upgrade, within `deadline`; `None` (logged) when it fails.
async fn ws_upgrade<S>(
    stream: S,
    path: &str,
    node: &Node,
    peer: SocketAddr,
    deadline: Duration,
) -> Option<ws::WsTransport<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    match tokio::time::timeout(deadline, ws::upgrade(stream, path, node.zone.max_packet_size)).await {
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
