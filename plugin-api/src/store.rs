//! The broker's store, as a plugin sees it: named buckets of key → bytes, through
//! [`Host::store`].
//!
//! A bucket is the plugin's own (the host keeps it apart from every other plugin's bucket of
//! the same name) unless its name starts with `shared/`. Writes are atomic per
//! [`StoreBatch`] and return once they are durable as the broker's `[persistence] sync`
//! setting says: they may wait for an fsync. A write from a hook that runs on one of the
//! broker's network threads is allowed: the host moves the wait off that thread (tokio's
//! `block_in_place`), so only the client the hook is about waits for the disk while every other
//! client is served. A plugin that must not make its client wait writes from its own thread.
//! [`import_file`] moves a file a plugin kept before the store existed into its bucket. A [`StoreWatch`] sees every change under a prefix,
//! whoever made it (another plugin on a `shared/` bucket, or, in a cluster, another node).
//!
//! The byte layouts that cross the ABI are in [`wire`].

use std::time::Duration;

use crate::abi::{self, RawBytes, RawBytesWriter, RawStr, RawWriter};
use crate::abi::{read_field, HostApi};
use crate::host::{api, stopped, unsupported, Host, HostError};

/// One bucket of the store (from [`Host::store`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bucket {
    host: Host,
    name: String,
}

/// Puts and deletes to apply to one bucket together ([`Bucket::commit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreBatch {
    ops: Vec<u8>,
    count: usize,
}

impl StoreBatch {
    /// An empty batch.
    pub fn new() -> StoreBatch {
        StoreBatch::default()
    }

    /// Adds a put of `value` under `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut StoreBatch {
        wire::push_op(&mut self.ops, key, Some(value));
        self.count += 1;
        self
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: &[u8]) -> &mut StoreBatch {
        wire::push_op(&mut self.ops, key, None);
        self.count += 1;
        self
    }

    /// How many operations it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One key with its value, as [`Bucket::scan_prefix`] returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One change seen by a [`StoreWatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreChange {
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
}

/// A change feed of one bucket under a key prefix ([`Bucket::watch`]). Dropping it ends the feed.
#[derive(Debug)]
pub struct StoreWatch {
    host: Host,
    id: u64,
}

impl Host {
    /// The bucket `name` of the store: the plugin's own, or shared by every plugin when `name`
    /// starts with `shared/`. Nothing is checked until the first call.
    pub fn store(&self, name: &str) -> Bucket {
        Bucket { host: *self, name: name.to_owned() }
    }
}

