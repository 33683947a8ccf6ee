//! `broker ctl plugins ...` against the real broker: unload under traffic, persistence to
//! `data/loaded_plugins`, restart, reload, and the error cases.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use e2e::{recorded_events, wait_until, Broker, Client, DataDir};
use rumqttc::QoS;

const PLUGINS: &str = "% test plugins\n\n{hook_recorder, true}.\n";

fn recorder_env(dir: &DataDir) -> (String, String) {
    ("BROKER_HOOK_RECORDER__FILE".to_owned(), dir.file("events.jsonl").to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_under_qos1_traffic_loses_nothing_and_stops_the_plugin() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (k, v) = recorder_env(&dir);
    let broker = Broker::start(&dir, &[(&k, &v)]);
    const TOTAL: usize = 400;

    let mut sub = Client::connect(&broker, "counter").await;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&broker, "loader").await;
    let acked = Arc::new(AtomicUsize::new(0));

    // Unload from another thread once a quarter of the messages are through.
    let unloader = {
        let acked = acked.clone();
        let data_dir = dir.path().to_owned();
        std::thread::spawn(move || {
            wait_until("a quarter of the messages acked", || (acked.load(Ordering::SeqCst) >= TOTAL / 4).then_some(()));
            let out = std::process::Command::new(e2e::broker_exe())
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["ctl", "plugins", "unload", "hook_recorder"])
                .output()
                .unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), acked.load(Ordering::SeqCst))
        })
    };
    // Publish at least TOTAL, and on until the unload has returned and TOTAL / 4 more went
    // after it: traffic before, during and after the unload, however fast either side is.
    let mut total = 0;
    let mut after_unload = 0;
    while total < TOTAL || after_unload < TOTAL / 4 {
        publisher.publish_acked("load/x", QoS::AtLeastOnce, format!("{total}")).await;
        acked.fetch_add(1, Ordering::SeqCst);
        total += 1;
        if unloader.is_finished() {
            after_unload += 1;
        }
    }
    let (ok, stdout, acked_at_unload) = unloader.join().unwrap();
    assert!(ok, "unload failed");
    assert_eq!(stdout.trim(), "Plugin hook_recorder unloaded successfully.");
    assert!(acked_at_unload < total, "the unload happened while messages were flowing");

    let got: BTreeSet<usize> =
        sub.receive(total).await.iter().map(|p| String::from_utf8_lossy(&p.payload).parse().unwrap()).collect();
    assert_eq!(got, (0..total).collect(), "every QoS 1 message arrived");

    // The plugin saw messages before the unload and none after.
    let file = dir.file("events.jsonl");
    let seen: Vec<usize> = recorded_events(&file)
        .iter()
        .filter(|e| e["hook"] == "message.publish")
        .map(|e| e["payload"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(!seen.is_empty() && seen.len() < total, "recorded {} of {total}", seen.len());
    let last_seen = *seen.iter().max().unwrap();
    publisher.publish_acked("load/x", QoS::AtLeastOnce, "after").await;
    sub.receive(1).await;
    let events = recorded_events(&file);
    assert!(events.iter().all(|e| e["payload"] != "after"), "a stopped plugin got an event");
    assert!(last_seen < total);

    assert_eq!(dir.read("loaded_plugins"), "% test plugins\n\n{hook_recorder, false}.\n");
    let list = dir.ctl(&["plugins", "list"]).ok();
    assert!(list.contains("Plugin(hook_recorder, description=Test plugin: records hook events to a file,"), "{list}");
    assert!(list.contains("active=false)"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_persists_across_restart_and_reload_brings_it_back() {
    let dir = DataDir::with_plugins(PLUGINS);
    let (k, v) = recorder_env(&dir);
    let broker = Broker::start(&dir, &[(&k, &v)]);
    broker.wait_for_log("plugin started plugin=\"hook_recorder\"");
    dir.ctl(&["plugins", "unload", "hook_recorder"]).ok();
    broker.stop();

    let broker = Broker::start(&dir, &[(&k, &v)]);
    let list = dir.ctl(&["plugins", "list"]).ok();
    assert!(list.contains("active=false"), "stays off after restart: {list}");
    assert!(!broker.logs().iter().any(|l| l.contains("plugin started")), "no plugin started");

    let out = dir.ctl(&["plugins", "reload", "hook_recorder"]).ok();
    assert_eq!(out.trim(), "Plugin hook_recorder reloaded successfully.");
    assert!(dir.ctl(&["plugins", "list"]).ok().contains("active=true"));
    assert_eq!(dir.read("loaded_plugins"), "% test plugins\n\n{hook_recorder, true}.\n");

    // And it works: it records a new client.
    let client = Client::connect(&broker, "after-reload").await;
    let file = dir.file("events.jsonl");
    wait_until("the reloaded plugin to record a connection", || {
        recorded_events(&file).iter().any(|e| e["client_id"] == "after-reload").then_some(())
    });
    client.disconnect().await;

    // Reload of a running plugin restarts it in place.
    dir.ctl(&["plugins", "reload", "hook_recorder"]).ok();
    assert!(dir.ctl(&["plugins", "list"]).ok().contains("active=true"));
}

#[test]
fn ctl_errors_are_one_clear_line_with_a_failure_status() {
    let dir = DataDir::with_plugins(PLUGINS);
    let no_broker = dir.ctl(&["plugins", "list"]).err();
    assert_eq!(
        no_broker.trim(),
        format!("error: no broker running at {} (start one with `broker`)", dir.file("broker.sock").display())
    );

    let (k, v) = recorder_env(&dir);
    let broker = Broker::start(&dir, &[(&k, &v)]);
    let cases: [(&[&str], &str); 6] = [
        (&["plugins", "load", "no_such_plugin"], "error: unknown plugin no_such_plugin: no library at "),
        (&["plugins", "load", "hook_recorder"], "error: plugin hook_recorder is already loaded"),
        (&["plugins", "unload", "emqx_retainer"], "error: plugin emqx_retainer is not loaded"),
        (&["plugins", "load", "../../etc/passwd"], "error: invalid plugin name \"../../etc/passwd\""),
        (&["plugins", "frobnicate"], "error: usage: broker ctl plugins list [--verbose | --json] | load NAME"),
        (&["nonsense"], "error: unknown command \"nonsense\""),
    ];
    for (args, expected) in cases {
        let stderr = dir.ctl(args).err();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
    // Failed commands changed nothing.
    assert_eq!(dir.read("loaded_plugins"), PLUGINS);
    broker.stop();
    assert!(dir.ctl(&["plugins", "list"]).err().contains("no broker running"));
}

#[test]
fn load_appends_a_plugin_missing_from_the_file() {
    let dir = DataDir::with_plugins("% nothing yet\n");
    let (k, v) = recorder_env(&dir);
    let _broker = Broker::start(&dir, &[(&k, &v)]);
    assert_eq!(dir.ctl(&["plugins", "list"]).ok().trim(), "");
    dir.ctl(&["plugins", "load", "hook_recorder"]).ok();
    assert_eq!(dir.read("loaded_plugins"), "% nothing yet\n{hook_recorder, true}.\n");
    // EMQX's line exactly (scripts parse it); the rest only with --verbose.
    let list = dir.ctl(&["plugins", "list"]).ok();
    assert_eq!(list, "Plugin(hook_recorder, description=Test plugin: records hook events to a file, active=true)\n");
    for flag in ["--verbose", "-v"] {
        let list = dir.ctl(&["plugins", "list", flag]).ok();
        assert_eq!(
            list.trim(),
            "Plugin(hook_recorder, description=Test plugin: records hook events to a file, active=true, \
             version=0.1.0, kind=plugin, state=running)"
        );
    }
}

/// `--plugins-dir` / `BROKER_PLUGINS_DIR` choose where libraries are found, and `reload`
/// after the file changed maps a fresh copy of it (the old one stays mapped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_dir_setting_and_reload_of_a_replaced_library() {
    let plugins = tempfile::tempdir().unwrap();
    let library = plugins.path().join("libhook_recorder.so");
    std::fs::copy(e2e::bin_dir().join("libhook_recorder.so"), &library).unwrap();
    let dir = DataDir::with_plugins(PLUGINS);
    let (k, v) = recorder_env(&dir);
    let plugins_dir = plugins.path().to_str().unwrap();

    // From the environment...
    let broker = Broker::start(&dir, &[(&k, &v), ("BROKER_PLUGINS_DIR", plugins_dir)]);
    broker.wait_for_log(&format!("plugins_dir={plugins_dir}"));
    assert!(dir.ctl(&["plugins", "list"]).ok().contains("active=true"));
    broker.stop();

    // ...and from the flag, which beats the environment.
    let broker = Broker::start_with_args(
        &dir,
        &[(&k, &v), ("BROKER_PLUGINS_DIR", "/nonexistent")],
        &["--plugins-dir", plugins_dir],
    );
    assert!(dir.ctl(&["plugins", "list"]).ok().contains("active=true"));

    // Replace the file (a new inode, as a rebuild makes), then reload.
    std::fs::remove_file(&library).unwrap();
    std::fs::copy(e2e::bin_dir().join("libhook_recorder.so"), &library).unwrap();
    dir.ctl(&["plugins", "reload", "hook_recorder"]).ok();
    let client = Client::connect(&broker, "after-replace").await;
    let file = dir.file("events.jsonl");
    wait_until("the replaced library to record a connection", || {
        recorded_events(&file).iter().any(|e| e["client_id"] == "after-replace").then_some(())
    });
    client.disconnect().await;

    // A missing library is a clear error, and nothing else changes.
    std::fs::remove_file(&library).unwrap();
    let stderr = dir.ctl(&["plugins", "reload", "hook_recorder"]).err();
    assert_eq!(stderr.trim(), format!("error: unknown plugin hook_recorder: no library at {}", library.display()));
    assert!(dir.ctl(&["plugins", "list"]).ok().contains("active=true"), "the running instance was kept");
    assert!(broker.logs().iter().all(|l| !l.contains("panicked")));
}

/// EMQX 4.x lists its modules apart (`emqx_ctl modules list`): one
/// `Module(NAME, description=TEXT, active=BOOL)` line per module-kind plugin, plugins not
/// among them; `modules unload|load NAME` works on modules only and says so as EMQX does.
#[test]
fn modules_are_listed_and_managed_as_emqx_modules() {
    let dir = DataDir::with_plugins("{emqx_mod_presence, true}.\n{emqx_retainer, true}.\n");
    let _broker = Broker::start(&dir, &[]);
    assert_eq!(
        dir.ctl(&["modules", "list"]).ok().trim_end(),
        "Module(emqx_mod_presence, description=EMQ X Presence Module, active=true)"
    );
    assert_eq!(
        dir.ctl(&["modules", "unload", "emqx_mod_presence"]).ok().trim_end(),
        "Module emqx_mod_presence unloaded successfully."
    );
    assert!(dir.ctl(&["modules", "list"]).ok().contains("active=false"));
    assert_eq!(
        dir.ctl(&["modules", "load", "emqx_mod_presence"]).ok().trim_end(),
        "Module emqx_mod_presence loaded successfully."
    );
    let err = dir.ctl(&["modules", "unload", "emqx_retainer"]).err();
    assert!(err.contains("emqx_retainer is not a module"), "{err}");
    assert!(dir
        .ctl(&["plugins", "list"])
        .ok()
        .contains("Plugin(emqx_retainer, description=EMQ X Retainer, active=true)"));
}

/// `broker ctl ... | head -1`: a reader that stops early gets what it read, and ctl ends
/// quietly, without a panic about a broken pipe.
#[test]
fn ctl_output_into_a_closed_pipe_is_no_panic() {
    use std::process::{Command, Stdio};
    let dir = DataDir::with_plugins(PLUGINS);
    let (k, v) = recorder_env(&dir);
    let _broker = Broker::start(&dir, &[(k.as_str(), v.as_str())]);
    assert!(dir.ctl(&["plugins", "list"]).ok().contains("hook_recorder"), "there is output to write");
    let mut ctl = Command::new(e2e::broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["ctl", "plugins", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(ctl.stdout.take()); // the reader is gone before ctl writes
    let out = ctl.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{:?}: {stderr}", out.status);
}

/// A `%` comment after an entry in `loaded_plugins` is allowed, as EMQX's `file:consult`
/// allows it: the plugin starts, and a rewrite by `ctl plugins unload` keeps the comment.
#[test]
fn a_comment_after_an_entry_in_loaded_plugins_is_allowed_and_kept() {
    let dir = DataDir::with_plugins("{hook_recorder, true}. % records every event\n");
    let (k, v) = recorder_env(&dir);
    let broker = Broker::start(&dir, &[(k.as_str(), v.as_str())]);
    broker.wait_for_log("plugin started plugin=\"hook_recorder\"");
    dir.ctl(&["plugins", "unload", "hook_recorder"]).ok();
    let file = std::fs::read_to_string(dir.file("loaded_plugins")).unwrap();
    assert_eq!(file, "{hook_recorder, false}. % records every event\n");
}

/// While an authentication plugin is reloaded (`ctl plugins reload`), logins are refused, not
/// let through: between stopping it and starting it again a closed gate stands in for it on
/// `client.authenticate`. Here the `gatekeeper` test plugin, which
/// denies `mallory`, is kept starting (its `init` waits on a file) while `mallory` and then
/// `alice` try to connect: both are refused (CONNACK 4, as any denied login), where `mallory` was let in as an anonymous
/// loopback client before. Once it runs again, `alice` is in and `mallory` still out.
#[test]
fn a_reloading_authentication_plugin_lets_nobody_in_meanwhile() {
    use e2e::raw::{connect4, Raw, V4};
    use rumqttc::ConnectReturnCode;
    let dir = DataDir::with_plugins("{gatekeeper, true}.\n");
    let hold = dir.file("hold_init");
    dir.write("broker.toml", &format!("[gatekeeper]\ndeny_users = [\"mallory\"]\nhold_init_while = {hold:?}\n"));
    let broker = Broker::start(&dir, &[]);
    let login = |user: &str| {
        let mut packet = connect4(&format!("c-{user}"), true);
        if let rumqttc::Packet::Connect(connect) = &mut packet {
            connect.login = Some(rumqttc::Login::new(user, "pw"));
        }
        Raw::<V4>::connect(broker.addr, &packet).1.code
    };
    assert_eq!(login("mallory"), ConnectReturnCode::BadUserNamePassword, "denied while it runs");

    std::fs::write(&hold, b"").unwrap();
    let reload = {
        let dir_path = dir.path().to_owned();
        std::thread::spawn(move || {
            std::process::Command::new(e2e::broker_exe())
                .arg("--data-dir")
                .arg(dir_path)
                .args(["ctl", "plugins", "reload", "gatekeeper"])
                .output()
                .unwrap()
        })
    };
    broker.wait_for_log("plugin stopped, to be started again plugin=\"gatekeeper\"");
    assert_eq!(login("mallory"), ConnectReturnCode::BadUserNamePassword, "mallory, during the reload");
    assert_eq!(login("alice"), ConnectReturnCode::BadUserNamePassword, "alice too: the gate is closed");
    std::fs::remove_file(&hold).unwrap();
    assert!(reload.join().unwrap().status.success());
    assert_eq!(login("alice"), ConnectReturnCode::Success, "alice, once it runs again");
    assert_eq!(login("mallory"), ConnectReturnCode::BadUserNamePassword);
}
