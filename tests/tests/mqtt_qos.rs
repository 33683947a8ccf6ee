//! Delivery guarantees, MQTT 3.1.1 and 5, seen on the wire with raw connections: the QoS 0, 1
//! and 2 flows both ways (packet ids, DUP, acknowledgements), QoS 2 de-duplication, PUBREL for
//! an unknown id, the delivered QoS (minimum of published and granted, or the subscription's
//! with `mqtt.upgrade_qos`), `mqtt.max_qos_allowed`, the outbound inflight window
//! (`mqtt.max_inflight`, the client's Receive Maximum), packet ids never reused while in
//! flight, resending on reconnect (also after the message's expiry) and, to MQTT 3.1.1 clients
//! only, while connected (`mqtt.retry_interval`), the broker's own Receive
//! Maximum (`mqtt.max_awaiting_rel`), QoS 2 flows after a refusal or an expiry, and message
//! order.
//!
//! "Nothing more is sent" is shown with two PINGREQs: the broker handles the first after every
//! message in question was queued for the client, so anything it would send appears before the
//! second PINGRESP.

use std::collections::{HashMap, HashSet};

use e2e::raw::{connect4, connect5, v5, Raw, Wire, V4, V5};
use e2e::{stat, text, wait_for_stat, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{Packet as P4, QoS};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The broker sends nothing before answering two PINGREQs in a row.
fn quiet<W: Wire>(raw: &mut Raw<W>, what: &str) {
    raw.ping(what);
    raw.ping(what);
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 helpers

fn conn4(broker: &Broker, id: &str, clean: bool) -> (Raw<V4>, bool) {
    let (raw, ack) = Raw::<V4>::connect(broker.addr, &connect4(id, clean));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{id}: CONNACK");
    (raw, ack.session_present)
}

/// Subscribes to one filter; returns the SUBACK's return code.
fn sub4(raw: &mut Raw<V4>, pkid: u16, filter: &str, qos: QoS) -> rumqttc::SubscribeReasonCode {
    let filters = vec![rumqttc::SubscribeFilter::new(filter.to_owned(), qos)];
    raw.send(&P4::Subscribe(rumqttc::Subscribe { pkid, filters }));
    match raw.recv() {
        P4::SubAck(ack) => {
            assert_eq!(ack.pkid, pkid, "SUBACK for the SUBSCRIBE");
            ack.return_codes[0]
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn publish4(topic: &str, qos: QoS, pkid: u16, payload: &str, dup: bool) -> P4 {
    let mut publish = rumqttc::Publish::new(topic, qos, payload.as_bytes().to_vec());
    publish.pkid = pkid;
    publish.dup = dup;
    P4::Publish(publish)
}

/// Publishes and completes the flow of its QoS (checking every acknowledgement's id).
fn publish_flow4(raw: &mut Raw<V4>, topic: &str, qos: QoS, pkid: u16, payload: &str) {
    raw.send(&publish4(topic, qos, pkid, payload, false));
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => match raw.recv() {
            P4::PubAck(ack) => assert_eq!(ack.pkid, pkid, "PUBACK for {payload}"),
            other => panic!("expected PUBACK for {payload}, got {other:?}"),
        },
        QoS::ExactlyOnce => {
            match raw.recv() {
                P4::PubRec(ack) => assert_eq!(ack.pkid, pkid, "PUBREC for {payload}"),
                other => panic!("expected PUBREC for {payload}, got {other:?}"),
            }
            raw.send(&P4::PubRel(rumqttc::PubRel::new(pkid)));
            match raw.recv() {
                P4::PubComp(ack) => assert_eq!(ack.pkid, pkid, "PUBCOMP for {payload}"),
                other => panic!("expected PUBCOMP for {payload}, got {other:?}"),
            }
        }
    }
}

fn expect_publish4(raw: &mut Raw<V4>) -> rumqttc::Publish {
    match raw.recv() {
        P4::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Receives `n` PUBLISHes, acknowledging each (PUBACK; PUBREC, then PUBCOMP for the PUBREL),
/// and returns them once every QoS 2 flow is complete.
fn collect4(raw: &mut Raw<V4>, n: usize) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    let mut releasing = HashSet::new();
    while got.len() < n || !releasing.is_empty() {
        match raw.recv() {
            P4::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => raw.send(&P4::PubAck(rumqttc::PubAck::new(p.pkid))),
                    QoS::ExactlyOnce => {
                        assert!(releasing.insert(p.pkid), "packet id {} reused while in flight", p.pkid);
                        raw.send(&P4::PubRec(rumqttc::PubRec::new(p.pkid)));
                    }
                }
                got.push(p);
            }
            P4::PubRel(rel) => {
                assert!(releasing.remove(&rel.pkid), "PUBREL for {} which is not awaiting it", rel.pkid);
                raw.send(&P4::PubComp(rumqttc::PubComp::new(rel.pkid)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 helpers

fn conn5(broker: &Broker, id: &str, clean: bool, properties: Option<v5::ConnectProperties>) -> (Raw<V5>, v5::ConnAck) {
    let (raw, ack) = Raw::<V5>::connect(broker.addr, &connect5(id, clean, properties));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success, "{id}: CONNACK");
    (raw, ack)
}

fn props5(session_expiry: Option<u32>, receive_maximum: Option<u16>) -> Option<v5::ConnectProperties> {
    let mut p = v5::ConnectProperties::new();
    p.session_expiry_interval = session_expiry;
    p.receive_maximum = receive_maximum;
    Some(p)
}

fn sub5(raw: &mut Raw<V5>, pkid: u16, filter: &str, qos: Q5) -> v5::SubscribeReasonCode {
    let mut subscribe = v5::Subscribe::new(v5::Filter::new(filter, qos), None);
    subscribe.pkid = pkid;
    raw.send(&v5::Packet::Subscribe(subscribe));
    match raw.recv() {
        v5::Packet::SubAck(ack) => {
            assert_eq!(ack.pkid, pkid, "SUBACK for the SUBSCRIBE");
            ack.return_codes[0]
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn publish5(topic: &str, qos: Q5, pkid: u16, payload: &str, dup: bool) -> v5::Packet {
    let mut publish = v5::Publish::new(topic, qos, payload.as_bytes().to_vec(), None);
    publish.pkid = pkid;
    publish.dup = dup;
    v5::Packet::Publish(publish)
}

/// A PUBLISH with a Message Expiry Interval of `seconds`.
fn expiring5(topic: &str, qos: Q5, pkid: u16, payload: &str, seconds: u32) -> v5::Packet {
    let properties = v5::PublishProperties { message_expiry_interval: Some(seconds), ..Default::default() };
    let mut publish = v5::Publish::new(topic, qos, payload.as_bytes().to_vec(), Some(properties));
    publish.pkid = pkid;
    v5::Packet::Publish(publish)
}

/// Publishes at QoS 2 and completes the flow, asserting every acknowledgement is a success.
fn publish_flow5(raw: &mut Raw<V5>, publish: v5::Packet) {
    let v5::Packet::Publish(p) = &publish else { unreachable!() };
    let pkid = p.pkid;
    raw.send(&publish);
    assert!(matches!(raw.recv(), v5::Packet::PubRec(a) if a.pkid == pkid && a.reason == v5::PubRecReason::Success));
    raw.send(&v5::Packet::PubRel(v5::PubRel::new(pkid, None)));
    assert!(matches!(raw.recv(), v5::Packet::PubComp(a) if a.pkid == pkid && a.reason == v5::PubCompReason::Success));
}

/// Returns once more than a second has passed since it was called, as the broker counts time:
/// a session with a Session Expiry Interval of 1 s, whose client disconnects now, has ended.
fn a_second_passes(dir: &DataDir, broker: &Broker) {
    let sessions = stat(dir, "sessions.count");
    let (mut clock, _) = conn5(broker, &format!("clock-{}", e2e::unique()), true, props5(Some(1), None));
    clock.disconnect(v5::DisconnectReasonCode::NormalDisconnection);
    wait_for_stat(dir, "sessions.count", sessions);
}

fn expect_publish5(raw: &mut Raw<V5>) -> v5::Publish {
    match raw.recv() {
        v5::Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn puback5(pkid: u16) -> v5::Packet {
    v5::Packet::PubAck(v5::PubAck::new(pkid, None))
}

fn pubrec5(pkid: u16, reason: v5::PubRecReason) -> v5::Packet {
    v5::Packet::PubRec(v5::PubRec { pkid, reason, properties: None })
}

fn pubcomp5(pkid: u16) -> v5::Packet {
    v5::Packet::PubComp(v5::PubComp::new(pkid, None))
}

fn collect5(raw: &mut Raw<V5>, n: usize) -> Vec<v5::Publish> {
    let mut got = Vec::new();
    let mut releasing = HashSet::new();
    while got.len() < n || !releasing.is_empty() {
        match raw.recv() {
            v5::Packet::Publish(p) => {
                match p.qos {
                    Q5::AtMostOnce => {}
                    Q5::AtLeastOnce => raw.send(&puback5(p.pkid)),
                    Q5::ExactlyOnce => {
                        assert!(releasing.insert(p.pkid), "packet id {} reused while in flight", p.pkid);
                        raw.send(&pubrec5(p.pkid, v5::PubRecReason::Success));
                    }
                }
                got.push(p);
            }
            v5::Packet::PubRel(rel) => {
                assert!(releasing.remove(&rel.pkid), "PUBREL for {} which is not awaiting it", rel.pkid);
                raw.send(&pubcomp5(rel.pkid));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------
// The flows

/// MQTT 3.1.1: MQTT-3.3.4-1, MQTT-2.3.1-6, MQTT-2.3.1-5, MQTT-3.3.1-2, MQTT-3.3.1-3,
/// MQTT-4.3.1-1, MQTT-4.3.2-1, MQTT-4.3.2-2, MQTT-4.3.3-1, MQTT-4.3.3-2.
/// The broker as receiver: no answer to QoS 0, PUBACK for QoS 1, PUBREC then PUBCOMP for QoS 2,
/// each with the PUBLISH's packet id; a QoS 1 or QoS 2 id acknowledged (PUBACK / PUBCOMP) is a
/// new message when used again (and its DUP 1 is not passed on). The broker as sender: QoS 0
/// with DUP 0 and no packet id; QoS 1 and 2 with a non-zero id and DUP 0; PUBREL for the
/// subscriber's PUBREC with the same id.
#[test]
fn qos_0_1_2_flows_both_ways_v311() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, _) = conn4(&broker, "flow4-sub", true);
    assert_eq!(sub4(&mut sub, 1, "flow/#", QoS::ExactlyOnce), rumqttc::SubscribeReasonCode::Success(QoS::ExactlyOnce));
    let (mut publisher, _) = conn4(&broker, "flow4-pub", true);

    // QoS 0: no acknowledgement (the PINGRESP is the next packet).
    publisher.send(&publish4("flow/0", QoS::AtMostOnce, 0, "zero", false));
    publisher.send(&P4::PingReq);
    assert_eq!(publisher.recv(), P4::PingResp, "no acknowledgement for QoS 0");
    let p = expect_publish4(&mut sub);
    // A packet id in a QoS 0 PUBLISH would have been read as the start of the payload.
    assert_eq!((p.topic.as_str(), p.qos, p.dup, text(&p.payload)), ("flow/0", QoS::AtMostOnce, false, "zero".into()));

    // QoS 1: PUBACK with the id; delivered with an id of the broker's, DUP 0.
    publisher.send(&publish4("flow/1", QoS::AtLeastOnce, 0x1234, "one", false));
    assert_eq!(publisher.recv(), P4::PubAck(rumqttc::PubAck::new(0x1234)));
    let p = expect_publish4(&mut sub);
    assert_eq!((p.topic.as_str(), p.qos, p.dup, text(&p.payload)), ("flow/1", QoS::AtLeastOnce, false, "one".into()));
    assert_ne!(p.pkid, 0);
    sub.send(&P4::PubAck(rumqttc::PubAck::new(p.pkid)));

    // The same id again after its PUBACK, even with DUP set: a new message.
    publisher.send(&publish4("flow/1", QoS::AtLeastOnce, 0x1234, "one again", true));
    assert_eq!(publisher.recv(), P4::PubAck(rumqttc::PubAck::new(0x1234)));
    let p = expect_publish4(&mut sub);
    assert_eq!((p.qos, p.dup, text(&p.payload)), (QoS::AtLeastOnce, false, "one again".into()));
    assert_ne!(p.pkid, 0);
    sub.send(&P4::PubAck(rumqttc::PubAck::new(p.pkid)));

    // QoS 2: PUBREC, PUBREL, PUBCOMP, all with the id.
    publisher.send(&publish4("flow/2", QoS::ExactlyOnce, 0x4321, "two", false));
    assert_eq!(publisher.recv(), P4::PubRec(rumqttc::PubRec::new(0x4321)));
    publisher.send(&P4::PubRel(rumqttc::PubRel::new(0x4321)));
    assert_eq!(publisher.recv(), P4::PubComp(rumqttc::PubComp::new(0x4321)));
    let p = expect_publish4(&mut sub);
    assert_eq!((p.topic.as_str(), p.qos, p.dup, text(&p.payload)), ("flow/2", QoS::ExactlyOnce, false, "two".into()));
    assert_ne!(p.pkid, 0);
    sub.send(&P4::PubRec(rumqttc::PubRec::new(p.pkid)));
    assert_eq!(sub.recv(), P4::PubRel(rumqttc::PubRel::new(p.pkid)), "PUBREL with the PUBLISH's id");
    sub.send(&P4::PubComp(rumqttc::PubComp::new(p.pkid)));

    // After PUBCOMP the id starts a new message.
    publish_flow4(&mut publisher, "flow/2", QoS::ExactlyOnce, 0x4321, "two again");
    let p = expect_publish4(&mut sub);
    assert_eq!((p.qos, p.dup, text(&p.payload)), (QoS::ExactlyOnce, false, "two again".into()));
    sub.send(&P4::PubRec(rumqttc::PubRec::new(p.pkid)));
    assert_eq!(sub.recv(), P4::PubRel(rumqttc::PubRel::new(p.pkid)));
    sub.send(&P4::PubComp(rumqttc::PubComp::new(p.pkid)));
    quiet(&mut sub, "every flow complete");
}

/// MQTT 5: MQTT-3.3.4-1, MQTT-2.2.1-2, MQTT-2.2.1-4, MQTT-2.2.1-5, MQTT-3.3.1-2,
/// MQTT-3.3.1-3, MQTT-4.3.1-1, MQTT-4.3.2-1/-2/-4/-5, MQTT-4.3.3-1/-2/-4/-8/-11/-12,
/// MQTT-3.4.2-1, MQTT-3.5.2-1, MQTT-3.6.2-1, MQTT-3.7.2-1.
/// The same flows as for 3.1.1, with the acknowledgements' reason codes (0x00 Success).
#[test]
fn qos_0_1_2_flows_both_ways_v5() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, _) = conn5(&broker, "flow5-sub", true, None);
    assert_eq!(sub5(&mut sub, 1, "flow/#", Q5::ExactlyOnce), v5::SubscribeReasonCode::Success(Q5::ExactlyOnce));
    let (mut publisher, _) = conn5(&broker, "flow5-pub", true, None);

    publisher.send(&publish5("flow/0", Q5::AtMostOnce, 0, "zero", false));
    publisher.send(&v5::Packet::PingReq(v5::PingReq));
    assert!(matches!(publisher.recv(), v5::Packet::PingResp(_)), "no acknowledgement for QoS 0");
    let p = expect_publish5(&mut sub);
    assert_eq!((&p.topic[..], p.qos, p.dup, text(&p.payload)), (&b"flow/0"[..], Q5::AtMostOnce, false, "zero".into()));

    publisher.send(&publish5("flow/1", Q5::AtLeastOnce, 0x1234, "one", false));
    match publisher.recv() {
        v5::Packet::PubAck(ack) => assert_eq!((ack.pkid, ack.reason), (0x1234, v5::PubAckReason::Success)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let p = expect_publish5(&mut sub);
    assert_eq!((&p.topic[..], p.qos, p.dup, text(&p.payload)), (&b"flow/1"[..], Q5::AtLeastOnce, false, "one".into()));
    assert_ne!(p.pkid, 0);
    sub.send(&puback5(p.pkid));

    publisher.send(&publish5("flow/1", Q5::AtLeastOnce, 0x1234, "one again", true));
    match publisher.recv() {
        v5::Packet::PubAck(ack) => assert_eq!((ack.pkid, ack.reason), (0x1234, v5::PubAckReason::Success)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let p = expect_publish5(&mut sub);
    assert_eq!((p.qos, p.dup, text(&p.payload)), (Q5::AtLeastOnce, false, "one again".into()));
    sub.send(&puback5(p.pkid));

    publisher.send(&publish5("flow/2", Q5::ExactlyOnce, 0x4321, "two", false));
    match publisher.recv() {
        v5::Packet::PubRec(ack) => assert_eq!((ack.pkid, ack.reason), (0x4321, v5::PubRecReason::Success)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publisher.send(&v5::Packet::PubRel(v5::PubRel::new(0x4321, None)));
    match publisher.recv() {
        v5::Packet::PubComp(ack) => assert_eq!((ack.pkid, ack.reason), (0x4321, v5::PubCompReason::Success)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    let p = expect_publish5(&mut sub);
    assert_eq!((&p.topic[..], p.qos, p.dup, text(&p.payload)), (&b"flow/2"[..], Q5::ExactlyOnce, false, "two".into()));
    assert_ne!(p.pkid, 0);
    sub.send(&pubrec5(p.pkid, v5::PubRecReason::Success));
    match sub.recv() {
        v5::Packet::PubRel(rel) => assert_eq!((rel.pkid, rel.reason), (p.pkid, v5::PubRelReason::Success)),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(&pubcomp5(p.pkid));

    // After PUBCOMP the id starts a new message.
    publisher.send(&publish5("flow/2", Q5::ExactlyOnce, 0x4321, "two again", false));
    assert!(matches!(publisher.recv(), v5::Packet::PubRec(ack) if ack.pkid == 0x4321));
    publisher.send(&v5::Packet::PubRel(v5::PubRel::new(0x4321, None)));
    assert!(matches!(publisher.recv(), v5::Packet::PubComp(ack) if ack.pkid == 0x4321));
    let got = collect5(&mut sub, 1);
    assert_eq!((got[0].qos, got[0].dup, text(&got[0].payload)), (Q5::ExactlyOnce, false, "two again".into()));
    quiet(&mut sub, "every flow complete");
}

/// MQTT-4.3.3-2 (3.1.1), MQTT-4.3.3-10 (5), MQTT-4.4.0-1 (a client resending after reconnect):
/// a QoS 2 PUBLISH sent again (DUP 1, same packet id) before its PUBREL, on the same
/// connection or on a new connection of the persistent session, gets PUBREC again and is not
/// delivered twice.
#[test]
fn qos2_publish_resent_before_pubrel_is_delivered_once() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, _) = conn4(&broker, "dedup-sub", true);
    sub4(&mut sub, 1, "dedup/#", QoS::AtLeastOnce);

    // 3.1.1, same connection.
    let (mut p4, _) = conn4(&broker, "dedup-pub4", false);
    p4.send(&publish4("dedup/4", QoS::ExactlyOnce, 7, "once-4", false));
    assert_eq!(p4.recv(), P4::PubRec(rumqttc::PubRec::new(7)));
    p4.send(&publish4("dedup/4", QoS::ExactlyOnce, 7, "once-4", true));
    assert_eq!(p4.recv(), P4::PubRec(rumqttc::PubRec::new(7)), "PUBREC again for the resent PUBLISH");
    // ...and on a new connection of the session (the client resends what it had not released).
    p4.drop_connection();
    let (mut p4, present) = conn4(&broker, "dedup-pub4", false);
    assert!(present);
    p4.send(&publish4("dedup/4", QoS::ExactlyOnce, 7, "once-4", true));
    assert_eq!(p4.recv(), P4::PubRec(rumqttc::PubRec::new(7)));
    p4.send(&P4::PubRel(rumqttc::PubRel::new(7)));
    assert_eq!(p4.recv(), P4::PubComp(rumqttc::PubComp::new(7)));

    // MQTT 5, same connection and after a reconnect.
    let (mut p5, _) = conn5(&broker, "dedup-pub5", true, props5(Some(60), None));
    p5.send(&publish5("dedup/5", Q5::ExactlyOnce, 9, "once-5", false));
    assert!(matches!(p5.recv(), v5::Packet::PubRec(a) if a.pkid == 9 && a.reason == v5::PubRecReason::Success));
    p5.send(&publish5("dedup/5", Q5::ExactlyOnce, 9, "once-5", true));
    assert!(matches!(p5.recv(), v5::Packet::PubRec(a) if a.pkid == 9 && a.reason == v5::PubRecReason::Success));
    p5.drop_connection();
    let (mut p5, ack) = conn5(&broker, "dedup-pub5", false, props5(Some(60), None));
    assert!(ack.session_present);
    p5.send(&publish5("dedup/5", Q5::ExactlyOnce, 9, "once-5", true));
    assert!(matches!(p5.recv(), v5::Packet::PubRec(a) if a.pkid == 9 && a.reason == v5::PubRecReason::Success));
    p5.send(&v5::Packet::PubRel(v5::PubRel::new(9, None)));
    assert!(matches!(p5.recv(), v5::Packet::PubComp(a) if a.pkid == 9 && a.reason == v5::PubCompReason::Success));

    publish_flow4(&mut p4, "dedup/marker", QoS::AtLeastOnce, 1, "marker");
    let got: Vec<String> = collect4(&mut sub, 3).iter().map(|p| text(&p.payload)).collect();
    assert_eq!(got, ["once-4", "once-5", "marker"], "each QoS 2 message delivered once");
}

/// MQTT-4.3.3-2 (3.1.1: "MUST respond to a PUBREL packet by sending a PUBCOMP packet containing
/// the same Packet Identifier"), MQTT-4.3.3-11 and MQTT-3.7.2-1 (5): a PUBREL for an id the
/// broker does not know gets PUBCOMP with that id (MQTT 5: 0x92 Packet Identifier not found).
#[test]
fn pubrel_for_an_unknown_id_gets_pubcomp() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut c4, _) = conn4(&broker, "unknown-rel4", true);
    c4.send(&P4::PubRel(rumqttc::PubRel::new(42)));
    assert_eq!(c4.recv(), P4::PubComp(rumqttc::PubComp::new(42)));
    quiet(&mut c4, "the connection goes on");

    let (mut c5, _) = conn5(&broker, "unknown-rel5", true, None);
    c5.send(&v5::Packet::PubRel(v5::PubRel::new(42, None)));
    match c5.recv() {
        v5::Packet::PubComp(comp) => {
            assert_eq!((comp.pkid, comp.reason), (42, v5::PubCompReason::PacketIdentifierNotFound))
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    quiet(&mut c5, "the connection goes on");
}

/// An acknowledgement of the wrong type for a packet id in flight (MQTT-4.3.2 / MQTT-4.3.3: a
/// QoS 1 message is acknowledged by PUBACK, a QoS 2 message by PUBREC then PUBCOMP) is a
/// protocol error (MQTT 5 §4.13: DISCONNECT 0x82, then close; MQTT-4.8.0-1 (3.1.1): close), as
/// mosquitto has it: PUBCOMP or PUBREC for a QoS 1 message, PUBACK for a QoS 2 message, PUBCOMP
/// before PUBREC. Acknowledgements of ids not in flight are still ignored.
#[test]
fn an_acknowledgement_of_the_wrong_type_is_a_protocol_error() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut publisher, _) = conn5(&broker, "wrong-pub", true, None);
    type Wrong = fn(u16) -> v5::Packet;
    let cases: [(&str, Q5, Wrong); 4] = [
        ("pubcomp-for-qos1", Q5::AtLeastOnce, pubcomp5),
        ("pubrec-for-qos1", Q5::AtLeastOnce, |id| pubrec5(id, v5::PubRecReason::Success)),
        ("puback-for-qos2", Q5::ExactlyOnce, puback5),
        ("pubcomp-before-pubrec", Q5::ExactlyOnce, pubcomp5),
    ];
    for (i, (name, qos, wrong)) in cases.into_iter().enumerate() {
        let (mut sub, _) = conn5(&broker, name, true, None);
        sub5(&mut sub, 1, name, qos);
        // Unknown ids change nothing.
        sub.send(&puback5(999));
        sub.send(&pubcomp5(998));
        quiet(&mut sub, &format!("{name}: acknowledgements of unknown ids are ignored"));
        let pkid = u16::try_from(i).unwrap() + 1;
        if qos == Q5::AtLeastOnce {
            publisher.send(&publish5(name, qos, pkid, "m", false));
            assert!(matches!(publisher.recv(), v5::Packet::PubAck(a) if a.pkid == pkid));
        } else {
            publish_flow5(&mut publisher, publish5(name, qos, pkid, "m", false));
        }
        let p = expect_publish5(&mut sub);
        sub.send(&wrong(p.pkid));
        sub.expect_disconnect(v5::DisconnectReasonCode::ProtocolError, name);
    }

    // MQTT 3.1.1: PUBACK for a QoS 2 message closes the connection.
    let (mut sub, _) = conn4(&broker, "wrong-sub4", true);
    sub4(&mut sub, 1, "wrong/4", QoS::ExactlyOnce);
    publish_flow5(&mut publisher, publish5("wrong/4", Q5::ExactlyOnce, 9, "m", false));
    let p = expect_publish4(&mut sub);
    sub.send(&P4::PubAck(rumqttc::PubAck::new(p.pkid)));
    assert_eq!(sub.until_closed(), vec![], "3.1.1: closed, nothing sent");
}

/// MQTT-3.8.4-6 (3.1.1), MQTT-3.8.4-8 and MQTT-3.8.4-7 (5): a message is delivered at the lower
/// of its published QoS and the QoS granted to the subscription, for every pair.
#[test]
fn delivered_qos_is_the_minimum_of_published_and_granted() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let levels4 = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let levels5 = [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce];
    let mut subs4 = Vec::new();
    let mut subs5 = Vec::new();
    for granted in 0..3 {
        let (mut s4, _) = conn4(&broker, &format!("min4-{granted}"), true);
        assert_eq!(
            sub4(&mut s4, 1, "min/#", levels4[granted]),
            rumqttc::SubscribeReasonCode::Success(levels4[granted])
        );
        subs4.push(s4);
        let (mut s5, _) = conn5(&broker, &format!("min5-{granted}"), true, None);
        assert_eq!(sub5(&mut s5, 1, "min/#", levels5[granted]), v5::SubscribeReasonCode::Success(levels5[granted]));
        subs5.push(s5);
    }
    let (mut publisher, _) = conn4(&broker, "min-pub", true);
    for (published, qos) in levels4.into_iter().enumerate() {
        publish_flow4(&mut publisher, "min/x", qos, 10 + published as u16, &format!("q{published}"));
    }
    for (granted, (s4, s5)) in subs4.iter_mut().zip(&mut subs5).enumerate() {
        let got = collect4(s4, 3);
        let got5 = collect5(s5, 3);
        for published in 0..3 {
            let expected = published.min(granted);
            assert_eq!(text(&got[published].payload), format!("q{published}"));
            assert_eq!(got[published].qos, levels4[expected], "3.1.1: published {published}, granted {granted}");
            assert_eq!(text(&got5[published].payload), format!("q{published}"));
            assert_eq!(got5[published].qos, levels5[expected], "5: published {published}, granted {granted}");
        }
    }
}

/// EMQX's `mqtt.upgrade_qos = true` (an extension beyond MQTT-3.8.4-6 / MQTT-3.8.4-8, which it
/// deliberately departs from): messages go out at the subscription's QoS, also when published
/// lower (and still never above it).
#[test]
fn upgrade_qos_delivers_at_the_subscription_qos() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__UPGRADE_QOS", "true")]);
    let levels4 = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let mut subs = Vec::new();
    for (granted, qos) in levels4.into_iter().enumerate() {
        let (mut s, _) = conn4(&broker, &format!("up-{granted}"), true);
        sub4(&mut s, 1, "up/#", qos);
        subs.push(s);
    }
    let (mut s5, _) = conn5(&broker, "up-5", true, None);
    sub5(&mut s5, 1, "up/#", Q5::ExactlyOnce);
    let (mut publisher, _) = conn4(&broker, "up-pub", true);
    for (published, qos) in levels4.into_iter().enumerate() {
        publish_flow4(&mut publisher, "up/x", qos, 10 + published as u16, &format!("q{published}"));
    }
    for (granted, sub) in subs.iter_mut().enumerate() {
        let got = collect4(sub, 3);
        for (published, p) in got.iter().enumerate() {
            assert_eq!(text(&p.payload), format!("q{published}"));
            assert_eq!(p.qos, levels4[granted], "published {published}, subscribed {granted}");
        }
    }
    let got = collect5(&mut s5, 3);
    assert!(got.iter().all(|p| p.qos == Q5::ExactlyOnce), "MQTT 5 subscriber at QoS 2: {got:?}");
}

/// MQTT-3.2.2-9, MQTT-3.2.2-10, MQTT-3.8.4-7, MQTT-4.13.1-1 (5); MQTT-3.8.4-5 (3.1.1). With
/// `mqtt.max_qos_allowed = 1`: CONNACK says Maximum QoS 1; a SUBSCRIBE at QoS 2 is accepted and
/// granted QoS 1; a QoS 2 PUBLISH (which the client was told not to send) ends an MQTT 5
/// connection with DISCONNECT 0x9B and closes a 3.1.1 one, and is not delivered. (A will at
/// QoS 2 is in mqtt_wills.rs.)
#[test]
fn max_qos_allowed_1() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_QOS_ALLOWED", "1")]);
    let (mut s5, ack) = conn5(&broker, "mq-sub5", true, None);
    assert_eq!(ack.properties.and_then(|p| p.max_qos), Some(1), "CONNACK Maximum QoS");
    assert_eq!(sub5(&mut s5, 1, "mq/#", Q5::ExactlyOnce), v5::SubscribeReasonCode::Success(Q5::AtLeastOnce));
    let (mut s4, _) = conn4(&broker, "mq-sub4", true);
    assert_eq!(sub4(&mut s4, 1, "mq/#", QoS::ExactlyOnce), rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce));

    let (mut p5, _) = conn5(&broker, "mq-pub5", true, None);
    p5.send(&publish5("mq/x", Q5::ExactlyOnce, 1, "qos2 from 5", false));
    p5.expect_disconnect(v5::DisconnectReasonCode::QoSNotSupported, "QoS 2 PUBLISH");
    let (mut p4, _) = conn4(&broker, "mq-pub4", true);
    p4.send(&publish4("mq/x", QoS::ExactlyOnce, 1, "qos2 from 3.1.1", false));
    let rest = p4.until_closed();
    assert!(rest.is_empty(), "3.1.1: closed without an acknowledgement, got {rest:?}");

    let (mut p4, _) = conn4(&broker, "mq-pub4b", true);
    publish_flow4(&mut p4, "mq/x", QoS::AtLeastOnce, 1, "qos1");
    for got in [collect4(&mut s4, 1).remove(0).payload, collect5(&mut s5, 1).remove(0).payload] {
        assert_eq!(text(&got), "qos1", "the refused QoS 2 messages were not delivered");
    }
}

/// EMQX's `mqtt.max_inflight` (3.1.1 has no Receive Maximum; this is the broker's window), and
/// MQTT-2.3.1-4 (the server's ids in flight are distinct): with a window of 3, a subscriber that
/// does not acknowledge gets exactly 3 QoS 1 messages; each PUBACK lets exactly one more through,
/// in order; PINGRESP is not held back meanwhile.
#[test]
fn max_inflight_limits_unacknowledged_messages() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_INFLIGHT", "3")]);
    let (mut sub, _) = conn4(&broker, "win-sub", true);
    sub4(&mut sub, 1, "win/#", QoS::AtLeastOnce);
    let (mut publisher, _) = conn4(&broker, "win-pub", true);
    for n in 0..6 {
        publish_flow4(&mut publisher, "win/x", QoS::AtLeastOnce, n + 1, &format!("m{n}"));
    }
    let first: Vec<rumqttc::Publish> = (0..3).map(|_| expect_publish4(&mut sub)).collect();
    let payloads: Vec<String> = first.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(payloads, ["m0", "m1", "m2"]);
    let ids: HashSet<u16> = first.iter().map(|p| p.pkid).collect();
    assert_eq!(ids.len(), 3, "distinct packet ids in flight: {first:?}");
    quiet(&mut sub, "window of 3 full");

    sub.send(&P4::PubAck(rumqttc::PubAck::new(first[0].pkid)));
    let fourth = expect_publish4(&mut sub);
    assert_eq!(text(&fourth.payload), "m3");
    assert!(fourth.pkid != first[1].pkid && fourth.pkid != first[2].pkid, "not an id still in flight");
    quiet(&mut sub, "window full again");

    sub.send(&P4::PubAck(rumqttc::PubAck::new(first[1].pkid)));
    sub.send(&P4::PubAck(rumqttc::PubAck::new(first[2].pkid)));
    let rest: Vec<String> = (0..2).map(|_| text(&expect_publish4(&mut sub).payload)).collect();
    assert_eq!(rest, ["m4", "m5"]);
}

/// MQTT-3.3.4-9, MQTT-3.3.4-10, MQTT-4.9.0-1/-2/-3 (5): with the client's Receive Maximum 2
/// (below `mqtt.max_inflight`), the broker has at most 2 QoS 1/2 PUBLISHes unacknowledged: a
/// QoS 2 message counts until PUBCOMP (not PUBREC), a PUBREC with a reason code of 0x80 or more
/// frees its slot (and gets no PUBREL, MQTT-4.3.3-4); PINGRESP and PUBREL are not held back.
#[test]
fn client_receive_maximum_limits_the_broker() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, _) = conn5(&broker, "rm-sub", true, props5(None, Some(2)));
    sub5(&mut sub, 1, "rm/#", Q5::ExactlyOnce);
    let (mut publisher, _) = conn4(&broker, "rm-pub", true);
    let plan = [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce];
    for (n, qos) in plan.into_iter().enumerate() {
        publish_flow4(&mut publisher, "rm/x", qos, n as u16 + 1, &format!("m{n}"));
    }
    let m0 = expect_publish5(&mut sub);
    let m1 = expect_publish5(&mut sub);
    assert_eq!(
        (text(&m0.payload), m0.qos, text(&m1.payload), m1.qos),
        ("m0".into(), Q5::AtLeastOnce, "m1".into(), Q5::ExactlyOnce)
    );
    assert_ne!(m0.pkid, m1.pkid);
    quiet(&mut sub, "Receive Maximum 2 reached");

    // PUBREC: the PUBREL comes, but m1 still counts until PUBCOMP.
    sub.send(&pubrec5(m1.pkid, v5::PubRecReason::Success));
    assert!(matches!(sub.recv(), v5::Packet::PubRel(rel) if rel.pkid == m1.pkid));
    quiet(&mut sub, "QoS 2 message between PUBREC and PUBCOMP still counts");
    sub.send(&pubcomp5(m1.pkid));
    let m2 = expect_publish5(&mut sub);
    assert_eq!(text(&m2.payload), "m2");
    quiet(&mut sub, "two in flight again (m0, m2)");

    sub.send(&puback5(m0.pkid));
    let m3 = expect_publish5(&mut sub);
    assert_eq!((text(&m3.payload), m3.qos), ("m3".into(), Q5::ExactlyOnce));
    assert_ne!(m3.pkid, m2.pkid);
    // A refusing PUBREC settles m3: no PUBREL, and its slot is free for m4.
    sub.send(&pubrec5(m3.pkid, v5::PubRecReason::UnspecifiedError));
    let m4 = expect_publish5(&mut sub);
    assert_eq!(text(&m4.payload), "m4");
    assert!(m4.pkid != m2.pkid, "not an id in flight");
    quiet(&mut sub, "m2 and m4 in flight; no PUBREL for the refused m3");
}

/// MQTT-3.3.4-9 with the window refilled in batches: while less than a quarter of the window is
/// free and more waits, the broker holds the refill back, at most 1 ms. A subscriber with a
/// Receive Maximum of 8 that keeps 7 of its 8 messages unacknowledged and acknowledges one at
/// a time still gets the next message for each PUBACK (the hold runs out), in order, under a
/// free id, and never more than 8 unacknowledged; acknowledging 7 at once lets 7 through.
#[test]
fn a_subscriber_acknowledging_one_at_a_time_still_gets_the_next_message() {
    const WINDOW: usize = 8;
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, _) = conn5(&broker, "trickle-sub", true, props5(None, Some(WINDOW as u16)));
    sub5(&mut sub, 1, "trickle/#", Q5::AtLeastOnce);
    let (mut publisher, _) = conn4(&broker, "trickle-pub", true);
    for n in 0..40 {
        publish_flow4(&mut publisher, "trickle/x", QoS::AtLeastOnce, n as u16 + 1, &format!("m{n}"));
    }
    let mut in_flight: Vec<v5::Publish> = (0..WINDOW).map(|_| expect_publish5(&mut sub)).collect();
    quiet(&mut sub, "Receive Maximum 8 reached");
    let mut next = WINDOW;
    // One PUBACK at a time: one free slot of 8, 32 waiting: held, then sent within 1 ms.
    for _ in 0..16 {
        let oldest = in_flight.remove(0);
        sub.send(&puback5(oldest.pkid));
        let p = expect_publish5(&mut sub);
        assert_eq!(text(&p.payload), format!("m{next}"), "in order");
        assert!(in_flight.iter().all(|f| f.pkid != p.pkid), "packet id {} is still in flight", p.pkid);
        in_flight.push(p);
        next += 1;
        quiet(&mut sub, "one PUBACK, one message: the window is full again");
    }
    // Seven at once: 7 of 8 free, all sent.
    for acked in in_flight.drain(..7) {
        sub.send(&puback5(acked.pkid));
    }
    for _ in 0..7 {
        assert_eq!(text(&expect_publish5(&mut sub).payload), format!("m{next}"), "in order");
        next += 1;
    }
    quiet(&mut sub, "seven PUBACKs, seven messages: the window is full again");
}

/// MQTT-2.3.1-4 applying MQTT-2.3.1-2/-3 to the server (3.1.1): over more than 65535 QoS 1
/// deliveries, so that the 16-bit ids wrap, the broker never uses an id that is still in flight:
/// the first message stays unacknowledged throughout, every other one is acknowledged at once.
#[test]
fn packet_ids_in_flight_are_never_reused() {
    const TOTAL: usize = 66_000;
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_MQUEUE_LEN", "0")]);
    let (mut sub, _) = conn4(&broker, "ids-sub", true);
    sub4(&mut sub, 1, "ids/#", QoS::AtLeastOnce);
    let reader = std::thread::spawn(move || {
        let mut in_flight = HashSet::new();
        let mut held = None;
        let mut seen_ids = HashSet::new();
        let mut wrapped = false;
        for n in 0..TOTAL {
            let p = expect_publish4(&mut sub);
            assert_eq!(text(&p.payload), format!("{n}"), "in order");
            assert!(p.pkid != 0 && in_flight.insert(p.pkid), "message {n}: packet id {} is in flight", p.pkid);
            wrapped |= !seen_ids.insert(p.pkid);
            if held.is_none() {
                held = Some(p.pkid); // never acknowledged
            } else {
                in_flight.remove(&p.pkid);
                sub.send(&P4::PubAck(rumqttc::PubAck::new(p.pkid)));
            }
        }
        assert!(wrapped, "ids were reused after their acknowledgement (the id space wrapped)");
        held.unwrap()
    });
    let (mut publisher, _) = conn4(&broker, "ids-pub", true);
    // In batches of 100 QoS 1 PUBLISHes, then their 100 PUBACKs.
    for batch in 0..TOTAL.div_ceil(100) {
        let range = batch * 100..((batch + 1) * 100).min(TOTAL);
        for n in range.clone() {
            publisher.send(&publish4("ids/x", QoS::AtLeastOnce, (n % 100) as u16 + 1, &n.to_string(), false));
        }
        for _ in range {
            assert!(matches!(publisher.recv(), P4::PubAck(_)));
        }
    }
    let held = reader.join().expect("subscriber");
    assert_ne!(held, 0);
}

/// A subscriber that never acknowledges cannot make the broker spin, grow or drop: with the
/// largest window (`mqtt.max_inflight = 65535`) it gets 65535 QoS 1 messages with 65535
/// distinct ids (MQTT-2.3.1-2: none reused while in flight), then nothing more (its PINGREQ is
/// answered next, so it is still served). What arrives meanwhile waits in its queue
/// (`mqtt.max_mqueue_len = 100`); once the queue is full its publisher is slowed down
/// (overload protection, the default `mqtt.mqueue_overflow`): the message that filled it is
/// acknowledged, the PUBLISHes after it get no PUBACK (the publisher's PINGREQ overtakes
/// them), nothing is dropped. One PUBACK lets exactly one queued message through, under the
/// one free id; once the subscriber acknowledges everything, every message arrives in order
/// (MQTT-4.6.0-6) and the held-back PUBLISHes are acknowledged.
///
/// Nothing here depends on how fast the subscriber reads: a slow reader only makes the
/// publisher wait earlier (the test once assumed the socket drains as fast as it fills, and
/// later that the queue filled only once the window was full).
#[test]
fn a_subscriber_that_never_acknowledges_is_held_to_its_window_and_queue() {
    const WINDOW: usize = 65_535;
    const QUEUE: usize = 100;
    const HELD: usize = 300;
    const TOTAL: usize = WINDOW + QUEUE + HELD;
    let dir = DataDir::with_plugins("");
    // No resends while it waits (`mqtt.retry_interval`): on a loaded machine it may take
    // longer than the default 30 s, and what it counts is what the window lets through.
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MQTT__MAX_INFLIGHT", "65535"),
            ("BROKER_MQTT__MAX_MQUEUE_LEN", "100"),
            ("BROKER_MQTT__RETRY_INTERVAL", "0s"),
        ],
    );
    let (mut sub, _) = conn4(&broker, "never-acks", true);
    sub4(&mut sub, 1, "held/#", QoS::AtLeastOnce);
    let reader = std::thread::spawn(move || {
        let mut ids = HashSet::new();
        for n in 0..WINDOW {
            let p = expect_publish4(&mut sub);
            assert_eq!(text(&p.payload), n.to_string(), "in order");
            assert!(ids.insert(p.pkid), "message {n}: packet id {} is already in flight", p.pkid);
        }
        sub
    });
    let (mut publisher, _) = conn4(&broker, "never-acks-pub", true);
    let publish = |n: usize| publish4("held/x", QoS::AtLeastOnce, (n % 100) as u16 + 1, &n.to_string(), false);
    let acknowledged = |publisher: &mut Raw<V4>, range: std::ops::Range<usize>| {
        for n in range.clone() {
            publisher.send(&publish(n));
        }
        for n in range {
            assert!(matches!(publisher.recv(), P4::PubAck(a) if a.pkid == (n % 100) as u16 + 1), "PUBACK for {n}");
        }
    };
    // The window takes WINDOW messages, each one acknowledged. The publisher may wait on the
    // way while the subscriber reads (its queue fills when its socket does), and goes on once
    // the queue has drained to three quarters: the window has room for all of them.
    for batch in 0..WINDOW.div_ceil(100) {
        acknowledged(&mut publisher, batch * 100..((batch + 1) * 100).min(WINDOW));
    }
    let mut sub = reader.join().expect("subscriber");
    // The window is full: the queue takes QUEUE more, each acknowledged, the last filling it.
    // (Published before the window was full, they could leave the publisher waiting for a
    // queue three quarters full that never drains: how many the queue took would depend on
    // how fast the subscriber read.)
    acknowledged(&mut publisher, WINDOW..WINDOW + QUEUE);
    // The queue is full: what comes next is held back, unacknowledged.
    for n in WINDOW + QUEUE..TOTAL {
        publisher.send(&publish(n));
    }
    publisher.ping("the publisher waits for the full queue: no PUBACK");
    sub.ping("65535 in flight: nothing more is sent, the connection is served");
    assert_eq!(stat(&dir, "delivery.dropped"), 0, "nothing dropped");

    sub.send(&P4::PubAck(rumqttc::PubAck::new(1)));
    let next = expect_publish4(&mut sub);
    assert_eq!(text(&next.payload), WINDOW.to_string(), "the oldest message in the queue");
    assert_eq!(next.pkid, 1, "the only free id");
    sub.ping("one PUBACK let one message through");
    publisher.ping("a queue drained by one message still holds the publisher back");

    // Every message in flight acknowledged: the queue drains, the publisher goes on.
    let mut acks = bytes::BytesMut::new();
    for id in 1..=u16::MAX {
        P4::PubAck(rumqttc::PubAck::new(id)).write(&mut acks, 1 << 20).unwrap();
    }
    sub.send_bytes(&acks);
    for n in WINDOW + 1..TOTAL {
        let p = expect_publish4(&mut sub);
        assert_eq!(text(&p.payload), n.to_string(), "in order, none lost");
        sub.send(&P4::PubAck(rumqttc::PubAck::new(p.pkid)));
    }
    for n in WINDOW + QUEUE..TOTAL {
        assert!(matches!(publisher.recv(), P4::PubAck(a) if a.pkid == (n % 100) as u16 + 1), "PUBACK for {n}");
    }
    quiet(&mut sub, "everything delivered once");
    assert_eq!(stat(&dir, "delivery.dropped"), 0, "nothing dropped");
}

/// MQTT-4.4.0-1, MQTT-3.3.1-1, MQTT-3.3.1-3, MQTT-4.6.0-1, MQTT-4.3.3-1 (no PUBLISH again once
/// PUBREL is sent), MQTT-2.3.1-4 (3.1.1): after a reconnect of a persistent session the broker
/// resends its unacknowledged QoS 1 and QoS 2 PUBLISHes with DUP 1 and their original ids, in
/// the order first sent, and a PUBREL (not the PUBLISH) for the message past PUBREC; a message
/// queued while offline is new (DUP 0) and gets an id not in flight.
#[test]
fn unacknowledged_messages_are_resent_on_reconnect_v311() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, present) = conn4(&broker, "resend4-sub", false);
    assert!(!present);
    sub4(&mut sub, 1, "resend/#", QoS::ExactlyOnce);
    let (mut publisher, _) = conn4(&broker, "resend4-pub", true);
    let plan = [("a", QoS::AtLeastOnce), ("b", QoS::ExactlyOnce), ("c", QoS::AtLeastOnce), ("d", QoS::ExactlyOnce)];
    for (n, (payload, qos)) in plan.into_iter().enumerate() {
        publish_flow4(&mut publisher, "resend/x", qos, n as u16 + 1, payload);
    }
    let mut ids = HashMap::new();
    for (payload, qos) in plan {
        let p = expect_publish4(&mut sub);
        assert_eq!((text(&p.payload).as_str(), p.qos, p.dup), (payload, qos, false));
        ids.insert(payload, p.pkid);
    }
    sub.send(&P4::PubRec(rumqttc::PubRec::new(ids["b"])));
    assert_eq!(sub.recv(), P4::PubRel(rumqttc::PubRel::new(ids["b"])));
    sub.drop_connection();
    wait_for_stat(&dir, "connections.count", 1); // the subscriber's connection ended
    publish_flow4(&mut publisher, "resend/x", QoS::AtLeastOnce, 9, "e");

    let (mut sub, present) = conn4(&broker, "resend4-sub", false);
    assert!(present, "session present");
    let mut publishes = Vec::new();
    let mut pubrels = Vec::new();
    while publishes.len() < 4 || pubrels.is_empty() {
        match sub.recv() {
            P4::Publish(p) => publishes.push(p),
            P4::PubRel(rel) => pubrels.push(rel.pkid),
            other => panic!("unexpected {other:?}"),
        }
    }
    let seen: Vec<(String, bool, u16)> = publishes.iter().map(|p| (text(&p.payload), p.dup, p.pkid)).collect();
    assert_eq!(
        seen,
        [
            ("a".to_owned(), true, ids["a"]),
            ("c".to_owned(), true, ids["c"]),
            ("d".to_owned(), true, ids["d"]),
            ("e".to_owned(), false, publishes[3].pkid),
        ],
        "resent in order with DUP and their ids, then the new one"
    );
    assert_eq!(pubrels, [ids["b"]], "PUBREL resent for b, and b's PUBLISH not");
    assert!(!ids.values().any(|&id| id == publishes[3].pkid), "the new message's id is not one in flight");

    sub.send(&P4::PubAck(rumqttc::PubAck::new(ids["a"])));
    sub.send(&P4::PubComp(rumqttc::PubComp::new(ids["b"])));
    sub.send(&P4::PubAck(rumqttc::PubAck::new(ids["c"])));
    sub.send(&P4::PubRec(rumqttc::PubRec::new(ids["d"])));
    assert_eq!(sub.recv(), P4::PubRel(rumqttc::PubRel::new(ids["d"])));
    sub.send(&P4::PubComp(rumqttc::PubComp::new(ids["d"])));
    sub.send(&P4::PubAck(rumqttc::PubAck::new(publishes[3].pkid)));
    publish_flow4(&mut publisher, "resend/x", QoS::AtLeastOnce, 10, "f");
    let f = expect_publish4(&mut sub);
    assert_eq!((text(&f.payload), f.dup), ("f".to_owned(), false), "nothing else was resent");
}

/// MQTT-4.4.0-1, MQTT-4.4.0-2, MQTT-3.3.1-1, MQTT-3.3.1-3, MQTT-4.3.3-6, MQTT-4.6.0-1 (as the
/// broker applies it), MQTT-2.2.1-4 (5): the same on a resumed MQTT 5 session; a message the
/// client refused (PUBREC 0x80) is settled and not resent.
#[test]
fn unacknowledged_messages_are_resent_on_reconnect_v5() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, ack) = conn5(&broker, "resend5-sub", true, props5(Some(60), None));
    assert!(!ack.session_present);
    sub5(&mut sub, 1, "resend/#", Q5::ExactlyOnce);
    let (mut publisher, _) = conn4(&broker, "resend5-pub", true);
    let plan = [
        ("a", QoS::AtLeastOnce),
        ("b", QoS::ExactlyOnce),
        ("c", QoS::AtLeastOnce),
        ("d", QoS::ExactlyOnce),
        ("e", QoS::ExactlyOnce),
    ];
    for (n, (payload, qos)) in plan.into_iter().enumerate() {
        publish_flow4(&mut publisher, "resend/x", qos, n as u16 + 1, payload);
    }
    let mut ids = HashMap::new();
    for (payload, _) in plan {
        let p = expect_publish5(&mut sub);
        assert_eq!((text(&p.payload).as_str(), p.dup), (payload, false));
        ids.insert(payload, p.pkid);
    }
    sub.send(&pubrec5(ids["b"], v5::PubRecReason::Success));
    assert!(matches!(sub.recv(), v5::Packet::PubRel(rel) if rel.pkid == ids["b"]));
    sub.send(&pubrec5(ids["d"], v5::PubRecReason::UnspecifiedError));
    quiet(&mut sub, "no PUBREL for the refused message");
    sub.drop_connection();

    let (mut sub, ack) = conn5(&broker, "resend5-sub", false, props5(Some(60), None));
    assert!(ack.session_present, "session present");
    let mut publishes = Vec::new();
    let mut pubrels = Vec::new();
    while publishes.len() < 3 || pubrels.is_empty() {
        match sub.recv() {
            v5::Packet::Publish(p) => publishes.push((text(&p.payload), p.dup, p.pkid)),
            v5::Packet::PubRel(rel) => pubrels.push(rel.pkid),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        publishes,
        [("a".to_owned(), true, ids["a"]), ("c".to_owned(), true, ids["c"]), ("e".to_owned(), true, ids["e"])],
        "resent in order, DUP set, same ids; d (refused) not resent"
    );
    assert_eq!(pubrels, [ids["b"]], "PUBREL for b, not its PUBLISH");
    sub.send(&puback5(ids["a"]));
    sub.send(&pubcomp5(ids["b"]));
    sub.send(&puback5(ids["c"]));
    sub.send(&pubrec5(ids["e"], v5::PubRecReason::Success));
    assert!(matches!(sub.recv(), v5::Packet::PubRel(rel) if rel.pkid == ids["e"]));
    sub.send(&pubcomp5(ids["e"]));

    publish_flow4(&mut publisher, "resend/x", QoS::AtLeastOnce, 9, "f");
    let f = expect_publish5(&mut sub);
    assert_eq!((text(&f.payload), f.dup), ("f".to_owned(), false), "nothing else was resent");
    sub.send(&puback5(f.pkid));
    // A clean DISCONNECT and a new connection: nothing left to resend.
    sub.send(&v5::Packet::Disconnect(v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection)));
    assert!(sub.until_closed().is_empty());
    let (mut sub, ack) = conn5(&broker, "resend5-sub", false, props5(Some(60), None));
    assert!(ack.session_present);
    quiet(&mut sub, "everything was acknowledged");
}

/// MQTT-3.3.1-1, MQTT-4.6.0-1, MQTT-4.3.3-1 (3.1.1) and EMQX's `mqtt.retry_interval`: while
/// an MQTT 3.1.1 client stays connected, a QoS 1 or 2 PUBLISH it has not acknowledged is sent
/// again after one to two intervals, DUP set, under its id, in the order first sent; past
/// PUBREC its PUBREL goes again instead; an acknowledged message does not.
///
/// An acknowledgement answers a resend at once, and the next round is two intervals after a
/// resend: only a test stalled for that long (4 s) could see one resend more.
#[test]
fn unacknowledged_messages_are_resent_while_an_mqtt_3_1_1_client_stays_connected() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__RETRY_INTERVAL", "2s")]);
    let (mut sub, _) = conn4(&broker, "retry4-sub", true);
    sub4(&mut sub, 1, "retry/#", QoS::ExactlyOnce);
    let (mut publisher, _) = conn4(&broker, "retry4-pub", true);
    publish_flow4(&mut publisher, "retry/x", QoS::AtLeastOnce, 1, "one");
    publish_flow4(&mut publisher, "retry/x", QoS::ExactlyOnce, 2, "two");
    let mut ids = HashMap::new();
    for (payload, qos) in [("one", QoS::AtLeastOnce), ("two", QoS::ExactlyOnce)] {
        let p = expect_publish4(&mut sub);
        assert_eq!((text(&p.payload).as_str(), p.qos, p.dup), (payload, qos, false));
        ids.insert(payload, p.pkid);
    }
    for payload in ["one", "two"] {
        let p = expect_publish4(&mut sub);
        assert_eq!((text(&p.payload).as_str(), p.dup, p.pkid), (payload, true, ids[payload]), "sent again");
    }
    sub.send(&P4::PubAck(rumqttc::PubAck::new(ids["one"])));
    sub.send(&P4::PubRec(rumqttc::PubRec::new(ids["two"])));
    assert_eq!(sub.recv(), P4::PubRel(rumqttc::PubRel::new(ids["two"])));
    assert_eq!(sub.recv(), P4::PubRel(rumqttc::PubRel::new(ids["two"])), "the PUBREL sent again, not the PUBLISH");
    sub.send(&P4::PubComp(rumqttc::PubComp::new(ids["two"])));
    // Both settled: a new message left unacknowledged is the next thing sent, then that
    // message again, a round after one or two would have come first had they been due.
    publish_flow4(&mut publisher, "retry/x", QoS::AtLeastOnce, 3, "three");
    let three = expect_publish4(&mut sub);
    assert_eq!((text(&three.payload).as_str(), three.dup), ("three", false));
    let again = expect_publish4(&mut sub);
    assert_eq!((text(&again.payload).as_str(), again.dup, again.pkid), ("three", true, three.pkid), "only it");
    sub.send(&P4::PubAck(rumqttc::PubAck::new(three.pkid)));
    assert_eq!(stat(&dir, "delivery.dropped"), 0);
}

/// MQTT-4.4.0-1 (5): an MQTT 5 client is sent a message again only when its session is
/// resumed, never while it stays connected, whatever `mqtt.retry_interval` says. An MQTT
/// 3.1.1 client subscribed beside it is the clock: once it has been sent the same message
/// again twice, the MQTT 5 client would have been sent it again at least once.
#[test]
fn an_mqtt_5_client_is_not_sent_a_message_again_while_it_stays_connected() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__RETRY_INTERVAL", "1s")]);
    let (mut mqtt5, _) = conn5(&broker, "retry5-sub", true, None);
    sub5(&mut mqtt5, 1, "retry5/#", Q5::AtLeastOnce);
    let (mut clock, _) = conn4(&broker, "retry5-clock", true);
    sub4(&mut clock, 1, "retry5/#", QoS::AtLeastOnce);
    let (mut publisher, _) = conn4(&broker, "retry5-pub", true);
    publish_flow4(&mut publisher, "retry5/x", QoS::AtLeastOnce, 1, "once");
    let p = expect_publish5(&mut mqtt5);
    assert_eq!((text(&p.payload).as_str(), p.dup), ("once", false));
    let first = expect_publish4(&mut clock);
    for _ in 0..2 {
        let again = expect_publish4(&mut clock);
        assert_eq!((again.dup, again.pkid), (true, first.pkid), "the MQTT 3.1.1 client gets it again");
    }
    quiet(&mut mqtt5, "never again to the MQTT 5 client");
    mqtt5.send(&puback5(p.pkid));
    clock.send(&P4::PubAck(rumqttc::PubAck::new(first.pkid)));
}

/// MQTT 5 §3.3.4 / §3.2.2.3.3 (the server's Receive Maximum; no numbered statement covers the
/// server's side), MQTT-4.13.1-1: the broker announces `mqtt.max_awaiting_rel` (2) as its
/// Receive Maximum; unreleased QoS 2 PUBLISHes count until PUBREL; the third one at once ends
/// the connection with DISCONNECT 0x93 and is not delivered.
#[test]
fn client_exceeding_the_broker_receive_maximum_is_disconnected() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_AWAITING_REL", "2")]);
    let (mut sub, _) = conn4(&broker, "rx-sub", true);
    sub4(&mut sub, 1, "rx/#", QoS::AtLeastOnce);
    let (mut p5, ack) = conn5(&broker, "rx-pub", true, None);
    assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(2), "CONNACK Receive Maximum");
    for (pkid, payload) in [(1, "m1"), (2, "m2")] {
        p5.send(&publish5("rx/x", Q5::ExactlyOnce, pkid, payload, false));
        assert!(matches!(p5.recv(), v5::Packet::PubRec(a) if a.pkid == pkid && a.reason == v5::PubRecReason::Success));
    }
    // Releasing one makes room for one.
    p5.send(&v5::Packet::PubRel(v5::PubRel::new(1, None)));
    assert!(matches!(p5.recv(), v5::Packet::PubComp(a) if a.pkid == 1));
    p5.send(&publish5("rx/x", Q5::ExactlyOnce, 3, "m3", false));
    assert!(matches!(p5.recv(), v5::Packet::PubRec(a) if a.pkid == 3 && a.reason == v5::PubRecReason::Success));
    // Two unreleased (2, 3): a third is one too many.
    p5.send(&publish5("rx/x", Q5::ExactlyOnce, 4, "m4", false));
    p5.expect_disconnect(v5::DisconnectReasonCode::ReceiveMaximumExceeded, "third unreleased QoS 2");

    let (mut p4, _) = conn4(&broker, "rx-marker", true);
    publish_flow4(&mut p4, "rx/x", QoS::AtLeastOnce, 1, "marker");
    let got: Vec<String> = collect4(&mut sub, 4).iter().map(|p| text(&p.payload)).collect();
    assert_eq!(got, ["m1", "m2", "m3", "marker"], "the PUBLISH over the limit was not delivered");
}

