//! Publish / subscribe through the host at every QoS, with rumqttc and mosquitto clients,
//! MQTT 3.1.1 and 5, and keep-alive 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use e2e::{mosquitto, Broker, Client, DataDir};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_at_every_qos() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut publisher = Client::connect(&broker, "pub").await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let mut sub = Client::connect(&broker, &format!("sub{i}")).await;
        sub.subscribe(&format!("t/{i}/#"), qos).await;
        for n in 0..20 {
            publisher.publish_acked(&format!("t/{i}/x"), qos, format!("{i}-{n}")).await;
        }
        let got = sub.receive(20).await;
        for (n, p) in got.iter().enumerate() {
            assert_eq!(p.topic, format!("t/{i}/x"));
            assert_eq!(p.qos, qos);
            assert_eq!(p.payload, format!("{i}-{n}").as_bytes(), "in order, none lost");
        }
        sub.disconnect().await;
    }
    publisher.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_qos_caps_delivery_qos() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut sub = Client::connect(&broker, "sub0").await;
    sub.subscribe("cap", QoS::AtMostOnce).await;
    let mut publisher = Client::connect(&broker, "pub0").await;
    publisher.publish_acked("cap", QoS::ExactlyOnce, "x").await;
    let got = sub.receive(1).await;
    assert_eq!(got[0].qos, QoS::AtMostOnce);
}

#[test]
fn mosquitto_clients_round_trip_v311_and_v5() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let port = broker.port().to_string();
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("mosq/{version}");
        let sub = mosquitto("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "2", "-C", "3", "-W", "20", "-v"])
            .args(["-t", &topic, "-i", &format!("msub-{version}")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        // Publish until the subscriber (which may still be connecting) has its three
        // messages; it exits after three.
        let mut child = sub;
        let mut sent = 0;
        let deadline = std::time::Instant::now() + e2e::DEADLINE;
        while child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "mosquitto_sub did not get 3 messages");
            let status = mosquitto("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1"])
                .args(["-t", &topic, "-m", &format!("m{sent}")])
                .status()
                .unwrap();
            assert!(status.success());
            sent += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines.iter().all(|l| l.starts_with(&format!("{topic} m"))), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_clients_work_through_the_host() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("v5", "127.0.0.1", broker.port()), 10);
    let received = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("v5 connection failed: {e}"),
            }
        }
    });
    client.subscribe("five", QoS5::AtLeastOnce).await.unwrap();
    // The SUBACK and the publish travel on one connection in order, so the subscription is
    // in place before the message arrives at the router.
    client.publish("five", QoS5::AtLeastOnce, false, "hello v5").await.unwrap();
    let publish = tokio::time::timeout(e2e::DEADLINE, received).await.expect("v5 message").unwrap();
    assert_eq!(&publish.topic[..], b"five");
    assert_eq!(&publish.payload[..], b"hello v5");
}

/// A 3.1.1 CONNECT with keep-alive 0 ("no keep-alive") is legal and accepted (bare rumqttd
/// 0.20 drops it without a CONNACK).
#[test]
fn keepalive_zero_is_accepted() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mut stream = TcpStream::connect(broker.addr).unwrap();
    stream.set_read_timeout(Some(e2e::DEADLINE)).unwrap();
    let connect = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 2, b'k', b'0'];
    stream.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    // And the connection is usable: PINGREQ gets a PINGRESP.
    stream.write_all(&[0xc0, 0]).unwrap();
    let mut pingresp = [0u8; 2];
    stream.read_exact(&mut pingresp).unwrap();
    assert_eq!(pingresp, [0xd0, 0]);
}
