//! A listener behind a load balancer in TCP mode (`listener.proxy_protocol`, EMQX's name; what
//! HAProxy's `send-proxy` and `send-proxy-v2` send): the PROXY protocol header each connection
//! opens with gives the client's address, which the broker then uses as the client's: in its
//! listing of clients, for `allow_anonymous = "loopback"`, for `max_conns_per_ip`. A header of
//! the balancer's own connection (`LOCAL`, `UNKNOWN`: a health check) keeps the socket's
//! address; a connection with no header, or a malformed one, is closed, and so is one whose
//! header does not come within `proxy_protocol_timeout`.

use e2e::raw::{connect4, Raw, V4};
use e2e::{Broker, DataDir};

/// A PROXY protocol v1 header from `source` (`ip port`) to the broker.
fn v1(source_ip: &str, source_port: u16) -> Vec<u8> {
    let family = if source_ip.contains(':') { "TCP6" } else { "TCP4" };
    let destination = if source_ip.contains(':') { "::1" } else { "127.0.0.1" };
    format!("PROXY {family} {source_ip} {destination} {source_port} 1883\r\n").into_bytes()
}

/// A PROXY protocol v2 header: `PROXY` over TCP/IPv6 from `[source]:port`, or `LOCAL`.
fn v2(source: Option<([u8; 16], u16)>) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match source {
        Some((ip, port)) => {
            header.extend_from_slice(&[0x21, 0x21, 0, 36]);
            header.extend_from_slice(&ip);
            header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            header.extend_from_slice(&port.to_be_bytes());
            header.extend_from_slice(&1883u16.to_be_bytes());
        }
        None => header.extend_from_slice(&[0x20, 0x00, 0, 0]),
    }
    header
}

/// Opens a connection, sends `header` then a CONNECT for `client_id`: the CONNACK's return code,
/// and the connection; `None` if the broker closed it instead.
fn connect_behind(broker: &Broker, header: &[u8], client_id: &str) -> Option<(u8, Raw<V4>)> {
    let mut raw = Raw::<V4>::open(broker.addr);
    raw.send_bytes(header);
    raw.send(&connect4(client_id, true));
    match raw.next_packet()? {
        rumqttc::Packet::ConnAck(ack) => Some((ack.code as u8, raw)),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

const ACCEPTED: u8 = 0;

/// v1 and v2 headers give the client's address (IPv4 and IPv6); a balancer's own connection
/// (v2 `LOCAL`, v1 `UNKNOWN`) keeps the socket's.
#[test]
fn the_clients_address_comes_from_the_header() {
    let dir = DataDir::with_plugins("");
    let broker =
        Broker::start(&dir, &[("BROKER_LISTENER__PROXY_PROTOCOL", "true"), ("BROKER_ALLOW_ANONYMOUS", "true")]);
    broker.wait_for_log("mqtt listener: each connection opens with a PROXY protocol header");

    let (code, _v4) = connect_behind(&broker, &v1("203.0.113.7", 51234), "pp-v1").expect("CONNACK");
    assert_eq!(code, ACCEPTED);
    assert_eq!(dir.listed_address("pp-v1"), ("203.0.113.7".to_owned(), 51234));

    let ip = "2001:db8::42".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let (code, _v6) = connect_behind(&broker, &v2(Some((ip, 4000))), "pp-v2").expect("CONNACK");
    assert_eq!(code, ACCEPTED);
    assert_eq!(dir.listed_address("pp-v2"), ("2001:db8::42".to_owned(), 4000));

    for (header, id) in [(v2(None), "pp-local"), (b"PROXY UNKNOWN\r\n".to_vec(), "pp-unknown")] {
        let (code, _c) = connect_behind(&broker, &header, id).expect("CONNACK");
        assert_eq!(code, ACCEPTED);
        assert_eq!(dir.listed_address(id).0, "127.0.0.1", "{id}: the balancer's own address");
    }
}

/// `allow_anonymous = "loopback"` (the default) judges the client's address, not the
/// balancer's: behind a balancer on the same machine, a client from elsewhere is refused
/// (CONNACK 5, not authorized) and one from the machine itself admitted.
#[test]
fn loopback_trust_goes_by_the_clients_address() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_LISTENER__PROXY_PROTOCOL", "true")]);
    let (code, _) = connect_behind(&broker, &v1("198.51.100.1", 40000), "pp-remote").expect("CONNACK");
    assert_eq!(code, 5, "a remote client without a login");
    let (code, _) = connect_behind(&broker, &v1("127.0.0.1", 40001), "pp-local").expect("CONNACK");
    assert_eq!(code, ACCEPTED);
}

/// With the PROXY protocol on, a connection must open with a header: plain MQTT, a malformed
/// header, or nothing within `listener.proxy_protocol_timeout` gets it closed (no CONNACK).
#[test]
fn a_connection_without_a_good_header_is_closed() {
    let dir = DataDir::with_plugins("");
    let env = [
        ("BROKER_LISTENER__PROXY_PROTOCOL", "true"),
        ("BROKER_LISTENER__PROXY_PROTOCOL_TIMEOUT", "1s"),
        ("BROKER_ALLOW_ANONYMOUS", "true"),
    ];
    let broker = Broker::start(&dir, &env);
    assert!(connect_behind(&broker, b"", "pp-plain").is_none(), "plain MQTT");
    broker.wait_for_log("connection closed: no PROXY protocol header (the connection does not start with one)");
    assert!(connect_behind(&broker, b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n", "pp-bad").is_none(), "malformed");
    // (Later refusals from the same address within a minute are counted, not logged.)
    let mut silent = Raw::<V4>::open(broker.addr);
    assert!(silent.until_closed().is_empty(), "nothing sent: closed once the timeout passed");
    let (code, _) = connect_behind(&broker, &v1("203.0.113.9", 1), "pp-good").expect("CONNACK");
    assert_eq!(code, ACCEPTED, "the listener goes on serving");
}

/// `mqtt.max_conns_per_ip` counts the clients' addresses from the headers: with a limit of 1,
/// a second connection from one client address is closed, while another address is served.
#[test]
fn max_conns_per_ip_counts_the_clients_addresses() {
    let dir = DataDir::with_plugins("");
    let env = [
        ("BROKER_LISTENER__PROXY_PROTOCOL", "true"),
        ("BROKER_ALLOW_ANONYMOUS", "true"),
        ("BROKER_MQTT__MAX_CONNS_PER_IP", "1"),
    ];
    let broker = Broker::start(&dir, &env);
    let (code, _first) = connect_behind(&broker, &v1("203.0.113.20", 1000), "pp-first").expect("CONNACK");
    assert_eq!(code, ACCEPTED);
    assert!(connect_behind(&broker, &v1("203.0.113.20", 1001), "pp-second").is_none(), "the same client address");
    let (code, _other) = connect_behind(&broker, &v1("203.0.113.21", 1000), "pp-other").expect("CONNACK");
    assert_eq!(code, ACCEPTED, "another address, through the same balancer");
}
