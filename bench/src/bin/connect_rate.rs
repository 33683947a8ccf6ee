//! Connections per second over plain TCP and over TLS (the ssl listener).
//!
//! Makes a CA and a server certificate (rcgen) in a temp dir, starts the release `broker`
//! with its tcp and ssl listeners on loopback and no plugins, then for each listener opens
//! `--connections` connections, `--concurrency` at a time: TCP connect (+ a full TLS
//! handshake, no session resumption: each is a new device), MQTT CONNECT, CONNACK,
//! DISCONNECT. Prints conns/s for each.
//!
//!   cargo run --release -p bench --bin connect_rate -- --connections 5000 --concurrency 16

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug)]
struct Args {
    /// Connections per listener.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The broker binary (default: beside this one).
    #[arg(long)]
    broker: Option<PathBuf>,
}

/// The broker, killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1: (CA PEM, server cert PEM, server key PEM).
fn certificates() -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    server.distinguished_name.push(DnType::CommonName, "broker");
    let key = KeyPair::generate().expect("key");
    let cert = server.signed_by(&key, &ca).expect("signed");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Starts the broker; returns it with its tcp and ssl addresses (from its log).
fn start_broker(exe: &PathBuf, dir: &std::path::Path, cert: &str, key: &str) -> (Broker, SocketAddr, SocketAddr) {
    std::fs::write(dir.join("loaded_plugins"), "").expect("loaded_plugins");
    let mut child = Command::new(exe)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("DO_NOT_TRACK", "1")
        .env("BROKER_LISTENER__SSL__BIND", "127.0.0.1:0")
        .env("BROKER_LISTENER__SSL__CERTFILE", cert)
        .env("BROKER_LISTENER__SSL__KEYFILE", key)
        // What is measured is how fast connections can be served, not the listeners' default
        // max_conn_rate (1000/s).
        .env("BROKER_MQTT__MAX_CONN_RATE", "0")
        .env("BROKER_LISTENER__SSL__MAX_CONN_RATE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let stderr = child.stderr.take().expect("stderr");
    let broker = Broker(child);
    let (mut tcp, mut ssl) = (None, None);
    let mut lines = BufReader::new(stderr).lines();
    while tcp.is_none() || ssl.is_none() {
        let line = lines.next().expect("the broker's log ended before its listeners").expect("log line");
        let addr = |prefix: &str| line.split(prefix).nth(1).and_then(|a| a.trim().parse::<SocketAddr>().ok());
        tcp = tcp.or(addr("mqtt listener on "));
        ssl = ssl.or(addr("ssl listener on "));
    }
    // Keep reading its log so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (broker, tcp.expect("tcp"), ssl.expect("ssl"))
}

/// CONNECT (MQTT 3.1.1, clean session, keep-alive 0), CONNACK, DISCONNECT.
async fn mqtt_session<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, id: usize) -> std::io::Result<()> {
    let client_id = format!("cr-{id}");
    let mut packet = vec![0x10, (12 + client_id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    packet.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    packet.extend_from_slice(client_id.as_bytes());
    io.write_all(&packet).await?;
    let mut connack = [0u8; 4];
    io.read_exact(&mut connack).await?;
    if connack != [0x20, 2, 0, 0] {
        return Err(std::io::Error::other(format!("CONNACK {connack:?}")));
    }
    io.write_all(&[0xe0, 0]).await?;
    io.shutdown().await?;
    let mut rest = Vec::new();
    let _ = io.read_to_end(&mut rest).await;
    Ok(())
}

/// Opens `total` connections to `addr`, `concurrency` at a time; returns conns/s.
async fn measure(addr: SocketAddr, tls: Option<TlsConnector>, total: usize, concurrency: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, tls) = (next.clone(), tls.clone());
            tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= total {
                        return;
                    }
                    let socket = TcpStream::connect(addr).await.expect("connect");
                    socket.set_nodelay(true).expect("nodelay");
                    let done = match &tls {
                        None => mqtt_session(socket, id).await,
                        Some(tls) => {
                            let name = ServerName::IpAddress(addr.ip().into());
                            let stream = tls.connect(name, socket).await.expect("TLS handshake");
                            mqtt_session(stream, id).await
                        }
                    };
                    done.expect("MQTT session");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let exe =
        args.broker.clone().unwrap_or_else(|| std::env::current_exe().expect("own path").with_file_name("broker"));
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = certificates();
    let (cert_path, key_path) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert_path, cert).expect("cert");
    std::fs::write(&key_path, key).expect("key");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let (_broker, tcp, ssl) = start_broker(&exe, &data, cert_path.to_str().unwrap(), key_path.to_str().unwrap());

    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("CA PEM")).expect("CA");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (n, c) = (args.connections, args.concurrency);
    // A short warm-up of each, so that neither pays for first-use costs.
    runtime.block_on(measure(tcp, None, n / 10 + 1, c));
    runtime.block_on(measure(ssl, Some(connector.clone()), n / 10 + 1, c));
    let plain = runtime.block_on(measure(tcp, None, n, c));
    let secure = runtime.block_on(measure(ssl, Some(connector), n, c));
    println!("connections: {n}, concurrency: {c} (each: connect, CONNECT, CONNACK, DISCONNECT)");
    println!("tcp: {plain:.0} conns/s");
    println!("ssl: {secure:.0} conns/s (full TLS 1.3 handshake each, ECDSA P-256 server key)");
    println!("ssl/tcp: {:.2}", secure / plain);
}
