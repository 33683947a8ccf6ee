//! Persistent sessions in the store: what a publisher was told is safe (PUBACK, PUBREC then
//! PUBCOMP) reaches an offline persistent subscriber after the broker is killed (`kill -9`)
//! and started again, QoS 2 exactly once; sessions come back with Session Present 1
//! (MQTT-3.2.2-2); clean sessions never touch the store; a damaged store is refused.

use std::collections::{HashMap, HashSet};

use e2e::raw::{connect4, Raw, V4};
use e2e::{Broker, DataDir};
use rumqttc::{Packet, PubAck, PubComp, PubRec, PubRel, Publish, QoS, Subscribe};

const MESSAGES: u16 = 300;

/// A SUBSCRIBE with packet id 1 (rumqttc's leaves it 0, which is refused).
fn subscribe(filter: &str, qos: QoS) -> Subscribe {
    let mut subscribe = Subscribe::new(filter, qos);
    subscribe.pkid = 1;
    subscribe
}

/// An offline persistent subscriber to `p/#` at `qos`, as 3.1.1 CleanSession 0 makes it.
fn persistent_subscriber(broker: &Broker, id: &str, qos: QoS) {
    let (mut sub, ack) = Raw::<V4>::connect(broker.addr, &connect4(id, false));
    assert!(!ack.session_present);
    sub.send(&Packet::Subscribe(subscribe("p/#", qos)));
    assert!(matches!(sub.recv(), Packet::SubAck(_)));
    sub.disconnect();
}

/// Messages a publisher has in flight (below the broker's 100 QoS 2 messages awaiting
/// release).
const WINDOW: u16 = 50;

/// Sends `MESSAGES` messages on `p/<i>` at `qos` with packet ids 1.., `WINDOW` at a time, kills
/// the broker once `kill_after` were acknowledged (PUBACK; PUBCOMP for QoS 2) and returns the
/// payloads that were.
fn publish_until_killed(broker: Broker, qos: QoS, kill_after: usize) -> HashSet<String> {
    let (mut publisher, _) = Raw::<V4>::connect(broker.addr, &connect4("p-pub", true));
    let send = |publisher: &mut Raw<V4>, i: u16| {
        let mut publish = Publish::new(format!("p/{i}"), qos, format!("m{i}"));
        publish.pkid = i;
        publisher.send(&Packet::Publish(publish));
    };
    for i in 1..=WINDOW {
        send(&mut publisher, i);
    }
    let mut next = WINDOW + 1;
    let mut acked = HashSet::new();
    while acked.len() < kill_after {
        match publisher.recv() {
            Packet::PubAck(PubAck { pkid }) | Packet::PubComp(PubComp { pkid }) => {
                acked.insert(format!("m{pkid}"));
                if next <= MESSAGES {
                    send(&mut publisher, next);
                    next += 1;
                }
            }
            Packet::PubRec(PubRec { pkid }) => publisher.send(&Packet::PubRel(PubRel::new(pkid))),
            other => panic!("unexpected {other:?}"),
        }
    }
    broker.kill();
    acked
}

