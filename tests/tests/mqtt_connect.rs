//! CONNECT and CONNACK in MQTT 3.1, 3.1.1 and 5: which protocol levels are accepted, which
//! CONNECTs are refused (with which CONNACK, or none: inconsistent flags, fields the flags
//! announce missing) and that the connection is then closed, client id rules (zero-length ids,
//! `mqtt.max_clientid_len`), the MQTT 5 CONNACK properties and the settings that change them,
//! authentication refused by a plugin, enhanced authentication refused (an Authentication
//! Method, an AUTH without one), the CONNECT timeout, and Session Present on a new session.

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use e2e::raw::{connect4, connect5, v5, Raw, V4, V5};
use e2e::wire::{frame, mqtt_string, read_frame};
use e2e::{options, recorded_events, stat, wait_for_stat, wait_until, Broker, Client, DataDir};
use rumqttc::{ConnectReturnCode, Event, Packet, QoS};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Raw bytes: CONNECTs a client library would never send.

/// A CONNECT with protocol `name` and `level`, connect `flags`, keep-alive 60, and `payload`
/// (client id first) as given. MQTT 5 CONNECTs get an empty property block.
fn connect_bytes(name: &str, level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_string(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// A QoS 0 PUBLISH (MQTT 3.1.1 layout).
fn publish_bytes(topic: &str, payload: &str) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    body.extend_from_slice(payload.as_bytes());
    frame(0x30, &body)
}

fn open(broker: &Broker) -> TcpStream {
    let stream = TcpStream::connect(broker.addr).expect("connect to the broker");
    stream.set_read_timeout(Some(e2e::DEADLINE)).unwrap();
    stream
}

/// Everything the broker sends until it closes the connection. Panics when the connection is
/// still open after the deadline.
fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("{what}: the broker did not close the connection (got {got:02x?})")
            }
            Err(_) => return got, // reset by the broker
        }
    }
}

/// Sends `bytes` on a new connection and returns all the broker sent before closing it.
fn exchange(broker: &Broker, bytes: &[u8], what: &str) -> Vec<u8> {
    let mut stream = open(broker);
    stream.write_all(bytes).unwrap();
    read_until_closed(&mut stream, what)
}

/// Decodes one MQTT 5 packet from `bytes` (which must hold exactly one).
fn decode5(bytes: &[u8]) -> v5::Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = v5::Packet::read(&mut buf, None).unwrap_or_else(|e| panic!("cannot decode {bytes:02x?}: {e:?}"));
    assert!(buf.is_empty(), "more than one packet in {bytes:02x?}");
    packet
}

// ---------------------------------------------------------------------------------------
// Raw packets through the rumqttc codecs.

/// Subscribes `raw` (3.1 or 3.1.1) to `topic` at QoS 0 and publishes to it: the message comes
/// back, so the connection really works as a session.
fn round_trip4(raw: &mut Raw<V4>, topic: &str) {
    let mut subscribe = rumqttc::Subscribe::new(topic, QoS::AtMostOnce);
    subscribe.pkid = 1;
    raw.send(&Packet::Subscribe(subscribe));
    match raw.recv() {
        Packet::SubAck(ack) => {
            assert_eq!(ack.return_codes, vec![rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce)])
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    raw.send(&Packet::Publish(rumqttc::Publish::new(topic, QoS::AtMostOnce, "hello")));
    match raw.recv() {
        Packet::Publish(p) => assert_eq!((p.topic.as_str(), &p.payload[..]), (topic, &b"hello"[..])),
        other => panic!("expected the PUBLISH back, got {other:?}"),
    }
}

fn round_trip5(raw: &mut Raw<V5>, topic: &str) {
    let mut subscribe = v5::Subscribe::new(v5::Filter::new(topic, rumqttc::v5::mqttbytes::QoS::AtMostOnce), None);
    subscribe.pkid = 1;
    raw.send(&v5::Packet::Subscribe(subscribe));
    assert!(matches!(raw.recv(), v5::Packet::SubAck(_)), "SUBACK");
    raw.send(&v5::Packet::Publish(v5::Publish::new(topic, rumqttc::v5::mqttbytes::QoS::AtMostOnce, "hello", None)));
    match raw.recv() {
        v5::Packet::Publish(p) => assert_eq!((&p.topic[..], &p.payload[..]), (topic.as_bytes(), &b"hello"[..])),
        other => panic!("expected the PUBLISH back, got {other:?}"),
    }
}

fn events_of<'a>(events: &'a [Value], hook: &str, username: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["hook"] == hook && e["username"] == username).collect()
}

/// A data directory recording hook events; returns it with the file's path.
fn recording(extra_plugins: &str) -> (DataDir, String) {
    let dir = DataDir::with_plugins(&format!("{{hook_recorder, true}}.\n{extra_plugins}"));
    let file = dir.file("events.jsonl").to_str().unwrap().to_owned();
    (dir, file)
}

// ---------------------------------------------------------------------------------------

/// MQTT-3.1.4-4 (3.1.1), MQTT-3.1.4-5 (5): a valid CONNECT is answered with a CONNACK with a
/// zero return code, for MQTT 3.1 ("MQIsdp", level 3), 3.1.1 and 5 alike;
/// MQTT-3.2.0-1 (3.1.1): the CONNACK is the first packet the broker sends;
/// MQTT-3.1.3-5 (3.1.1 and 5): client ids of 1 and 23 alphanumeric characters are allowed;
/// MQTT-3.12.4-1: every version's PINGREQ gets a PINGRESP. Each connection then works as a
/// session (subscribe, publish, receive).
#[test]
fn mqtt_3_1_3_1_1_and_5_are_accepted() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);

    // MQTT 3.1: protocol name "MQIsdp", level 3. The CONNACK has the same layout as 3.1.1's.
    let mut raw = Raw::<V4>::open(broker.addr);
    raw.send_bytes(&connect_bytes("MQIsdp", 3, 0x02, &mqtt_string("v31-client")));
    match raw.recv() {
        Packet::ConnAck(ack) => assert_eq!((ack.code, ack.session_present), (ConnectReturnCode::Success, false)),
        other => panic!("MQTT 3.1: expected CONNACK first, got {other:?}"),
    }
    raw.ping("MQTT 3.1");
    round_trip4(&mut raw, "levels/v31");

    // MQTT 3.1.1, with the longest client id every server must allow.
    let id23 = "abcdefghijklmnopqrstuV9";
    assert_eq!(id23.len(), 23);
    let (mut raw4, ack) = Raw::<V4>::connect(broker.addr, &connect4(id23, true));
    assert_eq!((ack.code, ack.session_present), (ConnectReturnCode::Success, false));
    raw4.ping("MQTT 3.1.1");
    round_trip4(&mut raw4, "levels/v311");

    // MQTT 5, with the shortest.
    let (mut raw5, ack) = Raw::<V5>::connect(broker.addr, &connect5("z", true, None));
    assert_eq!((ack.code, ack.session_present), (v5::ConnectReturnCode::Success, false));
    raw5.ping("MQTT 5");
    round_trip5(&mut raw5, "levels/v5");

    wait_for_stat(&dir, "connections.count", 3); // the three clients connected
}

