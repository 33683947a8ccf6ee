//! Limits on what a client can make the broker hold or do: `mqtt.max_session_expiry` (EMQX 5's
//! cap on the MQTT 5 Session Expiry Interval), `mqtt.max_subscriptions` (EMQX's, per session),
//! `mqtt.max_topic_levels` (EMQX's, how deep a topic or filter may be) and `mqtt.rate_limit`
//! (EMQX 4.3's per-connection input limits).

use e2e::raw::{connect4, connect5, expiry, v5, Raw, C5, V4, V5};
use e2e::{stat, wait_for_stat, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS;

/// MQTT 5 §3.2.2.3.2: a Session Expiry Interval over `mqtt.max_session_expiry` (here 2 s) is
/// lowered to it, and the CONNACK carries the value used; one within it is kept and the CONNACK
/// says nothing. The lowered session really ends after 2 s, though the client asked for
/// 0xFFFFFFFF (never). A DISCONNECT raising it is capped too.
#[test]
fn session_expiry_over_max_session_expiry_is_lowered_and_announced() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_SESSION_EXPIRY", "2s")]);
    let base = stat(&dir, "sessions.count");
    let (mut within, ack) = Raw::<V5>::connect(broker.addr, &connect5("mse-within", true, expiry(1)));
    assert_eq!(ack.properties.and_then(|p| p.session_expiry_interval), None, "1 s is kept: nothing said");

    let (mut over, ack) = Raw::<V5>::connect(broker.addr, &connect5("mse-over", true, expiry(u32::MAX)));
    assert_eq!(ack.properties.and_then(|p| p.session_expiry_interval), Some(2), "the CONNACK tells the value used");
    over.disconnect(v5::DisconnectReasonCode::NormalDisconnection);
    // The session with "never" expires like any 2 s one (within the test's deadline).
    wait_for_stat(&dir, "sessions.count", base + 1);

    // A DISCONNECT that raises it is capped as well.
    let (mut raised, _) = Raw::<V5>::connect(broker.addr, &connect5("mse-raised", true, expiry(1)));
    raised.send(&v5::Packet::Disconnect(v5::Disconnect {
        reason_code: v5::DisconnectReasonCode::NormalDisconnection,
        properties: Some(v5::DisconnectProperties {
            session_expiry_interval: Some(u32::MAX),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }),
    }));
    assert!(raised.until_closed().is_empty());
    within.disconnect(v5::DisconnectReasonCode::NormalDisconnection);
    wait_for_stat(&dir, "sessions.count", base);
}

/// `mqtt.max_subscriptions` (here 2): a SUBSCRIBE for a third filter gets 0x97 Quota exceeded
/// (MQTT-3.9.3-1: one reason code per filter; MQTT 3.1.1: 0x80 Failure), while the filters
/// the session has already may be subscribed to again, and one freed by UNSUBSCRIBE may be
/// taken by another. The refused filter routes nothing to the client.
#[test]
fn subscriptions_over_max_subscriptions_get_quota_exceeded() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_SUBSCRIPTIONS", "2")]);
    let mut c = C5::connect(&broker, "ms5");
    let filters = |names: &[&str]| names.iter().map(|f| v5::Filter::new(*f, QoS::AtLeastOnce)).collect();
    let ok = v5::SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let quota = v5::SubscribeReasonCode::QuotaExceeded;
    assert_eq!(c.subscribe_with(filters(&["ms/a", "ms/b", "ms/c"]), None), vec![ok, ok, quota]);
    assert_eq!(c.subscribe_with(filters(&["ms/a", "ms/d"]), None), vec![ok, quota], "ms/a again is no new one");
    c.unsubscribe(&["ms/b"]);
    assert_eq!(c.subscribe_with(filters(&["ms/d"]), None), vec![ok], "ms/b's place is free");
    let mut publisher = C5::connect(&broker, "ms-pub");
    publisher.publish("ms/c", QoS::AtLeastOnce, "refused filter");
    publisher.publish("ms/d", QoS::AtLeastOnce, "granted filter");
    assert_eq!(e2e::raw::payload(&c.next_publish()), "granted filter");

    let ok4 = rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce);
    assert_eq!(
        subscribe4(&broker, "ms4", &["ms/a", "ms/b", "ms/c"]),
        [ok4, ok4, rumqttc::SubscribeReasonCode::Failure]
    );
}

