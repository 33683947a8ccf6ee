//! Keep-alive: a silent client is closed after one and a half times its keep-alive (MQTT 5 is
//! told with DISCONNECT 0x8D) and its will is published; keep-alive 0 turns this off; PINGREQ
//! is answered; any packet resets the timer; `mqtt.server_keepalive` (MQTT 5 Server Keep Alive)
//! and `mqtt.max_keepalive` change what the broker enforces.
//!
//! Keep-alives here are 1 or 2 seconds; what the tests wait for is an event (a close, a will),
//! and "not closed" is shown by ordering: a client that should stay answers a PINGREQ after
//! another client, silent for less time, was closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::raw::{connect4, connect5, v5, Raw, V4, V5};
use e2e::{recorded_events, stat, wait_until, Broker, Client, DataDir};
use rumqttc::{ConnectReturnCode, Packet, QoS};

type QoS5 = rumqttc::v5::mqttbytes::QoS;

fn connect4_ka(id: &str, keep_alive: u16, will_topic: Option<&str>) -> Packet {
    let mut packet = connect4(id, true);
    if let Packet::Connect(c) = &mut packet {
        c.keep_alive = keep_alive;
        c.last_will = will_topic.map(|t| rumqttc::LastWill::new(t, id, QoS::AtMostOnce, false));
    }
    packet
}

fn connect5_ka(id: &str, keep_alive: u16, will_topic: Option<&str>) -> v5::Packet {
    let v5::Packet::Connect(mut c, _, _) = connect5(id, true, None) else { unreachable!() };
    c.keep_alive = keep_alive;
    let will = will_topic.map(|t| v5::LastWill::new(t, id, QoS5::AtMostOnce, false, None));
    v5::Packet::Connect(c, will, None)
}

/// MQTT-3.1.2-24 (3.1.1), MQTT-3.1.2-22 (5): nothing from a client for one and a half times
/// its keep-alive closes its connection, as if the network had failed, so
/// MQTT-3.1.2-8 (3.1.1 and 5): its will is published. MQTT 5 is told first with
/// DISCONNECT 0x8D (MQTT-3.14.2-1; MQTT-3.14.2-2: without Session Expiry Interval).
/// MQTT-3.2.2-22 (5): no Server Keep Alive was sent, so the client's own keep-alive is the one
/// used. The timeout scales with the keep-alive: a keep-alive 2 client connected first is
/// closed after the keep-alive 1 clients connected after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_and_its_will_published() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let file = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);
    let mut watcher = Client::connect(&broker, "ka-watcher").await;
    watcher.subscribe("ka/will/#", QoS::AtMostOnce).await;

    let (mut slow, ack) = Raw::<V4>::connect(broker.addr, &connect4_ka("ka-slow", 2, Some("ka/will/slow")));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let (mut quick4, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("ka-quick4", 1, Some("ka/will/quick4")));
    let (mut quick5, ack) = Raw::<V5>::connect(broker.addr, &connect5_ka("ka-quick5", 1, Some("ka/will/quick5")));
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), None, "no Server Keep Alive");

    assert_eq!(quick4.until_closed(), vec![], "3.1.1: closed with nothing sent");
    quick5.expect_disconnect_without_expiry(v5::DisconnectReasonCode::KeepAliveTimeout, "5");
    assert_eq!(slow.until_closed(), vec![], "keep-alive 2: closed too");

    let wills: Vec<String> = watcher.receive(3).await.into_iter().map(|p| p.topic).collect();
    let mut first_two = wills[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, ["ka/will/quick4", "ka/will/quick5"], "{wills:?}");
    assert_eq!(wills[2], "ka/will/slow", "the keep-alive 2 client outlived the keep-alive 1 ones: {wills:?}");

    let events = wait_until("three client.disconnected", || {
        let events = recorded_events(&file);
        let gone: Vec<_> = events.into_iter().filter(|e| e["hook"] == "client.disconnected").collect();
        (gone.len() == 3).then_some(gone)
    });
    for e in &events {
        assert_eq!(e["reason"], "keepalive_timeout", "{e}");
    }
}

