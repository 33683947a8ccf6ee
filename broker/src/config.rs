//! Settings: built-in defaults, then the TOML file, then `BROKER_*` environment variables,
//! then command-line flags. `section.key` is `BROKER_SECTION__KEY`; a top-level `key` is
//! `BROKER_KEY`. Every table the broker does not know is a plugin's config, handed to it as
//! JSON (`[telemetry]` to `emqx_telemetry`, see `plugins::manager::config_section`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod listeners;

/// `broker.shared_subscription_strategy`: the router's choice of share group member.
pub use crate::router::Strategy as SharedStrategy;
pub(crate) use listeners::Forwarded;
pub use listeners::{
    ListenerSettings, SslListener, TlsSettings, WsListener, WssListener, DEFAULT_LISTENER_MAX_CONNECTIONS,
    DEFAULT_MAX_CONN_RATE,
};

use crate::auth::{AllowAnonymous, BoolOrText, FailurePolicy};
use crate::node::{AclCacheSettings, Zone};
use crate::router::MAX_TOPIC_LEVELS;
use crate::session::{Overflow, QueueLimits};

/// Settings given on the command line; they beat the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub plugins_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

/// `[mqtt]`: the MQTT behaviour of every connection, with EMQX's names (its zone settings).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// Largest MQTT packet accepted, in bytes (EMQX's `max_packet_size`).
    pub max_packet_size: usize,
    /// Most clients connected at once (to the plain TCP listener).
    pub max_connections: usize,
    /// Connections the plain TCP listener accepts a second (EMQX's `max_conn_rate`); past
    /// it the listener waits before accepting more. 0 for no limit.
    pub max_conn_rate: u32,
    /// Connections one IP address may hold open at once on the plain TCP listener; past it
    /// a new one is closed at once. 0 for no limit.
    pub max_conns_per_ip: usize,
    /// Most unacknowledged QoS 1/2 messages in flight to one client.
    pub max_inflight: u16,
    /// Most QoS 2 messages a client may have unreleased (announced as Receive Maximum).
    pub max_awaiting_rel: u16,
    /// Seconds a new connection has to send its CONNECT.
    pub connect_timeout: u64,
    /// How long a packet the client has begun to send may take to arrive whole, whatever
    /// its keep-alive (EMQX has no such setting; its `idle_timeout` is our `connect_timeout`),
    /// e.g. `"30s"`. Past it the connection closes (`packet_timeout`; MQTT 5: DISCONNECT 0x8D).
    #[serde(deserialize_with = "duration_text")]
    pub packet_timeout: String,
    /// How long a QoS 1/2 message to an MQTT 3.1 or 3.1.1 client waits for its
    /// acknowledgement before it is sent again (DUP set; a PUBREL again) while the client
    /// stays connected, as EMQX's `retry_interval`, e.g. `"30s"`; `"0s"` never. MQTT 5
    /// forbids it (a message is sent again only when a session is resumed), so MQTT 5
    /// clients are never sent one again on a timer.
    #[serde(deserialize_with = "duration_text")]
    pub retry_interval: String,
    /// Cache each connection's ACL answers. EMQX's name `enable_acl_cache` is accepted too
    /// (one of the two), and so are EMQX's `on` / `off`. Not serialized, so that the built-in
    /// default does not count as a second name when the other one is set.
    #[serde(alias = "enable_acl_cache", deserialize_with = "on_off", skip_serializing)]
    pub acl_cache: bool,
    /// Most cached ACL answers a connection keeps (EMQX's `acl_cache_max_size`); at least 1,
    /// as in EMQX (no cache is `acl_cache = false`).
    pub acl_cache_max_size: usize,
    /// How long an ACL answer is cached, e.g. `"1m"` (EMQX's `acl_cache_ttl`).
    pub acl_cache_ttl: String,
    /// Most messages waiting in one session (offline, or beyond its inflight window); 0 is
    /// no limit. What a full queue does is `mqueue_overflow`; the oldest QoS 0 message always
    /// goes first.
    pub max_mqueue_len: usize,
    /// What a connected client's full queue does with one more QoS 1/2 message:
    /// `backpressure` (queue it and slow its publishers down, HiveMQ's overload protection)
    /// or `drop_oldest` (EMQX's). An offline client's full queue always drops the oldest.
    pub mqueue_overflow: MqueueOverflow,
    /// Keep QoS 0 messages for offline clients too.
    pub mqueue_store_qos0: bool,
    /// How long an MQTT 3.1.1 session with clean session 0 outlives its connection
    /// (MQTT 5 clients say it themselves), e.g. `"2h"`.
    #[serde(deserialize_with = "duration_text")]
    pub session_expiry_interval: String,
    /// Longest Session Expiry Interval an MQTT 5 client may ask for (EMQX 5's cap,
    /// `session_expiry_interval`), e.g. `"2h"`: a longer one is lowered, and the CONNACK tells
    /// the client the value used.
    #[serde(deserialize_with = "duration_text")]
    pub max_session_expiry: String,
    /// Most subscriptions one session may hold (EMQX's `max_subscriptions`); 0 is no limit.
    /// A SUBSCRIBE for a new filter over it gets 0x97 Quota exceeded (MQTT 3.1.1: 0x80).
    pub max_subscriptions: usize,
    /// How fast one connection's input is taken (EMQX 4.3's zone `rate_limit.*`).
    pub rate_limit: RateLimitSettings,
    /// Deliver at the subscription's QoS even when the message was published lower.
    pub upgrade_qos: bool,
    /// Highest QoS accepted (MQTT 5 Maximum QoS).
    pub max_qos_allowed: u8,
    /// Accept retained messages (MQTT 5 Retain Available).
    pub retain_available: bool,
    /// Accept wildcard subscriptions (MQTT 5 Wildcard Subscription Available).
    pub wildcard_subscription: bool,
    /// Accept shared subscriptions (MQTT 5 Shared Subscription Available).
    pub shared_subscription: bool,
    /// Topic aliases an MQTT 5 client may use (Topic Alias Maximum announced); 0 for none.
    pub max_topic_alias: u16,
    /// Most levels a topic name or filter from a client may have (EMQX's
    /// `max_topic_levels`); 0 for the broker's own limit, 201.
    pub max_topic_levels: usize,
    /// Keep-alive imposed on every MQTT 5 client (Server Keep Alive, EMQX's
    /// `server_keepalive`), in seconds; 0 leaves the client's.
    pub server_keepalive: u16,
    /// Longest keep-alive a client may ask for (mosquitto's `max_keepalive`), in seconds; 0
    /// for no limit. An MQTT 5 client asking for more (or for none) is told this one (Server
    /// Keep Alive); an MQTT 3.1.1 client asking for more cannot be told, and is refused.
    pub max_keepalive: u16,
    /// Longest client id accepted.
    pub max_clientid_len: usize,
    /// The Response Information an MQTT 5 client that asks for it (Request Response
    /// Information 1) gets in its CONNACK: the start of the topics it may use to be answered
    /// on (EMQX 5's `mqtt.response_information`); empty for none.
    pub response_information: String,
}