/// MQTT-3.2.2-1 and MQTT-3.2.2-3 (3.1.1): a new session, with CleanSession 1 or 0, gets
/// Session Present 0 (the CONNACK is exactly `20 02 00 00`);
/// MQTT-3.2.2-1 (5): the reserved bits of the acknowledge flags are 0;
/// MQTT-3.2.2-2 and MQTT-3.2.2-3 (5): Clean Start 1, or Clean Start 0 with no session for the
/// client id, gets Session Present 0 and reason code 0x00.
#[test]
fn a_new_session_is_acknowledged_with_session_present_0() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);

    for (flags, id) in [(0x02, "new-clean"), (0x00, "new-persistent")] {
        let mut stream = open(&broker);
        stream.write_all(&connect_bytes("MQTT", 4, flags, &mqtt_string(id))).unwrap();
        assert_eq!(read_frame(&mut stream), [0x20, 2, 0, 0], "3.1.1 CONNACK for {id}");
    }
    for (flags, id) in [(0x02, "new-clean-5"), (0x00, "new-persistent-5")] {
        let mut stream = open(&broker);
        stream.write_all(&connect_bytes("MQTT", 5, flags, &mqtt_string(id))).unwrap();
        let connack = read_frame(&mut stream);
        assert_eq!(connack[0], 0x20, "CONNACK for {id}: {connack:02x?}");
        assert_eq!(connack[2], 0x00, "acknowledge flags for {id}: no Session Present, reserved bits 0");
        assert_eq!(connack[3], 0x00, "reason code for {id}");
        assert!(matches!(decode5(&connack), v5::Packet::ConnAck(_)), "a well-formed CONNACK");
    }
}

/// MQTT 3.1 has no Session Present: the first byte of its CONNACK's variable header is
/// reserved, so a 3.1 client resuming its session (Clean Session 0, the session kept) still
/// gets `20 02 00 00`, where a 3.1.1 client gets Session Present 1 (MQTT-3.2.2-2).
#[test]
fn an_mqtt_3_1_connack_has_no_session_present_bit() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    for (name, level, resumed) in [("MQIsdp", 3, [0x20, 2, 0, 0]), ("MQTT", 4, [0x20, 2, 1, 0])] {
        let id = format!("sp-{level}");
        for connack in [[0x20, 2, 0, 0], resumed] {
            let mut stream = open(&broker);
            stream.write_all(&connect_bytes(name, level, 0x00, &mqtt_string(&id))).unwrap();
            assert_eq!(read_frame(&mut stream), connack, "CONNACK to level {level}");
            stream.write_all(&[0xe0, 0]).unwrap(); // DISCONNECT
            assert_eq!(read_until_closed(&mut stream, "DISCONNECT"), Vec::<u8>::new());
        }
    }
}

/// MQTT 3.1 has a client send PUBREL, SUBSCRIBE and UNSUBSCRIBE again with DUP set (they are
/// QoS 1 packets in that version; MQTT 3.1.1 fixes their flags at 0b0010, MQTT-3.6.1-1): an
/// MQTT 3.1 client that does so, here after reconnecting with its QoS 2 exchange unfinished,
/// is answered as if DUP were clear (mosquitto's `03-publish-c2b-disconnect-qos2` test).
#[test]
fn an_mqtt_3_1_client_may_set_dup_on_pubrel_subscribe_and_unsubscribe() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let connect = connect_bytes("MQIsdp", 3, 0x00, &mqtt_string("v31-dup"));
    let mut stream = open(&broker);
    stream.write_all(&connect).unwrap();
    assert_eq!(read_frame(&mut stream), [0x20, 2, 0, 0]);
    let mut publish = mqtt_string("v31/dup");
    publish.extend_from_slice(&[0, 1, b'x']);
    stream.write_all(&frame(0x34, &publish)).unwrap(); // QoS 2, packet id 1
    assert_eq!(read_frame(&mut stream), [0x50, 2, 0, 1], "PUBREC");
    drop(stream); // the PUBREL not sent yet

    let mut stream = open(&broker);
    stream.write_all(&connect).unwrap();
    assert_eq!(read_frame(&mut stream), [0x20, 2, 0, 0], "no Session Present in 3.1");
    stream.write_all(&[0x6a, 2, 0, 1]).unwrap(); // PUBREL, DUP set
    assert_eq!(read_frame(&mut stream), [0x70, 2, 0, 1], "PUBCOMP");
    let mut subscribe = vec![0, 2];
    subscribe.extend_from_slice(&mqtt_string("v31/dup"));
    subscribe.push(1);
    stream.write_all(&frame(0x8a, &subscribe)).unwrap(); // SUBSCRIBE, DUP set
    assert_eq!(read_frame(&mut stream), [0x90, 3, 0, 2, 1], "SUBACK");
    let mut unsubscribe = vec![0, 3];
    unsubscribe.extend_from_slice(&mqtt_string("v31/dup"));
    stream.write_all(&frame(0xaa, &unsubscribe)).unwrap(); // UNSUBSCRIBE, DUP set
    assert_eq!(read_frame(&mut stream), [0xb0, 2, 0, 3], "UNSUBACK");

    // The same PUBREL from an MQTT 3.1.1 client is malformed: closed.
    let mut stream = open(&broker);
    stream.write_all(&connect_bytes("MQTT", 4, 0x02, &mqtt_string("v311-dup"))).unwrap();
    assert_eq!(read_frame(&mut stream), [0x20, 2, 0, 0]);
    stream.write_all(&[0x6a, 2, 0, 1]).unwrap();
    assert_eq!(read_until_closed(&mut stream, "a PUBREL with DUP from 3.1.1"), Vec::<u8>::new());
}

