//! Overload protection: when a connected subscriber's queue (`mqtt.max_mqueue_len`) is full
//! of QoS 1/2 messages, its publishers are slowed down (their next PUBLISHes wait, without
//! PUBACK) instead of acknowledged messages being dropped (`mqtt.mqueue_overflow =
//! "backpressure"`, the default); `"drop_oldest"` keeps EMQX's behaviour. QoS 0 messages may
//! be dropped, counted. Clients that publish to each other, or to themselves, never deadlock.
//!
//! The subscribers here hold back reading to fill their queues; nothing waits on the clock.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::BytesMut;
use e2e::raw::{connect4, Raw, V4};
use e2e::{stat, text, wait_for_stat, wait_until, Broker, DataDir};
use rumqttc::{Packet, QoS};

/// A raw MQTT 3.1.1 client that reads with a short timeout, for clients that read and write
/// from one thread until told to stop.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    fn connect(broker: &Broker, id: &str) -> Peer {
        let stream = TcpStream::connect(broker.addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut peer = Peer { stream, buf: BytesMut::new() };
        peer.send(&connect4(id, true));
        assert!(matches!(peer.recv(), Packet::ConnAck(a) if a.code == rumqttc::ConnectReturnCode::Success));
        peer
    }

    fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 24).expect("encode");
        self.stream.write_all(&out).expect("send");
    }

    /// The next packet, if one comes within the read timeout.
    fn poll(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buf, 1 << 24) {
                Ok(packet) => return Some(packet),
                Err(e) if format!("{e:?}").contains("InsufficientBytes") => {}
                Err(e) => panic!("undecodable packet from the broker: {e:?}"),
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the broker closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn recv(&mut self) -> Packet {
        wait_until("a packet from the broker", || self.poll())
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&subscribe(filter, qos));
        assert!(matches!(self.recv(), Packet::SubAck(_)), "SUBACK");
    }
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    let filters = vec![rumqttc::SubscribeFilter::new(filter.to_owned(), qos)];
    Packet::Subscribe(rumqttc::Subscribe { pkid: 1, filters })
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: Vec<u8>) -> Packet {
    let mut publish = rumqttc::Publish::new(topic, qos, payload);
    publish.pkid = pkid;
    Packet::Publish(publish)
}

