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

/// `broker.network_threads` sets how many threads serve the network (0, the default: one a
/// core the broker may run on); the broker says how many at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_threads_sets_how_many_threads_serve_the_network() {
    let workers = |broker: &Broker| {
        std::fs::read_dir(format!("/proc/{}/task", broker.pid()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "tokio-rt-worker")
            .count()
    };
    // Tokio's default, which the broker keeps: TOKIO_WORKER_THREADS, else the cores it may use.
    let cores = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().unwrap().get());
    for (setting, expected) in [(None, cores), (Some("1"), 1), (Some("3"), 3)] {
        let dir = DataDir::with_plugins("");
        let env: Vec<_> = setting.map(|n| ("BROKER_BROKER__NETWORK_THREADS", n)).into_iter().collect();
        let broker = Broker::start(&dir, &env);
        broker.wait_for_log(&format!("{expected} network threads"));
        // No plugin runs a blocking hook chain, so every thread of that name is a worker.
        assert_eq!(workers(&broker), expected, "network_threads = {setting:?}");
        let mut sub = Client::connect(&broker, "sub").await;
        sub.subscribe("t/#", QoS::AtLeastOnce).await;
        let mut publisher = Client::connect(&broker, "pub").await;
        for i in 0..20 {
            publisher.publish_acked(&format!("t/{i}"), QoS::AtLeastOnce, "x").await;
        }
        assert_eq!(sub.receive(20).await.len(), 20, "network_threads = {setting:?}");
        broker.stop();
    }
}

/// The broker's stderr when it refuses to start with `toml` as its config file and `env`.
fn refused(toml: &str, env: &[(&str, &str)]) -> String {
    let dir = DataDir::with_plugins("");
    dir.write("broker.toml", toml);
    let out = std::process::Command::new(e2e::broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {toml:?} and {env:?}");
    let file = dir.file("broker.toml");
    String::from_utf8_lossy(&out.stderr).replace(file.to_str().unwrap(), "broker.toml")
}

/// A rate limit that is not EMQX's `AMOUNT,PERIOD` is refused at start, naming the setting.
#[test]
fn a_malformed_rate_limit_is_refused_naming_it() {
    let out = refused("", &[("BROKER_MQTT__RATE_LIMIT__CONN_BYTES_IN", "100TB,1s")]);
    assert!(out.contains("mqtt.rate_limit.conn_bytes_in") && out.contains("100TB"), "{out}");
    let out = refused("[mqtt.rate_limit]\nconn_messages_in = \"100\"\n", &[]);
    assert!(out.contains("mqtt.rate_limit.conn_messages_in") && out.contains("AMOUNT,PERIOD"), "{out}");
}

/// A setting the broker does not have (a misspelt name, most often) is refused at start with
/// the setting, where it was given and the name it is likely a misspelling of, as EMQX and
/// mosquitto refuse one, instead of being ignored while the broker runs with the default:
/// in a section, in the environment, among the TLS settings of `[listener.ssl]` (which serde
/// cannot check by itself) and at the top level. A table the broker does not know is a
/// plugin's and is not refused (the other tests give plugins tables).
#[test]
fn a_setting_the_broker_does_not_have_is_refused_with_its_name() {
    assert_eq!(
        refused("[mqtt]\nmax_inflihgt = 5\n", &[]).trim(),
        "broker: invalid configuration: unknown setting mqtt.max_inflihgt in broker.toml (did you mean mqtt.max_inflight?)"
    );
    assert_eq!(
        refused("", &[("BROKER_MQTT__MAX_INFLIHGT", "5")]).trim(),
        "broker: invalid configuration: unknown setting mqtt.max_inflihgt in the environment \
         (BROKER_MQTT__MAX_INFLIHGT) (did you mean mqtt.max_inflight?)"
    );
    assert_eq!(
        refused("[listener.ssl]\ncertfil = \"cert.pem\"\n", &[]).trim(),
        "broker: invalid configuration: unknown setting listener.ssl.certfil in broker.toml \
         (did you mean listener.ssl.certfile?)"
    );
    assert_eq!(
        refused("node_nmae = \"a@b\"\n[broker]\n", &[]).trim(),
        "broker: invalid configuration: unknown setting node_nmae in broker.toml (did you mean node_name?)"
    );
    assert_eq!(
        refused("[persistence]\nsomething_else = 1\n", &[]).trim(),
        "broker: invalid configuration: unknown setting persistence.something_else in broker.toml"
    );
}

/// The configuration block of the README is a configuration the broker starts with: every
/// setting it shows is one the broker has, in the section it has it in.
#[test]
fn the_readme_configuration_block_is_accepted() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = &readme[readme.find("\n## Configuration").expect("a Configuration section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let dir = DataDir::with_plugins("");
    dir.write("broker.toml", block);
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("mqtt listener on");
}

/// A table no plugin in the plugins directory reads (a misspelt table name) is not an error
/// (a plugin may be added later) but is named at start, with the likely one.
#[test]
fn a_table_no_plugin_reads_is_named_at_start() {
    let dir = DataDir::with_plugins("");
    dir.write("broker.toml", "[telemtry]\nenabled = false\n");
    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("config table [telemtry] is read by no plugin in");
    broker.wait_for_log("it is ignored; did you mean [telemetry]?");
}

/// A `BROKER_*` variable that names no setting at the top level is not refused, only logged:
/// Kubernetes gives every container `BROKER_PORT=tcp://...` and the like when a Service is
/// named `broker`. (One that names a section's setting, `BROKER_MQTT__...`, is refused.)
#[test]
fn kubernetes_service_variables_are_ignored_and_named() {
    let dir = DataDir::with_plugins("");
    let env = [("BROKER_PORT", "tcp://10.96.0.12:1883"), ("BROKER_SERVICE_HOST", "10.96.0.12")];
    let broker = Broker::start(&dir, &env);
    broker.wait_for_log("in the environment name no setting and are ignored");
    let line = broker.logs().into_iter().find(|l| l.contains("name no setting")).unwrap();
    assert!(line.contains("BROKER_PORT") && line.contains("BROKER_SERVICE_HOST"), "{line}");
}
