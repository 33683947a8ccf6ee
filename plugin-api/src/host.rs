//! The safe handle a plugin keeps to call the host.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::abi::{self, read_field, HostApi, RawBytes, RawMessage, RawStats, RawStr, RawWriter};
use crate::event::QoS;

/// Log level of a line a plugin writes through the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is wrong but the plugin goes on.
    Warn,
    /// Normal operation worth telling an operator.
    Info,
    /// Detail for debugging.
    Debug,
}

/// A host call failed. The variant says what kind of failure it was (match on it, not on the
/// text); the text says why, for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The host refused or could not do it; the text says why.
    #[error("{0}")]
    Failed(String),
    /// What the call named does not exist (an unknown plugin or command).
    #[error("{0}")]
    NotFound(String),
    /// The call conflicts with the present state (the plugin is already loaded, or not).
    #[error("{0}")]
    Conflict(String),
    /// The call's arguments are wrong (an invalid plugin name, a wrong command).
    #[error("{0}")]
    InvalidArgument(String),
    /// The host cannot do it now: it is shutting down, the plugin was stopped, or the call was
    /// made where it would wait for itself (see the re-entrancy table of [`crate::abi::HostApi`]).
    #[error("{0}")]
    Unavailable(String),
    /// The host is older than the call: its vtable ends before the function (a plugin built
    /// against a newer `plugin-api` than the broker's), or it does not know the command. The
    /// host was not called; asking again will not help.
    #[error("{0}")]
    Unsupported(String),
    /// The host's answer could not be read.
    #[error("unreadable answer from the host: {0}")]
    BadAnswer(String),
}

impl HostError {
    /// The ABI status that carries this kind of failure (`STATUS_ERROR` for `Failed` and
    /// `BadAnswer`).
    pub fn status(&self) -> abi::Status {
        match self {
            HostError::NotFound(_) => abi::STATUS_NOT_FOUND,
            HostError::Conflict(_) => abi::STATUS_CONFLICT,
            HostError::InvalidArgument(_) => abi::STATUS_INVALID_ARGUMENT,
            HostError::Unavailable(_) => abi::STATUS_UNAVAILABLE,
            HostError::Unsupported(_) => abi::STATUS_UNSUPPORTED,
            HostError::Failed(_) | HostError::BadAnswer(_) => abi::STATUS_ERROR,
        }
    }
}

/// Broker statistics at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Clients connected now.
    pub connections: u64,
    /// PUBLISH packets received from clients since start.
    pub messages_received: u64,
    /// PUBLISH packets sent to subscribers since start.
    pub messages_sent: u64,
    /// Seconds since the broker started.
    pub uptime_secs: u64,
    /// The most clients connected at once since start (EMQX's `connections.max`); 0 from a
    /// host older than this field.
    pub connections_max: u64,
    /// Milliseconds since the broker started (`uptime_secs * 1000` from an older host).
    pub uptime_ms: u64,
}

/// Every counter the broker keeps (from [`Host::metrics`]), named as EMQX names them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub struct Metrics {
    /// The broker's node name (`emqx@127.0.0.1`).
    pub node: String,
    /// Milliseconds since the broker started.
    pub uptime_ms: u64,
    /// Gauges, as EMQX's `emqx_stats`: `connections.count`, `connections.max`,
    /// `sessions.count`, `topics.count`, `subscriptions.count`, ... (`*.max`: the peak since
    /// start).
    pub stats: std::collections::BTreeMap<String, u64>,
    /// Counters since start, as EMQX's `emqx_metrics`: `bytes.received`, `packets.sent`,
    /// `messages.received`, `messages.dropped`, `delivery.dropped.queue_full`,
    /// `client.connected`, `session.created`, ...
    pub metrics: std::collections::BTreeMap<String, u64>,
    /// Calls into each plugin's `on_event` and the time they took, per hook.
    pub hooks: Vec<HookTiming>,
}

