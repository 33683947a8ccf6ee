//! The JSON body of each event, with EMQX 4.2's `emqx_web_hook` field names and `action`
//! values (`client_connected`, `message_publish`, ...; 4.3's are the same). A value the
//! broker does not have is `null`, as EMQX writes `undefined`: a client without a username
//! has `"username": null`. `ts`, `connected_at` and `disconnected_at` are milliseconds since
//! the Unix epoch.
//!
//! `message.dropped` is not an event of EMQX's web hook; its body is this plugin's, in the
//! same style (see [`body`]).

use std::borrow::Cow;

use base64::Engine as _;
use plugin_api::Hook;
use serde::Serialize;

use crate::capture::Captured;
use crate::settings::PayloadEncoding;

/// `client.connect`, `client.connack`, `client.connected`.
#[derive(Serialize)]
struct ClientBody<'a> {
    action: &'static str,
    node: &'a str,
    clientid: &'a str,
    username: Option<&'a str>,
    ipaddress: &'a str,
    keepalive: u16,
    proto_ver: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    connected_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_ack: Option<&'static str>,
}

/// `client.disconnected` and `session.terminated` (which has no `disconnected_at`).
#[derive(Serialize)]
struct EndBody<'a> {
    action: &'static str,
    node: &'a str,
    clientid: &'a str,
    username: Option<&'a str>,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnected_at: Option<u64>,
}

/// The subscription options EMQX writes in `opts`: `{"qos":1,"nl":0,"rap":0,"rh":0}`, with
/// `is_new` for `session.subscribed`; `{}` for `client.unsubscribe`.
#[derive(Serialize, Default)]
struct Opts {
    #[serde(skip_serializing_if = "Option::is_none")]
    qos: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rap: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rh: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_new: Option<bool>,
}

/// `client.subscribe`, `client.unsubscribe`, `session.subscribed`, `session.unsubscribed`
/// (which has no `opts`).
#[derive(Serialize)]
struct SubscriptionBody<'a> {
    action: &'static str,
    node: &'a str,
    clientid: &'a str,
    username: Option<&'a str>,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    opts: Option<Opts>,
}

/// `message.publish` (no `clientid`, `username`), `message.delivered`, `message.acked`.
#[derive(Serialize)]
struct MessageBody<'a> {
    action: &'static str,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    clientid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<Option<&'a str>>,
    from_client_id: Option<&'a str>,
    from_username: Option<&'a str>,
    topic: &'a str,
    qos: u8,
    retain: bool,
    payload: Cow<'a, str>,
    ts: u64,
}

/// `message.dropped`: this plugin's own.
#[derive(Serialize)]
struct DroppedBody<'a> {
    action: &'static str,
    node: &'a str,
    clientid: &'a str,
    topic: &'a str,
    qos: u8,
    retain: bool,
    payload: Cow<'a, str>,
    ts: u64,
    reason: &'a str,
}

/// EMQX's `action` for `hook`.
pub(crate) const fn action(hook: Hook) -> &'static str {
    match hook {
        Hook::ClientConnect => "client_connect",
        Hook::ClientConnack => "client_connack",
        Hook::ClientConnected => "client_connected",
        Hook::ClientDisconnected => "client_disconnected",
        Hook::ClientSubscribe => "client_subscribe",
        Hook::ClientUnsubscribe => "client_unsubscribe",
        Hook::SessionSubscribed => "session_subscribed",
        Hook::SessionUnsubscribed => "session_unsubscribed",
        Hook::SessionTerminated => "session_terminated",
        Hook::MessagePublish => "message_publish",
        Hook::MessageDelivered => "message_delivered",
        Hook::MessageAcked => "message_acked",
        Hook::MessageDropped => "message_dropped",
        Hook::ClientAuthenticate => "client_authenticate",
        Hook::ClientCheckAcl => "client_check_acl",
        Hook::SessionCreated => "session_created",
        Hook::SessionResumed => "session_resumed",
        Hook::SessionDiscarded => "session_discarded",
        Hook::SessionTakenover => "session_takenover",
        // A hook added to the ABI after this plugin was written.
        _ => "unknown",
    }
}

/// Whether the web hook has a body for `event`: a hook it sends, and not a message on a
/// `$SYS/` topic (EMQX skips those). Checked in the hook, before anything is copied.
pub(crate) fn sendable(event: &plugin_api::Event<'_>) -> bool {
    match event.hook {
        Hook::MessagePublish | Hook::MessageDelivered | Hook::MessageAcked | Hook::MessageDropped => {
            !event.topic.starts_with("$SYS/")
        }
        hook => crate::settings::EVENTS.contains(&hook),
    }
}

