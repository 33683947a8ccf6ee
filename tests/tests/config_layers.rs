//! Settings come from defaults, then `data/broker.toml` (or `--config`), then `BROKER_*`
//! environment variables, then flags.

use e2e::{Broker, Client, DataDir};
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
