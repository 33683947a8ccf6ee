//! The embedded backend: one redb file in the data directory, a table per bucket.
//!
//! redb (pure Rust, copy-on-write B-trees, checksummed pages and commit slots) commits a
//! transaction with one fsync, which is what group commit needs; a crash leaves the last durable
//! commit. The whole file is checked at open, so a damaged one is refused rather than served.
//! The file records our format version in a table of its own, so a newer file is refused
//! rather than misread. Why redb and not fjall or SQLite: `bench/store-backends/README.md`.

use std::path::{Path, PathBuf};

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

/// Buckets in one redb file.
pub struct Embedded {
    db: Database,
    path: PathBuf,
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
        // Every page's checksum is verified at open (80 ms for a 70 MB file, measured by
        // bench/store-backends): without it redb trusts a cleanly closed file, and a damaged
        // one opened, then panicked or returned wrong values on reads.
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| Embedded::error(&path, e.into()))?;
        // Readable by the broker's user only, like the ctl socket: plugins keep password hashes
        // in it (emqx_auth_mnesia's logins).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(StoreError::from)?;
        }
        let store = Embedded { db, path };
        store.check_format()?;
        Ok(store)
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e.into()))?;
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
            other => StoreError::Backend(other.to_string()),
        }
    }

    fn read_table<T>(
        &self,
        bucket: &str,
        read: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, redb::Error>,
        absent: T,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e.into()))?;
        match txn.open_table(table(bucket)) {
            Ok(t) => read(&t).map_err(|e| self.err(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(absent),
            Err(e) => Err(self.err(e.into())),
        }
    }
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
        let mut txn = self.db.begin_write().map_err(|e| self.err(e.into()))?;
        let durability = if durable { Durability::Immediate } else { Durability::None };
        txn.set_durability(durability).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut emptied = Vec::new();
        // Consecutive operations on one bucket share an open table.
        let mut start = 0;
        while start < ops.len() {
            let bucket = ops[start].bucket;
            let end = start + ops[start..].iter().take_while(|op| op.bucket == bucket).count();
            let mut t = txn.open_table(table(bucket)).map_err(|e| self.err(e.into()))?;
            for op in &ops[start..end] {
                match op.value {
                    Some(value) => drop(t.insert(op.key, value).map_err(|e| self.err(e.into()))?),
                    None => drop(t.remove(op.key).map_err(|e| self.err(e.into()))?),
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

    fn sync(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e.into()))?;
        txn.commit().map_err(|e| self.err(e.into()))
    }

    fn buckets(&self) -> Result<Vec<BucketStats>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e.into()))?;
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
