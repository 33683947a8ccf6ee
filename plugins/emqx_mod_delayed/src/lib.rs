//! `emqx_mod_delayed`: delayed publish, as EMQX 4.x's module. A message published to
//! `$delayed/<seconds>/<topic>` is held and published to `<topic>` after `<seconds>` (at most
//! 4294967, EMQX's limit), with its QoS, payload and retain flag. A topic that does not parse
//! (`$delayed/soon/x`) is left alone, as EMQX leaves it.
//!
//! Held messages are kept in `data/emqx_mod_delayed.json` (rewritten atomically on every
//! change), so they survive an unload, a reload and a broker restart; one that fell due while
//! the module was not running is published as soon as it runs again.
//!
//! `broker ctl delayed list` prints one line per held message (`topic`, `qos`, `retain`,
//! seconds left); `broker ctl delayed clean` drops them all.

mod store;

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo, PluginKind, QoS,
};
use store::{Delayed, Store};

/// EMQX's longest delay, in seconds.
const MAX_DELAY_SECS: u64 = 4_294_967;

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
}

impl Shared {
    /// Publishes what is due, then waits until the next is due or the store changes.
    fn run(&self) {
        let mut store = lock(&self.store);
        loop {
            if store.stopping {
                return;
            }
            let due = store.take_due(now_ms());
            if !due.is_empty() {
                if let Err(e) = store.save(self.host.data_dir()) {
                    self.host.warn(&format!("cannot save delayed messages: {e}"));
                }
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
                .map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(now_ms()).max(1)));
            store = self.changed.wait_timeout(store, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running module.
pub struct DelayedPublish {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Plugin for DelayedPublish {
    /// A `$delayed/` publish rewrites and `fsync`s the store file before it is answered (so a
    /// held message outlives a crash once acknowledged): the broker runs `message.publish`
    /// off its network threads while this module is loaded.
    const BLOCKING_HOOKS: HookMask = HookMask::of(&[Hook::MessagePublish]);

    fn init(host: Host, _config: Config) -> Result<Self, BoxError> {
        let store = Store::load(host.data_dir())?;
        host.info(&format!("{} delayed messages held", store.len()));
        let shared = Arc::new(Shared { host, store: Mutex::new(store), changed: Condvar::new() });
        let thread = std::thread::Builder::new().name("emqx_mod_delayed".into()).spawn({
            let shared = shared.clone();
            move || shared.run()
        })?;
        Ok(DelayedPublish { shared, thread: Some(thread) })
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        let Some((seconds, topic)) = parse(event.topic) else {
            return HookResult::Continue;
        };
        let message = Delayed {
            due_ms: event.timestamp_ms + seconds * 1000,
            topic: topic.to_owned(),
            payload: event.payload.to_vec(),
            qos: event.qos as u8,
            retain: event.retain,
        };
        let mut store = lock(&self.shared.store);
        store.add(message);
        if let Err(e) = store.save(self.shared.host.data_dir()) {
            self.shared.host.warn(&format!("cannot save delayed messages: {e}"));
        }
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
                store.save(self.shared.host.data_dir()).map_err(|e| e.to_string())?;
                self.shared.changed.notify_one();
                Ok(format!("Cleaned {n} delayed messages"))
            }
            _ => Err("usage: broker ctl delayed list | clean".to_owned()),
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
