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
