//! `emqx_web_hook` end to end: the real broker and plugin POST events to a real HTTP service
//! on 127.0.0.1 (axum, in this process), driven by real MQTT clients.
//!
//! The bodies are EMQX 4.2's (`action`, `clientid`, `from_client_id`, ...). One client's
//! events arrive in the order they happened (each client's events go through one lane), so a
//! test waits for a client's last event and then looks at all of that client's. A dead or
//! hanging service never holds up MQTT traffic: its events fail, or fill the queue and are
//! dropped, and `broker ctl web_hook status` counts them (10,000 messages flowing through a
//! broker whose service has stopped answering: every one delivered).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use e2e::pki::Pki;
use e2e::raw::{connect4, connect5, v5, Raw, V4, V5};
use e2e::{free_port, options, stat_in, wait_until, Broker, Client, DataDir};
use rumqttc::QoS;
use serde_json::{json, Value};

/// One request the service got.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// How the service answers.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// 200 at once.
    Ok,
    /// Never: the request hangs until the broker gives up.
    Hang,
}

/// The web hook service: records every request and answers as `reply` says (until
/// [`HookService::hang`]). Its thread ends with the test process.
struct HookService {
    addr: SocketAddr,
    scheme: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    hanging: Arc<AtomicBool>,
}

impl HookService {
    fn start(reply: Reply) -> HookService {
        HookService::start_with(reply, None)
    }

    /// The service over TLS with `tls` (HTTPS) when given.
    fn start_with(reply: Reply, tls: Option<Arc<rustls::ServerConfig>>) -> HookService {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hanging = Arc::new(AtomicBool::new(matches!(reply, Reply::Hang)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the hook service");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let store = seen.clone();
        let hang = hanging.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let handler = move |request: Request| {
                    let (store, hang) = (store.clone(), hang.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                        let body = serde_json::from_slice(&body).unwrap_or_else(|_| json!({"unparsed": true}));
                        store.lock().unwrap().push(Seen {
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                            body,
                        });
                        if hang.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        StatusCode::OK
                    }
                };
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new().fallback(handler);
                match tls {
                    None => axum::serve(listener, app).await.unwrap(),
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                        axum::serve(TlsListener { tcp: listener, acceptor }, app).await.unwrap()
                    }
                }
            });
        });
        HookService { addr, scheme, seen, hanging }
    }

    /// From now on, answers nothing: every request hangs until the broker gives up.
    fn hang(&self) {
        self.hanging.store(true, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("{}://{}/webhook", self.scheme, self.addr)
    }

    /// Every request so far.
    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Every body so far.
    fn bodies(&self) -> Vec<Value> {
        self.all().into_iter().map(|s| s.body).collect()
    }

    /// Waits until a body has `action` and `key` = `value`; returns every body then.
    fn wait_for(&self, action: &str, key: &str, value: &str) -> Vec<Value> {
        wait_until(&format!("a {action} event with {key} {value}"), || {
            let bodies = self.bodies();
            bodies.iter().any(|b| b["action"] == action && b[key] == value).then_some(bodies)
        })
    }
}

/// A TCP listener whose connections are TLS (failed handshakes are skipped).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The bodies with `action` whose `key` is `value`.
fn find<'a>(bodies: &'a [Value], action: &str, key: &str, value: &str) -> Vec<&'a Value> {
    bodies.iter().filter(|b| b["action"] == action && b[key] == value).collect()
}

/// The one body with `action` whose `key` is `value`.
fn one<'a>(bodies: &'a [Value], action: &str, key: &str, value: &str) -> &'a Value {
    let found = find(bodies, action, key, value);
    assert_eq!(found.len(), 1, "one {action} with {key} {value}: {bodies:#?}");
    found[0]
}

