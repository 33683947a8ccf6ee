//! A real local HTTP server receiving telemetry reports, on its own thread and runtime.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 OK.
    Accept,
    /// 500 Internal Server Error.
    Fail,
    /// Never answers (the request hangs until the client gives up).
    Hang,
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub content_type: String,
    pub raw: String,
    pub json: serde_json::Value,
}

/// The receiver; its server thread ends with the test process.
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(mode: Mode) -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let store = received.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let handler = move |headers: HeaderMap, body: Bytes| {
                    let store = store.clone();
                    async move {
                        let raw = String::from_utf8_lossy(&body).into_owned();
                        store.lock().unwrap().push(Received {
                            content_type: headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned(),
                            json: serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null),
                            raw,
                        });
                        match mode {
                            Mode::Accept => StatusCode::OK,
                            Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
                            Mode::Hang => std::future::pending().await,
                        }
                    }
                };
                let app = Router::new().route("/api/telemetry", post(handler));
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver { addr, received }
    }

    /// The URL reports go to.
    pub fn url(&self) -> String {
        format!("http://{}/api/telemetry", self.addr)
    }

    /// Every report so far.
    pub fn reports(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits for a report satisfying `pred` and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Received {
        crate::wait_until(what, || self.reports().into_iter().find(|r| pred(&r.json)))
    }

    /// Asserts that no report arrives during `window` (an observation window, not a wait
    /// for something to happen: nothing should).
    pub fn assert_silent_for(&self, window: Duration) {
        let before = self.count();
        let end = Instant::now() + window;
        while Instant::now() < end {
            assert_eq!(self.count(), before, "a report arrived while telemetry should be off");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