/// `[mqtt.rate_limit]`: EMQX 4.3's per-connection input limits, each `"AMOUNT,PERIOD"`; empty
/// (the default, as in EMQX) for none. A client over a limit is not refused: the broker stops
/// taking its input until the limit allows more.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// PUBLISH packets one connection may send a period, e.g. `"100,10s"`.
    pub conn_messages_in: String,
    /// Bytes one connection may send a period, e.g. `"100KB,10s"` (KB, MB and GB count
    /// 1024s, as in EMQX).
    pub conn_bytes_in: String,
}

/// `mqtt.mqueue_overflow`: what a connected client's full session queue does with one more
/// QoS 1/2 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqueueOverflow {
    /// Queue it and slow its publishers down until the queue drains (overload protection).
    Backpressure,
    /// Drop the oldest message in the queue (EMQX's behaviour).
    DropOldest,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            max_packet_size: 1024 * 1024,
            max_connections: 100_000,
            max_conn_rate: DEFAULT_MAX_CONN_RATE,
            max_conns_per_ip: 0,
            max_inflight: 100,
            max_awaiting_rel: 100,
            connect_timeout: 15,
            packet_timeout: "30s".to_owned(),
            retry_interval: "30s".to_owned(),
            acl_cache: true,
            acl_cache_max_size: 32,
            acl_cache_ttl: "1m".to_owned(),
            max_mqueue_len: 1000,
            mqueue_overflow: MqueueOverflow::Backpressure,
            mqueue_store_qos0: true,
            session_expiry_interval: "2h".to_owned(),
            max_session_expiry: "2h".to_owned(),
            max_subscriptions: 0,
            rate_limit: RateLimitSettings::default(),
            upgrade_qos: false,
            max_qos_allowed: 2,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            max_topic_alias: 65535,
            max_topic_levels: 0,
            server_keepalive: 0,
            max_keepalive: 0,
            max_clientid_len: 65535,
            response_information: String::new(),
        }
    }
}