/// The `actions` of `bodies` about client `clientid` (as `clientid` or `from_client_id`), in
/// the order they arrived.
fn actions_of(bodies: &[Value], clientid: &str) -> Vec<String> {
    bodies
        .iter()
        .filter(|b| b["clientid"] == clientid || b["from_client_id"] == clientid)
        .map(|b| b["action"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A broker running only `emqx_web_hook`, with `toml` as its `broker.toml`.
fn broker_with(toml: &str, env: &[(&str, &str)]) -> (DataDir, Broker) {
    let dir = DataDir::with_plugins("{emqx_web_hook, true}.\n");
    dir.write("broker.toml", toml);
    let broker = Broker::start(&dir, env);
    broker.wait_for_log("posting events to");
    (dir, broker)
}

/// `broker ctl web_hook status`.
fn status(dir: &DataDir) -> String {
    dir.ctl(&["web_hook", "status"]).ok()
}

/// The counter `name` of `broker ctl web_hook status`.
fn counter(dir: &DataDir, name: &str) -> u64 {
    stat_in(&status(dir), name)
}

/// The broker's metric `name` (`web_hook.sent`, ...), 0 before the plugin first reports it
/// (it adds its counts to the broker's metrics a few times a second).
fn metric(dir: &DataDir, name: &str) -> u64 {
    let counters = e2e::counters(dir);
    let line = counters.lines().find(|l| l.split_once(':').is_some_and(|(k, _)| k.trim() == name));
    line.map_or(0, |l| stat_in(l, name))
}

fn assert_timestamp(body: &Value, key: &str) {
    assert!(body[key].as_u64().is_some_and(|ms| ms > 0), "{key} in milliseconds: {body}");
}

/// Every event of a connect, subscribe, publish, deliver, ack, unsubscribe, disconnect
/// sequence arrives with EMQX's `action` and fields, with the configured headers; with no
/// rules set, every event but `client.connect` and `client.connack` is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_posted_with_emqx_bodies() {
    let service = HookService::start(Reply::Ok);
    let (dir, broker) = broker_with(
        &format!("[web_hook]\nurl = \"{}\"\n", service.url()),
        &[("BROKER_WEB_HOOK__HEADERS__X_TOKEN", "s3cret")],
    );

    let mut login = options(&broker, "alice");
    login.set_credentials("alice_user", "pw");
    let mut alice = Client::connect_with(login).await;
    alice.subscribe("t/#", QoS::AtLeastOnce).await;
    let mut bob = Client::connect(&broker, "bob").await;
    bob.publish_acked("t/1", QoS::AtLeastOnce, "hello").await;
    let got = alice.receive(1).await;
    assert_eq!(got[0].payload, "hello");
    bob.publish_acked("nobody/here", QoS::AtMostOnce, "lost").await;
    alice.client.unsubscribe("t/#").await.unwrap();
    alice.wait_for("UNSUBACK", |e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::UnsubAck(_)))).await;
    bob.disconnect().await;
    alice.kill().await;

    service.wait_for("session_terminated", "clientid", "bob");
    let bodies = service.wait_for("session_terminated", "clientid", "alice");

    // Each client's events, in the order they happened (EMQX's order: client.disconnected
    // before session.terminated).
    assert_eq!(
        actions_of(&bodies, "alice"),
        [
            "client_connected",
            "client_subscribe",
            "session_subscribed",
            "message_delivered",
            "message_acked",
            "client_unsubscribe",
            "session_unsubscribed",
            "client_disconnected",
            "session_terminated"
        ]
    );
    assert_eq!(
        actions_of(&bodies, "bob"),
        [
            "client_connected",
            "message_publish",
            "message_publish",
            "message_dropped",
            "client_disconnected",
            "session_terminated"
        ]
    );

    let connected = one(&bodies, "client_connected", "clientid", "alice");
    assert_eq!(connected["node"], "emqx@127.0.0.1");
    assert_eq!(connected["username"], "alice_user");
    assert_eq!(connected["ipaddress"], "127.0.0.1");
    assert_eq!(connected["keepalive"], 30);
    assert_eq!(connected["proto_ver"], 4);
    assert_timestamp(connected, "connected_at");
    assert_eq!(one(&bodies, "client_connected", "clientid", "bob")["username"], Value::Null, "no username: null");

    let subscribe = one(&bodies, "client_subscribe", "clientid", "alice");
    assert_eq!(subscribe["username"], "alice_user");
    assert_eq!(subscribe["topic"], "t/#");
    assert_eq!(subscribe["opts"], json!({"qos": 1, "nl": 0, "rap": 0, "rh": 0}));
    let subscribed = one(&bodies, "session_subscribed", "clientid", "alice");
    assert_eq!(subscribed["topic"], "t/#");
    assert_eq!(subscribed["opts"], json!({"qos": 1, "nl": 0, "rap": 0, "rh": 0, "is_new": true}));

    let published = one(&bodies, "message_publish", "topic", "t/1");
    assert_eq!(published["from_client_id"], "bob");
    assert_eq!(published["from_username"], Value::Null);
    assert_eq!((published["qos"].as_u64(), published["retain"].as_bool()), (Some(1), Some(false)));
    assert_eq!(published["payload"], "hello");
    assert_timestamp(published, "ts");
    assert!(published.get("clientid").is_none(), "message_publish has no clientid: {published}");

    for action in ["message_delivered", "message_acked"] {
        let body = one(&bodies, action, "clientid", "alice");
        assert_eq!(body["username"], "alice_user", "{action}");
        assert_eq!(body["topic"], "t/1", "{action}");
        assert_eq!(body["payload"], "hello", "{action}");
        assert_eq!((body["qos"].as_u64(), body["retain"].as_bool()), (Some(1), Some(false)), "{action}");
        assert_eq!(body["ts"], published["ts"], "{action}: the message's publish time");
        // The broker's delivery events do not say who published.
        assert_eq!((&body["from_client_id"], &body["from_username"]), (&Value::Null, &Value::Null), "{action}");
    }

    let dropped = one(&bodies, "message_dropped", "clientid", "bob");
    assert_eq!(dropped["topic"], "nobody/here");
    assert_eq!(dropped["reason"], "no_subscribers");
    assert_eq!(dropped["payload"], "lost");
    assert_eq!(dropped["qos"], 0);

    let unsubscribe = one(&bodies, "client_unsubscribe", "clientid", "alice");
    assert_eq!((&unsubscribe["topic"], &unsubscribe["opts"]), (&json!("t/#"), &json!({})));
    let unsubscribed = one(&bodies, "session_unsubscribed", "clientid", "alice");
    assert_eq!(unsubscribed["topic"], "t/#");
    assert!(unsubscribed.get("opts").is_none(), "{unsubscribed}");

    for (client, reason) in [("alice", "tcp_closed"), ("bob", "normal")] {
        let disconnected = one(&bodies, "client_disconnected", "clientid", client);
        assert_eq!(disconnected["reason"], reason, "{client}");
        assert_timestamp(disconnected, "disconnected_at");
        let terminated = one(&bodies, "session_terminated", "clientid", client);
        assert_eq!(terminated["reason"], reason, "{client}: the connection's reason");
    }
    assert_eq!(one(&bodies, "session_terminated", "clientid", "alice")["username"], "alice_user");

    assert!(
        bodies.iter().all(|b| b["action"] != "client_connect" && b["action"] != "client_connack"),
        "not sent by default"
    );
    for seen in service.all() {
        assert_eq!(seen.path, "/webhook");
        assert_eq!(seen.headers.get("content-type").unwrap(), "application/json");
        assert_eq!(seen.headers.get("x-token").unwrap(), "s3cret", "the configured header");
    }

    // The service records a request before its answer reaches the plugin.
    let requests = service.all().len() as u64;
    let status = wait_until("every answer counted", || {
        let status = status(&dir);
        (stat_in(&status, "sent") == requests).then_some(status)
    });
    assert!(status.contains(&format!("url         : {}", service.url())), "{status}");
    assert_eq!((stat_in(&status, "failed"), stat_in(&status, "dropped")), (0, 0), "{status}");
}

