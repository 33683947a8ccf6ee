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
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a put of `value` under `key` in `bucket`.
    pub fn put(&mut self, bucket: &str, key: &[u8], value: &[u8]) -> Result<&mut Batch, StoreError> {
        check_bucket(bucket)?;
        self.ops.push(Op { bucket: bucket.to_owned(), key: key.to_vec(), value: Some(value.to_vec()) });
        Ok(self)
    }

    /// Adds a delete of `key` in `bucket`.
    pub fn delete(&mut self, bucket: &str, key: &[u8]) -> Result<&mut Batch, StoreError> {
        check_bucket(bucket)?;
        self.ops.push(Op { bucket: bucket.to_owned(), key: key.to_vec(), value: None });
        Ok(self)
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// How many operations it holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Its operations, in the order they were added.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub(crate) fn into_ops(self) -> Vec<Op> {
        self.ops
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
