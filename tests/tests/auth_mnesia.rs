//! Authentication end to end: `emqx_auth_mnesia` (logins by `broker ctl users|clientid` and
//! the management API, each password hash), the core's `allow_anonymous`, CONNACK codes,
//! superusers and the ACL, the brute-force delay and bans, `client.connack`, a slow
//! authentication plugin, and passwords kept out of files and logs. Real clients: rumqttc,
//! raw MQTT 3.1.1 / 5 connections over rumqttc's codec, `mosquitto_pub -u -P`.

use std::time::Instant;

use e2e::raw::{connect4, connect5, v5, Raw, V4, V5};
use e2e::{mosquitto, options, recorded_events, wait_until, Broker, Client, DataDir, ManagementApi};
use reqwest::{Method, StatusCode};
use rumqttc::{ConnectReturnCode, Event, Packet, QoS, SubscribeReasonCode};
use serde_json::json;

const PASSWORD: &str = "correct-horse-42";
const WRONG: &str = "wrong-battery-17";

/// An MQTT 3.1.1 CONNECT's answer.
fn connack4(broker: &Broker, id: &str, login: Option<(&str, &str)>) -> ConnectReturnCode {
    let mut packet = connect4(id, true);
    if let (rumqttc::Packet::Connect(connect), Some((user, password))) = (&mut packet, login) {
        connect.login = Some(rumqttc::Login::new(user, password));
    }
    let (_raw, ack) = Raw::<V4>::connect(broker.addr, &packet);
    ack.code
}

/// An MQTT 5 CONNECT's answer.
fn connack5(broker: &Broker, id: &str, login: Option<(&str, &str)>) -> v5::ConnectReturnCode {
    let packet = match connect5(id, true, None) {
        v5::Packet::Connect(connect, will, _) => v5::Packet::Connect(
            connect,
            will,
            login.map(|(u, p)| v5::Login { username: u.to_owned(), password: p.to_owned() }),
        ),
        other => other,
    };
    let (_raw, ack) = Raw::<V5>::connect(broker.addr, &packet);
    ack.code
}

/// `mosquitto_pub -u USER -P PASSWORD` at protocol `version` (`mqttv311`, `mqttv5`): whether
/// it published, and what it printed.
fn mosquitto_pub(broker: &Broker, version: &str, login: Option<(&str, &str)>) -> (bool, String) {
    let mut command = mosquitto("mosquitto_pub");
    command.args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-V", version, "-t", "auth/m", "-m", "x"]);
    if let Some((user, password)) = login {
        command.args(["-u", user, "-P", password]);
    }
    let out = command.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A rumqttc client with credentials; panics unless accepted.
async fn login(broker: &Broker, id: &str, user: &str, password: &str) -> Client {
    let mut opts = options(broker, id);
    opts.set_credentials(user, password);
    Client::connect_with(opts).await
}

/// A broker with `plugins`, no failure delay unless `env` says one, and `env`.
fn start(plugins: &str, env: &[(&str, &str)]) -> (DataDir, Broker) {
    let dir = DataDir::with_plugins(plugins);
    let mut all = vec![("BROKER_AUTH__FAILURE_DELAY", "0"), ("RUST_LOG", "debug")];
    all.extend_from_slice(env);
    let broker = Broker::start(&dir, &all);
    (dir, broker)
}

fn no_password_in_logs(broker: &Broker) {
    for secret in [PASSWORD, WRONG] {
        let leaked: Vec<String> = broker.logs().into_iter().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "the password {secret:?} is in the log: {leaked:?}");
    }
}

