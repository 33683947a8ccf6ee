//! Persistent sessions in the store: what is written for them, under which keys, and how they
//! are read back at start.
//!
//! One bucket, `core/sessions`, holds for each persistent session (3.1.1 CleanSession 0, MQTT 5
//! Session Expiry > 0; clean sessions never reach the disk):
//! - `s` + client id: its [`SessionRecord`] (expiry, subscriptions, when it went offline);
//! - `q` + client id + sequence number: each QoS 1/2 message queued for it or in flight
//!   ([`EntryRecord`], with its packet id and phase once sent), in the order it was queued;
//! - `l` + client id + sequence number: a QoS 2 message whose PUBREC came (so PUBREL, not the
//!   message, is what is resent);
//! - `r` + client id + packet id: each QoS 2 packet id it published and has not released, so
//!   that a PUBLISH resent after a restart is not routed twice;
//! - `w` + client id: while it is offline, its client's will waiting for its Will Delay
//!   Interval ([`WillRecord`]), so that a restart neither loses the will nor sends it early.
//!
//! A message of a persistent session goes out with a packet id made from its sequence number
//! ([`packet_id_of`]), so a QoS 2 message resent after a restart has the id the client saw
//! before, and the client's own de-duplication holds: no write is needed before a send. Whether
//! a message went out is not written either; but a session's record, written when it goes
//! offline, says up to which number its messages may have been sent
//! ([`SessionRecord::sent_through`]): read back, those go out with DUP set, as possible
//! re-deliveries (MQTT-3.3.1-1), and those queued later as first deliveries. A session that
//! comes back online is written as such before such a message is sent.
//!
//! A client id is written with its length first, so one client's keys never prefix another's.
//! In `core/node`, `alive_at` is the time the node last said it was running: sessions that were
//! online when the broker died went offline then.
//!
//! Values are postcard-encoded, each starting with a format version. A queued message that a
//! share group gave the session is followed by the group ([`ShareTrailer`]), so that a session
//! read back after a restart still hands it to another member if it ends before its client
//! took it; a broker that knows no trailer reads the record before it and ignores the rest.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use store::{Batch, Store, StoreError};

use crate::message::{Delivery, Head, Message};
use crate::mqtt::subscribe::SubscriptionOptions;
use crate::mqtt::Version;
use crate::router::ShareGroup;

/// The bucket of persistent sessions.
pub(crate) const BUCKET: &str = "core/sessions";

/// The format of the records below.
const RECORD_VERSION: u8 = 1;

/// What is kept of one session, beside its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub(crate) version: u8,
    /// Session Expiry Interval in seconds; `u32::MAX` never ends.
    pub(crate) expiry_interval: u32,
    /// When its client went offline (ms since the Unix epoch); `None` while online.
    pub(crate) offline_since_ms: Option<u64>,
    /// Filter, subscription options byte (MQTT 5 layout), subscription identifier.
    pub(crate) subscriptions: Vec<(String, u8, Option<u32>)>,
    /// While the session is offline: the sequence number of its last message that may have
    /// gone to its client; those numbered above it were queued while it was offline and never
    /// sent. Stored after the fields above ([`put_session`]), a trailer that readers of the
    /// record alone (an older broker, the cluster's shared record) do without.
    #[serde(skip)]
    pub(crate) sent_through: Option<u64>,
}

impl SessionRecord {
    pub(crate) fn new(expiry_interval: u32) -> SessionRecord {
        SessionRecord {
            version: RECORD_VERSION,
            expiry_interval,
            offline_since_ms: None,
            subscriptions: Vec::new(),
            sent_through: None,
        }
    }

    /// The record as bytes (as in the store).
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// A record read back from [`SessionRecord::encode`]'s bytes.
    pub(crate) fn decode(bytes: &[u8], client_id: &str) -> Result<SessionRecord, RecordError> {
        decode(bytes, "session record", client_id)
    }

