//! What a plugin says about itself, and the config it receives.

use serde::de::DeserializeOwned;

use crate::abi;

/// A broker hook, named as in EMQX 4.x. The discriminant is the bit index in a [`HookMask`].
///
/// Non-exhaustive: hooks are appended to the ABI as the broker grows (an older host never
/// fires the newer ones), so a plugin's `match` on a hook needs a `_` arm.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hook {
    /// `client.connect`: a CONNECT arrived, before authentication.
    ClientConnect = 0,
    /// `client.connected`: the broker accepted the connection (CONNACK success sent).
    ClientConnected = 1,
    /// `client.disconnected`: the connection is gone; see [`crate::Event::reason`].
    ClientDisconnected = 2,
    /// `client.authenticate`: answer Allow, Superuser, Deny or Continue (no opinion). Runs off
    /// the broker's network threads, so it may block (an HTTP request, a slow hash).
    ClientAuthenticate = 3,
    /// `client.check_acl`: answer Allow, Deny or Continue, for a publish or subscribe
    /// ([`crate::Event::acl_action`]). Runs on a network thread unless declared in
    /// [`crate::Plugin::BLOCKING_HOOKS`].
    ClientCheckAcl = 4,
    /// `client.subscribe`: a SUBSCRIBE arrived; one event per topic filter.
    ClientSubscribe = 5,
    /// `client.unsubscribe`: an UNSUBSCRIBE arrived; one event per topic filter.
    ClientUnsubscribe = 6,
    /// `session.subscribed`: the broker granted a subscription (SUBACK); one per filter.
    SessionSubscribed = 7,
    /// `session.unsubscribed`: the broker removed a subscription (UNSUBACK); one per filter.
    SessionUnsubscribed = 8,
    /// `message.publish`: a client published; answer Continue (keep) or Drop.
    MessagePublish = 9,
    /// `message.delivered`: a message was sent to a subscriber.
    MessageDelivered = 10,
    /// `message.acked`: a subscriber acknowledged a QoS 1/2 message.
    MessageAcked = 11,
    /// `message.dropped`: a message did not reach a subscriber: no subscription matched, a
    /// plugin or the ACL dropped it, a subscriber's queue was full, it expired, or it was over
    /// a subscriber's Maximum Packet Size ([`crate::Event::reason`]). `client_id` is the
    /// subscriber's for the last three, the publisher's otherwise.
    MessageDropped = 12,
    /// `client.connack`: the broker answers a CONNECT, accepting or refusing it;
    /// [`crate::Event::return_code`] is the CONNACK code as sent (the MQTT 3.1.1 return code,
    /// or the MQTT 5 reason code). Fires before `client.connected`, and for refusals after
    /// the client id was read (a refused client never gets `client.connected`). Added after
    /// the first release of ABI version 1: an older host never fires it.
    ClientConnack = 13,
    /// `session.terminated`: a session ended: its connection went and it was not to outlive
    /// it (fired after that connection's `client.disconnected`), its Session Expiry Interval
    /// ran out while its client was offline, or it was kicked (`broker ctl sessions kick`);
    /// [`crate::Event::reason`] is the `client.disconnected` reason of the connection that
    /// ended it (`normal`, `tcp_closed`, `keepalive_timeout`, ...), `expired` or `kicked`. Not
    /// fired for a session that a new connection of its client id replaces without resuming
    /// it (EMQX's `session.discarded`). `username` and `peer` are empty when no connection
    /// served the session as it ended (`expired`, or `kicked` while offline). Added after the
    /// first release of ABI version 1: an older host never fires it.
    SessionTerminated = 14,
    /// `session.created`: a connection got a new session (a clean start, or none was kept for
    /// its client id); fired before its `client.connected`. Added after the first release of
    /// ABI version 1: an older host never fires it.
    SessionCreated = 15,
    /// `session.resumed`: a connection resumed the session kept for its client id (CONNACK
    /// Session Present 1); fired before its `client.connected`. Added after the first release
    /// of ABI version 1: an older host never fires it.
    SessionResumed = 16,
    /// `session.discarded`: a connection with a clean start (or one whose previous session was
    /// not to outlive its connection) replaced the session kept for its client id, which ended
    /// without `session.terminated`; fired before the new session's `session.created`. Added
    /// after the first release of ABI version 1: an older host never fires it.
    SessionDiscarded = 17,
    /// `session.takenover`: a connection resumed a session that another connection of its
    /// client id was still serving (that one got DISCONNECT 0x8E); fired before the
    /// `session.resumed`. Added after the first release of ABI version 1: an older host never
    /// fires it.
    SessionTakenover = 18,
}

