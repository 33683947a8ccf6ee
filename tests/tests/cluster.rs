//! A cluster of broker nodes on a real `nats-server` (issue "Scale out on NATS"): a message
//! published on one node reaches matching subscribers on the others, once each, with MQTT's
//! matching rules (wildcards, `$` topics, `#` matching its parent level) across the topic to
//! subject mapping; a SUBACK means the other nodes already send what it asked for; a node
//! that cannot reach NATS at start says so and exits.

use e2e::nats::Nats;
use e2e::raw::{expiry, payload, topic, Raw, C5, V4, V5};
use e2e::{Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS;

/// One node of a cluster on `nats`, named `name`.
fn node(nats: &Nats, name: &str) -> (DataDir, Broker) {
    node_with(DataDir::new(), nats, name, &[])
}

/// One node of a cluster on `nats`, named `name`, in `dir`, with settings `extra` too.
fn node_with(dir: DataDir, nats: &Nats, name: &str, extra: &[(&str, &str)]) -> (DataDir, Broker) {
    node_at(dir, &nats.url(), name, extra)
}

/// One node of a cluster on the NATS server at `url`.
fn node_at(dir: DataDir, url: &str, name: &str, extra: &[(&str, &str)]) -> (DataDir, Broker) {
    let mut env = vec![("BROKER_CLUSTER__NATS", url), ("BROKER_NODE_NAME", name)];
    env.extend_from_slice(extra);
    let broker = Broker::start(&dir, &env);
    (dir, broker)
}

/// Receives until every one of `expected` came (in any order), failing on anything else.
fn all_of(client: &mut C5, expected: &[&str]) {
    let mut missing: Vec<&str> = expected.to_vec();
    while !missing.is_empty() {
        let p = client.next_publish();
        let t = topic(&p);
        let at =
            missing.iter().position(|m| *m == t).unwrap_or_else(|| panic!("unexpected {t:?}; waiting for {missing:?}"));
        assert_eq!(payload(&p), t);
        missing.remove(at);
    }
}

/// Receives until the PUBLISH on `marker`, returning (topic, payload) of those before it. Across
/// nodes, order is kept per topic (MQTT's ordered topics, §4.6) and between topics that the
/// same NATS subscription carries; the marker must share one with what it follows.
fn until_marker(client: &mut C5, marker: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        let p = client.next_publish();
        if topic(&p) == marker {
            return got;
        }
        got.push((topic(&p), payload(&p)));
    }
}

/// Receives on `client` until every payload of `expected` has come (`got` holds those that
/// came before; others may come too, and more than once), failing with `what` and the
/// missing ones if nothing comes for 10 s.
fn until_every_payload(client: &mut C5, got: &mut std::collections::HashSet<String>, expected: &[String], what: &str) {
    let missing = |got: &std::collections::HashSet<String>| {
        expected.iter().filter(|e| !got.contains(*e)).cloned().collect::<Vec<_>>()
    };
    while !missing(got).is_empty() {
        let Some(p) = client.next_publish_within(std::time::Duration::from_secs(10)) else {
            panic!("{what}: never delivered: {:?}", missing(got));
        };
        got.insert(payload(&p));
    }
}

#[test]
fn a_message_published_on_one_node_reaches_subscribers_on_the_others_once_each() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@n1");
    let (_d2, n2) = node(&nats, "emqx@n2");
    let (_d3, n3) = node(&nats, "emqx@n3");
    // No waiting after the SUBACKs: they come once NATS has the interest.
    let mut on2 = C5::connect(&n2, "c-on2");
    on2.subscribe("c/+", QoS::AtLeastOnce);
    let mut on3 = C5::connect(&n3, "c-on3");
    on3.subscribe("c/#", QoS::ExactlyOnce);

    let mut publisher = C5::connect(&n1, "c-pub");
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        publisher.publish(&format!("c/{i}"), qos, &format!("m{i}"));
    }
    publisher.publish("c/end", QoS::AtLeastOnce, "");
    let expected: Vec<(String, String)> = (0..3).map(|i| (format!("c/{i}"), format!("m{i}"))).collect();
    // Once each, in order: a node that forwarded again, or routed two copies, would repeat one.
    assert_eq!(until_marker(&mut on2, "c/end"), expected, "node 2");
    assert_eq!(until_marker(&mut on3, "c/end"), expected, "node 3");
    // EMQX's `messages.forward`: the four, counted where they were published.
    assert_eq!((e2e::stat(&_d1, "messages.forward"), e2e::stat(&_d2, "messages.forward")), (4, 0));
}

/// A SUBACK comes only once NATS has the node's interest: a message published on another node
/// right after it is never missed (100 rounds, each on a new filter, the publisher already
/// connected).
/// MQTT-3.1.2-8: a node that stops (a rolling restart) closes its clients' connections
/// without their DISCONNECT: their wills reach the subscribers on the other nodes before it
/// exits (QoS 0 and 1).
#[test]
fn the_wills_of_a_stopping_nodes_clients_reach_the_other_nodes() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@n1");
    let (_d2, n2) = node(&nats, "emqx@n2");
    let mut on2 = C5::connect(&n2, "cw-on2");
    on2.subscribe("cw/#", QoS::AtLeastOnce);
    let mut clients = Vec::new();
    for (id, qos) in [("cw/qos0", rumqttc::QoS::AtMostOnce), ("cw/qos1", rumqttc::QoS::AtLeastOnce)] {
        let mut connect = rumqttc::Connect::new(id.replace('/', "-"));
        connect.last_will = Some(rumqttc::LastWill::new(id, id, qos, false));
        let (raw, ack) = Raw::<V4>::connect(n1.addr, &rumqttc::Packet::Connect(connect));
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
        clients.push(raw);
    }
    n1.stop();
    all_of(&mut on2, &["cw/qos0", "cw/qos1"]);
}

#[test]
fn a_suback_means_the_other_nodes_already_send_what_it_asked_for() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@s1");
    let (_d2, n2) = node(&nats, "emqx@s2");
    let mut publisher = C5::connect(&n1, "s-pub");
    let mut subscriber = C5::connect(&n2, "s-sub");
    for round in 0..100 {
        let filter = format!("s/{round}");
        subscriber.subscribe(&filter, QoS::AtLeastOnce);
        publisher.publish(&filter, QoS::AtLeastOnce, "right after the SUBACK");
        assert_eq!(topic(&subscriber.next_publish()), filter, "round {round}: its message was missed");
    }
}

/// A node reads what other nodes send in the order they published it, even when it comes
/// through different NATS subscriptions: a session with `#` on a node where another session
/// holds `q/a` (so `q/a` messages come through two subscriptions, `q/b` through one), and a
/// session with two filters, get 600 interleaved messages in publish order.
#[test]
fn messages_from_one_node_keep_their_order_across_the_subscriptions_that_carry_them() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@q1");
    let (_d2, n2) = node(&nats, "emqx@q2");
    let mut all = C5::connect(&n2, "q-all");
    all.subscribe("#", QoS::AtLeastOnce);
    let mut one = C5::connect(&n2, "q-one");
    one.subscribe("q/a", QoS::AtLeastOnce);
    let mut two = C5::connect(&n2, "q-two");
    two.subscribe("q/a", QoS::AtLeastOnce);
    two.subscribe("q/b", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&n1, "q-pub");
    let sent: Vec<(String, String)> =
        (0..600).map(|i| (if i % 3 == 0 { "q/a" } else { "q/b" }.to_owned(), i.to_string())).collect();
    for (t, p) in &sent {
        publisher.publish(t, QoS::AtMostOnce, p);
    }
    for (name, client) in [("q-all", &mut all), ("q-two", &mut two)] {
        let got: Vec<(String, String)> = sent
            .iter()
            .map(|_| {
                let p = client.next_publish();
                (topic(&p), payload(&p))
            })
            .collect();
        if let Some(at) = got.iter().zip(&sent).position(|(g, s)| g != s) {
            panic!(
                "{name}: message {at} out of publish order: got {:?} where {:?} was sent",
                &got[at..at + 5.min(got.len() - at)],
                &sent[at]
            );
        }
    }
}

/// Two sessions on one node whose filters overlap make two NATS subscriptions of that node
/// match; each session still gets each message once, and the node's own subscriber on the
/// publishing node gets it once too (NATS does not echo it back).
#[test]
fn overlapping_filters_on_a_node_deliver_each_message_once() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@o1");
    let (_d2, n2) = node(&nats, "emqx@o2");
    let mut plus = C5::connect(&n2, "o-plus");
    plus.subscribe("o/+", QoS::AtLeastOnce);
    plus.subscribe("o/#", QoS::AtLeastOnce);
    let mut hash = C5::connect(&n2, "o-hash");
    hash.subscribe("o/#", QoS::AtLeastOnce);
    hash.subscribe("o/x", QoS::AtLeastOnce);
    let mut local = C5::connect(&n1, "o-local");
    local.subscribe("o/#", QoS::AtLeastOnce);

    let mut publisher = C5::connect(&n1, "o-pub");
    for i in 0..50 {
        publisher.publish("o/x", QoS::AtLeastOnce, &i.to_string());
    }
    publisher.publish("o/end", QoS::AtLeastOnce, "");
    let expected: Vec<(String, String)> = (0..50).map(|i| ("o/x".to_owned(), i.to_string())).collect();
    for (name, client) in [("o-plus", &mut plus), ("o-hash", &mut hash), ("o-local", &mut local)] {
        assert_eq!(until_marker(client, "o/end"), expected, "{name}");
    }
}

/// Topics NATS subjects cannot hold as they are (`.`, `*`, `>`, spaces, empty levels, a
/// leading `/`) cross nodes unchanged; `#` and `+` at the first level do not match `$`
/// topics (MQTT-4.7.2-1) while `$x/#` does; `a/#` matches `a` (MQTT-4.7.1-2).
#[test]
fn topics_and_filters_keep_their_mqtt_meaning_across_nodes() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@t1");
    let (_d2, n2) = node(&nats, "emqx@t2");
    let mut all = C5::connect(&n2, "t-all");
    all.subscribe("#", QoS::AtLeastOnce);
    let mut dollar = C5::connect(&n2, "t-dollar");
    dollar.subscribe("$x/#", QoS::AtLeastOnce);
    let mut parent = C5::connect(&n2, "t-parent");
    parent.subscribe("p/#", QoS::AtLeastOnce);
    parent.subscribe("+/+/q", QoS::AtLeastOnce);

    let topics = ["a.b/c", "a*/>b", "sp ace/x", "a//b", "/lead", "trail/", "%41/ü", "p", "p/q", "x/y/q", "$x/y", "$x"];
    let mut publisher = C5::connect(&n1, "t-pub");
    for t in topics {
        publisher.publish(t, QoS::AtLeastOnce, t);
    }
    publisher.publish("mark", QoS::AtLeastOnce, "mark");

    // `#` gets every topic but the `$` ones, unchanged. Its NATS subscription carries them in
    // order, the marker last, so a `$` topic that crossed would have come before the marker.
    let mut plain: Vec<&str> = topics.into_iter().filter(|t| !t.starts_with('$')).collect();
    plain.push("mark");
    all_of(&mut all, &plain);
    all_of(&mut dollar, &["$x/y", "$x"]);
    all_of(&mut parent, &["p", "p/q", "x/y/q"]);
}

