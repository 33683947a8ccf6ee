//! The `[exhook]` table, with EMQX's names: `servers = [{ name, url, ssl, ... }]` and, for all
//! servers, `request_timeout` (5s), `failed_action` (`deny`; EMQX 4.3's
//! `request_failed_action` is read too), `auto_reconnect` (60s, or `false`) and `pool_size`
//! (8). A server's own `request_timeout`, `failed_action`, `auto_reconnect` and `pool_size`
//! beat them (EMQX 5 has them per server). Added here: a server's `proto` (`v2`, EMQX 5's
//! `emqx.exhook.v2`, or `v1`, EMQX 4.3's `emqx.exhook.v1`) and `queue_size`, how many
//! notifications may wait to be sent.
//!
//! No server is configured by default (EMQX 5): with `failed_action = deny` a server that
//! never answered refuses clients, so a default server nobody runs would lock everyone out.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Which HookProvider contract a server implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Proto {
    /// `emqx.exhook.v1`: EMQX 4.3.
    V1,
    /// `emqx.exhook.v2`: EMQX 5.0 to 5.8.
    V2,
}

impl Proto {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Proto::V1 => "v1",
            Proto::V2 => "v2",
        }
    }
}

/// What a hook that decides answers when its server does not (EMQX's `failed_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FailedAction {
    /// Refuse: the client is not authenticated, the publish or subscribe is denied, the
    /// message is dropped.
    Deny,
    /// As if the server were not configured: the next server, plugin or the broker decides.
    Ignore,
}

impl FailedAction {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            FailedAction::Deny => "deny",
            FailedAction::Ignore => "ignore",
        }
    }
}

/// EMQX's `auto_reconnect`: `false`, or how long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AutoReconnect(pub(crate) Option<Duration>);

impl<'de> Deserialize<'de> for AutoReconnect {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(false) => Ok(AutoReconnect(None)),
            Raw::Flag(true) => Ok(AutoReconnect(Some(DEFAULT_RECONNECT))),
            Raw::Seconds(0) => Ok(AutoReconnect(None)),
            Raw::Seconds(s) => Ok(AutoReconnect(Some(Duration::from_secs(s)))),
            Raw::Text(t) if t.trim() == "false" => Ok(AutoReconnect(None)),
            Raw::Text(t) if t.trim() == "true" => Ok(AutoReconnect(Some(DEFAULT_RECONNECT))),
            Raw::Text(t) => match plugin_api::duration::parse(&t).map_err(serde::de::Error::custom)? {
                d if d.is_zero() => Ok(AutoReconnect(None)),
                d => Ok(AutoReconnect(Some(d))),
            },
        }
    }
}

const DEFAULT_RECONNECT: Duration = Duration::from_secs(60);

/// EMQX's `ssl` of a server, for `https://` URLs: PEM files, relative to the data directory
/// unless absolute. Without `cacertfile` the server's certificate is checked against the
/// public web PKI roots (built in).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Ssl {
    /// EMQX 5's switch; `false` ignores the files (and an `https://` URL then fails).
    pub(crate) enable: Option<bool>,
    /// The CA certificates the server's certificate must chain to.
    pub(crate) cacertfile: Option<PathBuf>,
    /// The client certificate (chain) shown to the server.
    pub(crate) certfile: Option<PathBuf>,
    /// The client certificate's private key.
    pub(crate) keyfile: Option<PathBuf>,
    /// The name the server's certificate must have (default: the URL's host).
    pub(crate) server_name_indication: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: String,
    url: String,
    #[serde(default)]
    proto: Option<Proto>,
    #[serde(default)]
    enable: Option<bool>,
    #[serde(default)]
    ssl: Ssl,
    #[serde(default, deserialize_with = "optional_duration")]
    request_timeout: Option<Duration>,
    #[serde(default)]
    failed_action: Option<FailedAction>,
    #[serde(default)]
    auto_reconnect: Option<AutoReconnect>,
    #[serde(default)]
    pool_size: Option<usize>,
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    plugin_api::duration::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSettings {
    servers: Vec<RawServer>,
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    request_timeout: Duration,
    #[serde(alias = "request_failed_action")]
    failed_action: FailedAction,
    auto_reconnect: AutoReconnect,
    pool_size: usize,
    queue_size: usize,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            servers: Vec::new(),
            request_timeout: Duration::from_secs(5),
            failed_action: FailedAction::Deny,
            auto_reconnect: AutoReconnect(Some(DEFAULT_RECONNECT)),
            pool_size: 8,
            queue_size: 10_000,
        }
    }
}

