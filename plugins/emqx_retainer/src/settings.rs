//! The `[retainer]` table (env: `BROKER_RETAINER__<KEY>`), with EMQX's names and defaults.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where retained messages are kept (EMQX's `retainer.storage_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageType {
    /// In memory only (the default, as in EMQX): gone when the broker stops or the plugin
    /// is unloaded.
    Ram,
    /// In memory, and kept in the host's store (written before the PUBLISH is acknowledged)
    /// across unloads, restarts and crashes.
    Disc,
    /// Accepted for EMQX configs; behaves as `disc` (served from memory, every change
    /// written to the store). EMQX keeps such a table on disc only; the difference is memory
    /// use, not what clients see.
    DiscOnly,
}

impl StorageType {
    /// EMQX's name of the storage type.
    pub fn name(self) -> &'static str {
        match self {
            StorageType::Ram => "ram",
            StorageType::Disc => "disc",
            StorageType::DiscOnly => "disc_only",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub storage_type: StorageType,
    /// Most topics with a retained message; 0 = unlimited.
    pub max_retained_messages: usize,
    /// Largest retained payload, in bytes (`1MB`, `64KB` or a number).
    #[serde(deserialize_with = "size")]
    pub max_payload_size: usize,
    /// How long a retained message lives; 0 = forever. A bare number is milliseconds (as
    /// EMQX reads it); `10s`, `1h`, `7d` are durations.
    #[serde(deserialize_with = "duration_ms")]
    pub expiry_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            storage_type: StorageType::Ram,
            max_retained_messages: 0,
            max_payload_size: 1024 * 1024,
            expiry_interval: Duration::ZERO,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// Parses `1MB`, `64KB`, `512B` or a number of bytes (KB = 1024 bytes, as EMQX).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    let (digits, unit) = match upper.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => upper.split_at(i),
        None => (upper.as_str(), ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("invalid size {text:?} (use e.g. 1MB, 64KB)"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KB" | "K" => 1024,
        "MB" | "M" => 1024 * 1024,
        "GB" | "G" => 1024 * 1024 * 1024,
        _ => return Err(format!("invalid size unit in {text:?} (use B, KB, MB or GB)")),
    };
    Ok(n * factor)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => Ok(n as usize),
        NumberOrText::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// Parses a duration: a bare number of milliseconds (EMQX's `{duration, ms}`), or `500ms`,
/// `10s`, `1h`, `7d`.
pub fn parse_duration_ms(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

fn duration_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => Ok(Duration::from_millis(n)),
        NumberOrText::Text(t) => parse_duration_ms(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MB"), Ok(1024 * 1024));
        assert_eq!(parse_size("64kb"), Ok(64 * 1024));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1XB").is_err());
    }

    #[test]
    fn durations_are_milliseconds_when_bare() {
        assert_eq!(parse_duration_ms("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration_ms("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_ms("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration_ms("soon").is_err());
    }
}
