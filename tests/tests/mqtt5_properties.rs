//! MQTT 5 message properties end to end: Topic Aliases both ways (set and used by the
//! client, refused when 0, above the broker's maximum or unknown, forgotten with the
//! connection; sent to a client within its own maximum, never to one that allows none),
//! Message Expiry (counted down while a message waits, expired messages never sent), the
//! properties forwarded unchanged (Payload Format Indicator, Content Type, Response Topic,
//! Correlation Data, User Properties in order), reason strings on failed acknowledgements
//! (none with Request Problem Information 0), and Maximum Packet Size both ways (deliveries
//! over the client's are dropped, `message.dropped` with `too_large`, also when resent after a
//! reconnect; Reason Strings left out where they would not fit; packets over the broker's
//! `mqtt.max_packet_size` get DISCONNECT 0x95), and what the broker refuses: a Topic Alias when
//! it allows none, RETAIN 1 when retain is not available, a Response Topic with wildcards; and
//! Response Information in the CONNACK only to a client that asks for it.
//!
//! Raw connections (`e2e::raw::C5`, rumqttc's codec) so that every property is seen as the
//! broker sent it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::raw::{connect5, payload, topic, v5, Raw, C5, V5};
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

/// The topics a client binds to aliases are bounded in bytes, not only in number: with the
/// default Topic Alias Maximum (65,535), a client binding 1,000-byte topics to new aliases is
/// disconnected with 0x97 (Quota exceeded) once they would hold more than 64 KiB; rebinding
/// one alias again and again costs nothing more.
#[test]
fn incoming_topic_aliases_are_bounded_in_bytes() {
    let (_dir, broker) = start_broker("", &[]);
    let mut c = C5::connect(&broker, "tab-rebind");
    for n in 0..200 {
        let t = format!("tab/{n:0>996}");
        c.publish_packet(v5::Publish::new(t, QoS::AtMostOnce, b"x".to_vec(), Some(with_alias(1))));
    }
    c.raw.ping("rebinding one alias stays within the quota");

    let mut c = C5::connect(&broker, "tab-many");
    for a in 1..=62u16 {
        let t = format!("tab/{a:0>996}");
        c.publish_packet(v5::Publish::new(t, QoS::AtMostOnce, b"x".to_vec(), Some(with_alias(a))));
    }
    c.raw.ping("62 aliases of 1 KB fit in 64 KiB");
    for a in 63..=70u16 {
        let t = format!("tab/{a:0>996}");
        c.raw.send(&P5::Publish(v5::Publish::new(t, QoS::AtMostOnce, b"x".to_vec(), Some(with_alias(a)))));
    }
    c.raw.expect_disconnect(v5::DisconnectReasonCode::QuotaExceeded, "aliases over 64 KiB");
}

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

/// MQTT-3.2.2-18 (5): with `mqtt.max_topic_alias = 0` the CONNACK has no Topic Alias Maximum,
/// so a client may send no Topic Alias; the broker ends a connection that does with
/// DISCONNECT 0x94 (Topic Alias invalid), and the message goes nowhere.
#[test]
fn a_topic_alias_when_the_broker_allows_none_gets_disconnect_0x94() {
    let (_dir, broker) = start_broker("", &[("BROKER_MQTT__MAX_TOPIC_ALIAS", "0")]);
    let mut sub = C5::connect(&broker, "tan-sub");
    sub.subscribe("tan/#", QoS::AtLeastOnce);
    let (mut c, connack) = C5::connect_with(&broker, "tan-pub", None);
    assert_eq!(connack.properties.and_then(|p| p.topic_alias_max), None, "no Topic Alias Maximum announced");
    let mut publish = v5::Publish::new("tan/x", QoS::AtLeastOnce, b"aliased".to_vec(), Some(with_alias(1)));
    publish.pkid = 1;
    c.raw.send(&P5::Publish(publish));
    c.expect_disconnect(v5::DisconnectReasonCode::TopicAliasInvalid);

    let mut publisher = C5::connect(&broker, "tan-marker");
    publisher.publish("tan/marker", QoS::AtLeastOnce, "marker");
    assert_eq!(topic(&sub.next_publish()), "tan/marker", "the aliased message was not routed");
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
    // Short topics always get an alias: past the maximum, the least recently used is rebound.
    assert!(seen.iter().all(|(_, _, a)| a.is_some()), "{seen:?}");
    assert_eq!((seen[0].1, seen[0].2), (true, Some(1)), "to/a binds alias 1: {seen:?}");
    assert_eq!((seen[1].1, seen[1].2), (false, Some(1)), "then to/a is sent as alias 1 only: {seen:?}");
    assert_eq!((seen[3].1, seen[3].2), (true, Some(1)), "to/c rebinds to/a's alias, least recently used: {seen:?}");
}

