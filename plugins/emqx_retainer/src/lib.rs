//! `emqx_retainer`: owns retained messages, as EMQX's retainer does. A PUBLISH with the retain
//! flag is stored per topic (latest wins; an empty payload deletes it); a new subscription
//! (wildcards too) gets the matching stored messages, retain flag set, at the lower of the
//! stored and the granted QoS, with the subscription's identifier, as its Retain Handling
//! option asks (MQTT 5). A message keeps its MQTT 5 properties, and its Message Expiry
//! Interval is honoured. The broker itself never retains: with this plugin unloaded,
//! nothing is retained; loaded again (`storage_type = "disc"`), its stored messages are back.
//!
//! With `storage_type = "disc"` (or `disc_only`) every retained message is one key (its topic)
//! in the plugin's bucket `retained` of the broker's store, written before the
//! `message.publish` hook returns, so a retained message whose PUBLISH was acknowledged
//! survives `kill -9`; an empty payload deletes the key. The index in memory (topic-ordered) is
//! what subscriptions read; it is loaded from the store at start. At the first start with
//! `disc`, a `data/emqx_retainer.dat` left by an older version is imported and renamed
//! `emqx_retainer.dat.imported` (a damaged one is left in place, with a warning). With `ram`
//! (the default) nothing touches the store.
//!
//! The index follows the bucket's change feed too: what another broker node of a cluster stored
//! (the cluster shares this plugin's bucket) is in the index within 200 ms, and before any
//! retained message is delivered to a new subscription.
//!
//! Config (`[retainer]`, EMQX's names and defaults): `storage_type = "ram" | "disc" |
//! "disc_only"` (default `ram`; `disc_only` behaves as `disc`), `max_retained_messages` (0 =
//! unlimited), `max_payload_size` (`1MB`), `expiry_interval` (0 = never; a bare number is
//! milliseconds, or `"1h"`). A message over a limit is not retained, with a warning; it is
//! still delivered to current subscribers.
//!
//! `broker ctl retainer info | topics | clean [TOPIC_FILTER]` prints what EMQX's
//! `emqx_ctl retainer` prints (`retained/total: N`, one topic a line,
//! `Cleaned N retained messages`).
#![forbid(unsafe_code)]

mod settings;
mod store;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plugin_api::store::{Bucket, StoreBatch, StoreWatch};
use plugin_api::{
    declare_plugin, topic, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo, PluginKind,
    QoS, RetainedMessage,
};
use settings::{Settings, StorageType};
use store::{Messages, Retained};

/// How many locks the writes of different topics spread over (see [`Retainer::stripes`]).
const STRIPES: usize = 64;
/// The most operations one import batch holds.
const IMPORT_BATCH: usize = 1000;
/// How often the index takes in the store's changes when no subscription asks it to.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The index: the messages by topic, and the new topics being written to the store (counted
/// against `max_retained_messages` until they are in).
#[derive(Debug, Default)]
struct Index {
    messages: Messages,
    reserved: usize,
}

/// The plugin: the index (the read path) and, with `disc` / `disc_only`, its bucket.
pub struct Retainer {
    host: Host,
    settings: Settings,
    index: Arc<Mutex<Index>>,
    /// The bucket's change feed (`disc`), with the thread that applies it every
    /// [`FOLLOW_EVERY`] and the sender whose drop stops it at once (not at its next turn: a
    /// reload waits for it).
    feed: Option<Arc<Mutex<StoreWatch>>>,
    follower: Option<(JoinHandle<()>, std::sync::mpsc::Sender<()>)>,
    /// The store's bucket; `None` with `ram`, which never touches the store.
    bucket: Option<Bucket>,
    /// Orders the writes of one topic: a topic's lock is held from its store write to its index
    /// update, so the store and the index see one topic's changes in the same order, while
    /// writes of other topics go to the store at the same time (one group commit).
    stripes: Vec<Mutex<()>>,
}

fn stripe_of(topic: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    topic.hash(&mut hasher);
    (hasher.finish() % STRIPES as u64) as usize
}

