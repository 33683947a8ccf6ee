//! The `[bridge_mqtt]` table (env: `BROKER_BRIDGE_MQTT__<KEY>`), with EMQX 4.2's
//! `bridge.mqtt.aws.*` names and defaults.
//!
//! The keys at the top of the table are one bridge, named by `name` (default `aws`, EMQX's);
//! more bridges go in `[bridge_mqtt.bridges.<name>]` tables with the same keys. Each bridge
//! needs an `address`; the rest has EMQX's defaults. Accepted as EMQX writes them: `forwards`
//! as a list or EMQX's comma-separated text, `subscription` as a list of `{ topic, qos }` or
//! EMQX's numbered tables (`subscription.1.topic`), `ssl` as a boolean or `on` / `off`,
//! `mountpoint` for `forward_mountpoint` and `max_inflight` for `max_inflight_size`. Kept
//! for EMQX configs but without effect here (each is logged at start when set):
//! `bridge_mode`, `ciphers`, `psk_ciphers`, `tls_versions`, `queue.replayq_dir`; accepted
//! silently: `retry_interval`, `batch_size`, `queue.replayq_seg_bytes`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// EMQX's bridge name when the table names none.
const DEFAULT_NAME: &str = "aws";
/// EMQX's `keepalive` in the shipped `emqx_bridge_mqtt.conf`.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
/// EMQX's `reconnect_interval`.
const DEFAULT_RECONNECT_INTERVAL: Duration = Duration::from_secs(30);
/// EMQX's worker window (`max_inflight_batches`, 32 one-message batches for MQTT).
const DEFAULT_MAX_INFLIGHT: u16 = 32;
/// Default `queue.max_total_size`: the queue is read whole at start, so lower than EMQX's 5GB.
const DEFAULT_MAX_TOTAL_SIZE: u64 = 1024 * 1024 * 1024;

/// A setting that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettingsError {
    /// No bridge at all.
    #[error(
        "no bridge configured: set bridge_mqtt.address (e.g. BROKER_BRIDGE_MQTT__ADDRESS=\"192.168.1.2:1883\"), or add \
         [bridge_mqtt.bridges.<name>] tables"
    )]
    NoBridge,
    /// The table does not parse.
    #[error("invalid bridge_mqtt settings{0}: {1}")]
    Parse(String, serde_json::Error),
    /// One value is wrong.
    #[error("bridge_mqtt{prefix}.{key}: {why}")]
    Value { prefix: String, key: &'static str, why: String },
    /// A bridge name that is not `[A-Za-z0-9_-]+`, or used twice.
    #[error("bridge name {0:?}: {1}")]
    Name(String, &'static str),
}

/// The MQTT version spoken to the remote broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    /// MQTT 3.1.1 (`mqttv4`; also `mqttv3`, see [`BridgeSettings::notes`]).
    V4,
    /// MQTT 5 (`mqttv5`).
    V5,
}

/// EMQX's `start_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartType {
    /// Connects when the plugin starts (EMQX's schema default).
    Auto,
    /// Waits for `broker ctl bridges start NAME`.
    Manual,
}

/// One bridge, checked.
#[derive(Clone)]
pub(crate) struct BridgeSettings {
    pub(crate) name: String,
    /// Where its keys are, for messages: `""` or `.bridges.<name>`.
    pub(crate) prefix: String,
    /// `address` as written.
    pub(crate) address: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) proto: Proto,
    pub(crate) start_type: StartType,
    /// With `${node}` replaced.
    pub(crate) clientid: String,
    pub(crate) clean_start: bool,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// Local topic filters whose messages go to the remote broker.
    pub(crate) forwards: Vec<String>,
    /// Put in front of a forwarded message's topic (`${node}` replaced); empty for none.
    pub(crate) forward_mountpoint: String,
    /// Remote topic filters subscribed to, with their QoS.
    pub(crate) subscriptions: Vec<(String, u8)>,
    /// Put in front of a received message's topic; empty for none.
    pub(crate) receive_mountpoint: String,
    /// The TLS files, when `ssl` is on (paths made absolute from the data directory).
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) keepalive: Duration,
    pub(crate) reconnect_interval: Duration,
    pub(crate) max_inflight: u16,
    /// Most bytes (topic + payload, EMQX's estimate) queued for the remote broker.
    pub(crate) max_total_size: u64,
    /// Things to tell the operator at start (settings kept for EMQX configs that do nothing here).
    pub(crate) notes: Vec<String>,
}

