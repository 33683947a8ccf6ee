//! What the broker sends for each event: EMQX's field values (`emqx_exhook_handler.erl` of
//! EMQX 5.8 and 4.3), built from a hook's [`Event`] as v2 messages.
//!
//! Where this broker knows less than EMQX (its events carry no MQTT 5 CONNECT or SUBSCRIBE
//! properties, no TLS certificate, no superuser flag, no message id), the field is what
//! EMQX sends when it does not know either: empty, `false`, or as noted on each builder.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use plugin_api::{AclAction, Event};

use crate::point::Point;
use crate::proto::{v2, Rpc};

/// What every request says about this broker.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The node name (`emqx@127.0.0.1`): `node` of every ClientInfo, ConnInfo and Message.
    pub(crate) node: String,
    /// `RequestMeta`, sent with every request.
    pub(crate) meta: v2::RequestMeta,
}

/// EMQX's default cluster name; this broker's nodes have none of their own.
pub(crate) const CLUSTER_NAME: &str = "emqxcl";

impl Context {
    pub(crate) fn new(node: &str, version: &str) -> Context {
        Context {
            node: node.to_owned(),
            meta: v2::RequestMeta {
                node: node.to_owned(),
                version: version.to_owned(),
                sysdescr: plugin_api::emqx::SYSDESCR.to_owned(),
                cluster_name: CLUSTER_NAME.to_owned(),
            },
        }
    }

    fn meta(&self) -> Option<v2::RequestMeta> {
        Some(self.meta.clone())
    }

    /// `ClientInfo` (EMQX's `clientinfo/1`). The password only in `client.authenticate`
    /// (the only event that has it); `protocol` is `mqtt`; `is_superuser` is `false` and
    /// `anonymous` is whether the client gave no username (the event does not say what the
    /// authentication chain decided); no mountpoint, `cn`, `dn`.
    pub(crate) fn clientinfo(&self, e: &Event<'_>) -> v2::ClientInfo {
        let (peerhost, peerport) = peer(e.peer);
        v2::ClientInfo {
            node: self.node.clone(),
            clientid: e.client_id.to_owned(),
            username: e.username.to_owned(),
            password: String::from_utf8_lossy(e.password).into_owned(),
            peerhost,
            sockport: e.sockport.map_or(0, u32::from),
            protocol: "mqtt".to_owned(),
            mountpoint: String::new(),
            is_superuser: false,
            anonymous: e.username.is_empty(),
            cn: String::new(),
            dn: String::new(),
            peerport,
        }
    }

    /// `ConnInfo` (EMQX's `conninfo/1`): the protocol's name as CONNECT says it (`MQIsdp` for
    /// 3.1, `MQTT` after) and its level as text.
    fn conninfo(&self, e: &Event<'_>) -> v2::ConnInfo {
        let (peerhost, peerport) = peer(e.peer);
        v2::ConnInfo {
            node: self.node.clone(),
            clientid: e.client_id.to_owned(),
            username: e.username.to_owned(),
            peerhost,
            sockport: e.sockport.map_or(0, u32::from),
            proto_name: if e.proto_ver == 3 { "MQIsdp" } else { "MQTT" }.to_owned(),
            proto_ver: e.proto_ver.to_string(),
            keepalive: u32::from(e.keepalive),
            peerport,
        }
    }

    /// `Message` (EMQX's `message/1`) of a message event. `from` is the publisher's client id
    /// where the event has it (`message.publish`; `message.dropped` before routing), else
    /// empty; the headers (`username`, `protocol`, `peerhost`) are the publisher's, so only
    /// there too. `id` is made from the message's timestamp, topic and payload, so the
    /// publish, delivered and acked events of one message carry the same id (the events
    /// carry none of their own); `timestamp` is when the message was published.
    pub(crate) fn message(&self, e: &Event<'_>, publisher: bool) -> v2::Message {
        let mut headers = HashMap::new();
        if publisher && !e.client_id.is_empty() {
            if !e.username.is_empty() {
                headers.insert("username".to_owned(), e.username.to_owned());
            }
            headers.insert("protocol".to_owned(), "mqtt".to_owned());
            headers.insert("peerhost".to_owned(), peer(e.peer).0);
        }
        v2::Message {
            node: self.node.clone(),
            id: message_id(e.timestamp_ms, e.topic, e.payload),
            qos: e.qos as u32,
            from: if publisher { e.client_id.to_owned() } else { String::new() },
            topic: e.topic.to_owned(),
            payload: e.payload.to_vec(),
            timestamp: e.timestamp_ms,
            headers,
        }
    }

