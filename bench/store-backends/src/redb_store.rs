use crate::store::{prefix_end, Res, Store};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

pub struct RedbStore {
    db: Database,
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

impl RedbStore {
    pub fn open(dir: &Path, check_on_open: bool) -> Res<Self> {
        let db = Database::builder()
            .set_check_integrity_on_open(check_on_open)
            .create(dir.join("store.redb"))
            .map_err(e)?;
        // Make sure the table exists so that reads on an empty store work.
        let txn = db.begin_write().map_err(e)?;
        txn.open_table(KV).map_err(e)?;
        txn.commit().map_err(e)?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn commit(&mut self, puts: &[(Vec<u8>, Vec<u8>)], dels: &[Vec<u8>]) -> Res<()> {
        let mut txn = self.db.begin_write().map_err(e)?;
        txn.set_durability(Durability::Immediate).map_err(e)?;
        {
            let mut t = txn.open_table(KV).map_err(e)?;
            for (k, v) in puts {
                t.insert(k.as_slice(), v.as_slice()).map_err(e)?;
            }
            for k in dels {
                t.remove(k.as_slice()).map_err(e)?;
            }
        }
        txn.commit().map_err(e)
    }

    fn get(&self, key: &[u8]) -> Res<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(e)?;
        let t = txn.open_table(KV).map_err(e)?;
        let v = t.get(key).map_err(e)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Res<usize> {
        let end = prefix_end(prefix);
        let txn = self.db.begin_read().map_err(e)?;
        let t = txn.open_table(KV).map_err(e)?;
        let mut n = 0;
        for item in t.range(prefix..end.as_slice()).map_err(e)? {
            let (k, v) = item.map_err(e)?;
            std::hint::black_box((k.value(), v.value()));
            n += 1;
        }
        Ok(n)
    }

    fn count_all(&self) -> Res<usize> {
        let txn = self.db.begin_read().map_err(e)?;
        let t = txn.open_table(KV).map_err(e)?;
        let mut n = 0;
        for item in t.range(..).map_err(e)? {
            let (k, v) = item.map_err(e)?;
            std::hint::black_box((k.value(), v.value()));
            n += 1;
        }
        Ok(n)
    }
}