impl Hook {
    /// Every hook, in discriminant order.
    ///
    /// cbindgen:ignore
    pub const ALL: [Hook; 19] = [
        Hook::ClientConnect,
        Hook::ClientConnected,
        Hook::ClientDisconnected,
        Hook::ClientAuthenticate,
        Hook::ClientCheckAcl,
        Hook::ClientSubscribe,
        Hook::ClientUnsubscribe,
        Hook::SessionSubscribed,
        Hook::SessionUnsubscribed,
        Hook::MessagePublish,
        Hook::MessageDelivered,
        Hook::MessageAcked,
        Hook::MessageDropped,
        Hook::ClientConnack,
        Hook::SessionTerminated,
        Hook::SessionCreated,
        Hook::SessionResumed,
        Hook::SessionDiscarded,
        Hook::SessionTakenover,
    ];

    /// The EMQX name, e.g. `message.publish`.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::ClientConnect => "client.connect",
            Hook::ClientConnected => "client.connected",
            Hook::ClientDisconnected => "client.disconnected",
            Hook::ClientAuthenticate => "client.authenticate",
            Hook::ClientCheckAcl => "client.check_acl",
            Hook::ClientSubscribe => "client.subscribe",
            Hook::ClientUnsubscribe => "client.unsubscribe",
            Hook::SessionSubscribed => "session.subscribed",
            Hook::SessionUnsubscribed => "session.unsubscribed",
            Hook::MessagePublish => "message.publish",
            Hook::MessageDelivered => "message.delivered",
            Hook::MessageAcked => "message.acked",
            Hook::MessageDropped => "message.dropped",
            Hook::ClientConnack => "client.connack",
            Hook::SessionTerminated => "session.terminated",
            Hook::SessionCreated => "session.created",
            Hook::SessionResumed => "session.resumed",
            Hook::SessionDiscarded => "session.discarded",
            Hook::SessionTakenover => "session.takenover",
        }
    }

    /// The hook with this raw number, if it is one this crate knows.
    pub const fn from_raw(raw: u32) -> Option<Hook> {
        if (raw as usize) < Hook::ALL.len() {
            Some(Hook::ALL[raw as usize])
        } else {
            None
        }
    }
}

/// A set of hooks, as a bit mask (`1 << hook`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HookMask(pub u64);

impl HookMask {
    /// No hook.
    ///
    /// cbindgen:ignore
    pub const NONE: HookMask = HookMask(0);

    /// The set of the given hooks (usable in `const`).
    pub const fn of(hooks: &[Hook]) -> HookMask {
        let mut bits = 0u64;
        let mut i = 0;
        while i < hooks.len() {
            bits |= 1 << hooks[i] as u32;
            i += 1;
        }
        HookMask(bits)
    }

    /// Whether `hook` is in the set.
    pub const fn contains(self, hook: Hook) -> bool {
        self.0 & (1 << hook as u32) != 0
    }
}

/// Whether a plugin is an EMQX *plugin* or a *module*; telemetry lists them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// An application-style plugin (`active_plugins`).
    Plugin,
    /// A built-in-module-style plugin (`active_modules`).
    Module,
}

impl PluginKind {
    /// The raw ABI value.
    pub const fn to_raw(self) -> u32 {
        match self {
            PluginKind::Plugin => abi::KIND_PLUGIN,
            PluginKind::Module => abi::KIND_MODULE,
        }
    }

