//! Every session by client id, and their life: opened (new, resumed, or taken over from a
//! live connection) when a client connects, detached when its connection ends, ended at once
//! or when its Session Expiry Interval runs out, with its will published on time.
//!
//! Takeover (MQTT-3.1.4-3): the live connection is told to end (DISCONNECT 0x8E in MQTT 5)
//! and the newcomer waits for it to detach before it resumes or discards the session, so a
//! session is never served by two connections. Connections of one client id open one at a
//! time; a kick names the connection it ends, and a connection that finds the session served
//! by another (taken from it while it was stuck) ends too.
//!
//! The node owns the registry; the registry reaches the node only through [`Owner`] (its
//! counters, ending a session, publishing a will), which the node implements.

use foldhash::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::ClientInfo;
use crate::lock;
use crate::message::Message;
use crate::metrics::Metric;
use crate::persist::SessionRecord;
use crate::session::moved::MovedSession;
use crate::session::{Attachment, PendingWill, Session, State};
use crate::stats::Stats;

/// How long a newcomer waits for the connection it takes over to let go of the session.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// What the registry needs of the node that owns it: its counters, ending a session (which
/// takes its subscriptions out of the router) and publishing a will. The node implements
/// it, so the registry never names the node.
pub(crate) trait Owner: Send + Sync + 'static {
    /// The node's counters.
    fn stats(&self) -> &Stats;
    /// Ends `session`: its subscriptions, queue and messages in flight go, and a will still
    /// waiting is published now; `session.terminated` tells `why`. False if it had ended already.
    fn end_session(&self, session: &Arc<Session>, why: Termination) -> bool;
    /// Ends `session` if `still` holds for its state (checked under its lock); true if it did.
    fn end_session_if(&self, session: &Arc<Session>, why: Termination, still: impl FnOnce(&mut State) -> bool) -> bool;
    /// Publishes `message` (a will) from `client`.
    fn publish(&self, message: Message, client: &ClientInfo);
    /// `session` outlives its connection, which just ended: a persistent one records when
    /// (and a will waiting for its delay, [`crate::persist::WillRecord`]).
    fn went_offline(&self, session: &Arc<Session>);
    /// The will `session` kept while offline was published: a persistent one forgets it.
    fn will_published(&self, session: &Arc<Session>);
    /// In a cluster, makes this node the owner of `client`'s session before a connection of
    /// `clean_start` opens it here (see `crate::cluster`); a node alone owns every session.
    /// Err says why it could not.
    fn claim(&self, client: &ClientInfo, clean_start: bool) -> impl Future<Output = Result<Claimed, String>> + Send;
    /// Puts into `session`, new and attached, a session from another node: its messages and
    /// subscriptions (given up), or its subscriptions (revived from its record).
    fn adopt(&self, session: &Arc<Session>, adopted: Adopted);
}

/// A session that comes from another node's ([`Owner::adopt`]).
#[derive(Debug)]
pub(crate) enum Adopted {
    /// Given up by the node that had it.
    Moved(MovedSession),
    /// The record of a session whose node is not running.
    Revived(SessionRecord),
}

/// What became of a client id's session elsewhere in the cluster ([`Owner::claim`]).
#[derive(Debug)]
pub(crate) enum Claimed {
    /// This node's own sessions decide (a node alone, or the session is here or nowhere).
    Here,
    /// The node that had it ended it (the newcomer's clean start, or it was not to outlive its
    /// connection).
    Discarded,
    /// The node that had it, `from`, gave it up to this one.
    Moved { session: MovedSession, from: String },
    /// The node that had it, `from`, is not running: the session is made anew from its record,
    /// and what was published for it from `since_ms` on is read back from the cluster.
    Revived { record: SessionRecord, since_ms: u64, from: String },
}

/// Where a session opened from another node's came from ([`Opened::elsewhere`]), for what is
/// left to do once it is in the registry.
#[derive(Debug)]
pub(crate) enum Elsewhere {
    /// Given up by node `0`, which still routes to it until asked for what came meanwhile.
    Moved(String),
    /// Revived from its record, its node (`from`) gone: what was published for it from
    /// `since_ms` (ms since the Unix epoch) on is to be read back.
    Revived { since_ms: u64, from: String },
}

/// What a node answers when asked to give a session up ([`Sessions::hand_over`]).
#[derive(Debug)]
pub(crate) enum HandOver {
    /// This node does not own the client id.
    NotOwner,
    /// No session here (ownership passed).
    Nothing,
    /// The session was ended (ownership passed).
    Discarded,
    /// The session's messages, taken out (ownership passed); it stays routed to until
    /// [`Sessions::release_moved`].
    Moved(MovedSession),
}