/// `session.terminated` says why a session ended: `kicked` (an offline persistent session
/// ended by `broker ctl sessions kick`), `expired` (its Session Expiry Interval ran out), or
/// its connection's reason; a session that a clean-start connection discards fires none
/// (EMQX's `session.discarded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_terminated_says_why_the_session_ended() {
    let service = HookService::start(Reply::Ok);
    let (dir, broker) = broker_with(
        &format!("[web_hook]\nurl = \"{}\"\nrules = [{{ event = \"session.terminated\" }}, {{ event = \"client.connected\" }}]\n", service.url()),
        &[],
    );

    // Kicked while offline.
    let (mut carol, _) = Raw::<V4>::connect(broker.addr, &connect4("carol", false));
    carol.disconnect();
    service.wait_for("client_connected", "clientid", "carol");
    dir.ctl(&["sessions", "kick", "carol"]).ok();
    let bodies = service.wait_for("session_terminated", "clientid", "carol");
    let kicked = one(&bodies, "session_terminated", "clientid", "carol");
    assert_eq!(kicked["reason"], "kicked");
    assert_eq!(kicked["node"], "emqx@127.0.0.1");

    // Expired: an MQTT 5 session that outlives its connection by 1 s.
    let mut properties = v5::ConnectProperties::new();
    properties.session_expiry_interval = Some(1);
    let (mut dave, _) = Raw::<V5>::connect(broker.addr, &connect5("dave", false, Some(properties)));
    dave.disconnect(v5::DisconnectReasonCode::NormalDisconnection);
    let bodies = service.wait_for("session_terminated", "clientid", "dave");
    assert_eq!(one(&bodies, "session_terminated", "clientid", "dave")["reason"], "expired");

    // Discarded by a clean-start connection: no session.terminated for the old session; the
    // new one's ends with its connection.
    let (mut erin, _) = Raw::<V4>::connect(broker.addr, &connect4("erin", false));
    erin.disconnect();
    let (mut erin, _) = Raw::<V4>::connect(broker.addr, &connect4("erin", true));
    erin.disconnect();
    let bodies = service.wait_for("session_terminated", "clientid", "erin");
    assert_eq!(actions_of(&bodies, "erin"), ["client_connected", "client_connected", "session_terminated"]);
    assert_eq!(one(&bodies, "session_terminated", "clientid", "erin")["reason"], "normal");
}

