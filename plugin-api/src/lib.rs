//! The stable C ABI between the `broker` host and its plugins, and a safe Rust layer on top.
//!
//! A plugin is a `cdylib` crate. It implements [`Plugin`] for one type and names it with
//! [`declare_plugin!`]; it never writes `unsafe` itself. The host finds the plugin's library
//! in its plugins directory (`lib<name>.so`), reads the exported [`abi::PluginDescriptor`]
//! (checking [`abi::ABI_VERSION`] and the name *before* calling any plugin code), calls
//! `init`, then `on_event` for every hook the plugin asked for, and `stop` on unload.
//!
//! # Example
//!
//! A plugin that counts publishes and logs every new client:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use plugin_api::{declare_plugin, Config, Event, Hook, HookMask, HookResult, Host, Plugin,
//!                  PluginInfo, PluginKind};
//!
//! pub struct Counter {
//!     host: Host,
//!     publishes: AtomicU64,
//! }
//!
//! impl Plugin for Counter {
//!     fn init(host: Host, _config: Config) -> Result<Self, plugin_api::BoxError> {
//!         Ok(Counter { host, publishes: AtomicU64::new(0) })
//!     }
//!
//!     fn on_event(&self, event: &Event<'_>) -> HookResult {
//!         match event.hook {
//!             Hook::ClientConnected => self.host.info(&format!("hello {}", event.client_id)),
//!             Hook::MessagePublish => {
//!                 self.publishes.fetch_add(1, Ordering::Relaxed);
//!             }
//!             _ => {}
//!         }
//!         HookResult::Continue
//!     }
//!
//!     fn stop(self) {
//!         let n = self.publishes.load(Ordering::Relaxed);
//!         self.host.info(&format!("counted {n} publishes"));
//!     }
//! }
//!
//! declare_plugin!(Counter, PluginInfo {
//!     name: "counter",
//!     version: "0.1.0",
//!     description: "Counts publishes",
//!     kind: PluginKind::Plugin,
//!     hooks: HookMask::of(&[Hook::ClientConnected, Hook::MessagePublish]),
//!     priority: 0,
//!     ctl_command: None,
//! });
//! # fn main() {}
//! ```
//!
//! # Rules for plugin authors
//!
//! - **Hooks are on the hot path.** `on_event` runs on the broker's network threads, inline
//!   with the client's traffic. Return quickly: count, copy, or hand the work to your own
//!   thread. Never block on I/O or sleep in a hook. The exceptions are the hooks a plugin
//!   declares in [`Plugin::BLOCKING_HOOKS`] (`client.check_acl` asking an HTTP service, a
//!   `message.publish` that writes to disk) and `client.authenticate`: the host runs those on
//!   a blocking-pool thread, so the plugin may ask a remote service, hash a password or
//!   `fsync` there (only the client the event is about waits). Cheaper for a plugin that
//!   asks a server from threads of its own: declare the hook in [`Plugin::LATER_HOOKS`],
//!   return at once from [`Plugin::on_event_later`] and answer its [`Later`] when the server
//!   has; the client waits, no thread does.
//! - **Threads you start, you join.** If the plugin starts threads or an async runtime, `stop`
//!   must stop and join them. After `stop` returns the host will never call the plugin again.
//! - **Unload does not unmap.** The host keeps a plugin's library mapped after `stop` (a Rust
//!   `cdylib` cannot be unmapped safely: thread-local destructors and stray threads would
//!   point into freed code). A later `load` of an unchanged file re-uses the mapped code, so
//!   keep all state in your plugin value, not in `static`s. A `reload` of a *rebuilt* file
//!   maps a fresh copy of it.
//! - **Panics are caught.** A panic in `init`, a hook, `ctl` or `stop` is caught on the
//!   plugin's side of the boundary; the host then stops the plugin and marks it failed.
//! - **Older and newer brokers.** A plugin runs in any broker of the same
//!   [`abi::ABI_VERSION`], older or newer than the `plugin-api` it was built with: the ABI
//!   only grows by appending fields, and each side reads only what the other's structs have
//!   (see [`abi`]'s compatibility rules). In a broker older than the plugin, a [`Host`] method
//!   whose function that broker lacks answers [`HostError::Unsupported`] (nothing is called),
//!   and an [`Event`] field that broker does not send reads as absent (`None`, empty, `false`;
//!   [`Event::replace_topic`] answers `Continue`). Handle `Unsupported` where you use a host
//!   function added after the first release (`deliver_retained`, `metrics`, `subscribe`, the
//!   [`store`]).
#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]

