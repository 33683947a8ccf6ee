//! The `[web_hook]` table (env: `BROKER_WEB_HOOK__URL`, `BROKER_WEB_HOOK__QUEUE_SIZE`, ...),
//! with EMQX 4.2/4.3's `web.hook.*` names where EMQX has one: `url` (4.2's `api.url` as
//! `api_url` too), `headers`, `encoding_of_payload_field` (4.2's `encode_payload` too),
//! `pool_size`, `enable_pipelining` (4.3's `true` / `false`, or 5's number of requests a
//! connection carries at once), `ssl.cacertfile` / `ssl.certfile` / `ssl.keyfile` / `ssl.verify`, and the
//! rules, as one array: `rules = [{ event = "message.publish", topic = "a/#" }]` for EMQX's
//! `web.hook.rule.message.publish.1 = {"action": "on_message_publish", "topic": "a/#"}`.
//! Added here: `queue_size` (events waiting to be sent; past it they are dropped),
//! `request_timeout`, `connect_timeout` and `sender_priority` (how the sending thread is
//! scheduled: `idle`, `low` or `normal`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use plugin_api::Hook;
use serde::Deserialize;

use crate::priority::Priority;

/// The events the plugin can send, in the order the README lists them. The default rules
/// (no `rules` set) are every one of them except `client.connect` and `client.connack`.
pub(crate) const EVENTS: [Hook; 13] = [
    Hook::ClientConnect,
    Hook::ClientConnack,
    Hook::ClientConnected,
    Hook::ClientDisconnected,
    Hook::ClientSubscribe,
    Hook::ClientUnsubscribe,
    Hook::SessionSubscribed,
    Hook::SessionUnsubscribed,
    Hook::SessionTerminated,
    Hook::MessagePublish,
    Hook::MessageDelivered,
    Hook::MessageAcked,
    Hook::MessageDropped,
];

/// Whether events of `hook` have a topic a rule's `topic` filter can select on.
pub(crate) const fn has_topic(hook: Hook) -> bool {
    matches!(
        hook,
        Hook::ClientSubscribe
            | Hook::ClientUnsubscribe
            | Hook::SessionSubscribed
            | Hook::SessionUnsubscribed
            | Hook::MessagePublish
            | Hook::MessageDelivered
            | Hook::MessageAcked
            | Hook::MessageDropped
    )
}

/// How the `payload` field of message events is written (EMQX's
/// `web.hook.body.encoding_of_payload_field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PayloadEncoding {
    /// As text (bytes that are not UTF-8 are replaced with U+FFFD); EMQX's default.
    Plain,
    /// Base64 (standard alphabet, padded).
    Base64,
}

impl PayloadEncoding {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            PayloadEncoding::Plain => "plain",
            PayloadEncoding::Base64 => "base64",
        }
    }
}

/// One rule as written: an event, and optionally a topic filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    event: String,
    topic: Option<String>,
}

/// EMQX's `web.hook.ssl.*`, for an `https://` URL: PEM files, relative to the data directory
/// unless absolute. Without `cacertfile` the service's certificate is checked against the
/// system's and the web PKI's roots.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Ssl {
    /// The CA certificates the service's certificate must chain to (EMQX 4.2: `cafile`).
    #[serde(alias = "cafile")]
    pub(crate) cacertfile: Option<PathBuf>,
    /// The client certificate (chain) shown to the service.
    pub(crate) certfile: Option<PathBuf>,
    /// The client certificate's private key.
    pub(crate) keyfile: Option<PathBuf>,
    /// Check the service's certificate (EMQX's default is `false`; here `true`).
    pub(crate) verify: bool,
}

impl Default for Ssl {
    fn default() -> Self {
        Ssl { cacertfile: None, certfile: None, keyfile: None, verify: true }
    }
}

/// How many requests a connection carries at once with `enable_pipelining = true` (EMQX 5's
/// default for its number).
pub(crate) const DEFAULT_PIPELINE_DEPTH: usize = 100;

/// `enable_pipelining` as EMQX 4.3 writes it (`true` / `false`) or as EMQX 5 does (how many
/// requests a connection carries at once).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged, expecting = "true, false, or how many requests a connection carries at once (1 or more)")]
enum Pipelining {
    Switch(bool),
    Depth(usize),
}

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSettings {
    #[serde(alias = "api_url")]
    url: String,
    headers: BTreeMap<String, String>,
    #[serde(alias = "encode_payload")]
    encoding_of_payload_field: PayloadEncoding,
    rules: Option<Vec<RawRule>>,
    pool_size: usize,
    enable_pipelining: Pipelining,
    queue_size: usize,
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    request_timeout: Duration,
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    connect_timeout: Duration,
    sender_priority: Priority,
    ssl: Ssl,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            url: "http://127.0.0.1:80".to_owned(),
            headers: BTreeMap::new(),
            encoding_of_payload_field: PayloadEncoding::Plain,
            rules: None,
            pool_size: 32,
            enable_pipelining: Pipelining::Switch(true),
            queue_size: 10_000,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            sender_priority: Priority::Low,
            ssl: Ssl::default(),
        }
    }
}

