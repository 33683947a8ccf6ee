//! Connections of one client id racing each other (MQTT-3.1.4-2 (3.1.1), MQTT-3.1.4-3 (5): the
//! server disconnects the existing client; a session is served by one connection at a time).
//! However CONNECTs with mixed Clean Session flags interleave, once they are answered exactly
//! one connection with the client id stays open, and it gets a message published to it once.
//!
//! Each racing connection runs on its own thread: it sends CONNECT, subscribes once
//! connected, acknowledges and counts what it receives, and notes when the broker closes it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use e2e::raw::{connect4, Wire, V4};
use e2e::{stat, wait_until, Broker, Client, DataDir};
use rumqttc::{Packet, QoS};

const TOPIC: &str = "race/t";

/// Rounds started before waiting for their answers (so that more CONNECTs race).
const OVERLAP: usize = 10;

/// What one racing connection saw.
#[derive(Default)]
struct Seen {
    connacked: AtomicBool,
    subscribed: AtomicBool,
    closed: AtomicBool,
    /// PUBLISHes received on `TOPIC`, by payload: "once" and "end".
    once: AtomicUsize,
    end: AtomicUsize,
}

/// One racing connection on its own thread.
struct Racer {
    seen: Arc<Seen>,
    thread: JoinHandle<()>,
}

/// Connects `client_id` with `clean`; the thread runs until the broker closes the connection
/// or `stop` is set.
fn race(addr: SocketAddr, client_id: &str, clean: bool, stop: Arc<AtomicBool>) -> Racer {
    let seen = Arc::new(Seen::default());
    let connect = connect4(client_id, clean);
    let thread = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).expect("connect to the broker");
            stream.set_nodelay(true).unwrap();
            // Wakes the loop now and then to look at `stop`.
            stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let send = |stream: &mut TcpStream, packet: &Packet| {
                let mut out = BytesMut::new();
                V4::write(packet, &mut out);
                let _ = stream.write_all(&out); // fails once the broker closed it
            };
            send(&mut stream, &connect);
            let mut buf = BytesMut::new();
            let mut chunk = [0u8; 4096];
            while !stop.load(Ordering::Acquire) {
                match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        continue
                    }
                    Err(_) => break,
                }
                loop {
                    let mut attempt = buf.clone();
                    let packet = match V4::read(&mut attempt) {
                        Ok(packet) => packet,
                        Err(e) if e.contains("InsufficientBytes") => break,
                        Err(e) => panic!("undecodable packet from the broker: {e}"),
                    };
                    buf = attempt;
                    match packet {
                        Packet::ConnAck(ack) => {
                            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                            seen.connacked.store(true, Ordering::Release);
                            let mut subscribe = rumqttc::Subscribe::new(TOPIC, QoS::AtLeastOnce);
                            subscribe.pkid = 1;
                            send(&mut stream, &Packet::Subscribe(subscribe));
                        }
                        Packet::SubAck(_) => seen.subscribed.store(true, Ordering::Release),
                        Packet::Publish(p) => {
                            if p.qos == QoS::AtLeastOnce {
                                send(&mut stream, &Packet::PubAck(rumqttc::PubAck::new(p.pkid)));
                            }
                            match &p.payload[..] {
                                b"once" => seen.once.fetch_add(1, Ordering::AcqRel),
                                b"end" => seen.end.fetch_add(1, Ordering::AcqRel),
                                other => panic!("unexpected payload {other:?}"),
                            };
                        }
                        _ => {}
                    }
                }
            }
            seen.closed.store(!stop.load(Ordering::Acquire), Ordering::Release);
        })
    };
    Racer { seen, thread }
}

/// Runs `rounds` rounds; round `r` starts one connection per flag of `flags[r % flags.len()]`
/// at once; every `OVERLAP` rounds, waits for all of them to be answered (CONNACK, or closed). Then checks that
/// exactly one connection of the client id is open (the broker's count agrees) and that it
/// gets one QoS 1 message once.
async fn races(broker: &Broker, dir: &DataDir, client_id: &str, rounds: usize, flags: &[&[bool]]) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut racers = Vec::new();
    for round in 0..rounds {
        for &clean in flags[round % flags.len()] {
            racers.push(race(broker.addr, client_id, clean, stop.clone()));
        }
        if round % OVERLAP != OVERLAP - 1 && round != rounds - 1 {
            continue;
        }
        wait_until(&format!("rounds up to {round} answered"), || {
            racers
                .iter()
                .all(|r| r.seen.connacked.load(Ordering::Acquire) || r.seen.closed.load(Ordering::Acquire))
                .then_some(())
        });
        // Threads of closed connections are done: keep only the open ones.
        let (done, open): (Vec<Racer>, Vec<Racer>) =
            racers.into_iter().partition(|r| r.seen.closed.load(Ordering::Acquire));
        for racer in done {
            racer.thread.join().expect("racer thread");
        }
        racers = open;
    }
    let open = wait_until("all but one connection closed", || {
        let open: Vec<&Racer> = racers.iter().filter(|r| !r.seen.closed.load(Ordering::Acquire)).collect();
        assert!(!open.is_empty(), "the last connection to open stays open");
        (open.len() == 1 && stat(dir, "connections.count") == 1).then(|| open[0].seen.clone())
    });
    wait_until("the open connection's SUBACK", || open.subscribed.load(Ordering::Acquire).then_some(()));

    let mut publisher = Client::connect(broker, &format!("{client_id}-pub")).await;
    publisher.publish_acked(TOPIC, QoS::AtLeastOnce, "once").await;
    publisher.publish_acked(TOPIC, QoS::AtLeastOnce, "end").await;
    wait_until("the marker", || (open.end.load(Ordering::Acquire) == 1).then_some(()));
    assert_eq!(open.once.load(Ordering::Acquire), 1, "the message arrived exactly once");
    for racer in &racers {
        assert!(
            Arc::ptr_eq(&racer.seen, &open) || racer.seen.once.load(Ordering::Acquire) == 0,
            "only the open connection got the message"
        );
    }
    stop.store(true, Ordering::Release);
    for racer in racers {
        racer.thread.join().expect("racer thread");
    }
}

/// Three connections of one client id, Clean Session 0 then 1 (an outside check left two of
/// them open, both receiving): one stays open, and gets the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_connections_of_one_client_id_leave_one_open() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    races(&broker, &dir, "three", 3, &[&[false, true, true], &[false, false, true], &[true, false, false]]).await;
}

/// 500 rounds of racing CONNECTs with one client id and mixed Clean Session flags: exactly one
/// connection stays open, and it gets a message published to it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connects_leave_one_connection_that_gets_each_message_once() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    let flags: &[&[bool]] = &[
        &[false, true],
        &[true, false, false, false],
        &[true, true],
        &[false, true, false, true, false],
        &[false],
        &[true, false, true, false],
    ];
    races(&broker, &dir, "racer", 500, flags).await;
}
