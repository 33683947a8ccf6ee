//! Wills, MQTT 3.1.1 and 5, with raw connections: published when the connection ends without
//! a normal DISCONNECT (socket dropped, keep-alive expired, protocol error, a DISCONNECT with
//! reserved flags set, MQTT 5 DISCONNECT 0x04) and never after DISCONNECT 0x00, nothing for a
//! client without a will; the MQTT 5 Will Delay Interval (the will waits, a reconnect or
//! takeover before it cancels it, the session ending first sends it); will QoS and retain (kept
//! by `emqx_retainer`, through `message.publish`, only with Will Retain 1); MQTT 5 will
//! properties; wills the broker must refuse (ACL-denied topic, wildcard topic, QoS or retain
//! beyond what it supports); wills when the broker stops (sent, and a delayed will of a
//! persistent session kept across the restart).
//!
//! "No will was sent" is shown by order: a marker published after the moment the will would
//! have been published is the next message the watcher gets.

use e2e::raw::{connect4, topic, v5, will5, Raw, C5, V4, V5};
use e2e::{recorded_events, stat, text, wait_for_stat, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{Packet as P4, QoS};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A 3.1.1 CONNECT with `will` and `keep_alive`.
fn connect4_will(id: &str, keep_alive: u16, will: Option<rumqttc::LastWill>) -> P4 {
    let mut connect = rumqttc::Connect::new(id);
    connect.keep_alive = keep_alive;
    connect.clean_session = true;
    connect.last_will = will;
    P4::Connect(connect)
}

fn will4(topic: &str, payload: &str, qos: QoS, retain: bool) -> Option<rumqttc::LastWill> {
    Some(rumqttc::LastWill::new(topic, payload, qos, retain))
}

/// Connects a 3.1.1 client with a will; panics unless accepted.
fn conn4_will(broker: &Broker, id: &str, keep_alive: u16, will: Option<rumqttc::LastWill>) -> Raw<V4> {
    let (raw, ack) = Raw::<V4>::connect(broker.addr, &connect4_will(id, keep_alive, will));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{id}: CONNACK");
    raw
}

fn connect5_will(
    id: &str,
    clean: bool,
    keep_alive: u16,
    expiry: Option<u32>,
    will: Option<v5::LastWill>,
) -> v5::Packet {
    let mut properties = v5::ConnectProperties::new();
    properties.session_expiry_interval = expiry;
    let connect =
        v5::Connect { keep_alive, client_id: id.to_owned(), clean_start: clean, properties: Some(properties) };
    v5::Packet::Connect(connect, will, None)
}

/// Connects an MQTT 5 client; panics unless accepted. Returns the CONNACK's Session Present.
fn conn5_will(
    broker: &Broker,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
    will: Option<v5::LastWill>,
) -> (Raw<V5>, bool) {
    let (raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_will(id, clean, 60, expiry, will));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success, "{id}: CONNACK");
    (raw, ack.session_present)
}

/// A 3.1.1 watcher subscribed to `filter` at `qos`.
fn watcher4(broker: &Broker, id: &str, filter: &str, qos: QoS) -> Raw<V4> {
    let mut raw = conn4_will(broker, id, 60, None);
    let filters = vec![rumqttc::SubscribeFilter::new(filter.to_owned(), qos)];
    raw.send(&P4::Subscribe(rumqttc::Subscribe { pkid: 1, filters }));
    match raw.recv() {
        P4::SubAck(ack) => assert_eq!(ack.return_codes, [rumqttc::SubscribeReasonCode::Success(qos)]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    raw
}

/// Receives PUBLISHes until it has `n` and every QoS 2 flow is complete, acknowledging each
/// (PUBACK; PUBREC, then PUBCOMP for the PUBREL); returns them all.
fn collect4(raw: &mut Raw<V4>, n: usize) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    let mut releasing = std::collections::HashSet::new();
    while got.len() < n || !releasing.is_empty() {
        match raw.recv() {
            P4::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => raw.send(&P4::PubAck(rumqttc::PubAck::new(p.pkid))),
                    QoS::ExactlyOnce => {
                        releasing.insert(p.pkid);
                        raw.send(&P4::PubRec(rumqttc::PubRec::new(p.pkid)));
                    }
                }
                got.push(p);
            }
            P4::PubRel(rel) => {
                assert!(releasing.remove(&rel.pkid), "PUBREL for {} which is not awaiting it", rel.pkid);
                raw.send(&P4::PubComp(rumqttc::PubComp::new(rel.pkid)));
            }
            other => panic!("expected PUBLISH or PUBREL, got {other:?}"),
        }
    }
    assert_eq!(got.len(), n, "exactly {n} messages: {got:?}");
    got
}

