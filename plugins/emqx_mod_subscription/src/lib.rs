//! `emqx_mod_subscription`: subscriptions the broker makes for a client when it connects
//! (EMQX 4.x's module of the same name), so that devices need not subscribe themselves.
//!
//! Config (`[subscription]`):
//!
//! ```toml
//! [subscription]
//! topics = [{ topic = "client/%c", qos = 1 }, { topic = "user/%u/#", qos = 0 }]
//! ```
//!
//! In each topic `%c` is the client id and `%u` the username; a topic with `%u` is skipped
//! for a client without a username (EMQX does the same), and so is a topic whose client id or
//! username has a wildcard (`+` or `#`): a client named `#` would otherwise be subscribed to
//! `client/#`, every client's topics (logged). The subscriptions go through the broker as
//! a SUBSCRIBE would (`Host::subscribe`): `session.subscribed` fires, so `emqx_retainer`
//! delivers what is retained on them.

use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo, PluginKind, QoS,
};
use serde::Deserialize;

/// One server-side subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicSetting {
    topic: String,
    #[serde(default = "default_qos")]
    qos: u8,
}

fn default_qos() -> u8 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    topics: Vec<TopicSetting>,
}

/// The running module.
pub struct Subscription {
    host: Host,
    topics: Vec<(String, QoS)>,
}

/// Why a configured topic is not made into a subscription for one client.
#[derive(Debug, PartialEq, Eq)]
enum Skipped {
    /// It has `%u` and the client gave no username.
    NoUsername,
    /// The client id or username put in has a wildcard, which would widen the filter.
    Wildcard,
}

/// `topic` with `%c` and `%u` replaced.
fn substitute(topic: &str, client_id: &str, username: &str) -> Result<String, Skipped> {
    let wildcard = |value: &str| value.contains(['+', '#']);
    if topic.contains("%u") {
        if username.is_empty() {
            return Err(Skipped::NoUsername);
        }
        if wildcard(username) {
            return Err(Skipped::Wildcard);
        }
    }
    if topic.contains("%c") && wildcard(client_id) {
        return Err(Skipped::Wildcard);
    }
    Ok(topic.replace("%c", client_id).replace("%u", username))
}

impl Plugin for Subscription {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let mut topics = Vec::new();
        for TopicSetting { topic, qos } in settings.topics {
            let qos = match qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                2 => QoS::ExactlyOnce,
                other => return Err(format!("subscription.topics: qos {other} for {topic:?} (0, 1 or 2)").into()),
            };
            if topic.is_empty() {
                return Err("subscription.topics: an empty topic".into());
            }
            topics.push((topic, qos));
        }
        host.info(&format!("{} server-side subscriptions for every client", topics.len()));
        Ok(Subscription { host, topics })
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        if event.hook != Hook::ClientConnected {
            return HookResult::Continue;
        }
        for (topic, qos) in &self.topics {
            let filter = match substitute(topic, event.client_id, event.username) {
                Ok(filter) => filter,
                Err(Skipped::NoUsername) => continue,
                Err(Skipped::Wildcard) => {
                    let client = event.client_id;
                    self.host.warn(&format!(
                        "{client:?} not subscribed to {topic:?}: its client id or username has a wildcard (+ or #)"
                    ));
                    continue;
                }
            };
            if let Err(e) = self.host.subscribe(event.client_id, &filter, *qos) {
                self.host.warn(&format!("cannot subscribe {} to {filter:?}: {e}", event.client_id));
            }
        }
        HookResult::Continue
    }
}

declare_plugin!(
    Subscription,
    PluginInfo {
        name: "emqx_mod_subscription",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Subscription Module",
        kind: PluginKind::Module,
        hooks: HookMask::of(&[Hook::ClientConnected]),
        priority: 0,
        ctl_command: None,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_a_missing_username_skips_the_topic() {
        assert_eq!(substitute("client/%c", "dev1", ""), Ok("client/dev1".to_owned()));
        assert_eq!(substitute("u/%u/%c/#", "dev1", "ann"), Ok("u/ann/dev1/#".to_owned()));
        assert_eq!(substitute("u/%u", "dev1", ""), Err(Skipped::NoUsername));
        assert_eq!(substitute("client/%c", "#", ""), Err(Skipped::Wildcard));
        assert_eq!(substitute("client/%c/in", "a+b", ""), Err(Skipped::Wildcard));
        assert_eq!(substitute("u/%u", "dev1", "+"), Err(Skipped::Wildcard));
        assert_eq!(substitute("fixed", "#", "+"), Ok("fixed".to_owned()));
    }
}