/// MQTT-3.3.2-17, MQTT-3.1.2-26 (5): the broker's aliases stay within 1 and the client's Topic
/// Alias Maximum however many topics it sends: 66,000 topics to a client allowing 65,535 (an
/// outside check saw alias 0, then aliases re-bound without the topic, resolving to the wrong
/// topic). Every delivery resolves to the topic published. The broker uses at most 128 aliases
/// per connection, and none for topics over 128 bytes (their memory is bounded).
#[test]
fn outgoing_topic_aliases_never_wrap_and_resolve_to_the_topic_published() {
    let (_dir, broker) = start_broker("", &[]);
    let props = v5::ConnectProperties { topic_alias_max: Some(u16::MAX), ..v5::ConnectProperties::new() };
    let (mut sub, _) = C5::connect_with(&broker, "taw-sub", Some(props));
    sub.subscribe("taw/#", QoS::AtMostOnce);
    let mut publisher = C5::connect(&broker, "taw-pub");
    let mut mapping: std::collections::HashMap<u16, String> = Default::default();
    let mut resolve = |p: &v5::Publish| match alias(p) {
        Some(a) => {
            assert!((1..=128).contains(&a), "alias {a} out of 1..=128");
            if p.topic.is_empty() {
                mapping.get(&a).cloned().unwrap_or_else(|| panic!("alias {a} was never set"))
            } else {
                mapping.insert(a, topic(p));
                topic(p)
            }
        }
        None => topic(p),
    };
    // Batches small enough for the subscriber's queue: nothing is dropped (QoS 0).
    let (topics, batch) = (66_000usize, 500usize);
    for start in (0..topics).step_by(batch) {
        let end = (start + batch).min(topics);
        for n in start..end {
            // Every tenth topic again, later: known aliases are used as well as new ones.
            let t = if n % 10 == 0 && n > 0 { format!("taw/{}", n - 5) } else { format!("taw/{n}") };
            publisher.publish(&t, QoS::AtMostOnce, &t);
        }
        for _ in start..end {
            let p = sub.next_publish();
            assert_eq!(resolve(&p), payload(&p), "the delivery resolves to the topic published");
        }
    }
    let long = format!("taw/{}", "l".repeat(200));
    for _ in 0..2 {
        publisher.publish(&long, QoS::AtMostOnce, "long");
        let p = sub.next_publish();
        assert_eq!((topic(&p), alias(&p)), (long.clone(), None), "no alias for a topic over 128 bytes");
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
    let dropped_before = stat(&dir, "delivery.dropped.too_large");

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
    assert_eq!(
        stat(&dir, "delivery.dropped.too_large"),
        dropped_before + 2,
        "EMQX's delivery.dropped.too_large counts them"
    );
    assert_eq!(stat(&dir, "delivery.dropped"), dropped_before + 2);
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

// ---------------------------------------------------------------------------------------
// Retain Available, Response Topic
// ---------------------------------------------------------------------------------------

/// MQTT-3.2.2-14 (5): with `mqtt.retain_available = false` the CONNACK says Retain Available
/// 0, so a client may not publish with RETAIN 1; the broker ends a connection that does (at
/// QoS 0 or 1) with DISCONNECT 0x9A (Retain not supported), and the message goes nowhere. A
/// PUBLISH with RETAIN 0 is accepted.
#[test]
fn retain_when_retain_is_not_available_gets_disconnect_0x9a() {
    let (_dir, broker) = start_broker("", &[("BROKER_MQTT__RETAIN_AVAILABLE", "false")]);
    let mut sub = C5::connect(&broker, "rna-sub");
    sub.subscribe("rna/#", QoS::AtLeastOnce);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce].into_iter().enumerate() {
        let (mut c, connack) = C5::connect_with(&broker, &format!("rna-{i}"), None);
        assert_eq!(connack.properties.and_then(|p| p.retain_available), Some(0), "Retain Available 0");
        let mut publish = v5::Publish::new("rna/retained", qos, b"retained".to_vec(), None);
        publish.retain = true;
        publish.pkid = if qos == QoS::AtMostOnce { 0 } else { 1 };
        c.raw.send(&P5::Publish(publish));
        c.expect_disconnect(v5::DisconnectReasonCode::RetainNotSupported);
    }
    let mut publisher = C5::connect(&broker, "rna-pub");
    publisher.publish("rna/plain", QoS::AtLeastOnce, "not retained");
    assert_eq!(topic(&sub.next_publish()), "rna/plain", "no retained PUBLISH was routed");
}

/// MQTT-3.3.2-14 (5): a Response Topic is a topic name, without wildcards: a PUBLISH whose
/// Response Topic has one ends the connection with DISCONNECT 0x82 (Protocol Error) and goes
/// nowhere; a CONNECT whose will has one is refused with CONNACK 0x82 and closed. The same
/// with a Response Topic without wildcards are accepted (and forwarded).
#[test]
fn a_response_topic_with_a_wildcard_is_refused() {
    let (dir, broker) = start_broker("", &[]);
    let mut sub = C5::connect(&broker, "rt-sub");
    sub.subscribe("rt/#", QoS::AtLeastOnce);
    let response = |t: &str| v5::PublishProperties { response_topic: Some(t.to_owned()), ..Default::default() };
    for (i, bad) in ["rt/replies/+", "rt/replies/#", "#"].into_iter().enumerate() {
        let mut c = C5::connect(&broker, &format!("rt-{i}"));
        let mut publish = v5::Publish::new("rt/x", QoS::AtLeastOnce, b"bad".to_vec(), Some(response(bad)));
        publish.pkid = 1;
        c.raw.send(&P5::Publish(publish));
        c.expect_disconnect(v5::DisconnectReasonCode::ProtocolError);

        let will_properties = v5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: Some(bad.to_owned()),
            correlation_data: None,
            user_properties: Vec::new(),
        };
        let will = v5::LastWill::new("rt/will", "bad", QoS::AtMostOnce, false, Some(will_properties));
        let v5::Packet::Connect(connect, _, _) = connect5(&format!("rt-will-{i}"), true, None) else { unreachable!() };
        let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &P5::Connect(connect, Some(will), None));
        assert_eq!((ack.code, ack.session_present), (v5::ConnectReturnCode::ProtocolError, false), "will {bad}");
        assert!(raw.until_closed().is_empty(), "closed after the refusal");
    }
    assert_eq!(stat(&dir, "sessions.count"), 1, "only the subscriber's session: no refused will opened one");

    let mut publisher = C5::connect(&broker, "rt-pub");
    publisher.publish_with("rt/x", QoS::AtLeastOnce, "good", response("rt/replies/1"));
    let got = sub.next_publish();
    assert_eq!(payload(&got), "good", "the PUBLISHes with a wildcard Response Topic were not routed");
    assert_eq!(got.properties.and_then(|p| p.response_topic).as_deref(), Some("rt/replies/1"));
}

