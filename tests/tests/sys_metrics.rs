//! What operators watch, as EMQX 4.x shows it: the `$SYS` topics (`emqx_sys`: brokers,
//! version, sysdescr, uptime, datetime, `stats/<gauge>`, `metrics/<counter>`) read with a
//! real `mosquitto_sub -t '$SYS/#'`, and the counters (`emqx_metrics` names: bytes, packets by
//! type, messages by QoS, drops by cause, client and session lifecycle) read with
//! `broker ctl broker metrics` after traffic whose counts are known.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;

use e2e::raw::{connect4, Raw, C5};
use e2e::{counters, mosquitto, start_broker, stat, stat_in, wait_for_stat, wait_until, Broker, DataDir};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS;

/// Reads `$SYS/#` with mosquitto_sub until `count` messages arrived; topic → payload.
fn sys_messages(broker: &Broker, dir: &DataDir, count: usize) -> BTreeMap<String, String> {
    let subscriptions = stat(dir, "subscriptions.count");
    let mut child = mosquitto("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-t", "$SYS/#", "-i", "sys-reader"])
        .args(["-C", &count.to_string(), "-W", "30", "-F", "%t %p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    wait_for_stat(dir, "subscriptions.count", subscriptions + 1);
    let status = child.wait().unwrap();
    let mut printed = String::new();
    child.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    assert!(status.success(), "mosquitto_sub: {status}, printed {printed:?}");
    printed.lines().filter_map(|l| l.split_once(' ')).map(|(t, p)| (t.to_owned(), p.to_owned())).collect()
}

/// `$SYS/brokers`, `version`, `sysdescr` and every gauge and counter each `sys_interval`;
/// `uptime` and `datetime` each `sys_heartbeat`; topics and payloads as EMQX 4.x writes them
/// (`stats/connections.count` keeps its dots, `metrics/messages/received` does not).
#[test]
fn sys_topics_are_published_as_emqx_publishes_them() {
    let (dir, broker) =
        start_broker("", &[("BROKER_BROKER__SYS_INTERVAL", "1s"), ("BROKER_BROKER__SYS_HEARTBEAT", "1s")]);
    let mut publisher = C5::connect(&broker, "sys-pub");
    publisher.publish("sys/x", QoS::AtLeastOnce, "one");

    // Each interval brings 3 info topics, the gauges and the counters; 300 spans more than one.
    let got = sys_messages(&broker, &dir, 300);
    let node = "emqx@127.0.0.1";
    let at = |name: &str| -> &str {
        got.get(&format!("$SYS/brokers/{node}/{name}")).unwrap_or_else(|| panic!("no {name} in {got:#?}"))
    };
    assert_eq!(got.get("$SYS/brokers").map(String::as_str), Some(node), "the node list");
    assert_eq!(at("version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(at("sysdescr"), "MQTT broker with plugins");
    assert!(at("uptime").ends_with(" seconds"), "uptime as EMQX words it: {}", at("uptime"));
    let datetime: String = at("datetime").chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
    assert_eq!(datetime, "9999-99-99 99:99:99", "datetime: {}", at("datetime"));
    // sys-pub and sys-reader are connected while the gauges are read.
    assert_eq!(at("stats/connections.count"), "2");
    assert!(at("stats/connections.max").parse::<u64>().unwrap() >= 2);
    assert!(at("stats/subscriptions.count").parse::<u64>().is_ok());
    // EMQX 4.3's other names for the same gauges.
    assert_eq!(at("stats/channels.count"), "2");
    assert_eq!(at("stats/suboptions.count"), at("stats/subscriptions.count"));
    assert_eq!(at("stats/subscribers.count"), at("stats/subscriptions.count"));
    assert_eq!(at("metrics/messages/received"), "1", "one PUBLISH from a client");
    assert_eq!(at("metrics/messages/qos1/received"), "1");
    assert!(at("metrics/bytes/received").parse::<u64>().unwrap() > 0);
    assert!(at("metrics/packets/connack/sent").parse::<u64>().unwrap() >= 2);
}

/// The two timers are separate and `0` turns one off: with `broker.sys_interval = 0` and a
/// 1 s `sys_heartbeat`, two heartbeats bring `uptime` and `datetime` and nothing else.
#[test]
fn sys_interval_zero_leaves_only_the_heartbeat() {
    let (dir, broker) =
        start_broker("", &[("BROKER_BROKER__SYS_INTERVAL", "0"), ("BROKER_BROKER__SYS_HEARTBEAT", "1")]);
    let port = broker.port().to_string();
    let out = mosquitto("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "$SYS/#", "-C", "4", "-W", "30", "-F", "%t"])
        .output()
        .expect("mosquitto_sub");
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    let topics: Vec<&str> = printed.lines().collect();
    let (uptime, datetime) = ("$SYS/brokers/emqx@127.0.0.1/uptime", "$SYS/brokers/emqx@127.0.0.1/datetime");
    assert_eq!(topics, [uptime, datetime, uptime, datetime]);
    assert_eq!(stat(&dir, "connections.count"), 0);
}

/// EMQX's counters after a known exchange: a 3.1.1 client refused by authentication
/// (`packets.connack.auth_error`), a publisher and a subscriber at QoS 1 and 2, a PINGREQ, a
/// takeover, an UNSUBSCRIBE, a message nobody wants (`messages.dropped.no_subscribers`) and
/// a DISCONNECT; each figure is the exact count of what was sent.
#[test]
fn counters_count_packets_messages_and_lifecycles_as_emqx_does() {
    let dir = DataDir::with_plugins("{gatekeeper, true}.\n");
    dir.write("broker.toml", "[gatekeeper]\ndeny_users = [\"mallory\"]\n");
    let broker = Broker::start(&dir, &[]);
    let metric = |name: &str| stat(&dir, name);

    // Refused, bad credentials: CONNACK 0x04 in 3.1.1.
    let mut refused = connect4("mallory-1", true);
    if let rumqttc::Packet::Connect(connect) = &mut refused {
        connect.login = Some(rumqttc::Login::new("mallory", "pw"));
    }
    let addr = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    let (_raw, ack) = Raw::<e2e::raw::V4>::connect(addr, &refused);
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::BadUserNamePassword);
    wait_until("the refusal counted", || (metric("packets.connack.auth_error") == 1).then_some(()));
    assert_eq!(metric("packets.connack.error"), 1);

    let mut sub = C5::connect(&broker, "m-sub");
    sub.subscribe("m/#", QoS::ExactlyOnce);
    let mut publisher = C5::connect(&broker, "m-pub");
    publisher.publish("m/1", QoS::AtLeastOnce, "a");
    publisher.publish("m/2", QoS::ExactlyOnce, "b");
    publisher.publish("nobody/here", QoS::AtMostOnce, "c");
    // next_publish answers PUBACK and PUBREC; the PUBREL is answered here.
    assert_eq!(sub.next_publish().qos, QoS::AtLeastOnce);
    assert_eq!(sub.next_publish().qos, QoS::ExactlyOnce);
    match sub.raw.recv() {
        v5::Packet::PubRel(rel) => sub.raw.send(&v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None))),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.unsubscribe(&["m/#"]);
    wait_until("the acks counted", || (metric("messages.acked") == 2).then_some(()));

    let figures = counters(&dir);
    let expect = [
        ("packets.connect.received", 3),
        ("packets.connack.sent", 3),
        ("packets.subscribe.received", 1),
        ("packets.suback.sent", 1),
        ("packets.unsubscribe.received", 1),
        ("packets.unsuback.sent", 1),
        ("packets.publish.received", 3),
        ("packets.publish.sent", 2),
        ("packets.puback.sent", 1),
        ("packets.puback.received", 1),
        ("packets.pubrec.sent", 1),
        ("packets.pubrec.received", 1),
        ("packets.pubrel.received", 1),
        ("packets.pubrel.sent", 1),
        ("packets.pubcomp.sent", 1),
        ("packets.pubcomp.received", 1),
        ("messages.received", 3),
        ("messages.qos0.received", 1),
        ("messages.qos1.received", 1),
        ("messages.qos2.received", 1),
        ("messages.sent", 2),
        ("messages.qos1.sent", 1),
        ("messages.qos2.sent", 1),
        ("messages.publish", 3),
        ("messages.delivered", 2),
        ("messages.acked", 2),
        ("messages.dropped", 1),
        ("messages.dropped.no_subscribers", 1),
        ("client.connect", 3),
        ("client.connack", 3),
        ("client.connected", 2),
        ("client.authenticate", 3),
        ("client.subscribe", 1),
        ("client.unsubscribe", 1),
        ("session.created", 2),
        ("sessions.count", 2),
        ("connections.count", 2),
    ];
    let wrong: Vec<String> = expect
        .iter()
        .filter(|(name, value)| stat_in(&figures, name) != *value)
        .map(|(name, value)| format!("{name}: {} (expected {value})", stat_in(&figures, name)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}\nin:\n{figures}");
    // Every packet counted once, in bytes too: the broker received and sent something.
    assert!(stat_in(&figures, "bytes.received") > 0 && stat_in(&figures, "bytes.sent") > 0);
    assert_eq!(
        stat_in(&figures, "packets.received"),
        ["connect", "publish", "puback", "pubrec", "pubrel", "pubcomp", "subscribe", "unsubscribe"]
            .iter()
            .map(|p| stat_in(&figures, &format!("packets.{p}.received")))
            .sum::<u64>(),
        "packets.received is the sum by type"
    );

    // A takeover of a persistent session, then a normal DISCONNECT from the newcomer.
    let lasting = || v5::ConnectProperties { session_expiry_interval: Some(60), ..v5::ConnectProperties::new() };
    let (_old, _) = C5::connect_packet(&broker, &e2e::raw::connect5("m-taken", false, Some(lasting())));
    let (mut new, ack) = C5::connect_packet(&broker, &e2e::raw::connect5("m-taken", false, Some(lasting())));
    assert!(ack.session_present);
    wait_until("the takeover counted", || (metric("session.takeovered") == 1).then_some(()));
    assert_eq!(metric("session.resumed"), 1);
    new.raw.send(&v5::Packet::Disconnect(v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection)));
    wait_until("the DISCONNECT counted", || (metric("packets.disconnect.received") == 1).then_some(()));
    // The old connection was told (MQTT 5 DISCONNECT 0x8E).
    assert_eq!(metric("packets.disconnect.sent"), 1);
}