/// A node takes interest in NATS with the first subscriber to a filter and drops it with the
/// last: a subject nobody subscribes to costs the server nothing.
#[test]
fn a_nodes_interest_follows_its_subscribers() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@i1");
    let ours = || {
        let mut subjects: Vec<String> =
            nats.subscribed_subjects().into_iter().filter(|s| s.starts_with("mqtt.t.")).collect();
        subjects.sort();
        subjects
    };
    let mut a = C5::connect(&n1, "i-a");
    let mut b = C5::connect(&n1, "i-b");
    a.subscribe("i/#", QoS::AtMostOnce);
    b.subscribe("i/#", QoS::AtMostOnce);
    // `i/#` is two subjects (`i.>` and `i` itself), taken once for both sessions, in place when
    // the SUBACKs came.
    assert_eq!(ours(), ["mqtt.t.i", "mqtt.t.i.>"]);
    a.unsubscribe(&["i/#"]);
    assert_eq!(ours(), ["mqtt.t.i", "mqtt.t.i.>"], "b still wants it");
    b.disconnect();
    e2e::wait_until("the interest dropped with the last subscriber", || ours().is_empty().then_some(()));
}

/// A shared subscription spans the cluster (NATS queue groups): with one member of
/// `$share/g/s/#` on each of three nodes, each message goes to exactly one member in the
/// cluster, the publishing node's own included, spread within 20 % of a third each, while a
/// plain subscriber gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_gives_each_message_to_one_member_in_the_cluster() {
    const N: usize = 3000;
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@g1");
    let (_d2, n2) = node(&nats, "emqx@g2");
    let (_d3, n3) = node(&nats, "emqx@g3");
    let mut members = Vec::new();
    for (i, broker) in [&n1, &n2, &n3].into_iter().enumerate() {
        let mut member = e2e::Client::connect(broker, &format!("g-member{i}")).await;
        member.subscribe("$share/g/s/#", rumqttc::QoS::AtLeastOnce).await;
        members.push(member);
    }
    let mut plain = e2e::Client::connect(&n2, "g-plain").await;
    plain.subscribe("s/#", rumqttc::QoS::AtLeastOnce).await;
    let publisher = e2e::Client::connect(&n1, "g-pub").await;
    let sending = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .client
                .publish(format!("s/{}", i % 7), rumqttc::QoS::AtLeastOnce, false, i.to_string())
                .await
                .unwrap();
        }
        publisher
    });

    let mut seen = std::collections::HashSet::new();
    let mut counts = [0usize; 3];
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    while seen.len() < N {
        let mut any = false;
        for (i, member) in members.iter_mut().enumerate() {
            while let Some(p) = member.try_receive() {
                any = true;
                counts[i] += 1;
                let payload = e2e::text(&p.payload);
                assert!(seen.insert(payload.clone()), "message {payload} went to two members");
            }
        }
        if !any {
            assert!(std::time::Instant::now() < deadline, "{} of {N} messages reached a member", seen.len());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    let _publisher = sending.await.unwrap();
    for (i, count) in counts.iter().enumerate() {
        let share = *count as f64 / (N as f64 / 3.0);
        assert!((0.8..=1.2).contains(&share), "member {i} got {count} of {N}: {counts:?}");
    }
    assert_eq!(plain.receive(N).await.len(), N, "the plain subscriber gets every message");
}

/// A share group's messages are redispatched across nodes (EMQX 5): when the session of the
/// member that held them ends (a clean session whose connection broke) and the group has no
/// other member on its node, the QoS 1 messages it had not acknowledged go to a member on
/// another node, each once.
#[test]
fn a_share_groups_messages_go_to_a_member_on_another_node_when_their_members_session_ends() {
    let nats = Nats::start();
    let (d1, n1) = node(&nats, "emqx@r1");
    let (_d2, n2) = node(&nats, "emqx@r2");
    let share = "$share/g/r/x";
    let mut first = C5::connect(&n1, "r-first");
    first.subscribe(share, QoS::AtLeastOnce);
    let mut publisher = C5::connect(&n2, "r-pub");
    for n in 0..3 {
        publisher.publish("r/x", QoS::AtLeastOnce, &n.to_string());
    }
    for n in 0..3 {
        match first.raw.recv() {
            e2e::raw::v5::Packet::Publish(p) => assert_eq!(payload(&p), n.to_string(), "held, unacknowledged"),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    let mut second = C5::connect(&n2, "r-second");
    second.subscribe(share, QoS::AtLeastOnce);

    let sessions = e2e::stat(&d1, "sessions.count");
    first.raw.drop_connection();
    e2e::wait_for_stat(&d1, "sessions.count", sessions - 1);
    let got: Vec<String> = (0..3).map(|_| payload(&second.next_publish())).collect();
    assert_eq!(got, ["0", "1", "2"], "redispatched to the member on the other node, in order");
    publisher.publish("r/x", QoS::AtLeastOnce, "next");
    assert_eq!(payload(&second.next_publish()), "next", "nothing twice");
}

/// A share group's messages keep their group when their member's persistent session moves to
/// another node: when the session then ends there (MQTT 5 DISCONNECT with Session Expiry 0),
/// the one in flight and those still queued go to another member, in order.
#[test]
fn a_share_groups_messages_keep_their_group_when_their_members_session_moves() {
    use e2e::raw::v5::{Disconnect, DisconnectProperties, DisconnectReasonCode, Packet};
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@v1");
    let (_d2, n2) = node(&nats, "emqx@v2");
    let share = "$share/g/v/x";
    let (mut member, _) = C5::connect_with(&n1, "v-member", expiry(300));
    member.subscribe(share, QoS::AtLeastOnce);
    member.disconnect();
    let mut publisher = C5::connect(&n1, "v-pub");
    for n in 0..5 {
        publisher.publish("v/x", QoS::AtLeastOnce, &n.to_string());
    }
    let mut other = C5::connect(&n2, "v-other");
    other.subscribe(share, QoS::AtLeastOnce);
    // The member resumes on node 2 taking one message at a time: one in flight, four queued.
    let mut props = expiry(300).unwrap();
    props.receive_maximum = Some(1);
    let (mut member, ack) = C5::connect_packet(&n2, &e2e::raw::connect5("v-member", false, Some(props)));
    assert!(ack.session_present, "the session moved ({ack:?})");
    match member.raw.recv() {
        Packet::Publish(p) => assert_eq!(payload(&p), "0", "held, unacknowledged"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    let properties = DisconnectProperties {
        session_expiry_interval: Some(0),
        reason_string: None,
        user_properties: Vec::new(),
        server_reference: None,
    };
    let disconnect =
        Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection, properties: Some(properties) };
    member.raw.send(&Packet::Disconnect(disconnect));
    let got: Vec<String> = (0..5).map(|_| payload(&other.next_publish())).collect();
    assert_eq!(got, ["0", "1", "2", "3", "4"], "the ended member's messages, to the other member, in order");
    publisher.publish("v/x", QoS::AtLeastOnce, "next");
    assert_eq!(payload(&other.next_publish()), "next", "nothing twice");
}

/// NATS going away mid-stream: each node goes on serving its own clients (publishes,
/// subscriptions and their SUBACKs), says so once, and once NATS is back (same address) the
/// nodes subscribe again by themselves and messages cross again.
#[test]
fn nodes_serve_their_own_clients_while_nats_is_away_and_join_again_when_it_is_back() {
    let mut nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@r1");
    let (_d2, n2) = node(&nats, "emqx@r2");
    let mut remote = C5::connect(&n2, "r-remote");
    remote.subscribe("r/#", QoS::AtLeastOnce);
    let mut local = C5::connect(&n1, "r-local");
    local.subscribe("r/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&n1, "r-pub");
    publisher.publish("r/before", QoS::AtLeastOnce, "before");
    assert_eq!(topic(&remote.next_publish()), "r/before");
    assert_eq!(topic(&local.next_publish()), "r/before");

    nats.kill();
    n1.wait_for_log("cluster: lost NATS");
    publisher.publish("r/while", QoS::AtLeastOnce, "while NATS is away");
    assert_eq!(topic(&local.next_publish()), "r/while", "local traffic goes on");
    local.subscribe("w/#", QoS::AtLeastOnce); // answered, not held for NATS
    publisher.publish("w/1", QoS::AtLeastOnce, "");
    assert_eq!(topic(&local.next_publish()), "w/1");

    nats.restart();
    // Messages cross again once both nodes have reconnected and subscribed again.
    let mut round = 0;
    loop {
        round += 1;
        let t = format!("r/after/{round}");
        publisher.publish(&t, QoS::AtLeastOnce, "after");
        assert_eq!(topic(&local.next_publish()), t);
        let crossed = remote.next_publish_within(std::time::Duration::from_millis(200)).map(|p| topic(&p));
        match crossed {
            Some(got) if got.starts_with("r/after/") => break,
            // What was published while NATS was away may follow once it is back (the NATS
            // client holds it while it reconnects): late, but not lost.
            Some(got) if got == "r/while" => {}
            Some(other) => panic!("unexpected {other}"),
            None => assert!(round < 100, "no message crossed within 100 rounds after NATS came back"),
        }
    }
}

/// Every node's `$SYS` topics carry its own name and reach subscribers on every node (EMQX's
/// `$SYS/brokers/<node>/...`): a subscriber to `$SYS/brokers/+/uptime` on one node hears
/// both nodes.
#[test]
fn sys_topics_of_every_node_reach_every_node() {
    let nats = Nats::start();
    let heartbeat = [("BROKER_BROKER__SYS_HEARTBEAT", "1s")];
    let (_d1, n1) = node_with(DataDir::new(), &nats, "emqx@y1", &heartbeat);
    let (_d2, _n2) = node_with(DataDir::new(), &nats, "emqx@y2", &heartbeat);
    let mut watcher = C5::connect(&n1, "y-watcher");
    watcher.subscribe("$SYS/brokers/+/uptime", QoS::AtMostOnce);
    let mut heard = std::collections::BTreeSet::new();
    while heard.len() < 2 {
        heard.insert(topic(&watcher.next_publish()));
    }
    assert_eq!(heard.into_iter().collect::<Vec<_>>(), ["$SYS/brokers/emqx@y1/uptime", "$SYS/brokers/emqx@y2/uptime"]);
}

/// `broker ctl cluster status` lists the running nodes as EMQX 4 does, and a node killed with
/// `kill -9` under the stopped ones within a few heartbeats.
#[test]
fn cluster_status_lists_running_and_stopped_nodes() {
    let nats = Nats::start();
    let (d1, _n1) = node(&nats, "emqx@m1");
    let (_d2, _n2) = node(&nats, "emqx@m2");
    let (_d3, n3) = node(&nats, "emqx@m3");
    let status = || d1.ctl(&["cluster", "status"]).ok().trim().to_owned();
    e2e::wait_until("all three running", || {
        (status() == "Cluster status: #{running_nodes => [emqx@m1,emqx@m2,emqx@m3],stopped_nodes => []}").then_some(())
    });
    n3.kill();
    e2e::wait_until("m3 stopped", || {
        (status() == "Cluster status: #{running_nodes => [emqx@m1,emqx@m2],stopped_nodes => [emqx@m3]}").then_some(())
    });
    let json: serde_json::Value = serde_json::from_str(d1.ctl(&["cluster", "status", "--json"]).ok().trim()).unwrap();
    assert_eq!(json, serde_json::json!({"running_nodes": ["emqx@m1", "emqx@m2"], "stopped_nodes": ["emqx@m3"]}));
    // A node alone lists itself.
    let alone = DataDir::new();
    let _broker = Broker::start(&alone, &[("BROKER_NODE_NAME", "emqx@alone")]);
    assert_eq!(
        alone.ctl(&["cluster", "status"]).ok().trim(),
        "Cluster status: #{running_nodes => [emqx@alone],stopped_nodes => []}"
    );
}

/// With `[cluster] start_alone = true`, a node that cannot reach NATS at start serves its own
/// clients, and joins the cluster once NATS answers.
#[test]
fn a_node_may_start_alone_and_join_once_nats_answers() {
    let port = e2e::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let env = |name| {
        [
            ("BROKER_CLUSTER__NATS", url.clone()),
            ("BROKER_NODE_NAME", name),
            ("BROKER_CLUSTER__START_ALONE", "true".to_owned()),
        ]
    };
    let d1 = DataDir::new();
    let env1 = env("emqx@late1".to_owned());
    let n1 = Broker::start(&d1, &env1.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>());
    let mut local = C5::connect(&n1, "late-local");
    local.subscribe("l/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&n1, "late-pub");
    publisher.publish("l/alone", QoS::AtLeastOnce, "");
    assert_eq!(topic(&local.next_publish()), "l/alone");

    let nats = Nats::start_on(&port.to_string());
    let (_d2, n2) = node(&nats, "emqx@late2");
    let mut remote = C5::connect(&n2, "late-remote");
    remote.subscribe("l/#", QoS::AtLeastOnce);
    for round in 0.. {
        let t = format!("l/joined/{round}");
        publisher.publish(&t, QoS::AtLeastOnce, "");
        assert_eq!(topic(&local.next_publish()), t);
        if remote.next_publish_within(std::time::Duration::from_millis(200)).is_some() {
            break;
        }
        assert!(round < 100, "node 1 did not join within 100 rounds");
    }
}

/// `GET /api/v4/nodes` on one node lists every node of the cluster in EMQX's shape, this one
/// first, each with what its heartbeat says (a node alone lists itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_lists_every_node() {
    let nats = Nats::start();
    let management = [("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"), ("BROKER_MANAGEMENT__PASSWORD", "s3cret")];
    let (_d1, n1) = node_with(DataDir::with_plugins("{emqx_management, true}.\n"), &nats, "emqx@a1", &management);
    let (_d2, n2) = node(&nats, "emqx@a2");
    let _client = e2e::Client::connect(&n2, "a-client").await;
    let api = e2e::ManagementApi::new(format!("http://{}", n1.logged_addr("management API listening on http://")));
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    let nodes = loop {
        let (status, body) = api.call(reqwest::Method::GET, "/api/v4/nodes", Some(("admin", "s3cret")), None).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        assert_eq!(body["code"], 0, "{body}");
        let nodes = body["data"].as_array().cloned().unwrap_or_default();
        // Node 2's heartbeat counts its client once it has one.
        if nodes.len() == 2 && nodes[1]["connections"] == 1 {
            break nodes;
        }
        assert!(std::time::Instant::now() < deadline, "not both nodes: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((nodes[0]["node"].as_str(), nodes[0]["node_status"].as_str()), (Some("emqx@a1"), Some("Running")));
    assert_eq!((nodes[1]["node"].as_str(), nodes[1]["node_status"].as_str()), (Some("emqx@a2"), Some("Running")));
    for node in &nodes {
        for field in ["version", "sysdescr", "uptime"] {
            assert!(node[field].is_string(), "{field} in {node}");
        }
    }
}

/// A node that cannot reach NATS at start names the server and exits, instead of running
/// alone unnoticed.
#[test]
fn a_node_that_cannot_reach_nats_at_start_says_so_and_exits() {
    let dir = DataDir::new();
    let dead = format!("nats://127.0.0.1:{}", e2e::free_port());
    let output = std::process::Command::new(e2e::broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("BROKER_CLUSTER__NATS", &dead)
        .env("BROKER_CLUSTER__CONNECT_TIMEOUT", "1s")
        .env("BROKER_TELEMETRY__URL", "http://127.0.0.1:9/api/telemetry")
        .output()
        .unwrap();
    assert!(!output.status.success(), "the broker must not start without its cluster");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot reach NATS at {dead}")), "{stderr}");
}

/// While its NATS is away, a node cannot tell whether another node holds a client id's
/// session, so it refuses to open a new persistent one: CONNACK 0x88 Server unavailable
/// (MQTT 3.1.1: 3), as EMQX answers when it cannot register a session. Clean sessions and a
/// persistent session the node already holds are served meanwhile; once NATS is back, new
/// persistent sessions are accepted again.
#[test]
fn new_persistent_sessions_are_refused_while_nats_is_away() {
    use e2e::raw::{connect4, connect5, Raw, V4, V5};
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, ConnectReturnCode};

    let expiry = || {
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval = Some(300);
        Some(properties)
    };
    let mut nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@o1");
    let v4_code = |id: &str, clean: bool| Raw::<V4>::connect(n1.addr, &connect4(id, clean)).1.code;
    let (held, _) = C5::connect_packet(&n1, &connect5("o-held", true, expiry()));
    held.disconnect();

    nats.kill();
    n1.wait_for_log("cluster: lost NATS");
    let (_, ack) = Raw::<V5>::connect(n1.addr, &connect5("o-new5", true, expiry()));
    assert_eq!(ack.code, ConnectReturnCode::ServerUnavailable, "MQTT 5, Session Expiry 300");
    assert_eq!(v4_code("o-new4", false), rumqttc::ConnectReturnCode::ServiceUnavailable, "3.1.1, CleanSession 0");
    n1.wait_for_log("a new persistent session while the cluster's NATS is unreachable");
    assert_eq!(v4_code("o-clean4", true), rumqttc::ConnectReturnCode::Success, "3.1.1, CleanSession 1");
    C5::connect(&n1, "o-clean5").disconnect();
    let (_, ack) = C5::connect_packet(&n1, &connect5("o-held", false, expiry()));
    assert!(ack.session_present, "the session this node holds resumes");

    nats.restart();
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    while v4_code("o-new4", false) != rumqttc::ConnectReturnCode::Success {
        assert!(std::time::Instant::now() < deadline, "new persistent sessions still refused after NATS came back");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A QoS 1 or 2 message's acknowledgement means NATS stored it (JetStream, in the stream of
/// the node it was published on, `mqtt_messages_<node>_<hash>`), whatever becomes of the
/// node: the stream holds each QoS 1 message when its PUBACK arrives and each QoS 2 message
/// when its PUBCOMP does. QoS 0 messages, published before them, are not stored; the other
/// node's stream holds nothing.
#[test]
fn qos_1_and_2_messages_are_stored_in_nats_before_they_are_acknowledged() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@j1");
    let (_d2, n2) = node(&nats, "emqx@j2");
    let mut subscriber = C5::connect(&n2, "j-sub");
    subscriber.subscribe("j/#", QoS::ExactlyOnce);
    let mut publisher = C5::connect(&n1, "j-pub");
    let stream = "mqtt_messages_emqx_j1_";
    assert_eq!(nats.stream_messages(stream), Some(0), "the stream is made at start");
    for n in 0..7 {
        publisher.publish(&format!("j/0/{n}"), QoS::AtMostOnce, "");
    }
    for n in 1..=10 {
        publisher.publish(&format!("j/1/{n}"), QoS::AtLeastOnce, "");
        assert_eq!(nats.stream_messages(stream), Some(n), "after the PUBACK of QoS 1 message {n}");
    }
    for n in 1..=5 {
        publisher.publish(&format!("j/2/{n}"), QoS::ExactlyOnce, "");
        assert_eq!(nats.stream_messages(stream), Some(10 + n), "after the PUBCOMP of QoS 2 message {n}");
    }
    // And they reach the other node's subscriber, each once, in order.
    let expected: Vec<String> = (0..7)
        .map(|n| format!("j/0/{n}"))
        .chain((1..=10).map(|n| format!("j/1/{n}")))
        .chain((1..=5).map(|n| format!("j/2/{n}")))
        .collect();
    let got: Vec<String> = (0..expected.len()).map(|_| topic(&subscriber.next_publish())).collect();
    assert_eq!(got, expected);
    assert_eq!(nats.stream_messages("mqtt_messages_emqx_j2_"), Some(0));
}

/// A NATS server without JetStream cannot keep QoS 1/2 messages: the node says so, naming
/// the server and the stream, and exits.
#[test]
fn a_node_on_nats_without_jetstream_says_so_and_exits() {
    let nats = Nats::start_without_jetstream();
    let dir = DataDir::new();
    let output = std::process::Command::new(e2e::broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("BROKER_CLUSTER__NATS", nats.url())
        .env("BROKER_TELEMETRY__URL", "http://127.0.0.1:9/api/telemetry")
        .output()
        .unwrap();
    assert!(!output.status.success(), "the broker must not start without JetStream");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("NATS at {} cannot keep QoS 1/2 messages (JetStream stream mqtt_messages_", nats.url());
    assert!(stderr.contains(&expected) && stderr.contains("start nats-server with -js"), "{stderr}");
}

/// JetStream answers for a run of QoS 1 messages at once: the run is stored as one batch in
/// the stream of the node they were published on (`cluster/batch.rs`), whose answer vouches
/// for them all. Under a burst from four publishers at once, every PUBACK still means the
/// message is stored: once all 2,000 are acknowledged, the subscriber on the other node has
/// each publisher's messages once, in order; and a persistent session there that read none of
/// them, its node killed, gets all 2,000 from the stream when it reconnects to the publishers'
/// node, each publisher's in order.
#[test]
fn a_burst_of_qos_1_messages_is_stored_whole_before_its_acknowledgements() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@b1");
    let (_d2, n2) = node(&nats, "emqx@b2");
    let mut subscriber = C5::connect(&n2, "b-sub");
    subscriber.subscribe("b/#", QoS::AtLeastOnce);
    let (mut held, _) = C5::connect_packet(&n2, &e2e::raw::connect5("b-held", true, expiry(300)));
    held.subscribe("b/#", QoS::AtLeastOnce);
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let mut publisher = C5::connect(&n1, &format!("b-pub{p}"));
            std::thread::spawn(move || {
                for n in 0..500 {
                    publisher.publish(&format!("b/{p}"), QoS::AtLeastOnce, &n.to_string());
                }
            })
        })
        .collect();
    publishers.into_iter().for_each(|p| p.join().expect("a publisher got every PUBACK"));
    let in_order = |client: &mut C5, what: &str| {
        let mut next = [0u32; 4];
        while next.iter().any(|&n| n < 500) {
            let Some(p) = client.next_publish_within(std::time::Duration::from_secs(10)) else {
                panic!("{what}: only {next:?} of each publisher's 500 came");
            };
            let from: usize = topic(&p)["b/".len()..].parse().unwrap();
            let n: u32 = payload(&p).parse().unwrap();
            // A message read back may come again (QoS 1 is at least once), never out of order.
            assert!(n <= next[from], "{what}: publisher {from}'s message {n} came before {}", next[from]);
            next[from] = next[from].max(n + 1);
        }
    };
    in_order(&mut subscriber, "the live subscriber");
    n2.kill();
    drop(held);
    let (mut revived, ack) = C5::connect_packet(&n1, &e2e::raw::connect5("b-held", false, expiry(300)));
    assert!(ack.session_present, "{ack:?}");
    in_order(&mut revived, "the revived session");
}

/// Two nodes given the same name would share one stream, and the numbering that vouches for
/// stored messages would not add up: rather than acknowledge what it cannot vouch for, the
/// node answers MQTT 5 publishers 0x80 Unspecified error and logs why. (Each node has a
/// persistent subscriber of its own, so that its messages go to its stream: with none, no
/// other node wanting them, they would stay on the node.)
#[test]
fn two_nodes_with_one_name_cannot_vouch_for_their_messages_and_say_so() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    let nats = Nats::start();
    let (_d1, first) = node(&nats, "emqx@twin");
    let (_d2, second) = node(&nats, "emqx@twin");
    let mut subscribers = Vec::new();
    for (n, node) in [&first, &second].into_iter().enumerate() {
        let (mut subscriber, _) =
            C5::connect_packet(node, &e2e::raw::connect5(&format!("twin-s{n}"), true, e2e::raw::expiry(300)));
        subscriber.subscribe("twin/t", QoS::AtLeastOnce);
        subscribers.push(subscriber);
    }
    let mut a = C5::connect(&first, "twin-a");
    let mut b = C5::connect(&second, "twin-b");
    let mut reasons = Vec::new();
    for n in 0..4 {
        let publisher = if n % 2 == 0 { &mut a } else { &mut b };
        match publisher.publish_retain("twin/t", QoS::AtLeastOnce, false, "") {
            Some(Packet::PubAck(ack)) => reasons.push(ack.reason),
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
    assert!(reasons.contains(&PubAckReason::UnspecifiedError), "{reasons:?}");
    let log = "is another node named like this one?";
    e2e::wait_until(log, || (first.logs().iter().chain(second.logs().iter()).any(|l| l.contains(log))).then_some(()));
}

/// Every per-node path of the management API answers for any node of the cluster, as EMQX's
/// does: node 1's API reads node 2's broker info, stats, metrics and plugins, and stops one of
/// node 2's plugins (through `broker ctl cluster call`, a NATS request node 2 answers);
/// `/api/v4/brokers`, `/stats`, `/metrics` and `/plugins` list both nodes, and `/stats?aggregate=true`
/// sums them. A node that is not in the cluster is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_answers_for_every_node() {
    let nats = Nats::start();
    let management = [("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"), ("BROKER_MANAGEMENT__PASSWORD", "s3cret")];
    let plugins = "{emqx_management, true}.\n{emqx_mod_presence, true}.\n";
    let (_d1, n1) = node_with(DataDir::with_plugins(plugins), &nats, "emqx@m1", &management);
    let (d2, n2) = node_with(DataDir::with_plugins(plugins), &nats, "emqx@m2", &management);
    let _clients = [e2e::Client::connect(&n2, "m-1").await, e2e::Client::connect(&n2, "m-2").await];
    let api = e2e::ManagementApi::new(format!("http://{}", n1.logged_addr("management API listening on http://")));
    let get = |path: &'static str| {
        let api = &api;
        async move {
            let (status, body) = api.call(reqwest::Method::GET, path, Some(("admin", "s3cret")), None).await;
            (status, body)
        }
    };
    // Node 2 is heard from once its heartbeat came.
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    while get("/api/v4/brokers").await.1["data"].as_array().map_or(0, Vec::len) < 2 {
        assert!(std::time::Instant::now() < deadline, "node 2 never listed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let (status, body) = get("/api/v4/brokers/emqx@m2").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(
        (body["data"]["node"].as_str(), body["data"]["node_status"].as_str()),
        (Some("emqx@m2"), Some("Running"))
    );
    assert!(body["data"]["uptime"].as_str().is_some_and(|u| u.ends_with("seconds")), "{body}");
    let (_, body) = get("/api/v4/nodes/emqx@m2").await;
    assert_eq!(body["data"]["node"], "emqx@m2", "{body}");
    let (_, body) = get("/api/v4/nodes/emqx@m2/stats").await;
    assert_eq!(body["data"]["connections.count"], 2, "node 2's own gauges: {body}");
    let (_, body) = get("/api/v4/nodes/emqx@m1/stats").await;
    assert_eq!(body["data"]["connections.count"], 0, "{body}");
    let (_, body) = get("/api/v4/stats?aggregate=true").await;
    assert_eq!(body["data"]["connections.count"], 2, "summed over the nodes: {body}");
    let (_, body) = get("/api/v4/stats").await;
    let nodes: Vec<_> = body["data"].as_array().unwrap().iter().map(|n| n["node"].clone()).collect();
    assert_eq!(nodes, ["emqx@m1", "emqx@m2"], "{body}");
    let (_, body) = get("/api/v4/nodes/emqx@m2/metrics").await;
    assert!(body["data"]["client.connected"].as_u64() >= Some(2), "{body}");
    let (_, body) = get("/api/v4/metrics").await;
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
    let (_, body) = get("/api/v4/plugins").await;
    assert_eq!(body["data"][1]["node"], "emqx@m2", "{body}");
    let (_, body) = get("/api/v4/nodes/emqx@m2/plugins").await;
    let presence = body["data"].as_array().unwrap().iter().find(|p| p["name"] == "emqx_mod_presence").cloned();
    assert_eq!(presence.map(|p| p["active"].clone()), Some(true.into()), "{body}");

    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/api/v4/nodes/emqx@m2/plugins/emqx_mod_presence/unload",
            Some(("admin", "s3cret")),
            None,
        )
        .await;
    assert_eq!((status, body["code"].clone()), (reqwest::StatusCode::OK, 0.into()), "{body}");
    let list = d2.ctl(&["plugins", "list"]).ok();
    assert!(list.contains("Plugin(emqx_mod_presence, description=") && list.contains("active=false"), "{list}");

    // Clients and sessions of the whole cluster, or of one node, each with its node.
    let (_, body) = get("/api/v4/clients").await;
    assert_eq!(body["meta"]["count"], 2, "{body}");
    assert!(body["data"].as_array().unwrap().iter().all(|c| c["node"] == "emqx@m2"), "{body}");
    let (_, body) = get("/api/v4/nodes/emqx@m2/clients").await;
    assert_eq!(body["meta"]["count"], 2, "{body}");
    let (_, body) = get("/api/v4/nodes/emqx@m1/clients").await;
    assert_eq!(body["meta"]["count"], 0, "{body}");
    let (_, body) = get("/api/v4/sessions").await;
    let ids: Vec<_> = body["data"].as_array().unwrap().iter().map(|s| s["clientid"].clone()).collect();
    assert!(ids.contains(&"m-1".into()) && ids.contains(&"m-2".into()), "{body}");
    let (_, body) = get("/api/v4/nodes/emqx@m1/sessions").await;
    assert_eq!(body["meta"]["count"], 0, "{body}");

    let (status, body) = get("/api/v4/nodes/emqx@nowhere/stats").await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{body}");
}

/// `broker ctl cluster call NODE COMMAND...` runs a command on another node of the cluster.
#[test]
fn ctl_runs_a_command_on_another_node() {
    let nats = Nats::start();
    let (d1, _n1) = node(&nats, "emqx@c1");
    let (_d2, _n2) = node(&nats, "emqx@c2");
    let answer = d1.ctl(&["cluster", "call", "emqx@c2", "broker"]).ok();
    assert!(answer.contains("node      : emqx@c2"), "{answer}");
    let failed = d1.ctl(&["cluster", "call", "emqx@nowhere", "broker"]);
    assert!(!failed.success, "{failed:?}");
    assert!(failed.stderr.contains("no running node \"emqx@nowhere\""), "{failed:?}");
}

/// In a cluster each node reports telemetry for itself, as EMQX 4 does: its own uuid, and the
/// other running nodes' uuids in `nodes_uuid` (asked with `cluster call`).
#[test]
fn each_node_reports_telemetry_with_the_other_nodes_uuids() {
    use e2e::receiver::{Mode, Receiver};
    let receiver = Receiver::start(Mode::Accept);
    let nats = Nats::start();
    let url = receiver.url();
    let telemetry = [
        ("BROKER_TELEMETRY__URL", url.as_str()),
        ("BROKER_TELEMETRY__REPORT_INTERVAL", "200ms"),
        ("BROKER_TELEMETRY__FIRST_REPORT_DELAY", "0s"),
    ];
    let with_telemetry = || DataDir::with_plugins("{emqx_telemetry, true}.\n");
    let (d1, _n1) = node_with(with_telemetry(), &nats, "emqx@t1", &telemetry);
    let (d2, _n2) = node_with(with_telemetry(), &nats, "emqx@t2", &telemetry);
    let (uuid1, uuid2) = (d1.ctl(&["telemetry", "get", "uuid"]).ok(), d2.ctl(&["telemetry", "get", "uuid"]).ok());
    let (uuid1, uuid2) = (uuid1.trim().to_owned(), uuid2.trim().to_owned());
    assert_ne!(uuid1, uuid2, "each node has its own uuid");
    for (mine, other) in [(&uuid1, &uuid2), (&uuid2, &uuid1)] {
        let report = receiver.wait_for("a report listing the other node", |r| {
            r["uuid"] == mine.as_str() && r["nodes_uuid"] == serde_json::json!([other])
        });
        assert_eq!(report.json["nodes_uuid"].as_array().map(Vec::len), Some(1), "{}", report.raw);
    }
}

/// A node that loses NATS for a while (its own connection only: the others keep theirs)
/// catches up once it is back: every QoS 1 message published on another node meanwhile,
/// which that node's stream holds, reaches its subscriber, late, once each and in order; one
/// it had already routed before the loss is not routed again.
#[test]
fn a_node_that_lost_nats_catches_up_on_what_was_stored_meanwhile() {
    let nats = Nats::start();
    let proxy = e2e::proxy::Cuttable::start(([127, 0, 0, 1], nats.port).into());
    let (_d1, n1) = node(&nats, "emqx@u1");
    let (_d2, n2) = node_at(DataDir::new(), &format!("nats://{}", proxy.addr), "emqx@u2", &[]);
    let mut subscriber = C5::connect(&n2, "u-sub");
    subscriber.subscribe("u/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&n1, "u-pub");
    publisher.publish("u/0", QoS::AtLeastOnce, "before");
    assert_eq!(topic(&subscriber.next_publish()), "u/0");

    proxy.cut();
    n2.wait_for_log("cluster: lost NATS");
    for n in 1..=50 {
        publisher.publish(&format!("u/{n}"), QoS::AtLeastOnce, "while node 2 is cut off");
    }
    proxy.restore();
    n2.wait_for_log("QoS 1/2 messages read back to catch up");
    let got: Vec<String> = (1..=50).map(|_| topic(&subscriber.next_publish())).collect();
    let expected: Vec<String> = (1..=50).map(|n| format!("u/{n}")).collect();
    assert_eq!(got, expected);
    publisher.publish("u/end", QoS::AtLeastOnce, "after");
    assert_eq!(topic(&subscriber.next_publish()), "u/end", "u/0 was not routed again");
}

/// A burst of QoS 0 faster than NATS takes it slows its publishers down (overload
/// protection, as for a full session queue) instead of dropping messages between nodes:
/// with the queue to NATS at 256 messages, 10 publishers × 5,000 QoS 0 messages, all sent
/// without pause, all reach the subscriber on the other node, each publisher's in order.
#[test]
fn a_qos_0_burst_faster_than_nats_slows_its_publishers_and_loses_nothing() {
    let nats = Nats::start();
    let unlimited = [("BROKER_MQTT__MAX_MQUEUE_LEN", "0"), ("BROKER_CLUSTER__FORWARD_QUEUE", "256")];
    let (_d1, n1) = node_with(DataDir::new(), &nats, "emqx@q1", &unlimited);
    let (_d2, n2) = node_with(DataDir::new(), &nats, "emqx@q2", &unlimited);
    let mut subscriber = C5::connect(&n2, "q-sub");
    subscriber.subscribe("q/#", QoS::AtMostOnce);
    const PUBLISHERS: usize = 10;
    const EACH: usize = 5000;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let mut publisher = C5::connect(&n1, &format!("q-pub{p}"));
            std::thread::spawn(move || {
                for n in 0..EACH {
                    publisher.publish(&format!("q/{p}"), QoS::AtMostOnce, &n.to_string());
                }
                publisher
            })
        })
        .collect();
    let mut next = [0usize; PUBLISHERS];
    for _ in 0..PUBLISHERS * EACH {
        let p = subscriber.next_publish();
        let from: usize = topic(&p)["q/".len()..].parse().unwrap();
        assert_eq!(payload(&p), next[from].to_string(), "publisher {from}'s messages, in order, none lost");
        next[from] += 1;
    }
    publishers.into_iter().for_each(|p| drop(p.join().expect("a publisher")));
    assert!(n1.logs().iter().all(|l| !l.contains("not forwarded")), "nothing was dropped");
}

/// Whether node `dir`'s `broker ctl sessions list` lists `client_id`.
fn lists_session(dir: &DataDir, client_id: &str) -> bool {
    dir.ctl(&["sessions", "list"]).ok().contains(&format!("clientid={client_id},"))
}

/// A persistent session moves to the node its client reconnects to (issue "Scale out on
/// NATS": sessions across nodes): Session Present 1, every message queued for it on the old
/// node while it was offline, in order (QoS 1 and 2), its subscriptions now served from the
/// new node, and the old node no longer holding it.
#[test]
fn a_persistent_session_moves_with_its_messages_to_the_node_its_client_reconnects_to() {
    let nats = Nats::start();
    let (d1, n1) = node(&nats, "emqx@m1");
    let (d2, n2) = node(&nats, "emqx@m2");
    let (mut sub, _) = C5::connect_with(&n1, "mover", expiry(300));
    sub.subscribe("move/1/#", QoS::AtLeastOnce);
    sub.subscribe("move/2/#", QoS::ExactlyOnce);
    sub.disconnect();
    let mut publisher = C5::connect(&n1, "move-pub");
    let mut sent = Vec::new();
    for i in 0..30 {
        let t = format!("move/{}/{i}", 1 + i % 2);
        publisher.publish(&t, if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce }, &t);
        sent.push((t.clone(), t));
    }
    // The PUBACKs / PUBCOMPs came: all 30 wait in the session on node 1.
    let (mut sub, ack) = C5::connect_packet(&n2, &e2e::raw::connect5("mover", false, expiry(300)));
    assert!(ack.session_present, "the session moved: Session Present 1 ({ack:?})");
    let got: Vec<(String, String)> = (0..30)
        .map(|_| {
            let p = sub.next_publish();
            (topic(&p), payload(&p))
        })
        .collect();
    assert_eq!(got, sent, "every message queued on node 1, once, in order");
    assert!(!lists_session(&d1, "mover"), "node 1 gave the session up");
    assert!(lists_session(&d2, "mover"), "node 2 holds it");
    // Its subscriptions are node 2's now: a message published on node 1 comes once.
    publisher.publish("move/1/after", QoS::AtLeastOnce, "after");
    publisher.publish("move/1/end", QoS::AtLeastOnce, "");
    let after: Vec<String> = sub.until("move/1/end").iter().map(topic).collect();
    assert_eq!(after, ["move/1/after"]);
}

/// A live connection is taken over by a connection of its client id on another node: the old
/// one gets DISCONNECT 0x8E Session taken over (MQTT-3.1.4-3), the new one the session
/// (Session Present 1) with a message still in flight to the old one (QoS 1, resent with DUP),
/// and a will of the old connection with a delay is not sent (its client is back in time,
/// MQTT-3.1.3-9). A clean start on a third node discards it (Session Present 0, MQTT-3.2.2-2)
/// and takes the old connection with it.
#[test]
fn a_live_session_is_taken_over_from_another_node() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@t1");
    let (_d2, n2) = node(&nats, "emqx@t2");
    let (_d3, n3) = node(&nats, "emqx@t3");
    let mut watcher = C5::connect(&n3, "t-watcher");
    watcher.subscribe("will/#", QoS::AtLeastOnce);
    let will = e2e::raw::will5("will/t", "gone", QoS::AtLeastOnce, false, Some(30));
    let connect = rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 60,
        client_id: "taken".to_owned(),
        clean_start: true,
        properties: expiry(300),
    };
    let (mut old, _) = C5::connect_packet(&n1, &rumqttc::v5::mqttbytes::v5::Packet::Connect(connect, Some(will), None));
    old.subscribe("take/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&n2, "take-pub");
    publisher.publish("take/1", QoS::AtLeastOnce, "in flight");
    // Received and not acknowledged: in flight when the session moves.
    let first = old.raw.recv();
    assert!(matches!(first, rumqttc::v5::mqttbytes::v5::Packet::Publish(_)), "{first:?}");

    let (mut new, ack) = C5::connect_packet(&n2, &e2e::raw::connect5("taken", false, expiry(300)));
    assert!(ack.session_present, "{ack:?}");
    old.expect_disconnect(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver);
    let resent = new.next_publish();
    assert_eq!((topic(&resent), payload(&resent), resent.dup), ("take/1".to_owned(), "in flight".to_owned(), true));
    publisher.publish("take/2", QoS::AtLeastOnce, "after");
    assert_eq!(topic(&new.next_publish()), "take/2");

    let (mut fresh, ack) = C5::connect_with(&n3, "taken", expiry(300));
    assert!(!ack.session_present, "a clean start discards the session: {ack:?}");
    new.expect_disconnect(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver);
    publisher.publish("take/3", QoS::AtLeastOnce, "not subscribed any more");
    fresh.subscribe("marker", QoS::AtLeastOnce);
    publisher.publish("marker", QoS::AtLeastOnce, "");
    assert_eq!(topic(&fresh.next_publish()), "marker", "the discarded session's subscription is gone");
    // The will waited for its delay and its client came back in time: never sent.
    publisher.publish("will/marker", QoS::AtLeastOnce, "");
    assert_eq!(topic(&watcher.next_publish()), "will/marker");
}

/// Connections of one client id racing on two nodes never leave two owners: after each round
/// of two CONNECTs sent at the same moment to two nodes, exactly one connection stays, and
/// exactly one node holds the session.
#[test]
fn racing_connects_on_two_nodes_leave_one_owner() {
    let nats = Nats::start();
    let (d1, n1) = node(&nats, "emqx@r1");
    let (d2, n2) = node(&nats, "emqx@r2");
    for round in 0..20 {
        let id = format!("racer-{round}");
        let clean = round % 2 == 0;
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| Raw::<V5>::connect(n1.addr, &e2e::raw::connect5(&id, clean, expiry(300))));
            let b = s.spawn(|| Raw::<V5>::connect(n2.addr, &e2e::raw::connect5(&id, clean, expiry(300))));
            (a.join().unwrap(), b.join().unwrap())
        });
        let mut open: Vec<Raw<V5>> = [a, b]
            .into_iter()
            .filter(|(_, ack)| ack.code == rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success)
            .map(|(r, _)| r)
            .collect();
        // Both accepted: the one taken over is told 0x8E and closed (polled until one is).
        if open.len() == 2 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let lost = loop {
                assert!(std::time::Instant::now() < deadline, "round {round}: both connections stayed");
                let closed = open.iter_mut().position(|raw| {
                    match raw.next_packet_within(std::time::Duration::from_millis(20)) {
                        Ok(Some(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(d))) => {
                            assert_eq!(
                                d.reason_code,
                                rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver
                            );
                            true
                        }
                        Ok(None) => true,
                        Ok(Some(other)) => panic!("round {round}: unexpected {other:?}"),
                        Err(_) => false,
                    }
                });
                if let Some(lost) = closed {
                    break lost;
                }
            };
            open.remove(lost);
        }
        assert_eq!(open.len(), 1, "round {round}: one connection stays");
        open[0].ping(&id);
        let holders = [&d1, &d2].iter().filter(|d| lists_session(d, &id)).count();
        assert_eq!(holders, 1, "round {round}: one node holds the session");
    }
}

