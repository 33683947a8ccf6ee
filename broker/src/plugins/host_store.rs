//! The host's `store_*` functions: a plugin's buckets in the broker's store.
//!
//! A plugin's bucket `b` is the store's `plugin/<plugin>/b`; a bucket named `shared/...` is
//! the same for every plugin. Writes wait for the store's group commit; on a network thread
//! (a plugin writing from a non-blocking hook) the wait is moved off it with
//! `block_in_place`, so other clients go on being served.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_api::abi::{self, RawBytes, RawBytesWriter, RawStr, RawWriter, Status};
use plugin_api::store::wire;
use store::{Batch, StoreError, Watch, WatchWaker};

use super::host_api::{context, refuse_if_stopped, PluginContext};

/// The longest bucket name a plugin may give.
const MAX_PLUGIN_BUCKET: usize = 128;

/// A change feed (waited on one call at a time) and the handle that ends a wait on it.
type Feed = (Arc<Mutex<Watch>>, WatchWaker);

/// One plugin's change feeds, by id. Ended (dropped) when the plugin stops.
#[derive(Debug, Default)]
pub(crate) struct StoreWatches {
    next_id: AtomicU64,
    feeds: Mutex<HashMap<u64, Feed>>,
}

impl StoreWatches {
    pub(crate) fn clear(&self) {
        crate::lock(&self.feeds).clear();
    }

    /// Ends every wait on the feeds at once: the plugin is being stopped, and a thread of its
    /// waiting for a change (which `stop` joins) is told so now, not when its wait times out.
    pub(crate) fn wake_all(&self) {
        crate::lock(&self.feeds).values().for_each(|(_, waker)| waker.wake());
    }
}

/// The store's bucket for the plugin's `name`.
fn bucket_of(plugin: &str, name: &str) -> Result<String, StoreError> {
    if name.len() > MAX_PLUGIN_BUCKET {
        return Err(StoreError::InvalidBucket(name.to_owned()));
    }
    store::check_bucket(name)?;
    if name.starts_with("shared/") {
        Ok(name.to_owned())
    } else {
        Ok(format!("plugin/{plugin}/{name}"))
    }
}

/// The status that carries `e`, with its text written to `error`.
///
/// # Safety
/// `error` is alive (it is, during the call that received it).
unsafe fn fail(context: &PluginContext, e: &StoreError, error: RawWriter) -> Status {
    let status = match e {
        StoreError::Full(_) => abi::STATUS_FULL,
        StoreError::InvalidBucket(_) => abi::STATUS_INVALID_ARGUMENT,
        StoreError::Closed | StoreError::Unavailable(_) => abi::STATUS_UNAVAILABLE,
        _ => abi::STATUS_ERROR,
    };
    if status == abi::STATUS_ERROR || status == abi::STATUS_FULL {
        tracing::warn!(plugin = context.name(), "store: {e}");
    }
    // SAFETY: as the caller promises.
    unsafe { error.write_str(&e.to_string()) };
    status
}

/// Runs `wait` (a wait for the disk or for a change) where it holds no network thread.
fn off_the_network<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

pub(super) unsafe extern "C" fn get(
    ctx: *const c_void,
    bucket: RawStr,
    key: RawBytes,
    out: RawBytesWriter,
    error: RawWriter,
) -> Status {
    // SAFETY: the plugin passes back our ctx; the name and key are valid for the call.
    let (context, bucket, key) = unsafe { (context(ctx), bucket.as_str(), key.as_slice()) };
    refuse_if_stopped!(context, error);
    let (store, _) = context.store();
    match bucket_of(context.name(), bucket).and_then(|bucket| store.get(&bucket, key)) {
        Ok(Some(value)) => {
            // SAFETY: the writer is alive during this call.
            unsafe { out.write_bytes(&value) };
            abi::STATUS_OK
        }
        Ok(None) => abi::STATUS_NOT_FOUND,
        // SAFETY: the writer is alive during this call.
        Err(e) => unsafe { fail(context, &e, error) },
    }
}

pub(super) unsafe extern "C" fn scan(
    ctx: *const c_void,
    bucket: RawStr,
    prefix: RawBytes,
    out: RawBytesWriter,
    error: RawWriter,
) -> Status {
    // SAFETY: as in `get`.
    let (context, bucket, prefix) = unsafe { (context(ctx), bucket.as_str(), prefix.as_slice()) };
    refuse_if_stopped!(context, error);
    let (store, _) = context.store();
    match bucket_of(context.name(), bucket).and_then(|bucket| store.scan_prefix(&bucket, prefix)) {
        Ok(entries) => {
            let mut bytes = Vec::with_capacity(entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum());
            for (key, value) in &entries {
                wire::push_entry(&mut bytes, key, value);
            }
            // SAFETY: the writer is alive during this call.
            unsafe { out.write_bytes(&bytes) };
            abi::STATUS_OK
        }
        // SAFETY: the writer is alive during this call.
        Err(e) => unsafe { fail(context, &e, error) },
    }
}

