//! 500 concurrent clients connect, publish at QoS 1 and disconnect while plugins are
//! unloaded and reloaded in a loop: no crash, no QoS 1 message lost, counters exact
//! afterwards, and memory back near where it started. Prints the figures it measured.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use e2e::{counters, options, stat_in, Broker, Client, DataDir};
use rumqttc::QoS;
use serde_json::Value;

const CLIENTS: usize = 500;
const MESSAGES_EACH: usize = 4;
/// Waves of CLIENTS concurrent clients; in each, early finishers leave while late ones are
/// still connecting.
const WAVES: usize = 2;
/// Plugin churn rounds (6 load/unload/reload commands each) while a wave is connected.
const CHURN_PER_WAVE: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_while_plugins_churn() {
    e2e::raise_file_limit();
    let dir = DataDir::with_plugins(
        "{emqx_telemetry, true}.\n{emqx_retainer, true}.\n{emqx_mod_presence, true}.\n\
         {emqx_mod_acl_internal, true}.\n{noop_module, true}.\n",
    );
    // The sink gets bursts of up to 2000 QoS 1 messages, beyond its inflight window: its
    // session queue must hold them (EMQX's default of 1000 would drop the oldest, by design:
    // see mqtt_queue.rs). The connections' end reasons explain a dropped client.
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_TELEMETRY__FIRST_REPORT_DELAY", "1h"),
            ("BROKER_MQTT__MAX_MQUEUE_LEN", "10000"),
            ("RUST_LOG", "info,broker::connection=debug"),
        ],
    );
    let mut sink = Client::connect(&broker, "sink").await;
    sink.subscribe("load/#", QoS::AtLeastOnce).await;
    let rss_start = broker.rss_kib();

    // Churn plugins until the clients are done.
    let done = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicUsize::new(0));
    let churn = {
        let done = done.clone();
        let rounds_done = rounds_done.clone();
        let data_dir = dir.path().to_owned();
        std::thread::spawn(move || {
            let ctl = |args: &[&str]| {
                let out = std::process::Command::new(e2e::broker_exe())
                    .arg("--data-dir")
                    .arg(&data_dir)
                    .arg("ctl")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            };
            let mut rounds = 0;
            while !done.load(Ordering::SeqCst) {
                ctl(&["plugins", "unload", "noop_module"]);
                ctl(&["plugins", "unload", "emqx_mod_presence"]);
                ctl(&["plugins", "reload", "emqx_retainer"]);
                ctl(&["plugins", "load", "noop_module"]);
                ctl(&["plugins", "load", "emqx_mod_presence"]);
                ctl(&["plugins", "reload", "emqx_mod_acl_internal"]);
                rounds += 1;
                rounds_done.store(rounds, Ordering::SeqCst);
            }
            rounds
        })
    };

    // Waves of 500 concurrent clients while the plugins churn.
    let started = std::time::Instant::now();
    let mut waves = 0;
    while waves < WAVES {
        // Each client publishes half its messages, waits (connected) until the plugins have
        // churned CHURN_PER_WAVE more rounds, then publishes the rest and leaves.
        let churned_enough = (waves + 1) * CHURN_PER_WAVE;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let opts = options(&broker, &format!("load-{waves}-{i}"));
                let rounds_done = rounds_done.clone();
                tokio::spawn(async move {
                    let mut client = Client::connect_with(opts).await;
                    for k in 0..MESSAGES_EACH {
                        if k == MESSAGES_EACH / 2 {
                            let deadline = tokio::time::Instant::now() + e2e::DEADLINE;
                            while rounds_done.load(Ordering::SeqCst) < churned_enough {
                                assert!(tokio::time::Instant::now() < deadline, "plugin churn stalled");
                                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            }
                        }
                        client.publish_acked(&format!("load/{i}"), QoS::AtLeastOnce, format!("{waves}-{i}-{k}")).await;
                    }
                    client.disconnect().await;
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a client failed");
        }
        waves += 1;
    }
    done.store(true, Ordering::SeqCst);
    let rounds = churn.join().expect("plugin churn failed");
    let elapsed = started.elapsed();

    let total = waves * CLIENTS * MESSAGES_EACH;
    let got: HashSet<String> =
        sink.receive(total).await.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    assert_eq!(got.len(), total, "every QoS 1 message arrived exactly once");

    e2e::wait_until("all load clients gone", || {
        let stats = counters(&dir);
        (stat_in(&stats, "connections.count") == 1).then_some(stats)
    });
    let stats = counters(&dir);
    assert_eq!(stat_in(&stats, "messages.received"), total as u64);
    assert_eq!(stat_in(&stats, "messages.sent"), total as u64);
    let data: Value = serde_json::from_str(&dir.ctl(&["telemetry", "get", "data"]).ok()).unwrap();
    assert_eq!(data["messages_received"], total as u64, "telemetry agrees");
    assert_eq!(data["messages_sent"], total as u64);
    assert_eq!(data["num_clients"], stat_in(&stats, "connections.max"), "EMQX's num_clients: the peak");

    // Memory, once the clients are gone.
    let rss_end = broker.rss_kib();
    println!(
        "load_churn: {waves} waves of {CLIENTS} concurrent clients x {MESSAGES_EACH} QoS 1 messages in {:.2?} with {rounds} plugin churn rounds; \
         broker RSS {rss_start} KiB at start, {rss_end} KiB after",
        elapsed
    );
    assert!(rounds >= WAVES * CHURN_PER_WAVE, "plugins churned while clients ran");
    assert!(
        rss_end < rss_start + 64 * 1024,
        "memory did not come back near its start: {rss_start} KiB -> {rss_end} KiB"
    );
    assert!(broker.logs().iter().all(|l| !l.contains("panicked")), "no panic");
}
