//! The `broker` host as a library: the binary (`src/main.rs`) is its command line, and the
//! benchmarks in `benches/` drive the same parts.
//!
//! The path of one PUBLISH: `relay` (socket, frames, hooks) → `hooks` (dispatch to plugins)
//! → `router` (the embedded rumqttd).

pub mod config;
pub mod ctl;
pub mod hooks;
pub mod mqtt;
pub mod plugins;
pub mod relay;
pub mod router;
pub mod server;
pub mod sessions;
pub mod stats;

/// Locks `m`, going on past a poisoned lock (a panic elsewhere must not stop the broker).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// 16 hex digits that differ between calls (for generated client ids).
pub fn unique_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u64(now_ms());
    format!("{:016x}", h.finish())
}
