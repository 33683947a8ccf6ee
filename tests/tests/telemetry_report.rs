//! `emqx_telemetry` end to end: the real plugin reporting to a real local HTTP receiver.

use std::time::Duration;

use e2e::receiver::{Mode, Receiver};
use e2e::{counters, stat_in, Broker, Client, DataDir};
use rumqttc::QoS;
use serde_json::Value;

const FIELDS: [&str; 13] = [
    "license",
    "nodes_uuid",
    "active_plugins",
    "active_modules",
    "num_clients",
    "messages_received",
    "messages_sent",
    "emqx_version",
    "os_name",
    "os_version",
    "otp_version",
    "up_time",
    "uuid",
];

/// Environment that sends reports to `url` at once and then every `interval`.
fn telemetry_env(url: &str, interval: &str) -> Vec<(String, String)> {
    vec![
        ("BROKER_TELEMETRY__URL".into(), url.into()),
        ("BROKER_TELEMETRY__REPORT_INTERVAL".into(), interval.into()),
        ("BROKER_TELEMETRY__FIRST_REPORT_DELAY".into(), "0s".into()),
    ]
}

fn start(dir: &DataDir, env: &[(String, String)]) -> Broker {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Broker::start(dir, &env)
}

fn names(value: &Value) -> Vec<&str> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_has_emqx_shape_exact_counts_and_live_plugin_lists() {
    let receiver = Receiver::start(Mode::Accept);
    let dir = DataDir::with_plugins("{emqx_telemetry, true}.\n{hook_recorder, true}.\n{noop_module, true}.\n");
    let mut env = telemetry_env(&receiver.url(), "200ms");
    env.push(("BROKER_HOOK_RECORDER__FILE".into(), dir.file("events.jsonl").to_string_lossy().into()));
    let broker = start(&dir, &env);

    const N: u64 = 10;
    const M: u64 = 3;
    let mut subs = Vec::new();
    for i in 0..M {
        let mut sub = Client::connect(&broker, &format!("tsub{i}")).await;
        sub.subscribe("tele/#", QoS::AtLeastOnce).await;
        subs.push(sub);
    }
    let mut publisher = Client::connect(&broker, "tpub").await;
    for n in 0..N {
        publisher.publish_acked("tele/secret-topic", QoS::AtLeastOnce, format!("{n}")).await;
    }
    for sub in &mut subs {
        sub.receive(N as usize).await;
    }

    let report = receiver.wait_for("a report counting the traffic", |j| {
        j["messages_received"] == N && j["messages_sent"] == N * M && j["num_clients"] == M + 1
    });
    assert_eq!(report.content_type, "application/json");
    let json = &report.json;

    // Exactly EMQX's fields, in EMQX's order.
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = FIELDS.to_vec();
    sorted.sort();
    assert_eq!(keys, sorted, "field set");
    let positions: Vec<usize> = FIELDS.iter().map(|f| report.raw.find(&format!("\"{f}\":")).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order: {}", report.raw);

    assert_eq!(json["license"], serde_json::json!({"edition": "community"}));
    assert_eq!(json["nodes_uuid"], serde_json::json!([]));
    assert_eq!(names(&json["active_plugins"]), vec!["emqx_telemetry", "hook_recorder"]);
    assert_eq!(names(&json["active_modules"]), vec!["noop_module"]);
    assert_eq!(json["emqx_version"], env!("CARGO_PKG_VERSION"));
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os_name = os_release.lines().find_map(|l| l.strip_prefix("NAME=")).map(|v| v.trim_matches('"'));
    assert_eq!(json["os_name"].as_str(), Some(os_name.unwrap_or(std::env::consts::OS)));
    assert!(!json["os_version"].as_str().unwrap().is_empty());
    assert!(json["otp_version"].as_str().unwrap().starts_with("rustc "), "{}", json["otp_version"]);

    let uuid = json["uuid"].as_str().unwrap();
    let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
    assert_eq!(groups, vec![8, 4, 4, 4, 12], "{uuid}");
    assert!(uuid.chars().all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase()), "{uuid}");
    assert!(uuid.split('-').nth(2).unwrap().starts_with('1'), "a time-based (v1) uuid, as EMQX's: {uuid}");
    assert!(dir.store_contains(uuid.as_bytes()), "uuid kept in the broker's store");
    assert!(!dir.file("emqx_telemetry.json").exists(), "no file of its own any more");

    // No personal data.
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for secret in ["127.0.0.1", "tsub0", "tpub", "secret-topic", hostname.trim()] {
        if !secret.is_empty() {
            assert!(!report.raw.contains(secret), "report leaks {secret:?}: {}", report.raw);
        }
    }

    // The same numbers as the broker's own stats and as `ctl telemetry get data`.
    let stats = counters(&dir);
    assert_eq!(stat_in(&stats, "messages.received"), N);
    assert_eq!(stat_in(&stats, "messages.sent"), N * M);
    assert_eq!(stat_in(&stats, "connections.count"), M + 1);
    assert_eq!(stat_in(&stats, "connections.max"), M + 1);
    let text = dir.ctl(&["telemetry", "get", "data"]).ok();
    assert!(text.starts_with("{\n  \"license\": {\n    \"edition\": \"community\"\n  },\n"), "pretty JSON: {text}");
    let data: Value = serde_json::from_str(&text).unwrap();
    for key in ["messages_received", "messages_sent", "num_clients", "uuid", "active_plugins"] {
        assert_eq!(data[key], json[key], "{key}");
    }

    // up_time is in milliseconds, as EMQX's: between the broker's uptime in whole seconds
    // read before and after it.
    let uptime_secs = |dir: &DataDir| {
        let out = dir.ctl(&["broker"]).ok();
        out.lines()
            .find_map(|l| l.strip_prefix("uptime    : ")?.strip_suffix(" seconds")?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no uptime in {out}"))
    };
    let before = e2e::wait_until("the broker up for a second", || Some(uptime_secs(&dir)).filter(|&s| s >= 1));
    let data: Value = serde_json::from_str(&dir.ctl(&["telemetry", "get", "data"]).ok()).unwrap();
    let after = uptime_secs(&dir);
    let up_time = data["up_time"].as_u64().unwrap();
    assert!(before * 1000 <= up_time && up_time < (after + 1) * 1000, "{before}s <= {up_time}ms <= {after}s");

    // up_time grows.
    let up_time = json["up_time"].as_u64().unwrap();
    receiver.wait_for("a later report with a larger up_time", |j| j["up_time"].as_u64() > Some(up_time));

    // The lists follow plugins being stopped.
    dir.ctl(&["plugins", "unload", "hook_recorder"]).ok();
    dir.ctl(&["plugins", "unload", "noop_module"]).ok();
    receiver.wait_for("a report without the unloaded plugins", |j| {
        j["active_plugins"] == serde_json::json!(["emqx_telemetry"]) && j["active_modules"] == serde_json::json!([])
    });

    // num_clients is EMQX's `connections.max`, the peak: it stays when clients leave.
    publisher.disconnect().await;
    e2e::wait_for_stat(&dir, "connections.count", M);
    let before = receiver.count();
    e2e::wait_until("a report after the client left", || (receiver.count() > before).then_some(()));
    assert_eq!(receiver.reports().last().unwrap().json["num_clients"], M + 1);
}

/// A uuid an older version kept in `data/emqx_telemetry.json` (a random v4 one) is imported
/// into the store at the first start, with its switch, and the file renamed
/// `emqx_telemetry.json.imported`; the node keeps its identity, after a crash too. A damaged
/// file is left in place with a warning, and a new uuid is made.
#[test]
fn a_uuid_kept_by_an_older_version_is_kept() {
    let dir = DataDir::with_plugins("{emqx_telemetry, true}.\n");
    let old = "D6138FCE-E455-41EA-A854-FD8F5F98125F";
    dir.write("emqx_telemetry.json", &format!("{{\"uuid\": \"{old}\", \"enabled\": false}}"));
    let broker = Broker::start(&dir, &[]);
    let line = broker.wait_for_log("imported the telemetry uuid");
    assert!(
        line.contains(old) && line.contains("emqx_telemetry.json (renamed emqx_telemetry.json.imported)"),
        "{line}"
    );
    let data: Value = serde_json::from_str(&dir.ctl(&["telemetry", "get", "data"]).ok()).unwrap();
    assert_eq!(data["uuid"], old);
    assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), "Telemetry is disabled", "the switch imported");
    assert!(!dir.file("emqx_telemetry.json").exists());
    assert!(dir.read("emqx_telemetry.json.imported").contains(old));
    let broker = broker.kill9_and_restart(&dir, &[]);
    let data: Value = serde_json::from_str(&dir.ctl(&["telemetry", "get", "data"]).ok()).unwrap();
    assert_eq!(data["uuid"], old, "served from the store");
    assert!(!broker.logs().iter().any(|l| l.contains("imported")), "imported once");
    drop(broker);

    let damaged = DataDir::with_plugins("{emqx_telemetry, true}.\n");
    damaged.write("emqx_telemetry.json", "{\"uuid\": ");
    let broker = Broker::start(&damaged, &[]);
    let line = broker.wait_for_log("emqx_telemetry.json not imported");
    assert!(line.contains("WARN") && line.contains("left in place"), "{line}");
    let data: Value = serde_json::from_str(&damaged.ctl(&["telemetry", "get", "data"]).ok()).unwrap();
    assert_ne!(data["uuid"], old);
    assert_eq!(damaged.read("emqx_telemetry.json"), "{\"uuid\": ");
}

