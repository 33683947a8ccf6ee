//! `bench`: an MQTT load generator (rumqttc) printing throughput and end-to-end latency.
//!
//! Scenarios: `fan-in` (N publishers → 1 subscriber), `fan-out` (1 publisher → N
//! subscribers), `many` (N publishers → N subscribers, every subscriber gets every message),
//! `idle` (N connected clients that do nothing, held for `--hold` seconds, to measure the
//! broker's memory from outside), and `connect` (N clients each connecting and disconnecting
//! `--messages` times in a row, with `--username`/`--password` if given: connections a
//! second, the cost of authentication).
//!
//! Each payload starts with the send time (nanoseconds since the run started, one clock for
//! publishers and subscribers, all in this process); latency is receive time minus send time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    FanIn,
    FanOut,
    Many,
    Idle,
    Connect,
    Subscribe,
}

#[derive(Parser, Debug)]
#[command(about = "MQTT load generator: throughput and p50/p99 latency")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Where the subscribers connect, if not to `--port` (another node of a cluster: every
    /// message then crosses between nodes).
    #[arg(long)]
    subscriber_port: Option<u16>,
    #[arg(long, value_enum, default_value = "fan-in")]
    scenario: Scenario,
    /// 0 or 1.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Publishers (fan-in, many) or subscribers (fan-out, many); connections for idle.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Payload bytes (at least 8, for the timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages each publisher sends.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Total publish rate in messages a second, spread over the publishers; 0 = as fast as
    /// possible (a throughput run; latency then includes queueing).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Name of the broker under test, printed with the figures.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Give up waiting for messages after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Idle: seconds to hold the connections.
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// Connect: the username of every CONNECT.
    #[arg(long)]
    username: Option<String>,
    /// Connect: the password of every CONNECT.
    #[arg(long)]
    password: Option<String>,
    /// Connect: each client connects with one client id every time (a device that reconnects),
    /// instead of a new id for each connection.
    #[arg(long)]
    same_ids: bool,
    /// Subscribers keep persistent sessions (MQTT 3.1.1 CleanSession 0): a broker that keeps
    /// them on disk writes each message before it acknowledges it.
    #[arg(long)]
    persistent: bool,
    /// The subscribers are the members of share group GROUP (`$share/GROUP/...`): each message
    /// reaches one of them, and the run waits for every message once.
    #[arg(long)]
    share: Option<String>,
}

fn options(args: &Args, id: String) -> MqttOptions {
    options_at(args, id, args.port)
}

fn options_at(args: &Args, id: String, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, args.host.clone(), port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    o.set_inflight(100);
    o
}

