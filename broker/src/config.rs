//! Settings: built-in defaults, then the TOML file, then `BROKER_*` environment variables,
//! then command-line flags. `section.key` is `BROKER_SECTION__KEY`; a top-level `key` is
//! `BROKER_KEY`. Every table the broker does not know is a plugin's config, handed to it as
//! JSON (`[telemetry]` to `emqx_telemetry`, see `plugins::manager::config_section`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::relay::AclCacheSettings;

/// Settings given on the command line; they beat the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub plugins_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerSettings {
    /// Client-facing MQTT TCP listener.
    pub tcp: SocketAddr,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings { tcp: "0.0.0.0:1883".parse().expect("valid address") }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttSettings {
    /// Largest MQTT packet accepted, in bytes (EMQX's `max_packet_size`).
    pub max_packet_size: usize,
    /// Most clients connected at once.
    pub max_connections: usize,
    /// Most unacknowledged QoS 1/2 messages in flight to one client.
    pub max_inflight: usize,
    /// Seconds a new connection has to send its CONNECT.
    pub connect_timeout: u64,
    /// Cache each connection's ACL answers (EMQX's `enable_acl_cache`).
    pub acl_cache: bool,
    /// Most cached ACL answers a connection keeps (EMQX's `acl_cache_max_size`).
    pub acl_cache_max_size: usize,
    /// How long an ACL answer is cached, e.g. `"1m"` (EMQX's `acl_cache_ttl`).
    pub acl_cache_ttl: String,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            max_packet_size: 1024 * 1024,
            max_connections: 100_000,
            max_inflight: 100,
            connect_timeout: 15,
            acl_cache: true,
            acl_cache_max_size: 32,
            acl_cache_ttl: "1m".to_owned(),
        }
    }
}

impl MqttSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout.max(1))
    }

    /// The ACL cache's settings; `None` when it is off.
    pub fn acl_cache(&self) -> Result<Option<AclCacheSettings>, ConfigError> {
        if !self.acl_cache {
            return Ok(None);
        }
        let ttl = humantime::parse_duration(&self.acl_cache_ttl)
            .map_err(|e| ConfigError::Setting("mqtt.acl_cache_ttl", format!("{:?}: {e}", self.acl_cache_ttl)))?;
        Ok(Some(AclCacheSettings { max_size: self.acl_cache_max_size, ttl }))
    }
}

/// Every broker setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Node name, as in EMQX (`emqx@127.0.0.1`); used in `$SYS` topics.
    pub node_name: String,
    /// Where `loaded_plugins`, the ctl socket and plugin state live.
    pub data_dir: PathBuf,
    /// Where plugin libraries are; default: beside the `broker` executable.
    pub plugins_dir: Option<PathBuf>,
    /// Log filter, `tracing` syntax (`RUST_LOG` beats it).
    pub log_level: String,
    pub listener: ListenerSettings,
    pub mqtt: MqttSettings,
    /// Every other table: plugin configs, by section name.
    #[serde(flatten)]
    pub plugins: serde_json::Map<String, serde_json::Value>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_name: "emqx@127.0.0.1".to_owned(),
            data_dir: PathBuf::from("data"),
            plugins_dir: None,
            log_level: "info".to_owned(),
            listener: ListenerSettings::default(),
            mqtt: MqttSettings::default(),
            plugins: Default::default(),
        }
    }
}

/// The settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0} = {1}")]
    Setting(&'static str, String),
}

fn environment() -> Env {
    Env::prefixed("BROKER_").split("__").ignore(&["config"])
}

/// The data directory as flags and environment give it, before the file is read (the file's
/// default location is inside it).
pub fn data_dir(overrides: &Overrides) -> PathBuf {
    overrides
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("BROKER_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Reads the settings. A config file named by `--config` or `BROKER_CONFIG` must exist; the
/// default `<data_dir>/broker.toml` is optional.
pub fn load(overrides: &Overrides) -> Result<Settings, ConfigError> {
    let explicit = overrides.config.clone().or_else(|| std::env::var_os("BROKER_CONFIG").map(PathBuf::from));
    let file = match explicit {
        Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path)),
        Some(path) => Some(path),
        None => Some(data_dir(overrides).join("broker.toml")).filter(|p| p.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(file) = &file {
        figment = figment.merge(Toml::file(file));
    }
    figment = figment.merge(environment());
    let mut settings: Settings = figment.extract().map_err(Box::new)?;
    if let Some(dir) = &overrides.data_dir {
        settings.data_dir = dir.clone();
    }
    if let Some(dir) = &overrides.plugins_dir {
        settings.plugins_dir = Some(dir.clone());
    }
    if let Some(listen) = overrides.listen {
        settings.listener.tcp = listen;
    }
    settings.mqtt.acl_cache()?;
    Ok(settings)
}

/// The plugins directory: the setting, or the directory of the running executable.
pub fn plugins_dir(settings: &Settings) -> std::io::Result<PathBuf> {
    match &settings.plugins_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(std::env::current_exe()?.parent().unwrap_or(Path::new(".")).to_owned()),
    }
}
