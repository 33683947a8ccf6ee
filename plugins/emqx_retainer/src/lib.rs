//! `emqx_retainer`: owns retained messages, as EMQX's retainer does. A PUBLISH with the retain
//! flag is stored per topic (latest wins; an empty payload deletes it); a new subscription
//! (wildcards too) gets the matching stored messages, retain flag set, at the lower of the
//! stored and the granted QoS, with the subscription's identifier, as its Retain Handling
//! option asks (MQTT 5). A message keeps its MQTT 5 properties, and its Message Expiry
//! Interval is honoured. The broker itself never retains: with this plugin unloaded,
//! nothing is retained; loaded again (`storage_type = "disc"`), its stored messages are back.
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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use plugin_api::{
    declare_plugin, topic, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo, PluginKind,
    QoS, RetainedMessage,
};
use settings::{Settings, StorageType};
use store::{Messages, Retained};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shared between the hooks and the disc writer.
#[derive(Debug, Default)]
struct Shared {
    messages: Mutex<Messages>,
    dirty: Mutex<bool>,
    changed: Condvar,
    stopping: AtomicBool,
}

impl Shared {
    fn mark_dirty(&self) {
        *lock(&self.dirty) = true;
        self.changed.notify_one();
    }
}

/// The thread that writes the store to disc after changes (coalescing bursts).
#[derive(Debug)]
struct DiscWriter {
    thread: JoinHandle<()>,
}

impl DiscWriter {
    fn start(shared: Arc<Shared>, host: Host, dir: PathBuf) -> std::io::Result<DiscWriter> {
        let thread = std::thread::Builder::new().name("emqx_retainer".to_owned()).spawn(move || loop {
            let stopping = {
                let mut dirty = lock(&shared.dirty);
                while !*dirty && !shared.stopping.load(Ordering::SeqCst) {
                    dirty = shared.changed.wait(dirty).unwrap_or_else(|e| e.into_inner());
                }
                let was_dirty = std::mem::take(&mut *dirty);
                if !was_dirty {
                    return; // stopping, nothing left to write
                }
                shared.stopping.load(Ordering::SeqCst)
            };
            let snapshot = lock(&shared.messages).clone();
            if let Err(e) = store::save(&dir, &snapshot) {
                host.error(&format!("cannot save retained messages to {}: {e}", store::path(&dir).display()));
            }
            if stopping && !*lock(&shared.dirty) {
                return;
            }
        })?;
        Ok(DiscWriter { thread })
    }
}

pub struct Retainer {
    host: Host,
    settings: Settings,
    shared: Arc<Shared>,
    writer: Option<DiscWriter>,
}

impl Retainer {
    fn expired(&self, message: &Retained, now: u64) -> bool {
        let ttl = self.settings.expiry_interval.as_millis() as u64;
        (ttl > 0 && now.saturating_sub(message.stored_at_ms) >= ttl)
            || (message.expires_at_ms > 0 && now >= message.expires_at_ms)
    }

    fn store(&self, event: &Event<'_>) {
        let topic = event.topic;
        let changed = {
            let mut messages = lock(&self.shared.messages);
            if event.payload.is_empty() {
                messages.remove(topic).is_some()
            } else if event.payload.len() > self.settings.max_payload_size {
                self.host.warn(&format!(
                    "retained message on {topic} not stored: {} bytes is over max_payload_size ({} bytes)",
                    event.payload.len(),
                    self.settings.max_payload_size
                ));
                false
            } else if self.settings.max_retained_messages > 0
                && !messages.contains_key(topic)
                && messages.len() >= self.settings.max_retained_messages
            {
                self.host.warn(&format!(
                    "retained message on {topic} not stored: max_retained_messages ({}) reached",
                    self.settings.max_retained_messages
                ));
                false
            } else {
                let now = now_ms();
                let message = Retained {
                    payload: event.payload.to_vec(),
                    qos: event.qos as u8,
                    stored_at_ms: now,
                    properties: event.properties.to_vec(),
                    expires_at_ms: event.message_expiry.map_or(0, |s| now + u64::from(s) * 1000),
                };
                messages.insert(topic.to_owned(), message);
                true
            }
        };
        if changed && self.writer.is_some() {
            self.shared.mark_dirty();
        }
    }

    /// The stored messages, without the expired ones (removed now, as EMQX's expiry timer
    /// would have).
    fn purge_expired(&self) -> MutexGuard<'_, Messages> {
        let now = now_ms();
        let mut messages = lock(&self.shared.messages);
        let before = messages.len();
        messages.retain(|_, message| !self.expired(message, now));
        if messages.len() != before && self.writer.is_some() {
            self.shared.mark_dirty();
        }
        messages
    }

    /// Removes the messages whose topic `remove` picks; says how many, as EMQX does.
    fn clean(&self, remove: impl Fn(&str) -> bool) -> String {
        let removed = {
            let mut messages = self.purge_expired();
            let before = messages.len();
            messages.retain(|topic, _| !remove(topic));
            before - messages.len()
        };
        if removed > 0 && self.writer.is_some() {
            self.shared.mark_dirty();
        }
        format!("Cleaned {removed} retained messages")
    }

    fn deliver(&self, event: &Event<'_>) {
        // Retain Handling, and no retained messages for shared subscriptions.
        if !event.wants_retained() {
            return;
        }
        let filter = event.topic;
        let now = now_ms();
        let matching: Vec<(String, Retained)> = store::candidates(&lock(&self.shared.messages), filter)
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

impl Plugin for Retainer {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let shared = Arc::new(Shared::default());
        let dir = host.data_dir().to_owned();
        let writer = match settings.storage_type {
            StorageType::Ram => None,
            StorageType::Disc | StorageType::DiscOnly => {
                let path = store::path(&dir);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let (messages, problem) = store::decode(&bytes);
                        if let Some(problem) = problem {
                            host.error(&format!(
                                "{}: {problem}; kept the {} messages read",
                                path.display(),
                                messages.len()
                            ));
                        }
                        *lock(&shared.messages) = messages;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
                }
                Some(DiscWriter::start(shared.clone(), host, dir)?)
            }
        };
        let count = lock(&shared.messages).len();
        host.info(&format!(
            "retainer started (storage_type {}, {count} retained messages)",
            settings.storage_type.name()
        ));
        Ok(Retainer { host, settings, shared, writer })
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
        match words.as_slice() {
            ["info"] => Ok(format!("retained/total: {}", self.purge_expired().len())),
            ["topics"] => {
                let mut topics: Vec<String> = self.purge_expired().keys().cloned().collect();
                topics.sort();
                Ok(topics.join("\n"))
            }
            ["clean"] => Ok(self.clean(|_| true)),
            ["clean", filter] if topic::is_valid_filter(filter) => {
                Ok(self.clean(|topic| topic::matches(filter, topic)))
            }
            ["clean", filter] => Err(format!("invalid topic filter {filter:?}")),
            _ => Err("usage: broker ctl retainer info | topics | clean [TOPIC_FILTER]".to_owned()),
        }
    }

    fn stop(self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_one();
        if let Some(writer) = self.writer {
            let _ = writer.thread.join();
        }
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
