//! Routing and subscriptions end to end: topic filter wildcards (`+`, `#`) and `$` topics, a
//! byte order mark kept in topic names, invalid filters and wildcard topic names, overlapping
//! and replaced subscriptions, UNSUBSCRIBE (malformed, and with deliveries under way), shared
//! subscriptions (`$share/<group>/...`, `$queue/...`) under every strategy, what becomes of a
//! shared message whose member disconnects, loses its session or refuses it, shared and
//! wildcard subscriptions switched off, the MQTT 5 subscription options (No Local, Retain As
//! Published, Retain Handling with `emqx_retainer`) and Subscription Identifiers, the
//! acknowledgement codes routing decides (no matching subscribers, ACL denial by
//! `emqx_mod_acl_internal`), and plugins that drop (`message.publish`) or publish as the broker
//! (the `gatekeeper` test plugin).
//!
//! Raw connections (rumqttc's codec; `e2e::raw::C5` for MQTT 5) on both sides, MQTT 3.1.1 and
//! 5, so that every code, flag, QoS and property the broker sends is seen as sent. Absence is
//! shown with a marker message published after the one that must not arrive: the marker must
//! come next.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::Stdio;

use e2e::raw::{connect4, connect5, expiry, payload, topic, v5, Raw, C5, V4};
use e2e::{mosquitto, recorded_events, start_broker, stat, text, wait_for_stat, wait_until, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::QoS as QoS4;
use v5::Packet as P5;

// ---------------------------------------------------------------------------------------
// Helpers: subscription options and an MQTT 3.1.1 client on a raw connection (the MQTT 5
// one is `e2e::raw::C5`).
// ---------------------------------------------------------------------------------------

/// The Subscription Identifiers of a delivery, sorted (their order is not significant).
fn ids(p: &v5::Publish) -> Vec<usize> {
    let mut ids = p.properties.as_ref().map(|p| p.subscription_identifiers.clone()).unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// A filter with MQTT 5 subscription options.
fn filter(path: &str, qos: QoS, no_local: bool, retain_as_published: bool, rh: v5::RetainForwardRule) -> v5::Filter {
    v5::Filter {
        path: path.to_owned(),
        qos,
        nolocal: no_local,
        preserve_retain: retain_as_published,
        retain_forward_rule: rh,
    }
}

/// An MQTT 3.1.1 client on a raw connection.
struct C4 {
    raw: Raw<V4>,
    pkid: u16,
}

impl C4 {
    fn connect(broker: &Broker, id: &str) -> C4 {
        let (raw, ack) = Raw::<V4>::connect(broker.addr, &connect4(id, true));
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{id}: CONNACK");
        C4 { raw, pkid: 0 }
    }

    fn next_pkid(&mut self) -> u16 {
        self.pkid = self.pkid % u16::MAX + 1;
        self.pkid
    }

    fn subscribe_many(&mut self, filters: &[(&str, QoS4)]) -> Vec<rumqttc::SubscribeReasonCode> {
        let pkid = self.next_pkid();
        let filters = filters.iter().map(|(f, q)| rumqttc::SubscribeFilter::new((*f).to_owned(), *q)).collect();
        self.raw.send(&rumqttc::Packet::Subscribe(rumqttc::Subscribe { pkid, filters }));
        match self.raw.recv() {
            rumqttc::Packet::SubAck(ack) => {
                assert_eq!(ack.pkid, pkid, "the SUBACK's packet id");
                ack.return_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS4) {
        let codes = self.subscribe_many(&[(filter, qos)]);
        assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Success(qos)], "SUBSCRIBE {filter}");
    }

    /// Publishes and completes the QoS flow.
    fn publish(&mut self, topic: &str, qos: QoS4, retain: bool, payload: &str) {
        let mut publish = rumqttc::Publish::new(topic, qos, payload.as_bytes().to_vec());
        publish.retain = retain;
        if qos != QoS4::AtMostOnce {
            publish.pkid = self.next_pkid();
        }
        let pkid = publish.pkid;
        self.raw.send(&rumqttc::Packet::Publish(publish));
        match qos {
            QoS4::AtMostOnce => {}
            QoS4::AtLeastOnce => match self.raw.recv() {
                rumqttc::Packet::PubAck(ack) if ack.pkid == pkid => {}
                other => panic!("expected PUBACK {pkid}, got {other:?}"),
            },
            QoS4::ExactlyOnce => {
                match self.raw.recv() {
                    rumqttc::Packet::PubRec(rec) if rec.pkid == pkid => {}
                    other => panic!("expected PUBREC {pkid}, got {other:?}"),
                }
                self.raw.send(&rumqttc::Packet::PubRel(rumqttc::PubRel::new(pkid)));
                match self.raw.recv() {
                    rumqttc::Packet::PubComp(comp) if comp.pkid == pkid => {}
                    other => panic!("expected PUBCOMP {pkid}, got {other:?}"),
                }
            }
        }
    }

    /// The next PUBLISH, acknowledged as its QoS requires.
    fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            match self.raw.recv() {
                rumqttc::Packet::Publish(p) => {
                    match p.qos {
                        QoS4::AtMostOnce => {}
                        QoS4::AtLeastOnce => self.raw.send(&rumqttc::Packet::PubAck(rumqttc::PubAck::new(p.pkid))),
                        QoS4::ExactlyOnce => self.raw.send(&rumqttc::Packet::PubRec(rumqttc::PubRec::new(p.pkid))),
                    }
                    return p;
                }
                rumqttc::Packet::PubRel(rel) => {
                    self.raw.send(&rumqttc::Packet::PubComp(rumqttc::PubComp::new(rel.pkid)));
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// Every PUBLISH before the first one on `marker` (which is consumed).
    fn until(&mut self, marker: &str) -> Vec<rumqttc::Publish> {
        let mut got = Vec::new();
        loop {
            let p = self.next_publish();
            if p.topic == marker {
                return got;
            }
            got.push(p);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Topic filters
// ---------------------------------------------------------------------------------------

/// Filters and, for each published topic, which of them (1-based) match it.
const FILTERS: [&str; 10] = ["a/b", "a/+", "a/#", "#", "+/b", "+", "a/+/c", "+/+", "/+", "a/b/#"];
const MATCHES: [(&str, &[usize]); 10] = [
    ("a", &[3, 4, 6]),                // `a/#` matches its parent level; `a/+` does not
    ("a/b", &[1, 2, 3, 4, 5, 8, 10]), // `a/b/#` matches `a/b`
    ("a/", &[2, 3, 4, 8]),            // `+` matches the empty level after the `/`
    ("a//c", &[3, 4, 7]),             // `a/+/c` matches an empty middle level
    ("/a", &[4, 8, 9]),               // an empty first level
    ("/", &[4, 8, 9]),                // two empty levels
    ("a/b/c", &[3, 4, 7, 10]),        // `+` is one level only (`a/+` does not match)
    ("b", &[4, 6]),                   // `+/b` needs two levels
    ("A/B", &[4, 8]),                 // no case folding
    ("x/y/z/w", &[4]),                // only `#`
];

/// MQTT-4.7.1-2, MQTT-4.7.1-3, MQTT-4.7.3-4 (3.1.1): `#` matches any number of levels, its
/// parent level included (`a/#` matches `a`); `+` exactly one level, an empty one included;
/// no normalization. One MQTT 3.1.1 client per filter; each gets exactly its topics, in order.
#[test]
fn wildcards_match_as_specified_v311() {
    let (_dir, broker) = start_broker("", &[]);
    let marker = "zz/end";
    let mut subs: Vec<C4> = FILTERS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut c = C4::connect(&broker, &format!("wild4-{i}"));
            c.subscribe(f, QoS4::AtLeastOnce);
            c.subscribe(marker, QoS4::AtLeastOnce);
            c
        })
        .collect();
    let mut publisher = C4::connect(&broker, "wild4-pub");
    for (t, _) in MATCHES {
        publisher.publish(t, QoS4::AtLeastOnce, false, t);
    }
    publisher.publish(marker, QoS4::AtLeastOnce, false, "end");
    for (i, sub) in subs.iter_mut().enumerate() {
        let expected: Vec<&str> = MATCHES.iter().filter(|(_, m)| m.contains(&(i + 1))).map(|(t, _)| *t).collect();
        let got: Vec<String> = sub.until(marker).into_iter().map(|p| p.topic).collect();
        assert_eq!(got, expected, "filter {:?}", FILTERS[i]);
    }
}

/// MQTT-4.7.1-1, MQTT-4.7.1-2, MQTT-4.7.3-4 (5), and MQTT-3.3.4-3/MQTT-3.3.4-4 (5): one MQTT 5
/// session subscribes to every filter, each with its own Subscription Identifier; each
/// message comes once, naming exactly the filters that match it.
#[test]
fn wildcards_match_as_specified_v5() {
    let (_dir, broker) = start_broker("", &[]);
    let mut sub = C5::connect(&broker, "wild5");
    for (i, f) in FILTERS.iter().enumerate() {
        sub.subscribe_id(f, QoS::AtMostOnce, Some(i + 1));
    }
    let mut publisher = C5::connect(&broker, "wild5-pub");
    for (t, _) in MATCHES {
        publisher.publish(t, QoS::AtMostOnce, t);
    }
    publisher.publish("zz/end", QoS::AtMostOnce, "end"); // matches `#` and `+/+`
    let got: Vec<(String, Vec<usize>)> = sub.until("zz/end").iter().map(|p| (topic(p), ids(p))).collect();
    let expected: Vec<(String, Vec<usize>)> = MATCHES.iter().map(|(t, m)| (t.to_string(), m.to_vec())).collect();
    assert_eq!(got, expected);
}

/// MQTT-4.7.1-1, MQTT-4.7.1-2, MQTT-4.8.2-1, MQTT-4.8.2-2 (5), MQTT-3.8.4-6/MQTT-3.8.4-7 (5):
/// a filter with `#` not last or not a whole level, `+` not a whole level, or a bad share
/// name is refused with 0x8F in its own slot of the SUBACK; the valid filter next to them is
/// granted and works, and the refused ones subscribe nothing.
/// MQTT-4.7.1-2, MQTT-4.7.1-3, MQTT-3.9.3-1 (3.1.1): the same in MQTT 3.1.1, where the
/// failure code is 0x80.
#[test]
fn invalid_filters_are_refused() {
    let (dir, broker) = start_broker("", &[]);
    let bad = ["a/#/b", "a/b#", "a+", "+a/b", "#/", "a/#/"];
    let bad_shares = ["$share/g", "$share//a", "$share/g+/a", "$share/g#/a", "$share/g/"];

    let mut sub5 = C5::connect(&broker, "bad5");
    let mut filters: Vec<v5::Filter> =
        bad.iter().chain(&bad_shares).map(|f| v5::Filter::new(*f, QoS::AtLeastOnce)).collect();
    filters.push(v5::Filter::new("ok5/+", QoS::AtLeastOnce));
    let mut expected = vec![v5::SubscribeReasonCode::TopicFilterInvalid; bad.len() + bad_shares.len()];
    expected.push(v5::SubscribeReasonCode::Success(QoS::AtLeastOnce));
    assert_eq!(sub5.subscribe_with(filters, None), expected);

    let mut sub4 = C4::connect(&broker, "bad4");
    let mut filters: Vec<(&str, QoS4)> = bad.iter().map(|f| (*f, QoS4::AtLeastOnce)).collect();
    filters.push(("ok4/+", QoS4::AtLeastOnce));
    let mut expected = vec![rumqttc::SubscribeReasonCode::Failure; bad.len()];
    expected.push(rumqttc::SubscribeReasonCode::Success(QoS4::AtLeastOnce));
    assert_eq!(sub4.subscribe_many(&filters), expected);

    assert_eq!(stat(&dir, "subscriptions.count"), 2, "only the two valid filters are subscribed");
    let mut publisher = C5::connect(&broker, "bad-pub");
    publisher.publish("ok5/x", QoS::AtLeastOnce, "five");
    publisher.publish("ok4/x", QoS::AtLeastOnce, "four");
    assert_eq!(payload(&sub5.next_publish()), "five");
    assert_eq!(sub4.next_publish().payload, "four".as_bytes());
}

/// A topic name starting with U+FEFF (ZERO WIDTH NO-BREAK SPACE), which UTF-8 encodes as
/// EF BB BF, the byte order mark.
const BOM_TOPIC: &str = "\u{feff}bom/t";

/// MQTT-1.5.3-3 (3.1.1), MQTT-1.5.4-3 (5): EF BB BF in a string is the character U+FEFF and is
/// never skipped or stripped: a topic name starting with it is a topic of its own, matched by
/// the filter that starts with it (delivered with the three bytes in place) and not by the
/// same filter without them, while a message to the topic without them goes only to the
/// filter without them; for MQTT 3.1.1 and 5 publishers and subscribers alike. MQTT 5 string
/// properties starting with it (Content Type, a User Property's name and value) are forwarded
/// byte for byte.
#[test]
fn a_byte_order_mark_in_a_topic_is_kept() {
    assert_eq!(&BOM_TOPIC.as_bytes()[..3], [0xef, 0xbb, 0xbf]);
    let (_dir, broker) = start_broker("", &[]);
    let marker = "bom/end";
    let mut with4 = C4::connect(&broker, "bom4-with");
    let mut without4 = C4::connect(&broker, "bom4-without");
    for (c, f) in [(&mut with4, BOM_TOPIC), (&mut without4, "bom/t")] {
        c.subscribe(f, QoS4::AtLeastOnce);
        c.subscribe(marker, QoS4::AtLeastOnce);
    }
    let mut with5 = C5::connect(&broker, "bom5-with");
    let mut without5 = C5::connect(&broker, "bom5-without");
    for (c, f) in [(&mut with5, BOM_TOPIC), (&mut without5, "bom/t")] {
        c.subscribe(f, QoS::AtLeastOnce);
        c.subscribe(marker, QoS::AtLeastOnce);
    }

    let mut publisher4 = C4::connect(&broker, "bom4-pub");
    publisher4.publish(BOM_TOPIC, QoS4::AtLeastOnce, false, "from 3.1.1");
    let mut publisher5 = C5::connect(&broker, "bom5-pub");
    let properties = v5::PublishProperties {
        content_type: Some("\u{feff}text/plain".to_owned()),
        user_properties: vec![("\u{feff}name".to_owned(), "\u{feff}value".to_owned())],
        ..Default::default()
    };
    match publisher5.publish_with(BOM_TOPIC, QoS::AtLeastOnce, "from 5", properties.clone()) {
        Some(P5::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::Success, "subscribers matched"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    publisher5.publish("bom/t", QoS::AtLeastOnce, "plain");
    publisher5.publish(marker, QoS::AtLeastOnce, "end");

    let bom = BOM_TOPIC.as_bytes().to_vec();
    let got: Vec<(Vec<u8>, String)> =
        with4.until(marker).into_iter().map(|p| (p.topic.into_bytes(), text(&p.payload))).collect();
    assert_eq!(got, [(bom.clone(), "from 3.1.1".to_owned()), (bom.clone(), "from 5".to_owned())], "3.1.1");
    let got: Vec<(String, String)> = without4.until(marker).into_iter().map(|p| (p.topic, text(&p.payload))).collect();
    assert_eq!(got, [("bom/t".to_owned(), "plain".to_owned())], "3.1.1 without the BOM");

    let got = with5.until(marker);
    let seen: Vec<(Vec<u8>, String)> = got.iter().map(|p| (p.topic.to_vec(), payload(p))).collect();
    assert_eq!(seen, [(bom.clone(), "from 3.1.1".to_owned()), (bom, "from 5".to_owned())], "5");
    let forwarded = got[1].properties.clone().expect("the MQTT 5 message's properties");
    assert_eq!(forwarded.content_type, properties.content_type, "Content Type byte for byte");
    assert_eq!(forwarded.user_properties, properties.user_properties, "User Property byte for byte");
    let got: Vec<(String, String)> = without5.until(marker).iter().map(|p| (topic(p), payload(p))).collect();
    assert_eq!(got, [("bom/t".to_owned(), "plain".to_owned())], "5 without the BOM");
}

/// MQTT-4.7.2-1: a topic starting with `$` (`$SYS/...` included) is matched neither by `#`
/// nor by `+/...` (nor `+/#`, `+/+`, `+`), but by filters that start with the same `$` level.
#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let (_dir, broker) = start_broker("", &[]);
    let mut sub = C5::connect(&broker, "dollar");
    let filters = ["#", "+/x", "+/+", "+/#", "$test/#", "$test/+", "$test/x", "+", "$SYS/#"];
    for (i, f) in filters.iter().enumerate() {
        sub.subscribe_id(f, QoS::AtMostOnce, Some(i + 1));
    }
    let mut publisher = C5::connect(&broker, "dollar-pub");
    let topics = ["$test/x", "$test", "$SYS/x", "plain/x"];
    for t in topics {
        publisher.publish(t, QoS::AtMostOnce, t);
    }
    let got: Vec<(String, Vec<usize>)> =
        topics.iter().map(|_| sub.next_publish()).map(|p| (topic(&p), ids(&p))).collect();
    assert_eq!(
        got,
        vec![
            ("$test/x".to_owned(), vec![5, 6, 7]),
            ("$test".to_owned(), vec![5]), // `$test/#` matches its parent level
            ("$SYS/x".to_owned(), vec![9]),
            ("plain/x".to_owned(), vec![1, 2, 3, 4]),
        ]
    );
}

/// MQTT-3.3.2-2 (3.1.1 and 5), MQTT-4.7.1-1 (3.1.1), MQTT-4.7.0-1 and MQTT-4.13.1-1 (5): a
/// PUBLISH whose topic name holds a wildcard is a protocol violation: MQTT 3.1.1 gets the
/// connection closed, MQTT 5 a DISCONNECT 0x90 (Topic Name invalid) first; the message goes
/// nowhere.
#[test]
fn wildcards_in_a_published_topic_end_the_connection() {
    let (_dir, broker) = start_broker("", &[]);
    let mut sub = C5::connect(&broker, "wpub-sub");
    sub.subscribe("#", QoS::AtLeastOnce);

    for (i, bad) in ["w/+", "w/#", "+", "#"].iter().enumerate() {
        let mut c4 = C4::connect(&broker, &format!("wpub4-{i}"));
        let mut publish = rumqttc::Publish::new(*bad, QoS4::AtLeastOnce, "bad".as_bytes().to_vec());
        publish.pkid = 1;
        c4.raw.send(&rumqttc::Packet::Publish(publish));
        assert_eq!(c4.raw.until_closed(), vec![], "MQTT 3.1.1 PUBLISH to {bad}: closed, no PUBACK");

        let mut c5 = C5::connect(&broker, &format!("wpub5-{i}"));
        let mut publish = v5::Publish::new(*bad, QoS::AtLeastOnce, "bad".as_bytes().to_vec(), None);
        publish.pkid = 1;
        c5.raw.send(&P5::Publish(publish));
        c5.expect_disconnect(v5::DisconnectReasonCode::TopicNameInvalid);
    }
    let mut publisher = C5::connect(&broker, "wpub-pub");
    publisher.publish("w/marker", QoS::AtLeastOnce, "marker");
    assert_eq!(topic(&sub.next_publish()), "w/marker", "no wildcard PUBLISH was routed");
}

// ---------------------------------------------------------------------------------------
// Overlapping, replaced and removed subscriptions
// ---------------------------------------------------------------------------------------

/// MQTT-3.3.5-1 (3.1.1): a client whose subscriptions overlap gets one copy of a message, at
/// the highest QoS of the matching subscriptions (never above the message's).
#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos_v311() {
    let (_dir, broker) = start_broker("", &[]);
    let mut sub = C4::connect(&broker, "ov4");
    let codes =
        sub.subscribe_many(&[("ov/#", QoS4::AtMostOnce), ("ov/+", QoS4::ExactlyOnce), ("ov/x", QoS4::AtLeastOnce)]);
    assert_eq!(
        codes,
        [QoS4::AtMostOnce, QoS4::ExactlyOnce, QoS4::AtLeastOnce].map(rumqttc::SubscribeReasonCode::Success).to_vec()
    );
    let mut publisher = C4::connect(&broker, "ov4-pub");
    publisher.publish("ov/x", QoS4::ExactlyOnce, false, "two");
    publisher.publish("ov/x", QoS4::AtLeastOnce, false, "one");
    publisher.publish("ov/y/z", QoS4::ExactlyOnce, false, "deep"); // only `ov/#` (QoS 0)
    publisher.publish("ov/end", QoS4::AtMostOnce, false, "end");
    let got: Vec<(String, QoS4)> =
        sub.until("ov/end").into_iter().map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), p.qos)).collect();
    assert_eq!(
        got,
        vec![
            ("two".to_owned(), QoS4::ExactlyOnce),
            ("one".to_owned(), QoS4::AtLeastOnce),
            ("deep".to_owned(), QoS4::AtMostOnce)
        ]
    );
}

/// MQTT-3.3.4-2, MQTT-3.3.4-3, MQTT-3.3.4-4, MQTT-3.3.4-5 (5): overlapping plain
/// subscriptions of one session give one copy at their highest QoS carrying every matching
/// Subscription Identifier; a shared subscription of the same session is a separate copy
/// with its own identifier.
#[test]
fn overlapping_subscriptions_deliver_one_copy_with_every_identifier_v5() {
    let (_dir, broker) = start_broker("", &[]);
    let mut sub = C5::connect(&broker, "ov5");
    sub.subscribe_id("ov/#", QoS::AtMostOnce, Some(1));
    sub.subscribe_id("ov/+", QoS::AtLeastOnce, Some(2));
    sub.subscribe_id("ov/x", QoS::AtMostOnce, None);
    let mut publisher = C5::connect(&broker, "ov5-pub");
    publisher.publish("ov/x", QoS::ExactlyOnce, "overlap");
    publisher.publish("ov/end", QoS::AtMostOnce, "end");
    let got = sub.until("ov/end");
    assert_eq!(got.len(), 1, "one copy: {got:?}");
    assert_eq!((got[0].qos, ids(&got[0])), (QoS::AtLeastOnce, vec![1, 2]));

    sub.subscribe_id("$share/g/ov/x", QoS::ExactlyOnce, Some(3));
    publisher.publish("ov/x", QoS::ExactlyOnce, "with a share");
    publisher.publish("ov/end", QoS::AtMostOnce, "end");
    let mut got: Vec<(QoS, Vec<usize>)> = sub.until("ov/end").iter().map(|p| (p.qos, ids(p))).collect();
    got.sort_by_key(|(_, ids)| ids.clone());
    assert_eq!(got, vec![(QoS::AtLeastOnce, vec![1, 2]), (QoS::ExactlyOnce, vec![3])]);
}

/// MQTT-3.8.4-3 (3.1.1 and 5): a SUBSCRIBE to a filter the session already has replaces that
/// subscription (its QoS, its Subscription Identifier): still one subscription, one copy.
#[test]
fn a_second_subscribe_to_the_same_filter_replaces_it() {
    let (dir, broker) = start_broker("", &[]);
    let mut sub4 = C4::connect(&broker, "re4");
    sub4.subscribe("re/x", QoS4::ExactlyOnce);
    sub4.subscribe("re/x", QoS4::AtMostOnce);
    let mut sub5 = C5::connect(&broker, "re5");
    sub5.subscribe_id("re/x", QoS::ExactlyOnce, Some(1));
    sub5.subscribe_id("re/x", QoS::AtLeastOnce, Some(2));
    assert_eq!(stat(&dir, "subscriptions.count"), 2);

    let mut publisher = C5::connect(&broker, "re-pub");
    publisher.publish("re/x", QoS::ExactlyOnce, "a");
    publisher.publish("re/x", QoS::ExactlyOnce, "b");
    let got4: Vec<(Vec<u8>, QoS4)> = (0..2).map(|_| sub4.next_publish()).map(|p| (p.payload.to_vec(), p.qos)).collect();
    assert_eq!(
        got4,
        vec![(b"a".to_vec(), QoS4::AtMostOnce), (b"b".to_vec(), QoS4::AtMostOnce)],
        "one copy each, at QoS 0"
    );
    let got5: Vec<(String, QoS, Vec<usize>)> =
        (0..2).map(|_| sub5.next_publish()).map(|p| (payload(&p), p.qos, ids(&p))).collect();
    assert_eq!(
        got5,
        vec![("a".to_owned(), QoS::AtLeastOnce, vec![2]), ("b".to_owned(), QoS::AtLeastOnce, vec![2])],
        "one copy each, with the new subscription's QoS and identifier only"
    );
}

/// MQTT-3.10.4-1, MQTT-3.10.4-2, MQTT-3.10.4-4, MQTT-3.10.4-5, MQTT-3.10.4-6 (5): UNSUBSCRIBE
/// compares filters character by character (`un/+` does not remove `un/#`), stops delivery
/// for the removed one, and one UNSUBACK with the same packet id answers for every filter,
/// 0x11 (No subscription existed) for those never subscribed.
#[test]
fn unsubscribe_stops_delivery_v5() {
    let (_dir, broker) = start_broker("", &[]);
    let mut sub = C5::connect(&broker, "un5");
    sub.subscribe("un/#", QoS::AtLeastOnce);
    sub.subscribe("un/keep", QoS::AtLeastOnce);
    assert_eq!(
        sub.unsubscribe(&["un/+", "un/#", "un/never"]),
        vec![
            v5::UnsubAckReason::NoSubscriptionExisted,
            v5::UnsubAckReason::Success,
            v5::UnsubAckReason::NoSubscriptionExisted
        ]
    );
    let mut publisher = C5::connect(&broker, "un5-pub");
    publisher.publish("un/gone", QoS::AtLeastOnce, "gone");
    publisher.publish("un/keep", QoS::AtLeastOnce, "keep");
    assert_eq!(topic(&sub.next_publish()), "un/keep", "nothing for the removed subscription");
    assert_eq!(sub.unsubscribe(&["un/#"]), vec![v5::UnsubAckReason::NoSubscriptionExisted], "already gone");
}

/// MQTT-3.10.4-1, MQTT-3.10.4-2, MQTT-3.10.4-4, MQTT-3.10.4-5, MQTT-3.10.4-6 (3.1.1): the
/// same in MQTT 3.1.1: one UNSUBACK with the packet id, also when nothing was removed.
#[test]
fn unsubscribe_stops_delivery_v311() {
    let (_dir, broker) = start_broker("", &[]);
    let mut sub = C4::connect(&broker, "un4");
    sub.subscribe("un/#", QoS4::AtLeastOnce);
    sub.subscribe("un/keep", QoS4::AtLeastOnce);
    for (pkid, filters) in [(7u16, vec!["un/+", "un/#"]), (8, vec!["un/never"])] {
        let topics = filters.into_iter().map(str::to_owned).collect();
        sub.raw.send(&rumqttc::Packet::Unsubscribe(rumqttc::Unsubscribe { pkid, topics }));
        match sub.raw.recv() {
            rumqttc::Packet::UnsubAck(ack) => assert_eq!(ack.pkid, pkid),
            other => panic!("expected UNSUBACK {pkid}, got {other:?}"),
        }
    }
    let mut publisher = C4::connect(&broker, "un4-pub");
    publisher.publish("un/gone", QoS4::AtLeastOnce, false, "gone");
    publisher.publish("un/keep", QoS4::AtLeastOnce, false, "keep");
    assert_eq!(sub.next_publish().topic, "un/keep", "nothing for the removed subscription");
}

/// An UNSUBSCRIBE of `filter` with packet id 1 and the fixed-header flags `flags` (MQTT 5:
/// with an empty property block).
fn unsubscribe_bytes(flags: u8, v5: bool, filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    let mut out = vec![0xa0 | flags, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// MQTT-3.10.1-1 (3.1.1 and 5), MQTT-2.2.2-2 (3.1.1): the fixed-header flags of UNSUBSCRIBE
/// must be 0010; with any other value (0000, 0011, 1010) the packet is malformed and the
/// connection is closed (MQTT 5: after DISCONNECT 0x81); the UNSUBSCRIBE is not acted on: the
/// persistent session, resumed, still has the subscription and gets its messages. The same
/// bytes with flags 0010 are answered with UNSUBACK.
#[test]
fn unsubscribe_with_wrong_fixed_header_flags_closes_the_connection() {
    let (_dir, broker) = start_broker("", &[]);
    let mut publisher = C5::connect(&broker, "uf-pub");
    for flags in [0x00u8, 0x03, 0x0a] {
        let id = format!("uf4-{flags}");
        let filter = format!("uf/{id}");
        let (raw, _) = Raw::<V4>::connect(broker.addr, &connect4(&id, false));
        let mut c4 = C4 { raw, pkid: 10 };
        c4.subscribe(&filter, QoS4::AtLeastOnce);
        c4.raw.send_bytes(&unsubscribe_bytes(flags, false, &filter));
        assert_eq!(c4.raw.until_closed(), vec![], "3.1.1 UNSUBSCRIBE flags {flags:#06b}: closed, nothing sent");
        let (raw, ack) = Raw::<V4>::connect(broker.addr, &connect4(&id, false));
        assert!(ack.session_present, "{id}");
        let mut c4 = C4 { raw, pkid: 10 };
        publisher.publish(&filter, QoS::AtLeastOnce, "still subscribed");
        assert_eq!(text(&c4.next_publish().payload), "still subscribed", "{id}: the subscription is still there");
        c4.raw.send_bytes(&unsubscribe_bytes(0x02, false, &filter));
        assert!(matches!(c4.raw.recv(), rumqttc::Packet::UnsubAck(a) if a.pkid == 1), "{id}: flags 0010");

        let id = format!("uf5-{flags}");
        let filter = format!("uf/{id}");
        let (mut c5, _) = C5::connect_packet(&broker, &connect5(&id, true, expiry(60)));
        c5.subscribe(&filter, QoS::AtLeastOnce);
        c5.raw.send_bytes(&unsubscribe_bytes(flags, true, &filter));
        c5.expect_disconnect(v5::DisconnectReasonCode::MalformedPacket);
        let (mut c5, ack) = C5::connect_packet(&broker, &connect5(&id, false, expiry(60)));
        assert!(ack.session_present, "{id}");
        publisher.publish(&filter, QoS::AtLeastOnce, "still subscribed");
        assert_eq!(payload(&c5.next_publish()), "still subscribed", "{id}: the subscription is still there");
        c5.raw.send_bytes(&unsubscribe_bytes(0x02, true, &filter));
        match c5.raw.recv() {
            P5::UnsubAck(ack) => assert_eq!((ack.pkid, ack.reasons), (1, vec![v5::UnsubAckReason::Success]), "{id}"),
            other => panic!("{id}: expected UNSUBACK, got {other:?}"),
        }
    }
}

/// Waits until `client_id` has had a `message.acked` for each of `topics`.
fn wait_acked(file: &std::path::Path, client_id: &str, topics: &[&str]) {
    wait_until(&format!("message.acked for {client_id}: {topics:?}"), || {
        let events = recorded_events(file);
        topics
            .iter()
            .all(|t| {
                events.iter().any(|e| e["hook"] == "message.acked" && e["client_id"] == client_id && e["topic"] == *t)
            })
            .then_some(())
    });
}

/// MQTT-3.10.4-3 (3.1.1 and 5): deliveries under way when their subscription is removed are
/// completed. A subscriber holds back the PUBACK of a QoS 1 message and the PUBREC of a QoS 2
/// one, unsubscribes (the UNSUBACK is the next packet), then acknowledges: the broker answers
/// the PUBREC with PUBREL (MQTT 5: Success, not 0x92 Packet Identifier not found), and records
/// both deliveries as acknowledged (`message.acked`, which fires only for a message it still
/// had in flight); the connection goes on, and a later message on the topic is not sent.
#[test]
fn unsubscribe_completes_the_deliveries_under_way() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);
    let mut publisher = C5::connect(&broker, "ud-pub");

    let mut sub4 = C4::connect(&broker, "ud4");
    sub4.subscribe("ud4/#", QoS4::ExactlyOnce);
    sub4.subscribe("ud4-end", QoS4::AtLeastOnce);
    publisher.publish("ud4/one", QoS::AtLeastOnce, "one");
    publisher.publish("ud4/two", QoS::ExactlyOnce, "two");
    let mut under_way = Vec::new();
    for qos in [QoS4::AtLeastOnce, QoS4::ExactlyOnce] {
        match sub4.raw.recv() {
            rumqttc::Packet::Publish(p) if p.qos == qos => under_way.push(p.pkid),
            other => panic!("3.1.1: expected a PUBLISH at {qos:?}, got {other:?}"),
        }
    }
    sub4.raw.send(&rumqttc::Packet::Unsubscribe(rumqttc::Unsubscribe { pkid: 99, topics: vec!["ud4/#".into()] }));
    assert!(matches!(sub4.raw.recv(), rumqttc::Packet::UnsubAck(a) if a.pkid == 99), "3.1.1: the UNSUBACK");
    sub4.raw.send(&rumqttc::Packet::PubAck(rumqttc::PubAck::new(under_way[0])));
    sub4.raw.send(&rumqttc::Packet::PubRec(rumqttc::PubRec::new(under_way[1])));
    assert_eq!(sub4.raw.recv(), rumqttc::Packet::PubRel(rumqttc::PubRel::new(under_way[1])), "3.1.1: PUBREL");
    sub4.raw.send(&rumqttc::Packet::PubComp(rumqttc::PubComp::new(under_way[1])));
    sub4.raw.ping("3.1.1: the connection goes on");
    publisher.publish("ud4/three", QoS::AtLeastOnce, "three");
    publisher.publish("ud4-end", QoS::AtLeastOnce, "end");
    assert!(sub4.until("ud4-end").is_empty(), "3.1.1: nothing for the removed subscription");

    let mut sub5 = C5::connect(&broker, "ud5");
    sub5.subscribe("ud5/#", QoS::ExactlyOnce);
    sub5.subscribe("ud5-end", QoS::AtLeastOnce);
    publisher.publish("ud5/one", QoS::AtLeastOnce, "one");
    publisher.publish("ud5/two", QoS::ExactlyOnce, "two");
    let mut under_way = Vec::new();
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        match sub5.raw.recv() {
            P5::Publish(p) if p.qos == qos => under_way.push(p.pkid),
            other => panic!("5: expected a PUBLISH at {qos:?}, got {other:?}"),
        }
    }
    assert_eq!(sub5.unsubscribe(&["ud5/#"]), vec![v5::UnsubAckReason::Success]);
    sub5.raw.send(&P5::PubAck(v5::PubAck::new(under_way[0], None)));
    sub5.raw.send(&P5::PubRec(v5::PubRec::new(under_way[1], None)));
    match sub5.raw.recv() {
        P5::PubRel(rel) => assert_eq!((rel.pkid, rel.reason), (under_way[1], v5::PubRelReason::Success), "5: PUBREL"),
        other => panic!("5: expected PUBREL, got {other:?}"),
    }
    sub5.raw.send(&P5::PubComp(v5::PubComp::new(under_way[1], None)));
    sub5.raw.ping("5: the connection goes on");
    publisher.publish("ud5/three", QoS::AtLeastOnce, "three");
    publisher.publish("ud5-end", QoS::AtLeastOnce, "end");
    assert!(sub5.until("ud5-end").is_empty(), "5: nothing for the removed subscription");

    wait_acked(&file, "ud4", &["ud4/one", "ud4/two"]);
    wait_acked(&file, "ud5", &["ud5/one", "ud5/two"]);
}

// ---------------------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------------------

fn start_shared(strategy: &str) -> (DataDir, Broker) {
    start_broker("", &[("BROKER_BROKER__SHARED_SUBSCRIPTION_STRATEGY", strategy)])
}

/// Members of `$share/<group>/<path>`, each also subscribed to the plain `marker`.
fn members(broker: &Broker, name: &str, share: &str, marker: &str, qos: &[QoS]) -> Vec<C5> {
    qos.iter()
        .enumerate()
        .map(|(i, q)| {
            let mut c = C5::connect(broker, &format!("{name}-{i}"));
            c.subscribe(share, *q);
            c.subscribe(marker, QoS::AtLeastOnce);
            c
        })
        .collect()
}

fn numbers(got: &[v5::Publish]) -> Vec<u32> {
    got.iter().map(|p| payload(p).parse().expect("a numbered payload")).collect()
}

/// Asserts that `shares` (what each member got) hold every number below `n` exactly once.
fn each_once(shares: &[Vec<u32>], n: u32) {
    let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "each message to exactly one member: {shares:?}");
}