impl Bucket {
    /// The bucket's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        let get = api!(self.host, store_get).ok_or_else(|| unsupported("store_get"))?;
        let (mut value, mut error) = (Vec::new(), String::new());
        // SAFETY: the vtable has this function (its size covers it); ctx is valid for the
        // plugin's life; the name and key outlive the call; the writers borrow our buffers.
        let status = unsafe {
            get(
                self.host.ctx(),
                RawStr::new(&self.name),
                RawBytes::new(key),
                RawBytesWriter::for_vec(&mut value),
                RawWriter::for_string(&mut error),
            )
        };
        match status {
            abi::STATUS_OK => Ok(Some(value)),
            abi::STATUS_NOT_FOUND => Ok(None),
            status => Err(store_error(status, error)),
        }
    }

    /// Every key starting with `prefix` (every key for an empty one), with its value, in key
    /// order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, HostError> {
        let scan = api!(self.host, store_scan).ok_or_else(|| unsupported("store_scan"))?;
        let (mut entries, mut error) = (Vec::new(), String::new());
        // SAFETY: as in `get`.
        let status = unsafe {
            scan(
                self.host.ctx(),
                RawStr::new(&self.name),
                RawBytes::new(prefix),
                RawBytesWriter::for_vec(&mut entries),
                RawWriter::for_string(&mut error),
            )
        };
        if status != abi::STATUS_OK {
            return Err(store_error(status, error));
        }
        wire::decode_entries(&entries).map_err(|e| HostError::BadAnswer(e.to_owned()))
    }

    /// Puts `value` under `key`; returns once it is durable.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), HostError> {
        self.commit(StoreBatch::new().put(key, value))
    }

    /// Deletes `key` (nothing happens if it is absent).
    pub fn delete(&self, key: &[u8]) -> Result<(), HostError> {
        self.commit(StoreBatch::new().delete(key))
    }

    /// Applies `batch` all or nothing; returns once it is durable. [`HostError::Failed`] with
    /// "full" in its text when the store is full ([`Bucket::is_full`] tells).
    pub fn commit(&self, batch: &StoreBatch) -> Result<(), HostError> {
        if batch.is_empty() {
            return Ok(());
        }
        let commit = api!(self.host, store_commit).ok_or_else(|| unsupported("store_commit"))?;
        let mut error = String::new();
        // SAFETY: as in `get`; the batch's bytes outlive the call.
        let status = unsafe {
            commit(
                self.host.ctx(),
                RawStr::new(&self.name),
                RawBytes::new(&batch.ops),
                RawWriter::for_string(&mut error),
            )
        };
        match status {
            abi::STATUS_OK => Ok(()),
            status => Err(store_error(status, error)),
        }
    }

    /// Compare and set: if `key` holds `expected` (`None`: is absent), sets it to `new`
    /// (`None`: deletes it) and returns `Ok(true)`; otherwise changes nothing and returns
    /// `Ok(false)`. Of several callers racing from the same value exactly one gets `true`,
    /// also on different nodes of a cluster when the bucket is shared: NATS decides there, and
    /// while it is not reachable the answer is [`HostError::Unavailable`] (ask again later).
    /// Use it to claim a piece of work only one node may do (`emqx_mod_delayed` claims each
    /// message it publishes). Returns once the change is durable, as [`Bucket::commit`].
    pub fn swap(&self, key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, HostError> {
        let swap = api!(self.host, store_swap).ok_or_else(|| unsupported("store_swap"))?;
        let mut error = String::new();
        let (expected, new) = (expected.map(RawBytes::new), new.map(RawBytes::new));
        let pointer = |bytes: &Option<RawBytes>| bytes.as_ref().map_or(std::ptr::null(), |b| b as *const RawBytes);
        // SAFETY: as in `get`; `expected` and `new` (and what they point to) outlive the call.
        let status = unsafe {
            swap(
                self.host.ctx(),
                RawStr::new(&self.name),
                RawBytes::new(key),
                pointer(&expected),
                pointer(&new),
                RawWriter::for_string(&mut error),
            )
        };
        match status {
            abi::STATUS_OK => Ok(true),
            abi::STATUS_CONFLICT => Ok(false),
            status => Err(store_error(status, error)),
        }
    }

    /// A feed of every put and delete under `prefix` committed from now on.
    pub fn watch(&self, prefix: &[u8]) -> Result<StoreWatch, HostError> {
        let watch = api!(self.host, store_watch).ok_or_else(|| unsupported("store_watch"))?;
        let (mut id, mut error) = (0u64, String::new());
        // SAFETY: as in `get`; `id` outlives the call.
        let status = unsafe {
            watch(
                self.host.ctx(),
                RawStr::new(&self.name),
                RawBytes::new(prefix),
                &mut id,
                RawWriter::for_string(&mut error),
            )
        };
        match status {
            abi::STATUS_OK => Ok(StoreWatch { host: self.host, id }),
            status => Err(store_error(status, error)),
        }
    }

    /// Whether `error` (from a write) says the store is full.
    pub fn is_full(error: &HostError) -> bool {
        matches!(error, HostError::Failed(text) if text.starts_with(FULL_PREFIX))
    }
}

