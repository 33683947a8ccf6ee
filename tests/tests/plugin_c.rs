//! The plugin written in C (`tests/fixtures/c_counter/c_counter.c`, built against
//! `plugin-api/include/broker_plugin.h`) in the real broker: loaded from `loaded_plugins`,
//! counting publishes, answering `ctl`, denying a topic in `client.check_acl`, and unloaded,
//! loaded and reloaded by name like any plugin; a later answer it never gives is given up on
//! after `broker.hook_answer_timeout`.

use e2e::{wait_until, Client, DataDir};
use rumqttc::QoS;

/// What `broker ctl c_counter count` prints now.
fn count(dir: &DataDir) -> u64 {
    let out = dir.ctl(&["c_counter", "count"]).ok();
    out.trim().parse().unwrap_or_else(|_| panic!("not a count: {out:?}"))
}

/// Waits until `broker ctl c_counter count` prints `n`.
fn wait_for_count(dir: &DataDir, n: u64) {
    wait_until(&format!("c_counter count = {n}"), || (count(dir) == n).then_some(()));
}

/// Publishes `n` QoS 1 messages to `c/counted` and receives them on `sub`.
async fn publish_counted(publisher: &mut Client, sub: &mut Client, n: usize) {
    for i in 0..n {
        publisher.publish_acked("c/counted", QoS::AtLeastOnce, format!("{i}")).await;
    }
    let got = sub.receive(n).await;
    assert!(got.iter().all(|p| p.topic == "c/counted"), "{got:?}");
}

/// Publishes to `c/denied`, then a marker; returns the topic of the first message `sub` gets.
async fn first_after_denied_topic(publisher: &mut Client, sub: &mut Client) -> String {
    publisher.publish_acked("c/denied", QoS::AtLeastOnce, "secret").await;
    publisher.publish_acked("c/marker", QoS::AtLeastOnce, "marker").await;
    let first = sub.receive(1).await.remove(0);
    if first.topic == "c/denied" {
        // Let the marker through too, so the next receive starts clean.
        let marker = sub.receive(1).await.remove(0);
        assert_eq!(marker.topic, "c/marker");
    }
    first.topic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_plugin_counts_denies_answers_ctl_and_reloads_by_name() {
    let (dir, broker) = e2e::start_broker("{c_counter, true}.\n", &[]);
    broker.wait_for_log("c_counter started");
    let list = dir.ctl(&["plugins", "list"]).ok();
    assert!(
        list.contains(
            "Plugin(c_counter, description=Test plugin in C: counts publishes, denies publishing to c/denied,"
        ),
        "{list}"
    );
    assert_eq!(count(&dir), 0);

    let mut sub = Client::connect(&broker, "c-sub").await;
    sub.subscribe("c/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "c-pub").await;

    const N: usize = 25;
    publish_counted(&mut publisher, &mut sub, N).await;
    wait_for_count(&dir, N as u64);

    // The ACL denies the publish before `message.publish`: only the marker reaches the
    // subscriber, and only the marker is counted.
    assert_eq!(first_after_denied_topic(&mut publisher, &mut sub).await, "c/marker");
    wait_for_count(&dir, N as u64 + 1);

    let err = dir.ctl(&["c_counter", "bogus"]).err();
    assert!(err.contains("usage: broker ctl c_counter count"), "{err}");

    // Unloaded: no ctl command, no ACL, no counting.
    let out = dir.ctl(&["plugins", "unload", "c_counter"]).ok();
    assert_eq!(out.trim(), "Plugin c_counter unloaded successfully.");
    dir.ctl(&["c_counter", "count"]).err();
    assert_eq!(first_after_denied_topic(&mut publisher, &mut sub).await, "c/denied");

    // Loaded again by name: a new instance, counting from 0, denying again.
    let out = dir.ctl(&["plugins", "load", "c_counter"]).ok();
    assert_eq!(out.trim(), "Plugin c_counter loaded successfully.");
    assert_eq!(count(&dir), 0);
    publish_counted(&mut publisher, &mut sub, 3).await;
    wait_for_count(&dir, 3);
    assert_eq!(first_after_denied_topic(&mut publisher, &mut sub).await, "c/marker");
    wait_for_count(&dir, 4);

    // Reloaded: the state lives in the instance, so the count starts again.
    let out = dir.ctl(&["plugins", "reload", "c_counter"]).ok();
    assert_eq!(out.trim(), "Plugin c_counter reloaded successfully.");
    assert_eq!(count(&dir), 0);
    publish_counted(&mut publisher, &mut sub, 2).await;
    wait_for_count(&dir, 2);
    assert_eq!(first_after_denied_topic(&mut publisher, &mut sub).await, "c/marker");
    wait_for_count(&dir, 3);

    assert_eq!(dir.read("loaded_plugins"), "{c_counter, true}.\n");
}

/// A plugin that takes a later answer's ticket and never answers (a bug `c_counter` has on
/// purpose for `c/silent`) holds its client only until `broker.hook_answer_timeout`: the
/// publish is then refused (not delivered; the publisher's next messages go through), logged
/// and counted in `hooks.answer_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_answer_never_given_is_given_up_on_after_the_timeout() {
    let (dir, broker) = e2e::start_broker("{c_counter, true}.\n", &[("BROKER_BROKER__HOOK_ANSWER_TIMEOUT", "300ms")]);
    let mut sub = Client::connect(&broker, "silent-sub").await;
    sub.subscribe("c/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "silent-pub").await;
    assert_eq!(first_after_silent_topic(&mut publisher, &mut sub).await, "c/marker");
    broker.wait_for_log("client.check_acl: no answer within broker.hook_answer_timeout (300ms); refused");
    let metrics = dir.ctl(&["broker", "metrics"]).ok();
    assert!(metrics.lines().any(|l| l.split_whitespace().eq(["hooks.answer_timeout", ":", "1"])), "{metrics}");
}

/// Publishes to `c/silent`, then a marker; the topic of the first message `sub` gets.
async fn first_after_silent_topic(publisher: &mut Client, sub: &mut Client) -> String {
    publisher.publish_acked("c/silent", QoS::AtLeastOnce, "never answered").await;
    publisher.publish_acked("c/marker", QoS::AtLeastOnce, "marker").await;
    sub.receive(1).await.remove(0).topic
}
