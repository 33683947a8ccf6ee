//! The `broker` host as a library: the binary (`src/main.rs`) is its command line, and the
//! benchmarks in `benches/` drive the same parts.
//!
//! The path of one PUBLISH: `listener` accepts the client → `connection` (its task: opened
//! the client's session in `session::registry` at CONNECT; reads the packet, decoded by
//! `mqtt`, fires the hooks through `hooks`) → `node::Node::publish` → `router` (the
//! subscription trie) → each matching `session` (one client's queue and messages in flight)
//! → that session's `connection` writes it out.
//!
//! Modules depend one way, with no cycle: `config` reads settings into the types their
//! modules own (`node::Zone`, `auth::FailurePolicy`, `router::Strategy`,
//! `session::QueueLimits`); the node owns the session registry, which reaches it only
//! through `session::registry::Owner`; `plugins` depend on `hooks` (whose `hooks::handle` is
//! a running plugin as dispatch sees it), and the host vtable (`plugins::host_api`) reaches
//! the plugin manager only through its `PluginControl`.

// What `src/main.rs` and `benches/` use is `pub`; everything else is `pub(crate)`.
#![warn(unreachable_pub)]

pub(crate) mod auth;
#[doc(hidden)]
pub mod bench;
pub(crate) mod client;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod connection;
pub mod ctl;
pub(crate) mod hooks;
pub(crate) mod listener;
pub(crate) mod log_limit;
pub(crate) mod malloc;
pub(crate) mod message;
pub(crate) mod metrics;
pub(crate) mod mqtt;
pub(crate) mod node;
pub(crate) mod persist;
pub(crate) mod plugins;
pub(crate) mod router;
pub mod server;
pub(crate) mod session;
pub(crate) mod stats;
pub(crate) mod sys;

/// Locks `m`, going on past a poisoned lock (a panic elsewhere must not stop the broker).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks `l`, going on past a poisoned lock.
pub(crate) fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks `l`, going on past a poisoned lock.
pub(crate) fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Serializes a borrowed byte slice as bytes (`#[serde(serialize_with = "crate::bytes_whole")]`):
/// postcard writes a sequence of `u8` (as `Vec<u8>` is, and is read back) and a byte string
/// the same way, its length then its bytes, but a sequence one call per byte.
pub(crate) fn bytes_whole<S: serde::Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// 16 hex digits that differ between calls (for generated client ids).
pub(crate) fn unique_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u64(now_ms());
    format!("{:016x}", h.finish())
}
