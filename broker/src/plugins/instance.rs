//! One running plugin: its state pointer, its host vtable, and the bookkeeping that lets the
//! host stop it safely while hook calls are in flight on other threads.
//!
//! The protocol: a caller increments `inflight`, then checks `active`; only if active does it
//! call in, and it decrements `inflight` afterwards. `deactivate` clears `active`, then waits
//! for `inflight` to reach zero. Both use `SeqCst`, so after `deactivate` returns no call is
//! running and none will start: `stop` may then free the plugin's state.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_api::abi::{self, HostApi, RawEvent, RawStr, RawWriter};

use super::host_api::{self, HostShared, PluginContext};
use super::library::PluginLibrary;

/// A started plugin.
#[derive(Debug)]
pub struct Instance {
    pub library: Arc<PluginLibrary>,
    /// Load order, to break priority ties.
    pub seq: u64,
    state: AtomicPtr<c_void>,
    active: AtomicBool,
    inflight: AtomicUsize,
    failure: Mutex<Option<String>>,
    // Kept at a stable address for the plugin, which holds pointers into them until stop.
    _host_api: Box<HostApi>,
    _context: Box<PluginContext>,
}

impl Instance {
    /// Calls the plugin's `init`. On failure returns the plugin's message.
    pub fn start(
        library: Arc<PluginLibrary>,
        shared: Arc<HostShared>,
        config_json: &str,
        seq: u64,
    ) -> Result<Instance, String> {
        let context = Box::new(PluginContext::new(library.meta.name.clone(), shared));
        let host_api = Box::new(host_api::vtable(&context));
        let mut state: *mut c_void = std::ptr::null_mut();
        let mut error = String::new();
        // SAFETY: the descriptor was checked by PluginLibrary::open; host_api and context are
        // boxed and live as long as the Instance, which outlives the plugin's stop; state and
        // error are valid out-parameters for the call.
        let status = unsafe {
            (library.descriptor().init)(
                &*host_api,
                RawStr::new(config_json),
                &mut state,
                RawWriter::for_string(&mut error),
            )
        };
        match status {
            abi::STATUS_OK => Ok(Instance {
                library,
                seq,
                state: AtomicPtr::new(state),
                active: AtomicBool::new(true),
                inflight: AtomicUsize::new(0),
                failure: Mutex::new(None),
                _host_api: host_api,
                _context: context,
            }),
            abi::STATUS_PANICKED => Err(format!("init {error}")),
            _ if error.is_empty() => Err("init failed".to_owned()),
            _ => Err(format!("init failed: {error}")),
        }
    }

    pub fn name(&self) -> &str {
        &self.library.meta.name
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Runs `f` with the plugin's state if the plugin is active, tracking the call as in
    /// flight. `None` when the plugin is stopping or stopped.
    fn with_state<T>(&self, f: impl FnOnce(*mut c_void) -> T) -> Option<T> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let result =
            if self.active.load(Ordering::SeqCst) { Some(f(self.state.load(Ordering::Acquire))) } else { None };
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Delivers one event; `None` when the plugin is no longer active.
    #[inline]
    pub fn on_event(&self, event: &RawEvent) -> Option<u32> {
        let on_event = self.library.descriptor().on_event;
        // SAFETY: with_state only runs this between init and stop; the event is valid for the
        // call.
        self.with_state(|state| unsafe { on_event(state, event) })
    }

    /// Runs the plugin's `ctl` command.
    pub fn ctl(&self, args: &[String]) -> Result<String, String> {
        let args = serde_json::to_string(args).map_err(|e| e.to_string())?;
        let ctl = self.library.descriptor().ctl;
        let mut out = String::new();
        let writer = RawWriter::for_string(&mut out);
        // SAFETY: as in on_event; args and the writer live through the call.
        let status = self
            .with_state(|state| unsafe { ctl(state, RawStr::new(&args), writer) })
            .ok_or_else(|| format!("plugin {} is stopping", self.name()))?;
        match status {
            abi::STATUS_OK => Ok(out),
            abi::STATUS_PANICKED => {
                self.fail(format!("ctl {out}"));
                Err(format!("plugin {} {out}; it has been stopped", self.name()))
            }
            _ => Err(out),
        }
    }

    /// Records why the plugin failed and stops new calls into it. The manager then stops it.
    pub fn fail(&self, why: String) {
        self.active.store(false, Ordering::SeqCst);
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(why);
    }

    /// Why the plugin failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops new calls and waits until the calls in flight have returned.
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::SeqCst);
        while self.inflight.load(Ordering::SeqCst) != 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Deactivates the plugin, then calls its `stop` (once). Returns the plugin's status.
    pub fn stop(&self) -> abi::Status {
        self.deactivate();
        let state = self.state.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if state.is_null() {
            return abi::STATUS_OK;
        }
        // SAFETY: no call is in flight and none can start (deactivate); state is the pointer
        // init returned, handed back exactly once thanks to the swap.
        unsafe { (self.library.descriptor().stop)(state) }
    }
}