/// Calls of one plugin for one hook, and the time spent in them (from [`Host::metrics`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub struct HookTiming {
    /// Plugin name.
    pub plugin: String,
    /// Hook name (`message.publish`, ...).
    pub hook: String,
    /// Calls since the plugin was loaded.
    pub calls: u64,
    /// Nanoseconds spent in those calls, measured by the host around each call.
    pub nanos: u64,
}

/// One plugin as the host knows it (from [`Host::plugins`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PluginStatus {
    /// Plugin name.
    pub name: String,
    /// Plugin version (empty if its library could not be read).
    pub version: String,
    /// One-line description.
    pub description: String,
    /// `plugin` or `module`.
    pub kind: String,
    /// Whether it runs now.
    pub active: bool,
    /// `running`, `stopped` or `failed: <why>`.
    pub state: String,
}

/// One connected client (from [`Host::clients`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ClientInfo {
    /// MQTT client id.
    pub clientid: String,
    /// MQTT username (empty when none).
    pub username: String,
    /// Peer IP address.
    pub ip_address: String,
    /// Peer port.
    pub port: u16,
    /// MQTT protocol level.
    pub proto_ver: u8,
    /// Keep-alive in seconds.
    pub keepalive: u16,
    /// Clean session / clean start.
    pub clean_start: bool,
    /// When it connected, in milliseconds since the Unix epoch.
    pub connected_at: u64,
}

/// A retained message a plugin delivers with [`Host::deliver_retained`].
#[derive(Debug, Clone, Copy)]
pub struct RetainedMessage<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// The QoS it was published with.
    pub qos: QoS,
    /// The forwarded MQTT 5 properties it was published with ([`crate::Event::properties`]).
    pub properties: &'a [u8],
    /// Remaining Message Expiry Interval in seconds, if it expires.
    pub message_expiry: Option<u32>,
}

/// What a call made after the plugin's `stop` gets.
pub(crate) fn stopped() -> HostError {
    HostError::Unavailable("the plugin was stopped: the host serves no call made after its stop".to_owned())
}

/// What a call to a function the host's vtable does not have gets.
pub(crate) fn unsupported(what: &str) -> HostError {
    HostError::Unsupported(format!(
        "this broker is older than the plugin: its host vtable has no {what} (upgrade the broker)"
    ))
}

/// The plugin's handle to the host. Cheap to copy. After the plugin's `stop` returned, every
/// call (but logging) fails with [`HostError::Unavailable`].
///
/// The host may be older than this crate and give a shorter vtable: `Host` reads each entry
/// through a raw pointer only when the vtable's `size` covers it, and a method whose function
/// the host does not have answers [`HostError::Unsupported`] without calling anything (the
/// getters answer empty, `log` logs nothing). Its `Debug` prints only what the vtable has.
#[derive(Clone, Copy)]
pub struct Host {
    /// The host's vtable, never dereferenced whole: it may be shorter than `HostApi`.
    pub(crate) api: *const HostApi,
    /// The vtable's `size`, as the host declared it.
    pub(crate) size: u32,
}

// SAFETY: the host guarantees the vtable is never freed nor changed and that every function is
// thread-safe (as `HostApi` is Send and Sync); `Host` only reads it.
unsafe impl Send for Host {}
// SAFETY: as above.
unsafe impl Sync for Host {}

/// Field `$field` of the host's vtable when its `size` covers it (`Option`).
macro_rules! api {
    ($host:expr, $field:ident) => {
        // SAFETY: `from_raw`'s caller promised a vtable readable for its `size` bytes, never
        // freed; read_field reads nothing past `size`.
        unsafe { read_field!($host.api, $host.size, HostApi, $field) }
    };
}
pub(crate) use api;

impl Host {
    /// Wraps the host's vtable, which may be shorter than this crate's `HostApi` (an older
    /// host): only its first field, `size`, is read here.
    ///
    /// # Safety
    /// `api` must point to a `HostApi` of any release, readable for the `size` bytes its first
    /// field declares, never freed nor changed (the host guarantees this for the pointer it
    /// passes to `init`).
    pub unsafe fn from_raw(api: *const HostApi) -> Host {
        // SAFETY: readable, as the caller promises; `size` is the frozen first field.
        let size = unsafe { api.cast::<u32>().read() };
        Host { api, size }
    }

