//! `emqx_mod_acl_internal` end to end, and telemetry listing the issue's plugins exactly while
//! they run.

use std::process::Stdio;

use e2e::{mosquitto, options, recorded_events, Broker, Client, DataDir};
use rumqttc::{Event, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use serde_json::Value;

const ACL: &str = r#"
%% test rules
{deny, {user, "bob"}, subscribe, ["secret/#"]}.
{deny, all, publish, ["secret/#"]}.
{allow, all, pubsub, ["clients/%c/#", "users/%u/#"]}.
{deny, all, pubsub, ["clients/#", "users/#"]}.
{this is, not a rule}.
{allow, all}.
"#;

async fn suback_codes(client: &mut Client, filters: &[&str]) -> Vec<SubscribeReasonCode> {
    let filters = filters.iter().map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
    client.client.subscribe_many(filters).await.unwrap();
    match client.wait_for("SUBACK", |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await {
        Event::Incoming(Packet::SubAck(ack)) => ack.return_codes,
        _ => unreachable!(),
    }
}

async fn user(broker: &Broker, id: &str, name: &str) -> Client {
    let mut opts = options(broker, id);
    opts.set_credentials(name, "pw");
    Client::connect_with(opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_allow_and_deny_publish_and_subscribe() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write("acl.conf", ACL);
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("acl.conf: line 7: expected ',' or '}', found 'i'; rule skipped");
    broker.wait_for_log("5 rules loaded from");

    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let mut bob = user(&broker, "c-bob", "bob").await;
    assert_eq!(
        suback_codes(&mut bob, &["secret/x", "open/x"]).await,
        vec![SubscribeReasonCode::Failure, ok],
        "one SUBACK, denied filter failed, the other granted"
    );
    let mut alice = user(&broker, "c-alice", "alice").await;
    assert_eq!(suback_codes(&mut alice, &["secret/x"]).await, vec![ok]);
    assert_eq!(
        suback_codes(&mut alice, &["clients/c-alice/#", "clients/c-bob/#"]).await,
        vec![ok, SubscribeReasonCode::Failure]
    );
    assert_eq!(
        suback_codes(&mut alice, &["users/alice/#", "users/bob/#"]).await,
        vec![ok, SubscribeReasonCode::Failure]
    );

    // A denied publish is acknowledged and dropped; an allowed one is delivered.
    alice.publish_acked("secret/x", QoS::AtLeastOnce, "leak").await;
    bob.publish_acked("secret/x", QoS::ExactlyOnce, "leak2").await;
    bob.publish_acked("open/x", QoS::AtLeastOnce, "fine").await;
    bob.publish_acked("clients/c-alice/inbox", QoS::AtLeastOnce, "not yours").await;
    alice.publish_acked("clients/c-alice/inbox", QoS::AtLeastOnce, "mine").await;
    let got = alice.receive(1).await;
    assert_eq!(&got[0].payload[..], b"mine", "the denied publishes never arrived");
    assert_eq!(&bob.receive(1).await[0].payload[..], b"fine");

    // mosquitto_sub reports the refusal too.
    let out = mosquitto("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-u", "bob", "-t", "secret/#", "-W", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied"), "{:?}", out);

    // Rules are re-read on `ctl acl reload`.
    dir.write("acl.conf", "{deny, all, subscribe, [\"open/#\"]}.\n");
    assert!(dir.ctl(&["acl", "reload"]).ok().contains("1 rules loaded"));
    let mut carol = user(&broker, "c-carol", "carol").await;
    assert_eq!(suback_codes(&mut carol, &["open/x", "secret/x"]).await, vec![SubscribeReasonCode::Failure, ok]);
}

/// `%c` and `%u` stand for one literal topic level each, as in EMQX 4.3 (`feed_var`): a
/// client whose id is `+` or `#` cannot use `clients/%c/#` to reach another client's topics,
/// one whose id holds a `/` gets no deeper level, and a client without a username matches no
/// `%u` rule. The EMQX who forms `{ipaddrs, [...]}` and `{'or', [...]}` are read. And a reload
/// of a file with a rule it cannot read is refused whole: the rules in use stay (dropping the
/// one deny rule would widen access), and `ctl` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_are_literal_levels_and_a_broken_reload_keeps_the_rules() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write(
        "acl.conf",
        "{deny, {'or', [{user, \"eve\"}, {ipaddrs, [\"10.0.0.0/8\", \"::1\"]}]}, pubsub, [\"clients/#\"]}.\n\
         {allow, all, pubsub, [\"clients/%c/#\", \"users/%u/#\"]}.\n{deny, all}.\n",
    );
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("3 rules loaded from");
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let denied = SubscribeReasonCode::Failure;

    let mut victim = Client::connect(&broker, "victim").await;
    assert_eq!(suback_codes(&mut victim, &["clients/victim/#"]).await, vec![ok]);
    for id in ["+", "#"] {
        let mut attacker = Client::connect(&broker, id).await;
        assert_eq!(
            suback_codes(&mut attacker, &["clients/victim/secret", "clients/+/secret", "clients/#"]).await,
            vec![denied, denied, denied],
            "client id {id}"
        );
        attacker.publish_acked("clients/victim/cmd", QoS::AtLeastOnce, id).await;
    }
    let mut slashed = Client::connect(&broker, "a/b").await;
    assert_eq!(suback_codes(&mut slashed, &["clients/a/b/x", "clients/a/#"]).await, vec![denied, denied]);
    let mut anonymous = Client::connect(&broker, "anon").await;
    assert_eq!(suback_codes(&mut anonymous, &["users//x", "users/%u/x"]).await, vec![denied, denied]);
    let mut alice = user(&broker, "c-alice", "alice").await;
    assert_eq!(suback_codes(&mut alice, &["users/alice/x", "users/bob/x"]).await, vec![ok, denied]);
    let mut eve = user(&broker, "c-eve", "eve").await;
    assert_eq!(suback_codes(&mut eve, &["clients/c-eve/x"]).await, vec![denied], "the 'or' rule");
    // Neither attacker's publish reached the victim: the next message it gets is its own.
    victim.publish_acked("clients/victim/cmd", QoS::AtLeastOnce, "own").await;
    assert_eq!(&victim.receive(1).await[0].payload[..], b"own");

    // A broken rule (its '}' missing) would take the deny rule after it along: refused.
    dir.write(
        "acl.conf",
        "{allow, all, pubsub, [\"open/#\"]\n{deny, all, subscribe, [\"secret/#\"]}.\n{allow, all}.\n",
    );
    let refusal = dir.ctl(&["acl", "reload"]).err();
    assert!(refusal.contains("line 1: expected ',' or '}', found '{'"), "{refusal}");
    assert!(refusal.contains("the rules in use are unchanged"), "{refusal}");
    assert_eq!(suback_codes(&mut alice, &["users/alice/y", "open/x"]).await, vec![ok, denied], "the old rules");
    assert!(dir.ctl(&["acl", "list"]).ok().contains("{allow, all, pubsub, [\"clients/%c/#\", \"users/%u/#\"]}."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nomatch_deny_and_unloading_lifts_the_rules() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write("acl.conf", "{allow, all, subscribe, [\"allowed/#\"]}.\n");
    let broker = Broker::start(&dir, &[("BROKER_ACL_INTERNAL__NOMATCH", "deny")]);
    let mut client = Client::connect(&broker, "nm").await;
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(suback_codes(&mut client, &["allowed/x", "other/x"]).await, vec![ok, SubscribeReasonCode::Failure]);
    dir.ctl(&["plugins", "unload", "emqx_mod_acl_internal"]).ok();
    assert_eq!(suback_codes(&mut client, &["other/x"]).await, vec![ok]);
}

/// EMQX's ACL cache: a connection asks `client.check_acl` once per topic (not once per
/// message) unless `[mqtt] acl_cache = false`, and a reload of the rules applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_answers_are_cached_per_connection_until_the_rules_change() {
    for (cache, checks) in [("true", 1), ("false", 5)] {
        // The recorder is first in the chain, so it sees every question put to the ACL.
        let dir = DataDir::with_plugins("{hook_recorder, true}.\n{emqx_mod_acl_internal, true}.\n");
        dir.write("acl.conf", "{deny, all, publish, [\"t/#\"]}.\n{allow, all}.\n");
        let file = dir.file("events.jsonl");
        let broker = Broker::start(
            &dir,
            &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap()), ("BROKER_MQTT__ACL_CACHE", cache)],
        );
        let mut sub = Client::connect(&broker, "sub").await;
        sub.subscribe("t/#", QoS::AtLeastOnce).await;
        let mut publisher = Client::connect(&broker, "pub").await;
        for _ in 0..5 {
            publisher.publish_acked("t/1", QoS::AtLeastOnce, "denied").await;
        }
        let asked = recorded_events(&file)
            .iter()
            .filter(|e| e["hook"] == "client.check_acl" && e["client_id"] == "pub" && e["topic"] == "t/1")
            .count();
        assert_eq!(asked, checks, "acl_cache = {cache}: check_acl calls for 5 publishes");

        // New rules, reloaded: the same connection's cached "deny" is gone at once.
        dir.write("acl.conf", "{allow, all}.\n");
        dir.ctl(&["acl", "reload"]).ok();
        publisher.publish_acked("t/1", QoS::AtLeastOnce, "allowed").await;
        assert_eq!(&sub.receive(1).await[0].payload[..], b"allowed", "acl_cache = {cache}");
    }
}

fn telemetry_lists(dir: &DataDir) -> (Value, Value) {
    let data: Value = serde_json::from_str(&dir.ctl(&["telemetry", "get", "data"]).ok()).unwrap();
    (data["active_plugins"].clone(), data["active_modules"].clone())
}

#[test]
fn telemetry_lists_exactly_the_running_plugins_and_modules() {
    let dir = DataDir::with_plugins(
        "{emqx_retainer, true}.\n{emqx_mod_presence, true}.\n{emqx_mod_acl_internal, true}.\n{emqx_telemetry, true}.\n",
    );
    let _broker = Broker::start(&dir, &[]);
    let (plugins, modules) = telemetry_lists(&dir);
    assert_eq!(plugins, serde_json::json!(["emqx_retainer", "emqx_telemetry"]));
    assert_eq!(modules, serde_json::json!(["emqx_mod_presence", "emqx_mod_acl_internal"]));

    dir.ctl(&["plugins", "unload", "emqx_retainer"]).ok();
    dir.ctl(&["plugins", "unload", "emqx_mod_presence"]).ok();
    let (plugins, modules) = telemetry_lists(&dir);
    assert_eq!(plugins, serde_json::json!(["emqx_telemetry"]));
    assert_eq!(modules, serde_json::json!(["emqx_mod_acl_internal"]));

    dir.ctl(&["plugins", "load", "emqx_mod_presence"]).ok();
    let (_, modules) = telemetry_lists(&dir);
    assert_eq!(modules, serde_json::json!(["emqx_mod_presence", "emqx_mod_acl_internal"]));
}
