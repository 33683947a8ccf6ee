//! `[listener]`: where clients connect. `tcp` is the plain MQTT listener (always on);
//! `[listener.ssl]`, `[listener.ws]` and `[listener.wss]` are EMQX's `listener.ssl`,
//! `listener.ws` and `listener.wss`, each off until it is given a `bind` address.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// EMQX 4.3's `max_connections` of its ssl, ws and wss listeners.
pub const DEFAULT_LISTENER_MAX_CONNECTIONS: usize = 102_400;

/// EMQX 4.3's `max_conn_rate` of its listeners: connections accepted a second.
pub const DEFAULT_MAX_CONN_RATE: u32 = 1000;

/// `[listener]`: every client-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerSettings {
    /// Client-facing MQTT TCP listener (its limit is `mqtt.max_connections`).
    pub tcp: SocketAddr,
    /// MQTT over TLS (EMQX's `listener.ssl`, port 8883).
    pub ssl: SslListener,
    /// MQTT over WebSocket (EMQX's `listener.ws`, port 8083).
    pub ws: WsListener,
    /// MQTT over WebSocket over TLS (EMQX's `listener.wss`, port 8084).
    pub wss: WssListener,
    /// The tcp listener is behind a load balancer that opens each connection with a PROXY
    /// protocol header (v1 or v2; HAProxy's `send-proxy`): the client's address is taken from
    /// it, and a connection without one is closed (EMQX's `proxy_protocol`).
    pub proxy_protocol: bool,
    /// How long a PROXY protocol header may take to arrive (EMQX's `proxy_protocol_timeout`).
    #[serde(deserialize_with = "super::duration_text")]
    pub proxy_protocol_timeout: String,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            tcp: "0.0.0.0:1883".parse().expect("valid address"),
            ssl: SslListener::default(),
            ws: WsListener::default(),
            wss: WssListener::default(),
            proxy_protocol: false,
            proxy_protocol_timeout: "3s".to_owned(),
        }
    }
}

impl ListenerSettings {
    /// `proxy_protocol_timeout`, read (more than 0).
    pub(crate) fn proxy_protocol_timeout(&self) -> Result<std::time::Duration, super::ConfigError> {
        let key = "listener.proxy_protocol_timeout";
        match super::duration(key, &self.proxy_protocol_timeout)? {
            d if d.is_zero() => Err(super::ConfigError::Setting(key, "0 (must be longer than 0)".to_owned())),
            d => Ok(d),
        }
    }
}

/// The TLS settings of the ssl and wss listeners, with EMQX's names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certfile: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<PathBuf>,
    /// The CA certificates a client certificate is checked against, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cacertfile: Option<PathBuf>,
    /// Ask each client for a certificate and check it against `cacertfile`.
    pub verify_peer: bool,
    /// With `verify_peer`: refuse a client that sends no certificate.
    pub fail_if_no_peer_cert: bool,
    /// `"cn"`: the client certificate's Common Name becomes the MQTT username; `"dn"`: its
    /// whole subject (`CN=...,O=...`). Unset keeps the CONNECT's username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_cert_as_username: Option<String>,
}

/// `[listener.ssl]`: MQTT over TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SslListener {
    /// Where to listen; none (the default) means no ssl listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    /// Most clients connected through this listener at once.
    pub max_connections: usize,
    /// Connections accepted a second (EMQX's `max_conn_rate`); past it the listener waits
    /// before accepting more. 0 for no limit.
    pub max_conn_rate: u32,
    /// Connections one IP address may hold open at once; past it a new one is closed at
    /// once. 0 for no limit.
    pub max_conns_per_ip: usize,
    /// Behind a load balancer that sends a PROXY protocol header (see `listener.proxy_protocol`).
    pub proxy_protocol: bool,
    #[serde(flatten)]
    pub tls: TlsSettings,
}

