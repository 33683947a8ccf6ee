//! Takeover time across the nodes of a cluster: a client with a persistent session (MQTT 3.1.1,
//! Clean Session 0, one subscription) connected to node A reconnects, with the same client id,
//! to node B while its first connection is still open. The time from writing the CONNECT to
//! B to reading its CONNACK (Session Present 1) is what the client waits for its session to
//! move: B claims the client id, A ends the old connection and gives the session up, B
//! subscribes and asks A for what came meanwhile.
//!
//!   cargo run --release -p bench --bin takeover -- --from 127.0.0.1:1881 --to 127.0.0.1:1882 --rounds 200

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bench::raw::{connect, subscribe};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The node the client first connects to.
    #[arg(long)]
    from: SocketAddr,
    /// The node it reconnects to.
    #[arg(long)]
    to: SocketAddr,
    /// Rounds, each with a new client id.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

/// Connects `client_id` to `addr`; returns the stream and the CONNACK's Session Present.
fn open(addr: SocketAddr, client_id: &str) -> (TcpStream, bool) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream.write_all(&connect(client_id, false)).expect("write CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!((connack[0], connack[3]), (0x20, 0), "{client_id}: CONNACK {connack:?}");
    (stream, connack[2] & 1 == 1)
}

fn main() {
    let args = Args::parse();
    let run = std::process::id();
    let mut times = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let client_id = format!("takeover-{run}-{round}");
        let (mut first, _) = open(args.from, &client_id);
        first.write_all(&subscribe(&format!("takeover/{run}/{round}"), 1)).expect("SUBSCRIBE");
        let mut suback = [0u8; 5];
        first.read_exact(&mut suback).expect("SUBACK");
        let started = Instant::now();
        let (mut second, present) = open(args.to, &client_id);
        times.push(started.elapsed());
        assert!(present, "{client_id}: the session did not move (Session Present 0)");
        // The first connection was ended by the takeover.
        let mut rest = Vec::new();
        let _ = first.read_to_end(&mut rest);
        let _ = second.write_all(&[0xE0, 0]);
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "takeover across nodes, {} rounds: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        times.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*times.last().expect("rounds > 0"))
    );
}