/// Sessions that ended leave nothing in NATS: the owner key of each client id, and the record
/// of each persistent session, is removed whole (a KV delete would leave a marker behind, one
/// for every client id the cluster ever saw). A client id given up is taken again at once,
/// on another node too.
#[test]
fn sessions_that_ended_leave_nothing_behind_in_nats() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@g1");
    let (_d2, n2) = node(&nats, "emqx@g2");
    let (owners, records) = ("KV_mqtt_sessions", "KV_mqtt_session_records");
    let clean: Vec<C5> = (0..20).map(|i| C5::connect(&n1, &format!("gone-{i}"))).collect();
    let persistent: Vec<C5> = (0..5).map(|i| C5::connect_with(&n1, &format!("kept-{i}"), expiry(1)).0).collect();
    e2e::wait_until("an owner key for each client id", || (nats.stream_messages(owners) == Some(25)).then_some(()));
    e2e::wait_until("a record for each persistent session", || {
        (nats.stream_messages(records) == Some(5)).then_some(())
    });
    for client in clean.into_iter().chain(persistent) {
        client.disconnect();
    }
    // The clean sessions end with their connections, the persistent ones a second later.
    e2e::wait_until("no owner key left", || (nats.stream_messages(owners) == Some(0)).then_some(()));
    e2e::wait_until("no record left", || (nats.stream_messages(records) == Some(0)).then_some(()));
    // The client ids are free: another node takes them, with no session to hand over.
    for id in ["gone-0", "kept-0"] {
        let (_again, ack) = C5::connect_packet(&n2, &e2e::raw::connect5(id, false, expiry(300)));
        assert!(!ack.session_present, "{id}: a new session ({ack:?})");
    }
    e2e::wait_until("the two keys taken again", || (nats.stream_messages(owners) == Some(2)).then_some(()));
}