/// MQTT-4.8.2-3 (5): round_robin: the members of a share group take turns, and each gets the
/// message at the QoS it was granted.
#[test]
fn shared_round_robin_alternates_members() {
    let (_dir, broker) = start_shared("round_robin");
    let mut group = members(&broker, "rr", "$share/g/rr/x", "rr/end", &[QoS::AtMostOnce, QoS::AtLeastOnce]);
    let mut publisher = C5::connect(&broker, "rr-pub");
    for n in 0..8 {
        publisher.publish("rr/x", QoS::AtLeastOnce, &n.to_string());
    }
    publisher.publish("rr/end", QoS::AtLeastOnce, "end");
    let got: Vec<Vec<v5::Publish>> = group.iter_mut().map(|m| m.until("rr/end")).collect();
    let shares: Vec<Vec<u32>> = got.iter().map(|g| numbers(g)).collect();
    each_once(&shares, 8);
    for share in &shares {
        assert_eq!(share.len(), 4, "{shares:?}");
        assert!(share.windows(2).all(|w| w[1] == w[0] + 2), "alternating: {shares:?}");
    }
    assert!(got[0].iter().all(|p| p.qos == QoS::AtMostOnce), "granted QoS 0");
    assert!(got[1].iter().all(|p| p.qos == QoS::AtLeastOnce), "granted QoS 1");
}