impl MqttSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout.max(1))
    }

    /// The ACL cache's settings; `None` when it is off.
    pub(crate) fn acl_cache(&self) -> Result<Option<AclCacheSettings>, ConfigError> {
        if self.acl_cache_max_size == 0 {
            return Err(ConfigError::Setting(
                "mqtt.acl_cache_max_size",
                "0 (must be greater than 0; to cache nothing set mqtt.enable_acl_cache = false)".to_owned(),
            ));
        }
        if !self.acl_cache {
            return Ok(None);
        }
        let ttl = duration("mqtt.acl_cache_ttl", &self.acl_cache_ttl)?;
        Ok(Some(AclCacheSettings { max_size: self.acl_cache_max_size, ttl }))
    }

    /// The settings every connection follows, checked.
    pub(crate) fn zone(&self) -> Result<Zone, ConfigError> {
        let bad = |key: &'static str, value: &dyn std::fmt::Display| ConfigError::Setting(key, value.to_string());
        if self.max_inflight == 0 {
            return Err(bad("mqtt.max_inflight", &"0 (must be 1 to 65535)"));
        }
        if self.max_awaiting_rel == 0 {
            return Err(bad("mqtt.max_awaiting_rel", &"0 (must be 1 to 65535)"));
        }
        if self.max_qos_allowed > 2 {
            return Err(bad("mqtt.max_qos_allowed", &self.max_qos_allowed));
        }
        if self.max_packet_size < 64 {
            return Err(bad("mqtt.max_packet_size", &format!("{} (at least 64 bytes)", self.max_packet_size)));
        }
        if self.max_topic_levels > MAX_TOPIC_LEVELS {
            let why = format!("{} (at most {MAX_TOPIC_LEVELS}; 0 for that)", self.max_topic_levels);
            return Err(bad("mqtt.max_topic_levels", &why));
        }
        let expiry = duration("mqtt.session_expiry_interval", &self.session_expiry_interval)?;
        let packet_timeout = duration("mqtt.packet_timeout", &self.packet_timeout)?;
        if packet_timeout.is_zero() {
            return Err(bad("mqtt.packet_timeout", &"0 (must be longer than 0)"));
        }
        let max_expiry = duration("mqtt.max_session_expiry", &self.max_session_expiry)?;
        let retry_interval = duration("mqtt.retry_interval", &self.retry_interval)?;
        let limit = |key: &'static str, text: &str, bytes: bool| {
            crate::connection::rate_limit::parse(text, bytes).map_err(|why| ConfigError::Setting(key, why))
        };
        let messages_in = limit("mqtt.rate_limit.conn_messages_in", &self.rate_limit.conn_messages_in, false)?;
        let bytes_in = limit("mqtt.rate_limit.conn_bytes_in", &self.rate_limit.conn_bytes_in, true)?;
        Ok(Zone {
            max_packet_size: self.max_packet_size.min(268_435_460),
            max_connections: self.max_connections,
            max_inflight: self.max_inflight,
            max_awaiting_rel: self.max_awaiting_rel,
            connect_timeout: self.connect_timeout(),
            packet_timeout,
            retry_interval: (!retry_interval.is_zero()).then_some(retry_interval),
            acl_cache: self.acl_cache()?,
            queue: QueueLimits {
                max_len: self.max_mqueue_len,
                store_qos0: self.mqueue_store_qos0,
                overflow: match self.mqueue_overflow {
                    MqueueOverflow::Backpressure => Overflow::Backpressure,
                    MqueueOverflow::DropOldest => Overflow::DropOldest,
                },
            },
            session_expiry_v3: expiry.as_secs().min(u64::from(u32::MAX)) as u32,
            max_session_expiry: max_expiry.as_secs().min(u64::from(u32::MAX)) as u32,
            max_subscriptions: self.max_subscriptions,
            messages_in,
            bytes_in,
            upgrade_qos: self.upgrade_qos,
            max_qos: self.max_qos_allowed,
            retain_available: self.retain_available,
            wildcard_subscription: self.wildcard_subscription,
            shared_subscription: self.shared_subscription,
            max_topic_alias: self.max_topic_alias,
            max_topic_levels: match self.max_topic_levels {
                0 => MAX_TOPIC_LEVELS,
                levels => levels,
            },
            server_keep_alive: (self.server_keepalive > 0).then_some(self.server_keepalive),
            max_keep_alive: (self.max_keepalive > 0).then_some(self.max_keepalive),
            max_client_id_len: self.max_clientid_len,
            response_information: match self.response_information.as_str() {
                "" => None,
                text if text.len() > usize::from(u16::MAX) => {
                    let why = format!("{} bytes (a UTF-8 string of at most 65,535)", text.len());
                    return Err(ConfigError::Setting("mqtt.response_information", why));
                }
                text => Some(text.into()),
            },
        })
    }
}