/// MQTT-4.6.0-5, MQTT-4.6.0-6 (3.1.1 and 5): the messages one client publishes to one topic,
/// pipelined at QoS 0, 1 and 2 mixed, reach subscribers of every QoS and version in the order
/// published (compared per published QoS, as the statements require), none lost.
#[test]
fn messages_from_one_publisher_arrive_in_order_at_every_qos() {
    const PER_QOS: usize = 40;
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let levels4 = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let levels5 = [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce];
    let mut subs4 = Vec::new();
    let mut subs5 = Vec::new();
    for granted in 0..3 {
        let (mut s4, _) = conn4(&broker, &format!("order4-{granted}"), true);
        sub4(&mut s4, 1, "order/x", levels4[granted]);
        subs4.push(s4);
        let (mut s5, _) = conn5(&broker, &format!("order5-{granted}"), true, None);
        sub5(&mut s5, 1, "order/x", levels5[granted]);
        subs5.push(s5);
    }
    // Every PUBLISH first, without waiting for acknowledgements; then the flows are completed.
    let (mut publisher, _) = conn4(&broker, "order-pub", true);
    let mut pkid = 0u16;
    for n in 0..PER_QOS {
        for (q, qos) in levels4.into_iter().enumerate() {
            let id = if q == 0 {
                0
            } else {
                pkid += 1;
                pkid
            };
            publisher.send(&publish4("order/x", qos, id, &format!("{q}-{n}"), false));
        }
    }
    let (mut acked, mut completed) = (0, 0);
    while acked + completed < 2 * PER_QOS {
        match publisher.recv() {
            P4::PubAck(_) => acked += 1,
            P4::PubRec(rec) => publisher.send(&P4::PubRel(rumqttc::PubRel::new(rec.pkid))),
            P4::PubComp(_) => completed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }

    let check = |who: &str, payloads: Vec<String>| {
        for q in 0..3 {
            let got: Vec<&String> = payloads.iter().filter(|p| p.starts_with(&format!("{q}-"))).collect();
            let expected: Vec<String> = (0..PER_QOS).map(|n| format!("{q}-{n}")).collect();
            assert_eq!(got, expected.iter().collect::<Vec<_>>(), "{who}: messages published at QoS {q}");
        }
    };
    for (granted, sub) in subs4.iter_mut().enumerate() {
        check(
            &format!("3.1.1 subscriber at QoS {granted}"),
            collect4(sub, 3 * PER_QOS).iter().map(|p| text(&p.payload)).collect(),
        );
    }
    for (granted, sub) in subs5.iter_mut().enumerate() {
        check(
            &format!("5 subscriber at QoS {granted}"),
            collect5(sub, 3 * PER_QOS).iter().map(|p| text(&p.payload)).collect(),
        );
    }
}

/// MQTT-4.3.3-7 (5): once a QoS 2 PUBLISH has been sent, the broker no longer applies the
/// message's expiry: a subscriber holds back the PUBREC of a message with a Message Expiry
/// Interval of 1 s, goes away (its session stays) and comes back after more than a second: the
/// message is sent again (DUP 1, same packet id) and its QoS 2 flow completes. A message with
/// the same expiry that was still waiting (the subscriber's Receive Maximum is 1) had not been
/// sent, so it is dropped as expired (MQTT-3.3.2-5, `messages.dropped`): the next message is
/// one published later.
#[test]
fn a_qos_2_message_in_flight_is_resent_after_its_expiry() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, _) = conn5(&broker, "exp2-sub", true, props5(Some(60), Some(1)));
    sub5(&mut sub, 1, "exp2/#", Q5::ExactlyOnce);
    let (mut publisher, _) = conn5(&broker, "exp2-pub", true, None);
    publish_flow5(&mut publisher, expiring5("exp2/x", Q5::ExactlyOnce, 1, "in flight", 1));
    publish_flow5(&mut publisher, expiring5("exp2/x", Q5::ExactlyOnce, 2, "waiting", 1));
    let first = expect_publish5(&mut sub);
    assert_eq!((text(&first.payload).as_str(), first.dup), ("in flight", false));
    quiet(&mut sub, "the second message waits for the Receive Maximum");
    sub.drop_connection();
    let dropped = stat(&dir, "delivery.dropped.expired");

    a_second_passes(&dir, &broker);
    let (mut sub, ack) = conn5(&broker, "exp2-sub", false, props5(Some(60), Some(1)));
    assert!(ack.session_present);
    let again = expect_publish5(&mut sub);
    assert_eq!(
        (text(&again.payload).as_str(), again.dup, again.pkid, again.qos),
        ("in flight", true, first.pkid, Q5::ExactlyOnce),
        "the message in flight is sent again although its expiry has passed"
    );
    sub.send(&pubrec5(again.pkid, v5::PubRecReason::Success));
    assert!(matches!(sub.recv(), v5::Packet::PubRel(rel) if rel.pkid == again.pkid));
    sub.send(&pubcomp5(again.pkid));

    publish_flow5(&mut publisher, publish5("exp2/x", Q5::ExactlyOnce, 3, "later", false));
    let next = collect5(&mut sub, 1);
    assert_eq!(text(&next[0].payload), "later", "the waiting message expired before it was sent");
    assert_eq!(stat(&dir, "delivery.dropped.expired"), dropped + 1, "EMQX's delivery.dropped.expired counts it");
}

