//! The host side of the vtable a plugin receives: log, publish, stats, plugin list and ctl.

use std::ffi::c_void;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use plugin_api::abi::{self, HostApi, RawBytes, RawStats, RawStr, RawWriter, Status};

use super::manager::Manager;
use crate::relay::Relay;

/// What every plugin's vtable shares: broker facts, counters, the way to publish, and (once
/// the manager exists) the manager for plugin lists and commands.
#[derive(Debug)]
pub struct HostShared {
    pub broker_version: String,
    pub node_name: String,
    pub data_dir: String,
    pub started_at: SystemTime,
    /// Publishing and delivering go through the relay; stats are the relay's.
    pub relay: Arc<Relay>,
    pub manager: OnceLock<Weak<Manager>>,
}

/// One plugin's `ctx`: the shared part plus the plugin's name, for its log lines.
#[derive(Debug)]
pub struct PluginContext {
    name: String,
    shared: Arc<HostShared>,
}

impl PluginContext {
    pub fn new(name: String, shared: Arc<HostShared>) -> PluginContext {
        PluginContext { name, shared }
    }
}

/// Builds the vtable for one plugin. `context` must outlive the plugin's `stop`.
pub fn vtable(context: &PluginContext) -> HostApi {
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
    }
}

/// # Safety
/// `ctx` is the pointer `vtable` stored, whose context outlives the plugin.
unsafe fn context<'a>(ctx: *const c_void) -> &'a PluginContext {
    // SAFETY: as the caller promises.
    unsafe { &*(ctx as *const PluginContext) }
}

unsafe extern "C" fn log(ctx: *const c_void, level: u32, message: RawStr) {
    // SAFETY: the plugin passes back our ctx; message is valid for the call.
    let (context, message) = unsafe { (context(ctx), message.as_str()) };
    let plugin = context.name.as_str();
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
    match context.shared.relay.publish(topic, payload, qos, retain != 0) {
        Ok(()) => abi::STATUS_OK,
        Err(e) => {
            tracing::warn!(plugin = context.name, "publish to {topic} failed: {e}");
            abi::STATUS_ERROR
        }
    }
}

unsafe extern "C" fn stats(ctx: *const c_void, out: *mut RawStats) -> Status {
    // SAFETY: our ctx; out points to a RawStats whose size field says how much we may write.
    let (context, out) = unsafe { (context(ctx), &mut *out) };
    if (out.size as usize) < std::mem::size_of::<RawStats>() {
        return abi::STATUS_ERROR;
    }
    let s = context.shared.relay.stats.snapshot();
    out.connections = s.connections;
    out.messages_received = s.messages_received;
    out.messages_sent = s.messages_sent;
    out.uptime_secs = s.uptime_secs;
    abi::STATUS_OK
}

fn manager(context: &PluginContext) -> Result<Arc<Manager>, String> {
    context.shared.manager.get().and_then(Weak::upgrade).ok_or_else(|| "the broker is shutting down".to_owned())
}

unsafe extern "C" fn list_plugins(ctx: *const c_void, out: RawWriter) -> Status {
    // SAFETY: our ctx.
    let context = unsafe { context(ctx) };
    let (status, text) = match manager(context) {
        Ok(manager) => (abi::STATUS_OK, serde_json::to_string(&manager.list()).unwrap_or_default()),
        Err(e) => (abi::STATUS_ERROR, e),
    };
    // SAFETY: the writer is alive during this call.
    unsafe { out.write_str(&text) };
    status
}

unsafe extern "C" fn ctl(ctx: *const c_void, args_json: RawStr, out: RawWriter) -> Status {
    // SAFETY: our ctx; args valid for the call.
    let (context, args) = unsafe { (context(ctx), args_json.as_str()) };
    let result = serde_json::from_str::<Vec<String>>(args)
        .map_err(|e| format!("bad command: {e}"))
        .and_then(|args| manager(context)?.command(&args));
    let (status, text) = match result {
        Ok(text) => (abi::STATUS_OK, text),
        Err(text) => (abi::STATUS_ERROR, text),
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
    // SAFETY: our ctx; the strings are valid for the call and copied by the relay.
    let (context, client_id, topic, payload) =
        unsafe { (context(ctx), client_id.as_str(), topic.as_str(), payload.as_slice()) };
    if context.shared.relay.deliver(client_id, topic, payload, qos, retain != 0) {
        abi::STATUS_OK
    } else {
        abi::STATUS_ERROR
    }
}

unsafe extern "C" fn list_clients(ctx: *const c_void, out: RawWriter) -> Status {
    // SAFETY: our ctx.
    let context = unsafe { context(ctx) };
    let clients: Vec<plugin_api::ClientInfo> = context
        .shared
        .relay
        .registry
        .all()
        .iter()
        .map(|s| {
            let peer: Option<std::net::SocketAddr> = s.identity.peer.parse().ok();
            plugin_api::ClientInfo {
                clientid: s.identity.client_id.clone(),
                username: s.identity.username.clone(),
                ip_address: peer.map(|p| p.ip().to_string()).unwrap_or_default(),
                port: peer.map(|p| p.port()).unwrap_or(0),
                proto_ver: s.identity.proto_ver,
                keepalive: s.identity.keepalive,
                clean_start: s.identity.clean_start,
                connected_at: s.connected_at_ms,
            }
        })
        .collect();
    // SAFETY: the writer is alive during this call.
    unsafe { out.write_str(&serde_json::to_string(&clients).unwrap_or_default()) };
    abi::STATUS_OK
}