/// Connects `id` again (CleanSession 0), expects Session Present 1, and receives until the
/// marker `p/end` that another client publishes after it connected: every message queued
/// before the marker has come by then. Returns each payload with how often it came. Every
/// message was queued while the session was offline (it went offline before they were
/// published), so each read back from the store comes as a first delivery, DUP 0.
fn resume_and_drain(broker: &Broker, id: &str) -> HashMap<String, usize> {
    let (mut sub, ack) = Raw::<V4>::connect(broker.addr, &connect4(id, false));
    assert!(ack.session_present, "the session survived the restart (MQTT-3.2.2-2)");
    {
        let (mut marker, _) = Raw::<V4>::connect(broker.addr, &connect4("p-marker", true));
        let mut publish = Publish::new("p/end", QoS::AtLeastOnce, "end");
        publish.pkid = 1;
        marker.send(&Packet::Publish(publish));
        assert!(matches!(marker.recv(), Packet::PubAck(_)));
        marker.disconnect();
    }
    let mut got: HashMap<String, usize> = HashMap::new();
    loop {
        match sub.recv() {
            Packet::Publish(p) => {
                let payload = String::from_utf8(p.payload.to_vec()).unwrap();
                match p.qos {
                    QoS::AtLeastOnce => sub.send(&Packet::PubAck(PubAck::new(p.pkid))),
                    QoS::ExactlyOnce => sub.send(&Packet::PubRec(PubRec::new(p.pkid))),
                    QoS::AtMostOnce => {}
                }
                if payload == "end" {
                    assert!(!p.dup, "the marker, published after the restart, is a first delivery: DUP 0");
                    return got;
                }
                // MQTT-3.3.1-1 sets DUP only on a re-delivery: the store knows these were
                // queued after the session went offline, never sent.
                assert!(!p.dup, "{payload}, queued while its session was offline, came with DUP 1");
                *got.entry(payload).or_default() += 1;
            }
            Packet::PubRel(rel) => sub.send(&Packet::PubComp(PubComp::new(rel.pkid))),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn acknowledged_qos1_messages_to_an_offline_persistent_session_survive_kill_9() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    persistent_subscriber(&broker, "p-sub1", QoS::AtLeastOnce);
    let acked = publish_until_killed(broker, QoS::AtLeastOnce, usize::from(MESSAGES) / 2);

    let broker = Broker::start(&dir, &[]);
    let got = resume_and_drain(&broker, "p-sub1");
    let lost: Vec<_> = acked.iter().filter(|m| !got.contains_key(*m)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged messages lost: {lost:?}", lost.len(), acked.len());
}

#[test]
fn acknowledged_qos2_messages_survive_kill_9_exactly_once() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    persistent_subscriber(&broker, "p-sub2", QoS::ExactlyOnce);
    let acked = publish_until_killed(broker, QoS::ExactlyOnce, usize::from(MESSAGES) / 2);

    let broker = Broker::start(&dir, &[]);
    let got = resume_and_drain(&broker, "p-sub2");
    let lost: Vec<_> = acked.iter().filter(|m| !got.contains_key(*m)).collect();
    assert!(lost.is_empty(), "{} of {} completed messages lost: {lost:?}", lost.len(), acked.len());
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "QoS 2 delivered more than once: {twice:?}");
}

#[test]
fn a_persistent_session_and_its_subscription_survive_a_restart_and_clean_ones_never_reach_the_store() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    persistent_subscriber(&broker, "p-kept", QoS::AtLeastOnce);
    // A clean session's subscription and messages stay in memory.
    let (mut clean, _) = Raw::<V4>::connect(broker.addr, &connect4("p-clean", true));
    clean.send(&Packet::Subscribe(subscribe("c/#", QoS::AtLeastOnce)));
    assert!(matches!(clean.recv(), Packet::SubAck(_)));
    let stats = dir.ctl(&["store", "stats"]).ok();
    let sessions_line = stats.lines().find(|l| l.starts_with("bucket core/sessions ")).unwrap_or_default().to_owned();
    assert!(sessions_line.contains("keys=1 "), "one session record, p-kept's: {stats}");
    clean.disconnect();
    broker.stop();

    let broker = Broker::start(&dir, &[]);
    let got = resume_and_drain(&broker, "p-kept");
    assert!(got.is_empty(), "nothing was published to it: {got:?}");
    let (_, ack) = Raw::<V4>::connect(broker.addr, &connect4("p-clean", false));
    assert!(!ack.session_present, "the clean session was not kept");
}