/// `kill -9` of the node a persistent subscriber is on, in the middle of a QoS 1 stream from
/// another node, loses none of the messages whose publisher got a PUBACK (issue "Scale out on
/// NATS", repeated 20 times): the client reconnects to another node, which revives the session
/// from its record in NATS (Session Present 1) and reads back from the streams what was
/// published for it. QoS 1 is at least once: some may come twice.
#[test]
fn killing_the_subscribers_node_loses_no_acknowledged_qos_1_message() {
    let nats = Nats::start();
    let url = nats.url();
    let (_d1, n1) = node(&nats, "emqx@k1");
    let d2 = DataDir::new();
    let env2 = [("BROKER_CLUSTER__NATS", url.as_str()), ("BROKER_NODE_NAME", "emqx@k2")];
    let mut n2 = Broker::start(&d2, &env2);
    for round in 0..20 {
        let id = format!("survivor-{round}");
        let filter = format!("k/{round}/#");
        let (mut sub, _) = C5::connect_with(&n2, &id, expiry(300));
        sub.subscribe(&filter, QoS::AtLeastOnce);
        let publishing = std::thread::spawn({
            let mut publisher = C5::connect(&n1, &format!("k-pub-{round}"));
            move || {
                let mut acknowledged = Vec::new();
                for i in 0..300 {
                    let payload = i.to_string();
                    // Returns once the PUBACK came.
                    publisher.publish(&format!("k/{round}/{}", i % 3), QoS::AtLeastOnce, &payload);
                    acknowledged.push(payload);
                    // A steady stream, so that the node dies in the middle of it.
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
                acknowledged
            }
        });
        let mut got = std::collections::HashSet::new();
        for _ in 0..(round * 7 % 100 + 20) {
            got.insert(payload(&sub.next_publish()));
        }
        n2.kill();
        let (mut sub, ack) = C5::connect_packet(&n1, &e2e::raw::connect5(&id, false, expiry(300)));
        assert!(ack.session_present, "round {round}: the session was revived ({ack:?})");
        let acknowledged = publishing.join().expect("publisher");
        until_every_payload(&mut sub, &mut got, &acknowledged, &format!("round {round}: acknowledged"));
        sub.disconnect();
        n2 = Broker::start(&d2, &env2);
    }
}

/// A will without a delay is sent when its connection is taken over from another node by a
/// connection with Clean Start 1 (MQTT-3.1.4-3: the existing client's will is published; the
/// session is not resumed, so nothing holds it back), once.
#[test]
fn a_will_without_delay_is_sent_once_when_another_node_discards_its_session() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@w1");
    let (_d2, n2) = node(&nats, "emqx@w2");
    let mut watcher = C5::connect(&n2, "w-watcher");
    watcher.subscribe("will/#", QoS::AtLeastOnce);
    let will = rumqttc::v5::mqttbytes::v5::LastWill::new("will/w", "gone", QoS::AtLeastOnce, false, None);
    let connect = rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 60,
        client_id: "willer".to_owned(),
        clean_start: true,
        properties: expiry(300),
    };
    let (old, _) = C5::connect_packet(&n1, &rumqttc::v5::mqttbytes::v5::Packet::Connect(connect, Some(will), None));
    let (_new, ack) = C5::connect_packet(&n2, &e2e::raw::connect5("willer", true, expiry(300)));
    assert!(!ack.session_present, "{ack:?}");
    old.expect_disconnect(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver);
    let p = watcher.next_publish();
    assert_eq!((topic(&p), payload(&p)), ("will/w".to_owned(), "gone".to_owned()));
    let mut publisher = C5::connect(&n1, "w-pub");
    publisher.publish("will/marker", QoS::AtLeastOnce, "");
    assert_eq!(topic(&watcher.next_publish()), "will/marker", "the will came once");
}

