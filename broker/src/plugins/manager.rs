//! The plugin manager: starts what `data/loaded_plugins` enables, and loads, unloads and
//! reloads plugins while the broker serves, persisting the choice to that file.
//!
//! Operations are serialised by one lock (`ops`), held across a plugin's `init` and `stop`; the
//! state read by `list` has its own short-lived lock so a plugin may list plugins from `init`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use plugin_api::{abi, Hook, HookMask};
use serde_json::json;

use super::host_api::{CommandError, HostShared, PluginControl};
use super::instance::Instance;
use super::library::{library_names, library_path, LibraryError, PluginLibrary};
use super::loaded_plugins::{is_valid_name, LoadedPlugins};
use crate::cluster::Membership;
use crate::hooks::handle::PluginHandle;
use crate::hooks::Hooks;
use crate::lock;
use crate::node::PluginSubscribeError;
use crate::session::listing::{client_line, Limits, SessionInfo};

/// Why a plugin operation failed. Each message is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PluginError {
    #[error("invalid plugin name {0:?}: a name is [a-z0-9_]+, never a path")]
    InvalidName(String),
    #[error("plugin {0} is already loaded")]
    AlreadyLoaded(String),
    #[error("plugin {0} is not loaded")]
    NotLoaded(String),
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("plugin {name} failed to start: {why}")]
    Init { name: String, why: String },
    #[error("cannot update {path}: {source}")]
    Persist { path: PathBuf, source: std::io::Error },
}

impl From<PluginError> for CommandError {
    fn from(e: PluginError) -> CommandError {
        let status = match &e {
            PluginError::InvalidName(_) => abi::STATUS_INVALID_ARGUMENT,
            PluginError::AlreadyLoaded(_) | PluginError::NotLoaded(_) => abi::STATUS_CONFLICT,
            PluginError::Library(LibraryError::Missing { .. }) => abi::STATUS_NOT_FOUND,
            PluginError::Library(_) | PluginError::Init { .. } | PluginError::Persist { .. } => abi::STATUS_ERROR,
        };
        CommandError::new(status, e.to_string())
    }
}

/// One plugin as `list` reports it: the type plugins read through `Host::plugins`.
pub(crate) use plugin_api::PluginStatus;

#[derive(Debug, Default)]
struct State {
    libraries: HashMap<String, Arc<PluginLibrary>>,
    running: Vec<Arc<Instance>>,
    failed: HashMap<String, String>,
    next_seq: u64,
}

/// Where the manager finds things.
#[derive(Debug, Clone)]
pub(crate) struct ManagerPaths {
    pub(crate) plugins_dir: PathBuf,
    pub(crate) loaded_plugins: PathBuf,
}

#[derive(Debug)]
pub(crate) struct Manager {
    paths: ManagerPaths,
    /// Each plugin's config table, by config section name.
    configs: serde_json::Map<String, serde_json::Value>,
    shared: Arc<HostShared>,
    hooks: Arc<Hooks>,
    ops: Mutex<()>,
    state: Mutex<State>,
}

/// The config tables of `tables` that none of `plugins` reads (a misspelt name, most
/// often: `[telemtry]`), each with the section it is likely a misspelling of.
fn unread_tables<'a>(tables: impl Iterator<Item = &'a str>, plugins: &[String]) -> Vec<(String, Option<String>)> {
    let sections: Vec<&str> = plugins.iter().flat_map(|name| [name.as_str(), config_section(name)]).collect();
    tables
        .filter(|table| !sections.contains(table))
        .map(|table| {
            (table.to_owned(), crate::config::likely_meant(table, sections.iter().copied()).map(str::to_owned))
        })
        .collect()
}

/// The config section of a plugin: its name without `emqx_` and `mod_` (`emqx_telemetry` reads
/// `[telemetry]`, `emqx_mod_presence` reads `[presence]`), or its full name if that section
/// exists.
pub(crate) fn config_section(name: &str) -> &str {
    let short = name.strip_prefix("emqx_").unwrap_or(name);
    short.strip_prefix("mod_").unwrap_or(short)
}

impl Manager {
    /// The node's session limits, shown with each session.
    fn session_limits(&self) -> Limits {
        let zone = &self.shared.node.zone;
        Limits {
            max_subscriptions: zone.max_subscriptions,
            max_inflight: zone.max_inflight,
            max_mqueue: zone.queue.max_len,
            max_awaiting_rel: zone.max_awaiting_rel,
        }
    }