/// random: every message goes to exactly one member of the group.
/// (MQTT 5 §4.8.2 leaves the choice of member to the Server; no numbered statement.)
#[test]
fn shared_random_gives_each_message_to_exactly_one_member() {
    let (_dir, broker) = start_shared("random");
    let mut group = members(&broker, "rnd", "$share/g/rnd/x", "rnd/end", &[QoS::AtLeastOnce; 3]);
    let mut publisher = C5::connect(&broker, "rnd-pub");
    for n in 0..30 {
        publisher.publish("rnd/x", QoS::AtLeastOnce, &n.to_string());
    }
    publisher.publish("rnd/end", QoS::AtLeastOnce, "end");
    let shares: Vec<Vec<u32>> = group.iter_mut().map(|m| numbers(&m.until("rnd/end"))).collect();
    each_once(&shares, 30);
    // All 30 at one member of three by chance: probability 3^-29.
    assert!(shares.iter().filter(|s| !s.is_empty()).count() > 1, "spread at random: {shares:?}");
}

/// sticky: one member gets every message while it stays subscribed; when it leaves, another
/// member gets them all. (No numbered statement: §4.8.2 leaves the choice to the Server.)
#[test]
fn shared_sticky_keeps_one_member_while_it_stays() {
    let (_dir, broker) = start_shared("sticky");
    let mut group = members(&broker, "st", "$share/g/st/x", "st/end", &[QoS::AtLeastOnce; 3]);
    let mut publisher = C5::connect(&broker, "st-pub");
    for n in 0..10 {
        publisher.publish("st/x", QoS::AtLeastOnce, &n.to_string());
    }
    publisher.publish("st/end", QoS::AtLeastOnce, "end");
    let shares: Vec<Vec<u32>> = group.iter_mut().map(|m| numbers(&m.until("st/end"))).collect();
    let sticky = shares.iter().position(|s| s.len() == 10).unwrap_or_else(|| panic!("all to one member: {shares:?}"));
    each_once(&shares, 10);

    assert_eq!(group[sticky].unsubscribe(&["$share/g/st/x"]), vec![v5::UnsubAckReason::Success]);
    for n in 10..20 {
        publisher.publish("st/x", QoS::AtLeastOnce, &n.to_string());
    }
    publisher.publish("st/end", QoS::AtLeastOnce, "end");
    let shares: Vec<Vec<u32>> = group.iter_mut().map(|m| numbers(&m.until("st/end"))).collect();
    assert!(shares[sticky].is_empty(), "the member that left gets nothing: {shares:?}");
    assert!(shares.iter().any(|s| *s == (10..20).collect::<Vec<_>>()), "all to one other member: {shares:?}");
}

