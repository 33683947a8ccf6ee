//! `emqx_exhook`: EMQX's exhook. The broker is a gRPC client of one or more external
//! `HookProvider` services (EMQX's `exhook.proto`: `emqx.exhook.v2` of EMQX 5, or
//! `emqx.exhook.v1` of EMQX 4.3, per server) and calls them for the broker's hooks, so hooks
//! can be written in any language, and a server written for EMQX works here unchanged.
//!
//! - **Load.** Each server gets `OnProviderLoaded` (the broker's version, sysdescr, uptime
//!   and date) and answers which hooks it wants, with topic filters for message hooks; only
//!   those are called. `stop` (unload) sends `OnProviderUnloaded`.
//! - **Hooks that decide** (`client.authenticate`, `client.check_acl` as v2's
//!   `client.authorize` / v1's `client.check_acl`, `message.publish`) are asked of each
//!   server in turn. The plugin answers them later (`LATER_HOOKS`): the calls run on its
//!   runtime, and the client waits for the answer while no thread does; where the broker
//!   cannot wait (a message it publishes itself) the call is waited for there. `ValuedResponse`: `CONTINUE` takes the value and asks the
//!   next server, `STOP_AND_RETURN` takes it and asks no more, `IGNORE` has no value (see
//!   `decide`).
//! - **Notifications** (every other hook) are copied into a bounded queue and sent from the
//!   plugin's own threads, a tokio runtime started in `init` and joined in `stop`; the hook
//!   returns at once. A full queue drops the event (counted, logged once a burst).
//! - **Failures.** A server that does not answer within `request_timeout` or cannot be
//!   reached is down: that call, and every call while it is down, gets `failed_action`
//!   (`deny` or `ignore`) at once, and it is loaded again in the background every
//!   `auto_reconnect` (see `server`).
//!
//! Config: `[exhook]` (see `settings`). Commands: `broker ctl exhook list|enable NAME|
//! disable NAME|stats|status` (EMQX 4.3's `exhook server ...` is taken too).
#![forbid(unsafe_code)]
#![deny(missing_debug_implementations, unreachable_pub)]

mod decide;
mod point;
mod proto;
mod request;
mod server;
mod settings;
mod transport;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, HostError, Later, Plugin, PluginInfo,
    PluginKind, QoS, Replacement,
};
use tokio::sync::mpsc;

use point::Point;
use proto::Rpc;
use request::Context;
use server::{Server, State};
use settings::Settings;

/// The plugin's own allocator (mimalloc: a heap per thread). The broker keeps glibc to one
/// heap (`broker.malloc_arena_max = 1`, for its memory per connection), and this plugin's
/// runtime threads make every gRPC call (tonic, h2): with glibc's allocator they would take
/// that heap's lock against the network threads. Measured: with it, each exhook call cost the
/// broker about 9 % less CPU (docs/benchmarks.md, "Plugins that reach outside: earlier runs").
/// Everything the plugin allocates it also frees: nothing crosses the ABI by ownership.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The hooks whose answer a server decides.
const DECIDING: HookMask = HookMask::of(&[Hook::ClientAuthenticate, Hook::ClientCheckAcl, Hook::MessagePublish]);

/// How long `stop` lets queued notifications go out before it unloads the servers.
const DRAIN: Duration = Duration::from_secs(5);

/// A notification on its way: the request, and which servers (bit `1 << index`) want it.
#[derive(Debug)]
struct Notice {
    point: Point,
    /// The client id it is about: its server connection.
    key: String,
    targets: u64,
    rpc: Rpc,
}

/// The runtime's worker threads. Two, not one: the connections' HTTP/2 work and the calls
/// spread over both, so one thread is no longer the bottleneck of `message.publish` calls
/// (more calls a second for the same CPU a call; docs/benchmarks.md, "Plugins that reach
/// outside: earlier runs").
const WORKERS: usize = 2;

/// The plugin's own threads: a tokio runtime with [`WORKERS`] worker threads that makes
/// every gRPC call, and the thread that runs its main task ([`run_queue`]).
#[derive(Debug)]
struct Runtime {
    handle: tokio::runtime::Handle,
    /// Tells the runtime's main task to drain the queue, unload the servers and end.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    /// Runs `task` on the runtime and waits for it (from a thread that may block: a hook the
    /// plugin declared blocking, a `ctl` command, `init`). `None` if the runtime is gone.
    fn run<T: Send + 'static>(&self, task: impl std::future::Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(task.await);
        });
        rx.recv().ok()
    }

    /// Starts `task` on the calling thread (a hook's), then hands it to the runtime: a call's
    /// first step, up to its request being queued on its HTTP/2 connection, is taken here, so
    /// the calls a client's hooks make go out in the order its hooks ran (the broker may
    /// ask about several of one client's PUBLISHes at once: `broker.hook_pipeline`).
    fn start(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut task = Box::pin(task);
        {
            // The call's timers and connections belong to the plugin's runtime.
            let _entered = self.handle.enter();
            // The runtime's poll, next, registers the waker that counts.
            let mut first = std::task::Context::from_waker(std::task::Waker::noop());
            if task.as_mut().poll(&mut first).is_ready() {
                return;
            }
        }
        self.handle.spawn(task);
    }
}