/// MQTT-4.3.3-13 (5): the broker, as the receiver of a QoS 2 message, completes the
/// acknowledgements after the message's expiry: a client publishes at QoS 2 with a Message
/// Expiry Interval of 1 s, gets PUBREC, and sends PUBREL more than a second later, when the
/// broker has the message as expired (the copy kept for an offline subscriber is never
/// delivered): the PUBREL gets PUBCOMP with reason Success (not 0x92 Packet Identifier not
/// found), and the packet id then starts a new message, which is delivered.
#[test]
fn a_qos_2_flow_from_a_client_completes_after_the_message_expired() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut sub, _) = conn5(&broker, "rexp-sub", true, props5(Some(60), None));
    sub5(&mut sub, 1, "rexp/#", Q5::AtLeastOnce);
    sub.disconnect(v5::DisconnectReasonCode::NormalDisconnection); // its session stays

    let (mut publisher, _) = conn5(&broker, "rexp-pub", true, None);
    publisher.send(&expiring5("rexp/x", Q5::ExactlyOnce, 7, "expires", 1));
    assert!(matches!(publisher.recv(), v5::Packet::PubRec(a) if a.pkid == 7 && a.reason == v5::PubRecReason::Success));
    a_second_passes(&dir, &broker);
    publisher.send(&v5::Packet::PubRel(v5::PubRel::new(7, None)));
    match publisher.recv() {
        v5::Packet::PubComp(comp) => assert_eq!((comp.pkid, comp.reason), (7, v5::PubCompReason::Success)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    publish_flow5(&mut publisher, publish5("rexp/x", Q5::ExactlyOnce, 7, "same id, new message", false));

    let (mut sub, ack) = conn5(&broker, "rexp-sub", false, props5(Some(60), None));
    assert!(ack.session_present);
    let got = collect5(&mut sub, 1);
    assert_eq!(text(&got[0].payload), "same id, new message", "the expired message is not delivered");
    quiet(&mut sub, "nothing else");
}

/// MQTT-4.3.3-9 (5): after the broker answered a QoS 2 PUBLISH with a PUBREC of 0x80 or more
/// (0x87: `emqx_mod_acl_internal` denies the topic), a PUBLISH with the same packet id is a new
/// message: sent again (DUP 1) it is refused again, not acknowledged as a duplicate, and a new
/// message with that id to an allowed topic is accepted (PUBREC 0x00, then PUBCOMP 0x00) and
/// delivered. The other way round, MQTT-4.3.3-4 (5): a subscriber's PUBREC 0x80 gets no PUBREL,
/// and the next message's PUBREC gets its PUBREL as usual.
#[test]
fn after_a_refused_qos_2_publish_its_packet_id_starts_a_new_message() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write("acl.conf", "{deny, all, publish, [\"denied/#\"]}.\n{allow, all}.\n");
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("2 rules loaded from");
    let (mut sub, _) = conn5(&broker, "refq2-sub", true, None);
    sub5(&mut sub, 1, "allowed/#", Q5::ExactlyOnce);

    let (mut publisher, _) = conn5(&broker, "refq2-pub", true, None);
    for dup in [false, true] {
        publisher.send(&publish5("denied/x", Q5::ExactlyOnce, 5, "refused", dup));
        match publisher.recv() {
            v5::Packet::PubRec(rec) => assert_eq!((rec.pkid, rec.reason), (5, v5::PubRecReason::NotAuthorized)),
            other => panic!("expected PUBREC 0x87 (DUP {dup}), got {other:?}"),
        }
    }
    publish_flow5(&mut publisher, publish5("allowed/x", Q5::ExactlyOnce, 5, "new", false));
    quiet(&mut publisher, "no PUBREL or PUBCOMP left over for the refused message");

    // The subscriber refuses the first of two messages.
    publish_flow5(&mut publisher, publish5("allowed/x", Q5::ExactlyOnce, 6, "refused by the subscriber", false));
    let new = expect_publish5(&mut sub);
    let refused = expect_publish5(&mut sub);
    assert_eq!((text(&new.payload).as_str(), text(&refused.payload).as_str()), ("new", "refused by the subscriber"));
    sub.send(&pubrec5(refused.pkid, v5::PubRecReason::UnspecifiedError));
    sub.send(&pubrec5(new.pkid, v5::PubRecReason::Success));
    assert!(matches!(sub.recv(), v5::Packet::PubRel(rel) if rel.pkid == new.pkid), "PUBREL for the accepted one only");
    sub.send(&pubcomp5(new.pkid));
    quiet(&mut sub, "no PUBREL for the refused message");
}