/// How long a session given up to another node stays routed to, waiting for that node to ask
/// for what was queued meanwhile, before it is ended.
const MOVE_WAIT: Duration = Duration::from_secs(15);

/// Why a session ends ([`Owner::end_session`]), as `session.terminated` tells it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Termination {
    /// Its connection ended and the session was not to outlive it. The connection fires
    /// `session.terminated` itself, with its `client.disconnected` reason, after
    /// `client.disconnected` (EMQX's order): see [`Sessions::close`].
    Closed,
    /// Its Session Expiry Interval ran out while its client was offline.
    Expired,
    /// An operator ended it (`broker ctl sessions kick`).
    Kicked,
    /// A new connection of its client id replaced it without resuming it (clean start, or a
    /// session not to outlive its connection): EMQX's `session.discarded`, so no
    /// `session.terminated`.
    Discarded,
}

impl Termination {
    /// The `reason` of the `session.terminated` that ending the session fires, or `None` when
    /// it fires none (or, for [`Termination::Closed`], its connection fires it).
    pub(crate) fn reason(&self) -> Option<&'static str> {
        match self {
            Termination::Closed => None,
            Termination::Expired => Some("expired"),
            Termination::Kicked => Some("kicked"),
            Termination::Discarded => None,
        }
    }
}

/// A will as the connection hands it over when it ends.
#[derive(Debug)]
pub(crate) struct Will {
    pub(crate) message: Message,
    /// MQTT 5 Will Delay Interval in seconds.
    pub(crate) delay: u32,
    /// MQTT 5 Message Expiry Interval, counted from when the will is published.
    pub(crate) expiry: Option<u32>,
}

/// The session a connection got.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) session: Arc<Session>,
    /// An existing session was resumed (CONNACK's Session Present).
    pub(crate) present: bool,
    /// In a cluster: the session came from another node's ([`Elsewhere`]). Boxed: every
    /// connection's task holds an `Opened` while it finishes its handshake.
    pub(crate) elsewhere: Option<Box<Elsewhere>>,
    /// An existing session was ended for this one (`session.discarded`).
    pub(crate) discarded: bool,
    /// The session resumed was taken from a live connection (`session.takenover`).
    pub(crate) taken_over: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_client_id: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// One lock per client id being opened now, so that its connections open one at a time.
    opening: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
}

/// A place in line to open a session for one client id; forgotten when the last one leaves.
struct Turn<'a> {
    sessions: &'a Sessions,
    client_id: Arc<str>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn new(sessions: &'a Sessions, client_id: &Arc<str>) -> Turn<'a> {
        let lock = lock(&sessions.opening).entry(client_id.clone()).or_default().clone();
        Turn { sessions, client_id: client_id.clone(), lock }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut opening = lock(&self.sessions.opening);
        // Clones are made under this lock: 2 is the map's and ours, so no one else waits.
        if Arc::strong_count(&self.lock) == 2 {
            opening.remove(&self.client_id);
            if opening.capacity() > 64 && opening.len() < opening.capacity() / 4 {
                opening.shrink_to_fit();
            }
        }
    }
}