/// MQTT 5 acknowledgements and DISCONNECT without properties are sent in their shortest form,
/// as mosquitto sends them: a PUBACK with reason code 0x10 (No matching subscribers) and no
/// properties has no Property Length (§3.4.2.2.1: a Remaining Length under 4 means none), a
/// successful one no reason code either (§3.4.2.1). A DISCONNECT 0x8E (Session taken over)
/// to a client that asked for no problem information (so no Reason String) keeps its
/// Property Length of 0, which MQTT 5 would allow to leave out (§3.14.2.2.1): rumqttc 0.25
/// cannot read a DISCONNECT without it.
#[test]
fn mqtt5_acknowledgements_without_properties_are_in_their_shortest_form() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    // Clean Start, keep-alive 60, Request Problem Information 0.
    let mut body = mqtt_string("MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 60, 2, 0x17, 0]);
    body.extend_from_slice(&mqtt_string("short-acks"));
    let connect = frame(0x10, &body);
    let mut old = open(&broker);
    old.write_all(&connect).unwrap();
    let connack = read_frame(&mut old);
    assert_eq!((connack[0], connack[3]), (0x20, 0), "{connack:02x?}");
    // QoS 1 (packet id 7), no properties, to a topic nobody subscribes to.
    let mut publish = mqtt_string("short/nobody");
    publish.extend_from_slice(&[0, 7, 0, b'x']);
    old.write_all(&frame(0x32, &publish)).unwrap();
    assert_eq!(read_frame(&mut old), [0x40, 3, 0, 7, 0x10], "PUBACK 0x10, no Property Length");
    // Subscribed (packet id 8, no properties), then a QoS 1 message it gets itself.
    let mut subscribe = vec![0, 8, 0];
    subscribe.extend_from_slice(&mqtt_string("short/me"));
    subscribe.push(1);
    old.write_all(&frame(0x82, &subscribe)).unwrap();
    assert_eq!(read_frame(&mut old), [0x90, 4, 0, 8, 0, 1], "SUBACK");
    let mut publish = mqtt_string("short/me");
    publish.extend_from_slice(&[0, 9, 0, b'y']);
    old.write_all(&frame(0x32, &publish)).unwrap();
    let mut got = [read_frame(&mut old), read_frame(&mut old)];
    got.sort();
    let message = [0x32, 14, 0, 8, b's', b'h', b'o', b'r', b't', b'/', b'm', b'e', 0, 1, 0, b'y'];
    assert_eq!(got[0], message, "the message, packet id 1");
    assert_eq!(got[1], [0x40, 2, 0, 9], "PUBACK success: packet id alone");

    // Taken over: DISCONNECT 0x8E, the reason code alone.
    let mut new = open(&broker);
    new.write_all(&connect).unwrap();
    assert_eq!(read_frame(&mut new)[0], 0x20);
    assert_eq!(read_frame(&mut old), [0xe0, 2, 0x8e, 0], "DISCONNECT 0x8E, Property Length 0");
}

/// MQTT-3.1.2-24 and MQTT-3.1.2-25 (5): the broker sends no packet over the client's Maximum
/// Packet Size, the CONNACK included. A CONNACK that does not fit leaves out first what the
/// client assumes anyway (availability flags that are 1); if it still does not fit, the
/// connection is closed without a CONNACK and no session is opened. A refusing CONNACK leaves
/// out its Reason String, and is not sent when even then it does not fit.
#[test]
fn a_connack_over_the_clients_maximum_packet_size_is_not_sent() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let connect = |id: &str, max: u32, method: Option<&str>| {
        let props = v5::ConnectProperties {
            max_packet_size: Some(max),
            authentication_method: method.map(str::to_owned),
            ..v5::ConnectProperties::new()
        };
        let mut out = BytesMut::new();
        connect5(id, true, Some(props)).write(&mut out, None).unwrap();
        out.to_vec()
    };
    let full = {
        let mut stream = open(&broker);
        stream.write_all(&connect("mps-full", 1000, None)).unwrap();
        read_frame(&mut stream).len()
    };
    assert!(full > 20, "the full CONNACK is {full} bytes");

    let mut stream = open(&broker);
    stream.write_all(&connect("mps-20", 20, None)).unwrap();
    let connack = read_frame(&mut stream);
    assert!(connack.len() <= 20, "{} bytes for Maximum Packet Size 20: {connack:02x?}", connack.len());
    match decode5(&connack) {
        v5::Packet::ConnAck(ack) => {
            assert_eq!(ack.code, v5::ConnectReturnCode::Success);
            let p = ack.properties.expect("properties");
            assert_eq!(p.max_packet_size, Some(1024 * 1024), "what the client must know stays");
            assert_eq!(p.retain_available, None, "Retain Available 1 is left out");
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }

    let created = stat(&dir, "session.created");
    let got = exchange(&broker, &connect("mps-8", 8, None), "Maximum Packet Size 8");
    assert_eq!(got, Vec::<u8>::new(), "no CONNACK fits in 8 bytes: closed without one");
    assert_eq!(stat(&dir, "session.created"), created, "no session was opened for it");

    // A refusal (an Authentication Method): 5 bytes without its Reason String, so none at 4.
    let got = exchange(&broker, &connect("mps-r5", 5, Some("SCRAM-SHA-1")), "refused, 5");
    assert_eq!(got, [0x20, 3, 0, 0x8c, 0], "the refusal without a Reason String");
    let got = exchange(&broker, &connect("mps-r4", 4, Some("SCRAM-SHA-1")), "refused, 4");
    assert_eq!(got, Vec::<u8>::new(), "no refusal fits in 4 bytes");
}

/// MQTT-3.1.2-2 (3.1.1): a protocol level the broker does not support is answered with CONNACK
/// 0x01 (unacceptable protocol level), then the connection is closed;
/// MQTT-3.2.2-4 and MQTT-3.2.2-5 (3.1.1): that refusal says no session is present and is
/// followed by the close. MQTT-3.1.2-1 (3.1.1): a wrong protocol name gets no successful
/// CONNACK and the connection is closed.
#[test]
fn an_unsupported_protocol_level_is_refused_with_0x01() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);

    for (name, level) in [("MQTT", 3), ("MQTT", 6), ("MQTT", 0), ("MQTT", 255), ("MQIsdp", 4)] {
        let got = exchange(&broker, &connect_bytes(name, level, 0x02, &mqtt_string("lvl")), name);
        assert_eq!(got, [0x20, 2, 0, 1], "{name:?} level {level}: CONNACK 0x01, then closed");
    }
    let got = exchange(&broker, &connect_bytes("MQTX", 4, 0x02, &mqtt_string("name")), "MQTX");
    assert!(got.is_empty() || got == [0x20, 2, 0, 1], "protocol name MQTX: closed, not accepted ({got:02x?})");

    // The broker still serves well-behaved clients.
    let (mut raw, _) = Raw::<V4>::connect(broker.addr, &connect4("after", true));
    raw.ping("a well-behaved client after the refusals");
}