/// Rules select events, and topics for message events (several rules for one event: any
/// matches); `client.connect` and `client.connack` are sent when a rule names them;
/// `encoding_of_payload_field = "base64"` encodes payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_select_events_and_topics_and_payloads_can_be_base64() {
    let service = HookService::start(Reply::Ok);
    let (dir, broker) = broker_with(
        &format!(
            "[web_hook]\nurl = \"{}\"\nencoding_of_payload_field = \"base64\"\n\
             rules = [\n\
               {{ event = \"message.publish\", topic = \"a/#\" }},\n\
               {{ event = \"message.publish\", topic = \"c/+\" }},\n\
               {{ event = \"message.delivered\", topic = \"a/+\" }},\n\
               {{ event = \"client.connect\" }},\n\
               {{ event = \"client.connack\" }},\n\
             ]\n",
            service.url()
        ),
        &[],
    );

    let mut sub = Client::connect(&broker, "sub").await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "pub").await;
    for (topic, payload) in [("a/1", "hi"), ("b/1", "no"), ("a/2/x", "deep"), ("c/3", "see"), ("a/end", "end")] {
        publisher.publish_acked(topic, QoS::AtLeastOnce, payload).await;
    }
    sub.receive(5).await;

    // Each client's events arrive in the order they happened: once its last one is there,
    // every one it had is.
    service.wait_for("message_publish", "topic", "a/end");
    let bodies = service.wait_for("message_delivered", "topic", "a/end");
    let of = |client: &str| -> Vec<(String, String)> {
        bodies
            .iter()
            .filter(|b| b["clientid"] == client || b["from_client_id"] == client)
            .map(|b| (b["action"].as_str().unwrap().to_owned(), b["topic"].as_str().unwrap_or("").to_owned()))
            .collect()
    };
    let pair = |action: &str, topic: &str| (action.to_owned(), topic.to_owned());
    assert_eq!(
        of("pub"),
        [
            pair("client_connect", ""),
            pair("client_connack", ""),
            pair("message_publish", "a/1"),
            pair("message_publish", "a/2/x"),
            pair("message_publish", "c/3"),
            pair("message_publish", "a/end"),
        ],
        "b/1 matches no rule"
    );
    assert_eq!(
        of("sub"),
        [
            pair("client_connect", ""),
            pair("client_connack", ""),
            pair("message_delivered", "a/1"),
            pair("message_delivered", "a/end"),
        ],
        "only deliveries on a/+"
    );
    assert_eq!(bodies.len(), 10, "nothing else: {bodies:#?}");
    let payloads: Vec<&str> = find(&bodies, "message_publish", "from_client_id", "pub")
        .iter()
        .map(|b| b["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["aGk=", "ZGVlcA==", "c2Vl", "ZW5k"], "base64 of hi, deep, see, end");
    assert_eq!(one(&bodies, "message_delivered", "topic", "a/1")["payload"], "aGk=");

    let connect = one(&bodies, "client_connect", "clientid", "pub");
    assert_eq!(
        (&connect["proto_ver"], &connect["keepalive"], &connect["ipaddress"]),
        (&json!(4), &json!(30), &json!("127.0.0.1"))
    );
    let connack = one(&bodies, "client_connack", "clientid", "pub");
    assert_eq!(connack["conn_ack"], "success");
    assert_eq!(connack["username"], Value::Null);

    let status = status(&dir);
    assert!(status.contains("encoding    : base64"), "{status}");
    assert!(
        status.contains(
            "rules       : client.connect, client.connack, message.publish (a/# c/+), message.delivered (a/+)"
        ),
        "{status}"
    );
}

/// A service that refuses connections: every event fails (counted, logged once), and MQTT
/// traffic goes on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_service_does_not_hold_up_mqtt_traffic() {
    let url = format!("http://127.0.0.1:{}/webhook", free_port());
    let (dir, broker) = broker_with(&format!("[web_hook]\nurl = \"{url}\"\n"), &[]);

    let mut sub = Client::connect(&broker, "dead-sub").await;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "dead-pub").await;
    for i in 0..30 {
        publisher.publish_acked(&format!("load/{i}"), QoS::AtLeastOnce, format!("m{i}")).await;
    }
    let got = sub.receive(30).await;
    let payloads: Vec<String> = got.iter().map(|p| e2e::text(&p.payload)).collect();
    assert_eq!(payloads, (0..30).map(|i| format!("m{i}")).collect::<Vec<_>>());

    // 2 connected, 1 subscribe, 1 subscribed, 30 each of publish, delivered and acked.
    wait_until("every event failed", || (counter(&dir, "failed") >= 94).then_some(()));
    let status = status(&dir);
    assert_eq!((stat_in(&status, "sent"), stat_in(&status, "dropped")), (0, 0), "{status}");
    assert!(status.contains("state       : failing"), "{status}");
    let failures: Vec<String> =
        broker.logs().into_iter().filter(|l| l.contains(&format!("POST {url} failed"))).collect();
    assert_eq!(failures.len(), 1, "one line for the whole run of failures: {failures:#?}");
}

/// A service that never answers: `pool_size` requests hang, the queue fills, and past
/// `queue_size` events are dropped (counted, logged once) while MQTT traffic goes on. An
/// unload does not wait for the service: what was not sent is dropped. The sending thread
/// runs at the broker's priority (`sender_priority = "normal"`): the test counts what it
/// took from the queue as soon as the queue is full, which a thread at `idle` priority on a
/// busy machine may not have done yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_service_fills_the_queue_and_events_are_dropped() {
    let service = HookService::start(Reply::Hang);
    let (dir, broker) = broker_with(
        &format!(
            "[web_hook]\nurl = \"{}\"\nqueue_size = 5\npool_size = 2\nrequest_timeout = \"1h\"\nsender_priority = \"normal\"\n",
            service.url()
        ),
        &[],
    );

    let mut sub = Client::connect(&broker, "hang-sub").await;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "hang-pub").await;
    for i in 0..30 {
        publisher.publish_acked(&format!("load/{i}"), QoS::AtLeastOnce, format!("m{i}")).await;
    }
    assert_eq!(sub.receive(30).await.len(), 30, "every message delivered");

    // Full: what waits and what hangs in flight hold the queue's 5 places at least (a lane
    // that took its first event after the queue filled took it out of those 5).
    let status = wait_until("the queue full and events dropped", || {
        let status = status(&dir);
        let in_flight = stat_in(&status, "in_flight");
        let held = stat_in(&status, "queue_len") + in_flight;
        (stat_in(&status, "dropped") > 0 && in_flight >= 1 && held >= 5).then_some(status)
    });
    let in_flight = stat_in(&status, "in_flight");
    // A new connection carries one request until an answer shows it persists (RFC 9112
    // §9.3.2), so with no answers, one request a lane.
    assert!((1..=2).contains(&in_flight), "at most pool_size requests at once: {status}");
    assert!(stat_in(&status, "queue_len") <= 5, "{status}");
    assert_eq!((stat_in(&status, "sent"), stat_in(&status, "failed")), (0, 0), "{status}");
    assert!(service.all().len() <= 2, "only the requests in flight reached the service");
    let full: Vec<String> = broker.logs().into_iter().filter(|l| l.contains("the queue is full")).collect();
    assert_eq!(full.len(), 1, "one line for the burst: {full:#?}");
    // The broker's metrics (and so `emqx_prometheus`) count them too.
    let dropped = stat_in(&status, "dropped");
    wait_until("web_hook.dropped in the broker's metrics", || {
        (metric(&dir, "web_hook.dropped") >= dropped).then_some(())
    });

    // Still no wait on the service: traffic flows, and an unload stops the plugin at once.
    publisher.publish_acked("load/after", QoS::AtLeastOnce, "after").await;
    assert_eq!(sub.receive(1).await[0].payload, "after");
    dir.ctl(&["plugins", "unload", "emqx_web_hook"]).ok();
    broker.wait_for_log("event(s) not sent were dropped");
    publisher.publish_acked("load/unloaded", QoS::AtLeastOnce, "unloaded").await;
    assert_eq!(sub.receive(1).await[0].payload, "unloaded");
}

