//! The raw C ABI: `#[repr(C)]` types and `extern "C"` function pointers, nothing else.
//!
//! Plugin authors normally never touch this module; [`declare_plugin!`](crate::declare_plugin)
//! and the safe types do. Host authors and plugins written in other languages use it directly.
//!
//! # Compatibility rules
//!
//! - The first two fields of [`PluginDescriptor`] (`abi_version`, `size`) are frozen forever:
//!   a host of any version can read them from a plugin of any version and refuse it.
//! - Every struct carries its own `size`; new fields are only ever appended, and a reader
//!   uses a field only when `size` says it is there.
//! - [`ABI_VERSION`] changes only when an existing field changes meaning or layout. The host
//!   accepts exactly the versions in [`SUPPORTED_ABI_VERSIONS`].
//! - Only C-layout data crosses: pointers with lengths, integers. Enum-like values travel as
//!   integers and unknown values are tolerated by the reader.

use std::ffi::c_void;

/// The ABI version this crate builds plugins for.
pub const ABI_VERSION: u32 = 1;

/// The ABI versions a host built from this crate accepts.
pub const SUPPORTED_ABI_VERSIONS: &[u32] = &[1];

/// The name of the symbol (a [`PluginDescriptor`] static) every plugin library exports.
pub const DESCRIPTOR_SYMBOL: &str = "broker_plugin_descriptor";

/// Status returned by `init`, `ctl` and `stop`, and by host functions.
pub type Status = i32;
/// Success.
pub const STATUS_OK: Status = 0;
/// The call failed; a message was written to the error writer where there is one.
pub const STATUS_ERROR: Status = 1;
/// The plugin panicked; the panic was caught on the plugin's side.
pub const STATUS_PANICKED: Status = 2;

/// `on_event` answer: no opinion, go on with the next plugin (defer / keep).
pub const HOOK_CONTINUE: u32 = 0;
/// `on_event` answer for auth and ACL hooks: allow, stop asking.
pub const HOOK_ALLOW: u32 = 1;
/// `on_event` answer for auth and ACL hooks: deny, stop asking.
pub const HOOK_DENY: u32 = 2;
/// `on_event` answer for `message.publish`: drop the message (it is still acknowledged).
pub const HOOK_DROP: u32 = 3;
/// `on_event` answer when the plugin panicked; the host stops the plugin.
pub const HOOK_PANICKED: u32 = 0x100;

/// `client.check_acl` action: publish.
pub const ACL_PUBLISH: u32 = 1;
/// `client.check_acl` action: subscribe.
pub const ACL_SUBSCRIBE: u32 = 2;

/// Plugin kind `plugin` (EMQX: an application).
pub const KIND_PLUGIN: u32 = 0;
/// Plugin kind `module` (EMQX: a built-in module).
pub const KIND_MODULE: u32 = 1;

/// A borrowed UTF-8 string: pointer and length, no terminator.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawStr {
    /// First byte, or any non-null pointer when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: a RawStr is a read-only view; the side that creates it keeps the bytes alive and
// unchanged for as long as the documented lifetime of the field that holds it.
unsafe impl Send for RawStr {}
// SAFETY: as above, it is never written through.
unsafe impl Sync for RawStr {}

impl RawStr {
    /// The empty string.
    pub const EMPTY: RawStr = RawStr::from_static("");

    /// Borrows a `'static` string (usable in `const`).
    pub const fn from_static(s: &'static str) -> RawStr {
        RawStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// Borrows a string; the caller keeps it alive while the `RawStr` is used.
    pub fn new(s: &str) -> RawStr {
        RawStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// Reads the string back. Invalid UTF-8 reads as the empty string.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be readable and unchanged for `'a`.
    pub unsafe fn as_str<'a>(&self) -> &'a str {
        // SAFETY: the caller promises the bytes are valid for 'a.
        let bytes = unsafe { raw_slice(self.ptr, self.len) };
        std::str::from_utf8(bytes).unwrap_or("")
    }
}

/// Borrowed bytes: pointer and length.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawBytes {
    /// First byte, or any non-null pointer when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: read-only view, see RawStr.
unsafe impl Send for RawBytes {}
// SAFETY: read-only view, see RawStr.
unsafe impl Sync for RawBytes {}

impl RawBytes {
    /// No bytes.
    pub const EMPTY: RawBytes = RawBytes { ptr: [].as_ptr(), len: 0 };

    /// Borrows a byte slice; the caller keeps it alive while the `RawBytes` is used.
    pub fn new(b: &[u8]) -> RawBytes {
        RawBytes { ptr: b.as_ptr(), len: b.len() }
    }

    /// Reads the bytes back.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be readable and unchanged for `'a`.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        // SAFETY: the caller promises the bytes are valid for 'a.
        unsafe { raw_slice(self.ptr, self.len) }
    }
}

/// # Safety
/// `ptr..ptr+len` readable for `'a` (any pointer when `len` is 0).
unsafe fn raw_slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: non-null, and the caller promises the range is readable for 'a.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// A sink for text the callee hands back (error messages, command output, JSON).
///
/// The callee calls `write` zero or more times; each call appends. The `RawStr` is only
/// valid during the call, so the writer copies it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawWriter {
    /// Opaque state of the writer's owner.
    pub ctx: *mut c_void,
    /// Appends `text`.
    pub write: WriteFn,
}