/// The next message for a 3.1.1 watcher, acknowledged.
fn next4(raw: &mut Raw<V4>) -> rumqttc::Publish {
    collect4(raw, 1).remove(0)
}

/// Publishes a QoS 1 marker from a fresh 3.1.1 client and waits for its PUBACK.
fn marker(broker: &Broker, id: &str, topic: &str, payload: &str) {
    let mut raw = conn4_will(broker, id, 60, None);
    let mut publish = rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec());
    publish.pkid = 1;
    raw.send(&P4::Publish(publish));
    assert!(matches!(raw.recv(), P4::PubAck(ack) if ack.pkid == 1));
    raw.send(&P4::Disconnect);
    raw.until_closed();
}

fn assert_message(p: &rumqttc::Publish, topic: &str, payload: &str) {
    assert_eq!((p.topic.as_str(), text(&p.payload).as_str()), (topic, payload));
}

// ---------------------------------------------------------------------------------------------
// When the will is published

/// MQTT-3.1.2-8, MQTT-3.1.2-10, MQTT-3.14.4-3, MQTT-3.1.2-24, MQTT-3.1.0-2, MQTT-3.1.4-2,
/// MQTT-3.1.2-16 (3.1.1): the will is published when the connection is dropped, when the
/// keep-alive (1 s) runs out, when the client breaks the protocol (a second CONNECT) and when a
/// new connection with its client id closes it; not after DISCONNECT.
#[test]
fn will_is_published_on_abnormal_close_only_v311() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = watcher4(&broker, "w4-watcher", "w4/#", QoS::AtLeastOnce);

    // DISCONNECT first: its will, if sent, would come before every other.
    let mut polite = conn4_will(&broker, "w4-polite", 60, will4("w4/polite", "polite", QoS::AtLeastOnce, false));
    polite.send(&P4::Disconnect);
    assert!(polite.until_closed().is_empty());

    let dropped = conn4_will(&broker, "w4-dropped", 60, will4("w4/dropped", "dropped", QoS::AtLeastOnce, false));
    dropped.drop_connection();
    let got = next4(&mut watcher);
    assert_message(&got, "w4/dropped", "dropped");
    assert_eq!((got.qos, got.retain), (QoS::AtLeastOnce, false), "will QoS, not retained");

    let mut silent = conn4_will(&broker, "w4-silent", 1, will4("w4/keepalive", "silent", QoS::AtLeastOnce, false));
    assert!(silent.until_closed().is_empty(), "closed after 1.5 x keep-alive, without a packet");
    assert_message(&next4(&mut watcher), "w4/keepalive", "silent");

    let mut rude = conn4_will(&broker, "w4-rude", 60, will4("w4/protocol", "rude", QoS::AtLeastOnce, false));
    rude.send(&connect4_will("w4-rude", 60, None));
    assert!(rude.until_closed().is_empty(), "a second CONNECT closes the connection");
    assert_message(&next4(&mut watcher), "w4/protocol", "rude");

    // A new connection with the same client id closes the old one, as a network failure would;
    // the old session (clean) ends with it, so its will goes (none when the session is resumed:
    // `mqtt_session_lifecycle.rs`).
    let mut old = conn4_will(&broker, "w4-twice", 60, will4("w4/taken-over", "replaced", QoS::AtLeastOnce, false));
    let _new = conn4_will(&broker, "w4-twice", 60, None);
    assert!(old.until_closed().is_empty(), "the old connection is closed");
    assert_message(&next4(&mut watcher), "w4/taken-over", "replaced");

    marker(&broker, "w4-marker", "w4/marker", "end");
    assert_message(&next4(&mut watcher), "w4/marker", "end");
}