/// What the servers changed in a published message (EMQX applies the message the fold
/// returns: topic, payload and QoS; a QoS above 2 and an empty topic are ignored, as EMQX's
/// `merge_message`).
#[derive(Debug, Default)]
struct Change {
    topic: Option<String>,
    payload: Option<Vec<u8>>,
    qos: Option<QoS>,
}

impl Change {
    /// What `outcome` changes in the message published to `topic` with `payload` at `qos`;
    /// `None` when it drops it.
    fn of(outcome: decide::Publish, topic: &str, payload: &[u8], qos: QoS) -> Option<Change> {
        let message = match outcome {
            decide::Publish::Drop => return None,
            decide::Publish::Unchanged => return Some(Change::default()),
            decide::Publish::Keep(message) => message,
        };
        let new_qos = match message.qos {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        };
        Some(Change {
            topic: (!message.topic.is_empty() && message.topic != topic).then_some(message.topic),
            payload: (message.payload != payload).then_some(message.payload),
            qos: new_qos.filter(|&q| q != qos),
        })
    }
}

/// Counts of what was not done, for `ctl exhook status`.
#[derive(Debug, Default)]
struct Losses {
    /// Notifications dropped because the queue was full.
    dropped: AtomicU64,
    /// Set while dropping: the first drop of a burst logs, the next send that fits logs again.
    dropping: AtomicBool,
}

/// The plugin.
#[derive(Debug)]
pub struct Exhook {
    host: Host,
    context: Arc<Context>,
    servers: Arc<[Arc<Server>]>,
    queue: mpsc::Sender<Notice>,
    queue_size: usize,
    losses: Arc<Losses>,
    /// The EMQX point of each of this broker's hooks (by `Hook as usize`).
    points: [Option<Point>; Hook::ALL.len()],
    runtime: Runtime,
}

