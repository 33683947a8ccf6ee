//! A plugin built for another ABI version is refused before any of its code runs (its
//! functions abort the process if called), with a message naming both versions; the broker
//! keeps serving.

use e2e::{Broker, Client, DataDir};
use rumqttc::QoS;

const MESSAGE: &str = "plugin bad_abi was built for plugin ABI version 999; this broker accepts ABI version 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_abi_is_refused_and_the_broker_keeps_serving() {
    let dir = DataDir::with_plugins("{bad_abi, true}.\n");
    let mut broker = Broker::start(&dir, &[]);
    let line = broker.wait_for_log(MESSAGE);
    assert!(line.contains("ERROR"), "{line}");

    let stderr = dir.ctl(&["plugins", "load", "bad_abi"]).err();
    assert_eq!(stderr.trim(), format!("error: {MESSAGE}"));
    let list = dir.ctl(&["plugins", "list"]).ok();
    assert!(list.lines().any(|l| l == "Plugin(bad_abi, description=, active=false)"), "{list}");
    let list = dir.ctl(&["plugins", "list", "--verbose"]).ok();
    assert!(list.contains(&format!("active=false, version=, kind=, state=unavailable: {MESSAGE})")), "{list}");

    let mut sub = Client::connect(&broker, "still-serving").await;
    sub.subscribe("alive", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "still-publishing").await;
    publisher.publish_acked("alive", QoS::AtLeastOnce, "yes").await;
    assert_eq!(&sub.receive(1).await[0].payload[..], b"yes");
    assert!(broker.is_running());
}

/// A plugin built against the first release of ABI version 1 (`old_abi`: its own copies of the
/// event, vtable and stats structs, without every field appended since) is loaded and run by
/// this host: it reads each `message.publish` event's topic where the first release put it,
/// the host fills only the stats fields its older struct has, and it unloads and reloads by
/// name like any plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_the_first_release_still_runs() {
    let dir = DataDir::with_plugins("{old_abi, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let mut publisher = Client::connect(&broker, "old-pub").await;
    for i in 0..5 {
        publisher.publish_acked(&format!("old/{i}"), QoS::AtLeastOnce, "x").await;
    }
    let answer = dir.ctl(&["old_abi", "count"]).ok();
    assert_eq!(answer.trim(), "publishes=5 last_topic=old/4 connections=1 received=5");

    dir.ctl(&["plugins", "reload", "old_abi"]).ok();
    publisher.publish_acked("old/after", QoS::AtLeastOnce, "x").await;
    let answer = dir.ctl(&["old_abi", "count"]).ok();
    assert_eq!(answer.trim(), "publishes=1 last_topic=old/after connections=1 received=6", "a fresh instance");
}

/// `RawMessage` grows like the other structs: a plugin built when it ended at `qos` (the
/// `old_abi` fixture's `retain` command hands `deliver_retained` such a short message, its
/// `size` saying so) gets its retained message delivered, the missing optional fields taken as
/// their defaults (no properties, no expiry), where the host used to refuse any message shorter
/// than its own struct. The subscriber gets it with the retain flag, as MQTT-3.3.1-8 (3.1.1) wants
/// for a retained message sent because of a new subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_from_a_plugin_with_an_older_shorter_raw_message_is_delivered() {
    let dir = DataDir::with_plugins("{old_abi, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let mut sub = Client::connect(&broker, "short-message-sub").await;
    sub.subscribe("old/#", QoS::AtLeastOnce).await;

    let answer = dir.ctl(&["old_abi", "retain", "short-message-sub", "old/#"]).ok();
    assert_eq!(answer.trim(), "delivered");
    let got = sub.receive(1).await;
    assert_eq!((got[0].topic.as_str(), &got[0].payload[..], got[0].retain), ("old/retained", &b"kept"[..], true));
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
}