/// MQTT-3.1.2-3 (3.1.1 and 5): the reserved CONNECT flag must be 0; MQTT-3.1.4-1 (3.1.1): a
/// CONNECT that does not conform is closed without a CONNACK; MQTT-3.1.4-1 (5): closed, also
/// without a CONNACK (MQTT 5 allows a CONNACK 0x81 first; mosquitto sends none either).
#[test]
fn the_reserved_connect_flag_closes_the_connection() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);

    let got = exchange(&broker, &connect_bytes("MQTT", 4, 0x03, &mqtt_string("reserved4")), "3.1.1");
    assert_eq!(got, [] as [u8; 0], "3.1.1: closed without a CONNACK");
    let got = exchange(&broker, &connect_bytes("MQIsdp", 3, 0x03, &mqtt_string("reserved3")), "3.1");
    assert_eq!(got, [] as [u8; 0], "3.1: closed without a CONNACK");

    let got = exchange(&broker, &connect_bytes("MQTT", 5, 0x03, &mqtt_string("reserved5")), "5");
    assert_eq!(got, [] as [u8; 0], "5: closed without a CONNACK (the broker's choice, as mosquitto's)");
    assert_eq!(stat(&dir, "sessions.count"), 0, "no session was opened");
}

/// MQTT-3.1.0-1: the first packet must be a CONNECT; anything else is closed with nothing
/// sent back, and not acted on (a PUBLISH sent first is not routed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_packet_that_is_not_connect_closes_the_connection() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = Client::connect(&broker, "first-watcher").await;
    watcher.subscribe("first/#", QoS::AtMostOnce).await;

    let subscribe = frame(0x82, &[0, 1, 0, 1, b'#', 0]);
    let cases: [(&str, Vec<u8>); 4] = [
        ("PUBLISH", publish_bytes("first/leak", "x")),
        ("SUBSCRIBE", subscribe),
        ("PINGREQ", vec![0xc0, 0]),
        ("DISCONNECT", vec![0xe0, 0]),
    ];
    for (what, bytes) in cases {
        let got = exchange(&broker, &bytes, what);
        assert_eq!(got, [] as [u8; 0], "{what} first: closed with nothing sent");
    }

    // The PUBLISH sent first never reached the subscriber: a marker is the next message.
    let mut marker = Client::connect(&broker, "first-marker").await;
    marker.publish_acked("first/marker", QoS::AtLeastOnce, "end").await;
    assert_eq!(watcher.receive(1).await[0].topic, "first/marker");
}

/// MQTT-3.1.0-2 (3.1.1 and 5): a second CONNECT is a protocol violation and the connection is
/// closed; MQTT 5 is told why first (DISCONNECT 0x82, a DISCONNECT reason code:
/// MQTT-3.14.2-1), MQTT-4.13.1-1 (5): a Protocol Error closes the connection;
/// MQTT-3.1.2-8 (3.1.1 and 5): the connection ended without DISCONNECT, so its will is
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_closes_the_connection() {
    let (dir, file) = recording("");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", &file)]);
    let mut watcher = Client::connect(&broker, "second-watcher").await;
    watcher.subscribe("second/#", QoS::AtMostOnce).await;

    let mut connect = connect4("second-4", true);
    if let Packet::Connect(c) = &mut connect {
        c.last_will = Some(rumqttc::LastWill::new("second/will4", "gone4", QoS::AtMostOnce, false));
    }
    let (mut raw4, _) = Raw::<V4>::connect(broker.addr, &connect);
    raw4.send(&connect4("second-4", true));
    assert_eq!(raw4.until_closed(), vec![], "3.1.1: closed with nothing sent");
    assert_eq!(watcher.receive(1).await[0].topic, "second/will4");

    let will = v5::LastWill::new("second/will5", "gone5", rumqttc::v5::mqttbytes::QoS::AtMostOnce, false, None);
    let v5::Packet::Connect(c, _, _) = connect5("second-5", true, None) else { unreachable!() };
    let (mut raw5, _) = Raw::<V5>::connect(broker.addr, &v5::Packet::Connect(c, Some(will), None));
    raw5.send(&connect5("second-5", true, None));
    match &raw5.until_closed()[..] {
        [v5::Packet::Disconnect(d)] => assert_eq!(d.reason_code, v5::DisconnectReasonCode::ProtocolError),
        other => panic!("5: expected DISCONNECT 0x82 then the close, got {other:?}"),
    }
    assert_eq!(watcher.receive(1).await[0].topic, "second/will5");

    let events = wait_until("both disconnections recorded", || {
        let events = recorded_events(std::path::Path::new(&file));
        let n = events.iter().filter(|e| e["hook"] == "client.disconnected").count();
        (n == 2).then_some(events)
    });
    for e in events.iter().filter(|e| e["hook"] == "client.disconnected") {
        assert_eq!(e["reason"], "protocol_error", "{e}");
    }
}

/// CONNECT flags that contradict each other, or a payload that does not match its flags, close
/// the connection without a CONNACK (MQTT-3.1.4-1, 3.1.1): MQTT-3.1.2-11/13 (will QoS without
/// a will), MQTT-3.1.2-15 (will retain without a will), MQTT-3.1.2-14 (will QoS 3),
/// MQTT-3.1.2-9 (will flag but no will topic and message), MQTT-3.1.2-19 (user name flag but
/// no user name), MQTT-3.1.2-22 (password without user name). MQTT 5, MQTT-3.1.2-11 and
/// MQTT-3.1.2-13 (5): closed, without a CONNACK (MQTT 5 would allow 0x81 first).
#[test]
fn inconsistent_will_and_credential_flags_close_the_connection() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let id = mqtt_string("flags");
    let with_will = [mqtt_string("flags"), mqtt_string("w/t"), mqtt_string("bye")].concat();

    let cases: [(&str, u8, &[u8]); 6] = [
        ("will QoS 1 without a will", 0x0a, &id),
        ("will retain without a will", 0x22, &id),
        ("will QoS 3", 0x1e, &with_will),
        ("will flag without will topic and message", 0x06, &id),
        ("user name flag without a user name", 0x82, &id),
        ("password without user name", 0x42, &[id.clone(), mqtt_string("pw")].concat()),
    ];
    for (what, flags, payload) in cases {
        let got = exchange(&broker, &connect_bytes("MQTT", 4, flags, payload), what);
        assert_eq!(got, [] as [u8; 0], "3.1.1, {what}: closed without a CONNACK");
    }
    for (what, flags) in [("will QoS 1 without a will", 0x0a), ("will retain without a will", 0x22)] {
        let got = exchange(&broker, &connect_bytes("MQTT", 5, flags, &id), what);
        assert_eq!(got, [] as [u8; 0], "5, {what}: closed without a CONNACK");
    }
    // The same CONNECT with consistent flags is accepted: the refusals were about the flags.
    let mut stream = open(&broker);
    stream.write_all(&connect_bytes("MQTT", 4, 0x0e, &with_will)).unwrap();
    assert_eq!(read_frame(&mut stream), [0x20, 2, 0, 0]);
}

