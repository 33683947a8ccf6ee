//! The dashboard in real headless Chromium (Debian's `chromium`, driven by playwright-core):
//! log in, see the overview's traffic chart move while real MQTT clients publish, open
//! Plugins, click Stop on `emqx_telemetry`, see it inactive without a page reload;
//! `broker ctl plugins list` and `data/loaded_plugins` agree. Screenshots of the overview
//! and the plugins page are written to `target/dashboard-overview.png` and
//! `target/dashboard-plugins.png`. The WebSocket page connects to the broker's ws listener,
//! subscribes, publishes, and sees its own message; mosquitto_sub sees it too
//! (`target/dashboard-websocket.png`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e::{free_port, mosquitto, recorded_events, wait_until, Broker, Client, DataDir};
use rumqttc::QoS;
use serde_json::Value;

/// Messages published while the page watches its chart.
const BURST: usize = 50;

/// Publishes [`BURST`] QoS 1 messages to a subscriber (so both `messages.received` and
/// `messages.sent` move), and waits until all arrived.
async fn burst(broker: &Broker) {
    let mut subscriber = Client::connect(broker, "chart-sub").await;
    subscriber.subscribe("chart/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(broker, "chart-pub").await;
    for i in 0..BURST {
        publisher.publish_acked("chart/t", QoS::AtLeastOnce, format!("m{i}")).await;
    }
    subscriber.receive(BURST).await;
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Installs playwright-core (from the lock file, no browser download) if it is missing.
fn ensure_playwright() {
    if browser_dir().join("node_modules/playwright-core").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(browser_dir())
        .status()
        .expect("npm is needed for the browser test (Node.js)");
    assert!(status.success(), "npm ci failed in {}", browser_dir().display());
}

/// Debian's Chromium (or `$CHROMIUM`), checked, with playwright-core installed: what every
/// browser test needs first.
fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: apt-get install chromium (.ci/run does)");
    ensure_playwright();
    chromium
}

/// Runs `tests/browser/<script>` with `args` in Node against `chromium`, calling `on_ready`
/// when the script prints `READY`; fails the test if the script fails, and returns the JSON
/// of its last line (what it saw).
fn run_script(script: &str, args: &[String], chromium: &str, mut on_ready: impl FnMut()) -> Value {
    let mut child = Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is needed for the browser test");
    let mut stdout = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.expect("the script's output");
        if line == "READY" {
            on_ready();
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let output = child.wait_with_output().expect("the script ends");
    assert!(output.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("the script's JSON ({e}): {stdout}"))
}

#[test]
fn stop_telemetry_from_the_plugins_page() {
    let chromium = chromium();

    let dir = DataDir::with_plugins("{emqx_management, true}.\n{emqx_dashboard, true}.\n{emqx_telemetry, true}.\n");
    let api = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MANAGEMENT__LISTEN", api.as_str()),
            ("BROKER_DASHBOARD__LISTEN", "127.0.0.1:0"),
            ("BROKER_DASHBOARD__API", &format!("http://{api}")),
        ],
    );
    let dashboard = broker.logged_addr("dashboard listening on http://");
    let screenshot = e2e::bin_dir().join("../dashboard-plugins.png");
    let overview = e2e::bin_dir().join("../dashboard-overview.png");
    let _ = std::fs::remove_file(&screenshot);
    let _ = std::fs::remove_file(&overview);

    // The script says READY when the chart has its first rate; then the clients publish.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let args = [
        format!("http://{dashboard}/"),
        "admin".into(),
        "public".into(),
        screenshot.display().to_string(),
        overview.display().to_string(),
    ];
    let seen = run_script("dashboard.mjs", &args, &chromium, || runtime.block_on(burst(&broker)));

    // The chart's figures moved with the traffic.
    let figure = |when: &str, key: &str| -> f64 {
        seen[when][key].as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{when}.{key} in {seen}"))
    };
    assert!(figure("chartIn", "rateIn") > 0.0 && figure("chartOut", "rateOut") > 0.0, "{seen}");
    assert!(figure("chartOut", "received") >= figure("chartBefore", "received") + BURST as f64, "{seen}");
    assert!(figure("chartOut", "sent") >= figure("chartBefore", "sent") + BURST as f64, "{seen}");
    assert!(figure("chartIn", "textIn") > 0.0, "the rate is written beside the chart: {seen}");

    assert_eq!(seen["wrongPassword"], "Wrong username or password.");
    // The overview reads EMQX's /brokers: the node, and uptime in EMQX's words.
    assert_eq!(seen["node"], "emqx@127.0.0.1");
    assert!(seen["uptime"].as_str().unwrap().ends_with(" seconds"), "{seen}");
    // And lists the nodes from /nodes (one node alone: this one, running).
    let nodes = seen["nodes"].as_array().unwrap_or_else(|| panic!("no node list: {seen}"));
    assert_eq!(nodes.len(), 1, "{seen}");
    assert_eq!(nodes[0]["node"], "emqx@127.0.0.1");
    assert_eq!(nodes[0]["cells"][1], "Running", "{seen}");
    assert_eq!(seen["before"], "active");
    assert_eq!(seen["after"], "inactive");
    assert_eq!(seen["button"], "Start");
    assert_eq!(seen["pageReloads"], 0, "the table updated without reloading the page");
    assert!(seen["selfStop"].as_str().unwrap().contains("cannot be stopped from its own page"), "{seen}");
    assert_eq!(seen["dashboardStatus"], "active");

    let list = dir.ctl(&["plugins", "list"]).ok();
    assert!(list.lines().any(|l| l == "Plugin(emqx_telemetry, description=EMQ X Telemetry, active=false)"), "{list}");
    assert!(dir.read("loaded_plugins").contains("{emqx_telemetry, false}."));
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
    let png = std::fs::read(&overview).expect("overview screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
}

