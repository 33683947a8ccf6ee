//! The `[telemetry]` table (env: `BROKER_TELEMETRY__<KEY>`).

use std::time::Duration;

use serde::Deserialize;

/// Where EMQX 4.x sends its reports.
pub const DEFAULT_URL: &str = "https://telemetry.emqx.io/api/telemetry";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Master switch, EMQX's `telemetry.enabled` (`BROKER_TELEMETRY__ENABLED=false` turns
    /// telemetry off).
    enabled: bool,
    /// The older name of `enabled`, still accepted. Not a serde alias: the file may set one
    /// name and the environment the other, and then either one saying `false` wins.
    enable: bool,
    /// Where reports are POSTed.
    pub url: String,
    /// Time between reports: `10s`, `5m`, `7d`, or seconds as a number.
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    pub report_interval: Duration,
    /// Time from start to the first report.
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    pub first_report_delay: Duration,
    /// Longest a report may take before it counts as failed.
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            enable: true,
            url: DEFAULT_URL.to_owned(),
            report_interval: Duration::from_secs(7 * 24 * 3600),
            first_report_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// Whether the config lets telemetry run: neither `enabled` nor `enable` is `false`.
    pub fn enabled(&self) -> bool {
        self.enabled && self.enable
    }
}

/// Whether `DO_NOT_TRACK` (<https://consoledonottrack.com>) asks us not to report.
pub fn do_not_track() -> bool {
    std::env::var("DO_NOT_TRACK").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_json() {
        let s: Settings = serde_json::from_value(
            serde_json::json!({"report_interval": "5m", "enable": false, "first_report_delay": 0}),
        )
        .unwrap();
        assert_eq!(s.report_interval, Duration::from_secs(300));
        assert_eq!(s.first_report_delay, Duration::ZERO);
        assert!(!s.enabled());
        assert_eq!(s.url, DEFAULT_URL);
        let s: Settings = serde_json::from_value(serde_json::json!({"enabled": false})).unwrap();
        assert!(!s.enabled());
        let s: Settings = serde_json::from_value(serde_json::json!({"enabled": true, "enable": false})).unwrap();
        assert!(!s.enabled(), "either name saying false wins");
        assert!(Settings::default().enabled());
    }

    /// A misspelt `enabled = false` must not leave telemetry on: the plugin refuses to start.
    #[test]
    fn an_unknown_key_is_refused() {
        let error = serde_json::from_value::<Settings>(serde_json::json!({"enabeld": false})).unwrap_err();
        assert!(error.to_string().contains("unknown field `enabeld`"), "{error}");
    }
}
