//! `broker`: an MQTT broker whose features are plugins.
//!
//! `broker` (or `broker start`) runs it in the foreground; `broker ctl ...` talks to a
//! running one.

use broker::{config, ctl, server};
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
            // A reader that stops early (`| head`) is no failure: the rest is not wanted.
            if !output.is_empty() {
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout().lock(), "{output}");
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