    /// The record's bytes followed by `trailer`, if any: a number that readers of the record
    /// alone ignore (the store's `sent_through`, the cluster's `pending_since_ms`).
    fn encode_with_trailer(&self, trailer: Option<u64>) -> Vec<u8> {
        let bytes = self.encode();
        match trailer {
            Some(n) => postcard::to_extend(&n, bytes).unwrap_or_else(|_| self.encode()),
            None => bytes,
        }
    }

    /// A record and the trailer after it, if one is there ([`SessionRecord::encode_with_trailer`]).
    fn decode_with_trailer(bytes: &[u8]) -> Result<(SessionRecord, Option<u64>), postcard::Error> {
        let (record, rest) = postcard::take_from_bytes::<SessionRecord>(bytes)?;
        Ok((record, postcard::from_bytes::<u64>(rest).ok()))
    }

    /// The record as the store keeps it: with `sent_through` after it, if set.
    pub(crate) fn encode_stored(&self) -> Vec<u8> {
        self.encode_with_trailer(self.sent_through)
    }

    /// A record read back from the store ([`put_session`]), with `sent_through` if it was
    /// offline and the trailer is there (a record written before the trailer existed has none).
    pub(crate) fn decode_stored(bytes: &[u8], client_id: &str) -> Result<SessionRecord, RecordError> {
        let (mut record, trailer) =
            SessionRecord::decode_with_trailer(bytes).map_err(unreadable("session record", client_id))?;
        record.sent_through = record.offline_since_ms.and(trailer);
        Ok(record)
    }

    /// The record as the cluster shares it (`cluster::ownership`): with, as a trailer that
    /// readers of the record alone ignore, when the oldest QoS 1/2 message still queued or in
    /// flight for the session was published (ms since the Unix epoch), if one is.
    pub(crate) fn encode_shared(&self, pending_since_ms: Option<u64>) -> Vec<u8> {
        self.encode_with_trailer(pending_since_ms)
    }

    /// From a shared record (encoded, [`SessionRecord::encode_shared`]): when its session went
    /// offline, if it was offline, and since when it had messages pending, if it had.
    pub(crate) fn decode_revival(bytes: &[u8]) -> (Option<u64>, Option<u64>) {
        match SessionRecord::decode_with_trailer(bytes) {
            Ok((record, pending_since_ms)) => (record.offline_since_ms, pending_since_ms),
            Err(_) => (None, None),
        }
    }

    /// The subscriptions: filter, options, identifier; an unreadable one is skipped.
    pub(crate) fn subscriptions(&self) -> impl Iterator<Item = (&str, SubscriptionOptions, Option<u32>)> {
        self.subscriptions.iter().filter_map(|(filter, options, id)| {
            let options = SubscriptionOptions::decode(*options, Version::V5).ok()?;
            Some((filter.as_str(), options, *id))
        })
    }

    /// Sets the subscriptions (filter, options, identifier).
    pub(crate) fn set_subscriptions<'a>(
        &mut self,
        subscriptions: impl Iterator<Item = (&'a str, SubscriptionOptions, Option<u32>)>,
    ) {
        self.subscriptions = subscriptions.map(|(f, options, id)| (f.to_owned(), options.to_byte(), id)).collect();
        self.subscriptions.sort();
    }
}

/// One QoS 1/2 message queued for a session or in flight to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EntryRecord {
    pub(crate) version: u8,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    /// The QoS it goes out with.
    pub(crate) qos: u8,
    /// The retain flag it goes out with.
    pub(crate) retain: bool,
    /// MQTT 5 properties forwarded unchanged, encoded.
    pub(crate) forwarded: Vec<u8>,
    /// When it expires (ms since the Unix epoch), if it does.
    pub(crate) expires_at_ms: Option<u64>,
    pub(crate) timestamp_ms: u64,
    pub(crate) subscription_ids: Vec<u32>,
    /// The share group that gave it (written after the record, as [`ShareTrailer`]).
    #[serde(skip)]
    pub(crate) share: Option<ShareTrailer>,
}

