use crate::store::{Res, Store};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;

pub struct FjallStore {
    // Field order matters for drop: the keyspace handle goes before the database.
    ks: Keyspace,
    db: Database,
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

impl FjallStore {
    pub fn open(dir: &Path) -> Res<Self> {
        let db = Database::builder(dir.join("fjall")).open().map_err(e)?;
        let ks = db.keyspace("kv", KeyspaceCreateOptions::default).map_err(e)?;
        Ok(FjallStore { ks, db })
    }
}

impl Store for FjallStore {
    fn commit(&mut self, puts: &[(Vec<u8>, Vec<u8>)], dels: &[Vec<u8>]) -> Res<()> {
        // The batch is written to the journal and the journal fsync'd before commit returns.
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for (k, v) in puts {
            batch.insert(&self.ks, k.as_slice(), v.as_slice());
        }
        for k in dels {
            batch.remove(&self.ks, k.as_slice());
        }
        batch.commit().map_err(e)
    }

    fn get(&self, key: &[u8]) -> Res<Option<Vec<u8>>> {
        Ok(self.ks.get(key).map_err(e)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Res<usize> {
        let mut n = 0;
        for g in self.ks.prefix(prefix) {
            std::hint::black_box(g.into_inner().map_err(e)?);
            n += 1;
        }
        Ok(n)
    }

    fn count_all(&self) -> Res<usize> {
        let mut n = 0;
        for g in self.ks.iter() {
            std::hint::black_box(g.into_inner().map_err(e)?);
            n += 1;
        }
        Ok(n)
    }

    fn settle(&mut self) -> Res<()> {
        self.ks.rotate_memtable_and_wait().map_err(e)?;
        self.db.persist(PersistMode::SyncAll).map_err(e)
    }
}
