//! Plugin state shared by every node: the store buckets of the plugins named in
//! `[cluster] shared_state` (by default `emqx_retainer`, `emqx_auth_mnesia` and
//! `emqx_mod_delayed`) and every `shared/...` bucket are the same on every node, so a retained
//! message published on one node is served by another, and a login added on one node is
//! accepted by all.
//!
//! - **One order for every node**: a JetStream KV bucket (`<prefix>_state`, one value a
//!   key) holds the latest value of every shared key. A plugin's commit on a shared bucket is
//!   written there first (the plugin's call returns once NATS holds it), then to the local
//!   store; every node follows the bucket's stream and applies what the others wrote to its
//!   own store, where the plugins' watches see it. A node that starts (or comes back) reads
//!   the bucket from its start, so it receives everything it missed.
//! - **No echo**: a node remembers the stream number of each of its writes not yet seen back;
//!   a change of that key numbered before it is older than what this node already has, and
//!   is not applied (the local store never steps back to an older value).
//! - **Reads after writes**: a SUBSCRIBE that fires `session.subscribed` first waits until
//!   this node has applied everything the stream held when it asked ([`Cluster::shared_state_caught_up`]),
//!   so a retained message whose PUBLISH was acknowledged on another node is delivered.
//! - **Compare and set** ([`Cluster::swap_shared`]): the bucket entry's revision is the
//!   condition of the write, so of nodes racing for one key exactly one wins; it needs NATS.
//! - **NATS away**: a commit is made locally only, logged, and the keys it changed are sent
//!   (with the value this node gave them) once NATS answers, unless another node changed the
//!   key later meanwhile: the later change wins, by the time each was made (this node's clock
//!   for its own, the NATS server's for the bucket's), whichever reached NATS first. The send
//!   is conditional on the revision read, so a change made between the look and the send is
//!   looked at again.
//!
//! Keys in the bucket are `<store bucket>.<key>`, both in URL-safe base64 (any bytes, any store
//! bucket name, fit NATS's key alphabet); values are a version byte, an operation byte (put or
//! delete) and the value. A delete is a value of its own (a tombstone), so that it is ordered
//! with the puts of its key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64;
use base64::Engine;
use futures_util::StreamExt;
use store::{Batch, StoreError};
use tokio::sync::{mpsc, oneshot, watch};

use super::Cluster;
use crate::log_limit::Throttle;

const VERSION: u8 = 1;
/// The version of a value that carries its store key (that of a hashed bucket key).
const VERSION_KEYED: u8 = 2;
const PUT: u8 = 0;
const DELETE: u8 = 1;

/// How long a shared commit waits for NATS before it is made locally only.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a SUBSCRIBE waits for this node to catch up with the shared state.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// How many changes from other nodes go to the local store in one commit at most.
const APPLY_BATCH: usize = 512;

/// One change of a shared key: its store bucket, its key, its new value (`None`: deleted).
pub(crate) type SharedOp = (String, Vec<u8>, Option<Vec<u8>>);

/// This node's side of the shared state.
pub(crate) struct SharedState {
    store: store::Store,
    /// Store buckets shared: `plugin/<name>/` for each plugin named, and `shared/`.
    prefixes: Vec<String>,
    kv: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// This node's writes not yet seen back, by bucket key: their stream numbers.
    own: Mutex<Own>,
    /// The last stream number applied here (or skipped as older than this node's own).
    applied: watch::Sender<u64>,
    local_only: Throttle<()>,
    /// Keys changed here while NATS was away, with when and the value given: sent once it is
    /// back, unless changed later elsewhere.
    unsent: Mutex<HashMap<(String, Vec<u8>), Unsent>>,
    /// Waits for this node to catch up ([`Cluster::shared_state_caught_up`]), and the task's
    /// end of them until it starts.
    catch_ups: mpsc::UnboundedSender<oneshot::Sender<()>>,
    catch_ups_rx: Mutex<Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>>,
}

/// A change made here while NATS was away: when (ms since the Unix epoch) and the value
/// (`None`: deleted).
#[derive(Debug, Clone)]
struct Unsent {
    at_ms: u64,
    value: Option<Vec<u8>>,
}

#[derive(Default)]
struct Own {
    latest: HashMap<String, u64>,
}

