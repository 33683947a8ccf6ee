//! `emqx_retainer` end to end: store, replace, delete, wildcard delivery, QoS, limits,
//! EMQX's storage types (`ram` by default, `disc`, `disc_only`: in the broker's store, across
//! `kill -9`; an old `emqx_retainer.dat` imported) and expiry settings, MQTT 5
//! Message Expiry, EMQX's `ctl retainer` output, and no retaining while it is unloaded; a
//! retained QoS 0 message replaces the one before, a PUBLISH with RETAIN 0 (MQTT 3.1.1 and 5)
//! leaves it alone.

use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::raw::{payload, topic, C5};
use e2e::{mosquitto, wait_until, Broker, Client, DataDir};
use rumqttc::v5::mqttbytes::v5 as mqtt5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{Publish, QoS};

const PLUGINS: &str = "{emqx_retainer, true}.\n";

async fn publish_retained(broker: &Broker, topic: &str, qos: QoS, payload: &str) {
    let mut publisher = Client::connect(broker, &format!("retain-{}", e2e::unique())).await;
    publisher.client.publish(topic, qos, true, payload.as_bytes().to_vec()).await.unwrap();
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            publisher.wait_for("PUBACK", |e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))).await;
        }
        QoS::ExactlyOnce => {
            publisher.wait_for("PUBCOMP", |e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)))).await;
        }
    }
    publisher.disconnect().await;
}

/// Subscribes a new client to `filter` and returns the retained messages it gets: everything
/// that arrives before a live marker published after the SUBACK.
async fn retained_for(broker: &Broker, filter: &str, qos: QoS) -> Vec<Publish> {
    let mut sub = Client::connect(broker, &format!("rsub-{}", e2e::unique())).await;
    sub.subscribe(filter, qos).await;
    sub.subscribe("marker/end", QoS::AtLeastOnce).await;
    let mut marker = Client::connect(broker, &format!("marker-{}", e2e::unique())).await;
    marker.publish_acked("marker/end", QoS::AtLeastOnce, "end").await;
    let mut got = Vec::new();
    loop {
        let p = sub.receive(1).await.remove(0);
        if p.topic == "marker/end" {
            break;
        }
        got.push(p);
    }
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    got
}

fn summary(messages: &[Publish]) -> Vec<(String, String, QoS, bool)> {
    messages
        .iter()
        .map(|p| (p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned(), p.qos, p.retain))
        .collect()
}

