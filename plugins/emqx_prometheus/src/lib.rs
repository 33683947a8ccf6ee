//! `emqx_prometheus`: every figure the broker keeps, in the Prometheus text exposition format
//! (0.0.4), at `GET /metrics` on its own address (default `127.0.0.1:9091`):
//!
//! - each stat of `Host::metrics` as a gauge, each metric as a counter, named as EMQX 4.x's
//!   exporter names them (`emqx_` + the name with `.` as `_`: `emqx_connections_count`,
//!   `emqx_messages_received`, ...), whatever names the broker reports;
//! - `emqx_uptime_seconds`, `process_resident_memory_bytes`, `process_start_time_seconds`;
//! - per plugin and hook, what only this broker can show: `emqx_plugin_hook_calls_total` and
//!   `emqx_plugin_hook_seconds_total` with labels `plugin` and `hook`.
//!
//! Config (`[prometheus]`): `bind` (alias `listen`), e.g. `BROKER_PROMETHEUS__BIND`.
#![forbid(unsafe_code)]

mod exposition;
mod render;
mod server;

use std::net::SocketAddr;

use plugin_api::{declare_plugin, BoxError, Config, HookMask, Host, Plugin, PluginInfo, PluginKind};
use plugin_http::HttpServer;
use serde::Deserialize;

const NAME: &str = "emqx_prometheus";

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Where `/metrics` is served.
    #[serde(alias = "listen")]
    bind: SocketAddr,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { bind: "127.0.0.1:9091".parse().expect("valid address") }
    }
}

/// The exporter's HTTP server, stopped and joined on `stop`.
pub struct Prometheus {
    host: Host,
    server: HttpServer,
}

impl Plugin for Prometheus {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        // Fail at load, not at the first scrape, on a broker that cannot report metrics.
        host.metrics().map_err(|e| format!("cannot read the broker's metrics: {e}"))?;
        let server = HttpServer::start(NAME, host, settings.bind, server::router(host))?;
        host.info(&format!("prometheus exporter listening on http://{}/metrics", server.addr()));
        Ok(Prometheus { host, server })
    }

    fn stop(self) {
        self.server.stop();
        self.host.info("prometheus exporter stopped");
    }
}

declare_plugin!(
    Prometheus,
    PluginInfo {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "Prometheus for EMQ X",
        kind: PluginKind::Plugin,
        hooks: HookMask(0),
        priority: 0,
        ctl_command: None,
    }
);
