//! `emqx_mod_delayed`: delayed publish, as EMQX 4.x's module. A message published to
//! `$delayed/<seconds>/<topic>` is held and published to `<topic>` after `<seconds>` (at most
//! 4294967, EMQX's limit), with its QoS, payload and retain flag. A topic that does not parse
//! (`$delayed/soon/x`) is left alone, as EMQX leaves it.
//!
//! Held messages are kept in the broker's store, one key per message in the module's bucket
//! `delayed` (the key is the due time then a sequence number, big-endian, so keys sort by due
//! time; the sequence starts at a random number each start, so nodes sharing the bucket never
//! write one key): the key is written before the `message.publish` hook returns, so a
//! `$delayed/` message whose PUBLISH was acknowledged survives an unload, a reload, a restart
//! and a `kill -9`; concurrent publishes share one group commit. One that fell due while the
//! module was not running is published as soon as it runs again. At the first start a
//! `data/emqx_mod_delayed.json` left by an older version is imported and renamed
//! `emqx_mod_delayed.json.imported` (a damaged one is left in place, with a warning).
//!
//! **Published once, by one node.** When a message falls due, the module first *claims* it: a
//! compare-and-set of its key ([`plugin_api::store::Bucket::swap`]) from the value it holds to
//! the same value marked with this run's id and the time (up to 16 claims at once, for at most
//! 1024 due messages a round). Only the run whose claim succeeds publishes it (the winners of
//! a round in the order they fell due), then deletes its key. In a cluster, with the bucket shared
//! (`[cluster] shared_state`, which names this module by default), every node holds every
//! node's messages (a second thread follows the bucket's changes) and NATS decides each claim,
//! so each message is published by exactly one node, and a node that dies with messages held
//! leaves them to the others. A claim older than 30 s (its claimer died between its claim and
//! its delete) may be claimed again: at least once, as a crash between the publish and the
//! delete on one node. While NATS is away no claim can be decided: messages falling due wait
//! until it is back (logged once a minute).
//!
//! Config (`[delayed]`): `max_delayed_messages` (EMQX's name), the most messages held at
//! once (in a cluster, by all nodes together); 0 (the default, as in EMQX) for no limit. A
//! `$delayed/` message over it is dropped, counted and logged (one line a minute, with the
//! count).
//!
//! `broker ctl delayed list` prints one line per held message (`topic`, `qos`, `retain`,
//! seconds left); `broker ctl delayed clean` drops them all; `broker ctl delayed stats` prints
//! how many are held, the limit, and how many were dropped over it.
#![forbid(unsafe_code)]

mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use plugin_api::store::{Bucket, StoreBatch, StoreWatch};
use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, HostError, Plugin, PluginInfo,
    PluginKind, QoS,
};
use store::{Claim, Delayed, Entry, Held};

/// EMQX's longest delay, in seconds.
const MAX_DELAY_SECS: u64 = 4_294_967;

/// How often a message dropped over `max_delayed_messages` is logged (with the count since),
/// and a claim the store could not decide.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How long a message whose claim the store could not decide waits before it is tried again.
const RETRY_MS: u64 = 1_000;
/// How long a message whose claim lost waits before it is looked at again (unless the
/// change that won reaches this node first).
const CONFLICT_RETRY_MS: u64 = 100;
/// At most this many due messages are claimed, then published, in one round (a backlog goes
/// out round after round, not claimed whole before the first is published).
const ROUND: usize = 1024;
/// At most this many claims are made at once (each on a thread of its own, for one round of
/// due messages).
const CLAIMERS: usize = 16;
/// How long the thread that follows the bucket waits for a change before it looks at `stopping`.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// The `[delayed]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Most messages held at once; 0 for no limit.
    max_delayed_messages: usize,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `$delayed/<seconds>/<topic>` → (seconds, topic).
fn parse(topic: &str) -> Option<(u64, &str)> {
    let rest = topic.strip_prefix("$delayed/")?;
    let (seconds, topic) = rest.split_once('/')?;
    let seconds: u64 = seconds.parse().ok()?;
    (seconds <= MAX_DELAY_SECS && !topic.is_empty()).then_some((seconds, topic))
}

/// What the module and its publishing thread share.
struct Shared {
    host: Host,
    bucket: Bucket,
    held: Mutex<Held>,
    changed: Condvar,
    /// The sequence number of the next key.
    next_seq: AtomicU64,
    /// This run's id, in its claims.
    run_id: u64,
    /// When a claim the store could not decide was last logged.
    unclaimed_logged: Mutex<Option<Instant>>,
    /// Messages dropped over `max_delayed_messages`, ever, and when that was last logged
    /// (with the count then).
    dropped: AtomicU64,
    drop_logged: Mutex<Option<(Instant, u64)>>,
}

