//! One bridge's queue of messages for the remote broker, oldest first.
//!
//! QoS 1 and 2 messages are kept in the broker's store, in the plugin's bucket `queue`, one key
//! per message: the bridge's name, `/`, then a sequence number (big-endian, so keys sort in
//! queue order). A message is put there before it is handed to the remote broker and deleted
//! once the remote broker acknowledged it (PUBACK, PUBCOMP); what is left at a restart is read
//! back at start and sent first, in order. QoS 0 messages are queued in memory only (at most
//! [`QOS0_MAX_BYTES`], the oldest dropped first).
//!
//! The queue holds at most `max_total_size` bytes (topic + payload, EMQX's estimate); past it
//! the oldest messages are dropped, as EMQX's replayq drops them. Payloads are kept in memory up
//! to [`CACHE_BYTES`] (and until they are written); the rest is read back from the store when
//! it is sent.
//!
//! The queue only says what to write: its changes go into a [`StoreBatch`] the caller commits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use plugin_api::store::{Entry, StoreBatch};

/// The plugin's bucket.
pub(crate) const BUCKET: &str = "queue";
/// Payload bytes of written QoS 1/2 messages kept in memory, oldest first.
const CACHE_BYTES: u64 = 8 << 20;
/// Most bytes of QoS 0 messages queued (they are in memory only).
pub(crate) const QOS0_MAX_BYTES: u64 = 16 << 20;
/// The first byte of a value this version writes.
const VERSION: u8 = 1;

/// A local message for the remote broker, with its local topic (the mountpoint is put in front
/// when it is sent, so a changed mountpoint applies to what was queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
}

impl Message {
    /// EMQX's estimate of its size: topic and payload.
    pub(crate) fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }

    /// The stored value: version, QoS, retain, the topic's length (u32 little-endian), the topic,
    /// the payload.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(7 + self.topic.len() + self.payload.len());
        out.extend_from_slice(&[VERSION, self.qos, self.retain as u8]);
        out.extend_from_slice(&(self.topic.len() as u32).to_le_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Reads a stored value back.
    pub(crate) fn decode(value: &[u8]) -> Result<Message, String> {
        let [version, qos, retain, a, b, c, d, rest @ ..] = value else {
            return Err(format!("{} bytes, too short", value.len()));
        };
        if *version != VERSION {
            return Err(format!("version {version}, not {VERSION}: written by another version of the plugin"));
        }
        let len = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
        let (topic, payload) = rest.split_at_checked(len).ok_or("truncated topic")?;
        let topic = std::str::from_utf8(topic).map_err(|_| "topic is not UTF-8")?.to_owned();
        Ok(Message { topic, payload: payload.to_vec(), qos: (*qos).min(2), retain: *retain != 0 })
    }
}

/// One queued message.
#[derive(Debug)]
struct Slot {
    qos: u8,
    size: u64,
    /// The message, when in memory.
    message: Option<Arc<Message>>,
    /// Whether it is in the store (QoS 1/2, once its write committed).
    stored: bool,
}

/// The queue (see the module documentation).
#[derive(Debug)]
pub(crate) struct Queue {
    /// `<bridge name>/`.
    prefix: Vec<u8>,
    slots: BTreeMap<u64, Slot>,
    /// The QoS 0 ones, to drop the oldest of them.
    qos0: BTreeSet<u64>,
    bytes: u64,
    qos0_bytes: u64,
    cached_bytes: u64,
    next_seq: u64,
    /// Messages from here on have not been handed to the remote broker.
    cursor: u64,
    max_bytes: u64,
}

impl Queue {
    /// An empty queue for bridge `name`.
    pub(crate) fn new(name: &str, max_bytes: u64) -> Queue {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(b'/');
        Queue {
            prefix,
            slots: BTreeMap::new(),
            qos0: BTreeSet::new(),
            bytes: 0,
            qos0_bytes: 0,
            cached_bytes: 0,
            next_seq: 0,
            cursor: 0,
            max_bytes,
        }
    }