/// The uuid is made once and kept in the broker's store: the same after a restart and after
/// `kill -9`; so is `ctl telemetry disable`.
#[test]
fn uuid_is_stable_across_restarts() {
    let dir = DataDir::with_plugins("{emqx_telemetry, true}.\n");
    let uuid = |dir: &DataDir| {
        let data: Value = serde_json::from_str(&dir.ctl(&["telemetry", "get", "data"]).ok()).unwrap();
        data["uuid"].as_str().unwrap().to_owned()
    };
    let broker = Broker::start(&dir, &[]);
    let first = uuid(&dir);
    broker.stop();
    let broker = Broker::start(&dir, &[]);
    assert_eq!(uuid(&dir), first);
    let broker = broker.kill9_and_restart(&dir, &[]);
    assert_eq!(uuid(&dir), first, "same after a crash");
    assert_eq!(dir.ctl(&["telemetry", "disable"]).ok().trim(), "Disable telemetry successfully");
    let _broker = broker.kill9_and_restart(&dir, &[]);
    assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), "Telemetry is disabled", "kept across a crash");
    assert_eq!(uuid(&dir), first);
}

#[test]
fn unloading_the_plugin_stops_reports_and_reload_resumes_them() {
    let receiver = Receiver::start(Mode::Accept);
    let dir = DataDir::with_plugins("{emqx_telemetry, true}.\n");
    let _broker = start(&dir, &telemetry_env(&receiver.url(), "100ms"));
    receiver.wait_for("reports while loaded", |_| true);

    // `unload` returns after the plugin's reporter thread is joined.
    dir.ctl(&["plugins", "unload", "emqx_telemetry"]).ok();
    receiver.assert_silent_for(Duration::from_secs(1));
    assert!(dir.ctl(&["telemetry", "get", "status"]).err().contains("unknown command \"telemetry\""));
    assert!(dir.read("loaded_plugins").contains("{emqx_telemetry, false}."));

    let before = receiver.count();
    dir.ctl(&["plugins", "reload", "emqx_telemetry"]).ok();
    e2e::wait_until("reports after reload", || (receiver.count() > before).then_some(()));
}

