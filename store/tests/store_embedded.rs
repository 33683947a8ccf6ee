//! The store over its embedded backend, in a temporary directory: what is committed is read
//! back, survives a reopen, is grouped into few fsyncs, reaches watchers, and a damaged or newer
//! file is refused with its name.

use std::path::Path;
use std::time::Duration;

use store::{Batch, Embedded, Store, StoreError, SyncMode};

fn open(dir: &Path) -> Store {
    Store::new(Embedded::open(dir).expect("opens"), SyncMode::Group).expect("starts")
}

#[test]
fn puts_deletes_and_prefix_scans_read_back_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put("core/sessions", b"c1/sub/a", b"1").unwrap();
    store.put("core/sessions", b"c1/sub/b", b"2").unwrap();
    store.put("core/sessions", b"c2/sub/a", b"3").unwrap();
    store.delete("core/sessions", b"c1/sub/b").unwrap();
    assert_eq!(store.get("core/sessions", b"c1/sub/a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("core/sessions", b"c1/sub/b").unwrap(), None);
    assert_eq!(store.get("no/such/bucket", b"x").unwrap(), None);
    let c1: Vec<_> = store.scan_prefix("core/sessions", b"c1/").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(c1, [b"c1/sub/a".to_vec()]);
    assert_eq!(store.scan_prefix("core/sessions", b"").unwrap().len(), 2);
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.get("core/sessions", b"c2/sub/a").unwrap(), Some(b"3".to_vec()));
    let buckets = store.buckets().unwrap();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    assert_eq!((buckets[0].name.as_str(), buckets[0].keys), ("core/sessions", 2));
}

/// Plugins keep password hashes in the store: only the broker's user may read it.
#[cfg(unix)]
#[test]
fn the_store_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let mode = std::fs::metadata(file(dir.path())).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

#[test]
fn a_batch_lands_whole_across_buckets_and_an_emptied_bucket_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut batch = Batch::new();
    batch.put("a", b"k", b"v").unwrap().put("b", b"k", b"v").unwrap().delete("a", b"k").unwrap();
    store.commit(batch).unwrap();
    assert_eq!(store.get("a", b"k").unwrap(), None, "a later delete in the batch wins");
    assert_eq!(store.get("b", b"k").unwrap(), Some(b"v".to_vec()));
    let names: Vec<_> = store.buckets().unwrap().into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["b"]);
}

#[test]
fn invalid_bucket_names_are_refused() {
    let store = Store::in_memory();
    for name in ["", "_meta", "has space", &"x".repeat(256)] {
        assert!(matches!(store.put(name, b"k", b"v"), Err(StoreError::InvalidBucket(_))), "{name:?}");
    }
}

#[test]
fn concurrent_commits_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    store.put("group", format!("{t}/{i:03}").as_bytes(), &[0; 256]).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let stats = store.stats();
    assert_eq!(stats.batches, 400);
    assert_eq!(stats.operations, 400);
    assert_eq!(stats.fsyncs, stats.commits, "in group mode every commit is durable");
    assert!(stats.fsyncs <= stats.batches, "{stats:?}");
    assert_eq!(store.scan_prefix("group", b"").unwrap().len(), 400);
}

#[tokio::test]
async fn async_commits_keep_their_order_and_watchers_see_them() {
    let store = Store::in_memory();
    let watch = store.watch("w", b"x/").unwrap();
    let first = store.commit_async({
        let mut b = Batch::new();
        b.put("w", b"x/1", b"one").unwrap();
        b
    });
    let second = store.commit_async({
        let mut b = Batch::new();
        b.put("w", b"y/1", b"not watched").unwrap().delete("w", b"x/1").unwrap();
        b
    });
    first.await.unwrap();
    second.await.unwrap();
    let a = watch.next_timeout(Duration::from_secs(10)).unwrap();
    let b = watch.next_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((a.key.as_slice(), a.value.as_deref()), (&b"x/1"[..], Some(&b"one"[..])));
    assert_eq!((b.key.as_slice(), b.value), (&b"x/1"[..], None));
    assert!(watch.try_next().is_none(), "y/1 is outside the prefix");
}

#[test]
fn interval_mode_syncs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(Embedded::open(dir.path()).unwrap(), SyncMode::Interval(Duration::from_millis(20))).unwrap();
    store.put("i", b"k", b"v").unwrap();
    assert_eq!(store.stats().fsyncs, 0, "a commit is not fsync'd at once");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.stats().fsyncs == 0 {
        assert!(std::time::Instant::now() < deadline, "no periodic fsync");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Embedded::open(dir.path()).unwrap();
    let err = Embedded::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
}

fn fill(dir: &Path) {
    let store = open(dir);
    for i in 0..2000u32 {
        store.put("fill", &i.to_be_bytes(), &[7; 512]).unwrap();
    }
    store.close().unwrap();
}

fn file(dir: &Path) -> std::path::PathBuf {
    dir.join(store::embedded_file_name())
}

#[test]
fn a_truncated_store_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(file(dir.path())).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = Embedded::open(dir.path()).map(|_| ()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&file(dir.path()).display().to_string()), "{err}");
}

