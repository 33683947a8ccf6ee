//! Hook dispatch: which running plugins get which hook, in priority order.
//!
//! This is on the hot path of every message. The table is swapped whole (`ArcSwap`) when a
//! plugin starts or stops, so a dispatch takes no lock and allocates nothing; a hook no
//! plugin wants costs one relaxed atomic load ([`Hooks::wants`]).
//!
//! A chain with a plugin that declared the hook blocking ([`Hooks::route`] says
//! [`Route::Blocking`], from the same load) is run with [`Hooks::run_blocking`] on the
//! runtime's blocking pool, off the network threads. At most [`BLOCKING_CHAINS`] chains of
//! one hook run there at once; the clients beyond wait in a fair queue (a semaphore) that
//! holds no thread, so a thousand clients waiting on a slow ACL service hold 64 threads, not
//! a thousand, and leave the rest of the pool (512 threads) to the other hooks and to tokio.
//!
//! A running plugin is, to dispatch, its [`handle::PluginHandle`] (`handle`): what the plugin
//! manager (`plugins`, which depends on this module) makes when it starts one.

pub(crate) mod handle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use plugin_api::abi::{self, RawBytes, RawBytesWriter, RawEvent, RawStr, RawWriter};
use plugin_api::{Hook, HookMask};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;

use handle::PluginHandle;

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
}

/// The hooks whose chains the host runs off the network threads when a plugin declares them
/// blocking. `client.authenticate` always runs there.
pub(crate) const CAN_BLOCK: HookMask =
    HookMask::of(&[Hook::ClientConnect, Hook::ClientAuthenticate, Hook::ClientCheckAcl, Hook::MessagePublish]);

/// The hooks for which the host calls a plugin only with retained messages when it asks
/// (`PluginDescriptor::retained_only_hooks`).
pub(crate) const RETAINED_ONLY: HookMask = HookMask::of(&[Hook::MessagePublish]);

/// How many chains of one hook may run on the blocking pool at once.
pub(crate) const BLOCKING_CHAINS: usize = 64;

/// Where the per-hook bits of "a plugin in the chain may block" start in `Hooks::routes`.
const BLOCKING_SHIFT: u32 = 32;

#[derive(Debug, Default)]
struct HookTable {
    by_hook: [Vec<Arc<PluginHandle>>; Hook::ALL.len()],
    /// Every running plugin, in load order.
    running: Vec<Arc<PluginHandle>>,
}

/// The dispatcher shared by every connection.
#[derive(Debug)]
pub(crate) struct Hooks {
    /// Bit `hook`: a plugin wants it; bit `BLOCKING_SHIFT + hook`: its chain may block.
    routes: AtomicU64,
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
}

impl Hooks {
    pub(crate) fn new(failed: UnboundedSender<Arc<PluginHandle>>) -> Hooks {
        Hooks {
            routes: AtomicU64::new(0),
            retained_only: AtomicU64::new(0),
            blocking_slots: std::array::from_fn(|_| Arc::new(Semaphore::new(BLOCKING_CHAINS))),
            table: ArcSwap::from_pointee(HookTable::default()),
            acl_generation: AtomicU64::new(0),
            failed,
        }
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

    /// How `hook`'s chain runs: not at all, inline, or off the network threads. One relaxed
    /// atomic load, as [`Hooks::wants`].
    #[inline]
    pub(crate) fn route(&self, hook: Hook) -> Route {
        let routes = self.routes.load(Ordering::Relaxed);
        if routes & (1 << hook as u32) == 0 {
            Route::Skip
        } else if routes & (1 << (BLOCKING_SHIFT + hook as u32)) == 0 {
            Route::Inline
        } else {
            Route::Blocking
        }
    }

    /// Runs `chain` (a hook chain that may block, for `hook`) on the runtime's blocking pool
    /// and waits for its answer without holding a network thread. Waiting for one of the
    /// hook's [`BLOCKING_CHAINS`] slots holds no thread either. `None` only when the runtime
    /// shuts down under it.
    pub(crate) async fn run_blocking<R: Send + 'static>(
        &self,
        hook: Hook,
        chain: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let slot = self.blocking_slots[hook as usize].clone().acquire_owned().await.ok()?;
        let ran = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            chain()
        });
        match ran.await {
            Ok(answer) => Some(answer),
            Err(e) => {
                tracing::warn!("{} did not finish: {e}", hook.name());
                None
            }
        }
    }

    /// Replaces the table with `running` (in load order), sorted by priority.
    pub(crate) fn install(&self, running: &[Arc<PluginHandle>]) {
        let mut table = HookTable { running: running.to_vec(), ..Default::default() };
        let mut routes = 0u64;
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
            let blocking = hook == Hook::ClientAuthenticate
                || (CAN_BLOCK.contains(hook) && list.iter().any(|p| p.blocking_hooks.contains(hook)));
            if blocking {
                routes |= 1 << (BLOCKING_SHIFT + hook as u32);
            }
        }
        self.table.store(Arc::new(table));
        self.retained_only.store(retained_only, Ordering::Relaxed);
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
        let Some(list) = table.by_hook.get(event.hook as usize) else {
            return (Verdict::Continue, rewritten);
        };
        let messages = event.hook == Hook::MessagePublish as u32;
        let mut written = String::new();
        let (mut payload, mut qos): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
        for plugin in list {
            if !plugin.takes(event) {
                continue;
            }
            event.rewrite = RawWriter::for_string(&mut written);
            if messages {
                event.rewrite_payload = RawBytesWriter::for_option(&mut payload);
                event.rewrite_qos = RawBytesWriter::for_option(&mut qos);
            }
            let answer = plugin.on_event(event);
            event.rewrite = RawWriter::DISCARD;
            event.rewrite_payload = RawBytesWriter::DISCARD;
            event.rewrite_qos = RawBytesWriter::DISCARD;
            let (topic, new_payload, new_qos) = (std::mem::take(&mut written), payload.take(), qos.take());
            if answer != Some(abi::HOOK_REPLACE) {
                if let Some(verdict) = self.verdict(plugin, event, answer) {
                    return (verdict, rewritten);
                }
                continue;
            }
            let hook = || Hook::from_raw(event.hook).map_or("a hook", Hook::name);
            if !topic.is_empty() {
                if valid(&topic) {
                    // The String's heap buffer does not move with the String: the event may
                    // point at it.
                    event.topic = RawStr::new(&topic);
                    rewritten.topic = Some(topic);
                } else {
                    tracing::warn!(plugin = plugin.name, topic, "{}: invalid replacement topic ignored", hook());
                }
            }
            if let Some(new_payload) = new_payload {
                event.payload = RawBytes::new(&new_payload);
                rewritten.payload = Some(new_payload);
            }
            match new_qos.as_deref() {
                None => {}
                Some(&[new_qos]) if new_qos <= 2 => {
                    event.qos = new_qos;
                    rewritten.qos = Some(new_qos);
                }
                Some(other) => {
                    tracing::warn!(plugin = plugin.name, "{}: invalid replacement QoS {other:?} ignored", hook())
                }
            }
        }
        (Verdict::Continue, rewritten)
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
}
