//! Hook dispatch: which running plugins get which hook, in priority order.
//!
//! This is on the hot path of every message. The table is swapped whole (`ArcSwap`) when a
//! plugin starts or stops, so a dispatch takes no lock and allocates nothing; a hook no
//! plugin wants costs one relaxed atomic load ([`Hooks::wants`]).
//!
//! A chain with a plugin that declared the hook blocking ([`Hooks::route`] says
//! [`Route::Blocking`], from the same load) is run with [`Hooks::run_blocking`] on a blocking
//! pool (the `blocking` crate's: threads started as needed, at most 500, each ended after
//! half a second idle), off the network threads. At most [`BLOCKING_CHAINS`] chains of one
//! hook run there at once; the clients beyond wait in a fair queue (a semaphore) that holds no
//! thread, so a thousand clients waiting on a slow ACL service hold 64 threads, not a
//! thousand, and leave the rest of the pool to the other hooks.
//!
//! A chain with a plugin that answers the hook later (`later_hooks`) and none that blocks is
//! [`Route::Later`]: it runs on the client's own task with [`Hooks::dispatch_later`], which
//! hands such a plugin a ticket (`RawEvent::ticket` and `answer`) and awaits its answer, so
//! nothing but that client waits and no thread is handed the event.
//!
//! A running plugin is, to dispatch, its [`handle::PluginHandle`] (`handle`): what the plugin
//! manager (`plugins`, which depends on this module) makes when it starts one.

pub(crate) mod handle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use std::ffi::c_void;

use plugin_api::abi::{self, RawAnswer, RawBytes, RawBytesWriter, RawEvent, RawStr, RawWriter};
use plugin_api::{Hook, HookMask};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;

use crate::log_limit::Throttle;
use handle::PluginHandle;

/// How long a client waits for a plugin's later answer unless `broker.hook_answer_timeout`
/// says otherwise.
pub(crate) const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How many PUBLISHes of one client may wait for a later `message.publish` answer at once
/// unless `broker.hook_pipeline` says otherwise.
pub(crate) const DEFAULT_PUBLISH_PIPELINE: usize = 8;

/// What the plugins of a rewriting chain replaced ([`Hooks::dispatch_rewriting`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rewritten {
    /// The topic (or filter), valid.
    pub(crate) topic: Option<String>,
    /// `message.publish`: the payload.
    pub(crate) payload: Option<Vec<u8>>,
    /// `message.publish`: the QoS, 0 to 2.
    pub(crate) qos: Option<u8>,
}

impl Rewritten {
    /// `event` showing what was replaced (it then points into `self`, whose heap buffers do
    /// not move).
    fn applied_to(&self, mut event: RawEvent) -> RawEvent {
        if let Some(topic) = &self.topic {
            event.topic = RawStr::new(topic);
        }
        if let Some(payload) = &self.payload {
            event.payload = RawBytes::new(payload);
        }
        if let Some(qos) = self.qos {
            event.qos = qos;
        }
        event
    }
}

/// One plugin's answer to an event, with the replacements it wrote (a topic, a payload, a
/// QoS byte).
#[derive(Debug, Default)]
struct Answer {
    /// `None`: the plugin was not active.
    result: Option<u32>,
    topic: String,
    payload: Option<Vec<u8>>,
    qos: Option<Vec<u8>>,
}

impl Answer {
    /// This answer (what the plugin wrote to the event's writers) with its later answer's
    /// result, and its replacements where it gives them.
    fn overridden_by(mut self, later: LaterAnswer) -> Answer {
        self.result = Some(later.result);
        if let Some(topic) = later.topic {
            self.topic = topic;
        }
        if let Some(payload) = later.payload {
            self.payload = Some(payload);
        }
        if let Some(qos) = later.qos {
            self.qos = Some(vec![qos]);
        }
        self
    }
}

/// A later answer, copied out of the plugin's [`abi::RawAnswer`].
#[derive(Debug)]
struct LaterAnswer {
    result: u32,
    topic: Option<String>,
    payload: Option<Vec<u8>>,
    qos: Option<u8>,
}

/// What the host hands a plugin as `RawEvent::ticket`: where its later answer goes.
struct Ticket(oneshot::Sender<LaterAnswer>);

impl Ticket {
    /// A new ticket (owned by whoever holds the pointer) and where its answer arrives.
    fn offer() -> (*mut c_void, oneshot::Receiver<LaterAnswer>) {
        let (sender, receiver) = oneshot::channel();
        (Box::into_raw(Box::new(Ticket(sender))).cast(), receiver)
    }
}

/// `RawEvent::answer`: takes a plugin's later answer to the event that carried `ticket`.
unsafe extern "C" fn answer_later(ticket: *mut c_void, answer: *const RawAnswer) {
    // SAFETY: the ticket was made by `Ticket::offer` for one event, and the ABI has the plugin
    // answer it once: this is its only release.
    let ticket = unsafe { Box::from_raw(ticket.cast::<Ticket>()) };
    // SAFETY: the plugin's answer is readable for its declared size during this call.
    let later = match unsafe { RawAnswer::read(answer) } {
        Some(answer) => LaterAnswer {
            result: answer.result,
            // SAFETY: the answer's strings are valid during this call.
            // (Not UTF-8: empty, so unchanged.)
            topic: Some(unsafe { answer.topic.as_str() }.to_owned()).filter(|t| !t.is_empty()),
            // SAFETY: as above.
            payload: (answer.replace_payload != 0).then(|| unsafe { answer.payload.as_slice() }.to_vec()),
            qos: (answer.qos != abi::ANSWER_QOS_UNCHANGED).then_some(answer.qos),
        },
        None => LaterAnswer { result: abi::HOOK_CONTINUE, topic: None, payload: None, qos: None },
    };
    // The client may be gone (its connection ended while it waited).
    let _ = ticket.0.send(later);
}

