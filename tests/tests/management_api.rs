//! `emqx_management`'s REST API with a real HTTP client: every endpoint, auth and bad input.

use e2e::{wait_until, Broker, Client, DataDir, ManagementApi as Api};
use reqwest::{Method, StatusCode};
use rumqttc::QoS;
use serde_json::{json, Value};

const PLUGINS: &str = "{emqx_management, true}.\n{emqx_telemetry, true}.\n{emqx_mod_presence, false}.\n";

/// Calls as `admin` with the password [`start`] sets.
trait AsAdmin {
    async fn get(&self, path: &str) -> (StatusCode, Value);
    async fn put(&self, path: &str) -> (StatusCode, Value);
}

impl AsAdmin for Api {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(("admin", "s3cret")), None).await
    }

    async fn put(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(("admin", "s3cret")), None).await
    }
}

fn start(dir: &DataDir) -> (Broker, Api) {
    let broker =
        Broker::start(dir, &[("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"), ("BROKER_MANAGEMENT__PASSWORD", "s3cret")]);
    let addr = broker.logged_addr("management API listening on http://");
    (broker, Api::new(format!("http://{addr}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_in_emqx_shape() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (broker, api) = start(&dir);
    assert!(!broker.logs().iter().any(|l| l.contains("default password")), "no warning with a set password");

    let mut sub = Client::connect(&broker, "api-sub").await;
    sub.subscribe("api/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "api-pub").await;
    publisher.publish_acked("api/x", QoS::AtLeastOnce, "1").await;
    sub.receive(1).await;

    let (status, body) = api.get("/api/v4/brokers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["code"], 0);
    // EMQX 4.x: a list of nodes; uptime in words, local datetime.
    let node = &body["data"][0];
    assert_eq!(node["node"], "emqx@127.0.0.1");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(node["node_status"], "Running");
    assert_eq!(node["sysdescr"], "MQTT broker with plugins");
    assert!(node["uptime"].as_str().unwrap().ends_with(" seconds"), "{node}");
    assert_eq!(node["datetime"].as_str().unwrap().len(), "2026-11-27 01:02:03".len(), "{node}");
    let (_, body) = api.get("/api/v4/brokers/emqx@127.0.0.1").await;
    assert_eq!(body["data"]["node"], "emqx@127.0.0.1");
    // A node alone lists itself under /nodes, with its connections (api-sub, api-pub).
    let (status, body) = api.get("/api/v4/nodes").await;
    assert_eq!(status, StatusCode::OK);
    let nodes = body["data"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{body}");
    assert_eq!((&nodes[0]["node"], &nodes[0]["node_status"]), (&json!("emqx@127.0.0.1"), &json!("Running")));
    assert_eq!(nodes[0]["connections"], 2, "{body}");
    assert_eq!(nodes[0]["version"], env!("CARGO_PKG_VERSION"));

    // Gauges per node under "stats"; ?aggregate=true as one object; counters under /metrics.
    let (_, body) = api.get("/api/v4/stats").await;
    assert_eq!(body["data"][0]["node"], "emqx@127.0.0.1");
    assert_eq!(body["data"][0]["stats"]["connections.count"], 2);
    assert_eq!(body["data"][0]["stats"]["subscriptions.count"], 1);
    let (_, body) = api.get("/api/v4/stats?aggregate=true").await;
    assert_eq!(body["data"]["connections.count"], 2);
    let (_, body) = api.get("/api/v4/nodes/emqx@127.0.0.1/stats").await;
    assert_eq!(body["data"]["sessions.count"], 2);
    let (_, body) = api.get("/api/v4/metrics").await;
    assert_eq!(body["data"][0]["metrics"]["messages.received"], 1);
    assert_eq!(body["data"][0]["metrics"]["messages.sent"], 1);
    let (_, body) = api.get("/api/v4/nodes/emqx@127.0.0.1/metrics").await;
    assert_eq!(body["data"]["packets.connect.received"], 2);
    let (status, _) = api.get("/api/v4/nodes/other@host/stats").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, body) = api.get("/api/v4/clients").await;
    let ids: Vec<&str> = body["data"].as_array().unwrap().iter().map(|c| c["clientid"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["api-pub", "api-sub"]);
    assert_eq!(body["data"][0]["ip_address"], "127.0.0.1");
    assert_eq!(body["meta"]["count"], 2);

    // Plugins, per node as EMQX 4.3 lists them: exactly name, description, active, type.
    let (_, body) = api.get("/api/v4/plugins").await;
    assert_eq!(body["code"], 0);
    let nodes = body["data"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{body}");
    assert_eq!(nodes[0]["node"], "emqx@127.0.0.1");
    let plugins = nodes[0]["plugins"].as_array().unwrap();
    let by_name = |n: &str| plugins.iter().find(|p| p["name"] == n).unwrap().clone();
    assert_eq!(
        by_name("emqx_telemetry"),
        json!({"name": "emqx_telemetry", "description": "EMQ X Telemetry", "active": true, "type": "feature"})
    );
    assert_eq!(by_name("emqx_management")["description"], "EMQ X Management");
    assert_eq!(by_name("emqx_management")["active"], true);
    assert_eq!(by_name("emqx_mod_presence")["active"], false);
    assert_eq!(by_name("emqx_mod_presence")["type"], "feature");
    assert_eq!(by_name("emqx_mod_presence")["description"], "EMQ X Presence Module");
    let (status, body) = api.get("/api/v4/nodes/emqx@127.0.0.1/plugins").await;
    assert_eq!((status, body["code"].clone()), (StatusCode::OK, json!(0)));
    assert_eq!(&body["data"], &nodes[0]["plugins"], "the node's list is the same");

    // Load / unload / reload on the node, persisted like `broker ctl`; `{"code": 0}` as EMQX.
    let (status, body) = api.put("/api/v4/nodes/emqx@127.0.0.1/plugins/emqx_mod_presence/load").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"code": 0})));
    assert!(dir.read("loaded_plugins").contains("{emqx_mod_presence, true}."));
    assert!(dir
        .ctl(&["plugins", "list"])
        .ok()
        .lines()
        .any(|l| l == "Plugin(emqx_mod_presence, description=EMQ X Presence Module, active=true)"));
    let (status, body) = api.put("/api/v4/nodes/emqx@127.0.0.1/plugins/emqx_mod_presence/reload").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"code": 0})));
    let (status, body) = api.put("/api/v4/nodes/emqx@127.0.0.1/plugins/emqx_mod_presence/unload").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"code": 0})));
    assert!(dir.read("loaded_plugins").contains("{emqx_mod_presence, false}."));
    // The path without the node still works, with the ctl message.
    let (status, body) = api.put("/api/v4/plugins/emqx_mod_presence/load").await;
    assert_eq!((status, body["code"].clone()), (StatusCode::OK, json!(0)));
    assert_eq!(body["message"], "Plugin emqx_mod_presence loaded successfully.");
    let (status, _) = api.put("/api/v4/plugins/emqx_mod_presence/unload").await;
    assert_eq!(status, StatusCode::OK);

    // Telemetry status, enable/disable and data, in EMQX's shapes.
    let (_, body) = api.get("/api/v4/telemetry/status").await;
    assert_eq!(body, json!({"code": 0, "data": {"enabled": true}}));
    let (status, body) = api
        .call(Method::PUT, "/api/v4/telemetry/status", Some(("admin", "s3cret")), Some(json!({"enabled": false})))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"code": 0})));
    assert_eq!(api.get("/api/v4/telemetry/status").await.1, json!({"code": 0, "data": {"enabled": false}}));
    assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), "Telemetry is disabled");
    // The older body `{"enable": ...}` is accepted too.
    let (status, _) = api
        .call(Method::PUT, "/api/v4/telemetry/status", Some(("admin", "s3cret")), Some(json!({"enable": true})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), "Telemetry is enabled");
    let (_, body) = api.get("/api/v4/telemetry/data").await;
    assert_eq!(body["code"], 0);
    assert_eq!(body["data"]["license"]["edition"], "community");
    assert_eq!(body["data"]["num_clients"], 2);
    assert!(body["data"]["up_time"].as_u64().unwrap() > 0, "{body}");

    // With telemetry unloaded its endpoints say so.
    api.put("/api/v4/plugins/emqx_telemetry/unload").await;
    let (status, body) = api.get("/api/v4/telemetry/status").await;
    assert_eq!((status, body["message"].clone()), (StatusCode::NOT_FOUND, json!("emqx_telemetry is not running")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_and_bad_input_get_4xx_with_a_json_error() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (_broker, api) = start(&dir);
    for auth in [None, Some(("admin", "public")), Some(("root", "s3cret"))] {
        let (status, body) = api.call(Method::GET, "/api/v4/plugins", auth, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body["code"], 401);
    }
    let cases: [(Method, &str, StatusCode, &str); 12] = [
        (Method::GET, "/api/v4/nodes/emqx@10.0.0.9/plugins", StatusCode::NOT_FOUND, "unknown node \"emqx@10.0.0.9\""),
        (Method::PUT, "/api/v4/nodes/other@host/plugins/emqx_telemetry/unload", StatusCode::NOT_FOUND, "unknown node"),
        (
            Method::PUT,
            "/api/v4/nodes/emqx@127.0.0.1/plugins/no_such_plugin/load",
            StatusCode::NOT_FOUND,
            "unknown plugin",
        ),
        (
            Method::PUT,
            "/api/v4/nodes/emqx@127.0.0.1/plugins/emqx_telemetry/load",
            StatusCode::CONFLICT,
            "is already loaded",
        ),
        (Method::PUT, "/api/v4/plugins/no_such_plugin/load", StatusCode::NOT_FOUND, "unknown plugin no_such_plugin"),
        (Method::PUT, "/api/v4/plugins/..%2F..%2Fetc/load", StatusCode::BAD_REQUEST, "invalid plugin name"),
        (Method::PUT, "/api/v4/plugins/Bad-Name/load", StatusCode::BAD_REQUEST, "invalid plugin name"),
        (Method::PUT, "/api/v4/plugins/emqx_telemetry/load", StatusCode::CONFLICT, "is already loaded"),
        (Method::PUT, "/api/v4/plugins/emqx_mod_presence/unload", StatusCode::CONFLICT, "is not loaded"),
        (Method::PUT, "/api/v4/plugins/emqx_telemetry/explode", StatusCode::NOT_FOUND, "unknown action"),
        (Method::PUT, "/api/v4/plugins/emqx_management/unload", StatusCode::BAD_REQUEST, "cannot unload itself"),
        (Method::DELETE, "/api/v4/plugins", StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    ];
    for (method, path, expected, message) in cases {
        let (status, body) = api.call(method.clone(), path, Some(("admin", "s3cret")), None).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert_eq!(body["code"], expected.as_u16());
        assert!(body["message"].as_str().unwrap().contains(message), "{method} {path}: {body}");
    }
    let (status, body) = api.get("/api/v4/nothing").await;
    assert_eq!((status, body["code"].clone()), (StatusCode::NOT_FOUND, json!(404)));
    let (status, _) = api
        .call(Method::PUT, "/api/v4/telemetry/status", Some(("admin", "s3cret")), Some(json!({"enable": "yes"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nothing above changed the file.
    assert_eq!(dir.read("loaded_plugins"), PLUGINS);
}

#[test]
fn the_default_password_is_warned_about() {
    let dir = DataDir::with_plugins("{emqx_management, true}.\n");
    let broker = Broker::start(&dir, &[("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0")]);
    let line = broker.wait_for_log("the management API uses the default password");
    assert!(line.contains("WARN"), "{line}");
}

// --- hashed passwords, lock-out after failed logins, CORS ---

/// An API client whose connections come from `source` (any 127.x.y.z is loopback on Linux).
fn api_from(base: &str, source: [u8; 4]) -> Api {
    let http = reqwest::Client::builder().local_address(std::net::IpAddr::from(source)).build().unwrap();
    Api { base: base.to_owned(), http }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_password_works_and_its_text_is_refused() {
    // The plugin's ctl command makes the hash (on a broker still on the default password).
    let maker = DataDir::with_plugins("{emqx_management, true}.\n");
    let _first = Broker::start(&maker, &[("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0")]);
    let hash = maker.ctl(&["management", "hash-password", "hunter2"]).ok().trim().to_owned();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    let public = maker.ctl(&["management", "hash-password", "public"]).ok().trim().to_owned();
    let usage = maker.ctl(&["management", "hash-password"]).err();
    assert!(usage.contains("usage: broker ctl management hash-password PASSWORD"), "{usage}");

    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(
        &dir,
        &[("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"), ("BROKER_MANAGEMENT__PASSWORD", hash.as_str())],
    );
    let api = Api::new(format!("http://{}", broker.logged_addr("management API listening on http://")));
    let (status, body) = api.call(Method::GET, "/api/v4/brokers", Some(("admin", "hunter2")), None).await;
    assert_eq!((status, body["code"].clone()), (StatusCode::OK, json!(0)));
    // Again (answered from the cache of verified logins), and the wrong ones are refused.
    let (status, _) = api.call(Method::GET, "/api/v4/stats", Some(("admin", "hunter2")), None).await;
    assert_eq!(status, StatusCode::OK);
    for (user, password) in [("admin", hash.as_str()), ("admin", "hunter3"), ("root", "hunter2")] {
        let (status, body) = api.call(Method::GET, "/api/v4/brokers", Some((user, password)), None).await;
        assert_eq!((status, body["code"].clone()), (StatusCode::UNAUTHORIZED, json!(401)), "{user}:{password}");
    }
    assert!(!broker.logs().iter().any(|l| l.contains("default password")), "no warning with a set password");

    // A hash of the default password is still the default password: warned about.
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(
        &dir,
        &[("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"), ("BROKER_MANAGEMENT__PASSWORD", public.as_str())],
    );
    broker.wait_for_log("the management API uses the default password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_hash_or_limit_fails_the_plugin_and_the_broker_keeps_serving() {
    let cases = [
        (
            "BROKER_MANAGEMENT__PASSWORD",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "management.password: malformed Argon2 hash",
        ),
        ("BROKER_MANAGEMENT__PASSWORD", "$2b$12$tooshort", "management.password: malformed bcrypt hash"),
        (
            "BROKER_MANAGEMENT__UNSUCCESSFUL_LOGIN_MAX_ATTEMPTS",
            "0",
            "management.unsuccessful_login_max_attempts must be at least 1",
        ),
        ("BROKER_MANAGEMENT__UNSUCCESSFUL_LOGIN_LOCK_DURATION", "soon", "invalid duration \"soon\""),
    ];
    for (key, value, message) in cases {
        let dir = DataDir::with_plugins(PLUGINS);
        let broker = Broker::start(&dir, &[("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"), (key, value)]);
        let line = broker.wait_for_log("plugin emqx_management failed to start: init failed: ");
        assert!(line.contains(message), "{key}={value}: {line}");
        let list = dir.ctl(&["plugins", "list", "--verbose"]).ok();
        assert!(list.contains("Plugin(emqx_management, description=EMQ X Management, active=false"), "{list}");
        // The broker keeps serving MQTT, and the other plugins run.
        let mut sub = Client::connect(&broker, "still-sub").await;
        sub.subscribe("alive", QoS::AtLeastOnce).await;
        let mut publisher = Client::connect(&broker, "still-pub").await;
        publisher.publish_acked("alive", QoS::AtLeastOnce, "yes").await;
        assert_eq!(&sub.receive(1).await[0].payload[..], b"yes");
        assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), "Telemetry is enabled");
    }
}

#[test]
fn failed_logins_lock_the_ip_out_until_the_lock_ends() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"),
            ("BROKER_MANAGEMENT__PASSWORD", "s3cret"),
            ("BROKER_MANAGEMENT__UNSUCCESSFUL_LOGIN_MAX_ATTEMPTS", "3"),
            ("BROKER_MANAGEMENT__UNSUCCESSFUL_LOGIN_INTERVAL", "1m"),
            ("BROKER_MANAGEMENT__UNSUCCESSFUL_LOGIN_LOCK_DURATION", "5s"),
        ],
    );
    let base = format!("http://{}", broker.logged_addr("management API listening on http://"));
    let here = api_from(&base, [127, 0, 0, 1]);
    let elsewhere = api_from(&base, [127, 0, 0, 2]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let get = |api: &Api, password: &str| {
        runtime.block_on(async {
            let response = api
                .http
                .get(format!("{}/api/v4/brokers", api.base))
                .basic_auth("admin", Some(password))
                .send()
                .await
                .expect("API reachable");
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let status = response.status();
            (status, retry_after, response.json::<Value>().await.unwrap())
        })
    };

    // Successes are never slowed, and do not clear the count (behind the dashboard many users
    // share one IP): the third failure within the interval locks 127.0.0.1 out.
    for (password, expected) in
        [("x1", StatusCode::UNAUTHORIZED), ("s3cret", StatusCode::OK), ("x2", StatusCode::UNAUTHORIZED)]
    {
        assert_eq!(get(&here, password).0, expected, "{password}");
    }
    assert_eq!(get(&here, "s3cret").0, StatusCode::OK);
    assert_eq!(get(&here, "x3").0, StatusCode::UNAUTHORIZED);
    // Now 429 with Retry-After, even for the right password (a locked-out guesser learns
    // nothing), and for requests without credentials.
    let (status, retry_after, body) = get(&here, "s3cret");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], 429);
    assert!(body["message"].as_str().unwrap().starts_with("too many failed logins from 127.0.0.1"), "{body}");
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let (status, _) = runtime.block_on(here.call(Method::GET, "/api/v4/brokers", None, None));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(get(&here, "x6").0, StatusCode::TOO_MANY_REQUESTS);

    // Another IP is not locked out: right is right, wrong is a plain 401.
    assert_eq!(get(&elsewhere, "s3cret").0, StatusCode::OK);
    assert_eq!(get(&elsewhere, "x7").0, StatusCode::UNAUTHORIZED);

    // The lock ends after lock_duration; then the right password works at once.
    wait_until("the lock-out to end", || (get(&here, "s3cret").0 == StatusCode::OK).then_some(()));
    assert_eq!(get(&here, "x8").0, StatusCode::UNAUTHORIZED, "a fresh count after the lock");
    assert_eq!(get(&here, "x9").0, StatusCode::UNAUTHORIZED);

    // One log line for the lock-out, not one a refused request.
    let lockouts: Vec<String> =
        broker.logs().into_iter().filter(|l| l.contains("failed logins from 127.0.0.1")).collect();
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    assert!(lockouts[0].contains("WARN") && lockouts[0].contains("refusing it (HTTP 429) for 5s"), "{lockouts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cors_preflight_lets_another_origin_in() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (_broker, api) = start(&dir);
    let response = api
        .http
        .request(Method::OPTIONS, format!("{}/api/v4/brokers", api.base))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(!response.status().is_success(), "{}", response.status());
    assert!(!response.headers().keys().any(|k| k.as_str().starts_with("access-control-")), "{:?}", response.headers());
    // An authenticated call from another origin gets its answer, but no CORS header either,
    // so a browser does not let that origin's script read it.
    let response = api
        .http
        .get(format!("{}/api/v4/brokers", api.base))
        .basic_auth("admin", Some("s3cret"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().keys().any(|k| k.as_str().starts_with("access-control-")), "{:?}", response.headers());
}

/// `/api/v4/sessions`: every session, online or not, with EMQX's session fields; one by client
/// id; DELETE kicks the client and discards its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_shown_and_kicked() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (broker, api) = start(&dir);
    let mut options = e2e::options(&broker, "s-kept");
    options.set_clean_session(false);
    let mut kept = Client::connect_with(options).await;
    kept.subscribe("s/#", QoS::AtLeastOnce).await;
    kept.kill().await;
    let _online = Client::connect(&broker, "s-online").await;

    let (status, body) = api.get("/api/v4/sessions").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kept = wait_until("s-kept offline", || {
        let list = dir.ctl(&["sessions", "list"]).ok();
        list.lines().any(|l| l.starts_with("Session(clientid=s-kept,") && l.contains("connected=false")).then_some(list)
    });
    assert!(kept.contains("Session(clientid=s-online, clean_start=true,"), "{kept}");
    assert_eq!(body["meta"]["count"], 2, "{body}");
    let (status, body) = api.get("/api/v4/sessions/s-kept").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let one = &body["data"][0];
    assert_eq!((one["clientid"].as_str(), one["clean_start"].as_bool()), (Some("s-kept"), Some(false)), "{body}");
    assert_eq!((one["subscriptions_count"].as_u64(), one["persistent"].as_bool()), (Some(1), Some(true)), "{body}");
    assert_eq!(one["node"], "emqx@127.0.0.1");

    let (status, _) = api.call(Method::DELETE, "/api/v4/sessions/s-kept", Some(("admin", "s3cret")), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.get("/api/v4/sessions/s-kept").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(dir.ctl(&["sessions", "kick", "s-kept"]).err().trim(), "error: no session of client id \"s-kept\"");
}

/// Behind the dashboard, each browser is counted by its own address: the dashboard passes
/// every request on from its own, and names the browser's with a token only plugins can read
/// (`plugin_http::dashboard_client`). One browser's wrong passwords lock that browser out,
/// not every dashboard user; a client that names another address without the token is still
/// counted by its own.
#[test]
fn through_the_dashboard_each_browser_is_counted_by_its_own_address() {
    let dir = DataDir::with_plugins("{emqx_management, true}.\n{emqx_dashboard, true}.\n");
    let api_port = e2e::free_port();
    let api_listen = format!("127.0.0.1:{api_port}");
    let api_url = format!("http://{api_listen}");
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MANAGEMENT__LISTEN", api_listen.as_str()),
            ("BROKER_MANAGEMENT__PASSWORD", "s3cret"),
            ("BROKER_MANAGEMENT__UNSUCCESSFUL_LOGIN_MAX_ATTEMPTS", "2"),
            ("BROKER_DASHBOARD__LISTEN", "127.0.0.1:0"),
            ("BROKER_DASHBOARD__API", api_url.as_str()),
        ],
    );
    let dashboard = format!("http://{}", broker.logged_addr("dashboard listening on http://"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let get = |base: &str, source: [u8; 4], password: &str, forged: Option<&str>| {
        let api = api_from(base, source);
        runtime.block_on(async {
            let mut request = api.http.get(format!("{base}/api/v4/brokers")).basic_auth("admin", Some(password));
            if let Some(address) = forged {
                request = request.header("x-dashboard-client", address).header("x-dashboard-token", "guessed");
            }
            request.send().await.expect("reachable").status()
        })
    };

    let (first, second) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    assert_eq!(get(&dashboard, first, "x1", None), StatusCode::UNAUTHORIZED);
    assert_eq!(get(&dashboard, first, "x2", None), StatusCode::UNAUTHORIZED);
    assert_eq!(get(&dashboard, first, "s3cret", None), StatusCode::TOO_MANY_REQUESTS, "the first browser locked out");
    assert_eq!(get(&dashboard, second, "s3cret", None), StatusCode::OK, "another browser is not");

    let forger = [127, 0, 0, 4];
    assert_eq!(get(&api_url, forger, "x3", Some("127.0.0.50")), StatusCode::UNAUTHORIZED);
    assert_eq!(get(&api_url, forger, "x4", Some("127.0.0.51")), StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&api_url, forger, "s3cret", Some("127.0.0.52")),
        StatusCode::TOO_MANY_REQUESTS,
        "without the token, the addresses it names are not believed"
    );
}

/// EMQX 4.3's client endpoints and paging: `GET /api/v4/clients?_page=P&_limit=L` gives that
/// page with `meta` `page`, `limit`, `count` and `hasnext` (without `_limit`, up to 10,000
/// rows, EMQX's `max_row_limit`); `GET /api/v4/clients/{clientid}` the client in a list of one,
/// or an empty list; `DELETE /api/v4/clients/{clientid}` kicks it (404 when there is none). A
/// query string that does not parse is answered in the API's JSON shape too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_paged_looked_up_and_kicked_as_in_emqx() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (broker, api) = start(&dir);
    let mut clients = Vec::new();
    for id in ["page-a", "page-b", "page-c"] {
        clients.push(Client::connect(&broker, id).await);
    }
    let (status, body) = api.get("/api/v4/clients?_page=2&_limit=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["meta"], json!({"page": 2, "limit": 1, "count": 3, "hasnext": true}), "{body}");
    let (_, body) = api.get("/api/v4/clients?_page=3&_limit=1").await;
    assert_eq!(body["meta"]["hasnext"], false, "{body}");
    let (_, body) = api.get("/api/v4/clients").await;
    assert_eq!(body["meta"], json!({"page": 1, "limit": 10000, "count": 3, "hasnext": false}), "{body}");

    let (status, body) = api.get("/api/v4/clients/page-b").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["clientid"], "page-b", "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
    let (status, _) = api.call(Method::DELETE, "/api/v4/clients/page-b", Some(("admin", "s3cret")), None).await;
    assert_eq!(status, StatusCode::OK);
    wait_until("page-b gone", || {
        let list = dir.ctl(&["clients", "list", "--json"]).ok();
        (!list.contains("\"page-b\"")).then_some(())
    });
    let (_, body) = api.get("/api/v4/clients/page-b").await;
    assert_eq!(body["data"], json!([]), "{body}");
    let (status, body) = api.call(Method::DELETE, "/api/v4/clients/page-b", Some(("admin", "s3cret")), None).await;
    assert_eq!((status, &body["code"]), (StatusCode::NOT_FOUND, &json!(404)), "{body}");

    let (status, body) = api.get("/api/v4/clients?_page=abc").await;
    assert_eq!((status, &body["code"]), (StatusCode::BAD_REQUEST, &json!(400)), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("_page")), "{body}");
}

/// EMQX 4.3's publish and subscribe over HTTP: `POST /api/v4/mqtt/publish` (plain, base64 and
/// a JSON object as payload; a topic list; retained), `/api/v4/mqtt/subscribe` and
/// `/unsubscribe` of a connected client (404 for one that is not), the batch forms, and 400
/// for a bad topic or QoS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_published_and_clients_subscribed_over_http() {
    let dir = DataDir::with_plugins("{emqx_management, true}.\n{emqx_retainer, true}.\n");
    let (broker, api) = start(&dir);
    let post = |path: &'static str, body: Value| {
        let api = &api;
        async move { api.call(Method::POST, path, Some(("admin", "s3cret")), Some(body)).await }
    };
    let mut sub = Client::connect(&broker, "http-sub").await;
    sub.subscribe("http/#", QoS::AtLeastOnce).await;

    let (status, body) = post("/api/v4/mqtt/publish", json!({"topic": "http/a", "payload": "plain", "qos": 1})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"code": 0})));
    let got = sub.receive(1).await.remove(0);
    assert_eq!((got.topic.as_str(), &got.payload[..], got.qos), ("http/a", &b"plain"[..], QoS::AtLeastOnce));
    post("/api/v4/mqtt/publish", json!({"topics": "http/b,bad/#,http/c", "payload": "aGk=", "encoding": "base64"}))
        .await;
    let got: Vec<(String, String)> =
        sub.receive(2).await.into_iter().map(|p| (p.topic.clone(), e2e::text(&p.payload))).collect();
    assert_eq!(got, [("http/b".to_owned(), "hi".to_owned()), ("http/c".to_owned(), "hi".to_owned())]);
    post("/api/v4/mqtt/publish", json!({"topic": "http/json", "payload": {"t": 21}, "retain": true})).await;
    assert_eq!(e2e::text(&sub.receive(1).await[0].payload), r#"{"t":21}"#);
    assert!(dir.ctl(&["retainer", "topics"]).ok().contains("http/json"), "retained");

    for bad in [json!({"topic": "x/#", "payload": "p"}), json!({"topic": "x", "qos": 3})] {
        let (status, body) = post("/api/v4/mqtt/publish", bad.clone()).await;
        assert_eq!((status, &body["code"]), (StatusCode::BAD_REQUEST, &json!(400)), "{bad}: {body}");
    }

    let mut target = Client::connect(&broker, "http-target").await;
    let (status, body) =
        post("/api/v4/mqtt/subscribe", json!({"clientid": "http-target", "topic": "pushed/#", "qos": 1})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"code": 0})));
    let (status, _) = post("/api/v4/mqtt/subscribe", json!({"clientid": "nobody", "topic": "pushed/#"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = post(
        "/api/v4/mqtt/publish_batch",
        json!([{"topic": "pushed/1", "payload": "one", "qos": 1}, {"topic": "pushed/+", "payload": "no"}]),
    )
    .await;
    assert_eq!(body["data"], json!([{"topic": "pushed/1", "code": 0}, {"topic": "pushed/+", "code": 400}]), "{body}");
    let got = target.receive(1).await.remove(0);
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("pushed/1", &b"one"[..]));
    let (_, body) = post(
        "/api/v4/mqtt/subscribe_batch",
        json!([{"clientid": "http-target", "topic": "more/x"}, {"clientid": "nobody", "topic": "more/x"}]),
    )
    .await;
    assert_eq!(
        body["data"],
        json!([{"clientid": "http-target", "topic": "more/x", "code": 0}, {"clientid": "nobody", "topic": "more/x", "code": 404}]),
        "{body}"
    );

    // Unsubscribed: pushed/# goes, more/x stays (the next message the client gets), and
    // removing what is not there is not an error (EMQX answers code 0 too).
    let (status, body) =
        post("/api/v4/mqtt/unsubscribe", json!({"clientid": "http-target", "topic": "pushed/#"})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"code": 0})));
    let (_, body) = post(
        "/api/v4/mqtt/unsubscribe_batch",
        json!([{"clientid": "http-target", "topic": "pushed/#"}, {"clientid": "nobody", "topic": "more/x"}]),
    )
    .await;
    assert_eq!(
        body["data"],
        json!([{"clientid": "http-target", "topic": "pushed/#", "code": 0}, {"clientid": "nobody", "topic": "more/x", "code": 404}]),
        "{body}"
    );
    let (status, _) = post("/api/v4/mqtt/unsubscribe", json!({"clientid": "http-target", "topic": "a/#/b"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    post("/api/v4/mqtt/publish", json!({"topic": "pushed/2", "payload": "unsubscribed", "qos": 1})).await;
    post("/api/v4/mqtt/publish", json!({"topic": "more/x", "payload": "still", "qos": 1})).await;
    let got = target.receive(1).await.remove(0);
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("more/x", &b"still"[..]));
}

/// `PUT /api/v4/telemetry/status {"enabled": true}` while `DO_NOT_TRACK=1` keeps telemetry off
/// says so in a `message`, as `broker ctl telemetry enable` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_telemetry_that_do_not_track_keeps_off_says_so() {
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"),
            ("BROKER_MANAGEMENT__PASSWORD", "s3cret"),
            ("DO_NOT_TRACK", "1"),
        ],
    );
    let api = Api::new(format!("http://{}", broker.logged_addr("management API listening on http://")));
    let (status, body) = api
        .call(Method::PUT, "/api/v4/telemetry/status", Some(("admin", "s3cret")), Some(json!({"enabled": true})))
        .await;
    assert_eq!((status, &body["code"]), (StatusCode::OK, &json!(0)), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("stays off: disabled by DO_NOT_TRACK")), "{body}");
}