/// The share group of a queued message, written after its record: the group's name and its
/// filter without `$share/<group>/` (what [`ShareGroup`] holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShareTrailer(pub(crate) String, pub(crate) String);

impl ShareTrailer {
    pub(crate) fn of(share: &ShareGroup) -> ShareTrailer {
        ShareTrailer(share.name.to_string(), share.path.to_string())
    }

    pub(crate) fn into_group(self) -> std::sync::Arc<ShareGroup> {
        std::sync::Arc::new(ShareGroup { name: self.0.into(), path: self.1.into() })
    }
}

/// A will waiting for its Will Delay Interval (MQTT 5) while its session is offline: the
/// message, when it is due, and who published it (as the hooks that see it published are told).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WillRecord {
    pub(crate) version: u8,
    /// When it is due (ms since the Unix epoch).
    pub(crate) due_at_ms: u64,
    /// Its client's username (empty if none) and address (`ip:port`).
    pub(crate) username: String,
    pub(crate) peer: String,
    /// The message, kept as a queued one is (its QoS and retain flag the will's).
    pub(crate) message: EntryRecord,
}

impl WillRecord {
    /// What is kept of will `message`, due at `at`, of the client `username` at `peer`.
    pub(crate) fn of(message: &Message, at: Instant, username: &str, peer: &str) -> WillRecord {
        let message = EntryRecord {
            version: RECORD_VERSION,
            topic: message.topic().to_owned(),
            payload: message.payload().to_vec(),
            qos: message.qos,
            retain: message.retain,
            forwarded: message.forwarded().to_vec(),
            expires_at_ms: message.expires_at.map(epoch_ms_of),
            timestamp_ms: message.timestamp_ms,
            subscription_ids: Vec::new(),
            share: None,
        };
        WillRecord {
            version: RECORD_VERSION,
            due_at_ms: epoch_ms_of(at),
            username: username.to_owned(),
            peer: peer.to_owned(),
            message,
        }
    }

    /// A record read back from the store.
    pub(crate) fn decode(bytes: &[u8], client_id: &str) -> Result<WillRecord, RecordError> {
        decode(bytes, "will", client_id)
    }

    /// The will's message back, published by session `publisher`.
    pub(crate) fn into_message(self, publisher: u64, now_ms: u64) -> Message {
        let mut message = self.message.into_delivery(0, now_ms).message;
        message.edit(|head| head.publisher = publisher);
        message
    }

    /// When it is due, as an instant of this process's clock (now if overdue).
    pub(crate) fn due_at(&self, now_ms: u64) -> Instant {
        instant_of(self.due_at_ms, now_ms)
    }
}

/// `at` in milliseconds since the Unix epoch (now if it has passed).
fn epoch_ms_of(at: Instant) -> u64 {
    let left = at.saturating_duration_since(Instant::now()).as_millis() as u64;
    crate::now_ms().saturating_add(left)
}

/// `at_ms` (since the Unix epoch) as an instant of this process's clock, `now_ms` being now
/// (now if it has passed).
fn instant_of(at_ms: u64, now_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms))
}

/// An [`EntryRecord`] borrowed from the message it describes: written to the store as that
/// record is (the same fields, in the same order, encode to the same bytes), without copying
/// the topic, payload and properties into a record first.
#[derive(Debug, Serialize)]
pub(crate) struct EntryView<'a> {
    version: u8,
    topic: &'a str,
    #[serde(serialize_with = "crate::bytes_whole")]
    payload: &'a [u8],
    qos: u8,
    retain: bool,
    #[serde(serialize_with = "crate::bytes_whole")]
    forwarded: &'a [u8],
    expires_at_ms: Option<u64>,
    timestamp_ms: u64,
    subscription_ids: &'a [u32],
    #[serde(skip)]
    share: Option<&'a ShareGroup>,
}