/// MQTT-3.1.2-8, MQTT-3.1.2-10, MQTT-3.14.4-3, MQTT-3.1.2-22, MQTT-3.1.0-2, MQTT-3.1.2-14 (5):
/// the same for MQTT 5 (keep-alive expiry says DISCONNECT 0x8D, the second CONNECT 0x82), and
/// DISCONNECT 0x04 (Disconnect with Will Message) publishes the will; DISCONNECT 0x00 does not.
#[test]
fn will_is_published_on_abnormal_close_only_v5() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = watcher4(&broker, "w5-watcher", "w5/#", QoS::AtLeastOnce);

    let (mut polite, _) =
        conn5_will(&broker, "w5-polite", true, None, Some(will5("w5/polite", "polite", Q5::AtLeastOnce, false, None)));
    polite.disconnect(v5::DisconnectReasonCode::NormalDisconnection);

    let (dropped, _) = conn5_will(
        &broker,
        "w5-dropped",
        true,
        None,
        Some(will5("w5/dropped", "dropped", Q5::AtLeastOnce, false, None)),
    );
    dropped.drop_connection();
    let got = next4(&mut watcher);
    assert_message(&got, "w5/dropped", "dropped");
    assert_eq!((got.qos, got.retain), (QoS::AtLeastOnce, false));

    let will = Some(will5("w5/keepalive", "silent", Q5::AtLeastOnce, false, None));
    let (mut silent, ack) = Raw::<V5>::connect(broker.addr, &connect5_will("w5-silent", true, 1, None, will));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    match silent.next_packet() {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::KeepAliveTimeout),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    assert!(silent.until_closed().is_empty());
    assert_message(&next4(&mut watcher), "w5/keepalive", "silent");

    let (mut rude, _) =
        conn5_will(&broker, "w5-rude", true, None, Some(will5("w5/protocol", "rude", Q5::AtLeastOnce, false, None)));
    rude.send(&connect5_will("w5-rude", true, 60, None, None));
    match rude.next_packet() {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::ProtocolError),
        other => panic!("expected DISCONNECT 0x82, got {other:?}"),
    }
    assert!(rude.until_closed().is_empty());
    assert_message(&next4(&mut watcher), "w5/protocol", "rude");

    let (mut leaving, _) =
        conn5_will(&broker, "w5-0x04", true, None, Some(will5("w5/with-will", "asked", Q5::AtLeastOnce, false, None)));
    leaving.disconnect(v5::DisconnectReasonCode::DisconnectWithWillMessage);
    assert_message(&next4(&mut watcher), "w5/with-will", "asked");

    marker(&broker, "w5-marker", "w5/marker", "end");
    assert_message(&next4(&mut watcher), "w5/marker", "end");
}

/// MQTT-3.1.2-8, MQTT-3.1.3-9, MQTT-3.1.4-3 (5): a will with a Will Delay Interval waits for it
/// after the connection is gone (a marker published after the connection ended arrives first);
/// a client reconnecting to its session before the delay ends, or a new connection taking the
/// session over, cancels it. The two cancelled wills (delay 2 s) were due before the one that
/// is sent (delay 3 s, ended after them), so they would have arrived before it.
#[test]
fn will_delay_waits_and_a_new_connection_cancels_it() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = watcher4(&broker, "wd-watcher", "wd/#", QoS::AtLeastOnce);

    // Ends, then reconnects to its session within the delay.
    let will = will5("wd/reconnected", "must not be sent", Q5::AtLeastOnce, false, Some(2));
    let (mut back, _) = conn5_will(&broker, "wd-back", true, Some(60), Some(will));
    back.disconnect(v5::DisconnectReasonCode::DisconnectWithWillMessage);
    let (_back, present) = conn5_will(&broker, "wd-back", false, Some(60), None);
    assert!(present);

    // Taken over by a new connection that resumes the session.
    let will = will5("wd/taken-over", "must not be sent", Q5::AtLeastOnce, false, Some(2));
    let (mut old, _) = conn5_will(&broker, "wd-takeover", true, Some(60), Some(will));
    let (_new, present) = conn5_will(&broker, "wd-takeover", false, Some(60), None);
    assert!(present);
    match old.next_packet() {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }

    // Ends for good: its will waits 3 s.
    let will = will5("wd/delayed", "late", Q5::AtLeastOnce, false, Some(3));
    let (mut gone, _) = conn5_will(&broker, "wd-gone", true, Some(60), Some(will));
    gone.disconnect(v5::DisconnectReasonCode::DisconnectWithWillMessage);
    marker(&broker, "wd-marker", "wd/marker", "connection gone");

    assert_message(&next4(&mut watcher), "wd/marker", "connection gone");
    assert_message(&next4(&mut watcher), "wd/delayed", "late");
}

/// A watcher with a persistent session (3.1.1, CleanSession 0) subscribed to `filter` at QoS 1,
/// then offline: what it gets meanwhile waits in the store.
fn offline_watcher4(broker: &Broker, id: &str, filter: &str) {
    let (mut raw, _) = Raw::<V4>::connect(broker.addr, &connect4(id, false));
    let filters = vec![rumqttc::SubscribeFilter::new(filter.to_owned(), QoS::AtLeastOnce)];
    raw.send(&P4::Subscribe(rumqttc::Subscribe { pkid: 1, filters }));
    assert!(matches!(raw.recv(), P4::SubAck(_)), "{id}: SUBACK");
    raw.disconnect();
}

