//! `emqx_mod_delayed` end to end: `$delayed/<seconds>/<topic>` is held and published to
//! `<topic>` later (a message published after it, undelayed, arrives first); `ctl delayed
//! list|clean`; held messages survive a reload of the module, a broker restart and `kill -9`
//! right after their PUBACK, and fall due after it; a file of an older version is imported.

use std::time::Instant;

use e2e::{Broker, Client, DataDir};
use rumqttc::QoS;

const PLUGINS: &str = "{emqx_mod_delayed, true}.\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_is_published_after_its_delay() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[]);
    let mut sub = Client::connect(&broker, "d-sub").await;
    sub.subscribe("d/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "d-pub").await;

    let sent = Instant::now();
    publisher.publish_acked("$delayed/1/d/later", QoS::AtLeastOnce, "later").await;
    publisher.publish_acked("d/now", QoS::AtLeastOnce, "now").await;
    let list = dir.ctl(&["delayed", "list"]).ok();
    assert!(list.starts_with("topic=d/later qos=1 retain=false due_in="), "{list}");

    let got = sub.receive(2).await;
    let order: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(order, ["d/now", "d/later"], "the delayed one comes after one sent after it");
    // A lower bound, which load can only widen: the module waits until the millisecond in
    // which the message falls due has wholly passed, and `sent` was read before it was sent.
    assert!(sent.elapsed().as_millis() >= 1000, "held for its second: {:?}", sent.elapsed());
    assert_eq!(got[1].qos, QoS::AtLeastOnce);
    assert_eq!(dir.ctl(&["delayed", "list"]).ok().trim(), "", "nothing held any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_survive_a_restart_and_clean_drops_them() {
    let dir = DataDir::with_plugins("{emqx_mod_delayed, true}.\n{emqx_retainer, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let mut publisher = Client::connect(&broker, "r-pub").await;
    publisher.publish_acked("$delayed/2/r/kept", QoS::AtLeastOnce, "kept").await;
    publisher.publish_acked("$delayed/3600/r/cleaned", QoS::AtLeastOnce, "x").await;
    assert_eq!(dir.ctl(&["delayed", "list"]).ok().lines().count(), 2);
    assert_eq!(dir.ctl(&["delayed", "clean"]).ok().trim(), "Cleaned 2 delayed messages");
    // Retained, so that the subscriber gets it however long the restart takes: live if it
    // subscribed first, from emqx_retainer if the message fell due before.
    publisher.client.publish("$delayed/2/r/kept", QoS::AtLeastOnce, true, b"kept".to_vec()).await.unwrap();
    e2e::wait_until("the message held", || {
        dir.ctl(&["delayed", "list"]).ok().starts_with("topic=r/kept qos=1 retain=true").then_some(())
    });
    // A reload of the module keeps it too.
    dir.ctl(&["plugins", "reload", "emqx_mod_delayed"]).ok();
    assert!(dir.ctl(&["delayed", "list"]).ok().starts_with("topic=r/kept"), "kept across a reload");
    drop(publisher);
    broker.stop();

    let broker = Broker::start(&dir, &[]);
    let mut sub = Client::connect(&broker, "r-sub").await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let got = sub.receive(1).await;
    assert_eq!((got[0].topic.as_str(), &got[0].payload[..]), ("r/kept", &b"kept"[..]), "published after the restart");
    assert_eq!(dir.ctl(&["delayed", "list"]).ok().trim(), "");
}

/// `[delayed] max_delayed_messages` (EMQX's name) bounds what the module holds: past it a
/// `$delayed/` message is dropped (not held, not published), counted (`ctl delayed stats`) and
/// logged, while the ones held stay; the held ones are in the broker's store (written before
/// the PUBACK) and fall due as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_delayed_messages_a_delayed_message_is_dropped_and_counted() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[("BROKER_DELAYED__MAX_DELAYED_MESSAGES", "2")]);
    let mut sub = Client::connect(&broker, "bound-sub").await;
    sub.subscribe("bound/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "bound-pub").await;
    publisher.publish_acked("$delayed/3600/bound/held", QoS::AtLeastOnce, "held").await;
    publisher.publish_acked("$delayed/1/bound/soon", QoS::AtLeastOnce, "soon").await;
    publisher.publish_acked("$delayed/1/bound/over", QoS::AtLeastOnce, "over").await;

    assert_eq!(
        dir.ctl(&["delayed", "stats"]).ok().trim(),
        "held=2 max_delayed_messages=2 dropped=1",
        "the third is dropped"
    );
    broker.wait_for_log("delayed message to bound/over dropped: max_delayed_messages (2) reached");
    // In the store once acknowledged; the dropped one never was.
    assert!(dir.store_contains(b"bound/held") && dir.store_contains(b"bound/soon"));
    assert!(!dir.store_contains(b"bound/over"));
    // The one held falls due; the dropped one never comes (a marker published after it,
    // undelayed, is the next message).
    let got = sub.receive(1).await;
    assert_eq!(got[0].topic, "bound/soon");
    publisher.publish_acked("bound/marker", QoS::AtLeastOnce, "marker").await;
    let got = sub.receive(1).await;
    assert_eq!(got[0].topic, "bound/marker", "nothing for bound/over before the marker");
}

/// A `$delayed/` message is in the broker's store before its PUBACK: `kill -9` right after it
/// loses nothing, and it is published when it falls due after the restart, once; its key is
/// deleted once it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_survives_kill_9_and_falls_due_once() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[]);
    let mut publisher = Client::connect(&broker, "k9-pub").await;
    publisher.publish_acked("$delayed/2/k9/first", QoS::AtLeastOnce, "first").await;
    publisher.publish_acked("$delayed/3600/k9/later", QoS::ExactlyOnce, "later").await;
    let broker = broker.kill9_and_restart(&dir, &[]);
    broker.wait_for_log("2 delayed messages held");
    let list = dir.ctl(&["delayed", "list"]).ok();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("topic=k9/first qos=1 retain=false due_in="), "{list}");
    assert!(lines[1].starts_with("topic=k9/later qos=2 retain=false due_in="), "due time order: {list}");

    let mut sub = Client::connect(&broker, "k9-sub").await;
    sub.subscribe("k9/#", QoS::AtLeastOnce).await;
    let got = sub.receive(1).await;
    assert_eq!((got[0].topic.as_str(), &got[0].payload[..]), ("k9/first", &b"first"[..]));
    e2e::wait_until("k9/first no longer held", || {
        (dir.ctl(&["delayed", "list"]).ok().lines().count() == 1).then_some(())
    });

    // Published and deleted: a crash now does not bring it back.
    let broker = broker.kill9_and_restart(&dir, &[]);
    broker.wait_for_log("1 delayed messages held");
    assert!(dir.ctl(&["delayed", "list"]).ok().starts_with("topic=k9/later"));
    assert_eq!(dir.ctl(&["delayed", "clean"]).ok().trim(), "Cleaned 1 delayed messages");
    let _broker = broker.kill9_and_restart(&dir, &[]);
    assert_eq!(dir.ctl(&["delayed", "list"]).ok().trim(), "", "clean is durable too");
}