/// A service that reads pipelined requests (an HTTP/1.1 parser of its own, on a thread, one
/// connection at a time): it answers the first request of a connection at once, and after
/// that only when five requests are waiting, so a client that waited for each answer would
/// get no further. Of each five it answers three, the third with `connection: close`, and
/// closes the connection: the two after it were read but not acted on. Each body it acted on
/// is recorded; `unread` counts those it dropped.
struct PipelineService {
    addr: SocketAddr,
    acted_on: Arc<Mutex<Vec<Value>>>,
    connections: Arc<std::sync::atomic::AtomicU64>,
    unread: Arc<std::sync::atomic::AtomicU64>,
}

impl PipelineService {
    /// Waiting requests answered at once when one of them has `payload` `last`.
    fn start(last: &'static str) -> PipelineService {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acted_on = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let unread = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (store, count, dropped) = (acted_on.clone(), connections.clone(), unread.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut waiting: Vec<Value> = Vec::new();
                let mut first = true;
                // One request: its head, then content-length bytes of body.
                let mut read_request = || -> Option<Value> {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).ok()? == 0 {
                            return None;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).ok()?;
                    Some(serde_json::from_slice(&body).unwrap())
                };
                const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                while let Some(body) = read_request() {
                    if first {
                        first = false;
                        store.lock().unwrap().push(body);
                        stream.write_all(OK.as_bytes()).unwrap();
                        continue;
                    }
                    waiting.push(body);
                    if waiting.iter().any(|b| b["payload"] == last) {
                        let n = waiting.len();
                        store.lock().unwrap().append(&mut waiting);
                        stream.write_all(OK.repeat(n).as_bytes()).unwrap();
                    } else if waiting.len() == 5 {
                        store.lock().unwrap().extend(waiting.drain(..3));
                        let close = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
                        stream.write_all(format!("{OK}{OK}{close}").as_bytes()).unwrap();
                        dropped.fetch_add(waiting.len() as u64, Ordering::SeqCst);
                        break;
                    }
                }
            }
        });
        PipelineService { addr, acted_on, connections, unread }
    }
}

/// Pipelining (`enable_pipelining`, on by default as in EMQX 4.3): one lane writes requests
/// without waiting for each answer (the service answers only once five wait), and when the
/// service answers with `connection: close` the requests it had not acted on are written
/// again on a new connection: every event is acted on once, in order, and none is counted as
/// failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_pipelined_and_those_a_closing_service_did_not_read_are_sent_again() {
    const N: usize = 40;
    let service = PipelineService::start("m39");
    let rules = "pool_size = 1\nsender_priority = \"normal\"\nrules = [{ event = \"message.publish\" }]";
    let (dir, broker) = broker_with(&format!("[web_hook]\nurl = \"http://{}/hook\"\n{rules}\n", service.addr), &[]);
    let mut publisher = Client::connect(&broker, "pipe-pub").await;
    for i in 0..N {
        publisher.publish_acked(&format!("pipe/{i}"), QoS::AtLeastOnce, format!("m{i}")).await;
    }
    wait_until("every event answered", || (counter(&dir, "sent") == N as u64).then_some(()));
    let payloads: Vec<String> =
        service.acted_on.lock().unwrap().iter().map(|b| b["payload"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(payloads, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>(), "each once, in order");
    let status = status(&dir);
    assert_eq!((stat_in(&status, "failed"), stat_in(&status, "dropped")), (0, 0), "{status}");
    assert!(service.connections.load(Ordering::SeqCst) > 1, "the service closed connections");
    assert!(service.unread.load(Ordering::SeqCst) > 0, "requests were written again");
}

/// `enable_pipelining = 3` (EMQX 5's form): a connection carries at most three unanswered
/// requests. The service answers the first request, then waits for five (never reached), so
/// of ten events one is sent, three are in flight and the other six stay in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_for_enable_pipelining_is_how_many_requests_a_connection_carries() {
    let service = PipelineService::start("never sent");
    let rules =
        "pool_size = 1\nenable_pipelining = 3\nsender_priority = \"normal\"\nrules = [{ event = \"message.publish\" }]";
    let (dir, broker) = broker_with(&format!("[web_hook]\nurl = \"http://{}/hook\"\n{rules}\n", service.addr), &[]);
    let mut publisher = Client::connect(&broker, "depth-pub").await;
    for i in 0..10 {
        publisher.publish_acked(&format!("depth/{i}"), QoS::AtLeastOnce, format!("m{i}")).await;
    }
    wait_until("one sent, three in flight, six queued", || {
        let status = status(&dir);
        let counts: Vec<u64> = ["sent", "in_flight", "queue_len"].iter().map(|k| stat_in(&status, k)).collect();
        (counts == [1, 3, 6]).then_some(())
    });
    assert!(status(&dir).contains("pipelining  : 3"), "{}", status(&dir));
}