    /// From the raw ABI value; unknown values are `None`.
    pub const fn from_raw(raw: u32) -> Option<PluginKind> {
        match raw {
            abi::KIND_PLUGIN => Some(PluginKind::Plugin),
            abi::KIND_MODULE => Some(PluginKind::Module),
            _ => None,
        }
    }

    /// `plugin` or `module`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PluginKind::Plugin => "plugin",
            PluginKind::Module => "module",
        }
    }
}

/// What a plugin declares about itself with [`declare_plugin!`](crate::declare_plugin).
#[derive(Debug, Clone, Copy)]
pub struct PluginInfo {
    /// `[a-z0-9_]+`, equal to the library's name (`lib<name>.so`).
    pub name: &'static str,
    /// The plugin's version, usually `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// One line saying what it does.
    pub description: &'static str,
    /// Plugin or module.
    pub kind: PluginKind,
    /// The hooks the plugin wants events for. Those that may block are declared apart, in
    /// [`crate::Plugin::BLOCKING_HOOKS`].
    pub hooks: HookMask,
    /// Higher runs first on a hook; equal priorities run in load order.
    pub priority: i32,
    /// The `broker ctl` command this plugin answers (`broker ctl <command> ARGS...`), or
    /// several separated by spaces (`"users clientid"`, as `emqx_auth_mnesia`); a plugin
    /// with several gets the command's own word first in its `ctl` arguments.
    pub ctl_command: Option<&'static str>,
}

/// A plugin's own config table, as JSON (from the broker config file and environment).
#[derive(Debug, Clone, Default)]
pub struct Config {
    value: serde_json::Value,
}

/// The plugin's config table does not fit the type asked for.
#[derive(Debug, thiserror::Error)]
#[error("invalid plugin config: {0}")]
pub struct ConfigError(#[from] serde_json::Error);

/// A config table that does not fit its type, with where: the key's path under the table's
/// name (`web_hook.rules[0].event`), as an operator writes it in the broker's config.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct TableError {
    /// `<table>.<key path>`, or the table's name for a problem with the table as a whole.
    pub path: String,
    /// What is wrong there.
    #[source]
    pub source: serde_json::Error,
}

/// Reads the config table `[name]` (`table`, as [`Config::json`] gives it) into `T`; a
/// missing table (`null`) reads as `{}`, so `#[serde(default)]` fields get their defaults. An
/// error names the key it is about ([`TableError`]).
pub fn parse_table<T: DeserializeOwned>(table: &serde_json::Value, name: &str) -> Result<T, TableError> {
    let value = match table {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        v => v.clone(),
    };
    serde_path_to_error::deserialize(value).map_err(|e| TableError {
        path: match e.path().to_string().as_str() {
            "." => name.to_owned(),
            path => format!("{name}.{path}"),
        },
        source: e.into_inner(),
    })
}

impl Config {
    /// Wraps a JSON value (the host passes an object; `null` means no table).
    pub fn new(value: serde_json::Value) -> Config {
        Config { value }
    }

    /// The raw JSON value.
    pub fn json(&self) -> &serde_json::Value {
        &self.value
    }

    /// Deserializes the table into `T`; a missing table reads as `{}` so `#[serde(default)]`
    /// fields get their defaults.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = match &self.value {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            v => v.clone(),
        };
        Ok(serde_json::from_value(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        #[serde(default)]
        rules: Vec<Rule>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Rule {
        #[allow(dead_code)]
        event: String,
    }

    #[test]
    fn a_table_error_names_the_key_under_the_tables_name() {
        let error = parse_table::<Table>(&serde_json::json!({"rules": [{"event": 1}]}), "web_hook").unwrap_err();
        assert_eq!(error.path, "web_hook.rules[0].event");
        let error = parse_table::<Table>(&serde_json::json!({"nope": 1}), "web_hook").unwrap_err();
        assert_eq!(error.path, "web_hook.nope");
        assert!(error.to_string().starts_with("web_hook.nope: unknown field `nope`"), "{error}");
        assert!(parse_table::<Table>(&serde_json::Value::Null, "web_hook").unwrap().rules.is_empty());
    }
}
