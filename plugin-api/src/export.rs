//! The `extern "C"` glue [`declare_plugin!`](crate::declare_plugin) generates for a
//! [`Plugin`] type. Every entry point catches panics, so none crosses the boundary.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::{self, HostApi, PluginDescriptor, RawEvent, RawStr, RawWriter, Status};
use crate::event::Event;
use crate::host::{Host, HostError};
use crate::info::{Config, PluginInfo};
use crate::later::Later;
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
        retained_only_hooks: P::RETAINED_ONLY_HOOKS.0 & info.hooks.0,
        later_hooks: P::LATER_HOOKS.0 & info.hooks.0,
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
/// since are checked where they are used: [`Host`] answers `HostError::Unsupported` for a
/// function an older host's vtable does not have, and reads nothing past its `size`.
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
        // SAFETY: the host passes a HostApi valid until stop, readable for the size its first
        // field declares (`from_raw` reads nothing else), and a config string valid during
        // this call.
        let (host, config) = unsafe { (Host::from_raw(host), config_json.as_str()) };
        let (abi_version, size) = host.vtable_version();
        check_host(abi_version, size)?;
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
    // Set once a `Later` was made: the host then gets its answer through the ticket (the
    // `Later` answers `HOOK_PANICKED` itself if the plugin panics holding it), so the call
    // must return `HOOK_LATER` whatever happens.
    let mut later_made = false;
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: state is the Box<P> made by init, alive until stop; the host only calls
        // on_event between init and stop. The event is valid during this call, for the size
        // it declares (an older host's is shorter: it is copied field by field, never
        // referenced whole).
        let (plugin, raw) = unsafe { (&*(state as *const P), RawEvent::read(event)) };
        // SAFETY: the host guarantees the event's fields are valid during this call.
        let Some(event) = (unsafe { Event::from_raw(&raw) }) else {
            return abi::HOOK_CONTINUE;
        };
        // The host offers a later answer only for a hook the plugin declared in LATER_HOOKS.
        let later = raw.answer.filter(|_| P::LATER_HOOKS.contains(event.hook));
        match later.and_then(|answer| Later::new(raw.ticket, answer, event.hook)) {
            Some(later) => {
                later_made = true;
                plugin.on_event_later(&event, later);
                abi::HOOK_LATER
            }
            None => plugin.on_event(&event).to_raw(),
        }
    }))
    .unwrap_or(if later_made { abi::HOOK_LATER } else { abi::HOOK_PANICKED })
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
    use std::mem::offset_of;
    use std::sync::Mutex;

    use super::*;
    use crate::abi::{RawBytes, RawBytesWriter};
    use crate::guarded::Guarded;
    use crate::test_host::{self, Calls};
    use crate::{Hook, HookResult};

    /// What [`Probe`] saw in its last event: topic, sockport, properties, its `replace_topic`
    /// answer, and whether `Host::metrics` answered `Unsupported`.
    type Seen = (String, Option<u16>, Vec<u8>, HookResult, bool);
    static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

    /// A plugin built against this crate, as the glue runs it.
    struct Probe {
        host: Host,
    }

    impl crate::Plugin for Probe {
        fn init(host: Host, _config: Config) -> Result<Self, crate::BoxError> {
            Ok(Probe { host })
        }

        fn on_event(&self, event: &Event<'_>) -> HookResult {
            let unsupported = matches!(self.host.metrics(), Err(HostError::Unsupported(_)));
            let seen = (
                event.topic.to_owned(),
                event.sockport,
                event.properties.to_vec(),
                event.replace_topic("x"),
                unsupported,
            );
            *SEEN.lock().unwrap() = Some(seen);
            HookResult::Continue
        }
    }

    /// A publish event as this crate builds it, with `size` set to `size`.
    fn publish_event(size: usize) -> RawEvent {
        RawEvent {
            size: size as u32,
            hook: Hook::MessagePublish as u32,
            client_id: RawStr::from_static("c1"),
            username: RawStr::EMPTY,
            password: RawBytes::EMPTY,
            peer: RawStr::from_static("127.0.0.1:5000"),
            topic: RawStr::from_static("old/1"),
            payload: RawBytes::EMPTY,
            qos: 1,
            retain: 0,
            proto_ver: 4,
            clean_start: 1,
            keepalive: 60,
            packet_id: 7,
            return_code: 0,
            expiry_interval: 0,
            acl_action: 0,
            reason: RawStr::EMPTY,
            timestamp_ms: 1,
            properties: RawBytes { ptr: b"\x01\x01".as_ptr(), len: 2 },
            message_expiry: 0,
            sub_options: 0,
            sub_new: 0,
            sockport: 1883,
            rewrite: RawWriter::DISCARD,
            rewrite_payload: RawBytesWriter::DISCARD,
            rewrite_qos: RawBytesWriter::DISCARD,
            ticket: std::ptr::null_mut(),
            answer: None,
        }
    }

    /// A plugin that answers `message.publish` later: it replaces the topic with `later/...`
    /// from another thread, or panics on topic `panic`; at once it answers Drop.
    struct Deferring;

    impl crate::Plugin for Deferring {
        const LATER_HOOKS: crate::HookMask = crate::HookMask::of(&[Hook::MessagePublish]);

        fn init(_host: Host, _config: Config) -> Result<Self, crate::BoxError> {
            Ok(Deferring)
        }

        fn on_event(&self, _event: &Event<'_>) -> HookResult {
            HookResult::Drop
        }

        fn on_event_later(&self, event: &Event<'_>, later: Later) {
            assert_ne!(event.topic, "panic", "the plugin panics holding its Later");
            let topic = format!("later/{}", event.topic);
            std::thread::spawn(move || later.replace(crate::Replacement { topic: Some(&topic), ..Default::default() }));
        }
    }

    /// What the host's answer function got: the ticket's number, the result and the topic.
    static ANSWERS: Mutex<Vec<(usize, u32, String)>> = Mutex::new(Vec::new());

    unsafe extern "C" fn record_answer(ticket: *mut c_void, answer: *const abi::RawAnswer) {
        // SAFETY: the glue's answer, valid during the call.
        let answer = unsafe { abi::RawAnswer::read(answer) }.expect("a whole answer");
        // SAFETY: as above.
        let topic = unsafe { answer.topic.as_str() }.to_owned();
        ANSWERS.lock().unwrap().push((ticket as usize, answer.result, topic));
    }

    #[test]
    fn the_glue_hands_a_plugin_its_later_answer_and_answers_for_it_when_it_panics() {
        let calls = Calls::default();
        let size = std::mem::size_of::<HostApi>();
        let vtable = test_host::vtable(&calls, size);
        let mut state = std::ptr::null_mut();
        let mut error = String::new();
        // SAFETY: a whole vtable alive until stop; a writer alive for the call.
        let status =
            unsafe { init::<Deferring>(&vtable, RawStr::EMPTY, &mut state, RawWriter::for_string(&mut error)) };
        assert_eq!((status, error.as_str()), (abi::STATUS_OK, ""));

        let mut event = publish_event(std::mem::size_of::<RawEvent>());
        // Offered no ticket (a host that cannot wait): `on_event` answers at once.
        // SAFETY: the state init made; an event valid during the call.
        assert_eq!(unsafe { on_event::<Deferring>(state, &event) }, abi::HOOK_DROP);

        event.ticket = std::ptr::without_provenance_mut(1);
        event.answer = Some(record_answer);
        // SAFETY: as above.
        assert_eq!(unsafe { on_event::<Deferring>(state, &event) }, abi::HOOK_LATER);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ANSWERS.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no later answer");
            std::thread::yield_now();
        }
        assert_eq!(ANSWERS.lock().unwrap().pop(), Some((1, abi::HOOK_REPLACE, "later/old/1".to_owned())));

        // A panic with the `Later` in hand: the host still gets one answer, saying so, and
        // the call says Later (the ticket is answered, not the host's to free).
        event.ticket = std::ptr::without_provenance_mut(2);
        event.topic = RawStr::from_static("panic");
        // SAFETY: as above.
        assert_eq!(unsafe { on_event::<Deferring>(state, &event) }, abi::HOOK_LATER);
        assert_eq!(std::mem::take(&mut *ANSWERS.lock().unwrap()), [(2, abi::HOOK_PANICKED, String::new())]);

        // SAFETY: init's state, stopped once.
        assert_eq!(unsafe { stop::<Deferring>(state) }, abi::STATUS_OK);
    }

    /// The glue `declare_plugin!` generates, run by a host of the first release: its vtable
    /// and its events end where that release's did, right before memory that faults (or, under
    /// Miri, where the allocation ends). The plugin starts, reads the event's first-release
    /// fields, sees the appended ones as absent, gets `Unsupported` from `Host::metrics`, and
    /// stops, without a byte past either struct being touched.
    #[test]
    fn the_glue_runs_a_plugin_in_a_first_release_host_without_reading_past_its_structs() {
        let calls = Calls::default();
        let vtable_size = offset_of!(HostApi, deliver_retained);
        let vtable = Guarded::prefix(&test_host::vtable(&calls, vtable_size), vtable_size);
        let mut state = std::ptr::null_mut();
        let mut error = String::new();
        // SAFETY: a vtable readable for its size and alive until stop; a writer alive for the call.
        let status =
            unsafe { init::<Probe>(vtable.as_ptr(), RawStr::EMPTY, &mut state, RawWriter::for_string(&mut error)) };
        assert_eq!((status, error.as_str()), (abi::STATUS_OK, ""));

        let event_size = offset_of!(RawEvent, properties);
        let event = Guarded::prefix(&publish_event(event_size), event_size);
        // SAFETY: the state init made; an event readable for its size during the call.
        assert_eq!(unsafe { on_event::<Probe>(state, event.as_ptr()) }, abi::HOOK_CONTINUE);
        let seen = SEEN.lock().unwrap().take().expect("the plugin saw the event");
        assert_eq!(seen, ("old/1".to_owned(), None, vec![], HookResult::Continue, true));

        // The same plugin with this crate's whole event sees the appended fields.
        let whole = publish_event(std::mem::size_of::<RawEvent>());
        // SAFETY: as above.
        assert_eq!(unsafe { on_event::<Probe>(state, &whole) }, abi::HOOK_CONTINUE);
        let seen = SEEN.lock().unwrap().take().expect("the plugin saw the event");
        assert_eq!(seen, ("old/1".to_owned(), Some(1883), vec![1, 1], HookResult::Replace, true));

        // SAFETY: init's state, stopped once.
        assert_eq!(unsafe { stop::<Probe>(state) }, abi::STATUS_OK);
        assert_eq!(calls.take(), Vec::<&str>::new(), "the vtable has no metrics: nothing was called");
    }

    /// A vtable shorter than the first release's is refused by the glue before the plugin's
    /// `init` runs, reading nothing past it.
    #[test]
    fn the_glue_refuses_a_vtable_shorter_than_the_first_release_reading_nothing_past_it() {
        let calls = Calls::default();
        let size = offset_of!(HostApi, node_name);
        let vtable = Guarded::prefix(&test_host::vtable(&calls, size), size);
        let mut state = std::ptr::null_mut();
        let mut error = String::new();
        // SAFETY: as in the test above.
        let status =
            unsafe { init::<Probe>(vtable.as_ptr(), RawStr::EMPTY, &mut state, RawWriter::for_string(&mut error)) };
        assert_eq!(status, abi::STATUS_ERROR);
        assert!(error.contains(&format!("host vtable is {size} bytes")), "{error}");
        assert!(state.is_null());
    }

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
