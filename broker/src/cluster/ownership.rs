//! Which node owns each client id's session: one at a time, cluster-wide, recorded in a
//! JetStream key-value bucket (`<prefix>_sessions`, key: the client id, value: the owning
//! node's name) and changed only by compare-and-set, so two CONNECTs racing on two nodes
//! never leave two owners.
//!
//! A node about to open a session for a client id ([`Cluster::claim`]):
//! - takes the key if nobody holds it (`create`: fails if another node took it first);
//! - keeps it if it holds it already (the node's own registry then takes over locally);
//! - otherwise asks the owning node to give the session up (a NATS request to
//!   `<prefix>.session.<node>`). The owner, serialising with its own CONNECTs for that client
//!   id, first passes the key on ([`Cluster::pass_ownership`]: compare-and-set from its own
//!   revision), then tells its connection to end (DISCONNECT 0x8E Session taken over), and
//!   answers with the session (`crate::session::moved`), or that it discarded it (the
//!   newcomer's clean start, or a session not to outlive its connection), or that it had none.
//!   An owner that no longer owns the key says so, and the newcomer reads it again;
//! - a node that no longer answers (no NATS subscriber on its subject: it is not running) has
//!   its key taken by compare-and-set from the revision read. Its sessions stay on its disk;
//!   the client starts anew here.
//!
//! Once the new node has installed the session and its subscriptions are in place in NATS, it
//! asks the old node for what was queued meanwhile ([`Cluster::release`]); only then does the
//! old node stop routing to it.
//!
//! A session that ends on its owner (its connection closed and it was not to outlive it, it
//! expired, it was kicked) gives its key up ([`Cluster::disown`]): the key is removed whole,
//! leaving no delete marker behind.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{subject, Cluster};

/// How long a node waits for the owner of a session to give it up (it waits up to 5 s for a
/// stuck connection to let go itself).
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(8);

/// How often a claim reads the key again after losing a race for it.
const CLAIM_TRIES: usize = 10;

/// Client ids up to this long are their key (hex); longer ones are hashed.
const KEY_PLAIN_MAX: usize = 96;

/// The key of `client_id`: its bytes in hex (a KV key allows few characters), or `h` and
/// the SHA-256 of a long one.
pub(super) fn key(client_id: &str) -> String {
    let bytes = client_id.as_bytes();
    if bytes.len() <= KEY_PLAIN_MAX {
        let mut key = String::with_capacity(1 + bytes.len() * 2);
        key.push('c');
        for b in bytes {
            key.push_str(&format!("{b:02x}"));
        }
        key
    } else {
        let digest = sha2::Sha256::digest(bytes);
        let mut key = String::with_capacity(1 + 64);
        key.push('h');
        for b in digest {
            key.push_str(&format!("{b:02x}"));
        }
        key
    }
}

/// What a node asks the owner of a session.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Give `client_id`'s session up to node `to`; `clean_start` is the newcomer's.
    Take { client_id: String, clean_start: bool, to: String },
    /// Stop routing to `client_id`'s session (given up before) and send what was queued since.
    Release { client_id: String },
}

/// What the owner of a session answers a [`Request::Take`], as [`super::LocalNode::hand_over`]
/// says it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HandedOver {
    /// This node does not own the client id (any more): read the key again.
    NotOwner,
    /// Ownership passed; this node had no session for the client id.
    Nothing,
    /// Ownership passed; the session was ended (the newcomer's clean start, or it was not to
    /// outlive its connection).
    Discarded,
    /// Ownership passed; the session (`crate::session::moved::MovedSession`, encoded).
    Moved(Vec<u8>),
}

/// What the owner answers a [`Request::Release`]: what was queued for the session since it was
/// given up, if the session was still there.
#[derive(Debug, Serialize, Deserialize)]
struct Released(Option<Vec<u8>>);

