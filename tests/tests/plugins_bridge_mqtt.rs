//! `emqx_bridge_mqtt` end to end: two real brokers on loopback, the local one with the bridge
//! loaded and a plain remote one on a fixed port (so it can be stopped and started again where
//! the bridge looks for it), and real MQTT clients (rumqttc) on both.
//!
//! Covered: forwarding under the mountpoint at each QoS (retain kept), bringing remote messages
//! in (under `receive_mountpoint`), no loop when `forwards` and `subscription` overlap (MQTT
//! 3.1.1 and 5: each message arrives once on each side), QoS 1 messages published while the
//! remote broker is down arriving in order once it is back (the outage logged once), messages
//! in flight when the remote broker is killed sent again in order, the queue's size bound
//! (oldest dropped), a message over the remote broker's Maximum Packet Size dropped rather than
//! retried, the queue surviving an unload / load and a `kill -9` of the local broker,
//! `ctl bridges ...`, TLS with a client certificate configured from the environment (EMQX's
//! comma-separated `forwards` and numbered `subscription`), and the shipped listing.
//!
//! And against a real mosquitto (Debian's 2.0, `apt-get install mosquitto`) as the remote
//! broker, started by the test on loopback: messages both ways (MQTT 3.1.1 and 5, with real
//! clients on each side, `mosquitto_pub` among them), and mosquitto stopped and started again
//! on the same port while a stream of QoS 1 messages flows out, every message the local
//! publisher got a PUBACK for reaching a subscriber on mosquitto.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::pki::Pki;
use e2e::{free_port, wait_until, Broker, Client, DataDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};

/// The remote broker: plain (its own `loaded_plugins`), listening on `127.0.0.1:<port>`.
struct Remote {
    broker: Broker,
    port: u16,
}

