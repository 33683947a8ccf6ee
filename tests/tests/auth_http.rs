//! `emqx_auth_http` end to end: the real broker and plugin against a real HTTP service on
//! 127.0.0.1 (axum, in this process), with real MQTT clients.
//!
//! The service answers as the EMQX 4.3 plugin expects: 200 allows (200 with the body
//! `ignore` has no opinion), 401/403 deny.
//!
//! A denied CONNECT gets "bad user name or password" (3.1.1: 0x04, MQTT 5: 0x86), as EMQX
//! refuses a 401.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::Router;
use e2e::raw::{v5, Raw, C5, V4, V5};
use e2e::{wait_until, Broker, DataDir};
use rumqttc::v5::mqttbytes::QoS;

/// One request the service got.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    /// The query string's params (GET) or the body's (form or JSON), by name.
    params: BTreeMap<String, String>,
}

impl Seen {
    fn param(&self, name: &str) -> &str {
        self.params.get(name).map_or("<missing>", String::as_str)
    }
}

/// How the service answers one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// This status and body.
    Status(u16, &'static str),
    /// Never: the request hangs until the client gives up.
    Hang,
    /// This status and body once the test calls [`AuthService::release`].
    Held(u16, &'static str),
}

type Decide = dyn Fn(&Seen) -> Reply + Send + Sync;

/// The HTTP auth service: records every request and answers as `decide` says. Its thread
/// ends with the test process.
struct AuthService {
    addr: SocketAddr,
    scheme: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Opened by [`AuthService::release`]: the [`Reply::Held`] answers go.
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AuthService {
    fn start(decide: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> AuthService {
        AuthService::start_with(decide, None)
    }

    /// The service over TLS with `tls` (HTTPS) when given.
    fn start_with(
        decide: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> AuthService {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let decide: Arc<Decide> = Arc::new(decide);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the auth service");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let store = seen.clone();
        let gate = Arc::new(tokio::sync::watch::Sender::new(false));
        let opened = gate.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let handler = move |request: Request| {
                    let (store, decide, mut opened) = (store.clone(), decide.clone(), opened.subscribe());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                        let content_type = parts
                            .headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let mut params: BTreeMap<String, String> =
                            url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
                                .into_owned()
                                .collect();
                        if content_type.starts_with("application/json") {
                            let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
                            for (k, v) in json.as_object().expect("a JSON object") {
                                params.insert(k.clone(), v.as_str().expect("string values").to_owned());
                            }
                        } else {
                            params.extend(url::form_urlencoded::parse(&body).into_owned());
                        }
                        let seen = Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            content_type,
                            params,
                        };
                        let reply = decide(&seen);
                        store.lock().unwrap().push(seen);
                        match reply {
                            Reply::Status(status, body) => (StatusCode::from_u16(status).unwrap(), body),
                            Reply::Hang => std::future::pending().await,
                            Reply::Held(status, body) => {
                                let _ = opened.wait_for(|open| *open).await;
                                (StatusCode::from_u16(status).unwrap(), body)
                            }
                        }
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
        AuthService { addr, scheme, seen, gate }
    }

    /// Sends the [`Reply::Held`] answers, and from now on answers them at once.
    fn release(&self) {
        self.gate.send_replace(true);
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Every request to `path` so far, in the order they came.
    fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }

    /// Every request so far.
    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
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

/// Runs `openssl` with `args` in `dir`, failing the test clearly if it cannot.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed (apt-get install openssl; .ci/run does it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Makes in `dir` a test CA (`ca.pem`), a server certificate for 127.0.0.1 (`server.pem`,
/// `server.key`) and a client certificate (`client.pem`, `client.key`), both signed by the CA.
fn make_pki(dir: &std::path::Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test ca"]]
            .concat(),
    );
    for (name, usage) in [("server", "serverAuth\nsubjectAltName=IP:127.0.0.1"), ("client", "clientAuth")] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(dir, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]].concat());
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// A TLS server config with `dir`'s server certificate that requires a client certificate
/// signed by `dir`'s CA.
fn server_tls(dir: &std::path::Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let chain = vec![CertificateDer::from_pem_file(dir.join("server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// The usual service: `/mqtt/auth` allows password `good` (200), has no opinion on `ignore`
/// (200 `ignore`), denies `forbidden` with 403 and anything else with 401; `/mqtt/superuser`
/// says 200 for username `admin` only; `/mqtt/acl` allows topics under `allowed/`, denies
/// those under `denied/` (403), and has no opinion on the rest.
fn usual(seen: &Seen) -> Reply {
    match seen.path.as_str() {
        "/mqtt/auth" => match seen.param("password") {
            "good" => Reply::Status(200, "ok"),
            "ignore" => Reply::Status(200, "ignore"),
            "forbidden" => Reply::Status(403, ""),
            _ => Reply::Status(401, ""),
        },
        "/mqtt/superuser" if seen.param("username") == "admin" => Reply::Status(200, ""),
        "/mqtt/superuser" => Reply::Status(403, ""),
        "/mqtt/acl" => match seen.param("topic") {
            t if t.starts_with("allowed/") => Reply::Status(200, ""),
            t if t.starts_with("denied/") => Reply::Status(403, ""),
            _ => Reply::Status(200, "ignore"),
        },
        _ => Reply::Status(404, ""),
    }
}

/// A data directory running only `emqx_auth_http`, with `toml` as its `broker.toml`.
fn broker_with(toml: &str, env: &[(&str, &str)]) -> (DataDir, Broker) {
    let dir = DataDir::with_plugins("{emqx_auth_http, true}.\n");
    dir.write("broker.toml", toml);
    let broker = Broker::start(&dir, env);
    broker.wait_for_log("auth_req");
    (dir, broker)
}

/// An MQTT 3.1.1 CONNECT with `username` / `password` (no credentials when `None`); the
/// connection and its CONNACK.
fn connect4(broker: &Broker, id: &str, login: Option<(&str, &str)>) -> (Raw<V4>, rumqttc::ConnAck) {
    let mut connect = rumqttc::Connect::new(id);
    connect.keep_alive = 60;
    if let Some((user, pass)) = login {
        connect.set_login(user, pass);
    }
    Raw::<V4>::connect(broker.addr, &rumqttc::Packet::Connect(connect))
}

/// An MQTT 5 CONNECT with `username` / `password`; the connection and its CONNACK.
fn connect5(broker: &Broker, id: &str, user: &str, pass: &str) -> (Raw<V5>, v5::ConnAck) {
    Raw::<V5>::connect(broker.addr, &login5(id, user, pass))
}

fn login5(id: &str, user: &str, pass: &str) -> v5::Packet {
    let connect = v5::Connect { keep_alive: 60, client_id: id.to_owned(), clean_start: true, properties: None };
    v5::Packet::Connect(connect, None, Some(v5::Login::new(user, pass)))
}

/// A connected MQTT 5 client with credentials.
fn client5(broker: &Broker, id: &str, user: &str, pass: &str) -> C5 {
    C5::connect_packet(broker, &login5(id, user, pass)).0
}

/// Asserts the CONNECT was refused with a failure code and the connection closed
/// (MQTT-3.2.2-5 (3.1.1): a non-zero return code, then the connection is closed).
fn assert_refused4((mut raw, ack): (Raw<V4>, rumqttc::ConnAck), what: &str) {
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::BadUserNamePassword, "{what}: refused with 0x04");
    assert!(raw.until_closed().is_empty(), "{what}: closed after the CONNACK");
}

/// `[auth_http]` with the service's three URLs (an empty one turns that request off).
fn config(service: &AuthService, auth: bool, superuser: bool, acl: bool, extra: &str) -> String {
    let url = |on: bool, path: &str| if on { service.url(path) } else { String::new() };
    format!(
        "[auth_http]\n{extra}\n\
         [auth_http.auth_req]\nurl = \"{}\"\n\
         [auth_http.super_req]\nurl = \"{}\"\n\
         [auth_http.acl_req]\nurl = \"{}\"\n",
        url(auth, "/mqtt/auth"),
        url(superuser, "/mqtt/superuser"),
        url(acl, "/mqtt/acl"),
    )
}

/// `auth_req` decides who connects: 200 allows, 401 and 403 refuse (MQTT-3.2.2-5 (3.1.1);
/// MQTT-3.1.4-2 (5): a failed authentication closes the connection), 200 `ignore` leaves it
/// to the broker (which today lets the client in: no other plugin objects). The params
/// arrive form-encoded in a POST, EMQX's default, with the placeholders filled in: client
/// id, username, password, peer IP, listener port, protocol; a client without credentials
/// sends `undefined`, as EMQX's does.
#[test]
fn auth_req_decides_who_connects_and_gets_the_clients_values() {
    let service = AuthService::start(usual);
    let toml = config(&service, true, false, false, "").replace(
        "[auth_http.auth_req]\n",
        "[auth_http.auth_req]\nparams = \"clientid=%c,username=%u,password=%P,ipaddr=%a,sockport=%p,proto=%r,fixed=yes\"\n",
    );
    let (_dir, broker) = broker_with(&toml, &[]);

    let (mut raw, ack) = connect4(&broker, "c-good", Some(("alice", "good")));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "200 allows");
    raw.ping("an allowed client");
    let seen = service.requests("/mqtt/auth");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let request = &seen[0];
    assert_eq!((request.method.as_str(), request.content_type.as_str()), ("POST", "application/x-www-form-urlencoded"));
    let expected = [
        ("clientid", "c-good".to_owned()),
        ("username", "alice".to_owned()),
        ("password", "good".to_owned()),
        ("ipaddr", "127.0.0.1".to_owned()),
        ("sockport", broker.port().to_string()),
        ("proto", "mqtt".to_owned()),
        ("fixed", "yes".to_owned()),
    ];
    let expected: BTreeMap<String, String> = expected.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(request.params, expected);

    assert_refused4(connect4(&broker, "c-bad", Some(("alice", "wrong"))), "401");
    let (mut raw5, ack5) = connect5(&broker, "c-forbidden", "mallory", "forbidden");
    assert_eq!(ack5.code, v5::ConnectReturnCode::BadUserNamePassword, "403 refuses an MQTT 5 client with 0x86");
    assert!(raw5.until_closed().is_empty(), "closed after the CONNACK (MQTT-3.1.4-2 (5))");

    // 200 `ignore`: no opinion; with no other auth plugin the broker decides, and lets the
    // client in (as EMQX's `allow_anonymous = true`, its default, does).
    let (mut raw, ack) = connect4(&broker, "c-ignore", Some(("carol", "ignore")));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "ignore leaves it to the broker");
    raw.ping("an ignored client");

    // No credentials: `undefined`, which this service refuses.
    assert_refused4(connect4(&broker, "c-anon", None), "no credentials");
    let anon = service.requests("/mqtt/auth").into_iter().find(|s| s.param("clientid") == "c-anon").unwrap();
    assert_eq!((anon.param("username"), anon.param("password")), ("undefined", "undefined"));
}

/// `super_req` is asked after a successful `auth_req` only (EMQX 4.3's `check/3`), here by
/// GET with its params in the query string. A superuser's subscriptions and publishes skip
/// the ACL (EMQX): `acl_req` is never asked about them, and `denied/` is theirs.
#[test]
fn super_req_is_asked_after_a_successful_auth_only() {
    let service = AuthService::start(usual);
    let toml = config(&service, true, true, true, "").replace(
        "[auth_http.super_req]\n",
        "[auth_http.super_req]\nmethod = \"get\"\nparams = \"clientid=%c,username=%u,ip=%a\"\n",
    );
    let (dir, broker) = broker_with(&toml, &[]);

    for (id, user, pass) in [("c-admin", "admin", "good"), ("c-bob", "bob", "good")] {
        let (mut raw, ack) = connect4(&broker, id, Some((user, pass)));
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{id}");
        raw.ping(id);
    }
    assert_refused4(connect4(&broker, "c-eve", Some(("eve", "wrong"))), "401");
    let (mut raw, ack) = connect4(&broker, "c-carol", Some(("carol", "ignore")));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    raw.ping("c-carol");

    let paths: Vec<(String, String)> =
        service.all().iter().map(|s| (s.path.clone(), s.param("clientid").to_owned())).collect();
    let pair = |p: &str, c: &str| (p.to_owned(), c.to_owned());
    assert_eq!(
        paths,
        vec![
            pair("/mqtt/auth", "c-admin"),
            pair("/mqtt/superuser", "c-admin"),
            pair("/mqtt/auth", "c-bob"),
            pair("/mqtt/superuser", "c-bob"),
            pair("/mqtt/auth", "c-eve"),
            pair("/mqtt/auth", "c-carol"),
        ],
        "super_req follows each allowed auth_req, never a denied or ignored one"
    );
    let admin = &service.requests("/mqtt/superuser")[0];
    assert_eq!((admin.method.as_str(), admin.content_type.as_str()), ("GET", ""), "a GET has no body");
    assert_eq!((admin.param("username"), admin.param("ip")), ("admin", "127.0.0.1"));
    let status = dir.ctl(&["auth_http", "status"]).ok();
    assert!(status.contains("answers: allow=1 superuser=1 deny=1 ignore=1"), "{status}");

    // The superuser bypasses the ACL; bob, allowed but not a superuser, does not.
    let mut admin = client5(&broker, "c-admin5", "admin", "good");
    admin.subscribe("denied/#", QoS::AtLeastOnce);
    admin.publish("denied/by-admin", QoS::AtLeastOnce, "mine");
    let got = admin.next_publish();
    assert_eq!(e2e::raw::topic(&got), "denied/by-admin");
    let mut bob = client5(&broker, "c-bob5", "bob", "good");
    let codes = bob.subscribe_with(vec![v5::Filter::new("denied/#", QoS::AtLeastOnce)], None);
    assert_eq!(codes, vec![v5::SubscribeReasonCode::NotAuthorized]);
    let acl: Vec<String> = service.requests("/mqtt/acl").iter().map(|s| s.param("clientid").to_owned()).collect();
    assert_eq!(acl, vec!["c-bob5".to_owned()], "only bob's subscription was asked about");
}

/// `acl_req` decides publishes and subscribes, its params as a JSON object (`content-type`
/// `application/json`): access 1 for subscribe and 2 for publish, the topic, the client.
/// A denied subscription gets a failure in the SUBACK (MQTT 5: 0x87, MQTT-3.8.4-6 (5);
/// 3.1.1: 0x80, MQTT-3.9.3-2), a denied publish is acknowledged (MQTT 5: PUBACK 0x87;
/// MQTT-3.3.5-2 (3.1.1): acknowledged normally) and never delivered. `ignore` leaves it to
/// the broker (allowed); a username starting with `$` is never asked about (EMQX 4.3).
#[test]
fn acl_req_allows_and_denies_publish_and_subscribe() {
    let service = AuthService::start(usual);
    let toml = config(&service, false, false, true, "").replace(
        "[auth_http.acl_req]\n",
        "[auth_http.acl_req]\nheaders = { \"content-type\" = \"application/json\" }\n",
    );
    let (_dir, broker) = broker_with(&toml, &[]);

    let mut sub = client5(&broker, "acl-sub", "sam", "x");
    let granted = v5::SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(
        sub.subscribe_with(
            vec![
                v5::Filter::new("allowed/#", QoS::AtLeastOnce),
                v5::Filter::new("denied/#", QoS::AtLeastOnce),
                v5::Filter::new("other/#", QoS::AtLeastOnce),
            ],
            None
        ),
        vec![granted, v5::SubscribeReasonCode::NotAuthorized, granted],
        "200 grants, 403 refuses with 0x87, ignore leaves it to the broker"
    );
    let asked = service.requests("/mqtt/acl");
    let first = &asked[0];
    assert_eq!(first.content_type, "application/json");
    assert_eq!(
        (first.param("access"), first.param("topic"), first.param("username"), first.param("clientid")),
        ("1", "allowed/#", "sam", "acl-sub")
    );
    assert_eq!((first.param("ipaddr"), first.param("mountpoint")), ("127.0.0.1", "undefined"));

    // A `$` username is never asked about: its subscription to `denied/#` is granted.
    let mut internal = client5(&broker, "acl-internal", "$bridge", "x");
    internal.subscribe("denied/#", QoS::AtLeastOnce);

    let mut publisher = client5(&broker, "acl-pub", "paul", "x");
    match publisher.publish_retain("denied/t", QoS::AtLeastOnce, false, "no") {
        Some(v5::Packet::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized, "PUBACK 0x87"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let publish = service.requests("/mqtt/acl").into_iter().find(|s| s.param("topic") == "denied/t").unwrap();
    assert_eq!((publish.param("access"), publish.param("clientid")), ("2", "acl-pub"));
    publisher.publish("allowed/t", QoS::AtLeastOnce, "yes");
    let got = sub.next_publish();
    assert_eq!((e2e::raw::topic(&got), e2e::raw::payload(&got)), ("allowed/t".to_owned(), "yes".to_owned()));

    // The `$` client publishes to `denied/` unchecked; that is the first message it gets, so
    // the denied `denied/t` was never delivered.
    internal.publish("denied/internal", QoS::AtLeastOnce, "internal");
    assert_eq!(e2e::raw::topic(&internal.next_publish()), "denied/internal");
    assert!(service.all().iter().all(|s| s.param("username") != "$bridge"), "never asked about $bridge");

    // MQTT 3.1.1: a refused subscription is 0x80 in the SUBACK (MQTT-3.9.3-2).
    let (mut raw, ack) = connect4(&broker, "acl-v4", Some(("vic", "x")));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    let mut subscribe = rumqttc::Subscribe::new("denied/x", rumqttc::QoS::AtLeastOnce);
    subscribe.pkid = 7;
    raw.send(&rumqttc::Packet::Subscribe(subscribe));
    match raw.recv() {
        rumqttc::Packet::SubAck(ack) => {
            assert_eq!((ack.pkid, ack.return_codes), (7, vec![rumqttc::SubscribeReasonCode::Failure]))
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The answer cache: within `cache_ttl`, repeated CONNECTs with the same credentials (allowed
/// or denied) and the same ACL question from several clients ask the service once; with
/// `cache_ttl = 0` every one is asked. `ctl auth_http cache clean` forgets the answers.
#[test]
fn answers_are_cached_within_the_ttl() {
    for (ttl, per_question) in [("1h", 1), ("0s", 4)] {
        let service = AuthService::start(usual);
        let toml = config(&service, true, true, true, &format!("cache_ttl = \"{ttl}\"\n"))
            .replace("[auth_http.acl_req]\n", "[auth_http.acl_req]\nparams = \"access=%A,username=%u,topic=%t\"\n");
        let (dir, broker) = broker_with(&toml, &[]);
        let asked = |path: &str, id: &str| service.requests(path).iter().filter(|s| s.param("clientid") == id).count();

        for _ in 0..4 {
            let (mut raw, ack) = connect4(&broker, "same", Some(("admin", "good")));
            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
            raw.disconnect();
            assert_refused4(connect4(&broker, "same-bad", Some(("admin", "wrong"))), "401");
            // A new connection each time (the broker's own ACL cache is per connection).
            let mut client = client5(&broker, "pub", "team", "good");
            client.publish("allowed/shared", QoS::AtLeastOnce, "x");
            client.disconnect();
        }
        for (path, id) in [("/mqtt/auth", "same"), ("/mqtt/auth", "same-bad"), ("/mqtt/superuser", "same")] {
            assert_eq!(asked(path, id), per_question, "ttl {ttl}: {path} for {id}");
        }
        assert_eq!(service.requests("/mqtt/acl").len(), per_question, "ttl {ttl}: acl_req");

        // Six questions (auth: same, same-bad, pub; super: same, pub; acl), each asked four
        // times.
        let status = dir.ctl(&["auth_http", "status"]).ok();
        let hits = 6 * (4 - per_question);
        assert!(status.contains(&format!("cache hits: {hits}")), "ttl {ttl}: {status}");
        let cleaned = dir.ctl(&["auth_http", "cache", "clean"]).ok();
        let kept = if per_question == 1 { 6 } else { 0 };
        assert_eq!(cleaned.trim(), format!("Cleaned {kept} cached answers"), "ttl {ttl}");
        let before = asked("/mqtt/auth", "same");
        let (mut raw, _) = connect4(&broker, "same", Some(("admin", "good")));
        raw.disconnect();
        assert_eq!(asked("/mqtt/auth", "same"), before + 1, "ttl {ttl}: asked again after cache clean");
    }
}

/// A dead service (a closed port): `auth_req` refuses the client by default (EMQX 4.3:
/// `server_unavailable`), or has no opinion with `deny_on_error = false`; `acl_req` has no
/// opinion by default (EMQX logs and ignores), or denies with `deny_on_error = true`. The
/// CONNACK always comes, and the failure is logged once per burst, not once per request.
#[test]
fn a_dead_service_denies_or_is_ignored_as_configured() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dead = |path: &str| format!("http://{closed}{path}");
    let base = format!(
        "[auth_http]\ntimeout = \"3s\"\n[auth_http.auth_req]\nurl = \"{}\"\n[auth_http.super_req]\nurl = \"\"\n\
         [auth_http.acl_req]\nurl = \"{}\"\n",
        dead("/mqtt/auth"),
        dead("/mqtt/acl")
    );

    // The defaults: auth denies.
    let (dir, broker) = broker_with(&base, &[]);
    for i in 0..3 {
        assert_refused4(connect4(&broker, &format!("dead-{i}"), Some(("u", "p"))), "a dead auth service");
    }
    let failed = |b: &Broker, what: &str| {
        b.logs().iter().filter(|l| l.contains(&format!("{what} http://{closed}")) && l.contains(" failed: ")).count()
    };
    // The broker logs each refusal after the plugin answered it.
    wait_until("three refusals logged", || {
        let refused = |l: &&String| l.contains("connection refused") && l.contains("client_id=\"dead-");
        (broker.logs().iter().filter(refused).count() == 3).then_some(())
    });
    assert_eq!(failed(&broker, "auth_req"), 1, "one line for the burst of three");
    let status = dir.ctl(&["auth_http", "status"]).ok();
    assert!(status.contains("(deny on error) failing, 3 failed request(s)"), "{status}");
    drop(broker);

    // Switched: auth has no opinion (the broker lets the client in, as EMQX's default
    // `allow_anonymous = true` does), the ACL denies.
    let env =
        [("BROKER_AUTH_HTTP__AUTH_REQ__DENY_ON_ERROR", "false"), ("BROKER_AUTH_HTTP__ACL_REQ__DENY_ON_ERROR", "true")];
    let (dir, broker) = broker_with(&base, &env);
    let mut client = client5(&broker, "dead-acl", "u", "p");
    match client.publish_retain("t/1", QoS::AtLeastOnce, false, "x") {
        Some(v5::Packet::PubAck(ack)) => assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(
        client.subscribe_with(vec![v5::Filter::new("t/#", QoS::AtMostOnce)], None),
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    wait_until("the ACL failure logged", || (failed(&broker, "acl_req") > 0).then_some(()));
    let status = dir.ctl(&["auth_http", "status"]).ok();
    assert!(status.contains("acl_req: POST http://"), "{status}");
    assert!(status.contains("(deny on error) failing, 2 failed request(s)"), "{status}");
    assert_eq!(failed(&broker, "acl_req"), 1, "the ACL failures logged once");
}

/// Shipped listed but not started, as EMQX ships it; `ctl plugins load` starts it (with its
/// `[auth_http]` table) and `unload` stops it, while the broker serves.
#[test]
fn shipped_listed_not_started_and_loaded_by_ctl() {
    let shipped = include_str!("../../data/loaded_plugins");
    assert!(shipped.lines().any(|l| l == "{emqx_auth_http, false}."), "{shipped}");

    let service = AuthService::start(usual);
    let dir = DataDir::with_plugins("{emqx_auth_http, false}.\n");
    dir.write("broker.toml", &config(&service, true, false, false, ""));
    let broker = Broker::start(&dir, &[]);
    let list = dir.ctl(&["plugins", "list"]).ok();
    let line = "Plugin(emqx_auth_http, description=EMQ X Authentication/ACL with HTTP API, active=false)";
    assert!(list.lines().any(|l| l == line), "{list}");
    let (mut raw, ack) = connect4(&broker, "before", Some(("eve", "wrong")));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "not started: nobody asks the service");
    raw.disconnect();

    dir.ctl(&["plugins", "load", "emqx_auth_http"]).ok();
    assert_refused4(connect4(&broker, "loaded", Some(("eve", "wrong"))), "loaded: 401 refuses");
    let (mut raw, ack) = connect4(&broker, "loaded-ok", Some(("alice", "good")));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    raw.disconnect();

    dir.ctl(&["plugins", "unload", "emqx_auth_http"]).ok();
    let (mut raw, ack) = connect4(&broker, "after", Some(("eve", "wrong")));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "unloaded: nobody asks the service");
    raw.disconnect();
    assert_eq!(service.requests("/mqtt/auth").len(), 2, "asked only while loaded");
}

/// A wrong `[auth_http]` table refuses the load with the key and the problem named; the
/// broker keeps serving, without the plugin.
#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let dir = DataDir::with_plugins("{emqx_auth_http, false}.\n");
    for (toml, expected) in [
        (
            "[auth_http.auth_req]\nurl = \"ftp://127.0.0.1/auth\"\n",
            "auth_http.auth_req.url: the scheme must be http or https, not ftp",
        ),
        ("[auth_http.acl_req]\nparams = \"topic=%t,who\"\n", "auth_http.acl_req.params: \"who\" is not KEY=VALUE"),
        ("[auth_http]\ntimeout = \"soon\"\n", "auth_http.timeout: invalid duration \"soon\""),
        ("[auth_http.super_req]\nmethod = \"delete\"\n", "auth_http.super_req.method: unknown variant `delete`"),
    ] {
        dir.write("broker.toml", toml);
        let broker = Broker::start(&dir, &[]);
        let error = dir.ctl(&["plugins", "load", "emqx_auth_http"]).err();
        assert!(error.contains(expected), "{toml}: {error}");
        let (mut raw, ack) = connect4(&broker, "still-serving", None);
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{toml}");
        raw.disconnect();
    }
}

/// An `https://` service with a private CA that asks for a client certificate: with EMQX's
/// `ssl.cacertfile`, `ssl.certfile` and `ssl.keyfile` (paths relative to the data directory)
/// the plugin trusts the service and shows its certificate; without them the service's
/// certificate is not trusted, so no request reaches it and the client is refused
/// (`deny_on_error`).
#[test]
fn https_with_a_private_ca_and_a_client_certificate() {
    let dir = DataDir::with_plugins("{emqx_auth_http, true}.\n");
    make_pki(dir.path());
    let service = AuthService::start_with(usual, Some(server_tls(dir.path())));
    let toml = config(&service, true, false, false, "")
        + "[auth_http.ssl]\ncacertfile = \"ca.pem\"\ncertfile = \"client.pem\"\nkeyfile = \"client.key\"\n";
    dir.write("broker.toml", &toml);
    let broker = Broker::start(&dir, &[]);
    let (mut raw, ack) = connect4(&broker, "tls-good", Some(("alice", "good")));
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "200 over https");
    raw.disconnect();
    assert_refused4(connect4(&broker, "tls-bad", Some(("alice", "wrong"))), "401 over https");
    assert_eq!(service.requests("/mqtt/auth").len(), 2);
    drop(broker);

    dir.write("broker.toml", &config(&service, true, false, false, ""));
    let broker = Broker::start(&dir, &[]);
    assert_refused4(connect4(&broker, "tls-untrusted", Some(("alice", "good"))), "an untrusted service");
    let line = broker.wait_for_log(&format!("auth_req {} failed", service.url("/mqtt/auth")));
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert_eq!(service.requests("/mqtt/auth").len(), 2, "nothing reached the service");
}

/// A slow service (it never answers): the client's CONNACK comes once `timeout` has passed,
/// refusing it (`auth_req.deny_on_error`, EMQX's default). Meanwhile another client on the
/// broker still publishes and receives: the waiting hook holds one of the broker's threads,
/// not the broker.
#[test]
fn a_slow_service_answers_after_the_timeout_and_others_keep_going() {
    slow_service_with(1);
}

/// As above with as many slow CONNECTs at once as the broker has async workers (two on the
/// project's 2-core machine): the host runs `client.authenticate` on its blocking pool, so
/// the waiting hooks hold none of the workers and the other client goes on. (With the hook
/// run on the workers, this failed: every worker waited for the service.)
#[test]
fn slow_connects_on_every_worker_do_not_stall_other_clients() {
    slow_service_with(std::thread::available_parallelism().map_or(2, |n| n.get()));
}

fn slow_service_with(slow_clients: usize) {
    let service = AuthService::start(|seen| match seen.param("username") {
        "slow" => Reply::Hang,
        _ => usual(seen),
    });
    let toml = config(&service, true, false, false, "timeout = \"3s\"\n");
    let (dir, broker) = broker_with(&toml, &[]);
    let mut other = client5(&broker, "other", "olga", "good");
    other.subscribe("chat", QoS::AtLeastOnce);

    let waiting: Vec<_> = (0..slow_clients)
        .map(|i| {
            let addr = broker.addr;
            std::thread::spawn(move || {
                let mut connect = rumqttc::Connect::new(format!("slow-{i}"));
                connect.set_login("slow", "good");
                Raw::<V4>::connect(addr, &rumqttc::Packet::Connect(connect)).1
            })
        })
        .collect();
    wait_until("the slow requests at the service", || {
        let slow = service.requests("/mqtt/auth").iter().filter(|s| s.param("username") == "slow").count();
        (slow == slow_clients).then_some(())
    });
    let started = std::time::Instant::now();
    other.publish("chat", QoS::AtLeastOnce, "still here");
    assert_eq!(e2e::raw::payload(&other.next_publish()), "still here");
    // A figure for the reader (`--nocapture`), not an assertion.
    eprintln!("{slow_clients} slow CONNECT(s): the other client's round trip took {:?}", started.elapsed());
    // The plugin counts a timed-out request before its hook returns: none counted yet means
    // the other client was served while every slow request was still waiting.
    let status = dir.ctl(&["auth_http", "status"]).ok();
    assert!(status.contains("/mqtt/auth (deny on error) ok, 0 failed request(s)"), "served during the wait: {status}");

    for waiting in waiting {
        let ack = waiting.join().unwrap();
        assert_ne!(ack.code, rumqttc::ConnectReturnCode::Success, "refused after the timeout");
    }
    let line = broker.wait_for_log(&format!("auth_req {} failed", service.url("/mqtt/auth")));
    assert!(line.contains("no answer within 3s (timeout)"), "{line}");
}

/// `acl_req` held by the service (it withholds its answers until the test releases them):
/// `emqx_auth_http` declares `client.check_acl` blocking, so the broker asks it off its
/// network threads and only the clients it is about wait. While 20 clients wait (10 PUBLISH,
/// 10 SUBSCRIBE), an unrelated publisher and subscriber complete QoS 1 exchanges and
/// `broker ctl plugins list` answers. Once released, each waiting client gets its verdict
/// (PUBACK 0x00 or 0x87, SUBACK granted or 0x87: MQTT 5 §3.4.2.1, §3.9.3), and the packet it
/// sent right after the held one is answered after it: PUBACKs in the order of their
/// PUBLISHes (MQTT-4.6.0-2), the PINGRESP after the SUBACK.
#[test]
fn clients_waiting_on_a_held_acl_service_hold_no_one_else() {
    const WAITING: usize = 20;
    let service = AuthService::start(|seen| match (seen.path.as_str(), seen.param("topic")) {
        ("/mqtt/acl", topic) if topic.starts_with("held/allowed/") => Reply::Held(200, ""),
        ("/mqtt/acl", topic) if topic.starts_with("held/denied/") => Reply::Held(403, ""),
        _ => usual(seen),
    });
    // No timeout gives up on the held requests while the test runs.
    let toml = config(&service, false, false, true, "timeout = \"60s\"\n");
    let (dir, broker) = broker_with(&toml, &[]);
    let mut sub = client5(&broker, "pair-sub", "sue", "x");
    sub.subscribe("chat", QoS::AtLeastOnce);
    let mut publisher = client5(&broker, "pair-pub", "pat", "x");

    let waiting: Vec<_> = (0..WAITING)
        .map(|i| {
            let mut client = client5(&broker, &format!("held-{i}"), &format!("user-{i}"), "x");
            let verdict = if i % 2 == 0 { "allowed" } else { "denied" };
            let topic = format!("held/{verdict}/{i}");
            if i % 4 < 2 {
                let mut held = v5::Publish::new(topic, QoS::AtLeastOnce, b"held".to_vec(), None);
                held.pkid = 1;
                let mut after = v5::Publish::new(format!("after/{i}"), QoS::AtLeastOnce, b"after".to_vec(), None);
                after.pkid = 2;
                client.raw.send(&v5::Packet::Publish(held));
                client.raw.send(&v5::Packet::Publish(after));
            } else {
                let filters = vec![v5::Filter::new(topic, QoS::AtLeastOnce)];
                client.raw.send(&v5::Packet::Subscribe(v5::Subscribe { pkid: 1, filters, properties: None }));
                client.raw.send(&v5::Packet::PingReq(v5::PingReq));
            }
            std::thread::spawn(move || [client.raw.recv(), client.raw.recv()])
        })
        .collect();
    wait_until("every held question at the service", || {
        let held = service.all().iter().filter(|s| s.param("topic").starts_with("held/")).count();
        (held == WAITING).then_some(())
    });

    for n in 0..5 {
        publisher.publish("chat", QoS::AtLeastOnce, &format!("exchange {n}"));
        assert_eq!(e2e::raw::payload(&sub.next_publish()), format!("exchange {n}"));
    }
    let plugins = dir.ctl(&["plugins", "list"]).ok();
    assert!(plugins.contains("emqx_auth_http"), "{plugins}");
    assert!(waiting.iter().all(|w| !w.is_finished()), "no verdict can have come before the release");

    service.release();
    for (i, waiting) in waiting.into_iter().enumerate() {
        let answers = waiting.join().unwrap();
        let allowed = i % 2 == 0;
        match (i % 4 < 2, &answers) {
            (true, [v5::Packet::PubAck(held), v5::Packet::PubAck(after)]) => {
                let expected =
                    if allowed { v5::PubAckReason::NoMatchingSubscribers } else { v5::PubAckReason::NotAuthorized };
                assert_eq!((held.pkid, held.reason), (1, expected), "held-{i}");
                assert_eq!((after.pkid, after.reason), (2, v5::PubAckReason::NoMatchingSubscribers), "held-{i}");
            }
            (false, [v5::Packet::SubAck(ack), v5::Packet::PingResp(_)]) => {
                let expected = if allowed {
                    v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)
                } else {
                    v5::SubscribeReasonCode::NotAuthorized
                };
                assert_eq!((ack.pkid, ack.return_codes.as_slice()), (1, &[expected][..]), "held-{i}");
            }
            _ => panic!("held-{i}: unexpected answers {answers:?}"),
        }
    }
}

/// The counterpart, without a blocking plugin: `emqx_mod_acl_internal` does not declare
/// `client.check_acl` blocking, so the broker asks it inline, and a client's packets sent back
/// to back are answered in order with the ACL's verdicts: PUBACKs in the order of their
/// PUBLISHes (MQTT-4.6.0-2), 0x87 for a denied PUBLISH (MQTT 5 §3.4.2.1) and a denied filter
/// (§3.9.3), then the SUBACK granting the allowed one and the PINGRESP.
#[test]
fn a_plugin_not_declared_blocking_answers_inline_and_in_order() {
    let dir = DataDir::with_plugins("{emqx_mod_acl_internal, true}.\n");
    dir.write("acl.conf", "{deny, all, pubsub, [\"denied/#\"]}.\n{allow, all}.\n");
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("2 rules loaded from");
    let mut client = client5(&broker, "inline", "ivy", "x");
    let publish = |topic: &str, pkid: u16| {
        let mut publish = v5::Publish::new(topic, QoS::AtLeastOnce, b"p".to_vec(), None);
        publish.pkid = pkid;
        v5::Packet::Publish(publish)
    };
    let subscribe = |filter: &str, pkid: u16| {
        let filters = vec![v5::Filter::new(filter, QoS::AtLeastOnce)];
        v5::Packet::Subscribe(v5::Subscribe { pkid, filters, properties: None })
    };
    for packet in [
        publish("denied/1", 1),
        publish("allowed/1", 2),
        subscribe("denied/#", 3),
        subscribe("allowed/#", 4),
        v5::Packet::PingReq(v5::PingReq),
    ] {
        client.raw.send(&packet);
    }
    match client.raw.recv() {
        v5::Packet::PubAck(ack) => assert_eq!((ack.pkid, ack.reason), (1, v5::PubAckReason::NotAuthorized)),
        other => panic!("expected PUBACK 1, got {other:?}"),
    }
    match client.raw.recv() {
        v5::Packet::PubAck(ack) => assert_eq!((ack.pkid, ack.reason), (2, v5::PubAckReason::NoMatchingSubscribers)),
        other => panic!("expected PUBACK 2, got {other:?}"),
    }
    match client.raw.recv() {
        v5::Packet::SubAck(ack) => {
            assert_eq!((ack.pkid, ack.return_codes), (3, vec![v5::SubscribeReasonCode::NotAuthorized]))
        }
        other => panic!("expected SUBACK 3, got {other:?}"),
    }
    match client.raw.recv() {
        v5::Packet::SubAck(ack) => {
            assert_eq!((ack.pkid, ack.return_codes), (4, vec![v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)]))
        }
        other => panic!("expected SUBACK 4, got {other:?}"),
    }
    assert!(matches!(client.raw.recv(), v5::Packet::PingResp(_)), "PINGRESP last");
}