/// MQTT-3.1.3-8 (3.1.1): a zero-length client id with CleanSession 0 gets CONNACK 0x02 and the
/// connection is closed (MQTT-3.2.2-4, MQTT-3.2.2-5: no session present, then closed);
/// MQTT-3.1.3-6 (3.1.1): with CleanSession 1 the broker assigns a unique client id and
/// handles the connection as if the client had sent it (hooks see the same non-empty id for
/// its connection and its subscription). MQTT 3.1 requires a client id: a zero-length one
/// gets 0x02 too.
#[test]
fn zero_length_client_id_in_mqtt_3_1_1() {
    let (dir, file) = recording("");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", &file)]);

    let got = exchange(&broker, &connect_bytes("MQTT", 4, 0x00, &mqtt_string("")), "clean session 0");
    assert_eq!(got, [0x20, 2, 0, 2], "CONNACK 0x02, then closed");
    let got = exchange(&broker, &connect_bytes("MQIsdp", 3, 0x02, &mqtt_string("")), "MQTT 3.1");
    assert_eq!(got, [0x20, 2, 0, 2], "MQTT 3.1: CONNACK 0x02, then closed");

    let mut clients = Vec::new();
    for user in ["anon-a", "anon-b"] {
        let mut connect = connect4("", true);
        if let Packet::Connect(c) = &mut connect {
            c.set_login(user, "pw");
        }
        let (mut raw, ack) = Raw::<V4>::connect(broker.addr, &connect);
        assert_eq!((ack.code, ack.session_present), (ConnectReturnCode::Success, false), "{user}");
        round_trip4(&mut raw, &format!("anon/{user}"));
        clients.push(raw);
    }
    let events = wait_until("both anonymous clients subscribed", || {
        let events = recorded_events(std::path::Path::new(&file));
        let done = ["anon-a", "anon-b"].iter().all(|u| !events_of(&events, "session.subscribed", u).is_empty());
        done.then_some(events)
    });
    let mut ids = Vec::new();
    for user in ["anon-a", "anon-b"] {
        let connected = events_of(&events, "client.connected", user);
        assert_eq!(connected.len(), 1, "{user}");
        let id = connected[0]["client_id"].as_str().unwrap().to_owned();
        assert!(!id.is_empty(), "{user}: an assigned client id");
        assert_eq!(events_of(&events, "session.subscribed", user)[0]["client_id"], id.as_str(), "{user}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "each client gets its own id");
    // The refused ones never connected.
    assert_eq!(events.iter().filter(|e| e["hook"] == "client.connected").count(), 2);
}

/// MQTT-3.1.3-6 and MQTT-3.1.3-7 (5): a zero-length client id is assigned a unique one, the
/// connection is handled as if the client had sent it (hooks see it), and it is returned in
/// the CONNACK; MQTT-3.2.2-16 (5): the CONNACK carries an Assigned Client Identifier not used
/// by any other session. MQTT 5 allows this with Clean Start 0 too.
#[test]
fn zero_length_client_id_in_mqtt_5() {
    let (dir, file) = recording("");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", &file)]);

    let mut assigned = Vec::new();
    let mut clients = Vec::new();
    for (user, clean_start) in [("anon5-a", true), ("anon5-b", true), ("anon5-c", false)] {
        let v5::Packet::Connect(c, _, _) = connect5("", clean_start, None) else { unreachable!() };
        let connect = v5::Packet::Connect(c, None, Some(v5::Login::new(user, "pw")));
        let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &connect);
        assert_eq!((ack.code, ack.session_present), (v5::ConnectReturnCode::Success, false), "{user}");
        let id = ack.properties.and_then(|p| p.assigned_client_identifier).expect("Assigned Client Identifier");
        assert!(!id.is_empty(), "{user}");
        round_trip5(&mut raw, &format!("anon/{user}"));
        assigned.push((user, id));
        clients.push(raw);
    }
    assert_ne!(assigned[0].1, assigned[1].1, "unique");
    assert_ne!(assigned[0].1, assigned[2].1, "unique");
    assert_ne!(assigned[1].1, assigned[2].1, "unique");

    let events = wait_until("every anonymous client subscribed", || {
        let events = recorded_events(std::path::Path::new(&file));
        let done = assigned.iter().all(|(u, _)| !events_of(&events, "session.subscribed", u).is_empty());
        done.then_some(events)
    });
    for (user, id) in &assigned {
        assert_eq!(events_of(&events, "client.connected", user)[0]["client_id"], id.as_str(), "{user}");
        assert_eq!(events_of(&events, "session.subscribed", user)[0]["client_id"], id.as_str(), "{user}");
    }

    // The assigned id is the session's key: connecting with it takes that client over.
    let (_, ack) = Raw::<V5>::connect(broker.addr, &connect5(&assigned[0].1, false, None));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    match &clients[0].until_closed()[..] {
        [v5::Packet::Disconnect(d)] => assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver),
        other => panic!("the client with that assigned id was taken over, got {other:?}"),
    }
}

/// MQTT-3.1.3-9 (3.1.1): a client id the broker rejects (longer than `mqtt.max_clientid_len`)
/// gets CONNACK 0x02 and the connection is closed; MQTT-3.1.3-8 (5): CONNACK 0x85, then closed;
/// MQTT-3.2.2-6 and MQTT-3.2.2-7 (5): no session present, and closed after a reason code of
/// 0x80 or more. An id of exactly the maximum is accepted.
#[test]
fn a_client_id_over_max_clientid_len_is_refused() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_CLIENTID_LEN", "8")]);

    let (mut ok4, ack) = Raw::<V4>::connect(broker.addr, &connect4("eight-v4", true));
    assert_eq!(ack.code, ConnectReturnCode::Success, "8 bytes is allowed");
    ok4.ping("eight-v4");
    let (mut ok5, ack) = Raw::<V5>::connect(broker.addr, &connect5("eight-v5", true, None));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success, "8 bytes is allowed");
    ok5.ping("eight-v5");

    let got = exchange(&broker, &connect_bytes("MQTT", 4, 0x02, &mqtt_string("nine-v311")), "3.1.1");
    assert_eq!(got, [0x20, 2, 0, 2], "3.1.1: CONNACK 0x02, then closed");

    let got = exchange(&broker, &connect_bytes("MQTT", 5, 0x02, &mqtt_string("nine-v5-x")), "5");
    match decode5(&got) {
        v5::Packet::ConnAck(ack) => {
            assert_eq!(ack.code, v5::ConnectReturnCode::ClientIdentifierNotValid);
            assert!(!ack.session_present);
        }
        other => panic!("5: expected CONNACK 0x85, got {other:?}"),
    }
    assert_eq!(stat(&dir, "sessions.count"), 2, "no session for the refused ids");
}