fn s(t: &str, p: &str, q: QoS) -> (String, String, QoS, bool) {
    (t.into(), p.into(), q, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_replaces_deletes_and_delivers_on_subscribe() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[]);
    publish_retained(&broker, "home/kitchen/temp", QoS::AtLeastOnce, "20").await;
    publish_retained(&broker, "home/kitchen/temp", QoS::AtLeastOnce, "21").await; // latest wins
    publish_retained(&broker, "home/garage/temp", QoS::ExactlyOnce, "9").await;
    publish_retained(&broker, "home/hall/temp", QoS::AtMostOnce, "15").await;
    publish_retained(&broker, "home/hall/temp", QoS::AtLeastOnce, "").await; // deletes
    publish_retained(&broker, "office/temp", QoS::AtMostOnce, "18").await;

    assert_eq!(
        summary(&retained_for(&broker, "home/+/temp", QoS::ExactlyOnce).await),
        vec![s("home/garage/temp", "9", QoS::ExactlyOnce), s("home/kitchen/temp", "21", QoS::AtLeastOnce)]
    );
    // At the lower of the stored QoS and the subscription's.
    assert_eq!(
        summary(&retained_for(&broker, "#", QoS::AtLeastOnce).await),
        vec![
            s("home/garage/temp", "9", QoS::AtLeastOnce),
            s("home/kitchen/temp", "21", QoS::AtLeastOnce),
            s("office/temp", "18", QoS::AtMostOnce),
        ]
    );
    assert!(retained_for(&broker, "nothing/here", QoS::AtLeastOnce).await.is_empty());

    // Live subscribers get the message without the retain flag.
    let mut live = Client::connect(&broker, "live").await;
    live.subscribe("office/#", QoS::AtLeastOnce).await;
    live.receive(1).await; // the retained one
    publish_retained(&broker, "office/temp", QoS::AtLeastOnce, "19").await;
    let p = live.receive(1).await.remove(0);
    assert_eq!((&p.payload[..], p.retain), (&b"19"[..], false));

    // And mosquitto_sub sees a retained message too.
    let out = mosquitto("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-t", "office/#", "-C", "1", "-W", "20"])
        .args(["-F", "%r %t %p"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 office/temp 19");
    // EMQX's `messages.retained`: the six retained messages stored (not the deleting one).
    assert_eq!(e2e::stat(&dir, "messages.retained"), 6);
    // EMQX's `retained.count` gauge (`retained.max` beside it), with the broker's gauges:
    // three topics hold one now, and three did at most; one deleted leaves two, the most three.
    let stats = dir.ctl(&["broker", "stats"]).ok();
    assert_eq!((e2e::stat_in(&stats, "retained.count"), e2e::stat_in(&stats, "retained.max")), (3, 3), "{stats}");
    publish_retained(&broker, "office/temp", QoS::AtLeastOnce, "").await;
    let stats = dir.ctl(&["broker", "stats"]).ok();
    assert_eq!((e2e::stat_in(&stats, "retained.count"), e2e::stat_in(&stats, "retained.max")), (2, 3), "{stats}");
    let json: serde_json::Value = serde_json::from_str(&dir.ctl(&["broker", "stats", "--json"]).ok()).unwrap();
    assert_eq!(json["retained.count"], 2, "{json}");
}

/// MQTT-3.3.1-6: a new subscription gets the retained message of every matching topic, and
/// of no other, now that the retainer finds them through its index (an exact filter is one
/// lookup; a wildcard filter walks only the topics under its levels before the wildcard):
/// `a/b/#` gets `a/b` itself (its parent level) but not `a/bc`, which shares its prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_gets_exactly_the_retained_messages_it_matches() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[]);
    for topic in ["a", "a/b", "a/b/c", "a/bc", "ab", "b/a"] {
        publish_retained(&broker, topic, QoS::AtMostOnce, topic).await;
    }
    let topics = |messages: Vec<Publish>| messages.into_iter().map(|p| p.topic).collect::<Vec<_>>();
    assert_eq!(topics(retained_for(&broker, "a/b", QoS::AtMostOnce).await), ["a/b"]);
    assert_eq!(topics(retained_for(&broker, "a/b/#", QoS::AtMostOnce).await), ["a/b", "a/b/c"]);
    assert_eq!(topics(retained_for(&broker, "a/+", QoS::AtMostOnce).await), ["a/b", "a/bc"]);
    assert_eq!(topics(retained_for(&broker, "+", QoS::AtMostOnce).await), ["a", "ab"]);
    assert_eq!(topics(retained_for(&broker, "+/a", QoS::AtMostOnce).await), ["b/a"]);
    assert_eq!(topics(retained_for(&broker, "a/#", QoS::AtMostOnce).await), ["a", "a/b", "a/b/c", "a/bc"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_with_a_log_line() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(
        &dir,
        &[("BROKER_RETAINER__MAX_RETAINED_MESSAGES", "2"), ("BROKER_RETAINER__MAX_PAYLOAD_SIZE", "10B")],
    );
    publish_retained(&broker, "big", QoS::AtLeastOnce, "01234567890").await;
    broker.wait_for_log("retained message on big not stored: 11 bytes is over max_payload_size (10 bytes)");
    publish_retained(&broker, "a", QoS::AtLeastOnce, "1").await;
    publish_retained(&broker, "b", QoS::AtLeastOnce, "2").await;
    publish_retained(&broker, "c", QoS::AtLeastOnce, "3").await;
    broker.wait_for_log("retained message on c not stored: max_retained_messages (2) reached");
    publish_retained(&broker, "a", QoS::AtLeastOnce, "4").await; // replacing is not adding
    assert_eq!(
        summary(&retained_for(&broker, "+", QoS::AtLeastOnce).await),
        vec![s("a", "4", QoS::AtLeastOnce), s("b", "2", QoS::AtLeastOnce)]
    );
    assert!(broker.logs().iter().all(|l| !l.contains("panicked")));
}

/// `retainer.expiry_interval`: a duration, or a bare number of milliseconds as EMQX reads it
/// (`1000` is one second, not 1000 seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_not_delivered() {
    for interval in ["1s", "1000"] {
        let dir = DataDir::with_plugins(PLUGINS);
        let broker = Broker::start(&dir, &[("BROKER_RETAINER__EXPIRY_INTERVAL", interval)]);
        publish_retained(&broker, "short/lived", QoS::AtLeastOnce, "x").await;
        assert_eq!(dir.ctl(&["retainer", "topics"]).ok().trim(), "short/lived", "it was stored");
        let start = Instant::now();
        while !retained_for(&broker, "short/#", QoS::AtLeastOnce).await.is_empty() {
            assert!(start.elapsed() < e2e::DEADLINE, "expiry_interval = {interval}: the message never expired");
        }
        assert_eq!(dir.ctl(&["retainer", "info"]).ok().trim(), "retained/total: 0");
    }
}

/// MQTT 5 Message Expiry of a retained message: once it has passed, a new subscriber does
/// not get the message (MQTT-3.3.2-5); one still running is delivered with what is left of
/// its interval (MQTT-3.3.2-6).
#[test]
fn message_expiry_of_retained_messages_is_honoured() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[]);
    let mut publisher = C5::connect(&broker, "mx-pub");
    for (name, seconds) in [("mx/short", 1), ("mx/long", 600)] {
        let props = mqtt5::PublishProperties { message_expiry_interval: Some(seconds), ..Default::default() };
        let mut publish = mqtt5::Publish::new(name, Q5::AtLeastOnce, b"x".to_vec(), Some(props));
        publish.retain = true;
        publisher.publish_packet(publish);
    }
    let stored = Instant::now(); // the broker had both before this
    wait_until("the 1 s expiry to pass", || (stored.elapsed() > Duration::from_millis(1100)).then_some(()));

    let mut sub = C5::connect(&broker, "mx-sub");
    sub.subscribe("mx-marker", Q5::AtLeastOnce);
    sub.subscribe("mx/#", Q5::AtLeastOnce);
    publisher.publish("mx-marker", Q5::AtLeastOnce, "end");
    let got = sub.until("mx-marker");
    assert_eq!(got.iter().map(topic).collect::<Vec<_>>(), ["mx/long"], "the expired one is not delivered");
    let left = got[0].properties.as_ref().and_then(|p| p.message_expiry_interval).expect("an expiry");
    assert!((590..600).contains(&left), "what is left of 600 s after a second or more: {left}");
}