/// The plugins' state is the cluster's (`[cluster] shared_state`, a JetStream KV bucket): a
/// retained message whose PUBACK came from node 1 is delivered by node 2 to a subscription
/// made right after, every time (also on a topic too long to be a NATS KV key as it is); a
/// retained message cleared on node 2 is gone on node 1; a node started later gets them all.
#[test]
fn retained_messages_are_the_clusters_right_after_their_puback() {
    let nats = Nats::start();
    let disc = [("BROKER_RETAINER__STORAGE_TYPE", "disc")];
    let retainer = || DataDir::with_plugins("{emqx_retainer, true}.\n");
    let (_d1, n1) = node_with(retainer(), &nats, "emqx@n1", &disc);
    let (_d2, n2) = node_with(retainer(), &nats, "emqx@n2", &disc);
    let mut publisher = C5::connect(&n1, "r-pub");
    for i in 0..20 {
        let t = format!("r/{i}");
        match publisher.publish_retain(&t, QoS::AtLeastOnce, true, &t) {
            Some(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) => {}
            other => panic!("PUBACK expected, got {other:?}"),
        }
        let mut subscriber = C5::connect(&n2, &format!("r-sub-{i}"));
        subscriber.subscribe(&t, QoS::AtLeastOnce);
        let p = subscriber.next_publish();
        assert_eq!((topic(&p), payload(&p), p.retain), (t.clone(), t.clone(), true), "round {i}");
    }
    // A topic too long to be a NATS KV key as it is (5,000 bytes; NATS refuses a protocol
    // line over 4 KiB): its retained message (QoS 0: not forwarded, delivered on its own node)
    // is shared all the same. At QoS 1 such a message is refused (NATS cannot store it)
    // before anything is done with it: not retained either.
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    let long = format!("long/{}", "x".repeat(5000));
    let refused = format!("{long}/qos1");
    match publisher.publish_retain(&refused, QoS::AtLeastOnce, true, "refused") {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason, PubAckReason::UnspecifiedError),
        other => panic!("PUBACK expected, got {other:?}"),
    }
    assert_eq!(publisher.publish_retain(&long, QoS::AtMostOnce, true, "long"), None);
    // No PUBACK says when NATS has a QoS 0 message's retained copy: asked again until it does.
    e2e::wait_until("node 2 serves the long topic's retained message", || {
        let mut subscriber = C5::connect(&n2, "r-sub-long");
        subscriber.subscribe(&long, QoS::AtLeastOnce);
        let p = subscriber.next_publish_within(std::time::Duration::from_millis(500))?;
        assert_eq!((topic(&p), payload(&p), p.retain), (long.clone(), "long".to_owned(), true), "a long topic");
        Some(())
    });
    let mut on1 = C5::connect(&n1, "r-sub-refused");
    on1.subscribe(&refused, QoS::AtLeastOnce);
    publisher.publish_retain(&refused, QoS::AtMostOnce, false, "marker");
    let p = on1.next_publish();
    assert_eq!((payload(&p), p.retain), ("marker".to_owned(), false), "the refused message was not retained");
    // Cleared on node 2 (an empty retained payload): gone on node 1.
    let mut on2 = C5::connect(&n2, "r-clear");
    on2.publish_retain("r/0", QoS::AtLeastOnce, true, "");
    let mut on1 = C5::connect(&n1, "r-check");
    on1.subscribe("r/0", QoS::AtLeastOnce);
    on1.subscribe("r/1", QoS::AtLeastOnce);
    let p = on1.next_publish();
    assert_eq!(topic(&p), "r/1", "r/0 was cleared on node 2");
    // A node that starts now has every retained message.
    let (_d3, n3) = node_with(retainer(), &nats, "emqx@n3", &disc);
    let mut on3 = C5::connect(&n3, "r-late");
    on3.subscribe("r/#", QoS::AtLeastOnce);
    let expected: Vec<String> = (1..20).map(|i| format!("r/{i}")).collect();
    all_of(&mut on3, &expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(on3.next_publish_within(std::time::Duration::from_millis(300)).is_none(), "r/0 stays cleared");
    on3.subscribe("long/#", QoS::AtLeastOnce);
    assert_eq!(topic(&on3.next_publish()), long, "the long topic too");
}

