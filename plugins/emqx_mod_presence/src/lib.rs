//! `emqx_mod_presence`: publishes a JSON event to
//! `$SYS/brokers/<node>/clients/<clientid>/connected` when a client connects and
//! `.../disconnected` when it goes, with EMQX 4.3's fields, names and types:
//!
//! - connected: `clientid`, `username`, `ipaddress`, `sockport`, `proto_name`, `proto_ver`,
//!   `keepalive`, `clean_start`, `expiry_interval` (seconds), `connack`, `connected_at`, `ts`
//!   (milliseconds since the epoch);
//! - disconnected: `clientid`, `username`, `ipaddress`, `sockport`, `proto_name`,
//!   `proto_ver` (EMQX 4.3.6 on), `reason` (EMQX's: `normal`, `tcp_closed`,
//!   `keepalive_timeout`, `takeovered`, `discarded`, `kicked`, ...), `disconnected_at`, `ts`.
//!   EMQX 4.3.6 on also sends `connected_at`, which the event does not carry.
//!
//! A client without a username is `"username": "undefined"`, as EMQX writes it. Subscribe to
//! `$SYS/brokers/+/clients/#` to watch clients come and go.
//!
//! Config (`[presence]`): `qos` (0, 1 or 2; default 1, as EMQX's `module.presence.qos`), the
//! QoS of the events.
#![forbid(unsafe_code)]

use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo, PluginKind, QoS,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    qos: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { qos: 1 }
    }
}

/// The longest topic a PUBLISH can carry (MQTT-1.5.4-1).
const MAX_TOPIC_LEN: usize = u16::MAX as usize;

pub struct Presence {
    host: Host,
    qos: QoS,
}

/// The IP address of an `ip:port` peer (IPv6 peers are `[ip]:port`).
fn ip_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((ip, _)) => ip.trim_start_matches('[').trim_end_matches(']'),
        None => peer,
    }
}

/// EMQX 4.x writes the atom `undefined` for a client without a username: `"undefined"`.
fn username<'a>(event: &Event<'a>) -> &'a str {
    if event.username.is_empty() {
        "undefined"
    } else {
        event.username
    }
}

impl Presence {
    fn publish(&self, client_id: &str, what: &str, payload: serde_json::Value) {
        let topic = format!("$SYS/brokers/{}/clients/{client_id}/{what}", self.host.node_name());
        if topic.len() > MAX_TOPIC_LEN {
            // A client id near the 65,535-byte limit: no topic can hold it (MQTT-1.5.4-1).
            let start: String = client_id.chars().take(32).collect();
            self.host.warn(&format!(
                "no {what} event for client {start:?}...: its topic would be {} bytes, over {MAX_TOPIC_LEN}",
                topic.len()
            ));
            return;
        }
        if let Err(e) = self.host.publish(&topic, payload.to_string().as_bytes(), self.qos, false) {
            self.host.warn(&format!("cannot publish {topic}: {e}"));
        }
    }
}

impl Plugin for Presence {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        if settings.qos > 2 {
            return Err(format!("presence.qos must be 0, 1 or 2, not {}", settings.qos).into());
        }
        Ok(Presence { host, qos: QoS::from_u8(settings.qos) })
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        match event.hook {
            Hook::ClientConnected => self.publish(
                event.client_id,
                "connected",
                json!({
                    "clientid": event.client_id,
                    "username": username(event),
                    "ipaddress": ip_of(event.peer),
                    "sockport": event.sockport.unwrap_or(0),
                    "proto_name": proto_name(event),
                    "proto_ver": event.proto_ver,
                    "keepalive": event.keepalive,
                    "connack": event.return_code,
                    "clean_start": event.clean_start,
                    "expiry_interval": event.expiry_interval,
                    "connected_at": event.timestamp_ms,
                    "ts": event.timestamp_ms,
                }),
            ),
            Hook::ClientDisconnected => self.publish(
                event.client_id,
                "disconnected",
                json!({
                    "clientid": event.client_id,
                    "username": username(event),
                    "ipaddress": ip_of(event.peer),
                    "sockport": event.sockport.unwrap_or(0),
                    "proto_name": proto_name(event),
                    "proto_ver": event.proto_ver,
                    "reason": event.reason,
                    "disconnected_at": event.timestamp_ms,
                    "ts": event.timestamp_ms,
                }),
            ),
            _ => {}
        }
        HookResult::Continue
    }
}

/// EMQX's `proto_name`: `MQIsdp` for MQTT 3.1, else `MQTT`.
fn proto_name(event: &Event<'_>) -> &'static str {
    if event.proto_ver == 3 {
        "MQIsdp"
    } else {
        "MQTT"
    }
}

declare_plugin!(
    Presence,
    PluginInfo {
        name: "emqx_mod_presence",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Presence Module",
        kind: PluginKind::Module,
        hooks: HookMask::of(&[Hook::ClientConnected, Hook::ClientDisconnected]),
        priority: 0,
        ctl_command: None,
    }
);

#[cfg(test)]
mod tests {
    use super::ip_of;

    #[test]
    fn peer_ip() {
        assert_eq!(ip_of("127.0.0.1:5555"), "127.0.0.1");
        assert_eq!(ip_of("[::1]:5555"), "::1");
    }
}
