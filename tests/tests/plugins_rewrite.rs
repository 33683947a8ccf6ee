//! `emqx_mod_rewrite` end to end (EMQX 4.2's topic rewrite): a publish rule moves a message
//! to its new topic (subscribers of the old one get nothing, the retainer keeps it under the
//! new one); a subscribe rule rewrites SUBSCRIBE and UNSUBSCRIBE filters, a shared
//! subscription's too (its `$share/<group>/` kept); the ACL of a subscribe applies to the
//! rewritten filter, the ACL of a publish to the topic the client used, as in EMQX; the first
//! rule whose source matches decides; a bad rule stops the module from starting, naming it;
//! unloaded, nothing is rewritten.

use std::process::Stdio;

use e2e::raw::{payload, topic, v5, C5};
use e2e::{mosquitto, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS;

const RULES: &str = r#"
[rewrite]
rules = [
  { action = "publish", source = "x/#", re = "^x/y/(.+)$", dest = "z/y/$1" },
  { action = "subscribe", source = "y/+/z/#", re = "^y/(.+)/z/(.+)$", dest = "y/z/$2" },
  { action = "all", source = "both/#", re = "^both/(.+)$", dest = "moved/$1" },
]
"#;

fn start(plugins: &str) -> (DataDir, Broker) {
    let dir = DataDir::with_plugins(plugins);
    dir.write("broker.toml", RULES);
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("2 publish and 2 subscribe rewrite rules");
    (dir, broker)
}

/// A message published to `x/y/1` reaches `z/y/1`'s subscribers under `z/y/1`, and not
/// `x/y/1`'s: the marker published after it arrives first at the old topic's subscriber.
/// A topic the rule's source matches but its expression does not (`x/q`) is left alone, and
/// the next rule is not tried (EMQX: the first matching source decides).
#[test]
fn a_publish_rule_moves_the_message_to_its_new_topic() {
    let (_dir, broker) = start("{emqx_mod_rewrite, true}.\n");
    let mut new_topic = C5::connect(&broker, "new");
    new_topic.subscribe("z/y/#", QoS::AtLeastOnce);
    let mut old_topic = C5::connect(&broker, "old");
    old_topic.subscribe("x/#", QoS::AtLeastOnce);
    old_topic.subscribe("marker", QoS::AtLeastOnce);

    let mut publisher = C5::connect(&broker, "pub");
    publisher.publish("x/y/1", QoS::AtLeastOnce, "rewritten");
    publisher.publish("x/q", QoS::AtLeastOnce, "kept");
    publisher.publish("marker", QoS::AtLeastOnce, "after");

    let p = new_topic.next_publish();
    assert_eq!((topic(&p), payload(&p)), ("z/y/1".to_owned(), "rewritten".to_owned()));
    let first = old_topic.next_publish();
    assert_eq!((topic(&first), payload(&first)), ("x/q".to_owned(), "kept".to_owned()), "x/y/1 never arrives");
    let second = old_topic.next_publish();
    assert_eq!(topic(&second), "marker");
}

/// `emqx_retainer` runs after the rewrite on `message.publish`, so it keeps the message under
/// its new topic: a subscriber of `z/y/r` gets it as retained, one of `x/y/r` does not.
#[test]
fn the_retainer_keeps_a_rewritten_message_under_its_new_topic() {
    let (dir, broker) = start("{emqx_mod_rewrite, true}.\n{emqx_retainer, true}.\n");
    let mut publisher = C5::connect(&broker, "pub");
    publisher.publish_retain("x/y/r", QoS::AtLeastOnce, true, "kept");
    e2e::wait_until("the retained message stored", || {
        dir.ctl(&["retainer", "topics"]).ok().lines().any(|l| l == "z/y/r").then_some(())
    });
    assert_eq!(dir.ctl(&["retainer", "topics"]).ok().trim(), "z/y/r", "nothing under x/y/r");

    let mut late = C5::connect(&broker, "late");
    late.subscribe("z/y/r", QoS::AtLeastOnce);
    let p = late.next_publish();
    assert_eq!((topic(&p), payload(&p), p.retain), ("z/y/r".to_owned(), "kept".to_owned(), true));
}

/// SUBSCRIBE `y/a/z/b` subscribes `y/z/b`: a message to `y/a/z/b` itself does not arrive,
/// one to `y/z/b` does. UNSUBSCRIBE `y/a/z/b` is rewritten the same way and removes it
/// (UNSUBACK 0x00 Success, where `y/a/z/b` as such would get 0x11 No subscription existed:
/// MQTT-3.11.3-1). A shared subscription is rewritten inside its `$share/<group>/`.
#[test]
fn a_subscribe_rule_rewrites_subscribe_and_unsubscribe_filters() {
    let (dir, broker) = start("{emqx_mod_rewrite, true}.\n");
    let mut sub = C5::connect(&broker, "sub");
    sub.subscribe("y/a/z/b", QoS::AtLeastOnce);
    sub.subscribe("$share/g/y/c/z/d", QoS::AtLeastOnce);
    e2e::wait_for_stat(&dir, "subscriptions.count", 2);

    let mut publisher = C5::connect(&broker, "pub");
    publisher.publish("y/a/z/b", QoS::AtLeastOnce, "to the filter as written");
    publisher.publish("y/z/b", QoS::AtLeastOnce, "one");
    publisher.publish("y/z/d", QoS::AtLeastOnce, "two");
    let got: Vec<_> = (0..2).map(|_| sub.next_publish()).map(|p| (topic(&p), payload(&p))).collect();
    assert_eq!(got, [("y/z/b".to_owned(), "one".to_owned()), ("y/z/d".to_owned(), "two".to_owned())]);

    assert_eq!(sub.unsubscribe(&["y/a/z/b"]), vec![v5::UnsubAckReason::Success]);
    assert_eq!(sub.unsubscribe(&["y/z/b"]), vec![v5::UnsubAckReason::NoSubscriptionExisted], "already gone");
    assert_eq!(sub.unsubscribe(&["$share/g/y/c/z/d"]), vec![v5::UnsubAckReason::Success]);
}

/// The ACL sees what EMQX's sees: a subscribe's rewritten filter (`y/a/z/secret` becomes the
/// denied `y/z/secret`: SUBACK 0x87, MQTT-3.9.3-1), a publish's original topic (`x/y/secret`
/// is allowed, then delivered under `z/y/secret`, which the client may not publish to).
#[test]
fn the_acl_checks_the_rewritten_filter_and_the_original_topic() {
    let dir = DataDir::with_plugins("{emqx_mod_rewrite, true}.\n{emqx_mod_acl_internal, true}.\n");
    dir.write("broker.toml", RULES);
    dir.write(
        "acl.conf",
        "{deny, all, subscribe, [\"y/z/secret\"]}.\n{deny, all, publish, [\"z/y/secret\"]}.\n{allow, all}.\n",
    );
    let broker = Broker::start(&dir, &[]);
    let mut sub = C5::connect(&broker, "sub");
    let codes = sub.subscribe_with(vec![v5::Filter::new("y/a/z/secret", QoS::AtLeastOnce)], None);
    assert_eq!(codes, vec![v5::SubscribeReasonCode::NotAuthorized]);

    sub.subscribe("z/y/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "pub");
    publisher.publish("x/y/secret", QoS::AtLeastOnce, "allowed");
    let p = sub.next_publish();
    assert_eq!((topic(&p), payload(&p)), ("z/y/secret".to_owned(), "allowed".to_owned()));
}

/// Real clients: `mosquitto_sub` on the new topic receives what `mosquitto_pub` sent to the
/// old one; `action = "all"` rewrites both the subscription and the publish.
#[test]
fn mosquitto_clients_see_rewritten_topics() {
    let (dir, broker) = start("{emqx_mod_rewrite, true}.\n");
    let port = broker.port().to_string();
    // Subscribes to `both/t`, rewritten to `moved/t`; `-v` prints the topic each message came
    // on. `-W` ends it if the message never comes, so that a failure cannot hang the test.
    let sub = mosquitto("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-i", "msub", "-q", "1", "-t", "both/t", "-v", "-C", "1", "-W", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    e2e::wait_for_stat(&dir, "subscriptions.count", 1);
    let published = mosquitto("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-i", "mpub", "-q", "1", "-t", "both/t", "-m", "hello"])
        .status()
        .expect("mosquitto_pub");
    assert!(published.success());
    let output = sub.wait_with_output().expect("mosquitto_sub exits");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "moved/t hello");
    assert!(output.status.success());
}

/// A rule that does not compile keeps the module from starting, with a message naming the
/// rule; the broker goes on serving. Unloaded, the module rewrites nothing.
#[test]
fn a_bad_rule_is_refused_and_an_unloaded_module_rewrites_nothing() {
    let dir = DataDir::with_plugins("{emqx_mod_rewrite, false}.\n");
    dir.write(
        "broker.toml",
        "[rewrite]\nrules = [{ action = \"publish\", source = \"x/#\", re = \"^x/(\", dest = \"z\" }]\n",
    );
    let broker = Broker::start(&dir, &[]);
    let error = dir.ctl(&["modules", "load", "emqx_mod_rewrite"]).err();
    assert!(error.contains("rewrite.rules[1]: re \"^x/(\""), "{error}");

    let mut sub = C5::connect(&broker, "sub");
    sub.subscribe("x/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "pub");
    publisher.publish("x/y/1", QoS::AtLeastOnce, "as is");
    assert_eq!(topic(&sub.next_publish()), "x/y/1");
}
