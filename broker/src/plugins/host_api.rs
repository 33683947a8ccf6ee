//! The host side of the vtable a plugin receives: log, publish, deliver, stats, client and
//! plugin lists, and ctl.
//!
//! Plugin lists and ctl commands are the plugin manager's, which this module reaches only
//! through [`PluginControl`] (the manager starts the instances whose vtables these are).

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use plugin_api::abi::{self, HostApi, RawBytes, RawMessage, RawStats, RawStr, RawWriter, Status};
use plugin_api::PluginStatus;

use super::host_store::{self, StoreWatches};
use crate::hooks::handle::in_plugin_call;
use crate::log_limit::{clipped, clipped_to, MAX_LOGGED_MESSAGE};
use crate::message::{Delivery, Head, Message};
use crate::mqtt::properties::{self, Allowed, PropertyWriter};
use crate::node::{Node, PluginSubscribeError};
// A topic a plugin hands over must fit a PUBLISH: at most 65,535 bytes, no NUL (MQTT-1.5.4).
use crate::router::is_valid_replacement_topic as is_publishable_topic;

/// Why a `broker ctl` command failed: its kind, as the ABI status a plugin's `Host::ctl`
/// gets (so a management plugin never reads the text to choose an HTTP status), and the text
/// for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandError {
    pub(crate) status: Status,
    pub(crate) message: String,
}

