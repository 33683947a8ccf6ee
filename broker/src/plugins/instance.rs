//! One running plugin: its library, its hook handle (`hooks::handle`), and the host vtable and
//! context it holds pointers into.
//!
//! The vtable and context are never freed: a plugin that leaves a thread running past its
//! `stop` (against the rules) and calls the host from it reaches a context marked stopped,
//! and gets `STATUS_UNAVAILABLE`, never freed memory. That costs about 250 bytes a plugin
//! start, as the never-unmapped libraries cost their mapping.

use std::sync::Arc;

use plugin_api::abi::{self, HostApi, RawStr, RawWriter};
use plugin_api::{Hook, HookMask};

use super::host_api::{self, HostShared, PluginContext};
use super::library::PluginLibrary;
use crate::hooks::handle::{PluginCall, PluginHandle};

/// A started plugin.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) library: Arc<PluginLibrary>,
    pub(crate) handle: Arc<PluginHandle>,
    /// Where the plugin's vtable points; marked stopped once `stop` returned (or `init` failed).
    context: &'static PluginContext,
}

impl Instance {
    /// Calls the plugin's `init`. On failure returns the plugin's message.
    pub(crate) fn start(
        library: Arc<PluginLibrary>,
        shared: Arc<HostShared>,
        config_json: &str,
        seq: u64,
    ) -> Result<Instance, String> {
        // Leaked on purpose: see the module's documentation.
        let context: &'static PluginContext =
            Box::leak(Box::new(PluginContext::new(library.meta.name.clone(), shared)));
        let host_api: &'static HostApi = Box::leak(Box::new(host_api::vtable(context)));
        let mut state = std::ptr::null_mut();
        let mut error = String::new();
        let _call = PluginCall::enter();
        // SAFETY: the descriptor was checked by PluginLibrary::open; host_api and context are
        // never freed; state and error are valid out-parameters for the call.
        let status = unsafe {
            (library.descriptor().init)(
                host_api,
                RawStr::new(config_json),
                &mut state,
                RawWriter::for_string(&mut error),
            )
        };
        match status {
            abi::STATUS_OK => {
                let meta = &library.meta;
                warn_unhonoured(
                    &meta.name,
                    meta.blocking_hooks,
                    crate::hooks::CAN_BLOCK,
                    "blocking; the broker runs only client.connect, client.authenticate, client.check_acl and \
                     message.publish off its network threads, so these run inline",
                );
                warn_unhonoured(
                    &meta.name,
                    meta.retained_only_hooks,
                    crate::hooks::RETAINED_ONLY,
                    "for retained messages only; the broker filters only message.publish so, so these get every \
                     message",
                );
                warn_unhonoured(
                    &meta.name,
                    meta.later_hooks,
                    crate::hooks::CAN_ANSWER_LATER,
                    "as answered later; the broker waits only for client.connect, client.authenticate, \
                     client.check_acl and message.publish, so these are answered at once",
                );
                let handle = PluginHandle::new(
                    meta.name.clone(),
                    meta.hooks,
                    meta.blocking_hooks,
                    meta.priority,
                    seq,
                    library.descriptor().on_event,
                    state,
                )
                .with_retained_only(HookMask(meta.retained_only_hooks.0 & crate::hooks::RETAINED_ONLY.0))
                .with_later(HookMask(meta.later_hooks.0 & crate::hooks::CAN_ANSWER_LATER.0));
                Ok(Instance { handle: Arc::new(handle), library, context })
            }
            failed => {
                context.mark_stopped();
                Err(match failed {
                    abi::STATUS_PANICKED => format!("init {error}"),
                    _ if error.is_empty() => "init failed".to_owned(),
                    _ => format!("init failed: {error}"),
                })
            }
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.library.meta.name
    }

    pub(crate) fn is_active(&self) -> bool {
        self.handle.is_active()
    }

    /// Runs the plugin's `ctl` command.
    /// Runs a `ctl` command; a failure keeps the plugin's status (`STATUS_NOT_FOUND`, ...).
    pub(crate) fn ctl(&self, args: &[String]) -> Result<String, (abi::Status, String)> {
        let args = serde_json::to_string(args).map_err(|e| (abi::STATUS_INVALID_ARGUMENT, e.to_string()))?;
        let ctl = self.library.descriptor().ctl;
        let mut out = String::new();
        let writer = RawWriter::for_string(&mut out);
        // SAFETY: with_state runs this only between init and stop; args and the writer live
        // through the call.
        let status = self
            .handle
            .with_state(|state| unsafe { ctl(state, RawStr::new(&args), writer) })
            .ok_or_else(|| (abi::STATUS_UNAVAILABLE, format!("plugin {} is stopping", self.name())))?;
        match status {
            abi::STATUS_OK => Ok(out),
            abi::STATUS_PANICKED => {
                self.handle.fail(format!("ctl {out}"));
                Err((abi::STATUS_ERROR, format!("plugin {} {out}; it has been stopped", self.name())))
            }
            abi::STATUS_NOT_FOUND
            | abi::STATUS_CONFLICT
            | abi::STATUS_INVALID_ARGUMENT
            | abi::STATUS_UNAVAILABLE
            | abi::STATUS_UNSUPPORTED => Err((status, out)),
            _ => Err((abi::STATUS_ERROR, out)),
        }
    }

    /// Deactivates the plugin, then calls its `stop` (once). Returns the plugin's status.
    pub(crate) fn stop(&self) -> abi::Status {
        let state = self.handle.take_state();
        if state.is_null() {
            return abi::STATUS_OK;
        }
        self.context.mark_stopping();
        let status = {
            let _call = PluginCall::enter();
            // SAFETY: no call is in flight and none can start (take_state deactivated the
            // plugin); state is the pointer init returned, handed back exactly once.
            unsafe { (self.library.descriptor().stop)(state) }
        };
        self.context.mark_stopped();
        status
    }
}

/// Warns that `plugin` declared hooks in `declared` that the broker does not honour (those
/// outside `honoured`), naming them before `what`.
fn warn_unhonoured(plugin: &str, declared: HookMask, honoured: HookMask, what: &str) {
    let ignored: Vec<&str> =
        Hook::ALL.into_iter().filter(|&h| declared.contains(h) && !honoured.contains(h)).map(Hook::name).collect();
    if !ignored.is_empty() {
        tracing::warn!(plugin, "declares {} {what}", ignored.join(", "));
    }
}