// ---------------------------------------------------------------------------------------
// Reason Strings within the client's Maximum Packet Size
// ---------------------------------------------------------------------------------------

/// The reason strings of the failures `failure_reason_strings` provokes, then of PUBREL 0x92
/// (a PUBREC for an id not in flight) and of DISCONNECT 0x90 (a PUBLISH to a wildcard topic),
/// which ends the connection.
fn every_reason_string(mut c: C5) -> Vec<Option<String>> {
    let mut strings = failure_reason_strings(&mut c);
    c.raw.send(&P5::PubRec(v5::PubRec::new(999, None)));
    match c.raw.recv() {
        P5::PubRel(rel) => {
            assert_eq!((rel.pkid, rel.reason), (999, v5::PubRelReason::PacketIdentifierNotFound));
            assert!(rel.properties.as_ref().is_none_or(|p| p.user_properties.is_empty()));
            strings.push(rel.properties.and_then(|p| p.reason_string));
        }
        other => panic!("expected PUBREL, got {other:?}"),
    }
    c.raw.send(&P5::Publish(v5::Publish::new("bad/#", QoS::AtMostOnce, b"x".to_vec(), None)));
    let d = c.raw.expect_disconnect(v5::DisconnectReasonCode::TopicNameInvalid, "a wildcard topic name");
    strings.push(d.properties.and_then(|p| p.reason_string));
    strings
}