/// A service that says it keeps an idle connection one second (`keep-alive: timeout=1`, as
/// Node.js says 5) and answers every request at once, but never closes a connection itself:
/// it counts the connections made and those the client closed.
struct KeepAliveService {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicU64>,
    closed_by_client: Arc<std::sync::atomic::AtomicU64>,
}

impl KeepAliveService {
    fn start() -> KeepAliveService {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let closed_by_client = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (made, closed) = (connections.clone(), closed_by_client.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                made.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                std::thread::spawn(move || {
                    let mut input = Vec::new();
                    let mut buffer = [0; 4096];
                    loop {
                        match stream.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => input.extend_from_slice(&buffer[..n]),
                        }
                        // Each whole request (head, then content-length bytes) is answered.
                        while let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&input[..end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            if input.len() < end + 4 + length {
                                break;
                            }
                            input.drain(..end + 4 + length);
                            let ok = "HTTP/1.1 200 OK\r\nkeep-alive: timeout=1\r\ncontent-length: 0\r\n\r\n";
                            stream.write_all(ok.as_bytes()).unwrap();
                        }
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        KeepAliveService { addr, connections, closed_by_client }
    }
}

/// A service that says how long it keeps an idle connection (`keep-alive: timeout=N`) has it
/// closed by the plugin first, before that time runs out: an event written at the moment the
/// service closes the connection would be lost. The next event goes out on a new connection,
/// and none fails. Pipelined (the default) and one request at a time (`enable_pipelining =
/// false`) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_before_the_service_would_close_it() {
    for pipelining in [true, false] {
        let service = KeepAliveService::start();
        let rules = format!(
            "pool_size = 1\nenable_pipelining = {pipelining}\nsender_priority = \"normal\"\n\
             rules = [{{ event = \"message.publish\" }}]"
        );
        let (dir, broker) = broker_with(&format!("[web_hook]\nurl = \"http://{}/hook\"\n{rules}\n", service.addr), &[]);
        let mut publisher = Client::connect(&broker, "idle-pub").await;
        publisher.publish_acked("idle/0", QoS::AtLeastOnce, "m0").await;
        wait_until("the first event answered", || (counter(&dir, "sent") == 1).then_some(()));
        // The service never closes it: only the plugin can, once it has been idle half a second.
        wait_until("the idle connection closed by the plugin", || {
            (service.closed_by_client.load(Ordering::SeqCst) == 1).then_some(())
        });
        publisher.publish_acked("idle/1", QoS::AtLeastOnce, "m1").await;
        wait_until("the second event answered", || (counter(&dir, "sent") == 2).then_some(()));
        assert_eq!(service.connections.load(Ordering::SeqCst), 2, "a new connection for the second event");
        assert_eq!(counter(&dir, "failed"), 0, "{}", status(&dir));
        broker.stop();
    }
}

/// The test: a service that answers, and whose bodies are checked, then stops
/// answering (its requests hang) while 10,000 QoS 1 messages flow from a publisher to a
/// subscriber, with the plugin's default settings (every event, `queue_size` 10,000,
/// `pool_size` 32, `request_timeout` 5s). Every message is delivered and acknowledged; each
/// gives three events (`message.publish`, `message.delivered`, `message.acked`), 30,000 in all,
/// of which what the queue cannot hold is dropped and counted: every event is either answered,
/// failed, dropped, queued or in flight. Latency is not asserted here (no wall-clock checks):
/// `bench/plugins.sh` measures it with the service hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_flow_while_the_service_hangs() {
    const N: usize = 10_000;
    let service = HookService::start(Reply::Ok);
    let (dir, broker) = broker_with(&format!("[web_hook]\nurl = \"{}\"\n", service.url()), &[]);

    // While it answers: EMQX's bodies, in each client's order.
    let mut sub = Client::connect(&broker, "flow-sub").await;
    sub.subscribe("flow/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "flow-pub").await;
    publisher.publish_acked("flow/check", QoS::AtLeastOnce, "answered").await;
    assert_eq!(sub.receive(1).await[0].payload, "answered");
    service.wait_for("message_publish", "from_client_id", "flow-pub");
    let bodies = service.wait_for("message_acked", "clientid", "flow-sub");
    assert_eq!(
        actions_of(&bodies, "flow-sub"),
        ["client_connected", "client_subscribe", "session_subscribed", "message_delivered", "message_acked"]
    );
    assert_eq!(actions_of(&bodies, "flow-pub"), ["client_connected", "message_publish"]);
    let published = one(&bodies, "message_publish", "from_client_id", "flow-pub");
    assert_eq!(
        (&published["node"], &published["topic"], &published["payload"]),
        (&json!("emqx@127.0.0.1"), &json!("flow/check"), &json!("answered"))
    );
    assert_eq!((published["qos"].as_u64(), published["retain"].as_bool()), (Some(1), Some(false)));
    assert_timestamp(published, "ts");
    for action in ["message_delivered", "message_acked"] {
        let body = one(&bodies, action, "clientid", "flow-sub");
        assert_eq!(
            (&body["topic"], &body["payload"], &body["ts"]),
            (&json!("flow/check"), &json!("answered"), &published["ts"]),
            "{action}"
        );
    }
    let answered = wait_until("every request answered", || {
        let status = status(&dir);
        let sent = stat_in(&status, "sent");
        (sent == service.all().len() as u64 && stat_in(&status, "queue_len") == 0 && stat_in(&status, "in_flight") == 0)
            .then_some(sent)
    });
    assert_eq!(answered, 7, "the seven events above");

    // Now it hangs, and 10,000 messages go through, the publisher keeping up to 100
    // unacknowledged (rumqttc's window).
    service.hang();
    for i in 0..N {
        publisher.client.publish(format!("flow/{i}"), QoS::AtLeastOnce, false, i.to_string()).await.expect("publish");
    }
    for _ in 0..N {
        publisher.wait_for("PUBACK", |e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))).await;
    }
    let payloads: Vec<String> = sub.receive(N).await.iter().map(|p| e2e::text(&p.payload)).collect();
    assert!(payloads.iter().enumerate().all(|(i, p)| *p == i.to_string()), "every message, in order");
    assert!(sub.try_receive().is_none());

