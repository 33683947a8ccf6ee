//! The change feed: committed puts and deletes, sent to every watcher whose bucket and key
//! prefix they match, in commit order.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

use crate::Op;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` if the key was deleted.
    pub value: Option<Vec<u8>>,
}

/// What a feed carries: a change, or a wake-up from its [`WatchWaker`].
#[derive(Debug)]
enum Signal {
    Change(Change),
    Wake,
}

/// A feed of changes under one bucket and key prefix (from [`crate::Store::watch`]). Dropping it
/// ends the watch.
#[derive(Debug)]
pub struct Watch {
    changes: Receiver<Signal>,
    wake: Sender<Signal>,
}

impl Watch {
    /// The next change, waiting up to `timeout`; `None` if none came in time, or if the
    /// wait was cut short by [`WatchWaker::wake`].
    pub fn next_timeout(&self, timeout: Duration) -> Option<Change> {
        // A timeout and a closed store both end in `None`.
        match self.changes.recv_timeout(timeout) {
            Ok(Signal::Change(change)) => Some(change),
            Ok(Signal::Wake) | Err(_) => None,
        }
    }

    /// The next change if one is waiting.
    pub fn try_next(&self) -> Option<Change> {
        loop {
            match self.changes.try_recv() {
                Ok(Signal::Change(change)) => return Some(change),
                Ok(Signal::Wake) => continue,
                Err(_) => return None,
            }
        }
    }

    /// A handle that ends a wait in [`Watch::next_timeout`] from another thread (a plugin
    /// being stopped, say).
    pub fn waker(&self) -> WatchWaker {
        WatchWaker(self.wake.clone())
    }
}

/// Ends the current or next wait of its [`Watch`] (see [`Watch::waker`]).
#[derive(Debug, Clone)]
pub struct WatchWaker(Sender<Signal>);

impl WatchWaker {
    /// Ends the wait at once (it returns `None`); a no-op once the watch is dropped.
    pub fn wake(&self) {
        let _ = self.0.send(Signal::Wake);
    }
}

struct Watcher {
    bucket: String,
    prefix: Vec<u8>,
    sender: Sender<Signal>,
}

/// Everyone watching.
#[derive(Default)]
pub(crate) struct Watchers {
    watchers: Mutex<Vec<Watcher>>,
}

impl Watchers {
    pub(crate) fn add(&self, bucket: &str, prefix: &[u8]) -> Watch {
        let (sender, changes) = mpsc::channel();
        let watcher = Watcher { bucket: bucket.to_owned(), prefix: prefix.to_vec(), sender: sender.clone() };
        self.lock().push(watcher);
        Watch { changes, wake: sender }
    }

    /// Sends each of `ops` to the watchers it matches; forgets watchers that were dropped.
    pub(crate) fn notify(&self, ops: &[Op<'_>]) {
        let mut watchers = self.lock();
        if watchers.is_empty() {
            return;
        }
        watchers.retain(|w| {
            ops.iter().filter(|op| op.bucket == w.bucket && op.key.starts_with(&w.prefix)).all(|op| {
                let change =
                    Change { bucket: op.bucket.to_owned(), key: op.key.to_vec(), value: op.value.map(<[u8]>::to_vec) };
                w.sender.send(Signal::Change(change)).is_ok()
            })
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watcher>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
