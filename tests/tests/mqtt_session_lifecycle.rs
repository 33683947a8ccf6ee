//! Sessions from start to end: clean start discards, a persistent session is resumed with its
//! subscriptions and the messages queued while offline, MQTT 5 Session Expiry (0, N seconds,
//! changed at DISCONNECT, never while connected), `mqtt.session_expiry_interval` for MQTT
//! 3.1.1, takeover of a live client id (resumed or discarded), and the offline queue's bounds
//! (`mqtt.max_mqueue_len`, `mqtt.mqueue_store_qos0`).
//!
//! "Nothing else arrived" is shown with a marker: a message published after the point where
//! the unwanted one would have been sent must be the next one received.

use std::path::Path;

use e2e::raw::{connect4, connect5, payload, topic, v5, Raw, C5, V4, V5};
use e2e::{options, recorded_events, stat, wait_for_stat, wait_until, Broker, Client, DataDir};
use rumqttc::{Packet, QoS};
use serde_json::Value;

type QoS5 = rumqttc::v5::mqttbytes::QoS;

/// A broker recording hook events; returns it with the events file.
fn recording_broker(dir: &DataDir, env: &[(&str, &str)]) -> (Broker, std::path::PathBuf) {
    let file = dir.file("events.jsonl");
    let mut env = env.to_vec();
    let path = file.to_str().unwrap().to_owned();
    env.push(("BROKER_HOOK_RECORDER__FILE", &path));
    (Broker::start(dir, &env), file)
}

fn events(file: &Path, hook: &str, client_id: &str) -> Vec<Value> {
    recorded_events(file).into_iter().filter(|e| e["hook"] == hook && e["client_id"] == client_id).collect()
}

/// Waits until `client_id` has had `n` `client.disconnected` events; returns them.
fn wait_disconnected(file: &Path, client_id: &str, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} client.disconnected for {client_id}"), || {
        let got = events(file, "client.disconnected", client_id);
        (got.len() >= n).then_some(got)
    })
}

// --- MQTT 3.1.1 raw client ---------------------------------------------------------------

fn connect4_with(id: &str, clean: bool, will: Option<&str>) -> Packet {
    let mut packet = connect4(id, clean);
    if let Packet::Connect(c) = &mut packet {
        c.last_will = will.map(|t| rumqttc::LastWill::new(t, id, QoS::AtMostOnce, false));
    }
    packet
}

fn subscribe4(raw: &mut Raw<V4>, filter: &str, qos: QoS) {
    let mut subscribe = rumqttc::Subscribe::new(filter, qos);
    subscribe.pkid = 77;
    raw.send(&Packet::Subscribe(subscribe));
    loop {
        match raw.recv() {
            Packet::SubAck(ack) if ack.pkid == 77 => {
                assert_eq!(ack.return_codes, vec![rumqttc::SubscribeReasonCode::Success(qos)]);
                return;
            }
            Packet::Publish(p) => panic!("unexpected {p:?} before the SUBACK"),
            _ => {}
        }
    }
}

/// Reads messages (acknowledging QoS 1) until one on `marker`; returns `(topic, payload)` of
/// those before it.
fn until_marker4(raw: &mut Raw<V4>, marker: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        if let Packet::Publish(p) = raw.recv() {
            if p.qos == QoS::AtLeastOnce {
                raw.send(&Packet::PubAck(rumqttc::PubAck::new(p.pkid)));
            }
            if p.topic == marker {
                return got;
            }
            got.push((p.topic, String::from_utf8_lossy(&p.payload).into_owned()));
        }
    }
}

// --- MQTT 5 raw client -------------------------------------------------------------------

fn connect5_with(id: &str, clean_start: bool, expiry: Option<u32>, will: Option<&str>) -> v5::Packet {
    let mut properties = v5::ConnectProperties::new();
    properties.session_expiry_interval = expiry;
    let v5::Packet::Connect(c, _, _) = connect5(id, clean_start, Some(properties)) else { unreachable!() };
    let will = will.map(|t| v5::LastWill::new(t, id, QoS5::AtMostOnce, false, None));
    v5::Packet::Connect(c, will, None)
}

