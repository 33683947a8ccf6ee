//! Bad MQTT input closes that connection only: malformed and oversized packets, a CONNECT
//! that never comes, a client that vanishes mid-packet.

use std::io::{Read, Write};
use std::net::TcpStream;

use e2e::wire::{frame, mqtt_string, read_frame};
use e2e::{counters, stat_in, Broker, Client, DataDir};
use rumqttc::QoS;

const CONNECT: [u8; 16] = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 2, b'r', b'w'];

fn connected(broker: &Broker, id: u8) -> TcpStream {
    let mut stream = TcpStream::connect(broker.addr).unwrap();
    stream.set_read_timeout(Some(e2e::DEADLINE)).unwrap();
    let mut connect = CONNECT;
    connect[15] = id;
    stream.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    stream
}

/// Reads until the broker closes the connection (EOF or reset); a read timeout fails.
fn assert_closed(mut stream: TcpStream, what: &str) {
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("{what}: the connection was not closed")
            }
            Err(_) => return, // reset by the broker
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_close_only_their_connection() {
    let dir = DataDir::with_plugins("");
    let broker =
        Broker::start(&dir, &[("BROKER_MQTT__MAX_PACKET_SIZE", "1024"), ("BROKER_MQTT__CONNECT_TIMEOUT", "1")]);
    let mut bystander = Client::connect(&broker, "bystander").await;
    bystander.subscribe("alive", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "bystander-pub").await;

    let bad: [(&str, Vec<u8>); 6] = [
        ("reserved packet type 0", vec![0x00, 0x00]),
        ("remaining length over 4 bytes", vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("topic that is not UTF-8", vec![0x30, 5, 0, 3, 0xff, 0xfe, 0xfd]),
        ("QoS 3 publish", vec![0x36, 5, 0, 1, b'a', 0, 1]),
        ("subscribe cut short", vec![0x82, 4, 0, 1, 0, 9]),
        ("packet over max_packet_size", {
            let mut p = vec![0x30, 0x80, 0x10]; // 2048 bytes announced
            p.extend_from_slice(&[0, 1, b'a']);
            p
        }),
    ];
    for (i, (what, bytes)) in bad.into_iter().enumerate() {
        let mut stream = connected(&broker, b'a' + i as u8);
        stream.write_all(&bytes).unwrap();
        assert_closed(stream, what);
        publisher.publish_acked("alive", QoS::AtLeastOnce, what).await;
        assert_eq!(&bystander.receive(1).await[0].payload[..], what.as_bytes(), "after {what}");
    }

    // A CONNECT that never comes: closed after connect_timeout.
    let silent = TcpStream::connect(broker.addr).unwrap();
    silent.set_read_timeout(Some(e2e::DEADLINE)).unwrap();
    assert_closed(silent, "no CONNECT");
    // A first packet that is not CONNECT.
    let mut rude = TcpStream::connect(broker.addr).unwrap();
    rude.set_read_timeout(Some(e2e::DEADLINE)).unwrap();
    rude.write_all(&[0xc0, 0]).unwrap();
    assert_closed(rude, "PINGREQ before CONNECT");
    // A client that vanishes mid-packet.
    let mut vanishing = connected(&broker, b'v');
    vanishing.write_all(&[0x30, 100, 0, 5, b'a', b'l']).unwrap();
    drop(vanishing);

    publisher.publish_acked("alive", QoS::AtLeastOnce, "end").await;
    assert_eq!(&bystander.receive(1).await[0].payload[..], b"end");
    e2e::wait_until("only the two good clients connected", || {
        let stats = counters(&dir);
        (stat_in(&stats, "connections.count") == 2).then_some(())
    });
}

/// A CONNECT with a client id of `len` bytes (`c`s), MQTT 3.1.1, keep-alive 30.
fn connect_with_long_id(len: usize) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&(len as u16).to_be_bytes());
    body.resize(body.len() + len, b'c');
    frame(0x10, &body)
}

/// A client-chosen field is logged cut to 256 bytes with its length (a 65,000-byte client id
/// logged whole, several times a connect, let one client write megabytes of log a second):
/// a refused CONNECT (`allow_anonymous = false`: the `connection refused` line) and an
/// accepted one with `emqx_mod_presence` loaded, ended by DISCONNECT (the `connection ended`
/// line, at debug level, which this test turns on) log the id as `ccc…"…(65000 bytes)`, and
/// no line of the broker's log is longer than 2 KiB.
#[test]
fn a_65000_byte_client_id_is_logged_clipped() {
    let connect = connect_with_long_id(65_000);
    for (anonymous, code, marker) in [("false", 5, "connection refused"), ("true", 0, "connection ended")] {
        let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n");
        let broker = Broker::start(&dir, &[("BROKER_ALLOW_ANONYMOUS", anonymous), ("RUST_LOG", "debug")]);
        let mut stream = TcpStream::connect(broker.addr).unwrap();
        stream.set_read_timeout(Some(e2e::DEADLINE)).unwrap();
        stream.write_all(&connect).unwrap();
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 2, 0, code], "allow_anonymous = {anonymous}");
        if code == 0 {
            stream.write_all(&[0xe0, 0]).unwrap();
        }
        let line = broker.wait_for_log(marker);
        assert!(
            line.contains(&format!("\"{}\"…(65000 bytes)", "c".repeat(256))),
            "{marker}: {}",
            &line[..line.len().min(600)]
        );
        let longest = broker.logs().iter().map(String::len).max().unwrap_or(0);
        assert!(longest < 2048, "a log line of {longest} bytes (allow_anonymous = {anonymous})");
    }
}

/// Topics and filters of more than 201 levels (200 separators, mosquitto's limit) are
/// refused before they reach the router, which walks levels recursively: a filter and a
/// topic of 65,536 levels (65,535 slashes) used to overflow a network thread's stack and
/// abort the whole broker. The filter gets SUBACK 0x80, the PUBLISH closes its connection
/// (the treatment of an invalid topic name), and the broker serves on. A topic of 201 levels
/// still flows.
#[test]
fn topics_deeper_than_201_levels_are_refused_and_the_broker_serves_on() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let deepest = vec!["l"; 201].join("/");
    let mut sub = connected(&broker, b'd');
    for (id, filter, granted) in
        [(1u8, "/".repeat(65_535), 0x80), (2, format!("{deepest}/l"), 0x80), (3, deepest.clone(), 0)]
    {
        let mut body = vec![0, id];
        body.extend_from_slice(&mqtt_string(&filter));
        body.push(0);
        sub.write_all(&frame(0x82, &body)).unwrap();
        assert_eq!(read_frame(&mut sub), [0x90, 3, 0, id, granted], "SUBACK {id}");
    }

    // 201 levels: delivered.
    let mut publisher = connected(&broker, b'p');
    let mut body = mqtt_string(&deepest);
    body.push(b'x');
    publisher.write_all(&frame(0x30, &body)).unwrap();
    let delivered = {
        let mut head = [0u8; 1];
        sub.read_exact(&mut head).unwrap();
        head[0]
    };
    assert_eq!(delivered, 0x30, "the message of 201 levels");

    // 65,536 levels: the publisher is closed, the broker goes on.
    let mut deep = connected(&broker, b'q');
    let mut body = mqtt_string(&"/".repeat(65_535));
    body.push(b'x');
    deep.write_all(&frame(0x30, &body)).unwrap();
    assert_closed(deep, "a PUBLISH to a topic of 65,536 levels");
    let _alive = connected(&broker, b'a');
}