    /// `client.authenticate`, with `result` the answer so far.
    pub(crate) fn authenticate(&self, e: &Event<'_>, result: bool) -> Rpc {
        Rpc::ClientAuthenticate(v2::ClientAuthenticateRequest {
            clientinfo: Some(self.clientinfo(e)),
            result,
            meta: self.meta(),
        })
    }

    /// `client.authorize` (v1: `client.check_acl`), with `result` the answer so far.
    pub(crate) fn authorize(&self, e: &Event<'_>, result: bool) -> Rpc {
        use v2::client_authorize_request::AuthorizeReqType;
        let r#type = match e.acl_action {
            Some(AclAction::Subscribe) => AuthorizeReqType::Subscribe,
            _ => AuthorizeReqType::Publish,
        };
        Rpc::ClientAuthorize(v2::ClientAuthorizeRequest {
            clientinfo: Some(self.clientinfo(e)),
            r#type: r#type as i32,
            topic: e.topic.to_owned(),
            result,
            meta: self.meta(),
        })
    }

    pub(crate) fn publish(&self, message: v2::Message) -> Rpc {
        Rpc::MessagePublish(v2::MessagePublishRequest { message: Some(message), meta: self.meta() })
    }

    /// The request of a notification (a point that does not decide), or `None` for a point
    /// that decides.
    pub(crate) fn notice(&self, point: Point, e: &Event<'_>) -> Option<Rpc> {
        let clientinfo = || Some(self.clientinfo(e));
        let topic_filter = |with_options: bool| {
            let s = e.subscription;
            let subopts = with_options.then_some(v2::SubOpts {
                qos: u32::from(s.qos),
                rh: u32::from(s.retain_handling),
                rap: u32::from(s.retain_as_published),
                nl: u32::from(s.no_local),
            });
            vec![v2::TopicFilter { name: e.topic.to_owned(), subopts: subopts.or_else(|| Some(Default::default())) }]
        };
        let meta = self.meta();
        Some(match point {
            Point::ClientConnect => {
                Rpc::ClientConnect(v2::ClientConnectRequest { conninfo: Some(self.conninfo(e)), props: vec![], meta })
            }
            Point::ClientConnack => Rpc::ClientConnack(v2::ClientConnackRequest {
                conninfo: Some(self.conninfo(e)),
                result_code: plugin_api::emqx::connack_name(e.proto_ver, e.return_code).to_owned(),
                props: vec![],
                meta,
            }),
            Point::ClientConnected => {
                Rpc::ClientConnected(v2::ClientConnectedRequest { clientinfo: clientinfo(), meta })
            }
            Point::ClientDisconnected => Rpc::ClientDisconnected(v2::ClientDisconnectedRequest {
                clientinfo: clientinfo(),
                reason: e.reason.to_owned(),
                meta,
            }),
            Point::ClientSubscribe => Rpc::ClientSubscribe(v2::ClientSubscribeRequest {
                clientinfo: clientinfo(),
                props: vec![],
                topic_filters: topic_filter(true),
                meta,
            }),
            Point::ClientUnsubscribe => Rpc::ClientUnsubscribe(v2::ClientUnsubscribeRequest {
                clientinfo: clientinfo(),
                props: vec![],
                topic_filters: topic_filter(false),
                meta,
            }),
            Point::SessionCreated => Rpc::SessionCreated(v2::SessionCreatedRequest { clientinfo: clientinfo(), meta }),
            Point::SessionSubscribed => Rpc::SessionSubscribed(v2::SessionSubscribedRequest {
                clientinfo: clientinfo(),
                topic: e.topic.to_owned(),
                subopts: topic_filter(true).pop().and_then(|f| f.subopts),
                meta,
            }),
            Point::SessionUnsubscribed => Rpc::SessionUnsubscribed(v2::SessionUnsubscribedRequest {
                clientinfo: clientinfo(),
                topic: e.topic.to_owned(),
                meta,
            }),
            Point::SessionResumed => Rpc::SessionResumed(v2::SessionResumedRequest { clientinfo: clientinfo(), meta }),
            Point::SessionDiscarded => {
                Rpc::SessionDiscarded(v2::SessionDiscardedRequest { clientinfo: clientinfo(), meta })
            }
            Point::SessionTakenover => {
                Rpc::SessionTakenover(v2::SessionTakenoverRequest { clientinfo: clientinfo(), meta })
            }
            Point::SessionTerminated => Rpc::SessionTerminated(v2::SessionTerminatedRequest {
                clientinfo: clientinfo(),
                reason: e.reason.to_owned(),
                meta,
            }),
            Point::MessageDelivered => Rpc::MessageDelivered(v2::MessageDeliveredRequest {
                clientinfo: clientinfo(),
                message: Some(self.message(e, false)),
                meta,
            }),
            Point::MessageAcked => Rpc::MessageAcked(v2::MessageAckedRequest {
                clientinfo: clientinfo(),
                message: Some(self.message(e, false)),
                meta,
            }),
            Point::MessageDropped => Rpc::MessageDropped(v2::MessageDroppedRequest {
                // Before routing (no subscriber, denied) the event's client is the publisher.
                message: Some(self.message(e, matches!(e.reason, "no_subscribers" | "denied"))),
                reason: e.reason.to_owned(),
                meta,
            }),
            Point::ClientAuthenticate | Point::ClientAuthorize | Point::MessagePublish => return None,
        })
    }
}