/// Reads a duration setting's text, also when it is a bare number (`BROKER_X=0` arrives as
/// an integer).
fn duration_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(u64),
        Text(String),
    }
    Ok(match Text::deserialize(deserializer)? {
        Text::Seconds(seconds) => seconds.to_string(),
        Text::Text(text) => text,
    })
}

/// A boolean setting that also takes EMQX's `on` / `off`.
fn on_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match BoolOrText::deserialize(d)? {
        BoolOrText::Bool(b) => Ok(b),
        BoolOrText::Text(t) => match t.trim() {
            "on" | "true" => Ok(true),
            "off" | "false" => Ok(false),
            other => Err(serde::de::Error::custom(format!("{other:?} is not on, off, true or false"))),
        },
    }
}

/// A duration setting: `"30s"`, `"2h"`, or a bare number of seconds.
fn duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    duration_of(value).map_err(|why| ConfigError::Setting(key, why))
}

/// A duration as the settings write it (`"30s"`, `"2h"`, or a bare number of seconds), or
/// why it is not one.
pub(crate) fn duration_of(value: &str) -> Result<Duration, String> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}"))
}

/// `[broker]`: node-wide behaviour (EMQX's `broker.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// How a share group picks the member that gets a message: `random`, `round_robin`,
    /// `sticky` or `hash` (of the publisher's client id).
    pub shared_subscription_strategy: SharedStrategy,
    /// How many heaps glibc's allocator keeps (its `M_ARENA_MAX`); 0 leaves glibc's default
    /// of eight a core. Each heap keeps the high-water mark of what was allocated in it, so
    /// with one heap a thread the broker's resident memory after waves of clients settles
    /// higher (see the README). The `MALLOC_ARENA_MAX` environment variable beats it.
    pub malloc_arena_max: u32,
    /// How often the broker checks whether glibc's heaps should give free memory back to the
    /// system (they do once the bytes in use fell well below their peak: clients left);
    /// `0` never, leaving it to glibc, which returns only the top of its heap.
    #[serde(deserialize_with = "duration_text")]
    pub malloc_trim_interval: String,
    /// How often the broker publishes `$SYS/brokers/<node>/version`, `sysdescr`, `stats/...`
    /// and `metrics/...` (EMQX's `broker.sys_interval`); `0` turns them off.
    #[serde(deserialize_with = "duration_text")]
    pub sys_interval: String,
    /// How often it publishes `$SYS/brokers/<node>/uptime` and `datetime` (EMQX's
    /// `broker.sys_heartbeat`); `0` turns them off.
    #[serde(deserialize_with = "duration_text")]
    pub sys_heartbeat: String,
    /// How long a client waits for a plugin that said it would answer a hook later (a
    /// `Later`, `HOOK_LATER`) before the host stops waiting: the chain then ends as a refusal
    /// (`client.connect`, `client.authenticate`, `client.check_acl` deny; `message.publish`
    /// drops the message), logged and counted (`hooks.answer_timeout`). `0` waits for ever.
    #[serde(deserialize_with = "duration_text")]
    pub hook_answer_timeout: String,
    /// How many PUBLISHes of one client may wait at once for a `message.publish` chain whose
    /// plugins answer later (`emqx_exhook`): the broker asks the chain for the PUBLISHes
    /// behind the first one already read, then routes and acknowledges them in order. `1`
    /// asks for one at a time, as an EMQX channel does.
    pub hook_pipeline: u32,
    /// How many threads serve the network (tokio's workers: every connection's task, the
    /// routing, the hooks that answer at once); `0`, the default, one a core the broker may
    /// run on (tokio's default: `TOKIO_WORKER_THREADS` in the environment beats it). Fewer
    /// leaves cores to other work on the same machine (a load generator, a web hook's
    /// service): see the README's "A burst's two speeds".
    pub network_threads: u32,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            shared_subscription_strategy: SharedStrategy::default(),
            malloc_arena_max: 1,
            malloc_trim_interval: "1s".to_owned(),
            sys_interval: "1m".to_owned(),
            sys_heartbeat: "30s".to_owned(),
            hook_answer_timeout: "60s".to_owned(),
            hook_pipeline: 8,
            network_threads: 0,
        }
    }
}

impl BrokerSettings {
    /// `malloc_trim_interval`, `None` when off.
    pub fn malloc_trim_interval(&self) -> Result<Option<Duration>, ConfigError> {
        Ok(Some(duration("broker.malloc_trim_interval", &self.malloc_trim_interval)?).filter(|d| !d.is_zero()))
    }

    /// `sys_interval`, `None` when off.
    pub fn sys_interval(&self) -> Result<Option<Duration>, ConfigError> {
        Ok(Some(duration("broker.sys_interval", &self.sys_interval)?).filter(|d| !d.is_zero()))
    }

