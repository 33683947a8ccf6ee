//! The plugin host cannot be misused into a deadlock or a use-after-free (the re-entrancy
//! table of `HostApi`): `Host::ctl` from a plugin's `init`, a hook or `stop` is refused with
//! `HostError::Unavailable` instead of waiting for itself, and a thread a plugin leaves
//! running after its `stop` gets `Unavailable` from the host, never freed memory; the broker
//! serves on. A plugin's counter or gauge cannot take a name of the broker's own.

use e2e::{wait_until, Broker, Client, DataDir};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_from_init_a_hook_or_stop_is_refused_not_deadlocked() {
    let dir = DataDir::with_plugins("{host_misuse, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let line = broker.wait_for_log("ctl from init: ");
    assert!(line.contains("ctl from init: Unavailable(\"not from init, stop, a hook or a command"), "{line}");

    let mut client = Client::connect(&broker, "c").await;
    client.publish_acked("misuse/ctl", QoS::AtLeastOnce, "x").await;
    let line = broker.wait_for_log("ctl from a hook: ");
    assert!(line.contains("ctl from a hook: Unavailable("), "{line}");

    // The unload completes (its `stop` asked for ctl too), and so does a load after it.
    assert!(dir.ctl(&["plugins", "unload", "host_misuse"]).ok().contains("unloaded successfully"));
    let line = broker.wait_for_log("ctl from stop: ");
    assert!(line.contains("ctl from stop: Unavailable("), "{line}");
    assert!(dir.ctl(&["plugins", "load", "host_misuse"]).ok().contains("loaded successfully"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_left_running_after_stop_gets_an_error_from_the_host() {
    let dir = DataDir::with_plugins("{host_misuse, true}.\n");
    let mut broker = Broker::start(&dir, &[]);
    let mut watcher = Client::connect(&broker, "watcher").await;
    watcher.subscribe("misuse/tick", QoS::AtMostOnce).await;
    watcher.receive(1).await; // the plugin's thread is publishing

    dir.ctl(&["plugins", "unload", "host_misuse"]).ok();
    let out = wait_until("the left-over thread's error", || std::fs::read_to_string(dir.file("host_misuse.out")).ok());
    assert!(
        out.starts_with("publish after stop: Unavailable(\"the plugin was stopped"),
        "the host answered the stopped plugin's thread with: {out}"
    );

    // The broker serves on.
    assert!(broker.is_running());
    let mut client = Client::connect(&broker, "after").await;
    client.subscribe("still/up", QoS::AtLeastOnce).await;
    client.publish_acked("still/up", QoS::AtLeastOnce, "yes").await;
    assert_eq!(&client.receive(1).await[0].payload[..], b"yes");
}

/// `Host::metric_add` and `Host::stat_set` refuse the broker's own names (a gauge's `.max`
/// included) and an empty one, so no plugin can overwrite `connections.count`; a gauge of its
/// own is set, with its `.max` beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_take_the_name_of_a_broker_counter_or_gauge() {
    let dir = DataDir::with_plugins("{host_misuse, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let mut client = Client::connect(&broker, "c").await;
    client.publish_acked("misuse/names", QoS::AtLeastOnce, "x").await;
    let line = broker.wait_for_log("names: ");
    for refused in
        ["metric_add messages.received", "stat_set connections.count", "stat_set sessions.max", "stat_set empty"]
    {
        assert!(line.contains(&format!("{refused}: Err(InvalidArgument(")), "{refused} in {line}");
    }
    assert!(line.contains("stat_set misuse.count: Ok(())") && line.contains("again: Ok(())"), "{line}");
    let stats = dir.ctl(&["broker", "stats"]).ok();
    assert_eq!(e2e::stat_in(&stats, "connections.count"), 1, "{stats}");
    assert_eq!((e2e::stat_in(&stats, "misuse.count"), e2e::stat_in(&stats, "misuse.max")), (2, 5), "{stats}");
}