impl std::fmt::Debug for BridgeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("BridgeSettings")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("proto", &self.proto)
            .field("clientid", &self.clientid)
            .field("forwards", &self.forwards)
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

/// EMQX's `cacertfile`, `certfile` and `keyfile`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) cacertfile: Option<PathBuf>,
    pub(crate) certfile: Option<PathBuf>,
    pub(crate) keyfile: Option<PathBuf>,
}

impl BridgeSettings {
    /// `address` as `host:port`, for logs.
    pub(crate) fn target(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}", self.address)
    }

    /// The remote topic of a local message: `forward_mountpoint` in front (EMQX's
    /// `emqx_topic:prepend/2`: a `/` between them unless the mountpoint ends with one).
    pub(crate) fn remote_topic(&self, topic: &str) -> String {
        prepend(&self.forward_mountpoint, topic)
    }

    /// The local topic of a received message: `receive_mountpoint` in front.
    pub(crate) fn local_topic(&self, topic: &str) -> String {
        prepend(&self.receive_mountpoint, topic)
    }

    /// Whether a local message to `topic` goes to the remote broker.
    pub(crate) fn forwards(&self, topic: &str) -> bool {
        self.forwards.iter().any(|filter| plugin_api::topic::matches(filter, topic))
    }

    /// Whether the bridge's own subscriptions on the remote broker cover `remote_topic`.
    pub(crate) fn subscribed_to(&self, remote_topic: &str) -> bool {
        self.subscriptions.iter().any(|(filter, _)| plugin_api::topic::matches(filter, remote_topic))
    }
}

fn prepend(prefix: &str, topic: &str) -> String {
    match prefix {
        "" => topic.to_owned(),
        p if p.ends_with('/') => format!("{p}{topic}"),
        p => format!("{p}/{topic}"),
    }
}

/// Every bridge of the table.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) bridges: Vec<BridgeSettings>,
}

impl Settings {
    /// Reads the plugin's table. `node` replaces `${node}`; relative TLS paths are taken from
    /// `data_dir`.
    pub(crate) fn from_json(table: &Value, node: &str, data_dir: &Path) -> Result<Settings, SettingsError> {
        let mut top = match table {
            Value::Null => serde_json::Map::new(),
            Value::Object(map) => map.clone(),
            other => {
                return Err(SettingsError::Parse(
                    String::new(),
                    serde::de::Error::custom(format!("not a table: {other}")),
                ))
            }
        };
        let name = match top.remove("name") {
            None => DEFAULT_NAME.to_owned(),
            Some(Value::String(name)) => name,
            Some(other) => other.to_string(),
        };
        let named: BTreeMap<String, Value> = match top.remove("bridges") {
            None => BTreeMap::new(),
            Some(value) => serde_json::from_value(value)
                .map_err(|e| SettingsError::Parse(".bridges (a table of bridge tables)".to_owned(), e))?,
        };
        let mut raws = Vec::new();
        if !top.is_empty() {
            let raw: RawBridge =
                serde_json::from_value(Value::Object(top)).map_err(|e| SettingsError::Parse(String::new(), e))?;
            raws.push((name, String::new(), raw));
        }
        for (name, value) in named {
            let prefix = format!(".bridges.{name}");
            let raw: RawBridge = serde_json::from_value(value).map_err(|e| SettingsError::Parse(prefix.clone(), e))?;
            raws.push((name, prefix, raw));
        }
        if raws.is_empty() {
            return Err(SettingsError::NoBridge);
        }
        let mut bridges: Vec<BridgeSettings> = Vec::new();
        for (name, prefix, raw) in raws {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(SettingsError::Name(name, "use letters, digits, '_' and '-'"));
            }
            if bridges.iter().any(|b| b.name == name) {
                return Err(SettingsError::Name(name, "names two bridges"));
            }
            bridges.push(raw.check(name, &prefix, node, data_dir)?);
        }
        Ok(Settings { bridges })
    }
}