/// `broker ctl retainer info | topics | clean [FILTER]` print what EMQX's `emqx_ctl retainer`
/// prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_prints_emqx_text() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[]);
    assert_eq!(dir.ctl(&["retainer", "info"]).ok().trim(), "retained/total: 0");
    for t in ["a/1", "a/2", "b/1"] {
        publish_retained(&broker, t, QoS::AtLeastOnce, "x").await;
    }
    assert_eq!(dir.ctl(&["retainer", "info"]).ok().trim(), "retained/total: 3");
    assert_eq!(dir.ctl(&["retainer", "topics"]).ok().trim(), "a/1\na/2\nb/1");
    assert_eq!(dir.ctl(&["retainer", "clean", "a/#"]).ok().trim(), "Cleaned 2 retained messages");
    assert_eq!(dir.ctl(&["retainer", "topics"]).ok().trim(), "b/1");
    assert!(dir.ctl(&["retainer", "clean", "a/#/b"]).err().contains("invalid topic filter"));
    assert_eq!(dir.ctl(&["retainer", "clean"]).ok().trim(), "Cleaned 1 retained messages");
    assert_eq!(dir.ctl(&["retainer", "info"]).ok().trim(), "retained/total: 0");
    assert!(retained_for(&broker, "#", QoS::AtLeastOnce).await.is_empty());
}

/// `storage_type = "disc"` (and `"disc_only"`, which behaves as disc): kept in the data
/// directory across a restart and a crash.
/// `disc` and `disc_only` keep retained messages in the broker's store: across a clean restart,
/// and across `kill -9` right after the PUBACK (the message is durable before it is
/// acknowledged), with their QoS and an MQTT 5 message's properties and expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disc_storage_survives_restart_and_crash() {
    for storage in ["disc", "disc_only"] {
        disc_storage(storage).await;
    }
}