fn qos(args: &Args) -> QoS {
    if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Connects and waits for the CONNACK; the event loop then runs in `on_event` until it
/// returns false.
async fn connect(
    opts: MqttOptions,
    mut on_event: impl FnMut(Event) -> bool + Send + 'static,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("cannot connect: {e}"),
        }
    }
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    if !on_event(event) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    (client, task)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn pubsub(args: Args) {
    let run = format!("{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let (publishers, subscribers, expected_each) = match args.scenario {
        Scenario::FanIn => (args.clients, 1, args.clients * args.messages),
        Scenario::FanOut => (1, args.clients, args.messages),
        Scenario::Many => (args.clients, args.clients, args.clients * args.messages),
        Scenario::Idle | Scenario::Connect | Scenario::Subscribe => unreachable!(),
    };
    // In a share group each message reaches one member; a member may get any number of them.
    let (expected, expected_each) = match args.share {
        Some(_) => (expected_each, usize::MAX),
        None => (expected_each * subscribers, expected_each),
    };
    let start = Instant::now();
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let filter = match &args.share {
        Some(group) => format!("$share/{group}/bench/{run}/#"),
        None => format!("bench/{run}/#"),
    };

    let mut subscriber_tasks = Vec::new();
    let mut subscriber_clients = Vec::new();
    let mut all_latencies = Vec::new();
    // Nanoseconds since `start` of the last message received.
    let last_receive = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for s in 0..subscribers {
        let (suback_tx, suback_rx) = tokio::sync::oneshot::channel::<()>();
        let mut suback_tx = Some(suback_tx);
        let (received, done, last_receive) = (received.clone(), done.clone(), last_receive.clone());
        let mine = Arc::new(std::sync::Mutex::new(Vec::with_capacity(expected_each.min(expected))));
        all_latencies.push(mine.clone());
        let port = args.subscriber_port.unwrap_or(args.port);
        let mut subscriber_options = options_at(&args, format!("bench-sub-{run}-{s}"), port);
        subscriber_options.set_clean_session(!args.persistent);
        let (client, task) = connect(subscriber_options, move |event| {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = suback_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let now = start.elapsed().as_nanos() as u64;
                    let sent = p.payload.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
                    let mut mine = mine.lock().unwrap();
                    mine.push(now.saturating_sub(sent));
                    last_receive.fetch_max(now, Ordering::Relaxed);
                    if received.fetch_add(1, Ordering::Relaxed) + 1 == expected {
                        done.notify_one();
                    }
                    if mine.len() == expected_each {
                        return false;
                    }
                }
                _ => {}
            }
            true
        })
        .await;
        client.subscribe(filter.clone(), qos(&args)).await.expect("subscribe");
        suback_rx.await.expect("SUBACK");
        subscriber_clients.push(client);
        subscriber_tasks.push(task);
    }

    let mut publisher_clients = Vec::new();
    for p in 0..publishers {
        let (client, task) = connect(options(&args, format!("bench-pub-{run}-{p}")), |_| true).await;
        publisher_clients.push((client, task));
    }

    let first_publish = Instant::now();
    let mut publish_tasks = Vec::new();
    for (p, (client, _)) in publisher_clients.iter().enumerate() {
        let client = client.clone();
        let topic = format!("bench/{run}/{p}");
        let (messages, size, qos) = (args.messages, args.payload.max(8), qos(&args));
        let interval = (args.rate > 0).then(|| Duration::from_secs_f64(publishers as f64 / args.rate as f64));
        publish_tasks.push(tokio::spawn(async move {
            let mut payload = vec![0u8; size];
            let begin = tokio::time::Instant::now();
            for k in 0..messages {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(begin + interval.mul_f64(k as f64)).await;
                }
                let sent = start.elapsed().as_nanos() as u64;
                payload[..8].copy_from_slice(&sent.to_be_bytes());
                if client.publish(topic.clone(), qos, false, payload.clone()).await.is_err() {
                    return;
                }
            }
        }));
    }
    for task in publish_tasks {
        let _ = task.await;
    }
    let finished = tokio::time::timeout(Duration::from_secs(args.timeout), done.notified()).await.is_ok();
    let got = received.load(Ordering::Relaxed);
    let end = start + Duration::from_nanos(last_receive.load(Ordering::Relaxed));
    let elapsed = end.saturating_duration_since(first_publish).as_secs_f64().max(1e-9);
    let mut latencies: Vec<u64> = all_latencies.iter().flat_map(|l| l.lock().unwrap().clone()).collect();
    latencies.sort_unstable();
    let rate = got as f64 / elapsed;
    let (p50, p99) = (percentile(&latencies, 0.50) / 1000, percentile(&latencies, 0.99) / 1000);
    let scenario = format!("{:?}", args.scenario).to_lowercase();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "label": args.label, "scenario": scenario, "qos": args.qos, "clients": args.clients, "rate": args.rate,
                "payload": args.payload, "messages": expected, "received": got,
                "msgs_per_sec": rate.round(), "p50_us": p50, "p99_us": p99, "seconds": elapsed,
            })
        );
    } else {
        println!(
            "{} {scenario} qos{} clients={} payload={}B rate={}: {rate:.0} msgs/s, p50 {p50} us, p99 {p99} us, received {got}/{expected}",
            args.label, args.qos, args.clients, args.payload, args.rate
        );
    }
    for client in subscriber_clients.iter().chain(publisher_clients.iter().map(|(c, _)| c)) {
        let _ = client.try_disconnect();
    }
    if !finished {
        std::process::exit(2);
    }
}