/// Keep-alive 0 turns the mechanism off (MQTT-3.1.2-24 (3.1.1) and MQTT-3.1.2-22 (5) apply only
/// to a non-zero keep-alive; MQTT-3.2.2-22 (5): the broker uses the client's 0): clients with
/// keep-alive 0 are still connected after a keep-alive 1 client, connected after them and
/// silent for less time, was closed.
#[test]
fn keep_alive_0_means_never() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut zero4, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("ka0-v4", 0, None));
    let (mut zero5, ack) = Raw::<V5>::connect(broker.addr, &connect5_ka("ka0-v5", 0, None));
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), None);
    let (mut one, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("ka1", 1, None));
    assert_eq!(one.until_closed(), vec![], "the keep-alive 1 client is closed");
    zero4.ping("keep-alive 0, MQTT 3.1.1");
    zero5.ping("keep-alive 0, MQTT 5");
}

/// A packet begun must arrive whole within `mqtt.packet_timeout`, whatever the keep-alive:
/// MQTT-3.1.2-24 / MQTT-3.1.2-22 bound only the silence between packets, and keep-alive 0
/// turns even that off, so a client could otherwise hold half a packet (and the broker's
/// buffer for it) forever. Keep-alive 0 clients that stopped in the middle of a PUBLISH are
/// closed (MQTT 5 told with DISCONNECT 0x8D, the nearest reason); an idle keep-alive 0 client,
/// connected before them, is not: it still answers PINGREQ afterwards.
#[test]
fn a_partial_packet_is_closed_after_packet_timeout_whatever_the_keep_alive() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__PACKET_TIMEOUT", "1")]);
    let (mut idle, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("pt-idle", 0, None));
    let (mut partial4, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("pt-partial4", 0, None));
    let (mut partial5, _) = Raw::<V5>::connect(broker.addr, &connect5_ka("pt-partial5", 0, None));
    // A QoS 0 PUBLISH to "t" with a 100-byte payload (remaining length 103; MQTT 5: 104 with
    // its empty properties), cut after 50 bytes.
    let mut half4 = vec![0x30, 103, 0, 1, b't'];
    half4.extend_from_slice(&[b'x'; 45]);
    let mut half5 = vec![0x30, 104, 0, 1, b't', 0];
    half5.extend_from_slice(&[b'x'; 44]);
    partial4.send_bytes(&half4);
    partial5.send_bytes(&half5);
    assert_eq!(partial4.until_closed(), vec![], "MQTT 3.1.1: closed with nothing sent");
    partial5.expect_disconnect_without_expiry(v5::DisconnectReasonCode::KeepAliveTimeout, "MQTT 5");
    idle.ping("an idle keep-alive 0 client stays connected");
}

/// MQTT-3.12.4-1 (3.1.1 and 5): every PINGREQ is answered with a PINGRESP (MQTT 3.1 too).
#[test]
fn pingreq_is_answered_with_pingresp() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (mut raw4, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("ping4", 60, None));
    let (mut raw5, _) = Raw::<V5>::connect(broker.addr, &connect5_ka("ping5", 60, None));
    let mut raw31 = Raw::<V4>::open(broker.addr);
    raw31.send_bytes(&[0x10, 17, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 3, b'p', b'3', b'1']);
    assert!(matches!(raw31.recv(), Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success));
    for n in 0..3 {
        raw4.ping(&format!("3.1.1, ping {n}"));
        raw5.ping(&format!("5, ping {n}"));
        raw31.ping(&format!("3.1, ping {n}"));
    }
    // Two PINGREQs in one write: two PINGRESPs.
    raw4.send_bytes(&[0xc0, 0, 0xc0, 0]);
    assert_eq!(raw4.recv(), Packet::PingResp);
    assert_eq!(raw4.recv(), Packet::PingResp);
}

/// Runs `step` on `raw` every 300 ms (well within a 1 s keep-alive) until told to stop, then
/// gives the connection back.
fn keep_busy<W: e2e::raw::Wire + Send + 'static>(
    mut raw: Raw<W>,
    stop: Arc<AtomicBool>,
    mut step: impl FnMut(&mut Raw<W>, u16) + Send + 'static,
) -> std::thread::JoinHandle<Raw<W>>
where
    W::Packet: Send,
{
    std::thread::spawn(move || {
        let mut n = 1;
        while !stop.load(Ordering::Relaxed) {
            step(&mut raw, n);
            n = n.wrapping_add(1).max(1);
            std::thread::sleep(Duration::from_millis(300)); // the client's own pace
        }
        raw
    })
}

