//! The `extern "C"` glue [`declare_plugin!`](crate::declare_plugin) generates for a
//! [`Plugin`] type. Every entry point catches panics, so none crosses the boundary.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::{self, HostApi, PluginDescriptor, RawEvent, RawStr, RawWriter, Status};
use crate::event::Event;
use crate::host::{Host, HostError};
use crate::info::{Config, PluginInfo};
use crate::Plugin;

/// Builds the descriptor for plugin type `P` (used in a `static` by the macro).
pub const fn descriptor<P: Plugin>(info: &PluginInfo) -> PluginDescriptor {
    PluginDescriptor {
        abi_version: abi::ABI_VERSION,
        size: std::mem::size_of::<PluginDescriptor>() as u32,
        name: RawStr::from_static(info.name),
        version: RawStr::from_static(info.version),
        description: RawStr::from_static(info.description),
        kind: info.kind.to_raw(),
        priority: info.priority,
        hooks: info.hooks.0,
        ctl_command: match info.ctl_command {
            Some(command) => RawStr::from_static(command),
            None => RawStr::EMPTY,
        },
        init: init::<P>,
        on_event: on_event::<P>,
        ctl: ctl::<P>,
        stop: stop::<P>,
        blocking_hooks: P::BLOCKING_HOOKS.0 & info.hooks.0,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

/// The plugin's side of the version check (the host checks the plugin's too): the host must
/// speak this crate's ABI version and give at least the first release's vtable. Fields added
/// since are checked where they are used (an older host's `Host::metrics` is an error, not a
/// crash).
fn check_host(abi_version: u32, size: u32) -> Result<(), String> {
    if abi_version != abi::ABI_VERSION {
        return Err(format!(
            "this plugin was built for plugin ABI version {}, the broker offers version {}: \
             rebuild the plugin against the broker's plugin-api",
            abi::ABI_VERSION,
            abi_version
        ));
    }
    let first_release = std::mem::offset_of!(HostApi, deliver_retained);
    if (size as usize) < first_release {
        return Err(format!(
            "the broker's host vtable is {} bytes, shorter than ABI version {}'s first release \
             ({first_release} bytes): the broker is not one this plugin can run in",
            size,
            abi::ABI_VERSION
        ));
    }
    Ok(())
}

unsafe extern "C" fn init<P: Plugin>(
    host: *const HostApi,
    config_json: RawStr,
    state_out: *mut *mut c_void,
    error: RawWriter,
) -> Status {
    let started = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host passes a HostApi valid until stop; its first two fields are
        // frozen, so reading them is sound whatever host built it.
        let (abi_version, size) = unsafe { ((*host).abi_version, (*host).size) };
        check_host(abi_version, size)?;
        // SAFETY: the host passes a HostApi valid until stop, and a config string valid
        // during this call.
        let (host, config) = unsafe { (Host::from_raw(host), config_json.as_str()) };
        let config = match config.trim() {
            "" => Config::default(),
            text => Config::new(serde_json::from_str(text)?),
        };
        P::init(host, config)
    }));
    let message = match started {
        Ok(Ok(plugin)) => {
            // SAFETY: state_out is a valid out-pointer given by the host.
            unsafe { *state_out = Box::into_raw(Box::new(plugin)) as *mut c_void };
            return abi::STATUS_OK;
        }
        Ok(Err(e)) => (abi::STATUS_ERROR, e.to_string()),
        Err(panic) => (abi::STATUS_PANICKED, panic_message(&*panic)),
    };
    // SAFETY: the host's writer is alive during this call.
    unsafe { error.write_str(&message.1) };
    message.0
}

unsafe extern "C" fn on_event<P: Plugin>(state: *mut c_void, event: *const RawEvent) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: state is the Box<P> made by init, alive until stop; the host only calls
        // on_event between init and stop. The event is valid during this call.
        let (plugin, raw) = unsafe { (&*(state as *const P), &*event) };
        // SAFETY: the host guarantees the event's fields are valid during this call.
        match unsafe { Event::from_raw(raw) } {
            Some(event) => plugin.on_event(&event).to_raw(),
            None => abi::HOOK_CONTINUE,
        }
    }))
    .unwrap_or(abi::HOOK_PANICKED)
}

unsafe extern "C" fn ctl<P: Plugin>(state: *mut c_void, args_json: RawStr, out: RawWriter) -> Status {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in on_event; args_json is valid during this call.
        let (plugin, args) = unsafe { (&*(state as *const P), args_json.as_str()) };
        let args: Vec<String> = serde_json::from_str(args).map_err(|e| HostError::InvalidArgument(e.to_string()))?;
        plugin.ctl_typed(&args)
    }));
    let (status, text) = match result {
        Ok(Ok(text)) => (abi::STATUS_OK, text),
        Ok(Err(e)) => (e.status(), e.to_string()),
        Err(panic) => (abi::STATUS_PANICKED, panic_message(&*panic)),
    };
    // SAFETY: the host's writer is alive during this call.
    unsafe { out.write_str(&text) };
    status
}

unsafe extern "C" fn stop<P: Plugin>(state: *mut c_void) -> Status {
    // SAFETY: state is the Box<P> made by init; the host calls stop once, after every other
    // call returned, so we own it now.
    let plugin = unsafe { Box::from_raw(state as *mut P) };
    match catch_unwind(AssertUnwindSafe(move || plugin.stop())) {
        Ok(()) => abi::STATUS_OK,
        Err(_) => abi::STATUS_PANICKED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_refuses_a_host_of_another_abi_or_an_older_vtable() {
        let size = std::mem::size_of::<HostApi>() as u32;
        assert_eq!(check_host(abi::ABI_VERSION, size), Ok(()));
        // An older host of the same version: the first release's vtable is enough.
        assert_eq!(check_host(abi::ABI_VERSION, std::mem::offset_of!(HostApi, deliver_retained) as u32), Ok(()));
        let other = check_host(abi::ABI_VERSION + 1, size).unwrap_err();
        assert!(other.contains("built for plugin ABI version 1, the broker offers version 2"), "{other}");
        let short = check_host(abi::ABI_VERSION, 16).unwrap_err();
        assert!(short.contains("host vtable is 16 bytes"), "{short}");
    }
}
