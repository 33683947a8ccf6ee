//! What one peer may take from a listener: `max_conns_per_ip` connections open at once from
//! one address (past it a new one is closed at once, while other addresses still connect) and
//! `max_conn_rate` connections a second (past it the listener waits before accepting, as
//! EMQX's esockd does: connections are slowed down, not refused).
//!
//! Two client addresses on Linux loopback: 127.0.0.1 and 127.0.0.2 (the whole 127.0.0.0/8 is
//! local there).

use std::net::{IpAddr, SocketAddr};

use e2e::{wait_until, Broker, DataDir, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const FIRST: [u8; 4] = [127, 0, 0, 1];
const SECOND: [u8; 4] = [127, 0, 0, 2];

/// An MQTT 3.1.1 CONNECT for `id` (keep-alive 60, clean session).
fn connect_packet(id: &str) -> Vec<u8> {
    let mut packet = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, id.len() as u8];
    packet.extend_from_slice(id.as_bytes());
    packet
}

/// Connects from `from` to `broker` as `id`: the open connection after a successful CONNACK,
/// or `None` when the broker closed it instead of answering.
async fn connect_from(broker: SocketAddr, from: [u8; 4], id: &str) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).expect("bind a loopback address");
    let mut stream = socket.connect(broker).await.expect("TCP connect");
    // A refused connection may be closed before the CONNECT is written.
    let _ = stream.write_all(&connect_packet(id)).await;
    let mut connack = [0u8; 4];
    match tokio::time::timeout(DEADLINE, stream.read_exact(&mut connack)).await {
        Ok(Ok(_)) => {
            assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
            Some(stream)
        }
        Ok(Err(_)) => None,
        Err(_) => panic!("neither a CONNACK nor a close within {DEADLINE:?}"),
    }
}

/// `mqtt.max_conns_per_ip = 2`: a third connection from 127.0.0.1 is closed unanswered (and
/// the refusal logged), a client from 127.0.0.2 still connects, and when one of the first two
/// leaves, 127.0.0.1 may connect again. `mqtt.connect_timeout` is long, so that "closed" can
/// only be the refusal, not the wait for a CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_at_max_conns_per_ip_is_refused_while_others_connect() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_CONNS_PER_IP", "2"), ("BROKER_MQTT__CONNECT_TIMEOUT", "60")]);
    let first = connect_from(broker.addr, FIRST, "per-ip-1").await.expect("first from 127.0.0.1");
    let _second = connect_from(broker.addr, FIRST, "per-ip-2").await.expect("second from 127.0.0.1");
    assert!(connect_from(broker.addr, FIRST, "per-ip-3").await.is_none(), "a third from 127.0.0.1 is refused");
    broker.wait_for_log("connection refused: mqtt.max_conns_per_ip (2) reached");
    let _other = connect_from(broker.addr, SECOND, "per-ip-other").await.expect("127.0.0.2 still connects");

    drop(first);
    let runtime = tokio::runtime::Handle::current();
    let addr = broker.addr;
    tokio::task::spawn_blocking(move || {
        wait_until("a slot for 127.0.0.1 after one of its clients left", || {
            runtime.block_on(connect_from(addr, FIRST, "per-ip-4"))
        })
    })
    .await
    .unwrap();
}

/// `mqtt.max_conn_rate = 2`: six clients connecting one after the other are all accepted (the
/// listener waits instead of refusing), and the broker says it slowed its accepts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_conn_rate_the_listener_waits_instead_of_refusing() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_CONN_RATE", "2")]);
    let mut clients = Vec::new();
    for i in 0..6 {
        let client = connect_from(broker.addr, FIRST, &format!("rate-{i}")).await;
        clients.push(client.unwrap_or_else(|| panic!("client {i} refused")));
    }
    broker.wait_for_log("mqtt.max_conn_rate (2/s) reached: accepting slower");
}