/// `ip:port` as EMQX's `peerhost` (an IPv4-mapped IPv6 address as IPv4) and `peerport`.
fn peer(peer: &str) -> (String, u32) {
    match peer.parse::<SocketAddr>() {
        Ok(addr) => {
            let ip = match addr.ip() {
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.to_string(), |v4| v4.to_string()),
                v4 => v4.to_string(),
            };
            (ip, u32::from(addr.port()))
        }
        Err(_) => (peer.to_owned(), 0),
    }
}

/// A message's id: 32 uppercase hex digits (EMQX's GUIDs are 128 bits written so), from its
/// timestamp (first 16 digits) and an FNV-1a hash of its topic and payload.
pub(crate) fn message_id(timestamp_ms: u64, topic: &str, payload: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in topic.as_bytes().iter().chain(&[0]).chain(payload) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{timestamp_ms:016X}{hash:016X}")
}

/// Now in RFC 3339 with nanoseconds, in UTC (EMQX 5's `datetime`:
/// `calendar:system_time_to_rfc3339/2` in nanoseconds).
pub(crate) fn rfc3339_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}+00:00", rest / 3600, rest / 60 % 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000+00:00");
        assert_eq!(rfc3339(951_782_400 + 3661, 5), "2000-02-29T01:01:01.000000005+00:00");
        assert_eq!(rfc3339(1_798_761_599, 999_999_999), "2026-12-31T23:59:59.999999999+00:00");
    }

    #[test]
    fn peers_and_ids() {
        assert_eq!(peer("127.0.0.1:5000"), ("127.0.0.1".to_owned(), 5000));
        assert_eq!(peer("[::ffff:10.0.0.1]:7"), ("10.0.0.1".to_owned(), 7));
        assert_eq!(peer("[::1]:7"), ("::1".to_owned(), 7));
        let id = message_id(1, "t", b"p");
        assert_eq!(id.len(), 32);
        assert!(id.starts_with("0000000000000001"));
        assert_eq!(id, message_id(1, "t", b"p"));
        assert_ne!(id, message_id(1, "t", b"q"));
    }
}