    /// The broker's version (empty from a vtable without it).
    pub fn broker_version(&self) -> &str {
        // SAFETY: host strings are valid for the plugin's life.
        api!(self, broker_version).map_or("", |s| unsafe { s.as_str() })
    }

    /// The broker's node name, e.g. `emqx@127.0.0.1` (empty from a vtable without it).
    pub fn node_name(&self) -> &str {
        // SAFETY: host strings are valid for the plugin's life.
        api!(self, node_name).map_or("", |s| unsafe { s.as_str() })
    }

    /// The broker's data directory, where a plugin keeps its files (empty from a vtable
    /// without it).
    pub fn data_dir(&self) -> &Path {
        // SAFETY: host strings are valid for the plugin's life.
        Path::new(api!(self, data_dir).map_or("", |s| unsafe { s.as_str() }))
    }

    /// When the broker started (the epoch from a vtable without it).
    pub fn started_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(api!(self, started_at_ms).unwrap_or(0))
    }

    /// The vtable's ABI version (0 if even that is missing) and its declared size.
    pub(crate) fn vtable_version(&self) -> (u32, u32) {
        (api!(self, abi_version).unwrap_or(0), self.size)
    }

    /// The opaque host state every function takes back (null from a vtable without it, whose
    /// functions are then missing too).
    pub(crate) fn ctx(&self) -> *const std::ffi::c_void {
        api!(self, ctx).unwrap_or(std::ptr::null())
    }

    /// Writes a log line under the plugin's name.
    pub fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Error => abi::LOG_ERROR,
            Level::Warn => abi::LOG_WARN,
            Level::Info => abi::LOG_INFO,
            Level::Debug => abi::LOG_DEBUG,
        };
        if let Some(log) = api!(self, log) {
            // SAFETY: ctx and log are valid for the plugin's life; message outlives the call.
            unsafe { log(self.ctx(), level, RawStr::new(message)) }
        }
    }

    /// Logs at error level.
    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    /// Logs at debug level.
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message)
    }

    /// Publishes a message into the broker, as the broker itself, to any topic (`$SYS/...`
    /// included) at any QoS: it goes through `message.publish` (with an empty client id) and
    /// reaches every matching subscription at the lower of `qos` and the subscription's QoS.
    /// The broker itself never retains it; with `retain`, a retainer plugin sees the flag in
    /// `message.publish` and may. Do not publish from your own `message.publish` hook for
    /// every message: that would never end.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Result<(), HostError> {
        let publish = api!(self, publish).ok_or_else(|| unsupported("publish"))?;
        // SAFETY: ctx and publish are valid for the plugin's life; the borrowed topic and
        // payload outlive the call (the host copies what it keeps).
        let status =
            unsafe { publish(self.ctx(), RawStr::new(topic), RawBytes::new(payload), qos as u8, retain as u8) };
        match status {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_UNAVAILABLE => Err(stopped()),
            _ => Err(HostError::Failed(format!("could not publish to {topic}"))),
        }
    }

    /// Delivers a message to one connected client only, e.g. a retained message to a client
    /// that just subscribed. Safe to call from a hook: the host queues it behind what the
    /// client is already being sent.
    pub fn deliver(
        &self,
        client_id: &str,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<(), HostError> {
        let deliver = api!(self, deliver).ok_or_else(|| unsupported("deliver"))?;
        // SAFETY: ctx and deliver are valid for the plugin's life; the borrowed strings
        // outlive the call (the host copies what it keeps).
        let status = unsafe {
            deliver(
                self.ctx(),
                RawStr::new(client_id),
                RawStr::new(topic),
                RawBytes::new(payload),
                qos as u8,
                retain as u8,
            )
        };
        match status {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_UNAVAILABLE => Err(stopped()),
            _ => Err(HostError::Failed(format!("client {client_id} is not connected"))),
        }
    }

    /// Delivers a retained message to the subscription `filter` of client `client_id`, as a
    /// retainer does after `session.subscribed`: the host sets the retain flag, delivers at
    /// the lower of the message's and the subscription's QoS and adds the subscription's
    /// identifier (MQTT 5). Safe to call from the hook: the message follows the SUBACK.
    pub fn deliver_retained(
        &self,
        client_id: &str,
        filter: &str,
        message: &RetainedMessage<'_>,
    ) -> Result<(), HostError> {
        let deliver_retained = api!(self, deliver_retained).ok_or_else(|| unsupported("deliver_retained"))?;
        let raw = RawMessage {
            size: std::mem::size_of::<RawMessage>() as u32,
            topic: RawStr::new(message.topic),
            payload: RawBytes::new(message.payload),
            qos: message.qos as u8,
            properties: RawBytes::new(message.properties),
            message_expiry: message.message_expiry.unwrap_or(0),
        };
        // SAFETY: the host's vtable has this function (its size covers it); ctx is valid for
        // the plugin's life; the borrowed strings and `raw` outlive the call.
        let status = unsafe { deliver_retained(self.ctx(), RawStr::new(client_id), RawStr::new(filter), &raw) };
        match status {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_UNAVAILABLE => Err(stopped()),
            _ => Err(HostError::Failed(format!("client {client_id} has no subscription {filter}"))),
        }
    }

    /// Current broker statistics (all zero from a vtable without `stats`).
    pub fn stats(&self) -> Stats {
        // The appended fields start at a value no host writes: a host older than them leaves
        // them so.
        const UNSET: u64 = u64::MAX;
        let mut raw = RawStats {
            size: std::mem::size_of::<RawStats>() as u32,
            connections_max: UNSET,
            uptime_ms: UNSET,
            ..Default::default()
        };
        let Some(stats) = api!(self, stats) else {
            return Stats::default();
        };
        // SAFETY: ctx and stats are valid for the plugin's life; raw is a live RawStats
        // whose size field tells the host how much it may write.
        unsafe { stats(self.ctx(), &mut raw) };
        let written = |value: u64| Some(value).filter(|&v| v != UNSET);
        Stats {
            connections: raw.connections,
            messages_received: raw.messages_received,
            messages_sent: raw.messages_sent,
            uptime_secs: raw.uptime_secs,
            connections_max: written(raw.connections_max).unwrap_or(0),
            uptime_ms: written(raw.uptime_ms).unwrap_or(raw.uptime_secs * 1000),
        }
    }

    /// Subscribes connected client `client_id` to `filter` at `qos` on the plugin's behalf, as
    /// if the client had sent a SUBSCRIBE (EMQX's `emqx_mod_subscription`): the QoS is capped
    /// by the broker's maximum and `session.subscribed` fires. Safe to call from
    /// `client.connected`. [`HostError::NotFound`] if the client is not connected,
    /// [`HostError::InvalidArgument`] for an invalid filter.
    pub fn subscribe(&self, client_id: &str, filter: &str, qos: QoS) -> Result<(), HostError> {
        let subscribe = api!(self, subscribe).ok_or_else(|| unsupported("subscribe"))?;
        // SAFETY: the vtable has this function (its size covers it); ctx is valid for the
        // plugin's life; the strings outlive the call.
        let status = unsafe { subscribe(self.ctx(), RawStr::new(client_id), RawStr::new(filter), qos as u8) };
        match status {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_NOT_FOUND => Err(HostError::NotFound(format!("client {client_id} is not connected"))),
            abi::STATUS_UNAVAILABLE => Err(stopped()),
            _ => Err(HostError::InvalidArgument(format!("cannot subscribe to {filter:?} at QoS {}", qos as u8))),
        }
    }

    /// Every counter and gauge the broker keeps, with the time spent in each plugin's hooks
    /// (see [`Metrics`]). For exporters (`emqx_prometheus`) and management plugins.
    pub fn metrics(&self) -> Result<Metrics, HostError> {
        let metrics = api!(self, metrics).ok_or_else(|| unsupported("metrics"))?;
        let mut json = String::new();
        // SAFETY: the vtable has this function (its size covers it); ctx is valid for the
        // plugin's life; the writer borrows `json` for the call.
        let status = unsafe { metrics(self.ctx(), RawWriter::for_string(&mut json)) };
        if status == abi::STATUS_UNAVAILABLE {
            return Err(HostError::Unavailable(json));
        }
        if status != abi::STATUS_OK {
            return Err(HostError::Failed(json));
        }
        serde_json::from_str(&json).map_err(|e| HostError::BadAnswer(e.to_string()))
    }

    /// Adds `delta` to this plugin's counter `name` (`<plugin>.<what>`, e.g.
    /// `web_hook.dropped`), reported with the broker's metrics ([`Host::metrics`], `broker
    /// metrics`, `emqx_prometheus`). Cheap enough for every event. A host too old for plugin
    /// counters answers [`HostError::Unsupported`]; ignoring that is fine.
    pub fn metric_add(&self, name: &str, delta: u64) -> Result<(), HostError> {
        let metric_add = api!(self, metric_add).ok_or_else(|| unsupported("metric_add"))?;
        // SAFETY: ctx is valid for the plugin's life; `name` outlives the call.
        match unsafe { metric_add(self.ctx(), RawStr::new(name), delta) } {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_INVALID_ARGUMENT => Err(HostError::InvalidArgument(format!("metric name {name:?}"))),
            status => Err(HostError::Failed(format!("metric_add failed with status {status}"))),
        }
    }

    /// Sets this plugin's gauge `name` to `value` (EMQX's `emqx_stats:setstat`: e.g.
    /// `retained.count`, whose `retained.max` the host keeps beside it), reported with the
    /// broker's gauges ([`Host::metrics`]' `stats`, `broker ctl broker stats`, the management
    /// API's `/api/v4/stats`, `emqx_prometheus`). A host too old for plugin gauges answers
    /// [`HostError::Unsupported`]; ignoring that is fine.
    pub fn stat_set(&self, name: &str, value: u64) -> Result<(), HostError> {
        let stat_set = api!(self, stat_set).ok_or_else(|| unsupported("stat_set"))?;
        // SAFETY: ctx is valid for the plugin's life; `name` outlives the call.
        match unsafe { stat_set(self.ctx(), RawStr::new(name), value) } {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_INVALID_ARGUMENT => Err(HostError::InvalidArgument(format!("gauge name {name:?}"))),
            status => Err(HostError::Failed(format!("stat_set failed with status {status}"))),
        }
    }

    /// Every plugin the host knows, loaded or not.
    pub fn plugins(&self) -> Result<Vec<PluginStatus>, HostError> {
        let list_plugins = api!(self, list_plugins).ok_or_else(|| unsupported("list_plugins"))?;
        let mut json = String::new();
        // SAFETY: ctx and list_plugins are valid; the writer borrows `json` for the call.
        let status = unsafe { list_plugins(self.ctx(), RawWriter::for_string(&mut json)) };
        if status == abi::STATUS_UNAVAILABLE {
            return Err(HostError::Unavailable(json));
        }
        if status != abi::STATUS_OK {
            return Err(HostError::Failed(json));
        }
        serde_json::from_str(&json).map_err(|e| HostError::BadAnswer(e.to_string()))
    }

    /// The clients connected now.
    pub fn clients(&self) -> Result<Vec<ClientInfo>, HostError> {
        let list_clients = api!(self, list_clients).ok_or_else(|| unsupported("list_clients"))?;
        let mut json = String::new();
        // SAFETY: ctx and list_clients are valid; the writer borrows `json` for the call.
        let status = unsafe { list_clients(self.ctx(), RawWriter::for_string(&mut json)) };
        if status == abi::STATUS_UNAVAILABLE {
            return Err(HostError::Unavailable(json));
        }
        if status != abi::STATUS_OK {
            return Err(HostError::Failed(json));
        }
        serde_json::from_str(&json).map_err(|e| HostError::BadAnswer(e.to_string()))
    }

    /// Runs a `broker ctl` command, e.g. `["plugins", "unload", "emqx_telemetry"]`, and
    /// returns its output. Meant for management plugins.
    ///
    /// Do not unload the calling plugin itself from one of its own hooks: the host waits for
    /// hook calls in flight before it stops a plugin.
    pub fn ctl(&self, args: &[&str]) -> Result<String, HostError> {
        let ctl = api!(self, ctl).ok_or_else(|| unsupported("ctl"))?;
        let args = serde_json::to_string(args).map_err(|e| HostError::BadAnswer(e.to_string()))?;
        let mut out = String::new();
        // SAFETY: ctx and ctl are valid; args outlives the call; the writer borrows `out`.
        let status = unsafe { ctl(self.ctx(), RawStr::new(&args), RawWriter::for_string(&mut out)) };
        match status {
            abi::STATUS_OK => Ok(out),
            abi::STATUS_NOT_FOUND => Err(HostError::NotFound(out)),
            abi::STATUS_CONFLICT => Err(HostError::Conflict(out)),
            abi::STATUS_INVALID_ARGUMENT => Err(HostError::InvalidArgument(out)),
            abi::STATUS_UNAVAILABLE => Err(HostError::Unavailable(out)),
            abi::STATUS_UNSUPPORTED => Err(HostError::Unsupported(out)),
            _ => Err(HostError::Failed(out)),
        }
    }
}

