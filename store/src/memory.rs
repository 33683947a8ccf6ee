//! A backend in memory: for tests and for stores that must not touch the disk.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::{Backend, BucketStats, Op, StoreError};

type Buckets = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Buckets in memory; nothing survives the process.
#[derive(Debug, Default)]
pub struct Memory {
    buckets: RwLock<Buckets>,
}

impl Memory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Buckets> {
        self.buckets.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for Memory {
    fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().get(bucket).and_then(|b| b.get(key)).cloned())
    }

    fn scan_prefix(&self, bucket: &str, prefix: &[u8]) -> Result<Vec<crate::Entry>, StoreError> {
        let buckets = self.read();
        let Some(b) = buckets.get(bucket) else { return Ok(Vec::new()) };
        Ok(b.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, ops: &[Op<'_>], _durable: bool) -> Result<(), StoreError> {
        let mut buckets = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            match op.value {
                Some(value) => {
                    buckets.entry(op.bucket.to_owned()).or_default().insert(op.key.to_vec(), value.to_vec());
                }
                None => {
                    if let Some(b) = buckets.get_mut(op.bucket) {
                        b.remove(op.key);
                        if b.is_empty() {
                            buckets.remove(op.bucket);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn buckets(&self) -> Result<Vec<BucketStats>, StoreError> {
        Ok(self
            .read()
            .iter()
            .map(|(name, b)| BucketStats {
                name: name.clone(),
                keys: b.len() as u64,
                bytes: b.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            })
            .collect())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}