/// One bridge's table as written; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawBridge {
    #[serde(deserialize_with = "text")]
    address: Option<String>,
    #[serde(deserialize_with = "text")]
    proto_ver: Option<String>,
    #[serde(deserialize_with = "text")]
    start_type: Option<String>,
    #[serde(deserialize_with = "flag")]
    bridge_mode: Option<bool>,
    #[serde(deserialize_with = "text")]
    clientid: Option<String>,
    #[serde(deserialize_with = "flag")]
    clean_start: Option<bool>,
    #[serde(deserialize_with = "text")]
    username: Option<String>,
    #[serde(deserialize_with = "text")]
    password: Option<String>,
    forwards: Option<Topics>,
    #[serde(alias = "mountpoint", deserialize_with = "text")]
    forward_mountpoint: Option<String>,
    subscription: Option<Subscriptions>,
    #[serde(deserialize_with = "text")]
    receive_mountpoint: Option<String>,
    #[serde(deserialize_with = "flag")]
    ssl: Option<bool>,
    #[serde(deserialize_with = "text")]
    cacertfile: Option<String>,
    #[serde(deserialize_with = "text")]
    certfile: Option<String>,
    #[serde(deserialize_with = "text")]
    keyfile: Option<String>,
    #[serde(deserialize_with = "text")]
    ciphers: Option<String>,
    #[serde(deserialize_with = "text")]
    psk_ciphers: Option<String>,
    #[serde(deserialize_with = "text")]
    tls_versions: Option<String>,
    #[serde(deserialize_with = "duration")]
    keepalive: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    reconnect_interval: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    retry_interval: Option<Duration>,
    batch_size: Option<u64>,
    #[serde(alias = "max_inflight")]
    max_inflight_size: Option<u64>,
    queue: RawQueue,
}

/// `queue.*`: EMQX's replayq settings. The queue is in the broker's store here.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawQueue {
    #[serde(deserialize_with = "text")]
    replayq_dir: Option<String>,
    #[serde(deserialize_with = "size")]
    replayq_seg_bytes: Option<u64>,
    #[serde(deserialize_with = "size")]
    max_total_size: Option<u64>,
}

/// `forwards`: a list, or EMQX's comma-separated text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Topics {
    List(Vec<String>),
    Text(String),
}

/// One `subscription` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    #[serde(deserialize_with = "text")]
    topic: Option<String>,
    qos: Option<u8>,
}

/// `subscription`: a list of `{ topic, qos }`, or EMQX's numbered tables.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Subscriptions {
    List(Vec<RawSubscription>),
    Numbered(BTreeMap<String, RawSubscription>),
}

impl RawBridge {
    fn check(self, name: String, prefix: &str, node: &str, data_dir: &Path) -> Result<BridgeSettings, SettingsError> {
        let bad = |key: &'static str, why: String| SettingsError::Value { prefix: prefix.to_owned(), key, why };
        let mut notes = Vec::new();

        let address = self.address.map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).ok_or_else(|| {
            bad("address", "is not set: the remote broker's host:port (e.g. \"192.168.1.2:1883\")".to_owned())
        })?;
        let (host, port) = parse_address(&address).map_err(|why| bad("address", why))?;