    /// `clients list` / `clients show`: EMQX's line of each connected client (`only`: that
    /// one), in client id order.
    fn client_lines(&self, only: Option<&str>) -> Vec<String> {
        let sessions = &self.shared.node.sessions;
        sessions
            .connected()
            .iter()
            .filter(|c| only.is_none_or(|id| *c.client_id == *id))
            .filter_map(|c| sessions.get(&c.client_id).map(|s| client_line(c, &SessionInfo::of(&s))))
            .collect()
    }

    /// Every subscription on this node as (client id, filter, QoS), sorted.
    fn subscriptions(&self) -> Vec<(String, String, u8)> {
        let mut all = Vec::new();
        for session in self.shared.node.sessions.all() {
            let state = session.lock();
            all.extend(
                state.subscriptions.iter().map(|(f, s)| (session.client_id.to_string(), f.to_string(), s.options.qos)),
            );
        }
        all.sort();
        all
    }

    /// `subscriptions list` / `show`: EMQX's `CLIENTID -> FILTER` (its subscription id is the
    /// client id), a line a subscription, sorted.
    fn subscription_lines(&self, only: Option<&str>) -> Vec<String> {
        let subscriptions = self.subscriptions().into_iter();
        subscriptions.filter(|(c, ..)| only.is_none_or(|id| c == id)).map(|(c, f, _)| format!("{c} -> {f}")).collect()
    }

