//! The embedded rumqttd: it listens only on internal loopback ports, behind the relay, and
//! keeps doing what it does well (sessions, QoS, wills, routing). The host publishes into it
//! through a local link.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttd::local::LinkTx;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::sync::mpsc;

/// Why the embedded router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot reserve an internal port: {0}")]
    Port(std::io::Error),
    #[error("cannot open the router's local link: {0}")]
    Link(String),
    #[error("the embedded rumqttd did not start listening on {0} within {1:?}")]
    NotListening(SocketAddr, Duration),
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

/// The router's internal listeners.
#[derive(Debug, Clone, Copy)]
pub struct Router {
    /// MQTT 3.1 / 3.1.1 listener.
    pub v4: SocketAddr,
    /// MQTT 5 listener.
    pub v5: SocketAddr,
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

/// Whether rumqttd answers a real CONNECT on `addr` with a CONNACK (then disconnects).
fn probe(addr: SocketAddr, level: u8) -> bool {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    // A fresh client id each time: rumqttd keeps per-id state after a disconnect.
    let id = format!("broker-probe-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
    let mut connect = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 10];
    if level == 5 {
        connect.push(0); // no properties
    }
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    connect[1] = (connect.len() - 2) as u8;
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(&connect)?;
        let mut header = [0u8; 2];
        stream.read_exact(&mut header)?;
        let mut rest = vec![0u8; header[1] as usize];
        stream.read_exact(&mut rest)?;
        stream.write_all(&[0xe0, 0])?;
        // Read to the end so closing does not reset the connection.
        let _ = stream.read_to_end(&mut rest);
        Ok(header[0] == 0x20 && rest.get(1) == Some(&0))
    };
    attempt().unwrap_or(false)
}

fn free_loopback_port() -> Result<SocketAddr, RouterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(RouterError::Port)?;
    listener.local_addr().map_err(RouterError::Port)
}

fn server(name: &str, listen: SocketAddr, settings: &RouterSettings) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: settings.connect_timeout.as_millis().min(u16::MAX as u128) as u16,
            max_payload_size: settings.max_packet_size,
            max_inflight_count: settings.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
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

/// Starts rumqttd on two free loopback ports and waits until both accept connections.
pub fn start(settings: &RouterSettings, runtime: &tokio::runtime::Handle) -> Result<(Router, Publisher), RouterError> {
    let router = Router { v4: free_loopback_port()?, v5: free_loopback_port()? };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: settings.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("v4".to_owned(), server("internal-v4", router.v4, settings))])),
        v5: Some(HashMap::from([("v5".to_owned(), server("internal-v5", router.v5, settings))])),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    let (link_tx, mut link_rx) = broker.link("broker-host").map_err(|e| RouterError::Link(e.to_string()))?;
    std::thread::Builder::new()
        .name("rumqttd".to_owned())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("embedded rumqttd stopped: {e}");
            }
        })
        .map_err(RouterError::Thread)?;
    // The local link receives nothing we need (it subscribes to nothing); drain it so the
    // router never blocks on it.
    std::thread::Builder::new()
        .name("router-link".to_owned())
        .spawn(move || while link_rx.recv().is_ok() {})
        .map_err(RouterError::Thread)?;
    let (tx, rx) = mpsc::channel(4096);
    runtime.spawn(run_publisher(rx, link_tx));

    let timeout = Duration::from_secs(10);
    for (addr, level) in [(router.v4, 4), (router.v5, 5)] {
        let deadline = Instant::now() + timeout;
        while !probe(addr, level) {
            if Instant::now() > deadline {
                return Err(RouterError::NotListening(addr, timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok((router, Publisher { tx }))
}
