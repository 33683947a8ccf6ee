//! The gRPC side: the code generated from `proto/exhook_v{1,2}.proto` (by `build.rs`, into
//! `OUT_DIR`), and one way to call either version.
//!
//! Requests are built once, as v2 messages (v2 carries everything v1 does, and more); a v1
//! server gets them converted, field by field, and its answers are converted back. So the
//! rest of the plugin knows one set of types.

use std::time::Duration;

use tonic::{Code, Status};

use crate::transport::Call;

use crate::settings::Proto;

/// `emqx.exhook.v1` (EMQX 4.3).
#[allow(unreachable_pub, clippy::all, clippy::pedantic)]
pub(crate) mod v1 {
    tonic::include_proto!("emqx.exhook.v1");
}

/// `emqx.exhook.v2` (EMQX 5.0 to 5.8).
#[allow(unreachable_pub, clippy::all, clippy::pedantic)]
pub(crate) mod v2 {
    tonic::include_proto!("emqx.exhook.v2");
}

/// A v2 message as the v1 message of the same name: fields v1 lacks are dropped.
trait ToV1 {
    type V1;
    fn to_v1(self) -> Self::V1;
}

macro_rules! as_is {
    ($($t:ty),*) => {$(
        impl ToV1 for $t {
            type V1 = $t;
            fn to_v1(self) -> $t {
                self
            }
        }
    )*};
}
as_is!(String, bool, u32, i32, u64, Vec<u8>);

impl<T: ToV1> ToV1 for Option<T> {
    type V1 = Option<T::V1>;
    fn to_v1(self) -> Self::V1 {
        self.map(ToV1::to_v1)
    }
}

impl<T: ToV1> ToV1 for Vec<T> {
    type V1 = Vec<T::V1>;
    fn to_v1(self) -> Self::V1 {
        self.into_iter().map(ToV1::to_v1).collect()
    }
}

/// `v2::A` → `v1::B` keeping the fields listed (the same name and meaning in both).
macro_rules! same_fields {
    ($($v2:ident => $v1:ident { $($field:ident),* $(,)? })*) => {$(
        impl ToV1 for v2::$v2 {
            type V1 = v1::$v1;
            fn to_v1(self) -> v1::$v1 {
                v1::$v1 { $($field: self.$field.to_v1()),* }
            }
        }
    )*};
}

same_fields! {
    RequestMeta => RequestMeta { node, version, sysdescr, cluster_name }
    ConnInfo => ConnInfo { node, clientid, username, peerhost, sockport, proto_name, proto_ver, keepalive }
    ClientInfo => ClientInfo {
        node, clientid, username, password, peerhost, sockport, protocol, mountpoint, is_superuser, anonymous, cn, dn,
    }
    Message => Message { node, id, qos, from, topic, payload, timestamp }
    Property => Property { name, value }
    ProviderUnloadedRequest => ProviderUnloadedRequest { meta }
    ClientConnectRequest => ClientConnectRequest { conninfo, props, meta }
    ClientConnackRequest => ClientConnackRequest { conninfo, result_code, props, meta }
    ClientConnectedRequest => ClientConnectedRequest { clientinfo, meta }
    ClientDisconnectedRequest => ClientDisconnectedRequest { clientinfo, reason, meta }
    ClientAuthenticateRequest => ClientAuthenticateRequest { clientinfo, result, meta }
    ClientSubscribeRequest => ClientSubscribeRequest { clientinfo, props, topic_filters, meta }
    ClientUnsubscribeRequest => ClientUnsubscribeRequest { clientinfo, props, topic_filters, meta }
    SessionCreatedRequest => SessionCreatedRequest { clientinfo, meta }
    SessionUnsubscribedRequest => SessionUnsubscribedRequest { clientinfo, topic, meta }
    SessionResumedRequest => SessionResumedRequest { clientinfo, meta }
    SessionDiscardedRequest => SessionDiscardedRequest { clientinfo, meta }
    SessionTakenoverRequest => SessionTakeoveredRequest { clientinfo, meta }
    SessionTerminatedRequest => SessionTerminatedRequest { clientinfo, reason, meta }
    MessagePublishRequest => MessagePublishRequest { message, meta }
    MessageDeliveredRequest => MessageDeliveredRequest { clientinfo, message, meta }
    MessageDroppedRequest => MessageDroppedRequest { message, reason, meta }
    MessageAckedRequest => MessageAckedRequest { clientinfo, message, meta }
}