impl Retainer {
    fn expired(&self, message: &Retained, now: u64) -> bool {
        let ttl = self.settings.expiry_interval.as_millis() as u64;
        (ttl > 0 && now.saturating_sub(message.stored_at_ms) >= ttl)
            || (message.expires_at_ms > 0 && now >= message.expires_at_ms)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Stores (or, for an empty payload, deletes) the retained message `event` carries. With
    /// `disc`, the store has it before this returns, so a message whose PUBLISH was
    /// acknowledged survives a crash; a write the store refuses leaves the index as it was.
    fn store(&self, event: &Event<'_>) {
        let topic = event.topic;
        let _topic_order = lock(&self.stripes[stripe_of(topic)]);
        if event.payload.is_empty() {
            if !self.index().messages.contains_key(topic) {
                return;
            }
            if let Some(bucket) = &self.bucket {
                if let Err(e) = bucket.delete(topic.as_bytes()) {
                    self.host.warn(&format!("retained message on {topic} not deleted: {e}"));
                    return;
                }
            }
            let mut index = self.index();
            index.messages.remove(topic);
            report_count(&self.host, &index);
            return;
        }
        if event.payload.len() > self.settings.max_payload_size {
            self.host.warn(&format!(
                "retained message on {topic} not stored: {} bytes is over max_payload_size ({} bytes)",
                event.payload.len(),
                self.settings.max_payload_size
            ));
            return;
        }
        let reserved = {
            let mut index = self.index();
            let new = !index.messages.contains_key(topic);
            let max = self.settings.max_retained_messages;
            if new && max > 0 && index.messages.len() + index.reserved >= max {
                drop(index);
                self.host
                    .warn(&format!("retained message on {topic} not stored: max_retained_messages ({max}) reached"));
                return;
            }
            index.reserved += usize::from(new);
            new
        };
        let now = now_ms();
        let message = Retained {
            payload: event.payload.to_vec(),
            qos: event.qos as u8,
            stored_at_ms: now,
            properties: event.properties.to_vec(),
            expires_at_ms: event.message_expiry.map_or(0, |s| now + u64::from(s) * 1000),
        };
        let written = match &self.bucket {
            Some(bucket) => bucket.put(topic.as_bytes(), &store::encode_value(&message)),
            None => Ok(()),
        };
        let mut index = self.index();
        index.reserved -= usize::from(reserved);
        match written {
            Ok(()) => {
                index.messages.insert(topic.to_owned(), message);
                report_count(&self.host, &index);
                drop(index);
                // EMQX's `messages.retained`: retained messages stored.
                let _ = self.host.metric_add("messages.retained", 1);
            }
            Err(e) => {
                drop(index);
                self.host.warn(&format!("retained message on {topic} not stored: {e}"));
            }
        }
    }

    /// Removes the messages `remove` picks (and the expired ones, as EMQX's expiry timer would
    /// have), from the store first; returns how many unexpired ones `remove` picked.
    fn remove_where(&self, remove: impl Fn(&str) -> bool) -> Result<usize, String> {
        let now = now_ms();
        let picked = |index: &Index| -> Vec<String> {
            index
                .messages
                .iter()
                .filter(|(topic, message)| remove(topic) || self.expired(message, now))
                .map(|(topic, _)| topic.clone())
                .collect()
        };
        let topics = picked(&self.index());
        if topics.is_empty() {
            return Ok(0);
        }
        // The topics' write locks, in one order (a writer holds one at a time): no write of these
        // topics lands between the store's delete and the index's.
        let mut stripes: Vec<usize> = topics.iter().map(|t| stripe_of(t)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _held: Vec<_> = stripes.iter().map(|&i| lock(&self.stripes[i])).collect();
        // Picked again: a topic may have changed before its lock was taken.
        let topics: Vec<String> =
            picked(&self.index()).into_iter().filter(|t| stripes.binary_search(&stripe_of(t)).is_ok()).collect();
        if let Some(bucket) = &self.bucket {
            let mut batch = StoreBatch::new();
            for topic in &topics {
                batch.delete(topic.as_bytes());
            }
            bucket.commit(&batch).map_err(|e| format!("cannot delete retained messages from the store: {e}"))?;
        }
        let mut index = self.index();
        let mut removed = 0;
        for topic in &topics {
            if let Some(message) = index.messages.remove(topic) {
                removed += usize::from(remove(topic) && !self.expired(&message, now));
            }
        }
        report_count(&self.host, &index);
        Ok(removed)
    }

    /// The stored topics, without the expired ones (removed now).
    fn topics(&self) -> Vec<String> {
        if let Err(e) = self.remove_where(|_| false) {
            self.host.warn(&e);
        }
        self.index().messages.keys().cloned().collect()
    }

    fn deliver(&self, event: &Event<'_>) {
        // Retain Handling, and no retained messages for shared subscriptions.
        if !event.wants_retained() {
            return;
        }
        if let Some(feed) = &self.feed {
            take_in_changes(&self.host, &self.index, feed);
        }
        let filter = event.topic;
        let now = now_ms();
        let matching: Vec<(String, Retained)> = store::candidates(&self.index().messages, filter)
            .filter(|(topic, message)| topic::matches(filter, topic) && !self.expired(message, now))
            .map(|(topic, message)| (topic.clone(), message.clone()))
            .collect();
        for (topic, message) in matching {
            let retained = RetainedMessage {
                topic: &topic,
                payload: &message.payload,
                qos: QoS::from_u8(message.qos),
                properties: &message.properties,
                // The remaining interval, rounded up.
                message_expiry: (message.expires_at_ms > 0)
                    .then(|| (message.expires_at_ms.saturating_sub(now)).div_ceil(1000) as u32),
            };
            // The broker sets the retain flag and delivers at the lower of the stored and
            // the granted QoS, with the subscription's identifier.
            if let Err(e) = self.host.deliver_retained(event.client_id, filter, &retained) {
                self.host.debug(&format!("retained {topic} not delivered: {e}"));
            }
        }
    }
}

/// Applies to `index` the changes `feed` holds: those made on other nodes (and this plugin's
/// own, already in the index: applying them again changes nothing).
fn take_in_changes(host: &Host, index: &Mutex<Index>, feed: &Mutex<StoreWatch>) {
    let feed = lock(feed);
    loop {
        match feed.next_timeout(Duration::ZERO) {
            Ok(Some(change)) => {
                let topic = String::from_utf8_lossy(&change.key).into_owned();
                match change.value.as_deref().map(store::decode_value) {
                    Some(Ok(message)) => {
                        lock(index).messages.insert(topic, message);
                    }
                    Some(Err(e)) => host.warn(&format!("retained message on {topic} in the store not loaded: {e}")),
                    None => {
                        lock(index).messages.remove(&topic);
                    }
                }
            }
            Ok(None) => return report_count(host, &lock(index)),
            Err(e) => {
                host.debug(&format!("the retained messages' change feed: {e}"));
                return;
            }
        }
    }
}

/// Tells the broker how many retained messages there are: EMQX's `retained.count` gauge (and
/// `retained.max`, which the broker keeps beside it).
fn report_count(host: &Host, index: &Index) {
    let _ = host.stat_set("retained.count", index.messages.len() as u64);
}

/// Imports the old file's messages into `bucket`; says how many.
fn import(bucket: &Bucket, bytes: &[u8]) -> Result<String, String> {
    let (messages, problem) = store::decode(bytes);
    if let Some(problem) = problem {
        return Err(format!("damaged: {problem}"));
    }
    let entries: Vec<_> = messages.iter().collect();
    for chunk in entries.chunks(IMPORT_BATCH) {
        let mut batch = StoreBatch::new();
        for (topic, message) in chunk {
            batch.put(topic.as_bytes(), &store::encode_value(message));
        }
        bucket.commit(&batch).map_err(|e| format!("the store refused them: {e}"))?;
    }
    Ok(format!("{} retained messages", messages.len()))
}

/// The messages in `bucket`; a value this version cannot read is left there, with a warning.
fn load(host: &Host, bucket: &Bucket) -> Result<Messages, String> {
    let entries = bucket.scan_prefix(b"").map_err(|e| format!("cannot read retained messages from the store: {e}"))?;
    let mut messages = Messages::new();
    for (key, value) in entries {
        let topic = String::from_utf8_lossy(&key).into_owned();
        match store::decode_value(&value) {
            Ok(message) => {
                messages.insert(topic, message);
            }
            Err(e) => host.warn(&format!("retained message on {topic} in the store not loaded: {e}")),
        }
    }
    Ok(messages)
}

impl Plugin for Retainer {
    /// A message that is not retained is none of its business: the broker need not make an
    /// event of it (`on_event` still checks the flag, for an older broker).
    const RETAINED_ONLY_HOOKS: HookMask = HookMask::of(&[Hook::MessagePublish]);

    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let (bucket, feed, messages) = match settings.storage_type {
            StorageType::Ram => (None, None, Messages::new()),
            StorageType::Disc | StorageType::DiscOnly => {
                let bucket = host.store(store::BUCKET);
                plugin_api::store::import_file(&host, &store::path(host.data_dir()), |bytes| import(&bucket, bytes));
                // Watching before reading: nothing committed between the two is missed.
                let feed = bucket.watch(b"").map(|w| Arc::new(Mutex::new(w)));
                if let Err(e) = &feed {
                    host.warn(&format!("no change feed ({e}): changes made on other nodes are not seen"));
                }
                let messages = load(&host, &bucket)?;
                (Some(bucket), feed.ok(), messages)
            }
        };
        let index = Arc::new(Mutex::new(Index { messages, reserved: 0 }));
        let follower = match &feed {
            Some(feed) => {
                let (host, index, feed) = (host, index.clone(), feed.clone());
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let thread = std::thread::Builder::new().name("emqx_retainer".into()).spawn(move || {
                    // Waits out FOLLOW_EVERY, or ends when `stop` is dropped.
                    while stopped.recv_timeout(FOLLOW_EVERY) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                        take_in_changes(&host, &index, &feed);
                    }
                })?;
                Some((thread, stop))
            }
            None => None,
        };
        let retainer = Retainer {
            host,
            settings,
            index,
            feed,
            follower,
            bucket,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        };
        let count = retainer.topics().len();
        report_count(&host, &retainer.index());
        host.info(&format!(
            "retainer started (storage_type {}, {count} retained messages)",
            retainer.settings.storage_type.name()
        ));
        Ok(retainer)
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        match event.hook {
            Hook::MessagePublish if event.retain => self.store(event),
            Hook::SessionSubscribed => self.deliver(event),
            _ => {}
        }
        HookResult::Continue
    }

