//! The HTTP/2 connections the gRPC calls go over, and each call's way through them.
//!
//! Each server has `pool_size` [`Connection`]s. A connection is made when a call first needs
//! it (TCP, then for `https://` TLS with ALPN `h2`, then the HTTP/2 handshake, all within the
//! request timeout), and made again by the next call once it broke. One task on the plugin's
//! runtime drives it, and pings the server every [`KEEP_ALIVE_INTERVAL`]: a connection whose
//! pong does not come within the keep-alive timeout is closed (a server gone without a word).
//!
//! A call ([`Call`]: the service tonic's generated clients call through) is sent by the task
//! that makes it, its one message in the same write as its headers, and that task reads the
//! answer: no other task is handed the call or woken for it. tonic's own `Channel` hands
//! each request to its buffer's task, and hyper spawns a task for each response; two
//! hand-offs a call, which cost the broker a third of its CPU a call in the comparison that
//! docs/benchmarks.md gives ("Plugins that reach outside: earlier runs").

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tonic::body::Body;

/// How often an open connection pings its server.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// The receive windows of a stream and of a connection: what a server may send before the
/// plugin has read it (hyper's defaults, which tonic's channel used).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Why a call could not go over its connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("connecting to {authority}: {why}")]
    Connect { authority: String, why: String },
    #[error("{0}")]
    Http2(#[from] h2::Error),
    #[error("the request body: {0}")]
    Body(String),
}

/// Where a server is and how to reach it, shared by its connections.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `scheme://authority` of the URL: tonic's clients make each request's URI from it.
    origin: http::Uri,
    authority: String,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    connect_timeout: Duration,
    keep_alive_timeout: Duration,
}

impl Endpoint {
    /// The server at `url` (`http://` or `https://`), its TLS from `tls` (see [`tls_config`]).
    pub(crate) fn new(
        url: &str,
        tls: Option<ClientConfig>,
        server_name: Option<&str>,
        connect_timeout: Duration,
        keep_alive_timeout: Duration,
    ) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("url {url}: {e}"))?;
        let authority = uri.authority().ok_or_else(|| format!("url {url}: no host"))?.clone();
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("url {url}: http:// or https:// only")),
        };
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        // An IPv6 address is written in brackets in a URL and an address, without in a TLS name.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let tls = match (https, tls) {
            (false, _) => None,
            (true, None) => return Err(format!("url {url}: https:// without TLS settings")),
            (true, Some(config)) => {
                let name = server_name.unwrap_or(host).to_owned();
                let name = ServerName::try_from(name.clone()).map_err(|e| format!("server name {name:?}: {e}"))?;
                Some((Arc::new(config), name))
            }
        };
        let origin = http::Uri::builder()
            .scheme(if https { "https" } else { "http" })
            .authority(authority.as_str())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("url {url}: {e}"))?;
        let authority = format!("{}:{port}", authority.host());
        Ok(Endpoint { origin, authority, tls, connect_timeout, keep_alive_timeout })
    }

    /// The origin tonic's clients are made with.
    pub(crate) fn origin(&self) -> http::Uri {
        self.origin.clone()
    }

    /// A new HTTP/2 connection, driven by a task of the current runtime.
    async fn connect(&self) -> Result<Live, String> {
        let tcp = TcpStream::connect(&self.authority).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((config, name)) => {
                let tls = TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("TLS: the server did not agree to HTTP/2 (ALPN h2)".to_owned());
                }
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<Live, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            // hyper's windows (h2's own are 64 KiB): a large message is not held to a
            // window update every 64 KiB.
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<T, Bytes>(io)
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping_pong = connection.ping_pong();
        let keep_alive_timeout = self.keep_alive_timeout;
        let done = closed.clone();
        tokio::spawn(async move {
            let keep_alive = async {
                let Some(mut ping_pong) = ping_pong else { return std::future::pending().await };
                loop {
                    tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
                    match tokio::time::timeout(keep_alive_timeout, ping_pong.ping(h2::Ping::opaque())).await {
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                }
            };
            tokio::select! {
                _ = &mut connection => {}
                () = keep_alive => {}
            }
            done.store(true, Ordering::Release);
        });
        Ok(Live { send, closed })
    }
}

/// One open HTTP/2 connection.
#[derive(Debug, Clone)]
struct Live {
    send: h2::client::SendRequest<Bytes>,
    /// Set by its task when the connection ended.
    closed: Arc<AtomicBool>,
}

/// One connection of a server's pool: open, or to be opened by the next call.
#[derive(Debug)]
pub(crate) struct Connection {
    endpoint: Arc<Endpoint>,
    live: Mutex<Option<Live>>,
    /// Held while opening, so that calls waiting for it share one new connection.
    opening: tokio::sync::Mutex<()>,
}

impl Connection {
    pub(crate) fn new(endpoint: Arc<Endpoint>) -> Connection {
        Connection { endpoint, live: Mutex::new(None), opening: tokio::sync::Mutex::new(()) }
    }

