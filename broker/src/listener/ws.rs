//! MQTT over WebSocket (the ws and wss listeners): the HTTP upgrade on the configured path,
//! with the `Sec-WebSocket-Protocol` negotiation EMQX does, then binary frames as a byte
//! stream (`ws_stream_tungstenite`): an MQTT packet may span frames, a frame may hold several.
//!
//! Behind an HTTP proxy (`proxy_address_header`, see [`Forwarded`]) the client's address is
//! the last one in the upgrade's `X-Forwarded-For` (or the header named), with its port from
//! `X-Forwarded-Port` when that is set; without the header, the connection's own.
//!
//! No frame or message may be larger than `mqtt.max_packet_size` plus [`FRAME_SLACK`]:
//! tungstenite checks a frame's length in its header and refuses it (closing the connection)
//! before buffering its payload, so a client cannot make the broker hold more for it than one
//! packet's worth, before its CONNECT or after.

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite};
use ws_stream_tungstenite::WsStream;

use crate::config::Forwarded;

use super::partial::{Frames, PartialInput, Watched};

/// The subprotocols a client may ask for (EMQX's `mqtt`, `mqtt-v3`, `mqtt-v3.1.1`,
/// `mqtt-v5`, and the `mqttvX` spellings of older clients). The broker answers with the
/// first of the client's list that it knows; a client that offers none of them is still
/// served (EMQX's `fail_if_no_subprotocol = false`).
const SUBPROTOCOLS: &[&str] = &["mqtt", "mqttv3.1", "mqttv3.1.1", "mqttv5", "mqtt-v3", "mqtt-v3.1.1", "mqtt-v5"];

/// What a WebSocket frame or message may hold beyond the largest MQTT packet: room for a few
/// small packets (acknowledgements, PINGREQ) a client sends in the same frame.
pub(crate) const FRAME_SLACK: usize = 4096;

/// The WebSocket limits for MQTT packets of at most `max_packet_size` bytes.
fn config(max_packet_size: usize) -> WebSocketConfig {
    let limit = max_packet_size.saturating_add(FRAME_SLACK);
    WebSocketConfig::default().max_frame_size(Some(limit)).max_message_size(Some(limit))
}

/// Why an upgrade failed.
pub(crate) type UpgradeError = async_tungstenite::tungstenite::Error;

/// A WebSocket connection carrying MQTT.
pub(crate) type WsTransport<S> = WsStream<TokioAdapter<Watched<S, Frames>>>;

/// Answers the client's HTTP upgrade request on `path` (404 elsewhere); frames and messages
/// are then limited to `max_packet_size` plus [`FRAME_SLACK`]. Whether the client is in the
/// middle of a frame or message goes to `partial`. Gives the client's address if
/// `forwarded`'s header gave one (`peer` is the connection's own: its port is kept when no
/// port is given).
// The callback's error type (an HTTP response) is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
pub(crate) async fn upgrade<S>(
    stream: S,
    path: &str,
    forwarded: Option<&Forwarded>,
    peer: SocketAddr,
    max_packet_size: usize,
    partial: PartialInput,
) -> Result<(WsTransport<S>, Option<SocketAddr>), UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut client = None;
    let check = |request: &Request, response: Response| {
        client = forwarded.and_then(|forwarded| forwarded_client(request, forwarded, peer));
        answer(request, response, path)
    };
    let config = Some(config(max_packet_size));
    let stream = Watched::new(stream, partial);
    let socket = async_tungstenite::tokio::accept_hdr_async_with_config(stream, check, config).await?;
    Ok((WsStream::new(socket), client))
}

/// The client's address as `forwarded`'s headers of `request` give it: the last address of
/// the address header (the one the proxy in front added; those before it came from further
/// away, or from the client itself), as an IP address or `ip:port`, and the last port of the
/// port header, else that address's port, else `peer`'s. `None` without a usable address.
fn forwarded_client(request: &Request, forwarded: &Forwarded, peer: SocketAddr) -> Option<SocketAddr> {
    let last = |name| {
        let line = request.headers().get_all(name).iter().next_back()?.to_str().ok()?;
        line.rsplit(',').next().map(str::trim).filter(|value| !value.is_empty())
    };
    let mut given = last(&forwarded.address)?;
    if forwarded.address == http::header::FORWARDED {
        given = rfc7239_for(given)?;
    }
    let address = match given.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, peer.port()),
        Err(_) => given.parse::<SocketAddr>().ok()?,
    };
    let port = forwarded.port.as_ref().and_then(last).and_then(|port| port.parse::<u16>().ok());
    Some(SocketAddr::new(address.ip(), port.unwrap_or(address.port())))
}

