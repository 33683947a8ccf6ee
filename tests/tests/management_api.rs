//! `emqx_management`'s REST API with a real HTTP client: every endpoint, auth and bad input.

use e2e::{Broker, Client, DataDir};
use reqwest::{Method, StatusCode};
use rumqttc::QoS;
use serde_json::{json, Value};

const PLUGINS: &str = "{emqx_management, true}.\n{emqx_telemetry, true}.\n{emqx_mod_presence, false}.\n";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some((user, password)) = auth {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API reachable");
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body for {path}: {text:?}")))
    }

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
    (broker, Api { base: format!("http://{addr}"), http: reqwest::Client::new() })
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