/// Each `password_hash` (sha256, pbkdf2, bcrypt) checks its users' passwords, for rumqttc,
/// raw 3.1.1 and 5 clients and `mosquitto_pub -u -P`; a user keeps the hash it was added with
/// when the setting changes. A wrong password is refused as bad credentials: MQTT 5 CONNACK
/// 0x86 Bad User Name or Password (§3.2.2.2), MQTT 3.1.1 return code 0x04 (§3.2.2.3), then
/// the connection is closed (MQTT-3.2.2-5, MQTT-3.1.4-2 (5)). The stored file has salted
/// hashes, no password, and no log line has a password (at debug level).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_password_hash_checks_passwords_and_keeps_its_users() {
    let dir = DataDir::with_plugins("{emqx_auth_mnesia, true}.\n");
    // Many wrong passwords on purpose: no ban (`auth.max_failures = 0`).
    let env = |hash: &'static str| {
        [
            ("BROKER_AUTH_MNESIA__PASSWORD_HASH", hash),
            ("BROKER_AUTH__FAILURE_DELAY", "0"),
            ("BROKER_AUTH__MAX_FAILURES", "0"),
            ("RUST_LOG", "debug"),
        ]
    };
    for hash in ["sha256", "pbkdf2", "bcrypt"] {
        let broker = Broker::start(&dir, &env(hash));
        broker.wait_for_log(&format!("new passwords hashed with {hash}"));
        let user = format!("user-{hash}");
        assert_eq!(dir.ctl(&["users", "add", &user, PASSWORD]).ok().trim(), "ok");
        // Kept in the broker's store: the login's key, its hash's algorithm.
        assert!(dir.store_contains(format!("username/{user}").as_bytes()), "{user} in the store");
        assert!(dir.store_contains(format!("\"algorithm\":\"{hash}\"").as_bytes()), "a {hash} hash in the store");
        no_password_in_logs(&broker);
        broker.stop();
    }

    // The last setting is bcrypt; the sha256 and pbkdf2 users still get in.
    let broker = Broker::start(&dir, &env("bcrypt"));
    for hash in ["sha256", "pbkdf2", "bcrypt"] {
        let user = format!("user-{hash}");
        login(&broker, &format!("rumqttc-{hash}"), &user, PASSWORD).await.disconnect().await;
        assert_eq!(connack4(&broker, "raw4", Some((&user, PASSWORD))), ConnectReturnCode::Success, "{hash}");
        assert_eq!(connack5(&broker, "raw5", Some((&user, PASSWORD))), v5::ConnectReturnCode::Success, "{hash}");
        assert_eq!(connack4(&broker, "raw4", Some((&user, WRONG))), ConnectReturnCode::BadUserNamePassword, "{hash}");
        assert_eq!(
            connack5(&broker, "raw5", Some((&user, WRONG))),
            v5::ConnectReturnCode::BadUserNamePassword,
            "{hash}"
        );
        for version in ["mqttv311", "mqttv5"] {
            let (published, err) = mosquitto_pub(&broker, version, Some((&user, PASSWORD)));
            assert!(published, "{hash} {version}: {err}");
            let (published, err) = mosquitto_pub(&broker, version, Some((&user, WRONG)));
            assert!(!published, "{hash} {version}: a wrong password published");
            assert!(err.to_lowercase().contains("bad user"), "{hash} {version}: {err}");
        }
    }

    assert!(!dir.store_contains(PASSWORD.as_bytes()), "plaintext password stored");
    assert!(!dir.file("emqx_auth_mnesia.json").exists(), "no file of its own any more");
    let line = broker.wait_for_log("bad username or password");
    for field in ["client_id=\"raw5\"", "username=\"user-bcrypt\"", "peer=\"127.0.0.1:"] {
        assert!(broker.logs().iter().any(|l| l.contains("connection refused") && l.contains(field)), "{field}: {line}");
    }
    no_password_in_logs(&broker);
}

