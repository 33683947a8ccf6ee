//! Resident memory per idle connection, over the first N connections of a fresh broker.
//!
//! Starts the release `broker` in a temp data dir with its default plugins (the workspace's
//! `data/loaded_plugins` and `data/acl.conf`, as `bench/run.sh` does; `DO_NOT_TRACK=1`,
//! management and dashboard on port 0), waits until it is quiet, reads its `VmRSS`, then opens
//! `--clients` idle MQTT 3.1.1 connections from this process (clean session, keep-alive 60:
//! TCP connect, CONNECT, CONNACK, then nothing), `--concurrency` connecting at a time. Once the
//! broker's RSS has stopped moving it prints (RSS after − RSS before) / clients in KiB, with
//! the RSS at a few points on the way. Nothing warms the broker up first: the figure is what
//! the first N clients cost.
//!
//!   cargo build --release --workspace
//!   ulimit -n 65536   # above --clients (this process holds one descriptor per client)
//!   target/release/idle_memory --clients 10000 --concurrency 1
//!   target/release/idle_memory --clients 10000 --concurrency 200
//!   target/release/idle_memory --no-plugins      # the broker alone
//!   target/release/idle_memory --pid 1234 --port 1883 --label mosquitto   # a broker started fresh elsewhere
//!
//! The clients live in this process; only the broker's RSS is counted.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Resident memory per idle MQTT connection on a fresh broker")]
struct Args {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Start the broker with no plugins instead of the default ones.
    #[arg(long)]
    no_plugins: bool,
    /// The broker binary (default: beside this one).
    #[arg(long)]
    broker: Option<PathBuf>,
    /// Where `loaded_plugins` and `acl.conf` are copied from.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data"))]
    data: PathBuf,
    /// Measure a broker that is already running (started fresh by the caller: mosquitto,
    /// rumqttd, ...) with this process id, listening on `--port`, instead of starting one.
    #[arg(long, requires = "port")]
    pid: Option<u32>,
    /// With `--pid`: the port it listens on (loopback).
    #[arg(long)]
    port: Option<u16>,
    /// A name for the broker in the JSON output.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The broker, killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on (just now).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

fn start_broker(exe: &Path, data_dir: &Path, port: u16) -> Broker {
    let child = Command::new(exe)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .env("DO_NOT_TRACK", "1")
        .env("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0")
        .env("BROKER_DASHBOARD__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    Broker(child)
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("broker status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Waits until the broker's RSS has not moved for `quiet` (at most `limit`); returns it then.
/// (CPU time is no sign of quiet: the broker's periodic tasks tick on.)
fn settle(pid: u32, quiet: Duration, limit: Duration) -> u64 {
    let started = Instant::now();
    let (mut rss, mut since) = (status_kib(pid, "VmRSS"), Instant::now());
    while since.elapsed() < quiet && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let now = status_kib(pid, "VmRSS");
        if now != rss {
            (rss, since) = (now, Instant::now());
        }
    }
    rss
}

/// An MQTT 3.1.1 CONNECT: clean session, keep-alive 60.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut packet = vec![0x10, (12 + client_id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    packet.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    packet.extend_from_slice(client_id.as_bytes());
    packet
}

/// Opens `total` idle connections, `concurrency` at a time; returns them (to keep them open).
async fn connect_all(
    addr: SocketAddr,
    total: usize,
    concurrency: usize,
    checkpoints: Arc<Checkpoints>,
) -> Vec<TcpStream> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, checkpoints) = (next.clone(), checkpoints.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return held;
                    }
                    let mut stream = TcpStream::connect(addr).await.expect("connect");
                    stream.write_all(&connect_packet(&format!("idle-{i}"))).await.expect("CONNECT");
                    let mut connack = [0u8; 4];
                    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut connack)).await;
                    match read {
                        Ok(Ok(_)) if connack == [0x20, 2, 0, 0] => {}
                        other => panic!("client {i}: no CONNACK accepting it ({other:?}, {connack:?})"),
                    }
                    held.push(stream);
                    checkpoints.connected();
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for worker in workers {
        all.extend(worker.await.expect("worker"));
    }
    all
}