impl<'a> EntryView<'a> {
    /// What is kept of `delivery`.
    pub(crate) fn of(delivery: &'a Delivery) -> EntryView<'a> {
        let message = &delivery.message;
        let expires_at_ms = message.expires_at.map(epoch_ms_of);
        EntryView {
            version: RECORD_VERSION,
            topic: message.topic(),
            payload: message.payload(),
            qos: delivery.qos,
            retain: delivery.retain,
            forwarded: message.forwarded(),
            expires_at_ms,
            timestamp_ms: message.timestamp_ms,
            subscription_ids: &delivery.subscription_ids,
            share: delivery.share.as_deref(),
        }
    }
}

impl EntryRecord {
    /// The record as [`put_entry`] takes it.
    #[cfg(test)]
    pub(crate) fn view(&self) -> EntryView<'_> {
        EntryView {
            version: self.version,
            topic: &self.topic,
            payload: &self.payload,
            qos: self.qos,
            retain: self.retain,
            forwarded: &self.forwarded,
            expires_at_ms: self.expires_at_ms,
            timestamp_ms: self.timestamp_ms,
            subscription_ids: &self.subscription_ids,
            share: None,
        }
    }

    /// A record read back from the store: the record, then its share group if one follows.
    pub(crate) fn decode(bytes: &[u8], client_id: &str) -> Result<EntryRecord, RecordError> {
        let unreadable = unreadable("queued message", client_id);
        let (mut record, rest) = postcard::take_from_bytes::<EntryRecord>(bytes).map_err(unreadable)?;
        if !rest.is_empty() {
            record.share = Some(postcard::from_bytes(rest).map_err(unreadable)?);
        }
        Ok(record)
    }

    /// The delivery back, at `seq`.
    pub(crate) fn into_delivery(self, seq: u64, now_ms: u64) -> Delivery {
        let expires_at = self.expires_at_ms.map(|at| instant_of(at, now_ms));
        let head = Head {
            qos: self.qos,
            retain: self.retain,
            expires_at,
            publisher: 0,
            timestamp_ms: self.timestamp_ms,
            origin: None,
        };
        Delivery {
            message: Message::new(head, &self.topic, &self.payload, &self.forwarded),
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids.into_boxed_slice(),
            seq,
            maybe_sent: true,
            share: self.share.map(ShareTrailer::into_group),
        }
    }
}

/// The packet id a persistent session's message `seq` goes out with: the same before and after
/// a restart.
pub(crate) fn packet_id_of(seq: u64) -> u16 {
    (seq % u64::from(u16::MAX)) as u16 + 1
}

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("unreadable {what} of client {client_id:?}: {why}")]
    Unreadable { what: &'static str, client_id: String, why: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding to a Vec fails only for types serde cannot describe, which these are not.
    postcard::to_allocvec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str, client_id: &str) -> Result<T, RecordError> {
    postcard::from_bytes(bytes).map_err(unreadable(what, client_id))
}

/// The error for `client_id`'s `what` that postcard could not read.
fn unreadable<'a>(what: &'static str, client_id: &'a str) -> impl Fn(postcard::Error) -> RecordError + Copy + 'a {
    move |e| RecordError::Unreadable { what, client_id: client_id.to_owned(), why: e.to_string() }
}

/// The longest key made without an allocation (a client id of up to 53 bytes): two are made
/// for every message a persistent session gets (its put, then its delete).
const KEY_INLINE: usize = 64;

/// A key of [`Keys`]: on the stack when it is short, as most are.
pub(crate) type Key = smallvec::SmallVec<[u8; KEY_INLINE]>;

/// The keys of one client id.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// Length (u16, big-endian) and the client id.
    id: Vec<u8>,
}

impl Keys {
    pub(crate) fn new(client_id: &str) -> Keys {
        let mut id = Vec::with_capacity(2 + client_id.len());
        id.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        id.extend_from_slice(client_id.as_bytes());
        Keys { id }
    }

