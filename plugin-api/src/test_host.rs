//! Test-only: a host vtable whose functions record which of them were called, to be cut to an
//! older host's size with [`crate::guarded::Guarded`].

use std::ffi::c_void;
use std::sync::Mutex;

use crate::abi::{self, HostApi, RawBytes, RawBytesWriter, RawMessage, RawStats, RawStr, RawWriter, Status};

/// The names of the host functions called, in order. The vtable's `ctx` points to it.
#[derive(Debug, Default)]
pub(crate) struct Calls(Mutex<Vec<&'static str>>);

impl Calls {
    /// Takes the names recorded so far.
    pub(crate) fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// # Safety
/// `ctx` is the `Calls` the vtable was built with, still alive.
unsafe fn record(ctx: *const c_void, name: &'static str) {
    // SAFETY: as the caller promises.
    let calls = unsafe { &*(ctx as *const Calls) };
    calls.0.lock().unwrap().push(name);
}

unsafe extern "C" fn log(ctx: *const c_void, _level: u32, _message: RawStr) {
    // SAFETY: our ctx.
    unsafe { record(ctx, "log") }
}

unsafe extern "C" fn publish(ctx: *const c_void, _topic: RawStr, _payload: RawBytes, _qos: u8, _retain: u8) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "publish") };
    abi::STATUS_OK
}

unsafe extern "C" fn stats(ctx: *const c_void, out: *mut RawStats) -> Status {
    // SAFETY: our ctx; `out` is the caller's stats, filled only as far as its size goes.
    unsafe {
        record(ctx, "stats");
        RawStats { connections: 3, ..Default::default() }.fill(out);
    }
    abi::STATUS_OK
}

unsafe extern "C" fn list_plugins(ctx: *const c_void, out: RawWriter) -> Status {
    // SAFETY: our ctx; the writer is alive during the call.
    unsafe {
        record(ctx, "list_plugins");
        out.write_str("[]");
    }
    abi::STATUS_OK
}

unsafe extern "C" fn ctl(ctx: *const c_void, _args_json: RawStr, out: RawWriter) -> Status {
    // SAFETY: our ctx; the writer is alive during the call.
    unsafe {
        record(ctx, "ctl");
        out.write_str("done");
    }
    abi::STATUS_OK
}

unsafe extern "C" fn deliver(
    ctx: *const c_void,
    _client_id: RawStr,
    _topic: RawStr,
    _payload: RawBytes,
    _qos: u8,
    _retain: u8,
) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "deliver") };
    abi::STATUS_OK
}

unsafe extern "C" fn list_clients(ctx: *const c_void, out: RawWriter) -> Status {
    // SAFETY: our ctx; the writer is alive during the call.
    unsafe {
        record(ctx, "list_clients");
        out.write_str("[]");
    }
    abi::STATUS_OK
}

unsafe extern "C" fn deliver_retained(
    ctx: *const c_void,
    _client_id: RawStr,
    _filter: RawStr,
    _message: *const RawMessage,
) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "deliver_retained") };
    abi::STATUS_OK
}

unsafe extern "C" fn metrics(ctx: *const c_void, out: RawWriter) -> Status {
    // SAFETY: our ctx; the writer is alive during the call.
    unsafe {
        record(ctx, "metrics");
        out.write_str(r#"{"node": "n", "uptime_ms": 1, "stats": {}, "metrics": {}, "hooks": []}"#);
    }
    abi::STATUS_OK
}

unsafe extern "C" fn subscribe(ctx: *const c_void, _client_id: RawStr, _filter: RawStr, _qos: u8) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "subscribe") };
    abi::STATUS_OK
}

unsafe extern "C" fn store_get(
    ctx: *const c_void,
    _bucket: RawStr,
    _key: RawBytes,
    _out: RawBytesWriter,
    _error: RawWriter,
) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "store_get") };
    abi::STATUS_NOT_FOUND
}

unsafe extern "C" fn store_scan(
    ctx: *const c_void,
    _bucket: RawStr,
    _prefix: RawBytes,
    _out: RawBytesWriter,
    _error: RawWriter,
) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "store_scan") };
    abi::STATUS_OK
}

unsafe extern "C" fn store_commit(ctx: *const c_void, _bucket: RawStr, _ops: RawBytes, _error: RawWriter) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "store_commit") };
    abi::STATUS_OK
}

unsafe extern "C" fn store_watch(
    ctx: *const c_void,
    _bucket: RawStr,
    _prefix: RawBytes,
    id_out: *mut u64,
    _error: RawWriter,
) -> Status {
    // SAFETY: our ctx; `id_out` is the caller's.
    unsafe {
        record(ctx, "store_watch");
        id_out.write(1);
    }
    abi::STATUS_OK
}

unsafe extern "C" fn store_watch_next(ctx: *const c_void, _id: u64, _timeout_ms: u32, _out: RawBytesWriter) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "store_watch_next") };
    abi::STATUS_TIMEOUT
}

unsafe extern "C" fn store_unwatch(ctx: *const c_void, _id: u64) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "store_unwatch") };
    abi::STATUS_OK
}

unsafe extern "C" fn metric_add(ctx: *const c_void, _name: RawStr, _delta: u64) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "metric_add") };
    abi::STATUS_OK
}

unsafe extern "C" fn store_swap(
    ctx: *const c_void,
    _bucket: RawStr,
    _key: RawBytes,
    _expected: *const RawBytes,
    _new: *const RawBytes,
    _error: RawWriter,
) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "store_swap") };
    abi::STATUS_CONFLICT
}

unsafe extern "C" fn stat_set(ctx: *const c_void, _name: RawStr, _value: u64) -> Status {
    // SAFETY: our ctx.
    unsafe { record(ctx, "stat_set") };
    abi::STATUS_OK
}

/// This crate's whole vtable, with `size` set to `size` (cut the copy to it with `Guarded`).
pub(crate) fn vtable(calls: &Calls, size: usize) -> HostApi {
    HostApi {
        size: size as u32,
        abi_version: abi::ABI_VERSION,
        ctx: calls as *const Calls as *const c_void,
        broker_version: RawStr::from_static("9.9.9"),
        node_name: RawStr::from_static("emqx@test"),
        data_dir: RawStr::from_static("/data"),
        started_at_ms: 1000,
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
        store_get,
        store_scan,
        store_commit,
        store_watch,
        store_watch_next,
        store_unwatch,
        metric_add,
        store_swap,
        stat_set,
    }
}
