//! A batch of puts and deletes, applied whole or not at all.
//!
//! A batch keeps its bucket names, keys and values back to back in one buffer, and its
//! operations as spans of it: adding an operation costs no allocation of its own (the buffer
//! grows by doubling), and the store's committer thread, which drops every batch it applied,
//! frees two buffers a batch rather than three a key. On a persistent session's hot path (one
//! put and one delete per QoS 1 message) that was a tenth of the committer's time.

use std::io;

use crate::StoreError;

/// The longest bucket name.
pub const MAX_BUCKET_NAME: usize = 255;

/// One put (`value: Some`) or delete (`value: None`), as a backend applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Op<'a> {
    /// The bucket.
    pub bucket: &'a str,
    /// The key.
    pub key: &'a [u8],
    /// The new value, or `None` to delete the key.
    pub value: Option<&'a [u8]>,
}

/// Puts and deletes over any buckets, committed together by [`crate::Store::commit`]. Later
/// operations on the same key win.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Bucket names, keys and values, back to back.
    data: Vec<u8>,
    items: Vec<Item>,
}

/// Where one bucket name, key or value lies in a batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    len: usize,
}

impl Span {
    fn shifted(self, by: usize) -> Span {
        Span { start: self.start + by, len: self.len }
    }
}

/// One entry of a batch: an operation, or a delete of every key under a prefix (made into
/// deletes of each key by the committer, when the keys written before it are known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Op { bucket: Span, key: Span, value: Option<Span> },
    DeletePrefix { bucket: Span, prefix: Span },
}

impl Item {
    fn shifted(self, by: usize) -> Item {
        match self {
            Item::Op { bucket, key, value } => {
                Item::Op { bucket: bucket.shifted(by), key: key.shifted(by), value: value.map(|v| v.shifted(by)) }
            }
            Item::DeletePrefix { bucket, prefix } => {
                Item::DeletePrefix { bucket: bucket.shifted(by), prefix: prefix.shifted(by) }
            }
        }
    }
}

/// An entry of a batch as the committer reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry<'a> {
    Op(Op<'a>),
    DeletePrefix { bucket: &'a str, prefix: &'a [u8] },
}

/// Appends to a batch's buffer; what [`Batch::put_with`] hands its writer. It only appends:
/// what the batch held before stays as it was.
#[derive(Debug)]
pub struct ValueWriter<'a> {
    data: &'a mut Vec<u8>,
}

