//! Test harness: starts the real `broker` binary (built by `cargo build --workspace`, in the
//! profile the tests run in) on a free loopback port with a temporary data directory, and
//! talks to it with real MQTT clients and the real `broker ctl`.
//!
//! No sleeps: every wait polls a condition against a deadline.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod nats;
pub mod pki;
pub mod proxy;
pub mod raw;
pub mod receiver;
pub mod wire;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

/// The lines `child` writes to its (piped) stderr, collected as they come by a thread of their
/// own, and echoed to the test's output with `[label]` in front.
pub fn collect_stderr(child: &mut Child, label: &'static str) -> Arc<Mutex<Vec<String>>> {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr piped");
    let collected = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{label}] {line}");
            collected.lock().unwrap().push(line);
        }
    });
    logs
}

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Where the built `broker` and plugin libraries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BROKER_BIN_DIR") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join(if cfg!(debug_assertions) { "debug" } else { "release" })
}

/// The `broker` executable.
pub fn broker_exe() -> PathBuf {
    let exe = bin_dir().join("broker");
    assert!(
        exe.exists(),
        "{} is missing: build the workspace first (`cargo build --release --workspace`)",
        exe.display()
    );
    exe
}

/// Raises this process's open-file limit to its hard maximum (tests with many clients).
pub fn raise_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A free loopback port (bound, then released for the broker to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A number unique within this test process (for client ids).
pub fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`] saying `what`.
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `bytes` (a topic or a payload) as text, invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A new data directory whose `loaded_plugins` is `plugins`, and a broker started in it with
/// the extra environment `env`.
pub fn start_broker(plugins: &str, env: &[(&str, &str)]) -> (DataDir, Broker) {
    let dir = DataDir::with_plugins(plugins);
    let broker = Broker::start(&dir, env);
    (dir, broker)
}

/// The counter `name` (e.g. `sessions.count`) in `stats`, the output of
/// `broker ctl broker stats` (lines `name : value`). Panics if it is not there.
pub fn stat_in(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name).and_then(|(_, v)| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in:\n{stats}"))
}

/// The gauges and counters of the broker running in `dir`, as `broker ctl broker stats` and
/// `broker ctl broker metrics` print them (`name : value` lines), read now.
pub fn counters(dir: &DataDir) -> String {
    dir.ctl(&["broker", "stats"]).ok() + "\n" + &dir.ctl(&["broker", "metrics"]).ok()
}

/// The gauge or counter `name` (e.g. `sessions.count`, `messages.received`) of the broker
/// running in `dir`, read now (see [`counters`]).
pub fn stat(dir: &DataDir, name: &str) -> u64 {
    stat_in(&counters(dir), name)
}

/// Waits until the counter `name` of the broker running in `dir` is `value` (see [`stat`]).
pub fn wait_for_stat(dir: &DataDir, name: &str, value: u64) {
    wait_until(&format!("{name} = {value}"), || (stat(dir, name) == value).then_some(()));
}

/// A temporary data directory, kept across broker restarts.
pub struct DataDir {
    dir: tempfile::TempDir,
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDir {
    pub fn new() -> DataDir {
        DataDir { dir: tempfile::Builder::new().prefix("broker-test-").tempdir().expect("temp dir") }
    }

    /// A data directory whose `loaded_plugins` is `text`.
    pub fn with_plugins(text: &str) -> DataDir {
        let dir = DataDir::new();
        dir.write("loaded_plugins", text);
        dir
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.file(name), text).expect("write test file");
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(name)).unwrap_or_default()
    }

    /// The bytes of the broker's store file (`store/broker.redb`), read now (empty if there is
    /// none). The store keeps values as they are written, so a test can look for what a plugin
    /// stored, or make sure something (a password) never was.
    pub fn store_bytes(&self) -> Vec<u8> {
        std::fs::read(self.file("store").join("broker.redb")).unwrap_or_default()
    }

    /// Whether the store file holds `needle` (see [`DataDir::store_bytes`]).
    pub fn store_contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.store_bytes().windows(needle.len()).any(|w| w == needle)
    }

    /// Runs `broker ctl ARGS` against this data directory.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let output = Command::new(broker_exe())
            .arg("--data-dir")
            .arg(self.path())
            .arg("ctl")
            .args(args)
            .output()
            .expect("run broker ctl");
        CtlOutput::from(output)
    }

    /// The address and port `broker ctl clients list --json` gives the connected client
    /// `client_id`.
    pub fn listed_address(&self, client_id: &str) -> (String, u64) {
        let clients: serde_json::Value = serde_json::from_str(&self.ctl(&["clients", "list", "--json"]).ok()).unwrap();
        let client = clients.as_array().unwrap().iter().find(|c| c["clientid"] == client_id).expect("listed");
        (client["ip_address"].as_str().unwrap().to_owned(), client["port"].as_u64().unwrap())
    }
}

/// What `broker ctl` printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CtlOutput {
    fn from(o: Output) -> Self {
        CtlOutput {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl CtlOutput {
    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert!(self.success, "ctl failed: {}", self.stderr);
        self.stdout
    }

    /// Asserts failure and returns stderr.
    pub fn err(self) -> String {
        assert!(!self.success, "ctl succeeded unexpectedly: {}", self.stdout);
        self.stderr
    }
}

/// A running broker process. Killed when dropped.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    data_dir: PathBuf,
}

impl Broker {
    /// Starts the broker on a free loopback port with `data_dir` and extra environment, and
    /// waits until its MQTT listener is up (plugins are started before it listens).
    pub fn start(data_dir: &DataDir, env: &[(&str, &str)]) -> Broker {
        Self::start_with_args(data_dir, env, &[])
    }

    pub fn start_with_args(data_dir: &DataDir, env: &[(&str, &str)], args: &[&str]) -> Broker {
        Self::start_command(data_dir, env, "127.0.0.1:0", args, |_| {})
    }

    /// [`Broker::start`] with the MQTT listener on `listen` (a port a test restarts it on).
    pub fn start_on(data_dir: &DataDir, env: &[(&str, &str)], listen: SocketAddr) -> Broker {
        Self::start_command(data_dir, env, &listen.to_string(), &[], |_| {})
    }

    /// Starts the broker with every file it writes limited to `bytes` (RLIMIT_FSIZE): a write
    /// past it fails as on a full disk, until [`Broker::lift_file_size_limit`].
    pub fn start_with_file_size_limit(data_dir: &DataDir, env: &[(&str, &str)], bytes: u64) -> Broker {
        Self::start_command(data_dir, env, "127.0.0.1:0", &[], |command| {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; it runs in the child between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    // Only the soft limit: the same user may lift it later (prlimit).
                    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    fn start_command(
        data_dir: &DataDir,
        env: &[(&str, &str)],
        listen: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Broker {
        let mut command = Command::new(broker_exe());
        command
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--listen", listen])
            .args(args)
            .env("RUST_LOG", "info")
            // No test reaches the internet: telemetry goes to a closed local port unless a
            // test points it at its own receiver.
            .env("BROKER_TELEMETRY__URL", "http://127.0.0.1:9/api/telemetry")
            .env_remove("BROKER_PLUGINS_DIR")
            .env_remove("DO_NOT_TRACK")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        configure(&mut command);
        let mut child = command.spawn().expect("spawn broker");
        let logs = collect_stderr(&mut child, "broker");
        let mut broker =
            Broker { child, addr: "0.0.0.0:0".parse().unwrap(), logs, data_dir: data_dir.path().to_owned() };
        broker.addr = wait_until("the broker's mqtt listener", || {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("broker exited with {status} before listening; log:\n{}", broker.logs().join("\n"));
            }
            broker.logs().iter().find_map(|l| l.split("mqtt listener on ").nth(1).and_then(|a| a.trim().parse().ok()))
        });
        broker
    }

    /// Lifts the file size limit of [`Broker::start_with_file_size_limit`], as freeing space on
    /// a full disk would.
    pub fn lift_file_size_limit(&self) {
        let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: prlimit on our child's pid with a valid new limit and no old-limit pointer.
        let done =
            unsafe { libc::prlimit(self.pid() as libc::pid_t, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
        assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        wait_until(&format!("a log line containing {needle:?}"), || {
            self.logs().into_iter().find(|l| l.contains(needle))
        })
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the broker with SIGTERM and waits for it to exit.
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + DEADLINE;
        while self.is_running() {
            assert!(Instant::now() < deadline, "broker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker with SIGKILL (a crash) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -9`s the broker (SIGKILL: no shutdown, nothing flushed or closed) and starts a new
    /// one on the same data directory with `env`, as a supervisor restarts a crashed broker.
    pub fn kill9_and_restart(self, data_dir: &DataDir, env: &[(&str, &str)]) -> Broker {
        assert_eq!(self.data_dir.as_path(), data_dir.path(), "restarted on the same data directory");
        // `Child::kill` is SIGKILL on Unix.
        self.kill();
        Broker::start(data_dir, env)
    }

    /// The address a log line `... <prefix><addr>...` names, waiting for the line.
    pub fn logged_addr(&self, prefix: &str) -> SocketAddr {
        let line = self.wait_for_log(prefix);
        let rest = line.split(prefix).nth(1).expect("prefix in line");
        let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
        addr.parse().unwrap_or_else(|_| panic!("no address in {line:?}"))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real MQTT client (rumqttc) whose event loop runs in a task; events arrive on a channel.
pub struct Client {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Event>,
    /// Messages that arrived while waiting for something else, kept for `receive`.
    backlog: std::collections::VecDeque<Event>,
    task: tokio::task::JoinHandle<()>,
}

/// Options for a client of `broker`.
pub fn options(broker: &Broker, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

impl Client {
    /// Connects with a clean session and waits for the CONNACK.
    pub async fn connect(broker: &Broker, id: &str) -> Client {
        Client::connect_with(options(broker, id)).await
    }

    /// Connects with `options` and waits for the CONNACK.
    pub async fn connect_with(options: MqttOptions) -> Client {
        let (client, eventloop) = AsyncClient::new(options, 100);
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_eventloop(eventloop, tx));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Incoming(Packet::ConnAck(ack)))) => {
                    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "connection refused");
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("connection failed before CONNACK"),
                Err(_) => panic!("no CONNACK within {DEADLINE:?}"),
            }
        }
        Client { client, events, backlog: Default::default(), task }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.wait_for("SUBACK", |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await;
    }

    /// Waits for an event matching `pred`. Other events are dropped, except incoming
    /// messages, which are kept for a later `receive`.
    pub async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(i).expect("index in range");
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if pred(&event) => return event,
                Ok(Some(event @ Event::Incoming(Packet::Publish(_)))) => self.backlog.push_back(event),
                Ok(Some(_)) => {}
                Ok(None) => panic!("connection closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// A PUBLISH that has already arrived, if any (no waiting).
    pub fn try_receive(&mut self) -> Option<Publish> {
        loop {
            let event = match self.backlog.pop_front() {
                Some(event) => event,
                None => self.events.try_recv().ok()?,
            };
            if let Event::Incoming(Packet::Publish(p)) = event {
                return Some(p);
            }
        }
    }

    /// Receives `n` PUBLISH packets (waiting up to the deadline).
    pub async fn receive(&mut self, n: usize) -> Vec<Publish> {
        let mut received = Vec::with_capacity(n);
        while received.len() < n {
            let event = self
                .wait_for(&format!("message {} of {n}", received.len() + 1), |e| {
                    matches!(e, Event::Incoming(Packet::Publish(_)))
                })
                .await;
            if let Event::Incoming(Packet::Publish(p)) = event {
                received.push(p);
            }
        }
        received
    }

    /// Publishes and, for QoS 1/2, waits for the broker's acknowledgement.
    pub async fn publish_acked(&mut self, topic: &str, qos: QoS, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, false, payload.into()).await.expect("publish");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await;
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |e| matches!(e, Event::Incoming(Packet::PubComp(_)))).await;
            }
        }
    }

    /// Sends DISCONNECT and waits for the connection to end.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.events.recv()).await {}
        self.task.abort();
    }

    /// Drops the connection without DISCONNECT, as a crashed client would.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn run_eventloop(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Event>) {
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if tx.send(event).is_err() {
                    return;
                }
            }
            // Never reconnect behind a test's back: the channel closes instead, and the
            // reason is printed for the failing test's output.
            Err(e) => {
                eprintln!("[client] connection ended: {e}");
                return;
            }
        }
    }
}

/// Runs `mosquitto_sub`/`mosquitto_pub` style commands, failing clearly if missing.
pub fn mosquitto(program: &str) -> Command {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {program}")).output();
    assert!(
        found.map(|o| o.status.success()).unwrap_or(false),
        "{program} is not installed (apt-get install mosquitto-clients; .ci/run does it)"
    );
    Command::new(program)
}

/// Reads the hook_recorder's JSON-lines file.
pub fn recorded_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A client of `emqx_management`'s REST API at `base` (`http://127.0.0.1:PORT`).
pub struct ManagementApi {
    pub base: String,
    pub http: reqwest::Client,
}

impl ManagementApi {
    /// A client of the API at `base`, over a default HTTP client.
    pub fn new(base: String) -> ManagementApi {
        ManagementApi { base, http: reqwest::Client::new() }
    }

    /// Calls `method path` with HTTP basic `auth` (none when `None`) and a JSON `body`;
    /// the status and the JSON answer (which must be JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some((user, password)) = auth {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API reachable");
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body for {path}: {text:?}")))
    }
}