    /// The filters routed to this node: each subscription's (a share group's by its topic
    /// filter, as EMQX routes it), once each, sorted.
    fn routes(&self) -> Vec<String> {
        let mut filters: Vec<String> = self
            .subscriptions()
            .into_iter()
            .map(|(_, f, _)| match f.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
                Some((_group, topic)) => topic.to_owned(),
                None => f,
            })
            .collect();
        filters.sort();
        filters.dedup();
        filters
    }

    /// `routes list` / `show`: EMQX's `FILTER -> NODE`.
    fn route_lines(&self, only: Option<&str>) -> Vec<String> {
        let routes = self.routes().into_iter().filter(|f| only.is_none_or(|topic| f == topic));
        routes.map(|f| format!("{f} -> {}", self.shared.node_name)).collect()
    }

    pub(crate) fn new(
        paths: ManagerPaths,
        configs: serde_json::Map<String, serde_json::Value>,
        shared: Arc<HostShared>,
        hooks: Arc<Hooks>,
    ) -> Manager {
        Manager { paths, configs, shared, hooks, ops: Mutex::new(()), state: Mutex::new(State::default()) }
    }

    /// Starts every plugin `loaded_plugins` enables. Problems are logged; the rest start.
    pub(crate) fn boot(&self) {
        let plugins = library_names(&self.paths.plugins_dir);
        for (table, likely) in unread_tables(self.configs.keys().map(String::as_str), &plugins) {
            let hint = likely.map_or(String::new(), |name| format!("; did you mean [{name}]?"));
            tracing::warn!(
                "config table [{table}] is read by no plugin in {} (plugin NAME reads [NAME], or [NAME] without \
                 emqx_ and mod_); it is ignored{hint}",
                self.paths.plugins_dir.display()
            );
        }
        let path = &self.paths.loaded_plugins;
        let file = match LoadedPlugins::read(path) {
            Ok((file, errors)) => {
                for error in errors {
                    tracing::error!("{}: {error}", path.display());
                }
                file
            }
            Err(e) => {
                tracing::error!("cannot read {}: {e}; starting no plugins", path.display());
                return;
            }
        };
        for (line, name, enabled) in file.numbered_entries() {
            if !enabled {
                continue;
            }
            if let Err(e) = self.load(name, false) {
                tracing::error!("{}: line {line}: {e}", path.display());
            }
        }
    }

    fn config_json(&self, name: &str) -> String {
        let value = self.configs.get(name).or_else(|| self.configs.get(config_section(name)));
        value.map(|v| v.to_string()).unwrap_or_default()
    }

    fn persist(&self, name: &str, enabled: bool) -> Result<(), PluginError> {
        let path = &self.paths.loaded_plugins;
        let persist_error = |source| PluginError::Persist { path: path.clone(), source };
        let (mut file, _) = LoadedPlugins::read(path).map_err(persist_error)?;
        file.set(name, enabled);
        file.write(path).map_err(persist_error)
    }

    /// Maps (or re-uses) the plugin's library. A file rebuilt since it was mapped is mapped
    /// again from a fresh copy.
    fn library(&self, name: &str) -> Result<Arc<PluginLibrary>, LibraryError> {
        let path = library_path(&self.paths.plugins_dir, name);
        let cached = lock(&self.state).libraries.get(name).cloned();
        if let Some(library) = &cached {
            if library.is_current(&path) {
                return Ok(library.clone());
            }
        }
        let library = Arc::new(PluginLibrary::open(&self.paths.plugins_dir, name, cached.is_some())?);
        lock(&self.state).libraries.insert(name.to_owned(), library.clone());
        Ok(library)
    }

    /// Starts plugin `name`; with `persist`, records `{name, true}.` in `loaded_plugins`.
    pub(crate) fn load(&self, name: &str, persist: bool) -> Result<(), PluginError> {
        let _ops = lock(&self.ops);
        self.load_locked(name, persist, None)
    }

    /// Starts `name`, in the hook order of `seq` when it is given (a reload keeps the
    /// plugin's place among plugins of its priority), else after every plugin started so far.
    fn load_locked(&self, name: &str, persist: bool, seq: Option<u64>) -> Result<(), PluginError> {
        if !is_valid_name(name) {
            return Err(PluginError::InvalidName(name.to_owned()));
        }
        if lock(&self.state).running.iter().any(|p| p.name() == name) {
            return Err(PluginError::AlreadyLoaded(name.to_owned()));
        }
        let library = self.library(name)?;
        let seq = seq.unwrap_or_else(|| {
            let mut state = lock(&self.state);
            state.next_seq += 1;
            state.next_seq
        });
        let instance = match Instance::start(library, self.shared.clone(), &self.config_json(name), seq) {
            Ok(instance) => Arc::new(instance),
            Err(why) => {
                let mut state = lock(&self.state);
                state.failed.insert(name.to_owned(), why.clone());
                // A reload's stand-in (see `reload`) goes.
                self.hooks.install(&handles(&state.running));
                return Err(PluginError::Init { name: name.to_owned(), why });
            }
        };
        {
            let mut state = lock(&self.state);
            state.failed.remove(name);
            state.running.push(instance.clone());
            self.hooks.install(&handles(&state.running));
        }
        let meta = &instance.library.meta;
        tracing::info!(plugin = name, version = meta.version, kind = meta.kind.as_str(), "plugin started");
        if persist {
            self.persist(name, true)?;
        }
        Ok(())
    }

    /// Stops plugin `name`; with `persist`, records `{name, false}.` in `loaded_plugins`.
    pub(crate) fn unload(&self, name: &str, persist: bool) -> Result<(), PluginError> {
        let _ops = lock(&self.ops);
        self.unload_locked(name, persist)
    }

    fn unload_locked(&self, name: &str, persist: bool) -> Result<(), PluginError> {
        if !is_valid_name(name) {
            return Err(PluginError::InvalidName(name.to_owned()));
        }
        let instance = {
            let mut state = lock(&self.state);
            let index = state.running.iter().position(|p| p.name() == name);
            let Some(index) = index else {
                return Err(PluginError::NotLoaded(name.to_owned()));
            };
            let instance = state.running.remove(index);
            self.hooks.install(&handles(&state.running));
            instance
        };
        Self::stop_instance(&instance);
        tracing::info!(plugin = name, "plugin stopped");
        if persist {
            self.persist(name, false)?;
        }
        Ok(())
    }

    fn stop_instance(instance: &Instance) {
        if instance.stop() == abi::STATUS_PANICKED {
            tracing::error!(plugin = instance.name(), "plugin panicked in stop");
        }
    }

    /// Stops `name` if it runs, then starts it again from its (possibly rebuilt) library, in
    /// its place in the hook order, and records it as enabled. A library that cannot be
    /// loaded leaves the running instance alone.
    ///
    /// Between the two, a plugin that decides who may connect (`client.authenticate`) is
    /// stood in for by a closed gate that denies it: a login in those milliseconds is
    /// refused (the client tries again), not let through as if the plugin were not there
    /// (EMQX's unload-then-load lets `allow_anonymous` decide meanwhile). Its other hooks
    /// are not called meanwhile: `client.check_acl` is not gated, since a denied publish is
    /// dropped, and a plugin that has the hook without deciding by it (`emqx_exhook` has
    /// every hook; its `init` may wait `request_timeout` for its servers) would lose messages.
    pub(crate) fn reload(&self, name: &str) -> Result<(), PluginError> {
        let _ops = lock(&self.ops);
        if !is_valid_name(name) {
            return Err(PluginError::InvalidName(name.to_owned()));
        }
        // Check the new library before stopping the running instance: a missing or refused
        // file leaves the plugin running as it was.
        self.library(name)?;
        let old = {
            let mut state = lock(&self.state);
            let index = state.running.iter().position(|p| p.name() == name);
            let old = index.map(|index| state.running.remove(index));
            if let Some(old) = &old {
                let mut with_gate = handles(&state.running);
                with_gate.extend(closed_gate(&old.handle));
                self.hooks.install(&with_gate);
            }
            old
        };
        let Some(old) = old else { return self.load_locked(name, true, None) };
        Self::stop_instance(&old);
        tracing::info!(plugin = name, "plugin stopped, to be started again");
        self.load_locked(name, true, Some(old.handle.seq))
    }

    /// Stops a plugin that failed (panicked) and keeps it listed as failed.
    pub(crate) fn stop_failed(&self, handle: Arc<PluginHandle>) {
        let _ops = lock(&self.ops);
        let why = handle.failure().unwrap_or_else(|| "failed".to_owned());
        let instance = {
            let mut state = lock(&self.state);
            let Some(index) = state.running.iter().position(|p| Arc::ptr_eq(&p.handle, &handle)) else {
                return; // already stopped
            };
            let instance = state.running.remove(index);
            self.hooks.install(&handles(&state.running));
            state.failed.insert(instance.name().to_owned(), why.clone());
            instance
        };
        tracing::error!(plugin = instance.name(), "plugin {why}; stopping it");
        Self::stop_instance(&instance);
    }

    /// Stops every plugin, last started first.
    pub(crate) fn shutdown(&self) {
        let _ops = lock(&self.ops);
        let running = {
            let mut state = lock(&self.state);
            let running = std::mem::take(&mut state.running);
            self.hooks.install(&[]);
            running
        };
        for instance in running.iter().rev() {
            Self::stop_instance(instance);
        }
    }

    /// Every known plugin: those in `loaded_plugins` in file order, then any other that runs
    /// or failed.
    pub(crate) fn list(&self) -> Vec<PluginStatus> {
        let mut names: Vec<String> = LoadedPlugins::read(&self.paths.loaded_plugins)
            .map(|(file, _)| file.entries().map(|(n, _)| n.to_owned()).collect())
            .unwrap_or_default();
        {
            let state = lock(&self.state);
            for name in state.running.iter().map(|p| p.name()).chain(state.failed.keys().map(String::as_str)) {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
        }
        names.iter().map(|name| self.status(name)).collect()
    }

    fn status(&self, name: &str) -> PluginStatus {
        let (running, failed, cached) = {
            let state = lock(&self.state);
            let running = state.running.iter().find(|p| p.name() == name).cloned();
            (running, state.failed.get(name).cloned(), state.libraries.get(name).cloned())
        };
        let library = cached.map(Ok).unwrap_or_else(|| self.library(name));
        let (version, description, kind) = match &library {
            Ok(l) => (l.meta.version.clone(), l.meta.description.clone(), l.meta.kind.as_str().to_owned()),
            Err(_) => Default::default(),
        };
        let active = running.as_ref().is_some_and(|p| p.is_active());
        let state = match (&running, failed, library) {
            (Some(_), _, _) => "running".to_owned(),
            (None, Some(why), _) => format!("failed: {why}"),
            (None, None, Err(e)) => format!("unavailable: {e}"),
            (None, None, Ok(_)) => "stopped".to_owned(),
        };
        PluginStatus { name: name.to_owned(), version, description, kind, active, state }
    }

    /// `plugins list` ("Plugin": every plugin) or `modules list` ("Module": the module-kind
    /// ones), a line each.
    fn format_list(&self, label: &str, verbose: bool) -> String {
        let list = self.list();
        let shown = list.iter().filter(|s| label == "Plugin" || s.kind == "module");
        shown.map(|s| format_status(label, s, verbose)).collect::<Vec<_>>().join("\n")
    }

    /// Which nodes run: this one alone outside a cluster.
    fn membership(&self) -> Membership {
        match &self.shared.node.cluster {
            Some(cluster) => cluster.membership(),
            None => Membership { running: vec![self.shared.node_name.clone()], stopped: Vec::new() },
        }
    }

    /// Every node this one knows of, as EMQX's `/api/v4/nodes` lists them: this one first.
    fn nodes(&self) -> Vec<serde_json::Value> {
        let node = &self.shared.node;
        let json = |info: &crate::cluster::NodeInfo, running: bool| {
            serde_json::json!({
                "node": info.node,
                "node_status": if running { "Running" } else { "Stopped" },
                "version": info.version,
                "sysdescr": info.sysdescr,
                "uptime": plugin_api::emqx::uptime(info.uptime_secs),
                "connections": info.connections,
            })
        };
        let mut nodes = vec![json(&node.info(), true)];
        if let Some(cluster) = &node.cluster {
            nodes.extend(cluster.peers().iter().map(|(info, running)| json(info, *running)));
        }
        nodes
    }

    /// This node as EMQX 4.x's `/api/v4/brokers` describes one (uptime in words, local
    /// datetime).
    fn broker_info(&self) -> serde_json::Value {
        let shared = &self.shared;
        serde_json::json!({
            "node": shared.node_name,
            "version": shared.broker_version,
            "sysdescr": plugin_api::emqx::SYSDESCR,
            "uptime": plugin_api::emqx::uptime(shared.node.stats.uptime_ms() / 1000),
            "datetime": plugin_api::emqx::datetime(),
            "node_status": "Running",
        })
    }

    /// Runs a `broker ctl` command (the words after `ctl`). `Ok` is printed, `Err` is an error.
    pub(crate) fn command(&self, args: &[String]) -> Result<String, CommandError> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["plugins", "list"] => Ok(self.format_list("Plugin", false)),
            ["plugins", "list", "--verbose" | "-v"] => Ok(self.format_list("Plugin", true)),
            ["plugins", "list", "--json"] => Ok(serde_json::to_string(&self.list()).unwrap_or_default()),
            // EMQX 4.x lists its modules apart: `Module(NAME, description=TEXT, active=BOOL)`.
            ["modules", "list"] => Ok(self.format_list("Module", false)),
            [group @ ("plugins" | "modules"), action @ ("load" | "unload" | "reload"), name] => {
                let label = if *group == "modules" { "Module" } else { "Plugin" };
                if label == "Module" && !self.list().iter().any(|s| s.name == *name && s.kind == "module") {
                    return Err(CommandError::not_found(format!(
                        "{name} is not a module (see broker ctl modules list)"
                    )));
                }
                match *action {
                    "load" => self.load(name, true),
                    "unload" => self.unload(name, true),
                    _ => self.reload(name),
                }?;
                Ok(format!("{label} {name} {action}ed successfully."))
            }
            ["plugins", ..] => Err(CommandError::invalid(PLUGINS_USAGE)),
            ["modules", ..] => Err(CommandError::invalid(MODULES_USAGE)),
            // EMQX's `emqx_ctl broker` lines; `--json`: `/api/v4/brokers`' object.
            ["broker"] => {
                let info = self.broker_info();
                let line = |name: &str| format!("{name:<10}: {}", info[name].as_str().unwrap_or_default());
                Ok(["sysdescr", "version", "uptime", "datetime", "node"].map(line).join("\n"))
            }
            ["broker", "--json"] => Ok(self.broker_info().to_string()),
            // The broker's gauges and the plugins' own (`Host::stat_set`).
            ["broker", "stats"] => Ok(format_named(self.shared.metrics_report().stats)),
            // The broker's counters and the plugins' own (`Host::metric_add`).
            ["broker", "metrics"] => Ok(format_named(self.shared.metrics_report().metrics)),
            // The gauges and counters as `Host::metrics` gives them (the management API's
            // per-node paths read another node's through `cluster call`).
            ["broker", "stats" | "metrics", "--json"] => {
                let report = self.shared.metrics_report();
                let named = if words[1] == "stats" { report.stats } else { report.metrics };
                Ok(serde_json::to_string(&named).unwrap_or_default())
            }

            ["store", "stats"] => format_store_stats(&self.shared.store),
            ["cluster", "status"] => Ok(format!("Cluster status: {}", self.membership().erlang())),
            ["cluster", "status", "--json"] => Ok(self.membership().json().to_string()),
            ["cluster", "nodes", "--json"] => Ok(serde_json::Value::Array(self.nodes()).to_string()),
            ["cluster", "shares"] => Ok(match &self.shared.node.cluster {
                Some(cluster) => cluster.share_groups(),
                None => format!("This node ({}) is alone: its share groups pick among its own members.", self.shared.node_name),
            }),
            ["cluster", "interest"] => Ok(match &self.shared.node.cluster {
                Some(cluster) => cluster.interest_summaries(),
                None => format!("This node ({}) is alone: every message stays on it.", self.shared.node_name),
            }),
            ["cluster", "call", node, command @ ..] if !command.is_empty() => {
                let command: Vec<String> = command.iter().map(|w| w.to_string()).collect();
                if *node == self.shared.node_name {
                    return self.command(&command);
                }
                let Some(cluster) = &self.shared.node.cluster else {
                    return Err(CommandError::not_found(format!(
                        "unknown node {node:?}: this node ({}) is alone",
                        self.shared.node_name
                    )));
                };
                cluster.call_blocking(node, &command).map_err(|(status, message)| CommandError::new(status, message))
            }
            ["cluster", ..] => Err(CommandError::invalid(
                "Usage: broker ctl cluster status [--json] | cluster nodes --json | cluster shares | cluster interest | \
                 cluster call NODE COMMAND...",
            )),
            // The connected clients as `Host::clients` gives them (the management API lists
            // another node's through `cluster call`).
            ["clients", "list", "--json"] => Ok(serde_json::to_string(&self.shared.client_list()).unwrap_or_default()),
            ["sessions", "list"] => Ok(self
                .shared
                .node
                .sessions
                .all()
                .iter()
                .map(|s| SessionInfo::of(s).line())
                .collect::<Vec<_>>()
                .join("\n")),
            ["sessions", "list", "--json"] => {
                let all = self.shared.node.sessions.all();
                let list: Vec<_> = all
                    .iter()
                    .map(|s| SessionInfo::of(s).json(&self.shared.node_name, self.session_limits()))
                    .collect();
                Ok(serde_json::Value::Array(list).to_string())
            }
            ["sessions", "show", client_id] | ["sessions", "show", client_id, "--json"] => {
                let session = self.shared.node.sessions.get(client_id);
                let session =
                    session.ok_or_else(|| CommandError::not_found(format!("no session of client id {client_id:?}")))?;
                let info = SessionInfo::of(&session);
                Ok(if words.len() == 4 {
                    info.json(&self.shared.node_name, self.session_limits()).to_string()
                } else {
                    info.line()
                })
            }
            ["sessions" | "clients", "kick", client_id] => {
                if self.shared.node.kick_session(client_id) {
                    Ok("ok".to_owned())
                } else {
                    Err(CommandError::not_found(format!("no session of client id {client_id:?}")))
                }
            }
            ["sessions", ..] => Err(CommandError::invalid(SESSIONS_USAGE)),
            // EMQX's `emqx_ctl clients`, `subscriptions` and `routes`.
            ["clients", "list"] => Ok(self.client_lines(None).join("\n")),
            ["clients", "show", client_id] => self
                .client_lines(Some(client_id))
                .pop()
                .ok_or_else(|| CommandError::not_found(format!("no client connected as {client_id:?}"))),
            ["clients", ..] => Err(CommandError::invalid(CLIENTS_USAGE)),
            ["subscriptions", "list"] => Ok(self.subscription_lines(None).join("\n")),
            // As the management API lists them: `clientid`, `topic`, `qos`.
            ["subscriptions", "list", "--json"] => {
                let json = self.subscriptions().into_iter().map(|(c, t, q)| json!({"clientid": c, "topic": t, "qos": q}));
                Ok(serde_json::Value::Array(json.collect()).to_string())
            }
            ["routes", "list", "--json"] => {
                let node = &self.shared.node_name;
                let json = self.routes().into_iter().map(|topic| json!({"topic": topic, "node": node}));
                Ok(serde_json::Value::Array(json.collect()).to_string())
            }
            ["subscriptions", "show", client_id] => match self.shared.node.sessions.get(client_id) {
                Some(_) => Ok(self.subscription_lines(Some(client_id)).join("\n")),
                None => Err(CommandError::not_found(format!("no session of client id {client_id:?}"))),
            },
            // EMQX 4's `subscriptions add|del`: for a connected client, as its own SUBSCRIBE
            // or UNSUBSCRIBE would.
            ["subscriptions", "add", client_id, filter, qos] => {
                let qos = match *qos {
                    "0" => 0,
                    "1" => 1,
                    "2" => 2,
                    _ => return Err(CommandError::invalid(format!("QoS should be 0, 1 or 2, not {qos:?}"))),
                };
                self.shared.node.subscribe_for(client_id, filter, qos).map_err(|e| subscribe_error(e, client_id, filter))?;
                Ok("ok".to_owned())
            }
            ["subscriptions", "del", client_id, filter] => {
                match self.shared.node.unsubscribe_for(client_id, filter) {
                    Ok(true) => Ok("ok".to_owned()),
                    // Not an error, as in EMQX: the subscription is not there either way.
                    Ok(false) => Ok(format!("ok (client {client_id:?} had no subscription to {filter:?})")),
                    Err(e) => Err(subscribe_error(e, client_id, filter)),
                }
            }
            ["subscriptions", ..] => Err(CommandError::invalid(SUBSCRIPTIONS_USAGE)),
            ["routes", "list"] => Ok(self.route_lines(None).join("\n")),
            ["routes", "show", topic] => Ok(self.route_lines(Some(topic)).join("\n")),
            ["routes", ..] => Err(CommandError::invalid("Usage: broker ctl routes list | show TOPIC_FILTER")),
            ["store", ..] => Err(CommandError::invalid("Usage: broker ctl store stats")),
            [command, rest @ ..] => {
                // A plugin answers one command, or several (space-separated); one that answers
                // several is told which, as its first word.
                let instance = lock(&self.state).running.iter().find_map(|p| {
                    let commands = p.library.meta.ctl_command.as_deref()?;
                    let mut words = commands.split_whitespace();
                    let several = words.clone().count() > 1;
                    words.any(|c| c == *command).then(|| (p.clone(), several))
                });
                match instance {
                    Some((instance, several)) => {
                        let words = if several { &words[..] } else { rest };
                        let rest: Vec<String> = words.iter().map(|s| s.to_string()).collect();
                        let result =
                            instance.ctl(&rest).map_err(|(status, message)| CommandError::new(status, message));
                        // The command may have changed what the plugin answers (`acl reload`).
                        self.hooks.invalidate_acl_answers();
                        result
                    }
                    None => Err(CommandError::not_found(format!(
                        "unknown command {command:?}: no running plugin answers it (try `broker ctl plugins list`)"
                    ))),
                }
            }
            [] => Err(CommandError::invalid(PLUGINS_USAGE)),
        }
    }
}

