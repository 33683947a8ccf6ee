//! The broker's store: named buckets of key → bytes, shared by the core (durable sessions) and
//! the plugins (through the ABI's `Host::store`).
//!
//! - **Operations**: [`Store::get`], [`Store::scan_prefix`], and [`Store::commit`] of a
//!   [`Batch`] of puts and deletes, which lands whole or not at all. [`Store::put`] and
//!   [`Store::delete`] are one-operation batches.
//! - **Group commit**: every batch goes to one committer thread, which applies all the batches
//!   that arrived meanwhile in one transaction and makes them durable with one fsync. A caller
//!   of [`Store::commit`] (or the future of [`Store::commit_async`]) returns once its batch is
//!   as durable as [`SyncMode`] promises.
//! - **Compare and set**: [`Store::swap`] changes one key only if it still holds the value
//!   the caller saw, in order with every commit around it (so two writers racing for one key
//!   cannot both win); swaps queued together are decided in order and made durable together.
//! - **Change feed**: [`Store::watch`] sees every committed put and delete under a bucket and
//!   key prefix, in commit order, whoever made it.
//! - **Backends** implement [`Backend`]: [`Embedded`] (redb, one file in the data directory) is
//!   the default; [`Memory`] keeps nothing on disk. The interface names no file, path or query
//!   language, so a replicated backend (NATS JetStream KV) fits behind it.

mod backend;
mod batch;
mod committer;
mod embedded;
mod error;
mod memory;
mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use backend::{Backend, BucketStats};
pub use batch::{check_bucket, Batch, Op, MAX_BUCKET_NAME};
pub use embedded::Embedded;

/// The file name of the embedded store inside its directory.
pub fn embedded_file_name() -> &'static str {
    embedded::FILE_NAME
}
pub use error::StoreError;
pub use memory::Memory;
pub use watch::{Change, Watch, WatchWaker};

use committer::Committer;
use watch::Watchers;

/// One key with its value, as [`Store::scan_prefix`] returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// When a committed batch is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Each group of batches is fsync'd before its callers return: a crash loses nothing
    /// committed. The default.
    Group,
    /// Batches are written at once but fsync'd every so often: a crash may lose what was
    /// committed in the last interval.
    Interval(Duration),
    /// Never fsync'd while running (only at [`Store::close`]): a crash may lose anything not yet
    /// written back by the operating system.
    None,
}

/// What the store has done since it opened, for `broker ctl store stats` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Which backend, and where (e.g. `redb data/store/broker.redb`).
    pub backend: String,
    /// Transactions committed (each holding one or more batches).
    pub commits: u64,
    /// Batches committed.
    pub batches: u64,
    /// Puts and deletes committed.
    pub operations: u64,
    /// Durable commits (each one fsync).
    pub fsyncs: u64,
    /// How long the last durable commit took, in microseconds.
    pub last_fsync_micros: u64,
    /// Commits that failed (their callers got the error).
    pub failures: u64,
}

/// The store: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    backend: Arc<dyn Backend>,
    committer: Committer,
    watchers: Arc<Watchers>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.shared.backend.describe()).finish_non_exhaustive()
    }
}

impl Store {
    /// A store over `backend`, committing as `sync` says. Starts the committer thread.
    pub fn new(backend: impl Backend, sync: SyncMode) -> Result<Store, StoreError> {
        let backend: Arc<dyn Backend> = Arc::new(backend);
        let watchers = Arc::new(Watchers::default());
        let committer = Committer::start(backend.clone(), watchers.clone(), sync)?;
        Ok(Store { shared: Arc::new(Shared { backend, committer, watchers }) })
    }

    /// A store that keeps everything in memory (nothing survives the process).
    pub fn in_memory() -> Store {
        // The memory backend cannot fail to start; only a failed thread spawn could.
        Store::new(Memory::default(), SyncMode::None).expect("the committer thread starts")
    }

    /// The value under `key` in `bucket`, if any.
    pub fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        batch::check_bucket(bucket)?;
        self.shared.backend.get(bucket, key)
    }

    /// Every key in `bucket` that starts with `prefix` (all of them for an empty prefix), with its
    /// value, in key order.
    pub fn scan_prefix(&self, bucket: &str, prefix: &[u8]) -> Result<Vec<crate::Entry>, StoreError> {
        batch::check_bucket(bucket)?;
        self.shared.backend.scan_prefix(bucket, prefix)
    }

    /// Puts `value` under `key` in `bucket`; returns once it is as durable as the sync mode says.
    pub fn put(&self, bucket: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.put(bucket, key, value)?;
        self.commit(batch)
    }

    /// Deletes `key` from `bucket` (nothing happens if it is absent).
    pub fn delete(&self, bucket: &str, key: &[u8]) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.delete(bucket, key)?;
        self.commit(batch)
    }

    /// Applies `batch` whole or not at all, and waits until it is as durable as the sync mode
    /// says. Blocks the calling thread: from async code use [`Store::commit_async`].
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.shared.committer.commit_blocking(batch)
    }

    /// As [`Store::commit`], for async callers: the batch is queued at once (so batches keep the
    /// order of the calls) and the future resolves once it is durable.
    pub fn commit_async(&self, batch: Batch) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        let queued = if batch.is_empty() { None } else { Some(self.shared.committer.commit_queued(batch)) };
        async move {
            match queued {
                None => Ok(()),
                Some(Err(e)) => Err(e),
                Some(Ok(receiver)) => receiver.await.unwrap_or(Err(StoreError::Closed)),
            }
        }
    }

    /// Compare and set: if `key` of `bucket` holds `expected` (`None`: is absent), sets it to
    /// `new` (`None`: deletes it) and returns `true`; otherwise changes nothing and returns
    /// `false`. Decided by the one thread that writes, after every batch queued before it and
    /// before any queued after it; a change is as durable as the sync mode says when this
    /// returns, and watchers see it. Blocks the calling thread.
    pub fn swap(
        &self,
        bucket: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let mut change = Batch::new();
        match new {
            Some(value) => change.put(bucket, key, value)?,
            None => change.delete(bucket, key)?,
        };
        self.shared.committer.swap_blocking(change, expected.map(<[u8]>::to_vec))
    }

    /// A feed of every put and delete committed from now on under `bucket` whose key starts with
    /// `prefix`.
    pub fn watch(&self, bucket: &str, prefix: &[u8]) -> Result<Watch, StoreError> {
        batch::check_bucket(bucket)?;
        Ok(self.shared.watchers.add(bucket, prefix))
    }

    /// Every bucket with its key count and bytes (keys plus values). Reads every bucket.
    pub fn buckets(&self) -> Result<Vec<BucketStats>, StoreError> {
        self.shared.backend.buckets()
    }

    /// What the store has done since it opened.
    pub fn stats(&self) -> StoreStats {
        let mut stats = self.shared.committer.stats();
        stats.backend = self.shared.backend.describe();
        stats
    }

    /// Commits what is queued, makes everything durable and stops the committer; later commits
    /// fail with [`StoreError::Closed`]. Called at shutdown (also in `SyncMode::None`).
    pub fn close(&self) -> Result<(), StoreError> {
        self.shared.committer.close()
    }
}
