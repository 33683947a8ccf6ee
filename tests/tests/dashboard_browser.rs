//! The dashboard in real headless Chromium (Debian's `chromium`, driven by playwright-core):
//! log in, open Plugins, click Stop on `emqx_telemetry`, see it inactive without a page
//! reload; `broker ctl plugins list` and `data/loaded_plugins` agree. A screenshot of the
//! plugins page is written to `target/dashboard-plugins.png`.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{free_port, Broker, DataDir};
use serde_json::Value;

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

#[test]
fn stop_telemetry_from_the_plugins_page() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: apt-get install chromium (.ci/run does)");
    ensure_playwright();

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
    let _ = std::fs::remove_file(&screenshot);

    let output = Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(format!("http://{dashboard}/"))
        .args(["admin", "public"])
        .arg(&screenshot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node is needed for the browser test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).expect("the script's JSON");

    assert_eq!(seen["wrongPassword"], "Wrong username or password.");
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
}
