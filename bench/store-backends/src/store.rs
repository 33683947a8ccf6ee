//! The common interface the benchmark drives. Every write goes through `commit`, which must
//! return only once the whole group of puts and deletes is durable (fsync'd).

use std::path::Path;

pub type Res<T> = Result<T, String>;

pub trait Store {
    /// One atomic, durable transaction: all puts and deletes, then one sync.
    fn commit(&mut self, puts: &[(Vec<u8>, Vec<u8>)], dels: &[Vec<u8>]) -> Res<()>;
    fn get(&self, key: &[u8]) -> Res<Option<Vec<u8>>>;
    /// Reads every key and value under `prefix`; returns how many entries there were.
    fn scan_prefix(&self, prefix: &[u8]) -> Res<usize>;
    /// Reads the whole store; returns how many entries there were.
    fn count_all(&self) -> Res<usize>;
    /// Moves buffered data into the backend's long-term structures (fjall: flush memtable).
    fn settle(&mut self) -> Res<()> {
        Ok(())
    }
    /// Backend-specific integrity check, if it has one (`None` = no such check).
    fn integrity_check(&self) -> Option<Res<String>> {
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Redb,
    /// redb opened with `Builder::set_check_integrity_on_open(true)`.
    RedbChecked,
    Fjall,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::RedbChecked => "redb+check_on_open",
            Backend::Fjall => "fjall",
            Backend::Sqlite => "sqlite",
        }
    }

    pub fn open(self, dir: &Path) -> Res<Box<dyn Store>> {
        Ok(match self {
            Backend::Redb => Box::new(crate::redb_store::RedbStore::open(dir, false)?),
            Backend::RedbChecked => Box::new(crate::redb_store::RedbStore::open(dir, true)?),
            Backend::Fjall => Box::new(crate::fjall_store::FjallStore::open(dir)?),
            Backend::Sqlite => Box::new(crate::sqlite_store::SqliteStore::open(dir)?),
        })
    }
}

/// The end of the key range that starts with `prefix` (prefix with its last byte + 1).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    let last = end.last_mut().expect("non-empty prefix");
    assert!(*last < 0xff);
    *last += 1;
    end
}
