//! The ctl socket and the data directory: permissions, stale sockets, a second broker, and
//! malformed requests.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use e2e::{broker_exe, Broker, Client, DataDir};
use rumqttc::QoS;

#[test]
fn the_socket_is_private_and_a_stale_one_is_replaced() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let mode = std::fs::metadata(dir.file("broker.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "ctl socket mode {mode:o}");
    broker.kill(); // leaves the socket file behind
    assert!(dir.file("broker.sock").exists());
    assert!(dir.ctl(&["plugins", "list"]).err().contains("no broker running at"));

    let broker = Broker::start(&dir, &[]);
    broker.wait_for_log("removed stale ctl socket");
    dir.ctl(&["plugins", "list"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let dir = DataDir::with_plugins("");
    let broker = Broker::start(&dir, &[]);
    let second = std::process::Command::new(broker_exe())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let canonical = dir.path().canonicalize().unwrap();
    assert!(stderr.contains(&format!("is already running on data directory {}", canonical.display())), "{stderr}");
    // The first one is untouched.
    dir.ctl(&["plugins", "list"]).ok();
    let mut client = Client::connect(&broker, "first-still-serves").await;
    client.subscribe("x", QoS::AtMostOnce).await;
}

fn raw_request(dir: &DataDir, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(dir.file("broker.sock")).unwrap();
    stream.set_read_timeout(Some(e2e::DEADLINE)).unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn malformed_and_oversized_ctl_requests_get_an_error() {
    let dir = DataDir::with_plugins("");
    let mut broker = Broker::start(&dir, &[]);
    let cases: [(&[u8], &str); 4] = [
        (b"not json\n", "malformed request"),
        (b"{\"cmd\": 1}\n", "malformed request"),
        (b"[\"plugins\", \"list\"]", "unterminated"),
        (b"\xff\xfe\n", "unreadable request"),
    ];
    for (bytes, expected) in cases {
        let answer = raw_request(&dir, bytes);
        let reply: serde_json::Value = serde_json::from_str(answer.trim()).unwrap_or_else(|_| panic!("{answer:?}"));
        assert_eq!(reply["ok"], false, "{answer}");
        assert!(reply["output"].as_str().unwrap().contains(expected), "{answer}");
    }
    let huge = vec![b'['; 1024 * 1024];
    let answer = raw_request(&dir, &huge);
    assert!(answer.contains("request too long"), "{answer}");
    assert!(broker.is_running());
    dir.ctl(&["plugins", "list"]).ok();
}