    let events = 3 * N as u64;
    let status = wait_until("every event answered, failed, dropped, queued or in flight", || {
        let status = status(&dir);
        let accounted: u64 =
            ["sent", "failed", "dropped", "queue_len", "in_flight"].iter().map(|k| stat_in(&status, k)).sum();
        (accounted == answered + events).then_some(status)
    });
    let (dropped, failed, in_flight) =
        (stat_in(&status, "dropped"), stat_in(&status, "failed"), stat_in(&status, "in_flight"));
    assert_eq!(stat_in(&status, "sent"), answered, "nothing answered since: {status}");
    // The queue holds 10,000; the rest, less what went out (and hung, or failed after 5 s), was dropped.
    assert!(dropped >= events - 10_000 - in_flight - failed && dropped > 0, "{status}");
    assert!(status.contains("state       : ok") || status.contains("state       : failing"), "{status}");
    // Requests are pipelined, and the hanging service reads one a connection: it may have
    // read fewer than were written, never more. (It reads on its own threads: on a busy
    // machine the first may reach it after the counts above settled.)
    let reached = wait_until("a request reached the hanging service", || {
        let reached = service.all().len() as u64 - answered;
        (reached > 0).then_some(reached)
    });
    assert!(reached <= in_flight + failed, "only the requests sent reached the service: {status}");
    let full: Vec<String> = broker.logs().into_iter().filter(|l| l.contains("the queue is full")).collect();
    assert_eq!(full.len(), 1, "one line for the burst: {full:#?}");
    eprintln!("{events} events: {dropped} dropped, {failed} failed, {in_flight} in flight");
}

/// The scheduling of the broker's thread named `name` (`/proc/PID/task/*/stat`), if it has
/// one: its nice value and its policy (0: `SCHED_OTHER`, 5: `SCHED_IDLE`).
#[cfg(target_os = "linux")]
fn scheduling_of_thread(broker: &Broker, name: &str) -> Option<(i64, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", broker.pid())).ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim() != name {
            return None;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields 19 and 41: the 17th and 39th after the command's closing parenthesis.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
        Some((fields.get(16)?.parse().ok()?, fields.get(38)?.parse().ok()?))
    })
}

/// Web hook delivery is background work: the sending thread runs at `sender_priority`
/// (`low` by default: nice 19; `idle`: `SCHED_IDLE`; the broker's own threads stay at
/// theirs), and events flow at that priority: every one is sent when the CPU has room.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sending_thread_runs_at_a_low_priority() {
    const SCHED_IDLE: i64 = 5;
    let service = HookService::start(Reply::Ok);
    let (dir, broker) = broker_with(&format!("[web_hook]\nurl = \"{}\"\n", service.url()), &[]);
    let broker_scheduling = scheduling_of_thread(&broker, "broker").expect("the main thread");
    // The thread lowers its own priority as it starts (polled: it may not have yet).
    wait_until("the sending thread at nice 19", || {
        (scheduling_of_thread(&broker, "emqx_web_hook") == Some((19, broker_scheduling.1))).then_some(())
    });
    assert!(status(&dir).contains("sender_prio : low"), "{}", status(&dir));
    assert_eq!(
        scheduling_of_thread(&broker, "tokio-rt-worker"),
        Some(broker_scheduling),
        "network threads keep theirs"
    );

    let mut sub = Client::connect(&broker, "low-sub").await;
    sub.subscribe("low/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "low-pub").await;
    for i in 0..100 {
        publisher.publish_acked(&format!("low/{i}"), QoS::AtLeastOnce, format!("m{i}")).await;
    }
    assert_eq!(sub.receive(100).await.len(), 100);
    // 2 connected, 1 subscribe, 1 subscribed, and 100 each of publish, delivered and acked.
    wait_until("every event sent", || (counter(&dir, "sent") == 304).then_some(()));
    assert_eq!(counter(&dir, "dropped"), 0);
    wait_until("web_hook.sent in the broker's metrics", || (metric(&dir, "web_hook.sent") == 304).then_some(()));

    // `idle`: SCHED_IDLE; `normal`: the broker's.
    for (priority, expected) in [("idle", None), ("normal", Some(broker_scheduling))] {
        let service = HookService::start(Reply::Ok);
        let toml = format!("[web_hook]\nurl = \"{}\"\nsender_priority = \"{priority}\"\n", service.url());
        let (_dir, broker) = broker_with(&toml, &[]);
        wait_until(&format!("the sending thread at {priority}"), || {
            let scheduling = scheduling_of_thread(&broker, "emqx_web_hook");
            let as_asked = match expected {
                Some(expected) => scheduling == Some(expected),
                None => scheduling.map(|(_, policy)| policy) == Some(SCHED_IDLE),
            };
            as_asked.then_some(())
        });
    }
}