/// Which events of one hook are sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Selection {
    /// None.
    #[default]
    Off,
    /// Every one.
    All,
    /// Those whose topic (or subscription filter) matches one of these filters.
    Topics(Vec<String>),
}

/// The rules, by hook.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    by_hook: Vec<Selection>,
}

impl Rules {
    /// The rules that apply when none are set: every event in [`EVENTS`] but `client.connect`
    /// and `client.connack`, unfiltered.
    fn default_rules() -> Rules {
        let mut rules = Rules { by_hook: vec![Selection::Off; Hook::ALL.len()] };
        for hook in EVENTS {
            if !matches!(hook, Hook::ClientConnect | Hook::ClientConnack) {
                rules.by_hook[hook as usize] = Selection::All;
            }
        }
        rules
    }

    /// What is sent of `hook`.
    pub(crate) fn selection(&self, hook: Hook) -> &Selection {
        self.by_hook.get(hook as usize).unwrap_or(&Selection::Off)
    }

    /// Whether an event of `hook` about `topic` is sent (`topic` is ignored for hooks without
    /// one). As EMQX, a filter matches a subscription's filter level by level, a `+` or `#` in
    /// it matching as a plain level.
    pub(crate) fn wants(&self, hook: Hook, topic: &str) -> bool {
        match self.selection(hook) {
            Selection::Off => false,
            Selection::All => true,
            Selection::Topics(filters) => filters.iter().any(|f| plugin_api::topic::matches(f, topic)),
        }
    }

    /// One line: each event sent, with its filters.
    pub(crate) fn describe(&self) -> String {
        let mut text = String::new();
        for hook in EVENTS {
            let sep = if text.is_empty() { "" } else { ", " };
            match self.selection(hook) {
                Selection::Off => {}
                Selection::All => {
                    let _ = write!(text, "{sep}{}", hook.name());
                }
                Selection::Topics(filters) => {
                    let _ = write!(text, "{sep}{} ({})", hook.name(), filters.join(" "));
                }
            }
        }
        if text.is_empty() {
            "none".to_owned()
        } else {
            text
        }
    }
}

/// Every setting, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Where every event is POSTed.
    pub(crate) url: url::Url,
    /// Sent with every request; `content-type: application/json` unless set otherwise.
    pub(crate) headers: HeaderMap,
    /// How message payloads are written.
    pub(crate) encoding: PayloadEncoding,
    /// Which events are sent.
    pub(crate) rules: Rules,
    /// Requests in flight at once, and idle connections kept (EMQX's `pool_size`).
    pub(crate) pool_size: usize,
    /// How many requests one connection carries at once (`enable_pipelining`: `true` is
    /// [`DEFAULT_PIPELINE_DEPTH`], a number that many); `None` (`false`): one at a time on
    /// each lane's connection.
    pub(crate) pipeline_depth: Option<usize>,
    /// Events waiting to be sent; past it they are dropped.
    pub(crate) queue_size: usize,
    /// The longest one request may take, connecting included.
    pub(crate) request_timeout: Duration,
    /// The longest connecting may take.
    pub(crate) connect_timeout: Duration,
    /// How the sending thread is scheduled: `low` (the default) lets MQTT traffic have the
    /// CPU first (see `priority`).
    pub(crate) sender_priority: Priority,
    /// TLS files for `https://`.
    pub(crate) ssl: Ssl,
}