impl Exhook {
    /// Copies a notification into the queue for the servers that want it; never waits.
    fn notify(&self, point: Point, event: &Event<'_>) {
        let topic = point.is_message().then_some(event.topic);
        if topic.is_some_and(|t| t.starts_with("$SYS/")) {
            return;
        }
        let targets = self
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.wants(point, topic))
            .fold(0u64, |bits, (i, _)| bits | 1 << i);
        if targets == 0 {
            return;
        }
        let Some(rpc) = self.context.notice(point, event) else {
            return;
        };
        let notice = Notice { point, key: event.client_id.to_owned(), targets, rpc };
        match self.queue.try_send(notice) {
            Ok(()) => {
                if self.losses.dropping.load(Ordering::Relaxed) && self.losses.dropping.swap(false, Ordering::Relaxed) {
                    self.host.info(&format!(
                        "exhook: notifications are queued again ({} dropped since start)",
                        self.losses.dropped.load(Ordering::Relaxed)
                    ));
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.losses.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.losses.dropping.swap(true, Ordering::Relaxed) {
                    self.host.warn(&format!(
                        "exhook: the notification queue is full ({} waiting): events are dropped until it \
                         drains (counted in `broker ctl exhook status`)",
                        self.queue_size
                    ));
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Whether any server has to be asked about `point`, or denies it while down.
    fn concerned(&self, point: Point, topic: Option<&str>) -> bool {
        self.servers.iter().any(|s| s.wants(point, topic) || s.denies_while_down(point, topic))
    }

    /// `client.authenticate` and `client.check_acl`: the servers' bool, as EMQX folds it:
    /// the call to make, or `None` when no server is concerned (the answer is Continue).
    fn bool_call(&self, point: Point, event: &Event<'_>) -> Option<impl Future<Output = HookResult> + Send + 'static> {
        if !self.concerned(point, None) {
            return None;
        }
        // The answer so far, as EMQX 5 sends it: no plugin before this one said no (the
        // broker's chain would have ended), so `true`.
        let rpc = match point {
            Point::ClientAuthenticate => self.context.authenticate(event, true),
            _ => self.context.authorize(event, true),
        };
        let call = decide::fold_bool(self.servers.clone(), point, event.client_id.to_owned(), rpc);
        Some(async move {
            match call.await {
                Some(true) => HookResult::Allow,
                Some(false) => HookResult::Deny,
                None => HookResult::Continue,
            }
        })
    }

    /// `message.publish`: the servers may change the topic, the payload or the QoS, or stop
    /// the message. The call to make, or `None` when no server is concerned.
    fn publish_call(&self, event: &Event<'_>) -> Option<impl Future<Output = Option<Change>> + Send + 'static> {
        let point = Point::MessagePublish;
        if event.topic.starts_with("$SYS/") || !self.concerned(point, Some(event.topic)) {
            return None;
        }
        let message = self.context.message(event, true);
        let published = (message.topic.clone(), message.payload.clone(), event.qos);
        let (context, key) = (self.context.clone(), event.client_id.to_owned());
        let call = decide::fold_message(self.servers.clone(), context, key, message);
        Some(async move { Change::of(call.await, &published.0, &published.1, published.2) })
    }

    /// [`Exhook::publish_call`], waited for on the calling thread (a hook the broker runs
    /// off its network threads, or a message the broker itself publishes).
    fn decide_publish(&self, event: &Event<'_>) -> HookResult {
        let Some(call) = self.publish_call(event) else {
            return HookResult::Continue;
        };
        // `None`: the runtime stopped under the call (only while the plugin stops).
        match self.runtime.run(call) {
            None => HookResult::Continue,
            Some(None) => HookResult::Drop,
            Some(Some(change)) => {
                let mut answer = HookResult::Continue;
                if let Some(topic) = &change.topic {
                    answer = event.replace_topic(topic);
                }
                if let Some(payload) = &change.payload {
                    answer = event.replace_payload(payload);
                }
                if let Some(qos) = change.qos {
                    answer = event.replace_qos(qos);
                }
                answer
            }
        }
    }

    fn server(&self, name: &str) -> Result<&Arc<Server>, HostError> {
        self.servers.iter().find(|s| s.name() == name).ok_or_else(|| HostError::NotFound("not_found".to_owned()))
    }

    /// EMQX 4.3's `exhook server list` line of a server.
    fn list_line(server: &Server) -> String {
        match &*server.state() {
            State::Up(spec) => {
                format!("Server(name={}, hooks={}, active=true)", server.name(), spec.erlang(server.settings.proto))
            }
            _ => format!("Server(name={}, hooks=#{{}}, active=false)", server.name()),
        }
    }

    /// A server as EMQX 5's `GET /exhooks` shows it (`/api/v4/exhooks` here): its settings,
    /// `status` (`connected`, `disconnected` or `disabled`) and the hooks it asked for.
    fn json(server: &Server) -> serde_json::Value {
        let settings = &server.settings;
        let (status, spec) = match &*server.state() {
            State::Up(spec) => ("connected", Some(spec.clone())),
            State::Down { known, .. } => ("disconnected", known.clone()),
            State::Disabled => ("disabled", None),
        };
        let hooks: Vec<&str> = spec.iter().flat_map(|spec| spec.points().map(|p| p.name(settings.proto))).collect();
        serde_json::json!({
            "name": settings.name,
            "url": settings.url,
            "proto": settings.proto.name(),
            "enable": !matches!(&*server.state(), State::Disabled),
            "status": status,
            "hooks": hooks,
            "request_timeout": humantime::format_duration(settings.request_timeout).to_string(),
            "failed_action": settings.failed_action.name(),
            "auto_reconnect": settings.auto_reconnect.map_or("false".to_owned(), |d| humantime::format_duration(d).to_string()),
            "pool_size": settings.pool_size,
        })
    }

    /// `exhook status`: what each server is doing, and the queue.
    fn status(&self) -> String {
        let mut lines: Vec<String> = self
            .servers
            .iter()
            .map(|s| {
                let state = match &*s.state() {
                    State::Up(spec) => {
                        let names: Vec<&str> = spec.points().map(|p| p.name(s.settings.proto)).collect();
                        format!("up, hooks: {}", if names.is_empty() { "none".to_owned() } else { names.join(" ") })
                    }
                    State::Down { why, retry_at, .. } => match retry_at {
                        Some(at) => format!(
                            "down ({why}), next attempt in {}s",
                            at.saturating_duration_since(std::time::Instant::now()).as_secs()
                        ),
                        None => format!("down ({why}), auto_reconnect = false"),
                    },
                    State::Disabled => "disabled".to_owned(),
                };
                let (calls, failures) = s.counts();
                let calls: u64 = calls.iter().map(|(_, n)| n).sum();
                format!(
                    "{}: {} ({}) {state}; failed_action {}, request_timeout {}, {calls} calls, {failures} failed",
                    s.name(),
                    s.settings.url,
                    s.settings.proto.name(),
                    s.settings.failed_action.name(),
                    humantime::format_duration(s.settings.request_timeout)
                )
            })
            .collect();
        if lines.is_empty() {
            lines.push("no servers configured ([exhook] servers)".to_owned());
        }
        lines.push(format!(
            "notifications: {} queued of {}, {} dropped",
            self.queue_size - self.queue.capacity(),
            self.queue_size,
            self.losses.dropped.load(Ordering::Relaxed),
        ));
        lines.join("\n")
    }

    /// EMQX 4.3's `exhook server stats`: `<server>.<hook>` and its calls, `~-35s:~w`.
    fn stats(&self) -> String {
        let mut lines = Vec::new();
        for s in self.servers.iter() {
            let spec = match &*s.state() {
                State::Up(spec) | State::Down { known: Some(spec), .. } => spec.clone(),
                _ => continue,
            };
            let (calls, _) = s.counts();
            for point in spec.points() {
                let n = calls.iter().find(|(p, _)| *p == point).map_or(0, |(_, n)| *n);
                lines.push(format!("{:<35}:{n}", format!("{}.{}", s.name(), point.name(s.settings.proto))));
            }
        }
        lines.sort();
        lines.join("\n")
    }
}

const USAGE: &str = "Usage: broker ctl exhook list [--json] | enable NAME | disable NAME | stats | status\n\
                     (EMQX 4.3's `exhook server list|enable NAME|disable NAME|stats` too)";

/// The runtime's main task: sends notifications until told to stop, then lets the queue
/// drain (for at most [`DRAIN`]) and unloads the servers that are up.
async fn run_queue(
    servers: Arc<[Arc<Server>]>,
    mut queue: mpsc::Receiver<Notice>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    tokio::select! {
        _ = stop => {}
        _ = async { while let Some(notice) = queue.recv().await { send(&servers, notice).await } } => {}
    }
    queue.close();
    let drained = async {
        while let Some(notice) = queue.recv().await {
            send(&servers, notice).await;
        }
        for s in servers.iter() {
            let _ = s.in_flight.acquire_many(server::IN_FLIGHT as u32).await;
        }
    };
    let _ = tokio::time::timeout(DRAIN, drained).await;
    let mut unloads = tokio::task::JoinSet::new();
    for s in servers.iter().filter(|s| matches!(&*s.state(), State::Up(_))) {
        let s = s.clone();
        unloads.spawn(async move { s.disable().await });
    }
    while unloads.join_next().await.is_some() {}
}

/// Sends one notification to each server it is for that is still up, without waiting for
/// the answers (at most [`server::IN_FLIGHT`] in flight per server: beyond, this waits, and
/// the queue fills).
async fn send(servers: &Arc<[Arc<Server>]>, notice: Notice) {
    for (i, s) in servers.iter().enumerate() {
        if notice.targets & (1 << i) == 0 || !matches!(&*s.state(), State::Up(_)) {
            continue;
        }
        let Ok(permit) = s.in_flight.clone().acquire_owned().await else {
            continue;
        };
        let (s, key, rpc, point) = (s.clone(), notice.key.clone(), notice.rpc.clone(), notice.point);
        tokio::spawn(async move {
            let _ = s.call(point, &key, rpc).await;
            drop(permit);
        });
    }
}

impl Plugin for Exhook {
    /// The hooks whose answer matters wait for a server. The broker offers a later answer
    /// for them from a client's connection: the call is made on the plugin's runtime and
    /// answered from there, no thread waits. Where it does not (a message the broker
    /// publishes, an older broker), they are answered at once, waiting for the call: on a
    /// broker older than `LATER_HOOKS`, off its network threads.
    const BLOCKING_HOOKS: HookMask = DECIDING;
    const LATER_HOOKS: HookMask = DECIDING;

    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings = Settings::from_json(config.json())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("emqx_exhook")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let context = Arc::new(Context::new(host.node_name(), host.broker_version()));
        let servers: Arc<[Arc<Server>]> = {
            // The connections start their tasks on the runtime.
            let _entered = handle.enter();
            settings
                .servers
                .iter()
                .map(|s| Server::new(s.clone(), host, context.clone()).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?
                .into()
        };
        let (queue, receiver) = mpsc::channel(settings.queue_size);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let queue_servers = servers.clone();
        let thread = std::thread::Builder::new().name("emqx_exhook".to_owned()).spawn(move || {
            runtime.block_on(run_queue(queue_servers, receiver, stopped));
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
        let runtime = Runtime { handle, stop: Some(stop), thread: Some(thread) };

        // Load every server before the broker lets clients in: each first attempt is over
        // within its request_timeout (at once for one that refuses connections).
        let firsts: Vec<_> = servers
            .iter()
            .map(|s| {
                let (told, first) = tokio::sync::oneshot::channel();
                runtime.handle.spawn(s.clone().supervise(told));
                first
            })
            .collect();
        runtime.run(async move {
            for first in firsts {
                let _ = first.await;
            }
        });
        if servers.is_empty() {
            host.warn("exhook: no servers configured ([exhook] servers = [{ name, url }]): no hook is called");
        }
        Ok(Exhook {
            host,
            context,
            servers,
            queue,
            queue_size: settings.queue_size,
            losses: Arc::default(),
            points: std::array::from_fn(|i| Hook::from_raw(i as u32).and_then(Point::of_hook)),
            runtime,
        })
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        let Some(point) = self.points.get(event.hook as usize).copied().flatten() else {
            return HookResult::Continue;
        };
        match point {
            Point::ClientAuthenticate | Point::ClientAuthorize => match self.bool_call(point, event) {
                // `None`: the runtime stopped under the call (only while the plugin stops).
                Some(call) => self.runtime.run(call).unwrap_or(HookResult::Continue),
                None => HookResult::Continue,
            },
            Point::MessagePublish => self.decide_publish(event),
            _ => {
                self.notify(point, event);
                HookResult::Continue
            }
        }
    }

    fn on_event_later(&self, event: &Event<'_>, later: Later) {
        let point = self.points.get(event.hook as usize).copied().flatten();
        match point {
            Some(point @ (Point::ClientAuthenticate | Point::ClientAuthorize)) => match self.bool_call(point, event) {
                Some(call) => {
                    // A task dropped unfinished (the runtime stopping) answers Continue.
                    self.runtime.start(async move { later.answer(call.await) });
                }
                None => later.answer(HookResult::Continue),
            },
            Some(Point::MessagePublish) => match self.publish_call(event) {
                Some(call) => {
                    self.runtime.start(async move {
                        match call.await {
                            None => later.answer(HookResult::Drop),
                            Some(change) => later.replace(Replacement {
                                topic: change.topic.as_deref(),
                                payload: change.payload.as_deref(),
                                qos: change.qos,
                            }),
                        }
                    });
                }
                None => later.answer(HookResult::Continue),
            },
            _ => later.answer(self.on_event(event)),
        }
    }

    fn ctl_typed(&self, args: &[String]) -> Result<String, HostError> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let words = match words.as_slice() {
            ["server", rest @ ..] => rest,
            rest => rest,
        };
        match words {
            ["list"] => Ok(self.servers.iter().map(|s| Exhook::list_line(s)).collect::<Vec<_>>().join("\n")),
            ["list", "--json"] => {
                Ok(serde_json::Value::from_iter(self.servers.iter().map(|s| Exhook::json(s))).to_string())
            }
            ["enable", name] => {
                let server = self.server(name)?.clone();
                match self.runtime.run(async move { server.enable().await }) {
                    Some(Ok(())) => Ok("ok".to_owned()),
                    Some(Err(why)) if why == "already_started" => Err(HostError::Conflict(why)),
                    Some(Err(why)) => Err(HostError::Unavailable(why)),
                    None => Err(HostError::Unavailable("the plugin is stopping".to_owned())),
                }
            }
            ["disable", name] => {
                let server = self.server(name)?.clone();
                match self.runtime.run(async move { server.disable().await }) {
                    Some(Ok(())) => Ok("ok".to_owned()),
                    Some(Err(why)) => Err(HostError::Conflict(why)),
                    None => Err(HostError::Unavailable("the plugin is stopping".to_owned())),
                }
            }
            ["stats"] => Ok(self.stats()),
            ["status"] => Ok(self.status()),
            _ => Err(HostError::InvalidArgument(USAGE.to_owned())),
        }
    }

    fn stop(mut self) {
        if let Some(stop) = self.runtime.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.runtime.thread.take() {
            if thread.join().is_err() {
                self.host.error("exhook: the plugin's thread panicked while stopping");
            }
        }
    }
}

declare_plugin!(
    Exhook,
    PluginInfo {
        name: "emqx_exhook",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Extension for Hook",
        kind: PluginKind::Plugin,
        // Every hook of the broker: which are called is the servers' choice, at load.
        hooks: HookMask::of(&Hook::ALL),
        priority: 0,
        ctl_command: Some("exhook"),
    }
);