    fn with(&self, kind: u8, tail: &[u8]) -> Key {
        let mut key = Key::with_capacity(1 + self.id.len() + tail.len());
        key.push(kind);
        key.extend_from_slice(&self.id);
        key.extend_from_slice(tail);
        key
    }

    pub(crate) fn session(&self) -> Key {
        self.with(b's', &[])
    }

    pub(crate) fn entry(&self, seq: u64) -> Key {
        self.with(b'q', &seq.to_be_bytes())
    }

    pub(crate) fn released(&self, seq: u64) -> Key {
        self.with(b'l', &seq.to_be_bytes())
    }

    pub(crate) fn awaiting_rel(&self, packet_id: u16) -> Key {
        self.with(b'r', &packet_id.to_be_bytes())
    }

    pub(crate) fn will(&self) -> Key {
        self.with(b'w', &[])
    }

    /// Adds to `batch` the deletes of every key of this client id, those of messages still
    /// being written included (the store expands the prefixes when it commits the batch).
    pub(crate) fn delete_all(&self, batch: &mut Batch) -> Result<(), StoreError> {
        batch.delete(BUCKET, &self.session())?;
        batch.delete(BUCKET, &self.will())?;
        for kind in [b'q', b'l', b'r'] {
            batch.delete_prefix(BUCKET, &self.with(kind, &[]))?;
        }
        Ok(())
    }
}

/// Puts `record` for `keys` into `batch`.
pub(crate) fn put_session(batch: &mut Batch, keys: &Keys, record: &SessionRecord) -> Result<(), StoreError> {
    batch.put(BUCKET, &keys.session(), &record.encode_stored()).map(drop)
}

/// Puts `will` for `keys` into `batch`, or the delete of a will kept before if `None`.
pub(crate) fn put_will(batch: &mut Batch, keys: &Keys, will: Option<&WillRecord>) -> Result<(), StoreError> {
    match will {
        Some(will) => batch.put(BUCKET, &keys.will(), &encode(will)).map(drop),
        None => batch.delete(BUCKET, &keys.will()).map(drop),
    }
}

/// Puts `entry` at `seq` for `keys` into `batch`.
pub(crate) fn put_entry(batch: &mut Batch, keys: &Keys, seq: u64, entry: &EntryView<'_>) -> Result<(), StoreError> {
    // Encoded straight into the batch.
    batch
        .put_with(BUCKET, &keys.entry(seq), |w| {
            postcard::to_io(entry, &mut *w).map_err(std::io::Error::other)?;
            if let Some(share) = entry.share {
                let trailer = ShareTrailer::of(share);
                postcard::to_io(&trailer, w).map_err(std::io::Error::other)?;
            }
            Ok(())
        })
        .map(drop)
}

/// The bucket of what the node keeps about itself.
const NODE_BUCKET: &str = "core/node";
const ALIVE_KEY: &[u8] = b"alive_at";

/// Records that the node runs at `now_ms` (written every few seconds, not synced on its own).
pub(crate) fn put_alive(batch: &mut Batch, now_ms: u64) -> Result<(), StoreError> {
    batch.put(NODE_BUCKET, ALIVE_KEY, &now_ms.to_be_bytes()).map(drop)
}

/// One session read back at start.
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) client_id: String,
    pub(crate) record: SessionRecord,
    /// By sequence number, in order.
    pub(crate) entries: Vec<(u64, EntryRecord)>,
    /// Sequence numbers of the QoS 2 messages whose PUBREC came.
    pub(crate) released: Vec<u64>,
    pub(crate) awaiting_rel: Vec<u16>,
    /// Its client's will, waiting for its delay while the session was offline.
    pub(crate) will: Option<WillRecord>,
}

impl Restored {
    /// When it ends: its expiry counted from when it went offline (or when the node was last
    /// known to run, for a session online when the broker died); `None` for never.
    pub(crate) fn expires_at_ms(&self, alive_at_ms: u64) -> Option<u64> {
        if self.record.expiry_interval == u32::MAX {
            return None;
        }
        let offline = self.record.offline_since_ms.unwrap_or(alive_at_ms);
        Some(offline.saturating_add(u64::from(self.record.expiry_interval) * 1000))
    }

