//! `emqx_exhook` end to end: the real broker with the plugin loaded, calling real gRPC
//! HookProvider servers served from this process (tonic, on 127.0.0.1) and built from the
//! plugin's own `.proto` files (EMQX's wire contract: `emqx.exhook.v2` and `v1`), with real
//! MQTT clients.
//!
//! The servers answer as EMQX's own test server (`emqx_exhook_demo_svr`) does:
//! `client.authenticate`: `baduser` STOP_AND_RETURN false, `gooduser` STOP_AND_RETURN true,
//! `normaluser` CONTINUE true, `hang` never answers, anyone else IGNORE;
//! `client.authorize` / `client.check_acl`: a topic under `secret/` STOP_AND_RETURN false,
//! any other IGNORE; `message.publish`: `rewrite/<x>` CONTINUE with the topic
//! `rewritten/<x>`, the payload in capitals and QoS 0, `drop/<x>` STOP_AND_RETURN with the header
//! `allow_publish = "false"` (v2), any other IGNORE; `slow/<ms>/<x>` is answered after `ms`
//! milliseconds, as `<x>` would be. Every request is recorded as JSON, and the most
//! `message.publish` calls open at once are counted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::raw::{v5, Raw, C5, V4};
use e2e::{wait_until, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

#[allow(clippy::all, clippy::pedantic, unreachable_pub, dead_code)]
mod pb {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/emqx.exhook.v1.rs"));
    }
    pub mod v2 {
        include!(concat!(env!("OUT_DIR"), "/emqx.exhook.v2.rs"));
    }
}

/// `ValuedResponse.ResponsedType` (the same numbers in v1 and v2).
const CONTINUE: i32 = 0;
const IGNORE: i32 = 1;
const STOP_AND_RETURN: i32 = 2;

/// What a server of this file answers to a login: `None` never answers.
fn login_answer(username: &str) -> Option<(i32, Option<bool>)> {
    match username {
        "baduser" => Some((STOP_AND_RETURN, Some(false))),
        "gooduser" => Some((STOP_AND_RETURN, Some(true))),
        "normaluser" => Some((CONTINUE, Some(true))),
        "hang" => None,
        _ => Some((IGNORE, None)),
    }
}

/// What it answers to a publish or subscribe on `topic`.
fn acl_answer(topic: &str) -> (i32, Option<bool>) {
    if topic.starts_with("secret/") {
        (STOP_AND_RETURN, Some(false))
    } else {
        (IGNORE, None)
    }
}

/// What a server of this file wants and records.
#[derive(Debug, Default)]
struct Shared {
    hooks: Vec<(String, Vec<String>)>,
    seen: Mutex<Vec<(String, Value)>>,
    /// `message.publish` calls being answered, and the most there were at once.
    publishes_open: AtomicUsize,
    most_publishes_open: AtomicUsize,
}

/// Counts a `message.publish` call open while it lives.
struct Open<'a>(&'a Shared);

