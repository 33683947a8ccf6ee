//! `emqx_prometheus` with real MQTT clients and a real HTTP client: the figures on `/metrics`
//! follow the traffic, per-plugin hook timings appear, and Debian's `promtool check metrics`
//! accepts the exposition (EMQX's own names draw the naming lints EMQX's exporter draws too,
//! such as counters without `_total`; the families this exporter adds draw none).

use std::io::Write;
use std::process::{Command, Stdio};

use e2e::{Broker, Client, DataDir, DEADLINE};
use rumqttc::{Event, Packet, QoS};

const PLUGINS: &str = "{emqx_prometheus, true}.\n{emqx_retainer, true}.\n";

fn start(dir: &DataDir) -> (Broker, String) {
    let broker = Broker::start(dir, &[("BROKER_PROMETHEUS__BIND", "127.0.0.1:0")]);
    let addr = broker.logged_addr("prometheus exporter listening on http://");
    (broker, format!("http://{addr}/metrics"))
}

/// One scrape: status, Content-Type and body.
async fn scrape(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// The value of the sample `series` (name with its labels, as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series).and_then(|(_, v)| v.parse().ok()))
}

/// Scrapes until `check` accepts the body, or fails after the deadline showing the last one.
async fn scrape_until(url: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, _, body) = scrape(url).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last scrape ({status}):\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs `promtool check metrics` on `text`; fails the test if promtool is missing, finds the
/// text malformed (exit 1), or reports any lint but EMQX's naming ones on EMQX's families.
fn promtool_accepts(text: &str) {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = match Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "{promtool} is missing ({e}): the exposition must be checked by promtool; \
             apt-get install prometheus (.ci/run does)"
        ),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("promtool check metrics: exit {:?}\n{said}", output.status.code());
    // promtool: 0 = clean, 3 = lint problems only, 1 = could not parse the text.
    let code = output.status.code();
    assert!(matches!(code, Some(0) | Some(3)), "promtool rejected the exposition ({code:?}):\n{said}\n{text}");
    // EMQX's names are kept whatever naming lints they draw (no `_total` on counters, a
    // `_count` gauge, units the core may add); the families this exporter adds draw none, and
    // every family has its help text.
    let own = ["emqx_plugin_hook_", "emqx_uptime_seconds", "process_"];
    for problem in said.lines().filter(|l| !l.trim().is_empty()) {
        let (metric, lint) = problem.split_once(' ').unwrap_or((problem, ""));
        let emqx = metric.starts_with("emqx_") && !own.iter().any(|p| metric.starts_with(p));
        assert!(emqx && !lint.contains("help"), "promtool: {problem:?} is not an EMQX naming lint\n{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic_and_promtool_accepts_them() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (broker, url) = start(&dir);

    let (status, content_type, body) = scrape(&url).await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    for family in ["emqx_connections_count gauge", "emqx_messages_received counter", "emqx_uptime_seconds gauge"] {
        assert!(body.contains(&format!("# TYPE {family}\n")), "no {family} in\n{body}");
    }

    const N: usize = 25;
    let mut client = Client::connect(&broker, "prom-1").await;
    client.subscribe("prom/#", QoS::AtLeastOnce).await;
    for i in 0..N {
        client.publish_acked("prom/t", QoS::AtLeastOnce, format!("m{i}")).await;
    }
    client.receive(N).await;

    let body = scrape_until(&url, "the scrape to show 1 client and the messages", |b| {
        sample(b, "emqx_connections_count") == Some(1.0)
            && sample(b, "emqx_messages_received").is_some_and(|v| v >= N as f64)
            && sample(b, "emqx_messages_sent").is_some_and(|v| v >= N as f64)
    })
    .await;
    assert!(body.contains("\nemqx_connections_count 1\n"), "{body}");
    assert!(sample(&body, "emqx_connections_max").is_some_and(|v| v >= 1.0), "{body}");
    assert!(sample(&body, "emqx_subscriptions_count") == Some(1.0), "{body}");
    assert!(sample(&body, "emqx_uptime_seconds").is_some_and(|v| v > 0.0), "{body}");
    assert!(sample(&body, "process_resident_memory_bytes").is_some_and(|v| v > 1e6), "{body}");
    // Every family has HELP and TYPE.
    let families: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
    assert!(families.len() >= 10, "{body}");
    for family in families {
        let name = family.split(' ').next().unwrap();
        assert!(body.contains(&format!("# HELP {name} ")), "{name} has no HELP");
    }
    promtool_accepts(&body);

    // The counters only go up; the gauge follows the client away.
    client.disconnect().await;
    let later = scrape_until(&url, "no client connected", |b| sample(b, "emqx_connections_count") == Some(0.0)).await;
    assert!(sample(&later, "emqx_messages_received") >= sample(&body, "emqx_messages_received"));
    assert_eq!(sample(&later, "emqx_connections_max"), sample(&body, "emqx_connections_max"));

    let (status, _, _) = scrape(&url.replace("/metrics", "/nothing")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_timings_of_a_loaded_plugin() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (broker, url) = start(&dir);
    const N: usize = 10;
    let mut client = Client::connect(&broker, "prom-hooks").await;
    for i in 0..N {
        // Retained: emqx_retainer wants only those (Plugin::RETAINED_ONLY_HOOKS).
        client.client.publish(format!("prom/hooks/{i}"), QoS::AtLeastOnce, true, format!("m{i}")).await.unwrap();
        client.wait_for("PUBACK", |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await;
    }
    // Not retained: not given to emqx_retainer, so not counted.
    client.publish_acked("prom/hooks/plain", QoS::AtLeastOnce, "plain").await;
    // emqx_retainer wants message.publish: the broker times each call into it.
    let series = "{plugin=\"emqx_retainer\",hook=\"message.publish\"}";
    let body = scrape_until(
        &url,
        "emqx_retainer's message.publish timings (Host::metrics().hooks, filled by the broker core)",
        |b| sample(b, &format!("emqx_plugin_hook_calls_total{series}")).is_some_and(|v| v >= N as f64),
    )
    .await;
    let calls = sample(&body, &format!("emqx_plugin_hook_calls_total{series}"));
    assert_eq!(calls, Some(N as f64), "the retained messages, not the plain one");
    let seconds = sample(&body, &format!("emqx_plugin_hook_seconds_total{series}")).expect("hook seconds");
    assert!(seconds > 0.0 && seconds < 60.0, "{seconds}");
    assert!(body.contains("# TYPE emqx_plugin_hook_calls_total counter\n"));
    assert!(body.contains("# TYPE emqx_plugin_hook_seconds_total counter\n"));
    promtool_accepts(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_fails_the_plugin_not_the_broker_and_unload_closes_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = DataDir::with_plugins(PLUGINS);
    let broker = Broker::start(&dir, &[("BROKER_PROMETHEUS__BIND", port.as_str())]);
    let line = broker.wait_for_log("cannot listen on");
    assert!(line.contains("emqx_prometheus") && line.contains(&port), "{line}");
    // The broker still serves MQTT.
    Client::connect(&broker, "prom-after").await.disconnect().await;
    drop(taken);

    // Started again on a free port, then unloaded: the port closes.
    let dir = DataDir::with_plugins(PLUGINS);
    let (_broker, url) = start(&dir);
    assert_eq!(scrape(&url).await.0, 200);
    let out = dir.ctl(&["plugins", "unload", "emqx_prometheus"]).ok();
    assert!(out.contains("emqx_prometheus"), "{out}");
    assert!(reqwest::get(&url).await.is_err(), "nothing listens after unload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_reports_the_same_counters_in_emqx_shape() {
    let dir = DataDir::with_plugins("{emqx_management, true}.\n{emqx_prometheus, true}.\n");
    let broker = Broker::start(
        &dir,
        &[("BROKER_MANAGEMENT__LISTEN", "127.0.0.1:0"), ("BROKER_PROMETHEUS__BIND", "127.0.0.1:0")],
    );
    let api = broker.logged_addr("management API listening on http://");
    let url = format!("http://{}/metrics", broker.logged_addr("prometheus exporter listening on http://"));
    const N: usize = 5;
    let mut client = Client::connect(&broker, "prom-api").await;
    for i in 0..N {
        client.publish_acked("prom/api", QoS::AtLeastOnce, format!("m{i}")).await;
    }
    client.disconnect().await;
    let body = scrape_until(&url, "the messages", |b| sample(b, "emqx_messages_received") == Some(N as f64)).await;

    let answer: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{api}/api/v4/metrics"))
        .basic_auth("admin", Some("public"))
        .send()
        .await
        .expect("API reachable")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["code"], 0, "{answer}");
    let node = &answer["data"][0];
    assert_eq!(node["node"], "emqx@127.0.0.1", "{answer}");
    let metrics = node["metrics"].as_object().expect("metrics object");
    assert_eq!(metrics["messages.received"], N as u64, "{answer}");
    // Every counter the API lists is on /metrics under EMQX's exporter name.
    for name in metrics.keys() {
        let family = format!("# TYPE emqx_{} counter\n", name.replace('.', "_"));
        assert!(body.contains(&family), "{name} missing from /metrics:\n{body}");
    }
}