    /// [`Restored::expires_at_ms`] as an instant of this process's clock.
    pub(crate) fn expires_at(&self, alive_at_ms: u64, now_ms: u64) -> Option<Instant> {
        self.expires_at_ms(alive_at_ms).map(|at| instant_of(at, now_ms))
    }
}

/// What the store holds of the sessions.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) sessions: Vec<Restored>,
    /// When the node last said it ran (ms since the Unix epoch; 0 if never).
    pub(crate) alive_at_ms: u64,
    /// Keys that belong to no session record (left by a session that ended while its deletes
    /// were in flight), to delete.
    pub(crate) orphans: Vec<Vec<u8>>,
}

/// Every session in the store.
pub(crate) fn restore(store: &Store) -> Result<Stored, RecordError> {
    let mut sessions: Vec<Restored> = Vec::new();
    let mut orphans = Vec::new();
    let mut by_id = std::collections::HashMap::new();
    for (key, value) in store.scan_prefix(BUCKET, b"s")? {
        let Some((_, client_id, _)) = split_key(&key) else {
            orphans.push(key);
            continue;
        };
        let record = SessionRecord::decode_stored(&value, client_id)?;
        by_id.insert(client_id.to_owned(), sessions.len());
        sessions.push(Restored {
            client_id: client_id.to_owned(),
            record,
            entries: Vec::new(),
            released: Vec::new(),
            awaiting_rel: Vec::new(),
            will: None,
        });
    }
    for kind in [b'q', b'l', b'r', b'w'] {
        for (key, value) in store.scan_prefix(BUCKET, &[kind])? {
            let Some((index, client_id, tail)) =
                split_key(&key).and_then(|(_, id, tail)| Some((*by_id.get(id)?, id, tail)))
            else {
                orphans.push(key);
                continue;
            };
            let session = &mut sessions[index];
            match (kind, tail.try_into().map(u64::from_be_bytes), tail.try_into().map(u16::from_be_bytes)) {
                (b'q', Ok(seq), _) => session.entries.push((seq, EntryRecord::decode(&value, client_id)?)),
                (b'l', Ok(seq), _) => session.released.push(seq),
                (b'r', _, Ok(id)) => session.awaiting_rel.push(id),
                (b'w', ..) if tail.is_empty() => session.will = Some(WillRecord::decode(&value, client_id)?),
                _ => orphans.push(key),
            }
        }
    }
    let alive_at = store.get(NODE_BUCKET, ALIVE_KEY)?.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes);
    Ok(Stored { sessions, alive_at_ms: alive_at, orphans })
}