/// Where [`Hooks::run_chain`] stopped.
enum Step {
    /// The chain ended with this verdict.
    Done(Verdict),
    /// `plugin` will answer later; the chain goes on at the `next`th plugin.
    Waiting { next: usize, plugin: Arc<PluginHandle>, answer: Pending },
}

/// An answer to come.
struct Pending {
    /// What the plugin wrote to the event's writers before it returned.
    written: Answer,
    receiver: oneshot::Receiver<LaterAnswer>,
}

impl Pending {
    /// The plugin's answer, or `None` when `deadline` passed first. The ticket stays the
    /// plugin's either way (it frees it when it answers), so a late answer is safe, and lost.
    async fn wait(self, deadline: Option<Duration>) -> Option<Answer> {
        let answered = match deadline {
            Some(deadline) => tokio::time::timeout(deadline, self.receiver).await.ok()?,
            None => self.receiver.await,
        };
        Some(match answered {
            Ok(later) => self.written.overridden_by(later),
            // Never: the ticket is dropped only once its answer was sent.
            Err(_) => Answer { result: Some(abi::HOOK_CONTINUE), ..Answer::default() },
        })
    }
}

/// A chain's verdict when a plugin did not answer in time: a refusal, as EMQX's exhook
/// `failed_action = deny` (its default): the client is not admitted, the action not allowed,
/// the message not published.
fn refusal(hook: Option<Hook>) -> Verdict {
    match hook {
        Some(Hook::MessagePublish) => Verdict::Drop,
        _ => Verdict::Deny,
    }
}

/// The answer of a hook chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every plugin deferred (or kept the message).
    Continue,
    /// A plugin allowed (auth / ACL).
    Allow,
    /// A plugin allowed a client as a superuser (auth): no ACL checks for it.
    Superuser,
    /// A plugin denied (auth / ACL).
    Deny,
    /// A plugin dropped the message.
    Drop,
}

/// How a hook's chain runs, as [`Hooks::route`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// No plugin wants the hook.
    Skip,
    /// Inline, on the calling (network) thread.
    Inline,
    /// A plugin in the chain may block: run it with [`Hooks::run_blocking`].
    Blocking,
    /// A plugin in the chain may answer later (none may block): run it on the calling
    /// task with [`Hooks::dispatch_later`], which awaits such answers.
    Later,
}

impl Route {
    /// Whether the client waits for the chain off the network thread's direct path (its
    /// packet is suspended, `connection::suspend`).
    pub(crate) fn waits(self) -> bool {
        matches!(self, Route::Blocking | Route::Later)
    }
}

/// The hooks whose chains the host runs off the network threads when a plugin declares them
/// blocking. `client.authenticate` always runs there.
pub(crate) const CAN_BLOCK: HookMask =
    HookMask::of(&[Hook::ClientConnect, Hook::ClientAuthenticate, Hook::ClientCheckAcl, Hook::MessagePublish]);

/// The hooks a plugin may answer later (`PluginDescriptor::later_hooks`): those whose chains
/// a client connection awaits.
pub(crate) const CAN_ANSWER_LATER: HookMask = CAN_BLOCK;

/// The hooks for which the host calls a plugin only with retained messages when it asks
/// (`PluginDescriptor::retained_only_hooks`).
pub(crate) const RETAINED_ONLY: HookMask = HookMask::of(&[Hook::MessagePublish]);

/// The hooks whose plugins may answer [`abi::HOOK_REPLACE`].
const REWRITING: HookMask = HookMask::of(&[Hook::MessagePublish, Hook::ClientSubscribe, Hook::ClientUnsubscribe]);

/// How many chains of one hook may run on the blocking pool at once.
pub(crate) const BLOCKING_CHAINS: usize = 64;

/// Where the per-hook bits of "the client waits for the chain" ([`Route::waits`]) start in
/// `Hooks::routes`.
const WAITS_SHIFT: u32 = 32;

#[derive(Debug, Default)]
struct HookTable {
    by_hook: [Vec<Arc<PluginHandle>>; Hook::ALL.len()],
    /// Every running plugin, in load order.
    running: Vec<Arc<PluginHandle>>,
}