/// The broker's RSS when 10 %, 25 %, 50 % … of the clients are connected.
struct Checkpoints {
    pid: u32,
    total: usize,
    done: AtomicUsize,
    seen: std::sync::Mutex<Vec<(usize, u64)>>,
}

impl Checkpoints {
    fn connected(&self) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if [1, 10, 4, 2].iter().any(|d| n == self.total / d) && n > 0 {
            self.seen.lock().expect("checkpoints").push((n, status_kib(self.pid, "VmRSS")));
        }
    }
}

fn main() {
    let args = Args::parse();
    raise_fd_limit(args.clients);
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, pid, port) = match (args.pid, args.port) {
        (Some(pid), Some(port)) => (None, pid, port),
        _ => {
            let exe = args
                .broker
                .clone()
                .unwrap_or_else(|| std::env::current_exe().expect("own path").with_file_name("broker"));
            if args.no_plugins {
                std::fs::write(dir.path().join("loaded_plugins"), "").expect("loaded_plugins");
            } else {
                for file in ["loaded_plugins", "acl.conf"] {
                    std::fs::copy(args.data.join(file), dir.path().join(file))
                        .unwrap_or_else(|e| panic!("copy {}: {e}", args.data.join(file).display()));
                }
            }
            let port = free_port();
            let broker = start_broker(&exe, dir.path(), port);
            let pid = broker.0.id();
            (Some(broker), pid, port)
        }
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the broker does not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // That probe was a connection that never sent CONNECT: let the broker drop it and settle.
    let before = settle(pid, Duration::from_secs(1), Duration::from_secs(20));

    let checkpoints =
        Arc::new(Checkpoints { pid, total: args.clients, done: AtomicUsize::new(0), seen: Default::default() });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let started = Instant::now();
    let streams = runtime.block_on(connect_all(addr, args.clients, args.concurrency, checkpoints.clone()));
    let connect_secs = started.elapsed().as_secs_f64();
    let after = settle(pid, Duration::from_secs(2), Duration::from_secs(60));
    let per_client = (after as f64 - before as f64) / args.clients as f64;
    let plugins = match (args.pid, args.no_plugins) {
        (Some(_), _) => "as started by the caller",
        (None, true) => "no plugins",
        (None, false) => "default plugins",
    };
    let seen = checkpoints.seen.lock().expect("checkpoints").clone();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"label": args.label, "scenario": "idle", "plugins": plugins, "clients": args.clients,
                "concurrency": args.concurrency, "rss_before_kib": before, "rss_after_kib": after,
                "kib_per_client": (per_client * 100.0).round() / 100.0, "connect_seconds": connect_secs,
                "rss_on_the_way": seen})
        );
    } else {
        println!(
            "{} ({plugins}), fresh: {} idle MQTT 3.1.1 clients, {} connecting at a time, in {connect_secs:.1} s",
            args.label, args.clients, args.concurrency
        );
        for (n, rss) in &seen {
            println!(
                "  {n:>6} connected: RSS {rss} KiB ({:.2} KiB a client so far)",
                (*rss as f64 - before as f64) / *n as f64
            );
        }
        println!("RSS {before} -> {after} KiB (settled): {per_client:.2} KiB a client");
        if args.pid.is_none() {
            println!(
                "reproduce: cargo build --release --workspace && target/release/idle_memory --clients {} --concurrency {}{}",
                args.clients,
                args.concurrency,
                if args.no_plugins { " --no-plugins" } else { "" }
            );
        }
    }
    drop(streams);
    drop(broker);
}

/// Raises this process's descriptor limit to its hard limit; fails early if that cannot hold
/// the clients.
fn raise_fd_limit(clients: usize) {
    // SAFETY: getrlimit/setrlimit on a local rlimit value.
    let limit = unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        limit.rlim_cur
    };
    if (limit as usize) < clients + 64 {
        eprintln!("idle_memory: `ulimit -n` is {limit}, below {clients} clients (+64); raise it (ulimit -Hn too)");
        std::process::exit(2);
    }
}