/// v1 has a filter's QoS where v2 has its options.
impl ToV1 for v2::TopicFilter {
    type V1 = v1::TopicFilter;
    fn to_v1(self) -> v1::TopicFilter {
        v1::TopicFilter { qos: self.subopts.map_or(0, |o| o.qos), name: self.name }
    }
}

/// The share group of a `$share/<group>/<filter>` (or `$queue/<filter>`, EMQX's `$queue`
/// group) and the filter without it; other filters as they are, with no group.
pub(crate) fn split_share(filter: &str) -> (&str, &str) {
    if let Some(rest) = filter.strip_prefix("$share/") {
        if let Some((group, real)) = rest.split_once('/') {
            return (group, real);
        }
    }
    if let Some(real) = filter.strip_prefix("$queue/") {
        return ("$queue", real);
    }
    ("", filter)
}

/// EMQX 4.3 tells the session its real filter and the group apart; EMQX 5 keeps the group in
/// the filter.
impl ToV1 for v2::SessionSubscribedRequest {
    type V1 = v1::SessionSubscribedRequest;
    fn to_v1(self) -> v1::SessionSubscribedRequest {
        let (share, topic) = split_share(&self.topic);
        let o = self.subopts.unwrap_or_default();
        v1::SessionSubscribedRequest {
            clientinfo: self.clientinfo.to_v1(),
            subopts: Some(v1::SubOpts { qos: o.qos, share: share.to_owned(), rh: o.rh, rap: o.rap, nl: o.nl }),
            topic: topic.to_owned(),
            meta: self.meta.to_v1(),
        }
    }
}

/// v1's `client.check_acl` asks about the filter as subscribed.
impl ToV1 for v2::ClientAuthorizeRequest {
    type V1 = v1::ClientCheckAclRequest;
    fn to_v1(self) -> v1::ClientCheckAclRequest {
        v1::ClientCheckAclRequest {
            clientinfo: self.clientinfo.to_v1(),
            r#type: self.r#type,
            topic: self.topic,
            result: self.result,
            meta: self.meta.to_v1(),
        }
    }
}

/// A v1 message as v2's: no headers.
fn message_from_v1(m: v1::Message) -> v2::Message {
    v2::Message {
        node: m.node,
        id: m.id,
        qos: m.qos,
        from: m.from,
        topic: m.topic,
        payload: m.payload,
        timestamp: m.timestamp,
        headers: Default::default(),
    }
}

fn valued_from_v1(r: v1::ValuedResponse) -> v2::ValuedResponse {
    use v1::valued_response::Value as V1;
    use v2::valued_response::Value as V2;
    v2::ValuedResponse {
        r#type: r.r#type,
        value: r.value.map(|v| match v {
            V1::BoolResult(b) => V2::BoolResult(b),
            V1::Message(m) => V2::Message(message_from_v1(m)),
        }),
    }
}

/// One call the broker makes, with its (v2) request. `ProviderLoaded` is built per version
/// (its `BrokerInfo` differs), so it is not here.
#[derive(Debug, Clone)]
pub(crate) enum Rpc {
    ProviderUnloaded(v2::ProviderUnloadedRequest),
    ClientConnect(v2::ClientConnectRequest),
    ClientConnack(v2::ClientConnackRequest),
    ClientConnected(v2::ClientConnectedRequest),
    ClientDisconnected(v2::ClientDisconnectedRequest),
    ClientAuthenticate(v2::ClientAuthenticateRequest),
    /// The topic as the client gave it; a v2 server gets it without `$share/<group>/`.
    ClientAuthorize(v2::ClientAuthorizeRequest),
    ClientSubscribe(v2::ClientSubscribeRequest),
    ClientUnsubscribe(v2::ClientUnsubscribeRequest),
    SessionCreated(v2::SessionCreatedRequest),
    SessionSubscribed(v2::SessionSubscribedRequest),
    SessionUnsubscribed(v2::SessionUnsubscribedRequest),
    SessionResumed(v2::SessionResumedRequest),
    SessionDiscarded(v2::SessionDiscardedRequest),
    SessionTakenover(v2::SessionTakenoverRequest),
    SessionTerminated(v2::SessionTerminatedRequest),
    MessagePublish(v2::MessagePublishRequest),
    MessageDelivered(v2::MessageDeliveredRequest),
    MessageDropped(v2::MessageDroppedRequest),
    MessageAcked(v2::MessageAckedRequest),
}