/// A login added with `broker ctl users add` on one node lets its client in on every node;
/// deleted on another node, it is refused everywhere (`emqx_auth_mnesia`'s bucket is shared).
#[test]
fn logins_added_on_one_node_are_accepted_by_every_node() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Login, Packet};
    let nats = Nats::start();
    let env = [("BROKER_ALLOW_ANONYMOUS", "false"), ("BROKER_AUTH__FAILURE_DELAY", "0")];
    let auth = || DataDir::with_plugins("{emqx_auth_mnesia, true}.\n");
    let (d1, n1) = node_with(auth(), &nats, "emqx@n1", &env);
    let (d2, n2) = node_with(auth(), &nats, "emqx@n2", &env);
    let connack = |broker: &Broker, id: &str| {
        let packet = match e2e::raw::connect5(id, true, None) {
            Packet::Connect(connect, will, _) => {
                Packet::Connect(connect, will, Some(Login { username: "erin".into(), password: "s3cret-pass".into() }))
            }
            other => other,
        };
        Raw::<V5>::connect(broker.addr, &packet).1.code
    };
    assert_eq!(connack(&n2, "erin-0"), ConnectReturnCode::NotAuthorized);
    assert_eq!(d1.ctl(&["users", "add", "erin", "s3cret-pass"]).ok().trim(), "ok");
    e2e::wait_until("node 2 accepts the login added on node 1", || {
        (connack(&n2, "erin-1") == ConnectReturnCode::Success).then_some(())
    });
    assert_eq!(connack(&n1, "erin-2"), ConnectReturnCode::Success);
    assert_eq!(d2.ctl(&["users", "del", "erin"]).ok().trim(), "ok");
    e2e::wait_until("node 1 refuses the login deleted on node 2", || {
        (connack(&n1, "erin-3") == ConnectReturnCode::NotAuthorized).then_some(())
    });
}