/// MQTT-3.1.2-24 (3.1.1), MQTT-3.1.2-22 (5): it is "a Control Packet", any of them, that keeps
/// the connection: keep-alive 1 clients that send only PINGREQ, only QoS 0 PUBLISH, or only
/// SUBSCRIBE/UNSUBSCRIBE (3.1.1), or only PUBLISH (5), all faster than their keep-alive, are
/// still connected after a silent keep-alive 2 client, connected after them, was closed.
#[test]
fn any_packet_resets_the_keep_alive_timer() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let stop = Arc::new(AtomicBool::new(false));

    let (pinger, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("busy-ping", 1, None));
    let pinger = keep_busy(pinger, stop.clone(), |raw, _| {
        raw.send(&Packet::PingReq);
        assert_eq!(raw.recv(), Packet::PingResp);
    });
    let (publisher, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("busy-pub", 1, None));
    let publisher = keep_busy(publisher, stop.clone(), |raw, _| {
        raw.send(&Packet::Publish(rumqttc::Publish::new("busy/noise", QoS::AtMostOnce, "x")));
    });
    let (subscriber, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("busy-sub", 1, None));
    let subscriber = keep_busy(subscriber, stop.clone(), |raw, n| {
        if n % 2 == 1 {
            let mut subscribe = rumqttc::Subscribe::new("busy/sub", QoS::AtMostOnce);
            subscribe.pkid = n;
            raw.send(&Packet::Subscribe(subscribe));
            assert!(matches!(raw.recv(), Packet::SubAck(_)));
        } else {
            let mut unsubscribe = rumqttc::Unsubscribe::new("busy/sub");
            unsubscribe.pkid = n;
            raw.send(&Packet::Unsubscribe(unsubscribe));
            assert!(matches!(raw.recv(), Packet::UnsubAck(_)));
        }
    });
    let (publisher5, _) = Raw::<V5>::connect(broker.addr, &connect5_ka("busy-pub5", 1, None));
    let publisher5 = keep_busy(publisher5, stop.clone(), |raw, _| {
        raw.send(&v5::Packet::Publish(v5::Publish::new("busy/noise5", QoS5::AtMostOnce, "x", None)));
    });

    let (mut silent, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("busy-silent", 2, None));
    assert_eq!(silent.until_closed(), vec![], "the silent client is closed");
    stop.store(true, Ordering::Relaxed);

    for (who, handle) in [("PINGREQ", pinger), ("PUBLISH", publisher), ("SUBSCRIBE", subscriber)] {
        let mut raw = handle.join().unwrap_or_else(|_| panic!("the {who} client failed"));
        raw.ping(&format!("the client sending {who}"));
    }
    let mut raw = publisher5.join().expect("the MQTT 5 PUBLISH client failed");
    raw.ping("the MQTT 5 client sending PUBLISH");
}

/// `mqtt.server_keepalive` = 1: every MQTT 5 client is told Server Keep Alive 1 in its CONNACK,
/// whatever it asked (60, or 0), and the broker enforces that value instead of the client's
/// (MQTT-3.1.2-22 (5) with the keep-alive the CONNACK set, §3.2.2.3.14): silent, they are
/// closed with DISCONNECT 0x8D. An MQTT 3.1.1 client cannot be told: its own
/// keep-alive (60) stays, and it is still connected after them.
#[test]
fn server_keepalive_is_announced_to_mqtt_5_and_enforced() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__SERVER_KEEPALIVE", "1")]);

    let (mut v311, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("ska-v311", 60, None));
    let mut clients = Vec::new();
    for asked in [60, 0] {
        let (raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_ka(&format!("ska-{asked}"), asked, None));
        assert_eq!(ack.code, v5::ConnectReturnCode::Success);
        assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), Some(1), "asked {asked}");
        clients.push((asked, raw));
    }
    for (asked, raw) in &mut clients {
        raw.expect_disconnect_without_expiry(v5::DisconnectReasonCode::KeepAliveTimeout, &format!("asked {asked}"));
    }
    v311.ping("the MQTT 3.1.1 client");
}

