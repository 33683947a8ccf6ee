//! Persistent sessions and wills, through the host.

use e2e::{options, Broker, Client, DataDir};
use rumqttc::{LastWill, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_receives_messages_queued_while_offline() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);

    let mut opts = options(&broker, "durable");
    opts.set_clean_session(false);
    let mut sub = Client::connect_with(opts.clone()).await;
    sub.subscribe("queued/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = Client::connect(&broker, "pub-offline").await;
    for n in 0..10 {
        publisher.publish_acked("queued/x", QoS::AtLeastOnce, format!("m{n}")).await;
    }

    let mut sub = Client::connect_with(opts).await;
    let got = sub.receive(10).await;
    let payloads: Vec<String> = got.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    let expected: Vec<String> = (0..10).map(|n| format!("m{n}")).collect();
    assert_eq!(payloads, expected, "every message queued while offline, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_abrupt_disconnect_only() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = Client::connect(&broker, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    // A clean DISCONNECT discards the will...
    let mut opts = options(&broker, "polite");
    opts.set_last_will(LastWill::new("wills/polite", "gone", QoS::AtLeastOnce, false));
    Client::connect_with(opts).await.disconnect().await;

    // ...a vanished client's will is published.
    let mut opts = options(&broker, "crasher");
    opts.set_last_will(LastWill::new("wills/crasher", "crashed", QoS::AtLeastOnce, false));
    Client::connect_with(opts).await.kill().await;

    let got = watcher.receive(1).await;
    assert_eq!(got[0].topic, "wills/crasher");
    assert_eq!(&got[0].payload[..], b"crashed");

    // Nothing else arrived: a marker published now is the very next message.
    let mut marker = Client::connect(&broker, "marker").await;
    marker.publish_acked("wills/marker", QoS::AtLeastOnce, "end").await;
    let next = watcher.receive(1).await;
    assert_eq!(next[0].topic, "wills/marker", "the polite client's will was not sent");
}