async fn disc_storage(storage: &str) {
    let dir = DataDir::with_plugins(PLUGINS);
    let env = [("BROKER_RETAINER__STORAGE_TYPE", storage)];
    let broker = Broker::start(&dir, &env);
    publish_retained(&broker, "keep/1", QoS::AtLeastOnce, "one").await;
    broker.stop();

    let broker = Broker::start(&dir, &env);
    broker.wait_for_log(&format!("retainer started (storage_type {storage}, 1 retained messages)"));
    assert_eq!(
        summary(&retained_for(&broker, "keep/#", QoS::AtLeastOnce).await),
        vec![s("keep/1", "one", QoS::AtLeastOnce)]
    );
    publish_retained(&broker, "keep/2", QoS::ExactlyOnce, "two").await;
    // MQTT 5, with properties and an expiry: acknowledged, then the broker is killed at once.
    let mut v5 = C5::connect(&broker, "keep-v5");
    let props = mqtt5::PublishProperties {
        message_expiry_interval: Some(600),
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let mut publish = mqtt5::Publish::new("keep/3", Q5::AtLeastOnce, b"three".to_vec(), Some(props));
    publish.retain = true;
    v5.publish_packet(publish);
    let broker = broker.kill9_and_restart(&dir, &env);

    assert_eq!(
        summary(&retained_for(&broker, "keep/#", QoS::ExactlyOnce).await),
        vec![
            s("keep/1", "one", QoS::AtLeastOnce),
            s("keep/2", "two", QoS::ExactlyOnce),
            s("keep/3", "three", QoS::AtLeastOnce)
        ]
    );
    let mut sub = C5::connect(&broker, "keep-v5-sub");
    sub.subscribe("keep/3", Q5::AtLeastOnce);
    let got = sub.next_publish();
    let props = got.properties.as_ref().expect("the properties kept");
    assert_eq!(
        (props.content_type.as_deref(), &props.user_properties[..]),
        (Some("text/plain"), &[("k".into(), "v".into())][..])
    );
    let left = props.message_expiry_interval.expect("the expiry kept");
    assert!((500..=600).contains(&left), "what is left of 600 s: {left}");

    // An empty payload deletes, durably too.
    publish_retained(&broker, "keep/1", QoS::AtLeastOnce, "").await;
    let broker = broker.kill9_and_restart(&dir, &env);
    broker.wait_for_log(&format!("retainer started (storage_type {storage}, 2 retained messages)"));
    assert_eq!(dir.ctl(&["retainer", "topics"]).ok().trim(), "keep/2\nkeep/3");
}

/// An `emqx_retainer.dat` written by an older version is imported into the store at the first
/// start with `disc` and renamed `emqx_retainer.dat.imported`; a damaged one is left in place
/// with a warning naming it, and the broker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_retainer_file_is_imported_once() {
    let dir = DataDir::with_plugins(PLUGINS);
    let env = [("BROKER_RETAINER__STORAGE_TYPE", "disc")];
    std::fs::write(dir.file("emqx_retainer.dat"), old_file(&[("old/a", 1, b"A"), ("old/b", 0, b"B")])).unwrap();
    let broker = Broker::start(&dir, &env);
    let line = broker.wait_for_log("imported 2 retained messages from");
    assert!(line.contains("emqx_retainer.dat (renamed emqx_retainer.dat.imported)"), "{line}");
    assert!(!dir.file("emqx_retainer.dat").exists());
    assert!(dir.file("emqx_retainer.dat.imported").exists());
    assert_eq!(
        summary(&retained_for(&broker, "old/#", QoS::AtLeastOnce).await),
        vec![s("old/a", "A", QoS::AtLeastOnce), s("old/b", "B", QoS::AtMostOnce)]
    );
    // Served from the store from now on.
    let broker = broker.kill9_and_restart(&dir, &env);
    broker.wait_for_log("retainer started (storage_type disc, 2 retained messages)");
    assert!(!broker.logs().iter().any(|l| l.contains("imported")), "imported once");
    drop(broker);

    let damaged = old_file(&[("bad/a", 1, b"A")]);
    std::fs::write(dir.file("emqx_retainer.dat"), &damaged[..damaged.len() - 2]).unwrap();
    let broker = Broker::start(&dir, &env);
    let line = broker.wait_for_log("emqx_retainer.dat not imported");
    assert!(line.contains("WARN") && line.contains("truncated") && line.contains("left in place"), "{line}");
    broker.wait_for_log("retainer started (storage_type disc, 2 retained messages)");
    assert_eq!(std::fs::read(dir.file("emqx_retainer.dat")).unwrap(), &damaged[..damaged.len() - 2]);
}