#[test]
fn the_websocket_page_talks_mqtt_to_the_ws_listener() {
    let chromium = chromium();

    // hook_recorder tells when mosquitto_sub's subscription is in place.
    let dir = DataDir::with_plugins("{emqx_management, true}.\n{emqx_dashboard, true}.\n{hook_recorder, true}.\n");
    let events = dir.file("events.jsonl");
    let api = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MANAGEMENT__LISTEN", api.as_str()),
            ("BROKER_DASHBOARD__LISTEN", "127.0.0.1:0"),
            ("BROKER_DASHBOARD__API", &format!("http://{api}")),
            ("BROKER_LISTENER__WS__BIND", "127.0.0.1:0"),
            ("BROKER_HOOK_RECORDER__FILE", events.to_str().unwrap()),
        ],
    );
    let dashboard = broker.logged_addr("dashboard listening on http://");
    let ws = broker.logged_addr(" ws listener on ");
    let screenshot = e2e::bin_dir().join("../dashboard-websocket.png");
    let _ = std::fs::remove_file(&screenshot);

    let watcher = mosquitto("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-t", "browser/echo", "-i", "watcher"])
        .args(["-C", "1", "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("mosquitto_sub subscribed to browser/echo", || {
        recorded_events(&events)
            .iter()
            .any(|e| e["hook"] == "session.subscribed" && e["client_id"] == "watcher")
            .then_some(())
    });

    // The script says READY when the page saw its own message; then a TCP client publishes.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let args = [
        format!("http://{dashboard}/"),
        "admin".into(),
        "public".into(),
        ws.port().to_string(),
        screenshot.display().to_string(),
    ];
    let seen = run_script("websocket.mjs", &args, &chromium, || {
        runtime.block_on(async {
            let mut client = Client::connect(&broker, "tcp-publisher").await;
            client.publish_acked("browser/from-tcp", QoS::AtLeastOnce, "hello from tcp").await;
            client.disconnect().await;
        })
    });

    // Prefilled as EMQX's page is: this host, port 8083, path /mqtt.
    assert_eq!(seen["prefilled"]["host"], "127.0.0.1", "{seen}");
    assert_eq!(seen["prefilled"]["port"], "8083", "{seen}");
    assert_eq!(seen["prefilled"]["path"], "/mqtt", "{seen}");
    assert_eq!(seen["status"], "Connected", "{seen}");
    let own = serde_json::json!({"topic": "browser/echo", "payload": "hello from the browser"});
    assert_eq!(seen["own"], serde_json::json!([own]), "the page lists its own message");
    let all = seen["all"].as_array().unwrap();
    assert!(all.contains(&serde_json::json!({"topic": "browser/from-tcp", "payload": "hello from tcp"})), "{seen}");
    assert_eq!(seen["after"], "Disconnected");

    let heard = watcher.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&heard.stdout).trim(), "hello from the browser", "mosquitto_sub saw it");
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
}

