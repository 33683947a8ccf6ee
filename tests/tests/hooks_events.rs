//! Hooks fire on real traffic with the right client id and topic (seen by the
//! `hook_recorder` test plugin).

use e2e::{recorded_events, wait_until, Broker, Client, DataDir};
use rumqttc::QoS;
use serde_json::Value;

fn find<'a>(events: &'a [Value], hook: &str, client: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["hook"] == hook && e["client_id"] == client).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_fire_with_client_id_and_topic() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);

    let mut sub = Client::connect(&broker, "alice").await;
    sub.subscribe("rooms/+/temp", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "bob").await;
    publisher.publish_acked("rooms/kitchen/temp", QoS::AtLeastOnce, "21.5").await;
    sub.receive(1).await;
    sub.client.unsubscribe("rooms/+/temp").await.unwrap();
    sub.wait_for("UNSUBACK", |e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::UnsubAck(_)))).await;
    publisher.disconnect().await;
    sub.kill().await;

    let events = wait_until("client.disconnected for alice and bob", || {
        let events = recorded_events(&file);
        let done = !find(&events, "client.disconnected", "alice").is_empty()
            && !find(&events, "client.disconnected", "bob").is_empty();
        done.then_some(events)
    });

    for client in ["alice", "bob"] {
        assert_eq!(find(&events, "client.connect", client).len(), 1, "{client}");
        assert_eq!(find(&events, "client.authenticate", client).len(), 1, "{client}");
        assert_eq!(find(&events, "client.connected", client).len(), 1, "{client}");
    }
    let subscribed = find(&events, "session.subscribed", "alice");
    assert_eq!(subscribed.len(), 1);
    assert_eq!(subscribed[0]["topic"], "rooms/+/temp");
    assert_eq!(subscribed[0]["qos"], 1);
    assert_eq!(find(&events, "client.subscribe", "alice")[0]["topic"], "rooms/+/temp");
    assert_eq!(find(&events, "session.unsubscribed", "alice")[0]["topic"], "rooms/+/temp");

    let published = find(&events, "message.publish", "bob");
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["topic"], "rooms/kitchen/temp");
    assert_eq!(published[0]["payload"], "21.5");
    let delivered = find(&events, "message.delivered", "alice");
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["topic"], "rooms/kitchen/temp");
    assert_eq!(find(&events, "message.acked", "alice").len(), 1);

    assert_eq!(find(&events, "client.disconnected", "bob")[0]["reason"], "normal");
    assert_eq!(find(&events, "client.disconnected", "alice")[0]["reason"], "tcp_closed");
    // No personal data leaks into other clients' events.
    assert!(find(&events, "message.publish", "alice").is_empty());
}

/// EMQX's session hooks, in EMQX's order, for one client id over four connections (MQTT 3.1.1):
/// a new persistent session (`session.created`), a second connection that takes it from the
/// live first (`session.takenover`, `session.resumed`), a third with a clean session that
/// replaces it (`session.discarded`, `session.created`), and its DISCONNECT, which ends that
/// clean session (`session.terminated`, reason `normal`, after `client.disconnected`).
#[test]
fn session_hooks_fire_as_sessions_are_created_resumed_taken_over_discarded_and_ended() {
    use e2e::raw::{connect4, Raw, V4};
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);

    let (_first, ack) = Raw::<V4>::connect(broker.addr, &connect4("dora", false));
    assert!(!ack.session_present);
    let (_second, ack) = Raw::<V4>::connect(broker.addr, &connect4("dora", false));
    assert!(ack.session_present);
    let (mut third, ack) = Raw::<V4>::connect(broker.addr, &connect4("dora", true));
    assert!(!ack.session_present);
    third.disconnect();

    let session_hooks = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["client_id"] == "dora")
            .filter_map(|e| e["hook"].as_str())
            .filter(|h| h.starts_with("session.") || *h == "client.disconnected")
            .map(str::to_owned)
            .collect()
    };
    let seen = wait_until("session.terminated for dora", || {
        let events = recorded_events(&file);
        let hooks = session_hooks(&events);
        hooks.iter().any(|h| h == "session.terminated").then_some((hooks, events))
    });
    let (hooks, events) = seen;
    let expected = [
        "session.created",
        "client.disconnected", // the first connection, taken over
        "session.takenover",
        "session.resumed",
        "client.disconnected", // the second, whose session the third discards
        "session.discarded",
        "session.created",
        "client.disconnected",
        "session.terminated",
    ];
    assert_eq!(hooks, expected);
    let terminated = find(&events, "session.terminated", "dora");
    assert_eq!(terminated[0]["reason"], "normal");
}

/// A client kicked by an operator (`broker ctl sessions kick`) ends with EMQX's reason
/// `kicked` in `client.disconnected`, and an MQTT 5 client is told why: DISCONNECT 0x98,
/// Administrative action (before, `protocol_error`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_client_is_disconnected_as_kicked() {
    use rumqttc::v5::mqttbytes::v5 as mqtt5;
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);
    let mut kicked = e2e::raw::C5::connect(&broker, "kicked-5");
    dir.ctl(&["sessions", "kick", "kicked-5"]).ok();
    match kicked.raw.recv() {
        mqtt5::Packet::Disconnect(d) => {
            assert_eq!(d.reason_code, mqtt5::DisconnectReasonCode::AdministrativeAction)
        }
        other => panic!("DISCONNECT 0x98 expected, got {other:?}"),
    }
    let events = wait_until("client.disconnected for kicked-5", || {
        let events = recorded_events(&file);
        (!find(&events, "client.disconnected", "kicked-5").is_empty()).then_some(events)
    });
    assert_eq!(find(&events, "client.disconnected", "kicked-5")[0]["reason"], "kicked");
}