    /// `hook_answer_timeout`, `None` for no deadline.
    pub fn hook_answer_timeout(&self) -> Result<Option<Duration>, ConfigError> {
        Ok(Some(duration("broker.hook_answer_timeout", &self.hook_answer_timeout)?).filter(|d| !d.is_zero()))
    }

    /// `hook_pipeline`: at least 1.
    pub fn hook_pipeline(&self) -> Result<usize, ConfigError> {
        match self.hook_pipeline {
            0 => Err(ConfigError::Setting("broker.hook_pipeline", "0: at least 1 (one PUBLISH at a time)".to_owned())),
            n => Ok(n as usize),
        }
    }

    /// `network_threads`, `None` for one a core.
    pub fn network_threads(&self) -> Option<usize> {
        (self.network_threads > 0).then_some(self.network_threads as usize)
    }

    /// `sys_heartbeat`, `None` when off.
    pub fn sys_heartbeat(&self) -> Result<Option<Duration>, ConfigError> {
        Ok(Some(duration("broker.sys_heartbeat", &self.sys_heartbeat)?).filter(|d| !d.is_zero()))
    }
}

/// `[cluster]`: the other nodes this one serves clients with, over NATS. Without `nats`, the
/// node is alone (and needs no NATS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// The NATS server, e.g. `nats://127.0.0.1:4222` (several: separated by commas).
    pub nats: Option<String>,
    /// The first token of every subject the cluster uses (clusters sharing one NATS account
    /// need different ones).
    pub subject_prefix: String,
    /// How long the node tries to reach NATS at start before it gives up (and exits).
    #[serde(deserialize_with = "duration_text")]
    pub connect_timeout: String,
    /// `true`: a node that cannot reach NATS at start serves its own clients and joins the
    /// cluster once NATS answers, instead of exiting.
    pub start_alone: bool,
    /// How many messages may wait to be handed to NATS; client publishers wait from half of
    /// it (overload protection), and past it a message is not forwarded.
    pub forward_queue: usize,
    /// How long the JetStream stream keeps QoS 1/2 messages (they are stored there before
    /// their PUBACK / PUBREC), e.g. `"1h"`.
    #[serde(deserialize_with = "duration_text")]
    pub retention: String,
    /// At most this many bytes in a node's stream; past it the oldest messages go.
    pub retention_bytes: u64,
    /// On how many servers of a NATS cluster the stream keeps each message (1 to 5).
    pub replicas: usize,
    /// How far back a session revived from a node that died has the streams read for it:
    /// before the last time that node was heard from, or before the oldest message still
    /// pending for the session (which its node writes down once it is older than half this),
    /// whichever is earlier. Allows for clocks that differ between nodes, e.g. `"30s"`.
    #[serde(deserialize_with = "duration_text")]
    pub revive_margin: String,
    /// The plugins whose stored state every node shares (a JetStream KV bucket keeps it): a
    /// retained message or a login added on one node is there on all. Every `shared/...`
    /// bucket is shared too. By default `emqx_retainer`, `emqx_auth_mnesia` and
    /// `emqx_mod_delayed` (whose nodes claim each due message through NATS, so one publishes it).
    pub shared_state: Vec<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            nats: None,
            subject_prefix: "mqtt".to_owned(),
            connect_timeout: "5s".to_owned(),
            start_alone: false,
            forward_queue: 128 * 1024,
            retention: "1h".to_owned(),
            retention_bytes: 1 << 30,
            replicas: 1,
            revive_margin: "30s".to_owned(),
            shared_state: vec![
                "emqx_retainer".to_owned(),
                "emqx_auth_mnesia".to_owned(),
                "emqx_mod_delayed".to_owned(),
            ],
        }
    }
}