/// The CONNACK of MQTT 5 with default settings announces Receive Maximum (= max_awaiting_rel,
/// 100), Maximum Packet Size (1 MiB), Topic Alias Maximum (65535) and that retained, wildcard,
/// shared subscriptions and subscription identifiers are available. No Maximum QoS (QoS 2 is
/// supported), no Server Keep Alive, no Assigned Client Identifier (the client gave one);
/// MQTT-4.12.0-6 (5): no Authentication Method, as the client sent none.
#[test]
fn mqtt_5_connack_properties_with_default_settings() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (_raw, ack) = Raw::<V5>::connect(broker.addr, &connect5("props", true, None));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(100), "Receive Maximum");
    assert_eq!(p.max_packet_size, Some(1024 * 1024), "Maximum Packet Size");
    assert_eq!(p.topic_alias_max, Some(65535), "Topic Alias Maximum");
    assert_eq!(p.retain_available, Some(1), "Retain Available");
    assert_eq!(p.wildcard_subscription_available, Some(1), "Wildcard Subscription Available");
    assert_eq!(p.shared_subscription_available, Some(1), "Shared Subscription Available");
    assert_eq!(p.subscription_identifiers_available, Some(1), "Subscription Identifiers Available");
    assert_eq!(p.max_qos, None, "Maximum QoS is absent when QoS 2 is supported");
    assert_eq!(p.server_keep_alive, None, "no Server Keep Alive unless configured");
    assert_eq!(p.assigned_client_identifier, None, "the client gave its id");
    assert_eq!(p.authentication_method, None, "MQTT-4.12.0-6");
    assert_eq!(p.authentication_data, None);
}

/// The settings change what the MQTT 5 CONNACK announces: `mqtt.max_awaiting_rel` (Receive
/// Maximum; 65535 is the default and is left out), `max_packet_size`, `max_topic_alias` (0:
/// left out), `retain_available`, `wildcard_subscription`, `shared_subscription`,
/// `server_keepalive`, `max_qos_allowed`. MQTT-3.2.2-9 (5): a broker without QoS 2 (or 1) says
/// Maximum QoS; MQTT-3.2.2-10 (5): it still accepts SUBSCRIBE at QoS 2 (granted lower);
/// MQTT-3.2.2-12 (5): a will QoS above it is refused with CONNACK 0x9B; MQTT-3.2.2-13 (5): a
/// retained will without retain support is refused with 0x9A; MQTT-3.2.2-7 (5): both then
/// closed.
#[test]
fn mqtt_5_connack_properties_follow_the_settings() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MQTT__MAX_AWAITING_REL", "7"),
            ("BROKER_MQTT__MAX_PACKET_SIZE", "4096"),
            ("BROKER_MQTT__MAX_TOPIC_ALIAS", "0"),
            ("BROKER_MQTT__RETAIN_AVAILABLE", "false"),
            ("BROKER_MQTT__WILDCARD_SUBSCRIPTION", "false"),
            ("BROKER_MQTT__SHARED_SUBSCRIPTION", "false"),
            ("BROKER_MQTT__MAX_QOS_ALLOWED", "1"),
            ("BROKER_MQTT__SERVER_KEEPALIVE", "30"),
        ],
    );
    let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &connect5("knobs", true, None));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(7), "Receive Maximum = mqtt.max_awaiting_rel");
    assert_eq!(p.max_packet_size, Some(4096), "Maximum Packet Size");
    assert_eq!(p.topic_alias_max, None, "Topic Alias Maximum 0 is left out");
    assert_eq!(p.retain_available, Some(0), "Retain Available");
    assert_eq!(p.wildcard_subscription_available, Some(0), "Wildcard Subscription Available");
    assert_eq!(p.shared_subscription_available, Some(0), "Shared Subscription Available");
    assert_eq!(p.subscription_identifiers_available, Some(1), "Subscription Identifiers Available");
    assert_eq!(p.max_qos, Some(1), "Maximum QoS");
    assert_eq!(p.server_keep_alive, Some(30), "Server Keep Alive");

    // MQTT-3.2.2-10: SUBSCRIBE at QoS 2 is accepted, granted at the maximum.
    let qos2 = rumqttc::v5::mqttbytes::QoS::ExactlyOnce;
    let mut subscribe = v5::Subscribe::new(v5::Filter::new("knobs/t", qos2), None);
    subscribe.pkid = 3;
    raw.send(&v5::Packet::Subscribe(subscribe));
    match raw.recv() {
        v5::Packet::SubAck(ack) => assert_eq!(
            ack.return_codes,
            vec![v5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce)]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    // Wills the broker cannot honour are refused.
    for (what, will, code) in [
        ("will QoS 2", v5::LastWill::new("knobs/w", "x", qos2, false, None), v5::ConnectReturnCode::QoSNotSupported),
        (
            "retained will",
            v5::LastWill::new("knobs/w", "x", rumqttc::v5::mqttbytes::QoS::AtMostOnce, true, None),
            v5::ConnectReturnCode::RetainNotSupported,
        ),
    ] {
        let v5::Packet::Connect(c, _, _) = connect5("knobs-will", true, None) else { unreachable!() };
        let mut raw = Raw::<V5>::open(broker.addr);
        raw.send(&v5::Packet::Connect(c, Some(will), None));
        match &raw.until_closed()[..] {
            [v5::Packet::ConnAck(ack)] => {
                assert_eq!(ack.code, code, "{what}");
                assert!(!ack.session_present, "{what}");
            }
            other => panic!("{what}: expected one CONNACK then the close, got {other:?}"),
        }
    }
    drop(broker);

    let dir = DataDir::with_plugins("");
    let broker =
        Broker::start(&dir, &[("BROKER_MQTT__MAX_QOS_ALLOWED", "0"), ("BROKER_MQTT__MAX_AWAITING_REL", "65535")]);
    let (_raw, ack) = Raw::<V5>::connect(broker.addr, &connect5("knobs0", true, None));
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.max_qos, Some(0), "Maximum QoS 0");
    assert_eq!(p.receive_max, None, "Receive Maximum 65535 is the default, left out");
    assert_eq!(p.server_keep_alive, None);
    assert_eq!(p.topic_alias_max, Some(65535));
    assert_eq!(p.retain_available, Some(1));
}

