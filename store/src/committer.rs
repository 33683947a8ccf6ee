//! The one thread that writes: it takes every batch queued since its last commit, applies them
//! as one transaction, makes that durable with one fsync (group commit), then answers each
//! caller and feeds the watchers.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::batch::Entry;
use crate::watch::Watchers;
use crate::{Backend, Batch, Op, StoreError, StoreStats, SyncMode};

/// At most this many operations go into one transaction; the rest wait for the next.
const MAX_GROUP_OPS: usize = 16 * 1024;

type Verdict = Result<(), StoreError>;

enum Reply {
    Blocking(SyncSender<Verdict>),
    Async(oneshot::Sender<Verdict>),
}

impl Reply {
    fn send(self, verdict: Verdict) {
        // A caller that went away no longer needs its answer.
        match self {
            Reply::Blocking(sender) => drop(sender.send(verdict)),
            Reply::Async(sender) => drop(sender.send(verdict)),
        }
    }
}

/// A compare-and-set: a one-operation batch, the value its key must hold (`None`: absent), and
/// where the verdict goes.
type Swap = (Batch, Option<Vec<u8>>, SyncSender<Result<bool, StoreError>>);

enum Request {
    Commit(Batch, Reply),
    Swap(Swap),
    Close(SyncSender<Verdict>),
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    batches: AtomicU64,
    operations: AtomicU64,
    fsyncs: AtomicU64,
    last_fsync_micros: AtomicU64,
    failures: AtomicU64,
}

pub(crate) struct Committer {
    requests: Mutex<Option<Sender<Request>>>,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        watchers: Arc<Watchers>,
        sync: SyncMode,
    ) -> Result<Committer, StoreError> {
        let (requests, queue) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let worker = Worker { backend, watchers, sync, counters: counters.clone(), unsynced_since: None };
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || worker.run(queue))
            .map_err(StoreError::Io)?;
        Ok(Committer { requests: Mutex::new(Some(requests)), counters, thread: Mutex::new(Some(thread)) })
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.as_ref().ok_or(StoreError::Closed)?.send(request).map_err(|_| StoreError::Closed)
    }

    pub(crate) fn commit_blocking(&self, batch: Batch) -> Verdict {
        let (reply, verdict) = mpsc::sync_channel(1);
        self.send(Request::Commit(batch, Reply::Blocking(reply)))?;
        verdict.recv().unwrap_or(Err(StoreError::Closed))
    }

    pub(crate) fn swap_blocking(&self, change: Batch, expected: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let (reply, verdict) = mpsc::sync_channel(1);
        self.send(Request::Swap((change, expected, reply)))?;
        verdict.recv().unwrap_or(Err(StoreError::Closed))
    }

    pub(crate) fn commit_queued(&self, batch: Batch) -> Result<oneshot::Receiver<Verdict>, StoreError> {
        let (reply, verdict) = oneshot::channel();
        self.send(Request::Commit(batch, Reply::Async(reply)))?;
        Ok(verdict)
    }

    pub(crate) fn close(&self) -> Verdict {
        let (reply, verdict) = mpsc::sync_channel(1);
        let sent = self.send(Request::Close(reply));
        // No more requests: the thread ends once it has answered the close.
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).take();
        if sent.is_err() {
            return Ok(()); // already closed
        }
        let result = verdict.recv().unwrap_or(Err(StoreError::Closed));
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
        result
    }

    pub(crate) fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            backend: String::new(),
            commits: c.commits.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            operations: c.operations.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            last_fsync_micros: c.last_fsync_micros.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }
}

/// `ops` with only the last operation on each key, in their order: what a transaction applying
/// them all leaves. A message put and deleted (delivered and acknowledged) between two commits
/// then costs the backend one delete of a key it never wrote, instead of a write and a delete.
fn coalesce<'a, 'b>(ops: &'b [Op<'a>]) -> std::borrow::Cow<'b, [Op<'a>]> {
    if ops.len() < 2 {
        return std::borrow::Cow::Borrowed(ops);
    }
    let mut last: HashMap<(&str, &[u8]), usize> = HashMap::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        last.insert((op.bucket, op.key), i);
    }
    if last.len() == ops.len() {
        return std::borrow::Cow::Borrowed(ops);
    }
    let kept = ops.iter().enumerate().filter(|(i, op)| last[&(op.bucket, op.key)] == *i);
    std::borrow::Cow::Owned(kept.map(|(_, op)| *op).collect())
}

