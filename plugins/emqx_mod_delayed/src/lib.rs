//! `emqx_mod_delayed`: delayed publish, as EMQX 4.x's module. A message published to
//! `$delayed/<seconds>/<topic>` is held and published to `<topic>` after `<seconds>` (at most
//! 4294967, EMQX's limit), with its QoS, payload and retain flag. A topic that does not parse
//! (`$delayed/soon/x`) is left alone, as EMQX leaves it.
//!
//! Held messages are kept in `data/emqx_mod_delayed.json`, so they survive an unload, a
//! reload and a broker restart; one that fell due while the module was not running is
//! published as soon as it runs again. The file is rewritten atomically by the module's own
//! thread, not by the publishing client's: a burst of `$delayed/` publishes costs one write,
//! not one each, and the last changes are written when the module stops.
//!
//! Config (`[delayed]`): `max_delayed_messages` (EMQX's name), the most messages held at
//! once; 0 (the default, as in EMQX) for no limit. A `$delayed/` message over it is dropped,
//! counted and logged (one line a minute, with the count).
//!
//! `broker ctl delayed list` prints one line per held message (`topic`, `qos`, `retain`,
//! seconds left); `broker ctl delayed clean` drops them all; `broker ctl delayed stats` prints
//! how many are held, the limit, and how many were dropped over it.

mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo, PluginKind, QoS,
};
use store::{Delayed, Store};

/// EMQX's longest delay, in seconds.
const MAX_DELAY_SECS: u64 = 4_294_967;

/// How often a message dropped over `max_delayed_messages` is logged (with the count since).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The `[delayed]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Most messages held at once; 0 for no limit.
    max_delayed_messages: usize,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `$delayed/<seconds>/<topic>` → (seconds, topic).
fn parse(topic: &str) -> Option<(u64, &str)> {
    let rest = topic.strip_prefix("$delayed/")?;
    let (seconds, topic) = rest.split_once('/')?;
    let seconds: u64 = seconds.parse().ok()?;
    (seconds <= MAX_DELAY_SECS && !topic.is_empty()).then_some((seconds, topic))
}

/// What the module and its publishing thread share.
struct Shared {
    host: Host,
    store: Mutex<Store>,
    changed: Condvar,
    /// Messages dropped over `max_delayed_messages`, ever, and when that was last logged
    /// (with the count then).
    dropped: AtomicU64,
    drop_logged: Mutex<Option<(Instant, u64)>>,
}

impl Shared {
    /// Publishes what is due and writes the file when the store changed, then waits until the
    /// next is due or the store changes. Writes the last changes when stopping.
    fn run(&self) {
        let mut store = lock(&self.store);
        loop {
            if store.dirty {
                let snapshot = store.snapshot();
                drop(store);
                if let Err(e) = snapshot.and_then(|bytes| store::write(self.host.data_dir(), &bytes)) {
                    self.host.warn(&format!("cannot save delayed messages: {e}"));
                }
                store = lock(&self.store);
                continue;
            }
            if store.stopping {
                return;
            }
            let due = store.take_due(now_ms());
            if !due.is_empty() {
                drop(store);
                for message in due {
                    let qos = QoS::from_u8(message.qos);
                    if let Err(e) = self.host.publish(&message.topic, &message.payload, qos, message.retain) {
                        self.host.warn(&format!("delayed publish to {} failed: {e}", message.topic));
                    }
                }
                store = lock(&self.store);
                continue;
            }
            let wait = store
                .next_due()
                .map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(now_ms()) + 1));
            store = self.changed.wait_timeout(store, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Shared {
    /// Counts a message dropped over `max`, and logs it (at most a line a minute).
    fn dropped_over(&self, max: usize, topic: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut logged = lock(&self.drop_logged);
        let now = Instant::now();
        let since = match *logged {
            Some((at, _)) if now.duration_since(at) < DROP_LOG_INTERVAL => return,
            Some((_, count)) => dropped - count,
            None => 1,
        };
        *logged = Some((now, dropped));
        let topic: String = topic.chars().take(256).collect();
        self.host.warn(&format!(
            "delayed message to {topic} dropped: max_delayed_messages ({max}) reached ({since} dropped since the last \
             such line, {dropped} in all)"
        ));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running module.
pub struct DelayedPublish {
    settings: Settings,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Plugin for DelayedPublish {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let store = Store::load(host.data_dir())?;
        host.info(&format!("{} delayed messages held", store.len()));
        let shared = Arc::new(Shared {
            host,
            store: Mutex::new(store),
            changed: Condvar::new(),
            dropped: AtomicU64::new(0),
            drop_logged: Mutex::new(None),
        });
        let thread = std::thread::Builder::new().name("emqx_mod_delayed".into()).spawn({
            let shared = shared.clone();
            move || shared.run()
        })?;
        Ok(DelayedPublish { settings, shared, thread: Some(thread) })
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        let Some((seconds, topic)) = parse(event.topic) else {
            return HookResult::Continue;
        };
        let max = self.settings.max_delayed_messages;
        let mut store = lock(&self.shared.store);
        if max > 0 && store.len() >= max {
            drop(store);
            self.shared.dropped_over(max, topic);
            return HookResult::Drop;
        }
        let message = Delayed {
            due_ms: event.timestamp_ms + seconds * 1000,
            topic: topic.to_owned(),
            payload: event.payload.to_vec(),
            qos: event.qos as u8,
            retain: event.retain,
        };
        store.add(message);
        // The module's thread writes the file.
        self.shared.changed.notify_one();
        // Held, not routed now (EMQX stops the original the same way).
        HookResult::Drop
    }

    fn ctl(&self, args: &[String]) -> Result<String, String> {
        let mut store = lock(&self.shared.store);
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["list"] => {
                let now = now_ms();
                Ok(store
                    .iter()
                    .map(|m| {
                        format!(
                            "topic={} qos={} retain={} due_in={}s",
                            m.topic,
                            m.qos,
                            m.retain,
                            m.due_ms.saturating_sub(now).div_ceil(1000)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
            ["clean"] => {
                let n = store.clear();
                self.shared.changed.notify_one();
                Ok(format!("Cleaned {n} delayed messages"))
            }
            ["stats"] => Ok(format!(
                "held={} max_delayed_messages={} dropped={}",
                store.len(),
                self.settings.max_delayed_messages,
                self.shared.dropped.load(Ordering::Relaxed)
            )),
            _ => Err("usage: broker ctl delayed list | clean | stats".to_owned()),
        }
    }

    fn stop(mut self) {
        lock(&self.shared.store).stopping = true;
        self.shared.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

declare_plugin!(
    DelayedPublish,
    PluginInfo {
        name: "emqx_mod_delayed",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Delayed Publish Module",
        kind: PluginKind::Module,
        hooks: HookMask::of(&[Hook::MessagePublish]),
        // Before a retainer or ACL sees the `$delayed/...` original.
        priority: 100,
        ctl_command: Some("delayed"),
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delayed_topics_parse_as_emqx_parses_them() {
        assert_eq!(parse("$delayed/10/a/b"), Some((10, "a/b")));
        assert_eq!(parse("$delayed/0/x"), Some((0, "x")));
        assert_eq!(parse("$delayed/4294967/x"), Some((4_294_967, "x")));
        assert_eq!(parse("$delayed/4294968/x"), None, "over EMQX's limit");
        assert_eq!(parse("$delayed/soon/x"), None);
        assert_eq!(parse("$delayed/10/"), None);
        assert_eq!(parse("a/b"), None);
    }
}
