//! The ssl, ws and wss listeners (EMQX's `listener.ssl`, `listener.ws`, `listener.wss`):
//! real TLS clients (mosquitto_pub, rumqttc) with certificates made here by rcgen, MQTT over
//! WebSocket with rumqttc, per-listener limits, and the startup errors of bad TLS files.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e::{broker_exe, mosquitto, options, wait_until, Broker, Client, DataDir, DEADLINE};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rumqttc::{Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Ca { issuer }
    }

    /// A leaf certificate and its key, PEM: for `names` (SANs) and with `cn` as Common Name.
    fn leaf(&self, names: &[&str], cn: &str, expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("names");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, "e2e");
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// The files of a test's PKI, in the data directory.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    expired_cert: PathBuf,
    expired_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
    /// A server certificate for 127.0.0.1 signed by another CA.
    rogue_server_cert: PathBuf,
    rogue_server_key: PathBuf,
}

const CLIENT_CN: &str = "sensor-42";

impl Pki {
    fn new(dir: &DataDir) -> Pki {
        let ca = Ca::new("e2e CA");
        let other = Ca::new("another CA");
        let write = |name: &str, text: &str| {
            dir.write(name, text);
            dir.file(name)
        };
        let server_names = ["127.0.0.1", "localhost"];
        let (server_cert, server_key) = ca.leaf(&server_names, "broker", false);
        let (client_cert, client_key) = ca.leaf(&[], CLIENT_CN, false);
        let (expired_cert, expired_key) = ca.leaf(&[], "expired-client", true);
        let (stranger_cert, stranger_key) = other.leaf(&[], "stranger", false);
        let (rogue_cert, rogue_key) = other.leaf(&server_names, "rogue broker", false);
        Pki {
            ca: write("ca.pem", &ca.issuer.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            expired_cert: write("expired.pem", &expired_cert),
            expired_key: write("expired.key", &expired_key),
            stranger_cert: write("stranger.pem", &stranger_cert),
            stranger_key: write("stranger.key", &stranger_key),
            rogue_server_cert: write("rogue.pem", &rogue_cert),
            rogue_server_key: write("rogue.key", &rogue_key),
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `mosquitto_pub` to `port` over TLS with the CA `cafile` and `extra` arguments.
fn mosquitto_pub_tls(port: u16, cafile: &Path, extra: &[&str], topic: &str, message: &str) -> Output {
    mosquitto("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile", path(cafile)])
        .args(["-t", topic, "-m", message, "-q", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_pub runs")
}

fn ssl_env<'a>(pki: &'a Pki, prefix: &'a str) -> Vec<(String, &'a str)> {
    vec![
        (format!("{prefix}__BIND"), "127.0.0.1:0"),
        (format!("{prefix}__CERTFILE"), path(&pki.server_cert)),
        (format!("{prefix}__KEYFILE"), path(&pki.server_key)),
    ]
}

fn start(dir: &DataDir, env: &[(String, &str)]) -> Broker {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    Broker::start(dir, &env)
}

/// Waits for a message on the TCP subscriber and returns its payload.
async fn next_payload(client: &mut Client) -> String {
    let publish = client.receive(1).await.remove(0);
    String::from_utf8_lossy(&publish.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_with_cafile_publishes_over_tls_to_a_tcp_subscriber() {
    let dir = DataDir::new();
    let pki = Pki::new(&dir);
    let broker = start(&dir, &ssl_env(&pki, "BROKER_LISTENER__SSL"));
    let ssl = broker.logged_addr("ssl listener on ");
    assert_ne!(ssl.port(), broker.port(), "its own port");

    let mut subscriber = Client::connect(&broker, "tcp-sub").await;
    subscriber.subscribe("tls/#", QoS::AtLeastOnce).await;
    let out = mosquitto_pub_tls(ssl.port(), &pki.ca, &[], "tls/hello", "over tls");
    assert!(out.status.success(), "mosquitto_pub over TLS: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(next_payload(&mut subscriber).await, "over tls");

    // Plain MQTT on the TLS port is no TLS handshake: refused, and the broker goes on.
    let out = mosquitto("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &ssl.port().to_string(), "-t", "tls/x", "-m", "plain", "-q", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "plain MQTT on the ssl listener must fail");
    broker.wait_for_log("TLS handshake failed");
    let out = mosquitto_pub_tls(ssl.port(), &pki.ca, &[], "tls/hello", "still serving");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(next_payload(&mut subscriber).await, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_peer_takes_only_client_certificates_of_the_ca_and_cn_becomes_the_username() {
    let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n");
    let pki = Pki::new(&dir);
    let mut env = ssl_env(&pki, "BROKER_LISTENER__SSL");
    env.extend([
        ("BROKER_LISTENER__SSL__CACERTFILE".to_owned(), path(&pki.ca)),
        ("BROKER_LISTENER__SSL__VERIFY_PEER".to_owned(), "true"),
        ("BROKER_LISTENER__SSL__FAIL_IF_NO_PEER_CERT".to_owned(), "true"),
        ("BROKER_LISTENER__SSL__PEER_CERT_AS_USERNAME".to_owned(), "cn"),
    ]);
    let broker = start(&dir, &env);
    let ssl = broker.logged_addr("ssl listener on ");
    let mut subscriber = Client::connect(&broker, "tcp-sub").await;
    subscriber.subscribe("secure/#", QoS::AtLeastOnce).await;
    subscriber.subscribe("$SYS/brokers/+/clients/+/connected", QoS::AtLeastOnce).await;

    // With the client certificate: accepted; its CN is the username (the CONNECT's is not).
    let with_cert = ["--cert", path(&pki.client_cert), "--key", path(&pki.client_key)];
    let mut args = with_cert.to_vec();
    args.extend(["-i", "cert-client", "-u", "typed-name"]);
    let out = mosquitto_pub_tls(ssl.port(), &pki.ca, &args, "secure/a", "with cert");
    assert!(out.status.success(), "with a client certificate: {}", String::from_utf8_lossy(&out.stderr));
    let mut connected = None;
    let mut delivered = None;
    while connected.is_none() || delivered.is_none() {
        let publish = subscriber.receive(1).await.remove(0);
        if publish.topic.ends_with("/cert-client/connected") {
            connected = Some(serde_json::from_slice::<Value>(&publish.payload).expect("presence JSON"));
        } else if publish.topic == "secure/a" {
            delivered = Some(String::from_utf8_lossy(&publish.payload).into_owned());
        }
    }
    let connected = connected.unwrap();
    assert_eq!(connected["username"], CLIENT_CN, "peer_cert_as_username = cn");
    assert_eq!(connected["sockport"], ssl.port(), "sockport is the ssl listener's");
    assert_eq!(connected["proto_name"], "MQTT");
    assert_eq!(delivered.as_deref(), Some("with cert"));

    // Without a certificate (fail_if_no_peer_cert), with an expired one, or with one of
    // another CA: the TLS handshake fails and nothing is published.
    let refused: [(&str, Vec<&str>); 3] = [
        ("no certificate", vec![]),
        ("an expired certificate", vec!["--cert", path(&pki.expired_cert), "--key", path(&pki.expired_key)]),
        ("another CA's certificate", vec!["--cert", path(&pki.stranger_cert), "--key", path(&pki.stranger_key)]),
    ];
    for (what, args) in &refused {
        let out = mosquitto_pub_tls(ssl.port(), &pki.ca, args, "secure/b", what);
        assert!(!out.status.success(), "{what} must be refused");
    }
    // The broker still serves, and none of the refused messages arrived before this one.
    let out = mosquitto_pub_tls(ssl.port(), &pki.ca, &with_cert, "secure/c", "after refusals");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    loop {
        let publish = subscriber.receive(1).await.remove(0);
        assert_ne!(publish.topic, "secure/b", "a refused client published");
        if publish.topic == "secure/c" {
            break;
        }
    }
    let failures = broker.logs().iter().filter(|l| l.contains("TLS handshake failed")).count();
    assert!(failures >= refused.len(), "each refusal is logged ({failures})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_a_server_certificate_of_another_ca() {
    let dir = DataDir::new();
    let pki = Pki::new(&dir);
    let env = vec![
        ("BROKER_LISTENER__SSL__BIND".to_owned(), "127.0.0.1:0"),
        ("BROKER_LISTENER__SSL__CERTFILE".to_owned(), path(&pki.rogue_server_cert)),
        ("BROKER_LISTENER__SSL__KEYFILE".to_owned(), path(&pki.rogue_server_key)),
    ];
    let broker = start(&dir, &env);
    let ssl = broker.logged_addr("ssl listener on ");
    let out = mosquitto_pub_tls(ssl.port(), &pki.ca, &[], "t", "m");
    assert!(!out.status.success(), "mosquitto_pub must refuse a server certificate its CA did not sign");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("certificate") || stderr.contains("tls") || stderr.contains("ssl"), "{stderr}");
}

/// Room for the large message of `round_trip`.
const BIG: usize = 256 * 1024;

fn ws_options(id: &str, url: String) -> MqttOptions {
    let mut options = MqttOptions::new(id, url, 0);
    options.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(BIG, BIG);
    options.set_transport(Transport::Ws);
    options
}

/// A rumqttc client over WebSocket publishes to a TCP subscriber and receives from a TCP
/// publisher: the same routing whatever the listener.
async fn round_trip(broker: &Broker, over: MqttOptions, topic: &str) {
    let mut tcp_options = options(broker, &format!("tcp-{topic}"));
    tcp_options.set_max_packet_size(BIG, BIG);
    let mut tcp = Client::connect_with(tcp_options).await;
    tcp.subscribe(&format!("{topic}/from-ws"), QoS::AtLeastOnce).await;
    let mut ws = Client::connect_with(over).await;
    ws.subscribe(&format!("{topic}/from-tcp"), QoS::AtLeastOnce).await;

    // Larger than one read and one frame's worth of small writes: a packet over frames.
    let big = "x".repeat(BIG / 2);
    ws.publish_acked(&format!("{topic}/from-ws"), QoS::AtLeastOnce, "hello from ws").await;
    ws.publish_acked(&format!("{topic}/from-ws"), QoS::AtLeastOnce, big.clone()).await;
    assert_eq!(next_payload(&mut tcp).await, "hello from ws");
    assert_eq!(next_payload(&mut tcp).await, big);

    tcp.publish_acked(&format!("{topic}/from-tcp"), QoS::AtLeastOnce, "hello from tcp").await;
    assert_eq!(next_payload(&mut ws).await, "hello from tcp");
    ws.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_websocket_talks_to_tcp_clients() {
    let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n");
    let broker = Broker::start(&dir, &[("BROKER_LISTENER__WS__BIND", "127.0.0.1:0")]);
    let ws = broker.logged_addr(" ws listener on ");
    let mut watcher = Client::connect(&broker, "watcher").await;
    watcher.subscribe("$SYS/brokers/+/clients/ws-client/connected", QoS::AtLeastOnce).await;

    round_trip(&broker, ws_options("ws-client", format!("ws://{ws}/mqtt")), "ws").await;
    let presence: Value = serde_json::from_slice(&watcher.receive(1).await[0].payload).unwrap();
    assert_eq!(presence["sockport"], ws.port(), "sockport is the ws listener's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_secure_websocket_talks_to_tcp_clients() {
    let dir = DataDir::new();
    let pki = Pki::new(&dir);
    let mut env = ssl_env(&pki, "BROKER_LISTENER__WSS");
    env.push(("BROKER_LISTENER__WSS__PATH".to_owned(), "/secure-mqtt"));
    let broker = start(&dir, &env);
    let wss = broker.logged_addr("wss listener on ");

    // rumqttc builds its rustls config from the process-wide provider; this test binary links
    // rustls with both aws-lc-rs and ring (through its dependencies), so one is chosen here.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut options = ws_options("wss-client", format!("wss://{wss}/secure-mqtt"));
    let ca = std::fs::read(&pki.ca).unwrap();
    options.set_transport(Transport::Wss(TlsConfiguration::Simple { ca, alpn: None, client_auth: None }));
    round_trip(&broker, options, "wss").await;
}

/// MQTT-6.0.0-2: packets need not align with WebSocket frames: a CONNECT split over two
/// frames, then a SUBSCRIBE and a PUBLISH in one frame, are all understood. MQTT-6.0.0-1: a
/// text frame closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_packets_need_not_align_with_websocket_frames() {
    use async_tungstenite::tungstenite::client::IntoClientRequest;
    use async_tungstenite::tungstenite::Message;
    use futures_util::StreamExt;

    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[("BROKER_LISTENER__WS__BIND", "127.0.0.1:0")]);
    let ws = broker.logged_addr(" ws listener on ");
    let mut request = format!("ws://{ws}/mqtt").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(ws).await.unwrap();
    let (mut socket, response) = async_tungstenite::tokio::client_async(request, tcp).await.expect("upgrade");
    // MQTT-6.0.0-4: the server selects "mqtt".
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");

    let connect: &[u8] = &[0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b'r', b'a', b'w', b'1'];
    socket.send(Message::binary(connect[..7].to_vec())).await.unwrap();
    socket.send(Message::binary(connect[7..].to_vec())).await.unwrap();
    let mut both = vec![0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 0]; // SUBSCRIBE a/b QoS 0
    both.extend_from_slice(&[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i']); // PUBLISH a/b "hi"
    socket.send(Message::binary(both)).await.unwrap();

    // CONNACK, SUBACK and the PUBLISH back, in whatever frames the broker chose.
    let mut received = Vec::new();
    let expected: &[u8] = &[0x20, 2, 0, 0, 0x90, 3, 0, 1, 0, 0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'];
    while received.len() < expected.len() {
        match tokio::time::timeout(DEADLINE, socket.next()).await.expect("an answer") {
            Some(Ok(Message::Binary(bytes))) => received.extend_from_slice(&bytes),
            other => panic!("expected binary frames, got {other:?}"),
        }
    }
    assert_eq!(received, expected);

    socket.send(Message::text("not MQTT")).await.unwrap();
    let closed = async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, closed).await.expect("a text frame closes the connection");
}

/// A WebSocket frame larger than `mqtt.max_packet_size` (plus a little slack for small
/// packets sharing the frame) closes the connection before the broker buffers it, also before
/// CONNECT (MQTT-6.0.0-2 lets packets span frames; a frame is no excuse to hold more than a
/// packet). Here a frame of a CONNECT and 4,000 PINGREQs (8,018 bytes, each packet valid) is
/// refused with `max_packet_size = 1024`, while one of a CONNECT and 100 PINGREQs is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_frame_over_the_packet_size_limit_closes_the_connection_before_connect() {
    use async_tungstenite::tungstenite::client::IntoClientRequest;
    use async_tungstenite::tungstenite::Message;
    use futures_util::StreamExt;

    let dir = DataDir::new();
    let broker =
        Broker::start(&dir, &[("BROKER_LISTENER__WS__BIND", "127.0.0.1:0"), ("BROKER_MQTT__MAX_PACKET_SIZE", "1024")]);
    let ws = broker.logged_addr(" ws listener on ");
    let connect: &[u8] = &[0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b'r', b'a', b'w', b'1'];
    // The first answer to one frame holding the CONNECT and `pings` PINGREQs: `Some(bytes)`
    // of the first binary frame, `None` when the connection closed instead.
    let first_answer = |pings: usize| async move {
        let mut request = format!("ws://{ws}/mqtt").into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(ws).await.unwrap();
        let (mut socket, _) = async_tungstenite::tokio::client_async(request, tcp).await.expect("upgrade");
        let mut frame = connect.to_vec();
        for _ in 0..pings {
            frame.extend_from_slice(&[0xc0, 0]);
        }
        // The broker may close while the frame is still being sent.
        let _ = socket.send(Message::binary(frame)).await;
        loop {
            match tokio::time::timeout(DEADLINE, socket.next()).await.expect("an answer or the close") {
                Some(Ok(Message::Binary(bytes))) => return Some(bytes.to_vec()),
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(_)) => {}
            }
        }
    };
    let served = first_answer(100).await.expect("a frame within the limit is served");
    assert_eq!(&served[..4], &[0x20, 2, 0, 0], "CONNACK first");
    assert_eq!(first_answer(4000).await, None, "a frame over the limit must close the connection unanswered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_websocket_path_gets_404() {
    let dir = DataDir::new();
    let broker = Broker::start(&dir, &[("BROKER_LISTENER__WS__BIND", "127.0.0.1:0")]);
    let ws = broker.logged_addr(" ws listener on ");

    let response = http_upgrade(ws, "/not-mqtt");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    broker.wait_for_log("WebSocket upgrade refused");
    // rumqttc to the wrong path fails; to the right one it connects (and names `mqtt`).
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(ws_options("lost", format!("ws://{ws}/other")), 10);
    let error = tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await.expect("an answer");
    assert!(error.is_err(), "connected on a wrong path: {error:?}");
    let response = http_upgrade(ws, "/mqtt");
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert!(response.to_lowercase().contains("sec-websocket-protocol: mqtt"), "{response}");
}

/// Sends a WebSocket upgrade request for `path` offering `mqtt`; returns the response head.
fn http_upgrade(addr: SocketAddr, path: &str) -> String {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket.write_all(upgrade_request(addr, path).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A WebSocket upgrade request for `path`, offering `mqtt`.
fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    upgrade_request_with(addr, path, "")
}

/// A WebSocket upgrade request for `path`, offering `mqtt`, with `headers` (whole lines) too.
fn upgrade_request_with(addr: SocketAddr, path: &str, headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n{headers}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_has_its_own_max_connections() {
    let dir = DataDir::new();
    let broker = Broker::start(
        &dir,
        &[("BROKER_LISTENER__WS__BIND", "127.0.0.1:0"), ("BROKER_LISTENER__WS__MAX_CONNECTIONS", "1")],
    );
    let ws = broker.logged_addr(" ws listener on ");
    let first = Client::connect_with(ws_options("ws-1", format!("ws://{ws}/mqtt"))).await;

    let (_client, mut eventloop) = rumqttc::AsyncClient::new(ws_options("ws-2", format!("ws://{ws}/mqtt")), 10);
    let second = tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await.expect("an answer");
    assert!(second.is_err(), "a second ws client past max_connections = 1 connected: {second:?}");
    broker.wait_for_log("connection refused: listener.ws.max_connections (1) reached");

    // The TCP listener has its own limit.
    Client::connect(&broker, "tcp-1").await.disconnect().await;
    // A slot comes free when the first client leaves.
    first.disconnect().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !ws_connects(ws_options("ws-3", format!("ws://{ws}/mqtt"))).await {
        assert!(tokio::time::Instant::now() < deadline, "the ws slot never came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a client with `options` gets a CONNACK.
async fn ws_connects(options: MqttOptions) -> bool {
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let answer = tokio::time::timeout(DEADLINE, eventloop.poll()).await.expect("an answer");
    matches!(answer, Ok(Event::Incoming(Packet::ConnAck(_))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_cannot_hold_a_tls_slot() {
    let dir = DataDir::new();
    let pki = Pki::new(&dir);
    let mut env = ssl_env(&pki, "BROKER_LISTENER__SSL");
    env.push(("BROKER_LISTENER__SSL__MAX_CONNECTIONS".to_owned(), "1"));
    env.push(("BROKER_MQTT__CONNECT_TIMEOUT".to_owned(), "1"));
    let broker = start(&dir, &env);
    let ssl = broker.logged_addr("ssl listener on ");

    // A TCP client that never starts its TLS handshake is closed by the broker...
    let mut silent = TcpStream::connect(ssl).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).unwrap_or(0), 0, "the broker closes a silent TLS client");
    broker.wait_for_log("TLS handshake not done within mqtt.connect_timeout");
    // ...and its slot is free again for a real one.
    wait_until("a TLS client to be served", || {
        mosquitto_pub_tls(ssl.port(), &pki.ca, &[], "t", "m").status.success().then_some(())
    });
}

/// Runs the broker with `env` and expects it to refuse to start; returns its stderr.
fn startup_error(dir: &DataDir, env: &[(&str, &str)]) -> String {
    let out = Command::new(broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("BROKER_TELEMETRY__URL", "http://127.0.0.1:9/api/telemetry")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("broker runs");
    assert!(!out.status.success(), "the broker started with bad TLS settings");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_certificate_or_key_file_is_a_startup_error_naming_it() {
    let dir = DataDir::new();
    let pki = Pki::new(&dir);
    dir.write("garbage.pem", "this is not PEM\n");
    let garbage = dir.file("garbage.pem");
    let missing = dir.file("missing.pem");
    let (cert, key) = (path(&pki.server_cert), path(&pki.server_key));
    let bind = ("BROKER_LISTENER__SSL__BIND", "127.0.0.1:0");

    let err = startup_error(
        &dir,
        &[bind, ("BROKER_LISTENER__SSL__CERTFILE", path(&missing)), ("BROKER_LISTENER__SSL__KEYFILE", key)],
    );
    assert!(err.contains("listener.ssl.certfile") && err.contains(path(&missing)), "{err}");
    let err = startup_error(
        &dir,
        &[bind, ("BROKER_LISTENER__SSL__CERTFILE", path(&garbage)), ("BROKER_LISTENER__SSL__KEYFILE", key)],
    );
    assert!(
        err.contains("listener.ssl.certfile") && err.contains(path(&garbage)) && err.contains("no PEM certificate"),
        "{err}"
    );
    let err = startup_error(
        &dir,
        &[bind, ("BROKER_LISTENER__SSL__CERTFILE", cert), ("BROKER_LISTENER__SSL__KEYFILE", path(&garbage))],
    );
    assert!(err.contains("listener.ssl.keyfile") && err.contains(path(&garbage)), "{err}");
    // A key that is not the certificate's.
    let err = startup_error(
        &dir,
        &[bind, ("BROKER_LISTENER__SSL__CERTFILE", cert), ("BROKER_LISTENER__SSL__KEYFILE", path(&pki.client_key))],
    );
    assert!(err.contains("listener.ssl.keyfile") && err.contains("does not go with certfile"), "{err}");
    let err = startup_error(&dir, &[bind, ("BROKER_LISTENER__SSL__KEYFILE", key)]);
    assert!(err.contains("listener.ssl.certfile is not set"), "{err}");
    let wss = ("BROKER_LISTENER__WSS__BIND", "127.0.0.1:0");
    let err = startup_error(
        &dir,
        &[
            wss,
            ("BROKER_LISTENER__WSS__CERTFILE", cert),
            ("BROKER_LISTENER__WSS__KEYFILE", key),
            ("BROKER_LISTENER__WSS__VERIFY_PEER", "true"),
        ],
    );
    assert!(err.contains("listener.wss.cacertfile is not set"), "{err}");
    let err = startup_error(
        &dir,
        &[
            bind,
            ("BROKER_LISTENER__SSL__CERTFILE", cert),
            ("BROKER_LISTENER__SSL__KEYFILE", key),
            ("BROKER_LISTENER__SSL__PEER_CERT_AS_USERNAME", "md5"),
        ],
    );
    assert!(err.contains("listener.ssl.peer_cert_as_username = \"md5\""), "{err}");
}

#[test]
fn the_tls_listeners_read_their_settings_from_the_config_file() {
    let dir = DataDir::new();
    let pki = Pki::new(&dir);
    dir.write(
        "broker.toml",
        &format!(
            "[listener.ssl]\nbind = \"127.0.0.1:0\"\ncertfile = {:?}\nkeyfile = {:?}\n\n\
             [listener.ws]\nbind = \"127.0.0.1:0\"\npath = \"/ws\"\n",
            path(&pki.server_cert),
            path(&pki.server_key)
        ),
    );
    let broker = Broker::start(&dir, &[]);
    let ssl = broker.logged_addr("ssl listener on ");
    let ws = broker.logged_addr(" ws listener on ");
    assert!(mosquitto_pub_tls(ssl.port(), &pki.ca, &[], "t", "m").status.success());
    assert!(http_upgrade(ws, "/ws").starts_with("HTTP/1.1 101"));
    assert!(!broker.logs().iter().any(|l| l.contains("wss listener on ")), "wss is off without a bind");
}

/// `peer_cert_as_username = "dn"`: the certificate's whole subject is the username; with
/// `verify_peer` but no `fail_if_no_peer_cert`, a client without a certificate still gets
/// in, with its own username.
#[test]
fn peer_cert_as_username_dn_gives_the_subject() {
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
    let events = dir.file("events.jsonl");
    let pki = Pki::new(&dir);
    let mut env = ssl_env(&pki, "BROKER_LISTENER__SSL");
    env.extend([
        ("BROKER_LISTENER__SSL__CACERTFILE".to_owned(), path(&pki.ca)),
        ("BROKER_LISTENER__SSL__VERIFY_PEER".to_owned(), "true"),
        ("BROKER_LISTENER__SSL__PEER_CERT_AS_USERNAME".to_owned(), "dn"),
        ("BROKER_HOOK_RECORDER__FILE".to_owned(), path(&events)),
    ]);
    let broker = start(&dir, &env);
    let ssl = broker.logged_addr("ssl listener on ");
    let with_cert = ["--cert", path(&pki.client_cert), "--key", path(&pki.client_key), "-i", "dn-client"];
    assert!(mosquitto_pub_tls(ssl.port(), &pki.ca, &with_cert, "t", "m").status.success());
    let without = ["-i", "plain-client", "-u", "typed-name"];
    assert!(mosquitto_pub_tls(ssl.port(), &pki.ca, &without, "t", "m").status.success());

    let username = |client: &str| {
        wait_until(&format!("client.connect of {client}"), || {
            e2e::recorded_events(&events)
                .into_iter()
                .find(|e| e["hook"] == "client.connect" && e["client_id"] == client)
                .map(|e| e["username"].as_str().unwrap_or_default().to_owned())
        })
    };
    let dn = username("dn-client");
    assert!(dn.contains(&format!("CN={CLIENT_CN}")) && dn.contains("O=e2e"), "{dn}");
    assert_eq!(username("plain-client"), "typed-name");
}

/// A packet begun must arrive whole within `mqtt.packet_timeout` over WebSocket too, whatever
/// the keep-alive (MQTT-3.1.2-24 bounds only the silence between packets, and keep-alive 0
/// turns even that off). tungstenite holds an unfinished frame or fragmented message where the
/// MQTT reader cannot see it, so this is checked below MQTT: keep-alive 0 clients that stopped
/// in the middle of a frame, or between the frames of a message, are closed. An idle
/// keep-alive 0 client, connected before them and sending a WebSocket ping (a control frame,
/// not a message), is not: it still answers PINGREQ afterwards.
#[test]
fn a_websocket_frame_or_message_left_unfinished_is_closed_after_packet_timeout() {
    let dir = DataDir::new();
    let broker =
        Broker::start(&dir, &[("BROKER_LISTENER__WS__BIND", "127.0.0.1:0"), ("BROKER_MQTT__PACKET_TIMEOUT", "1")]);
    let ws = broker.logged_addr(" ws listener on ");
    let mut idle = RawWs::connect(ws, "ws-idle");
    idle.send_frame(true, 9, b"still here");
    assert_eq!(idle.read_frame(), Some((10, b"still here".to_vec())), "a pong for the ping");

    let mut mid_frame = RawWs::connect(ws, "ws-mid-frame");
    let mut begun = frame_header(true, 2, 1000);
    begun.extend_from_slice(&[0x30; 100]);
    mid_frame.socket.write_all(&begun).unwrap();
    let mut mid_message = RawWs::connect(ws, "ws-mid-message");
    mid_message.send_frame(false, 2, &[0xc0, 0]); // a PINGREQ, in a message that never ends

    assert_eq!(mid_frame.until_closed(), Vec::<u8>::new(), "mid-frame: closed, no PINGRESP, no MQTT answer");
    assert_eq!(mid_message.until_closed(), Vec::<u8>::new(), "mid-message: closed, the PINGREQ never seen");
    idle.send_frame(true, 2, &[0xc0, 0]);
    assert_eq!(idle.read_frame(), Some((2, vec![0xd0, 0])), "the idle client is still served");
}

/// The same over TLS (ssl and wss): rustls holds an unfinished record where neither the
/// WebSocket layer nor the MQTT reader can see it, so the records are followed below TLS. A
/// keep-alive 0 client that sent half of the record carrying a PUBLISH is closed after
/// `mqtt.packet_timeout` (before, it was held open for good); an idle one is still served.
#[test]
fn half_a_tls_record_is_closed_after_packet_timeout_on_ssl_and_wss() {
    let dir = DataDir::with_plugins("");
    let pki = Pki::new(&dir);
    let mut env = ssl_env(&pki, "BROKER_LISTENER__SSL");
    env.extend(ssl_env(&pki, "BROKER_LISTENER__WSS"));
    env.push(("BROKER_MQTT__PACKET_TIMEOUT".to_owned(), "1"));
    let broker = start(&dir, &env);
    let (ssl, wss) = (broker.logged_addr("ssl listener on "), broker.logged_addr("wss listener on "));

    // CONNECT (3.1.1, clean session, keep-alive 0), then its CONNACK.
    let connect = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, id: u8| {
        tls.write_all(&[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 2, b'h', id]).unwrap();
        let mut connack = [0; 4];
        tls.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0]);
    };
    let mut idle = tls_behind_balancer(&pki, ssl, b"");
    connect(&mut idle, b'i');

    // A PUBLISH of 3,000 bytes to "t", encrypted, and half of its record written.
    let mut publish = vec![0x30, 0xb8, 0x17, 0, 1, b't'];
    publish.resize(publish.len() + 2997, b'x');
    let half_written = |mut tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>, plaintext: &[u8]| {
        tls.conn.writer().write_all(plaintext).unwrap();
        let mut records = Vec::new();
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut records).unwrap();
        }
        tls.sock.write_all(&records[..records.len() / 2]).unwrap();
        tls.sock
    };
    let mut ssl_client = tls_behind_balancer(&pki, ssl, b"");
    connect(&mut ssl_client, b's');
    let ssl_socket = half_written(ssl_client, &publish);

    let wss_tls = tls_behind_balancer(&pki, wss, b"");
    let (wss_client, connack) = RawWs::over(wss_tls, wss, "", "h-wss").expect("the upgrade and a CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let mut frame = frame_header(true, 2, publish.len());
    frame.extend_from_slice(&publish);
    let wss_socket = half_written(wss_client.socket, &frame);

    for (name, mut socket) in [("ssl", ssl_socket), ("wss", wss_socket)] {
        let mut rest = Vec::new();
        match socket.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("{name}: still open after {DEADLINE:?}")
            }
            Err(_) => {} // reset: closed too
        }
    }
    idle.write_all(&[0xc0, 0]).unwrap();
    let mut pingresp = [0; 2];
    idle.read_exact(&mut pingresp).unwrap();
    assert_eq!(pingresp, [0xd0, 0], "the idle client is still served");
}

/// A client frame's header: FIN, `opcode`, masked with the key 0 (so the payload goes as
/// it is), announcing `len` bytes.
fn frame_header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut header = vec![u8::from(fin) << 7 | opcode];
    if len < 126 {
        header.push(0x80 | len as u8);
    } else {
        header.push(0x80 | 126);
        header.extend_from_slice(&(len as u16).to_be_bytes());
    }
    header.extend_from_slice(&[0; 4]);
    header
}

/// A WebSocket client written by hand, to send what a well-behaved client library will not,
/// over TCP or anything else that reads and writes (TLS).
struct RawWs<S: Read + Write = TcpStream> {
    socket: S,
}

impl RawWs {
    /// Upgrades, then sends an MQTT 3.1.1 CONNECT with keep-alive 0 and reads its CONNACK.
    fn connect(addr: SocketAddr, client_id: &str) -> RawWs {
        let (raw, connack) = RawWs::open(addr, b"", "", client_id).expect("the upgrade and a CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK for {client_id}");
        raw
    }

    /// Connects, sends `preamble` (a PROXY protocol header), then upgrades with `headers` and
    /// connects as [`RawWs::over`] does.
    fn open(addr: SocketAddr, preamble: &[u8], headers: &str, client_id: &str) -> Option<(RawWs, Vec<u8>)> {
        let mut socket = TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        socket.write_all(preamble).unwrap();
        RawWs::over(socket, addr, headers, client_id)
    }
}

impl<S: Read + Write> RawWs<S> {
    /// Upgrades over `socket` (to `addr`, with `headers`, whole lines, in the request), then
    /// sends an MQTT 3.1.1 CONNECT with keep-alive 0: the client and the CONNACK, or `None`
    /// if the broker closed the connection before either.
    fn over(mut socket: S, addr: SocketAddr, headers: &str, client_id: &str) -> Option<(RawWs<S>, Vec<u8>)> {
        socket.write_all(upgrade_request_with(addr, "/mqtt", headers).as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).ok()?;
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let mut raw = RawWs { socket };
        let mut connect = vec![0x10, 12 + client_id.len() as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0];
        connect.push(client_id.len() as u8);
        connect.extend_from_slice(client_id.as_bytes());
        raw.send_frame(true, 2, &connect);
        let (opcode, connack) = raw.read_frame()?;
        assert_eq!(opcode, 2, "a binary frame");
        Some((raw, connack))
    }

    fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut frame = frame_header(fin, opcode, payload.len());
        frame.extend_from_slice(payload);
        self.socket.write_all(&frame).unwrap();
    }

    /// The next frame from the broker (unmasked, short): its opcode and payload; `None` when
    /// the connection closed.
    fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.socket.read_exact(&mut head).ok()?;
        let mut len = usize::from(head[1] & 0x7f);
        if len == 126 {
            let mut extended = [0u8; 2];
            self.socket.read_exact(&mut extended).ok()?;
            len = usize::from(u16::from_be_bytes(extended));
        }
        let mut payload = vec![0; len];
        self.socket.read_exact(&mut payload).ok()?;
        Some((head[0] & 0x0f, payload))
    }

    /// The MQTT bytes the broker sends until it closes the connection (its WebSocket close
    /// frame is not counted); panics if it is still open after [`DEADLINE`].
    fn until_closed(&mut self) -> Vec<u8> {
        let mut mqtt = Vec::new();
        loop {
            let mut head = [0u8; 2];
            match self.socket.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    panic!("still open after {DEADLINE:?}")
                }
                Err(_) => return mqtt,
            }
            let mut payload = vec![0; usize::from(head[1] & 0x7f)];
            if self.socket.read_exact(&mut payload).is_err() {
                return mqtt;
            }
            if head[0] & 0x0f == 2 {
                mqtt.extend(payload);
            }
        }
    }
}

/// A TLS client (trusting `pki`'s CA) connected to `addr` as a load balancer would connect
/// it: `header` (a PROXY protocol header) first, then the TLS handshake (done on first use).
fn tls_behind_balancer(
    pki: &Pki,
    addr: SocketAddr,
    header: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(&pki.ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket.write_all(header).unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(connection, socket)
}

/// `listener.ssl.proxy_protocol`: behind a TCP load balancer, the PROXY protocol header comes
/// first, then the TLS handshake: the client (a rustls client over the same socket, after a v1
/// header from 203.0.113.5:6000) is served, and listed with the header's address.
#[test]
fn an_ssl_listener_behind_a_balancer_takes_the_clients_address_from_the_proxy_header() {
    let dir = DataDir::with_plugins("");
    let pki = Pki::new(&dir);
    let mut env = ssl_env(&pki, "BROKER_LISTENER__SSL");
    env.push(("BROKER_LISTENER__SSL__PROXY_PROTOCOL".to_owned(), "true"));
    env.push(("BROKER_ALLOW_ANONYMOUS".to_owned(), "true"));
    let broker = start(&dir, &env);
    let ssl = broker.logged_addr("ssl listener on ");

    let mut tls = tls_behind_balancer(&pki, ssl, b"PROXY TCP4 203.0.113.5 127.0.0.1 6000 8883\r\n");
    // CONNECT (3.1.1, clean session, keep-alive 60, client id "pp-tls"), then its CONNACK.
    tls.write_all(&[0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 6, b'p', b'p', b'-', b't', b'l', b's'])
        .unwrap();
    let mut connack = [0; 4];
    tls.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK, accepted");
    assert_eq!(dir.listed_address("pp-tls"), ("203.0.113.5".to_owned(), 6000));
}

/// `listener.ws.proxy_address_header` (EMQX's; here `X-Forwarded-For`) and
/// `proxy_port_header`: behind an HTTP proxy, the client's address is the last one the header
/// lists (the one the proxy added: those before it may be the client's own words), with
/// several header lines the last line's; its port from the port header, else the
/// connection's. Without the header, the connection's own address. That address is the
/// client's everywhere: in the listing, for `allow_anonymous = "loopback"` (a client from
/// elsewhere refused, CONNACK 5), and for `max_conns_per_ip`.
#[test]
fn behind_an_http_proxy_the_clients_address_comes_from_x_forwarded_for() {
    let dir = DataDir::with_plugins("");
    let env = [
        ("BROKER_LISTENER__WS__BIND", "127.0.0.1:0"),
        ("BROKER_LISTENER__WS__PROXY_ADDRESS_HEADER", "X-Forwarded-For"),
        ("BROKER_LISTENER__WS__PROXY_PORT_HEADER", "X-Forwarded-Port"),
        ("BROKER_LISTENER__WS__MAX_CONNS_PER_IP", "1"),
    ];
    let broker = Broker::start(&dir, &env);
    broker.wait_for_log("ws listener: the client's address is the last one in the x-forwarded-for header");
    let ws = broker.logged_addr(" ws listener on ");

    let forwarded = "X-Forwarded-For: 127.0.0.9, 127.0.0.7\r\nX-Forwarded-Port: 51234\r\n";
    let (_first, connack) = RawWs::open(ws, b"", forwarded, "fwd-1").expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted: the proxy says the client is on this machine");
    assert_eq!(dir.listed_address("fwd-1"), ("127.0.0.7".to_owned(), 51234));

    let two_lines = "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: ::1\r\n";
    let (_second, connack) = RawWs::open(ws, b"", two_lines, "fwd-2").expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    assert_eq!(dir.listed_address("fwd-2").0, "::1", "the last line's address");

    let (_plain, connack) = RawWs::open(ws, b"", "", "fwd-3").expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    assert_eq!(dir.listed_address("fwd-3").0, "127.0.0.1", "no header: the connection's address");

    let remote = "X-Forwarded-For: 127.0.0.1, 203.0.113.50\r\n";
    let (_remote, connack) = RawWs::open(ws, b"", remote, "fwd-4").expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 5], "a client from elsewhere, without a login (the first entry is its own word)");

    let again = "X-Forwarded-For: 127.0.0.7\r\n";
    assert!(RawWs::open(ws, b"", again, "fwd-5").is_none(), "max_conns_per_ip = 1: 127.0.0.7 has a connection");
    broker.wait_for_log("connection refused: listener.ws.max_conns_per_ip (1) reached");
}

/// `listener.ws.proxy_protocol` and `listener.wss.proxy_protocol`: behind a TCP load balancer,
/// the PROXY protocol header comes first (then, for wss, the TLS handshake), then the HTTP
/// upgrade; the client is listed with the header's address. A ws connection without the
/// header is closed.
#[test]
fn ws_and_wss_listeners_behind_a_balancer_take_the_proxy_protocol() {
    let dir = DataDir::with_plugins("");
    let pki = Pki::new(&dir);
    let mut env = ssl_env(&pki, "BROKER_LISTENER__WSS");
    env.push(("BROKER_LISTENER__WSS__BIND".to_owned(), "127.0.0.1:0"));
    env.push(("BROKER_LISTENER__WSS__PROXY_PROTOCOL".to_owned(), "true"));
    env.push(("BROKER_LISTENER__WS__BIND".to_owned(), "127.0.0.1:0"));
    env.push(("BROKER_LISTENER__WS__PROXY_PROTOCOL".to_owned(), "true"));
    env.push(("BROKER_ALLOW_ANONYMOUS".to_owned(), "true"));
    let broker = start(&dir, &env);
    broker.wait_for_log("ws listener: each connection opens with a PROXY protocol header");
    let ws = broker.logged_addr(" ws listener on ");
    let wss = broker.logged_addr("wss listener on ");

    let header = b"PROXY TCP4 203.0.113.8 127.0.0.1 7000 8083\r\n";
    let (_ws, connack) = RawWs::open(ws, header, "", "pp-ws").expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    assert_eq!(dir.listed_address("pp-ws"), ("203.0.113.8".to_owned(), 7000));
    let mut plain = TcpStream::connect(ws).unwrap();
    plain.set_read_timeout(Some(DEADLINE)).unwrap();
    plain.write_all(upgrade_request(ws, "/mqtt").as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(answer.is_empty(), "no header: closed, not upgraded: {}", String::from_utf8_lossy(&answer));

    let tls = tls_behind_balancer(&pki, wss, b"PROXY TCP4 203.0.113.9 127.0.0.1 7001 8084\r\n");
    let (_wss, connack) = RawWs::over(tls, wss, "", "pp-wss").expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    assert_eq!(dir.listed_address("pp-wss"), ("203.0.113.9".to_owned(), 7001));
}