/// A client no login matches is left to `allow_anonymous` (EMQX's `ignore`): with `false` it
/// is refused as not authorized, MQTT 5 CONNACK 0x87 (§3.2.2.2), 3.1.1 0x05 (§3.2.2.3),
/// with or without a user name; a known user still gets in. With the default `"loopback"`
/// an anonymous client on 127.0.0.1 gets in. `client.connack` fires with each code sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_clients_are_left_to_allow_anonymous() {
    let recorder = tempfile::NamedTempFile::new().unwrap();
    let file = recorder.path().to_str().unwrap().to_owned();
    let (dir, broker) = start(
        "{hook_recorder, true}.\n{emqx_auth_mnesia, true}.\n",
        &[("BROKER_ALLOW_ANONYMOUS", "false"), ("BROKER_HOOK_RECORDER__FILE", &file)],
    );
    dir.ctl(&["users", "add", "alice", PASSWORD]).ok();
    assert_eq!(connack5(&broker, "stranger5", Some(("nobody", PASSWORD))), v5::ConnectReturnCode::NotAuthorized);
    assert_eq!(connack4(&broker, "stranger4", Some(("nobody", PASSWORD))), ConnectReturnCode::NotAuthorized);
    assert_eq!(connack4(&broker, "anon4", None), ConnectReturnCode::NotAuthorized);
    assert_eq!(connack5(&broker, "alice5", Some(("alice", WRONG))), v5::ConnectReturnCode::BadUserNamePassword);
    let (published, err) = mosquitto_pub(&broker, "mqttv311", None);
    assert!(!published && err.to_lowercase().contains("not authori"), "{err}");
    login(&broker, "alice-ok", "alice", PASSWORD).await.disconnect().await;
    broker.wait_for_log("allow_anonymous");

    let events = wait_until("client.connack for every client", || {
        let events = recorded_events(std::path::Path::new(&file));
        let codes: Vec<(String, u64)> = events
            .iter()
            .filter(|e| e["hook"] == "client.connack")
            .map(|e| (e["client_id"].as_str().unwrap_or_default().to_owned(), e["return_code"].as_u64().unwrap_or(999)))
            .collect();
        (codes.len() >= 5).then_some(codes)
    });
    for expected in [("stranger5", 0x87), ("stranger4", 5), ("anon4", 5), ("alice5", 0x86), ("alice-ok", 0)] {
        assert!(events.contains(&(expected.0.to_owned(), expected.1)), "{expected:?} in {events:?}");
    }
    drop(broker);

    // The default, "loopback": a client nobody authenticated, on loopback, is admitted.
    let (_dir, broker) = start("{emqx_auth_mnesia, true}.\n", &[]);
    Client::connect(&broker, "local-anonymous").await.disconnect().await;
    assert_eq!(connack5(&broker, "local5", Some(("nobody", "x"))), v5::ConnectReturnCode::Success);
    let (published, err) = mosquitto_pub(&broker, "mqttv5", None);
    assert!(published, "{err}");
}

/// A superuser's publishes and subscriptions are never checked against the ACL (EMQX's
/// `is_superuser`): the rules in acl.conf deny `secret/#` to everyone, a normal user's
/// SUBSCRIBE to it fails (MQTT-3.9.3-2: 0x80), the superuser's is granted and gets its
/// message, and no `client.check_acl` fires for the superuser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_is_not_checked_against_the_acl() {
    let recorder = tempfile::NamedTempFile::new().unwrap();
    let file = recorder.path().to_str().unwrap().to_owned();
    let (dir, broker) = start(
        "{hook_recorder, true}.\n{emqx_auth_mnesia, true}.\n{emqx_mod_acl_internal, true}.\n",
        &[("BROKER_HOOK_RECORDER__FILE", &file)],
    );
    dir.write("acl.conf", "{deny, all, pubsub, [\"secret/#\"]}.\n{allow, all}.\n");
    dir.ctl(&["acl", "reload"]).ok();
    dir.ctl(&["users", "add", "root", PASSWORD, "is_superuser"]).ok();
    dir.ctl(&["users", "add", "alice", PASSWORD]).ok();

    let mut alice = login(&broker, "c-alice", "alice", PASSWORD).await;
    alice.client.subscribe("secret/x", QoS::AtLeastOnce).await.unwrap();
    match alice.wait_for("SUBACK", |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await {
        Event::Incoming(Packet::SubAck(ack)) => assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Failure]),
        _ => unreachable!(),
    }
    let mut root = login(&broker, "c-root", "root", PASSWORD).await;
    root.subscribe("secret/x", QoS::AtLeastOnce).await;
    root.publish_acked("secret/x", QoS::AtLeastOnce, "for root only").await;
    let got = root.receive(1).await;
    assert_eq!(got[0].payload, "for root only");

    let events = recorded_events(std::path::Path::new(&file));
    let acl =
        |client: &str| events.iter().filter(|e| e["hook"] == "client.check_acl" && e["client_id"] == client).count();
    assert!(acl("c-alice") >= 1, "alice was checked");
    assert_eq!(acl("c-root"), 0, "the superuser was never checked");
}

