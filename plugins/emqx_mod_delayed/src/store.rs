//! The held messages: in memory, ordered by when they fall due, and in the broker's store, one
//! key per message in the plugin's bucket [`BUCKET`].
//!
//! A key is the due time (u64 BE milliseconds since the epoch) then a sequence number (u64 BE),
//! so keys sort by due time, ties in arrival order ([`key`]). A value is a version byte (`1`),
//! the QoS (u8), the retain flag (u8), the topic's length (u32 BE) and the topic, then the
//! payload (the rest) ([`encode_value`]). A message being published is **claimed**: its value
//! is then `2`, the claimer's id (u64 BE), when it claimed it (u64 BE milliseconds), then the
//! unclaimed value whole. The file older versions rewrote whole
//! (`data/emqx_mod_delayed.json`, a JSON array) is read only to import it ([`parse_file`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The old file's name in the data directory.
pub const FILE_NAME: &str = "emqx_mod_delayed.json";
/// The plugin's bucket in the store.
pub const BUCKET: &str = "delayed";
/// The version byte [`encode_value`] writes for a message not claimed.
const VALUE_V1: u8 = 1;
/// The version byte of a claimed message's value.
const VALUE_CLAIMED: u8 = 2;
/// The claim's part of a claimed value: version, claimer, time.
const CLAIM_HEADER: usize = 1 + 8 + 8;
/// How long a claim holds: a message claimed longer ago than this (its claimer died between
/// its claim and its delete, or cannot reach the store) may be claimed again, and published
/// again (at least once).
pub const CLAIM_TIMEOUT_MS: u64 = 30_000;
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

/// Who is publishing a message, since when: one run of the module (a random id each start)
/// made the value its claim before publishing, so that no other node (or run) publishes it
/// too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The claiming run's id.
    pub by: u64,
    /// When it claimed it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
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

/// A message's value in the store (its due time is in its key), claimed or not.
pub fn encode_value(m: &Delayed, claim: Option<Claim>) -> Vec<u8> {
    let claim_len = if claim.is_some() { CLAIM_HEADER } else { 0 };
    let mut out = Vec::with_capacity(claim_len + VALUE_HEADER + m.topic.len() + m.payload.len());
    if let Some(claim) = claim {
        out.push(VALUE_CLAIMED);
        out.extend_from_slice(&claim.by.to_be_bytes());
        out.extend_from_slice(&claim.at_ms.to_be_bytes());
    }
    out.extend_from_slice(&[VALUE_V1, m.qos, u8::from(m.retain)]);
    out.extend_from_slice(&(m.topic.len() as u32).to_be_bytes());
    out.extend_from_slice(m.topic.as_bytes());
    out.extend_from_slice(&m.payload);
    out
}

/// Reads back a message, and its claim if any, from its key and [`encode_value`]'s value.
pub fn decode(key: &[u8], value: &[u8]) -> Result<(Key, Delayed, Option<Claim>), EntryError> {
    let (due_ms, seq) = parse_key(key)?;
    let malformed = || EntryError::Value(value.len());
    let (claim, value) = match value.first() {
        Some(&VALUE_CLAIMED) => {
            let header = value.get(..CLAIM_HEADER).ok_or_else(malformed)?;
            let half = |at: usize| u64::from_be_bytes(std::array::from_fn(|i| header[at + i]));
            (Some(Claim { by: half(1), at_ms: half(9) }), &value[CLAIM_HEADER..])
        }
        _ => (None, value),
    };
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
    Ok((self::key(due_ms, seq), message, claim))
}

/// The old file's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the old file's bytes.
pub fn parse_file(bytes: &[u8]) -> Result<Vec<Delayed>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// One held message, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The message.
    pub message: Delayed,
    /// Who is publishing it, if anyone is.
    pub claim: Option<Claim>,
    /// Not tried again before this (milliseconds since the epoch; 0: no wait): set when a
    /// claim could not be made (the store unavailable).
    pub retry_at_ms: u64,
}

impl Entry {
    /// An entry for `message` as read from the store.
    pub fn new(message: Delayed, claim: Option<Claim>) -> Entry {
        Entry { message, claim, retry_at_ms: 0 }
    }

    /// When it may be claimed: once its due millisecond has wholly passed (so it is never
    /// published before its full delay), once its retry time has come, and once any claim on
    /// it has timed out.
    pub fn ready_at_ms(&self) -> u64 {
        let claimed_until = self.claim.map_or(0, |c| c.at_ms.saturating_add(CLAIM_TIMEOUT_MS));
        (self.message.due_ms + 1).max(self.retry_at_ms).max(claimed_until)
    }

    /// Its value in the store, as this node last saw it.
    pub fn stored_value(&self) -> Vec<u8> {
        encode_value(&self.message, self.claim)
    }
}

/// The held messages by key, so in the order they fall due (ties in arrival order): in a
/// cluster, every node's.
#[derive(Debug, Default)]
pub struct Held {
    messages: BTreeMap<Key, Entry>,
    /// Messages accepted and being written to the store: counted against
    /// `max_delayed_messages`, not yet held.
    pub pending: usize,
    /// Set by `stop`: the module's threads end.
    pub stopping: bool,
}