#[test]
fn a_plugin_not_enabled_in_loaded_plugins_never_starts() {
    let receiver = Receiver::start(Mode::Accept);
    for file in ["{hook_recorder, false}.\n", "{emqx_telemetry, false}.\n"] {
        let dir = DataDir::with_plugins(file);
        let broker = start(&dir, &telemetry_env(&receiver.url(), "100ms"));
        receiver.assert_silent_for(Duration::from_secs(1));
        assert!(!broker.logs().iter().any(|l| l.contains("emqx_telemetry")), "{file}");
        assert!(dir.ctl(&["telemetry", "get", "status"]).err().contains("unknown command"));
        let list = dir.ctl(&["plugins", "list"]).ok();
        assert!(
            !list.contains("emqx_telemetry")
                || list.lines().any(|l| l == "Plugin(emqx_telemetry, description=EMQ X Telemetry, active=false)"),
            "{list}"
        );
    }
    assert_eq!(receiver.count(), 0);
}

#[test]
fn ctl_disable_is_persisted_and_sends_nothing() {
    let receiver = Receiver::start(Mode::Accept);
    let dir = DataDir::with_plugins("{emqx_telemetry, true}.\n");
    let env = telemetry_env(&receiver.url(), "100ms");
    let broker = start(&dir, &env);
    broker.wait_for_log("telemetry is on: every 100ms it sends anonymous usage data");
    assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), "Telemetry is enabled");
    receiver.wait_for("a first report", |_| true);

    assert_eq!(dir.ctl(&["telemetry", "disable"]).ok().trim(), "Disable telemetry successfully");
    receiver.assert_silent_for(Duration::from_secs(1));
    assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), "Telemetry is disabled");

    // Still off after a restart.
    broker.stop();
    let before = receiver.count();
    let broker = start(&dir, &env);
    broker.wait_for_log("telemetry is off (disabled by `broker ctl telemetry disable`); nothing is sent");
    receiver.assert_silent_for(Duration::from_secs(1));
    assert_eq!(receiver.count(), before);

    // `get data` still shows what would be sent, without sending it.
    let data: Value = serde_json::from_str(&dir.ctl(&["telemetry", "get", "data"]).ok()).unwrap();
    assert_eq!(data["license"]["edition"], "community");
    assert_eq!(receiver.count(), before);

    assert_eq!(dir.ctl(&["telemetry", "enable"]).ok().trim(), "Enable telemetry successfully");
    e2e::wait_until("reports after enable", || (receiver.count() > before).then_some(()));
    assert!(dir.ctl(&["telemetry", "bogus"]).err().contains("usage: broker ctl telemetry"));
}

