//! `emqx_management`: the REST API under `/api/v4/` on `127.0.0.1:8081` (EMQX 4.x's shape):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v4/brokers` | node, version, uptime |
//! | GET | `/api/v4/stats` | `connections.count`, `messages.received`, `messages.sent`, `uptime` |
//! | GET | `/api/v4/metrics` | every counter (`messages.received`, `bytes.sent`, ...) per node |
//! | GET | `/api/v4/clients` | connected clients |
//! | GET | `/api/v4/plugins` | per node, as EMQX: `[{"node", "plugins": [{name, description, active, type}]}]` |
//! | GET | `/api/v4/nodes/{node}/plugins` | this node's plugins: `[{name, description, active, type}]` |
//! | PUT | `/api/v4/nodes/{node}/plugins/{name}/load`, `unload`, `reload` | as `broker ctl plugins ...`, persisted the same way; `{"code": 0}` |
//! | PUT | `/api/v4/plugins/{name}/load`, `unload`, `reload` | the same, without the node |
//! | GET, PUT | `/api/v4/telemetry/status` | `{"enabled": bool}` |
//! | GET | `/api/v4/telemetry/data` | the next telemetry report |
//! | GET, POST | `/api/v4/auth_username`, `/api/v4/auth_clientid` | `emqx_auth_mnesia`'s logins: list, add |
//! | GET, PUT, DELETE | `/api/v4/auth_username/{username}`, `/api/v4/auth_clientid/{clientid}` | one login |
//!
//! HTTP basic auth; default `admin` / `public` (a warning is logged while that password is in
//! use). Config (`[management]`): `listen`, `username`, `password`.
#![forbid(unsafe_code)]

mod api;
mod auth_api;

use std::net::SocketAddr;

use plugin_api::{declare_plugin, BoxError, Config, HookMask, Host, Plugin, PluginInfo, PluginKind};
use plugin_http::HttpServer;
use serde::Deserialize;

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

/// The API's HTTP server, stopped and joined on `stop`.
pub struct Management {
    host: Host,
    server: HttpServer,
}

impl Plugin for Management {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        if settings.password == DEFAULT_PASSWORD {
            host.warn(&format!(
                "the management API uses the default password for {:?}; set management.password \
                 (BROKER_MANAGEMENT__PASSWORD)",
                settings.username
            ));
        }
        let app = api::router(host, api::Credentials { username: settings.username, password: settings.password });
        let server = HttpServer::start(NAME, host, settings.listen, app)?;
        host.info(&format!("management API listening on http://{}/api/v4/", server.addr()));
        Ok(Management { host, server })
    }

    fn stop(self) {
        self.server.stop();
        self.host.info("management API stopped");
    }
}

declare_plugin!(
    Management,
    PluginInfo {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Management",
        kind: PluginKind::Plugin,
        hooks: HookMask(0),
        priority: 0,
        ctl_command: None,
    }
);