/// One HookProvider server, checked.
#[derive(Debug, Clone)]
pub(crate) struct ServerSettings {
    /// Its name (`[A-Za-z0-9][A-Za-z0-9_-]*`, as EMQX 5 checks), for `ctl` and the logs.
    pub(crate) name: String,
    /// `http://host:port` or `https://host:port`.
    pub(crate) url: String,
    pub(crate) proto: Proto,
    /// Started at load (EMQX 5's `enable`); `ctl exhook enable` starts one that is not.
    pub(crate) enable: bool,
    pub(crate) ssl: Ssl,
    /// The longest one call may take before the server counts as down.
    pub(crate) request_timeout: Duration,
    pub(crate) failed_action: FailedAction,
    /// How long after a failure to try OnProviderLoaded again; `None`: never by itself.
    pub(crate) auto_reconnect: Option<Duration>,
    /// HTTP/2 connections to the server; a client's calls always take the same one.
    pub(crate) pool_size: usize,
}

/// Every setting, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// In the order given: the order in which the servers are asked.
    pub(crate) servers: Vec<ServerSettings>,
    /// Notifications (events whose answer does not matter) waiting to be sent, at most.
    pub(crate) queue_size: usize,
}

/// The table is wrong; the message names the key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettingsError {
    /// Not the right shape (unknown key, wrong type, bad duration), at the key it names.
    #[error(transparent)]
    Shape(#[from] plugin_api::TableError),
    /// A server's setting that does not make sense.
    #[error("exhook.servers.{index}: {why}")]
    Server { index: usize, why: String },
    /// A zero that cannot be.
    #[error("exhook.{0} must be more than 0")]
    Zero(&'static str),
    /// More servers than the plugin handles.
    #[error("exhook.servers: {0} servers, at most {MAX_SERVERS}")]
    TooMany(usize),
}

/// The most servers one broker calls.
pub(crate) const MAX_SERVERS: usize = 64;

impl Settings {
    /// Reads and checks the plugin's config table (`null` or `{}`: no servers).
    pub(crate) fn from_json(value: &serde_json::Value) -> Result<Settings, SettingsError> {
        let raw: RawSettings = plugin_api::parse_table(value, "exhook")?;
        if raw.request_timeout.is_zero() {
            return Err(SettingsError::Zero("request_timeout"));
        }
        if raw.pool_size == 0 {
            return Err(SettingsError::Zero("pool_size"));
        }
        if raw.queue_size == 0 {
            return Err(SettingsError::Zero("queue_size"));
        }
        if raw.servers.len() > MAX_SERVERS {
            return Err(SettingsError::TooMany(raw.servers.len()));
        }
        let mut servers: Vec<ServerSettings> = Vec::new();
        for (index, s) in raw.servers.into_iter().enumerate() {
            let bad = |why: String| SettingsError::Server { index, why };
            let name_ok = s.name.len() <= 256
                && s.name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return Err(bad(format!("name {:?}: letters, digits, _ and - (not first), at most 256", s.name)));
            }
            if servers.iter().any(|other| other.name == s.name) {
                return Err(bad(format!("name {:?} is used twice", s.name)));
            }
            let url = s.url.trim().trim_end_matches('/').to_owned();
            let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
                return Err(bad(format!("url {:?}: must start with http:// or https://", s.url)));
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(bad(format!("url {:?}: expected http(s)://host:port and no path", s.url)));
            }
            let request_timeout = s.request_timeout.unwrap_or(raw.request_timeout);
            if request_timeout.is_zero() {
                return Err(bad("request_timeout must be more than 0".to_owned()));
            }
            let pool_size = s.pool_size.unwrap_or(raw.pool_size);
            if pool_size == 0 {
                return Err(bad("pool_size must be more than 0".to_owned()));
            }
            servers.push(ServerSettings {
                name: s.name,
                url,
                proto: s.proto.unwrap_or(Proto::V2),
                enable: s.enable.unwrap_or(true),
                ssl: s.ssl,
                request_timeout,
                failed_action: s.failed_action.unwrap_or(raw.failed_action),
                auto_reconnect: s.auto_reconnect.unwrap_or(raw.auto_reconnect).0,
                pool_size,
            });
        }
        Ok(Settings { servers, queue_size: raw.queue_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_emqx_s() {
        let s = Settings::from_json(&serde_json::Value::Null).unwrap();
        assert!(s.servers.is_empty());
        let s =
            Settings::from_json(&json!({"servers": [{"name": "default", "url": "http://127.0.0.1:9000"}]})).unwrap();
        let d = &s.servers[0];
        assert_eq!(
            (d.name.as_str(), d.url.as_str(), d.proto, d.enable),
            ("default", "http://127.0.0.1:9000", Proto::V2, true)
        );
        assert_eq!((d.request_timeout, d.failed_action, d.pool_size), (Duration::from_secs(5), FailedAction::Deny, 8));
        assert_eq!(d.auto_reconnect, Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_server_s_own_settings_beat_the_table_s() {
        let s = Settings::from_json(&json!({
            "request_timeout": "1s", "request_failed_action": "ignore", "auto_reconnect": "false",
            "servers": [
                {"name": "a", "url": "https://h:1/", "proto": "v1", "failed_action": "deny", "auto_reconnect": "2s",
                 "ssl": {"cacertfile": "ca.pem"}},
                {"name": "b-2", "url": "http://h:2", "request_timeout": "250ms", "pool_size": 1, "enable": false}
            ]
        }))
        .unwrap();
        let (a, b) = (&s.servers[0], &s.servers[1]);
        assert_eq!((a.url.as_str(), a.proto, a.failed_action), ("https://h:1", Proto::V1, FailedAction::Deny));
        assert_eq!((a.request_timeout, a.auto_reconnect), (Duration::from_secs(1), Some(Duration::from_secs(2))));
        assert_eq!(a.ssl.cacertfile.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(
            (b.failed_action, b.auto_reconnect, b.request_timeout),
            (FailedAction::Ignore, None, Duration::from_millis(250))
        );
        assert_eq!((b.pool_size, b.enable), (1, false));
    }

    #[test]
    fn bad_input_is_named_precisely() {
        let server = |extra: serde_json::Value| {
            let mut s = json!({"name": "x", "url": "http://h:1"});
            s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({ "servers": [s] })
        };
        let cases = [
            (server(json!({"url": "grpc://h:1"})), "exhook.servers.0: url \"grpc://h:1\": must start with http://"),
            (server(json!({"url": "http://h:1/path"})), "no path"),
            (server(json!({"name": "-x"})), "exhook.servers.0: name \"-x\""),
            (server(json!({"proto": "v3"})), "exhook.servers[0].proto: unknown variant `v3`"),
            (server(json!({"failed_action": "drop"})), "unknown variant `drop`"),
            (server(json!({"request_timeout": 0})), "request_timeout must be more than 0"),
            (server(json!({"ssl": {"verify": "verify_none"}})), "unknown field `verify`"),
            (json!({"request_timeout": "soon"}), "exhook.request_timeout: invalid duration \"soon\""),
            (json!({"pool_size": 0}), "exhook.pool_size must be more than 0"),
            (json!({"sever": []}), "exhook.sever: unknown field `sever`"),
            (
                json!({"servers": [{"name": "a", "url": "http://h:1"}, {"name": "a", "url": "http://h:2"}]}),
                "used twice",
            ),
        ];
        for (value, expected) in cases {
            let error = Settings::from_json(&value).unwrap_err().to_string();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }
}