/// The dispatcher shared by every connection.
#[derive(Debug)]
pub(crate) struct Hooks {
    /// Bit `hook`: a plugin wants it; bit `WAITS_SHIFT + hook`: its chain may block or
    /// answer later.
    routes: AtomicU64,
    /// Bit `hook`: its chain may answer later and none of it blocks ([`Route::Later`]); read
    /// only for a chain the client waits for.
    later: AtomicU64,
    /// Bit `hook`: every plugin on it wants only retained messages (no event is made for the
    /// others).
    retained_only: AtomicU64,
    /// Slots on the blocking pool, one semaphore per hook.
    blocking_slots: [Arc<Semaphore>; Hook::ALL.len()],
    table: ArcSwap<HookTable>,
    /// Changes whenever cached ACL answers may be stale (see [`Hooks::acl_generation`]).
    acl_generation: AtomicU64,
    /// Where a plugin that panicked is reported, to be stopped off the hot path.
    failed: UnboundedSender<Arc<PluginHandle>>,
    /// How long a client waits for a later answer (`broker.hook_answer_timeout`); `None`:
    /// for ever.
    answer_timeout: Option<Duration>,
    /// Later answers that did not come in time (`hooks.answer_timeout`).
    answers_timed_out: AtomicU64,
    /// How many PUBLISHes of one client may wait for a later `message.publish` answer at once
    /// (`broker.hook_pipeline`).
    publish_pipeline: usize,
    /// One warning a minute per plugin whose answers time out.
    timeouts_logged: Throttle<String>,
}

impl Hooks {
    pub(crate) fn new(failed: UnboundedSender<Arc<PluginHandle>>) -> Hooks {
        Hooks {
            routes: AtomicU64::new(0),
            later: AtomicU64::new(0),
            retained_only: AtomicU64::new(0),
            blocking_slots: std::array::from_fn(|_| Arc::new(Semaphore::new(BLOCKING_CHAINS))),
            table: ArcSwap::from_pointee(HookTable::default()),
            acl_generation: AtomicU64::new(0),
            failed,
            answer_timeout: Some(DEFAULT_ANSWER_TIMEOUT),
            answers_timed_out: AtomicU64::new(0),
            publish_pipeline: DEFAULT_PUBLISH_PIPELINE,
            timeouts_logged: Throttle::new(Duration::from_secs(60)),
        }
    }

    /// Sets how many PUBLISHes of one client may wait for a later `message.publish` answer at
    /// once (at least 1).
    pub(crate) fn with_publish_pipeline(mut self, depth: usize) -> Hooks {
        self.publish_pipeline = depth.max(1);
        self
    }

    /// How many PUBLISHes of one client may wait for a later `message.publish` answer at once.
    pub(crate) fn publish_pipeline(&self) -> usize {
        self.publish_pipeline
    }

    /// Sets how long a client waits for a plugin's later answer; `None` for ever.
    pub(crate) fn with_answer_timeout(mut self, timeout: Option<Duration>) -> Hooks {
        self.answer_timeout = timeout;
        self
    }

    /// How many later answers did not come in time since the start.
    pub(crate) fn answers_timed_out(&self) -> u64 {
        self.answers_timed_out.load(Ordering::Relaxed)
    }

    /// Whether any running plugin wants `hook`. Check it before building an event.
    #[inline]
    pub(crate) fn wants(&self, hook: Hook) -> bool {
        self.routes.load(Ordering::Relaxed) & (1 << hook as u32) != 0
    }

    /// Whether any running plugin wants `hook` for a message whose retain flag is `retain`
    /// (plugins may want only retained ones). Check it before building a message's event.
    #[inline]
    pub(crate) fn wants_message(&self, hook: Hook, retain: bool) -> bool {
        self.wants(hook) && (retain || self.retained_only.load(Ordering::Relaxed) & (1 << hook as u32) == 0)
    }

    /// How `hook`'s chain runs: not at all, inline, off the network threads, or inline with
    /// answers awaited. One relaxed atomic load, as [`Hooks::wants`], for a chain that does
    /// not wait.
    #[inline]
    pub(crate) fn route(&self, hook: Hook) -> Route {
        let routes = self.routes.load(Ordering::Relaxed);
        if routes & (1 << hook as u32) == 0 {
            Route::Skip
        } else if routes & (1 << (WAITS_SHIFT + hook as u32)) == 0 {
            Route::Inline
        } else if self.later.load(Ordering::Relaxed) & (1 << hook as u32) != 0 {
            Route::Later
        } else {
            Route::Blocking
        }
    }