impl RawWriter {
    /// A writer that appends to `buf`. Valid while `buf` is.
    pub fn for_string(buf: &mut String) -> RawWriter {
        unsafe extern "C" fn append(ctx: *mut c_void, text: RawStr) {
            // SAFETY: ctx is the &mut String given to for_string, alive during the call that
            // received this writer; text is valid for this call.
            let (buf, text) = unsafe { (&mut *(ctx as *mut String), text.as_str()) };
            buf.push_str(text);
        }
        RawWriter { ctx: buf as *mut String as *mut c_void, write: append }
    }

    /// Appends `text` through the writer.
    ///
    /// # Safety
    /// The writer's owner must still be alive (it is, during the call that received it).
    pub unsafe fn write_str(&self, text: &str) {
        // SAFETY: the caller promises ctx is alive; text outlives the call.
        unsafe { (self.write)(self.ctx, RawStr::new(text)) }
    }
}

/// [`RawWriter::write`]: appends `text` (valid only during the call) to the writer `ctx`.
pub type WriteFn = unsafe extern "C" fn(ctx: *mut c_void, text: RawStr);

/// [`PluginDescriptor::init`]: starts the plugin and stores its state pointer in `*state_out`.
pub type InitFn = unsafe extern "C" fn(
    host: *const HostApi,
    config_json: RawStr,
    state_out: *mut *mut c_void,
    error: RawWriter,
) -> Status;

/// [`PluginDescriptor::on_event`]: handles one event, returns a `HOOK_*` answer.
pub type OnEventFn = unsafe extern "C" fn(state: *mut c_void, event: *const RawEvent) -> u32;

/// [`PluginDescriptor::ctl`]: runs a `ctl` command (`args_json`, a JSON array of strings).
pub type CtlFn = unsafe extern "C" fn(state: *mut c_void, args_json: RawStr, out: RawWriter) -> Status;

/// [`PluginDescriptor::stop`]: stops the plugin and frees its state.
pub type StopFn = unsafe extern "C" fn(state: *mut c_void) -> Status;

/// What a plugin library exports under [`DESCRIPTOR_SYMBOL`], as a `static`.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// ABI version the plugin was built for. Frozen: always the first field.
    pub abi_version: u32,
    /// `size_of::<PluginDescriptor>()` as the plugin saw it. Frozen: always the second field.
    pub size: u32,
    /// The plugin's name, `[a-z0-9_]+`, equal to its library's file name.
    pub name: RawStr,
    /// The plugin's version.
    pub version: RawStr,
    /// One line saying what it does.
    pub description: RawStr,
    /// [`KIND_PLUGIN`] or [`KIND_MODULE`].
    pub kind: u32,
    /// Higher runs first on a hook; equal priorities run in load order.
    pub priority: i32,
    /// Bit `1 << hook` set for every hook the plugin wants (see [`crate::Hook`]).
    pub hooks: u64,
    /// The `broker ctl` command the plugin answers (e.g. `telemetry`), or empty.
    pub ctl_command: RawStr,
    /// Starts the plugin. On success stores the plugin's state pointer in `*state_out`.
    /// On failure writes a message to `error` and returns [`STATUS_ERROR`] or
    /// [`STATUS_PANICKED`].
    pub init: InitFn,
    /// Handles one event; returns one of the `HOOK_*` answers.
    pub on_event: OnEventFn,
    /// Runs a `ctl` command; `args_json` is a JSON array of strings. Output goes to `out`.
    pub ctl: CtlFn,
    /// Stops the plugin and frees `state`. Called once, after the last `on_event` returned.
    pub stop: StopFn,
}

// SAFETY: the descriptor is an immutable static whose pointers point to 'static data and
// functions; sharing it between threads is sound.
unsafe impl Sync for PluginDescriptor {}

