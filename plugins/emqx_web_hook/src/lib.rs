//! `emqx_web_hook`: EMQX 4.2's web hook. Each broker event a rule selects is POSTed to one
//! HTTP service as a JSON object with EMQX's `action` and fields (see `body`):
//! `client.connected`, `client.disconnected`, `client.subscribe`, `client.unsubscribe`,
//! `session.subscribed`, `session.unsubscribed`, `session.terminated`, `message.publish`,
//! `message.delivered`, `message.acked` and `message.dropped` by default, `client.connect`
//! and `client.connack` when a rule names them. A rule may select on a topic filter.
//!
//! The hooks never wait on the service: each copies the event's fields (see `capture`) into
//! a bounded queue (see `sender`), which the plugin's own thread empties, building each body
//! and sending them over `pool_size` connections, each carrying many requests at once
//! (HTTP/1.1 pipelining, EMQX 4.3's `enable_pipelining`; see `pipeline`), one client's events
//! in the order they happened. That thread runs at a low scheduling priority (`sender_priority`, see `priority`):
//! under a burst, MQTT traffic gets the CPU first. A slow or dead service fills the queue; past
//! `queue_size` events are dropped, counted and logged once a burst, and MQTT traffic goes on
//! as before.
//!
//! Config: the `[web_hook]` table (see `settings`). Command: `broker ctl web_hook status`.
#![deny(unsafe_code)]

mod body;
mod capture;
mod pipeline;
mod priority;
mod sender;
mod settings;
mod tls;

use std::sync::atomic::Ordering;

use plugin_api::{declare_plugin, BoxError, Config, Event, HookMask, HookResult, Host, Plugin, PluginInfo, PluginKind};

use capture::Captured;
use sender::Sender;
use settings::{Settings, EVENTS};

/// The plugin's own allocator (mimalloc: a heap per thread). The broker keeps glibc to one
/// heap (`broker.malloc_arena_max = 1`, for its memory per connection), and this plugin's
/// sending thread makes every HTTP request: with glibc's allocator it would take
/// that heap's lock against the network threads. Measured: without it, more QoS 0 bursts ran
/// at a fraction of the broker's speed with the web hook on (README, "Plugins that reach
/// outside: what they cost"). Everything the plugin allocates it also frees: nothing crosses
/// the ABI by ownership.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The plugin: its settings and the sending side.
#[derive(Debug)]
pub struct WebHook {
    host: Host,
    settings: Settings,
    sender: Sender,
}

impl WebHook {
    fn status(&self) -> String {
        let c = self.sender.counters();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        [
            format!("url         : {}", self.settings.url),
            format!("state       : {}", if self.sender.is_failing() { "failing" } else { "ok" }),
            format!("queue_len   : {}", self.sender.queue_len()),
            format!("queue_size  : {}", self.sender.queue_size()),
            format!("in_flight   : {}", n(&c.in_flight)),
            format!("sent        : {}", n(&c.sent)),
            format!("failed      : {}", n(&c.failed)),
            format!("dropped     : {}", n(&c.dropped)),
            format!("pipelining  : {}", self.settings.pipeline_depth.map_or("off".to_owned(), |d| d.to_string())),
            format!("encoding    : {}", self.settings.encoding.name()),
            format!("sender_prio : {}", self.settings.sender_priority.name()),
            format!("rules       : {}", self.settings.rules.describe()),
        ]
        .join("\n")
    }
}

impl Plugin for WebHook {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings = Settings::from_json(config.json())?;
        let sender = Sender::start(host, &settings)?;
        host.info(&format!(
            "posting events to {} (queue {}, pool {}{}, timeout {}, sender_priority {}): {}",
            settings.url,
            settings.queue_size,
            settings.pool_size,
            settings.pipeline_depth.map_or(String::new(), |d| format!(" pipelined {d} deep")),
            humantime::format_duration(settings.request_timeout),
            settings.sender_priority.name(),
            settings.rules.describe()
        ));
        Ok(WebHook { host, settings, sender })
    }

    /// Only copies the event's fields and queues them (the sending thread builds the body):
    /// never waits. With the queue full, not even that: the event is counted as dropped
    /// (`$SYS/` messages, never sent, are not counted).
    fn on_event(&self, event: &Event<'_>) -> HookResult {
        if self.settings.rules.wants(event.hook, event.topic) && body::sendable(event) {
            if self.sender.is_full() {
                self.sender.drop_event();
            } else {
                self.sender.enqueue(event.client_id, Captured::of(event));
            }
        }
        HookResult::Continue
    }

    fn ctl(&self, args: &[String]) -> Result<String, String> {
        match args {
            [status] if status == "status" => Ok(self.status()),
            _ => Err("usage: broker ctl web_hook status".to_owned()),
        }
    }

    fn stop(self) {
        let abandoned = self.sender.stop();
        let note = if abandoned > 0 { format!("; {abandoned} event(s) not sent were dropped") } else { String::new() };
        self.host.info(&format!("stopped{note}"));
    }
}

declare_plugin!(
    WebHook,
    PluginInfo {
        name: "emqx_web_hook",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X WebHook Plugin",
        kind: PluginKind::Plugin,
        hooks: HookMask::of(&EVENTS),
        priority: 0,
        ctl_command: Some("web_hook"),
    }
);
