//! The held messages: in memory, ordered by when they fall due, and in the broker's store, one
//! key per message in the plugin's bucket [`BUCKET`].
//!
//! A key is the due time (u64 BE milliseconds since the epoch) then a sequence number (u64 BE),
//! so keys sort by due time, ties in arrival order ([`key`]). A value is a version byte (`1`),
//! the QoS (u8), the retain flag (u8), the topic's length (u32 BE) and the topic, then the
//! payload (the rest) ([`encode_value`]). The file older versions rewrote whole
//! (`data/emqx_mod_delayed.json`, a JSON array) is read only to import it ([`parse_file`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The old file's name in the data directory.
pub const FILE_NAME: &str = "emqx_mod_delayed.json";
/// The plugin's bucket in the store.
pub const BUCKET: &str = "delayed";
/// The version byte [`encode_value`] writes.
const VALUE_V1: u8 = 1;
/// The fixed part of a value: version, QoS, retain, the topic's length.
const VALUE_HEADER: usize = 1 + 1 + 1 + 4;

/// A store key: due time, then sequence number, both big-endian.
pub type Key = [u8; 16];

/// One held message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Delayed {
    /// When to publish it, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// Where to publish it.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its QoS.
    pub qos: u8,
    /// Its retain flag.
    pub retain: bool,
}

/// A key or value in the bucket that is not a held message this version reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Not 16 bytes.
    #[error("key of {0} bytes (not 16)")]
    Key(usize),
    /// Shorter than its fixed part or its topic says, or a topic that is not UTF-8.
    #[error("malformed value ({0} bytes)")]
    Value(usize),
    /// Written by a newer version.
    #[error("unknown value version {0}")]
    Version(u8),
}

