//! `emqx_dashboard`: a web page on `127.0.0.1:18083` over the management API: an overview
//! (clients, messages, uptime, refreshed live; a chart of messages in/out per second from the
//! deltas of `/api/v4/metrics`) and a Plugins page with a Stop / Start button
//! for each plugin, and EMQX's WebSocket page (an MQTT client over WebSocket in plain JS,
//! `assets/websocket.js`, prefilled as EMQX's is: this host, port 8083, path `/mqtt`).
//! Login uses the management API's credentials: the page's `/api/` calls are passed to
//! `emqx_management` unchanged, so there is one user list and one place that checks
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

use plugin_api::{declare_plugin, BoxError, Config, HookMask, Host, Plugin, PluginInfo, PluginKind};
use plugin_http::HttpServer;
use serde::Deserialize;

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
    server: HttpServer,
}

impl Plugin for Dashboard {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let app = server::router(settings.api.trim_end_matches('/').to_owned(), host)?;
        let server = HttpServer::start(NAME, host, settings.listen, app)?;
        host.info(&format!("dashboard listening on http://{}/ (API at {})", server.addr(), settings.api));
        Ok(Dashboard { host, server })
    }

    fn stop(self) {
        self.server.stop();
        self.host.info("dashboard stopped");
    }
}

declare_plugin!(
    Dashboard,
    PluginInfo {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Dashboard",
        kind: PluginKind::Plugin,
        hooks: HookMask(0),
        priority: 0,
        ctl_command: None,
    }
);