impl SharedState {
    pub(crate) fn new(store: store::Store, plugins: &[String]) -> SharedState {
        let mut prefixes: Vec<String> = plugins.iter().map(|p| format!("plugin/{p}/")).collect();
        prefixes.push("shared/".to_owned());
        let (catch_ups, catch_ups_rx) = mpsc::unbounded_channel();
        SharedState {
            store,
            prefixes,
            kv: tokio::sync::OnceCell::new(),
            own: Mutex::new(Own::default()),
            applied: watch::Sender::new(0),
            local_only: Throttle::new(Duration::from_secs(60)),
            unsent: Mutex::default(),
            catch_ups,
            catch_ups_rx: Mutex::new(Some(catch_ups_rx)),
        }
    }

    /// Commits `batch`, this node's writes the shared bucket numbered `numbers`, to the local
    /// store, and remembers the numbers until the follower sees them come back; unless it
    /// already followed past them all (it applied these writes, and any later ones of the same
    /// keys). Called with `own` locked, so the follower cannot apply the keys meanwhile.
    fn commit_written(&self, own: &mut Own, numbers: Vec<(String, u64)>, batch: Batch) -> Result<(), StoreError> {
        if numbers.iter().all(|(_, n)| *n <= *self.applied.borrow()) {
            return Ok(());
        }
        own.latest.extend(numbers);
        self.store.commit(batch)
    }

    /// Whether `bucket` (a store bucket name) is shared with the other nodes.
    pub(crate) fn shares(&self, bucket: &str) -> bool {
        self.prefixes.iter().any(|p| bucket.starts_with(p.as_str()))
    }
}

/// The longest bucket key written as it is; a longer one is hashed (NATS refuses a
/// protocol line over 4 KiB, and a retained message's topic may be 64 KiB).
const KV_KEY_MAX: usize = 1024;

/// The bucket's key for `key` of store bucket `bucket`: both in URL-safe base64 (an empty key
/// is `_`, which no base64 text is), or, when that is over [`KV_KEY_MAX`], the bucket and `=`
/// and the SHA-256 of the key in hex (no base64 text starts with `=`); then the value carries
/// the key ([`encode_value`]). `true` when hashed.
fn kv_key(bucket: &str, key: &[u8]) -> (String, bool) {
    let bucket = BASE64.encode(bucket);
    let plain = if key.is_empty() { "_".to_owned() } else { BASE64.encode(key) };
    if bucket.len() + 1 + plain.len() <= KV_KEY_MAX {
        return (format!("{bucket}.{plain}"), false);
    }
    use sha2::Digest as _;
    let digest: String = sha2::Sha256::digest(key).iter().map(|b| format!("{b:02x}")).collect();
    (format!("{bucket}.={digest}"), true)
}

/// The store bucket and key of a bucket key; the key is `None` for a hashed one (it is in the
/// value).
fn parse_kv_key(kv_key: &str) -> Option<(String, Option<Vec<u8>>)> {
    let (bucket, key) = kv_key.split_once('.')?;
    let key = match key {
        "_" => Some(Vec::new()),
        hashed if hashed.starts_with('=') => None,
        key => Some(BASE64.decode(key).ok()?),
    };
    Some((String::from_utf8(BASE64.decode(bucket).ok()?).ok()?, key))
}

/// A bucket value: a version byte, an operation byte (put or delete), then (version 2, for a
/// hashed bucket key) the store key's length (4 bytes, big-endian) and the key, then the
/// value of a put.
fn encode_value(hashed_key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
    let key_len = hashed_key.map_or(0, |k| 4 + k.len());
    let mut out = Vec::with_capacity(2 + key_len + value.map_or(0, <[u8]>::len));
    out.push(if hashed_key.is_some() { VERSION_KEYED } else { VERSION });
    out.push(if value.is_some() { PUT } else { DELETE });
    if let Some(key) = hashed_key {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
    }
    if let Some(value) = value {
        out.extend_from_slice(value);
    }
    out
}

/// A bucket value read: the store key it carries (version 2) and the value (`None`:
/// deleted); `None` if it cannot be read.
type Decoded<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

fn decode_value(bytes: &[u8]) -> Option<Decoded<'_>> {
    fn op(op: u8, rest: &[u8]) -> Option<Option<&[u8]>> {
        match (op, rest) {
            (PUT, value) => Some(Some(value)),
            (DELETE, []) => Some(None),
            _ => None,
        }
    }
    match bytes {
        [VERSION, o, rest @ ..] => Some((None, op(*o, rest)?)),
        [VERSION_KEYED, o, a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            let (key, rest) = (rest.get(..len)?, rest.get(len..)?);
            Some((Some(key), op(*o, rest)?))
        }
        _ => None,
    }
}