/// `mqtt.max_keepalive` = 2: an MQTT 5 client asking more, or 0, is told Server Keep Alive 2
/// and held to it (closed with 0x8D when silent); one asking 2 or less keeps its own
/// (MQTT-3.2.2-22 (5): no Server Keep Alive then). MQTT 3.1.1 cannot be told: asking more is
/// refused with CONNACK 0x02 and closed (MQTT-3.2.2-4, MQTT-3.2.2-5 (3.1.1)); asking 0 or at
/// most 2 is accepted, and keep-alive 0 still means never.
#[test]
fn max_keepalive_caps_the_keep_alive_clients_ask_for() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_KEEPALIVE", "2")]);

    let (mut zero4, ack) = Raw::<V4>::connect(broker.addr, &connect4_ka("max-v4-0", 0, None));
    assert_eq!(ack.code, ConnectReturnCode::Success, "3.1.1 asking 0");
    let (mut two4, ack) = Raw::<V4>::connect(broker.addr, &connect4_ka("max-v4-2", 2, None));
    assert_eq!(ack.code, ConnectReturnCode::Success, "3.1.1 asking 2");
    two4.ping("3.1.1 asking 2");
    for asked in [3, 60, 65535] {
        let mut raw = Raw::<V4>::open(broker.addr);
        raw.send(&connect4_ka(&format!("max-v4-{asked}"), asked, None));
        match &raw.until_closed()[..] {
            [Packet::ConnAck(ack)] => {
                assert_eq!(ack.code, ConnectReturnCode::BadClientId, "3.1.1 asking {asked}: 0x02");
                assert!(!ack.session_present);
            }
            other => panic!("3.1.1 asking {asked}: expected CONNACK 0x02 then the close, got {other:?}"),
        }
    }

    for (asked, told) in [(1, None), (2, None), (60, Some(2)), (0, Some(2))] {
        let (mut raw, ack) = Raw::<V5>::connect(broker.addr, &connect5_ka(&format!("max-v5-{asked}"), asked, None));
        assert_eq!(ack.code, v5::ConnectReturnCode::Success);
        assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), told, "MQTT 5 asking {asked}");
        if asked == 0 {
            // Told 2 instead of "never": closed when silent.
            raw.expect_disconnect_without_expiry(v5::DisconnectReasonCode::KeepAliveTimeout, "MQTT 5 asking 0");
        } else {
            raw.ping(&format!("MQTT 5 asking {asked}"));
        }
    }
    zero4.ping("3.1.1 asking 0 (connected before the MQTT 5 one closed for silence)");
}

/// A CONNECT refused for its keep-alive (over `mqtt.max_keepalive`, 3.1.1) is refused before
/// it is processed any further (§3.1.4 of 3.1.1, in this order: MQTT-3.1.4-1 validation, then
/// MQTT-3.1.4-2 disconnecting a client already connected with that id, MQTT-3.1.4-3 session
/// processing, MQTT-3.1.4-4 CONNACK 0; MQTT-3.2.2-4 and MQTT-3.2.2-5: a refusal, no session
/// present, closed): the live client with the same client id is not taken over, no session is
/// left behind, and a later valid CONNECT with the other refused id finds nothing to take over.
#[test]
fn a_connect_refused_for_its_keep_alive_changes_nothing() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[("BROKER_MQTT__MAX_KEEPALIVE", "2")]);
    let (mut live, _) = Raw::<V4>::connect(broker.addr, &connect4_ka("refused-ka", 0, None));
    assert_eq!(stat(&dir, "sessions.count"), 1);

    for id in ["refused-ka", "refused-ka-new"] {
        let mut raw = Raw::<V4>::open(broker.addr);
        raw.send(&connect4_ka(id, 60, None));
        match &raw.until_closed()[..] {
            [Packet::ConnAck(ack)] => {
                assert_eq!(ack.code, ConnectReturnCode::BadClientId, "{id}");
                assert!(!ack.session_present, "{id}");
            }
            other => panic!("{id}: expected CONNACK 0x02 then the close, got {other:?}"),
        }
    }
    live.send(&Packet::PingReq);
    let live_answers = live.next_packet() == Some(Packet::PingResp);
    let sessions = stat(&dir, "sessions.count");
    let connections = stat(&dir, "connections.count");
    // A valid CONNECT with the other refused id: if a session had been left attached to the
    // refused connection, the broker would first wait for it to let go, and say so.
    let (_ok, ack) = Raw::<V4>::connect(broker.addr, &connect4_ka("refused-ka-new", 1, None));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(!ack.session_present, "nothing was left of the refused CONNECT");
    let stuck = broker.logs().into_iter().find(|l| l.contains("did not let go in time"));
    assert!(
        live_answers && sessions == 1 && connections == 1 && stuck.is_none(),
        "the refused CONNECTs changed the broker's state: the live client with the same id still \
         connected: {live_answers}; sessions.count {sessions} (expected 1); connections.count {connections} \
         (expected 1); takeover wait on the next CONNECT: {stuck:?}"
    );
}
