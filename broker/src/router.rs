//! The embedded rumqttd: no listener of its own; the relay hands it each client connection
//! (the client's socket behind the host's frame inspection, `relay::link`), and it keeps
//! doing what it does well (sessions, QoS, wills, routing). The host publishes into it
//! through a local link.

use std::time::Duration;

use rumqttd::local::LinkTx;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Broker, Config, ConnectionHandler, ConnectionSettings, RouterConfig};
use tokio::sync::mpsc;

/// Why the embedded router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot open the router's local link: {0}")]
    Link(String),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Limits applied by the router.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub max_connections: usize,
    pub max_packet_size: usize,
    pub max_inflight: usize,
    pub connect_timeout: Duration,
}

/// The way into the router: each relayed connection is served by rumqttd's own connection
/// code, reading and writing the client's socket through the relay (no listener of its own).
#[derive(Clone)]
pub struct Router {
    /// MQTT 3.1 / 3.1.1 connections.
    pub v4: ConnectionHandler,
    /// MQTT 5 connections.
    pub v5: ConnectionHandler,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Router")
    }
}

/// Publishes messages into the router as the broker itself (QoS 0, as rumqttd's local links
/// only carry QoS 0; the retain flag is honoured).
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Publish>,
}

/// The host's publish queue is full or closed.
#[derive(Debug, thiserror::Error)]
#[error("the broker's publish queue is {0}")]
pub struct PublishError(&'static str);

impl Publisher {
    pub fn publish(&self, topic: &str, payload: &[u8], _qos: u8, retain: bool) -> Result<(), PublishError> {
        let publish = Publish::new(topic.as_bytes().to_vec(), payload.to_vec(), retain);
        self.tx.try_send(publish).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError("full"),
            mpsc::error::TrySendError::Closed(_) => PublishError("closed"),
        })
    }
}

async fn run_publisher(mut rx: mpsc::Receiver<Publish>, mut link: LinkTx) {
    while let Some(publish) = rx.recv().await {
        if let Err(e) = link.send(Packet::Publish(publish, None)).await {
            tracing::error!("router link closed: {e}");
            return;
        }
    }
}

/// Starts rumqttd's router (its own thread) and returns the way in for connections and for
/// the host's own publishes.
pub fn start(settings: &RouterSettings, runtime: &tokio::runtime::Handle) -> Result<(Router, Publisher), RouterError> {
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: settings.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: settings.connect_timeout.as_millis().min(u16::MAX as u128) as u16,
        max_payload_size: settings.max_packet_size,
        max_inflight_count: settings.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let broker = Broker::new(config);
    let router = Router {
        v4: broker.connection_handler(connections.clone(), false),
        v5: broker.connection_handler(connections, true),
    };
    let (link_tx, mut link_rx) = broker.link("broker-host").map_err(|e| RouterError::Link(e.to_string()))?;
    // The local link receives nothing we need (it subscribes to nothing); drain it so the
    // router never blocks on it.
    std::thread::Builder::new()
        .name("router-link".to_owned())
        .spawn(move || while link_rx.recv().is_ok() {})
        .map_err(RouterError::Thread)?;
    let (tx, rx) = mpsc::channel(4096);
    runtime.spawn(run_publisher(rx, link_tx));
    Ok((router, Publisher { tx }))
}