/// The table is wrong; the message names the key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettingsError {
    /// Not the right shape (unknown key, wrong type, bad duration or encoding), at the key it names.
    #[error(transparent)]
    Shape(#[from] plugin_api::TableError),
    /// A URL that does not parse or is not http(s).
    #[error("web_hook.url: {why}: {url:?}")]
    Url { url: String, why: String },
    /// A header name or value that HTTP does not allow.
    #[error("web_hook.headers: {0}")]
    Header(String),
    /// A rule that names no event the plugin sends, or a filter it cannot use.
    #[error("web_hook.rules[{index}]: {why}")]
    Rule { index: usize, why: String },
    /// A zero size or timeout.
    #[error("web_hook.{0} must be more than 0")]
    Zero(&'static str),
}

impl Settings {
    /// Reads and checks the plugin's config table (`null` or `{}` gives the defaults).
    pub(crate) fn from_json(value: &serde_json::Value) -> Result<Settings, SettingsError> {
        let raw: RawSettings = plugin_api::parse_table(value, "web_hook")?;
        for (name, value) in [
            ("pool_size", raw.pool_size as u128),
            ("queue_size", raw.queue_size as u128),
            ("request_timeout", raw.request_timeout.as_nanos()),
            ("connect_timeout", raw.connect_timeout.as_nanos()),
        ] {
            if value == 0 {
                return Err(SettingsError::Zero(name));
            }
        }
        Ok(Settings {
            url: url(&raw.url)?,
            headers: headers(raw.headers)?,
            encoding: raw.encoding_of_payload_field,
            rules: match raw.rules {
                None => Rules::default_rules(),
                Some(rules) => rules_from(rules)?,
            },
            pool_size: raw.pool_size,
            pipeline_depth: match raw.enable_pipelining {
                Pipelining::Switch(false) => None,
                Pipelining::Switch(true) => Some(DEFAULT_PIPELINE_DEPTH),
                Pipelining::Depth(0) => return Err(SettingsError::Zero("enable_pipelining")),
                Pipelining::Depth(depth) => Some(depth),
            },
            queue_size: raw.queue_size,
            request_timeout: raw.request_timeout,
            connect_timeout: raw.connect_timeout,
            sender_priority: raw.sender_priority,
            ssl: raw.ssl,
        })
    }
}

/// The URL; one without a scheme is `http://` (EMQX's `add_default_scheme`).
fn url(text: &str) -> Result<url::Url, SettingsError> {
    let text = text.trim();
    let bad = |why: String| SettingsError::Url { url: text.to_owned(), why };
    let full = if text.contains("://") { text.to_owned() } else { format!("http://{text}") };
    let parsed = url::Url::parse(&full).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(format!("the scheme must be http or https, not {}", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".to_owned()));
    }
    Ok(parsed)
}

/// The headers: names are case-insensitive, and an environment variable cannot spell `-`, so
/// `content_type` means `content-type`. EMQX's `content-type: application/json` unless set.
fn headers(raw: BTreeMap<String, String>) -> Result<HeaderMap, SettingsError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in raw {
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| SettingsError::Header(format!("{name:?} is not a valid header name")))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| SettingsError::Header(format!("the value of {name} is not a valid header value")))?;
        headers.insert(header, value);
    }
    Ok(headers)
}