/// The Reason String of the CONNACK that refuses a CONNECT with an Authentication Method (0x8C)
/// from a client announcing `max_packet_size`.
fn connack_reason_string(broker: &Broker, max_packet_size: u32) -> Option<String> {
    let props = v5::ConnectProperties {
        max_packet_size: Some(max_packet_size),
        authentication_method: Some("SCRAM-SHA-256".to_owned()),
        ..v5::ConnectProperties::new()
    };
    let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &connect5("rs-auth", true, Some(props)));
    assert_eq!((ack.code, ack.session_present), (v5::ConnectReturnCode::BadAuthenticationMethod, false));
    assert!(raw.until_closed().is_empty(), "closed after the refusal");
    ack.properties.and_then(|p| p.reason_string)
}

/// MQTT-3.2.2-19, MQTT-3.4.2-2, MQTT-3.5.2-2, MQTT-3.6.2-2, MQTT-3.7.2-2, MQTT-3.9.2-1,
/// MQTT-3.14.2-3 (5): the broker leaves out a Reason String that would make its packet bigger
/// than the Maximum Packet Size the client announced. A client announcing 20 bytes gets its
/// failed SUBACK (0x8F, 0x87), PUBACK (0x87), PUBREC (0x87), PUBCOMP (0x92), PUBREL (0x92),
/// its DISCONNECT (0x90) and a refusing CONNACK (0x8C) with the same reason codes and no
/// Reason String; a client announcing 64 bytes, in which they fit, gets each with one.
#[test]
fn reason_strings_are_left_out_when_over_the_clients_maximum_packet_size() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write("acl.conf", ACL);
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("3 rules loaded from");
    let max = |bytes: u32| Some(v5::ConnectProperties { max_packet_size: Some(bytes), ..v5::ConnectProperties::new() });

    let (small, _) = C5::connect_with(&broker, "rs-20", max(20));
    assert_eq!(every_reason_string(small), vec![None; 6], "Maximum Packet Size 20: no Reason String");
    assert_eq!(connack_reason_string(&broker, 20), None, "CONNACK to a client with Maximum Packet Size 20");

    let (roomy, _) = C5::connect_with(&broker, "rs-64", max(64));
    let strings = every_reason_string(roomy);
    assert!(strings.iter().all(|s| s.as_ref().is_some_and(|s| !s.is_empty())), "Maximum Packet Size 64: {strings:?}");
    assert!(connack_reason_string(&broker, 64).is_some_and(|s| !s.is_empty()), "CONNACK, Maximum Packet Size 64");
}