/// An `https://` service that wants a client certificate: with `ssl.cacertfile` (its private
/// CA), `ssl.certfile` and `ssl.keyfile` (files in the data directory) events arrive; without
/// the client certificate the service refuses the handshake and every event fails. Both ways
/// of sending, pipelined (the default) and one request at a time (`enable_pipelining =
/// false`), use the same TLS settings. The sender runs at the broker's
/// priority here (`sender_priority = "normal"`): at the default, on a machine whose cores
/// other work keeps busy, its TLS handshake can take longer than the request timeout (seen
/// beside two busy loops), which is what `low` is for, not this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_service_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new("web hook test CA");
    let service = HookService::start_with(Reply::Ok, Some(pki.server_tls(&[])));
    for (round, pipelining) in [true, false].into_iter().enumerate() {
        let rules = format!(
            "sender_priority = \"normal\"\nenable_pipelining = {pipelining}\nrules = [{{ event = \"client.connected\" }}]"
        );
        let dir = DataDir::with_plugins("{emqx_web_hook, true}.\n");
        for (name, pem) in [("ca.pem", &pki.ca), ("client.pem", &pki.client.0), ("client.key", &pki.client.1)] {
            dir.write(name, pem);
        }

        dir.write(
            "broker.toml",
            &format!(
                "[web_hook]\nurl = \"{}\"\n{rules}\n[web_hook.ssl]\ncacertfile = \"ca.pem\"\n\
                 certfile = \"client.pem\"\nkeyfile = \"client.key\"\n",
                service.url()
            ),
        );
        let broker = Broker::start(&dir, &[]);
        let id = format!("tls-{pipelining}");
        Client::connect(&broker, &id).await.disconnect().await;
        let bodies = service.wait_for("client_connected", "clientid", &id);
        assert_eq!(bodies.len(), round + 1, "{bodies:#?}");
        wait_until("the answer counted", || (counter(&dir, "sent") == 1).then_some(()));
        broker.stop();

        // No client certificate: the service refuses the handshake.
        dir.write(
            "broker.toml",
            &format!("[web_hook]\nurl = \"{}\"\n{rules}\n[web_hook.ssl]\ncacertfile = \"ca.pem\"\n", service.url()),
        );
        let broker = Broker::start(&dir, &[]);
        Client::connect(&broker, &format!("refused-{pipelining}")).await.disconnect().await;
        wait_until("the request failed", || (counter(&dir, "failed") == 1).then_some(()));
        assert_eq!(counter(&dir, "sent"), 0);
        assert_eq!(service.all().len(), round + 1, "nothing more reached the service");
        broker.wait_for_log("failed");
    }
}

/// `ssl.verify`: a service whose certificate chains to no CA the broker knows (no
/// `cacertfile`: the system's roots) is refused by default, and accepted with `verify =
/// false` (EMQX's default), pipelined or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_is_refused_unless_verify_is_false() {
    let pki = Pki::new("web hook unknown CA");
    let service = HookService::start_with(Reply::Ok, Some(pki.server_tls(&[])));
    for (verify, pipelining) in [(true, true), (false, true), (false, false)] {
        let dir = DataDir::with_plugins("{emqx_web_hook, true}.\n");
        for (name, pem) in [("client.pem", &pki.client.0), ("client.key", &pki.client.1)] {
            dir.write(name, pem);
        }
        dir.write(
            "broker.toml",
            &format!(
                "[web_hook]\nurl = \"{}\"\nsender_priority = \"normal\"\nenable_pipelining = {pipelining}\n\
                 rules = [{{ event = \"client.connected\" }}]\n\
                 [web_hook.ssl]\ncertfile = \"client.pem\"\nkeyfile = \"client.key\"\nverify = {verify}\n",
                service.url()
            ),
        );
        let broker = Broker::start(&dir, &[]);
        let id = format!("verify-{verify}-{pipelining}");
        Client::connect(&broker, &id).await.disconnect().await;
        if verify {
            wait_until("the request failed", || (counter(&dir, "failed") == 1).then_some(()));
            assert!(service.bodies().iter().all(|b| b["clientid"] != id.as_str()), "nothing reached the service");
            broker.wait_for_log("certificate");
        } else {
            service.wait_for("client_connected", "clientid", &id);
            wait_until("the answer counted", || (counter(&dir, "sent") == 1).then_some(()));
        }
        broker.stop();
    }
}