/// The persistent watcher `id` back online; its session is still there.
fn resumed_watcher4(broker: &Broker, id: &str) -> Raw<V4> {
    let (raw, ack) = Raw::<V4>::connect(broker.addr, &connect4(id, false));
    assert!(ack.session_present, "{id}: session present");
    raw
}

/// MQTT-3.1.2-8 (3.1.1), MQTT-3.1.3-9 (5): a broker that stops closes its clients' connections
/// without their DISCONNECT, so their wills are published, as EMQX and mosquitto publish them:
/// a 3.1.1 client's, an MQTT 5 client's, and the delayed will of an MQTT 5 client whose session
/// (Session Expiry 0) ends with the connection. A persistent watcher that was offline finds
/// the three queued after the restart, and nothing else.
#[test]
fn a_stopping_broker_publishes_its_clients_wills() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    offline_watcher4(&broker, "sw-watcher", "sw/#");
    let _v311 = conn4_will(&broker, "sw-v311", 60, will4("sw/v311", "gone 3.1.1", QoS::AtLeastOnce, false));
    let will = will5("sw/v5", "gone 5", Q5::AtLeastOnce, false, None);
    let (_v5, _) = conn5_will(&broker, "sw-v5", true, Some(0), Some(will));
    let will = will5("sw/v5-delayed", "session over", Q5::AtLeastOnce, false, Some(600));
    let (_delayed, _) = conn5_will(&broker, "sw-v5-delayed", true, Some(0), Some(will));

    broker.stop();
    let broker = Broker::start(&dir, &[]);
    let mut watcher = resumed_watcher4(&broker, "sw-watcher");
    let mut got: Vec<_> = collect4(&mut watcher, 3).iter().map(|p| (p.topic.clone(), text(&p.payload))).collect();
    got.sort();
    let want = [("sw/v311", "gone 3.1.1"), ("sw/v5", "gone 5"), ("sw/v5-delayed", "session over")];
    assert_eq!(got, want.map(|(t, p)| (t.to_owned(), p.to_owned())));
    marker(&broker, "sw-marker", "sw/marker", "end");
    assert_message(&next4(&mut watcher), "sw/marker", "end");
}

/// MQTT-3.1.3-9 (5): the delayed will of a persistent session whose client was connected when
/// the broker stopped is kept in the store and published when due after the restart (10 s
/// after the stop: after a marker published at once); one whose client is back first (5 s
/// delay) is not. A second
/// restart shows that the store forgot the will of the client that came back: a will read back
/// overdue would go at once, before the marker.
#[test]
fn a_delayed_will_outlives_a_restart_and_goes_when_due_unless_its_client_is_back() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    offline_watcher4(&broker, "dr-watcher", "dr/#");
    let will = will5("dr/due", "late", Q5::AtLeastOnce, false, Some(10));
    let (_due, _) = conn5_will(&broker, "dr-due", true, Some(300), Some(will));
    let will = will5("dr/back", "must not be sent", Q5::AtLeastOnce, false, Some(5));
    let (_back, _) = conn5_will(&broker, "dr-back", true, Some(300), Some(will));

    broker.stop();
    let broker = Broker::start(&dir, &[]);
    let (_back, present) = conn5_will(&broker, "dr-back", false, Some(300), None);
    assert!(present, "dr-back resumed its session");
    let mut watcher = resumed_watcher4(&broker, "dr-watcher");
    marker(&broker, "dr-marker", "dr/marker", "restarted");
    assert_message(&next4(&mut watcher), "dr/marker", "restarted");
    // dr/back's will would have been due 5 s after the stop, before dr/due's.
    assert_message(&next4(&mut watcher), "dr/due", "late");

    watcher.disconnect();
    broker.stop();
    let broker = Broker::start(&dir, &[]);
    let mut watcher = resumed_watcher4(&broker, "dr-watcher");
    marker(&broker, "dr-marker", "dr/marker", "restarted again");
    assert_message(&next4(&mut watcher), "dr/marker", "restarted again");
}