/// A retained message stored on a node while NATS was away reaches the other nodes once it is
/// back (the changed keys are sent then, with their value).
#[test]
fn plugin_state_changed_while_nats_is_away_reaches_the_other_nodes_when_it_is_back() {
    let mut nats = Nats::start();
    let disc = [("BROKER_RETAINER__STORAGE_TYPE", "disc")];
    let retainer = || DataDir::with_plugins("{emqx_retainer, true}.\n");
    let (_d1, n1) = node_with(retainer(), &nats, "emqx@a1", &disc);
    let (_d2, n2) = node_with(retainer(), &nats, "emqx@a2", &disc);
    let mut publisher = C5::connect(&n1, "away-pub");
    publisher.publish_retain("away/before", QoS::AtLeastOnce, true, "before");

    nats.kill();
    n1.wait_for_log("cluster: lost NATS");
    match publisher.publish_retain("away/while", QoS::AtLeastOnce, true, "while") {
        Some(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) => {}
        other => panic!("PUBACK expected while NATS is away, got {other:?}"),
    }
    n1.wait_for_log("plugin state changed on this node only");

    nats.restart();
    n1.wait_for_log("1 plugin state changes made while NATS was away sent");
    let mut round = 0;
    e2e::wait_until("node 2 serves what node 1 retained while NATS was away", || {
        round += 1;
        let mut subscriber = C5::connect(&n2, &format!("away-sub-{round}"));
        subscriber.subscribe("away/while", QoS::AtLeastOnce);
        let p = subscriber.next_publish_within(std::time::Duration::from_millis(200))?;
        assert_eq!(payload(&p), "while");
        Some(())
    });
}

/// Plugin state changed on a node cut off from NATS and, meanwhile, on another node: the later
/// change wins on every node once the first is back, whichever reaches NATS first. Node 1 is
/// cut off (a proxy the test cuts); `c/first` is retained on node 1 and then on node 2 (node
/// 2's is later), `c/second` on node 2 and then on node 1 (node 1's is later). Once node 1 is
/// back both nodes serve node 2's `c/first` and node 1's `c/second`. (Before, node 1 sent the
/// value its store had when it looked, which node 2's older change could have overwritten
/// by then: `c/second` came out as node 2's, checked.)
#[test]
fn plugin_state_changed_on_both_sides_of_a_cut_keeps_the_later_change() {
    let nats = Nats::start();
    let proxy = e2e::proxy::Cuttable::start(([127, 0, 0, 1], nats.port).into());
    let disc = [("BROKER_RETAINER__STORAGE_TYPE", "disc")];
    let retainer = || DataDir::with_plugins("{emqx_retainer, true}.\n");
    let (_d1, n1) = node_at(retainer(), &format!("nats://{}", proxy.addr), "emqx@cut1", &disc);
    let (_d2, n2) = node_with(retainer(), &nats, "emqx@cut2", &disc);
    let mut on1 = C5::connect(&n1, "cut-pub1");
    let mut on2 = C5::connect(&n2, "cut-pub2");
    // Each change a few milliseconds after the one before, by the clock they are compared by.
    let mut last = std::time::SystemTime::now();
    let mut then = |publisher: &mut C5, topic_: &str, value: &str| {
        e2e::wait_until("the clock to move on", || {
            (last.elapsed().ok()? >= std::time::Duration::from_millis(5)).then_some(())
        });
        assert!(matches!(
            publisher.publish_retain(topic_, QoS::AtLeastOnce, true, value),
            Some(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))
        ));
        last = std::time::SystemTime::now();
    };
    proxy.cut();
    n1.wait_for_log("cluster: lost NATS");
    then(&mut on1, "c/first", "node 1, earlier");
    then(&mut on2, "c/first", "node 2, later");
    then(&mut on2, "c/second", "node 2, earlier");
    then(&mut on1, "c/second", "node 1, later");
    proxy.restore();
    n1.wait_for_log("1 plugin state changes made while NATS was away sent; 1 changed later on another node kept");
    for (broker, name) in [(&n1, "n1"), (&n2, "n2")] {
        for (topic_, expected) in [("c/first", "node 2, later"), ("c/second", "node 1, later")] {
            let mut round = 0;
            e2e::wait_until(&format!("{name} serving {expected:?} on {topic_}"), || {
                round += 1;
                let mut subscriber = C5::connect(broker, &format!("cut-sub-{name}-{round}"));
                subscriber.subscribe(topic_, QoS::AtLeastOnce);
                let p = subscriber.next_publish_within(std::time::Duration::from_millis(200))?;
                (payload(&p) == expected).then_some(())
            });
        }
    }
}

