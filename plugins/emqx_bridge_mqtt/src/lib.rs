//! `emqx_bridge_mqtt`: EMQX 4.2's MQTT bridge. It connects to another MQTT broker as a client
//! (rumqttc, MQTT 3.1.1 or 5, TCP or TLS), forwards the local messages whose topics match
//! `forwards` to it under `forward_mountpoint`, and publishes into the local broker what it
//! receives there on its `subscription` filters.
//!
//! Forwarded QoS 1/2 messages wait in the broker's store until the remote broker acknowledged
//! them, so they survive the remote broker being away, the plugin being unloaded and the broker
//! restarting; they go out in order once it is back (see `queue`). The `message.publish` hook
//! only hands messages over; everything else runs on the plugin's own thread, a single-threaded
//! tokio runtime started in `init` and joined in `stop` (see `bridge`, `link`).
//!
//! Config: the `[bridge_mqtt]` table (see `settings`). Commands, EMQX's:
//! `broker ctl bridges list | start NAME | stop NAME | forwards NAME | subscriptions NAME`, and
//! `broker ctl bridges status [NAME]` for the counts.
#![forbid(unsafe_code)]

mod bridge;
mod link;
mod queue;
mod settings;
mod tls;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use plugin_api::store::StoreBatch;
use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, HostError, Plugin, PluginInfo,
    PluginKind,
};
use tokio::sync::watch;

use bridge::{Bridge, Command, Shared, Status};
use queue::{Message, Queue};
use settings::Settings;

/// The plugin's own allocator (mimalloc: a heap per thread). The broker keeps glibc to one
/// heap (`broker.malloc_arena_max = 1`, for its memory per connection), and this plugin's
/// thread encodes and writes every forwarded message (rumqttc): with glibc's allocator it would
/// take that heap's lock against the network threads, message by message. Everything the
/// plugin allocates it also frees: nothing crosses the ABI by ownership.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long `ctl bridges start` waits for the first connection attempt's outcome (rumqttc gives
/// up connecting after 5 s).
const START_WAIT: Duration = Duration::from_secs(10);
/// How long `ctl bridges stop` waits for the bridge to disconnect.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The running plugin.
pub struct MqttBridge {
    bridges: Vec<Arc<Shared>>,
    /// The plugin's thread: a `message.publish` from it is a bridge bringing a message in.
    thread_id: ThreadId,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MqttBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBridge").field("bridges", &self.bridges.len()).finish_non_exhaustive()
    }
}

