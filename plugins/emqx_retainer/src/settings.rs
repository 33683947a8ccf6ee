//! The `[retainer]` table (env: `BROKER_RETAINER__<KEY>`), with EMQX's names and defaults.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// In memory only: gone when the broker stops or the plugin is unloaded.
    Ram,
    /// Kept in `<data_dir>/emqx_retainer.dat` across unloads and restarts.
    Disc,
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
    /// How long a retained message lives; 0 = forever (`10s`, `1h`, `7d` or seconds).
    #[serde(deserialize_with = "duration")]
    pub expiry_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            storage_type: StorageType::Disc,
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

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => Ok(Duration::from_secs(n)),
        NumberOrText::Text(t) if t.trim() == "0" => Ok(Duration::ZERO),
        NumberOrText::Text(t) => humantime::parse_duration(t.trim())
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}"))),
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
}