/// hash: the member is chosen by the publisher's client id, so each publisher's messages all
/// go to one member. (No numbered statement: §4.8.2 leaves the choice to the Server.)
#[test]
fn shared_hash_keeps_each_publisher_at_one_member() {
    let (_dir, broker) = start_shared("hash");
    let mut group = members(&broker, "hs", "$share/g/hs/x", "hs/end", &[QoS::AtLeastOnce; 3]);
    let mut publishers: Vec<C5> = (0..4).map(|p| C5::connect(&broker, &format!("hash-publisher-{p}"))).collect();
    for n in 0..8 {
        for (p, publisher) in publishers.iter_mut().enumerate() {
            publisher.publish("hs/x", QoS::AtLeastOnce, &(p * 100 + n).to_string());
        }
    }
    publishers[0].publish("hs/end", QoS::AtLeastOnce, "end");
    let shares: Vec<Vec<u32>> = group.iter_mut().map(|m| numbers(&m.until("hs/end"))).collect();
    let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
    all.sort_unstable();
    let expected: Vec<u32> = (0..4u32).flat_map(|p| (0..8).map(move |n| p * 100 + n)).collect();
    assert_eq!(all, expected, "each message to exactly one member: {shares:?}");
    for p in 0..4u32 {
        let at: BTreeSet<usize> =
            shares.iter().enumerate().filter(|(_, s)| s.iter().any(|n| n / 100 == p)).map(|(m, _)| m).collect();
        assert_eq!(at.len(), 1, "publisher {p}'s messages at one member: {shares:?}");
        let share = &shares[*at.first().unwrap()];
        let own: Vec<u32> = share.iter().copied().filter(|n| n / 100 == p).collect();
        assert_eq!(own, (0..8).map(|n| p * 100 + n).collect::<Vec<_>>(), "in order");
    }
}

