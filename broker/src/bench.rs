//! What `benches/` measure, built from the broker's own parts (which are otherwise private
//! to the crate): hook dispatch with N copies of a plugin, a plugin's lifecycle through the
//! manager, and routing through the subscription trie.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use plugin_api::abi::{RawBytes, RawEvent, RawStr};
use plugin_api::Hook;

use crate::client::ClientInfo;
use crate::hooks::{Hooks, Verdict};
use crate::node::{Node, Zone};
use crate::plugins::host_api::HostShared;
use crate::plugins::instance::Instance;
use crate::plugins::library::PluginLibrary;
use crate::plugins::manager::{Manager, ManagerPaths};
use crate::router::{Filter, Publisher, Router, Subscriber, Target};
use crate::session::Session;
use crate::stats::Stats;

/// A node with no listener: what plugins are started against.
pub(crate) struct Host {
    _runtime: tokio::runtime::Runtime,
    shared: Arc<HostShared>,
    hooks: Arc<Hooks>,
    data_dir: tempfile::TempDir,
}

impl Host {
    pub(crate) fn new() -> Host {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let (failed, _) = tokio::sync::mpsc::unbounded_channel();
        let hooks = Arc::new(Hooks::new(failed));
        let node = Arc::new(Node::new(
            Zone::default(),
            hooks.clone(),
            Arc::new(Stats::new(Instant::now())),
            Router::new(Default::default()),
        ));
        let data_dir = tempfile::tempdir().expect("temp dir");
        let shared = Arc::new(HostShared {
            broker_version: "bench".into(),
            node_name: "bench@127.0.0.1".into(),
            data_dir: data_dir.path().to_string_lossy().into_owned(),
            started_at: SystemTime::now(),
            node,
            store: store::Store::in_memory(),
            manager: OnceLock::new(),
            plugin_metrics: Default::default(),
            plugin_stats: Default::default(),
        });
        Host { _runtime: runtime, shared, hooks, data_dir }
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

/// `copies` instances of one plugin, and a `message.publish` event to dispatch to them.
pub struct Dispatch {
    host: Host,
    instances: Vec<Instance>,
    client: ClientInfo,
}

impl Dispatch {
    pub fn new(plugins_dir: &Path, plugin: &str, copies: usize) -> Dispatch {
        Dispatch::with_config(plugins_dir, plugin, "", copies)
    }

    /// As [`Dispatch::new`], each copy started with `config_json` (its config section).
    pub fn with_config(plugins_dir: &Path, plugin: &str, config_json: &str, copies: usize) -> Dispatch {
        let host = Host::new();
        let library = Arc::new(PluginLibrary::open(plugins_dir, plugin, false).expect("plugin library"));
        let instances = (0..copies as u64)
            .map(|seq| Instance::start(library.clone(), host.shared.clone(), config_json, seq).expect("plugin starts"))
            .collect();
        let mut client = ClientInfo::broker();
        client.client_id = Arc::from("bench-client");
        client.peer = "127.0.0.1:5000".into();
        Dispatch { host, instances, client }
    }

    /// Puts the first `n` instances on the hooks.
    pub fn install(&self, n: usize) {
        let handles: Vec<_> = self.instances[..n].iter().map(|i| i.handle.clone()).collect();
        self.host.hooks.install(&handles);
    }

    /// A `message.publish` event about a 64-byte message on `topic`.
    pub fn event<'a>(&'a self, topic: &'a str, payload: &'a [u8]) -> RawEvent {
        let mut event = self.client.event(Hook::MessagePublish, crate::now_ms());
        event.topic = RawStr::new(topic);
        event.payload = RawBytes::new(payload);
        event
    }

    /// Exactly what a connection does per PUBLISH: true if a plugin dropped the message.
    #[inline]
    pub fn dispatch(&self, event: &RawEvent) -> bool {
        self.host.hooks.wants(Hook::MessagePublish) && self.host.hooks.dispatch(event) == Verdict::Drop
    }

    /// What a connection does per PUBLISH when plugins may replace the topic (the broker's
    /// `Node::publish`): the new topic, if one replaced it.
    #[inline]
    pub fn dispatch_rewriting(&self, event: &mut RawEvent) -> Option<String> {
        if !self.host.hooks.wants(Hook::MessagePublish) {
            return None;
        }
        self.host.hooks.dispatch_rewriting(event, crate::router::is_valid_replacement_topic).1.topic
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        self.host.hooks.install(&[]);
        for instance in &self.instances {
            instance.stop();
        }
    }
}

/// The plugin manager over a data directory whose `loaded_plugins` lists one plugin.
pub struct Lifecycle {
    host: Host,
    manager: Arc<Manager>,
}

impl Lifecycle {
    pub fn new(plugins_dir: &Path, plugin: &str) -> Lifecycle {
        let host = Host::new();
        let loaded_plugins = host.data_dir.path().join("loaded_plugins");
        std::fs::write(&loaded_plugins, format!("{{{plugin}, true}}.\n")).expect("write loaded_plugins");
        let manager = Arc::new(Manager::new(
            ManagerPaths { plugins_dir: plugins_dir.to_owned(), loaded_plugins },
            Default::default(),
            host.shared.clone(),
            host.hooks.clone(),
        ));
        let _ = host.shared.manager.set(Arc::<Manager>::downgrade(&manager));
        Lifecycle { host, manager }
    }

    /// Starts the plugin (not recorded in `loaded_plugins`).
    pub fn load(&self, plugin: &str) {
        self.manager.load(plugin, false).expect("load");
    }

    /// Stops the plugin (not recorded in `loaded_plugins`).
    pub fn unload(&self, plugin: &str) {
        self.manager.unload(plugin, false).expect("unload");
    }

    /// Reloads the plugin, recording it in `loaded_plugins` (write, fsync, rename).
    pub fn reload(&self, plugin: &str) {
        self.manager.reload(plugin).expect("reload");
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        self.manager.shutdown();
        let _ = &self.host;
    }
}

/// A router holding `subscribers` sessions, each subscribed to `filters` filters.
pub struct Routing {
    router: Router,
    targets: Vec<Target>,
}

impl Routing {
    /// Subscriptions `bench/<s>/<f>/#` for each session `s` and filter `f`, plus `bench/+/x`
    /// for every session.
    pub fn new(subscribers: u64, filters: u64) -> Routing {
        let router = Router::new(Default::default());
        for s in 1..=subscribers {
            let session = Arc::new(Session::new(s, format!("c{s}").into()));
            for f in 0..filters {
                let path = format!("bench/{s}/{f}/#");
                let subscriber = Subscriber { session: session.clone(), options: Default::default(), id: None };
                router.subscribe(&Filter { group: None, path: &path }, subscriber);
            }
            let subscriber = Subscriber { session, options: Default::default(), id: None };
            router.subscribe(&Filter { group: None, path: "bench/+/x" }, subscriber);
        }
        Routing { router, targets: Vec::new() }
    }

    /// Matches `topic`; returns how many sessions it goes to.
    pub fn route(&mut self, topic: &str) -> usize {
        self.targets.clear();
        self.router.route(topic, Publisher { session: 0, client_id: "" }, &mut self.targets);
        self.targets.len()
    }
}