/// Authentication refused by a plugin (`gatekeeper` denies user "mallory"): the credentials
/// are bad, so 3.1.1 gets CONNACK 0x04 "Connection Refused, bad user name or password"
/// (§3.2.2.3 table 3.1; MQTT-3.2.2-4: no session present; MQTT-3.2.2-5: then closed), MQTT 5
/// gets CONNACK 0x86 "Bad User Name or Password" (§3.2.2.2, MQTT-3.1.4-2 (5): a failed
/// authentication closes the connection; MQTT-3.2.2-6 and MQTT-3.2.2-7 (5)); 0x87 / 0x05
/// are for a client no plugin accepted (`allow_anonymous`, in `auth_mnesia.rs`). MQTT-3.1.4-5 (3.1.1), MQTT-3.1.4-6 (5): a PUBLISH sent
/// right after the refused CONNECT is not processed. No `client.connected` fires for the
/// refused clients, a refused CONNECT with a live client's id does not take that client over,
/// and the broker logs the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_denied_by_a_plugin() {
    let (dir, file) = recording("{gatekeeper, true}.\n");
    dir.write("broker.toml", "[gatekeeper]\ndeny_users = [\"mallory\"]\n");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", &file)]);

    let mut victim_options = options(&broker, "victim");
    victim_options.set_credentials("victor", "pw");
    let mut victim = Client::connect_with(victim_options).await;
    victim.subscribe("auth/#", QoS::AtMostOnce).await;

    let credentials = [mqtt_string("mallory"), mqtt_string("pw")].concat();
    for (id, level) in [("victim", 4), ("mallory-4", 4), ("mallory-5", 5)] {
        let mut bytes = connect_bytes("MQTT", level, 0xc2, &[mqtt_string(id), credentials.clone()].concat());
        let mut leak = publish_bytes("auth/leak", id);
        if level == 5 {
            // MQTT 5 PUBLISH: an empty property block after the topic.
            let mut body = mqtt_string("auth/leak");
            body.push(0);
            body.extend_from_slice(id.as_bytes());
            leak = frame(0x30, &body);
        }
        bytes.extend_from_slice(&leak);
        let got = exchange(&broker, &bytes, id);
        if level == 4 {
            assert_eq!(got, [0x20, 2, 0, 4], "{id}: CONNACK 0x04, then closed");
        } else {
            match decode5(&got) {
                v5::Packet::ConnAck(ack) => {
                    assert_eq!(ack.code, v5::ConnectReturnCode::BadUserNamePassword, "{id}");
                    assert!(!ack.session_present, "{id}");
                }
                other => panic!("{id}: expected CONNACK 0x86, got {other:?}"),
            }
        }
    }

    // A user the plugin allows connects; its marker is the next thing the victim gets: the
    // victim was not taken over and no refused PUBLISH was routed.
    let mut alice_options = options(&broker, "alice");
    alice_options.set_credentials("alice", "pw");
    let mut alice = Client::connect_with(alice_options).await;
    alice.publish_acked("auth/marker", QoS::AtLeastOnce, "end").await;
    let got = victim.receive(1).await;
    assert_eq!(got[0].topic, "auth/marker");
    victim.client.publish("auth/still-here", QoS::AtLeastOnce, false, "x").await.unwrap();
    victim.wait_for("PUBACK", |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await;

    let events = wait_until("alice connected", || {
        let events = recorded_events(std::path::Path::new(&file));
        (!events_of(&events, "client.connected", "alice").is_empty()).then_some(events)
    });
    assert!(events_of(&events, "client.connected", "mallory").is_empty(), "no client.connected for mallory");
    assert!(events_of(&events, "client.disconnected", "mallory").is_empty(), "never connected, never disconnected");
    assert!(events.iter().all(|e| e["hook"] != "client.disconnected" || e["client_id"] != "victim"));
    let line = broker.wait_for_log("connection refused");
    let refused = |l: &String| l.contains("connection refused") && l.contains("bad username or password");
    assert!(broker.logs().iter().any(|l| refused(l) && l.contains("mallory-5")), "{line}");
    assert_eq!(stat(&dir, "sessions.count"), 2, "victim and alice only");
}

/// MQTT-4.12.0-1 (5): the broker has no enhanced authentication, so a CONNECT with an
/// Authentication Method gets CONNACK 0x8C (Bad authentication method) or 0x87, and the
/// connection is closed (MQTT-3.2.2-6, MQTT-3.2.2-7 (5)); no session is opened.
#[test]
fn an_unsupported_authentication_method_is_refused() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut properties = v5::ConnectProperties::new();
    properties.authentication_method = Some("SCRAM-SHA-256".to_owned());
    properties.authentication_data = Some(bytes::Bytes::from_static(b"client-first"));
    let mut raw = Raw::<V5>::open(broker.addr);
    raw.send(&connect5("enhanced", true, Some(properties)));
    match &raw.until_closed()[..] {
        [v5::Packet::ConnAck(ack)] => {
            assert!(
                matches!(
                    ack.code,
                    v5::ConnectReturnCode::BadAuthenticationMethod | v5::ConnectReturnCode::NotAuthorized
                ),
                "{ack:?}"
            );
            assert!(!ack.session_present);
        }
        other => panic!("expected one CONNACK then the close, got {other:?}"),
    }
    assert_eq!(stat(&dir, "sessions.count"), 0);
}

/// A connection that sends no CONNECT (or only part of one) within `mqtt.connect_timeout` is
/// closed with nothing sent (the specifications say a server SHOULD close it after a
/// reasonable time, §3.1 of 3.1.1 and 5; no normative statement ID). Related: MQTT-3.1.0-1.
#[test]
fn a_connection_without_connect_is_closed_after_connect_timeout() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__CONNECT_TIMEOUT", "1")]);

    let mut silent = open(&broker);
    let mut partial = open(&broker);
    let connect = connect_bytes("MQTT", 4, 0x02, &mqtt_string("partial"));
    partial.write_all(&connect[..connect.len() - 3]).unwrap();
    assert_eq!(read_until_closed(&mut silent, "silent"), [] as [u8; 0], "silent: closed with nothing sent");
    assert_eq!(read_until_closed(&mut partial, "partial CONNECT"), [] as [u8; 0], "partial: closed");

    // A client that sends its CONNECT in time is served, and stays past the timeout.
    let (mut raw, ack) = Raw::<V4>::connect(broker.addr, &connect4("in-time", true));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let mut late = open(&broker);
    assert_eq!(read_until_closed(&mut late, "second silent"), [] as [u8; 0]);
    raw.ping("the client that sent its CONNECT in time");
}

