//! `emqx_mod_subscription` end to end: the broker subscribes each client as it connects to the
//! configured topics (`%c` client id, `%u` username, skipped without a username), at the
//! configured QoS; the retainer delivers what is retained on them; a resumed session does not
//! get them twice; unloaded, it subscribes nobody.

use e2e::{options, stat, wait_for_stat, Broker, Client, DataDir};
use rumqttc::QoS;

const CONFIG: &str =
    "[subscription]\ntopics = [{ topic = \"client/%c\", qos = 1 }, { topic = \"user/%u\", qos = 0 }]\n";

fn start(plugins: &str) -> (DataDir, Broker) {
    let dir = DataDir::with_plugins(plugins);
    dir.write("broker.toml", CONFIG);
    let broker = Broker::start(&dir, &[]);
    (dir, broker)
}

/// A client that never subscribes gets what is published to its own topics, at the
/// configured QoS (capped by what was published); one without a username only `client/%c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_subscribed_when_they_connect() {
    let (dir, broker) = start("{emqx_mod_subscription, true}.\n");
    let mut opts = options(&broker, "dev1");
    opts.set_credentials("ann", "pw");
    let mut dev1 = Client::connect_with(opts).await;
    let mut dev2 = Client::connect(&broker, "dev2").await;
    wait_for_stat(&dir, "subscriptions.count", 3); // dev1: two topics; dev2: one (no username)

    let mut publisher = Client::connect(&broker, "pub").await;
    publisher.publish_acked("client/dev1", QoS::AtLeastOnce, "to dev1").await;
    publisher.publish_acked("user/ann", QoS::AtLeastOnce, "to ann").await;
    publisher.publish_acked("client/dev2", QoS::ExactlyOnce, "to dev2").await;

    let got: Vec<(String, String, QoS)> = dev1
        .receive(2)
        .await
        .into_iter()
        .map(|p| (p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned(), p.qos))
        .collect();
    assert_eq!(
        got,
        [
            ("client/dev1".to_owned(), "to dev1".to_owned(), QoS::AtLeastOnce),
            ("user/ann".to_owned(), "to ann".to_owned(), QoS::AtMostOnce),
        ]
    );
    let p = &dev2.receive(1).await[0];
    assert_eq!((p.topic.as_str(), p.qos), ("client/dev2", QoS::AtLeastOnce), "QoS capped at the configured 1");
}

/// A client whose id is a wildcard is not subscribed to `client/%c`: as `client/#` it would
/// get every client's messages. Logged, and its other topics are still made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_with_a_wildcard_is_not_subscribed_to_everyones_topics() {
    let (dir, broker) = start("{emqx_mod_subscription, true}.\n");
    let mut opts = options(&broker, "#");
    opts.set_credentials("mallory", "pw");
    let mut mallory = Client::connect_with(opts).await;
    broker.wait_for_log("\"#\" not subscribed to \"client/%c\": its client id or username has a wildcard");
    wait_for_stat(&dir, "subscriptions.count", 1); // user/mallory only
    let mut publisher = Client::connect(&broker, "pub").await;
    publisher.publish_acked("client/victim", QoS::AtLeastOnce, "private").await;
    publisher.publish_acked("user/mallory", QoS::AtLeastOnce, "own").await;
    assert_eq!(&mallory.receive(1).await[0].payload[..], b"own", "the victim's message never came");
}

/// The subscription is made as a SUBSCRIBE would be: `emqx_retainer` delivers the message
/// retained on it; a client resuming its session is not subscribed twice (no second copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_arrive_and_a_resumed_session_is_not_subscribed_twice() {
    let (dir, broker) = start("{emqx_retainer, true}.\n{emqx_mod_subscription, true}.\n");
    let mut publisher = Client::connect(&broker, "pub").await;
    publisher.client.publish("client/dev3", QoS::AtLeastOnce, true, b"kept".to_vec()).await.unwrap();
    e2e::wait_until("the retained message stored", || {
        dir.ctl(&["retainer", "info"]).ok().contains("retained/total: 1").then_some(())
    });

    let mut opts = options(&broker, "dev3");
    opts.set_clean_session(false);
    let mut dev3 = Client::connect_with(opts.clone()).await;
    let p = &dev3.receive(1).await[0];
    assert_eq!((p.topic.as_str(), &p.payload[..], p.retain), ("client/dev3", &b"kept"[..], true));
    dev3.disconnect().await;
    wait_for_stat(&dir, "connections.count", 1);

    let mut dev3 = Client::connect_with(opts).await;
    // Resubscribing an existing subscription sends the retained message again (Retain
    // Handling 0, as for a client's own SUBSCRIBE); the subscription itself stays one.
    let again = &dev3.receive(1).await[0];
    assert!(again.retain);
    assert_eq!(stat(&dir, "subscriptions.count"), 2, "client/pub and client/dev3, once each");
    publisher.publish_acked("client/dev3", QoS::AtLeastOnce, "live").await;
    let live = &dev3.receive(1).await[0];
    assert_eq!((&live.payload[..], live.retain), (&b"live"[..], false), "one copy, not two");
    publisher.publish_acked("client/dev3", QoS::AtLeastOnce, "marker").await;
    assert_eq!(&dev3.receive(1).await[0].payload[..], b"marker", "no duplicate of `live` came between");
}

/// Unloaded, the module subscribes nobody; loaded again, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloaded_it_subscribes_nobody() {
    let (dir, broker) = start("{emqx_mod_subscription, true}.\n");
    dir.ctl(&["modules", "unload", "emqx_mod_subscription"]).ok();
    let _quiet = Client::connect(&broker, "quiet").await;
    wait_for_stat(&dir, "connections.count", 1);
    assert_eq!(stat(&dir, "subscriptions.count"), 0);
    dir.ctl(&["modules", "load", "emqx_mod_subscription"]).ok();
    let _loud = Client::connect(&broker, "loud").await;
    wait_for_stat(&dir, "subscriptions.count", 1);
}