impl<'a> Open<'a> {
    fn new(shared: &'a Shared) -> Open<'a> {
        let open = shared.publishes_open.fetch_add(1, Ordering::SeqCst) + 1;
        shared.most_publishes_open.fetch_max(open, Ordering::SeqCst);
        Open(shared)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.publishes_open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn record<T: serde::Serialize>(&self, rpc: &str, request: &T) {
        let json = serde_json::to_value(request).expect("requests serialize");
        self.seen.lock().unwrap().push((rpc.to_owned(), json));
    }
}

/// A HookProvider service of one version over `Shared`: every notification recorded and
/// answered `EmptySuccess`; the three that decide answered as the module says.
macro_rules! provider {
    ($service:ident, $pb:ident, $authorize:ident($authorize_req:ident) = $authorize_name:literal,
     drop_header: $drop:expr, notices: [$($method:ident($req:ident) = $name:literal),* $(,)?]) => {
        struct $service(Arc<Shared>);

        #[tonic::async_trait]
        impl pb::$pb::hook_provider_server::HookProvider for $service {
            async fn on_provider_loaded(
                &self,
                r: Request<pb::$pb::ProviderLoadedRequest>,
            ) -> Result<Response<pb::$pb::LoadedResponse>, Status> {
                self.0.record("OnProviderLoaded", r.get_ref());
                let hooks = self.0.hooks.iter().map(|(name, topics)| pb::$pb::HookSpec {
                    name: name.clone(),
                    topics: topics.clone(),
                });
                Ok(Response::new(pb::$pb::LoadedResponse { hooks: hooks.collect() }))
            }

            async fn on_client_authenticate(
                &self,
                r: Request<pb::$pb::ClientAuthenticateRequest>,
            ) -> Result<Response<pb::$pb::ValuedResponse>, Status> {
                self.0.record("OnClientAuthenticate", r.get_ref());
                let username = r.get_ref().clientinfo.as_ref().map_or("", |c| c.username.as_str());
                let Some((r#type, value)) = login_answer(username) else {
                    return std::future::pending().await;
                };
                let value = value.map(pb::$pb::valued_response::Value::BoolResult);
                Ok(Response::new(pb::$pb::ValuedResponse { r#type, value }))
            }

            async fn $authorize(
                &self,
                r: Request<pb::$pb::$authorize_req>,
            ) -> Result<Response<pb::$pb::ValuedResponse>, Status> {
                self.0.record($authorize_name, r.get_ref());
                let (r#type, value) = acl_answer(&r.get_ref().topic);
                let value = value.map(pb::$pb::valued_response::Value::BoolResult);
                Ok(Response::new(pb::$pb::ValuedResponse { r#type, value }))
            }

            async fn on_message_publish(
                &self,
                r: Request<pb::$pb::MessagePublishRequest>,
            ) -> Result<Response<pb::$pb::ValuedResponse>, Status> {
                self.0.record("OnMessagePublish", r.get_ref());
                let _open = Open::new(&self.0);
                let mut message = r.into_inner().message.unwrap_or_default();
                if let Some((ms, rest)) = message.topic.strip_prefix("slow/").and_then(|t| t.split_once('/')) {
                    let ms = ms.parse().expect("slow/<ms>/...");
                    message.topic = rest.to_owned();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let drop: fn(&mut pb::$pb::Message) = $drop;
                let r#type = if let Some(rest) = message.topic.strip_prefix("rewrite/") {
                    message.topic = format!("rewritten/{rest}");
                    message.payload = message.payload.to_ascii_uppercase();
                    message.qos = 0;
                    CONTINUE
                } else if message.topic.starts_with("drop/") {
                    drop(&mut message);
                    STOP_AND_RETURN
                } else {
                    return Ok(Response::new(pb::$pb::ValuedResponse { r#type: IGNORE, value: None }));
                };
                let value = Some(pb::$pb::valued_response::Value::Message(message));
                Ok(Response::new(pb::$pb::ValuedResponse { r#type, value }))
            }

            $(
                async fn $method(
                    &self,
                    r: Request<pb::$pb::$req>,
                ) -> Result<Response<pb::$pb::EmptySuccess>, Status> {
                    self.0.record($name, r.get_ref());
                    Ok(Response::new(pb::$pb::EmptySuccess {}))
                }
            )*
        }
    };
}

provider!(V2Service, v2, on_client_authorize(ClientAuthorizeRequest) = "OnClientAuthorize",
    drop_header: |m| {
        m.headers.insert("allow_publish".to_owned(), "false".to_owned());
    },
    notices: [
        on_provider_unloaded(ProviderUnloadedRequest) = "OnProviderUnloaded",
        on_client_connect(ClientConnectRequest) = "OnClientConnect",
        on_client_connack(ClientConnackRequest) = "OnClientConnack",
        on_client_connected(ClientConnectedRequest) = "OnClientConnected",
        on_client_disconnected(ClientDisconnectedRequest) = "OnClientDisconnected",
        on_client_subscribe(ClientSubscribeRequest) = "OnClientSubscribe",
        on_client_unsubscribe(ClientUnsubscribeRequest) = "OnClientUnsubscribe",
        on_session_created(SessionCreatedRequest) = "OnSessionCreated",
        on_session_subscribed(SessionSubscribedRequest) = "OnSessionSubscribed",
        on_session_unsubscribed(SessionUnsubscribedRequest) = "OnSessionUnsubscribed",
        on_session_resumed(SessionResumedRequest) = "OnSessionResumed",
        on_session_discarded(SessionDiscardedRequest) = "OnSessionDiscarded",
        on_session_takenover(SessionTakenoverRequest) = "OnSessionTakenover",
        on_session_terminated(SessionTerminatedRequest) = "OnSessionTerminated",
        on_message_delivered(MessageDeliveredRequest) = "OnMessageDelivered",
        on_message_dropped(MessageDroppedRequest) = "OnMessageDropped",
        on_message_acked(MessageAckedRequest) = "OnMessageAcked",
    ]
);

provider!(V1Service, v1, on_client_check_acl(ClientCheckAclRequest) = "OnClientCheckAcl",
    // EMQX 4.3's Message has no headers: a v1 server cannot stop a message.
    drop_header: |_| {},
    notices: [
        on_provider_unloaded(ProviderUnloadedRequest) = "OnProviderUnloaded",
        on_client_connect(ClientConnectRequest) = "OnClientConnect",
        on_client_connack(ClientConnackRequest) = "OnClientConnack",
        on_client_connected(ClientConnectedRequest) = "OnClientConnected",
        on_client_disconnected(ClientDisconnectedRequest) = "OnClientDisconnected",
        on_client_subscribe(ClientSubscribeRequest) = "OnClientSubscribe",
        on_client_unsubscribe(ClientUnsubscribeRequest) = "OnClientUnsubscribe",
        on_session_created(SessionCreatedRequest) = "OnSessionCreated",
        on_session_subscribed(SessionSubscribedRequest) = "OnSessionSubscribed",
        on_session_unsubscribed(SessionUnsubscribedRequest) = "OnSessionUnsubscribed",
        on_session_resumed(SessionResumedRequest) = "OnSessionResumed",
        on_session_discarded(SessionDiscardedRequest) = "OnSessionDiscarded",
        on_session_takeovered(SessionTakeoveredRequest) = "OnSessionTakeovered",
        on_session_terminated(SessionTerminatedRequest) = "OnSessionTerminated",
        on_message_delivered(MessageDeliveredRequest) = "OnMessageDelivered",
        on_message_dropped(MessageDroppedRequest) = "OnMessageDropped",
        on_message_acked(MessageAckedRequest) = "OnMessageAcked",
    ]
);

#[derive(Debug, Clone, Copy)]
enum Proto {
    V1,
    V2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::V1 => "v1",
            Proto::V2 => "v2",
        }
    }
}

/// A HookProvider server on its own thread; stopped (as a crash: connections cut) when
/// dropped.
struct Provider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Provider {
    /// A server of `proto` on a free loopback port, asking for `hooks` (name, topic filters).
    fn start(proto: Proto, hooks: &[(&str, &[&str])]) -> Provider {
        Provider::start_at("127.0.0.1:0".parse().unwrap(), proto, hooks)
    }

    fn start_at(addr: SocketAddr, proto: Proto, hooks: &[(&str, &[&str])]) -> Provider {
        Provider::serve(addr, proto, hooks, None)
    }

    /// A server of `proto` over TLS (`tls`), on a free loopback port.
    fn start_tls(proto: Proto, hooks: &[(&str, &[&str])], tls: Arc<rustls::ServerConfig>) -> Provider {
        Provider::serve("127.0.0.1:0".parse().unwrap(), proto, hooks, Some(tls))
    }

    fn serve(
        addr: SocketAddr,
        proto: Proto,
        hooks: &[(&str, &[&str])],
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Provider {
        let listener = std::net::TcpListener::bind(addr).expect("bind the HookProvider server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hooks =
            hooks.iter().map(|(name, topics)| (name.to_string(), topics.iter().map(|t| t.to_string()).collect()));
        let shared = Arc::new(Shared { hooks: hooks.collect(), ..Shared::default() });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut builder = tonic::transport::Server::builder();
                let router = match proto {
                    Proto::V2 => {
                        builder.add_service(pb::v2::hook_provider_server::HookProviderServer::new(V2Service(state)))
                    }
                    Proto::V1 => {
                        builder.add_service(pb::v1::hook_provider_server::HookProviderServer::new(V1Service(state)))
                    }
                };
                let serving: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), _>>>> = match tls {
                    None => Box::pin(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))),
                    Some(tls) => Box::pin(router.serve_with_incoming(tls_incoming(listener, tls))),
                };
                tokio::select! {
                    served = serving => served.expect("serve"),
                    _ = stopped => {}
                }
            });
            // Connections and calls still open are cut, as when a server process dies.
            runtime.shutdown_timeout(Duration::from_millis(200));
        });
        Provider { addr, shared, stop: Some(stop), thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request of `rpc` so far.
    fn seen(&self, rpc: &str) -> Vec<Value> {
        self.shared.seen.lock().unwrap().iter().filter(|(r, _)| r == rpc).map(|(_, v)| v.clone()).collect()
    }

    /// The rpcs called so far.
    fn rpcs(&self) -> BTreeSet<String> {
        self.shared.seen.lock().unwrap().iter().map(|(r, _)| r.clone()).collect()
    }

    /// Waits for a request of `rpc` that `matches`, and returns it.
    fn wait_for(&self, rpc: &str, matches: impl Fn(&Value) -> bool) -> Value {
        wait_until(&format!("{rpc} at the HookProvider"), || self.seen(rpc).into_iter().find(|v| matches(v)))
    }

    /// Stops the server: its port closes and its connections are cut.
    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the HookProvider thread");
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The TLS connections accepted on `listener` (handshakes that fail are left out).
fn tls_incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> impl futures_util::Stream<Item = Result<TlsIo, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    futures_util::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => return Some((Err(e), (listener, acceptor))),
            };
            if let Ok(tls) = acceptor.accept(tcp).await {
                return Some((Ok(TlsIo(tls)), (listener, acceptor)));
            }
        }
    })
}

/// A TLS connection as tonic's server takes one.
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `{ name, url, proto }` of a server, for `servers = [...]`.
fn server(name: &str, url: &str, proto: Proto) -> String {
    format!("{{ name = \"{name}\", url = \"{url}\", proto = \"{}\" }}", proto.name())
}

/// A broker running only `emqx_exhook` with `servers` and the `[exhook]` lines `extra`;
/// refused logins are neither delayed nor banned.
fn broker_with(servers: &[String], extra: &str, env: &[(&str, &str)]) -> (DataDir, Broker) {
    let dir = DataDir::with_plugins("{emqx_exhook, true}.\n");
    dir.write(
        "broker.toml",
        &format!(
            "[auth]\nfailure_delay = 0\nmax_failures = 0\n\n[exhook]\n{extra}\nservers = [{}]\n",
            servers.join(", ")
        ),
    );
    let broker = Broker::start(&dir, env);
    (dir, broker)
}

/// An MQTT 3.1.1 CONNECT as `username` (password `pw`), or without credentials.
fn connect4(broker: &Broker, id: &str, username: Option<&str>) -> (Raw<V4>, rumqttc::ConnAck) {
    let mut connect = rumqttc::Connect::new(id);
    connect.keep_alive = 30;
    if let Some(user) = username {
        connect.set_login(user, "pw");
    }
    Raw::<V4>::connect(broker.addr, &rumqttc::Packet::Connect(connect))
}

/// Whether `username` may connect now (the connection is closed again).
fn admitted(broker: &Broker, id: &str, username: &str) -> bool {
    let (mut raw, ack) = connect4(broker, id, Some(username));
    let admitted = ack.code == rumqttc::ConnectReturnCode::Success;
    if admitted {
        raw.disconnect();
    }
    admitted
}

/// A connected MQTT 5 client logged in as `username`.
fn client5(broker: &Broker, id: &str, username: &str) -> C5 {
    let connect = v5::Connect { keep_alive: 60, client_id: id.to_owned(), clean_start: true, properties: None };
    C5::connect_packet(broker, &v5::Packet::Connect(connect, None, Some(v5::Login::new(username, "pw")))).0
}

/// `text` with every digit as `9`, to compare a date's shape.
fn shape(text: &Value) -> String {
    text.as_str().unwrap_or_default().chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect()
}

/// `RequestMeta`, as EMQX fills it.
fn assert_meta(request: &Value) {
    let meta = &request["meta"];
    assert_eq!(meta["node"], "emqx@127.0.0.1", "{request}");
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"), "{request}");
    assert_eq!(meta["sysdescr"], "MQTT broker with plugins", "{request}");
    assert_eq!(meta["cluster_name"], "emqxcl", "{request}");
}

/// OnProviderLoaded carries the broker's info (EMQX 5: uptime in milliseconds, RFC 3339
/// date); the server's answer decides which hooks are called, message hooks only for the
/// topics it asked for; ClientInfo and Message carry EMQX's values; `ctl exhook list`
/// prints EMQX 4.3's line; unloading the plugin sends OnProviderUnloaded.
#[test]
fn the_servers_answer_at_load_decides_which_hooks_are_called() {
    let provider = Provider::start(
        Proto::V2,
        &[
            ("client.connected", &[]),
            ("client.disconnected", &[]),
            ("session.subscribed", &[]),
            ("message.publish", &["t/#"]),
        ],
    );
    let (dir, broker) = broker_with(&[server("default", &provider.url(), Proto::V2)], "", &[]);

    let loaded = provider.wait_for("OnProviderLoaded", |_| true);
    assert_eq!(loaded["broker"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(loaded["broker"]["sysdescr"], "MQTT broker with plugins");
    assert!(loaded["broker"]["uptime"].as_i64().is_some_and(|ms| ms >= 0), "{loaded}");
    assert_eq!(shape(&loaded["broker"]["datetime"]), "9999-99-99T99:99:99.999999999+99:99", "{loaded}");
    assert_meta(&loaded);

    let mut client = client5(&broker, "c1", "u1");
    client.subscribe("t/1", QoS::AtLeastOnce);
    client.publish("other/1", QoS::AtLeastOnce, "not asked for");
    client.publish("t/1", QoS::AtLeastOnce, "hello");
    let got = client.next_publish();
    assert_eq!((e2e::raw::topic(&got), e2e::raw::payload(&got)), ("t/1".to_owned(), "hello".to_owned()));
    client.disconnect();

    let connected = provider.wait_for("OnClientConnected", |r| r["clientinfo"]["clientid"] == "c1");
    let info = &connected["clientinfo"];
    assert_eq!(info["node"], "emqx@127.0.0.1");
    assert_eq!(info["username"], "u1");
    assert_eq!(info["peerhost"], "127.0.0.1");
    assert_eq!(info["sockport"], broker.port());
    assert!(info["peerport"].as_u64().is_some_and(|p| p > 0), "{info}");
    assert_eq!((&info["protocol"], &info["password"], &info["mountpoint"]), (&json!("mqtt"), &json!(""), &json!("")));
    assert_eq!((&info["is_superuser"], &info["anonymous"]), (&json!(false), &json!(false)));
    assert_meta(&connected);

    let subscribed = provider.wait_for("OnSessionSubscribed", |r| r["topic"] == "t/1");
    assert_eq!(subscribed["subopts"], json!({"qos": 1, "rh": 0, "rap": 0, "nl": 0}));
    let published = provider.wait_for("OnMessagePublish", |_| true);
    let message = &published["message"];
    assert_eq!((&message["topic"], &message["from"], &message["qos"]), (&json!("t/1"), &json!("c1"), &json!(1)));
    assert_eq!(message["payload"], json!(b"hello".to_vec()));
    assert_eq!(message["headers"], json!({"protocol": "mqtt", "peerhost": "127.0.0.1", "username": "u1"}));
    assert_eq!(message["node"], "emqx@127.0.0.1");
    let id = message["id"].as_str().unwrap();
    assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()), "{id}");
    assert!(message["timestamp"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "{message}");
    let disconnected = provider.wait_for("OnClientDisconnected", |r| r["clientinfo"]["clientid"] == "c1");
    assert_eq!(disconnected["reason"], "normal");

    // Only what the server asked for; `other/1` is outside its topic filter.
    let expected =
        ["OnProviderLoaded", "OnClientConnected", "OnSessionSubscribed", "OnMessagePublish", "OnClientDisconnected"];
    assert_eq!(provider.rpcs(), expected.iter().map(|s| s.to_string()).collect());
    assert_eq!(provider.seen("OnMessagePublish").len(), 1, "only t/1");

    let list = dir.ctl(&["exhook", "list"]).ok();
    assert_eq!(
        list.trim(),
        "Server(name=default, hooks=#{'client.connected' => #{},'client.disconnected' => #{},\
         'message.publish' => #{topics => [<<\"t/#\">>]},'session.subscribed' => #{}}, active=true)"
    );

    dir.ctl(&["plugins", "unload", "emqx_exhook"]).ok();
    let unloaded = provider.wait_for("OnProviderUnloaded", |_| true);
    assert_meta(&unloaded);
}

/// Every event the broker has a hook for reaches a server that asks for all of EMQX's, with
/// EMQX 5's fields: ConnInfo at connect and connack, the password only at authenticate, the
/// real topic of a shared subscription in authorize and the whole filter in the session
/// events, subscription options, the subscriber's ClientInfo in delivered and acked, the
/// same message id from publish to ack, `no_subscribers` drops.
#[test]
fn every_event_carries_emqx_s_fields() {
    let every: Vec<(&str, &[&str])> = [
        "client.connect",
        "client.connack",
        "client.connected",
        "client.disconnected",
        "client.authenticate",
        "client.authorize",
        "client.subscribe",
        "client.unsubscribe",
        "session.created",
        "session.subscribed",
        "session.unsubscribed",
        "session.resumed",
        "session.discarded",
        "session.takenover",
        "session.terminated",
        "message.publish",
        "message.delivered",
        "message.acked",
        "message.dropped",
    ]
    .into_iter()
    .map(|name| (name, &[][..]))
    .collect();
    let provider = Provider::start(Proto::V2, &every);
    let (_dir, broker) = broker_with(&[server("all", &provider.url(), Proto::V2)], "", &[]);

    let mut sub = client5(&broker, "c-sub", "subuser");
    sub.subscribe("e/#", QoS::AtLeastOnce);
    sub.subscribe("$share/g/s/1", QoS::AtMostOnce);
    let mut publisher = client5(&broker, "c-pub", "pubuser");
    publisher.publish("e/1", QoS::AtLeastOnce, "payload");
    let got = sub.next_publish();
    assert_eq!(e2e::raw::topic(&got), "e/1");
    publisher.publish("nobody/1", QoS::AtMostOnce, "lost");
    sub.unsubscribe(&["e/#"]);
    sub.disconnect();

    let is = |id: &'static str| move |r: &Value| r["clientinfo"]["clientid"] == id || r["conninfo"]["clientid"] == id;
    let connect = provider.wait_for("OnClientConnect", is("c-sub"));
    let conninfo = &connect["conninfo"];
    assert_eq!((&conninfo["proto_name"], &conninfo["proto_ver"]), (&json!("MQTT"), &json!("5")));
    assert_eq!(
        (&conninfo["username"], &conninfo["keepalive"], &conninfo["peerhost"]),
        (&json!("subuser"), &json!(60), &json!("127.0.0.1"))
    );
    assert_eq!(conninfo["sockport"], broker.port());
    assert!(conninfo["peerport"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(connect["props"], json!([]));
    assert_eq!(provider.wait_for("OnClientConnack", is("c-sub"))["result_code"], "success");

    let authenticate = provider.wait_for("OnClientAuthenticate", is("c-sub"));
    assert_eq!((&authenticate["clientinfo"]["password"], &authenticate["result"]), (&json!("pw"), &json!(true)));
    assert_eq!(provider.wait_for("OnClientConnected", is("c-sub"))["clientinfo"]["password"], "", "no password after");

    // type 1 is SUBSCRIBE, 0 PUBLISH; a shared subscription's real topic (EMQX 5).
    let authorize = |kind: i64, topic: &'static str| {
        provider.wait_for("OnClientAuthorize", move |r| r["type"] == kind && r["topic"] == topic)
    };
    assert_eq!(authorize(1, "e/#")["result"], true);
    assert_eq!(authorize(1, "s/1")["clientinfo"]["clientid"], "c-sub");
    assert_eq!(authorize(0, "e/1")["clientinfo"]["clientid"], "c-pub");

    let subscribe = provider.wait_for("OnClientSubscribe", |r| r["topic_filters"][0]["name"] == "e/#");
    assert_eq!(subscribe["topic_filters"][0]["subopts"]["qos"], 1);
    let shared = provider.wait_for("OnSessionSubscribed", |r| r["topic"] == "$share/g/s/1");
    assert_eq!(shared["subopts"], json!({"qos": 0, "rh": 0, "rap": 0, "nl": 0}));
    provider.wait_for("OnSessionSubscribed", |r| r["topic"] == "e/#");

    let published = provider.wait_for("OnMessagePublish", |r| r["message"]["topic"] == "e/1");
    let delivered = provider.wait_for("OnMessageDelivered", |r| r["message"]["topic"] == "e/1");
    assert_eq!(delivered["clientinfo"]["clientid"], "c-sub", "the subscriber's");
    assert_eq!(delivered["message"]["payload"], json!(b"payload".to_vec()));
    let acked = provider.wait_for("OnMessageAcked", |r| r["message"]["topic"] == "e/1");
    assert_eq!(acked["clientinfo"]["username"], "subuser");
    let id = &published["message"]["id"];
    assert_eq!((&delivered["message"]["id"], &acked["message"]["id"]), (id, id), "one message, one id");

    let dropped = provider.wait_for("OnMessageDropped", |r| r["message"]["topic"] == "nobody/1");
    assert_eq!((&dropped["reason"], &dropped["message"]["from"]), (&json!("no_subscribers"), &json!("c-pub")));

    let unsubscribe = provider.wait_for("OnClientUnsubscribe", is("c-sub"));
    assert_eq!(unsubscribe["topic_filters"][0]["name"], "e/#");
    provider.wait_for("OnSessionUnsubscribed", |r| r["topic"] == "e/#");
    assert_eq!(provider.wait_for("OnClientDisconnected", is("c-sub"))["reason"], "normal");
    for rpc in provider.rpcs() {
        for request in provider.seen(&rpc) {
            assert_meta(&request);
        }
    }
}

/// `client.authenticate` decides through `ValuedResponse`: STOP_AND_RETURN true or false,
/// CONTINUE with a value decides too (no other server), IGNORE leaves the client to the
/// broker (here `allow_anonymous = false`: refused as anonymous, 0x05).
#[test]
fn authenticate_is_decided_by_the_valued_response() {
    let provider = Provider::start(Proto::V2, &[("client.authenticate", &[])]);
    let (_dir, broker) =
        broker_with(&[server("default", &provider.url(), Proto::V2)], "", &[("BROKER_ALLOW_ANONYMOUS", "false")]);
    let code = |id: &str, user: &str| connect4(&broker, id, Some(user)).1.code;
    assert_eq!(code("a", "gooduser"), rumqttc::ConnectReturnCode::Success);
    assert_eq!(code("b", "normaluser"), rumqttc::ConnectReturnCode::Success);
    assert_eq!(code("c", "baduser"), rumqttc::ConnectReturnCode::BadUserNamePassword);
    assert_eq!(code("d", "someone"), rumqttc::ConnectReturnCode::NotAuthorized);
    let asked: Vec<String> = provider
        .seen("OnClientAuthenticate")
        .iter()
        .map(|r| r["clientinfo"]["username"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(asked, ["gooduser", "normaluser", "baduser", "someone"]);
}

/// `client.authorize` denies a topic: a denied SUBSCRIBE gets 0x87 in its SUBACK, a denied
/// PUBLISH is acknowledged with 0x87 and never delivered; the server's IGNORE leaves the
/// rest allowed.
#[test]
fn authorize_denies_a_topic() {
    let provider = Provider::start(Proto::V2, &[("client.authorize", &[])]);
    let (_dir, broker) = broker_with(&[server("default", &provider.url(), Proto::V2)], "", &[]);

    let mut client = client5(&broker, "acl", "u");
    let codes = client.subscribe_with(vec![v5::Filter::new("secret/x", QoS::AtLeastOnce)], None);
    assert_eq!(codes, vec![v5::SubscribeReasonCode::NotAuthorized]);
    client.subscribe("#", QoS::AtLeastOnce);
    match client.publish_retain("secret/x", QoS::AtLeastOnce, false, "hidden") {
        Some(v5::Packet::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized),
        other => panic!("expected a PUBACK, got {other:?}"),
    }
    client.publish("open/x", QoS::AtLeastOnce, "seen");
    // Published after the denied one, it is the first to arrive: `secret/x` never did.
    assert_eq!(e2e::raw::topic(&client.next_publish()), "open/x");
    provider.wait_for("OnClientAuthorize", |r| r["type"] == 0 && r["topic"] == "secret/x");
    provider.wait_for("OnClientAuthorize", |r| r["type"] == 1 && r["topic"] == "secret/x");
}

/// `message.publish`: the message a server returns is what goes on, as EMQX applies it: its
/// new topic (routed there), payload and QoS (here lowered to 0, so the subscriber gets it at
/// QoS 0); `allow_publish = "false"` drops it (the publisher is still acknowledged).
#[test]
fn message_publish_rewrites_topic_payload_and_qos_and_allow_publish_false_drops() {
    let provider = Provider::start(Proto::V2, &[("message.publish", &["rewrite/#", "drop/#"])]);
    let (_dir, broker) = broker_with(&[server("default", &provider.url(), Proto::V2)], "", &[]);

    let mut watcher = client5(&broker, "watcher", "w");
    watcher.subscribe("#", QoS::AtLeastOnce);
    let mut publisher = client5(&broker, "publisher", "p");
    publisher.publish("drop/1", QoS::AtLeastOnce, "dropped");
    publisher.publish("rewrite/a", QoS::AtLeastOnce, "hello");
    publisher.publish("plain/1", QoS::AtLeastOnce, "as is");

    let first = watcher.next_publish();
    assert_eq!(e2e::raw::topic(&first), "rewritten/a", "drop/1 was dropped, rewrite/a moved");
    assert_eq!((e2e::raw::payload(&first), first.qos), ("HELLO".to_owned(), QoS::AtMostOnce), "payload and QoS");
    let second = watcher.next_publish();
    assert_eq!((e2e::raw::topic(&second), e2e::raw::payload(&second)), ("plain/1".to_owned(), "as is".to_owned()));

    let asked: Vec<Value> = provider.seen("OnMessagePublish").iter().map(|r| r["message"]["topic"].clone()).collect();
    assert_eq!(asked, [json!("drop/1"), json!("rewrite/a")], "plain/1 is outside the server's filters");
}

/// One client's PUBLISHes sent in one write, each answered by a slow `message.publish` server
/// (the first slowest, so the answers come back in reverse). With `broker.hook_pipeline`
/// (default 8) the server is asked about several at once, and with `hook_pipeline = 1` one at
/// a time, as EMQX asks; either way the server is asked in the order they came, a subscriber
/// gets them in that order (MQTT-4.6.0-6, ordered topics), their PUBACKs come in that order
/// (what MQTT-4.6.0-2 asks of a client as receiver), one the server drops is still
/// acknowledged in its place and one the ACL (asked of the server too) denies gets 0x87 in its
/// place, and an UNSUBSCRIBE sent after them takes effect only once they are routed (the
/// publisher, subscribed, gets every one).
#[test]
fn publishes_waiting_for_a_slow_server_are_pipelined_and_finished_in_order() {
    for (pipeline, env) in [(8, None), (1, Some("1"))] {
        let provider = Provider::start(Proto::V2, &[("message.publish", &["slow/#"]), ("client.authorize", &[])]);
        let env: Vec<(&str, &str)> = env.map(|v| ("BROKER_BROKER__HOOK_PIPELINE", v)).into_iter().collect();
        let (_dir, broker) = broker_with(&[server("default", &provider.url(), Proto::V2)], "", &env);
        let mut watcher = client5(&broker, "watcher", "w");
        watcher.subscribe("slow/#", QoS::AtLeastOnce);
        let mut publisher = client5(&broker, "publisher", "p");
        publisher.subscribe("slow/#", QoS::AtMostOnce);

        // (topic, QoS): packet ids 1.. for the QoS 1 ones; the ACL denies `secret/x`, the
        // server drops `drop/d`.
        let sent = [
            ("slow/300/a", QoS::AtLeastOnce),
            ("slow/250/b", QoS::AtLeastOnce),
            ("slow/200/c", QoS::AtMostOnce),
            ("secret/x", QoS::AtLeastOnce),
            ("slow/150/drop/d", QoS::AtLeastOnce),
            ("slow/100/e", QoS::AtLeastOnce),
            ("slow/50/f", QoS::AtLeastOnce),
        ];
        let mut bytes = bytes::BytesMut::new();
        let (mut acked, mut secret) = (Vec::new(), 0);
        for (topic, qos) in sent {
            let mut publish = v5::Publish::new(topic, qos, topic.as_bytes().to_vec(), None);
            if qos == QoS::AtLeastOnce {
                publish.pkid = publisher.next_pkid();
                acked.push(publish.pkid);
                if topic == "secret/x" {
                    secret = publish.pkid;
                }
            }
            v5::Packet::Publish(publish).write(&mut bytes, None).unwrap();
        }
        let unsubscribe = v5::Unsubscribe { pkid: 100, filters: vec!["slow/#".to_owned()], properties: None };
        v5::Packet::Unsubscribe(unsubscribe).write(&mut bytes, None).unwrap();
        publisher.raw.send_bytes(&bytes);

        let routed = ["slow/300/a", "slow/250/b", "slow/200/c", "slow/100/e", "slow/50/f"];
        let (mut answers, mut own, mut unsubscribed) = (Vec::new(), Vec::new(), false);
        while !unsubscribed || own.len() < routed.len() {
            match publisher.raw.recv() {
                v5::Packet::PubAck(ack) => {
                    assert!(!unsubscribed, "pipeline {pipeline}: a PUBACK after the UNSUBACK: {ack:?}");
                    let denied = ack.reason == v5::PubAckReason::NotAuthorized;
                    assert_eq!(denied, ack.pkid == secret, "pipeline {pipeline}: only secret/x is denied: {ack:?}");
                    answers.push(ack.pkid);
                }
                v5::Packet::Publish(delivered) => own.push(e2e::raw::topic(&delivered)),
                v5::Packet::UnsubAck(ack) => {
                    assert_eq!(ack.pkid, 100);
                    assert_eq!(answers, acked, "pipeline {pipeline}: every PUBACK, in order, before the UNSUBACK");
                    unsubscribed = true;
                }
                other => panic!("pipeline {pipeline}: expected PUBACK, PUBLISH or UNSUBACK, got {other:?}"),
            }
        }
        assert_eq!(own, routed, "pipeline {pipeline}: routed before the UNSUBSCRIBE, in order");
        let delivered: Vec<String> = routed.iter().map(|_| e2e::raw::topic(&watcher.next_publish())).collect();
        assert_eq!(delivered, routed, "pipeline {pipeline}: in the order they came");
        let asked: Vec<Value> =
            provider.seen("OnMessagePublish").iter().map(|r| r["message"]["topic"].clone()).collect();
        let in_order: Vec<Value> = sent.iter().filter(|(t, _)| *t != "secret/x").map(|(t, _)| json!(t)).collect();
        assert_eq!(asked, in_order, "pipeline {pipeline}: the server is asked in the order they came");
        let most_open = provider.shared.most_publishes_open.load(Ordering::SeqCst);
        if pipeline == 1 {
            assert_eq!(most_open, 1, "hook_pipeline = 1: one call at a time");
        } else {
            assert!((2..=pipeline).contains(&most_open), "pipeline {pipeline}: {most_open} calls at once");
        }
    }
}

/// An `https://` server with EMQX's `ssl` settings: the server's certificate checked against
/// `cacertfile`, the broker's client certificate (`certfile`, `keyfile`) shown to a server
/// that requires one, HTTP/2 agreed by ALPN; calls then go as over `http://`. A server whose
/// certificate the CA did not sign is not loaded, and `ctl exhook status` says why.
#[test]
fn an_https_server_is_reached_over_tls_with_a_client_certificate() {
    let pki = e2e::pki::Pki::new("exhook test CA");
    let provider = Provider::start_tls(Proto::V2, &[("message.publish", &["rewrite/#"])], pki.server_tls(&[b"h2"]));
    let url = format!("https://{}", provider.addr);
    let ssl = "ssl = { cacertfile = \"ca.pem\", certfile = \"client.pem\", keyfile = \"client.key\" }";
    let server = format!("{{ name = \"tls\", url = \"{url}\", {ssl} }}");
    // A broker with `server` and the files of `pki` (the CA, the broker's certificate).
    let broker_trusting = |pki: &e2e::pki::Pki| {
        let dir = DataDir::with_plugins("{emqx_exhook, true}.\n");
        dir.write("ca.pem", &pki.ca);
        dir.write("client.pem", &pki.client.0);
        dir.write("client.key", &pki.client.1);
        dir.write("broker.toml", &format!("[exhook]\nservers = [{server}]\n"));
        let broker = Broker::start(&dir, &[]);
        (dir, broker)
    };
    let (dir, broker) = broker_trusting(&pki);
    wait_until("loaded over TLS", || dir.ctl(&["exhook", "list"]).ok().contains("active=true").then_some(()));

    let mut watcher = client5(&broker, "watcher", "w");
    watcher.subscribe("#", QoS::AtLeastOnce);
    let mut publisher = client5(&broker, "publisher", "p");
    publisher.publish("rewrite/tls", QoS::AtLeastOnce, "secret");
    let got = watcher.next_publish();
    assert_eq!((e2e::raw::topic(&got), e2e::raw::payload(&got)), ("rewritten/tls".to_owned(), "SECRET".to_owned()));
    // A message larger than HTTP/2's default windows, both ways.
    let big = "x".repeat(600 * 1024);
    publisher.publish("rewrite/big", QoS::AtLeastOnce, &big);
    let got = watcher.next_publish();
    assert_eq!(e2e::raw::topic(&got), "rewritten/big");
    assert!(e2e::raw::payload(&got) == big.to_uppercase(), "the payload rewritten whole");
    assert_eq!(provider.seen("OnMessagePublish").len(), 2);

    // Another CA: the server's certificate is refused.
    let (dir, _broker) = broker_trusting(&e2e::pki::Pki::new("another CA"));
    let status = wait_until("the server down, and why", || {
        let status = dir.ctl(&["exhook", "status"]).ok();
        status.contains("TLS").then_some(status)
    });
    assert!(status.contains("down") && status.contains("certificate"), "{status}");
    assert_eq!(provider.seen("OnProviderLoaded").len(), 1, "only the first broker loaded it");
}

/// Two servers fold `message.publish` in the order configured (EMQX's `call_fold`): the
/// second is asked about the message as the first answered it, and its `IGNORE` keeps the
/// first's answer; a message only the second is asked about, and ignores, goes on as it was.
#[test]
fn message_publish_folds_over_two_servers_in_order() {
    let first = Provider::start(Proto::V2, &[("message.publish", &["rewrite/#"])]);
    let second = Provider::start(Proto::V2, &[("message.publish", &["#"])]);
    let servers = [server("first", &first.url(), Proto::V2), server("second", &second.url(), Proto::V2)];
    let (_dir, broker) = broker_with(&servers, "", &[]);

    let mut watcher = client5(&broker, "fold-watcher", "w");
    watcher.subscribe("#", QoS::AtLeastOnce);
    let mut publisher = client5(&broker, "fold-publisher", "p");
    publisher.publish("rewrite/a", QoS::AtLeastOnce, "hello");
    publisher.publish("plain/1", QoS::AtLeastOnce, "as is");

    let moved = watcher.next_publish();
    assert_eq!((e2e::raw::topic(&moved), e2e::raw::payload(&moved)), ("rewritten/a".to_owned(), "HELLO".to_owned()));
    assert_eq!(moved.qos, QoS::AtMostOnce, "the first server's answer, kept through the second's IGNORE");
    let plain = watcher.next_publish();
    assert_eq!((e2e::raw::topic(&plain), e2e::raw::payload(&plain)), ("plain/1".to_owned(), "as is".to_owned()));

    let topics = |p: &Provider| -> Vec<Value> {
        p.seen("OnMessagePublish").iter().map(|r| r["message"]["topic"].clone()).collect()
    };
    assert_eq!(topics(&first), [json!("rewrite/a")]);
    assert_eq!(topics(&second), [json!("rewritten/a"), json!("plain/1")], "asked with the first's answer");
}

/// A v1 server (EMQX 4.3's `emqx.exhook.v1`): `client.check_acl` by that name, BrokerInfo
/// with the uptime in words and the local date, the share group apart from the topic in
/// `session.subscribed`, no `peerport`; its `message.publish` answers move messages too.
#[test]
fn a_v1_server_gets_emqx_4_3_s_contract() {
    let provider = Provider::start(
        Proto::V1,
        &[
            ("client.connected", &[]),
            ("client.check_acl", &[]),
            ("session.subscribed", &[]),
            ("message.publish", &["rewrite/#"]),
            // EMQX 5's name: not one of v1's, so never called.
            ("client.authorize", &[]),
        ],
    );
    let (dir, broker) = broker_with(&[server("old", &provider.url(), Proto::V1)], "", &[]);
    let loaded = provider.wait_for("OnProviderLoaded", |_| true);
    assert!(loaded["broker"]["uptime"].as_str().is_some_and(|u| u.ends_with(" seconds")), "{loaded}");
    assert_eq!(shape(&loaded["broker"]["datetime"]), "9999-99-99 99:99:99");
    assert_meta(&loaded);

    let mut client = client5(&broker, "v1-client", "u");
    let codes = client.subscribe_with(vec![v5::Filter::new("secret/x", QoS::AtLeastOnce)], None);
    assert_eq!(codes, vec![v5::SubscribeReasonCode::NotAuthorized]);
    client.subscribe("$share/g/rewritten/#", QoS::AtLeastOnce);
    client.publish("rewrite/b", QoS::AtLeastOnce, "moved");
    assert_eq!(e2e::raw::topic(&client.next_publish()), "rewritten/b");

    let connected = provider.wait_for("OnClientConnected", |_| true);
    assert_eq!(connected["clientinfo"]["clientid"], "v1-client");
    assert!(connected["clientinfo"].get("peerport").is_none(), "v1 has no peerport: {connected}");
    let acl = provider.wait_for("OnClientCheckAcl", |r| r["topic"] == "$share/g/rewritten/#");
    assert_eq!(acl["type"], 1);
    let subscribed = provider.wait_for("OnSessionSubscribed", |_| true);
    assert_eq!(subscribed["topic"], "rewritten/#");
    assert_eq!(subscribed["subopts"]["share"], "g");
    let published = provider.wait_for("OnMessagePublish", |_| true);
    assert!(published["message"].get("headers").is_none(), "v1 messages have no headers");

    let list = dir.ctl(&["exhook", "list"]).ok();
    assert!(list.contains("'client.check_acl' => #{}") && !list.contains("client.authorize"), "{list}");
}

/// A server that is not running: with `failed_action = deny` (the default) every login is
/// refused at once; the server is loaded by itself once it comes up (`auto_reconnect`), and
/// decides again; when it dies, the first call finds it gone and logins are refused again
/// until it is back.
#[test]
fn a_dead_server_denies_and_is_loaded_again_when_it_comes_up() {
    let port = e2e::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = format!("http://{addr}");
    let (dir, broker) = broker_with(&[server("default", &url, Proto::V2)], "auto_reconnect = \"200ms\"\n", &[]);

    assert_eq!(connect4(&broker, "early", Some("gooduser")).1.code, rumqttc::ConnectReturnCode::BadUserNamePassword);
    let list = dir.ctl(&["exhook", "list"]).ok();
    assert_eq!(list.trim(), "Server(name=default, hooks=#{}, active=false)");
    assert!(dir.ctl(&["exhook", "status"]).ok().contains("default: http://127.0.0.1"));

    let hooks: &[(&str, &[&str])] = &[("client.authenticate", &[]), ("client.connected", &[])];
    let provider = Provider::start_at(addr, Proto::V2, hooks);
    wait_until("the server loaded again", || admitted(&broker, "later", "gooduser").then_some(()));
    assert!(dir.ctl(&["exhook", "list"]).ok().contains("active=true"));
    assert_eq!(connect4(&broker, "bad", Some("baduser")).1.code, rumqttc::ConnectReturnCode::BadUserNamePassword);

    provider.stop();
    assert_eq!(connect4(&broker, "gone", Some("gooduser")).1.code, rumqttc::ConnectReturnCode::BadUserNamePassword);
    wait_until("the server down", || dir.ctl(&["exhook", "list"]).ok().contains("active=false").then_some(()));

    let provider = Provider::start_at(addr, Proto::V2, hooks);
    wait_until("the server loaded a third time", || admitted(&broker, "back", "gooduser").then_some(()));
    assert_eq!(provider.seen("OnProviderLoaded").len(), 1, "loaded once by this server");
}

/// A server that is not running with `failed_action = ignore`: as if it were not
/// configured; the broker's own rule (`allow_anonymous`, loopback here) lets clients in.
#[test]
fn a_dead_server_with_failed_action_ignore_is_as_if_not_configured() {
    let url = format!("http://127.0.0.1:{}", e2e::free_port());
    let (dir, broker) = broker_with(&[server("default", &url, Proto::V2)], "failed_action = \"ignore\"\n", &[]);
    assert!(admitted(&broker, "c", "someone"));
    let mut client = client5(&broker, "pubsub", "u");
    client.subscribe("x/#", QoS::AtLeastOnce);
    client.publish("x/1", QoS::AtLeastOnce, "through");
    assert_eq!(e2e::raw::payload(&client.next_publish()), "through");
    assert!(dir.ctl(&["exhook", "status"]).ok().contains("down"));
}

/// A server that does not answer costs its `request_timeout` once: that login gets
/// `failed_action` (deny), the server is down, and the next login is refused without a call.
/// With `auto_reconnect = false` it stays down until `ctl exhook enable` loads it again.
#[test]
fn a_slow_server_costs_its_timeout_once_then_failed_action_applies_at_once() {
    let provider = Provider::start(Proto::V2, &[("client.authenticate", &[])]);
    let extra = "request_timeout = \"2s\"\nauto_reconnect = false\n";
    let (dir, broker) = broker_with(&[server("default", &provider.url(), Proto::V2)], extra, &[]);
    assert!(dir.ctl(&["exhook", "list"]).ok().contains("active=true"), "loaded at start");

    assert_eq!(connect4(&broker, "slow", Some("hang")).1.code, rumqttc::ConnectReturnCode::BadUserNamePassword);
    let status = dir.ctl(&["exhook", "status"]).ok();
    assert!(status.contains("down (client.authenticate no answer within 2s), auto_reconnect = false"), "{status}");
    assert_eq!(connect4(&broker, "next", Some("gooduser")).1.code, rumqttc::ConnectReturnCode::BadUserNamePassword);
    assert_eq!(provider.seen("OnClientAuthenticate").len(), 1, "the server is not asked while down");

    assert_eq!(dir.ctl(&["exhook", "enable", "default"]).ok().trim(), "ok");
    assert!(admitted(&broker, "again", "gooduser"));
    assert_eq!(provider.seen("OnProviderLoaded").len(), 2);
}

/// `broker ctl exhook list|disable|enable|stats`, with EMQX 4.3's words: `ok`,
/// `not_running`, `already_started`, `not_found`; `exhook server ...` works too. A disabled
/// server gets OnProviderUnloaded and no more calls; enabled, it is loaded again.
#[test]
fn ctl_exhook_lists_disables_and_enables_servers() {
    let provider = Provider::start(Proto::V2, &[("client.connected", &[])]);
    let (dir, broker) = broker_with(&[server("default", &provider.url(), Proto::V2)], "", &[]);
    let active = "Server(name=default, hooks=#{'client.connected' => #{}}, active=true)";
    assert_eq!(dir.ctl(&["exhook", "list"]).ok().trim(), active);
    assert_eq!(dir.ctl(&["exhook", "server", "list"]).ok().trim(), active);

    assert_eq!(dir.ctl(&["exhook", "disable", "default"]).ok().trim(), "ok");
    provider.wait_for("OnProviderUnloaded", |_| true);
    assert_eq!(dir.ctl(&["exhook", "list"]).ok().trim(), "Server(name=default, hooks=#{}, active=false)");
    assert!(dir.ctl(&["exhook", "disable", "default"]).err().contains("not_running"));
    assert!(admitted(&broker, "while-disabled", "u"));

    assert_eq!(dir.ctl(&["exhook", "server", "enable", "default"]).ok().trim(), "ok");
    assert_eq!(provider.seen("OnProviderLoaded").len(), 2);
    assert!(dir.ctl(&["exhook", "enable", "default"]).err().contains("already_started"));
    assert!(dir.ctl(&["exhook", "enable", "nope"]).err().contains("not_found"));
    assert!(admitted(&broker, "while-enabled", "u"));
    provider.wait_for("OnClientConnected", |r| r["clientinfo"]["clientid"] == "while-enabled");
    let ids: Vec<Value> =
        provider.seen("OnClientConnected").iter().map(|r| r["clientinfo"]["clientid"].clone()).collect();
    assert_eq!(ids, [json!("while-enabled")], "nothing sent while disabled");

    let stats = dir.ctl(&["exhook", "stats"]).ok();
    assert_eq!(stats.trim(), format!("{:<35}:1", "default.client.connected"));
    assert!(dir.ctl(&["exhook", "frobnicate"]).err().contains("Usage: broker ctl exhook"));
}

/// The management API's `/api/v4/exhooks` (EMQX 5's `/exhooks` shape): each server with its
/// settings, `status` and the hooks it asked for; `PUT .../disable` and `.../enable` as the
/// ctl commands (OnProviderUnloaded, then loaded again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_lists_disables_and_enables_servers() {
    let provider = Provider::start(Proto::V2, &[("client.connected", &[])]);
    let dir = DataDir::with_plugins("{emqx_exhook, true}.\n{emqx_management, true}.\n");
    let servers = server("default", &provider.url(), Proto::V2);
    dir.write("broker.toml", &format!("[exhook]\nservers = [{servers}]\n"));
    let broker = Broker::start(&dir, &[("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0")]);
    let api = e2e::ManagementApi::new(format!("http://{}", broker.logged_addr("management API listening on http://")));
    let auth = Some(("admin", "public"));

    let (status, body) = api.call(reqwest::Method::GET, "/api/v4/exhooks", auth, None).await;
    assert_eq!(status, 200, "{body}");
    let listed = &body["data"][0];
    assert_eq!((listed["name"].clone(), listed["status"].clone()), (json!("default"), json!("connected")), "{body}");
    assert_eq!((listed["url"].clone(), listed["proto"].clone()), (json!(provider.url()), json!("v2")));
    assert_eq!(listed["hooks"], json!(["client.connected"]));
    assert_eq!(listed["failed_action"], "deny");

    let (status, body) = api.call(reqwest::Method::PUT, "/api/v4/exhooks/default/disable", auth, None).await;
    assert_eq!((status.as_u16(), body["code"].clone()), (200, json!(0)), "{body}");
    provider.wait_for("OnProviderUnloaded", |_| true);
    let (_, body) = api.call(reqwest::Method::GET, "/api/v4/exhooks", auth, None).await;
    assert_eq!(body["data"][0]["status"], "disabled");
    let (status, _) = api.call(reqwest::Method::PUT, "/api/v4/exhooks/default/enable", auth, None).await;
    assert_eq!(status, 200);
    assert_eq!(provider.seen("OnProviderLoaded").len(), 2, "loaded again");
    let (status, _) = api.call(reqwest::Method::PUT, "/api/v4/exhooks/nope/enable", auth, None).await;
    assert_eq!(status, 404, "an unknown server");
}

/// Shipped listed but not started, as EMQX ships it; `ctl plugins load` starts it with its
/// `[exhook]` table (the servers are loaded before `load` answers) and `unload` sends
/// OnProviderUnloaded.
#[test]
fn shipped_listed_not_started_and_loaded_by_ctl() {
    let shipped = include_str!("../../data/loaded_plugins");
    assert!(shipped.lines().any(|l| l == "{emqx_exhook, false}."), "{shipped}");

    let provider = Provider::start(Proto::V2, &[("client.connected", &[])]);
    let dir = DataDir::with_plugins("{emqx_exhook, false}.\n");
    dir.write("broker.toml", &format!("[exhook]\nservers = [{}]\n", server("default", &provider.url(), Proto::V2)));
    let broker = Broker::start(&dir, &[]);
    let list = dir.ctl(&["plugins", "list"]).ok();
    let line = "Plugin(emqx_exhook, description=EMQ X Extension for Hook, active=false)";
    assert!(list.lines().any(|l| l == line), "{list}");
    assert!(provider.rpcs().is_empty(), "not started: nothing called");

    dir.ctl(&["plugins", "load", "emqx_exhook"]).ok();
    assert_eq!(provider.seen("OnProviderLoaded").len(), 1, "loaded before `load` answered");
    assert!(admitted(&broker, "loaded", "u"));
    provider.wait_for("OnClientConnected", |r| r["clientinfo"]["clientid"] == "loaded");
    dir.ctl(&["plugins", "unload", "emqx_exhook"]).ok();
    assert_eq!(provider.seen("OnProviderUnloaded").len(), 1, "unloaded before `unload` answered");
}

/// A wrong `[exhook]` table refuses the load with the key and the problem named; the broker
/// keeps serving, without the plugin.
#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let dir = DataDir::with_plugins("{emqx_exhook, false}.\n");
    for (toml, expected) in [
        (
            "servers = [{ name = \"a\", url = \"grpc://h:1\" }]",
            "exhook.servers.0: url \"grpc://h:1\": must start with http://",
        ),
        (
            "servers = [{ name = \"a\", url = \"http://h:1\", proto = \"v3\" }]",
            "exhook.servers[0].proto: unknown variant `v3`",
        ),
        ("failed_action = \"maybe\"", "exhook.failed_action: unknown variant `maybe`"),
        ("request_timeout = \"soon\"", "exhook.request_timeout: invalid duration \"soon\""),
    ] {
        dir.write("broker.toml", &format!("[exhook]\n{toml}\n"));
        let broker = Broker::start(&dir, &[]);
        let error = dir.ctl(&["plugins", "load", "emqx_exhook"]).err();
        assert!(error.contains(expected), "{toml}: {error}");
        assert!(admitted(&broker, "still-serving", "u"));
        broker.stop();
    }
}