fn subscribe5(raw: &mut Raw<V5>, filter: &str) {
    let mut subscribe = v5::Subscribe::new(v5::Filter::new(filter, QoS5::AtLeastOnce), None);
    subscribe.pkid = 77;
    raw.send(&v5::Packet::Subscribe(subscribe));
    match raw.recv() {
        v5::Packet::SubAck(ack) => {
            assert_eq!(ack.return_codes, vec![v5::SubscribeReasonCode::Success(QoS5::AtLeastOnce)])
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn until_marker5(raw: &mut Raw<V5>, marker: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        if let v5::Packet::Publish(p) = raw.recv() {
            if p.qos == QoS5::AtLeastOnce {
                raw.send(&v5::Packet::PubAck(v5::PubAck::new(p.pkid, None)));
            }
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            if topic == marker {
                return got;
            }
            got.push((topic, String::from_utf8_lossy(&p.payload).into_owned()));
        }
    }
}

fn disconnect5(mut raw: Raw<V5>, expiry: Option<u32>) -> Vec<v5::Packet> {
    let properties = expiry.map(|e| v5::DisconnectProperties {
        session_expiry_interval: Some(e),
        reason_string: None,
        user_properties: Vec::new(),
        server_reference: None,
    });
    raw.send(&v5::Packet::Disconnect(v5::Disconnect {
        reason_code: v5::DisconnectReasonCode::NormalDisconnection,
        properties,
    }));
    raw.until_closed()
}

fn payloads(got: &[(String, String)]) -> Vec<&str> {
    got.iter().map(|(_, p)| p.as_str()).collect()
}

// -----------------------------------------------------------------------------------------

/// MQTT-3.1.2-6 (3.1.1), MQTT-3.1.2-4 (5): Clean Session / Clean Start 1 discards the previous
/// session: Session Present 0 (MQTT-3.2.2-1 (3.1.1), MQTT-3.2.2-2 (5)), its subscriptions and
/// the messages queued for it are gone. MQTT-3.1.2-6 (3.1.1): the clean session lasts only as
/// long as its connection: reconnecting with Clean Session 0 finds no session (MQTT-3.2.2-3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_discards_the_session() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[]);
    let mut publisher = Client::connect(&broker, "clean-pub").await;

    // MQTT 3.1.1
    let (mut raw, ack) = Raw::<V4>::connect(broker.addr, &connect4("clean4", false));
    assert!(!ack.session_present);
    subscribe4(&mut raw, "clean/4", QoS::AtLeastOnce);
    raw.disconnect();
    wait_disconnected(&file, "clean4", 1);
    publisher.publish_acked("clean/4", QoS::AtLeastOnce, "queued").await;

    let (mut raw, ack) = Raw::<V4>::connect(broker.addr, &connect4("clean4", true));
    assert!(!ack.session_present, "3.1.1: clean session: no session present");
    subscribe4(&mut raw, "marker/4", QoS::AtLeastOnce);
    publisher.publish_acked("clean/4", QoS::AtLeastOnce, "after").await;
    publisher.publish_acked("marker/4", QoS::AtLeastOnce, "m").await;
    assert_eq!(until_marker4(&mut raw, "marker/4"), vec![], "3.1.1: neither the queue nor the subscription survived");
    raw.disconnect();
    wait_disconnected(&file, "clean4", 2);
    let (mut raw, ack) = Raw::<V4>::connect(broker.addr, &connect4("clean4", false));
    assert!(!ack.session_present, "3.1.1: the clean session ended with its connection");
    raw.disconnect();

    // MQTT 5
    let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("clean5", false, Some(60), None));
    assert!(!ack.session_present);
    subscribe5(&mut raw, "clean/5");
    assert_eq!(disconnect5(raw, None), vec![]);
    wait_disconnected(&file, "clean5", 1);
    publisher.publish_acked("clean/5", QoS::AtLeastOnce, "queued").await;

    let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("clean5", true, Some(60), None));
    assert!(!ack.session_present, "5: clean start: no session present");
    subscribe5(&mut raw, "marker/5");
    publisher.publish_acked("clean/5", QoS::AtLeastOnce, "after").await;
    publisher.publish_acked("marker/5", QoS::AtLeastOnce, "m").await;
    assert_eq!(until_marker5(&mut raw, "marker/5"), vec![], "5: neither the queue nor the subscription survived");
}