/// What a node learned when it claimed a client id ([`Cluster::claim`]).
#[derive(Debug)]
pub(crate) enum Claim {
    /// This node owns it now (it did already, nobody did, or its owner is not running):
    /// the node's own sessions decide.
    Here,
    /// The owner ended its session for it.
    Discarded,
    /// The owner gave the session up: install it, then [`Cluster::release`] from `from`.
    Moved { session: Vec<u8>, from: String },
    /// The owner is not running: its persistent session is made anew here from its record
    /// (`crate::persist::SessionRecord`, encoded), and what was published for it is read
    /// back from the streams from `since_ms` on ([`Cluster::replay`]).
    Revived { record: Vec<u8>, since_ms: u64, from: String },
}

/// The value of a key: the owning node's name.
fn owner_of(entry: &kv::Entry) -> Option<&str> {
    (entry.operation == kv::Operation::Put).then(|| std::str::from_utf8(&entry.value).ok()).flatten()
}

impl Cluster {
    /// The bucket of owners, made (or found) on first use.
    async fn owners(&self) -> Result<&kv::Store, String> {
        let name = subject::kv_bucket(&self.config.subject_prefix, "sessions");
        self.owners
            .get_or_try_init(|| self.open_bucket(name, "which broker node owns each MQTT client id's session"))
            .await
    }

    /// The bucket of persistent sessions' records (subscriptions, expiry, since when offline),
    /// from which a node revives the session of a node that died.
    async fn records(&self) -> Result<&kv::Store, String> {
        let name = subject::kv_bucket(&self.config.subject_prefix, "session_records");
        self.records.get_or_try_init(|| self.open_bucket(name, "MQTT persistent sessions' subscriptions")).await
    }