/// MQTT-3.1.2-8, MQTT-3.1.3-9 ("unless the Session ends first") (5): a will whose delay (60 s)
/// is longer than the session is sent when the session ends: at once for Session Expiry 0 and
/// when a new connection with Clean Start discards the session, and after the 2 s session
/// expiry (after a marker published when the connection ended), and the session is gone then.
#[test]
fn will_is_sent_when_the_session_ends_before_the_delay() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = watcher4(&broker, "ws-watcher", "ws/#", QoS::AtLeastOnce);

    // The 20 s test deadline is well under the 60 s delay.
    let will = will5("ws/no-session", "session over", Q5::AtLeastOnce, false, Some(60));
    let (mut brief, _) = conn5_will(&broker, "ws-brief", true, Some(0), Some(will));
    brief.disconnect(v5::DisconnectReasonCode::DisconnectWithWillMessage);
    assert_message(&next4(&mut watcher), "ws/no-session", "session over");

    // A new connection with Clean Start ends the old session: its will goes at once.
    let will = will5("ws/discarded", "session discarded", Q5::AtLeastOnce, false, Some(60));
    let (mut old, _) = conn5_will(&broker, "ws-discarded", true, Some(60), Some(will));
    let (_new, present) = conn5_will(&broker, "ws-discarded", true, Some(60), None);
    assert!(!present);
    match old.next_packet() {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert_message(&next4(&mut watcher), "ws/discarded", "session discarded");

    let will = will5("ws/expired", "session expired", Q5::AtLeastOnce, false, Some(60));
    let (mut short, _) = conn5_will(&broker, "ws-short", true, Some(2), Some(will));
    short.disconnect(v5::DisconnectReasonCode::DisconnectWithWillMessage);
    marker(&broker, "ws-marker", "ws/marker", "connection gone");
    assert_message(&next4(&mut watcher), "ws/marker", "connection gone");
    assert_message(&next4(&mut watcher), "ws/expired", "session expired");
    // Only the watcher's and ws-discarded's sessions are left once the expired one is ended.
    wait_for_stat(&dir, "sessions.count", 2);
    let (_short, present) = conn5_will(&broker, "ws-short", false, Some(2), None);
    assert!(!present, "the session had ended");
}

/// MQTT-3.1.2-12 (3.1.1): a client that connected without a will publishes nothing when its
/// connection ends abnormally: neither when its socket is dropped nor when it breaks the
/// protocol (a second CONNECT). A watcher of every topic (`#`) gets, after those two ended, the
/// will of a third client that had one, then a marker: nothing came before.
#[test]
fn a_client_without_a_will_publishes_nothing_when_it_drops_v311() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = watcher4(&broker, "nw-watcher", "#", QoS::AtLeastOnce);
    let connected = stat(&dir, "connections.count");

    conn4_will(&broker, "nw-dropped", 60, None).drop_connection();
    let mut rude = conn4_will(&broker, "nw-rude", 60, None);
    rude.send(&connect4_will("nw-rude", 60, None));
    assert!(rude.until_closed().is_empty(), "a second CONNECT closes the connection");
    wait_for_stat(&dir, "connections.count", connected); // both connections are over

    // A will goes to the watcher: it would have got the others' too.
    conn4_will(&broker, "nw-with-will", 60, will4("nw/will", "bye", QoS::AtLeastOnce, false)).drop_connection();
    assert_message(&next4(&mut watcher), "nw/will", "bye");
    marker(&broker, "nw-marker", "nw/marker", "end");
    assert_message(&next4(&mut watcher), "nw/marker", "end");
}

/// MQTT-3.14.1-1, MQTT-2.2.2-2 (3.1.1): a DISCONNECT whose reserved flag bits are not 0 makes
/// the broker disconnect the client (closed, nothing sent) instead of taking it as a normal
/// DISCONNECT: its will is published. MQTT-3.14.1-1 (5): the broker answers DISCONNECT 0x81
/// (Malformed Packet), closes, and publishes the will. The same clients with a well-formed
/// DISCONNECT (flags 0) leave without their will (a marker comes next).
#[test]
fn a_disconnect_with_reserved_flags_set_is_malformed_and_the_will_is_sent() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = watcher4(&broker, "df-watcher", "df/#", QoS::AtLeastOnce);

    for flags in [0x01u8, 0x02, 0x08] {
        let will = will4(&format!("df/v4/{flags}"), "malformed", QoS::AtLeastOnce, false);
        let mut c4 = conn4_will(&broker, &format!("df4-{flags}"), 60, will);
        c4.send_bytes(&[0xe0 | flags, 0]);
        assert!(c4.until_closed().is_empty(), "3.1.1 DISCONNECT flags {flags:#06b}: closed, nothing sent");
        assert_message(&next4(&mut watcher), &format!("df/v4/{flags}"), "malformed");

        let will = will5(&format!("df/v5/{flags}"), "malformed", Q5::AtLeastOnce, false, None);
        let (mut c5, _) = conn5_will(&broker, &format!("df5-{flags}"), true, None, Some(will));
        c5.send_bytes(&[0xe0 | flags, 0]);
        c5.expect_disconnect(v5::DisconnectReasonCode::MalformedPacket, &format!("5 DISCONNECT flags {flags:#06b}"));
        assert_message(&next4(&mut watcher), &format!("df/v5/{flags}"), "malformed");
    }

    let mut c4 = conn4_will(&broker, "df4-ok", 60, will4("df/v4/ok", "must not be sent", QoS::AtLeastOnce, false));
    c4.send_bytes(&[0xe0, 0]);
    assert!(c4.until_closed().is_empty());
    let will = will5("df/v5/ok", "must not be sent", Q5::AtLeastOnce, false, None);
    let (mut c5, _) = conn5_will(&broker, "df5-ok", true, None, Some(will));
    c5.send_bytes(&[0xe0, 0]);
    assert!(c5.until_closed().is_empty());
    marker(&broker, "df-marker", "df/marker", "end");
    assert_message(&next4(&mut watcher), "df/marker", "end");
}

