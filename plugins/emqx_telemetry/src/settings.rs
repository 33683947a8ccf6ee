//! The `[telemetry]` table (env: `BROKER_TELEMETRY__<KEY>`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where EMQX 4.x sends its reports.
pub const DEFAULT_URL: &str = "https://telemetry.emqx.io/api/telemetry";

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
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
    #[serde(deserialize_with = "duration")]
    pub report_interval: Duration,
    /// Time from start to the first report.
    #[serde(deserialize_with = "duration")]
    pub first_report_delay: Duration,
    /// Longest a report may take before it counts as failed.
    #[serde(deserialize_with = "duration")]
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

/// Parses `10s`, `5m`, `7d`, `1h 30m`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e} (use e.g. 10s, 5m, 7d)"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(secs) => Ok(Duration::from_secs(secs)),
        Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
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
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("soon").is_err());
    }

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
}