#[test]
fn a_store_with_random_bytes_in_its_middle_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let mut bytes = std::fs::read(file(dir.path())).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 4096].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 131 % 253) as u8 ^ *b ^ 0x5a);
    std::fs::write(file(dir.path()), &bytes).unwrap();
    let err = Embedded::open(dir.path()).map(|_| ()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&file(dir.path()).display().to_string()), "{err}");
}

#[test]
fn a_store_with_overwritten_bytes_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let mut bytes = std::fs::read(file(dir.path())).unwrap();
    // Garbage over the file's header and its first pages.
    bytes[..8192].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 31 % 251) as u8);
    std::fs::write(file(dir.path()), &bytes).unwrap();
    let err = Embedded::open(dir.path()).map(|_| ()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&file(dir.path()).display().to_string()), "{err}");
}

#[test]
fn a_prefix_delete_takes_what_was_committed_and_what_was_put_before_it_in_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put("p", b"a/1", b"old").unwrap();
    store.put("p", b"b/1", b"other").unwrap();
    let mut batch = Batch::new();
    batch.put("p", b"a/2", b"new").unwrap().delete_prefix("p", b"a/").unwrap().put("p", b"a/3", b"after").unwrap();
    store.commit(batch).unwrap();
    let keys: Vec<_> = store.scan_prefix("p", b"").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [b"a/3".to_vec(), b"b/1".to_vec()]);
}

#[test]
fn a_store_from_a_newer_format_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        // What a newer broker would leave: its format version in the store's own table.
        let db = redb::Database::create(file(dir.path())).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(redb::TableDefinition::<&str, u32>::new("_meta")).unwrap();
            meta.insert("format", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Embedded::open(dir.path()).map(|_| ()).unwrap_err();
    assert!(matches!(err, StoreError::NewerVersion { found: 99, supported: 1, .. }), "{err:?}");
    assert!(err.to_string().contains(&file(dir.path()).display().to_string()), "{err}");
}

/// Deletes of keys that are neighbours in the table are applied as ranges (`delete_in_runs`):
/// exactly the deleted keys go, also when the keys between runs, a key put in the same batch,
/// a key never written and a key deleted twice (put, then deleted, in one batch) are mixed in.
#[test]
fn deletes_in_runs_take_exactly_the_deleted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let key = |n: u8| [b'e', 1, b'c', 0, 0, 0, 0, 0, 0, 0, n];
    let mut batch = Batch::new();
    for n in 1..=20 {
        batch.put("core/sessions", &key(n), &[n]).unwrap();
    }
    store.commit(batch).unwrap();
    let deleted = [2, 3, 4, 7, 9, 10, 11, 15, 20, 30];
    let mut batch = Batch::new();
    batch.put("core/sessions", &key(21), &[21]).unwrap();
    batch.put("core/sessions", &key(22), &[22]).unwrap();
    // Out of order, as acknowledgements may come.
    for n in deleted.iter().rev() {
        batch.delete("core/sessions", &key(*n)).unwrap();
    }
    batch.delete("core/sessions", &key(22)).unwrap();
    store.commit(batch).unwrap();
    let left: Vec<u8> =
        store.scan_prefix("core/sessions", b"e").unwrap().into_iter().map(|(k, _)| k[k.len() - 1]).collect();
    let expected: Vec<u8> = (1..=21).filter(|n| !deleted.contains(n)).collect();
    assert_eq!(left, expected);
}

/// `swap` is a compare-and-set: it changes a key only if it holds what the caller saw, and of
/// many threads racing to claim one key, exactly one wins.
#[test]
fn swap_changes_a_key_only_from_the_value_expected_and_one_racer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let watch = store.watch("b", b"").unwrap();
    assert!(store.swap("b", b"k", None, Some(b"1")).unwrap(), "absent, as expected: created");
    assert!(!store.swap("b", b"k", None, Some(b"2")).unwrap(), "no longer absent");
    assert!(!store.swap("b", b"k", Some(b"0"), Some(b"2")).unwrap(), "not 0");
    assert_eq!(store.get("b", b"k").unwrap(), Some(b"1".to_vec()));
    assert!(store.swap("b", b"k", Some(b"1"), Some(b"2")).unwrap());
    assert!(store.swap("b", b"k", Some(b"2"), None).unwrap(), "a swap may delete");
    assert_eq!(store.get("b", b"k").unwrap(), None);
    let seen: Vec<_> = std::iter::from_fn(|| watch.try_next()).map(|c| c.value).collect();
    assert_eq!(seen, [Some(b"1".to_vec()), Some(b"2".to_vec()), None], "watchers see what a swap changed, only that");

    for round in 0..20u8 {
        store.put("b", b"claim", b"free").unwrap();
        let winners: usize = std::thread::scope(|s| {
            let racers: Vec<_> = (0..8u8)
                .map(|i| {
                    let store = &store;
                    s.spawn(move || {
                        // A plain commit of another key between the racers changes nothing.
                        store.put("b", &[b'o', i], &[round]).unwrap();
                        usize::from(store.swap("b", b"claim", Some(b"free"), Some(&[i])).unwrap())
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).sum()
        });
        assert_eq!(winners, 1, "round {round}");
    }
    store.close().unwrap();
    assert!(matches!(store.swap("b", b"k", None, Some(b"1")), Err(StoreError::Closed)));
}