/// Holds `clients` bare MQTT connections (CONNECT, then nothing) for `hold` seconds.
async fn idle(args: Args) {
    // SAFETY: getrlimit/setrlimit on a local rlimit value.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    let mut streams = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let mut stream = tokio::net::TcpStream::connect((args.host.as_str(), args.port)).await.expect("connect");
        let id = format!("idle-{}-{i}", std::process::id());
        let mut connect = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x0e, 0x10]; // keep-alive 3600
        connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
        connect.extend_from_slice(id.as_bytes());
        connect[1] = (connect.len() - 2) as u8;
        stream.write_all(&connect).await.expect("CONNECT");
        let mut connack = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut connack)).await;
        if !matches!(read, Ok(Ok(_))) {
            eprintln!("bench: client {i} got no CONNACK within 10 s; {} clients connected", streams.len());
            std::process::exit(2);
        }
        assert_eq!(connack[3], 0, "refused");
        streams.push(stream);
    }
    println!("connected {}", streams.len());
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 60) with optional credentials.
fn connect_packet(id: &str, username: Option<&str>, password: Option<&str>) -> Vec<u8> {
    let string = |s: &str| [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat();
    let flags = 0x02 | username.map_or(0, |_| 0x80) | password.map_or(0, |_| 0x40);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    body.extend(string(id));
    body.extend(username.map(string).unwrap_or_default());
    body.extend(password.map(string).unwrap_or_default());
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// `clients` tasks, each connecting (TCP, CONNECT, CONNACK, DISCONNECT) `messages` times in a
/// row, with a new client id each time or (`--same-ids`) its own one every time; prints
/// connections a second.
async fn connect_rate(args: Args) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (host, port, n) = (args.host.clone(), args.port, args.messages);
        let (username, password) = (args.username.clone(), args.password.clone());
        let same_ids = args.same_ids;
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let id = if same_ids {
                    format!("conn-{}-{c}", std::process::id())
                } else {
                    format!("conn-{}-{c}-{i}", std::process::id())
                };
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.expect("connect");
                let _ = stream.set_nodelay(true);
                stream
                    .write_all(&connect_packet(&id, username.as_deref(), password.as_deref()))
                    .await
                    .expect("CONNECT");
                let mut connack = [0u8; 4];
                stream.read_exact(&mut connack).await.expect("CONNACK");
                if connack[3] != 0 {
                    eprintln!("bench: CONNACK return code {} (refused)", connack[3]);
                    std::process::exit(2);
                }
                let _ = stream.write_all(&[0xe0, 0]).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("connect task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = args.clients * args.messages;
    let rate = total as f64 / elapsed;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"label": args.label, "scenario": "connect", "clients": args.clients,
                "connections": total, "connects_per_sec": rate.round(), "seconds": elapsed})
        );
    } else {
        println!(
            "{} connect clients={}: {total} connections in {elapsed:.2} s, {rate:.0} connects/s",
            args.label, args.clients
        );
    }
}

/// `clients` connections, each subscribing to `messages` filters of its own one after another
/// (each SUBSCRIBE waits for its SUBACK); prints subscribes a second and the SUBACK's p50 / p99
/// latency (in a cluster a SUBACK waits for NATS: the interest, and the shared plugin state).
async fn subscribe_rate(args: Args) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (host, port, n) = (args.host.clone(), args.port, args.messages);
        tasks.push(tokio::spawn(async move {
            let id = format!("sub-{}-{c}", std::process::id());
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.expect("connect");
            let _ = stream.set_nodelay(true);
            stream.write_all(&bench::raw::connect(&id, true)).await.expect("CONNECT");
            let mut connack = [0u8; 4];
            stream.read_exact(&mut connack).await.expect("CONNACK");
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                let sent = Instant::now();
                stream.write_all(&bench::raw::subscribe(&format!("s/{c}/{i}"), 1)).await.expect("SUBSCRIBE");
                let mut suback = [0u8; 5];
                stream.read_exact(&mut suback).await.expect("SUBACK");
                latencies.push(sent.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("subscribe task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    let rate = latencies.len() as f64 / elapsed;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"label": args.label, "scenario": "subscribe", "clients": args.clients,
                "subscribes": latencies.len(), "subscribes_per_sec": rate.round(), "p50_us": p50, "p99_us": p99})
        );
    } else {
        println!(
            "{} subscribe clients={}: {} SUBACKs in {elapsed:.2} s, {rate:.0} subscribes/s, p50 {p50} us, p99 {p99} us",
            args.label,
            args.clients,
            latencies.len()
        );
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match args.scenario {
        Scenario::Idle => runtime.block_on(idle(args)),
        Scenario::Connect => runtime.block_on(connect_rate(args)),
        Scenario::Subscribe => runtime.block_on(subscribe_rate(args)),
        _ => runtime.block_on(pubsub(args)),
    }
}
