//! Publish→deliver latency of an unrelated pair while clients wait on a slow ACL service.
//!
//! Starts an HTTP ACL service on loopback (in this process) that answers `acl_req` for
//! topics under `slow/` after `--delay` (default 3 s) and every other question at once (200
//! `ignore`), and the release `broker` with only `emqx_auth_http` pointed at it. Then, twice:
//! a subscriber and a publisher (MQTT 3.1.1, QoS 1) exchange `--messages` messages one at a
//! time, measuring publish→deliver for each; first with the broker otherwise idle, then with
//! `--waiting` clients each publishing QoS 1 to a new `slow/...` topic (so no cache answers)
//! and waiting for its PUBACK, over and over. Prints p50 / p99 / max of both, and the ratio of
//! the p99s. No assertions: on a shared machine the figures are indicative.
//!
//!   cargo run --release -p bench --bin slow_acl -- --waiting 20 --messages 300

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
struct Args {
    /// Clients waiting on the slow ACL service at any time.
    #[arg(long, default_value_t = 20)]
    waiting: usize,
    /// How long the service takes to answer about a `slow/` topic, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    delay_ms: u64,
    /// Messages the measured pair exchanges in each phase.
    #[arg(long, default_value_t = 300)]
    messages: usize,
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

/// Answers one HTTP/1.1 request on `stream`: after `delay` when its body or query asks about
/// a `slow/` topic, at once otherwise; 200 `ignore` (no opinion) either way.
async fn answer(mut stream: TcpStream, delay: Duration, asked: Arc<AtomicU64>) {
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&chunk[..n]);
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if request.len() < end + 4 + length {
            continue;
        }
        let text = String::from_utf8_lossy(&request[..end + 4 + length]).into_owned();
        request.drain(..end + 4 + length);
        asked.fetch_add(1, Ordering::Relaxed);
        if text.contains("slow%2F") || text.contains("slow/") {
            tokio::time::sleep(delay).await;
        }
        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\ncontent-type: text/plain\r\n\r\nignore";
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Starts the ACL service; its address.
async fn acl_service(delay: Duration, asked: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the ACL service");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, delay, asked.clone()));
        }
    });
    addr
}

/// Starts the broker with `emqx_auth_http` asking `service` about every publish; its address.
fn start_broker(exe: &PathBuf, dir: &std::path::Path, service: SocketAddr) -> (Broker, SocketAddr) {
    std::fs::write(dir.join("loaded_plugins"), "{emqx_auth_http, true}.\n").expect("loaded_plugins");
    let toml = format!(
        "[auth_http]\ntimeout = \"30s\"\ncache_ttl = \"0s\"\n[auth_http.auth_req]\nurl = \"\"\n\
         [auth_http.super_req]\nurl = \"\"\n[auth_http.acl_req]\nurl = \"http://{service}/mqtt/acl\"\n"
    );
    std::fs::write(dir.join("broker.toml"), toml).expect("broker.toml");
    let mut child = Command::new(exe)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("DO_NOT_TRACK", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let stderr = child.stderr.take().expect("stderr");
    let broker = Broker(child);
    let mut lines = BufReader::new(stderr).lines();
    let tcp = loop {
        let line = lines.next().expect("the broker's log ended before its listener").expect("log line");
        if let Some(addr) = line.split("mqtt listener on ").nth(1).and_then(|a| a.trim().parse().ok()) {
            break addr;
        }
    };
    // Keep reading its log so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (broker, tcp)
}

fn client(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(60));
    AsyncClient::new(options, 100)
}

/// Polls `events` until a CONNACK.
async fn connected(events: &mut EventLoop) {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await.expect("connect") {
            return;
        }
    }
}

/// A client that publishes QoS 1 to a new `slow/` topic and waits for its PUBACK, until
/// `stop`.
async fn waiting_client(addr: SocketAddr, i: usize, stop: Arc<AtomicBool>) {
    let (client, mut events) = client(addr, &format!("slow-{i}"));
    connected(&mut events).await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        client.publish(format!("slow/{i}/{n}"), QoS::AtLeastOnce, false, "wait").await.expect("publish");
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("slow-{i}: {e}"),
            }
        }
    }
}

/// The pair exchanges `messages` messages one at a time; the publish→deliver latencies.
async fn exchange(addr: SocketAddr, phase: &str, messages: usize) -> Vec<Duration> {
    let (sub, mut sub_events) = client(addr, &format!("pair-sub-{phase}"));
    connected(&mut sub_events).await;
    sub.subscribe("chat", QoS::AtLeastOnce).await.expect("subscribe");
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_events.poll().await.expect("suback") {
            break;
        }
    }
    let (publisher, mut pub_events) = client(addr, &format!("pair-pub-{phase}"));
    connected(&mut pub_events).await;
    tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
    let mut latencies = Vec::with_capacity(messages);
    for n in 0..messages {
        let sent = Instant::now();
        publisher.publish("chat", QoS::AtLeastOnce, false, n.to_string()).await.expect("publish");
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_events.poll().await.expect("deliver") {
                if p.payload == n.to_string().as_bytes() {
                    latencies.push(sent.elapsed());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn report(phase: &str, mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    let p99 = percentile(&latencies, 0.99);
    println!(
        "{phase}: {} messages, p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        p99,
        latencies.last().copied().unwrap_or_default()
    );
    p99
}

fn main() {
    let args = Args::parse();
    let exe = args
        .broker
        .clone()
        .unwrap_or_else(|| std::env::current_exe().expect("current exe").parent().expect("bin dir").join("broker"));
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let asked = Arc::new(AtomicU64::new(0));
    let service = runtime.block_on(acl_service(Duration::from_millis(args.delay_ms), asked.clone()));
    let (_broker, addr) = start_broker(&exe, dir.path(), service);

    let idle = runtime.block_on(exchange(addr, "idle", args.messages));
    let stop = Arc::new(AtomicBool::new(false));
    let waiting: Vec<_> = (0..args.waiting).map(|i| runtime.spawn(waiting_client(addr, i, stop.clone()))).collect();
    // Every waiting client has its first question at the service before measuring.
    let before = asked.load(Ordering::Relaxed);
    runtime.block_on(async {
        while asked.load(Ordering::Relaxed) < before + args.waiting as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let busy = runtime.block_on(exchange(addr, "busy", args.messages));
    stop.store(true, Ordering::Relaxed);
    let questions = asked.load(Ordering::Relaxed) - before;

    println!(
        "ACL service: {} ms for slow/ topics; {} clients waiting on it during the busy phase ({questions} questions)",
        args.delay_ms, args.waiting
    );
    let idle = report("idle", idle);
    let busy = report(&format!("{} waiting", args.waiting), busy);
    println!("p99 busy / idle: {:.2}", busy.as_secs_f64() / idle.as_secs_f64());
    for w in waiting {
        w.abort();
    }
}