/// The SUBACK codes an MQTT 3.1.1 client `id` gets for one SUBSCRIBE of `filters` at QoS 0.
fn subscribe4(broker: &Broker, id: &str, filters: &[&str]) -> Vec<rumqttc::SubscribeReasonCode> {
    let (mut c4, _) = Raw::<V4>::connect(broker.addr, &connect4(id, true));
    let subscribe = rumqttc::Subscribe::new_many(
        filters.iter().map(|f| rumqttc::SubscribeFilter::new((*f).to_owned(), rumqttc::QoS::AtMostOnce)),
    );
    c4.send(&rumqttc::Packet::Subscribe(rumqttc::Subscribe { pkid: 1, ..subscribe }));
    match c4.recv() {
        rumqttc::Packet::SubAck(ack) => ack.return_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// `mqtt.max_topic_levels` (EMQX's name), here 3: a filter of 4 levels gets SUBACK 0x8F Topic
/// Filter invalid (MQTT 3.1.1: 0x80) while one of 3 is granted, a share group's name not
/// counted; a PUBLISH to 4 levels is refused as Topic Name invalid (DISCONNECT 0x90, as EMQX
/// does), and a will on 4 levels gets CONNACK 0x90 (MQTT 3.1.1: the connection closed). More
/// than the broker's own limit (201) is refused at start, naming the setting.
#[test]
fn topics_and_filters_deeper_than_max_topic_levels_are_refused() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_TOPIC_LEVELS", "3")]);
    let mut c = C5::connect(&broker, "mtl5");
    let filters = |names: &[&str]| names.iter().map(|f| v5::Filter::new(*f, QoS::AtLeastOnce)).collect();
    let ok = v5::SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let invalid = v5::SubscribeReasonCode::TopicFilterInvalid;
    assert_eq!(
        c.subscribe_with(filters(&["a/b/c", "a/b/c/d", "a/+/#", "a/+/+/#", "$share/g/a/b/c"]), None),
        vec![ok, invalid, ok, invalid, ok]
    );
    let mut publisher = C5::connect(&broker, "mtl-pub");
    publisher.publish("a/b/c", QoS::AtLeastOnce, "three levels");
    assert_eq!(e2e::raw::payload(&c.next_publish()), "three levels");
    publisher.raw.send(&v5::Packet::Publish(v5::Publish::new("a/b/c/d", QoS::AtMostOnce, "four", None)));
    publisher.raw.expect_disconnect(v5::DisconnectReasonCode::TopicNameInvalid, "a PUBLISH to four levels");

    let ok4 = rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce);
    assert_eq!(subscribe4(&broker, "mtl4", &["x/y/z", "w/x/y/z"]), [ok4, rumqttc::SubscribeReasonCode::Failure]);

    let will = e2e::raw::will5("w/x/y/z", "gone", QoS::AtMostOnce, false, None);
    let connect =
        v5::Connect { keep_alive: 60, client_id: "mtl-will5".to_owned(), clean_start: true, properties: None };
    let (_, ack) = Raw::<V5>::connect(broker.addr, &v5::Packet::Connect(connect, Some(will), None));
    assert_eq!(ack.code, v5::ConnectReturnCode::TopicNameInvalid, "a will on four levels");
    let mut connect = rumqttc::Connect::new("mtl-will4");
    connect.last_will = Some(rumqttc::LastWill::new("w/x/y/z", "gone", rumqttc::QoS::AtMostOnce, false));
    let mut will4 = Raw::<V4>::open(broker.addr);
    will4.send(&rumqttc::Packet::Connect(connect));
    assert_eq!(will4.until_closed(), vec![], "3.1.1: a will on four levels closes the connection");
    broker.stop();

    let out = std::process::Command::new(e2e::broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .env("BROKER_MQTT__MAX_TOPIC_LEVELS", "202")
        .output()
        .unwrap();
    assert!(!out.status.success(), "max_topic_levels = 202 was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid configuration: mqtt.max_topic_levels = 202 (at most 201"), "{stderr}");
}

/// A 3.1.1 watcher of `filter` (QoS 0).
fn watcher4(broker: &Broker, id: &str, filter: &str) -> Raw<V4> {
    let (mut raw, _) = Raw::<V4>::connect(broker.addr, &connect4(id, true));
    let filters = vec![rumqttc::SubscribeFilter::new(filter.to_owned(), rumqttc::QoS::AtMostOnce)];
    raw.send(&rumqttc::Packet::Subscribe(rumqttc::Subscribe { pkid: 1, filters }));
    assert!(matches!(raw.recv(), rumqttc::Packet::SubAck(_)), "{id}: SUBACK");
    raw
}

/// Sends a QoS 1 PUBLISH with packet id `pkid`.
fn publish1(raw: &mut Raw<V4>, topic: &str, pkid: u16, payload: Vec<u8>) {
    let mut publish = rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, payload);
    publish.pkid = pkid;
    raw.send(&rumqttc::Packet::Publish(publish));
}

fn puback(raw: &mut Raw<V4>, pkid: u16) {
    match raw.recv() {
        rumqttc::Packet::PubAck(ack) => assert_eq!(ack.pkid, pkid),
        other => panic!("expected PUBACK {pkid}, got {other:?}"),
    }
}

/// Publishes a QoS 1 marker from a new client and waits for its PUBACK.
fn marker(broker: &Broker, topic: &str) {
    let (mut raw, _) = Raw::<V4>::connect(broker.addr, &connect4("rl-marker", true));
    publish1(&mut raw, topic, 1, b"marker".to_vec());
    puback(&mut raw, 1);
}