impl std::fmt::Debug for Host {
    /// The host's vtable as far as its `size` goes: its strings, and the names of the functions
    /// it has.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// The vtable, printed by `abi::debug_host_api`.
        struct Api(*const HostApi);
        impl std::fmt::Debug for Api {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // SAFETY: `from_raw`'s caller promised a vtable readable for its size.
                unsafe { abi::debug_host_api(self.0, f) }
            }
        }
        f.debug_struct("Host")
            .field("broker_version", &self.broker_version())
            .field("node_name", &self.node_name())
            .field("data_dir", &self.data_dir())
            .field("api", &Api(self.api))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::abi::covers;
    use crate::guarded::Guarded;
    use crate::test_host::{self, Calls};

    /// Calls every method of `host` once; returns, for each function that returns a `Result`,
    /// its name and whether it answered `Unsupported` (the others must have answered `Ok`).
    fn call_everything(host: &Host) -> Vec<(&'static str, bool)> {
        let message =
            RetainedMessage { topic: "t", payload: b"p", qos: QoS::AtLeastOnce, properties: &[], message_expiry: None };
        host.info("hello");
        let stats = host.stats();
        let results: Vec<(&str, Result<(), HostError>)> = vec![
            ("publish", host.publish("t", b"p", QoS::AtMostOnce, false)),
            ("list_plugins", host.plugins().map(drop)),
            ("ctl", host.ctl(&["x"]).map(drop)),
            ("deliver", host.deliver("c", "t", b"p", QoS::AtMostOnce, false)),
            ("list_clients", host.clients().map(drop)),
            ("deliver_retained", host.deliver_retained("c", "f", &message)),
            ("metrics", host.metrics().map(drop)),
            ("subscribe", host.subscribe("c", "f", QoS::AtMostOnce)),
            ("store_get", host.store("b").get(b"k").map(drop)),
            ("store_scan", host.store("b").scan_prefix(b"").map(drop)),
            ("store_commit", host.store("b").put(b"k", b"v")),
            ("store_watch", host.store("b").watch(b"").and_then(|w| w.next_timeout(Duration::ZERO)).map(drop)),
            ("metric_add", host.metric_add("p.count", 1)),
            // The test host answers CONFLICT: not swapped.
            ("store_swap", host.store("b").swap(b"k", None, Some(b"v")).map(|swapped| assert!(!swapped))),
            ("stat_set", host.stat_set("p.count", 3)),
        ];
        let mut answers = vec![("stats", stats.connections != 3)];
        for (name, result) in results {
            match result {
                Ok(()) => answers.push((name, false)),
                Err(HostError::Unsupported(text)) => {
                    assert!(text.contains(&format!("has no {name}")), "{text}");
                    answers.push((name, true));
                }
                Err(other) => panic!("{name}: {other:?}"),
            }
        }
        answers
    }

    /// A plugin built against this crate, run by an older host whose vtable ends earlier (or
    /// even one that has only `size` and `abi_version`): each function the vtable has is
    /// called, each it lacks answers `Unsupported` without being called, the getters read
    /// only what is there, and `Debug` names only the functions there. The vtable is copied
    /// into memory that ends at its `size` (a guard page natively, an exact allocation under
    /// Miri), so a read past it would crash the test.
    #[test]
    fn a_newer_plugin_on_an_older_host_gets_unsupported_and_never_reads_past_the_vtable() {
        let functions = [
            ("log", offset_of!(HostApi, log)),
            ("stats", offset_of!(HostApi, stats)),
            ("publish", offset_of!(HostApi, publish)),
            ("list_plugins", offset_of!(HostApi, list_plugins)),
            ("ctl", offset_of!(HostApi, ctl)),
            ("deliver", offset_of!(HostApi, deliver)),
            ("list_clients", offset_of!(HostApi, list_clients)),
            ("deliver_retained", offset_of!(HostApi, deliver_retained)),
            ("metrics", offset_of!(HostApi, metrics)),
            ("subscribe", offset_of!(HostApi, subscribe)),
            ("store_get", offset_of!(HostApi, store_get)),
            ("store_scan", offset_of!(HostApi, store_scan)),
            ("store_commit", offset_of!(HostApi, store_commit)),
            ("store_watch", offset_of!(HostApi, store_watch)),
            ("store_watch_next", offset_of!(HostApi, store_watch_next)),
            ("store_unwatch", offset_of!(HostApi, store_unwatch)),
            ("metric_add", offset_of!(HostApi, metric_add)),
            ("store_swap", offset_of!(HostApi, store_swap)),
            ("stat_set", offset_of!(HostApi, stat_set)),
        ];
        let sizes = [
            offset_of!(HostApi, ctx),
            offset_of!(HostApi, deliver_retained), // the first release
            offset_of!(HostApi, metrics),
            offset_of!(HostApi, subscribe),
            offset_of!(HostApi, store_get),  // before the store
            offset_of!(HostApi, store_swap), // before the swap
            offset_of!(HostApi, stat_set),   // before plugin gauges
            size_of::<HostApi>(),
        ];
        let calls = Calls::default();
        for size in sizes {
            let older = Guarded::prefix(&test_host::vtable(&calls, size), size);
            // SAFETY: a vtable readable for its declared size, alive for the test.
            let host = unsafe { Host::from_raw(older.as_ptr()) };
            let has = |name: &str| {
                let offset = functions.iter().find(|(n, _)| *n == name).unwrap().1;
                covers(size as u32, offset, size_of::<usize>())
            };
            for (name, unsupported) in call_everything(&host) {
                assert_eq!(unsupported, !has(name), "{name} with a vtable of {size} bytes");
            }
            let mut expected: Vec<&str> = ["log", "stats", "publish", "list_plugins", "ctl", "deliver"].to_vec();
            expected.extend(["list_clients", "deliver_retained", "metrics", "subscribe"]);
            expected.extend(["store_get", "store_scan", "store_commit", "store_watch", "store_watch_next"]);
            expected.extend(["store_unwatch", "metric_add", "store_swap", "stat_set"]);
            expected.retain(|name| has(name));
            assert_eq!(calls.take(), expected, "the host functions called, with a vtable of {size} bytes");

            let has_strings = covers(size as u32, offset_of!(HostApi, started_at_ms), 8);
            let strings = (host.broker_version(), host.node_name(), host.data_dir().to_str().unwrap());
            assert_eq!(strings, if has_strings { ("9.9.9", "emqx@test", "/data") } else { ("", "", "") });
            let printed = format!("{host:?}");
            for (name, _) in functions {
                assert_eq!(printed.contains(&format!("\"{name}\"")), has(name), "{name} in {printed}");
            }
            assert!(printed.contains(&format!("size: {size}")), "{printed}");
        }
    }

    #[test]
    fn unsupported_travels_as_its_own_status() {
        let error = HostError::Unsupported("no".to_owned());
        assert_eq!(error.status(), abi::STATUS_UNSUPPORTED);
    }
}