    /// Makes (or finds) KV bucket `name`. Its stream is made here, as a KV bucket's stream is
    /// (`KV_<bucket>`, one value a key, rollups allowed): the NATS client's own
    /// `create_key_value` asks the server for account details that nats-server 2.9 answers in
    /// a shape the client cannot read.
    pub(super) async fn open_bucket(&self, name: String, description: &str) -> Result<kv::Store, String> {
        use async_nats::jetstream::stream;
        let config = stream::Config {
            name: format!("KV_{name}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        self.jetstream.create_or_update_stream(config).await.map_err(|e| format!("making {name}: {e}"))?;
        self.jetstream.get_key_value(&name).await.map_err(|e| format!("opening {name}: {e}"))
    }

    /// Makes this node the owner of `client_id`'s session before a connection opens it here
    /// (see the module's doc); `clean_start` is the connection's. While NATS is away the
    /// node's own sessions decide (a new persistent session is refused before this).
    pub(crate) async fn claim(&self, client_id: &str, clean_start: bool) -> Result<Claim, String> {
        if !self.reachable() {
            return Ok(Claim::Here);
        }
        let owners = self.owners().await?;
        let key = key(client_id);
        let me = self.config.node_name.as_str();
        // Most client ids are owned by nobody: taking the key is then one round trip.
        let mut try_create = true;
        for _ in 0..CLAIM_TRIES {
            if std::mem::take(&mut try_create) {
                match owners.create(&key, Bytes::copy_from_slice(me.as_bytes())).await {
                    Ok(_) => return Ok(Claim::Here),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("claiming {key}: {e}")),
                }
            }
            let entry = owners.entry(key.clone()).await.map_err(|e| format!("reading {key}: {e}"))?;
            let Some((owner, revision)) = entry.as_ref().and_then(|e| Some((owner_of(e)?.to_owned(), e.revision)))
            else {
                try_create = true;
                continue;
            };
            if owner == me {
                // Written again, so that a give-up of the key still under way for an ended
                // session here (`disown`, by revision) cannot take it from this new one.
                match owners.update(&key, Bytes::copy_from_slice(me.as_bytes()), revision).await {
                    Ok(_) => return Ok(Claim::Here),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(format!("claiming {key}: {e}")),
                }
            }
            let request = Request::Take { client_id: client_id.to_owned(), clean_start, to: me.to_owned() };
            let answer = match self.ask(&owner, &request).await {
                Ok(answer) => answer,
                Err(Unanswered::NoOne) => {
                    // Not running: its key is taken from the revision read, unless it changed.
                    match owners.update(&key, Bytes::copy_from_slice(me.as_bytes()), revision).await {
                        Ok(_) => return self.revive(client_id, clean_start, owner).await,
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => return Err(format!("claiming {key}: {e}")),
                    }
                }
                Err(Unanswered::Failed(why)) => {
                    return Err(format!("node {owner:?} did not give the session up: {why}"))
                }
            };
            match postcard::from_bytes::<HandedOver>(&answer) {
                Ok(HandedOver::NotOwner) => continue,
                Ok(HandedOver::Nothing) => return Ok(Claim::Here),
                Ok(HandedOver::Discarded) => return Ok(Claim::Discarded),
                Ok(HandedOver::Moved(session)) => return Ok(Claim::Moved { session, from: owner }),
                Err(e) => return Err(format!("node {owner:?} answered unreadably: {e}")),
            }
        }
        Err(format!("the owner of {key} kept changing"))
    }

    /// For a session read back from this node's store at start: true if this node owns its
    /// client id (it did, or nobody did and now this node does); false if another node took
    /// it meanwhile (its client reconnected there while this node was down).
    pub(crate) async fn owns_restored(&self, client_id: &str) -> Result<bool, String> {
        let owners = self.owners().await?;
        let key = key(client_id);
        let me = self.config.node_name.as_str();
        for _ in 0..CLAIM_TRIES {
            let entry = owners.entry(key.clone()).await.map_err(|e| format!("reading {key}: {e}"))?;
            if let Some(owner) = entry.as_ref().and_then(owner_of) {
                return Ok(owner == me);
            }
            match owners.create(&key, Bytes::copy_from_slice(me.as_bytes())).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("claiming {key}: {e}")),
            }
        }
        Err(format!("the owner of {key} kept changing"))
    }

    /// After this node took `client_id` from node `dead`, which is not running: the session's
    /// record, if it was persistent and the newcomer does not start clean.
    async fn revive(&self, client_id: &str, clean_start: bool, dead: String) -> Result<Claim, String> {
        let records = self.records().await?;
        let key = key(client_id);
        let record = if clean_start { None } else { records.get(key.clone()).await.map_err(|e| e.to_string())? };
        let Some(record) = record else {
            tracing::info!(client_id, node = dead, "cluster: took over a client id from a node that is not running");
            return Ok(Claim::Here);
        };
        // From `revive_margin` before the earliest of: when the dead node was last heard,
        // when the client went offline, and when its oldest message still pending was
        // published (as its node last wrote the record, see `Node::share_backlogs`).
        let heard = self.last_heard(&dead).unwrap_or_else(crate::now_ms);
        let (offline, pending) = crate::persist::SessionRecord::decode_revival(&record);
        let earliest = [offline, pending].into_iter().flatten().fold(heard, u64::min);
        let since_ms = earliest.saturating_sub(self.config.revive_margin.as_millis() as u64);
        tracing::info!(client_id, node = dead, "cluster: reviving a session of a node that is not running");
        Ok(Claim::Revived { record: record.to_vec(), since_ms, from: dead })
    }

    /// Shares (`Some`) or forgets (`None`) persistent session `client_id`'s record, in the
    /// order the node gives them (one task writes them). The answer comes once it is written
    /// (or could not be: NATS away).
    pub(crate) fn share_record(&self, client_id: &str, record: Option<Vec<u8>>) -> tokio::sync::oneshot::Receiver<()> {
        let (written, told) = tokio::sync::oneshot::channel();
        let _ = self.record_writes.send((client_id.to_owned(), record, written));
        told
    }

    /// The task that writes the records [`Cluster::share_record`] gives, one after the other.
    pub(super) async fn write_records(
        self: Arc<Cluster>,
        mut writes: tokio::sync::mpsc::UnboundedReceiver<RecordWrite>,
    ) {
        while let Some((client_id, record, written)) = writes.recv().await {
            // While NATS is away nothing waits for it (as for a node alone).
            if !self.reachable() {
                continue;
            }
            let Ok(records) = self.records().await else { continue };
            let key = key(&client_id);
            let outcome = match record {
                Some(record) => records.put(&key, Bytes::from(record)).await.map(drop).map_err(|e| e.to_string()),
                None => remove_at(records, &key, None).await.map(drop),
            };
            if let Err(e) = &outcome {
                tracing::debug!(client_id, "cluster: a session's record was not shared: {e}");
            }
            let _ = written.send(());
        }
    }

    /// Passes the ownership of `client_id` from this node to node `to`: false if this node
    /// does not own it.
    pub(crate) async fn pass_ownership(&self, client_id: &str, to: &str) -> Result<bool, String> {
        let owners = self.owners().await?;
        let key = key(client_id);
        for _ in 0..CLAIM_TRIES {
            let entry = owners.entry(key.clone()).await.map_err(|e| format!("reading {key}: {e}"))?;
            let Some(entry) = entry.filter(|e| owner_of(e) == Some(self.config.node_name.as_str())) else {
                return Ok(false);
            };
            match owners.update(&key, Bytes::copy_from_slice(to.as_bytes()), entry.revision).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(format!("passing {key} on: {e}")),
            }
        }
        Err(format!("the owner of {key} kept changing"))
    }

    /// Asks node `from`, which gave `client_id`'s session up to this node, for what was queued
    /// since, and to stop routing to it.
    pub(crate) async fn release(&self, from: &str, client_id: &str) -> Result<Option<Vec<u8>>, String> {
        let request = Request::Release { client_id: client_id.to_owned() };
        let answer = match self.ask(from, &request).await {
            Ok(answer) => answer,
            Err(Unanswered::NoOne) => return Err(format!("node {from:?} stopped")),
            Err(Unanswered::Failed(why)) => return Err(why),
        };
        postcard::from_bytes::<Released>(&answer).map(|r| r.0).map_err(|e| format!("unreadable answer: {e}"))
    }

    /// Gives up `client_id`'s key, if this node still owns it: its session ended here (with
    /// its record, if it was `persistent`).
    pub(crate) fn disown(self: &Arc<Cluster>, client_id: &str, persistent: bool) {
        if !self.reachable() {
            return;
        }
        let (cluster, client_id) = (self.clone(), client_id.to_owned());
        let Some(runtime) = self.runtime.get() else { return };
        runtime.spawn(async move {
            let Ok(owners) = cluster.owners().await else { return };
            let key = key(&client_id);
            let Ok(Some(entry)) = owners.entry(key.clone()).await else { return };
            let node = cluster.node.get().and_then(std::sync::Weak::upgrade);
            // A connection of that client id opening here now keeps it (and if one starts
            // after this, its claim writes the key again: the delete below then fails).
            if node.is_some_and(|n| n.holds(&client_id)) {
                return;
            }
            if owner_of(&entry) == Some(cluster.config.node_name.as_str()) {
                match remove_at(owners, &key, Some(entry.revision)).await {
                    Ok(true) if persistent => drop(cluster.share_record(&client_id, None)),
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(client_id, "cluster: a session's owner key changed meanwhile; it stays")
                    }
                    Err(e) => tracing::debug!(client_id, "cluster: a session's owner key stays: {e}"),
                }
            }
        });
    }

    /// Sends `request` to node `node` and waits for its answer. A node killed a moment ago
    /// may still have its subscription in the NATS server (which has not noticed yet): the
    /// request then goes unanswered, and once the node has not been heard from for as long as
    /// makes it stopped ([`super::HEARTBEAT`]), it counts as not running.
    async fn ask(&self, node: &str, request: &Request) -> Result<Bytes, Unanswered> {
        let subject = subject::session_subject(&self.config.subject_prefix, node);
        let body = Bytes::from(postcard::to_stdvec(request).unwrap_or_default());
        let answer = tokio::time::timeout(HAND_OVER_TIMEOUT, self.client.request(subject, body));
        let stopped = async {
            loop {
                tokio::time::sleep(super::HEARTBEAT / 4).await;
                let silent_since = self.last_heard(node).map(|at| crate::now_ms().saturating_sub(at));
                if silent_since.is_some_and(|ms| ms > (3 * super::HEARTBEAT).as_millis() as u64) {
                    return;
                }
            }
        };
        tokio::select! {
            answer = answer => match answer {
                Ok(Ok(answer)) => Ok(answer.payload),
                Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Err(Unanswered::NoOne),
                Ok(Err(e)) => Err(Unanswered::Failed(e.to_string())),
                Err(_) => Err(Unanswered::Failed(format!("no answer within {HAND_OVER_TIMEOUT:?}"))),
            },
            () = stopped => Err(Unanswered::NoOne),
        }
    }

    /// Answers other nodes' requests for this node's sessions (on the current runtime).
    pub(super) fn serve_sessions(self: &Arc<Cluster>) {
        let subject = subject::session_subject(&self.config.subject_prefix, &self.config.node_name);
        let cluster = self.clone();
        self.answer_requests(subject, "give sessions up to other nodes", move |request| {
            let node = cluster.node.get().and_then(std::sync::Weak::upgrade);
            async move {
                let node = node?;
                let answer = match postcard::from_bytes::<Request>(&request) {
                    Ok(Request::Take { client_id, clean_start, to }) => {
                        let handed = node.hand_over(client_id, clean_start, to).await;
                        postcard::to_stdvec(&handed)
                    }
                    Ok(Request::Release { client_id }) => {
                        postcard::to_stdvec(&Released(node.release_moved(&client_id)))
                    }
                    Err(e) => {
                        tracing::debug!("cluster: an unreadable session request: {e}");
                        return None;
                    }
                };
                Some(answer.unwrap_or_default())
            }
        });
    }
}