/// `broker ctl users|clientid add|update|del|list` (EMQX 4.3's outputs) take effect for the
/// next CONNECT, without a restart; a deleted login is refused (0x87: with
/// `allow_anonymous = false` nobody vouches for it any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_changes_take_effect_for_the_next_connect() {
    let (dir, broker) = start("{emqx_auth_mnesia, true}.\n", &[("BROKER_ALLOW_ANONYMOUS", "false")]);
    assert_eq!(connack5(&broker, "bob-1", Some(("bob", PASSWORD))), v5::ConnectReturnCode::NotAuthorized);
    assert_eq!(dir.ctl(&["users", "add", "bob", PASSWORD]).ok().trim(), "ok");
    assert_eq!(connack5(&broker, "bob-2", Some(("bob", PASSWORD))), v5::ConnectReturnCode::Success);
    assert!(dir.ctl(&["users", "add", "bob", "again"]).err().contains("already exists"));
    assert_eq!(dir.ctl(&["users", "update", "bob", WRONG]).ok().trim(), "ok");
    assert_eq!(connack5(&broker, "bob-3", Some(("bob", PASSWORD))), v5::ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack5(&broker, "bob-4", Some(("bob", WRONG))), v5::ConnectReturnCode::Success);
    dir.ctl(&["users", "add", "carol", PASSWORD]).ok();
    let list = dir.ctl(&["users", "list"]).ok();
    assert_eq!(list.lines().collect::<Vec<_>>(), ["carol", "bob"], "newest first, as EMQX");
    assert_eq!(dir.ctl(&["users", "del", "bob"]).ok().trim(), "ok");
    assert_eq!(connack5(&broker, "bob-5", Some(("bob", WRONG))), v5::ConnectReturnCode::NotAuthorized);
    assert!(dir.ctl(&["users", "del", "bob"]).err().contains("no username \"bob\""));
    assert!(dir.ctl(&["users", "add", "x"]).err().contains("usage: broker ctl users"));

    assert_eq!(dir.ctl(&["clientid", "add", "sensor-1", PASSWORD]).ok().trim(), "ok");
    assert_eq!(dir.ctl(&["clientid", "list"]).ok().trim(), "sensor-1");
    assert_eq!(connack4(&broker, "sensor-1", Some(("any", PASSWORD))), ConnectReturnCode::Success);
    assert_eq!(connack4(&broker, "sensor-1", Some(("any", WRONG))), ConnectReturnCode::BadUserNamePassword);
    dir.ctl(&["clientid", "del", "sensor-1"]).ok();
    assert_eq!(connack4(&broker, "sensor-1", Some(("any", PASSWORD))), ConnectReturnCode::NotAuthorized);
    assert!(!dir.store_contains(PASSWORD.as_bytes()));
}

/// A login added with `ctl` is in the store once `ctl` says `ok`: it survives `kill -9` of the
/// broker right after, as a change does, and a reload of the plugin rebuilds the logins it
/// checks from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_survive_kill_9_and_a_reload_rebuilds_them_from_the_store() {
    let env = [("BROKER_ALLOW_ANONYMOUS", "false"), ("BROKER_AUTH__FAILURE_DELAY", "0")];
    let (dir, broker) = start("{emqx_auth_mnesia, true}.\n", &env);
    assert_eq!(dir.ctl(&["users", "add", "dave", PASSWORD]).ok().trim(), "ok");
    assert_eq!(dir.ctl(&["clientid", "add", "meter-7", PASSWORD, "is_superuser"]).ok().trim(), "ok");
    let broker = broker.kill9_and_restart(&dir, &env);
    broker.wait_for_log("1 username and 1 clientid logins");
    assert_eq!(connack5(&broker, "dave-1", Some(("dave", PASSWORD))), v5::ConnectReturnCode::Success);
    assert_eq!(connack4(&broker, "meter-7", Some(("any", PASSWORD))), ConnectReturnCode::Success);

    assert_eq!(dir.ctl(&["users", "update", "dave", WRONG]).ok().trim(), "ok");
    assert_eq!(dir.ctl(&["clientid", "del", "meter-7"]).ok().trim(), "ok");
    let broker = broker.kill9_and_restart(&dir, &env);
    assert_eq!(connack5(&broker, "dave-2", Some(("dave", PASSWORD))), v5::ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack5(&broker, "dave-3", Some(("dave", WRONG))), v5::ConnectReturnCode::Success);
    assert_eq!(connack4(&broker, "meter-7", Some(("any", PASSWORD))), ConnectReturnCode::NotAuthorized);

    dir.ctl(&["plugins", "reload", "emqx_auth_mnesia"]).ok();
    assert_eq!(dir.ctl(&["users", "list"]).ok().trim(), "dave", "rebuilt from the store");
    assert_eq!(connack5(&broker, "dave-4", Some(("dave", WRONG))), v5::ConnectReturnCode::Success);
}

