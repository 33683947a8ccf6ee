//! Durations in a plugin's config table, as EMQX writes them: `5s`, `500ms`, `10m`, `1h 30m`,
//! `7d`, or a bare number of seconds (a TOML integer or a string of digits).
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     #[serde(deserialize_with = "plugin_api::duration::deserialize")]
//!     timeout: std::time::Duration,
//! }
//! let settings: Settings = serde_json::from_str(r#"{"timeout": "1m 30s"}"#).unwrap();
//! assert_eq!(settings.timeout, std::time::Duration::from_secs(90));
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `5s`, `500ms`, `10m`, `7d`, or a number of seconds; the error names the text.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e} (use e.g. 5s, 500ms, 10m, 7d)"))
}

/// Deserializes a duration: a number of seconds, or a text [`parse`] reads. For
/// `#[serde(deserialize_with = "plugin_api::duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(secs) => Ok(Duration::from_secs(secs)),
        Raw::Text(text) => parse(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse(" 42 ").unwrap(), Duration::from_secs(42));
        assert!(parse("soon").unwrap_err().starts_with("invalid duration \"soon\""));
        let read = |json: &str| deserialize(&mut serde_json::Deserializer::from_str(json));
        assert_eq!(read("30").unwrap(), Duration::from_secs(30));
        assert_eq!(read("\"1h\"").unwrap(), Duration::from_secs(3600));
    }
}