// ---------------------------------------------------------------------------------------------
// What is published

/// MQTT-3.1.2-16, MQTT-3.1.2-17, MQTT-3.3.1-9 (3.1.1); MQTT-3.1.2-14, MQTT-3.1.2-15 (5): the
/// will goes out at its QoS (to a QoS 2 subscriber: QoS 2 and QoS 1 wills at their QoS), as a
/// normal publish (`message.publish` with the client's id, seen by hook_recorder); a retained
/// will is kept by `emqx_retainer` and given to a later subscriber with the retain flag, a
/// non-retained one is not.
#[test]
fn will_qos_and_retain_are_honoured() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n{emqx_retainer, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);
    let mut watcher = watcher4(&broker, "wr-watcher", "wr/#", QoS::ExactlyOnce);

    conn4_will(&broker, "wr-c4", 60, will4("wr/v4", "bye from 3.1.1", QoS::ExactlyOnce, true)).drop_connection();
    let got = next4(&mut watcher);
    assert_message(&got, "wr/v4", "bye from 3.1.1");
    assert_eq!((got.qos, got.retain), (QoS::ExactlyOnce, false), "QoS 2; an established subscription gets retain 0");

    let (c5, _) =
        conn5_will(&broker, "wr-c5", true, None, Some(will5("wr/v5", "bye from 5", Q5::AtLeastOnce, true, None)));
    c5.drop_connection();
    let got = next4(&mut watcher);
    assert_message(&got, "wr/v5", "bye from 5");
    assert_eq!(got.qos, QoS::AtLeastOnce);

    conn4_will(&broker, "wr-plain", 60, will4("wr/plain", "not retained", QoS::AtMostOnce, false)).drop_connection();
    let got = next4(&mut watcher);
    assert_message(&got, "wr/plain", "not retained");
    assert_eq!(got.qos, QoS::AtMostOnce);

    // A later subscriber: the two retained wills (in any order), retain flag set, at their
    // QoS; then the marker, published after its SUBACK: the plain will was not retained.
    let mut later = watcher4(&broker, "wr-later", "wr/#", QoS::ExactlyOnce);
    let mut retained: Vec<(String, String, QoS, bool)> =
        collect4(&mut later, 2).into_iter().map(|p| (p.topic.clone(), text(&p.payload), p.qos, p.retain)).collect();
    retained.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        retained,
        [
            ("wr/v4".to_owned(), "bye from 3.1.1".to_owned(), QoS::ExactlyOnce, true),
            ("wr/v5".to_owned(), "bye from 5".to_owned(), QoS::AtLeastOnce, true),
        ]
    );
    marker(&broker, "wr-marker", "wr/marker", "end");
    assert_message(&next4(&mut later), "wr/marker", "end");

    let events = recorded_events(&file);
    for (client, topic, qos, retain) in
        [("wr-c4", "wr/v4", 2, true), ("wr-c5", "wr/v5", 1, true), ("wr-plain", "wr/plain", 0, false)]
    {
        let published: Vec<_> =
            events.iter().filter(|e| e["hook"] == "message.publish" && e["topic"] == topic).collect();
        assert_eq!(published.len(), 1, "{topic}: one message.publish: {published:?}");
        assert_eq!(published[0]["client_id"], client, "{topic}");
        assert_eq!(published[0]["qos"], qos, "{topic}");
        assert_eq!(published[0]["retain"], retain, "{topic}");
    }
}

