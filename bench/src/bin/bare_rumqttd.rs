//! rumqttd 0.20 from crates.io, listening on `--listen` (MQTT 3.1.1), with settings matching
//! the broker's `[mqtt]` defaults where both have them (packet size, inflight window, CONNECT
//! timeout): the baseline the broker is measured against.

use std::collections::HashMap;
use std::net::SocketAddr;

use clap::Parser;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1884")]
    listen: SocketAddr,
}

fn main() {
    let args = Args::parse();
    // The broker's [mqtt] defaults where rumqttd has the same setting; the router's queues and
    // log segments as the broker embedded them before it had its own core.
    let server = ServerSettings {
        name: "bare-v4".into(),
        listen: args.listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 15_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    };
    println!("bare rumqttd listening on {}", args.listen);
    if let Err(e) = Broker::new(config).start() {
        eprintln!("bare_rumqttd: {e}");
        std::process::exit(1);
    }
}