    /// Runs `chain` (a hook chain that may block, for `hook`) on a thread of the blocking
    /// pool and waits for its answer without holding a network thread. Waiting for one of
    /// the hook's [`BLOCKING_CHAINS`] slots holds no thread either. `None` only when the
    /// chain panicked (a bug of the host's: a plugin's panic is caught at its boundary).
    ///
    /// The pool is the `blocking` crate's (threads started as needed, ended when idle), not
    /// tokio's `spawn_blocking`: every CONNECT goes through here (`client.authenticate`),
    /// and with tokio's pool a fresh broker taking clients at the default `max_conn_rate`
    /// (1000 a second) kept 0.1 to 0.2 KiB more heap resident per idle client (2.00 to 2.05
    /// KiB a client against 1.89 to 1.91; `target/release/idle_memory --clients 10000`): the
    /// same bytes in use, with free holes between them (glibc's `malloc_stats`). Which part
    /// of tokio's hand-over leaves the holes (its tasks are allocated 128-byte aligned, with
    /// `posix_memalign`; its threads run at other moments) was not pinned down.
    pub(crate) async fn run_blocking<R: Send + 'static>(
        &self,
        hook: Hook,
        chain: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let slot = self.blocking_slots[hook as usize].clone().acquire_owned().await.ok()?;
        let ran = blocking::unblock(move || {
            let _slot = slot;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(chain))
        })
        .await;
        match ran {
            Ok(answer) => Some(answer),
            Err(_) => {
                tracing::warn!("{} did not finish: it panicked", hook.name());
                None
            }
        }
    }

    /// Replaces the table with `running` (in load order), sorted by priority.
    pub(crate) fn install(&self, running: &[Arc<PluginHandle>]) {
        let mut table = HookTable { running: running.to_vec(), ..Default::default() };
        let mut routes = 0u64;
        let mut later = 0u64;
        let mut retained_only = 0u64;
        for hook in Hook::ALL {
            let list = &mut table.by_hook[hook as usize];
            list.extend(running.iter().filter(|p| p.hooks.contains(hook)).cloned());
            list.sort_by_key(|p| (std::cmp::Reverse(p.priority), p.seq));
            if list.is_empty() {
                continue;
            }
            routes |= 1 << hook as u32;
            if list.iter().all(|p| p.retained_only_hooks.contains(hook)) {
                retained_only |= 1 << hook as u32;
            }
            // A plugin that answers later does not block (its `blocking_hooks` are for older
            // hosts); any other on `client.authenticate` is taken to block, declared or not.
            let answers_later = |p: &Arc<PluginHandle>| p.later_hooks.contains(hook);
            let blocks = |p: &Arc<PluginHandle>| {
                !answers_later(p)
                    && (hook == Hook::ClientAuthenticate
                        || (CAN_BLOCK.contains(hook) && p.blocking_hooks.contains(hook)))
            };
            if list.iter().any(blocks) {
                routes |= 1 << (WAITS_SHIFT + hook as u32);
            } else if list.iter().any(answers_later) {
                routes |= 1 << (WAITS_SHIFT + hook as u32);
                later |= 1 << hook as u32;
            }
        }
        self.table.store(Arc::new(table));
        self.retained_only.store(retained_only, Ordering::Relaxed);
        self.later.store(later, Ordering::Relaxed);
        // A connection that read the old routes just before may still run a chain that now
        // blocks inline, once: only while a plugin starts.
        self.routes.store(routes, Ordering::Relaxed);
        self.invalidate_acl_answers();
    }

    /// Each running plugin's calls and time per hook: (plugin, hook, calls, nanoseconds).
    pub(crate) fn timings(&self) -> Vec<(String, Hook, u64, u64)> {
        let table = self.table.load();
        let mut timings = Vec::new();
        for plugin in &table.running {
            timings.extend(plugin.hook_timings().map(|(hook, calls, nanos)| (plugin.name.clone(), hook, calls, nanos)));
        }
        timings
    }

    /// The generation of `client.check_acl` answers: connections drop their cached answers
    /// when it changes. It changes with the hook table and on [`Hooks::invalidate_acl_answers`].
    #[inline]
    pub(crate) fn acl_generation(&self) -> u64 {
        self.acl_generation.load(Ordering::Acquire)
    }

    /// Makes every connection ask the `client.check_acl` chain again (rules were reloaded).
    pub(crate) fn invalidate_acl_answers(&self) {
        self.acl_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Runs the chain for `event.hook`: each plugin in turn until one answers something other
    /// than Continue.
    pub(crate) fn dispatch(&self, event: &RawEvent) -> Verdict {
        let table = self.table.load();
        let Some(list) = table.by_hook.get(event.hook as usize) else {
            return Verdict::Continue;
        };
        for plugin in list.iter().filter(|p| p.takes(event)) {
            if let Some(verdict) = self.verdict(plugin, event, plugin.on_event(event)) {
                return verdict;
            }
        }
        Verdict::Continue
    }

    /// Runs a chain whose plugins may replace the topic (or filter) with
    /// [`abi::HOOK_REPLACE`], and on `message.publish` also the payload and the QoS (see
    /// [`Rewritten`]); `valid` says which replacement topics (or filters) may be used. Each
    /// plugin after one that replaced sees the new values (EMQX's hook fold). Any other answer
    /// than Continue or Replace ends the chain with its verdict. `event.topic` and
    /// `event.payload` may then point into the returned [`Rewritten`]: the event must not be
    /// used once it is dropped. A replacement topic `valid` refuses, or a QoS above 2, is
    /// ignored with a warning.
    pub(crate) fn dispatch_rewriting(&self, event: &mut RawEvent, valid: fn(&str) -> bool) -> (Verdict, Rewritten) {
        let table = self.table.load();
        let mut rewritten = Rewritten::default();
        match self.run_chain(&table, 0, event, valid, &mut rewritten, false) {
            Step::Done(verdict) => (verdict, rewritten),
            // Not offered a later answer, no plugin can wait: only for the type's sake.
            Step::Waiting { .. } => (Verdict::Continue, rewritten),
        }
    }

    /// [`Hooks::dispatch_rewriting`] for a chain of [`Route::Later`] (or any other), on the
    /// calling task: a plugin that declared the hook in its `later_hooks` is offered a later
    /// answer, and the chain goes on once it comes, holding no thread meanwhile. An answer
    /// given before the plugin returned costs no wait. `event_for` makes the event afresh
    /// after each wait (an event is not kept across one); what earlier plugins replaced is
    /// applied to it.
    pub(crate) async fn dispatch_later(
        &self,
        event_for: impl Fn() -> RawEvent,
        valid: fn(&str) -> bool,
    ) -> (Verdict, Rewritten) {
        let table = self.table.load_full();
        let mut rewritten = Rewritten::default();
        let mut start = 0;
        loop {
            let step = {
                let mut event = rewritten.applied_to(event_for());
                self.run_chain(&table, start, &mut event, valid, &mut rewritten, true)
            };
            let (next, plugin, answer) = match step {
                Step::Done(verdict) => return (verdict, rewritten),
                Step::Waiting { next, plugin, answer } => (next, plugin, answer),
            };
            let Some(answer) = answer.wait(self.answer_timeout).await else {
                let hook = Hook::from_raw(event_for().hook);
                self.answer_timed_out(&plugin, hook);
                return (refusal(hook), rewritten);
            };
            let ended = {
                let mut event = rewritten.applied_to(event_for());
                self.take_answer(&plugin, &mut event, answer, valid, &mut rewritten)
            };
            if let Some(verdict) = ended {
                return (verdict, rewritten);
            }
            start = next;
        }
    }

    /// Counts and logs (once a minute per plugin) a later answer that did not come in time.
    fn answer_timed_out(&self, plugin: &PluginHandle, hook: Option<Hook>) {
        self.answers_timed_out.fetch_add(1, Ordering::Relaxed);
        if let Some(held_back) = self.timeouts_logged.check(plugin.name.clone(), std::time::Instant::now()) {
            let hook = hook.map_or("a hook", Hook::name);
            let timeout = self.answer_timeout.unwrap_or_default();
            tracing::warn!(
                plugin = plugin.name,
                "{hook}: no answer within broker.hook_answer_timeout ({timeout:?}); refused ({held_back} more since the \
                 last such line)"
            );
        }
    }

    /// Runs the plugins of `event.hook`'s chain from the `start`th of those that take it, until
    /// one ends the chain or (with `offer_later`) one will answer later.
    fn run_chain(
        &self,
        table: &HookTable,
        start: usize,
        event: &mut RawEvent,
        valid: fn(&str) -> bool,
        rewritten: &mut Rewritten,
        offer_later: bool,
    ) -> Step {
        let Some(list) = table.by_hook.get(event.hook as usize) else {
            return Step::Done(Verdict::Continue);
        };
        let messages = event.hook == Hook::MessagePublish as u32;
        let hook = Hook::from_raw(event.hook);
        for (index, plugin) in list.iter().enumerate().skip(start) {
            if !plugin.takes(event) {
                continue;
            }
            // The plugin's replacements are written straight into its answer.
            let mut answer = Answer::default();
            event.rewrite = RawWriter::for_string(&mut answer.topic);
            if messages {
                event.rewrite_payload = RawBytesWriter::for_option(&mut answer.payload);
                event.rewrite_qos = RawBytesWriter::for_option(&mut answer.qos);
            }
            let later = (offer_later && hook.is_some_and(|h| plugin.later_hooks.contains(h))).then(Ticket::offer);
            if let Some((ticket, _)) = &later {
                event.ticket = *ticket;
                event.answer = Some(answer_later);
            }
            let result = plugin.on_event(event);
            event.rewrite = RawWriter::DISCARD;
            event.rewrite_payload = RawBytesWriter::DISCARD;
            event.rewrite_qos = RawBytesWriter::DISCARD;
            event.ticket = std::ptr::null_mut();
            event.answer = None;
            match (result, later) {
                (Some(abi::HOOK_LATER), Some((_, mut receiver))) => match receiver.try_recv() {
                    // Answered before it returned: on with the chain at once.
                    Ok(later) => answer = answer.overridden_by(later),
                    Err(_) => {
                        let answer = Pending { written: answer, receiver };
                        return Step::Waiting { next: index + 1, plugin: plugin.clone(), answer };
                    }
                },
                (result, later) => {
                    if let Some((ticket, _)) = later {
                        // SAFETY: not answered later, so the ticket is still the host's.
                        drop(unsafe { Box::from_raw(ticket.cast::<Ticket>()) });
                    }
                    answer.result = result;
                }
            }
            if let Some(verdict) = self.take_answer(plugin, event, answer, valid, rewritten) {
                return Step::Done(verdict);
            }
        }
        Step::Done(Verdict::Continue)
    }

    /// Applies one plugin's answer: `Some` ends the chain with that verdict; a replacement is
    /// kept in `rewritten` and shown to the plugins after it through `event`.
    fn take_answer(
        &self,
        plugin: &Arc<PluginHandle>,
        event: &mut RawEvent,
        answer: Answer,
        valid: fn(&str) -> bool,
        rewritten: &mut Rewritten,
    ) -> Option<Verdict> {
        if answer.result != Some(abi::HOOK_REPLACE)
            || !Hook::from_raw(event.hook).is_some_and(|h| REWRITING.contains(h))
        {
            return self.verdict(plugin, event, answer.result);
        }
        let hook = || Hook::from_raw(event.hook).map_or("a hook", Hook::name);
        let Answer { topic, payload, qos, .. } = answer;
        if !topic.is_empty() {
            if valid(&topic) {
                rewritten.topic = Some(topic);
            } else {
                tracing::warn!(plugin = plugin.name, topic, "{}: invalid replacement topic ignored", hook());
            }
        }
        if let Some(payload) = payload {
            rewritten.payload = Some(payload);
        }
        match qos.as_deref() {
            None => {}
            Some(&[qos]) if qos <= 2 => rewritten.qos = Some(qos),
            Some(other) => {
                tracing::warn!(plugin = plugin.name, "{}: invalid replacement QoS {other:?} ignored", hook())
            }
        }
        // The heap buffers of `rewritten` do not move with it: the event may point at them.
        *event = rewritten.applied_to(*event);
        None
    }

    /// What a chain does with one plugin's answer: `Some` ends the chain with that verdict.
    fn verdict(&self, plugin: &Arc<PluginHandle>, event: &RawEvent, answer: Option<u32>) -> Option<Verdict> {
        match answer {
            None | Some(abi::HOOK_CONTINUE) => None,
            Some(abi::HOOK_ALLOW) => Some(Verdict::Allow),
            Some(abi::HOOK_DENY) => Some(Verdict::Deny),
            Some(abi::HOOK_DROP) => Some(Verdict::Drop),
            Some(abi::HOOK_SUPERUSER) => Some(Verdict::Superuser),
            Some(abi::HOOK_PANICKED) => {
                let hook = Hook::from_raw(event.hook).map_or("a hook", Hook::name);
                plugin.fail(format!("panicked in {hook}"));
                let _ = self.failed.send(plugin.clone());
                None
            }
            Some(abi::HOOK_REPLACE) => {
                let hook = Hook::from_raw(event.hook).map_or("a hook", Hook::name);
                tracing::warn!(plugin = plugin.name, "replace answered to {hook}, which has no topic to replace");
                None
            }
            Some(other) => {
                tracing::warn!(plugin = plugin.name, "unknown hook answer {other}, treated as continue");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn answer_continue(_state: *mut std::ffi::c_void, _event: *const RawEvent) -> u32 {
        abi::HOOK_CONTINUE
    }

    fn plugin(name: &str, hooks: &[Hook], blocking: &[Hook], seq: u64) -> Arc<PluginHandle> {
        let (hooks, blocking) = (HookMask::of(hooks), HookMask::of(blocking));
        Arc::new(PluginHandle::new(name.to_owned(), hooks, blocking, 0, seq, answer_continue, std::ptr::null_mut()))
    }

    #[test]
    fn a_chain_is_blocking_when_one_of_its_plugins_declared_the_hook_and_the_host_can_run_it_so() {
        let hooks = Hooks::new(tokio::sync::mpsc::unbounded_channel().0);
        let fast = plugin("fast", &[Hook::ClientCheckAcl, Hook::MessagePublish, Hook::ClientAuthenticate], &[], 1);
        let slow = plugin(
            "slow",
            &[Hook::ClientCheckAcl, Hook::MessageDelivered],
            // message.delivered cannot run off the network threads; message.publish is not wanted.
            &[Hook::ClientCheckAcl, Hook::MessageDelivered, Hook::MessagePublish],
            2,
        );
        hooks.install(std::slice::from_ref(&fast));
        assert_eq!(hooks.route(Hook::ClientCheckAcl), Route::Inline);
        assert_eq!(hooks.route(Hook::ClientAuthenticate), Route::Blocking, "always off the network threads");
        assert_eq!(hooks.route(Hook::ClientConnect), Route::Skip);

        hooks.install(&[fast.clone(), slow]);
        assert_eq!(hooks.route(Hook::ClientCheckAcl), Route::Blocking, "the whole chain, fast plugin included");
        assert_eq!(hooks.route(Hook::MessagePublish), Route::Inline, "declared, but not wanted");
        assert_eq!(hooks.route(Hook::MessageDelivered), Route::Inline, "declared, but the host runs it inline");
        assert!(hooks.wants(Hook::MessageDelivered));

        hooks.install(&[fast]);
        assert_eq!(hooks.route(Hook::ClientCheckAcl), Route::Inline, "back inline once the slow plugin stops");
    }

    unsafe extern "C" fn count_call(state: *mut std::ffi::c_void, _event: *const RawEvent) -> u32 {
        // SAFETY: the test's state is a live AtomicUsize.
        unsafe { &*(state as *const std::sync::atomic::AtomicUsize) }.fetch_add(1, Ordering::Relaxed);
        abi::HOOK_CONTINUE
    }

    #[test]
    fn a_plugin_that_wants_only_retained_messages_gets_only_those() {
        let hooks = Hooks::new(tokio::sync::mpsc::unbounded_channel().0);
        let calls = Box::leak(Box::new(std::sync::atomic::AtomicUsize::new(0)));
        let state = calls as *mut std::sync::atomic::AtomicUsize as *mut std::ffi::c_void;
        let publish = HookMask::of(&[Hook::MessagePublish]);
        let retainer = Arc::new(
            PluginHandle::new("retainer".to_owned(), publish, HookMask::NONE, 0, 1, count_call, state)
                .with_retained_only(publish),
        );
        hooks.install(std::slice::from_ref(&retainer));
        assert!(hooks.wants_message(Hook::MessagePublish, true));
        assert!(!hooks.wants_message(Hook::MessagePublish, false), "no event for a message nobody takes");

        let broker = crate::client::ClientInfo::broker();
        let mut event = broker.event(Hook::MessagePublish, 0);
        hooks.dispatch_rewriting(&mut event, |_| true);
        assert_eq!(calls.load(Ordering::Relaxed), 0, "not retained: not called");
        event.retain = 1;
        hooks.dispatch_rewriting(&mut event, |_| true);
        hooks.dispatch(&event);
        assert_eq!(calls.load(Ordering::Relaxed), 2, "retained: called");

        // With a plugin that wants every message on the hook, events are made again, and the
        // retainer still gets only retained ones.
        hooks.install(&[retainer, plugin("all", &[Hook::MessagePublish], &[], 2)]);
        assert!(hooks.wants_message(Hook::MessagePublish, false));
        event.retain = 0;
        hooks.dispatch_rewriting(&mut event, |_| true);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn run_blocking_answers_from_another_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let hooks = Hooks::new(tokio::sync::mpsc::unbounded_channel().0);
        let caller = std::thread::current().id();
        let ran_on = runtime.block_on(hooks.run_blocking(Hook::ClientCheckAcl, std::thread::current));
        assert_ne!(ran_on.expect("the chain ran").id(), caller, "on a blocking-pool thread");
    }

    /// A plugin that answers later: it hands the ticket to a thread, which replaces the topic
    /// with `later/<topic>` (and the QoS with 0); offered no ticket, it answers Continue.
    unsafe extern "C" fn answer_on_a_thread(_state: *mut std::ffi::c_void, event: *const RawEvent) -> u32 {
        // SAFETY: the host's event, valid for this call.
        let event = unsafe { &*event };
        let Some(answer) = event.answer else {
            return abi::HOOK_CONTINUE;
        };
        // SAFETY: as above.
        let topic = format!("later/{}", unsafe { event.topic.as_str() });
        let ticket = event.ticket as usize;
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let reply = abi::RawAnswer {
                size: std::mem::size_of::<abi::RawAnswer>() as u32,
                result: abi::HOOK_REPLACE,
                topic: RawStr::new(&topic),
                payload: RawBytes::EMPTY,
                replace_payload: 0,
                qos: 0,
            };
            // SAFETY: the ticket of the event above, answered once.
            unsafe { answer(ticket as *mut std::ffi::c_void, &reply) };
        });
        abi::HOOK_LATER
    }

    /// A later answer that changes nothing of the message: only `result`.
    fn verdict_only(result: u32) -> abi::RawAnswer {
        abi::RawAnswer {
            size: std::mem::size_of::<abi::RawAnswer>() as u32,
            result,
            topic: RawStr::EMPTY,
            payload: RawBytes::EMPTY,
            replace_payload: 0,
            qos: abi::ANSWER_QOS_UNCHANGED,
        }
    }

    /// A plugin that answers later, but before it returns: Deny.
    unsafe extern "C" fn answer_before_returning(_state: *mut std::ffi::c_void, event: *const RawEvent) -> u32 {
        // SAFETY: the host's event, valid for this call.
        let event = unsafe { &*event };
        let Some(answer) = event.answer else {
            return abi::HOOK_DENY;
        };
        let reply = verdict_only(abi::HOOK_DENY);
        // SAFETY: the event's ticket, answered once.
        unsafe { answer(event.ticket, &reply) };
        abi::HOOK_LATER
    }

    /// Records the topic each call sees (the state is a leaked `Mutex<Vec<String>>`).
    unsafe extern "C" fn record_topic(state: *mut std::ffi::c_void, event: *const RawEvent) -> u32 {
        // SAFETY: the test's state and the host's event, both live for the call.
        let (seen, event) = unsafe { (&*(state as *const std::sync::Mutex<Vec<String>>), &*event) };
        // SAFETY: as above.
        seen.lock().unwrap().push(unsafe { event.topic.as_str() }.to_owned());
        abi::HOOK_CONTINUE
    }

    fn later_plugin(name: &str, hook: Hook, on_event: handle::OnEvent, seq: u64) -> Arc<PluginHandle> {
        let hooks = HookMask::of(&[hook]);
        Arc::new(
            PluginHandle::new(name.to_owned(), hooks, hooks, 1, seq, on_event, std::ptr::null_mut()).with_later(hooks),
        )
    }

    #[test]
    fn a_later_answer_is_awaited_and_the_chain_goes_on_with_it() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let hooks = Hooks::new(tokio::sync::mpsc::unbounded_channel().0);
        let seen: &'static std::sync::Mutex<Vec<String>> = Box::leak(Box::default());
        let state = seen as *const std::sync::Mutex<Vec<String>> as *mut std::ffi::c_void;
        let publish = HookMask::of(&[Hook::MessagePublish]);
        let recorder =
            Arc::new(PluginHandle::new("recorder".to_owned(), publish, HookMask::NONE, 0, 2, record_topic, state));
        hooks.install(&[later_plugin("later", Hook::MessagePublish, answer_on_a_thread, 1), recorder]);
        assert_eq!(hooks.route(Hook::MessagePublish), Route::Later, "declared blocking too: later wins");

        let broker = crate::client::ClientInfo::broker();
        let event_for = || {
            let mut event = broker.event(Hook::MessagePublish, 0);
            event.topic = RawStr::new("t/1");
            event.qos = 1;
            event
        };
        let (verdict, rewritten) = runtime.block_on(hooks.dispatch_later(event_for, |_| true));
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(rewritten, Rewritten { topic: Some("later/t/1".to_owned()), payload: None, qos: Some(0) });
        assert_eq!(*seen.lock().unwrap(), ["later/t/1"], "the plugin after it saw the later answer's topic");

        // Where the host cannot wait it offers no ticket: the plugin answers at once.
        let mut event = event_for();
        assert_eq!(hooks.dispatch_rewriting(&mut event, |_| true), (Verdict::Continue, Rewritten::default()));
    }

    #[test]
    fn a_later_answer_given_before_returning_needs_no_wait() {
        let hooks = Hooks::new(tokio::sync::mpsc::unbounded_channel().0);
        hooks.install(&[later_plugin("acl", Hook::ClientCheckAcl, answer_before_returning, 1)]);
        assert_eq!(hooks.route(Hook::ClientCheckAcl), Route::Later);
        let broker = crate::client::ClientInfo::broker();
        let ask = hooks.dispatch_later(|| broker.event(Hook::ClientCheckAcl, 0), |_| false);
        let mut ask = std::pin::pin!(ask);
        let waker = std::task::Waker::noop();
        let answered = std::future::Future::poll(ask.as_mut(), &mut std::task::Context::from_waker(waker));
        assert!(matches!(answered, std::task::Poll::Ready((Verdict::Deny, _))), "ready at the first poll");
    }

    /// A plugin that takes the ticket and does not answer (its state: a leaked
    /// `Mutex<Vec<(ticket, answer fn)>>` where it keeps them).
    unsafe extern "C" fn never_answer(state: *mut std::ffi::c_void, event: *const RawEvent) -> u32 {
        // SAFETY: the test's state and the host's event, both live for the call.
        let (kept, event) = unsafe { (&*(state as *const KeptTickets), &*event) };
        let Some(answer) = event.answer else { return abi::HOOK_CONTINUE };
        kept.lock().unwrap().push((event.ticket as usize, answer));
        abi::HOOK_LATER
    }

    type KeptTickets = std::sync::Mutex<Vec<(usize, unsafe extern "C" fn(*mut std::ffi::c_void, *const RawAnswer))>>;

    /// `broker.hook_answer_timeout`: a client is not held for ever by a plugin that never
    /// answers; the chain ends as a refusal, counted; the plugin's answer, when it comes at
    /// last, is safe (the ticket was still its own) and changes nothing.
    #[test]
    fn a_later_answer_that_does_not_come_in_time_refuses() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let hooks = Hooks::new(tokio::sync::mpsc::unbounded_channel().0)
            .with_answer_timeout(Some(std::time::Duration::from_millis(20)));
        let kept: &'static KeptTickets = Box::leak(Box::default());
        let state = kept as *const KeptTickets as *mut std::ffi::c_void;
        let both = HookMask::of(&[Hook::ClientCheckAcl, Hook::MessagePublish]);
        let silent = Arc::new(
            PluginHandle::new("silent".to_owned(), both, HookMask::NONE, 1, 1, never_answer, state).with_later(both),
        );
        hooks.install(&[silent]);
        let broker = crate::client::ClientInfo::broker();
        let (acl, _) = runtime.block_on(hooks.dispatch_later(|| broker.event(Hook::ClientCheckAcl, 0), |_| false));
        assert_eq!(acl, Verdict::Deny);
        let (publish, _) = runtime.block_on(hooks.dispatch_later(|| broker.event(Hook::MessagePublish, 0), |_| true));
        assert_eq!(publish, Verdict::Drop, "a message no plugin vouched for in time is not published");
        assert_eq!(hooks.answers_timed_out(), 2);
        let reply = verdict_only(abi::HOOK_ALLOW);
        for (ticket, answer) in kept.lock().unwrap().drain(..) {
            // SAFETY: each ticket answered once, by its holder, late.
            unsafe { answer(ticket as *mut std::ffi::c_void, &reply) };
        }
    }

    #[test]
    fn a_plugin_that_blocks_keeps_the_chain_off_the_network_threads_whatever_the_others_answer_later() {
        let hooks = Hooks::new(tokio::sync::mpsc::unbounded_channel().0);
        let later = later_plugin("later", Hook::ClientCheckAcl, answer_before_returning, 1);
        hooks.install(&[later.clone(), plugin("slow", &[Hook::ClientCheckAcl], &[Hook::ClientCheckAcl], 2)]);
        assert_eq!(hooks.route(Hook::ClientCheckAcl), Route::Blocking);
        hooks.install(&[later.clone(), plugin("auth", &[Hook::ClientAuthenticate], &[], 2)]);
        assert_eq!(hooks.route(Hook::ClientAuthenticate), Route::Blocking, "an undeclared authenticator may block");
        hooks.install(&[later_plugin("auth", Hook::ClientAuthenticate, answer_before_returning, 1)]);
        assert_eq!(hooks.route(Hook::ClientAuthenticate), Route::Later, "one that answers later does not");
    }
}