/// A `data/emqx_auth_mnesia.json` written by an older version is imported into the store at the
/// first start and renamed `emqx_auth_mnesia.json.imported`: its logins get in, with the
/// hashes they were made with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_credentials_file_is_imported_once() {
    let env = [("BROKER_ALLOW_ANONYMOUS", "false"), ("BROKER_AUTH__FAILURE_DELAY", "0")];
    let dir = DataDir::with_plugins("{emqx_auth_mnesia, true}.\n");
    // sha256 of the salt's bytes then PASSWORD, as the old version wrote it.
    let old = json!({
        "username": {"erin": {"password": {"algorithm": "sha256", "salt": "00112233445566778899aabbccddeeff",
            "hash": "c0ba502a1c6a614c96d2c24bff7770092aeda03d878c68e99c6b1ad9384e82f7"},
            "is_superuser": false, "created_at": 1764213000000u64}},
        "clientid": {}
    });
    dir.write("emqx_auth_mnesia.json", &old.to_string());
    let broker = Broker::start(&dir, &env);
    let line = broker.wait_for_log("imported 1 username and 0 clientid logins from");
    assert!(line.contains("emqx_auth_mnesia.json (renamed emqx_auth_mnesia.json.imported)"), "{line}");
    assert!(!dir.file("emqx_auth_mnesia.json").exists());
    assert_eq!(dir.read("emqx_auth_mnesia.json.imported"), old.to_string());
    assert_eq!(connack5(&broker, "erin-1", Some(("erin", PASSWORD))), v5::ConnectReturnCode::Success);
    assert_eq!(connack5(&broker, "erin-2", Some(("erin", WRONG))), v5::ConnectReturnCode::BadUserNamePassword);
    let broker = broker.kill9_and_restart(&dir, &env);
    broker.wait_for_log("1 username and 0 clientid logins");
    assert!(!broker.logs().iter().any(|l| l.contains("imported")), "imported once");
    assert_eq!(connack5(&broker, "erin-3", Some(("erin", PASSWORD))), v5::ConnectReturnCode::Success);
}

/// The management API login the tests set.
const ADMIN: Option<(&str, &str)> = Some(("admin", "s3cret"));