impl io::Write for ValueWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a put of `value` under `key` in `bucket`.
    pub fn put(&mut self, bucket: &str, key: &[u8], value: &[u8]) -> Result<&mut Batch, StoreError> {
        self.put_with(bucket, key, |w| io::Write::write_all(w, value))
    }

    /// Adds a put under `key` in `bucket` of the value `write` writes: a value encoded straight
    /// into the batch, with no buffer of its own. If `write` fails, the batch is left as it was
    /// and its error is returned.
    pub fn put_with(
        &mut self,
        bucket: &str,
        key: &[u8],
        write: impl FnOnce(&mut ValueWriter<'_>) -> io::Result<()>,
    ) -> Result<&mut Batch, StoreError> {
        check_bucket(bucket)?;
        let mark = self.data.len();
        let bucket = self.bucket_span(bucket);
        let key = self.push(key);
        let start = self.data.len();
        if let Err(e) = write(&mut ValueWriter { data: &mut self.data }) {
            self.data.truncate(mark);
            return Err(StoreError::Io(e));
        }
        let value = Span { start, len: self.data.len() - start };
        self.items.push(Item::Op { bucket, key, value: Some(value) });
        Ok(self)
    }

    /// Adds a delete of `key` in `bucket`.
    pub fn delete(&mut self, bucket: &str, key: &[u8]) -> Result<&mut Batch, StoreError> {
        check_bucket(bucket)?;
        let bucket = self.bucket_span(bucket);
        let key = self.push(key);
        self.items.push(Item::Op { bucket, key, value: None });
        Ok(self)
    }

    /// Adds a delete of every key in `bucket` that starts with `prefix`: those committed before
    /// this batch, and those put earlier in it or in batches committed with it.
    pub fn delete_prefix(&mut self, bucket: &str, prefix: &[u8]) -> Result<&mut Batch, StoreError> {
        check_bucket(bucket)?;
        let bucket = self.bucket_span(bucket);
        let prefix = self.push(prefix);
        self.items.push(Item::DeletePrefix { bucket, prefix });
        Ok(self)
    }

    /// Moves every operation of `other` after this batch's, leaving `other` empty with its
    /// buffers kept for reuse (into an empty batch, the buffers themselves move: no copy).
    pub fn append(&mut self, other: &mut Batch) {
        if self.items.is_empty() {
            std::mem::swap(self, other);
            other.clear();
            return;
        }
        let by = self.data.len();
        self.data.extend_from_slice(&other.data);
        self.items.extend(other.items.drain(..).map(|item| item.shifted(by)));
        other.data.clear();
    }

    /// Empties the batch, keeping its buffers for reuse.
    pub fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many operations it holds (a prefix delete counts as one).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Its operations, in order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = Entry<'_>> + '_ {
        // Consecutive operations share their bucket's span: its text is read once for them.
        let mut last: Option<(Span, &str)> = None;
        self.items.iter().map(move |item| {
            let mut bucket_text = |span: Span| match last {
                Some((seen, text)) if seen == span => text,
                _ => {
                    let text = self.text(span);
                    last = Some((span, text));
                    text
                }
            };
            match *item {
                Item::Op { bucket, key, value } => Entry::Op(Op {
                    bucket: bucket_text(bucket),
                    key: self.bytes(key),
                    value: value.map(|v| self.bytes(v)),
                }),
                Item::DeletePrefix { bucket, prefix } => {
                    Entry::DeletePrefix { bucket: bucket_text(bucket), prefix: self.bytes(prefix) }
                }
            }
        })
    }

    fn push(&mut self, bytes: &[u8]) -> Span {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        Span { start, len: bytes.len() }
    }

    /// The span of `bucket`: the previous operation's when it names the same bucket (a batch
    /// mostly writes to one), else a new copy.
    fn bucket_span(&mut self, bucket: &str) -> Span {
        let last = self.items.last().map(|item| match *item {
            Item::Op { bucket, .. } | Item::DeletePrefix { bucket, .. } => bucket,
        });
        match last {
            Some(span) if self.bytes(span) == bucket.as_bytes() => span,
            _ => self.push(bucket.as_bytes()),
        }
    }

    fn bytes(&self, span: Span) -> &[u8] {
        &self.data[span.start..span.start + span.len]
    }

    fn text(&self, span: Span) -> &str {
        // Only `check_bucket`ed names (ASCII) are pushed as buckets.
        std::str::from_utf8(self.bytes(span)).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(batch: &Batch) -> Vec<Entry<'_>> {
        batch.entries().collect()
    }

    #[test]
    fn operations_read_back_in_order_across_appends() {
        let mut a = Batch::new();
        a.put("b1", b"k1", b"v1").unwrap().delete("b1", b"k2").unwrap();
        let mut b = Batch::new();
        b.delete_prefix("b2", b"p").unwrap().put("b1", b"k3", b"").unwrap();
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(
            ops(&a),
            [
                Entry::Op(Op { bucket: "b1", key: b"k1", value: Some(b"v1") }),
                Entry::Op(Op { bucket: "b1", key: b"k2", value: None }),
                Entry::DeletePrefix { bucket: "b2", prefix: b"p" },
                Entry::Op(Op { bucket: "b1", key: b"k3", value: Some(b"") }),
            ]
        );
        assert_eq!(a.len(), 4);
        let mut empty = Batch::new();
        empty.append(&mut a.clone());
        assert_eq!(ops(&empty), ops(&a));
    }

    #[test]
    fn a_failed_put_with_leaves_the_batch_as_it_was() {
        let mut batch = Batch::new();
        batch.put("b", b"k", b"v").unwrap();
        let failed = batch.put_with("other", b"k2", |w| {
            io::Write::write_all(w, b"half")?;
            Err(io::Error::other("encoding failed"))
        });
        assert!(matches!(failed, Err(StoreError::Io(_))));
        batch.put_with("b", b"k3", |w| io::Write::write_all(w, b"v3")).unwrap();
        assert_eq!(
            ops(&batch),
            [
                Entry::Op(Op { bucket: "b", key: b"k", value: Some(b"v") }),
                Entry::Op(Op { bucket: "b", key: b"k3", value: Some(b"v3") }),
            ]
        );
        assert!(matches!(batch.put("_meta", b"k", b"v"), Err(StoreError::InvalidBucket(_))));
        assert_eq!(batch.len(), 2);
    }
}