/// MQTT-3.1.2-4 and MQTT-3.1.2-5 (3.1.1), MQTT-3.1.2-5 and MQTT-3.1.2-23 (5): a session with
/// Clean Session / Clean Start 0 (MQTT 5: Session Expiry > 0) is kept when the connection ends,
/// keeps matching messages while offline, and is resumed: Session Present 1 (MQTT-3.2.2-2
/// (3.1.1), MQTT-3.2.2-3 (5)), the queued messages in order, and the subscription still
/// working without subscribing again (MQTT-4.5.0-1: messages for a matching subscription are
/// added to the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_is_resumed_with_its_subscriptions_and_queue() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[]);
    let mut publisher = Client::connect(&broker, "keep-pub").await;
    let queued = ["q1", "q2", "q0", "q1b"];
    let qos = [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtMostOnce, QoS::AtLeastOnce];

    // MQTT 3.1.1
    let (mut raw, _) = Raw::<V4>::connect(broker.addr, &connect4("keep4", false));
    subscribe4(&mut raw, "keep/4/+", QoS::AtLeastOnce);
    raw.disconnect();
    wait_disconnected(&file, "keep4", 1);
    for (payload, qos) in queued.iter().zip(qos) {
        publisher.publish_acked("keep/4/m", qos, *payload).await;
    }
    let (mut raw, ack) = Raw::<V4>::connect(broker.addr, &connect4("keep4", false));
    assert!(ack.session_present, "3.1.1: Session Present 1");
    publisher.publish_acked("keep/4/m", QoS::AtLeastOnce, "live").await;
    publisher.publish_acked("keep/4/end", QoS::AtLeastOnce, "end").await;
    let got = until_marker4(&mut raw, "keep/4/end");
    assert_eq!(payloads(&got), ["q1", "q2", "q0", "q1b", "live"], "3.1.1");

    // MQTT 5
    let (mut raw, _) = Raw::<V5>::connect(broker.addr, &connect5_with("keep5", false, Some(60), None));
    subscribe5(&mut raw, "keep/5/+");
    assert_eq!(disconnect5(raw, None), vec![]);
    wait_disconnected(&file, "keep5", 1);
    for (payload, qos) in queued.iter().zip(qos) {
        publisher.publish_acked("keep/5/m", qos, *payload).await;
    }
    let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("keep5", false, Some(60), None));
    assert!(ack.session_present, "5: Session Present 1");
    publisher.publish_acked("keep/5/m", QoS::AtLeastOnce, "live").await;
    publisher.publish_acked("keep/5/end", QoS::AtLeastOnce, "end").await;
    let got = until_marker5(&mut raw, "keep/5/end");
    assert_eq!(payloads(&got), ["q1", "q2", "q0", "q1b", "live"], "5");
}

/// MQTT-4.1.0-2 (5): with Session Expiry Interval 0 (absent, or 0) the session ends when the
/// connection closes, by DISCONNECT or not: `sessions.count` drops, and reconnecting with Clean
/// Start 0 finds no session (MQTT-3.2.2-3 (5): Session Present 0) and no subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_0_ends_the_session_with_the_connection() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut publisher = Client::connect(&broker, "exp0-pub").await;

    let (mut a, _) = Raw::<V5>::connect(broker.addr, &connect5_with("exp0-a", false, None, None));
    subscribe5(&mut a, "exp0/a");
    let (mut b, _) = Raw::<V5>::connect(broker.addr, &connect5_with("exp0-b", false, Some(0), None));
    subscribe5(&mut b, "exp0/b");
    assert_eq!(stat(&dir, "sessions.count"), 3);
    assert_eq!(disconnect5(a, None), vec![]);
    b.drop_connection();
    wait_for_stat(&dir, "sessions.count", 1);

    for id in ["a", "b"] {
        let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_with(&format!("exp0-{id}"), false, None, None));
        assert!(!ack.session_present, "exp0-{id}: the session ended with its connection");
        subscribe5(&mut raw, &format!("marker/{id}"));
        publisher.publish_acked(&format!("exp0/{id}"), QoS::AtLeastOnce, "lost").await;
        publisher.publish_acked(&format!("marker/{id}"), QoS::AtLeastOnce, "m").await;
        assert_eq!(until_marker5(&mut raw, &format!("marker/{id}")), vec![], "exp0-{id}: no subscription left");
    }
}