/// The file format of older versions (`broker-retainer v2`): topic, QoS, stored at, payload,
/// properties, expiry.
fn old_file(messages: &[(&str, u8, &[u8])]) -> Vec<u8> {
    let mut out = b"broker-retainer v2\n".to_vec();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for (topic, qos, payload) in messages {
        out.extend_from_slice(&(topic.len() as u32).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.push(*qos);
        out.extend_from_slice(&now.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
    }
    out
}

/// `ram` is the default, as in EMQX: nothing is written, a restart forgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_storage_is_the_default_and_forgets_on_restart() {
    let dir = DataDir::with_plugins(PLUGINS);
    let env: [(&str, &str); 0] = [];
    let broker = Broker::start(&dir, &env);
    broker.wait_for_log("retainer started (storage_type ram, 0 retained messages)");
    publish_retained(&broker, "ram/1", QoS::AtLeastOnce, "x").await;
    assert_eq!(retained_for(&broker, "ram/#", QoS::AtLeastOnce).await.len(), 1);
    broker.stop();
    let broker = Broker::start(&dir, &env);
    assert!(retained_for(&broker, "ram/#", QoS::AtLeastOnce).await.is_empty());
    assert!(!dir.file("emqx_retainer.dat").exists());
    assert!(!dir.store_contains(b"ram/1"), "ram never writes the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloaded_the_broker_does_not_retain_and_reload_brings_messages_back() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[("BROKER_RETAINER__STORAGE_TYPE", "disc")]);
    publish_retained(&broker, "kept/before", QoS::AtLeastOnce, "stored").await;
    dir.ctl(&["plugins", "unload", "emqx_retainer"]).ok();

    publish_retained(&broker, "kept/during", QoS::AtLeastOnce, "not stored").await;
    assert!(retained_for(&broker, "kept/#", QoS::AtLeastOnce).await.is_empty(), "nothing retained while unloaded");

    dir.ctl(&["plugins", "load", "emqx_retainer"]).ok();
    assert_eq!(
        summary(&retained_for(&broker, "kept/#", QoS::AtLeastOnce).await),
        vec![s("kept/before", "stored", QoS::AtLeastOnce)]
    );
}

/// MQTT-3.3.1-7 (3.1.1): a retained message published at QoS 0 replaces the message retained
/// for its topic (here one retained at QoS 1 and one at QoS 2); this broker keeps the QoS 0
/// one as the new retained message (which the statement allows it to drop later), so a new
/// subscriber gets it, at QoS 0, and never the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_qos_0_message_replaces_the_retained_one() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[]);
    publish_retained(&broker, "q0/one", QoS::AtLeastOnce, "old at QoS 1").await;
    publish_retained(&broker, "q0/two", QoS::ExactlyOnce, "old at QoS 2").await;
    assert_eq!(retained_for(&broker, "q0/#", QoS::ExactlyOnce).await.len(), 2, "both stored");

    publish_retained(&broker, "q0/one", QoS::AtMostOnce, "new at QoS 0").await;
    publish_retained(&broker, "q0/two", QoS::AtMostOnce, "newer at QoS 0").await;
    assert_eq!(
        summary(&retained_for(&broker, "q0/#", QoS::ExactlyOnce).await),
        vec![s("q0/one", "new at QoS 0", QoS::AtMostOnce), s("q0/two", "newer at QoS 0", QoS::AtMostOnce)]
    );
}

/// MQTT-3.3.1-12 (3.1.1), MQTT-3.3.1-8 (5): a PUBLISH with RETAIN 0 is neither stored as the
/// retained message nor removes or replaces the one there: after non-retained publishes to a
/// topic holding a retained message (MQTT 3.1.1 at QoS 1, MQTT 5 at QoS 0 and 1, and an empty
/// payload, which with RETAIN 1 would delete it), a new subscriber still gets the original
/// retained message, and nothing is retained for a topic only ever published with RETAIN 0.
/// The live subscriber got every one of those messages, so they were routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_retain_0_leaves_the_retained_message_alone() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[]);
    publish_retained(&broker, "r0/held", QoS::AtLeastOnce, "the retained one").await;
    let mut live = C5::connect(&broker, "r0-live");
    live.subscribe("r0/#", Q5::AtLeastOnce);
    assert_eq!(payload(&live.next_publish()), "the retained one");

    let mut v4 = Client::connect(&broker, "r0-v4").await;
    v4.publish_acked("r0/held", QoS::AtLeastOnce, "3.1.1 not retained").await;
    v4.publish_acked("r0/never", QoS::AtLeastOnce, "3.1.1 elsewhere").await;
    let mut v5 = C5::connect(&broker, "r0-v5");
    v5.publish_retain("r0/held", Q5::AtMostOnce, false, "5 at QoS 0");
    v5.publish_retain("r0/held", Q5::AtLeastOnce, false, "5 at QoS 1");
    v5.publish_retain("r0/held", Q5::AtLeastOnce, false, "");
    v5.publish_retain("r0/never", Q5::AtLeastOnce, false, "5 elsewhere");
    let got: Vec<(String, bool)> = (0..6).map(|_| live.next_publish()).map(|p| (payload(&p), p.retain)).collect();
    let expected = ["3.1.1 not retained", "3.1.1 elsewhere", "5 at QoS 0", "5 at QoS 1", "", "5 elsewhere"];
    assert_eq!(got, expected.map(|p| (p.to_owned(), false)), "every message reached the live subscriber");

    assert_eq!(
        summary(&retained_for(&broker, "r0/#", QoS::AtLeastOnce).await),
        vec![s("r0/held", "the retained one", QoS::AtLeastOnce)]
    );
}