        let proto = match self.proto_ver.as_deref().map(str::trim) {
            None | Some("mqttv4") => Proto::V4,
            Some("mqttv5") => Proto::V5,
            Some("mqttv3") => {
                notes.push("proto_ver = mqttv3 (MQTT 3.1) connects as mqttv4 (MQTT 3.1.1)".to_owned());
                Proto::V4
            }
            Some(other) => return Err(bad("proto_ver", format!("{other:?} (use mqttv3, mqttv4 or mqttv5)"))),
        };
        let start_type = match self.start_type.as_deref().map(str::trim) {
            None | Some("auto") => StartType::Auto,
            Some("manual") => StartType::Manual,
            Some(other) => return Err(bad("start_type", format!("{other:?} (use auto or manual)"))),
        };
        if self.bridge_mode == Some(true) {
            notes.push("bridge_mode = true is not supported (the client cannot set it) and is ignored".to_owned());
        }

        let clientid = self.clientid.unwrap_or_else(|| format!("bridge_{name}")).replace("${node}", node);
        if clientid.is_empty() || clientid.starts_with(' ') {
            return Err(bad("clientid", format!("{clientid:?} (must not be empty or start with a space)")));
        }

        let forwards: Vec<String> = match self.forwards {
            None => Vec::new(),
            Some(Topics::List(list)) => list,
            Some(Topics::Text(text)) => text.split(',').map(str::to_owned).collect(),
        }
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
        if let Some(filter) = forwards.iter().find(|f| !plugin_api::topic::is_valid_filter(f)) {
            return Err(bad("forwards", format!("{filter:?} is not a valid topic filter")));
        }

        let mountpoint = |key: &'static str, value: Option<String>| -> Result<String, SettingsError> {
            let value = value.unwrap_or_default().trim().replace("${node}", node);
            if value.contains(['+', '#']) {
                return Err(bad(key, format!("{value:?} must not hold wildcards")));
            }
            Ok(value)
        };
        let forward_mountpoint = mountpoint("forward_mountpoint", self.forward_mountpoint)?;
        let receive_mountpoint = mountpoint("receive_mountpoint", self.receive_mountpoint)?;

        let entries = match self.subscription {
            None => Vec::new(),
            Some(Subscriptions::List(list)) => list,
            Some(Subscriptions::Numbered(map)) => {
                let mut numbered: Vec<(String, RawSubscription)> = map.into_iter().collect();
                // `subscription.2` before `subscription.10`.
                numbered.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), k.clone()));
                numbered.into_iter().map(|(_, s)| s).collect()
            }
        };
        let mut subscriptions = Vec::new();
        for entry in entries {
            let topic = entry.topic.map(|t| t.trim().to_owned()).unwrap_or_default();
            if !plugin_api::topic::is_valid_filter(&topic) {
                return Err(bad("subscription", format!("topic {topic:?} is not a valid topic filter")));
            }
            let qos = entry.qos.unwrap_or(1);
            if qos > 2 {
                return Err(bad("subscription", format!("qos {qos} of {topic:?} (use 0, 1 or 2)")));
            }
            subscriptions.push((topic, qos));
        }

        let tls = if self.ssl.unwrap_or(false) {
            let path =
                |p: Option<String>| p.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).map(|p| data_dir.join(p));
            for (key, value) in
                [("ciphers", &self.ciphers), ("psk_ciphers", &self.psk_ciphers), ("tls_versions", &self.tls_versions)]
            {
                if value.as_deref().is_some_and(|v| !v.trim().is_empty()) {
                    notes.push(format!("{key} is ignored: rustls offers TLS 1.2 and 1.3 with its safe cipher suites"));
                }
            }
            Some(TlsFiles {
                cacertfile: path(self.cacertfile),
                certfile: path(self.certfile),
                keyfile: path(self.keyfile),
            })
        } else {
            None
        };

        let keepalive = self.keepalive.unwrap_or(DEFAULT_KEEPALIVE);
        if (!keepalive.is_zero() && keepalive < Duration::from_secs(1)) || keepalive > Duration::from_secs(65535) {
            return Err(bad("keepalive", "must be 0 (none) or from 1s to 65535s".to_owned()));
        }
        let reconnect_interval = self.reconnect_interval.unwrap_or(DEFAULT_RECONNECT_INTERVAL);
        if reconnect_interval.is_zero() {
            return Err(bad("reconnect_interval", "must be above 0".to_owned()));
        }
        let max_inflight = match self.max_inflight_size {
            None | Some(0) => DEFAULT_MAX_INFLIGHT,
            Some(n) => u16::try_from(n).map_err(|_| bad("max_inflight_size", format!("{n} is over 65535")))?,
        };
        let _ = (self.retry_interval, self.batch_size, self.queue.replayq_seg_bytes);
        if self.queue.replayq_dir.as_deref().is_some_and(|d| !d.trim().is_empty()) {
            notes.push("queue.replayq_dir is ignored: the queue is kept in the broker's store".to_owned());
        }
        let max_total_size = self.queue.max_total_size.unwrap_or(DEFAULT_MAX_TOTAL_SIZE);
        if max_total_size == 0 {
            return Err(bad("queue.max_total_size", "must be above 0".to_owned()));
        }

        Ok(BridgeSettings {
            name,
            prefix: prefix.to_owned(),
            address,
            host,
            port,
            proto,
            start_type,
            clientid,
            clean_start: self.clean_start.unwrap_or(true),
            username: self.username,
            password: self.password,
            forwards,
            forward_mountpoint,
            subscriptions,
            receive_mountpoint,
            tls,
            keepalive,
            reconnect_interval,
            max_inflight,
            max_total_size,
            notes,
        })
    }
}

