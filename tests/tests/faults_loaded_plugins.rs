//! A `loaded_plugins` file full of mistakes, an unreadable one, and concurrent `ctl` updates.

use e2e::{Broker, Client, DataDir};
use rumqttc::QoS;

const MESSY: &str = "% comment\r\n\r\n{hook_recorder, true}.   \r\n{hook_recorder, false}.\r\n\
{nonexistent_plugin, true}.\r\n{../../etc/passwd, true}.\n{noop/module, true}.\n  noop_module.  \n{panicky, tru";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_line_is_named_and_the_valid_ones_start() {
    let dir = DataDir::with_plugins(MESSY);
    let events = dir.file("events.jsonl");
    let broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", events.to_str().unwrap())]);
    let expected = [
        "line 4: duplicate entry, ignored: \"{hook_recorder, false}.\"",
        "line 5: unknown plugin nonexistent_plugin: no library at",
        "line 6: a plugin name is [a-z0-9_]+ (never a path): \"{../../etc/passwd, true}.\"",
        "line 7: a plugin name is [a-z0-9_]+ (never a path): \"{noop/module, true}.\"",
        "line 9: missing the final '.': \"{panicky, tru\"",
    ];
    for needle in expected {
        let line = broker.wait_for_log(needle);
        assert!(line.contains("ERROR") && line.contains("loaded_plugins"), "{line}");
    }
    let list = dir.ctl(&["plugins", "list"]).ok();
    assert!(list.contains("Plugin(hook_recorder, description="), "{list}");
    assert!(
        list.lines().any(|l| l == "Plugin(noop_module, description=Test module: does nothing, active=true)"),
        "{list}"
    );
    assert_eq!(list.matches("active=true").count(), 2, "{list}");
    assert!(!list.contains("passwd"));

    // Rewriting keeps every line it could not read, and fixes nothing behind the operator's back.
    dir.ctl(&["plugins", "unload", "noop_module"]).ok();
    let text = dir.read("loaded_plugins");
    assert!(
        text.contains("{../../etc/passwd, true}.") && text.contains("{panicky, tru") && text.contains("% comment"),
        "{text}"
    );
    assert!(text.contains("{noop_module, false}."), "{text}");

    let mut client = Client::connect(&broker, "still-ok").await;
    client.subscribe("t", QoS::AtLeastOnce).await;
}

#[test]
fn an_empty_or_unreadable_file_starts_nothing_and_the_broker_serves() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    assert_eq!(dir.ctl(&["plugins", "list"]).ok().trim(), "");
    broker.stop();

    let dir = DataDir::new();
    std::fs::create_dir(dir.file("loaded_plugins")).unwrap(); // reading it fails
    let broker = Broker::start(&dir, &[]);
    let line = broker.wait_for_log("cannot read");
    assert!(line.contains("loaded_plugins") && line.contains("starting no plugins"), "{line}");
    let stderr = dir.ctl(&["plugins", "load", "noop_module"]).err();
    assert!(stderr.contains("cannot update"), "{stderr}");
}

#[test]
fn concurrent_ctl_updates_never_corrupt_the_file() {
    let header = "% keep me\n\n";
    let dir = DataDir::with_plugins(&format!("{header}{{noop_module, true}}.\n{{hook_recorder, false}}.\n"));
    let events = dir.file("events.jsonl");
    let _broker = Broker::start(&dir, &[("BROKER_HOOK_RECORDER__FILE", events.to_str().unwrap())]);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let data_dir = dir.path().to_owned();
            std::thread::spawn(move || {
                let plugin = if i % 2 == 0 { "noop_module" } else { "hook_recorder" };
                for round in 0..10 {
                    let action = if (round + i) % 2 == 0 { "unload" } else { "load" };
                    let _ = std::process::Command::new(e2e::broker_exe())
                        .arg("--data-dir")
                        .arg(&data_dir)
                        .args(["ctl", "plugins", action, plugin])
                        .output()
                        .unwrap();
                }
            })
        })
        .collect();
    // Read the file while they run: it is always whole.
    for _ in 0..200 {
        let text = dir.read("loaded_plugins");
        assert!(text.starts_with(header), "{text:?}");
        assert_eq!(text.lines().count(), 4, "{text:?}");
        assert!(text.contains("{noop_module, "), "{text:?}");
        assert!(text.contains("{hook_recorder, "), "{text:?}");
    }
    for t in threads {
        t.join().unwrap();
    }
    // And it agrees with what runs.
    let text = dir.read("loaded_plugins");
    let list = dir.ctl(&["plugins", "list"]).ok();
    for plugin in ["noop_module", "hook_recorder"] {
        let enabled = text.contains(&format!("{{{plugin}, true}}."));
        let active = list.lines().any(|l| l.starts_with(&format!("Plugin({plugin},")) && l.contains("active=true"));
        assert_eq!(enabled, active, "{plugin}: {text} / {list}");
    }
}