/// The key of a message due at `due_ms`, the `seq`-th.
pub fn key(due_ms: u64, seq: u64) -> Key {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&due_ms.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The due time and sequence number of a key.
pub fn parse_key(bytes: &[u8]) -> Result<(u64, u64), EntryError> {
    let key: &Key = bytes.try_into().map_err(|_| EntryError::Key(bytes.len()))?;
    let half = |at: usize| u64::from_be_bytes(std::array::from_fn(|i| key[at + i]));
    Ok((half(0), half(8)))
}

/// A message's value in the store (its due time is in its key).
pub fn encode_value(m: &Delayed) -> Vec<u8> {
    let mut out = Vec::with_capacity(VALUE_HEADER + m.topic.len() + m.payload.len());
    out.extend_from_slice(&[VALUE_V1, m.qos, u8::from(m.retain)]);
    out.extend_from_slice(&(m.topic.len() as u32).to_be_bytes());
    out.extend_from_slice(m.topic.as_bytes());
    out.extend_from_slice(&m.payload);
    out
}

/// Reads back a message from its key and [`encode_value`]'s value.
pub fn decode(key: &[u8], value: &[u8]) -> Result<(Key, Delayed), EntryError> {
    let (due_ms, seq) = parse_key(key)?;
    let malformed = || EntryError::Value(value.len());
    let header = value.get(..VALUE_HEADER).ok_or_else(malformed)?;
    if header[0] != VALUE_V1 {
        return Err(EntryError::Version(header[0]));
    }
    let topic_len = u32::from_be_bytes(std::array::from_fn(|i| header[3 + i])) as usize;
    let rest = &value[VALUE_HEADER..];
    let topic = rest.get(..topic_len).ok_or_else(malformed)?;
    let topic = String::from_utf8(topic.to_vec()).map_err(|_| malformed())?;
    let message =
        Delayed { due_ms, topic, payload: rest[topic_len..].to_vec(), qos: header[1], retain: header[2] != 0 };
    Ok((self::key(due_ms, seq), message))
}

/// The old file's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the old file's bytes.
pub fn parse_file(bytes: &[u8]) -> Result<Vec<Delayed>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The held messages by key, so in the order they fall due (ties in arrival order).
#[derive(Debug, Default)]
pub struct Held {
    messages: BTreeMap<Key, Delayed>,
    /// Messages accepted and being written to the store: counted against
    /// `max_delayed_messages`, not yet held.
    pub pending: usize,
    /// Set by `stop`: the publishing thread ends.
    pub stopping: bool,
}

impl Held {
    /// Adds a message under its key.
    pub fn add(&mut self, key: Key, message: Delayed) {
        self.messages.insert(key, message);
    }

    /// The messages, with their keys, whose due millisecond has wholly passed at `now_ms`, in
    /// order (still held: [`Held::remove`] them). Both times are truncated to the
    /// millisecond, so waiting for the next one is what makes sure a message is never published
    /// before its full delay.
    pub fn due(&self, now_ms: u64) -> Vec<(Key, Delayed)> {
        self.messages.range(..key(now_ms, 0)).map(|(k, m)| (*k, m.clone())).collect()
    }

    /// Removes the message under `key` (if still held).
    pub fn remove(&mut self, key: &Key) -> Option<Delayed> {
        self.messages.remove(key)
    }

    /// When the next message falls due.
    pub fn next_due(&self) -> Option<u64> {
        self.messages.values().next().map(|m| m.due_ms)
    }

    /// The messages with their keys, in the order they fall due.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Delayed)> {
        self.messages.iter()
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// The highest sequence number held, if any.
    pub fn max_seq(&self) -> Option<u64> {
        self.messages.keys().filter_map(|k| parse_key(k).ok()).map(|(_, seq)| seq).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(due_ms: u64, topic: &str) -> Delayed {
        Delayed { due_ms, topic: topic.to_owned(), payload: b"p".to_vec(), qos: 1, retain: false }
    }

    #[test]
    fn keys_sort_by_due_time_then_arrival_and_messages_fall_due_in_order() {
        let mut held = Held::default();
        held.add(key(30, 0), message(30, "c"));
        held.add(key(10, 1), message(10, "a"));
        held.add(key(20, 2), message(20, "b"));
        held.add(key(10, 3), message(10, "a2"));
        assert!(key(10, u64::MAX) < key(11, 0));
        let topics = |v: Vec<(Key, Delayed)>| v.into_iter().map(|(_, m)| m.topic).collect::<Vec<_>>();
        assert_eq!(topics(held.due(20)), ["a", "a2"], "b's millisecond has not passed yet");
        for (k, _) in held.due(20) {
            held.remove(&k);
        }
        assert_eq!(topics(held.due(21)), ["b"]);
        assert_eq!(held.next_due(), Some(20));
        assert_eq!(held.max_seq(), Some(2));
    }

    #[test]
    fn values_read_back_and_bad_ones_are_errors() {
        let m = Delayed { due_ms: 77, topic: "a/b".into(), payload: vec![0, 255, 1], qos: 2, retain: true };
        let value = encode_value(&m);
        assert_eq!(decode(&key(77, 5), &value), Ok((key(77, 5), m)));
        assert_eq!(decode(&[1, 2], &value), Err(EntryError::Key(2)));
        assert_eq!(decode(&key(1, 1), &value[..5]), Err(EntryError::Value(5)));
        assert_eq!(decode(&key(1, 1), &value[..8]), Err(EntryError::Value(8)), "topic cut short");
        assert_eq!(decode(&key(1, 1), &[9; 10]), Err(EntryError::Version(9)));
    }

    #[test]
    fn old_files_read() {
        let old = br#"[{"due_ms":5,"topic":"t","payload":[104,105],"qos":1,"retain":true}]"#;
        assert_eq!(
            parse_file(old).unwrap(),
            [Delayed { due_ms: 5, topic: "t".into(), payload: b"hi".to_vec(), qos: 1, retain: true }]
        );
        assert!(parse_file(b"[{").is_err());
    }
}