/// Share groups are independent: each group (`$share/g1`, `$share/g2`, EMQX's `$queue`) gets
/// one copy, split among its members, and a plain subscriber to the same filter gets its
/// own. (No numbered statement: MQTT 5 §4.8.2.)
#[test]
fn each_share_group_and_each_plain_subscriber_gets_a_copy() {
    let (_dir, broker) = start_shared("random");
    let q = [QoS::AtLeastOnce; 2];
    let mut g1 = members(&broker, "fan-g1", "$share/g1/fan/+", "fan-end", &q);
    let mut g2 = members(&broker, "fan-g2", "$share/g2/fan/x", "fan-end", &q[..1]);
    let mut queue = members(&broker, "fan-q", "$queue/fan/#", "fan-end", &q);
    let mut plain = members(&broker, "fan-plain", "fan/x", "fan-end", &q[..1]);
    let mut publisher = C5::connect(&broker, "fan-pub");
    for n in 0..12 {
        publisher.publish("fan/x", QoS::AtLeastOnce, &n.to_string());
    }
    publisher.publish("fan-end", QoS::AtLeastOnce, "end");
    for (name, group) in [("g1", &mut g1), ("g2", &mut g2), ("$queue", &mut queue), ("plain", &mut plain)] {
        let shares: Vec<Vec<u32>> = group.iter_mut().map(|m| numbers(&m.until("fan-end"))).collect();
        each_once(&shares, 12);
        if group.len() == 1 {
            assert_eq!(shares[0], (0..12).collect::<Vec<_>>(), "{name}: all, in order");
        }
    }
}

