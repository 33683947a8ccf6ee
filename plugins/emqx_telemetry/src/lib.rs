//! `emqx_telemetry`: reads the broker's counters (as EMQX reads its `connections.max`,
//! `messages.received` and `messages.sent` stats and metrics) and reports anonymous usage
//! data, as EMQX 4.x does, by HTTPS POST to `telemetry.url` every
//! `telemetry.report_interval`. It takes no hooks: counting in hooks would cost every client
//! and message a plugin call for numbers the broker keeps anyway.
//!
//! The node's uuid (made once, time-based, uppercase as EMQX's) and the `ctl` switch are kept in
//! the broker's store (the plugin's bucket `state`, key `telemetry`), so they survive restarts
//! and crashes; at the first start a `data/emqx_telemetry.json` left by an older version is
//! imported (its uuid kept) and renamed `emqx_telemetry.json.imported`.
//!
//! Off switches: `broker ctl telemetry disable` (kept in the store),
//! `BROKER_TELEMETRY__ENABLED=false` (or `enabled = false` in `[telemetry]`; `enable` is
//! accepted too), `DO_NOT_TRACK=1`, `broker ctl plugins unload emqx_telemetry`, or removing
//! its line from `loaded_plugins`.
//!
//! Commands, as EMQX's `emqx_ctl telemetry`: `broker ctl telemetry enable | disable |
//! get status | get data`, and `get uuid` (this node's uuid: what the other nodes of a cluster
//! ask for).
//!
//! In a cluster each node reports for itself, as EMQX 4 does: its own uuid and counts, and in
//! `nodes_uuid` the uuids of the other running nodes (asked with `broker ctl cluster call NODE
//! telemetry get uuid`; a node that does not answer is left out, as EMQX leaves out a failed
//! rpc).
#![forbid(unsafe_code)]

mod report;
mod reporter;
mod settings;
mod state;

use std::sync::{Arc, Mutex, MutexGuard};

use plugin_api::store::Bucket;
use plugin_api::{declare_plugin, BoxError, Config, HookMask, Host, Plugin, PluginInfo, PluginKind};

use report::{License, Report};
use reporter::{Reporter, Source};
use settings::Settings;
use state::State;

/// What the report is built from.
#[derive(Debug)]
struct Shared {
    host: Host,
    uuid: String,
    os: (String, String),
    /// The other nodes' uuids as last asked: what `get data` shows (a command may not run
    /// other commands, so it cannot ask).
    nodes_uuid: Mutex<Vec<String>>,
}

impl Shared {
    /// The uuids of the other running nodes of the cluster (none when this node is alone).
    fn nodes_uuid(&self) -> Vec<String> {
        let asked = (|| -> Result<Vec<String>, plugin_api::HostError> {
            let nodes: serde_json::Value =
                serde_json::from_str(&self.host.ctl(&["cluster", "nodes", "--json"])?).unwrap_or_default();
            let me = self.host.node_name();
            let others = nodes.as_array().into_iter().flatten().filter(|n| n["node_status"] == "Running");
            let names = others.filter_map(|n| n["node"].as_str()).filter(|n| *n != me);
            let uuids =
                names.filter_map(|node| self.host.ctl(&["cluster", "call", node, "telemetry", "get", "uuid"]).ok());
            Ok(uuids.map(|u| u.trim().to_owned()).collect())
        })();
        let mut known = self.nodes_uuid.lock().unwrap_or_else(|e| e.into_inner());
        match asked {
            Ok(uuids) => {
                *known = uuids.clone();
                uuids
            }
            Err(_) => known.clone(),
        }
    }
}

impl Source for Shared {
    fn report(&self) -> Report {
        let (mut active_plugins, mut active_modules) = (Vec::new(), Vec::new());
        match self.host.plugins() {
            Ok(plugins) => {
                for plugin in plugins.into_iter().filter(|p| p.active) {
                    match plugin.kind.as_str() {
                        "module" => active_modules.push(plugin.name),
                        _ => active_plugins.push(plugin.name),
                    }
                }
            }
            Err(e) => self.host.warn(&format!("cannot list plugins for the report: {e}")),
        }
        let stats = self.host.stats();
        Report {
            license: License { edition: "community" },
            nodes_uuid: self.nodes_uuid(),
            active_plugins,
            active_modules,
            num_clients: stats.connections_max,
            messages_received: stats.messages_received,
            messages_sent: stats.messages_sent,
            emqx_version: self.host.broker_version().to_owned(),
            os_name: self.os.0.clone(),
            os_version: self.os.1.clone(),
            otp_version: env!("TELEMETRY_RUSTC_VERSION").to_owned(),
            up_time: stats.uptime_ms,
            uuid: self.uuid.clone(),
        }
    }

