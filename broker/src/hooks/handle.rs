//! What hook dispatch needs of a running plugin, and nothing more: its name, hooks and
//! priority, its `on_event` entry point and state, and the bookkeeping that lets the host
//! stop it safely while hook calls are in flight on other threads.
//!
//! The protocol: a caller increments `inflight`, then checks `active`; only if active does it
//! call in, and it decrements `inflight` afterwards. `deactivate` clears `active`, then waits
//! for `inflight` to reach zero. Both use `SeqCst`, so after `deactivate` returns no call is
//! running and none will start: `stop` may then free the plugin's state.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use plugin_api::abi::RawEvent;
use plugin_api::{Hook, HookMask};

/// The clock hook calls are timed with: the CPU's time-stamp counter where it is usable
/// (a few nanoseconds a read, no system call), calibrated against the monotonic clock.
fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// One call in this many is timed: two clock reads cost about as much as a small plugin's
/// whole call, so the total time is estimated from a sample (every call is counted).
const TIMED_ONE_IN: u64 = 16;

/// Calls into one plugin for one hook, and the time the sampled calls took in clock ticks.
#[derive(Debug, Default)]
struct HookTiming {
    calls: AtomicU64,
    timed_calls: AtomicU64,
    timed_ticks: AtomicU64,
}

thread_local! {
    /// How many calls into plugins (`init`, `on_event`, `ctl`, `stop`) this thread is inside.
    static IN_PLUGIN_CALL: Cell<u32> = const { Cell::new(0) };
}

/// Marks the current thread as inside a call into a plugin until dropped. The host refuses
/// the calls that would wait for the plugin manager ([`in_plugin_call`]) on such a thread.
pub(crate) struct PluginCall(());

impl PluginCall {
    #[inline]
    pub(crate) fn enter() -> PluginCall {
        IN_PLUGIN_CALL.with(|depth| depth.set(depth.get() + 1));
        PluginCall(())
    }
}

impl Drop for PluginCall {
    #[inline]
    fn drop(&mut self) {
        IN_PLUGIN_CALL.with(|depth| depth.set(depth.get() - 1));
    }
}

/// Whether this thread is inside a plugin's `init`, hook, command or `stop`: there, a call
/// that loads, unloads or lists plugins would wait for the very call it is made from.
pub(crate) fn in_plugin_call() -> bool {
    IN_PLUGIN_CALL.with(|depth| depth.get() > 0)
}

/// A plugin's `on_event` entry point.
pub(crate) type OnEvent = unsafe extern "C" fn(state: *mut c_void, event: *const RawEvent) -> u32;

/// A started plugin, as the hook table holds it.
#[derive(Debug)]
pub(crate) struct PluginHandle {
    pub(crate) name: String,
    pub(crate) hooks: HookMask,
    /// The hooks whose `on_event` may block: their chains run off the network threads.
    pub(crate) blocking_hooks: HookMask,
    /// The hooks for which it gets only messages published with the retain flag.
    pub(crate) retained_only_hooks: HookMask,
    /// The hooks it may answer later ([`plugin_api::abi::HOOK_LATER`]), among those the host
    /// offers it for.
    pub(crate) later_hooks: HookMask,
    /// Higher runs first.
    pub(crate) priority: i32,
    /// Load order, to break priority ties.
    pub(crate) seq: u64,
    on_event: OnEvent,
    state: AtomicPtr<c_void>,
    active: AtomicBool,
    inflight: AtomicUsize,
    failure: Mutex<Option<String>>,
    timings: [HookTiming; Hook::ALL.len()],
}

impl PluginHandle {
    pub(crate) fn new(
        name: String,
        hooks: HookMask,
        blocking_hooks: HookMask,
        priority: i32,
        seq: u64,
        on_event: OnEvent,
        state: *mut c_void,
    ) -> PluginHandle {
        PluginHandle {
            name,
            hooks,
            blocking_hooks,
            retained_only_hooks: HookMask::NONE,
            later_hooks: HookMask::NONE,
            priority,
            seq,
            on_event,
            state: AtomicPtr::new(state),
            active: AtomicBool::new(true),
            inflight: AtomicUsize::new(0),
            failure: Mutex::new(None),
            timings: Default::default(),
        }
    }