impl CommandError {
    pub(crate) fn new(status: Status, message: impl Into<String>) -> CommandError {
        CommandError { status, message: message.into() }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> CommandError {
        CommandError::new(abi::STATUS_UNAVAILABLE, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> CommandError {
        CommandError::new(abi::STATUS_NOT_FOUND, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> CommandError {
        CommandError::new(abi::STATUS_INVALID_ARGUMENT, message)
    }
}

/// What a plugin's `Host::plugins` and `Host::ctl` reach: the plugin manager, which sits above
/// this module (it starts the instances these vtables serve) and implements it.
pub(crate) trait PluginControl: std::fmt::Debug + Send + Sync {
    /// Every known plugin (`plugins list`).
    fn list(&self) -> Vec<PluginStatus>;
    /// Runs a `broker ctl` command (the words after `ctl`).
    fn command(&self, args: &[String]) -> Result<String, CommandError>;
}

/// What every plugin's vtable shares: broker facts, counters, the way to publish, and (once
/// the manager exists) the manager for plugin lists and commands.
#[derive(Debug)]
pub(crate) struct HostShared {
    pub(crate) broker_version: String,
    pub(crate) node_name: String,
    pub(crate) data_dir: String,
    pub(crate) started_at: SystemTime,
    /// Publishing, delivering, stats and clients are the node's.
    pub(crate) node: Arc<Node>,
    /// The store plugins reach through `store_*`.
    pub(crate) store: store::Store,
    pub(crate) manager: OnceLock<Weak<dyn PluginControl>>,
    /// Plugins' own counters ([`HostApi::metric_add`]), by name.
    pub(crate) plugin_metrics: Mutex<BTreeMap<String, u64>>,
    /// Plugins' own gauges ([`HostApi::stat_set`]), by name, `.max` ones included.
    pub(crate) plugin_stats: Mutex<BTreeMap<String, u64>>,
}

impl HostShared {
    /// The connected clients, as [`HostApi::list_clients`] reports them.
    pub(crate) fn client_list(&self) -> Vec<plugin_api::ClientInfo> {
        let connected = self.node.sessions.connected();
        let clients = connected.iter().map(|c| plugin_api::ClientInfo {
            clientid: c.client_id.to_string(),
            username: c.username.to_string(),
            ip_address: c.peer_addr.map(|p| p.ip().to_string()).unwrap_or_default(),
            port: c.peer_addr.map(|p| p.port()).unwrap_or(0),
            proto_ver: c.version.level(),
            keepalive: c.keep_alive,
            clean_start: c.clean_start,
            connected_at: c.connected_at_ms,
        });
        clients.collect()
    }

    /// Every counter and gauge, as [`HostApi::metrics`] reports them.
    pub(crate) fn metrics_report(&self) -> plugin_api::Metrics {
        let node = &self.node;
        let snapshot = node.stats_snapshot();
        let hooks = node
            .hooks
            .timings()
            .into_iter()
            .map(|(plugin, hook, calls, nanos)| plugin_api::HookTiming {
                plugin,
                hook: hook.name().to_owned(),
                calls,
                nanos,
            })
            .collect();
        plugin_api::Metrics {
            node: self.node_name.clone(),
            uptime_ms: snapshot.uptime_ms,
            stats: snapshot
                .named()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .chain(crate::lock(&self.plugin_stats).iter().map(|(name, value)| (name.clone(), *value)))
                .collect(),
            metrics: node
                .stats
                .metrics
                .all()
                .map(|(name, value)| (name.to_owned(), value))
                .chain(std::iter::once(("hooks.answer_timeout".to_owned(), node.hooks.answers_timed_out())))
                .chain(crate::lock(&self.plugin_metrics).iter().map(|(name, value)| (name.clone(), *value)))
                .collect(),
            hooks,
        }
    }
}

/// One plugin's `ctx`: the shared part plus the plugin's name, for its log lines, and
/// whether the plugin was stopped (then every call but `log` is refused).
#[derive(Debug)]
pub(crate) struct PluginContext {
    name: String,
    shared: Arc<HostShared>,
    stopped: AtomicBool,
    /// Its `stop` has been called: waits for store changes end at once.
    stopping: AtomicBool,
    /// The plugin's store change feeds.
    watches: StoreWatches,
}

impl PluginContext {
    pub(crate) fn new(name: String, shared: Arc<HostShared>) -> PluginContext {
        PluginContext {
            name,
            shared,
            stopped: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            watches: StoreWatches::default(),
        }
    }

    /// The plugin is about to be stopped: a thread of its waiting for a store change (one
    /// its `stop` will join) gets `STATUS_UNAVAILABLE` now, not when the wait times out, so
    /// that `stop`, and with it an unload or a reload, takes no longer than it must. Its
    /// other calls are served until `stop` returns.
    pub(crate) fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.watches.wake_all();
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// From now on the host refuses this plugin's calls (its `stop` returned, or `init` failed),
    /// and its store feeds end.
    pub(crate) fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
        self.watches.clear();
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The plugin's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The store, and this plugin's feeds of it.
    pub(super) fn store(&self) -> (&store::Store, &StoreWatches) {
        (&self.shared.store, &self.watches)
    }

    /// The cluster this node is part of, if any.
    pub(super) fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.shared.node.cluster.as_ref()
    }
}

/// What a call from a stopped plugin's left-over thread gets (with `STATUS_UNAVAILABLE`).
pub(super) const STOPPED: &str = "the plugin was stopped: the host serves no call made after its stop";

/// What `ctl` from inside a call into a plugin gets.
const WOULD_DEADLOCK: &str = "not from init, stop, a hook or a command: loading and unloading \
plugins wait for those calls to end; call it from a thread of your own";

/// Returns `STATUS_UNAVAILABLE` (writing why to `$out`, if given) when the plugin was stopped.
macro_rules! refuse_if_stopped {
    ($context:expr) => {
        if $context.is_stopped() {
            tracing::debug!(plugin = $context.name(), "{}", $crate::plugins::host_api::STOPPED);
            return plugin_api::abi::STATUS_UNAVAILABLE;
        }
    };
    ($context:expr, $out:expr) => {
        if $context.is_stopped() {
            tracing::debug!(plugin = $context.name(), "{}", $crate::plugins::host_api::STOPPED);
            // SAFETY: the writer is alive during this call.
            unsafe { $out.write_str($crate::plugins::host_api::STOPPED) };
            return plugin_api::abi::STATUS_UNAVAILABLE;
        }
    };
}
pub(super) use refuse_if_stopped;

/// Builds the vtable for one plugin. `context` must outlive every call the plugin makes
/// (the instance never frees it).
pub(crate) fn vtable(context: &PluginContext) -> HostApi {
    let shared = &context.shared;
    HostApi {
        size: std::mem::size_of::<HostApi>() as u32,
        abi_version: abi::ABI_VERSION,
        ctx: context as *const PluginContext as *const c_void,
        broker_version: RawStr::new(&shared.broker_version),
        node_name: RawStr::new(&shared.node_name),
        data_dir: RawStr::new(&shared.data_dir),
        started_at_ms: shared.started_at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        log,
        publish,
        stats,
        list_plugins,
        ctl,
        deliver,
        list_clients,
        deliver_retained,
        metrics,
        subscribe,
        store_get: host_store::get,
        store_scan: host_store::scan,
        store_commit: host_store::commit,
        store_watch: host_store::watch,
        store_watch_next: host_store::watch_next,
        store_unwatch: host_store::unwatch,
        metric_add,
        store_swap: host_store::swap,
        stat_set,
    }
}

/// # Safety
/// `ctx` is the pointer `vtable` stored, whose context outlives the plugin.
pub(super) unsafe fn context<'a>(ctx: *const c_void) -> &'a PluginContext {
    // SAFETY: as the caller promises.
    unsafe { &*(ctx as *const PluginContext) }
}

unsafe extern "C" fn log(ctx: *const c_void, level: u32, message: RawStr) {
    // SAFETY: the plugin passes back our ctx; message is valid for the call.
    let (context, message) = unsafe { (context(ctx), message.as_str()) };
    let plugin = context.name.as_str();
    // A plugin may quote what a client sent (a 65,000-byte client id in a topic).
    let message = clipped_to(message, MAX_LOGGED_MESSAGE);
    match level {
        abi::LOG_ERROR => tracing::error!(target: "plugin", plugin, "{message}"),
        abi::LOG_WARN => tracing::warn!(target: "plugin", plugin, "{message}"),
        abi::LOG_INFO => tracing::info!(target: "plugin", plugin, "{message}"),
        _ => tracing::debug!(target: "plugin", plugin, "{message}"),
    }
}

unsafe extern "C" fn publish(ctx: *const c_void, topic: RawStr, payload: RawBytes, qos: u8, retain: u8) -> Status {
    // SAFETY: our ctx; topic and payload are valid for the call and copied below.
    let (context, topic, payload) = unsafe { (context(ctx), topic.as_str(), payload.as_slice()) };
    refuse_if_stopped!(context);
    if !is_publishable_topic(topic) || qos > 2 {
        let topic = clipped(topic);
        tracing::warn!(
            plugin = context.name,
            "publish to {topic:?} at QoS {qos} refused: not a valid topic (at most 65,535 bytes) and QoS"
        );
        return abi::STATUS_ERROR;
    }
    context.shared.node.publish_as_broker(plugin_message(topic, payload, qos, retain != 0, &[], None));
    abi::STATUS_OK
}

/// A message a plugin hands the host.
fn plugin_message(
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    forwarded: &[u8],
    expiry: Option<u32>,
) -> Message {
    let head = Head {
        qos,
        retain,
        expires_at: Message::expiry_from(expiry, std::time::Instant::now()),
        publisher: 0,
        timestamp_ms: crate::now_ms(),
        origin: None,
    };
    Message::new(head, topic, payload, forwarded)
}

unsafe extern "C" fn stats(ctx: *const c_void, out: *mut RawStats) -> Status {
    // SAFETY: our ctx.
    let context = unsafe { context(ctx) };
    refuse_if_stopped!(context);
    let s = context.shared.node.stats_snapshot();
    let stats = RawStats {
        size: std::mem::size_of::<RawStats>() as u32,
        connections: s.connections,
        messages_received: s.messages_received,
        messages_sent: s.messages_sent,
        uptime_secs: s.uptime_ms / 1000,
        connections_max: s.connections_max,
        uptime_ms: s.uptime_ms,
    };
    // SAFETY: out is the plugin's RawStats (maybe an older, shorter one), writable for the size
    // its first field declares; `fill` writes only the fields that size covers.
    if unsafe { stats.fill(out) } {
        abi::STATUS_OK
    } else {
        abi::STATUS_ERROR
    }
}

unsafe extern "C" fn subscribe(ctx: *const c_void, client_id: RawStr, filter: RawStr, qos: u8) -> Status {
    // SAFETY: our ctx; the strings are valid for the call.
    let (context, client_id, filter) = unsafe { (context(ctx), client_id.as_str(), filter.as_str()) };
    refuse_if_stopped!(context);
    match context.shared.node.subscribe_for(client_id, filter, qos) {
        Ok(()) => abi::STATUS_OK,
        Err(PluginSubscribeError::NoSuchClient) => abi::STATUS_NOT_FOUND,
        Err(PluginSubscribeError::InvalidFilter) => abi::STATUS_INVALID_ARGUMENT,
    }
}

unsafe extern "C" fn metrics(ctx: *const c_void, out: RawWriter) -> Status {
    // SAFETY: our ctx.
    let context = unsafe { context(ctx) };
    refuse_if_stopped!(context, out);
    let json = serde_json::to_string(&context.shared.metrics_report()).unwrap_or_default();
    // SAFETY: the writer is alive during this call.
    unsafe { out.write_str(&json) };
    abi::STATUS_OK
}

unsafe extern "C" fn metric_add(ctx: *const c_void, name: RawStr, delta: u64) -> Status {
    // SAFETY: our ctx.
    let context = unsafe { context(ctx) };
    if context.stopped.load(Ordering::Acquire) {
        return abi::STATUS_UNAVAILABLE;
    }
    // SAFETY: the plugin promises `name` is valid during the call.
    let name = unsafe { name.as_str() };
    if let Some(value) = crate::lock(&context.shared.plugin_metrics).get_mut(name) {
        *value = value.wrapping_add(delta);
        return abi::STATUS_OK;
    }
    // A new counter: its name is checked once.
    let core = context.shared.node.stats.metrics.all().any(|(core, _)| core == name);
    if name.is_empty() || name.len() > 200 || core {
        return abi::STATUS_INVALID_ARGUMENT;
    }
    let mut counters = crate::lock(&context.shared.plugin_metrics);
    let value = counters.entry(name.to_owned()).or_insert(0);
    *value = value.wrapping_add(delta);
    abi::STATUS_OK
}

unsafe extern "C" fn stat_set(ctx: *const c_void, name: RawStr, value: u64) -> Status {
    // SAFETY: our ctx.
    let context = unsafe { context(ctx) };
    if context.stopped.load(Ordering::Acquire) {
        return abi::STATUS_UNAVAILABLE;
    }
    // SAFETY: the plugin promises `name` is valid during the call.
    let name = unsafe { name.as_str() };
    let max = name.strip_suffix(".count").map(|prefix| format!("{prefix}.max"));
    let core = |name: &str| context.shared.node.stats_snapshot().named().iter().any(|(core, _)| *core == name);
    let mut gauges = crate::lock(&context.shared.plugin_stats);
    if !gauges.contains_key(name)
        && (name.is_empty() || name.len() > 200 || core(name) || max.as_deref().is_some_and(core))
    {
        return abi::STATUS_INVALID_ARGUMENT;
    }
    gauges.insert(name.to_owned(), value);
    if let Some(max) = max {
        let highest = gauges.entry(max).or_insert(0);
        *highest = (*highest).max(value);
    }
    abi::STATUS_OK
}

fn manager(context: &PluginContext) -> Result<Arc<dyn PluginControl>, String> {
    context.shared.manager.get().and_then(Weak::upgrade).ok_or_else(|| "the broker is shutting down".to_owned())
}

unsafe extern "C" fn list_plugins(ctx: *const c_void, out: RawWriter) -> Status {
    // SAFETY: our ctx.
    let context = unsafe { context(ctx) };
    refuse_if_stopped!(context, out);
    // Safe from anywhere: listing takes the manager's state lock only briefly, never while a
    // plugin is called into.
    let (status, text) = match manager(context) {
        Ok(manager) => (abi::STATUS_OK, serde_json::to_string(&manager.list()).unwrap_or_default()),
        Err(e) => (abi::STATUS_UNAVAILABLE, e),
    };
    // SAFETY: the writer is alive during this call.
    unsafe { out.write_str(&text) };
    status
}

unsafe extern "C" fn ctl(ctx: *const c_void, args_json: RawStr, out: RawWriter) -> Status {
    // SAFETY: our ctx; args valid for the call.
    let (context, args) = unsafe { (context(ctx), args_json.as_str()) };
    refuse_if_stopped!(context, out);
    if in_plugin_call() {
        // SAFETY: the writer is alive during this call.
        unsafe { out.write_str(WOULD_DEADLOCK) };
        return abi::STATUS_UNAVAILABLE;
    }
    let result = serde_json::from_str::<Vec<String>>(args)
        .map_err(|e| CommandError { status: abi::STATUS_INVALID_ARGUMENT, message: format!("bad command: {e}") })
        .and_then(|args| manager(context).map_err(CommandError::unavailable)?.command(&args));
    let (status, text) = match result {
        Ok(text) => (abi::STATUS_OK, text),
        Err(error) => (error.status, error.message),
    };
    // SAFETY: the writer is alive during this call.
    unsafe { out.write_str(&text) };
    status
}

unsafe extern "C" fn deliver(
    ctx: *const c_void,
    client_id: RawStr,
    topic: RawStr,
    payload: RawBytes,
    qos: u8,
    retain: u8,
) -> Status {
    // SAFETY: our ctx; the strings are valid for the call and copied by the node.
    let (context, client_id, topic, payload) =
        unsafe { (context(ctx), client_id.as_str(), topic.as_str(), payload.as_slice()) };
    refuse_if_stopped!(context);
    if !is_publishable_topic(topic) || qos > 2 {
        return abi::STATUS_ERROR;
    }
    let message = plugin_message(topic, payload, qos, retain != 0, &[], None);
    let delivery = Delivery {
        message,
        qos,
        retain: retain != 0,
        subscription_ids: Box::new([]),
        seq: 0,
        maybe_sent: false,
        share: None,
    };
    if context.shared.node.deliver(client_id, delivery) {
        abi::STATUS_OK
    } else {
        abi::STATUS_ERROR
    }
}

unsafe extern "C" fn deliver_retained(
    ctx: *const c_void,
    client_id: RawStr,
    filter: RawStr,
    message: *const RawMessage,
) -> Status {
    // SAFETY: our ctx; the strings are valid for the call (copied below).
    let (context, client_id, filter) = unsafe { (context(ctx), client_id.as_str(), filter.as_str()) };
    refuse_if_stopped!(context);
    // SAFETY: the plugin's message is readable for the size it declares during the call; a
    // plugin built before an optional field was appended sends a shorter one, and `read`
    // copies only what that size covers (defaults for the rest).
    let Some(message) = (unsafe { RawMessage::read(message) }) else {
        return abi::STATUS_ERROR;
    };
    // SAFETY: the plugin keeps the message's fields valid for the call.
    let (topic, payload, props) =
        unsafe { (message.topic.as_str(), message.payload.as_slice(), message.properties.as_slice()) };
    if !is_publishable_topic(topic) || message.qos > 2 {
        return abi::STATUS_ERROR;
    }
    // Only the properties that travel with a message are passed on, re-encoded.
    let forwarded = match properties::decode_block(props, Allowed::PUBLISH) {
        Ok(p) => {
            let mut w = PropertyWriter { out: bytes::BytesMut::new() };
            p.write_forwarded(&mut w);
            w.out.freeze()
        }
        Err(e) => {
            let topic = clipped(topic);
            tracing::warn!(plugin = context.name, "properties of a retained message on {topic} ignored: {e}");
            Bytes::new()
        }
    };
    let expiry = Some(message.message_expiry).filter(|&s| s > 0);
    let message = plugin_message(topic, payload, message.qos, true, &forwarded, expiry);
    if context.shared.node.deliver_retained(client_id, filter, message) {
        abi::STATUS_OK
    } else {
        abi::STATUS_ERROR
    }
}

unsafe extern "C" fn list_clients(ctx: *const c_void, out: RawWriter) -> Status {
    // SAFETY: our ctx.
    let context = unsafe { context(ctx) };
    refuse_if_stopped!(context, out);
    let clients = context.shared.client_list();
    // SAFETY: the writer is alive during this call.
    unsafe { out.write_str(&serde_json::to_string(&clients).unwrap_or_default()) };
    abi::STATUS_OK
}