    fn warn(&self, message: &str) {
        self.host.warn(message)
    }

    fn debug(&self, message: &str) {
        self.host.debug(message)
    }
}

#[derive(Debug)]
struct Control {
    state: State,
    reporter: Option<Reporter>,
}

/// The plugin: its settings, the reporter thread while telemetry is on, and what the
/// report is built from.
pub struct Telemetry {
    shared: Arc<Shared>,
    /// Where the state is kept.
    bucket: Bucket,
    settings: Settings,
    control: Mutex<Control>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Telemetry {
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why telemetry is off, or `None` when it is on.
    fn off_reason(&self, state: &State) -> Option<&'static str> {
        if !self.settings.enabled() {
            Some("disabled by the config (telemetry.enabled = false / BROKER_TELEMETRY__ENABLED=false)")
        } else if settings::do_not_track() {
            Some("disabled by DO_NOT_TRACK")
        } else if !state.enabled {
            Some("disabled by `broker ctl telemetry disable`")
        } else {
            None
        }
    }

    /// Starts or stops the reporter to match the current switches.
    fn apply(&self, control: &mut Control) -> Result<(), String> {
        let on = self.off_reason(&control.state).is_none();
        if on && control.reporter.is_none() {
            let source: Arc<dyn Source> = self.shared.clone();
            let reporter = Reporter::start(self.settings.clone(), source).map_err(|e| e.to_string())?;
            control.reporter = Some(reporter);
            self.shared.host.info(&format!(
                "telemetry is on: every {} it sends anonymous usage data (broker version, OS, uptime, \
                 plugin names, client and message counts; no IPs, hostnames, client ids, usernames or \
                 topics) to {}; turn it off with `broker ctl telemetry disable`, \
                 BROKER_TELEMETRY__ENABLED=false or DO_NOT_TRACK=1",
                humantime::format_duration(self.settings.report_interval),
                self.settings.url
            ));
        } else if !on {
            if let Some(reporter) = control.reporter.take() {
                reporter.stop();
            }
        }
        Ok(())
    }

    fn set_enabled(&self, enabled: bool) -> Result<String, String> {
        let mut control = self.control();
        if let Err(e) = state::save(&self.bucket, &State { enabled, ..control.state.clone() }) {
            return Err(format!("cannot save the telemetry switch: {e}"));
        }
        control.state.enabled = enabled;
        self.apply(&mut control)?;
        let verb = if enabled { "Enable" } else { "Disable" };
        Ok(match self.off_reason(&control.state) {
            Some(reason) if enabled => {
                format!("{verb} telemetry successfully (but it stays off: {reason})")
            }
            _ => format!("{verb} telemetry successfully"),
        })
    }
}

impl Plugin for Telemetry {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let bucket = host.store(state::BUCKET);
        let state = state::load_or_create(&host, &bucket)?;
        let shared = Arc::new(Shared {
            host,
            uuid: state.uuid.clone(),
            os: report::os_name_and_version(),
            nodes_uuid: Mutex::new(Vec::new()),
        });
        let telemetry = Telemetry { shared, bucket, settings, control: Mutex::new(Control { state, reporter: None }) };
        {
            let mut control = telemetry.control();
            if let Some(reason) = telemetry.off_reason(&control.state) {
                host.info(&format!("telemetry is off ({reason}); nothing is sent"));
            }
            telemetry.apply(&mut control)?;
        }
        Ok(telemetry)
    }

    fn ctl(&self, args: &[String]) -> Result<String, String> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["enable"] => self.set_enabled(true),
            ["disable"] => self.set_enabled(false),
            // EMQX's exact lines; why it is off is in the log and in `enable`'s answer.
            ["get", "status"] => Ok(match self.off_reason(&self.control().state) {
                None => "Telemetry is enabled".to_owned(),
                Some(_) => "Telemetry is disabled".to_owned(),
            }),
            ["get", "data"] => serde_json::to_string_pretty(&self.shared.report()).map_err(|e| e.to_string()),
            ["get", "uuid"] => Ok(self.shared.uuid.clone()),
            _ => Err("usage: broker ctl telemetry enable | disable | get status | get data | get uuid".to_owned()),
        }
    }

    fn stop(self) {
        if let Some(reporter) = self.control().reporter.take() {
            reporter.stop();
        }
    }
}

declare_plugin!(
    Telemetry,
    PluginInfo {
        name: "emqx_telemetry",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Telemetry",
        kind: PluginKind::Plugin,
        hooks: HookMask(0),
        priority: 0,
        ctl_command: Some("telemetry"),
    }
);