#[test]
fn do_not_track_and_enable_false_send_nothing() {
    let receiver = Receiver::start(Mode::Accept);
    let cases = [
        ("DO_NOT_TRACK", "1", "disabled by DO_NOT_TRACK"),
        ("BROKER_TELEMETRY__ENABLED", "false", "disabled by the config"),
        ("BROKER_TELEMETRY__ENABLE", "false", "disabled by the config"),
    ];
    for (key, value, reason) in cases {
        let dir = DataDir::with_plugins("{emqx_telemetry, true}.\n");
        let mut env = telemetry_env(&receiver.url(), "100ms");
        env.push((key.into(), value.into()));
        let broker = start(&dir, &env);
        broker.wait_for_log(&format!("telemetry is off ({reason}"));
        receiver.assert_silent_for(Duration::from_secs(1));
        assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), "Telemetry is disabled");
        // `enable` cannot override the environment.
        let out = dir.ctl(&["telemetry", "enable"]).ok();
        assert!(out.contains("but it stays off") && out.contains(reason), "{out}");
        receiver.assert_silent_for(Duration::from_millis(500));
    }
    assert_eq!(receiver.count(), 0);
}

#[test]
fn the_config_key_is_enabled_and_either_name_saying_false_wins() {
    let receiver = Receiver::start(Mode::Accept);
    const ENABLE_FALSE: &[(&str, &str)] = &[("BROKER_TELEMETRY__ENABLE", "false")];
    let cases = [
        ("[telemetry]\nenabled = false\n", &[][..], false),
        ("[telemetry]\nenable = false\n", &[], false),
        ("[telemetry]\nenabled = true\n", ENABLE_FALSE, false),
        ("[telemetry]\nenabled = true\n", &[], true),
    ];
    for (toml, extra, on) in cases {
        let dir = DataDir::with_plugins("{emqx_telemetry, true}.\n");
        dir.write("broker.toml", toml);
        let mut env = telemetry_env(&receiver.url(), "100ms");
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let broker = start(&dir, &env);
        let status = if on { "Telemetry is enabled" } else { "Telemetry is disabled" };
        assert_eq!(dir.ctl(&["telemetry", "get", "status"]).ok().trim(), status, "{toml} {extra:?}");
        if on {
            broker.wait_for_log("telemetry is on");
        } else {
            broker.wait_for_log("telemetry is off (disabled by the config (telemetry.enabled = false");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_never_affect_mqtt_traffic() {
    let failing = Receiver::start(Mode::Fail);
    let hanging = Receiver::start(Mode::Hang);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let endpoints = [
        (format!("http://{closed}/api/telemetry"), "failed: error sending request"),
        (failing.url(), "failed: HTTP 500"),
        (format!("https://{}/api/telemetry", failing.addr), "failed: error sending request"),
        (hanging.url(), ""),
    ];
    for (url, failure) in endpoints {
        let dir = DataDir::with_plugins("{emqx_telemetry, true}.\n");
        let broker = start(&dir, &telemetry_env(&url, "100ms"));
        if failure.is_empty() {
            e2e::wait_until("a hanging request in flight", || (hanging.count() > 0).then_some(()));
        } else {
            let line = broker.wait_for_log(&format!("telemetry report to {url} {failure}"));
            assert!(line.contains("WARN"), "{line}");
        }

        let mut sub = Client::connect(&broker, "unaffected-sub").await;
        sub.subscribe("traffic", QoS::AtLeastOnce).await;
        let mut publisher = Client::connect(&broker, "unaffected-pub").await;
        for n in 0..100 {
            publisher.publish_acked("traffic", QoS::AtLeastOnce, format!("{n}")).await;
        }
        assert_eq!(sub.receive(100).await.len(), 100, "{url}");

        // Unloading mid-request stops cleanly.
        dir.ctl(&["plugins", "unload", "emqx_telemetry"]).ok();
        let mut broker = broker;
        assert!(broker.is_running());
        publisher.publish_acked("traffic", QoS::AtLeastOnce, "after").await;
        assert_eq!(&sub.receive(1).await[0].payload[..], b"after");
    }
}