#[test]
fn another_origin_cannot_read_the_api_and_the_page_is_locked_down() {
    let chromium = chromium();

    let dir = DataDir::with_plugins("{emqx_management, true}.\n{emqx_dashboard, true}.\n");
    let api = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start(
        &dir,
        &[
            ("BROKER_MANAGEMENT__LISTEN", api.as_str()),
            ("BROKER_MANAGEMENT__PASSWORD", "s3cret"),
            ("BROKER_MANAGEMENT__UNSUCCESSFUL_LOGIN_MAX_ATTEMPTS", "2"),
            ("BROKER_DASHBOARD__LISTEN", "127.0.0.1:0"),
            ("BROKER_DASHBOARD__API", &format!("http://{api}")),
        ],
    );
    let dashboard = broker.logged_addr("dashboard listening on http://");
    let args = [format!("http://{dashboard}/"), format!("http://{api}"), "admin".into(), "s3cret".into()];
    let seen = run_script("cross_origin.mjs", &args, &chromium, || {});

    // The other origin's page can fetch its own origin, but not read the API: CORS stops it.
    assert_eq!(seen["ownOrigin"], 200, "{seen}");
    assert_eq!(seen["withCookies"], serde_json::json!({"error": "TypeError"}), "{seen}");
    assert_eq!(seen["withHeader"], serde_json::json!({"error": "TypeError"}), "{seen}");
    assert!(seen["corsBlocked"].as_u64().unwrap() >= 2, "{seen}");

    // The dashboard's page: strict headers, no violation while it works, HTTP to another
    // origin refused by the CSP, WebSockets allowed (the MQTT page).
    let headers = &seen["headers"];
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
         object-src 'none'"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["access-control-allow-origin"], Value::Null);
    assert_eq!(seen["violationsWhileWorking"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["fetchElsewhere"], "TypeError", "{seen}");
    assert!(seen["violationsAfterFetch"][0].as_str().unwrap().starts_with("connect-src http://127.0.0.1:"), "{seen}");
    assert_eq!(seen["webSocket"], "allowed", "{seen}");
    // The credentials are kept for this tab only: sessionStorage, no localStorage, no cookie.
    assert_eq!(seen["credentialsIn"], serde_json::json!({"sessionStorage": true, "localStorage": 0, "cookies": ""}));

    // Two wrong passwords lock the dashboard's address out; the form says for how long.
    assert_eq!(seen["lockout"][0], "Wrong username or password.", "{seen}");
    assert_eq!(seen["lockout"][1], "Wrong username or password.", "{seen}");
    let locked = seen["lockout"][2].as_str().unwrap();
    assert!(locked.starts_with("Too many failed logins: try again in "), "{seen}");
    let secs: u64 = locked
        .trim_start_matches("Too many failed logins: try again in ")
        .trim_end_matches(" seconds.")
        .parse()
        .unwrap();
    assert!((1..=600).contains(&secs), "{locked}");
    broker.wait_for_log("management API: 2 failed logins from 127.0.0.1 within 5m; refusing it (HTTP 429) for 10m");
}