/// MQTT-3.1.2-24, MQTT-3.1.2-25 (5), for messages sent again when a session is resumed: a
/// subscriber leaves two QoS 1 messages unacknowledged (a 200-byte one, then a small one) and
/// comes back announcing a Maximum Packet Size of 100 and a Receive Maximum of 1: the small one
/// is sent again (DUP 1, same packet id), the big one is not sent but dropped
/// (`message.dropped` with reason `too_large`, counted in `messages.dropped`), and the broker
/// goes on as if it had been delivered: once the small one is acknowledged the next message
/// comes, although the big one was never acknowledged and the window is 1.
#[test]
fn messages_resent_after_a_reconnect_respect_a_smaller_maximum_packet_size() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);
    let first = v5::ConnectProperties { receive_maximum: Some(2), ..lasting() };
    let (mut sub, _) = C5::connect_packet(&broker, &connect5("rsz-sub", true, Some(first)));
    sub.subscribe("rsz/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "rsz-pub");
    publisher.publish_packet(sized_publish("rsz/x", 200));
    publisher.publish("rsz/x", QoS::AtLeastOnce, "small");
    let mut held = Vec::new();
    for _ in 0..2 {
        match sub.raw.recv() {
            P5::Publish(p) => held.push(p),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!((held[0].size(), payload(&held[1])), (200, "small".to_owned()));
    sub.raw.drop_connection();
    let dropped = stat(&dir, "delivery.dropped.too_large");

    let smaller = v5::ConnectProperties { max_packet_size: Some(100), receive_maximum: Some(1), ..lasting() };
    let (mut sub, ack) = C5::connect_packet(&broker, &connect5("rsz-sub", false, Some(smaller)));
    assert!(ack.session_present);
    match sub.raw.recv() {
        P5::Publish(p) => assert_eq!(
            (payload(&p), p.dup, p.pkid),
            ("small".to_owned(), true, held[1].pkid),
            "only the small message is sent again"
        ),
        other => panic!("expected the small message again, got {other:?}"),
    }
    sub.raw.send(&P5::PubAck(v5::PubAck::new(held[1].pkid, None)));
    publisher.publish("rsz/x", QoS::AtLeastOnce, "after");
    let next = sub.next_publish();
    assert_eq!((payload(&next), next.dup), ("after".to_owned(), false), "the window is free: the big one is done");
    assert_eq!(stat(&dir, "delivery.dropped.too_large"), dropped + 1, "delivery.dropped.too_large counts it");
    let events = wait_until("message.dropped (too_large) for rsz-sub", || {
        let events: Vec<serde_json::Value> = recorded_events(&file)
            .into_iter()
            .filter(|e| e["hook"] == "message.dropped" && e["client_id"] == "rsz-sub")
            .collect();
        (!events.is_empty()).then_some(events)
    });
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((&events[0]["reason"], &events[0]["topic"]), (&"too_large".into(), &"rsz/x".into()));
}

/// MQTT-4.4.0-1 with MQTT-3.3.4-9 (5): a subscriber leaves three QoS 1 messages
/// unacknowledged and comes back with a Receive Maximum of 1. The broker sends the first
/// again (DUP 1, same packet id) and nothing more until it is acknowledged (the PINGRESP to a
/// PINGREQ sent right after it comes before any other PUBLISH), then the second, then the
/// third, each after the one before was acknowledged; then new messages.
#[test]
fn messages_resent_after_a_reconnect_respect_a_smaller_receive_maximum() {
    let (_dir, broker) = start_broker("", &[]);
    let first = v5::ConnectProperties { receive_maximum: Some(3), ..lasting() };
    let (mut sub, _) = C5::connect_packet(&broker, &connect5("rrm-sub", true, Some(first)));
    sub.subscribe("rrm/#", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "rrm-pub");
    for n in 1..=3 {
        publisher.publish("rrm/x", QoS::AtLeastOnce, &format!("m{n}"));
    }
    let held: Vec<v5::Publish> = (0..3)
        .map(|_| match sub.raw.recv() {
            P5::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect();
    sub.raw.drop_connection();

    let smaller = v5::ConnectProperties { receive_maximum: Some(1), ..lasting() };
    let (mut sub, ack) = C5::connect_packet(&broker, &connect5("rrm-sub", false, Some(smaller)));
    assert!(ack.session_present);
    for (n, sent) in held.iter().enumerate() {
        match sub.raw.recv() {
            P5::Publish(p) => assert_eq!(
                (payload(&p), p.dup, p.pkid),
                (payload(sent), true, sent.pkid),
                "message {} sent again, in order",
                n + 1
            ),
            other => panic!("expected message {} again, got {other:?}", n + 1),
        }
        sub.raw.send(&P5::PingReq(v5::PingReq));
        match sub.raw.recv() {
            P5::PingResp(_) => {}
            other => panic!("a Receive Maximum of 1 holds one message in flight, got {other:?}"),
        }
        sub.raw.send(&P5::PubAck(v5::PubAck::new(sent.pkid, None)));
    }
    publisher.publish("rrm/x", QoS::AtLeastOnce, "after");
    let next = sub.next_publish();
    assert_eq!((payload(&next), next.dup), ("after".to_owned(), false));
}

/// §2.2.2.2 (5): a property identifier that is not valid for the packet's type makes it a
/// Malformed Packet: DISCONNECT 0x81, then close (MQTT 5 §4.13). A Session Expiry Interval
/// (0x11) in a PUBLISH, or in a SUBSCRIBE.
#[test]
fn a_property_not_valid_for_the_packet_type_is_a_malformed_packet() {
    let (_dir, broker) = start_broker("", &[]);
    let session_expiry = [5, 0x11, 0, 0, 0, 1]; // property length, then the property
    let mut publish = vec![0x30, 10, 0, 1, b't'];
    publish.extend_from_slice(&session_expiry);
    publish.push(b'x');
    let mut subscribe = vec![0x82, 12, 0, 1];
    subscribe.extend_from_slice(&session_expiry);
    subscribe.extend_from_slice(&[0, 1, b't', 0]);
    for (name, bytes) in [("PUBLISH", publish), ("SUBSCRIBE", subscribe)] {
        let mut c = C5::connect(&broker, &format!("bad-prop-{name}"));
        c.raw.send_bytes(&bytes);
        c.raw.expect_disconnect(v5::DisconnectReasonCode::MalformedPacket, name);
    }
}

/// MQTT-3.1.2-28, MQTT 5 §3.2.2.3.15: with `mqtt.response_information` set (EMQX 5's name), a
/// client that asks for it (Request Response Information 1) gets it in its CONNACK; one that
/// asks not to (0), or does not ask, gets none; with the setting empty (the default) nobody does.
#[test]
fn response_information_goes_only_to_a_client_that_asks_for_it() {
    let response_information = |broker: &Broker, id: &str, request: Option<u8>| {
        let props = v5::ConnectProperties { request_response_info: request, ..v5::ConnectProperties::new() };
        let (c, ack) = C5::connect_with(broker, id, Some(props));
        assert_eq!(ack.code, v5::ConnectReturnCode::Success);
        c.disconnect();
        ack.properties.and_then(|p| p.response_information)
    };
    let (_dir, broker) = start_broker("", &[("BROKER_MQTT__RESPONSE_INFORMATION", "replies/")]);
    assert_eq!(response_information(&broker, "ri-asks", Some(1)).as_deref(), Some("replies/"));
    assert_eq!(response_information(&broker, "ri-declines", Some(0)), None, "MQTT-3.1.2-28");
    assert_eq!(response_information(&broker, "ri-silent", None), None);
    let (_dir, plain) = start_broker("", &[]);
    assert_eq!(response_information(&plain, "ri-asks", Some(1)), None, "none set");
}

/// MQTT-3.1.2-24: the server never sends a packet over the client's Maximum Packet Size. A
/// SUBSCRIBE of 40 filters from a client that takes at most 20 bytes would need a 45-byte
/// SUBACK (an UNSUBSCRIBE likewise): the connection is closed with DISCONNECT 0x95 instead of
/// sending it (before, it was sent). A SUBACK that fits is sent.
#[test]
fn a_suback_over_the_clients_maximum_packet_size_closes_the_connection_instead() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    let props = || v5::ConnectProperties { max_packet_size: Some(20), ..v5::ConnectProperties::new() };
    let filters = |n: usize| (0..n).map(|i| v5::Filter::new(format!("mps/{i}"), QoS::AtMostOnce)).collect::<Vec<_>>();

    let (mut small, _) = C5::connect_with(&broker, "mps-small", Some(props()));
    assert_eq!(small.subscribe_with(filters(10), None).len(), 10, "a 15-byte SUBACK fits");

    for unsubscribe in [false, true] {
        let (mut client, _) = C5::connect_with(&broker, "mps-many", Some(props()));
        let pkid = client.next_pkid();
        if unsubscribe {
            let filters = (0..40).map(|i| format!("mps/{i}")).collect();
            client.raw.send(&P5::Unsubscribe(v5::Unsubscribe { pkid, filters, properties: None }));
        } else {
            client.raw.send(&P5::Subscribe(v5::Subscribe { pkid, filters: filters(40), properties: None }));
        }
        match client.raw.recv() {
            P5::Disconnect(d) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::PacketTooLarge, "{unsubscribe}"),
            other => panic!("DISCONNECT 0x95 expected (unsubscribe: {unsubscribe}), got {other:?}"),
        }
    }
}