/// EMQX's `emqx_ctl clients list|show|kick`, `subscriptions list|show|add|del` and `routes list|show`
/// under `broker ctl`, in EMQX's line forms, and the management API's `/api/v4/subscriptions`
/// (and `/{clientid}`) and `/api/v4/routes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emqx_ctl_clients_subscriptions_and_routes() {
    let dir = DataDir::with_plugins("{emqx_management, true}.\n");
    let (broker, api) = start(&dir);
    let mut a = Client::connect(&broker, "ctl-a").await;
    a.subscribe("room/+/temp", QoS::AtLeastOnce).await;
    a.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    let mut b = Client::connect(&broker, "ctl-b").await;
    b.subscribe("room/+/temp", QoS::AtMostOnce).await;

    let list = dir.ctl(&["clients", "list"]).ok();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("Client(ctl-a, username=undefined, peername=127.0.0.1:"), "{list}");
    assert!(
        lines[0].contains(", clean_start=true, keepalive=30, session_expiry_interval=0, subscriptions=2,"),
        "{list}"
    );
    assert!(lines[0].contains(", connected=true, created_at="), "{list}");
    assert!(dir.ctl(&["clients", "show", "ctl-b"]).ok().starts_with("Client(ctl-b, "));
    assert!(dir.ctl(&["clients", "show", "nobody"]).err().contains("no client connected as \"nobody\""));

    assert_eq!(
        dir.ctl(&["subscriptions", "list"]).ok().trim(),
        "ctl-a -> $share/g/jobs/#\nctl-a -> room/+/temp\nctl-b -> room/+/temp"
    );
    assert_eq!(dir.ctl(&["subscriptions", "show", "ctl-b"]).ok().trim(), "ctl-b -> room/+/temp");
    // EMQX 4's `subscriptions add|del` for a connected client.
    assert_eq!(dir.ctl(&["subscriptions", "add", "ctl-b", "added/#", "1"]).ok().trim(), "ok");
    assert_eq!(dir.ctl(&["subscriptions", "show", "ctl-b"]).ok().trim(), "ctl-b -> added/#\nctl-b -> room/+/temp");
    assert_eq!(dir.ctl(&["subscriptions", "del", "ctl-b", "added/#"]).ok().trim(), "ok");
    assert!(dir.ctl(&["subscriptions", "del", "ctl-b", "added/#"]).ok().contains("had no subscription"));
    assert!(dir.ctl(&["subscriptions", "add", "nobody", "x", "0"]).err().contains("no client connected as \"nobody\""));
    assert!(dir.ctl(&["subscriptions", "add", "ctl-b", "x", "3"]).err().contains("QoS should be 0, 1 or 2"));
    assert!(dir.ctl(&["subscriptions", "del", "ctl-b", "a/#/b"]).err().contains("not a valid topic filter"));
    assert_eq!(dir.ctl(&["subscriptions", "show", "ctl-b"]).ok().trim(), "ctl-b -> room/+/temp");
    assert_eq!(dir.ctl(&["routes", "list"]).ok().trim(), "jobs/# -> emqx@127.0.0.1\nroom/+/temp -> emqx@127.0.0.1");
    assert_eq!(dir.ctl(&["routes", "show", "jobs/#"]).ok().trim(), "jobs/# -> emqx@127.0.0.1");

    // The management API has them too: EMQX's /subscriptions and /routes.
    let (_, body) = api.get("/api/v4/subscriptions?_limit=2").await;
    assert_eq!(
        body["data"],
        json!([
            {"clientid": "ctl-a", "topic": "$share/g/jobs/#", "qos": 1, "node": "emqx@127.0.0.1"},
            {"clientid": "ctl-a", "topic": "room/+/temp", "qos": 1, "node": "emqx@127.0.0.1"}
        ]),
        "{body}"
    );
    assert_eq!(body["meta"], json!({"page": 1, "limit": 2, "count": 3, "hasnext": true}), "{body}");
    let (_, body) = api.get("/api/v4/subscriptions/ctl-b").await;
    assert_eq!(
        body["data"],
        json!([{"clientid": "ctl-b", "topic": "room/+/temp", "qos": 0, "node": "emqx@127.0.0.1"}])
    );
    let (_, body) = api.get("/api/v4/routes").await;
    assert_eq!(
        body["data"],
        json!([{"topic": "jobs/#", "node": "emqx@127.0.0.1"}, {"topic": "room/+/temp", "node": "emqx@127.0.0.1"}])
    );
    assert_eq!(dir.ctl(&["clients", "kick", "ctl-b"]).ok().trim(), "ok");
    wait_until("ctl-b gone", || (!dir.ctl(&["clients", "list"]).ok().contains("ctl-b")).then_some(()));
    assert!(dir.ctl(&["clients", "kick", "ctl-b"]).err().contains("no session of client id"));
}
