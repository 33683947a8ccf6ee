//! `broker ctl`: a Unix socket in the data directory (mode 0600). A request is one line, a
//! JSON array of the words after `ctl`; the answer is one line, `{"ok": bool, "output": ..}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::plugins::manager::Manager;

/// Longest request accepted, in bytes.
const MAX_REQUEST: u64 = 64 * 1024;

/// The socket's file name inside the data directory.
pub(crate) const SOCKET_NAME: &str = "broker.sock";

pub(crate) fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    output: String,
}

/// A ctl request failed before the broker answered it.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("no broker running at {0} (start one with `broker`)")]
    NoBroker(PathBuf),
    #[error("talking to the broker at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("unreadable answer from the broker: {0}")]
    BadReply(String),
}

/// Binds the ctl socket (the caller holds the data directory lock, so a leftover socket
/// file belongs to a dead broker and is removed).
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!("removed stale ctl socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Runs the plugin manager's work (commands, stopping a failed plugin) on one thread of its
/// own, in turn: it may block (a plugin's `init` or `stop`), so not on the network threads.
/// One long-lived thread rather than a thread per command: glibc gives new threads heaps of
/// their own, and the fragments left in each add up in the broker's resident memory.
#[derive(Debug, Clone)]
pub(crate) struct ManagerThread {
    jobs: std::sync::mpsc::Sender<ManagerJob>,
}

/// Work for the plugin manager's thread.
type ManagerJob = Box<dyn FnOnce(&Manager) + Send>;

impl ManagerThread {
    /// Starts the thread; it ends when every handle is dropped.
    pub(crate) fn start(manager: Arc<Manager>) -> std::io::Result<ManagerThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<ManagerJob>();
        std::thread::Builder::new().name("plugin-manager".into()).spawn(move || {
            for job in queue {
                job(&manager);
            }
        })?;
        Ok(ManagerThread { jobs })
    }

    /// Runs `job` on the manager's thread and waits for its result (`None` if the thread is
    /// gone, or the job panicked).
    pub(crate) async fn run<T: Send + 'static>(&self, job: impl FnOnce(&Manager) -> T + Send + 'static) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job = move |manager: &Manager| {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(manager)));
            let _ = done.send(outcome.ok());
        };
        self.jobs.send(Box::new(job)).ok()?;
        result.await.ok().flatten()
    }
}

impl crate::cluster::Commands for ManagerThread {
    fn run(
        &self,
        args: Vec<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::cluster::CommandResult> + Send>> {
        let manager = self.clone();
        Box::pin(async move {
            match manager.run(move |manager| manager.command(&args)).await {
                Some(result) => result.map_err(|e| (e.status, e.message)),
                None => Err((plugin_api::abi::STATUS_UNAVAILABLE, "the plugin manager stopped".to_owned())),
            }
        })
    }
}

/// Answers ctl requests forever.
pub(crate) async fn serve(listener: UnixListener, manager: ManagerThread) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, manager.clone()));
            }
            Err(e) => {
                tracing::warn!("ctl accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, manager: ManagerThread) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = AsyncBufReader::new(read.take(MAX_REQUEST));
    let reply = match reader.read_line(&mut line).await {
        Ok(_) if !line.ends_with('\n') => {
            Reply { ok: false, output: format!("request too long or unterminated (limit {MAX_REQUEST} bytes)") }
        }
        Ok(_) => match serde_json::from_str::<Vec<String>>(&line) {
            Ok(args) => match manager.run(move |manager| manager.command(&args)).await {
                Some(Ok(output)) => Reply { ok: true, output },
                Some(Err(error)) => Reply { ok: false, output: error.message },
                None => Reply { ok: false, output: "command failed: the plugin manager stopped".to_owned() },
            },
            Err(e) => Reply { ok: false, output: format!("malformed request: {e}") },
        },
        Err(e) => Reply { ok: false, output: format!("unreadable request: {e}") },
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Sends `args` to the broker whose data directory is `data_dir`; `Ok((ok, output))`.
pub fn request(data_dir: &Path, args: &[String]) -> Result<(bool, String), CtlError> {
    let path = socket_path(data_dir);
    let io = |source| CtlError::Io { path: path.clone(), source };
    let mut stream = match StdUnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(CtlError::NoBroker(path));
        }
        Err(e) => return Err(io(e)),
    };
    let mut line = serde_json::to_string(args).map_err(|e| CtlError::BadReply(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream.take(16 * 1024 * 1024)).read_line(&mut answer).map_err(io)?;
    let reply: Reply = serde_json::from_str(&answer).map_err(|e| CtlError::BadReply(e.to_string()))?;
    Ok((reply.ok, reply.output))
}