impl TlsSettings {
    /// Every field set: a literal without `..`, so that a field added must be added here
    /// (and is then a key `[listener.ssl]` and `[listener.wss]` may have).
    fn every_field() -> TlsSettings {
        TlsSettings {
            certfile: Some(PathBuf::new()),
            keyfile: Some(PathBuf::new()),
            cacertfile: Some(PathBuf::new()),
            verify_peer: false,
            fail_if_no_peer_cert: false,
            peer_cert_as_username: Some(String::new()),
        }
    }
}

impl SslListener {
    /// Every key `[listener.ssl]` may have: serde cannot refuse the others (the TLS settings
    /// are flattened in), so `config::load` does. A literal without `..`, so that a field
    /// added must be added here.
    pub(crate) fn keys() -> Vec<String> {
        let d = SslListener::default();
        keys_of(&SslListener {
            bind: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            max_connections: d.max_connections,
            max_conn_rate: d.max_conn_rate,
            max_conns_per_ip: d.max_conns_per_ip,
            proxy_protocol: d.proxy_protocol,
            tls: TlsSettings::every_field(),
        })
    }
}

impl Default for SslListener {
    fn default() -> Self {
        SslListener {
            bind: None,
            max_connections: DEFAULT_LISTENER_MAX_CONNECTIONS,
            max_conn_rate: DEFAULT_MAX_CONN_RATE,
            max_conns_per_ip: 0,
            proxy_protocol: false,
            tls: TlsSettings::default(),
        }
    }
}

/// `[listener.ws]`: MQTT over WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsListener {
    /// Where to listen; none (the default) means no ws listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    /// The HTTP path of the WebSocket endpoint; any other path is answered 404.
    pub path: String,
    /// Most clients connected through this listener at once.
    pub max_connections: usize,
    /// Connections accepted a second (EMQX's `max_conn_rate`); past it the listener waits
    /// before accepting more. 0 for no limit.
    pub max_conn_rate: u32,
    /// Connections one IP address may hold open at once; past it a new one is closed at
    /// once. 0 for no limit.
    pub max_conns_per_ip: usize,
    /// Behind a load balancer that sends a PROXY protocol header (see `listener.proxy_protocol`),
    /// before the HTTP upgrade.
    pub proxy_protocol: bool,
    /// The header of the HTTP upgrade that carries the client's address when an HTTP proxy
    /// (nginx, HAProxy, a cloud load balancer) is in front (EMQX's `proxy_address_header`,
    /// usually `X-Forwarded-For`); empty (the default) for none. See [`Forwarded`].
    pub proxy_address_header: String,
    /// The header that carries the client's port (EMQX's `proxy_port_header`, e.g.
    /// `X-Forwarded-Port`); empty (the default) for none.
    pub proxy_port_header: String,
}

impl Default for WsListener {
    fn default() -> Self {
        WsListener {
            bind: None,
            path: "/mqtt".to_owned(),
            max_connections: DEFAULT_LISTENER_MAX_CONNECTIONS,
            max_conn_rate: DEFAULT_MAX_CONN_RATE,
            max_conns_per_ip: 0,
            proxy_protocol: false,
            proxy_address_header: String::new(),
            proxy_port_header: String::new(),
        }
    }
}

impl WsListener {
    /// The headers that carry the client's address, if set.
    pub(crate) fn forwarded(&self) -> Result<Option<Forwarded>, super::ConfigError> {
        Forwarded::new(
            ("listener.ws.proxy_address_header", &self.proxy_address_header),
            ("listener.ws.proxy_port_header", &self.proxy_port_header),
        )
    }
}