impl Held {
    /// Adds (or replaces) the entry under `key`.
    pub fn add(&mut self, key: Key, entry: Entry) {
        self.messages.insert(key, entry);
    }

    /// The entries, with their keys, that may be claimed at `now_ms`, in the order they fell
    /// due, at most `limit` (still held: [`Held::remove`] those published).
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<(Key, Entry)> {
        self.messages
            .range(..key(now_ms, 0))
            .filter(|(_, e)| e.ready_at_ms() <= now_ms)
            .take(limit)
            .map(|(k, e)| (*k, e.clone()))
            .collect()
    }

    /// The entry under `key`, if held.
    pub fn get_mut(&mut self, key: &Key) -> Option<&mut Entry> {
        self.messages.get_mut(key)
    }

    /// Removes the message under `key` (if still held).
    pub fn remove(&mut self, key: &Key) -> Option<Entry> {
        self.messages.remove(key)
    }

    /// When the next message may be claimed, as seen at `now_ms`: the earliest
    /// [`Entry::ready_at_ms`] of those already due (waiting on a claim or a retry) and of the
    /// first not yet due.
    pub fn next_ready(&self, now_ms: u64) -> Option<u64> {
        let waiting = self.messages.range(..key(now_ms, 0)).map(|(_, e)| e.ready_at_ms());
        let next = self.messages.range(key(now_ms, 0)..).next().map(|(_, e)| e.ready_at_ms());
        waiting.chain(next).min()
    }

    /// The messages with their keys, in the order they fall due.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Delayed)> {
        self.messages.iter().map(|(k, e)| (k, &e.message))
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.messages.len()
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
        for (due, seq, topic) in [(30, 0, "c"), (10, 1, "a"), (20, 2, "b"), (10, 3, "a2")] {
            held.add(key(due, seq), Entry::new(message(due, topic), None));
        }
        assert!(key(10, u64::MAX) < key(11, 0));
        let topics = |v: Vec<(Key, Entry)>| v.into_iter().map(|(_, e)| e.message.topic).collect::<Vec<_>>();
        assert_eq!(topics(held.due(20, usize::MAX)), ["a", "a2"], "b's millisecond has not passed yet");
        assert_eq!(topics(held.due(20, 1)), ["a"], "at most the limit, the first due first");
        for (k, _) in held.due(20, usize::MAX) {
            held.remove(&k);
        }
        assert_eq!(topics(held.due(21, usize::MAX)), ["b"]);
        assert_eq!(held.next_ready(20), Some(21));
    }

    #[test]
    fn a_claimed_message_waits_for_its_claim_to_time_out_and_a_retry_for_its_time() {
        let mut held = Held::default();
        let claim = Claim { by: 7, at_ms: 1_000 };
        held.add(key(10, 0), Entry::new(message(10, "claimed"), Some(claim)));
        held.add(key(20, 1), Entry::new(message(20, "free"), None));
        let topics = |v: Vec<(Key, Entry)>| v.into_iter().map(|(_, e)| e.message.topic).collect::<Vec<_>>();
        assert_eq!(topics(held.due(2_000, usize::MAX)), ["free"], "claimed by a run that may still publish it");
        held.get_mut(&key(20, 1)).unwrap().retry_at_ms = 2_500;
        assert_eq!(held.due(2_000, usize::MAX), []);
        assert_eq!(held.next_ready(2_000), Some(2_500));
        held.remove(&key(20, 1));
        assert_eq!(held.next_ready(2_000), Some(1_000 + CLAIM_TIMEOUT_MS));
        assert_eq!(
            topics(held.due(1_000 + CLAIM_TIMEOUT_MS, usize::MAX)),
            ["claimed"],
            "its claimer is gone: claimed again"
        );
    }

    #[test]
    fn values_read_back_claimed_or_not_and_bad_ones_are_errors() {
        let m = Delayed { due_ms: 77, topic: "a/b".into(), payload: vec![0, 255, 1], qos: 2, retain: true };
        let value = encode_value(&m, None);
        assert_eq!(decode(&key(77, 5), &value), Ok((key(77, 5), m.clone(), None)));
        let claim = Claim { by: u64::MAX - 1, at_ms: 123 };
        let claimed = encode_value(&m, Some(claim));
        assert_eq!(decode(&key(77, 5), &claimed), Ok((key(77, 5), m, Some(claim))));
        assert_eq!(&claimed[CLAIM_HEADER..], value, "a claim wraps the value whole");
        assert_eq!(decode(&[1, 2], &value), Err(EntryError::Key(2)));
        assert_eq!(decode(&key(1, 1), &value[..5]), Err(EntryError::Value(5)));
        assert_eq!(decode(&key(1, 1), &value[..8]), Err(EntryError::Value(8)), "topic cut short");
        assert_eq!(decode(&key(1, 1), &claimed[..10]), Err(EntryError::Value(10)), "claim cut short");
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