/// What `broker ctl sessions` takes.
const SESSIONS_USAGE: &str = "Usage: broker ctl sessions list [--json] | show CLIENTID [--json] | kick CLIENTID";
const CLIENTS_USAGE: &str = "Usage: broker ctl clients list [--json] | show CLIENTID | kick CLIENTID";

/// `broker ctl store stats`: what the store did since the broker started, then each bucket.
fn format_store_stats(store: &store::Store) -> Result<String, CommandError> {
    let stats = store.stats();
    let buckets = store.buckets().map_err(|e| CommandError::new(plugin_api::abi::STATUS_ERROR, e.to_string()))?;
    let mut lines = vec![
        format!("{:<30}: {}", "backend", stats.backend),
        format!("{:<30}: {}", "commits", stats.commits),
        format!("{:<30}: {}", "batches", stats.batches),
        format!("{:<30}: {}", "operations", stats.operations),
        format!("{:<30}: {}", "fsyncs", stats.fsyncs),
        format!("{:<30}: {}", "last_fsync_us", stats.last_fsync_micros),
        format!("{:<30}: {}", "failures", stats.failures),
        format!("{:<30}: {}", "buckets", buckets.len()),
    ];
    lines.extend(buckets.iter().map(|b| format!("bucket {} keys={} bytes={}", b.name, b.keys, b.bytes)));
    Ok(lines.join("\n"))
}