/// `[listener.wss]`: MQTT over WebSocket over TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WssListener {
    /// Where to listen; none (the default) means no wss listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    /// The HTTP path of the WebSocket endpoint; any other path is answered 404.
    pub path: String,
    /// Most clients connected through this listener at once.
    pub max_connections: usize,
    /// Connections accepted a second (EMQX's `max_conn_rate`); past it the listener waits
    /// before accepting more. 0 for no limit.
    pub max_conn_rate: u32,
    /// Connections one IP address may hold open at once; past it a new one is closed at
    /// once. 0 for no limit.
    pub max_conns_per_ip: usize,
    /// Behind a load balancer that sends a PROXY protocol header (see `listener.proxy_protocol`),
    /// before the TLS handshake.
    pub proxy_protocol: bool,
    /// As `listener.ws.proxy_address_header`.
    pub proxy_address_header: String,
    /// As `listener.ws.proxy_port_header`.
    pub proxy_port_header: String,
    #[serde(flatten)]
    pub tls: TlsSettings,
}

impl Default for WssListener {
    fn default() -> Self {
        WssListener {
            bind: None,
            path: "/mqtt".to_owned(),
            max_connections: DEFAULT_LISTENER_MAX_CONNECTIONS,
            max_conn_rate: DEFAULT_MAX_CONN_RATE,
            max_conns_per_ip: 0,
            proxy_protocol: false,
            proxy_address_header: String::new(),
            proxy_port_header: String::new(),
            tls: TlsSettings::default(),
        }
    }
}

impl WssListener {
    /// The headers that carry the client's address, if set.
    pub(crate) fn forwarded(&self) -> Result<Option<Forwarded>, super::ConfigError> {
        Forwarded::new(
            ("listener.wss.proxy_address_header", &self.proxy_address_header),
            ("listener.wss.proxy_port_header", &self.proxy_port_header),
        )
    }

    /// Every key `[listener.wss]` may have (see [`SslListener::keys`]).
    pub(crate) fn keys() -> Vec<String> {
        let d = WssListener::default();
        keys_of(&WssListener {
            bind: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            path: d.path,
            max_connections: d.max_connections,
            max_conn_rate: d.max_conn_rate,
            max_conns_per_ip: d.max_conns_per_ip,
            proxy_protocol: d.proxy_protocol,
            proxy_address_header: d.proxy_address_header,
            proxy_port_header: d.proxy_port_header,
            tls: TlsSettings::every_field(),
        })
    }
}

/// The names of the HTTP headers that carry a WebSocket client's address when an HTTP
/// proxy is in front of the listener. The address is the last one the header lists (with
/// several header lines, the last line's): the one the proxy in front of the broker added.
/// EMQX takes the first, which the client itself may have written.
#[derive(Debug, Clone)]
pub(crate) struct Forwarded {
    /// `X-Forwarded-For`, or another name.
    pub(crate) address: http::HeaderName,
    /// `X-Forwarded-Port`, or another name, if set.
    pub(crate) port: Option<http::HeaderName>,
}

impl Forwarded {
    /// The headers `address` and `port` name (the settings `address_key` and `port_key`),
    /// `None` without `address`.
    fn new(
        (address_key, address): (&'static str, &str),
        (port_key, port): (&'static str, &str),
    ) -> Result<Option<Forwarded>, super::ConfigError> {
        let name = |key: &'static str, value: &str| {
            http::HeaderName::from_bytes(value.trim().as_bytes())
                .map_err(|_| super::ConfigError::Setting(key, format!("{value:?} (not an HTTP header name)")))
        };
        if address.trim().is_empty() {
            if !port.trim().is_empty() {
                return Err(super::ConfigError::Setting(
                    port_key,
                    format!("{port:?} (only with {address_key}: the port goes with the address)"),
                ));
            }
            return Ok(None);
        }
        let port = if port.trim().is_empty() { None } else { Some(name(port_key, port)?) };
        Ok(Some(Forwarded { address: name(address_key, address)?, port }))
    }
}

/// The keys of the serialized `full` (a value with every field set): the keys its table may
/// have. serde cannot refuse unknown keys of a struct that flattens another in (the ssl and
/// wss listeners flatten their TLS settings), so those tables are checked against these.
fn keys_of(full: &impl Serialize) -> Vec<String> {
    let value = serde_json::to_value(full).unwrap_or_default();
    value.as_object().map(|table| table.keys().cloned().collect()).unwrap_or_default()
}