impl Sessions {
    pub(crate) fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        lock(&self.by_client_id).get(client_id).cloned()
    }

    /// Whether there is a session for `client_id`, or a connection of it opening one.
    pub(crate) fn holds(&self, client_id: &str) -> bool {
        lock(&self.by_client_id).contains_key(client_id) || lock(&self.opening).contains_key(client_id)
    }

    /// Forgets `session`, unless another session has its client id by now.
    pub(crate) fn remove(&self, session: &Arc<Session>) {
        let mut sessions = lock(&self.by_client_id);
        if sessions.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(&session.client_id);
            if sessions.capacity() > 64 && sessions.len() < sessions.capacity() / 4 {
                sessions.shrink_to_fit();
            }
        }
    }

    /// Every session, ordered by client id.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        let mut sessions: Vec<Arc<Session>> = lock(&self.by_client_id).values().cloned().collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        sessions
    }

    /// The clients connected now, ordered by client id.
    pub(crate) fn connected(&self) -> Vec<Arc<ClientInfo>> {
        let sessions: Vec<Arc<Session>> = lock(&self.by_client_id).values().cloned().collect();
        let mut clients: Vec<Arc<ClientInfo>> =
            sessions.iter().filter_map(|s| s.lock().attachment.as_ref().map(|a| a.client.clone())).collect();
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        clients
    }

    /// Tells every connection to end with `reason` (e.g. the broker shutting down).
    pub(crate) fn kick_all(&self, reason: u8) {
        let sessions: Vec<Arc<Session>> = lock(&self.by_client_id).values().cloned().collect();
        for session in sessions {
            let serving = session.lock().attachment.as_ref().map(|a| a.connection);
            if let Some(connection) = serving {
                session.kick(connection, reason);
            }
        }
    }

    fn create(&self, node: &impl Owner, client: &Arc<ClientInfo>, connection: u64, expiry: u32) -> Arc<Session> {
        let session =
            Arc::new(Session::new(self.next_id.fetch_add(1, Ordering::Relaxed) + 1, client.client_id.clone()));
        {
            let mut state = session.lock();
            state.expiry_interval = expiry;
            session.attach(&mut state, Attachment { connection, client: client.clone() });
        }
        node.stats().session_created();
        session
    }

    /// The session for a new connection of `client`: a new one (clean start, none existed, or
    /// the existing one was not persistent), or the existing one resumed. A connection still
    /// serving the client id is told to end first. Connections of one client id open one at a
    /// time, in the order they got here.
    pub(crate) async fn open(
        &self,
        node: &impl Owner,
        client: &Arc<ClientInfo>,
        connection: u64,
        clean_start: bool,
        expiry: u32,
    ) -> Result<Opened, String> {
        let turn = Turn::new(self, &client.client_id);
        let _turn = turn.lock.lock().await;
        let discarded_elsewhere = match node.claim(client, clean_start).await? {
            Claimed::Here => false,
            Claimed::Discarded => true,
            Claimed::Moved { session: moved, from } => {
                return Ok(self.adopt(node, client, connection, expiry, Adopted::Moved(moved), Elsewhere::Moved(from)));
            }
            Claimed::Revived { record, since_ms, from } => {
                return Ok(self.adopt(
                    node,
                    client,
                    connection,
                    expiry,
                    Adopted::Revived(record),
                    Elsewhere::Revived { since_ms, from },
                ));
            }
        };
        let mut taken_over = false;
        loop {
            let existing = self.get(&client.client_id);
            let Some(old) = existing else {
                let session = self.create(node, client, connection, expiry);
                lock(&self.by_client_id).insert(client.client_id.clone(), session.clone());
                return Ok(Opened {
                    session,
                    present: false,
                    discarded: discarded_elsewhere,
                    taken_over: false,
                    elsewhere: None,
                });
            };
            let detached = old.detached.notified();
            tokio::pin!(detached);
            detached.as_mut().enable();
            {
                let mut state = old.lock();
                if state.ended {
                    drop(state);
                    self.remove(&old);
                    continue;
                }
                // A session whose connection asked for no expiry (MQTT 5 Session Expiry 0,
                // MQTT 3.1.1 Clean Session 1) lasts only as long as that connection
                // (MQTT-3.1.2-6): a newcomer never resumes it (MQTT-3.2.2-3: Session Present 0).
                let discard = clean_start || state.expiry_interval == 0;
                match state.attachment.as_ref().map(|a| a.connection) {
                    None if discard => {
                        drop(state);
                        let session = self.create(node, client, connection, expiry);
                        lock(&self.by_client_id).insert(client.client_id.clone(), session.clone());
                        node.end_session(&old, Termination::Discarded);
                        node.stats().metrics.inc(Metric::SessionDiscarded);
                        return Ok(Opened {
                            session,
                            present: false,
                            discarded: true,
                            taken_over: false,
                            elsewhere: None,
                        });
                    }
                    None => {
                        state.expiry_interval = expiry;
                        old.attach(&mut state, Attachment { connection, client: client.clone() });
                        return Ok(Opened {
                            session: old.clone(),
                            present: true,
                            discarded: false,
                            taken_over,
                            elsewhere: None,
                        });
                    }
                    Some(serving) => {
                        old.kick_takeover(serving, discard);
                        taken_over = !discard;
                        node.stats().metrics.inc(if discard {
                            Metric::SessionDiscarded
                        } else {
                            Metric::SessionTakeovered
                        });
                    }
                }
            }
            if tokio::time::timeout(TAKEOVER_WAIT, detached).await.is_err() {
                // The old connection is stuck (a blocking hook, say): take the session from it.
                // It ends as soon as it runs again: it no longer owns the session.
                tracing::warn!(
                    client_id = &*client.client_id,
                    "the connection being taken over did not let go in time"
                );
                let mut state = old.lock();
                if let Some(connection) = state.attachment.as_ref().map(|a| a.connection) {
                    old.detach(&mut state, connection);
                }
            }
        }
    }

    /// Opens, for connection `connection` of `client`, a session from another node (`adopted`).
    /// A session this node still has for the client id is older than that one (this node was
    /// not its owner): it goes, and its connection with it.
    fn adopt(
        &self,
        node: &impl Owner,
        client: &Arc<ClientInfo>,
        connection: u64,
        expiry: u32,
        adopted: Adopted,
        elsewhere: Elsewhere,
    ) -> Opened {
        if let Some(stale) = self.get(&client.client_id) {
            let serving = stale.lock().attachment.as_ref().map(|a| a.connection);
            node.end_session(&stale, Termination::Discarded);
            if let Some(serving) = serving {
                stale.kick_takeover(serving, true);
            }
        }
        let session = self.create(node, client, connection, expiry);
        node.adopt(&session, adopted);
        lock(&self.by_client_id).insert(client.client_id.clone(), session.clone());
        node.stats().metrics.inc(Metric::SessionTakeovered);
        Opened { session, present: true, discarded: false, taken_over: true, elsewhere: Some(Box::new(elsewhere)) }
    }

    /// Gives `client_id`'s session up to another node, whose connection asked with
    /// `clean_start`, in turn with this node's own connections of that client id: once `pass`
    /// made the other node the owner (false: this node was not), the connection serving the
    /// session is told to end (taken over) and let go; then the session is ended (the
    /// newcomer's clean start, or a session not to outlive its connection), or its messages
    /// are taken out for the other node. It stays routed to until
    /// [`Sessions::release_moved`], or for [`MOVE_WAIT`].
    pub(crate) async fn hand_over(
        &self,
        node: &Arc<impl Owner>,
        client_id: &str,
        clean_start: bool,
        pass: impl Future<Output = bool>,
    ) -> HandOver {
        let client_id: Arc<str> = client_id.into();
        let turn = Turn::new(self, &client_id);
        let _turn = turn.lock.lock().await;
        if !pass.await {
            return HandOver::NotOwner;
        }
        let Some(session) = self.get(&client_id) else { return HandOver::Nothing };
        let detached = session.detached.notified();
        tokio::pin!(detached);
        detached.as_mut().enable();
        let (serving, discard) = {
            let state = session.lock();
            if state.ended {
                return HandOver::Nothing;
            }
            (state.attachment.as_ref().map(|a| a.connection), clean_start || state.expiry_interval == 0)
        };
        if let Some(serving) = serving {
            session.kick_takeover(serving, discard);
            node.stats().metrics.inc(if discard { Metric::SessionDiscarded } else { Metric::SessionTakeovered });
            if tokio::time::timeout(TAKEOVER_WAIT, detached).await.is_err() {
                tracing::warn!(client_id = &*client_id, "the connection being taken over did not let go in time");
                let mut state = session.lock();
                session.detach(&mut state, serving);
            }
        }
        if discard {
            node.end_session(&session, Termination::Discarded);
            return HandOver::Discarded;
        }
        let (moved, generation) = {
            let mut state = session.lock();
            if state.ended || state.attachment.is_some() {
                return HandOver::Nothing;
            }
            // Its client is back elsewhere before a delayed will was due: no will (MQTT-3.1.3-9).
            state.pending_will = None;
            state.expires_at = None;
            (MovedSession::take(&mut state), state.generation)
        };
        let (node, abandoned) = (node.clone(), session.clone());
        tokio::spawn(async move {
            tokio::time::sleep(MOVE_WAIT).await;
            node.end_session_if(&abandoned, Termination::Discarded, |state| {
                state.generation == generation && state.attachment.is_none()
            });
        });
        HandOver::Moved(moved)
    }

    /// Ends `client_id`'s session, given up to another node by [`Sessions::hand_over`], and
    /// returns what was queued for it since (encoded); `None` if it is not here.
    pub(crate) fn release_moved(&self, node: &impl Owner, client_id: &str) -> Option<Vec<u8>> {
        let session = self.get(client_id)?;
        let mut tail = None;
        node.end_session_if(&session, Termination::Discarded, |state| {
            if state.attachment.is_some() {
                return false;
            }
            tail = Some(crate::session::moved::take_tail(state));
            true
        });
        tail
    }

    /// Called when connection `connection` of `session` ends. `will` is the will to publish
    /// (none after a normal DISCONNECT); `taken_over` when a newer connection ends it, which
    /// then decides what becomes of the session. True if the session ended with the
    /// connection: the caller then fires `session.terminated`, after `client.disconnected`.
    pub(crate) fn close(
        &self,
        node: &Arc<impl Owner>,
        session: &Arc<Session>,
        connection: u64,
        client: &Arc<ClientInfo>,
        will: Option<Will>,
        taken_over: bool,
    ) -> bool {
        let mut publish_now = None;
        let mut end = false;
        let mut schedule = None;
        {
            let mut state = session.lock();
            let was_attached = session.detach(&mut state, connection);
            let expiry = state.expiry_interval;
            if let Some(mut will) = will {
                // The will is published now, or at `at`: its expiry counts from then.
                let at = Instant::now() + Duration::from_secs(u64::from(will.delay.min(expiry.max(1))));
                let expires_at = Message::expiry_from(will.expiry, if will.delay > 0 { at } else { Instant::now() });
                will.message.edit(|head| {
                    head.timestamp_ms = crate::now_ms();
                    head.expires_at = expires_at;
                });
                // MQTT-3.1.2-8: a delayed will waits, unless the session ends first.
                let persistent = was_attached && !state.ended && (expiry > 0 || taken_over);
                if will.delay > 0 && persistent {
                    state.pending_will =
                        Some(Box::new(PendingWill { message: will.message, client: client.clone(), at }));
                } else {
                    publish_now = Some(will.message);
                }
            }
            if was_attached && !taken_over && !state.ended {
                if expiry == 0 {
                    end = true;
                } else {
                    state.expires_at =
                        (expiry != u32::MAX).then(|| Instant::now() + Duration::from_secs(u64::from(expiry)));
                    schedule = Some(state.generation);
                }
            }
        }
        session.detached.notify_waiters();
        if let Some(message) = publish_now {
            node.publish(message, client);
        }
        if end {
            return node.end_session(session, Termination::Closed);
        }
        if let Some(generation) = schedule {
            node.went_offline(session);
            tokio::spawn(expire(node.clone(), session.clone(), generation));
        }
        false
    }

    /// A new, empty session for `client_id`, not yet in the registry (for one read back from
    /// the store: [`Sessions::restore`]).
    pub(crate) fn new_session(&self, client_id: Arc<str>) -> Session {
        Session::new(self.next_id.fetch_add(1, Ordering::Relaxed) + 1, client_id)
    }

    /// Adds `session`, offline, read back from the store at start; its timers wait for
    /// [`Sessions::start_timers`].
    pub(crate) fn restore(&self, session: Arc<Session>) {
        lock(&self.by_client_id).insert(session.client_id.clone(), session);
    }

    /// Starts the timers of `session`, read back from the store: it ends when its `expires_at`
    /// comes, and its delayed will goes when due, unless a client resumes it first.
    pub(crate) fn start_timers(&self, node: &Arc<impl Owner>, session: Arc<Session>) {
        let generation = session.lock().generation;
        tokio::spawn(expire(node.clone(), session, generation));
    }
}

/// Waits out an offline session's delayed will and expiry, unless a connection resumes it.
async fn expire(node: Arc<impl Owner>, session: Arc<Session>, generation: u64) {
    loop {
        let next = {
            let state = session.lock();
            if state.generation != generation || state.ended || state.attachment.is_some() {
                return;
            }
            match (state.pending_will.as_ref().map(|w| w.at), state.expires_at) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return,
            }
        };
        tokio::time::sleep_until(next.into()).await;
        let will = {
            let mut state = session.lock();
            if state.generation != generation || state.ended || state.attachment.is_some() {
                return;
            }
            let now = Instant::now();
            if state.expires_at.is_some_and(|at| at <= now) {
                // Ends it (a will still waiting goes now), unless a connection resumed it since.
                drop(state);
                node.end_session_if(&session, Termination::Expired, |state| {
                    state.generation == generation && state.attachment.is_none()
                });
                return;
            }
            if state.pending_will.as_ref().is_some_and(|w| w.at <= now) {
                state.pending_will.take()
            } else {
                None
            }
        };
        if let Some(will) = will {
            node.publish(will.message, &will.client);
            node.will_published(&session);
        }
    }
}