/// The next packet on `c`'s connection, which must be a PUBLISH (not acknowledged).
fn held(c: &mut C5) -> v5::Publish {
    match c.raw.recv() {
        P5::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// MQTT-4.8.2-4 (5): a QoS 2 delivery to a member of a share group whose connection breaks is
/// completed with that member when it reconnects: the message it had not acknowledged is sent
/// to it again (DUP 1, same packet id) and the one it had sent PUBREC for gets its PUBREL
/// again; the other member, connected and in the group meanwhile, gets neither.
#[test]
fn a_shared_qos_2_delivery_is_completed_with_its_member_after_a_reconnect() {
    let (dir, broker) = start_broker("", &[]);
    let share = "$share/g/sh4/x";
    let (mut first, _) = C5::connect_packet(&broker, &connect5("sh4-first", true, expiry(60)));
    first.subscribe(share, QoS::ExactlyOnce);
    first.subscribe("sh4/end", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "sh4-pub");
    publisher.publish("sh4/x", QoS::ExactlyOnce, "unacknowledged");
    publisher.publish("sh4/x", QoS::ExactlyOnce, "received");
    let unacknowledged = held(&mut first);
    let received = held(&mut first);
    assert_eq!((payload(&unacknowledged), payload(&received)), ("unacknowledged".into(), "received".into()));
    first.raw.send(&P5::PubRec(v5::PubRec::new(received.pkid, None)));
    assert!(matches!(first.raw.recv(), P5::PubRel(rel) if rel.pkid == received.pkid), "PUBREL");
    first.raw.drop_connection();

    let mut second = C5::connect(&broker, "sh4-second");
    second.subscribe(share, QoS::ExactlyOnce);
    second.subscribe("sh4/end", QoS::AtLeastOnce);
    wait_for_stat(&dir, "connections.count", 2); // the publisher and the second member

    let (mut first, ack) = C5::connect_packet(&broker, &connect5("sh4-first", false, expiry(60)));
    assert!(ack.session_present);
    let (mut resent, mut released) = (None, None);
    for _ in 0..2 {
        match first.raw.recv() {
            P5::Publish(p) => resent = Some(p),
            P5::PubRel(rel) => released = Some(rel.pkid),
            other => panic!("expected the PUBLISH and the PUBREL again, got {other:?}"),
        }
    }
    let resent = resent.expect("the unacknowledged message again");
    assert_eq!(
        (payload(&resent), resent.dup, resent.qos, resent.pkid),
        ("unacknowledged".to_owned(), true, QoS::ExactlyOnce, unacknowledged.pkid),
        "resent to the same member"
    );
    assert_eq!(released, Some(received.pkid), "PUBREL again for the message past PUBREC");
    first.raw.send(&P5::PubRec(v5::PubRec::new(resent.pkid, None)));
    assert!(matches!(first.raw.recv(), P5::PubRel(rel) if rel.pkid == resent.pkid));
    first.raw.send(&P5::PubComp(v5::PubComp::new(resent.pkid, None)));
    first.raw.send(&P5::PubComp(v5::PubComp::new(received.pkid, None)));

    publisher.publish("sh4/end", QoS::AtLeastOnce, "end");
    assert!(second.until("sh4/end").is_empty(), "the other member got neither message");
    assert!(first.until("sh4/end").is_empty(), "nothing else for the first member");
}

/// MQTT-4.8.2-5 (5): when the session of the member a QoS 2 message was being sent to ends
/// before the member reconnects (Session Expiry 1 s), the message is not sent to any other
/// member: the other member, in the group since before the connection broke, gets the next
/// message published to the group and not that one; the first member, back with a new
/// session, gets nothing.
#[test]
fn a_shared_qos_2_message_is_not_given_to_another_member_when_its_session_ends() {
    let (dir, broker) = start_broker("", &[]);
    let share = "$share/g/sh5/x";
    let (mut first, _) = C5::connect_packet(&broker, &connect5("sh5-first", true, expiry(1)));
    first.subscribe(share, QoS::ExactlyOnce);
    let mut publisher = C5::connect(&broker, "sh5-pub");
    publisher.publish("sh5/x", QoS::ExactlyOnce, "lost");
    assert_eq!(payload(&held(&mut first)), "lost");
    let mut second = C5::connect(&broker, "sh5-second");
    second.subscribe(share, QoS::ExactlyOnce);

    let sessions = stat(&dir, "sessions.count");
    first.raw.drop_connection();
    wait_for_stat(&dir, "sessions.count", sessions - 1); // the first member's session ended
    publisher.publish("sh5/x", QoS::ExactlyOnce, "next");
    assert_eq!(payload(&second.next_publish()), "next", "the other member never got the lost message");

    let (mut first, ack) = C5::connect_packet(&broker, &connect5("sh5-first", false, expiry(1)));
    assert!(!ack.session_present, "the session had ended");
    first.raw.ping("nothing for the new session");
}

/// MQTT-4.8.2-6 (5): a message a member of a share group refuses (PUBACK 0x80 at QoS 1,
/// PUBREC 0x80 at QoS 2) is discarded: it is not sent to the other member (in the group and
/// connected when the refusals come), nor again to the member that refused it, which gets no
/// PUBREL either.
#[test]
fn a_shared_message_a_member_refuses_is_not_sent_to_another() {
    let (_dir, broker) = start_broker("", &[]);
    let share = "$share/g/sh6/x";
    let mut first = C5::connect(&broker, "sh6-first");
    first.subscribe(share, QoS::ExactlyOnce);
    first.subscribe("sh6/end", QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "sh6-pub");
    publisher.publish("sh6/x", QoS::AtLeastOnce, "refused at QoS 1");
    publisher.publish("sh6/x", QoS::ExactlyOnce, "refused at QoS 2");
    let one = held(&mut first);
    let two = held(&mut first);
    assert_eq!((one.qos, two.qos), (QoS::AtLeastOnce, QoS::ExactlyOnce));
    let mut second = C5::connect(&broker, "sh6-second");
    second.subscribe(share, QoS::ExactlyOnce);
    second.subscribe("sh6/end", QoS::AtLeastOnce);

    let reason = v5::PubAckReason::UnspecifiedError;
    first.raw.send(&P5::PubAck(v5::PubAck { pkid: one.pkid, reason, properties: None }));
    let reason = v5::PubRecReason::UnspecifiedError;
    first.raw.send(&P5::PubRec(v5::PubRec { pkid: two.pkid, reason, properties: None }));
    first.raw.ping("the refusals are handled, and no PUBREL comes for the refused QoS 2 message");

    publisher.publish("sh6/end", QoS::AtLeastOnce, "end");
    assert!(second.until("sh6/end").is_empty(), "the other member got neither refused message");
    match first.raw.recv() {
        P5::Publish(p) => assert_eq!(topic(&p), "sh6/end", "nothing sent again to the member that refused"),
        other => panic!("expected the marker, got {other:?}"),
    }
}

/// MQTT 5 §4.8.2 (the Server SHOULD send it to another member), as EMQX 5 redispatches: when
/// a member's session ends (a clean session whose connection broke), the QoS 1 messages it had
/// in flight and those still queued for it (QoS 2 among them: never sent) go to another
/// member of the group, in order. The other member joined after they were given out.
#[test]
fn a_share_groups_messages_go_to_another_member_when_their_members_session_ends() {
    let (dir, broker) = start_broker("", &[("BROKER_MQTT__MAX_INFLIGHT", "2")]);
    let share = "$share/g/sh7/x";
    let mut first = C5::connect(&broker, "sh7-first");
    first.subscribe(share, QoS::ExactlyOnce);
    let mut publisher = C5::connect(&broker, "sh7-pub");
    for (n, qos) in [QoS::AtLeastOnce, QoS::AtLeastOnce, QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce]
        .into_iter()
        .enumerate()
    {
        publisher.publish("sh7/x", qos, &n.to_string());
    }
    // Two in flight (the window), unacknowledged; three queued.
    assert_eq!((payload(&held(&mut first)), payload(&held(&mut first))), ("0".into(), "1".into()));
    let mut second = C5::connect(&broker, "sh7-second");
    second.subscribe(share, QoS::ExactlyOnce);
    second.subscribe("sh7/end", QoS::AtLeastOnce);

    let sessions = stat(&dir, "sessions.count");
    first.raw.drop_connection();
    wait_for_stat(&dir, "sessions.count", sessions - 1);
    publisher.publish("sh7/end", QoS::AtLeastOnce, "end");
    let got = second.until("sh7/end");
    assert_eq!(numbers(&got), vec![0, 1, 2, 3, 4], "every message the ended member had not acknowledged");
    assert_eq!(got[3].qos, QoS::ExactlyOnce, "at the QoS the new member was granted");
    assert!(got.iter().all(|p| !p.dup), "a first delivery to the new member");
}

/// EMQX 5's redispatch when a member cannot take a message: a member whose queue is full
/// (here `mqueue_overflow = "drop_oldest"`) passes what it drops to another member of the
/// group rather than losing it; here a persistent member, offline, which gets it when it comes
/// back. The busy member holds one message in flight and three queued: of five, one is
/// dropped from its queue, and each of the five reaches exactly one member.
#[test]
fn a_share_groups_message_a_full_member_queue_drops_goes_to_another_member() {
    let env = [
        ("BROKER_MQTT__MAX_INFLIGHT", "1"),
        ("BROKER_MQTT__MAX_MQUEUE_LEN", "3"),
        ("BROKER_MQTT__MQUEUE_OVERFLOW", "drop_oldest"),
    ];
    let (dir, broker) = start_broker("", &env);
    let share = "$share/g/sh8/x";
    let (mut spare, _) = C5::connect_packet(&broker, &connect5("sh8-spare", true, expiry(60)));
    spare.subscribe(share, QoS::AtLeastOnce);
    spare.subscribe("sh8/end", QoS::AtLeastOnce);
    spare.raw.drop_connection();
    wait_for_stat(&dir, "connections.count", 0);

    let mut busy = C5::connect(&broker, "sh8-busy");
    busy.subscribe(share, QoS::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "sh8-pub");
    // The first in flight before the others come (else, on a busy machine, the queue may
    // fill before the busy member's connection took it, and two are dropped).
    publisher.publish("sh8/x", QoS::AtLeastOnce, "0");
    let first = held(&mut busy);
    for n in 1..5 {
        publisher.publish("sh8/x", QoS::AtLeastOnce, &n.to_string());
    }
    publisher.publish("sh8/end", QoS::AtLeastOnce, "end");

    let (mut spare, ack) = C5::connect_packet(&broker, &connect5("sh8-spare", false, expiry(60)));
    assert!(ack.session_present);
    let spares = numbers(&spare.until("sh8/end"));
    assert_eq!(spares, [1], "the one message the busy member's queue dropped, its oldest");

    busy.raw.send(&P5::PubAck(v5::PubAck { pkid: first.pkid, reason: v5::PubAckReason::Success, properties: None }));
    let mut busys = vec![first];
    busys.extend((0..3).map(|_| busy.next_publish()));
    busy.raw.ping("nothing more for the busy member");
    each_once(&[numbers(&busys), spares], 5);
    assert_eq!(stat(&dir, "delivery.dropped"), 0, "nothing lost");
}

/// MQTT-3.8.3-4, MQTT-4.13.1-1 (5): No Local on a shared subscription is a protocol error:
/// DISCONNECT 0x82, then the connection closes.
#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let (_dir, broker) = start_broker("", &[]);
    for share in ["$share/g/nl/x", "$queue/nl/x"] {
        let mut c = C5::connect(&broker, "nl-shared");
        let pkid = c.next_pkid();
        let filters = vec![filter(share, QoS::AtLeastOnce, true, false, v5::RetainForwardRule::OnEverySubscribe)];
        c.raw.send(&P5::Subscribe(v5::Subscribe { pkid, filters, properties: None }));
        c.expect_disconnect(v5::DisconnectReasonCode::ProtocolError);
    }
}

/// A shared subscription gets no retained messages (MQTT 5 §4.8.2; no numbered statement);
/// a plain subscription to the same filter does (MQTT-3.3.1-9 (5)).
#[test]
fn shared_subscriptions_get_no_retained_messages() {
    let (_dir, broker) = start_broker("{emqx_retainer, true}.\n", &[]);
    let mut publisher = C5::connect(&broker, "sr-pub");
    publisher.publish_retain("sr/x", QoS::AtLeastOnce, true, "retained");
    let mut sub = C5::connect(&broker, "sr-sub");
    sub.subscribe("sr-end", QoS::AtLeastOnce);
    sub.subscribe("$share/g/sr/x", QoS::AtLeastOnce);
    sub.subscribe("$queue/sr/#", QoS::AtLeastOnce);
    publisher.publish("sr-end", QoS::AtLeastOnce, "end");
    assert_eq!(sub.until("sr-end").len(), 0, "nothing retained for shared subscriptions");
    sub.subscribe("sr/#", QoS::AtLeastOnce);
    let p = sub.next_publish();
    assert_eq!((topic(&p), payload(&p), p.retain), ("sr/x".to_owned(), "retained".to_owned(), true));
}

/// `mqtt.shared_subscription = false` and `mqtt.wildcard_subscription = false`: CONNACK says
/// so (Shared / Wildcard Subscription Available 0), and such filters get SUBACK 0x9E / 0xA2
/// (MQTT 3.1.1: 0x80) while a plain filter is granted. (MQTT 5 §3.2.2.3.11-12, §3.9.3; no
/// numbered statement.)
#[test]
fn switched_off_shared_and_wildcard_subscriptions_are_refused() {
    let env = [("BROKER_MQTT__SHARED_SUBSCRIPTION", "false"), ("BROKER_MQTT__WILDCARD_SUBSCRIPTION", "false")];
    let (dir, broker) = start_broker("", &env);
    let (mut sub, connack) = C5::connect_with(&broker, "off5", None);
    let props = connack.properties.expect("CONNACK properties");
    assert_eq!(props.shared_subscription_available, Some(0));
    assert_eq!(props.wildcard_subscription_available, Some(0));
    let filters = ["$share/g/off/x", "off/+", "off/#", "$queue/off/x", "#", "off/x"];
    let codes = sub.subscribe_with(filters.iter().map(|f| v5::Filter::new(*f, QoS::AtLeastOnce)).collect(), None);
    use v5::SubscribeReasonCode as R;
    assert_eq!(
        codes,
        vec![
            R::SharedSubscriptionsNotSupported,
            R::WildcardSubscriptionsNotSupported,
            R::WildcardSubscriptionsNotSupported,
            R::SharedSubscriptionsNotSupported,
            R::WildcardSubscriptionsNotSupported,
            R::Success(QoS::AtLeastOnce),
        ]
    );
    let mut sub4 = C4::connect(&broker, "off4");
    let codes = sub4.subscribe_many(&[("$share/g/off/x", QoS4::AtLeastOnce), ("off/+", QoS4::AtLeastOnce)]);
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure; 2]);
    assert_eq!(stat(&dir, "subscriptions.count"), 1);
}