/// One hook event. Every string and byte field is valid only during the `on_event` call.
///
/// Fields that do not apply to a hook are empty / zero.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawEvent {
    /// `size_of::<RawEvent>()` as the host built it.
    pub size: u32,
    /// Which hook (see [`crate::Hook`]).
    pub hook: u32,
    /// MQTT client id.
    pub client_id: RawStr,
    /// MQTT username (empty when none).
    pub username: RawStr,
    /// MQTT password bytes (only in `client.authenticate`).
    pub password: RawBytes,
    /// Peer address `ip:port`.
    pub peer: RawStr,
    /// Topic of a message, or topic filter of a subscription.
    pub topic: RawStr,
    /// Message payload.
    pub payload: RawBytes,
    /// QoS of a message or (requested / granted) of a subscription.
    pub qos: u8,
    /// Retain flag of a message.
    pub retain: u8,
    /// MQTT protocol level: 3, 4 (3.1.1) or 5.
    pub proto_ver: u8,
    /// Clean session / clean start flag.
    pub clean_start: u8,
    /// Keep-alive in seconds, as the client asked.
    pub keepalive: u16,
    /// MQTT packet identifier of a message (0 for QoS 0).
    pub packet_id: u16,
    /// CONNACK return / reason code (`client.connected`), or SUBACK code.
    pub return_code: u32,
    /// Session expiry interval in seconds (MQTT 5), 0 otherwise.
    pub expiry_interval: u32,
    /// For `client.check_acl`: [`ACL_PUBLISH`] or [`ACL_SUBSCRIBE`].
    pub acl_action: u32,
    /// Why a client disconnected (EMQX's names: `normal`, `tcp_closed`, `keepalive_timeout`,
    /// `takeovered`, `discarded`, `protocol_error`, `frame_too_large`, `sock_error`,
    /// `server_shutdown`), for `client.disconnected`; why a message was dropped
    /// (`no_subscribers`, `denied`, `queue_full`, `expired`, `too_large`), for
    /// `message.dropped`.
    pub reason: RawStr,
    /// Milliseconds since the Unix epoch when the event happened.
    pub timestamp_ms: u64,
    // Fields below were added after the first release of ABI version 1: read them only when
    // `size` covers them (the safe layer does).
    /// For message hooks: the MQTT 5 properties the message carries to its subscribers
    /// (Payload Format Indicator, Content Type, Response Topic, Correlation Data, User
    /// Properties), encoded as in a PUBLISH property block without its length; empty when
    /// none. Store it with a retained message and hand it back in [`RawMessage::properties`].
    pub properties: RawBytes,
    /// For message hooks: the message's remaining MQTT 5 Message Expiry Interval in seconds;
    /// 0 when it never expires.
    pub message_expiry: u32,
    /// For `session.subscribed`: the MQTT 5 subscription options byte (QoS in bits 0-1, No
    /// Local bit 2, Retain As Published bit 3, Retain Handling bits 4-5); 0 before MQTT 5
    /// but for the QoS.
    pub sub_options: u8,
    /// For `session.subscribed`: 1 if the subscription did not exist before this SUBSCRIBE.
    pub sub_new: u8,
    /// For client hooks: the local port of the listener the client connected to (EMQX's
    /// `sockport`); 0 for the broker itself or when the host does not know it.
    pub sockport: u16,
}

/// A message a plugin hands to the host (see [`HostApi::deliver_retained`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawMessage {
    /// `size_of::<RawMessage>()` as the plugin built it.
    pub size: u32,
    /// Topic name.
    pub topic: RawStr,
    /// Payload.
    pub payload: RawBytes,
    /// QoS it was stored with.
    pub qos: u8,
    /// Forwarded MQTT 5 properties, as in [`RawEvent::properties`]; empty when none.
    pub properties: RawBytes,
    /// Remaining Message Expiry Interval in seconds; 0 when it never expires.
    pub message_expiry: u32,
}

/// Broker statistics, filled by [`HostApi::stats`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RawStats {
    /// `size_of::<RawStats>()`, set by the caller; the host fills only what fits.
    pub size: u32,
    /// Clients connected now.
    pub connections: u64,
    /// PUBLISH packets received from clients since start.
    pub messages_received: u64,
    /// PUBLISH packets sent to subscribers since start.
    pub messages_sent: u64,
    /// Seconds since the broker started.
    pub uptime_secs: u64,
    // Fields below were added after the first release of ABI version 1; the host fills them
    // when `size` covers them.
    /// The most clients connected at once since start (EMQX's `connections.max`).
    pub connections_max: u64,
    /// Milliseconds since the broker started.
    pub uptime_ms: u64,
}