impl Remote {
    fn start(dir: &DataDir, port: u16, env: &[(&str, &str)]) -> Remote {
        let mut all = vec![("BROKER_NODE_NAME", "emqx@remote")];
        all.extend_from_slice(env);
        let broker = Broker::start_on(dir, &all, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        Remote { broker, port }
    }

    /// A client of the remote broker.
    fn options(&self, id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(id, "127.0.0.1", self.port);
        options.set_keep_alive(std::time::Duration::from_secs(30));
        options
    }

    /// Stops it with SIGTERM and waits for it to exit.
    fn stop(self) {
        self.broker.stop();
    }
}

/// A local broker in a new data directory with the bridge loaded, bridging to `remote_port`;
/// `extra` is more of the `[bridge_mqtt]` table.
fn local(remote_port: u16, extra: &str) -> (DataDir, Broker) {
    let dir = DataDir::with_plugins("{emqx_bridge_mqtt, true}.\n");
    dir.write("broker.toml", &bridge_toml(remote_port, extra));
    let broker = Broker::start(&dir, LOCAL_ENV);
    (dir, broker)
}

const LOCAL_ENV: &[(&str, &str)] = &[("BROKER_NODE_NAME", "emqx@local")];

fn bridge_toml(remote_port: u16, extra: &str) -> String {
    format!("[bridge_mqtt]\naddress = \"127.0.0.1:{remote_port}\"\nreconnect_interval = \"200ms\"\n{extra}\n")
}

/// Waits until `ctl bridges list` says the bridge runs (connected and subscribed).
fn wait_running(dir: &DataDir) {
    wait_until("the bridge running", || {
        (dir.ctl(&["bridges", "list"]).ok().trim() == "name: aws     status: Running").then_some(())
    });
}

/// `ctl bridges status aws`.
fn status(dir: &DataDir) -> String {
    dir.ctl(&["bridges", "status", "aws"]).ok()
}

/// The count `name` in a `ctl bridges status` line.
fn count(status: &str, name: &str) -> u64 {
    let prefix = format!("{name}: ");
    status
        .split("     ")
        .find_map(|part| part.trim().strip_prefix(prefix.as_str()).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {status:?}"))
}

fn wait_count(dir: &DataDir, name: &str, value: u64) {
    wait_until(&format!("bridge {name} = {value}"), || (count(&status(dir), name) == value).then_some(()));
}

fn topic_payload(p: &Publish) -> (String, String) {
    (p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned())
}

/// Publishes with the retain flag and waits for the PUBACK.
async fn publish_retained(client: &mut Client, topic: &str, payload: &str) {
    client.client.publish(topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec()).await.expect("publish");
    client.wait_for("PUBACK", |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_local_messages_under_the_mountpoint_with_their_qos_and_retain() {
    let port = free_port();
    let remote_dir = DataDir::with_plugins("{emqx_retainer, true}.\n");
    let remote = Remote::start(&remote_dir, port, &[]);
    let (dir, local) = local(port, "forwards = [\"a/#\", \"b/+\"]\nmountpoint = \"bridge/aws/${node}/\"");
    wait_running(&dir);

    let mut watcher = Client::connect_with(remote.options("watcher")).await;
    watcher.subscribe("bridge/#", QoS::ExactlyOnce).await;
    let mut publisher = Client::connect(&local, "publisher").await;
    publisher.publish_acked("a/0", QoS::AtMostOnce, "zero").await;
    publisher.publish_acked("other/x", QoS::AtLeastOnce, "not forwarded").await;
    publisher.publish_acked("a/1/deep", QoS::AtLeastOnce, "one").await;
    publisher.publish_acked("b/2", QoS::ExactlyOnce, "two").await;
    publish_retained(&mut publisher, "a/kept", "kept").await;

    let got = watcher.receive(4).await;
    let seen: Vec<_> = got.iter().map(|p| (topic_payload(p), p.qos)).collect();
    let expected = |t: &str, p: &str, q| ((format!("bridge/aws/emqx@local/{t}"), p.to_owned()), q);
    assert_eq!(
        seen,
        [
            expected("a/0", "zero", QoS::AtMostOnce),
            expected("a/1/deep", "one", QoS::AtLeastOnce),
            expected("b/2", "two", QoS::ExactlyOnce),
            expected("a/kept", "kept", QoS::AtLeastOnce),
        ],
        "in order, at their QoS, under the mountpoint, and nothing else"
    );
    // The retain flag went along: the remote broker's retainer kept it.
    let mut late = Client::connect_with(remote.options("late")).await;
    late.subscribe("bridge/aws/emqx@local/a/kept", QoS::AtLeastOnce).await;
    let retained = late.receive(1).await.remove(0);
    assert!(retained.retain, "delivered as a retained message");
    assert_eq!(topic_payload(&retained).1, "kept");

    wait_count(&dir, "forwarded", 4);
    // The gauges follow the counters once the bridge's thread has handled the acknowledgement.
    wait_until("an empty queue and window", || {
        let s = status(&dir);
        ((count(&s, "queued"), count(&s, "inflight")) == (0, 0)).then_some(())
    });
    assert_eq!(count(&status(&dir), "dropped"), 0);
    assert_eq!(
        dir.ctl(&["bridges", "forwards", "aws"]).ok().trim(),
        "topic:   a/#\ntopic:   b/+",
        "EMQX's `bridges forwards`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brings_remote_messages_in_under_the_receive_mountpoint() {
    let port = free_port();
    let remote_dir = DataDir::with_plugins("");
    let remote = Remote::start(&remote_dir, port, &[]);
    let (dir, local) = local(
        port,
        "subscription = [{ topic = \"cmd/#\", qos = 1 }, { topic = \"cfg/+\", qos = 0 }]\nreceive_mountpoint = \
         \"from/remote/\"",
    );
    wait_running(&dir);
    assert_eq!(dir.ctl(&["bridges", "subscriptions", "aws"]).ok().trim(), "topic: cmd/#, qos: 1\ntopic: cfg/+, qos: 0");

    let mut listener = Client::connect(&local, "listener").await;
    listener.subscribe("from/remote/#", QoS::ExactlyOnce).await;
    let mut sender = Client::connect_with(remote.options("sender")).await;
    sender.publish_acked("cmd/1", QoS::AtLeastOnce, "one").await;
    sender.publish_acked("cmd/0", QoS::AtMostOnce, "zero").await;
    sender.publish_acked("cmd/2", QoS::ExactlyOnce, "two").await;
    sender.publish_acked("elsewhere", QoS::AtLeastOnce, "not subscribed").await;
    sender.publish_acked("cfg/x", QoS::AtLeastOnce, "capped").await;

    let got = listener.receive(4).await;
    let seen: Vec<_> = got.iter().map(|p| (topic_payload(p), p.qos)).collect();
    let expected = |t: &str, p: &str, q| ((format!("from/remote/{t}"), p.to_owned()), q);
    assert_eq!(
        seen,
        [
            expected("cmd/1", "one", QoS::AtLeastOnce),
            expected("cmd/0", "zero", QoS::AtMostOnce),
            // At the bridge's subscription's QoS (1), as the remote broker delivered it.
            expected("cmd/2", "two", QoS::AtLeastOnce),
            expected("cfg/x", "capped", QoS::AtMostOnce),
        ]
    );
    wait_count(&dir, "received", 4);
    assert_eq!(count(&status(&dir), "forwarded"), 0, "nothing goes back out");
}

/// `forwards` and `subscription` overlap, both ways, with no mountpoints: a message published
/// on either side reaches the subscribers of both sides exactly once.
async fn no_loop_with_overlapping_filters(proto_ver: &str) {
    let port = free_port();
    let remote_dir = DataDir::with_plugins("");
    let remote = Remote::start(&remote_dir, port, &[]);
    let (dir, local) = local(
        port,
        &format!("proto_ver = \"{proto_ver}\"\nforwards = [\"x/#\"]\nsubscription = [{{ topic = \"x/#\", qos = 1 }}]"),
    );
    wait_running(&dir);

    let mut here = Client::connect(&local, "here").await;
    here.subscribe("x/#", QoS::AtLeastOnce).await;
    let mut there = Client::connect_with(remote.options("there")).await;
    there.subscribe("x/#", QoS::AtLeastOnce).await;
    let mut local_pub = Client::connect(&local, "local-pub").await;
    let mut remote_pub = Client::connect_with(remote.options("remote-pub")).await;
    for i in 0..5 {
        local_pub.publish_acked(&format!("x/local/{i}"), QoS::AtLeastOnce, format!("l{i}")).await;
        remote_pub.publish_acked(&format!("x/remote/{i}"), QoS::AtLeastOnce, format!("r{i}")).await;
    }
    let mut at_here = here.receive(10).await;
    let mut at_there = there.receive(10).await;
    // A message going round would arrive before these: it would travel the same connections
    // ahead of them (see the module documentation of the plugin's `bridge`).
    remote_pub.publish_acked("x/remote/end", QoS::AtLeastOnce, "end").await;
    local_pub.publish_acked("x/local/end", QoS::AtLeastOnce, "end").await;
    let ends = |got: &[Publish]| got.iter().filter(|p| p.topic.ends_with("/end")).count();
    while ends(&at_here) < 2 {
        at_here.extend(here.receive(1).await);
    }
    while ends(&at_there) < 2 {
        at_there.extend(there.receive(1).await);
    }
    let mut expected: Vec<String> = (0..5).flat_map(|i| [format!("x/local/{i}"), format!("x/remote/{i}")]).collect();
    expected.extend(["x/local/end".to_owned(), "x/remote/end".to_owned()]);
    expected.sort();
    for (side, got) in [("local", &at_here), ("remote", &at_there)] {
        let mut topics: Vec<String> = got.iter().map(|p| p.topic.clone()).collect();
        topics.sort();
        assert_eq!(topics, expected, "each message exactly once on the {side} side");
    }
    assert!(here.try_receive().is_none() && there.try_receive().is_none(), "nothing more arrived");

    wait_count(&dir, "forwarded", 6);
    wait_count(&dir, "received", 6);
    // Over MQTT 3.1.1 the remote broker sends the bridge its own messages back, and the bridge
    // drops them; over MQTT 5 it subscribes with No Local and they never come.
    wait_count(&dir, "echoes", if proto_ver == "mqttv5" { 0 } else { 6 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loop_with_overlapping_filters_over_mqtt_3_1_1() {
    no_loop_with_overlapping_filters("mqttv4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loop_with_overlapping_filters_over_mqtt_5() {
    no_loop_with_overlapping_filters("mqttv5").await;
}

/// A persistent subscriber on the remote broker (its session outlives the remote broker's
/// restarts), subscribed to `filter`, disconnected.
async fn remote_keeper(remote: &Remote, id: &str, filter: &str) -> MqttOptions {
    let mut options = remote.options(id);
    options.set_clean_session(false);
    let mut keeper = Client::connect_with(options.clone()).await;
    keeper.subscribe(filter, QoS::AtLeastOnce).await;
    keeper.disconnect().await;
    options
}

/// How many log lines of `broker` contain `needle`.
fn lines_with(broker: &Broker, needle: &str) -> usize {
    broker.logs().iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_published_while_the_remote_is_down_arrive_in_order_once_it_is_back() {
    const N: usize = 100;
    let port = free_port();
    let remote_dir = DataDir::with_plugins("");
    let remote = Remote::start(&remote_dir, port, &[]);
    let keeper = remote_keeper(&remote, "keeper", "q/#").await;
    let (dir, local) = local(port, "forwards = [\"q/#\"]");
    wait_running(&dir);

    remote.stop();
    wait_until("the bridge to see the remote broker gone", || {
        dir.ctl(&["bridges", "list"]).ok().contains("status: Stopped").then_some(())
    });
    let mut publisher = Client::connect(&local, "publisher").await;
    for i in 0..N {
        publisher.publish_acked(&format!("q/{i}"), QoS::AtLeastOnce, i.to_string()).await;
    }
    wait_count(&dir, "queued", N as u64);
    wait_until("three failed reconnects", || (count(&status(&dir), "connect_failures") >= 3).then_some(()));
    assert_eq!(lines_with(&local, "retrying every"), 1, "one outage, one line:\n{}", local.logs().join("\n"));
    assert_eq!(lines_with(&local, "bridge aws: connection to mqtt://127.0.0.1:"), 1);

    let remote = Remote::start(&remote_dir, port, &[]);
    wait_running(&dir);
    local.wait_for_log("again after");
    assert_eq!(lines_with(&local, "again after"), 1, "the end of the outage logged once");
    let mut keeper = Client::connect_with(keeper).await;
    let got: Vec<String> = keeper.receive(N).await.iter().map(|p| topic_payload(p).1).collect();
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "every one, in order");
    wait_count(&dir, "queued", 0);
    wait_count(&dir, "forwarded", N as u64);
    assert!(keeper.try_receive().is_none());
    drop(remote);
}

/// The remote broker killed while messages stream to it: what it had not acknowledged is sent
/// again when it is back, oldest first, so every message arrives (at least once) and the first
/// arrivals are in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_when_the_remote_dies_are_sent_again_in_order() {
    const N: usize = 3000;
    // The subscriber's queue must hold whatever arrives while it reconnects.
    let remote_env = [("BROKER_MQTT__MAX_MQUEUE_LEN", "0")];
    let port = free_port();
    let remote_dir = DataDir::with_plugins("");
    let remote = Remote::start(&remote_dir, port, &remote_env);
    let keeper = remote_keeper(&remote, "keeper", "f/#").await;
    let mut online = Client::connect_with(keeper.clone()).await;
    let (dir, local) = local(port, "forwards = [\"f/#\"]");
    wait_running(&dir);

    let mut publisher = Client::connect(&local, "publisher").await;
    for i in 0..N {
        publisher.publish_acked(&format!("f/{i}"), QoS::AtLeastOnce, i.to_string()).await;
    }
    wait_until("some forwarded", || (count(&status(&dir), "forwarded") > 0).then_some(()));
    drop(remote); // SIGKILL
    let mut got: Vec<usize> = Vec::new();
    while let Some(p) = online.try_receive() {
        got.push(topic_payload(&p).1.parse().unwrap());
    }
    let _remote = Remote::start(&remote_dir, port, &remote_env);
    wait_running(&dir);
    let mut keeper = Client::connect_with(keeper).await;
    let mut first: Vec<usize> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in got {
        if seen.insert(i) {
            first.push(i);
        }
    }
    while seen.len() < N {
        let i: usize = topic_payload(&keeper.receive(1).await[0]).1.parse().unwrap();
        if seen.insert(i) {
            first.push(i);
        }
    }
    assert_eq!(first, (0..N).collect::<Vec<_>>(), "every message, first arrivals in order");
    wait_count(&dir, "queued", 0);
}

/// Past `queue.max_total_size` the oldest queued messages are dropped, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest() {
    let port = free_port();
    let remote_dir = DataDir::with_plugins("");
    let remote = Remote::start(&remote_dir, port, &[]);
    let keeper = remote_keeper(&remote, "keeper", "m/#").await;
    remote.stop();
    // Each message is 19 bytes (topic + payload): five fit in 100.
    let (dir, local) = local(port, "forwards = [\"m/#\"]\nqueue = { max_total_size = \"100B\" }");
    let mut publisher = Client::connect(&local, "publisher").await;
    for i in 0..10 {
        publisher.publish_acked(&format!("m/{i}"), QoS::AtLeastOnce, format!("payload-of-{i:05}")).await;
    }
    wait_count(&dir, "dropped", 5);
    let s = status(&dir);
    assert_eq!((count(&s, "queued"), count(&s, "queued_bytes")), (5, 95), "{s}");
    assert_eq!(lines_with(&local, "queue full"), 1, "logged once");

    let _remote = Remote::start(&remote_dir, port, &[]);
    wait_running(&dir);
    let mut keeper = Client::connect_with(keeper).await;
    let got: Vec<String> = keeper.receive(5).await.iter().map(|p| p.topic.clone()).collect();
    assert_eq!(got, ["m/5", "m/6", "m/7", "m/8", "m/9"], "the newest five, in order");
}

/// Over MQTT 5 the remote broker announces its Maximum Packet Size: a message over it is
/// dropped (and counted) instead of being sent, which would cost the connection at every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_remote_maximum_packet_size_is_dropped_not_retried() {
    let port = free_port();
    let remote_dir = DataDir::with_plugins("");
    let remote = Remote::start(&remote_dir, port, &[("BROKER_MQTT__MAX_PACKET_SIZE", "1000")]);
    let (dir, local) = local(port, "proto_ver = \"mqttv5\"\nforwards = [\"big/#\"]");
    wait_running(&dir);
    let mut watcher = Client::connect_with(remote.options("watcher")).await;
    watcher.subscribe("big/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&local, "publisher").await;
    publisher.publish_acked("big/1", QoS::AtLeastOnce, vec![b'x'; 2000]).await;
    publisher.publish_acked("big/2", QoS::AtLeastOnce, "small").await;
    assert_eq!(topic_payload(&watcher.receive(1).await[0]), ("big/2".to_owned(), "small".to_owned()));
    wait_count(&dir, "dropped", 1);
    let s = status(&dir);
    assert_eq!((count(&s, "connect_failures"), count(&s, "queued")), (0, 0), "{s}");
    assert_eq!(lines_with(&local, "over the remote broker's Maximum Packet Size (1000)"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_survives_an_unload_and_a_kill_of_the_local_broker() {
    let port = free_port();
    let remote_dir = DataDir::with_plugins("");
    let remote = Remote::start(&remote_dir, port, &[]);
    let keeper = remote_keeper(&remote, "keeper", "p/#").await;
    remote.stop();

    let (dir, local) = local(port, "forwards = [\"p/#\"]");
    local.wait_for_log("bridge aws: cannot connect to mqtt://127.0.0.1:");
    let mut publisher = Client::connect(&local, "publisher").await;
    for i in 0..20 {
        publisher.publish_acked(&format!("p/{i}"), QoS::AtLeastOnce, i.to_string()).await;
    }
    wait_count(&dir, "queued", 20);

    dir.ctl(&["plugins", "unload", "emqx_bridge_mqtt"]).ok();
    dir.ctl(&["plugins", "load", "emqx_bridge_mqtt"]).ok();
    wait_count(&dir, "queued", 20);
    for i in 20..30 {
        publisher.publish_acked(&format!("p/{i}"), QoS::AtLeastOnce, i.to_string()).await;
    }
    wait_count(&dir, "queued", 30);
    publisher.kill().await;

    let local = local.kill9_and_restart(&dir, LOCAL_ENV);
    wait_count(&dir, "queued", 30);
    let _remote = Remote::start(&remote_dir, port, &[]);
    wait_running(&dir);
    let mut keeper = Client::connect_with(keeper).await;
    let got: Vec<String> = keeper.receive(30).await.iter().map(|p| topic_payload(p).1).collect();
    let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "every one, in order, after an unload and a kill -9");
    wait_count(&dir, "queued", 0);
    drop(local);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_bridges_list_stop_start() {
    let port = free_port();
    let remote_dir = DataDir::with_plugins("");
    let remote = Remote::start(&remote_dir, port, &[]);
    let (dir, local) = local(port, "forwards = [\"c/#\"]\nsubscription = [{ topic = \"s/#\", qos = 1 }]");
    wait_running(&dir);
    assert_eq!(dir.ctl(&["bridges", "list"]).ok().trim(), "name: aws     status: Running");
    assert_eq!(dir.ctl(&["bridges", "start", "aws"]).ok().trim(), "Bridge already started.");

    assert_eq!(dir.ctl(&["bridges", "stop", "aws"]).ok().trim(), "Stop bridge successfully.");
    assert_eq!(dir.ctl(&["bridges", "list"]).ok().trim(), "name: aws     status: Stopped");
    let mut watcher = Client::connect_with(remote.options("watcher")).await;
    watcher.subscribe("c/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&local, "publisher").await;
    publisher.publish_acked("c/1", QoS::AtLeastOnce, "while stopped").await;
    wait_count(&dir, "queued", 1);
    assert!(status(&dir).contains("status: Stopped"));

    assert_eq!(dir.ctl(&["bridges", "start", "aws"]).ok().trim(), "Start bridge successfully.");
    assert_eq!(dir.ctl(&["bridges", "list"]).ok().trim(), "name: aws     status: Running");
    assert_eq!(topic_payload(&watcher.receive(1).await[0]), ("c/1".to_owned(), "while stopped".to_owned()));
    wait_count(&dir, "queued", 0);

    assert!(dir.ctl(&["bridges", "start", "nope"]).err().contains("no bridge named \"nope\""));
    assert!(dir.ctl(&["bridges", "frobnicate"]).err().contains("bridges list"));

    // Started while the remote broker is away: EMQX's failure, and it keeps trying.
    dir.ctl(&["bridges", "stop", "aws"]).ok();
    remote.stop();
    let failed = dir.ctl(&["bridges", "start", "aws"]).err();
    assert!(failed.contains("Start bridge failed."), "{failed}");
    wait_until("retries", || (count(&status(&dir), "connect_failures") >= 2).then_some(()));
    assert!(status(&dir).contains("status: Connecting"));
    let _remote = Remote::start(&remote_dir, port, &[]);
    wait_running(&dir);
}

/// Listed in the shipped `data/loaded_plugins` but not started, as EMQX ships it; loading it
/// with no bridge configured says what to set.
#[test]
fn shipped_listed_not_started_and_asks_for_an_address() {
    let shipped = include_str!("../../data/loaded_plugins");
    assert!(shipped.lines().any(|l| l == "{emqx_bridge_mqtt, false}."), "{shipped}");
    let dir = DataDir::with_plugins("{emqx_bridge_mqtt, false}.\n");
    let _broker = Broker::start(&dir, &[]);
    let list = dir.ctl(&["plugins", "list"]).ok();
    let line = "Plugin(emqx_bridge_mqtt, description=EMQ X Bridge to MQTT Broker, active=false)";
    assert!(list.lines().any(|l| l == line), "{list}");
    let error = dir.ctl(&["plugins", "load", "emqx_bridge_mqtt"]).err();
    assert!(error.contains("bridge_mqtt.address"), "{error}");
}

/// A certificate authority and the PEM files of a server and a client certificate it signed.
fn pki(dir: &DataDir) -> [String; 5] {
    let Pki { ca, server: (server_cert, server_key), client: (client_cert, client_key) } = Pki::new("bridge test CA");
    let files = [
        ("ca.pem", ca),
        ("server.pem", server_cert),
        ("server.key", server_key),
        ("client.pem", client_cert),
        ("client.key", client_key),
    ];
    files.map(|(name, text)| {
        dir.write(name, &text);
        dir.file(name).to_string_lossy().into_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_client_certificate_set_from_the_environment() {
    let (port, ssl_port) = (free_port(), free_port());
    let remote_dir = DataDir::with_plugins("");
    let [ca, server_cert, server_key, client_cert, client_key] = pki(&remote_dir);
    let ssl_bind = format!("127.0.0.1:{ssl_port}");
    let remote = Remote::start(
        &remote_dir,
        port,
        &[
            ("BROKER_LISTENER__SSL__BIND", &ssl_bind),
            ("BROKER_LISTENER__SSL__CERTFILE", &server_cert),
            ("BROKER_LISTENER__SSL__KEYFILE", &server_key),
            ("BROKER_LISTENER__SSL__CACERTFILE", &ca),
            ("BROKER_LISTENER__SSL__VERIFY_PEER", "true"),
            ("BROKER_LISTENER__SSL__FAIL_IF_NO_PEER_CERT", "true"),
        ],
    );
    let mut watcher = Client::connect_with(remote.options("watcher")).await;
    watcher.subscribe("t/#", QoS::AtLeastOnce).await;
    watcher.subscribe("u/#", QoS::AtLeastOnce).await;

    let dir = DataDir::with_plugins("{emqx_bridge_mqtt, true}.\n");
    let local = Broker::start(
        &dir,
        &[
            ("BROKER_BRIDGE_MQTT__ADDRESS", &ssl_bind),
            ("BROKER_BRIDGE_MQTT__SSL", "on"),
            ("BROKER_BRIDGE_MQTT__CACERTFILE", &ca),
            ("BROKER_BRIDGE_MQTT__CERTFILE", &client_cert),
            ("BROKER_BRIDGE_MQTT__KEYFILE", &client_key),
            // EMQX's comma-separated list, and its numbered subscriptions.
            ("BROKER_BRIDGE_MQTT__FORWARDS", "t/#,u/#"),
            ("BROKER_BRIDGE_MQTT__SUBSCRIPTION__1__TOPIC", "back/#"),
            ("BROKER_BRIDGE_MQTT__SUBSCRIPTION__1__QOS", "1"),
            ("BROKER_BRIDGE_MQTT__RECONNECT_INTERVAL", "200ms"),
        ],
    );
    wait_running(&dir);
    assert!(status(&dir).contains(&format!("address: mqtts://{ssl_bind}")));
    assert_eq!(dir.ctl(&["bridges", "subscriptions", "aws"]).ok().trim(), "topic: back/#, qos: 1");
    let mut publisher = Client::connect(&local, "publisher").await;
    publisher.subscribe("back/#", QoS::AtLeastOnce).await;
    publisher.publish_acked("t/secure", QoS::AtLeastOnce, "over tls").await;
    publisher.publish_acked("u/also", QoS::AtLeastOnce, "too").await;
    let got: Vec<_> = watcher.receive(2).await.iter().map(topic_payload).collect();
    assert_eq!(got, [("t/secure".to_owned(), "over tls".to_owned()), ("u/also".to_owned(), "too".to_owned())]);
    watcher.publish_acked("back/1", QoS::AtLeastOnce, "in over tls").await;
    assert_eq!(topic_payload(&publisher.receive(1).await[0]), ("back/1".to_owned(), "in over tls".to_owned()));
}

/// Debian's mosquitto broker (`/usr/sbin/mosquitto`, off an ordinary user's `PATH`).
fn mosquitto_exe() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        return sbin;
    }
    let found = Command::new("sh").args(["-c", "command -v mosquitto"]).output();
    match found {
        Ok(out) if out.status.success() => PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        _ => panic!("the mosquitto broker is not installed (apt-get install mosquitto)"),
    }
}

/// A real mosquitto listening on `127.0.0.1:<port>`, its configuration and its persistence
/// file (`persistence true`: it writes its sessions, subscriptions and queued messages there
/// when it stops, and reads them back when it starts) in `dir`. Killed when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Mosquitto {
    fn start(dir: &DataDir, port: u16) -> Mosquitto {
        // Started as root, mosquitto drops to the user `mosquitto`, who may not write in the
        // test's directory; `user root` keeps it (as any other user it is ignored).
        // SAFETY: geteuid(2) has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 { "user root\n" } else { "" };
        dir.write(
            "mosquitto.conf",
            &format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 0\n{user}",
                dir.path().display()
            ),
        );
        let mut child = Command::new(mosquitto_exe())
            .arg("-c")
            .arg(dir.file("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto");
        let logs = e2e::collect_stderr(&mut child, "mosquitto");
        let mut mosquitto = Mosquitto { child, port, logs };
        wait_until("mosquitto running", || {
            if let Ok(Some(status)) = mosquitto.child.try_wait() {
                panic!("mosquitto exited with {status}; log:\n{}", mosquitto.logs.lock().unwrap().join("\n"));
            }
            let logs = mosquitto.logs.lock().unwrap();
            logs.iter().any(|l| l.contains("mosquitto version") && l.ends_with(" running")).then_some(())
        });
        mosquitto
    }

    /// A client of mosquitto.
    fn options(&self, id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(id, "127.0.0.1", self.port);
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    /// `mosquitto_pub -q 1` to it (exits once the PUBACK came).
    fn publish(&self, topic: &str, payload: &str) {
        let out = e2e::mosquitto("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1", "-i", "mosquitto-pub"])
            .args(["-t", topic, "-m", payload])
            .output()
            .expect("run mosquitto_pub");
        assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops it with SIGTERM (it writes its persistence file) and waits for it to exit.
    fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_until("mosquitto to stop", || self.child.try_wait().ok().flatten().map(|_| ()));
        let logs = self.logs.lock().unwrap();
        assert!(
            logs.iter().any(|l| l.contains("Saving in-memory database"))
                && !logs.iter().any(|l| l.contains("Error saving")),
            "mosquitto saved its sessions:\n{}",
            logs.join("\n")
        );
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, or panics after [`e2e::DEADLINE`] saying `what`:
/// [`wait_until`] for a test whose other tasks must go on running on the runtime meanwhile.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + e2e::DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bridge to a real mosquitto both ways: local messages on `forwards` reach a subscriber on
/// mosquitto under the mountpoint, at their QoS, the retain flag kept (mosquitto's own
/// retained store has it); messages `mosquitto_pub` sends on the `subscription` filter reach a
/// local subscriber, and nothing else crosses either way.
async fn both_ways_with_mosquitto(proto_ver: &str) {
    let port = free_port();
    let remote_dir = DataDir::new();
    let remote = Mosquitto::start(&remote_dir, port);
    let (dir, local) = local(
        port,
        &format!(
            "proto_ver = \"{proto_ver}\"\nforwards = [\"out/#\"]\nmountpoint = \"bridge/${{node}}/\"\n\
             subscription = [{{ topic = \"in/#\", qos = 1 }}]"
        ),
    );
    wait_running(&dir);

    // Out: a local publisher, a subscriber on mosquitto.
    let mut watcher = Client::connect_with(remote.options("watcher")).await;
    watcher.subscribe("#", QoS::ExactlyOnce).await;
    let mut publisher = Client::connect(&local, "publisher").await;
    publisher.publish_acked("out/0", QoS::AtMostOnce, "zero").await;
    publisher.publish_acked("in/local", QoS::AtLeastOnce, "not forwarded").await;
    publisher.publish_acked("out/1/deep", QoS::AtLeastOnce, "one").await;
    publisher.publish_acked("out/2", QoS::ExactlyOnce, "two").await;
    publish_retained(&mut publisher, "out/kept", "kept").await;
    let got = watcher.receive(4).await;
    let mut seen: Vec<_> = got.iter().map(|p| (topic_payload(p), p.qos)).collect();
    // mosquitto passes a QoS 2 message on when its PUBREL comes, so the QoS 1 message the
    // bridge sent after it may arrive first (MQTT orders messages of one QoS).
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = |t: &str, p: &str, q| ((format!("bridge/emqx@local/{t}"), p.to_owned()), q);
    assert_eq!(
        seen,
        [
            expected("out/0", "zero", QoS::AtMostOnce),
            expected("out/1/deep", "one", QoS::AtLeastOnce),
            expected("out/2", "two", QoS::ExactlyOnce),
            expected("out/kept", "kept", QoS::AtLeastOnce),
        ],
        "at their QoS, under the mountpoint, and nothing else"
    );
    let mut late = Client::connect_with(remote.options("late")).await;
    late.subscribe("bridge/emqx@local/out/kept", QoS::AtLeastOnce).await;
    let retained = late.receive(1).await.remove(0);
    assert!(retained.retain, "mosquitto kept it as a retained message");
    assert_eq!(topic_payload(&retained).1, "kept");

    // In: mosquitto_pub on mosquitto, a subscriber here.
    let mut listener = Client::connect(&local, "listener").await;
    listener.subscribe("#", QoS::AtLeastOnce).await;
    remote.publish("in/cmd", "hello");
    remote.publish("elsewhere/x", "not subscribed");
    remote.publish("in/end", "end");
    let got: Vec<_> = listener.receive(2).await.iter().map(|p| (topic_payload(p), p.qos)).collect();
    assert_eq!(
        got,
        [
            (("in/cmd".to_owned(), "hello".to_owned()), QoS::AtLeastOnce),
            (("in/end".to_owned(), "end".to_owned()), QoS::AtLeastOnce)
        ],
        "what mosquitto_pub sent on in/#, and nothing else"
    );
    wait_count(&dir, "received", 2);
    wait_count(&dir, "forwarded", 4);
    // Nothing went round: after the four forwarded messages the watcher on mosquitto saw
    // mosquitto_pub's three and no copy of them sent back by the bridge.
    let more: Vec<String> = watcher.receive(3).await.iter().map(|p| p.topic.clone()).collect();
    assert_eq!(more, ["in/cmd", "elsewhere/x", "in/end"], "on mosquitto: mosquitto_pub's three");
    assert!(watcher.try_receive().is_none() && listener.try_receive().is_none(), "nothing else");
    let s = status(&dir);
    assert_eq!((count(&s, "queued"), count(&s, "dropped"), count(&s, "echoes")), (0, 0, 0), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_with_a_real_mosquitto_over_mqtt_3_1_1() {
    both_ways_with_mosquitto("mqttv4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_with_a_real_mosquitto_over_mqtt_5() {
    both_ways_with_mosquitto("mqttv5").await;
}

/// A subscriber on mosquitto that stays, as `mosquitto_sub -c` does: a persistent session
/// (CleanSession 0), reconnecting whenever the connection drops (every 50 ms while mosquitto
/// is away). Records the number in each message's payload, in the order they arrive.
struct Keeper {
    arrivals: Arc<Mutex<Vec<usize>>>,
    subscribed: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    fn start(mut options: MqttOptions, filter: &str) -> Keeper {
        options.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        client.try_subscribe(filter, QoS::AtLeastOnce).expect("queue the SUBSCRIBE");
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (got, suback, connected) = (arrivals.clone(), subscribed.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        got.lock().unwrap().push(topic_payload(&p).1.parse().expect("a number"));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => suback.store(true, Ordering::SeqCst),
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    // Not a wait for a condition: the pace of reconnection attempts.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Keeper { arrivals, subscribed, connections, task }
    }

    fn arrivals(&self) -> Vec<usize> {
        self.arrivals.lock().unwrap().clone()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes message i (payload `i`) on `s/i` at QoS 1 for each i of `numbers`, each once the
/// previous one's PUBACK came.
async fn publish_numbered(publisher: &mut Client, numbers: std::ops::Range<usize>) {
    for i in numbers {
        publisher.publish_acked(&format!("s/{i}"), QoS::AtLeastOnce, i.to_string()).await;
    }
}

/// mosquitto stopped and started again on the same port in the middle of the bridge's stream
/// of QoS 1 messages to it: every message the local publisher got a PUBACK for (before the
/// stop, while mosquitto is away, after it is back) reaches the subscriber on mosquitto, at
/// least once, and the first arrivals are in order. The bridge connects with
/// `clean_start = false`, so mosquitto (with `persistence true`) keeps its session, and its
/// subscription, over the restart; what the bridge had handed over without a PUBACK when
/// mosquitto went away is sent again, and the rest waits in the bridge's queue.
///
/// The local broker acknowledges a publisher far faster than the bridge's queue (on disk)
/// drains to a remote broker, so the first batch is published whole and mosquitto is stopped
/// once 200 of it have arrived, with the rest queued or in flight in the bridge.
///
/// mosquitto is stopped with SIGTERM: it then writes what it holds (the subscriber's session
/// and the messages queued for it) to its persistence file. After a SIGKILL mosquitto forgets
/// messages it had already acknowledged to the bridge, which no bridge can make up for.
async fn mosquitto_restarted_mid_stream(proto_ver: &str) {
    const BEFORE: usize = 5000;
    const WHILE_DOWN: usize = 500;
    const AFTER: usize = 500;
    let port = free_port();
    let remote_dir = DataDir::new();
    let remote = Mosquitto::start(&remote_dir, port);
    let keeper = Keeper::start(remote.options("keeper"), "s/#");
    eventually("the keeper subscribed", || keeper.subscribed.load(Ordering::SeqCst).then_some(())).await;
    let (dir, local) = local(
        port,
        &format!(
            "proto_ver = \"{proto_ver}\"\nclean_start = false\nforwards = [\"s/#\"]\n\
             subscription = [{{ topic = \"in/#\", qos = 1 }}]"
        ),
    );
    wait_running(&dir);

    // Message i on s/i, each published once the previous one's PUBACK came; mosquitto is
    // stopped while they still flow (after 200 arrived), not after the last was published
    // (the bridge may have forwarded them all by then). On a quiet machine up to about 2,000
    // crossed before mosquitto had stopped (with 2,000 published, a run failed so): 5,000.
    let mut publisher = Client::connect(&local, "streamer").await;
    let streaming = tokio::spawn(async move {
        publish_numbered(&mut publisher, 0..BEFORE).await;
        publisher
    });
    eventually("200 messages across", || (keeper.arrivals().len() >= 200).then_some(())).await;
    remote.stop();
    let mut publisher = streaming.await.expect("the publisher");
    let s = status(&dir);
    let arrived = keeper.arrivals().into_iter().max().map_or(0, |i| i + 1);
    assert!(arrived < BEFORE && count(&s, "queued") > 0, "stopped in the middle: {arrived} arrived; {s}");

    // Published while mosquitto is away: they wait in the bridge's queue.
    publish_numbered(&mut publisher, BEFORE..BEFORE + WHILE_DOWN).await;
    let remote = Mosquitto::start(&remote_dir, port);
    eventually("the bridge running again", || {
        (dir.ctl(&["bridges", "list"]).ok().trim() == "name: aws     status: Running").then_some(())
    })
    .await;
    publish_numbered(&mut publisher, BEFORE + WHILE_DOWN..BEFORE + WHILE_DOWN + AFTER).await;
    let n = BEFORE + WHILE_DOWN + AFTER;

    let arrivals = eventually("every acknowledged message on mosquitto", || {
        let arrivals = keeper.arrivals();
        let seen: std::collections::HashSet<usize> = arrivals.iter().copied().collect();
        (seen.len() == n).then_some(arrivals)
    })
    .await;
    let mut seen = std::collections::HashSet::new();
    let first: Vec<usize> = arrivals.iter().copied().filter(|i| seen.insert(*i)).collect();
    let out_of_order: Vec<(usize, usize)> =
        first.iter().copied().enumerate().filter(|(k, i)| k != i).take(20).collect();
    assert!(out_of_order.is_empty(), "first arrivals in order; (place, message): {out_of_order:?}");
    assert!(keeper.connections.load(Ordering::SeqCst) >= 2, "the keeper reconnected");
    eprintln!("{n} messages, {arrived} across before the stop, {} arrived twice", arrivals.len() - n);
    eventually("the bridge's queue empty", || {
        let s = status(&dir);
        (count(&s, "queued") == 0 && count(&s, "inflight") == 0).then_some(())
    })
    .await;

    // In still works: mosquitto kept the bridge's subscription.
    let mut listener = Client::connect(&local, "listener").await;
    listener.subscribe("in/#", QoS::AtLeastOnce).await;
    remote.publish("in/after", "restart");
    assert_eq!(topic_payload(&listener.receive(1).await[0]), ("in/after".to_owned(), "restart".to_owned()));
    assert_eq!(count(&status(&dir), "dropped"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mosquitto_restarted_mid_stream_over_mqtt_3_1_1() {
    mosquitto_restarted_mid_stream("mqttv4").await;
}

/// Over MQTT 5 too, every message arrives and the first arrivals are in order (MQTT-4.6.0-1:
/// messages resent in the order they were first sent). rumqttc 0.25's MQTT 5 client
/// (`v5::MqttState::clean`) gives back the unacknowledged messages in the order of their
/// packet ids, so the bridge puts them back in send order before it resends (`link.rs`,
/// `drive_v5`). It numbered each send as rumqttc told it; a send still untold when the
/// connection failed kept the number of its packet id's previous use, and its message went
/// out ahead of about 16 older ones (3 runs in 10, until those sends were numbered too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mosquitto_restarted_mid_stream_over_mqtt_5() {
    mosquitto_restarted_mid_stream("mqttv5").await;
}