// ---------------------------------------------------------------------------------------
// Subscription options (MQTT 5) and the retain flag
// ---------------------------------------------------------------------------------------

/// MQTT-3.8.3-3 (5): with No Local a client is not sent its own messages; other clients'
/// messages arrive, and a subscriber without No Local gets both.
#[test]
fn no_local_keeps_a_clients_own_messages_from_it() {
    let (_dir, broker) = start_broker("", &[]);
    let mut own = C5::connect(&broker, "nl-own");
    let nl = filter("nl/x", QoS::AtLeastOnce, true, false, v5::RetainForwardRule::OnEverySubscribe);
    assert_eq!(own.subscribe_with(vec![nl], None), vec![v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let mut plain = C5::connect(&broker, "nl-plain");
    plain.subscribe("nl/x", QoS::AtLeastOnce);
    let mut other = C5::connect(&broker, "nl-other");

    own.publish("nl/x", QoS::AtLeastOnce, "mine"); // the PUBACK must come next, not "mine"
    other.publish("nl/x", QoS::AtLeastOnce, "theirs");
    assert_eq!(payload(&own.next_publish()), "theirs", "its own message was not sent back");
    let got: Vec<String> = (0..2).map(|_| payload(&plain.next_publish())).collect();
    assert_eq!(got, ["mine", "theirs"], "No Local applies to the publishing client only");
}

/// A message whose only matching subscription is its publisher's own with No Local matched a
/// subscription: PUBACK 0x00, as EMQX and mosquitto answer, not 0x10 No matching subscribers;
/// the copy not sent is counted as EMQX 4.3 counts it (`delivery.dropped.no_local`), not as a
/// message without subscribers. Without that subscription the PUBACK says 0x10.
#[test]
fn a_message_only_its_publishers_no_local_subscription_matched_is_acknowledged_as_matched() {
    let (dir, broker) = start_broker("", &[]);
    let mut own = C5::connect(&broker, "nlm-own");
    let nl = filter("nlm/x", QoS::AtLeastOnce, true, false, v5::RetainForwardRule::OnEverySubscribe);
    assert_eq!(own.subscribe_with(vec![nl], None), vec![v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    match own.publish_retain("nlm/x", QoS::AtLeastOnce, false, "mine") {
        Some(P5::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::Success, "{ack:?}"),
        other => panic!("PUBACK expected, got {other:?}"),
    }
    match own.publish_retain("nlm/nobody", QoS::AtLeastOnce, false, "nobody") {
        Some(P5::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::NoMatchingSubscribers, "{ack:?}"),
        other => panic!("PUBACK expected, got {other:?}"),
    }
    wait_for_stat(&dir, "delivery.dropped.no_local", 1);
    assert_eq!(stat(&dir, "messages.dropped.no_subscribers"), 1, "nlm/nobody's only");
    // Nothing came back to the publisher: the next packet is the answer to its PINGREQ.
    own.raw.send(&P5::PingReq(v5::PingReq));
    assert!(matches!(own.raw.recv(), P5::PingResp(_)), "its own message was not sent back");
}

/// MQTT-3.3.1-12, MQTT-3.3.1-13 (5): a live message keeps its RETAIN flag only for a Retain
/// As Published subscription; MQTT-3.3.1-9 (3.1.1): an MQTT 3.1.1 subscriber always gets a
/// forwarded message with RETAIN 0.
#[test]
fn retain_as_published_decides_the_retain_flag_of_forwarded_messages() {
    let (_dir, broker) = start_broker("", &[]);
    let mut keeps = C5::connect(&broker, "rap-1");
    let rap = filter("rap/#", QoS::AtLeastOnce, false, true, v5::RetainForwardRule::OnEverySubscribe);
    keeps.subscribe_with(vec![rap], None);
    let mut clears = C5::connect(&broker, "rap-0");
    clears.subscribe("rap/#", QoS::AtLeastOnce);
    let mut v311 = C4::connect(&broker, "rap-4");
    v311.subscribe("rap/#", QoS4::AtLeastOnce);

    let mut publisher = C5::connect(&broker, "rap-pub");
    publisher.publish_retain("rap/r", QoS::AtLeastOnce, true, "retained");
    publisher.publish_retain("rap/n", QoS::AtLeastOnce, false, "plain");
    let flags = |c: &mut C5| (0..2).map(|_| c.next_publish()).map(|p| (topic(&p), p.retain)).collect::<Vec<_>>();
    assert_eq!(flags(&mut keeps), vec![("rap/r".to_owned(), true), ("rap/n".to_owned(), false)]);
    assert_eq!(flags(&mut clears), vec![("rap/r".to_owned(), false), ("rap/n".to_owned(), false)]);
    let got: Vec<(String, bool)> = (0..2).map(|_| v311.next_publish()).map(|p| (p.topic, p.retain)).collect();
    assert_eq!(got, vec![("rap/r".to_owned(), false), ("rap/n".to_owned(), false)]);
}

/// MQTT-3.3.1-9, MQTT-3.3.1-10, MQTT-3.3.1-11, MQTT-3.8.4-4 (5), with `emqx_retainer`:
/// Retain Handling 0 sends the retained message on every SUBSCRIBE (also one that replaces a
/// subscription), 1 only for a new subscription, 2 never. Each retained message has RETAIN 1
/// and the Subscription Identifier of the SUBSCRIBE that caused it; the live messages that
/// follow carry the identifiers of the replacing subscriptions.
#[test]
fn retain_handling_decides_which_subscribes_get_retained_messages() {
    let (_dir, broker) = start_broker("{emqx_retainer, true}.\n", &[]);
    let mut publisher = C5::connect(&broker, "rh-pub");
    publisher.publish_retain("rh/x", QoS::AtLeastOnce, true, "kept");
    let mut sub = C5::connect(&broker, "rh-sub");
    sub.subscribe("mark", QoS::AtLeastOnce);
    let mut retained_after = |sub: &mut C5, f: &str, rh: v5::RetainForwardRule, id: usize| {
        let codes = sub.subscribe_with(vec![filter(f, QoS::AtLeastOnce, false, false, rh)], Some(id));
        assert_eq!(codes, vec![v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        publisher.publish("mark", QoS::AtLeastOnce, "mark");
        sub.until("mark").iter().map(|p| (topic(p), payload(p), p.retain, ids(p))).collect::<Vec<_>>()
    };
    let kept = |id: usize| vec![("rh/x".to_owned(), "kept".to_owned(), true, vec![id])];
    use v5::RetainForwardRule::*;
    assert_eq!(retained_after(&mut sub, "rh/#", OnEverySubscribe, 7), kept(7), "RH 0, new subscription");
    assert_eq!(retained_after(&mut sub, "rh/#", OnEverySubscribe, 8), kept(8), "RH 0, existing subscription");
    assert_eq!(retained_after(&mut sub, "rh/+", OnNewSubscribe, 9), kept(9), "RH 1, new subscription");
    assert_eq!(retained_after(&mut sub, "rh/+", OnNewSubscribe, 10), vec![], "RH 1, existing subscription");
    assert_eq!(retained_after(&mut sub, "rh/x", Never, 11), vec![], "RH 2");

    publisher.publish_retain("rh/x", QoS::AtLeastOnce, true, "live");
    let p = sub.next_publish();
    assert_eq!((payload(&p), p.retain, ids(&p)), ("live".to_owned(), false, vec![8, 10, 11]));
}

// ---------------------------------------------------------------------------------------
// What routing answers the publisher, ACL, plugins
// ---------------------------------------------------------------------------------------

/// MQTT-3.3.4-1 (5): a QoS 1/2 PUBLISH is answered by PUBACK / PUBREC; when no subscription
/// matched, with reason 0x10 (No matching subscribers, §3.4.2.1), and 0x00 once one does.
#[test]
fn no_matching_subscribers_is_said_in_the_ack() {
    let (_dir, broker) = start_broker("", &[]);
    let mut publisher = C5::connect(&broker, "nm-pub");
    match publisher.publish_retain("nm/x", QoS::AtLeastOnce, false, "1") {
        Some(P5::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
    match publisher.publish_retain("nm/x", QoS::ExactlyOnce, false, "2") {
        Some(P5::PubRec(rec)) => assert_eq!(rec.reason, v5::PubRecReason::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
    let mut sub = C5::connect(&broker, "nm-sub");
    sub.subscribe("nm/#", QoS::AtLeastOnce);
    match publisher.publish_retain("nm/x", QoS::AtLeastOnce, false, "3") {
        Some(P5::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::Success),
        other => panic!("{other:?}"),
    }
    match publisher.publish_retain("nm/x", QoS::ExactlyOnce, false, "4") {
        Some(P5::PubRec(rec)) => assert_eq!(rec.reason, v5::PubRecReason::Success),
        other => panic!("{other:?}"),
    }
    assert_eq!(numbers(&[sub.next_publish(), sub.next_publish()]), vec![3, 4]);
}

const ACL: &str = "{deny, all, publish, [\"secret/#\"]}.\n{deny, all, subscribe, [\"hidden/#\"]}.\n{allow, all}.\n";

/// `emqx_mod_acl_internal` denies: MQTT-3.8.4-6/MQTT-3.8.4-7 (5): a denied filter gets SUBACK
/// 0x87 in its slot, the others are granted; MQTT-3.8.4-5, MQTT-3.9.3-1 (3.1.1): 0x80. A
/// denied PUBLISH gets PUBACK / PUBREC 0x87 (MQTT 5) and is not delivered;
/// MQTT-3.3.5-2 (3.1.1): an MQTT 3.1.1 publisher gets a positive acknowledgement and the
/// message is dropped.
#[test]
fn acl_denials_are_acknowledged_and_nothing_is_delivered() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write("acl.conf", ACL);
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("3 rules loaded from");

    let mut sub5 = C5::connect(&broker, "acl-sub5");
    let codes = sub5.subscribe_with(
        vec![v5::Filter::new("hidden/x", QoS::AtLeastOnce), v5::Filter::new("#", QoS::AtLeastOnce)],
        None,
    );
    assert_eq!(codes, vec![v5::SubscribeReasonCode::NotAuthorized, v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let mut sub4 = C4::connect(&broker, "acl-sub4");
    let codes = sub4.subscribe_many(&[("hidden/#", QoS4::AtLeastOnce), ("#", QoS4::AtLeastOnce)]);
    assert_eq!(
        codes,
        vec![rumqttc::SubscribeReasonCode::Failure, rumqttc::SubscribeReasonCode::Success(QoS4::AtLeastOnce)]
    );

    let mut pub5 = C5::connect(&broker, "acl-pub5");
    match pub5.publish_retain("secret/x", QoS::AtLeastOnce, false, "leak1") {
        Some(P5::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized),
        other => panic!("{other:?}"),
    }
    match pub5.publish_retain("secret/x", QoS::ExactlyOnce, false, "leak2") {
        Some(P5::PubRec(rec)) => assert_eq!(rec.reason, v5::PubRecReason::NotAuthorized),
        other => panic!("{other:?}"),
    }
    pub5.publish("secret/x", QoS::AtMostOnce, "leak0");
    let mut pub4 = C4::connect(&broker, "acl-pub4");
    pub4.publish("secret/x", QoS4::AtLeastOnce, false, "leak3"); // asserts the PUBACK
    pub4.publish("secret/x", QoS4::ExactlyOnce, false, "leak4"); // PUBREC, PUBREL, PUBCOMP
    pub4.publish("open/x", QoS4::AtLeastOnce, false, "marker");
    assert_eq!(topic(&sub5.next_publish()), "open/x", "no denied message reached the MQTT 5 subscriber");
    assert_eq!(sub4.next_publish().topic, "open/x", "nor the MQTT 3.1.1 one");
}

/// MQTT-3.3.4-1 (5): a message a plugin drops in `message.publish` (the gatekeeper's
/// `drop_topics`) is still acknowledged to its publisher at every QoS, and reaches no
/// subscriber.
#[test]
fn a_message_dropped_by_a_plugin_is_acknowledged_but_not_delivered() {
    let dir = DataDir::with_plugins("{gatekeeper, true}.\n");
    dir.write("broker.toml", "[gatekeeper]\ndrop_topics = [\"drop/#\"]\n");
    let broker = Broker::start(&dir, &[]);
    let mut sub = C5::connect(&broker, "gk-sub");
    sub.subscribe("#", QoS::ExactlyOnce);
    let mut publisher = C5::connect(&broker, "gk-pub");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher.publish("drop/x", qos, "dropped"); // asserts a success code for QoS 1/2
    }
    let mut pub4 = C4::connect(&broker, "gk-pub4");
    pub4.publish("drop/y", QoS4::ExactlyOnce, false, "dropped");
    publisher.publish("keep/x", QoS::AtLeastOnce, "kept");
    let p = sub.next_publish();
    assert_eq!((topic(&p), payload(&p)), ("keep/x".to_owned(), "kept".to_owned()), "the dropped ones never came");
}

/// MQTT-4.7.2-1, MQTT-3.8.4-8 (5): a message a plugin publishes as the broker itself
/// (`broker ctl gatekeeper publish '$SYS/test' 2 hi`) reaches an MQTT 5 `mosquitto_sub` on
/// `$SYS/#` at QoS 2, and not a subscriber to `#`.
#[test]
fn a_message_published_by_a_plugin_reaches_sys_subscribers_at_qos2() {
    let (dir, broker) = start_broker("{gatekeeper, true}.\n", &[]);
    let mut hash = C5::connect(&broker, "sys-hash");
    hash.subscribe("#", QoS::ExactlyOnce);
    let mut child = mosquitto("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-V", "mqttv5", "-q", "2"])
        .args(["-t", "$SYS/#", "-i", "sys-mosq", "-C", "1", "-W", "20", "-F", "%q %t %p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    wait_for_stat(&dir, "subscriptions.count", 2); // mosquitto_sub's subscription is in
    let out = dir.ctl(&["gatekeeper", "publish", "$SYS/test", "2", "hi"]).ok();
    assert!(out.contains("published"), "{out}");
    let status = child.wait().unwrap();
    let mut printed = String::new();
    child.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    assert!(status.success(), "mosquitto_sub: {status}, printed {printed:?}");
    assert_eq!(printed.trim_end(), "2 $SYS/test hi", "QoS, topic and payload");

    let mut publisher = C5::connect(&broker, "sys-pub");
    publisher.publish("sys/marker", QoS::AtLeastOnce, "marker");
    assert_eq!(topic(&hash.next_publish()), "sys/marker", "`#` does not match $SYS/test");
}
