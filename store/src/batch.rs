//! A batch of puts and deletes, applied whole or not at all.

use crate::StoreError;

/// The longest bucket name.
pub const MAX_BUCKET_NAME: usize = 255;

/// One put (`value: Some`) or delete (`value: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// Puts and deletes over any buckets, committed together by [`crate::Store::commit`]. Later
/// operations on the same key win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    items: Vec<Item>,
}

/// One entry of a batch: an operation, or a delete of every key under a prefix (made into
/// deletes of each key by the committer, when the keys written before it are known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Op(Op),
    DeletePrefix { bucket: String, prefix: Vec<u8> },
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a put of `value` under `key` in `bucket`.
    pub fn put(&mut self, bucket: &str, key: &[u8], value: &[u8]) -> Result<&mut Batch, StoreError> {
        check_bucket(bucket)?;
        self.items.push(Item::Op(Op { bucket: bucket.to_owned(), key: key.to_vec(), value: Some(value.to_vec()) }));
        Ok(self)
    }

    /// Adds a delete of `key` in `bucket`.
    pub fn delete(&mut self, bucket: &str, key: &[u8]) -> Result<&mut Batch, StoreError> {
        check_bucket(bucket)?;
        self.items.push(Item::Op(Op { bucket: bucket.to_owned(), key: key.to_vec(), value: None }));
        Ok(self)
    }

    /// Adds a delete of every key in `bucket` that starts with `prefix`: those committed before
    /// this batch, and those put earlier in it or in batches committed with it.
    pub fn delete_prefix(&mut self, bucket: &str, prefix: &[u8]) -> Result<&mut Batch, StoreError> {
        check_bucket(bucket)?;
        self.items.push(Item::DeletePrefix { bucket: bucket.to_owned(), prefix: prefix.to_vec() });
        Ok(self)
    }

    /// Adds every operation of `other`, after this batch's.
    pub fn append(&mut self, other: Batch) {
        self.items.extend(other.items);
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many operations it holds (a prefix delete counts as one).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn into_items(self) -> Vec<Item> {
        self.items
    }
}

/// Checks a bucket name: 1 to [`MAX_BUCKET_NAME`] characters of `[A-Za-z0-9_./-]`, not starting
/// with `_` (kept for the store's own tables).
pub fn check_bucket(name: &str) -> Result<(), StoreError> {
    let valid = !name.is_empty()
        && !name.starts_with('_')
        && name.len() <= MAX_BUCKET_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidBucket(name.to_owned()))
    }
}
