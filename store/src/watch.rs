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

/// A feed of changes under one bucket and key prefix (from [`crate::Store::watch`]). Dropping it
/// ends the watch.
#[derive(Debug)]
pub struct Watch {
    changes: Receiver<Change>,
}

impl Watch {
    /// The next change, waiting up to `timeout`; `None` if none came in time.
    pub fn next_timeout(&self, timeout: Duration) -> Option<Change> {
        // A timeout and a closed store both end in `None`.
        self.changes.recv_timeout(timeout).ok()
    }

    /// The next change if one is waiting.
    pub fn try_next(&self) -> Option<Change> {
        self.changes.try_recv().ok()
    }
}

struct Watcher {
    bucket: String,
    prefix: Vec<u8>,
    sender: Sender<Change>,
}

/// Everyone watching.
#[derive(Default)]
pub(crate) struct Watchers {
    watchers: Mutex<Vec<Watcher>>,
}

impl Watchers {
    pub(crate) fn add(&self, bucket: &str, prefix: &[u8]) -> Watch {
        let (sender, changes) = mpsc::channel();
        let watcher = Watcher { bucket: bucket.to_owned(), prefix: prefix.to_vec(), sender };
        self.lock().push(watcher);
        Watch { changes }
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
                w.sender.send(change).is_ok()
            })
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watcher>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
