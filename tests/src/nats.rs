//! A real `nats-server` (Debian's, with JetStream) on a loopback port chosen by the server, for
//! the cluster tests.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::{collect_stderr, wait_until};

/// A running `nats-server`; killed when dropped.
pub struct Nats {
    child: Child,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its monitoring port on 127.0.0.1 (`/connz`, `/subsz`).
    pub monitor_port: u16,
    logs: Arc<Mutex<Vec<String>>>,
    _store: tempfile::TempDir,
}

impl Nats {
    /// Starts `nats-server -js` on free loopback ports and waits until it takes clients.
    pub fn start() -> Nats {
        Nats::start_on("-1")
    }

    /// Starts `nats-server -js` with client port `port` (`-1`: a free one).
    pub fn start_on(port: &str) -> Nats {
        Nats::launch(port, true)
    }

    /// Starts `nats-server` without JetStream, on free loopback ports.
    pub fn start_without_jetstream() -> Nats {
        Nats::launch("-1", false)
    }

    fn launch(port: &str, jetstream: bool) -> Nats {
        let store = tempfile::tempdir().expect("a JetStream directory");
        let (child, logs) = spawn(port, "-1", jetstream.then(|| store.path()));
        let port_after = |needle: &str| {
            let logs = logs.clone();
            let needle = needle.to_owned();
            wait_until(&needle.clone(), move || {
                let logs = logs.lock().unwrap();
                logs.iter().find_map(|l| l.split(&needle).nth(1)?.trim().rsplit(':').next()?.parse().ok())
            })
        };
        let monitor_port = port_after("Starting http monitor on ");
        let port = port_after("Listening for client connections on ");
        let nats = Nats { child, port, monitor_port, logs, _store: store };
        nats.wait_ready();
        nats
    }

    /// Kills the server (`kill -9`): the nodes lose it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same ports and JetStream directory.
    pub fn restart(&mut self) {
        self.kill();
        let (child, logs) = spawn(&self.port.to_string(), &self.monitor_port.to_string(), Some(self._store.path()));
        (self.child, self.logs) = (child, logs);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        wait_until("nats-server ready", || {
            self.logs.lock().unwrap().iter().any(|l| l.contains("Server is ready")).then_some(())
        });
    }

    /// Its URL, for `BROKER_CLUSTER__NATS`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// What it logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The subjects of the subscriptions the server holds now, from its `/subsz` monitoring
    /// page (a subject twice if two subscriptions hold it).
    pub fn subscribed_subjects(&self) -> Vec<String> {
        let page = self.monitoring("/subsz?subs=1&limit=100000");
        let list = page["subscriptions_list"].as_array().cloned().unwrap_or_default();
        list.iter().filter_map(|s| s["subject"].as_str().map(str::to_owned)).collect()
    }

    /// How many messages the JetStream stream whose name starts with `name` holds now
    /// (`/jsz`); `None` when there is no such stream.
    pub fn stream_messages(&self, name: &str) -> Option<u64> {
        self.stream_state(name)?["messages"].as_u64()
    }

    /// The sequence number of the last message the JetStream stream whose name starts with
    /// `name` took (`/jsz`; a KV bucket's stream is `KV_<bucket>`): it grows with every write.
    pub fn stream_last_seq(&self, name: &str) -> Option<u64> {
        self.stream_state(name)?["last_seq"].as_u64()
    }

    /// The `state` of the JetStream stream whose name starts with `name`, from `/jsz`.
    fn stream_state(&self, name: &str) -> Option<serde_json::Value> {
        let page = self.monitoring("/jsz?streams=true");
        let accounts = page["account_details"].as_array().cloned().unwrap_or_default();
        let streams = accounts.iter().flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default());
        let mut found = streams.into_iter().filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with(name)));
        let stream = found.next()?;
        assert!(found.next().is_none(), "more than one stream named {name}...");
        Some(stream["state"].clone())
    }

    /// A page of the server's HTTP monitoring, as JSON.
    fn monitoring(&self, path: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.monitor_port)).expect("nats monitoring");
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("request to nats monitoring");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("nats monitoring answer");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
    }
}

/// `nats-server`: from `PATH`, or where Debian's package puts it (`/usr/sbin`, which is not on
/// an ordinary user's `PATH`).
fn program() -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| std::path::PathBuf::from("/usr/sbin/nats-server"))
}

/// Runs `nats-server` on 127.0.0.1 (`-1`: a port of its choosing), with JetStream in `store`
/// if given, its log lines collected.
fn spawn(port: &str, monitor_port: &str, store: Option<&std::path::Path>) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut command = Command::new(program());
    command.args(["-a", "127.0.0.1", "-p", port, "-m", monitor_port]);
    if let Some(store) = store {
        command.args(["-js", "-sd"]).arg(store);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server (apt-get install nats-server)");
    let logs = collect_stderr(&mut child, "nats");
    (child, logs)
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
