//! The held messages, ordered by when they fall due, and their file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "emqx_mod_delayed.json";

/// One held message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delayed {
    /// When to publish it, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// The held messages, in the order they fall due (ties in arrival order).
#[derive(Debug, Default)]
pub struct Store {
    messages: Vec<Delayed>,
    /// Changed since the file was last written.
    pub dirty: bool,
    /// Set by `stop`: the publishing thread ends.
    pub stopping: bool,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

impl Store {
    /// Reads the file; none yet is an empty store.
    pub fn load(data_dir: &Path) -> Result<Store, String> {
        let path = path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut messages: Vec<Delayed> =
                    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                messages.sort_by_key(|m| m.due_ms);
                Ok(Store { messages, dirty: false, stopping: false })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The file's contents; `dirty` is cleared (the caller writes them, see [`write`]).
    pub fn snapshot(&mut self) -> std::io::Result<Vec<u8>> {
        self.dirty = false;
        Ok(serde_json::to_vec(&self.messages)?)
    }

    /// Writes the file now (see [`write`]).
    #[cfg(test)]
    pub fn save(&mut self, data_dir: &Path) -> std::io::Result<()> {
        write(data_dir, &self.snapshot()?)
    }

    pub fn add(&mut self, message: Delayed) {
        let at = self.messages.partition_point(|m| m.due_ms <= message.due_ms);
        self.messages.insert(at, message);
        self.dirty = true;
    }

    /// Removes and returns, in order, the messages whose due millisecond has wholly passed at
    /// `now_ms`. Both times are truncated to the millisecond, so waiting for the next one is what
    /// makes sure a message is never published before its full delay.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Delayed> {
        let due = self.messages.partition_point(|m| m.due_ms < now_ms);
        self.dirty |= due > 0;
        self.messages.drain(..due).collect()
    }

    /// When the next message falls due.
    pub fn next_due(&self) -> Option<u64> {
        self.messages.first().map(|m| m.due_ms)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delayed> {
        self.messages.iter()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Drops every held message; returns how many.
    pub fn clear(&mut self) -> usize {
        self.dirty = true;
        std::mem::take(&mut self.messages).len()
    }
}

/// Replaces the file with `contents` atomically (temporary file, fsync, rename).
pub fn write(data_dir: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = data_dir.join(format!(".{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path(data_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(due_ms: u64, topic: &str) -> Delayed {
        Delayed { due_ms, topic: topic.to_owned(), payload: b"p".to_vec(), qos: 1, retain: false }
    }

    #[test]
    fn messages_fall_due_in_order_and_survive_a_save_and_load() {
        let mut store = Store::default();
        store.add(message(30, "c"));
        store.add(message(10, "a"));
        store.add(message(20, "b"));
        store.add(message(10, "a2"));
        let dir = std::env::temp_dir().join(format!("delayed-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        store.save(&dir).unwrap();
        let mut loaded = Store::load(&dir).unwrap();
        let topics = |v: Vec<Delayed>| v.into_iter().map(|m| m.topic).collect::<Vec<_>>();
        assert_eq!(topics(loaded.take_due(20)), ["a", "a2"], "b's millisecond has not passed yet");
        assert_eq!(topics(loaded.take_due(21)), ["b"]);
        assert_eq!(loaded.next_due(), Some(30));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