/// The topics and payloads `watcher` gets up to and with the one on `topic`.
fn until(watcher: &mut Raw<V4>, topic: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        match watcher.recv() {
            rumqttc::Packet::Publish(p) => {
                got.push((p.topic.clone(), e2e::text(&p.payload)));
                if p.topic == topic {
                    return got;
                }
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// EMQX 4.3's `rate_limit.conn_messages_in` (`"3,600s"`: a burst of 3, then one every 200 s):
/// a client past it is neither refused nor disconnected; its next PUBLISH waits unhandled.
/// Its first three go through (their PUBACKs come), the seven after them do not: a marker
/// published later by another client reaches the watcher right after the three.
#[test]
fn a_client_past_conn_messages_in_waits_and_is_not_dropped() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__RATE_LIMIT__CONN_MESSAGES_IN", "3,600s")]);
    let mut watcher = watcher4(&broker, "rl-watcher", "rl/#");
    let (mut fast, _) = Raw::<V4>::connect(broker.addr, &connect4("rl-fast", true));
    for i in 1..=3 {
        publish1(&mut fast, "rl/fast", i, format!("{i}").into_bytes());
        puback(&mut fast, i);
    }
    for i in 4..=10 {
        publish1(&mut fast, "rl/fast", i, format!("{i}").into_bytes());
    }
    marker(&broker, "rl/marker");
    let fast_one = |i: u32| ("rl/fast".to_owned(), i.to_string());
    let want = vec![fast_one(1), fast_one(2), fast_one(3), ("rl/marker".to_owned(), "marker".to_owned())];
    assert_eq!(until(&mut watcher, "rl/marker"), want);
    assert!(dir.ctl(&["clients", "show", "rl-fast"]).ok().contains("connected=true"), "still connected");
}

/// `rate_limit.conn_bytes_in` (`"1KB,600s"`): what was read is handled, and then nothing more is
/// read until the bytes are paid back. Two 600-byte PUBLISHes are read (the second overdraws
/// the 1,024 bytes) and acknowledged; the third is not read: a later marker comes first.
#[test]
fn a_client_past_conn_bytes_in_is_not_read_until_its_bytes_are_paid_back() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__RATE_LIMIT__CONN_BYTES_IN", "1KB,600s")]);
    let mut watcher = watcher4(&broker, "rl-watcher", "rl/#");
    let (mut big, _) = Raw::<V4>::connect(broker.addr, &connect4("rl-big", true));
    for i in 1..=2 {
        publish1(&mut big, "rl/big", i, vec![b'x'; 600]);
        puback(&mut big, i);
    }
    publish1(&mut big, "rl/big", 3, b"third".to_vec());
    marker(&broker, "rl/marker");
    let got: Vec<String> =
        until(&mut watcher, "rl/marker").into_iter().map(|(t, p)| format!("{t} {}", p.len())).collect();
    assert_eq!(got, ["rl/big 600", "rl/big 600", "rl/marker 6"]);
}

/// Under `rate_limit.conn_messages_in` (`"5,1s"`) a client publishing as fast as it can still
/// gets every message through, in order, at the limit's pace: 20 QoS 1 messages, each
/// acknowledged, each delivered once.
#[test]
fn messages_past_the_burst_go_through_at_the_limits_pace() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__RATE_LIMIT__CONN_MESSAGES_IN", "5,1s")]);
    let mut watcher = watcher4(&broker, "rl-watcher", "rl/#");
    let (mut fast, _) = Raw::<V4>::connect(broker.addr, &connect4("rl-fast", true));
    for i in 1..=20 {
        publish1(&mut fast, "rl/fast", i, format!("{i}").into_bytes());
    }
    for i in 1..=20 {
        puback(&mut fast, i);
    }
    marker(&broker, "rl/end");
    let got: Vec<String> = until(&mut watcher, "rl/end").into_iter().map(|(_, p)| p).collect();
    let want: Vec<String> = (1..=20).map(|i| i.to_string()).chain(["marker".to_owned()]).collect();
    assert_eq!(got, want);
}

/// A client held back by `rate_limit.conn_messages_in` is not timed out for its silence: its
/// PINGREQ may be waiting behind the PUBLISH the limit holds. With keep-alive 1 s, a client
/// that connects after it and sends nothing is closed (1.5 × its keep-alive); the held-back
/// one, silent for longer, is still connected then.
#[test]
fn a_client_held_back_by_a_rate_limit_is_not_timed_out() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__RATE_LIMIT__CONN_MESSAGES_IN", "1,600s")]);
    let mut connect = rumqttc::Connect::new("rl-held");
    connect.keep_alive = 1;
    let (mut held, _) = Raw::<V4>::connect(broker.addr, &rumqttc::Packet::Connect(connect));
    publish1(&mut held, "rl/held", 1, b"1".to_vec());
    puback(&mut held, 1);
    publish1(&mut held, "rl/held", 2, b"2".to_vec()); // held back for 600 s

    let mut connect = rumqttc::Connect::new("rl-silent");
    connect.keep_alive = 1;
    let (mut silent, _) = Raw::<V4>::connect(broker.addr, &rumqttc::Packet::Connect(connect));
    assert!(silent.until_closed().is_empty(), "the silent client is closed after 1.5 s");
    assert!(dir.ctl(&["clients", "show", "rl-held"]).ok().contains("connected=true"), "the held one is not");
}