impl ClusterSettings {
    /// What the cluster starts with, if this node is one of a cluster (`share_strategy`:
    /// `broker.shared_subscription_strategy`).
    pub(crate) fn config(
        &self,
        node_name: &str,
        share_strategy: SharedStrategy,
    ) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
        let Some(nats) = self.nats.as_deref().map(str::trim).filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        Ok(Some(crate::cluster::ClusterConfig {
            nats: nats.to_owned(),
            subject_prefix: self.subject_prefix.clone(),
            node_name: node_name.to_owned(),
            connect_timeout: duration("cluster.connect_timeout", &self.connect_timeout)?,
            start_alone: self.start_alone,
            forward_queue: match self.forward_queue {
                n if n >= 16 => n,
                n => return Err(ConfigError::Setting("cluster.forward_queue", format!("{n} (at least 16)"))),
            },
            retention: match duration("cluster.retention", &self.retention)? {
                d if d.is_zero() => {
                    return Err(ConfigError::Setting("cluster.retention", "0 (must be longer than 0)".to_owned()))
                }
                d => d,
            },
            retention_bytes: match i64::try_from(self.retention_bytes) {
                Ok(bytes) if bytes > 0 => bytes,
                _ => {
                    let why = format!("{} (must be 1 to 2^63-1)", self.retention_bytes);
                    return Err(ConfigError::Setting("cluster.retention_bytes", why));
                }
            },
            replicas: match self.replicas {
                1..=5 => self.replicas,
                n => return Err(ConfigError::Setting("cluster.replicas", format!("{n} (NATS keeps 1 to 5 copies)"))),
            },
            share_strategy,
            revive_margin: match duration("cluster.revive_margin", &self.revive_margin)? {
                d if d < Duration::from_secs(1) => {
                    return Err(ConfigError::Setting("cluster.revive_margin", format!("{d:?} (at least 1s)")))
                }
                d => d,
            },
        }))
    }
}

/// `[persistence]`: the store (`data/store` by default) and how sessions use it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceSettings {
    /// Whether persistent sessions (3.1.1 CleanSession 0, MQTT 5 Session Expiry > 0) are kept in
    /// the store. The store itself is always there: plugins keep their state in it.
    pub enabled: bool,
    /// When a write is on disk: `"group"` (before its caller is answered: one fsync for the
    /// writes that arrived together; a crash loses nothing acknowledged), `"interval"` (fsync
    /// every `sync_interval`: a crash may lose that much) or `"none"` (only at shutdown).
    pub sync: SyncSetting,
    /// The fsync period of `sync = "interval"`.
    #[serde(deserialize_with = "duration_text")]
    pub sync_interval: String,
    /// Where the store lives; default `<data_dir>/store`.
    pub dir: Option<PathBuf>,
}

/// `persistence.sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncSetting {
    /// Group commit: durable before the caller is answered.
    #[default]
    Group,
    /// fsync every `sync_interval`.
    Interval,
    /// fsync only at shutdown.
    None,
}

impl Default for PersistenceSettings {
    fn default() -> Self {
        PersistenceSettings { enabled: true, sync: SyncSetting::Group, sync_interval: "1s".to_owned(), dir: None }
    }
}

impl PersistenceSettings {
    /// How the store syncs, checked.
    pub fn sync_mode(&self) -> Result<store::SyncMode, ConfigError> {
        Ok(match self.sync {
            SyncSetting::Group => store::SyncMode::Group,
            SyncSetting::None => store::SyncMode::None,
            SyncSetting::Interval => {
                let every = duration("persistence.sync_interval", &self.sync_interval)?;
                if every.is_zero() {
                    return Err(ConfigError::Setting(
                        "persistence.sync_interval",
                        "0 (must be longer than 0 with sync = \"interval\"; use sync = \"group\" to sync every write)"
                            .to_owned(),
                    ));
                }
                store::SyncMode::Interval(every)
            }
        })
    }

    /// The store's directory: `dir`, or `<data_dir>/store`.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("store"))
    }
}

/// `[auth]`: how refused authentications are slowed down. `window_time` and `ban_time` are
/// EMQX 5's names for its flapping detection (EMQX 4.3's `flapping_detect_policy` =
/// threshold, window, ban); here the threshold counts failed authentications from one IP
/// address, so it is `max_failures` rather than EMQX's `max_count` of connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// How long the CONNACK of a refused authentication waits (`0` none), e.g. `"1s"`.
    #[serde(deserialize_with = "duration_text")]
    pub failure_delay: String,
    /// Failed authentications from one IP address within `window_time` that ban it; 0 never
    /// bans.
    pub max_failures: u32,
    /// The window `max_failures` is counted in.
    #[serde(deserialize_with = "duration_text")]
    pub window_time: String,
    /// How long a banned address is refused (CONNACK 0x8A Banned, 3.1.1: 0x05) at once.
    #[serde(deserialize_with = "duration_text")]
    pub ban_time: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            failure_delay: "1s".to_owned(),
            max_failures: 10,
            window_time: "1m".to_owned(),
            ban_time: "5m".to_owned(),
        }
    }
}

impl AuthSettings {
    /// The settings, checked.
    pub(crate) fn policy(&self) -> Result<FailurePolicy, ConfigError> {
        let policy = FailurePolicy {
            delay: duration("auth.failure_delay", &self.failure_delay)?,
            max_failures: self.max_failures,
            window: duration("auth.window_time", &self.window_time)?,
            ban_time: duration("auth.ban_time", &self.ban_time)?,
        };
        if policy.max_failures > 0 && policy.ban_time.is_zero() {
            return Err(ConfigError::Setting(
                "auth.ban_time",
                "0 (must be longer than 0 while auth.max_failures > 0; set max_failures = 0 to never ban)".to_owned(),
            ));
        }
        Ok(policy)
    }
}