/// A CONNECT whose flags announce a field its payload does not have is malformed and closes
/// the connection: MQTT-3.1.2-21 (3.1.1): the password flag with no password after the user
/// name (closed without a CONNACK, MQTT-3.1.4-1); MQTT-3.1.2-9 (5): the will flag with no will
/// properties, topic and payload, or with the properties but no topic; MQTT-3.1.2-17 (5): the
/// user name flag with no user name; MQTT-3.1.2-19 (5): the password flag with no password
/// (MQTT 5 allows a password without a user name, so with and without one); MQTT-3.1.4-1 (5):
/// closed without a CONNACK (MQTT 5 would allow 0x81 first). No session is opened, and the same
/// CONNECTs with every announced field present are accepted.
#[test]
fn missing_will_user_name_or_password_fields_close_the_connection() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let id = mqtt_string("missing");
    let with_user = [mqtt_string("missing"), mqtt_string("user")].concat();

    let got = exchange(&broker, &connect_bytes("MQTT", 4, 0xc2, &with_user), "3.1.1 password flag");
    assert_eq!(got, [] as [u8; 0], "3.1.1, password flag without a password: closed without a CONNACK");

    let will_properties_only = [id.clone(), vec![0]].concat();
    let cases: [(&str, u8, &[u8]); 5] = [
        ("will flag without will properties, topic and payload", 0x06, &id),
        ("will flag with will properties but no topic", 0x06, &will_properties_only),
        ("user name flag without a user name", 0x82, &id),
        ("password flag (no user name) without a password", 0x42, &id),
        ("password flag after a user name without a password", 0xc2, &with_user),
    ];
    for (what, flags, payload) in cases {
        let got = exchange(&broker, &connect_bytes("MQTT", 5, flags, payload), what);
        assert_eq!(got, [] as [u8; 0], "5, {what}: closed without a CONNACK");
    }
    assert_eq!(stat(&dir, "sessions.count"), 0, "no session was opened");

    // With the fields present, the same flags are accepted: the refusals were about the
    // missing fields.
    let credentials = [mqtt_string("complete"), mqtt_string("user"), mqtt_string("pw")].concat();
    let mut stream = open(&broker);
    stream.write_all(&connect_bytes("MQTT", 4, 0xc2, &credentials)).unwrap();
    assert_eq!(read_frame(&mut stream), [0x20, 2, 0, 0], "3.1.1 with user name and password");
    let will = [mqtt_string("complete5"), vec![0], mqtt_string("w/t"), mqtt_string("bye")].concat();
    let password_only = [mqtt_string("complete5-pw"), mqtt_string("pw")].concat();
    for (what, flags, payload) in [("will", 0x06, will), ("password only", 0x42, password_only)] {
        let mut stream = open(&broker);
        stream.write_all(&connect_bytes("MQTT", 5, flags, &payload)).unwrap();
        match decode5(&read_frame(&mut stream)) {
            v5::Packet::ConnAck(ack) => assert_eq!(ack.code, v5::ConnectReturnCode::Success, "5, {what}"),
            other => panic!("5, {what}: expected CONNACK, got {other:?}"),
        }
    }
}

/// MQTT-4.12.0-7 (5): a client that sent no Authentication Method in its CONNECT must not send
/// AUTH; the broker treats one as a Protocol Error: DISCONNECT 0x82, then the connection is
/// closed (MQTT-4.13.1-1), whether the AUTH asks to continue (0x18) or to re-authenticate
/// (0x19, with a method). Its will is published: this is not a normal DISCONNECT.
#[test]
fn an_auth_packet_without_an_authentication_method_is_a_protocol_error() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut watcher, _) = Raw::<V5>::connect(broker.addr, &connect5("auth-watcher", true, None));
    let mut subscribe = v5::Subscribe::new(v5::Filter::new("auth/#", rumqttc::v5::mqttbytes::QoS::AtMostOnce), None);
    subscribe.pkid = 1;
    watcher.send(&v5::Packet::Subscribe(subscribe));
    assert!(matches!(watcher.recv(), v5::Packet::SubAck(_)), "SUBACK");

    // AUTH 0x18 without properties; AUTH 0x19 with Authentication Method "PLAIN".
    let method = [&[0x15][..], &mqtt_string("PLAIN")].concat();
    let reauth = [&[0x19, method.len() as u8][..], &method].concat();
    for (i, auth) in [frame(0xf0, &[0x18, 0]), frame(0xf0, &reauth)].into_iter().enumerate() {
        let id = format!("auth-{i}");
        let will =
            v5::LastWill::new(format!("auth/will/{i}"), "gone", rumqttc::v5::mqttbytes::QoS::AtMostOnce, false, None);
        let v5::Packet::Connect(c, _, _) = connect5(&id, true, None) else { unreachable!() };
        let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &v5::Packet::Connect(c, Some(will), None));
        assert_eq!(ack.code, v5::ConnectReturnCode::Success, "{id}");
        raw.ping(&id);
        raw.send_bytes(&auth);
        raw.expect_disconnect(v5::DisconnectReasonCode::ProtocolError, &format!("{id}: AUTH without a method"));
        match watcher.recv() {
            v5::Packet::Publish(p) => assert_eq!(&p.topic[..], format!("auth/will/{i}").as_bytes(), "{id}'s will"),
            other => panic!("{id}: expected its will, got {other:?}"),
        }
    }
}

/// A broker that stops tells its MQTT 5 clients why (DISCONNECT 0x8B, Server shutting down,
/// MQTT 5 §3.14.2.1) before it closes their connections; MQTT 3.1.1 clients see the
/// connection close.
#[test]
fn a_stopping_broker_tells_mqtt_5_clients_why() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut five, _) = Raw::<V5>::connect(broker.addr, &connect5("stopping-5", true, None));
    let (mut four, _) = Raw::<V4>::connect(broker.addr, &connect4("stopping-4", true));
    let stopping = std::thread::spawn(move || broker.stop());
    five.expect_disconnect(v5::DisconnectReasonCode::ServerShuttingDown, "a stopping broker");
    assert!(four.until_closed().is_empty(), "MQTT 3.1.1: closed, nothing sent");
    stopping.join().expect("the broker stopped");
}