impl MqttBridge {
    fn find(&self, name: &str) -> Result<&Arc<Shared>, HostError> {
        self.bridges.iter().find(|b| b.settings.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.bridges.iter().map(|b| b.settings.name.as_str()).collect();
            HostError::NotFound(format!("no bridge named {name:?} (bridges: {})", names.join(", ")))
        })
    }

    fn list(&self) -> String {
        self.bridges
            .iter()
            .map(|b| format!("name: {}     status: {}", b.settings.name, b.status().emqx()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn status(&self, only: Option<&str>) -> Result<String, HostError> {
        let bridges = match only {
            Some(name) => vec![self.find(name)?],
            None => self.bridges.iter().collect(),
        };
        Ok(bridges
            .into_iter()
            .map(|b| {
                let c = &b.counters;
                let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let state = match b.status() {
                    Status::Running => "Running",
                    Status::Connecting => "Connecting",
                    Status::Stopped => "Stopped",
                };
                format!(
                    "name: {}     status: {}     address: {}     queued: {}     queued_bytes: {}     inflight: {}     \
                     forwarded: {}     received: {}     dropped: {}     echoes: {}     connect_failures: {}",
                    b.settings.name,
                    state,
                    b.settings.target(),
                    n(&c.queued),
                    n(&c.queued_bytes),
                    n(&c.inflight),
                    n(&c.forwarded),
                    n(&c.received),
                    n(&c.dropped),
                    n(&c.echoes),
                    n(&c.connect_failures)
                )
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn start(&self, name: &str) -> Result<String, HostError> {
        let bridge = self.find(name)?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if !bridge.command(Command::Start(reply)) {
            return Err(HostError::Unavailable("Start bridge failed. (the bridge is shutting down)".to_owned()));
        }
        match answer.recv_timeout(START_WAIT) {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(text)) => Err(HostError::Failed(text)),
            Err(_) => Err(HostError::Failed(format!(
                "Start bridge failed. (not connected within {}s; still trying: broker ctl bridges status {name})",
                START_WAIT.as_secs()
            ))),
        }
    }

    fn stop_bridge(&self, name: &str) -> Result<String, HostError> {
        let bridge = self.find(name)?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if !bridge.command(Command::Stop(reply)) {
            return Err(HostError::Unavailable("Stop bridge failed. (the bridge is shutting down)".to_owned()));
        }
        answer.recv_timeout(STOP_WAIT).map_err(|_| HostError::Failed("Stop bridge failed.".to_owned()))
    }
}

/// EMQX's usage text.
const USAGE: &str = "usage:\n\
    broker ctl bridges list                      List bridges\n\
    broker ctl bridges start <Name>              Start a bridge\n\
    broker ctl bridges stop <Name>               Stop a bridge\n\
    broker ctl bridges forwards <Name>           Show a bridge forward topic\n\
    broker ctl bridges subscriptions <Name>      Show a bridge subscriptions topic\n\
    broker ctl bridges status [<Name>]           Show a bridge's queue and counts";

impl Plugin for MqttBridge {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings = Settings::from_json(config.json(), host.node_name(), host.data_dir())?;
        let bucket = host.store(queue::BUCKET);
        let mut tasks = Vec::new();
        let mut bridges = Vec::new();
        for bridge in settings.bridges {
            let tls = match &bridge.tls {
                Some(files) => Some(tls::client_config(files, &bridge.prefix)?),
                None => None,
            };
            let mut queue = Queue::new(&bridge.name, bridge.max_total_size);
            let mut trimmed = StoreBatch::new();
            let (unreadable, dropped) = queue.load(bucket.scan_prefix(queue.prefix())?, &mut trimmed);
            for why in unreadable {
                host.warn(&format!("bridge {}: a queued message in the store not loaded: {why}", bridge.name));
            }
            if dropped > 0 {
                bucket.commit(&trimmed)?;
                host.warn(&format!(
                    "bridge {}: {dropped} oldest queued message(s) dropped: over queue.max_total_size",
                    bridge.name
                ));
            }
            for note in &bridge.notes {
                host.warn(&format!("bridge {}: {note}", bridge.name));
            }
            host.info(&format!(
                "bridge {}: {} {}, clientid {:?}; forwards {:?} under {:?}; subscribes {:?}{}; {} message(s) queued",
                bridge.name,
                bridge.target(),
                match bridge.proto {
                    settings::Proto::V4 => "mqttv4",
                    settings::Proto::V5 => "mqttv5",
                },
                bridge.clientid,
                bridge.forwards,
                bridge.forward_mountpoint,
                bridge.subscriptions,
                if bridge.receive_mountpoint.is_empty() {
                    String::new()
                } else {
                    format!(" under {:?}", bridge.receive_mountpoint)
                },
                queue.len()
            ));
            let (shared, commands) = Shared::new(bridge);
            tasks.push((Bridge::new(shared.clone(), host, bucket.clone(), queue, tls), commands));
            bridges.push(shared);
        }
        let (shutdown, stopping) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("emqx_bridge_mqtt".into()).spawn(move || {
            runtime.block_on(async move {
                let running: Vec<_> = tasks
                    .into_iter()
                    .map(|(bridge, commands)| tokio::spawn(bridge.run(stopping.clone(), commands)))
                    .collect();
                for task in running {
                    let _ = task.await;
                }
            });
        })?;
        Ok(MqttBridge { bridges, thread_id: thread.thread().id(), shutdown, thread: Some(thread) })
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        // A bridge publishing what it brought in: never forwarded back out.
        if event.client_id.is_empty() && std::thread::current().id() == self.thread_id {
            return HookResult::Continue;
        }
        for bridge in &self.bridges {
            if bridge.settings.forwards(event.topic) {
                bridge.enqueue(Message {
                    topic: event.topic.to_owned(),
                    payload: event.payload.to_vec(),
                    qos: event.qos as u8,
                    retain: event.retain,
                });
            }
        }
        HookResult::Continue
    }

    fn ctl_typed(&self, args: &[String]) -> Result<String, HostError> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["list"] => Ok(self.list()),
            ["start", name] => self.start(name),
            ["stop", name] => self.stop_bridge(name),
            ["status"] => self.status(None),
            ["status", name] => self.status(Some(name)),
            ["forwards", name] => Ok(self
                .find(name)?
                .settings
                .forwards
                .iter()
                .map(|t| format!("topic:   {t}"))
                .collect::<Vec<_>>()
                .join("\n")),
            ["subscriptions", name] => Ok(self
                .find(name)?
                .settings
                .subscriptions
                .iter()
                .map(|(t, q)| format!("topic: {t}, qos: {q}"))
                .collect::<Vec<_>>()
                .join("\n")),
            _ => Err(HostError::InvalidArgument(USAGE.to_owned())),
        }
    }

    fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

declare_plugin!(
    MqttBridge,
    PluginInfo {
        name: "emqx_bridge_mqtt",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Bridge to MQTT Broker",
        kind: PluginKind::Plugin,
        hooks: HookMask::of(&[Hook::MessagePublish]),
        // After the plugins that rewrite or hold messages (emqx_mod_rewrite, emqx_mod_delayed):
        // the bridge forwards what the broker routes.
        priority: -100,
        ctl_command: Some("bridges"),
    }
);