    /// The same plugin, called for `hooks` only with messages published with the retain flag.
    pub(crate) fn with_retained_only(mut self, hooks: HookMask) -> PluginHandle {
        self.retained_only_hooks = hooks;
        self
    }

    /// The same plugin, offered a later answer for `hooks`.
    pub(crate) fn with_later(mut self, hooks: HookMask) -> PluginHandle {
        self.later_hooks = hooks;
        self
    }

    /// Whether it is to be called for `event` (not when it wants only retained messages of
    /// the event's hook and this one is not).
    pub(crate) fn takes(&self, event: &RawEvent) -> bool {
        event.retain != 0 || Hook::from_raw(event.hook).is_none_or(|hook| !self.retained_only_hooks.contains(hook))
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Runs `f` with the plugin's state if the plugin is active, tracking the call as in
    /// flight. `None` when the plugin is stopping or stopped.
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(*mut c_void) -> T) -> Option<T> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let result = if self.active.load(Ordering::SeqCst) {
            let _call = PluginCall::enter();
            Some(f(self.state.load(Ordering::Acquire)))
        } else {
            None
        };
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Delivers one event; `None` when the plugin is no longer active.
    #[inline]
    pub(crate) fn on_event(&self, event: &RawEvent) -> Option<u32> {
        let on_event = self.on_event;
        // SAFETY: with_state only runs this between init and stop (the library checked the
        // descriptor this function pointer came from); the event is valid for the call.
        let call = || self.with_state(|state| unsafe { on_event(state, event) });
        let Some(timing) = self.timings.get(event.hook as usize) else {
            return call();
        };
        if timing.calls.fetch_add(1, Ordering::Relaxed) % TIMED_ONE_IN != 0 {
            return call();
        }
        let clock = clock();
        let start = clock.raw();
        let answer = call();
        timing.timed_ticks.fetch_add(clock.raw().saturating_sub(start), Ordering::Relaxed);
        timing.timed_calls.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// For each hook this plugin was called for: the hook, the calls, and the nanoseconds
    /// they took, measured by the host around every 16th call (the first included) and
    /// scaled to all of them.
    pub(crate) fn hook_timings(&self) -> impl Iterator<Item = (Hook, u64, u64)> + '_ {
        let clock = clock();
        Hook::ALL.iter().zip(&self.timings).filter_map(move |(&hook, timing)| {
            let calls = timing.calls.load(Ordering::Relaxed);
            let timed_calls = timing.timed_calls.load(Ordering::Relaxed);
            let timed_nanos = clock.delta_as_nanos(0, timing.timed_ticks.load(Ordering::Relaxed));
            let nanos = (u128::from(timed_nanos) * u128::from(calls)).checked_div(u128::from(timed_calls)).unwrap_or(0);
            (calls > 0).then_some((hook, calls, nanos.min(u128::from(u64::MAX)) as u64))
        })
    }

    /// Records why the plugin failed and stops new calls into it. The manager then stops it.
    pub(crate) fn fail(&self, why: String) {
        self.active.store(false, Ordering::SeqCst);
        crate::lock(&self.failure).get_or_insert(why);
    }

    /// Why the plugin failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        crate::lock(&self.failure).clone()
    }

    /// Stops new calls and waits until the calls in flight have returned.
    pub(crate) fn deactivate(&self) {
        self.active.store(false, Ordering::SeqCst);
        while self.inflight.load(Ordering::SeqCst) != 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Deactivates the plugin and hands back its state, once (null afterwards).
    pub(crate) fn take_state(&self) -> *mut c_void {
        self.deactivate();
        self.state.swap(std::ptr::null_mut(), Ordering::AcqRel)
    }
}
