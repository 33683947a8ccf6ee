//! `emqx_dashboard`: a web page on `127.0.0.1:18083` over the management API: an overview
//! (clients, messages, uptime, refreshed live) and a Plugins page with a Stop / Start button
//! for each plugin. Login uses the management API's credentials: the page's `/api/` calls are
//! passed to `emqx_management` unchanged, so there is one user list and one place that checks
//! it. The page and its script are embedded in the plugin (no CDN; works offline).
//!
//! Stopping the dashboard itself from its own page is refused with a clear message (it would
//! cut off the page); use `broker ctl plugins unload emqx_dashboard`.
//!
//! Config (`[dashboard]`): `listen` (default `127.0.0.1:18083`), `api` (the management API,
//! default `http://127.0.0.1:8081`).
#![forbid(unsafe_code)]

mod server;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread::JoinHandle;

use plugin_api::{declare_plugin, BoxError, Config, HookMask, Host, Plugin, PluginInfo, PluginKind};
use serde::Deserialize;
use tokio::sync::oneshot;

const NAME: &str = "emqx_dashboard";

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    listen: SocketAddr,
    api: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { listen: "127.0.0.1:18083".parse().expect("valid address"), api: "http://127.0.0.1:8081".into() }
    }
}

pub struct Dashboard {
    host: Host,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Plugin for Dashboard {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let listener = std::net::TcpListener::bind(settings.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let app = server::router(settings.api.trim_end_matches('/').to_owned())?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name(NAME.into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => return host.error(&format!("dashboard listener failed: {e}")),
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(e) = serve.await {
                    host.error(&format!("dashboard stopped: {e}"));
                }
            })
        })?;
        host.info(&format!("dashboard listening on http://{addr}/ (API at {})", settings.api));
        Ok(Dashboard { host, shutdown: Mutex::new(Some(shutdown)), thread: Mutex::new(Some(thread)) })
    }

    fn stop(self) {
        if let Some(shutdown) = self.shutdown.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
        self.host.info("dashboard stopped");
    }
}

declare_plugin!(
    Dashboard,
    PluginInfo {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQX Web Dashboard",
        kind: PluginKind::Plugin,
        hooks: HookMask(0),
        priority: 0,
        ctl_command: None,
    }
);
