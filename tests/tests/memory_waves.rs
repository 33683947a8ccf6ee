//! Memory comes back: 20 waves of 500 clients, each with a client id never used before,
//! subscribing to a filter of its own, publishing to it and leaving. After every wave the
//! broker holds no session, subscription or filter of it, and its resident memory comes back
//! to within 10 % of what it was after the first wave (nothing per client id, filter or topic
//! outlives its session, and freed heap goes back to the system). Prints the figures.

use std::sync::Arc;

use e2e::wire::{frame, mqtt_string};
use e2e::{counters, stat_in, Broker, DataDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

const WAVES: usize = 20;
const CLIENTS: usize = 500;

/// One client: CONNECT (clean session), SUBSCRIBE to its own filter at QoS 1, PUBLISH one
/// QoS 1 message to it, wait for the message and both acknowledgements, DISCONNECT.
async fn client(addr: std::net::SocketAddr, id: String, all_connected: Arc<Barrier>, measured: Arc<Barrier>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let filter = format!("waves/{id}/#");
    let topic = format!("waves/{id}/t");
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    connect.extend(mqtt_string(&id));
    let mut subscribe = vec![0, 1];
    subscribe.extend(mqtt_string(&filter));
    subscribe.push(1);
    let mut publish = mqtt_string(&topic);
    publish.extend_from_slice(&[0, 2]);
    publish.extend_from_slice(b"payload");
    let mut out = frame(0x10, &connect);
    out.extend(frame(0x82, &subscribe));
    out.extend(frame(0x32, &publish));
    stream.write_all(&out).await.expect("send");
    // CONNACK (4) + SUBACK (5) + PUBACK (4) + the message back (2 + topic + id + payload).
    let expected = 4 + 5 + 4 + (2 + 2 + topic.len() + 2 + 7);
    let mut got = vec![0u8; expected];
    tokio::time::timeout(e2e::DEADLINE, stream.read_exact(&mut got)).await.expect("answers in time").expect("read");
    assert_eq!(&got[..4], &[0x20, 2, 0, 0], "CONNACK accepted");
    // The SUBACK, the PUBACK and the message follow, the last two in either order.
    let mut packets = Vec::new();
    let mut rest = &got[4..];
    while let [first, len, ..] = *rest {
        packets.push((first, &rest[2..2 + len as usize]));
        rest = &rest[2 + len as usize..];
    }
    let message = packets.iter().find(|(first, _)| first >> 4 == 3).expect("the message came back").1;
    let packet_id = u16::from_be_bytes([message[2 + topic.len()], message[3 + topic.len()]]);
    stream.write_all(&frame(0x40, &packet_id.to_be_bytes())).await.expect("send PUBACK");
    // Connected and subscribed until the broker's memory has been read.
    all_connected.wait().await;
    measured.wait().await;
    let mut end = Vec::new();
    end.extend(frame(0xe0, &[]));
    stream.write_all(&end).await.expect("send DISCONNECT");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(e2e::DEADLINE, stream.read_to_end(&mut rest)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_of_new_client_ids_and_filters_give_memory_back() {
    e2e::raise_file_limit();
    let dir = DataDir::with_plugins("");
    let env: Vec<(String, String)> = std::env::var("WAVES_ENV")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let broker = Broker::start(&dir, &env);
    let mut during = Vec::with_capacity(WAVES);
    let mut after = Vec::with_capacity(WAVES);
    for wave in 0..WAVES {
        let (all_connected, measured) = (Arc::new(Barrier::new(CLIENTS + 1)), Arc::new(Barrier::new(CLIENTS + 1)));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let id = format!("wave{wave}-client{i}");
                tokio::spawn(client(broker.addr, id, all_connected.clone(), measured.clone()))
            })
            .collect();
        all_connected.wait().await;
        during.push(broker.rss_kib());
        measured.wait().await;
        for c in clients {
            c.await.expect("a client failed");
        }
        let stats = e2e::wait_until("the wave's sessions ended", || {
            let stats = counters(&dir);
            (stat_in(&stats, "connections.count") == 0 && stat_in(&stats, "sessions.count") == 0).then_some(stats)
        });
        assert_eq!(stat_in(&stats, "subscriptions.count"), 0, "no subscription outlives its session");
        assert_eq!(stat_in(&stats, "topics.count"), 0, "no filter outlives its subscriptions");
        assert_eq!(stat_in(&stats, "messages.received"), ((wave + 1) * CLIENTS) as u64);
        assert_eq!(stat_in(&stats, "messages.sent"), ((wave + 1) * CLIENTS) as u64);
        after.push(at_rest(&broker, &dir, after.first().copied()));
    }
    println!("memory_waves: broker RSS with each of {WAVES} waves of {CLIENTS} clients connected (KiB): {during:?}");
    println!("memory_waves: broker RSS at rest after each wave (KiB): {after:?}");
    let bound = after[0] * 11 / 10;
    assert!(
        after.iter().all(|&rss| rss <= bound),
        "after a wave the RSS stayed more than 10 % above the {} KiB after the first ({after:?})",
        after[0]
    );
}

/// The broker's resident memory once a wave has left. After the first wave: the least of three
/// readings, a ctl round trip apart (a reading can catch a moment's allocation, e.g. the ctl
/// command's own). After the others: readings until one is within 10 % of `first` or the
/// deadline passes, the least of them (the broker's trimmer gives freed heap back to the
/// system within about a second of the fall; glibc alone returns only the top of its heap, and
/// one long-lived allocation placed high kept up to 1.5 MiB resident below it).
fn at_rest(broker: &Broker, dir: &DataDir, first: Option<u64>) -> u64 {
    let reading = || {
        counters(dir);
        broker.rss_kib()
    };
    let Some(first) = first else {
        return (0..3).map(|_| reading()).min().expect("three readings");
    };
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    let mut least = u64::MAX;
    while std::time::Instant::now() < deadline {
        least = least.min(reading());
        if least * 10 <= first * 11 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    least
}