/// MQTT-3.1.2-23 (5): a session with Session Expiry Interval > 0 outlives its connection;
/// MQTT-4.1.0-2 (5): once the interval has passed (1 s here) it is discarded: `sessions.count`
/// drops, and reconnecting finds no session (MQTT-3.2.2-3 (5): Session Present 0), while a
/// session with a longer interval, disconnected at the same time, is still there (Session
/// Present 1, with the message queued for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_ends_the_session_that_long_after_the_connection() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[]);
    let mut publisher = Client::connect(&broker, "expn-pub").await;

    let (mut short, _) = Raw::<V5>::connect(broker.addr, &connect5_with("expn-short", false, Some(1), None));
    subscribe5(&mut short, "expn/short/+");
    let (mut long, _) = Raw::<V5>::connect(broker.addr, &connect5_with("expn-long", false, Some(60), None));
    subscribe5(&mut long, "expn/long/+");
    assert_eq!(disconnect5(short, None), vec![]);
    assert_eq!(disconnect5(long, None), vec![]);
    wait_disconnected(&file, "expn-short", 1);
    wait_disconnected(&file, "expn-long", 1);
    publisher.publish_acked("expn/long/m", QoS::AtLeastOnce, "kept").await;

    wait_for_stat(&dir, "sessions.count", 2); // the publisher's and expn-long's

    let (mut short, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("expn-short", false, Some(1), None));
    assert!(!ack.session_present, "the 1 s session expired");
    subscribe5(&mut short, "marker/short");
    publisher.publish_acked("expn/short/m", QoS::AtLeastOnce, "lost").await;
    publisher.publish_acked("marker/short", QoS::AtLeastOnce, "m").await;
    assert_eq!(until_marker5(&mut short, "marker/short"), vec![], "no subscription left");

    let (mut long, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("expn-long", false, Some(60), None));
    assert!(ack.session_present, "the 60 s session is still there");
    publisher.publish_acked("expn/long/end", QoS::AtLeastOnce, "end").await;
    assert_eq!(payloads(&until_marker5(&mut long, "expn/long/end")), ["kept"]);
}

/// The Session Expiry Interval of the DISCONNECT replaces the CONNECT's (MQTT 5 §3.14.2.2.2):
/// lowered to 0 the session ends at once (MQTT-4.1.0-2 (5)); raised from a non-zero value it
/// outlives a session that kept the CONNECT's; raised from 0 it is a Protocol Error: the
/// broker answers DISCONNECT 0x82 (MQTT-3.14.2-1: a DISCONNECT reason code; MQTT-3.14.2-2:
/// without a Session Expiry Interval), closes (MQTT-4.13.1-1), does not treat it as a normal
/// DISCONNECT so the will is published (MQTT-3.1.2-8 (5)), and the session ends (its expiry
/// stayed 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_can_change_the_session_expiry() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[]);
    let mut watcher = Client::connect(&broker, "dexp-watcher").await;
    watcher.subscribe("dexp/will/#", QoS::AtMostOnce).await;

    // Raised from 0: a Protocol Error.
    let (mut raw, _) =
        Raw::<V5>::connect(broker.addr, &connect5_with("dexp-zero", false, None, Some("dexp/will/zero")));
    subscribe5(&mut raw, "dexp/zero");
    match &disconnect5(raw, Some(30))[..] {
        [v5::Packet::Disconnect(d)] => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::ProtocolError);
            assert_eq!(d.properties.as_ref().and_then(|p| p.session_expiry_interval), None, "MQTT-3.14.2-2");
        }
        other => panic!("expected DISCONNECT 0x82 then the close, got {other:?}"),
    }
    assert_eq!(watcher.receive(1).await[0].topic, "dexp/will/zero", "not a normal DISCONNECT: the will goes");
    assert_eq!(wait_disconnected(&file, "dexp-zero", 1)[0]["reason"], "protocol_error");
    let (raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("dexp-zero", false, None, None));
    assert!(!ack.session_present, "the session ended: its expiry stayed 0");
    assert_eq!(disconnect5(raw, None), vec![]);

    // Lowered to 0: the session ends with the connection.
    let (mut raw, _) = Raw::<V5>::connect(broker.addr, &connect5_with("dexp-lower", false, Some(60), None));
    subscribe5(&mut raw, "dexp/lower");
    assert_eq!(disconnect5(raw, Some(0)), vec![]);
    wait_disconnected(&file, "dexp-lower", 1);
    let (raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("dexp-lower", false, None, None));
    assert!(!ack.session_present, "expiry lowered to 0 at DISCONNECT: the session ended");
    assert_eq!(disconnect5(raw, None), vec![]);
    wait_for_stat(&dir, "sessions.count", 1);

    // Raised from 1 s to 600 s, against one that keeps its 1 s and disconnects later.
    let (mut raised, _) = Raw::<V5>::connect(broker.addr, &connect5_with("dexp-raised", false, Some(1), None));
    subscribe5(&mut raised, "dexp/raised");
    let (mut kept, _) = Raw::<V5>::connect(broker.addr, &connect5_with("dexp-kept", false, Some(1), None));
    subscribe5(&mut kept, "dexp/kept");
    assert_eq!(disconnect5(raised, Some(600)), vec![]);
    wait_disconnected(&file, "dexp-raised", 1);
    assert_eq!(disconnect5(kept, None), vec![]);
    wait_disconnected(&file, "dexp-kept", 1);
    wait_for_stat(&dir, "sessions.count", 2); // the watcher's and dexp-raised's
    let (_kept, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("dexp-kept", false, Some(1), None));
    assert!(!ack.session_present, "the 1 s session expired");
    let (_raised, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("dexp-raised", false, Some(1), None));
    assert!(ack.session_present, "the session whose expiry was raised at DISCONNECT is still there");
}

