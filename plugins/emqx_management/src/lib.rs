//! `emqx_management`: the REST API under `/api/v4/` on `127.0.0.1:8081` (EMQX 4.x's shape):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v4/brokers`, `/api/v4/brokers/{node}` | node, version, uptime (every running node, or one) |
//! | GET | `/api/v4/nodes`, `/api/v4/nodes/{node}` | the cluster's nodes as EMQX 4 lists them |
//! | GET | `/api/v4/stats`, `/api/v4/nodes/{node}/stats` | the gauges per node (`?aggregate=true`: summed) |
//! | GET | `/api/v4/metrics`, `/api/v4/nodes/{node}/metrics` | every counter (`messages.received`, `bytes.sent`, ...) per node |
//! | GET | `/api/v4/clients`, `/api/v4/nodes/{node}/clients` | connected clients of every running node, or one's (each with its `node`) |
//! | GET | `/api/v4/sessions`, `/api/v4/nodes/{node}/sessions` | sessions of every running node, or one's |
//! | GET | `/api/v4/plugins` | per node, as EMQX: `[{"node", "plugins": [{name, description, active, type}]}]` |
//! | GET | `/api/v4/nodes/{node}/plugins` | a node's plugins: `[{name, description, active, type}]` |
//! | PUT | `/api/v4/nodes/{node}/plugins/{name}/load`, `unload`, `reload` | as `broker ctl plugins ...` on that node, persisted the same way; `{"code": 0}` |
//!
//! In a cluster, a path about another node is answered by that node: the API runs the
//! command there with `broker ctl cluster call NODE ...` (a NATS request between the nodes).
//! | PUT | `/api/v4/plugins/{name}/load`, `unload`, `reload` | the same, without the node |
//! | GET, PUT | `/api/v4/telemetry/status` | `{"enabled": bool}` |
//! | GET | `/api/v4/telemetry/data` | the next telemetry report |
//! | GET, POST | `/api/v4/auth_username`, `/api/v4/auth_clientid` | `emqx_auth_mnesia`'s logins: list, add |
//! | GET, PUT, DELETE | `/api/v4/auth_username/{username}`, `/api/v4/auth_clientid/{clientid}` | one login |
//!
//! HTTP basic auth; default `admin` / `public` (a warning is logged while that password is in
//! use). Config (`[management]`): `listen`, `username`, `password` (plain, or an Argon2 /
//! bcrypt hash: [`password`]; `broker ctl management hash-password PASSWORD` makes one), and
//! EMQX 5's `unsuccessful_login_max_attempts` (5), `unsuccessful_login_interval` (5m),
//! `unsuccessful_login_lock_duration` (10m) for the per-IP lock-out ([`login_limit`]).
#![forbid(unsafe_code)]

mod api;
mod auth;
mod auth_api;
mod login_limit;
mod password;
mod pubsub_api;
mod verified;

use std::net::SocketAddr;
use std::time::Duration;

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
    unsuccessful_login_max_attempts: u32,
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    unsuccessful_login_interval: Duration,
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    unsuccessful_login_lock_duration: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8081".parse().expect("valid address"),
            username: "admin".into(),
            password: DEFAULT_PASSWORD.into(),
            unsuccessful_login_max_attempts: 5,
            unsuccessful_login_interval: Duration::from_secs(5 * 60),
            unsuccessful_login_lock_duration: Duration::from_secs(10 * 60),
        }
    }
}

impl Settings {
    /// The lock-out policy, checked.
    fn login_policy(&self) -> Result<login_limit::Policy, String> {
        if self.unsuccessful_login_max_attempts == 0 {
            return Err("management.unsuccessful_login_max_attempts must be at least 1".into());
        }
        for (key, value) in [
            ("unsuccessful_login_interval", self.unsuccessful_login_interval),
            ("unsuccessful_login_lock_duration", self.unsuccessful_login_lock_duration),
        ] {
            if value.is_zero() {
                return Err(format!("management.{key} must be longer than 0s"));
            }
        }
        Ok(login_limit::Policy {
            max_attempts: self.unsuccessful_login_max_attempts,
            interval: self.unsuccessful_login_interval,
            lock_duration: self.unsuccessful_login_lock_duration,
        })
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
        let password = password::Password::parse(&settings.password)?;
        let policy = settings.login_policy()?;
        // A hash of the default password is the default password too.
        if password.verify(DEFAULT_PASSWORD) {
            host.warn(&format!(
                "the management API uses the default password for {:?}; set management.password \
                 (BROKER_MANAGEMENT__PASSWORD)",
                settings.username
            ));
        }
        let dashboard_token = match plugin_http::dashboard_client::ensure_token(host) {
            Ok(token) => Some(token.into()),
            Err(e) => {
                host.warn(&format!(
                    "cannot keep the dashboard's token in the store ({e}): logins through the dashboard count by \
                     the dashboard's address"
                ));
                None
            }
        };
        let auth = auth::Auth::new(host, &settings.username, password, policy);
        let app = api::router(host, auth, dashboard_token);
        let server = HttpServer::start(NAME, host, settings.listen, app)?;
        host.info(&format!("management API listening on http://{}/api/v4/", server.addr()));
        Ok(Management { host, server })
    }

    fn ctl(&self, args: &[String]) -> Result<String, String> {
        match args {
            [verb, password] if verb == "hash-password" => password::hash(password).map_err(|e| e.to_string()),
            _ => Err("usage: broker ctl management hash-password PASSWORD   (prints an Argon2id hash for \
                      management.password)"
                .to_owned()),
        }
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
        ctl_command: Some("management"),
    }
);