impl Shared {
    /// Publishes what is due (each message it can claim) and deletes it from the store, then
    /// waits until the next is due or the held messages change.
    fn run(&self) {
        let mut held = lock(&self.held);
        loop {
            if held.stopping {
                return;
            }
            let now = now_ms();
            let due = held.due(now, ROUND);
            if !due.is_empty() {
                drop(held);
                let mut published = StoreBatch::new();
                let claimed = self.claim_all(&due, now);
                for ((key, entry), _) in due.iter().zip(claimed).filter(|(_, won)| *won) {
                    let message = &entry.message;
                    let qos = QoS::from_u8(message.qos);
                    if let Err(e) = self.host.publish(&message.topic, &message.payload, qos, message.retain) {
                        self.host.warn(&format!("delayed publish to {} failed: {e}", message.topic));
                    }
                    published.delete(key);
                }
                if let Err(e) = self.bucket.commit(&published) {
                    self.host.warn(&format!(
                        "{} published delayed messages not deleted from the store: {e}; they are published again \
                         once their claim times out",
                        published.len()
                    ));
                }
                held = lock(&self.held);
                continue;
            }
            let wait = held
                .next_ready(now)
                .map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(now_ms())));
            held = self.changed.wait_timeout(held, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Claims each of `due` (see [`Shared::claim`]), up to [`CLAIMERS`] at a time: in a
    /// cluster each claim is a round trip to NATS, and on one node claims made together share
    /// an fsync. Whether each was won, in `due`'s order (the winners are then published in it).
    fn claim_all(&self, due: &[(store::Key, Entry)], now: u64) -> Vec<bool> {
        let claim_part = |part: &[(store::Key, Entry)]| -> Vec<bool> {
            part.iter().map(|(key, entry)| self.claim(key, entry, now)).collect()
        };
        if due.len() < 2 {
            return claim_part(due);
        }
        let part_len = due.len().div_ceil(CLAIMERS);
        std::thread::scope(|scope| {
            let parts: Vec<_> = due
                .chunks(part_len)
                .map(|part| (part, std::thread::Builder::new().spawn_scoped(scope, move || claim_part(part))))
                .collect();
            parts
                .into_iter()
                .flat_map(|(part, claimer)| match claimer {
                    Ok(claimer) => claimer.join().unwrap_or_else(|_| vec![false; part.len()]),
                    // No thread to be had: this one claims them.
                    Err(_) => claim_part(part),
                })
                .collect()
        })
    }

    /// Claims the message under `key` (as `entry` says it is stored) for this run: whether it
    /// is this run's to publish. It is then out of the held list. If another node (or run)
    /// claimed or published it first, the list takes what the store holds now; if the store
    /// cannot decide (NATS away), it is tried again later.
    fn claim(&self, key: &store::Key, entry: &Entry, now: u64) -> bool {
        let mine = store::encode_value(&entry.message, Some(Claim { by: self.run_id, at_ms: now }));
        match self.bucket.swap(key, Some(&entry.stored_value()), Some(&mine)) {
            Ok(true) => {
                lock(&self.held).remove(key);
                true
            }
            Ok(false) => {
                let now_stored = self.bucket.get(key);
                let mut held = lock(&self.held);
                match now_stored.map(|value| value.map(|value| store::decode(key, &value))) {
                    // This run's own claim (a stale copy of the message was held): it is being
                    // or was published.
                    Ok(Some(Ok((_, _, Some(claim))))) if claim.by == self.run_id => drop(held.remove(key)),
                    // Tried again a little later, if not changed meanwhile: in a cluster the
                    // local store may not have the change that won yet (the follower brings it).
                    Ok(Some(Ok((_, message, claim)))) => {
                        held.add(*key, Entry { message, claim, retry_at_ms: now + CONFLICT_RETRY_MS })
                    }
                    Ok(None) => drop(held.remove(key)),
                    Ok(Some(Err(e))) => {
                        held.remove(key);
                        drop(held);
                        self.host.warn(&format!("a delayed message in the store not loaded: {e}"));
                    }
                    Err(e) => {
                        drop(held);
                        self.claim_undecided(key, now, &e);
                    }
                }
                false
            }
            // A host older than the swap: alone, as before it.
            Err(HostError::Unsupported(_)) => {
                lock(&self.held).remove(key);
                true
            }
            Err(e) => {
                self.claim_undecided(key, now, &e);
                false
            }
        }
    }

    /// The claim of the message under `key` could not be decided (`e`): it is tried again in
    /// [`RETRY_MS`], and that is logged (at most once a minute).
    fn claim_undecided(&self, key: &store::Key, now: u64, e: &HostError) {
        if let Some(entry) = lock(&self.held).get_mut(key) {
            entry.retry_at_ms = now + RETRY_MS;
        }
        let mut logged = lock(&self.unclaimed_logged);
        if logged.is_some_and(|at| at.elapsed() < DROP_LOG_INTERVAL) {
            return;
        }
        *logged = Some(Instant::now());
        self.host.warn(&format!("delayed messages due but not published yet, tried again each second: {e}"));
    }

    /// Follows the bucket: messages held, claimed and published by other nodes (and this
    /// node's own changes, again) keep the held list what the store holds.
    fn follow(&self, changes: &StoreWatch) {
        loop {
            if lock(&self.held).stopping {
                return;
            }
            let change = match changes.next_timeout(WATCH_POLL) {
                Ok(Some(change)) => change,
                Ok(None) => continue,
                Err(e) => {
                    if !lock(&self.held).stopping {
                        self.host.warn(&format!("no longer following the delayed messages of other nodes: {e}"));
                    }
                    return;
                }
            };
            let Ok(key) = store::Key::try_from(&change.key[..]) else { continue };
            let mut held = lock(&self.held);
            match change.value.map(|value| store::decode(&key, &value)) {
                None => drop(held.remove(&key)),
                // This run's own claim, seen again: the message left the list when it was
                // claimed, and is being published.
                Some(Ok((_, _, Some(claim)))) if claim.by == self.run_id => continue,
                Some(Ok((_, message, claim))) => held.add(key, Entry::new(message, claim)),
                Some(Err(e)) => {
                    drop(held);
                    self.host.warn(&format!("a delayed message in the store not loaded: {e}"));
                    continue;
                }
            }
            self.changed.notify_one();
        }
    }

    /// Holds `message`: writes it to the store (returning once it is durable), then adds it for
    /// the publishing thread. Dropped, counted and logged past `max` (0: no limit).
    fn hold(&self, message: Delayed, max: usize) {
        {
            let mut held = lock(&self.held);
            if max > 0 && held.len() + held.pending >= max {
                drop(held);
                self.dropped_over(max, &message.topic);
                return;
            }
            held.pending += 1;
        }
        let key = store::key(message.due_ms, self.next_seq.fetch_add(1, Ordering::Relaxed));
        let written = self.bucket.put(&key, &store::encode_value(&message, None));
        let mut held = lock(&self.held);
        held.pending -= 1;
        match written {
            Ok(()) => {
                held.add(key, Entry::new(message, None));
                self.changed.notify_one();
            }
            Err(e) => {
                drop(held);
                let topic: String = message.topic.chars().take(256).collect();
                self.host.warn(&format!("delayed message to {topic} not held: the store refused it: {e}"));
            }
        }
    }

    /// Drops every held message (in a cluster, every node's), from the store first; returns how
    /// many were held.
    fn clean(&self) -> Result<usize, String> {
        let keys: Vec<store::Key> = lock(&self.held).iter().map(|(key, _)| *key).collect();
        let mut batch = StoreBatch::new();
        for key in &keys {
            batch.delete(key);
        }
        self.bucket.commit(&batch).map_err(|e| format!("cannot delete the delayed messages from the store: {e}"))?;
        // The follower may have taken them out already (it sees the deletes too).
        let mut held = lock(&self.held);
        keys.iter().for_each(|key| drop(held.remove(key)));
        Ok(keys.len())
    }
}

/// The messages `bucket` holds; an entry this version cannot read is left there, with a warning.
fn load(host: &Host, bucket: &Bucket) -> Result<Held, plugin_api::HostError> {
    let mut held = Held::default();
    for (key, value) in bucket.scan_prefix(b"")? {
        match store::decode(&key, &value) {
            Ok((key, message, claim)) => held.add(key, Entry::new(message, claim)),
            Err(e) => host.warn(&format!("a delayed message in the store not loaded: {e}")),
        }
    }
    Ok(held)
}

/// Imports the old file's messages into `bucket` and `held`, numbering them from `next_seq`.
fn import(bucket: &Bucket, held: &mut Held, next_seq: &mut u64, bytes: &[u8]) -> Result<String, String> {
    let messages = store::parse_file(bytes).map_err(|e| format!("not a delayed messages file: {e}"))?;
    let mut batch = StoreBatch::new();
    let mut keyed = Vec::with_capacity(messages.len());
    for message in messages {
        let key = store::key(message.due_ms, *next_seq);
        *next_seq += 1;
        batch.put(&key, &store::encode_value(&message, None));
        keyed.push((key, message));
    }
    bucket.commit(&batch).map_err(|e| format!("the store refused them: {e}"))?;
    let count = keyed.len();
    for (key, message) in keyed {
        held.add(key, Entry::new(message, None));
    }
    Ok(format!("{count} delayed messages"))
}

impl Shared {
    /// Counts a message dropped over `max`, and logs it (at most a line a minute).
    fn dropped_over(&self, max: usize, topic: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut logged = lock(&self.drop_logged);
        let now = Instant::now();
        let since = match *logged {
            Some((at, _)) if now.duration_since(at) < DROP_LOG_INTERVAL => return,
            Some((_, count)) => dropped - count,
            None => 1,
        };
        *logged = Some((now, dropped));
        let topic: String = topic.chars().take(256).collect();
        self.host.warn(&format!(
            "delayed message to {topic} dropped: max_delayed_messages ({max}) reached ({since} dropped since the last \
             such line, {dropped} in all)"
        ));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A number that differs from one start to the next (and from one node to another): the
/// first sequence number's high half and the run's id.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// The running module.
pub struct DelayedPublish {
    settings: Settings,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Plugin for DelayedPublish {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let bucket = host.store(store::BUCKET);
        // Followed from before it is read, so that no change falls between the two.
        let changes = bucket.watch(b"")?;
        let mut held = load(&host, &bucket)?;
        // Keys of this run start at a random high half: unique across nodes and restarts.
        let mut next_seq = random_u64() & !0xFFFF_FFFF;
        plugin_api::store::import_file(&host, &store::path(host.data_dir()), |bytes| {
            import(&bucket, &mut held, &mut next_seq, bytes)
        });
        host.info(&format!("{} delayed messages held", held.len()));
        let shared = Arc::new(Shared {
            host,
            bucket,
            held: Mutex::new(held),
            changed: Condvar::new(),
            next_seq: AtomicU64::new(next_seq),
            run_id: random_u64(),
            unclaimed_logged: Mutex::new(None),
            dropped: AtomicU64::new(0),
            drop_logged: Mutex::new(None),
        });
        let publisher = std::thread::Builder::new().name("emqx_mod_delayed".into()).spawn({
            let shared = shared.clone();
            move || shared.run()
        })?;
        let follower = std::thread::Builder::new().name("emqx_mod_delayed-follow".into()).spawn({
            let shared = shared.clone();
            move || shared.follow(&changes)
        });
        let follower = match follower {
            Ok(follower) => follower,
            Err(e) => {
                lock(&shared.held).stopping = true;
                shared.changed.notify_one();
                let _ = publisher.join();
                return Err(e.into());
            }
        };
        Ok(DelayedPublish { settings, shared, threads: vec![publisher, follower] })
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        let Some((seconds, topic)) = parse(event.topic) else {
            return HookResult::Continue;
        };
        let message = Delayed {
            due_ms: event.timestamp_ms + seconds * 1000,
            topic: topic.to_owned(),
            payload: event.payload.to_vec(),
            qos: event.qos as u8,
            retain: event.retain,
        };
        self.shared.hold(message, self.settings.max_delayed_messages);
        // Held, not routed now (EMQX stops the original the same way).
        HookResult::Drop
    }

    fn ctl(&self, args: &[String]) -> Result<String, String> {
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["list"] => {
                let now = now_ms();
                Ok(lock(&self.shared.held)
                    .iter()
                    .map(|(_, m)| {
                        format!(
                            "topic={} qos={} retain={} due_in={}s",
                            m.topic,
                            m.qos,
                            m.retain,
                            m.due_ms.saturating_sub(now).div_ceil(1000)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
            ["clean"] => Ok(format!("Cleaned {} delayed messages", self.shared.clean()?)),
            ["stats"] => Ok(format!(
                "held={} max_delayed_messages={} dropped={}",
                lock(&self.shared.held).len(),
                self.settings.max_delayed_messages,
                self.shared.dropped.load(Ordering::Relaxed)
            )),
            _ => Err("usage: broker ctl delayed list | clean | stats".to_owned()),
        }
    }

    fn stop(mut self) {
        lock(&self.shared.held).stopping = true;
        self.shared.changed.notify_one();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

declare_plugin!(
    DelayedPublish,
    PluginInfo {
        name: "emqx_mod_delayed",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Delayed Publish Module",
        kind: PluginKind::Module,
        hooks: HookMask::of(&[Hook::MessagePublish]),
        // Before a retainer or ACL sees the `$delayed/...` original.
        priority: 100,
        ctl_command: Some("delayed"),
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delayed_topics_parse_as_emqx_parses_them() {
        assert_eq!(parse("$delayed/10/a/b"), Some((10, "a/b")));
        assert_eq!(parse("$delayed/0/x"), Some((0, "x")));
        assert_eq!(parse("$delayed/4294967/x"), Some((4_294_967, "x")));
        assert_eq!(parse("$delayed/4294968/x"), None, "over EMQX's limit");
        assert_eq!(parse("$delayed/soon/x"), None);
        assert_eq!(parse("$delayed/10/"), None);
        assert_eq!(parse("a/b"), None);
    }
}
