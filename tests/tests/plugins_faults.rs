//! Plugins that fail or panic: each is refused or stopped with a clear message, and the
//! broker keeps serving every client.

use e2e::{Broker, Client, DataDir};
use rumqttc::QoS;

async fn assert_serving(broker: &Broker, tag: &str) {
    let mut sub = Client::connect(broker, &format!("{tag}-sub")).await;
    sub.subscribe("alive", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(broker, &format!("{tag}-pub")).await;
    publisher.publish_acked("alive", QoS::AtLeastOnce, tag).await;
    assert_eq!(&sub.receive(1).await[0].payload[..], tag.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_failure_and_init_panic_are_refused() {
    let cases = [
        ("BROKER_PANICKY__FAIL_INIT", "true", "plugin panicky failed to start: init failed: told to fail"),
        ("BROKER_PANICKY__PANIC_IN", "init", "plugin panicky failed to start: init panicked: told to panic in init"),
    ];
    for (key, value, message) in cases {
        let dir = DataDir::with_plugins("{panicky, true}.\n");
        let broker = Broker::start(&dir, &[(key, value)]);
        broker.wait_for_log(message);
        assert_eq!(dir.ctl(&["plugins", "load", "panicky"]).err().trim(), format!("error: {message}"));
        let list = dir.ctl(&["plugins", "list", "--verbose"]).ok();
        assert!(list.contains("active=false, version=0.1.0, kind=plugin, state=failed: init"), "{list}");
        assert_serving(&broker, value).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_panicking_in_a_hook_is_stopped_and_never_called_again() {
    let dir = DataDir::with_plugins("{panicky, true}.\n");
    let broker = Broker::start(&dir, &[("BROKER_PANICKY__PANIC_IN", "hook")]);
    let mut sub = Client::connect(&broker, "witness").await;
    sub.subscribe("panic", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "trigger").await;
    for n in 0..5 {
        publisher.publish_acked("panic", QoS::AtLeastOnce, format!("{n}")).await;
    }
    // Every message still reached the subscriber.
    let got: Vec<_> = sub.receive(5).await.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(got.len(), 5);

    broker.wait_for_log("plugin panicked in message.publish; stopping it");
    let list = dir.ctl(&["plugins", "list"]).ok();
    assert_eq!(list.trim(), "Plugin(panicky, description=Test plugin: misbehaves on purpose, active=false)");
    let list = dir.ctl(&["plugins", "list", "--verbose"]).ok();
    assert_eq!(
        list.trim(),
        "Plugin(panicky, description=Test plugin: misbehaves on purpose, active=false, version=0.1.0, kind=plugin, \
         state=failed: panicked in message.publish)"
    );
    let panics = broker.logs().iter().filter(|l| l.contains("told to panic in a hook")).count();
    assert_eq!(panics, 1, "called once, then never again");

    // Loading it again works (and it can fail again).
    dir.ctl(&["plugins", "load", "panicky"]).ok();
    assert!(dir.ctl(&["plugins", "list"]).ok().contains("active=true"));
    assert_serving(&broker, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_stop_is_logged_and_the_unload_completes() {
    let dir = DataDir::with_plugins("{panicky, true}.\n");
    let broker = Broker::start(&dir, &[("BROKER_PANICKY__PANIC_IN", "stop")]);
    broker.wait_for_log("panicky started");
    dir.ctl(&["plugins", "unload", "panicky"]).ok();
    broker.wait_for_log("plugin panicked in stop");
    assert!(dir.ctl(&["plugins", "list"]).ok().contains("active=false"));
    assert_serving(&broker, "stop").await;
}
