//! `emqx_exhook` against a HookProvider written in Python: the README's walkthrough server,
//! `examples/exhook_server.py` (grpcio from PyPI; `.ci/run` installs it), run by `python3`
//! with stubs generated at test time from the plugin's own `.proto` by `grpc_tools.protoc`,
//! checked with real MQTT clients against the real broker.
//!
//! With `--counts FILE` the server asks for every hook of `emqx.exhook.v2` and keeps a count
//! of each event in FILE (JSON, replaced whole on each event). It refuses the login of
//! `mallory`, denies `secret/` topics and moves `raw/<x>` to `clean/<x>` with the payload in
//! capitals.
//!
//! Python 3 with grpcio and grpcio-tools is required: without them this test fails, it is not
//! skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use e2e::raw::{payload, topic, v5, Raw, C5, V5};
use e2e::{mosquitto, wait_until, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Map, Value};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `examples/exhook_server.py --counts`, running on a free loopback port; killed when dropped.
struct PythonProvider {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl PythonProvider {
    /// Generates the stubs into a temporary directory, starts the server and waits until it
    /// listens.
    fn start() -> PythonProvider {
        let dir = tempfile::Builder::new().prefix("exhook-python-").tempdir().expect("temp dir");
        let stubs = dir.path().join("stubs");
        std::fs::create_dir(&stubs).unwrap();
        let proto = root().join("plugins/emqx_exhook/proto");
        let generated = Command::new("python3")
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("--proto_path={}", proto.display()))
            .arg(format!("--python_out={}", stubs.display()))
            .arg(format!("--grpc_python_out={}", stubs.display()))
            .arg(proto.join("exhook_v2.proto"))
            .output()
            .unwrap_or_else(|e| panic!("python3: {e}: this test needs Python 3 with grpcio (.ci/run installs it)"));
        assert!(
            generated.status.success(),
            "grpc_tools.protoc failed (pip install grpcio grpcio-tools; .ci/run does it):\n{}",
            String::from_utf8_lossy(&generated.stderr)
        );

        let port = e2e::free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new("python3")
            .arg(root().join("examples/exhook_server.py"))
            .arg(port.to_string())
            .arg("--stubs")
            .arg(&stubs)
            .arg("--counts")
            .arg(dir.path().join("counts.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("python3: {e}: this test needs Python 3 with grpcio (.ci/run installs it)"));
        let mut server = PythonProvider { child, dir, port };
        let listening = format!("HookProvider listening on 127.0.0.1:{port}");
        wait_until("the Python HookProvider listening", || {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the Python HookProvider exited ({status}):\n{}", server.log());
            }
            server.log().contains(&listening).then_some(())
        });
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the server printed so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The counts file as it is now (event name to count); empty before the first event.
    fn counts(&self) -> Map<String, Value> {
        let Ok(text) = std::fs::read_to_string(self.dir.path().join("counts.json")) else {
            return Map::new();
        };
        match serde_json::from_str(&text) {
            Ok(Value::Object(counts)) => counts,
            _ => panic!("counts.json is not a JSON object: {text:?}"),
        }
    }
}

impl Drop for PythonProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("[exhook_server.py]\n{}", self.log());
        }
    }
}

/// A connected MQTT 5 client logged in as `username`.
fn client5(broker: &Broker, id: &str, username: &str) -> C5 {
    let connect = v5::Connect { keep_alive: 60, client_id: id.to_owned(), clean_start: true, properties: None };
    C5::connect_packet(broker, &v5::Packet::Connect(connect, None, Some(v5::Login::new(username, "pw")))).0
}

/// The events of the session below, and how many of each the server must get.
const EXPECTED: &[(&str, u64)] = &[
    ("provider.loaded", 1),
    // mallory twice (MQTT 5 and mosquitto_pub), the subscriber, the publisher.
    ("client.connect", 4),
    ("client.connack", 4),
    ("client.authenticate", 4),
    ("client.connected", 2),
    ("session.created", 2),
    // SUBSCRIBE secret/# (denied) and #; PUBLISH secret/x (denied), raw/greeting, nobody/1.
    ("client.authorize", 5),
    ("client.subscribe", 2),
    ("session.subscribed", 1),
    ("message.publish", 2),
    ("message.delivered", 1),
    ("message.acked", 1),
    ("client.unsubscribe", 1),
    ("session.unsubscribed", 1),
    // secret/x (denied), nobody/1 (no subscribers).
    ("message.dropped", 2),
    ("client.disconnected", 2),
    ("session.terminated", 2),
];

