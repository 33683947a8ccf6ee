//! `emqx_management`: the REST API under `/api/v4/` on `127.0.0.1:8081` (EMQX 4.x's shape):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v4/brokers` | node, version, uptime |
//! | GET | `/api/v4/stats` | `connections.count`, `messages.received`, `messages.sent`, `uptime` |
//! | GET | `/api/v4/clients` | connected clients |
//! | GET | `/api/v4/plugins` | every known plugin: name, version, description, active, type |
//! | PUT | `/api/v4/plugins/{name}/load`, `unload`, `reload` | as `broker ctl plugins ...`, persisted the same way |
//! | GET, PUT | `/api/v4/telemetry/status` | `{"enable": bool}` |
//! | GET | `/api/v4/telemetry/data` | the next telemetry report |
//!
//! HTTP basic auth; default `admin` / `public` (a warning is logged while that password is in
//! use). Config (`[management]`): `listen`, `username`, `password`.
#![forbid(unsafe_code)]

mod api;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread::JoinHandle;

use plugin_api::{declare_plugin, BoxError, Config, HookMask, Host, Plugin, PluginInfo, PluginKind};
use serde::Deserialize;
use tokio::sync::oneshot;

const NAME: &str = "emqx_management";
const DEFAULT_PASSWORD: &str = "public";

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    listen: SocketAddr,
    username: String,
    password: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8081".parse().expect("valid address"),
            username: "admin".into(),
            password: DEFAULT_PASSWORD.into(),
        }
    }
}

/// The HTTP server thread, stopped and joined on `stop`.
pub struct Management {
    host: Host,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Plugin for Management {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let listener = std::net::TcpListener::bind(settings.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        if settings.password == DEFAULT_PASSWORD {
            host.warn(&format!(
                "the management API uses the default password for {:?}; set management.password \
                 (BROKER_MANAGEMENT__PASSWORD)",
                settings.username
            ));
        }
        let app = api::router(host, api::Credentials { username: settings.username, password: settings.password });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name(NAME.into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => return host.error(&format!("management API listener failed: {e}")),
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(e) = serve.await {
                    host.error(&format!("management API stopped: {e}"));
                }
            })
        })?;
        host.info(&format!("management API listening on http://{addr}/api/v4/"));
        Ok(Management { host, shutdown: Mutex::new(Some(shutdown)), thread: Mutex::new(Some(thread)) })
    }

    fn stop(self) {
        if let Some(shutdown) = self.shutdown.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
        self.host.info("management API stopped");
    }
}

declare_plugin!(
    Management,
    PluginInfo {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQX Management API and CLI",
        kind: PluginKind::Plugin,
        hooks: HookMask(0),
        priority: 0,
        ctl_command: None,
    }
);