impl Cluster {
    /// Shares the state of the plugins named `plugins` (and every `shared/` bucket) in `store`
    /// with the other nodes, and starts following theirs.
    pub(crate) fn share_state(self: &Arc<Cluster>, store: store::Store, plugins: &[String]) {
        if self.shared_state.set(SharedState::new(store, plugins)).is_ok() {
            tokio::spawn(self.clone().follow_shared_state());
            tokio::spawn(self.clone().send_unsent());
            if let Some(waits) = self.shared_state.get().and_then(|s| crate::lock(&s.catch_ups_rx).take()) {
                tokio::spawn(self.clone().serve_catch_ups(waits));
            }
        }
    }

    /// Whether this node shares plugin state with the others.
    pub(crate) fn shares_state(&self) -> bool {
        self.shared_state.get().is_some()
    }

    /// The shared state, if `bucket` is part of it.
    pub(crate) fn shared_bucket(&self, bucket: &str) -> Option<&SharedState> {
        self.shared_state.get().filter(|state| state.shares(bucket))
    }

    async fn state_bucket(&self) -> Result<&async_nats::jetstream::kv::Store, String> {
        let state = self.shared_state.get().ok_or("no shared state")?;
        let name = super::subject::kv_bucket(&self.config.subject_prefix, "state");
        state.kv.get_or_try_init(|| self.open_bucket(name, "plugins' state shared by every broker node")).await
    }

    /// Commits `batch`, whose changes are `ops` on shared buckets: into the shared bucket
    /// first, then into the local store. Blocks (call it off the network threads). While NATS
    /// is away (or does not answer within 2 s) the batch is committed locally only, logged.
    pub(crate) fn commit_shared(self: &Arc<Cluster>, ops: Vec<SharedOp>, batch: Batch) -> Result<(), StoreError> {
        let state = self.shared_state.get().expect("commit_shared on a shared bucket");
        let keys: Vec<(String, Vec<u8>)> = ops.iter().map(|(bucket, key, _)| (bucket.clone(), key.clone())).collect();
        let ops = Arc::new(ops);
        let written = if self.reachable() {
            let ops = ops.clone();
            self.ask_bucket(|cluster| async move { cluster.write_shared(&ops).await })
        } else {
            Err("NATS is not reachable".to_owned())
        };
        let mut own = crate::lock(&state.own);
        match written {
            Ok(numbers) => state.commit_written(&mut own, numbers, batch),
            Err(why) => {
                if state.local_only.check((), Instant::now()).is_some() {
                    tracing::warn!(
                        "cluster: plugin state changed on this node only, sent to the others once NATS answers: {why}"
                    );
                }
                let at_ms = crate::now_ms();
                let mut unsent = crate::lock(&state.unsent);
                for (key, (_, _, value)) in keys.into_iter().zip(ops.iter()) {
                    unsent.insert(key, Unsent { at_ms, value: value.clone() });
                }
                drop(unsent);
                state.store.commit(batch)
            }
        }
    }

    /// Compare and set on one shared key ([`store::Store::swap`] for a cluster): the shared
    /// bucket decides (its entry's revision is the condition of the write), so of nodes racing
    /// from one value exactly one wins; the winner's change then goes to its local store, the
    /// others' through the follower as any change. Blocks (call it off the network threads).
    /// While NATS is away, or when it does not answer within 2 s, nothing is changed and the
    /// answer is [`StoreError::Unavailable`]: a node alone cannot tell what the others did.
    pub(crate) fn swap_shared(
        self: &Arc<Cluster>,
        bucket: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let state = self.shared_state.get().expect("swap_shared on a shared bucket");
        if !self.reachable() {
            return Err(StoreError::Unavailable("NATS is not reachable to decide a shared key's change".to_owned()));
        }
        let mut batch = Batch::new();
        match new {
            Some(value) => batch.put(bucket, key, value)?,
            None => batch.delete(bucket, key)?,
        };
        let (owned_bucket, owned_key) = (bucket.to_owned(), key.to_vec());
        let (expected, new) = (expected.map(<[u8]>::to_vec), new.map(<[u8]>::to_vec));
        let swapped = self.ask_bucket(|cluster| async move {
            cluster.swap_in_bucket(&owned_bucket, &owned_key, expected.as_deref(), new.as_deref()).await
        });
        let mut own = crate::lock(&state.own);
        match swapped {
            Ok(None) => Ok(false),
            Ok(Some(written)) => state.commit_written(&mut own, vec![written], batch).map(|()| true),
            Err(why) => Err(StoreError::Unavailable(why)),
        }
    }