    /// The prefix of this queue's keys.
    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The store key of message `seq`.
    pub(crate) fn key(&self, seq: u64) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    /// Messages queued.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Their bytes (topic + payload).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes what the store held for this queue (its `scan_prefix` of [`Queue::prefix`]).
    /// Entries that cannot be read are left in the store and described in the answer; messages
    /// over `max_total_size` (lowered since) are dropped into `batch`, and counted.
    pub(crate) fn load(&mut self, entries: Vec<Entry>, batch: &mut StoreBatch) -> (Vec<String>, u64) {
        let mut unreadable = Vec::new();
        for (key, value) in entries {
            let seq = key
                .strip_prefix(self.prefix.as_slice())
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_be_bytes);
            let Some(seq) = seq else {
                unreadable.push(format!("key {key:?} is not <name>/<sequence>"));
                continue;
            };
            match Message::decode(&value) {
                Ok(message) => {
                    let size = message.size();
                    let keep = self.cached_bytes + size <= CACHE_BYTES;
                    if keep {
                        self.cached_bytes += size;
                    }
                    let slot =
                        Slot { qos: message.qos.max(1), size, message: keep.then(|| Arc::new(message)), stored: true };
                    self.bytes += size;
                    self.slots.insert(seq, slot);
                    self.next_seq = self.next_seq.max(seq + 1);
                }
                Err(why) => unreadable.push(format!("message {seq}: {why}")),
            }
        }
        let dropped = self.trim(batch);
        (unreadable, dropped)
    }

    /// Queues `message` (a QoS 1/2 one is put into `batch`); its sequence number and how many
    /// messages were dropped to make room (it may be one of them).
    pub(crate) fn push(&mut self, message: Message, batch: &mut StoreBatch) -> (u64, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = message.size();
        let qos = message.qos;
        let mut dropped = 0;
        if qos == 0 {
            self.qos0.insert(seq);
            self.qos0_bytes += size;
        } else {
            batch.put(&self.key(seq), &message.encode());
        }
        self.slots.insert(seq, Slot { qos, size, message: Some(Arc::new(message)), stored: false });
        self.bytes += size;
        self.cached_bytes += size;
        while self.qos0_bytes > QOS0_MAX_BYTES {
            let Some(oldest) = self.qos0.first().copied() else { break };
            self.remove(oldest, batch);
            dropped += 1;
        }
        dropped += self.trim(batch);
        (seq, dropped)
    }

    /// Drops the oldest messages until the queue fits `max_total_size`; how many.
    fn trim(&mut self, batch: &mut StoreBatch) -> u64 {
        let mut dropped = 0;
        while self.bytes > self.max_bytes {
            let Some(oldest) = self.slots.keys().next().copied() else { break };
            self.remove(oldest, batch);
            dropped += 1;
        }
        dropped
    }

    /// After the batch holding the puts of `pushed` was committed (`written`) or refused: a
    /// written message is in the store, and its payload leaves memory past [`CACHE_BYTES`]. A
    /// refused one stays in memory (it is sent all the same, but would not survive a restart).
    pub(crate) fn committed(&mut self, pushed: &[u64], written: bool) {
        if !written {
            return;
        }
        for seq in pushed {
            let Some(slot) = self.slots.get_mut(seq) else { continue };
            if slot.qos == 0 {
                continue;
            }
            slot.stored = true;
            if self.cached_bytes > CACHE_BYTES && slot.message.take().is_some() {
                self.cached_bytes -= slot.size;
            }
        }
    }

    /// The next message not yet handed to the remote broker: its sequence number and, when in
    /// memory, the message (else read it from the store at [`Queue::key`]).
    pub(crate) fn next_unsent(&mut self) -> Option<(u64, Option<Arc<Message>>)> {
        let (&seq, slot) = self.slots.range(self.cursor..).next()?;
        self.cursor = seq + 1;
        Some((seq, slot.message.clone()))
    }

    /// Message `seq` was handed to the remote broker: a stored one leaves memory (it is read back
    /// if it must be sent again).
    pub(crate) fn sent(&mut self, seq: u64) {
        if let Some(slot) = self.slots.get_mut(&seq) {
            if slot.stored && slot.message.take().is_some() {
                self.cached_bytes -= slot.size;
            }
        }
    }

    /// Message `seq` could not be handed over after all: it is the next to send again.
    pub(crate) fn unsend(&mut self, seq: u64) {
        self.cursor = self.cursor.min(seq);
    }

    /// Every message still queued is to be sent again (a new session on the remote broker).
    pub(crate) fn rewind(&mut self) {
        self.cursor = 0;
    }

    /// Takes message `seq` out (acknowledged, or dropped); a stored one is deleted in `batch`.
    /// Whether it was there.
    pub(crate) fn remove(&mut self, seq: u64, batch: &mut StoreBatch) -> bool {
        let Some(slot) = self.slots.remove(&seq) else {
            return false;
        };
        self.bytes -= slot.size;
        if slot.message.is_some() {
            self.cached_bytes -= slot.size;
        }
        if slot.qos == 0 {
            self.qos0.remove(&seq);
            self.qos0_bytes -= slot.size;
        } else {
            // Also when the put is in the same batch, not yet committed: applied in order.
            batch.delete(&self.key(seq));
        }
        true
    }

    /// The QoS of message `seq`, if queued.
    pub(crate) fn qos(&self, seq: u64) -> Option<u8> {
        self.slots.get(&seq).map(|s| s.qos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &str, qos: u8) -> Message {
        Message { topic: topic.to_owned(), payload: payload.as_bytes().to_vec(), qos, retain: false }
    }

    #[test]
    fn values_read_back() {
        let m = Message { topic: "a/b".to_owned(), payload: vec![0, 1, 2], qos: 2, retain: true };
        assert_eq!(Message::decode(&m.encode()), Ok(m));
        assert!(Message::decode(&[1, 1]).is_err());
        assert!(Message::decode(&[9, 1, 0, 0, 0, 0, 0]).unwrap_err().contains("version 9"));
        assert!(Message::decode(&[1, 1, 0, 9, 0, 0, 0, b'a']).is_err());
    }

    #[test]
    fn sent_in_order_and_again_after_a_rewind() {
        let mut q = Queue::new("aws", 1 << 20);
        let mut batch = StoreBatch::new();
        for i in 0..3 {
            q.push(message("t", &i.to_string(), 1), &mut batch);
        }
        assert_eq!(batch.len(), 3, "one put each");
        q.committed(&[0, 1, 2], true);
        assert_eq!(q.next_unsent().unwrap().0, 0);
        assert_eq!(q.next_unsent().unwrap().0, 1);
        q.unsend(1);
        assert_eq!(q.next_unsent().unwrap().0, 1, "handed over again after a refusal");
        let mut deletes = StoreBatch::new();
        assert!(q.remove(0, &mut deletes));
        assert!(!q.remove(0, &mut deletes), "once");
        q.rewind();
        let (seq, message) = q.next_unsent().unwrap();
        assert_eq!(seq, 1, "the acknowledged one is not sent again");
        assert_eq!(message.unwrap().payload, b"1");
        assert_eq!(q.key(1), b"aws/\0\0\0\0\0\0\0\x01");
    }

    #[test]
    fn over_the_size_the_oldest_go() {
        let mut q = Queue::new("b", 10);
        let mut batch = StoreBatch::new();
        assert_eq!(q.push(message("t", "1234", 1), &mut batch), (0, 0));
        assert_eq!(q.push(message("t", "1234", 1), &mut batch), (1, 0));
        assert_eq!(q.push(message("t", "1234", 0), &mut batch), (2, 1), "the oldest dropped");
        assert_eq!((q.len(), q.bytes()), (2, 10));
        assert_eq!(q.next_unsent().unwrap().0, 1);
        let (_, dropped) = q.push(message("t", "far too long", 1), &mut batch);
        assert_eq!((dropped, q.len()), (3, 0), "bigger than the queue: nothing fits");
    }

    #[test]
    fn loads_what_the_store_kept() {
        let mut q = Queue::new("aws", 1 << 20);
        let entries = vec![
            (q.key(7), message("a", "7", 1).encode()),
            (q.key(9), message("a", "9", 2).encode()),
            (b"aws/bad".to_vec(), vec![]),
        ];
        let mut batch = StoreBatch::new();
        let (unreadable, dropped) = q.load(entries, &mut batch);
        assert_eq!((unreadable.len(), dropped), (1, 0));
        assert_eq!(q.next_unsent().unwrap().0, 7);
        assert_eq!(q.qos(9), Some(2));
        assert_eq!(q.push(message("a", "10", 1), &mut batch).0, 10, "numbering goes on");
    }
}