/// EMQX 4.3's `/api/v4/auth_username` and `/api/v4/auth_clientid`: list, add, look up,
/// update, delete, in EMQX's JSON (`{"code":0,"data":...}`), never a password; failures
/// with their HTTP status (409 exists, 404 unknown, 400 bad body). A user added by the API
/// connects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_manages_logins() {
    let (_dir, broker) = start(
        "{emqx_management, true}.\n{emqx_auth_mnesia, true}.\n",
        &[
            ("BROKER_ALLOW_ANONYMOUS", "false"),
            ("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"),
            ("BROKER_MANAGEMENT__PASSWORD", "s3cret"),
        ],
    );
    let addr = broker.logged_addr("management API listening on http://");
    let api = ManagementApi::new(format!("http://{addr}"));

    for (kind, field) in [("auth_username", "username"), ("auth_clientid", "clientid")] {
        let path = format!("/api/v4/{kind}");
        let (status, body) =
            api.call(Method::POST, &path, ADMIN, Some(json!({field: "dev-1", "password": PASSWORD}))).await;
        assert_eq!((status, &body), (StatusCode::OK, &json!({"code": 0})), "{kind}");
        let (status, body) = api.call(Method::POST, &path, ADMIN, Some(json!({field: "dev-1", "password": "x"}))).await;
        assert_eq!((status, body["code"].as_u64()), (StatusCode::CONFLICT, Some(409)), "{kind}: {body}");
        let (status, body) = api.call(Method::POST, &path, ADMIN, Some(json!({field: "dev-2"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{kind}: {body}");

        let (status, body) = api.call(Method::GET, &path, ADMIN, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["code"], 0);
        assert_eq!(body["data"][0][field], "dev-1", "{body}");
        assert_eq!(body["meta"]["count"], 1, "{body}");
        let (status, one) = api.call(Method::GET, &format!("{path}/dev-1"), ADMIN, None).await;
        assert_eq!((status, &one["data"][field]), (StatusCode::OK, &json!("dev-1")), "{one}");
        for answer in [&body, &one] {
            let text = answer.to_string();
            assert!(!text.contains("password") && !text.contains(PASSWORD), "{text}");
        }
        let (status, _) = api.call(Method::GET, &format!("{path}/nobody"), ADMIN, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    // The API's users log in; an update changes the password; a delete refuses them.
    assert_eq!(connack5(&broker, "c1", Some(("dev-1", PASSWORD))), v5::ConnectReturnCode::Success);
    assert_eq!(connack4(&broker, "dev-1", Some(("x", PASSWORD))), ConnectReturnCode::Success);
    let (status, body) =
        api.call(Method::PUT, "/api/v4/auth_username/dev-1", ADMIN, Some(json!({"password": WRONG}))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"code": 0})));
    assert_eq!(connack5(&broker, "c2", Some(("dev-1", PASSWORD))), v5::ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack5(&broker, "c3", Some(("dev-1", WRONG))), v5::ConnectReturnCode::Success);
    let (status, _) =
        api.call(Method::PUT, "/api/v4/auth_username/nobody", ADMIN, Some(json!({"password": "x"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for kind in ["auth_username", "auth_clientid"] {
        let (status, body) = api.call(Method::DELETE, &format!("/api/v4/{kind}/dev-1"), ADMIN, None).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"code": 0})), "{kind}");
        let (status, _) = api.call(Method::DELETE, &format!("/api/v4/{kind}/dev-1"), ADMIN, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kind}");
    }
    assert_eq!(connack5(&broker, "c4", Some(("dev-1", WRONG))), v5::ConnectReturnCode::NotAuthorized);
    no_password_in_logs(&broker);
}

/// Brute-force slowdown: a refused authentication's CONNACK comes no sooner than
/// `auth.failure_delay`; after `auth.max_failures` failures from one address it is banned,
/// and even the right password is refused at once: MQTT 5 CONNACK 0x8A Banned (§3.2.2.2),
/// 3.1.1 0x05 Not authorized (3.1.1 has no "banned").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_slowed_down_then_banned() {
    let delay = std::time::Duration::from_millis(400);
    let (dir, broker) = start(
        "{emqx_auth_mnesia, true}.\n",
        &[
            ("BROKER_AUTH__FAILURE_DELAY", "400ms"),
            ("BROKER_AUTH__MAX_FAILURES", "3"),
            ("BROKER_AUTH__WINDOW_TIME", "1h"),
            ("BROKER_AUTH__BAN_TIME", "1h"),
        ],
    );
    dir.ctl(&["users", "add", "alice", PASSWORD]).ok();
    assert_eq!(connack5(&broker, "ok", Some(("alice", PASSWORD))), v5::ConnectReturnCode::Success);
    for attempt in 1..=3 {
        let began = Instant::now();
        assert_eq!(connack5(&broker, "guess", Some(("alice", WRONG))), v5::ConnectReturnCode::BadUserNamePassword);
        assert!(began.elapsed() >= delay, "attempt {attempt}: refused after {:?}, before the delay", began.elapsed());
    }
    broker.wait_for_log("banned: too many failed authentications");
    assert_eq!(connack5(&broker, "right", Some(("alice", PASSWORD))), v5::ConnectReturnCode::Banned);
    assert_eq!(connack4(&broker, "right4", Some(("alice", PASSWORD))), ConnectReturnCode::NotAuthorized);
    let line = broker.wait_for_log("reason=\"banned\"");
    assert!(line.contains("client_id=\"right") && line.contains("ban left"), "{line}");
    no_password_in_logs(&broker);
}

/// A slow authentication plugin (the gatekeeper holds user "sloth" until a file exists, as an
/// HTTP authentication service that does not answer) holds up only its own clients: with
/// more of them waiting than the broker has worker threads, another client connects, and
/// the held ones are answered once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_authentication_plugin_holds_up_only_its_clients() {
    let recorder = tempfile::NamedTempFile::new().unwrap();
    let file = recorder.path().to_str().unwrap().to_owned();
    let dir = DataDir::with_plugins("{hook_recorder, true}.\n{gatekeeper, true}.\n");
    let release = dir.file("release");
    dir.write(
        "broker.toml",
        &format!("[gatekeeper]\nhold_users = [\"sloth\"]\nrelease_file = {:?}\n", release.to_str().unwrap()),
    );
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", &file)]);
    let held = std::thread::available_parallelism().map_or(2, |n| n.get()) + 2;
    let addr = broker.addr;
    let sloths: Vec<_> = (0..held)
        .map(|i| {
            std::thread::spawn(move || {
                let mut packet = connect4(&format!("sloth-{i}"), true);
                if let rumqttc::Packet::Connect(connect) = &mut packet {
                    connect.login = Some(rumqttc::Login::new("sloth", "pw"));
                }
                Raw::<V4>::connect(addr, &packet).1.code
            })
        })
        .collect();
    wait_until("every sloth in client.authenticate", || {
        let events = recorded_events(std::path::Path::new(&file));
        let waiting = events.iter().filter(|e| e["hook"] == "client.authenticate" && e["username"] == "sloth").count();
        (waiting == held).then_some(())
    });
    let mut quick = Client::connect(&broker, "quick").await;
    quick.publish_acked("quick/x", QoS::AtLeastOnce, "not held up").await;
    assert!(sloths.iter().all(|s| !s.is_finished()), "the sloths are still held");
    std::fs::write(&release, "").unwrap();
    for sloth in sloths {
        assert_eq!(sloth.join().unwrap(), ConnectReturnCode::Success);
    }
}