/// `mqtt.session_expiry_interval` ("1s") is how long an MQTT 3.1.1 session with Clean Session
/// 0 outlives its connection: after it, `sessions.count` drops and reconnecting finds no
/// session (MQTT-3.2.2-3 (3.1.1): Session Present 0) and no subscription. (3.1.1 has no
/// expiry; §4.1 lets the server discard a session on conditions it defines.) An MQTT 5 session
/// with its own, longer, expiry is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_sessions_end_after_the_configured_session_expiry_interval() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__SESSION_EXPIRY_INTERVAL", "1s")]);

    let (mut v5, _) = Raw::<V5>::connect(broker.addr, &connect5_with("v3exp-5", false, Some(60), None));
    subscribe5(&mut v5, "v3exp/5");
    assert_eq!(disconnect5(v5, None), vec![]);
    let (mut v4, _) = Raw::<V4>::connect(broker.addr, &connect4("v3exp-4", false));
    subscribe4(&mut v4, "v3exp/4", QoS::AtLeastOnce);
    v4.disconnect();
    wait_for_stat(&dir, "sessions.count", 1); // the 3.1.1 one ended

    let mut publisher = Client::connect(&broker, "v3exp-pub").await;
    let (mut v4, ack) = Raw::<V4>::connect(broker.addr, &connect4("v3exp-4", false));
    assert!(!ack.session_present, "the 3.1.1 session expired");
    subscribe4(&mut v4, "marker/4", QoS::AtLeastOnce);
    publisher.publish_acked("v3exp/4", QoS::AtLeastOnce, "lost").await;
    publisher.publish_acked("marker/4", QoS::AtLeastOnce, "m").await;
    assert_eq!(until_marker4(&mut v4, "marker/4"), vec![], "no subscription left");

    let (_v5, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("v3exp-5", false, Some(60), None));
    assert!(ack.session_present, "the MQTT 5 session keeps its own expiry");
}

/// Takeover with Clean Start / Clean Session 0. MQTT 5: MQTT-3.1.4-3: the live connection with
/// the client id gets DISCONNECT 0x8E and is closed; MQTT-3.1.4-4, MQTT-3.1.2-5 and
/// MQTT-3.2.2-3: the newcomer resumes the session (Session Present 1, subscription kept).
/// MQTT 3.1.1: MQTT-3.1.4-2: the existing client is disconnected (nothing sent to it);
/// MQTT-3.1.4-3, MQTT-3.1.2-4 and MQTT-3.2.2-2: the session is resumed. Both: the client is
/// back before its will was due, so the old connection's will (delay 0) is not published
/// (MQTT-3.1.3-9 (5); mosquitto's `07-will-takeover` and EMQX do the same for 3.1.1), and
/// `client.disconnected` says `takeovered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_with_clean_start_0_resumes_the_session() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[]);
    let mut watcher = Client::connect(&broker, "to-watcher").await;
    watcher.subscribe("to/will/#", QoS::AtMostOnce).await;
    let mut publisher = Client::connect(&broker, "to-pub").await;

    // MQTT 5
    let (mut old, _) = Raw::<V5>::connect(broker.addr, &connect5_with("to5", false, Some(60), Some("to/will/to5")));
    subscribe5(&mut old, "to/5/+");
    let (mut new, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("to5", false, Some(60), None));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    assert!(ack.session_present, "5: the newcomer resumes the session");
    old.expect_disconnect_without_expiry(v5::DisconnectReasonCode::SessionTakenOver, "the old MQTT 5 connection");
    // The old connection is closed once its will would have been routed: a marker published
    // now reaches the watcher after any will.
    publisher.publish_acked("to/will/marker5", QoS::AtLeastOnce, "m").await;
    assert_eq!(watcher.receive(1).await[0].topic, "to/will/marker5", "5: no will");
    publisher.publish_acked("to/5/m", QoS::AtLeastOnce, "kept").await;
    publisher.publish_acked("to/5/end", QoS::AtLeastOnce, "end").await;
    assert_eq!(payloads(&until_marker5(&mut new, "to/5/end")), ["kept"], "5: the subscription was kept");

    // MQTT 3.1.1
    let (mut old, _) = Raw::<V4>::connect(broker.addr, &connect4_with("to4", false, Some("to/will/to4")));
    subscribe4(&mut old, "to/4/+", QoS::AtLeastOnce);
    let (mut new, ack) = Raw::<V4>::connect(broker.addr, &connect4("to4", false));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    assert!(ack.session_present, "3.1.1: the newcomer resumes the session");
    assert_eq!(old.until_closed(), vec![], "3.1.1: the old connection is closed, nothing sent");
    publisher.publish_acked("to/will/marker4", QoS::AtLeastOnce, "m").await;
    assert_eq!(watcher.receive(1).await[0].topic, "to/will/marker4", "3.1.1: no will");
    publisher.publish_acked("to/4/m", QoS::AtLeastOnce, "kept").await;
    publisher.publish_acked("to/4/end", QoS::AtLeastOnce, "end").await;
    assert_eq!(payloads(&until_marker4(&mut new, "to/4/end")), ["kept"], "3.1.1: the subscription was kept");

    for id in ["to5", "to4"] {
        assert_eq!(wait_disconnected(&file, id, 1)[0]["reason"], "takeovered", "{id}");
    }
}