    fn current(&self) -> Option<Live> {
        let live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        live.as_ref().filter(|l| !l.closed.load(Ordering::Acquire)).cloned()
    }

    /// The open connection, opened if there is none.
    async fn open(&self) -> Result<Live, TransportError> {
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let _opening = self.opening.lock().await;
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let endpoint = &self.endpoint;
        let failed = |why: String| TransportError::Connect { authority: endpoint.authority.clone(), why };
        let live = match tokio::time::timeout(endpoint.connect_timeout, endpoint.connect()).await {
            Ok(Ok(live)) => live,
            Ok(Err(why)) => return Err(failed(why)),
            Err(_) => return Err(failed(format!("no connection within {:?}", endpoint.connect_timeout))),
        };
        *self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(live.clone());
        Ok(live)
    }

    /// Opens the connection if it is not open (a failure is left to the next call).
    pub(crate) async fn open_now(&self) {
        let _ = self.open().await;
    }

    /// `live` broke: the next call opens a new connection (unless one replaced it already).
    fn broke(&self, live: &Live) {
        live.closed.store(true, Ordering::Release);
        let mut current = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(&c.closed, &live.closed)) {
            *current = None;
        }
    }
}

/// The service a call goes through: one connection of the pool.
#[derive(Debug, Clone)]
pub(crate) struct Call(pub(crate) Arc<Connection>);

impl tower_service::Service<http::Request<Body>> for Call {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, TransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        // Whether the connection takes another stream is known once the call has it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let connection = self.0.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = read_whole(body).await?;
            let live = connection.open().await?;
            let sent = async {
                let mut send = live.send.clone().ready().await?;
                let (response, mut stream) = send.send_request(http::Request::from_parts(parts, ()), false)?;
                stream.send_data(body, true)?;
                response.await
            };
            match sent.await {
                Ok(response) => {
                    let (parts, received) = response.into_parts();
                    Ok(http::Response::from_parts(parts, Body::new(Received { stream: received, data_done: false })))
                }
                Err(e) => {
                    // A reset ends this call's stream only; anything else, the connection.
                    if !e.is_reset() {
                        connection.broke(&live);
                    }
                    Err(e.into())
                }
            }
        })
    }
}

/// A request body read to its end (a unary call's: one message, ready at once).
async fn read_whole(mut body: Body) -> Result<Bytes, TransportError> {
    let mut whole = BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|status| TransportError::Body(status.message().to_owned()))?;
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
    }
    Ok(whole.freeze())
}

/// A response's body as tonic reads it: its data, then its trailers (`grpc-status`).
struct Received {
    stream: h2::RecvStream,
    data_done: bool,
}

impl http_body::Body for Received {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match self.stream.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Read: the server may send that much more.
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.stream.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

/// TLS for an `https://` server: the server's certificate checked against `cacertfile` (or
/// the public web PKI's roots), the client's certificate (PEM chain and key) shown if given.
pub(crate) fn tls_config(
    cacert: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match cacert {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("ssl.cacertfile: {e}"))?;
                roots.add(cert).map_err(|e| format!("ssl.cacertfile: {e}"))?;
            }
            if roots.is_empty() {
                return Err("ssl.cacertfile: no certificate in it".to_owned());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("ssl: {e}"))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("ssl.certfile: {e}"))?;
            if chain.is_empty() {
                return Err("ssl.certfile: no certificate in it".to_owned());
            }
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("ssl.keyfile: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("ssl.keyfile: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, tls: bool) -> Result<Endpoint, String> {
        let tls = tls.then(|| tls_config(None, None).expect("TLS with the public roots"));
        Endpoint::new(url, tls, None, Duration::from_secs(1), Duration::from_secs(5))
    }

    #[test]
    fn urls_give_the_address_the_origin_and_the_tls_name() {
        let e = endpoint("http://127.0.0.1:9000", false).unwrap();
        assert_eq!((e.authority.as_str(), e.origin.to_string().as_str()), ("127.0.0.1:9000", "http://127.0.0.1:9000/"));
        assert!(e.tls.is_none());
        assert_eq!(endpoint("http://hooks.local/", false).unwrap().authority, "hooks.local:80");
        let e = endpoint("https://[::1]:9443", true).unwrap();
        assert_eq!(e.authority, "[::1]:9443", "IPv6 in brackets, to connect to");
        assert_eq!(e.tls.as_ref().map(|(_, name)| name.to_str().into_owned()), Some("::1".to_owned()));
        assert_eq!(endpoint("https://hooks.example", true).unwrap().authority, "hooks.example:443");
        for bad in ["ftp://h:1", "127.0.0.1:9000", "http://"] {
            assert!(endpoint(bad, false).is_err(), "{bad}");
        }
        assert!(endpoint("https://h:1", false).is_err(), "https:// needs its TLS settings");
    }
}
