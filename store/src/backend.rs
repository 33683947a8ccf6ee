//! What a backend provides: reads, and one atomic apply per group of batches.

use crate::{Op, StoreError};

/// One bucket's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketStats {
    /// The bucket's name.
    pub name: String,
    /// How many keys it holds.
    pub keys: u64,
    /// The bytes of its keys and values.
    pub bytes: u64,
}

/// A place to keep buckets. Reads may run on any thread at any time; `apply` and `sync` are
/// called from the store's one committer thread only.
pub trait Backend: Send + Sync + 'static {
    /// The value under `key` in `bucket`.
    fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The keys of `bucket` starting with `prefix`, with their values, in key order.
    fn scan_prefix(&self, bucket: &str, prefix: &[u8]) -> Result<Vec<crate::Entry>, StoreError>;

    /// Applies `ops` as one transaction: all or nothing. They hold at most one operation per
    /// key (the committer keeps only the last of each), so a backend may apply them in any
    /// order (deletes grouped into ranges, say). When `durable`, they are on
    /// stable storage when this returns (one fsync); otherwise they are visible to reads and
    /// made durable by a later durable apply or [`Backend::sync`].
    fn apply(&self, ops: &[Op<'_>], durable: bool) -> Result<(), StoreError>;

    /// Makes every apply so far durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// Every bucket and its size.
    fn buckets(&self) -> Result<Vec<BucketStats>, StoreError>;

    /// Which backend, and where: e.g. `redb data/store/broker.redb`.
    fn describe(&self) -> String;
}