/// Every broker setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Node name, as in EMQX (`emqx@127.0.0.1`); used in `$SYS` topics.
    pub node_name: String,
    /// Where `loaded_plugins`, the ctl socket and plugin state live.
    pub data_dir: PathBuf,
    /// Where plugin libraries are; default: beside the `broker` executable.
    pub plugins_dir: Option<PathBuf>,
    /// Log filter, `tracing` syntax (`RUST_LOG` beats it).
    pub log_level: String,
    /// What happens to a client no authentication plugin accepted (every one said continue,
    /// or none is loaded): `true` admits it, `false` refuses it (CONNACK 0x87 / 0x05), and
    /// `"loopback"` (the default) admits it only from 127.0.0.0/8 or ::1.
    pub allow_anonymous: AllowAnonymous,
    pub auth: AuthSettings,
    pub listener: ListenerSettings,
    pub mqtt: MqttSettings,
    pub broker: BrokerSettings,
    pub persistence: PersistenceSettings,
    pub cluster: ClusterSettings,
    /// Every other table: plugin configs, by section name.
    #[serde(flatten)]
    pub plugins: serde_json::Map<String, serde_json::Value>,
    /// `BROKER_*` environment variables that name no setting and were ignored (logged once
    /// the log is set up).
    #[serde(skip)]
    pub ignored_variables: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_name: "emqx@127.0.0.1".to_owned(),
            data_dir: PathBuf::from("data"),
            plugins_dir: None,
            log_level: "info".to_owned(),
            allow_anonymous: AllowAnonymous::default(),
            auth: AuthSettings::default(),
            listener: ListenerSettings::default(),
            mqtt: MqttSettings::default(),
            broker: BrokerSettings::default(),
            persistence: PersistenceSettings::default(),
            cluster: ClusterSettings::default(),
            plugins: Default::default(),
            ignored_variables: Vec::new(),
        }
    }
}

/// The settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0} = {1}")]
    Setting(&'static str, String),
    /// Settings the broker does not have (a misspelt name, most often): each is refused
    /// rather than ignored, as EMQX and mosquitto refuse them.
    #[error("invalid configuration: {}", unknown_list(.0))]
    Unknown(Vec<UnknownSetting>),
}

/// A setting the broker does not have, where it was given, and the known one it is closest
/// to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSetting {
    /// The setting as `section.key` (`mqtt.max_inflihgt`).
    pub key: String,
    /// Where it was given: the file, or the environment variable.
    pub given_in: String,
    /// The known setting of that section it is likely a misspelling of.
    pub suggestion: Option<String>,
    /// The environment variable that gave it, if one did.
    pub variable: Option<String>,
}

impl std::fmt::Display for UnknownSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown setting {} in {}", self.key, self.given_in)?;
        match &self.suggestion {
            Some(known) => write!(f, " (did you mean {known}?)"),
            None => Ok(()),
        }
    }
}

fn unknown_list(unknown: &[UnknownSetting]) -> String {
    unknown.iter().map(UnknownSetting::to_string).collect::<Vec<_>>().join("; ")
}

impl UnknownSetting {
    /// `path` (the section's keys, then the unknown one), given where `metadata` says, with
    /// the closest of `known` (the names the section has) as a suggestion.
    fn new(path: &[String], metadata: Option<&figment::Metadata>, known: &[&str]) -> UnknownSetting {
        let key = path.join(".");
        let variable = metadata
            .filter(|m| m.name.contains("environment"))
            .map(|_| format!("BROKER_{}", path.join("__").to_uppercase()));
        let given_in = match (metadata, &variable) {
            (_, Some(variable)) => format!("the environment ({variable})"),
            (Some(figment::Metadata { source: Some(figment::Source::File(file)), .. }), _) => {
                file.display().to_string()
            }
            (Some(m), _) => m.name.to_string(),
            (None, _) => "the configuration".to_owned(),
        };
        let name = path.last().map_or("", String::as_str);
        let section = &path[..path.len().saturating_sub(1)];
        let suggestion = likely_meant(name, known.iter().copied())
            .map(|known| section.iter().map(String::as_str).chain([known]).collect::<Vec<_>>().join("."));
        UnknownSetting { key, given_in, suggestion, variable }
    }
}

/// The one of `known` that `name` is likely a misspelling of: the nearest by edit distance
/// (transpositions count as one edit), if it is at most 2 edits away, or a third of `name`'s
/// length for a longer name.
pub(crate) fn likely_meant<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2.max(name.len() / 3))
        .min()
        .map(|(_, candidate)| candidate)
}

