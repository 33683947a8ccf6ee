//! `emqx_mod_presence`: `$SYS/brokers/<node>/clients/<clientid>/connected|disconnected`.

use std::process::Stdio;

use e2e::{mosquitto, options, recorded_events, wait_until, Broker, Client, DataDir};
use rumqttc::QoS;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_sees_connected_and_disconnected_events() {
    // hook_recorder tells when mosquitto_sub's subscription is in place.
    let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n{hook_recorder, true}.\n");
    let events = dir.file("events.jsonl");
    let broker = Broker::start(
        &dir,
        &[("BROKER_NODE_NAME", "node1@127.0.0.1"), ("BROKER_HOOK_RECORDER__FILE", events.to_str().unwrap())],
    );
    let watcher = mosquitto("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-v", "-t", "$SYS/#", "-i", "watcher"])
        .args(["-C", "2", "-W", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("mosquitto_sub subscribed to $SYS/#", || {
        recorded_events(&events)
            .iter()
            .any(|e| e["hook"] == "session.subscribed" && e["client_id"] == "watcher" && e["topic"] == "$SYS/#")
            .then_some(())
    });

    let mut opts = options(&broker, "device1");
    opts.set_credentials("alice", "secret").set_keep_alive(std::time::Duration::from_secs(42));
    Client::connect_with(opts).await.kill().await;

    let output = watcher.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (topic, payload) = lines[0].split_once(' ').unwrap();
    assert_eq!(topic, "$SYS/brokers/node1@127.0.0.1/clients/device1/connected");
    let connected: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(connected["clientid"], "device1");
    assert_eq!(connected["username"], "alice");
    assert_eq!(connected["ipaddress"], "127.0.0.1");
    assert_eq!(connected["sockport"], broker.port(), "the listener's port, as EMQX's sockport");
    assert_eq!(connected["proto_name"], "MQTT");
    assert_eq!(connected["proto_ver"], 4);
    assert_eq!(connected["keepalive"], 42);
    assert_eq!(connected["connack"], 0);
    assert_eq!(connected["clean_start"], true);
    assert_eq!(connected["expiry_interval"], 0);
    assert!(connected["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(connected["connected_at"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(!payload.contains("secret"), "no password in events");

    let (topic, payload) = lines[1].split_once(' ').unwrap();
    assert_eq!(topic, "$SYS/brokers/node1@127.0.0.1/clients/device1/disconnected");
    let disconnected: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(disconnected["clientid"], "device1");
    assert_eq!(disconnected["username"], "alice");
    assert_eq!(disconnected["reason"], "tcp_closed");
    assert!(disconnected["ts"].as_u64() >= connected["ts"].as_u64());
    assert!(disconnected["disconnected_at"].as_u64() >= connected["connected_at"].as_u64());
}

/// The next presence event of `client_id` (`connected` or `disconnected`) the watcher gets,
/// with the QoS it came at; events of other clients before it are skipped.
async fn next_event(watcher: &mut Client, client_id: &str, what: &str) -> (Value, QoS) {
    let suffix = format!("/clients/{client_id}/{what}");
    loop {
        let p = watcher.receive(1).await.remove(0);
        if p.topic.ends_with(&suffix) {
            return (serde_json::from_slice(&p.payload).unwrap(), p.qos);
        }
    }
}

/// EMQX 4.3's payloads field for field: every connected field (no username is
/// `"undefined"`, as EMQX encodes its atom), every disconnected field of EMQX 4.3.6 on but
/// `connected_at` (the client's address, port and protocol as in the connected event), with
/// EMQX's reasons
/// (`normal` for a DISCONNECT, `takeovered` when a client resumes the session elsewhere,
/// `discarded` when it starts clean elsewhere), sent at EMQX's default QoS 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_match_emqx_4_3_with_its_reasons_at_qos_1() {
    let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = Client::connect(&broker, "emqx-watcher").await;
    watcher.subscribe("$SYS/brokers/+/clients/#", QoS::ExactlyOnce).await;

    Client::connect(&broker, "anon").await.disconnect().await;
    let (connected, qos) = next_event(&mut watcher, "anon", "connected").await;
    assert_eq!(qos, QoS::AtLeastOnce, "EMQX's module.presence.qos = 1");
    let mut keys: Vec<&str> = connected.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "clean_start",
            "clientid",
            "connack",
            "connected_at",
            "expiry_interval",
            "ipaddress",
            "keepalive",
            "proto_name",
            "proto_ver",
            "sockport",
            "ts",
            "username"
        ]
    );
    assert_eq!(connected["username"], "undefined");
    assert_eq!(connected["sockport"], broker.port());
    assert_eq!(connected["keepalive"], 30);
    assert_eq!(connected["clean_start"], true);
    assert_eq!(connected["connack"], 0);
    let (disconnected, qos) = next_event(&mut watcher, "anon", "disconnected").await;
    assert_eq!(qos, QoS::AtLeastOnce);
    let mut keys: Vec<&str> = disconnected.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["clientid", "disconnected_at", "ipaddress", "proto_name", "proto_ver", "reason", "sockport", "ts", "username"],
        "EMQX 4.3.6's, but connected_at"
    );
    assert_eq!(
        (
            &disconnected["ipaddress"],
            &disconnected["sockport"],
            &disconnected["proto_name"],
            &disconnected["proto_ver"]
        ),
        (&connected["ipaddress"], &connected["sockport"], &connected["proto_name"], &connected["proto_ver"])
    );
    assert_eq!(disconnected["reason"], "normal");
    assert_eq!(disconnected["username"], "undefined");

    // A second connection resuming the session: the first one is `takeovered`. (The first one
    // has a persistent session: a clean one would not be resumed, MQTT-3.1.2-6.)
    let mut persistent = options(&broker, "twin");
    persistent.set_clean_session(false);
    let first = Client::connect_with(persistent).await;
    next_event(&mut watcher, "twin", "connected").await;
    let mut resume = options(&broker, "twin");
    resume.set_clean_session(false);
    let second = Client::connect_with(resume).await;
    // The new connection's event and the old one's may come in either order.
    let (mut connected, mut disconnected) = (None, None);
    while connected.is_none() || disconnected.is_none() {
        let p = watcher.receive(1).await.remove(0);
        let event: Value = serde_json::from_slice(&p.payload).unwrap();
        if p.topic.ends_with("/clients/twin/connected") {
            connected = Some(event);
        } else if p.topic.ends_with("/clients/twin/disconnected") {
            disconnected = Some(event);
        }
    }
    assert_eq!(disconnected.unwrap()["reason"], "takeovered");
    assert_eq!(connected.unwrap()["clean_start"], false);
    second.disconnect().await;
    assert_eq!(next_event(&mut watcher, "twin", "disconnected").await.0["reason"], "normal");
    first.kill().await;

    // A second connection starting clean: the first one's session is `discarded`.
    let first = Client::connect(&broker, "dup").await;
    next_event(&mut watcher, "dup", "connected").await;
    let second = Client::connect(&broker, "dup").await;
    // (its own connected event may come first; next_event skips it)
    assert_eq!(next_event(&mut watcher, "dup", "disconnected").await.0["reason"], "discarded");
    second.kill().await;
    first.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_use_the_configured_qos_and_stop_when_unloaded() {
    // `None`: the default, EMQX's 1.
    for (setting, qos) in [(Some("0"), 0u8), (Some("1"), 1), (Some("2"), 2), (None, 1)] {
        let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n");
        let env: Vec<(&str, &str)> = setting.map(|q| ("BROKER_PRESENCE__QOS", q)).into_iter().collect();
        let broker = Broker::start(&dir, &env);
        let mut watcher = Client::connect(&broker, "qos-watcher").await;
        watcher.subscribe("$SYS/brokers/+/clients/+/connected", QoS::ExactlyOnce).await;
        Client::connect(&broker, "first").await.disconnect().await;
        let event = watcher.receive(1).await.remove(0);
        assert_eq!(event.topic, "$SYS/brokers/emqx@127.0.0.1/clients/first/connected");
        assert_eq!(event.qos as u8, qos);

        // Unloaded: no event for "second"; loaded again: "third" is the next one seen.
        dir.ctl(&["plugins", "unload", "emqx_mod_presence"]).ok();
        Client::connect(&broker, "second").await.disconnect().await;
        dir.ctl(&["plugins", "load", "emqx_mod_presence"]).ok();
        Client::connect(&broker, "third").await.disconnect().await;
        let next = watcher.receive(1).await.remove(0);
        assert_eq!(next.topic, "$SYS/brokers/emqx@127.0.0.1/clients/third/connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_subscriptions_mix_with_normal_ones() {
    let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = Client::connect(&broker, "mixed").await;
    // One SUBSCRIBE with a `$SYS` filter and a normal one.
    watcher
        .client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("$SYS/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("plain/#".into(), QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    let ack = watcher.wait_for("SUBACK", |e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))).await;
    let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) = ack else { unreachable!() };
    assert_eq!(ack.return_codes.len(), 2);
    assert!(ack.return_codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce))));

    let mut other = Client::connect(&broker, "other").await;
    other.publish_acked("plain/x", QoS::AtLeastOnce, "p").await;
    let got: Vec<String> = watcher.receive(2).await.iter().map(|p| p.topic.clone()).collect();
    assert!(got.contains(&"plain/x".to_owned()), "{got:?}");
    assert!(got.iter().any(|t| t.ends_with("/clients/other/connected")), "{got:?}");

    // A plain `#` never gets `$SYS` messages.
    let mut hash = Client::connect(&broker, "hash").await;
    hash.subscribe("#", QoS::AtLeastOnce).await;
    Client::connect(&broker, "noise").await.disconnect().await;
    other.publish_acked("plain/y", QoS::AtLeastOnce, "p").await;
    assert_eq!(hash.receive(1).await[0].topic, "plain/y");
}