/// `host:port`, `host` (port 1883, as EMQX) or `[v6]:port`.
fn parse_address(address: &str) -> Result<(String, u16), String> {
    if address.contains('@') && !address.contains(':') {
        return Err(format!("{address:?} is a node name: RPC bridges are not supported, give the host:port"));
    }
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| format!("bad port in {address:?}"));
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("{address:?}: unclosed ["))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host.to_owned(), port(p)?)),
            None if after.is_empty() => Ok((host.to_owned(), 1883)),
            None => Err(format!("{address:?} is not host:port")),
        };
    }
    match address.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() && !host.contains(':') => Ok((host.to_owned(), port(p)?)),
        Some(_) => Err(format!("{address:?} is not host:port (an IPv6 address goes in brackets: [::1]:1883)")),
        None => Ok((address.to_owned(), 1883)),
    }
}

/// A text setting; a number is taken as its digits (`BROKER_BRIDGE_MQTT__USERNAME=1234` arrives as
/// a number).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!("expected text, found {other}"))),
    }
}

/// A boolean, or EMQX's `on` / `off` (and `true` / `false` as text).
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        Value::String(s) => match s.trim() {
            "on" | "true" => Ok(Some(true)),
            "off" | "false" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!("expected true/false or on/off, found {other:?}"))),
        },
        other => Err(serde::de::Error::custom(format!("expected true/false or on/off, found {other}"))),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    plugin_api::duration::deserialize(d).map(Some)
}

/// A byte size: a number, or `10MB`, `5GB`, `64KB`, `512B` (KB = 1024 bytes, as EMQX).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_u64().map(Some).ok_or_else(|| serde::de::Error::custom(format!("bad size {n}"))),
        Value::String(s) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!("expected a size such as 1GB, found {other}"))),
    }
}