/// Removes `key` from `bucket` if its value is still the one written at `revision` (`None`:
/// whatever it is), leaving nothing of it: its messages in the bucket's stream up to that
/// revision are purged. True if there was something to remove.
///
/// A KV delete would leave a delete marker, one for every client id ever seen, kept forever
/// (a bucket keeps each key's last message). The purge is as conditional as a delete at an
/// expected revision: a value written after `revision` (another node took the key meanwhile)
/// is after the purge's bound and stays. Nothing watches these buckets, so no watcher misses
/// a delete.
async fn remove_at(bucket: &kv::Store, key: &str, revision: Option<u64>) -> Result<bool, String> {
    let subject = format!("{}{key}", bucket.prefix);
    let purge = bucket.stream.purge().filter(subject);
    let purged = match revision {
        Some(revision) => purge.sequence(revision + 1).await,
        None => purge.await,
    };
    purged.map(|p| p.purged > 0).map_err(|e| format!("removing {key}: {e}"))
}

/// A session's record to share (`Some`) or forget (`None`), by client id, and who waits for
/// it to be written.
pub(super) type RecordWrite = (String, Option<Vec<u8>>, tokio::sync::oneshot::Sender<()>);

/// Why a request to another node got no answer.
enum Unanswered {
    /// Nobody listens on its subject: it is not running.
    NoOne,
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_keys_and_tell_client_ids_apart() {
        assert_eq!(key("a.b"), "c612e62");
        assert_eq!(key(""), "c");
        let long = "x".repeat(500);
        assert!(key(&long).starts_with('h') && key(&long).len() == 65);
        assert_ne!(key(&long), key(&"x".repeat(501)));
        for k in [key("a b*>/#+$"), key(&long)] {
            assert!(k.bytes().all(|b| b.is_ascii_alphanumeric()), "{k}");
        }
        assert_eq!(subject::kv_bucket("mqtt.c1", "sessions"), "mqtt_c1_sessions");
    }
}