/// Takeover with Clean Start / Clean Session 1: the old connection is ended as in any takeover
/// (MQTT-3.1.4-3 (5): DISCONNECT 0x8E; MQTT-3.1.4-2 (3.1.1): closed) and its will published
/// (MQTT-3.1.2-8), but the session is discarded (MQTT-3.1.2-4 (5), MQTT-3.1.2-6 (3.1.1)):
/// Session Present 0 (MQTT-3.2.2-2 (5), MQTT-3.2.2-1 (3.1.1)), the old subscription is gone;
/// `client.disconnected` says `discarded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_with_clean_start_1_discards_the_session() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[]);
    let mut watcher = Client::connect(&broker, "td-watcher").await;
    watcher.subscribe("td/will/#", QoS::AtMostOnce).await;
    let mut publisher = Client::connect(&broker, "td-pub").await;

    // MQTT 5
    let (mut old, _) = Raw::<V5>::connect(broker.addr, &connect5_with("td5", false, Some(60), Some("td/will/td5")));
    subscribe5(&mut old, "td/5/+");
    let (mut new, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("td5", true, Some(60), None));
    assert!(!ack.session_present, "5: clean start: a new session");
    old.expect_disconnect_without_expiry(v5::DisconnectReasonCode::SessionTakenOver, "the old MQTT 5 connection");
    assert_eq!(watcher.receive(1).await[0].topic, "td/will/td5");
    subscribe5(&mut new, "td/5/end");
    publisher.publish_acked("td/5/m", QoS::AtLeastOnce, "lost").await;
    publisher.publish_acked("td/5/end", QoS::AtLeastOnce, "end").await;
    assert_eq!(until_marker5(&mut new, "td/5/end"), vec![], "5: the old subscription is gone");

    // MQTT 3.1.1
    let (mut old, _) = Raw::<V4>::connect(broker.addr, &connect4_with("td4", false, Some("td/will/td4")));
    subscribe4(&mut old, "td/4/+", QoS::AtLeastOnce);
    let (mut new, ack) = Raw::<V4>::connect(broker.addr, &connect4("td4", true));
    assert!(!ack.session_present, "3.1.1: clean session: a new session");
    assert_eq!(old.until_closed(), vec![], "3.1.1: the old connection is closed, nothing sent");
    assert_eq!(watcher.receive(1).await[0].topic, "td/will/td4");
    subscribe4(&mut new, "td/4/end", QoS::AtLeastOnce);
    publisher.publish_acked("td/4/m", QoS::AtLeastOnce, "lost").await;
    publisher.publish_acked("td/4/end", QoS::AtLeastOnce, "end").await;
    assert_eq!(until_marker4(&mut new, "td/4/end"), vec![], "3.1.1: the old subscription is gone");

    for id in ["td5", "td4"] {
        assert_eq!(wait_disconnected(&file, id, 1)[0]["reason"], "discarded", "{id}");
    }
}