/// A persistent session's messages go out with packet ids made from their numbers in the
/// store: the first is 1 (as from mosquitto and EMQX), and they go on after a restart rather
/// than start again (as mosquitto's do). After a restart, a message sent before it comes again
/// as a re-delivery, DUP 1 with its id, and one queued while the session was offline as a
/// first delivery, DUP 0 (MQTT-3.3.1-1).
#[test]
fn a_persistent_sessions_packet_ids_and_dup_flags_hold_across_restarts() {
    let publish = |broker: &Broker, payload: &str| {
        let (mut publisher, _) = Raw::<V4>::connect(broker.addr, &connect4("p-ids-pub", true));
        let mut publish = Publish::new("p/ids", QoS::AtLeastOnce, payload);
        publish.pkid = 1;
        publisher.send(&Packet::Publish(publish));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)), "{payload}");
        publisher.disconnect();
    };
    let resume = |broker: &Broker| {
        let (sub, ack) = Raw::<V4>::connect(broker.addr, &connect4("p-ids", false));
        assert!(ack.session_present);
        sub
    };
    let next = |sub: &mut Raw<V4>| match sub.recv() {
        Packet::Publish(p) => (String::from_utf8(p.payload.to_vec()).unwrap(), p.pkid, p.dup),
        other => panic!("a PUBLISH expected, got {other:?}"),
    };
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    persistent_subscriber(&broker, "p-ids", QoS::AtLeastOnce);
    publish(&broker, "first");
    let mut sub = resume(&broker);
    assert_eq!(next(&mut sub), ("first".to_owned(), 1, false));
    sub.send(&Packet::PubAck(PubAck::new(1)));
    publish(&broker, "unacknowledged");
    assert_eq!(next(&mut sub), ("unacknowledged".to_owned(), 2, false));
    sub.disconnect();
    publish(&broker, "queued offline");
    broker.stop();

    let broker = Broker::start(&dir, &[]);
    let mut sub = resume(&broker);
    assert_eq!(next(&mut sub), ("unacknowledged".to_owned(), 2, true), "sent before the restart: a re-delivery");
    assert_eq!(next(&mut sub), ("queued offline".to_owned(), 3, false), "never sent: a first delivery");
    sub.send(&Packet::PubAck(PubAck::new(2)));
    sub.send(&Packet::PubAck(PubAck::new(3)));
    sub.disconnect();
    broker.stop();

    let broker = Broker::start(&dir, &[]);
    publish(&broker, "after two restarts");
    let mut sub = resume(&broker);
    assert_eq!(next(&mut sub), ("after two restarts".to_owned(), 4, false), "the ids go on");
}

/// A retained message sent to a persistent session when it subscribes is in the store like
/// any other it is sent: unacknowledged, it comes again after a restart with its packet id
/// and DUP 1 (MQTT-4.4.0-1); at QoS 2 past PUBREC, its PUBREL comes again even after `kill
/// -9`, and the next message does not take its packet id, which the client still holds until
/// PUBCOMP (MQTT-2.2.1-3; before, the copy was never written, so the PUBREL was lost and the
/// id given out again: a client following MQTT 4.3.3 would have dropped the new message as a
/// duplicate).
#[test]
fn a_retained_message_sent_on_subscribe_is_kept_for_a_persistent_session() {
    let retained = |broker: &Broker, topic: &str, qos: QoS| {
        let (mut publisher, _) = Raw::<V4>::connect(broker.addr, &connect4("p-ret-pub", true));
        let mut publish = Publish::new(topic, qos, "kept");
        (publish.pkid, publish.retain) = (1, true);
        publisher.send(&Packet::Publish(publish));
        match publisher.recv() {
            Packet::PubAck(_) => {}
            Packet::PubRec(_) => {
                publisher.send(&Packet::PubRel(PubRel::new(1)));
                assert!(matches!(publisher.recv(), Packet::PubComp(_)));
            }
            other => panic!("{other:?}"),
        }
        publisher.disconnect();
    };
    let resume = |broker: &Broker, id: &str| {
        let (sub, ack) = Raw::<V4>::connect(broker.addr, &connect4(id, false));
        assert!(ack.session_present, "{id}");
        sub
    };
    let dir = DataDir::with_plugins("{emqx_retainer, true}.\n");
    let broker = Broker::start(&dir, &[]);

    // QoS 1, unacknowledged, then a graceful restart.
    retained(&broker, "r/1", QoS::AtLeastOnce);
    let (mut sub, _) = Raw::<V4>::connect(broker.addr, &connect4("p-ret-1", false));
    sub.send(&Packet::Subscribe(subscribe("r/1", QoS::AtLeastOnce)));
    // The retained message may come before the SUBACK (MQTT 3.1.1 §3.8.4).
    let mut first = None;
    for _ in 0..2 {
        match sub.recv() {
            Packet::SubAck(_) => {}
            Packet::Publish(p) => first = Some(p),
            other => panic!("{other:?}"),
        }
    }
    let first = first.expect("the retained message");
    assert!(first.retain && !first.dup);
    sub.disconnect();
    broker.stop();
    let broker = Broker::start(&dir, &[]);
    let mut sub = resume(&broker, "p-ret-1");
    match sub.recv() {
        Packet::Publish(again) => {
            assert_eq!((&again.payload[..], again.pkid, again.dup), (&b"kept"[..], first.pkid, true), "sent again")
        }
        other => panic!("the retained message again, got {other:?}"),
    }
    sub.send(&Packet::PubAck(PubAck::new(first.pkid)));
    sub.disconnect();

    // QoS 2, PUBREC sent and PUBREL received, then kill -9.
    retained(&broker, "r/2", QoS::ExactlyOnce);
    let (mut sub, _) = Raw::<V4>::connect(broker.addr, &connect4("p-ret-2", false));
    sub.send(&Packet::Subscribe(subscribe("r/#", QoS::ExactlyOnce)));
    // The SUBACK, the retained message (`ram` storage: r/1's went with the restart), and its
    // PUBREL once its PUBREC is in.
    let (mut held, mut seen) = (None, 0);
    while held.is_none() || seen < 2 {
        match sub.recv() {
            Packet::SubAck(_) => seen += 1,
            Packet::Publish(p) if p.qos == QoS::ExactlyOnce => {
                seen += 1;
                sub.send(&Packet::PubRec(PubRec::new(p.pkid)));
            }
            Packet::Publish(p) => {
                seen += 1;
                sub.send(&Packet::PubAck(PubAck::new(p.pkid)));
            }
            Packet::PubRel(rel) => held = Some(rel.pkid),
            other => panic!("{other:?}"),
        }
    }
    let held = held.unwrap();
    let broker = broker.kill9_and_restart(&dir, &[]);
    let mut sub = resume(&broker, "p-ret-2");
    match sub.recv() {
        Packet::PubRel(rel) => assert_eq!(rel.pkid, held, "the PUBREL again, for the id the client holds"),
        other => panic!("the PUBREL again, got {other:?}"),
    }
    let (mut publisher, _) = Raw::<V4>::connect(broker.addr, &connect4("p-ret-pub2", true));
    let mut publish = Publish::new("r/new", QoS::ExactlyOnce, "new");
    publish.pkid = 1;
    publisher.send(&Packet::Publish(publish));
    assert!(matches!(publisher.recv(), Packet::PubRec(_)));
    publisher.send(&Packet::PubRel(PubRel::new(1)));
    assert!(matches!(publisher.recv(), Packet::PubComp(_)));
    match sub.recv() {
        Packet::Publish(p) => {
            assert_eq!(&p.payload[..], b"new");
            assert_ne!(p.pkid, held, "not the id still held for PUBCOMP");
        }
        other => panic!("the new message, got {other:?}"),
    }
}