/// A `data/emqx_mod_delayed.json` an older version wrote is imported at the first start and
/// renamed `emqx_mod_delayed.json.imported`: a message already due is published, the others
/// are held; a damaged file is left in place with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_delayed_file_is_imported_once() {
    // The retainer first: it runs when the module publishes what fell due, at its start.
    let dir = DataDir::with_plugins("{emqx_retainer, true}.\n{emqx_mod_delayed, true}.\n");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // As the old version wrote it; `old/due` (retained, so a subscriber gets it whenever it
    // subscribes) fell due while the broker was down.
    let old = serde_json::json!([
        {"due_ms": now - 1000, "topic": "old/due", "payload": b"due".to_vec(), "qos": 1, "retain": true},
        {"due_ms": now + 3_600_000, "topic": "old/held", "payload": b"held".to_vec(), "qos": 0, "retain": false},
    ]);
    dir.write("emqx_mod_delayed.json", &old.to_string());
    let broker = Broker::start(&dir, &[]);
    let line = broker.wait_for_log("imported 2 delayed messages from");
    assert!(line.contains("emqx_mod_delayed.json (renamed emqx_mod_delayed.json.imported)"), "{line}");
    assert!(!dir.file("emqx_mod_delayed.json").exists());
    assert!(dir.file("emqx_mod_delayed.json.imported").exists());
    let mut sub = Client::connect(&broker, "old-sub").await;
    sub.subscribe("old/#", QoS::AtLeastOnce).await;
    let got = sub.receive(1).await;
    assert_eq!((got[0].topic.as_str(), &got[0].payload[..]), ("old/due", &b"due"[..]));
    e2e::wait_until("only old/held held", || {
        let list = dir.ctl(&["delayed", "list"]).ok();
        (list.lines().count() == 1 && list.starts_with("topic=old/held qos=0")).then_some(())
    });
    let broker = broker.kill9_and_restart(&dir, &[]);
    broker.wait_for_log("1 delayed messages held");
    assert!(!broker.logs().iter().any(|l| l.contains("imported")), "imported once");
    drop(broker);

    dir.write("emqx_mod_delayed.json", "[{\"due_ms\": 1,");
    let broker = Broker::start(&dir, &[]);
    let line = broker.wait_for_log("emqx_mod_delayed.json not imported");
    assert!(line.contains("WARN") && line.contains("left in place"), "{line}");
    broker.wait_for_log("1 delayed messages held");
    assert_eq!(dir.read("emqx_mod_delayed.json"), "[{\"due_ms\": 1,");
}