/// What a call answered.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// `EmptySuccess`.
    Empty,
    /// A `ValuedResponse` (as v2's).
    Valued(v2::ValuedResponse),
}

/// A call that got no answer to use.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    /// Nothing within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server could not be reached, or the connection broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The server answered with a gRPC error (it is up, the call failed).
    #[error("answered {code:?}: {message}")]
    Failed { code: Code, message: String },
}

impl CallError {
    /// Whether the server is to be taken as down (every call fails fast until it is loaded
    /// again), rather than this call alone having failed.
    pub(crate) fn is_down(&self) -> bool {
        !matches!(self, CallError::Failed { .. })
    }

    /// The failure `status` says, for a call that waited up to `timeout`.
    fn of(status: Status, timeout: Duration) -> CallError {
        // A status made on this side (connection refused, reset, not ready, the deadline of
        // the `grpc-timeout` header passed) carries its error as its source; one the server
        // sent does not.
        let source = std::error::Error::source(&status);
        // tonic's own enforcement of the header (as racy with ours as it should be): a
        // `Cancelled` status, or one with `TimeoutExpired` in its sources.
        let mut chain = source;
        while let Some(error) = chain {
            if error.is::<tonic::TimeoutExpired>() {
                return CallError::Timeout(timeout);
            }
            chain = error.source();
        }
        if status.code() == Code::Cancelled && status.message() == tonic::TimeoutExpired(()).to_string() {
            return CallError::Timeout(timeout);
        }
        let local = source.is_some();
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded => CallError::Unreachable(status.message().to_owned()),
            _ if local => CallError::Unreachable(status.message().to_owned()),
            code => CallError::Failed { code, message: status.message().to_owned() },
        }
    }
}

/// Where a call goes: one connection of a server's pool, and the server's origin (the
/// requests' URIs are made from it).
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub(crate) call: Call,
    pub(crate) origin: http::Uri,
}

/// `request` with a `grpc-timeout` header, so the server knows when the broker stops waiting.
fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

macro_rules! dispatch {
    ($rpc:expr, $proto:expr, $channel:expr, $timeout:expr,
     $($variant:ident => $v2:ident, $v1:ident, $answer:ident;)*) => {
        match ($rpc, $proto) {
            $(
                (Rpc::$variant(r), Proto::V2) => {
                    let mut client = v2::hook_provider_client::HookProviderClient::with_origin($channel.call, $channel.origin);
                    let answer = client.$v2(request(r, $timeout)).await.map_err(|s| CallError::of(s, $timeout))?;
                    dispatch!(@answer $answer, answer.into_inner(), v2)
                }
                (Rpc::$variant(r), Proto::V1) => {
                    let mut client = v1::hook_provider_client::HookProviderClient::with_origin($channel.call, $channel.origin);
                    let answer = client.$v1(request(r.to_v1(), $timeout)).await.map_err(|s| CallError::of(s, $timeout))?;
                    dispatch!(@answer $answer, answer.into_inner(), v1)
                }
            )*
        }
    };
    (@answer Empty, $answer:expr, $version:ident) => {{
        let _ = $answer;
        Ok(Answer::Empty)
    }};
    (@answer Valued, $answer:expr, v2) => {
        Ok(Answer::Valued($answer))
    };
    (@answer Valued, $answer:expr, v1) => {
        Ok(Answer::Valued(valued_from_v1($answer)))
    };
}

/// Makes `rpc` to a server of `proto` over `channel`; the caller bounds the time.
pub(crate) async fn call(channel: Channel, proto: Proto, rpc: Rpc, timeout: Duration) -> Result<Answer, CallError> {
    let rpc = match rpc {
        // EMQX 5 sends a shared subscription's real topic.
        Rpc::ClientAuthorize(mut r) if proto == Proto::V2 => {
            r.topic = split_share(&r.topic).1.to_owned();
            Rpc::ClientAuthorize(r)
        }
        rpc => rpc,
    };
    dispatch! { rpc, proto, channel, timeout,
        ProviderUnloaded => on_provider_unloaded, on_provider_unloaded, Empty;
        ClientConnect => on_client_connect, on_client_connect, Empty;
        ClientConnack => on_client_connack, on_client_connack, Empty;
        ClientConnected => on_client_connected, on_client_connected, Empty;
        ClientDisconnected => on_client_disconnected, on_client_disconnected, Empty;
        ClientAuthenticate => on_client_authenticate, on_client_authenticate, Valued;
        ClientAuthorize => on_client_authorize, on_client_check_acl, Valued;
        ClientSubscribe => on_client_subscribe, on_client_subscribe, Empty;
        ClientUnsubscribe => on_client_unsubscribe, on_client_unsubscribe, Empty;
        SessionCreated => on_session_created, on_session_created, Empty;
        SessionSubscribed => on_session_subscribed, on_session_subscribed, Empty;
        SessionUnsubscribed => on_session_unsubscribed, on_session_unsubscribed, Empty;
        SessionResumed => on_session_resumed, on_session_resumed, Empty;
        SessionDiscarded => on_session_discarded, on_session_discarded, Empty;
        SessionTakenover => on_session_takenover, on_session_takeovered, Empty;
        SessionTerminated => on_session_terminated, on_session_terminated, Empty;
        MessagePublish => on_message_publish, on_message_publish, Valued;
        MessageDelivered => on_message_delivered, on_message_delivered, Empty;
        MessageDropped => on_message_dropped, on_message_dropped, Empty;
        MessageAcked => on_message_acked, on_message_acked, Empty;
    }
}

