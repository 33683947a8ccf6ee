use crate::store::{prefix_end, Res, Store};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

pub struct SqliteStore {
    conn: Connection,
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

impl SqliteStore {
    pub fn open(dir: &Path) -> Res<Self> {
        let conn = Connection::open(dir.join("store.sqlite")).map_err(e)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(e)?;
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0)).map_err(e)?;
        assert_eq!(sync, 2, "synchronous=FULL");
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
        )
        .map_err(e)?;
        Ok(SqliteStore { conn })
    }
}

impl Store for SqliteStore {
    fn commit(&mut self, puts: &[(Vec<u8>, Vec<u8>)], dels: &[Vec<u8>]) -> Res<()> {
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                .map_err(e)?;
            for (k, v) in puts {
                put.execute(params![k, v]).map_err(e)?;
            }
            let mut del = tx.prepare_cached("DELETE FROM kv WHERE k = ?1").map_err(e)?;
            for k in dels {
                del.execute(params![k]).map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    fn get(&self, key: &[u8]) -> Res<Option<Vec<u8>>> {
        let mut st = self.conn.prepare_cached("SELECT v FROM kv WHERE k = ?1").map_err(e)?;
        st.query_row(params![key], |r| r.get(0)).optional().map_err(e)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Res<usize> {
        let end = prefix_end(prefix);
        let mut st = self
            .conn
            .prepare_cached("SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k")
            .map_err(e)?;
        let mut rows = st.query(params![prefix, end]).map_err(e)?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(e)? {
            let k: &[u8] = r.get_ref(0).map_err(e)?.as_blob().map_err(e)?;
            let v: &[u8] = r.get_ref(1).map_err(e)?.as_blob().map_err(e)?;
            std::hint::black_box((k, v));
            n += 1;
        }
        Ok(n)
    }

    fn count_all(&self) -> Res<usize> {
        let mut st = self.conn.prepare_cached("SELECT k, v FROM kv ORDER BY k").map_err(e)?;
        let mut rows = st.query([]).map_err(e)?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(e)? {
            std::hint::black_box((r.get_ref(0).map_err(e)?, r.get_ref(1).map_err(e)?));
            n += 1;
        }
        Ok(n)
    }

    fn integrity_check(&self) -> Option<Res<String>> {
        let run = || -> Res<String> {
            let mut st = self.conn.prepare("PRAGMA integrity_check").map_err(e)?;
            let lines: Vec<String> = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?;
            Ok(format!("{} line(s), first: {}", lines.len(), lines.first().cloned().unwrap_or_default()))
        };
        Some(run())
    }
}
