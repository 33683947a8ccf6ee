//! The embedded backend: one redb file in the data directory, a table per bucket.
//!
//! redb (pure Rust, copy-on-write B-trees, checksummed pages and commit slots) commits a
//! transaction with one fsync, which is what group commit needs; a crash leaves the last durable
//! commit. The whole file is checked at open, so a damaged one is refused rather than served.
//! The file records our format version in a table of its own, so a newer file is refused
//! rather than misread. Why redb and not fjall or SQLite: `bench/store-backends/README.md`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};

use crate::{Backend, BucketStats, Op, StoreError};

/// The store format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The table holding the format version; never a bucket (bucket names cannot start with `_`).
const META: TableDefinition<&str, u32> = TableDefinition::new("_meta");
const FORMAT_KEY: &str = "format";

/// The file inside the store's directory.
pub const FILE_NAME: &str = "broker.redb";

/// A read lock on the open database.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        // Made only over `Some` (see `Embedded::db`).
        self.0.as_ref().expect("an open database")
    }
}

/// How long a store whose write failed waits before it opens its file again to retry.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Buckets in one redb file.
///
/// After a write fails on an I/O error (a full disk), redb refuses every later transaction
/// until the file is opened again. The store does that itself, at the first write at least
/// [`REOPEN_AFTER`] after the failure (refusing writes as full meanwhile), so that it writes
/// again once there is room, without a restart. Opening runs redb's recovery, from the last
/// durable commit: nothing committed is lost.
pub struct Embedded {
    /// `None` only while a reopen failed (reads and writes fail until one succeeds).
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// A write failed on an I/O error: the file must be opened again before the next one.
    broken: AtomicBool,
    /// When the last write failed or reopen was tried, and why.
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").field("path", &self.path).finish_non_exhaustive()
    }
}

fn table(bucket: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(bucket)
}

impl Embedded {
    /// Opens (or creates) the store in `dir` (`dir/broker.redb`, mode 0600 on Unix). Refuses a
    /// corrupt or truncated file, one from a newer format, and one another process holds open.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        std::fs::create_dir_all(dir).map_err(StoreError::from)?;
        let path = dir.join(FILE_NAME);
        let db = Embedded::open_file(&path)?;
        // Readable by the broker's user only, like the ctl socket: plugins keep password hashes
        // in it (emqx_auth_mnesia's logins).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(StoreError::from)?;
        }
        let store = Embedded {
            db: RwLock::new(Some(db)),
            path,
            broken: AtomicBool::new(false),
            last_failure: Mutex::new(None),
        };
        store.check_format()?;
        Ok(store)
    }

    fn open_file(path: &Path) -> Result<Database, StoreError> {
        // Every page's checksum is verified at open (80 ms for a 70 MB file, measured by
        // bench/store-backends): without it redb trusts a cleanly closed file, and a damaged
        // one opened, then panicked or returned wrong values on reads.
        Database::builder().set_check_integrity_on_open(true).create(path).map_err(|e| Embedded::error(path, e.into()))
    }

    /// The open database, or why there is none.
    fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_some() {
            return Ok(DbGuard(guard));
        }
        // Released before `last_failure` is locked: a reopen locks them the other way round.
        drop(guard);
        let why = self.last_failure.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, why)| why.clone());
        Err(StoreError::Full(why.unwrap_or_else(|| "the store file is not open".to_owned())))
    }

    /// Before a write: opens the file again if a write failed (see [`Embedded`]); until
    /// [`REOPEN_AFTER`] has passed since the failure, refuses with it.
    fn ready_to_write(&self) -> Result<(), StoreError> {
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, why)) = last.as_ref() {
            if at.elapsed() < REOPEN_AFTER {
                return Err(StoreError::Full(why.clone()));
            }
        }
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle goes first: redb lets one handle at a time hold the file.
        drop(db.take());
        match Embedded::open_file(&self.path) {
            Ok(reopened) => {
                *db = Some(reopened);
                *last = None;
                self.broken.store(false, Ordering::Release);
                tracing::info!(path = %self.path.display(), "store: file opened again after a failed write; writing again");
                Ok(())
            }
            Err(e) => {
                *last = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Runs `write`: after a failed write, once the file is open again (see [`Embedded`]);
    /// an I/O failure of its own is remembered, so that the next write opens the file again.
    fn guarded_write(&self, write: impl FnOnce() -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.ready_to_write()?;
        let result = write();
        if let Err(e @ (StoreError::Full(_) | StoreError::Io(_))) = &result {
            *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), e.to_string()));
            self.broken.store(true, Ordering::Release);
        }
        result
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().map_err(|e| self.err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e.into()))?;
            let found = meta.get(FORMAT_KEY).map_err(|e| self.err(e.into()))?.map(|v| v.value());
            match found {
                Some(found) if found > FORMAT_VERSION => {
                    return Err(StoreError::NewerVersion { path: self.path.clone(), found, supported: FORMAT_VERSION });
                }
                Some(_) => {}
                None => {
                    meta.insert(FORMAT_KEY, FORMAT_VERSION).map_err(|e| self.err(e.into()))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(e.into()))
    }

    /// Applies `ops` as one transaction (see [`Backend::apply`]).
    fn write(&self, ops: &[Op<'_>], durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db()?.begin_write().map_err(|e| self.err(e.into()))?;
        let durability = if durable { Durability::Immediate } else { Durability::None };
        txn.set_durability(durability).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut emptied = Vec::new();
        // Consecutive operations on one bucket share an open table.
        let mut start = 0;
        while start < ops.len() {
            let bucket = ops[start].bucket;
            let end = start + ops[start..].iter().take_while(|op| op.bucket == bucket).count();
            let mut t = txn.open_table(table(bucket)).map_err(|e| self.err(e.into()))?;
            let mut deletes: Vec<&[u8]> =
                ops[start..end].iter().filter(|op| op.value.is_none()).map(|op| op.key).collect();
            delete_in_runs(&mut t, &mut deletes).map_err(|e| self.err(e))?;
            for op in &ops[start..end] {
                if let Some(value) = op.value {
                    drop(t.insert(op.key, value).map_err(|e| self.err(e.into()))?);
                }
            }
            if t.is_empty().map_err(|e| self.err(e.into()))? {
                emptied.push(bucket);
            }
            start = end;
        }
        for bucket in emptied {
            // A bucket emptied by this transaction goes (it may have been refilled later in it).
            let still_empty =
                txn.open_table(table(bucket)).and_then(|t| Ok(t.is_empty()?)).map_err(|e| self.err(e.into()))?;
            if still_empty {
                txn.delete_table(table(bucket)).map_err(|e| self.err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| self.err(e.into()))
    }

    fn err(&self, e: redb::Error) -> StoreError {
        Embedded::error(&self.path, e)
    }

    fn error(path: &Path, e: redb::Error) -> StoreError {
        match e {
            redb::Error::Corrupted(detail) => StoreError::Corrupt { path: path.to_owned(), detail },
            redb::Error::UpgradeRequired(version) => StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("redb file format {version} is not one this build reads"),
            },
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                StoreError::InUse { path: path.to_owned() }
            }
            redb::Error::Io(e) => classify_io(path, e),
            // Every transaction after a failed write, until the file is opened again.
            redb::Error::PreviousIo => StoreError::Io(std::io::Error::other("an earlier write to the store failed")),
            other => StoreError::Backend(other.to_string()),
        }
    }

    fn read_table<T>(
        &self,
        bucket: &str,
        read: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, redb::Error>,
        absent: T,
    ) -> Result<T, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.err(e.into()))?;
        match txn.open_table(table(bucket)) {
            Ok(t) => read(&t).map_err(|e| self.err(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(absent),
            Err(e) => Err(self.err(e.into())),
        }
    }
}