/// `broker ctl broker stats`: EMQX's names, one a line.
/// `name : value` lines sorted by name, as `emqx_ctl broker stats|metrics` prints them.
fn format_named<S: AsRef<str> + Ord>(rows: impl IntoIterator<Item = (S, u64)>) -> String {
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_unstable();
    rows.iter().map(|(name, value)| format!("{:<30}: {value}", name.as_ref())).collect::<Vec<_>>().join("\n")
}

const SUBSCRIPTIONS_USAGE: &str =
    "usage: broker ctl subscriptions list [--json] | show CLIENTID | add CLIENTID TOPIC_FILTER QOS | del CLIENTID TOPIC_FILTER";

/// What `subscriptions add|del` says when the node refused.
fn subscribe_error(error: PluginSubscribeError, client_id: &str, filter: &str) -> CommandError {
    match error {
        PluginSubscribeError::NoSuchClient => CommandError::not_found(format!("no client connected as {client_id:?}")),
        PluginSubscribeError::InvalidFilter => CommandError::invalid(format!("not a valid topic filter: {filter:?}")),
    }
}

const MODULES_USAGE: &str = "usage: broker ctl modules list | load NAME | unload NAME | reload NAME";
const PLUGINS_USAGE: &str =
    "usage: broker ctl plugins list [--verbose | --json] | load NAME | unload NAME | reload NAME";