/// MQTT-3.1.3-10, MQTT-3.3.2-4, MQTT-3.3.2-15, MQTT-3.3.2-16, MQTT-3.3.2-17, MQTT-3.3.2-20 (5):
/// the will's properties are forwarded: User Properties (in order, a repeated name included),
/// Content Type, Payload Format Indicator, Response Topic, Correlation Data, and its Message
/// Expiry Interval (at most the one set).
#[test]
fn will_properties_are_forwarded() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut watcher, _) = conn5_will(&broker, "wp-watcher", true, None, None);
    let mut subscribe = v5::Subscribe::new(v5::Filter::new("wp/#", Q5::AtMostOnce), None);
    subscribe.pkid = 1;
    watcher.send(&v5::Packet::Subscribe(subscribe));
    assert!(matches!(watcher.recv(), v5::Packet::SubAck(_)));

    let user_properties: Vec<(String, String)> =
        [("b", "1"), ("a", "2"), ("b", "3")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let properties = v5::LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        content_type: Some("text/plain; charset=utf-8".into()),
        response_topic: Some("wp/replies".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00corr\xff")),
        user_properties: user_properties.clone(),
    };
    let will = v5::LastWill::new("wp/status", "offline", Q5::AtMostOnce, false, Some(properties));
    let (client, _) = conn5_will(&broker, "wp-client", true, None, Some(will));
    client.drop_connection();

    let publish = match watcher.recv() {
        v5::Packet::Publish(p) => p,
        other => panic!("expected the will, got {other:?}"),
    };
    assert_eq!((&publish.topic[..], &publish.payload[..]), (&b"wp/status"[..], &b"offline"[..]));
    let p = publish.properties.expect("will properties");
    assert_eq!(p.user_properties, user_properties, "User Properties in order");
    assert_eq!(p.content_type.as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.response_topic.as_deref(), Some("wp/replies"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x00corr\xff"[..]));
    let expiry = p.message_expiry_interval.expect("Message Expiry Interval");
    assert!(expiry > 0 && expiry <= 300, "remaining expiry {expiry}");
}

// ---------------------------------------------------------------------------------------------
// Wills the broker refuses

/// MQTT-3.1.4-2, MQTT-3.2.2-7, MQTT-3.2.2-6 (5); MQTT-3.2.2-4, MQTT-3.2.2-5 (3.1.1): a will on a
/// topic the ACL (`emqx_mod_acl_internal`) forbids publishing to refuses the connection: CONNACK
/// 0x87 Not authorized (3.1.1: return code 0x05), Session Present 0, then the connection is
/// closed; the same client with a will elsewhere is accepted.
#[test]
fn will_on_a_topic_the_acl_denies_refuses_the_connection() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write("acl.conf", "{deny, all, publish, [\"forbidden/#\"]}.\n{allow, all}.\n");
    let broker = Broker::start(&dir, &[]);

    let mut raw = Raw::<V5>::open(broker.addr);
    let will = will5("forbidden/x", "denied", Q5::AtMostOnce, false, None);
    raw.send(&connect5_will("acl-5", true, 60, None, Some(will)));
    match raw.recv() {
        v5::Packet::ConnAck(ack) => {
            assert_eq!((ack.code, ack.session_present), (v5::ConnectReturnCode::NotAuthorized, false))
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(raw.until_closed().is_empty(), "closed after the refusal");

    let mut raw = Raw::<V4>::open(broker.addr);
    raw.send(&connect4_will("acl-4", 60, will4("forbidden/y", "denied", QoS::AtMostOnce, false)));
    match raw.recv() {
        P4::ConnAck(ack) => {
            assert_eq!((ack.code, ack.session_present), (rumqttc::ConnectReturnCode::NotAuthorized, false))
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(raw.until_closed().is_empty(), "closed after the refusal");

    conn5_will(&broker, "acl-5", true, None, Some(will5("allowed/x", "fine", Q5::AtMostOnce, false, None)));
    conn4_will(&broker, "acl-4", 60, will4("allowed/y", "fine", QoS::AtMostOnce, false));
}

/// MQTT-4.7.0-1, MQTT-3.1.4-1, MQTT-3.2.2-7 (5); MQTT-4.7.1-1, MQTT-3.1.4-1 (3.1.1): a will
/// topic with a wildcard is refused: MQTT 5 with CONNACK 0x90 Topic Name invalid, then closed;
/// 3.1.1 by closing the connection without a CONNACK.
#[test]
fn will_on_a_wildcard_topic_is_refused() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    for topic in ["wild/+/x", "wild/#"] {
        let mut raw = Raw::<V5>::open(broker.addr);
        raw.send(&connect5_will("wild-5", true, 60, None, Some(will5(topic, "x", Q5::AtMostOnce, false, None))));
        match raw.recv() {
            v5::Packet::ConnAck(ack) => assert_eq!(ack.code, v5::ConnectReturnCode::TopicNameInvalid, "{topic}"),
            other => panic!("{topic}: expected CONNACK, got {other:?}"),
        }
        assert!(raw.until_closed().is_empty(), "{topic}: closed after the refusal");

        let mut raw = Raw::<V4>::open(broker.addr);
        raw.send(&connect4_will("wild-4", 60, will4(topic, "x", QoS::AtMostOnce, false)));
        let got = raw.until_closed();
        assert!(got.is_empty(), "{topic}: 3.1.1 closed without a CONNACK, got {got:?}");
    }
}

/// MQTT-3.2.2-12, MQTT-3.2.2-13 (5): with `mqtt.max_qos_allowed = 1` and
/// `mqtt.retain_available = false`, a will at QoS 2 is refused with CONNACK 0x9B and a retained
/// will with CONNACK 0x9A, and the connection closed; a QoS 1, non-retained will is accepted.
#[test]
fn will_beyond_the_broker_capabilities_is_refused() {
    let dir = DataDir::with_plugins("");
    let broker =
        Broker::start(&dir, &[("BROKER_MQTT__MAX_QOS_ALLOWED", "1"), ("BROKER_MQTT__RETAIN_AVAILABLE", "false")]);
    for (will, code) in [
        (will5("cap/x", "x", Q5::ExactlyOnce, false, None), v5::ConnectReturnCode::QoSNotSupported),
        (will5("cap/x", "x", Q5::AtLeastOnce, true, None), v5::ConnectReturnCode::RetainNotSupported),
    ] {
        let mut raw = Raw::<V5>::open(broker.addr);
        raw.send(&connect5_will("cap-5", true, 60, None, Some(will)));
        match raw.recv() {
            v5::Packet::ConnAck(ack) => assert_eq!(ack.code, code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        assert!(raw.until_closed().is_empty(), "closed after the refusal");
    }
    conn5_will(&broker, "cap-5", true, None, Some(will5("cap/x", "x", Q5::AtLeastOnce, false, None)));
}

/// MQTT-3.1.2-14 (5): an MQTT 5 will with Will Retain 0 is published as a non-retained message:
/// with `emqx_retainer` loaded, a watcher subscribed with Retain As Published sees it with
/// RETAIN 0 (and a will with Will Retain 1, for comparison, with RETAIN 1), and a client
/// subscribing afterwards is given only the retained one (a marker published after its SUBACK
/// comes next).
#[test]
fn a_will_with_retain_0_is_not_retained_v5() {
    let dir = DataDir::with_plugins("{emqx_retainer, true}.\n");
    let broker = Broker::start(&dir, &[]);
    let mut watcher = C5::connect(&broker, "wn-watcher");
    let rap = v5::Filter { preserve_retain: true, ..v5::Filter::new("wn/#", Q5::AtLeastOnce) };
    assert_eq!(watcher.subscribe_with(vec![rap], None), vec![v5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]);

    let plain = will5("wn/plain", "not retained", Q5::AtLeastOnce, false, None);
    conn5_will(&broker, "wn-plain", true, None, Some(plain)).0.drop_connection();
    let got = watcher.next_publish();
    assert_eq!((topic(&got).as_str(), got.retain), ("wn/plain", false), "Will Retain 0: published with RETAIN 0");
    let kept = will5("wn/kept", "retained", Q5::AtLeastOnce, true, None);
    conn5_will(&broker, "wn-kept", true, None, Some(kept)).0.drop_connection();
    let got = watcher.next_publish();
    assert_eq!((topic(&got).as_str(), got.retain), ("wn/kept", true), "Will Retain 1: published with RETAIN 1");

    let mut later = C5::connect(&broker, "wn-later");
    later.subscribe("wn/#", Q5::AtLeastOnce);
    let mut publisher = C5::connect(&broker, "wn-marker");
    publisher.publish("wn/marker", Q5::AtLeastOnce, "end");
    let retained: Vec<(String, bool)> = later.until("wn/marker").iter().map(|p| (topic(p), p.retain)).collect();
    assert_eq!(retained, [("wn/kept".to_owned(), true)], "only the will with Will Retain 1 was retained");
}