/// MQTT-3.1.2-6 (3.1.1): a Clean Session 1 session lasts as long as its connection; MQTT 5
/// §3.1.2.11.2: Session Expiry 0 ends it with the connection. So a newcomer with Clean Session
/// / Clean Start 0 that takes over such a live connection finds no session: Session Present 0
/// (MQTT-3.2.2-3 (3.1.1), MQTT-3.2.2-2 (5)), and the old subscription sends it nothing. The old
/// connection is ended as in any takeover; `client.disconnected` says `discarded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_of_a_clean_session_does_not_resume_it() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[]);
    let mut publisher = Client::connect(&broker, "tc-pub").await;

    // MQTT 3.1.1: A with Clean Session 1, B with Clean Session 0.
    let (mut old, _) = Raw::<V4>::connect(broker.addr, &connect4("tc4", true));
    subscribe4(&mut old, "tc/4/+", QoS::AtLeastOnce);
    let (mut new, ack) = Raw::<V4>::connect(broker.addr, &connect4("tc4", false));
    assert!(!ack.session_present, "3.1.1: the clean session ended with its connection (MQTT-3.2.2-3)");
    assert_eq!(old.until_closed(), vec![], "3.1.1: the old connection is closed, nothing sent");
    subscribe4(&mut new, "tc/4/end", QoS::AtLeastOnce);
    publisher.publish_acked("tc/4/m", QoS::AtLeastOnce, "not for B").await;
    publisher.publish_acked("tc/4/end", QoS::AtLeastOnce, "end").await;
    assert_eq!(until_marker4(&mut new, "tc/4/end"), vec![], "3.1.1: A's subscription is not B's");
    new.disconnect();
    let (mut again, ack) = Raw::<V4>::connect(broker.addr, &connect4("tc4", false));
    assert!(ack.session_present, "3.1.1: B's own session (Clean Session 0) is kept");
    again.disconnect();

    // MQTT 5: A with Session Expiry 0 (clean start or not), B with Clean Start 0.
    for (a_clean, id) in [(true, "tc5a"), (false, "tc5b")] {
        let (mut old, _) = Raw::<V5>::connect(broker.addr, &connect5_with(id, a_clean, Some(0), None));
        subscribe5(&mut old, &format!("tc/{id}/+"));
        let (mut new, ack) = Raw::<V5>::connect(broker.addr, &connect5_with(id, false, Some(60), None));
        assert!(!ack.session_present, "5 ({id}): A's session had expiry 0: no session present");
        old.expect_disconnect_without_expiry(v5::DisconnectReasonCode::SessionTakenOver, "the old MQTT 5 connection");
        subscribe5(&mut new, &format!("tc/{id}/end"));
        publisher.publish_acked(&format!("tc/{id}/m"), QoS::AtLeastOnce, "not for B").await;
        publisher.publish_acked(&format!("tc/{id}/end"), QoS::AtLeastOnce, "end").await;
        assert_eq!(until_marker5(&mut new, &format!("tc/{id}/end")), vec![], "5 ({id}): A's subscription is gone");
    }

    for id in ["tc4", "tc5a", "tc5b"] {
        assert_eq!(wait_disconnected(&file, id, 1)[0]["reason"], "discarded", "{id}");
    }
}

/// The offline queue holds at most `mqtt.max_mqueue_len` (3) messages. When full, the oldest
/// QoS 0 message goes first; with no QoS 0 queued, a new QoS 0 message is the one dropped, and
/// a new QoS 1 message pushes out the oldest. Each drop fires `message.dropped` (reason
/// `queue_full`) and counts in `messages.dropped`. (No normative statement: the specifications
/// leave such limits to the server; MQTT-3.1.2-5 (3.1.1) is what a limit of this kind trades
/// away, so the policy is checked exactly.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_queue_is_bounded_by_max_mqueue_len() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[("BROKER_MQTT__MAX_MQUEUE_LEN", "3")]);
    let mut opts = options(&broker, "mq-sub");
    opts.set_clean_session(false);
    let mut sub = Client::connect_with(opts.clone()).await;
    sub.subscribe("mq/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    wait_disconnected(&file, "mq-sub", 1);

    let dropped_before = stat(&dir, "delivery.dropped");
    let mut publisher = Client::connect(&broker, "mq-pub").await;
    // queue: [a] [a b] [a b c] -> d drops a -> e drops c -> f (QoS 0, none queued) drops f
    // -> g drops b (the oldest): [d e g]
    let sent = [
        ("a", QoS::AtMostOnce),
        ("b", QoS::AtLeastOnce),
        ("c", QoS::AtMostOnce),
        ("d", QoS::AtLeastOnce),
        ("e", QoS::AtLeastOnce),
        ("f", QoS::AtMostOnce),
        ("g", QoS::AtLeastOnce),
    ];
    for (payload, qos) in sent {
        publisher.publish_acked("mq/t", qos, payload).await;
    }

    let drops = wait_until("4 message.dropped for mq-sub", || {
        let drops = events(&file, "message.dropped", "mq-sub");
        (drops.len() >= 4).then_some(drops)
    });
    let dropped: Vec<&str> = drops.iter().map(|e| e["payload"].as_str().unwrap()).collect();
    assert_eq!(dropped, ["a", "c", "f", "b"], "dropped, in order");
    for e in &drops {
        assert_eq!(e["reason"], "queue_full", "{e}");
        assert_eq!(e["topic"], "mq/t");
    }
    // EMQX's counters: a full queue drops at delivery; three were QoS 0.
    assert_eq!(stat(&dir, "delivery.dropped") - dropped_before, 4);
    assert_eq!((stat(&dir, "delivery.dropped.qos0_msg"), stat(&dir, "delivery.dropped.queue_full")), (3, 1));

    let mut sub = Client::connect_with(opts).await;
    let got: Vec<_> =
        sub.receive(3).await.into_iter().map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), p.qos)).collect();
    assert_eq!(
        got,
        [("d".to_owned(), QoS::AtLeastOnce), ("e".to_owned(), QoS::AtLeastOnce), ("g".to_owned(), QoS::AtLeastOnce)]
    );
    publisher.publish_acked("mq/t", QoS::AtLeastOnce, "marker").await;
    assert_eq!(&sub.receive(1).await[0].payload[..], b"marker", "nothing else was queued");
    assert_eq!(events(&file, "message.dropped", "mq-sub").len(), 4, "no more drops");
}