/// MQTT-1.5.4-1: a topic is at most 65,535 bytes. A client id of 65,500 bytes (within
/// `mqtt.max_clientid_len`) would make presence topics longer than that: no event is published
/// for it (logged instead), never a PUBLISH with a truncated topic length; a `$SYS` watcher
/// stays connected, decodes everything it gets, and sees the next client's events.
#[test]
fn a_client_id_too_long_for_a_topic_makes_no_malformed_presence_event() {
    use e2e::raw::{connect4, Raw, V4};
    let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let (mut watcher, _) = Raw::<V4>::connect(broker.addr, &connect4("long-watcher", true));
    let mut subscribe = rumqttc::Subscribe::new("$SYS/brokers/+/clients/#", QoS::AtMostOnce);
    subscribe.pkid = 1;
    watcher.send(&rumqttc::Packet::Subscribe(subscribe));
    assert!(matches!(watcher.recv(), rumqttc::Packet::SubAck(_)));

    let long_id = "L".repeat(65_500);
    let (mut long, _) = Raw::<V4>::connect(broker.addr, &connect4(&long_id, true));
    long.disconnect();
    broker.wait_for_log("no disconnected event for client");
    let (mut short, _) = Raw::<V4>::connect(broker.addr, &connect4("short", true));
    // The raw client panics on a packet it cannot decode; the first event is the short one's.
    match watcher.recv() {
        rumqttc::Packet::Publish(p) => assert!(p.topic.ends_with("/clients/short/connected"), "{}", p.topic.len()),
        other => panic!("expected the presence event, got {other:?}"),
    }
    short.disconnect();
    match watcher.recv() {
        rumqttc::Packet::Publish(p) => assert!(p.topic.ends_with("/clients/short/disconnected"), "{}", p.topic),
        other => panic!("expected the presence event, got {other:?}"),
    }
    watcher.ping("the watcher is still connected");
}
