//! `emqx_mod_delayed` end to end: `$delayed/<seconds>/<topic>` is held and published to
//! `<topic>` later (a message published after it, undelayed, arrives first); `ctl delayed
//! list|clean`; held messages survive a reload of the module and a broker restart, and fall
//! due after it.

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
/// logged, while the ones held stay; the held ones are in the module's file (written by its
/// own thread) and fall due as usual.
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
    e2e::wait_until("the held messages in the module's file", || {
        let file = dir.read("emqx_mod_delayed.json");
        (file.contains("bound/held") && file.contains("bound/soon")).then_some(())
    });
    // The one held falls due; the dropped one never comes (a marker published after it,
    // undelayed, is the next message).
    let got = sub.receive(1).await;
    assert_eq!(got[0].topic, "bound/soon");
    publisher.publish_acked("bound/marker", QoS::AtLeastOnce, "marker").await;
    let got = sub.receive(1).await;
    assert_eq!(got[0].topic, "bound/marker", "nothing for bound/over before the marker");
}