/// Parses `1GB`, `10MB`, `64KB`, `512B` or a number of bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    let (digits, unit) = match upper.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => upper.split_at(i),
        None => (upper.as_str(), ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("invalid size {text:?} (use e.g. 1GB, 10MB)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        "TB" | "T" => 1 << 40,
        _ => return Err(format!("invalid size unit in {text:?} (use B, KB, MB, GB or TB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Settings, SettingsError> {
        Settings::from_json(&value, "emqx@n1", Path::new("/data"))
    }

    #[test]
    fn emqx_names_and_defaults() {
        let s = parse(json!({
            "address": "127.0.0.1:1883",
            "forwards": "topic1/#, topic2/#",
            "mountpoint": "bridge/aws/${node}/",
            "subscription": {"2": {"topic": "cmd/b", "qos": 0}, "1": {"topic": "cmd/a", "qos": 1}},
            "ssl": "off",
            "keepalive": "60s",
            "queue": {"replayq_dir": "data/replayq", "replayq_seg_bytes": "10MB", "max_total_size": "5GB"}
        }))
        .unwrap();
        let b = &s.bridges[0];
        assert_eq!((b.name.as_str(), b.host.as_str(), b.port), ("aws", "127.0.0.1", 1883));
        assert_eq!(b.clientid, "bridge_aws");
        assert_eq!(b.forwards, ["topic1/#", "topic2/#"]);
        assert_eq!(b.forward_mountpoint, "bridge/aws/emqx@n1/");
        assert_eq!(b.remote_topic("topic1/x"), "bridge/aws/emqx@n1/topic1/x");
        assert_eq!(b.subscriptions, [("cmd/a".to_owned(), 1), ("cmd/b".to_owned(), 0)]);
        assert_eq!((b.proto, b.start_type, b.clean_start), (Proto::V4, StartType::Auto, true));
        assert_eq!(
            (b.keepalive, b.reconnect_interval, b.max_inflight),
            (DEFAULT_KEEPALIVE, Duration::from_secs(30), 32)
        );
        assert_eq!(b.max_total_size, 5 << 30);
        assert!(b.tls.is_none());
        assert_eq!(b.notes.len(), 1, "{:?}", b.notes);
    }

    #[test]
    fn several_named_bridges() {
        let s = parse(json!({
            "bridges": {
                "east": {"address": "east:1883", "proto_ver": "mqttv5", "receive_mountpoint": "from/east",
                         "subscription": [{"topic": "b/#", "qos": 2}], "ssl": true, "cacertfile": "ca.pem"},
                "west": {"address": "[::1]:8883", "clientid": "${node}-w", "max_inflight": 5}
            }
        }))
        .unwrap();
        let names: Vec<&str> = s.bridges.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["east", "west"]);
        let east = &s.bridges[0];
        assert_eq!(east.proto, Proto::V5);
        assert_eq!(east.local_topic("b/1"), "from/east/b/1");
        assert_eq!(east.tls.as_ref().unwrap().cacertfile.as_deref(), Some(Path::new("/data/ca.pem")));
        let west = &s.bridges[1];
        assert_eq!((west.host.as_str(), west.port, west.clientid.as_str()), ("::1", 8883, "emqx@n1-w"));
        assert_eq!(west.max_inflight, 5);
    }

    #[test]
    fn mistakes_are_named() {
        let error = |v: Value| parse(v).unwrap_err().to_string();
        assert!(error(json!({})).starts_with("no bridge configured"));
        assert!(error(json!({"forwards": ["a/#"]})).starts_with("bridge_mqtt.address: is not set"));
        assert!(error(json!({"address": "h:1", "forwards": ["a/#/b"]})).contains("forwards: \"a/#/b\""));
        assert!(error(json!({"address": "h:1", "proto_ver": "mqttv6"})).contains("proto_ver"));
        assert!(error(json!({"address": "h:x"})).contains("bad port"));
        assert!(error(json!({"address": "emqx@host"})).contains("RPC bridges"));
        assert!(error(json!({"address": "h:1", "mountpoint": "a/+/"})).contains("wildcards"));
        assert!(error(json!({"address": "h:1", "adress": "x"})).contains("unknown field"));
        assert!(error(json!({"bridges": {"a b": {"address": "h:1"}}})).contains("bridge name"));
        assert!(error(json!({"address": "h:1", "subscription": [{"topic": "x", "qos": 3}]})).contains("qos 3"));
    }

    #[test]
    fn numbers_from_the_environment_read_as_text() {
        let s = parse(json!({"address": "h", "username": 1234, "password": 5678})).unwrap();
        assert_eq!(s.bridges[0].username.as_deref(), Some("1234"));
        assert_eq!(s.bridges[0].port, 1883);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MB"), Ok(10 << 20));
        assert_eq!(parse_size("5gb"), Ok(5 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
    }
}