/// What OnProviderLoaded needs to say about the broker.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    pub(crate) version: String,
    pub(crate) sysdescr: String,
    pub(crate) uptime_ms: u64,
    pub(crate) meta: v2::RequestMeta,
}

/// OnProviderLoaded: the hooks the server asks for, as `(name, topic filters)`.
pub(crate) async fn load(
    channel: Channel,
    proto: Proto,
    broker: Broker,
    timeout: Duration,
) -> Result<Vec<(String, Vec<String>)>, CallError> {
    let hooks = match proto {
        Proto::V2 => {
            let info = v2::BrokerInfo {
                version: broker.version,
                sysdescr: broker.sysdescr,
                uptime: i64::try_from(broker.uptime_ms).unwrap_or(i64::MAX),
                datetime: crate::request::rfc3339_now(),
            };
            let loaded = v2::ProviderLoadedRequest { broker: Some(info), meta: Some(broker.meta) };
            let mut client = v2::hook_provider_client::HookProviderClient::with_origin(channel.call, channel.origin);
            let answer =
                client.on_provider_loaded(request(loaded, timeout)).await.map_err(|s| CallError::of(s, timeout))?;
            answer.into_inner().hooks.into_iter().map(|h| (h.name, h.topics)).collect()
        }
        Proto::V1 => {
            let info = v1::BrokerInfo {
                version: broker.version,
                sysdescr: broker.sysdescr,
                uptime: plugin_api::emqx::uptime(broker.uptime_ms / 1000),
                datetime: plugin_api::emqx::datetime(),
            };
            let loaded = v1::ProviderLoadedRequest { broker: Some(info), meta: Some(broker.meta.to_v1()) };
            let mut client = v1::hook_provider_client::HookProviderClient::with_origin(channel.call, channel.origin);
            let answer =
                client.on_provider_loaded(request(loaded, timeout)).await.map_err(|s| CallError::of(s, timeout))?;
            answer.into_inner().hooks.into_iter().map(|h| (h.name, h.topics)).collect()
        }
    };
    Ok(hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_groups_are_split_as_emqx_4_3_does() {
        assert_eq!(split_share("$share/g/a/b"), ("g", "a/b"));
        assert_eq!(split_share("$queue/a"), ("$queue", "a"));
        assert_eq!(split_share("a/b"), ("", "a/b"));
        assert_eq!(split_share("$share/g"), ("", "$share/g"));
    }

    #[test]
    fn v1_gets_what_it_has_of_a_v2_request() {
        let r = v2::SessionSubscribedRequest {
            clientinfo: Some(v2::ClientInfo { clientid: "c".into(), peerport: 5, ..Default::default() }),
            topic: "$share/g/t/1".into(),
            subopts: Some(v2::SubOpts { qos: 1, rh: 2, rap: 1, nl: 0 }),
            meta: None,
        };
        let v1 = r.to_v1();
        assert_eq!((v1.topic.as_str(), v1.clientinfo.unwrap().clientid.as_str()), ("t/1", "c"));
        assert_eq!(v1.subopts, Some(v1::SubOpts { qos: 1, share: "g".into(), rh: 2, rap: 1, nl: 0 }));
        let f =
            v2::TopicFilter { name: "a".into(), subopts: Some(v2::SubOpts { qos: 2, ..Default::default() }) }.to_v1();
        assert_eq!(f, v1::TopicFilter { name: "a".into(), qos: 2 });
    }
}