/// `emqx_mod_delayed` across nodes (its bucket is shared by default): a `$delayed/` message
/// held on node 1 is listed by every node, and when it falls due exactly one node publishes it
/// (each node claims it through NATS; one claim wins): a subscriber on each of three nodes gets
/// each message once. `ctl delayed clean` on one node drops what every node holds.
#[test]
fn a_delayed_message_is_published_once_by_one_node_of_the_cluster() {
    let nats = Nats::start();
    let delayed = || DataDir::with_plugins("{emqx_mod_delayed, true}.\n");
    let (d1, n1) = node_with(delayed(), &nats, "emqx@dl1", &[]);
    let (d2, n2) = node_with(delayed(), &nats, "emqx@dl2", &[]);
    let (d3, n3) = node_with(delayed(), &nats, "emqx@dl3", &[]);
    let mut subscribers: Vec<C5> = [&n1, &n2, &n3]
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut sub = C5::connect(node, &format!("dl-sub-{i}"));
            sub.subscribe("dl/#", QoS::AtLeastOnce);
            sub
        })
        .collect();
    let mut publisher = C5::connect(&n1, "dl-pub");
    // Fall due together, so that every node races for each.
    let expected: Vec<String> = (0..20).map(|i| format!("dl/{i}")).collect();
    for t in &expected {
        match publisher.publish_retain(&format!("$delayed/2/{t}"), QoS::AtLeastOnce, false, t) {
            Some(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) => {}
            other => panic!("PUBACK expected, got {other:?}"),
        }
    }
    publisher.publish_retain("$delayed/3600/dl/cleaned", QoS::AtLeastOnce, false, "x");
    for dir in [&d2, &d3] {
        e2e::wait_until("the other nodes hold node 1's delayed messages", || {
            (dir.ctl(&["delayed", "list"]).ok().lines().count() == 21).then_some(())
        });
    }
    for sub in &mut subscribers {
        all_of(sub, &expected.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for dir in [&d1, &d2, &d3] {
        e2e::wait_until("every node saw the 20 published", || {
            (dir.ctl(&["delayed", "list"]).ok().lines().count() == 1).then_some(())
        });
    }
    assert_eq!(d3.ctl(&["delayed", "clean"]).ok().trim(), "Cleaned 1 delayed messages");
    for dir in [&d1, &d2, &d3] {
        e2e::wait_until("every node published or dropped everything", || {
            dir.ctl(&["delayed", "list"]).ok().trim().is_empty().then_some(())
        });
    }
    // Nothing twice: a marker published now comes right after the 20.
    publisher.publish_retain("dl/marker", QoS::AtLeastOnce, false, "dl/marker");
    for sub in &mut subscribers {
        assert_eq!(until_marker(sub, "dl/marker"), Vec::<(String, String)>::new(), "each delayed message once");
    }
}

/// A node killed with `kill -9` right after the PUBACK of a `$delayed/` message leaves it to
/// the others: it was in NATS before the PUBACK, and another node publishes it when it falls
/// due.
#[test]
fn a_delayed_message_held_by_a_killed_node_is_published_by_another() {
    let nats = Nats::start();
    let delayed = || DataDir::with_plugins("{emqx_mod_delayed, true}.\n");
    let (_d1, n1) = node_with(delayed(), &nats, "emqx@dk1", &[]);
    let (_d2, n2) = node_with(delayed(), &nats, "emqx@dk2", &[]);
    let mut sub = C5::connect(&n2, "dk-sub");
    sub.subscribe("dk/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&n1, "dk-pub");
    match publisher.publish_retain("$delayed/1/dk/orphan", QoS::AtLeastOnce, false, "dk/orphan") {
        Some(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) => {}
        other => panic!("PUBACK expected, got {other:?}"),
    }
    n1.kill();
    all_of(&mut sub, &["dk/orphan"]);
    assert!(sub.next_publish_within(std::time::Duration::from_millis(500)).is_none(), "once");
}

/// The name of node `name`'s stream (its start: `Nats::stream_messages` takes that).
fn stream_of(name: &str) -> String {
    let plain: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("mqtt_messages_{plain}_")
}

/// Waits until node `broker` (named `name`) keeps a message that no other node wants on
/// itself: until it has read every node's interest summary, it sends every message to NATS.
/// Probes with QoS 1 messages on `topic`, which `local` (a clean session on that node) must
/// be subscribed to; returns how many messages the node's stream holds then.
fn until_kept_here(nats: &Nats, broker: &Broker, name: &str, local: &mut C5, topic_: &str) -> u64 {
    let stream = stream_of(name);
    let mut publisher = C5::connect(broker, &format!("{name}-probe"));
    let held = e2e::wait_until("a message kept on its node", || {
        let before = nats.stream_messages(&stream).expect("the node's stream");
        publisher.publish(topic_, QoS::AtLeastOnce, "probe");
        assert_eq!(topic(&local.next_publish()), topic_);
        (nats.stream_messages(&stream) == Some(before)).then_some(before)
    });
    publisher.disconnect();
    held
}

/// A message that no other node's subscriptions could want (by their first topic level,
/// `cluster/summary.rs`) stays on its node: delivered there, and neither sent to NATS nor
/// stored in the node's stream. One that a persistent session of the node gets is stored
/// before its PUBACK (another node revives that session from the streams if this one dies);
/// and once another node subscribes to its first level, it goes there again from that
/// node's SUBACK on (`broker ctl cluster interest` shows both nodes' summaries).
#[test]
fn a_message_no_other_node_wants_stays_on_its_node() {
    let nats = Nats::start();
    let (d1, n1) = node(&nats, "emqx@l1");
    let (_d2, n2) = node(&nats, "emqx@l2");
    let stream = stream_of("emqx@l1");
    let mut local = C5::connect(&n1, "l-local");
    local.subscribe("l/#", QoS::AtLeastOnce);
    let held = until_kept_here(&nats, &n1, "emqx@l1", &mut local, "l/probe");
    let mut publisher = C5::connect(&n1, "l-pub");
    for n in 0..20 {
        publisher.publish(&format!("l/{n}"), QoS::AtLeastOnce, &n.to_string());
        publisher.publish(&format!("l/{n}"), QoS::AtMostOnce, &n.to_string());
    }
    for n in 0..40 {
        assert_eq!(payload(&local.next_publish()), (n / 2).to_string());
    }
    assert_eq!(nats.stream_messages(&stream), Some(held), "a message kept on its node is not stored");
    let (mut persistent, _) = C5::connect_packet(&n1, &e2e::raw::connect5("l-held", true, expiry(300)));
    persistent.subscribe("l/held", QoS::AtLeastOnce);
    for n in 1..=5 {
        publisher.publish("l/held", QoS::AtLeastOnce, "");
        assert_eq!(nats.stream_messages(&stream), Some(held + n), "after the PUBACK of message {n}");
    }
    let mut remote = C5::connect(&n2, "l-remote");
    remote.subscribe("l/remote", QoS::AtLeastOnce);
    publisher.publish("l/remote", QoS::AtLeastOnce, "right after the SUBACK");
    assert_eq!(topic(&remote.next_publish()), "l/remote");
    assert_eq!(
        d1.ctl(&["cluster", "interest"]).ok().trim(),
        "emqx@l1 (this node, a message none of the others want stays here) : l\nemqx@l2 : l"
    );
}

/// A SUBACK for a filter of a first topic level no session of its node had before waits
/// until every other node knows (each acknowledges the node's wider interest summary): a
/// message published on any node right after it reaches the subscriber, for forty new first
/// levels in a row, then a wildcard one (`+/...`, every level but `$` ones).
#[test]
fn a_suback_for_a_new_first_level_means_every_node_sends_it_there() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@w1");
    let (_d2, n2) = node(&nats, "emqx@w2");
    let (_d3, n3) = node(&nats, "emqx@w3");
    for (broker, name) in [(&n1, "emqx@w1"), (&n3, "emqx@w3")] {
        let mut local = C5::connect(broker, &format!("{name}-local"));
        local.subscribe("probe/#", QoS::AtLeastOnce);
        until_kept_here(&nats, broker, name, &mut local, "probe/w");
        local.disconnect();
    }
    let mut publishers = [C5::connect(&n1, "w-pub1"), C5::connect(&n3, "w-pub3")];
    let mut subscriber = C5::connect(&n2, "w-sub");
    let rounds = (0..40)
        .map(|round| (format!("w{round}/t"), format!("w{round}/t")))
        .chain([("+/late".to_owned(), "zz/late".to_owned())]);
    for (filter, topic_) in rounds {
        subscriber.subscribe(&filter, QoS::AtLeastOnce);
        for publisher in &mut publishers {
            publisher.publish(&topic_, QoS::AtLeastOnce, "right after the SUBACK");
        }
        for from in ["w1", "w3"] {
            assert_eq!(topic(&subscriber.next_publish()), topic_, "{filter}: the message from {from} was missed");
        }
    }
}

/// A persistent session's QoS 1 messages published on its own node (which no other node
/// wants) are stored before their PUBACKs all the same: when that node is killed, the client
/// reconnecting to another node gets every one it was acknowledged (some perhaps twice).
#[test]
fn a_persistent_sessions_messages_from_its_own_node_survive_that_node() {
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@v1");
    let (_d2, n2) = node(&nats, "emqx@v2");
    let mut local = C5::connect(&n1, "v-local");
    local.subscribe("v/probe", QoS::AtLeastOnce);
    until_kept_here(&nats, &n1, "emqx@v1", &mut local, "v/probe");
    let (mut subscriber, _) = C5::connect_packet(&n1, &e2e::raw::connect5("v-sub", true, expiry(300)));
    subscriber.subscribe("v/t/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&n1, "v-pub");
    let acknowledged: Vec<String> = (0..50)
        .map(|n| {
            publisher.publish(&format!("v/t/{}", n % 3), QoS::AtLeastOnce, &n.to_string());
            n.to_string()
        })
        .collect();
    let mut got: std::collections::HashSet<String> = (0..10).map(|_| payload(&subscriber.next_publish())).collect();
    n1.kill();
    let (mut subscriber, ack) = C5::connect_packet(&n2, &e2e::raw::connect5("v-sub", false, expiry(300)));
    assert!(ack.session_present, "the session was revived ({ack:?})");
    until_every_payload(&mut subscriber, &mut got, &acknowledged, "acknowledged");
}

/// A session revived after its node died gets every message it was owed, also those pending
/// for it since long before (more than `[cluster] revive_margin`, here 2 s) its node was last
/// heard: its node writes down in the session's shared record since when messages have been
/// pending for it (`Node::share_backlogs`), and the streams are read from before that. The
/// client took ten messages and acknowledged none; four seconds later its node is killed, and
/// the client, reconnecting to the other node, gets all ten again. (Before, the streams were
/// read from 2 s before the node was last heard, and the ten were lost: checked.)
#[test]
fn a_revived_session_gets_what_was_pending_for_it_longer_than_the_margin() {
    let nats = Nats::start();
    let margin = [("BROKER_CLUSTER__REVIVE_MARGIN", "2s")];
    let (_d1, n1) = node_with(DataDir::new(), &nats, "emqx@r1", &margin);
    let (_d2, n2) = node_with(DataDir::new(), &nats, "emqx@r2", &margin);
    let (mut behind, _) = C5::connect_packet(&n2, &e2e::raw::connect5("r-behind", true, expiry(300)));
    behind.subscribe("r/#", QoS::AtLeastOnce);
    let records = "KV_mqtt_session_records";
    let written = nats.stream_last_seq(records).expect("the records' bucket");
    let mut publisher = C5::connect(&n1, "r-pub");
    let published = std::time::Instant::now();
    for n in 0..10 {
        publisher.publish(&format!("r/{n}"), QoS::AtLeastOnce, &n.to_string());
    }
    // The client reads nothing: the ten stay in flight to it.
    e2e::wait_until("the record saying since when messages are pending", || {
        (nats.stream_last_seq(records) > Some(written)).then_some(())
    });
    // Older than the margin and a heartbeat by the time the node is killed.
    e2e::wait_until("four seconds since the ten were published", || {
        (published.elapsed() >= std::time::Duration::from_secs(4)).then_some(())
    });
    n2.kill();
    drop(behind);
    let (mut revived, ack) = C5::connect_packet(&n1, &e2e::raw::connect5("r-behind", false, expiry(300)));
    assert!(ack.session_present, "the session was revived ({ack:?})");
    let ten: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    until_every_payload(&mut revived, &mut Default::default(), &ten, "the ten pending");
}

/// A node that runs (its heartbeat is heard) but has put no interest summary, as a node of a
/// version before summaries during a rolling upgrade, may want anything: while it beats, the
/// other node sends every message to NATS (its QoS 1 messages are stored), and once it has
/// been silent for three heartbeats, a message no node wants stays on its node again. The
/// silent node's heartbeats come from the test, in NATS's text protocol.
#[test]
fn a_running_node_without_a_summary_is_taken_to_want_everything() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let nats = Nats::start();
    let (_d1, n1) = node(&nats, "emqx@o1");
    let stream = stream_of("emqx@o1");
    let mut local = C5::connect(&n1, "o-local");
    local.subscribe("o/#", QoS::AtLeastOnce);
    until_kept_here(&nats, &n1, "emqx@o1", &mut local, "o/probe");
    let beating = std::sync::Arc::new(AtomicBool::new(true));
    let beats = std::thread::spawn({
        let (beating, port) = (beating.clone(), nats.port);
        move || {
            let mut nats = std::net::TcpStream::connect(("127.0.0.1", port)).expect("nats");
            nats.write_all(b"CONNECT {\"verbose\":false}\r\n").unwrap();
            let beat =
                r#"{"node":"emqx@old","version":"0","sysdescr":"an older node","uptime_secs":1,"connections":0}"#;
            while beating.load(Ordering::Relaxed) {
                let line = format!("PUB mqtt.node.emqx%40old {}\r\n{beat}\r\n", beat.len());
                nats.write_all(line.as_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    });
    let mut publisher = C5::connect(&n1, "o-pub");
    let stored = |nats: &Nats| nats.stream_messages(&stream).expect("the node's stream");
    e2e::wait_until("a message stored while the older node runs", || {
        let before = stored(&nats);
        publisher.publish("o/x", QoS::AtLeastOnce, "");
        assert_eq!(topic(&local.next_publish()), "o/x");
        (stored(&nats) > before).then_some(())
    });
    beating.store(false, Ordering::Relaxed);
    beats.join().unwrap();
    until_kept_here(&nats, &n1, "emqx@o1", &mut local, "o/probe");
}
