//! Arrival order across clients: of a SUBSCRIBE from client B and a PUBLISH on the same
//! topic from client A written to the broker just after it (B not waiting for its SUBACK),
//! how often is the PUBLISH routed to B?
//!
//! MQTT orders messages per client (§4.6) and says nothing across clients, so this is a
//! figure, not a conformance rule: a single-threaded broker (mosquitto) acts on packets in
//! the order its one poll of the sockets returns them; a multi-threaded one may serve the
//! two clients on two threads at once. Each round uses new clients and a new topic; after
//! B's SUBACK, A publishes a marker, and A's messages arrive in order (MQTT-4.6.0-5), so B's
//! first message tells whether the first PUBLISH reached it.
//!
//!   cargo run --release -p bench --bin arrival_order -- --addr 127.0.0.1:1883 --rounds 1000 [--gap-us 100]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bench::raw::{connect, packet, string, subscribe};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The broker to measure (any MQTT 3.1.1 broker that admits anonymous clients).
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// Rounds, each with two new clients and a new topic.
    #[arg(long, default_value_t = 1000)]
    rounds: usize,
    /// Microseconds between writing the SUBSCRIBE and writing the PUBLISH.
    #[arg(long, default_value_t = 0)]
    gap_us: u64,
}

fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// Reads one packet: (first byte, body).
fn read_packet(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).expect("read from the broker");
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).expect("read from the broker");
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("read from the broker");
    (first[0], body)
}

fn client(addr: SocketAddr, client_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect to the broker");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(&connect(client_id, true)).unwrap();
    let (first, body) = read_packet(&mut stream);
    assert_eq!((first, body.get(1)), (0x20, Some(&0)), "CONNACK accepted");
    stream
}

fn main() {
    let args = Args::parse();
    let tag = std::process::id();
    let mut kept = 0;
    for round in 0..args.rounds {
        let topic = format!("arrival_order/{tag}/{round}");
        let mut b = client(args.addr, &format!("order-b-{tag}-{round}"));
        let mut a = client(args.addr, &format!("order-a-{tag}-{round}"));
        b.write_all(&subscribe(&topic, 0)).unwrap();
        if args.gap_us > 0 {
            std::thread::sleep(Duration::from_micros(args.gap_us));
        }
        a.write_all(&publish(&topic, b"first")).unwrap();
        assert_eq!(read_packet(&mut b).0, 0x90, "SUBACK");
        a.write_all(&publish(&topic, b"marker")).unwrap();
        let (first, body) = read_packet(&mut b);
        assert_eq!(first & 0xf0, 0x30, "a PUBLISH");
        if body.ends_with(b"first") {
            kept += 1;
        }
    }
    println!(
        "arrival order kept in {kept} of {} rounds ({:.1} %) at {}, PUBLISH written {} µs after the SUBSCRIBE",
        args.rounds,
        100.0 * kept as f64 / args.rounds as f64,
        args.addr,
        args.gap_us
    );
}
