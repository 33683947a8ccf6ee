//! `broker`: an MQTT broker whose features are plugins.
//!
//! `broker` (or `broker start`) runs it in the foreground; `broker ctl ...` talks to a
//! running one. The path of one PUBLISH: `relay` (socket, frames, hooks) → `hooks`
//! (dispatch to plugins) → `router` (the embedded rumqttd).

mod config;
mod ctl;
mod hooks;
mod mqtt;
mod plugins;
mod relay;
mod router;
mod server;
mod sessions;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// MQTT broker with EMQX-style plugins.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: <data-dir>/broker.toml if it exists). Env: BROKER_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory: loaded_plugins, ctl socket, plugin state. Env: BROKER_DATA_DIR.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Directory of plugin libraries (default: beside this executable). Env: BROKER_PLUGINS_DIR.
    #[arg(long, global = true)]
    plugins_dir: Option<PathBuf>,
    /// Client-facing MQTT listener address (default 0.0.0.0:1883). Env: BROKER_LISTENER__TCP.
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker in the foreground (the default).
    Start,
    /// Talk to the running broker, e.g. `ctl plugins list`, `ctl plugins unload NAME`.
    Ctl {
        /// `plugins list|load NAME|unload NAME|reload NAME`, or a plugin's command such as
        /// `telemetry get status`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// 16 hex digits that differ between calls (for generated client ids).
pub(crate) fn unique_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u64(now_ms());
    format!("{:016x}", h.finish())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = config::Overrides {
        config: cli.config,
        data_dir: cli.data_dir,
        plugins_dir: cli.plugins_dir,
        listen: cli.listen,
    };
    match cli.command {
        Some(Command::Ctl { args }) => run_ctl(&overrides, &args),
        None | Some(Command::Start) => match server::run(&overrides) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("broker: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_ctl(overrides: &config::Overrides, args: &[String]) -> ExitCode {
    match ctl::request(&config::data_dir(overrides), args) {
        Ok((true, output)) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Ok((false, error)) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