impl StoreWatch {
    /// The next change, waiting up to `timeout`; `Ok(None)` if none came in time.
    pub fn next_timeout(&self, timeout: Duration) -> Result<Option<StoreChange>, HostError> {
        let next = api!(self.host, store_watch_next).ok_or_else(|| unsupported("store_watch_next"))?;
        let mut change = Vec::new();
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: as in `Bucket::get`.
        let status = unsafe { next(self.host.ctx(), self.id, timeout_ms, RawBytesWriter::for_vec(&mut change)) };
        match status {
            abi::STATUS_OK => wire::decode_change(&change).map(Some).map_err(|e| HostError::BadAnswer(e.to_owned())),
            abi::STATUS_TIMEOUT => Ok(None),
            abi::STATUS_UNAVAILABLE => Err(stopped()),
            abi::STATUS_NOT_FOUND => Err(HostError::NotFound(format!("no store watch {}", self.id))),
            status => Err(HostError::Failed(format!("store_watch_next failed with status {status}"))),
        }
    }
}

impl Drop for StoreWatch {
    fn drop(&mut self) {
        if let Some(unwatch) = api!(self.host, store_unwatch) {
            // SAFETY: as in `Bucket::get`.
            unsafe { unwatch(self.host.ctx(), self.id) };
        }
    }
}

/// Imports a file a plugin kept in the data directory before the store existed.
///
/// When `path` exists, `import` gets its bytes: it decodes them, writes what they hold to the
/// plugin's bucket, and says what it imported (`"3 retained messages"`). The file is then
/// renamed `<name>.imported` and the import logged at info (`imported 3 retained messages
/// from /data/emqx_retainer.dat (renamed emqx_retainer.dat.imported)`). When the file cannot
/// be read, or `import` fails (a damaged file, or a store that refused the writes), a warning
/// names the file, which is left in place to be imported at the next start. Returns whether
/// the file was imported; no file is `false`, with nothing logged.
pub fn import_file(host: &Host, path: &std::path::Path, import: impl FnOnce(&[u8]) -> Result<String, String>) -> bool {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            host.warn(&format!("cannot read {} to import it: {e}; left in place", path.display()));
            return false;
        }
    };
    let what = match import(&bytes) {
        Ok(what) => what,
        Err(why) => {
            host.warn(&format!("{} not imported: {why}; left in place", path.display()));
            return false;
        }
    };
    let mut renamed = path.as_os_str().to_owned();
    renamed.push(".imported");
    let renamed = std::path::PathBuf::from(renamed);
    let name = renamed.file_name().map_or_else(|| renamed.display().to_string(), |n| n.to_string_lossy().into_owned());
    match std::fs::rename(path, &renamed) {
        Ok(()) => host.info(&format!("imported {what} from {} (renamed {name})", path.display())),
        Err(e) => host.warn(&format!(
            "imported {what} from {}, but cannot rename it to {name}: {e}; it will be imported again at the next start",
            path.display()
        )),
    }
    true
}

/// How a full store's error text begins.
const FULL_PREFIX: &str = "the store is full";

fn store_error(status: abi::Status, text: String) -> HostError {
    match status {
        abi::STATUS_FULL if text.starts_with(FULL_PREFIX) => HostError::Failed(text),
        abi::STATUS_FULL => HostError::Failed(format!("{FULL_PREFIX}: {text}")),
        abi::STATUS_INVALID_ARGUMENT => HostError::InvalidArgument(text),
        abi::STATUS_UNAVAILABLE => HostError::Unavailable(text),
        abi::STATUS_UNSUPPORTED => HostError::Unsupported(text),
        _ => HostError::Failed(text),
    }
}