/// The hook handles of the running plugins, in load order.
fn handles(running: &[Arc<Instance>]) -> Vec<Arc<PluginHandle>> {
    running.iter().map(|i| i.handle.clone()).collect()
}

/// A stand-in for `plugin` while it is reloaded, in its place in the hook order: it denies
/// `client.authenticate` if the plugin has it, and has no other hook; `None` if it has not
/// (see [`Manager::reload`]).
fn closed_gate(plugin: &PluginHandle) -> Option<Arc<PluginHandle>> {
    if !plugin.hooks.contains(Hook::ClientAuthenticate) {
        return None;
    }
    /// Denies whatever it is asked.
    unsafe extern "C" fn deny(_state: *mut std::ffi::c_void, _event: *const plugin_api::abi::RawEvent) -> u32 {
        plugin_api::abi::HOOK_DENY
    }
    let name = format!("{} (reloading)", plugin.name);
    let hooks = HookMask::of(&[Hook::ClientAuthenticate]);
    Some(Arc::new(PluginHandle::new(
        name,
        hooks,
        HookMask::NONE,
        plugin.priority,
        plugin.seq,
        deny,
        std::ptr::null_mut(),
    )))
}

/// One line of `broker ctl plugins list` (`label` "Plugin") or `modules list` ("Module"),
/// EMQX's exactly: `Plugin(NAME, description=TEXT, active=BOOL)`; `verbose` adds `version`,
/// `kind` and `state` (`running`, `stopped`, `failed: <why>`, `unavailable: <why>`) before
/// the closing parenthesis.
fn format_status(label: &str, s: &PluginStatus, verbose: bool) -> String {
    let mut line = format!("{label}({}, description={}, active={}", s.name, s.description, s.active);
    if verbose {
        line.push_str(&format!(", version={}, kind={}, state={}", s.version, s.kind, s.state));
    }
    line.push(')');
    line
}

/// The manager as the plugins' vtables reach it (`Host::plugins`, `Host::ctl`).
impl PluginControl for Manager {
    fn list(&self) -> Vec<PluginStatus> {
        Manager::list(self)
    }

    fn command(&self, args: &[String]) -> Result<String, CommandError> {
        Manager::command(self, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_no_plugin_reads_is_named_with_the_likely_one() {
        let plugins = ["emqx_telemetry".to_owned(), "emqx_mod_presence".to_owned(), "hook_recorder".to_owned()];
        let tables = ["telemetry", "presence", "emqx_mod_presence", "hook_recorder", "telemtry", "nothing_like_it"];
        assert_eq!(
            unread_tables(tables.into_iter(), &plugins),
            [("telemtry".to_owned(), Some("telemetry".to_owned())), ("nothing_like_it".to_owned(), None)]
        );
    }
}