/// Log level for [`HostApi::log`]: error.
pub const LOG_ERROR: u32 = 1;
/// Log level: warning.
pub const LOG_WARN: u32 = 2;
/// Log level: information.
pub const LOG_INFO: u32 = 3;
/// Log level: debug.
pub const LOG_DEBUG: u32 = 4;

/// What the host gives a plugin at `init`: data about the broker and functions to call back.
///
/// Valid from `init` until `stop` returns; every function may be called from any thread.
/// New fields are only appended; check `size` before using one added after version 1.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// `size_of::<HostApi>()` as the host built it.
    pub size: u32,
    /// The host's ABI version.
    pub abi_version: u32,
    /// Opaque host state; pass it back as `ctx`.
    pub ctx: *const c_void,
    /// The broker's version (its `emqx_version` in telemetry).
    pub broker_version: RawStr,
    /// The broker's node name (e.g. `emqx@127.0.0.1`).
    pub node_name: RawStr,
    /// The broker's data directory (absolute path).
    pub data_dir: RawStr,
    /// When the broker started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Writes a log line at `level` (`LOG_*`) under the plugin's name.
    pub log: unsafe extern "C" fn(ctx: *const c_void, level: u32, message: RawStr),
    /// Publishes a message into the broker as the broker itself.
    pub publish:
        unsafe extern "C" fn(ctx: *const c_void, topic: RawStr, payload: RawBytes, qos: u8, retain: u8) -> Status,
    /// Fills `out` (whose `size` the caller set) with current stats.
    pub stats: unsafe extern "C" fn(ctx: *const c_void, out: *mut RawStats) -> Status,
    /// Writes a JSON array of every known plugin:
    /// `[{"name", "version", "description", "kind", "active", "state"}]`.
    pub list_plugins: unsafe extern "C" fn(ctx: *const c_void, out: RawWriter) -> Status,
    /// Runs a `broker ctl` command (JSON array of strings, e.g. `["plugins","unload","x"]`),
    /// writing its output, or its error on `STATUS_ERROR`, to `out`. For management plugins.
    pub ctl: unsafe extern "C" fn(ctx: *const c_void, args_json: RawStr, out: RawWriter) -> Status,
    /// Delivers a message to one connected client only (e.g. a retained message to a new
    /// subscriber), at `qos`, with the retain flag as given. `STATUS_ERROR` if the client is
    /// not connected.
    pub deliver: unsafe extern "C" fn(
        ctx: *const c_void,
        client_id: RawStr,
        topic: RawStr,
        payload: RawBytes,
        qos: u8,
        retain: u8,
    ) -> Status,
    /// Writes a JSON array of the connected clients: `[{"clientid", "username",
    /// "ip_address", "port", "proto_ver", "keepalive", "clean_start", "connected_at"}]`
    /// (`connected_at` in milliseconds since the Unix epoch). For management plugins.
    pub list_clients: unsafe extern "C" fn(ctx: *const c_void, out: RawWriter) -> Status,
    // Functions below were added after the first release of ABI version 1: call them only
    // when `size` covers them (the safe layer does).
    /// Delivers a retained message to one subscription of one client, as the MQTT
    /// specification wants it after a SUBSCRIBE (`session.subscribed`): with the retain flag
    /// set, at the lower of the message's and the subscription's QoS, with the
    /// subscription's identifier. `filter` names the subscription exactly as the event gave
    /// it. `STATUS_ERROR` if the client has no such subscription.
    pub deliver_retained: unsafe extern "C" fn(
        ctx: *const c_void,
        client_id: RawStr,
        filter: RawStr,
        message: *const RawMessage,
    ) -> Status,
    /// Writes every counter and gauge the broker keeps, as JSON:
    /// `{"node": "emqx@127.0.0.1", "uptime_ms": 1234, "stats": {"connections.count": 1, ...},
    /// "metrics": {"messages.received": 7, ...}, "hooks": [{"plugin": "emqx_retainer",
    /// "hook": "message.publish", "calls": 7, "nanos": 5400}, ...]}`. Names are EMQX's
    /// (`emqx_stats`, `emqx_metrics`); `hooks` counts calls and the time spent in each
    /// plugin's `on_event` per hook since the plugin was loaded.
    pub metrics: unsafe extern "C" fn(ctx: *const c_void, out: RawWriter) -> Status,
}

// SAFETY: the host guarantees ctx and the strings stay valid and that every function is
// thread-safe, for the plugin's lifetime.
unsafe impl Send for HostApi {}
// SAFETY: as above.
unsafe impl Sync for HostApi {}