/// A wrong `allow_anonymous`, `[auth]` or `[auth_mnesia]` value is a clear error naming the
/// key: the broker does not start with an authentication setting it cannot read, and a
/// plugin whose settings are wrong does not start (the broker runs on).
#[test]
fn wrong_authentication_settings_are_named() {
    let dir = DataDir::with_plugins("");
    for (env, expected) in [
        (("BROKER_ALLOW_ANONYMOUS", "lan"), "\"lan\" is not true, false or \"loopback\""),
        (("BROKER_AUTH__FAILURE_DELAY", "soon"), "auth.failure_delay"),
        (("BROKER_AUTH__BAN_TIME", "0"), "auth.ban_time = 0"),
    ] {
        let out = std::process::Command::new(e2e::broker_exe())
            .arg("--data-dir")
            .arg(dir.path())
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("invalid configuration") && stderr.contains(expected), "{env:?}: {stderr}");
    }

    let dir = DataDir::with_plugins("{emqx_auth_mnesia, true}.\n");
    let broker = Broker::start(&dir, &[("BROKER_AUTH_MNESIA__PASSWORD_HASH", "md4")]);
    let line = broker.wait_for_log("emqx_auth_mnesia failed to start");
    assert!(line.contains("unknown variant `md4`") && line.contains("sha256"), "{line}");
    drop(broker);

    // A damaged old file is not imported: a warning names it, it is left as it was, and the
    // plugin starts with what the store holds.
    dir.write("emqx_auth_mnesia.json", "{not json");
    let broker = Broker::start(&dir, &[]);
    let line = broker.wait_for_log("emqx_auth_mnesia.json not imported");
    assert!(line.contains("WARN") && line.contains("not a valid credentials file"), "{line}");
    broker.wait_for_log("0 username and 0 clientid logins");
    assert_eq!(connack4(&broker, "still-serving", None), ConnectReturnCode::Success);
    assert_eq!(dir.read("emqx_auth_mnesia.json"), "{not json", "the broken file is left as it was");
}