/// The README's Python server, asking for every hook: mallory is refused (MQTT 5 0x86, and
/// `mosquitto_pub` at 3.1.1 gets 0x04), a SUBSCRIBE and a PUBLISH under `secret/` are denied
/// (0x87, nothing delivered), `raw/greeting` arrives as `clean/greeting` in capitals, and the
/// server counted every event the session made; unloading the plugin unloads the server.
#[test]
fn a_python_hook_provider_counts_every_event_denies_rewrites_and_refuses() {
    let python = PythonProvider::start();
    let dir = DataDir::with_plugins("{emqx_exhook, true}.\n");
    dir.write(
        "broker.toml",
        &format!(
            "[auth]\nfailure_delay = 0\nmax_failures = 0\n\n[exhook]\n\
             servers = [{{ name = \"python\", url = \"{}\", proto = \"v2\" }}]\n",
            python.url()
        ),
    );
    let broker = Broker::start(&dir, &[]);
    let list = dir.ctl(&["exhook", "list"]).ok();
    assert!(list.contains("active=true") && list.contains("'message.acked' => "), "{list}");

    // mallory is refused: MQTT 5 with 0x86, MQTT 3.1.1 (mosquitto_pub) with 0x04.
    let connect = v5::Connect { keep_alive: 30, client_id: "mallory5".into(), clean_start: true, properties: None };
    let login = Some(v5::Login::new("mallory", "pw"));
    let (_refused, ack) = Raw::<V5>::connect(broker.addr, &v5::Packet::Connect(connect, None, login));
    assert_eq!(ack.code, v5::ConnectReturnCode::BadUserNamePassword);
    let port = broker.port().to_string();
    let published = mosquitto("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311", "-i", "mallory4", "-u", "mallory", "-P", "pw"])
        .args(["-t", "raw/x", "-m", "never"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&published.stderr);
    assert!(!published.status.success() && said.contains("bad user name or password"), "{said}");

    let mut subscriber = client5(&broker, "subscriber", "alice");
    let codes = subscriber.subscribe_with(vec![v5::Filter::new("secret/#", QoS::AtLeastOnce)], None);
    assert_eq!(codes, vec![v5::SubscribeReasonCode::NotAuthorized]);
    subscriber.subscribe("#", QoS::AtLeastOnce);

    let mut publisher = client5(&broker, "publisher", "bob");
    match publisher.publish_retain("secret/x", QoS::AtLeastOnce, false, "hidden") {
        Some(v5::Packet::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized),
        other => panic!("expected a PUBACK, got {other:?}"),
    }
    publisher.publish("raw/greeting", QoS::AtLeastOnce, "hello");
    // Published after the denied one, it is the first to arrive: `secret/x` never did.
    let moved = subscriber.next_publish();
    assert_eq!(topic(&moved), "clean/greeting", "secret/x denied, raw/greeting moved by the server");
    assert_eq!(payload(&moved), "HELLO", "the server's new payload");

    assert_eq!(subscriber.unsubscribe(&["#"]), vec![v5::UnsubAckReason::Success]);
    publisher.publish("nobody/1", QoS::AtMostOnce, "no subscriber: dropped");
    publisher.disconnect();
    subscriber.disconnect();

    // Notifications are sent from the plugin's queue: wait until each has arrived.
    let counts = wait_until("every event of the session counted by the Python server", || {
        let counts = python.counts();
        let count = |event: &str| counts.get(event).and_then(Value::as_u64).unwrap_or(0);
        EXPECTED.iter().all(|(event, n)| count(event) >= *n).then_some(counts)
    });
    let expected: Map<String, Value> = EXPECTED.iter().map(|(event, n)| (event.to_string(), Value::from(*n))).collect();
    assert_eq!(Value::Object(counts), Value::Object(expected), "events counted by the Python server");
    assert!(python.log().contains("refuse mallory5: mallory"), "{}", python.log());
    assert!(python.log().contains("deny publisher: secret/x"), "{}", python.log());

    dir.ctl(&["plugins", "unload", "emqx_exhook"]).ok();
    assert_eq!(python.counts().get("provider.unloaded"), Some(&Value::from(1)), "unloaded before `unload` answered");
}