/// MQTT-4.3.2 (QoS 1: once the broker sent PUBACK it owns the message) and MQTT-4.6.0-6
/// (each topic is ordered), with the default configuration: 10 publishers × 1,000 QoS 1
/// messages to one subscriber that reads nothing until its window (100) and its queue
/// (1,000) are full. The publishers are slowed down, not their messages dropped: every
/// message acknowledged arrives, in each publisher's order, and nothing is counted dropped.
#[test]
fn every_acknowledged_qos1_message_reaches_a_slow_subscriber() {
    const PUBLISHERS: usize = 10;
    const EACH: usize = 1000;
    const OUTSTANDING: usize = 20;
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut sub = Peer::connect(&broker, "fan-in-sub");
    sub.subscribe("fan/#", QoS::AtLeastOnce);
    let acked = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let mut peer = Peer::connect(&broker, &format!("fan-in-pub-{p}"));
            let acked = acked.clone();
            std::thread::spawn(move || {
                // Up to OUTSTANDING unacknowledged; PUBACKs come in order, so ids cycle.
                let (mut sent, mut done) = (0, 0);
                while done < EACH {
                    while sent < EACH && sent - done < OUTSTANDING {
                        let pkid = (sent % OUTSTANDING) as u16 + 1;
                        peer.send(&publish(&format!("fan/{p}"), QoS::AtLeastOnce, pkid, format!("{p}:{sent}").into()));
                        sent += 1;
                    }
                    match peer.recv() {
                        Packet::PubAck(a) => assert_eq!(a.pkid, (done % OUTSTANDING) as u16 + 1, "PUBACK in order"),
                        other => panic!("expected PUBACK, got {other:?}"),
                    }
                    done += 1;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The window and the queue are full: the publishers are being held back, and counted.
    wait_until("1,100 messages acknowledged", || (acked.load(Ordering::Relaxed) >= 1100).then_some(()));
    wait_until("a publisher counted as held back", || {
        (stat(&dir, "overload_protection.publisher_held") > 0).then_some(())
    });
    let mut next = [0usize; PUBLISHERS];
    for _ in 0..PUBLISHERS * EACH {
        match sub.recv() {
            Packet::Publish(p) => {
                let body = text(&p.payload);
                let (publisher, n) = body.split_once(':').expect("publisher:n");
                let (publisher, n): (usize, usize) = (publisher.parse().unwrap(), n.parse().unwrap());
                assert_eq!(n, next[publisher], "publisher {publisher}'s messages in order, none lost");
                next[publisher] += 1;
                sub.send(&Packet::PubAck(rumqttc::PubAck::new(p.pkid)));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    for publisher in publishers {
        publisher.join().expect("publisher");
    }
    assert_eq!(acked.load(Ordering::Relaxed), PUBLISHERS * EACH);
    assert_eq!(stat(&dir, "delivery.dropped"), 0);
}

/// `mqtt.mqueue_overflow = "drop_oldest"` (EMQX's policy): the publisher is never slowed
/// down; with a window of 10 and a queue of 100, a subscriber that reads nothing keeps 110 of
/// 300 messages, the newest, and the 190 dropped are counted (`delivery.dropped.queue_full`).
#[test]
fn drop_oldest_drops_the_oldest_and_counts_them() {
    const TOTAL: usize = 300;
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MQTT__MQUEUE_OVERFLOW", "drop_oldest"),
            ("BROKER_MQTT__MAX_INFLIGHT", "10"),
            ("BROKER_MQTT__MAX_MQUEUE_LEN", "100"),
        ],
    );
    let (mut sub, _) = Raw::<V4>::connect(broker.addr, &connect4("drop-sub", true));
    sub.send(&subscribe("drop/#", QoS::AtLeastOnce));
    assert!(matches!(sub.recv(), Packet::SubAck(_)));
    let (mut publisher, _) = Raw::<V4>::connect(broker.addr, &connect4("drop-pub", true));
    for n in 0..TOTAL {
        publisher.send(&publish("drop/x", QoS::AtLeastOnce, 1, n.to_string().into()));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)), "acknowledged at once");
    }
    wait_for_stat(&dir, "delivery.dropped.queue_full", (TOTAL - 110) as u64);
    let mut last = None;
    for _ in 0..110 {
        match sub.recv() {
            Packet::Publish(p) => {
                let n: usize = text(&p.payload).parse().unwrap();
                assert!(last.is_none_or(|l| n > l), "in order");
                last = Some(n);
                sub.send(&Packet::PubAck(rumqttc::PubAck::new(p.pkid)));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(last, Some(TOTAL - 1), "the newest message is kept");
    sub.ping("nothing more");
    sub.ping("nothing more");
    assert_eq!(stat(&dir, "delivery.dropped"), (TOTAL - 110) as u64);
    assert_eq!(stat(&dir, "overload_protection.publisher_held"), 0, "nobody waits with drop_oldest");
}

/// QoS 0 messages may be dropped under overload, and are counted: a subscriber at QoS 0 that
/// reads nothing while 1,000 messages of 32 KiB (far more than its socket buffers) are
/// published gets exactly the ones not counted in `delivery.dropped.qos0_msg`; the QoS 0
/// publisher is never slowed down.
#[test]
fn qos0_messages_dropped_under_overload_are_counted() {
    const TOTAL: usize = 1000;
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_MQUEUE_LEN", "10")]);
    let (mut sub, _) = Raw::<V4>::connect(broker.addr, &connect4("q0-sub", true));
    sub.send(&subscribe("q0/#", QoS::AtMostOnce));
    assert!(matches!(sub.recv(), Packet::SubAck(_)));
    let (mut publisher, _) = Raw::<V4>::connect(broker.addr, &connect4("q0-pub", true));
    for n in 0..TOTAL {
        let mut payload = n.to_string().into_bytes();
        payload.resize(32 * 1024, b' ');
        publisher.send(&publish("q0/x", QoS::AtMostOnce, 0, payload));
    }
    publisher.ping("every PUBLISH handled");
    let dropped = stat(&dir, "delivery.dropped.qos0_msg") as usize;
    assert!(dropped > 0, "32 MB to a subscriber that reads nothing: some dropped");
    assert_eq!(stat(&dir, "delivery.dropped"), dropped as u64);
    let mut last = None;
    for _ in 0..TOTAL - dropped {
        match sub.recv() {
            Packet::Publish(p) => {
                let n: usize = text(&p.payload).trim_end().parse().unwrap();
                assert!(last.is_none_or(|l| n > l), "in order");
                last = Some(n);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    sub.ping("nothing more than the messages not dropped");
    sub.ping("nothing more than the messages not dropped");
}

/// Overload protection never deadlocks: A publishes to B, B to A, C to itself, each 200 QoS 1
/// messages of 1 KiB written before reading anything, with queues of 10 and windows of 10.
/// Every queue fills and every publisher waits, on a queue that only drains once the waiting
/// clients' own acknowledgements are read, and those are behind their parked PUBLISHes; the
/// broker breaks the cycle (see `connection::overload`): every PUBLISH is acknowledged, and
/// every message is received or counted dropped.
#[test]
fn clients_publishing_to_each_other_or_themselves_do_not_deadlock() {
    const EACH: usize = 200;
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_MQUEUE_LEN", "10"), ("BROKER_MQTT__MAX_INFLIGHT", "10")]);
    let pairs = [("a", "b"), ("b", "a"), ("c", "c")];
    let stop = Arc::new(AtomicBool::new(false));
    let subscribed = Arc::new(Barrier::new(pairs.len()));
    let acked = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = pairs
        .into_iter()
        .map(|(me, to)| {
            let mut peer = Peer::connect(&broker, &format!("cycle-{me}"));
            let (stop, subscribed, acked) = (stop.clone(), subscribed.clone(), acked.clone());
            std::thread::spawn(move || {
                peer.subscribe(&format!("to/{me}"), QoS::AtLeastOnce);
                subscribed.wait();
                for n in 0..EACH {
                    peer.send(&publish(&format!("to/{to}"), QoS::AtLeastOnce, n as u16 + 1, vec![b'x'; 1024]));
                }
                let mut received = 0;
                while !stop.load(Ordering::Relaxed) {
                    match peer.poll() {
                        Some(Packet::Publish(p)) => {
                            received += 1;
                            peer.send(&Packet::PubAck(rumqttc::PubAck::new(p.pkid)));
                        }
                        Some(Packet::PubAck(_)) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(other) => panic!("unexpected {other:?}"),
                        None => {}
                    }
                }
                received
            })
        })
        .collect();
    let total = (pairs.len() * EACH) as u64;
    wait_until("every PUBLISH acknowledged, every message acknowledged or dropped", || {
        let settled = stat(&dir, "messages.acked") + stat(&dir, "delivery.dropped");
        (acked.load(Ordering::Relaxed) as u64 == total && settled == total).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let received: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    assert_eq!(received as u64, stat(&dir, "messages.acked"));
    assert_eq!(stat(&dir, "delivery.dropped"), stat(&dir, "delivery.dropped.queue_full"));
}