pub mod abi;
pub mod duration;
pub mod emqx;
mod event;
#[doc(hidden)]
pub mod export;
#[cfg(test)]
mod guarded;
mod host;
mod info;
mod later;
pub mod store;
#[cfg(test)]
mod test_host;
pub mod topic;

pub use event::{AclAction, Event, HookResult, QoS, SubscriptionOptions};
pub use host::{ClientInfo, HookTiming, Host, HostError, Level, Metrics, PluginStatus, RetainedMessage, Stats};
pub use info::{parse_table, Config, ConfigError, Hook, HookMask, PluginInfo, PluginKind, TableError};
pub use later::{Later, Replacement};

/// The error a plugin's `init` returns: anything that implements `std::error::Error`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a plugin implements. One value of this type lives from `init` to `stop`.
///
/// `on_event` and `ctl` take `&self` and may be called from several threads at once, so keep
/// mutable state in atomics or locks (held briefly, never across I/O).
pub trait Plugin: Send + Sync + Sized + 'static {
    /// Starts the plugin. `config` is the plugin's own table of the broker config file (with
    /// `BROKER_<SECTION>__<KEY>` environment overrides applied), or an empty table.
    ///
    /// An error refuses the load; its message is shown to the operator.
    fn init(host: Host, config: Config) -> Result<Self, BoxError>;

    /// The hooks (among [`PluginInfo::hooks`]) whose [`Plugin::on_event`] may block: wait on
    /// the network (an HTTP or database request), on a disk write or `fsync`, or compute for
    /// long. The host runs such a hook's chain off its network threads and makes only the
    /// client it is about wait for the answer; every other hook must return within
    /// microseconds. The default is none.
    ///
    /// The host honours it for `client.connect`, `client.authenticate` (always run off the
    /// network threads anyway), `client.check_acl` and a client's `message.publish`; see
    /// [`abi::PluginDescriptor::blocking_hooks`]. Declare only what may block: each event of a
    /// declared hook costs its client a hand-over to another thread and back.
    ///
    /// ```
    /// # use plugin_api::{Hook, HookMask, Host, Config, Plugin, BoxError};
    /// # struct AclService;
    /// impl Plugin for AclService {
    ///     // Asks a remote service about every publish and subscribe.
    ///     const BLOCKING_HOOKS: HookMask = HookMask::of(&[Hook::ClientCheckAcl]);
    ///     # fn init(_: Host, _: Config) -> Result<Self, BoxError> { Ok(AclService) }
    /// }
    /// ```
    const BLOCKING_HOOKS: HookMask = HookMask::NONE;

    /// Hooks in [`PluginInfo::hooks`] for which the plugin wants only messages published with
    /// the retain flag; the host then skips it for the others. The host honours it for
    /// `message.publish`; see [`abi::PluginDescriptor::retained_only_hooks`]. An older host
    /// ignores it, so [`Plugin::on_event`] must still look at [`Event::retain`]. The default is
    /// none.
    ///
    /// ```
    /// # use plugin_api::{Event, Hook, HookMask, HookResult, Host, Config, Plugin, BoxError};
    /// # struct Retainer;
    /// impl Plugin for Retainer {
    ///     // Stores retained messages; the others are none of its business.
    ///     const RETAINED_ONLY_HOOKS: HookMask = HookMask::of(&[Hook::MessagePublish]);
    ///     # fn init(_: Host, _: Config) -> Result<Self, BoxError> { Ok(Retainer) }
    ///     fn on_event(&self, event: &Event<'_>) -> HookResult {
    ///         if event.retain {
    ///             // store it
    ///         }
    ///         HookResult::Continue
    ///     }
    /// }
    /// ```
    const RETAINED_ONLY_HOOKS: HookMask = HookMask::NONE;

    /// Hooks in [`PluginInfo::hooks`] the plugin may answer later: for these the host calls
    /// [`Plugin::on_event_later`] with a [`Later`] when it can wait for the answer, and the
    /// client the event is about waits without holding any thread, while the plugin asks a
    /// server from a thread of its own. The host honours it for `client.connect`,
    /// `client.authenticate`, `client.check_acl` and a client's `message.publish` (see
    /// [`abi::PluginDescriptor::later_hooks`]); elsewhere, and on a host older than this, it
    /// calls [`Plugin::on_event`], which must then answer at once. Declare the hooks in
    /// [`Plugin::BLOCKING_HOOKS`] too if answering at once may block (an older host then runs
    /// them off its network threads; a newer one ignores that for them). The default is none.
    ///
    /// For `message.publish` the host may offer several of one client's PUBLISHes before the
    /// first is answered (up to its `broker.hook_pipeline`, 8 by default): they are offered in
    /// the order the client sent them, and the answers are applied in that order whatever
    /// order they are given in. A plugin that must see them one at a time needs
    /// `hook_pipeline = 1` in the broker's configuration.
    ///
    /// ```
    /// # use plugin_api::{Event, Hook, HookMask, HookResult, Host, Config, Later, Plugin, BoxError};
    /// # struct RemoteAcl { requests: std::sync::mpsc::Sender<(String, Later)> }
    /// impl Plugin for RemoteAcl {
    ///     const LATER_HOOKS: HookMask = HookMask::of(&[Hook::ClientCheckAcl]);
    ///     # fn init(_: Host, _: Config) -> Result<Self, BoxError> { unimplemented!() }
    ///     fn on_event_later(&self, event: &Event<'_>, later: Later) {
    ///         // A thread of the plugin's asks the service and calls `later.answer(...)`.
    ///         let _ = self.requests.send((event.topic.to_owned(), later));
    ///     }
    /// }
    /// ```
    const LATER_HOOKS: HookMask = HookMask::NONE;

    /// Called instead of [`Plugin::on_event`] for a hook in [`Plugin::LATER_HOOKS`] when the
    /// host can wait: answer `later` once, now or from any thread later (dropping it answers
    /// [`HookResult::Continue`]). The event's fields are borrowed for this call only: copy
    /// what the answer needs. The default answers what [`Plugin::on_event`] answers, at once
    /// (its [`Event::replace_topic`] and other replacements included).
    fn on_event_later(&self, event: &Event<'_>, later: Later) {
        later.answer(self.on_event(event));
    }

    /// Called for every hook in [`PluginInfo::hooks`]. The default answers
    /// [`HookResult::Continue`] (no opinion).
    fn on_event(&self, event: &Event<'_>) -> HookResult {
        let _ = event;
        HookResult::Continue
    }

    /// Runs `broker ctl <ctl_command> ARGS...` for a plugin that set
    /// [`PluginInfo::ctl_command`]. `Ok` text is printed to the operator; `Err` text is printed
    /// as an error and `ctl` exits non-zero.
    fn ctl(&self, args: &[String]) -> Result<String, String> {
        let _ = args;
        Err("this plugin has no commands".to_owned())
    }

    /// [`Plugin::ctl`] with a typed failure, for a plugin whose commands can fail in ways a
    /// caller tells apart: the kind ([`HostError::NotFound`], [`HostError::Conflict`],
    /// [`HostError::InvalidArgument`], [`HostError::Unavailable`]) reaches another plugin's
    /// [`Host::ctl`] as that variant (a management API answers 404, 409, 400, 503 from it).
    /// The host calls this one; the default runs [`Plugin::ctl`] and calls every failure
    /// [`HostError::Failed`]. Implement one of the two.
    fn ctl_typed(&self, args: &[String]) -> Result<String, HostError> {
        self.ctl(args).map_err(HostError::Failed)
    }

    /// Stops the plugin: stop and join its threads, flush what it must. Called once; the host
    /// has already stopped sending events and waited for calls in flight to return.
    fn stop(self) {}
}

/// Exports a type implementing [`Plugin`] as this library's plugin.
///
/// Use it once per `cdylib`, with the type and a `const` [`PluginInfo`]. It defines the
/// `broker_plugin_descriptor` symbol the host looks for; the plugin's file must be named
/// `lib<name>.so` (a crate named `<name>`), and the host refuses a descriptor whose name
/// differs from the file's.
#[macro_export]
macro_rules! declare_plugin {
    ($plugin:ty, $info:expr $(,)?) => {
        #[doc(hidden)]
        #[no_mangle]
        pub static broker_plugin_descriptor: $crate::abi::PluginDescriptor =
            $crate::export::descriptor::<$plugin>(&$info);
    };
}