pub(super) unsafe extern "C" fn commit(ctx: *const c_void, bucket: RawStr, ops: RawBytes, error: RawWriter) -> Status {
    // SAFETY: as in `get`.
    let (context, bucket, ops) = unsafe { (context(ctx), bucket.as_str(), ops.as_slice()) };
    refuse_if_stopped!(context, error);
    let (store, _) = context.store();
    let ops = match wire::decode_ops(ops) {
        Ok(ops) => ops,
        Err(why) => {
            // SAFETY: the writer is alive during this call.
            unsafe { error.write_str(&format!("malformed store operations: {why}")) };
            return abi::STATUS_INVALID_ARGUMENT;
        }
    };
    let batch = bucket_of(context.name(), bucket).and_then(|bucket| {
        let mut batch = Batch::new();
        for (key, value) in &ops {
            match value {
                Some(value) => batch.put(&bucket, key, value)?,
                None => batch.delete(&bucket, key)?,
            };
        }
        Ok((bucket, batch))
    });
    // In a cluster, a shared bucket's changes go to the other nodes first.
    let cluster = context
        .cluster()
        .filter(|cluster| batch.as_ref().is_ok_and(|(bucket, _)| cluster.shared_bucket(bucket).is_some()));
    let committed = batch.and_then(|(bucket, batch)| match cluster {
        Some(cluster) => {
            let ops = ops.into_iter().map(|(key, value)| (bucket.clone(), key.to_vec(), value.map(<[u8]>::to_vec)));
            off_the_network(|| cluster.commit_shared(ops.collect(), batch))
        }
        None => off_the_network(|| store.commit(batch)),
    });
    match committed {
        Ok(()) => abi::STATUS_OK,
        // SAFETY: the writer is alive during this call.
        Err(e) => unsafe { fail(context, &e, error) },
    }
}

pub(super) unsafe extern "C" fn swap(
    ctx: *const c_void,
    bucket: RawStr,
    key: RawBytes,
    expected: *const RawBytes,
    new: *const RawBytes,
    error: RawWriter,
) -> Status {
    // SAFETY: as in `get`; `expected` and `new` are null or point to the caller's RawBytes,
    // valid for the call.
    let (context, bucket, key, expected, new) = unsafe {
        let bytes = |raw: *const RawBytes| raw.as_ref().map(|raw| raw.as_slice());
        (context(ctx), bucket.as_str(), key.as_slice(), bytes(expected), bytes(new))
    };
    refuse_if_stopped!(context, error);
    let (store, _) = context.store();
    let swapped = bucket_of(context.name(), bucket).and_then(|bucket| {
        match context.cluster().filter(|cluster| cluster.shared_bucket(&bucket).is_some()) {
            // In a cluster, a shared bucket's swap is decided by NATS.
            Some(cluster) => off_the_network(|| cluster.swap_shared(&bucket, key, expected, new)),
            None => off_the_network(|| store.swap(&bucket, key, expected, new)),
        }
    });
    match swapped {
        Ok(true) => abi::STATUS_OK,
        Ok(false) => abi::STATUS_CONFLICT,
        // SAFETY: the writer is alive during this call.
        Err(e) => unsafe { fail(context, &e, error) },
    }
}

pub(super) unsafe extern "C" fn watch(
    ctx: *const c_void,
    bucket: RawStr,
    prefix: RawBytes,
    id_out: *mut u64,
    error: RawWriter,
) -> Status {
    // SAFETY: as in `get`.
    let (context, bucket, prefix) = unsafe { (context(ctx), bucket.as_str(), prefix.as_slice()) };
    refuse_if_stopped!(context, error);
    let (store, watches) = context.store();
    match bucket_of(context.name(), bucket).and_then(|bucket| store.watch(&bucket, prefix)) {
        Ok(feed) => {
            let id = watches.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            let waker = feed.waker();
            crate::lock(&watches.feeds).insert(id, (Arc::new(Mutex::new(feed)), waker));
            // SAFETY: `id_out` is the caller's u64, writable during the call.
            unsafe { id_out.write(id) };
            abi::STATUS_OK
        }
        // SAFETY: the writer is alive during this call.
        Err(e) => unsafe { fail(context, &e, error) },
    }
}

pub(super) unsafe extern "C" fn watch_next(
    ctx: *const c_void,
    id: u64,
    timeout_ms: u32,
    out: RawBytesWriter,
) -> Status {
    // SAFETY: the plugin passes back our ctx.
    let context = unsafe { context(ctx) };
    refuse_if_stopped!(context);
    if context.is_stopping() {
        return abi::STATUS_UNAVAILABLE;
    }
    let (_, watches) = context.store();
    let Some(feed) = crate::lock(&watches.feeds).get(&id).map(|(feed, _)| feed.clone()) else {
        return abi::STATUS_NOT_FOUND;
    };
    let change = off_the_network(|| crate::lock(&feed).next_timeout(Duration::from_millis(timeout_ms.into())));
    match change {
        Some(change) => {
            let mut bytes = Vec::new();
            wire::push_op(&mut bytes, &change.key, change.value.as_deref());
            // SAFETY: the writer is alive during this call.
            unsafe { out.write_bytes(&bytes) };
            abi::STATUS_OK
        }
        None if context.is_stopped() || context.is_stopping() => abi::STATUS_UNAVAILABLE,
        None => abi::STATUS_TIMEOUT,
    }
}

pub(super) unsafe extern "C" fn unwatch(ctx: *const c_void, id: u64) -> Status {
    // SAFETY: the plugin passes back our ctx.
    let context = unsafe { context(ctx) };
    let (_, watches) = context.store();
    match crate::lock(&watches.feeds).remove(&id) {
        Some(_) => abi::STATUS_OK,
        None => abi::STATUS_NOT_FOUND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_bucket_is_its_own_unless_shared() {
        assert_eq!(bucket_of("emqx_retainer", "messages").unwrap(), "plugin/emqx_retainer/messages");
        assert_eq!(bucket_of("emqx_retainer", "shared/logins").unwrap(), "shared/logins");
        assert!(bucket_of("p", "").is_err());
        assert!(bucket_of("p", "../x y").is_err());
        assert!(bucket_of("p", &"b".repeat(129)).is_err());
    }
}