/// After a restart, the messages a persistent session may have been sent and has not
/// acknowledged are in flight again, as they are after a reconnect, not queued: a queue filled
/// by messages arriving while it is offline (`max_mqueue_len` 3 here) drops none of them, and
/// they go out first, DUP 1 (MQTT-4.4.0-1). Before, they were read back into the queue, and the
/// three messages published after the restart pushed the three oldest out.
#[test]
fn unacknowledged_messages_are_in_flight_again_after_a_restart_not_queued() {
    let env = [("BROKER_MQTT__MAX_INFLIGHT", "3"), ("BROKER_MQTT__MAX_MQUEUE_LEN", "3")];
    let publish = |broker: &Broker, payloads: std::ops::Range<u16>| {
        let (mut publisher, _) = Raw::<V4>::connect(broker.addr, &connect4("p-inf-pub", true));
        for i in payloads {
            let mut publish = Publish::new("p/inf", QoS::AtLeastOnce, format!("m{i}"));
            publish.pkid = i + 1;
            publisher.send(&Packet::Publish(publish));
            assert!(matches!(publisher.recv(), Packet::PubAck(_)), "m{i}");
        }
        publisher.disconnect();
    };
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &env);
    persistent_subscriber(&broker, "p-inf", QoS::AtLeastOnce);
    let (mut sub, _) = Raw::<V4>::connect(broker.addr, &connect4("p-inf", false));
    publish(&broker, 0..5);
    for i in 0..3 {
        match sub.recv() {
            Packet::Publish(p) => assert_eq!(&p.payload[..], format!("m{i}").as_bytes()),
            other => panic!("m{i}, got {other:?}"),
        }
    }
    // m0 to m2 in flight, unacknowledged; m3 and m4 queued behind the window of 3 (a third
    // would fill the queue, and overload protection would hold the publisher's PUBACK).
    sub.disconnect();
    broker.stop();

    let broker = Broker::start(&dir, &env);
    publish(&broker, 5..8);
    let (mut sub, ack) = Raw::<V4>::connect(broker.addr, &connect4("p-inf", false));
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < 8 {
        match sub.recv() {
            Packet::Publish(p) => {
                sub.send(&Packet::PubAck(PubAck::new(p.pkid)));
                got.push((String::from_utf8(p.payload.to_vec()).unwrap(), p.dup));
            }
            other => panic!("a PUBLISH, got {other:?}"),
        }
    }
    // m3 and m4 were queued, not sent, when the session went offline; its record says only
    // how far its messages may have been sent, so they come as re-deliveries too.
    let expected: Vec<(String, bool)> = (0..8).map(|i| (format!("m{i}"), i < 5)).collect();
    assert_eq!(got, expected, "every message, in order; those of before the restart as re-deliveries");
}