    /// Runs `work` (a write to the shared bucket) on the cluster's runtime and waits for it,
    /// at most [`WRITE_TIMEOUT`]. Blocks.
    fn ask_bucket<T, F>(self: &Arc<Cluster>, work: impl FnOnce(Arc<Cluster>) -> F + Send + 'static) -> Result<T, String>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, String>> + Send + 'static,
    {
        self.block_on(|cluster| async move {
            let answered = tokio::time::timeout(WRITE_TIMEOUT, work(cluster)).await;
            answered.unwrap_or_else(|_| Err(format!("no answer within {WRITE_TIMEOUT:?}")))
        })
        .unwrap_or_else(|why| Err(why.to_owned()))
    }

    /// Writes `new` under the bucket key of `key` if its value there is `expected`: the bucket
    /// key and its stream number, or `None` if the value was another.
    async fn swap_in_bucket(
        &self,
        bucket: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Option<(String, u64)>, String> {
        let kv = self.state_bucket().await?;
        let (kv_key, hashed) = kv_key(bucket, key);
        let entry = kv.entry(kv_key.as_str()).await.map_err(|e| e.to_string())?;
        let revision = entry.as_ref().map_or(0, |entry| entry.revision);
        let current = match &entry {
            None => None,
            Some(entry) => match decode_value(&entry.value) {
                Some((_, value)) => value,
                None => return Err(format!("a shared plugin state entry this node cannot read ({kv_key})")),
            },
        };
        if current != expected {
            return Ok(None);
        }
        let value = encode_value(hashed.then_some(key), new);
        match kv.update(kv_key.as_str(), value.into(), revision).await {
            Ok(n) => Ok(Some((kv_key, n))),
            // Written by another node since it was read (NATS checked the revision)?
            Err(e) => match kv.entry(kv_key.as_str()).await {
                Ok(now) if now.as_ref().map_or(0, |entry| entry.revision) != revision => Ok(None),
                _ => Err(e.to_string()),
            },
        }
    }

    /// Sends, once NATS is reachable, the changes made here while it was not: each with the
    /// value this node gave it, unless the bucket's entry for its key was written later (by the
    /// NATS server's clock) than the change was made here (this node's), which then stands
    /// (and reaches the local store through the follower). Sent on the condition of the
    /// revision looked at; their echo is applied here, putting this node's value back over
    /// an older change of another node's that the follower may have applied meanwhile.
    async fn send_unsent(self: Arc<Cluster>) {
        let Some(state) = self.shared_state.get() else { return };
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !self.reachable() {
                continue;
            }
            let changes: Vec<_> = crate::lock(&state.unsent).drain().collect();
            if changes.is_empty() {
                continue;
            }
            let (mut sent, mut later) = (0, 0);
            let mut again = Vec::new();
            for ((bucket, key), change) in changes {
                let outcome = tokio::time::timeout(WRITE_TIMEOUT, self.send_if_latest(&bucket, &key, &change)).await;
                match outcome {
                    Ok(Ok(true)) => sent += 1,
                    Ok(Ok(false)) => later += 1,
                    _ => again.push(((bucket, key), change)),
                }
            }
            if sent + later > 0 {
                tracing::info!(
                    "cluster: {sent} plugin state changes made while NATS was away sent; {later} changed later on \
                     another node kept as that node left them"
                );
            }
            let mut unsent = crate::lock(&state.unsent);
            for (key, change) in again {
                // A change made here since is newer: it stays.
                unsent.entry(key).or_insert(change);
            }
        }
    }

    /// Writes `change` of `key` in store bucket `bucket` to the shared bucket unless its entry
    /// there was written after the change was made: true if written, false if the entry is
    /// later. Conditional on the entry's revision; read again when it moved meanwhile.
    async fn send_if_latest(&self, bucket: &str, key: &[u8], change: &Unsent) -> Result<bool, String> {
        let kv = self.state_bucket().await?;
        let (kv_key, hashed) = kv_key(bucket, key);
        let value = encode_value(hashed.then_some(key), change.value.as_deref());
        loop {
            let entry = kv.entry(kv_key.as_str()).await.map_err(|e| e.to_string())?;
            let written = match &entry {
                Some(entry) => {
                    let entry_ms = u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                    if entry_ms > change.at_ms {
                        return Ok(false);
                    }
                    kv.update(&kv_key, value.clone().into(), entry.revision).await.map(drop).map_err(|e| e.to_string())
                }
                None => kv.create(&kv_key, value.clone().into()).await.map(drop).map_err(|e| e.to_string()),
            };
            match written {
                Ok(()) => return Ok(true),
                // Written by another node since it was read: looked at again.
                Err(_)
                    if kv.entry(kv_key.as_str()).await.ok().flatten().map(|e| e.revision)
                        != entry.as_ref().map(|e| e.revision) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Puts `ops` into the shared bucket; their bucket keys and stream numbers.
    async fn write_shared(&self, ops: &[SharedOp]) -> Result<Vec<(String, u64)>, String> {
        let kv = self.state_bucket().await?;
        let mut numbers = Vec::with_capacity(ops.len());
        for (bucket, key, value) in ops {
            let (kv_key, hashed) = kv_key(bucket, key);
            let value = encode_value(hashed.then_some(&key[..]), value.as_deref());
            let n = kv.put(&kv_key, value.into()).await.map_err(|e| e.to_string())?;
            numbers.push((kv_key, n));
        }
        Ok(numbers)
    }

    /// Resolves once this node has applied every shared change NATS held when it was called
    /// (at once when nothing is shared or NATS is away; after 2 s at most).
    pub(crate) fn shared_state_caught_up(
        self: &Arc<Cluster>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let state = self.shared_state.get()?;
        if !self.reachable() {
            return None;
        }
        let (done, caught_up) = tokio::sync::oneshot::channel();
        state.catch_ups.send(done).ok()?;
        Some(async move {
            let _ = tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up).await;
        })
    }

    /// Answers the waits of [`Cluster::shared_state_caught_up`] in rounds: all those that
    /// arrived before a round share its one question to NATS (where the stream stands), and
    /// are released once this node has applied that far; those arriving meanwhile wait for the
    /// next round, whose question is asked after they came.
    async fn serve_catch_ups(self: Arc<Cluster>, mut waits: mpsc::UnboundedReceiver<oneshot::Sender<()>>) {
        let Some(state) = self.shared_state.get() else { return };
        while let Some(first) = waits.recv().await {
            let mut round = vec![first];
            while let Ok(next) = waits.try_recv() {
                round.push(next);
            }
            let mut applied = state.applied.subscribe();
            let _ = tokio::time::timeout(CATCH_UP_TIMEOUT, async {
                let Ok(kv) = self.state_bucket().await else { return };
                let Ok(stream) = self.jetstream.get_stream(&kv.stream_name).await else { return };
                let last = stream.cached_info().state.last_sequence;
                let _ = applied.wait_for(|&n| n >= last).await;
            })
            .await;
            for waiting in round {
                let _ = waiting.send(());
            }
        }
    }

    /// Follows the shared bucket's stream from its start, handing each change to the thread
    /// that applies them; starts again after the last one applied when NATS was lost.
    async fn follow_shared_state(self: Arc<Cluster>) {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        let (changes, arrived) = std::sync::mpsc::channel();
        let cluster = self.clone();
        let applier = std::thread::Builder::new()
            .name("cluster-state".to_owned())
            .spawn(move || apply_shared_changes(&cluster, arrived));
        if let Err(e) = applier {
            tracing::error!("cluster: cannot start the thread that applies shared plugin state: {e}");
            return;
        }
        let mut next = 1;
        loop {
            let followed = async {
                let kv = self.state_bucket().await?;
                let config = OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: next },
                    ..Default::default()
                };
                let consumer = kv.stream.create_consumer(config).await.map_err(|e| e.to_string())?;
                let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
                while let Some(message) = messages.next().await {
                    let message = message.map_err(|e| e.to_string())?;
                    let n = message.info().map_err(|e| e.to_string())?.stream_sequence;
                    let key = message.subject.as_str().splitn(3, '.').nth(2).unwrap_or("").to_owned();
                    if changes.send((n, key, message.payload.clone())).is_err() {
                        return Ok(());
                    }
                    next = n + 1;
                }
                Ok::<(), String>(())
            };
            if let Err(why) = followed.await {
                tracing::debug!("cluster: following the shared plugin state: {why}; again in 1 s");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Applies the other nodes' changes to the local store, a batch at a time, in stream order.
fn apply_shared_changes(cluster: &Cluster, arrived: std::sync::mpsc::Receiver<(u64, String, bytes::Bytes)>) {
    let Some(state) = cluster.shared_state.get() else { return };
    while let Ok(first) = arrived.recv() {
        let mut changes = vec![first];
        changes.extend(arrived.try_iter().take(APPLY_BATCH - 1));
        let last = changes.last().map_or(0, |(n, _, _)| *n);
        let mut own = crate::lock(&state.own);
        let mut batch = Batch::new();
        for (n, key, value) in &changes {
            match own.latest.get(key) {
                // This node wrote the key later: what it has is newer.
                Some(&mine) if *n < mine => continue,
                // Its own write, seen back.
                Some(&mine) if *n == mine => {
                    own.latest.remove(key);
                    continue;
                }
                Some(_) => {
                    own.latest.remove(key);
                }
                None => {}
            }
            let read = parse_kv_key(key).zip(decode_value(value));
            let Some(((bucket, store_key), value)) = read.and_then(|((bucket, plain), (carried, value))| {
                let store_key = plain.or_else(|| carried.map(<[u8]>::to_vec))?;
                Some(((bucket, store_key), value))
            }) else {
                tracing::warn!("cluster: a shared plugin state entry this node cannot read ({key}): skipped");
                continue;
            };
            let added = match value {
                Some(value) => batch.put(&bucket, &store_key, value).map(|_| ()),
                None => batch.delete(&bucket, &store_key).map(|_| ()),
            };
            if let Err(e) = added {
                tracing::warn!("cluster: a shared plugin state entry not applied ({bucket}): {e}");
            }
        }
        if !batch.is_empty() {
            if let Err(e) = state.store.commit(batch) {
                tracing::error!("cluster: shared plugin state not applied to the local store: {e}");
            }
        }
        state.applied.send_replace(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_any_bytes_make_valid_bucket_keys_and_come_back() {
        for (bucket, key) in
            [("plugin/emqx_retainer/retained", &b"a/b c.d*>"[..]), ("shared/x", b""), ("p", b"\xff\x00")]
        {
            let (k, hashed) = kv_key(bucket, key);
            assert!(!hashed);
            assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{k}");
            assert_eq!(parse_kv_key(&k), Some((bucket.to_owned(), Some(key.to_vec()))));
        }
        assert_eq!(parse_kv_key("!!.AA"), None);
        // A long key (a 64 KiB topic) is hashed; the value carries it.
        let long = "t/".repeat(32_000);
        let (k, hashed) = kv_key("plugin/emqx_retainer/retained", long.as_bytes());
        assert!(hashed && k.len() < KV_KEY_MAX, "{}", k.len());
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-=".contains(&b)), "{k}");
        assert_eq!(parse_kv_key(&k), Some(("plugin/emqx_retainer/retained".to_owned(), None)));
        assert_ne!(k, kv_key("plugin/emqx_retainer/retained", format!("{long}x").as_bytes()).0);
        let value = encode_value(Some(long.as_bytes()), Some(b"v"));
        assert_eq!(decode_value(&value), Some((Some(long.as_bytes()), Some(&b"v"[..]))));
        let deleted = encode_value(Some(long.as_bytes()), None);
        assert_eq!(decode_value(&deleted), Some((Some(long.as_bytes()), None)));
        assert_eq!(decode_value(&deleted[..deleted.len() - 1]), None, "a key cut short");
    }

    #[test]
    fn values_say_put_or_delete() {
        assert_eq!(decode_value(&encode_value(None, Some(b"v"))), Some((None, Some(&b"v"[..]))));
        assert_eq!(decode_value(&encode_value(None, Some(b""))), Some((None, Some(&b""[..]))));
        assert_eq!(decode_value(&encode_value(None, None)), Some((None, None)));
        assert_eq!(decode_value(b"\x09\x00"), None);
    }

    #[test]
    fn only_the_named_plugins_and_shared_buckets_are_shared() {
        let state = SharedState::new(store::Store::in_memory(), &["emqx_retainer".to_owned()]);
        assert!(state.shares("plugin/emqx_retainer/retained"));
        assert!(state.shares("shared/logins"));
        assert!(!state.shares("plugin/emqx_telemetry/uuid"));
        assert!(!state.shares("sessions"));
    }
}