/// `mqtt.mqueue_store_qos0 = false`: QoS 0 messages are not kept for an offline client, QoS 1
/// messages are (MQTT-3.1.2-5 (3.1.1): the server MUST store QoS 1 and QoS 2 messages for a
/// disconnected session; QoS 0 MAY be). A connected client still gets QoS 0 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqueue_store_qos0_false_keeps_no_qos0_for_offline_clients() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let (broker, file) = recording_broker(&dir, &[("BROKER_MQTT__MQUEUE_STORE_QOS0", "false")]);
    let mut publisher = Client::connect(&broker, "q0-pub").await;
    let mut opts = options(&broker, "q0-sub");
    opts.set_clean_session(false);
    let mut sub = Client::connect_with(opts.clone()).await;
    sub.subscribe("q0/t", QoS::AtLeastOnce).await;
    publisher.publish_acked("q0/t", QoS::AtMostOnce, "online").await;
    assert_eq!(&sub.receive(1).await[0].payload[..], b"online", "QoS 0 reaches a connected client");
    sub.disconnect().await;
    wait_disconnected(&file, "q0-sub", 1);

    publisher.publish_acked("q0/t", QoS::AtMostOnce, "x0").await;
    publisher.publish_acked("q0/t", QoS::AtLeastOnce, "y1").await;
    publisher.publish_acked("q0/t", QoS::AtMostOnce, "z0").await;
    publisher.publish_acked("q0/t", QoS::AtLeastOnce, "w1").await;

    let mut sub = Client::connect_with(opts).await;
    let got: Vec<_> =
        sub.receive(2).await.into_iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    assert_eq!(got, ["y1", "w1"]);
    publisher.publish_acked("q0/t", QoS::AtMostOnce, "marker").await;
    assert_eq!(&sub.receive(1).await[0].payload[..], b"marker", "no QoS 0 message was kept");
}

/// MQTT-4.1.0-1 (5): a session is not discarded while its connection is open, however short its
/// Session Expiry Interval: a client with an interval of 1 s stays connected while the 1 s
/// session of a second client, which connected and left after the first connected, runs out
/// (`sessions.count` drops to 1; a message to the second one's subscription then finds no
/// subscriber). The first session is still there: still counted, and its subscription still
/// delivers.
#[test]
fn a_session_is_kept_while_its_connection_is_open() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut kept, ack) = Raw::<V5>::connect(broker.addr, &connect5_with("open-kept", false, Some(1), None));
    assert!(!ack.session_present);
    subscribe5(&mut kept, "open/kept");
    let (mut gone, _) = Raw::<V5>::connect(broker.addr, &connect5_with("open-gone", false, Some(1), None));
    subscribe5(&mut gone, "open/gone");
    assert_eq!(stat(&dir, "sessions.count"), 2);
    assert_eq!(disconnect5(gone, None), vec![]);
    wait_for_stat(&dir, "sessions.count", 1); // open-gone's session ended, 1 s after its connection

    kept.ping("open-kept is still connected");
    let mut publisher = C5::connect(&broker, "open-pub");
    assert_eq!(stat(&dir, "sessions.count"), 2, "open-kept's session and the publisher's");
    match publisher.publish_retain("open/gone", QoS5::AtLeastOnce, false, "nobody") {
        Some(v5::Packet::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::NoMatchingSubscribers),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    publisher.publish("open/kept", QoS5::AtLeastOnce, "still subscribed");
    match kept.recv() {
        v5::Packet::Publish(p) => {
            assert_eq!((topic(&p), payload(&p)), ("open/kept".to_owned(), "still subscribed".to_owned()))
        }
        other => panic!("expected the message, got {other:?}"),
    }
}
