//! Listeners: accept client connections and give each its own task (`connection::serve`).
//! EMQX's four kinds: `tcp` (plain MQTT), `ssl` (MQTT over TLS), `ws` (MQTT over WebSocket)
//! and `wss` (WebSocket over TLS). Each listener counts its own open connections; past its
//! `max_connections` a new one is closed at once. The TLS and WebSocket handshakes must end
//! within `mqtt.connect_timeout`, so a silent client cannot hold a slot.

mod tls;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
                let open = OpenConnection(open.clone());
                let _ = socket.set_nodelay(true);
                match kind {
                    Kind::Tcp => tokio::spawn(tcp_task(node.clone(), socket, peer, open)),
                    _ => tokio::spawn(Counted {
                        serving: Box::pin(connect_layered(node.clone(), kind.clone(), socket, peer)),
                        open,
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
        open: OpenConnection,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().serving.poll(cx)
    }
}

/// A plain TCP connection's task.
fn tcp_task(
    node: Arc<Node>,
    socket: TcpStream,
    peer: SocketAddr,
    open: OpenConnection,
) -> Counted<impl Future<Output = ()>> {
    Counted { serving: crate::connection::serve(node, socket, peer), open }
}

/// Runs the listener's handshakes (TLS, WebSocket), then the MQTT connection.
async fn connect_layered(node: Arc<Node>, kind: Kind, socket: TcpStream, peer: SocketAddr) {
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
            let Some(stream) = ws_upgrade(socket, &path, peer, deadline).await else { return };
            crate::connection::serve(node, Tagged::new(stream, port, None), peer).await;
        }
        Kind::Wss { tls, path } => {
            let started = tokio::time::Instant::now();
            let Some(stream) = tls_accept(&tls, socket, peer, deadline).await else { return };
            let username = tls.cert_username(stream.get_ref().1);
            let left = deadline.saturating_sub(started.elapsed());
            let Some(stream) = ws_upgrade(stream, &path, peer, left).await else { return };
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
async fn ws_upgrade<S>(stream: S, path: &str, peer: SocketAddr, deadline: Duration) -> Option<ws::WsTransport<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    match tokio::time::timeout(deadline, ws::upgrade(stream, path)).await {
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
        F: FnOnce(Arc<Node>, TcpStream, SocketAddr, OpenConnection) -> Fut,
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
