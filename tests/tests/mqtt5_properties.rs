//! MQTT 5 message properties end to end: Topic Aliases both ways (set and used by the
//! client, refused when 0, above the broker's maximum or unknown, forgotten with the
//! connection; sent to a client within its own maximum, never to one that allows none),
//! Message Expiry (counted down while a message waits, expired messages never sent), the
//! properties forwarded unchanged (Payload Format Indicator, Content Type, Response Topic,
//! Correlation Data, User Properties in order), reason strings on failed acknowledgements
//! (none with Request Problem Information 0), and Maximum Packet Size both ways (deliveries
//! over the client's are dropped, `message.dropped` with `too_large`; packets over the
//! broker's `mqtt.max_packet_size` get DISCONNECT 0x95).
//!
//! Raw connections (`e2e::raw::C5`, rumqttc's codec) so that every property is seen as the
//! broker sent it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::raw::{connect5, payload, topic, v5, C5};
use e2e::{recorded_events, start_broker, stat, wait_until, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS;
use v5::Packet as P5;

// ---------------------------------------------------------------------------------------
// Helpers: properties and packets
// ---------------------------------------------------------------------------------------

fn alias(p: &v5::Publish) -> Option<u16> {
    p.properties.as_ref().and_then(|p| p.topic_alias)
}

fn with_alias(alias: u16) -> v5::PublishProperties {
    v5::PublishProperties { topic_alias: Some(alias), ..Default::default() }
}

fn with_expiry(seconds: u32) -> v5::PublishProperties {
    v5::PublishProperties { message_expiry_interval: Some(seconds), ..Default::default() }
}

/// CONNECT properties with a Session Expiry Interval of a minute (the session outlives the
/// connection).
fn lasting() -> v5::ConnectProperties {
    v5::ConnectProperties { session_expiry_interval: Some(60), ..v5::ConnectProperties::new() }
}

/// A QoS 1 PUBLISH to `topic` whose whole packet (as the broker also sends it to a
/// subscriber without properties) is exactly `size` bytes.
fn sized_publish(topic: &str, size: usize) -> v5::Publish {
    let mut n = size;
    loop {
        let mut publish = v5::Publish::new(topic, QoS::AtLeastOnce, vec![b'x'; n], None);
        publish.pkid = 1;
        match publish.size() {
            s if s == size => return publish,
            s if s > size => n -= 1,
            _ => panic!("no PUBLISH of exactly {size} bytes"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Topic aliases from the client
// ---------------------------------------------------------------------------------------

const MAX_ALIAS: (&str, &str) = ("BROKER_MQTT__MAX_TOPIC_ALIAS", "4");

/// MQTT-3.3.2-12 (5): the broker announces its Topic Alias Maximum and accepts every alias
/// from 1 to it: a PUBLISH with a topic and an alias sets the mapping, one with an empty
/// topic and the alias uses it, a new topic for the alias replaces it. Subscribers get the
/// full topic name (MQTT-3.3.2-3).
#[test]
fn client_topic_aliases_are_set_then_used() {
    let (_dir, broker) = start_broker("", &[MAX_ALIAS]);
    let mut sub = C5::connect(&broker, "ta-sub");
    sub.subscribe("ta/#", QoS::AtLeastOnce);
    let (mut publisher, connack) = C5::connect_with(&broker, "ta-pub", None);
    assert_eq!(connack.properties.and_then(|p| p.topic_alias_max), Some(4), "Topic Alias Maximum");

    let steps = [("ta/one", 1), ("", 1), ("ta/four", 4), ("", 4), ("ta/two", 1), ("", 1), ("", 4)];
    for (n, (t, a)) in steps.iter().enumerate() {
        match publisher.publish_with(t, QoS::AtLeastOnce, &n.to_string(), with_alias(*a)) {
            Some(P5::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::Success, "step {n}"),
            other => panic!("step {n}: {other:?}"),
        }
    }
    let got: Vec<(String, String, Option<u16>)> =
        (0..steps.len()).map(|_| sub.next_publish()).map(|p| (topic(&p), payload(&p), alias(&p))).collect();
    let expected: Vec<(String, String, Option<u16>)> =
        ["ta/one", "ta/one", "ta/four", "ta/four", "ta/two", "ta/two", "ta/four"]
            .iter()
            .enumerate()
            .map(|(n, t)| (t.to_string(), n.to_string(), None))
            .collect();
    assert_eq!(got, expected);
}

/// MQTT-3.3.2-8, MQTT-3.3.2-9, MQTT-4.13.1-1 (5): a Topic Alias of 0, or above the Topic
/// Alias Maximum the broker announced, ends the connection with DISCONNECT 0x94 (Topic Alias
/// invalid); the message goes nowhere.
#[test]
fn topic_alias_zero_or_above_the_maximum_is_refused() {
    let (_dir, broker) = start_broker("", &[MAX_ALIAS]);
    let mut sub = C5::connect(&broker, "tab-sub");
    sub.subscribe("tab/#", QoS::AtLeastOnce);
    for (i, (t, a)) in [("tab/x", 0), ("tab/x", 5), ("", 0), ("tab/x", u16::MAX)].into_iter().enumerate() {
        let mut c = C5::connect(&broker, &format!("tab-{i}"));
        let mut publish = v5::Publish::new(t, QoS::AtLeastOnce, b"bad".to_vec(), Some(with_alias(a)));
        publish.pkid = 1;
        c.raw.send(&P5::Publish(publish));
        c.expect_disconnect(v5::DisconnectReasonCode::TopicAliasInvalid);
    }
    let mut publisher = C5::connect(&broker, "tab-pub");
    publisher.publish("tab/marker", QoS::AtLeastOnce, "marker");
    assert_eq!(topic(&sub.next_publish()), "tab/marker", "no message with a bad alias was routed");
}

/// MQTT-4.13.1-1 (5), §3.3.2.3.4: a PUBLISH with an empty topic and an alias the client never
/// set, or with an empty topic and no alias, is a protocol error: DISCONNECT 0x82.
#[test]
fn an_unknown_topic_alias_is_a_protocol_error() {
    let (_dir, broker) = start_broker("", &[MAX_ALIAS]);
    for (i, props) in [Some(with_alias(2)), None].into_iter().enumerate() {
        let mut c = C5::connect(&broker, &format!("tau-{i}"));
        if i == 0 {
            c.publish_with("tau/x", QoS::AtLeastOnce, "sets alias 1", with_alias(1));
            // not 2
        }
        let mut publish = v5::Publish::new("", QoS::AtLeastOnce, b"?".to_vec(), props);
        publish.pkid = 100;
        c.raw.send(&P5::Publish(publish));
        c.expect_disconnect(v5::DisconnectReasonCode::ProtocolError);
    }
}

/// MQTT-3.3.2-7 (5): Topic Alias mappings belong to one network connection: after a
/// reconnect, even one that resumes the session, an alias set before is unknown (DISCONNECT
/// 0x82).
#[test]
fn topic_aliases_do_not_survive_a_reconnect() {
    let (_dir, broker) = start_broker("", &[MAX_ALIAS]);
    let mut sub = C5::connect(&broker, "tar-sub");
    sub.subscribe("tar/#", QoS::AtLeastOnce);
    let (mut c, _) = C5::connect_packet(&broker, &connect5("tar-pub", false, Some(lasting())));
    c.publish_with("tar/x", QoS::AtLeastOnce, "set", with_alias(1));
    c.publish_with("", QoS::AtLeastOnce, "used", with_alias(1));
    c.disconnect();
    let (mut c, ack) = C5::connect_packet(&broker, &connect5("tar-pub", false, Some(lasting())));
    assert!(ack.session_present, "the session was resumed");
    let mut publish = v5::Publish::new("", QoS::AtLeastOnce, b"stale".to_vec(), Some(with_alias(1)));
    publish.pkid = 1;
    c.raw.send(&P5::Publish(publish));
    c.expect_disconnect(v5::DisconnectReasonCode::ProtocolError);

    let mut marker = C5::connect(&broker, "tar-marker");
    marker.publish("tar/marker", QoS::AtLeastOnce, "marker");
    let got: Vec<(String, String)> = sub.until("tar/marker").iter().map(|p| (topic(p), payload(p))).collect();
    assert_eq!(got, vec![("tar/x".to_owned(), "set".to_owned()), ("tar/x".to_owned(), "used".to_owned())]);
}

// ---------------------------------------------------------------------------------------
// Topic aliases to the client
// ---------------------------------------------------------------------------------------

/// MQTT-3.3.2-11, MQTT-3.1.2-26, MQTT-3.3.2-3 (5): to a client that announced Topic Alias
/// Maximum 2 the broker sends a topic with an alias the first time and the alias with an
/// empty topic after that, never an alias above 2; resolved as the spec says, every
/// delivery names the topic published.
#[test]
fn topic_aliases_to_the_client_stay_within_its_maximum() {
    let (_dir, broker) = start_broker("", &[]);
    let props = v5::ConnectProperties { topic_alias_max: Some(2), ..v5::ConnectProperties::new() };
    let (mut sub, _) = C5::connect_with(&broker, "tao-sub", Some(props));
    sub.subscribe("to/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "tao-pub");
    let sent = ["to/a", "to/a", "to/b", "to/c", "to/b", "to/c", "to/a", "to/c", "to/b"];
    for (n, t) in sent.iter().enumerate() {
        publisher.publish(t, QoS::AtLeastOnce, &n.to_string());
    }
    let mut mapping: std::collections::HashMap<u16, String> = Default::default();
    let mut seen: Vec<(String, bool, Option<u16>)> = Vec::new(); // (resolved topic, topic sent, alias)
    for n in 0..sent.len() {
        let p = sub.next_publish();
        assert_eq!(payload(&p), n.to_string(), "in order");
        let resolved = match alias(&p) {
            Some(a) => {
                assert!((1..=2).contains(&a), "alias {a} is above the client's maximum 2");
                if p.topic.is_empty() {
                    mapping.get(&a).cloned().unwrap_or_else(|| panic!("alias {a} was never set"))
                } else {
                    mapping.insert(a, topic(&p));
                    topic(&p)
                }
            }
            None => {
                assert!(!p.topic.is_empty(), "an empty topic without an alias");
                topic(&p)
            }
        };
        seen.push((resolved, !p.topic.is_empty(), alias(&p)));
    }
    let resolved: Vec<&str> = seen.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(resolved, sent, "every delivery resolves to the topic published");
    for t in ["to/a", "to/b"] {
        let of: Vec<&(String, bool, Option<u16>)> = seen.iter().filter(|(r, _, _)| r == t).collect();
        let first_alias = of[0].2.unwrap_or_else(|| panic!("{t} got an alias: {seen:?}"));
        assert!(of[0].1, "{t}: the first delivery names the topic: {seen:?}");
        for later in &of[1..] {
            assert_eq!((later.1, later.2), (false, Some(first_alias)), "{t}: later, only the alias: {seen:?}");
        }
    }
}

/// MQTT-3.1.2-27 (5): a client whose Topic Alias Maximum is absent or 0 is sent no alias.
#[test]
fn no_topic_aliases_to_a_client_that_allows_none() {
    let (_dir, broker) = start_broker("", &[]);
    let mut subs: Vec<C5> = [None, Some(0)]
        .into_iter()
        .enumerate()
        .map(|(i, max)| {
            let props = v5::ConnectProperties { topic_alias_max: max, ..v5::ConnectProperties::new() };
            let mut sub = C5::connect_with(&broker, &format!("tan-{i}"), Some(props)).0;
            sub.subscribe("tan/#", QoS::AtLeastOnce);
            sub
        })
        .collect();
    let mut publisher = C5::connect(&broker, "tan-pub");
    for n in 0..4 {
        publisher.publish("tan/x", QoS::AtLeastOnce, &n.to_string());
    }
    for sub in &mut subs {
        for _ in 0..4 {
            let p = sub.next_publish();
            assert_eq!((topic(&p), alias(&p)), ("tan/x".to_owned(), None));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Message Expiry
// ---------------------------------------------------------------------------------------

/// MQTT-3.3.2-6 (5): a message delivered to a subscriber that was offline carries the
/// Message Expiry Interval it was published with minus the time it waited (bounded here by
/// the clock around the publish and the delivery; rounding either way accepted); one
/// delivered at once carries at most the original; a message without one gets none.
#[test]
fn message_expiry_counts_down_while_a_message_waits() {
    let (_dir, broker) = start_broker("", &[]);
    let (mut sub, _) = C5::connect_packet(&broker, &connect5("exp-sub", true, Some(lasting())));
    sub.subscribe("exp/#", QoS::AtLeastOnce);
    sub.disconnect();
    let mut live = C5::connect(&broker, "exp-live");
    live.subscribe("exp/#", QoS::AtLeastOnce);

    let mut publisher = C5::connect(&broker, "exp-pub");
    let sent = Instant::now();
    publisher.publish_with("exp/x", QoS::AtLeastOnce, "waits", with_expiry(60));
    let acked = Instant::now();
    publisher.publish("exp/none", QoS::AtLeastOnce, "never expires");

    let p = live.next_publish();
    let waited = sent.elapsed();
    let expiry = p.properties.as_ref().and_then(|p| p.message_expiry_interval).expect("an expiry for the live copy");
    let low = (60.0 - waited.as_secs_f64()).floor() as u32;
    assert!((low..=60).contains(&expiry), "delivered within {waited:?}: expected {low}..=60, got {expiry}");
    assert_eq!(live.next_publish().properties.and_then(|p| p.message_expiry_interval), None);

    // The offline copy waits at least 1.5 s, so its interval must have gone down.
    wait_until("1.5 s of waiting", || (acked.elapsed() >= Duration::from_millis(1500)).then_some(()));
    let reconnected = Instant::now();
    let (mut sub, ack) = C5::connect_packet(&broker, &connect5("exp-sub", false, Some(lasting())));
    assert!(ack.session_present);
    let p = sub.next_publish();
    let received = Instant::now();
    assert_eq!(topic(&p), "exp/x");
    let expiry = p.properties.as_ref().and_then(|p| p.message_expiry_interval).expect("a Message Expiry Interval");
    let (least_waited, most_waited) = (reconnected - acked, received - sent);
    let low = (60.0 - most_waited.as_secs_f64()).floor() as u32;
    let high = (60.0 - least_waited.as_secs_f64()).ceil() as u32;
    assert!(
        (low..=high).contains(&expiry) && expiry < 60,
        "waited {least_waited:?}..{most_waited:?}: expected {low}..={high}, got {expiry}"
    );
    let p = sub.next_publish();
    assert_eq!((topic(&p), p.properties.and_then(|p| p.message_expiry_interval)), ("exp/none".to_owned(), None));
}

/// MQTT-3.3.2-5 (5): a message whose Message Expiry Interval passes while it waits for an
/// offline subscriber is not sent (`message.dropped`, reason `expired`); one that has not
/// expired is.
#[test]
fn an_expired_message_is_not_delivered() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);
    let (mut sub, _) = C5::connect_packet(&broker, &connect5("exd-sub", true, Some(lasting())));
    sub.subscribe("exd/#", QoS::AtLeastOnce);
    sub.disconnect();

    let mut publisher = C5::connect(&broker, "exd-pub");
    publisher.publish_with("exd/short", QoS::AtLeastOnce, "expires", with_expiry(1));
    let acked = Instant::now(); // the broker had it before this
    publisher.publish_with("exd/long", QoS::AtLeastOnce, "stays", with_expiry(600));
    publisher.publish("exd/plain", QoS::AtLeastOnce, "stays too");
    wait_until("the 1 s expiry to pass", || (acked.elapsed() > Duration::from_millis(1100)).then_some(()));

    let (mut sub, ack) = C5::connect_packet(&broker, &connect5("exd-sub", false, Some(lasting())));
    assert!(ack.session_present);
    let got: Vec<String> = (0..2).map(|_| topic(&sub.next_publish())).collect();
    assert_eq!(got, ["exd/long", "exd/plain"], "the expired message was not sent");
    wait_until("message.dropped (expired)", || {
        recorded_events(&file)
            .iter()
            .any(|e| {
                e["hook"] == "message.dropped"
                    && e["client_id"] == "exd-sub"
                    && e["topic"] == "exd/short"
                    && e["reason"] == "expired"
            })
            .then_some(())
    });
}

// ---------------------------------------------------------------------------------------
// Forwarded properties
// ---------------------------------------------------------------------------------------

fn user_properties() -> Vec<(String, String)> {
    [("b", "1"), ("a", "2"), ("b", "3"), ("a", ""), ("ключ", "значение")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// MQTT-3.3.2-4, MQTT-3.3.2-15, MQTT-3.3.2-16, MQTT-3.3.2-17, MQTT-3.3.2-18, MQTT-3.3.2-20
/// (5): Payload Format Indicator (1 and 0), Content Type, Response Topic, Correlation Data
/// and User Properties (repeated keys, in order) reach every subscriber unchanged, live
/// subscribers at any QoS and one that gets the message retained (`emqx_retainer`).
#[test]
fn forwarded_properties_arrive_unchanged() {
    let (_dir, broker) = start_broker("{emqx_retainer, true}.\n", &[]);
    let mut subs: Vec<C5> = [QoS::AtMostOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let mut sub = C5::connect(&broker, &format!("fwd-{i}"));
            sub.subscribe("fwd/#", q);
            sub
        })
        .collect();
    let full = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json; charset=utf-8".to_owned()),
        response_topic: Some("fwd/replies/for-me".to_owned()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xff, 0])),
        user_properties: user_properties(),
        ..Default::default()
    };
    let binary = v5::PublishProperties { payload_format_indicator: Some(0), ..Default::default() };
    let mut publisher = C5::connect(&broker, "fwd-pub");
    let mut retained = v5::Publish::new("fwd/json", QoS::ExactlyOnce, b"{\"a\":1}".to_vec(), Some(full.clone()));
    retained.retain = true;
    publisher.publish_packet(retained);
    publisher.publish_with("fwd/bin", QoS::AtLeastOnce, "\u{0}\u{1}", binary.clone());

    for sub in &mut subs {
        let p = sub.next_publish();
        assert_eq!((topic(&p), p.properties), ("fwd/json".to_owned(), Some(full.clone())));
        let p = sub.next_publish();
        assert_eq!((topic(&p), p.properties), ("fwd/bin".to_owned(), Some(binary.clone())));
    }
    let mut late = C5::connect(&broker, "fwd-late");
    late.subscribe("fwd/json", QoS::AtLeastOnce);
    let p = late.next_publish();
    assert!(p.retain, "the retained copy");
    assert_eq!(p.properties, Some(full), "the retained copy keeps the properties");
}

// ---------------------------------------------------------------------------------------
// Reason strings
// ---------------------------------------------------------------------------------------

const ACL: &str = "{deny, all, publish, [\"secret/#\"]}.\n{deny, all, subscribe, [\"hidden/#\"]}.\n{allow, all}.\n";

/// The reason strings (property 0x1F) of one client's failed acknowledgements: SUBACK
/// (0x8F, 0x87), PUBACK 0x87, PUBREC 0x87, PUBCOMP 0x92.
fn failure_reason_strings(c: &mut C5) -> Vec<Option<String>> {
    let mut strings = Vec::new();
    let pkid = c.next_pkid();
    let filters = vec![v5::Filter::new("a/#/b", QoS::AtLeastOnce), v5::Filter::new("hidden/x", QoS::AtLeastOnce)];
    c.raw.send(&P5::Subscribe(v5::Subscribe { pkid, filters, properties: None }));
    match c.raw.recv() {
        P5::SubAck(ack) => {
            use v5::SubscribeReasonCode as R;
            assert_eq!(ack.return_codes, vec![R::TopicFilterInvalid, R::NotAuthorized]);
            assert!(ack.properties.as_ref().is_none_or(|p| p.user_properties.is_empty()));
            strings.push(ack.properties.and_then(|p| p.reason_string));
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    match c.publish_packet(v5::Publish::new("secret/x", QoS::AtLeastOnce, b"x".to_vec(), None)) {
        Some(P5::PubAck(ack)) => {
            assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized);
            assert!(ack.properties.as_ref().is_none_or(|p| p.user_properties.is_empty()));
            strings.push(ack.properties.and_then(|p| p.reason_string));
        }
        other => panic!("{other:?}"),
    }
    match c.publish_packet(v5::Publish::new("secret/x", QoS::ExactlyOnce, b"x".to_vec(), None)) {
        Some(P5::PubRec(rec)) => {
            assert_eq!(rec.reason, v5::PubRecReason::NotAuthorized);
            assert!(rec.properties.as_ref().is_none_or(|p| p.user_properties.is_empty()));
            strings.push(rec.properties.and_then(|p| p.reason_string));
        }
        other => panic!("{other:?}"),
    }
    c.raw.send(&P5::PubRel(v5::PubRel { pkid: 999, reason: v5::PubRelReason::Success, properties: None }));
    match c.raw.recv() {
        P5::PubComp(comp) => {
            assert_eq!((comp.pkid, comp.reason), (999, v5::PubCompReason::PacketIdentifierNotFound));
            assert!(comp.properties.as_ref().is_none_or(|p| p.user_properties.is_empty()));
            strings.push(comp.properties.and_then(|p| p.reason_string));
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    strings
}

/// MQTT-3.1.2-29 (5): failed SUBACK, PUBACK, PUBREC and PUBCOMP carry a reason string, unless
/// the client set Request Problem Information to 0: then none of them carries a reason
/// string or user properties (the codes are unchanged).
#[test]
fn failed_acks_carry_reason_strings_unless_problem_information_is_off() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write("acl.conf", ACL);
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("3 rules loaded from");

    let mut wants = C5::connect(&broker, "rs-default");
    let strings = failure_reason_strings(&mut wants);
    assert!(strings.iter().all(|s| s.as_ref().is_some_and(|s| !s.is_empty())), "reason strings: {strings:?}");

    let props = v5::ConnectProperties { request_problem_info: Some(0), ..v5::ConnectProperties::new() };
    let (mut quiet, _) = C5::connect_with(&broker, "rs-quiet", Some(props));
    assert_eq!(failure_reason_strings(&mut quiet), vec![None; 4], "Request Problem Information 0");
}

// ---------------------------------------------------------------------------------------
// Maximum Packet Size
// ---------------------------------------------------------------------------------------

/// MQTT-3.1.2-24, MQTT-3.1.2-25 (5): a delivery bigger than the client's Maximum Packet Size
/// (128) is not sent, and the broker goes on as if it had been: the next message still comes
/// although the client's Receive Maximum is 1; `message.dropped` fires with reason
/// `too_large` and `messages.dropped` counts it. A delivery of exactly 128 bytes is sent.
#[test]
fn deliveries_over_the_clients_maximum_packet_size_are_dropped() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);
    let props =
        v5::ConnectProperties { max_packet_size: Some(128), receive_maximum: Some(1), ..v5::ConnectProperties::new() };
    let (mut sub, _) = C5::connect_with(&broker, "mps-sub", Some(props));
    sub.subscribe("mps/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "mps-pub");
    let dropped_before = stat(&dir, "messages.dropped");

    let mut fits = sized_publish("mps/x", 128);
    fits.payload = Bytes::from(vec![b'f'; fits.payload.len()]);
    let too_big = sized_publish("mps/x", 129);
    publisher.publish("mps/x", QoS::AtLeastOnce, "small");
    publisher.publish_packet(too_big);
    publisher.publish_packet(fits.clone());
    publisher.publish_packet(sized_publish("mps/x", 4000));
    publisher.publish("mps/x", QoS::AtLeastOnce, "after");

    let got: Vec<v5::Publish> = (0..3).map(|_| sub.next_publish()).collect();
    assert!(got.iter().all(|p| p.size() <= 128), "nothing over 128 bytes was sent");
    assert_eq!(payload(&got[0]), "small");
    assert_eq!((got[1].size(), &got[1].payload), (128, &fits.payload), "exactly 128 bytes fit");
    assert_eq!(payload(&got[2]), "after", "the two over 128 bytes were dropped");
    assert_eq!(stat(&dir, "messages.dropped"), dropped_before + 2, "messages.dropped counts them");
    let dropped = wait_until("two message.dropped (too_large)", || {
        let events: Vec<serde_json::Value> = recorded_events(&file)
            .into_iter()
            .filter(|e| e["hook"] == "message.dropped" && e["client_id"] == "mps-sub")
            .collect();
        (events.len() >= 2).then_some(events)
    });
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert!(dropped.iter().all(|e| e["reason"] == "too_large" && e["topic"] == "mps/x"), "{dropped:?}");
}

/// MQTT-3.2.2-15 (5), §3.2.2.3.6: the broker announces `mqtt.max_packet_size` as its Maximum
/// Packet Size; a packet of exactly that size is accepted, a bigger one ends the connection
/// with DISCONNECT 0x95 (Packet too large) and is not routed.
#[test]
fn a_packet_over_the_brokers_maximum_packet_size_gets_disconnect_0x95() {
    let (_dir, broker) = start_broker("", &[("BROKER_MQTT__MAX_PACKET_SIZE", "1024")]);
    let mut sub = C5::connect(&broker, "big-sub");
    sub.subscribe("big/#", QoS::AtLeastOnce);
    let (mut c, connack) = C5::connect_with(&broker, "big-pub", None);
    assert_eq!(connack.properties.and_then(|p| p.max_packet_size), Some(1024), "Maximum Packet Size");
    match c.publish_packet(sized_publish("big/fits", 1024)) {
        Some(P5::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::Success),
        other => panic!("{other:?}"),
    }
    let mut over = sized_publish("big/over", 1025);
    over.pkid = c.next_pkid();
    c.raw.send(&P5::Publish(over));
    c.expect_disconnect(v5::DisconnectReasonCode::PacketTooLarge);

    let mut marker = C5::connect(&broker, "big-marker");
    marker.publish("big/marker", QoS::AtLeastOnce, "marker");
    let got: Vec<String> = sub.until("big/marker").iter().map(topic).collect();
    assert_eq!(got, ["big/fits"], "the packet over the limit was not routed");
}