/// One bucket's table, open in a write transaction.
type BucketTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// Deletes `keys` (each at most once) from `t`. Keys that are neighbours in the table (no other
/// key between them: a session's messages acknowledged since the last commit) go as one range,
/// which costs redb far less than a removal each: a walk finds the runs, then each run of two
/// or more is deleted with `retain_in`, the rest one by one.
fn delete_in_runs(t: &mut BucketTable<'_>, keys: &mut [&[u8]]) -> Result<(), redb::Error> {
    keys.sort_unstable();
    let mut runs = Vec::new();
    let mut first = 0;
    while first < keys.len() {
        let mut end = first;
        for found in t.range(keys[first]..)? {
            if end == keys.len() || found?.0.value() != keys[end] {
                break;
            }
            end += 1;
        }
        // A key not in the table is a run of one (its removal finds nothing).
        let end = end.max(first + 1);
        runs.push(first..end);
        first = end;
    }
    for run in runs {
        if run.len() == 1 {
            t.remove(keys[run.start])?;
        } else {
            t.retain_in(keys[run.start]..=keys[run.end - 1], |_, _| false)?;
        }
    }
    Ok(())
}

/// An I/O error that means a damaged file (redb reads past the end of a truncated one, or finds
/// no redb header) is reported as corruption, naming the file; a full disk as
/// [`StoreError::Full`].
fn classify_io(path: &Path, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            return StoreError::Corrupt { path: path.to_owned(), detail: format!("truncated: {e}") }
        }
        std::io::ErrorKind::InvalidData => return StoreError::Corrupt { path: path.to_owned(), detail: e.to_string() },
        _ => {}
    }
    StoreError::from(e)
}

impl Backend for Embedded {
    fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_table(bucket, |t| Ok(t.get(key)?.map(|v| v.value().to_vec())), None)
    }

    fn scan_prefix(&self, bucket: &str, prefix: &[u8]) -> Result<Vec<crate::Entry>, StoreError> {
        self.read_table(
            bucket,
            |t| {
                let mut found = Vec::new();
                for entry in t.range(prefix..)? {
                    let (k, v) = entry?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    found.push((k.value().to_vec(), v.value().to_vec()));
                }
                Ok(found)
            },
            Vec::new(),
        )
    }

    fn apply(&self, ops: &[Op<'_>], durable: bool) -> Result<(), StoreError> {
        self.guarded_write(|| self.write(ops, durable))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.guarded_write(|| {
            let txn = self.db()?.begin_write().map_err(|e| self.err(e.into()))?;
            txn.commit().map_err(|e| self.err(e.into()))
        })
    }

    fn buckets(&self) -> Result<Vec<BucketStats>, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.err(e.into()))?;
        let mut stats = Vec::new();
        for handle in txn.list_tables().map_err(|e| self.err(e.into()))? {
            let name = handle.name().to_owned();
            if name.starts_with('_') {
                continue;
            }
            let t = txn.open_table(table(&name)).map_err(|e| self.err(e.into()))?;
            let mut keys = 0;
            let mut bytes = 0;
            for entry in t.iter().map_err(|e| self.err(e.into()))? {
                let (k, v) = entry.map_err(|e| self.err(e.into()))?;
                keys += 1;
                bytes += (k.value().len() + v.value().len()) as u64;
            }
            stats.push(BucketStats { name, keys, bytes });
        }
        Ok(stats)
    }

    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }
}