/// The `for` of one element of RFC 7239's `Forwarded` (`for=192.0.2.60;proto=http`,
/// `for="[2001:db8::17]:4711"`), unquoted; `None` without one.
fn rfc7239_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
    })
}

/// The upgrade's answer: 404 off `path`, else the response with the chosen subprotocol.
#[allow(clippy::result_large_err)]
fn answer(request: &Request, mut response: Response, path: &str) -> Result<Response, ErrorResponse> {
    if request.uri().path() != path {
        let mut refusal = ErrorResponse::new(Some(format!("no WebSocket endpoint at {}\n", request.uri().path())));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    let offered = request.headers().get_all("sec-websocket-protocol");
    let chosen = offered
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .find(|protocol| SUBPROTOCOLS.contains(protocol));
    if let Some(protocol) = chosen {
        response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(static_name(protocol)));
    }
    Ok(response)
}

/// `protocol` as the `'static` entry of [`SUBPROTOCOLS`] it equals.
fn static_name(protocol: &str) -> &'static str {
    SUBPROTOCOLS.iter().find(|&&known| known == protocol).copied().unwrap_or("mqtt")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(path);
        if let Some(protocols) = protocols {
            builder = builder.header("Sec-WebSocket-Protocol", protocols);
        }
        builder.body(()).expect("request")
    }

    fn chosen(protocols: Option<&str>) -> Option<String> {
        let response = answer(&request("/mqtt", protocols), Response::new(()), "/mqtt").expect("accepted");
        response.headers().get("sec-websocket-protocol").map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn picks_the_first_known_subprotocol() {
        assert_eq!(chosen(Some("mqtt")).as_deref(), Some("mqtt"));
        assert_eq!(chosen(Some("wamp, mqttv3.1, mqtt")).as_deref(), Some("mqttv3.1"));
        assert_eq!(chosen(Some("mqttv5")).as_deref(), Some("mqttv5"));
        assert_eq!(chosen(Some("wamp")), None);
        assert_eq!(chosen(None), None);
    }

    #[test]
    fn the_forwarded_address_is_the_last_one_given() {
        let forwarded =
            Forwarded { address: "x-forwarded-for".parse().unwrap(), port: Some("x-forwarded-port".parse().unwrap()) };
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let client = |headers: &[(&str, &str)]| {
            let mut builder = Request::builder().uri("/mqtt");
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            forwarded_client(&builder.body(()).unwrap(), &forwarded, peer).map(|a| a.to_string())
        };
        assert_eq!(client(&[("X-Forwarded-For", "1.1.1.1, 203.0.113.4")]).as_deref(), Some("203.0.113.4:4000"));
        assert_eq!(client(&[("X-Forwarded-For", "203.0.113.4:555")]).as_deref(), Some("203.0.113.4:555"));
        assert_eq!(
            client(&[("X-Forwarded-For", "[2001:db8::1]:555"), ("X-Forwarded-Port", "9")]).as_deref(),
            Some("[2001:db8::1]:9")
        );
        assert_eq!(
            client(&[("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2001:db8::2")]).as_deref(),
            Some("[2001:db8::2]:4000")
        );
        assert_eq!(client(&[("X-Forwarded-For", "unknown")]), None, "not an address: the connection's own is kept");
        assert_eq!(client(&[("X-Forwarded-For", "1.1.1.1, ")]), None);
        assert_eq!(client(&[]), None);

        let rfc7239 = Forwarded { address: http::header::FORWARDED, port: None };
        let client = |value: &str| {
            let request = Request::builder().uri("/mqtt").header("Forwarded", value).body(()).unwrap();
            forwarded_client(&request, &rfc7239, peer).map(|a| a.to_string())
        };
        assert_eq!(client("for=192.0.2.60;proto=http;by=203.0.113.43").as_deref(), Some("192.0.2.60:4000"));
        assert_eq!(
            client("for=1.1.1.1, for=\"[2001:db8:cafe::17]:4711\"").as_deref(),
            Some("[2001:db8:cafe::17]:4711")
        );
        assert_eq!(client("for=_hidden"), None, "an obfuscated node: the connection's own address");
        assert_eq!(client("proto=https"), None);
    }

    #[test]
    fn another_path_is_not_found() {
        let refused = answer(&request("/other", Some("mqtt")), Response::new(()), "/mqtt").expect_err("refused");
        assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    }
}