    fn ctl(&self, args: &[String]) -> Result<String, String> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let cleaned = |n: usize| format!("Cleaned {n} retained messages");
        match words.as_slice() {
            ["info"] => Ok(format!("retained/total: {}", self.topics().len())),
            // In topic order (the index's).
            ["topics"] => Ok(self.topics().join("\n")),
            ["clean"] => self.remove_where(|_| true).map(cleaned),
            ["clean", filter] if topic::is_valid_filter(filter) => {
                self.remove_where(|topic| topic::matches(filter, topic)).map(cleaned)
            }
            ["clean", filter] => Err(format!("invalid topic filter {filter:?}")),
            _ => Err("usage: broker ctl retainer info | topics | clean [TOPIC_FILTER]".to_owned()),
        }
    }

    fn stop(mut self) {
        if let Some((thread, stop)) = self.follower.take() {
            drop(stop);
            let _ = thread.join();
        }
        // Not served while it is not running.
        let _ = self.host.stat_set("retained.count", 0);
    }
}

declare_plugin!(
    Retainer,
    PluginInfo {
        name: "emqx_retainer",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Retainer",
        kind: PluginKind::Plugin,
        hooks: HookMask::of(&[Hook::MessagePublish, Hook::SessionSubscribed]),
        priority: 0,
        ctl_command: Some("retainer"),
    }
);