/// The JSON body for `event` from node `node`, or `None` for an event the web hook does not
/// send: a hook it has no body for, or a message on a `$SYS/` topic (EMQX skips those).
///
/// Fields this broker cannot fill: `from_client_id` and `from_username` of
/// `message.delivered` and `message.acked` are `null` (the broker's delivery events do not
/// say who published). `message.dropped`'s `clientid` is the subscriber's for the reasons
/// `queue_full`, `expired` and `too_large`, the publisher's for `no_subscribers` and `denied`.
pub(crate) fn body(event: &Captured, node: &str, encoding: PayloadEncoding) -> Option<Vec<u8>> {
    let action = action(event.hook);
    let username = Some(event.username()).filter(|u| !u.is_empty());
    let payload = || match encoding {
        PayloadEncoding::Plain => String::from_utf8_lossy(&event.payload),
        PayloadEncoding::Base64 => Cow::Owned(base64::engine::general_purpose::STANDARD.encode(&event.payload)),
    };
    let json = match event.hook {
        Hook::ClientConnect | Hook::ClientConnack | Hook::ClientConnected => serde_json::to_vec(&ClientBody {
            action,
            node,
            clientid: event.client_id(),
            username,
            ipaddress: ip_address(event.peer()),
            keepalive: event.keepalive,
            proto_ver: event.proto_ver,
            connected_at: (event.hook == Hook::ClientConnected).then_some(event.timestamp_ms),
            conn_ack: (event.hook == Hook::ClientConnack)
                .then(|| plugin_api::emqx::connack_name(event.proto_ver, event.return_code)),
        }),
        Hook::ClientDisconnected | Hook::SessionTerminated => serde_json::to_vec(&EndBody {
            action,
            node,
            clientid: event.client_id(),
            username,
            reason: event.reason(),
            disconnected_at: (event.hook == Hook::ClientDisconnected).then_some(event.timestamp_ms),
        }),
        Hook::ClientSubscribe | Hook::ClientUnsubscribe | Hook::SessionSubscribed | Hook::SessionUnsubscribed => {
            let options = event.subscription;
            let opts = match event.hook {
                Hook::ClientUnsubscribe => Some(Opts::default()),
                Hook::SessionUnsubscribed => None,
                hook => Some(Opts {
                    qos: Some(options.qos),
                    nl: Some(options.no_local.into()),
                    rap: Some(options.retain_as_published.into()),
                    rh: Some(options.retain_handling),
                    is_new: (hook == Hook::SessionSubscribed).then_some(event.subscription_is_new),
                }),
            };
            serde_json::to_vec(&SubscriptionBody {
                action,
                node,
                clientid: event.client_id(),
                username,
                topic: event.topic(),
                opts,
            })
        }
        Hook::MessagePublish | Hook::MessageDelivered | Hook::MessageAcked => {
            if event.topic().starts_with("$SYS/") {
                return None;
            }
            let publish = event.hook == Hook::MessagePublish;
            serde_json::to_vec(&MessageBody {
                action,
                node,
                clientid: (!publish).then_some(event.client_id()),
                username: (!publish).then_some(username),
                from_client_id: publish.then_some(event.client_id()),
                from_username: if publish { username } else { None },
                topic: event.topic(),
                qos: event.qos,
                retain: event.retain,
                payload: payload(),
                ts: event.timestamp_ms,
            })
        }
        Hook::MessageDropped => {
            if event.topic().starts_with("$SYS/") {
                return None;
            }
            serde_json::to_vec(&DroppedBody {
                action,
                node,
                clientid: event.client_id(),
                topic: event.topic(),
                qos: event.qos,
                retain: event.retain,
                payload: payload(),
                ts: event.timestamp_ms,
                reason: event.reason(),
            })
        }
        // Not among EMQX 4.2's web hook events.
        _ => return None,
    };
    json.ok()
}

/// The IP address of a peer written `ip:port` (`[ip]:port` for IPv6), as EMQX's
/// `inet:ntoa/1` writes it.
fn ip_address(peer: &str) -> &str {
    peer.rsplit_once(':').map_or(peer, |(ip, _)| ip).trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_lose_their_port() {
        assert_eq!(ip_address("127.0.0.1:50000"), "127.0.0.1");
        assert_eq!(ip_address("[::1]:1883"), "::1");
        assert_eq!(ip_address(""), "");
    }

    #[test]
    fn every_event_has_an_action() {
        for hook in crate::settings::EVENTS {
            assert_eq!(action(hook), hook.name().replace('.', "_"));
        }
    }
}
