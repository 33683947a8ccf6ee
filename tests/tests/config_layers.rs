//! Settings come from defaults, then `data/broker.toml` (or `--config`), then `BROKER_*`
//! environment variables, then flags.

use e2e::{recorded_events, Broker, Client, DataDir};
use rumqttc::QoS;

const TOML: &str = r#"
node_name = "fromfile@10.0.0.1"

[presence]
qos = 1

[telemetry]
report_interval = "5m"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_then_environment_then_flags() {
    let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n");
    dir.write("broker.toml", TOML);

    // The file's node name and plugin table are used...
    let broker = Broker::start(&dir, &[]);
    let mut watcher = Client::connect(&broker, "watcher").await;
    watcher.subscribe("$SYS/#", QoS::AtLeastOnce).await;
    Client::connect(&broker, "c1").await.disconnect().await;
    let event = watcher.receive(1).await.remove(0);
    assert_eq!(event.topic, "$SYS/brokers/fromfile@10.0.0.1/clients/c1/connected");
    assert_eq!(event.qos, QoS::AtLeastOnce, "presence.qos from the file");
    broker.stop();

    // ...the environment beats the file...
    let broker = Broker::start(&dir, &[("BROKER_NODE_NAME", "fromenv@10.0.0.2"), ("BROKER_PRESENCE__QOS", "0")]);
    let mut watcher = Client::connect(&broker, "watcher").await;
    watcher.subscribe("$SYS/#", QoS::AtLeastOnce).await;
    Client::connect(&broker, "c2").await.disconnect().await;
    let event = watcher.receive(1).await.remove(0);
    assert_eq!(event.topic, "$SYS/brokers/fromenv@10.0.0.2/clients/c2/connected");
    assert_eq!(event.qos, QoS::AtMostOnce);
    broker.stop();

    // ...and `--config` names another file, which must exist.
    let other = dir.file("other.toml");
    std::fs::write(&other, "node_name = \"other@10.0.0.3\"\n").unwrap();
    let broker = Broker::start_with_args(&dir, &[], &["--config", other.to_str().unwrap()]);
    let mut watcher = Client::connect(&broker, "watcher").await;
    watcher.subscribe("$SYS/#", QoS::AtLeastOnce).await;
    Client::connect(&broker, "c3").await.disconnect().await;
    assert_eq!(watcher.receive(1).await[0].topic, "$SYS/brokers/other@10.0.0.3/clients/c3/connected");
    broker.stop();

    let missing = std::process::Command::new(e2e::broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--config", "/nonexistent/broker.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "broker: config file /nonexistent/broker.toml does not exist"
    );
}

#[test]
fn a_broken_config_file_is_a_clear_error() {
    let dir = DataDir::with_plugins("");
    dir.write("broker.toml", "[listener]\ntcp = \"not an address\"\n");
    let out = std::process::Command::new(e2e::broker_exe()).arg("--data-dir").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("broker: invalid configuration:") && stderr.contains("listener.tcp"), "{stderr}");
}

/// EMQX's names for the ACL cache are accepted in `[mqtt]` (`enable_acl_cache`, with EMQX's
/// `on` / `off`, `acl_cache_max_size`, `acl_cache_ttl`), and `acl_cache_max_size = 0` is
/// refused at start with the key named, as EMQX refuses it (no cache is
/// `enable_acl_cache = off`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emqx_acl_cache_names() {
    for (enable, checks) in [("on", 1), ("off", 3), ("false", 3)] {
        let dir = DataDir::with_plugins("{hook_recorder, true}.\n");
        let toml = format!("[mqtt]\nenable_acl_cache = \"{enable}\"\nacl_cache_max_size = 8\nacl_cache_ttl = \"5m\"\n");
        dir.write("broker.toml", &toml.replace("\"false\"", "false"));
        let file = dir.file("events.jsonl");
        let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", file.to_str().unwrap())]);
        let mut publisher = Client::connect(&broker, "pub").await;
        for _ in 0..3 {
            publisher.publish_acked("t/1", QoS::AtLeastOnce, "x").await;
        }
        let asked =
            recorded_events(&file).iter().filter(|e| e["hook"] == "client.check_acl" && e["topic"] == "t/1").count();
        assert_eq!(asked, checks, "enable_acl_cache = {enable}: check_acl calls for 3 publishes");
        broker.stop();
    }

    let dir = DataDir::with_plugins("");
    for (how, env) in [("file", vec![]), ("environment", vec![("BROKER_MQTT__ACL_CACHE_MAX_SIZE", "0")])] {
        dir.write("broker.toml", if how == "file" { "[mqtt]\nacl_cache_max_size = 0\n" } else { "" });
        let out =
            std::process::Command::new(e2e::broker_exe()).arg("--data-dir").arg(dir.path()).envs(env).output().unwrap();
        assert!(!out.status.success(), "acl_cache_max_size = 0 from the {how} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("invalid configuration: mqtt.acl_cache_max_size = 0")
                && stderr.contains("enable_acl_cache = false"),
            "{stderr}"
        );
    }
}

/// `mqtt.response_information` is a UTF-8 string of an MQTT 5 property: one over 65,535 bytes
/// is refused at start, with the setting named.
#[test]
fn a_response_information_too_long_for_a_connack_is_refused_at_start() {
    let dir = DataDir::new();
    let long = "r".repeat(65_536);
    let out = std::process::Command::new(e2e::broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .env("BROKER_MQTT__RESPONSE_INFORMATION", &long)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid configuration: mqtt.response_information = 65536 bytes"), "{stderr}");
}