/// Why `figment` could not extract the settings: every setting it found that the broker
/// does not have, or else its error.
fn extract_error(error: figment::Error) -> ConfigError {
    let unknown: Vec<UnknownSetting> = error
        .clone()
        .into_iter()
        .filter_map(|e| match &e.kind {
            figment::error::Kind::UnknownField(_, known) => {
                Some(UnknownSetting::new(&e.path, e.metadata.as_ref(), known))
            }
            _ => None,
        })
        .collect();
    if unknown.is_empty() {
        ConfigError::Invalid(Box::new(error))
    } else {
        ConfigError::Unknown(unknown)
    }
}

/// The keys of `[listener.ssl]` and `[listener.wss]` that they do not have (serde cannot
/// refuse them: those tables flatten their TLS settings in).
fn unknown_in_listeners(figment: &Figment) -> Vec<UnknownSetting> {
    let tables = [("ssl", SslListener::keys()), ("wss", WssListener::keys())];
    let mut unknown = Vec::new();
    for (name, known) in tables {
        let given =
            figment.find_value(&format!("listener.{name}")).ok().and_then(|v| v.into_dict()).unwrap_or_default();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        for key in given.into_keys().filter(|key| !known.contains(&key.as_str())) {
            let path = ["listener".to_owned(), name.to_owned(), key];
            unknown.push(UnknownSetting::new(&path, figment.find_metadata(&path.join(".")), &known));
        }
    }
    unknown
}

/// The top-level settings given that the broker does not have: values, not tables (every
/// table the broker does not know is a plugin's).
fn unknown_top_level(settings: &Settings, figment: &Figment) -> Vec<UnknownSetting> {
    let known = serde_json::to_value(Settings::default()).unwrap_or_default();
    let known: Vec<&str> = known.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    settings
        .plugins
        .iter()
        .filter(|(_, value)| !value.is_object())
        .map(|(key, _)| UnknownSetting::new(std::slice::from_ref(key), figment.find_metadata(key), &known))
        .collect()
}

fn environment() -> Env {
    Env::prefixed("BROKER_").split("__").ignore(&["config"])
}

/// The data directory as flags and environment give it, before the file is read (the file's
/// default location is inside it).
pub fn data_dir(overrides: &Overrides) -> PathBuf {
    overrides
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("BROKER_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Reads the settings. A config file named by `--config` or `BROKER_CONFIG` must exist; the
/// default `<data_dir>/broker.toml` is optional.
pub fn load(overrides: &Overrides) -> Result<Settings, ConfigError> {
    let explicit = overrides.config.clone().or_else(|| std::env::var_os("BROKER_CONFIG").map(PathBuf::from));
    let file = match explicit {
        Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path)),
        Some(path) => Some(path),
        None => Some(data_dir(overrides).join("broker.toml")).filter(|p| p.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(file) = &file {
        figment = figment.merge(Toml::file(file));
    }
    figment = figment.merge(environment());
    let mut settings: Settings = figment.extract().map_err(extract_error)?;
    // A top-level value from the environment is not refused: Kubernetes gives every
    // container `BROKER_PORT`, `BROKER_SERVICE_HOST`, ... when a Service is named `broker`.
    let (from_environment, mut unknown): (Vec<_>, Vec<_>) =
        unknown_top_level(&settings, &figment).into_iter().partition(|u| u.variable.is_some());
    settings.ignored_variables = from_environment.into_iter().filter_map(|u| u.variable).collect();
    settings.plugins.retain(|_, value| value.is_object());
    unknown.extend(unknown_in_listeners(&figment));
    if !unknown.is_empty() {
        return Err(ConfigError::Unknown(unknown));
    }
    if let Some(dir) = &overrides.data_dir {
        settings.data_dir = dir.clone();
    }
    if let Some(dir) = &overrides.plugins_dir {
        settings.plugins_dir = Some(dir.clone());
    }
    if let Some(listen) = overrides.listen {
        settings.listener.tcp = listen;
    }
    settings.mqtt.zone()?;
    settings.auth.policy()?;
    settings.persistence.sync_mode()?;
    settings.listener.proxy_protocol_timeout()?;
    settings.listener.ws.forwarded()?;
    settings.listener.wss.forwarded()?;
    Ok(settings)
}

/// The plugins directory: the setting, or the directory of the running executable.
pub fn plugins_dir(settings: &Settings) -> std::io::Result<PathBuf> {
    match &settings.plugins_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(std::env::current_exe()?.parent().unwrap_or(Path::new(".")).to_owned()),
    }
}