/// A key's kind, client id and what follows it.
fn split_key(key: &[u8]) -> Option<(u8, &str, &[u8])> {
    let (&kind, rest) = key.split_first()?;
    let (len, rest) = rest.split_at_checked(2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (id, tail) = rest.split_at_checked(len)?;
    Some((kind, std::str::from_utf8(id).ok()?, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str) -> EntryRecord {
        let mut delivery = Delivery::for_test(1, b"p");
        delivery.subscription_ids = Box::new([3]);
        let view = EntryView::of(&delivery);
        EntryRecord {
            version: view.version,
            topic: topic.to_owned(),
            payload: view.payload.to_vec(),
            qos: view.qos,
            retain: view.retain,
            forwarded: view.forwarded.to_vec(),
            expires_at_ms: view.expires_at_ms,
            timestamp_ms: view.timestamp_ms,
            subscription_ids: view.subscription_ids.to_vec(),
            share: None,
        }
    }

    #[test]
    fn a_stored_record_of_an_offline_session_says_up_to_where_its_messages_may_have_been_sent() {
        let stored = SessionRecord::encode_stored;
        let mut record = SessionRecord::new(300);
        record.offline_since_ms = Some(7);
        record.sent_through = Some(65_540);
        let bytes = stored(&record);
        assert_eq!(SessionRecord::decode_stored(&bytes, "c").unwrap(), record);
        assert_eq!(SessionRecord::decode(&bytes, "c").unwrap().sent_through, None, "a reader of the record alone");
        record.sent_through = None;
        assert_eq!(stored(&record), record.encode(), "without it, the record alone, as before");
        assert_eq!(SessionRecord::decode_stored(&record.encode(), "c").unwrap().sent_through, None);
        // Online: whatever follows is not read as one.
        record.offline_since_ms = None;
        let online = postcard::to_extend(&5u64, record.encode()).unwrap();
        assert_eq!(SessionRecord::decode_stored(&online, "c").unwrap().sent_through, None);
    }

    #[test]
    fn a_shared_record_carries_since_when_messages_are_pending_and_reads_as_a_record() {
        let mut record = SessionRecord::new(300);
        record.offline_since_ms = Some(7);
        let shared = record.encode_shared(Some(5));
        assert_eq!(SessionRecord::decode_revival(&shared), (Some(7), Some(5)));
        assert_eq!(SessionRecord::decode(&shared, "c").unwrap(), record, "readers of the record alone ignore the rest");
        assert_eq!(record.encode_shared(None), record.encode());
        assert_eq!(SessionRecord::decode_revival(&record.encode()), (Some(7), None), "a record without it");
        assert_eq!(SessionRecord::decode_revival(b"\xff"), (None, None));
    }

    #[test]
    fn a_view_is_written_as_its_record_and_reads_back_as_one() {
        let mut delivery = Delivery::for_test(2, b"payload");
        delivery.subscription_ids = Box::new([3, 70_000]);
        delivery.retain = true;
        let view = EntryView::of(&delivery);
        let mut batch = Batch::new();
        put_entry(&mut batch, &Keys::new("c"), 9, &view).unwrap();
        let store = Store::in_memory();
        store.commit(batch).unwrap();
        let stored = store.get(BUCKET, &Keys::new("c").entry(9)).unwrap().unwrap();
        let record: EntryRecord = decode(&stored, "entry", "c").unwrap();
        assert_eq!(encode(&record), stored);
        assert_eq!((record.qos, record.retain, &record.payload[..]), (2, true, &b"payload"[..]));
        assert_eq!((&*record.topic, &record.subscription_ids[..]), (delivery.message.topic(), &[3, 70_000][..]));
        assert_eq!(EntryRecord::decode(&stored, "c").unwrap(), record, "no share group: no trailer");
    }

    #[test]
    fn a_share_groups_message_reads_back_with_its_group_and_older_readers_ignore_it() {
        let mut delivery = Delivery::for_test(1, b"p");
        delivery.share = Some(std::sync::Arc::new(ShareGroup { name: "g".into(), path: "a/+".into() }));
        let mut batch = Batch::new();
        put_entry(&mut batch, &Keys::new("c"), 1, &EntryView::of(&delivery)).unwrap();
        let store = Store::in_memory();
        store.commit(batch).unwrap();
        let stored = store.get(BUCKET, &Keys::new("c").entry(1)).unwrap().unwrap();
        let record = EntryRecord::decode(&stored, "c").unwrap();
        assert_eq!(record.share, Some(ShareTrailer("g".into(), "a/+".into())));
        let back = record.clone().into_delivery(1, crate::now_ms());
        assert_eq!(back.share.as_deref(), delivery.share.as_deref());
        // A reader of the record alone (a broker from before the trailer) reads the same record.
        let older: EntryRecord = decode(&stored, "entry", "c").unwrap();
        assert_eq!(EntryRecord { share: record.share.clone(), ..older }, record);
    }

    #[test]
    fn sessions_and_their_messages_read_back_in_order_and_orphans_are_found() {
        let store = Store::in_memory();
        let mut batch = Batch::new();
        // "a" is a prefix of "ab": the length before the id keeps their keys apart.
        for id in ["a", "ab"] {
            let keys = Keys::new(id);
            let mut record = SessionRecord::new(60);
            let options = SubscriptionOptions { qos: 1, ..Default::default() };
            record.set_subscriptions([("t/#", options, Some(7))].into_iter());
            put_session(&mut batch, &keys, &record).unwrap();
            for seq in [2u64, 1, 300] {
                put_entry(&mut batch, &keys, seq, &entry(&format!("{id}/{seq}")).view()).unwrap();
            }
            batch.put(BUCKET, &keys.awaiting_rel(9), b"").unwrap();
        }
        let head = Head { qos: 1, retain: true, expires_at: None, publisher: 0, timestamp_ms: 77, origin: None };
        let due = Instant::now() + Duration::from_secs(60);
        let will = WillRecord::of(&Message::new(head, "w/a", b"gone", b""), due, "u", "127.0.0.1:5");
        put_will(&mut batch, &Keys::new("a"), Some(&will)).unwrap();
        put_will(&mut batch, &Keys::new("gone"), Some(&will)).unwrap();
        put_entry(&mut batch, &Keys::new("gone"), 1, &entry("x").view()).unwrap();
        put_alive(&mut batch, 1234).unwrap();
        store.commit(batch).unwrap();

        let Stored { sessions, alive_at_ms, orphans } = restore(&store).unwrap();
        assert_eq!(alive_at_ms, 1234);
        assert_eq!(orphans, [Keys::new("gone").entry(1).to_vec(), Keys::new("gone").will().to_vec()]);
        let ids: Vec<_> = sessions.iter().map(|s| s.client_id.as_str()).collect();
        assert_eq!(ids, ["a", "ab"]);
        let a = &sessions[0];
        let topics: Vec<_> = a.entries.iter().map(|(_, e)| e.topic.as_str()).collect();
        assert_eq!(topics, ["a/1", "a/2", "a/300"]);
        assert_eq!(a.awaiting_rel, [9]);
        let subs: Vec<_> = a.record.subscriptions().map(|(f, o, id)| (f.to_owned(), o.qos, id)).collect();
        assert_eq!(subs, [("t/#".to_owned(), 1, Some(7))]);
        assert_eq!(a.will.as_ref(), Some(&will));
        assert!(sessions[1].will.is_none());
        assert!(will.due_at(crate::now_ms()) > Instant::now() + Duration::from_secs(58), "still a minute away");
        let back = will.clone().into_message(3, crate::now_ms());
        assert_eq!(
            (back.topic(), back.payload(), back.qos, back.retain, back.publisher),
            ("w/a", &b"gone"[..], 1, true, 3)
        );
        assert!(will.due_at(crate::now_ms()) > Instant::now() + Duration::from_secs(58), "still a minute away");

        let mut batch = Batch::new();
        Keys::new("a").delete_all(&mut batch).unwrap();
        store.commit(batch).unwrap();
        let Stored { sessions, orphans, .. } = restore(&store).unwrap();
        assert_eq!(sessions.len(), 1, "only ab is left");
        assert!(!orphans.contains(&Keys::new("a").will().to_vec()), "its will went with it");
    }

    #[test]
    fn expiry_counts_from_going_offline_or_from_the_last_sign_of_life() {
        let mut restored = Restored {
            client_id: "c".into(),
            record: SessionRecord::new(10),
            entries: vec![],
            released: vec![],
            awaiting_rel: vec![],
            will: None,
        };
        assert_eq!(restored.expires_at_ms(5_000), Some(15_000), "online when the broker died");
        restored.record.offline_since_ms = Some(1_000);
        assert_eq!(restored.expires_at_ms(5_000), Some(11_000));
        restored.record.expiry_interval = u32::MAX;
        assert_eq!(restored.expires_at_ms(5_000), None);
    }
}
