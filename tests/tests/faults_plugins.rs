//! Plugin libraries that are not what they claim, and a hook that blocks.

use e2e::{Broker, Client, DataDir};
use rumqttc::QoS;

#[test]
fn a_library_without_the_descriptor_is_refused() {
    let dir = DataDir::with_plugins("{no_descriptor, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let path = e2e::bin_dir().join("libno_descriptor.so");
    let message = format!(
        "plugin no_descriptor: {} is not a broker plugin (no `broker_plugin_descriptor` symbol)",
        path.canonicalize().unwrap_or(path.clone()).display()
    );
    let line = broker.wait_for_log("is not a broker plugin (no `broker_plugin_descriptor` symbol)");
    assert!(line.contains("loaded_plugins: line 1: plugin no_descriptor: "), "{line}");
    let stderr = dir.ctl(&["plugins", "load", "no_descriptor"]).err();
    assert!(stderr.contains("is not a broker plugin"), "{stderr} / {message}");
}

#[test]
fn a_library_whose_name_does_not_match_its_file_is_refused() {
    let plugins = tempfile::tempdir().unwrap();
    let impostor = plugins.path().join("libimpostor.so");
    std::fs::copy(e2e::bin_dir().join("libnoop_module.so"), &impostor).unwrap();
    let dir = DataDir::with_plugins("{impostor, true}.\n");
    let broker = Broker::start_with_args(&dir, &[], &["--plugins-dir", plugins.path().to_str().unwrap()]);
    let expected = format!("plugin file {} declares the name \"noop_module\", not \"impostor\"", impostor.display());
    broker.wait_for_log(&expected);
    assert_eq!(dir.ctl(&["plugins", "load", "impostor"]).err().trim(), format!("error: {expected}"));
    assert!(!broker.logs().iter().any(|l| l.contains("plugin started")));
}

/// A hook declared blocking that blocks for seconds holds up its own client, not the others:
/// a message sent by another client after the slow one arrives before it. (A plugin that
/// blocks in a hook it did not declare holds a network thread: that is against the ABI's
/// rules, and the broker no longer works around it with a watch thread.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_hook_does_not_stall_unrelated_clients() {
    let dir = DataDir::with_plugins("{panicky, true}.\n");
    let broker = Broker::start(&dir, &[("BROKER_PANICKY__BLOCK_MS", "3000")]);
    let mut sub = Client::connect(&broker, "observer").await;
    sub.subscribe("slow", QoS::AtLeastOnce).await;
    sub.subscribe("fast", QoS::AtLeastOnce).await;

    let slow = Client::connect(&broker, "slow-client").await;
    slow.client.publish("slow", QoS::AtLeastOnce, false, "slow").await.unwrap();
    // Make sure the slow publish reached its hook before the fast one starts.
    let mut fast = Client::connect(&broker, "fast-client").await;
    for n in 0..5 {
        fast.publish_acked("fast", QoS::AtLeastOnce, format!("fast-{n}")).await;
    }
    let order: Vec<String> =
        sub.receive(6).await.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    assert_eq!(order.last().map(String::as_str), Some("slow"), "{order:?}");
    assert_eq!(order.len(), 6);
}