#[test]
fn a_damaged_store_is_refused_naming_its_file() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    persistent_subscriber(&broker, "p-damaged", QoS::AtLeastOnce);
    broker.stop();
    let file = dir.path().join("store").join("broker.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..].iter_mut().for_each(|b| *b = !*b);
    std::fs::write(&file, &bytes).unwrap();

    let output = std::process::Command::new(e2e::broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("BROKER_TELEMETRY__URL", "http://127.0.0.1:9/api/telemetry")
        .output()
        .unwrap();
    assert!(!output.status.success(), "the broker must not start on a damaged store");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&file.display().to_string()) && stderr.contains("corrupt"), "{stderr}");
}

/// MQTT 5: a session with a Session Expiry above 0 is persistent: a clean stop and start keep it
/// with what was queued for it (Session Present 1, MQTT-3.2.2-2); with `persistence.enabled =
/// false` it lives in memory only and is gone after the restart (Session Present 0).
#[test]
fn an_mqtt5_session_with_expiry_keeps_its_queue_across_a_restart_unless_persistence_is_off() {
    use e2e::raw::{connect5, payload, v5, C5};
    for enabled in [true, false] {
        let dir = DataDir::new();
        let env = [("BROKER_PERSISTENCE__ENABLED", if enabled { "true" } else { "false" })];
        let broker = Broker::start(&dir, &env);
        let expiry =
            || Some(v5::ConnectProperties { session_expiry_interval: Some(300), ..v5::ConnectProperties::new() });
        let (mut sub, _) = C5::connect_packet(&broker, &connect5("p5-sub", true, expiry()));
        sub.subscribe("p5/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
        sub.disconnect();
        let mut publisher = C5::connect(&broker, "p5-pub");
        publisher.publish("p5/queued", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "while away");
        publisher.disconnect();
        broker.stop();

        let broker = Broker::start(&dir, &env);
        let (mut sub, ack) = C5::connect_packet(&broker, &connect5("p5-sub", false, expiry()));
        assert_eq!(ack.session_present, enabled, "persistence.enabled = {enabled}");
        if enabled {
            assert_eq!(payload(&sub.next_publish()), "while away");
        }
    }
}

/// A store that cannot write (a full disk, here the broker's file size limit) refuses what it
/// cannot keep: an MQTT 5 QoS 1 message for a persistent session gets PUBACK 0x97 Quota
/// exceeded, logged; QoS 0 and clean sessions go on as before. Once there is room again the
/// store writes again, without a restart, and every message acknowledged with Success reaches
/// the persistent subscriber.
#[test]
fn a_full_store_refuses_messages_for_persistent_sessions_and_the_rest_goes_on() {
    use e2e::raw::{connect5, v5, C5};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    let dir = DataDir::new();
    let broker = Broker::start_with_file_size_limit(&dir, &[], 4 << 20);
    let expiry = Some(v5::ConnectProperties { session_expiry_interval: Some(300), ..v5::ConnectProperties::new() });
    let (mut away, _) = C5::connect_packet(&broker, &connect5("full-away", true, expiry));
    away.subscribe("full/#", QoS5::AtLeastOnce);
    away.disconnect();
    let mut clean = C5::connect(&broker, "full-clean");
    clean.subscribe("clean/#", QoS5::AtLeastOnce);

    let mut publisher = C5::connect(&broker, "full-pub");
    let big = "x".repeat(64 * 1024);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let publish = v5::Publish::new(format!("full/{i}"), QoS5::AtLeastOnce, big.clone(), None);
        match publisher.publish_packet(publish) {
            Some(v5::Packet::PubAck(ack)) if ack.reason == v5::PubAckReason::QuotaExceeded => {
                refused = Some(i);
                break;
            }
            Some(v5::Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, v5::PubAckReason::Success, "{ack:?}");
                acked.push(format!("full/{i}"));
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert!(refused.is_some(), "4 MiB of the store filled by 200 messages of 64 KiB without a refusal");
    broker.wait_for_log("a message for persistent sessions was refused");

    publisher.publish("clean/1", QoS5::AtLeastOnce, "still served");
    assert_eq!(e2e::raw::payload(&clean.next_publish()), "still served");
    publisher.publish("clean/2", QoS5::AtMostOnce, "qos 0 too");
    assert_eq!(e2e::raw::payload(&clean.next_publish()), "qos 0 too");

    // Room again: the store opens its file again (within a second of the failure) and a
    // message for the persistent session is kept and acknowledged, as a client retrying finds.
    broker.lift_file_size_limit();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for attempt in 0.. {
        let topic = format!("full/after/{attempt}");
        match publisher.publish_packet(v5::Publish::new(topic.clone(), QoS5::AtLeastOnce, "after", None)) {
            Some(v5::Packet::PubAck(ack)) if ack.reason == v5::PubAckReason::Success => {
                acked.push(topic);
                break;
            }
            Some(v5::Packet::PubAck(ack)) if ack.reason == v5::PubAckReason::QuotaExceeded => {
                assert!(std::time::Instant::now() < deadline, "still refused 20 s after the limit was lifted");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    broker.wait_for_log("store: file opened again after a failed write");
    let expiry = Some(v5::ConnectProperties { session_expiry_interval: Some(300), ..v5::ConnectProperties::new() });
    let (mut away, ack) = C5::connect_packet(&broker, &connect5("full-away", false, expiry));
    assert!(ack.session_present);
    // A refused message was routed before the store refused it, so the session may still have
    // it in memory (QoS 1 allows the duplicate a publisher retrying it makes): only the
    // acknowledged ones are checked for.
    let last = acked.last().cloned();
    let mut got = Vec::new();
    while got.last() != last.as_ref() {
        got.push(e2e::raw::topic(&away.next_publish()));
    }
    got.retain(|topic| acked.contains(topic));
    assert_eq!(got, acked, "every message acknowledged with Success, in order");
}

/// A share group's messages queued for an offline persistent member are kept with their group
/// across a restart: when that member's session ends (here its client comes back with Clean
/// Start, discarding it), they go to another member of the group (MQTT 5 §4.8.2, as EMQX 5),
/// in order, instead of being lost with the session.
#[test]
fn a_share_groups_messages_read_back_after_a_restart_still_go_to_another_member() {
    use e2e::raw::{connect5, payload, v5, C5};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[]);
    let expiry = || Some(v5::ConnectProperties { session_expiry_interval: Some(300), ..v5::ConnectProperties::new() });
    let (mut away, _) = C5::connect_packet(&broker, &connect5("sg-away", true, expiry()));
    away.subscribe("$share/g/sg/x", QoS5::AtLeastOnce);
    away.disconnect();
    let mut publisher = C5::connect(&broker, "sg-pub");
    for n in 0..5 {
        publisher.publish("sg/x", QoS5::AtLeastOnce, &n.to_string());
    }
    publisher.disconnect();
    broker.stop();

    let broker = Broker::start(&dir, &[]);
    let mut other = C5::connect(&broker, "sg-other");
    other.subscribe("$share/g/sg/x", QoS5::AtLeastOnce);
    other.subscribe("sg/end", QoS5::AtLeastOnce);
    // The member comes back with Clean Start: its session, with the five messages, ends.
    let (back, ack) = C5::connect_packet(&broker, &connect5("sg-away", true, None));
    assert!(!ack.session_present);
    back.disconnect();
    let mut publisher = C5::connect(&broker, "sg-pub");
    publisher.publish("sg/end", QoS5::AtLeastOnce, "end");
    let got: Vec<String> = other.until("sg/end").iter().map(payload).collect();
    assert_eq!(got, ["0", "1", "2", "3", "4"], "the ended member's messages, to the other member");
}