/// The byte layouts of the store functions of [`crate::abi::HostApi`]. Lengths are `u32`
/// little-endian.
///
/// - An **operation** (`store_commit`'s `ops`, one after another): a kind byte, `1` put or `2`
///   delete; the key's length and the key; for a put, the value's length and the value.
/// - An **entry** (`store_scan`'s output, one after another): the key's length and the key, the
///   value's length and the value.
/// - A **change** (`store_watch_next`'s output): an operation.
pub mod wire {
    /// The kind byte of a put in the store's byte layouts. Lengths are `uint32_t` little-endian.
    /// An operation (`store_commit`'s `ops`, one after another) is a kind byte, the key's length
    /// and the key, and for a put the value's length and the value. An entry (`store_scan`'s
    /// output, one after another) is the key's length and the key, the value's length and the
    /// value. A change (`store_watch_next`'s output) is one operation.
    pub const STORE_OP_PUT: u8 = 1;
    /// The kind byte of a delete in the store's byte layouts (see [`STORE_OP_PUT`]).
    pub const STORE_OP_DELETE: u8 = 2;

    /// One operation: `value` `None` is a delete.
    pub type Op<'a> = (&'a [u8], Option<&'a [u8]>);

    fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// Appends one operation.
    pub fn push_op(out: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
        out.push(if value.is_some() { STORE_OP_PUT } else { STORE_OP_DELETE });
        push_bytes(out, key);
        if let Some(value) = value {
            push_bytes(out, value);
        }
    }

    /// Appends one entry.
    pub fn push_entry(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
        push_bytes(out, key);
        push_bytes(out, value);
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
            let (len, rest) = self.0.split_at_checked(4).ok_or("truncated length")?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (bytes, rest) = rest.split_at_checked(len).ok_or("truncated bytes")?;
            self.0 = rest;
            Ok(bytes)
        }

        fn op(&mut self) -> Result<Op<'a>, &'static str> {
            let (&kind, rest) = self.0.split_first().ok_or("truncated operation")?;
            self.0 = rest;
            let key = self.bytes()?;
            match kind {
                STORE_OP_PUT => Ok((key, Some(self.bytes()?))),
                STORE_OP_DELETE => Ok((key, None)),
                _ => Err("unknown operation kind"),
            }
        }
    }

    /// Reads operations back.
    pub fn decode_ops(mut bytes: &[u8]) -> Result<Vec<Op<'_>>, &'static str> {
        let mut ops = Vec::new();
        while !bytes.is_empty() {
            let mut reader = Reader(bytes);
            ops.push(reader.op()?);
            bytes = reader.0;
        }
        Ok(ops)
    }

    /// Reads entries back.
    pub fn decode_entries(bytes: &[u8]) -> Result<Vec<super::Entry>, &'static str> {
        let mut reader = Reader(bytes);
        let mut entries = Vec::new();
        while !reader.0.is_empty() {
            let key = reader.bytes()?.to_vec();
            entries.push((key, reader.bytes()?.to_vec()));
        }
        Ok(entries)
    }

    /// Reads a change back.
    pub fn decode_change(bytes: &[u8]) -> Result<super::StoreChange, &'static str> {
        let mut reader = Reader(bytes);
        let (key, value) = reader.op()?;
        if !reader.0.is_empty() {
            return Err("bytes after the change");
        }
        Ok(super::StoreChange { key: key.to_vec(), value: value.map(<[u8]>::to_vec) })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn operations_entries_and_changes_read_back() {
            let mut ops = Vec::new();
            push_op(&mut ops, b"k1", Some(b"v1"));
            push_op(&mut ops, b"", None);
            assert_eq!(decode_ops(&ops).unwrap(), [(&b"k1"[..], Some(&b"v1"[..])), (&b""[..], None)]);
            assert!(decode_ops(&ops[..ops.len() - 1]).is_err());
            assert!(decode_ops(&[9, 0, 0, 0, 0]).is_err());

            let mut entries = Vec::new();
            push_entry(&mut entries, b"a", b"");
            push_entry(&mut entries, b"b", b"2");
            assert_eq!(decode_entries(&entries).unwrap(), [(b"a".to_vec(), vec![]), (b"b".to_vec(), b"2".to_vec())]);

            let mut change = Vec::new();
            push_op(&mut change, b"k", None);
            assert_eq!(decode_change(&change).unwrap(), super::super::StoreChange { key: b"k".to_vec(), value: None });
        }
    }
}
