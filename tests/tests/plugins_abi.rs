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