fn rules_from(raw: Vec<RawRule>) -> Result<Rules, SettingsError> {
    let mut rules = Rules { by_hook: vec![Selection::Off; Hook::ALL.len()] };
    for (index, rule) in raw.into_iter().enumerate() {
        let bad = |why: String| SettingsError::Rule { index, why };
        let name = rule.event.trim();
        let hook = EVENTS.into_iter().find(|h| h.name() == name).ok_or_else(|| {
            let names: Vec<&str> = EVENTS.iter().map(|h| h.name()).collect();
            bad(format!("event {name:?} is not one the web hook sends ({})", names.join(", ")))
        })?;
        let selection = &mut rules.by_hook[hook as usize];
        match rule.topic.as_deref().map(str::trim) {
            None => *selection = Selection::All,
            Some(_) if !has_topic(hook) => {
                return Err(bad(format!("{name} events have no topic to filter on: remove `topic`")));
            }
            Some(filter) if !plugin_api::topic::is_valid_filter(filter) => {
                return Err(bad(format!("topic {filter:?} is not a valid topic filter")));
            }
            // Several rules for one event: it is sent when any of them matches.
            Some(filter) => match selection {
                Selection::All => {}
                Selection::Off => *selection = Selection::Topics(vec![filter.to_owned()]),
                Selection::Topics(filters) => filters.push(filter.to_owned()),
            },
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults() {
        let s = Settings::from_json(&serde_json::Value::Null).unwrap();
        assert_eq!(s.url.as_str(), "http://127.0.0.1/");
        assert_eq!(s.encoding, PayloadEncoding::Plain);
        assert_eq!(s.headers.get("content-type").unwrap(), "application/json");
        assert_eq!((s.pool_size, s.queue_size), (32, 10_000));
        assert_eq!((s.request_timeout, s.connect_timeout), (Duration::from_secs(5), Duration::from_secs(5)));
        assert!(s.ssl.verify);
        assert_eq!(s.sender_priority, Priority::Low);
        assert_eq!(s.pipeline_depth, Some(100));
        for hook in EVENTS {
            let expected = !matches!(hook, Hook::ClientConnect | Hook::ClientConnack);
            assert_eq!(s.rules.wants(hook, "any/topic"), expected, "{}", hook.name());
        }
        assert!(!s.rules.wants(Hook::ClientAuthenticate, ""));
    }

    #[test]
    fn rules_select_events_and_topics() {
        let s = Settings::from_json(&json!({"rules": [
            {"event": "message.publish", "topic": "a/#"},
            {"event": "message.publish", "topic": "b/+"},
            {"event": "client.connected"},
            {"event": "session.subscribed", "topic": "x/#"},
            {"event": "session.subscribed"},
        ]}))
        .unwrap();
        assert!(s.rules.wants(Hook::MessagePublish, "a/b/c"));
        assert!(s.rules.wants(Hook::MessagePublish, "b/1"));
        assert!(!s.rules.wants(Hook::MessagePublish, "b/1/2"));
        assert!(!s.rules.wants(Hook::MessagePublish, "c"));
        assert!(s.rules.wants(Hook::ClientConnected, ""));
        assert!(s.rules.wants(Hook::SessionSubscribed, "anything"), "an unfiltered rule wins");
        assert!(!s.rules.wants(Hook::ClientDisconnected, ""));
        assert!(!s.rules.wants(Hook::MessageDelivered, "a/b"));
        assert_eq!(s.rules.describe(), "client.connected, session.subscribed, message.publish (a/# b/+)");
        let none = Settings::from_json(&json!({"rules": []})).unwrap();
        assert_eq!(none.rules.describe(), "none");
    }

    #[test]
    fn names_as_emqx_writes_them() {
        let s = Settings::from_json(&json!({
            "api_url": "127.0.0.1:8080/hook",
            "encode_payload": "base64",
            "headers": {"X_Token": "t0k", "Content-Type": "application/json; charset=utf-8"},
            "ssl": {"cafile": "ca.pem", "verify": false},
            "request_timeout": "250ms",
        }))
        .unwrap();
        assert_eq!(s.url.as_str(), "http://127.0.0.1:8080/hook");
        assert_eq!(s.encoding, PayloadEncoding::Base64);
        assert_eq!(s.headers.get("x-token").unwrap(), "t0k");
        assert_eq!(s.headers.get("content-type").unwrap(), "application/json; charset=utf-8");
        assert_eq!(s.ssl.cacertfile, Some(PathBuf::from("ca.pem")));
        assert!(!s.ssl.verify);
        assert_eq!(s.request_timeout, Duration::from_millis(250));
        // EMQX 4.3 writes a switch, EMQX 5 how many requests a connection carries.
        for (value, depth) in [(json!(false), None), (json!(true), Some(100)), (json!(16), Some(16))] {
            let s = Settings::from_json(&json!({ "enable_pipelining": value })).unwrap();
            assert_eq!(s.pipeline_depth, depth, "{value}");
        }
    }

    #[test]
    fn bad_input_is_named_precisely() {
        let cases = [
            (json!({"url": "ftp://x/y"}), "web_hook.url: the scheme must be http or https"),
            (json!({"encoding_of_payload_field": "base62"}), "web_hook.encoding_of_payload_field: unknown variant"),
            (json!({"rules": [{"event": "client.check_acl"}]}), "web_hook.rules[0]: event \"client.check_acl\""),
            (
                json!({"rules": [{"event": "client.connected", "topic": "a"}]}),
                "rules[0]: client.connected events have no topic",
            ),
            (
                json!({"rules": [{}, {"event": "message.acked", "topic": "a/#/b"}]}),
                "web_hook.rules[0]: missing field `event`",
            ),
            (json!({"rules": [{"event": "message.acked", "topic": "a/#/b"}]}), "not a valid topic filter"),
            (json!({"rules": [{"event": "message.acked", "action": "on_message_acked"}]}), "unknown field `action`"),
            (json!({"headers": {"bad header": "x"}}), "web_hook.headers: \"bad header\""),
            (json!({"headers": {"x": "a\r\nb"}}), "the value of x"),
            (json!({"queue_size": 0}), "web_hook.queue_size must be more than 0"),
            (json!({"enable_pipelining": 0}), "web_hook.enable_pipelining must be more than 0"),
            (json!({"enable_pipelining": "on"}), "web_hook.enable_pipelining: true, false, or how many"),
            (json!({"sender_priority": "high"}), "web_hook.sender_priority: unknown variant `high`"),
            (json!({"request_timeout": "soon"}), "web_hook.request_timeout: invalid duration"),
            (json!({"tmieout": "5s"}), "web_hook.tmieout: unknown field `tmieout`"),
        ];
        for (value, expected) in cases {
            let error = Settings::from_json(&value).unwrap_err().to_string();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }
}
