//! An HTTP server on its own thread and single-threaded tokio runtime, for plugins that serve
//! HTTP (`emqx_management`, `emqx_dashboard`): started in `init`, stopped and joined in
//! `stop`, as the plugin rules ask.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dashboard_client;

use std::net::SocketAddr;
use std::thread::JoinHandle;

use plugin_api::{BoxError, Host};
use tokio::sync::oneshot;

/// A running server.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `listen` at once (so a busy port fails the plugin's `init` with a clear message)
    /// and serves `app` on a thread named `name`. Problems later are logged through `host`.
    /// Handlers can read the client's address as `axum::extract::ConnectInfo<SocketAddr>`.
    pub fn start(name: &str, host: Host, listen: SocketAddr, app: axum::Router) -> Result<HttpServer, BoxError> {
        let listener = std::net::TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => return host.error(&format!("HTTP listener on {addr} failed: {e}")),
                };
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(e) = serve.await {
                    host.error(&format!("HTTP server on {addr} stopped: {e}"));
                }
            })
        })?;
        Ok(HttpServer { addr, shutdown, thread })
    }

    /// The address it listens on (the real port when `listen` had port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets the requests in flight finish, and joins the thread.
    pub fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.thread.join();
    }
}