impl Drop for Committer {
    /// The last handle to the store going: what is queued is committed and the thread ends,
    /// so the backend (and its file) is released when the drop returns.
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("store: closing failed: {e}");
        }
    }
}

struct Worker {
    backend: Arc<dyn Backend>,
    watchers: Arc<Watchers>,
    sync: SyncMode,
    counters: Arc<Counters>,
    /// In `SyncMode::Interval`: when the oldest commit not yet fsync'd was made.
    unsynced_since: Option<Instant>,
}

impl Worker {
    fn run(mut self, queue: Receiver<Request>) {
        // A request taken from the queue after a run of swaps: the next round starts with it.
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match self.next_deadline() {
                    None => match queue.recv() {
                        Ok(request) => request,
                        Err(_) => return self.finish(),
                    },
                    Some(deadline) => match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout) => {
                            self.sync_now();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return self.finish(),
                    },
                },
            };
            let mut group = Vec::new();
            let mut ops = 0;
            let mut last = None;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Commit(batch, reply) => {
                        ops += batch.len();
                        group.push((batch, reply));
                    }
                    // Ends the group: decided after what came before it.
                    other => {
                        last = Some(other);
                        break;
                    }
                }
                if ops < MAX_GROUP_OPS {
                    next = queue.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            match last {
                Some(Request::Close(reply)) => {
                    let _ = reply.send(self.backend.sync());
                    return;
                }
                Some(Request::Swap(swap)) => {
                    // The swaps queued right behind it are decided with it, in order, and
                    // made durable together (one fsync for claimers racing, say).
                    let mut swaps = vec![swap];
                    while swaps.len() < MAX_GROUP_OPS {
                        match queue.try_recv() {
                            Ok(Request::Swap(swap)) => swaps.push(swap),
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.swap_group(swaps);
                }
                Some(Request::Commit(..)) | None => {}
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match (self.sync, self.unsynced_since) {
            (SyncMode::Interval(every), Some(since)) => Some(since + every),
            _ => None,
        }
    }

    fn sync_now(&mut self) {
        let started = Instant::now();
        match self.backend.sync() {
            Ok(()) => self.count_fsync(started),
            Err(e) => tracing::error!("store: periodic sync failed: {e}"),
        }
        self.unsynced_since = None;
    }

    fn finish(&mut self) {
        if let Err(e) = self.backend.sync() {
            tracing::error!("store: final sync failed: {e}");
        }
    }

    fn count_fsync(&self, started: Instant) {
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.counters.last_fsync_micros.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Applies the group as one transaction. If that fails, applies each batch alone so that
    /// one batch's failure (a full disk, say) is not every caller's.
    fn commit_group(&mut self, group: Vec<(Batch, Reply)>) {
        // The keys in the store under each prefix delete, read before anything of the group is
        // applied (this is the only writer); a batch whose reads fail fails alone.
        let mut batches = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for (batch, reply) in group {
            match self.stored_under_prefixes(&batch) {
                Ok(stored) => {
                    batches.push((batch, stored));
                    replies.push(reply);
                }
                Err(e) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    reply.send(Err(e));
                }
            }
        }
        if batches.is_empty() {
            return;
        }
        let mut ops: Vec<Op<'_>> = Vec::new();
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(batches.len());
        for (batch, stored) in &batches {
            let start = ops.len();
            expand(batch, stored, &mut ops);
            ranges.push(start..ops.len());
        }
        match self.apply(&ops, ranges.len() as u64) {
            Ok(()) => {
                self.watchers.notify(&ops);
                for reply in replies {
                    reply.send(Ok(()));
                }
            }
            Err(e) if replies.len() == 1 => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                replies.into_iter().for_each(|reply| reply.send(Err(e.copy())));
            }
            Err(_) => {
                for (range, reply) in ranges.into_iter().zip(replies) {
                    let verdict = self.apply(&ops[range.clone()], 1);
                    match &verdict {
                        Ok(()) => self.watchers.notify(&ops[range]),
                        Err(_) => {
                            self.counters.failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    reply.send(verdict);
                }
            }
        }
    }

    /// Decides `swaps` in order, each against what the store holds and what the swaps before
    /// it in the group changed; applies the winners' changes as one transaction, then tells
    /// each caller whether it won (or the error, for all winners, if the apply failed).
    fn swap_group(&mut self, swaps: Vec<Swap>) {
        let mut decided: HashMap<(&str, &[u8]), Option<&[u8]>> = HashMap::with_capacity(swaps.len());
        let mut ops: Vec<Op<'_>> = Vec::with_capacity(swaps.len());
        let mut verdicts: Vec<Result<bool, StoreError>> = Vec::with_capacity(swaps.len());
        for (change, expected, _) in &swaps {
            let mut entries = change.entries();
            let (Some(Entry::Op(op)), None) = (entries.next(), entries.next()) else {
                verdicts.push(Err(StoreError::Backend("a swap changes one key".to_owned())));
                continue;
            };
            let holds = match decided.get(&(op.bucket, op.key)) {
                Some(value) => *value == expected.as_deref(),
                None => match self.backend.get(op.bucket, op.key) {
                    Ok(value) => value.as_deref() == expected.as_deref(),
                    Err(e) => {
                        verdicts.push(Err(e));
                        continue;
                    }
                },
            };
            if holds {
                decided.insert((op.bucket, op.key), op.value);
                ops.push(op);
            }
            verdicts.push(Ok(holds));
        }
        let applied = if ops.is_empty() { Ok(()) } else { self.apply(&ops, ops.len() as u64) };
        match &applied {
            Ok(()) => self.watchers.notify(&ops),
            Err(_) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        for ((_, _, reply), verdict) in swaps.iter().zip(verdicts) {
            let verdict = match (verdict, &applied) {
                (Ok(true), Err(e)) => Err(e.copy()),
                (verdict, _) => verdict,
            };
            let _ = reply.send(verdict);
        }
    }

    /// The keys in the store under each prefix delete of `batch`, in its order.
    fn stored_under_prefixes(&self, batch: &Batch) -> Result<Vec<Vec<Vec<u8>>>, StoreError> {
        batch
            .entries()
            .filter_map(|entry| match entry {
                Entry::DeletePrefix { bucket, prefix } => Some(self.backend.scan_prefix(bucket, prefix)),
                Entry::Op(_) => None,
            })
            .map(|found| Ok(found?.into_iter().map(|(key, _)| key).collect()))
            .collect()
    }

    fn apply(&mut self, ops: &[Op<'_>], batches: u64) -> Verdict {
        let durable = self.sync == SyncMode::Group;
        let started = Instant::now();
        self.backend.apply(&coalesce(ops), durable)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.batches.fetch_add(batches, Ordering::Relaxed);
        self.counters.operations.fetch_add(ops.len() as u64, Ordering::Relaxed);
        if durable {
            self.count_fsync(started);
        } else if self.unsynced_since.is_none() {
            self.unsynced_since = Some(started);
        }
        Ok(())
    }
}

/// Appends the operations of `batch` to `ops`, each prefix delete made into a delete of each
/// key it covers: those in the store (`stored`, one list per prefix delete) and those put
/// earlier in `ops`.
fn expand<'a>(batch: &'a Batch, stored: &'a [Vec<Vec<u8>>], ops: &mut Vec<Op<'a>>) {
    let mut stored = stored.iter();
    for entry in batch.entries() {
        match entry {
            Entry::Op(op) => ops.push(op),
            Entry::DeletePrefix { bucket, prefix } => {
                let mut keys: BTreeSet<&[u8]> = stored.next().into_iter().flatten().map(Vec::as_slice).collect();
                keys.extend(
                    ops.iter()
                        .filter(|op| op.bucket == bucket && op.value.is_some() && op.key.starts_with(prefix))
                        .map(|op| op.key),
                );
                ops.extend(keys.into_iter().map(|key| Op { bucket, key, value: None }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op<'a>(key: &'a str, value: Option<&'a str>) -> Op<'a> {
        Op { bucket: "b", key: key.as_bytes(), value: value.map(str::as_bytes) }
    }

    #[test]
    fn only_the_last_operation_on_a_key_is_applied() {
        let ops = [op("a", Some("1")), op("b", Some("1")), op("a", None), op("c", Some("1")), op("b", Some("2"))];
        assert_eq!(&*coalesce(&ops), [op("a", None), op("c", Some("1")), op("b", Some("2"))]);
        let distinct = [op("a", Some("1")), op("b", None)];
        assert!(matches!(coalesce(&distinct), std::borrow::Cow::Borrowed(_)));
    }
}
